//! Scoped tokens and service users: through the real binary (the CLI and
//! `serve`) and a real upstream.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::binary::{Env, Server};
use common::*;
use http::Request;

const SCOPES: [&str; 2] = ["GET /reports/**", "GET,post /orders/*"];

fn env(upstream: std::net::SocketAddr, extra: &str) -> Env {
    Env::new(&config_text(&format!("http://{upstream}"), extra))
}

/// `token issue` with `--scope` for each of `scopes`; the token.
fn issue(env: &Env, user: &str, scopes: &[&str]) -> String {
    let mut args = vec!["token", "issue", user];
    for scope in scopes {
        args.extend(["--scope", scope]);
    }
    env.ok(&args).lines().last().unwrap().to_owned()
}

async fn status(addr: std::net::SocketAddr, method: &str, path: &str, token: &str) -> u16 {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Token {token}"))
        .body(Bytes::new())
        .unwrap();
    send(addr, req).await.status.as_u16()
}

/// Every case of `scope_cases` answered as expected.
async fn assert_scopes_hold(addr: std::net::SocketAddr, token: &str) {
    for (method, path, want) in [
        ("GET", "/reports/2026/q1", 200),
        ("GET", "/reports", 200),
        ("HEAD", "/reports/x", 403),
        ("POST", "/reports/x", 403),
        ("GET", "/orders/7", 200),
        ("POST", "/orders/7", 200),
        ("DELETE", "/orders/7", 403),
        ("GET", "/orders/7/items", 403),
        ("GET", "/other", 403),
        // The canonical path decides: %72 is `r`.
        ("GET", "/%72eports/x", 200),
        // The query never counts, whichever way.
        ("GET", "/other?next=/reports/x", 403),
        ("GET", "/reports/x?next=/other", 200),
    ] {
        assert_eq!(
            status(addr, method, path, token).await,
            want,
            "{method} {path}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_scoped_token_passes_only_what_its_scopes_cover() {
    let up = echo_upstream().await;
    let env = env(up.addr, "");
    env.add_user("ci", "pw");
    let scoped = issue(&env, "ci", &SCOPES);
    let unscoped = issue(&env, "ci", &[]);
    let server = Server::start(&env).unwrap();
    assert_scopes_hold(server.addr, &scoped).await;
    for (method, path) in [("DELETE", "/orders/7"), ("GET", "/other")] {
        assert_eq!(status(server.addr, method, path, &unscoped).await, 200);
    }

    let refused = send(
        server.addr,
        Request::delete("/orders/7")
            .header("authorization", format!("Token {scoped}"))
            .body(Bytes::new())
            .unwrap(),
    )
    .await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.json(),
        serde_json::json!({"detail": "You do not have permission to perform this action."})
    );
    // The access line says why.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = server.log_text();
        if let Some(line) = log.lines().find(|l| {
            l.contains("method=DELETE")
                && l.contains("path=\"/orders/7\"")
                && l.contains("status=403")
        }) {
            assert!(line.contains("reason=\"scope\""), "{line}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access line in:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_are_listed_and_malformed_ones_refused_at_issue() {
    let up = echo_upstream().await;
    let env = env(up.addr, "");
    env.add_user("ci", "pw");
    issue(&env, "ci", &SCOPES);
    issue(&env, "ci", &[]);
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["token", "list", "--json"])).unwrap();
    let mut scopes: Vec<_> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["scopes"].clone())
        .collect();
    scopes.sort_by_key(|s| s.as_array().unwrap().len());
    assert_eq!(
        scopes,
        [
            serde_json::json!([]),
            serde_json::json!(["GET /reports/**", "GET,POST /orders/*"])
        ]
    );
    let text = env.ok(&["token", "list"]);
    assert!(text.contains("scope GET /reports/**"), "{text}");

    for (bad, says) in [
        ("GET reports", "must start with `/`"),
        ("/reports/**", "METHODS PATTERN"),
        ("GE(T /x", "not a method"),
    ] {
        let out = env.run(&["token", "issue", "ci", "--scope", bad]);
        assert!(!out.status.success(), "{bad} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--scope") && stderr.contains(says),
            "{bad}: {stderr}"
        );
    }
    let list: serde_json::Value =
        serde_json::from_str(&env.ok(&["token", "list", "--json"])).unwrap();
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "a refused scope stored nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_survive_restart_backup_and_reload() {
    let up = echo_upstream().await;
    let env = env(up.addr, "");
    env.add_user("ci", "pw");
    let token = issue(&env, "ci", &SCOPES);
    // Issued while serving, through the control socket.
    let server = Server::start(&env).unwrap();
    let served = issue(&env, "ci", &SCOPES);
    assert_scopes_hold(server.addr, &served).await;
    // A reload (SIGHUP) keeps them.
    std::process::Command::new("kill")
        .args(["-HUP", &server.child.id().to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_scopes_hold(server.addr, &token).await;
    let backup = env.dir.path().join("backup.jsonl");
    env.ok(&["backup", backup.to_str().unwrap()]);
    assert!(server.stop().success());

    // A restart keeps them.
    let server = Server::start(&env).unwrap();
    assert_scopes_hold(server.addr, &token).await;
    assert!(server.stop().success());

    // So does a backup restored into a new store.
    let other = self::env(up.addr, "");
    other.ok(&["restore", backup.to_str().unwrap()]);
    let server = Server::start(&other).unwrap();
    assert_scopes_hold(server.addr, &token).await;
    assert_scopes_hold(server.addr, &served).await;
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn scopes_only_narrow_rules_and_public_paths() {
    let up = echo_upstream().await;
    let env = env(
        up.addr,
        "public = [\"/open/**\"]\n\n[[rules]]\npath = \"/admin/**\"\nroles = [\"admin\"]\n",
    );
    env.add_user("ci", "pw");
    let token = issue(&env, "ci", &["* /admin/**", "GET /reports/**"]);
    let server = Server::start(&env).unwrap();
    // A scope covering a path the rules refuse the user does not open it.
    assert_eq!(status(server.addr, "GET", "/admin/x", &token).await, 403);
    // A public path stays public, and the scoped token outside its scope
    // lends it no identity.
    let open = send(
        server.addr,
        Request::get("/open/x")
            .header("authorization", format!("Token {token}"))
            .body(Bytes::new())
            .unwrap(),
    )
    .await;
    let seen = open.seen();
    assert!(seen.header("x-auth-user").is_none(), "{:?}", seen.headers);
    assert_eq!(status(server.addr, "GET", "/reports/x", &token).await, 200);
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_service_user_has_tokens_but_never_logs_in() {
    let up = echo_upstream().await;
    let env = env(up.addr, "");
    env.ok(&["user", "add", "robot", "--no-password", "--role", "ci"]);
    env.add_user("person", "pw");
    let users: serde_json::Value =
        serde_json::from_str(&env.ok(&["user", "list", "--json"])).unwrap();
    let password = |name: &str| {
        users
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == name)
            .unwrap()["password"]
            .clone()
    };
    assert_eq!(password("robot"), false);
    assert_eq!(password("person"), true);

    let token = issue(&env, "robot", &["GET /reports/**"]);
    let server = Server::start(&env).unwrap();
    for password in ["", "!", "anything"] {
        let r = send(
            server.addr,
            common::binary::login_request("robot", password),
        )
        .await;
        let status = r.status.as_u16();
        // An empty password is a missing field (400); anything else 401.
        assert!(
            status == 401 || (password.is_empty() && status == 400),
            "{password:?}: {status}"
        );
    }
    let r = get(server.addr, "/reports/x", Some(&token)).await;
    assert_eq!(r.seen().header("x-auth-user"), Some("robot"));
    assert_eq!(r.seen().header("x-auth-roles"), Some("ci"));
    server.stop();
}
