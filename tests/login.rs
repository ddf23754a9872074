//! `POST /login` held to the contract: both body encodings, the one 401 for
//! every wrong credential, the 400/413/415/405 family, token lifetimes, and
//! tokens that end when their user is disabled.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use http::Request;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;

/// No throttling, so tests may fail logins freely.
const NO_THROTTLE: &str = "\n[throttle]\nenabled = false\n";

async fn post_login(addr: SocketAddr, content_type: Option<&str>, body: impl Into<Bytes>) -> Reply {
    let mut b = Request::post("/login");
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    send(addr, b.body(body.into()).unwrap()).await
}

async fn json_login(addr: SocketAddr, body: serde_json::Value) -> Reply {
    post_login(addr, Some("application/json"), body.to_string()).await
}

fn token_count(gw: &Gateway) -> usize {
    gw.store.tokens(None).unwrap().len()
}

#[tokio::test]
async fn json_login_answers_token_and_expiry_with_no_store() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "token_ttl = \"1h\"").await;
    gw.add_user("alice", "correct horse", &[]);
    let before = SystemTime::now();
    let r = json_login(
        gw.addr,
        serde_json::json!({"username": "alice", "password": "correct horse"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body = r.json();
    let object = body.as_object().expect("an object");
    let mut keys: Vec<&str> = object.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["expires_at", "token"], "{body}");
    let token = body["token"].as_str().unwrap();
    assert!(token.starts_with("tg_"), "{token}");
    let expires = humantime::parse_rfc3339_weak(body["expires_at"].as_str().unwrap())
        .unwrap_or_else(|e| panic!("expires_at is not RFC 3339 ({e}): {body}"));
    let ttl = expires
        .duration_since(before)
        .expect("expires_at is in the future");
    assert!(
        ttl > Duration::from_secs(3590) && ttl < Duration::from_secs(3610),
        "token_ttl = 1h but the token lives {ttl:?}"
    );
    // The token opens the gateway.
    let seen = get(gw.addr, "/me", Some(token)).await.seen();
    assert_eq!(seen.header("x-auth-user"), Some("alice"));
    gw.stop().await;
}

#[tokio::test]
async fn form_login_decodes_plus_and_percent_escapes() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "").await;
    gw.add_user("alice", "p@ss wörd&=", &["ops"]);
    let r = post_login(
        gw.addr,
        Some("application/x-www-form-urlencoded"),
        "username=alice&password=p%40ss+w%C3%B6rd%26%3D",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.headers["cache-control"], "no-store");
    let body = r.json();
    assert!(body["expires_at"].is_string(), "{body}");
    let token = body["token"].as_str().unwrap();
    let seen = get(gw.addr, "/x", Some(token)).await.seen();
    assert_eq!(seen.header("x-auth-user"), Some("alice"));
    assert_eq!(seen.header("x-auth-roles"), Some("ops"));

    // A charset parameter and another field order are fine too.
    let r = post_login(
        gw.addr,
        Some("application/x-www-form-urlencoded; charset=UTF-8"),
        "other=1&password=p%40ss%20w%C3%B6rd%26%3D&username=alice",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    gw.stop().await;
}

#[tokio::test]
async fn every_login_issues_a_new_working_token() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "").await;
    gw.add_user("bob", "pw", &[]);
    let tokens: Vec<String> = [
        gw.login("bob", "pw").await,
        gw.login("bob", "pw").await,
        gw.login("bob", "pw").await,
    ]
    .into();
    assert_ne!(tokens[0], tokens[1]);
    assert_ne!(tokens[1], tokens[2]);
    assert_ne!(tokens[0], tokens[2]);
    assert_eq!(token_count(&gw), 3);
    for t in &tokens {
        let r = get(gw.addr, "/x", Some(t)).await;
        assert_eq!(r.seen().header("x-auth-user"), Some("bob"));
    }
    gw.stop().await;
}

#[tokio::test]
async fn wrong_password_unknown_user_and_disabled_user_get_the_same_401() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, NO_THROTTLE).await;
    gw.add_user("carol", "right", &[]);
    gw.add_user("dave", "right", &[]);
    gw.store.set_disabled("dave", true).unwrap();
    let wrong = json_login(
        gw.addr,
        serde_json::json!({"username": "carol", "password": "wrong"}),
    )
    .await;
    let unknown = json_login(
        gw.addr,
        serde_json::json!({"username": "nobody", "password": "right"}),
    )
    .await;
    let disabled = json_login(
        gw.addr,
        serde_json::json!({"username": "dave", "password": "right"}),
    )
    .await;
    let form_wrong = post_login(
        gw.addr,
        Some("application/x-www-form-urlencoded"),
        "username=carol&password=wrong",
    )
    .await;
    for (what, r) in [
        ("unknown user", &unknown),
        ("disabled user", &disabled),
        ("wrong password (form)", &form_wrong),
    ] {
        assert_eq!(r.status, 401, "{what}: {}", r.text());
        assert_eq!(r.status, wrong.status, "{what}");
        assert_eq!(r.body, wrong.body, "{what}: the body tells them apart");
        for h in ["content-type", "www-authenticate", "cache-control"] {
            assert_eq!(r.headers.get(h), wrong.headers.get(h), "{what}: header {h}");
        }
    }
    assert_eq!(wrong.status, 401);
    assert!(wrong.json().is_object(), "{}", wrong.text());
    assert_eq!(token_count(&gw), 0, "a failed login issued a token");
    // The right password still works for the enabled user.
    assert!(gw.login("carol", "right").await.starts_with("tg_"));
    gw.stop().await;
}

#[tokio::test]
async fn failed_logins_cost_the_same_argon2_work_whatever_is_wrong() {
    // Real (if small) argon2 work, so skipping it would show: about 10ms.
    let up = echo_upstream().await;
    let gw = Gateway::start_edited(&format!("http://{}", up.addr), NO_THROTTLE, |t| {
        t.replacen(
            FAST_ARGON2,
            "argon2_memory = \"8MiB\"\nargon2_iterations = 2\n",
            1,
        )
    })
    .await;
    gw.add_user("carol", "right", &[]);
    gw.add_user("dave", "right", &[]);
    gw.store.set_disabled("dave", true).unwrap();
    gw.store
        .add_user("robot", tokengate::store::NO_PASSWORD.into(), Vec::new())
        .unwrap();
    let attempts = [
        ("wrong password", "carol", "wrong"),
        ("unknown user", "nobody", "right"),
        ("disabled user", "dave", "right"),
        ("service user", "robot", "!"),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); attempts.len()];
    for _ in 0..7 {
        for (i, (_, user, pw)) in attempts.iter().enumerate() {
            let started = std::time::Instant::now();
            let r = json_login(
                gw.addr,
                serde_json::json!({"username": user, "password": pw}),
            )
            .await;
            times[i].push(started.elapsed());
            assert_eq!(r.status, 401);
        }
    }
    let median = |v: &mut Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let medians: Vec<Duration> = times.iter_mut().map(median).collect();
    let fastest = *medians.iter().min().unwrap();
    let slowest = *medians.iter().max().unwrap();
    assert!(
        slowest > Duration::from_millis(2),
        "argon2 work too small to compare: {medians:?}"
    );
    // Skipping argon2 for one kind would make it many times faster; noise
    // on a busy machine stays well inside a factor of four.
    assert!(
        fastest * 4 > slowest,
        "one kind of failure is answered much faster ({:?}): {medians:?}",
        attempts.map(|(what, _, _)| what)
    );
    gw.stop().await;
}

#[tokio::test]
async fn missing_blank_and_malformed_bodies_get_400() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, NO_THROTTLE).await;
    gw.add_user("alice", "pw", &[]);
    const JSON: &str = "application/json";
    const FORM: &str = "application/x-www-form-urlencoded";
    let cases: Vec<(&str, &str, Vec<u8>)> = vec![
        (
            "json: no password",
            JSON,
            br#"{"username":"alice"}"#.to_vec(),
        ),
        ("json: no username", JSON, br#"{"password":"pw"}"#.to_vec()),
        ("json: empty object", JSON, b"{}".to_vec()),
        (
            "json: blank username",
            JSON,
            br#"{"username":"","password":"pw"}"#.to_vec(),
        ),
        (
            "json: blank password",
            JSON,
            br#"{"username":"alice","password":""}"#.to_vec(),
        ),
        (
            "json: null password",
            JSON,
            br#"{"username":"alice","password":null}"#.to_vec(),
        ),
        (
            "json: number password",
            JSON,
            br#"{"username":"alice","password":1}"#.to_vec(),
        ),
        (
            "json: array username",
            JSON,
            br#"{"username":["alice"],"password":"pw"}"#.to_vec(),
        ),
        ("json: truncated", JSON, br#"{"username":"alice","#.to_vec()),
        ("json: not an object", JSON, br#"["alice","pw"]"#.to_vec()),
        ("json: a string", JSON, br#""alice""#.to_vec()),
        ("json: empty body", JSON, Vec::new()),
        (
            "json: trailing garbage",
            JSON,
            br#"{"username":"alice","password":"pw"} x"#.to_vec(),
        ),
        (
            "json: not UTF-8",
            JSON,
            b"{\"username\":\"alice\",\"password\":\"\xff\"}".to_vec(),
        ),
        ("form: no password", FORM, b"username=alice".to_vec()),
        ("form: no username", FORM, b"password=pw".to_vec()),
        ("form: empty body", FORM, Vec::new()),
        ("form: blank fields", FORM, b"username=&password=".to_vec()),
        (
            "form: blank password",
            FORM,
            b"username=alice&password=".to_vec(),
        ),
        (
            "form: percent-encoded non-UTF-8",
            FORM,
            b"username=alice&password=%ff%fe".to_vec(),
        ),
        (
            "form: raw non-UTF-8 bytes",
            FORM,
            b"username=alice&password=\xff\xfe".to_vec(),
        ),
        (
            "form: duplicate username",
            FORM,
            b"username=mallory&username=alice&password=pw".to_vec(),
        ),
        (
            "form: duplicate password",
            FORM,
            b"username=alice&password=x&password=pw".to_vec(),
        ),
    ];
    for (what, ct, body) in cases {
        let r = post_login(gw.addr, Some(ct), body).await;
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert!(r.json().is_object(), "{what}: a JSON body");
        assert!(
            !r.text().contains("tg_"),
            "{what}: a 400 carried a token: {}",
            r.text()
        );
    }
    assert_eq!(token_count(&gw), 0, "a refused body issued a token");
    // The field errors name the field, as DRF does.
    let r = json_login(gw.addr, serde_json::json!({"username": "alice"})).await;
    assert!(r.json().get("password").is_some(), "{}", r.text());
    gw.stop().await;
}

#[tokio::test]
async fn duplicate_json_fields_get_400() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, NO_THROTTLE).await;
    gw.add_user("alice", "pw", &[]);
    for body in [
        r#"{"username":"mallory","username":"alice","password":"pw"}"#,
        r#"{"username":"alice","password":"x","password":"pw"}"#,
    ] {
        let r = post_login(gw.addr, Some("application/json"), body).await;
        assert_eq!(
            r.status,
            400,
            "a duplicated field must be refused as with forms: {body} → {}",
            r.text()
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn bodies_over_max_login_body_get_413_with_or_without_content_length() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, &format!("max_login_body = \"1KiB\"{NO_THROTTLE}")).await;
    gw.add_user("alice", "pw", &[]);
    // A valid login padded with whitespace to a given size.
    let padded = |size: usize| {
        let core = r#"{"username":"alice","password":"pw"}"#;
        let mut s = String::from(core);
        s.insert_str(1, &" ".repeat(size - core.len()));
        assert_eq!(s.len(), size);
        s
    };

    // With Content-Length: exactly the limit passes, one byte more does not.
    let r = post_login(gw.addr, Some("application/json"), padded(1024)).await;
    assert_eq!(r.status, 200, "a body of exactly the limit: {}", r.text());
    let r = post_login(gw.addr, Some("application/json"), padded(1025)).await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.json().is_object());
    let r = post_login(gw.addr, Some("application/json"), padded(64 * 1024)).await;
    assert_eq!(r.status, 413, "{}", r.text());

    // Chunked (no Content-Length), through a client library.
    let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = padded(3000)
        .into_bytes()
        .chunks(500)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let body = StreamBody::new(futures_util::stream::iter(chunks));
    let req = Request::post(gw.url("/login"))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 413);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        serde_json::from_slice::<serde_json::Value>(&bytes).is_ok(),
        "{bytes:?}"
    );

    // Chunked over raw TCP, so nothing can add a Content-Length.
    let chunk = "a".repeat(600);
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    let reply = raw_once(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&reply), 413, "{reply}");

    // Chunked but under the limit is read normally.
    let ok = r#"{"username":"alice","password":"pw"}"#;
    let request = format!(
        "POST /login HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{ok}\r\n0\r\n\r\n",
        ok.len()
    );
    let reply = raw_once(gw.addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(raw_status(&reply), 200, "{reply}");
    gw.stop().await;
}

#[tokio::test]
async fn other_content_types_get_415() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, NO_THROTTLE).await;
    gw.add_user("alice", "pw", &[]);
    let json = r#"{"username":"alice","password":"pw"}"#;
    for ct in [
        None,
        Some("text/plain"),
        Some("multipart/form-data; boundary=x"),
        Some("application/xml"),
        Some("application/jsonx"),
        Some("application/x-www-form-urlencodedx"),
        Some("text/json"),
    ] {
        let r = post_login(gw.addr, ct, json).await;
        assert_eq!(r.status, 415, "{ct:?}: {}", r.text());
        assert!(r.json().is_object(), "{ct:?}");
    }
    // Media types are case-insensitive and take parameters.
    for ct in ["Application/JSON", "application/json; charset=utf-8"] {
        let r = post_login(gw.addr, Some(ct), json).await;
        assert_eq!(r.status, 200, "{ct}: {}", r.text());
    }
    gw.stop().await;
}

#[tokio::test]
async fn other_methods_on_login_get_405_with_allow_post() {
    let (up, seen) = recording_echo_upstream().await;
    let gw = Gateway::start(up.addr, "").await;
    for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        let r = send(
            gw.addr,
            Request::builder()
                .method(method)
                .uri("/login")
                .body(Bytes::new())
                .unwrap(),
        )
        .await;
        assert_eq!(r.status, 405, "{method}: {}", r.text());
        assert_eq!(r.headers["allow"], "POST", "{method}");
        assert!(r.json().is_object(), "{method}");
    }
    assert!(
        seen.lock().unwrap().is_empty(),
        "the login path reached the upstream"
    );
    gw.stop().await;
}

#[tokio::test]
async fn zero_token_ttl_means_null_expiry_and_a_lasting_token() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "token_ttl = \"0s\"").await;
    gw.add_user("erin", "pw", &[]);
    let r = json_login(
        gw.addr,
        serde_json::json!({"username": "erin", "password": "pw"}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert!(body["expires_at"].is_null(), "{body}");
    let token = body["token"].as_str().unwrap();
    assert_eq!(get(gw.addr, "/x", Some(token)).await.status, 200);
    let listed = gw.store.tokens(Some("erin")).unwrap();
    assert_eq!(listed.len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_disabled_users_tokens_stop_working_at_once() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, NO_THROTTLE).await;
    gw.add_user("frank", "pw", &[]);
    gw.add_user("grace", "pw", &[]);
    let phone = gw.login("frank", "pw").await;
    let laptop = gw.login("frank", "pw").await;
    let other = gw.login("grace", "pw").await;
    assert_eq!(get(gw.addr, "/x", Some(&phone)).await.status, 200);

    gw.store.set_disabled("frank", true).unwrap();
    for t in [&phone, &laptop] {
        let r = get(gw.addr, "/x", Some(t)).await;
        assert_eq!(r.status, 401, "{}", r.text());
        assert_eq!(r.json(), serde_json::json!({"detail": "Invalid token."}));
        assert_eq!(r.headers["www-authenticate"], "Token realm=\"tokengate\"");
    }
    assert_eq!(
        get(gw.addr, "/x", Some(&other)).await.status,
        200,
        "another user's token ended too"
    );

    // Enabling again does not bring the old tokens back; a new login works.
    gw.store.set_disabled("frank", false).unwrap();
    assert_eq!(get(gw.addr, "/x", Some(&phone)).await.status, 401);
    let fresh = gw.login("frank", "pw").await;
    assert_eq!(get(gw.addr, "/x", Some(&fresh)).await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn a_custom_login_path_moves_the_endpoint() {
    let up = echo_upstream().await;
    let gw = Gateway::start(up.addr, "login_path = \"/api/auth/login\"").await;
    gw.add_user("hana", "pw", &[]);
    let body = serde_json::json!({"username": "hana", "password": "pw"}).to_string();
    let r = send(
        gw.addr,
        Request::post("/api/auth/login")
            .header("content-type", "application/json")
            .body(body.clone())
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["token"].as_str().unwrap().starts_with("tg_"));
    // `/login` is now an ordinary protected path.
    let r = send(
        gw.addr,
        Request::post("/login")
            .header("content-type", "application/json")
            .body(body)
            .unwrap(),
    )
    .await;
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(
        r.json(),
        serde_json::json!({"detail": "Authentication credentials were not provided."})
    );
    gw.stop().await;
}

#[tokio::test]
async fn the_login_body_and_password_never_reach_the_upstream() {
    let (up, seen) = recording_echo_upstream().await;
    let gw = Gateway::start(up.addr, "public = [\"/**\"]").await;
    gw.add_user("ivan", "pw", &[]);
    // Even with every path public, the login path is the gateway's own.
    let token = gw.login("ivan", "pw").await;
    assert!(token.starts_with("tg_"));
    assert!(
        seen.lock().unwrap().is_empty(),
        "{:?}",
        seen.lock().unwrap()
    );
    gw.stop().await;
}
