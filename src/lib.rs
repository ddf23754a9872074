//! tokengate: an authentication gateway in front of an HTTP API that has
//! none. It serves `POST /login`, keeps users and tokens in a store, checks
//! `Authorization: Token <key>` on every other request, and streams what it
//! lets through to one upstream with the caller's identity in a header.
//!
//! The folders are the layers; each depends only on those listed before it:
//!
//! - [`request`]: pure operations on request parts: the canonical path,
//!   path patterns, header edits
//! - [`config`]: TOML → validated types, every problem reported with its key
//!   and line; [`time`] and [`tls`] (the listener's certificates) sit beside it
//! - [`store`]: users and tokens (sled, or PostgreSQL shared by several
//!   gateways), the token format, backups, the store directory's files,
//!   and the control socket the CLI uses while a sled server runs
//! - [`auth`]: `Authorization` header → caller, through the token cache;
//!   passwords (argon2id on its own threads) and the login throttle
//! - [`upstream`]: connections to the upstream (resolve, connect, pool, the
//!   connection each request drives) and the exchange, failures typed
//! - [`observe`]: the access line per request and the metrics
//! - [`gateway`]: the pipeline every request goes through — target check →
//!   login/logout → authenticate → authorize → forward → log — with the
//!   policy, the login endpoint, tunnels, and the one place a rejection
//!   becomes a response
//! - [`server`]: accepting connections (HTTP/1.1, h2c, TLS), header-read
//!   deadlines, idle HTTP/2, the open-files budget, the admin listener
//! - [`cli`]: the `tokengate` commands; [`run`] and [`run_with`] start a
//!   gateway for the binary and the tests alike

#![forbid(unsafe_code)]

pub mod accept;
pub mod auth;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod import;
pub mod observe;
pub mod request;
pub mod server;
pub mod store;
pub mod time;
pub mod tls;
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
    Control(#[from] store::control::ControlError),
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
    // The tasks beside the gateway's listener end with this function,
    // however it returns: a JoinSet aborts what it holds when dropped.
    let mut beside = tokio::task::JoinSet::new();
    // Only sled needs the socket: one process opens it, and the CLI goes
    // through that process. A shared database the CLI opens itself.
    let control = if store.is_embedded() {
        Some(store::control::bind(&config.store.path)?)
    } else {
        None
    };
    beside.spawn(purge_expired(store.clone()));
    let metrics = Arc::new(observe::metrics::Metrics::new());
    let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
    if let Some(listener) = listeners.admin {
        let admin = Arc::new(server::admin::Admin {
            store: store.clone(),
            metrics: metrics.clone(),
            draining: draining.clone(),
        });
        beside.spawn(server::admin::serve(listener, admin));
    }
    let gateway = Arc::new(gateway::Gateway::new(config.clone(), store.clone(), metrics).await?);
    let socket = control.map(|control| {
        beside.spawn(store::control::serve(
            control.listener,
            store.clone(),
            gateway.throttle(),
        ));
        control.socket
    });
    if let Some(reloads) = reloads {
        beside.spawn(apply_reloads(reloads, gateway.clone()));
    }
    let shutdown = async {
        shutdown.await;
        draining.store(true, std::sync::atomic::Ordering::Relaxed);
    };
    server::serve(listeners.gateway, gateway, shutdown).await?;
    drop(beside);
    drop(socket);
    if let Err(e) = store.flush() {
        tracing::error!(error = %e, "flushing the store at shutdown failed");
        return Err(RunError::Io(std::io::Error::other(e)));
    }
    tracing::info!("stopped");
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
