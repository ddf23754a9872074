//! What the store keeps and hands out, whichever database holds it.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::request::scope::Scope;
use crate::store::StoreError;
use crate::store::token::{Token, TokenDigest};

#[derive(Clone, Serialize, Deserialize)]
pub struct User {
    pub username: String,
    /// argon2id PHC string.
    pub password_hash: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    /// Unix seconds.
    pub created_at: u64,
    pub epoch: u64,
}

/// The stored password hash of a user who has none: a service user, whose
/// tokens come from `token issue` only. Django writes unusable passwords
/// the same way.
pub const NO_PASSWORD: &str = "!";

impl User {
    /// The hash a login is checked against; `None` for a user without a
    /// usable password, who is then checked like an unknown user.
    pub fn password(&self) -> Option<&str> {
        (!self.password_hash.starts_with('!')).then_some(self.password_hash.as_str())
    }
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("username", &self.username)
            .field("roles", &self.roles)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenRecord {
    pub user: String,
    pub epoch: u64,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub label: Option<String>,
    /// Updated at most once per `LAST_USED_GRANULARITY`, never per request.
    #[serde(default)]
    pub last_used_at: Option<u64>,
    /// `METHODS PATTERN` texts in canonical form; empty: all of the
    /// user's rights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// How stale `last_used_at` may get: one store write per token per minute at most.
pub const LAST_USED_GRANULARITY: u64 = 60;

/// A user to import (from Django): the hash as that system wrote it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportedUser {
    pub username: String,
    pub password_hash: String,
    pub roles: Vec<String>,
    pub disabled: bool,
}

/// A token to import, by the digest it is looked up by.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImportedToken {
    pub username: String,
    pub digest: TokenDigest,
    /// Unix seconds.
    pub created_at: u64,
    pub expires_at: Option<u64>,
    /// `django` or `knox`.
    pub label: String,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Imported {
    pub added: Vec<String>,
    /// Usernames already in the store, left unchanged.
    pub kept: Vec<String>,
    /// Tokens added, by label.
    pub tokens: std::collections::BTreeMap<String, usize>,
}

/// A token as `token list` shows it: never the secret.
#[derive(Debug, Clone)]
pub struct TokenInfo {
    pub id: String,
    pub record: TokenRecord,
}

/// The caller a valid token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub username: String,
    pub roles: Vec<String>,
}

/// A live token: who it belongs to, and what a cache of checks needs.
#[derive(Debug, Clone)]
pub struct LiveToken {
    pub identity: Identity,
    pub expires_at: Option<u64>,
    /// As stored after this check (it may have just been recorded).
    pub last_used_at: Option<u64>,
    /// The token's scopes as stored; empty when unscoped.
    pub scopes: Vec<String>,
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

pub fn validate_username(name: &str) -> Result<(), StoreError> {
    let ok = (1..=150).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@.+-_".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidUsername(
            name.escape_default().to_string(),
        ))
    }
}

pub fn validate_role(role: &str) -> Result<(), StoreError> {
    if crate::config::is_role_name(role) {
        Ok(())
    } else {
        Err(StoreError::InvalidRole(role.escape_default().to_string()))
    }
}

/// Checks a name and roles as every backend stores them.
pub fn validate_user(username: &str, roles: &[String]) -> Result<(), StoreError> {
    validate_username(username)?;
    roles.iter().try_for_each(|role| validate_role(role))
}

/// A new, enabled user with a fresh epoch, checked the same way whichever
/// backend keeps it.
pub fn new_user(
    username: &str,
    password_hash: String,
    roles: Vec<String>,
) -> Result<User, StoreError> {
    validate_user(username, &roles)?;
    Ok(User {
        username: username.to_owned(),
        password_hash,
        roles,
        disabled: false,
        created_at: now(),
        epoch: random_u64()?,
    })
}

/// A random epoch (or any u64 the store needs unguessable).
pub fn random_u64() -> Result<u64, StoreError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| StoreError::Random(e.to_string()))?;
    Ok(u64::from_le_bytes(b))
}

/// A new token for `user` and the record every backend stores for it,
/// checked the same way whichever backend keeps it.
pub fn new_token(
    user: &User,
    ttl: Option<std::time::Duration>,
    label: Option<String>,
    scopes: &[Scope],
) -> Result<(Token, TokenRecord), StoreError> {
    if let Some(label) = &label
        && (label.chars().count() > 200 || label.chars().any(char::is_control))
    {
        return Err(StoreError::InvalidLabel);
    }
    let token = Token::generate().map_err(|e| StoreError::Random(e.to_string()))?;
    let created_at = now();
    let record = TokenRecord {
        user: user.username.clone(),
        epoch: user.epoch,
        created_at,
        expires_at: ttl.map(|ttl| created_at.saturating_add(ttl.as_secs())),
        label,
        last_used_at: None,
        scopes: scopes.iter().map(Scope::to_string).collect(),
    };
    Ok((token, record))
}
