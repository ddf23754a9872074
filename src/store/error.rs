//! Why a store call failed, each with what to do next.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the store at {path} is in use by another process (a running `tokengate serve`?); stop it, or let the command reach it through its admin socket (run it as the same user)"
    )]
    Locked { path: PathBuf },
    #[error(
        "cannot open the store at {path}: {source}; check that the directory exists or can be created and is writable by this user"
    )]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(transparent)]
    NotPrivate(#[from] crate::store::files::StoreDirError),
    #[error("store I/O failed: {0}")]
    Io(#[from] sled::Error),
    #[error(
        "writing the store at {path} failed: {source}; the change may not have been saved (is the disk full?): retry it once the disk has room"
    )]
    WriteFailed {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error(
        "the store at {path} takes no writes since a write failed ({reason}); the change was not made. The store reopens by itself once the disk takes writes again: retry then"
    )]
    Unavailable { path: PathBuf, reason: String },
    #[error("a stored record is unreadable: {0}")]
    Corrupt(#[from] serde_json::Error),
    #[error("cannot generate random bytes: {0}")]
    Random(String),
    #[error("user `{0}` already exists")]
    UserExists(String),
    #[error("no user named `{0}`")]
    UnknownUser(String),
    #[error("user `{0}` is disabled; enable it first with `tokengate user enable {0}`")]
    Disabled(String),
    #[error("no token with id `{0}`")]
    UnknownToken(String),
    #[error(
        "the store is not empty; restore only into a new store (an empty store.path directory, or an empty database at store.url)"
    )]
    NotEmpty,
    #[error("the snapshot is not usable: {0}")]
    BadSnapshot(String),
    #[error("the user's credentials changed while the token was being issued")]
    Stale,
    #[error("invalid username `{0}`: use 1 to 150 letters, digits and @ . + - _ (as Django does)")]
    InvalidUsername(String),
    #[error("invalid role `{0}`: use 1 to 64 letters, digits and . _ : -")]
    InvalidRole(String),
    #[error("invalid label: at most 200 characters, no control characters")]
    InvalidLabel,
    #[error("invalid scope: {0}")]
    InvalidScope(String),
    #[error("the database failed: {0}; check that PostgreSQL is up and that store.url names it")]
    Database(String),
    #[error(
        "the database holds tokengate schema version {found}, newer than this binary knows ({supported}); run the newer tokengate, or upgrade this one"
    )]
    SchemaTooNew { found: i32, supported: i32 },
    #[error(
        "this gateway has not heard the database's notifications for {down_secs}s, longer than store.max_stale: it cannot know what was revoked meanwhile, so it refuses until the database answers again"
    )]
    OutOfTouch { down_secs: u64 },
    #[error("the store's connection threads stopped; restart tokengate")]
    Stopped,
}
