//! The copy snapshotter: the fallback for when overlayfs cannot be used.
//!
//! Without overlay, a stage's file system is one plain directory, the layers applied into it
//! (when the view is first read). Before a RUN step it is copied whole with [`copy_tree`]
//! (reflinks where the file system shares extents, so the copy costs metadata only), the step
//! runs in the copy, and [`diff_trees`](crate::layer::diff_trees) compares the two directories
//! to find the layer; the copy then becomes the stage's directory.
//!
//! The two functions are made for each other: `diff_trees(a, b)` right after `copy_tree(a, b)`
//! is empty, because the copy keeps everything the comparison looks at (type, mode, owner,
//! mtime to the nanosecond, extended attributes, content, hard links).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::OsStr;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, CWD, FileType, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

use crate::exec::RootfsSpec;
use crate::layer::{LayerError, apply_layer, get_xattr, list_xattrs};

use super::{Active, ActiveState, Lazy, SnapshotError, Snapshotter, View};

/// Copies the directory tree `src` into `dst`, an existing empty directory (on the same file
/// system as `src` for reflinks to apply), so that `dst` is indistinguishable from `src` for
/// [`diff_trees`].
///
/// Kept: file types (regular files, directories, symlinks, character and block devices
/// including overlay's 0:0 whiteout device, fifos; sockets are skipped as a layer cannot carry
/// them), permission bits with setuid/setgid/sticky, numeric owners, access and modification
/// times to the nanosecond (a directory's after its contents are written), all extended
/// attributes, and hard links between files of the tree (one inode in `dst` for each in `src`).
/// `src`'s own metadata is applied to `dst`.
///
/// Regular files are cloned with `FICLONE` where the file system supports it (btrfs, XFS), else
/// copied with `copy_file_range` (through [`std::io::copy`]).
///
/// Best effort, as when applying a layer without privileges: an owner that cannot be set (EPERM,
/// or EINVAL for an id outside a single-id user namespace's map) is left as the copy got it, and
/// an extended attribute that cannot be set (EPERM for `trusted.*` without `CAP_SYS_ADMIN` or
/// `user.*` on a symlink; ENOTSUP) is left out. Everything else is an error naming the path; on
/// error `dst` is left partly copied.
pub fn copy_tree(src: &Path, dst: &Path) -> Result<(), LayerError> {
    let src_md = lstat(src)?;
    if !src_md.is_dir() {
        return Err(LayerError::invalid(src, "not a directory"));
    }
    if !lstat(dst)?.is_dir() {
        return Err(LayerError::invalid(dst, "not a directory"));
    }
    let mut rd = fs::read_dir(dst).map_err(|e| LayerError::entry(dst, "reading directory", e))?;
    if rd.next().is_some() {
        return Err(LayerError::invalid(dst, "the copy's target is not empty"));
    }
    // A target inside the source would be copied into itself, forever.
    let canon = |p: &Path| fs::canonicalize(p).map_err(|e| LayerError::entry(p, "resolving", e));
    if canon(dst)?.starts_with(canon(src)?) {
        return Err(LayerError::invalid(
            dst,
            "the copy's target is inside its source",
        ));
    }

    copy_into(src, dst, src_md, false)
}

/// [`copy_tree`] for a private copy that only has to look the same to a RUN (a writable bind
/// mount without overlay, a cache mount seeded from a stage): `dst` must not exist and is
/// created; owners, modes and times are set where they can be and special files made where
/// they can be (what cannot is silently left as it is, or out), and extended attributes are not
/// copied. Reading `src` and creating directories, files, links and symlinks are still errors.
pub fn copy_tree_best_effort(src: &Path, dst: &Path) -> Result<(), LayerError> {
    let src_md = lstat(src)?;
    if !src_md.is_dir() {
        return Err(LayerError::invalid(src, "not a directory"));
    }
    DirBuilder::new()
        .mode(0o700)
        .create(dst)
        .map_err(|e| LayerError::entry(dst, "creating directory", e))?;
    copy_into(src, dst, src_md, true)
}

/// Copies the contents of the directory `src` (`src_md`) into the empty directory `dst`, then
/// the metadata of every directory.
fn copy_into(
    src: &Path,
    dst: &Path,
    src_md: fs::Metadata,
    best_effort: bool,
) -> Result<(), LayerError> {
    let mut c = Copier {
        first_link: HashMap::new(),
        dirs: vec![(src.to_path_buf(), dst.to_path_buf(), src_md)],
        reflink: true,
        best_effort,
    };
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((sdir, ddir)) = stack.pop() {
        for de in
            fs::read_dir(&sdir).map_err(|e| LayerError::entry(&sdir, "reading directory", e))?
        {
            let de = de.map_err(|e| LayerError::entry(&sdir, "reading directory", e))?;
            let s = de.path();
            let d = ddir.join(de.file_name());
            let md = lstat(&s)?;
            let ft = md.file_type();
            if ft.is_socket() {
                continue;
            }
            if ft.is_dir() {
                // Owner-writable until its contents are in, whatever its final mode.
                DirBuilder::new()
                    .mode(0o700)
                    .create(&d)
                    .map_err(|e| LayerError::entry(&d, "creating directory", e))?;
                stack.push((s.clone(), d.clone()));
                c.dirs.push((s, d, md));
                continue;
            }
            if md.nlink() > 1 {
                match c.first_link.entry((md.dev(), md.ino())) {
                    Entry::Occupied(first) => {
                        fs::hard_link(first.get(), &d)
                            .map_err(|e| LayerError::entry(&d, "creating hard link", e))?;
                        continue;
                    }
                    Entry::Vacant(v) => {
                        v.insert(d.clone());
                    }
                }
            }
            c.copy_non_dir(&s, &d, &md)?;
        }
    }
    // Only now that every entry is written: creating one changes its directory's mtime, and a
    // read-only mode would refuse it.
    for (s, d, md) in &c.dirs {
        copy_metadata(s, d, md, best_effort)?;
    }
    Ok(())
}

struct Copier {
    /// The first copy of each source inode with several links, by (device, inode).
    first_link: HashMap<(u64, u64), PathBuf>,
    /// Directories (source, copy, source metadata) whose metadata is set at the end.
    dirs: Vec<(PathBuf, PathBuf, fs::Metadata)>,
    /// Cleared once `FICLONE` reports the file system cannot share extents, so the remaining
    /// files go straight to `copy_file_range`.
    reflink: bool,
    /// [`copy_tree_best_effort`]: metadata and special files where they can be made.
    best_effort: bool,
}

impl Copier {
    fn copy_non_dir(&mut self, s: &Path, d: &Path, md: &fs::Metadata) -> Result<(), LayerError> {
        let ft = md.file_type();
        if ft.is_file() {
            self.copy_file(s, d)?;
        } else if ft.is_symlink() {
            let target =
                fs::read_link(s).map_err(|e| LayerError::entry(s, "reading symlink", e))?;
            std::os::unix::fs::symlink(target, d)
                .map_err(|e| LayerError::entry(d, "creating symlink", e))?;
        } else {
            let kind = if ft.is_fifo() {
                FileType::Fifo
            } else if ft.is_char_device() {
                FileType::CharacterDevice
            } else if ft.is_block_device() {
                FileType::BlockDevice
            } else {
                return Err(LayerError::invalid(s, "unsupported file type"));
            };
            // Not best effort: a device missing from the copy would read as deleted to
            // `diff_trees`, and become a whiteout in the step's layer.
            match rustix::fs::mknodat(CWD, d, kind, Mode::from_raw_mode(0o600), md.rdev()) {
                Ok(()) => {}
                Err(_) if self.best_effort => return Ok(()),
                Err(e) => return Err(LayerError::entry(d, "creating special file", e.into())),
            }
        }
        copy_metadata(s, d, md, self.best_effort)
    }

    fn copy_file(&mut self, s: &Path, d: &Path) -> Result<(), LayerError> {
        let mut from = File::open(s).map_err(|e| LayerError::entry(s, "opening", e))?;
        let mut to = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(d)
            .map_err(|e| LayerError::entry(d, "creating", e))?;
        if self.reflink {
            match rustix::fs::ioctl_ficlone(&to, &from) {
                Ok(()) => return Ok(()),
                // The file system (or the pair of them) cannot share extents at all.
                Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::NOTTY) => self.reflink = false,
                // This file only (btrfs refuses some, e.g. nodatacow against datacow): copy it,
                // over whatever a failed clone may have left.
                Err(_) => to
                    .set_len(0)
                    .map_err(|e| LayerError::entry(d, "truncating", e))?,
            }
        }
        io::copy(&mut from, &mut to).map_err(|e| LayerError::entry(d, "copying", e))?;
        Ok(())
    }
}

/// Sets `d`'s owner, mode, extended attributes and times to those of `s` (`md`), in the order
/// that keeps them all: a chown clears setuid/setgid and file capabilities, so it comes first;
/// the times come last as nothing after them may touch the file.
///
/// `best_effort`: owner, mode and times only, each where it can be set, no errors.
fn copy_metadata(
    s: &Path,
    d: &Path,
    md: &fs::Metadata,
    best_effort: bool,
) -> Result<(), LayerError> {
    if best_effort {
        let _ = rustix::fs::chownat(
            CWD,
            d,
            Some(Uid::from_raw(md.uid())),
            Some(Gid::from_raw(md.gid())),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        if !md.file_type().is_symlink() {
            let _ = rustix::fs::chmodat(
                CWD,
                d,
                Mode::from_raw_mode(md.mode() & 0o7777),
                AtFlags::empty(),
            );
        }
        let _ = rustix::fs::utimensat(CWD, d, &times_of(md), AtFlags::SYMLINK_NOFOLLOW);
        return Ok(());
    }
    let is_symlink = md.file_type().is_symlink();
    match rustix::fs::chownat(
        CWD,
        d,
        Some(Uid::from_raw(md.uid())),
        Some(Gid::from_raw(md.gid())),
        AtFlags::SYMLINK_NOFOLLOW,
    ) {
        // EINVAL: the id has no mapping in this user namespace (a single-id map).
        Ok(()) | Err(Errno::PERM | Errno::INVAL) => {}
        Err(e) => return Err(LayerError::entry(d, "setting owner", e.into())),
    }
    // A symlink's own mode cannot be changed (and is never looked at).
    if !is_symlink {
        rustix::fs::chmodat(
            CWD,
            d,
            Mode::from_raw_mode(md.mode() & 0o7777),
            AtFlags::empty(),
        )
        .map_err(|e| LayerError::entry(d, "setting permissions", e.into()))?;
    }
    copy_xattrs(s, d)?;
    rustix::fs::utimensat(CWD, d, &times_of(md), AtFlags::SYMLINK_NOFOLLOW)
        .map_err(|e| LayerError::entry(d, "setting times", e.into()))?;
    Ok(())
}

/// Access and modification times of `md`, to the nanosecond.
fn times_of(md: &fs::Metadata) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec(),
        },
        last_modification: Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec(),
        },
    }
}

/// Copies every extended attribute of `s` to `d` (neither followed if a symlink), including
/// overlayfs's own and names that are not UTF-8: the copy is of a directory, not of a layer.
fn copy_xattrs(s: &Path, d: &Path) -> Result<(), LayerError> {
    let names = list_xattrs(s).map_err(|e| LayerError::entry(s, "listing attributes", e))?;
    for name in names {
        let name = OsStr::from_bytes(&name);
        let Some(value) =
            get_xattr(s, name).map_err(|e| LayerError::entry(s, "reading attributes", e))?
        else {
            continue;
        };
        match rustix::fs::lsetxattr(d, name, &value, XattrFlags::empty()) {
            Ok(()) | Err(Errno::PERM | Errno::NOTSUP) => {}
            Err(e) => return Err(LayerError::entry(d, "setting attributes", e.into())),
        }
    }
    Ok(())
}

/// Applies the layers pushed since the view was last read to its directory.
pub(super) fn show(s: &Snapshotter<'_>, view: &View, lazy: &mut Lazy) -> Result<(), SnapshotError> {
    while let Some(desc) = lazy.pending.first() {
        let blob = s.store.open_blob(desc.digest())?;
        let report = apply_layer(blob, view.dir.path(), &s.apply).map_err(|source| {
            SnapshotError::Unpack {
                action: "applying",
                digest: desc.digest().to_string(),
                source,
            }
        })?;
        s.note(desc, &report);
        lazy.pending.remove(0);
    }
    Ok(())
}

/// A full copy of the view's directory (brought up to date first).
pub(super) fn prepare(s: &Snapshotter<'_>, view: &View) -> Result<Active, SnapshotError> {
    let base = s.root(view)?.to_path_buf();
    let copy = s.tmpdir("stage-")?;
    copy_tree(&base, copy.path())?;
    Ok(Active {
        rootfs: RootfsSpec::Dir(copy.path().to_path_buf()),
        state: ActiveState::Copy { base, dir: copy },
    })
}

fn lstat(path: &Path) -> Result<fs::Metadata, LayerError> {
    fs::symlink_metadata(path).map_err(|e| LayerError::entry(path, "reading metadata", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{DiffOptions, diff_trees};
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn best_effort_copy_makes_its_target() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir(&src).unwrap();
        fs::create_dir(src.join("d")).unwrap();
        fs::write(src.join("d/f"), b"hi").unwrap();
        fs::set_permissions(src.join("d/f"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::hard_link(src.join("d/f"), src.join("g")).unwrap();
        std::os::unix::fs::symlink("d/f", src.join("l")).unwrap();
        rustix::fs::mknodat(
            CWD,
            src.join("p"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let dst = t.path().join("dst");
        copy_tree_best_effort(&src, &dst).unwrap();
        assert_eq!(fs::read(dst.join("d/f")).unwrap(), b"hi");
        let md = fs::metadata(dst.join("d/f")).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!(md.ino(), fs::metadata(dst.join("g")).unwrap().ino());
        assert_eq!(fs::read_link(dst.join("l")).unwrap(), Path::new("d/f"));
        assert!(
            fs::symlink_metadata(dst.join("p"))
                .unwrap()
                .file_type()
                .is_fifo()
        );
        // Unlike copy_tree, the target is made here: an existing one is refused.
        let err = copy_tree_best_effort(&src, &dst).unwrap_err();
        assert!(err.to_string().contains("creating directory"), "{err}");
    }

    #[test]
    fn refuses_a_target_inside_the_source_or_not_empty() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("inner")).unwrap();
        let err = copy_tree(&src, &src.join("inner")).unwrap_err();
        assert!(err.to_string().contains("inside its source"), "{err}");
        let dst = t.path().join("dst");
        fs::create_dir_all(dst.join("x")).unwrap();
        let err = copy_tree(&src, &dst).unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
    }

    #[test]
    fn a_copy_diffs_empty() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir_all(a.join("d/e")).unwrap();
        fs::write(a.join("d/f"), "f").unwrap();
        fs::hard_link(a.join("d/f"), a.join("g")).unwrap();
        std::os::unix::fs::symlink("d/f", a.join("l")).unwrap();
        fs::create_dir(&b).unwrap();
        copy_tree(&a, &b).unwrap();
        assert_eq!(diff_trees(&a, &b, &DiffOptions::default()).unwrap(), []);
    }
}
