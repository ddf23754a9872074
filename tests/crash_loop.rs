//! No acknowledged write is lost when the server is killed with SIGKILL.
//!
//! The real binary serves a store while a few workers drive a mixed load:
//! HTTP logins, logouts and token use, and admin-channel commands (`user
//! add/passwd/disable/enable/remove`, `token issue/revoke`). Each worker owns
//! its users, so its own history is sequential and it knows exactly what it
//! was told: every HTTP 200/204 and every CLI exit 0 is an acknowledgement.
//! The server is killed at a random moment, often with requests in flight,
//! and started again on the same store. After every restart the store must
//! open, every token a client holds must still reach the upstream, every
//! acknowledged logout and revocation must still hold, and `user list` must
//! show every acknowledged user change. An operation cut off by the kill was
//! not acknowledged: it may have happened or not, and the worker finds out
//! which before checking the rest.
//!
//! `cargo test --test crash_loop` runs a short loop (`TOKENGATE_CRASH_CYCLES`,
//! default 20). The long one: `TOKENGATE_CRASH_CYCLES=200 cargo test --release
//! --test crash_loop -- --ignored`. `TOKENGATE_CRASH_SEED` replays a run's
//! choices (operations and kill delays; thread timing is not replayed). On
//! failure the seed is printed and the directory with the store and the
//! server logs is kept.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::binary::{Env, Rng, Server};

const WORKERS: usize = 3;
const USERS_PER_WORKER: usize = 3;
/// A user holds at most this many live tokens; beyond, a login becomes a logout.
const MAX_LIVE: usize = 8;
/// Dead tokens re-checked after each restart, per user (the most recent).
const DEAD_KEPT: usize = 12;
/// The longest stretch of load between a start and the kill.
const MAX_LOAD: Duration = Duration::from_millis(700);
const HTTP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Default, Clone, Copy)]
struct Stats {
    logins: u64,
    logouts: u64,
    uses: u64,
    issued: u64,
    revoked: u64,
    passwd: u64,
    disabled: u64,
    enabled: u64,
    removed: u64,
    added: u64,
    refused_logins: u64,
    cut_off: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.logins += o.logins;
        self.logouts += o.logouts;
        self.uses += o.uses;
        self.issued += o.issued;
        self.revoked += o.revoked;
        self.passwd += o.passwd;
        self.disabled += o.disabled;
        self.enabled += o.enabled;
        self.removed += o.removed;
        self.added += o.added;
        self.refused_logins += o.refused_logins;
        self.cut_off += o.cut_off;
    }
}

struct Account {
    name: String,
    password: String,
    exists: bool,
    disabled: bool,
    /// Tokens a client holds that must work.
    live: Vec<String>,
    /// Tokens that must be refused: logged out, revoked, or ended by a
    /// password change, disable or removal.
    dead: Vec<String>,
    /// Bumped per password so every password is new.
    generation: u32,
}

impl Account {
    fn kill_all(&mut self) {
        let live = std::mem::take(&mut self.live);
        for t in live {
            self.bury(t);
        }
    }

    fn bury(&mut self, token: String) {
        self.dead.push(token);
        if self.dead.len() > DEAD_KEPT {
            self.dead.remove(0);
        }
    }

    fn next_password(&mut self) -> String {
        self.generation += 1;
        format!("pw-{}-{}", self.name, self.generation)
    }
}

/// An operation the kill cut off: it may or may not have happened.
#[derive(Debug)]
enum Pending {
    Logout { user: usize, token: String },
    Passwd { user: usize, password: String },
    Disable { user: usize },
    Enable { user: usize },
    Remove { user: usize },
    Add { user: usize, password: String },
}

struct Worker {
    rng: Rng,
    accounts: Vec<Account>,
    pending: Option<Pending>,
    stats: Stats,
}

/// What one step saw: acknowledged, cut off by the kill, or a real failure.
enum Seen<T> {
    Ack(T),
    CutOff,
}

struct Ctx<'a> {
    env: &'a Env,
    addr: std::net::SocketAddr,
    kills: &'a AtomicU64,
    seed: u64,
}

impl Ctx<'_> {
    /// Interprets a failure: cut off by the kill, or a bug.
    fn failed<T>(&self, before: u64, what: &str) -> Seen<T> {
        if self.kills.load(Ordering::SeqCst) != before {
            Seen::CutOff
        } else {
            panic!("seed {}: {what} failed while the server was up", self.seed)
        }
    }

    async fn http(
        &self,
        req: http::Request<bytes::Bytes>,
        what: &str,
    ) -> Seen<(http::StatusCode, bytes::Bytes)> {
        let before = self.kills.load(Ordering::SeqCst);
        match common::binary::try_send(self.addr, req, HTTP_TIMEOUT).await {
            Some(r) if r.0 != http::StatusCode::SERVICE_UNAVAILABLE => Seen::Ack(r),
            _ => self.failed(before, what),
        }
    }

    /// Runs a CLI command; `Ack(stdout)` on exit 0.
    async fn cli(&self, args: Vec<String>, stdin: Option<String>) -> Seen<String> {
        let before = self.kills.load(Ordering::SeqCst);
        let cmd = self.env.cmd(&[]);
        let out = tokio::task::spawn_blocking(move || {
            let mut cmd = cmd;
            // `env.cmd` put `-c FILE` first; the subcommand follows.
            cmd.args(&args);
            run_with_input(cmd, stdin)
        })
        .await
        .unwrap();
        if out.status.success() {
            Seen::Ack(String::from_utf8_lossy(&out.stdout).into_owned())
        } else if self.kills.load(Ordering::SeqCst) != before {
            Seen::CutOff
        } else {
            panic!(
                "seed {}: CLI command failed while the server was up: {}",
                self.seed,
                String::from_utf8_lossy(&out.stderr)
            )
        }
    }
}

fn run_with_input(mut cmd: std::process::Command, stdin: Option<String>) -> std::process::Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        let _ = child.stdin.take().unwrap().write_all(input.as_bytes());
    }
    child.wait_with_output().unwrap()
}

fn token_id(secret: &str) -> String {
    tokengate::store::token::Token::parse(secret)
        .expect("a token the server handed out parses")
        .digest()
        .id()
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

impl Worker {
    fn new(id: usize, seed: u64) -> Self {
        let accounts = (0..USERS_PER_WORKER)
            .map(|j| Account {
                name: format!("w{id}u{j}"),
                password: String::new(),
                exists: false,
                disabled: false,
                live: Vec::new(),
                dead: Vec::new(),
                generation: 0,
            })
            .collect();
        Self {
            rng: Rng::new(seed ^ (id as u64 + 1).wrapping_mul(0x9E37_79B9)),
            accounts,
            pending: None,
            stats: Stats::default(),
        }
    }

    /// Runs operations until the kill; returns when the one in flight ends.
    async fn run(&mut self, ctx: &Ctx<'_>) {
        while ctx.kills.load(Ordering::SeqCst) == 0 {
            let cut_off = self.step(ctx).await;
            if cut_off {
                self.stats.cut_off += 1;
                return;
            }
        }
    }

    /// One operation on one of this worker's users. True when it was cut off.
    /// Takes one of user `u`'s live tokens out of the model, pending until
    /// the request that ends it is acknowledged.
    fn end_one_token(&mut self, u: usize) -> String {
        let live = &mut self.accounts[u].live;
        let token = live.remove(self.rng.below(live.len() as u64) as usize);
        self.pending = Some(Pending::Logout {
            user: u,
            token: token.clone(),
        });
        token
    }

    /// A CLI change that ends every token of user `u`: `pending` until the
    /// CLI acknowledges it, then `apply` to the model. `true` when the
    /// command was cut off by the kill.
    async fn end_tokens(
        &mut self,
        ctx: &Ctx<'_>,
        u: usize,
        pending: Pending,
        (cmd, stdin): (Vec<String>, Option<String>),
        apply: impl FnOnce(&mut Account, &mut Stats),
    ) -> bool {
        self.pending = Some(pending);
        match ctx.cli(cmd, stdin).await {
            Seen::CutOff => true,
            Seen::Ack(_) => {
                self.pending = None;
                let a = &mut self.accounts[u];
                apply(a, &mut self.stats);
                a.kill_all();
                false
            }
        }
    }

    async fn step(&mut self, ctx: &Ctx<'_>) -> bool {
        let u = self.rng.below(self.accounts.len() as u64) as usize;
        let seed = ctx.seed;
        let a = &mut self.accounts[u];
        let name = a.name.clone();
        if !a.exists {
            let password = a.next_password();
            self.pending = Some(Pending::Add {
                user: u,
                password: password.clone(),
            });
            let cmd = args(&["user", "add", &name, "--password-stdin"]);
            return match ctx.cli(cmd, Some(format!("{password}\n"))).await {
                Seen::CutOff => true,
                Seen::Ack(_) => {
                    self.pending = None;
                    let a = &mut self.accounts[u];
                    a.exists = true;
                    a.disabled = false;
                    a.password = password;
                    self.stats.added += 1;
                    false
                }
            };
        }
        if a.disabled {
            if self.rng.chance(40) {
                // A disabled user's right password is refused.
                let req = common::binary::login_request(&name, &a.password);
                return match ctx.http(req, "login of a disabled user").await {
                    Seen::CutOff => true,
                    Seen::Ack((status, body)) => {
                        assert_eq!(
                            status, 401,
                            "seed {seed}: disabled {name} logged in: {body:?}"
                        );
                        self.stats.refused_logins += 1;
                        false
                    }
                };
            }
            self.pending = Some(Pending::Enable { user: u });
            return match ctx.cli(args(&["user", "enable", &name]), None).await {
                Seen::CutOff => true,
                Seen::Ack(_) => {
                    self.pending = None;
                    let a = &mut self.accounts[u];
                    a.disabled = false;
                    a.kill_all();
                    self.stats.enabled += 1;
                    false
                }
            };
        }
        let roll = self.rng.below(100);
        let has_live = !a.live.is_empty();
        match roll {
            // HTTP login.
            0..=29 if a.live.len() < MAX_LIVE => {
                let req = common::binary::login_request(&name, &a.password);
                match ctx.http(req, "login").await {
                    Seen::CutOff => true,
                    Seen::Ack((status, body)) => {
                        assert_eq!(status, 200, "seed {seed}: login of {name}: {body:?}");
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        let token = v["token"].as_str().unwrap().to_owned();
                        self.accounts[u].live.push(token);
                        self.stats.logins += 1;
                        false
                    }
                }
            }
            // Use a live token: it reaches the upstream as this user.
            30..=44 if has_live => {
                let i = self.rng.below(a.live.len() as u64) as usize;
                let token = a.live[i].clone();
                let req = common::binary::get_request("/api/thing", &token);
                match ctx.http(req, "request with a live token").await {
                    Seen::CutOff => true,
                    Seen::Ack((status, body)) => {
                        assert_eq!(
                            status, 200,
                            "seed {seed}: live token of {name} refused: {body:?}"
                        );
                        assert_reached_as(&body, &name, seed);
                        self.stats.uses += 1;
                        false
                    }
                }
            }
            // Logout (or, past the cap, instead of a login).
            0..=59 if has_live => {
                let token = self.end_one_token(u);
                match ctx
                    .http(common::binary::logout_request(&token), "logout")
                    .await
                {
                    Seen::CutOff => true,
                    Seen::Ack((status, body)) => {
                        assert_eq!(status, 204, "seed {seed}: logout of {name}: {body:?}");
                        self.pending = None;
                        self.accounts[u].bury(token);
                        self.stats.logouts += 1;
                        false
                    }
                }
            }
            // Token issue through the admin channel.
            60..=71 if a.live.len() < MAX_LIVE => {
                let cmd = args(&["token", "issue", &name, "--label", "crash loop"]);
                match ctx.cli(cmd, None).await {
                    Seen::CutOff => true,
                    Seen::Ack(out) => {
                        let token = out.lines().last().unwrap_or("").trim().to_owned();
                        assert!(
                            token.starts_with("tg_"),
                            "seed {seed}: token issue printed {out:?}"
                        );
                        self.accounts[u].live.push(token);
                        self.stats.issued += 1;
                        false
                    }
                }
            }
            // Token revoke by id.
            60..=79 if has_live => {
                let token = self.end_one_token(u);
                match ctx
                    .cli(args(&["token", "revoke", &token_id(&token)]), None)
                    .await
                {
                    Seen::CutOff => true,
                    Seen::Ack(_) => {
                        self.pending = None;
                        self.accounts[u].bury(token);
                        self.stats.revoked += 1;
                        false
                    }
                }
            }
            80..=87 => {
                let password = a.next_password();
                let pending = Pending::Passwd {
                    user: u,
                    password: password.clone(),
                };
                let cmd = args(&["user", "passwd", &name, "--password-stdin"]);
                let stdin = Some(format!("{password}\n"));
                self.end_tokens(ctx, u, pending, (cmd, stdin), |a, stats| {
                    a.password = password;
                    stats.passwd += 1;
                })
                .await
            }
            88..=94 => {
                let cmd = args(&["user", "disable", &name]);
                let pending = Pending::Disable { user: u };
                self.end_tokens(ctx, u, pending, (cmd, None), |a, stats| {
                    a.disabled = true;
                    stats.disabled += 1;
                })
                .await
            }
            95..=99 => {
                let cmd = args(&["user", "remove", &name]);
                let pending = Pending::Remove { user: u };
                self.end_tokens(ctx, u, pending, (cmd, None), |a, stats| {
                    a.exists = false;
                    stats.removed += 1;
                })
                .await
            }
            // A branch whose condition failed (no live token, or at the cap):
            // a request without effect keeps the step count honest.
            _ => false,
        }
    }
}

fn assert_reached_as(body: &[u8], user: &str, seed: u64) {
    let seen: common::Seen = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("seed {seed}: not the echo upstream ({e}): {body:?}"));
    assert_eq!(
        seen.header("x-auth-user"),
        Some(user),
        "seed {seed}: forwarded as the wrong user"
    );
}

#[derive(serde::Deserialize)]
struct ListedUser {
    username: String,
    disabled: bool,
}

async fn user_list(env: &Env, seed: u64) -> HashMap<String, bool> {
    let cmd = env.cmd(&["user", "list", "--json"]);
    let out = tokio::task::spawn_blocking(move || run_with_input(cmd, None))
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "seed {seed}: user list failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users: Vec<ListedUser> = serde_json::from_slice(&out.stdout).unwrap();
    users
        .into_iter()
        .map(|u| (u.username, u.disabled))
        .collect()
}

async fn status_of(
    addr: std::net::SocketAddr,
    req: http::Request<bytes::Bytes>,
) -> (u16, bytes::Bytes) {
    let (status, body) = common::binary::try_send(addr, req, HTTP_TIMEOUT)
        .await
        .expect("the restarted server answers");
    (status.as_u16(), body)
}

/// After a restart: settle what the kill cut off, then check everything
/// every worker was told.
async fn settle_and_verify(
    workers: &mut [Worker],
    env: &Env,
    addr: std::net::SocketAddr,
    seed: u64,
) {
    let listed = user_list(env, seed).await;
    for w in workers.iter_mut() {
        let Some(pending) = w.pending.take() else {
            continue;
        };
        match pending {
            Pending::Logout { user, token } => {
                let a = &mut w.accounts[user];
                match status_of(addr, common::binary::get_request("/", &token))
                    .await
                    .0
                {
                    200 => a.live.push(token),
                    401 => a.bury(token),
                    s => panic!("seed {seed}: token after a cut-off revocation: {s}"),
                }
            }
            Pending::Passwd { user, password } => {
                let a = &mut w.accounts[user];
                let (status, body) =
                    status_of(addr, common::binary::login_request(&a.name, &password)).await;
                match status {
                    200 => {
                        a.password = password;
                        a.kill_all();
                        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                        a.live.push(v["token"].as_str().unwrap().to_owned());
                    }
                    401 => {}
                    s => panic!("seed {seed}: login after a cut-off passwd: {s}"),
                }
            }
            Pending::Disable { user } => {
                let a = &mut w.accounts[user];
                if listed.get(&a.name) == Some(&true) {
                    a.disabled = true;
                    a.kill_all();
                }
            }
            Pending::Enable { user } => {
                let a = &mut w.accounts[user];
                if listed.get(&a.name) == Some(&false) {
                    a.disabled = false;
                    a.kill_all();
                }
            }
            Pending::Remove { user } => {
                let a = &mut w.accounts[user];
                if !listed.contains_key(&a.name) {
                    a.exists = false;
                    a.kill_all();
                }
            }
            Pending::Add { user, password } => {
                let a = &mut w.accounts[user];
                if listed.contains_key(&a.name) {
                    a.exists = true;
                    a.disabled = false;
                    a.password = password;
                }
            }
        }
    }

    // Every acknowledged user change is there, and nothing else.
    let mut expected = HashMap::new();
    for a in workers.iter().flat_map(|w| &w.accounts) {
        if a.exists {
            expected.insert(a.name.clone(), a.disabled);
        }
    }
    assert_eq!(
        listed, expected,
        "seed {seed}: users after restart (name → disabled)"
    );

    // Every live token works, every dead one is refused.
    let mut checks = Vec::new();
    for a in workers.iter().flat_map(|w| &w.accounts) {
        for t in &a.live {
            checks.push((a.name.clone(), t.clone(), true));
        }
        for t in &a.dead {
            checks.push((a.name.clone(), t.clone(), false));
        }
    }
    for chunk in checks.chunks(16) {
        let answers = futures_util::future::join_all(
            chunk
                .iter()
                .map(|(_, t, _)| status_of(addr, common::binary::get_request("/check", t))),
        )
        .await;
        for ((name, token, live), (status, body)) in chunk.iter().zip(answers) {
            if *live {
                assert_eq!(
                    status,
                    200,
                    "seed {seed}: LOST: a token of {name} ({}) no longer works after restart: {body:?}",
                    token_id(token)
                );
                assert_reached_as(&body, name, seed);
            } else {
                assert_eq!(
                    status,
                    401,
                    "seed {seed}: LOST: an ended token of {name} ({}) works again after restart",
                    token_id(token)
                );
            }
        }
    }
}

/// Keeps the directory (store and logs) when the test fails.
struct Evidence {
    env: Option<Env>,
    seed: u64,
}

impl Drop for Evidence {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(env) = self.env.take()
        {
            let kept = env.dir.keep();
            eprintln!(
                "crash loop failed: seed {} (replay with TOKENGATE_CRASH_SEED={}); store and logs kept in {}",
                self.seed,
                self.seed,
                kept.display()
            );
        }
    }
}

async fn crash_loop(cycles: usize) {
    let seed = common::binary::seed_from_env("TOKENGATE_CRASH_SEED");
    eprintln!("crash loop: {cycles} cycles, seed {seed}");
    let upstream = common::echo_upstream().await;
    let config = common::config_text(
        &format!("http://{}", upstream.addr),
        "[throttle]\nenabled = false\n",
    );
    let evidence = Evidence {
        env: Some(Env::new(&config)),
        seed,
    };
    let env = evidence.env.as_ref().unwrap();
    let mut rng = Rng::new(seed);
    let mut workers: Vec<Worker> = (0..WORKERS).map(|i| Worker::new(i, seed)).collect();
    let started = Instant::now();
    let mut server =
        Server::start(env).unwrap_or_else(|f| panic!("seed {seed}: first start: {f:?}"));
    let mut start_times = Vec::new();
    for cycle in 0..cycles {
        settle_and_verify(&mut workers, env, server.addr, seed).await;

        let kills = AtomicU64::new(0);
        let ctx = Ctx {
            env,
            addr: server.addr,
            kills: &kills,
            seed,
        };
        // Now and then the kill comes before any load at all.
        let delay = if rng.chance(10) {
            Duration::ZERO
        } else {
            Duration::from_millis(rng.below(MAX_LOAD.as_millis() as u64))
        };
        let killer = async {
            tokio::time::sleep(delay).await;
            kills.fetch_add(1, Ordering::SeqCst);
            server.kill9();
        };
        let load = futures_util::future::join_all(workers.iter_mut().map(|w| w.run(&ctx)));
        tokio::join!(killer, load);

        let t = Instant::now();
        server = Server::start(env).unwrap_or_else(|f| {
            panic!(
                "seed {seed}: the store did not open after kill {}: {f:?}",
                cycle + 1
            )
        });
        start_times.push(t.elapsed());
    }
    settle_and_verify(&mut workers, env, server.addr, seed).await;
    let status = server.stop();
    assert!(status.success(), "seed {seed}: serve exited with {status}");

    // The store opens in-process too, and lists every live token.
    let store = tokengate::store::Store::open(&env.store_path()).expect("store opens");
    let ids: std::collections::HashSet<String> = store
        .tokens(None)
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    for a in workers.iter().flat_map(|w| &w.accounts) {
        for t in &a.live {
            assert!(
                ids.contains(&token_id(t)),
                "seed {seed}: token of {} missing from the store",
                a.name
            );
        }
    }

    let mut total = Stats::default();
    for w in &workers {
        total.add(&w.stats);
    }
    start_times.sort();
    eprintln!(
        "crash loop: {cycles} SIGKILLs in {:.1?}, seed {seed}; acknowledged: {total:?}; restart to ready: median {:?}, max {:?}",
        started.elapsed(),
        start_times
            .get(start_times.len() / 2)
            .copied()
            .unwrap_or_default(),
        start_times.last().copied().unwrap_or_default(),
    );
}

fn cycles(default: usize) -> usize {
    std::env::var("TOKENGATE_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_writes_survive_sigkill() {
    crash_loop(cycles(20)).await;
}

/// The long mode: `TOKENGATE_CRASH_CYCLES=200 cargo test --release --test
/// crash_loop -- --ignored`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: run with --ignored (TOKENGATE_CRASH_CYCLES, default 200)"]
async fn acknowledged_writes_survive_sigkill_long() {
    crash_loop(cycles(200)).await;
}
