//! The admin listener: health, readiness and metrics after real traffic;
//! `tokengate healthcheck` and the access log through the binary.

mod common;

use std::sync::Arc;

use common::binary::{Env, Server};
use common::*;
use tokengate::config::Config;
use tokengate::store::Store;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

struct WithAdmin {
    gw: std::net::SocketAddr,
    admin: std::net::SocketAddr,
    store: Store,
    config: Arc<Config>,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start_with_admin(upstream: std::net::SocketAddr, extra: &str) -> WithAdmin {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokengate.toml");
    std::fs::write(&path, config_text(&format!("http://{upstream}"), extra)).unwrap();
    let config = Arc::new(Config::load(&path, |_| None).unwrap());
    let store = Store::open(&config.store.path).unwrap();
    let gateway = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (gw, admin_addr) = (gateway.local_addr().unwrap(), admin.local_addr().unwrap());
    let (stop, stopped) = oneshot::channel::<()>();
    let run = tokengate::run_with(
        tokengate::Listeners {
            gateway,
            admin: Some(admin),
        },
        config.clone(),
        store.clone(),
        None,
        async {
            let _ = stopped.await;
        },
    );
    let task = tokio::spawn(async move { run.await.unwrap() });
    WithAdmin {
        gw,
        admin: admin_addr,
        store,
        config,
        stop,
        task,
        _dir: dir,
    }
}

impl WithAdmin {
    /// The user "ann" with the password "pw", hashed as the gateway would.
    fn add_ann(&self) {
        let hasher = tokengate::auth::password::Hasher::new(self.config.auth.argon2).unwrap();
        let hash = hasher
            .hash_now(&tokengate::auth::password::Password::new("pw".into()))
            .unwrap();
        self.store.add_user("ann", hash, vec![]).unwrap();
    }
}

/// Every one of `lines` is a whole line of the metrics `text`.
fn has_lines(text: &str, lines: &[&str]) {
    for line in lines {
        assert!(
            text.lines().any(|l| l == *line),
            "missing `{line}` in:\n{text}"
        );
    }
}

#[tokio::test]
async fn health_readiness_and_metrics_after_traffic() {
    let up = echo_upstream().await;
    let g = start_with_admin(
        up.addr,
        "public = [\"/open\"]\n[[rules]]\npath = \"/admin/**\"\nroles = [\"admin\"]\n",
    )
    .await;
    g.add_ann();

    assert_eq!(get(g.admin, "/healthz", None).await.status, 200);
    assert_eq!(get(g.admin, "/readyz", None).await.status, 200);
    assert_eq!(get(g.admin, "/nope", None).await.status, 404);

    let login = |password: &'static str| send(g.gw, common::binary::login_request("ann", password));
    assert_eq!(login("bad").await.status, 401);
    let token = login("pw").await.json()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(get(g.gw, "/x", Some(&token)).await.status, 200);
    assert_eq!(get(g.gw, "/y", Some(&token)).await.status, 200);
    assert_eq!(get(g.gw, "/x", None).await.status, 401);
    assert_eq!(get(g.gw, "/open", None).await.status, 200);
    assert_eq!(get(g.gw, "/admin/x", Some(&token)).await.status, 403);

    let m = get(g.admin, "/metrics", None).await;
    assert_eq!(m.status, 200);
    assert!(
        m.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = m.text();
    has_lines(
        &text,
        &[
            "tokengate_responses_total{status=\"200\"} 4",
            "tokengate_responses_total{status=\"401\"} 2",
            "tokengate_responses_total{status=\"403\"} 1",
            "tokengate_auth_total{outcome=\"ok\"} 2",
            "tokengate_auth_total{outcome=\"missing\"} 1",
            "tokengate_auth_total{outcome=\"public\"} 1",
            "tokengate_auth_total{outcome=\"forbidden\"} 1",
            "tokengate_logins_total{outcome=\"ok\"} 1",
            "tokengate_logins_total{outcome=\"failed\"} 1",
            "tokengate_login_duration_seconds_count 2",
            "tokengate_upstream_duration_seconds_count 3",
        ],
    );
    assert!(text.contains("tokengate_open_connections "));

    g.stop.send(()).unwrap();
    g.task.await.unwrap();
}

/// Sign-ins on the token page count in the login metrics as `/login`'s
/// do: a wrong password as failed, a right one as ok.
#[tokio::test(flavor = "multi_thread")]
async fn token_page_sign_ins_are_counted_as_logins() {
    let up = echo_upstream().await;
    let g = start_with_admin(up.addr, "\n[portal]\npath = \"/_tokengate\"\n").await;
    g.add_ann();
    let sign_in = |password: &'static str| {
        let req = http::Request::post("/_tokengate/sign-in")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("sec-fetch-site", "same-origin")
            .body(bytes::Bytes::from(format!(
                "username=ann&password={password}"
            )))
            .unwrap();
        send(g.gw, req)
    };
    assert_eq!(sign_in("wrong").await.status, 401);
    let signed = sign_in("pw").await;
    assert_eq!(signed.status, 303, "{}", signed.text());
    assert!(signed.headers.contains_key("set-cookie"));

    has_lines(
        &get(g.admin, "/metrics", None).await.text(),
        &[
            "tokengate_logins_total{outcome=\"ok\"} 1",
            "tokengate_logins_total{outcome=\"failed\"} 1",
            "tokengate_login_duration_seconds_count 2",
        ],
    );
    g.stop.send(()).unwrap();
    g.task.await.unwrap();
}

/// Idle connections cannot take the admin listener over: past its cap a
/// new one is closed at once, and it serves again when they go.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_listener_caps_its_connections() {
    use tokio::io::AsyncReadExt;
    let up = echo_upstream().await;
    let g = start_with_admin(up.addr, "").await;
    let max = tokengate::server::admin::MAX_CONNECTIONS;
    let mut held = Vec::new();
    for _ in 0..max {
        held.push(tokio::net::TcpStream::connect(g.admin).await.unwrap());
    }
    // Accepted and each holding its place (they send nothing).
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut one_more = tokio::net::TcpStream::connect(g.admin).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(std::time::Duration::from_secs(5), one_more.read(&mut buf))
        .await
        .expect("the connection past the cap was left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    drop(held);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        // A connection closed at the cap fails; one admitted answers.
        let healthz = http::Request::get("/healthz")
            .body(bytes::Bytes::new())
            .unwrap();
        let answer =
            common::binary::try_send(g.admin, healthz, std::time::Duration::from_secs(1)).await;
        if answer.is_some_and(|(status, _)| status == 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the admin listener never served again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let _ = g.stop.send(());
    g.task.await.unwrap();
}

#[test]
fn healthcheck_command_follows_the_running_gateway() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let up = rt.block_on(echo_upstream());
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    };
    let (gw, admin) = (free(), free());
    let env = Env::new(
        &(config_text(&format!("http://{}", up.addr), "")
            .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{gw}\""))
            + &format!("\n[admin]\nlisten = \"{admin}\"\n")),
    );
    let down = env.run(&["healthcheck"]);
    assert!(!down.status.success(), "healthy with nothing running");
    assert!(String::from_utf8_lossy(&down.stderr).contains("not healthy"));

    let server = Server::start(&env).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !env.run(&["healthcheck"]).status.success() {
        assert!(std::time::Instant::now() < deadline, "never became healthy");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(server.stop().success());
    assert!(!env.run(&["healthcheck"]).status.success());
}

/// A `tokengate serve` child with JSON logs.
struct Serve {
    addr: std::net::SocketAddr,
    server: Server,
    _env: Env,
}

impl Serve {
    /// `auth` is TOML for the `[auth]` section.
    fn start(upstream: std::net::SocketAddr, auth: &str) -> Self {
        let env = Env::serving(upstream, &format!("{auth}\n[log]\nformat = \"json\"\n"));
        let server = Server::start(&env).unwrap();
        Serve {
            addr: server.addr,
            server,
            _env: env,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.server.log_text().lines().map(str::to_owned).collect()
    }

    /// The access lines logged so far for `path`.
    fn access(&self, path: &str) -> Vec<serde_json::Value> {
        access_lines(&self.lines(), path)
    }

    /// Waits (up to 10 s) for the first access line for `path`.
    async fn first_access(&self, path: &str) -> serde_json::Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(line) = self.access(path).into_iter().next() {
                return line;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no access line for {path} in:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, wait for a clean exit, and return every line it logged.
    fn stop(self) -> Vec<String> {
        self.server.stop_log().lines().map(str::to_owned).collect()
    }
}

fn access_lines(lines: &[String], path: &str) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["target"] == "tokengate::access" && v["path"] == path)
        .collect()
}

fn assert_timings(line: &serde_json::Value) {
    let ttfb = line["ttfb_us"].as_u64().expect("ttfb_us");
    let latency = line["latency_us"].as_u64().expect("latency_us");
    assert!(ttfb <= latency, "ttfb after the end: {line}");
}

/// `bytes` is what went out, not what was declared: streamed (chunked)
/// bodies over HTTP/1.1, HTTP/2 bodies without Content-Length, and the
/// gateway's own answers alike.
#[tokio::test(flavor = "multi_thread")]
async fn access_log_counts_the_body_bytes_sent() {
    let up = echo_upstream().await;
    let serve = Serve::start(up.addr, "public = [\"/big/**\"]");

    let big = get(serve.addr, "/big/300000", None).await;
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), 300_000);
    assert!(
        !big.headers.contains_key("content-length"),
        "the upstream streams /big without a length"
    );
    let line = serve.first_access("/big/300000").await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes"], 300_000);
    assert_eq!(line["complete"], true);
    assert_eq!(line["method"], "GET");
    assert!(line["upstream_us"].is_u64());
    assert_timings(&line);

    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let uri: http::Uri = format!("http://{}/big/200000", serve.addr).parse().unwrap();
    let r = h2.get(uri).await.unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert!(!r.headers().contains_key("content-length"));
    let body = http_body_util::BodyExt::collect(r.into_body())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body.len(), 200_000);
    let line = serve.first_access("/big/200000").await;
    assert_eq!(line["bytes"], 200_000);
    assert_eq!(line["complete"], true);

    let denied = get(serve.addr, "/private", None).await;
    assert_eq!(denied.status, 401);
    assert_eq!(
        denied.headers["content-length"].to_str().unwrap(),
        denied.body.len().to_string(),
        "the body's size hint still reaches hyper"
    );
    let line = serve.first_access("/private").await;
    assert_eq!(line["status"], 401);
    assert_eq!(line["bytes"], denied.body.len());
    assert_eq!(line["complete"], true);
    assert_eq!(line["user"], "-");
    assert!(line.get("upstream_us").is_none());
    assert_timings(&line);

    let lines = serve.stop();
    for path in ["/big/300000", "/big/200000", "/private"] {
        assert_eq!(access_lines(&lines, path).len(), 1, "one line for {path}");
    }
}

/// The access line names the request by the ID the client and the
/// upstream saw: a forwarded request and one the gateway answered itself.
#[tokio::test(flavor = "multi_thread")]
async fn the_access_line_carries_the_request_id() {
    let up = echo_upstream().await;
    let serve = Serve::start(up.addr, "public = [\"/open\"]\n");
    let forwarded = get(serve.addr, "/open", None).await;
    let id = forwarded.headers["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(forwarded.seen().header("x-request-id"), Some(id.as_str()));
    assert_eq!(serve.first_access("/open").await["request_id"], id.as_str());
    let denied = get(serve.addr, "/closed", None).await;
    assert_eq!(denied.status, 401);
    let id = denied.headers["x-request-id"].to_str().unwrap();
    assert_eq!(serve.first_access("/closed").await["request_id"], id);
    serve.stop();
}

/// A client that hangs up halfway through a download still gets its one
/// line, marked incomplete, with the bytes that went out before it left.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_mid_body_gets_one_incomplete_line() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const TOTAL: u64 = 64 << 20;
    let up = echo_upstream().await;
    let serve = Serve::start(up.addr, "public = [\"/big/**\"]");
    let path = format!("/big/{TOTAL}");

    let mut s = tokio::net::TcpStream::connect(serve.addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut got = vec![0u8; 256 * 1024];
    let mut read = 0;
    while read < got.len() {
        let n = s.read(&mut got[read..]).await.unwrap();
        assert!(n > 0, "the gateway closed first");
        read += n;
    }
    assert!(got.starts_with(b"HTTP/1.1 200"));
    drop(s);

    let line = serve.first_access(&path).await;
    assert_eq!(line["status"], 200);
    assert_eq!(line["complete"], false);
    let bytes = line["bytes"].as_u64().unwrap();
    assert!(bytes > 0 && bytes < TOTAL, "bytes = {bytes}");
    assert_timings(&line);

    let lines = serve.stop();
    assert_eq!(access_lines(&lines, &path).len(), 1);
}

/// Sends `GET path` on a connection of its own and closes it once the
/// recording upstream has the request (the gateway is then waiting on it).
async fn hang_up_once_upstream_has_it(
    gw: std::net::SocketAddr,
    path: &str,
    seen: &std::sync::Mutex<Vec<String>>,
) {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(gw).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: gw\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let expected = format!("GET {path}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !seen.lock().unwrap().contains(&expected) {
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never reached the upstream"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// A client that hangs up while the upstream is still thinking: hyper drops
/// the handler, and the line says 499 (nginx's "client closed request").
#[tokio::test(flavor = "multi_thread")]
async fn a_client_leaving_before_the_response_head_is_logged_as_499() {
    let (up, seen) = recording_echo_upstream().await;
    let serve = Serve::start(up.addr, "public = [\"/slow\"]");
    hang_up_once_upstream_has_it(serve.addr, "/slow", &seen).await;
    let line = serve.first_access("/slow").await;
    assert_eq!(line["status"], 499, "{line}");
    assert_eq!(line["complete"], false);
    assert_eq!(line["bytes"], 0);
    assert!(line.get("ttfb_us").is_none(), "{line}");

    let lines = serve.stop();
    assert_eq!(access_lines(&lines, "/slow").len(), 1);
}

/// The same departure is counted in /metrics, and answered requests are not.
#[tokio::test]
async fn requests_abandoned_before_the_head_are_counted() {
    let (up, seen) = recording_echo_upstream().await;
    let g = start_with_admin(up.addr, "public = [\"/slow\", \"/fast\"]\n").await;
    let abandoned = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("tokengate_requests_abandoned_total "))
            .map(|n| n.parse::<u64>().unwrap())
    };
    assert_eq!(get(g.gw, "/fast", None).await.status, 200);
    let m = get(g.admin, "/metrics", None).await.text();
    assert_eq!(abandoned(&m), Some(0), "{m}");

    hang_up_once_upstream_has_it(g.gw, "/slow", &seen).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let m = get(g.admin, "/metrics", None).await.text();
        if abandoned(&m) == Some(1) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{m}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A chunked body the client garbles after a valid head is the client's
/// fault: 400, logged as such, and no warning about the upstream.
#[tokio::test(flavor = "multi_thread")]
async fn malformed_chunked_body_gets_400() {
    let up = echo_upstream().await;
    let serve = Serve::start(up.addr, "public = [\"/up/**\"]");
    let request = b"POST /up/load HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nabc\r\n0\r\n\r\n";
    let reply = raw_once(serve.addr, request, std::time::Duration::from_secs(10)).await;
    assert_eq!(raw_status(&reply), 400, "{reply}");
    let line = serve.first_access("/up/load").await;
    assert_eq!(line["status"], 400);
    let lines = serve.stop();
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        // Start-up may warn about the open-file limit (tokengate::cli);
        // nothing on the request's way may.
        !parsed
            .iter()
            .any(|v| v["level"] == "WARN" && v["target"] != "tokengate::cli"),
        "a warning for the client's error:\n{}",
        lines.join("\n")
    );
    assert!(
        parsed.iter().any(|v| v["level"] == "INFO"
            && v["message"]
                .as_str()
                .is_some_and(|m| m.contains("client") && m.contains("malformed"))),
        "no line blames the client:\n{}",
        lines.join("\n")
    );
}
