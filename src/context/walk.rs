//! The filtered walk of a build context, as BuildKit's context sender (tonistiigi/fsutil's
//! filter) does it.
//!
//! - Entries come in lexical order by path component, depth first, each directory before its
//!   contents (`foo/bar/bee` before `foo2`). Symlinks are reported, never followed. The context
//!   root itself is not reported and can never be excluded.
//! - An entry is kept when it matches the include patterns (if any) and does not match the
//!   exclude patterns. Directory results are handed down to children per pattern
//!   ([`PatternMatcher::matches_using_parent_results`]).
//! - A directory that is left out is still descended into when something inside could be
//!   kept: when any relevant pattern has wildcards, or a literal one lies under it. Its kept
//!   children make it appear, just before the first of them. Otherwise it is pruned.
//! - A directory that cannot be read is an error, unless it is left out anyway and the error is
//!   "permission denied".
//! - Names are bytes: a name that is not UTF-8 is walked, matched and reported like any other
//!   (fsutil sends it as it is).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use super::ignore::{IgnoreError, MatchInfo, PatternMatcher};

/// Include and exclude patterns (exclude: the `.dockerignore` lines after
/// [`read_ignore_file`](super::read_ignore_file)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WalkOptions {
    /// When not empty, only paths matching these (or under a match) are kept.
    pub include: Vec<String>,
    /// Paths matching these (or under a match) are left out.
    pub exclude: Vec<String>,
}

/// What a walked entry is, from `lstat` (symlinks are not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    Dir,
    File,
    Symlink,
    /// Sockets, FIFOs, devices.
    Other,
}

impl EntryKind {
    /// `dir`, `file`, `symlink` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Dir => "dir",
            EntryKind::File => "file",
            EntryKind::Symlink => "symlink",
            EntryKind::Other => "other",
        }
    }
}

/// One entry of the filtered context.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WalkEntry {
    /// Relative to the context root, `/`-separated; the name's bytes as they are on disk.
    pub path: PathBuf,
    pub kind: EntryKind,
}

impl std::fmt::Display for WalkEntry {
    /// `<kind> <path>`, e.g. `dir foo` (bytes that are not UTF-8 shown as U+FFFD).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.as_str(), self.path.display())
    }
}

/// Errors from filtering or walking a build context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Patterns rejected by [`PatternMatcher::new`].
    #[error("invalid {which}patterns: [{}]: {source}", patterns.join(" "))]
    InvalidPatterns {
        /// `include` or `exclude`.
        which: &'static str,
        patterns: Vec<String>,
        #[source]
        source: IgnoreError,
    },
    /// A pattern failed while matching (its generated regexp does not compile).
    #[error("failed to match {which}patterns: {source}")]
    Match {
        which: &'static str,
        #[source]
        source: IgnoreError,
    },
    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Compiled include/exclude patterns for one build context.
#[derive(Debug, Clone, Default)]
pub struct ContextFilter {
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
    /// No include pattern has wildcards (after dropping a trailing `/**` or `/*`).
    only_literal_includes: bool,
    /// No exclude exception has wildcards (same rule).
    only_literal_exceptions: bool,
}

/// Characters that make fsutil treat a pattern as a wildcard (Unix: `\` too).
const WILDCARD_CHARS: &[char] = &['*', '[', ']', '?', '^', '\\'];

fn without_trailing_glob(pattern: &str) -> &str {
    let p = pattern.strip_suffix("/**").unwrap_or(pattern);
    p.strip_suffix("/*").unwrap_or(p)
}

/// Whether any literal pattern of the given polarity lies at or under `dir`.
fn literal_under(matcher: &PatternMatcher, exclusions: bool, dir: &[u8]) -> bool {
    let mut dir_slash = dir.to_vec();
    dir_slash.push(b'/');
    matcher
        .patterns()
        .iter()
        .filter(|p| p.is_exclusion() == exclusions)
        .any(|p| {
            format!("{}/", without_trailing_glob(p.as_str()))
                .as_bytes()
                .starts_with(&dir_slash)
        })
}

fn only_literal(matcher: &PatternMatcher, exclusions: bool) -> bool {
    !matcher
        .patterns()
        .iter()
        .filter(|p| p.is_exclusion() == exclusions)
        .any(|p| without_trailing_glob(p.as_str()).contains(WILDCARD_CHARS))
}

impl ContextFilter {
    /// Compile the patterns. Empty lists mean "no filter" on that side.
    pub fn new(opts: &WalkOptions) -> Result<Self, ContextError> {
        let compile = |which: &'static str, patterns: &[String]| {
            if patterns.is_empty() {
                return Ok(None);
            }
            PatternMatcher::new(patterns).map(Some).map_err(|source| {
                ContextError::InvalidPatterns {
                    which,
                    patterns: patterns.to_vec(),
                    source,
                }
            })
        };
        let include = compile("include", &opts.include)?;
        let exclude = compile("exclude", &opts.exclude)?;
        Ok(ContextFilter {
            only_literal_includes: include.as_ref().is_none_or(|m| only_literal(m, false)),
            only_literal_exceptions: exclude.as_ref().is_none_or(|m| only_literal(m, true)),
            include,
            exclude,
        })
    }

    /// Whether `rel_path` (relative, `/`-separated, clean) is filtered out: not included, or
    /// excluded, with any parent directory counting (fsutil's `Open` check, which is what a
    /// `COPY` source lookup needs). The context root (`""` or `.`) is never excluded.
    ///
    /// This can differ from the walk for exceptions listed before the pattern they would undo
    /// (see [`PatternMatcher::matches_using_parent_results`]).
    pub fn is_excluded(&self, rel_path: impl AsRef<OsStr>) -> Result<bool, ContextError> {
        let rel_path = rel_path.as_ref();
        if rel_path.is_empty() || rel_path == "." {
            return Ok(false);
        }
        if let Some(include) = &self.include {
            let m = include
                .matches_or_parent_matches(rel_path)
                .map_err(|source| ContextError::Match {
                    which: "include",
                    source,
                })?;
            if !m {
                return Ok(true);
            }
        }
        if let Some(exclude) = &self.exclude {
            return exclude
                .matches_or_parent_matches(rel_path)
                .map_err(|source| ContextError::Match {
                    which: "exclude",
                    source,
                });
        }
        Ok(false)
    }

    /// Bytes that identify the patterns (polarity and cleaned text, in order): two filters with
    /// the same fingerprint keep the same paths. Cached digests are keyed by it.
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (tag, matcher) in [(b'i', &self.include), (b'e', &self.exclude)] {
            out.push(tag);
            for p in matcher.iter().flat_map(|m| m.patterns()) {
                out.push(if p.is_exclusion() { b'!' } else { b'=' });
                out.extend_from_slice(&(p.as_str().len() as u32).to_be_bytes());
                out.extend_from_slice(p.as_str().as_bytes());
            }
        }
        out
    }

    /// Walk `root` and return the kept entries in order.
    pub fn walk(&self, root: &Path) -> Result<Vec<WalkEntry>, ContextError> {
        let meta = fs::metadata(root).map_err(|source| ContextError::Io {
            path: root.to_path_buf(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(ContextError::NotADirectory {
                path: root.to_path_buf(),
            });
        }
        let root_entries = read_dir_sorted(root).map_err(io_error(root))?;
        let mut out = Vec::new();
        let mut stack = vec![Frame {
            rel: Vec::new(),
            entries: root_entries.into_iter(),
            include_info: MatchInfo::default(),
            exclude_info: MatchInfo::default(),
            reported: true,
        }];
        while let Some(top) = stack.last_mut() {
            let Some((name, kind)) = top.entries.next() else {
                stack.pop();
                continue;
            };
            let Some(parent) = stack.last() else { break };
            let rel = if parent.rel.is_empty() {
                name.into_vec()
            } else {
                let mut r = Vec::with_capacity(parent.rel.len() + 1 + name.len());
                r.extend_from_slice(&parent.rel);
                r.push(b'/');
                r.extend_from_slice(name.as_bytes());
                r
            };
            let is_dir = kind == EntryKind::Dir;
            let Some(decision) = self.decide(&rel, is_dir, parent)? else {
                continue; // pruned
            };
            if decision.keep {
                for frame in stack.iter_mut().filter(|f| !f.reported) {
                    out.push(WalkEntry {
                        path: PathBuf::from(OsStr::from_bytes(&frame.rel)),
                        kind: EntryKind::Dir,
                    });
                    frame.reported = true;
                }
                out.push(WalkEntry {
                    path: PathBuf::from(OsStr::from_bytes(&rel)),
                    kind,
                });
            }
            if is_dir {
                let abs = root.join(OsStr::from_bytes(&rel));
                match read_dir_sorted(&abs) {
                    Ok(entries) => stack.push(Frame {
                        rel,
                        entries: entries.into_iter(),
                        include_info: decision.include_info,
                        exclude_info: decision.exclude_info,
                        reported: decision.keep,
                    }),
                    Err(e) if is_gone(&e) => {}
                    Err(e) if !decision.keep && e.kind() == io::ErrorKind::PermissionDenied => {}
                    Err(e) => return Err(io_error(&abs)(e)),
                }
            }
        }
        Ok(out)
    }

    /// Keep / descend / prune for one entry; `None` prunes a directory.
    fn decide(
        &self,
        rel: &[u8],
        is_dir: bool,
        parent: &Frame,
    ) -> Result<Option<Decision>, ContextError> {
        let mut keep = true;
        let mut include_info = MatchInfo::default();
        let mut exclude_info = MatchInfo::default();
        if let Some(include) = &self.include {
            let (m, info) = include
                .matches_using_parent_results(OsStr::from_bytes(rel), &parent.include_info)
                .map_err(|source| ContextError::Match {
                    which: "include",
                    source,
                })?;
            include_info = info;
            if !m {
                if is_dir && self.only_literal_includes && !literal_under(include, false, rel) {
                    return Ok(None);
                }
                keep = false;
            }
        }
        if let Some(exclude) = &self.exclude {
            let (m, info) = exclude
                .matches_using_parent_results(OsStr::from_bytes(rel), &parent.exclude_info)
                .map_err(|source| ContextError::Match {
                    which: "exclude",
                    source,
                })?;
            exclude_info = info;
            if m {
                if is_dir
                    && self.only_literal_exceptions
                    && (!exclude.exclusions() || !literal_under(exclude, true, rel))
                {
                    return Ok(None);
                }
                keep = false;
            }
        }
        Ok(Some(Decision {
            keep,
            include_info,
            exclude_info,
        }))
    }
}

/// Walk `root` with the given patterns (see [`ContextFilter::walk`]).
pub fn walk(root: &Path, opts: &WalkOptions) -> Result<Vec<WalkEntry>, ContextError> {
    ContextFilter::new(opts)?.walk(root)
}

struct Frame {
    /// Relative path of this directory (empty for the root).
    rel: Vec<u8>,
    entries: std::vec::IntoIter<(OsString, EntryKind)>,
    include_info: MatchInfo,
    exclude_info: MatchInfo,
    /// Already in the output (or the root).
    reported: bool,
}

struct Decision {
    keep: bool,
    include_info: MatchInfo,
    exclude_info: MatchInfo,
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Vanished between listing and reading, or replaced by a non-directory: skipped, as fsutil does.
fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

/// The entries of one directory, sorted by name (byte order, as Go's `os.ReadDir`).
fn read_dir_sorted(dir: &Path) -> io::Result<Vec<(OsString, EntryKind)>> {
    let mut entries = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file_type = match entry.file_type() {
            Ok(t) => t,
            Err(e) if is_gone(&e) => continue,
            Err(e) => return Err(e),
        };
        let kind = if file_type.is_dir() {
            EntryKind::Dir
        } else if file_type.is_file() {
            EntryKind::File
        } else if file_type.is_symlink() {
            EntryKind::Symlink
        } else {
            EntryKind::Other
        };
        entries.push((entry.file_name(), kind));
    }
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(entries: &[&str]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        for e in entries {
            let path = dir.path().join(e.trim_end_matches('/'));
            if e.ends_with('/') {
                fs::create_dir_all(&path).expect("mkdir");
            } else {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).expect("mkdir");
                }
                fs::write(&path, b"x").expect("write");
            }
        }
        dir
    }

    fn run(root: &Path, include: &[&str], exclude: &[&str]) -> Vec<String> {
        let opts = WalkOptions {
            include: include.iter().map(|s| s.to_string()).collect(),
            exclude: exclude.iter().map(|s| s.to_string()).collect(),
        };
        walk(root, &opts)
            .expect("walk")
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn order_is_by_component() {
        let t = tree(&["foo/bar/bee", "foo2", "foo-x", "foo.d/a"]);
        assert_eq!(
            run(t.path(), &[], &[]),
            [
                "dir foo",
                "dir foo/bar",
                "file foo/bar/bee",
                "file foo-x",
                "dir foo.d",
                "file foo.d/a",
                "file foo2"
            ]
        );
    }

    #[test]
    fn exception_after_literal_parent_pattern() {
        // Upstream's walker keeps `foo/bar/x` excluded here (derived, see README §4.3) while
        // the `is_excluded` check (fsutil Open) lets it through.
        let t = tree(&["foo/bar/x", "foo/y"]);
        let excl = ["foo/bar", "!foo"];
        assert_eq!(run(t.path(), &[], &excl), ["dir foo", "file foo/y"]);
        let filter = ContextFilter::new(&WalkOptions {
            include: vec![],
            exclude: excl.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap();
        assert!(!filter.is_excluded("foo/bar/x").unwrap());
        assert!(!filter.is_excluded(".").unwrap());
    }

    #[test]
    fn excluded_dirs_pruned_or_descended() {
        let t = tree(&["a/keep", "a/drop", "b/c/keep", "b/c/other", "d/x"]);
        // Wildcard exception: everything is descended, parents appear lazily.
        assert_eq!(
            run(t.path(), &[], &["*", "!**/keep"]),
            ["dir a", "file a/keep", "dir b", "dir b/c", "file b/c/keep"]
        );
        // Literal exception under `b` only.
        assert_eq!(
            run(t.path(), &[], &["a", "b", "d", "!b/c/keep"]),
            ["dir b", "dir b/c", "file b/c/keep"]
        );
    }

    #[test]
    fn symlinks_are_not_followed() {
        let t = tree(&["real/f"]);
        std::os::unix::fs::symlink("real", t.path().join("link")).unwrap();
        assert_eq!(
            run(t.path(), &[], &[]),
            ["symlink link", "dir real", "file real/f"]
        );
    }

    #[test]
    fn names_are_bytes() {
        let t = tree(&["keep"]);
        let b = |s: &'static [u8]| OsStr::from_bytes(s);
        fs::write(t.path().join(b(b"caf\xe9")), b"x").unwrap();
        fs::create_dir(t.path().join(b(b"d\xff"))).unwrap();
        fs::write(t.path().join(b(b"d\xff/f")), b"x").unwrap();
        let paths = |exclude: &[&str]| -> Vec<Vec<u8>> {
            let opts = WalkOptions {
                include: vec![],
                exclude: exclude.iter().map(|s| s.to_string()).collect(),
            };
            walk(t.path(), &opts)
                .unwrap()
                .into_iter()
                .map(|e| e.path.into_os_string().into_vec())
                .collect()
        };
        assert_eq!(paths(&[]), [&b"caf\xe9"[..], b"d\xff", b"d\xff/f", b"keep"]);
        assert_eq!(paths(&["caf*", "d?"]), [b"keep"]);
        assert_eq!(paths(&["*", "!d?/f"]), [&b"d\xff"[..], b"d\xff/f"]);
        let filter = ContextFilter::new(&WalkOptions {
            include: vec![],
            exclude: vec!["d?".into()],
        })
        .unwrap();
        assert!(filter.is_excluded(b(b"d\xff/f")).unwrap());
        assert!(!filter.is_excluded(b(b"caf\xe9")).unwrap());
    }

    #[test]
    fn bad_patterns() {
        let t = tree(&["a"]);
        let err = walk(
            t.path(),
            &WalkOptions {
                include: vec![],
                exclude: vec!["a[".into()],
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid excludepatterns: [a[]: syntax error in pattern"
        );
        let err = walk(
            t.path(),
            &WalkOptions {
                include: vec![],
                exclude: vec!["[z-a]".into()],
            },
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to match excludepatterns: syntax error in pattern"
        );
    }
}
