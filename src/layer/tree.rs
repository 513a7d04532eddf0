//! Directory trees as a whole: the layer between two of them ([`diff_trees`], the copy
//! snapshotter's differ: `crate::snapshot` copies a stage with its tree copier, the step runs in
//! the copy, and this compares the two), what one takes on disk ([`tree_bytes`]), and removing
//! one that holds read-only directories ([`remove_tree_in_place`]).
//!
//! Unlike [`diff_upperdir`](super::diff_upperdir), which reads only what overlay copied up,
//! [`diff_trees`] walks both trees: its cost grows with the size of the image. Right after a
//! copy by the snapshotter's tree copier it is empty, because the copy keeps everything the
//! comparison looks at (type, mode, owner, mtime to the nanosecond, extended attributes,
//! content, hard links).

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::LayerError;
use super::diff::{DiffOptions, Differ, normalize_all, same_entry};
use super::entry::{LayerEntry, ScanOptions, entry_from_metadata};
use super::overlay;

/// How many equal-looking entries are compared at once (in parallel, as comparing may read
/// whole files): enough to keep every core busy, few enough to bound the memory held.
const BATCH: usize = 512;

/// The layer that turns the directory tree `old` into `new`: the entries of `new` that differ
/// from `old` or are not in it, and whiteouts for what `old` has and `new` does not, in layer
/// order, ready for [`write_layer`](super::write_layer) — the same entries, with the same
/// metadata, that [`diff_upperdir`](super::diff_upperdir) reads from an overlay upper directory
/// for the same change.
///
/// - An entry is unchanged when it passes `diff_upperdir`'s check for an unchanged copy-up: same
///   type, mode, owner, mtime to the nanosecond, extended attributes (other than overlayfs's
///   own), and symlink target, device number or file content. File contents are read only for
///   files whose metadata and size are all equal.
/// - A deleted entry becomes [`LayerEntry::whiteout`]; a deleted directory is one whiteout.
/// - An entry whose type changed is emitted as the new entry (applying it replaces the old
///   one); a directory that replaced a non-directory is emitted with everything below it. A
///   directory that was deleted and made again is compared like any other: whiteouts for the
///   old children that are gone, entries for what is new or changed.
/// - The directories on the way to an emitted entry are emitted too; non-directories with more
///   than one link carry a [`LayerEntry::link_key`], and an unchanged file is emitted after all
///   when a hard link of it is, or when the files it is hard-linked with are not the same as in
///   `old` (`ln -f a b` where `b` was an equal copy of `a`).
/// - `opts.skip` and `opts.skip_contents` are honoured as by `diff_upperdir`, on both trees.
/// - Sockets (in either tree) are ignored; the roots' own metadata is not part of the layer.
///
/// Regular files are [`FileSource::Disk`](super::FileSource::Disk) entries read from `new` when
/// the layer is written. Errors name the path on disk.
pub fn diff_trees(
    old: &Path,
    new: &Path,
    opts: &DiffOptions,
) -> Result<Vec<LayerEntry>, LayerError> {
    let skip = normalize_all(&opts.skip)?;
    let skip_contents = normalize_all(&opts.skip_contents)?;
    for root in [old, new] {
        if !lstat(root)?.is_dir() {
            return Err(LayerError::invalid(root, "not a directory"));
        }
    }

    let mut t = TreeDiff {
        d: Differ {
            out: Vec::new(),
            unchanged_dirs: HashMap::new(),
            unchanged_links: Vec::new(),
        },
        pending: Vec::new(),
        old_of_new: HashMap::new(),
        new_of_old: HashMap::new(),
    };
    let mut stack = vec![Frame {
        new: new.to_path_buf(),
        old: Some(old.to_path_buf()),
        layer: PathBuf::new(),
    }];
    while let Some(frame) = stack.pop() {
        let mut old_names: HashMap<OsString, PathBuf> = HashMap::new();
        if let Some(old_dir) = &frame.old {
            for de in fs::read_dir(old_dir)
                .map_err(|e| LayerError::entry(old_dir, "reading directory", e))?
            {
                let de = de.map_err(|e| LayerError::entry(old_dir, "reading directory", e))?;
                old_names.insert(de.file_name(), de.path());
            }
        }

        for de in fs::read_dir(&frame.new)
            .map_err(|e| LayerError::entry(&frame.new, "reading directory", e))?
        {
            let de = de.map_err(|e| LayerError::entry(&frame.new, "reading directory", e))?;
            let name = de.file_name();
            let old_path = old_names.remove(&name);
            let layer = frame.layer.join(&name);
            if skip.contains(&layer) {
                continue;
            }
            let disk = de.path();
            let md = lstat(&disk)?;
            if md.file_type().is_socket() {
                continue;
            }
            let old = match old_path {
                Some(p) => {
                    let omd = lstat(&p)?;
                    (!omd.file_type().is_socket()).then_some((p, omd))
                }
                None => None,
            };

            let mut entry =
                entry_from_metadata(layer.clone(), &disk, &md, &ScanOptions::default())?;
            entry.xattrs = overlay::read_xattrs(&disk)
                .map_err(|e| LayerError::entry(&disk, "reading extended attributes", e))?;

            if md.is_dir() {
                let child_old = match old {
                    Some((opath, omd)) if omd.is_dir() => {
                        if same_entry(&disk, &md, &entry, &opath, &omd)? {
                            t.d.unchanged_dirs.insert(layer.clone(), entry);
                        } else {
                            t.d.out.push(entry);
                        }
                        Some(opath)
                    }
                    // New, or in the place of a non-directory: emitted with all it holds.
                    _ => {
                        t.d.out.push(entry);
                        None
                    }
                };
                if !skip_contents.contains(&layer) {
                    stack.push(Frame {
                        new: disk,
                        old: child_old,
                        layer,
                    });
                }
                continue;
            }

            match old {
                Some((opath, omd)) if !omd.is_dir() => {
                    t.pending.push(Pending {
                        entry,
                        disk,
                        md,
                        old: opath,
                        old_md: omd,
                    });
                    if t.pending.len() >= BATCH {
                        t.compare_pending()?;
                    }
                }
                _ => t.d.out.push(entry),
            }
        }

        // What is left of the old directory is gone from the new one. A whiteout for a
        // directory deletes all of it: nothing below it is looked at.
        for (name, opath) in old_names {
            let layer = frame.layer.join(&name);
            if skip.contains(&layer) || lstat(&opath)?.file_type().is_socket() {
                continue;
            }
            t.d.out.push(LayerEntry::whiteout(&layer));
        }
    }
    t.compare_pending()?;
    Ok(t.finish())
}

struct Frame {
    /// The directory in the new tree.
    new: PathBuf,
    /// The directory at the same place in the old tree, if there is one.
    old: Option<PathBuf>,
    /// Their layer path.
    layer: PathBuf,
}

/// A non-directory present in both trees, waiting to be compared.
struct Pending {
    entry: LayerEntry,
    disk: PathBuf,
    md: fs::Metadata,
    old: PathBuf,
    old_md: fs::Metadata,
}

struct TreeDiff {
    d: Differ,
    pending: Vec<Pending>,
    /// For unchanged files with several links (in either tree): the old inode of each new one
    /// seen, and the reverse, by (device, inode).
    old_of_new: HashMap<(u64, u64), (u64, u64)>,
    new_of_old: HashMap<(u64, u64), (u64, u64)>,
}

impl TreeDiff {
    fn compare_pending(&mut self) -> Result<(), LayerError> {
        let same: Vec<bool> = self
            .pending
            .par_iter()
            .map(|p| same_entry(&p.disk, &p.md, &p.entry, &p.old, &p.old_md))
            .collect::<Result<_, _>>()?;
        for (p, same) in std::mem::take(&mut self.pending).into_iter().zip(same) {
            if !same {
                self.d.out.push(p.entry);
            } else if self.links_changed(&p) {
                // Emitted so that the layer makes the new link structure: with a link key the
                // writer turns its partners (pulled in by `finish`) into hard links of it, and
                // without one applying it replaces the old path's shared inode with its own.
                self.d.out.push(p.entry);
            } else if p.entry.link_key.is_some() {
                self.d.unchanged_links.push(p.entry);
            }
        }
        Ok(())
    }

    /// Whether an unchanged file's links differ between the trees: the paths sharing its inode
    /// in `new` must be exactly those sharing the matching inode in `old`, which holds when the
    /// old and new inodes of all such paths correspond one to one.
    fn links_changed(&mut self, p: &Pending) -> bool {
        if p.md.nlink() == 1 && p.old_md.nlink() == 1 {
            return false;
        }
        let new_ino = (p.md.dev(), p.md.ino());
        let old_ino = (p.old_md.dev(), p.old_md.ino());
        let a = *self.old_of_new.entry(new_ino).or_insert(old_ino) != old_ino;
        let b = *self.new_of_old.entry(old_ino).or_insert(new_ino) != new_ino;
        a || b
    }

    fn finish(self) -> Vec<LayerEntry> {
        self.d.finish()
    }
}

fn lstat(path: &Path) -> Result<fs::Metadata, LayerError> {
    fs::symlink_metadata(path).map_err(|e| LayerError::entry(path, "reading metadata", e))
}

/// The bytes a tree takes on disk (allocated blocks, each inode once): what removing it frees.
pub fn tree_bytes(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&p) else {
            continue;
        };
        if md.nlink() > 1 && !md.is_dir() && !seen.insert((md.dev(), md.ino())) {
            continue;
        }
        total += md.blocks() * 512;
        if md.is_dir()
            && let Ok(rd) = fs::read_dir(&p)
        {
            stack.extend(rd.flatten().map(|de| de.path()));
        }
    }
    total
}

/// Removes a directory tree, making directories writable first where that is needed (a layer
/// can hold read-only directories, which stop an unprivileged delete).
pub fn remove_tree_in_place(path: &Path) -> Result<(), LayerError> {
    match fs::remove_dir_all(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) if e.kind() != io::ErrorKind::PermissionDenied => {
            return Err(LayerError::entry(path, "removing", e));
        }
        Err(_) => {}
    }
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(md) = fs::symlink_metadata(&d) else {
            continue;
        };
        if !md.is_dir() {
            continue;
        }
        if md.mode() & 0o700 != 0o700 {
            let _ = fs::set_permissions(&d, fs::Permissions::from_mode(md.mode() | 0o700));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            for de in rd.flatten() {
                if de.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(de.path());
                }
            }
        }
    }
    fs::remove_dir_all(path).map_err(|e| LayerError::entry(path, "removing", e))
}
