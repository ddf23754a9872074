//! Request IDs: the same value on the upstream's request, on the response
//! (the gateway's own answers included), and in the access line.

mod common;

use std::collections::HashSet;

use bytes::Bytes;
use common::*;
use http::Request;

fn with_trusted_proxy(text: String) -> String {
    text.replacen(
        "[server]\n",
        "[server]\ntrusted_proxies = [\"127.0.0.1\"]\n",
        1,
    )
}

fn get_with(path: &str, token: Option<&str>, headers: &[(&str, &str)]) -> Request<Bytes> {
    let mut b = Request::get(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Token {t}"));
    }
    for (name, value) in headers {
        b = b.header(*name, *value);
    }
    b.body(Bytes::new()).unwrap()
}

fn response_id(r: &Reply) -> String {
    r.headers
        .get("x-request-id")
        .unwrap_or_else(|| panic!("no X-Request-Id on a {}", r.status))
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_upstream_and_the_client_see_one_new_id() {
    let (_up, gw, token) = gateway_with_token("", "ann").await;
    let r = get(gw.addr, "/x", Some(&token)).await;
    let id = response_id(&r);
    assert_eq!(id.len(), 32, "{id}");
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
    assert_eq!(r.seen().header("x-request-id"), Some(id.as_str()));
    gw.stop().await;
}

/// Over one HTTP/2 connection, sixty IDs (more than a 4096-byte HPACK
/// table could hold, had they been indexed) each arrive as the one the
/// upstream saw. That they go out never indexed is the unit test's.
#[tokio::test(flavor = "multi_thread")]
async fn ids_arrive_intact_over_one_http2_connection() {
    use http_body_util::BodyExt;
    let (_up, gw, token) = gateway_with_token("", "ann").await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<http_body_util::Full<Bytes>>();
    let mut ids = HashSet::new();
    for i in 0..60 {
        let req = Request::get(format!("http://{}/x/{i}", gw.addr))
            .header("authorization", format!("Token {token}"))
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let r = h2.request(req).await.unwrap();
        assert_eq!(r.version(), http::Version::HTTP_2);
        let (parts, body) = r.into_parts();
        let reply = Reply {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        };
        assert_eq!(reply.status, 200);
        let id = response_id(&reply);
        assert_eq!(reply.seen().header("x-request-id"), Some(id.as_str()));
        assert!(ids.insert(id), "an ID came back twice");
    }
    gw.stop().await;
}

#[tokio::test]
async fn the_gateways_own_answers_carry_an_id_too() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "").await;
    let unauthenticated = get(gw.addr, "/x", None).await;
    assert_eq!(unauthenticated.status, 401);
    let bad_login = send(
        gw.addr,
        Request::post("/login")
            .header("content-type", "application/json")
            .body(r#"{"username":"nobody","password":"x"}"#)
            .unwrap(),
    )
    .await;
    assert_eq!(bad_login.status, 401);
    let refused = get(gw.addr, "/a/../b", None).await;
    assert_eq!(refused.status, 400);
    let ids: HashSet<String> = [&unauthenticated, &bad_login, &refused]
        .into_iter()
        .map(response_id)
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    gw.stop().await;
}

#[tokio::test]
async fn ids_are_unique_across_ten_thousand_requests() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "").await;
    let mut ids = HashSet::new();
    // The 401 path, on kept-alive connections: the gateway answers itself,
    // so this is about the IDs, not the upstream.
    let client = client();
    let url: http::Uri = gw.url("/x").parse().unwrap();
    for _ in 0..10_000 {
        let req = Request::get(url.clone())
            .body(http_body_util::Full::new(Bytes::new()))
            .unwrap();
        let r = client.request(req).await.unwrap();
        assert_eq!(r.status(), 401);
        let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert!(ids.insert(id.clone()), "{id} came twice");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_clients_own_id_is_replaced_unless_a_trusted_proxy_sent_it() {
    let (up, gw, token) = gateway_with_token("", "ann").await;
    let forged = [("x-request-id", "forged-1"), ("x_request_id", "forged-2")];
    let r = send(gw.addr, get_with("/x", Some(&token), &forged)).await;
    let id = response_id(&r);
    assert_ne!(id, "forged-1");
    let seen = r.seen();
    assert_eq!(seen.header("x-request-id"), Some(id.as_str()));
    assert!(
        !seen.has_value(|v| v.starts_with("forged")),
        "a client's id reached the upstream: {:?}",
        seen.headers
    );
    gw.stop().await;

    let gw = Gateway::start_edited(&format!("http://{}", up.addr), "", with_trusted_proxy).await;
    gw.add_user("ann", "pw", &[]);
    let token = gw.login("ann", "pw").await;
    let from_proxy = [("x-request-id", "edge-7f3a")];
    let r = send(gw.addr, get_with("/x", Some(&token), &from_proxy)).await;
    assert_eq!(response_id(&r), "edge-7f3a");
    assert_eq!(r.seen().header("x-request-id"), Some("edge-7f3a"));
    // One a log line could not carry as it is gets a new one.
    let unusable = [("x-request-id", "has \"quotes\"")];
    let r = send(gw.addr, get_with("/x", Some(&token), &unusable)).await;
    assert_eq!(response_id(&r).len(), 32);
    gw.stop().await;
}

#[tokio::test]
async fn the_header_name_is_configurable() {
    let up = echo_upstream().await;
    let gw = Gateway::start_edited(
        &format!("http://{}", up.addr),
        "",
        in_section("[server]", "request_id_header = \"X-Correlation-Id\""),
    )
    .await;
    gw.add_user("ann", "pw", &[]);
    let token = gw.login("ann", "pw").await;
    let r = get(gw.addr, "/x", Some(&token)).await;
    let id = r.headers["x-correlation-id"].to_str().unwrap().to_owned();
    assert!(r.headers.get("x-request-id").is_none());
    assert_eq!(r.seen().header("x-correlation-id"), Some(id.as_str()));
    gw.stop().await;
}
