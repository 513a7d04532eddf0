//! Cache export and import ([6/9] item 7): two fresh stores seeded from one saved base archive;
//! the second, fed by `--cache-from` of the first's `--cache-to`, reuses every step and makes
//! the same image, and with `mounts=true` sees the first build's cache-mount file. The export
//! is an OCI layout skopeo reads, with an image manifest and no plaintext build arg. As root
//! and as the unprivileged user.

mod common;

use std::path::Path;

use common::build::{
    Built, OWNERSHIP_RUNNERS, Runner, build_as, build_error_as, have, kiln_ok_as, runner_dir,
    runner_store, skopeo_inspect,
};

const DOCKERFILE: &str = "FROM busybox AS tools\n\
    COPY tool.txt /tool.txt\n\
    RUN cat /tool.txt > /tool.out\n\
    FROM busybox\n\
    ARG SECRETISH\n\
    WORKDIR /w\n\
    COPY a.txt /a.txt\n\
    RUN --mount=type=cache,target=/c,id=c-${SECRETISH} test -n \"$SECRETISH\" && echo warm > /c/from-first && chown 1234:5678 /c/from-first && echo ran > /ran.txt\n\
    COPY --from=tools /tool.out /tool.out\n\
    RUN echo done > /done.txt\n";

/// A build that reads the cache mount with a different instruction (so it misses).
const READER: &str = "FROM busybox\n\
    ARG SECRETISH\n\
    RUN --mount=type=cache,target=/c,id=c-${SECRETISH} cat /c/from-first > /seen.txt && stat -c %u:%g /c/from-first > /owner.txt\n";

const MARKER: &str = "plaintext-marker-123";

/// `(instruction, cached)` of each step that has a key (makes or may make a layer).
fn keyed(b: &Built) -> Vec<(String, bool)> {
    b.metadata["kiln.steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s.get("key").is_some())
        .map(|s| {
            (
                s["instruction"].as_str().unwrap().to_string(),
                s["cached"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// A fresh store with `busybox:latest` loaded from `archive`.
fn seeded(who: Runner, archive: &Path) -> tempfile::TempDir {
    let store = runner_dir(who);
    kiln_ok_as(who, store.path(), &["load".as_ref(), archive.as_os_str()]);
    store
}

fn write(ctx: &Path, rel: &str, text: &str) {
    std::fs::write(ctx.join(rel), text).unwrap();
}

fn every_file(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            every_file(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn exchange(who: Runner) {
    let test = format!("cache_exchange_{}", who.label());
    let Some(origin) = runner_store(who, &test) else {
        return;
    };
    // One saved base archive seeds both stores.
    let files = runner_dir(who);
    let archive = files.path().join("busybox.tar");
    kiln_ok_as(
        who,
        origin.path(),
        &[
            "save".as_ref(),
            "busybox:latest".as_ref(),
            "-o".as_ref(),
            archive.as_os_str(),
        ],
    );
    let (one, two) = (seeded(who, &archive), seeded(who, &archive));
    let ctx = runner_dir(who);
    write(ctx.path(), "a.txt", "a");
    write(ctx.path(), "tool.txt", "tool");
    let cache = files.path().join("cache");
    let to = format!("type=local,dest={},mode=max,mounts=true", cache.display());
    let from = format!("type=local,src={}", cache.display());
    let sde = [("SOURCE_DATE_EPOCH", "1700000000")];
    let arg = format!("SECRETISH={MARKER}");
    let first = build_as(
        who,
        one.path(),
        ctx.path(),
        DOCKERFILE,
        &["--build-arg", &arg, "--cache-to", &to],
        &sde,
    );
    assert!(keyed(&first).iter().all(|(_, c)| !c), "{:?}", keyed(&first));
    assert!(cache.join("index.json").is_file());

    let second = build_as(
        who,
        two.path(),
        ctx.path(),
        DOCKERFILE,
        &["--build-arg", &arg, "--cache-from", &from],
        &sde,
    );
    let steps = keyed(&second);
    assert!(steps.len() >= 6, "{steps:?}");
    assert!(
        steps.iter().all(|(_, c)| *c),
        "every step reused: {steps:?}"
    );
    assert_eq!(second.id, first.id, "the same image");
    assert_eq!(second.read("ran.txt"), "ran\n");
    assert_eq!(second.read("tool.out"), "tool");

    // The imported records are local now: a build without --cache-from still hits.
    let third = build_as(
        who,
        two.path(),
        ctx.path(),
        DOCKERFILE,
        &["--build-arg", &arg],
        &sde,
    );
    assert!(keyed(&third).iter().all(|(_, c)| *c), "{:?}", keyed(&third));

    // The cache mount came along: a new RUN (a miss) sees the first build's file and owner.
    let reader = build_as(
        who,
        two.path(),
        ctx.path(),
        READER,
        &["--build-arg", &arg],
        &sde,
    );
    assert!(keyed(&reader).iter().all(|(_, c)| !c));
    assert_eq!(reader.read("seen.txt"), "warm\n");
    assert_eq!(reader.read("owner.txt"), "1234:5678\n");

    // Without SOURCE_DATE_EPOCH, a store built only from imported hits makes the exporter's
    // image too: the records carry the history time the exporting build used.
    let plain = files.path().join("cache-plain");
    let plain_to = format!("type=local,dest={},mode=max", plain.display());
    let plain_from = format!("type=local,src={}", plain.display());
    let made = build_as(
        who,
        one.path(),
        ctx.path(),
        DOCKERFILE,
        &["--build-arg", &arg, "--cache-to", &plain_to],
        &[],
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let three = seeded(who, &archive);
    let imported = build_as(
        who,
        three.path(),
        ctx.path(),
        DOCKERFILE,
        &["--build-arg", &arg, "--cache-from", &plain_from],
        &[],
    );
    assert!(
        keyed(&imported).iter().all(|(_, c)| *c),
        "{:?}",
        keyed(&imported)
    );
    assert_eq!(
        imported.id, made.id,
        "the exporter's image, timestamps included"
    );

    // No plaintext build arg leaves the machine: not in any file of the export (layers
    // decompressed too), while the local record of the first store does hold it (so this
    // test would see a leak).
    let mut leaked = Vec::new();
    for (name, data) in common::build::blob_contents(&cache) {
        if data.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()) {
            leaked.push(name);
        }
    }
    let mut all = Vec::new();
    every_file(&cache, &mut all);
    for p in &all {
        let data = std::fs::read(p).unwrap();
        if data.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()) {
            leaked.push(p.display().to_string());
        }
    }
    assert!(leaked.is_empty(), "the marker is in {leaked:?}");
    let mut local = Vec::new();
    every_file(&one.path().join("kiln/cache/records"), &mut local);
    assert!(
        local
            .iter()
            .any(|p| std::fs::read_to_string(p).unwrap().contains(MARKER)),
        "the local records hold the plaintext document (the cache id expands the build arg)"
    );
}

#[test]
fn a_fresh_store_reuses_an_exported_cache() {
    for who in OWNERSHIP_RUNNERS {
        exchange(who);
    }
}

/// skopeo reads the export as an OCI layout whose `kiln-cache` is an image manifest.
#[test]
fn skopeo_reads_the_export_as_an_image_manifest() {
    let who = Runner::Root;
    if !have("skopeo_reads_the_export_as_an_image_manifest", "skopeo") {
        return;
    }
    let Some(store) = runner_store(who, "skopeo_reads_the_export_as_an_image_manifest") else {
        return;
    };
    let ctx = runner_dir(who);
    write(ctx.path(), "a.txt", "a");
    let out = tempfile::tempdir().unwrap();
    // DEST does not exist yet; kiln makes it.
    let dest = out.path().join("nested/cache");
    let to = format!("type=local,dest={}", dest.display());
    build_as(
        who,
        store.path(),
        ctx.path(),
        "FROM busybox\nCOPY a.txt /a.txt\nRUN echo x > /x\n",
        &["--cache-to", &to],
        &[],
    );
    let raw = skopeo_inspect(&format!("oci:{}:kiln-cache", dest.display()), true).unwrap();
    assert_eq!(
        raw["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        raw["config"]["mediaType"],
        "application/vnd.kiln.cache.v1+json"
    );
    assert_eq!(raw["layers"].as_array().unwrap().len(), 2, "{raw}");
    // Written again (a second build, another step): one manifest still, blobs kiln did not
    // make are left alone.
    std::fs::write(dest.join("blobs/sha256/not-kilns"), "x").unwrap();
    build_as(
        who,
        store.path(),
        ctx.path(),
        "FROM busybox\nCOPY a.txt /a.txt\nRUN echo y > /y\n",
        &["--cache-to", &to],
        &[],
    );
    let raw = skopeo_inspect(&format!("oci:{}:kiln-cache", dest.display()), true).unwrap();
    assert_eq!(raw["layers"].as_array().unwrap().len(), 2, "{raw}");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["manifests"].as_array().unwrap().len(), 1);
    assert!(dest.join("blobs/sha256/not-kilns").exists());
}

/// Bad specs stop the build before it starts; a source that is not a cache is a warning.
#[test]
fn bad_cache_specs() {
    let who = Runner::Root;
    let Some(store) = runner_store(who, "bad_cache_specs") else {
        return;
    };
    let ctx = runner_dir(who);
    let df = "FROM busybox\nRUN echo ran > /ran\n";
    for (flag, spec, says) in [
        ("--cache-to", "type=local", "dest=DIR is missing"),
        ("--cache-to", "type=s3,dest=/x", "unknown type \"s3\""),
        ("--cache-to", "type=local,dest=/x,mode=all", "min or max"),
        (
            "--cache-to",
            "type=local,dest=/x,colour=red",
            "unknown option \"colour\"",
        ),
        ("--cache-from", "type=local", "src=DIR is missing"),
        (
            "--cache-from",
            "type=registry,ref=example.com/app:cache",
            "registry cache (type=registry) is not supported yet",
        ),
        ("--cache-from", "example.com/app:cache", "not supported yet"),
    ] {
        let err = build_error_as(who, store.path(), ctx.path(), df, &[flag, spec], &[]);
        assert!(
            err.contains(flag) && err.contains(says),
            "{flag} {spec}: {err}"
        );
        assert!(!err.contains("ran"), "nothing ran: {err}");
    }
    let missing = ctx.path().join("no-such-cache");
    let not_cache = runner_dir(who);
    std::fs::write(not_cache.path().join("index.json"), "{}").unwrap();
    for src in [missing.as_path(), not_cache.path()] {
        let spec = format!("type=local,src={}", src.display());
        let b = build_as(
            who,
            store.path(),
            ctx.path(),
            df,
            &["--cache-from", &spec],
            &[],
        );
        assert!(b.stderr().contains("warning:"), "{}", b.stderr());
        assert_eq!(b.read("ran"), "ran\n");
    }
}

/// The records in an export's config.
fn exported_records(dest: &Path) -> usize {
    let raw = cache_manifest(dest);
    let digest = raw["config"]["digest"].as_str().unwrap();
    let config: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dest.join("blobs/sha256").join(&digest["sha256:".len()..])).unwrap(),
    )
    .unwrap();
    config["records"].as_array().unwrap().len()
}

/// The `kiln-cache` manifest, read through index.json.
fn cache_manifest(dest: &Path) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    serde_json::from_slice(
        &std::fs::read(dest.join("blobs/sha256").join(&digest["sha256:".len()..])).unwrap(),
    )
    .unwrap()
}

/// `mode=min` (the default) exports the target stage's chain; `mode=max` every stage.
#[test]
fn mode_min_exports_the_target_chain_only() {
    let who = Runner::Root;
    let Some(store) = runner_store(who, "mode_min_exports_the_target_chain_only") else {
        return;
    };
    let ctx = runner_dir(who);
    write(ctx.path(), "tool.txt", "tool");
    let df = "FROM busybox AS tools\nRUN echo t > /t\n\
              FROM busybox AS base\nRUN echo b > /b\n\
              FROM base\nCOPY --from=tools /t /t\nRUN echo f > /f\n";
    let out = tempfile::tempdir().unwrap();
    let (min, max) = (out.path().join("min"), out.path().join("max"));
    build_as(
        who,
        store.path(),
        ctx.path(),
        df,
        &[
            "--cache-to",
            &format!("type=local,dest={}", min.display()),
            "--cache-to",
            &format!("type=local,dest={},mode=max", max.display()),
        ],
        &[],
    );
    // base's RUN, the final stage's COPY and RUN; max adds tools' RUN.
    assert_eq!(exported_records(&min), 3);
    assert_eq!(exported_records(&max), 4);
}
