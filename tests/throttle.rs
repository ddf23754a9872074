//! Login throttling over HTTP: 429 with Retry-After, even for the right
//! password, per client address and per username; lifted after the wait.

mod common;

use std::time::Duration;

use common::*;
use http::Request;

const LIMITS: &str =
    "[throttle]\nmax_failures = 3\nwindow = \"1m\"\nban = \"1s\"\nmax_ban = \"4s\"\n";

async fn login(addr: std::net::SocketAddr, user: &str, password: &str, xff: Option<&str>) -> Reply {
    let mut b = Request::post("/login").header("content-type", "application/json");
    if let Some(xff) = xff {
        b = b.header("x-forwarded-for", xff);
    }
    send(
        addr,
        b.body(serde_json::json!({"username": user, "password": password}).to_string())
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn repeated_failures_get_429_even_with_the_right_password_then_recover() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, LIMITS).await;
    gw.add_user("alice", "right", &[]);
    for _ in 0..3 {
        assert_eq!(login(gw.addr, "alice", "wrong", None).await.status, 401);
    }
    let r = login(gw.addr, "alice", "right", None).await;
    assert_eq!(r.status, 429);
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    assert!(r.json()["detail"].is_string());
    tokio::time::sleep(Duration::from_secs(wait) + Duration::from_millis(100)).await;
    let r = login(gw.addr, "alice", "right", None).await;
    assert_eq!(
        r.status,
        200,
        "after Retry-After the right password works: {}",
        r.text()
    );
    gw.stop().await;
}

#[tokio::test]
async fn one_address_guessing_many_usernames_is_limited() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, LIMITS).await;
    gw.add_user("bob", "right", &[]);
    for name in ["a", "b", "c"] {
        assert_eq!(login(gw.addr, name, "x", None).await.status, 401);
    }
    assert_eq!(login(gw.addr, "bob", "right", None).await.status, 429);
    gw.stop().await;
}

#[tokio::test]
async fn forwarded_for_counts_only_from_trusted_proxies() {
    let up = echo_upstream().await;
    // Untrusted peer: a rotating X-Forwarded-For does not escape the limit.
    let gw = Gateway::start(up.addr, LIMITS).await;
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        let ip = format!("198.51.100.{i}");
        assert_eq!(login(gw.addr, name, "x", Some(&ip)).await.status, 401);
    }
    assert_eq!(
        login(gw.addr, "d", "x", Some("198.51.100.77")).await.status,
        429
    );
    gw.stop().await;

    // Trusted peer: each forwarded client has its own count.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokengate.toml");
    let text = config_text(&format!("http://{}", up.addr), LIMITS).replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        1,
    );
    std::fs::write(&path, text).unwrap();
    let config = std::sync::Arc::new(tokengate::config::Config::load(&path, |_| None).unwrap());
    let store = tokengate::store::Store::open(&config.store.path).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(tokengate::run(listener, config, store, async {
        let _ = stopped.await;
    }));
    for name in ["a", "b", "c"] {
        assert_eq!(
            login(addr, name, "x", Some("198.51.100.1")).await.status,
            401
        );
    }
    assert_eq!(
        login(addr, "d", "x", Some("198.51.100.1")).await.status,
        429
    );
    assert_eq!(
        login(addr, "d", "x", Some("198.51.100.2")).await.status,
        401,
        "another forwarded client is not limited by the first"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// A banned client flooding logins waits `limited_delay` for each 429, so
/// the flood costs timers rather than the CPU authenticated traffic needs;
/// Retry-After counts from the answer.
#[tokio::test]
async fn limited_logins_wait_before_their_429() {
    let up = echo_upstream().await;
    let config =
        format!("{LIMITS}limited_delay = \"600ms\"\n").replace("ban = \"1s\"", "ban = \"3s\"");
    let gw = Gateway::start(up.addr, &config).await;
    gw.add_user("carol", "right", &[]);
    for _ in 0..3 {
        assert_eq!(login(gw.addr, "carol", "wrong", None).await.status, 401);
    }
    let asked = std::time::Instant::now();
    let r = login(gw.addr, "carol", "right", None).await;
    let took = asked.elapsed();
    assert_eq!(r.status, 429);
    assert!(
        took >= Duration::from_millis(600),
        "answered after {took:?}"
    );
    let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=3).contains(&wait), "Retry-After {wait}");
    gw.stop().await;
}
