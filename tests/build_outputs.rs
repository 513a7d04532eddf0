//! What `kiln build` writes, checked by other tools: OCI layouts and archives read by skopeo and
//! unpacked by umoci, docker-archives loaded by podman, the store itself read by skopeo,
//! reproducible digests under SOURCE_DATE_EPOCH, the progress modes, `--metadata-file`, and the
//! image commands (images, tag, rmi, inspect, save, load, import, prune).
//!
//! Tests that need a missing tool print one `SKIP` line and return.

mod common;

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

use common::build::{
    Built, build, busybox_rootfs, busybox_store, have, is_root, make_tree, skopeo_inspect,
    try_build_env,
};

// ---------------------------------------------------------------------------------------------
// helpers

/// `kiln --root ROOT ARGS…`, required to succeed; returns stdout.
fn kiln_ok(root: &Path, args: &[&str]) -> String {
    let out = common::kiln()
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kiln {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command and requires success; returns its output.
fn run_ok(cmd: &mut Command) -> Output {
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

fn stderr(b: &Built) -> String {
    String::from_utf8_lossy(&b.output.stderr).into_owned()
}

fn stdout(b: &Built) -> String {
    String::from_utf8_lossy(&b.output.stdout).into_owned()
}

fn digest(b: &Built) -> String {
    b.metadata["containerimage.digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no containerimage.digest in {}", b.metadata))
        .to_string()
}

fn skopeo(target: &str) -> Value {
    skopeo_inspect(target, false).unwrap_or_else(|e| panic!("{e}"))
}

fn skopeo_raw(target: &str) -> Value {
    skopeo_inspect(target, true).unwrap_or_else(|e| panic!("{e}"))
}

/// Appends one tar entry with explicit metadata (mtime fixed, so the archive is stable).
fn tar_entry(
    b: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    mode: u32,
    owner: (u64, u64),
    link: Option<&str>,
    data: &[u8],
) {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(owner.0);
    h.set_gid(owner.1);
    h.set_mtime(1_600_000_000);
    h.set_size(data.len() as u64);
    if let Some(l) = link {
        h.set_link_name(l).unwrap();
    }
    h.set_cksum();
    b.append(&h, data).unwrap();
}

/// A tar with a directory, a file, a hardlink to it, a setuid file and a file owned 1234:5678.
fn bundle_tar() -> Vec<u8> {
    use tar::EntryType;
    let mut b = tar::Builder::new(Vec::new());
    tar_entry(
        &mut b,
        "opt/",
        EntryType::Directory,
        0o755,
        (0, 0),
        None,
        b"",
    );
    tar_entry(
        &mut b,
        "opt/data",
        EntryType::Regular,
        0o644,
        (0, 0),
        None,
        b"bundle data\n",
    );
    tar_entry(
        &mut b,
        "opt/data-hard",
        EntryType::Link,
        0o644,
        (0, 0),
        Some("opt/data"),
        b"",
    );
    tar_entry(
        &mut b,
        "opt/suid",
        EntryType::Regular,
        0o4755,
        (0, 0),
        None,
        b"#!/bin/sh\necho suid\n",
    );
    tar_entry(
        &mut b,
        "opt/owned",
        EntryType::Regular,
        0o600,
        (1234, 5678),
        None,
        b"owned\n",
    );
    b.into_inner().unwrap()
}

/// A context with a directory holding a symlink, a script and the bundle tar.
fn fancy_ctx() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    make_tree(
        ctx.path(),
        &[
            "app/hello.txt=hello\n",
            "app/link -> hello.txt",
            "app/sub/deep=deep\n",
            "app/bin/run.sh=#!/bin/sh\necho run\n",
        ],
    );
    std::fs::write(ctx.path().join("bundle.tar"), bundle_tar()).unwrap();
    ctx
}

const FANCY: &str = "FROM busybox
COPY app /app
COPY --chown=1000:1000 --chmod=0640 app/hello.txt /etc/secret.txt
ADD bundle.tar /
COPY --chmod=755 app/bin/run.sh /usr/local/bin/run
ENV MODE=test
CMD [\"/usr/local/bin/run\"]
";

/// The FANCY image's root filesystem as unpacked by another tool.
fn check_rootfs(r: &Path, owners: bool) {
    let read = |p: &str| std::fs::read_to_string(r.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let md = |p: &str| {
        r.join(p)
            .symlink_metadata()
            .unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let mode = |p: &str| md(p).permissions().mode() & 0o7777;
    assert!(md("bin/busybox").is_file(), "the base layer is missing");
    assert_eq!(read("app/hello.txt"), "hello\n");
    assert_eq!(read("app/sub/deep"), "deep\n");
    assert!(md("app/link").file_type().is_symlink(), "app/link");
    assert_eq!(
        std::fs::read_link(r.join("app/link")).unwrap(),
        PathBuf::from("hello.txt")
    );
    assert_eq!(read("etc/secret.txt"), "hello\n");
    assert_eq!(mode("etc/secret.txt"), 0o640);
    assert_eq!(read("usr/local/bin/run"), "#!/bin/sh\necho run\n");
    assert_eq!(mode("usr/local/bin/run"), 0o755);
    assert_eq!(read("opt/data"), "bundle data\n");
    assert_eq!(read("opt/data-hard"), "bundle data\n");
    assert_eq!(
        md("opt/data").ino(),
        md("opt/data-hard").ino(),
        "opt/data-hard is not a hardlink of opt/data"
    );
    assert_eq!(md("opt/data").nlink(), 2);
    assert_eq!(mode("opt/suid"), 0o4755, "setuid bit lost");
    assert_eq!(mode("opt/owned"), 0o600);
    if owners {
        let own = |p: &str| {
            let m = md(p);
            (m.uid(), m.gid())
        };
        assert_eq!(own("etc/secret.txt"), (1000, 1000), "COPY --chown");
        assert_eq!(own("app/hello.txt"), (0, 0));
        assert_eq!(own("opt/owned"), (1234, 5678), "owner from the ADDed tar");
        assert_eq!(own("opt/suid"), (0, 0));
    }
}

/// `umoci unpack [--rootless] --image LAYOUT:TAG BUNDLE` and the tree check.
fn umoci_unpack_and_check(layout: &Path, tag: &str) {
    let work = tempfile::tempdir().unwrap();
    let bundle = work.path().join("bundle");
    run_ok(
        Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:{tag}", layout.display()))
            .arg(&bundle),
    );
    check_rootfs(&bundle.join("rootfs"), false);
    if is_root() {
        // Without --rootless (root only) umoci keeps the owners from the layers.
        let owned = work.path().join("owned");
        run_ok(
            Command::new("umoci")
                .args(["unpack", "--image"])
                .arg(format!("{}:{tag}", layout.display()))
                .arg(&owned),
        );
        check_rootfs(&owned.join("rootfs"), true);
    } else {
        eprintln!("note: not root, owners in umoci's unpack are not checked");
    }
}

/// The one manifest descriptor of an exported OCI layout's index.json.
fn layout_manifest(layout: &Path) -> Value {
    let index: Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let m = index["manifests"].as_array().unwrap();
    assert_eq!(m.len(), 1, "{index}");
    m[0].clone()
}

/// skopeo reads the layout and copies it (every blob read and verified) into an oci-archive.
fn skopeo_reads_and_copies(layout: &Path, tag: &str) -> Value {
    let src = format!("oci:{}:{tag}", layout.display());
    let inspected = skopeo(&src);
    let work = tempfile::tempdir().unwrap();
    let archive = work.path().join("x.tar");
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .arg(&src)
            .arg(format!("oci-archive:{}", archive.display())),
    );
    // (skopeo compresses uncompressed layers on the way, so only the count is compared.)
    let again = skopeo(&format!("oci-archive:{}", archive.display()));
    assert_eq!(
        again["Layers"].as_array().unwrap().len(),
        inspected["Layers"].as_array().unwrap().len()
    );
    inspected
}

fn layer_media_types(manifest: &Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["mediaType"].as_str().unwrap().to_string())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. OCI layouts and archives

#[test]
fn oci_dir_gzip_passes_skopeo_and_umoci() {
    const T: &str = "oci_dir_gzip_passes_skopeo_and_umoci";
    if !have(T, "skopeo") || !have(T, "umoci") {
        return;
    }
    let Some(store) = busybox_store(T) else {
        return;
    };
    let ctx = fancy_ctx();
    let dest = tempfile::tempdir().unwrap();
    let oci = dest.path().join("oci");
    let spec = format!("type=oci,dest={},tar=false", oci.display());
    let b = build(
        store.path(),
        ctx.path(),
        FANCY,
        &["-t", "app:dev", "-o", &spec],
    );

    // The exported index names the tag only, with the full name beside it (CLI.md "Names").
    let m = layout_manifest(&oci);
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"], "dev",
        "{m}"
    );
    assert_eq!(
        m["annotations"]["io.containerd.image.name"],
        "docker.io/library/app:dev"
    );
    // Layers exported as stored: the same manifest as the build reported.
    assert_eq!(m["digest"].as_str().unwrap(), digest(&b));

    let inspected = skopeo_reads_and_copies(&oci, "dev");
    assert_eq!(inspected["Digest"].as_str().unwrap(), digest(&b));
    assert_eq!(
        inspected["Layers"].as_array().unwrap().len(),
        5,
        "{inspected}"
    );
    let raw = skopeo_raw(&format!("oci:{}:dev", oci.display()));
    for mt in layer_media_types(&raw) {
        assert_eq!(mt, "application/vnd.oci.image.layer.v1.tar+gzip");
    }
    assert_eq!(raw["config"]["digest"].as_str().unwrap(), b.id);
    umoci_unpack_and_check(&oci, "dev");
}

#[test]
fn oci_dir_uncompressed_passes_skopeo_and_umoci() {
    const T: &str = "oci_dir_uncompressed_passes_skopeo_and_umoci";
    if !have(T, "skopeo") || !have(T, "umoci") {
        return;
    }
    let Some(store) = busybox_store(T) else {
        return;
    };
    let ctx = fancy_ctx();
    let dest = tempfile::tempdir().unwrap();
    let oci = dest.path().join("oci");
    let spec = format!(
        "type=oci,dest={},tar=false,compression=uncompressed",
        oci.display()
    );
    let b = build(
        store.path(),
        ctx.path(),
        FANCY,
        &["-t", "app:dev", "-o", &spec],
    );
    let inspected = skopeo_reads_and_copies(&oci, "dev");
    assert_ne!(
        inspected["Digest"].as_str().unwrap(),
        digest(&b),
        "recompressed layers must give another manifest"
    );
    let raw = skopeo_raw(&format!("oci:{}:dev", oci.display()));
    for mt in layer_media_types(&raw) {
        assert_eq!(mt, "application/vnd.oci.image.layer.v1.tar");
    }
    // The config (diff_ids) does not depend on the compression.
    assert_eq!(raw["config"]["digest"].as_str().unwrap(), b.id);
    umoci_unpack_and_check(&oci, "dev");
}

#[test]
fn oci_default_is_an_archive_skopeo_reads() {
    const T: &str = "oci_default_is_an_archive_skopeo_reads";
    if !have(T, "skopeo") {
        return;
    }
    let Some(store) = busybox_store(T) else {
        return;
    };
    let ctx = fancy_ctx();
    let dest = tempfile::tempdir().unwrap();
    let file = dest.path().join("app-oci.tar");
    let spec = format!("type=oci,dest={}", file.display());
    let b = build(
        store.path(),
        ctx.path(),
        FANCY,
        &["-t", "app:dev", "-o", &spec],
    );
    assert!(file.is_file(), "type=oci without tar=false writes a file");
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(std::fs::File::open(&file).unwrap());
    for e in ar.entries().unwrap() {
        names.push(e.unwrap().path().unwrap().to_string_lossy().into_owned());
    }
    assert!(names.iter().any(|n| n == "index.json"), "{names:?}");
    assert!(names.iter().any(|n| n == "oci-layout"), "{names:?}");
    let inspected = skopeo(&format!("oci-archive:{}", file.display()));
    assert_eq!(inspected["Digest"].as_str().unwrap(), digest(&b));
    let named = skopeo(&format!("oci-archive:{}:dev", file.display()));
    assert_eq!(named["Digest"], inspected["Digest"]);
}

#[test]
fn oci_zstd_has_zstd_layers() {
    const T: &str = "oci_zstd_has_zstd_layers";
    if !have(T, "skopeo") {
        return;
    }
    let Some(store) = busybox_store(T) else {
        return;
    };
    let ctx = fancy_ctx();
    let dest = tempfile::tempdir().unwrap();
    let oci = dest.path().join("oci");
    let spec = format!("type=oci,dest={},tar=false,compression=zstd", oci.display());
    let b = build(
        store.path(),
        ctx.path(),
        FANCY,
        &["-t", "app:dev", "-o", &spec],
    );
    let inspected = skopeo_reads_and_copies(&oci, "dev");
    assert_ne!(inspected["Digest"].as_str().unwrap(), digest(&b));
    let raw = skopeo_raw(&format!("oci:{}:dev", oci.display()));
    let types = layer_media_types(&raw);
    assert_eq!(types.len(), 5);
    for mt in types {
        assert_eq!(mt, "application/vnd.oci.image.layer.v1.tar+zstd");
    }
    assert_eq!(raw["config"]["digest"].as_str().unwrap(), b.id);
    // Every layer blob really is zstd.
    for l in raw["layers"].as_array().unwrap() {
        let hex = l["digest"]
            .as_str()
            .unwrap()
            .strip_prefix("sha256:")
            .unwrap();
        let blob = std::fs::read(oci.join("blobs/sha256").join(hex)).unwrap();
        assert!(
            blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
            "{hex} is not zstd"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 2. docker-archive

#[test]
fn docker_archive_loads_in_podman_and_skopeo() {
    const T: &str = "docker_archive_loads_in_podman_and_skopeo";
    if !have(T, "skopeo") {
        return;
    }
    let Some(store) = busybox_store(T) else {
        return;
    };
    let ctx = fancy_ctx();
    let dest = tempfile::tempdir().unwrap();
    let file = dest.path().join("app-docker.tar");
    let spec = format!("type=docker,dest={}", file.display());
    let b = build(
        store.path(),
        ctx.path(),
        FANCY,
        &["-t", "app:dev", "-o", &spec],
    );
    let inspected = skopeo(&format!("docker-archive:{}", file.display()));
    assert_eq!(inspected["Layers"].as_array().unwrap().len(), 5);
    assert_eq!(inspected["Env"][1], "MODE=test", "{inspected}");
    let named = skopeo(&format!("docker-archive:{}:app:dev", file.display()));
    assert_eq!(named["Layers"], inspected["Layers"]);

    if !have(T, "podman") {
        return;
    }
    let proot = tempfile::tempdir().unwrap();
    let podman = || {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(proot.path().join("root"))
            .arg("--runroot")
            .arg(proot.path().join("run"))
            .args(["--storage-driver", "vfs"]);
        c
    };
    let info = podman().arg("info").output().unwrap();
    if !info.status.success() {
        common::skip(
            &format!("{T} (podman part)"),
            format!(
                "podman does not work here: {}",
                String::from_utf8_lossy(&info.stderr).trim()
            ),
        );
        return;
    }
    let loaded = run_ok(podman().arg("load").arg("-i").arg(&file));
    let text = String::from_utf8_lossy(&loaded.stdout);
    assert!(text.contains("docker.io/library/app:dev"), "{text}");
    let id = run_ok(podman().args(["image", "inspect", "--format", "{{.Id}}", "app:dev"]));
    assert_eq!(
        format!("sha256:{}", String::from_utf8_lossy(&id.stdout).trim()),
        b.id,
        "podman's image ID is the config digest"
    );
}

// ---------------------------------------------------------------------------------------------
// 3. the store is an OCI layout

#[test]
fn store_is_an_oci_layout_for_skopeo() {
    const T: &str = "store_is_an_oci_layout_for_skopeo";
    if !have(T, "skopeo") {
        return;
    }
    let Some(store) = busybox_store(T) else {
        return;
    };
    let ctx = fancy_ctx();
    let b = build(store.path(), ctx.path(), FANCY, &["-t", "app:dev"]);
    let src = format!("oci:{}:docker.io/library/app:dev", store.path().display());
    let inspected = skopeo(&src);
    assert_eq!(inspected["Digest"].as_str().unwrap(), digest(&b));
    skopeo(&format!(
        "oci:{}:docker.io/library/busybox:latest",
        store.path().display()
    ));
    // Every blob is there and matches its digest.
    let out = tempfile::tempdir().unwrap();
    run_ok(
        Command::new("skopeo")
            .arg("copy")
            .arg(&src)
            .arg(format!("oci:{}:copy", out.path().display())),
    );
}

// ---------------------------------------------------------------------------------------------
// 4. reproducibility

const REPRO: &str = "FROM busybox AS base
COPY tree /tree
COPY <<EOF /etc/greeting
hello from a heredoc
EOF
ADD files.tar /opt/
ENV APP_MODE=prod
LABEL org.example.stage=base

FROM scratch
COPY --from=base /tree /tree
COPY --from=base /etc/greeting /opt/ /srv/
COPY --from=base /bin/busybox /bin/busybox
ENV PATH=/bin APP_MODE=prod
LABEL org.opencontainers.image.title=repro
CMD [\"/bin/busybox\", \"sh\"]
";

/// A context for REPRO with every mtime set to `date` (`touch -h -d`).
fn repro_ctx(date: &str) -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    make_tree(
        ctx.path(),
        &[
            "tree/hello.txt=hello\n",
            "tree/sub/data.txt=data\n",
            "tree/run.sh=#!/bin/sh\necho run\n",
            "tree/link -> hello.txt",
        ],
    );
    let mut b = tar::Builder::new(Vec::new());
    tar_entry(
        &mut b,
        "lib/",
        tar::EntryType::Directory,
        0o755,
        (0, 0),
        None,
        b"",
    );
    tar_entry(
        &mut b,
        "lib/file",
        tar::EntryType::Regular,
        0o644,
        (0, 0),
        None,
        b"from the tar\n",
    );
    std::fs::write(ctx.path().join("files.tar"), b.into_inner().unwrap()).unwrap();
    run_ok(
        Command::new("find")
            .arg(ctx.path())
            .args(["-exec", "touch", "-h", "-d", date, "{}", "+"]),
    );
    ctx
}

/// Builds REPRO into a fresh busybox store; `extra` and `env` as given. Also exports a zstd
/// OCI layout and returns its manifest digest.
fn repro_build(test: &str, date: &str, extra: &[&str], env: &[(&str, &str)]) -> (Built, String) {
    let store = busybox_store(test).expect("busybox checked by the caller");
    let ctx = repro_ctx(date);
    let dest = tempfile::tempdir().unwrap();
    let oci = dest.path().join("zstd");
    let spec = format!("type=oci,dest={},tar=false,compression=zstd", oci.display());
    let mut args = vec!["-t", "repro:1", "-o", &spec];
    args.extend_from_slice(extra);
    let b = try_build_env(store.path(), ctx.path(), REPRO, &args, env);
    assert!(b.output.status.success(), "{}", stderr(&b));
    let zstd = layout_manifest(&oci)["digest"]
        .as_str()
        .unwrap()
        .to_string();
    std::mem::forget(store); // the Built keeps its root path
    (b, zstd)
}

fn copy_tree_layer(b: &Built) -> String {
    b.metadata["kiln.steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["instruction"] == "COPY tree /tree")
        .and_then(|s| s["layer_digest"].as_str())
        .unwrap_or_else(|| panic!("no layer for COPY tree /tree: {}", b.metadata))
        .to_string()
}

// Both dates are after 1700000000, so clamping (BuildKit's rewrite-timestamp) and replacing
// mtimes agree.
const DATE_A: &str = "2024-03-01 12:00:00";
const DATE_B: &str = "2025-07-04 08:30:00";

#[test]
fn source_date_epoch_in_the_environment_makes_builds_identical() {
    const T: &str = "source_date_epoch_in_the_environment_makes_builds_identical";
    if busybox_rootfs(T).is_none() {
        return;
    }
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    let (a, za) = repro_build(T, DATE_A, &[], &env);
    let (b, zb) = repro_build(T, DATE_B, &[], &env);
    assert_ne!(a.root, b.root);
    assert_eq!(digest(&a), digest(&b), "manifest digests differ");
    assert!(a.id.starts_with("sha256:") && a.id.len() == 71, "{}", a.id);
    assert_eq!(a.id, b.id, "iidfile contents differ");
    assert_eq!(za, zb, "zstd exports differ");
    assert_ne!(
        za,
        digest(&a),
        "the zstd export must differ from the gzip store image"
    );
    assert_eq!(
        a.inspect()["config"]["created"],
        "2023-11-14T22:13:20Z",
        "created is SOURCE_DATE_EPOCH"
    );
    // And the result is what REPRO says.
    assert_eq!(a.read("/tree/hello.txt"), "hello\n");
    assert_eq!(a.link("/tree/link"), "hello.txt");
    assert_eq!(a.read("/srv/greeting"), "hello from a heredoc\n");
    assert_eq!(a.read("/srv/lib/file"), "from the tar\n");
}

#[test]
fn source_date_epoch_build_arg_works_the_same() {
    const T: &str = "source_date_epoch_build_arg_works_the_same";
    if busybox_rootfs(T).is_none() {
        return;
    }
    // Other mtimes, the build argument instead of the environment: the same image.
    let arg = ["--build-arg", "SOURCE_DATE_EPOCH=1700000000"];
    let (a, za) = repro_build(T, DATE_A, &arg, &[]);
    let (e, ze) = repro_build(T, DATE_B, &[], &[("SOURCE_DATE_EPOCH", "1700000000")]);
    assert_eq!(digest(&a), digest(&e));
    assert_eq!(a.id, e.id);
    assert_eq!(za, ze);
    assert_eq!(a.inspect()["config"]["created"], "2023-11-14T22:13:20Z");
}

#[test]
fn without_source_date_epoch_mtimes_change_the_digest() {
    const T: &str = "without_source_date_epoch_mtimes_change_the_digest";
    if busybox_rootfs(T).is_none() {
        return;
    }
    let (a, _) = repro_build(T, DATE_A, &[], &[]);
    let (b, _) = repro_build(T, DATE_B, &[], &[]);
    assert_ne!(
        copy_tree_layer(&a),
        copy_tree_layer(&b),
        "file mtimes must reach the layer"
    );
    assert_ne!(digest(&a), digest(&b));
    assert_ne!(a.id, b.id);
}

// ---------------------------------------------------------------------------------------------
// 5. progress, -q, --metadata-file

const TWO_STAGES: &str = "FROM busybox AS base
COPY app /app
ENV X=1

FROM scratch
COPY --from=base /app /app
LABEL k=v
";

#[test]
fn quiet_prints_only_the_image_id() {
    const T: &str = "quiet_prints_only_the_image_id";
    let Some(store) = busybox_store(T) else {
        return;
    };
    let ctx = fancy_ctx();
    let b = build(store.path(), ctx.path(), TWO_STAGES, &["-q"]);
    assert_eq!(stdout(&b), format!("{}\n", b.id));
    assert!(
        !stderr(&b).contains("#1"),
        "progress with -q:\n{}",
        stderr(&b)
    );
}

#[test]
fn plain_progress_shows_numbered_steps() {
    const T: &str = "plain_progress_shows_numbered_steps";
    let Some(store) = busybox_store(T) else {
        return;
    };
    let ctx = fancy_ctx();
    let b = build(store.path(), ctx.path(), TWO_STAGES, &["--progress=plain"]);
    let err = stderr(&b);
    assert!(stdout(&b).is_empty(), "{}", stdout(&b));
    let re = regex::Regex::new(r"^#(\d+) \[(\S+) (\d+)/(\d+)\] (.+)$").unwrap();
    let steps: Vec<(usize, String, usize, usize, String)> = err
        .lines()
        .filter_map(|l| re.captures(l))
        .map(|c| {
            (
                c[1].parse().unwrap(),
                c[2].to_string(),
                c[3].parse().unwrap(),
                c[4].parse().unwrap(),
                c[5].to_string(),
            )
        })
        .collect();
    let expect = [
        ("base", 1, 3, "FROM "),
        ("base", 2, 3, "COPY app /app"),
        ("base", 3, 3, "ENV X=1"),
        ("stage-1", 1, 3, "FROM scratch"),
        ("stage-1", 2, 3, "COPY --from=base /app /app"),
        ("stage-1", 3, 3, "LABEL k=v"),
    ];
    assert_eq!(steps.len(), expect.len(), "{err}");
    for (i, (got, want)) in steps.iter().zip(expect).enumerate() {
        assert_eq!(got.0, i + 1, "step numbers: {err}");
        assert_eq!(
            (got.1.as_str(), got.2, got.3),
            (want.0, want.1, want.2),
            "{err}"
        );
        assert!(got.4.starts_with(want.3), "{got:?} vs {want:?}");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("#{} DONE ", got.0))
                    || l == format!("#{} CACHED", got.0)),
            "no DONE for step {}: {err}",
            got.0
        );
    }
    assert!(steps[0].4.contains("busybox"), "{err}");
}

#[test]
fn json_progress_is_one_object_per_line() {
    const T: &str = "json_progress_is_one_object_per_line";
    let Some(store) = busybox_store(T) else {
        return;
    };
    let ctx = fancy_ctx();
    let b = build(
        store.path(),
        ctx.path(),
        TWO_STAGES,
        &["--progress=json", "-t", "app:dev"],
    );
    let err = stderr(&b);
    let events: Vec<Value> = err
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e.is_object() && e["event"].is_string())
    );
    let started: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "step_started")
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(started.len(), 6, "{err}");
    assert!(started.contains(&"[base 2/3] COPY app /app"), "{started:?}");
    assert_eq!(
        events.iter().filter(|e| e["event"] == "step_done").count(),
        6
    );
    let written = events
        .iter()
        .find(|e| e["event"] == "image_written")
        .expect("image_written event");
    assert_eq!(written["manifest_digest"].as_str().unwrap(), digest(&b));
    assert_eq!(written["config_digest"].as_str().unwrap(), b.id);
}

#[test]
fn metadata_file_has_digests_names_and_steps() {
    const T: &str = "metadata_file_has_digests_names_and_steps";
    let Some(store) = busybox_store(T) else {
        return;
    };
    let ctx = fancy_ctx();
    let b = build(
        store.path(),
        ctx.path(),
        TWO_STAGES,
        &[
            "-t",
            "app:dev",
            "-t",
            "registry.example.com:5000/team/app:v1",
        ],
    );
    let m = &b.metadata;
    let sha = regex::Regex::new("^sha256:[0-9a-f]{64}$").unwrap();
    let d = m["containerimage.digest"].as_str().unwrap();
    assert!(sha.is_match(d), "{m}");
    assert_eq!(m["containerimage.config.digest"].as_str().unwrap(), b.id);
    assert!(sha.is_match(&b.id));
    assert_eq!(
        m["image.name"],
        "docker.io/library/app:dev,registry.example.com:5000/team/app:v1"
    );
    let inspected = b.inspect();
    assert_eq!(inspected["digest"].as_str().unwrap(), d);
    assert_eq!(inspected["id"].as_str().unwrap(), b.id);

    let steps = m["kiln.steps"].as_array().unwrap();
    let want = [
        ("base", "FROM busybox AS base", 1, false),
        ("base", "COPY app /app", 2, true),
        ("base", "ENV X=1", 3, false),
        ("stage-1", "FROM scratch", 5, false),
        ("stage-1", "COPY --from=base /app /app", 6, true),
        ("stage-1", "LABEL k=v", 7, false),
    ];
    assert_eq!(steps.len(), want.len(), "{m}");
    let manifest_layers: Vec<&str> = inspected["manifest"]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    for (s, (stage, inst, line, layer)) in steps.iter().zip(want) {
        assert_eq!(s["stage"], stage, "{s}");
        assert_eq!(s["instruction"], inst, "{s}");
        let loc = s["location"].as_str().unwrap();
        assert!(
            loc.ends_with(&format!("Dockerfile.kiln-test:{line}")),
            "location {loc:?} for {inst}"
        );
        assert!(s["cached"].is_boolean(), "{s}");
        assert!(s["seconds"].as_f64().is_some_and(|x| x >= 0.0), "{s}");
        if layer {
            let ld = s["layer_digest"].as_str().unwrap_or_else(|| panic!("{s}"));
            assert!(sha.is_match(ld), "{s}");
            assert!(s["layer_size"].as_u64().is_some_and(|n| n > 0), "{s}");
        } else {
            assert!(s.get("layer_digest").is_none_or(Value::is_null), "{s}");
        }
    }
    // The final stage's layer is the manifest's only layer.
    assert_eq!(
        manifest_layers,
        [steps[4]["layer_digest"].as_str().unwrap()]
    );
}

// ---------------------------------------------------------------------------------------------
// 6. image commands

#[test]
fn images_tag_rmi_and_inspect() {
    const T: &str = "images_tag_rmi_and_inspect";
    let Some(store) = busybox_store(T) else {
        return;
    };
    let root = store.path();
    let ctx = fancy_ctx();
    let b = try_build_env(
        root,
        ctx.path(),
        FANCY,
        &["-t", "app:dev"],
        &[("SOURCE_DATE_EPOCH", "1700000000")],
    );
    assert!(b.output.status.success(), "{}", stderr(&b));
    let rows = |root: &Path| -> Vec<Vec<String>> {
        kiln_ok(root, &["images"])
            .lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    let listed = rows(root);
    assert_eq!(
        listed[0],
        ["NAME", "TAG", "DIGEST", "SIZE", "CREATED"],
        "{listed:?}"
    );
    let app = listed
        .iter()
        .find(|r| r[0] == "app")
        .unwrap_or_else(|| panic!("no app row: {listed:?}"));
    assert_eq!(app[1], "dev");
    assert_eq!(app[2], digest(&b));
    assert!(app[3].ends_with('B') && app[3].len() > 1, "size {app:?}");
    assert_eq!(app[4], "2023-11-14T22:13:20Z");
    assert!(listed.iter().any(|r| r[0] == "busybox" && r[1] == "latest"));

    kiln_ok(root, &["tag", "app:dev", "example.com/other/app:v1"]);
    let listed = rows(root);
    let other = listed
        .iter()
        .find(|r| r[0] == "example.com/other/app")
        .unwrap_or_else(|| panic!("no tagged row: {listed:?}"));
    assert_eq!(
        (other[1].as_str(), other[2].as_str()),
        ("v1", digest(&b).as_str())
    );
    let inspected: Value =
        serde_json::from_str(&kiln_ok(root, &["inspect", "example.com/other/app:v1"])).unwrap();
    assert_eq!(inspected["id"].as_str().unwrap(), b.id);
    assert_eq!(inspected["digest"].as_str().unwrap(), digest(&b));
    assert_eq!(inspected["name"], "example.com/other/app:v1");
    assert_eq!(
        inspected["config"]["config"]["Cmd"][0],
        "/usr/local/bin/run"
    );
    assert_eq!(inspected["manifest"]["layers"].as_array().unwrap().len(), 5);

    let out = kiln_ok(root, &["rmi", "example.com/other/app:v1"]);
    assert!(out.contains("example.com/other/app:v1"), "{out}");
    let listed = rows(root);
    assert!(
        !listed.iter().any(|r| r[0] == "example.com/other/app"),
        "{listed:?}"
    );
    assert!(listed.iter().any(|r| r[0] == "app" && r[1] == "dev"));
    let gone = common::kiln()
        .arg("--root")
        .arg(root)
        .args(["inspect", "example.com/other/app:v1"])
        .output()
        .unwrap();
    assert!(!gone.status.success());
    assert!(!gone.stderr.is_empty());
    // Normalised names: these are all the same image.
    for n in ["app:dev", "docker.io/app:dev", "docker.io/library/app:dev"] {
        let v: Value = serde_json::from_str(&kiln_ok(root, &["inspect", n])).unwrap();
        assert_eq!(v["id"].as_str().unwrap(), b.id, "{n}");
    }
}

#[test]
fn save_then_load_into_another_root_keeps_the_id() {
    const T: &str = "save_then_load_into_another_root_keeps_the_id";
    let Some(store) = busybox_store(T) else {
        return;
    };
    let ctx = fancy_ctx();
    let dest = tempfile::tempdir().unwrap();
    let oci_tar = dest.path().join("oci.tar");
    let spec = format!("type=oci,dest={}", oci_tar.display());
    let b = build(
        store.path(),
        ctx.path(),
        FANCY,
        &["-t", "app:dev", "-o", &spec],
    );
    let saved = dest.path().join("saved.tar");
    kiln_ok(
        store.path(),
        &["save", "app:dev", "-o", saved.to_str().unwrap()],
    );
    if which("skopeo") {
        skopeo(&format!("docker-archive:{}", saved.display()));
    }

    let other = tempfile::tempdir().unwrap();
    let out = kiln_ok(other.path(), &["load", saved.to_str().unwrap()]);
    assert!(out.contains("docker.io/library/app:dev"), "{out}");
    let v: Value = serde_json::from_str(&kiln_ok(other.path(), &["inspect", "app:dev"])).unwrap();
    assert_eq!(v["id"].as_str().unwrap(), b.id);
    if which("skopeo") {
        skopeo(&format!(
            "oci:{}:docker.io/library/app:dev",
            other.path().display()
        ));
    }

    // The OCI archive from `-o type=oci` loads too.
    let third = tempfile::tempdir().unwrap();
    kiln_ok(third.path(), &["load", oci_tar.to_str().unwrap()]);
    let v: Value = serde_json::from_str(&kiln_ok(third.path(), &["inspect", "app:dev"])).unwrap();
    assert_eq!(v["id"].as_str().unwrap(), b.id);
    assert_eq!(v["digest"].as_str().unwrap(), digest(&b));
}

fn which(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn import_of_a_gzip_rootfs_makes_a_one_layer_base() {
    const T: &str = "import_of_a_gzip_rootfs_makes_a_one_layer_base";
    let root = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    use tar::EntryType;
    tar_entry(
        &mut b,
        "bin/",
        EntryType::Directory,
        0o755,
        (0, 0),
        None,
        b"",
    );
    tar_entry(
        &mut b,
        "bin/hello",
        EntryType::Regular,
        0o755,
        (0, 0),
        None,
        b"#!/bin/sh\necho hello\n",
    );
    tar_entry(
        &mut b,
        "etc/os-release",
        EntryType::Regular,
        0o644,
        (0, 0),
        None,
        b"ID=kiln-test\n",
    );
    tar_entry(
        &mut b,
        "etc/passwd",
        EntryType::Regular,
        0o644,
        (0, 0),
        None,
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1500:1600::/home/app:/bin/sh\n",
    );
    tar_entry(
        &mut b,
        "etc/group",
        EntryType::Regular,
        0o644,
        (0, 0),
        None,
        b"root:x:0:\napp:x:1600:\n",
    );
    let tar_bytes = b.into_inner().unwrap();
    let gz = work.path().join("rootfs.tar.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    enc.write_all(&tar_bytes).unwrap();
    enc.finish().unwrap();

    let out = kiln_ok(root.path(), &["import", gz.to_str().unwrap(), "imported:1"]);
    assert!(out.trim().starts_with("sha256:"), "{out}");
    let v: Value = serde_json::from_str(&kiln_ok(root.path(), &["inspect", "imported:1"])).unwrap();
    assert_eq!(v["id"].as_str().unwrap(), out.trim());
    assert_eq!(v["manifest"]["layers"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["config"]["rootfs"]["diff_ids"].as_array().unwrap().len(),
        1
    );
    if have(T, "skopeo") {
        skopeo(&format!(
            "oci:{}:docker.io/library/imported:1",
            root.path().display()
        ));
    }

    // It is a base like any other, passwd included.
    let ctx = tempfile::tempdir().unwrap();
    make_tree(ctx.path(), &["f=file\n"]);
    let built = build(
        root.path(),
        ctx.path(),
        "FROM imported:1\nCOPY --chown=app f /home/app/f\n",
        &[],
    );
    assert_eq!(built.read("/etc/os-release"), "ID=kiln-test\n");
    assert_eq!(built.read("/bin/hello"), "#!/bin/sh\necho hello\n");
    assert_eq!(built.mode("/bin/hello"), 0o755);
    assert_eq!(built.read("/home/app/f"), "file\n");
    if is_root() {
        assert_eq!(built.owner("/home/app/f"), (1500, 1600));
    }
}

#[test]
fn prune_after_rmi_removes_blobs_and_keeps_the_rest_readable() {
    const T: &str = "prune_after_rmi_removes_blobs_and_keeps_the_rest_readable";
    let Some(store) = busybox_store(T) else {
        return;
    };
    let root = store.path();
    let ctx = tempfile::tempdir().unwrap();
    make_tree(ctx.path(), &["a=only in a\n", "b=only in b\n"]);
    let a = build(
        root,
        ctx.path(),
        "FROM busybox\nCOPY a /a\n",
        &["-t", "app:a"],
    );
    let b = build(
        root,
        ctx.path(),
        "FROM busybox\nCOPY b /b\n",
        &["-t", "app:b"],
    );
    let blob = |d: &str| {
        root.join("blobs/sha256")
            .join(d.strip_prefix("sha256:").unwrap())
    };
    let layer = |x: &Built| {
        x.metadata["kiln.steps"][1]["layer_digest"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let (b_layer, b_manifest, b_config) = (layer(&b), digest(&b), b.id.clone());
    for d in [
        &b_layer,
        &b_manifest,
        &b_config,
        &layer(&a),
        &digest(&a),
        &a.id,
    ] {
        assert!(blob(d).is_file(), "{d} not in the store");
    }

    kiln_ok(root, &["rmi", "app:b"]);
    // rmi only removes the name.
    assert!(blob(&b_layer).is_file());
    // The step cache's records are roots for `kiln prune`: dropping them (all of them here)
    // prunes the store too.
    let out = kiln_ok(root, &["cache", "prune", "--all"]);
    let re = regex::Regex::new(r"removed (\d+) blobs").unwrap();
    let n: u64 = re.captures(&out).unwrap_or_else(|| panic!("{out}"))[1]
        .parse()
        .unwrap();
    assert!(n >= 3, "{out}");
    for d in [&b_layer, &b_manifest, &b_config] {
        assert!(!blob(d).exists(), "{d} survived prune");
    }
    for d in [&layer(&a), &digest(&a), &a.id] {
        assert!(blob(d).is_file(), "{d} was pruned but app:a needs it");
    }
    let v: Value = serde_json::from_str(&kiln_ok(root, &["inspect", "app:a"])).unwrap();
    assert_eq!(v["id"].as_str().unwrap(), a.id);
    if have(T, "skopeo") {
        for tag in [
            "docker.io/library/app:a",
            "docker.io/library/busybox:latest",
        ] {
            let src = format!("oci:{}:{tag}", root.display());
            skopeo(&src);
            let out = tempfile::tempdir().unwrap();
            run_ok(
                Command::new("skopeo")
                    .arg("copy")
                    .arg(&src)
                    .arg(format!("oci:{}:x", out.path().display())),
            );
        }
        assert!(
            skopeo_inspect(
                &format!("oci:{}:docker.io/library/app:b", root.display()),
                false
            )
            .is_err()
        );
    }
    // A second prune finds nothing more.
    let again = kiln_ok(root, &["prune"]);
    assert!(again.contains("removed 0 blobs"), "{again}");
}
