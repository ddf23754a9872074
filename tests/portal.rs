//! The token page over HTTP, against a real gateway and upstream: sign-in
//! and its session cookie, every form, and every refusal leaving the store
//! as it was.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::{Request, StatusCode};

const PAGE: &str = "\n[portal]\npath = \"/_tokengate\"\n";
const FORM: &str = "application/x-www-form-urlencoded";

async fn gateway(extra: &str) -> (EchoUpstream, Gateway) {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, &format!("{PAGE}{extra}")).await;
    gw.add_user("ann", "ann-password", &[]);
    gw.add_user("root", "root-password", &["admin"]);
    (up, gw)
}

fn enc(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, percent_encoding::NON_ALPHANUMERIC).to_string()
}

/// POSTs `fields` to the page's `action` with `cookie`, as a browser on
/// the page would (Sec-Fetch-Site: same-origin).
async fn post(gw: &Gateway, action: &str, cookie: Option<&str>, fields: &[(&str, &str)]) -> Reply {
    let body: Vec<String> = fields
        .iter()
        .map(|(k, v)| format!("{k}={}", enc(v)))
        .collect();
    let mut req = Request::post(format!("/_tokengate{action}"))
        .header("content-type", FORM)
        .header("sec-fetch-site", "same-origin");
    if let Some(cookie) = cookie {
        req = req.header("cookie", format!("tg_session={cookie}"));
    }
    send(gw.addr, req.body(Bytes::from(body.join("&"))).unwrap()).await
}

async fn page(gw: &Gateway, cookie: &str) -> Reply {
    let req = Request::get("/_tokengate/")
        .header("cookie", format!("tg_session={cookie}"))
        .body(Bytes::new())
        .unwrap();
    send(gw.addr, req).await
}

/// The sign-in form, sent as the page sends it.
async fn sign_in_form(gw: &Gateway, user: &str, password: &str) -> Reply {
    post(
        gw,
        "/sign-in",
        None,
        &[("username", user), ("password", password)],
    )
    .await
}

/// Signs in; the session secret from the cookie.
async fn sign_in(gw: &Gateway, user: &str, password: &str) -> String {
    let r = sign_in_form(gw, user, password).await;
    assert_eq!(r.status, StatusCode::SEE_OTHER, "{}", r.text());
    let cookie = r.headers["set-cookie"].to_str().unwrap();
    let value = cookie.strip_prefix("tg_session=").unwrap();
    value.split(';').next().unwrap().to_owned()
}

/// The value of `<input ... name="NAME" value="...">` on a page.
fn field(html: &str, name: &str) -> String {
    let at = html.find(&format!("name=\"{name}\" value=\"")).expect(name);
    let rest = &html[at + name.len() + 15..];
    rest[..rest.find('"').unwrap()].to_owned()
}

fn csrf(html: &str) -> String {
    field(html, "csrf")
}

/// The secret a creation page shows once.
fn created_secret(html: &str) -> String {
    let at = html
        .find("<code id=\"new-token\">")
        .expect("a new token shown");
    let rest = &html[at + 21..];
    rest[..rest.find('<').unwrap()].to_owned()
}

fn assert_page_headers(r: &Reply) {
    let csp = r.headers["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'none'",
        "script-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(r.headers["x-frame-options"], "DENY");
    assert_eq!(r.headers["cache-control"], "no-store");
    assert_eq!(r.headers["referrer-policy"], "no-referrer");
}

async fn api(gw: &Gateway, token: &str) -> StatusCode {
    get(gw.addr, "/api", Some(token)).await.status
}

fn api_tokens(gw: &Gateway, user: &str) -> usize {
    gw.store
        .tokens(Some(user))
        .unwrap()
        .iter()
        .filter(|t| t.record.label.as_deref() != Some("portal session"))
        .count()
}

#[tokio::test]
async fn a_person_signs_in_creates_a_token_uses_it_and_revokes_it() {
    let (_up, gw) = gateway("").await;
    let first = get(gw.addr, "/_tokengate", None).await;
    assert_eq!(first.status, 200);
    assert!(first.text().contains("Sign in"));
    assert_page_headers(&first);

    let r = sign_in_form(&gw, "ann", "ann-password").await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(r.headers["location"], "/_tokengate/");
    let cookie = r.headers["set-cookie"].to_str().unwrap();
    for flag in [
        "HttpOnly",
        "SameSite=Strict",
        "Path=/_tokengate",
        "Max-Age=43200",
    ] {
        assert!(cookie.contains(flag), "{cookie}");
    }
    assert!(
        !cookie.contains("Secure"),
        "a plain-HTTP listener: {cookie}"
    );
    let session = sign_in(&gw, "ann", "ann-password").await;
    // The session is no API token.
    assert_ne!(api(&gw, &session).await, 200);

    let home = page(&gw, &session).await;
    assert_eq!(home.status, 200);
    assert!(home.text().contains("Signed in as <strong>ann</strong>"));
    assert!(
        home.text().contains("No tokens yet."),
        "sessions are not listed as tokens"
    );
    assert_page_headers(&home);

    let made = post(
        &gw,
        "/tokens",
        Some(&session),
        &[
            ("csrf", &csrf(&home.text())),
            ("label", "laptop <b>"),
            ("ttl", "7d"),
            ("scopes", "GET /api/**\n"),
        ],
    )
    .await;
    assert_eq!(made.status, 200, "{}", made.text());
    assert!(
        made.text().contains("laptop &lt;b&gt;"),
        "labels are escaped"
    );
    let secret = created_secret(&made.text());
    assert!(secret.starts_with("tg_"));
    let seen = get(gw.addr, "/api/orders", Some(&secret)).await.seen();
    assert_eq!(seen.header("x-auth-user"), Some("ann"));
    assert_eq!(
        get(gw.addr, "/other", Some(&secret)).await.status,
        StatusCode::FORBIDDEN,
        "the scope holds"
    );
    let listed = page(&gw, &session).await.text();
    assert!(
        listed.contains("GET /api/**") && !listed.contains(&secret),
        "the secret is shown once"
    );

    let revoked = post(
        &gw,
        "/tokens/revoke",
        Some(&session),
        &[("csrf", &csrf(&listed)), ("id", &field(&listed, "id"))],
    )
    .await;
    assert_eq!(revoked.status, StatusCode::SEE_OTHER);
    assert_eq!(api(&gw, &secret).await, StatusCode::UNAUTHORIZED);
    assert!(page(&gw, &session).await.text().contains("No tokens yet."));

    let out = post(
        &gw,
        "/sign-out",
        Some(&session),
        &[("csrf", &csrf(&listed))],
    )
    .await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert!(
        page(&gw, &session).await.text().contains("Sign in"),
        "the session ended"
    );
}

#[tokio::test]
async fn revoke_all_ends_every_api_token_and_keeps_the_session() {
    let (_up, gw) = gateway("").await;
    let a = gw.login("ann", "ann-password").await;
    let b = gw.login("ann", "ann-password").await;
    let session = sign_in(&gw, "ann", "ann-password").await;
    let html = page(&gw, &session).await.text();
    let r = post(
        &gw,
        "/tokens/revoke-all",
        Some(&session),
        &[("csrf", &csrf(&html))],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(api(&gw, &a).await, 401);
    assert_eq!(api(&gw, &b).await, 401);
    assert_eq!(page(&gw, &session).await.status, 200);
    assert!(page(&gw, &session).await.text().contains("Signed in as"));
}

/// The password form: the current password, the new one, and again.
async fn change_password(
    gw: &Gateway,
    session: &str,
    html: &str,
    [old, new, confirm]: [&str; 3],
) -> Reply {
    let fields = [
        ("csrf", csrf(html)),
        ("old", old.into()),
        ("new", new.into()),
        ("confirm", confirm.into()),
    ];
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    post(gw, "/password", Some(session), &fields).await
}

#[tokio::test]
async fn a_password_change_ends_every_other_session_and_token() {
    let (_up, gw) = gateway("").await;
    let token = gw.login("ann", "ann-password").await;
    let other = sign_in(&gw, "ann", "ann-password").await;
    let session = sign_in(&gw, "ann", "ann-password").await;
    let html = page(&gw, &session).await.text();
    let wrong = change_password(
        &gw,
        &session,
        &html,
        ["not-it", "n3w-password", "n3w-password"],
    )
    .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(api(&gw, &token).await, 200, "nothing changed");
    let differ = change_password(&gw, &session, &html, ["ann-password", "a", "b"]).await;
    assert_eq!(differ.status, StatusCode::BAD_REQUEST);
    let changed = change_password(
        &gw,
        &session,
        &html,
        ["ann-password", "n3w-password", "n3w-password"],
    )
    .await;
    assert_eq!(changed.status, StatusCode::SEE_OTHER, "{}", changed.text());
    let renewed = changed.headers["set-cookie"].to_str().unwrap();
    let renewed = renewed
        .strip_prefix("tg_session=")
        .unwrap()
        .split(';')
        .next()
        .unwrap();
    assert_eq!(api(&gw, &token).await, 401);
    assert!(
        page(&gw, &other).await.text().contains("Sign in"),
        "the other session ended"
    );
    assert!(
        page(&gw, &session).await.text().contains("Sign in"),
        "this one too"
    );
    assert!(
        page(&gw, renewed).await.text().contains("Signed in as"),
        "a new one for this browser"
    );
    gw.login("ann", "n3w-password").await;
}

#[tokio::test]
async fn wrong_passwords_are_401_then_429_and_service_users_cannot_sign_in() {
    // The service user's attempt counts against the address too: three.
    let (_up, gw) = gateway("\n[throttle]\nmax_failures = 3\nlimited_delay = \"0s\"\n").await;
    gw.store
        .add_user("robot", tokengate::store::NO_PASSWORD.into(), vec![])
        .unwrap();
    let r = sign_in_form(&gw, "robot", "!").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    for _ in 0..2 {
        let r = sign_in_form(&gw, "ann", "nope").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert!(r.text().contains("Wrong username or password."));
        assert_page_headers(&r);
    }
    let r = sign_in_form(&gw, "ann", "ann-password").await;
    assert_eq!(
        r.status,
        StatusCode::TOO_MANY_REQUESTS,
        "limited, even with the right password"
    );
    assert!(r.headers.contains_key("retry-after"));
    assert!(r.headers.get("set-cookie").is_none());
}

#[tokio::test]
async fn an_administrator_disables_enables_and_revokes_users_and_nobody_else_can() {
    let (_up, gw) = gateway("").await;
    let token = gw.login("ann", "ann-password").await;
    let ann = sign_in(&gw, "ann", "ann-password").await;
    let ann_page = page(&gw, &ann).await.text();
    assert!(!ann_page.contains("All users"));
    let refused = post(
        &gw,
        "/users/disable",
        Some(&ann),
        &[("csrf", &csrf(&ann_page)), ("user", "root")],
    )
    .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(
        !gw.store.user("root").unwrap().unwrap().disabled,
        "nothing changed"
    );

    let root = sign_in(&gw, "root", "root-password").await;
    let root_page = page(&gw, &root).await.text();
    assert!(root_page.contains("All users"));
    let r = post(
        &gw,
        "/users/disable",
        Some(&root),
        &[("csrf", &csrf(&root_page)), ("user", "ann")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(api(&gw, &token).await, 401);
    assert!(
        page(&gw, &ann).await.text().contains("Sign in"),
        "her session ended"
    );
    let r = sign_in_form(&gw, "ann", "ann-password").await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = post(
        &gw,
        "/users/enable",
        Some(&root),
        &[("csrf", &csrf(&root_page)), ("user", "ann")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    let token = gw.login("ann", "ann-password").await;
    let r = post(
        &gw,
        "/users/revoke",
        Some(&root),
        &[("csrf", &csrf(&root_page)), ("user", "ann")],
    )
    .await;
    assert_eq!(r.status, StatusCode::SEE_OTHER);
    assert_eq!(api(&gw, &token).await, 401);
    let r = post(
        &gw,
        "/users/revoke",
        Some(&root),
        &[("csrf", &csrf(&root_page)), ("user", "nobody")],
    )
    .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// An action, its fields, and the status it must get.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, StatusCode);

#[tokio::test]
async fn bad_forms_are_refused_and_change_nothing() {
    let (_up, gw) = gateway("").await;
    let token = gw.login("ann", "ann-password").await;
    let session = sign_in(&gw, "ann", "ann-password").await;
    let html = page(&gw, &session).await.text();
    let good = csrf(&html);
    let id = token_id(&gw);
    let cases: Vec<Case> = vec![
        ("/tokens/revoke", vec![("id", &id)], StatusCode::FORBIDDEN),
        (
            "/tokens/revoke",
            vec![("csrf", "0000"), ("id", &id)],
            StatusCode::FORBIDDEN,
        ),
        (
            "/tokens/revoke",
            vec![("csrf", &good), ("id", "00000000deadbeef")],
            StatusCode::NOT_FOUND,
        ),
        (
            "/tokens",
            vec![("csrf", &good), ("label", "")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/tokens",
            vec![("csrf", &good), ("label", "x"), ("ttl", "10y")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/tokens",
            vec![("csrf", &good), ("label", "x"), ("ttl", "soon")],
            StatusCode::BAD_REQUEST,
        ),
        (
            "/tokens",
            vec![("csrf", &good), ("label", "x"), ("scopes", "FETCH")],
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (action, fields, want) in cases {
        let r = post(&gw, action, Some(&session), &fields).await;
        assert_eq!(r.status, want, "{action} {fields:?}: {}", r.text());
        assert_page_headers(&r);
    }
    let long = "x".repeat(5000);
    let r = post(
        &gw,
        "/tokens",
        Some(&session),
        &[("csrf", &good), ("label", &long)],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let huge = "x".repeat(20_000);
    let r = post(
        &gw,
        "/tokens",
        Some(&session),
        &[("csrf", &good), ("label", &huge)],
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = post(
        &gw,
        "/tokens",
        Some(&session),
        &[("csrf", &good), ("label", "a"), ("label", "b")],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Another site's form, with the right CSRF value even.
    let cross = Request::post("/_tokengate/tokens/revoke-all")
        .header("content-type", FORM)
        .header("sec-fetch-site", "cross-site")
        .header("cookie", format!("tg_session={session}"))
        .body(Bytes::from(format!("csrf={good}")))
        .unwrap();
    assert_eq!(send(gw.addr, cross).await.status, StatusCode::FORBIDDEN);
    let json = Request::post("/_tokengate/tokens/revoke-all")
        .header("content-type", "application/json")
        .header("cookie", format!("tg_session={session}"))
        .body(Bytes::from("{}"))
        .unwrap();
    assert_eq!(
        send(gw.addr, json).await.status,
        StatusCode::UNSUPPORTED_MEDIA_TYPE
    );
    let wrong_method = get(gw.addr, "/_tokengate/tokens", None).await;
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers["allow"], "POST");
    // An API token is no session.
    let r = post(&gw, "/tokens/revoke-all", Some(&token), &[("csrf", &good)]).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    assert_eq!(api(&gw, &token).await, 200, "nothing was revoked");
    assert_eq!(api_tokens(&gw, "ann"), 1, "nothing was created");
}

fn token_id(gw: &Gateway) -> String {
    let tokens = gw.store.tokens(Some("ann")).unwrap();
    tokens
        .iter()
        .find(|t| t.record.label.as_deref() != Some("portal session"))
        .unwrap()
        .id
        .clone()
}

#[tokio::test]
async fn the_page_is_the_gateways_own_and_sessions_expire() {
    let (up, gw) = gateway("session_ttl = \"1s\"\n").await;
    let token = gw.login("ann", "ann-password").await;
    for path in ["/_tokengate/nothing", "/_tokengate/admin"] {
        let r = get(gw.addr, path, Some(&token)).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert!(r.text().contains("tokengate"), "the page's own 404");
        assert_page_headers(&r);
    }
    let css = get(gw.addr, "/_tokengate/style.css", None).await;
    assert_eq!(css.status, 200);
    assert!(
        css.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    assert_eq!(get(gw.addr, "/_tokengate/copy.js", None).await.status, 200);
    drop(up);

    let session = sign_in(&gw, "ann", "ann-password").await;
    assert!(page(&gw, &session).await.text().contains("Signed in as"));
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(
        page(&gw, &session).await.text().contains("Sign in"),
        "expired after session_ttl"
    );
}

#[tokio::test]
async fn the_cookie_is_secure_when_a_trusted_proxy_says_https() {
    let up = echo_upstream().await;
    let url = format!("http://{}", up.addr);
    let trusted = Gateway::start_edited(
        &url,
        PAGE,
        in_section("[server]", "trusted_proxies = [\"127.0.0.1/32\"]"),
    )
    .await;
    let untrusted = Gateway::start(up.addr, PAGE).await;
    for (gw, secure) in [(&trusted, true), (&untrusted, false)] {
        gw.add_user("ann", "ann-password", &[]);
        let req = Request::post("/_tokengate/sign-in")
            .header("content-type", FORM)
            .header("x-forwarded-proto", "https")
            .body(Bytes::from("username=ann&password=ann-password"))
            .unwrap();
        let r = send(gw.addr, req).await;
        let cookie = r.headers["set-cookie"].to_str().unwrap();
        assert_eq!(cookie.contains("; Secure"), secure, "{cookie}");
    }
}

#[tokio::test]
async fn the_cookie_is_secure_on_a_tls_listener() {
    use std::sync::Arc;
    let up = echo_upstream().await;
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n\
         [upstream]\nurl = \"http://{}\"\n[auth]\n{FAST_ARGON2}\n{PAGE}",
        up.addr
    );
    let mut der = Vec::new();
    let (gw, _reload) = Gateway::start_text(&text, |dir| {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.join("cert.pem"), key.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.signing_key.serialize_pem()).unwrap();
        der = key.cert.der().to_vec();
    })
    .await;
    gw.add_user("ann", "ann-password", &[]);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der.into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut h1, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    // A browser's own form over HTTPS: Origin is this page's https origin.
    let req = Request::post("/_tokengate/sign-in")
        .header("host", "localhost")
        .header("origin", "https://localhost")
        .header("content-type", FORM)
        .body(http_body_util::Full::new(Bytes::from(
            "username=ann&password=ann-password",
        )))
        .unwrap();
    let r = h1.send_request(req).await.unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = r.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
}
