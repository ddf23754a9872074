//! Files that hold password hashes, kept to the gateway's own user: the
//! store's directory (owner-only modes, and refused when another user owns
//! it) and files written whole through a private temporary file (backups).
//!
//! Modes are set explicitly, never through the umask: the umask is
//! process-wide, and the server's threads create files of their own.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The files sled keeps in its directory (`db`, `conf`, `snap.*`, `blobs/`)
/// and the ones tokengate adds (`admin.sock`, its `.sock.new`, the space
/// probe). Other files there (a backup written into the data directory)
/// are the operator's and are left alone.
fn is_store_file(name: &str) -> bool {
    matches!(name, "db" | "conf" | "blobs" | "space-probe.tmp")
        || name.starts_with("snap.")
        || name.starts_with("admin.sock")
}

#[derive(Debug, thiserror::Error)]
pub enum StoreDirError {
    #[error(
        "cannot open the store at {dir}: {path} belongs to uid {owner}, but tokengate runs as uid {uid} and \
         uses only a store its own user owns (another user could read the password hashes or change the \
         users); run tokengate as uid {owner} (`sudo -u '#{owner}' tokengate …`, `docker exec -u {owner} …`), \
         or give the store to this user with `chown -R {uid} {dir}`",
        dir = store.display(),
        path = path.display()
    )]
    NotOwner {
        store: PathBuf,
        path: PathBuf,
        owner: u32,
        uid: u32,
    },
    #[error(
        "cannot open the store: {} is a symbolic link; the store's files must be its own: move the real file into the store directory",
        path.display()
    )]
    Symlink { path: PathBuf },
    #[error("cannot open the store at {}: it is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error(
        "cannot open the store at {}: {source}; check that the directory exists or can be created and is writable by this user",
        path.display()
    )]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Creates the store directory if needed and makes it the gateway user's
/// alone: refused when the directory or one of the store's files belongs to
/// another user (root included: files a root process added would lock the
/// owner out), then the directory set to 0700 and the store's files to 0600.
/// The directory is closed to others before its files are looked at, so a
/// file sled creates with the umask's mode is never reachable by anyone
/// else; calling this again after sled has opened fixes those files' modes.
pub fn make_store_private(dir: &Path) -> Result<(), StoreDirError> {
    let io_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StoreDirError::Io { path, source }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(dir))?;
    let uid = rustix::process::geteuid().as_raw();
    // The configured path itself may be a link the operator made. Checked
    // before opening (another user's directory may not open at all), then
    // checked and changed through one descriptor, so both apply to the
    // same directory.
    let meta = std::fs::metadata(dir).map_err(io_err(dir))?;
    owned(dir, dir, &meta, uid)?;
    let handle = File::open(dir).map_err(io_err(dir))?;
    let meta = handle.metadata().map_err(io_err(dir))?;
    if !meta.is_dir() {
        return Err(StoreDirError::NotADirectory {
            path: dir.to_path_buf(),
        });
    }
    owned(dir, dir, &meta, uid)?;
    set_mode(&meta, 0o700, |p| handle.set_permissions(p)).map_err(io_err(dir))?;
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if name.to_str().is_some_and(is_store_file) {
            make_private(dir, &entry.path(), uid, 1)?;
        }
    }
    Ok(())
}

/// Deepest nesting sled uses is `blobs/<id>`.
const MAX_DEPTH: usize = 2;

fn make_private(store: &Path, path: &Path, uid: u32, depth: usize) -> Result<(), StoreDirError> {
    match make_private_inner(store, path, uid, depth) {
        // sled's threads replace and remove snapshots while the store is open.
        Err(StoreDirError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn make_private_inner(
    store: &Path,
    path: &Path,
    uid: u32,
    depth: usize,
) -> Result<(), StoreDirError> {
    let io_err = |source| StoreDirError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::symlink_metadata(path).map_err(io_err)?;
    if meta.file_type().is_symlink() {
        return Err(StoreDirError::Symlink {
            path: path.to_path_buf(),
        });
    }
    owned(store, path, &meta, uid)?;
    // Not a link, and the directory is closed to others: `path` names what
    // was just checked.
    let chmod = |p| std::fs::set_permissions(path, p);
    if !meta.is_dir() {
        return set_mode(&meta, 0o600, chmod).map_err(io_err);
    }
    set_mode(&meta, 0o700, chmod).map_err(io_err)?;
    if depth < MAX_DEPTH {
        for entry in std::fs::read_dir(path).map_err(io_err)? {
            let entry = entry.map_err(io_err)?;
            make_private(store, &entry.path(), uid, depth + 1)?;
        }
    }
    Ok(())
}

fn owned(
    store: &Path,
    path: &Path,
    meta: &std::fs::Metadata,
    uid: u32,
) -> Result<(), StoreDirError> {
    if meta.uid() == uid {
        return Ok(());
    }
    Err(StoreDirError::NotOwner {
        store: store.to_path_buf(),
        path: path.to_path_buf(),
        owner: meta.uid(),
        uid,
    })
}

fn set_mode(
    meta: &std::fs::Metadata,
    mode: u32,
    chmod: impl FnOnce(std::fs::Permissions) -> io::Result<()>,
) -> io::Result<()> {
    if meta.mode() & 0o7777 == mode {
        return Ok(());
    }
    chmod(std::fs::Permissions::from_mode(mode))
}

/// A file being written in place of `target`: a new temporary file in the
/// target's directory, created exclusively under a random name with mode
/// 0600 (never following a link, never opening a file someone planted),
/// renamed over the target by `commit` and removed if dropped before. The
/// rename replaces a link at the target, not the file it points to.
pub struct Replacement {
    file: File,
    tmp: PathBuf,
    target: PathBuf,
    committed: bool,
}

/// Tries at random names; a clash is a one in 2^64 chance, or a sign
/// someone is planting names, which a few tries will not outlast.
const NAME_TRIES: usize = 4;

impl Replacement {
    pub fn create(target: &Path) -> io::Result<Self> {
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
        let dir = parent(target);
        let mut last = None;
        for _ in 0..NAME_TRIES {
            let mut random = [0u8; 8];
            getrandom::fill(&mut random).map_err(io::Error::other)?;
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".{:016x}.tmp", u64::from_le_bytes(random)));
            let tmp = dir.join(tmp_name);
            let opened = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&tmp);
            match opened {
                Ok(file) => {
                    return Ok(Self {
                        file,
                        tmp,
                        target: target.to_path_buf(),
                        committed: false,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no temporary name was free")))
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// Syncs the file, renames it over the target and syncs the directory,
    /// so the target is either the old file or the whole new one, also
    /// after a crash.
    pub fn commit(mut self) -> io::Result<()> {
        self.file.sync_all()?;
        std::fs::rename(&self.tmp, &self.target)?;
        self.committed = true;
        File::open(parent(&self.target))?.sync_all()
    }
}

impl Drop for Replacement {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn mode(path: &Path) -> u32 {
        std::fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_replacement_is_private_and_replaces_a_link_not_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        let target = dir.path().join("out");
        std::os::unix::fs::symlink(&victim, &target).unwrap();
        let r = Replacement::create(&target).unwrap();
        r.file().write_all(b"new").unwrap();
        r.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert!(std::fs::symlink_metadata(&target).unwrap().is_file());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new");
        assert_eq!(mode(&target), 0o600);
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
    }

    #[test]
    fn a_dropped_replacement_leaves_the_target_alone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out");
        std::fs::write(&target, "old").unwrap();
        let r = Replacement::create(&target).unwrap();
        r.file().write_all(b"half").unwrap();
        drop(r);
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "old");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_store_directory_and_its_files_become_private() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("data");
        std::fs::create_dir(&store).unwrap();
        std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(store.join("blobs")).unwrap();
        for name in ["db", "conf", "snap.00000000000001", "blobs/7", "notes.txt"] {
            std::fs::write(store.join(name), "x").unwrap();
            std::fs::set_permissions(store.join(name), std::fs::Permissions::from_mode(0o644))
                .unwrap();
        }
        make_store_private(&store).unwrap();
        assert_eq!(mode(&store), 0o700);
        assert_eq!(mode(&store.join("blobs")), 0o700);
        for name in ["db", "conf", "snap.00000000000001", "blobs/7"] {
            assert_eq!(mode(&store.join(name)), 0o600, "{name}");
        }
        assert_eq!(mode(&store.join("notes.txt")), 0o644, "not the store's");
    }

    #[test]
    fn a_link_among_the_store_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("data");
        std::fs::create_dir(&store).unwrap();
        std::fs::write(dir.path().join("elsewhere"), "x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), store.join("db")).unwrap();
        assert!(matches!(
            make_store_private(&store),
            Err(StoreDirError::Symlink { .. })
        ));
    }
}
