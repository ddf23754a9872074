//! The `tokengate` command line: flags parsed by clap, then handed to the
//! library. `main` only prints the error chain and sets the exit code.

use std::io::{BufRead, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

use crate::auth::password::{Hasher, Password};
use crate::config::{Config, units};
use crate::request::scope::Scope;
use crate::store::control::{Backend, Op, Reply, TokenView, UserView};
use crate::store::token::Token;
use crate::store::{Opener, Store};
use crate::time::rfc3339;

#[derive(Debug, Parser)]
#[command(
    name = "tokengate",
    version,
    about = "An authentication gateway for HTTP APIs"
)]
struct Cli {
    /// Config file [default: $TOKENGATE_CONFIG, else ./tokengate.toml]
    #[arg(
        short = 'c',
        long = "config",
        global = true,
        env = "TOKENGATE_CONFIG",
        value_name = "FILE"
    )]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (foreground, logs to stderr)
    Serve,
    /// Validate the config and print the effective config
    Check,
    /// Exit 0 when the running gateway is ready (for Docker HEALTHCHECK)
    Healthcheck,
    /// Manage users
    #[command(subcommand)]
    User(UserCommand),
    /// Manage API tokens
    #[command(subcommand)]
    Token(TokenCommand),
    /// See and lift login bans (held by the running gateway)
    #[command(subcommand)]
    Throttle(ThrottleCommand),
    /// Bring users, passwords and tokens in from another system
    #[command(subcommand)]
    Import(ImportCommand),
    /// Write a consistent snapshot of the store to FILE (server running or not)
    Backup { file: PathBuf },
    /// Load a snapshot into an empty store
    Restore { file: PathBuf },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user
    Add {
        /// The user's name
        name: String,
        /// A role for `[[rules]]`; repeat for several
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// Read the password from one line of standard input
        #[arg(long, conflicts_with = "no_password")]
        password_stdin: bool,
        /// A service user: no password, `/login` never succeeds for it;
        /// its tokens come from `token issue`
        #[arg(long)]
        no_password: bool,
    },
    /// Change a user's password (ends all of their tokens)
    Passwd {
        /// The user's name
        name: String,
        /// Read the new password from one line of standard input
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user and all of their tokens
    Remove {
        /// The user's name
        name: String,
    },
    /// Disable a user (ends all of their tokens)
    Disable {
        /// The user's name
        name: String,
    },
    /// Enable a disabled user
    Enable {
        /// The user's name
        name: String,
    },
    /// Replace a user's roles (their tokens stay; the new roles apply from
    /// the next request, and their open tunnels close)
    Roles {
        /// The user's name
        name: String,
        /// The new role; repeat for several; none at all clears them
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
    },
    /// List users
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// Users, groups, passwords and DRF/knox tokens from `python manage.py
    /// dumpdata auth.group auth.user authtoken.token knox.authtoken`
    Django {
        /// The dumpdata JSON file; `-` reads standard input
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum ThrottleCommand {
    /// List the addresses and usernames banned from logging in, and until when
    List {
        #[arg(long)]
        json: bool,
    },
    /// Lift the ban (and forget the failed logins) of an address or a username
    Unban {
        /// An IP address, or a username
        #[arg(value_name = "ADDRESS|USERNAME")]
        who: String,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Mint a token without a login; prints it once, alone on the last line
    Issue {
        /// The user's name
        name: String,
        /// Lifetime such as "90d"; "0s" = never expires [default: auth.token_ttl]
        #[arg(long)]
        ttl: Option<String>,
        /// A note shown by `token list` (what the token is for), up to 200
        /// characters
        #[arg(long)]
        label: Option<String>,
        /// Limit the token to requests matching "METHODS PATTERN", e.g.
        /// "GET /reports/**" or "GET,POST /orders/*" (METHODS may be *);
        /// repeat for several. Without: all of the user's rights
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
    },
    /// List tokens (never their secrets)
    List {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Revoke one token by id, all of a user's with --user, or the one
    /// whose secret is on standard input with --secret
    #[command(group(clap::ArgGroup::new("which").required(true).args(["id", "user", "secret"])))]
    Revoke {
        /// The token's id, as `token list` shows it
        id: Option<String>,
        /// Every token of this user
        #[arg(long, value_name = "NAME")]
        user: Option<String>,
        /// Read the token itself from standard input (a leaked token whose
        /// id you do not know)
        #[arg(long)]
        secret: bool,
    },
}

pub fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    let path = crate::config::locate(cli.config.as_deref());
    let env = |key: &str| std::env::var(key).ok();
    match cli.command {
        Command::Check => {
            let text = std::fs::read_to_string(&path).map_err(|source| {
                crate::config::ConfigError::Read {
                    path: path.clone(),
                    source,
                }
            })?;
            let mut config = Config::from_toml(&text, &path, env)?;
            if let Some(files) = &config.server.tls {
                crate::tls::acceptor(files)?;
            }
            print!("{}", Config::effective_toml(&text, &path, env)?);
            // What `serve` would do under this process's limit, raised.
            let limit = crate::server::openfiles::current().hard;
            let (fit, explained) = crate::server::openfiles::apply(&mut config, limit);
            if let Some(text) = explained {
                if fit == crate::server::openfiles::Fit::NoRoom {
                    bail!("{}: serve would refuse to start: {text}", path.display());
                }
                eprintln!(
                    "{}: note: serve under this shell's limits: {text}",
                    path.display()
                );
            }
            if let Some(portal) = &config.portal {
                eprintln!(
                    "{}: note: {} and every path below it are the token page's, never forwarded to the upstream",
                    path.display(),
                    portal.path
                );
            }
            eprintln!("{}: OK", path.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Healthcheck => {
            let config = Config::load(&path, env)?;
            healthcheck(&config)
        }
        Command::Serve => {
            let config = Config::load(&path, env)?;
            serve(config)
        }
        Command::User(cmd) => {
            let config = Config::load(&path, env)?;
            user(&config, cmd)
        }
        Command::Token(cmd) => {
            let config = Config::load(&path, env)?;
            token(&config, cmd)
        }
        Command::Throttle(cmd) => {
            let config = Config::load(&path, env)?;
            throttle(&config, cmd)
        }
        Command::Import(ImportCommand::Django { file }) => {
            let config = Config::load(&path, env)?;
            import_django(&config, &file)
        }
        Command::Backup { file } => {
            let config = Config::load(&path, env)?;
            let file = absolute(&file)?;
            let reply = backend(&config)?.run(Op::Backup { path: file.clone() })?;
            let Reply::Entries { count } = reply else {
                bail!("unexpected reply from the server: {reply:?}");
            };
            eprintln!("{count} entries written to {}", file.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore { file } => {
            let config = Config::load(&path, env)?;
            let file = absolute(&file)?;
            let reply = backend(&config)?.run(Op::Restore { path: file.clone() })?;
            let Reply::Entries { count } = reply else {
                bail!("unexpected reply from the server: {reply:?}");
            };
            eprintln!("{count} entries restored from {}", file.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(config: &Config) {
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = match std::env::var("RUST_LOG") {
        Ok(value) if !value.is_empty() => tracing_subscriber::EnvFilter::new(value),
        _ => tracing_subscriber::EnvFilter::new(&config.log.level),
    };
    // tracing-subscriber's `fmt` output, with the access line formatted by
    // the access log itself (it cost a sixth of a proxied request).
    crate::observe::accesslog::subscriber(filter, config.log.format, std::io::stderr).init();
}

fn serve(mut config: Config) -> anyhow::Result<ExitCode> {
    init_logging(&config);
    fit_open_files(&mut config)?;
    let config = Arc::new(config);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        // Oldest first. Past 256 runnable tasks on a worker (an HTTP/2
        // client with many streams in flight: hyper runs each stream as
        // a task), the oldest half moves to the global queue, which by
        // default is looked at only every few dozen polls: those requests
        // waited while newer ones went ahead. Looking first costs an
        // atomic load when it is empty (docs/benchmarks.md).
        .global_queue_interval(1)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        // Handlers first: until one exists, a SIGTERM or SIGHUP kills the
        // process outright (a supervisor stopping a server that is starting).
        let shutdown = shutdown_signal();
        let (reload_tx, reloads) = tokio::sync::mpsc::channel(4);
        let reloader = reload_on_sighup(config.source.clone(), reload_tx);
        let store = Store::connect(&config.store, Opener::Server).map_err(|e| match e {
            crate::store::StoreError::Locked { path } => anyhow::anyhow!(
                "another process holds the store at {} (a `tokengate serve` already running?); stop it first, or give this server its own store.path in {}",
                path.display(),
                config.source.display()
            ),
            e => e.into(),
        })?;
        let listener = tokio::net::TcpListener::bind(config.server.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {} (server.listen in {}); is another process using it?",
                    config.server.listen,
                    config.source.display()
                )
            })?;
        let admin = match &config.admin {
            None => None,
            Some(admin) => Some(tokio::net::TcpListener::bind(admin.listen).await.with_context(|| {
                format!(
                    "cannot listen on {} (admin.listen in {}); is another process using it?",
                    admin.listen,
                    config.source.display()
                )
            })?),
        };
        if let Some(admin) = &admin {
            tracing::info!(admin = %admin.local_addr()?, "admin listener: /healthz /readyz /metrics");
        }
        let addr = listener.local_addr()?;
        tracing::info!(
            listen = %addr,
            upstream = %format!("{}://{}{}", config.upstream.scheme, config.upstream.authority, config.upstream.base_path),
            store = %config.store.describe(),
            "tokengate listening"
        );
        let listeners = crate::Listeners {
            gateway: listener,
            admin,
        };
        tokio::spawn(reloader);
        crate::run_with(listeners, config.clone(), store, Some(reloads), shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Raises the open-file limit and fits `server.max_connections` under it,
/// so that accept never fails for want of a descriptor.
fn fit_open_files(config: &mut Config) -> anyhow::Result<()> {
    use crate::server::openfiles::{self, Fit};
    let (before, error) = openfiles::raise();
    let limit = openfiles::current().soft;
    match error {
        Some(e) => {
            tracing::warn!(error = %e, soft = ?before.soft, hard = ?before.hard, "cannot raise the open-file limit")
        }
        None if limit != before.soft => {
            tracing::info!(from = ?before.soft, to = ?limit, "open-file limit raised")
        }
        None => {}
    }
    match openfiles::apply(config, limit) {
        (Fit::NoRoom, Some(text)) => bail!("{text}"),
        (Fit::Lowered { to }, Some(text)) => tracing::warn!(max_connections = to, "{text}"),
        _ => {}
    }
    Ok(())
}

/// Re-reads the config on each SIGHUP; a file that fails validation is
/// logged with every problem and changes nothing.
/// The handler is installed on the call, the reloading runs when awaited.
fn reload_on_sighup(
    path: PathBuf,
    reloads: tokio::sync::mpsc::Sender<Config>,
) -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let hup = signal(SignalKind::hangup());
    async move {
        let Ok(mut hup) = hup else {
            tracing::error!("cannot install the SIGHUP handler; reloads are unavailable");
            return;
        };
        while hup.recv().await.is_some() {
            tracing::info!(config = %path.display(), "SIGHUP received: reloading");
            match Config::load(&path, |key| std::env::var(key).ok()) {
                Ok(mut config) => {
                    // Fitted as at start, so the cap compares equal and
                    // the reload does not warn of a change.
                    crate::server::openfiles::apply(
                        &mut config,
                        crate::server::openfiles::current().soft,
                    );
                    if reloads.send(config).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "reload refused; the previous configuration stays in force")
                }
            }
        }
    }
}

/// The handlers are installed on the call, the waiting is done when awaited.
fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    }
}

/// With `[admin]`: `GET /readyz` must answer 200. Without: the gateway's own
/// port must answer HTTP at all (any status; a 401 proves it is serving).
fn healthcheck(config: &Config) -> anyhow::Result<ExitCode> {
    use std::io::Read;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
    use std::time::Duration;
    let (mut addr, path, need_ok) = match &config.admin {
        Some(admin) => (admin.listen, "/readyz", true),
        None => (config.server.listen, "/", false),
    };
    // A wildcard listen address is reached on loopback.
    if addr.ip().is_unspecified() {
        let ip = match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        };
        addr = SocketAddr::new(ip, addr.port());
    }
    let timeout = Duration::from_secs(3);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("not healthy: cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head)?;
    let line = String::from_utf8_lossy(&head[..n]);
    let status: Option<u16> = line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok());
    match status {
        Some(200) => Ok(ExitCode::SUCCESS),
        Some(_) if !need_ok => Ok(ExitCode::SUCCESS),
        Some(code) => bail!("not healthy: {addr}{path} answered {code}"),
        None => bail!("not healthy: {addr} did not answer HTTP"),
    }
}

/// The server may run in another working directory: send it absolute paths.
fn absolute(path: &std::path::Path) -> anyhow::Result<PathBuf> {
    std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))
}

fn backend(config: &Config) -> anyhow::Result<Backend> {
    Ok(Backend::for_config(&config.store)?)
}

fn user(config: &Config, cmd: UserCommand) -> anyhow::Result<ExitCode> {
    let backend = backend(config)?;
    let exists = |name: &str| -> anyhow::Result<(bool, bool)> {
        match backend.run(Op::UserExists {
            name: name.to_owned(),
        })? {
            Reply::Exists { exists, disabled } => Ok((exists, disabled)),
            other => bail!("unexpected reply from the server: {other:?}"),
        }
    };
    match cmd {
        UserCommand::Add {
            name,
            roles,
            password_stdin,
            no_password,
        } => {
            crate::store::validate_username(&name)?;
            for role in &roles {
                crate::store::validate_role(role)?;
            }
            if exists(&name)?.0 {
                bail!(
                    "user `{name}` already exists; use `tokengate user passwd {name}` to change the password"
                );
            }
            let password_hash = if no_password {
                crate::store::NO_PASSWORD.to_owned()
            } else {
                let password = read_password(password_stdin)?;
                Hasher::new(config.auth.argon2)?.hash_now(&password)?
            };
            backend.run(Op::UserAdd {
                name: name.clone(),
                roles,
                password_hash,
            })?;
            if no_password {
                eprintln!(
                    "service user `{name}` added: it cannot log in; give it tokens with `tokengate token issue {name}`"
                );
            } else {
                eprintln!("user `{name}` added");
            }
        }
        UserCommand::Passwd {
            name,
            password_stdin,
        } => {
            if !exists(&name)?.0 {
                bail!("no user named `{name}`");
            }
            let password = read_password(password_stdin)?;
            let password_hash = Hasher::new(config.auth.argon2)?.hash_now(&password)?;
            backend.run(Op::UserPasswd {
                name: name.clone(),
                password_hash,
            })?;
            eprintln!("password of `{name}` changed; all of their tokens are revoked");
        }
        UserCommand::Remove { name } => {
            backend.run(Op::UserRemove { name: name.clone() })?;
            eprintln!("user `{name}` removed with all of their tokens");
        }
        UserCommand::Disable { name } => {
            backend.run(Op::UserSetDisabled {
                name: name.clone(),
                disabled: true,
            })?;
            eprintln!("user `{name}` disabled; all of their tokens are revoked");
        }
        UserCommand::Enable { name } => {
            backend.run(Op::UserSetDisabled {
                name: name.clone(),
                disabled: false,
            })?;
            eprintln!("user `{name}` enabled");
        }
        UserCommand::Roles { name, roles } => {
            for role in &roles {
                crate::store::validate_role(role)?;
            }
            backend.run(Op::UserRoles {
                name: name.clone(),
                roles: roles.clone(),
            })?;
            if roles.is_empty() {
                eprintln!("user `{name}` now has no roles");
            } else {
                eprintln!("user `{name}` now has roles {}", roles.join(", "));
            }
        }
        UserCommand::List { json } => match backend.run(Op::UserList)? {
            Reply::Users { users } => print_users(&users, json)?,
            other => bail!("unexpected reply from the server: {other:?}"),
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn import_django(config: &Config, file: &Path) -> anyhow::Result<ExitCode> {
    let text = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("cannot read the dumpdata from standard input")?;
        text
    } else {
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?
    };
    // Every entry checked before anything is written.
    let plan = crate::import::plan(&text)?;
    let backend = backend(config)?;
    let reply = backend.run(Op::Import {
        users: plan.users.iter().map(|u| u.user.clone()).collect(),
        tokens: plan.tokens.clone(),
    })?;
    let Reply::Imported(done) = reply else {
        bail!("unexpected reply from the server: {reply:?}");
    };
    let mut err = std::io::stderr().lock();
    let disabled = plan
        .users
        .iter()
        .filter(|u| u.user.disabled && done.added.contains(&u.user.username))
        .count();
    let count = |label: &str| done.tokens.get(label).copied().unwrap_or(0);
    writeln!(
        err,
        "imported {} user(s) ({disabled} disabled) and {} token(s) ({} django, {} knox)",
        done.added.len(),
        count("django") + count("knox"),
        count("django"),
        count("knox"),
    )?;
    if !done.kept.is_empty() {
        let left = plan
            .tokens
            .iter()
            .filter(|t| done.kept.contains(&t.username))
            .count();
        writeln!(
            err,
            "kept {} user(s) already in the store, unchanged, and did not import their {left} token(s): {}",
            done.kept.len(),
            done.kept.join(", ")
        )?;
    }
    let added = |u: &&crate::import::ImportUser| done.added.contains(&u.user.username);
    let unusable: Vec<String> = plan
        .users
        .iter()
        .filter(added)
        .filter_map(|u| {
            u.unusable
                .as_ref()
                .map(|why| format!("{} ({why})", u.user.username))
        })
        .collect();
    if !unusable.is_empty() {
        writeln!(
            err,
            "{} user(s) imported without a usable password (set one with `tokengate user passwd NAME`): {}",
            unusable.len(),
            unusable.join(", ")
        )?;
    }
    let dropped: Vec<String> = plan
        .users
        .iter()
        .filter(added)
        .flat_map(|u| {
            u.dropped_roles
                .iter()
                .map(move |r| format!("{r} of {}", u.user.username))
        })
        .collect();
    if !dropped.is_empty() {
        writeln!(
            err,
            "group names that are not valid roles, left out: {}",
            dropped.join(", ")
        )?;
    }
    if !plan.ignored.is_empty() {
        let ignored: Vec<String> = plan
            .ignored
            .iter()
            .map(|(model, n)| format!("{model} ({n})"))
            .collect();
        writeln!(err, "models ignored: {}", ignored.join(", "))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn throttle(config: &Config, cmd: ThrottleCommand) -> anyhow::Result<ExitCode> {
    let backend = backend(config)?;
    match cmd {
        ThrottleCommand::List { json } => {
            let reply = backend.run(Op::ThrottleList)?;
            let Reply::Bans { bans } = reply else {
                bail!("unexpected reply from the server: {reply:?}");
            };
            let mut out = std::io::stdout().lock();
            if json {
                let list: Vec<_> = bans
                    .iter()
                    .map(|b| serde_json::json!({"who": b.who, "until": rfc3339(b.until)}))
                    .collect();
                writeln!(out, "{}", serde_json::Value::Array(list))?;
            } else if bans.is_empty() {
                writeln!(out, "no bans")?;
            } else {
                writeln!(out, "{:<40} UNTIL", "ADDRESS OR USERNAME")?;
                for b in &bans {
                    writeln!(out, "{:<40} {}", b.who, rfc3339(b.until))?;
                }
            }
        }
        ThrottleCommand::Unban { who } => {
            backend.run(Op::ThrottleUnban { who: who.clone() })?;
            eprintln!("`{who}` may log in again");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn token(config: &Config, cmd: TokenCommand) -> anyhow::Result<ExitCode> {
    let backend = backend(config)?;
    match cmd {
        TokenCommand::Issue {
            name,
            ttl,
            label,
            scopes,
        } => {
            // Refused here with the reason, before anything is stored.
            let scopes: Vec<String> = Scope::parse_all(&scopes)
                .map_err(|e| anyhow::anyhow!("--scope: {e}"))?
                .iter()
                .map(Scope::to_string)
                .collect();
            let ttl = match ttl {
                None => config.auth.token_ttl,
                Some(text) => {
                    let d =
                        units::parse_duration(&text).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
                    (!d.is_zero()).then_some(d)
                }
            };
            let reply = backend.run(Op::TokenIssue {
                name: name.clone(),
                ttl_secs: ttl.map(|d| d.as_secs().max(1)),
                label,
                scopes,
            })?;
            let Reply::Issued {
                token,
                id,
                expires_at,
            } = reply
            else {
                bail!("unexpected reply from the server: {reply:?}");
            };
            eprintln!(
                "token {id} for `{name}`, expires {}; it is shown only this once:",
                expires_at.map_or("never".into(), rfc3339)
            );
            println!("{token}");
        }
        TokenCommand::List { user, json } => match backend.run(Op::TokenList { user })? {
            Reply::Tokens { tokens } => print_tokens(&tokens, json)?,
            other => bail!("unexpected reply from the server: {other:?}"),
        },
        TokenCommand::Revoke { id, user, secret } => match (id, user, secret) {
            (Some(id), None, false) => {
                backend.run(Op::TokenRevoke { id: id.clone() })?;
                eprintln!("token {id} revoked");
            }
            (None, Some(user), false) => {
                let reply = backend.run(Op::TokenRevokeUser { name: user.clone() })?;
                let Reply::Revoked { count } = reply else {
                    bail!("unexpected reply from the server: {reply:?}");
                };
                eprintln!("{count} token(s) of `{user}` revoked");
            }
            (None, None, true) => {
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("cannot read the token from standard input")?;
                let text = line.trim();
                let digest = Token::digest_of(text).ok_or_else(|| {
                anyhow::anyhow!(
                    "standard input does not hold a tokengate token (tg_ followed by 49 characters, checksum intact)"
                )
            })?;
                backend.run(Op::TokenRevokeDigest {
                    digest: digest.to_hex(),
                })?;
                eprintln!("token {} revoked", digest.id());
            }
            _ => bail!("give one of a token id, --user NAME or --secret"),
        },
    }
    Ok(ExitCode::SUCCESS)
}

fn read_password(from_stdin: bool) -> anyhow::Result<Password> {
    let password = if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from standard input")?;
        let trimmed = line.strip_suffix('\n').unwrap_or(&line);
        let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
        Password::new(trimmed.to_owned())
    } else if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("cannot read the password")?;
        let second =
            rpassword::prompt_password("Password (again): ").context("cannot read the password")?;
        if first != second {
            bail!("the passwords do not match");
        }
        Password::new(first)
    } else {
        bail!("no terminal to ask for a password; pass --password-stdin and pipe it in");
    };
    password.validate_new()?;
    Ok(password)
}

fn print_users(users: &[UserView], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<_> = users
            .iter()
            .map(|u| {
                serde_json::json!({
                    "username": u.username,
                    "roles": u.roles,
                    "disabled": u.disabled,
                    "password": u.password,
                    "created_at": rfc3339(u.created_at),
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(list))?;
    } else {
        writeln!(
            out,
            "{:<24} {:<9} {:<21} ROLES",
            "USERNAME", "DISABLED", "CREATED"
        )?;
        for u in users {
            writeln!(
                out,
                "{:<24} {:<9} {:<21} {}",
                u.username,
                if u.disabled { "yes" } else { "no" },
                rfc3339(u.created_at),
                u.roles.join(",")
            )?;
        }
    }
    Ok(())
}

fn print_tokens(tokens: &[TokenView], json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        let list: Vec<_> = tokens
            .iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id,
                    "user": t.user,
                    "label": t.label,
                    "created_at": rfc3339(t.created_at),
                    "expires_at": t.expires_at.map(rfc3339),
                    "last_used_at": t.last_used_at.map(rfc3339),
                    "scopes": t.scopes,
                })
            })
            .collect();
        writeln!(out, "{}", serde_json::Value::Array(list))?;
    } else {
        writeln!(
            out,
            "{:<16}  {:<20} {:<21} {:<21} {:<21} LABEL",
            "ID", "USER", "CREATED", "EXPIRES", "LAST USED"
        )?;
        for t in tokens {
            writeln!(
                out,
                "{:<16}  {:<20} {:<21} {:<21} {:<21} {}",
                t.id,
                t.user,
                rfc3339(t.created_at),
                t.expires_at.map_or("never".into(), rfc3339),
                t.last_used_at.map_or("never".into(), rfc3339),
                t.label.as_deref().unwrap_or("")
            )?;
            for scope in &t.scopes {
                writeln!(out, "{:<16}  scope {scope}", "")?;
            }
        }
    }
    Ok(())
}
