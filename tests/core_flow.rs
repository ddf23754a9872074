//! The main path end to end: login, call through, 401s, logout.

mod common;

use bytes::Bytes;
use common::*;
use http::Request;

#[tokio::test]
async fn login_then_call_through_with_identity() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "").await;
    gw.add_user("alice", "s3cret pw", &["admin", "ops"]);
    let token = gw.login("alice", "s3cret pw").await;
    assert!(token.starts_with("tg_"));

    let r = get(gw.addr, "/items?page=2&q=a%20b", Some(&token)).await;
    let seen = r.seen();
    assert_eq!(seen.method, "GET");
    assert_eq!(seen.uri, "/items?page=2&q=a%20b");
    assert_eq!(seen.header("x-auth-user"), Some("alice"));
    assert_eq!(seen.header("x-auth-roles"), Some("admin,ops"));
    assert_eq!(
        seen.header("authorization"),
        None,
        "the credential must not be forwarded"
    );
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(
        seen.header("x-forwarded-host"),
        Some(gw.addr.to_string().as_str())
    );
    assert_eq!(r.headers["x-upstream"], "echo");
    assert!(
        r.headers.get("x-hop").is_none(),
        "Connection-named response header passed"
    );
    gw.stop().await;
}

#[tokio::test]
async fn no_token_and_bad_tokens_get_the_contract_401s() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "").await;
    let r = get(gw.addr, "/items", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.headers["www-authenticate"], "Token realm=\"tokengate\"");
    assert_eq!(
        r.json(),
        serde_json::json!({"detail": "Authentication credentials were not provided."})
    );
    let unknown = tokengate::store::token::Token::generate().unwrap();
    for bad in [unknown.expose(), "tg_short", "not-a-token"] {
        let r = get(gw.addr, "/items", Some(bad)).await;
        assert_eq!(r.status, 401, "{bad}");
        assert_eq!(r.headers["www-authenticate"], "Token realm=\"tokengate\"");
        assert_eq!(r.json(), serde_json::json!({"detail": "Invalid token."}));
    }
    gw.stop().await;
}

#[tokio::test]
async fn logout_ends_that_token_only() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "").await;
    gw.add_user("bob", "pw-bob", &[]);
    let phone = gw.login("bob", "pw-bob").await;
    let laptop = gw.login("bob", "pw-bob").await;
    assert_ne!(phone, laptop, "every login issues a new token");
    let r = send(
        gw.addr,
        Request::post("/logout")
            .header("authorization", format!("Token {phone}"))
            .body(Bytes::new())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(get(gw.addr, "/x", Some(&phone)).await.status, 401);
    assert_eq!(get(gw.addr, "/x", Some(&laptop)).await.status, 200);
    let r = send(
        gw.addr,
        Request::post("/logout").body(Bytes::new()).unwrap(),
    )
    .await;
    assert_eq!(r.status, 401);
    gw.stop().await;
}
