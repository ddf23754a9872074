//! `tokengate import django` on what a real Django (with DRF and
//! django-rest-knox) dumps: tests/django/make_dump.py builds the site in a
//! virtualenv that .ci/run makes and names in TOKENGATE_TEST_DJANGO_PYTHON.
//! Without it the test says so and passes, except under CI (`CI=true`).

mod common;

use std::path::{Path, PathBuf};

use common::binary::{Env, Server, fails_saying, stderr};
use common::*;

/// The virtualenv's python, or why the test cannot run.
fn python() -> Option<PathBuf> {
    match std::env::var_os("TOKENGATE_TEST_DJANGO_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            let why = "TOKENGATE_TEST_DJANGO_PYTHON names no python with Django, DRF and knox (.ci/run makes one)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            eprintln!("SKIPPED: {why}");
            None
        }
    }
}

/// The Django site's dumps and the secrets its clients hold.
fn django_site(python: &Path, dir: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/django/make_dump.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "make_dump.py: {}", stderr(&out));
    serde_json::from_str(&std::fs::read_to_string(dir.join("secrets.json")).unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_django_site_moves_in_with_its_passwords_and_tokens() {
    let Some(python) = python() else {
        return;
    };
    let up = echo_upstream().await;
    // Every user tries a wrong password too: no bans in the way.
    let env = Env::serving(up.addr, "\n[throttle]\nenabled = false\n");
    let site = tempfile::tempdir().unwrap();
    let secrets = django_site(&python, site.path());
    let dump = site.path().join("dump.json");

    // A user of the same name is already here: left as it is.
    env.add_user("root", "the gateway's own root");
    let out = env.run(&["import", "django", dump.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = stderr(&out);
    assert!(
        report.contains("imported 9 user(s) (1 disabled)"),
        "{report}"
    );
    assert!(report.contains("1 django, 4 knox"), "{report}");
    assert!(
        report.contains("kept 1 user(s)") && report.contains("root"),
        "{report}"
    );
    assert!(
        report.contains("nopw") && report.contains("oldsha"),
        "{report}"
    );
    assert!(report.contains("algorithm `sha1`"), "{report}");

    let users = env.json(&["user", "list", "--json"]);
    let user = |name: &str| {
        users
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["username"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {users}"))
            .clone()
    };
    assert_eq!(
        user("ann")["roles"],
        serde_json::json!(["finance", "staff"])
    );
    assert_eq!(user("gone")["disabled"], true);
    assert_eq!(user("nopw")["password"], false);
    assert_eq!(
        user("root")["roles"],
        serde_json::json!([]),
        "kept unchanged"
    );
    let tokens = env.json(&["token", "list", "--json"]);
    let mut labels: Vec<&str> = tokens
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["label"].as_str().unwrap())
        .collect();
    labels.sort();
    // gone's DRF token ended when gone was disabled; root's knox token
    // stayed behind with the Django root.
    assert_eq!(labels, ["django", "knox", "knox", "knox", "knox"]);

    let server = Server::start(&env).unwrap();
    // Every Django hasher's password logs in, and is then the gateway's.
    for (name, password) in secrets["passwords"].as_object().unwrap() {
        let r = send(
            server.addr,
            common::binary::login_request(name, password.as_str().unwrap()),
        )
        .await;
        let want = match name.as_str() {
            "gone" => 401,
            "root" => 401, // the gateway's own root has another password
            _ => 200,
        };
        assert_eq!(r.status, want, "{name}: {}", r.text());
        let wrong = send(server.addr, common::binary::login_request(name, "not it")).await;
        assert_eq!(wrong.status, 401, "{name}");
    }
    let r = send(server.addr, common::binary::login_request("nopw", "")).await;
    assert!(r.status == 400 || r.status == 401);

    let token = |kind: &str, which: &str| secrets[kind][which].as_str().unwrap().to_owned();
    let seen = get(server.addr, "/x", Some(&token("django", "ann")))
        .await
        .seen();
    assert_eq!(seen.header("x-auth-user"), Some("ann"));
    for which in ["plain", "expiring"] {
        let seen = get(server.addr, "/x", Some(&token("knox", which)))
            .await
            .seen();
        assert_eq!(seen.header("x-auth-user"), Some("ann"), "knox {which}");
    }
    // knox's TOKEN_PREFIX is part of the token.
    let seen = get(server.addr, "/x", Some(&token("knox", "prefixed")))
        .await
        .seen();
    assert_eq!(seen.header("x-auth-user"), Some("u_scrypt"));
    // root's knox token belongs to the Django root, not to ours: not imported.
    assert_eq!(
        get(server.addr, "/x", Some(&token("knox", "roots")))
            .await
            .status,
        401
    );
    assert_eq!(
        get(server.addr, "/x", Some(&token("knox", "expired")))
            .await
            .status,
        401
    );
    assert_eq!(
        get(server.addr, "/x", Some(&token("django", "gone")))
            .await
            .status,
        401
    );
    // Exact match only: a near miss is refused.
    let near = mangled(&token("django", "ann"));
    assert_eq!(get(server.addr, "/x", Some(&near)).await.status, 401);

    // Revoked like any token.
    let listed = env.json(&["token", "list", "--user", "ann", "--json"]);
    let drf = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["label"] == "django")
        .unwrap();
    env.ok(&["token", "revoke", drf["id"].as_str().unwrap()]);
    assert_eq!(
        get(server.addr, "/x", Some(&token("django", "ann")))
            .await
            .status,
        401
    );

    // The same site again, with natural keys, through the running server:
    // everyone is kept, nothing changes.
    let natural = site.path().join("dump_natural.json");
    let again = env.run(&["import", "django", natural.to_str().unwrap()]);
    assert!(again.status.success(), "{}", stderr(&again));
    let report = stderr(&again);
    assert!(report.contains("imported 0 user(s)"), "{report}");
    assert!(report.contains("kept 10 user(s)"), "{report}");
    assert!(report.contains("contenttypes.contenttype"), "{report}");
    assert!(server.stop().success());

    // The first logins replaced Django's hashes with argon2id.
    let store = tokengate::store::Store::open(&env.store_path()).unwrap();
    for name in [
        "u_pbkdf2_sha256",
        "u_pbkdf2_sha1",
        "u_argon2",
        "u_bcrypt_sha256",
        "u_scrypt",
        "ann",
    ] {
        let hash = store.user(name).unwrap().unwrap().password_hash;
        assert!(hash.starts_with("$argon2id$"), "{name}: {hash}");
    }
    // And the rehash kept the user's tokens.
    let seen_tokens = store.tokens(Some("ann")).unwrap();
    assert!(
        seen_tokens
            .iter()
            .any(|t| t.record.label.as_deref() == Some("knox"))
    );
    drop(store);
    // No token in the clear anywhere in the store's files.
    for file in common::binary::walk(&env.store_path()) {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        for kind in ["django", "knox"] {
            for secret in secrets[kind].as_object().unwrap().values() {
                let secret = secret.as_str().unwrap().as_bytes();
                assert!(
                    !bytes.windows(secret.len()).any(|w| w == secret),
                    "a {kind} token in the clear in {}",
                    file.display()
                );
            }
        }
    }
}

#[test]
fn a_file_that_is_not_dumpdata_is_refused_and_changes_nothing() {
    let env = Env::serving(closed_port(), "");
    let file = env.dir.path().join("users.csv");
    std::fs::write(&file, "ann,secret\n").unwrap();
    let out = env.run(&["import", "django", file.to_str().unwrap()]);
    fails_saying(&out, "dumpdata");
    // One bad entry among good ones: nothing is imported, and it is named.
    let dump = r#"[{"model": "auth.user", "pk": 1, "fields": {"username": "ok", "password": "!"}},
                   {"model": "auth.user", "pk": 2, "fields": {"password": "!"}}]"#;
    let out = env.run_stdin(&["import", "django", "-"], dump);
    fails_saying(&out, "entry 2 (auth.user): `username` is missing");
    assert_eq!(env.json(&["user", "list", "--json"]), serde_json::json!([]));
}

/// The other half of the move: the DRF app behind the gateway reads the
/// caller from the header the gateway sets, and a client cannot set it.
#[tokio::test(flavor = "multi_thread")]
async fn a_drf_app_behind_the_gateway_reads_the_caller_from_its_header() {
    let Some(python) = python() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/django/app.py");
    let mut app = std::process::Command::new(python)
        .arg(script)
        .arg(dir.path())
        .arg(port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let app_addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::net::TcpStream::connect(app_addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline && app.try_wait().unwrap().is_none(),
            "the Django app did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let gw = Gateway::start(app_addr, "").await;
    gw.add_user("ann", "pw", &[]);
    let token = gw.login("ann", "pw").await;
    let whoami = |token: Option<String>, forged: Option<&'static str>| {
        let mut b = http::Request::get("/whoami").header("host", "127.0.0.1");
        if let Some(t) = token {
            b = b.header("authorization", format!("Token {t}"));
        }
        if let Some(name) = forged {
            b = b.header("x-auth-user", name).header("x_auth_user", name);
        }
        send(gw.addr, b.body(bytes::Bytes::new()).unwrap())
    };
    let r = whoami(Some(token.clone()), None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["user"], "ann");
    // A client's own copy (either spelling WSGI reads alike) never arrives.
    let r = whoami(Some(token), Some("root")).await;
    assert_eq!(r.json()["user"], "ann");
    // Without a token the gateway answers; the app never sees the request.
    assert_eq!(whoami(None, Some("root")).await.status, 401);
    gw.stop().await;
    let _ = app.kill();
    let _ = app.wait();
}
