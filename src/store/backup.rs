//! `tokengate backup` / `restore`: a consistent snapshot of the store as a
//! JSON-lines file. The first line names the format, every entry is one line
//! (keys hex, values as stored), the last line counts the entries so a
//! truncated file is refused rather than half-restored. The file holds
//! password hashes and token digests (no usable token): it is written 0600.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::store::files::Replacement;
use crate::store::{Store, StoreError};

const FORMAT: &str = "tokengate-backup";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
    created_at: u64,
}

#[derive(Serialize, Deserialize)]
struct Record {
    tree: String,
    key: String,
    value: String,
}

#[derive(Serialize, Deserialize)]
struct Footer {
    entries: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a tokengate backup ({why})")]
    Invalid { path: PathBuf, why: String },
    #[error(
        "{path} {why}: a snapshot holds password hashes and token digests, and whoever could write it would choose the users and tokens restored; restore only your own private copy (chown it to this user, chmod 600)"
    )]
    NotPrivate { path: PathBuf, why: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes a snapshot of `store` to `path` through a private temporary file
/// (`crate::store::files::Replacement`), so `path` is never half-written and no
/// other user can read or redirect the snapshot on its way. Both the CLI's
/// own store and a running server's admin channel write through here.
/// Returns the entry count.
pub fn backup(store: &Store, path: &Path) -> Result<usize, BackupError> {
    let write_err = |source| BackupError::Write {
        path: path.to_path_buf(),
        source,
    };
    let tmp = Replacement::create(path).map_err(write_err)?;
    let mut out = BufWriter::new(tmp.file());
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        created_at: crate::store::now(),
    };
    line(&mut out, &header).map_err(write_err)?;
    let mut io_failure = None;
    let count = store.snapshot(|tree, key, value| {
        let entry = Record {
            tree: tree.into(),
            key: hex(key),
            // Values are JSON text; a non-UTF-8 one would be corruption.
            value: String::from_utf8(value.to_vec()).map_err(|_| {
                StoreError::BadSnapshot(format!("a value in `{tree}` is not UTF-8"))
            })?,
        };
        if let Err(e) = line(&mut out, &entry) {
            io_failure.get_or_insert(e);
        }
        Ok(())
    })?;
    if let Some(e) = io_failure {
        return Err(write_err(e));
    }
    line(&mut out, &Footer { entries: count }).map_err(write_err)?;
    out.into_inner().map_err(|e| write_err(e.into_error()))?;
    tmp.commit().map_err(write_err)?;
    Ok(count)
}

/// Loads the snapshot at `path` into `store`, which must be empty. The whole
/// file is checked before anything is written.
pub fn restore(store: &Store, path: &Path) -> Result<usize, BackupError> {
    let invalid = |why: String| BackupError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    // A link is followed: the path is the operator's (the admin channel
    // takes it only from the server's own user), and reading through a
    // link (`latest.jsonl`) hands nobody anything the operator could not
    // read; only the writing side needs to distrust names.
    let file = File::open(path).map_err(|source| BackupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    trusted(&file, path)?;
    let mut lines = BufReader::new(file).lines();
    let mut next = || -> Result<Option<String>, BackupError> {
        lines
            .next()
            .transpose()
            .map_err(|source| BackupError::Read {
                path: path.to_path_buf(),
                source,
            })
    };
    let header: Header = next()?
        .and_then(|l| serde_json::from_str(&l).ok())
        .ok_or_else(|| invalid("no header line".into()))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(invalid(format!(
            "format {} version {}",
            header.format, header.version
        )));
    }
    let mut entries = Vec::new();
    let mut footer = None;
    while let Some(l) = next()? {
        if footer.is_some() {
            return Err(invalid("data after the final line".into()));
        }
        if let Ok(entry) = serde_json::from_str::<Record>(&l) {
            let key = unhex(&entry.key).ok_or_else(|| invalid("a key is not hex".into()))?;
            entries.push((entry.tree, key, entry.value.into_bytes()));
        } else if let Ok(f) = serde_json::from_str::<Footer>(&l) {
            footer = Some(f);
        } else {
            return Err(invalid(format!("unreadable line {}", entries.len() + 2)));
        }
    }
    match footer {
        Some(f) if f.entries == entries.len() => {}
        Some(f) => {
            return Err(invalid(format!(
                "it announces {} entries but holds {}",
                f.entries,
                entries.len()
            )));
        }
        None => return Err(invalid("it is truncated (no final line)".into())),
    }
    store.load(&entries)?;
    Ok(entries.len())
}

fn line<T: Serialize>(out: &mut impl Write, value: &T) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A snapshot to restore must be this user's and writable by nobody else,
/// as backup writes it (0600); a file others could have written is refused.
fn trusted(file: &File, path: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().map_err(|source| BackupError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let me = rustix::process::geteuid().as_raw();
    let why = if meta.uid() != me {
        Some(format!(
            "belongs to uid {}, not to this user (uid {me})",
            meta.uid()
        ))
    } else if meta.mode() & 0o022 != 0 {
        Some(format!(
            "is writable by others (mode {:o})",
            meta.mode() & 0o777
        ))
    } else {
        None
    };
    match why {
        Some(why) => Err(BackupError::NotPrivate {
            path: path.to_path_buf(),
            why,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_users_and_live_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        let user = a
            .add_user("ann", "hash".into(), vec!["admin".into()])
            .unwrap();
        let (live, _) = a
            .issue_token(&user, None, Some("laptop".into()), &[])
            .unwrap();
        let (dead, _) = a.issue_token(&user, None, None, &[]).unwrap();
        a.revoke(&dead.digest()).unwrap();
        let file = dir.path().join("snap.jsonl");
        assert_eq!(backup(&a, &file).unwrap(), 3);

        let b = Store::open(&dir.path().join("b")).unwrap();
        assert_eq!(restore(&b, &file).unwrap(), 3);
        let who = b.authenticate(&live.digest()).unwrap().unwrap();
        assert_eq!(who.username, "ann");
        assert_eq!(b.authenticate(&dead.digest()).unwrap(), None);
        assert_eq!(
            b.tokens(Some("ann")).unwrap()[0].record.label.as_deref(),
            Some("laptop")
        );
        // Revoking all of a user's tokens still works on the restored index.
        b.revoke_user_tokens("ann").unwrap();
        assert_eq!(b.authenticate(&live.digest()).unwrap(), None);

        assert!(matches!(
            restore(&a, &file),
            Err(BackupError::Store(StoreError::NotEmpty))
        ));
    }

    #[test]
    fn truncated_or_foreign_files_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        a.add_user("ann", "hash".into(), vec![]).unwrap();
        let file = dir.path().join("snap.jsonl");
        backup(&a, &file).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        let truncated = dir.path().join("cut.jsonl");
        std::fs::write(
            &truncated,
            text.lines().take(2).collect::<Vec<_>>().join("\n"),
        )
        .unwrap();
        let b = Store::open(&dir.path().join("b")).unwrap();
        assert!(matches!(
            restore(&b, &truncated),
            Err(BackupError::Invalid { .. })
        ));
        std::fs::write(&truncated, "hello\n").unwrap();
        assert!(matches!(
            restore(&b, &truncated),
            Err(BackupError::Invalid { .. })
        ));
        assert!(b.is_empty().unwrap(), "nothing was written");
    }

    #[test]
    fn a_snapshot_others_could_write_is_not_restored() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        a.add_user("ann", "hash".into(), vec![]).unwrap();
        let file = dir.path().join("snap.jsonl");
        backup(&a, &file).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let b = Store::open(&dir.path().join("b")).unwrap();
        let e = restore(&b, &file).unwrap_err().to_string();
        assert!(e.contains("writable by others (mode 666)"), "{e}");
        assert!(b.is_empty().unwrap(), "nothing restored");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        if rustix::process::geteuid().is_root() {
            rustix::fs::chown(&file, Some(rustix::fs::Uid::from_raw(65534)), None).unwrap();
            let e = restore(&b, &file).unwrap_err().to_string();
            assert!(e.contains("belongs to uid 65534"), "{e}");
            rustix::fs::chown(&file, Some(rustix::process::geteuid()), None).unwrap();
        }
        assert_eq!(restore(&b, &file).unwrap(), 1);
    }
}
