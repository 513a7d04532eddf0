//! Copy-based snapshots: `copy_tree` reproduces a directory exactly, `diff_trees` finds the layer
//! between two directories, and that layer, written and applied onto the old directory, gives
//! the new one. Where overlay is available (root), `diff_trees` is checked against
//! `diff_upperdir` for the same change made through an overlay mount.
//!
//! Most checks need root (owners, devices, `trusted.*`); without it they print a skip line.
//! The single-id user namespace case runs this binary again inside `unshare --user
//! --map-root-user`.

mod common;

use common::assert_same_tree;
use common::build::is_root;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::layer::{
    ApplyOptions, DiffOptions, EntryKind, FileSource, LayerEntry, WriteOptions, apply_layer,
    diff_trees, diff_upperdir, write_layer,
};
use kiln::snapshot::copy_tree;
use rustix::fs::{AtFlags, CWD, FileType, Mode, Timespec, Timestamps, XattrFlags};

const T1: i64 = 1_600_000_000;
const INNER_ENV: &str = "KILN_LAYER_TREE_IN_USERNS";

// ---------------------------------------------------------------------------------------------
// helpers

/// Real root (uid 0 in the initial user namespace): devices, `trusted.*`, other owners.
fn is_real_root() -> bool {
    is_root()
        && fs::read_to_string("/proc/self/uid_map")
            .is_ok_and(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
}

/// Sets atime and mtime (to the nanosecond) without following a symlink.
fn set_time(p: &Path, secs: i64, nsec: i64) {
    let t = Timespec {
        tv_sec: secs,
        tv_nsec: nsec,
    };
    let times = Timestamps {
        last_access: t,
        last_modification: t,
    };
    rustix::fs::utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW).unwrap();
}

fn set_xattr(p: &Path, name: &str, value: &[u8]) {
    rustix::fs::lsetxattr(p, name, value, XattrFlags::empty()).unwrap();
}

fn chmod(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).unwrap();
}

fn mknod(p: &Path, kind: FileType, major: u32, minor: u32) {
    rustix::fs::mknodat(
        CWD,
        p,
        kind,
        Mode::from_raw_mode(0o644),
        rustix::fs::makedev(major, minor),
    )
    .unwrap();
}

fn write(p: &Path, data: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, data).unwrap();
}

/// Every extended attribute of `p` (not followed), by name.
fn xattrs(p: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    let n = rustix::fs::llistxattr(p, &mut buf[..]).unwrap_or(0);
    let mut out = BTreeMap::new();
    for name in buf[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let name = String::from_utf8(name.to_vec()).unwrap();
        let mut v = vec![0u8; 4096];
        let m = rustix::fs::lgetxattr(p, name.as_str(), &mut v[..]).unwrap();
        v.truncate(m);
        out.insert(name, v);
    }
    out
}

/// One node of a tree as `lstat`, `read` and `getxattr` see it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: &'static str,
    mode: u32,
    uid: u32,
    gid: u32,
    /// (seconds, nanoseconds); nanoseconds are 0 unless `Exact`, none for symlinks unless `Exact`.
    mtime: Option<(i64, i64)>,
    /// File content, symlink target, or device number.
    data: Vec<u8>,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// For a non-directory with several links: the first path (in sorted order) of its inode.
    link_group: Option<String>,
}

#[derive(Clone, Copy, PartialEq)]
enum Precision {
    /// Everything `copy_tree` keeps: mtimes to the ns (symlinks too), every attribute everywhere.
    Exact,
    /// What a layer carries through `apply_layer`: whole seconds, no symlink mtimes, attributes
    /// of regular files only.
    Layer,
}

/// Every entry under `root` (not `root` itself), by relative path.
fn tree(root: &Path, precision: Precision) -> BTreeMap<String, Node> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for de in fs::read_dir(&dir).unwrap() {
            let p = de.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_str().unwrap().to_string();
            let md = fs::symlink_metadata(&p).unwrap();
            let ft = md.file_type();
            let exact = precision == Precision::Exact;
            let (kind, data) = if ft.is_dir() {
                stack.push(p.clone());
                ("dir", Vec::new())
            } else if ft.is_file() {
                ("file", fs::read(&p).unwrap())
            } else if ft.is_symlink() {
                let t = fs::read_link(&p).unwrap();
                ("symlink", t.to_str().unwrap().as_bytes().to_vec())
            } else if ft.is_fifo() {
                ("fifo", Vec::new())
            } else if ft.is_char_device() {
                ("char", md.rdev().to_string().into_bytes())
            } else if ft.is_block_device() {
                ("block", md.rdev().to_string().into_bytes())
            } else {
                ("socket", Vec::new())
            };
            let mtime = match (exact, kind) {
                (true, _) => Some((md.mtime(), md.mtime_nsec())),
                (false, "symlink") => None,
                (false, _) => Some((md.mtime(), 0)),
            };
            let xattrs = if exact || ft.is_file() {
                xattrs(&p)
            } else {
                BTreeMap::new()
            };
            if !ft.is_dir() && md.nlink() > 1 {
                inodes.insert(rel.clone(), (md.dev(), md.ino()));
            }
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
                    link_group: None,
                },
            );
        }
    }
    for (rel, ino) in &inodes {
        let first = inodes.iter().find(|(_, i)| *i == ino).unwrap().0;
        out.get_mut(rel).unwrap().link_group = Some(first.clone());
    }
    out
}

fn ino(p: &Path) -> u64 {
    fs::symlink_metadata(p).unwrap().ino()
}

/// An entry as a short string: `path kind`, with the kind `dir`, `file`, `wh` (a whiteout),
/// `symlink`, `char`, `fifo`.
fn describe(e: &LayerEntry) -> String {
    let kind = match &e.kind {
        EntryKind::File(_) if e.path.to_str().unwrap().contains(".wh.") => "wh",
        EntryKind::File(_) => "file",
        EntryKind::Dir => "dir",
        EntryKind::Symlink(_) => "symlink",
        EntryKind::Hardlink(_) => "hardlink",
        EntryKind::CharDevice { .. } => "char",
        EntryKind::BlockDevice { .. } => "block",
        EntryKind::Fifo => "fifo",
    };
    format!("{} {kind}", e.path.display())
}

fn describe_all(entries: &[LayerEntry]) -> Vec<String> {
    entries.iter().map(describe).collect()
}

fn entry<'a>(entries: &'a [LayerEntry], path: &str) -> &'a LayerEntry {
    entries
        .iter()
        .find(|e| e.path == Path::new(path))
        .unwrap_or_else(|| panic!("no entry {path} in {:?}", describe_all(entries)))
}

/// A case: `old` made by `setup`, copied with `copy_tree` into `new`, `change` applied to `new`,
/// then diffed. Returns the entries and the temporary directory that holds `old` and `new`
/// (the entries read file contents from `new`).
fn case(
    setup: impl FnOnce(&Path),
    change: impl FnOnce(&Path),
    opts: &DiffOptions,
) -> (Vec<LayerEntry>, tempfile::TempDir) {
    let t = tempfile::tempdir().unwrap();
    let (old, new) = (t.path().join("old"), t.path().join("new"));
    fs::create_dir(&old).unwrap();
    setup(&old);
    fs::create_dir(&new).unwrap();
    copy_tree(&old, &new).unwrap();
    change(&new);
    let entries = diff_trees(&old, &new, opts).unwrap();
    (entries, t)
}

fn simple_old(old: &Path) {
    write(&old.join("d/f"), "content");
    write(&old.join("d/g"), "other");
    write(&old.join("d/sub/deep"), "deep");
    write(&old.join("top"), "top");
    for p in ["d/f", "d/g", "d/sub/deep", "top", "d/sub", "d"] {
        set_time(&old.join(p), T1, 123_456_789);
    }
}

fn layer_blob(entries: Vec<LayerEntry>) -> Vec<u8> {
    let mut out = Vec::new();
    write_layer(entries, &WriteOptions::default(), &mut out).unwrap();
    out
}

// ---------------------------------------------------------------------------------------------
// copy_tree

/// A tree with every kind of entry and every piece of metadata `copy_tree` keeps.
fn rich_tree(root: &Path, privileged: bool) {
    write(&root.join("etc/conf"), "conf\n");
    write(&root.join("empty"), "");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(root.join("big"), &big).unwrap();
    write(&root.join("bin/suid"), "#!/bin/sh\n");
    chmod(&root.join("bin/suid"), 0o4755);
    write(&root.join("bin/sgid"), "#!/bin/sh\n");
    chmod(&root.join("bin/sgid"), 0o2711);
    // A read-only directory with content, a sticky one, a setgid one.
    write(&root.join("ro/inside"), "i");
    write(&root.join("tmp/x"), "x");
    write(&root.join("shared/y"), "y");
    std::os::unix::fs::symlink("../etc/conf", root.join("bin/rel")).unwrap();
    std::os::unix::fs::symlink("/etc/conf", root.join("abs")).unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("dangling")).unwrap();
    // Hard links: a pair across directories and a triple.
    write(&root.join("links/a"), "pair");
    fs::hard_link(root.join("links/a"), root.join("etc/a-link")).unwrap();
    write(&root.join("links/t1"), "triple");
    fs::hard_link(root.join("links/t1"), root.join("links/t2")).unwrap();
    fs::hard_link(root.join("links/t1"), root.join("links/t3")).unwrap();
    rustix::fs::mknodat(
        CWD,
        root.join("pipe"),
        FileType::Fifo,
        Mode::from_raw_mode(0o640),
        0,
    )
    .unwrap();
    // Skipped: a layer cannot carry a socket.
    let _sock = std::os::unix::net::UnixListener::bind(root.join("sock")).unwrap();
    set_xattr(&root.join("etc/conf"), "user.x", b"value");
    set_xattr(&root.join("etc"), "user.dir", b"d");
    if privileged {
        // Unreadable but to root (which `copy_tree` and `apply_layer` run as).
        write(&root.join("secret"), "no one");
        chmod(&root.join("secret"), 0o000);
        fs::create_dir(root.join("dev")).unwrap();
        mknod(&root.join("dev/null"), FileType::CharacterDevice, 1, 3);
        mknod(&root.join("dev/loop9"), FileType::BlockDevice, 7, 9);
        mknod(&root.join("dev/whiteout"), FileType::CharacterDevice, 0, 0);
        set_xattr(&root.join("bin/suid"), "trusted.t", b"\x00\x01binary");
        set_xattr(&root.join("abs"), "trusted.on-a-symlink", b"s");
        chown(&root.join("etc/conf"), 1000, 1000);
        chown(&root.join("bin"), 1001, 1002);
        chown(&root.join("dangling"), 1000, 1000);
        chown(&root.join("links/a"), 1000, 1000);
        // A chown clears setuid: set it again, as an image would have it.
        chown(&root.join("bin/suid"), 1000, 1000);
        chmod(&root.join("bin/suid"), 0o4755);
    }
    // Times last, children before parents; distinct nanoseconds everywhere.
    let mut all: Vec<PathBuf> = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for de in fs::read_dir(&d).unwrap() {
            let p = de.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p.clone());
            }
            all.push(p);
        }
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for (i, p) in all.iter().enumerate() {
        if p.ends_with("sock") {
            continue;
        }
        set_time(p, T1 + i as i64, 1_000 + i as i64);
    }
    chmod(&root.join("ro"), 0o555);
    chmod(&root.join("tmp"), 0o1777);
    chmod(&root.join("shared"), 0o2775);
    for (i, d) in ["ro", "tmp", "shared"].iter().enumerate() {
        set_time(&root.join(d), T1 - 100 - i as i64, 999_999_999);
    }
    set_time(root, T1 - 1, 5);
}

#[test]
fn copy_tree_reproduces_everything() {
    let t = tempfile::tempdir().unwrap();
    let (src, dst) = (t.path().join("src"), t.path().join("dst"));
    fs::create_dir(&src).unwrap();
    fs::create_dir(&dst).unwrap();
    let privileged = is_real_root();
    if !privileged {
        common::skip(
            "copy_tree_reproduces_everything (partly)",
            "devices, trusted.* and other owners need real root",
        );
    }
    rich_tree(&src, privileged);
    copy_tree(&src, &dst).unwrap();

    let want = tree(&src, Precision::Exact);
    let got = tree(&dst, Precision::Exact);
    let mut want_no_sock = want.clone();
    assert_eq!(want_no_sock.remove("sock").map(|n| n.kind), Some("socket"));
    assert_same_tree("copy", &want_no_sock, &got);

    // The root's own metadata too.
    let (s, d) = (fs::metadata(&src).unwrap(), fs::metadata(&dst).unwrap());
    assert_eq!(
        (s.mode(), s.mtime(), s.mtime_nsec()),
        (d.mode(), d.mtime(), d.mtime_nsec())
    );
    // Hard links are links in the copy, of new inodes.
    assert_eq!(ino(&dst.join("links/a")), ino(&dst.join("etc/a-link")));
    assert_ne!(ino(&dst.join("links/a")), ino(&src.join("links/a")));
    assert_eq!(ino(&dst.join("links/t1")), ino(&dst.join("links/t3")));
    assert_eq!(
        fs::symlink_metadata(dst.join("links/t2")).unwrap().nlink(),
        3
    );
    if privileged {
        let md = fs::symlink_metadata(dst.join("etc/conf")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1000));
        let md = fs::symlink_metadata(dst.join("bin/suid")).unwrap();
        assert_eq!((md.uid(), md.mode() & 0o7777), (1000, 0o4755));
        assert_eq!(
            xattrs(&dst.join("bin/suid")).get("trusted.t").unwrap(),
            b"\x00\x01binary"
        );
        assert_eq!(
            fs::symlink_metadata(dst.join("dev/whiteout"))
                .unwrap()
                .rdev(),
            0
        );
    }
    assert_eq!(xattrs(&dst.join("etc/conf"))["user.x"], b"value");

    // The copy is what the differ calls unchanged.
    let e = diff_trees(&src, &dst, &DiffOptions::default()).unwrap();
    assert!(e.is_empty(), "{:?}", describe_all(&e));
}

#[test]
fn copy_tree_refuses_a_non_empty_target_and_names_missing_paths() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("f"), "f");
    let err = copy_tree(&src, &t.path().join("missing")).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    let err = copy_tree(&t.path().join("nosrc"), &src).unwrap_err();
    assert!(err.to_string().contains("nosrc"), "{err}");
    let err = copy_tree(&src, t.path()).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

/// In a user namespace that maps only root, owners of other ids cannot be given: the copy goes
/// on with them left as created (best effort), and `trusted.*` attributes are left out.
#[test]
fn copy_tree_in_a_single_id_user_namespace() {
    if let Some(dir) = std::env::var_os(INNER_ENV) {
        let dir = PathBuf::from(dir);
        let (src, dst) = (dir.join("src"), dir.join("dst"));
        fs::create_dir(&dst).unwrap();
        copy_tree(&src, &dst).unwrap();
        assert_eq!(fs::read_to_string(dst.join("d/owned")).unwrap(), "o");
        let md = fs::symlink_metadata(dst.join("d/owned")).unwrap();
        assert_eq!((md.uid(), md.mode() & 0o7777), (0, 0o4755));
        assert_eq!(xattrs(&dst.join("d/owned"))["user.x"], b"1");
        assert_eq!(ino(&dst.join("d/owned")), ino(&dst.join("d/link")));
        return;
    }
    if !is_real_root() {
        common::skip(
            "copy_tree_in_a_single_id_user_namespace",
            "run as real root (the namespace maps root to itself)",
        );
        return;
    }
    if Command::new("unshare").arg("--version").output().is_err() {
        common::skip(
            "copy_tree_in_a_single_id_user_namespace",
            "unshare not found",
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    write(&src.join("d/owned"), "o");
    fs::hard_link(src.join("d/owned"), src.join("d/link")).unwrap();
    set_xattr(&src.join("d/owned"), "user.x", b"1");
    set_xattr(&src.join("d/owned"), "trusted.y", b"2");
    chown(&src.join("d/owned"), 1000, 1000);
    chmod(&src.join("d/owned"), 0o4755);
    chown(&src.join("d"), 1000, 1000);
    let out = Command::new("unshare")
        .args(["--user", "--map-root-user"])
        .arg(std::env::current_exe().unwrap())
        .args([
            "copy_tree_in_a_single_id_user_namespace",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER_ENV, t.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "inside the user namespace: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// diff_trees, case by case

#[test]
fn unchanged_tree_is_empty() {
    let (e, _t) = case(
        simple_old,
        |new| {
            // Reading and opening for writing without writing change nothing that counts.
            fs::read(new.join("d/f")).unwrap();
            File::options().append(true).open(new.join("d/g")).unwrap();
            chmod(&new.join("top"), 0o644);
        },
        &DiffOptions::default(),
    );
    assert!(e.is_empty(), "{:?}", describe_all(&e));
}

#[test]
fn added_file_comes_with_its_parents() {
    let (e, _t) = case(
        simple_old,
        |new| write(&new.join("d/sub/new"), "new"),
        &DiffOptions::default(),
    );
    assert_eq!(describe_all(&e), ["d dir", "d/sub dir", "d/sub/new file"]);
    // `d` is only a parent: its metadata is as it was.
    assert_eq!(entry(&e, "d").mtime, T1);
}

#[test]
fn modified_file() {
    let (e, t) = case(
        simple_old,
        |new| fs::write(new.join("d/f"), "changed content").unwrap(),
        &DiffOptions::default(),
    );
    assert_eq!(describe_all(&e), ["d dir", "d/f file"]);
    assert_eq!(
        entry(&e, "d/f").kind,
        EntryKind::File(FileSource::Disk(t.path().join("new/d/f")))
    );
}

#[test]
fn same_size_same_mtime_other_bytes_is_a_change() {
    let (e, _t) = case(
        simple_old,
        |new| {
            fs::write(new.join("d/f"), "CONTENT").unwrap();
            set_time(&new.join("d/f"), T1, 123_456_789);
        },
        &DiffOptions::default(),
    );
    assert_eq!(describe_all(&e), ["d dir", "d/f file"]);
}

#[test]
fn mtime_nanoseconds_alone_are_a_change() {
    let (e, _t) = case(
        simple_old,
        |new| set_time(&new.join("top"), T1, 123_456_788),
        &DiffOptions::default(),
    );
    assert_eq!(describe_all(&e), ["top file"]);
}

#[test]
fn chmod_only() {
    let (e, _t) = case(
        simple_old,
        |new| chmod(&new.join("d/g"), 0o600),
        &DiffOptions::default(),
    );
    assert_eq!(describe_all(&e), ["d dir", "d/g file"]);
    assert_eq!(entry(&e, "d/g").mode, 0o600);
    assert_eq!(entry(&e, "d/g").mtime, T1);
}

#[test]
fn chown_and_xattr_only() {
    let (e, _t) = case(
        simple_old,
        |new| {
            set_xattr(&new.join("d/f"), "user.added", b"1");
            if is_real_root() {
                chown(&new.join("top"), 1000, 1000);
            }
        },
        &DiffOptions::default(),
    );
    let mut want = vec!["d dir", "d/f file"];
    if is_real_root() {
        want.push("top file");
        assert_eq!((entry(&e, "top").uid, entry(&e, "top").gid), (1000, 1000));
    }
    assert_eq!(describe_all(&e), want);
    assert_eq!(entry(&e, "d/f").xattrs["user.added"], b"1");
}

#[test]
fn deleted_file_is_a_whiteout() {
    let (e, _t) = case(
        simple_old,
        |new| fs::remove_file(new.join("d/g")).unwrap(),
        &DiffOptions::default(),
    );
    assert_eq!(describe_all(&e), ["d dir", "d/.wh.g wh"]);
    assert_eq!(entry(&e, "d/.wh.g").mode, 0);
}

#[test]
fn deleted_directory_is_one_whiteout() {
    let (e, _t) = case(
        simple_old,
        |new| fs::remove_dir_all(new.join("d")).unwrap(),
        &DiffOptions::default(),
    );
    assert_eq!(describe_all(&e), [".wh.d wh"]);
}

#[test]
fn directory_replaced_by_a_file() {
    let (e, _t) = case(
        simple_old,
        |new| {
            fs::remove_dir_all(new.join("d/sub")).unwrap();
            fs::write(new.join("d/sub"), "now a file").unwrap();
        },
        &DiffOptions::default(),
    );
    assert_eq!(describe_all(&e), ["d dir", "d/sub file"]);
}

#[test]
fn file_replaced_by_a_directory_lists_all_it_holds() {
    let (e, _t) = case(
        simple_old,
        |new| {
            fs::remove_file(new.join("top")).unwrap();
            write(&new.join("top/a"), "a");
            write(&new.join("top/b/c"), "c");
        },
        &DiffOptions::default(),
    );
    assert_eq!(
        describe_all(&e),
        ["top dir", "top/a file", "top/b dir", "top/b/c file"]
    );
}

#[test]
fn directory_removed_and_made_again_whites_out_the_old_children() {
    let (e, _t) = case(
        simple_old,
        |new| {
            fs::remove_dir_all(new.join("d")).unwrap();
            write(&new.join("d/n"), "n");
        },
        &DiffOptions::default(),
    );
    assert_eq!(
        describe_all(&e),
        [
            "d dir",
            "d/.wh.f wh",
            "d/.wh.g wh",
            "d/.wh.sub wh",
            "d/n file"
        ]
    );
}

#[test]
fn symlink_retargeted_and_special_files() {
    let (e, _t) = case(
        |old| {
            simple_old(old);
            std::os::unix::fs::symlink("d/f", old.join("l")).unwrap();
            set_time(&old.join("l"), T1, 0);
        },
        |new| {
            fs::remove_file(new.join("l")).unwrap();
            std::os::unix::fs::symlink("d/g", new.join("l")).unwrap();
            set_time(&new.join("l"), T1, 0);
            rustix::fs::mknodat(
                CWD,
                new.join("fifo"),
                FileType::Fifo,
                Mode::from_raw_mode(0o600),
                0,
            )
            .unwrap();
        },
        &DiffOptions::default(),
    );
    assert_eq!(describe_all(&e), ["fifo fifo", "l symlink"]);
    assert_eq!(entry(&e, "l").kind, EntryKind::Symlink("d/g".into()));
}

#[test]
fn hard_links() {
    // A new pair, and a new link to an unchanged file: all carry one key per inode.
    let (e, _t) = case(
        simple_old,
        |new| {
            write(&new.join("h/1"), "h");
            fs::hard_link(new.join("h/1"), new.join("h/2")).unwrap();
            fs::hard_link(new.join("top"), new.join("h/top")).unwrap();
        },
        &DiffOptions::default(),
    );
    assert_eq!(
        describe_all(&e),
        ["h dir", "h/1 file", "h/2 file", "h/top file", "top file"]
    );
    let key = |p| entry(&e, p).link_key;
    assert!(key("h/1").is_some());
    assert_eq!(key("h/1"), key("h/2"));
    assert_eq!(key("top"), key("h/top"));
    assert_ne!(key("top"), key("h/1"));
    // Written, the later ones are hard links to the first.
    let blob = layer_blob(e);
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
    let links: Vec<(String, String)> = ar
        .entries()
        .unwrap()
        .map(|x| x.unwrap())
        .filter(|x| x.header().entry_type() == tar::EntryType::Link)
        .map(|x| {
            (
                x.path().unwrap().to_str().unwrap().to_string(),
                x.link_name()
                    .unwrap()
                    .unwrap()
                    .to_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect();
    assert_eq!(
        links,
        [
            ("h/2".to_string(), "h/1".to_string()),
            ("top".to_string(), "h/top".to_string())
        ]
    );
}

#[test]
fn hard_links_made_or_broken_between_equal_files() {
    // `a` and `b` equal in every compared way; `ln -f a b` changes no entry's metadata, only
    // which paths share an inode.
    let setup = |old: &Path| {
        for p in ["a", "b"] {
            write(&old.join(p), "same");
            set_time(&old.join(p), T1, 7);
        }
        write(&old.join("c"), "linked");
        fs::hard_link(old.join("c"), old.join("d")).unwrap();
    };
    let (e, _t) = case(
        setup,
        |new| {
            fs::remove_file(new.join("b")).unwrap();
            fs::hard_link(new.join("a"), new.join("b")).unwrap();
            // And the reverse: `d` becomes a copy of `c` of its own.
            fs::remove_file(new.join("d")).unwrap();
            fs::write(new.join("d"), "linked").unwrap();
            let md = fs::metadata(new.join("c")).unwrap();
            set_time(&new.join("d"), md.mtime(), md.mtime_nsec());
        },
        &DiffOptions::default(),
    );
    let got = describe_all(&e);
    assert_eq!(got, ["a file", "b file", "d file"]);
    assert_eq!(entry(&e, "a").link_key, entry(&e, "b").link_key);
    assert!(entry(&e, "a").link_key.is_some());
    assert_eq!(entry(&e, "d").link_key, None);
}

#[test]
fn skip_and_skip_contents() {
    let setup = |old: &Path| {
        simple_old(old);
        write(&old.join("etc/hosts"), "stub");
        write(&old.join("run/secrets/s"), "s");
        fs::create_dir(old.join("proc")).unwrap();
        for p in [
            "etc/hosts",
            "etc",
            "run/secrets/s",
            "run/secrets",
            "run",
            "proc",
        ] {
            set_time(&old.join(p), T1, 0);
        }
    };
    let change = |new: &Path| {
        fs::write(new.join("etc/hosts"), "127.0.0.1 changed").unwrap();
        fs::remove_dir_all(new.join("run/secrets")).unwrap();
        write(&new.join("proc/1/status"), "sandbox");
        write(&new.join("d/new"), "kept");
    };
    let opts = DiffOptions {
        skip: vec!["/etc/hosts".into(), "run/secrets".into()],
        skip_contents: vec!["/proc".into()],
    };
    let (e, _t) = case(setup, change, &opts);
    assert_eq!(
        describe_all(&e),
        ["d dir", "d/new file", "proc dir", "run dir"]
    );
    let (e, _t) = case(setup, change, &DiffOptions::default());
    assert_eq!(
        describe_all(&e),
        [
            "d dir",
            "d/new file",
            "etc dir",
            "etc/hosts file",
            "proc dir",
            "proc/1 dir",
            "proc/1/status file",
            "run dir",
            "run/.wh.secrets wh"
        ]
    );
}

#[test]
fn errors_name_the_path() {
    let t = tempfile::tempdir().unwrap();
    let err = diff_trees(&t.path().join("nope"), t.path(), &DiffOptions::default()).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    let f = t.path().join("file");
    fs::write(&f, "").unwrap();
    let err = diff_trees(t.path(), &f, &DiffOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// the layer, applied, gives the new tree

/// Many changes at once on `rich_tree`.
fn change_everything(new: &Path, privileged: bool) {
    write(&new.join("added/deep/file"), "added");
    fs::write(new.join("etc/conf"), "conf changed\n").unwrap();
    // Same size, same mtime, other bytes.
    let md = fs::metadata(new.join("big")).unwrap();
    let mut big = fs::read(new.join("big")).unwrap();
    big[2_999_999] ^= 0xff;
    fs::write(new.join("big"), &big).unwrap();
    set_time(&new.join("big"), md.mtime(), md.mtime_nsec());
    chmod(&new.join("bin/sgid"), 0o755);
    fs::remove_file(new.join("empty")).unwrap();
    // A read-only directory emptied: its whiteout must be applied before its mode is.
    chmod(&new.join("ro"), 0o755);
    fs::remove_file(new.join("ro/inside")).unwrap();
    chmod(&new.join("ro"), 0o555);
    fs::remove_dir_all(new.join("tmp")).unwrap();
    fs::write(new.join("tmp"), "was a dir").unwrap();
    fs::remove_file(new.join("abs")).unwrap();
    write(&new.join("abs/inside"), "was a symlink");
    fs::remove_dir_all(new.join("shared")).unwrap();
    write(&new.join("shared/new"), "recreated");
    fs::remove_file(new.join("bin/rel")).unwrap();
    std::os::unix::fs::symlink("sgid", new.join("bin/rel")).unwrap();
    set_xattr(&new.join("links/t1"), "user.new", b"n");
    write(&new.join("pair/1"), "p");
    fs::hard_link(new.join("pair/1"), new.join("pair/2")).unwrap();
    // Unlinks one of the triple.
    fs::remove_file(new.join("links/t2")).unwrap();
    if privileged {
        set_time(&new.join("secret"), T1 + 99, 0);
        chown(&new.join("etc/conf"), 2000, 2000);
        chown(&new.join("bin/sgid"), 1000, 1000);
        mknod(&new.join("dev/zero"), FileType::CharacterDevice, 1, 5);
        fs::remove_file(new.join("dev/loop9")).unwrap();
    }
}

#[test]
fn the_layer_applied_to_the_old_tree_gives_the_new_one() {
    // Unprivileged, a read-only directory of the old tree could not receive the layer's
    // whiteout (as with any tool); in a user namespace everything but devices and owners works.
    if !is_root() {
        common::skip(
            "the_layer_applied_to_the_old_tree_gives_the_new_one",
            "run as root",
        );
        return;
    }
    let privileged = is_real_root();
    let t = tempfile::tempdir().unwrap();
    let (old, new, applied) = (
        t.path().join("old"),
        t.path().join("new"),
        t.path().join("applied"),
    );
    for d in [&old, &new, &applied] {
        fs::create_dir(d).unwrap();
    }
    rich_tree(&old, privileged);
    copy_tree(&old, &new).unwrap();
    change_everything(&new, privileged);
    copy_tree(&old, &applied).unwrap();

    let entries = diff_trees(&old, &new, &DiffOptions::default()).unwrap();
    let got = describe_all(&entries);
    for must in [
        "added dir",
        "big file",
        ".wh.empty wh",
        "ro/.wh.inside wh",
        "tmp file",
        "abs/inside file",
        "shared/.wh.y wh",
        "pair/2 file",
        "links/.wh.t2 wh",
    ] {
        assert!(got.iter().any(|g| g == must), "{must} missing in {got:#?}");
    }
    // Unchanged things stay out: the other hard-link pair, the fifo.
    for never in ["links/a file", "etc/a-link file", "pipe fifo", "sock"] {
        assert!(
            !got.iter().any(|g| g.starts_with(never)),
            "{never} in {got:#?}"
        );
    }

    let blob = layer_blob(entries);
    let report = apply_layer(&blob[..], &applied, &ApplyOptions::default()).unwrap();
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    let mut want = tree(&new, Precision::Layer);
    want.remove("sock");
    assert_same_tree("applied", &want, &tree(&applied, Precision::Layer));
}

// ---------------------------------------------------------------------------------------------
// the same change through overlay: diff_upperdir and diff_trees agree

/// An entry with what a layer carries, file contents read (the two differs read them from
/// different directories).
fn comparable(e: &LayerEntry) -> String {
    let kind = match &e.kind {
        EntryKind::File(FileSource::Disk(p)) => {
            let mut s = String::new();
            File::open(p).unwrap().read_to_string(&mut s).unwrap();
            format!("file {s:?}")
        }
        k => format!("{k:?}"),
    };
    format!(
        "{} {kind} {:o} {}:{} {} {:?}",
        e.path.display(),
        e.mode,
        e.uid,
        e.gid,
        e.mtime,
        e.xattrs
    )
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

#[test]
fn agrees_with_the_upperdir_differ() {
    if !is_real_root() {
        common::skip(
            "agrees_with_the_upperdir_differ",
            "overlay mounts need real root",
        );
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let p = |n: &str| t.path().join(n);
    let (lower, upper, work, merged, new) =
        (p("lower"), p("upper"), p("work"), p("merged"), p("new"));
    for d in [&lower, &upper, &work, &merged, &new] {
        fs::create_dir(d).unwrap();
    }
    simple_old(&lower);
    write(&lower.join("d/same"), "s");
    write(&lower.join("d/owned"), "o");
    write(&lower.join("gone/x"), "x");
    std::os::unix::fs::symlink("d/f", lower.join("l")).unwrap();
    for q in ["d/same", "d/owned", "gone/x", "gone", "d"] {
        set_time(&lower.join(q), T1, 42);
    }
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!(
            "lowerdir={},upperdir={},workdir={},redirect_dir=off,metacopy=off",
            lower.display(),
            upper.display(),
            work.display()
        ))
        .arg(&merged));
    let m = |q: &str| merged.join(q);
    let changes = std::panic::catch_unwind(|| {
        write(&m("d/sub/new"), "new");
        fs::write(m("d/f"), "changed").unwrap();
        chmod(&m("d/g"), 0o600);
        chown(&m("d/owned"), 1000, 1000);
        // Copied up without a change.
        chmod(&m("d/same"), 0o644);
        set_xattr(&m("top"), "user.x", b"1");
        fs::remove_dir_all(m("gone")).unwrap();
        fs::remove_file(m("l")).unwrap();
        std::os::unix::fs::symlink("d/g", m("l")).unwrap();
        write(&m("fresh/a/b"), "b");
        copy_tree(&merged, &new).unwrap();
    });
    run(Command::new("umount").arg(&merged));
    changes.unwrap();

    let from_upper = diff_upperdir(
        &upper,
        std::slice::from_ref(&lower),
        &DiffOptions::default(),
    )
    .unwrap();
    let from_trees = diff_trees(&lower, &new, &DiffOptions::default()).unwrap();
    let a: Vec<String> = from_upper.iter().map(comparable).collect();
    let b: Vec<String> = from_trees.iter().map(comparable).collect();
    assert_eq!(a, b);
    assert!(a.iter().any(|s| s.starts_with(".wh.gone ")), "{a:#?}");
    assert!(!a.iter().any(|s| s.starts_with("d/same ")), "{a:#?}");
}
