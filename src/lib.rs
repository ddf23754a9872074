//! tokengate: an authentication gateway in front of an HTTP API that has
//! none. It serves `POST /login`, keeps users and tokens in sled, checks
//! `Authorization: Token <key>` on every other request, and streams what it
//! lets through to one upstream with the caller's identity in a header.
//!
//! A request flows one way through these modules:
//!
//! - [`server`]: accepts connections, serves HTTP/1.1 and h2c, drains on shutdown
//! - [`gateway`]: the pipeline — target check, login/logout, authenticate, authorize, forward, log
//! - [`canonical`]: the one canonical form of a path that every decision uses
//! - [`login`]: the login endpoint (the only body the gateway reads)
//! - [`auth`]: `Authorization` header → [`store::Identity`]
//! - [`policy`]: public paths and `[[rules]]` roles, over [`pattern`]s
//! - [`headers`]: pure header operations on forwarded requests and responses
//! - [`upstream`]: the pooled client, timeouts → 502/504
//! - [`response`]: every rejection and the one function that renders it
//!
//! Beside it: [`config`] (TOML → validated types), [`store`] (sled),
//! [`token`] (format, checksum, digest), [`password`] (argon2id on a bounded
//! blocking pool), [`cli`] (the `tokengate` commands).

#![forbid(unsafe_code)]

pub mod auth;
pub mod canonical;
pub mod cli;
pub mod config;
pub mod gateway;
pub mod headers;
pub mod login;
pub mod password;
pub mod pattern;
pub mod policy;
pub mod response;
pub mod server;
pub mod store;
pub mod time;
pub mod token;
pub mod upstream;

use std::future::Future;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot set up password hashing: {0}")]
    Hasher(#[from] password::PasswordError),
    #[error("serving failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Runs the gateway on `listener` with `config` over `store` until `shutdown`
/// resolves. The binary and the integration tests both start here.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Arc<config::Config>,
    store: store::Store,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RunError> {
    let gateway = Arc::new(gateway::Gateway::new(config.clone(), store)?);
    server::serve(listener, gateway, &config.server, shutdown).await?;
    Ok(())
}
