//! The gateway's upstream connections: reused across requests, never reused
//! after a response was abandoned mid-body (the next client would read the
//! rest of someone else's answer), replaced when the upstream closes them,
//! and closed after `pool_idle_timeout`.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// An upstream that numbers its connections and says on which one each
/// answer came: `conn=N path=P`. `/big` streams 4 MiB in 64 KiB frames
/// (after the `conn=N|` prefix), `/close` answers with `Connection: close`,
/// `/len` reads the request body first and adds ` len=BYTES`.
struct Counting {
    addr: SocketAddr,
    /// `/hold` answers only once this many `/hold` requests are in at once.
    hold: Arc<tokio::sync::Barrier>,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
}

type UpBody = BoxBody<Bytes, Infallible>;

/// How many `/hold` requests the upstream waits for before answering any.
const HOLDERS: usize = 60;

/// A counting upstream, a gateway keeping idle connections 90 s, a token.
async fn counted_gateway() -> (Counting, Gateway, String) {
    let up = counting_upstream().await;
    let (gw, token) = gateway(up.addr, "90s").await;
    (up, gw, token)
}

/// Every answer came over one connection, the only one accepted.
fn assert_one_connection<T: PartialEq + std::fmt::Debug>(conns: &[T], accepted: &AtomicUsize) {
    assert!(conns.iter().all(|c| *c == conns[0]), "{conns:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

async fn counting_upstream() -> Counting {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Conns::default();
    let hold = Arc::new(tokio::sync::Barrier::new(HOLDERS));
    let barrier = hold.clone();
    serve_counted(listener, conns.clone(), move |id| {
        let barrier = barrier.clone();
        service_fn(move |req: Request<Incoming>| {
            let barrier = barrier.clone();
            async move {
                if req.uri().path() == "/hold" {
                    barrier.wait().await;
                }
                if req.uri().path() == "/len" {
                    let len = req
                        .into_body()
                        .collect()
                        .await
                        .map_or(0, |b| b.to_bytes().len());
                    let text = format!("conn={id} path=/len len={len}");
                    return Ok(Response::new(Full::new(Bytes::from(text)).boxed()));
                }
                Ok::<_, Infallible>(answer(id, req))
            }
        })
    });
    Counting {
        addr,
        hold,
        accepted: conns.accepted,
        open: conns.open,
    }
}

/// Connections an upstream accepted, has open, and had open at most.
#[derive(Clone, Default)]
struct Conns {
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
}

/// Serves every connection `listener` accepts with the service `make`
/// gives for it (its number, from 1), counting them in `conns`.
fn serve_counted<S, B>(
    listener: TcpListener,
    conns: Conns,
    make: impl Fn(usize) -> S + Send + 'static,
) where
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let id = conns.accepted.fetch_add(1, Ordering::SeqCst) + 1;
            let now_open = conns.open.fetch_add(1, Ordering::SeqCst) + 1;
            conns.most_open.fetch_max(now_open, Ordering::SeqCst);
            let (svc, open) = (make(id), conns.open.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
}

fn answer(id: usize, req: Request<Incoming>) -> Response<UpBody> {
    let path = req.uri().path().to_owned();
    match path.as_str() {
        "/big" => {
            let head = std::iter::once(Bytes::from(format!("conn={id}|")));
            let rest = (0..64).map(|_| Bytes::from(vec![b'x'; 64 * 1024]));
            let frames = head
                .chain(rest)
                .map(|b| Ok::<_, Infallible>(Frame::data(b)));
            Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        }
        "/close" => Response::builder()
            .header("connection", "close")
            .body(Full::new(Bytes::from(format!("conn={id} path={path}"))).boxed())
            .unwrap(),
        _ => Response::new(Full::new(Bytes::from(format!("conn={id} path={path}"))).boxed()),
    }
}

async fn gateway(upstream: SocketAddr, idle_timeout: &str) -> (Gateway, String) {
    let idle = format!("pool_idle_timeout = \"{idle_timeout}\"\n");
    let gw = Gateway::start_edited(&format!("http://{upstream}"), "", |text| {
        text.replacen("[upstream]\n", &format!("[upstream]\n{idle}"), 1)
    })
    .await;
    gw.add_user("ann", "pw", &[]);
    let token = gw.login("ann", "pw").await;
    (gw, token)
}

/// The upstream connection number in an answer `conn=N…`.
fn conn_of(reply: &Reply) -> usize {
    assert_eq!(reply.status, 200, "{}", reply.text());
    let text = reply.text();
    let digits: String = text
        .strip_prefix("conn=")
        .unwrap_or_else(|| panic!("not an upstream answer: {text}"))
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let (up, gw, token) = counted_gateway().await;
    let mut conns = Vec::new();
    for i in 0..10 {
        let r = get(gw.addr, &format!("/n/{i}"), Some(&token)).await;
        assert_eq!(r.text(), format!("conn={} path=/n/{i}", conn_of(&r)));
        conns.push(conn_of(&r));
    }
    assert_one_connection(&conns, &up.accepted);
    gw.stop().await;
}

#[tokio::test]
async fn concurrent_requests_each_get_their_own_answer_and_connections_are_kept() {
    let (up, gw, token) = counted_gateway().await;
    for _ in 0..3 {
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let token = token.clone();
                let addr = gw.addr;
                tokio::spawn(async move {
                    let r = get(addr, &format!("/c/{i}"), Some(&token)).await;
                    assert_eq!(r.text(), format!("conn={} path=/c/{i}", conn_of(&r)));
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    }
    // Three waves of 20: later waves reuse what the first opened.
    let accepted = up.accepted.load(Ordering::SeqCst);
    assert!(
        accepted <= 20,
        "{accepted} upstream connections for 20 at a time"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_response_abandoned_mid_body_never_reaches_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (up, gw, token) = counted_gateway().await;
    let first = conn_of(&get(gw.addr, "/warm", Some(&token)).await);

    // Read the head and a little of a 4 MiB answer, then hang up.
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = format!("GET /big HTTP/1.1\r\nHost: gw\r\nAuthorization: Token {token}\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !String::from_utf8_lossy(&seen).contains('|') {
        let n = s.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&seen).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("conn={first}|")), "{head}");
    drop(s);

    // The abandoned connection is closed, not handed to the next request.
    for i in 0..5 {
        let r = get(gw.addr, &format!("/after/{i}"), Some(&token)).await;
        assert_eq!(r.text(), format!("conn={} path=/after/{i}", conn_of(&r)));
        assert_ne!(conn_of(&r), first, "reused the abandoned connection");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while up.open.load(Ordering::SeqCst) != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} upstream connections open, expected 1",
            up.open.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_response_read_whole_gives_its_connection_back() {
    let (up, gw, token) = counted_gateway().await;
    let big = get(gw.addr, "/big", Some(&token)).await;
    assert_eq!(big.body.len(), "conn=1|".len() + 4 * 1024 * 1024);
    let next = get(gw.addr, "/small", Some(&token)).await;
    assert_eq!(conn_of(&next), conn_of(&big));
    assert_eq!(up.accepted.load(Ordering::SeqCst), 1);
    gw.stop().await;
}

#[tokio::test]
async fn sequential_uploads_share_one_upstream_connection() {
    let (up, gw, token) = counted_gateway().await;
    let mut conns = Vec::new();
    for i in 0..5 {
        let req = Request::post("/len")
            .header("authorization", format!("Token {token}"))
            .body(vec![b'u'; 4096 * (i + 1)])
            .unwrap();
        let r = send(gw.addr, req).await;
        let conn = conn_of(&r);
        assert_eq!(
            r.text(),
            format!("conn={conn} path=/len len={}", 4096 * (i + 1))
        );
        conns.push(conn);
    }
    assert_one_connection(&conns, &up.accepted);
    gw.stop().await;
}

#[tokio::test]
async fn a_connection_the_upstream_closes_is_replaced() {
    let (up, gw, token) = counted_gateway().await;
    let closed = conn_of(&get(gw.addr, "/close", Some(&token)).await);
    for i in 0..3 {
        let r = get(gw.addr, &format!("/next/{i}"), Some(&token)).await;
        assert_ne!(conn_of(&r), closed);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    gw.stop().await;
}

/// Reads from `stream` into `pending` until it holds a whole request head;
/// where the head ends, or `None` if the stream ends first.
async fn read_head(stream: &mut tokio::net::TcpStream, pending: &mut Vec<u8>) -> Option<usize> {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(i) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            return Some(i + 4);
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// An upstream that answers each connection's first request as keep-alive
/// (no `Connection: close`), then closes the connection 50 ms later, the
/// way an upstream's own idle timeout does. Answers `conn=N`.
async fn forgetful_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    raw_upstream(|mut stream, id| async move {
        if read_head(&mut stream, &mut Vec::new()).await.is_none() {
            return;
        }
        let body = format!("conn={id}");
        answer_ok(&mut stream, &body).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    })
    .await
}

/// The Content-Length a request head declares (0 when none).
fn content_length(head: &[u8]) -> usize {
    let head = String::from_utf8_lossy(head).to_ascii_lowercase();
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Writes a 200 with `body`; whether the connection took it.
async fn answer_ok(stream: &mut tokio::net::TcpStream, body: &str) -> bool {
    use tokio::io::AsyncWriteExt;
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(answer.as_bytes()).await.is_ok()
}

/// An upstream written by hand: each connection it accepts goes to
/// `handle` with its number (from 1). The address, and how many it accepted.
async fn raw_upstream<F, Fut>(handle: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(tokio::net::TcpStream, usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let acc = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let id = acc.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(handle(stream, id));
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_used_again() {
    // Nothing polls an idle pooled connection; taking it must notice the
    // upstream's close and open a new one rather than fail the request.
    let (addr, accepted) = forgetful_upstream().await;
    let (gw, token) = gateway(addr, "90s").await;
    assert_eq!(conn_of(&get(gw.addr, "/first", Some(&token)).await), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = get(gw.addr, "/second", Some(&token)).await;
    assert_eq!(conn_of(&second), 2);
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    gw.stop().await;
}

#[tokio::test]
async fn idle_upstream_connections_close_after_the_pool_idle_timeout() {
    let up = counting_upstream().await;
    let (gw, token) = gateway(up.addr, "300ms").await;
    let r = get(gw.addr, "/once", Some(&token)).await;
    conn_of(&r);
    assert_eq!(up.open.load(Ordering::SeqCst), 1, "kept open after use");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while up.open.load(Ordering::SeqCst) != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle connection still open 5 s after a 300 ms idle timeout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // And the next request simply opens a new one.
    let again = get(gw.addr, "/again", Some(&token)).await;
    assert_eq!(conn_of(&again), 2);
    gw.stop().await;
}

#[tokio::test]
async fn requests_that_hold_their_connections_each_get_one() {
    // The pool limits idle connections, never busy ones: 60 requests the
    // upstream answers only once all 60 are in (the way long polls behave)
    // must all get through, within the 2 s timeout.
    let up = counting_upstream().await;
    let _ = &up.hold;
    let (gw, token) = gateway(up.addr, "90s").await;
    let tasks: Vec<_> = (0..HOLDERS)
        .map(|_| {
            let token = token.clone();
            let addr = gw.addr;
            tokio::spawn(async move { get(addr, "/hold", Some(&token)).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), HOLDERS);
    gw.stop().await;
}

/// An upstream that answers `early` as soon as it has a request's head,
/// then reads the request's body (`content-length` bytes) and counts them,
/// and goes on to the next request on the same connection. Also counts
/// the connections that closed.
async fn early_answering_upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (counted, ended) = (received.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (counted, ended) = (counted.clone(), ended.clone());
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = vec![0u8; 64 * 1024];
                'requests: loop {
                    let Some(end) = read_head(&mut stream, &mut pending).await else {
                        break;
                    };
                    let length = content_length(&pending[..end]);
                    pending.drain(..end);
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly";
                    if stream.write_all(answer).await.is_err() {
                        break;
                    }
                    while pending.len() < length {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break 'requests,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                    pending.drain(..length);
                    counted.fetch_add(length, Ordering::SeqCst);
                }
                ended.fetch_add(1, Ordering::SeqCst);
            });
        }
    });
    (addr, received, closed)
}

/// Reads from `s` until an `early` answer has come whole.
async fn read_answer(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("early") {
        let got = s.read(&mut buf).await.unwrap();
        assert!(got > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..got]);
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[tokio::test]
async fn an_upload_the_upstream_answers_before_reading_is_cut_off_without_stalling() {
    // The response ends while the request body is still coming: the rest
    // of the upload must not go on to the upstream (it could hold a
    // request of its own), that upstream connection closes, and the client
    // is not left hanging on its upload.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 4 * 1024 * 1024;
    let (addr, received, closed) = early_answering_upstream().await;
    let (gw, token) = gateway(addr, "90s").await;
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /upload HTTP/1.1\r\nHost: gw\r\nAuthorization: Token {token}\r\ncontent-length: {SIZE}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&[b'u'; 64 * 1024]).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), read_answer(&mut s))
        .await
        .expect("no early answer");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The gateway does not read the rest of an upload it stopped sending:
    // the client's connection ends (hyper closes a connection whose
    // request body was left unread) instead of waiting on it.
    let rest = vec![b'u'; SIZE - 64 * 1024];
    let ended = async {
        let _ = s.write_all(&rest).await;
        let mut buf = vec![0u8; 4096];
        while let Ok(1..) = s.read(&mut buf).await {}
    };
    tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the client's connection stalled on its upload");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while closed.load(Ordering::SeqCst) < 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream connection answered early is still open"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(received.load(Ordering::SeqCst), 0, "the upload went on");
    // Later requests go out on a new connection.
    let next = get(gw.addr, "/next", Some(&token)).await;
    assert_eq!(next.text(), "early");
    gw.stop().await;
}

/// What a naive upstream saw: each request head it parsed, as
/// `conn=N METHOD PATH user=X-Auth-User`, and the connections that closed.
#[derive(Default)]
struct Parsed {
    heads: std::sync::Mutex<Vec<String>>,
    closed: std::sync::Mutex<Vec<usize>>,
}

/// An upstream that answers every request head at once, `conn=N path=P`,
/// keeps the connection, and takes whatever follows a head for the next
/// request: it never reads a body as a body. Such an upstream runs a
/// request smuggled in another's body, as whoever it claims to be.
async fn naive_upstream() -> (SocketAddr, Arc<Parsed>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let parsed = Arc::new(Parsed::default());
    let seen = parsed.clone();
    tokio::spawn(async move {
        let mut ids = 0;
        while let Ok((mut stream, _)) = listener.accept().await {
            ids += 1;
            let id = ids;
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                while let Some(end) = read_head(&mut stream, &mut pending).await {
                    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                    pending.drain(..end);
                    let mut words = head.split_whitespace();
                    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                    let user = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("x-auth-user").then(|| v.trim())
                        })
                        .unwrap_or("");
                    seen.heads
                        .lock()
                        .unwrap()
                        .push(format!("conn={id} {method} {path} user={user}"));
                    let body = format!("conn={id} path={path}");
                    if !answer_ok(&mut stream, &body).await {
                        break;
                    }
                }
                seen.closed.lock().unwrap().push(id);
            });
        }
    });
    (addr, parsed)
}

#[tokio::test]
async fn an_early_answer_closes_the_upstream_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, parsed) = naive_upstream().await;
    let gw = Gateway::start(addr, "public = [\"/public/**\"]\n").await;
    gw.add_user("ann", "pw", &[]);
    let token = gw.login("ann", "pw").await;

    // An anonymous upload whose body is a request of its own, sent only
    // once the upstream has answered the upload's head.
    let smuggled = "GET /admin HTTP/1.1\r\nHost: up\r\nX-Auth-User: root\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let head = format!(
        "POST /public/upload HTTP/1.1\r\nHost: gw\r\ncontent-length: {}\r\n\r\n",
        smuggled.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let early = tokio::time::timeout(Duration::from_secs(5), async {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains("path=/public/upload") {
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    })
    .await
    .expect("no early answer");
    assert!(early.starts_with("HTTP/1.1 200"), "{early}");
    assert!(early.ends_with("conn=1 path=/public/upload"), "{early}");
    // The gateway may have closed this client connection already.
    let _ = s.write_all(smuggled.as_bytes()).await;

    // The connection answered early is closed, not pooled, and the body
    // that came after the answer never reaches the upstream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !parsed.closed.lock().unwrap().contains(&1) {
        let heads = parsed.heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 1, "the upstream parsed the body: {heads:?}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connection answered early is still open 5 s later"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The next user's request goes out on a new connection.
    let next = get(gw.addr, "/next", Some(&token)).await;
    assert_eq!(next.text(), "conn=2 path=/next");
    assert_eq!(
        *parsed.heads.lock().unwrap(),
        [
            "conn=1 POST /public/upload user=",
            "conn=2 GET /next user=ann"
        ]
    );
    gw.stop().await;
}

/// An upstream whose `/slow` answers only once the test adds a permit to
/// `release`; other paths answer at once. Answers `conn=N path=P`.
struct Gated {
    addr: SocketAddr,
    release: Arc<tokio::sync::Semaphore>,
    /// `/slow` requests received so far.
    arrived: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    /// The most connections it had open at once.
    most_open: Arc<AtomicUsize>,
}

async fn gated_upstream() -> Gated {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let conns = Conns::default();
    let (rel, arr) = (release.clone(), arrived.clone());
    serve_counted(listener, conns.clone(), move |id| {
        let (rel, arr) = (rel.clone(), arr.clone());
        service_fn(move |req: Request<Incoming>| {
            let (rel, arr) = (rel.clone(), arr.clone());
            async move {
                let path = req.uri().path().to_owned();
                if path.starts_with("/slow") {
                    arr.fetch_add(1, Ordering::SeqCst);
                    rel.acquire().await.unwrap().forget();
                }
                let text = format!("conn={id} path={path}");
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
            }
        })
    });
    Gated {
        addr,
        release,
        arrived,
        accepted: conns.accepted,
        most_open: conns.most_open,
    }
}

/// A gateway allowing 2 upstream connections, where a request waits at
/// most `wait` for one.
async fn capped_gateway(upstream: SocketAddr, wait: &str) -> (Gateway, String) {
    let gw = Gateway::start_edited(&format!("http://{upstream}"), "", |text| {
        text.replacen(
            "connect_timeout = \"1s\"\ntimeout = \"2s\"\n",
            &format!("connect_timeout = \"{wait}\"\ntimeout = \"30s\"\nmax_connections = 2\n"),
            1,
        )
    })
    .await;
    gw.add_user("ann", "pw", &[]);
    let token = gw.login("ann", "pw").await;
    (gw, token)
}

/// Starts `/slow/0` and `/slow/1` and waits until the upstream has both.
async fn hold_two(gw: &Gateway, up: &Gated, token: &str) -> Vec<tokio::task::JoinHandle<Reply>> {
    let held: Vec<_> = (0..2)
        .map(|i| {
            let (addr, token) = (gw.addr, token.to_owned());
            tokio::spawn(async move { get(addr, &format!("/slow/{i}"), Some(&token)).await })
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while up.arrived.load(Ordering::SeqCst) < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream got {} of 2 slow requests",
            up.arrived.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    held
}

#[tokio::test]
async fn upstream_connections_are_capped() {
    // Both connections busy: a third request waits for one
    // (connect_timeout) and then gets 503, without a third connection.
    let up = gated_upstream().await;
    let (gw, token) = capped_gateway(up.addr, "1s").await;
    let held = hold_two(&gw, &up, &token).await;
    let third = get(gw.addr, "/third", Some(&token)).await;
    assert_eq!(third.status, 503, "{}", third.text());
    assert_eq!(third.headers["content-type"], "application/json");
    assert!(third.json()["detail"].is_string(), "{}", third.text());
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    up.release.add_permits(2);
    for h in held {
        let r = h.await.unwrap();
        assert!(r.text().contains("path=/slow/"), "{}", r.text());
    }
    assert_eq!(up.most_open.load(Ordering::SeqCst), 2);
    gw.stop().await;

    // A connection freed while a request waits is handed to it.
    let up = gated_upstream().await;
    let (gw, token) = capped_gateway(up.addr, "20s").await;
    let held = hold_two(&gw, &up, &token).await;
    let waiting = {
        let (addr, token) = (gw.addr, token.clone());
        tokio::spawn(async move { get(addr, "/third", Some(&token)).await })
    };
    // Time to start waiting; it gets the freed connection either way.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    up.release.add_permits(1);
    let third = waiting.await.unwrap();
    assert_eq!(third.status, 200, "{}", third.text());
    assert!(
        third.text() == "conn=1 path=/third" || third.text() == "conn=2 path=/third",
        "{}",
        third.text()
    );
    up.release.add_permits(1);
    for h in held {
        assert_eq!(h.await.unwrap().status, 200);
    }
    assert_eq!(up.accepted.load(Ordering::SeqCst), 2);
    assert_eq!(up.most_open.load(Ordering::SeqCst), 2);
    gw.stop().await;
}

/// An upstream that sends `100 Continue` as soon as it has a request's
/// head, then reads the whole body and answers `conn=N len=BYTES`.
async fn continuing_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    raw_upstream(|mut stream, id| async move {
        let mut pending = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while let Some(end) = read_head(&mut stream, &mut pending).await {
            let length = content_length(&pending[..end]);
            pending.drain(..end);
            if stream
                .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .await
                .is_err()
            {
                return;
            }
            while pending.len() < length {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                }
            }
            pending.drain(..length);
            let body = format!("conn={id} len={length}");
            if !answer_ok(&mut stream, &body).await {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn an_interim_100_continue_does_not_stop_the_upload() {
    // Something heard from the upstream before the body is out pauses the
    // body only until it is known not to be the response head.
    let (addr, accepted) = continuing_upstream().await;
    let (gw, token) = gateway(addr, "90s").await;
    for size in [1024 * 1024, 4096] {
        let req = Request::post("/up")
            .header("authorization", format!("Token {token}"))
            .header("expect", "100-continue")
            .body(vec![b'u'; size])
            .unwrap();
        let r = send(gw.addr, req).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), format!("conn=1 len={size}"));
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
    gw.stop().await;
}
