//! Snapshots: each layer unpacked once, with overlay-native whiteouts, into
//! `<store>/snapshots/<diffID hex>/`, ready to be stacked as overlay `lowerdir`s.
//!
//! A snapshot directory exists only complete: [`SnapshotStore::ensure`] unpacks into a
//! temporary directory beside it (`.tmp-<hex>-*`) and renames it into place, and removal renames
//! it away (`.trash-*`) before deleting. Concurrent callers for the same layer take a lock file
//! (`.<hex>.lock`) so only one unpacks; should two unpack anyway (a lock file replaced under a
//! waiter), the first rename wins and the other copy is discarded.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::layer::{
    ApplyOptions, ApplyReport, DiffId, DiffOptions, LayerError, OverlayXattrPrefix, WhiteoutMode,
    apply_layer_with_whiteouts, normalize_layer_path, remove_tree_in_place, tree_bytes,
};

/// Unpacked layers by diffID, under `<store>/snapshots/`.
///
/// Snapshots are shared by every build on the store: a snapshot in use as a lower directory of a
/// mount must not be removed ([`prune`](Self::prune) keeps what it is told to).
#[derive(Debug, Clone)]
pub struct SnapshotStore {
    /// The image store this belongs to (its leases tell whose scratch directories are whose).
    store: PathBuf,
    root: PathBuf,
    xattr_prefix: OverlayXattrPrefix,
    apply: ApplyOptions,
}

/// What [`SnapshotStore::ensure_with_report`] did.
#[derive(Debug, Clone)]
pub enum Ensured {
    /// The snapshot was there already (or another caller made it meanwhile).
    Existing(PathBuf),
    /// This call unpacked the layer.
    Unpacked(PathBuf, ApplyReport),
}

impl Ensured {
    /// The snapshot directory.
    pub fn path(&self) -> &Path {
        match self {
            Ensured::Existing(p) | Ensured::Unpacked(p, _) => p,
        }
    }
}

impl SnapshotStore {
    /// The snapshots of the store at `store` (`<store>/snapshots`, created if missing), with
    /// opaque directories marked for the overlay mounts this process can make
    /// ([`OverlayXattrPrefix::detect`]: `trusted.` as real root, `user.` otherwise) and layers
    /// applied with the default [`ApplyOptions`].
    pub fn new(store: &Path) -> Result<Self, LayerError> {
        let root = store.join("snapshots");
        fs::create_dir_all(&root)
            .map_err(|e| LayerError::entry(&root, "creating the snapshot directory", e))?;
        Ok(SnapshotStore {
            store: store.to_path_buf(),
            root,
            xattr_prefix: OverlayXattrPrefix::detect(),
            apply: ApplyOptions::default(),
        })
    }

    /// Marks opaque directories of new snapshots with this prefix. Mount with `userxattr` exactly
    /// when it is [`OverlayXattrPrefix::User`]. All snapshots of a store should use one prefix
    /// (an overlay mount reads only one kind).
    pub fn with_xattr_prefix(mut self, prefix: OverlayXattrPrefix) -> Self {
        self.xattr_prefix = prefix;
        self
    }

    /// Applies layers with these options (ownership: ask for
    /// [`Ownership::BestEffort`](crate::layer::Ownership::BestEffort) in a single-id user namespace).
    pub fn with_apply_options(mut self, apply: ApplyOptions) -> Self {
        self.apply = apply;
        self
    }

    /// `<store>/snapshots`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The attribute prefix opaque directories get.
    pub fn xattr_prefix(&self) -> OverlayXattrPrefix {
        self.xattr_prefix
    }

    /// Where the snapshot of `diff_id` is (whether or not it exists).
    pub fn path(&self, diff_id: &DiffId) -> PathBuf {
        self.root.join(diff_id.hex())
    }

    /// Whether the snapshot of `diff_id` exists.
    pub fn contains(&self, diff_id: &DiffId) -> bool {
        fs::symlink_metadata(self.path(diff_id)).is_ok_and(|m| m.is_dir())
    }

    /// The overlay `lowerdir` list for an image whose layers are `diff_ids` in image order (base
    /// first, as in the config's `rootfs.diff_ids`): their snapshot paths, **top first**. The
    /// snapshots are not checked; [`ensure`](Self::ensure) them first.
    ///
    /// A layer that occurs more than once (the same COPY twice) is listed once, at its topmost
    /// place: overlayfs refuses a directory twice in one stack (ELOOP), and the lower copy
    /// changes nothing — every path the layer has, including its whiteouts and opaque
    /// directories, is decided by the upper copy, and every path it lacks by the layers between.
    pub fn lowerdirs(&self, diff_ids: &[DiffId]) -> Vec<PathBuf> {
        let mut seen = std::collections::HashSet::new();
        diff_ids
            .iter()
            .rev()
            .filter(|d| seen.insert(**d))
            .map(|d| self.path(d))
            .collect()
    }

    /// The snapshot of `diff_id`, unpacking the layer from `open()` (gzip, zstd or plain tar) if
    /// it is not there yet. The unpacked stream's sha256 must be `diff_id`; if not, nothing is
    /// kept and the error says so.
    pub fn ensure<R, F>(&self, diff_id: &DiffId, open: F) -> Result<PathBuf, LayerError>
    where
        R: Read,
        F: FnOnce() -> io::Result<R>,
    {
        Ok(match self.ensure_with_report(diff_id, open)? {
            Ensured::Existing(p) | Ensured::Unpacked(p, _) => p,
        })
    }

    /// [`ensure`](Self::ensure), telling whether this call unpacked the layer, with the
    /// [`ApplyReport`] (its warnings) when it did.
    pub fn ensure_with_report<R, F>(&self, diff_id: &DiffId, open: F) -> Result<Ensured, LayerError>
    where
        R: Read,
        F: FnOnce() -> io::Result<R>,
    {
        let dst = self.path(diff_id);
        if self.contains(diff_id) {
            return Ok(Ensured::Existing(dst));
        }
        let lock_path = self.root.join(format!(".{}.lock", diff_id.hex()));
        let lock = Lock::exclusive(&lock_path)?;
        if self.contains(diff_id) {
            drop(lock);
            return Ok(Ensured::Existing(dst));
        }

        let tmp = TempDir::new(&self.root, &format!(".tmp-{}-", diff_id.hex()))?;
        // The layer may set it with a `./` entry; otherwise a snapshot root is 0755, not 0700.
        fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o755))
            .map_err(|e| LayerError::entry(&tmp.0, "setting permissions", e))?;
        let reader = open().map_err(|e| LayerError::stream("opening the layer blob", e))?;
        let report = apply_layer_with_whiteouts(
            reader,
            &tmp.0,
            &self.apply,
            WhiteoutMode::Overlay {
                xattr_prefix: self.xattr_prefix,
            },
        )?;
        if report.diff_id != *diff_id {
            return Err(LayerError::DiffIdMismatch {
                expected: *diff_id,
                actual: report.diff_id,
            });
        }
        let won = tmp.rename_into(&dst)?;
        drop(lock);
        Ok(if won {
            Ensured::Unpacked(dst, report)
        } else {
            Ensured::Existing(dst)
        })
    }

    /// A new empty directory under the store's snapshot directory (so on the same file system),
    /// for a step's overlay `upperdir` and `workdir`: make both inside it, and hand the upper one
    /// to [`adopt`](Self::adopt). Removed when dropped (what was adopted is gone from it by then).
    pub fn scratch(&self) -> Result<ScratchDir, LayerError> {
        let t = crate::lease::tempdir_in(&self.store, &self.root, SCRATCH_PREFIX)
            .map_err(|e| LayerError::entry(&self.root, "creating a temporary directory", e))?;
        Ok(ScratchDir(TempDir(t.keep(), true)))
    }

    /// Makes the finished upper directory `upper` of a step the snapshot of its layer `diff_id`
    /// (the diffID of the layer [`diff_upperdir`](crate::layer::diff_upperdir) made from it, written
    /// *before* this call: its file entries are read from `upper`). `upper` is renamed, so it
    /// must be on the store's file system (see [`scratch`](Self::scratch)). When the snapshot
    /// exists already (the same layer made by another build), `upper` is deleted instead.
    ///
    /// Paths the differ was told to skip are deleted from `upper` first (`skipped`: the same
    /// [`DiffOptions`]), so the snapshot holds what the layer holds. (Entries
    /// the differ left out as copied up without a change stay; they equal what they shadow.)
    pub fn adopt(
        &self,
        diff_id: &DiffId,
        upper: &Path,
        skipped: &DiffOptions,
    ) -> Result<PathBuf, LayerError> {
        let dst = self.path(diff_id);
        for p in &skipped.skip {
            let p = normalize_layer_path(p)?;
            if p.as_os_str().is_empty() {
                continue;
            }
            if let Some(p) = under_real_dirs(upper, &p) {
                keeping_parent_times(&p, || remove_if_present(&p))?;
            }
        }
        for p in &skipped.skip_contents {
            let p = normalize_layer_path(p)?;
            let Some(d) = under_real_dirs(upper, &p) else {
                continue;
            };
            match fs::symlink_metadata(&d) {
                Ok(md) if md.is_dir() => {
                    let rd = fs::read_dir(&d)
                        .map_err(|e| LayerError::entry(&d, "reading directory", e))?;
                    for de in rd {
                        let de = de.map_err(|e| LayerError::entry(&d, "reading directory", e))?;
                        let p = de.path();
                        keeping_parent_times(&p, || remove_if_present(&p))?;
                    }
                }
                _ => {}
            }
        }
        if self.contains(diff_id) {
            self.remove_tree(upper)?;
            return Ok(dst);
        }
        match rename_noreplace(upper, &dst) {
            Ok(()) => Ok(dst),
            Err(e) if is_exists(&e) => {
                self.remove_tree(upper)?;
                Ok(dst)
            }
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
                Err(LayerError::entry(
                    upper,
                    "moving the upper directory into the snapshot store (it must be on the \
                     store's file system: make it in SnapshotStore::scratch)",
                    e,
                ))
            }
            Err(e) => Err(LayerError::entry(
                upper,
                "moving the upper directory into the store",
                e,
            )),
        }
    }

    /// Removes the snapshot of `diff_id`, if there is one. Returns whether there was.
    pub fn remove(&self, diff_id: &DiffId) -> Result<bool, LayerError> {
        let p = self.path(diff_id);
        if !self.contains(diff_id) {
            return Ok(false);
        }
        self.remove_tree(&p)?;
        Ok(true)
    }

    /// The diffIDs of the snapshots present.
    pub fn list(&self) -> Result<Vec<DiffId>, LayerError> {
        let rd = fs::read_dir(&self.root)
            .map_err(|e| LayerError::entry(&self.root, "reading the snapshot directory", e))?;
        let mut out = Vec::new();
        for de in rd {
            let de =
                de.map_err(|e| LayerError::entry(&self.root, "reading the snapshot directory", e))?;
            let name = de.file_name();
            if let Some(id) = name
                .to_str()
                .and_then(|n| format!("sha256:{n}").parse::<DiffId>().ok())
                && de.file_type().is_ok_and(|t| t.is_dir())
            {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    /// Removes what killed processes left in the snapshot directory: step scratch directories
    /// ([`scratch`](Self::scratch)) and half-deleted trees whose owner's lease is gone, and
    /// interrupted unpacks whose lock nobody holds. Safe while other builds run (their
    /// directories are alive). With `unowned`, also directories that carry no lease token (left
    /// by an older kiln): only when no other process has the store open. Returns how many
    /// directories went and the bytes that freed.
    pub fn sweep(&self, unowned: bool) -> Result<(usize, u64), LayerError> {
        let rd = fs::read_dir(&self.root)
            .map_err(|e| LayerError::entry(&self.root, "reading the snapshot directory", e))?;
        let (mut removed, mut bytes) = (0, 0);
        for de in rd {
            let de =
                de.map_err(|e| LayerError::entry(&self.root, "reading the snapshot directory", e))?;
            let name = de.file_name();
            let Some(name) = name.to_str() else { continue };
            let dead = if let Some(rest) = name.strip_prefix(".tmp-") {
                let hex = rest.split('-').next().unwrap_or("");
                let lock_path = self.root.join(format!(".{hex}.lock"));
                Lock::try_exclusive(&lock_path)?.is_some()
            } else {
                [SCRATCH_PREFIX, TRASH_PREFIX].iter().any(|prefix| {
                    name.starts_with(prefix)
                        && crate::lease::owner(&self.store, name, prefix).removable(unowned)
                })
            };
            if dead {
                bytes += tree_bytes(&de.path());
                remove_tree_in_place(&de.path())?;
                removed += 1;
            }
        }
        Ok((removed, bytes))
    }

    /// Removes every snapshot not in `keep` and returns the diffIDs removed with the bytes that
    /// freed. [`sweep`](Self::sweep) removes the leftovers of killed processes.
    ///
    /// A snapshot still used as a lower directory of a mount must be in `keep`.
    pub fn prune(&self, keep: &[DiffId]) -> Result<(Vec<DiffId>, u64), LayerError> {
        let (mut removed, mut bytes) = (Vec::new(), 0);
        for id in self.list()? {
            if keep.contains(&id) {
                continue;
            }
            let size = tree_bytes(&self.path(&id));
            if self.remove(&id)? {
                removed.push(id);
                bytes += size;
            }
        }
        Ok((removed, bytes))
    }

    /// Removes a directory tree atomically as seen from the store: renamed to a `.trash-*`
    /// directory of this process's lease first, then deleted (a kill in between leaves a
    /// leftover that [`sweep`](Self::sweep) knows is dead).
    fn remove_tree(&self, path: &Path) -> Result<(), LayerError> {
        let trash = crate::lease::tempdir_in(&self.store, &self.root, TRASH_PREFIX)
            .map_err(|e| LayerError::entry(&self.root, "creating a temporary directory", e))?
            .keep();
        let target = trash.join("t");
        fs::rename(path, &target)
            .map_err(|e| LayerError::entry(path, "moving away to delete", e))?;
        remove_tree_in_place(&trash)
    }
}

/// Name prefixes of the directories made in the snapshot directory for steps and removals.
const SCRATCH_PREFIX: &str = ".scratch-";
const TRASH_PREFIX: &str = ".trash-";

/// A directory from [`SnapshotStore::scratch`], removed with its contents when dropped.
#[derive(Debug)]
pub struct ScratchDir(TempDir);

impl ScratchDir {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0.0
    }
}

/// A temporary directory removed (even when read-only parts are in it) unless renamed away.
#[derive(Debug)]
struct TempDir(PathBuf, bool);

impl TempDir {
    fn new(root: &Path, prefix: &str) -> Result<Self, LayerError> {
        let t = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(root)
            .map_err(|e| LayerError::entry(root, "creating a temporary directory", e))?;
        Ok(TempDir(t.keep(), true))
    }

    /// Renames the directory to `dst`. Returns false (and deletes it) when `dst` exists.
    fn rename_into(mut self, dst: &Path) -> Result<bool, LayerError> {
        match rename_noreplace(&self.0, dst) {
            Ok(()) => {
                self.1 = false;
                Ok(true)
            }
            Err(e) if is_exists(&e) => Ok(false),
            Err(e) => Err(LayerError::entry(dst, "moving the snapshot into place", e)),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.1 {
            let _ = remove_tree_in_place(&self.0);
        }
    }
}

/// An exclusive `flock` on a lock file.
struct Lock {
    path: PathBuf,
    _file: File,
}

impl Lock {
    fn open(path: &Path) -> Result<File, LayerError> {
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| LayerError::entry(path, "opening the lock file", e))
    }

    fn exclusive(path: &Path) -> Result<Self, LayerError> {
        let file = Self::open(path)?;
        loop {
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive) {
                Ok(()) => break,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(LayerError::entry(path, "locking", e.into())),
            }
        }
        Ok(Lock {
            path: path.to_path_buf(),
            _file: file,
        })
    }

    fn try_exclusive(path: &Path) -> Result<Option<Self>, LayerError> {
        let file = Self::open(path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(Lock {
                path: path.to_path_buf(),
                _file: file,
            })),
            Err(rustix::io::Errno::WOULDBLOCK) => Ok(None),
            Err(e) => Err(LayerError::entry(path, "locking", e.into())),
        }
    }
}

impl Drop for Lock {
    /// Deletes the lock file, then unlocks. A waiter that opened it already re-checks for the
    /// snapshot once it has the lock; a later caller makes a new lock file.
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn is_exists(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AlreadyExists || e.kind() == io::ErrorKind::DirectoryNotEmpty
}

/// `renameat2(RENAME_NOREPLACE)`, or a plain rename onto a missing destination where the file
/// system does not support the flag.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    match rustix::fs::renameat_with(
        rustix::fs::CWD,
        from,
        rustix::fs::CWD,
        to,
        rustix::fs::RenameFlags::NOREPLACE,
    ) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL) => {
            if fs::symlink_metadata(to).is_ok() {
                return Err(io::ErrorKind::AlreadyExists.into());
            }
            fs::rename(from, to)
        }
        Err(e) => Err(e.into()),
    }
}

/// `base/rel` when every parent of it below `base` is a real directory (not a symlink, which
/// could lead out of `base`), else `None`.
fn under_real_dirs(base: &Path, rel: &Path) -> Option<PathBuf> {
    let mut p = base.to_path_buf();
    let comps: Vec<_> = rel.iter().collect();
    let (last, parents) = comps.split_last()?;
    for c in parents {
        p.push(c);
        match fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => {}
            _ => return None,
        }
    }
    p.push(last);
    Some(p)
}

/// Runs `f` (which removes `path`) and puts back the times of `path`'s parent directory, so the
/// snapshot's directory keeps the mtime the layer recorded.
fn keeping_parent_times(
    path: &Path,
    f: impl FnOnce() -> Result<(), LayerError>,
) -> Result<(), LayerError> {
    let parent = path.parent().map(Path::to_path_buf);
    let times = parent
        .as_ref()
        .and_then(|p| fs::symlink_metadata(p).ok())
        .and_then(|m| Some((m.accessed().ok()?, m.modified().ok()?)));
    f()?;
    if let (Some(parent), Some((atime, mtime))) = (parent, times) {
        File::open(&parent)
            .and_then(|d| d.set_times(fs::FileTimes::new().set_accessed(atime).set_modified(mtime)))
            .map_err(|e| LayerError::entry(&parent, "restoring the directory's times", e))?;
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), LayerError> {
    match fs::symlink_metadata(path) {
        Ok(md) if md.is_dir() => remove_tree_in_place(path),
        Ok(_) => fs::remove_file(path).map_err(|e| LayerError::entry(path, "removing", e)),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{LayerEntry, WriteOptions, write_layer};
    use std::os::unix::fs::MetadataExt;

    fn layer(entries: Vec<LayerEntry>) -> (Vec<u8>, DiffId) {
        let mut out = Vec::new();
        let w = write_layer(entries, &WriteOptions::default(), &mut out).unwrap();
        (out, w.diff_id)
    }

    #[test]
    fn ensure_once_and_check_the_diff_id() {
        let t = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(t.path())
            .unwrap()
            .with_xattr_prefix(OverlayXattrPrefix::User);
        let (blob, id) = layer(vec![
            LayerEntry::dir("d", 0o555),
            LayerEntry::file("d/f", &b"hello"[..], 0o644),
            LayerEntry::file("x", &b"x"[..], 0o644)
                .with_xattr("user.keep", "k")
                .with_xattr("user.overlay.redirect", "/elsewhere"),
        ]);
        let p = store.ensure(&id, || Ok(&blob[..])).unwrap();
        assert_eq!(p, t.path().join("snapshots").join(id.hex()));
        assert_eq!(fs::read(p.join("d/f")).unwrap(), b"hello");
        let x = crate::layer::read_xattrs_and_overlay_names(&p.join("x")).unwrap();
        if !x.0.is_empty() {
            // (a file system with user xattrs) A layer cannot plant overlayfs attributes.
            assert_eq!(x.0.keys().collect::<Vec<_>>(), ["user.keep"]);
            assert!(x.1.is_empty(), "{:?}", x.1);
        }
        assert_eq!(
            fs::metadata(&p).unwrap().mode() & 0o7777,
            0o755,
            "snapshot root"
        );
        // Second call: not opened again.
        let again = store
            .ensure_with_report(&id, || -> io::Result<&[u8]> { panic!("opened twice") })
            .unwrap();
        assert!(matches!(again, Ensured::Existing(_)));
        assert_eq!(store.lowerdirs(&[id]), vec![p.clone()]);
        assert_eq!(store.list().unwrap(), vec![id]);

        // A blob that is not the layer named: nothing kept.
        let wrong = DiffId::of(b"something else");
        let err = store.ensure(&wrong, || Ok(&blob[..])).unwrap_err();
        assert!(matches!(err, LayerError::DiffIdMismatch { .. }), "{err}");
        assert!(!store.contains(&wrong));
        let left: Vec<_> = fs::read_dir(store.root())
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec![id.hex()], "no temporary or lock files left");

        // Read-only directories do not stop removal.
        assert!(store.remove(&id).unwrap());
        assert!(!store.remove(&id).unwrap());
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn concurrent_ensure_unpacks_once() {
        let t = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(t.path())
            .unwrap()
            .with_xattr_prefix(OverlayXattrPrefix::User);
        let entries: Vec<LayerEntry> = (0..200)
            .map(|i| LayerEntry::file(format!("f{i}"), vec![b'x'; 1000], 0o644))
            .collect();
        let (blob, id) = layer(entries);
        let unpacked = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let r = store.ensure_with_report(&id, || Ok(&blob[..])).unwrap();
                    if matches!(r, Ensured::Unpacked(..)) {
                        unpacked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    assert_eq!(fs::read_dir(r.path()).unwrap().count(), 200);
                });
            }
        });
        assert_eq!(unpacked.into_inner(), 1);
    }

    #[test]
    fn adopt_and_prune() {
        let t = tempfile::tempdir().unwrap();
        let store = SnapshotStore::new(t.path())
            .unwrap()
            .with_xattr_prefix(OverlayXattrPrefix::User);
        let scratch = store.scratch().unwrap();
        let upper = scratch.path().join("upper");
        fs::create_dir_all(upper.join("etc")).unwrap();
        fs::create_dir_all(upper.join("proc/1")).unwrap();
        fs::write(upper.join("etc/hosts"), "stub").unwrap();
        fs::write(upper.join("etc/app.conf"), "x").unwrap();
        let id = DiffId::of(b"pretend layer");
        let skipped = DiffOptions {
            skip: vec!["/etc/hosts".into()],
            skip_contents: vec!["/proc".into()],
        };
        let p = store.adopt(&id, &upper, &skipped).unwrap();
        assert!(!upper.exists());
        assert!(p.join("etc/app.conf").exists());
        assert!(!p.join("etc/hosts").exists());
        assert!(p.join("proc").is_dir() && !p.join("proc/1").exists());

        // Same layer again: the second upper directory is discarded.
        let upper2 = scratch.path().join("upper2");
        fs::create_dir_all(&upper2).unwrap();
        assert_eq!(store.adopt(&id, &upper2, &Default::default()).unwrap(), p);
        assert!(!upper2.exists());

        // An interrupted unpack leaves a temporary directory: the sweep removes it.
        let stale = store.root().join(format!(".tmp-{}-xyz", id.hex()));
        fs::create_dir_all(stale.join("a")).unwrap();
        let other = DiffId::of(b"other");
        fs::create_dir_all(store.path(&other)).unwrap();
        assert_eq!(store.prune(&[id]).unwrap().0, vec![other]);
        assert_eq!(store.sweep(false).unwrap().0, 1);
        assert!(!stale.exists());
        assert!(store.contains(&id));
        drop(scratch);
        let left: Vec<_> = fs::read_dir(store.root())
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, vec![id.hex()]);
    }
}
