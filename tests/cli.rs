//! The `tokengate` binary: user and token management, where the config
//! comes from, and `check`. Each test runs the real binary in a fresh
//! temporary directory with a scrubbed environment.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::binary::{Env, fails_saying, feed, last_line, stderr, walk};
use common::*;
use tokengate::store::Store;
use tokengate::store::token::Token;

fn users_by_name(
    list: &serde_json::Value,
) -> std::collections::BTreeMap<String, serde_json::Value> {
    list.as_array()
        .expect("a JSON array")
        .iter()
        .map(|u| (u["username"].as_str().unwrap().to_owned(), u.clone()))
        .collect()
}

/// Waits until a server's admin socket answers.
fn wait_for_socket(store: &Path) {
    let socket = store.join("admin.sock");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "admin socket never answered");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn user_add_reads_stdin_and_list_json_shows_users() {
    let cli = Env::nested("http://127.0.0.1:9");
    cli.add_user_with_roles("alice", "s3cret pw", &["admin", "ops"]);
    cli.add_user_with_roles("bob", "pw-bob", &[]);
    cli.ok(&["user", "disable", "bob"]);

    let list = cli.json(&["user", "list", "--json"]);
    let users = users_by_name(&list);
    assert_eq!(users.len(), 2, "{list}");
    assert_eq!(users["alice"]["roles"], serde_json::json!(["admin", "ops"]));
    assert_eq!(users["alice"]["disabled"], false);
    assert_eq!(users["bob"]["roles"], serde_json::json!([]));
    assert_eq!(users["bob"]["disabled"], true);
    let text = serde_json::to_string(&list).unwrap();
    assert!(
        !text.contains("s3cret") && !text.contains("argon2"),
        "user list shows a password or its hash: {text}"
    );
    // The plain listing names both too.
    let plain = cli.ok(&["user", "list"]);
    assert!(plain.contains("alice") && plain.contains("bob"), "{plain}");

    // The password is the line without its newline.
    let up = echo_upstream().await;
    let (gw, _reload) = Gateway::start_text(&cli.gateway_config(up.addr), |_| {}).await;
    let r = send(gw.addr, common::binary::login_request("alice", "s3cret pw")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let r2 = send(
        gw.addr,
        common::binary::login_request("alice", "s3cret pw\n"),
    )
    .await;
    assert_eq!(r2.status, 401);
    let seen = get(gw.addr, "/x", Some(&token)).await.seen();
    assert_eq!(seen.header("x-auth-roles"), Some("admin,ops"));
    gw.stop().await;
}

#[test]
fn adding_an_existing_user_fails_clearly_and_changes_nothing() {
    let cli = Env::nested("http://127.0.0.1:9");
    cli.add_user_with_roles("alice", "first", &["ops"]);
    let out = cli.run_stdin(common::binary::ADD_ALICE_AS_ADMIN, "second\n");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("alice") && err.contains("exists"),
        "unclear message: {err}"
    );
    let users = users_by_name(&cli.json(&["user", "list", "--json"]));
    assert_eq!(users.len(), 1);
    assert_eq!(users["alice"]["roles"], serde_json::json!(["ops"]));
}

#[test]
fn an_empty_password_is_refused() {
    let cli = Env::nested("http://127.0.0.1:9");
    for input in ["\n", "", "\r\n"] {
        let out = cli.run_stdin(&["user", "add", "erin", "--password-stdin"], input);
        assert!(!out.status.success(), "{input:?} was accepted");
        let err = stderr(&out).to_ascii_lowercase();
        assert!(
            err.contains("empty"),
            "unclear message for {input:?}: {err}"
        );
    }
    assert_eq!(cli.json(&["user", "list", "--json"]), serde_json::json!([]));
    // The same for a password change.
    cli.add_user_with_roles("erin", "pw", &[]);
    let out = cli.run_stdin(&["user", "passwd", "erin", "--password-stdin"], "\n");
    assert!(!out.status.success());
    assert!(stderr(&out).to_ascii_lowercase().contains("empty"));
}

#[test]
fn without_a_terminal_or_password_stdin_the_command_fails_clearly() {
    let cli = Env::nested("http://127.0.0.1:9");
    // stdin is /dev/null: no terminal.
    let out = cli.run(&["user", "add", "frank"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("--password-stdin"), "{err}");
    assert_eq!(cli.json(&["user", "list", "--json"]), serde_json::json!([]));

    cli.add_user_with_roles("frank", "pw", &[]);
    let out = cli.run(&["user", "passwd", "frank"]);
    fails_saying(&out, "--password-stdin");
}

#[test]
fn commands_on_unknown_users_fail_naming_the_user() {
    let cli = Env::nested("http://127.0.0.1:9");
    cli.add_user_with_roles("real", "pw", &[]);
    for args in [
        vec!["user", "remove", "ghost"],
        vec!["user", "disable", "ghost"],
        vec!["user", "enable", "ghost"],
        vec!["token", "issue", "ghost"],
        vec!["token", "revoke", "--user", "ghost"],
    ] {
        let out = cli.run(&args);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(stderr(&out).contains("ghost"), "{args:?}: {}", stderr(&out));
        assert!(out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("tg_"));
    }
    let out = cli.run_stdin(&["user", "passwd", "ghost", "--password-stdin"], "pw\n");
    fails_saying(&out, "ghost");
    assert_eq!(
        cli.json(&["token", "list", "--json"]),
        serde_json::json!([])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn token_issue_prints_the_token_alone_on_the_last_line_and_it_works() {
    let cli = Env::nested("http://127.0.0.1:9");
    cli.add_user_with_roles("ci", "pw", &["deploy"]);
    let out = cli.run(&["token", "issue", "ci", "--label", "pipeline", "--ttl", "1h"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let token = last_line(&stdout);
    assert!(token.starts_with("tg_"), "last line: {token:?}");
    assert_eq!(token.trim(), token, "the last line is the token alone");
    assert!(!token.contains(' '));
    assert!(Token::parse(token).is_some(), "not a valid token: {token}");
    assert!(stdout.ends_with('\n'));

    // Without a login, through a gateway over that store.
    let up = echo_upstream().await;
    let (gw, _reload) = Gateway::start_text(&cli.gateway_config(up.addr), |_| {}).await;
    let seen = get(gw.addr, "/deploy", Some(token)).await.seen();
    assert_eq!(seen.header("x-auth-user"), Some("ci"));
    assert_eq!(seen.header("x-auth-roles"), Some("deploy"));
    gw.stop().await;
}

#[test]
fn token_list_json_has_the_fields_and_never_the_secret() {
    let cli = Env::nested("http://127.0.0.1:9");
    cli.add_user_with_roles("alice", "pw", &[]);
    cli.add_user_with_roles("bob", "pw", &[]);
    let labelled = cli.issue(&["alice", "--label", "laptop", "--ttl", "2h"]);
    let forever = cli.issue(&["alice", "--ttl", "0s"]);
    let bobs = cli.issue(&["bob"]);

    let out = cli.run(&["token", "list", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    for secret in [&labelled, &forever, &bobs] {
        assert!(
            !text.contains(secret.as_str()),
            "token list --json printed a secret"
        );
        // Nor any recognisable piece of it.
        assert!(
            !text.contains(&secret[3..20]),
            "token list --json printed part of a secret"
        );
    }
    assert!(!text.contains("tg_"), "{text}");
    let list: serde_json::Value = serde_json::from_str(&text).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 3, "{text}");
    for t in list {
        for key in ["id", "user", "label", "created_at", "expires_at"] {
            assert!(t.get(key).is_some(), "{key} missing in {t}");
        }
        assert!(!t["id"].as_str().unwrap().is_empty());
        humantime::parse_rfc3339_weak(t["created_at"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("created_at not RFC 3339 ({e}): {t}"));
    }
    let alice: Vec<_> = list.iter().filter(|t| t["user"] == "alice").collect();
    assert_eq!(alice.len(), 2);
    let laptop = alice
        .iter()
        .find(|t| t["label"] == "laptop")
        .expect("label kept");
    let created = humantime::parse_rfc3339_weak(laptop["created_at"].as_str().unwrap()).unwrap();
    let expires = humantime::parse_rfc3339_weak(laptop["expires_at"].as_str().unwrap()).unwrap();
    assert_eq!(
        expires.duration_since(created).unwrap(),
        Duration::from_secs(7200)
    );
    let other = alice.iter().find(|t| t["label"] != "laptop").unwrap();
    assert!(other["label"].is_null(), "{other}");
    assert!(
        other["expires_at"].is_null(),
        "--ttl 0s never expires: {other}"
    );
    let ids: std::collections::HashSet<_> =
        list.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 3, "ids are not distinct");

    // --user filters; the plain listing has no secrets either.
    let only_bob = cli.json(&["token", "list", "--user", "bob", "--json"]);
    assert_eq!(only_bob.as_array().unwrap().len(), 1);
    assert_eq!(only_bob[0]["user"], "bob");
    let plain = cli.ok(&["token", "list"]);
    assert!(!plain.contains("tg_"), "{plain}");
    assert!(plain.contains("laptop") && plain.contains("bob"), "{plain}");
}

#[test]
fn token_revoke_by_id_or_by_user() {
    let cli = Env::nested("http://127.0.0.1:9");
    cli.add_user_with_roles("alice", "pw", &[]);
    cli.add_user_with_roles("bob", "pw", &[]);
    let a1 = cli.issue(&["alice", "--label", "one"]);
    let a2 = cli.issue(&["alice", "--label", "two"]);
    let b1 = cli.issue(&["bob"]);
    let list = cli.json(&["token", "list", "--json"]);
    let id_of = |label: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|t| t["label"] == label)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let one = id_of("one");
    let out = cli.run(&["token", "revoke", &one]);
    assert!(out.status.success(), "{}", stderr(&out));
    let left = cli.json(&["token", "list", "--json"]);
    assert_eq!(left.as_array().unwrap().len(), 2);
    assert!(
        !left
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["id"] == one.as_str())
    );
    // Revoking it again, or an id that never was, fails.
    assert!(!cli.run(&["token", "revoke", &one]).status.success());
    assert!(
        !cli.run(&["token", "revoke", "0000000000000000"])
            .status
            .success()
    );
    {
        let store = Store::open(&cli.store_path()).unwrap();
        let live = |t: &str| {
            store
                .authenticate(&Token::parse(t).unwrap().digest())
                .unwrap()
        };
        assert!(live(&a1).is_none(), "the revoked token still works");
        assert!(live(&a2).is_some());
        assert!(live(&b1).is_some());
    }

    let out = cli.run(&["token", "revoke", "--user", "alice"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let left = cli.json(&["token", "list", "--json"]);
    assert_eq!(left.as_array().unwrap().len(), 1);
    assert_eq!(left[0]["user"], "bob");
    let store = Store::open(&cli.store_path()).unwrap();
    let live = |t: &str| {
        store
            .authenticate(&Token::parse(t).unwrap().digest())
            .unwrap()
    };
    assert!(live(&a2).is_none());
    assert!(live(&b1).is_some());
}

#[test]
fn the_config_flag_works_before_and_after_the_subcommand() {
    let cli = Env::nested("http://127.0.0.1:9");
    let config = cli.config.display().to_string();
    let out = feed(
        {
            let mut c = cli.bare();
            c.args(["-c", &config, "user", "add", "alice", "--password-stdin"]);
            c
        },
        "pw\n",
    );
    assert!(out.status.success(), "-c first: {}", stderr(&out));
    for args in [
        vec!["-c", &config, "user", "list", "--json"],
        vec!["user", "-c", &config, "list", "--json"],
        vec!["user", "list", "--json", "-c", &config],
        vec!["--config", &config, "user", "list", "--json"],
        vec!["user", "list", "--json", "--config", &config],
    ] {
        let out = cli.bare().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
        let users = users_by_name(&serde_json::from_slice(&out.stdout).unwrap());
        assert!(users.contains_key("alice"), "{args:?}");
    }
    for args in [vec!["-c", &config, "check"], vec!["check", "-c", &config]] {
        let out = cli.bare().args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", stderr(&out));
    }
    // No flag, no variable, no tokengate.toml here: a clear failure.
    let out = cli.bare().args(["user", "list"]).output().unwrap();
    fails_saying(&out, "tokengate.toml");
}

#[test]
fn tokengate_config_names_the_file_when_there_is_no_flag() {
    let cli = Env::nested("http://127.0.0.1:9");
    cli.add_user_with_roles("alice", "pw", &[]);
    // `args` with $TOKENGATE_CONFIG set to `config`, and nothing else.
    let run = |config: &std::path::Path, args: &[&std::ffi::OsStr]| {
        let mut cmd = cli.bare();
        cmd.env("TOKENGATE_CONFIG", config).args(args);
        cmd.output().unwrap()
    };
    let missing = cli.dir.path().join("missing.toml");
    let out = run(
        &cli.config,
        &["user".as_ref(), "list".as_ref(), "--json".as_ref()],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(users_by_name(&serde_json::from_slice(&out.stdout).unwrap()).contains_key("alice"));
    let out = run(&cli.config, &["check".as_ref()]);
    assert!(out.status.success(), "{}", stderr(&out));

    // The flag wins over the variable.
    let flag = [
        "user".as_ref(),
        "list".as_ref(),
        "--json".as_ref(),
        "-c".as_ref(),
        cli.config.as_os_str(),
    ];
    let out = run(&missing, &flag);
    assert!(out.status.success(), "{}", stderr(&out));
    // And a variable naming a missing file fails, naming it.
    let out = run(&missing, &["user".as_ref(), "list".as_ref()]);
    fails_saying(&out, "missing.toml");
}

#[test]
fn tokengate_toml_in_the_working_directory_is_the_default() {
    let cli = Env::nested("http://127.0.0.1:9");
    std::fs::write(
        cli.dir.path().join("tokengate.toml"),
        config_text("http://127.0.0.1:9", ""),
    )
    .unwrap();
    let out = feed(
        {
            let mut c = cli.bare();
            c.args(["user", "add", "wd", "--password-stdin"]);
            c
        },
        "pw\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Its store is `data` beside that file, not the one beside etc/gate.toml.
    assert!(cli.dir.path().join("data").is_dir());
    assert!(!cli.store_path().exists());
    let out = cli
        .bare()
        .args(["user", "list", "--json"])
        .output()
        .unwrap();
    assert!(users_by_name(&serde_json::from_slice(&out.stdout).unwrap()).contains_key("wd"));
    assert_eq!(cli.json(&["user", "list", "--json"]), serde_json::json!([]));
}

#[test]
fn relative_paths_are_relative_to_the_config_files_folder() {
    let cli = Env::nested("http://127.0.0.1:9");
    // Run from a different directory, naming the config by a relative path.
    let out = feed(
        {
            let mut c = cli.bare();
            c.args([
                "user",
                "add",
                "rel",
                "--password-stdin",
                "-c",
                "etc/gate.toml",
            ]);
            c
        },
        "pw\n",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        cli.store_path().is_dir(),
        "store not beside the config file"
    );
    assert!(
        !cli.dir.path().join("data").exists(),
        "store relative to the working directory"
    );
}

#[test]
fn check_prints_the_effective_config() {
    let cli = Env::nested("http://10.1.2.3:8000");
    let out = cli.run(&["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8(out.stdout).unwrap();
    let effective: toml::Table = text
        .parse()
        .unwrap_or_else(|e| panic!("check output is not TOML ({e}):\n{text}"));
    // What the file says...
    assert_eq!(
        effective["upstream"]["url"].as_str(),
        Some("http://10.1.2.3:8000")
    );
    assert_eq!(effective["upstream"]["timeout"].as_str(), Some("2s"));
    assert_eq!(effective["server"]["shutdown_timeout"].as_str(), Some("5s"));
    assert_eq!(effective["auth"]["argon2_iterations"].as_integer(), Some(1));
    // ...and the defaults it leaves out.
    assert_eq!(effective["auth"]["token_ttl"].as_str(), Some("30d"));
    assert_eq!(effective["auth"]["login_path"].as_str(), Some("/login"));
    assert_eq!(effective["auth"]["logout_path"].as_str(), Some("/logout"));
    assert_eq!(
        effective["auth"]["identity_header"].as_str(),
        Some("X-Auth-User")
    );
    assert_eq!(effective["auth"]["max_login_body"].as_str(), Some("16KiB"));
    let schemes: Vec<_> = effective["auth"]["schemes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(schemes, ["Token", "Bearer"]);
    // The printed config is itself a valid config.
    let again = cli.dir.path().join("etc").join("effective.toml");
    std::fs::write(&again, &text).unwrap();
    let out = cli
        .bare()
        .arg("check")
        .arg("-c")
        .arg(&again)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // An environment override shows in the effective config.
    let out = cli
        .bare()
        .env("TOKENGATE_UPSTREAM_URL", "http://10.9.9.9:1")
        .arg("check")
        .arg("-c")
        .arg(&cli.config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let effective: toml::Table = String::from_utf8(out.stdout).unwrap().parse().unwrap();
    assert_eq!(
        effective["upstream"]["url"].as_str(),
        Some("http://10.9.9.9:1")
    );
}

/// Writes `text` as the config and asserts `check` fails naming the file,
/// `line` and `key`.
fn assert_check_names(cli: &Env, text: &str, line: usize, key: &str) -> String {
    std::fs::write(&cli.config, text).unwrap();
    let out = cli.run(&["check"]);
    assert!(!out.status.success(), "check accepted:\n{text}");
    let err = stderr(&out);
    assert!(
        err.contains(&cli.config.display().to_string()) || err.contains("gate.toml"),
        "the file is not named: {err}"
    );
    assert!(
        err.contains(&format!(":{line}")) || err.contains(&format!("line {line}")),
        "line {line} is not named: {err}"
    );
    assert!(err.contains(key), "key `{key}` is not named: {err}");
    err
}

#[test]
fn check_on_a_bad_file_names_the_file_line_and_key() {
    let cli = Env::nested("http://127.0.0.1:9");
    let base = "[server]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"http://127.0.0.1:9\"\n\n[auth]\n";
    // Line numbers below count from 1 in `base` + the addition.
    assert_check_names(
        &cli,
        "[server]\nlisten = \"127.0.0.1:0\"\ncolour = \"red\"\n",
        3,
        "colour",
    );
    assert_check_names(&cli, &format!("{base}tokn_ttl = \"1h\"\n"), 8, "tokn_ttl");
    assert_check_names(&cli, &format!("{base}\n[extras]\nx = 1\n"), 9, "extras");
    assert_check_names(
        &cli,
        "[server]\nlisten = \"127.0.0.1:0\"\n[upstream]\ntimeout = 5\n",
        4,
        "timeout",
    );
    assert_check_names(&cli, "[server]\n\nlisten = \"nowhere\"\n", 3, "listen");
    assert_check_names(
        &cli,
        &format!("{base}token_ttl = \"forever\"\n"),
        8,
        "token_ttl",
    );
    assert_check_names(
        &cli,
        &format!("{base}public = [\"docs/**\"]\n"),
        8,
        "public",
    );
    assert_check_names(
        &cli,
        &format!("{base}max_login_body = \"lots\"\n"),
        8,
        "max_login_body",
    );
    assert_check_names(&cli, "[upstream]\nurl = \"ftp://example.com\"\n", 2, "url");
    assert_check_names(
        &cli,
        "[[rules]]\npath = \"/admin/**\"\nroles = \"admin\"\n",
        3,
        "roles",
    );
    // Several problems are reported at once.
    let err = assert_check_names(
        &cli,
        &format!("{base}token_ttl = \"forever\"\nmax_login_body = \"lots\"\n"),
        8,
        "token_ttl",
    );
    assert!(
        err.contains("max_login_body") && err.contains(":9"),
        "{err}"
    );

    // Other commands refuse a bad config the same way.
    std::fs::write(
        &cli.config,
        "[server]\nlisten = \"127.0.0.1:0\"\ncolour = \"red\"\n",
    )
    .unwrap();
    let out = cli.run(&["user", "list"]);
    fails_saying(&out, "colour");

    // A missing file is named.
    let out = cli
        .bare()
        .args(["check", "-c", "nope/absent.toml"])
        .output()
        .unwrap();
    fails_saying(&out, "absent.toml");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_and_token_commands_go_through_a_running_server() {
    let up = echo_upstream().await;
    let cli = Env::nested(&format!("http://{}", up.addr));
    let (gw, _reload) = Gateway::start_text(&cli.gateway_config(up.addr), |_| {}).await;
    let store = cli.store_path();
    tokio::task::spawn_blocking(move || wait_for_socket(&store))
        .await
        .unwrap();

    let cli = std::sync::Arc::new(cli);
    let c = cli.clone();
    let token = tokio::task::spawn_blocking(move || {
        c.add_user_with_roles("live", "pw", &["ops"]);
        c.issue(&["live", "--label", "hot"])
    })
    .await
    .unwrap();
    let seen = get(gw.addr, "/x", Some(&token)).await.seen();
    assert_eq!(seen.header("x-auth-user"), Some("live"));

    let c = cli.clone();
    let list = tokio::task::spawn_blocking(move || c.json(&["token", "list", "--json"]))
        .await
        .unwrap();
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let c = cli.clone();
    let out = tokio::task::spawn_blocking(move || c.run(&["token", "revoke", &id]))
        .await
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    // Revoked before the command returned.
    let r = get(gw.addr, "/x", Some(&token)).await;
    assert_eq!(r.status, 401, "{}", r.text());
    gw.stop().await;
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

/// A backup `cli` can restore: `alice` comes back.
fn assert_restores_alice(backup: &Path) {
    let fresh = Env::nested("http://127.0.0.1:9");
    fresh.ok(&["restore", backup.to_str().unwrap()]);
    let users = users_by_name(&fresh.json(&["user", "list", "--json"]));
    assert!(users.contains_key("alice"), "{users:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_does_not_follow_a_planted_symlink() {
    let cli = std::sync::Arc::new(Env::nested("http://127.0.0.1:9"));
    cli.add_user_with_roles("alice", "pw", &[]);
    let victim = cli.dir.path().join("victim.txt");
    std::fs::write(&victim, "the gateway user's own file\n").unwrap();
    // The name `backup` used to write through, planted by another user,
    // first with the store opened by the CLI, then through a server.
    let plant = |target: &Path| {
        std::os::unix::fs::symlink(&victim, target.with_extension("tmp-backup")).unwrap();
    };
    let offline = cli.dir.path().join("offline.jsonl");
    plant(&offline);
    cli.ok(&["backup", offline.to_str().unwrap()]);

    let up = echo_upstream().await;
    let (gw, _reload) = Gateway::start_text(&cli.gateway_config(up.addr), |_| {}).await;
    let store = cli.store_path();
    tokio::task::spawn_blocking(move || wait_for_socket(&store))
        .await
        .unwrap();
    let served = cli.dir.path().join("served.jsonl");
    plant(&served);
    let c = cli.clone();
    let s = served.clone();
    tokio::task::spawn_blocking(move || c.ok(&["backup", s.to_str().unwrap()]))
        .await
        .unwrap();
    gw.stop().await;

    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "the gateway user's own file\n",
        "the backup was written through the planted link"
    );
    for backup in [&offline, &served] {
        let meta = std::fs::symlink_metadata(backup).unwrap();
        assert!(meta.is_file(), "{} is not a plain file", backup.display());
        assert_restores_alice(backup);
    }
}

#[test]
fn backup_file_is_private() {
    let cli = Env::nested("http://127.0.0.1:9");
    cli.add_user_with_roles("alice", "pw", &[]);
    let target = cli.dir.path().join("snap.jsonl");
    // An old world-readable backup, and the old temporary name planted as
    // a world-readable file by someone waiting to read the next snapshot.
    let planted = target.with_extension("tmp-backup");
    for file in [&target, &planted] {
        std::fs::write(file, "").unwrap();
        std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o644))
            .unwrap();
    }
    cli.ok(&["backup", target.to_str().unwrap()]);
    assert_eq!(mode(&target), 0o600);
    assert_eq!(
        std::fs::read_to_string(&planted).unwrap_or_default(),
        "",
        "the snapshot went into the planted file"
    );
    assert_restores_alice(&target);
}

/// Every file and directory under `dir`, itself included.
#[test]
fn store_created_by_user_add_is_private() {
    let cli = Env::nested("http://127.0.0.1:9");
    let store = cli.store_path();
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    cli.add_user_with_roles("alice", "pw", &[]);
    let all = walk(&store);
    assert!(all.len() > 2, "sled's files: {all:?}");
    for path in all {
        let want = if path.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&path), want, "{}", path.display());
    }
}

#[test]
fn a_store_owned_by_another_user_is_refused() {
    use std::os::unix::fs::MetadataExt;
    let cli = Env::nested("http://127.0.0.1:9");
    let uid = std::fs::metadata(cli.dir.path()).unwrap().uid();
    if uid != 0 {
        eprintln!("SKIPPED: only root can give a directory to another user (running as uid {uid})");
        return;
    }
    const NOBODY: u32 = 65534;
    let store = cli.store_path();
    std::fs::create_dir(&store).unwrap();
    std::os::unix::fs::chown(&store, Some(NOBODY), Some(NOBODY)).unwrap();
    let out = cli.run(&["user", "list"]);
    assert!(!out.status.success(), "a store owned by nobody was used");
    let err = stderr(&out);
    assert!(
        err.contains("belongs to uid 65534") && err.contains("chown -R 0"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(&store).unwrap().count(),
        0,
        "sled created files in it"
    );

    // Our own directory, but one of sled's files is someone else's.
    std::os::unix::fs::chown(&store, Some(0), Some(0)).unwrap();
    cli.add_user_with_roles("alice", "pw", &[]);
    std::os::unix::fs::chown(store.join("db"), Some(NOBODY), None).unwrap();
    let out = cli.run(&["user", "list"]);
    assert!(
        !out.status.success(),
        "a store file owned by nobody was used"
    );
    assert!(
        stderr(&out).contains("belongs to uid 65534"),
        "{}",
        stderr(&out)
    );
}

/// The newcomer's file: five mistakes of every kind, all in one run of
/// `check`, each with its line and full dotted key.
#[test]
fn check_lists_five_mistakes_in_one_run() {
    let cli = Env::nested("http://127.0.0.1:9");
    std::fs::write(
        &cli.config,
        "[server]\nlisten = \"127.0.0.1:0\"\nmax_conections = 5\n\n\
         [upstream]\nurl = \"http://127.0.0.1:9\"\ntimout = \"5s\"\nconnect_timeout = 5\n\n\
         [auth]\ntoken_ttl = \"forever\"\n\n[[rules]]\npath = \"admin/**\"\nroles = [\"admin\"]\n",
    )
    .unwrap();
    let out = cli.run(&["check"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("(5 problems)"), "{err}");
    for (line, key) in [
        (3, "server.max_conections"),
        (7, "upstream.timout"),
        (8, "upstream.connect_timeout"),
        (11, "auth.token_ttl"),
        (14, "rules[0].path"),
    ] {
        assert!(
            err.contains(&format!(":{line}: key `{key}`")),
            "{key} at {line}: {err}"
        );
    }
}
