//! End-to-end build helpers: contexts made from a compact description, `kiln build` run for
//! real into a temporary store, and the result read back through `type=local` and `inspect`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use serde_json::Value;

/// Creates a directory tree: `"name=content"` a file, `"dir/"` an empty directory,
/// `"link -> target"` a symlink. Parents are created.
pub fn make_tree(dir: &Path, spec: &[&str]) {
    for item in spec {
        if let Some((link, target)) = item.split_once(" -> ") {
            let p = dir.join(link);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(target, p).unwrap();
        } else if let Some((name, content)) = item.split_once('=') {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        } else if let Some(d) = item.strip_suffix('/') {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        } else {
            panic!("bad tree item {item:?}");
        }
    }
}

/// A store and what one build put in it.
pub struct Built {
    pub root: PathBuf,
    pub out: tempfile::TempDir,
    /// The image ID (`--iidfile`).
    pub id: String,
    /// `--metadata-file` as written.
    pub metadata: Value,
    pub output: Output,
    /// Who ran the build: [`Built::owner`] and [`Built::inspect`] depend on it.
    pub who: Runner,
}

impl Built {
    pub fn path(&self, p: &str) -> PathBuf {
        self.out.path().join(p.trim_start_matches('/'))
    }
    pub fn read(&self, p: &str) -> String {
        std::fs::read_to_string(self.path(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    }
    pub fn exists(&self, p: &str) -> bool {
        self.path(p).symlink_metadata().is_ok()
    }
    pub fn mode(&self, p: &str) -> u32 {
        self.path(p)
            .symlink_metadata()
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    }
    /// The owner of `p` as IMAGE ids (for an unprivileged runner the result was exported as a
    /// tar and unpacked by root with its numeric owners: see [`try_build_as`]).
    pub fn owner(&self, p: &str) -> (u32, u32) {
        let m = self.path(p).symlink_metadata().unwrap();
        (m.uid(), m.gid())
    }
    /// The build's stderr.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
    /// The build's stdout.
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }
    pub fn link(&self, p: &str) -> String {
        std::fs::read_link(self.path(p))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
    /// `kiln inspect` of the built image: `{name, id, digest, manifest, config}`.
    pub fn inspect(&self) -> Value {
        let out = kiln_as(self.who)
            .arg("--root")
            .arg(&self.root)
            .args([
                "inspect",
                self.metadata["containerimage.digest"].as_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }
    /// Names in `/` of the result, sorted, recursively (`a`, `a/b`, …).
    pub fn tree(&self) -> Vec<String> {
        let mut out = Vec::new();
        walk(self.out.path(), self.out.path(), &mut out);
        out.sort();
        out
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        if e.file_type().unwrap().is_dir() {
            walk(root, &p, out);
        }
    }
}

/// Runs `kiln --root ROOT build -f DOCKERFILE -o type=local,dest=OUT --iidfile … EXTRA CTX`
/// (with no SOURCE_DATE_EPOCH from the caller's environment).
pub fn try_build(root: &Path, ctx: &Path, dockerfile: &str, extra: &[&str]) -> Built {
    try_build_env(root, ctx, dockerfile, extra, &[])
}

/// Builds and requires success.
pub fn build(root: &Path, ctx: &Path, dockerfile: &str, extra: &[&str]) -> Built {
    let b = try_build(root, ctx, dockerfile, extra);
    assert!(
        b.output.status.success(),
        "build failed:\n{dockerfile}\n{}",
        String::from_utf8_lossy(&b.output.stderr)
    );
    b
}

/// Builds, requires failure, and returns stderr.
pub fn build_error(root: &Path, ctx: &Path, dockerfile: &str, extra: &[&str]) -> String {
    let b = try_build(root, ctx, dockerfile, extra);
    let stderr = String::from_utf8_lossy(&b.output.stderr).into_owned();
    assert!(
        !b.output.status.success(),
        "expected failure:\n{dockerfile}\n{stderr}"
    );
    stderr
}

/// The busybox rootfs tarball made by scripts/make-busybox-rootfs.sh from Debian's
/// busybox-static, once per test process. `None` (with a SKIP line) without busybox.
pub fn busybox_rootfs(test: &str) -> Option<PathBuf> {
    static TAR: OnceLock<Option<PathBuf>> = OnceLock::new();
    let tar = TAR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("kiln-busybox-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let tar = dir.join("busybox.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-busybox-rootfs.sh");
        let st = std::process::Command::new("bash")
            .arg(script)
            .arg(&tar)
            .output()
            .unwrap();
        st.status.success().then_some(tar)
    });
    if tar.is_none() {
        super::skip(
            test,
            "busybox-static is not installed (apt-get install busybox-static)",
        );
    }
    tar.clone()
}

/// A fresh store with `busybox:latest` imported. `None` (SKIP printed) without busybox.
pub fn busybox_store(test: &str) -> Option<tempfile::TempDir> {
    let tar = busybox_rootfs(test)?;
    let root = tempfile::tempdir().unwrap();
    import_busybox(&tar, root.path());
    Some(root)
}

/// `kiln --root ROOT import TAR busybox:latest`, reproducibly; panics on failure.
pub fn import_busybox(tar: &Path, root: &Path) {
    let out = super::kiln()
        .arg("--root")
        .arg(root)
        .arg("import")
        .arg(tar)
        .arg("busybox:latest")
        .env("SOURCE_DATE_EPOCH", "0")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// [`try_build`] with a controlled environment: the caller's `SOURCE_DATE_EPOCH` is removed,
/// then `env` is set, so reproducibility tests do not depend on the shell that runs them.
pub fn try_build_env(
    root: &Path,
    ctx: &Path,
    dockerfile: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Built {
    try_build_as(Runner::Root, root, ctx, dockerfile, extra, env)
}

/// `kiln --root ROOT build -f DOCKERFILE -o type=local,dest=OUT --iidfile … --metadata-file …
/// EXTRA CTX` run as `who`. For a user the output is `-o type=tar,dest=FILE` instead, unpacked
/// into OUT by this (root) process with the image's numeric owners: a rootless `type=local`
/// export gives every file to the user, so it cannot show the image's owners. The Dockerfile is written into `ctx` for the build and removed after.
/// For a user the context is first chowned (recursively) to the user and must be reachable
/// (every parent searchable by others: make it with [`runner_dir`]); the output and the id/metadata
/// files go to directories the user owns; the environment is clean (HOME, PATH, TMPDIR, then
/// `env`). For root the caller's environment is kept, minus `SOURCE_DATE_EPOCH`, plus `env`.
pub fn try_build_as(
    who: Runner,
    root: &Path,
    ctx: &Path,
    dockerfile: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Built {
    let df = ctx.join("Dockerfile.kiln-test");
    std::fs::write(&df, dockerfile).unwrap();
    if let Runner::User(_) = who {
        let (uid, gid) = who.ids();
        assert_reachable(ctx);
        chown_tree(ctx, uid, gid);
    }
    let out = runner_dir(who);
    let files = runner_dir(who);
    let iid = files.path().join("iid");
    let meta = files.path().join("metadata.json");
    let rootfs_tar = files.path().join("rootfs.tar");
    let output_spec = match who {
        Runner::Root => format!("type=local,dest={}", out.path().display()),
        Runner::User(_) => format!("type=tar,dest={}", rootfs_tar.display()),
    };
    let mut cmd = kiln_as(who);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let output = cmd
        .arg("--root")
        .arg(root)
        .arg("build")
        .arg("-f")
        .arg(&df)
        .arg("-o")
        .arg(output_spec)
        .arg("--iidfile")
        .arg(&iid)
        .arg("--metadata-file")
        .arg(&meta)
        .args(extra)
        .arg(ctx)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    std::fs::remove_file(&df).unwrap();
    if rootfs_tar.exists() {
        let st = std::process::Command::new("tar")
            .args(["-x", "--numeric-owner", "--same-owner", "-p", "-f"])
            .arg(&rootfs_tar)
            .arg("-C")
            .arg(out.path())
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "unpacking the type=tar export: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
    let id = std::fs::read_to_string(&iid).unwrap_or_default();
    let metadata = std::fs::read(&meta)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    Built {
        root: root.to_path_buf(),
        out,
        id,
        metadata,
        output,
        who,
    }
}

/// [`try_build_as`] that requires success.
pub fn build_as(
    who: Runner,
    root: &Path,
    ctx: &Path,
    dockerfile: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> Built {
    let b = try_build_as(who, root, ctx, dockerfile, extra, env);
    assert!(
        b.output.status.success(),
        "build as {} failed:\n{dockerfile}\n{}",
        who.label(),
        b.stderr()
    );
    b
}

/// [`try_build_as`] that requires failure; returns stderr.
pub fn build_error_as(
    who: Runner,
    root: &Path,
    ctx: &Path,
    dockerfile: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> String {
    let b = try_build_as(who, root, ctx, dockerfile, extra, env);
    let stderr = b.stderr();
    assert!(
        !b.output.status.success(),
        "expected failure as {}:\n{dockerfile}\n{stderr}",
        who.label()
    );
    stderr
}

/// `kiln --root STORE ARGS` as `who`; requires success and returns stdout.
pub fn kiln_ok_as<A: AsRef<std::ffi::OsStr> + std::fmt::Debug>(
    who: Runner,
    store: &Path,
    args: &[A],
) -> String {
    let out = kiln_as(who)
        .arg("--root")
        .arg(store)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln {args:?} as {}: {}",
        who.label(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A temporary directory: removed (by the root test process) when dropped.
pub type Scratch = tempfile::TempDir;

/// Who runs kiln in a test: root (the test process itself), or an unprivileged user switched to
/// with `setpriv` from a root test process. `.ci/run` creates `kiln-test` (with /etc/subuid and
/// /etc/subgid ranges: a full subordinate-id map) and `kiln-nosubid` (no ranges: a single-id map).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runner {
    Root,
    User(&'static str),
}

/// An id map: `(inside, host, count)` ranges.
pub type IdMap = Vec<(u32, u32, u32)>;

/// Every runner, root first.
pub const RUNNERS: [Runner; 3] = [
    Runner::Root,
    Runner::User("kiln-test"),
    Runner::User("kiln-nosubid"),
];

/// The runners for tests about ownership: root and the user with subordinate ids (the single-id
/// map cannot represent other owners).
pub const OWNERSHIP_RUNNERS: [Runner; 2] = [Runner::Root, Runner::User("kiln-test")];

impl Runner {
    /// Whether this runner can be used here: the test process must be root (in the initial user
    /// namespace, for users), the user must exist, and `setpriv` must be installed. Prints one
    /// `SKIP {test}: …` line and returns `false` otherwise.
    pub fn available(self, test: &str) -> bool {
        let why = if !is_root() {
            Some("needs root (CI runs the tests as root)".to_string())
        } else if let Runner::User(name) = self {
            if user_ids(name).is_none() {
                Some(format!("user {name} does not exist (.ci/run creates it)"))
            } else if find_tool("setpriv").is_none() {
                Some("setpriv (util-linux) is not installed".to_string())
            } else if kiln::exec::userns::in_user_namespace() {
                Some("switching users needs the initial user namespace".to_string())
            } else {
                None
            }
        } else {
            None
        };
        if let Some(why) = &why {
            super::skip(&format!("{test} as {}", self.label()), why);
        }
        why.is_none()
    }

    /// `root`, or the user's name.
    pub fn label(self) -> String {
        match self {
            Runner::Root => "root".into(),
            Runner::User(name) => name.into(),
        }
    }

    /// Whether the user has ranges in both /etc/subuid and /etc/subgid (so kiln gets a full
    /// subordinate-id map). `false` for root.
    pub fn has_subids(self) -> bool {
        match self {
            Runner::Root => false,
            Runner::User(_) => {
                let (u, g) = self.maps();
                u.len() > 1 && g.len() > 1
            }
        }
    }

    /// Whether builds by this runner can keep arbitrary owners (root, or a full map).
    pub fn keeps_ownership(self) -> bool {
        self == Runner::Root || self.has_subids()
    }

    /// The host uid and gid of the runner (0:0 for root).
    pub fn ids(self) -> (u32, u32) {
        match self {
            Runner::Root => (0, 0),
            Runner::User(name) => user_ids(name).unwrap_or_else(|| panic!("no user {name}")),
        }
    }

    /// The uid and gid maps kiln sets up for this runner, as `(inside, host, count)` triples:
    /// 0 → the user, then 1… → the subordinate ranges in file order (as kiln's `ensure_userns`
    /// writes them with newuidmap/newgidmap). Identity for root.
    pub fn maps(self) -> (IdMap, IdMap) {
        let Runner::User(name) = self else {
            return (vec![(0, 0, u32::MAX)], vec![(0, 0, u32::MAX)]);
        };
        let (uid, gid) = self.ids();
        let map = |file: &str, own: u32| {
            let mut m = vec![(0, own, 1)];
            let text = std::fs::read_to_string(file).unwrap_or_default();
            let mut next = 1u32;
            for r in kiln::exec::userns::parse_subid(&text, name, own) {
                m.push((next, r.start, r.count));
                next = next.saturating_add(r.count);
            }
            m
        };
        let (mut u, mut g) = (map("/etc/subuid", uid), map("/etc/subgid", gid));
        // kiln uses the ranges only when both files give some.
        if u.len() == 1 || g.len() == 1 {
            u.truncate(1);
            g.truncate(1);
        }
        (u, g)
    }

    /// Host ids (as seen on a file the runner's kiln wrote) → image ids. Ids outside the map
    /// are returned unchanged.
    pub fn to_image_ids(self, uid: u32, gid: u32) -> (u32, u32) {
        if self == Runner::Root {
            return (uid, gid);
        }
        let back = |map: &[(u32, u32, u32)], id: u32| {
            map.iter()
                .find(|(_, host, n)| id >= *host && id - host < *n)
                .map(|(inside, host, _)| inside + (id - host))
                .unwrap_or(id)
        };
        let (u, g) = self.maps();
        (back(&u, uid), back(&g, gid))
    }

    /// Image ids → the host ids the runner's kiln gives them (for checking a store or
    /// snapshot from the host). Ids outside the map are returned unchanged.
    pub fn to_host_ids(self, uid: u32, gid: u32) -> (u32, u32) {
        if self == Runner::Root {
            return (uid, gid);
        }
        let fwd = |map: &[(u32, u32, u32)], id: u32| {
            map.iter()
                .find(|(inside, _, n)| id >= *inside && id - inside < *n)
                .map(|(inside, host, _)| host + (id - inside))
                .unwrap_or(id)
        };
        let (u, g) = self.maps();
        (fwd(&u, uid), fwd(&g, gid))
    }
}

/// `(uid, gid)` of a user in the host's passwd database.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let u = nix::unistd::User::from_name(name).ok()??;
    Some((u.uid.as_raw(), u.gid.as_raw()))
}

fn find_tool(tool: &str) -> Option<PathBuf> {
    ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(tool))
        .find(|p| p.is_file())
}

/// `chown -Rh uid:gid p`.
pub fn chown_tree(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", p.display()));
    if p.symlink_metadata().unwrap().is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

/// Panics (with advice) unless every parent of `p` can be searched by other users.
fn assert_reachable(p: &Path) {
    for a in p.ancestors().skip(1) {
        if let Ok(m) = a.metadata() {
            assert!(
                m.mode() & 0o001 != 0,
                "{} is not reachable by other users ({} is {:o}): make test directories with \
                 runner_dir(who)",
                p.display(),
                a.display(),
                m.mode() & 0o7777
            );
        }
    }
}

/// Per test process, a 0755 directory under /tmp holding the kiln binary and the busybox
/// tarball where users can reach them, and each user's HOME. Directories left by earlier test
/// processes that are gone are removed.
struct Shared {
    dir: PathBuf,
    kiln: PathBuf,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let me = std::process::id();
        if let Ok(rd) = std::fs::read_dir("/tmp") {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("kiln-harness-")
                    && let Ok(pid) = pid.parse::<u32>()
                    && pid != me
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    std::fs::remove_dir_all(e.path()).ok();
                }
            }
        }
        let dir = PathBuf::from(format!("/tmp/kiln-harness-{me}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let kiln = dir.join("kiln");
        let src = Path::new(env!("CARGO_BIN_EXE_kiln"));
        if !kiln.exists() && std::fs::hard_link(src, &kiln).is_err() {
            std::fs::copy(src, &kiln).unwrap();
        }
        std::fs::set_permissions(&kiln, std::fs::Permissions::from_mode(0o755)).unwrap();
        Shared { dir, kiln }
    })
}

/// The user's HOME for these tests (`/tmp/kiln-harness-PID/home-NAME`, 0700, owned by the user,
/// with `tmp/` for TMPDIR).
fn user_home(who: Runner) -> PathBuf {
    let Runner::User(name) = who else {
        panic!("root has no harness home");
    };
    let home = shared().dir.join(format!("home-{name}"));
    if !home.join("tmp").is_dir() {
        std::fs::create_dir_all(home.join("tmp")).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        let (uid, gid) = who.ids();
        chown_tree(&home, uid, gid);
    }
    home
}

/// The kiln binary run as `who`. Root: the test binary's kiln with the caller's environment
/// minus `SOURCE_DATE_EPOCH`. A user: `setpriv --reuid --regid --init-groups` on a reachable copy
/// of the binary, with a clean environment (HOME and TMPDIR in the user's harness home, a
/// standard PATH, `RUST_BACKTRACE` passed on) and the working directory in that home.
pub fn kiln_as(who: Runner) -> std::process::Command {
    match who {
        Runner::Root => {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
            cmd.env_remove("SOURCE_DATE_EPOCH");
            cmd
        }
        Runner::User(_) => {
            let (uid, gid) = who.ids();
            let home = user_home(who);
            let mut cmd = std::process::Command::new(
                find_tool("setpriv").expect("setpriv (util-linux) is not installed"),
            );
            cmd.env_clear()
                .env("HOME", &home)
                .env("TMPDIR", home.join("tmp"))
                .env(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                )
                .current_dir(&home)
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--init-groups")
                .arg("--")
                .arg(&shared().kiln);
            if let Some(v) = std::env::var_os("RUST_BACKTRACE") {
                cmd.env("RUST_BACKTRACE", v);
            }
            cmd
        }
    }
}

/// A fresh temporary directory for `who`: for root as `tempfile::tempdir()`; for a user under
/// /tmp (whose parents are all searchable), mode 0755, owned by the user. For contexts, outputs
/// and stores. The root test process removes it when dropped.
pub fn runner_dir(who: Runner) -> Scratch {
    match who {
        Runner::Root => tempfile::tempdir().unwrap(),
        Runner::User(_) => {
            let d = tempfile::Builder::new()
                .prefix("kiln-run-")
                .tempdir_in("/tmp")
                .unwrap();
            std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            let (uid, gid) = who.ids();
            std::os::unix::fs::lchown(d.path(), Some(uid), Some(gid)).unwrap();
            d
        }
    }
}

/// A fresh store with `busybox:latest` imported by `who` (so everything in it is the user's).
/// `None` with one SKIP line when the runner is not available here or busybox is missing.
pub fn runner_store(who: Runner, test: &str) -> Option<Scratch> {
    if !who.available(test) {
        return None;
    }
    let tar = busybox_rootfs(test)?;
    let root = runner_dir(who);
    match who {
        Runner::Root => import_busybox(&tar, root.path()),
        Runner::User(_) => {
            // The tarball may sit under an unreachable TMPDIR: give users a copy beside the binary.
            static USER_TAR: OnceLock<PathBuf> = OnceLock::new();
            let user_tar = USER_TAR.get_or_init(|| {
                let p = shared().dir.join("busybox.tar");
                std::fs::copy(&tar, &p).unwrap();
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
                p
            });
            let out = kiln_as(who)
                .arg("--root")
                .arg(root.path())
                .arg("import")
                .arg(user_tar)
                .arg("busybox:latest")
                .env("SOURCE_DATE_EPOCH", "0")
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "import as {}: {}",
                who.label(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    Some(root)
}

/// The available runners of `runners` for `test` (SKIP lines printed for the others).
pub fn available(test: &str, runners: &[Runner]) -> Vec<Runner> {
    runners
        .iter()
        .copied()
        .filter(|r| r.available(test))
        .collect()
}

/// Whether an external tool runs (`TOOL --version`). Tests that need it print one `SKIP` line
/// and return when it does not.
pub fn have(test: &str, tool: &str) -> bool {
    let ok = std::process::Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        super::skip(test, format!("{tool} is not installed"));
    }
    ok
}

/// Runs `skopeo inspect [--raw] TRANSPORT:REF` and parses its JSON; `Err(stderr)` on failure.
pub fn skopeo_inspect(target: &str, raw: bool) -> Result<Value, String> {
    let mut cmd = std::process::Command::new("skopeo");
    cmd.arg("inspect");
    if raw {
        cmd.arg("--raw");
    }
    let out = cmd.arg(target).output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "skopeo inspect {target}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("skopeo inspect {target}: {e}"))
}

/// Every blob in a store or OCI layout, decompressed (gzip and zstd), for content searches.
pub fn blob_contents(layout: &Path) -> Vec<(String, Vec<u8>)> {
    use std::io::Read;
    let mut out = Vec::new();
    let dir = layout.join("blobs/sha256");
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let raw = std::fs::read(e.path()).unwrap();
        let mut data = Vec::new();
        if raw.starts_with(&[0x1f, 0x8b]) {
            flate2::read::MultiGzDecoder::new(&raw[..])
                .read_to_end(&mut data)
                .unwrap();
        } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            data = zstd::decode_all(&raw[..]).unwrap();
        } else {
            data = raw;
        }
        out.push((e.file_name().to_string_lossy().into_owned(), data));
    }
    out
}
