//! Hostile clients over raw TCP, where a client library would normalise:
//! request smuggling, identity in trailers, framing look-alikes, slow and
//! numerous connections.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that records the target of every request it receives.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let log = log.clone();
                    async move {
                        log.lock().unwrap().push(req.uri().to_string());
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(
                            Bytes::from_static(b"ok"),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn smuggling_attempts_are_refused_and_never_reach_the_upstream() {
    let (up, seen) = recording_upstream().await;
    let gw = Gateway::start(up, "public = [\"/**\"]").await;
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: Vec<(&str, String)> = vec![
        (
            "CL.TE",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE.CL",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "differing Content-Length",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 40\r\n\r\nabc{smuggled}"
            ),
        ),
        (
            "TE chunked, identity",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"
            ),
        ),
        (
            "TE identity",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\nContent-Length: 3\r\n\r\nabc{smuggled}"
            ),
        ),
        (
            "obs-fold",
            format!("GET /a HTTP/1.1\r\nHost: x\r\nX-Foo: a\r\n b\r\n\r\n{smuggled}"),
        ),
        (
            "space before colon",
            format!(
                "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\nContent-Length: 3\r\n\r\nabc{smuggled}"
            ),
        ),
    ];
    for (name, request) in cases {
        seen.lock().unwrap().clear();
        let reply = raw(gw.addr, request.as_bytes(), Duration::from_millis(700)).await;
        let got = seen.lock().unwrap().clone();
        assert!(
            !got.iter().any(|u| u.contains("smuggled")),
            "{name}: the upstream saw a second request: {got:?}\nreply: {reply}"
        );
        assert!(
            reply.is_empty() || reply.starts_with("HTTP/1.1 400") || got.len() <= 1,
            "{name}: {reply}"
        );
        // Whatever happened, a single-request answer at most.
        assert!(
            reply.matches("HTTP/1.1 ").count() <= 1,
            "{name}: two answers: {reply}"
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn underscore_framing_lookalikes_are_not_forwarded() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "public = [\"/**\"]").await;
    let reply = raw(
        gw.addr,
        b"POST /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer_Encoding: chunked\r\nContent_Length: 99\r\nContent-Length: 3\r\n\r\nabc",
        Duration::from_secs(2),
    )
    .await;
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    let seen: Seen = serde_json::from_str(body.trim()).unwrap_or_else(|e| panic!("{e}: {reply}"));
    assert_eq!(seen.body_len, 3);
    assert!(
        !seen.has_header_like("transfer-encoding"),
        "{:?}",
        seen.headers
    );
    assert!(
        seen.headers.iter().all(|(k, _)| k != "content_length"),
        "{:?}",
        seen.headers
    );
    gw.stop().await;
}

/// An upstream that takes heads of up to 300 fields and answers with how
/// many it got.
async fn wide_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let count = req.headers().len().to_string();
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(count))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_headers(300)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_head_of_more_than_100_header_fields_gets_431() {
    let gw = Gateway::start(wide_upstream().await, "public = [\"/**\"]").await;
    let request = |fields: usize| {
        let mut head = String::from("GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n");
        for i in 2..fields {
            head.push_str(&format!("X-Field-{i}: {i}\r\n"));
        }
        head.push_str("\r\n");
        head
    };
    let reply = raw(gw.addr, request(100).as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    // Connection is hop-by-hop; X-Forwarded-For, -Proto, -Host and
    // X-Request-Id are added.
    assert_eq!(raw_body(&reply), "103");
    let reply = raw(gw.addr, request(101).as_bytes(), Duration::from_secs(2)).await;
    assert_eq!(raw_status(&reply), 431, "{reply}");
    gw.stop().await;
}

#[tokio::test]
async fn identity_headers_hidden_in_trailers_never_arrive() {
    let (_up, gw, token) = gateway_with_token("", "tim").await;
    let request = format!(
        "POST /t HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Token {token}\r\n\
         Transfer-Encoding: chunked\r\nTrailer: X-Auth-User\r\n\r\n\
         5\r\nhello\r\n0\r\nX-Auth-User: root\r\nX-Auth-Roles: admin\r\n\r\n"
    );
    let reply = raw(gw.addr, request.as_bytes(), Duration::from_secs(2)).await;
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default();
    // The echo's JSON may be chunked on the way back; find the object.
    let start = body.find('{').unwrap_or_else(|| panic!("{reply}"));
    let end = body.rfind('}').unwrap();
    let seen: Seen = serde_json::from_str(&body[start..=end]).unwrap();
    assert_eq!(seen.header("x-auth-user"), Some("tim"));
    assert_eq!(seen.body_len, 5);
    assert!(
        seen.trailers.is_empty(),
        "trailers reached the upstream: {:?}",
        seen.trailers
    );
    assert!(seen.header("trailer").is_none());
    gw.stop().await;
}

#[tokio::test]
async fn five_hundred_slowloris_connections_do_not_block_an_authenticated_client() {
    let up = echo_upstream().await;
    let gw = Gateway::start_with(&format!("http://{}", up.addr), "").await;
    gw.add_user("sam", "pw", &[]);
    let token = gw.login("sam", "pw").await;
    let mut slow = Vec::new();
    for _ in 0..500 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(s);
    }
    for _ in 0..5 {
        let r = tokio::time::timeout(Duration::from_secs(10), get(gw.addr, "/ok", Some(&token)))
            .await
            .expect("the authenticated client got no answer");
        assert_eq!(r.status, 200);
    }
    // One more byte on each keeps them open only until the header deadline.
    for s in &mut slow {
        let _ = s.write_all(b"a").await;
    }
    drop(slow);
    gw.stop().await;
}

/// A gateway in front of an echo upstream with `header_read_timeout` set.
async fn with_header_read_timeout(timeout: &str) -> (EchoUpstream, Gateway) {
    let up = echo_upstream().await;
    let text = config_text(&format!("http://{}", up.addr), "").replacen(
        "[server]\n",
        &format!("[server]\nheader_read_timeout = \"{timeout}\"\n"),
        1,
    );
    let (gw, _reload) = Gateway::start_text(&text, |_| {}).await;
    (up, gw)
}

#[tokio::test]
async fn header_read_deadline_closes_a_connection_that_never_finishes_its_headers() {
    let (_up, gw) = with_header_read_timeout("500ms").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server kept a header-less connection open"
    );
    gw.stop().await;
}

#[tokio::test]
async fn header_read_deadline_closes_a_kept_alive_connection_left_idle() {
    let (_up, gw) = with_header_read_timeout("500ms").await;
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept an idle connection open");
    let text = String::from_utf8_lossy(&buf);
    // Answered, kept alive, then closed at the deadline for the next head.
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(!text.contains("connection: close"), "{text}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed early"
    );
    gw.stop().await;
}

#[tokio::test]
async fn header_read_deadline_closes_a_connection_that_never_sends_a_byte() {
    let (_up, gw) = with_header_read_timeout("500ms").await;
    let mut silent = TcpStream::connect(gw.addr).await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the server kept a silent connection open");
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
    // A connection that speaks within the deadline is served as before.
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf))
        .await
        .expect("no answer")
        .unwrap();
    assert!(
        buf.starts_with(b"HTTP/1.1 401"),
        "{}",
        String::from_utf8_lossy(&buf)
    );
    gw.stop().await;
}

#[tokio::test]
async fn connections_past_the_limit_are_shed_and_the_rest_keep_working() {
    let up = echo_upstream().await;
    let text = config_text(&format!("http://{}", up.addr), "public = [\"/**\"]").replacen(
        "[server]\n",
        "[server]\nmax_connections = 10\n",
        1,
    );
    let (gw, _reload) = Gateway::start_text(&text, |_| {}).await;
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(s);
    }
    let mut extra = TcpStream::connect(gw.addr).await.unwrap();
    let _ = extra.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), extra.read_to_end(&mut buf)).await;
    assert!(
        buf.is_empty(),
        "the 11th connection was served: {}",
        String::from_utf8_lossy(&buf)
    );
    held.truncate(5);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let _ = s
            .write_all(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
        if buf.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "freed slots were never reused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_login_body_that_never_arrives_gets_408() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "login_body_timeout = \"500ms\"").await;
    let reply = raw(
        gw.addr,
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"user",
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    gw.stop().await;
}

#[tokio::test]
async fn method_override_headers_are_not_forwarded() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "public = [\"/**\"]").await;
    let r = send(
        gw.addr,
        Request::get("/x")
            .header("X-HTTP-Method-Override", "DELETE")
            .header("X-HTTP-Method", "DELETE")
            .header("x_method_override", "DELETE")
            .body(Bytes::new())
            .unwrap(),
    )
    .await;
    let seen = r.seen();
    assert_eq!(seen.method, "GET");
    for h in [
        "x-http-method-override",
        "x-http-method",
        "x-method-override",
    ] {
        assert!(!seen.has_header_like(h), "{h} forwarded");
    }
    gw.stop().await;
}

/// An upstream that answers `/KIB` with a response head of about that many
/// KiB (one long header), then closes.
async fn wide_head_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let kib: usize = text
                    .split_whitespace()
                    .nth(1)
                    .and_then(|path| path.trim_start_matches('/').parse().ok())
                    .unwrap_or(0);
                let response = format!(
                    "HTTP/1.1 200 OK\r\nX-Wide: {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    "w".repeat(kib * 1024)
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_response_head_past_the_read_buffer_gets_502() {
    let up = wide_head_upstream().await;
    let gw = Gateway::start(up, "public = [\"/**\"]").await;
    // Under the upstream read buffer (120 KiB): passed on whole.
    let r = get(gw.addr, "/100", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("x-wide").map(|v| v.len()), Some(100 * 1024));
    assert_eq!(r.text(), "ok");
    // Past it: the gateway reads no further and answers for the upstream.
    let r = get(gw.addr, "/200", None).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.headers.get("x-wide").is_none());
    let r = get(gw.addr, "/1", None).await;
    assert_eq!(r.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn hosts_that_are_not_authorities_get_400() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "public = [\"/**\"]").await;
    let request =
        |host: &str| format!("GET /x HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    for host in [
        "a b",
        "x@host",
        "host/admin",
        "host\\admin",
        "host?x",
        "host#x",
        "",
        "host:abc",
        "host:99999",
        "host:1:2",
        "::1",
        "[::1",
        "[::1]x",
        "[zz::1]:80",
        "ho%zzst",
        "host\"",
    ] {
        let reply = raw_once(gw.addr, request(host).as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(raw_status(&reply), 400, "Host: {host:?}: {reply}");
    }
    for host in [
        "api.example.com:8443",
        "[::1]:8080",
        "[2001:db8::1]",
        "127.0.0.1",
        "localhost",
        "under_score.example",
        "xn--bcher-kva.example:80",
    ] {
        let reply = raw_once(gw.addr, request(host).as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(raw_status(&reply), 200, "Host: {host:?}: {reply}");
        let seen: Seen = serde_json::from_str(raw_body(&reply)).unwrap();
        assert_eq!(seen.header("host"), Some(host));
    }

    // HTTP/2 carries the host in :authority; userinfo there is refused too.
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for (authority, status) in [("x@gw.example", 400), ("gw.example:8443", 200)] {
        let r = h2
            .send_request(
                http::Request::get(format!("http://{authority}/x"))
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), status, ":authority {authority}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn long_paths_get_414_before_any_matching() {
    let (up, seen) = recording_upstream().await;
    let gw = Gateway::start(up, "public = [\"/docs/**/img/**/*.png\"]").await;
    let get = |path: String| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    // The review's path: repeated segments between the two `**`.
    let attack = format!("/docs/{}", "img/".repeat(10_000));
    let reply = raw(gw.addr, get(attack).as_bytes(), Duration::from_secs(10)).await;
    assert_eq!(raw_status(&reply), 414, "{reply}");
    assert!(raw_body(&reply).contains("too long"), "{reply}");
    // At the default limit (8 KiB) exactly, the path is still matched.
    let at_limit = |extra: usize| {
        let tail = "/x.png";
        let fill = 8192 + extra - "/docs/img/".len() - tail.len();
        format!("/docs/img/{}{tail}", "a".repeat(fill))
    };
    let reply = raw(
        gw.addr,
        get(at_limit(0)).as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    let reply = raw(
        gw.addr,
        get(at_limit(1)).as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(raw_status(&reply), 414, "{reply}");
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "only the path at the limit was forwarded"
    );
    gw.stop().await;
}

#[tokio::test]
async fn max_path_length_is_configurable() {
    let (up, seen) = recording_upstream().await;
    let gw = Gateway::start_edited(
        &format!("http://{up}"),
        "public = [\"/**\"]",
        in_section("[server]", "max_path_length = \"256\""),
    )
    .await;
    let get = |path: String| format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let reply = raw(
        gw.addr,
        get(format!("/{}", "a".repeat(255))).as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    let reply = raw(
        gw.addr,
        get(format!("/{}", "a".repeat(256))).as_bytes(),
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(raw_status(&reply), 414, "{reply}");
    assert_eq!(seen.lock().unwrap().len(), 1);
    gw.stop().await;
}
