//! The notification link: one connection per process that LISTENs for the
//! writes other gateways and CLIs make, and moves this process's
//! generation on (emptying its cache of token checks) and announces each
//! revocation (closing tunnels), as a local write does.
//!
//! A write made while this process was not listening is never announced to
//! it, so every (re)connection advances the generation and announces
//! `Revoked::Any` once LISTEN is in place: every cached check is made anew
//! against the database. `Link` records since when the link is down, for
//! the cache to stop trusting its answers after `store.max_stale`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio_postgres::AsyncMessage;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::changes::{Changes, Revoked};
use crate::store::postgres::database;
use crate::store::token::TokenDigest;
use crate::store::{StoreError, validate_username};

/// The channel every write notifies on.
pub const CHANNEL: &str = "tokengate";
/// Notifications queued between the connection and the announcer.
const BACKLOG: usize = 1024;
/// How often a quiet link is proved alive: a dead peer that never closed
/// its socket is found within this (plus `PING_TIMEOUT`).
const PING_EVERY: Duration = Duration::from_secs(2);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
const RETRY_AFTER: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// A change as one notification's payload.
pub fn payload(revoked: &Revoked) -> Option<String> {
    match revoked {
        Revoked::Token(digest) => Some(format!("t:{}", digest.to_hex())),
        Revoked::User(name) => Some(format!("u:{name}")),
        Revoked::Roles(name) => Some(format!("r:{name}")),
        Revoked::Any => None,
    }
}

/// A lifted login ban's payload: `throttle unban WHO`. Older gateways
/// read it as an unknown change, and recheck every token: safe.
pub fn unban_payload(who: &str) -> String {
    format!("b:{who}")
}

/// A payload back as the change; anything unreadable (a newer writer)
/// ends every check, which is always safe.
pub fn parse(payload: &str) -> Revoked {
    let user = |name: &str| validate_username(name).is_ok().then(|| Arc::from(name));
    let parsed = match payload.split_once(':') {
        Some(("t", hex)) => TokenDigest::from_hex(hex).map(Revoked::Token),
        Some(("u", name)) => user(name).map(Revoked::User),
        Some(("r", name)) => user(name).map(Revoked::Roles),
        _ => None,
    };
    parsed.unwrap_or(Revoked::Any)
}

/// Whether this process hears the database's notifications. Read on
/// every request (`Store::in_touch`), so it is one atomic load.
#[derive(Debug)]
pub struct Link {
    base: Instant,
    /// Milliseconds after `base` since which the link is down; `UP` while
    /// listening. The process start counts as down until the first LISTEN.
    down_since: AtomicU64,
}

const UP: u64 = u64::MAX;

impl Default for Link {
    fn default() -> Self {
        Self::new()
    }
}

impl Link {
    pub fn new() -> Self {
        Self {
            base: Instant::now(),
            down_since: AtomicU64::new(0),
        }
    }

    /// How long the link has been down; `None` while listening.
    pub fn down_for(&self) -> Option<Duration> {
        match self.down_since.load(Ordering::Acquire) {
            UP => None,
            since => Some(
                self.base
                    .elapsed()
                    .saturating_sub(Duration::from_millis(since)),
            ),
        }
    }

    fn up(&self) {
        self.down_since.store(UP, Ordering::Release);
    }

    fn lost(&self) {
        let now = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(UP - 1);
        // Only the first loss counts: a retry that fails again is the same outage.
        let _ = self
            .down_since
            .compare_exchange(UP, now, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// Listens until the task is dropped, reconnecting with a growing pause.
pub async fn listen(
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    changes: Arc<Changes>,
    link: Arc<Link>,
) {
    let mut pause = RETRY_AFTER;
    loop {
        let heard = session(&config, &tls, &changes, &link).await;
        // A link that was up starts a new outage: retry soon.
        if link.down_for().is_none() {
            pause = RETRY_AFTER;
        }
        link.lost();
        if let Err(e) = heard {
            tracing::warn!(error = %e, "store: lost the database's notifications; reconnecting");
        }
        // Cached checks stay trusted for store.max_stale (the cache asks
        // `Link::down_for`); the reconnection empties the cache, so a
        // revocation made meanwhile is never missed.
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// One connection's worth of listening; returns when it fails.
async fn session(
    config: &tokio_postgres::Config,
    tls: &MakeRustlsConnect,
    changes: &Changes,
    link: &Link,
) -> Result<(), StoreError> {
    let (client, mut connection) = config.connect(tls.clone()).await.map_err(database)?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(BACKLOG);
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.payload().to_owned()).await.is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(database(e)),
                None => return Ok(()),
            }
        }
    });
    let _driver = AbortOnDrop(driver);
    client
        .batch_execute(&format!("LISTEN {CHANNEL}"))
        .await
        .map_err(database)?;
    // Listening from here on: whatever was written before is read afresh.
    changes.advance();
    changes.announce(Revoked::Any);
    link.up();
    tracing::info!("store: listening for the database's notifications");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            heard = rx.recv() => {
                let Some(payload) = heard else {
                    return Err(StoreError::Database("the notification connection closed".into()));
                };
                if let Some(who) = payload.strip_prefix("b:") {
                    changes.announce_unban(Arc::from(who));
                } else {
                    changes.advance();
                    changes.announce(parse(&payload));
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(PING_TIMEOUT, client.simple_query("")).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(database(e)),
                    Err(_) => return Err(StoreError::Database("the database stopped answering".into())),
                }
            }
        }
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_unknown_ones_end_everything() {
        let digest = crate::store::token::Token::generate().unwrap().digest();
        let cases = [
            Revoked::Token(digest),
            Revoked::User(Arc::from("ann@example.com")),
            Revoked::Roles(Arc::from("bob")),
        ];
        for revoked in cases {
            let text = payload(&revoked).unwrap();
            assert_eq!(format!("{:?}", parse(&text)), format!("{revoked:?}"));
        }
        for junk in ["", "t:zz", "u:", "u:a b", "x:ann", "nothing"] {
            assert!(matches!(parse(junk), Revoked::Any), "{junk}");
        }
    }
}
