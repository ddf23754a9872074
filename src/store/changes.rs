//! How a store tells what it holds may have changed: a generation that
//! moves on after every write, for caches of token checks, and an
//! announcement of each write that ended tokens, for what holds a check
//! past its request (tunnels). Kept apart from any one database, so every
//! backend announces the same way.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::store::token::TokenDigest;

/// A durable change that ended tokens, as announced to whatever keeps a
/// token's check open past its request (tunnels).
#[derive(Debug, Clone)]
pub enum Revoked {
    /// One token (logout, `token revoke`).
    Token(TokenDigest),
    /// Every token of this user: a new epoch (password, disable, enable,
    /// `token revoke --user`) or the user removed.
    User(Arc<str>),
    /// This user's roles changed: their tokens live on, but what was
    /// authorized under the old roles (a tunnel) is not any more.
    Roles(Arc<str>),
    /// The store was reopened after a failed write: any token may have ended.
    Any,
}

/// Revocations a listener may fall behind by before it is told to recheck.
const REVOCATION_BACKLOG: usize = 256;
/// Unbans a gateway may fall behind by; past it the oldest are lost, and
/// those bans run out on their own.
const UNBAN_BACKLOG: usize = 64;

pub struct Changes {
    generation: AtomicU64,
    revocations: tokio::sync::broadcast::Sender<Revoked>,
    /// `throttle unban WHO` run against a shared store: every gateway
    /// forgets its own count of WHO's failures too.
    unbans: tokio::sync::broadcast::Sender<Arc<str>>,
}

impl Default for Changes {
    fn default() -> Self {
        Self {
            generation: AtomicU64::new(0),
            revocations: tokio::sync::broadcast::channel(REVOCATION_BACKLOG).0,
            unbans: tokio::sync::broadcast::channel(UNBAN_BACKLOG).0,
        }
    }
}

impl Changes {
    /// Changes after every write: a check made at one generation holds
    /// while the generation is the same.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Called once a write is done (made durable or failed), before its
    /// caller hears of it.
    pub fn advance(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Every revocation from now on, each once it is durable. A listener
    /// that falls more than `REVOCATION_BACKLOG` behind is told it lagged
    /// and must recheck what it holds.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Revoked> {
        self.revocations.subscribe()
    }

    /// Called only after `advance`, so a listener that subscribed, then saw
    /// an unchanged generation, misses no revocation.
    pub fn announce(&self, revoked: Revoked) {
        // No listener (no tunnel open) is the usual case, not an error.
        let _ = self.revocations.send(revoked);
    }

    /// Every `throttle unban` heard from now on: an address or a username.
    pub fn subscribe_unbans(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.unbans.subscribe()
    }

    pub fn announce_unban(&self, who: Arc<str>) {
        // No gateway in this process (the CLI) is not an error.
        let _ = self.unbans.send(who);
    }
}
