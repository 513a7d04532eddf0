//! ../shared/conformance/semantics.md, end to end: every ★ row (FROM scratch, no RUN) and the
//! busybox rows that need no RUN, built by the real `kiln build` into a temporary store and
//! read back through `--output type=local` and `kiln inspect`.

mod common;

use std::os::unix::fs::MetadataExt;

use common::build::{
    Built, OWNERSHIP_RUNNERS, RUNNERS, Runner, build, build_as, build_error, build_error_as,
    busybox_store, is_root, make_tree, runner_dir, runner_store,
};

fn scratch(ctx_spec: &[&str], dockerfile: &str, extra: &[&str]) -> Built {
    let store = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    make_tree(ctx.path(), ctx_spec);
    let b = build(store.path(), ctx.path(), dockerfile, extra);
    std::mem::forget(store);
    b
}

fn scratch_error(ctx_spec: &[&str], dockerfile: &str, extra: &[&str]) -> String {
    let store = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    make_tree(ctx.path(), ctx_spec);
    build_error(store.path(), ctx.path(), dockerfile, extra)
}

#[test]
fn s01_dest_slash_is_a_directory() {
    let b = scratch(
        &["testfile=contents0"],
        "FROM scratch\nCOPY testfile /sample/\n",
        &[],
    );
    assert_eq!(b.read("/sample/testfile"), "contents0");
}

#[test]
fn s02_empty_dest_is_workdir() {
    let b = scratch(
        &["testfile=contents0"],
        "FROM scratch\nENV empty=\"\"\nCOPY testfile $empty\n",
        &[],
    );
    assert_eq!(b.read("/testfile"), "contents0");
}

const WILD: &[&str] = &["foo.go=foo", "bar.go=bar", "sub/dir1/dir2/foo=deep"];

#[test]
fn s04_to_s09_wildcards_and_directory_contents() {
    let b = scratch(
        WILD,
        "FROM scratch\nCOPY *.go /gofiles/\nCOPY f*.go foo2.go\nCOPY sub/* /subdest/\n\
         COPY sub/*/dir2/foo /subdest2/\nCOPY sub/*/dir2/foo /subdest3/bar\nCOPY . all/\n\
         COPY sub/dir1/ subdest4\nCOPY sub/dir1/. subdest5\nCOPY sub/dir1 subdest6\n",
        &[],
    );
    assert_eq!(b.read("/gofiles/foo.go"), "foo");
    assert_eq!(b.read("/gofiles/bar.go"), "bar");
    assert_eq!(b.read("/foo2.go"), "foo");
    assert_eq!(b.read("/subdest/dir2/foo"), "deep");
    assert!(!b.exists("/subdest/dir1"));
    assert_eq!(b.read("/subdest2/foo"), "deep");
    assert_eq!(b.read("/subdest3/bar"), "deep");
    assert_eq!(b.read("/all/foo.go"), "foo");
    assert_eq!(b.read("/all/sub/dir1/dir2/foo"), "deep");
    for d in ["subdest4", "subdest5", "subdest6"] {
        assert_eq!(b.read(&format!("/{d}/dir2/foo")), "deep", "{d}");
    }
}

#[test]
fn s10_unmatched_wildcard_is_skipped() {
    let b = scratch(
        &["foo=contents0"],
        "FROM scratch\nCOPY foo nomatch* /\n",
        &[],
    );
    assert_eq!(b.read("/foo"), "contents0");
}

#[test]
fn s11_sources_expand_env() {
    let b = scratch(
        &["bar=bar-contents"],
        "FROM scratch\nENV FOO bar\nCOPY $FOO baz\n",
        &[],
    );
    assert_eq!(b.read("/baz"), "bar-contents");
}

#[test]
fn s13_copy_over_existing_files_and_dirs() {
    let b = scratch(
        &["sub/dir1/dir2/foo=x", "files/foo.go=go"],
        "FROM scratch\nCOPY sub sub\nCOPY sub sub\nCOPY files/foo.go dest/foo.go\n\
         COPY files/foo.go dest/foo.go\nCOPY files dest\n",
        &[],
    );
    assert_eq!(b.read("/sub/dir1/dir2/foo"), "x");
    assert_eq!(b.read("/dest/foo.go"), "go");
}

#[test]
fn s14_unicode_names_are_literal() {
    let b = scratch(
        &[
            "test-äöü.txt=foo",
            "test-%C3%A4%C3%B6%C3%BC.txt=bar",
            "test+aou.txt=baz",
        ],
        "FROM scratch\nCOPY test-äöü.txt /\nCOPY test-%C3%A4%C3%B6%C3%BC.txt /\nCOPY test+aou.txt /\n",
        &[],
    );
    assert_eq!(b.read("/test-äöü.txt"), "foo");
    assert_eq!(b.read("/test-%C3%A4%C3%B6%C3%BC.txt"), "bar");
    assert_eq!(b.read("/test+aou.txt"), "baz");
}

#[test]
fn s16_invalid_chmod() {
    for bad in ["64a", "10000"] {
        let err = scratch_error(
            &["foo=x"],
            &format!("FROM scratch\nCOPY --chmod={bad} foo /\n"),
            &[],
        );
        assert!(
            err.contains(&format!(
                "invalid chmod parameter: '{bad}'. it should be octal string and between 0 and 07777"
            )),
            "{err}"
        );
        assert!(err.contains(":2:"), "no line: {err}");
    }
}

#[test]
fn s21_symlink_in_source_path_is_followed() {
    let b = scratch(
        &["link -> sub", "sub/foo=contents"],
        "FROM scratch\nCOPY link/foo .\n",
        &[],
    );
    assert_eq!(b.read("/foo"), "contents");
}

#[test]
fn s23_named_and_matched_symlinks_are_dereferenced() {
    let b = scratch(
        &[
            "bar=bar-contents",
            "foo -> bar",
            "sub/lfile=lfile-contents",
            "sub/l0 -> subfile",
            "sub/subfile=subfile-contents",
            "sub/l1 -> second",
            "sub/second -> baz",
            "sub/baz=baz-contents",
        ],
        "FROM scratch\nCOPY foo /\nCOPY sub/l* alllinks/\n",
        &[],
    );
    assert_eq!(b.read("/foo"), "bar-contents");
    assert!(
        !b.path("/foo")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(b.read("/alllinks/l0"), "subfile-contents");
    assert_eq!(b.read("/alllinks/l1"), "baz-contents");
    assert_eq!(b.read("/alllinks/lfile"), "lfile-contents");
}

#[test]
fn s24_socket_becomes_empty_file() {
    let store = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    let _sock = std::os::unix::net::UnixListener::bind(ctx.path().join("socket.sock")).unwrap();
    let b = build(store.path(), ctx.path(), "FROM scratch\nCOPY . /\n", &[]);
    let m = b.path("/socket.sock").symlink_metadata().unwrap();
    assert!(m.file_type().is_file());
    assert_eq!(m.len(), 0);
}

/// A tar with the given (path, content) files, made with GNU tar.
fn tar_of(dir: &std::path::Path, name: &str, files: &[(&str, &str)], gzip: bool) {
    let src = tempfile::tempdir().unwrap();
    for (p, c) in files {
        make_tree(src.path(), &[&format!("{p}={c}")]);
    }
    let mut cmd = std::process::Command::new("tar");
    cmd.arg(if gzip { "-czf" } else { "-cf" })
        .arg(dir.join(name))
        .arg("-C")
        .arg(src.path())
        .arg(".");
    assert!(cmd.status().unwrap().success());
}

#[test]
fn s26_s28_local_archives_are_extracted_by_add() {
    let store = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    tar_of(ctx.path(), "t.tar", &[("foo", "content0")], false);
    tar_of(ctx.path(), "t.tar.gz", &[("foo", "content0")], true);
    tar_of(ctx.path(), "b.tar", &[("bar", "content1")], false);
    let b = build(store.path(), ctx.path(), "FROM scratch\nADD t.tar /\n", &[]);
    assert_eq!(b.read("/foo"), "content0");
    let b = build(
        store.path(),
        ctx.path(),
        "FROM scratch\nADD t.tar.gz /\n",
        &[],
    );
    assert_eq!(b.read("/foo"), "content0");
    let b = build(
        store.path(),
        ctx.path(),
        "FROM scratch\nADD --unpack=false t.tar.gz /\n",
        &[],
    );
    assert!(b.exists("/t.tar.gz") && !b.exists("/foo"));
    let b = build(
        store.path(),
        ctx.path(),
        "FROM scratch\nCOPY t.tar.gz /\n",
        &[],
    );
    assert!(b.exists("/t.tar.gz") && !b.exists("/foo"));
    let b = build(
        store.path(),
        ctx.path(),
        "FROM scratch\nADD *.tar /dest\n",
        &[],
    );
    assert_eq!(b.read("/dest/foo"), "content0");
    assert_eq!(b.read("/dest/bar"), "content1");
}

#[test]
fn s29_add_chown_archive() {
    let store = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    tar_of(ctx.path(), "t.tar", &[("foo", "content0")], false);
    let b = build(
        store.path(),
        ctx.path(),
        "FROM scratch\nADD --chown=100:200 t.tar /out/\n",
        &[],
    );
    if is_root() {
        assert_eq!(b.owner("/out/foo"), (100, 200));
        assert_eq!(b.owner("/out"), (100, 200));
    }
    let cfg = b.inspect();
    assert_eq!(
        cfg["config"]["rootfs"]["diff_ids"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

const EXCL: &[&str] = &[
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
];

#[test]
fn s31_s32_exclude() {
    let b = scratch(
        EXCL,
        "FROM scratch\nCOPY --exclude=*/*.png --exclude=*/*.jpeg . /1\n\
         ADD --exclude=*.mp3 dir3/ /3/\n\
         COPY --exclude=*.mp3 --exclude=*.jpeg --exclude=*.png --exclude=*.pdf --exclude=*.txt dir* /4/\n\
         ADD --exclude=* dir* /6\n",
        &[],
    );
    let t = b.tree();
    assert!(
        t.iter()
            .all(|p| !p.ends_with(".png") && !p.ends_with(".jpeg")),
        "{t:?}"
    );
    assert_eq!(b.read("/1/dir1/file-102.txt"), "2");
    assert_eq!(b.read("/1/dir2/file-201.pdf"), "4");
    assert_eq!(b.read("/1/dir3/file-301.mp3"), "7");
    assert_eq!(b.link("/1/dir4/file-402.txt"), "file-401.txt");
    assert_eq!(b.link("/1/dir4/file-403.txt"), "file-404.txt");
    let three: Vec<_> = t.iter().filter(|p| p.starts_with("3/")).collect();
    assert_eq!(three, ["3/file-302.mpeg"]);
    let four: Vec<_> = t.iter().filter(|p| p.starts_with("4/")).collect();
    assert_eq!(four, ["4/file-302.mpeg"]);
    assert!(b.path("/6").is_dir());
    assert!(!t.iter().any(|p| p.starts_with("6/")));
}

#[test]
fn s33_parents() {
    let b = scratch(
        &["foo1/foo2/bar=testing", "foo1/foo2/baz=testing2"],
        "FROM scratch\nCOPY --parents foo1/foo2/bar /\nWORKDIR /test\nCOPY --parents foo1/foo2/ba* .\n",
        &[],
    );
    assert_eq!(b.read("/foo1/foo2/bar"), "testing");
    assert_eq!(b.read("/test/foo1/foo2/bar"), "testing");
    assert_eq!(b.read("/test/foo1/foo2/baz"), "testing2");
}

#[test]
fn s36_workdir_creates_directory() {
    let b = scratch(&[], "FROM scratch\nWORKDIR /foo\nWORKDIR /\n", &[]);
    assert!(b.path("/foo").is_dir());
}

#[test]
fn s38_copy_from_ignores_source_workdir() {
    let b = scratch(
        &["Dockerfile=FROM scratch"],
        "FROM scratch AS base\nWORKDIR /foo\nCOPY Dockerfile /\nFROM scratch\nCOPY --from=base Dockerfile .\n",
        &[],
    );
    assert!(b.exists("/Dockerfile"));
}

#[test]
fn s39_s40_scratch_config() {
    let b = scratch(&[], "FROM scratch\nENV foo=bar\n", &[]);
    let c = &b.inspect()["config"];
    assert_eq!(c["os"], "linux");
    assert!(c["architecture"].as_str().is_some_and(|a| !a.is_empty()));
    assert!(
        c["config"]["WorkingDir"]
            .as_str()
            .is_some_and(|w| !w.is_empty())
    );
    assert_eq!(c["rootfs"]["type"], "layers");
    assert_eq!(c["rootfs"]["diff_ids"].as_array().map_or(0, |a| a.len()), 0);
    let h = c["history"].as_array().unwrap();
    assert_eq!(h.len(), 1);
    assert!(h[0]["created_by"].as_str().unwrap().contains("ENV foo=bar"));
    assert_eq!(h[0]["empty_layer"], true);
    let env: Vec<&str> = c["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(env.contains(&"foo=bar"));
    assert!(env.iter().any(|e| e.starts_with("PATH=")));

    let b = scratch(&[], "FROM scratch\nENTRYPOINT foo bar\n", &[]);
    let c = &b.inspect()["config"]["config"];
    assert_eq!(
        c["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c", "foo bar"])
    );
    assert_eq!(
        c["Env"],
        serde_json::json!(["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"])
    );
}

#[test]
fn s43_expose_expansion() {
    let b = scratch(
        &[],
        "FROM scratch\nARG PORTS=\"3000 4000/udp\"\nEXPOSE $PORTS\nEXPOSE 5000\n",
        &[],
    );
    let ports = &b.inspect()["config"]["config"]["ExposedPorts"];
    assert_eq!(
        ports,
        &serde_json::json!({"3000/tcp": {}, "4000/udp": {}, "5000/tcp": {}})
    );
}

#[test]
fn s45_required_args() {
    let err = scratch_error(&[], "ARG FOO=${FOO:?\"custom error\"}\nFROM scratch\n", &[]);
    assert!(err.contains("FOO: custom error"), "{err}");
    scratch(
        &[],
        "ARG FOO=${FOO:?\"custom error\"}\nFROM scratch\n",
        &["--build-arg", "FOO=x"],
    );
    let df = "FROM scratch\nARG FOO\nARG BAR=${FOO:?\"foo missing\"}\n";
    let err = scratch_error(&[], df, &[]);
    assert!(err.contains("FOO: foo missing"), "{err}");
    scratch(&[], df, &["--build-arg", "FOO=x"]);
    scratch(&[], df, &["--build-arg", "BAR=x"]);
}

#[test]
fn s54_to_s60_errors() {
    let cases: &[(&str, &[&str], &[&str])] = &[
        (
            "FROM scratch AS target\nCOPY --from=build / /out\nFROM scratch AS build\n",
            &["--target", "target"],
            &[
                "cannot copy from stage",
                "needs to be defined before current stage",
            ],
        ),
        (
            "FROM scratch AS stage0\nCOPY --from=stage0 f1 /sub/\n",
            &[],
            &["circular dependency detected on stage: stage0"],
        ),
        (
            "ARG foo=bar\n",
            &[],
            &["dockerfile contains no stages to build"],
        ),
        (
            "FROM scratch\nCOPY http://github.com/moby/buildkit/blob/master/README.md /\n",
            &[],
            &["source can't be a URL for COPY"],
        ),
        (
            "FROM scratch AS build\nCOPY f1 /\n",
            &["--target", "bulid"],
            &["target stage \"bulid\" could not be found (did you mean build?)"],
        ),
        (
            "FROM scratch\nFNTRYPOINT [\"/bin/sh\"]\n",
            &[],
            &[
                "unknown instruction: FNTRYPOINT",
                "did you mean ENTRYPOINT?",
            ],
        ),
        (
            "FROM scratch\nCOPY --from=$FOO . .\n",
            &[],
            &[
                "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
            ],
        ),
    ];
    for (df, extra, wants) in cases {
        let err = scratch_error(&["f1=x"], df, extra);
        for w in *wants {
            assert!(err.contains(w), "{df:?}: {w:?} not in {err}");
        }
    }
}

#[test]
fn s62_heredoc_escapes() {
    let b = scratch(
        &[],
        "FROM scratch\nCOPY <<EOF slashfile1\n\\\nEOF\nCOPY <<EOF slashfile2\n\\\\\nEOF\n\
         COPY <<EOF slashfile3\n\\$\nEOF\nCOPY <<\"EOF\" rawslashfile1\n\\\nEOF\n\
         COPY <<\"EOF\" rawslashfile2\n\\\\\nEOF\nCOPY <<\"EOF\" rawslashfile3\n\\$\nEOF\n\
         COPY <<EOF quotefile\n\"quotes in file\"\nEOF\n",
        &[],
    );
    assert_eq!(b.read("/slashfile1"), "\n");
    assert_eq!(b.read("/slashfile2"), "\\\n");
    assert_eq!(b.read("/slashfile3"), "$\n");
    assert_eq!(b.read("/rawslashfile1"), "\\\n");
    assert_eq!(b.read("/rawslashfile2"), "\\\\\n");
    assert_eq!(b.read("/rawslashfile3"), "\\$\n");
    assert_eq!(b.read("/quotefile"), "\"quotes in file\"\n");
}

#[test]
fn s67_s68_dockerignore() {
    let b = scratch(
        &[
            "foo=1",
            "bar=2",
            "baz=3",
            "bay=4",
            "Dockerfile=x",
            ".dockerignore=ba*\nDockerfile\n!bay\n.dockerignore\n",
        ],
        "FROM scratch\nCOPY . .\n",
        &[],
    );
    let t = b.tree();
    assert!(
        t.contains(&"foo".to_string()) && t.contains(&"bay".to_string()),
        "{t:?}"
    );
    for gone in ["bar", "baz", "Dockerfile", ".dockerignore"] {
        assert!(!t.contains(&gone.to_string()), "{gone} in {t:?}");
    }
    let err = scratch_error(
        &["foo=1", ".dockerignore=!\n"],
        "FROM scratch\nCOPY . .\n",
        &[],
    );
    assert!(err.contains("illegal exclusion pattern"), "{err}");
}

#[test]
fn s69_dockerfile_specific_dockerignore() {
    let store = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    make_tree(
        ctx.path(),
        &[
            "foo=1",
            "bar=2",
            "Dockerfile.kiln-test.dockerignore=foo\n",
            ".dockerignore=bar\n",
        ],
    );
    // The Dockerfile's own ignore file (`foo`) replaces `.dockerignore` (`bar`).
    let err = build_error(
        store.path(),
        ctx.path(),
        "FROM scratch\nCOPY foo /x/\n",
        &[],
    );
    assert!(err.contains("\"/foo\": not found"), "{err}");
    let b = build(
        store.path(),
        ctx.path(),
        "FROM scratch\nCOPY bar /x/\n",
        &[],
    );
    assert_eq!(b.read("/x/bar"), "2");
}

// ---- busybox rows that need no RUN, as every runner ----

/// Runs `f(who, store, ctx)` for each runner of `runners` available here, each with a fresh
/// busybox store and an empty context directory it can reach. Not as root, it runs once as the
/// current user (`Runner::Root` then means "whoever runs the tests") and skips the other users.
fn each_runner(
    test: &str,
    runners: &[Runner],
    f: impl Fn(Runner, &std::path::Path, &std::path::Path),
) {
    let list: Vec<Runner> = if is_root() {
        runners
            .iter()
            .copied()
            .filter(|r| r.available(test))
            .collect()
    } else {
        common::skip(&format!("{test} as other users"), "needs root");
        vec![Runner::Root]
    };
    for who in list {
        let store = match who {
            Runner::Root => busybox_store(test),
            Runner::User(_) => runner_store(who, test),
        };
        let Some(store) = store else {
            return;
        };
        let ctx = runner_dir(who);
        eprintln!("{test}: as {}", who.label());
        f(who, store.path(), ctx.path());
    }
}

/// The harness itself: a no-RUN build as each runner, read back (files, owners as image ids,
/// config through `inspect` run as the same user), and a failing build's error.
#[test]
fn harness_builds_as_every_runner() {
    each_runner(
        "harness_builds_as_every_runner",
        &RUNNERS,
        |who, store, ctx| {
            make_tree(ctx, &["foo=foo-contents", "sub/bar=bar-contents"]);
            let b = build_as(
                who,
                store,
                ctx,
                "FROM busybox\nCOPY foo /foo\nCOPY sub /sub/\nENV WHO=me\nWORKDIR /w\n",
                &["-t", "harness:latest"],
                &[("SOURCE_DATE_EPOCH", "0")],
            );
            assert_eq!(b.read("/foo"), "foo-contents", "as {}", who.label());
            assert_eq!(b.read("/sub/bar"), "bar-contents");
            assert!(b.path("/bin/busybox").is_file());
            assert_eq!(b.owner("/foo"), (0, 0), "as {}", who.label());
            assert_eq!(b.owner("/sub/bar"), (0, 0));
            assert_eq!(b.owner("/w"), (0, 0));
            assert!(b.id.starts_with("sha256:"), "{}", b.id);
            let c = b.inspect();
            assert_eq!(c["config"]["config"]["WorkingDir"], "/w");
            assert!(
                c["config"]["config"]["Env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e == "WHO=me"),
                "{c}"
            );
            // The image is in the runner's store, listed by kiln run as the runner.
            let out = common::build::kiln_as(who)
                .arg("--root")
                .arg(store)
                .args(["images"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("harness"));
            let err = build_error_as(
                who,
                store,
                ctx,
                "FROM busybox\nCOPY nosuchfile /\n",
                &[],
                &[],
            );
            assert!(err.contains(":2:"), "{err}");
        },
    );
}

/// The owners in the layer tars of a store or OCI layout: `path → (uid, gid)` for every entry
/// of every blob that reads as a tar.
fn layer_owners(layout: &std::path::Path) -> Vec<(String, (u64, u64))> {
    let mut out = Vec::new();
    for (_, data) in common::build::blob_contents(layout) {
        let mut ar = tar::Archive::new(&data[..]);
        let Ok(entries) = ar.entries() else { continue };
        for e in entries {
            let Ok(e) = e else { break };
            let h = e.header();
            if let (Ok(p), Ok(u), Ok(g)) = (e.path(), h.uid(), h.gid()) {
                out.push((
                    p.to_string_lossy().trim_end_matches('/').to_string(),
                    (u, g),
                ));
            }
        }
    }
    out
}

/// `COPY --chown` as every runner: the layer (in the store and in an OCI export) records the
/// requested owners even where the runner cannot chown on disk (kiln-nosubid's single-id map);
/// the local export has them where the runner can keep owners.
#[test]
fn copy_chown_layers_as_root_and_kiln_test() {
    copy_chown_layers("copy_chown_layers", &OWNERSHIP_RUNNERS);
}

#[test]
fn copy_chown_layers_as_kiln_nosubid() {
    copy_chown_layers("copy_chown_layers_nosubid", &RUNNERS[2..]);
}

fn copy_chown_layers(test: &str, runners: &[Runner]) {
    each_runner(test, runners, |who, store, ctx| {
        make_tree(ctx, &["foo=f", "dir/sub=s"]);
        let oci = runner_dir(who);
        let spec = format!("type=oci,dest={}/layout,tar=false", oci.path().display());
        let docker = format!("type=docker,dest={}/image.tar", oci.path().display());
        let b = build_as(
            who,
            store,
            ctx,
            "FROM busybox\nCOPY --chown=1000:1000 foo /foo\nCOPY --chown=4242:4243 dir /dir\n",
            &["-o", &spec, "-o", &docker],
            &[],
        );
        let l = who.label();
        assert_eq!(b.read("/foo"), "f");
        let archive = std::fs::metadata(oci.path().join("image.tar")).unwrap();
        assert!(archive.len() > 1024, "docker archive as {l}");
        for layout in [store.to_path_buf(), oci.path().join("layout")] {
            let owners = layer_owners(&layout);
            let find = |p: &str| owners.iter().find(|(q, _)| q == p).map(|(_, o)| *o);
            assert_eq!(
                find("foo"),
                Some((1000, 1000)),
                "{} as {l}",
                layout.display()
            );
            assert_eq!(
                find("dir"),
                Some((4242, 4243)),
                "{} as {l}",
                layout.display()
            );
            assert_eq!(
                find("dir/sub"),
                Some((4242, 4243)),
                "{} as {l}",
                layout.display()
            );
        }
        if who.keeps_ownership() {
            assert_eq!(b.owner("/foo"), (1000, 1000), "as {l}");
            assert_eq!(b.owner("/dir/sub"), (4242, 4243), "as {l}");
        }
    });
}

#[test]
fn s03_s12_relative_destinations_on_busybox() {
    each_runner("s03_s12", &RUNNERS, |who, store, ctx| {
        make_tree(ctx, &["testfile=t", "foo=hello"]);
        let b = build_as(
            who,
            store,
            ctx,
            "FROM busybox\nWORKDIR /var/www\nCOPY --link testfile .\nENV empty=\"\"\nCOPY testfile $empty\n",
            &[],
            &[],
        );
        assert_eq!(b.read("/var/www/testfile"), "t");
        let b = build_as(
            who,
            store,
            ctx,
            "FROM busybox\nWORKDIR /test1\nWORKDIR test2\nCOPY foo ./\nADD foo ./bar/baz\n\
             COPY foo ./bar/baz2\nWORKDIR ..\nCOPY foo ./\nCOPY foo /test3/\nWORKDIR /test4\n\
             COPY . .\nWORKDIR /test5/test6\nCOPY foo ../\n",
            &[],
            &[],
        );
        for p in [
            "/test1/test2/foo",
            "/test1/test2/bar/baz",
            "/test1/test2/bar/baz2",
            "/test1/foo",
            "/test3/foo",
            "/test4/foo",
            "/test5/foo",
        ] {
            assert_eq!(b.read(p), "hello", "{p}");
        }
        assert_eq!(
            b.inspect()["config"]["config"]["WorkingDir"],
            "/test5/test6"
        );
        assert!(
            b.path("/bin/busybox").is_file(),
            "the base's files are there"
        );
    });
}

#[test]
fn s15_chmod_on_busybox() {
    each_runner("s15", &RUNNERS, |who, store, ctx| {
        make_tree(ctx, &["foo=f", "bar=b"]);
        let b = build_as(
            who,
            store,
            ctx,
            "FROM busybox\nCOPY --chmod=0644 foo /\nCOPY --chmod=777 bar /baz\nCOPY --chmod=0 foo /foobis\n\
             COPY --chmod=777 foo /parent/foo\nCOPY --chmod=770 foo /parent/sub/foo\nARG mode\n\
             COPY --chmod=${mode} foo /footer\n",
            &["--build-arg", "mode=755"],
            &[],
        );
        assert_eq!(b.mode("/foo"), 0o644);
        assert_eq!(b.mode("/baz"), 0o777);
        assert_eq!(b.mode("/foobis"), 0o000);
        assert_eq!(b.mode("/footer"), 0o755);
        assert_eq!(b.mode("/parent"), 0o777);
        assert_eq!(b.mode("/parent/sub"), 0o770);
    });
}

#[test]
fn s18_chown_on_busybox() {
    if !is_root() {
        common::skip("s18_chown_on_busybox", "needs root to read back owners");
        return;
    }
    // Ownership: root and the user with subordinate ids (a single-id map cannot hold 1000).
    each_runner("s18", &OWNERSHIP_RUNNERS, |who, store, ctx| {
        make_tree(ctx, &["foo=f", "bar/sub=s"]);
        let b = build_as(
            who,
            store,
            ctx,
            "FROM busybox\nENV owner 1000\nCOPY --chown=daemon foo /\nCOPY --chown=1000:nobody bar /baz\n\
             ARG group\nCOPY --chown=${owner}:${group} foo /foobis\n",
            &["--build-arg", "group=nobody"],
            &[],
        );
        let l = who.label();
        assert_eq!(b.owner("/foo"), (1, 1), "as {l}");
        assert_eq!(b.owner("/baz/sub"), (1000, 65534), "as {l}");
        assert_eq!(b.owner("/foobis"), (1000, 65534), "as {l}");
        let err = build_error_as(
            who,
            store,
            ctx,
            "FROM busybox\nCOPY --chown=nosuchuser foo /\n",
            &[],
            &[],
        );
        assert!(err.contains("unable to find user nosuchuser"), "{err}");
        assert!(err.contains(":2:"), "{err}");
    });
}

#[test]
fn s41_shell_entrypoint_clears_inherited_cmd() {
    each_runner("s41", &RUNNERS, |who, store, ctx| {
        build_as(
            who,
            store,
            ctx,
            "FROM busybox\nCMD [\"test\"]\n",
            &["-t", "base"],
            &[],
        );
        let b = build_as(
            who,
            store,
            ctx,
            "FROM base\nSHELL [\"ls\"]\nENTRYPOINT my entrypoint\n",
            &[],
            &[],
        );
        let c = &b.inspect()["config"]["config"];
        assert_eq!(c["Entrypoint"], serde_json::json!(["ls", "my entrypoint"]));
        assert!(c.get("Cmd").is_none() || c["Cmd"].is_null(), "{c}");
    });
}

#[test]
fn s44_global_arg_in_from() {
    each_runner("s44", &RUNNERS, |who, store, ctx| {
        let b = build_as(
            who,
            store,
            ctx,
            "ARG tag=nosuchtag\nFROM busybox:${tag}\n",
            &["--build-arg", "tag=latest"],
            &[],
        );
        assert!(b.path("/bin/busybox").is_file());
        let err = build_error_as(
            who,
            store,
            ctx,
            "ARG tag=nosuchtag\nFROM busybox:${tag}\n",
            &[],
            &[],
        );
        assert!(err.contains("nosuchtag") && err.contains(":2:"), "{err}");
    });
}

#[test]
fn s52_s53_stage_names_and_images_in_from() {
    each_runner("s52_s53", &RUNNERS, |who, store, ctx| {
        make_tree(ctx, &["foo=foo-contents"]);
        let b = build_as(
            who,
            store,
            ctx,
            "FROM scratch AS STAge0\nCOPY foo bar\nFROM scratch AS staGE1\nCOPY --from=staGE0 bar baz\n\
             FROM scratch\nCOPY --from=stage1 baz bax\n",
            &["--target", "Stage1"],
            &[],
        );
        assert_eq!(b.read("/baz"), "foo-contents");
        let b = build_as(
            who,
            store,
            ctx,
            "FROM scratch\nCOPY --from=busybox /etc/passwd test\n",
            &[],
            &[],
        );
        assert!(b.read("/test").starts_with("root:x:0:0"));
        let b = build_as(
            who,
            store,
            ctx,
            "FROM scratch AS busybox\nCOPY foo /etc/passwd\nFROM scratch\nCOPY --from=busybox /etc/passwd test\n",
            &[],
            &[],
        );
        assert_eq!(b.read("/test"), "foo-contents", "a stage shadows the image");
    });
}

#[test]
fn s61_s63_s65_heredoc_copy() {
    each_runner("s61_s63_s65", &RUNNERS, |who, store, ctx| {
        let b = build_as(
            who,
            store,
            ctx,
            "FROM busybox\nWORKDIR /dest\nCOPY <<EOF single\nsingle file\nEOF\n\
             COPY <<EOF <<EOF2 double/\nfirst file\nEOF\nsecond file\nEOF2\n\
             COPY --chmod=777 <<EOF /permfiles/all\nx\nEOF\n\
             ARG name=world\nCOPY <<EOF /dest/c1\nHello ${name}!\nEOF\n\
             COPY <<'EOF' /dest/c2\nHello ${name}!\nEOF\n\
             COPY <<\"EOF\" /dest/c3\nHello ${name}!\nEOF\n\
             COPY <<EOF /dest/c4\nHello '${name}'!\nEOF\n\
             COPY <<EOF /dest/foo-copy\n\tfoo\nEOF\n\
             COPY <<-EOF /dest/bar-copy\n\tbar\nEOF\n",
            &[],
            &[],
        );
        assert_eq!(b.read("/dest/single"), "single file\n");
        assert_eq!(b.read("/dest/double/EOF"), "first file\n");
        assert_eq!(b.read("/dest/double/EOF2"), "second file\n");
        assert_eq!(b.mode("/permfiles/all"), 0o777);
        assert_eq!(b.mode("/dest/single"), 0o644);
        assert_eq!(b.read("/dest/c1"), "Hello world!\n");
        assert_eq!(b.read("/dest/c2"), "Hello ${name}!\n");
        assert_eq!(b.read("/dest/c3"), "Hello ${name}!\n");
        assert_eq!(b.read("/dest/c4"), "Hello 'world'!\n");
        assert_eq!(b.read("/dest/foo-copy"), "\tfoo\n");
        assert_eq!(b.read("/dest/bar-copy"), "bar\n");
    });
}

#[test]
fn s25_add_tar_symlink_destination_is_followed_inside_rootfs() {
    let store = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink("../tmp/symlink-target", src.path().join("symlink")).unwrap();
    assert!(
        std::process::Command::new("tar")
            .arg("-cf")
            .arg(ctx.path().join("t.tar"))
            .arg("-C")
            .arg(src.path())
            .arg("symlink")
            .status()
            .unwrap()
            .success()
    );
    make_tree(ctx.path(), &["foo=content0"]);
    let b = build(
        store.path(),
        ctx.path(),
        "FROM scratch\nADD t.tar /\nCOPY foo /symlink/\n",
        &[],
    );
    assert_eq!(b.read("/tmp/symlink-target/foo"), "content0");
    assert!(
        b.path("/symlink")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    // Nothing landed on the host's /tmp/symlink-target.
    assert!(
        !std::path::Path::new("/tmp/symlink-target/foo").exists() || {
            let m = std::fs::metadata("/tmp/symlink-target/foo").unwrap();
            m.ino() != b.path("/tmp/symlink-target/foo").metadata().unwrap().ino()
        }
    );
}

#[test]
fn s30_add_archive_through_absolute_symlink_with_implied_parents() {
    let store = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    let src = tempfile::tempdir().unwrap();
    let sh = |script: &str| {
        let st = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(src.path())
            .status()
            .unwrap();
        assert!(st.success(), "{script}");
    };
    let out = ctx.path().display().to_string();
    sh(&format!(
        "mkdir -p r/run r/var && ln -s /run r/var/run && tar -C r -cf {out}/rootfs.tar run var var/run"
    ));
    sh(&format!(
        "mkdir -p p/var/run/act/actions/broad/.git && echo ref > p/var/run/act/actions/broad/.git/HEAD && \
         ln p/var/run/act/actions/broad/.git/HEAD p/var/run/act/actions/broad/.git/HEAD.link && \
         tar -C p --no-recursion -cf {out}/payload.tar var/run/act/actions/broad/.git/HEAD var/run/act/actions/broad/.git/HEAD.link"
    ));
    let b = build(
        store.path(),
        ctx.path(),
        "FROM scratch\nADD rootfs.tar /\nADD payload.tar /\n",
        &[],
    );
    assert_eq!(b.read("/run/act/actions/broad/.git/HEAD"), "ref\n");
    let a = b
        .path("/run/act/actions/broad/.git/HEAD")
        .metadata()
        .unwrap();
    let l = b
        .path("/run/act/actions/broad/.git/HEAD.link")
        .metadata()
        .unwrap();
    assert_eq!(a.ino(), l.ino(), "HEAD.link is a hardlink to HEAD");
    assert!(
        b.path("/var/run")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// Serves one file over HTTP on 127.0.0.1 for a bounded number of requests.
fn serve(body: &'static [u8], requests: usize) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let handle = std::thread::spawn(move || {
        // Bounded in time too: a build that never asks must not hang the test.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut served = 0;
        while served < requests && std::time::Instant::now() < deadline {
            let mut conn = match listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                Err(_) => return,
            };
            served += 1;
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(body);
        }
    });
    (format!("http://{addr}"), handle)
}

#[test]
fn s27_add_url_with_checksum() {
    let store = tempfile::tempdir().unwrap();
    let ctx = tempfile::tempdir().unwrap();
    let body: &'static [u8] = b"remote contents\n";
    let sum = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body))
    };
    let (url, server) = serve(body, 3);
    let b = build(
        store.path(),
        ctx.path(),
        &format!(
            "FROM scratch\nADD {url}/files/remote.txt /\nADD --checksum=sha256:{sum} {url}/files/remote.txt /named.txt\n"
        ),
        &[],
    );
    assert_eq!(b.read("/remote.txt"), "remote contents\n");
    assert_eq!(b.read("/named.txt"), "remote contents\n");
    let err = build_error(
        store.path(),
        ctx.path(),
        &format!(
            "FROM scratch\nADD --checksum=sha256:{} {url}/files/remote.txt /\n",
            "0".repeat(64)
        ),
        &[],
    );
    assert!(
        err.contains("checksum mismatch") && err.contains(":2:"),
        "{err}"
    );
    server.join().unwrap();
}
