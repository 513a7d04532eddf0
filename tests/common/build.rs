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
    pub fn owner(&self, p: &str) -> (u32, u32) {
        let m = self.path(p).symlink_metadata().unwrap();
        (m.uid(), m.gid())
    }
    pub fn link(&self, p: &str) -> String {
        std::fs::read_link(self.path(p))
            .unwrap()
            .to_string_lossy()
            .into_owned()
    }
    /// `kiln inspect` of the built image: `{name, id, digest, manifest, config}`.
    pub fn inspect(&self) -> Value {
        let out = super::kiln()
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
        eprintln!("SKIP {test}: busybox-static is not installed (apt-get install busybox-static)");
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
    let df = ctx.join("Dockerfile.kiln-test");
    std::fs::write(&df, dockerfile).unwrap();
    let out = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let iid = files.path().join("iid");
    let meta = files.path().join("metadata.json");
    let mut cmd = super::kiln();
    cmd.env_remove("SOURCE_DATE_EPOCH");
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
        .arg(format!("type=local,dest={}", out.path().display()))
        .arg("--iidfile")
        .arg(&iid)
        .arg("--metadata-file")
        .arg(&meta)
        .args(extra)
        .arg(ctx)
        .output()
        .unwrap();
    std::fs::remove_file(&df).unwrap();
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
    }
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
        eprintln!("SKIP {test}: {tool} is not installed");
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
