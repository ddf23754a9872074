//! The local admin channel: how `tokengate user …` and `tokengate token …`
//! reach a store that a running `tokengate serve` holds (sled lets one
//! process open a database). The server listens on a Unix socket inside the
//! data directory, mode 0600, and also checks the peer's uid; it is never on
//! the network. When no server answers, the CLI opens the store itself and
//! runs the very same `execute`, so output and exit codes do not depend on
//! which way a command went.
//!
//! Protocol: one JSON `Op` line in, one JSON `Reply` line out, then close.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::accept;
use crate::request::scope::Scope;
use crate::store::backup::{self, BackupError};
use crate::store::token::TokenDigest;
use crate::store::{Imported, ImportedToken, ImportedUser, Store, StoreError, TokenInfo, User};

pub const SOCKET_NAME: &str = "admin.sock";
/// Longest request line. An op is a few hundred bytes, but an import
/// carries a whole site's users and tokens in one (one transaction); the
/// socket is its owner's alone.
const MAX_LINE: u64 = 64 * 1024 * 1024;
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Admin requests served at once.
const MAX_REQUESTS: usize = 4;

pub fn socket_path(store_path: &Path) -> PathBuf {
    store_path.join(SOCKET_NAME)
}

/// One management operation. Passwords arrive already hashed by the CLI.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    UserAdd {
        name: String,
        roles: Vec<String>,
        password_hash: String,
    },
    UserPasswd {
        name: String,
        password_hash: String,
    },
    UserRemove {
        name: String,
    },
    UserSetDisabled {
        name: String,
        disabled: bool,
    },
    UserRoles {
        name: String,
        roles: Vec<String>,
    },
    UserList,
    UserExists {
        name: String,
    },
    TokenIssue {
        name: String,
        ttl_secs: Option<u64>,
        label: Option<String>,
        /// `METHODS PATTERN` texts; empty: unscoped.
        #[serde(default)]
        scopes: Vec<String>,
    },
    TokenList {
        user: Option<String>,
    },
    TokenRevoke {
        id: String,
    },
    TokenRevokeUser {
        name: String,
    },
    /// By the token's whole digest (hex), for `token revoke --secret`.
    TokenRevokeDigest {
        digest: String,
    },
    /// Users and tokens from Django, in one transaction.
    Import {
        users: Vec<ImportedUser>,
        tokens: Vec<ImportedToken>,
    },
    ThrottleList,
    ThrottleUnban {
        who: String,
    },
    /// Absolute paths, resolved by the CLI.
    Backup {
        path: PathBuf,
    },
    Restore {
        path: PathBuf,
    },
}

/// A user as management output shows it: never the password hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserView {
    pub username: String,
    pub roles: Vec<String>,
    pub disabled: bool,
    pub created_at: u64,
    /// False for a service user, who cannot log in.
    #[serde(default = "usable")]
    pub password: bool,
}

/// Replies from a server older than the `password` field.
fn usable() -> bool {
    true
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        Self {
            password: u.password().is_some(),
            username: u.username,
            roles: u.roles,
            disabled: u.disabled,
            created_at: u.created_at,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TokenView {
    pub id: String,
    pub user: String,
    pub label: Option<String>,
    pub created_at: u64,
    pub expires_at: Option<u64>,
    pub last_used_at: Option<u64>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

impl From<TokenInfo> for TokenView {
    fn from(t: TokenInfo) -> Self {
        Self {
            scopes: t.record.scopes,
            id: t.id,
            user: t.record.user,
            label: t.record.label,
            created_at: t.record.created_at,
            expires_at: t.record.expires_at,
            last_used_at: t.record.last_used_at,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Done,
    Exists {
        exists: bool,
        disabled: bool,
    },
    Users {
        users: Vec<UserView>,
    },
    Tokens {
        tokens: Vec<TokenView>,
    },
    Issued {
        token: String,
        id: String,
        expires_at: Option<u64>,
    },
    Revoked {
        count: usize,
    },
    Entries {
        count: usize,
    },
    Bans {
        bans: Vec<BanView>,
    },
    Imported(Imported),
    Failed {
        message: String,
    },
}

/// A login ban as `throttle list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BanView {
    /// An address or a username.
    pub who: String,
    /// Unix seconds.
    pub until: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(
        "no `tokengate serve` is running on this store: login bans live in a running gateway's memory (and end with it), so there are none"
    )]
    NotServing,
    #[error("nothing to unban: no failed logins or ban are recorded for `{0}`")]
    NotBanned(String),
}

/// What the serving process knows beside the store: the login bans it
/// holds in memory. The login throttle provides it.
pub trait Bans: Send + Sync {
    /// Who is banned and for how many more seconds, longest first.
    fn list(&self) -> Vec<(String, u64)>;
    /// Forgets `who`'s (an address or a username) failures and ban;
    /// `false` when nothing was recorded.
    fn lift(&self, who: &str) -> bool;
}

/// Runs `op` against `store`, and `bans` when a server runs. Both the
/// server and a CLI holding the store itself call this, so the two paths
/// cannot drift apart.
pub fn execute(store: &Store, bans: Option<&dyn Bans>, op: Op) -> Result<Reply, OpError> {
    Ok(match op {
        Op::Import { users, tokens } => Reply::Imported(store.import(&users, &tokens)?),
        Op::ThrottleList => {
            let bans = bans.ok_or(OpError::NotServing)?;
            let now = crate::store::now();
            Reply::Bans {
                bans: bans
                    .list()
                    .into_iter()
                    .map(|(who, left)| BanView {
                        who,
                        until: now.saturating_add(left),
                    })
                    .collect(),
            }
        }
        Op::ThrottleUnban { who } => {
            if !bans.ok_or(OpError::NotServing)?.lift(&who) {
                return Err(OpError::NotBanned(who));
            }
            Reply::Done
        }
        Op::UserAdd {
            name,
            roles,
            password_hash,
        } => {
            store.add_user(&name, password_hash, roles)?;
            Reply::Done
        }
        Op::UserPasswd {
            name,
            password_hash,
        } => {
            store.set_password(&name, password_hash)?;
            Reply::Done
        }
        Op::UserRemove { name } => {
            store.remove_user(&name)?;
            Reply::Done
        }
        Op::UserSetDisabled { name, disabled } => {
            store.set_disabled(&name, disabled)?;
            Reply::Done
        }
        Op::UserRoles { name, roles } => {
            store.set_roles(&name, roles)?;
            Reply::Done
        }
        Op::UserList => Reply::Users {
            users: store.users()?.into_iter().map(UserView::from).collect(),
        },
        Op::UserExists { name } => {
            let user = store.user(&name)?;
            Reply::Exists {
                exists: user.is_some(),
                disabled: user.is_some_and(|u| u.disabled),
            }
        }
        Op::TokenIssue {
            name,
            ttl_secs,
            label,
            scopes,
        } => {
            let scopes = Scope::parse_all(&scopes).map_err(StoreError::InvalidScope)?;
            let Some(user) = store.user(&name)? else {
                return Err(StoreError::UnknownUser(name).into());
            };
            if user.disabled {
                return Err(StoreError::Disabled(name).into());
            }
            let (token, record) =
                store.issue_token(&user, ttl_secs.map(Duration::from_secs), label, &scopes)?;
            Reply::Issued {
                id: token.digest().id(),
                token: token.expose().to_owned(),
                expires_at: record.expires_at,
            }
        }
        Op::TokenList { user } => Reply::Tokens {
            tokens: store
                .tokens(user.as_deref())?
                .into_iter()
                .map(TokenView::from)
                .collect(),
        },
        Op::TokenRevoke { id } => {
            store.revoke_id(&id)?;
            Reply::Revoked { count: 1 }
        }
        Op::TokenRevokeDigest { digest } => {
            let digest = TokenDigest::from_hex(&digest)
                .ok_or_else(|| StoreError::UnknownToken("(malformed digest)".into()))?;
            if !store.revoke(&digest)? {
                return Err(StoreError::UnknownToken(digest.id()).into());
            }
            Reply::Revoked { count: 1 }
        }
        Op::TokenRevokeUser { name } => Reply::Revoked {
            count: store.revoke_user_tokens(&name)?,
        },
        Op::Backup { path } => Reply::Entries {
            count: backup::backup(store, &path)?,
        },
        Op::Restore { path } => Reply::Entries {
            count: backup::restore(store, &path)?,
        },
    })
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the admin socket {path}: {source}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the admin channel at {path} failed: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the server sent an unreadable reply: {0}")]
    Protocol(#[from] serde_json::Error),
}

/// A bound admin socket: the listener to serve, and its file, removed when
/// `socket` is dropped.
pub struct Bound {
    pub listener: UnixListener,
    pub socket: SocketFile,
}

/// The socket's path, removed on drop so a stopped server leaves no socket
/// for the CLI to try.
pub struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the admin socket, replacing a stale one left by a killed server.
/// Only the owner may connect (mode 0600 on the socket, 0700 on the directory).
pub fn bind(store_path: &Path) -> Result<Bound, ControlError> {
    let path = socket_path(store_path);
    let bind_err = |source| ControlError::Bind {
        path: path.clone(),
        source,
    };
    std::fs::set_permissions(store_path, std::fs::Permissions::from_mode(0o700))
        .map_err(bind_err)?;
    // Bound under another name and renamed over any stale socket once it is
    // 0600, so the socket never answers at its path with wider permissions.
    let fresh = path.with_extension("sock.new");
    match std::fs::remove_file(&fresh) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(&fresh).map_err(bind_err)?;
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    std::fs::rename(&fresh, &path).map_err(bind_err)?;
    Ok(Bound {
        listener,
        socket: SocketFile(path),
    })
}

/// Serves the admin channel until the listener is dropped with the task.
pub async fn serve(listener: UnixListener, store: Store, bans: Arc<dyn Bans>) {
    let own_uid = std::fs::metadata("/proc/self").map(|m| m.uid()).ok();
    // Requests in progress at once, each up to MAX_LINE in memory; the
    // next waits in the socket's backlog (the CLI's timeout bounds it).
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_REQUESTS));
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (stream, _) = accept::next(&listener, |e| {
            tracing::warn!(error = %e, "admin channel: accept failed");
        })
        .await;
        let peer_uid = stream.peer_cred().map(|c| c.uid()).ok();
        if own_uid.is_none() || peer_uid != own_uid {
            tracing::warn!(
                ?peer_uid,
                "admin channel: refused a connection from another user"
            );
            continue;
        }
        let store = store.clone();
        let bans = bans.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = handle(stream, store, bans).await {
                tracing::warn!(error = %e, "admin channel request failed");
            }
        });
    }
}

async fn handle(stream: UnixStream, store: Store, bans: Arc<dyn Bans>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_LINE));
    tokio::time::timeout(IO_TIMEOUT, reader.read_line(&mut line))
        .await
        .map_err(|_| std::io::Error::other("timed out reading the request"))??;
    if line.is_empty() {
        // A CLI probing whether a server answers connects and hangs up.
        return Ok(());
    }
    let reply = match serde_json::from_str::<Op>(&line) {
        Err(e) => Reply::Failed {
            message: format!("malformed admin request: {e}"),
        },
        Ok(op) => {
            let summary = op_summary(&op);
            let result =
                tokio::task::spawn_blocking(move || execute(&store, Some(&*bans), op)).await;
            match result {
                Ok(Ok(reply)) => {
                    tracing::info!(op = %summary, "admin channel: done");
                    reply
                }
                Ok(Err(e)) => Reply::Failed {
                    message: e.to_string(),
                },
                Err(e) => Reply::Failed {
                    message: format!("the operation failed: {e}"),
                },
            }
        }
    };
    let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
    out.push(b'\n');
    tokio::time::timeout(IO_TIMEOUT, write.write_all(&out))
        .await
        .map_err(|_| std::io::Error::other("timed out writing the reply"))??;
    Ok(())
}

/// What an op did, for the log: names, never secrets or hashes.
fn op_summary(op: &Op) -> String {
    match op {
        Op::UserAdd { name, .. } => format!("user add {name}"),
        Op::UserPasswd { name, .. } => format!("user passwd {name}"),
        Op::UserRemove { name } => format!("user remove {name}"),
        Op::UserSetDisabled { name, disabled } => {
            format!(
                "user {} {name}",
                if *disabled { "disable" } else { "enable" }
            )
        }
        Op::UserRoles { name, .. } => format!("user roles {name}"),
        Op::Import { users, tokens } => {
            format!("import {} user(s), {} token(s)", users.len(), tokens.len())
        }
        Op::ThrottleList => "throttle list".into(),
        Op::ThrottleUnban { who } => format!("throttle unban {who}"),
        Op::UserList => "user list".into(),
        Op::UserExists { name } => format!("user lookup {name}"),
        Op::TokenIssue { name, .. } => format!("token issue {name}"),
        Op::TokenList { .. } => "token list".into(),
        Op::TokenRevoke { id } => format!("token revoke {id}"),
        Op::TokenRevokeUser { name } => format!("token revoke --user {name}"),
        Op::TokenRevokeDigest { digest } => {
            format!(
                "token revoke --secret (id {})",
                digest.get(..16).unwrap_or("")
            )
        }
        Op::Backup { path } => format!("backup {}", path.display()),
        Op::Restore { path } => format!("restore {}", path.display()),
    }
}

/// Where CLI commands go: a running server's admin channel, or the store.
pub enum Backend {
    Remote(PathBuf),
    Local(Store),
}

impl Backend {
    /// The store `config` names: PostgreSQL directly, as many processes
    /// share it; sled through a running server's socket if one answers.
    pub fn for_config(config: &crate::config::StoreConfig) -> Result<Self, BackendError> {
        match config.backend {
            crate::config::StoreBackend::Sled => Self::connect(&config.path),
            crate::config::StoreBackend::Postgres(_) => Ok(Backend::Local(Store::connect(
                config,
                crate::store::Opener::Command,
            )?)),
        }
    }

    /// Connects to a running server if one answers on the socket, else opens
    /// the store directly.
    pub fn connect(store_path: &Path) -> Result<Self, BackendError> {
        let socket = socket_path(store_path);
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            return Ok(Backend::Remote(socket));
        }
        match Store::open(store_path) {
            Ok(store) => Ok(Backend::Local(store)),
            Err(StoreError::Locked { path }) => Err(BackendError::Unreachable { path }),
            Err(e) => Err(e.into()),
        }
    }

    pub fn run(&self, op: Op) -> Result<Reply, BackendError> {
        match self {
            Backend::Local(store) if store.is_embedded() => Ok(execute(store, None, op)?),
            // A shared store keeps the bans every gateway counts.
            Backend::Local(store) => {
                let bans = crate::store::SharedBans(store.clone());
                Ok(execute(store, Some(&bans), op)?)
            }
            Backend::Remote(socket) => {
                let reply = call(socket, &op)?;
                match reply {
                    Reply::Failed { message } => Err(BackendError::Server(message)),
                    reply => Ok(reply),
                }
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Op(#[from] OpError),
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error("{0}")]
    Server(String),
    #[error(
        "the store at {path} is held by another process but its admin socket does not answer; is `tokengate serve` running as another user?"
    )]
    Unreachable { path: PathBuf },
}

fn call(socket: &Path, op: &Op) -> Result<Reply, ControlError> {
    use std::io::{BufRead, Write};
    let io_err = |source| ControlError::Io {
        path: socket.to_path_buf(),
        source,
    };
    let stream = std::os::unix::net::UnixStream::connect(socket).map_err(io_err)?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io_err)?;
    stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io_err)?;
    let mut line = serde_json::to_vec(op)?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(io_err)?;
    let mut reply = String::new();
    std::io::BufReader::new(&stream)
        .read_line(&mut reply)
        .map_err(io_err)?;
    Ok(serde_json::from_str(&reply)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store served on its admin socket, as `serve` does it.
    struct Served {
        _dir: tempfile::TempDir,
        path: PathBuf,
        _bound: SocketFile,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    /// The serving process's bans: one address banned for a minute.
    struct OneBan(std::sync::Mutex<bool>);

    impl Bans for OneBan {
        fn list(&self) -> Vec<(String, u64)> {
            match *self.0.lock().unwrap() {
                true => vec![("203.0.113.9".into(), 60)],
                false => Vec::new(),
            }
        }

        fn lift(&self, who: &str) -> bool {
            who == "203.0.113.9" && std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    fn serve_store() -> Served {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let store = Store::open(&path).unwrap();
        let bound = bind(&path).unwrap();
        let bans = Arc::new(OneBan(std::sync::Mutex::new(true)));
        let task = tokio::spawn(super::serve(bound.listener, store, bans));
        Served {
            _dir: dir,
            path,
            _bound: bound.socket,
            task,
        }
    }

    /// One op through the socket, as the CLI sends it.
    async fn remote(path: &Path, op: Op) -> Result<Reply, BackendError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            let backend = Backend::connect(&path)?;
            assert!(
                matches!(backend, Backend::Remote(_)),
                "the server held the store"
            );
            backend.run(op)
        })
        .await
        .unwrap()
    }

    /// Raw bytes in, the reply line out (empty when the server cut the
    /// connection before an answer could be read).
    async fn raw(path: &Path, bytes: Vec<u8>) -> String {
        use tokio::io::AsyncReadExt;
        let mut stream = UnixStream::connect(socket_path(path)).await.unwrap();
        // The server stops reading at MAX_LINE: the rest may be refused.
        let _ = stream.write_all(&bytes).await;
        let _ = stream.shutdown().await;
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply).await;
        reply
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn ops_through_the_socket_act_on_the_served_store() {
        let served = serve_store();
        let added = remote(
            &served.path,
            Op::UserAdd {
                name: "ann".into(),
                roles: vec!["ops".into()],
                password_hash: crate::store::NO_PASSWORD.into(),
            },
        )
        .await
        .unwrap();
        assert!(matches!(added, Reply::Done));
        let issued = remote(
            &served.path,
            Op::TokenIssue {
                name: "ann".into(),
                ttl_secs: Some(60),
                label: Some("ci".into()),
                scopes: vec!["get /reports/**".into()],
            },
        )
        .await
        .unwrap();
        let Reply::Issued { token, id, .. } = issued else {
            panic!("{issued:?}");
        };
        assert!(token.starts_with("tg_"));
        let Reply::Tokens { tokens } = remote(&served.path, Op::TokenList { user: None })
            .await
            .unwrap()
        else {
            panic!("not a token list");
        };
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].id, id);
        assert_eq!(tokens[0].scopes, ["GET /reports/**"]);
        let Reply::Users { users } = remote(&served.path, Op::UserList).await.unwrap() else {
            panic!("not a user list");
        };
        assert!(!users[0].password, "a service user");
        // A failure comes back as the store's message.
        let e = remote(
            &served.path,
            Op::UserRemove {
                name: "nobody".into(),
            },
        )
        .await
        .expect_err("an unknown user");
        assert!(e.to_string().contains("nobody"), "{e}");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn garbage_and_oversized_requests_get_an_answer_not_a_crash() {
        let served = serve_store();
        let garbled = raw(&served.path, b"{\"op\":\"user_add\",\n".to_vec()).await;
        assert!(garbled.contains("malformed admin request"), "{garbled}");
        // Read no further than MAX_LINE, then refused (or cut off).
        let huge = raw(&served.path, vec![b'x'; MAX_LINE as usize + 4096]).await;
        assert!(
            huge.is_empty() || huge.contains("malformed admin request"),
            "{huge}"
        );
        // The channel still serves.
        assert!(matches!(
            remote(&served.path, Op::UserList).await.unwrap(),
            Reply::Users { .. }
        ));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn the_socket_is_the_owners_alone_and_goes_with_its_guard() {
        let served = serve_store();
        let socket = socket_path(&served.path);
        let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(&served.path)
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        drop(served);
        assert!(!socket.exists(), "the socket file outlived its server");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bans_are_the_serving_process_and_the_store_alone_has_none() {
        let served = serve_store();
        let Reply::Bans { bans } = remote(&served.path, Op::ThrottleList).await.unwrap() else {
            panic!("not a ban list");
        };
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].who, "203.0.113.9");
        assert!(bans[0].until > crate::store::now());
        let unban = |who: &str| Op::ThrottleUnban { who: who.into() };
        let e = remote(&served.path, unban("198.51.100.1"))
            .await
            .expect_err("not banned");
        assert!(e.to_string().contains("nothing to unban"), "{e}");
        remote(&served.path, unban("203.0.113.9")).await.unwrap();

        // With no server, the CLI opens the store itself: no bans to see.
        let (_dir, store) = crate::store::temporary();
        let e = execute(&store, None, Op::ThrottleList).expect_err("no server");
        assert!(
            e.to_string().contains("no `tokengate serve` is running"),
            "{e}"
        );
    }
}
