//! Password hashing with argon2id. Hashing is CPU- and memory-heavy by
//! design, so it runs on tokio's blocking pool behind a semaphore of one
//! permit per core: a login flood queues here instead of starving the
//! threads that proxy traffic.

use std::fmt;
use std::sync::Arc;

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Version};
use tokio::sync::Semaphore;

use crate::config::Argon2Params;

/// Longest password accepted when one is set: argon2 cost grows with input.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// A password in clear; `Debug` never shows it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(text: String) -> Self {
        Self(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The rules for a password being set (not for one tried at login).
    pub fn validate_new(&self) -> Result<(), PasswordError> {
        if self.0.is_empty() {
            Err(PasswordError::Empty)
        } else if self.0.len() > MAX_PASSWORD_LEN {
            Err(PasswordError::TooLong)
        } else {
            Ok(())
        }
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("the password is empty; choose a non-empty password")]
    Empty,
    #[error("the password is longer than {MAX_PASSWORD_LEN} bytes; choose a shorter one")]
    TooLong,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("password hashing task failed")]
    Task(#[from] tokio::task::JoinError),
}

#[derive(Clone)]
pub struct Hasher {
    params: argon2::Params,
    /// Bounds concurrent hashes to the number of cores.
    permits: Arc<Semaphore>,
    /// A hash of a random password with the configured parameters: an unknown
    /// username is verified against it so it costs the same as a wrong password.
    dummy: Arc<str>,
}

impl Hasher {
    pub fn new(params: Argon2Params) -> Result<Self, PasswordError> {
        let params = params.to_argon2().map_err(PasswordError::Hash)?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let mut random = [0u8; 32];
        getrandom::fill(&mut random).map_err(|e| PasswordError::Hash(e.to_string()))?;
        let dummy = hash_blocking(&params, &random)?;
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(cores)),
            dummy: dummy.into(),
        })
    }

    pub async fn hash(&self, password: &Password) -> Result<String, PasswordError> {
        password.validate_new()?;
        let _permit = self.permits.acquire().await;
        let params = self.params.clone();
        let password = password.clone();
        tokio::task::spawn_blocking(move || hash_blocking(&params, password.expose().as_bytes()))
            .await?
    }

    /// Verifies `password` against `stored`, or against the dummy hash when
    /// there is no stored hash, so both cases take the same time.
    pub async fn verify(&self, password: &Password, stored: Option<&str>) -> bool {
        let known = stored.is_some();
        let hash: Arc<str> = stored.map_or_else(|| self.dummy.clone(), Arc::from);
        let _permit = self.permits.acquire().await;
        let password = password.clone();
        let ok = tokio::task::spawn_blocking(move || {
            Argon2::default()
                .verify_password(password.expose().as_bytes(), &*hash)
                .is_ok()
        })
        .await
        .unwrap_or(false);
        ok && known
    }

    /// Synchronous hash for the CLI, which has no runtime to protect.
    pub fn hash_now(&self, password: &Password) -> Result<String, PasswordError> {
        password.validate_new()?;
        hash_blocking(&self.params, password.expose().as_bytes())
    }
}

fn hash_blocking(params: &argon2::Params, password: &[u8]) -> Result<String, PasswordError> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Hasher {
        Hasher::new(Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })
        .unwrap()
    }

    #[tokio::test]
    async fn hashes_are_argon2id_phc_and_verify() {
        let h = fast();
        let pw = Password::new("correct horse".into());
        let stored = h.hash(&pw).await.unwrap();
        assert!(
            stored.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{stored}"
        );
        assert!(h.verify(&pw, Some(&stored)).await);
        assert!(
            !h.verify(&Password::new("wrong".into()), Some(&stored))
                .await
        );
        assert!(!h.verify(&pw, None).await);
        assert!(!h.verify(&pw, Some("not a phc string")).await);
    }

    #[tokio::test]
    async fn empty_and_huge_passwords_are_refused_when_set() {
        let h = fast();
        assert!(matches!(
            h.hash(&Password::new(String::new())).await,
            Err(PasswordError::Empty)
        ));
        assert!(matches!(
            h.hash(&Password::new("x".repeat(MAX_PASSWORD_LEN + 1)))
                .await,
            Err(PasswordError::TooLong)
        ));
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(
            format!("{:?}", Password::new("hunter2".into())),
            "Password(<redacted>)"
        );
    }
}
