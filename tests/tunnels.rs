//! WebSocket (upgrade) tunnels: they live only as long as the token that
//! opened them, and public paths do not tunnel without one unless asked to.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

/// How long a closed tunnel may take to show it: far above the promised
/// second, so a busy machine does not fail the test; an open tunnel never
/// closes by itself, so the wait only bounds a failure.
const CLOSE_WAIT: Duration = Duration::from_secs(10);

/// Runs a `tokengate` command against the running gateway's config, so it
/// goes through the gateway's control channel.
async fn cli(gw: &Gateway, args: &[&str], stdin: &str) {
    let config = gw.dir.path().join("tokengate.toml");
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let stdin = stdin.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .args(&args)
            .arg("-c")
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        (args, child.wait_with_output().unwrap())
    })
    .await
    .unwrap();
    let (args, out) = out;
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Opens a tunnel to the echo upstream's `/ws` with `token` and reads its
/// greeting, which names the user the upstream was told about.
async fn open(gw: &Gateway, token: Option<&str>) -> (TcpStream, String) {
    let (head, mut s) = upgrade(gw.addr, "/ws", token, "websocket").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut greeting = Vec::new();
    let mut byte = [0u8; 1];
    while !greeting.ends_with(b"\n") {
        let n = tokio::time::timeout(CLOSE_WAIT, s.read(&mut byte))
            .await
            .expect("no greeting through the tunnel")
            .unwrap();
        assert!(n > 0, "the tunnel closed before its greeting");
        greeting.push(byte[0]);
    }
    (s, String::from_utf8(greeting).unwrap())
}

/// A frame sent through the tunnel comes back.
async fn assert_echoes(s: &mut TcpStream, why: &str) {
    s.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    tokio::time::timeout(CLOSE_WAIT, s.read_exact(&mut got))
        .await
        .unwrap_or_else(|_| panic!("{why}: no echo"))
        .unwrap_or_else(|e| panic!("{why}: the tunnel closed: {e}"));
    assert_eq!(&got, b"ping", "{why}");
}

/// Waits for the gateway to close the tunnel; then a frame is not echoed.
async fn assert_closed(s: &mut TcpStream, why: &str) {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(CLOSE_WAIT, s.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{why}: the tunnel is still open after {CLOSE_WAIT:?}"));
    match read {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!(
            "{why}: the tunnel carried {:?}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
    // The upstream must not see a frame either: a write may still be
    // accepted by the kernel, but nothing comes back.
    let _ = s.write_all(b"after").await;
    let echoed = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await;
    assert!(
        !matches!(echoed, Ok(Ok(n)) if n > 0),
        "{why}: a frame was echoed after the close"
    );
}

fn id_of(token: &str) -> String {
    tokengate::store::token::Token::digest_of(token)
        .unwrap()
        .id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_tokens_close_open_tunnels() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "").await;
    gw.add_user("bob", "pw", &[]);
    let kept = gw.login("bob", "pw").await;
    let logged_out = gw.login("bob", "pw").await;
    let revoked = gw.login("bob", "pw").await;
    let (mut kept_tunnel, greeting) = open(&gw, Some(&kept)).await;
    assert_eq!(greeting, "hello bob\n");
    let (mut logout_tunnel, _) = open(&gw, Some(&logged_out)).await;
    let (mut revoke_tunnel, _) = open(&gw, Some(&revoked)).await;
    assert_echoes(&mut logout_tunnel, "before logout").await;

    let r = send(
        gw.addr,
        Request::post("/logout")
            .header("authorization", format!("Token {logged_out}"))
            .body(Bytes::new())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_closed(&mut logout_tunnel, "logout").await;

    // `token revoke` reaches the running gateway through its control channel.
    cli(&gw, &["token", "revoke", &id_of(&revoked)], "").await;
    assert_closed(&mut revoke_tunnel, "token revoke").await;

    // And straight through the store, as a leaked-secret revoke does.
    let also = gw.login("bob", "pw").await;
    let (mut store_tunnel, _) = open(&gw, Some(&also)).await;
    let digest = tokengate::store::token::Token::digest_of(&also).unwrap();
    assert!(gw.store.revoke(&digest).unwrap());
    assert_closed(&mut store_tunnel, "store revoke").await;

    // An expiring token's tunnel ends when the token does.
    let bob = gw.store.user("bob").unwrap().unwrap();
    let (short, _) = gw
        .store
        .issue_token(&bob, Some(Duration::from_secs(3)), None, &[])
        .unwrap();
    let (mut expiring, _) = open(&gw, Some(short.expose())).await;
    assert_closed(&mut expiring, "expiry").await;

    // Bob's other token and its tunnel were never touched.
    assert_echoes(&mut kept_tunnel, "an unrevoked token's tunnel").await;
    drop(kept_tunnel);
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_a_user_closes_their_open_tunnels() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "").await;
    gw.add_user("bob", "pw", &[]);
    gw.add_user("carol", "pw", &[]);
    let carols = gw.login("carol", "pw").await;
    let (mut carol_tunnel, _) = open(&gw, Some(&carols)).await;

    let changes: [(&[&str], &str); 4] = [
        (&["user", "disable", "bob"], ""),
        (&["user", "passwd", "bob", "--password-stdin"], "pw\n"),
        (&["token", "revoke", "--user", "bob"], ""),
        (&["user", "remove", "bob"], ""),
    ];
    for (args, stdin) in changes {
        let token = gw.login("bob", "pw").await;
        let (mut tunnel, greeting) = open(&gw, Some(&token)).await;
        assert_eq!(greeting, "hello bob\n");
        assert_echoes(&mut tunnel, "before the change").await;
        cli(&gw, args, stdin).await;
        assert_closed(&mut tunnel, &args.join(" ")).await;
        if args[1] == "disable" {
            cli(&gw, &["user", "enable", "bob"], "").await;
        }
    }
    assert_echoes(&mut carol_tunnel, "another user's tunnel").await;
    drop(carol_tunnel);
    gw.stop().await;
}

#[tokio::test]
async fn public_paths_do_not_tunnel_without_a_token() {
    let (up, seen) = recording_echo_upstream().await;
    let gw = Gateway::start(up.addr, "public = [\"/ws\"]\n").await;
    gw.add_user("bob", "pw", &[]);

    let (head, _) = upgrade(gw.addr, "/ws", None, "websocket").await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("www-authenticate: token"),
        "{head}"
    );
    assert!(
        seen.lock().unwrap().is_empty(),
        "the upstream saw {:?}",
        seen.lock().unwrap()
    );
    // The path itself stays public.
    assert_eq!(get(gw.addr, "/ws", None).await.status, 200);
    // With a valid token, the upgrade is an authenticated one.
    let token = gw.login("bob", "pw").await;
    let (mut tunnel, greeting) = open(&gw, Some(&token)).await;
    assert_eq!(greeting, "hello bob\n");
    assert_echoes(&mut tunnel, "an authenticated tunnel on a public path").await;
    drop(tunnel);
    gw.stop().await;

    let gw = Gateway::start(up.addr, "public = [\"/ws\"]\npublic_upgrades = true\n").await;
    let (mut tunnel, greeting) = open(&gw, None).await;
    assert_eq!(greeting, "hello \n", "tunneled without an identity");
    assert_echoes(&mut tunnel, "a public tunnel, opted in").await;
    drop(tunnel);
    gw.stop().await;
}
