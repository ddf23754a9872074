//! The PostgreSQL backend: users and tokens in a database that any number
//! of gateways and CLIs share. Every write is one transaction that also
//! notifies the others (`listen`), so the notification is delivered only
//! if the write committed, and committed before the call returns: an
//! acknowledged change is in the database whatever happens to this
//! process next.
//!
//! Rows hold what the sled backend's records hold (`records`); epochs are
//! stored as `bigint`, bit for bit.

mod bulk;
pub mod failures;
pub mod listen;
pub mod runner;
pub mod schema;
pub mod tls;

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::Row;
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::changes::{Changes, Revoked};
use crate::store::postgres::listen::Link;
use crate::store::token::{Token, TokenDigest};
use crate::store::{
    Identity, LAST_USED_GRANULARITY, LiveToken, StoreError, TokenInfo, TokenRecord, User, now,
    random_u64, validate_role,
};

/// How long a call waits for a pooled connection, or for a new one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

pub fn database(e: tokio_postgres::Error) -> StoreError {
    StoreError::Database(with_causes(&e))
}

fn pooled(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Database(with_causes(&e))
}

/// The error and what caused it ("error performing TLS handshake: invalid
/// peer certificate: ..."): the driver's own message alone does not say
/// what to fix. Neither the driver nor rustls puts the password in one.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        cause = c.source();
    }
    text
}

/// The driver's config for `url` and the TLS connector its `sslmode` asks
/// for (`tls`).
pub fn connect_config(
    url: &str,
) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let parsed = tls::parse(url).map_err(|e| StoreError::Database(format!("store.url: {e}")))?;
    let mut config: tokio_postgres::Config = parsed
        .url
        .parse()
        .map_err(|e: tokio_postgres::Error| StoreError::Database(format!("store.url: {e}")))?;
    config.ssl_mode(tls::driver_mode(parsed.mode));
    let connector =
        tls::connector(&parsed).map_err(|e| StoreError::Database(format!("store.url: {e}")))?;
    Ok((config, connector))
}

#[derive(Clone)]
pub struct Postgres {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    changes: Arc<Changes>,
    link: Arc<Link>,
}

/// Epochs are random u64s; the database keeps their bits in an i64.
pub(super) fn to_db(epoch: u64) -> i64 {
    epoch as i64
}

fn from_db(epoch: i64) -> u64 {
    epoch as u64
}

pub(super) fn seconds(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(super) fn user_from(row: &Row) -> User {
    User {
        username: row.get("username"),
        password_hash: row.get("password_hash"),
        roles: row.get("roles"),
        disabled: row.get("disabled"),
        created_at: unsigned(row.get("created_at")),
        epoch: from_db(row.get("epoch")),
    }
}

pub(super) fn record_from(row: &Row) -> TokenRecord {
    TokenRecord {
        user: row.get("username"),
        epoch: from_db(row.get("epoch")),
        created_at: unsigned(row.get("created_at")),
        expires_at: row.get::<_, Option<i64>>("expires_at").map(unsigned),
        label: row.get("label"),
        last_used_at: row.get::<_, Option<i64>>("last_used_at").map(unsigned),
        scopes: row.get("scopes"),
    }
}

pub(super) const USER_COLUMNS: &str = "username, password_hash, roles, disabled, created_at, epoch";

impl Postgres {
    /// Connects, creating or migrating the schema. `url` is a libpq
    /// connection string or `postgres://` URL.
    pub async fn open(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let (mut config, tls) = connect_config(url)?;
        config.connect_timeout(CONNECT_TIMEOUT);
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Database(e.to_string()))?;
        let mut client = pool.get().await.map_err(pooled)?;
        schema::migrate(&mut client).await?;
        Ok(Self {
            pool,
            config,
            tls,
            changes: Arc::new(Changes::default()),
            link: Arc::new(Link::new()),
        })
    }

    /// The task that hears other processes' writes; run it for as long
    /// as the store serves cached checks.
    pub fn listen(&self) -> impl Future<Output = ()> + Send + 'static {
        listen::listen(
            self.config.clone(),
            self.tls.clone(),
            self.changes.clone(),
            self.link.clone(),
        )
    }

    pub fn changes(&self) -> &Arc<Changes> {
        &self.changes
    }

    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    pub(super) async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(pooled)
    }

    /// After a committed write: this process drops its cached checks and
    /// tells its tunnels at once, before the notification comes back.
    pub(super) fn wrote(&self, revoked: Option<Revoked>) {
        self.changes.advance();
        if let Some(revoked) = revoked {
            self.changes.announce(revoked);
        }
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.client()
            .await?
            .simple_query("")
            .await
            .map_err(database)?;
        Ok(())
    }

    pub async fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        let row = self
            .client()
            .await?
            .query_opt(
                &format!("SELECT {USER_COLUMNS} FROM tokengate_users WHERE username = $1"),
                &[&name],
            )
            .await
            .map_err(database)?;
        Ok(row.as_ref().map(user_from))
    }

    pub async fn users(&self) -> Result<Vec<User>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                &format!("SELECT {USER_COLUMNS} FROM tokengate_users ORDER BY username"),
                &[],
            )
            .await
            .map_err(database)?;
        Ok(rows.iter().map(user_from).collect())
    }

    /// Stores a user made by `new_user`, unless one has the name already.
    pub async fn insert_user(&self, user: User) -> Result<User, StoreError> {
        let username = user.username.as_str();
        let added = self
            .client()
            .await?
            .execute(
                "INSERT INTO tokengate_users (username, password_hash, roles, disabled, created_at, epoch)
                 VALUES ($1, $2, $3, false, $4, $5) ON CONFLICT (username) DO NOTHING",
                &[
                    &user.username,
                    &user.password_hash,
                    &user.roles,
                    &seconds(user.created_at),
                    &to_db(user.epoch),
                ],
            )
            .await
            .map_err(database)?;
        if added == 0 {
            return Err(StoreError::UserExists(username.to_owned()));
        }
        self.wrote(None);
        Ok(user)
    }

    /// Runs `sql` (with `$1` the username) in a transaction that also
    /// notifies `revoked`; `UnknownUser` when it touched no row.
    async fn write_user(
        &self,
        name: &str,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        revoked: Revoked,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        let changed = tx.execute(sql, params).await.map_err(database)?;
        if changed == 0 {
            return Err(StoreError::UnknownUser(name.to_owned()));
        }
        notify(&tx, &revoked).await?;
        tx.commit().await.map_err(database)?;
        self.wrote(Some(revoked));
        Ok(())
    }

    /// A new epoch ends every token of the user, with `column` (if any)
    /// set to `value` in the same write; the token rows go too.
    async fn end_tokens_with(
        &self,
        name: &str,
        change: Option<(&str, &(dyn tokio_postgres::types::ToSql + Sync))>,
    ) -> Result<usize, StoreError> {
        let epoch = to_db(random_u64()?);
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&name, &epoch];
        let mut sql = String::from("UPDATE tokengate_users SET epoch = $2");
        if let Some((column, value)) = change {
            sql.push_str(&format!(", {column} = $3"));
            params.push(value);
        }
        sql.push_str(" WHERE username = $1");
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        let changed = tx.execute(&sql, &params).await.map_err(database)?;
        if changed == 0 {
            return Err(StoreError::UnknownUser(name.to_owned()));
        }
        let ended = tx
            .execute("DELETE FROM tokengate_tokens WHERE username = $1", &[&name])
            .await
            .map_err(database)?;
        let revoked = Revoked::User(Arc::from(name));
        notify(&tx, &revoked).await?;
        tx.commit().await.map_err(database)?;
        self.wrote(Some(revoked));
        Ok(usize::try_from(ended).unwrap_or(usize::MAX))
    }

    pub async fn set_password(&self, name: &str, password_hash: String) -> Result<(), StoreError> {
        self.end_tokens_with(name, Some(("password_hash", &password_hash)))
            .await
            .map(drop)
    }

    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError> {
        self.end_tokens_with(name, Some(("disabled", &disabled)))
            .await
            .map(drop)
    }

    pub async fn revoke_user_tokens(&self, name: &str) -> Result<usize, StoreError> {
        self.end_tokens_with(name, None).await
    }

    pub async fn set_roles(&self, name: &str, roles: Vec<String>) -> Result<(), StoreError> {
        for role in &roles {
            validate_role(role)?;
        }
        self.write_user(
            name,
            "UPDATE tokengate_users SET roles = $2 WHERE username = $1",
            &[&name, &roles],
            Revoked::Roles(Arc::from(name)),
        )
        .await
    }

    /// Replaces the hash with `new` if it is still `old`, tokens kept.
    pub async fn rehash_password(
        &self,
        name: &str,
        old: &str,
        new: String,
    ) -> Result<bool, StoreError> {
        let changed = self
            .client()
            .await?
            .execute(
                "UPDATE tokengate_users SET password_hash = $3 WHERE username = $1 AND password_hash = $2",
                &[&name, &old, &new],
            )
            .await
            .map_err(database)?;
        self.wrote(None);
        Ok(changed > 0)
    }

    pub async fn remove_user(&self, name: &str) -> Result<(), StoreError> {
        self.write_user(
            name,
            "DELETE FROM tokengate_users WHERE username = $1",
            &[&name],
            Revoked::User(Arc::from(name)),
        )
        .await
    }

    /// Stores a token made by `new_token` if its user's epoch still holds
    /// and they are enabled, in one statement: a token is returned only
    /// once committed.
    pub async fn insert_token(
        &self,
        token: Token,
        record: TokenRecord,
    ) -> Result<(Token, TokenRecord), StoreError> {
        let digest = token.digest();
        let client = self.client().await?;
        let inserted = client
            .execute(
                "INSERT INTO tokengate_tokens (digest, username, epoch, created_at, expires_at, label, scopes)
                 SELECT $1, username, epoch, $4, $5, $6, $7 FROM tokengate_users
                 WHERE username = $2 AND epoch = $3 AND NOT disabled",
                &[
                    &&digest.0[..],
                    &record.user,
                    &to_db(record.epoch),
                    &seconds(record.created_at),
                    &record.expires_at.map(seconds),
                    &record.label,
                    &record.scopes,
                ],
            )
            .await
            .map_err(database)?;
        if inserted == 0 {
            let exists = client
                .query_opt(
                    "SELECT 1 FROM tokengate_users WHERE username = $1",
                    &[&record.user],
                )
                .await
                .map_err(database)?
                .is_some();
            return Err(if exists {
                StoreError::Stale
            } else {
                StoreError::UnknownUser(record.user)
            });
        }
        self.wrote(None);
        Ok((token, record))
    }

    /// The token's caller if it is live, recording its use at most once
    /// per `LAST_USED_GRANULARITY`.
    pub async fn use_token(&self, digest: &TokenDigest) -> Result<Option<LiveToken>, StoreError> {
        let client = self.client().await?;
        let now = now();
        let row = client
            .query_opt(
                "SELECT u.username, u.roles, t.expires_at, t.last_used_at, t.scopes
                 FROM tokengate_tokens t JOIN tokengate_users u USING (username)
                 WHERE t.digest = $1 AND t.epoch = u.epoch AND NOT u.disabled
                   AND (t.expires_at IS NULL OR t.expires_at > $2)",
                &[&&digest.0[..], &seconds(now)],
            )
            .await
            .map_err(database)?;
        let Some(row) = row else {
            return Ok(None);
        };
        let mut last_used_at = row.get::<_, Option<i64>>("last_used_at").map(unsigned);
        if last_used_at.is_none_or(|at| now.saturating_sub(at) >= LAST_USED_GRANULARITY) {
            // Bookkeeping, not an acknowledged change: a failure here
            // never fails the request.
            let recorded = client
                .execute(
                    "UPDATE tokengate_tokens SET last_used_at = $2 WHERE digest = $1
                     AND (last_used_at IS NULL OR last_used_at <= $3)",
                    &[
                        &&digest.0[..],
                        &seconds(now),
                        &seconds(now.saturating_sub(LAST_USED_GRANULARITY)),
                    ],
                )
                .await;
            if let Ok(1) = recorded {
                last_used_at = Some(now);
            }
        }
        Ok(Some(LiveToken {
            identity: Identity {
                username: row.get("username"),
                roles: row.get("roles"),
            },
            expires_at: row.get::<_, Option<i64>>("expires_at").map(unsigned),
            last_used_at,
            scopes: row.get("scopes"),
        }))
    }

    pub async fn revoke(&self, digest: &TokenDigest) -> Result<bool, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        let removed = tx
            .execute(
                "DELETE FROM tokengate_tokens WHERE digest = $1",
                &[&&digest.0[..]],
            )
            .await
            .map_err(database)?;
        if removed == 0 {
            return Ok(false);
        }
        let revoked = Revoked::Token(*digest);
        notify(&tx, &revoked).await?;
        tx.commit().await.map_err(database)?;
        self.wrote(Some(revoked));
        Ok(true)
    }

    pub async fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT digest, username, epoch, created_at, expires_at, label, last_used_at, scopes
                 FROM tokengate_tokens WHERE $1::text IS NULL OR username = $1
                 ORDER BY created_at, digest",
                &[&user],
            )
            .await
            .map_err(database)?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let digest: &[u8] = row.get("digest");
                let digest = TokenDigest(<[u8; 32]>::try_from(digest).ok()?);
                Some(TokenInfo {
                    id: digest.id(),
                    record: record_from(row),
                })
            })
            .collect())
    }
}

/// Tells every process listening that `revoked` happened, once the
/// transaction commits (PostgreSQL holds notifications until then).
async fn notify(tx: &tokio_postgres::Transaction<'_>, revoked: &Revoked) -> Result<(), StoreError> {
    if let Some(payload) = listen::payload(revoked) {
        tx.execute("SELECT pg_notify($1, $2)", &[&listen::CHANNEL, &payload])
            .await
            .map_err(database)?;
    }
    Ok(())
}
