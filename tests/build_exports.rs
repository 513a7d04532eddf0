//! Where exports go and what they hold (issue 8, items 1, 2 and 9): destinations that are
//! symlinks or devices are written through, never replaced; `dest=-`, `-o -` and `kiln save`
//! without `-o` stream to stdout (refusing a terminal; `-q` then prints nothing); a rootless
//! `type=local` export is the user's to delete; a local export is the tree RUN sees (a layer's
//! directory replaces a lower layer's symlink or file); device nodes a user namespace cannot
//! make are named once.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use sha2::Digest;

use common::build::{
    Runner, build_as, busybox_store, have, is_root, kiln_as, runner_dir, runner_store,
};

/// `kiln --root ROOT ARGS…` as root, with stdout a pipe; returns the output (any status).
fn kiln(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(root)
        .args(args)
        .env_remove("SOURCE_DATE_EPOCH")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The entry names of a tar stream (read with the `tar` crate, then checked by GNU tar).
fn tar_names(bytes: &[u8]) -> Vec<String> {
    let mut a = tar::Archive::new(bytes);
    let names: Vec<String> = a
        .entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().display().to_string())
        .collect();
    let mut gnu = Command::new("tar")
        .arg("-t")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        gnu.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let out = gnu.wait_with_output().unwrap();
    assert!(out.status.success(), "GNU tar cannot list the stream");
    names
}

/// Builds `FROM busybox` + a file as root; returns the store.
fn built_store(test: &str) -> Option<tempfile::TempDir> {
    let store = busybox_store(test)?;
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("hello"), "hello\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\nCOPY hello /hello\n",
    )
    .unwrap();
    ok(
        kiln(
            store.path(),
            &["build", "-q", "-t", "app:1", ctx.path().to_str().unwrap()],
        ),
        "build",
    );
    Some(store)
}

fn build_args<'a>(ctx: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["build"];
    v.extend_from_slice(extra);
    v.push(ctx.to_str().unwrap());
    v
}

fn hello_ctx() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(ctx.path().join("hello"), "hello\n").unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM busybox\nCOPY hello /hello\n",
    )
    .unwrap();
    ctx
}

// ---------------------------------------------------------------------------------------------
// item 1: symlinks, devices and stdout

#[test]
fn outputs_through_a_symlink_keep_the_symlink() {
    let test = "outputs_through_a_symlink_keep_the_symlink";
    if !have(test, "skopeo") {
        return;
    }
    let Some(store) = built_store(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ctx = hello_ctx();
    for (name, how) in [
        ("save", "save"),
        ("oci", "type=oci"),
        ("docker", "type=docker"),
        ("tar", "type=tar"),
    ] {
        let target = d.join(format!("{name}-target"));
        let link = d.join(format!("{name}-link"));
        std::fs::write(&target, "old content").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let link_s = link.to_str().unwrap();
        let out = if how == "save" {
            kiln(store.path(), &["save", "app:1", "-o", link_s])
        } else {
            let spec = format!("{how},dest={link_s}");
            kiln(
                store.path(),
                &build_args(ctx.path(), &["-t", "app:1", "-o", &spec]),
            )
        };
        ok(out, name);
        let md = std::fs::symlink_metadata(&link).unwrap();
        assert!(
            md.file_type().is_symlink(),
            "{name}: the symlink was replaced"
        );
        assert_eq!(std::fs::read_link(&link).unwrap(), target);
        let bytes = std::fs::read(&target).unwrap();
        let names = tar_names(&bytes);
        match name {
            "save" | "docker" => {
                assert!(names.contains(&"manifest.json".to_string()), "{names:?}");
                let img = skopeo_inspect(&format!("docker-archive:{}", target.display()));
                assert_eq!(img["Layers"].as_array().unwrap().len(), 2);
            }
            "oci" => {
                assert!(names.contains(&"index.json".to_string()), "{names:?}");
                let img = skopeo_inspect(&format!("oci-archive:{}", target.display()));
                assert_eq!(img["Layers"].as_array().unwrap().len(), 2);
            }
            _ => {
                assert!(names.contains(&"hello".to_string()), "{names:?}");
                assert!(names.contains(&"bin/busybox".to_string()), "{names:?}");
            }
        }
        // No temp file was left beside either.
        let left: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains("kiln-tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    // A symlink to a character device and a fifo are written, not replaced.
    let null_link = d.join("null-link");
    std::os::unix::fs::symlink("/dev/null", &null_link).unwrap();
    ok(
        kiln(
            store.path(),
            &["save", "app:1", "-o", null_link.to_str().unwrap()],
        ),
        "save to a symlink to /dev/null",
    );
    assert!(
        std::fs::symlink_metadata(&null_link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(
        std::fs::metadata("/dev/null")
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let fifo = d.join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            let mut v = Vec::new();
            std::fs::File::open(fifo)
                .unwrap()
                .read_to_end(&mut v)
                .unwrap();
            v
        })
    };
    ok(
        kiln(
            store.path(),
            &["save", "app:1", "-o", fifo.to_str().unwrap()],
        ),
        "save to a fifo",
    );
    let got = reader.join().unwrap();
    assert!(tar_names(&got).contains(&"manifest.json".to_string()));
    assert!(
        std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo()
    );
    // A directory is refused and left alone.
    let sub = d.join("a-dir");
    std::fs::create_dir(&sub).unwrap();
    let out = kiln(
        store.path(),
        &["save", "app:1", "-o", sub.to_str().unwrap()],
    );
    assert!(!out.status.success());
    assert!(sub.is_dir());
}

use std::os::unix::fs::FileTypeExt;

fn skopeo_inspect(target: &str) -> serde_json::Value {
    common::build::skopeo_inspect(target, false).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn exports_stream_to_stdout() {
    let test = "exports_stream_to_stdout";
    if !have(test, "skopeo") {
        return;
    }
    let Some(store) = built_store(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ctx = hello_ctx();

    // `kiln save` without -o, and with `-o -`: a docker-archive on stdout.
    for args in [&["save", "app:1"][..], &["save", "app:1", "-o", "-"]] {
        let out = ok(kiln(store.path(), args), "save to stdout");
        let f = dir.path().join("saved.tar");
        std::fs::write(&f, &out.stdout).unwrap();
        assert!(tar_names(&out.stdout).contains(&"manifest.json".to_string()));
        skopeo_inspect(&format!("docker-archive:{}", f.display()));
    }

    // type=oci,dest=- and type=docker,dest=-, with -q: stdout is the archive alone.
    for (spec, transport) in [
        ("type=oci,dest=-", "oci-archive"),
        ("type=docker,dest=-", "docker-archive"),
    ] {
        let out = ok(
            kiln(store.path(), &build_args(ctx.path(), &["-q", "-o", spec])),
            spec,
        );
        // A tar ends with zero blocks; the image ID printed after it would not be.
        assert!(out.stdout.len() > 1024);
        assert!(
            out.stdout[out.stdout.len() - 1024..]
                .iter()
                .all(|&b| b == 0),
            "{spec}: something follows the archive on stdout"
        );
        let f = dir.path().join(format!("{transport}.tar"));
        std::fs::write(&f, &out.stdout).unwrap();
        let img = skopeo_inspect(&format!("{transport}:{}", f.display()));
        assert_eq!(img["Layers"].as_array().unwrap().len(), 2);
    }

    // `-o -`: the final filesystem as a tar, with the image's modes.
    let out = ok(
        kiln(store.path(), &build_args(ctx.path(), &["-q", "-o", "-"])),
        "-o -",
    );
    let names = tar_names(&out.stdout);
    for want in ["hello", "bin/busybox", "bin/sh"] {
        assert!(names.contains(&want.to_string()), "{want} in {names:?}");
    }
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let mut a = tar::Archive::new(&out.stdout[..]);
    a.unpack(&x).unwrap();
    assert_eq!(std::fs::read_to_string(x.join("hello")).unwrap(), "hello\n");
    assert!(
        std::fs::symlink_metadata(x.join("bin/sh"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // -q without a stdout export still prints the image ID.
    let out = ok(kiln(store.path(), &build_args(ctx.path(), &["-q"])), "-q");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("sha256:"));

    // Bad combinations are refused before the build.
    for (args, want) in [
        (vec!["-o", "type=local,dest=-"], "type=tar"),
        (vec!["-o", "type=oci,tar=false,dest=-"], "stdout"),
        (vec!["-o", "-", "-o", "type=docker,dest=-"], "only one"),
    ] {
        let out = kiln(store.path(), &build_args(ctx.path(), &args));
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn a_terminal_on_stdout_is_refused() {
    let test = "a_terminal_on_stdout_is_refused";
    if !have(test, "script") {
        return;
    }
    let Some(store) = built_store(test) else {
        return;
    };
    let ctx = hello_ctx();
    let bin = env!("CARGO_BIN_EXE_kiln");
    let root = store.path().display().to_string();
    for cmd in [
        format!("{bin} --root {root} save app:1"),
        format!("{bin} --root {root} save app:1 -o -"),
        format!("{bin} --root {root} build -o - {}", ctx.path().display()),
        format!(
            "{bin} --root {root} build -o type=oci,dest=- {}",
            ctx.path().display()
        ),
    ] {
        // `script` gives the command a pseudo-terminal as stdin, stdout and stderr.
        let out = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{cmd}: {text}");
        assert!(
            text.contains("refusing to write") && text.contains("terminal"),
            "{cmd}: {text}"
        );
        assert!(text.len() < 1000, "{cmd}: an archive reached the terminal");
    }
}

// ---------------------------------------------------------------------------------------------
// item 2: a rootless local export is the user's

/// Runs `sh -c SCRIPT` as `who` (setpriv, as kiln_as does).
fn sh_as(who: Runner, script: &str) -> Output {
    let (uid, gid) = who.ids();
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--init-groups")
        .args(["--", "sh", "-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// path → (kind, content or link target) of a tree, for comparing contents.
fn tree_of(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let md = std::fs::symlink_metadata(&p).unwrap();
            let v = if md.is_dir() {
                walk(root, &p, out);
                "dir".to_string()
            } else if md.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if md.is_file() {
                let data = std::fs::read(&p).unwrap();
                format!("file {}", hex(&sha2::Sha256::digest(&data)))
            } else {
                format!("special {:o}", md.mode() & 0o170000)
            };
            out.insert(rel, v);
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn rootless_local_export_is_removable_by_the_user() {
    let test = "rootless_local_export_is_removable_by_the_user";
    for who in [Runner::User("kiln-test"), Runner::User("kiln-nosubid")] {
        let Some(store) = runner_store(who, test) else {
            continue;
        };
        let ctx = runner_dir(who);
        let chown = if who.keeps_ownership() {
            "chown 1234:5678 /d/other /d/sub && chown -h 42:42 /d/link && "
        } else {
            ""
        };
        let dockerfile = format!(
            "FROM busybox\n\
             RUN mkdir -p /d/ro/deeper /d/sub /d/none && echo a > /d/ro/f && echo b > /d/sub/g && \
             echo c > /d/other && echo s > /d/suid && ln -s other /d/link && \
             {chown}chmod 4755 /d/suid && chmod 2755 /d/sub && chmod 555 /d/ro /d/ro/deeper && \
             chmod 000 /d/none && chmod 400 /d/other\n"
        );
        let out = runner_dir(who);
        let spec = format!("type=local,dest={}/rootfs", out.path().display());
        let b = build_as(
            who,
            store.path(),
            ctx.path(),
            &dockerfile,
            &["-o", &spec],
            &[],
        );
        let local = out.path().join("rootfs");
        // The owners the export could not keep are said (kiln-test's RUN made some).
        assert_eq!(
            b.stderr().contains("a rootless local export cannot keep"),
            who.keeps_ownership(),
            "{}",
            b.stderr()
        );
        // Same content as the image (the harness's tar export, unpacked by root).
        let mut want = tree_of(b.out.path());
        let mut got = tree_of(&local);
        // Special files (none expected) aside, the trees match.
        want.retain(|_, v| !v.starts_with("special"));
        got.retain(|_, v| !v.starts_with("special"));
        common::assert_same_tree(&format!("local export as {}", who.label()), &want, &got);
        // Every file is the user's; setuid survives; directories are removable.
        let (uid, gid) = who.ids();
        for p in ["d/other", "d/sub/g", "d/ro/f", "d/suid", "d/link", "d/sub"] {
            let md = std::fs::symlink_metadata(local.join(p)).unwrap();
            assert_eq!((md.uid(), md.gid()), (uid, gid), "{p} as {}", who.label());
        }
        assert_eq!(
            std::fs::metadata(local.join("d/suid")).unwrap().mode() & 0o7777,
            0o4755
        );
        let rm = sh_as(who, &format!("rm -rf {}", local.display()));
        assert!(
            rm.status.success(),
            "as {}: {}",
            who.label(),
            String::from_utf8_lossy(&rm.stderr)
        );
        assert!(!local.exists());
    }
}

// ---------------------------------------------------------------------------------------------
// item 9: the export is the tree RUN sees; device nodes are named once

/// A docker-archive of `layers` (each a list of tar entries), named `name`.
fn docker_archive(name: &str, layers: &[Vec<(String, tar::EntryType, &str)>]) -> Vec<u8> {
    let mut blobs = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, entries) in layers.iter().enumerate() {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_path(path).unwrap();
            h.set_entry_type(*kind);
            h.set_mtime(1_600_000_000);
            h.set_uid(0);
            h.set_gid(0);
            match *kind {
                tar::EntryType::Directory => h.set_mode(0o755),
                tar::EntryType::Symlink => {
                    h.set_mode(0o777);
                    h.set_link_name(data).unwrap();
                }
                tar::EntryType::Char => {
                    h.set_mode(0o666);
                    h.set_device_major(1).unwrap();
                    h.set_device_minor(3).unwrap();
                }
                _ => h.set_mode(0o644),
            }
            let body: &[u8] = if *kind == tar::EntryType::Regular {
                data.as_bytes()
            } else {
                b""
            };
            h.set_size(body.len() as u64);
            h.set_cksum();
            b.append(&h, body).unwrap();
        }
        let bytes = b.into_inner().unwrap();
        diff_ids.push(format!("sha256:{}", hex(&sha2::Sha256::digest(&bytes))));
        blobs.push((format!("layer{i}.tar"), bytes));
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [name],
        "Layers": blobs.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>(),
    }])
    .to_string();
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_path(path).unwrap();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.append(&h, data).unwrap();
    };
    add("config.json", config.as_bytes());
    add("manifest.json", manifest.as_bytes());
    for (n, b) in &blobs {
        add(n, b);
    }
    out.into_inner().unwrap()
}

/// Loads `archive` into the store as `who`.
fn load_as(who: Runner, store: &Path, archive: &[u8]) {
    let dir = runner_dir(who);
    let f = dir.path().join("img.tar");
    std::fs::write(&f, archive).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = kiln_as(who)
        .arg("--root")
        .arg(store)
        .arg("load")
        .arg(&f)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What RUN printed for `find PATHS` as `path kind` lines (D, L, F), and the same listing made
/// from the export.
fn kinds(root: &Path, paths: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    fn rec(root: &Path, rel: &str, out: &mut Vec<String>) {
        let p = root.join(rel.trim_start_matches('/'));
        let Ok(md) = std::fs::symlink_metadata(&p) else {
            return;
        };
        let k = if md.file_type().is_symlink() {
            "L"
        } else if md.is_dir() {
            "D"
        } else {
            "F"
        };
        out.push(format!("{rel} {k}"));
        if k == "D" {
            for e in std::fs::read_dir(&p).unwrap() {
                let n = e.unwrap().file_name();
                rec(root, &format!("{rel}/{}", n.to_string_lossy()), out);
            }
        }
    }
    for p in paths {
        rec(root, p, &mut out);
    }
    out.sort();
    out
}

#[test]
fn local_export_is_the_tree_run_sees() {
    let test = "local_export_is_the_tree_run_sees";
    if !is_root() {
        common::skip(test, "needs root");
        return;
    }
    use tar::EntryType as T;
    let archive = docker_archive(
        "weird:1",
        &[
            vec![
                ("t/".into(), T::Directory, ""),
                ("t/old".into(), T::Regular, "old"),
                ("x".into(), T::Symlink, "/t"),
                ("y".into(), T::Regular, "a file below"),
                ("w".into(), T::Symlink, "t"),
            ],
            // No entries for x/, y/ or w/: their parents come from the lower layer.
            vec![
                ("x/f".into(), T::Regular, "new"),
                ("y/g".into(), T::Regular, "under y"),
                ("w/.wh.old".into(), T::Regular, ""),
            ],
        ],
    );
    for snapshotter in ["overlay", "copy"] {
        let Some(store) = busybox_store(test) else {
            return;
        };
        load_as(Runner::Root, store.path(), &archive);
        let ctx = runner_dir(Runner::Root);
        let dockerfile = "FROM busybox AS bb\n\
             FROM weird:1\n\
             COPY --from=bb /bin/busybox /bin/busybox\n\
             RUN [\"/bin/busybox\", \"sh\", \"-c\", \"for p in $(/bin/busybox find /t /x /y /w); do \
             if [ -L $p ]; then k=L; elif [ -d $p ]; then k=D; else k=F; fi; echo $p $k; done > /run-view\"]\n";
        let b = build_as(
            Runner::Root,
            store.path(),
            ctx.path(),
            dockerfile,
            &[],
            &[("KILN_SNAPSHOTTER", snapshotter)],
        );
        let mut run_view: Vec<String> = b.read("run-view").lines().map(String::from).collect();
        run_view.sort();
        let export = kinds(b.out.path(), &["/t", "/x", "/y", "/w"]);
        assert_eq!(export, run_view, "export vs RUN's view ({snapshotter})");
        // The layer's directories hide the lower symlinks and file; nothing went through them.
        assert!(run_view.contains(&"/x D".to_string()), "{run_view:?}");
        assert!(run_view.contains(&"/x/f F".to_string()), "{run_view:?}");
        assert!(run_view.contains(&"/y/g F".to_string()), "{run_view:?}");
        assert!(run_view.contains(&"/t/old F".to_string()), "{run_view:?}");
        assert!(!b.exists("t/f"));
    }
}

#[test]
fn device_nodes_a_user_namespace_cannot_make_are_named_once() {
    let test = "device_nodes_a_user_namespace_cannot_make_are_named_once";
    let who = Runner::User("kiln-test");
    let Some(store) = runner_store(who, test) else {
        return;
    };
    use tar::EntryType as T;
    let archive = docker_archive(
        "devs:1",
        &[vec![
            ("dev/".into(), T::Directory, ""),
            ("dev/kiln-null".into(), T::Char, ""),
            ("dev/kiln-other".into(), T::Char, ""),
            ("etc/".into(), T::Directory, ""),
            ("etc/hostname".into(), T::Regular, "devs\n"),
        ]],
    );
    load_as(who, store.path(), &archive);
    let ctx = runner_dir(who);
    let out = runner_dir(who);
    let spec = format!("type=local,dest={}/rootfs", out.path().display());
    let b = build_as(
        who,
        store.path(),
        ctx.path(),
        "FROM devs:1\nENV A=1\n",
        &["-o", &spec],
        &[],
    );
    let err = b.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("device node")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(
        lines[0].contains("/dev/kiln-null") && lines[0].contains("/dev/kiln-other"),
        "{err}"
    );
    assert!(lines[0].contains("2 device nodes"), "{err}");
    assert!(out.path().join("rootfs/etc/hostname").is_file());
    // A second build on the same snapshots: the export names them (once) again.
    let b = build_as(
        who,
        store.path(),
        ctx.path(),
        "FROM devs:1\nENV A=2\n",
        &["-o", &spec],
        &[],
    );
    let err = b.stderr();
    let n = err.lines().filter(|l| l.contains("device node")).count();
    assert_eq!(n, 1, "{err}");
}
