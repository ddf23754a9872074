//! `Store`: the one handle the gateway, the CLI and the control channel
//! use, over either backend. Calls are synchronous, as sled's are; the
//! few made from the gateway's tasks on every request or login have
//! `_async` forms that never block a runtime thread on the database.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{StoreBackend, StoreConfig, ThrottleConfig};
use crate::request::scope::Scope;
use crate::store::embedded::Embedded;
use crate::store::postgres::failures;
use crate::store::postgres::runner::Runner;
use crate::store::token::{Token, TokenDigest};
use crate::store::{
    Identity, Imported, ImportedToken, ImportedUser, LiveToken, Revoked, StoreError, TokenInfo,
    TokenRecord, User, new_token, new_user, validate_user,
};

#[derive(Clone)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    Embedded(Embedded),
    Postgres(Arc<Runner>),
}

/// Who opens the store: a server listens for other processes' writes; a
/// one-shot command does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opener {
    Server,
    Command,
}

/// A call on whichever backend: sled's directly, PostgreSQL's on its
/// runtime, the arguments moved into the future.
macro_rules! call {
    ($self:ident, $s:ident => $sled:expr, $pg:ident => $postgres:expr) => {
        match &$self.backend {
            Backend::Embedded($s) => $sled,
            Backend::Postgres(runner) => runner.block(move |$pg| async move { $postgres }),
        }
    };
}

impl Store {
    /// The embedded store at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Ok(Self {
            backend: Backend::Embedded(Embedded::open(path)?),
        })
    }

    /// The store `config` names.
    pub fn connect(config: &StoreConfig, opener: Opener) -> Result<Self, StoreError> {
        match &config.backend {
            StoreBackend::Sled => Self::open(&config.path),
            StoreBackend::Postgres(pg) => Self::postgres(
                pg.url.expose(),
                pg.pool_size,
                pg.max_stale,
                opener == Opener::Server,
            ),
        }
    }

    pub fn postgres(
        url: &str,
        pool_size: usize,
        max_stale: Duration,
        listen: bool,
    ) -> Result<Self, StoreError> {
        let runner = Runner::open(url, pool_size, max_stale, listen)?;
        Ok(Self {
            backend: Backend::Postgres(Arc::new(runner)),
        })
    }

    /// Whether only this process opens the store (sled): then the CLI
    /// reaches it through the server's control socket while one runs.
    pub fn is_embedded(&self) -> bool {
        matches!(self.backend, Backend::Embedded(_))
    }

    fn changes(&self) -> &crate::store::changes::Changes {
        match &self.backend {
            Backend::Embedded(s) => s.changes(),
            Backend::Postgres(runner) => runner.pg().changes(),
        }
    }

    /// Every revocation from now on, each once it is durable, whether this
    /// process or (PostgreSQL) another one made it.
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<Revoked> {
        self.changes().subscribe()
    }

    /// Every `throttle unban` another process ran against a shared store,
    /// for this gateway's own throttle; never sent for sled.
    pub fn unbans(&self) -> tokio::sync::broadcast::Receiver<Arc<str>> {
        self.changes().subscribe_unbans()
    }

    /// Changes after every write: a check made at one generation holds
    /// while the generation is the same.
    pub fn generation(&self) -> u64 {
        self.changes().generation()
    }

    /// Whether answers cached from the store may still be served: always
    /// for sled; for PostgreSQL, until the notification link has been down
    /// for longer than `store.max_stale`.
    pub fn in_touch(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Postgres(runner) => runner.in_touch(),
        }
    }

    /// A check that fails when the store cannot serve: for readiness.
    /// PostgreSQL's link proves the database answered within seconds, so
    /// this never waits on it.
    pub fn ping(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(s) => s.ping(),
            Backend::Postgres(runner) => runner.in_touch(),
        }
    }

    pub fn snapshot(
        &self,
        mut f: impl FnMut(&str, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Embedded(s) => s.snapshot(f),
            Backend::Postgres(runner) => {
                let entries = runner.block(|pg| async move { pg.snapshot().await })?;
                for (tree, key, value) in &entries {
                    f(tree, key, value)?;
                }
                Ok(entries.len())
            }
        }
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        call!(self, s => Ok(s.is_empty()), pg => pg.is_empty().await)
    }

    pub fn load(&self, entries: &[(String, Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(s) => s.load(entries),
            Backend::Postgres(runner) => {
                let entries = entries.to_vec();
                runner.block(|pg| async move { pg.load(&entries).await })
            }
        }
    }

    /// Makes every write so far durable (PostgreSQL commits each one).
    pub fn flush(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(s) => s.flush(),
            Backend::Postgres(_) => Ok(()),
        }
    }

    pub fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let name = name.to_owned();
        call!(self, s => s.user(&name), pg => pg.user(&name).await)
    }

    /// `user`, awaited without holding a runtime thread.
    pub async fn user_async(&self, name: &str) -> Result<Option<User>, StoreError> {
        match &self.backend {
            Backend::Embedded(s) => s.user(name),
            Backend::Postgres(runner) => {
                let name = name.to_owned();
                runner.run(|pg| async move { pg.user(&name).await }).await
            }
        }
    }

    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        call!(self, s => s.users(), pg => pg.users().await)
    }

    pub fn add_user(
        &self,
        username: &str,
        password_hash: String,
        roles: Vec<String>,
    ) -> Result<User, StoreError> {
        let user = new_user(username, password_hash, roles)?;
        call!(self, s => s.insert_user(user), pg => pg.insert_user(user).await)
    }

    pub fn set_roles(&self, name: &str, roles: Vec<String>) -> Result<(), StoreError> {
        let name = name.to_owned();
        call!(self, s => s.set_roles(&name, roles), pg => pg.set_roles(&name, roles).await)
    }

    pub fn rehash_password(&self, name: &str, old: &str, new: String) -> Result<bool, StoreError> {
        let (name, old) = (name.to_owned(), old.to_owned());
        call!(self,
            s => s.rehash_password(&name, &old, new),
            pg => pg.rehash_password(&name, &old, new).await)
    }

    pub fn set_password(&self, name: &str, password_hash: String) -> Result<(), StoreError> {
        let name = name.to_owned();
        call!(self,
            s => s.set_password(&name, password_hash),
            pg => pg.set_password(&name, password_hash).await)
    }

    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError> {
        let name = name.to_owned();
        call!(self, s => s.set_disabled(&name, disabled), pg => pg.set_disabled(&name, disabled).await)
    }

    pub fn revoke_user_tokens(&self, name: &str) -> Result<usize, StoreError> {
        let name = name.to_owned();
        call!(self, s => s.revoke_user_tokens(&name), pg => pg.revoke_user_tokens(&name).await)
    }

    pub fn remove_user(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_owned();
        call!(self, s => s.remove_user(&name), pg => pg.remove_user(&name).await)
    }

    /// Issues a token to `user`, provided their credentials have not changed
    /// since `user` was read. Returns only once the token is durable.
    pub fn issue_token(
        &self,
        user: &User,
        ttl: Option<Duration>,
        label: Option<String>,
        scopes: &[Scope],
    ) -> Result<(Token, TokenRecord), StoreError> {
        let (token, record) = new_token(user, ttl, label, scopes)?;
        call!(self,
            s => s.insert_token(token, record),
            pg => pg.insert_token(token, record).await)
    }

    /// Adds users and their tokens from elsewhere (Django) in one
    /// transaction; a name already present is kept, with none of the
    /// imported tokens.
    pub fn import(
        &self,
        users: &[ImportedUser],
        tokens: &[ImportedToken],
    ) -> Result<Imported, StoreError> {
        for user in users {
            validate_user(&user.username, &user.roles)?;
        }
        match &self.backend {
            Backend::Embedded(s) => s.import(users, tokens),
            Backend::Postgres(runner) => {
                let (users, tokens) = (users.to_vec(), tokens.to_vec());
                runner.block(|pg| async move { pg.import(&users, &tokens).await })
            }
        }
    }

    /// The identity behind a token, if the token is live.
    pub fn authenticate(&self, digest: &TokenDigest) -> Result<Option<Identity>, StoreError> {
        Ok(self.use_token(digest)?.map(|live| live.identity))
    }

    /// `authenticate`, with the token's expiry and last use (recorded at
    /// most once per `LAST_USED_GRANULARITY`).
    pub fn use_token(&self, digest: &TokenDigest) -> Result<Option<LiveToken>, StoreError> {
        let digest = *digest;
        call!(self, s => s.use_token(&digest), pg => pg.use_token(&digest).await)
    }

    /// `use_token`, awaited without holding a runtime thread: the token
    /// check on a cache miss.
    pub async fn use_token_async(
        &self,
        digest: &TokenDigest,
    ) -> Result<Option<LiveToken>, StoreError> {
        match &self.backend {
            Backend::Embedded(s) => s.use_token(digest),
            Backend::Postgres(runner) => {
                let digest = *digest;
                runner
                    .run(|pg| async move { pg.use_token(&digest).await })
                    .await
            }
        }
    }

    pub fn revoke(&self, digest: &TokenDigest) -> Result<bool, StoreError> {
        let digest = *digest;
        call!(self, s => s.revoke(&digest), pg => pg.revoke(&digest).await)
    }

    pub fn revoke_id(&self, id: &str) -> Result<(), StoreError> {
        let id = id.to_owned();
        call!(self, s => s.revoke_id(&id), pg => pg.revoke_id(&id).await)
    }

    pub fn purge_expired(&self) -> Result<usize, StoreError> {
        call!(self, s => s.purge_expired(), pg => pg.purge_expired().await)
    }

    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>, StoreError> {
        let user = user.map(str::to_owned);
        call!(self, s => s.tokens(user.as_deref()), pg => pg.tokens(user.as_deref()).await)
    }

    /// The longest shared login ban on the attempt's address (0) or
    /// username (1). Only a shared store has any: sled's one gateway counts
    /// in memory (`crate::auth::throttle`).
    pub async fn login_ban(
        &self,
        client: IpAddr,
        username: &str,
    ) -> Result<Option<(usize, Duration)>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(None),
            Backend::Postgres(runner) => {
                let keys = failures::keys(client, username);
                runner
                    .run(|pg| async move { pg.login_ban(&keys).await })
                    .await
            }
        }
    }

    /// Counts a failed login for every gateway on a shared store; the
    /// ban it started, if any.
    pub async fn login_failed(
        &self,
        client: IpAddr,
        username: &str,
        policy: &ThrottleConfig,
    ) -> Result<Option<Duration>, StoreError> {
        match &self.backend {
            Backend::Postgres(runner) if policy.enabled => {
                let (keys, policy) = (failures::keys(client, username), *policy);
                runner
                    .run(|pg| async move { pg.login_failed(&keys, &policy).await })
                    .await
            }
            _ => Ok(None),
        }
    }

    pub async fn login_succeeded(&self, username: &str) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(()),
            Backend::Postgres(runner) => {
                let username = username.to_owned();
                runner
                    .run(|pg| async move { pg.login_succeeded(&username).await })
                    .await
            }
        }
    }
}

/// A shared store's login bans, for `throttle list` and `unban` run
/// against the database.
pub struct SharedBans(pub Store);

impl crate::store::control::Bans for SharedBans {
    fn list(&self) -> Vec<(String, u64)> {
        match &self.0.backend {
            Backend::Postgres(runner) => runner
                .block(|pg| async move { pg.login_bans().await })
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "listing login bans failed");
                    Vec::new()
                }),
            Backend::Embedded(_) => Vec::new(),
        }
    }

    fn lift(&self, who: &str) -> bool {
        let who = who.to_owned();
        match &self.0.backend {
            Backend::Postgres(runner) => runner
                .block(|pg| async move { pg.lift_login_ban(&who).await })
                .unwrap_or(false),
            Backend::Embedded(_) => false,
        }
    }
}
