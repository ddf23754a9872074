//! The embedded backend: users and tokens in sled. Every write is flushed
//! to disk before the call returns, so whatever the caller acknowledges
//! survives `kill -9`. A write that fails (a full disk) is reported, never
//! acknowledged; sled then refuses all writes, so the store keeps
//! answering reads from the failed database and reopens it from disk once
//! the disk takes writes again (see `Embedded::reopen`).
//!
//! Trees:
//! - `users`:  username → `User` (JSON)
//! - `tokens`: SHA-256 of the token → `TokenRecord` (JSON); the secret itself is never stored
//! - `user_tokens`: username ‖ 0x00 ‖ digest → () — finds a user's tokens

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;

use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};

use crate::store::changes::{Changes, Revoked};
use crate::store::token::{Token, TokenDigest};
use crate::store::{
    Identity, Imported, ImportedToken, ImportedUser, LAST_USED_GRANULARITY, LiveToken, StoreError,
    TokenInfo, TokenRecord, User, now, random_u64, validate_role,
};

/// The open sled database and its trees. Replaced whole when the store is
/// reopened after a failed write.
struct Handles {
    db: sled::Db,
    users: sled::Tree,
    tokens: sled::Tree,
    user_tokens: sled::Tree,
}

/// sled's page cache (its default is 1 GiB). Token checks are served by
/// `crate::auth::cache`, and the expiry sweep reads every token: with the
/// default, a large store stayed resident after one sweep
/// (docs/benchmarks.md).
const CACHE_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone)]
pub struct Embedded {
    path: Arc<Path>,
    /// `None` only while a failed database is being reopened. Each call
    /// holds its own `Arc` for its duration, so the reopen knows when the
    /// old database (and its lock on the directory) is really gone.
    handles: Arc<ArcSwapOption<Handles>>,
    /// Set by a failed write. sled 0.34 poisons itself on a write error
    /// (ENOSPC, EIO): every later write fails, even once the disk has room
    /// again. Reads still answer from it, so valid tokens keep working
    /// while writes are refused, until the store is reopened.
    fault: Arc<Fault>,
    /// Writes hold it shared; a backup or a reopen holds it exclusively, so
    /// a snapshot sees all three trees at one instant.
    gate: Arc<RwLock<()>>,
    /// Moved on after every write (see `Writing`) and every reopen; the
    /// `last_used_at` bookkeeping does not move it. Writes that end tokens
    /// are announced through it once durable.
    changes: Arc<Changes>,
}

/// Whether a user write ends the user's tokens (a new epoch).
enum EndTokens {
    Yes,
    No,
}

/// A write in progress: the gate held shared. Dropped when the write and
/// its flush are done (successful or not), it moves the store's generation
/// on before the writing call returns, so no check cached before the write
/// is trusted after it.
struct Writing<'a> {
    _gate: RwLockReadGuard<'a, ()>,
    changes: &'a Changes,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.changes.advance();
    }
}

#[derive(Default)]
struct Fault {
    /// The fast check on the request path.
    failed: AtomicBool,
    state: Mutex<Option<FaultState>>,
}

struct FaultState {
    /// The write error, for messages until the reopen.
    error: String,
    /// No reopen is tried before this, so a still-full disk costs one
    /// small probe write per `REOPEN_INTERVAL`, not one per request.
    next_attempt: Instant,
}

impl Fault {
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<FaultState>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// How often a failed store tries to reopen.
const REOPEN_INTERVAL: Duration = Duration::from_secs(1);
/// Written (and removed) in the store's directory before a reopen: the disk
/// must take at least this much again, one sled segment.
const PROBE_BYTES: usize = 512 * 1024;
const PROBE_NAME: &str = "space-probe.tmp";

/// The trees a backup carries, by name.
pub const TREES: [&str; 3] = ["users", "tokens", "user_tokens"];

fn user_token_key(user: &str, digest: &TokenDigest) -> Vec<u8> {
    let mut key = Vec::with_capacity(user.len() + 33);
    key.extend_from_slice(user.as_bytes());
    key.push(0);
    key.extend_from_slice(&digest.0);
    key
}

type TxResult<T> = Result<T, ConflictableTransactionError<StoreError>>;

fn abort<T>(e: StoreError) -> TxResult<T> {
    Err(ConflictableTransactionError::Abort(e))
}

fn unwrap_tx<T>(r: Result<T, TransactionError<StoreError>>) -> Result<T, StoreError> {
    r.map_err(|e| match e {
        TransactionError::Abort(e) => e,
        TransactionError::Storage(e) => StoreError::Io(e),
    })
}

fn open_handles(path: &Path) -> Result<Handles, StoreError> {
    // Password hashes live here: owner-only before sled looks inside, and
    // again once sled has created its files (with the umask's mode).
    crate::store::files::make_store_private(path)?;
    let db = sled::Config::new()
        .path(path)
        .cache_capacity(CACHE_BYTES)
        .open()
        .map_err(|source| {
            let locked = matches!(&source, sled::Error::Io(io)
            if io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().contains("lock"));
            if locked {
                StoreError::Locked {
                    path: path.to_path_buf(),
                }
            } else {
                StoreError::Open {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
    let tree = |name: &str| {
        db.open_tree(name).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source,
        })
    };
    let handles = Handles {
        users: tree("users")?,
        tokens: tree("tokens")?,
        user_tokens: tree("user_tokens")?,
        db,
    };
    crate::store::files::make_store_private(path)?;
    Ok(handles)
}

/// Whether the disk under `dir` takes writes again: writes, syncs and
/// removes a file of `PROBE_BYTES`.
fn probe_space(dir: &Path) -> std::io::Result<()> {
    let path = dir.join(PROBE_NAME);
    let written = (|| {
        let mut file = std::fs::File::create(&path)?;
        file.write_all(&[0u8; PROBE_BYTES])?;
        file.sync_all()
    })();
    let removed = std::fs::remove_file(&path);
    written.and(removed)
}

impl Embedded {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let handles = open_handles(path)?;
        Ok(Self {
            path: Arc::from(path),
            handles: Arc::new(ArcSwapOption::from_pointee(handles)),
            fault: Arc::new(Fault::default()),
            gate: Arc::new(RwLock::new(())),
            changes: Arc::new(Changes::default()),
        })
    }

    pub fn changes(&self) -> &Changes {
        &self.changes
    }

    /// Every revocation from now on, each once it is durable (see
    /// [`Changes::subscribe`]).
    pub fn revocations(&self) -> tokio::sync::broadcast::Receiver<Revoked> {
        self.changes.subscribe()
    }

    /// Called only once the write's `Writing` guard is dropped, so the
    /// generation has already moved.
    fn announce(&self, revoked: Revoked) {
        self.changes.announce(revoked);
    }

    fn writing(&self) -> Writing<'_> {
        Writing {
            _gate: self.gate.read().unwrap_or_else(|p| p.into_inner()),
            changes: &self.changes,
        }
    }

    /// Changes after every write: a check made at one generation holds
    /// while the generation is the same.
    pub fn generation(&self) -> u64 {
        self.changes.generation()
    }

    fn unavailable(&self, reason: &str) -> StoreError {
        StoreError::Unavailable {
            path: self.path.to_path_buf(),
            reason: reason.to_owned(),
        }
    }

    /// The open database, for a read.
    fn handles(&self) -> Result<Arc<Handles>, StoreError> {
        self.handles
            .load_full()
            .ok_or_else(|| self.unavailable("it is being reopened"))
    }

    /// Before a write: after a failed write, reopens the store if the disk
    /// has room again, else refuses at once. Writes call this before taking
    /// the gate, then take the handles under it, so a reopen (which holds
    /// the gate exclusively) never waits on a writer.
    fn ready_for_write(&self) -> Result<(), StoreError> {
        if self.fault.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        Ok(())
    }

    /// Passes a write's result through, noting an I/O failure: sled takes
    /// no more writes after one until it is reopened.
    fn wrote<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match result {
            Err(StoreError::Io(source)) => {
                self.note_failure(&source);
                Err(StoreError::WriteFailed {
                    path: self.path.to_path_buf(),
                    source,
                })
            }
            other => other,
        }
    }

    fn note_failure(&self, error: &sled::Error) {
        self.fault.failed.store(true, Ordering::Release);
        // Never waits: a reopen in progress holds the lock and settles the state.
        let mut state = match self.fault.state.try_lock() {
            Ok(state) => state,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if state.is_none() {
            tracing::error!(
                store = %self.path.display(),
                error = %error,
                "a store write failed; writes are refused (logins answer 503) until the store reopens, tried every {}s once the disk takes writes again",
                REOPEN_INTERVAL.as_secs()
            );
            *state = Some(FaultState {
                error: error.to_string(),
                next_attempt: Instant::now(),
            });
        }
    }

    /// After a failed write: if the disk takes a probe write again, drops
    /// the poisoned database and opens it anew from disk, which holds
    /// exactly the acknowledged writes. At most one attempt per
    /// `REOPEN_INTERVAL`; other callers are refused meanwhile.
    fn reopen(&self) -> Result<(), StoreError> {
        {
            let mut state = self.fault.lock();
            match state.as_mut() {
                None => return Ok(()),
                Some(f) if Instant::now() < f.next_attempt => {
                    return Err(self.unavailable(&f.error));
                }
                Some(f) => f.next_attempt = Instant::now() + REOPEN_INTERVAL,
            }
        }
        if let Err(e) = probe_space(&self.path) {
            tracing::debug!(error = %e, "store: the disk takes no writes yet");
            return Err(self.unavailable(&format!("the disk takes no writes yet: {e}")));
        }
        let _exclusive = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let mut state = self.fault.lock();
        let Some(fault) = state.as_mut() else {
            return Ok(());
        };
        if let Some(old) = self.handles.swap(None) {
            // Calls in flight finish on the old database; sled's lock on
            // the directory goes with its last handle.
            let deadline = Instant::now() + Duration::from_secs(10);
            while Arc::strong_count(&old) > 1 {
                if Instant::now() > deadline {
                    self.handles.store(Some(old));
                    return Err(self.unavailable(&fault.error));
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            drop(old);
        }
        let started = Instant::now();
        let opened = loop {
            match open_handles(&self.path) {
                // sled's background threads may hold the old lock a moment.
                Err(StoreError::Locked { .. }) if started.elapsed() < Duration::from_secs(5) => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                other => break other,
            }
        };
        match opened {
            Ok(handles) => {
                self.handles.store(Some(Arc::new(handles)));
                // Writes that failed may have shown in the old database's reads.
                self.changes.advance();
                self.announce(Revoked::Any);
                *state = None;
                self.fault.failed.store(false, Ordering::Release);
                tracing::warn!(store = %self.path.display(), took = ?started.elapsed(), "store reopened after a write failure; writes resume");
                Ok(())
            }
            Err(e) => {
                tracing::error!(store = %self.path.display(), error = %e, "reopening the store failed; retrying");
                fault.error = e.to_string();
                Err(self.unavailable(&fault.error))
            }
        }
    }

    /// Calls `f` with every entry of every tree, with writes held off so the
    /// entries form one consistent snapshot.
    pub fn snapshot(
        &self,
        mut f: impl FnMut(&str, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<usize, StoreError> {
        let _exclusive = self.gate.write().unwrap_or_else(|p| p.into_inner());
        let h = self.handles()?;
        let mut n = 0;
        for (name, tree) in TREES.into_iter().zip([&h.users, &h.tokens, &h.user_tokens]) {
            for entry in tree.iter() {
                let (k, v) = entry?;
                f(name, &k, &v)?;
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn is_empty(&self) -> bool {
        self.handles().is_ok_and(|h| h.is_empty())
    }

    /// Loads `entries` (tree, key, value) into an empty store in one
    /// transaction: all of them or none.
    pub fn load(&self, entries: &[(String, Vec<u8>, Vec<u8>)]) -> Result<(), StoreError> {
        self.ready_for_write()?;
        let _gate = self.writing();
        let h = self.handles()?;
        if !h.is_empty() {
            return Err(StoreError::NotEmpty);
        }
        let mut batches: [sled::Batch; 3] = Default::default();
        for (tree, k, v) in entries {
            let i = TREES
                .iter()
                .position(|t| t == tree)
                .ok_or_else(|| StoreError::BadSnapshot(format!("unknown tree `{tree}`")))?;
            if tree == "users" {
                serde_json::from_slice::<User>(v)?;
            } else if tree == "tokens" {
                serde_json::from_slice::<TokenRecord>(v)?;
            }
            batches[i].insert(k.as_slice(), v.as_slice());
        }
        self.wrote(
            unwrap_tx((&h.users, &h.tokens, &h.user_tokens).transaction(
                |(users, tokens, user_tokens)| {
                    users.apply_batch(&batches[0])?;
                    tokens.apply_batch(&batches[1])?;
                    user_tokens.apply_batch(&batches[2])?;
                    Ok(())
                },
            ))
            .and_then(|()| h.flush()),
        )
    }

    /// Makes every write so far durable. Each write calls this before it
    /// returns; the server calls it once more at shutdown.
    pub fn flush(&self) -> Result<(), StoreError> {
        let h = self.handles()?;
        self.wrote(h.flush())
    }

    /// A cheap read that fails when the store does: for readiness checks.
    /// A store refusing writes after a failure is not ready either.
    pub fn ping(&self) -> Result<(), StoreError> {
        if self.fault.failed.load(Ordering::Acquire) {
            let reason = self
                .fault
                .lock()
                .as_ref()
                .map_or_else(String::new, |f| f.error.clone());
            return Err(self.unavailable(&reason));
        }
        self.handles()?.users.first()?;
        Ok(())
    }

    pub fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        self.handles()?.user(name)
    }

    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.handles()?
            .users
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Stores a user made by `new_user`, unless one has the name already.
    pub fn insert_user(&self, user: User) -> Result<User, StoreError> {
        let username = user.username.as_str();
        let bytes = serde_json::to_vec(&user)?;
        self.ready_for_write()?;
        let _gate = self.writing();
        let h = self.handles()?;
        let swapped = self.wrote(
            h.users
                .compare_and_swap(username.as_bytes(), None as Option<&[u8]>, Some(bytes))
                .map_err(StoreError::from),
        )?;
        if swapped.is_err() {
            return Err(StoreError::UserExists(username.to_owned()));
        }
        self.wrote(h.flush())?;
        Ok(user)
    }

    /// Changes a user and ends all of their tokens, in one durable write,
    /// then says so.
    fn update_user_and_end_tokens(
        &self,
        name: &str,
        change: impl Fn(&mut User),
    ) -> Result<(), StoreError> {
        self.write_user(name, change, EndTokens::Yes)?;
        self.announce(Revoked::User(Arc::from(name)));
        Ok(())
    }

    /// Replaces a user's roles. Their tokens stay live and carry the new
    /// roles from the next request (the write moves the generation, so no
    /// cached check outlives it); open tunnels, authorized under the old
    /// roles, are told to close.
    pub fn set_roles(&self, name: &str, roles: Vec<String>) -> Result<(), StoreError> {
        for role in &roles {
            validate_role(role)?;
        }
        self.write_user(name, |u| u.roles = roles.clone(), EndTokens::No)?;
        self.announce(Revoked::Roles(Arc::from(name)));
        Ok(())
    }

    /// Replaces a user's password hash with `new` if it is still `old`,
    /// without ending their tokens: the same password, hashed the
    /// gateway's way (an imported Django hash, at the first login).
    /// `false` when the hash changed meanwhile.
    pub fn rehash_password(&self, name: &str, old: &str, new: String) -> Result<bool, StoreError> {
        let replaced = std::sync::atomic::AtomicBool::new(false);
        self.write_user(
            name,
            |u| {
                if u.password_hash == old {
                    u.password_hash = new.clone();
                    replaced.store(true, Ordering::Relaxed);
                }
            },
            EndTokens::No,
        )?;
        Ok(replaced.load(Ordering::Relaxed))
    }

    fn write_user(
        &self,
        name: &str,
        change: impl Fn(&mut User),
        end_tokens: EndTokens,
    ) -> Result<(), StoreError> {
        let epoch = match end_tokens {
            EndTokens::Yes => Some(random_u64()?),
            EndTokens::No => None,
        };
        self.ready_for_write()?;
        let _gate = self.writing();
        let h = self.handles()?;
        self.wrote(
            unwrap_tx(h.users.transaction(|users| {
                let Some(bytes) = users.get(name.as_bytes())? else {
                    return abort(StoreError::UnknownUser(name.to_owned()));
                };
                let mut user: User = match serde_json::from_slice(&bytes) {
                    Ok(u) => u,
                    Err(e) => return abort(e.into()),
                };
                change(&mut user);
                if let Some(epoch) = epoch {
                    user.epoch = epoch;
                }
                match serde_json::to_vec(&user) {
                    Ok(bytes) => users.insert(name.as_bytes(), bytes)?,
                    Err(e) => return abort(e.into()),
                };
                Ok(())
            }))
            // A new epoch already ends the tokens; this only reclaims space.
            .and_then(|()| match epoch {
                Some(_) => h.delete_tokens_of(name),
                None => Ok(()),
            })
            .and_then(|()| h.flush()),
        )
    }

    pub fn set_password(&self, name: &str, password_hash: String) -> Result<(), StoreError> {
        self.update_user_and_end_tokens(name, |u| u.password_hash = password_hash.clone())
    }

    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError> {
        self.update_user_and_end_tokens(name, |u| u.disabled = disabled)
    }

    pub fn revoke_user_tokens(&self, name: &str) -> Result<usize, StoreError> {
        let count = self
            .handles()?
            .user_tokens
            .scan_prefix(user_prefix(name))
            .count();
        self.update_user_and_end_tokens(name, |_| {})?;
        Ok(count)
    }

    pub fn remove_user(&self, name: &str) -> Result<(), StoreError> {
        self.delete_user(name)?;
        self.announce(Revoked::User(Arc::from(name)));
        Ok(())
    }

    fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        self.ready_for_write()?;
        let _gate = self.writing();
        let h = self.handles()?;
        let removed = self.wrote(h.users.remove(name.as_bytes()).map_err(StoreError::from))?;
        if removed.is_none() {
            return Err(StoreError::UnknownUser(name.to_owned()));
        }
        self.wrote(h.delete_tokens_of(name).and_then(|()| h.flush()))
    }

    /// Stores a token made by `new_token`, provided its user's credentials
    /// have not changed since (its epoch still holds). Returns only once
    /// the token is on disk: a token that was not saved is never handed out.
    pub fn insert_token(
        &self,
        token: Token,
        record: TokenRecord,
    ) -> Result<(Token, TokenRecord), StoreError> {
        let digest = token.digest();
        let bytes = serde_json::to_vec(&record)?;
        self.ready_for_write()?;
        let _gate = self.writing();
        let h = self.handles()?;
        let name = record.user.as_str();
        self.wrote(
            unwrap_tx((&h.users, &h.tokens, &h.user_tokens).transaction(
                |(users, tokens, user_tokens)| {
                    let current = match users.get(name.as_bytes())? {
                        Some(b) => serde_json::from_slice::<User>(&b).ok(),
                        None => None,
                    };
                    match current {
                        Some(u) if u.epoch == record.epoch && !u.disabled => {}
                        Some(_) => return abort(StoreError::Stale),
                        None => return abort(StoreError::UnknownUser(name.to_owned())),
                    }
                    tokens.insert(&digest.0[..], bytes.as_slice())?;
                    user_tokens.insert(user_token_key(name, &digest), &[][..])?;
                    Ok(())
                },
            ))
            .and_then(|()| h.flush()),
        )?;
        Ok((token, record))
    }

    /// Adds users and their tokens brought in from elsewhere (Django), all
    /// in one transaction: every new user or none. A username already
    /// here is kept unchanged and its tokens in `tokens` are not added
    /// (the name may be someone else's); a token already stored is left
    /// as it is. So importing the same users twice changes nothing.
    pub fn import(
        &self,
        users: &[ImportedUser],
        tokens: &[ImportedToken],
    ) -> Result<Imported, StoreError> {
        // Drawn before the transaction, which may run more than once.
        let epochs: Vec<u64> = users
            .iter()
            .map(|_| random_u64())
            .collect::<Result<_, _>>()?;
        let created_at = now();
        self.ready_for_write()?;
        let _gate = self.writing();
        let h = self.handles()?;
        let outcome = self.wrote(
            unwrap_tx((&h.users, &h.tokens, &h.user_tokens).transaction(
                |(users_tree, tokens_tree, user_tokens)| {
                    let mut done = Imported::default();
                    let mut added: HashMap<&str, &User> = HashMap::new();
                    let mut records = Vec::new();
                    for (user, epoch) in users.iter().zip(&epochs) {
                        if users_tree.get(user.username.as_bytes())?.is_some()
                            || added.contains_key(user.username.as_str())
                        {
                            done.kept.push(user.username.clone());
                            continue;
                        }
                        records.push(User {
                            username: user.username.clone(),
                            password_hash: user.password_hash.clone(),
                            roles: user.roles.clone(),
                            disabled: user.disabled,
                            created_at,
                            epoch: *epoch,
                        });
                    }
                    for record in &records {
                        let bytes = match serde_json::to_vec(record) {
                            Ok(b) => b,
                            Err(e) => return abort(e.into()),
                        };
                        users_tree.insert(record.username.as_bytes(), bytes)?;
                        added.insert(record.username.as_str(), record);
                        done.added.push(record.username.clone());
                    }
                    for token in tokens {
                        // A disabled user's tokens are ended, as Django
                        // refuses an inactive user's.
                        let Some(user) = added.get(token.username.as_str()).filter(|u| !u.disabled)
                        else {
                            continue;
                        };
                        if tokens_tree.get(&token.digest.0[..])?.is_some() {
                            continue;
                        }
                        let record = TokenRecord {
                            user: user.username.clone(),
                            epoch: user.epoch,
                            created_at: token.created_at,
                            expires_at: token.expires_at,
                            label: Some(token.label.clone()),
                            last_used_at: None,
                            scopes: Vec::new(),
                        };
                        let bytes = match serde_json::to_vec(&record) {
                            Ok(b) => b,
                            Err(e) => return abort(e.into()),
                        };
                        tokens_tree.insert(&token.digest.0[..], bytes)?;
                        user_tokens
                            .insert(user_token_key(&user.username, &token.digest), &[][..])?;
                        *done.tokens.entry(token.label.clone()).or_default() += 1;
                    }
                    Ok(done)
                },
            ))
            .and_then(|done| h.flush().map(|()| done)),
        )?;
        Ok(outcome)
    }

    /// The identity behind a token, if the token is live: known, unexpired,
    /// and its user present, enabled and on the same epoch.
    pub fn authenticate(&self, digest: &TokenDigest) -> Result<Option<Identity>, StoreError> {
        Ok(self.use_token(digest)?.map(|live| live.identity))
    }

    /// `authenticate`, with the token's expiry and last use.
    pub fn use_token(&self, digest: &TokenDigest) -> Result<Option<LiveToken>, StoreError> {
        let h = self.handles()?;
        let Some(bytes) = h.tokens.get(digest.0)? else {
            return Ok(None);
        };
        let mut record: TokenRecord = serde_json::from_slice(&bytes)?;
        let now = now();
        if record.expires_at.is_some_and(|at| at <= now) {
            return Ok(None);
        }
        let Some(user) = h.user(&record.user)? else {
            return Ok(None);
        };
        if user.disabled || user.epoch != record.epoch {
            return Ok(None);
        }
        let mut last_used_at = record.last_used_at;
        if record
            .last_used_at
            .is_none_or(|at| now.saturating_sub(at) >= LAST_USED_GRANULARITY)
            && !self.fault.failed.load(Ordering::Acquire)
        {
            record.last_used_at = Some(now);
            // Compare-and-swap so a concurrent revocation is never undone;
            // losing this bookkeeping write to a race is harmless. It is not
            // an acknowledged change, so it rides sled's background flush,
            // and its failure (a full disk) never fails the request.
            // Skipped while a backup or a reopen holds the gate.
            let updated = serde_json::to_vec(&record)?;
            if let Ok(_gate) = self.gate.try_read() {
                match h
                    .tokens
                    .compare_and_swap(digest.0, Some(bytes), Some(updated))
                {
                    Ok(Ok(())) => last_used_at = Some(now),
                    // Lost to a concurrent change: left as it was read.
                    Ok(Err(_)) => {}
                    Err(e) => self.note_failure(&e),
                }
            }
        }
        Ok(Some(LiveToken {
            identity: Identity {
                username: user.username,
                roles: user.roles,
            },
            expires_at: record.expires_at,
            last_used_at,
            scopes: record.scopes,
        }))
    }

    pub fn revoke(&self, digest: &TokenDigest) -> Result<bool, StoreError> {
        let removed = self.delete_token(digest)?;
        if removed {
            self.announce(Revoked::Token(*digest));
        }
        Ok(removed)
    }

    fn delete_token(&self, digest: &TokenDigest) -> Result<bool, StoreError> {
        self.ready_for_write()?;
        let _gate = self.writing();
        let h = self.handles()?;
        self.wrote((|| {
            let Some(bytes) = h.tokens.remove(digest.0)? else {
                return Ok(false);
            };
            if let Ok(record) = serde_json::from_slice::<TokenRecord>(&bytes) {
                h.user_tokens.remove(user_token_key(&record.user, digest))?;
            }
            h.flush()?;
            Ok(true)
        })())
    }

    pub fn revoke_id(&self, id: &str) -> Result<(), StoreError> {
        let prefix =
            TokenDigest::parse_id(id).ok_or_else(|| StoreError::UnknownToken(id.to_owned()))?;
        let mut found = None;
        for key in self.handles()?.tokens.scan_prefix(prefix).keys() {
            let key = key?;
            if let Ok(digest) = <[u8; 32]>::try_from(key.as_ref()) {
                found = Some(TokenDigest(digest));
            }
        }
        match found {
            Some(digest) => self.revoke(&digest).map(|_| ()),
            None => Err(StoreError::UnknownToken(id.to_owned())),
        }
    }

    /// Deletes expired tokens; returns how many. They are already refused
    /// at check time, this only reclaims space. The scan runs outside the
    /// write gate, so a backup never waits for it, and a sweep that finds
    /// nothing writes nothing (the token cache keeps its checks).
    pub fn purge_expired(&self) -> Result<usize, StoreError> {
        let now = now();
        let mut expired = Vec::new();
        for entry in self.handles()?.tokens.iter() {
            let (key, value) = entry?;
            let Ok(record) = serde_json::from_slice::<TokenRecord>(&value) else {
                continue;
            };
            if record.expires_at.is_some_and(|at| at <= now) {
                expired.push((key, value, record.user));
            }
        }
        if expired.is_empty() {
            return Ok(0);
        }
        self.ready_for_write()?;
        let _gate = self.writing();
        let h = self.handles()?;
        self.wrote((|| {
            let mut purged = 0;
            for (key, value, user) in expired {
                // Only as it was read: a token changed since is left alone.
                if h.tokens
                    .compare_and_swap(&key, Some(value), None as Option<&[u8]>)?
                    .is_ok()
                {
                    if let Ok(digest) = <[u8; 32]>::try_from(key.as_ref()) {
                        h.user_tokens
                            .remove(user_token_key(&user, &TokenDigest(digest)))?;
                    }
                    purged += 1;
                }
            }
            if purged > 0 {
                h.flush()?;
            }
            Ok(purged)
        })())
    }

    pub fn tokens(&self, user: Option<&str>) -> Result<Vec<TokenInfo>, StoreError> {
        let mut out = Vec::new();
        for entry in self.handles()?.tokens.iter() {
            let (key, value) = entry?;
            let record: TokenRecord = serde_json::from_slice(&value)?;
            if user.is_some_and(|u| u != record.user) {
                continue;
            }
            let Ok(digest) = <[u8; 32]>::try_from(key.as_ref()) else {
                continue;
            };
            out.push(TokenInfo {
                id: TokenDigest(digest).id(),
                record,
            });
        }
        out.sort_by(|a, b| {
            a.record
                .created_at
                .cmp(&b.record.created_at)
                .then(a.id.cmp(&b.id))
        });
        Ok(out)
    }
}

impl Handles {
    fn is_empty(&self) -> bool {
        self.users.is_empty() && self.tokens.is_empty() && self.user_tokens.is_empty()
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    fn user(&self, name: &str) -> Result<Option<User>, StoreError> {
        match self.users.get(name.as_bytes())? {
            Some(bytes) => Ok(Some(serde_json::from_slice(&bytes)?)),
            None => Ok(None),
        }
    }

    fn delete_tokens_of(&self, name: &str) -> Result<(), StoreError> {
        for key in self.user_tokens.scan_prefix(user_prefix(name)).keys() {
            let key = key?;
            if let Some(digest) = key.get(name.len() + 1..) {
                self.tokens.remove(digest)?;
            }
            self.user_tokens.remove(key)?;
        }
        Ok(())
    }
}

fn user_prefix(name: &str) -> Vec<u8> {
    let mut p = name.as_bytes().to_vec();
    p.push(0);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use crate::store::temporary as store;

    #[test]
    fn token_lifecycle() {
        let (_d, s) = store();
        let user = s
            .add_user("alice", "hash".into(), vec!["admin".into()])
            .unwrap();
        let (token, _) = s
            .issue_token(&user, None, Some("laptop".into()), &[])
            .unwrap();
        let id = s.authenticate(&token.digest()).unwrap().unwrap();
        assert_eq!(id.username, "alice");
        assert_eq!(id.roles, ["admin"]);
        assert!(s.revoke(&token.digest()).unwrap());
        assert_eq!(s.authenticate(&token.digest()).unwrap(), None);
    }

    #[test]
    fn password_change_disable_and_removal_end_all_tokens() {
        let (_d, s) = store();
        let user = s.add_user("bob", "h1".into(), vec![]).unwrap();
        let (t1, _) = s.issue_token(&user, None, None, &[]).unwrap();
        let (t2, _) = s.issue_token(&user, None, None, &[]).unwrap();
        s.set_password("bob", "h2".into()).unwrap();
        assert_eq!(s.authenticate(&t1.digest()).unwrap(), None);
        assert_eq!(s.authenticate(&t2.digest()).unwrap(), None);
        assert!(s.tokens(Some("bob")).unwrap().is_empty());

        // A login that verified the old password must not store a token.
        assert!(matches!(
            s.issue_token(&user, None, None, &[]),
            Err(StoreError::Stale)
        ));

        let user = s.user("bob").unwrap().unwrap();
        let (t3, _) = s.issue_token(&user, None, None, &[]).unwrap();
        s.set_disabled("bob", true).unwrap();
        assert_eq!(s.authenticate(&t3.digest()).unwrap(), None);
        s.set_disabled("bob", false).unwrap();
        assert_eq!(
            s.authenticate(&t3.digest()).unwrap(),
            None,
            "enable revives nothing"
        );

        let user = s.user("bob").unwrap().unwrap();
        let (t4, _) = s.issue_token(&user, None, None, &[]).unwrap();
        s.remove_user("bob").unwrap();
        assert_eq!(s.authenticate(&t4.digest()).unwrap(), None);
        // A new user of the same name does not inherit old tokens.
        s.add_user("bob", "h".into(), vec![]).unwrap();
        assert_eq!(s.authenticate(&t4.digest()).unwrap(), None);
    }

    #[test]
    fn expired_tokens_are_refused_and_purged() {
        let (_d, s) = store();
        let user = s.add_user("carol", "h".into(), vec![]).unwrap();
        let (t, _) = s
            .issue_token(&user, Some(Duration::ZERO), None, &[])
            .unwrap();
        let (live, _) = s.issue_token(&user, None, None, &[]).unwrap();
        assert_eq!(s.authenticate(&t.digest()).unwrap(), None);
        let before = s.generation();
        assert_eq!(s.purge_expired().unwrap(), 1);
        assert!(
            s.generation() > before,
            "a purge that removed a token is a write"
        );
        assert_eq!(s.tokens(None).unwrap().len(), 1);
        assert!(s.authenticate(&live.digest()).unwrap().is_some());
        // A sweep that finds nothing writes nothing: cached checks stay valid.
        let before = s.generation();
        assert_eq!(s.purge_expired().unwrap(), 0);
        assert_eq!(s.generation(), before);
        // The user's token index lost the purged token too: one is left to revoke.
        assert_eq!(s.revoke_user_tokens("carol").unwrap(), 1);
    }

    #[test]
    fn last_used_is_recorded_without_reviving_revoked_tokens() {
        let (_d, s) = store();
        let user = s.add_user("hal", "h".into(), vec![]).unwrap();
        let (t, _) = s.issue_token(&user, None, None, &[]).unwrap();
        assert_eq!(s.tokens(None).unwrap()[0].record.last_used_at, None);
        s.authenticate(&t.digest()).unwrap().unwrap();
        let used = s.tokens(None).unwrap()[0].record.last_used_at;
        assert!(used.is_some_and(|at| at.abs_diff(now()) < 5));
        s.revoke(&t.digest()).unwrap();
        assert_eq!(s.authenticate(&t.digest()).unwrap(), None);
        assert!(s.tokens(None).unwrap().is_empty());
    }

    #[test]
    fn duplicates_and_bad_names_are_refused() {
        let (_d, s) = store();
        s.add_user("dave", "h".into(), vec![]).unwrap();
        assert!(matches!(
            s.add_user("dave", "h".into(), vec![]),
            Err(StoreError::UserExists(_))
        ));
        assert!(matches!(
            s.add_user("", "h".into(), vec![]),
            Err(StoreError::InvalidUsername(_))
        ));
        assert!(matches!(
            s.add_user("a b", "h".into(), vec![]),
            Err(StoreError::InvalidUsername(_))
        ));
        assert!(matches!(
            s.add_user("eve", "h".into(), vec!["a,b".into()]),
            Err(StoreError::InvalidRole(_))
        ));
    }

    #[test]
    fn the_store_never_holds_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let secret = {
            let s = Store::open(&path).unwrap();
            let user = s.add_user("frank", "h".into(), vec![]).unwrap();
            let (t, _) = s.issue_token(&user, None, None, &[]).unwrap();
            t.expose().to_owned()
        };
        for entry in walk(&path) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "secret found in {entry:?}"
            );
        }
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn revoke_by_id() {
        let (_d, s) = store();
        let user = s.add_user("gina", "h".into(), vec![]).unwrap();
        let (t, _) = s.issue_token(&user, None, None, &[]).unwrap();
        let list = s.tokens(Some("gina")).unwrap();
        assert_eq!(list.len(), 1);
        s.revoke_id(&list[0].id).unwrap();
        assert_eq!(s.authenticate(&t.digest()).unwrap(), None);
        assert!(matches!(
            s.revoke_id(&list[0].id),
            Err(StoreError::UnknownToken(_))
        ));
        assert!(matches!(
            s.revoke_id("nonsense"),
            Err(StoreError::UnknownToken(_))
        ));
    }

    #[test]
    fn revocations_are_announced_once_durable() {
        use tokio::sync::broadcast::error::TryRecvError;
        let (_d, s) = store();
        let mut heard = s.revocations();
        let user = s.add_user("ann", "h".into(), vec![]).unwrap();
        let (t, _) = s.issue_token(&user, None, None, &[]).unwrap();
        assert!(
            matches!(heard.try_recv(), Err(TryRecvError::Empty)),
            "adding a user or issuing a token ends nothing"
        );
        let before = s.generation();
        assert!(s.revoke(&t.digest()).unwrap());
        assert!(matches!(heard.try_recv(), Ok(Revoked::Token(d)) if d == t.digest()));
        assert!(
            s.generation() > before,
            "announced after the generation moved"
        );
        assert!(!s.revoke(&t.digest()).unwrap());
        assert!(
            matches!(heard.try_recv(), Err(TryRecvError::Empty)),
            "an unknown token ends nothing"
        );
        let changes: [&dyn Fn(&Store); 5] = [
            &|s| s.set_password("ann", "h2".into()).unwrap(),
            &|s| s.set_disabled("ann", true).unwrap(),
            &|s| s.set_disabled("ann", false).unwrap(),
            &|s| {
                s.revoke_user_tokens("ann").unwrap();
            },
            &|s| s.remove_user("ann").unwrap(),
        ];
        for change in changes {
            change(&s);
            assert!(matches!(heard.try_recv(), Ok(Revoked::User(u)) if &*u == "ann"));
        }
        assert!(s.set_disabled("ann", true).is_err());
        assert!(
            matches!(heard.try_recv(), Err(TryRecvError::Empty)),
            "a failed change is not announced"
        );
    }
}
