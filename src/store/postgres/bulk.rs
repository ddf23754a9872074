//! The PostgreSQL backend's whole-store operations: the Django import, the
//! backup snapshot and its restore, and the expiry sweep. A snapshot holds
//! the same entries the sled backend's does (tree, key, JSON value), so a
//! backup of either backend restores into the other.

use std::collections::{HashMap, HashSet};

use crate::store::postgres::{Postgres, database, seconds, to_db};
use crate::store::token::TokenDigest;
use crate::store::{
    Imported, ImportedToken, ImportedUser, StoreError, TREES, TokenRecord, User, now, random_u64,
};

/// Held while a restore checks that the database is empty and fills it,
/// so two restores cannot both find it empty.
const RESTORE_LOCK: i64 = 0x746f_6b65_6e67_7273;

/// The key of a `user_tokens` entry, as the sled backend writes it.
fn user_token_key(user: &str, digest: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(user.len() + 1 + digest.len());
    key.extend_from_slice(user.as_bytes());
    key.push(0);
    key.extend_from_slice(digest);
    key
}

impl Postgres {
    /// Adds users and their tokens from elsewhere in one transaction, with
    /// the sled backend's rules: a username already present is kept as it
    /// is and gets none of the imported tokens; a stored token is left.
    pub async fn import(
        &self,
        users: &[ImportedUser],
        tokens: &[ImportedToken],
    ) -> Result<Imported, StoreError> {
        let created_at = seconds(now());
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        let mut done = Imported::default();
        let mut added: HashMap<&str, (bool, i64)> = HashMap::new();
        for user in users {
            let epoch = to_db(random_u64()?);
            let inserted = tx
                .execute(
                    "INSERT INTO tokengate_users (username, password_hash, roles, disabled, created_at, epoch)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (username) DO NOTHING",
                    &[
                        &user.username,
                        &user.password_hash,
                        &user.roles,
                        &user.disabled,
                        &created_at,
                        &epoch,
                    ],
                )
                .await
                .map_err(database)?;
            if inserted == 0 {
                done.kept.push(user.username.clone());
            } else {
                added.insert(&user.username, (user.disabled, epoch));
                done.added.push(user.username.clone());
            }
        }
        for token in tokens {
            // A disabled user's tokens are ended, as Django refuses an
            // inactive user's.
            let Some(&(false, epoch)) = added.get(token.username.as_str()) else {
                continue;
            };
            let inserted = tx
                .execute(
                    "INSERT INTO tokengate_tokens (digest, username, epoch, created_at, expires_at, label)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (digest) DO NOTHING",
                    &[
                        &&token.digest.0[..],
                        &token.username,
                        &epoch,
                        &seconds(token.created_at),
                        &token.expires_at.map(seconds),
                        &token.label,
                    ],
                )
                .await
                .map_err(database)?;
            if inserted > 0 {
                *done.tokens.entry(token.label.clone()).or_default() += 1;
            }
        }
        tx.commit().await.map_err(database)?;
        self.wrote(None);
        Ok(done)
    }

    /// Every entry as the sled backend would list it, tree by tree in key
    /// order, read in one snapshot of the database.
    pub async fn snapshot(&self) -> Result<Vec<(&'static str, Vec<u8>, Vec<u8>)>, StoreError> {
        let mut client = self.client().await?;
        let tx = client
            .build_transaction()
            .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await
            .map_err(database)?;
        let users = tx
            .query(
                &format!(
                    "SELECT {} FROM tokengate_users ORDER BY username COLLATE \"C\"",
                    super::USER_COLUMNS
                ),
                &[],
            )
            .await
            .map_err(database)?;
        let tokens = tx
            .query(
                "SELECT digest, username, epoch, created_at, expires_at, label, last_used_at, scopes
                 FROM tokengate_tokens ORDER BY digest",
                &[],
            )
            .await
            .map_err(database)?;
        tx.commit().await.map_err(database)?;
        let mut entries = Vec::with_capacity(users.len() + 2 * tokens.len());
        for row in &users {
            let user = super::user_from(row);
            let value = serde_json::to_vec(&user)?;
            entries.push((TREES[0], user.username.into_bytes(), value));
        }
        let mut index = Vec::with_capacity(tokens.len());
        for row in &tokens {
            let digest: Vec<u8> = row.get("digest");
            let record = super::record_from(row);
            index.push((TREES[2], user_token_key(&record.user, &digest), Vec::new()));
            entries.push((TREES[1], digest, serde_json::to_vec(&record)?));
        }
        index.sort_by(|a, b| a.1.cmp(&b.1));
        entries.extend(index);
        Ok(entries)
    }

    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM tokengate_users)
                    AND NOT EXISTS (SELECT 1 FROM tokengate_tokens)",
                &[],
            )
            .await
            .map_err(database)?;
        Ok(row.get(0))
    }

    /// Loads a snapshot's entries into an empty database in one
    /// transaction: all of them or none. The `user_tokens` index is the
    /// tokens table's own here, so its entries are only checked.
    pub async fn load(&self, entries: &[(String, Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        let mut users = Vec::new();
        let mut tokens = Vec::new();
        for (tree, key, value) in entries {
            match tree.as_str() {
                "users" => users.push(serde_json::from_slice::<User>(value)?),
                "tokens" => {
                    let digest = <[u8; 32]>::try_from(key.as_slice()).map_err(|_| {
                        StoreError::BadSnapshot("a token key is not a 32-byte digest".into())
                    })?;
                    tokens.push((
                        TokenDigest(digest),
                        serde_json::from_slice::<TokenRecord>(value)?,
                    ));
                }
                "user_tokens" => {}
                other => {
                    return Err(StoreError::BadSnapshot(format!("unknown tree `{other}`")));
                }
            }
        }
        let names: HashSet<&str> = users.iter().map(|u| u.username.as_str()).collect();
        if let Some((_, orphan)) = tokens
            .iter()
            .find(|(_, t)| !names.contains(t.user.as_str()))
        {
            return Err(StoreError::BadSnapshot(format!(
                "a token belongs to `{}`, who is not in the snapshot",
                orphan.user.escape_default()
            )));
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&RESTORE_LOCK])
            .await
            .map_err(database)?;
        let empty: bool = tx
            .query_one(
                "SELECT NOT EXISTS (SELECT 1 FROM tokengate_users)
                    AND NOT EXISTS (SELECT 1 FROM tokengate_tokens)",
                &[],
            )
            .await
            .map_err(database)?
            .get(0);
        if !empty {
            return Err(StoreError::NotEmpty);
        }
        let add_user = tx
            .prepare(
                "INSERT INTO tokengate_users (username, password_hash, roles, disabled, created_at, epoch)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await
            .map_err(database)?;
        for u in &users {
            tx.execute(
                &add_user,
                &[
                    &u.username,
                    &u.password_hash,
                    &u.roles,
                    &u.disabled,
                    &seconds(u.created_at),
                    &to_db(u.epoch),
                ],
            )
            .await
            .map_err(database)?;
        }
        let add_token = tx
            .prepare(
                "INSERT INTO tokengate_tokens
                 (digest, username, epoch, created_at, expires_at, label, last_used_at, scopes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .await
            .map_err(database)?;
        for (digest, t) in &tokens {
            tx.execute(
                &add_token,
                &[
                    &&digest.0[..],
                    &t.user,
                    &to_db(t.epoch),
                    &seconds(t.created_at),
                    &t.expires_at.map(seconds),
                    &t.label,
                    &t.last_used_at.map(seconds),
                    &t.scopes,
                ],
            )
            .await
            .map_err(database)?;
        }
        tx.commit().await.map_err(database)?;
        self.wrote(None);
        Ok(())
    }

    /// Deletes expired tokens (already refused at check time; this only
    /// reclaims space), and login failures long forgotten. Returns how
    /// many tokens.
    pub async fn purge_expired(&self) -> Result<usize, StoreError> {
        self.forget_login_failures().await?;
        let purged = self
            .client()
            .await?
            .execute(
                "DELETE FROM tokengate_tokens WHERE expires_at IS NOT NULL AND expires_at <= $1",
                &[&seconds(now())],
            )
            .await
            .map_err(database)?;
        Ok(usize::try_from(purged).unwrap_or(usize::MAX))
    }

    /// Revokes the token whose id (`TokenDigest::id`) is `id`.
    pub async fn revoke_id(&self, id: &str) -> Result<(), StoreError> {
        let prefix =
            TokenDigest::parse_id(id).ok_or_else(|| StoreError::UnknownToken(id.to_owned()))?;
        let row = self
            .client()
            .await?
            .query_opt(
                "SELECT digest FROM tokengate_tokens WHERE substring(digest FROM 1 FOR 8) = $1 LIMIT 1",
                &[&&prefix[..]],
            )
            .await
            .map_err(database)?;
        let digest = row
            .and_then(|row| <[u8; 32]>::try_from(row.get::<_, &[u8]>(0)).ok())
            .map(TokenDigest)
            .ok_or_else(|| StoreError::UnknownToken(id.to_owned()))?;
        if self.revoke(&digest).await? {
            Ok(())
        } else {
            Err(StoreError::UnknownToken(id.to_owned()))
        }
    }
}
