//! `context::digest` on real trees: what changes a digest and what does not, what a warm run
//! reads (counted in `DigestStats::bytes_hashed`), the racy rule and a damaged index.

use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kiln::context::{
    ContextDigester, ContextFilter, DigestError, IndexState, SelectionDigest, WalkOptions,
    diff_files, digest_paths,
};

struct Ctx {
    dir: tempfile::TempDir,
    index: tempfile::TempDir,
}

impl Ctx {
    fn new() -> Ctx {
        let dir = tempfile::tempdir().unwrap();
        for (p, body) in [
            ("Dockerfile", "FROM scratch\n"),
            ("src/main.rs", "fn main() {}\n"),
            ("src/lib.rs", "pub fn f() {}\n"),
            ("src/util/mod.rs", "// util\n"),
            ("docs/readme.md", "# readme\n"),
            ("build.log", "noise\n"),
        ] {
            let path = dir.path().join(p);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, body).unwrap();
        }
        symlink("main.rs", dir.path().join("src/link")).unwrap();
        Ctx {
            dir,
            index: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// One build's worth: open the index, digest, save.
    fn warm(&self, filter: &ContextFilter, roots: &[&str]) -> SelectionDigest {
        let mut d = ContextDigester::with_index(self.dir.path(), self.index.path()).unwrap();
        let out = d.digest(filter, roots, None).unwrap();
        d.save().unwrap();
        out
    }

    fn cold(&self, filter: &ContextFilter, roots: &[&str]) -> SelectionDigest {
        digest_paths(self.dir.path(), filter, roots, None).unwrap()
    }

    fn index_file(&self) -> PathBuf {
        let files: Vec<_> = fs::read_dir(self.index.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension() == Some(OsStr::new("idx")))
            .collect();
        assert_eq!(files.len(), 1, "{files:?}");
        files[0].clone()
    }
}

fn no_filter() -> ContextFilter {
    ContextFilter::default()
}

fn filter(exclude: &[&str]) -> ContextFilter {
    ContextFilter::new(&WalkOptions {
        include: vec![],
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
    })
    .unwrap()
}

/// Waits until the clock has moved to a new second, so that everything made so far (ctime
/// included, which cannot be set) is strictly older than an index written from now on.
fn next_second() {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    std::thread::sleep(Duration::from_nanos(
        1_000_000_000 - u64::from(now.subsec_nanos()) + 20_000_000,
    ));
}

fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let t = rustix::fs::Timestamps {
        last_access: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        },
        last_modification: rustix::fs::Timespec {
            tv_sec: sec,
            tv_nsec: nsec as _,
        },
    };
    rustix::fs::utimensat(
        rustix::fs::CWD,
        path,
        &t,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .unwrap();
}

fn mtime(path: &Path) -> (i64, i64) {
    use std::os::unix::fs::MetadataExt;
    let md = fs::symlink_metadata(path).unwrap();
    (md.mtime(), md.mtime_nsec())
}

fn names(paths: &[PathBuf]) -> Vec<String> {
    paths.iter().map(|p| p.display().to_string()).collect()
}

#[test]
fn same_tree_same_digest_and_roots_are_cleaned() {
    let c = Ctx::new();
    let a = c.cold(&no_filter(), &["src", "Dockerfile"]);
    let b = c.cold(&no_filter(), &["./src/", "/Dockerfile"]);
    assert_eq!(a, b);
    assert_eq!(
        names(&a.roots.iter().map(|r| r.path.clone()).collect::<Vec<_>>()),
        ["src", "Dockerfile"]
    );
    // The same tree elsewhere: the same roll-ups (names inside, times never).
    let other = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(c.path("src"))
        .arg(other.path())
        .status()
        .unwrap();
    assert!(status.success());
    set_mtime(&other.path().join("src/lib.rs"), 1_000_000, 0);
    let o = digest_paths(other.path(), &no_filter(), &["src"], None).unwrap();
    assert_eq!(o.roots[0].digest, a.roots[0].digest);
    // Every entry is listed, the root first.
    let listed: Vec<String> = a
        .files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    assert_eq!(
        listed,
        [
            "src",
            "src/lib.rs",
            "src/link",
            "src/main.rs",
            "src/util",
            "src/util/mod.rs",
            "Dockerfile"
        ]
    );
}

#[test]
fn warm_unchanged_reads_nothing_and_touch_reads_only_the_touched_file() {
    let c = Ctx::new();
    next_second();
    let cold = c.warm(&no_filter(), &["."]);
    assert_eq!(cold.stats.index_hits, 0);
    assert_eq!(cold.stats.files_hashed, 6);
    assert!(cold.stats.bytes_hashed > 0);

    let warm = c.warm(&no_filter(), &["."]);
    assert_eq!(warm.digest, cold.digest);
    assert_eq!(warm.files, cold.files);
    assert_eq!(warm.stats.bytes_hashed, 0, "{:?}", warm.stats);
    assert_eq!(warm.stats.files_hashed, 0);
    assert_eq!(warm.stats.index_hits, warm.stats.entries);
    // The root, src, src/util and docs: every roll-up came from the index.
    assert_eq!(warm.stats.rollups_reused, 4);
    // Nothing learnt: the index file is not written again.
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let before = ino(&c.index_file());
    c.warm(&no_filter(), &["."]);
    assert_eq!(
        ino(&c.index_file()),
        before,
        "an unchanged index is not rewritten"
    );

    // touch: new mtime (and ctime), same content — same digest; only that file is read.
    set_mtime(&c.path("src/lib.rs"), 1_234_567_890, 5);
    let touched = c.warm(&no_filter(), &["."]);
    assert_eq!(touched.digest, cold.digest);
    assert_eq!(touched.stats.files_hashed, 1);
    assert_eq!(touched.stats.bytes_hashed, "pub fn f() {}\n".len() as u64);
}

#[test]
fn changes_change_the_digest_and_are_named() {
    let c = Ctx::new();
    next_second();
    let base = c.warm(&no_filter(), &["."]);
    let check =
        |what: &str, expect_changed: &[&str], expect_added: &[&str], expect_removed: &[&str]| {
            let now = c.warm(&no_filter(), &["."]);
            assert_ne!(now.digest, base.digest, "{what}");
            let d = diff_files(&base.files, &now.files);
            assert_eq!(names(&d.changed), expect_changed, "{what}");
            assert_eq!(names(&d.added), expect_added, "{what}");
            assert_eq!(names(&d.removed), expect_removed, "{what}");
            // Without the index the same answer.
            assert_eq!(c.cold(&no_filter(), &["."]).digest, now.digest, "{what}");
        };

    // Same size, mtime put back exactly: only ctime says something happened.
    let main = c.path("src/main.rs");
    let (s, ns) = mtime(&main);
    fs::write(&main, "fn main() {1}\n").unwrap();
    set_mtime(&main, s, ns);
    check("content", &["src/main.rs"], &[], &[]);
    fs::write(&main, "fn main() {}\n").unwrap();
    assert_eq!(c.warm(&no_filter(), &["."]).digest, base.digest);

    fs::set_permissions(c.path("Dockerfile"), fs::Permissions::from_mode(0o755)).unwrap();
    check("mode", &["Dockerfile"], &[], &[]);
    fs::set_permissions(c.path("Dockerfile"), fs::Permissions::from_mode(0o644)).unwrap();

    fs::remove_file(c.path("src/link")).unwrap();
    symlink("lib.rs", c.path("src/link")).unwrap();
    check("symlink target", &["src/link"], &[], &[]);
    fs::remove_file(c.path("src/link")).unwrap();
    symlink("main.rs", c.path("src/link")).unwrap();

    rustix::fs::lsetxattr(
        c.path("src/lib.rs"),
        "user.kiln.test",
        b"1",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    check("user xattr", &["src/lib.rs"], &[], &[]);
    rustix::fs::lremovexattr(c.path("src/lib.rs"), "user.kiln.test").unwrap();

    fs::rename(c.path("src/util/mod.rs"), c.path("src/util/lib.rs")).unwrap();
    check("rename", &[], &["src/util/lib.rs"], &["src/util/mod.rs"]);
    fs::rename(c.path("src/util/lib.rs"), c.path("src/util/mod.rs")).unwrap();

    assert_eq!(c.warm(&no_filter(), &["."]).digest, base.digest);
}

#[test]
fn owner_override_is_part_of_the_digest() {
    let c = Ctx::new();
    let filter = no_filter();
    let mut d = ContextDigester::with_index(c.dir.path(), c.index.path()).unwrap();
    let plain = d.digest(&filter, &["src"], None).unwrap();
    let chowned = d.digest(&filter, &["src"], Some((1000, 1000))).unwrap();
    let chowned2 = d.digest(&filter, &["src"], Some((1000, 1001))).unwrap();
    assert_ne!(plain.digest, chowned.digest);
    assert_ne!(chowned.digest, chowned2.digest);
    d.save().unwrap();
    // A cached roll-up made for one owner is not used for another.
    next_second();
    let mut d = ContextDigester::with_index(c.dir.path(), c.index.path()).unwrap();
    assert_eq!(
        d.digest(&filter, &["src"], None).unwrap().digest,
        plain.digest
    );
}

#[test]
fn excluded_paths_do_not_exist() {
    let c = Ctx::new();
    let f = filter(&["*.log", "docs"]);
    next_second();
    let base = c.warm(&f, &["."]);
    let unfiltered = c.cold(&no_filter(), &["."]);
    assert!(
        base.files
            .iter()
            .all(|e| !e.path.starts_with("docs") && e.path != Path::new("build.log"))
    );
    fs::write(c.path("build.log"), "other noise, longer\n").unwrap();
    fs::write(c.path("docs/new.md"), "x").unwrap();
    let again = c.warm(&f, &["."]);
    assert_eq!(again.digest, base.digest);
    // Without the filter the same change shows.
    assert_ne!(c.cold(&no_filter(), &["."]).digest, unfiltered.digest);
    // Selecting an excluded path is selecting nothing.
    let mut d = ContextDigester::new(c.dir.path()).unwrap();
    assert!(matches!(
        d.digest(&f, &["build.log"], None),
        Err(DigestError::NotFound { .. })
    ));
    assert!(matches!(
        d.digest(&f, &["docs/readme.md"], None),
        Err(DigestError::NotFound { .. })
    ));
    // An exception inside an excluded directory brings back just that file.
    let g = filter(&["docs", "!docs/readme.md"]);
    let kept = d.digest(&g, &["docs"], None).unwrap();
    let listed: Vec<String> = kept
        .files
        .iter()
        .map(|f| f.path.display().to_string())
        .collect();
    assert_eq!(listed, ["docs", "docs/readme.md"]);
}

#[test]
fn racy_entries_are_hashed_again() {
    let c = Ctx::new();
    // A file stamped after the index will be written: "not strictly older" than the index.
    let future = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3600;
    set_mtime(&c.path("src/lib.rs"), future, 0);
    next_second();
    let cold = c.warm(&no_filter(), &["."]);
    for _ in 0..2 {
        let warm = c.warm(&no_filter(), &["."]);
        assert_eq!(warm.digest, cold.digest);
        assert_eq!(warm.stats.files_hashed, 1, "{:?}", warm.stats);
        assert_eq!(warm.stats.bytes_hashed, "pub fn f() {}\n".len() as u64);
        // Dropped on load, so not counted as a racy hit: read again either way.
        assert_eq!(warm.stats.index_hits, warm.stats.entries - 1);
    }
    // Once its time is in the past (and the index newer), it is trusted.
    set_mtime(&c.path("src/lib.rs"), 1_000_000_000, 0);
    next_second();
    c.warm(&no_filter(), &["."]);
    assert_eq!(c.warm(&no_filter(), &["."]).stats.bytes_hashed, 0);
}

#[test]
fn a_damaged_index_is_ignored_and_rebuilt() {
    let c = Ctx::new();
    next_second();
    let base = c.warm(&no_filter(), &["."]);
    let idx = c.index_file();
    let mut bytes = fs::read(&idx).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    fs::write(&idx, &bytes).unwrap();
    let mut d = ContextDigester::with_index(c.dir.path(), c.index.path()).unwrap();
    assert_eq!(d.index_state(), IndexState::Corrupt);
    let again = d.digest(&no_filter(), &["."], None).unwrap();
    assert_eq!(again.digest, base.digest);
    assert_eq!(again.stats.bytes_hashed, base.stats.bytes_hashed);
    d.save().unwrap();
    // Truncated (a torn write) is no better.
    let bytes = fs::read(&idx).unwrap();
    fs::write(&idx, &bytes[..bytes.len() - 7]).unwrap();
    assert_eq!(
        ContextDigester::with_index(c.dir.path(), c.index.path())
            .unwrap()
            .index_state(),
        IndexState::Corrupt
    );
    fs::write(&idx, b"").unwrap();
    assert_eq!(
        ContextDigester::with_index(c.dir.path(), c.index.path())
            .unwrap()
            .index_state(),
        IndexState::Corrupt
    );
    next_second();
    c.warm(&no_filter(), &["."]);
    let d = ContextDigester::with_index(c.dir.path(), c.index.path()).unwrap();
    assert_eq!(d.index_state(), IndexState::Loaded);
}

#[test]
fn two_writers_never_tear_the_index() {
    let c = Ctx::new();
    next_second();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for _ in 0..20 {
                    c.warm(&no_filter(), &["."]);
                }
            });
        }
    });
    let d = ContextDigester::with_index(c.dir.path(), c.index.path()).unwrap();
    assert_eq!(d.index_state(), IndexState::Loaded);
    // No temporary file left behind.
    assert_eq!(fs::read_dir(c.index.path()).unwrap().count(), 1);
}

#[test]
fn names_need_not_be_utf8() {
    let c = Ctx::new();
    let name = OsStr::from_bytes(b"src/caf\xe9.rs");
    fs::write(c.dir.path().join(name), "x").unwrap();
    next_second();
    let base = c.warm(&no_filter(), &["src"]);
    assert!(base.files.iter().any(|f| f.path.as_os_str() == name));
    fs::write(c.dir.path().join(name), "y").unwrap();
    let now = c.warm(&no_filter(), &["src"]);
    let d = diff_files(&base.files, &now.files);
    assert_eq!(d.changed, [PathBuf::from(name)]);
    assert_eq!(d.summary(2), "1 file changed (src/caf\u{fffd}.rs)");
    // Selected by its own (non-UTF-8) name.
    let one = c.cold(&no_filter(), &[]);
    assert_eq!(one.files.len(), 0);
    let mut dg = ContextDigester::new(c.dir.path()).unwrap();
    let sel = dg.digest(&no_filter(), &[Path::new(name)], None).unwrap();
    assert_eq!(sel.files.len(), 1);
}

#[test]
fn summary_names_a_few_and_counts_the_rest() {
    let c = Ctx::new();
    let base = c.cold(&no_filter(), &["src"]);
    fs::write(c.path("src/main.rs"), "1").unwrap();
    fs::write(c.path("src/lib.rs"), "2").unwrap();
    fs::write(c.path("src/util/mod.rs"), "3").unwrap();
    let now = c.cold(&no_filter(), &["src"]);
    let d = diff_files(&base.files, &now.files);
    assert_eq!(
        d.summary(2),
        "3 files changed (src/lib.rs, src/main.rs, +1)"
    );
}
