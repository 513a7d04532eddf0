//! The COPY/ADD engine end to end: build a context (or a stage root filesystem) and a destination
//! root in temporary directories, compute the layer with `copy_entries`, write it with
//! `write_layer`, apply it with `apply_layer` onto a copy of the destination root, and check the
//! resulting tree. One test (or more) per COPY/ADD row of `conformance/semantics.md`; the stage or
//! image side of a row is simulated by a root filesystem prepared by the test.
//!
//! Tests that give files to other owners need root (or a full user-namespace id map): without it
//! they check the layer entries only and print a `SKIP` line for the file-system part.

#[path = "common/skip.rs"]
mod skip;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, UNIX_EPOCH};

use kiln::builder::copy::{CopyError, CopyRequest, CopySource, copy_entries};
use kiln::context::{ContextFilter, WalkOptions, read_ignore_file};
use kiln::layer::{
    ApplyOptions, Compression, EntryKind, LayerEntry, WriteOptions, apply_layer,
    compare_layer_paths, write_layer,
};
use tempfile::TempDir;

const NOW: i64 = 1_700_000_000;

// ---------------------------------------------------------------------------------------------
// helpers

/// Whether this process can give files to other owners.
fn can_chown() -> bool {
    static CAN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *CAN.get_or_init(|| {
        let t = tempfile::NamedTempFile::new().unwrap();
        [(1234, 5678), (4321, 8765)]
            .iter()
            .all(|&(u, g)| std::os::unix::fs::lchown(t.path(), Some(u), Some(g)).is_ok())
    })
}

use skip::skip;

/// A directory tree from a compact description: `name=content` files, `dir/` directories,
/// `link -> target` symlinks.
fn tree(spec: &[&str]) -> TempDir {
    let t = tempfile::tempdir().unwrap();
    populate(t.path(), spec);
    t
}

fn populate(root: &Path, spec: &[&str]) {
    for item in spec {
        if let Some((name, target)) = item.split_once(" -> ") {
            let p = root.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            symlink(target, &p).unwrap();
        } else if let Some(dir) = item.strip_suffix('/') {
            fs::create_dir_all(root.join(dir)).unwrap();
        } else {
            let (name, content) = item.split_once('=').unwrap_or((item, ""));
            let p = root.join(name);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, content).unwrap();
        }
    }
}

fn set_mtime(path: &Path, secs: i64) {
    let t = UNIX_EPOCH + Duration::from_secs(secs as u64);
    let f = fs::File::open(path).unwrap();
    f.set_times(fs::FileTimes::new().set_modified(t).set_accessed(t))
        .unwrap();
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// One COPY/ADD with owned values.
#[derive(Debug, Clone, Default)]
struct Spec {
    add: bool,
    sources: Vec<String>,
    contents: Vec<(String, String)>,
    dest: String,
    workdir: String,
    chown: Option<String>,
    chmod: Option<String>,
    parents: bool,
    exclude: Vec<String>,
    unpack: Option<bool>,
    checksum: Option<String>,
}

fn copy(sources: &[&str], dest: &str) -> Spec {
    Spec {
        sources: sources.iter().map(|s| s.to_string()).collect(),
        dest: dest.to_string(),
        workdir: "/".to_string(),
        ..Spec::default()
    }
}

fn add(sources: &[&str], dest: &str) -> Spec {
    Spec {
        add: true,
        ..copy(sources, dest)
    }
}

impl Spec {
    fn workdir(mut self, w: &str) -> Self {
        self.workdir = w.to_string();
        self
    }
    fn chown(mut self, c: &str) -> Self {
        self.chown = Some(c.to_string());
        self
    }
    fn chmod(mut self, c: &str) -> Self {
        self.chmod = Some(c.to_string());
        self
    }
    fn parents(mut self) -> Self {
        self.parents = true;
        self
    }
    fn exclude(mut self, e: &[&str]) -> Self {
        self.exclude = e.iter().map(|s| s.to_string()).collect();
        self
    }
    fn unpack(mut self, u: bool) -> Self {
        self.unpack = Some(u);
        self
    }
    fn checksum(mut self, c: &str) -> Self {
        self.checksum = Some(c.to_string());
        self
    }
    fn heredoc(mut self, name: &str, data: &str) -> Self {
        self.contents.push((name.to_string(), data.to_string()));
        self
    }
}

/// Where sources come from.
#[derive(Clone, Copy)]
enum Src<'a> {
    /// A context directory and its `.dockerignore` text.
    Ctx(&'a Path, &'a str),
    /// A stage root filesystem.
    Root(&'a Path),
}

/// Everything about a tree that copy_entries must not change.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for de in fs::read_dir(&d).unwrap() {
            let p = de.unwrap().path();
            let md = fs::symlink_metadata(&p).unwrap();
            let link = fs::read_link(&p).ok();
            out.insert(
                p.strip_prefix(root).unwrap().to_path_buf(),
                format!(
                    "{:o} {}:{} {}.{} {} {:?} {}",
                    md.mode(),
                    md.uid(),
                    md.gid(),
                    md.mtime(),
                    md.mtime_nsec(),
                    md.len(),
                    link,
                    md.ino()
                ),
            );
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out
}

/// Runs copy_entries, checking that it leaves `dest_root` alone and that the entries are unique
/// and in layer order.
fn entries(spec: &Spec, src: Src<'_>, dest_root: &Path) -> Result<Vec<LayerEntry>, CopyError> {
    let filter;
    let source = match src {
        Src::Ctx(root, ignore) => {
            filter = ContextFilter::new(&WalkOptions {
                include: vec![],
                exclude: read_ignore_file(ignore),
            })
            .unwrap();
            CopySource::Context {
                root,
                filter: &filter,
            }
        }
        Src::Root(root) => CopySource::Rootfs { root },
    };
    let req = CopyRequest {
        add: spec.add,
        source,
        sources: &spec.sources,
        contents: &spec.contents,
        dest: &spec.dest,
        workdir: &spec.workdir,
        chown: spec.chown.as_deref(),
        chmod: spec.chmod.as_deref(),
        parents: spec.parents,
        exclude: &spec.exclude,
        unpack: spec.unpack,
        checksum: spec.checksum.as_deref(),
        now: NOW,
        fetched: &Default::default(),
        kept: None,
    };
    let before = snapshot(dest_root);
    let out = copy_entries(&req, dest_root);
    assert_eq!(
        before,
        snapshot(dest_root),
        "copy_entries changed dest_root"
    );
    if let Ok(es) = &out {
        for w in es.windows(2) {
            assert_eq!(
                compare_layer_paths(&w[0].path, &w[1].path),
                std::cmp::Ordering::Less,
                "entries not sorted/unique: {:?} then {:?}",
                w[0].path,
                w[1].path
            );
        }
        for e in es {
            assert!(
                e.path.is_relative() && !e.path.as_os_str().is_empty(),
                "bad entry path {:?}",
                e.path
            );
        }
    }
    out
}

/// Writes the entries as a layer and applies it onto `root` (in place).
fn apply(es: Vec<LayerEntry>, root: &Path) {
    let mut tar = Vec::new();
    write_layer(
        es,
        &WriteOptions {
            compression: Compression::Uncompressed,
            ..WriteOptions::default()
        },
        &mut tar,
    )
    .unwrap();
    let report = apply_layer(&tar[..], root, &ApplyOptions::default()).unwrap();
    assert!(
        report.warnings.is_empty() || !can_chown(),
        "{:?}",
        report.warnings
    );
}

/// One step on top of `root`, in place: COPY/ADD then apply.
fn step(spec: &Spec, src: Src<'_>, root: &Path) -> Vec<LayerEntry> {
    let es = entries(spec, src, root).unwrap_or_else(|e| panic!("{spec:?}: {e}"));
    apply(es.clone(), root);
    es
}

/// A fresh (empty, like `scratch`) destination root with one step applied.
fn scratch(spec: &Spec, src: Src<'_>) -> TempDir {
    let root = tempfile::tempdir().unwrap();
    step(spec, src, root.path());
    root
}

fn read(root: &Path, p: &str) -> String {
    fs::read_to_string(root.join(p.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("reading {p}: {e}"))
}

fn exists(root: &Path, p: &str) -> bool {
    fs::symlink_metadata(root.join(p.trim_start_matches('/'))).is_ok()
}

fn md(root: &Path, p: &str) -> fs::Metadata {
    fs::symlink_metadata(root.join(p.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn mode(root: &Path, p: &str) -> u32 {
    md(root, p).mode() & 0o7777
}

fn owner(root: &Path, p: &str) -> (u32, u32) {
    let m = md(root, p);
    (m.uid(), m.gid())
}

fn link(root: &Path, p: &str) -> String {
    fs::read_link(root.join(p.trim_start_matches('/')))
        .unwrap()
        .display()
        .to_string()
}

/// All paths in a tree, `/`-prefixed, directories with a trailing `/`.
fn listing(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = snapshot(root)
        .keys()
        .map(|p| {
            let dir = fs::symlink_metadata(root.join(p)).unwrap().is_dir();
            format!("/{}{}", p.display(), if dir { "/" } else { "" })
        })
        .collect();
    out.sort();
    out
}

fn entry<'e>(es: &'e [LayerEntry], p: &str) -> &'e LayerEntry {
    es.iter()
        .find(|e| e.path == Path::new(p))
        .unwrap_or_else(|| panic!("no entry {p} in {:?}", paths(es)))
}

fn paths(es: &[LayerEntry]) -> Vec<String> {
    es.iter().map(|e| e.path.display().to_string()).collect()
}

fn err(spec: &Spec, src: Src<'_>, dest_root: &Path) -> String {
    match entries(spec, src, dest_root) {
        Ok(es) => panic!("{spec:?} succeeded: {:?}", paths(&es)),
        Err(e) => e.to_string(),
    }
}

/// A tar archive from (name, kind) members; kinds: `f:content`, `d`, `l:target` (symlink),
/// `h:target` (hard link). Members get mode 0644/0755, owner 0:0 unless `owner` is given.
fn tar_bytes(members: &[(&str, &str)], owner: Option<(u64, u64)>) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind) in members {
        let mut h = tar::Header::new_gnu();
        let (uid, gid) = owner.unwrap_or((0, 0));
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_600_000_000);
        let (k, arg) = kind.split_once(':').unwrap_or((kind, ""));
        let mut data: &[u8] = &[];
        match k {
            "f" => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(arg.len() as u64);
                data = arg.as_bytes();
            }
            "d" => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
            }
            "l" | "h" => {
                h.set_entry_type(if k == "l" {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                h.set_mode(0o777);
                h.set_size(0);
                h.set_link_name_literal(arg).unwrap();
            }
            _ => panic!("kind {k}"),
        }
        // Raw names, so `../x` and `/abs` reach the archive as they are.
        let raw = name.as_bytes();
        let gnu = h.as_gnu_mut().unwrap();
        gnu.name[..raw.len()].copy_from_slice(raw);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn bzip2(data: &[u8]) -> Vec<u8> {
    let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 6);
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd_bytes(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).unwrap()
}

/// A tiny HTTP/1.1 server on 127.0.0.1 for `(path, body, last-modified)` routes; anything else
/// is a 404. It stops when the guard is dropped, or after 60 s.
struct Server {
    base: String,
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn serve(routes: Vec<(&'static str, Vec<u8>, Option<&'static str>)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
            let (mut conn, _) = match listener.accept() {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
            };
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = Vec::new();
            let mut buf = [0u8; 1024];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req);
            let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
            let resp = match routes.iter().find(|r| r.0 == path) {
                Some((_, body, lm)) => {
                    let mut head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    if let Some(lm) = lm {
                        head.push_str(&format!("Last-Modified: {lm}\r\n"));
                    }
                    head.push_str("\r\n");
                    let mut v = head.into_bytes();
                    v.extend_from_slice(body);
                    v
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = conn.write_all(&resp);
        }
    });
    Server { base, stop }
}

/// The copy-wildcards context of S04–S09.
fn wildcard_ctx() -> TempDir {
    tree(&[
        "foo.go=foo-contents",
        "bar.go=bar-contents",
        "sub/dir1/dir2/foo=foo",
    ])
}

// ---------------------------------------------------------------------------------------------
// S01–S14: destinations, wildcards, directories

#[test]
fn s01_dest_with_slash_is_a_created_dir() {
    let ctx = tree(&["testfile=contents0"]);
    let r = scratch(&copy(&["testfile"], "/sample/"), Src::Ctx(ctx.path(), ""));
    assert_eq!(read(r.path(), "/sample/testfile"), "contents0");
    assert_eq!(mode(r.path(), "/sample"), 0o755);
    assert_eq!(md(r.path(), "/sample").mtime(), NOW);
}

#[test]
fn s02_empty_dest_is_workdir() {
    let ctx = tree(&["testfile=contents0"]);
    let r = scratch(&copy(&["testfile"], ""), Src::Ctx(ctx.path(), ""));
    assert_eq!(listing(r.path()), ["/testfile"]);
}

#[test]
fn s03_dot_and_empty_dest_resolve_against_workdir() {
    let ctx = tree(&["testfile=t"]);
    for dest in [".", ""] {
        // WORKDIR /var/www made the directory already.
        let root = tree(&["var/www/"]);
        step(
            &copy(&["testfile"], dest).workdir("/var/www"),
            Src::Ctx(ctx.path(), ""),
            root.path(),
        );
        assert_eq!(read(root.path(), "/var/www/testfile"), "t");
        // And when it does not exist yet.
        let r = scratch(
            &copy(&["testfile"], dest).workdir("/var/www"),
            Src::Ctx(ctx.path(), ""),
        );
        assert_eq!(
            listing(r.path()),
            ["/var/", "/var/www/", "/var/www/testfile"]
        );
    }
}

#[test]
fn s04_wildcard_into_dir() {
    let ctx = wildcard_ctx();
    let r = scratch(&copy(&["*.go"], "/gofiles/"), Src::Ctx(ctx.path(), ""));
    assert_eq!(
        listing(r.path()),
        ["/gofiles/", "/gofiles/bar.go", "/gofiles/foo.go"]
    );
    assert_eq!(read(r.path(), "/gofiles/foo.go"), "foo-contents");
}

#[test]
fn s05_single_wildcard_match_names_the_file() {
    let ctx = wildcard_ctx();
    let r = scratch(&copy(&["f*.go"], "foo2.go"), Src::Ctx(ctx.path(), ""));
    assert_eq!(listing(r.path()), ["/foo2.go"]);
    assert_eq!(read(r.path(), "/foo2.go"), "foo-contents");
}

#[test]
fn s06_wildcard_matching_a_dir_copies_its_contents() {
    let ctx = wildcard_ctx();
    let r = scratch(&copy(&["sub/*"], "/subdest/"), Src::Ctx(ctx.path(), ""));
    assert_eq!(
        listing(r.path()),
        ["/subdest/", "/subdest/dir2/", "/subdest/dir2/foo"]
    );
}

#[test]
fn s07_wildcard_in_the_middle() {
    let ctx = wildcard_ctx();
    let r = scratch(
        &copy(&["sub/*/dir2/foo"], "/subdest2/"),
        Src::Ctx(ctx.path(), ""),
    );
    assert_eq!(read(r.path(), "/subdest2/foo"), "foo");
    let r = scratch(
        &copy(&["sub/*/dir2/foo"], "/subdest3/bar"),
        Src::Ctx(ctx.path(), ""),
    );
    assert_eq!(listing(r.path()), ["/subdest3/", "/subdest3/bar"]);
}

#[test]
fn s08_whole_context() {
    let ctx = wildcard_ctx();
    let r = scratch(&copy(&["."], "all/"), Src::Ctx(ctx.path(), ""));
    assert_eq!(
        listing(r.path()),
        [
            "/all/",
            "/all/bar.go",
            "/all/foo.go",
            "/all/sub/",
            "/all/sub/dir1/",
            "/all/sub/dir1/dir2/",
            "/all/sub/dir1/dir2/foo"
        ]
    );
}

#[test]
fn s09_dir_source_forms_all_copy_contents() {
    let ctx = wildcard_ctx();
    for (src, dest) in [
        ("sub/dir1/", "subdest4"),
        ("sub/dir1/.", "subdest5"),
        ("sub/dir1", "subdest6"),
    ] {
        let r = scratch(&copy(&[src], dest), Src::Ctx(ctx.path(), ""));
        assert_eq!(
            listing(r.path()),
            [
                format!("/{dest}/"),
                format!("/{dest}/dir2/"),
                format!("/{dest}/dir2/foo")
            ]
        );
    }
}

#[test]
fn s10_wildcard_matching_nothing_is_skipped() {
    let ctx = tree(&["foo=contents0"]);
    let r = scratch(&copy(&["foo", "nomatch*"], "/"), Src::Ctx(ctx.path(), ""));
    assert_eq!(listing(r.path()), ["/foo"]);
    // Alone, it adds nothing (not even the destination directory).
    let root = tempfile::tempdir().unwrap();
    let es = entries(
        &copy(&["nomatch*"], "/newdir/"),
        Src::Ctx(ctx.path(), ""),
        root.path(),
    )
    .unwrap();
    assert!(es.is_empty(), "{:?}", paths(&es));
}

#[test]
fn s11_expanded_source() {
    let ctx = tree(&["bar=bar-contents"]);
    let r = scratch(&copy(&["bar"], "baz"), Src::Ctx(ctx.path(), ""));
    assert_eq!(read(r.path(), "/baz"), "bar-contents");
}

#[test]
fn s12_relative_destinations_against_workdir() {
    // The COPY parts of S12 (the WORKDIR chaining is the builder's).
    let ctx = tree(&["foo=hello"]);
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let c = Src::Ctx(ctx.path(), "");
    step(&copy(&["foo"], "./").workdir("/test1/test2"), c, r);
    step(&add(&["foo"], "./bar/baz").workdir("/test1/test2"), c, r);
    step(&copy(&["foo"], "./bar/baz2").workdir("/test1/test2"), c, r);
    step(&copy(&["foo"], "./").workdir("/test1"), c, r);
    step(&copy(&["foo"], "/test3/").workdir("/test1"), c, r);
    step(&copy(&["."], ".").workdir("/test4"), c, r);
    step(&copy(&["foo"], "../").workdir("/test5/test6"), c, r);
    for p in [
        "/test1/test2/foo",
        "/test1/test2/bar/baz",
        "/test1/test2/bar/baz2",
        "/test1/foo",
        "/test3/foo",
        "/test4/foo",
        "/test5/foo",
    ] {
        assert_eq!(read(r, p), "hello", "{p}");
    }
}

#[test]
fn s13_copy_over_existing_files_and_dirs() {
    let ctx = tree(&["sub/dir1/dir2/foo=foo", "files/foo.go=go"]);
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let c = Src::Ctx(ctx.path(), "");
    for spec in [
        copy(&["sub"], "sub"),
        copy(&["sub"], "sub"),
        copy(&["files/foo.go"], "dest/foo.go"),
        copy(&["files/foo.go"], "dest/foo.go"),
        copy(&["files"], "dest"),
    ] {
        step(&spec, c, r);
    }
    assert_eq!(read(r, "/sub/dir1/dir2/foo"), "foo");
    assert_eq!(read(r, "/dest/foo.go"), "go");
}

#[test]
fn s14_names_are_literal() {
    let ctx = tree(&[
        "test-äöü.txt=foo",
        "test-%C3%A4%C3%B6%C3%BC.txt=bar",
        "test+aou.txt=baz",
    ]);
    let root = tempfile::tempdir().unwrap();
    let c = Src::Ctx(ctx.path(), "");
    for s in [
        "test-äöü.txt",
        "test-%C3%A4%C3%B6%C3%BC.txt",
        "test+aou.txt",
    ] {
        step(&copy(&[s], "/"), c, root.path());
    }
    assert_eq!(read(root.path(), "/test-äöü.txt"), "foo");
    assert_eq!(read(root.path(), "/test-%C3%A4%C3%B6%C3%BC.txt"), "bar");
    assert_eq!(read(root.path(), "/test+aou.txt"), "baz");
}

// ---------------------------------------------------------------------------------------------
// S15–S20: modes and owners

#[test]
fn s15_chmod_on_files_and_created_parents() {
    let ctx = tree(&["foo=f", "bar=b"]);
    chmod(&ctx.path().join("foo"), 0o600);
    chmod(&ctx.path().join("bar"), 0o700);
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    let c = Src::Ctx(ctx.path(), "");
    step(&copy(&["foo"], "/").chmod("0644"), c, r);
    step(&copy(&["bar"], "/baz").chmod("777"), c, r);
    step(&copy(&["foo"], "/foobis").chmod("0"), c, r);
    step(&copy(&["foo"], "/parent/foo").chmod("777"), c, r);
    step(&copy(&["foo"], "/parent/sub/foo").chmod("770"), c, r);
    step(&copy(&["foo"], "/footer").chmod("755"), c, r);
    assert_eq!(mode(r, "/foo"), 0o644);
    assert_eq!(mode(r, "/baz"), 0o777);
    assert_eq!(mode(r, "/foobis"), 0o000);
    assert_eq!(mode(r, "/footer"), 0o755);
    assert_eq!(mode(r, "/parent"), 0o777);
    assert_eq!(mode(r, "/parent/sub"), 0o770);
    assert_eq!(mode(r, "/parent/foo"), 0o777);
    assert_eq!(mode(r, "/parent/sub/foo"), 0o770);
    // Without --chmod the source mode is kept.
    let r2 = scratch(&copy(&["bar"], "/x"), c);
    assert_eq!(mode(r2.path(), "/x"), 0o700);
}

#[test]
fn s16_invalid_chmod() {
    let ctx = tree(&["foo=f"]);
    let root = tempfile::tempdir().unwrap();
    for bad in ["64a", "10000"] {
        assert_eq!(
            err(
                &copy(&["foo"], "/").chmod(bad),
                Src::Ctx(ctx.path(), ""),
                root.path()
            ),
            format!(
                "invalid chmod parameter: '{bad}'. it should be octal string and between 0 and 07777"
            )
        );
    }
}

#[test]
fn s17_symbolic_chmod() {
    let base = tree(&["file=x", "dir/"]);
    chmod(&base.path().join("file"), 0o666);
    // The upstream directory mode, 0124, cannot be read by a non-root owner: use 0524 there.
    let (dmode, expect) = if can_chown() {
        (0o124, [0o104, 0o644, 0o135])
    } else {
        skip(
            "s17_symbolic_chmod",
            "not root: directory mode 0524 instead of 0124",
        );
        (0o524, [0o504, 0o644, 0o535])
    };
    chmod(&base.path().join("dir"), dmode);
    let src = Src::Root(base.path());
    for (m, file_mode, dir_mode) in [
        ("go-w", 0o644, expect[0]),
        ("u=rw,g=r,o=r", 0o644, expect[1]),
        ("a+X", 0o666, expect[2]),
    ] {
        let root = tempfile::tempdir().unwrap();
        let es = step(&copy(&["/file"], "/f").chmod(m), src, root.path());
        assert_eq!(entry(&es, "f").mode, file_mode, "{m} file");
        assert_eq!(mode(root.path(), "/f"), file_mode, "{m} file");
        // A directory source's own mode goes nowhere (its contents are copied), so copy the
        // directory inside a parent to see it.
        let es = entries(&copy(&["/"], "/out/").chmod(m), src, root.path()).unwrap();
        assert_eq!(entry(&es, "out/dir").mode, dir_mode, "{m} dir");
        assert_eq!(entry(&es, "out/file").mode, file_mode, "{m} file in tree");
    }
    chmod(&base.path().join("dir"), 0o755);
}

/// A destination root with account files (busybox-like).
fn accounts_root() -> TempDir {
    tree(&[
        "etc/passwd=root:x:0:0:root:/root:/bin/sh\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nnobody:x:65534:65534:nobody:/home:/bin/false\nuser:x:1000:1000::/home/user:/bin/sh\nuser01:x:1001:1001::/home/user01:/bin/sh\n",
        "etc/group=root:x:0:\ndaemon:x:1:\nnobody:x:65534:\nuser:x:1000:\nuser01:x:1001:\n",
    ])
}

#[test]
fn s18_chown_names_from_the_destination() {
    let ctx = tree(&["foo=f", "bar/sub=s"]);
    let c = Src::Ctx(ctx.path(), "");
    let root = accounts_root();
    let r = root.path();
    let a = step(&copy(&["foo"], "/").chown("daemon"), c, r);
    let b = step(&copy(&["bar"], "/baz").chown("1000:nobody"), c, r);
    let d = step(&copy(&["foo"], "/foobis").chown("1000:nobody"), c, r);
    assert_eq!((entry(&a, "foo").uid, entry(&a, "foo").gid), (1, 1));
    assert_eq!(
        (entry(&b, "baz/sub").uid, entry(&b, "baz/sub").gid),
        (1000, 65534)
    );
    assert_eq!((entry(&b, "baz").uid, entry(&b, "baz").gid), (1000, 65534));
    assert_eq!(
        (entry(&d, "foobis").uid, entry(&d, "foobis").gid),
        (1000, 65534)
    );
    // `/etc` was not touched: not in the layers.
    assert!(a.iter().all(|e| !e.path.starts_with("etc")));
    if can_chown() {
        assert_eq!(owner(r, "/foo"), (1, 1));
        assert_eq!(owner(r, "/baz/sub"), (1000, 65534));
        assert_eq!(owner(r, "/foobis"), (1000, 65534));
    } else {
        skip(
            "s18_chown_names_from_the_destination",
            "cannot chown: checked the entries only",
        );
    }
}

#[test]
fn s19_chown_owns_the_created_destination() {
    let ctx = tree(&["a=1", "d/b=2"]);
    let c = Src::Ctx(ctx.path(), "");
    let root = accounts_root();
    let es = step(&copy(&["."], "/dest").chown("user:user"), c, root.path());
    for p in ["dest", "dest/a", "dest/d", "dest/d/b"] {
        assert_eq!((entry(&es, p).uid, entry(&es, p).gid), (1000, 1000), "{p}");
    }
    let es = step(
        &copy(&["."], "/dest01").chown("user01:user"),
        c,
        root.path(),
    );
    assert_eq!(
        (entry(&es, "dest01").uid, entry(&es, "dest01").gid),
        (1001, 1000)
    );
    if can_chown() {
        assert_eq!(owner(root.path(), "/dest"), (1000, 1000));
        assert_eq!(owner(root.path(), "/dest01/d/b"), (1001, 1000));
    }
}

#[test]
fn s20_owners_from_a_stage_and_existing_dirs() {
    if !can_chown() {
        skip(
            "s20_owners_from_a_stage_and_existing_dirs",
            "needs root to prepare owners",
        );
        return;
    }
    let source = tree(&["file=f", "dir/subdir/nestedfile=n"]);
    let s = source.path();
    let own = |p: &str, u, g| std::os::unix::fs::lchown(s.join(p), Some(u), Some(g)).unwrap();
    own("file", 100, 200);
    own("dir", 100, 200);
    own("dir/subdir", 101, 201);
    own("dir/subdir/nestedfile", 102, 202);
    let mk_base = || {
        let base = tree(&["existingdir/existingsubdir/", "existingdir/existingfile=e"]);
        let b = base.path();
        std::os::unix::fs::lchown(b.join("existingdir"), Some(500), Some(600)).unwrap();
        for p in ["existingdir/existingsubdir", "existingdir/existingfile"] {
            std::os::unix::fs::lchown(b.join(p), Some(501), Some(601)).unwrap();
        }
        base
    };
    let src = Src::Root(s);

    let base = mk_base();
    let b = base.path();
    step(&copy(&["/file"], "."), src, b);
    step(&copy(&["/dir"], "/dir"), src, b);
    step(&copy(&["/dir/."], "/existingdir"), src, b);
    assert_eq!(owner(b, "/file"), (100, 200));
    assert_eq!(owner(b, "/dir"), (0, 0));
    assert_eq!(owner(b, "/dir/subdir"), (101, 201));
    assert_eq!(owner(b, "/dir/subdir/nestedfile"), (102, 202));
    assert_eq!(owner(b, "/existingdir"), (500, 600));
    assert_eq!(owner(b, "/existingdir/existingsubdir"), (501, 601));
    assert_eq!(owner(b, "/existingdir/existingfile"), (501, 601));
    assert_eq!(owner(b, "/existingdir/subdir"), (101, 201));
    assert_eq!(owner(b, "/existingdir/subdir/nestedfile"), (102, 202));

    let base = mk_base();
    let b = base.path();
    step(&copy(&["/file"], ".").chown("300:400"), src, b);
    step(&copy(&["/dir"], "/dir").chown("300:400"), src, b);
    step(&copy(&["/dir/."], "/existingdir").chown("300:400"), src, b);
    for p in [
        "/file",
        "/dir",
        "/dir/subdir",
        "/dir/subdir/nestedfile",
        "/existingdir/subdir",
        "/existingdir/subdir/nestedfile",
    ] {
        assert_eq!(owner(b, p), (300, 400), "{p}");
    }
    assert_eq!(owner(b, "/existingdir"), (500, 600));
    assert_eq!(owner(b, "/existingdir/existingsubdir"), (501, 601));
    assert_eq!(owner(b, "/existingdir/existingfile"), (501, 601));
}

#[test]
fn existing_parents_keep_their_metadata_and_new_ones_get_now() {
    let ctx = tree(&["foo=f"]);
    set_mtime(&ctx.path().join("foo"), 1_234_567_890);
    let root = tree(&["etc/", "etc/keep=k"]);
    chmod(&root.path().join("etc"), 0o710);
    set_mtime(&root.path().join("etc"), 1_111_111_111);
    let es = step(
        &copy(&["foo"], "/etc/new/"),
        Src::Ctx(ctx.path(), ""),
        root.path(),
    );
    let etc = entry(&es, "etc");
    assert_eq!((etc.mode, etc.mtime), (0o710, 1_111_111_111));
    let new = entry(&es, "etc/new");
    assert_eq!((new.mode, new.mtime, new.uid, new.gid), (0o755, NOW, 0, 0));
    assert_eq!(entry(&es, "etc/new/foo").mtime, 1_234_567_890);
    assert_eq!(paths(&es), ["etc", "etc/new", "etc/new/foo"]);
    let r = root.path();
    assert_eq!(mode(r, "/etc"), 0o710);
    assert_eq!(md(r, "/etc").mtime(), 1_111_111_111);
    assert_eq!(md(r, "/etc/new/foo").mtime(), 1_234_567_890);
    assert_eq!(read(r, "/etc/keep"), "k");
}

#[test]
fn owners_context_root_and_stage_kept() {
    let ctx = tree(&["f=1", "d/g=2"]);
    if can_chown() {
        for p in ["f", "d", "d/g"] {
            std::os::unix::fs::lchown(ctx.path().join(p), Some(55), Some(66)).unwrap();
        }
    }
    let root = tempfile::tempdir().unwrap();
    let es = entries(&copy(&["."], "/c/"), Src::Ctx(ctx.path(), ""), root.path()).unwrap();
    for e in &es {
        assert_eq!((e.uid, e.gid), (0, 0), "{:?}", e.path);
    }
    let es = entries(&copy(&["/"], "/c/"), Src::Root(ctx.path()), root.path()).unwrap();
    let want = owner(ctx.path(), "/d/g");
    let g = entry(&es, "c/d/g");
    assert_eq!((g.uid, g.gid), (u64::from(want.0), u64::from(want.1)));
    // The created destination is 0:0 all the same (S20).
    assert_eq!((entry(&es, "c").uid, entry(&es, "c").gid), (0, 0));
}

// ---------------------------------------------------------------------------------------------
// S21–S25: symlinks

#[test]
fn s21_symlink_in_context_source_path() {
    let ctx = tree(&["link -> sub", "sub/foo=contents"]);
    let r = scratch(&copy(&["link/foo"], "."), Src::Ctx(ctx.path(), ""));
    assert_eq!(listing(r.path()), ["/foo"]);
    assert_eq!(read(r.path(), "/foo"), "contents");
}

#[test]
fn s22_symlinks_in_stage_source_path() {
    let build = tree(&["sub -> /out/sub", "sub2 -> out/sub", "out/sub/foo=data"]);
    let root = tempfile::tempdir().unwrap();
    step(
        &copy(&["/sub/foo"], "."),
        Src::Root(build.path()),
        root.path(),
    );
    step(
        &copy(&["/sub2/foo"], "bar"),
        Src::Root(build.path()),
        root.path(),
    );
    assert_eq!(read(root.path(), "/foo"), "data");
    assert_eq!(read(root.path(), "/bar"), "data");
}

#[test]
fn s23_symlink_sources_are_dereferenced() {
    let ctx = tree(&[
        "bar=bar-contents",
        "foo -> bar",
        "sub/lfile=lfile",
        "sub/l0 -> subfile",
        "sub/subfile=subfile",
        "sub/l1 -> second",
        "sub/second -> baz",
        "sub/baz=baz",
    ]);
    let root = tempfile::tempdir().unwrap();
    step(&copy(&["foo"], "/"), Src::Ctx(ctx.path(), ""), root.path());
    step(
        &copy(&["sub/l*"], "alllinks/"),
        Src::Ctx(ctx.path(), ""),
        root.path(),
    );
    let r = root.path();
    assert_eq!(read(r, "/foo"), "bar-contents");
    assert!(md(r, "/foo").is_file());
    assert_eq!(read(r, "/alllinks/l0"), "subfile");
    assert_eq!(read(r, "/alllinks/l1"), "baz");
    assert_eq!(read(r, "/alllinks/lfile"), "lfile");
    assert!(md(r, "/alllinks/l1").is_file());
}

#[test]
fn s24_socket_becomes_an_empty_file() {
    let ctx = tree(&["a=1"]);
    let _l = std::os::unix::net::UnixListener::bind(ctx.path().join("socket.sock")).unwrap();
    let r = scratch(&copy(&["."], "/"), Src::Ctx(ctx.path(), ""));
    let m = md(r.path(), "/socket.sock");
    assert!(m.is_file());
    assert_eq!(m.len(), 0);
}

#[test]
fn s25_symlink_in_destination_is_followed_and_clamped() {
    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("t.tar"),
        tar_bytes(&[("symlink", "l:../tmp/symlink-target")], None),
    )
    .unwrap();
    fs::write(ctx.path().join("foo"), "content0").unwrap();
    let root = tempfile::tempdir().unwrap();
    let c = Src::Ctx(ctx.path(), "");
    step(&add(&["t.tar"], "/"), c, root.path());
    let es = step(&copy(&["foo"], "/symlink/"), c, root.path());
    assert_eq!(
        paths(&es),
        ["tmp", "tmp/symlink-target", "tmp/symlink-target/foo"]
    );
    assert_eq!(read(root.path(), "/tmp/symlink-target/foo"), "content0");
    assert_eq!(link(root.path(), "/symlink"), "../tmp/symlink-target");
}

#[test]
fn symlinks_out_of_the_context_never_reach_the_host() {
    let ctx = tree(&[
        "pw -> /etc/passwd",
        "up -> ../../../../../../etc/passwd",
        "dir/x=1",
    ]);
    symlink("/etc", ctx.path().join("dir/etclink")).unwrap();
    let root = tempfile::tempdir().unwrap();
    let c = Src::Ctx(ctx.path(), "");
    // By name: resolved inside the context, where there is no etc/passwd.
    for s in ["pw", "up", "dir/etclink/passwd"] {
        assert_eq!(
            err(&copy(&[s], "/x"), c, root.path()),
            format!("\"/{s}\": not found")
        );
    }
    // With a context etc/passwd, that one is used.
    populate(ctx.path(), &["etc/passwd=not the host's"]);
    let r = scratch(&copy(&["pw"], "/x"), c);
    assert_eq!(read(r.path(), "/x"), "not the host's");
    // Inside a copied directory the symlinks stay symlinks.
    let r = scratch(&copy(&["."], "/all/"), c);
    assert_eq!(link(r.path(), "/all/pw"), "/etc/passwd");
    assert_eq!(link(r.path(), "/all/dir/etclink"), "/etc");
    let host = fs::read("/etc/passwd").unwrap_or_default();
    for p in snapshot(r.path()).keys() {
        let full = r.path().join(p);
        if fs::symlink_metadata(&full).unwrap().is_file() && !host.is_empty() {
            assert_ne!(
                fs::read(&full).unwrap(),
                host,
                "{p:?} holds the host's passwd"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// S26–S30: ADD archives and URLs

fn archive_ctx() -> TempDir {
    let ctx = tempfile::tempdir().unwrap();
    let t = tar_bytes(&[("foo", "f:content0")], None);
    fs::write(ctx.path().join("t.tar"), &t).unwrap();
    fs::write(ctx.path().join("t.tar.gz"), gzip(&t)).unwrap();
    fs::write(ctx.path().join("t.tar.bz2"), bzip2(&t)).unwrap();
    fs::write(ctx.path().join("t.tar.xz"), xz(&t)).unwrap();
    fs::write(ctx.path().join("t.tar.zst"), zstd_bytes(&t)).unwrap();
    // Compressed by content, whatever the name.
    fs::write(ctx.path().join("archive.bin"), gzip(&t)).unwrap();
    // Compressed but not a tar, and an empty tar: copied as they are.
    fs::write(ctx.path().join("plain.gz"), gzip(b"just text")).unwrap();
    fs::write(ctx.path().join("empty.tar"), vec![0u8; 1024]).unwrap();
    fs::write(
        ctx.path().join("b.tar"),
        tar_bytes(&[("bar", "f:bar")], None),
    )
    .unwrap();
    ctx
}

#[test]
fn s26_add_extracts_local_archives() {
    let ctx = archive_ctx();
    let c = Src::Ctx(ctx.path(), "");
    for name in [
        "t.tar",
        "t.tar.gz",
        "t.tar.bz2",
        "t.tar.xz",
        "t.tar.zst",
        "archive.bin",
    ] {
        let r = scratch(&add(&[name], "/"), c);
        assert_eq!(listing(r.path()), ["/foo"], "{name}");
        assert_eq!(read(r.path(), "/foo"), "content0");
        assert_eq!(md(r.path(), "/foo").mtime(), 1_600_000_000);
    }
    let r = scratch(&add(&["t.tar.gz"], "/").unpack(false), c);
    assert_eq!(listing(r.path()), ["/t.tar.gz"]);
    let r = scratch(&copy(&["t.tar.gz"], "/"), c);
    assert_eq!(listing(r.path()), ["/t.tar.gz"]);
    for name in ["plain.gz", "empty.tar"] {
        let r = scratch(&add(&[name], "/"), c);
        assert_eq!(listing(r.path()), [format!("/{name}")]);
    }
}

#[test]
fn s27_add_urls() {
    let t = tar_bytes(&[("foo", "f:content0")], None);
    let tgz = gzip(&t);
    let server = serve(vec![
        (
            "/t.tar.gz",
            tgz.clone(),
            Some("Sun, 06 Nov 1994 08:49:37 GMT"),
        ),
        ("/dir/plain.txt", b"hello".to_vec(), None),
    ]);
    let ctx = tempfile::tempdir().unwrap();
    let c = Src::Ctx(ctx.path(), "");
    let url = format!("{}/t.tar.gz", server.base);

    let r = scratch(&add(&[&url], "/"), c);
    assert_eq!(listing(r.path()), ["/t.tar.gz"]);
    assert_eq!(fs::read(r.path().join("t.tar.gz")).unwrap(), tgz);
    assert_eq!(mode(r.path(), "/t.tar.gz"), 0o600);
    assert_eq!(md(r.path(), "/t.tar.gz").mtime(), 784_111_777);

    let r = scratch(&add(&[&url], "/dest/").unpack(true), c);
    assert_eq!(listing(r.path()), ["/dest/", "/dest/foo"]);

    let r = scratch(&add(&[&url], "/newname.tar.gz"), c);
    assert_eq!(listing(r.path()), ["/newname.tar.gz"]);

    let plain = format!("{}/dir/plain.txt", server.base);
    let r = tree(&["x/"]);
    let es = step(
        &add(&[&plain], "/x/").chmod("0640").chown("7:8"),
        c,
        r.path(),
    );
    let f = entry(&es, "x/plain.txt");
    assert_eq!((f.mode, f.uid, f.gid, f.mtime), (0o640, 7, 8, NOW));
    assert_eq!(read(r.path(), "/x/plain.txt"), "hello");
    assert_eq!(mode(r.path(), "/x/plain.txt"), 0o640);

    // --checksum.
    let good = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    let r = scratch(&add(&[&plain], "/c").checksum(good), c);
    assert_eq!(read(r.path(), "/c"), "hello");
    let bad = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let root = tempfile::tempdir().unwrap();
    assert_eq!(
        err(&add(&[&plain], "/c").checksum(bad), c, root.path()),
        format!("checksum mismatch \"{bad}\" != \"{good}\"")
    );
    // A missing URL.
    let missing = format!("{}/nope", server.base);
    let e = err(&add(&[&missing], "/"), c, root.path());
    assert!(e.contains("404"), "{e}");
}

#[test]
fn url_and_checksum_errors() {
    let ctx = tree(&["foo=f"]);
    let c = Src::Ctx(ctx.path(), "");
    let root = tempfile::tempdir().unwrap();
    assert_eq!(
        err(
            &copy(&["http://example.com/README.md"], "/"),
            c,
            root.path()
        ),
        "source can't be a URL for COPY"
    );
    let sum = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
    assert_eq!(
        err(&add(&["foo"], "/").checksum(sum), c, root.path()),
        "checksum requires HTTP(S) or Git sources"
    );
}

#[test]
fn s28_add_wildcard_archives() {
    let ctx = archive_ctx();
    let only_tars = tempfile::tempdir().unwrap();
    for n in ["t.tar", "b.tar"] {
        fs::copy(ctx.path().join(n), only_tars.path().join(n)).unwrap();
    }
    let r = scratch(&add(&["*.tar"], "/dest"), Src::Ctx(only_tars.path(), ""));
    assert_eq!(listing(r.path()), ["/dest/", "/dest/bar", "/dest/foo"]);
}

#[test]
fn s29_add_chown_archive() {
    let ctx = archive_ctx();
    let root = tempfile::tempdir().unwrap();
    let es = step(
        &add(&["t.tar"], "/out/").chown("100:200"),
        Src::Ctx(ctx.path(), ""),
        root.path(),
    );
    for p in ["out", "out/foo"] {
        assert_eq!((entry(&es, p).uid, entry(&es, p).gid), (100, 200), "{p}");
    }
    if can_chown() {
        assert_eq!(owner(root.path(), "/out"), (100, 200));
        assert_eq!(owner(root.path(), "/out/foo"), (100, 200));
    }
    // Without --chown the archive's owners are kept.
    let ctx2 = tempfile::tempdir().unwrap();
    fs::write(
        ctx2.path().join("o.tar"),
        tar_bytes(&[("d", "d"), ("d/f", "f:x")], Some((42, 43))),
    )
    .unwrap();
    let es = entries(
        &add(&["o.tar"], "/o/"),
        Src::Ctx(ctx2.path(), ""),
        root.path(),
    )
    .unwrap();
    assert_eq!((entry(&es, "o/d/f").uid, entry(&es, "o/d/f").gid), (42, 43));
    assert_eq!((entry(&es, "o").uid, entry(&es, "o").gid), (0, 0));
}

#[test]
fn s30_archive_through_absolute_symlink_with_hardlink() {
    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("rootfs.tar"),
        tar_bytes(&[("run/", "d"), ("var/", "d"), ("var/run", "l:/run")], None),
    )
    .unwrap();
    fs::write(
        ctx.path().join("payload.tar"),
        tar_bytes(
            &[
                // No directory entries: parents are implied.
                ("var/run/act/actions/broad/.git/HEAD", "f:ref: main"),
                (
                    "var/run/act/actions/broad/.git/HEAD.link",
                    "h:var/run/act/actions/broad/.git/HEAD",
                ),
            ],
            None,
        ),
    )
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let c = Src::Ctx(ctx.path(), "");
    step(&add(&["rootfs.tar"], "/"), c, root.path());
    let es = step(&add(&["payload.tar"], "/"), c, root.path());
    assert!(
        es.iter().all(|e| !e.path.starts_with("var")),
        "{:?}",
        paths(&es)
    );
    let r = root.path();
    assert_eq!(read(r, "/run/act/actions/broad/.git/HEAD"), "ref: main");
    assert_eq!(
        md(r, "/run/act/actions/broad/.git/HEAD").ino(),
        md(r, "/run/act/actions/broad/.git/HEAD.link").ino()
    );
    assert_eq!(link(r, "/var/run"), "/run");
    // Both in one archive: the symlink the archive creates is followed by later members.
    let ctx2 = tempfile::tempdir().unwrap();
    fs::write(
        ctx2.path().join("all.tar"),
        tar_bytes(
            &[
                ("run/", "d"),
                ("var/run", "l:/run"),
                ("var/run/x", "f:x"),
                ("var/run/y", "h:/var/run/x"),
            ],
            None,
        ),
    )
    .unwrap();
    let r = scratch(&add(&["all.tar"], "/"), Src::Ctx(ctx2.path(), ""));
    assert_eq!(read(r.path(), "/run/x"), "x");
    assert_eq!(md(r.path(), "/run/x").ino(), md(r.path(), "/run/y").ino());
}

#[test]
fn hostile_archive_stays_under_the_destination() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(outer.path().join("sentinel"), "untouched").unwrap();
    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("evil.tar"),
        tar_bytes(
            &[
                ("../../x", "f:dotdot"),
                ("/abs", "f:absolute"),
                ("up", "l:../../../.."),
                ("up/escaped", "f:through relative symlink"),
                ("rootlink", "l:/"),
                ("rootlink/escaped2", "f:through absolute symlink"),
                ("hl", "h:../../../../x"),
            ],
            None,
        ),
    )
    .unwrap();
    let c = Src::Ctx(ctx.path(), "");
    let es = step(&add(&["evil.tar"], "/dest/"), c, &root);
    for e in &es {
        assert!(e.path.starts_with("dest"), "{:?} escapes /dest", e.path);
    }
    let d = root.join("dest");
    assert_eq!(read(&d, "x"), "dotdot");
    assert_eq!(read(&d, "abs"), "absolute");
    assert_eq!(read(&d, "escaped"), "through relative symlink");
    assert_eq!(read(&d, "escaped2"), "through absolute symlink");
    assert_eq!(md(&d, "hl").ino(), md(&d, "x").ino());
    let mut names: Vec<String> = fs::read_dir(outer.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["root", "sentinel"]);
    assert_eq!(read(outer.path(), "sentinel"), "untouched");
    assert_eq!(
        listing(&root)
            .iter()
            .filter(|p| !p.starts_with("/dest"))
            .count(),
        0
    );

    // A hard link to something that is not in the archive is refused, never a host path.
    fs::write(
        ctx.path().join("hl.tar"),
        tar_bytes(&[("hl", "h:../../../../etc/passwd")], None),
    )
    .unwrap();
    let e = err(&add(&["hl.tar"], "/dest/"), c, &root);
    assert!(e.contains("hard link"), "{e}");
    // A whiteout name cannot be stored.
    fs::write(
        ctx.path().join("wh.tar"),
        tar_bytes(&[(".wh.foo", "f:")], None),
    )
    .unwrap();
    let e = err(&add(&["wh.tar"], "/dest/"), c, &root);
    assert!(e.contains(".wh."), "{e}");
}

#[test]
fn archive_replaces_what_is_in_the_way() {
    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("r.tar"),
        tar_bytes(
            &[
                ("wasfile", "d"),
                ("wasfile/in", "f:in"),
                ("wasdir", "f:now a file"),
            ],
            None,
        ),
    )
    .unwrap();
    let root = tree(&["wasfile=old", "wasdir/child=c"]);
    step(&add(&["r.tar"], "/"), Src::Ctx(ctx.path(), ""), root.path());
    assert_eq!(read(root.path(), "/wasfile/in"), "in");
    assert_eq!(read(root.path(), "/wasdir"), "now a file");
}

// ---------------------------------------------------------------------------------------------
// S31–S34: --exclude and --parents

fn exclude_ctx() -> TempDir {
    tree(&[
        "dir1/file-101.png=1",
        "dir1/file-102.txt=2",
        "dir1/file-103.jpeg=3",
        "dir2/file-201.pdf=4",
        "dir2/file-202.jpeg=5",
        "dir2/file-203.png=6",
        "dir3/file-301.mp3=7",
        "dir3/file-302.mpeg=8",
        "dir4/file-401.txt=9",
        "dir4/file-402.txt -> file-401.txt",
        "dir4/file-403.txt -> file-404.txt",
    ])
}

#[test]
fn s31_exclude_keeps_symlinks() {
    let ctx = exclude_ctx();
    let r = scratch(
        &copy(&["."], "/1").exclude(&["*/*.png", "*/*.jpeg"]),
        Src::Ctx(ctx.path(), ""),
    );
    assert_eq!(
        listing(r.path()),
        [
            "/1/",
            "/1/dir1/",
            "/1/dir1/file-102.txt",
            "/1/dir2/",
            "/1/dir2/file-201.pdf",
            "/1/dir3/",
            "/1/dir3/file-301.mp3",
            "/1/dir3/file-302.mpeg",
            "/1/dir4/",
            "/1/dir4/file-401.txt",
            "/1/dir4/file-402.txt",
            "/1/dir4/file-403.txt",
        ]
    );
    assert_eq!(link(r.path(), "/1/dir4/file-402.txt"), "file-401.txt");
    assert_eq!(link(r.path(), "/1/dir4/file-403.txt"), "file-404.txt");
}

#[test]
fn s32_exclude_relative_to_each_source() {
    let ctx = exclude_ctx();
    let c = Src::Ctx(ctx.path(), "");
    let r = scratch(&add(&["dir3/"], "/3/").exclude(&["*.mp3"]), c);
    assert_eq!(listing(r.path()), ["/3/", "/3/file-302.mpeg"]);
    let r = scratch(
        &copy(&["dir*"], "/4/").exclude(&["*.mp3", "*.jpeg", "*.png", "*.pdf", "*.txt"]),
        c,
    );
    assert_eq!(listing(r.path()), ["/4/", "/4/file-302.mpeg"]);
    let r = scratch(&add(&["dir*"], "/6").exclude(&["*"]), c);
    assert_eq!(listing(r.path()), ["/6/"]);
    // An exception re-includes a file inside an excluded directory, with its parent.
    let r = scratch(
        &copy(&["."], "/7/").exclude(&["dir1", "!dir1/file-102.txt"]),
        c,
    );
    assert!(exists(r.path(), "/7/dir1/file-102.txt"));
    assert!(!exists(r.path(), "/7/dir1/file-101.png"));
}

#[test]
fn s33_parents_from_the_context() {
    let ctx = tree(&[
        "foo1/foo2/bar=testing",
        "foo1/foo2/baz=testing2",
        "other/x=1",
    ]);
    let root = tempfile::tempdir().unwrap();
    let c = Src::Ctx(ctx.path(), "");
    step(&copy(&["foo1/foo2/bar"], "/").parents(), c, root.path());
    step(
        &copy(&["foo1/foo2/ba*"], ".").parents().workdir("/test"),
        c,
        root.path(),
    );
    assert_eq!(
        listing(root.path()),
        [
            "/foo1/",
            "/foo1/foo2/",
            "/foo1/foo2/bar",
            "/test/",
            "/test/foo1/",
            "/test/foo1/foo2/",
            "/test/foo1/foo2/bar",
            "/test/foo1/foo2/baz",
        ]
    );
    assert_eq!(read(root.path(), "/test/foo1/foo2/baz"), "testing2");
}

fn parents_base() -> TempDir {
    tree(&[
        "test/a/b/c/d/foo=foo",
        "test/a/b/c/d/e/bay=bay",
        "test/a/b2/c/d/e/bar=bar",
        "test/a/b/c2/d/e/baz=baz",
        "test/a/b/c2/d/e2/baz=baz2",
    ])
}

#[test]
fn s34_parents_pivots() {
    let base = parents_base();
    let src = Src::Root(base.path());
    let run = |s: &str| listing(scratch(&copy(&[s], "/out/").parents(), src).path());
    assert_eq!(
        run("/test/a/b/./c/d"),
        [
            "/out/",
            "/out/c/",
            "/out/c/d/",
            "/out/c/d/e/",
            "/out/c/d/e/bay",
            "/out/c/d/foo"
        ]
    );
    let full = [
        "/out/",
        "/out/test/",
        "/out/test/a/",
        "/out/test/a/b/",
        "/out/test/a/b/c/",
        "/out/test/a/b/c/d/",
        "/out/test/a/b/c/d/e/",
        "/out/test/a/b/c/d/e/bay",
        "/out/test/a/b/c/d/foo",
    ];
    assert_eq!(run("/test/a/b/c/d/."), full);
    assert_eq!(run("./test/a/b/c/d"), full);
    assert_eq!(
        run("/test/a/./b/./c"),
        [
            "/out/",
            "/out/b/",
            "/out/b/c/",
            "/out/b/c/d/",
            "/out/b/c/d/e/",
            "/out/b/c/d/e/bay",
            "/out/b/c/d/foo"
        ]
    );
    let both = run("/test/a/./*/c");
    assert!(both.contains(&"/out/b/c/d/foo".to_string()), "{both:?}");
    assert!(both.contains(&"/out/b2/c/d/e/bar".to_string()), "{both:?}");
    assert!(!both.iter().any(|p| p.contains("c2")), "{both:?}");
    assert_eq!(
        run("/test/a/b*/./c/**/e"),
        [
            "/out/",
            "/out/c/",
            "/out/c/d/",
            "/out/c/d/e/",
            "/out/c/d/e/bar",
            "/out/c/d/e/bay"
        ]
    );
}

#[test]
fn s35_parents_missing_paths() {
    let base = parents_base();
    let src = Src::Root(base.path());
    let root = tempfile::tempdir().unwrap();
    assert_eq!(
        err(
            &copy(&["/test/nonexistent-file"], "/out/").parents(),
            src,
            root.path()
        ),
        "\"/test/nonexistent-file\": not found"
    );
    for s in ["/test/a/b3*/c", "/test/a/b/./c3*"] {
        let r = scratch(&copy(&[s], "/out/").parents(), src);
        assert!(
            listing(r.path()).iter().all(|p| p == "/out/"),
            "{s}: {:?}",
            listing(r.path())
        );
    }
}

#[test]
fn s38_from_stage_sources_resolve_against_its_root() {
    let base = tree(&["Dockerfile=FROM scratch", "foo/"]);
    let root = tempfile::tempdir().unwrap();
    step(
        &copy(&["Dockerfile"], ".").workdir("/app"),
        Src::Root(base.path()),
        root.path(),
    );
    assert_eq!(read(root.path(), "/app/Dockerfile"), "FROM scratch");
    // Sources that climb out of a stage's root are clamped, as in a chroot.
    let r = scratch(&copy(&["../../Dockerfile"], "/x"), Src::Root(base.path()));
    assert_eq!(read(r.path(), "/x"), "FROM scratch");
}

// ---------------------------------------------------------------------------------------------
// errors, heredocs, special files, .dockerignore

#[test]
fn source_errors() {
    let ctx = tree(&["foo=f", "bar=b", "secret=s", "dir/"]);
    let root = tempfile::tempdir().unwrap();
    let c = Src::Ctx(ctx.path(), "");
    assert_eq!(
        err(&copy(&["../x"], "/"), c, root.path()),
        "forbidden path outside the build context: ../x"
    );
    assert_eq!(
        err(&copy(&["nosuch"], "/"), c, root.path()),
        "\"/nosuch\": not found"
    );
    assert_eq!(
        err(&copy(&["./dir/../nosuch/"], "/"), c, root.path()),
        "\"/nosuch\": not found"
    );
    let ignored = Src::Ctx(ctx.path(), "secret\n");
    assert_eq!(
        err(&copy(&["secret"], "/"), ignored, root.path()),
        "\"/secret\": not found"
    );
    let r = scratch(&copy(&["."], "/all/"), ignored);
    assert!(!exists(r.path(), "/all/secret"));
    assert!(exists(r.path(), "/all/foo"));
    assert_eq!(
        err(&copy(&["foo", "bar"], "/x"), c, root.path()),
        "When using COPY with more than one source file, the destination must be a directory and end with a /"
    );
    assert_eq!(
        err(&add(&["foo", "bar"], "/x"), c, root.path()),
        "When using ADD with more than one source file, the destination must be a directory and end with a /"
    );
    // An existing directory is fine without the slash.
    let with_x = tree(&["x/"]);
    step(&copy(&["foo", "bar"], "/x"), c, with_x.path());
    assert_eq!(read(with_x.path(), "/x/bar"), "b");
    // Several matches of one wildcard make the destination a directory.
    let r = scratch(&copy(&["[fb]*"], "/y"), c);
    assert_eq!(listing(r.path()), ["/y/", "/y/bar", "/y/foo"]);
    let accounts = accounts_root();
    assert_eq!(
        err(&copy(&["foo"], "/").chown("nosuch"), c, accounts.path()),
        "unable to find user nosuch: no matching entries in passwd file"
    );
    assert_eq!(
        err(
            &copy(&["foo"], "/").chown("user:nosuch"),
            c,
            accounts.path()
        ),
        "unable to find group nosuch: no matching entries in group file"
    );
    // A file cannot replace a directory, nor a directory land on a file.
    let busy = tree(&["foo/", "d=file"]);
    assert!(err(&copy(&["."], "/"), c, busy.path()).contains("cannot replace to directory /foo"));
    assert!(err(&copy(&["dir"], "/d"), c, busy.path()).contains("non-directory"));
}

#[test]
fn dockerignore_exceptions_inside_directories() {
    let ctx = tree(&[
        "foo=1",
        "bar=2",
        "baz=3",
        "bay=4",
        "Dockerfile=d",
        "sub/keep=k",
        "sub/drop=d",
    ]);
    let ignore = "ba*\nDockerfile\n!bay\n.dockerignore\nsub\n!sub/keep\n";
    fs::write(ctx.path().join(".dockerignore"), ignore).unwrap();
    let r = scratch(&copy(&["."], "."), Src::Ctx(ctx.path(), ignore));
    assert_eq!(listing(r.path()), ["/bay", "/foo", "/sub/", "/sub/keep"]);
    // The directory excluded itself but holding a kept file can be named.
    let r = scratch(&copy(&["sub"], "/s/"), Src::Ctx(ctx.path(), ignore));
    assert_eq!(listing(r.path()), ["/s/", "/s/keep"]);
}

#[test]
fn heredocs() {
    let ctx = tempfile::tempdir().unwrap();
    let c = Src::Ctx(ctx.path(), "");
    let root = tempfile::tempdir().unwrap();
    let es = step(
        &copy(&[], "single")
            .workdir("/dest")
            .heredoc("EOF", "single file\n"),
        c,
        root.path(),
    );
    assert_eq!(read(root.path(), "/dest/single"), "single file\n");
    let f = entry(&es, "dest/single");
    assert_eq!((f.mode, f.uid, f.gid, f.mtime), (0o644, 0, 0, NOW));
    step(
        &copy(&[], "double/")
            .workdir("/dest")
            .heredoc("EOF", "first file\n")
            .heredoc("EOF2", "second file\n"),
        c,
        root.path(),
    );
    assert_eq!(read(root.path(), "/dest/double/EOF"), "first file\n");
    assert_eq!(read(root.path(), "/dest/double/EOF2"), "second file\n");
    let accounts = accounts_root();
    let es = step(
        &copy(&[], "/permfiles/all")
            .chmod("777")
            .chown("user:user")
            .heredoc("EOF", "x\n"),
        c,
        accounts.path(),
    );
    let f = entry(&es, "permfiles/all");
    assert_eq!((f.mode, f.uid, f.gid), (0o777, 1000, 1000));
    // Into an existing directory without a slash.
    let d = tree(&["existing/"]);
    step(&copy(&[], "/existing").heredoc("EOF", "in\n"), c, d.path());
    assert_eq!(read(d.path(), "/existing/EOF"), "in\n");
}

#[test]
fn s36_s37_no_sources_creates_the_destination_dir() {
    // How the builder's WORKDIR uses the engine: no sources, a destination with a slash.
    let ctx = tempfile::tempdir().unwrap();
    let c = Src::Ctx(ctx.path(), "");
    let r = scratch(&copy(&[], "/foo/"), c);
    assert_eq!(listing(r.path()), ["/foo/"]);
    assert_eq!(mode(r.path(), "/foo"), 0o755);
    let accounts = accounts_root();
    let es = step(&copy(&[], "/mydir/").chown("user"), c, accounts.path());
    assert_eq!(paths(&es), ["mydir"]);
    assert_eq!(
        (entry(&es, "mydir").uid, entry(&es, "mydir").gid),
        (1000, 1000)
    );
    // An existing directory is left alone: no entries.
    let es = entries(&copy(&[], "/mydir/").chown("user01"), c, accounts.path()).unwrap();
    assert!(es.is_empty(), "{:?}", paths(&es));
}

#[test]
fn hardlinks_fifos_and_mtimes_in_trees() {
    let ctx = tree(&["d/a=shared", "d/plain=p"]);
    fs::hard_link(ctx.path().join("d/a"), ctx.path().join("d/b")).unwrap();
    let st = Command::new("mkfifo")
        .arg(ctx.path().join("d/pipe"))
        .status()
        .unwrap();
    assert!(st.success());
    set_mtime(&ctx.path().join("d/plain"), 1_000_000_000);
    set_mtime(&ctx.path().join("d"), 1_000_000_001);
    let r = scratch(&copy(&["."], "/c/"), Src::Ctx(ctx.path(), ""));
    let p = r.path();
    assert_eq!(md(p, "/c/d/a").ino(), md(p, "/c/d/b").ino());
    assert_ne!(md(p, "/c/d/a").ino(), md(p, "/c/d/plain").ino());
    assert_eq!(read(p, "/c/d/b"), "shared");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(
        &md(p, "/c/d/pipe").file_type()
    ));
    assert_eq!(md(p, "/c/d/plain").mtime(), 1_000_000_000);
    assert_eq!(md(p, "/c/d").mtime(), 1_000_000_001);
    assert_eq!(md(p, "/c").mtime(), NOW);
}

#[test]
fn devices_are_copied_as_devices() {
    if !can_chown() {
        skip("devices_are_copied_as_devices", "needs root for mknod");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let dev = base.path().join("null");
    let st = Command::new("mknod")
        .arg(&dev)
        .args(["c", "1", "3"])
        .status()
        .unwrap();
    assert!(st.success());
    let root = tempfile::tempdir().unwrap();
    let es = entries(&copy(&["/"], "/dev/"), Src::Root(base.path()), root.path()).unwrap();
    assert_eq!(
        entry(&es, "dev/null").kind,
        EntryKind::CharDevice { major: 1, minor: 3 }
    );
}
