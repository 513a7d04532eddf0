//! The upperdir differ: the layer a RUN step made, read from its overlay upper directory alone.
//!
//! overlayfs puts in the upper directory exactly what changed, in its own format: new and
//! modified files (a modified lower file is first copied up whole), whiteouts (character
//! devices 0:0) for deleted lower entries, and opaque directories (`trusted.overlay.opaque=y`,
//! or `user.overlay.opaque=y` with `userxattr`) for directories whose lower content is hidden
//! (`rm -rf d && mkdir d`, or a directory created where a lower non-directory was deleted).
//! [`diff_upperdir`] turns that into OCI layer entries, so the cost of a diff grows with what
//! the step changed, not with the size of the image below it.
//!
//! The lower layers are only consulted for the paths found in the upper directory, to leave
//! out what was copied up without a change (a `chmod` to the same mode, a read-write open that
//! wrote nothing): a lookup goes through the lower directories top first, as overlayfs does —
//! it stops at a whiteout, at a non-directory on the way, and below an opaque directory.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::LayerError;
use super::entry::{
    LayerEntry, ScanOptions, compare_layer_paths, entry_from_metadata, normalize_layer_path,
};
use super::overlay::{self, is_opaque_dir, is_whiteout};

/// What [`diff_upperdir`] leaves out.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// Layer paths (`/etc/hosts`, `run/secrets`; a leading `/` is optional) left out with
    /// everything under them: the stubs and targets of bind mounts (`/etc/hosts`,
    /// `/etc/resolv.conf`, `/etc/hostname`, secrets, cache mounts). Matched on the path as it
    /// is in the upper directory (the path a bind mount resolved to, not through a symlink).
    pub skip: Vec<PathBuf>,
    /// Directories whose contents are left out but which are themselves compared and emitted
    /// like any other directory (`/proc`, `/dev`: mount points whose contents are the
    /// sandbox's).
    pub skip_contents: Vec<PathBuf>,
}

/// Reads the changes a step made from its overlay upper directory `upper`, given the lower
/// directories it was mounted on (`lowers`, **top first**, as in `lowerdir=`).
///
/// Only `upper` is walked. For each entry found there:
/// - a character device 0:0 (a whiteout) becomes [`LayerEntry::whiteout`] — unless no lower
///   layer has that path (then there is nothing to hide and it is left out);
/// - an opaque directory (`trusted.overlay.opaque` or `user.overlay.opaque` equal to `y`)
///   becomes its directory entry plus [`LayerEntry::opaque_whiteout`], and everything below it
///   is emitted (nothing below it is compared with the lower layers);
/// - anything else becomes an entry with its metadata as seen: permission bits with
///   setuid/setgid/sticky, numeric uid/gid, mtime, extended attributes (except overlayfs's own
///   `trusted.overlay.*`/`user.overlay.*`), symlink targets, device numbers; regular files are
///   [`FileSource::Disk`](super::FileSource::Disk) entries read from `upper` when the layer is
///   written (write the layer before moving `upper`, e.g. with
///   `snapshot::SnapshotStore::adopt`); non-directories with more than one
///   link carry a [`LayerEntry::link_key`] so the writer makes hard links;
/// - an entry equal to the lower entry it shadows (same type, mode, owner, mtime to the
///   nanosecond, extended attributes, and symlink target, device number or file content) is
///   left out: it was copied up without a change. A directory left out that way is still
///   emitted, with its metadata, when something below it is (a layer lists the parents of its
///   entries), and a file left out is emitted after all when it is a hard link of one that is.
///
/// Sockets are skipped. The upper root's own metadata is not part of the layer. The output is
/// sorted in layer order, ready for [`write_layer`](super::write_layer).
///
/// The mount must not use `metacopy=on` or `redirect_dir=on` (an upper entry that only points at
/// lower data cannot be read from the upper directory alone): entries carrying
/// `*.overlay.metacopy` or `*.overlay.redirect` are refused. `userxattr` mounts cannot enable
/// either; as real root mount with `redirect_dir=off,metacopy=off` (or `userxattr`) to be sure.
///
/// Errors name the path on disk.
pub fn diff_upperdir(
    upper: &Path,
    lowers: &[PathBuf],
    opts: &DiffOptions,
) -> Result<Vec<LayerEntry>, LayerError> {
    let skip = normalize_all(&opts.skip)?;
    let skip_contents = normalize_all(&opts.skip_contents)?;

    let md =
        fs::symlink_metadata(upper).map_err(|e| LayerError::entry(upper, "reading metadata", e))?;
    if !md.is_dir() {
        return Err(LayerError::invalid(
            upper,
            "the upper directory is not a directory",
        ));
    }
    let mut d = Differ {
        out: Vec::new(),
        unchanged_dirs: HashMap::new(),
        unchanged_links: Vec::new(),
    };
    // For unchanged files with other links: the lower inodes their upper inode stands for.
    let mut lower_inodes: HashMap<(u64, u64), HashSet<(u64, u64)>> = HashMap::new();
    let root_opaque =
        is_opaque_dir(upper).map_err(|e| LayerError::entry(upper, "reading attributes", e))?;
    let root_lowers = if root_opaque {
        d.out.push(LayerEntry::opaque_whiteout(""));
        Vec::new()
    } else {
        root_dirs(lowers)?
    };

    let mut stack = vec![Frame {
        disk: upper.to_path_buf(),
        layer: PathBuf::new(),
        lowers: root_lowers,
    }];
    while let Some(frame) = stack.pop() {
        let rd = fs::read_dir(&frame.disk)
            .map_err(|e| LayerError::entry(&frame.disk, "reading directory", e))?;
        for de in rd {
            let de = de.map_err(|e| LayerError::entry(&frame.disk, "reading directory", e))?;
            let name = de.file_name();
            let disk = de.path();
            let layer = frame.layer.join(&name);
            if skip.contains(&layer) {
                continue;
            }
            let md = fs::symlink_metadata(&disk)
                .map_err(|e| LayerError::entry(&disk, "reading metadata", e))?;
            let ft = md.file_type();
            if ft.is_socket() {
                continue;
            }
            if is_whiteout(&md) {
                if find_lower(&frame.lowers, &name)?.is_some() {
                    d.out.push(LayerEntry::whiteout(&layer));
                }
                continue;
            }

            let (xattrs, ours) = overlay::read_xattrs_and_overlay_names(&disk)
                .map_err(|e| LayerError::entry(&disk, "reading extended attributes", e))?;
            if let Some(bad) = ours
                .iter()
                .find(|n| n.ends_with(".overlay.metacopy") || n.ends_with(".overlay.redirect"))
            {
                return Err(LayerError::invalid(
                    &disk,
                    format!(
                        "overlayfs `{bad}` attribute: mount the overlay with \
                         redirect_dir=off,metacopy=off so the upper directory holds whole entries"
                    ),
                ));
            }
            let mut entry =
                entry_from_metadata(layer.clone(), &disk, &md, &ScanOptions::default())?;
            entry.xattrs = xattrs;

            if ft.is_dir() {
                let opaque = is_opaque_dir(&disk)
                    .map_err(|e| LayerError::entry(&disk, "reading attributes", e))?;
                let child_lowers = if opaque {
                    d.out.push(LayerEntry::opaque_whiteout(&layer));
                    d.out.push(entry);
                    Vec::new()
                } else {
                    let lower = find_lower(&frame.lowers, &name)?;
                    let same = match &lower {
                        Some((lpath, lmd)) => same_entry(&disk, &md, &entry, lpath, lmd)?,
                        None => false,
                    };
                    if same {
                        d.unchanged_dirs.insert(layer.clone(), entry);
                    } else {
                        d.out.push(entry);
                    }
                    child_dirs(&frame.lowers, &name)?
                };
                if !skip_contents.contains(&layer) {
                    stack.push(Frame {
                        disk,
                        layer,
                        lowers: child_lowers,
                    });
                }
                continue;
            }

            let lower = find_lower(&frame.lowers, &name)?;
            let same = match &lower {
                Some((lpath, lmd)) => same_entry(&disk, &md, &entry, lpath, lmd)?,
                None => false,
            };
            if same {
                if let (Some(key), Some((_, lmd))) = (entry.link_key, &lower) {
                    lower_inodes
                        .entry(key)
                        .or_default()
                        .insert((lmd.dev(), lmd.ino()));
                    d.unchanged_links.push(entry);
                }
            } else {
                d.out.push(entry);
            }
        }
    }
    // Files linked together in the upper directory that were separate (equal) files below
    // (`ln -f a b` over an identical b): each looks unchanged, but the layer must make the link.
    // One of them emitted is enough: `finish` brings in its partners.
    for (key, inodes) in &lower_inodes {
        if inodes.len() > 1
            && let Some(i) = d
                .unchanged_links
                .iter()
                .position(|e| e.link_key == Some(*key))
        {
            let e = d.unchanged_links.swap_remove(i);
            d.out.push(e);
        }
    }
    Ok(d.finish())
}

/// Looks `path` (a layer path) up through the lower directories `lowers` (top first), as
/// overlayfs does: the first layer that has the path decides, a whiteout (character device 0:0)
/// hides it, and on the way a non-directory or a whiteout ends the search and an opaque
/// directory ends it after its own layer. Symlinks on the way are not followed (overlayfs merges
/// directories by name, the merged view then follows symlinks itself). Returns the real path of
/// the entry that is visible, if any (for the empty path, the top lower directory).
pub fn lookup_lower(lowers: &[PathBuf], path: &Path) -> Result<Option<PathBuf>, LayerError> {
    let path = normalize_layer_path(path)?;
    let mut visible = root_dirs(lowers)?;
    let comps: Vec<_> = path.iter().collect();
    let Some((last, parents)) = comps.split_last() else {
        return Ok(visible.into_iter().next());
    };
    for c in parents {
        visible = child_dirs(&visible, c)?;
        if visible.is_empty() {
            return Ok(None);
        }
    }
    Ok(find_lower(&visible, last)?.map(|(p, _)| p))
}

struct Frame {
    /// The directory in the upper directory.
    disk: PathBuf,
    /// Its layer path.
    layer: PathBuf,
    /// The lower directories merged at this path, top first.
    lowers: Vec<PathBuf>,
}

pub(super) struct Differ {
    pub(super) out: Vec<LayerEntry>,
    /// Directories copied up without a change, emitted only as parents of other entries.
    pub(super) unchanged_dirs: HashMap<PathBuf, LayerEntry>,
    /// Files copied up without a change that have other links.
    pub(super) unchanged_links: Vec<LayerEntry>,
}

impl Differ {
    pub(super) fn finish(mut self) -> Vec<LayerEntry> {
        if !self.unchanged_links.is_empty() {
            let keys: HashSet<(u64, u64)> = self.out.iter().filter_map(|e| e.link_key).collect();
            for e in std::mem::take(&mut self.unchanged_links) {
                if e.link_key.is_some_and(|k| keys.contains(&k)) {
                    self.out.push(e);
                }
            }
        }
        if !self.unchanged_dirs.is_empty() {
            let mut parents = Vec::new();
            for e in &self.out {
                let mut a = e.path.parent();
                while let Some(p) = a {
                    if p.as_os_str().is_empty() {
                        break;
                    }
                    match self.unchanged_dirs.remove(p) {
                        Some(dir) => parents.push(dir),
                        // Either emitted already (as changed or as a parent) or not copied up.
                        None => break,
                    }
                    a = p.parent();
                }
            }
            self.out.extend(parents);
        }
        self.out
            .sort_by(|a, b| compare_layer_paths(&a.path, &b.path));
        self.out
    }
}

pub(super) fn normalize_all(paths: &[PathBuf]) -> Result<HashSet<PathBuf>, LayerError> {
    paths.iter().map(|p| normalize_layer_path(p)).collect()
}

/// Whether a lower directory entry is absent (so the lookup goes on below).
fn lstat_lower(path: &Path) -> Result<Option<fs::Metadata>, LayerError> {
    match fs::symlink_metadata(path) {
        Ok(md) => Ok(Some(md)),
        Err(e)
            if e.kind() == io::ErrorKind::NotFound || e.kind() == io::ErrorKind::NotADirectory =>
        {
            Ok(None)
        }
        Err(e) => Err(LayerError::entry(path, "reading lower layer metadata", e)),
    }
}

fn opaque(path: &Path) -> Result<bool, LayerError> {
    is_opaque_dir(path).map_err(|e| LayerError::entry(path, "reading lower layer attributes", e))
}

/// The lower roots that take part in a mount: all of them down to the first opaque one.
fn root_dirs(lowers: &[PathBuf]) -> Result<Vec<PathBuf>, LayerError> {
    let mut out = Vec::new();
    for l in lowers {
        match lstat_lower(l)? {
            Some(md) if md.is_dir() => {}
            _ => {
                return Err(LayerError::invalid(l, "a lower layer directory is missing"));
            }
        }
        out.push(l.clone());
        if opaque(l)? {
            break;
        }
    }
    Ok(out)
}

/// The lower directories merged at `<dir>/name`, given those merged at `<dir>` (top first).
fn child_dirs(lowers: &[PathBuf], name: &std::ffi::OsStr) -> Result<Vec<PathBuf>, LayerError> {
    let mut out = Vec::new();
    for l in lowers {
        let p = l.join(name);
        let Some(md) = lstat_lower(&p)? else {
            continue;
        };
        if !md.is_dir() {
            // A whiteout or a non-directory hides everything below it.
            break;
        }
        let stop = opaque(&p)?;
        out.push(p);
        if stop {
            break;
        }
    }
    Ok(out)
}

/// The visible lower entry `<dir>/name`, given the lower directories merged at `<dir>`.
fn find_lower(
    lowers: &[PathBuf],
    name: &std::ffi::OsStr,
) -> Result<Option<(PathBuf, fs::Metadata)>, LayerError> {
    for l in lowers {
        let p = l.join(name);
        if let Some(md) = lstat_lower(&p)? {
            if is_whiteout(&md) {
                return Ok(None);
            }
            return Ok(Some((p, md)));
        }
    }
    Ok(None)
}

/// Whether the upper entry equals the lower one it shadows.
pub(super) fn same_entry(
    upper: &Path,
    umd: &fs::Metadata,
    uentry: &LayerEntry,
    lower: &Path,
    lmd: &fs::Metadata,
) -> Result<bool, LayerError> {
    if umd.mode() != lmd.mode()
        || umd.uid() != lmd.uid()
        || umd.gid() != lmd.gid()
        || umd.mtime() != lmd.mtime()
        || umd.mtime_nsec() != lmd.mtime_nsec()
    {
        return Ok(false);
    }
    let ft = umd.file_type();
    if ft.is_file() && umd.size() != lmd.size() {
        return Ok(false);
    }
    if (ft.is_char_device() || ft.is_block_device()) && umd.rdev() != lmd.rdev() {
        return Ok(false);
    }
    if ft.is_symlink() {
        let a = fs::read_link(upper).map_err(|e| LayerError::entry(upper, "reading symlink", e))?;
        let b = fs::read_link(lower)
            .map_err(|e| LayerError::entry(lower, "reading lower layer symlink", e))?;
        if a != b {
            return Ok(false);
        }
    }
    let lx: BTreeMap<String, Vec<u8>> = overlay::read_xattrs(lower)
        .map_err(|e| LayerError::entry(lower, "reading lower layer extended attributes", e))?;
    if lx != uentry.xattrs {
        return Ok(false);
    }
    if ft.is_file() {
        return same_content(upper, lower);
    }
    Ok(true)
}

fn same_content(a: &Path, b: &Path) -> Result<bool, LayerError> {
    let mut fa = File::open(a).map_err(|e| LayerError::entry(a, "opening", e))?;
    let mut fb = File::open(b).map_err(|e| LayerError::entry(b, "opening lower layer file", e))?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let n = read_full(&mut fa, &mut ba).map_err(|e| LayerError::entry(a, "reading", e))?;
        let m = read_full(&mut fb, &mut bb)
            .map_err(|e| LayerError::entry(b, "reading lower layer file", e))?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n < ba.len() {
            return Ok(true);
        }
    }
}

/// Reads until `buf` is full or the end of the file.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match f.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::overlay::{OverlayXattrPrefix, make_whiteout, set_opaque};
    use std::os::unix::fs::PermissionsExt;

    fn can_mknod(dir: &Path) -> bool {
        make_whiteout(&dir.join(".probe")).is_ok() && fs::remove_file(dir.join(".probe")).is_ok()
    }

    /// Three lowers, top first: l0 (top), l1, l2.
    fn lowers(t: &Path) -> Option<Vec<PathBuf>> {
        let l: Vec<PathBuf> = (0..3).map(|i| t.join(format!("l{i}"))).collect();
        for d in &l {
            fs::create_dir_all(d).unwrap();
        }
        if !can_mknod(t) {
            return None;
        }
        let w = |p: PathBuf, s: &str| {
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, s).unwrap();
        };
        // l2 (bottom)
        w(l[2].join("a/x"), "x2");
        w(l[2].join("a/y"), "y2");
        w(l[2].join("b/z"), "z2");
        w(l[2].join("c/deep/f"), "f2");
        w(l[2].join("gone"), "g2");
        w(l[2].join("file-then-dir"), "fd2");
        w(l[2].join("o/old"), "old2");
        // l1
        w(l[1].join("a/y"), "y1");
        make_whiteout(&l[1].join("gone")).unwrap();
        fs::create_dir_all(l[1].join("b")).unwrap();
        make_whiteout(&l[1].join("b/z")).unwrap();
        fs::create_dir_all(l[1].join("file-then-dir")).unwrap();
        set_opaque(&l[1].join("file-then-dir"), OverlayXattrPrefix::User).unwrap();
        w(l[1].join("file-then-dir/in"), "in1");
        w(l[1].join("o/new"), "new1");
        set_opaque(&l[1].join("o"), OverlayXattrPrefix::User).unwrap();
        fs::create_dir_all(l[1].join("c")).unwrap();
        w(l[1].join("c/deep"), "now a file");
        // l0 (top)
        fs::create_dir_all(l[0].join("a")).unwrap();
        w(l[0].join("gone"), "back");
        Some(l)
    }

    #[test]
    fn lookup_through_whiteouts_and_opaque_dirs() {
        let t = tempfile::tempdir().unwrap();
        let Some(l) = lowers(t.path()) else {
            eprintln!("skipped: cannot create whiteouts here");
            return;
        };
        let look = |p: &str| lookup_lower(&l, Path::new(p)).unwrap();
        assert_eq!(look("a/x"), Some(l[2].join("a/x")));
        assert_eq!(look("/a/y"), Some(l[1].join("a/y")));
        assert_eq!(look("a"), Some(l[0].join("a")));
        assert_eq!(look(""), Some(l[0].clone()));
        // Whited out in l1, recreated in l0.
        assert_eq!(look("gone"), Some(l[0].join("gone")));
        assert_eq!(look("b/z"), None);
        assert_eq!(look("b"), Some(l[1].join("b")));
        // An opaque directory hides the lower ones.
        assert_eq!(look("o/old"), None);
        assert_eq!(look("o/new"), Some(l[1].join("o/new")));
        assert_eq!(
            look("file-then-dir/in"),
            Some(l[1].join("file-then-dir/in"))
        );
        // A file on the way hides the directory below it.
        assert_eq!(look("c/deep/f"), None);
        assert_eq!(look("c/deep"), Some(l[1].join("c/deep")));
        assert_eq!(look("nothing/here"), None);
        assert!(lookup_lower(&l, Path::new("../x")).is_err());

        // Whiteouts in l1 hide l2 when l0 is skipped, too.
        let l12 = &l[1..];
        assert_eq!(lookup_lower(l12, Path::new("gone")).unwrap(), None);
        // An opaque root stops the search.
        set_opaque(&l[1], OverlayXattrPrefix::User).unwrap();
        assert_eq!(lookup_lower(&l, Path::new("a/x")).unwrap(), None);
        assert_eq!(
            lookup_lower(&l, Path::new("a/y")).unwrap(),
            Some(l[1].join("a/y"))
        );
    }

    #[test]
    fn copied_up_without_change_is_left_out() {
        let t = tempfile::tempdir().unwrap();
        let lower = t.path().join("lower");
        let upper = t.path().join("upper");
        for d in [&lower, &upper] {
            fs::create_dir_all(d.join("d/sub")).unwrap();
        }
        fs::write(lower.join("d/sub/same"), "same").unwrap();
        fs::write(lower.join("d/sub/other"), "abcd").unwrap();
        fs::write(lower.join("d/mode"), "m").unwrap();
        // Copy up as overlay does: same content, metadata and times.
        let copy = |rel: &str| {
            let (a, b) = (lower.join(rel), upper.join(rel));
            fs::copy(&a, &b).unwrap();
            let md = fs::metadata(&a).unwrap();
            let f = File::options().write(true).open(&b).unwrap();
            f.set_times(fs::FileTimes::new().set_modified(md.modified().unwrap()))
                .unwrap();
        };
        copy("d/sub/same");
        copy("d/sub/other");
        copy("d/mode");
        // Same size and times, other bytes: a change.
        fs::write(upper.join("d/sub/other"), "abcX").unwrap();
        let md = fs::metadata(lower.join("d/sub/other")).unwrap();
        File::options()
            .write(true)
            .open(upper.join("d/sub/other"))
            .unwrap()
            .set_times(fs::FileTimes::new().set_modified(md.modified().unwrap()))
            .unwrap();
        fs::set_permissions(upper.join("d/mode"), fs::Permissions::from_mode(0o600)).unwrap();
        for rel in ["d/sub", "d", ""] {
            let md = fs::metadata(lower.join(rel)).unwrap();
            fs::set_permissions(upper.join(rel), md.permissions()).unwrap();
            File::open(upper.join(rel))
                .unwrap()
                .set_times(fs::FileTimes::new().set_modified(md.modified().unwrap()))
                .unwrap();
        }

        let got = diff_upperdir(
            &upper,
            std::slice::from_ref(&lower),
            &DiffOptions::default(),
        )
        .unwrap();
        let paths: Vec<_> = got.iter().map(|e| e.path.to_str().unwrap()).collect();
        assert_eq!(paths, ["d", "d/mode", "d/sub", "d/sub/other"]);
        assert_eq!(got[1].mode, 0o600);

        let skip = DiffOptions {
            skip: vec!["/d/sub".into()],
            ..Default::default()
        };
        let got = diff_upperdir(&upper, std::slice::from_ref(&lower), &skip).unwrap();
        let paths: Vec<_> = got.iter().map(|e| e.path.to_str().unwrap()).collect();
        assert_eq!(paths, ["d", "d/mode"]);
        let skip = DiffOptions {
            skip_contents: vec!["d".into()],
            ..Default::default()
        };
        assert!(
            diff_upperdir(&upper, std::slice::from_ref(&lower), &skip)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn missing_lower_is_an_error_naming_it() {
        let t = tempfile::tempdir().unwrap();
        let err =
            diff_upperdir(t.path(), &[t.path().join("nope")], &DiffOptions::default()).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
