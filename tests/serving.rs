//! Production serving: TLS termination with ALPN, HTTP/2, reloads.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokengate::config::Config;

fn tls_config(upstream: std::net::SocketAddr) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n\
         [upstream]\nurl = \"http://{upstream}\"\n[auth]\n{FAST_ARGON2}\n"
    )
}

/// A gateway terminating TLS with a fresh certificate for `localhost`:
/// the gateway, its reload sender, and the certificate's DER.
async fn tls_gateway(
    upstream: std::net::SocketAddr,
) -> (Gateway, tokio::sync::mpsc::Sender<Config>, Vec<u8>) {
    let mut der = Vec::new();
    let (gw, reload) =
        Gateway::start_text(&tls_config(upstream), |dir| der = write_cert(dir)).await;
    (gw, reload, der)
}

/// Writes a fresh self-signed certificate for `localhost`; returns its DER.
fn write_cert(dir: &std::path::Path) -> Vec<u8> {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("cert.pem"), key.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.signing_key.serialize_pem()).unwrap();
    key.cert.der().to_vec()
}

fn tls_client(root: &[u8], alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.to_vec().into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn tls_connect(
    addr: std::net::SocketAddr,
    root: &[u8],
    alpn: &[&[u8]],
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tls_client(root, alpn).connect(name, tcp).await.unwrap()
}

/// An HTTP/1.1 client connection over `io`.
async fn h1_over<T>(io: T) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (h1, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    h1
}

/// The status of `GET path` over a new HTTP/1.1-over-TLS connection.
async fn tls_get_status(addr: std::net::SocketAddr, root: &[u8], path: &str) -> u16 {
    let mut h1 = h1_over(tls_connect(addr, root, &[b"http/1.1"]).await).await;
    let r = h1
        .send_request(
            Request::get(path)
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    r.status().as_u16()
}

#[tokio::test]
async fn tls_serves_http1_and_http2_by_alpn() {
    let up = echo_upstream().await;
    let (gw, _reload, der) = tls_gateway(up.addr).await;
    gw.add_user("tia", "pw", &[]);

    // HTTP/1.1 over TLS: the 401 path and a proxied request.
    let tls = tls_connect(gw.addr, &der, &[b"http/1.1"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let mut h1 = h1_over(tls).await;
    let r = h1
        .send_request(
            Request::get("/x")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    r.into_body().collect().await.unwrap();
    let login = Request::post("/login")
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(
            r#"{"username":"tia","password":"pw"}"#,
        )))
        .unwrap();
    let r = h1.send_request(login).await.unwrap();
    assert_eq!(r.status(), 200);
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let token = serde_json::from_slice::<serde_json::Value>(&body).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();

    // HTTP/2 over TLS, negotiated by ALPN.
    let tls = tls_connect(gw.addr, &der, &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let seen = h2_seen(tls, "https://localhost/items?a=1", &token).await;
    assert_eq!(seen.uri, "/items?a=1");
    assert_eq!(
        seen.version, "HTTP/1.1",
        "the upstream pool speaks HTTP/1.1"
    );
    assert_eq!(seen.header("x-auth-user"), Some("tia"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("host"), Some("localhost"));
    gw.stop().await;
}

#[tokio::test]
async fn plain_http_is_refused_on_a_tls_listener() {
    let up = echo_upstream().await;
    let (gw, _reload, der) = tls_gateway(up.addr).await;
    let reply = raw(
        gw.addr,
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    // A plain answer a plain client can read, saying what to do.
    assert!(reply.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{reply}");
    assert!(reply.contains("content-type: text/plain"), "{reply}");
    assert!(
        reply.ends_with("this port speaks HTTPS; send the request with https://\n"),
        "{reply}"
    );
    // TLS clients are served as before.
    assert_eq!(tls_get_status(gw.addr, &der, "/x").await, 401);
    gw.stop().await;
}

/// GET `uri` with `token` over HTTP/2 on `io`; what the upstream saw.
async fn h2_seen<T>(io: T, uri: &str, token: &str) -> Seen
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = Request::get(uri)
        .header("authorization", format!("Token {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = h2.send_request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn h2c_prior_knowledge_on_plain_listeners() {
    let (_up, gw, token) = gateway_with_token("", "hugo").await;
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let seen = h2_seen(tcp, &format!("http://{}/h2", gw.addr), &token).await;
    assert_eq!(seen.header("x-auth-user"), Some("hugo"));
    gw.stop().await;
}

/// Waits (up to `limit`) until the reloaded config's public `/new` answers.
async fn reloaded(gw: &Gateway, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    while get(gw.addr, "/new", None).await.status != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "reload never applied"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn reload_config(upstream: std::net::SocketAddr, public: &str, timeout: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"http://{upstream}\"\ntimeout = \"{timeout}\"\n\
         [store]\npath = \"data\"\n[auth]\npublic = [\"{public}\"]\n{FAST_ARGON2}\n"
    )
}

#[tokio::test]
async fn reload_swaps_public_paths_without_disturbing_requests_in_flight() {
    let up = echo_upstream().await;
    let (gw, reload) = Gateway::start_text(&reload_config(up.addr, "/old/**", "60s"), |_| {}).await;
    assert_eq!(get(gw.addr, "/old", None).await.status, 200);
    assert_eq!(get(gw.addr, "/new", None).await.status, 401);

    // A request admitted under the old config, still waiting on the upstream.
    let addr = gw.addr;
    let in_flight = tokio::spawn(async move { get(addr, "/old/delay/800", None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let path = gw.dir.path().join("tokengate.toml");
    std::fs::write(&path, reload_config(up.addr, "/new/**", "60s")).unwrap();
    reload
        .send(Config::load(&path, |_| None).unwrap())
        .await
        .unwrap();
    reloaded(&gw, Duration::from_secs(5)).await;
    assert_eq!(get(gw.addr, "/old", None).await.status, 401);
    assert!(
        !in_flight.is_finished(),
        "the slow request ended before the reload"
    );
    let r = in_flight.await.unwrap();
    assert_eq!(
        r.status,
        200,
        "the request in flight was disturbed: {}",
        r.text()
    );
    assert_eq!(r.seen().uri, "/old/delay/800");
    gw.stop().await;
}

/// The new config's dummy hash (for unknown usernames) is computed when it
/// loads. On the current-thread runtime a hash on the async worker would
/// stop every request until it ended; off it, the gateway keeps answering
/// under the old config meanwhile.
#[tokio::test]
async fn reload_hashes_off_the_async_workers() {
    let up = echo_upstream().await;
    let (gw, reload) = Gateway::start_text(&reload_config(up.addr, "/old/**", "60s"), |_| {}).await;
    assert_eq!(get(gw.addr, "/new", None).await.status, 401);

    // A hash of a second or more (at nice +10, longer on a busy machine),
    // against milliseconds for a request on the loopback.
    let slow = reload_config(up.addr, "/new/**", "60s").replace(
        FAST_ARGON2,
        "argon2_memory = \"32MiB\"\nargon2_iterations = 16\n",
    );
    let path = gw.dir.path().join("tokengate.toml");
    std::fs::write(&path, slow).unwrap();
    reload
        .send(Config::load(&path, |_| None).unwrap())
        .await
        .unwrap();
    assert_eq!(
        get(gw.addr, "/new", None).await.status,
        401,
        "the reload finished before a request could be answered: it hashed on the worker"
    );
    assert_eq!(get(gw.addr, "/old", None).await.status, 200);
    reloaded(&gw, Duration::from_secs(120)).await;
    gw.stop().await;
}

#[tokio::test]
async fn a_reload_with_broken_certificates_keeps_the_old_config() {
    let up = echo_upstream().await;
    let (gw, reload, der) = tls_gateway(up.addr).await;
    let bad = gw.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        tls_config(up.addr)
            .replace("cert.pem", "missing.pem")
            .replace("[auth]", "[auth]\npublic = [\"/**\"]"),
    )
    .unwrap();
    reload
        .send(Config::load(&bad, |_| None).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Still TLS with the old certificate, and still no public paths.
    assert_eq!(tls_get_status(gw.addr, &der, "/x").await, 401);
    gw.stop().await;
}

#[tokio::test]
async fn reload_picks_up_a_renewed_certificate() {
    let up = echo_upstream().await;
    let (gw, reload, first) = tls_gateway(up.addr).await;
    let second = write_cert(gw.dir.path());
    reload
        .send(Config::load(&gw.dir.path().join("tokengate.toml"), |_| None).unwrap())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        if tls_client(&second, &[b"http/1.1"])
            .connect(name, tcp)
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(
        tls_client(&first, &[b"http/1.1"])
            .connect(name, tcp)
            .await
            .is_err()
    );
    gw.stop().await;
}

#[tokio::test]
async fn websocket_upgrades_are_tunneled_for_authorized_requests_only() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_up, gw, token) = gateway_with_token("", "wes").await;

    let (head, mut s) = upgrade(gw.addr, "/ws", Some(&token), "websocket").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], b"hello wes\n", "the upstream saw the identity");
    for msg in [&b"ping"[..], b"second frame", &[0u8, 255, 1, 2][..]] {
        s.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut got))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, msg);
    }
    drop(s);

    let (head, _) = upgrade(gw.addr, "/ws", None, "websocket").await;
    assert!(
        head.starts_with("HTTP/1.1 401"),
        "unauthenticated upgrade: {head}"
    );

    // An h2c upgrade is not passed on: the upstream sees a plain request.
    let (head, _) = upgrade(gw.addr, "/ws", Some(&token), "h2c").await;
    assert!(!head.starts_with("HTTP/1.1 101"), "{head}");
    gw.stop().await;
}

/// An HTTPS upstream on 127.0.0.1 with a certificate for `localhost`,
/// answering with the path and identity it saw.
async fn https_upstream(dir: &std::path::Path) -> std::net::SocketAddr {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(dir.join("upstream-ca.pem"), key.cert.pem()).unwrap();
    let cert = rustls::pki_types::CertificateDer::from(key.cert.der().to_vec());
    let private =
        rustls::pki_types::PrivateKeyDer::try_from(key.signing_key.serialize_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert], private)
        .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc =
                    hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
                        let user = req.headers().get("x-auth-user").cloned();
                        let body = format!(
                            "tls upstream saw {} as {}",
                            req.uri(),
                            user.as_ref().and_then(|u| u.to_str().ok()).unwrap_or("-")
                        );
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn https_upstreams_with_a_private_ca_are_verified_and_pooled() {
    let ca_dir = tempfile::tempdir().unwrap();
    let up = https_upstream(ca_dir.path()).await;
    let ca = ca_dir.path().join("upstream-ca.pem");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"https://localhost:{}\"\nca_file = \"{}\"\n[auth]\n{FAST_ARGON2}\n",
        up.port(),
        ca.display()
    );
    let (gw, _reload) = Gateway::start_text(&text, |_| {}).await;
    gw.add_user("ula", "pw", &[]);
    let token = gw.login("ula", "pw").await;
    for _ in 0..3 {
        let r = get(gw.addr, "/secure?x=1", Some(&token)).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.text(), "tls upstream saw /secure?x=1 as ula");
    }
    gw.stop().await;

    // Without the CA the upstream's certificate is not trusted: 502.
    let untrusted = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\nurl = \"https://localhost:{}\"\n[auth]\npublic = [\"/**\"]\n{FAST_ARGON2}\n",
        up.port()
    );
    let (gw, _reload) = Gateway::start_text(&untrusted, |_| {}).await;
    let r = get(gw.addr, "/secure", None).await;
    assert_eq!(r.status, 502);
    gw.stop().await;
}
