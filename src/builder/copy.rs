//! COPY and ADD: the layer entries one instruction adds on top of a stage's filesystem.
//!
//! [`copy_entries`] reads the sources (the build context, or another stage's or image's root
//! filesystem for `COPY --from`) and the stage's current filesystem (`dest_root`, read only)
//! and returns the entries of the layer that BuildKit's file operation would produce. Nothing is
//! copied: regular files from disk become [`FileSource::Disk`] entries read when the layer is
//! written; heredocs, downloads and archive members are [`FileSource::Bytes`].
//!
//! # How paths are resolved
//!
//! Both sides are treated as chroots. A source path is cleaned (for the context, one that
//! climbs above the root is refused), then walked one component at a time; a symlink met on
//! the way, or named as the source, or matched by a wildcard, is followed *inside* the source
//! root (an absolute target starts again at the root, `..` stops there). Inside a copied
//! directory symlinks are copied as symlinks. The destination is resolved the same way inside
//! `dest_root`, against a view that also holds what this instruction has already added (so an
//! archive can create `var/run -> /run` and then put files through it). Every entry path in the
//! result is the *resolved* one: no existing component of it is a symlink, so applying the layer
//! never has to follow one.
//!
//! # BuildKit's rules followed here
//!
//! - A directory source copies its contents; a file source goes to `dest/<name>` when the
//!   destination ends in `/` (or is `.`, `..`, empty), is an existing directory, or when the
//!   instruction has several items (sources, wildcard matches, heredocs); otherwise the
//!   destination is the file. Several source *arguments* with a destination that is neither
//!   marked as a directory nor an existing one is an error.
//! - Directories a COPY creates on the way to its destination are 0755 (or the octal `--chmod`
//!   mode), owned by 0:0 (or the `--chown` owner), with mtime `now`. Existing directories keep
//!   their metadata and are emitted with it (as parents of what is added). Directories inside a
//!   copied tree take the source's metadata, also when they merge into existing ones (`cp -a`).
//! - Context files are owned by 0:0, files from a root filesystem keep their owners; `--chown`
//!   overrides both. Modes come from the source unless `--chmod`; mtimes from the source.
//! - Unix sockets become empty regular files; fifos and devices are copied as such; files with
//!   several links share a [`LayerEntry::link_key`] so they stay hard-linked.
//! - `.dockerignore` exclusions hide paths of the context everywhere (sources, symlink targets,
//!   directory contents); `--exclude` patterns apply inside each directory source, relative to it.
//! - `--parents` copies the source's path relative to the first `/./` (or the whole path), as an
//!   include pattern inside the pivot directory.
//! - ADD extracts local tar archives (plain, gzip, bzip2, xz, zstd, detected from the content)
//!   into the destination, as Docker's `Untar` does: names are cleaned so nothing lands outside
//!   the destination, paths inside the archive resolve with the destination as their root,
//!   owners come from the archive (or `--chown`), an existing non-directory (or a directory, for a
//!   non-directory entry) is replaced. ADD downloads `http(s)://` URLs (mode 0600, mtime from
//!   `Last-Modified`), extracting them only with `--unpack=true`.
//!
//! Known gaps: extended attributes of sources are not read (the standard library has no
//! `getxattr`); archive members' `SCHILY.xattr` records are kept. A name starting with `.wh.`
//! cannot be stored in an OCI layer (it would be read as a whiteout) and is an error. Git
//! sources for ADD are not supported.

#[path = "chmod.rs"]
pub mod chmod;
#[path = "users.rs"]
pub mod users;

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::context::ignore::go_text;
use crate::context::{ContextError, ContextFilter, IgnoreError, MatchInfo, PatternMatcher};
use crate::layer::{
    self, EntryKind, FileSource, LayerEntry, Probe, ResolveError, WHITEOUT_PREFIX,
    compare_layer_paths, resolve_with,
};
use crate::pathclean::clean_components as clean_comps;

pub use chmod::{Chmod, InvalidChmod};
pub use users::{ExecUser, UserError, resolve_chown, resolve_exec_user};

/// Where COPY/ADD sources are read from.
#[derive(Debug, Clone, Copy)]
pub enum CopySource<'a> {
    /// The build context: sources relative to `root`; paths the filter excludes
    /// (`.dockerignore`) do not exist.
    Context {
        root: &'a Path,
        filter: &'a ContextFilter,
    },
    /// A stage's or image's filesystem (`COPY --from`): sources resolve inside `root` as if
    /// chrooted.
    Rootfs { root: &'a Path },
}

/// One COPY or ADD instruction, with its values already expanded.
#[derive(Debug, Clone, Copy)]
pub struct CopyRequest<'a> {
    /// ADD semantics (local archives extracted, URLs downloaded).
    pub add: bool,
    pub source: CopySource<'a>,
    /// Source paths, variable-expanded, otherwise as written.
    pub sources: &'a [String],
    /// Heredoc sources: (name, data), already expanded and chomped.
    pub contents: &'a [(String, String)],
    /// Destination, expanded; relative to `workdir` when relative, empty means `workdir`.
    pub dest: &'a str,
    /// The stage's absolute working directory.
    pub workdir: &'a str,
    /// `--chown`: `user`, `user:group`, `uid:gid`; names from the destination's account files.
    pub chown: Option<&'a str>,
    /// `--chmod`: octal (at most 07777) or symbolic.
    pub chmod: Option<&'a str>,
    /// `--parents`.
    pub parents: bool,
    /// `--exclude` patterns.
    pub exclude: &'a [String],
    /// ADD `--unpack`.
    pub unpack: Option<bool>,
    /// ADD `--checksum=sha256:…`.
    pub checksum: Option<&'a str>,
    /// mtime of the entries kiln creates (new parent directories, heredoc files, downloads).
    pub now: i64,
    /// URLs already fetched (to key the step by their bytes): used instead of a download.
    pub fetched: &'a BTreeMap<String, Fetched>,
    /// The context paths the filter keeps, when the caller has walked them already (the
    /// step cache does): saves walking the context again.
    pub kept: Option<&'a HashSet<PathBuf>>,
}

/// A downloaded URL: its body and `Last-Modified` time, if any.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub body: Arc<[u8]>,
    pub mtime: Option<i64>,
}

/// Downloads `url` (what an ADD of it reads).
pub fn fetch(url: &str) -> Result<Fetched, CopyError> {
    let (body, mtime) = download(url)?;
    Ok(Fetched {
        body: Arc::from(body),
        mtime,
    })
}

/// Why a COPY/ADD cannot be done. The messages follow BuildKit's where it has one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CopyError {
    /// A context source whose cleaned path climbs above the context root.
    #[error("forbidden path outside the build context: {0}")]
    OutsideContext(String),
    /// A literal source that does not exist (or is excluded by `.dockerignore`); the cleaned
    /// absolute path.
    #[error("\"{0}\": not found")]
    NotFound(String),
    /// Several sources and a destination that is not a directory. Holds `COPY` or `ADD`.
    #[error(
        "When using {0} with more than one source file, the destination must be a directory and end with a /"
    )]
    DestinationNotDirectory(&'static str),
    /// `--chown` names a user or group the destination does not have.
    #[error(transparent)]
    User(#[from] UserError),
    /// An invalid `--chmod` value.
    #[error(transparent)]
    Chmod(#[from] InvalidChmod),
    /// A URL source in COPY.
    #[error("source can't be a URL for COPY")]
    UrlForCopy,
    /// `--checksum` with a source that is not a URL.
    #[error("checksum requires HTTP(S) or Git sources")]
    ChecksumNeedsUrl,
    /// `--checksum` with several sources.
    #[error("checksum can't be specified for multiple sources")]
    ChecksumMultipleSources,
    /// A `--checksum` that is not `sha256:`/`sha384:`/`sha512:` and the hex digest.
    #[error("invalid checksum digest format: {0}")]
    InvalidChecksum(String),
    /// The downloaded content does not have the `--checksum` digest.
    #[error("checksum mismatch \"{expected}\" != \"{actual}\"")]
    ChecksumMismatch { expected: String, actual: String },
    /// ADD of a Git repository.
    #[error("ADD of a Git repository is not supported: {0}")]
    GitUnsupported(String),
    /// A URL that could not be downloaded.
    #[error("failed to download {url}: {reason}")]
    Download { url: String, reason: String },
    /// A URL whose request or body failed (its cause kept).
    #[error("failed to download {url}")]
    DownloadFailed {
        url: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A directory would have to be created or merged where a non-directory is.
    #[error("cannot copy to non-directory: {0}")]
    NotADirectory(String),
    /// A non-directory would replace a directory.
    #[error("cannot replace to directory {0} with file")]
    ReplaceDirectory(String),
    /// A chain of more than 255 symlinks.
    #[error("too many levels of symbolic links: {0}")]
    SymlinkLoop(String),
    /// Invalid `--exclude` (or `--parents` include) patterns.
    #[error("invalid {which} patterns {patterns:?}: {source}")]
    Pattern {
        which: &'static str,
        patterns: Vec<String>,
        #[source]
        source: IgnoreError,
    },
    /// Listing the build context failed (`.dockerignore` patterns, unreadable directories).
    #[error(transparent)]
    Context(#[from] ContextError),
    /// A tar archive that cannot be extracted.
    #[error("{name}: {reason}")]
    Archive { name: String, reason: String },
    /// A tar archive that cannot be read (its cause kept).
    #[error("{name}")]
    ArchiveRead {
        name: String,
        #[source]
        source: io::Error,
    },
    /// A name starting with `.wh.`: it would be read as an OCI whiteout.
    #[error(
        "{0}: names starting with .wh. are OCI whiteouts and cannot be stored in an image layer"
    )]
    Whiteout(String),
    /// An I/O error on a source or destination path.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> CopyError {
    let path = path.into();
    move |source| CopyError::Io { path, source }
}

/// A layer path as BuildKit prints it: `/` and the path.
fn show(rel: &Path) -> String {
    format!("/{}", rel.display())
}

/// Device number used for the synthetic hard-link keys of archive members.
const SYNTHETIC_DEV: u64 = u64::MAX;

/// Computes the layer entries that COPY/ADD `req` adds on top of `dest_root` (the stage's
/// filesystem so far, which is not modified). The entries are unique, sorted with
/// [`compare_layer_paths`], relative to `/`, and include every parent directory of what is added
/// (existing ones with their current metadata). See the module documentation for the rules.
///
/// With no sources and no heredocs the destination directory is created when missing (0755 or
/// the octal `--chmod`, owned by `--chown`, mtime `now`) and nothing else: WORKDIR uses that.
pub fn copy_entries(req: &CopyRequest<'_>, dest_root: &Path) -> Result<Vec<LayerEntry>, CopyError> {
    let cmd = if req.add { "ADD" } else { "COPY" };
    let chmod = match req.chmod {
        Some(s) if !s.is_empty() => Some(Chmod::parse(s)?),
        _ => None,
    };
    if !req.add && req.sources.iter().any(|s| is_url(s)) {
        return Err(CopyError::UrlForCopy);
    }
    let checksum = match req.checksum {
        Some(sum) if !sum.is_empty() => {
            if !req.add || req.sources.is_empty() || !req.sources.iter().all(|s| is_url(s)) {
                return Err(CopyError::ChecksumNeedsUrl);
            }
            if req.sources.len() + req.contents.len() > 1 {
                return Err(CopyError::ChecksumMultipleSources);
            }
            Some(Checksum::parse(sum)?)
        }
        _ => None,
    };
    if req.add
        && let Some(git) = req.sources.iter().find(|s| is_git(s))
    {
        return Err(CopyError::GitUnsupported(git.clone()));
    }
    let exclude = if req.exclude.is_empty() {
        None
    } else {
        Some(
            PatternMatcher::new(req.exclude).map_err(|source| CopyError::Pattern {
                which: "exclude",
                patterns: req.exclude.to_vec(),
                source,
            })?,
        )
    };
    let chown = match req.chown {
        Some(s) if !s.is_empty() => Some(resolve_chown(s, dest_root)?),
        _ => None,
    };

    let dest_abs = if req.dest.starts_with('/') {
        req.dest.to_string()
    } else {
        format!("{}/{}", req.workdir, req.dest)
    };
    let d = req.dest;
    let dir_hint = d.is_empty()
        || d == "."
        || d == ".."
        || d.ends_with('/')
        || d.ends_with("/.")
        || d.ends_with("/..");
    let dest_comps = clean_comps(dest_abs.as_bytes());

    let (src_root, context_filter) = match req.source {
        CopySource::Context { root, filter } => (root, Some(filter)),
        CopySource::Rootfs { root } => (root, None),
    };
    let settings = Settings {
        chmod,
        chown,
        context: context_filter.is_some(),
        now: req.now,
        exclude,
    };
    let mut dest = DestFs::new(dest_root);

    if !req.parents && req.sources.len() + req.contents.len() > 1 && !dir_hint {
        let resolved = dest.resolve(Path::new(""), &dest_comps, true)?;
        if !dest.is_dir(&resolved)? {
            return Err(CopyError::DestinationNotDirectory(cmd));
        }
    }

    // The source view: the context as BuildKit would receive it (the filtered walk), or a root
    // filesystem.
    let needs_src = req.sources.iter().any(|s| !(req.add && is_url(s)));
    let kept = match context_filter {
        Some(_) if needs_src && req.kept.is_some() => req.kept.map(Cow::Borrowed),
        Some(filter) if needs_src => Some(Cow::Owned(
            filter
                .walk(src_root)?
                .into_iter()
                .map(|e| e.path)
                .collect::<HashSet<PathBuf>>(),
        )),
        _ => None,
    };
    let src = SrcFs {
        root: src_root,
        kept,
    };

    // Gather every item first: the number of items decides whether the destination is a
    // directory.
    let mut items = Vec::new();
    for s in req.sources {
        if req.add && is_url(s) {
            items.push(Item::Url(s.clone()));
        } else if req.parents {
            gather_parents(&src, settings.context, s, &mut items)?;
        } else {
            gather_local(&src, settings.context, s, &mut items)?;
        }
    }
    for (name, data) in req.contents {
        items.push(Item::Heredoc {
            name: name.clone(),
            data: Arc::from(data.as_bytes()),
        });
    }
    let countable = items
        .iter()
        .filter(|i| !matches!(i, Item::Parents { .. }))
        .count();
    let force_dir = dir_hint || countable > 1;

    if req.sources.is_empty() && req.contents.is_empty() {
        // Nothing to copy: the destination directory is still made (how WORKDIR creates its
        // directory, owned by `--chown`).
        let d = dest.resolve(Path::new(""), &dest_comps, true)?;
        dest.mkdir_all(&d, &created_dir_meta(&settings))?;
        return dest.finish(req.now);
    }

    let mut cx = Cx {
        set: &settings,
        src: &src,
        dest: &mut dest,
        dest_comps: &dest_comps,
        force_dir,
    };
    for item in items {
        match item {
            Item::Local { rel, name } => {
                let md = src
                    .lstat(&rel)?
                    .ok_or_else(|| CopyError::NotFound(show(&rel)))?;
                if req.add
                    && req.unpack != Some(false)
                    && md.is_file()
                    && let Some(open) = archive_opener_for_file(&src.root.join(&rel))?
                {
                    let target = cx.dest_dir(&archive_dir_meta(&settings))?;
                    extract(
                        cx.dest,
                        &settings,
                        open,
                        &target,
                        &rel.display().to_string(),
                    )?;
                } else if md.is_dir() {
                    let target = cx.dest_dir(&created_dir_meta(&settings))?;
                    copy_tree(&mut cx, &rel, &target, None)?;
                } else {
                    let target = cx.file_target(&name)?;
                    let e = source_entry(&settings, &src, &rel, &md, target)?;
                    cx.dest.put(e, false)?;
                }
            }
            Item::Parents { pivot, include } => {
                let target = cx.dest_dir(&created_dir_meta(&settings))?;
                copy_tree(&mut cx, &pivot, &target, include.as_ref())?;
            }
            Item::Heredoc { name, data } => {
                let target = cx.file_target(OsStr::new(&name))?;
                let e = settings.new_file(target, data, 0o644, settings.now);
                cx.dest.put(e, false)?;
            }
            Item::Url(url) => {
                let Fetched { body, mtime } = match req.fetched.get(&url) {
                    Some(f) => f.clone(),
                    None => fetch(&url)?,
                };
                if let Some(sum) = &checksum {
                    sum.verify(&body)?;
                }
                let unpacked = if req.unpack == Some(true) {
                    let bytes = body.clone();
                    let open = move || -> io::Result<Box<dyn Read>> {
                        Ok(Box::new(io::Cursor::new(bytes.clone())))
                    };
                    if is_archive(&open).unwrap_or(false) {
                        let target = cx.dest_dir(&archive_dir_meta(&settings))?;
                        extract(cx.dest, &settings, Box::new(open), &target, &url)?;
                        true
                    } else {
                        false
                    }
                } else {
                    false
                };
                if !unpacked {
                    let name = url_file_name(&url);
                    let target = cx.file_target(OsStr::new(&name))?;
                    let e = settings.new_file(target, body, 0o600, mtime.unwrap_or(settings.now));
                    cx.dest.put(e, false)?;
                }
            }
        }
    }
    dest.finish(req.now)
}

// -------------------------------------------------------------------------------------------
// settings and small helpers

struct Settings {
    chmod: Option<Chmod>,
    chown: Option<(u64, u64)>,
    /// Sources are the build context (owners become 0:0).
    context: bool,
    now: i64,
    exclude: Option<PatternMatcher>,
}

impl Settings {
    /// A regular file kiln writes (a heredoc, a download): `mode` unless `--chmod` says
    /// otherwise, owned by `--chown` (else 0:0).
    fn new_file(
        &self,
        path: PathBuf,
        content: impl Into<Arc<[u8]>>,
        mode: u32,
        mtime: i64,
    ) -> LayerEntry {
        let mode = self.chmod.as_ref().map_or(mode, |c| c.apply(mode, false));
        let (uid, gid) = self.chown.unwrap_or((0, 0));
        LayerEntry::file(path, content, mode)
            .with_owner(uid, gid)
            .with_mtime(mtime)
    }
}

/// Metadata of a directory kiln creates.
#[derive(Debug, Clone, Copy)]
struct DirMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
}

impl DirMeta {
    fn entry(&self, path: &Path) -> LayerEntry {
        LayerEntry::dir(path, self.mode)
            .with_owner(self.uid, self.gid)
            .with_mtime(self.mtime)
    }
}

/// Directories created on the way to a COPY destination (fsutil's `MkdirAll`).
fn created_dir_meta(set: &Settings) -> DirMeta {
    let (uid, gid) = set.chown.unwrap_or((0, 0));
    DirMeta {
        mode: set.chmod.as_ref().map_or(0o755, Chmod::created_dir_mode),
        uid,
        gid,
        mtime: set.now,
    }
}

/// The destination directory of an archive extraction (BuildKit's unpack: 0755, `--chown`).
fn archive_dir_meta(set: &Settings) -> DirMeta {
    let (uid, gid) = set.chown.unwrap_or((0, 0));
    DirMeta {
        mode: 0o755,
        uid,
        gid,
        mtime: set.now,
    }
}

/// Parent directories an archive implies without listing them (Docker's `MkdirAll(…, 0755)`).
fn implied_dir_meta(set: &Settings) -> DirMeta {
    DirMeta {
        mode: 0o755,
        uid: 0,
        gid: 0,
        mtime: set.now,
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn is_git(s: &str) -> bool {
    if s.starts_with("git@") || s.starts_with("git://") {
        return true;
    }
    if is_url(s) {
        let path = s.split(['#', '?']).next().unwrap_or(s);
        return path.ends_with(".git") || s.contains(".git#");
    }
    false
}

/// Whether a relative source climbs above the context root once cleaned (`../x`).
fn escapes_root(s: &str) -> bool {
    if s.starts_with('/') {
        return false;
    }
    let c = crate::pathclean::clean(s);
    c == ".." || c.starts_with("../")
}

fn comps_path(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

/// fsutil's `containsWildcards`: `*`, `?` or `[`, with `\` protecting the next byte.
fn contains_wildcards(name: &[u8]) -> bool {
    let mut i = 0;
    while i < name.len() {
        match name[i] {
            b'\\' => i += 1,
            b'*' | b'?' | b'[' => return true,
            _ => {}
        }
        i += 1;
    }
    false
}

/// Go's `filepath.Match` for one path component. A malformed pattern matches nothing (fsutil
/// ignores the error). The name is bytes; as in Go, a byte that is not part of valid UTF-8 is
/// one character (U+FFFD).
fn glob_match(pattern: &str, name: &[u8]) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = go_text(name).chars().collect();
    glob_at(&p, &n).unwrap_or(false)
}

fn glob_at(p: &[char], n: &[char]) -> Option<bool> {
    let (mut pi, mut ni) = (0, 0);
    // Backtracking point for the last `*`: (pattern index after it, name index it matched to).
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi + 1, ni));
                    pi += 1;
                    continue;
                }
                c => {
                    if ni < n.len() {
                        let (ok, width) = match c {
                            '?' => (true, 1),
                            '[' => class_match(&p[pi..], n[ni])?,
                            '\\' => {
                                let e = *p.get(pi + 1)?;
                                (e == n[ni], 2)
                            }
                            c => (c == n[ni], 1),
                        };
                        if ok {
                            pi += width;
                            ni += 1;
                            continue;
                        }
                    } else {
                        // Validate the rest of the pattern the way Go does before failing.
                        validate(&p[pi..])?;
                    }
                }
            }
        } else if ni == n.len() {
            return Some(true);
        }
        match star {
            Some((sp, sn)) if sn < n.len() => {
                star = Some((sp, sn + 1));
                pi = sp;
                ni = sn + 1;
            }
            _ => {
                validate(&p[pi.min(p.len())..])?;
                return Some(false);
            }
        }
    }
}

/// Checks the rest of a pattern for syntax errors (`None` when malformed).
fn validate(p: &[char]) -> Option<()> {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            '\\' => {
                p.get(i + 1)?;
                i += 2;
            }
            '[' => {
                let (_, w) = class_match(&p[i..], '\0')?;
                i += w;
            }
            _ => i += 1,
        }
    }
    Some(())
}

/// Matches `c` against the class at the start of `p` (`[...]`); returns (matched, width).
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = p.get(i) == Some(&'^');
    if negated {
        i += 1;
    }
    let mut matched = false;
    let mut nrange = 0;
    loop {
        let ch = *p.get(i)?;
        if ch == ']' && nrange > 0 {
            i += 1;
            break;
        }
        let (lo, w) = class_char(&p[i..])?;
        i += w;
        let mut hi = lo;
        if p.get(i) == Some(&'-') {
            let (h, w) = class_char(&p[i + 1..])?;
            hi = h;
            i += 1 + w;
        }
        if lo <= c && c <= hi {
            matched = true;
        }
        nrange += 1;
    }
    Some((matched != negated, i))
}

fn class_char(p: &[char]) -> Option<(char, usize)> {
    match *p.first()? {
        '-' | ']' => None,
        '\\' => Some((*p.get(1)?, 2)),
        c => Some((c, 1)),
    }
}

// -------------------------------------------------------------------------------------------
// path resolution inside a root

/// The paths under `root` that a COPY/ADD of `sources` reads, found the way the copy finds
/// them: wildcards expanded, symlinks on a source's path followed inside `root`, each
/// `--parents` pivot whole. `kept` is the context after `.dockerignore` (`None`: a stage's or
/// image's root filesystem). What the step cache digests: a digest of these paths changes
/// exactly when what the copy reads may have changed (an excluded or wider pivot only makes a
/// broader miss, never a wrong hit).
pub(crate) fn selected_paths(
    root: &Path,
    kept: Option<&HashSet<PathBuf>>,
    sources: &[String],
    parents: bool,
) -> Result<Vec<PathBuf>, CopyError> {
    let src = SrcFs {
        root,
        kept: kept.map(Cow::Borrowed),
    };
    let mut items = Vec::new();
    for s in sources {
        if parents {
            gather_parents(&src, src.kept.is_some(), s, &mut items)?;
        } else {
            gather_local(&src, src.kept.is_some(), s, &mut items)?;
        }
    }
    Ok(items
        .into_iter()
        .filter_map(|i| match i {
            Item::Local { rel, .. } => Some(rel),
            Item::Parents { pivot, .. } => Some(pivot),
            Item::Heredoc { .. } | Item::Url(_) => None,
        })
        .collect())
}

/// Whether `sources` can be digested as written: no wildcard, and no symlink on any of their
/// paths under `root` (then [`selected_paths`] would return them unchanged, and the context
/// walk it needs can be skipped).
pub(crate) fn sources_are_plain(root: &Path, sources: &[String]) -> bool {
    sources.iter().all(|s| {
        let comps = clean_comps(s.as_bytes());
        if comps.iter().any(|c| contains_wildcards(c.as_bytes())) {
            return false;
        }
        let mut p = root.to_path_buf();
        comps.iter().all(|c| {
            p.push(c);
            fs::symlink_metadata(&p).is_ok_and(|m| !m.file_type().is_symlink())
        })
    })
}

/// [`resolve_with`] with its errors as copy errors.
fn resolve_in(
    base: &Path,
    comps: &[OsString],
    follow_final: bool,
    strict: bool,
    probe: &mut dyn FnMut(&Path) -> Result<Probe, CopyError>,
) -> Result<PathBuf, CopyError> {
    resolve_with(base, comps, follow_final, strict, probe).map_err(|e| match e {
        ResolveError::Probe(e) => e,
        ResolveError::NotADirectory(p) => CopyError::NotADirectory(show(&p)),
        ResolveError::SymlinkLoop(p) => CopyError::SymlinkLoop(show(&p)),
    })
}

/// `lstat` of `root/rel`; `None` when it is missing.
fn lstat_at(root: &Path, rel: &Path) -> Result<Option<fs::Metadata>, CopyError> {
    let p = root.join(rel);
    match fs::symlink_metadata(&p) {
        Ok(md) => Ok(Some(md)),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(io_err(p)(e)),
    }
}

/// What `root/rel` is, from its `lstat` (`md`); a symlink's target is read.
fn probe_md(root: &Path, rel: &Path, md: Option<fs::Metadata>) -> Result<Probe, CopyError> {
    Ok(match md {
        None => Probe::Absent,
        Some(md) if md.is_dir() => Probe::Dir,
        Some(md) if md.file_type().is_symlink() => {
            let p = root.join(rel);
            Probe::Symlink(fs::read_link(&p).map_err(io_err(p))?)
        }
        Some(_) => Probe::Other,
    })
}

// -------------------------------------------------------------------------------------------
// the source side

/// The sources' filesystem: a root, and for the build context the set of paths that survive
/// `.dockerignore` (what BuildKit would receive).
struct SrcFs<'a> {
    root: &'a Path,
    kept: Option<Cow<'a, HashSet<PathBuf>>>,
}

impl SrcFs<'_> {
    fn visible(&self, rel: &Path) -> bool {
        if rel.as_os_str().is_empty() {
            return true;
        }
        match &self.kept {
            None => true,
            Some(k) => k.contains(rel),
        }
    }

    /// `lstat` of a resolved path (no symlink in its parents); `None` when missing or hidden.
    fn lstat(&self, rel: &Path) -> Result<Option<fs::Metadata>, CopyError> {
        if !self.visible(rel) {
            return Ok(None);
        }
        lstat_at(self.root, rel)
    }

    fn probe(&self, rel: &Path) -> Result<Probe, CopyError> {
        probe_md(self.root, rel, self.lstat(rel)?)
    }

    fn resolve(&self, comps: &[OsString], follow_final: bool) -> Result<PathBuf, CopyError> {
        resolve_in(Path::new(""), comps, follow_final, false, &mut |p| {
            self.probe(p)
        })
    }

    /// The visible names in a directory, sorted byte-wise.
    fn read_dir(&self, rel: &Path) -> Result<Vec<OsString>, CopyError> {
        let p = self.root.join(rel);
        let mut names = Vec::new();
        for de in fs::read_dir(&p).map_err(io_err(&p))? {
            let de = de.map_err(io_err(&p))?;
            let name = de.file_name();
            if self.visible(&rel.join(&name)) {
                names.push(name);
            }
        }
        names.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        Ok(names)
    }
}

/// What a source argument stands for.
enum Item {
    /// A source path (resolved, followed) and the name it is copied under.
    Local {
        rel: PathBuf,
        name: OsString,
    },
    /// `--parents`: the contents of `pivot` that match `include` (all when `None`).
    Parents {
        pivot: PathBuf,
        include: Option<Include>,
    },
    Heredoc {
        name: String,
        data: Arc<[u8]>,
    },
    Url(String),
}

/// An include pattern set (`--parents`), with the raw patterns for pruning the walk.
struct Include {
    matcher: PatternMatcher,
    patterns: Vec<Vec<String>>,
}

impl Include {
    fn new(pattern: &str) -> Result<Include, CopyError> {
        let matcher = PatternMatcher::new(&[pattern]).map_err(|source| CopyError::Pattern {
            which: "include",
            patterns: vec![pattern.to_string()],
            source,
        })?;
        let patterns = matcher
            .patterns()
            .iter()
            .map(|p| p.as_str().split('/').map(str::to_string).collect())
            .collect();
        Ok(Include { matcher, patterns })
    }

    /// Whether something below the directory `rel` could match (conservative).
    fn could_match_below(&self, rel: &[u8]) -> bool {
        let dir: Vec<&[u8]> = rel.split(|&b| b == b'/').collect();
        self.patterns.iter().any(|p| {
            for (i, d) in dir.iter().enumerate() {
                let Some(pc) = p.get(i) else {
                    return false;
                };
                if pc.contains("**") {
                    return true;
                }
                if !glob_match(pc, d) {
                    return false;
                }
            }
            p.len() > dir.len()
        })
    }
}

/// Expands one source: its matches as (path with parents resolved, name it is copied under).
fn expand(src: &SrcFs, comps: &[OsString]) -> Result<Vec<(PathBuf, OsString)>, CopyError> {
    let Some(first) = comps.iter().position(|c| contains_wildcards(c.as_bytes())) else {
        let name = comps.last().cloned().unwrap_or_default();
        return Ok(vec![(comps_path(comps), name)]);
    };
    let base = src.resolve(&comps[..first], true)?;
    if !matches!(src.probe(&base)?, Probe::Dir) {
        return Ok(Vec::new());
    }
    let mut level = vec![base];
    for (j, pat) in comps[first..].iter().enumerate() {
        let last = first + j + 1 == comps.len();
        let pat = pat.to_string_lossy();
        let mut next = Vec::new();
        for d in &level {
            for name in src.read_dir(d)? {
                if !glob_match(&pat, name.as_bytes()) {
                    continue;
                }
                let p = d.join(&name);
                // Like filepath.Walk: intermediate matches must be real directories.
                if last || src.lstat(&p)?.is_some_and(|m| m.is_dir()) {
                    next.push(p);
                }
            }
        }
        level = next;
    }
    Ok(level
        .into_iter()
        .map(|p| {
            let name = p.file_name().map(OsStr::to_os_string).unwrap_or_default();
            (p, name)
        })
        .collect())
}

fn gather_local(
    src: &SrcFs,
    context: bool,
    s: &str,
    items: &mut Vec<Item>,
) -> Result<(), CopyError> {
    if context && escapes_root(s) {
        return Err(CopyError::OutsideContext(s.to_string()));
    }
    let comps = clean_comps(s.as_bytes());
    for (path, name) in expand(src, &comps)? {
        let comps: Vec<OsString> = path.iter().map(OsStr::to_os_string).collect();
        let rel = src.resolve(&comps, true)?;
        if src.lstat(&rel)?.is_none() {
            return Err(CopyError::NotFound(show(&path)));
        }
        items.push(Item::Local { rel, name });
    }
    Ok(())
}

fn gather_parents(
    src: &SrcFs,
    context: bool,
    s: &str,
    items: &mut Vec<Item>,
) -> Result<(), CopyError> {
    if context && escapes_root(s) {
        return Err(CopyError::OutsideContext(s.to_string()));
    }
    let (pivot, rest) = match s.find("/./") {
        Some(i) => (&s[..i], &s[i + 3..]),
        None => ("", s),
    };
    let pattern = comps_path(&clean_comps(rest.as_bytes()));
    let pattern = pattern.to_string_lossy().into_owned();
    let pivot_comps = clean_comps(pivot.as_bytes());
    let pivot_literal = !pivot_comps.iter().any(|c| contains_wildcards(c.as_bytes()));
    let pattern_literal = !contains_wildcards(pattern.as_bytes());
    let full = show(&comps_path(&clean_comps(s.as_bytes())));
    let mut found = false;
    for (path, _) in expand(src, &pivot_comps)? {
        let comps: Vec<OsString> = path.iter().map(OsStr::to_os_string).collect();
        let rel = src.resolve(&comps, true)?;
        if !src.lstat(&rel)?.is_some_and(|m| m.is_dir()) {
            continue;
        }
        if pattern_literal && !pattern.is_empty() {
            let mut inner = comps.clone();
            inner.extend(clean_comps(pattern.as_bytes()));
            let r = src.resolve(&inner, true)?;
            if src.lstat(&r)?.is_none() {
                continue;
            }
        }
        found = true;
        let include = if pattern.is_empty() {
            None
        } else {
            Some(Include::new(&pattern)?)
        };
        items.push(Item::Parents {
            pivot: rel,
            include,
        });
    }
    if !found && pivot_literal && pattern_literal {
        return Err(CopyError::NotFound(full));
    }
    Ok(())
}

/// The entry for a source path `rel` (resolved) placed at `target`.
fn source_entry(
    set: &Settings,
    src: &SrcFs,
    rel: &Path,
    md: &fs::Metadata,
    target: PathBuf,
) -> Result<LayerEntry, CopyError> {
    let ft = md.file_type();
    let disk = src.root.join(rel);
    let kind = EntryKind::from_disk(md, &disk)
        .map_err(io_err(&disk))?
        // Sockets (and anything else) become empty regular files, as BuildKit's context
        // transfer makes them.
        .unwrap_or_else(|| EntryKind::File(FileSource::Bytes(Arc::from(&[][..]))));
    let is_dir = ft.is_dir();
    let mode = if ft.is_symlink() {
        0o777
    } else {
        let m = md.mode() & 0o7777;
        set.chmod.as_ref().map_or(m, |c| c.apply(m, is_dir))
    };
    let (uid, gid) = set.chown.unwrap_or(if set.context {
        (0, 0)
    } else {
        (u64::from(md.uid()), u64::from(md.gid()))
    });
    let link_key = (!is_dir && !ft.is_socket() && md.nlink() > 1).then(|| (md.dev(), md.ino()));
    Ok(LayerEntry {
        path: target,
        kind,
        mode,
        uid,
        gid,
        mtime: md.mtime(),
        xattrs: BTreeMap::new(),
        link_key,
    })
}

// -------------------------------------------------------------------------------------------
// the destination side

/// `dest_root` with this instruction's entries on top.
struct DestFs<'a> {
    root: &'a Path,
    /// Entries added so far, by resolved layer path.
    planned: BTreeMap<PathBuf, LayerEntry>,
    /// Paths whose on-disk subtree is hidden by a planned entry of another type.
    shadowed: HashSet<PathBuf>,
    next_link: u64,
}

impl<'a> DestFs<'a> {
    fn new(root: &'a Path) -> Self {
        DestFs {
            root,
            planned: BTreeMap::new(),
            shadowed: HashSet::new(),
            next_link: 0,
        }
    }

    fn disk_md(&self, rel: &Path) -> Result<Option<fs::Metadata>, CopyError> {
        if !self.shadowed.is_empty() && rel.ancestors().any(|a| self.shadowed.contains(a)) {
            return Ok(None);
        }
        lstat_at(self.root, rel)
    }

    /// What a destination path is: a planned entry, else what is on disk.
    fn kind(&self, rel: &Path) -> Result<Probe, CopyError> {
        if rel.as_os_str().is_empty() {
            return Ok(Probe::Dir);
        }
        if let Some(e) = self.planned.get(rel) {
            return Ok(match &e.kind {
                EntryKind::Dir => Probe::Dir,
                EntryKind::Symlink(t) => Probe::Symlink(t.clone()),
                _ => Probe::Other,
            });
        }
        probe_md(self.root, rel, self.disk_md(rel)?)
    }

    fn is_dir(&self, rel: &Path) -> Result<bool, CopyError> {
        Ok(matches!(self.kind(rel)?, Probe::Dir))
    }

    fn resolve(
        &self,
        base: &Path,
        comps: &[OsString],
        follow_final: bool,
    ) -> Result<PathBuf, CopyError> {
        resolve_in(base, comps, follow_final, true, &mut |p| self.kind(p))
    }

    /// Creates the missing directories of the resolved path `rel` with `meta`.
    fn mkdir_all(&mut self, rel: &Path, meta: &DirMeta) -> Result<(), CopyError> {
        let mut cur = PathBuf::new();
        for c in rel.iter() {
            cur.push(c);
            match self.kind(&cur)? {
                Probe::Dir => {}
                Probe::Absent => {
                    self.planned.insert(cur.clone(), meta.entry(&cur));
                }
                _ => return Err(CopyError::NotADirectory(show(&cur))),
            }
        }
        Ok(())
    }

    /// Adds an entry at its (resolved) path. `replace`: Docker's Untar rules (whatever is
    /// there is replaced, directories merge); otherwise fsutil's (a directory cannot land on a
    /// non-directory nor a non-directory on a directory).
    fn put(&mut self, e: LayerEntry, replace: bool) -> Result<(), CopyError> {
        let path = e.path.clone();
        let is_dir = matches!(e.kind, EntryKind::Dir);
        match (self.kind(&path)?, is_dir) {
            (Probe::Absent, _) | (Probe::Dir, true) => {}
            (Probe::Dir, false) => {
                if !replace {
                    return Err(CopyError::ReplaceDirectory(show(&path)));
                }
                self.remove_planned(&path);
                self.shadow(&path)?;
            }
            (_, true) => {
                if !replace {
                    return Err(CopyError::NotADirectory(show(&path)));
                }
                self.remove_planned(&path);
                self.shadow(&path)?;
            }
            (_, false) => {
                self.planned.remove(&path);
            }
        }
        self.planned.insert(path, e);
        Ok(())
    }

    fn remove_planned(&mut self, path: &Path) {
        let doomed: Vec<PathBuf> = self
            .planned
            .range(path.to_path_buf()..)
            .take_while(|(k, _)| k.starts_with(path))
            .map(|(k, _)| k.clone())
            .collect();
        for k in doomed {
            self.planned.remove(&k);
        }
    }

    fn shadow(&mut self, path: &Path) -> Result<(), CopyError> {
        if self.disk_md(path)?.is_some() {
            self.shadowed.insert(path.to_path_buf());
        }
        Ok(())
    }

    fn synthetic_link_key(&mut self) -> (u64, u64) {
        self.next_link += 1;
        (SYNTHETIC_DEV, self.next_link)
    }

    /// The entries: planned ones, the existing parents they need, opaque markers for
    /// directories that replace something that was a directory on disk.
    fn finish(mut self, now: i64) -> Result<Vec<LayerEntry>, CopyError> {
        let mut parents = BTreeSet::new();
        for k in self.planned.keys() {
            for a in k.ancestors().skip(1) {
                if a.as_os_str().is_empty() || self.planned.contains_key(a) {
                    continue;
                }
                parents.insert(a.to_path_buf());
            }
        }
        for p in parents {
            let e = match self.disk_md(&p)? {
                Some(md) if md.is_dir() => LayerEntry::dir(&p, md.mode() & 0o7777)
                    .with_owner(u64::from(md.uid()), u64::from(md.gid()))
                    .with_mtime(md.mtime()),
                Some(_) => return Err(CopyError::NotADirectory(show(&p))),
                None => LayerEntry::dir(&p, 0o755).with_mtime(now),
            };
            self.planned.insert(p, e);
        }
        let mut extra = Vec::new();
        for p in &self.shadowed {
            let dir_here = self
                .planned
                .get(p)
                .is_some_and(|e| matches!(e.kind, EntryKind::Dir));
            let proper_shadowed = p.ancestors().skip(1).any(|a| self.shadowed.contains(a));
            if dir_here
                && !proper_shadowed
                && fs::symlink_metadata(self.root.join(p)).is_ok_and(|m| m.is_dir())
            {
                extra.push(LayerEntry::opaque_whiteout(p));
            }
        }
        let mut out: Vec<LayerEntry> = self.planned.into_values().collect();
        for e in &out {
            let name = e.path.file_name().map(OsStr::as_bytes).unwrap_or_default();
            if name.starts_with(WHITEOUT_PREFIX.as_bytes()) {
                return Err(CopyError::Whiteout(show(&e.path)));
            }
        }
        out.extend(extra);
        out.sort_by(|a, b| compare_layer_paths(&a.path, &b.path));
        Ok(out)
    }
}

/// Per-instruction state while items are placed.
struct Cx<'c, 'a> {
    set: &'c Settings,
    src: &'c SrcFs<'a>,
    dest: &'c mut DestFs<'a>,
    dest_comps: &'c [OsString],
    force_dir: bool,
}

impl Cx<'_, '_> {
    /// The destination as a directory, created (with `meta`) when missing.
    fn dest_dir(&mut self, meta: &DirMeta) -> Result<PathBuf, CopyError> {
        let d = self.dest.resolve(Path::new(""), self.dest_comps, true)?;
        self.dest.mkdir_all(&d, meta)?;
        Ok(d)
    }

    /// Where a non-directory item named `name` goes: `dest/name` or `dest` itself.
    fn file_target(&mut self, name: &OsStr) -> Result<PathBuf, CopyError> {
        let meta = created_dir_meta(self.set);
        let d = self.dest.resolve(Path::new(""), self.dest_comps, true)?;
        if self.force_dir || self.dest.is_dir(&d)? {
            self.dest.mkdir_all(&d, &meta)?;
            Ok(d.join(name))
        } else {
            if let Some(parent) = d.parent() {
                self.dest.mkdir_all(parent, &meta)?;
            }
            Ok(d)
        }
    }
}

/// Copies the contents of the source directory `dir` into the destination directory `target`
/// (which exists), with `--exclude` and, for `--parents`, an include pattern.
fn copy_tree(
    cx: &mut Cx<'_, '_>,
    dir: &Path,
    target: &Path,
    include: Option<&Include>,
) -> Result<(), CopyError> {
    let mut pending = Vec::new();
    walk_tree(
        cx,
        dir,
        b"",
        target,
        include,
        &MatchInfo::default(),
        &MatchInfo::default(),
        &mut pending,
    )
}

#[allow(clippy::too_many_arguments)]
fn walk_tree(
    cx: &mut Cx<'_, '_>,
    dir: &Path,
    rel: &[u8],
    target: &Path,
    include: Option<&Include>,
    inc_info: &MatchInfo,
    exc_info: &MatchInfo,
    pending: &mut Vec<(PathBuf, PathBuf)>,
) -> Result<(), CopyError> {
    let set = cx.set;
    let src = cx.src;
    let pattern_err = |which: &'static str, patterns: Vec<String>| {
        move |source| CopyError::Pattern {
            which,
            patterns,
            source,
        }
    };
    for name in src.read_dir(dir)? {
        let child = dir.join(&name);
        let Some(md) = src.lstat(&child)? else {
            continue;
        };
        // Relative to the directory source, for `--exclude`/`--parents` patterns; bytes, as
        // names are.
        let mut child_rel = rel.to_vec();
        if !child_rel.is_empty() {
            child_rel.push(b'/');
        }
        child_rel.extend_from_slice(name.as_bytes());
        let child_rel_os = OsStr::from_bytes(&child_rel);
        let child_target = target.join(&name);
        let (inc_ok, child_inc) = match include {
            Some(i) => i
                .matcher
                .matches_using_parent_results(child_rel_os, inc_info)
                .map_err(pattern_err("include", Vec::new()))?,
            None => (true, MatchInfo::default()),
        };
        let (exc_hit, child_exc) = match &set.exclude {
            Some(m) => m
                .matches_using_parent_results(child_rel_os, exc_info)
                .map_err(pattern_err("exclude", Vec::new()))?,
            None => (false, MatchInfo::default()),
        };
        let is_dir = md.is_dir();
        if inc_ok && !exc_hit {
            for (psrc, ptarget) in std::mem::take(pending) {
                let pmd = src
                    .lstat(&psrc)?
                    .ok_or_else(|| CopyError::NotFound(show(&psrc)))?;
                let e = source_entry(set, src, &psrc, &pmd, ptarget)?;
                cx.dest.put(e, false)?;
            }
            let e = source_entry(set, src, &child, &md, child_target.clone())?;
            cx.dest.put(e, false)?;
            if is_dir {
                let mut none = Vec::new();
                walk_tree(
                    cx,
                    &child,
                    &child_rel,
                    &child_target,
                    include,
                    &child_inc,
                    &child_exc,
                    &mut none,
                )?;
            }
        } else if is_dir {
            let may_include = inc_ok || include.is_some_and(|i| i.could_match_below(&child_rel));
            let may_unexclude = !exc_hit || set.exclude.as_ref().is_some_and(|m| m.exclusions());
            if may_include && may_unexclude {
                let marker = (child.clone(), child_target.clone());
                pending.push(marker.clone());
                walk_tree(
                    cx,
                    &child,
                    &child_rel,
                    &child_target,
                    include,
                    &child_inc,
                    &child_exc,
                    pending,
                )?;
                if pending.last() == Some(&marker) {
                    pending.pop();
                }
            }
        }
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------
// archives

type Opener = Box<dyn Fn() -> io::Result<Box<dyn Read>>>;

/// The decompressed stream of `raw` (any compression [`layer::sniff`] knows, bzip2 and xz
/// included).
fn decompressed(raw: Box<dyn Read>) -> io::Result<Box<dyn Read>> {
    let (sniffed, stream) = layer::sniff(raw)?;
    layer::decompress(sniffed, stream)
}

/// Whether the content is a tar archive (possibly compressed): its first header reads (Docker's
/// `isArchivePath`). An empty archive is not one.
fn is_archive(open: &dyn Fn() -> io::Result<Box<dyn Read>>) -> io::Result<bool> {
    let Ok(stream) = decompressed(open()?) else {
        return Ok(false);
    };
    let mut ar = tar::Archive::new(stream);
    let Ok(mut entries) = ar.entries() else {
        return Ok(false);
    };
    Ok(matches!(entries.next(), Some(Ok(_))))
}

fn archive_opener_for_file(path: &Path) -> Result<Option<Opener>, CopyError> {
    let p = path.to_path_buf();
    let open: Opener = Box::new(move || Ok(Box::new(fs::File::open(&p)?) as Box<dyn Read>));
    if is_archive(&open).map_err(io_err(path))? {
        Ok(Some(open))
    } else {
        Ok(None)
    }
}

/// Header values of one archive member, PAX records applied.
struct MemberMeta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn member_meta<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    name: &str,
) -> Result<MemberMeta, CopyError> {
    let bad = |what: &str| CopyError::Archive {
        name: name.to_string(),
        reason: format!("invalid {what} in tar header"),
    };
    let h = entry.header();
    let mode = h.mode().map_err(|_| bad("mode"))? & 0o7777;
    let mut uid = h.uid().map_err(|_| bad("uid"))?;
    let mut gid = h.gid().map_err(|_| bad("gid"))?;
    let mut mtime = i64::try_from(h.mtime().map_err(|_| bad("mtime"))?).unwrap_or(i64::MAX);
    let mut xattrs = BTreeMap::new();
    if let Some(exts) = entry.pax_extensions().map_err(|_| bad("PAX header"))? {
        for ext in exts.flatten() {
            let key = ext.key_bytes();
            let value = ext.value_bytes();
            let text = std::str::from_utf8(value).unwrap_or("");
            match key {
                b"uid" => uid = text.parse().map_err(|_| bad("PAX uid"))?,
                b"gid" => gid = text.parse().map_err(|_| bad("PAX gid"))?,
                b"mtime" => {
                    let secs = text.split('.').next().unwrap_or("");
                    mtime = secs.parse().map_err(|_| bad("PAX mtime"))?;
                }
                k => {
                    if let Some(x) = k.strip_prefix(b"SCHILY.xattr.") {
                        xattrs.insert(String::from_utf8_lossy(x).into_owned(), value.to_vec());
                    }
                }
            }
        }
    }
    Ok(MemberMeta {
        mode,
        uid,
        gid,
        mtime,
        xattrs,
    })
}

/// Extracts the archive that `open` reads into the destination directory `dest` (resolved,
/// existing), with Docker's Untar rules and `dest` as the archive's root.
fn extract(
    dest: &mut DestFs<'_>,
    set: &Settings,
    open: Opener,
    target: &Path,
    display: &str,
) -> Result<(), CopyError> {
    let arch_err = |reason: String| CopyError::Archive {
        name: display.to_string(),
        reason,
    };
    let read_err = |source: io::Error| CopyError::ArchiveRead {
        name: display.to_string(),
        source,
    };
    let stream = decompressed(open().map_err(read_err)?).map_err(read_err)?;
    let mut ar = tar::Archive::new(stream);
    let implied = implied_dir_meta(set);
    for entry in ar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let et = entry.header().entry_type();
        if et.is_pax_global_extensions()
            || et.is_pax_local_extensions()
            || et.is_gnu_longname()
            || et.is_gnu_longlink()
        {
            continue;
        }
        let raw = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw).into_owned();
        let comps = clean_comps(&raw);
        let Some((last, parent_comps)) = comps.split_last() else {
            // The archive's root: Docker leaves the existing destination alone.
            continue;
        };
        if last.as_bytes().starts_with(WHITEOUT_PREFIX.as_bytes()) {
            return Err(CopyError::Whiteout(format!("{display}: {name}")));
        }
        let parent = dest.resolve(target, parent_comps, true)?;
        dest.mkdir_all(&parent, &implied)?;
        let path = parent.join(last);
        let meta = member_meta(&mut entry, &name)?;
        let (uid, gid) = set.chown.unwrap_or((meta.uid, meta.gid));
        use tar::EntryType as T;
        let kind = match et {
            T::Directory => EntryKind::Dir,
            T::Regular | T::Continuous | T::GNUSparse => {
                let mut data = Vec::new();
                entry
                    .read_to_end(&mut data)
                    .map_err(|source| CopyError::ArchiveRead {
                        name: format!("{display}: {name}"),
                        source,
                    })?;
                EntryKind::File(FileSource::Bytes(Arc::from(data)))
            }
            T::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| arch_err(format!("{name}: symlink without a target")))?;
                EntryKind::Symlink(PathBuf::from(OsString::from_vec(link.into_owned())))
            }
            T::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| arch_err(format!("{name}: hard link without a target")))?;
                let tcomps = clean_comps(&link);
                let Some((tlast, tparent)) = tcomps.split_last() else {
                    return Err(arch_err(format!("{name}: hard link to the archive root")));
                };
                let tpath = dest.resolve(target, tparent, true)?.join(tlast);
                let link_display = String::from_utf8_lossy(&link).into_owned();
                let key = match dest.planned.get(&tpath) {
                    Some(t) if !matches!(t.kind, EntryKind::Dir) => t.link_key,
                    _ => {
                        return Err(arch_err(format!(
                            "{name}: hard link target {link_display} is not a file of this archive"
                        )));
                    }
                };
                let key = match key {
                    Some(k) => k,
                    None => {
                        let k = dest.synthetic_link_key();
                        if let Some(t) = dest.planned.get_mut(&tpath) {
                            t.link_key = Some(k);
                        }
                        k
                    }
                };
                let mut e = dest.planned.get(&tpath).cloned().ok_or_else(|| {
                    arch_err(format!("{name}: hard link target {link_display} vanished"))
                })?;
                e.path = path;
                e.link_key = Some(key);
                dest.put(e, true)?;
                continue;
            }
            T::Char | T::Block => {
                let h = entry.header();
                let major = h.device_major().ok().flatten().unwrap_or(0);
                let minor = h.device_minor().ok().flatten().unwrap_or(0);
                if et == T::Char {
                    EntryKind::CharDevice { major, minor }
                } else {
                    EntryKind::BlockDevice { major, minor }
                }
            }
            T::Fifo => EntryKind::Fifo,
            other => {
                return Err(arch_err(format!(
                    "{name}: unsupported tar entry type {:?}",
                    other.as_byte() as char
                )));
            }
        };
        let mode = if matches!(kind, EntryKind::Symlink(_)) {
            0o777
        } else {
            meta.mode
        };
        let e = LayerEntry {
            path,
            kind,
            mode,
            uid,
            gid,
            mtime: meta.mtime,
            xattrs: meta.xattrs,
            link_key: None,
        };
        dest.put(e, true)?;
    }
    Ok(())
}

// -------------------------------------------------------------------------------------------
// downloads

/// `--checksum`: algorithm and expected hex digest.
struct Checksum {
    algo: &'static str,
    hex: String,
}

impl Checksum {
    fn parse(s: &str) -> Result<Checksum, CopyError> {
        let bad = || CopyError::InvalidChecksum(s.to_string());
        let (algo, hex) = s.split_once(':').ok_or_else(bad)?;
        let (algo, len) = match algo {
            "sha256" => ("sha256", 64),
            "sha384" => ("sha384", 96),
            "sha512" => ("sha512", 128),
            _ => return Err(bad()),
        };
        if hex.len() != len || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Checksum {
            algo,
            hex: hex.to_ascii_lowercase(),
        })
    }

    fn verify(&self, data: &[u8]) -> Result<(), CopyError> {
        use sha2::Digest;
        let actual = match self.algo {
            "sha256" => hex::encode(sha2::Sha256::digest(data)),
            "sha384" => hex::encode(sha2::Sha384::digest(data)),
            _ => hex::encode(sha2::Sha512::digest(data)),
        };
        if actual != self.hex {
            return Err(CopyError::ChecksumMismatch {
                expected: format!("{}:{}", self.algo, self.hex),
                actual: format!("{}:{actual}", self.algo),
            });
        }
        Ok(())
    }
}

/// Downloads `url`: the body and the `Last-Modified` time, if any.
fn download(url: &str) -> Result<(Vec<u8>, Option<i64>), CopyError> {
    let fail = |reason: String| CopyError::Download {
        url: url.to_string(),
        reason,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .http_status_as_error(false)
        .build()
        .into();
    let failed = |source: Box<dyn std::error::Error + Send + Sync>| CopyError::DownloadFailed {
        url: url.to_string(),
        source,
    };
    let resp = agent.get(url).call().map_err(|e| failed(Box::new(e)))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(fail(format!("invalid response status {}", status.as_u16())));
    }
    let mtime = resp
        .headers()
        .get("last-modified")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_http_date);
    let mut body = Vec::new();
    resp.into_body()
        .into_reader()
        .read_to_end(&mut body)
        .map_err(|e| failed(Box::new(e)))?;
    Ok((body, mtime))
}

/// The file name BuildKit gives a download: the last segment of the URL's (decoded) path, or
/// `__unnamed__`.
fn url_file_name(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let decoded = percent_decode(path);
    let trimmed = decoded.trim_end_matches('/');
    match trimmed.rsplit('/').next() {
        Some(base) if !base.is_empty() && base != "." && base != ".." => base.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(h) = b.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(std::str::from_utf8(h).unwrap_or("zz"), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`) as seconds since the epoch.
fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, zone] = parts.as_slice() else {
        return None;
    };
    if *zone != "GMT" && *zone != "UTC" {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| x.eq_ignore_ascii_case(month))? as i64 + 1;
    let d: i64 = day.parse().ok()?;
    let y: i64 = year.parse().ok()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [hh, mm, ss] = t.as_slice() else {
        return None;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y2, m2) = if m <= 2 { (y - 1, m + 9) } else { (y, m - 3) };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_filepath_match() {
        let m = |p: &str, n: &str| glob_match(p, n.as_bytes());
        assert!(m("*.go", "foo.go"));
        assert!(!m("*.go", "foo.gox"));
        assert!(m("f*.go", "foo.go"));
        assert!(m("?oo", "foo"));
        assert!(!m("?oo", "fooo"));
        assert!(m("[a-c]at", "bat"));
        assert!(!m("[^a-c]at", "bat"));
        assert!(m("[^a-c]at", "rat"));
        assert!(m("\\*", "*"));
        assert!(!m("\\*", "x"));
        assert!(m("*", ""));
        assert!(m("a*b*c", "axxbyyc"));
        assert!(!m("a*b*c", "axxbyy"));
        assert!(m("l*", "l0"));
        assert!(m("ä*", "äöü"));
        // Malformed patterns match nothing.
        assert!(!m("[", "["));
        assert!(!m("a[", "a"));
        assert!(!m("[]a]", "a"));
        assert!(!m("x\\", "x"));
        // Names are bytes: a byte that is not UTF-8 is one character, as in Go.
        assert!(glob_match("caf?.txt", b"caf\xe9.txt"));
        assert!(glob_match("caf*", b"caf\xe9.txt"));
        assert!(!glob_match("café.txt", b"caf\xe9.txt"));
        assert!(glob_match("??", b"\xe2\x82"));
    }

    #[test]
    fn wildcards_detected() {
        assert!(contains_wildcards(b"*.go"));
        assert!(contains_wildcards(b"a[b]"));
        assert!(!contains_wildcards(b"a\\*b"));
        assert!(!contains_wildcards(b"plain"));
    }

    #[test]
    fn cleaning() {
        let s = |b: &str| comps_path(&clean_comps(b.as_bytes())).display().to_string();
        assert_eq!(s("../../x"), "x");
        assert_eq!(s("/a/./b//c/"), "a/b/c");
        assert_eq!(s("a/../../b"), "b");
        assert!(escapes_root("../x"));
        assert!(escapes_root("a/../../x"));
        assert!(!escapes_root("/../x"));
        assert!(!escapes_root("a/../x"));
    }

    #[test]
    fn url_names() {
        assert_eq!(url_file_name("http://h/t.tar.gz"), "t.tar.gz");
        assert_eq!(url_file_name("https://h:8080/a/b/c.txt?x=1#f"), "c.txt");
        assert_eq!(url_file_name("http://h/dir/"), "dir");
        assert_eq!(url_file_name("http://h"), "__unnamed__");
        assert_eq!(url_file_name("http://h/"), "__unnamed__");
        assert_eq!(url_file_name("http://h/a%20b"), "a b");
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(parse_http_date("yesterday"), None);
    }

    #[test]
    fn checksums() {
        let c = Checksum::parse(
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824",
        )
        .unwrap();
        c.verify(b"hello").unwrap();
        let e = c.verify(b"hellO").unwrap_err().to_string();
        assert!(e.starts_with("checksum mismatch \"sha256:2cf24dba"), "{e}");
        assert!(Checksum::parse("md5:abc").is_err());
        assert!(Checksum::parse("sha256:xyz").is_err());
    }

    #[test]
    fn include_pruning() {
        let i = Include::new("foo1/foo2/ba*").unwrap();
        assert!(i.could_match_below(b"foo1"));
        assert!(i.could_match_below(b"foo1/foo2"));
        assert!(!i.could_match_below(b"other"));
        assert!(!i.could_match_below(b"foo1/foo2/bar"));
        let i = Include::new("c/**/e").unwrap();
        assert!(i.could_match_below(b"c"));
        assert!(i.could_match_below(b"c/d/x/y"));
        assert!(!i.could_match_below(b"d"));
    }

    #[test]
    fn git_sources() {
        assert!(is_git("git@github.com:moby/buildkit.git"));
        assert!(is_git("https://github.com/moby/buildkit.git"));
        assert!(is_git("https://github.com/moby/buildkit.git#v0.10.1"));
        assert!(!is_git("https://example.com/file.tar.gz"));
        assert!(!is_git("foo.git"));
    }
}
