//! `kiln build` on bad and hostile input: every failure names `Dockerfile…:LINE` and the
//! instruction, exits non-zero, leaves the store readable (skopeo inspects a tag built before)
//! and writes nothing outside the store and the output. Hostile contexts and archives either
//! fail or stay contained; the unique host paths they aim at never appear.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::build::{
    Built, blob_contents, build, build_as, build_error, busybox_rootfs, have, import_busybox,
    kiln_as, make_tree, skopeo_inspect, try_build,
};
use common::host::{kiln_mounts, procs_with};

use common::unique;

/// A directory holding the context, the store and files "outside" both.
struct Arena {
    dir: tempfile::TempDir,
    /// The secret a hostile input must not leak into the store.
    marker: String,
    /// `app:before`, built before the bad build.
    before: String,
}

impl Arena {
    /// A busybox store in `store/`, `app:before` built in it, a context in `ctx/` and a
    /// secret in `outside/secret` and `x`. `None` (SKIP printed) without busybox.
    fn new(test: &str) -> Option<Arena> {
        let tar = busybox_rootfs(test)?;
        let dir = tempfile::tempdir().unwrap();
        let marker = unique("secret-marker");
        make_tree(
            dir.path(),
            &[
                "ctx/ok.txt=ok\n",
                "ctx/f=file\n",
                &format!("outside/secret={marker}\n"),
                &format!("x={marker}\n"),
            ],
        );
        import_busybox(&tar, &dir.path().join("store"));
        let mut a = Arena {
            dir,
            marker,
            before: String::new(),
        };
        let b = build(
            &a.store(),
            &a.ctx(),
            "FROM busybox\nCOPY ok.txt /ok.txt\n",
            &["-t", "app:before"],
        );
        a.before = b.metadata["containerimage.digest"]
            .as_str()
            .unwrap()
            .to_string();
        Some(a)
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn store(&self) -> PathBuf {
        self.path().join("store")
    }
    fn ctx(&self) -> PathBuf {
        self.path().join("ctx")
    }

    /// Everything in the arena except the store: type, size, content, mode and (for
    /// non-directories) mtime.
    fn snapshot(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        snap(self.path(), self.path(), &self.store(), &mut out);
        out
    }

    /// The store still reads: skopeo (or `kiln inspect`) sees `app:before` as built, and the
    /// index still lists it.
    fn assert_store_ok(&self) {
        static SKOPEO: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if *SKOPEO.get_or_init(|| have("store checks with skopeo (kiln inspect only)", "skopeo")) {
            let v = skopeo_inspect(
                &format!(
                    "oci:{}:docker.io/library/app:before",
                    self.store().display()
                ),
                false,
            )
            .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(v["Digest"].as_str().unwrap(), self.before);
        }
        let out = common::kiln()
            .arg("--root")
            .arg(self.store())
            .args(["inspect", "app:before"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// No blob in the store contains the secret marker (or `extra`).
    fn assert_no_leak(&self, extra: &[&[u8]]) {
        for (name, data) in blob_contents(&self.store()) {
            assert!(
                !contains(&data, self.marker.as_bytes()),
                "blob {name} contains the host secret"
            );
            for e in extra {
                assert!(!contains(&data, e), "blob {name} contains host data");
            }
        }
    }

    /// The bad build failed as it should and left everything else alone.
    fn assert_failed(
        &self,
        b: &Built,
        before: &BTreeMap<PathBuf, String>,
        line: usize,
        inst: &str,
    ) {
        let err = String::from_utf8_lossy(&b.output.stderr).into_owned();
        assert!(!b.output.status.success(), "expected failure:\n{err}");
        assert_error_names(&err, line, inst);
        assert!(
            std::fs::read_dir(b.out.path()).unwrap().next().is_none(),
            "a failed build wrote to its output: {:?}",
            b.tree()
        );
        assert_eq!(
            &self.snapshot(),
            before,
            "the build wrote outside the store"
        );
        self.assert_store_ok();
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// stderr has an `error:` line naming `Dockerfile.kiln-test:LINE` and the instruction.
fn assert_error_names(err: &str, line: usize, inst: &str) {
    let loc = format!("Dockerfile.kiln-test:{line}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "want one error line:\n{err}");
    assert!(
        lines[0].contains(&loc) && lines[0].contains(inst),
        "the error names neither {loc} nor {inst:?}:\n{err}"
    );
}

fn snap(root: &Path, dir: &Path, skip: &Path, out: &mut BTreeMap<PathBuf, String>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p == skip {
            continue;
        }
        let md = p.symlink_metadata().unwrap();
        let rel = p.strip_prefix(root).unwrap().to_path_buf();
        let desc = if md.is_dir() {
            snap(root, &p, skip, out);
            format!("dir {:o}", md.mode())
        } else if md.file_type().is_symlink() {
            format!("link {:?}", std::fs::read_link(&p).unwrap())
        } else {
            format!(
                "file {:o} {} {} {} {:?}",
                md.mode(),
                md.len(),
                md.mtime(),
                md.nlink(),
                std::fs::read(&p).unwrap()
            )
        };
        out.insert(rel, desc);
    }
}

/// Paths under `dir` (relative) whose names contain `needle`.
fn names_containing(dir: &Path, needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if e.file_name().to_string_lossy().contains(needle) {
                out.push(rel);
            }
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

// ---------------------------------------------------------------------------------------------
// plain bad input

#[test]
fn missing_source_names_the_line() {
    let Some(a) = Arena::new("missing_source_names_the_line") else {
        return;
    };
    let before = a.snapshot();
    let b = try_build(
        &a.store(),
        &a.ctx(),
        "FROM busybox\nCOPY ok.txt /ok\nCOPY nosuchfile /x\n",
        &["-t", "app:after"],
    );
    a.assert_failed(&b, &before, 3, "COPY nosuchfile /x");
    let err = String::from_utf8_lossy(&b.output.stderr);
    assert!(err.contains("nosuchfile"), "{err}");
    // The failed build named nothing.
    let out = common::kiln()
        .arg("--root")
        .arg(a.store())
        .args(["inspect", "app:after"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[test]
fn copy_from_the_parent_directory_is_refused() {
    let Some(a) = Arena::new("copy_from_the_parent_directory_is_refused") else {
        return;
    };
    // `../x` exists on the host (beside the context) and holds the secret.
    assert!(a.ctx().join("../x").is_file());
    let before = a.snapshot();
    let b = try_build(&a.store(), &a.ctx(), "FROM busybox\nCOPY ../x /\n", &[]);
    a.assert_failed(&b, &before, 2, "COPY ../x /");
    a.assert_no_leak(&[]);
}

#[test]
fn context_symlinks_to_host_files_do_not_leak() {
    let Some(a) = Arena::new("context_symlinks_to_host_files_do_not_leak") else {
        return;
    };
    let secret = a.path().join("outside/secret");
    std::os::unix::fs::symlink(&secret, a.ctx().join("leak-abs")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", a.ctx().join("leak-rel")).unwrap();
    std::os::unix::fs::symlink("../outside", a.ctx().join("leak-dir")).unwrap();
    let before = a.snapshot();
    for (df, inst) in [
        ("FROM busybox\nCOPY leak-abs /leak\n", "COPY leak-abs /leak"),
        ("FROM busybox\nCOPY leak-rel /leak\n", "COPY leak-rel /leak"),
        (
            "FROM busybox\nCOPY leak-dir/secret /leak\n",
            "COPY leak-dir/secret /leak",
        ),
        ("FROM busybox\nADD leak-abs /leak\n", "ADD leak-abs /leak"),
        ("FROM busybox\nCOPY . /all\n", "COPY . /all"),
        ("FROM busybox\nCOPY leak-* /all/\n", "COPY leak-* /all/"),
    ] {
        let b = try_build(&a.store(), &a.ctx(), df, &[]);
        eprintln!(
            "{inst}: {}",
            if b.output.status.success() {
                "built".to_string()
            } else {
                String::from_utf8_lossy(&b.output.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
                    .to_string()
            }
        );
        if b.output.status.success() {
            // Symlinks may travel as symlinks; their targets' content may not.
            for p in b.tree() {
                let path = b.path(&p);
                if path.symlink_metadata().unwrap().is_file() {
                    let data = std::fs::read(&path).unwrap();
                    assert!(
                        !contains(&data, a.marker.as_bytes()),
                        "{inst}: /{p} holds the host file's content"
                    );
                }
            }
            assert_eq!(a.snapshot(), before, "{inst} wrote outside the store");
            a.assert_store_ok();
        } else {
            a.assert_failed(&b, &before, 2, inst);
        }
        a.assert_no_leak(&[]);
    }
}

#[test]
fn copy_from_an_unknown_image_names_the_line() {
    let Some(a) = Arena::new("copy_from_an_unknown_image_names_the_line") else {
        return;
    };
    let before = a.snapshot();
    let b = try_build(
        &a.store(),
        &a.ctx(),
        "FROM busybox\nCOPY --from=nosuchimage:1 /a /b\n",
        &[],
    );
    a.assert_failed(&b, &before, 2, "COPY --from=nosuchimage:1 /a /b");
    assert!(String::from_utf8_lossy(&b.output.stderr).contains("nosuchimage"));
}

#[test]
fn chown_to_an_unknown_user_names_the_line() {
    let Some(a) = Arena::new("chown_to_an_unknown_user_names_the_line") else {
        return;
    };
    let before = a.snapshot();
    let b = try_build(
        &a.store(),
        &a.ctx(),
        "FROM busybox\nCOPY --chown=nosuchuser f /\n",
        &[],
    );
    a.assert_failed(&b, &before, 2, "COPY --chown=nosuchuser f /");
    assert!(String::from_utf8_lossy(&b.output.stderr).contains("nosuchuser"));
}

#[test]
fn a_failing_run_names_the_line_and_fails_cleanly() {
    let Some(a) = Arena::new("a_failing_run_names_the_line_and_fails_cleanly") else {
        return;
    };
    let before = a.snapshot();
    let b = try_build(
        &a.store(),
        &a.ctx(),
        "FROM busybox\nCOPY ok.txt /ok\nRUN echo hello > /hello && exit 3\nCOPY f /f\n",
        &["-t", "app:after"],
    );
    a.assert_failed(&b, &before, 3, "RUN echo hello > /hello && exit 3");
    let err = String::from_utf8_lossy(&b.output.stderr);
    assert!(err.contains("exit code: 3"), "{err}");
}

#[test]
fn a_run_bind_mount_from_outside_the_context_is_refused() {
    let Some(a) = Arena::new("a_run_bind_mount_from_outside_the_context_is_refused") else {
        return;
    };
    // `../x` exists on the host (beside the context) and holds the secret.
    assert!(a.ctx().join("../x").is_file());
    let before = a.snapshot();
    let b = try_build(
        &a.store(),
        &a.ctx(),
        "FROM busybox\nCOPY ok.txt /ok\nRUN --mount=type=bind,source=../x,target=/x cat /x > /leak\n",
        &[],
    );
    a.assert_failed(
        &b,
        &before,
        3,
        "RUN --mount=type=bind,source=../x,target=/x cat /x > /leak",
    );
    a.assert_no_leak(&[]);

    // Through a symlink in the context: refused, or resolved inside the context.
    std::os::unix::fs::symlink("../outside", a.ctx().join("out-link")).unwrap();
    let before = a.snapshot();
    let inst = "RUN --mount=type=bind,source=out-link,target=/x cat /x/secret > /leak";
    let b = try_build(
        &a.store(),
        &a.ctx(),
        &format!("FROM busybox\nCOPY ok.txt /ok\n{inst}\n"),
        &[],
    );
    if b.output.status.success() {
        let leak = std::fs::read(b.path("leak")).unwrap_or_default();
        assert!(
            !contains(&leak, a.marker.as_bytes()),
            "the RUN read the host secret through a bind mount"
        );
        assert_eq!(a.snapshot(), before, "the build wrote outside the store");
    } else {
        a.assert_failed(&b, &before, 3, inst);
    }
    a.assert_no_leak(&[]);
}

#[test]
fn a_bad_run_network_names_the_line() {
    let Some(a) = Arena::new("a_bad_run_network_names_the_line") else {
        return;
    };
    let before = a.snapshot();
    let b = try_build(
        &a.store(),
        &a.ctx(),
        "FROM busybox\nCOPY ok.txt /ok\nRUN --network=bogus true\n",
        &[],
    );
    // A parse error: file:line and the bad value (the instruction text is not required).
    a.assert_failed(&b, &before, 3, "bogus");
    assert!(String::from_utf8_lossy(&b.output.stderr).contains("network"));
}

#[test]
fn an_unknown_instruction_names_the_line() {
    let Some(a) = Arena::new("an_unknown_instruction_names_the_line") else {
        return;
    };
    let before = a.snapshot();
    let b = try_build(
        &a.store(),
        &a.ctx(),
        "FROM busybox\nCOPY ok.txt /ok\nFROBNICATE the widgets\n",
        &["--progress=plain"],
    );
    a.assert_failed(&b, &before, 3, "FROBNICATE");
    let err = String::from_utf8_lossy(&b.output.stderr);
    assert!(err.to_lowercase().contains("unknown instruction"), "{err}");
}

#[test]
fn a_bad_output_spec_is_rejected_before_building() {
    let Some(a) = Arena::new("a_bad_output_spec_is_rejected_before_building") else {
        return;
    };
    let blobs = || {
        let mut v: Vec<_> = std::fs::read_dir(a.store().join("blobs/sha256"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    let index = || std::fs::read(a.store().join("index.json")).unwrap();
    let (blobs_before, index_before) = (blobs(), index());
    let before = a.snapshot();
    let dest = a.path().join("out-dest");
    let d = dest.display();
    for spec in [
        format!("type=bogus,dest={d}"),
        "type=oci".to_string(),
        format!("type=oci,dest={d},compression=lz4"),
        format!("type=oci,dest={d},tar=maybe"),
        format!("type=oci,dest={d},compression-level=high"),
        format!("type=oci,dest={d},colour=blue"),
        "type=docker".to_string(),
        "type=local".to_string(),
        format!("type=docker,dest{d}"),
    ] {
        let b = try_build(
            &a.store(),
            &a.ctx(),
            "FROM busybox\nCOPY ok.txt /new.txt\n",
            &["--progress=plain", "-t", "app:new", "-o", &spec],
        );
        let err = String::from_utf8_lossy(&b.output.stderr).into_owned();
        assert!(!b.output.status.success(), "{spec:?} was accepted:\n{err}");
        assert!(err.contains("--output"), "{spec:?}: {err}");
        assert!(
            !err.lines().any(|l| l.starts_with('#')),
            "{spec:?}: the build started:\n{err}"
        );
        assert!(
            std::fs::read_dir(b.out.path()).unwrap().next().is_none(),
            "{spec:?}"
        );
        assert!(!dest.exists(), "{spec:?} wrote {d}");
        assert_eq!(blobs(), blobs_before, "{spec:?} wrote blobs");
        assert_eq!(index(), index_before, "{spec:?} changed the index");
        assert_eq!(a.snapshot(), before, "{spec:?}");
    }
    a.assert_store_ok();
}

// ---------------------------------------------------------------------------------------------
// hostile archives

/// A raw ustar entry with any name and link name bytes (the tar crate refuses `..`).
fn raw(out: &mut Vec<u8>, name: &str, kind: u8, link: &str, data: &[u8]) {
    assert!(name.len() <= 100 && link.len() <= 100, "{name} / {link}");
    let mut h = tar::Header::new_ustar();
    h.set_mode(if kind == b'5' { 0o755 } else { 0o644 });
    h.set_size(data.len() as u64);
    h.set_mtime(1_600_000_000);
    h.set_uid(0);
    h.set_gid(0);
    h.set_entry_type(tar::EntryType::new(kind));
    {
        let b = h.as_mut_bytes();
        b[..name.len()].copy_from_slice(name.as_bytes());
        b[157..157 + link.len()].copy_from_slice(link.as_bytes());
    }
    h.set_cksum();
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
}

fn end(mut v: Vec<u8>) -> Vec<u8> {
    v.extend_from_slice(&[0; 1024]);
    v
}

const UP: &str = "../../../../../../../../../../../../";

/// Removes the host paths a hostile archive aimed at, whatever happens to the test.
struct HostPaths(Vec<PathBuf>);

impl Drop for HostPaths {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_dir_all(p);
            let _ = std::fs::remove_file(p);
        }
    }
}

/// ADDs `tar` to `/dest/` (line 2) and copies the whole stage into the result (so content read
/// through anything the archive made is in the store). Either the build fails naming line 2,
/// or every entry whose name has `tag` in it is under `/dest/`. Either way the store still
/// reads, nothing outside it changed, no blob holds the host secret or `/etc/passwd`, and no
/// path in `must_not_exist` exists.
fn add_hostile(a: &Arena, tag: &str, tar: Vec<u8>, must_not_exist: &[PathBuf]) {
    std::fs::write(a.ctx().join("hostile.tar"), tar).unwrap();
    let passwd = std::fs::read("/etc/passwd").ok();
    let passwd_md = std::fs::metadata("/etc/passwd")
        .ok()
        .map(|m| (m.nlink(), m.mtime()));
    let before = a.snapshot();
    let b = try_build(
        &a.store(),
        &a.ctx(),
        "FROM busybox\nADD hostile.tar /dest/\nFROM scratch\nCOPY --from=0 / /\n",
        &[],
    );
    let err = String::from_utf8_lossy(&b.output.stderr).into_owned();
    if b.output.status.success() {
        let placed = names_containing(b.out.path(), tag);
        eprintln!("{tag}: built (contained): {placed:?}");
        assert!(!placed.is_empty(), "{tag}: the archive left nothing");
        for p in &placed {
            assert!(
                p.starts_with("dest/"),
                "{tag}: /{p} is outside the destination"
            );
        }
        assert_eq!(
            a.snapshot(),
            before,
            "{tag}: the build wrote outside the store"
        );
        a.assert_store_ok();
    } else {
        eprintln!("{tag}: refused: {}", err.lines().last().unwrap_or(""));
        a.assert_failed(&b, &before, 2, "ADD hostile.tar /dest/");
    }
    for p in must_not_exist {
        assert!(
            p.symlink_metadata().is_err(),
            "{tag}: {} exists",
            p.display()
        );
    }
    // Snapshots in the store are unpacked images: there the archive's entries belong under
    // `snapshots/<id>/dest/`, like in the image. Nowhere else.
    let stray: Vec<String> = names_containing(a.path(), tag)
        .into_iter()
        .filter(|p| {
            let mut parts = p.splitn(4, '/');
            let in_snapshot_dest = parts.next() == Some("store")
                && parts.next() == Some("snapshots")
                && parts.next().is_some()
                && parts.next().is_some_and(|rest| rest.starts_with("dest/"));
            !in_snapshot_dest
        })
        .collect();
    assert!(
        stray.is_empty(),
        "{tag}: written beside the store or outside a snapshot's /dest: {stray:?}"
    );
    let host_passwd = passwd.as_deref().filter(|p| p.len() > 16);
    a.assert_no_leak(host_passwd.as_slice());
    assert_eq!(
        std::fs::read("/etc/passwd").ok(),
        passwd,
        "/etc/passwd changed"
    );
    assert_eq!(
        std::fs::metadata("/etc/passwd")
            .ok()
            .map(|m| (m.nlink(), m.mtime())),
        passwd_md,
        "/etc/passwd was linked or touched"
    );
    std::fs::remove_file(a.ctx().join("hostile.tar")).unwrap();
}

#[test]
fn add_of_dot_dot_entries_stays_under_the_destination() {
    let Some(a) = Arena::new("add_of_dot_dot_entries_stays_under_the_destination") else {
        return;
    };
    let tag = unique("dd");
    let host_dir = std::env::temp_dir().join(&tag);
    let _cleanup = HostPaths(vec![host_dir.clone()]);
    let host = host_dir.strip_prefix("/").unwrap().display().to_string();
    let mut t = Vec::new();
    raw(
        &mut t,
        &format!("../../escape-{tag}"),
        b'0',
        "",
        b"hostile\n",
    );
    raw(
        &mut t,
        &format!("sub/../../../up-{tag}"),
        b'0',
        "",
        b"hostile\n",
    );
    raw(&mut t, &format!("{UP}{host}/deep"), b'0', "", b"hostile\n");
    add_hostile(&a, &tag, end(t), &[host_dir]);
}

#[test]
fn add_of_absolute_entries_stays_under_the_destination() {
    let Some(a) = Arena::new("add_of_absolute_entries_stays_under_the_destination") else {
        return;
    };
    let tag = unique("abs");
    let host_dir = std::env::temp_dir().join(&tag);
    let root_file = PathBuf::from(format!("/abs-{tag}"));
    let _cleanup = HostPaths(vec![host_dir.clone(), root_file.clone()]);
    let mut t = Vec::new();
    raw(&mut t, &format!("/abs-{tag}"), b'0', "", b"hostile\n");
    raw(
        &mut t,
        &format!("{}/file", host_dir.display()),
        b'0',
        "",
        b"hostile\n",
    );
    add_hostile(&a, &tag, end(t), &[host_dir, root_file]);
}

#[test]
fn add_through_a_symlink_out_of_the_destination_stays_contained() {
    let Some(a) = Arena::new("add_through_a_symlink_out_of_the_destination_stays_contained") else {
        return;
    };
    let tag = unique("sym");
    // One target exists on the host (an escape would succeed), two do not.
    let existing = std::env::temp_dir().join(format!("{tag}-there"));
    std::fs::create_dir(&existing).unwrap();
    let absent = std::env::temp_dir().join(format!("{tag}-absent"));
    let relative = std::env::temp_dir().join(format!("{tag}-rel"));
    let _cleanup = HostPaths(vec![existing.clone(), absent.clone(), relative.clone()]);
    let rel_target = format!("{UP}{}", relative.strip_prefix("/").unwrap().display());
    let mut t = Vec::new();
    raw(
        &mut t,
        &format!("evil1-{tag}"),
        b'2',
        existing.to_str().unwrap(),
        b"",
    );
    raw(
        &mut t,
        &format!("evil1-{tag}/x-{tag}"),
        b'0',
        "",
        b"hostile\n",
    );
    raw(
        &mut t,
        &format!("evil2-{tag}"),
        b'2',
        absent.to_str().unwrap(),
        b"",
    );
    raw(
        &mut t,
        &format!("evil2-{tag}/x-{tag}"),
        b'0',
        "",
        b"hostile\n",
    );
    raw(&mut t, &format!("evil3-{tag}"), b'2', &rel_target, b"");
    raw(
        &mut t,
        &format!("evil3-{tag}/x-{tag}"),
        b'0',
        "",
        b"hostile\n",
    );
    add_hostile(
        &a,
        &tag,
        end(t),
        &[existing.join(format!("x-{tag}")), absent, relative],
    );
    assert!(
        std::fs::read_dir(&existing).unwrap().next().is_none(),
        "something was written into {}",
        existing.display()
    );
}

#[test]
fn add_of_hardlinks_out_of_the_destination_stays_contained() {
    let Some(a) = Arena::new("add_of_hardlinks_out_of_the_destination_stays_contained") else {
        return;
    };
    let tag = unique("hl");
    let secret = a.path().join("outside/secret");
    let secret_rel = format!("{UP}{}", secret.strip_prefix("/").unwrap().display());
    // One archive per link, so a refusal of one does not hide the others.
    for (name, target) in [
        ("pw", "/etc/passwd"),
        ("out", "../outside"),
        ("deep", secret_rel.as_str()),
        ("abs", secret.to_str().unwrap()),
    ] {
        let mut t = Vec::new();
        raw(&mut t, &format!("ok-{tag}"), b'0', "", b"fine\n");
        raw(&mut t, &format!("{name}-{tag}"), b'1', target, b"");
        add_hostile(&a, &tag, end(t), &[]);
    }
    let md = std::fs::metadata(&secret).unwrap();
    assert_eq!(md.nlink(), 1, "the host secret was hardlinked");
}

// ---------------------------------------------------------------------------------------------
// a killed build

/// Fills `path` with `len` pseudo-random (incompressible) bytes.
fn random_file(path: &Path, len: usize, seed: u64) {
    let mut x = seed | 1;
    let mut buf = Vec::with_capacity(len);
    while buf.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.extend_from_slice(&x.to_le_bytes());
    }
    buf.truncate(len);
    std::fs::write(path, buf).unwrap();
}

#[test]
fn a_killed_build_leaves_a_readable_store_and_prune_cleans_up() {
    const T: &str = "a_killed_build_leaves_a_readable_store_and_prune_cleans_up";
    let Some(a) = Arena::new(T) else {
        return;
    };
    let big = a.path().join("big");
    std::fs::create_dir(&big).unwrap();
    for i in 0..4 {
        random_file(&big.join(format!("blob{i}")), 12 << 20, i + 1);
    }
    for i in 0..300 {
        std::fs::write(big.join(format!("small-{i}")), format!("{i}\n")).unwrap();
    }
    std::fs::write(big.join("Dockerfile"), "FROM busybox\nCOPY . /big\n").unwrap();
    let tmp = a.store().join("kiln/tmp");
    let before = a.snapshot();
    let mut killed_at = Instant::now();
    for delay in [100, 1500] {
        let mut child = Command::new(assert_cmd::cargo::cargo_bin("kiln"))
            .arg("--root")
            .arg(a.store())
            .args(["build", "-t", "big:1", "--progress=quiet"])
            .arg(&big)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().unwrap_or(()); // SIGKILL
        child.wait().unwrap();
        killed_at = Instant::now();
        if finished {
            // A much faster machine: the 100 ms kill is what the test is about.
            assert!(delay > 100, "the build finished within {delay} ms");
            eprintln!("note: the build finished within {delay} ms; removing its tag");
            common::kiln()
                .arg("--root")
                .arg(a.store())
                .args(["rmi", "big:1"])
                .assert()
                .success();
        }
        eprintln!(
            "after SIGKILL at {delay} ms, kiln/tmp holds {:?}",
            std::fs::read_dir(&tmp)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect::<Vec<_>>()
        );
        a.assert_store_ok();
        assert_eq!(
            a.snapshot(),
            before,
            "the killed build wrote outside the store"
        );
    }
    // The killed build named nothing and the store still builds.
    let out = common::kiln()
        .arg("--root")
        .arg(a.store())
        .args(["inspect", "big:1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a killed build left a tag");
    build(
        &a.store(),
        &a.ctx(),
        "FROM busybox\nCOPY f /f\n",
        &["-t", "app:later"],
    );

    // Prune leaves young temp files alone for a few seconds: wait them out, then prune.
    let grace = Duration::from_secs(6);
    if let Some(rest) = grace.checked_sub(killed_at.elapsed()) {
        std::thread::sleep(rest);
    }
    let out = common::kiln()
        .arg("--root")
        .arg(a.store())
        .arg("prune")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        left.is_empty(),
        "kiln prune left temporary files from the killed builds in {}: {left:?}",
        tmp.display()
    );
    a.assert_store_ok();
    if have(T, "skopeo") {
        let src = format!("oci:{}:docker.io/library/app:before", a.store().display());
        let dst = tempfile::tempdir().unwrap();
        let st = Command::new("skopeo")
            .arg("copy")
            .arg(&src)
            .arg(format!("oci:{}:x", dst.path().display()))
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
}

/// Starts `kiln build` of a RUN that writes 16 MiB and then sleeps, with `TMPDIR` at
/// `host_tmp`, and SIGKILLs kiln once the RUN is running. Checks that the RUN's processes and
/// kiln's mounts die with it, and returns when.
fn kill_during_a_long_run(mut kiln: Command, store: &Path, dir: &Path, host_tmp: &Path) -> Instant {
    let marker = unique("long-run");
    let sleep = format!("sleep {}", 3000 + std::process::id() % 7919);
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            "FROM busybox\nRUN echo first > /first\n\
             RUN head -c 16777216 /dev/urandom > /big && echo written && {sleep}; : {marker}\n"
        ),
    )
    .unwrap();
    let mounts_before = kiln_mounts(&[]);
    let mut child = kiln
        .arg("--root")
        .arg(store)
        .args(["build", "-t", "long:1", "--progress=plain"])
        .arg(dir)
        .env("TMPDIR", host_tmp)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the RUN sleeps (its 16 MiB written), then SIGKILL kiln.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !procs_with(&sleep).iter().any(|p| {
        p.split_once(": ")
            .is_some_and(|(_, cmd)| cmd.starts_with("sleep "))
    }) {
        if let Some(st) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("the build ended ({st}) before its RUN was seen running:\n{err}");
        }
        assert!(Instant::now() < deadline, "the RUN never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let killed_at = Instant::now();

    // The RUN and its children die with kiln.
    let deadline = Instant::now() + Duration::from_secs(3);
    let left = loop {
        let left: Vec<_> = procs_with(&marker)
            .into_iter()
            .chain(procs_with(&sleep))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(left.is_empty(), "processes left after SIGKILL: {left:?}");
    let new_mounts: Vec<_> = kiln_mounts(&[])
        .difference(&mounts_before)
        .cloned()
        .collect();
    assert!(new_mounts.is_empty(), "mounts left: {new_mounts:?}");
    killed_at
}

/// What killed builds leave in the store: entries of `kiln/tmp/` and the RUN scratch
/// directories (`snapshots/.scratch-*`), with the bytes they hold.
fn leftovers(store: &Path) -> (Vec<String>, u64) {
    let mut names = Vec::new();
    for (dir, pick) in [("kiln/tmp", ""), ("snapshots", ".scratch-")] {
        for e in std::fs::read_dir(store.join(dir)).unwrap() {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            if name.starts_with(pick) {
                names.push(format!("{dir}/{name}"));
            }
        }
    }
    let du = Command::new("du")
        .arg("-sb")
        .args(names.iter().map(|n| store.join(n)))
        .output()
        .unwrap();
    let bytes = String::from_utf8_lossy(&du.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    (names, bytes)
}

#[test]
fn a_build_killed_during_a_long_run_leaves_a_readable_store_and_no_process() {
    const T: &str = "a_build_killed_during_a_long_run_leaves_a_readable_store_and_no_process";
    let Some(a) = Arena::new(T) else {
        return;
    };
    // kiln's TMPDIR is inside the arena, so writing there counts as writing outside the store.
    let host_tmp = a.path().join("host-tmp");
    std::fs::create_dir(&host_tmp).unwrap();
    let before = a.snapshot();

    let ctx = tempfile::tempdir().unwrap();
    let kiln = || Command::new(assert_cmd::cargo::cargo_bin("kiln"));
    kill_during_a_long_run(kiln(), &a.store(), ctx.path(), &host_tmp);
    a.assert_store_ok();
    assert_eq!(
        a.snapshot(),
        before,
        "the killed build wrote outside the store (host-tmp is its TMPDIR)"
    );
    let out = common::kiln()
        .arg("--root")
        .arg(a.store())
        .args(["inspect", "long:1"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a killed build left a tag");
    let (left, bytes) = leftovers(&a.store());
    assert!(
        bytes >= 16 << 20,
        "the killed RUN's upper directory: {left:?} {bytes}"
    );

    // The next build removes what the killed one left (no prune needed), RUN included.
    let b = build(
        &a.store(),
        &a.ctx(),
        "FROM busybox\nRUN echo later > /later\n",
        &["-t", "app:later"],
    );
    assert_eq!(b.read("later"), "later\n");
    let (left, bytes) = leftovers(&a.store());
    assert!(
        left.is_empty(),
        "the next build left the killed build's leftovers ({bytes} bytes): {left:?}"
    );

    // Killed again: `kiln prune` removes the leftovers (overlay upper and work directories
    // included) and says how many bytes that freed.
    let killed_at = kill_during_a_long_run(kiln(), &a.store(), ctx.path(), &host_tmp);
    let (_, bytes) = leftovers(&a.store());
    assert!(bytes >= 16 << 20, "{bytes}");
    let grace = Duration::from_secs(6);
    if let Some(rest) = grace.checked_sub(killed_at.elapsed()) {
        std::thread::sleep(rest);
    }
    let out = common::kiln()
        .arg("--root")
        .arg(a.store())
        .arg("prune")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let freed: u64 = said
        .split(", ")
        .find_map(|p| p.strip_suffix(" bytes freed\n")?.parse().ok())
        .unwrap_or_else(|| panic!("prune said: {said}"));
    assert!(freed >= 16 << 20, "prune freed {freed} bytes, said: {said}");
    let (left, _) = leftovers(&a.store());
    assert!(left.is_empty(), "kiln prune left: {left:?}");
    a.assert_store_ok();
    assert_eq!(
        a.snapshot(),
        before,
        "something was written outside the store"
    );
}

#[test]
fn a_rootless_build_killed_during_a_run_is_swept_by_the_next_build() {
    use common::build::{OWNERSHIP_RUNNERS, Runner, runner_dir, runner_store};
    const T: &str = "a_rootless_build_killed_during_a_run_is_swept_by_the_next_build";
    for who in [OWNERSHIP_RUNNERS[1], Runner::User("kiln-nosubid")] {
        let Some(store) = runner_store(who, T) else {
            continue;
        };
        let (ctx, host_tmp) = (runner_dir(who), runner_dir(who));
        kill_during_a_long_run(kiln_as(who), store.path(), ctx.path(), host_tmp.path());
        let empty = |d: &Path| std::fs::read_dir(d).unwrap().count() == 0;
        assert!(
            empty(host_tmp.path()),
            "as {}: kiln wrote to TMPDIR",
            who.label()
        );
        let (left, bytes) = leftovers(store.path());
        assert!(bytes >= 16 << 20, "as {}: {left:?} {bytes}", who.label());
        let b = build_as(
            who,
            store.path(),
            ctx.path(),
            "FROM busybox\nRUN echo later > /later\n",
            &[],
            &[],
        );
        assert_eq!(b.read("later"), "later\n");
        let (left, bytes) = leftovers(store.path());
        assert!(
            left.is_empty(),
            "as {}: the next build left the killed build's leftovers ({bytes} bytes): {left:?}",
            who.label()
        );
    }
}

// ---------------------------------------------------------------------------------------------
// error messages

/// The error line of a failed build's stderr (`error: …`).
fn error_line(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{stderr}"))
}

#[test]
fn errors_name_the_file_line_and_instruction_once() {
    let store = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    make_tree(ctx.path(), &["x=x"]);
    // The message after `error: <ctx>/`.
    let prefix = format!("error: {}/", ctx.path().display());
    let err = |df: &str, extra: &[&str]| {
        let stderr = build_error(store.path(), ctx.path(), df, extra);
        let line = error_line(&stderr);
        line.strip_prefix(&prefix).unwrap_or(line).to_string()
    };
    // A file-wide error has no line to name: no `:?`.
    let e = err("", &[]);
    assert_eq!(e, "Dockerfile.kiln-test: the Dockerfile cannot be empty");
    let e = err("FROM scratch AS a\nCOPY x /x\n", &["--target", "nope"]);
    assert_eq!(
        e,
        "Dockerfile.kiln-test: target stage \"nope\" could not be found"
    );
    // A parse error names the instruction as written; an unknown flag suggests the flag.
    let e = err("FROM scratch\nCOPY --foo x /\n", &[]);
    assert_eq!(
        e,
        "Dockerfile.kiln-test:2: COPY --foo x /: unknown flag: --foo (did you mean --from?)"
    );
    let e = err("FROM scratch\nRUNN x\n", &[]);
    assert_eq!(
        e,
        "Dockerfile.kiln-test:2: RUNN x: unknown instruction: RUNN (did you mean RUN?)"
    );
    // An invalid tag says its reason once.
    for (tag, reason) in [
        ("Bad:Tag", "must be lowercase"),
        ("a:b:c", "invalid tag \"b:c\""),
    ] {
        let e = err("FROM scratch\nCOPY x /x\n", &["-t", tag]);
        assert_eq!(e.matches(reason).count(), 1, "{e}");
        assert_eq!(e.matches("invalid reference format").count(), 1, "{e}");
    }
}

#[test]
fn an_invalid_dockerignore_pattern_is_named_with_its_line() {
    let store = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    make_tree(
        ctx.path(),
        &["x=x", ".dockerignore=ok\n# a comment\n\nsub/[z\n"],
    );
    let stderr = build_error(store.path(), ctx.path(), "FROM scratch\nCOPY x /x\n", &[]);
    let e = error_line(&stderr);
    let want = format!(
        "{}:4: sub/[z: syntax error in pattern",
        ctx.path().join(".dockerignore").display()
    );
    assert!(e.contains(&want), "{e}\nwant {want}");
}

/// A tmpfs of `size` at a new temporary directory, unmounted when dropped.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn new(size: &str) -> SmallFs {
        let d = tempfile::tempdir().unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(d.path())
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        SmallFs(d)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_names_the_step() {
    const T: &str = "a_full_disk_names_the_step";
    if !common::build::is_root() {
        common::skip(T, "mounting a small tmpfs needs root");
        return;
    }
    let Some(tar) = busybox_rootfs(T) else {
        return;
    };
    let fs = SmallFs::new("12m");
    let store = fs.0.path().join("store");
    import_busybox(&tar, &store);
    let ctx = tempfile::tempdir().unwrap();
    // Larger than what is left: the layer blob itself cannot be written (the COPY's snapshot
    // is only unpacked when a later step reads it, so it cannot be what fills the disk).
    random_file(&ctx.path().join("big"), 11 << 20, 7);
    let stderr = build_error(&store, ctx.path(), "FROM busybox\nCOPY big /big\n", &[]);
    let e = error_line(&stderr);
    assert!(
        e.contains("/Dockerfile.kiln-test:2: COPY big /big: ")
            && e.contains("No space left on device"),
        "{e}"
    );
    // The store still reads.
    let out = common::kiln()
        .arg("--root")
        .arg(&store)
        .args(["inspect", "busybox"])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn the_no_subordinate_ids_hint_suggests_a_free_range() {
    use common::build::{Runner, runner_store, try_build_as};
    const T: &str = "the_no_subordinate_ids_hint_suggests_a_free_range";
    let who = Runner::User("kiln-nosubid");
    let Some(store) = runner_store(who, T) else {
        return;
    };
    let ctx = common::build::runner_dir(who);
    let b = try_build_as(
        who,
        store.path(),
        ctx.path(),
        "FROM busybox\nRUN true\n",
        &[],
        &[],
    );
    let stderr = b.stderr();
    let hint = stderr
        .split("--add-subuids ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no hint in:\n{stderr}"));
    let (start, end) = hint.split_once('-').unwrap();
    let (start, end): (u64, u64) = (start.parse().unwrap(), end.parse().unwrap());
    assert_eq!(end - start + 1, 65536, "{hint}");
    assert!(
        stderr.contains(&format!("--add-subgids {hint} kiln-nosubid")),
        "{stderr}"
    );
    for file in ["/etc/subuid", "/etc/subgid"] {
        for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
            let f: Vec<&str> = line.split(':').collect();
            let (Some(s), Some(n)) = (
                f.get(1).and_then(|s| s.parse::<u64>().ok()),
                f.get(2).and_then(|s| s.parse::<u64>().ok()),
            ) else {
                continue;
            };
            assert!(
                end < s || start >= s + n,
                "the hint {hint} overlaps {file}: {line}"
            );
        }
    }
}
