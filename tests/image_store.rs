//! The image store and its exports against the real tools: skopeo, umoci and podman read what
//! kiln writes (the store itself, OCI layouts and archives, docker-archives), and kiln loads what
//! they write. A test whose tool is missing prints one `SKIP` line and passes.

#[path = "common/skip.rs"]
mod skip;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln::image::{
    DockerArchiveImage, History, ImageConfig, ImageRef, LoadOptions, OciExportOptions, Store,
    StoredImage, load_file, parse_ref, write_docker_archive_file, write_oci_archive_file,
    write_oci_dir,
};
use kiln::layer::{Compression, LayerEntry, WriteOptions};

const NAME: &str = "kiln-test:latest";
const FULL: &str = "docker.io/library/kiln-test:latest";

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

fn skip_unless(tools: &[&str], test: &str) -> bool {
    for t in tools {
        if !have(t) {
            skip::skip(test, format!("`{t}` is not installed"));
            return false;
        }
    }
    true
}

/// Runs a command; panics with its output when it fails.
fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// A two-layer image: a base with a few files, and a second layer adding a file and deleting one
/// (a whiteout), tagged `kiln-test:latest`.
fn build_image(store: &Store, compression: Compression) -> StoredImage {
    let opts = WriteOptions {
        compression,
        source_date_epoch: None,
        zstd_workers: 2,
    };
    let base = vec![
        LayerEntry::dir("etc", 0o755).with_mtime(1_700_000_000),
        LayerEntry::file("etc/os-release", b"NAME=kiln-test\n".to_vec(), 0o644)
            .with_mtime(1_700_000_000),
        LayerEntry::file("etc/remove-me", b"gone soon\n".to_vec(), 0o600),
        LayerEntry::dir("bin", 0o755),
        LayerEntry::file("bin/tool", b"#!/bin/sh\necho tool\n".to_vec(), 0o755),
        LayerEntry::symlink("bin/alias", "tool"),
    ];
    let top = vec![
        LayerEntry::dir("app", 0o755),
        LayerEntry::file("app/hello.txt", b"hello from kiln\n".to_vec(), 0o644)
            .with_owner(1000, 1000),
        LayerEntry::whiteout("etc/remove-me"),
    ];
    let mut config = ImageConfig::new("linux", "amd64", None);
    config.created = Some("2024-01-01T00:00:00Z".to_string());
    let cc = config.container_config_mut();
    cc.env = vec!["PATH=/bin".into(), "GREETING=hi".into()];
    cc.cmd = vec!["/bin/tool".into()];
    cc.working_dir = "/app".into();
    cc.labels = BTreeMap::from([("org.example.a".into(), "1".into())]);
    cc.exposed_ports
        .insert("8080/tcp".into(), Default::default());
    let mut layers = Vec::new();
    for (i, entries) in [base, top].into_iter().enumerate() {
        let (w, d) = store.put_layer(entries, &opts).unwrap();
        config.push_layer(
            w.diff_id,
            History {
                created: Some("2024-01-01T00:00:00Z".into()),
                created_by: format!("COPY layer{i} /"),
                ..History::default()
            },
        );
        layers.push(d);
    }
    config.history.push(History {
        created_by: "CMD [\"/bin/tool\"]".into(),
        empty_layer: true,
        ..History::default()
    });
    let m = store.write_image(&config, &layers).unwrap();
    let name = parse_ref(NAME).unwrap();
    store.tag(&name, &m).unwrap();
    store.resolve(NAME).unwrap()
}

fn names() -> Vec<ImageRef> {
    vec![parse_ref(NAME).unwrap()]
}

/// Checks a rootfs unpacked from the test image.
fn check_rootfs(rootfs: &Path) {
    assert_eq!(
        fs::read_to_string(rootfs.join("app/hello.txt")).unwrap(),
        "hello from kiln\n"
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("etc/os-release")).unwrap(),
        "NAME=kiln-test\n"
    );
    assert!(
        !rootfs.join("etc/remove-me").exists(),
        "the whiteout was applied"
    );
    assert_eq!(
        fs::read_link(rootfs.join("bin/alias")).unwrap(),
        PathBuf::from("tool")
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = fs::metadata(rootfs.join("bin/tool"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
}

#[test]
fn skopeo_reads_the_store_itself() {
    if !skip_unless(&["skopeo"], "skopeo_reads_the_store_itself") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let img = build_image(&store, Compression::gzip());
    let target = format!("oci:{}:{FULL}", dir.path().display());
    let v = json(&run(Command::new("skopeo").args(["inspect", &target])));
    assert_eq!(v["Digest"], img.digest().to_string());
    assert_eq!(v["Architecture"], "amd64");
    assert_eq!(v["Os"], "linux");
    assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
    assert_eq!(v["Labels"]["org.example.a"], "1");
    let cfg = json(&run(
        Command::new("skopeo").args(["inspect", "--config", &target])
    ));
    assert_eq!(cfg["config"]["Cmd"][0], "/bin/tool");
    assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    // The raw config skopeo reads is byte for byte the blob kiln digested.
    let raw = run(Command::new("skopeo").args(["inspect", "--raw", "--config", &target]));
    assert_eq!(
        raw.as_bytes(),
        store.read_blob(img.id()).unwrap(),
        "config bytes"
    );
}

#[test]
fn oci_dir_export_is_read_by_skopeo_and_unpacked_by_umoci() {
    if !skip_unless(
        &["skopeo", "umoci"],
        "oci_dir_export_is_read_by_skopeo_and_unpacked_by_umoci",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let img = build_image(&store, Compression::gzip());
    for (label, compression) in [
        ("as-stored", None),
        ("uncompressed", Some(Compression::Uncompressed)),
        ("zstd", Some(Compression::zstd())),
        ("gzip-1", Some(Compression::Gzip(1))),
    ] {
        let out = dir.path().join(format!("oci-{label}"));
        let opts = OciExportOptions {
            compression,
            force_compression: label == "gzip-1",
        };
        let m = write_oci_dir(&store, &img, &names(), &out, &opts).unwrap();
        let index = json(&fs::read_to_string(out.join("index.json")).unwrap());
        let e = &index["manifests"][0];
        assert_eq!(
            e["annotations"]["org.opencontainers.image.ref.name"],
            "latest"
        );
        assert_eq!(e["annotations"]["io.containerd.image.name"], FULL);
        assert_eq!(e["digest"], m.digest().to_string());
        if compression.is_none() {
            assert_eq!(m.digest(), img.digest(), "unchanged manifest");
        } else {
            assert_ne!(m.digest(), img.digest(), "{label}: re-compressed layers");
        }

        let target = format!("oci:{}:latest", out.display());
        let v = json(&run(Command::new("skopeo").args(["inspect", &target])));
        assert_eq!(v["Digest"], m.digest().to_string(), "{label}");
        let cfg = json(&run(
            Command::new("skopeo").args(["inspect", "--config", &target])
        ));
        assert_eq!(
            cfg["rootfs"]["diff_ids"],
            serde_json::to_value(&img.config.rootfs.diff_ids).unwrap(),
            "{label}: diff_ids do not change"
        );
        let layer_types: Vec<String> = json(&run(
            Command::new("skopeo").args(["inspect", "--raw", &target])
        ))["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["mediaType"].as_str().unwrap().to_string())
            .collect();
        let want = match compression {
            None | Some(Compression::Gzip(_)) => "application/vnd.oci.image.layer.v1.tar+gzip",
            Some(Compression::Zstd(_)) => "application/vnd.oci.image.layer.v1.tar+zstd",
            Some(Compression::Uncompressed) => "application/vnd.oci.image.layer.v1.tar",
        };
        assert!(
            layer_types.iter().all(|t| t == want),
            "{label}: {layer_types:?}"
        );

        // umoci: gzip and uncompressed.
        if matches!(compression, Some(Compression::Zstd(_))) {
            continue;
        }
        let bundle = dir.path().join(format!("bundle-{label}"));
        run(Command::new("umoci").args([
            "unpack",
            "--rootless",
            "--image",
            &format!("{}:latest", out.display()),
            bundle.to_str().unwrap(),
        ]));
        check_rootfs(&bundle.join("rootfs"));
        let runtime = json(&fs::read_to_string(bundle.join("config.json")).unwrap());
        let env = runtime["process"]["env"].as_array().unwrap();
        assert!(env.iter().any(|e| e == "GREETING=hi"), "{env:?}");
        assert_eq!(runtime["process"]["cwd"], "/app");
    }
}

#[test]
fn oci_archive_export_is_deterministic_and_round_trips_through_skopeo() {
    if !skip_unless(
        &["skopeo"],
        "oci_archive_export_is_deterministic_and_round_trips_through_skopeo",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let img = build_image(&store, Compression::gzip());
    let a = dir.path().join("a.tar");
    let b = dir.path().join("b.tar");
    let opts = OciExportOptions::default();
    write_oci_archive_file(&store, &img, &names(), &a, &opts).unwrap();
    write_oci_archive_file(&store, &img, &names(), &b, &opts).unwrap();
    assert_eq!(
        fs::read(&a).unwrap(),
        fs::read(&b).unwrap(),
        "deterministic"
    );

    // Entries sorted, owned by 0:0 with mtime 0.
    let mut ar = tar::Archive::new(fs::File::open(&a).unwrap());
    let mut paths = Vec::new();
    for e in ar.entries().unwrap() {
        let e = e.unwrap();
        let h = e.header();
        assert_eq!(
            (h.uid().unwrap(), h.gid().unwrap(), h.mtime().unwrap()),
            (0, 0, 0)
        );
        paths.push(e.path().unwrap().display().to_string());
    }
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
    assert!(paths.contains(&"oci-layout".to_string()));

    let v =
        json(&run(Command::new("skopeo").args([
            "inspect",
            &format!("oci-archive:{}:latest", a.display()),
        ])));
    assert_eq!(v["Digest"], img.digest().to_string());

    // skopeo copies the store image into its own OCI archive; kiln loads it back.
    let copied = dir.path().join("copied.tar");
    run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        &format!("oci:{}:{FULL}", store.root().display()),
        &format!("oci-archive:{}:{FULL}", copied.display()),
    ]));
    let other = Store::open(&dir.path().join("other")).unwrap();
    let loaded = load_file(&other, &copied, &LoadOptions::default()).unwrap();
    assert_eq!(loaded.len(), 1);
    assert_eq!(loaded[0].names, names());
    assert_eq!(&loaded[0].id, img.id());
    assert_eq!(other.resolve(NAME).unwrap().id(), img.id());

    // And kiln's own OCI archive loads too.
    let third = Store::open(&dir.path().join("third")).unwrap();
    let loaded = load_file(&third, &a, &LoadOptions::default()).unwrap();
    assert_eq!(loaded[0].manifest.digest(), img.digest());
    assert_eq!(loaded[0].names, names());
}

#[test]
fn docker_archive_is_read_by_skopeo_and_loads_back() {
    if !skip_unless(
        &["skopeo"],
        "docker_archive_is_read_by_skopeo_and_loads_back",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store")).unwrap();
    let img = build_image(&store, Compression::zstd());
    let x = dir.path().join("x.tar");
    let item = [DockerArchiveImage {
        image: &img,
        names: names(),
    }];
    write_docker_archive_file(&store, &item, &x).unwrap();
    let y = dir.path().join("y.tar");
    write_docker_archive_file(&store, &item, &y).unwrap();
    assert_eq!(
        fs::read(&x).unwrap(),
        fs::read(&y).unwrap(),
        "deterministic"
    );

    // manifest.json as docker writes it.
    let mut ar = tar::Archive::new(fs::File::open(&x).unwrap());
    let mut manifest = None;
    for e in ar.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap() == Path::new("manifest.json") {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut e, &mut s).unwrap();
            manifest = Some(json(&s));
        }
    }
    let manifest = manifest.unwrap();
    assert_eq!(manifest[0]["RepoTags"][0], FULL);
    assert_eq!(manifest[0]["Config"], format!("{}.json", img.id().digest()));

    let v =
        json(&run(Command::new("skopeo").args([
            "inspect",
            &format!("docker-archive:{}", x.display()),
        ])));
    assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
    let cfg = json(&run(Command::new("skopeo").args([
        "inspect",
        "--config",
        &format!("docker-archive:{}", x.display()),
    ])));
    assert_eq!(cfg["config"]["WorkingDir"], "/app");
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--config",
        &format!("docker-archive:{}", x.display()),
    ]));
    assert_eq!(raw.as_bytes(), store.read_blob(img.id()).unwrap());

    // save → load into another store → the same image ID.
    let other = Store::open(&dir.path().join("other")).unwrap();
    let loaded = load_file(&other, &x, &LoadOptions::default()).unwrap();
    assert_eq!(&loaded[0].id, img.id());
    assert_eq!(loaded[0].names, names());
    let back = other.resolve(FULL).unwrap();
    assert_eq!(back.config, img.config);

    // skopeo converts the docker-archive to an OCI archive; kiln loads that too.
    let converted = dir.path().join("converted.tar");
    run(Command::new("skopeo").args([
        "--insecure-policy",
        "copy",
        &format!("docker-archive:{}", x.display()),
        &format!("oci-archive:{}:{NAME}", converted.display()),
    ]));
    let third = Store::open(&dir.path().join("third")).unwrap();
    let loaded = load_file(&third, &converted, &LoadOptions::default()).unwrap();
    assert_eq!(loaded[0].names, names());
    // skopeo re-marshals the config when it converts a Docker manifest to OCI (so the ID
    // changes); what it describes does not.
    let conv = third.resolve(NAME).unwrap();
    assert_eq!(conv.config.rootfs, img.config.rootfs);
    assert_eq!(
        conv.config.config.as_ref().unwrap().cmd,
        img.config.config.as_ref().unwrap().cmd
    );
}

/// podman with its own storage under `dir`, never the machine's.
fn podman(dir: &Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("runroot"))
        .arg("--storage-driver")
        .arg("vfs")
        .arg("--tmpdir")
        .arg(dir.join("tmp"));
    c
}

#[test]
fn podman_loads_kilns_docker_archive_and_kiln_loads_podmans() {
    let test = "podman_loads_kilns_docker_archive_and_kiln_loads_podmans";
    if !skip_unless(&["podman"], test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pdir = dir.path().join("podman");
    fs::create_dir_all(pdir.join("tmp")).unwrap();
    if let Ok(o) = podman(&pdir).args(["images", "-q"]).output()
        && !o.status.success()
    {
        skip::skip(
            test,
            format!(
                "podman does not work here: {}",
                String::from_utf8_lossy(&o.stderr)
                    .lines()
                    .next()
                    .unwrap_or("")
            ),
        );
        return;
    }
    let store = Store::open(&dir.path().join("store")).unwrap();
    let img = build_image(&store, Compression::gzip());
    let x = dir.path().join("x.tar");
    write_docker_archive_file(
        &store,
        &[DockerArchiveImage {
            image: &img,
            names: names(),
        }],
        &x,
    )
    .unwrap();
    let out = run(podman(&pdir).args(["load", "-i", x.to_str().unwrap()]));
    assert!(out.contains(FULL), "{out}");
    let v = json(&run(podman(&pdir).args(["image", "inspect", FULL])));
    assert_eq!(v[0]["Id"], img.id().digest(), "podman keeps the image ID");
    assert_eq!(v[0]["Config"]["WorkingDir"], "/app");

    // podman save (docker-archive and oci-archive) → kiln load → same ID.
    for format in ["docker-archive", "oci-archive"] {
        let saved = dir.path().join(format!("podman-{format}.tar"));
        run(podman(&pdir).args([
            "save",
            "--format",
            format,
            "-o",
            saved.to_str().unwrap(),
            FULL,
        ]));
        let other = Store::open(&dir.path().join(format!("other-{format}"))).unwrap();
        let loaded = load_file(&other, &saved, &LoadOptions::default()).unwrap();
        let back = other.resolve(NAME).unwrap();
        assert_eq!(&loaded[0].id, back.id());
        if format == "docker-archive" {
            assert_eq!(back.id(), img.id(), "{format}: the config bytes are kept");
        } else {
            // podman converts the (docker-archive-loaded) image to OCI, re-marshalling the
            // config; what it describes is the same.
            assert_eq!(back.config.rootfs, img.config.rootfs, "{format}");
        }
    }
}

#[test]
fn pruned_store_stays_valid_for_skopeo() {
    if !skip_unless(&["skopeo"], "pruned_store_stays_valid_for_skopeo") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let img = build_image(&store, Compression::gzip());
    // An untagged second image, then prune.
    let mut c = img.config.clone();
    c.container_config_mut().cmd = vec!["other".into()];
    store.write_image(&c, img.layers()).unwrap();
    let r = store.prune().unwrap();
    assert_eq!(r.blobs_removed, 2, "the untagged config and manifest");
    let v =
        json(&run(Command::new("skopeo").args([
            "inspect",
            &format!("oci:{}:{FULL}", dir.path().display()),
        ])));
    assert_eq!(v["Digest"], img.digest().to_string());
    // Untag, prune: everything goes, the layout stays valid.
    store.untag(&parse_ref(NAME).unwrap()).unwrap();
    let r = store.prune().unwrap();
    assert_eq!(r.blobs_removed, 4);
    assert_eq!(
        fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
    let out = Command::new("skopeo")
        .args(["inspect", &format!("oci:{}:{FULL}", dir.path().display())])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no descriptor found"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Several processes tag into one store at once; index.json stays valid and has every tag.
/// (The test re-runs itself as the worker processes.)
#[test]
fn concurrent_tags_from_processes() {
    const WORKER: &str = "KILN_IMAGE_TEST_TAG_WORKER";
    if let Ok(spec) = std::env::var(WORKER) {
        let (root, id) = spec.split_once('|').unwrap();
        let store = Store::open(Path::new(root)).unwrap();
        let img = store.resolve(NAME).unwrap();
        for i in 0..20 {
            store
                .tag(
                    &parse_ref(&format!("p{id}:v{i}")).unwrap(),
                    &img.manifest_descriptor,
                )
                .unwrap();
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        build_image(&store, Compression::gzip());
    }
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..4)
        .map(|id| {
            Command::new(&exe)
                .args(["--exact", "concurrent_tags_from_processes", "--nocapture"])
                .env(WORKER, format!("{}|{id}", dir.path().display()))
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "worker failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let store = Store::open(dir.path()).unwrap();
    let tags = store.tags().unwrap();
    assert_eq!(tags.len(), 1 + 4 * 20);
    assert_eq!(fs::read_dir(store.tmp_dir()).unwrap().count(), 0);
}

/// A process killed while writing a blob leaves the store valid; prune removes its temp file.
#[test]
fn killed_writer_leaves_the_store_valid() {
    const WORKER: &str = "KILN_IMAGE_TEST_KILLED_WORKER";
    if let Ok(root) = std::env::var(WORKER) {
        let store = Store::open(Path::new(&root)).unwrap();
        let mut w = store.blob_writer().unwrap();
        std::io::Write::write_all(&mut w, &[1u8; 100_000]).unwrap();
        std::io::Write::flush(&mut w).unwrap();
        println!("ready");
        std::thread::sleep(std::time::Duration::from_secs(60));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = {
        let store = Store::open(dir.path()).unwrap();
        build_image(&store, Compression::gzip())
    };
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "killed_writer_leaves_the_store_valid",
            "--nocapture",
        ])
        .env(WORKER, dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(
            std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0,
            "worker ended early"
        );
        if line.trim() == "ready" {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.resolve(NAME).unwrap().digest(), img.digest());
    let temps: Vec<PathBuf> = fs::read_dir(store.tmp_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(temps.len(), 1, "the killed writer's temp file");
    // Prune leaves temp files younger than a few seconds alone; age it.
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(600);
    fs::File::options()
        .write(true)
        .open(&temps[0])
        .unwrap()
        .set_modified(old)
        .unwrap();
    let r = store.prune().unwrap();
    assert_eq!(r.temp_files_removed, 1);
    assert_eq!(r.blobs_removed, 0);
    assert!(!temps[0].exists());
    assert_eq!(store.resolve(NAME).unwrap().digest(), img.digest());
}
