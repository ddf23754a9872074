//! What reaches the upstream and what comes back: method, path and query
//! as received, bodies streamed both ways, client claims and hop-by-hop
//! headers removed, forwarding headers set, upstream failures as 502/504.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

type Chunk = Result<Frame<Bytes>, Infallible>;

/// A request body fed from the test, chunk by chunk.
fn channel_body() -> (
    mpsc::Sender<Chunk>,
    StreamBody<impl futures_core::Stream<Item = Chunk>>,
) {
    let (tx, mut rx) = mpsc::channel::<Chunk>(4);
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (tx, StreamBody::new(stream))
}

/// A gateway with one user, "uma" (roles reader, writer), and her token.
async fn with_user(upstream: SocketAddr, extra: &str) -> (Gateway, String) {
    let gw = Gateway::start(upstream, extra).await;
    gw.add_user("uma", "pw", &["reader", "writer"]);
    let token = gw.login("uma", "pw").await;
    (gw, token)
}

/// An echo upstream, and a gateway over it with `with_user`'s uma.
async fn uma_gateway(extra: &str) -> (EchoUpstream, Gateway, String) {
    let up = echo_upstream().await;
    let (gw, token) = with_user(up.addr, extra).await;
    (up, gw, token)
}

fn auth(token: &str) -> String {
    format!("Token {token}")
}

#[tokio::test]
async fn method_path_and_query_arrive_exactly() {
    let (up, recorded) = recording_echo_upstream().await;
    let (gw, token) = with_user(up.addr, "").await;
    let target = "/a/b-c_d.e~f/?x=1&y=%2F..%2F&z=a+b&q=caf%C3%A9&empty=&flag&x=2";
    for method in [
        "GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PROPFIND",
    ] {
        let r = send(
            gw.addr,
            Request::builder()
                .method(method)
                .uri(target)
                .header("authorization", auth(&token))
                .body(Bytes::new())
                .unwrap(),
        )
        .await;
        let seen = r.seen();
        assert_eq!(seen.method, method);
        assert_eq!(seen.uri, target, "{method}");
    }
    // HEAD too, seen by the recording upstream (a HEAD answer has no body).
    recorded.lock().unwrap().clear();
    let r = send(
        gw.addr,
        Request::head("/h?x=1")
            .header("authorization", auth(&token))
            .body(Bytes::new())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(*recorded.lock().unwrap(), ["HEAD /h?x=1"]);
    gw.stop().await;
}

#[tokio::test]
async fn the_canonical_spelling_of_a_path_is_what_is_forwarded() {
    let (_up, gw, token) = uma_gateway("").await;
    for (sent, forwarded) in [
        ("/%61%62c", "/abc"),
        ("/caf%c3%a9/%7euser", "/caf%C3%A9/~user"),
        ("/a%20b?q=%7e", "/a%20b?q=%7e"),
        ("/trailing/slash/", "/trailing/slash/"),
    ] {
        let r = get(gw.addr, sent, Some(&token)).await;
        assert_eq!(r.seen().uri, forwarded, "{sent}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_path_in_the_upstream_url_is_prepended() {
    let up = echo_upstream().await;
    let gw = Gateway::start_with(&format!("http://{}/v1", up.addr), "").await;
    gw.add_user("uma", "pw", &[]);
    let token = gw.login("uma", "pw").await;
    let seen = get(gw.addr, "/items/7?x=1", Some(&token)).await.seen();
    assert_eq!(
        seen.uri, "/v1/items/7?x=1",
        "under the upstream's base path"
    );
    gw.stop().await;
}

#[tokio::test]
async fn large_request_bodies_arrive_whole() {
    let (_up, gw, token) = uma_gateway("").await;
    // With Content-Length.
    let size = 5 * 1024 * 1024 + 3;
    let r = send(
        gw.addr,
        Request::post("/upload")
            .header("authorization", auth(&token))
            .header("content-type", "application/octet-stream")
            .body(Bytes::from(vec![7u8; size]))
            .unwrap(),
    )
    .await;
    let seen = r.seen();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.body_len, size as u64);

    // Chunked, of unknown length.
    let (tx, body) = channel_body();
    tokio::spawn(async move {
        for _ in 0..48 {
            let chunk = Bytes::from(vec![1u8; 64 * 1024]);
            if tx.send(Ok(Frame::data(chunk))).await.is_err() {
                return;
            }
        }
    });
    let req = Request::put(gw.url("/upload"))
        .header("authorization", auth(&token))
        .body(body)
        .unwrap();
    let r = Client::builder(TokioExecutor::new())
        .build_http()
        .request(req)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen: Seen =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(seen.method, "PUT");
    assert_eq!(seen.body_len, 48 * 64 * 1024);
    gw.stop().await;
}

/// An upstream for streaming checks:
/// - `/first-chunk`: reports the size of the first body frame it receives on
///   `first`, then reads the rest and answers with the total.
/// - `/drip`: answers `first`, then waits for `release` before `second`.
/// - `/custom`: a 201 with end-to-end and hop-by-hop headers.
struct Scripted {
    addr: SocketAddr,
    first: mpsc::UnboundedReceiver<usize>,
    release: Arc<Notify>,
}

type ScriptedBody = BoxBody<Bytes, Infallible>;

async fn scripted_upstream() -> Scripted {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (first_tx, first) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let notify = release.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let first_tx = first_tx.clone();
            let notify = notify.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let first_tx = first_tx.clone();
                    let notify = notify.clone();
                    async move { Ok::<_, Infallible>(scripted(req, first_tx, notify).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Scripted {
        addr,
        first,
        release,
    }
}

async fn scripted(
    req: Request<Incoming>,
    first_tx: mpsc::UnboundedSender<usize>,
    release: Arc<Notify>,
) -> Response<ScriptedBody> {
    let full = |text: String| Full::new(Bytes::from(text)).boxed();
    match req.uri().path() {
        "/first-chunk" => {
            let mut body = req.into_body();
            let mut total = 0usize;
            let mut reported = false;
            while let Some(Ok(frame)) = body.frame().await {
                if let Some(data) = frame.data_ref() {
                    total += data.len();
                    if !reported && !data.is_empty() {
                        let _ = first_tx.send(data.len());
                        reported = true;
                    }
                }
            }
            Response::new(full(total.to_string()))
        }
        "/drip" => {
            let (tx, mut rx) = mpsc::channel::<Chunk>(2);
            tokio::spawn(async move {
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"first|"))))
                    .await;
                release.notified().await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"second"))))
                    .await;
            });
            let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
            Response::new(StreamBody::new(stream).boxed())
        }
        "/custom" => Response::builder()
            .status(StatusCode::CREATED)
            .header("x-custom", "kept")
            .header("set-cookie", "a=1; Path=/")
            .header("set-cookie", "b=2; Path=/")
            .header("cache-control", "private")
            .header("location", "/things/9")
            .header("keep-alive", "timeout=5")
            .header("proxy-authenticate", "Basic realm=\"up\"")
            .header("proxy-connection", "keep-alive")
            .header("trailer", "x-checksum")
            .header("connection", "x-private, X-Other-Private")
            .header("x-private", "secret")
            .header("x-other-private", "secret")
            .body(full("{\"made\":9}".into()))
            .unwrap(),
        other => Response::builder()
            .status(StatusCode::NOT_FOUND)
            .header("x-upstream-404", other)
            .body(full("nope".into()))
            .unwrap(),
    }
}

#[tokio::test]
async fn the_request_body_reaches_the_upstream_before_the_client_has_sent_it_all() {
    let mut up = scripted_upstream().await;
    let (gw, token) = with_user(up.addr, "").await;
    let (tx, body) = channel_body();
    let req = Request::post(gw.url("/first-chunk"))
        .header("authorization", auth(&token))
        .body(body)
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = tokio::spawn(async move { client.request(req).await });
    tx.send(Ok(Frame::data(Bytes::from(vec![b'a'; 1000]))))
        .await
        .unwrap();
    // The rest is only sent once the upstream has the first part: a gateway
    // that buffered the body would deadlock here.
    let first = tokio::time::timeout(Duration::from_secs(5), up.first.recv())
        .await
        .expect(
            "the upstream saw nothing of the body while the client was still sending: buffered?",
        )
        .unwrap();
    assert!(first > 0 && first <= 1000, "first frame {first}");
    tx.send(Ok(Frame::data(Bytes::from(vec![b'b'; 3000]))))
        .await
        .unwrap();
    drop(tx);
    let r = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.status(), 200);
    let total = r.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&total[..], b"4000");
    gw.stop().await;
}

#[tokio::test]
async fn the_response_reaches_the_client_before_the_upstream_has_sent_it_all() {
    let up = scripted_upstream().await;
    let (gw, token) = with_user(up.addr, "").await;
    let req = Request::get(gw.url("/drip"))
        .header("authorization", auth(&token))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = tokio::time::timeout(Duration::from_secs(5), client().request(req))
        .await
        .expect("no response head while the upstream body is still open: buffered?")
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut body = r.into_body();
    let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
        .await
        .expect("the first part of the body never came: buffered?")
        .unwrap()
        .unwrap();
    assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"first|"));
    up.release.notify_one();
    let rest = tokio::time::timeout(Duration::from_secs(5), body.collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    assert_eq!(rest, Bytes::from_static(b"second"));
    gw.stop().await;
}

#[tokio::test]
async fn large_responses_stream_back_whole() {
    let (_up, gw, token) = uma_gateway("").await;
    let size: usize = 8 * 1024 * 1024 + 17;
    let r = get(gw.addr, &format!("/big/{size}"), Some(&token)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), size);
    assert!(r.body.iter().all(|b| *b == b'x'));
    gw.stop().await;
}

#[tokio::test]
async fn upstream_status_and_end_to_end_headers_come_back_hop_by_hop_do_not() {
    let up = scripted_upstream().await;
    let (gw, token) = with_user(up.addr, "").await;
    let r = get(gw.addr, "/custom", Some(&token)).await;
    assert_eq!(r.status, 201);
    assert_eq!(r.headers["x-custom"], "kept");
    assert_eq!(r.headers["location"], "/things/9");
    assert_eq!(r.headers["cache-control"], "private");
    let cookies: Vec<_> = r.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"]);
    assert_eq!(&r.body[..], b"{\"made\":9}");
    for h in [
        "keep-alive",
        "proxy-authenticate",
        "proxy-connection",
        "trailer",
        "x-private",
        "x-other-private",
    ] {
        assert!(r.headers.get(h).is_none(), "{h} came back: {:?}", r.headers);
    }
    if let Some(c) = r.headers.get("connection") {
        let c = c.to_str().unwrap().to_ascii_lowercase();
        assert!(!c.contains("private"), "connection: {c}");
    }
    // An upstream error status is passed on as it is, not turned into a gateway error.
    let r = get(gw.addr, "/missing", Some(&token)).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.headers["x-upstream-404"], "/missing");
    assert_eq!(&r.body[..], b"nope");

    // The echo upstream's `Connection: keep-alive, x-hop` and `x-hop` too.
    let echo = echo_upstream().await;
    let gw2 = Gateway::start(echo.addr, "public = [\"/**\"]").await;
    let r = get(gw2.addr, "/x", None).await;
    assert_eq!(r.headers["x-upstream"], "echo");
    assert!(r.headers.get("x-hop").is_none());
    assert!(r.headers.get("keep-alive").is_none());
    gw.stop().await;
    gw2.stop().await;
}

/// Every spelling of the identity and roles headers a client might send.
fn claims(b: http::request::Builder) -> http::request::Builder {
    b.header("X-Auth-User", "root")
        .header("x-auth-user", "root2")
        .header("x_auth_user", "root3")
        .header("X_Auth_User", "root4")
        .header("x-auth_user", "root5")
        .header("X-AUTH-ROLES", "admin")
        .header("x_auth_roles", "admin")
        .header("X-Auth-Roles", "superuser")
}

#[tokio::test]
async fn client_identity_claims_are_removed_on_protected_and_public_paths() {
    let (_up, gw, token) = uma_gateway("public = [\"/open/**\"]").await;

    // Protected: exactly the gateway's values arrive, once each.
    let r = send(
        gw.addr,
        claims(Request::get("/private"))
            .header("authorization", auth(&token))
            .body(Bytes::new())
            .unwrap(),
    )
    .await;
    let seen = r.seen();
    assert_eq!(seen.header("x-auth-user"), Some("uma"));
    assert_eq!(seen.header("x-auth-roles"), Some("reader,writer"));
    let spellings = seen
        .headers
        .iter()
        .filter(|(k, _)| {
            let k = k.to_ascii_lowercase().replace('_', "-");
            k == "x-auth-user" || k == "x-auth-roles"
        })
        .count();
    assert_eq!(spellings, 2, "{:?}", seen.headers);

    // Public: none at all.
    let r = send(
        gw.addr,
        claims(Request::get("/open/page"))
            .body(Bytes::new())
            .unwrap(),
    )
    .await;
    let seen = r.seen();
    assert!(!seen.has_header_like("x-auth-user"), "{:?}", seen.headers);
    assert!(!seen.has_header_like("x-auth-roles"), "{:?}", seen.headers);

    // Raw bytes, in spellings and cases no client library would produce.
    for (path, with_token) in [("/private", true), ("/open/raw", false)] {
        let authz = if with_token {
            format!("Authorization: Token {token}\r\n")
        } else {
            String::new()
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\n{authz}X-AUTH-USER: root\r\nx_AUTH_user: root\r\n\
             X-Auth-User: root\r\nX_AUTH_ROLES: admin\r\nx-auth-roles: admin\r\nConnection: close\r\n\r\n"
        );
        let reply = raw_once(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(raw_status(&reply), 200, "{reply}");
        let seen: Seen = serde_json::from_str(raw_body(&reply)).unwrap();
        if with_token {
            assert_only_uma(&seen, ["x-auth-user", "x-auth-roles"]);
        } else {
            assert!(!seen.has_header_like("x-auth-user"), "{:?}", seen.headers);
            assert!(!seen.has_header_like("x-auth-roles"), "{:?}", seen.headers);
            assert_no_claim(&seen);
        }
    }
    gw.stop().await;
}

/// Uma's identity in the gateway's two headers, and no client's claim
/// (root, admin) in any header beside them.
fn assert_only_uma(seen: &Seen, [user, roles]: [&str; 2]) {
    assert_eq!(seen.header(user), Some("uma"));
    assert_eq!(seen.header(roles), Some("reader,writer"));
    assert_no_claim(seen);
}

fn assert_no_claim(seen: &Seen) {
    let claimed = seen.has_value(|v| v == "root" || v == "admin");
    assert!(!claimed, "a client's claim arrived: {:?}", seen.headers);
}

#[tokio::test]
async fn a_renamed_identity_header_is_stripped_in_every_spelling() {
    let up = echo_upstream().await;
    let (gw, token) = with_user(
        up.addr,
        "identity_header = \"X-Remote-User\"\nroles_header = \"X-Remote-Groups\"",
    )
    .await;
    let claims = [
        ("x-remote-user", "root"),
        ("x_remote_user", "root"),
        ("X_REMOTE_GROUPS", "admin"),
    ];
    let r = send_with_token(&gw, Request::get("/x"), &token, &claims).await;
    assert_only_uma(&r.seen(), ["x-remote-user", "x-remote-groups"]);
    gw.stop().await;
}

#[tokio::test]
async fn the_credential_is_never_forwarded() {
    let (_up, gw, token) = uma_gateway("public = [\"/open\"]").await;
    for (path, value) in [
        ("/private", format!("Token {token}")),
        ("/private", format!("Bearer {token}")),
        ("/private", format!("token {token}")),
        ("/open", format!("Token {token}")),
        ("/open", "Basic dXNlcjpwYXNz".to_owned()),
    ] {
        let r = send(
            gw.addr,
            Request::get(path)
                .header("authorization", value.as_str())
                .header("proxy-authorization", "Basic cHJveHk6cHc=")
                .body(Bytes::new())
                .unwrap(),
        )
        .await;
        let seen = r.seen();
        assert!(
            !seen.has_header_like("authorization"),
            "{path} {value}: {:?}",
            seen.headers
        );
        assert!(!seen.has_header_like("proxy-authorization"));
        assert_absent(&seen, &token, "the token arrived");
    }
    gw.stop().await;
}

#[tokio::test]
async fn hop_by_hop_and_connection_named_headers_go_but_the_gateways_own_arrive() {
    let (_up, gw, token) = uma_gateway("public = [\"/open\"]").await;
    for (path, user) in [("/private", Some("uma")), ("/open", None)] {
        let mut b = Request::get(path)
            .header("connection", "X-Auth-User, X-Forwarded-For")
            .header(
                "connection",
                "x-custom-hop, X-Auth-Roles, X-Forwarded-Proto",
            )
            .header("x-custom-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("trailer", "x-checksum")
            .header("proxy-connection", "keep-alive")
            .header("x-end-to-end", "kept");
        if user.is_some() {
            b = b.header("authorization", auth(&token));
        }
        let seen = send(gw.addr, b.body(Bytes::new()).unwrap()).await.seen();
        for h in [
            "x-custom-hop",
            "keep-alive",
            "te",
            "trailer",
            "proxy-connection",
        ] {
            assert!(
                !seen.has_header_like(h),
                "{path}: {h} forwarded: {:?}",
                seen.headers
            );
        }
        if let Some(c) = seen.header("connection") {
            let c = c.to_ascii_lowercase();
            assert!(
                !c.contains("x-auth") && !c.contains("x-forwarded") && !c.contains("x-custom"),
                "{path}: Connection forwarded: {c}"
            );
        }
        assert_eq!(seen.header("x-end-to-end"), Some("kept"));
        assert_eq!(seen.header("x-auth-user"), user, "{path}");
        assert_eq!(
            seen.header("x-auth-roles"),
            user.map(|_| "reader,writer"),
            "{path}"
        );
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"), "{path}");
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"), "{path}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn forwarding_headers_are_set_and_client_copies_dropped_from_untrusted_peers() {
    let (_up, gw, token) = uma_gateway("").await;
    let r = send(
        gw.addr,
        Request::get("/x")
            .header("host", "api.example.com:8443")
            .header("authorization", auth(&token))
            .header("x-forwarded-for", "203.0.113.7")
            .header("X_Forwarded_For", "203.0.113.8")
            .header("x-forwarded-proto", "https")
            .header("x-forwarded-host", "evil.example")
            .header("x-forwarded-port", "443")
            .header("x-real-ip", "203.0.113.9")
            .header("forwarded", "for=203.0.113.10;proto=https")
            .body(Bytes::new())
            .unwrap(),
    )
    .await;
    let seen = r.seen();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some("api.example.com:8443")
    );
    for h in ["x-forwarded-port", "x-real-ip", "forwarded"] {
        assert!(!seen.has_header_like(h), "{h}: {:?}", seen.headers);
    }
    assert_absent(&seen, "203.0.113", "a client-sent address arrived");
    gw.stop().await;
}

#[tokio::test]
async fn a_trusted_proxys_chain_is_kept_and_the_peer_appended() {
    let up = echo_upstream().await;
    let gw = Gateway::start_edited(
        &format!("http://{}", up.addr),
        "",
        in_section("[server]", "trusted_proxies = [\"127.0.0.1\"]"),
    )
    .await;
    gw.add_user("uma", "pw", &[]);
    let token = gw.login("uma", "pw").await;
    // One header line, or several that are one chain.
    let one = [("x-forwarded-for", "203.0.113.7, 198.51.100.2")];
    let two = [
        ("x-forwarded-for", "203.0.113.7"),
        ("x-forwarded-for", "198.51.100.2"),
    ];
    for chain in [&one[..], &two[..]] {
        let r = send_with_token(&gw, Request::get("/x"), &token, chain).await;
        assert_eq!(
            r.seen().header("x-forwarded-for"),
            Some("203.0.113.7, 198.51.100.2, 127.0.0.1"),
            "{chain:?}"
        );
    }
    // No chain: just the peer.
    let r = get(gw.addr, "/x", Some(&token)).await;
    assert_eq!(r.seen().header("x-forwarded-for"), Some("127.0.0.1"));
    gw.stop().await;
}

#[tokio::test]
async fn method_override_headers_are_not_forwarded() {
    let (_up, gw, token) = uma_gateway("").await;
    let overrides = [
        ("X-HTTP-Method-Override", "DELETE"),
        ("x-http-method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("x_http_method_override", "DELETE"),
    ];
    let r = send_with_token(&gw, Request::post("/things/1"), &token, &overrides).await;
    let seen = r.seen();
    assert_eq!(seen.method, "POST");
    assert!(!seen.has_value(|v| v == "DELETE"), "{:?}", seen.headers);
    gw.stop().await;
}

#[tokio::test]
async fn an_unreachable_upstream_gets_502_json() {
    let gw = Gateway::start(closed_port(), "").await;
    gw.add_user("uma", "pw", &[]);
    let token = gw.login("uma", "pw").await;
    let started = Instant::now();
    let r = get(gw.addr, "/x", Some(&token)).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    assert!(r.json()["detail"].is_string(), "{}", r.text());
    assert!(started.elapsed() < Duration::from_secs(3));
    // The gateway itself is fine: its own endpoints still answer.
    assert_eq!(get(gw.addr, "/x", None).await.status, 401);
    gw.stop().await;
}

#[tokio::test]
async fn an_upstream_that_never_answers_gets_504_json_after_the_timeout() {
    let (_up, gw, token) = uma_gateway("").await;
    let started = Instant::now();
    let r = get(gw.addr, "/slow", Some(&token)).await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert!(r.json()["detail"].is_string(), "{}", r.text());
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(6),
        "upstream.timeout is 2s; the 504 came after {took:?}"
    );
    assert_eq!(get(gw.addr, "/after", Some(&token)).await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn an_upstream_dying_mid_response_does_not_take_the_gateway_down() {
    let (_up, gw, token) = uma_gateway("").await;
    for _ in 0..3 {
        let req = Request::get(gw.url("/broken"))
            .header("authorization", auth(&token))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let outcome = tokio::time::timeout(Duration::from_secs(5), async {
            match client().request(req).await {
                Err(_) => None,
                Ok(r) => Some(r.into_body().collect().await.map(|b| b.to_bytes())),
            }
        })
        .await
        .expect("the client was left hanging");
        if let Some(Ok(body)) = outcome {
            assert_ne!(
                body.len(),
                1000,
                "a truncated body was passed off as complete"
            );
        }
    }
    let r = get(gw.addr, "/after", Some(&token)).await;
    assert_eq!(r.seen().uri, "/after");
    gw.stop().await;
}

#[tokio::test]
async fn h2c_prior_knowledge_clients_are_served() {
    let (_up, gw, token) = uma_gateway("").await;
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let r = client
        .request(
            Request::post(gw.url("/h2/items?x=1&y=2"))
                .header("authorization", auth(&token))
                .header("x-auth-user", "root")
                .body(Full::new(Bytes::from(vec![0u8; 300_000])))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let seen: Seen =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.uri, "/h2/items?x=1&y=2");
    assert_eq!(seen.body_len, 300_000);
    assert_eq!(seen.header("x-auth-user"), Some("uma"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(gw.addr.to_string().as_str())
    );
    assert!(!seen.has_header_like("authorization"));

    // No token over h2 gets the same 401 as over HTTP/1.1.
    let r = client
        .request(
            Request::get(gw.url("/h2"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Token realm=\"tokengate\"");

    // Login over h2 too.
    let r = client
        .request(
            Request::post(gw.url("/login"))
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(
                    r#"{"username":"uma","password":"pw"}"#,
                )))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    gw.stop().await;
}

/// Headers some frameworks read as the client's address, scheme or the
/// real path (IIS, Symfony, Laravel, Rack, Spring).
const FRAMEWORK_TRUSTED: &[(&str, &str)] = &[
    ("X-Original-URL", "/admin"),
    ("X-Rewrite-URL", "/admin"),
    ("X-Client-IP", "203.0.113.1"),
    ("True-Client-IP", "203.0.113.2"),
    ("CF-Connecting-IP", "203.0.113.3"),
    ("Client-IP", "203.0.113.4"),
    ("X-Cluster-Client-IP", "203.0.113.5"),
    ("X-Real-IP", "203.0.113.6"),
    ("X_Real_IP", "203.0.113.7"),
    ("X-Forwarded-Ssl", "on"),
    ("X-Forwarded-Scheme", "https"),
    ("Front-End-Https", "on"),
    ("Forwarded", "for=203.0.113.8;proto=https"),
];

fn with_framework_headers(mut b: http::request::Builder) -> http::request::Builder {
    for (name, value) in FRAMEWORK_TRUSTED {
        b = b.header(*name, *value);
    }
    b
}

#[tokio::test]
async fn framework_trusted_headers_are_stripped() {
    let (up, gw, token) = uma_gateway("public = [\"/pub/**\"]").await;
    for (path, token) in [("/x", Some(&token)), ("/pub/x", None)] {
        let mut b = with_framework_headers(Request::get(path));
        if let Some(token) = token {
            b = b.header("authorization", auth(token));
        }
        let seen = send(gw.addr, b.body(Bytes::new()).unwrap()).await.seen();
        for (name, _) in FRAMEWORK_TRUSTED {
            assert!(
                !seen.has_header_like(name),
                "{path}: {name}: {:?}",
                seen.headers
            );
        }
        assert_eq!(seen.uri, path);
    }
    gw.stop().await;

    // A configured list replaces the default one.
    let gw = public_gateway(up.addr, ("[upstream]", "strip_headers = [\"X-Tenant\"]")).await;
    let tenant = [("x-tenant", "other"), ("X_TENANT", "other")];
    let seen = framework_seen(&gw, &tenant).await;
    assert!(!seen.has_header_like("x-tenant"), "{:?}", seen.headers);
    assert_eq!(seen.header("x-original-url"), Some("/admin"));
    assert_eq!(seen.header("true-client-ip"), Some("203.0.113.2"));
    gw.stop().await;

    // From a trusted proxy X-Real-IP stays (it names the client the proxy
    // saw, as its X-Forwarded-For chain does); its underscore twin does not.
    let gw = public_gateway(up.addr, ("[server]", "trusted_proxies = [\"127.0.0.1\"]")).await;
    let seen = framework_seen(&gw, &[]).await;
    let real_ip: Vec<_> = seen
        .headers
        .iter()
        .filter(|(k, _)| k.replace('_', "-").eq_ignore_ascii_case("x-real-ip"))
        .collect();
    assert_eq!(
        real_ip,
        [&("x-real-ip".to_owned(), "203.0.113.6".to_owned())],
        "{:?}",
        seen.headers
    );
    assert!(
        !seen.has_header_like("x-original-url"),
        "{:?}",
        seen.headers
    );
    gw.stop().await;
}

/// A gateway where every path is public, with `line` added to `section`.
async fn public_gateway(upstream: SocketAddr, (section, line): (&'static str, &str)) -> Gateway {
    let url = format!("http://{upstream}");
    Gateway::start_edited(&url, "public = [\"/**\"]", in_section(section, line)).await
}

/// What the upstream saw of GET /x sent with the framework headers and
/// `extra`.
async fn framework_seen(gw: &Gateway, extra: &[(&str, &str)]) -> Seen {
    let mut req = with_framework_headers(Request::get("/x"));
    for (name, value) in extra {
        req = req.header(*name, *value);
    }
    send(gw.addr, req.body(Bytes::new()).unwrap()).await.seen()
}

/// `req` with `token` and `headers` (in the order given), sent with no body.
async fn send_with_token(
    gw: &Gateway,
    mut req: http::request::Builder,
    token: &str,
    headers: &[(&str, &str)],
) -> Reply {
    req = req.header("authorization", auth(token));
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(gw.addr, req.body(Bytes::new()).unwrap()).await
}

/// No header value the upstream saw holds `needle`; `what` (a format
/// string for the headers) says otherwise.
fn assert_absent(seen: &Seen, needle: &str, what: &str) {
    assert!(
        !seen.has_value(|v| v.contains(needle)),
        "{what}: {:?}",
        seen.headers
    );
}
