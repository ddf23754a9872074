//! tokengate: an authentication gateway in front of an HTTP API that has
//! none. It serves `POST /login`, keeps users and tokens in sled, checks
//! `Authorization: Token <key>` on every other request, and streams what it
//! lets through to one upstream with the caller's identity in a header.
//!
//! A request flows one way through these modules:
//!
//! - [`server`]: accepts connections, serves HTTP/1.1 and h2c, drains on
//!   shutdown; [`timer`] keeps the header-read deadlines, [`idle`] tells
//!   when an HTTP/2 connection has had no stream for as long
//! - [`gateway`]: the pipeline — target check, login/logout, authenticate, authorize, forward, log
//! - [`canonical`]: the one canonical form of a path that every decision uses
//! - [`login`]: the login endpoint (the only body the gateway reads), rate-limited by [`throttle`]
//! - [`auth`]: `Authorization` header → [`store::Identity`], through [`tokencache`]
//! - [`policy`]: public paths and `[[rules]]` roles, over [`pattern`]s
//! - [`headers`]: pure header operations on forwarded requests and responses
//! - [`upstream`]: connects (http or https, names via [`resolve`]) and sends
//!   over keep-alive connections from [`pool`], each driven by the request
//!   using it ([`connection`]), timeouts → 502/504;
//!   [`tunnel`] splices WebSocket upgrades
//! - [`response`]: every rejection and the one function that renders it
//! - [`accesslog`]: the line per request, written when the response body ends
//!   (bytes actually sent) or the client goes away
//!
//! Beside it: [`config`] (TOML → validated types), [`store`] (sled),
//! [`control`] (the local admin channel the CLI uses while the server runs),
//! [`backup`] (snapshots of the store), [`files`] (the store directory's
//! modes and owner, backups' private temporary files),
//! [`openfiles`] (the file-descriptor budget that `serve` fits
//! `max_connections` under), [`token`] (format, checksum, digest), [`password`] (argon2id on a bounded
//! blocking pool), [`admin`] (health and [`metrics`] on their own listener),
//! [`cli`] (the `tokengate` commands).

#![forbid(unsafe_code)]

pub mod accesslog;
pub mod admin;
pub mod auth;
pub mod backup;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod connection;
pub mod control;
pub mod files;
pub mod gateway;
pub mod headers;
pub mod idle;
pub mod login;
pub mod metrics;
pub mod openfiles;
pub mod password;
pub mod pattern;
pub mod policy;
pub mod pool;
pub mod resolve;
pub mod response;
pub mod server;
pub mod store;
pub mod throttle;
pub mod time;
pub mod timer;
pub mod tls;
pub mod token;
pub mod tokencache;
pub mod tunnel;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Settings(#[from] gateway::SettingsError),
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Control(#[from] control::ControlError),
}

/// How often expired tokens are swept from the store.
const PURGE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(600);

/// The sockets a gateway serves on, bound by the caller.
pub struct Listeners {
    pub gateway: tokio::net::TcpListener,
    /// For `[admin] listen`: health and metrics.
    pub admin: Option<tokio::net::TcpListener>,
}

/// New configs to apply while running (SIGHUP in the binary). Each one is
/// already validated; certificates are loaded when it is applied, and a
/// config whose certificates fail is logged and ignored.
pub type Reloads = tokio::sync::mpsc::Receiver<config::Config>;

/// Runs the gateway on `listener` with `config` over `store` until `shutdown`
/// resolves. The binary and the integration tests both start here.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Arc<config::Config>,
    store: store::Store,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let listeners = Listeners {
        gateway: listener,
        admin: None,
    };
    run_with(listeners, config, store, None, shutdown).await
}

/// `run` with every listener, including the admin one.
pub async fn run_with(
    listeners: Listeners,
    config: Arc<config::Config>,
    store: store::Store,
    reloads: Option<Reloads>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let control = control::bind(&config.store.path)?;
    let control = tokio::spawn(control::serve(control, store.clone()));
    let purge = tokio::spawn(purge_expired(store.clone()));
    let metrics = Arc::new(metrics::Metrics::new());
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin = listeners.admin.map(|listener| {
        let admin = Arc::new(admin::Admin {
            store: store.clone(),
            metrics: metrics.clone(),
            draining: draining.clone(),
        });
        tokio::spawn(admin::serve(listener, admin))
    });
    let gateway = Arc::new(gateway::Gateway::new(config.clone(), store, metrics).await?);
    let shutdown = async {
        shutdown.await;
        draining.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    let reloader = reloads.map(|reloads| tokio::spawn(apply_reloads(reloads, gateway.clone())));
    let served = server::serve(listeners.gateway, gateway, shutdown).await;
    if let Some(reloader) = reloader {
        reloader.abort();
    }
    control.abort();
    purge.abort();
    if let Some(admin) = admin {
        admin.abort();
    }
    let _ = std::fs::remove_file(control::socket_path(&config.store.path));
    served?;
    Ok(())
}

async fn apply_reloads(mut reloads: Reloads, gateway: Arc<gateway::Gateway>) {
    while let Some(config) = reloads.recv().await {
        let source = config.source.display().to_string();
        match gateway.reload(config).await {
            Ok(()) => tracing::info!(config = %source, "configuration reloaded"),
            Err(e) => {
                tracing::error!(config = %source, error = %e, "reload refused; the previous configuration stays in force")
            }
        }
    }
}

async fn purge_expired(store: store::Store) {
    // Not at startup: expired tokens are refused anyway, and a restart of a
    // large store (a million tokens) need not read every one of them first.
    let first = tokio::time::Instant::now() + PURGE_INTERVAL;
    let mut every = tokio::time::interval_at(first, PURGE_INTERVAL);
    loop {
        every.tick().await;
        let store = store.clone();
        match tokio::task::spawn_blocking(move || store.purge_expired()).await {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(purged = n, "expired tokens removed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "purging expired tokens failed"),
            Err(e) => tracing::warn!(error = %e, "purge task failed"),
        }
    }
}
