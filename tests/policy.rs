//! Who may go where: public path patterns, `[[rules]]` roles (first match
//! wins), and the one canonical path every decision is made on — ambiguous
//! spellings refused before they reach the upstream, harmless ones decoded
//! so a rule cannot be dodged.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http::Request;

const FORBIDDEN: &str = "You do not have permission to perform this action.";

fn forbidden() -> serde_json::Value {
    serde_json::json!({ "detail": FORBIDDEN })
}

#[tokio::test]
async fn public_patterns_follow_the_contract() {
    let up = echo_upstream().await;
    let gw = Gateway::start(
        up.addr,
        "public = [\"/health\", \"/docs/**\", \"/files/*.json\", \"/a/**/z\"]",
    )
    .await;
    let cases = [
        ("/health", true),
        ("/health?verbose=1", true),
        ("/health/", false),
        ("/healthz", false),
        ("/Health", false),
        ("/health/x", false),
        ("/docs", true),
        ("/docs/", true),
        ("/docs/a", true),
        ("/docs/a/b", true),
        ("/docs/a/b/", true),
        ("/docs?x=1", true),
        ("/docsx", false),
        ("/docsx/a", false),
        ("/doc", false),
        ("/Docs/a", false),
        ("/v1/docs/a", false),
        ("/files/a.json", true),
        ("/files/.json", true),
        ("/files/a.txt", false),
        ("/files/a/b.json", false),
        ("/files", false),
        ("/a/z", true),
        ("/a/b/c/z", true),
        ("/a/b/c", false),
        ("/", false),
        // The query string is never looked at.
        ("/private?path=/docs/x", false),
        ("/private?/health", false),
    ];
    for (path, public) in cases {
        let r = get(gw.addr, path, None).await;
        if public {
            assert_eq!(r.status, 200, "{path} should be public: {}", r.text());
            let seen = r.seen();
            assert_eq!(seen.uri, path);
            assert!(!seen.has_header_like("x-auth-user"), "{path}");
            assert!(!seen.has_header_like("x-auth-roles"), "{path}");
        } else {
            assert_eq!(r.status, 401, "{path} should need a token: {}", r.text());
            assert_eq!(r.headers["www-authenticate"], "Token realm=\"tokengate\"");
            assert_eq!(
                r.json(),
                serde_json::json!({"detail": "Authentication credentials were not provided."}),
                "{path}"
            );
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn public_paths_pass_any_method_without_a_token_or_identity() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "public = [\"/hooks/**\"]").await;
    gw.add_user("pat", "pw", &["admin"]);
    for method in ["GET", "POST", "PUT", "DELETE"] {
        let r = send(
            gw.addr,
            Request::builder()
                .method(method)
                .uri("/hooks/github")
                .header("x-auth-user", "admin")
                .body(Bytes::from_static(b"{}"))
                .unwrap(),
        )
        .await;
        let seen = r.seen();
        assert_eq!(seen.method, method);
        assert!(!seen.has_header_like("x-auth-user"), "{:?}", seen.headers);
        assert!(!seen.has_header_like("x-auth-roles"), "{:?}", seen.headers);
    }
    gw.stop().await;
}

const RULES: &str = "\n\
[[rules]]\npath = \"/admin/reports/**\"\nroles = [\"reporter\"]\n\
[[rules]]\npath = \"/admin/**\"\nroles = [\"admin\"]\n\
[[rules]]\npath = \"/api/*/edit\"\nroles = [\"editor\", \"admin\"]\n\
[[rules]]\npath = \"/exact\"\nroles = [\"admin\"]\n";

#[tokio::test]
async fn rules_first_match_wins_and_others_get_the_403_body() {
    let (up, recorded) = recording_echo_upstream().await;
    let gw = Gateway::start(up.addr, RULES).await;
    gw.add_user("rita", "pw", &["reporter"]);
    gw.add_user("adam", "pw", &["admin"]);
    gw.add_user("eddie", "pw", &["editor"]);
    gw.add_user("nora", "pw", &[]);
    let rita = gw.login("rita", "pw").await;
    let adam = gw.login("adam", "pw").await;
    let eddie = gw.login("eddie", "pw").await;
    let nora = gw.login("nora", "pw").await;

    let cases: &[(&str, &str, u16)] = &[
        // The first matching rule decides, even when a later one would allow.
        ("/admin/reports/q1", &rita, 200),
        ("/admin/reports", &rita, 200),
        ("/admin/reports/q1", &adam, 403),
        ("/admin/users", &adam, 200),
        ("/admin", &adam, 200),
        ("/admin/", &adam, 200),
        ("/admin/users", &rita, 403),
        ("/admin", &rita, 403),
        ("/admin/users", &nora, 403),
        // Any listed role is enough.
        ("/api/posts/edit", &eddie, 200),
        ("/api/posts/edit", &adam, 200),
        ("/api/posts/edit", &nora, 403),
        // `*` stays in one segment; no rule matches, so any user may pass.
        ("/api/posts/1/edit", &nora, 200),
        ("/api/edit", &nora, 200),
        // Case-sensitive, and a literal pattern is that path only.
        ("/exact", &nora, 403),
        ("/exact/", &nora, 200),
        ("/Exact", &nora, 200),
        ("/administrator", &nora, 200),
        // The query string never decides.
        ("/admin?x=/public", &nora, 403),
        ("/public?next=/admin/users", &nora, 200),
    ];
    for (path, token, status) in cases {
        recorded.lock().unwrap().clear();
        let r = get(gw.addr, path, Some(token)).await;
        assert_eq!(r.status, *status, "{path}: {}", r.text());
        if *status == 403 {
            assert_eq!(r.json(), forbidden(), "{path}");
            assert!(
                r.headers["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("application/json")
            );
            assert!(
                r.headers.get("www-authenticate").is_none(),
                "a 403 is not a 401"
            );
            assert!(
                recorded.lock().unwrap().is_empty(),
                "{path}: a forbidden request reached the upstream"
            );
        } else {
            assert_eq!(r.seen().uri, *path);
        }
    }

    // A rule never turns a missing or bad token into a 403.
    let r = get(gw.addr, "/admin/users", None).await;
    assert_eq!(r.status, 401);
    let r = get(gw.addr, "/admin/users", Some("tg_nonsense")).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json(), serde_json::json!({"detail": "Invalid token."}));
    gw.stop().await;
}

#[tokio::test]
async fn role_names_are_matched_exactly() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, RULES).await;
    gw.add_user("mimi", "pw", &["Admin", "admins", "ad"]);
    let token = gw.login("mimi", "pw").await;
    let r = get(gw.addr, "/admin/users", Some(&token)).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json(), forbidden());
    gw.stop().await;
}

/// A raw request with a token, closed after the answer.
fn raw_get(target: &str, token: &str) -> Vec<u8> {
    format!(
        "GET {target} HTTP/1.1\r\nHost: gw\r\nAuthorization: Token {token}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes()
}

async fn gateway_with_recorder(
    extra: &str,
) -> (EchoUpstream, Arc<Mutex<Vec<String>>>, Gateway, String) {
    let (up, recorded) = recording_echo_upstream().await;
    let gw = Gateway::start(up.addr, extra).await;
    gw.add_user("vic", "pw", &["staff"]);
    let token = gw.login("vic", "pw").await;
    (up, recorded, gw, token)
}

#[tokio::test]
async fn paths_an_upstream_could_read_differently_get_400_and_go_nowhere() {
    let (_up, recorded, gw, token) = gateway_with_recorder("public = [\"/pub/**\"]").await;
    let targets = [
        "/a/../b",
        "/a/..",
        "/..",
        "/../admin",
        "/a/./b",
        "/.",
        "/a/.",
        "/a/%2e%2e/b",
        "/a/%2E%2E/b",
        "/a/.%2e/b",
        "/a/%2e./b",
        "/a/%2e/b",
        "/pub/%2e%2e/admin",
        "/pub/../admin",
        "/a%2Fb",
        "/a%2fb",
        "/pub%2f..%2fadmin",
        "/a%5Cb",
        "/a%5cb",
        "/a\\b",
        "/pub\\..\\admin",
        "//a",
        "/a//b",
        "/pub//x",
        "/a/",
        "/a/..;/b",
        "/pub/..;/admin",
        "/a;jsessionid=123",
        "/a;x/b",
        "/a/b;",
        "/a%00b",
        "/a%00",
        "/a%0d%0ab",
        "/a%zz",
        "/a%2",
    ];
    for target in targets {
        // `/a/` is the one fine path in the list: a trailing slash is a
        // distinct resource and goes through.
        let fine = target == "/a/";
        recorded.lock().unwrap().clear();
        let reply = raw_once(gw.addr, &raw_get(target, &token), Duration::from_secs(5)).await;
        if fine {
            assert_eq!(raw_status(&reply), 200, "{target}: {reply}");
            continue;
        }
        assert_eq!(raw_status(&reply), 400, "{target}: {reply}");
        assert!(
            recorded.lock().unwrap().is_empty(),
            "{target} reached the upstream as {:?}",
            recorded.lock().unwrap()
        );
        // Without a token it is the same 400, not a 401 (or a public pass).
        let bare = format!("GET {target} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n");
        let reply = raw_once(gw.addr, bare.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(raw_status(&reply), 400, "{target} without a token: {reply}");
        assert!(recorded.lock().unwrap().is_empty(), "{target}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn encoded_letters_are_decoded_so_rules_still_apply() {
    let (_up, recorded, gw, token) = gateway_with_recorder(RULES).await;
    gw.add_user("adam", "pw", &["admin"]);
    let admin = gw.login("adam", "pw").await;
    for target in [
        "/%61dmin/users",
        "/%61%64%6d%69%6e/users",
        "/adm%69n",
        "/%41dmin/x",
    ] {
        recorded.lock().unwrap().clear();
        let reply = raw_once(gw.addr, &raw_get(target, &token), Duration::from_secs(5)).await;
        let expected = if target.starts_with("/%41") { 200 } else { 403 };
        assert_eq!(raw_status(&reply), expected, "{target}: {reply}");
        if expected == 403 {
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(raw_body(&reply)).unwrap(),
                forbidden()
            );
            assert!(recorded.lock().unwrap().is_empty(), "{target}");
        }
    }
    // With the role, the upstream sees the canonical spelling.
    for (target, canonical) in [
        ("/%61dmin/users?x=%61", "/admin/users?x=%61"),
        ("/%61%64%6D%69%6E", "/admin"),
        ("/admin/caf%c3%a9", "/admin/caf%C3%A9"),
    ] {
        let reply = raw_once(gw.addr, &raw_get(target, &admin), Duration::from_secs(5)).await;
        assert_eq!(raw_status(&reply), 200, "{target}: {reply}");
        let seen: Seen = serde_json::from_str(raw_body(&reply)).unwrap();
        assert_eq!(seen.uri, canonical, "{target}");
    }
    // A public pattern is matched on the decoded form too.
    let (_up2, _rec2, gw2, _t) = gateway_with_recorder("public = [\"/docs/**\"]").await;
    let reply = raw_once(
        gw2.addr,
        b"GET /%64ocs/x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    let seen: Seen = serde_json::from_str(raw_body(&reply)).unwrap();
    assert_eq!(seen.uri, "/docs/x");
    gw.stop().await;
    gw2.stop().await;
}

#[tokio::test]
async fn absolute_form_targets_naming_another_host_get_400() {
    let (_up, recorded, gw, token) = gateway_with_recorder("").await;
    for request in [
        format!(
            "GET http://evil.example/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Token {token}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET http://gw@evil.example/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Token {token}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET http://gw:8080/x HTTP/1.1\r\nHost: gw\r\nAuthorization: Token {token}\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "POST http://169.254.169.254/latest HTTP/1.1\r\nHost: gw\r\nAuthorization: Token {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let reply = raw_once(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(raw_status(&reply), 400, "{request}\n→ {reply}");
        assert!(
            recorded.lock().unwrap().is_empty(),
            "{request}: {:?}",
            recorded.lock().unwrap()
        );
    }
    // Naming the gateway itself is fine, and forwarded in origin form.
    let request = format!(
        "GET http://gw/x?y=1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Token {token}\r\nConnection: close\r\n\r\n"
    );
    let reply = raw_once(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    let seen: Seen = serde_json::from_str(raw_body(&reply)).unwrap();
    assert_eq!(seen.uri, "/x?y=1");
    gw.stop().await;
}

#[tokio::test]
async fn absolute_form_to_another_host_without_a_host_header_gets_400() {
    let (_up, recorded, gw, token) = gateway_with_recorder("").await;
    let request =
        format!("GET http://evil.example/x HTTP/1.0\r\nAuthorization: Token {token}\r\n\r\n");
    let reply = raw_once(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(
        raw_status(&reply),
        400,
        "forwarded to the upstream as {:?}: {reply}",
        recorded.lock().unwrap()
    );
    assert!(recorded.lock().unwrap().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn connect_and_trace_get_405() {
    let (_up, recorded, gw, token) = gateway_with_recorder("public = [\"/**\"]").await;
    for request in [
        format!(
            "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nAuthorization: Token {token}\r\n\r\n"
        ),
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n".to_owned(),
        format!(
            "TRACE / HTTP/1.1\r\nHost: gw\r\nAuthorization: Token {token}\r\nConnection: close\r\n\r\n"
        ),
        "TRACE /x HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n".to_owned(),
    ] {
        let reply = raw_once(gw.addr, request.as_bytes(), Duration::from_secs(2)).await;
        assert_eq!(raw_status(&reply), 405, "{request}\n→ {reply}");
        let allow = raw_header(&reply, "allow").unwrap_or_else(|| panic!("no Allow: {reply}"));
        assert!(
            !allow.contains("TRACE") && !allow.contains("CONNECT") && allow.contains("GET"),
            "Allow: {allow}"
        );
        assert!(recorded.lock().unwrap().is_empty(), "{request}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn a_missing_or_repeated_host_gets_400() {
    let (_up, recorded, gw, token) = gateway_with_recorder("public = [\"/**\"]").await;
    for request in [
        format!("GET /x HTTP/1.1\r\nAuthorization: Token {token}\r\nConnection: close\r\n\r\n"),
        "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n".to_owned(),
        "GET /x HTTP/1.1\r\nHost: gw\r\nHost: gw\r\nConnection: close\r\n\r\n".to_owned(),
        "GET /x HTTP/1.1\r\nHost: gw\r\nHost: evil.example\r\nConnection: close\r\n\r\n".to_owned(),
        format!(
            "GET /x HTTP/1.1\r\nHost: gw\r\nAuthorization: Token {token}\r\nHOST: other\r\nConnection: close\r\n\r\n"
        ),
    ] {
        let reply = raw_once(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(raw_status(&reply), 400, "{request}\n→ {reply}");
        assert!(recorded.lock().unwrap().is_empty(), "{request}");
    }
    // HTTP/1.0 needs no Host.
    let reply = raw_once(
        gw.addr,
        b"GET /old HTTP/1.0\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    assert_eq!(*recorded.lock().unwrap(), ["GET /old"]);
    gw.stop().await;
}

/// An HTTP/2 prior-knowledge connection to the gateway.
async fn h2(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    sender
}

#[tokio::test]
async fn http2_paths_are_held_to_the_same_canonical_form() {
    use http_body_util::{BodyExt, Full};
    let (_up, recorded, gw, token) = gateway_with_recorder(RULES).await;
    let mut sender = h2(gw.addr).await;
    for (path, status) in [
        ("/a/%2e%2e/admin", 400),
        ("/a/../admin", 400),
        ("/a//b", 400),
        ("/a%2fb", 400),
        ("/a;x", 400),
        ("/%61dmin/users", 403),
        ("/other", 200),
    ] {
        recorded.lock().unwrap().clear();
        let r = sender
            .send_request(
                Request::get(format!("http://gw{path}"))
                    .header("authorization", format!("Token {token}"))
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{path}");
        let body = r.into_body().collect().await.unwrap().to_bytes();
        if status == 403 {
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&body).unwrap(),
                forbidden()
            );
        }
        if status != 200 {
            assert!(recorded.lock().unwrap().is_empty(), "{path}");
        }
    }
    gw.stop().await;
}

#[tokio::test]
async fn http2_host_header_contradicting_authority_gets_400() {
    use http_body_util::Full;
    let (_up, recorded, gw, token) = gateway_with_recorder("").await;
    let mut sender = h2(gw.addr).await;
    let r = sender
        .send_request(
            Request::get("http://gw.local/x")
                .header("host", "evil.example")
                .header("authorization", format!("Token {token}"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    // The HTTP/1.1 equivalent, `GET http://gw.local/x` with `Host:
    // evil.example`, is refused with 400; RFC 9113 §8.3.1 calls this malformed.
    assert_eq!(
        r.status(),
        400,
        "forwarded as {:?}",
        recorded.lock().unwrap()
    );
    gw.stop().await;
}

async fn call(addr: std::net::SocketAddr, method: &str, path: &str, token: Option<&str>) -> Reply {
    let mut b = Request::builder().method(method).uri(path);
    if let Some(t) = token {
        b = b.header("authorization", format!("Token {t}"));
    }
    send(addr, b.body(Bytes::new()).unwrap()).await
}

#[tokio::test]
async fn a_rule_with_methods_guards_only_those_methods() {
    let up = echo_upstream().await;
    let gw = Gateway::start(
        up.addr,
        "[[rules]]\npath = \"/orders/**\"\nmethods = [\"post\", \"DELETE\"]\nroles = [\"clerk\"]\n",
    )
    .await;
    gw.add_user("vic", "pw", &["viewer"]);
    gw.add_user("cat", "pw", &["clerk"]);
    let viewer = gw.login("vic", "pw").await;
    let clerk = gw.login("cat", "pw").await;
    for (method, token, want) in [
        ("GET", &viewer, 200),
        ("PUT", &viewer, 200),
        ("POST", &viewer, 403),
        ("DELETE", &viewer, 403),
        ("POST", &clerk, 200),
        ("DELETE", &clerk, 200),
    ] {
        let r = call(gw.addr, method, "/orders/7", Some(token)).await;
        assert_eq!(r.status, want, "{method} as {token}");
        if want == 403 {
            assert_eq!(r.json(), forbidden());
        }
    }
    gw.stop().await;
}

#[test]
fn rule_methods_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.toml");
    for (methods, says) in [
        ("[]", "at least one method"),
        ("[\"GE T\"]", "not a method"),
        ("[\"\"]", "not a method"),
    ] {
        let text = config_text(
            "http://127.0.0.1:9",
            &format!("[[rules]]\npath = \"/a\"\nmethods = {methods}\nroles = [\"r\"]\n"),
        );
        std::fs::write(&path, &text).unwrap();
        let e = tokengate::config::Config::load(&path, |_| None)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("rules[0].methods") && e.contains(says),
            "{methods}: {e}"
        );
    }
}

#[tokio::test]
async fn a_valid_token_on_a_public_path_names_its_caller_and_an_invalid_one_is_ignored() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "public = [\"/open/**\"]").await;
    gw.add_user("ann", "pw", &["ops"]);
    let token = gw.login("ann", "pw").await;
    let named = call(gw.addr, "GET", "/open/x", Some(&token)).await.seen();
    assert_eq!(named.header("x-auth-user"), Some("ann"));
    assert_eq!(named.header("x-auth-roles"), Some("ops"));
    let bogus = mangled(&token);
    for token in [Some(bogus.as_str()), Some("garbage"), None] {
        let r = call(gw.addr, "GET", "/open/x", token).await;
        let seen = r.seen();
        assert!(
            seen.header("x-auth-user").is_none(),
            "{token:?}: {:?}",
            seen.headers
        );
        assert!(
            seen.header("authorization").is_none(),
            "the credential is never forwarded"
        );
    }
    gw.stop().await;
}
