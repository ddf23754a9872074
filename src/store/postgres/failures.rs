//! Login failures shared by every gateway on the database, so N gateways
//! do not give an attacker N times the guesses. Each gateway still counts
//! in memory first (`crate::auth::throttle`, which also holds attempts in
//! flight); these rows add the failures the other gateways saw, with the
//! same policy: `max_failures` within `window` bans the key for `ban`,
//! doubling with each ban up to `max_ban`.
//!
//! Times are Unix milliseconds, so every gateway reads the same clock
//! (the database's rows), not its own `Instant`s.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::ThrottleConfig;
use crate::store::StoreError;
use crate::store::postgres::{Postgres, database, listen};

/// Rows idle this long are swept: their window and any ban are long over.
const FORGET_AFTER_MS: i64 = 24 * 3600 * 1000;

/// A username longer than any user's can have is counted by its start, so
/// an attacker cannot grow a row without bound.
const MAX_KEY_USERNAME: usize = 150;

/// The rows a login attempt counts on: its client address's, then the
/// username's.
pub fn keys(client: IpAddr, username: &str) -> [String; 2] {
    [format!("a:{client}"), user_key(username)]
}

fn user_key(username: &str) -> String {
    let mut end = username.len().min(MAX_KEY_USERNAME);
    while !username.is_char_boundary(end) {
        end -= 1;
    }
    format!("u:{}", &username[..end])
}

/// The row `throttle unban WHO` names: an address, else a username.
pub fn key_of(who: &str) -> String {
    match who.parse::<IpAddr>() {
        Ok(ip) => format!("a:{ip}"),
        Err(_) => user_key(who),
    }
}

/// A row's key as `throttle list` shows it.
pub fn shown(key: &str) -> &str {
    key.get(2..).unwrap_or(key)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn wait(until: i64, now: i64) -> Duration {
    Duration::from_millis(u64::try_from(until - now).unwrap_or(0))
}

impl Postgres {
    /// Bans in force, longest first: each key and the time left; on
    /// `keys` only, when given.
    async fn bans_in_force(
        &self,
        keys: Option<&[String]>,
    ) -> Result<Vec<(String, Duration)>, StoreError> {
        let now = now_ms();
        let rows = self
            .client()
            .await?
            .query(
                "SELECT key, banned_until FROM tokengate_login_failures
                 WHERE ($1::text[] IS NULL OR key = ANY($1)) AND banned_until > $2
                 ORDER BY banned_until DESC, key",
                &[&keys, &now],
            )
            .await
            .map_err(database)?;
        Ok(rows
            .iter()
            .map(|row| (row.get(0), wait(row.get(1), now)))
            .collect())
    }

    /// The longest ban in force on any of `keys`, and which key it is on.
    pub async fn login_ban(
        &self,
        keys: &[String],
    ) -> Result<Option<(usize, Duration)>, StoreError> {
        let bans = self.bans_in_force(Some(keys)).await?;
        Ok(bans
            .into_iter()
            .find_map(|(key, left)| Some((keys.iter().position(|k| *k == key)?, left))))
    }

    /// Counts one failed login on each of `keys`; returns the longest ban
    /// it started, if any.
    pub async fn login_failed(
        &self,
        keys: &[String],
        c: &ThrottleConfig,
    ) -> Result<Option<Duration>, StoreError> {
        let now = now_ms();
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(database)?;
        let mut started: Option<Duration> = None;
        for key in keys {
            // Created if missing, then locked: two gateways counting the
            // same key at once take turns.
            tx.execute(
                "INSERT INTO tokengate_login_failures
                 (key, failures, window_start, banned_until, strikes, last_seen)
                 VALUES ($1, 0, $2, NULL, 0, $2) ON CONFLICT (key) DO NOTHING",
                &[key, &now],
            )
            .await
            .map_err(database)?;
            let row = tx
                .query_one(
                    "SELECT failures, window_start, banned_until, strikes
                     FROM tokengate_login_failures WHERE key = $1 FOR UPDATE",
                    &[key],
                )
                .await
                .map_err(database)?;
            let (mut failures, mut window_start): (i32, i64) = (row.get(0), row.get(1));
            let (mut banned_until, mut strikes): (Option<i64>, i32) = (row.get(2), row.get(3));
            let banned = banned_until.is_some_and(|until| until > now);
            if !banned && now - window_start > ms(c.window) {
                failures = 0;
                window_start = now;
            }
            failures = failures.saturating_add(1);
            let max = i32::try_from(c.max_failures).unwrap_or(i32::MAX);
            if failures >= max && !banned {
                let factor = 1u32
                    .checked_shl(strikes.clamp(0, 20) as u32)
                    .unwrap_or(u32::MAX);
                let ban = c.ban.saturating_mul(factor).min(c.max_ban);
                banned_until = Some(now.saturating_add(ms(ban)));
                strikes = strikes.saturating_add(1);
                failures = 0;
                window_start = now;
                started = Some(started.map_or(ban, |b| b.max(ban)));
            }
            tx.execute(
                "UPDATE tokengate_login_failures SET failures = $2, window_start = $3,
                 banned_until = $4, strikes = $5, last_seen = $6 WHERE key = $1",
                &[key, &failures, &window_start, &banned_until, &strikes, &now],
            )
            .await
            .map_err(database)?;
        }
        tx.commit().await.map_err(database)?;
        Ok(started)
    }

    /// A successful login clears the username's record (not the address's).
    pub async fn login_succeeded(&self, username: &str) -> Result<(), StoreError> {
        let user_key = user_key(username);
        self.client()
            .await?
            .execute(
                "DELETE FROM tokengate_login_failures WHERE key = $1",
                &[&user_key],
            )
            .await
            .map_err(database)?;
        Ok(())
    }

    /// Bans in force for `throttle list`: who and the seconds left.
    pub async fn login_bans(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let bans = self.bans_in_force(None).await?;
        Ok(bans
            .into_iter()
            .map(|(key, left)| (shown(&key).to_owned(), left.as_secs().max(1)))
            .collect())
    }

    /// Lifts the ban and count on an address or username, here and in
    /// every gateway's own throttle; whether the database had any.
    pub async fn lift_login_ban(&self, who: &str) -> Result<bool, StoreError> {
        let key = key_of(who);
        let mut client = self.client().await?;
        // One transaction: the row and the gateways' own bans are lifted
        // together or not at all.
        let tx = client.transaction().await.map_err(database)?;
        let removed = tx
            .execute(
                "DELETE FROM tokengate_login_failures WHERE key = $1",
                &[&key],
            )
            .await
            .map_err(database)?;
        // Told even when the database had no row: a gateway's own count
        // may outlive it. The key's text, not `who`: it is bounded, as a
        // notification must be.
        tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&listen::CHANNEL, &listen::unban_payload(shown(&key))],
        )
        .await
        .map_err(database)?;
        tx.commit().await.map_err(database)?;
        Ok(removed > 0)
    }

    /// Forgets rows idle for a day.
    pub async fn forget_login_failures(&self) -> Result<u64, StoreError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM tokengate_login_failures WHERE last_seen < $1
                 AND coalesce(banned_until, 0) < $2",
                &[&(now_ms() - FORGET_AFTER_MS), &now_ms()],
            )
            .await
            .map_err(database)
    }
}
