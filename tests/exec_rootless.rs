//! The unprivileged path, proven as an unprivileged user. Run as root (CI), each test prepares a
//! directory the user can read, copies this test binary into it, and re-runs the binary's
//! `rootless_helper` as that user:
//!
//! * `nobody` (65534), no subordinate ids: `ensure_userns` re-executes into a single-id user
//!   namespace (with its warning), then RUN on overlay with `userxattr`;
//! * `nobody` inside `unshare --user --map-root-user` (util-linux): already root of a user
//!   namespace, so no re-exec; and the overlay goes through the `mount(2)` fallback
//!   (`KILN_OVERLAY_MOUNT=legacy`);
//! * a user with /etc/subuid and /etc/subgid ranges (`kiln-test`, which `.ci/run` creates, or
//!   `$KILN_TEST_SUBID_USER`): a full map through newuidmap/newgidmap, where `chown 1000:1000`
//!   lands in the upperdir as the subordinate host id.

#[path = "exec_common/mod.rs"]
mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use kiln::exec::{ExecError, ExitStatus, Network, RootfsSpec, UsernsState};

/// Tells the helper where its prepared directory is.
const HELPER_DIR: &str = "KILN_EXEC_ROOTLESS_DIR";

struct Prepared {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([
            PathBuf::from("/usr/bin"),
            PathBuf::from("/usr/sbin"),
            PathBuf::from("/bin"),
        ])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn chown_tree(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
    if std::fs::symlink_metadata(p).unwrap().is_dir() {
        for e in std::fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), uid, gid);
        }
    }
}

/// A 0755 directory under /tmp owned by `uid:gid` with this test binary and a busybox lower.
fn prepare(test: &str, uid: u32, gid: u32) -> Option<Prepared> {
    if skip_unless_root(test) {
        return None;
    }
    if kiln::exec::userns::in_user_namespace() {
        skip(test, "runs from the initial user namespace only");
        return None;
    }
    if which("setpriv").is_none() {
        skip(test, "setpriv (util-linux) not found");
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("kiln-rootless-")
        .tempdir_in("/tmp")
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    if !busybox_rootfs(&dir.path().join("lower"), test) {
        return None;
    }
    std::fs::create_dir(dir.path().join("tmp")).unwrap();
    let bin = dir.path().join("exec_rootless-test-bin");
    std::fs::copy(std::env::current_exe().unwrap(), &bin).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    chown_tree(dir.path(), uid, gid);
    Some(Prepared { dir, bin })
}

/// Runs the helper under `wrapper` (a command prefix), with a time limit.
fn run_helper(p: &Prepared, wrapper: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(wrapper[0]);
    cmd.args(&wrapper[1..])
        .arg(&p.bin)
        .args([
            "--exact",
            "rootless_helper",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(HELPER_DIR, p.dir.path())
        .env("TMPDIR", p.dir.path().join("tmp"))
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut out, &mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut err, &mut s).ok();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            panic!("the rootless helper did not finish in 300 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let (out, err) = (t_out.join().unwrap(), t_err.join().unwrap());
    eprintln!("--- helper stdout ---\n{out}--- helper stderr ---\n{err}---");
    (status.success(), out, err)
}

const NOBODY: [&str; 4] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
];

#[test]
fn single_id_user_namespace_by_reexec_as_nobody() {
    let Some(p) = prepare("single_id_user_namespace_by_reexec_as_nobody", 65534, 65534) else {
        return;
    };
    let (ok, out, err) = run_helper(&p, &NOBODY, &[]);
    assert!(ok, "helper failed");
    assert!(out.contains("STATE single"), "{out}");
    assert!(out.contains("ROOTLESS-HELPER OK"), "{out}");
    // One clear warning from the parent.
    assert_eq!(err.matches("kiln: warning:").count(), 1, "{err}");
    assert!(err.contains("single-id user namespace"), "{err}");
    // Seen from the host: the upperdir's changes are owned by nobody, the whiteout is 0:0.
    let upper = p.dir.path().join("run-overlay/upper");
    assert_eq!(
        std::fs::metadata(upper.join("new.txt")).unwrap().uid(),
        65534
    );
    assert!(is_whiteout(&upper.join("data/gone")));
}

#[test]
fn unshare_map_root_user_as_nobody_with_mount2_fallback() {
    let Some(p) = prepare(
        "unshare_map_root_user_as_nobody_with_mount2_fallback",
        65534,
        65534,
    ) else {
        return;
    };
    if which("unshare").is_none() {
        skip(
            "unshare_map_root_user_as_nobody_with_mount2_fallback",
            "no unshare",
        );
        return;
    }
    let mut wrapper = NOBODY.to_vec();
    wrapper.extend(["unshare", "--user", "--map-root-user"]);
    let (ok, out, err) = run_helper(&p, &wrapper, &[("KILN_OVERLAY_MOUNT", "legacy")]);
    assert!(ok, "helper failed");
    assert!(out.contains("STATE single"), "{out}");
    assert!(out.contains("ROOTLESS-HELPER OK"), "{out}");
    // Already root of a user namespace: no re-exec, so no warning.
    assert!(!err.contains("kiln: warning:"), "{err}");
}

/// The first /etc/subuid range of `user`, if any.
fn first_subuid(user: &str, uid: u32) -> Option<kiln::exec::userns::SubIdRange> {
    let text = std::fs::read_to_string("/etc/subuid").ok()?;
    let gtext = std::fs::read_to_string("/etc/subgid").ok()?;
    kiln::exec::userns::parse_subid(&gtext, user, uid).first()?;
    kiln::exec::userns::parse_subid(&text, user, uid)
        .first()
        .copied()
}

#[test]
fn full_subordinate_id_map_keeps_ownership() {
    let test = "full_subordinate_id_map_keeps_ownership";
    let user = std::env::var("KILN_TEST_SUBID_USER").unwrap_or_else(|_| "kiln-test".into());
    let ids = |flag: &str| -> Option<u32> {
        let o = Command::new("id").args([flag, &user]).output().ok()?;
        String::from_utf8_lossy(&o.stdout).trim().parse().ok()
    };
    let (Some(uid), Some(gid)) = (ids("-u"), ids("-g")) else {
        skip(
            test,
            format!(
                "no user {user:?} (scripts/test.sh creates `kiln-test` with /etc/subuid and /etc/subgid ranges; or set KILN_TEST_SUBID_USER)"
            ),
        );
        return;
    };
    let Some(range) = first_subuid(&user, uid).filter(|r| r.count >= 1000) else {
        skip(
            test,
            format!("user {user:?} has no /etc/subuid and /etc/subgid ranges of 1000+ ids"),
        );
        return;
    };
    if which("newuidmap").is_none() {
        skip(test, "newuidmap not installed (Debian: uidmap)");
        return;
    }
    let Some(p) = prepare(test, uid, gid) else {
        return;
    };
    let reuid = format!("--reuid={uid}");
    let regid = format!("--regid={gid}");
    let wrapper = ["setpriv", &reuid, &regid, "--clear-groups"];
    let (ok, out, err) = run_helper(&p, &wrapper, &[]);
    assert!(ok, "helper failed");
    assert!(out.contains("STATE full"), "{out}");
    assert!(out.contains("ROOTLESS-HELPER OK"), "{out}");
    assert!(!err.contains("kiln: warning:"), "{err}");
    // chown 1000:1000 inside = the 1000th subordinate id outside (container id 1 = range start).
    let owned = std::fs::metadata(p.dir.path().join("run-overlay/upper/owned")).unwrap();
    assert_eq!(owned.uid(), range.start + 999);
    let new = std::fs::metadata(p.dir.path().join("run-overlay/upper/new.txt")).unwrap();
    assert_eq!(new.uid(), uid, "root inside is the user outside");
}

/// The unprivileged side. Does nothing unless started by one of the tests above.
#[test]
#[ignore = "started by the rootless tests as an unprivileged user"]
fn rootless_helper() {
    let Some(dir) = std::env::var_os(HELPER_DIR).map(PathBuf::from) else {
        return;
    };
    let state = kiln::exec::ensure_userns().expect("ensure_userns");
    let single = state.single_id();
    println!("STATE {} {state:?}", if single { "single" } else { "full" });
    assert!(matches!(state, UsernsState::UserNamespace { .. }));
    assert!(kiln::exec::userns::in_user_namespace());
    assert!(is_root(), "root of the namespace");
    let mounts_before = mountinfo();

    // 1. RUN on overlay (userxattr): output, exit code, upperdir contents, lower untouched.
    let lower = dir.join("lower");
    let lower_before = listing(&lower);
    let run_dir = dir.join("run-overlay");
    let (upper, work) = (run_dir.join("upper"), run_dir.join("work"));
    std::fs::create_dir_all(&upper).unwrap();
    std::fs::create_dir_all(&work).unwrap();
    let rootfs = RootfsSpec::Overlay {
        lowerdirs: vec![lower.clone()],
        upperdir: upper.clone(),
        workdir: work.clone(),
    };
    let mut script =
        "echo hi; echo new > /new.txt && rm /data/gone && rm -rf /olddir && mkdir /olddir \
         && echo pid=$$ && ls /proc | grep -cE '^[0-9]+$' && test ! -e /tmp/kiln-rootless-marker \
         && echo isolated"
            .to_string();
    if !single {
        script.push_str(" && touch /owned && chown 1000:1000 /owned && stat -c %u:%g /owned");
    }
    let (report, out, err) = run(&sh_spec(rootfs.clone(), &script));
    assert_eq!(report.status, ExitStatus::Code(0), "{out}{err}");
    assert!(out.starts_with("hi\npid=1\n"), "{out}");
    assert!(out.contains("isolated\n"), "{out}");
    if !single {
        assert!(out.ends_with("1000:1000\n"), "{out}");
    }
    assert_eq!(
        std::fs::read_to_string(upper.join("new.txt")).unwrap(),
        "new\n"
    );
    assert!(
        is_whiteout(&upper.join("data/gone")),
        "{:?}",
        listing(&upper)
    );
    assert_eq!(
        opaque_xattr(&upper.join("olddir")).as_deref(),
        Some("user.overlay.opaque=y")
    );
    assert_eq!(listing(&lower), lower_before, "the lowerdir changed");
    // What the layer differ makes of it, once the stubs are removed: only the command's work.
    report.remove_stubs(&upper).unwrap();
    let entries = kiln::layer::diff_upperdir(
        &upper,
        std::slice::from_ref(&lower),
        &kiln::layer::DiffOptions::default(),
    )
    .unwrap();
    let paths: Vec<String> = entries
        .iter()
        .map(|e| e.path.display().to_string())
        .collect();
    let mut expected = vec![
        "data",
        "data/.wh.gone",
        "new.txt",
        "olddir",
        "olddir/.wh..wh..opq",
    ];
    if !single {
        expected.push("owned");
    }
    assert_eq!(paths, expected);
    println!("overlay ok");

    // 2. Exit code and signal-free failure.
    let (report, _, _) = run(&sh_spec(rootfs.clone(), "exit 7"));
    assert_eq!(report.status, ExitStatus::Code(7));

    // 3. Network none: only lo, up, and no way out.
    let mut spec = sh_spec(
        rootfs.clone(),
        "ip -o link | grep -c ': lo:'; ip -o link | wc -l",
    );
    spec.network = Network::None;
    let (report, out, err) = run(&spec);
    assert_eq!(report.status, ExitStatus::Code(0), "{out}{err}");
    assert_eq!(out, "1\n1\n");
    println!("network ok");

    // 4. Other ids: usable with a full map, a clear error with a single-id map.
    let mut spec = sh_spec(rootfs.clone(), "id -u; id -g");
    spec.uid = 1000;
    spec.gid = 1000;
    match kiln::exec::run(&spec, Vec::new(), Vec::new()) {
        Ok(r) if !single => assert_eq!(r.status, ExitStatus::Code(0)),
        Err(ExecError::Setup { what, .. }) if single => {
            assert!(what.contains("setgid 1000"), "{what}");
            assert!(what.contains("not mapped"), "{what}");
        }
        other => panic!("uid 1000 (single={single}): {other:?}"),
    }
    println!("ids ok");

    // 5. /dev and /proc inside a user namespace.
    let (report, out, err) = run(&sh_spec(
        rootfs.clone(),
        "echo x > /dev/null && head -c 3 /dev/urandom | wc -c && test -c /dev/pts/ptmx && tr '\\0' ' ' < /proc/1/cmdline; echo",
    ));
    assert_eq!(report.status, ExitStatus::Code(0), "{out}{err}");
    assert!(out.starts_with("3\nsh -c"), "{out}");

    // 6. The copy-based fallback: a plain directory as the root.
    let plain = dir.join("run-dir/rootfs");
    std::fs::create_dir_all(plain.join("bin")).unwrap();
    std::fs::copy(lower.join("bin/busybox"), plain.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", plain.join("bin/sh")).unwrap();
    let spec = kiln::exec::RunSpec::new(
        RootfsSpec::Dir(plain.clone()),
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "/bin/busybox echo in-dir > /made".into(),
        ],
    );
    let (report, _, _) = run(&spec);
    assert_eq!(report.status, ExitStatus::Code(0));
    assert_eq!(
        std::fs::read_to_string(plain.join("made")).unwrap(),
        "in-dir\n"
    );
    println!("dir ok");

    // Nothing mounted in our namespace by all this.
    let new: Vec<String> = mountinfo()
        .into_iter()
        .filter(|m| !mounts_before.contains(m))
        .collect();
    assert!(new.is_empty(), "mounts left behind: {new:#?}");
    println!("ROOTLESS-HELPER OK");
}

#[test]
fn subordinate_id_files_are_parsed_by_name_or_uid() {
    use kiln::exec::userns::{SubIdRange, parse_subid};
    let text = "# comment\nalice:100000:65536\nbob:200000:0\n1001:300000:1000\nalice:500000:10\nbad line\ncarol:x:5\n";
    assert_eq!(
        parse_subid(text, "alice", 1000),
        [
            SubIdRange {
                start: 100000,
                count: 65536
            },
            SubIdRange {
                start: 500000,
                count: 10
            }
        ]
    );
    assert_eq!(parse_subid(text, "bob", 1002), []); // empty range
    assert_eq!(
        parse_subid(text, "dave", 1001),
        [SubIdRange {
            start: 300000,
            count: 1000
        }]
    );
    assert_eq!(parse_subid(text, "carol", 7), []);
    assert_eq!(parse_subid("eve:4294967295:2\n", "eve", 1), []); // overflows
}
