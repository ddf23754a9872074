//! Several real `tokengate serve` processes on one PostgreSQL database, and
//! the CLI beside them: shared users and tokens, revocations heard by every
//! gateway on connections already open, an outage of the database, a
//! concurrent first start, no database round trip for a seen token, and
//! kill -9 under load. `.ci/run` starts the server these tests use.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::binary::{Env, Server, login_request, logout_request, try_send};
use common::postgres::{PrivateServer, create_database, database, scalar};
use common::*;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// A password the test server (trust authentication) ignores: it is in
/// every store URL here, and must never be printed.
const PASSWORD: &str = "never-printed-pw";

/// A config directory for gateways on the database at `url`.
fn env_on(url: &str, upstream: SocketAddr, extra: &str) -> Env {
    let url = url.replacen("://postgres@", &format!("://postgres:{PASSWORD}@"), 1);
    let env = Env::serving(upstream, extra);
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        "[store]\npath = \"data\"\n",
        &format!("[store]\nbackend = \"postgres\"\nurl = \"{url}\"\npool_size = 4\n"),
    );
    std::fs::write(&env.config, text).unwrap();
    env
}

fn start(env: &Env, name: &str) -> Server {
    Server::start_logged(env, name).unwrap_or_else(|f| panic!("{name} did not start: {f:?}"))
}

fn add_user(env: &Env, name: &str, password: &str) {
    let out = env.run_stdin(
        &["user", "add", name, "--password-stdin"],
        &format!("{password}\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn login(addr: SocketAddr, user: &str, password: &str) -> String {
    let (status, body) = try_send(addr, login_request(user, password), Duration::from_secs(10))
        .await
        .expect("login answered");
    assert_eq!(status, 200, "login: {}", String::from_utf8_lossy(&body));
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    json["token"].as_str().unwrap().to_owned()
}

/// The status of one login attempt as `ann`.
async fn login_status(addr: SocketAddr, password: &str) -> StatusCode {
    try_send(
        addr,
        login_request("ann", password),
        Duration::from_secs(10),
    )
    .await
    .expect("login answered")
    .0
}

/// One kept-alive HTTP/1.1 connection to a gateway.
struct Conn(hyper::client::conn::http1::SendRequest<Full<Bytes>>);

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn(send)
    }

    /// GET /api with `token` on this connection; the status.
    async fn get(&mut self, token: &str) -> StatusCode {
        self.0.ready().await.expect("the connection stays open");
        let req = Request::get("/api")
            .header("host", "gateway")
            .header("authorization", format!("Token {token}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = self.0.send_request(req).await.expect("an answer");
        let status = response.status();
        let _ = response.into_body().collect().await;
        status
    }

    /// Asks until the answer is `want`; how long that took.
    async fn until(&mut self, token: &str, want: StatusCode, limit: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let got = self.get(token).await;
            if got == want {
                return started.elapsed();
            }
            assert!(
                started.elapsed() < limit,
                "still {got} after {:?}, want {want}",
                started.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_gateways_share_users_and_tokens_and_hear_every_revocation_within_a_second() {
    let Some(url) = database().await else { return };
    let upstream = echo_upstream().await;
    let env = env_on(&url, upstream.addr, "");
    // The CLI works on the database with no server running.
    add_user(&env, "ann", "pw-ann");
    let gateways: Vec<Server> = (0..3).map(|i| start(&env, &format!("g{i}"))).collect();
    let addrs: Vec<SocketAddr> = gateways.iter().map(|g| g.addr).collect();
    // And with them running: a user added now is known to all.
    add_user(&env, "bob", "pw-bob");
    let token = login(addrs[2], "bob", "pw-bob").await;
    for &addr in &addrs {
        let seen = get(addr, "/api", Some(&token)).await.seen();
        assert_eq!(seen.header("x-auth-user"), Some("bob"));
    }

    let mut report = Vec::new();
    for kind in [
        "logout",
        "token revoke",
        "user passwd",
        "user disable",
        "user remove",
    ] {
        let token = login(addrs[0], "ann", "pw-ann").await;
        let mut conns = Vec::new();
        for &addr in &addrs {
            let mut conn = Conn::open(addr).await;
            assert_eq!(conn.get(&token).await, 200, "{kind}: before");
            conns.push(conn);
        }
        let started = Instant::now();
        match kind {
            "logout" => {
                let (status, _) =
                    try_send(addrs[1], logout_request(&token), Duration::from_secs(5))
                        .await
                        .unwrap();
                assert_eq!(status, 204);
            }
            "token revoke" => {
                let listed = env.json(&["token", "list", "--user", "ann", "--json"]);
                let id = listed[0]["id"].as_str().unwrap().to_owned();
                env.ok(&["token", "revoke", &id]);
            }
            "user passwd" => {
                let out = env.run_stdin(&["user", "passwd", "ann", "--password-stdin"], "pw-ann\n");
                assert!(out.status.success());
            }
            "user disable" => {
                env.ok(&["user", "disable", "ann"]);
                env.ok(&["user", "enable", "ann"]);
            }
            "user remove" => {
                env.ok(&["user", "remove", "ann"]);
            }
            _ => unreachable!(),
        }
        let acknowledged = started.elapsed();
        let mut slowest = Duration::ZERO;
        for conn in &mut conns {
            let took = conn
                .until(&token, StatusCode::UNAUTHORIZED, Duration::from_secs(1))
                .await;
            slowest = slowest.max(took);
        }
        report.push(format!(
            "{kind}: acknowledged in {acknowledged:?}, refused by all three {slowest:?} later"
        ));
    }
    for line in &report {
        println!("{line}");
    }
    // Bob was never touched.
    for &addr in &addrs {
        assert_eq!(get(addr, "/api", Some(&token)).await.status, 200);
    }
    let checked = env.ok(&["check"]);
    assert!(checked.contains(":***@"), "{checked}");
    for g in gateways {
        let log = g.stop_log();
        assert!(log.contains(":***@"), "the store is named: {log}");
        assert!(!log.contains(PASSWORD), "{log}");
    }
    assert!(!checked.contains(PASSWORD));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_fails_closed_after_max_stale_and_recovers_without_a_restart() {
    let Some(pg) = PrivateServer::start() else {
        return;
    };
    let url = create_database(&pg.url).await;
    let upstream = echo_upstream().await;
    let env = env_on(&url, upstream.addr, "\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("pool_size = 4\n", "pool_size = 4\nmax_stale = \"2s\"\n");
    std::fs::write(&env.config, text).unwrap();
    add_user(&env, "ann", "pw-ann");
    let gateway = start(&env, "g");
    let (addr, admin) = (gateway.addr, gateway.admin.unwrap());
    let kept = login(addr, "ann", "pw-ann").await;
    let revoked = login(addr, "ann", "pw-ann").await;
    let mut conn = Conn::open(addr).await;
    assert_eq!(conn.get(&kept).await, 200);
    assert_eq!(conn.get(&revoked).await, 200);
    assert_eq!(get(admin, "/readyz", None).await.status, 200);

    // Taken before: the gateway may see the connection go before stop returns.
    let down = Instant::now();
    pg.stop();
    // Checked tokens go on working, for at most max_stale.
    assert_eq!(conn.get(&kept).await, 200, "within max_stale");
    // Nothing new can be stored: never a token that was not saved.
    let (status, _) = try_send(
        addr,
        login_request("ann", "pw-ann"),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(status, 503, "login during the outage");
    let (status, _) = try_send(addr, logout_request(&kept), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(status, 503, "logout during the outage");
    // Then the gateway fails closed, and says it is not ready.
    let refused = conn
        .until(
            &kept,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(10),
        )
        .await;
    let stale_for = down.elapsed();
    assert!(
        stale_for >= Duration::from_secs(2),
        "503 only after max_stale: {stale_for:?}"
    );
    assert_eq!(get(admin, "/readyz", None).await.status, 503);
    // The CLI says the database is down, and not its password.
    let out = env.run(&["user", "list"]);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("PostgreSQL is up") && !said.contains(PASSWORD),
        "{said}"
    );
    println!(
        "outage: cached tokens served for {:?}, then 503",
        stale_for - refused
    );

    // The database comes back; a revocation made before this gateway
    // listens again is not announced to it, yet it is honoured.
    pg.resume();
    let back = Instant::now();
    assert!(!gateway.log_text().contains(PASSWORD));
    let out = env.run_stdin(&["token", "revoke", "--secret"], &format!("{revoked}\n"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    conn.until(&kept, StatusCode::OK, Duration::from_secs(15))
        .await;
    let recovered = back.elapsed();
    assert_eq!(
        conn.get(&revoked).await,
        401,
        "the revocation made meanwhile holds"
    );
    assert_eq!(get(admin, "/readyz", None).await.status, 200);
    let fresh = login(addr, "ann", "pw-ann").await;
    assert_eq!(conn.get(&fresh).await, 200);
    println!("recovery: serving again {recovered:?} after the database came back");
}

#[tokio::test(flavor = "multi_thread")]
async fn gateways_starting_at_once_on_an_empty_database_all_come_up() {
    let Some(url) = database().await else { return };
    let upstream = echo_upstream().await;
    let env = std::sync::Arc::new(env_on(&url, upstream.addr, ""));
    let starting: Vec<_> = (0..4)
        .map(|i| {
            let env = env.clone();
            std::thread::spawn(move || start(&env, &format!("g{i}")))
        })
        .collect();
    let gateways: Vec<Server> = starting.into_iter().map(|t| t.join().unwrap()).collect();
    add_user(&env, "ann", "pw-ann");
    for g in &gateways {
        let token = login(g.addr, "ann", "pw-ann").await;
        assert_eq!(get(g.addr, "/api", Some(&token)).await.status, 200);
    }
    assert_eq!(
        scalar(&url, "SELECT count(*) FROM tokengate_schema").await,
        i64::from(tokengate::store::postgres::schema::SUPPORTED),
        "each migration ran once"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_already_checked_costs_no_database_transaction() {
    let Some(url) = database().await else { return };
    let upstream = echo_upstream().await;
    let env = env_on(&url, upstream.addr, "");
    add_user(&env, "ann", "pw-ann");
    let gateway = start(&env, "g");
    let token = login(gateway.addr, "ann", "pw-ann").await;
    let mut conn = Conn::open(gateway.addr).await;
    assert_eq!(conn.get(&token).await, 200);
    let commits = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()";
    // Statistics reach pg_stat_database within a second of a transaction.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = scalar(&url, commits).await;
    const REQUESTS: i64 = 500;
    for _ in 0..REQUESTS {
        assert_eq!(conn.get(&token).await, 200);
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = scalar(&url, commits).await;
    // The counting queries themselves and the link's pings make a few.
    let spent = after - before;
    println!("{REQUESTS} requests with a checked token: {spent} database transactions");
    assert!(spent < 20, "{spent} transactions for {REQUESTS} requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_a_gateway_under_load_loses_no_acknowledged_change() {
    let Some(url) = database().await else { return };
    let upstream = echo_upstream().await;
    let env = env_on(&url, upstream.addr, "");
    for i in 0..4 {
        add_user(&env, &format!("u{i}"), "pw");
    }
    let victim = start(&env, "victim");
    let witness = start(&env, "witness");
    let target = victim.addr;
    // Each worker logs in and out in turn and keeps what was acknowledged.
    let workers: Vec<_> = (0..4)
        .map(|i| {
            tokio::spawn(async move {
                let (mut live, mut ended) = (Vec::new(), Vec::new());
                for round in 0.. {
                    let Some((status, body)) = try_send(
                        target,
                        login_request(&format!("u{i}"), "pw"),
                        Duration::from_secs(2),
                    )
                    .await
                    else {
                        break;
                    };
                    if status != 200 {
                        break;
                    }
                    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let token = json["token"].as_str().unwrap().to_owned();
                    if round % 2 == 0 {
                        match try_send(target, logout_request(&token), Duration::from_secs(2)).await
                        {
                            Some((s, _)) if s == 204 => ended.push(token),
                            // Not acknowledged: either outcome is right.
                            _ => break,
                        }
                    } else {
                        live.push(token);
                    }
                    if live.len() + ended.len() > 400 {
                        break;
                    }
                }
                (live, ended)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    victim.kill9();
    let (mut live, mut ended) = (Vec::new(), Vec::new());
    for w in workers {
        let (l, e) = w.await.unwrap();
        live.extend(l);
        ended.extend(e);
    }
    assert!(
        live.len() + ended.len() > 10,
        "the load ran before the kill"
    );
    for token in &live {
        assert_eq!(
            get(witness.addr, "/api", Some(token)).await.status,
            200,
            "an acknowledged login was lost"
        );
    }
    for token in &ended {
        assert_eq!(
            get(witness.addr, "/api", Some(token)).await.status,
            401,
            "an acknowledged logout was lost"
        );
    }
    println!(
        "kill -9 under load: {} acknowledged logins and {} logouts all held",
        live.len(),
        ended.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sled_store_moves_to_postgres_by_backup_and_restore() {
    let Some(url) = database().await else { return };
    let upstream = echo_upstream().await;
    let sled = Env::serving(upstream.addr, "");
    add_user(&sled, "ann", "pw-ann");
    let token = sled.issue(&["ann", "--label", "ci"]);
    let file = sled.dir.path().join("snapshot.jsonl");
    let file = file.to_str().unwrap();
    sled.ok(&["backup", file]);

    let pg = env_on(&url, upstream.addr, "");
    add_user(&pg, "zed", "pw");
    let out = pg.run(&["restore", file]);
    assert!(!out.status.success(), "a database with users is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    pg.ok(&["user", "remove", "zed"]);
    pg.ok(&["restore", file]);
    let gateway = start(&pg, "g");
    // The token minted on sled works against the database.
    let seen = get(gateway.addr, "/api", Some(&token)).await.seen();
    assert_eq!(seen.header("x-auth-user"), Some("ann"));
    assert_eq!(
        login(gateway.addr, "ann", "pw-ann").await.len(),
        token.len()
    );
    let listed = pg.json(&["token", "list", "--json"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["label"] == "ci")
    );

    // And back: the database's snapshot restores into an empty sled store.
    let again = pg.dir.path().join("again.jsonl");
    pg.ok(&["backup", again.to_str().unwrap()]);
    let back = Env::serving(upstream.addr, "");
    back.ok(&["restore", again.to_str().unwrap()]);
    let users = back.json(&["user", "list", "--json"]);
    assert_eq!(users[0]["username"], "ann");
    let tokens = back.json(&["token", "list", "--json"]);
    assert_eq!(tokens.as_array().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn login_failures_count_across_gateways() {
    let Some(url) = database().await else { return };
    let upstream = echo_upstream().await;
    let env = env_on(
        &url,
        upstream.addr,
        "\n[throttle]\nmax_failures = 3\nban = \"30s\"\nlimited_delay = \"0s\"\n",
    );
    add_user(&env, "ann", "right");
    let (a, b) = (start(&env, "a"), start(&env, "b"));
    // Two guesses on one gateway and one on the other: three in all, a
    // ban on every gateway, though neither saw three itself.
    assert_eq!(login_status(a.addr, "wrong").await, 401);
    assert_eq!(login_status(a.addr, "wrong").await, 401);
    assert_eq!(login_status(b.addr, "wrong").await, 401);
    for addr in [a.addr, b.addr] {
        assert_eq!(
            login_status(addr, "right").await,
            429,
            "the right password while banned"
        );
    }
    // The CLI sees and lifts the shared ban from the database.
    let (who, bans) = env.banned();
    assert!(
        who.contains(&"ann".into()) && who.contains(&"127.0.0.1".into()),
        "{bans}"
    );
    env.ok(&["throttle", "unban", "ann"]);
    env.ok(&["throttle", "unban", "127.0.0.1"]);
    assert_eq!(login_status(b.addr, "right").await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unban_reaches_the_gateway_whose_own_count_banned() {
    let Some(url) = database().await else { return };
    let upstream = echo_upstream().await;
    let env = env_on(
        &url,
        upstream.addr,
        "\n[throttle]\nmax_failures = 3\nban = \"60s\"\nlimited_delay = \"0s\"\n",
    );
    add_user(&env, "ann", "right");
    let a = start(&env, "a");
    let status = |password| login_status(a.addr, password);
    // Every failure on one gateway: it bans from its own count, which the
    // database's rows cannot lift.
    for _ in 0..3 {
        assert_eq!(status("wrong").await, 401);
    }
    assert_eq!(
        status("right").await,
        429,
        "the right password while banned"
    );
    env.ok(&["throttle", "unban", "ann"]);
    env.ok(&["throttle", "unban", "127.0.0.1"]);
    // The gateway hears of it over LISTEN/NOTIFY, a moment after the CLI.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut last = status("right").await;
    while last == 429 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        last = status("right").await;
    }
    assert_eq!(last, 200, "still banned 5 s after the unban");
}
