//! The real binary: a temporary directory with a config, `tokengate`
//! commands run in it with a scrubbed environment, and a `tokengate serve`
//! child that can be stopped, killed with SIGKILL and started again on the
//! same store. The one harness for every test that runs the binary.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

pub const BIN: &str = env!("CARGO_BIN_EXE_tokengate");

/// `user add alice --role admin`, the password from standard input.
pub const ADD_ALICE_AS_ADMIN: &[&str] = &[
    "user",
    "add",
    "alice",
    "--role",
    "admin",
    "--password-stdin",
];

/// A directory holding a config and (by default) the store.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Where the config's `store.path = "data"` puts the store.
    store: PathBuf,
    /// Extra environment for every command and server.
    pub vars: Vec<(String, String)>,
    /// Run every command as this uid (and gid), when the test is root.
    pub as_user: Option<u32>,
    /// Arguments for the shell's `ulimit` before every command (e.g.
    /// `-n 256`): the limit a service manager would give it.
    pub ulimit: Option<String>,
}

impl Env {
    /// `config` is the whole TOML text; relative paths in it are the directory's.
    pub fn new(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokengate.toml");
        std::fs::write(&path, config).unwrap();
        Self {
            store: dir.path().join("data"),
            dir,
            config: path,
            vars: Vec::new(),
            as_user: None,
            ulimit: None,
        }
    }

    /// The test config for `upstream`, with `extra` appended after `[auth]`.
    pub fn serving(upstream: SocketAddr, extra: &str) -> Self {
        Self::new(&super::config_text(&format!("http://{upstream}"), extra))
    }

    /// The config at `etc/gate.toml`, store in `etc/data`: the working
    /// directory itself has no `tokengate.toml`, for tests of where the
    /// config comes from.
    pub fn nested(upstream_url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        let config = dir.path().join("etc").join("gate.toml");
        std::fs::write(&config, super::config_text(upstream_url, "")).unwrap();
        Self {
            store: dir.path().join("etc").join("data"),
            dir,
            config,
            vars: Vec::new(),
            as_user: None,
            ulimit: None,
        }
    }

    pub fn store_path(&self) -> PathBuf {
        self.store.clone()
    }

    /// The binary with nothing but PATH in its environment, in the
    /// directory, output captured; no arguments, no `-c`.
    pub fn bare(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    }

    /// The config text a gateway over this store would use, with an
    /// absolute store path (for `Gateway::start_text`).
    pub fn gateway_config(&self, upstream: SocketAddr) -> String {
        super::config_text(&format!("http://{upstream}"), "").replace(
            "path = \"data\"",
            &format!("path = {:?}", self.store_path().display().to_string()),
        )
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = match &self.ulimit {
            None => Command::new(BIN),
            Some(limit) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit {limit} && exec \"$0\" \"$@\""))
                    .arg(BIN);
                c
            }
        };
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir.path())
            .args(args)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null());
        if let Some(id) = self.as_user {
            use std::os::unix::process::CommandExt;
            c.uid(id).gid(id);
        }
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    pub fn run_stdin(&self, args: &[&str], input: &str) -> Output {
        feed(self.cmd(args), input)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// A command's stdout, parsed as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {text}"))
    }

    /// Who `throttle list --json` says is banned, and the whole list.
    pub fn banned(&self) -> (Vec<String>, serde_json::Value) {
        let bans = self.json(&["throttle", "list", "--json"]);
        let who = bans
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["who"].as_str().unwrap().to_owned())
            .collect();
        (who, bans)
    }

    pub fn add_user(&self, name: &str, password: &str) {
        self.add_user_with_roles(name, password, &[]);
    }

    pub fn add_user_with_roles(&self, name: &str, password: &str, roles: &[&str]) {
        let mut args = vec!["user", "add", name, "--password-stdin"];
        for role in roles {
            args.extend(["--role", role]);
        }
        let out = self.run_stdin(&args, password);
        assert!(
            out.status.success(),
            "user add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `token issue ARGS`; the token (the output's last line).
    pub fn issue(&self, args: &[&str]) -> String {
        let mut all = vec!["token", "issue"];
        all.extend_from_slice(args);
        last_line(&self.ok(&all)).to_owned()
    }
}

/// A `tokengate serve` child process; killed with SIGKILL on drop.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener's address, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    pub log: PathBuf,
}

/// Why a server did not come up: its exit status (if it exited) and its log.
#[derive(Debug)]
pub struct StartFailure {
    pub status: Option<std::process::ExitStatus>,
    pub log: String,
}

impl Server {
    /// Starts `serve` and waits until it accepts on its port and on the
    /// admin socket (when the store is under `env.store_path()`).
    pub fn start(env: &Env) -> Result<Self, StartFailure> {
        Self::start_logged(env, "serve")
    }

    /// `start`, logging to `NAME.log` in the env's directory (appended).
    pub fn start_logged(env: &Env, name: &str) -> Result<Self, StartFailure> {
        let log = env.dir.path().join(format!("{name}.log"));
        let mut child = env
            .cmd(&["serve"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log_path = log.clone();
        std::thread::spawn(move || {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .unwrap();
            let mut admin = None;
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(file, "{line}");
                if let Some(found) = logged(&line, "admin") {
                    admin = Some(found);
                }
                if !sent && let Some(addr) = logged(&line, "listen") {
                    let _ = tx.send((addr, admin));
                    sent = true;
                }
            }
        });
        let fail = |child: &mut Child, log: &Path| {
            let _ = child.kill();
            let status = child.wait().ok();
            // Let the reader thread write the last lines.
            std::thread::sleep(Duration::from_millis(50));
            StartFailure {
                status,
                log: std::fs::read_to_string(log).unwrap_or_default(),
            }
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let (addr, admin) = loop {
            match rx.recv_timeout(Duration::from_millis(20)) {
                Ok(found) => break found,
                Err(_) if Instant::now() > deadline => return Err(fail(&mut child, &log)),
                Err(_) => {
                    if let Ok(Some(_)) = child.try_wait() {
                        return Err(fail(&mut child, &log));
                    }
                }
            }
        };
        let socket = env.store_path().join("admin.sock");
        if env.store_path().exists() {
            while std::os::unix::net::UnixStream::connect(&socket).is_err() {
                if Instant::now() > deadline || matches!(child.try_wait(), Ok(Some(_))) {
                    return Err(fail(&mut child, &log));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(Server {
            child,
            addr,
            admin,
            log,
        })
    }

    /// SIGKILL, and reap the process.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM; returns the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; asserts a clean exit and returns everything it logged.
    pub fn stop_log(self) -> String {
        let log = self.log.clone();
        let status = self.stop();
        assert!(status.success(), "serve exited with {status}");
        // Let the reader thread write the last lines.
        std::thread::sleep(Duration::from_millis(50));
        std::fs::read_to_string(log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A response read whole, or `None` when the connection failed (the server
/// was killed) or took longer than `timeout`.
pub async fn try_send(
    addr: SocketAddr,
    req: Request<Bytes>,
    timeout: Duration,
) -> Option<(StatusCode, Bytes)> {
    let req = super::to_addr(addr, req);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let fut = async {
        let r = client.request(req).await.ok()?;
        let status = r.status();
        let body = r.into_body().collect().await.ok()?.to_bytes();
        Some((status, body))
    };
    tokio::time::timeout(timeout, fut).await.ok().flatten()
}

pub fn login_request(user: &str, password: &str) -> Request<Bytes> {
    let body = serde_json::json!({"username": user, "password": password}).to_string();
    Request::post("/login")
        .header("content-type", "application/json")
        .body(Bytes::from(body))
        .unwrap()
}

pub fn logout_request(token: &str) -> Request<Bytes> {
    Request::post("/logout")
        .header("authorization", format!("Token {token}"))
        .body(Bytes::new())
        .unwrap()
}

pub fn get_request(path: &str, token: &str) -> Request<Bytes> {
    Request::get(path)
        .header("authorization", format!("Token {token}"))
        .body(Bytes::new())
        .unwrap()
}

/// The address a log line gives for `field`, in the text format
/// (`listen=ADDR`) or the JSON one (`"listen":"ADDR"`).
fn logged(line: &str, field: &str) -> Option<SocketAddr> {
    let text = line
        .split(&format!("{field}="))
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next());
    let json = || {
        line.split(&format!("\"{field}\":\""))
            .nth(1)
            .and_then(|rest| rest.split('"').next())
    };
    text.or_else(json)?.parse().ok()
}

/// Every path under `dir`, `dir` included, directories before their contents.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut all = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < all.len() {
        if all[i].is_dir() {
            for e in std::fs::read_dir(&all[i]).unwrap() {
                all.push(e.unwrap().path());
            }
        }
        i += 1;
    }
    all
}

/// Runs `cmd` with `input` on its stdin; its output.
pub fn feed(mut cmd: Command, input: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The command may fail before reading; a broken pipe is its answer.
    let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    child.wait_with_output().unwrap()
}

pub fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts a command failed and its stderr says `says`.
#[track_caller]
pub fn fails_saying(out: &Output, says: &str) {
    assert!(!out.status.success(), "succeeded: {}", stderr(out));
    assert!(
        stderr(out).contains(says),
        "{says:?} not in: {}",
        stderr(out)
    );
}

/// A small deterministic generator (SplitMix64) so a failing run can be
/// replayed from its printed seed without another dependency.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// A seed from `var` if set, else from the clock.
pub fn seed_from_env(var: &str) -> u64 {
    match std::env::var(var) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{var} must be a number")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    }
}
