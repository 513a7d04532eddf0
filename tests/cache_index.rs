//! The build cache's foundation (`kiln::cache`): the key chain over canonical documents, the
//! field-by-field diff of two documents, and the record index in a real store under
//! concurrent writers (threads and processes) and a writer SIGKILLed mid-put.
//!
//! Child processes are this test binary run again on the ignored test `child_writer`, told what
//! to do by `KILN_CACHE_CHILD`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kiln::cache::{
    CacheKey, CacheRecord, CacheResult, Index, KeyDocument, KeySettings, LayerSettings, Parent,
    differences, first_difference,
};
use kiln::image::{Compression, Descriptor, MediaType, Store};
use kiln::layer::DiffId;
use serde_json::{Value, json};

fn settings() -> KeySettings {
    KeySettings {
        platform: "linux/amd64".into(),
        layer: LayerSettings::new(Compression::gzip(), None),
    }
}

fn run_step(argv: &[&str], user: &str, workdir: &str) -> Value {
    json!({"op": {"run": {"argv": argv, "user": user, "workdir": workdir}}})
}

fn kiln() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_kiln"))
}

// ---- keys ------------------------------------------------------------------------------------

#[test]
fn same_inputs_give_the_same_key_and_any_field_change_a_different_one() {
    let s = settings();
    let parent = Parent::Step(CacheKey::of(b"parent"));
    let step = run_step(&["/bin/sh", "-c", "make"], "", "/src");
    let a = KeyDocument::new(&s, parent.clone(), &step).unwrap();
    let b = KeyDocument::new(&s, parent.clone(), &step.clone()).unwrap();
    assert_eq!(a.key().unwrap(), b.key().unwrap());
    assert_eq!(a.canonical().unwrap(), b.canonical().unwrap());

    // Key order in the input does not matter: the document is canonical.
    let reordered: Value = serde_json::from_str(
        r#"{"op":{"run":{"workdir":"/src","user":"","argv":["/bin/sh","-c","make"]}}}"#,
    )
    .unwrap();
    assert_eq!(
        KeyDocument::new(&s, parent.clone(), &reordered)
            .unwrap()
            .key()
            .unwrap(),
        a.key().unwrap()
    );

    let variants = [
        run_step(&["/bin/sh", "-c", "make all"], "", "/src"),
        run_step(&["/bin/sh", "-c", "make", ""], "", "/src"),
        run_step(&["/bin/sh", "-c", "make"], "1000", "/src"),
        run_step(&["/bin/sh", "-c", "make"], "", "/src/"),
        json!({"op": {"run": {"argv": ["/bin/sh", "-c", "make"], "user": "", "workdir": "/src", "network": "none"}}}),
    ];
    let mut keys = vec![a.key().unwrap()];
    for v in &variants {
        keys.push(
            KeyDocument::new(&s, parent.clone(), v)
                .unwrap()
                .key()
                .unwrap(),
        );
    }
    // The parent and the inputs are fields too.
    keys.push(
        KeyDocument::new(&s, Parent::Step(CacheKey::of(b"other")), &step)
            .unwrap()
            .key()
            .unwrap(),
    );
    keys.push(
        KeyDocument::new(&s, Parent::Scratch, &step)
            .unwrap()
            .key()
            .unwrap(),
    );
    keys.push(
        KeyDocument::new(&s, parent.clone(), &step)
            .unwrap()
            .with_inputs(&json!({"files": {"Makefile": "sha256:00"}}))
            .unwrap()
            .key()
            .unwrap(),
    );
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "a changed field must change the key");
}

#[test]
fn a_change_reaches_every_later_key_through_the_parent_and_no_earlier_one() {
    let s = settings();
    let steps: Vec<Value> = (0..10)
        .map(|i| json!({"op": {"config": {"env": [[format!("V{i}"), "x"]]}}}))
        .collect();
    let chain = |steps: &[Value]| -> Vec<CacheKey> {
        let mut parent = Parent::Scratch;
        let mut out = Vec::new();
        for st in steps {
            let k = KeyDocument::new(&s, parent, st).unwrap().key().unwrap();
            out.push(k);
            parent = Parent::Step(k);
        }
        out
    };
    let before = chain(&steps);
    let mut edited = steps.clone();
    edited[3] = json!({"op": {"config": {"env": [["V3", "y"]]}}});
    let after = chain(&edited);
    assert_eq!(before[..3], after[..3]);
    for i in 3..10 {
        assert_ne!(before[i], after[i], "step {i}");
    }
    // `child` is the same chain link.
    let d0 = KeyDocument::new(&s, Parent::Scratch, &steps[0]).unwrap();
    assert_eq!(d0.child(&s, &steps[1]).unwrap().key().unwrap(), before[1]);
}

/// `kiln --root STORE debug steps DOCKERFILE`, required to succeed, as JSON.
fn debug_steps(store: &std::path::Path, dockerfile: &std::path::Path) -> Value {
    let out = Command::new(kiln())
        .args(["debug", "steps", "--root"])
        .arg(store)
        .arg(dockerfile)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The real lowering of a RUN step (`kiln debug steps`), edited in one argument: the diff names
/// that argument first.
#[test]
fn the_diff_names_the_first_differing_field_of_a_lowered_step() {
    let t = tempfile::tempdir().unwrap();
    let lowered = |cmd: &str| -> Value {
        let df = t.path().join("Dockerfile");
        std::fs::write(
            &df,
            format!("FROM scratch\nENV A=1\nRUN [\"/bin/sh\", \"-c\", \"{cmd}\"]\n"),
        )
        .unwrap();
        let v = debug_steps(&t.path().join("store"), &df);
        json!({"op": v[0]["steps"][2]["op"].clone()})
    };
    let s = settings();
    let parent = Parent::Step(CacheKey::of(b"env"));
    let old = KeyDocument::new(&s, parent.clone(), &lowered("make")).unwrap();
    let new = KeyDocument::new(&s, parent, &lowered("make test")).unwrap();
    assert_ne!(old.key().unwrap(), new.key().unwrap());
    let first = first_difference(&old, &new).unwrap();
    assert_eq!(first.path, "step.op.run.argv[2]");
    assert_eq!(first.old, Some(json!("make")));
    assert_eq!(first.new, Some(json!("make test")));
    assert_eq!(
        first.to_string(),
        r#"step.op.run.argv[2]: "make" → "make test""#
    );
    assert_eq!(differences(&old, &new).len(), 1);

    // Settings are named before the step; the parent after it.
    let mut other = settings();
    other.layer = LayerSettings::new(Compression::zstd(), Some(0));
    let moved = KeyDocument::new(&other, Parent::Scratch, &lowered("make test")).unwrap();
    let all: Vec<String> = differences(&old, &moved)
        .into_iter()
        .map(|c| c.path)
        .collect();
    assert_eq!(
        all,
        [
            "layer.compression",
            "layer.level",
            "layer.source_date_epoch",
            "step.op.run.argv[2]",
            "parent"
        ]
    );
    assert_eq!(
        first_difference(&old, &moved).unwrap().path,
        "layer.compression"
    );
}

/// 20,000 ENV lines lowered by the real binary: every step's key document holds only its own
/// step and its parent's key, so documents stay the same size along the chain (no document
/// repeats the environment) and the chain costs linear work.
#[test]
fn a_20000_step_env_chain_has_constant_size_documents() {
    const N: usize = 20_000;
    let t = tempfile::tempdir().unwrap();
    let df = t.path().join("Dockerfile");
    let mut text = String::from("FROM scratch\n");
    for i in 0..N {
        text.push_str(&format!("ENV V{i}=value{i}\n"));
    }
    std::fs::write(&df, text).unwrap();
    let v = debug_steps(&t.path().join("store"), &df);
    let steps = v[0]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), N + 1);

    let s = settings();
    let mut parent = Parent::Scratch;
    let (mut min, mut max) = (usize::MAX, 0);
    let mut keys = Vec::with_capacity(N);
    for st in &steps[1..] {
        let doc = KeyDocument::new(&s, parent, &json!({"op": st["op"]})).unwrap();
        let len = doc.canonical().unwrap().len();
        // The first document's parent is `scratch`, the others' a key: compare like with like.
        if matches!(doc.parent, Parent::Step(_)) {
            min = min.min(len);
            max = max.max(len);
        }
        let k = doc.key().unwrap();
        keys.push(k);
        parent = Parent::Step(k);
    }
    // The only growth along the chain is the step's own number in `V{i}=value{i}`.
    assert!(max - min <= 2 * 5, "document sizes {min}..{max}");
    assert!(max < 400, "largest document {max} bytes");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), N);
}

// ---- the index ----------------------------------------------------------------------------

/// A record of the shared step `n`, whose result is marked `tag` throughout a `payload`-byte
/// value, so a torn or mixed record cannot pass for a whole one.
fn tagged_record(n: u64, tag: char, payload: usize) -> CacheRecord {
    let doc = KeyDocument::new(&settings(), Parent::Scratch, &json!({"step": n})).unwrap();
    let digest = kiln::image::digest_of(format!("{n}{tag}").as_bytes());
    let result = CacheResult {
        layers: vec![Descriptor::new(MediaType::ImageLayerGzip, 1234, digest)],
        diff_ids: vec![DiffId::of(format!("{n}{tag}").as_bytes())],
        config: json!({"tag": tag.to_string(), "payload": tag.to_string().repeat(payload)}),
        chain: None,
    };
    CacheRecord::new(doc, result, 1).unwrap()
}

/// A record read back is one of the writers' records, whole.
fn check_whole(r: &CacheRecord, n: u64) {
    let tag = r.result.config["tag"].as_str().unwrap();
    let payload = r.result.config["payload"].as_str().unwrap();
    assert!(
        payload.chars().all(|c| c.to_string() == tag),
        "mixed record"
    );
    let c = tag.chars().next().unwrap();
    let want = tagged_record(n, c, payload.len());
    assert_eq!(r.result, want.result);
    assert_eq!(r.key, want.key);
}

/// The record file of `key` read raw: a whole record is a JSON object, so it is never empty and
/// ends with `}`; a record rewritten in place is seen empty or cut off. Cheaper than a parse, so
/// it looks often enough to catch a short window.
fn raw_read_is_whole(root: &Path, key: &CacheKey) -> Option<bool> {
    let path = root.join(format!("kiln/cache/records/{}.json", key.hex()));
    match std::fs::read(path) {
        Ok(b) => Some(b.last() == Some(&b'}')),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn threads_putting_the_same_and_different_keys_leave_whole_records() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let shared = tagged_record(0, 'a', 1).key;
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let mut writers = Vec::new();
        for (w, tag) in ['a', 'b', 'c'].into_iter().enumerate() {
            writers.push(scope.spawn(move || {
                let ix = Index::open(root).unwrap();
                for i in 0..20u64 {
                    ix.put(&tagged_record(0, tag, 256 << 10)).unwrap();
                    ix.put(&tagged_record(1000 * (w as u64 + 1) + i, tag, 16))
                        .unwrap();
                }
            }));
        }
        let done = &done;
        let reader = scope.spawn(move || {
            let ix = Index::open(root).unwrap();
            let mut seen = 0;
            while !done.load(Ordering::Relaxed) {
                match ix.get(&shared).unwrap() {
                    Some(r) => {
                        check_whole(&r, 0);
                        seen += 1;
                    }
                    // Once written, a record never reads as missing (a torn read is a miss).
                    None => assert_eq!(seen, 0, "the record went missing while rewritten"),
                }
            }
            seen
        });
        let raw = scope.spawn(move || {
            let mut seen = 0;
            while !done.load(Ordering::Relaxed) {
                match raw_read_is_whole(root, &shared) {
                    Some(whole) => {
                        assert!(whole, "a torn record file");
                        seen += 1;
                    }
                    None => assert_eq!(seen, 0, "the record went missing while rewritten"),
                }
            }
            seen
        });
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
        assert!(reader.join().unwrap() > 0);
        assert!(raw.join().unwrap() > 0);
    });
    let ix = Index::open(root).unwrap();
    let all = ix.list().unwrap();
    assert_eq!(all.len(), 1 + 3 * 20);
    check_whole(&ix.get(&shared).unwrap().unwrap(), 0);
    assert_eq!(
        std::fs::read_dir(root.join("kiln/cache/tmp"))
            .unwrap()
            .count(),
        0
    );
}

fn spawn_child(mode: &str, root: &Path, tag: char) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "child_writer",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            "KILN_CACHE_CHILD",
            format!("{mode}:{tag}:{}", root.display()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Not a test: the child process of the tests below (does nothing unless `KILN_CACHE_CHILD`
/// is set). `puts:TAG:ROOT`: 30 puts of the shared key and 30 of its own keys, then exit.
/// `forever:TAG:ROOT`: puts of a 16 MiB record of the shared key until killed.
#[test]
#[ignore = "started by the concurrency tests as a second writer process"]
fn child_writer() {
    let Ok(spec) = std::env::var("KILN_CACHE_CHILD") else {
        return;
    };
    let mut parts = spec.splitn(3, ':');
    let (mode, tag, root) = (
        parts.next().unwrap(),
        parts.next().unwrap().chars().next().unwrap(),
        PathBuf::from(parts.next().unwrap()),
    );
    let ix = Index::open(&root).unwrap();
    match mode {
        "puts" => {
            for i in 0..30u64 {
                ix.put(&tagged_record(0, tag, 512 << 10)).unwrap();
                ix.put(&tagged_record(100 * (tag as u64) + i, tag, 16))
                    .unwrap();
            }
        }
        "forever" => {
            let r = tagged_record(0, tag, 16 << 20);
            loop {
                ix.put(&r).unwrap();
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

#[test]
fn two_processes_putting_the_same_key_leave_one_whole_record() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let ix = Index::open(root).unwrap();
    let shared = tagged_record(0, 'x', 1).key;
    let mut children = vec![
        spawn_child("puts", root, 'p'),
        spawn_child("puts", root, 'q'),
    ];
    let mut reads = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while children.iter_mut().any(|c| c.try_wait().unwrap().is_none()) {
        assert!(Instant::now() < deadline, "children did not finish");
        match ix.get(&shared).unwrap() {
            Some(r) => {
                check_whole(&r, 0);
                reads += 1;
            }
            None => assert_eq!(reads, 0, "the record went missing while rewritten"),
        }
        for _ in 0..100 {
            if let Some(whole) = raw_read_is_whole(root, &shared) {
                assert!(whole, "a torn record file");
            }
        }
    }
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let r = ix.get(&shared).unwrap().expect("one record wins");
    check_whole(&r, 0);
    assert!(["p", "q"].contains(&r.result.config["tag"].as_str().unwrap()));
    assert_eq!(ix.list().unwrap().len(), 1 + 2 * 30);
    assert_eq!(
        std::fs::read_dir(root.join("kiln/cache/tmp"))
            .unwrap()
            .count(),
        0
    );
    eprintln!("{reads} whole reads while two processes wrote");
}

/// A writer SIGKILLed while its temp file is being written: the record is absent or whole, the
/// temp file is ignored by reads and listings, and the next `Index::open` sweeps it (its
/// writer's lease is gone), while a live writer's temp file is never swept.
#[test]
fn a_writer_killed_mid_put_leaves_no_half_record() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path();
    let tmp = root.join("kiln/cache/tmp");
    let shared = tagged_record(0, 'k', 1).key;
    Index::open(root).unwrap();
    let mut leftover = None;
    for _attempt in 0..20 {
        let mut child = spawn_child("forever", root, 'k');
        let deadline = Instant::now() + Duration::from_secs(60);
        // Wait until one put has finished and a temp file with some bytes in it shows the
        // child inside the next one.
        let ix = Index::open(root).unwrap();
        let seen = loop {
            assert!(Instant::now() < deadline, "the child never started a put");
            if ix.peek(&shared).unwrap().is_none() {
                std::thread::sleep(Duration::from_millis(1));
                continue;
            }
            let found = std::fs::read_dir(&tmp)
                .unwrap()
                .flatten()
                .find(|e| e.metadata().is_ok_and(|m| m.len() > 0));
            if found.is_some() {
                break found;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        if let Some(e) = seen
            && e.path().exists()
        {
            leftover = Some(e.path());
            break;
        }
    }
    let leftover = leftover.expect("no kill landed inside a put in 20 attempts");
    let partial = std::fs::metadata(&leftover).unwrap().len();
    assert!(partial > 0);

    // A live writer's temp file, which no sweep may remove.
    let live = tmp.join(format!("put-{}-live", kiln::lease::token(root).unwrap()));
    std::fs::write(&live, "{").unwrap();

    let ix = Index::open(root).unwrap(); // sweeps
    assert!(
        !leftover.exists(),
        "the dead writer's temp file was not swept"
    );
    assert!(live.exists(), "a live writer's temp file was swept");
    // The record of the last finished put is there, whole.
    check_whole(
        &ix.get(&shared).unwrap().expect("the finished put's record"),
        0,
    );
    let all = ix.list().unwrap();
    assert_eq!(all.len(), 1);
    check_whole(&all[0], 0);
    // The index keeps working after the kill.
    ix.put(&tagged_record(0, 'z', 8)).unwrap();
    assert_eq!(
        ix.get(&shared).unwrap().unwrap().result.config["tag"],
        json!("z")
    );
}

/// The blobs the records reference survive the store's prune; others go.
#[test]
fn roots_keep_referenced_blobs_through_store_prune() {
    let t = tempfile::tempdir().unwrap();
    let store = Store::open(t.path()).unwrap();
    let kept = store
        .put_bytes(kiln::image::MEDIA_TYPE_MANIFEST, b"a cached layer")
        .unwrap();
    let dropped = store
        .put_bytes(kiln::image::MEDIA_TYPE_MANIFEST, b"nobody's layer")
        .unwrap();
    let ix = Index::open(t.path()).unwrap();
    let doc = KeyDocument::new(&settings(), Parent::Scratch, &json!({"op": "copy"})).unwrap();
    let diff_id = DiffId::of(b"a cached layer");
    let record = CacheRecord::new(
        doc,
        CacheResult {
            layers: vec![Descriptor::new(
                MediaType::ImageLayerGzip,
                kept.size(),
                kept.digest().clone(),
            )],
            diff_ids: vec![diff_id],
            config: Value::Null,
            chain: None,
        },
        kiln::image::config::now_unix(),
    )
    .unwrap();
    assert_eq!(record.bytes, kept.size());
    ix.put(&record).unwrap();
    let roots = ix.roots().unwrap();
    assert_eq!(roots.blobs, vec![kept.digest().clone()]);
    assert!(roots.diff_ids.contains(&diff_id));
    let report = store.prune_keeping(&roots.blobs).unwrap();
    assert_eq!(report.blobs_removed, 1);
    assert!(store.has_blob(kept.digest()));
    assert!(!store.has_blob(dropped.digest()));
    // The index lives beside the layout and outlives the prune.
    assert_eq!(ix.get(&record.key).unwrap().unwrap().key, record.key);
}
