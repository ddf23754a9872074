//! Password hashing with argon2id. Hashing is CPU- and memory-heavy by
//! design, so it runs on its own threads, one per core, behind a semaphore
//! of one permit per core, at a lower CPU priority (nice +10) than the
//! threads that proxy traffic: a login flood queues here, and while the
//! proxy is busy hashing gets what CPU is left (about a tenth when the
//! cores are saturated) instead of half of it. The few long-lived threads
//! also bound argon2's memory: each keeps at most one hash's worth.

use std::fmt;
use std::sync::{Arc, Mutex, mpsc};

use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
use argon2::{Algorithm, Argon2, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::django::{self, DjangoHash};
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

/// Niceness of the hashing threads: CPU weight 110 against 1024 for the
/// proxy's threads (nice 0).
const HASHING_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads. They end when the last `Hasher` clone (and so the
/// sender) is dropped, e.g. after a reload.
struct Threads {
    jobs: mpsc::Sender<Job>,
}

impl Threads {
    fn new(threads: usize) -> Result<Self, PasswordError> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..threads {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name("tokengate-argon2".into())
                .spawn(move || {
                    // On Linux this names the calling thread only.
                    let tid = rustix::thread::gettid();
                    if let Err(e) = rustix::process::setpriority_process(Some(tid), HASHING_NICE) {
                        tracing::debug!(error = %e, "cannot lower the hashing thread's priority");
                    }
                    loop {
                        let job = {
                            let receiver = receiver.lock().unwrap_or_else(|p| p.into_inner());
                            receiver.recv()
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return,
                        }
                    }
                })
                .map_err(|e| PasswordError::Hash(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Self { jobs: sender })
    }

    /// Runs `f` on a hashing thread. The permit is held until `f` returns,
    /// not until the caller stops waiting: a client that disconnects
    /// mid-login cannot free its slot and queue another hash behind it.
    async fn run<T: Send + 'static>(
        &self,
        permit: Option<OwnedSemaphorePermit>,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
            drop(permit);
        });
        self.jobs
            .send(job)
            .map_err(|_| PasswordError::Hash("the hashing threads have stopped".into()))?;
        result
            .await
            .map_err(|_| PasswordError::Hash("a hashing thread failed".into()))
    }
}

#[derive(Clone)]
pub struct Hasher {
    params: argon2::Params,
    /// Bounds concurrent hashes to the number of cores.
    permits: Arc<Semaphore>,
    pool: Arc<Threads>,
    /// A hash of a random password with the configured parameters: an unknown
    /// username is verified against it so it costs the same as a wrong password.
    dummy: Arc<str>,
}

impl Hasher {
    /// For the CLI, which has no runtime to protect: the dummy hash is
    /// computed on the calling thread.
    pub fn new(params: Argon2Params) -> Result<Self, PasswordError> {
        let params = params.to_argon2().map_err(PasswordError::Hash)?;
        let dummy = dummy_hash(&params)?;
        let cores = cores();
        Ok(Self {
            params,
            permits: Arc::new(Semaphore::new(cores)),
            pool: Arc::new(Threads::new(cores)?),
            dummy: dummy.into(),
        })
    }

    /// For the server: the dummy hash is computed on the new hashing
    /// threads, so a reload with costly parameters never holds up an async
    /// worker (and the requests on it) for a hash's time.
    pub async fn start(params: Argon2Params) -> Result<Self, PasswordError> {
        let params = params.to_argon2().map_err(PasswordError::Hash)?;
        let cores = cores();
        let permits = Arc::new(Semaphore::new(cores));
        let pool = Arc::new(Threads::new(cores)?);
        let permit = permits.clone().acquire_owned().await.ok();
        let dummy_params = params.clone();
        let dummy = pool
            .run(permit, move || dummy_hash(&dummy_params))
            .await??;
        Ok(Self {
            params,
            permits,
            pool,
            dummy: dummy.into(),
        })
    }

    pub async fn hash(&self, password: &Password) -> Result<String, PasswordError> {
        password.validate_new()?;
        let permit = self.permits.clone().acquire_owned().await.ok();
        let params = self.params.clone();
        let password = password.clone();
        self.pool
            .run(permit, move || {
                hash_blocking(&params, password.expose().as_bytes())
            })
            .await?
    }

    /// Verifies `password` against `stored` (the gateway's argon2id, or a
    /// hash imported from Django), or against the dummy hash when there is
    /// no stored hash, so both cases take the same time.
    pub async fn verify(&self, password: &Password, stored: Option<&str>) -> bool {
        let known = stored.is_some();
        let hash: Arc<str> = stored.map_or_else(|| self.dummy.clone(), Arc::from);
        let permit = self.permits.clone().acquire_owned().await.ok();
        let password = password.clone();
        let ok = self
            .pool
            .run(permit, move || {
                let password = password.expose().as_bytes();
                if django::is_django(&hash) {
                    return DjangoHash::parse(&hash).is_ok_and(|h| h.verify(password));
                }
                Argon2::default().verify_password(password, &*hash).is_ok()
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

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// A hash of a random password, for unknown usernames to be verified against.
fn dummy_hash(params: &argon2::Params) -> Result<String, PasswordError> {
    let mut random = [0u8; 32];
    getrandom::fill(&mut random).map_err(|e| PasswordError::Hash(e.to_string()))?;
    hash_blocking(params, &random)
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
    async fn an_abandoned_check_keeps_its_slot_until_its_hash_ends() {
        // Slow enough (64 MiB, 3 passes) to be abandoned mid-hash.
        let h = Hasher::new(Argon2Params {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        })
        .unwrap();
        let slots = h.permits.available_permits();
        let pw = Password::new("guess".into());
        let abandoned =
            tokio::time::timeout(std::time::Duration::from_millis(1), h.verify(&pw, None)).await;
        assert!(abandoned.is_err(), "the check finished within 1 ms");
        assert_eq!(
            h.permits.available_permits(),
            slots - 1,
            "the slot was freed while its hash still runs"
        );
        // It comes back once the hash is done.
        let _ = h.permits.acquire_many(slots as u32).await.unwrap();
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

    #[tokio::test]
    async fn a_started_hasher_verifies_unknown_users_against_its_dummy() {
        let h = Hasher::start(Argon2Params {
            memory_kib: 64,
            iterations: 1,
            parallelism: 1,
        })
        .await
        .unwrap();
        assert!(
            h.dummy.starts_with("$argon2id$v=19$m=64,t=1,p=1$"),
            "{}",
            h.dummy
        );
        assert!(!h.verify(&Password::new("x".into()), None).await);
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(
            format!("{:?}", Password::new("hunter2".into())),
            "Password(<redacted>)"
        );
    }
}
