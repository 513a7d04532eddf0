//! Content digests of selected paths of a build context — what a COPY/ADD or
//! `RUN --mount=type=bind` step key needs from the context — and the metadata index that lets a
//! warm run `lstat` files instead of reading them.
//!
//! - The context is seen through its [`ContextFilter`] exactly as the COPY engine sees it (the
//!   filtered walk): an excluded path does not exist, and changes to it change no digest.
//! - Each entry (file, directory, symlink, other) is digested from its type, permission bits
//!   (`st_mode & 07777`), uid/gid (or the caller's `--chown` override), size (files),
//!   symlink target, `security.capability` and `user.*` extended attributes, and content
//!   sha256. Never mtime or atime, never the entry's own name.
//! - A directory's roll-up covers its whole filtered subtree: its own entry digest, then each
//!   kept child's name and digest (roll-up for directories), children sorted byte-wise by name.
//!   A selection's digest covers each selected root's path, type and digest, in the caller's
//!   order.
//! - [`SelectionDigest::files`] lists every entry with its own digest, so two runs can be
//!   compared by path ([`diff_files`]) and a miss can name the files that changed.
//!
//! [`ContextDigester::with_index`] keeps, per context directory, the `lstat` data seen when
//! each entry was hashed (see [`super::digest_index`]): an entry whose stat data is unchanged
//! and not "racy" is not read again; misses are hashed in parallel (rayon). Directory roll-ups
//! are kept too, valid while the directory and everything under it is unchanged and the filter
//! and owner override are the same.
//!
//! Not wired into builds yet: the builder will call this for COPY/ADD and bind-mount keys.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

pub use super::digest_index::IndexState;
use super::digest_index::{Index, IndexEntry, Rollup, StatKey};
use super::walk::{ContextError, ContextFilter, EntryKind, WalkEntry};

/// A sha256 digest, shown as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// One entry of a selection and its own digest (not a roll-up: a directory's entry digest
/// covers only its own metadata, so a change is attributed to the file that changed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigest {
    /// Relative to the context root, `/`-separated, bytes as on disk.
    pub path: PathBuf,
    pub kind: EntryKind,
    pub digest: Digest,
    /// Permission bits (`st_mode & 0o7777`), for naming a mode change.
    pub mode: u32,
}

/// A selected root and the digest of everything kept under it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootDigest {
    /// Cleaned, relative to the context root (`""` for the root itself).
    pub path: PathBuf,
    pub kind: EntryKind,
    /// The roll-up for a directory, the entry digest otherwise.
    pub digest: Digest,
}

/// Work done for one digest; `bytes_hashed` is 0 on a warm run over an unchanged tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DigestStats {
    /// Entries digested (every selected root and everything kept under them).
    pub entries: u64,
    /// Entries whose stat data matched the index (not read).
    pub index_hits: u64,
    /// Entries the index had with unchanged stat data but that were hashed again because of
    /// the racy rule.
    pub racy: u64,
    /// Regular files whose content was read.
    pub files_hashed: u64,
    /// Bytes of file content read and hashed.
    pub bytes_hashed: u64,
    /// Directory roll-ups taken from the index instead of being computed.
    pub rollups_reused: u64,
}

/// The digest of a selection of context paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectionDigest {
    pub digest: Digest,
    pub roots: Vec<RootDigest>,
    /// Every entry, roots first in selection order, each followed by its subtree in walk order
    /// (a path under two selected roots is listed under each).
    pub files: Vec<FileDigest>,
    pub stats: DigestStats,
}

/// What differs between two [`SelectionDigest::files`] lists, each list sorted byte-wise.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FileChanges {
    pub changed: Vec<PathBuf>,
    pub added: Vec<PathBuf>,
    pub removed: Vec<PathBuf>,
}

impl FileChanges {
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.added.is_empty() && self.removed.is_empty()
    }

    /// Changed, added and removed paths together, in that order.
    pub fn all(&self) -> impl Iterator<Item = &PathBuf> {
        self.changed.iter().chain(&self.added).chain(&self.removed)
    }

    /// `3 files changed (src/main.rs, src/lib.rs, +1)`: the count of all changed, added and
    /// removed paths, the first `show` of them by name.
    pub fn summary(&self, show: usize) -> String {
        let n = self.all().count();
        let names: Vec<String> = self
            .all()
            .take(show)
            .map(|p| p.display().to_string())
            .collect();
        let more = if n > show {
            format!(", +{}", n - show)
        } else {
            String::new()
        };
        let noun = if n == 1 { "file" } else { "files" };
        format!("{n} {noun} changed ({}{more})", names.join(", "))
    }
}

/// Compares two per-file lists by path: a path in both with different digests is changed
/// (a different type counts as changed), one only in `new` added, one only in `old` removed.
/// A rename is a removal and an addition.
pub fn diff_files(old: &[FileDigest], new: &[FileDigest]) -> FileChanges {
    diff_by_path(
        old.iter().map(|f| (f.path.as_path(), &f.digest)),
        new.iter().map(|f| (f.path.as_path(), &f.digest)),
    )
}

/// [`diff_files`] over any (path, digest) pairs (e.g. lists read back from a store).
pub fn diff_by_path<'a, D: Eq + 'a>(
    old: impl IntoIterator<Item = (&'a Path, D)>,
    new: impl IntoIterator<Item = (&'a Path, D)>,
) -> FileChanges {
    let old_map: HashMap<&Path, D> = old.into_iter().collect();
    let new_map: HashMap<&Path, D> = new.into_iter().collect();
    let mut out = FileChanges::default();
    for (path, d) in &new_map {
        match old_map.get(path) {
            Some(o) if o == d => {}
            Some(_) => out.changed.push(path.to_path_buf()),
            None => out.added.push(path.to_path_buf()),
        }
    }
    for path in old_map.keys() {
        if !new_map.contains_key(path) {
            out.removed.push(path.to_path_buf());
        }
    }
    for v in [&mut out.changed, &mut out.added, &mut out.removed] {
        v.sort_unstable_by(|a, b| a.as_os_str().as_bytes().cmp(b.as_os_str().as_bytes()));
    }
    out
}

/// Errors from digesting context paths.
#[derive(Debug, thiserror::Error)]
pub enum DigestError {
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A selected path is missing or excluded by `.dockerignore` (which is the same thing).
    #[error("{}: not found in the build context", path.display())]
    NotFound { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The index could not be written (reading problems only make it ignored).
    #[error("writing the context index in {}: {source}", dir.display())]
    SaveIndex {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Digests selections of one context directory; with an index, remembers what it hashed.
///
/// One digester serves a whole build: the filtered walk is done once per filter, and the
/// index is read once and written by [`save`](Self::save).
#[derive(Debug)]
pub struct ContextDigester {
    root: PathBuf,
    index_dir: Option<PathBuf>,
    index: Index,
    walks: HashMap<Vec<u8>, Walked>,
    /// Paths under a digested root: the only ones whose absence from `seen` means "gone".
    visited_roots: Vec<Vec<u8>>,
    seen: HashSet<Vec<u8>>,
    /// The index has entries its file does not.
    dirty: bool,
    /// [`kept`](Self::kept) sets, by filter fingerprint.
    kept: HashMap<Vec<u8>, std::sync::Arc<HashSet<PathBuf>>>,
}

#[derive(Debug)]
struct Walked {
    entries: Vec<WalkEntry>,
    position: HashMap<Vec<u8>, usize>,
}

/// The result of looking at one entry.
struct Probe {
    kind: EntryKind,
    key: StatKey,
    extra: [u8; 32],
    xattrs: [u8; 32],
    /// From the index, not read.
    hit: bool,
    racy: bool,
    /// Stat data stayed the same across the read: safe to remember.
    cacheable: bool,
    bytes: u64,
    rollup: Option<Rollup>,
}

impl ContextDigester {
    /// A digester without an index: every run reads every file.
    pub fn new(context_root: &Path) -> Result<Self, DigestError> {
        let root = canonical(context_root)?;
        Ok(ContextDigester {
            root,
            index_dir: None,
            index: Index::empty(IndexState::Disabled),
            walks: HashMap::new(),
            visited_roots: Vec::new(),
            seen: HashSet::new(),
            dirty: false,
            kept: HashMap::new(),
        })
    }

    /// A digester that reads (now) and writes ([`save`](Self::save)) the index of this context
    /// in `index_dir`, e.g. `<store>/kiln/context-index`. A missing, unreadable or corrupt
    /// index counts as empty.
    pub fn with_index(context_root: &Path, index_dir: &Path) -> Result<Self, DigestError> {
        let mut d = Self::new(context_root)?;
        d.index = Index::load(index_dir, &d.root);
        d.index_dir = Some(index_dir.to_path_buf());
        Ok(d)
    }

    /// The canonical context directory (the index's key).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What happened to the index file when it was opened.
    pub fn index_state(&self) -> IndexState {
        self.index.state
    }

    /// The paths `filter` keeps in the context (its walk, done once per filter and shared
    /// with [`digest`](Self::digest)).
    pub fn kept(
        &mut self,
        filter: &ContextFilter,
    ) -> Result<std::sync::Arc<HashSet<PathBuf>>, DigestError> {
        let fingerprint = filter.fingerprint();
        if let Some(k) = self.kept.get(&fingerprint) {
            return Ok(k.clone());
        }
        let walked = self.walked(filter)?;
        let set: HashSet<PathBuf> = walked.entries.iter().map(|e| e.path.clone()).collect();
        let set = std::sync::Arc::new(set);
        self.kept.insert(fingerprint, set.clone());
        Ok(set)
    }

    fn walked(&mut self, filter: &ContextFilter) -> Result<&Walked, DigestError> {
        let fingerprint = filter.fingerprint();
        if !self.walks.contains_key(&fingerprint) {
            let entries = filter.walk(&self.root)?;
            let position = entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.path.as_os_str().as_bytes().to_vec(), i))
                .collect();
            self.walks
                .insert(fingerprint.clone(), Walked { entries, position });
        }
        Ok(&self.walks[&fingerprint])
    }

    /// Digests `roots` (relative to the context; cleaned as `path.Clean("/" + p)`, so `.` and
    /// `/` are the context itself) as the filter keeps them. The roots are taken as they are:
    /// the caller has expanded wildcards and followed symlinks the way its selector says; a
    /// root that is a symlink is digested as a symlink. `owner` is a `--chown` override for
    /// every entry's uid/gid.
    pub fn digest(
        &mut self,
        filter: &ContextFilter,
        roots: &[impl AsRef<Path>],
        owner: Option<(u32, u32)>,
    ) -> Result<SelectionDigest, DigestError> {
        let fingerprint = filter.fingerprint();
        let filter_id: [u8; 32] = Sha256::digest(&fingerprint).into();
        self.walked(filter)?;
        let mut stats = DigestStats::default();
        let mut sel = Sha256::new();
        sel.update(b"kiln.ctx.selection.v1\0");
        let mut out_roots = Vec::new();
        let mut files = Vec::new();
        for r in roots {
            let rel = clean_root(r.as_ref());
            let walked = &self.walks[&fingerprint];
            // The root and the slice of the walk under it.
            let under: &[WalkEntry] = if rel.is_empty() {
                &walked.entries
            } else {
                let Some(&i) = walked.position.get(&rel) else {
                    return Err(DigestError::NotFound {
                        path: PathBuf::from(OsStr::from_bytes(&rel)),
                    });
                };
                let rest = &walked.entries[i + 1..];
                let n = rest
                    .iter()
                    .take_while(|e| is_under(e.path.as_os_str().as_bytes(), &rel))
                    .count();
                &rest[..n]
            };
            let mut paths: Vec<&[u8]> = Vec::with_capacity(under.len() + 1);
            paths.push(&rel);
            paths.extend(under.iter().map(|e| e.path.as_os_str().as_bytes()));

            let index = &self.index;
            let root = &self.root;
            let probes: Vec<Option<Probe>> = paths
                .par_iter()
                .map(|p| probe(root, p, index))
                .collect::<Result<_, _>>()?;
            let Some(root_probe) = &probes[0] else {
                return Err(DigestError::NotFound {
                    path: PathBuf::from(OsStr::from_bytes(&rel)),
                });
            };
            let root_kind = root_probe.kind;

            let mut probes = probes;
            let root_digest = roll_up(
                &paths,
                &mut probes,
                &filter_id,
                owner,
                &mut files,
                &mut stats,
            );
            sel.update((rel.len() as u32).to_be_bytes());
            sel.update(&rel);
            sel.update([kind_byte(root_kind)]);
            sel.update(root_digest);
            out_roots.push(RootDigest {
                path: PathBuf::from(OsStr::from_bytes(&rel)),
                kind: root_kind,
                digest: Digest(root_digest),
            });

            // Remember what was learnt.
            for (p, probe) in paths.iter().zip(probes) {
                let Some(probe) = probe else { continue };
                self.seen.insert(p.to_vec());
                if probe.cacheable {
                    let entry = IndexEntry {
                        key: probe.key,
                        extra: probe.extra,
                        xattrs: probe.xattrs,
                        rollup: probe.rollup,
                    };
                    if self.index.entries.get(*p) != Some(&entry) {
                        self.index.entries.insert(p.to_vec(), entry);
                        self.dirty = true;
                    }
                } else if self.index.entries.remove(*p).is_some() {
                    self.dirty = true;
                }
            }
            self.visited_roots.push(rel);
        }
        Ok(SelectionDigest {
            digest: Digest(sel.finalize().into()),
            roots: out_roots,
            files,
            stats,
        })
    }

    /// Writes the index (when there is one): what this digester learnt, plus the entries of
    /// the old index outside the roots it digested. Entries under those roots that were not
    /// seen (deleted, now excluded) are dropped.
    pub fn save(&mut self) -> Result<(), DigestError> {
        let Some(dir) = &self.index_dir else {
            return Ok(());
        };
        let visited = &self.visited_roots;
        let seen = &self.seen;
        let before = self.index.entries.len();
        self.index
            .entries
            .retain(|p, _| seen.contains(p) || !visited.iter().any(|r| p == r || is_under(p, r)));
        // Nothing learnt and nothing gone: the file on disk already says all of it (and
        // keeping its older time keeps its entries out of the racy window).
        if !self.dirty
            && self.index.entries.len() == before
            && self.index.state == IndexState::Loaded
        {
            return Ok(());
        }
        self.dirty = false;
        self.index
            .save(dir, &self.root)
            .map_err(|source| DigestError::SaveIndex {
                dir: dir.clone(),
                source,
            })
    }
}

/// Digests `roots` of the context at `context_root` without an index.
pub fn digest_paths(
    context_root: &Path,
    filter: &ContextFilter,
    roots: &[impl AsRef<Path>],
    owner: Option<(u32, u32)>,
) -> Result<SelectionDigest, DigestError> {
    ContextDigester::new(context_root)?.digest(filter, roots, owner)
}

fn canonical(p: &Path) -> Result<PathBuf, DigestError> {
    let root = fs::canonicalize(p).map_err(|source| DigestError::Io {
        path: p.to_path_buf(),
        source,
    })?;
    if !root.is_dir() {
        return Err(ContextError::NotADirectory { path: root }.into());
    }
    Ok(root)
}

fn clean_root(p: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for c in crate::pathclean::clean_components(p.as_os_str().as_bytes()) {
        if !out.is_empty() {
            out.push(b'/');
        }
        out.extend_from_slice(c.as_bytes());
    }
    out
}

/// Whether `path` lies strictly under `dir` (`""` is the context root).
fn is_under(path: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() && !path.is_empty()
        || path.len() > dir.len() && path.starts_with(dir) && path[dir.len()] == b'/'
}

fn kind_byte(kind: EntryKind) -> u8 {
    match kind {
        EntryKind::Dir => b'd',
        EntryKind::File => b'f',
        EntryKind::Symlink => b'l',
        EntryKind::Other => b'o',
    }
}

fn kind_of(ft: fs::FileType) -> EntryKind {
    if ft.is_dir() {
        EntryKind::Dir
    } else if ft.is_file() {
        EntryKind::File
    } else if ft.is_symlink() {
        EntryKind::Symlink
    } else {
        EntryKind::Other
    }
}

/// Vanished since the walk listed it: not part of the selection (as the walk itself does).
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// `lstat` one entry; take it from the index when its stat data is unchanged and not racy,
/// read it otherwise. `None` when it has gone.
fn probe(root: &Path, rel: &[u8], index: &Index) -> Result<Option<Probe>, DigestError> {
    let abs = if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(rel))
    };
    let io_err = |source| DigestError::Io {
        path: PathBuf::from(OsStr::from_bytes(rel)),
        source,
    };
    let md = match fs::symlink_metadata(&abs) {
        Ok(md) => md,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let key = StatKey::of(&md);
    let kind = kind_of(md.file_type());
    let known = index.entries.get(rel).filter(|e| e.key == key);
    if let Some(e) = known.filter(|_| !index.is_racy(&key)) {
        return Ok(Some(Probe {
            kind,
            key,
            extra: e.extra,
            xattrs: e.xattrs,
            hit: true,
            racy: false,
            cacheable: true,
            bytes: 0,
            rollup: e.rollup.clone(),
        }));
    }
    let xattrs = match xattr_digest(&abs) {
        Ok(x) => x,
        Err(e) if is_gone(&e) => return Ok(None),
        Err(e) => return Err(io_err(e)),
    };
    let mut cacheable = true;
    let mut bytes = 0;
    let extra: [u8; 32] = match kind {
        EntryKind::File => match hash_file(&abs, &key) {
            Ok((sum, n, same)) => {
                bytes = n;
                cacheable = same;
                sum
            }
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(io_err(e)),
        },
        EntryKind::Symlink => match fs::read_link(&abs) {
            Ok(t) => Sha256::digest(t.as_os_str().as_bytes()).into(),
            Err(e) if is_gone(&e) => return Ok(None),
            Err(e) => return Err(io_err(e)),
        },
        EntryKind::Dir => [0; 32],
        EntryKind::Other => {
            let ft = md.file_type();
            let dev = if ft.is_block_device() || ft.is_char_device() {
                md.rdev()
            } else {
                0
            };
            Sha256::digest(dev.to_be_bytes()).into()
        }
    };
    Ok(Some(Probe {
        kind,
        key,
        extra,
        xattrs,
        hit: false,
        racy: known.is_some(),
        cacheable,
        bytes,
        rollup: None,
    }))
}

/// The content's sha256, the bytes read, and whether the file's stat data is the same after
/// the read as before it (if not, the result is not remembered).
fn hash_file(abs: &Path, before: &StatKey) -> io::Result<([u8; 32], u64, bool)> {
    use std::os::unix::fs::OpenOptionsExt;
    // O_NOFOLLOW: the walk saw a file; a symlink swapped in since is not followed.
    let mut f = fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
        .open(abs)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 128 * 1024];
    let mut n = 0u64;
    loop {
        let k = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        h.update(&buf[..k]);
        n += k as u64;
    }
    let after = StatKey::of(&f.metadata()?);
    Ok((h.finalize().into(), n, after == *before))
}

/// Whether an extended attribute is part of the digest: the ones a layer carries and that
/// change behaviour (file capabilities) or are the user's own.
fn digested_xattr(name: &[u8]) -> bool {
    name == b"security.capability" || name.starts_with(b"user.")
}

/// sha256 over the digested extended attributes, sorted by name (not following a symlink).
fn xattr_digest(path: &Path) -> io::Result<[u8; 32]> {
    let mut names = crate::layer::list_xattrs(path)?;
    names.retain(|n| digested_xattr(n));
    names.sort_unstable();
    let mut h = Sha256::new();
    for name in names {
        let Some(value) = crate::layer::get_xattr(path, OsStr::from_bytes(&name))? else {
            continue;
        };
        h.update((name.len() as u32).to_be_bytes());
        h.update(&name);
        h.update((value.len() as u32).to_be_bytes());
        h.update(&value);
    }
    Ok(h.finalize().into())
}

/// An entry's own digest: everything but its name and times.
fn entry_digest(p: &Probe, owner: Option<(u32, u32)>) -> [u8; 32] {
    let (uid, gid) = owner.unwrap_or((p.key.uid, p.key.gid));
    let mut h = Sha256::new();
    h.update(b"kiln.ctx.entry.v1\0");
    h.update([kind_byte(p.kind)]);
    h.update((p.key.mode & 0o7777).to_be_bytes());
    h.update(uid.to_be_bytes());
    h.update(gid.to_be_bytes());
    let size = if p.kind == EntryKind::File {
        p.key.size
    } else {
        0
    };
    h.update(size.to_be_bytes());
    h.update(p.extra);
    h.update(p.xattrs);
    h.finalize().into()
}

/// A directory being rolled up.
struct Open {
    /// Index into `paths`/`probes`.
    at: usize,
    own: [u8; 32],
    children: Vec<(Vec<u8>, [u8; 32])>,
    /// Its own entry and everything under it came from the index.
    clean: bool,
}

/// Computes entry digests (appending them to `files`) and the roll-ups bottom-up, in one pass
/// over the walk order (each directory before its contents, children sorted by name). Returns
/// the root's digest; the probes of directories get their roll-up to remember.
fn roll_up(
    paths: &[&[u8]],
    probes: &mut [Option<Probe>],
    filter_id: &[u8; 32],
    owner: Option<(u32, u32)>,
    files: &mut Vec<FileDigest>,
    stats: &mut DigestStats,
) -> [u8; 32] {
    let mut stack: Vec<Open> = Vec::new();
    let mut root_digest = [0u8; 32];

    // Closes the top directory and hands its digest to its parent (or the root).
    let close = |stack: &mut Vec<Open>,
                 probes: &mut [Option<Probe>],
                 stats: &mut DigestStats,
                 root_digest: &mut [u8; 32]| {
        let Some(dir) = stack.pop() else { return };
        let probe = probes[dir.at]
            .as_mut()
            .expect("open directories have probes");
        let cached = probe
            .rollup
            .as_ref()
            .filter(|r| dir.clean && r.filter == *filter_id && r.owner == owner)
            .map(|r| r.digest);
        let digest = match cached {
            Some(d) => {
                stats.rollups_reused += 1;
                d
            }
            None => {
                let mut h = Sha256::new();
                h.update(b"kiln.ctx.dir.v1\0");
                h.update(dir.own);
                for (name, d) in &dir.children {
                    h.update((name.len() as u32).to_be_bytes());
                    h.update(name);
                    h.update(d);
                }
                h.finalize().into()
            }
        };
        probe.rollup = Some(Rollup {
            filter: *filter_id,
            owner,
            digest,
        });
        let path = paths[dir.at];
        match stack.last_mut() {
            Some(parent) => {
                parent.clean &= dir.clean && cached.is_some();
                parent.children.push((base_name(path).to_vec(), digest));
            }
            None => *root_digest = digest,
        }
    };

    for (i, path) in paths.iter().enumerate() {
        if probes[i].is_none() {
            continue; // gone since the walk
        }
        while let Some(top) = stack.last() {
            if is_under(path, paths[top.at]) {
                break;
            }
            close(&mut stack, probes, stats, &mut root_digest);
        }
        let p = probes[i].as_ref().expect("checked above");
        stats.entries += 1;
        if p.hit {
            stats.index_hits += 1;
        }
        if p.racy {
            stats.racy += 1;
        }
        if p.kind == EntryKind::File && !p.hit {
            stats.files_hashed += 1;
            stats.bytes_hashed += p.bytes;
        }
        let own = entry_digest(p, owner);
        files.push(FileDigest {
            path: PathBuf::from(OsStr::from_bytes(path)),
            kind: p.kind,
            digest: Digest(own),
            mode: p.key.mode & 0o7777,
        });
        if p.kind == EntryKind::Dir {
            stack.push(Open {
                at: i,
                own,
                children: Vec::new(),
                clean: p.hit,
            });
        } else {
            match stack.last_mut() {
                Some(parent) => {
                    parent.clean &= p.hit;
                    parent.children.push((base_name(path).to_vec(), own));
                }
                None => root_digest = own,
            }
        }
    }
    while !stack.is_empty() {
        close(&mut stack, probes, stats, &mut root_digest);
    }
    root_digest
}

fn base_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}
