//! RUN through `kiln build`, end to end, as root and as ordinary users (issue "[3/5] Rootless
//! RUN"): the layers a RUN makes (whiteouts, owners, modes, hardlinks), how a failing or
//! killed RUN ends (the message, the store, mounts and processes left), what a RUN can see of
//! the host (files, processes, the network with `--network none`), and secrets (`RUN
//! --mount=type=secret`) that never reach the store or an export.
//!
//! Each test runs as every runner it is about: real root (CI), `kiln-test` (subordinate id
//! ranges: a full newuidmap map) and, where ids do not matter, `kiln-nosubid` (no ranges: a
//! single-id map with a warning). A runner that is not available prints one `SKIP` line.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use sha2::Digest;

use common::build::{
    Built, OWNERSHIP_RUNNERS, RUNNERS, Runner, blob_contents, busybox_store, have, is_root,
    kiln_as, runner_dir, runner_store, skopeo_inspect, try_build_as,
};
use common::host::{kiln_mounts, procs_left};

const NOSUBID: Runner = Runner::User("kiln-nosubid");

use common::unique;

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn stderr(b: &Built) -> String {
    String::from_utf8_lossy(&b.output.stderr).into_owned()
}

// ---------------------------------------------------------------------------------------------
// per-runner setup

/// A busybox store usable by one runner, and a directory that runner can read and write (for
/// the context, outputs and secret files).
struct Setup {
    who: Runner,
    test: String,
    store_dir: tempfile::TempDir,
    dir: tempfile::TempDir,
}

impl Setup {
    /// `None` (one SKIP line printed) when the runner or busybox is missing. A test process
    /// that is not root runs the `Root` case as itself (kiln then makes its own user
    /// namespace) unless `needs_ids` (arbitrary owners need root or subordinate ids).
    fn new(who: Runner, test: &str, needs_ids: bool) -> Option<Setup> {
        let store_dir = if who == Runner::Root && !is_root() {
            if needs_ids {
                common::skip(test, "needs root (CI runs the tests as root)");
                return None;
            }
            busybox_store(test)?
        } else {
            runner_store(who, test)?
        };
        let dir = runner_dir(who);
        let s = Setup {
            who,
            test: format!("{test} as {}", who.label()),
            store_dir,
            dir,
        };
        std::fs::create_dir_all(s.ctx()).unwrap();
        std::fs::write(s.ctx().join("f.txt"), "context file\n").unwrap();
        Some(s)
    }
    fn store(&self) -> PathBuf {
        self.store_dir.path().to_path_buf()
    }
    fn ctx(&self) -> PathBuf {
        self.dir.path().join("ctx")
    }
    /// A path in the runner's directory (not yet created).
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    fn try_build(&self, dockerfile: &str, extra: &[&str], env: &[(&str, &str)]) -> Built {
        try_build_as(self.who, &self.store(), &self.ctx(), dockerfile, extra, env)
    }
    fn build(&self, dockerfile: &str, extra: &[&str], env: &[(&str, &str)]) -> Built {
        let b = self.try_build(dockerfile, extra, env);
        assert!(
            b.output.status.success(),
            "{}: build failed:\n{dockerfile}\n{}",
            self.test,
            stderr(&b)
        );
        b
    }
    fn build_error(&self, dockerfile: &str, extra: &[&str], env: &[(&str, &str)]) -> String {
        let b = self.try_build(dockerfile, extra, env);
        let err = stderr(&b);
        assert!(
            !b.output.status.success(),
            "{}: expected failure:\n{dockerfile}\n{err}",
            self.test
        );
        err
    }
    /// `kiln --root STORE ARGS…` as the runner.
    fn kiln(&self, args: &[&str]) -> std::process::Output {
        kiln_as(self.who)
            .arg("--root")
            .arg(self.store())
            .args(args)
            .output()
            .unwrap()
    }
}

// ---------------------------------------------------------------------------------------------
// reading layers

/// One tar entry of a layer, path normalised (`./` and trailing `/` removed).
#[derive(Debug, Clone)]
struct Entry {
    path: String,
    kind: tar::EntryType,
    uid: u64,
    gid: u64,
    mode: u32,
    link: Option<String>,
    data: Vec<u8>,
}

fn decompress(raw: &[u8]) -> Vec<u8> {
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut data = Vec::new();
        flate2::read::MultiGzDecoder::new(raw)
            .read_to_end(&mut data)
            .unwrap();
        data
    } else if raw.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::decode_all(raw).unwrap()
    } else {
        raw.to_vec()
    }
}

fn norm(p: &str) -> String {
    let p = p.strip_prefix("./").unwrap_or(p);
    let p = p.trim_end_matches('/');
    if p == "." {
        String::new()
    } else {
        p.to_string()
    }
}

fn read_layer(blob: &Path) -> Vec<Entry> {
    let tar_bytes = decompress(&std::fs::read(blob).unwrap());
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        let path = norm(&e.path().unwrap().to_string_lossy());
        let link = e
            .link_name()
            .unwrap()
            .map(|l| l.to_string_lossy().into_owned());
        let h = e.header();
        let (kind, uid, gid, mode) = (
            h.entry_type(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.mode().unwrap(),
        );
        let mut data = Vec::new();
        if kind.is_file() && e.size() < 1 << 16 {
            e.read_to_end(&mut data).unwrap();
        }
        out.push(Entry {
            path,
            kind,
            uid,
            gid,
            mode,
            link,
            data,
        });
    }
    out
}

fn blob_path(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.strip_prefix("sha256:").unwrap())
}

/// The layers (entries) of the image whose manifest is `digest` in an OCI layout.
fn manifest_layers(layout: &Path, digest: &str) -> Vec<Vec<Entry>> {
    let m: Value =
        serde_json::from_slice(&std::fs::read(blob_path(layout, digest)).unwrap()).unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| read_layer(&blob_path(layout, l["digest"].as_str().unwrap())))
        .collect()
}

/// The layers of a build's result, read from the store.
fn built_layers(b: &Built) -> Vec<Vec<Entry>> {
    let digest = b.metadata["containerimage.digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no containerimage.digest in {}", b.metadata));
    manifest_layers(&b.root, digest)
}

/// The one manifest of an exported OCI layout.
fn layout_layers(layout: &Path) -> Vec<Vec<Entry>> {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{index}");
    manifest_layers(layout, m[0]["digest"].as_str().unwrap())
}

/// Path → entry over all layers, later layers winning (whiteouts not applied: for owner and
/// mode checks of paths the layers create).
fn merged(layers: &[Vec<Entry>]) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    for l in layers {
        for e in l {
            out.insert(e.path.clone(), e.clone());
        }
    }
    out
}

fn run_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `umoci unpack [--rootless] --image LAYOUT:TAG BUNDLE`; the bundle's rootfs.
fn umoci_unpack(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    let mut cmd = Command::new("umoci");
    cmd.arg("unpack");
    if !is_root() {
        cmd.arg("--rootless");
    }
    run_ok(
        cmd.arg("--image")
            .arg(format!("{}:{tag}", layout.display()))
            .arg(bundle),
    );
    bundle.join("rootfs")
}

/// `dir`'s tree below `sub`: `path` → `d` / `f:CONTENT` / `l:TARGET`.
fn subtree(dir: &Path, sub: &str) -> BTreeMap<String, String> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = p.symlink_metadata().unwrap();
            if md.is_dir() {
                out.insert(rel, "d".into());
                walk(root, &p, out);
            } else if md.file_type().is_symlink() {
                out.insert(
                    rel,
                    format!("l:{}", std::fs::read_link(&p).unwrap().display()),
                );
            } else {
                out.insert(
                    rel,
                    format!("f:{}", String::from_utf8_lossy(&std::fs::read(&p).unwrap())),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &dir.join(sub), &mut out);
    out
}

// ---------------------------------------------------------------------------------------------
// host state: mounts and processes

/// Kills (SIGKILL) and reaps a child this test started.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes host paths this test made or aimed at.
struct HostPaths(Vec<PathBuf>);

impl Drop for HostPaths {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
            let _ = std::fs::remove_file(p);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 1. whiteouts

const WHITEOUTS: &str = "FROM busybox
RUN mkdir -p /w/deldir/sub /w/dir2file/d /w/rmrf/olddir && echo keep > /w/keep && echo del > /w/delfile && echo x > /w/deldir/sub/x && echo y > /w/dir2file/d/y && echo z > /w/file2dir && echo o1 > /w/rmrf/old1 && echo o2 > /w/rmrf/olddir/o2
RUN rm /w/delfile && rm -rf /w/deldir && rm -rf /w/dir2file && echo nowfile > /w/dir2file && rm /w/file2dir && mkdir /w/file2dir && echo inside > /w/file2dir/z && rm -rf /w/rmrf && mkdir /w/rmrf && echo new > /w/rmrf/new
";

fn whiteouts_as(who: Runner) {
    const T: &str = "run_whiteouts_unpack_to_the_expected_tree";
    let Some(s) = Setup::new(who, T, false) else {
        return;
    };
    let oci = s.path("oci");
    let spec = format!("type=oci,dest={},tar=false", oci.display());
    let b = s.build(WHITEOUTS, &["-t", "kiln-test/wh:wh", "-o", &spec], &[]);

    let expected: BTreeMap<String, String> = [
        ("w/dir2file", "f:nowfile\n"),
        ("w/file2dir", "d"),
        ("w/file2dir/z", "f:inside\n"),
        ("w/keep", "f:keep\n"),
        ("w/rmrf", "d"),
        ("w/rmrf/new", "f:new\n"),
    ]
    .into_iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();

    // The final filesystem (type=local).
    assert_eq!(
        subtree(b.out.path(), "w"),
        expected,
        "{}: type=local",
        s.test
    );

    // The second RUN's layer: OCI whiteouts for what it removed from the lower layer.
    let layers = layout_layers(&oci);
    assert_eq!(layers.len(), 3, "busybox + two RUN layers");
    let l2 = &layers[2];
    let names: BTreeSet<&str> = l2.iter().map(|e| e.path.as_str()).collect();
    eprintln!("{}: second RUN layer: {names:?}", s.test);
    for must in [
        "w/.wh.delfile",
        "w/.wh.deldir",
        "w/dir2file",
        "w/file2dir",
        "w/file2dir/z",
        "w/rmrf/new",
    ] {
        assert!(
            names.contains(must),
            "{}: {must} missing: {names:?}",
            s.test
        );
    }
    // /w/rmrf was emptied and recreated: an opaque directory, or a whiteout per old entry.
    assert!(
        names.contains("w/rmrf/.wh..wh..opq")
            || (names.contains("w/rmrf/.wh.old1") && names.contains("w/rmrf/.wh.olddir")),
        "{}: /w/rmrf's old content is not hidden: {names:?}",
        s.test
    );
    for e in l2 {
        assert!(
            !e.path.starts_with("w/deldir/") && !e.path.starts_with("w/dir2file/"),
            "{}: {} under a removed directory",
            s.test,
            e.path
        );
        assert_ne!(
            e.path, "w/keep",
            "{}: an unchanged file is in the layer",
            s.test
        );
        // The sandbox's mount points and stubs (/etc/hosts, /proc, /dev…) stay out.
        if !e.kind.is_dir() {
            assert!(
                e.path.starts_with("w/"),
                "{}: {} ({:?}) in the second RUN's layer",
                s.test,
                e.path,
                e.kind
            );
        }
    }
    let kind = |p: &str| l2.iter().find(|e| e.path == p).unwrap().kind;
    assert!(kind("w/dir2file").is_file(), "w/dir2file is not a file");
    assert!(kind("w/file2dir").is_dir(), "w/file2dir is not a directory");

    // umoci applies the layers to the same tree.
    if have(T, "umoci") {
        let bundle = s.path("bundle");
        let rootfs = umoci_unpack(&oci, "wh", &bundle);
        assert_eq!(subtree(&rootfs, "w"), expected, "{}: umoci unpack", s.test);
    }
}

#[test]
fn run_whiteouts_unpack_to_the_expected_tree() {
    for who in RUNNERS {
        whiteouts_as(who);
    }
}

// ---------------------------------------------------------------------------------------------
// 2. ownership, setuid, hardlinks

const OWNERSHIP: &str = "FROM busybox
RUN echo 'app:x:1000:1000::/home/app:/bin/sh' >> /etc/passwd && echo 'app:x:1000:' >> /etc/group && mkdir -p /home/app && chown 1000:1000 /home/app
RUN touch /f && chown 1000:1000 /f && touch /g && chown 1000:2000 /g
RUN echo suid > /suid && chmod 4755 /suid && echo data > /a && ln /a /b
USER app
RUN touch /tmp/made-by-app && mkdir /tmp/appdir && id -u > /tmp/whoami
";

fn ownership_as(who: Runner) {
    const T: &str = "run_keeps_owners_modes_and_hardlinks";
    let Some(s) = Setup::new(who, T, true) else {
        return;
    };
    let oci = s.path("oci");
    let spec = format!("type=oci,dest={},tar=false", oci.display());
    let b = s.build(OWNERSHIP, &["-t", "kiln-test/own:own", "-o", &spec], &[]);
    let layers = built_layers(&b);
    let all = merged(&layers);
    let get = |p: &str| {
        all.get(p)
            .unwrap_or_else(|| panic!("{}: /{p} is in no layer", s.test))
    };
    let own = |p: &str| (get(p).uid, get(p).gid);
    assert_eq!(own("home/app"), (1000, 1000), "{}: chown of a dir", s.test);
    assert_eq!(own("f"), (1000, 1000), "{}: chown 1000:1000", s.test);
    assert_eq!(own("g"), (1000, 2000), "{}: chown 1000:2000", s.test);
    assert_eq!(get("suid").mode & 0o7777, 0o4755, "{}: setuid bit", s.test);
    assert_eq!(own("suid"), (0, 0));
    assert_eq!(own("tmp/made-by-app"), (1000, 1000), "{}: USER app", s.test);
    assert_eq!(own("tmp/appdir"), (1000, 1000), "{}: USER app", s.test);
    assert!(get("tmp/appdir").kind.is_dir());
    assert_eq!(get("tmp/whoami").data, b"1000\n", "{}: id -u", s.test);

    // The hardlink: one layer holds a file and a link entry to it.
    let l3 = &layers[3];
    let a = l3.iter().find(|e| e.path == "a").expect("a in the 3rd RUN");
    let bb = l3.iter().find(|e| e.path == "b").expect("b in the 3rd RUN");
    let (file, link) = if a.kind.is_hard_link() {
        (bb, a)
    } else {
        (a, bb)
    };
    assert!(file.kind.is_file(), "{}: {file:?}", s.test);
    assert!(
        link.kind.is_hard_link(),
        "{}: no hardlink entry: {link:?}",
        s.test
    );
    assert_eq!(
        link.link.as_deref().map(norm).as_deref(),
        Some(file.path.as_str()),
        "{}: the hardlink points elsewhere",
        s.test
    );

    // umoci (as root: owners kept) sees the same.
    if is_root() && have(T, "umoci") {
        let rootfs = umoci_unpack(&oci, "own", &s.path("bundle"));
        let md = |p: &str| rootfs.join(p).symlink_metadata().unwrap();
        assert_eq!((md("f").uid(), md("f").gid()), (1000, 1000));
        assert_eq!((md("g").uid(), md("g").gid()), (1000, 2000));
        assert_eq!(md("suid").mode() & 0o7777, 0o4755);
        assert_eq!(md("a").ino(), md("b").ino(), "a and b are not one inode");
        let m = md("tmp/made-by-app");
        assert_eq!((m.uid(), m.gid()), (1000, 1000));
    }
}

#[test]
fn run_keeps_owners_modes_and_hardlinks() {
    for who in OWNERSHIP_RUNNERS {
        ownership_as(who);
    }
}

#[test]
fn single_id_map_warns_and_chown_to_other_ids_fails() {
    const T: &str = "single_id_map_warns_and_chown_to_other_ids_fails";
    let Some(s) = Setup::new(NOSUBID, T, false) else {
        return;
    };
    // Root-owned work is fine, with the warning about the single-id map.
    let b = s.build(
        "FROM busybox\nRUN echo hi > /hi && chmod 4755 /hi && ln /hi /hi2\n",
        &[],
        &[],
    );
    let err = stderr(&b);
    assert!(
        err.contains("warning") && err.contains("single-id"),
        "no single-id warning:\n{err}"
    );
    let layers = built_layers(&b);
    let all = merged(&layers);
    assert_eq!(all["hi"].mode & 0o7777, 0o4755);
    assert_eq!((all["hi"].uid, all["hi"].gid), (0, 0));
    // kiln documents that chown to other ids fails in a single-id map.
    let err = s.build_error(
        "FROM busybox\nRUN touch /f && chown 1000:1000 /f\n",
        &[],
        &[],
    );
    assert!(err.contains("Dockerfile.kiln-test:2"), "{err}");
    assert!(err.contains("chown 1000:1000"), "{err}");
    assert!(
        err.contains("single-id"),
        "the failure should come with the warning:\n{err}"
    );
    assert!(err.contains("exit code: 1"), "{err}");
    // A non-root USER cannot exist there: a clear error, before the command runs.
    let err = s.build_error(
        "FROM busybox\nUSER 1000:1000\nRUN echo ran-as-1000\n",
        &[],
        &[],
    );
    assert!(err.contains("Dockerfile.kiln-test:3"), "{err}");
    assert!(err.contains("single-id"), "{err}");
    assert!(!err.contains("exit code"), "the command ran:\n{err}");
}

// ---------------------------------------------------------------------------------------------
// 3. a failing RUN

fn failure_as(who: Runner) {
    const T: &str = "a_failing_run_names_the_step_and_leaves_nothing_behind";
    let Some(s) = Setup::new(who, T, false) else {
        return;
    };
    let before_build = s.build(
        "FROM busybox\nRUN echo before > /before\n",
        &["-t", "app:before"],
        &[],
    );
    let before_digest = before_build.metadata["containerimage.digest"]
        .as_str()
        .unwrap()
        .to_string();
    let watched = [s.store_dir.path(), s.dir.path()];
    let mounts_before = kiln_mounts(&watched);

    // The message: file:line, the instruction, the exit code, the last lines of output; and
    // background processes the RUN left running die with it.
    let marker = unique("leftover");
    let sleep = format!("sleep {}", 1000 + std::process::id() % 7919);
    let run = format!(
        "RUN ({sleep}; : {marker}) & {sleep} & echo one-$((0+1)); echo two-$((40+2)); exit 7"
    );
    let err = s.build_error(
        &format!("FROM busybox\nRUN echo setup > /setup\n{run}\nRUN echo never\n"),
        &["-t", "app:failed"],
        &[],
    );
    assert!(
        err.contains("Dockerfile.kiln-test:3"),
        "{}: line:\n{err}",
        s.test
    );
    assert!(err.contains(&run), "{}: instruction:\n{err}", s.test);
    assert!(
        err.contains("exit code: 7"),
        "{}: exit code:\n{err}",
        s.test
    );
    assert!(
        err.contains("two-42"),
        "{}: last output lines:\n{err}",
        s.test
    );
    assert!(
        !err.contains("never"),
        "{}: a later step ran:\n{err}",
        s.test
    );
    let left = procs_left(&marker);
    assert!(left.is_empty(), "{}: processes left: {left:?}", s.test);
    let left = procs_left(&sleep);
    assert!(left.is_empty(), "{}: processes left: {left:?}", s.test);

    // Killed by a signal. (`kill -9 $$` cannot do it: the RUN's shell is pid 1 of its pid
    // namespace, which ignores signals from inside; the CPU-time hard limit makes the kernel
    // send SIGKILL, which pid 1 cannot ignore.)
    let err = s.build_error(
        "FROM busybox\nRUN ulimit -t 1; while :; do :; done\n",
        &[],
        &[],
    );
    assert!(err.contains("Dockerfile.kiln-test:2"), "{err}");
    let re = regex::Regex::new(r"(?i)(signal:? ?(9|kill|sigkill)\b|sigkill)").unwrap();
    assert!(
        re.is_match(&err),
        "{}: the signal is not named:\n{err}",
        s.test
    );

    // The store is intact and still usable; nothing was named by the failures.
    if have(T, "skopeo") {
        let v = skopeo_inspect(
            &format!("oci:{}:docker.io/library/app:before", s.store().display()),
            false,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", s.test));
        assert_eq!(v["Digest"].as_str().unwrap(), before_digest);
    }
    let out = s.kiln(&["images"]);
    assert!(
        out.status.success(),
        "{}: kiln images: {}",
        s.test,
        String::from_utf8_lossy(&out.stderr)
    );
    let images = String::from_utf8_lossy(&out.stdout);
    assert!(images.contains("app"), "{}: {images}", s.test);
    assert!(!s.kiln(&["inspect", "app:failed"]).status.success());
    let tmp = s.store().join("kiln/tmp");
    if let Ok(rd) = std::fs::read_dir(&tmp) {
        let left: Vec<_> = rd.map(|e| e.unwrap().file_name()).collect();
        assert!(
            left.is_empty(),
            "{}: failed builds left {left:?} in kiln/tmp",
            s.test
        );
    }
    let mounts_after = kiln_mounts(&watched);
    let new: Vec<_> = mounts_after.difference(&mounts_before).collect();
    assert!(new.is_empty(), "{}: mounts left: {new:?}", s.test);
}

#[test]
fn a_failing_run_names_the_step_and_leaves_nothing_behind() {
    for who in OWNERSHIP_RUNNERS {
        failure_as(who);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. isolation

/// A TCP listener on 127.0.0.1 answering every connection with one HTTP reply of `body`.
fn http_server(body: String) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = write!(
                c,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// A RUN that records whether it reached the host's listener, into `/net-NAME`. (Not `wget
/// -T`: Debian's busybox-static 1.35 wget segfaults with it, even on the host.)
fn net_probe(flag: &str, name: &str, port: u16) -> String {
    format!(
        "RUN {flag}if timeout 10 wget -q -O- http://127.0.0.1:{port}/ > /body-{name}; then echo reached > /net-{name}; else echo blocked > /net-{name}; fi\n"
    )
}

fn isolation_as(who: Runner) {
    const T: &str = "a_run_sees_neither_host_files_processes_nor_with_none_the_network";
    let Some(s) = Setup::new(who, T, false) else {
        return;
    };
    let u = unique("iso");
    let host_marker = std::env::temp_dir().join(format!("{u}-marker"));
    std::fs::write(&host_marker, "host\n").unwrap();
    let host_file = PathBuf::from(format!("/hostfile-{u}"));
    let _cleanup = HostPaths(vec![host_marker.clone(), host_file.clone()]);
    // A host process with a marker in its command line.
    let marker_proc = {
        use std::os::unix::process::CommandExt;
        ChildGuard(
            Command::new("sleep")
                .arg0(format!("{u}-proc"))
                .arg("600")
                .spawn()
                .unwrap(),
        )
    };
    let body = format!("reached-{u}");
    let port = http_server(body.clone());

    let exe = std::env::current_exe().unwrap();
    let mut host_paths = vec![
        host_marker.clone(),
        s.store(),
        s.ctx(),
        exe.clone(),
        PathBuf::from(env!("CARGO_MANIFEST_DIR")),
    ];
    if Path::new("/work").exists() {
        host_paths.push("/work".into());
    }
    let list: Vec<String> = host_paths
        .iter()
        .map(|p| format!("'{}'", p.display()))
        .collect();
    let df = format!(
        "FROM busybox
RUN for p in {list}; do if [ -e \"$p\" ]; then echo \"$p\" >> /seen; fi; done; touch /seen /hostfile-{u}; for d in /proc/[0-9]*; do echo \"${{d#/proc/}} $(tr '\\0' ' ' < $d/cmdline)\"; done > /procs
{default}{none_flag}",
        list = list.join(" "),
        default = net_probe("", "default", port),
        none_flag = net_probe("--network=none ", "runflag", port),
    );
    let b = s.build(&df, &[], &[]);

    // Files: none of the host paths, and the write stayed in the image.
    assert_eq!(b.read("seen"), "", "{}: the RUN saw host paths", s.test);
    assert!(b.exists(&format!("hostfile-{u}")));
    assert!(
        host_file.symlink_metadata().is_err(),
        "{}: the RUN wrote {} on the host",
        s.test,
        host_file.display()
    );
    // Processes: a handful, none of the host's.
    let procs = b.read("procs");
    eprintln!("{}: processes seen by the RUN:\n{procs}", s.test);
    let n = procs.lines().count();
    assert!((1..=6).contains(&n), "{}: {n} processes:\n{procs}", s.test);
    // (The RUN's own shell shows its command line, which names the host paths it probes.)
    assert!(
        !procs.contains(&format!("{u}-proc")),
        "{}: the host marker process is visible:\n{procs}",
        s.test
    );
    assert!(
        !procs.contains("setpriv") && !procs.contains("cargo") && !procs.contains(" 600"),
        "{}: host processes are visible:\n{procs}",
        s.test
    );
    // Network: the host's by default (so the probe works), none with RUN --network=none.
    assert_eq!(
        b.read("net-default"),
        "reached\n",
        "{}: host network",
        s.test
    );
    assert_eq!(b.read("body-default"), body);
    assert_eq!(
        b.read("net-runflag"),
        "blocked\n",
        "{}: RUN --network=none reached the host",
        s.test
    );

    // `kiln build --network none` makes it the default for every RUN.
    let df = format!(
        "FROM busybox\nRUN ip link show > /links 2>&1 || true\n{}",
        net_probe("", "global", port)
    );
    let b = s.build(&df, &["--network", "none"], &[]);
    assert_eq!(
        b.read("net-global"),
        "blocked\n",
        "{}: --network none reached the host",
        s.test
    );
    let links = b.read("links");
    eprintln!("{}: links with --network none:\n{links}", s.test);
    let ifaces: Vec<&str> = links
        .lines()
        .filter(|l| {
            l.split(':')
                .next()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .collect();
    assert!(
        ifaces.len() == 1 && ifaces[0].contains(" lo:") && ifaces[0].contains("UP"),
        "{}: with --network none only lo (up) should exist:\n{links}",
        s.test
    );
    drop(marker_proc);
}

#[test]
fn a_run_sees_neither_host_files_processes_nor_with_none_the_network() {
    for who in OWNERSHIP_RUNNERS {
        isolation_as(who);
    }
}

// ---------------------------------------------------------------------------------------------
// 5. secrets

fn sha256_hex(s: &str) -> String {
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

/// Every regular file under `dir`, with its path.
fn all_files(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd {
        let p = e.unwrap().path();
        let md = p.symlink_metadata().unwrap();
        if md.is_dir() {
            all_files(&p, out);
        } else if md.is_file()
            && let Ok(data) = std::fs::read(&p)
        {
            out.push((p, data));
        }
    }
}

fn secrets_as(who: Runner) {
    const T: &str = "secrets_reach_the_run_but_never_the_store";
    let Some(s) = Setup::new(who, T, false) else {
        return;
    };
    let secret = format!("S3CR3T-{}", unique("file"));
    let secret2 = format!("S3CR3T-{}", unique("env"));
    let src = s.path("secret.txt");
    std::fs::write(&src, &secret).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The Dockerfile holds only digests: RUN text is recorded in the image history.
    let (h1, h2) = (sha256_hex(&secret), sha256_hex(&secret2));
    let df = format!(
        "FROM busybox
RUN --mount=type=secret,id=tok cat /run/secrets/tok > /dev/null && test \"$(sha256sum < /run/secrets/tok | cut -d' ' -f1)\" = {h1} && echo ok > /ok-file
RUN --mount=type=secret,id=tok,target=/custom/dir/tok test \"$(sha256sum < /custom/dir/tok | cut -d' ' -f1)\" = {h1} && echo ok > /ok-target
RUN --mount=type=secret,id=tok2,env=TOK test \"$(printf %s \"$TOK\" | sha256sum | cut -d' ' -f1)\" = {h2} && echo ok > /ok-env
RUN test ! -e /run/secrets/tok && test ! -e /custom && test -z \"$TOK\" && echo ok > /ok-after
RUN --mount=type=secret,id=absent test ! -e /run/secrets/absent && echo ok > /ok-absent
"
    );
    let oci = s.path("oci");
    let spec = format!("type=oci,dest={},tar=false", oci.display());
    let secret_arg = format!("id=tok,src={}", src.display());
    let b = s.build(
        &df,
        &[
            "-t",
            "kiln-test/secret:sec",
            "-o",
            &spec,
            "--secret",
            &secret_arg,
            "--secret",
            "id=tok2,env=MYSECRET",
        ],
        &[("MYSECRET", &secret2)],
    );
    for f in ["ok-file", "ok-target", "ok-env", "ok-after", "ok-absent"] {
        assert_eq!(b.read(f), "ok\n", "{}: /{f}", s.test);
    }
    assert!(
        !b.exists("run/secrets"),
        "{}: /run/secrets in the image",
        s.test
    );
    assert!(
        !b.exists("custom"),
        "{}: the secret target's stub stayed",
        s.test
    );

    // Not in any blob (decompressed) of the store or the export, nor any file of the store.
    let needles = [secret.as_bytes(), secret2.as_bytes()];
    for layout in [s.store(), oci.clone()] {
        for (name, data) in blob_contents(&layout) {
            for n in needles {
                assert!(
                    !contains(&data, n),
                    "{}: blob {name} of {} holds a secret",
                    s.test,
                    layout.display()
                );
            }
        }
    }
    let mut files = Vec::new();
    all_files(&s.store(), &mut files);
    all_files(b.out.path(), &mut files);
    for (p, data) in &files {
        for n in needles {
            assert!(
                !contains(data, n),
                "{}: {} holds a secret",
                s.test,
                p.display()
            );
        }
    }
    // No layer has an entry for the secret mounts.
    for (i, l) in layout_layers(&oci).iter().enumerate() {
        for e in l {
            assert!(
                !e.path.starts_with("run/secrets") && !e.path.starts_with("custom"),
                "{}: layer {i} has {}",
                s.test,
                e.path
            );
        }
    }

    // (An optional secret that was not given is simply absent, above: /ok-absent.) A required
    // one fails the build.
    let err = s.build_error(
        "FROM busybox\nRUN --mount=type=secret,id=nope,required true\n",
        &[],
        &[],
    );
    assert!(err.contains("Dockerfile.kiln-test:2"), "{}: {err}", s.test);
    assert!(
        err.contains("nope"),
        "{}: the secret is not named: {err}",
        s.test
    );
}

#[test]
fn secrets_reach_the_run_but_never_the_store() {
    for who in OWNERSHIP_RUNNERS {
        secrets_as(who);
    }
}
