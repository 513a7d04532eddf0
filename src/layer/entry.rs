//! The entries of a layer, their order, and reading them from a directory tree.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::LayerError;

/// Prefix of an OCI whiteout file: `.wh.name` deletes `name` from lower layers.
pub const WHITEOUT_PREFIX: &str = ".wh.";
/// Name of the OCI opaque-directory marker: hides everything lower layers put in its directory.
pub const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Where a regular file's content comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// Read from this file on disk when the layer is written. The size written is the size of
    /// the opened file; a file that shrinks or grows while it is copied is an error.
    Disk(PathBuf),
    /// These bytes.
    Bytes(Arc<[u8]>),
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File(FileSource),
    /// A directory.
    Dir,
    /// A symbolic link with this target, written as it is.
    Symlink(PathBuf),
    /// A hard link to an earlier entry of the same layer (or of a lower layer), by its layer path.
    Hardlink(PathBuf),
    /// A character device.
    CharDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A block device.
    BlockDevice {
        /// Device major number.
        major: u32,
        /// Device minor number.
        minor: u32,
    },
    /// A named pipe.
    Fifo,
}

impl EntryKind {
    /// What the file at `disk_path` (with `md` its `lstat` metadata) is as a layer entry: the
    /// crate's one metadata → entry-kind mapping. A regular file is read from `disk_path` when
    /// the layer is written, a symlink's target is read now (the only error). `None` for a
    /// socket (or any other type a layer cannot carry): the caller decides — scanning a tree
    /// refuses it, COPY makes it an empty file as BuildKit does.
    pub fn from_disk(md: &fs::Metadata, disk_path: &Path) -> io::Result<Option<EntryKind>> {
        let ft = md.file_type();
        let (major, minor) = dev_split(md.rdev());
        Ok(Some(if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_file() {
            EntryKind::File(FileSource::Disk(disk_path.to_path_buf()))
        } else if ft.is_symlink() {
            EntryKind::Symlink(fs::read_link(disk_path)?)
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else if ft.is_char_device() {
            EntryKind::CharDevice { major, minor }
        } else if ft.is_block_device() {
            EntryKind::BlockDevice { major, minor }
        } else {
            return Ok(None);
        }))
    }
}

/// One entry of a layer: a path inside the layer, what it is, and its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerEntry {
    /// Path inside the layer, relative (a leading `/` or `./` is accepted and dropped; `..` is
    /// refused). The empty path (or `.`, `/`) is the layer root, written as `./`.
    pub path: PathBuf,
    /// What the entry is.
    pub kind: EntryKind,
    /// Permission bits with setuid/setgid/sticky (`0o7777`); other bits are ignored.
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
    /// Modification time in whole seconds since the epoch (clamped when written, see
    /// [`WriteOptions::source_date_epoch`](super::WriteOptions::source_date_epoch)).
    pub mtime: i64,
    /// Extended attributes, by full name (`security.capability`, `user.foo`), written as
    /// `SCHILY.xattr.<name>` PAX records.
    pub xattrs: BTreeMap<String, Vec<u8>>,
    /// Identity of the inode (device, inode number) for hard-link detection: non-directory
    /// entries with the same key are written once, the later ones as hard links to the first.
    pub link_key: Option<(u64, u64)>,
}

impl LayerEntry {
    /// An entry with the given kind and mode, owned by 0:0, mtime 0, no xattrs.
    pub fn new(path: impl Into<PathBuf>, kind: EntryKind, mode: u32) -> Self {
        LayerEntry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: BTreeMap::new(),
            link_key: None,
        }
    }

    /// A regular file with in-memory content.
    pub fn file(path: impl Into<PathBuf>, content: impl Into<Arc<[u8]>>, mode: u32) -> Self {
        Self::new(
            path,
            EntryKind::File(FileSource::Bytes(content.into())),
            mode,
        )
    }

    /// A regular file whose content is read from `source` when the layer is written.
    pub fn file_from_disk(path: impl Into<PathBuf>, source: impl Into<PathBuf>, mode: u32) -> Self {
        Self::new(path, EntryKind::File(FileSource::Disk(source.into())), mode)
    }

    /// A directory.
    pub fn dir(path: impl Into<PathBuf>, mode: u32) -> Self {
        Self::new(path, EntryKind::Dir, mode)
    }

    /// A symlink (mode 0o777).
    pub fn symlink(path: impl Into<PathBuf>, target: impl Into<PathBuf>) -> Self {
        Self::new(path, EntryKind::Symlink(target.into()), 0o777)
    }

    /// A hard link to `target` (a layer path).
    pub fn hardlink(path: impl Into<PathBuf>, target: impl Into<PathBuf>, mode: u32) -> Self {
        Self::new(path, EntryKind::Hardlink(target.into()), mode)
    }

    /// A named pipe.
    pub fn fifo(path: impl Into<PathBuf>, mode: u32) -> Self {
        Self::new(path, EntryKind::Fifo, mode)
    }

    /// The OCI whiteout for `path`: `dir/.wh.name`, an empty file with mode 0.
    pub fn whiteout(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref();
        let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        let mut wh = WHITEOUT_PREFIX.as_bytes().to_vec();
        wh.extend_from_slice(name);
        let wh = <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(wh);
        let p = path.parent().unwrap_or(Path::new("")).join(wh);
        Self::file(p, Vec::new(), 0)
    }

    /// The OCI opaque whiteout for directory `dir`: `dir/.wh..wh..opq`, an empty file with mode 0.
    pub fn opaque_whiteout(dir: impl AsRef<Path>) -> Self {
        Self::file(dir.as_ref().join(OPAQUE_WHITEOUT), Vec::new(), 0)
    }

    /// Sets the owner.
    pub fn with_owner(mut self, uid: u64, gid: u64) -> Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    /// Sets the mtime (seconds).
    pub fn with_mtime(mut self, mtime: i64) -> Self {
        self.mtime = mtime;
        self
    }

    /// Adds an extended attribute.
    pub fn with_xattr(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.xattrs.insert(name.into(), value.into());
        self
    }
}

/// Compares two layer paths in layer order: component by component, each byte-wise. Same as a
/// byte-wise comparison in which `/` is smaller than every other byte, so a directory's whole
/// subtree sorts before its next sibling (`a` < `a/b` < `a-b`). Paths are compared as given; use
/// normalized paths (no `.`, no `//`, no trailing `/`).
pub fn compare_layer_paths(a: &Path, b: &Path) -> Ordering {
    let key = |c: u8| if c == b'/' { 0 } else { c };
    let a = a.as_os_str().as_bytes();
    let b = b.as_os_str().as_bytes();
    a.iter().map(|&c| key(c)).cmp(b.iter().map(|&c| key(c)))
}

/// Normalizes a layer path: drops a leading `/`, `.` components and doubled or trailing slashes;
/// refuses `..`. The root is the empty path.
pub(crate) fn normalize_layer_path(path: &Path) -> Result<PathBuf, LayerError> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(LayerError::invalid(
                    path,
                    "`..` is not allowed in a layer path",
                ));
            }
        }
    }
    Ok(out)
}

/// How [`scan_dir`] maps a directory tree to layer entries.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Layer path the scanned directory becomes (empty: the layer root).
    pub prefix: PathBuf,
    /// Include an entry for the scanned directory itself (at `prefix`, or `./` when empty).
    pub include_root: bool,
    /// Force this uid:gid on every entry.
    pub owner: Option<(u64, u64)>,
    /// Force these permission bits on every entry except symlinks.
    pub mode: Option<u32>,
    /// Force this mtime on every entry.
    pub mtime: Option<i64>,
}

/// Reads a directory tree into layer entries, sorted in layer order.
///
/// Uses `lstat` only (symlinks are entries, never followed). Regular files become
/// [`FileSource::Disk`] entries read when the layer is written; non-directories with more than
/// one link get a [`LayerEntry::link_key`] so the writer turns repeats into hard links.
/// Sockets are skipped (tar cannot carry them). Metadata kept: permission bits with
/// setuid/setgid/sticky, numeric uid/gid, mtime in whole seconds, device numbers.
///
/// Limitation: extended attributes (including `security.capability`) are **not** read — the
/// standard library has no `getxattr`; entries come back with empty `xattrs`. Callers that
/// know an entry's xattrs can set them before writing.
pub fn scan_dir(dir: &Path, opts: &ScanOptions) -> Result<Vec<LayerEntry>, LayerError> {
    let prefix = normalize_layer_path(&opts.prefix)?;
    let mut out = Vec::new();
    if opts.include_root {
        let md =
            fs::symlink_metadata(dir).map_err(|e| LayerError::entry(dir, "reading metadata", e))?;
        if !md.is_dir() {
            return Err(LayerError::invalid(dir, "not a directory"));
        }
        out.push(entry_from_metadata(prefix.clone(), dir, &md, opts)?);
    }
    let mut stack = vec![(dir.to_path_buf(), prefix)];
    while let Some((disk_dir, layer_dir)) = stack.pop() {
        let rd = fs::read_dir(&disk_dir)
            .map_err(|e| LayerError::entry(&disk_dir, "reading directory", e))?;
        for de in rd {
            let de = de.map_err(|e| LayerError::entry(&disk_dir, "reading directory", e))?;
            let disk_path = de.path();
            let layer_path = layer_dir.join(de.file_name());
            let md = fs::symlink_metadata(&disk_path)
                .map_err(|e| LayerError::entry(&disk_path, "reading metadata", e))?;
            if md.file_type().is_socket() {
                continue;
            }
            let is_dir = md.is_dir();
            out.push(entry_from_metadata(
                layer_path.clone(),
                &disk_path,
                &md,
                opts,
            )?);
            if is_dir {
                stack.push((disk_path, layer_path));
            }
        }
    }
    out.sort_by(|a, b| compare_layer_paths(&a.path, &b.path));
    Ok(out)
}

pub(crate) fn entry_from_metadata(
    layer_path: PathBuf,
    disk_path: &Path,
    md: &fs::Metadata,
    opts: &ScanOptions,
) -> Result<LayerEntry, LayerError> {
    let ft = md.file_type();
    let kind = EntryKind::from_disk(md, disk_path)
        .map_err(|e| LayerError::entry(disk_path, "reading symlink", e))?
        .ok_or_else(|| LayerError::invalid(disk_path, "unsupported file type"))?;
    let is_symlink = matches!(kind, EntryKind::Symlink(_));
    let mut mode = md.mode() & 0o7777;
    if let (Some(m), false) = (opts.mode, is_symlink) {
        mode = m & 0o7777;
    }
    let (uid, gid) = opts
        .owner
        .unwrap_or((u64::from(md.uid()), u64::from(md.gid())));
    let link_key = (!ft.is_dir() && md.nlink() > 1).then(|| (md.dev(), md.ino()));
    Ok(LayerEntry {
        path: layer_path,
        kind,
        mode,
        uid,
        gid,
        mtime: opts.mtime.unwrap_or(md.mtime()),
        xattrs: BTreeMap::new(),
        link_key,
    })
}

/// Splits a Linux `dev_t` into (major, minor), as glibc's `gnu_dev_major`/`gnu_dev_minor` do.
fn dev_split(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_is_component_wise() {
        let mut v: Vec<PathBuf> = ["a-b", "a/b", "a", "b", "a/b/c", "a.b", "", "A", "a/a"]
            .iter()
            .map(PathBuf::from)
            .collect();
        v.sort_by(|a, b| compare_layer_paths(a, b));
        let got: Vec<&str> = v.iter().map(|p| p.to_str().unwrap()).collect();
        assert_eq!(
            got,
            ["", "A", "a", "a/a", "a/b", "a/b/c", "a-b", "a.b", "b"]
        );
    }

    #[test]
    fn kinds_from_disk() {
        let t = tempfile::tempdir().unwrap();
        let p = |n: &str| t.path().join(n);
        fs::write(p("f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", p("l")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            p("fifo"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let _sock = std::os::unix::net::UnixListener::bind(p("sock")).unwrap();
        let kind =
            |n: &str| EntryKind::from_disk(&fs::symlink_metadata(p(n)).unwrap(), &p(n)).unwrap();
        assert_eq!(kind(""), Some(EntryKind::Dir));
        assert_eq!(kind("f"), Some(EntryKind::File(FileSource::Disk(p("f")))));
        assert_eq!(kind("l"), Some(EntryKind::Symlink(PathBuf::from("f"))));
        assert_eq!(kind("fifo"), Some(EntryKind::Fifo));
        // A layer cannot carry a socket: the callers differ (scan_dir refuses it, COPY writes
        // an empty file), so the mapping leaves it to them.
        assert_eq!(kind("sock"), None);
        let err = entry_from_metadata(
            PathBuf::from("sock"),
            &p("sock"),
            &fs::symlink_metadata(p("sock")).unwrap(),
            &ScanOptions::default(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("unsupported file type"), "{err}");
    }

    #[test]
    fn normalize() {
        assert_eq!(
            normalize_layer_path(Path::new("/a//b/./c/")).unwrap(),
            Path::new("a/b/c")
        );
        assert_eq!(
            normalize_layer_path(Path::new("./")).unwrap(),
            Path::new("")
        );
        assert!(normalize_layer_path(Path::new("a/../b")).is_err());
    }

    #[test]
    fn whiteout_names() {
        assert_eq!(LayerEntry::whiteout("a/b").path, Path::new("a/.wh.b"));
        assert_eq!(LayerEntry::whiteout("top").path, Path::new(".wh.top"));
        assert_eq!(
            LayerEntry::opaque_whiteout("d").path,
            Path::new("d/.wh..wh..opq")
        );
        assert_eq!(
            LayerEntry::opaque_whiteout("").path,
            Path::new(".wh..wh..opq")
        );
    }

    #[test]
    fn dev_numbers() {
        // glibc's makedev.
        let makedev = |major: u64, minor: u64| {
            ((major & 0xfff) << 8)
                | ((major & !0xfff) << 32)
                | (minor & 0xff)
                | ((minor & !0xff) << 12)
        };
        assert_eq!(dev_split(0x0103), (1, 3)); // /dev/null
        assert_eq!(dev_split(makedev(259, 65536)), (259, 65536));
        assert_eq!(dev_split(makedev(4095, 1_048_575)), (4095, 1_048_575));
    }
}
