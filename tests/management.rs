//! User and token management through the real binary, with `serve` running
//! (commands go through the admin channel) and stopped (they open the store).

mod common;

use std::net::SocketAddr;

use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::binary::{Env, Server, last_line, walk};
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The same sequence of commands, checked by their output; `server` tells
/// whether the HTTP side can be checked too.
async fn manage_users_and_tokens(env: &Env, server: Option<SocketAddr>) {
    let out = env.run_stdin(common::binary::ADD_ALICE_AS_ADMIN, "pw-alice\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dup = env.run_stdin(&["user", "add", "alice", "--password-stdin"], "x\n");
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already exists"));
    let empty = env.run_stdin(&["user", "add", "bob", "--password-stdin"], "\n");
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("empty"));
    let long = env.run_stdin(
        &["user", "add", "bob", "--password-stdin"],
        &"x".repeat(1025),
    );
    assert!(!long.status.success());
    assert!(String::from_utf8_lossy(&long.stderr).contains("1024"));
    let no_tty = env.run(&["user", "add", "bob"]);
    assert!(!no_tty.status.success());
    assert!(String::from_utf8_lossy(&no_tty.stderr).contains("--password-stdin"));

    let users = env.json(&["user", "list", "--json"]);
    assert_eq!(users.as_array().unwrap().len(), 1);
    assert_eq!(users[0]["username"], "alice");
    assert_eq!(users[0]["roles"], serde_json::json!(["admin"]));
    assert_eq!(users[0]["disabled"], false);

    let issued = env.ok(&[
        "token", "issue", "alice", "--label", "ci bot", "--ttl", "1h",
    ]);
    let token = last_line(&issued).to_owned();
    assert!(token.starts_with("tg_") && token.len() == 52, "{issued}");
    let second = last_line(&env.ok(&["token", "issue", "alice"])).to_owned();

    let listed = env.ok(&["token", "list", "--json"]);
    assert!(
        !listed.contains(&token) && !listed.contains(&token[3..20]),
        "secret in token list"
    );
    let tokens: serde_json::Value = serde_json::from_str(&listed).unwrap();
    let tokens = tokens.as_array().unwrap();
    assert_eq!(tokens.len(), 2);
    let ci = tokens.iter().find(|t| t["label"] == "ci bot").unwrap();
    for key in ["id", "user", "label", "created_at", "expires_at"] {
        assert!(ci.get(key).is_some(), "missing {key}");
    }
    assert_eq!(ci["user"], "alice");
    assert!(ci["expires_at"].is_string());
    let text = env.ok(&["token", "list", "--user", "alice"]);
    assert!(!text.contains(&token));
    assert!(
        env.json(&["token", "list", "--user", "nobody", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    if let Some(addr) = server {
        assert_eq!(get(addr, "/x", Some(&token)).await.status, 200);
        assert!(
            get(addr, "/x", Some(&token))
                .await
                .seen()
                .header("x-auth-user")
                == Some("alice")
        );
    }

    env.ok(&["token", "revoke", ci["id"].as_str().unwrap()]);
    let again = env.run(&["token", "revoke", ci["id"].as_str().unwrap()]);
    assert!(
        !again.status.success(),
        "revoking twice must say the token is unknown"
    );
    if let Some(addr) = server {
        assert_eq!(get(addr, "/x", Some(&token)).await.status, 401);
        assert_eq!(get(addr, "/x", Some(&second)).await.status, 200);
    }

    let out = env.run_stdin(&["user", "passwd", "alice", "--password-stdin"], "pw-new\n");
    assert!(out.status.success());
    assert!(
        env.json(&["token", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    if let Some(addr) = server {
        assert_eq!(get(addr, "/x", Some(&second)).await.status, 401);
        let r = login(addr, "alice", "pw-alice").await;
        assert_eq!(r.status, 401, "old password must fail");
        assert_eq!(login(addr, "alice", "pw-new").await.status, 200);
    }

    let t3 = last_line(&env.ok(&["token", "issue", "alice", "--ttl", "0s"])).to_owned();
    let listed = env.json(&["token", "list", "--json"]);
    assert!(listed[0]["expires_at"].is_null() || listed.as_array().unwrap().len() > 1);
    env.ok(&["user", "disable", "alice"]);
    let users = env.json(&["user", "list", "--json"]);
    assert_eq!(users[0]["disabled"], true);
    let refused = env.run(&["token", "issue", "alice"]);
    assert!(!refused.status.success(), "disabled users get no tokens");
    if let Some(addr) = server {
        assert_eq!(get(addr, "/x", Some(&t3)).await.status, 401);
        assert_eq!(login(addr, "alice", "pw-new").await.status, 401);
    }
    env.ok(&["user", "enable", "alice"]);
    if let Some(addr) = server {
        assert_eq!(
            get(addr, "/x", Some(&t3)).await.status,
            401,
            "enable revives no token"
        );
        assert_eq!(login(addr, "alice", "pw-new").await.status, 200);
    }

    let t4 = last_line(&env.ok(&["token", "issue", "alice"])).to_owned();
    let _t5 = last_line(&env.ok(&["token", "issue", "alice"])).to_owned();
    let out = env.run(&["token", "revoke", "--user", "alice"]);
    assert!(out.status.success());
    if let Some(addr) = server {
        assert_eq!(get(addr, "/x", Some(&t4)).await.status, 401);
    }
    assert!(
        env.json(&["token", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );

    let t6 = last_line(&env.ok(&["token", "issue", "alice"])).to_owned();
    env.ok(&["user", "remove", "alice"]);
    assert!(
        env.json(&["user", "list", "--json"])
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert!(!env.run(&["user", "remove", "alice"]).status.success());
    assert!(!env.run(&["token", "issue", "alice"]).status.success());
    assert!(!env.run(&["user", "disable", "ghost"]).status.success());
    if let Some(addr) = server {
        assert_eq!(get(addr, "/x", Some(&t6)).await.status, 401);
    }
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> Reply {
    send(
        addr,
        Request::post("/login")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("username={user}&password={password}"))
            .unwrap(),
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_works_with_the_server_stopped() {
    let up = echo_upstream().await;
    let env = Env::serving(up.addr, "");
    manage_users_and_tokens(&env, None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_works_while_the_server_runs() {
    let up = echo_upstream().await;
    let env = Env::serving(up.addr, "");
    let server = Server::start(&env).unwrap();
    manage_users_and_tokens(&env, Some(server.addr)).await;
    let log = server.stop_log();
    assert!(
        log.contains("admin channel"),
        "commands did not go through the server:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn state_written_while_running_is_there_after_a_restart() {
    let up = echo_upstream().await;
    let env = Env::serving(up.addr, "");
    let server = Server::start(&env).unwrap();
    let out = env.run_stdin(&["user", "add", "carol", "--password-stdin"], "pw\n");
    assert!(out.status.success());
    let token = last_line(&env.ok(&["token", "issue", "carol"])).to_owned();
    server.stop();
    let users = env.json(&["user", "list", "--json"]);
    assert_eq!(users[0]["username"], "carol");
    let server = Server::start(&env).unwrap();
    assert_eq!(get(server.addr, "/x", Some(&token)).await.status, 200);
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn revocation_reaches_an_open_keep_alive_connection() {
    let up = echo_upstream().await;
    let env = Env::serving(up.addr, "");
    let server = Server::start(&env).unwrap();
    assert!(
        env.run_stdin(&["user", "add", "dan", "--password-stdin"], "pw\n")
            .status
            .success()
    );
    let token = last_line(&env.ok(&["token", "issue", "dan"])).to_owned();

    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let request = || {
        Request::get("/x")
            .header("host", "gw")
            .header("authorization", format!("Token {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let r = sender.send_request(request()).await.unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();

    env.ok(&["token", "revoke", "--user", "dan"]);

    sender
        .ready()
        .await
        .expect("the keep-alive connection was closed");
    let r = sender.send_request(request()).await.unwrap();
    assert_eq!(
        r.status(),
        401,
        "revocation must be seen on the same connection"
    );
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_expire_after_their_ttl() {
    let up = echo_upstream().await;
    let env = Env::serving(up.addr, "token_ttl = \"1s\"");
    let server = Server::start(&env).unwrap();
    assert!(
        env.run_stdin(&["user", "add", "eve", "--password-stdin"], "pw\n")
            .status
            .success()
    );
    let r = login(server.addr, "eve", "pw").await;
    assert_eq!(r.status, 200);
    let body = r.json();
    assert!(body["expires_at"].is_string());
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(get(server.addr, "/x", Some(&token)).await.status, 200);
    // Expiry is second-granular: within at most two seconds the token is dead.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = get(server.addr, "/x", Some(&token)).await.status;
        if status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "token outlived its ttl");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_logs_or_store_files() {
    let up = echo_upstream().await;
    let mut env = Env::serving(up.addr, "");
    env.vars.push(("RUST_LOG".into(), "trace".into()));
    let server = Server::start(&env).unwrap();
    let password = "Very-Secret-Password-42";
    assert!(
        env.run_stdin(
            &["user", "add", "fay", "--password-stdin"],
            &format!("{password}\n")
        )
        .status
        .success()
    );
    let r = login(server.addr, "fay", password).await;
    let token = r.json()["token"].as_str().unwrap().to_owned();
    assert_eq!(get(server.addr, "/x", Some(&token)).await.status, 200);
    let issued = last_line(&env.ok(&["token", "issue", "fay"])).to_owned();
    assert_eq!(
        login(server.addr, "fay", "wrong-Password-99").await.status,
        401
    );
    let log = server.stop_log();
    assert!(
        log.contains("login succeeded"),
        "trace log was not captured:\n{log}"
    );
    for secret in [password, "wrong-Password-99", &token, &issued] {
        assert!(!log.contains(secret), "secret {secret} found in the log");
        for file in walk(&env.store_path()).into_iter().filter(|p| p.is_file()) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret found in {file:?}"
            );
        }
    }
}

#[test]
fn the_admin_socket_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(echo_upstream());
    let env = Env::serving(up.addr, "");
    let server = Server::start(&env).unwrap();
    let socket = env.store_path().join("admin.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let dir_mode = std::fs::metadata(env.store_path())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700);
    server.stop();
    assert!(!socket.exists(), "the socket is removed at shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_applies_a_valid_config_and_ignores_a_broken_one() {
    let up = echo_upstream().await;
    let env = Env::serving(up.addr, "");
    let server = Server::start(&env).unwrap();
    let hup = |pid: u32| {
        Command::new("kill")
            .args(["-HUP", &pid.to_string()])
            .status()
            .unwrap()
    };
    assert_eq!(get(server.addr, "/docs", None).await.status, 401);

    let good = std::fs::read_to_string(&env.config).unwrap();
    std::fs::write(&env.config, format!("{good}\n[bogus]\nkey = 1\n")).unwrap();
    hup(server.child.id());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        get(server.addr, "/docs", None).await.status,
        401,
        "still serving the old config"
    );

    std::fs::write(
        &env.config,
        good.replace("[auth]\n", "[auth]\npublic = [\"/docs/**\"]\n"),
    )
    .unwrap();
    hup(server.child.id());
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(server.addr, "/docs/a", None).await.status != 200 {
        assert!(
            Instant::now() < deadline,
            "the valid config was never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = server.stop_log();
    assert!(log.contains("reload refused"), "{log}");
    assert!(
        log.contains("bogus"),
        "the refusal names the bad key:\n{log}"
    );
    assert!(log.contains("configuration reloaded"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_while_running_and_restore_into_an_empty_store() {
    let up = echo_upstream().await;
    let env = Env::serving(up.addr, "");
    let server = Server::start(&env).unwrap();
    assert!(
        env.run_stdin(
            &["user", "add", "gus", "--role", "ops", "--password-stdin"],
            "pw\n"
        )
        .status
        .success()
    );
    let token = last_line(&env.ok(&["token", "issue", "gus", "--label", "ci"])).to_owned();
    let revoked = last_line(&env.ok(&["token", "issue", "gus"])).to_owned();
    let id = env
        .json(&["token", "list", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"].is_null())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok(&["token", "revoke", &id]);
    // A relative path is the CLI's, not the server's working directory.
    let out = env.cmd(&["backup", "snap.jsonl"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap = env.dir.path().join("snap.jsonl");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&snap).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let text = std::fs::read_to_string(&snap).unwrap();
    assert!(
        !text.contains(&token) && !text.contains("pw\""),
        "no secret in the backup"
    );
    server.stop();

    // Restoring over a non-empty store is refused.
    let refused = env.run(&["restore", snap.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not empty"));

    // A new, empty store gets everything back, with the server running.
    let fresh = Env::serving(up.addr, "");
    let server = Server::start(&fresh).unwrap();
    let out = fresh.run(&["restore", snap.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users = fresh.json(&["user", "list", "--json"]);
    assert_eq!(users[0]["username"], "gus");
    assert_eq!(users[0]["roles"], serde_json::json!(["ops"]));
    let r = get(server.addr, "/x", Some(&token)).await;
    assert_eq!(r.seen().header("x-auth-roles"), Some("ops"));
    assert_eq!(get(server.addr, "/x", Some(&revoked)).await.status, 401);
    assert_eq!(login(server.addr, "gus", "pw").await.status, 200);
    server.stop();

    // And with the server stopped.
    let offline = Env::serving(up.addr, "");
    offline.ok(&["restore", snap.to_str().unwrap()]);
    assert_eq!(
        offline
            .json(&["token", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line_with_access_fields() {
    let up = echo_upstream().await;
    let env = Env::serving(up.addr, "\n[log]\nformat = \"json\"\n");
    let server = Server::start(&env).unwrap();
    assert!(
        env.run_stdin(&["user", "add", "jay", "--password-stdin"], "pw\n")
            .status
            .success()
    );
    let token = login(server.addr, "jay", "pw").await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(get(server.addr, "/j?x=1", Some(&token)).await.status, 200);
    let log = server.stop_log();
    let mut access = None;
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        if v["target"] == "tokengate::access" && v["path"] == "/j" {
            access = Some(v);
        }
    }
    let access = access.expect("no access line for /j");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["status"], 200);
    assert_eq!(access["user"], "jay");
    assert!(access["latency_us"].is_u64());
    assert!(access["upstream_us"].is_u64());
    assert!(!log.contains(&token));
}

/// Every password check allocates argon2's whole memory cost at once; the
/// binary must hand it back, or each login grows the process for good and a
/// login flood exhausts memory (it did: 19 MiB per login, for glibc's
/// dynamic mmap threshold; see src/main.rs).
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread")]
async fn memory_taken_by_logins_is_given_back() {
    let up = echo_upstream().await;
    let env = Env::serving(up.addr, "");
    std::fs::write(
        &env.config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{}\"\n[store]\npath = \"data\"\n\
             [auth]\nargon2_memory = \"19MiB\"\nargon2_iterations = 1\n[throttle]\nenabled = false\n",
            up.addr
        ),
    )
    .unwrap();
    let out = env.run_stdin(&["user", "add", "dora", "--password-stdin"], "right\n");
    assert!(out.status.success());
    let server = Server::start(&env).unwrap();
    let rss_mib = || {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib / 1024
    };
    let before = rss_mib();
    for round in 0..3 {
        let logins: Vec<_> = (0..4)
            .map(|_| tokio::spawn(login(server.addr, "dora", "wrong")))
            .collect();
        for l in logins {
            assert_eq!(l.await.unwrap().status, 401, "round {round}");
        }
        assert_eq!(login(server.addr, "dora", "right").await.status, 200);
    }
    let after = rss_mib();
    // 15 logins of 19 MiB each; kept, they would add 285 MiB. At most two
    // (one per core) may be mapped at once, and none once they are done.
    assert!(
        after < before + 40,
        "resident memory grew from {before} MiB to {after} MiB over 15 logins"
    );
    server.stop();
}
