//! Snapshots with overlay-native whiteouts, real overlay mounts on them, and the upperdir differ.
//!
//! The scenario: two lower layers (the second with whiteouts and an opaque directory) are
//! unpacked into snapshots with `SnapshotStore::ensure`, overlay is mounted on them, a set of
//! changes is made through the merged directory (the merged view is recorded), the upper
//! directory is diffed into a layer, and that layer, applied with the ordinary (deleting)
//! whiteouts on top of the lowers in a plain directory, must give the merged view again. Then the
//! upper directory is adopted as the new layer's snapshot and a read-only overlay of the three
//! snapshots must give the merged view too.
//!
//! Run as root: once directly (`trusted.overlay.*`) and once inside
//! `unshare --user --map-root-user --mount` (`userxattr`, `user.overlay.*`), where this test
//! binary runs itself again. Skipped (with a message) when not root or without `unshare`.

mod common;

use common::assert_same_tree;
use common::build::is_root;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use kiln::layer::{
    ApplyOptions, Compression, DiffId, DiffOptions, EntryKind, LayerEntry, OverlayXattrPrefix,
    WriteOptions, apply_layer, diff_upperdir, lookup_lower, write_layer,
};
use kiln::snapshot::SnapshotStore;

const T1: i64 = 1_600_000_000;
const T2: i64 = 1_650_000_000;
const INNER_ENV: &str = "KILN_LAYER_DIFF_IN_USERNS";

fn layer(entries: Vec<LayerEntry>) -> (Vec<u8>, DiffId) {
    let mut out = Vec::new();
    let w = write_layer(entries, &WriteOptions::default(), &mut out).unwrap();
    (out, w.diff_id)
}

fn f(path: &str, data: &str, mode: u32) -> LayerEntry {
    LayerEntry::file(path, data.as_bytes().to_vec(), mode).with_mtime(T1)
}

fn d(path: &str, mode: u32) -> LayerEntry {
    LayerEntry::dir(path, mode).with_mtime(T1)
}

fn layer1(with_other_owner: bool) -> Vec<LayerEntry> {
    let mut v = vec![
        d("etc", 0o755),
        f("etc/app.conf", "conf", 0o644),
        d("bin", 0o755),
        f("bin/tool", "#!/bin/sh\n", 0o755),
        d("data", 0o755),
        f("data/keep", "k", 0o644),
        f("data/old", "o", 0o644),
        d("data/sub", 0o755),
        f("data/sub/deep", "d", 0o644),
        f("del-file", "x", 0o644),
        d("del-dir", 0o755),
        f("del-dir/a", "a", 0o644),
        d("del-dir/b", 0o700),
        f("del-dir/b/c", "c", 0o600),
        d("dir-to-file", 0o755),
        f("dir-to-file/inner", "i", 0o644),
        f("file-to-dir", "f", 0o644),
        d("recreate", 0o755),
        f("recreate/r1", "1", 0o644),
        f("recreate/r2", "2", 0o644),
        f("touch-me", "same", 0o644),
        f("chmod-same", "m", 0o640),
        d("chmod-dir", 0o750),
        f("chown-me", "c", 0o644),
        LayerEntry::symlink("lnk", "etc/app.conf").with_mtime(T1),
        d("opq", 0o755),
        f("opq/a", "a", 0o644),
        f("opq/b", "b", 0o644),
        d("gone-dir", 0o755),
        f("gone-dir/x", "x", 0o644),
        LayerEntry::fifo("pipe", 0o644).with_mtime(T1),
        f("setuid", "s", 0o4755),
    ];
    for name in ["hl1", "hl2"] {
        let mut e = f(name, "hard", 0o644);
        e.link_key = Some((1, 1));
        v.push(e);
    }
    if with_other_owner {
        v.push(f("owned", "o", 0o644).with_owner(1000, 1000));
    }
    v
}

fn layer2() -> Vec<LayerEntry> {
    vec![
        LayerEntry::dir("data", 0o755).with_mtime(T2),
        LayerEntry::whiteout("data/old"),
        LayerEntry::dir("opq", 0o755).with_mtime(T2),
        LayerEntry::opaque_whiteout("opq"),
        f("opq/new", "n", 0o644),
        LayerEntry::whiteout("gone-dir"),
        f("l2file", "l2", 0o644),
        LayerEntry::dir("etc", 0o755).with_mtime(T2),
        f("etc/app.conf", "conf2", 0o644),
    ]
}

/// One node of a tree as seen through `lstat` and `read`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// Whole seconds; not compared for symlinks.
    mtime: Option<i64>,
    /// File content, symlink target, or device number.
    data: Vec<u8>,
    /// `user.*` attributes of regular files.
    xattrs: BTreeMap<String, Vec<u8>>,
}

fn user_xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap_or(0);
    let mut out = BTreeMap::new();
    for name in buf[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8(name.to_vec()).unwrap();
        if !name.starts_with("user.") {
            continue;
        }
        let mut v = vec![0u8; 4096];
        let m = rustix::fs::lgetxattr(p, name.as_str(), &mut v[..]).unwrap();
        v.truncate(m);
        out.insert(name, v);
    }
    out
}

/// Every entry under `root` (not `root` itself), by relative path, except `exclude`.
fn tree(root: &Path, exclude: &[&str]) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for de in fs::read_dir(&dir).unwrap() {
            let p = de.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            if exclude.contains(&rel.as_str()) {
                continue;
            }
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let (kind, data, mtime) = if ft.is_dir() {
                stack.push(p.clone());
                ("dir", Vec::new(), Some(md.mtime()))
            } else if ft.is_file() {
                ("file", fs::read(&p).unwrap(), Some(md.mtime()))
            } else if ft.is_symlink() {
                let t = fs::read_link(&p).unwrap();
                ("symlink", t.to_str().unwrap().as_bytes().to_vec(), None)
            } else if ft.is_fifo() {
                ("fifo", Vec::new(), Some(md.mtime()))
            } else if ft.is_char_device() {
                ("char", md.rdev().to_string().into_bytes(), None)
            } else {
                ("other", Vec::new(), None)
            };
            let xattrs = if ft.is_file() {
                user_xattrs(&p)
            } else {
                BTreeMap::new()
            };
            out.insert(
                rel,
                Node {
                    kind,
                    mode: md.mode() & 0o7777,
                    uid: md.uid(),
                    gid: md.gid(),
                    mtime,
                    data,
                    xattrs,
                },
            );
        }
    }
    out
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mount_overlay(opts: &str, merged: &Path) {
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", opts])
        .arg(merged));
}

fn umount(merged: &Path) {
    run(Command::new("umount").arg(merged));
}

fn join_lowers(lowers: &[PathBuf]) -> String {
    lowers
        .iter()
        .map(|p| p.to_str().unwrap())
        .collect::<Vec<_>>()
        .join(":")
}

fn set_mtime(p: &Path, secs: i64) {
    let t = UNIX_EPOCH + Duration::from_secs(secs as u64);
    File::open(p)
        .unwrap()
        .set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

fn entry<'a>(entries: &'a [LayerEntry], path: &str) -> Option<&'a LayerEntry> {
    entries.iter().find(|e| e.path == Path::new(path))
}

/// The whole scenario, with opaque directories marked with `prefix` (and overlay mounted with
/// `userxattr` for `User`). `as_real_root`: chown to other ids too.
fn scenario(prefix: OverlayXattrPrefix, as_real_root: bool) {
    let t = tempfile::tempdir().unwrap();
    let store = SnapshotStore::new(t.path())
        .unwrap()
        .with_xattr_prefix(prefix);
    assert_eq!(store.xattr_prefix(), prefix);

    // Lower snapshots.
    let (b1, id1) = layer(layer1(as_real_root));
    let (b2, id2) = layer(layer2());
    let s1 = store.ensure(&id1, || Ok(&b1[..])).unwrap();
    let s2 = store.ensure(&id2, || Ok(&b2[..])).unwrap();
    assert_eq!(s2, store.path(&id2));
    // Overlay-native whiteouts in the snapshot of layer 2.
    for wh in ["data/old", "gone-dir"] {
        let md = fs::symlink_metadata(s2.join(wh)).unwrap();
        assert!(md.file_type().is_char_device() && md.rdev() == 0, "{wh}");
    }
    let mut v = [0u8; 8];
    let n = rustix::fs::lgetxattr(s2.join("opq"), prefix.opaque_xattr(), &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"y");
    assert!(!s2.join("opq/.wh..wh..opq").exists());
    assert!(!s2.join("data/.wh.old").exists());
    assert_eq!(
        fs::symlink_metadata(s2.join("data")).unwrap().mtime(),
        T2,
        "whiteout creation must not disturb the directory's mtime"
    );
    let lowers = store.lowerdirs(&[id1, id2]);
    assert_eq!(lowers, vec![s2.clone(), s1.clone()]);
    assert_eq!(
        lookup_lower(&lowers, Path::new("opq/a")).unwrap(),
        None,
        "hidden by the opaque directory"
    );
    assert_eq!(lookup_lower(&lowers, Path::new("data/old")).unwrap(), None);
    assert_eq!(
        lookup_lower(&lowers, Path::new("data/keep")).unwrap(),
        Some(s1.join("data/keep"))
    );

    // Mount and change things.
    let scratch = store.scratch().unwrap();
    let (upper, work, merged) = (
        scratch.path().join("upper"),
        scratch.path().join("work"),
        t.path().join("merged"),
    );
    for p in [&upper, &work, &merged] {
        fs::create_dir(p).unwrap();
    }
    let extra = match prefix {
        OverlayXattrPrefix::User => ",userxattr",
        OverlayXattrPrefix::Trusted => ",redirect_dir=off,metacopy=off",
    };
    mount_overlay(
        &format!(
            "lowerdir={},upperdir={},workdir={}{extra}",
            join_lowers(&lowers),
            upper.display(),
            work.display()
        ),
        &merged,
    );
    let m = |p: &str| merged.join(p);
    // Through the mount, lower layer 2 hides what it should.
    assert!(!m("data/old").exists() && !m("gone-dir").exists() && !m("opq/a").exists());
    assert_eq!(fs::read(m("etc/app.conf")).unwrap(), b"conf2");

    fs::create_dir_all(m("new/dir")).unwrap();
    fs::write(m("new/dir/file"), "new").unwrap();
    fs::write(m("newfile"), "nf").unwrap();
    fs::set_permissions(m("newfile"), fs::Permissions::from_mode(0o600)).unwrap();
    rustix::fs::lsetxattr(
        m("newfile"),
        "user.test",
        b"value",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    fs::hard_link(m("newfile"), m("newfile-link")).unwrap();
    std::os::unix::fs::symlink("/etc/app.conf", m("newlink")).unwrap();
    fs::write(m("etc/app.conf"), "modified").unwrap();
    fs::set_permissions(m("bin/tool"), fs::Permissions::from_mode(0o700)).unwrap();
    if as_real_root {
        std::os::unix::fs::chown(m("chown-me"), Some(1000), Some(1000)).unwrap();
    }
    fs::remove_file(m("del-file")).unwrap();
    fs::remove_file(m("l2file")).unwrap();
    fs::remove_file(m("opq/new")).unwrap();
    fs::remove_dir_all(m("del-dir")).unwrap();
    fs::remove_dir_all(m("dir-to-file")).unwrap();
    fs::write(m("dir-to-file"), "now a file").unwrap();
    fs::remove_file(m("file-to-dir")).unwrap();
    fs::create_dir(m("file-to-dir")).unwrap();
    fs::write(m("file-to-dir/inside"), "in").unwrap();
    fs::remove_dir_all(m("recreate")).unwrap();
    fs::create_dir(m("recreate")).unwrap();
    fs::write(m("recreate/r3"), "3").unwrap();
    set_mtime(&m("touch-me"), T1 + 1000);
    fs::set_permissions(m("chmod-same"), fs::Permissions::from_mode(0o640)).unwrap();
    fs::set_permissions(m("chmod-dir"), fs::Permissions::from_mode(0o750)).unwrap();
    fs::write(m("data/sub/deep"), "deeper").unwrap();
    // A bind-mount stub the executor would make: skipped by the differ.
    fs::write(m("etc/hosts"), "").unwrap();

    let merged_view = tree(&merged, &["etc/hosts"]);
    umount(&merged);
    // Copied up, but unchanged.
    assert!(upper.join("chmod-same").exists() && upper.join("chmod-dir").exists());

    // Diff.
    let opts = DiffOptions {
        skip: vec!["/etc/hosts".into()],
        ..Default::default()
    };
    let entries = diff_upperdir(&upper, &lowers, &opts).unwrap();
    let paths: Vec<&str> = entries.iter().map(|e| e.path.to_str().unwrap()).collect();
    let has = |p: &str| paths.contains(&p);
    for p in [
        ".wh.del-file",
        ".wh.del-dir",
        ".wh.l2file",
        "opq/.wh.new",
        "recreate/.wh..wh..opq",
        "recreate/r3",
        "touch-me",
        "data",
        "data/sub",
        "data/sub/deep",
        "bin",
        "bin/tool",
        "new",
        "new/dir",
        "new/dir/file",
        "newlink",
        "etc/app.conf",
    ] {
        assert!(has(p), "{p} missing from {paths:?}");
    }
    for p in [
        "chmod-same",
        "chmod-dir",
        "data/keep",
        "etc/hosts",
        "hl1",
        ".wh.data",
    ] {
        assert!(!has(p), "{p} should be left out: {paths:?}");
    }
    assert!(!paths.iter().any(|p| p.starts_with("recreate/r1")));
    assert!(matches!(
        entry(&entries, "dir-to-file").unwrap().kind,
        EntryKind::File(_)
    ));
    assert_eq!(entry(&entries, "file-to-dir").unwrap().kind, EntryKind::Dir);
    assert_eq!(entry(&entries, "bin/tool").unwrap().mode, 0o700);
    assert_eq!(entry(&entries, "touch-me").unwrap().mtime, T1 + 1000);
    assert_eq!(entry(&entries, "data").unwrap().mtime, T2, "parent as seen");
    assert_eq!(
        entry(&entries, "newfile").unwrap().xattrs.get("user.test"),
        Some(&b"value".to_vec())
    );
    assert!(entry(&entries, "newfile").unwrap().link_key.is_some());
    assert_eq!(
        entry(&entries, "newfile").unwrap().link_key,
        entry(&entries, "newfile-link").unwrap().link_key
    );
    if as_real_root {
        let c = entry(&entries, "chown-me").unwrap();
        assert_eq!((c.uid, c.gid), (1000, 1000));
    }
    for e in &entries {
        assert!(
            !e.xattrs.keys().any(|k| k.contains(".overlay.")),
            "{}: {:?}",
            e.path.display(),
            e.xattrs
        );
    }
    let mut sorted = entries.clone();
    sorted.sort_by(|a, b| kiln::layer::compare_layer_paths(&a.path, &b.path));
    assert_eq!(sorted, entries, "sorted in layer order");

    // Write the layer; GNU tar sees the OCI whiteouts.
    let blob_path = t.path().join("layer.tar");
    let w = {
        let mut out = File::create(&blob_path).unwrap();
        write_layer(
            entries.clone(),
            &WriteOptions {
                compression: Compression::Uncompressed,
                ..Default::default()
            },
            &mut out,
        )
        .unwrap()
    };
    let listing = Command::new("tar")
        .arg("-tvf")
        .arg(&blob_path)
        .output()
        .unwrap();
    assert!(listing.status.success());
    let listing = String::from_utf8(listing.stdout).unwrap();
    for name in [
        ".wh.del-file",
        ".wh.del-dir",
        "recreate/.wh..wh..opq",
        "opq/.wh.new",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(name)),
            "{name} not in\n{listing}"
        );
    }
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with("hrw-------") && l.contains("newfile-link link to newfile")),
        "{listing}"
    );
    let blob = fs::read(&blob_path).unwrap();

    // Apply lowers + the new layer, deleting whiteouts, onto a plain directory.
    let plain = t.path().join("plain");
    for b in [&b1, &b2, &blob] {
        let r = apply_layer(&b[..], &plain, &ApplyOptions::default()).unwrap();
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    }
    assert_same_tree(
        "layers applied in a plain directory vs the merged view",
        &merged_view,
        &tree(&plain, &[]),
    );

    // The upper directory becomes the new layer's snapshot; a read-only overlay of the three
    // snapshots is the merged view again.
    let s3 = store.adopt(&w.diff_id, &upper, &opts).unwrap();
    assert!(!upper.exists() && !s3.join("etc/hosts").exists());
    let lowers3 = store.lowerdirs(&[id1, id2, w.diff_id]);
    assert_eq!(lowers3[0], s3);
    let ro = t.path().join("ro");
    fs::create_dir(&ro).unwrap();
    let extra = match prefix {
        OverlayXattrPrefix::User => ",userxattr",
        OverlayXattrPrefix::Trusted => "",
    };
    mount_overlay(&format!("lowerdir={}{extra}", join_lowers(&lowers3)), &ro);
    let stacked = tree(&ro, &[]);
    umount(&ro);
    assert_same_tree(
        "stacked snapshots vs the merged view",
        &merged_view,
        &stacked,
    );

    // A second diff of the adopted snapshot against its lowers gives the same layer.
    let again = diff_upperdir(&s3, &store.lowerdirs(&[id1, id2]), &opts).unwrap();
    let mut out = Vec::new();
    let w2 = write_layer(
        again,
        &WriteOptions {
            compression: Compression::Uncompressed,
            ..Default::default()
        },
        &mut out,
    )
    .unwrap();
    assert_eq!(w2.diff_id, w.diff_id);

    drop(scratch);
    assert_eq!(store.prune(&[id1, id2]).unwrap().0, vec![w.diff_id]);
    let mut left = store.list().unwrap();
    left.sort();
    let mut want = vec![id1, id2];
    want.sort();
    assert_eq!(left, want);
}

#[test]
fn overlay_diff_as_root() {
    if !is_root() {
        common::skip(
            "overlay_diff_as_root",
            "overlay mounts with trusted.overlay.* need root",
        );
        return;
    }
    if std::env::var_os(INNER_ENV).is_some() {
        return; // the user-namespace run of the other test
    }
    assert_eq!(OverlayXattrPrefix::detect(), OverlayXattrPrefix::Trusted);
    scenario(OverlayXattrPrefix::Trusted, true);
}

#[test]
fn overlay_diff_in_user_namespace() {
    if std::env::var_os(INNER_ENV).is_some() {
        assert_eq!(OverlayXattrPrefix::detect(), OverlayXattrPrefix::User);
        scenario(OverlayXattrPrefix::User, false);
        return;
    }
    if !is_root() {
        // tempdirs of other users are not reachable through a single-id map the same way;
        // the rootless path is exercised end to end by the build tests.
        common::skip(
            "overlay_diff_in_user_namespace",
            "run as root (the scenario maps root to itself in the namespace)",
        );
        return;
    }
    let exe = std::env::current_exe().unwrap();
    run_in_user_namespace(&exe, None);
    // Truly unprivileged too: as `nobody`, mapped to root in the namespace (a copy of this test
    // binary, which may live where nobody cannot read it).
    let has_setpriv = Command::new("setpriv").arg("--version").output().is_ok();
    if has_setpriv {
        let dir = tempfile::tempdir().unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let copy = dir.path().join("layer_diff");
        fs::copy(&exe, &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        run_in_user_namespace(&copy, Some(65534));
    } else {
        common::skip(
            "overlay_diff_in_user_namespace (as nobody)",
            "setpriv (util-linux) is not installed",
        );
    }
}

/// Runs `overlay_diff_in_user_namespace` of the test binary `exe` inside
/// `unshare --user --map-root-user --mount`, as `uid` (and the same gid) when given.
fn run_in_user_namespace(exe: &Path, uid: Option<u32>) {
    let mut cmd = match uid {
        Some(uid) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={uid}"))
                .arg("--clear-groups")
                .arg("unshare");
            c
        }
        None => Command::new("unshare"),
    };
    cmd.args(["--user", "--map-root-user", "--mount"])
        .arg(exe)
        .args([
            "overlay_diff_in_user_namespace",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, "1")
        .env("TMPDIR", std::env::temp_dir());
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inside the user namespace (uid {uid:?}): {}\n{stdout}\n{stderr}",
        out.status
    );
}

#[test]
fn diff_of_an_empty_upper_is_empty_and_errors_name_paths() {
    let t = tempfile::tempdir().unwrap();
    let upper = t.path().join("upper");
    fs::create_dir(&upper).unwrap();
    let lower = t.path().join("lower");
    fs::create_dir(&lower).unwrap();
    assert!(
        diff_upperdir(&upper, &[lower], &DiffOptions::default())
            .unwrap()
            .is_empty()
    );
    let err = diff_upperdir(&t.path().join("nope"), &[], &DiffOptions::default()).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn a_whiteout_and_a_directory_of_one_layer_make_an_opaque_directory() {
    if !is_root() {
        common::skip(
            "a_whiteout_and_a_directory_of_one_layer_make_an_opaque_directory",
            "whiteout devices need root",
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let store = SnapshotStore::new(t.path())
        .unwrap()
        .with_xattr_prefix(OverlayXattrPrefix::User);
    let (b1, id1) = layer(vec![
        f("x/old", "o", 0o644),
        f("-y/old", "o", 0o644),
        f("z", "z", 0o644),
    ]);
    // `.wh.x` sorts before `x`, `.wh.-y` after `-y`: both orders.
    let (b2, id2) = layer(vec![
        LayerEntry::whiteout("x"),
        d("x", 0o755),
        f("x/new", "n", 0o644),
        LayerEntry::whiteout("-y"),
        d("-y", 0o755),
        f("-y/new", "n", 0o644),
        LayerEntry::whiteout("z"),
    ]);
    store.ensure(&id1, || Ok(&b1[..])).unwrap();
    let s2 = store.ensure(&id2, || Ok(&b2[..])).unwrap();
    let lowers = store.lowerdirs(&[id1, id2]);
    for dir in ["x", "-y"] {
        let mut v = [0u8; 4];
        let n = rustix::fs::lgetxattr(s2.join(dir), "user.overlay.opaque", &mut v[..]).unwrap();
        assert_eq!(&v[..n], b"y", "{dir}");
        let old = format!("{dir}/old");
        assert_eq!(lookup_lower(&lowers, Path::new(&old)).unwrap(), None);
        let new = format!("{dir}/new");
        assert_eq!(
            lookup_lower(&lowers, Path::new(&new)).unwrap(),
            Some(s2.join(&new))
        );
    }
    assert_eq!(lookup_lower(&lowers, Path::new("z")).unwrap(), None);
}
