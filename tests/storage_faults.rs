//! Storage faults, through the real binary: a data directory that cannot be
//! used at start is a clear error naming it and a non-zero exit; a disk that
//! fills up at run time makes logins answer 503 without handing out a token
//! that was not saved, keeps valid tokens working, and heals once space
//! returns, without a restart.
//!
//! CI runs as root, and root ignores permission bits, so the cases are made
//! real another way: a path under a regular file (ENOTDIR, for anyone), the
//! server run as `nobody` (uid 65534) on a root-owned 0700 directory, a
//! read-only bind mount, and a small tmpfs mounted over the store. A case
//! that cannot be set up here (no mount permission, a binary `nobody` cannot
//! run) prints why and passes without checking.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::binary::{Env, Server};

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

fn config(upstream: &str, extra: &str) -> String {
    common::config_text(upstream, &format!("[throttle]\nenabled = false\n{extra}"))
}

fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// `serve` must fail to start, exit non-zero and name `path` in its error.
fn assert_refused(env: &Env, path: &Path, why: &str) {
    let failure = match Server::start(env) {
        Ok(server) => panic!("serve started on {why}: {}", server.log_text()),
        Err(f) => f,
    };
    let status = failure.status.expect("serve exited");
    assert!(!status.success(), "serve exited 0 on {why}");
    assert!(
        failure.log.contains(&path.display().to_string()),
        "the error does not name {}: {}",
        path.display(),
        failure.log
    );
    assert!(
        failure.log.contains("cannot open the store"),
        "unclear error for {why}: {}",
        failure.log
    );
}

#[test]
fn a_store_path_under_a_regular_file_is_refused_by_name() {
    let env = Env::new(&config("http://127.0.0.1:9", ""));
    let file = env.dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let store = file.join("data");
    let mut env = env;
    env.vars
        .push(("TOKENGATE_STORE_PATH".into(), store.display().to_string()));
    assert_refused(&env, &store, "a path under a regular file");
    let failure = Server::start(&env).err().unwrap();
    assert!(failure.log.contains("Not a directory"), "{}", failure.log);
}

#[test]
fn a_store_directory_the_user_may_not_enter_is_refused_by_name() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let mut env = Env::new(&config("http://127.0.0.1:9", ""));
    let store = env.store_path();
    std::fs::create_dir(&store).unwrap();
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700)).unwrap();
    if is_root() {
        // Run the server as nobody: the config must be readable by it, the
        // store (root's, 0700) must not.
        std::fs::set_permissions(env.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&env.config, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut probe = Command::new(common::binary::BIN);
        probe.arg("--version").uid(65534).gid(65534);
        match probe.output() {
            Ok(out) if out.status.success() => {}
            other => {
                eprintln!(
                    "SKIPPED: nobody (uid 65534) cannot run {}: {other:?}",
                    common::binary::BIN
                );
                return;
            }
        }
        env.as_user = Some(65534);
    } else {
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    assert_refused(&env, &store, "a store directory without permission");
    let failure = Server::start(&env).err().unwrap();
    // As nobody, root's directory is refused by its owner before any
    // permission is tried.
    let why = if is_root() {
        "belongs to uid 0"
    } else {
        "Permission denied"
    };
    assert!(failure.log.contains(why), "{}", failure.log);
    if !is_root() {
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
}

/// A mount made for one test, unmounted (lazily, if busy) on drop.
struct Mount(PathBuf);

impl Mount {
    fn new(args: &[&str], target: &Path) -> Result<Self, String> {
        let out = Command::new("mount")
            .args(args)
            .arg(target)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Mount(target.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_read_only_store_is_refused_by_name() {
    let env = Env::new(&config("http://127.0.0.1:9", ""));
    env.add_user("alice", "pw-alice");
    let store = env.store_path();
    let bind = match Mount::new(&["--bind", &store.display().to_string()], &store) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: cannot bind-mount the store ({e})");
            return;
        }
    };
    // The remount changes `bind`, which unmounts it when dropped.
    if let Err(e) = Mount::new(&["-o", "remount,bind,ro"], &store).map(std::mem::forget) {
        eprintln!("SKIPPED: cannot remount the store read-only ({e})");
        return;
    }
    assert_refused(&env, &store, "a read-only store");
    drop(bind);
}

async fn status(addr: std::net::SocketAddr, req: http::Request<bytes::Bytes>) -> (u16, String) {
    let (s, body) = common::binary::try_send(addr, req, HTTP_TIMEOUT)
        .await
        .expect("the server answers");
    (s.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

async fn readyz(admin: std::net::SocketAddr) -> u16 {
    let req = http::Request::get("/readyz")
        .body(bytes::Bytes::new())
        .unwrap();
    status(admin, req).await.0
}

async fn login(addr: std::net::SocketAddr, user: &str, password: &str) -> (u16, String) {
    status(addr, common::binary::login_request(user, password)).await
}

fn token_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    v["token"].as_str().unwrap().to_owned()
}

/// Fills the filesystem holding `dir` with one file, to the last byte.
fn fill(dir: &Path) -> std::fs::File {
    use std::io::Write;
    let mut file = std::fs::File::create(dir.join("filler")).unwrap();
    for chunk in [64 * 1024, 4096, 1] {
        let buf = vec![0u8; chunk];
        while file.write_all(&buf).is_ok() {}
    }
    file
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_logins_keeps_tokens_and_heals() {
    let upstream = common::echo_upstream().await;
    let env = Env::new(&config(
        &format!("http://{}", upstream.addr),
        "\n[admin]\nlisten = \"127.0.0.1:0\"\n",
    ));
    let store = env.store_path();
    std::fs::create_dir(&store).unwrap();
    let _tmpfs = match Mount::new(&["-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs"], &store) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("SKIPPED: cannot mount a tmpfs for the store ({e})");
            return;
        }
    };
    let server = Server::start(&env).expect("serve starts on the tmpfs");
    let (addr, admin) = (server.addr, server.admin.expect("admin listener"));
    env.add_user("alice", "pw-alice");
    let (s, body) = login(addr, "alice", "pw-alice").await;
    assert_eq!(s, 200, "{body}");
    let mut saved = vec![token_of(&body)];
    assert_eq!(readyz(admin).await, 200);

    // The disk fills up. Logins go on until the store cannot write: each one
    // answers 200 with a token that was saved, or 503 with no token.
    let filler = fill(&store);
    let mut refused = 0;
    for _ in 0..500 {
        let (s, body) = login(addr, "alice", "pw-alice").await;
        match s {
            200 => saved.push(token_of(&body)),
            503 => {
                assert!(!body.contains("tg_"), "a 503 carried a token: {body}");
                refused += 1;
                if refused == 5 {
                    break;
                }
            }
            s => panic!("login on a full disk answered {s}: {body}"),
        }
    }
    assert_eq!(refused, 5, "the full disk never refused a login");

    // Tokens that were handed out keep working; the gateway did not crash.
    for token in &saved {
        let (s, body) = status(addr, common::binary::get_request("/api", token)).await;
        assert_eq!(s, 200, "a valid token failed on a full disk: {body}");
    }
    assert_eq!(
        readyz(admin).await,
        503,
        "readiness ignores the store failure"
    );
    let out = env.run_stdin(&["user", "add", "bob", "--password-stdin"], "pw-bob\n");
    assert!(!out.status.success(), "user add succeeded on a full disk");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not"), "unclear error: {err}");
    let out = env.run(&["token", "issue", "alice"]);
    assert!(
        !out.status.success(),
        "token issue succeeded on a full disk"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("tg_"));

    // Space returns: logins work again without a restart.
    drop(filler);
    std::fs::remove_file(store.join("filler")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (s, body) = login(addr, "alice", "pw-alice").await;
        if s == 200 {
            saved.push(token_of(&body));
            break;
        }
        assert_eq!(s, 503, "{body}");
        assert!(Instant::now() < deadline, "logins never recovered");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(readyz(admin).await, 200, "readiness did not recover");
    env.add_user("bob", "pw-bob");
    let (s, body) = login(addr, "bob", "pw-bob").await;
    assert_eq!(s, 200, "{body}");
    saved.push(token_of(&body));
    assert!(server.log_text().contains("store reopened"));

    // Everything acknowledged is on disk: it survives SIGKILL.
    server.kill9();
    let server = Server::start(&env).expect("serve starts again");
    for token in &saved {
        let (s, body) = status(server.addr, common::binary::get_request("/api", token)).await;
        assert_eq!(
            s, 200,
            "a token handed out around the full disk was lost: {body}"
        );
    }
    let status = server.stop();
    assert!(status.success());
}
