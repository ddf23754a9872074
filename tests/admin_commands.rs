//! Everyday administration through the real binary: changing roles,
//! revoking a token by its secret, and seeing and lifting login bans, with
//! `serve` running and, where it matters, without.

mod common;

use bytes::Bytes;
use common::binary::{Env, Server, fails_saying, stderr};
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};

const RULES: &str = "\n[[rules]]\npath = \"/admin/**\"\nroles = [\"admin\"]\n";

async fn status(
    client: &hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        Full<Bytes>,
    >,
    url: &str,
    token: &str,
) -> u16 {
    let req = Request::get(url)
        .header("authorization", format!("Token {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = client.request(req).await.unwrap();
    let status = r.status().as_u16();
    // Read to the end, so the connection goes back to the client's pool.
    let _ = r.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread")]
async fn new_roles_apply_on_the_next_request_of_an_open_connection() {
    let up = echo_upstream().await;
    let env = Env::serving(up.addr, RULES);
    env.add_user_with_roles("ann", "pw", &["ops"]);
    let token = env.issue(&["ann"]);
    let server = Server::start(&env).unwrap();
    let url = format!("http://{}/admin/x", server.addr);
    // One client: its kept-alive connection carries every request below.
    let client = client();
    assert_eq!(status(&client, &url, &token).await, 403);
    env.ok(&["user", "roles", "ann", "--role", "admin", "--role", "ops"]);
    assert_eq!(status(&client, &url, &token).await, 200);
    let users = env.json(&["user", "list", "--json"]);
    assert_eq!(users[0]["roles"], serde_json::json!(["admin", "ops"]));
    env.ok(&["user", "roles", "ann"]);
    assert_eq!(status(&client, &url, &token).await, 403, "roles cleared");
    // The token itself lived through both changes.
    assert_eq!(
        status(&client, &format!("http://{}/y", server.addr), &token).await,
        200
    );

    let unknown = env.run(&["user", "roles", "nobody", "--role", "x"]);
    fails_saying(&unknown, "nobody");
    let bad = env.run(&["user", "roles", "ann", "--role", "has space"]);
    fails_saying(&bad, "role");
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leaked_token_is_revoked_by_its_secret() {
    let up = echo_upstream().await;
    let env = Env::serving(up.addr, "");
    env.add_user("ann", "pw");
    let leaked = env.issue(&["ann", "--label", "leaked"]);
    let kept = env.issue(&["ann", "--label", "kept"]);
    // Offline first: the CLI opens the store itself.
    let offline = env.issue(&["ann"]);
    let out = env.run_stdin(&["token", "revoke", "--secret"], &format!("{offline}\n"));
    assert!(out.status.success(), "{}", stderr(&out));

    let server = Server::start(&env).unwrap();
    assert_eq!(get(server.addr, "/x", Some(&leaked)).await.status, 200);
    let out = env.run_stdin(&["token", "revoke", "--secret"], &format!("{leaked}\n"));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(get(server.addr, "/x", Some(&leaked)).await.status, 401);
    assert_eq!(get(server.addr, "/x", Some(&offline)).await.status, 401);
    assert_eq!(get(server.addr, "/x", Some(&kept)).await.status, 200);

    let again = env.run_stdin(&["token", "revoke", "--secret"], &format!("{leaked}\n"));
    fails_saying(&again, "no token");
    let mangled = mangled(&kept);
    let bad = env.run_stdin(&["token", "revoke", "--secret"], &mangled);
    fails_saying(&bad, "does not hold a tokengate token");
    assert_eq!(get(server.addr, "/x", Some(&kept)).await.status, 200);
    // One way at a time.
    let both = env.run(&["token", "revoke", "--secret", "--user", "ann"]);
    assert!(!both.status.success());
    server.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn bans_are_listed_and_lifted_while_serving() {
    let up = echo_upstream().await;
    let env = Env::serving(
        up.addr,
        "\n[throttle]\nmax_failures = 2\nlimited_delay = \"0s\"\n",
    );
    env.add_user("ann", "right");
    // No server: bans live in a running gateway, so there are none.
    let offline = env.run(&["throttle", "list"]);
    fails_saying(&offline, "no `tokengate serve` is running");

    let server = Server::start(&env).unwrap();
    assert_eq!(env.ok(&["throttle", "list"]).trim(), "no bans");
    for _ in 0..2 {
        let r = send(server.addr, common::binary::login_request("ann", "wrong")).await;
        assert_eq!(r.status, 401);
    }
    let limited = send(server.addr, common::binary::login_request("ann", "right")).await;
    assert_eq!(limited.status, 429);
    let (who, bans) = env.banned();
    assert!(
        who.contains(&"ann".into()) && who.contains(&"127.0.0.1".into()),
        "{bans}"
    );
    assert!(bans[0]["until"].as_str().unwrap().ends_with('Z'), "{bans}");

    env.ok(&["throttle", "unban", "ann"]);
    env.ok(&["throttle", "unban", "127.0.0.1"]);
    let r = send(server.addr, common::binary::login_request("ann", "right")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let nothing = env.run(&["throttle", "unban", "nobody"]);
    fails_saying(&nothing, "nothing to unban");
    server.stop();
}

/// A reload warns of a restart-only key only while the file differs from
/// what runs: setting it back is not a change.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_compares_restart_only_keys_with_what_runs() {
    let up = echo_upstream().await;
    let env = Env::serving(up.addr, "");
    let original = std::fs::read_to_string(&env.config).unwrap();
    let server = Server::start(&env).unwrap();
    let hup = |text: &str| {
        std::fs::write(&env.config, text).unwrap();
        std::process::Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap();
    };
    let reloads = |log: &str| log.matches("configuration reloaded").count();
    let wait_for = |n: usize| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while reloads(&server.log_text()) < n {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                server.log_text()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    hup(&original.replace("[server]\n", "[server]\nmax_connections = 500\n"));
    wait_for(1);
    hup(&original);
    wait_for(2);
    let log = server.stop_log();
    let warned = log
        .lines()
        .filter(|l| l.contains("only takes effect after a restart"))
        .collect::<Vec<_>>();
    assert_eq!(warned.len(), 1, "{warned:#?}");
    assert!(
        warned[0].contains("server.max_connections"),
        "{}",
        warned[0]
    );
}
