//! The database's tables, created and migrated by whichever process comes
//! first. Migrations run under a transaction-scoped advisory lock, so
//! gateways starting at once on an empty database take turns: the first
//! creates the tables, the others find them made. Each applied version is
//! recorded; a database migrated by a newer tokengate is refused, since
//! this one cannot know what the newer schema means.

use tokio_postgres::Client;

use crate::store::StoreError;
use crate::store::postgres::database;

/// Taken by every migration, so no two run at once (an arbitrary number:
/// "tokengate" in ASCII, folded into an i64).
const MIGRATION_LOCK: i64 = 0x746f_6b65_6e67_6174;

/// Version `i + 1` is `MIGRATIONS[i]`; append, never edit.
const MIGRATIONS: &[&str] = &[
    // 1: users and tokens, as the sled backend keeps them.
    "CREATE TABLE tokengate_users (
        username text PRIMARY KEY,
        password_hash text NOT NULL,
        roles text[] NOT NULL,
        disabled boolean NOT NULL,
        created_at bigint NOT NULL,
        epoch bigint NOT NULL
    );
    CREATE TABLE tokengate_tokens (
        digest bytea PRIMARY KEY CHECK (length(digest) = 32),
        username text NOT NULL REFERENCES tokengate_users ON DELETE CASCADE,
        epoch bigint NOT NULL,
        created_at bigint NOT NULL,
        expires_at bigint,
        label text,
        last_used_at bigint,
        scopes text[] NOT NULL DEFAULT '{}'
    );
    CREATE INDEX tokengate_tokens_by_user ON tokengate_tokens (username);",
    // 2: login failures, counted across every gateway on the database.
    "CREATE TABLE tokengate_login_failures (
        key text PRIMARY KEY,
        failures integer NOT NULL,
        window_start bigint NOT NULL,
        banned_until bigint,
        strikes integer NOT NULL,
        last_seen bigint NOT NULL
    );",
];

/// The newest schema this binary knows.
pub const SUPPORTED: i32 = MIGRATIONS.len() as i32;

/// Brings the database to `SUPPORTED`; returns the version found before.
pub async fn migrate(client: &mut Client) -> Result<i32, StoreError> {
    let tx = client.transaction().await.map_err(database)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(database)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS tokengate_schema (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(database)?;
    let found: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM tokengate_schema",
            &[],
        )
        .await
        .map_err(database)?
        .get(0);
    if found > SUPPORTED {
        return Err(StoreError::SchemaTooNew {
            found,
            supported: SUPPORTED,
        });
    }
    for (version, sql) in (1..).zip(MIGRATIONS).skip(found as usize) {
        tx.batch_execute(sql).await.map_err(database)?;
        tx.execute(
            "INSERT INTO tokengate_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(database)?;
    }
    tx.commit().await.map_err(database)?;
    Ok(found)
}
