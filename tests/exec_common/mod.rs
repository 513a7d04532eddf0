//! Helpers shared by the `exec_*` tests (included with `#[path]`; as a test target of its own it
//! has no tests).
#![allow(dead_code)]

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kiln::exec::{RootfsSpec, RunReport, RunSpec};

#[path = "../common/skip.rs"]
pub mod skip;
pub use skip::skip;

/// `true` when this process may use the sandbox (root, possibly of a user namespace).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Prints the one-line SKIP notice and returns `true` when the sandbox tests cannot run here.
pub fn skip_unless_root(test: &str) -> bool {
    if is_root() {
        return false;
    }
    skip(
        test,
        "the sandbox tests run as root (CI does); as a user, run kiln itself",
    );
    true
}

/// The host's static busybox (Debian's busybox-static).
pub fn busybox() -> Option<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Makes a busybox root filesystem in `root` like scripts/make-busybox-rootfs.sh (applet
/// symlinks, passwd/group lines, /etc/hostname; no /etc/hosts or /etc/resolv.conf), plus
/// `/data/keep`, `/data/gone`, `/olddir/f` for the overlay tests. Returns `false` (after a SKIP
/// line) when busybox is missing.
pub fn busybox_rootfs(root: &Path, test: &str) -> bool {
    let Some(bb) = busybox() else {
        skip(test, "busybox not found (apt-get install busybox-static)");
        return false;
    };
    for d in [
        "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "home", "tmp", "var/tmp", "proc",
        "sys", "dev", "run", "data", "olddir",
    ] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy(&bb, root.join("bin/busybox")).unwrap();
    std::fs::set_permissions(
        root.join("bin/busybox"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let list = std::process::Command::new(&bb)
        .arg("--list-full")
        .output()
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet == "bin/busybox" || applet.is_empty() {
            continue;
        }
        let p = root.join(applet);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let _ = std::os::unix::fs::symlink("/bin/busybox", p);
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n").unwrap();
    std::fs::write(root.join("etc/hostname"), "busybox\n").unwrap();
    std::fs::write(root.join("data/keep"), "keep\n").unwrap();
    std::fs::write(root.join("data/gone"), "gone\n").unwrap();
    std::fs::write(root.join("olddir/f"), "old\n").unwrap();
    for d in ["tmp", "var/tmp"] {
        std::fs::set_permissions(root.join(d), std::fs::Permissions::from_mode(0o1777)).unwrap();
    }
    true
}

/// A lower (the busybox rootfs) and a fresh upper/work pair under one temporary directory.
pub struct Layers {
    pub dir: tempfile::TempDir,
    pub lower: PathBuf,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Layers {
    pub fn new(test: &str) -> Option<Layers> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-exec-test-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let lower = dir.path().join("lower");
        if !busybox_rootfs(&lower, test) {
            return None;
        }
        let (upper, work) = (dir.path().join("upper"), dir.path().join("work"));
        std::fs::create_dir(&upper).unwrap();
        std::fs::create_dir(&work).unwrap();
        Some(Layers {
            dir,
            lower,
            upper,
            work,
        })
    }

    pub fn rootfs(&self) -> RootfsSpec {
        RootfsSpec::Overlay {
            lowerdirs: vec![self.lower.clone()],
            upperdir: self.upper.clone(),
            workdir: self.work.clone(),
        }
    }

    /// A spec running `sh -c script` on the overlay, with a PATH.
    pub fn sh(&self, script: &str) -> RunSpec {
        sh_spec(self.rootfs(), script)
    }
}

pub fn sh_spec(rootfs: RootfsSpec, script: &str) -> RunSpec {
    let mut spec = RunSpec::new(rootfs, vec!["sh".into(), "-c".into(), script.into()]);
    spec.env = vec![
        "PATH=/usr/sbin:/usr/bin:/sbin:/bin".into(),
        "HOME=/root".into(),
    ];
    spec
}

/// Runs and captures: (report, stdout, stderr).
pub fn run(spec: &RunSpec) -> (RunReport, String, String) {
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let report = kiln::exec::run(spec, &mut out, &mut err)
        .unwrap_or_else(|e| panic!("run {:?}: {e}", spec.args));
    (
        report,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// A sorted listing of a tree: `path type mode [size|target|rdev]`, for before/after checks.
pub fn listing(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let ft = m.file_type();
            let desc = if ft.is_dir() {
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if ft.is_char_device() {
                format!("char {}", m.rdev())
            } else {
                format!("file {} {}", m.len(), m.mtime())
            };
            out.push(format!(
                "{rel} {desc} {:o} {}:{}",
                m.mode(),
                m.uid(),
                m.gid()
            ));
            if ft.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out
}

/// `true` if `p` is an overlay whiteout: a character device 0:0.
pub fn is_whiteout(p: &Path) -> bool {
    std::fs::symlink_metadata(p)
        .map(|m| m.file_type().is_char_device() && m.rdev() == 0)
        .unwrap_or(false)
}

/// The overlay opaque marker of a directory, in either namespace (`trusted.` as real root,
/// `user.` with `userxattr`).
pub fn opaque_xattr(p: &Path) -> Option<String> {
    for name in ["trusted.overlay.opaque", "user.overlay.opaque"] {
        let mut buf = [0u8; 16];
        if let Ok(n) = rustix::fs::lgetxattr(p, name, &mut buf[..]) {
            return Some(format!("{name}={}", String::from_utf8_lossy(&buf[..n])));
        }
    }
    None
}

/// The lines of /proc/self/mountinfo.
pub fn mountinfo() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Pids whose command line contains `needle` (NUL-separated args joined by spaces).
pub fn processes_matching(needle: &str) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            found.push((pid, cmd));
        }
    }
    found
}

/// Pids of the live (non-zombie) children of this process.
pub fn children_of_self() -> Vec<u32> {
    let me = std::process::id();
    let mut kids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …; comm may contain spaces, so split after the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let state = f.next().unwrap_or("");
        let ppid: u32 = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid == me && state != "Z" {
            kids.push(pid);
        }
    }
    kids
}
