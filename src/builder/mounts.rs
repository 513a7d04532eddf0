//! `RUN --mount=…` → the sandbox's extra mounts, as BuildKit's Dockerfile frontend and executor
//! do it.
//!
//! # API
//!
//! ```text
//! parse_secret_flag("id=ID,src=FILE" | "id=ID,env=VAR" | …) -> (id, SecretSource)
//! prepare(&[Mount], &MountContext, from_roots) -> PreparedMounts { mounts, env, skip, (guards) }
//! ```
//!
//! * [`parse_secret_flag`] reads one `kiln build --secret` value the way `docker buildx build
//!   --secret` does: CSV fields `id=`, `src=`/`source=`, `env=`, `type=file|env`; `type=env` makes
//!   `src=` name a variable; `env=` wins over `src=`; with only `id=ID` the secret comes from the
//!   variable `ID` when it is set, else from the file `ID`. A file must exist and hold at most
//!   500 KiB ([`MAX_SECRET_SIZE`]), as BuildKit's secret store checks up front.
//! * [`prepare`] turns the (already expanded and validated, see
//!   [`parse_mount`](crate::dockerfile::instructions::parse_mount)) mounts of one RUN into
//!   [`ExtraMount`]s for [`RunSpec::mounts`](crate::exec::RunSpec), environment variables for
//!   `env=` secrets, and the container paths the differ must leave out. It mounts what it needs
//!   in the caller's mount namespace (overlays for writable binds, a tmpfs for secret files)
//!   through [`crate::exec::mount`]; the [`PreparedMounts`] keeps those mounts and the cache locks
//!   alive until it is dropped, after the RUN.
//!
//! # Semantics
//!
//! Targets: a relative target is joined to the step's WORKDIR, every target is cleaned, and `/`
//! is refused (`invalid mount target "/"`); a missing target means the WORKDIR (BuildKit's
//! `filepath.Join("/", dir, target)`). Sources (`source=`) are paths inside their root (the build
//! context, a stage, an image, a cache): a leading `/` is allowed, symlinks are followed inside
//! the root, and a source whose `..` climbs above the root is an error (BuildKit clamps it).
//!
//! * `bind` (default): `source` (default the root) inside `from=` (a stage or image, through
//!   `from_roots`) or the build context. The context is seen as BuildKit receives it: paths
//!   `.dockerignore` excludes are absent (a filtered tree of hard links — copies across file
//!   systems — is built under `scratch` when anything under the source is excluded; otherwise
//!   the directory is bound as it is). Read-only unless `rw`; with `rw`, writes are discarded: a
//!   directory gets an overlay (lower = the source, upper/work under `scratch`; a copy under
//!   `scratch` when the kernel refuses the overlay), a single file a copy under `scratch`.
//! * `cache`: one directory per cache under `cache_root`, named by the SHA-256 of its key, with
//!   an `id` file (the key, for humans), a `lock` file and `data/` (what is mounted). The key is
//!   `id=` (default: the target as written, cleaned — BuildKit's `path.Clean(mount.Target)`),
//!   plus `uid`/`gid`/`mode` when any is given and `from`/`source` when `from=` is given: like
//!   BuildKit, whose cache key is the id plus the base snapshot those options make, a cache
//!   declared with other owners or another seed is another cache. A new cache is made in a
//!   temporary directory and renamed into place (concurrent builds agree on one): `data/` gets
//!   `mode` (default 0755) and `uid`/`gid` (default 0; best effort in a single-id user
//!   namespace), or, with `from=`, a copy of `source` in that stage/image (seeded once; later
//!   changes to the stage do not reach an existing cache). `source=` without `from=` mounts that
//!   subdirectory of the cache (created if missing). Sharing, with `flock` on `lock`:
//!   `shared` (default) holds a shared lock (concurrent shared users; waits while a `locked` or
//!   `private` user holds it), `locked` an exclusive lock (waits for every other user),
//!   `private` an exclusive lock if it is free right away, else a fresh cache under `scratch`,
//!   thrown away after the RUN. Locks are held until [`PreparedMounts`] drops and are taken in
//!   key order (not the Dockerfile's), so two RUNs locking the same caches cannot deadlock each
//!   other; two mounts of the same cache in one RUN share it. `ro` binds it read-only.
//! * `tmpfs`: [`ExtraMount::Tmpfs`], `size=` parsed like Docker's `units.RAMInBytes` (`64m`,
//!   `1.5g`, `512kib`, plain bytes; binary multiples); `size=0` means no limit.
//! * `secret`: the id is `source=`, else `id=`, else the base name of the target; the value comes
//!   from [`MountContext::secrets`]. Target: `target=` (joined to WORKDIR when relative), else
//!   `/run/secrets/<base name of id>` unless `env=` is given (then only the variable). The file
//!   is written to a tmpfs that [`prepare`] mounts under `scratch` (never on disk), with `mode`
//!   (default 0400) and `uid`/`gid` (default 0; best effort in a single-id user namespace), and
//!   bound read-only at the target. `env=VAR` adds `VAR=value` to [`PreparedMounts::env`]. A
//!   missing secret is an error with `required`; otherwise the file is not mounted and the
//!   variable is set to the empty string (both as BuildKit does). Secret values never appear in
//!   errors, in `Debug` output or in files outside that tmpfs.
//! * `ssh`: refused (no SSH agent forwarding).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::context::{ContextError, ContextFilter, EntryKind};
use crate::dockerfile::instructions::{Mount, split_csv};
use crate::exec::mount::{MountGuard, UpperDirs, mount_overlay, mount_tmpfs};
use crate::exec::{ExecError, ExtraMount};
use crate::layer::resolve_in_root;
use crate::pathclean::clean as go_clean;

/// The largest secret accepted (BuildKit's `MaxSecretSize`, 500 KiB).
pub const MAX_SECRET_SIZE: u64 = 500 * 1024;

/// Where the value of a `--secret` comes from. Read when a RUN mounts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The contents of a file.
    File(PathBuf),
    /// The value of an environment variable of the kiln process (unset: empty, as BuildKit).
    Env(String),
}

/// Errors of [`parse_secret_flag`] and [`prepare`]: each says what to change. None carries a
/// secret value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MountError {
    /// A `--secret` value that cannot be used.
    #[error("--secret {flag}: {reason}")]
    SecretFlag { flag: String, reason: String },
    /// A `--secret` value that is not valid CSV.
    #[error("--secret {flag}")]
    SecretCsv {
        flag: String,
        #[source]
        source: crate::dockerfile::instructions::CsvError,
    },
    /// A `--secret` file that cannot be read.
    #[error("--secret {flag}: cannot read {}", path.display())]
    SecretFile {
        flag: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The mount target is the root.
    #[error("invalid mount target {0:?}")]
    Target(String),
    /// `source=` climbs out of its root with `..`.
    #[error("mount source {path:?} points outside {place}")]
    SourceEscapes { path: String, place: String },
    /// `source=` does not exist.
    #[error("mount source {path:?} not found in {place}")]
    SourceNotFound { path: String, place: String },
    /// `source=` exists in the context directory but `.dockerignore` leaves it out.
    #[error("mount source {path:?} is excluded from the build context by .dockerignore")]
    SourceExcluded { path: String },
    /// `from=` names no stage or image the caller resolved.
    #[error("from={name}: not a stage or image of this build")]
    From { name: String },
    /// A `required` secret that was not passed.
    #[error(
        "secret {id}: not provided (pass --secret id={id},src=FILE or --secret id={id},env=VAR)"
    )]
    SecretMissing { id: String },
    /// A secret over [`MAX_SECRET_SIZE`].
    #[error("secret {id}: too big (the limit is 500 KiB)")]
    SecretTooBig { id: String },
    /// The file of a secret cannot be read.
    #[error("secret {id}: cannot read {}: {err}", path.display())]
    SecretRead {
        id: String,
        path: PathBuf,
        #[source]
        err: io::Error,
    },
    /// An `env=` secret whose value cannot be an environment variable.
    #[error("secret {id}: cannot be put in the environment variable {var:?}: {reason}")]
    SecretEnv {
        id: String,
        var: String,
        reason: &'static str,
    },
    /// `type=ssh`.
    #[error("RUN --mount=type=ssh is not supported by kiln (no SSH agent forwarding)")]
    Ssh,
    /// A `size=` Docker would refuse.
    #[error("invalid value for size: {0}")]
    Size(String),
    /// Something else kiln does not do, said in full.
    #[error("{0}")]
    Unsupported(String),
    /// A file operation on kiln's side failed.
    #[error("{what}: {err}")]
    Io {
        what: String,
        #[source]
        err: io::Error,
    },
    /// A mount kiln makes failed.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// Walking the build context failed.
    #[error("build context: {0}")]
    Context(#[from] ContextError),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> MountError {
    let what = what.into();
    move |err| MountError::Io { what, err }
}

/// Parses one `kiln build --secret` value (see the module docs).
pub fn parse_secret_flag(s: &str) -> Result<(String, SecretSource), MountError> {
    let bad = |reason: String| MountError::SecretFlag {
        flag: s.to_string(),
        reason,
    };
    let mut typ = None;
    let mut id = None;
    let mut src = None;
    let mut env = None;
    for field in split_csv(s).map_err(|source| MountError::SecretCsv {
        flag: s.to_string(),
        source,
    })? {
        let Some((key, value)) = field.split_once('=') else {
            return Err(bad(format!(
                "invalid field '{field}' must be a key=value pair"
            )));
        };
        let value = value.to_string();
        match key.to_ascii_lowercase().as_str() {
            "type" => {
                if value != "file" && value != "env" {
                    return Err(bad(format!(
                        "unsupported secret type {value:?} (file or env)"
                    )));
                }
                typ = Some(value);
            }
            "id" => id = Some(value),
            "source" | "src" => src = Some(value),
            "env" => env = Some(value),
            k => return Err(bad(format!("unexpected key '{k}' in '{field}'"))),
        }
    }
    if typ.as_deref() == Some("env") && env.is_none() {
        env = src.take();
    }
    let id = id
        .filter(|i| !i.is_empty())
        .ok_or_else(|| bad("missing id= (e.g. id=mytoken,src=./token.txt)".into()))?;
    let source = match (env.filter(|e| !e.is_empty()), src.filter(|f| !f.is_empty())) {
        (Some(e), _) => SecretSource::Env(e),
        (None, Some(f)) => SecretSource::File(PathBuf::from(f)),
        (None, None) if std::env::var_os(&id).is_some() => SecretSource::Env(id.clone()),
        (None, None) => SecretSource::File(PathBuf::from(&id)),
    };
    if let SecretSource::Env(var) = &source
        && (var.contains('=') || var.contains('\0'))
    {
        return Err(bad(format!("invalid environment variable name {var:?}")));
    }
    if let SecretSource::File(p) = &source {
        let md = fs::metadata(p).map_err(|source| MountError::SecretFile {
            flag: s.to_string(),
            path: p.to_path_buf(),
            source,
        })?;
        if !md.is_file() {
            return Err(bad(format!("{} is not a regular file", p.display())));
        }
        if md.len() > MAX_SECRET_SIZE {
            return Err(bad("too big (the limit is 500 KiB)".into()));
        }
    }
    Ok((id, source))
}

/// What [`prepare`] needs to know about the build and the step.
#[derive(Debug, Clone, Copy)]
pub struct MountContext<'a> {
    /// An empty directory for this RUN's temporary things, on the store's file system. The
    /// caller deletes it after the RUN, after dropping the [`PreparedMounts`].
    pub scratch: &'a Path,
    /// `<store>/cache-mounts`: persisted cache mounts (created if missing).
    pub cache_root: &'a Path,
    /// The build context directory.
    pub context: &'a Path,
    /// The `.dockerignore` rules: what they exclude is not visible in a context bind mount.
    pub filter: &'a ContextFilter,
    /// The `--secret` values by id.
    pub secrets: &'a BTreeMap<String, SecretSource>,
    /// The step's WORKDIR (absolute): relative targets resolve against it.
    pub workdir: &'a str,
    /// A single-id user namespace: changing owners to other ids fails, so it is best effort.
    pub single_id: bool,
}

/// The mounts of one RUN, ready for the sandbox. Keep it alive while the RUN runs; dropping it
/// unmounts what [`prepare`] mounted and releases the cache locks. Then delete `scratch`.
#[must_use = "dropping it unmounts the RUN's mounts and releases cache locks"]
#[derive(Default)]
pub struct PreparedMounts {
    /// For [`RunSpec::mounts`](crate::exec::RunSpec), in the Dockerfile's order.
    pub mounts: Vec<ExtraMount>,
    /// `env=` secrets: add each `NAME=value` to the command's environment (after the step's
    /// own, so they win). The values are secrets: never log them or put them in cache keys.
    pub env: Vec<(String, String)>,
    /// Absolute container paths of the mount targets, for
    /// [`DiffOptions::skip`](crate::layer::DiffOptions).
    pub skip: Vec<PathBuf>,
    /// Released in reverse order on drop.
    guards: Vec<Guard>,
}

enum Guard {
    Mount(#[allow(dead_code)] MountGuard),
    Lock(#[allow(dead_code)] File),
}

impl Drop for PreparedMounts {
    fn drop(&mut self) {
        while let Some(g) = self.guards.pop() {
            drop(g);
        }
    }
}

impl fmt::Debug for PreparedMounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedMounts")
            .field("mounts", &self.mounts)
            .field(
                "env",
                &self
                    .env
                    .iter()
                    .map(|(k, _)| format!("{k}=****"))
                    .collect::<Vec<_>>(),
            )
            .field("skip", &self.skip)
            .field("guards", &self.guards.len())
            .finish()
    }
}

/// Resolves a mount target: relative → joined to `workdir`; cleaned; `/` refused.
pub fn resolve_target(target: Option<&str>, workdir: &str) -> Result<String, MountError> {
    let t = target.unwrap_or("");
    let joined = if t.starts_with('/') {
        t.to_string()
    } else {
        format!("/{workdir}/{t}")
    };
    let clean = go_clean(&joined);
    if clean == "/" {
        return Err(MountError::Target(clean));
    }
    Ok(clean)
}

/// Docker's `units.RAMInBytes`: a number (decimals allowed) and an optional binary suffix
/// `k`, `m`, `g`, `t`, `p` (any case, optionally followed by `b` or `ib`), or `b`.
pub fn parse_size(s: &str) -> Result<u64, MountError> {
    let bad = || MountError::Size(s.to_string());
    let sep = s
        .rfind(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')
        .ok_or_else(bad)?;
    let (num, sfx) = if s.as_bytes()[sep] == b' ' {
        (&s[..sep], &s[sep + 1..])
    } else {
        (&s[..=sep], &s[sep + 1..])
    };
    let size: f64 = num.parse().map_err(|_| bad())?;
    if !size.is_finite() || size < 0.0 {
        return Err(bad());
    }
    let sfx = sfx.to_ascii_lowercase();
    let mul: f64 = match sfx.as_bytes() {
        [] | [b'b'] => 1.0,
        [u] | [u, b'b'] | [u, b'i', b'b'] => match u {
            b'k' => 1024f64,
            b'm' => 1024f64.powi(2),
            b'g' => 1024f64.powi(3),
            b't' => 1024f64.powi(4),
            b'p' => 1024f64.powi(5),
            _ => return Err(bad()),
        },
        _ => return Err(bad()),
    };
    Ok((size * mul) as u64)
}

/// Prepares the mounts of one RUN (see the module docs). `from_roots` maps each `from=` name
/// to the root directory of the stage or image it names (a view the caller keeps mounted while
/// the RUN runs).
pub fn prepare(
    mounts: &[Mount],
    cx: &MountContext<'_>,
    from_roots: &BTreeMap<String, PathBuf>,
) -> Result<PreparedMounts, MountError> {
    let mut p = Preparer {
        cx,
        out: PreparedMounts::default(),
        secret_dir: None,
        secret_files: mounts.iter().filter(|m| m.kind == "secret").count(),
        caches: HashMap::new(),
        slots: vec![None; mounts.len()],
        current: 0,
    };
    if mounts.iter().any(|m| m.kind == "ssh") {
        return Err(MountError::Ssh);
    }
    // Caches first, in key order: two RUNs locking the same caches always lock them in the
    // same order, so they cannot deadlock each other.
    let mut order: Vec<usize> = (0..mounts.len()).collect();
    order.sort_by_cached_key(|&i| {
        let m = &mounts[i];
        (
            m.kind != "cache",
            if m.kind == "cache" {
                cache_key(m)
            } else {
                String::new()
            },
            i,
        )
    });
    for i in order {
        let m = &mounts[i];
        p.current = i;
        match m.kind.as_str() {
            "bind" => p.bind(i, m, from_roots)?,
            "cache" => p.cache(i, m, from_roots)?,
            "tmpfs" => p.tmpfs(m)?,
            "secret" => p.secret(i, m)?,
            other => {
                return Err(MountError::Unsupported(format!(
                    "unsupported mount type {other:?}"
                )));
            }
        }
    }
    // In the Dockerfile's order (a later mount may cover an earlier one).
    let mut out = std::mem::take(&mut p.out);
    out.mounts = p.slots.drain(..).flatten().collect();
    out.skip = out
        .mounts
        .iter()
        .map(|m| match m {
            ExtraMount::Bind { dst, .. } | ExtraMount::Tmpfs { dst, .. } => PathBuf::from(dst),
        })
        .collect();
    Ok(out)
}

struct Preparer<'c, 'a> {
    cx: &'c MountContext<'a>,
    out: PreparedMounts,
    /// The tmpfs for secret files, once mounted.
    secret_dir: Option<PathBuf>,
    /// How many secret mounts this RUN has (sizes the tmpfs).
    secret_files: usize,
    /// Cache key → the directory already acquired in this RUN.
    caches: HashMap<String, PathBuf>,
    /// The mount of each `--mount`, by index (a secret may have none).
    slots: Vec<Option<ExtraMount>>,
    /// The index being prepared.
    current: usize,
}

/// The identity of a cache mount (see the module docs): also the contents of its `id` file.
pub(super) fn cache_key(m: &Mount) -> String {
    let id = cache_id(m);
    let mut key = format!("id={id}\n");
    if m.mode.is_some() || m.uid.is_some() || m.gid.is_some() {
        key.push_str(&format!(
            "uid={}\ngid={}\nmode={:o}\n",
            m.uid.unwrap_or(0),
            m.gid.unwrap_or(0),
            m.mode.unwrap_or(0o755) & 0o7777
        ));
    }
    if let Some(name) = &m.from {
        let source = m.source.as_deref().unwrap_or("");
        key.push_str(&format!(
            "from={name}\nsource={}\n",
            go_clean(&format!("/{source}"))
        ));
    }
    key
}

/// `id=`, else the target as written, cleaned (BuildKit's `path.Clean(mount.Target)`).
fn cache_id(m: &Mount) -> String {
    m.id.clone()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| go_clean(m.target.as_deref().unwrap_or("")))
}

/// `source=` → a clean relative path inside its root (`""` for the root itself).
fn source_rel(source: &str, place: &str) -> Result<String, MountError> {
    let c = go_clean(source);
    if c == ".." || c.starts_with("../") {
        return Err(MountError::SourceEscapes {
            path: source.to_string(),
            place: place.to_string(),
        });
    }
    let r = c.trim_start_matches('/');
    Ok(if r == "." { "" } else { r }.to_string())
}

/// Go's `path.Base`.
fn go_base(p: &str) -> String {
    if p.is_empty() {
        return ".".into();
    }
    let t = p.trim_end_matches('/');
    if t.is_empty() {
        return "/".into();
    }
    t.rsplit('/').next().unwrap_or(t).to_string()
}

fn shown(source: &str) -> String {
    if source.is_empty() {
        ".".into()
    } else {
        source.to_string()
    }
}

impl Preparer<'_, '_> {
    fn dir_for(&self, i: usize) -> Result<PathBuf, MountError> {
        let d = self.cx.scratch.join(format!("m{i}"));
        fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
        Ok(d)
    }

    fn push(&mut self, m: ExtraMount) {
        self.slots[self.current] = Some(m);
    }

    /// The root of `from=NAME` and `source` resolved inside it (must exist).
    fn source_in_from(
        &self,
        name: &str,
        source: &str,
        from_roots: &BTreeMap<String, PathBuf>,
    ) -> Result<(PathBuf, fs::Metadata), MountError> {
        let place = format!("stage or image {name:?}");
        let rel = source_rel(source, &place)?;
        let root = from_roots.get(name).ok_or_else(|| MountError::From {
            name: name.to_string(),
        })?;
        let path = resolve_in_root(root, Path::new(&rel), true)
            .map_err(io_err(format!("resolve {source:?} in {place}")))?;
        match fs::metadata(&path) {
            Ok(md) => Ok((path, md)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Err(MountError::SourceNotFound {
                    path: shown(source),
                    place,
                })
            }
            Err(e) => Err(io_err(format!("stat {}", path.display()))(e)),
        }
    }

    fn bind(
        &mut self,
        i: usize,
        m: &Mount,
        from_roots: &BTreeMap<String, PathBuf>,
    ) -> Result<(), MountError> {
        let target = resolve_target(m.target.as_deref(), self.cx.workdir)?;
        let source = m.source.as_deref().unwrap_or("");
        let (path, is_dir) = match &m.from {
            Some(name) => {
                let (p, md) = self.source_in_from(name, source, from_roots)?;
                (p, md.is_dir())
            }
            None => self.context_source(i, source)?,
        };
        let src = if m.read_only {
            path
        } else {
            self.writable(i, &path, is_dir)?
        };
        self.push(ExtraMount::Bind {
            src,
            dst: target,
            readonly: m.read_only,
        });
        Ok(())
    }

    /// `source` in the build context, as BuildKit would receive the context: a path
    /// `.dockerignore` excludes is not there, nor is anything it excludes below a directory.
    fn context_source(&self, i: usize, source: &str) -> Result<(PathBuf, bool), MountError> {
        let place = "the build context";
        let rel = source_rel(source, place)?;
        let ctx = self.cx.context;
        let resolved = resolve_in_root(ctx, Path::new(&rel), true)
            .map_err(io_err(format!("resolve {source:?} in {place}")))?;
        let md = match fs::metadata(&resolved) {
            Ok(md) => md,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                return Err(MountError::SourceNotFound {
                    path: shown(source),
                    place: place.into(),
                });
            }
            Err(e) => return Err(io_err(format!("stat {}", resolved.display()))(e)),
        };
        // Names are bytes: the resolved path need not be UTF-8.
        let rel_resolved = resolved
            .strip_prefix(ctx)
            .map(Path::to_path_buf)
            .map_err(|_| {
                MountError::Unsupported(format!(
                    "mount source {source:?}: resolves outside the build context"
                ))
            })?;
        let kept = self.cx.filter.walk(ctx)?;
        if !rel_resolved.as_os_str().is_empty() && !kept.iter().any(|e| e.path == rel_resolved) {
            return Err(MountError::SourceExcluded {
                path: shown(source),
            });
        }
        if !md.is_dir() {
            return Ok((resolved, false));
        }
        // Component-wise: `a` is not under `a-b`.
        let under: Vec<_> = kept
            .iter()
            .filter(|e| e.path != rel_resolved && e.path.starts_with(&rel_resolved))
            .collect();
        let all = ContextFilter::default().walk(&resolved)?.len();
        if under.len() == all {
            // Nothing below is excluded: the directory itself is the view.
            return Ok((resolved, true));
        }
        let tree = self.dir_for(i)?.join("context");
        fs::create_dir(&tree).map_err(io_err(format!("create {}", tree.display())))?;
        let mut dirs = vec![(tree.clone(), md)];
        for e in under {
            let src = ctx.join(&e.path);
            let dst = tree.join(e.path.strip_prefix(&rel_resolved).unwrap_or(&e.path));
            let md = match fs::symlink_metadata(&src) {
                Ok(md) => md,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(format!("stat {}", src.display()))(e)),
            };
            let r = match e.kind {
                EntryKind::Dir => fs::create_dir(&dst).map(|()| dirs.push((dst.clone(), md))),
                EntryKind::File => {
                    fs::hard_link(&src, &dst).or_else(|_| copy_file(&src, &dst, &md))
                }
                EntryKind::Symlink => fs::read_link(&src)
                    .and_then(|t| std::os::unix::fs::symlink(t, &dst))
                    .map(|()| set_meta(&dst, &md)),
                // Sockets, FIFOs and devices have no place in a bind of sources.
                EntryKind::Other => Ok(()),
            };
            r.map_err(io_err(format!(
                "build the filtered view of {} at {}",
                src.display(),
                dst.display()
            )))?;
        }
        for (d, md) in dirs.iter().rev() {
            set_meta(d, md);
        }
        Ok((tree, true))
    }

    /// A writable view of `path` whose changes are thrown away after the RUN.
    fn writable(&mut self, i: usize, path: &Path, is_dir: bool) -> Result<PathBuf, MountError> {
        let base = self.dir_for(i)?.join("rw");
        fs::create_dir_all(&base).map_err(io_err(format!("create {}", base.display())))?;
        if !is_dir {
            let f = base.join("file");
            let md = fs::metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
            copy_file(path, &f, &md).map_err(io_err(format!(
                "copy {} to {}",
                path.display(),
                f.display()
            )))?;
            return Ok(f);
        }
        let [upper, work, merged, empty] =
            ["upper", "work", "merged", "empty"].map(|d| base.join(d));
        for d in [&upper, &work, &merged, &empty] {
            fs::create_dir(d).map_err(io_err(format!("create {}", d.display())))?;
        }
        match mount_overlay(
            &[path.to_path_buf()],
            Some(UpperDirs {
                upper: &upper,
                work: &work,
            }),
            &empty,
            &merged,
        ) {
            Ok(g) => {
                self.out.guards.push(Guard::Mount(g));
                Ok(merged)
            }
            Err(_) => {
                // No overlay here (e.g. the store is itself on overlayfs): a private copy.
                let copy = base.join("copy");
                copy_tree(path, &copy).map_err(io_err(format!(
                    "copy {} to {}",
                    path.display(),
                    copy.display()
                )))?;
                Ok(copy)
            }
        }
    }

    fn tmpfs(&mut self, m: &Mount) -> Result<(), MountError> {
        let target = resolve_target(m.target.as_deref(), self.cx.workdir)?;
        let size = match m.size.as_deref() {
            None => None,
            Some(s) => Some(parse_size(s)?).filter(|&n| n > 0),
        };
        self.push(ExtraMount::Tmpfs { dst: target, size });
        Ok(())
    }

    fn cache(
        &mut self,
        i: usize,
        m: &Mount,
        from_roots: &BTreeMap<String, PathBuf>,
    ) -> Result<(), MountError> {
        let target = resolve_target(m.target.as_deref(), self.cx.workdir)?;
        let id = cache_id(m);
        let mode = m.mode.unwrap_or(0o755) & 0o7777;
        let uid = m.uid.unwrap_or(0) as u32;
        let gid = m.gid.unwrap_or(0) as u32;
        let owner_set = m.mode.is_some() || m.uid.is_some() || m.gid.is_some();
        let source = m.source.as_deref().unwrap_or("");
        let (seed, sub) = match &m.from {
            Some(name) => {
                let (p, md) = self.source_in_from(name, source, from_roots)?;
                if !md.is_dir() {
                    return Err(MountError::Unsupported(format!(
                        "cache mount source {:?} in {name:?} is not a directory",
                        shown(source)
                    )));
                }
                (Some(p), String::new())
            }
            None => (None, source_rel(source, "the cache")?),
        };
        let key = cache_key(m);
        let single_id = self.cx.single_id;
        let init = |data: &Path| -> Result<(), MountError> {
            match &seed {
                Some(src) => copy_tree(src, data)
                    .map_err(io_err(format!("seed cache {id:?} from {}", src.display())))?,
                None => {
                    fs::create_dir(data).map_err(io_err(format!("create {}", data.display())))?
                }
            }
            if seed.is_none() || owner_set {
                chown_path(data, uid, gid, single_id)?;
                fs::set_permissions(data, fs::Permissions::from_mode(mode))
                    .map_err(io_err(format!("chmod {}", data.display())))?;
            }
            Ok(())
        };
        let data = match self.caches.get(&key) {
            Some(d) => d.clone(),
            None => {
                let sharing = m.sharing.as_deref().unwrap_or("shared");
                let entry = ensure_cache_entry(self.cx.cache_root, &key, &init)?;
                let lock_path = entry.join("lock");
                let lock = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&lock_path)
                    .map_err(io_err(format!("open {}", lock_path.display())))?;
                use rustix::fs::FlockOperation as Op;
                let locked = match sharing {
                    "locked" => flock(&lock, Op::LockExclusive)?,
                    "private" => flock(&lock, Op::NonBlockingLockExclusive)?,
                    _ => flock(&lock, Op::LockShared)?,
                };
                let data = if locked {
                    self.out.guards.push(Guard::Lock(lock));
                    entry.join("data")
                } else {
                    // private, and someone else uses it: a fresh cache for this RUN only.
                    let d = self.dir_for(i)?.join("cache");
                    init(&d)?;
                    d
                };
                self.caches.insert(key, data.clone());
                data
            }
        };
        let src = if sub.is_empty() {
            data
        } else {
            let p = resolve_in_root(&data, Path::new(&sub), true)
                .map_err(io_err(format!("resolve {source:?} in cache {id:?}")))?;
            fs::create_dir_all(&p).map_err(io_err(format!("create {}", p.display())))?;
            p
        };
        self.push(ExtraMount::Bind {
            src,
            dst: target,
            readonly: m.read_only,
        });
        Ok(())
    }

    fn secret(&mut self, i: usize, m: &Mount) -> Result<(), MountError> {
        let nonempty = |o: &Option<String>| o.clone().filter(|s| !s.is_empty());
        let id = match (nonempty(&m.source), nonempty(&m.id), nonempty(&m.target)) {
            (Some(s), _, _) | (None, Some(s), _) => s,
            (None, None, Some(t)) => go_base(&t),
            (None, None, None) => {
                return Err(MountError::Unsupported(
                    "invalid secret mount: one of source, target required".into(),
                ));
            }
        };
        let target = match nonempty(&m.target) {
            Some(t) => Some(resolve_target(Some(&t), self.cx.workdir)?),
            None if m.env.is_none() => Some(resolve_target(
                Some(&format!("/run/secrets/{}", go_base(&id))),
                "/",
            )?),
            None => None,
        };
        if let Some(var) = &m.env
            && (var.is_empty() || var.contains('=') || var.contains('\0'))
        {
            return Err(MountError::Unsupported(format!(
                "secret {id}: invalid environment variable name {var:?}"
            )));
        }
        let mut value = match self.cx.secrets.get(&id) {
            Some(src) => Some(read_secret(&id, src)?),
            None if m.required => return Err(MountError::SecretMissing { id }),
            None => None,
        };
        let result = self.place_secret(i, &id, m, target, value.as_deref());
        if let Some(v) = value.as_mut() {
            v.fill(0);
        }
        result
    }

    fn place_secret(
        &mut self,
        i: usize,
        id: &str,
        m: &Mount,
        target: Option<String>,
        value: Option<&[u8]>,
    ) -> Result<(), MountError> {
        if let Some(var) = &m.env {
            let v = match value {
                None => String::new(),
                Some(b) => {
                    let err = |reason| MountError::SecretEnv {
                        id: id.to_string(),
                        var: var.clone(),
                        reason,
                    };
                    if b.contains(&0) {
                        return Err(err("the value contains a NUL byte"));
                    }
                    String::from_utf8(b.to_vec()).map_err(|_| err("the value is not UTF-8"))?
                }
            };
            self.out.env.push((var.clone(), v));
        }
        let (Some(target), Some(value)) = (target, value) else {
            return Ok(());
        };
        let dir = self.secret_dir()?;
        let file = dir.join(i.to_string());
        let describe = || format!("write secret {id} to {}", file.display());
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .map_err(io_err(describe()))?;
        f.write_all(value).map_err(io_err(describe()))?;
        drop(f);
        chown_path(
            &file,
            m.uid.unwrap_or(0) as u32,
            m.gid.unwrap_or(0) as u32,
            self.cx.single_id,
        )?;
        fs::set_permissions(
            &file,
            fs::Permissions::from_mode(m.mode.unwrap_or(0o400) & 0o7777),
        )
        .map_err(io_err(format!("chmod {}", file.display())))?;
        self.push(ExtraMount::Bind {
            src: file,
            dst: target,
            readonly: true,
        });
        Ok(())
    }

    /// The tmpfs secret files go to, mounted on first use.
    fn secret_dir(&mut self) -> Result<PathBuf, MountError> {
        if let Some(d) = &self.secret_dir {
            return Ok(d.clone());
        }
        let d = self.cx.scratch.join("secrets");
        fs::create_dir_all(&d).map_err(io_err(format!("create {}", d.display())))?;
        let size = (self.secret_files.max(1) as u64) * (MAX_SECRET_SIZE + 4096) + 64 * 1024;
        let g = mount_tmpfs(&d, 0o700, Some(size))?;
        self.out.guards.push(Guard::Mount(g));
        self.secret_dir = Some(d.clone());
        Ok(d)
    }
}

fn read_secret(id: &str, src: &SecretSource) -> Result<Vec<u8>, MountError> {
    let too_big = || MountError::SecretTooBig { id: id.to_string() };
    let buf = match src {
        SecretSource::Env(var) => std::env::var_os(var)
            .map(|v| v.into_vec())
            .unwrap_or_default(),
        SecretSource::File(p) => {
            let read_err = |err| MountError::SecretRead {
                id: id.to_string(),
                path: p.clone(),
                err,
            };
            let f = File::open(p).map_err(read_err)?;
            let mut buf = Vec::new();
            f.take(MAX_SECRET_SIZE + 1)
                .read_to_end(&mut buf)
                .map_err(read_err)?;
            buf
        }
    };
    if buf.len() as u64 > MAX_SECRET_SIZE {
        return Err(too_big());
    }
    Ok(buf)
}

/// `flock` (retried on EINTR); `Ok(false)` when a non-blocking lock is taken by someone else.
fn flock(file: &File, op: rustix::fs::FlockOperation) -> Result<bool, MountError> {
    loop {
        match rustix::fs::flock(file, op) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
            Err(e) => return Err(io_err("lock a cache mount")(e.into())),
        }
    }
}

/// `<cache_root>/<sha256(key)>`, made (atomically, by rename) with `init(data)` if missing.
fn ensure_cache_entry(
    cache_root: &Path,
    key: &str,
    init: &dyn Fn(&Path) -> Result<(), MountError>,
) -> Result<PathBuf, MountError> {
    fs::create_dir_all(cache_root).map_err(io_err(format!("create {}", cache_root.display())))?;
    let entry = cache_root.join(hex::encode(Sha256::digest(key.as_bytes())));
    if entry.join("data").is_dir() {
        return Ok(entry);
    }
    let tmp = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(cache_root)
        .map_err(io_err(format!(
            "create a directory in {}",
            cache_root.display()
        )))?;
    init(&tmp.path().join("data"))?;
    fs::write(tmp.path().join("id"), key)
        .map_err(io_err(format!("write {}", tmp.path().join("id").display())))?;
    File::create(tmp.path().join("lock")).map_err(io_err(format!(
        "create {}",
        tmp.path().join("lock").display()
    )))?;
    let tmp = tmp.keep();
    match fs::rename(&tmp, &entry) {
        Ok(()) => Ok(entry),
        Err(e) => {
            let _ = crate::layer::remove_tree_in_place(&tmp);
            if entry.join("data").is_dir() {
                // Another build made it first.
                Ok(entry)
            } else {
                Err(io_err(format!(
                    "create cache directory {}",
                    entry.display()
                ))(e))
            }
        }
    }
}

/// `chown`; errors are ignored in a single-id user namespace (only one id exists there).
fn chown_path(p: &Path, uid: u32, gid: u32, best_effort: bool) -> Result<(), MountError> {
    match std::os::unix::fs::lchown(p, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(_) if best_effort => Ok(()),
        Err(e) => Err(io_err(format!("chown {uid}:{gid} {}", p.display()))(e)),
    }
}

/// Owner (best effort), mode (not for symlinks) and times of `md` onto `p`.
fn set_meta(p: &Path, md: &fs::Metadata) {
    let _ = std::os::unix::fs::lchown(p, Some(md.uid()), Some(md.gid()));
    if !md.file_type().is_symlink() {
        let _ = fs::set_permissions(p, fs::Permissions::from_mode(md.mode() & 0o7777));
    }
    let ts = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: md.atime(),
            tv_nsec: md.atime_nsec() as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: md.mtime(),
            tv_nsec: md.mtime_nsec() as _,
        },
    };
    let _ = rustix::fs::utimensat(
        rustix::fs::CWD,
        p,
        &ts,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    );
}

fn copy_file(src: &Path, dst: &Path, md: &fs::Metadata) -> io::Result<()> {
    fs::copy(src, dst)?;
    set_meta(dst, md);
    Ok(())
}

/// A private copy of the directory tree `src` at `dst` (which must not exist), as a RUN needs
/// it: [`crate::snapshot::copy_tree_best_effort`].
fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    // The I/O error itself, as the callers' messages name the copy.
    crate::snapshot::copy_tree_best_effort(src, dst).map_err(|e| match e {
        crate::layer::LayerError::Entry { source, .. } => source,
        e => io::Error::other(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::context::WalkOptions;

    fn is_root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Inside `unshare -Ur` (one id mapped): owners other than 0 cannot be set.
    fn single_id() -> bool {
        let map = fs::read_to_string("/proc/self/uid_map").unwrap_or_default();
        let lines: Vec<_> = map.lines().collect();
        lines.len() == 1 && lines[0].split_whitespace().nth(2) == Some("1")
    }

    /// Runs `f` on a thread of its own with a private mount namespace (nothing it mounts is
    /// visible to the host, and everything goes with the thread).
    fn in_mount_ns<F: FnOnce() + Send + 'static>(f: F) {
        std::thread::spawn(move || {
            crate::exec::mount::private_mount_namespace().expect("private mount namespace");
            f();
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    }

    struct Fixture {
        dir: tempfile::TempDir,
        filter: ContextFilter,
        secrets: BTreeMap<String, SecretSource>,
    }

    impl Fixture {
        fn new(ignore: &[&str]) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            for d in ["scratch", "cache", "context"] {
                fs::create_dir(dir.path().join(d)).unwrap();
            }
            Fixture {
                dir,
                filter: ContextFilter::new(&WalkOptions {
                    include: vec![],
                    exclude: ignore.iter().map(|s| s.to_string()).collect(),
                })
                .unwrap(),
                secrets: BTreeMap::new(),
            }
        }
        fn p(&self, rel: &str) -> PathBuf {
            self.dir.path().join(rel)
        }
        fn cx(&self, scratch: &str, workdir: &'static str) -> MountContext<'_> {
            let scratch = self.p(scratch);
            fs::create_dir_all(&scratch).unwrap();
            MountContext {
                scratch: Box::leak(scratch.into_boxed_path()),
                cache_root: Box::leak(self.p("cache").into_boxed_path()),
                context: Box::leak(self.p("context").into_boxed_path()),
                filter: &self.filter,
                secrets: &self.secrets,
                workdir,
                single_id: single_id(),
            }
        }
    }

    fn mount(spec: &str) -> Mount {
        crate::dockerfile::instructions::parse_mount(spec).unwrap()
    }

    fn bind_src(pm: &PreparedMounts, n: usize) -> (PathBuf, String, bool) {
        match &pm.mounts[n] {
            ExtraMount::Bind { src, dst, readonly } => (src.clone(), dst.clone(), *readonly),
            m => panic!("not a bind: {m:?}"),
        }
    }

    #[test]
    fn secret_flags_like_buildx() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("tok");
        fs::write(&f, "s3cr3t").unwrap();
        let fs_ = f.to_str().unwrap();
        assert_eq!(
            parse_secret_flag(&format!("id=a,src={fs_}")).unwrap(),
            ("a".into(), SecretSource::File(f.clone()))
        );
        assert_eq!(
            parse_secret_flag(&format!("id=a,source={fs_},type=file")).unwrap(),
            ("a".into(), SecretSource::File(f.clone()))
        );
        assert_eq!(
            parse_secret_flag("id=a,env=MY_VAR").unwrap(),
            ("a".into(), SecretSource::Env("MY_VAR".into()))
        );
        // type=env makes src= a variable name.
        assert_eq!(
            parse_secret_flag("type=env,id=a,src=MY_VAR").unwrap(),
            ("a".into(), SecretSource::Env("MY_VAR".into()))
        );
        // env= wins over src=.
        assert_eq!(
            parse_secret_flag(&format!("id=a,src={fs_},env=V")).unwrap(),
            ("a".into(), SecretSource::Env("V".into()))
        );
        // Quoted CSV field.
        assert_eq!(
            parse_secret_flag(&format!("\"id=a,b\",src={fs_}")).unwrap(),
            ("a,b".into(), SecretSource::File(f.clone()))
        );
        // id alone: the variable when set, else the file of that name.
        assert_eq!(
            parse_secret_flag("id=PATH").unwrap(),
            ("PATH".into(), SecretSource::Env("PATH".into()))
        );
        let e = parse_secret_flag("id=kiln-no-such-var-or-file-42")
            .unwrap_err()
            .to_string();
        assert!(e.contains("cannot read kiln-no-such-var-or-file-42"), "{e}");
        for (bad, msg) in [
            ("src=/x", "missing id="),
            ("id=a,bogus=1", "unexpected key 'bogus'"),
            ("id=a,type=ssh", "unsupported secret type"),
            ("id=a,src", "must be a key=value pair"),
            (
                "id=a,src=/nonexistent/kiln",
                "cannot read /nonexistent/kiln",
            ),
            ("id=a,src=/", "not a regular file"),
            ("\"id=a", "quoted-field"),
        ] {
            let e = crate::error_chain(&parse_secret_flag(bad).unwrap_err());
            assert!(e.contains(msg), "{bad}: {e}");
            assert!(e.starts_with(&format!("--secret {bad}: ")), "{e}");
        }
        let big = dir.path().join("big");
        fs::write(&big, vec![b'x'; MAX_SECRET_SIZE as usize + 1]).unwrap();
        let e = parse_secret_flag(&format!("id=b,src={}", big.display())).unwrap_err();
        assert!(e.to_string().contains("too big"), "{e}");
    }

    #[test]
    fn targets_resolve_against_workdir() {
        assert_eq!(resolve_target(Some("/a/b/"), "/w").unwrap(), "/a/b");
        assert_eq!(resolve_target(Some("x/./y"), "/w").unwrap(), "/w/x/y");
        assert_eq!(resolve_target(Some("../x"), "/w/v").unwrap(), "/w/x");
        assert_eq!(
            resolve_target(Some("../../.."), "/w")
                .unwrap_err()
                .to_string(),
            "invalid mount target \"/\""
        );
        assert_eq!(resolve_target(None, "/src").unwrap(), "/src");
        assert!(resolve_target(None, "/").is_err());
        assert!(resolve_target(Some("/"), "/w").is_err());
        assert!(resolve_target(Some("//."), "/w").is_err());
        assert_eq!(resolve_target(Some("c"), "").unwrap(), "/c");
    }

    #[test]
    fn sizes_like_docker_units() {
        for (s, n) in [
            ("0", 0),
            ("1024", 1024),
            ("64m", 64 << 20),
            ("64M", 64 << 20),
            ("64mb", 64 << 20),
            ("64MiB", 64 << 20),
            ("1.5g", 3 << 29),
            ("2 k", 2048),
            ("10b", 10),
            ("1t", 1 << 40),
        ] {
            assert_eq!(parse_size(s).unwrap(), n, "{s}");
        }
        for s in ["", "m", "-1", "1x", "1mm", "1kab", "1.2.3"] {
            assert!(parse_size(s).is_err(), "{s}");
        }
    }

    #[test]
    fn ssh_is_refused_and_tmpfs_maps() {
        let fx = Fixture::new(&[]);
        let cx = fx.cx("s", "/w");
        let e = prepare(&[mount("type=ssh")], &cx, &BTreeMap::new()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "RUN --mount=type=ssh is not supported by kiln (no SSH agent forwarding)"
        );
        let pm = prepare(
            &[
                mount("type=tmpfs,target=t,size=64m"),
                mount("type=tmpfs,target=/u"),
            ],
            &cx,
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            pm.mounts,
            vec![
                ExtraMount::Tmpfs {
                    dst: "/w/t".into(),
                    size: Some(64 << 20)
                },
                ExtraMount::Tmpfs {
                    dst: "/u".into(),
                    size: None
                }
            ]
        );
        assert_eq!(pm.skip, vec![PathBuf::from("/w/t"), PathBuf::from("/u")]);
        let e = prepare(
            &[mount("type=tmpfs,target=/t,size=lots")],
            &cx,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "invalid value for size: lots");
    }

    #[test]
    fn cache_dir_created_with_mode_and_owner_and_reused() {
        if !is_root() {
            eprintln!("SKIP cache_dir_created_with_mode_and_owner_and_reused: needs root");
            return;
        }
        let fx = Fixture::new(&[]);
        let cx = fx.cx("s", "/w");
        let m = mount("type=cache,target=/var/cache/x,uid=1234,gid=567,mode=0750");
        let pm = prepare(std::slice::from_ref(&m), &cx, &BTreeMap::new()).unwrap();
        let (src, dst, ro) = bind_src(&pm, 0);
        assert_eq!((dst.as_str(), ro), ("/var/cache/x", false));
        let md = fs::metadata(&src).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o750);
        if !single_id() {
            assert_eq!((md.uid(), md.gid()), (1234, 567));
        }
        assert!(src.starts_with(fx.p("cache")), "{}", src.display());
        let entry = src.parent().unwrap();
        assert_eq!(
            fs::read_to_string(entry.join("id")).unwrap(),
            "id=/var/cache/x\nuid=1234\ngid=567\nmode=750\n"
        );
        fs::write(src.join("kept"), "1").unwrap();
        drop(pm);
        // Same cache next time, its contents kept.
        let pm = prepare(std::slice::from_ref(&m), &cx, &BTreeMap::new()).unwrap();
        assert_eq!(bind_src(&pm, 0).0, src);
        assert!(src.join("kept").exists());
        // Defaults: 0755 root; the id defaults to the target as written; another id is another
        // cache; `ro` binds read-only.
        let pm2 = prepare(
            &[
                mount("type=cache,target=rel/dir"),
                mount("type=cache,target=/o,id=other,ro"),
            ],
            &cx,
            &BTreeMap::new(),
        )
        .unwrap();
        let (a, adst, _) = bind_src(&pm2, 0);
        let (b, _, bro) = bind_src(&pm2, 1);
        assert_eq!(adst, "/w/rel/dir");
        assert!(bro);
        let md = fs::metadata(&a).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (0, 0, 0o755));
        assert_eq!(
            fs::read_to_string(a.parent().unwrap().join("id")).unwrap(),
            "id=rel/dir\n"
        );
        assert_ne!(a, b);
        assert_ne!(a, src);
        // The cache root holds only the three entries (no temporary directories left).
        assert_eq!(fs::read_dir(fx.p("cache")).unwrap().count(), 3);
    }

    #[test]
    fn cache_source_subdir_and_from_seed() {
        let fx = Fixture::new(&[]);
        let cx = fx.cx("s", "/");
        let pm = prepare(
            &[mount("type=cache,target=/c,id=sub,source=a/b")],
            &cx,
            &BTreeMap::new(),
        )
        .unwrap();
        let (src, _, _) = bind_src(&pm, 0);
        assert!(
            src.ends_with("data/a/b") && src.is_dir(),
            "{}",
            src.display()
        );
        let e = prepare(
            &[mount("type=cache,target=/c,source=../x")],
            &cx,
            &BTreeMap::new(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "mount source \"../x\" points outside the cache"
        );

        let stage = fx.p("stage");
        fs::create_dir_all(stage.join("seed/d")).unwrap();
        fs::write(stage.join("seed/d/f"), "seeded").unwrap();
        std::os::unix::fs::symlink("/seed", stage.join("link")).unwrap();
        let from = BTreeMap::from([("build".to_string(), stage.clone())]);
        // Through a symlink inside the stage's root.
        let pm = prepare(
            &[mount("type=cache,target=/c,from=build,source=/link")],
            &cx,
            &from,
        )
        .unwrap();
        let (src, _, _) = bind_src(&pm, 0);
        assert_eq!(fs::read_to_string(src.join("d/f")).unwrap(), "seeded");
        fs::write(src.join("d/f"), "changed").unwrap();
        drop(pm);
        // Seeded once: the cache keeps its own contents.
        fs::write(stage.join("seed/d/f"), "reseeded?").unwrap();
        let pm = prepare(
            &[mount("type=cache,target=/c,from=build,source=/link")],
            &cx,
            &from,
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(bind_src(&pm, 0).0.join("d/f")).unwrap(),
            "changed"
        );
        let e = prepare(&[mount("type=cache,target=/c,from=nope")], &cx, &from).unwrap_err();
        assert_eq!(
            e.to_string(),
            "from=nope: not a stage or image of this build"
        );
        let e = prepare(
            &[mount("type=cache,target=/c,from=build,source=missing")],
            &cx,
            &from,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "mount source \"missing\" not found in stage or image \"build\""
        );
    }

    #[test]
    fn locked_cache_waits_for_the_holder() {
        let fx = Arc::new(Fixture::new(&[]));
        let m = mount("type=cache,target=/c,sharing=locked");
        let first = prepare(
            std::slice::from_ref(&m),
            &fx.cx("s1", "/"),
            &BTreeMap::new(),
        )
        .unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let second_src = Arc::new(Mutex::new(None));
        let t = {
            let (fx, done, second_src, m) =
                (fx.clone(), done.clone(), second_src.clone(), m.clone());
            std::thread::spawn(move || {
                let pm = prepare(
                    std::slice::from_ref(&m),
                    &fx.cx("s2", "/"),
                    &BTreeMap::new(),
                )
                .unwrap();
                done.store(true, Ordering::SeqCst);
                *second_src.lock().unwrap() = Some(bind_src(&pm, 0).0);
            })
        };
        std::thread::sleep(Duration::from_millis(400));
        assert!(
            !done.load(Ordering::SeqCst),
            "the second locked user did not wait"
        );
        let src = bind_src(&first, 0).0;
        drop(first);
        t.join().unwrap();
        assert!(done.load(Ordering::SeqCst));
        assert_eq!(second_src.lock().unwrap().clone(), Some(src));
    }

    #[test]
    fn shared_users_share_and_locked_in_one_run_does_not_deadlock() {
        let fx = Fixture::new(&[]);
        let m = mount("type=cache,target=/c,id=x");
        let a = prepare(
            std::slice::from_ref(&m),
            &fx.cx("s1", "/"),
            &BTreeMap::new(),
        )
        .unwrap();
        let b = prepare(
            std::slice::from_ref(&m),
            &fx.cx("s2", "/"),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(bind_src(&a, 0).0, bind_src(&b, 0).0);
        drop((a, b));
        let pm = prepare(
            &[
                mount("type=cache,target=/c,id=y,sharing=locked"),
                mount("type=cache,target=/d,id=y,sharing=locked"),
            ],
            &fx.cx("s3", "/"),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(bind_src(&pm, 0).0, bind_src(&pm, 1).0);
    }

    #[test]
    fn caches_are_locked_in_key_order_not_dockerfile_order() {
        // Two RUNs locking the same caches in opposite orders cannot deadlock: every RUN takes
        // the locks in key order. Seen here: with c2 held elsewhere, a RUN listing c2 then c1
        // has already taken c1 while it waits for c2.
        let fx = Arc::new(Fixture::new(&[]));
        let c2 = prepare(
            &[mount("type=cache,target=/x,id=c2,sharing=locked")],
            &fx.cx("s0", "/"),
            &BTreeMap::new(),
        )
        .unwrap();
        let t = {
            let fx = fx.clone();
            std::thread::spawn(move || {
                let pm = prepare(
                    &[
                        mount("type=cache,target=/b,id=c2,sharing=locked"),
                        mount("type=cache,target=/a,id=c1,sharing=locked"),
                    ],
                    &fx.cx("s1", "/"),
                    &BTreeMap::new(),
                )
                .unwrap();
                // The Dockerfile's order is kept in the result.
                assert_eq!(pm.skip, [PathBuf::from("/b"), PathBuf::from("/a")]);
            })
        };
        std::thread::sleep(Duration::from_millis(300));
        let probe = prepare(
            &[mount("type=cache,target=/p,id=c1,sharing=private")],
            &fx.cx("s2", "/"),
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(
            bind_src(&probe, 0).0.starts_with(fx.p("s2")),
            "c1 was not locked first"
        );
        drop(c2);
        t.join().unwrap();
    }

    #[test]
    fn private_cache_falls_back_to_a_fresh_dir() {
        let fx = Fixture::new(&[]);
        let private = mount("type=cache,target=/c,id=p,sharing=private");
        // Free: the persisted cache, held exclusively.
        let a = prepare(
            std::slice::from_ref(&private),
            &fx.cx("s1", "/"),
            &BTreeMap::new(),
        )
        .unwrap();
        let shared_dir = bind_src(&a, 0).0;
        assert!(shared_dir.starts_with(fx.p("cache")));
        // Busy: a fresh directory under this RUN's scratch, right away.
        let b = prepare(
            std::slice::from_ref(&private),
            &fx.cx("s2", "/"),
            &BTreeMap::new(),
        )
        .unwrap();
        let fresh = bind_src(&b, 0).0;
        assert!(fresh.starts_with(fx.p("s2")), "{}", fresh.display());
        assert!(fresh.is_dir());
        drop((a, b));
        // Shared users count as users too.
        let s = prepare(
            &[mount("type=cache,target=/c,id=p")],
            &fx.cx("s3", "/"),
            &BTreeMap::new(),
        )
        .unwrap();
        let c = prepare(
            std::slice::from_ref(&private),
            &fx.cx("s4", "/"),
            &BTreeMap::new(),
        )
        .unwrap();
        assert!(bind_src(&c, 0).0.starts_with(fx.p("s4")));
        drop((s, c));
        let d = prepare(
            std::slice::from_ref(&private),
            &fx.cx("s5", "/"),
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(bind_src(&d, 0).0, shared_dir);
    }

    fn context_fixture(fx: &Fixture) {
        let c = fx.p("context");
        for d in ["src/sub", "node_modules/x", "docs"] {
            fs::create_dir_all(c.join(d)).unwrap();
        }
        for (f, body) in [
            ("src/a.go", "a"),
            ("src/secret.key", "k"),
            ("src/sub/b.go", "b"),
            ("node_modules/x/i.js", "i"),
            ("docs/r.md", "r"),
            ("go.mod", "module x"),
        ] {
            fs::write(c.join(f), body).unwrap();
        }
        std::os::unix::fs::symlink("src/a.go", c.join("alink")).unwrap();
        fs::set_permissions(c.join("src/sub"), fs::Permissions::from_mode(0o750)).unwrap();
    }

    fn listing(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in crate::context::walk(root, &WalkOptions::default()).unwrap() {
            out.push(e.path.to_string_lossy().into_owned());
        }
        out
    }

    #[test]
    fn context_bind_hides_dockerignored_paths() {
        let fx = Fixture::new(&["node_modules", "**/*.key"]);
        context_fixture(&fx);
        let cx = fx.cx("s", "/app");
        let pm = prepare(
            &[
                mount("type=bind,target=."),
                mount("type=bind,source=src,target=/src"),
                mount("type=bind,source=docs,target=/docs"),
                mount("type=bind,source=/go.mod,target=go.mod"),
                mount("type=bind,source=alink,target=/a.go"),
            ],
            &cx,
            &BTreeMap::new(),
        )
        .unwrap();
        let (root, dst, ro) = bind_src(&pm, 0);
        assert_eq!((dst.as_str(), ro), ("/app", true));
        assert!(
            root.starts_with(fx.p("s")),
            "a filtered view: {}",
            root.display()
        );
        assert_eq!(
            listing(&root),
            [
                "alink",
                "docs",
                "docs/r.md",
                "go.mod",
                "src",
                "src/a.go",
                "src/sub",
                "src/sub/b.go"
            ]
        );
        assert_eq!(
            fs::read_link(root.join("alink")).unwrap(),
            Path::new("src/a.go")
        );
        assert_eq!(
            fs::metadata(root.join("src/sub")).unwrap().mode() & 0o7777,
            0o750
        );
        let (src, _, _) = bind_src(&pm, 1);
        assert_eq!(listing(&src), ["a.go", "sub", "sub/b.go"]);
        // Nothing excluded below docs/: the directory itself.
        assert_eq!(bind_src(&pm, 2).0, fx.p("context/docs"));
        assert_eq!(
            bind_src(&pm, 3),
            (fx.p("context/go.mod"), "/app/go.mod".into(), true)
        );
        // A symlink source is followed inside the context.
        assert_eq!(bind_src(&pm, 4).0, fx.p("context/src/a.go"));
        assert_eq!(
            pm.skip,
            ["/app", "/src", "/docs", "/app/go.mod", "/a.go"].map(PathBuf::from)
        );

        for (spec, msg) in [
            (
                "type=bind,source=node_modules,target=/n",
                "mount source \"node_modules\" is excluded from the build context by .dockerignore",
            ),
            (
                "type=bind,source=src/secret.key,target=/k",
                "mount source \"src/secret.key\" is excluded from the build context by .dockerignore",
            ),
            (
                "type=bind,source=nope,target=/n",
                "mount source \"nope\" not found in the build context",
            ),
            (
                "type=bind,source=../etc,target=/n",
                "mount source \"../etc\" points outside the build context",
            ),
        ] {
            let e = prepare(&[mount(spec)], &cx, &BTreeMap::new()).unwrap_err();
            assert_eq!(e.to_string(), msg, "{spec}");
        }
    }

    #[test]
    fn bind_from_a_stage() {
        let fx = Fixture::new(&[]);
        let stage = fx.p("stage");
        fs::create_dir_all(stage.join("usr/lib")).unwrap();
        fs::write(stage.join("usr/lib/x.so"), "so").unwrap();
        std::os::unix::fs::symlink("usr/lib", stage.join("lib")).unwrap();
        let from = BTreeMap::from([("base".to_string(), stage.clone())]);
        let pm = prepare(
            &[mount("type=bind,from=base,source=/lib/x.so,target=/x.so")],
            &fx.cx("s", "/"),
            &from,
        )
        .unwrap();
        assert_eq!(
            bind_src(&pm, 0),
            (stage.join("usr/lib/x.so"), "/x.so".into(), true)
        );
        // rw single file: a private copy.
        let pm = prepare(
            &[mount(
                "type=bind,from=base,source=/lib/x.so,target=/x.so,rw",
            )],
            &fx.cx("s2", "/"),
            &from,
        )
        .unwrap();
        let (src, _, ro) = bind_src(&pm, 0);
        assert!(!ro && src.starts_with(fx.p("s2")));
        fs::write(&src, "changed").unwrap();
        assert_eq!(
            fs::read_to_string(stage.join("usr/lib/x.so")).unwrap(),
            "so"
        );
        let e = prepare(
            &[mount("type=bind,from=base,source=/nope,target=/x")],
            &fx.cx("s3", "/"),
            &from,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "mount source \"/nope\" not found in stage or image \"base\""
        );
    }

    #[test]
    fn rw_bind_writes_do_not_reach_the_source() {
        if !is_root() {
            eprintln!("SKIP rw_bind_writes_do_not_reach_the_source: needs root");
            return;
        }
        let fx = Fixture::new(&["ignored"]);
        context_fixture(&fx);
        fs::write(fx.p("context/ignored"), "no").unwrap();
        in_mount_ns(move || {
            let cx = fx.cx("s", "/");
            let pm = prepare(
                &[mount("type=bind,source=src,target=/src,rw")],
                &cx,
                &BTreeMap::new(),
            )
            .unwrap();
            let (merged, _, ro) = bind_src(&pm, 0);
            assert!(!ro);
            let st = rustix::fs::statfs(&merged).unwrap();
            assert_eq!(st.f_type as i64, 0x794c7630, "an overlay");
            fs::write(merged.join("a.go"), "changed").unwrap();
            fs::write(merged.join("new"), "new").unwrap();
            fs::remove_file(merged.join("sub/b.go")).unwrap();
            assert_eq!(fs::read_to_string(fx.p("context/src/a.go")).unwrap(), "a");
            assert!(!fx.p("context/src/new").exists());
            assert!(fx.p("context/src/sub/b.go").exists());
            // The whole context, rw: a filtered view under an overlay.
            let pm2 = prepare(
                &[mount("type=bind,target=/ctx,rw")],
                &fx.cx("s2", "/"),
                &BTreeMap::new(),
            )
            .unwrap();
            let (m2, _, _) = bind_src(&pm2, 0);
            assert!(!m2.join("ignored").exists());
            assert!(m2.join("go.mod").exists());
            drop((pm, pm2));
            // Unmounted on drop.
            assert!(!merged.join("a.go").exists());
        });
    }

    #[test]
    fn secrets_on_tmpfs_with_mode_and_env() {
        if !is_root() {
            eprintln!("SKIP secrets_on_tmpfs_with_mode_and_env: needs root");
            return;
        }
        let mut fx = Fixture::new(&[]);
        let f = fx.p("token");
        fs::write(&f, "hunter2").unwrap();
        fx.secrets.insert("tok".into(), SecretSource::File(f));
        fx.secrets.insert(
            "fromenv".into(),
            SecretSource::Env("KILN_TEST_NO_SUCH_VAR_X".into()),
        );
        in_mount_ns(move || {
            let cx = fx.cx("s", "/w");
            let pm = prepare(
                &[
                    mount("type=secret,id=tok"),
                    mount("type=secret,id=tok,target=rel,mode=0440,uid=7,gid=8"),
                    mount("type=secret,id=tok,env=TOKEN"),
                    mount("type=secret,id=tok,env=TOKEN2,target=/t2"),
                    mount("type=secret,id=absent"),
                    mount("type=secret,id=absent,env=ABSENT"),
                    mount("type=secret,id=fromenv"),
                ],
                &cx,
                &BTreeMap::new(),
            )
            .unwrap();
            let dbg = format!("{pm:?}");
            assert!(!dbg.contains("hunter2"), "{dbg}");
            assert_eq!(
                pm.env,
                [
                    ("TOKEN".to_string(), "hunter2".to_string()),
                    ("TOKEN2".into(), "hunter2".into()),
                    ("ABSENT".into(), String::new()),
                ]
            );
            let binds: Vec<_> = (0..pm.mounts.len()).map(|n| bind_src(&pm, n)).collect();
            let dsts: Vec<_> = binds.iter().map(|b| b.1.as_str()).collect();
            assert_eq!(
                dsts,
                ["/run/secrets/tok", "/w/rel", "/t2", "/run/secrets/fromenv"]
            );
            assert!(binds.iter().all(|b| b.2), "read-only");
            for (src, _, _) in &binds[..3] {
                assert_eq!(fs::read_to_string(src).unwrap(), "hunter2");
                let st = rustix::fs::statfs(src).unwrap();
                assert_eq!(st.f_type as i64, 0x01021994, "on a tmpfs");
            }
            let md = fs::metadata(&binds[0].0).unwrap();
            assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o400, 0, 0));
            let md = fs::metadata(&binds[1].0).unwrap();
            assert_eq!(md.mode() & 0o7777, 0o440);
            if !single_id() {
                assert_eq!((md.uid(), md.gid()), (7, 8));
            }
            // An unset variable is an empty secret (BuildKit's os.Getenv).
            assert_eq!(fs::read_to_string(&binds[3].0).unwrap(), "");
            let secret_dir = binds[0].0.parent().unwrap().to_path_buf();
            drop(pm);
            // Gone with the tmpfs: nothing reached the disk.
            assert_eq!(fs::read_dir(&secret_dir).unwrap().count(), 0);

            let e = prepare(
                &[mount("type=secret,id=absent,required")],
                &cx,
                &BTreeMap::new(),
            )
            .unwrap_err();
            assert_eq!(
                e.to_string(),
                "secret absent: not provided (pass --secret id=absent,src=FILE or --secret id=absent,env=VAR)"
            );
        });
    }
}
