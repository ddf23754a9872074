//! Fixtures for in-process tests: an echo upstream and a gateway, both on
//! 127.0.0.1 port 0, and a small HTTP client.
#![allow(dead_code)]

pub mod binary;
pub mod postgres;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokengate::auth::password::{Hasher, Password};
use tokengate::config::Config;
use tokengate::store::Store;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Fast argon2 parameters so tests do not spend seconds hashing.
pub const FAST_ARGON2: &str = "argon2_memory = \"64KiB\"\nargon2_iterations = 1\n";

type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What the echo upstream saw of one request.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    pub body_len: u64,
    /// Request trailers, if the body carried any.
    #[serde(default)]
    pub trailers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut it = self
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name));
        let first = it.next().map(|(_, v)| v.as_str());
        assert!(
            it.next().is_none(),
            "header {name} arrived more than once: {:?}",
            self.headers
        );
        first
    }

    /// Whether any header's value passes `test`.
    pub fn has_value(&self, test: impl Fn(&str) -> bool) -> bool {
        self.headers.iter().any(|(_, v)| test(v))
    }

    pub fn has_header_like(&self, name: &str) -> bool {
        let norm = |s: &str| s.to_ascii_lowercase().replace('_', "-");
        self.headers.iter().any(|(k, _)| norm(k) == norm(name))
    }
}

/// An upstream that answers every request with a JSON description of it.
/// Special paths: `/slow` never answers in time, `/big/N` streams N bytes,
/// `/broken` sends half a body and drops the connection.
pub struct EchoUpstream {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

pub async fn echo_upstream() -> EchoUpstream {
    recording_echo_upstream().await.0
}

async fn echo(mut req: Request<Incoming>) -> Result<Response<TestBody>, Infallible> {
    let path = req.uri().path().to_owned();
    // `/ws` with an Upgrade header: switch protocols, then echo raw bytes,
    // first sending back the identity header it saw.
    if path == "/ws" && req.headers().contains_key("upgrade") {
        let user = req
            .headers()
            .get("x-auth-user")
            .map(|v| v.to_str().unwrap_or("?").to_owned())
            .unwrap_or_default();
        let on_upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let Ok(upgraded) = on_upgrade.await else {
                return;
            };
            let mut io = TokioIo::new(upgraded);
            let _ = io.write_all(format!("hello {user}\n").as_bytes()).await;
            let mut buf = [0u8; 1024];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        let mut r = Response::new(BodyExt::boxed(
            Full::new(Bytes::new()).map_err(|e| match e {}),
        ));
        *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        return Ok(r);
    }
    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    // `/delay/MS` anywhere in the path: answer after MS milliseconds.
    if let Some(ms) = path
        .split_once("/delay/")
        .and_then(|(_, ms)| ms.parse().ok())
    {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let total: u64 = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let stream = futures_stream(total, chunk);
        return Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))));
    }
    if path == "/broken" {
        let (tx, rx) = tokio::sync::mpsc::channel::<
            Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>,
        >(2);
        tokio::spawn(async move {
            let _ = tx
                .send(Ok(Frame::data(Bytes::from_static(b"partial"))))
                .await;
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(Err("upstream died".into())).await;
        });
        let body = StreamBody::new(tokio_stream_from(rx));
        let mut r = Response::new(BodyExt::boxed(body));
        r.headers_mut()
            .insert("content-length", "1000".parse().unwrap());
        return Ok(r);
    }
    let method = req.method().to_string();
    let uri = req.uri().to_string();
    let version = format!("{:?}", req.version());
    let headers: Vec<(String, String)> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut body = req.into_body();
    let mut body_len = 0u64;
    let mut trailers: Vec<(String, String)> = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                body_len += f.data_ref().map_or(0, |d| d.len() as u64);
                if let Some(t) = f.trailers_ref() {
                    trailers.extend(t.iter().map(|(k, v)| {
                        (
                            k.to_string(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    }));
                }
            }
            Err(_) => break,
        }
    }
    let json = serde_json::json!({
        "method": method, "uri": uri, "version": version, "headers": headers, "body_len": body_len,
        "trailers": trailers,
    });
    let mut r = Response::new(BodyExt::boxed(
        Full::new(Bytes::from(json.to_string())).map_err(|e| match e {}),
    ));
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r.headers_mut()
        .insert("x-upstream", "echo".parse().unwrap());
    r.headers_mut()
        .insert("connection", "keep-alive, x-hop".parse().unwrap());
    r.headers_mut()
        .insert("x-hop", "should-not-pass".parse().unwrap());
    Ok(r)
}

type FrameResult = Result<Frame<Bytes>, Box<dyn std::error::Error + Send + Sync>>;

fn futures_stream(
    total: u64,
    chunk: Bytes,
) -> impl futures_core::Stream<Item = FrameResult> + Send {
    let (tx, rx) = tokio::sync::mpsc::channel::<FrameResult>(4);
    tokio::spawn(async move {
        let mut sent = 0u64;
        while sent < total {
            let n = (total - sent).min(chunk.len() as u64) as usize;
            if tx.send(Ok(Frame::data(chunk.slice(..n)))).await.is_err() {
                return;
            }
            sent += n as u64;
        }
    });
    tokio_stream_from(rx)
}

fn tokio_stream_from(
    mut rx: tokio::sync::mpsc::Receiver<FrameResult>,
) -> impl futures_core::Stream<Item = FrameResult> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// An echo upstream, a gateway over it (`extra` as for [`Gateway::start`])
/// and a token of a user `name` (password "pw", no roles).
pub async fn gateway_with_token(extra: &str, name: &str) -> (EchoUpstream, Gateway, String) {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, extra).await;
    gw.add_user(name, "pw", &[]);
    let token = gw.login(name, "pw").await;
    (up, gw, token)
}

/// A running gateway over a temporary store.
pub struct Gateway {
    pub addr: SocketAddr,
    pub store: Store,
    pub config: Arc<Config>,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Gateway {
    /// Starts a gateway; `extra` is TOML appended to a config that points at `upstream`.
    /// Sections `[server]`, `[upstream]` and `[auth]` are already open in that
    /// order, so `extra` should start with its own section header.
    pub async fn start(upstream: SocketAddr, extra: &str) -> Self {
        Self::start_with(&format!("http://{upstream}"), extra).await
    }

    pub async fn start_with(upstream_url: &str, extra: &str) -> Self {
        Self::start_text(&config_text(upstream_url, extra), |_| {})
            .await
            .0
    }

    /// Adds a user with `password` and `roles` straight into the store.
    pub fn add_user(&self, name: &str, password: &str, roles: &[&str]) {
        let hasher = Hasher::new(self.config.auth.argon2).unwrap();
        let hash = hasher.hash_now(&Password::new(password.into())).unwrap();
        self.store
            .add_user(name, hash, roles.iter().map(|r| r.to_string()).collect())
            .unwrap();
    }

    /// Logs in over HTTP and returns the token.
    pub async fn login(&self, name: &str, password: &str) -> String {
        let body = serde_json::json!({"username": name, "password": password}).to_string();
        let r = send(
            self.addr,
            Request::post("/login")
                .header("content-type", "application/json")
                .body(body)
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 200, "login failed: {}", r.text());
        r.json()["token"].as_str().unwrap().to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Signals shutdown and waits for the server to finish.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    pub fn stop_signal(&mut self) -> Option<oneshot::Sender<()>> {
        self.stop.take()
    }

    pub fn take_task(&mut self) -> Option<tokio::task::JoinHandle<()>> {
        self.task.take()
    }
}

/// An edit for [`Gateway::start_edited`]: `line` added at the top of
/// `section` (`"[server]"`, `"[upstream]"`) of the test config.
pub fn in_section(section: &'static str, line: &str) -> impl FnOnce(String) -> String {
    let line = line.to_owned();
    move |text| text.replacen(&format!("{section}\n"), &format!("{section}\n{line}\n"), 1)
}

pub fn config_text(upstream_url: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nshutdown_timeout = \"5s\"\n\n[upstream]\nurl = \"{upstream_url}\"\nconnect_timeout = \"1s\"\ntimeout = \"2s\"\n\n[store]\npath = \"data\"\n\n[auth]\n{FAST_ARGON2}\n{extra}\n"
    )
}

/// A response read whole.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    pub fn seen(&self) -> Seen {
        assert_eq!(
            self.status,
            200,
            "request did not reach the upstream: {}",
            self.text()
        );
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// `req` (origin-form URI) aimed at `addr`, its body whole.
pub fn to_addr(addr: SocketAddr, req: Request<impl Into<Bytes>>) -> Request<Full<Bytes>> {
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    parts.uri = format!("http://{addr}{pq}").parse().unwrap();
    Request::from_parts(parts, Full::new(body.into()))
}

/// Sends `req` (origin-form URI) to `addr` on a fresh connection and reads the reply.
pub async fn send(addr: SocketAddr, req: Request<impl Into<Bytes>>) -> Reply {
    let req = to_addr(addr, req);
    let r = client().request(req).await.expect("request failed");
    let (parts, body) = r.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Reply {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Token {t}"));
    }
    send(addr, b.body(Bytes::new()).unwrap()).await
}

/// Writes raw bytes on a new TCP connection and reads until the server closes
/// or `wait` passes; for requests a client library would normalise.
pub async fn raw(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(wait, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

impl Gateway {
    /// Starts a gateway on a full config text (with `{dir}` replaced by the
    /// temp dir), for tests that need keys outside `config_text`'s layout.
    /// Returns the reload sender too.
    pub async fn start_text(
        text: &str,
        setup: impl FnOnce(&std::path::Path),
    ) -> (Self, tokio::sync::mpsc::Sender<Config>) {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path());
        let path: PathBuf = dir.path().join("tokengate.toml");
        std::fs::write(
            &path,
            text.replace("{dir}", &dir.path().display().to_string()),
        )
        .unwrap();
        let config = Arc::new(Config::load(&path, |_| None).unwrap());
        let store = Store::open(&config.store.path).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (reload, reloads) = tokio::sync::mpsc::channel(4);
        let listeners = tokengate::Listeners {
            gateway: listener,
            admin: None,
        };
        let run = tokengate::run_with(
            listeners,
            config.clone(),
            store.clone(),
            Some(reloads),
            async {
                let _ = stopped.await;
            },
        );
        let task = tokio::spawn(async move { run.await.expect("gateway failed") });
        let gw = Self {
            addr,
            store,
            config,
            dir,
            stop: Some(stop),
            task: Some(task),
        };
        (gw, reload)
    }
}

/// An echo upstream that also records `"METHOD uri"` for every request it
/// receives, so a test can prove a request never reached it.
pub async fn recording_echo_upstream() -> (EchoUpstream, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    let (stop, mut stopped) = oneshot::channel::<()>();
    tokio::spawn(async move {
        loop {
            let (stream, _) = tokio::select! {
                r = listener.accept() => match r { Ok(r) => r, Err(_) => continue },
                _ = &mut stopped => return,
            };
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    log.lock()
                        .unwrap()
                        .push(format!("{} {}", req.method(), req.uri()));
                    echo(req)
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (EchoUpstream { addr, _stop: stop }, seen)
}

/// `token` with its last character changed, so its checksum fails.
pub fn mangled(token: &str) -> String {
    let (head, last) = token.split_at(token.len() - 1);
    format!("{head}{}", if last == "a" { "b" } else { "a" })
}

/// An address on 127.0.0.1 where nothing listens (bound, then released).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// The status code of a raw HTTP/1.x response (0 when there is none).
pub fn raw_status(reply: &str) -> u16 {
    reply
        .split_whitespace()
        .nth(1)
        .filter(|_| reply.starts_with("HTTP/1."))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The head (status line and headers) of a raw HTTP/1.x response.
pub fn raw_head(reply: &str) -> &str {
    reply.split_once("\r\n\r\n").map_or(reply, |(h, _)| h)
}

/// The body of a raw HTTP/1.x response framed by Content-Length (the
/// gateway's own answers and the echo upstream's are).
pub fn raw_body(reply: &str) -> &str {
    reply.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// The value of header `name` in a raw response head, if present once or more (first).
pub fn raw_header<'a>(reply: &'a str, name: &str) -> Option<&'a str> {
    raw_head(reply).lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

impl Gateway {
    /// Starts a gateway on `config_text(upstream_url, extra)` with `edit`
    /// applied to the text first (for keys in `[server]` or `[upstream]`,
    /// e.g. `trusted_proxies` or a longer upstream timeout).
    pub async fn start_edited(
        upstream_url: &str,
        extra: &str,
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        let text = edit(config_text(upstream_url, extra));
        Self::start_text(&text, |_| {}).await.0
    }
}

/// Like `raw`, but returns as soon as one whole response has arrived (head
/// plus a Content-Length body), so keep-alive connections do not cost `wait`.
pub async fn raw_once(addr: SocketAddr, request: &[u8], wait: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let complete = |out: &[u8]| {
        let text = String::from_utf8_lossy(out);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            return false;
        };
        let len = head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())
                .flatten()
        });
        len.is_some_and(|len| body.len() >= len)
    };
    let _ = tokio::time::timeout(wait, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if complete(&out) {
                break;
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends an HTTP/1.1 upgrade handshake for `path` on a new connection and
/// reads the response head; returns it with the connection, which is the
/// tunnel when the head is a 101.
pub async fn upgrade(
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
    protocol: &str,
) -> (String, tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Token {t}\r\n"));
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\n{auth}Connection: Upgrade\r\nUpgrade: {protocol}\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        if n == 0 {
            break;
        }
        head.push(byte[0]);
    }
    (String::from_utf8_lossy(&head).into_owned(), s)
}
