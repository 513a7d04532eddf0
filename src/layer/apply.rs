//! Applying (unpacking) a layer tar into a directory, as if that directory were `/`.
//!
//! Every entry name is cleaned lexically (`..` stops at the target, a leading `/` is dropped),
//! then the directories on the way to the entry are resolved one component at a time with
//! `lstat`; a symlink met on the way is read and its target is resolved the same way, inside the
//! target (an absolute target starts again at the target, `..` stops there). The entry itself is
//! then created at `<resolved parent>/<name>` after removing whatever non-directory (or, for a
//! non-directory entry, whatever directory) is there, so no system call ever follows a symlink
//! out of the target. Hard-link targets are resolved the same way and must exist.
//!
//! Metadata: modes (with setuid/setgid/sticky), mtimes and, per [`Ownership`], uid/gid.
//! Directory modes and mtimes are set at the end (so a read-only directory can still be filled and
//! its mtime is not disturbed by its children).
//!
//! [`apply_layer_with_whiteouts`] with [`WhiteoutMode::Overlay`] unpacks a layer as an overlayfs
//! layer directory instead (a snapshot): whiteouts become character devices 0:0 and opaque
//! directory attributes rather than deletions.
//!
//! Limitations (the standard library has no `mknod`, `lutimes` or `*xattr` calls and the layer
//! module uses no `unsafe`):
//! - Extended attributes are applied to regular files only (through the `tar` crate); on
//!   directories, symlinks and special files they are dropped. A failure to set one (EPERM,
//!   ENOTSUP) is a warning, not an error, as in Docker — but the `tar` crate stops at the first
//!   failure, so the file's later attributes (in key order) are not set either.
//! - The `tar` crate (0.4.46) splits PAX records at newline bytes (tar-rs issue #428): an xattr
//!   value containing 0x0a (some `security.capability` values do) is dropped with a warning.
//!   kiln *writes* such values correctly (GNU tar and Go read them back).
//! - Fifos and device nodes are created by running `mknod(1)` (device mtimes with `touch(1)`).
//!   A device that cannot be created (unprivileged, in a user namespace) is skipped with a
//!   warning, as Docker does in a user namespace.
//! - A symlink's mtime of 0 is applied as 1 (a quirk of the `tar` crate's unpacking).
//! - Unprivileged and outside a user namespace, a directory that a lower layer made read-only
//!   cannot receive entries from a later layer (permission denied), as with any non-root tool.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::{self, DirBuilder, File, FileTimes, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::LayerError;
use super::digest::{DiffId, HashReader};
use super::entry::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX};
use super::overlay::{self, WhiteoutMode};
use super::sniff::{Sniffed, decompress, sniff};
// Entry names are cleaned as `filepath.Clean("/" + name)`.
use super::write::{MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD};
use crate::pathclean::clean_components as clean;

/// Whether and how entry owners are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ownership {
    /// [`Preserve`](Self::Preserve) when running as uid 0 (including root in a user namespace),
    /// else [`BestEffort`](Self::BestEffort). In a user namespace with a single-id map, ask for
    /// `BestEffort` explicitly: ids outside the map cannot be set (EINVAL) and `Preserve` would
    /// fail on the first such entry.
    #[default]
    Auto,
    /// Set every entry's uid/gid; failing to is an error. Owners are set before modes and
    /// extended attributes, so setuid bits and file capabilities survive.
    Preserve,
    /// Set uid/gid where they differ from what the file got and the system allows it; EPERM and
    /// EINVAL (an id outside the user namespace's map) are counted in
    /// [`ApplyReport::ownership_ignored`], not errors.
    BestEffort,
    /// Never change owners (entries whose owner differs from what the file got are counted in
    /// [`ApplyReport::ownership_ignored`]).
    Ignore,
}

/// How to apply a layer.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    /// Owner handling (default [`Ownership::Auto`]).
    pub ownership: Ownership,
    /// Apply `SCHILY.xattr.*` extended attributes of regular files (default true).
    pub xattrs: bool,
    /// Give every directory at least `u+rwx`, so that whoever applied the layers can remove the
    /// tree without privileges (a rootless `-o type=local` export; default false).
    pub removable: bool,
}

impl ApplyOptions {
    /// The defaults for a process in a user namespace: with a single-id map other owners
    /// cannot be set, so ownership is best effort there.
    pub fn for_namespace(single_id: bool) -> ApplyOptions {
        ApplyOptions {
            ownership: if single_id {
                Ownership::BestEffort
            } else {
                Ownership::Auto
            },
            ..ApplyOptions::default()
        }
    }
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            ownership: Ownership::Auto,
            xattrs: true,
            removable: false,
        }
    }
}

/// What applying a layer did.
#[derive(Debug, Clone)]
pub struct ApplyReport {
    /// sha256 of the uncompressed tar stream, as read (compare it with the expected diffID).
    pub diff_id: DiffId,
    /// Size of the uncompressed tar stream.
    pub uncompressed_size: u64,
    /// Media type matching the compression found.
    pub media_type: &'static str,
    /// Number of archive entries applied (whiteouts included).
    pub entries: u64,
    /// Owner changes skipped under [`Ownership::BestEffort`] and [`Ownership::Ignore`].
    pub ownership_ignored: u64,
    /// Device nodes that could not be created (unprivileged, or in a user namespace), by
    /// their path in the layer.
    pub skipped_devices: Vec<PathBuf>,
    /// Other things that were not applied exactly, one line each, naming the entry.
    pub warnings: Vec<String>,
}

impl ApplyReport {
    /// One line about the skipped device nodes (naming up to ten), if there were any.
    pub fn skipped_devices_warning(&self) -> Option<String> {
        let n = self.skipped_devices.len();
        if n == 0 {
            return None;
        }
        let mut names: Vec<String> = self
            .skipped_devices
            .iter()
            .take(10)
            .map(|p| format!("/{}", p.display()))
            .collect();
        if n > 10 {
            names.push(format!("and {} more", n - 10));
        }
        Some(format!(
            "{n} device node{} not created (a user namespace cannot make devices): {}",
            if n == 1 { "" } else { "s" },
            names.join(", ")
        ))
    }
}

const MAX_SYMLINKS: u32 = 255;

/// Applies the layer read from `reader` (gzip, zstd or plain tar, detected from the first bytes)
/// onto the directory `target` (created if missing). See the module documentation for the rules.
///
/// The whole stream is read (including anything after the end-of-archive blocks) so that
/// [`ApplyReport::diff_id`] can be checked against the expected diffID. On error the target is
/// left partly applied (directory modes not yet final): discard it.
pub fn apply_layer<R: Read>(
    reader: R,
    target: &Path,
    opts: &ApplyOptions,
) -> Result<ApplyReport, LayerError> {
    apply_layer_with_whiteouts(reader, target, opts, WhiteoutMode::Delete)
}

/// [`apply_layer`] with a choice of what whiteouts do: [`WhiteoutMode::Delete`] is
/// [`apply_layer`]; [`WhiteoutMode::Overlay`] unpacks the layer as an overlayfs layer directory
/// (a snapshot): `.wh.name` becomes a character device 0:0 `name`, `.wh..wh..opq` the
/// `*.overlay.opaque=y` attribute of its directory (created, mode 0755, when the layer has no
/// entry for it). In that mode overlayfs's own attributes (`trusted.overlay.*`,
/// `user.overlay.*`) carried by regular files of the layer are removed after unpacking, so a
/// layer cannot plant redirects or metacopy markers in a snapshot.
///
/// In overlay mode the target is meant to hold this layer only: directories the layer does not
/// list but needs (parents of its entries) are created with mode 0755 and, in a mount, their
/// metadata hides the lower layers' (as with Docker's and containerd's overlay snapshots), and
/// symlinks of lower layers are not followed (they are not in the target).
pub fn apply_layer_with_whiteouts<R: Read>(
    reader: R,
    target: &Path,
    opts: &ApplyOptions,
    whiteouts: WhiteoutMode,
) -> Result<ApplyReport, LayerError> {
    fs::create_dir_all(target)
        .map_err(|e| LayerError::entry(target, "creating the target directory", e))?;
    let root = fs::canonicalize(target)
        .map_err(|e| LayerError::entry(target, "resolving the target directory", e))?;

    let (sniffed, stream) =
        sniff(reader).map_err(|e| LayerError::stream("reading the layer", e))?;
    let sniffed = sniffed.layer();
    let media_type = match sniffed {
        Sniffed::Gzip => MEDIA_TYPE_LAYER_GZIP,
        Sniffed::Zstd => MEDIA_TYPE_LAYER_ZSTD,
        _ => MEDIA_TYPE_LAYER_TAR,
    };
    // Only a zstd decoder can fail to start.
    let decoded = decompress(sniffed, stream)
        .map_err(|e| LayerError::stream("starting zstd decompression", e))?;

    let ownership = match opts.ownership {
        Ownership::Auto if running_as_root() => Ownership::Preserve,
        Ownership::Auto => Ownership::BestEffort,
        o => o,
    };
    let mut archive = tar::Archive::new(HashReader::new(decoded));
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(ownership == Ownership::Preserve);
    archive.set_unpack_xattrs(opts.xattrs);
    archive.set_overwrite(true);
    archive.set_mask(0);

    let mut ap = Applier::new(root, ownership, opts.xattrs, whiteouts);
    ap.removable = opts.removable;
    let read_err = |e| LayerError::stream("reading the layer archive", e);
    for entry in archive.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        ap.apply_entry(&mut entry)?;
    }
    ap.finish_dirs();

    let mut rest = archive.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(read_err)?;
    let (diff_id, uncompressed_size) = rest.finish();
    Ok(ApplyReport {
        diff_id: DiffId::from_bytes(diff_id),
        uncompressed_size,
        media_type,
        entries: ap.entries,
        ownership_ignored: ap.ownership_ignored,
        skipped_devices: ap.skipped_devices,
        warnings: ap.warnings,
    })
}

/// uid 0 in the current user namespace (`/proc/self` belongs to the process's euid).
fn running_as_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Metadata applied to a directory once every entry is in place.
struct DirMeta {
    layer_path: PathBuf,
    mode: u32,
    mtime: i64,
}

/// Header values, with PAX records taking precedence.
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    /// The `tar` crate sets the header mtime (0 read as 1); true when that is not exact.
    mtime_needs_fix: bool,
    /// The `tar` crate chowns to the header ids; true when PAX ids differ from them.
    pax_ids: bool,
    has_xattrs: bool,
}

struct Applier {
    root: PathBuf,
    ownership: Ownership,
    xattrs: bool,
    /// See [`ApplyOptions::removable`].
    removable: bool,
    whiteouts: WhiteoutMode,
    /// Where this layer's entries were written (resolved paths): whiteouts never remove them.
    written: HashSet<PathBuf>,
    /// Proper ancestors (under the root) of the written paths.
    ancestors: HashSet<PathBuf>,
    /// Directories to finish, by resolved path. Ordered so a subtree is one range.
    dirs: BTreeMap<PathBuf, DirMeta>,
    /// The last resolved parent: (cleaned components, resolved path). Safe to reuse for the next
    /// entry with the same parent: an entry only creates or removes `<resolved parent>/<name>`,
    /// never the resolved parent or one of its ancestors, so every existing component of the
    /// cached path is still a real directory and writes under it stay inside the root. (An entry
    /// with another parent replaces the cache; whiteouts, which remove more, drop it.)
    parent_cache: Option<(Vec<OsString>, PathBuf)>,
    entries: u64,
    ownership_ignored: u64,
    skipped_devices: Vec<PathBuf>,
    warnings: Vec<String>,
}

fn join_rel(comps: &[OsString]) -> Vec<u8> {
    let mut v = Vec::new();
    for (i, c) in comps.iter().enumerate() {
        if i > 0 {
            v.push(b'/');
        }
        v.extend_from_slice(c.as_bytes());
    }
    v
}

/// `secs` after the epoch; out-of-range values (only a hostile PAX `mtime` has them) become the
/// epoch rather than a panic.
fn system_time(secs: i64) -> SystemTime {
    let d = Duration::from_secs(secs.unsigned_abs());
    let t = if secs >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    t.unwrap_or(UNIX_EPOCH)
}

fn remove_any(path: &Path, md: &fs::Metadata) -> io::Result<()> {
    if md.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    }
}

impl Applier {
    /// An applier onto `root` that has written nothing yet.
    fn new(root: PathBuf, ownership: Ownership, xattrs: bool, whiteouts: WhiteoutMode) -> Self {
        Applier {
            root,
            ownership,
            xattrs,
            removable: false,
            whiteouts,
            written: HashSet::new(),
            ancestors: HashSet::new(),
            dirs: BTreeMap::new(),
            parent_cache: None,
            entries: 0,
            ownership_ignored: 0,
            skipped_devices: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn apply_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), LayerError> {
        let et = entry.header().entry_type();
        if et.is_pax_global_extensions()
            || et.is_pax_local_extensions()
            || et.is_gnu_longname()
            || et.is_gnu_longlink()
        {
            return Ok(());
        }
        let raw = entry.path_bytes().into_owned();
        let name = PathBuf::from(OsString::from_vec(raw.clone()));
        let comps = clean(&raw);
        self.entries += 1;

        let Some((last, parent_comps)) = comps.split_last() else {
            // The target root itself.
            if !et.is_dir() {
                return Err(LayerError::invalid(
                    &name,
                    "a non-directory entry cannot replace the layer root",
                ));
            }
            let meta = self.meta(entry, &name)?;
            let root = self.root.clone();
            let md = fs::symlink_metadata(&root).ok();
            self.chown(&root, &name, &meta, md.as_ref(), false)?;
            self.record_dir(root, PathBuf::new(), &meta, &name)?;
            return Ok(());
        };

        let last_bytes = last.as_bytes();
        if let Some(wh) = last_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            self.parent_cache = None;
            let wh = wh.to_vec();
            return self.whiteout(&name, parent_comps, last_bytes, &wh);
        }

        let parent = self.parent(parent_comps, &name)?;
        let dst = parent.join(last);
        let existing = fs::symlink_metadata(&dst).ok();
        let rel = join_rel(&comps);

        use tar::EntryType as T;
        match et {
            T::Directory => {
                let meta = self.meta(entry, &name)?;
                let keep = existing.as_ref().is_some_and(|m| m.is_dir());
                if let (Some(md), false) = (&existing, keep) {
                    self.remove(&dst, md, &name)?;
                }
                if !keep {
                    DirBuilder::new()
                        .mode(0o700)
                        .create(&dst)
                        .map_err(|e| LayerError::entry(&name, "creating directory", e))?;
                }
                if let (WhiteoutMode::Overlay { xattr_prefix }, Some(md)) =
                    (self.whiteouts, &existing)
                    && overlay::is_whiteout(md)
                {
                    // A directory over a whiteout of the same layer: the lower one is hidden
                    // with everything in it, as overlayfs itself marks it.
                    overlay::set_opaque(&dst, xattr_prefix)
                        .map_err(|e| LayerError::entry(&name, "marking the directory opaque", e))?;
                }
                let md = fs::symlink_metadata(&dst).ok();
                self.chown(&dst, &name, &meta, md.as_ref(), false)?;
                self.record_dir(
                    dst.clone(),
                    PathBuf::from(OsString::from_vec(rel)),
                    &meta,
                    &name,
                )?;
            }
            T::Regular | T::Continuous | T::GNUSparse | T::Symlink => {
                let meta = self.meta(entry, &name)?;
                if let Some(md) = &existing {
                    self.remove(&dst, md, &name)?;
                }
                self.unpack_with_tar(entry, &dst, &name, &meta, et == T::Symlink)?;
            }
            T::Link => self.hardlink(entry, &dst, existing.as_ref(), &name)?,
            T::Char | T::Block | T::Fifo => {
                let meta = self.meta(entry, &name)?;
                if let Some(md) = &existing {
                    self.remove(&dst, md, &name)?;
                }
                if !self.special(entry, et, &dst, &name, &meta)? {
                    return Ok(());
                }
            }
            other => {
                return Err(LayerError::invalid(
                    &name,
                    format!("unsupported tar entry type {:?}", other.as_byte() as char),
                ));
            }
        }
        self.mark_written(dst);
        Ok(())
    }

    fn mark_written(&mut self, dst: PathBuf) {
        let mut a = dst.parent();
        while let Some(p) = a {
            if p == self.root || !self.ancestors.insert(p.to_path_buf()) {
                break;
            }
            a = p.parent();
        }
        self.written.insert(dst);
    }

    fn meta<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        name: &Path,
    ) -> Result<Meta, LayerError> {
        let h = entry.header();
        let bad = |what: &str, e: io::Error| {
            LayerError::invalid(name, format!("invalid {what} in tar header: {e}"))
        };
        let mode = h.mode().map_err(|e| bad("mode", e))? & 0o7777;
        let huid = h.uid().map_err(|e| bad("uid", e))?;
        let hgid = h.gid().map_err(|e| bad("gid", e))?;
        let hmtime = h.mtime().map_err(|e| bad("mtime", e))?;
        let (mut uid, mut gid) = (huid, hgid);
        let mut mtime = i64::try_from(hmtime).unwrap_or(i64::MAX);
        let mut mtime_needs_fix = hmtime == 0;
        let mut has_xattrs = false;
        let mut unreadable = false;
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| bad("PAX extended header", e))?
        {
            for ext in exts {
                // The tar crate (0.4.46) splits PAX records at every newline byte, so a binary
                // value containing 0x0a (a file capability, say) comes out as malformed
                // fragments; it skips them too when applying xattrs (tar-rs issue #428).
                let Ok(ext) = ext else {
                    unreadable = true;
                    continue;
                };
                let key = ext.key_bytes();
                let value = std::str::from_utf8(ext.value_bytes()).unwrap_or("");
                match key {
                    b"uid" => uid = value.parse().map_err(|_| bad_pax(name, "uid"))?,
                    b"gid" => gid = value.parse().map_err(|_| bad_pax(name, "gid"))?,
                    b"mtime" => {
                        let secs = value.split('.').next().unwrap_or("");
                        mtime = secs.parse().map_err(|_| bad_pax(name, "mtime"))?;
                        mtime_needs_fix = true;
                    }
                    k if k.starts_with(b"SCHILY.xattr.") => has_xattrs = true,
                    _ => {}
                }
            }
        }
        if unreadable {
            self.warnings.push(format!(
                "{}: PAX records the tar crate cannot parse (a value with a newline byte?) \
                 were skipped; extended attributes may be missing",
                name.display()
            ));
        }
        Ok(Meta {
            mode,
            uid,
            gid,
            mtime,
            mtime_needs_fix,
            pax_ids: (uid, gid) != (huid, hgid),
            has_xattrs,
        })
    }

    /// Resolves (and creates, mode 0755) the parent directory of an entry, as
    /// [`layer_parent`](Self::layer_parent) does.
    fn parent(&mut self, comps: &[OsString], name: &Path) -> Result<PathBuf, LayerError> {
        if let Some((c, p)) = &self.parent_cache
            && c.as_slice() == comps
        {
            return Ok(p.clone());
        }
        let parent = self
            .layer_parent(comps, name, true)?
            .expect("created when missing");
        self.parent_cache = Some((comps.to_vec(), parent.clone()));
        Ok(parent)
    }

    /// Resolves the directory `comps` of an entry as the layer's own snapshot sees it in an
    /// overlay mount, so that applying layers into one directory gives the tree a RUN sees:
    /// symlinks this layer wrote are followed (inside the root), but a non-directory that was
    /// there before the layer (a lower layer's symlink or file) is replaced by a directory, mode
    /// 0755, as the layer's directory hides it in the mount (OCI: a directory replaces a
    /// non-directory). Missing directories are created (mode 0755) when `create`; otherwise the
    /// answer is `None`.
    fn layer_parent(
        &mut self,
        comps: &[OsString],
        name: &Path,
        create: bool,
    ) -> Result<Option<PathBuf>, LayerError> {
        let resolve_err = |e| LayerError::entry(name, "resolving the parent directory", e);
        let written = &self.written;
        let mut probe = |p: &Path| -> io::Result<Probe> {
            let md = match fs::symlink_metadata(p) {
                Ok(md) => md,
                Err(e)
                    if e.kind() == io::ErrorKind::NotFound
                        || e.kind() == io::ErrorKind::NotADirectory =>
                {
                    return Ok(Probe::Absent);
                }
                Err(e) => return Err(e),
            };
            Ok(if md.is_dir() {
                Probe::Dir
            } else if !written.contains(p) {
                // To be replaced by a directory below.
                Probe::Absent
            } else if md.file_type().is_symlink() {
                Probe::Symlink(fs::read_link(p)?)
            } else {
                Probe::Other
            })
        };
        let parent =
            resolve_with(&self.root, comps, true, false, &mut probe).map_err(|e| match e {
                ResolveError::Probe(e) => resolve_err(e),
                ResolveError::SymlinkLoop(_) | ResolveError::NotADirectory(_) => {
                    resolve_err(io::Error::other("too many levels of symbolic links"))
                }
            })?;
        let rel = parent
            .strip_prefix(&self.root)
            .expect("resolved under the root")
            .to_path_buf();
        let mut cur = self.root.clone();
        for c in rel.components() {
            cur.push(c);
            match fs::symlink_metadata(&cur) {
                Ok(md) if md.is_dir() => continue,
                Ok(_) if self.written.contains(&cur) => {
                    return Err(LayerError::invalid(
                        name,
                        "a parent of the entry is not a directory",
                    ));
                }
                Ok(md) => self.remove(&cur, &md, name)?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                }
                Err(e) => return Err(resolve_err(e)),
            }
            DirBuilder::new()
                .mode(0o755)
                .create(&cur)
                .map_err(|e| LayerError::entry(name, "creating parent directories", e))?;
        }
        Ok(Some(parent))
    }

    /// Resolves cleaned components inside the root, following every symlink met (its target
    /// resolved inside the root too). Components that do not exist are taken literally. The
    /// result is under the root and no existing component of it is a symlink.
    fn resolve(&self, comps: &[OsString]) -> io::Result<PathBuf> {
        resolve_components(&self.root, comps, true)
    }

    fn remove(&mut self, path: &Path, md: &fs::Metadata, name: &Path) -> Result<(), LayerError> {
        remove_any(path, md).map_err(|e| LayerError::entry(name, "removing what was there", e))?;
        self.forget_dirs_under(path);
        Ok(())
    }

    fn forget_dirs_under(&mut self, path: &Path) {
        let doomed: Vec<PathBuf> = self
            .dirs
            .range(path.to_path_buf()..)
            .take_while(|(k, _)| k.starts_with(path))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.dirs.remove(&k);
        }
    }

    fn record_dir(
        &mut self,
        path: PathBuf,
        layer_path: PathBuf,
        meta: &Meta,
        name: &Path,
    ) -> Result<(), LayerError> {
        // Owner-writable while the layer is applied; the real mode is set at the end.
        fs::set_permissions(&path, fs::Permissions::from_mode(meta.mode | 0o700))
            .map_err(|e| LayerError::entry(name, "setting directory permissions", e))?;
        self.dirs.insert(
            path,
            DirMeta {
                layer_path,
                mode: meta.mode,
                mtime: meta.mtime,
            },
        );
        Ok(())
    }

    /// Applies the owner per the policy. `tar_did_it`: the `tar` crate already chowned to the
    /// header ids. Returns whether an owner change happened (so modes must be set again).
    fn chown(
        &mut self,
        path: &Path,
        name: &Path,
        meta: &Meta,
        current: Option<&fs::Metadata>,
        tar_did_it: bool,
    ) -> Result<bool, LayerError> {
        let ids = || -> Result<(u32, u32), LayerError> {
            match (u32::try_from(meta.uid), u32::try_from(meta.gid)) {
                (Ok(u), Ok(g)) => Ok((u, g)),
                _ => Err(LayerError::invalid(
                    name,
                    format!("uid/gid {}:{} out of range", meta.uid, meta.gid),
                )),
            }
        };
        match self.ownership {
            Ownership::Auto => Ok(false),
            Ownership::Ignore => {
                if current.is_some_and(|md| {
                    (u64::from(md.uid()), u64::from(md.gid())) != (meta.uid, meta.gid)
                }) {
                    self.ownership_ignored += 1;
                }
                Ok(false)
            }
            Ownership::Preserve => {
                if tar_did_it && !meta.pax_ids {
                    return Ok(false);
                }
                let (u, g) = ids()?;
                std::os::unix::fs::lchown(path, Some(u), Some(g))
                    .map_err(|e| LayerError::entry(name, "setting owner", e))?;
                Ok(true)
            }
            Ownership::BestEffort => {
                if let Some(md) = current
                    && (u64::from(md.uid()), u64::from(md.gid())) == (meta.uid, meta.gid)
                {
                    return Ok(false);
                }
                let Ok((u, g)) = ids() else {
                    self.ownership_ignored += 1;
                    return Ok(false);
                };
                match std::os::unix::fs::lchown(path, Some(u), Some(g)) {
                    Ok(()) => Ok(true),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput
                        ) =>
                    {
                        self.ownership_ignored += 1;
                        Ok(false)
                    }
                    Err(e) => Err(LayerError::entry(name, "setting owner", e)),
                }
            }
        }
    }

    /// Regular files and symlinks: written by the `tar` crate at `dst` (which does not exist and
    /// whose parent has no symlink in it), so that file xattrs are applied after owner and mode.
    fn unpack_with_tar<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        dst: &Path,
        name: &Path,
        meta: &Meta,
        is_symlink: bool,
    ) -> Result<(), LayerError> {
        entry.set_unpack_xattrs(self.xattrs && meta.has_xattrs && !is_symlink);
        let file = match entry.unpack(dst) {
            Ok(tar::Unpacked::File(f)) => Some(f),
            Ok(_) => None,
            Err(e)
                if meta.has_xattrs
                    && e.to_string().contains("extended attributes")
                    && fs::symlink_metadata(dst).is_ok() =>
            {
                // Everything but (some of) the xattrs is in place: the tar crate sets them last.
                self.warnings.push(format!(
                    "{}: extended attributes not applied: {}",
                    name.display(),
                    std::error::Error::source(&e).map_or(e.to_string(), |s| s.to_string())
                ));
                None
            }
            Err(e) => return Err(LayerError::entry(name, "unpacking", e)),
        };
        if meta.has_xattrs && !is_symlink && matches!(self.whiteouts, WhiteoutMode::Overlay { .. })
        {
            overlay::strip_overlay_xattrs(dst)
                .map_err(|e| LayerError::entry(name, "removing overlayfs attributes", e))?;
        }
        let md = fs::symlink_metadata(dst).ok();
        let chowned = self.chown(dst, name, meta, md.as_ref(), true)?;
        if is_symlink {
            return Ok(());
        }
        if chowned && meta.mode & 0o6000 != 0 {
            // A chown clears setuid/setgid: set the mode again.
            fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode))
                .map_err(|e| LayerError::entry(name, "setting permissions", e))?;
        }
        if meta.mtime_needs_fix {
            let t = system_time(meta.mtime);
            let times = FileTimes::new().set_modified(t).set_accessed(t);
            let res = match &file {
                Some(f) => f.set_times(times),
                None => File::open(dst).and_then(|f| f.set_times(times)),
            };
            res.map_err(|e| LayerError::entry(name, "setting mtime", e))?;
        }
        Ok(())
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        dst: &Path,
        existing: Option<&fs::Metadata>,
        name: &Path,
    ) -> Result<(), LayerError> {
        let Some(link) = entry.link_name_bytes() else {
            return Err(LayerError::invalid(name, "hard link without a target"));
        };
        let tcomps = clean(&link);
        let link_display = String::from_utf8_lossy(&link).into_owned();
        let Some((tlast, tparent)) = tcomps.split_last() else {
            return Err(LayerError::invalid(
                name,
                format!("hard link to the layer root (`{link_display}`)"),
            ));
        };
        let tparent = self
            .resolve(tparent)
            .map_err(|e| LayerError::entry(name, "resolving the hard link target", e))?;
        let tpath = tparent.join(tlast);
        let tmd = match fs::symlink_metadata(&tpath) {
            Ok(md) => md,
            Err(_) => {
                return Err(LayerError::invalid(
                    name,
                    format!("hard link target `{link_display}` does not exist in the target"),
                ));
            }
        };
        if tmd.is_dir() {
            return Err(LayerError::invalid(
                name,
                format!("hard link target `{link_display}` is a directory"),
            ));
        }
        if tpath == dst {
            return Ok(());
        }
        if let Some(md) = existing {
            self.remove(dst, md, name)?;
        }
        fs::hard_link(&tpath, dst).map_err(|e| LayerError::entry(name, "creating hard link", e))?;
        Ok(())
    }

    /// Fifos and devices. Returns false when a device was skipped.
    fn special<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        et: tar::EntryType,
        dst: &Path,
        name: &Path,
        meta: &Meta,
    ) -> Result<bool, LayerError> {
        let h = entry.header();
        let mut cmd = Command::new("mknod");
        cmd.arg("-m").arg("600").arg("--").arg(dst);
        let is_fifo = et == tar::EntryType::Fifo;
        if is_fifo {
            cmd.arg("p");
        } else {
            let major = h.device_major().ok().flatten().unwrap_or(0);
            let minor = h.device_minor().ok().flatten().unwrap_or(0);
            cmd.arg(if et == tar::EntryType::Char { "c" } else { "b" })
                .arg(major.to_string())
                .arg(minor.to_string());
        }
        let out = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| LayerError::entry(name, "running mknod", e))?;
        if !out.status.success() {
            let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
            if is_fifo {
                return Err(LayerError::invalid(name, format!("mknod failed: {msg}")));
            }
            let _ = msg; // reported by count and names: ApplyReport::skipped_devices_warning
            let rel = join_rel(&clean(name.as_os_str().as_bytes()));
            self.skipped_devices
                .push(PathBuf::from(OsString::from_vec(rel)));
            return Ok(false);
        }
        let t = system_time(meta.mtime);
        if is_fifo {
            // Opening a fifo read-write does not block on Linux.
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(dst)
                .and_then(|f| f.set_times(FileTimes::new().set_modified(t).set_accessed(t)))
                .map_err(|e| LayerError::entry(name, "setting mtime", e))?;
        } else {
            let ok = Command::new("touch")
                .arg("-h")
                .arg("-d")
                .arg(format!("@{}", meta.mtime))
                .arg("--")
                .arg(dst)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                self.warnings
                    .push(format!("{}: device mtime not set", name.display()));
            }
        }
        let md = fs::symlink_metadata(dst).ok();
        self.chown(dst, name, meta, md.as_ref(), false)?;
        fs::set_permissions(dst, fs::Permissions::from_mode(meta.mode))
            .map_err(|e| LayerError::entry(name, "setting permissions", e))?;
        Ok(true)
    }

    fn whiteout(
        &mut self,
        name: &Path,
        parent_comps: &[OsString],
        last: &[u8],
        hidden: &[u8],
    ) -> Result<(), LayerError> {
        if let WhiteoutMode::Overlay { xattr_prefix } = self.whiteouts {
            return self.overlay_whiteout(name, parent_comps, last, hidden, xattr_prefix);
        }
        // Through a lower layer's symlink nothing is deleted: the whiteout's directory replaces
        // it, as in the overlay mount.
        let Some(parent) = self.layer_parent(parent_comps, name, false)? else {
            return Ok(());
        };
        if last == OPAQUE_WHITEOUT.as_bytes() {
            return self.opaque(&parent, name);
        }
        if hidden.is_empty()
            || hidden == b"."
            || hidden == b".."
            || hidden.starts_with(WHITEOUT_PREFIX.as_bytes())
        {
            // `.wh..wh.*` other than the opaque marker is aufs metadata; the rest is nonsense.
            self.warnings
                .push(format!("{}: whiteout ignored", name.display()));
            return Ok(());
        }
        let victim = parent.join(OsStr::from_bytes(hidden));
        if self.written.contains(&victim) {
            // A whiteout hides lower layers only, never an entry of its own layer.
            return Ok(());
        }
        if let Ok(md) = fs::symlink_metadata(&victim) {
            self.remove(&victim, &md, name)?;
        }
        Ok(())
    }

    /// A whiteout in [`WhiteoutMode::Overlay`]: what it hides is deleted (when the target has
    /// it), then a character device 0:0 or the opaque attribute marks it for overlayfs.
    fn overlay_whiteout(
        &mut self,
        name: &Path,
        parent_comps: &[OsString],
        last: &[u8],
        hidden: &[u8],
        prefix: overlay::OverlayXattrPrefix,
    ) -> Result<(), LayerError> {
        let is_opaque = last == OPAQUE_WHITEOUT.as_bytes();
        if !is_opaque
            && (hidden.is_empty()
                || hidden == b"."
                || hidden == b".."
                || hidden.starts_with(WHITEOUT_PREFIX.as_bytes()))
        {
            self.warnings
                .push(format!("{}: whiteout ignored", name.display()));
            return Ok(());
        }
        let parent = self
            .resolve(parent_comps)
            .map_err(|e| LayerError::entry(name, "resolving the whiteout's directory", e))?;
        match fs::symlink_metadata(&parent) {
            Ok(md) if md.is_dir() => {}
            Ok(_) => {
                // Under a non-directory: there is nothing to hide, as in `Delete` mode.
                self.warnings.push(format!(
                    "{}: whiteout under a non-directory ignored",
                    name.display()
                ));
                return Ok(());
            }
            Err(_) => {
                self.parent(parent_comps, name)?;
                self.parent_cache = None;
            }
        }
        if is_opaque {
            self.opaque(&parent, name)?;
            return overlay::set_opaque(&parent, prefix).map_err(|e| {
                LayerError::entry(
                    name,
                    if prefix == overlay::OverlayXattrPrefix::Trusted {
                        "setting trusted.overlay.opaque (needs real root)"
                    } else {
                        "setting user.overlay.opaque"
                    },
                    e,
                )
            });
        }
        let victim = parent.join(OsStr::from_bytes(hidden));
        if self.written.contains(&victim) {
            // A whiteout hides lower layers only, never an entry of its own layer; but a
            // directory of this layer must then hide the lower one's contents.
            return match fs::symlink_metadata(&victim) {
                Ok(md) if md.is_dir() => overlay::set_opaque(&victim, prefix)
                    .map_err(|e| LayerError::entry(name, "marking the directory opaque", e)),
                _ => Ok(()),
            };
        }
        if let Ok(md) = fs::symlink_metadata(&victim) {
            self.remove(&victim, &md, name)?;
        }
        overlay::make_whiteout(&victim).map_err(|e| {
            LayerError::entry(
                name,
                "creating the overlay whiteout (character device 0:0; needs root or a user namespace)",
                e,
            )
        })?;
        self.mark_written(victim);
        Ok(())
    }

    /// Removes everything under `dir` that this layer did not write.
    fn opaque(&mut self, dir: &Path, name: &Path) -> Result<(), LayerError> {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let rd = fs::read_dir(&d)
                .map_err(|e| LayerError::entry(name, "reading the opaque directory", e))?;
            for de in rd {
                let de =
                    de.map_err(|e| LayerError::entry(name, "reading the opaque directory", e))?;
                let cpath = de.path();
                let md = fs::symlink_metadata(&cpath)
                    .map_err(|e| LayerError::entry(name, "reading the opaque directory", e))?;
                let ours = self.written.contains(&cpath);
                if (ours || self.ancestors.contains(&cpath)) && md.is_dir() {
                    stack.push(cpath);
                } else if !ours {
                    self.remove(&cpath, &md, name)?;
                }
            }
        }
        Ok(())
    }

    /// Sets the recorded directories' mtimes and modes.
    fn finish_dirs(&mut self) {
        let dirs = std::mem::take(&mut self.dirs);
        for (path, d) in dirs.iter().rev() {
            match fs::symlink_metadata(path) {
                Ok(md) if md.is_dir() => {}
                _ => continue,
            }
            let t = system_time(d.mtime);
            if let Err(e) = File::open(path)
                .and_then(|f| f.set_times(FileTimes::new().set_modified(t).set_accessed(t)))
            {
                self.warnings.push(format!(
                    "{}: directory mtime not set: {e}",
                    d.layer_path.display()
                ));
            }
            let mode = if self.removable {
                d.mode | 0o700
            } else {
                d.mode
            };
            if let Err(e) = fs::set_permissions(path, fs::Permissions::from_mode(mode)) {
                self.warnings.push(format!(
                    "{}: directory mode not set: {e}",
                    d.layer_path.display()
                ));
            }
        }
    }
}

/// Resolves `path` inside `root` as if `root` were `/` (a chroot): the path is cleaned lexically
/// (`..` stops at the root, a leading `/` is dropped), then walked one component at a time with
/// `lstat`; a symlink met on the way is read and its target resolved the same way, inside `root`
/// (an absolute target starts again at `root`, `..` stops there). Components that do not exist
/// are taken literally. With `follow_final` false a symlink in the last position is not
/// followed (like `lstat`), otherwise it is (like `stat`).
///
/// The result is `root` joined with the resolved components: it is under `root`, and no existing
/// component of it below `root` is a symlink (the last one may be when `follow_final` is false).
/// Fails after 255 symlinks (a loop). `root` is used as given: pass a canonical path when the
/// result is compared with other canonical paths.
pub fn resolve_in_root(root: &Path, path: &Path, follow_final: bool) -> io::Result<PathBuf> {
    let comps = clean(path.as_os_str().as_bytes());
    resolve_components(root, &comps, follow_final)
}

fn resolve_components(root: &Path, comps: &[OsString], follow_final: bool) -> io::Result<PathBuf> {
    let probe = &mut |p: &Path| -> io::Result<Probe> {
        let md = match fs::symlink_metadata(p) {
            Ok(md) => md,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::NotADirectory =>
            {
                return Ok(Probe::Absent);
            }
            Err(e) => return Err(e),
        };
        Ok(if md.is_dir() {
            Probe::Dir
        } else if md.file_type().is_symlink() {
            Probe::Symlink(fs::read_link(p)?)
        } else {
            Probe::Other
        })
    };
    resolve_with(root, comps, follow_final, false, probe).map_err(|e| match e {
        ResolveError::Probe(e) => e,
        ResolveError::SymlinkLoop(_) => io::Error::other("too many levels of symbolic links"),
        // Not `strict`: a non-directory in the middle is taken as missing.
        ResolveError::NotADirectory(p) => io::Error::new(
            io::ErrorKind::NotADirectory,
            format!("{}: not a directory", p.display()),
        ),
    })
}

/// What one path is, seen with `lstat` (by [`resolve_with`]'s probe).
pub(crate) enum Probe {
    Dir,
    /// A symlink, with its target.
    Symlink(PathBuf),
    Other,
    Absent,
}

/// Why [`resolve_with`] failed.
pub(crate) enum ResolveError<E> {
    /// The probe failed.
    Probe(E),
    /// A non-directory in the middle of the path (only when `strict`).
    NotADirectory(PathBuf),
    /// More than 255 symlinks were followed (a loop); the path is the last one met.
    SymlinkLoop(PathBuf),
}

/// Resolves `comps` below `base` (a path already resolved) as if `base` were `/` (a chroot),
/// asking `probe` what each path met on the way is: a symlink's target is resolved the same way
/// (an absolute target starts again at `base`, `..` stops there). Missing components are taken
/// literally. With `follow_final` false a symlink in the last position is not followed. A
/// non-directory in the middle is an error when `strict`, else treated as missing.
pub(crate) fn resolve_with<E>(
    base: &Path,
    comps: &[OsString],
    follow_final: bool,
    strict: bool,
    probe: &mut dyn FnMut(&Path) -> Result<Probe, E>,
) -> Result<PathBuf, ResolveError<E>> {
    let mut cur = base.to_path_buf();
    let mut depth = 0usize;
    let mut pending: VecDeque<OsString> = comps.iter().cloned().collect();
    let mut links = 0u32;
    while let Some(c) = pending.pop_front() {
        match c.as_bytes() {
            b"" | b"." => continue,
            b".." => {
                if depth > 0 {
                    cur.pop();
                    depth -= 1;
                }
                continue;
            }
            _ => {}
        }
        let is_final = pending.is_empty();
        cur.push(&c);
        match probe(&cur).map_err(ResolveError::Probe)? {
            Probe::Dir | Probe::Absent => depth += 1,
            Probe::Other => {
                if !is_final && strict {
                    return Err(ResolveError::NotADirectory(cur));
                }
                depth += 1;
            }
            Probe::Symlink(target) => {
                if is_final && !follow_final {
                    depth += 1;
                    continue;
                }
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(ResolveError::SymlinkLoop(cur));
                }
                cur.pop();
                let t = target.as_os_str().as_bytes();
                if t.starts_with(b"/") {
                    cur = base.to_path_buf();
                    depth = 0;
                }
                for part in t.split(|&b| b == b'/').rev() {
                    pending.push_front(OsString::from_vec(part.to_vec()));
                }
            }
        }
    }
    Ok(cur)
}

fn bad_pax(name: &Path, key: &str) -> LayerError {
    LayerError::invalid(name, format!("invalid PAX `{key}` record"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_like_docker() {
        let s = |v: Vec<OsString>| String::from_utf8(join_rel(&v)).unwrap();
        assert_eq!(s(clean(b"../../etc/x")), "etc/x");
        assert_eq!(s(clean(b"/abs/./y//z/")), "abs/y/z");
        assert_eq!(s(clean(b"a/b/../../../c")), "c");
        assert_eq!(s(clean(b"./")), "");
    }

    #[test]
    fn resolve_stays_inside() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        std::os::unix::fs::symlink("/", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("up")).unwrap();
        std::os::unix::fs::symlink("loop2", root.join("loop1")).unwrap();
        std::os::unix::fs::symlink("loop1", root.join("loop2")).unwrap();
        fs::create_dir(root.join("d")).unwrap();
        std::os::unix::fs::symlink("../d/../up/etc", root.join("d/rel")).unwrap();
        let ap = Applier::new(root.clone(), Ownership::Ignore, false, WhiteoutMode::Delete);
        let r = |p: &str| ap.resolve(&clean(p.as_bytes()));
        assert_eq!(r("abs/etc").unwrap(), root.join("etc"));
        assert_eq!(r("up/x").unwrap(), root.join("x"));
        assert_eq!(r("d/rel/passwd").unwrap(), root.join("etc/passwd"));
        assert_eq!(r("missing/a").unwrap(), root.join("missing/a"));
        assert!(r("loop1/x").is_err());
    }

    #[test]
    fn resolve_in_root_final_component() {
        let t = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(t.path()).unwrap();
        fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink("/real", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../real/f", root.join("real/up")).unwrap();
        let r = |p: &str, follow| resolve_in_root(&root, Path::new(p), follow).unwrap();
        assert_eq!(r("/abs", true), root.join("real"));
        assert_eq!(r("/abs", false), root.join("abs"));
        assert_eq!(r("abs/up", false), root.join("real/up"));
        assert_eq!(r("abs/up", true), root.join("real/f"));
        assert_eq!(r("../../abs/x/..", true), root.join("real"));
        assert_eq!(r("/", true), root);
    }
}
