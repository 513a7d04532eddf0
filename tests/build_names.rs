//! File names that are not UTF-8, end to end. Linux names are bytes and BuildKit copies them as
//! they are: a context holding one must not break any COPY, `.dockerignore` matches them, and
//! they reach the layers (PAX `path`/`linkpath` records with the raw bytes, as Go's archive/tar
//! writes them), the snapshots, the upperdir differ and the exports byte for byte. GNU tar and
//! umoci are the referees for the layers.
//!
//! Each test runs as root and as `kiln-test` (subordinate ids), the user that matters for the
//! rootless path.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::build::{Built, Runner, build_as, have, runner_dir, runner_store};

const RUNNERS: [Runner; 2] = [Runner::Root, Runner::User("kiln-test")];

/// `caf\xe9.txt`: "café.txt" in Latin-1, not valid UTF-8.
const CAFE: &[u8] = b"caf\xe9.txt";
/// `d\xe9r`: a directory with a Latin-1 name.
const DIR: &[u8] = b"d\xe9r";
/// `f\xff`: a byte that is never UTF-8.
const FF: &[u8] = b"f\xff";

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

fn join(parts: &[&[u8]]) -> Vec<u8> {
    parts.join(&b'/')
}

/// A context with non-UTF-8 names: `caf\xe9.txt`, `d\xe9r/f\xff`, `d\xe9r/ok.txt`, `keep.txt`.
fn names_context(ctx: &Path) {
    std::fs::write(ctx.join(os(CAFE)), "latin1\n").unwrap();
    std::fs::create_dir(ctx.join(os(DIR))).unwrap();
    std::fs::write(ctx.join(os(DIR)).join(os(FF)), "ff\n").unwrap();
    std::fs::write(ctx.join(os(DIR)).join("ok.txt"), "ok\n").unwrap();
    std::fs::write(ctx.join("keep.txt"), "keep\n").unwrap();
}

/// Runs `f(who, store, ctx)` for each available runner with a busybox store and a fresh context.
fn each(test: &str, f: impl Fn(Runner, &Path, &Path)) {
    for who in RUNNERS {
        let Some(store) = runner_store(who, test) else {
            continue;
        };
        let ctx = runner_dir(who);
        eprintln!("{test}: as {}", who.label());
        f(who, store.path(), ctx.path());
    }
}

/// The layer blobs of the built image, bottom first.
fn layer_blobs(b: &Built) -> Vec<PathBuf> {
    b.inspect()["manifest"]["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            let d = l["digest"].as_str().unwrap();
            b.root
                .join("blobs/sha256")
                .join(d.strip_prefix("sha256:").unwrap())
        })
        .collect()
}

/// The member names of a layer blob as GNU tar reads them, exact bytes (no quoting).
fn gnu_tar_names(blob: &Path) -> Vec<Vec<u8>> {
    let out = Command::new("tar")
        .args(["--quoting-style=literal", "-tf"])
        .arg(blob)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "tar -tf {}: {}",
        blob.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
        .split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// The uncompressed tar of a gzip layer blob.
fn layer_tar(blob: &Path) -> Vec<u8> {
    let out = Command::new("gzip").arg("-dc").arg(blob).output().unwrap();
    assert!(out.status.success(), "gzip -dc {}", blob.display());
    out.stdout
}

/// One PAX record, `"<len> key=value\n"`.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = |n: usize| {
        let mut r = format!("{n} {key}=").into_bytes();
        r.extend_from_slice(value);
        r.push(b'\n');
        r
    };
    let mut n = key.len() + value.len() + 3;
    while body(n).len() != n {
        n = body(n).len();
    }
    body(n)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn show(names: &[Vec<u8>]) -> Vec<String> {
    names
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect()
}

/// `umoci unpack` of `layout:tag` into a new bundle; its rootfs.
fn umoci_rootfs(layout: &Path, tag: &str, bundle: &Path) -> PathBuf {
    let out = Command::new("umoci")
        .arg("unpack")
        .arg("--image")
        .arg(format!("{}:{tag}", layout.display()))
        .arg(bundle)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "umoci unpack: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bundle.join("rootfs")
}

#[test]
fn copy_from_a_context_with_non_utf8_names() {
    const T: &str = "copy_from_a_context_with_non_utf8_names";
    each(T, |who, store, ctx| {
        names_context(ctx);

        // A COPY of an unrelated file is not disturbed by them.
        let b = build_as(
            who,
            store,
            ctx,
            "FROM scratch\nCOPY keep.txt /k\n",
            &[],
            &[],
        );
        assert_eq!(b.read("k"), "keep\n");

        // `COPY .` copies them with their exact bytes; a wildcard matches them too.
        let oci = runner_dir(who);
        let oci_dest = format!("type=oci,dest={},tar=false", oci.path().display());
        let b = build_as(
            who,
            store,
            ctx,
            "FROM scratch\nCOPY . /app/\nCOPY caf* d?r /wild/\n\
             COPY --exclude=caf* --exclude=d?r/ok* . /ex/\n\
             COPY --parents d*r/f? /par/\n",
            &["-t", "names:t", "-o", &oci_dest],
            &[],
        );
        let app = b.path("app");
        assert_eq!(
            std::fs::read_to_string(app.join(os(CAFE))).unwrap(),
            "latin1\n"
        );
        assert_eq!(
            std::fs::read_to_string(app.join(os(DIR)).join(os(FF))).unwrap(),
            "ff\n"
        );
        assert!(app.join(os(DIR)).is_dir());
        let wild = b.path("wild");
        assert_eq!(
            std::fs::read_to_string(wild.join(os(CAFE))).unwrap(),
            "latin1\n"
        );
        assert_eq!(
            std::fs::read_to_string(wild.join(os(FF))).unwrap(),
            "ff\n",
            "`d?r` matches d\\xe9r (one byte, one character, as Go's filepath.Match)"
        );

        // --exclude and --parents patterns match the names' bytes.
        let ex = b.path("ex");
        assert!(!ex.join(os(CAFE)).exists());
        assert!(!ex.join(os(DIR)).join("ok.txt").exists());
        assert!(ex.join(os(DIR)).join(os(FF)).is_file());
        assert!(ex.join("keep.txt").is_file());
        let par = b.path("par");
        assert!(par.join(os(DIR)).join(os(FF)).is_file());
        assert!(!par.join(os(DIR)).join("ok.txt").exists());

        // GNU tar reads the same bytes from the layer, and the PAX records carry them.
        let blobs = layer_blobs(&b);
        let names = gnu_tar_names(&blobs[0]);
        for want in [
            join(&[b"app", CAFE]),
            join(&[b"app", DIR, b""]),
            join(&[b"app", DIR, FF]),
        ] {
            assert!(
                names.contains(&want),
                "{:?} not in {:?}",
                String::from_utf8_lossy(&want),
                show(&names)
            );
        }
        let tar = layer_tar(&blobs[0]);
        assert!(contains(&tar, &pax_record("path", &join(&[b"app", CAFE]))));
        assert!(contains(
            &tar,
            &pax_record("path", &join(&[b"app", DIR, b""]))
        ));
        assert!(contains(
            &tar,
            &pax_record("path", &join(&[b"app", DIR, FF]))
        ));

        // umoci unpacks the exported image to the same names.
        if have(T, "umoci") {
            let bundle = tempfile::tempdir().unwrap();
            let rootfs = umoci_rootfs(oci.path(), "t", &bundle.path().join("b"));
            assert_eq!(
                std::fs::read(rootfs.join("app").join(os(CAFE))).unwrap(),
                b"latin1\n"
            );
            assert_eq!(
                std::fs::read(rootfs.join("app").join(os(DIR)).join(os(FF))).unwrap(),
                b"ff\n"
            );
        }
    });
}

#[test]
fn dockerignore_matches_non_utf8_names() {
    const T: &str = "dockerignore_matches_non_utf8_names";
    each(T, |who, store, ctx| {
        names_context(ctx);
        std::fs::write(ctx.join(".dockerignore"), "caf*\nd?r\n!d*r/ok.txt\n").unwrap();
        let b = build_as(
            who,
            store,
            ctx,
            "FROM scratch\nCOPY keep.txt /k\nCOPY . /app/\n",
            &[],
            &[],
        );
        assert_eq!(b.read("k"), "keep\n");
        let app = b.path("app");
        assert!(!app.join(os(CAFE)).exists(), "caf* excludes caf\\xe9.txt");
        assert!(
            !app.join(os(DIR)).join(os(FF)).exists(),
            "d?r excludes d\\xe9r"
        );
        assert_eq!(
            std::fs::read_to_string(app.join(os(DIR)).join("ok.txt")).unwrap(),
            "ok\n",
            "the exception re-includes d\\xe9r/ok.txt"
        );
    });
}

/// RUN makes, links to and then removes non-UTF-8 names: the upperdir differ, the snapshots
/// (a later RUN and COPY --from read them), whiteouts, and the type=local export.
fn run_names(who: Runner, store: &Path, ctx: &Path, env: &[(&str, &str)]) {
    let b = build_as(
        who,
        store,
        ctx,
        "FROM busybox AS base\n\
         RUN mkdir \"$(printf '/n\\351')\" && echo hi > \"$(printf '/n\\351/a\\351b')\" && \
             ln -s \"$(printf 'a\\351b')\" \"$(printf '/n\\351/l\\377')\" && \
             echo gone > \"$(printf '/n\\351/rm\\351')\"\n\
         RUN cat \"$(printf '/n\\351/l\\377')\" > /seen && rm \"$(printf '/n\\351/rm\\351')\"\n\
         FROM scratch\n\
         COPY --from=base /seen /seen\n\
         COPY --from=base /n? /out/\n",
        &[],
        env,
    );
    assert_eq!(b.read("seen"), "hi\n", "the next RUN reads the name");
    let out = b.path("out");
    assert_eq!(
        std::fs::read_to_string(out.join(os(b"a\xe9b"))).unwrap(),
        "hi\n"
    );
    assert_eq!(
        std::fs::read_link(out.join(os(b"l\xff")))
            .unwrap()
            .as_os_str()
            .as_bytes(),
        b"a\xe9b"
    );
    assert!(!out.join(os(b"rm\xe9")).exists(), "removed by the 2nd RUN");

    // The base stage's RUN layers: names, link target and whiteout with their bytes.
    let base = common::build::try_build_as(
        who,
        store,
        ctx,
        "FROM busybox\n\
         RUN mkdir \"$(printf '/n\\351')\" && echo hi > \"$(printf '/n\\351/a\\351b')\" && \
             ln -s \"$(printf 'a\\351b')\" \"$(printf '/n\\351/l\\377')\" && \
             echo gone > \"$(printf '/n\\351/rm\\351')\"\n\
         RUN rm \"$(printf '/n\\351/rm\\351')\"\n",
        &[],
        env,
    );
    assert!(base.output.status.success(), "{}", base.stderr());
    let blobs = layer_blobs(&base);
    let first = &blobs[blobs.len() - 2];
    let names = gnu_tar_names(first);
    for want in [&b"n\xe9/a\xe9b"[..], b"n\xe9/l\xff", b"n\xe9/rm\xe9"] {
        assert!(
            names.iter().any(|n| n == want),
            "{:?} not in {:?}",
            String::from_utf8_lossy(want),
            show(&names)
        );
    }
    let tar = layer_tar(first);
    assert!(contains(&tar, &pax_record("path", b"n\xe9/a\xe9b")));
    assert!(contains(&tar, &pax_record("linkpath", b"a\xe9b")));
    let second = gnu_tar_names(blobs.last().unwrap());
    assert!(
        second.iter().any(|n| n == b"n\xe9/.wh.rm\xe9"),
        "whiteout of rm\\xe9 not in {:?}",
        show(&second)
    );
    assert!(!base.path("n\u{FFFD}").exists());
    assert_eq!(
        std::fs::read_to_string(base.path("").join(os(b"n\xe9/a\xe9b"))).unwrap(),
        "hi\n"
    );
    assert!(!base.path("").join(os(b"n\xe9/rm\xe9")).exists());
}

#[test]
fn run_makes_non_utf8_names() {
    each("run_makes_non_utf8_names", |who, store, ctx| {
        run_names(who, store, ctx, &[]);
    });
}

#[test]
fn run_makes_non_utf8_names_copy_snapshotter() {
    each(
        "run_makes_non_utf8_names_copy_snapshotter",
        |who, store, ctx| {
            run_names(who, store, ctx, &[("KILN_SNAPSHOTTER", "copy")]);
        },
    );
}

/// A PAX extended header (`x`) with these records, for the next member.
fn append_pax(ar: &mut tar::Builder<Vec<u8>>, records: &[u8]) {
    let mut h = tar::Header::new_ustar();
    h.set_path("PaxHeaders.0/next").unwrap();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(records.len() as u64);
    h.set_mode(0o644);
    zero_ids(&mut h);
    h.set_cksum();
    ar.append(&h, records).unwrap();
}

fn zero_ids(h: &mut tar::Header) {
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
}

#[test]
fn add_extracts_non_utf8_names_from_a_tar() {
    const T: &str = "add_extracts_non_utf8_names_from_a_tar";
    each(T, |who, store, ctx| {
        // One member named in a PAX `path` record (as Go and kiln write them), one with the
        // raw bytes in the ustar name field (as GNU tar --format=gnu does), and a symlink
        // whose target is in a PAX `linkpath` record.
        let mut ar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_size(4);
        h.set_mode(0o644);
        zero_ids(&mut h);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_path("pax-name").unwrap();
        h.set_cksum();
        append_pax(&mut ar, &pax_record("path", b"p\xe9x"));
        ar.append(&h, &b"pax\n"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        zero_ids(&mut h);
        h.set_entry_type(tar::EntryType::Regular);
        h.as_old_mut().name[..4].copy_from_slice(b"r\xffw\0");
        h.set_cksum();
        ar.append(&h, &b"raw\n"[..]).unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(0);
        h.set_mode(0o777);
        zero_ids(&mut h);
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_path("lnk").unwrap();
        h.set_cksum();
        append_pax(&mut ar, &pax_record("linkpath", b"p\xe9x"));
        ar.append(&h, &[][..]).unwrap();
        std::fs::write(ctx.join("names.tar"), ar.into_inner().unwrap()).unwrap();

        let b = build_as(
            who,
            store,
            ctx,
            "FROM scratch\nADD names.tar /x/\n",
            &[],
            &[],
        );
        let x = b.path("x");
        assert_eq!(std::fs::read(x.join(os(b"p\xe9x"))).unwrap(), b"pax\n");
        assert_eq!(std::fs::read(x.join(os(b"r\xffw"))).unwrap(), b"raw\n");
        assert_eq!(
            std::fs::read_link(x.join("lnk"))
                .unwrap()
                .as_os_str()
                .as_bytes(),
            b"p\xe9x"
        );
        let blob = &layer_blobs(&b)[0];
        let names = gnu_tar_names(blob);
        assert!(
            names.iter().any(|n| n == b"x/p\xe9x") && names.iter().any(|n| n == b"x/r\xffw"),
            "{:?}",
            show(&names)
        );
        // Written back as Go's archive/tar would: PAX records with the raw bytes.
        let tar = layer_tar(blob);
        assert!(contains(&tar, &pax_record("path", b"x/p\xe9x")));
        assert!(contains(&tar, &pax_record("path", b"x/r\xffw")));
        assert!(contains(&tar, &pax_record("linkpath", b"p\xe9x")));
    });
}

#[test]
fn run_bind_mounts_a_context_with_non_utf8_names() {
    const T: &str = "run_bind_mounts_a_context_with_non_utf8_names";
    each(T, |who, store, ctx| {
        names_context(ctx);
        // A link whose target is a non-UTF-8 directory: the resolved source is not UTF-8.
        std::os::unix::fs::symlink(os(DIR), ctx.join("dlink")).unwrap();
        // Something excluded, so the mount is the filtered copy of the context.
        std::fs::write(ctx.join(".dockerignore"), "keep.txt\n").unwrap();
        let b = build_as(
            who,
            store,
            ctx,
            "FROM busybox\n\
             RUN --mount=type=bind,target=/c cat \"$(printf '/c/caf\\351.txt')\" > /got && \
                 for f in /c/*; do echo \"${f#/c/}\"; done > /ls\n\
             RUN --mount=type=bind,source=dlink,target=/d cat \"$(printf '/d/f\\377')\" > /got2\n",
            &[],
            &[],
        );
        assert_eq!(b.read("got"), "latin1\n");
        assert_eq!(b.read("got2"), "ff\n");
        let ls = std::fs::read(b.path("ls")).unwrap();
        let listed: Vec<&[u8]> = ls.split(|&c| c == b'\n').collect();
        assert!(listed.contains(&CAFE) && listed.contains(&DIR), "{ls:?}");
        assert!(!listed.contains(&&b"keep.txt"[..]), "excluded: {ls:?}");
    });
}
