//! The step cache under concurrency and kills ([6/9], item 3): two builds of one Dockerfile
//! started at once on one store both succeed with the same image and leave one whole record per
//! key; a build SIGKILLed while it writes a layer leaves `kiln cache ls`, the images already in
//! the store (`skopeo inspect`) and the next build correct, with no half record and no temp file
//! once the next build has run. As root and as the unprivileged users.

mod common;

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::build::{RUNNERS, Runner, Scratch, chown_tree, have, kiln_as, runner_dir};
use common::build::{kiln_ok_as, runner_store, skopeo_inspect};
use kiln::cache::CacheRecord;
use serde_json::Value;

const SDE: &str = "1700000000";

/// Two RUNs of about a second each, so two builds started together are inside the same steps
/// (running, writing their layers, committing their snapshots and records) at the same time.
const DOCKERFILE: &str = "FROM busybox\n\
    COPY a.txt /a.txt\n\
    RUN sleep 1 && cat /a.txt > /b.txt && mkdir /data && seq 1 5000 > /data/seq\n\
    RUN sleep 1 && echo two > /two.txt && seq 1 3000 > /data/more\n";

/// A build in flight: `kiln build -t TAG` as a runner, in its own process group, with its
/// stderr, iidfile and metadata file in `files`.
struct Job {
    who: Runner,
    child: Child,
    files: Scratch,
    /// Keeps the Dockerfile's directory alive while the build runs.
    _df: Scratch,
}

/// What a finished build left.
struct Done {
    ok: bool,
    stderr: String,
    id: String,
    metadata: Value,
}

impl Done {
    /// `cached` of every step but the FROMs.
    fn cached(&self) -> Vec<bool> {
        self.metadata["kiln.steps"]
            .as_array()
            .unwrap_or_else(|| panic!("no kiln.steps in the metadata:\n{}", self.stderr))
            .iter()
            .filter(|s| !s["instruction"].as_str().unwrap().starts_with("FROM"))
            .map(|s| s["cached"].as_bool().unwrap())
            .collect()
    }
}

/// A context for `who` holding `a.txt`.
fn context(who: Runner) -> Scratch {
    let ctx = runner_dir(who);
    std::fs::write(ctx.path().join("a.txt"), "from the context\n").unwrap();
    let (uid, gid) = who.ids();
    chown_tree(ctx.path(), uid, gid);
    ctx
}

/// Starts `kiln --root STORE build -f DF -t TAG CTX` as `who` under SOURCE_DATE_EPOCH. The
/// Dockerfile lives outside the context, so builds of one context can run side by side.
fn spawn(who: Runner, store: &Path, ctx: &Path, dockerfile: &str, tag: &str) -> Job {
    let df = runner_dir(who);
    let df_path = df.path().join("Dockerfile");
    std::fs::write(&df_path, dockerfile).unwrap();
    let (uid, gid) = who.ids();
    chown_tree(df.path(), uid, gid);
    let files = runner_dir(who);
    let stderr = std::fs::File::create(files.path().join("stderr")).unwrap();
    let child = kiln_as(who)
        .env("SOURCE_DATE_EPOCH", SDE)
        .arg("--root")
        .arg(store)
        .arg("build")
        .arg("-f")
        .arg(&df_path)
        .args(["-t", tag, "--progress=plain"])
        .arg("--iidfile")
        .arg(files.path().join("iid"))
        .arg("--metadata-file")
        .arg(files.path().join("metadata.json"))
        .arg(ctx)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        // Its own group, so a kill reaches every process of the build at once.
        .process_group(0)
        .spawn()
        .unwrap();
    Job {
        who,
        child,
        files,
        _df: df,
    }
}

impl Job {
    fn wait(mut self) -> Done {
        let status = self.child.wait().unwrap();
        self.done(status.success())
    }

    fn done(&self, ok: bool) -> Done {
        let f = self.files.path();
        Done {
            ok,
            stderr: std::fs::read_to_string(f.join("stderr")).unwrap_or_default(),
            id: std::fs::read_to_string(f.join("iid")).unwrap_or_default(),
            metadata: std::fs::read(f.join("metadata.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or(Value::Null),
        }
    }

    /// SIGKILL to the build's whole process group, then reaps it.
    fn kill(mut self) {
        let pgid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        self.child.wait().unwrap();
    }
}

fn build(who: Runner, store: &Path, ctx: &Path, dockerfile: &str, tag: &str) -> Done {
    let d = spawn(who, store, ctx, dockerfile, tag).wait();
    assert!(
        d.ok,
        "build as {} failed:\n{dockerfile}\n{}",
        who.label(),
        d.stderr
    );
    d
}

/// Checks the index as files: every entry of the records directory is `<key hex>.json` holding
/// a whole record whose document hashes to that key, and `kiln cache ls --format json` lists
/// exactly those keys, each once. Returns the keys.
fn whole_records(who: Runner, store: &Path) -> BTreeSet<String> {
    let dir = store.join("kiln/cache/records");
    let mut on_disk = BTreeSet::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        let hex = name
            .strip_suffix(".json")
            .unwrap_or_else(|| panic!("as {}: a stray file in the records: {name}", who.label()));
        let bytes = std::fs::read(e.path()).unwrap();
        let r: CacheRecord = serde_json::from_slice(&bytes).unwrap_or_else(|err| {
            panic!(
                "as {}: record {name} does not parse ({err}), {} bytes",
                who.label(),
                bytes.len()
            )
        });
        assert_eq!(
            r.key.hex(),
            hex,
            "as {}: record {name} names another key",
            who.label()
        );
        assert_eq!(
            r.document.key().unwrap(),
            r.key,
            "as {}: record {name}'s document does not hash to its key",
            who.label()
        );
        on_disk.insert(r.key.to_string());
    }
    let listed: Value = serde_json::from_str(&kiln_ok_as(
        who,
        store,
        &["cache", "ls", "--format", "json"],
    ))
    .unwrap();
    let listed: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(unique.len(), listed.len(), "a key listed twice: {listed:?}");
    assert_eq!(
        unique,
        on_disk,
        "as {}: kiln cache ls vs the files",
        who.label()
    );
    on_disk
}

/// Entries of a store directory (empty when it does not exist).
fn entries(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Temp files and scratch left in the store: `kiln/cache/tmp/*`, `kiln/tmp/*`,
/// `snapshots/.tmp-*`, `snapshots/.scratch-*`, `snapshots/.trash-*`.
fn leftovers(store: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (dir, pick) in [
        ("kiln/cache/tmp", ""),
        ("kiln/tmp", ""),
        ("snapshots", ".tmp-"),
        ("snapshots", ".scratch-"),
        ("snapshots", ".trash-"),
    ] {
        for n in entries(&store.join(dir)) {
            if n.starts_with(pick) {
                out.push(format!("{dir}/{n}"));
            }
        }
    }
    out
}

/// Two builds of [`DOCKERFILE`] started at once on `store`: both succeed with the same image,
/// the index holds `want_records` whole records, and a third build is all hits.
fn race(who: Runner, store: &Path, ctx: &Path, want_records: usize, case: &str) {
    let a = spawn(who, store, ctx, DOCKERFILE, "race:a");
    let b = spawn(who, store, ctx, DOCKERFILE, "race:b");
    let (a, b) = (a.wait(), b.wait());
    for (n, d) in [("first", &a), ("second", &b)] {
        assert!(
            d.ok,
            "{case} as {}: the {n} of two concurrent builds failed:\n{}",
            who.label(),
            d.stderr
        );
    }
    // Which steps each reused (a build that starts a step after the other recorded it hits).
    eprintln!(
        "{case} as {}: cached {:?} and {:?}",
        who.label(),
        a.cached(),
        b.cached()
    );
    assert!(!a.id.is_empty());
    assert_eq!(
        a.metadata["containerimage.digest"],
        b.metadata["containerimage.digest"],
        "{case} as {}: two manifests",
        who.label()
    );
    assert_eq!(a.id, b.id, "{case} as {}: two images", who.label());
    let keys = whole_records(who, store);
    assert_eq!(
        keys.len(),
        want_records,
        "{case} as {}: {keys:?}",
        who.label()
    );
    let left = leftovers(store);
    assert!(left.is_empty(), "{case} as {}: left {left:?}", who.label());

    let third = build(who, store, ctx, DOCKERFILE, "race:c");
    assert!(
        third.cached().iter().all(|c| *c),
        "{case} as {}: the third build missed: {:?}\n{}",
        who.label(),
        third.cached(),
        third.stderr
    );
    assert_eq!(third.id, a.id);
    assert_eq!(whole_records(who, store), keys);
    for tag in ["race:a", "race:b", "race:c"] {
        let img: Value = serde_json::from_str(&kiln_ok_as(who, store, &["inspect", tag])).unwrap();
        assert_eq!(img["id"].as_str(), Some(a.id.trim()), "{tag}");
    }
}

#[test]
fn two_builds_at_once_both_succeed_and_leave_whole_records() {
    const T: &str = "two_builds_at_once_both_succeed_and_leave_whole_records";
    for who in RUNNERS {
        // On an empty store: every step runs in both builds.
        let Some(store) = runner_store(who, T) else {
            continue;
        };
        let ctx = context(who);
        race(who, store.path(), ctx.path(), 3, "empty store");

        // On a store with records: the COPY hits in both, the two RUNs (the first one differs
        // from the recorded build) run in both.
        let Some(store) = runner_store(who, T) else {
            continue;
        };
        let other = DOCKERFILE.replace("seq 1 5000", "seq 1 4000");
        let seeded = build(who, store.path(), ctx.path(), &other, "seed:1");
        assert_eq!(whole_records(who, store.path()).len(), 3);
        race(who, store.path(), ctx.path(), 5, "seeded store");
        let again = build(who, store.path(), ctx.path(), &other, "seed:2");
        assert!(again.cached().iter().all(|c| *c), "{:?}", again.cached());
        assert_eq!(again.id, seeded.id);
    }
}

/// A RUN that writes `mib` MiB of random bytes: its layer takes a while to compress and write.
fn big_dockerfile(mib: u32) -> String {
    format!(
        "FROM busybox\nCOPY a.txt /a.txt\n\
         RUN head -c {} /dev/urandom > /big && echo big-written\n",
        mib << 20
    )
}

/// A blob being written in `kiln/tmp` with more than 1 MiB in it (the big layer, not the COPY's).
fn big_blob_in_progress(store: &Path) -> Option<PathBuf> {
    std::fs::read_dir(store.join("kiln/tmp"))
        .ok()?
        .flatten()
        .find(|e| {
            e.file_name().to_string_lossy().starts_with("blob")
                && e.metadata().is_ok_and(|m| m.is_file() && m.len() > 1 << 20)
        })
        .map(|e| e.path())
}

/// Starts a build of a big layer and SIGKILLs it (its whole process group) while the layer's
/// blob is being written. Retries with a bigger layer if the build finished first. Returns the
/// Dockerfile built and the blob temp file that was being written.
fn kill_during_layer_write(who: Runner, store: &Path, ctx: &Path) -> (String, PathBuf) {
    for mib in [200, 400, 800] {
        let df = big_dockerfile(mib);
        let mut job = spawn(who, store, ctx, &df, "killed:1");
        let deadline = Instant::now() + Duration::from_secs(300);
        let seen = loop {
            if let Some(p) = big_blob_in_progress(store) {
                break Some(p);
            }
            if let Some(st) = job.child.try_wait().unwrap() {
                let d = job.done(st.success());
                assert!(d.ok, "as {}: the build failed:\n{}", who.label(), d.stderr);
                break None;
            }
            assert!(Instant::now() < deadline, "the layer write never started");
            std::thread::sleep(Duration::from_millis(5));
        };
        let Some(temp) = seen else {
            eprintln!("note: the {mib} MiB layer was written before the kill; trying bigger");
            // The finished build's records and tag are harmless: the next kill proves the point.
            kiln_ok_as(who, store, &["rmi", "killed:1"]);
            continue;
        };
        assert_eq!(job.who, who);
        job.kill();
        return (df, temp);
    }
    panic!("as {}: no kill landed inside a layer write", who.label());
}

fn a_build_killed_while_writing_a_layer(who: Runner) {
    const T: &str = "a_build_killed_while_writing_a_layer_leaves_the_store_correct";
    let Some(store) = runner_store(who, T) else {
        return;
    };
    let store = store.path();
    let ctx = context(who);
    let before = build(
        who,
        store,
        ctx.path(),
        "FROM busybox\nRUN echo before > /before\n",
        "before:1",
    );
    let records_before = whole_records(who, store);
    assert_eq!(records_before.len(), 1);

    let (df, temp) = kill_during_layer_write(who, store, ctx.path());
    // The kill landed mid-write: the temp blob is still there, and no record names its layer.
    assert!(
        temp.exists(),
        "as {}: {} went with the kill",
        who.label(),
        temp.display()
    );
    let after_kill = whole_records(who, store);
    assert!(
        after_kill.is_superset(&records_before),
        "as {}: records lost by the kill",
        who.label()
    );
    // At most the COPY's record was added (its layer was written before the RUN's).
    assert!(after_kill.len() <= 2, "as {}: {after_kill:?}", who.label());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .arg("--root")
        .arg(store)
        .args(["inspect", "killed:1"])
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "as {}: a killed build left a tag",
        who.label()
    );

    // The image built before the kill is intact for OCI tools.
    if have(T, "skopeo") {
        let target = format!("oci:{}:docker.io/library/before:1", store.display());
        let img =
            skopeo_inspect(&target, false).unwrap_or_else(|e| panic!("as {}: {e}", who.label()));
        let raw = skopeo_inspect(&target, true).unwrap();
        assert_eq!(img["Layers"].as_array().unwrap().len(), 2, "{img}");
        assert_eq!(raw["layers"].as_array().unwrap().len(), 2, "{raw}");
    }
    let again: Value =
        serde_json::from_str(&kiln_ok_as(who, store, &["inspect", "before:1"])).unwrap();
    assert_eq!(again["id"].as_str(), Some(before.id.trim()));

    // The next build succeeds and cleans up after the killed one; the one after is all hits.
    let next = build(who, store, ctx.path(), &df, "next:1");
    assert!(
        !next.cached().last().unwrap(),
        "as {}: the killed RUN cannot have been recorded",
        who.label()
    );
    let left = leftovers(store);
    assert!(
        left.is_empty(),
        "as {}: the next build left the killed build's temp files: {left:?}",
        who.label()
    );
    let records = whole_records(who, store);
    assert_eq!(records.len(), 3, "as {}: {records:?}", who.label());
    let warm = build(who, store, ctx.path(), &df, "next:2");
    assert!(
        warm.cached().iter().all(|c| *c),
        "as {}: {:?}\n{}",
        who.label(),
        warm.cached(),
        warm.stderr
    );
    assert_eq!(warm.id, next.id);
    assert_eq!(whole_records(who, store), records);
    if have(T, "skopeo") {
        let target = format!("oci:{}:docker.io/library/next:2", store.display());
        skopeo_inspect(&target, false).unwrap_or_else(|e| panic!("as {}: {e}", who.label()));
    }
}

#[test]
fn a_build_killed_while_writing_a_layer_leaves_the_store_correct() {
    for who in RUNNERS {
        a_build_killed_while_writing_a_layer(who);
    }
}
