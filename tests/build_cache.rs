//! The step cache ([6/9]): a second build of an unchanged context runs no step that makes a
//! layer and writes no new blob; `touch` keeps every hit; editing one file re-runs the COPY that
//! selects it and what follows, and the miss names the file; a build arg re-runs only from the
//! first step that sees it; a `COPY --from` of paths a stage change did not touch stays a hit;
//! wildcards and symlinked sources are keyed by exactly what they select; `--no-cache`,
//! `--no-cache-filter`, `--require-cache`; `kiln cache stats`. As root and as the unprivileged
//! users where the user namespace matters.

mod common;

use common::build::{Built, RUNNERS, Runner, build_as, runner_dir, runner_store};

const DOCKERFILE: &str = "FROM busybox\n\
    COPY a.txt /a.txt\n\
    COPY src/ /src/\n\
    RUN cat /src/main.txt > /built.txt\n\
    RUN echo unrelated > /other.txt\n";

/// `(instruction, cached)` of each step of `--metadata-file`.
fn cached(b: &Built) -> Vec<(String, bool)> {
    b.metadata["kiln.steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["instruction"].as_str().unwrap().to_string(),
                s["cached"].as_bool().unwrap(),
            )
        })
        .collect()
}

fn blobs(root: &std::path::Path) -> usize {
    std::fs::read_dir(root.join("blobs/sha256"))
        .unwrap()
        .count()
}

/// A store for `who` with busybox, and a context holding `files` (`None`: skipped).
fn fixture(
    who: Runner,
    test: &str,
    files: &[(&str, &str)],
) -> Option<(common::build::Scratch, common::build::Scratch)> {
    let store = runner_store(who, test)?;
    let ctx = runner_dir(who);
    for (rel, text) in files {
        write(ctx.path(), rel, text);
    }
    Some((store, ctx))
}

/// Whether each step with a cache key was reused.
fn hits(b: &Built) -> Vec<bool> {
    keyed(b).iter().map(|(_, c)| *c).collect()
}

fn write(ctx: &std::path::Path, rel: &str, text: &str) {
    let p = ctx.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn hits_and_misses(who: Runner) {
    let test = format!("step_cache_{}", who.label());
    let Some((store, ctx)) = fixture(
        who,
        &test,
        &[
            ("a.txt", "a"),
            ("src/main.txt", "one"),
            ("src/lib.txt", "lib"),
        ],
    ) else {
        return;
    };
    let sde = [("SOURCE_DATE_EPOCH", "1700000000")];
    let first = build_as(who, store.path(), ctx.path(), DOCKERFILE, &[], &sde);
    assert!(
        cached(&first).iter().all(|(_, c)| !c),
        "{:?}",
        cached(&first)
    );
    let blobs_after_first = blobs(store.path());

    // Unchanged, then every file touched: every step that makes a layer is reused.
    let second = build_as(who, store.path(), ctx.path(), DOCKERFILE, &[], &sde);
    let steps = cached(&second);
    assert!(steps[1..].iter().all(|(_, c)| *c), "{steps:?}");
    assert_eq!(
        second.id, first.id,
        "a fully cached build gives the same image"
    );
    assert_eq!(blobs(store.path()), blobs_after_first, "no new blob");
    for f in ["a.txt", "src/main.txt", "src/lib.txt"] {
        let p = ctx.path().join(f);
        let t = std::fs::File::options().append(true).open(&p).unwrap();
        t.set_modified(std::time::SystemTime::now()).unwrap();
    }
    let touched = build_as(who, store.path(), ctx.path(), DOCKERFILE, &[], &sde);
    assert!(
        cached(&touched)[1..].iter().all(|(_, c)| *c),
        "{:?}",
        cached(&touched)
    );

    // One file edited inside the copied directory: that COPY and what follows run again.
    write(ctx.path(), "src/main.txt", "two");
    let edited = build_as(who, store.path(), ctx.path(), DOCKERFILE, &[], &sde);
    let steps: Vec<bool> = cached(&edited).iter().map(|(_, c)| *c).collect();
    assert_eq!(
        steps,
        [false, true, false, false, false],
        "{:?}",
        cached(&edited)
    );
    assert_eq!(edited.read("built.txt"), "two");

    // --no-cache runs every step again.
    let forced = build_as(
        who,
        store.path(),
        ctx.path(),
        DOCKERFILE,
        &["--no-cache"],
        &sde,
    );
    assert!(
        cached(&forced).iter().all(|(_, c)| !c),
        "{:?}",
        cached(&forced)
    );
    assert_eq!(forced.id, edited.id);
}

#[test]
fn step_cache_hits_and_misses() {
    for who in RUNNERS {
        hits_and_misses(who);
    }
}

/// `--explain-cache` and the metadata file say why a step missed, and the build says how many
/// steps it reused.
#[test]
fn misses_explain_themselves() {
    for who in RUNNERS {
        misses_explain_themselves_as(who);
    }
}

fn misses_explain_themselves_as(who: Runner) {
    let Some((store, ctx)) = fixture(
        who,
        &format!("misses_explain_themselves_{}", who.label()),
        &[("a.txt", "a"), ("src/main.txt", "one")],
    ) else {
        return;
    };
    let first = build_as(
        who,
        store.path(),
        ctx.path(),
        DOCKERFILE,
        &["--explain-cache"],
        &[],
    );
    assert!(
        first
            .stderr()
            .contains("cache miss: first build of this step"),
        "{}",
        first.stderr()
    );
    assert!(
        first.stderr().contains("0/4 steps cached (0%)"),
        "{}",
        first.stderr()
    );
    write(ctx.path(), "src/main.txt", "two");
    let edited = build_as(
        who,
        store.path(),
        ctx.path(),
        DOCKERFILE,
        &["--explain-cache"],
        &[],
    );
    let err = edited.stderr();
    // The file no instruction names is named.
    assert!(
        err.contains("cache miss: 1 file changed (src/main.txt)"),
        "{err}"
    );
    assert!(
        err.contains("cache miss: parent step missed: 1 file changed (src/main.txt) ("),
        "{err}"
    );
    assert!(err.contains("1/4 steps cached (25%), saved ~"), "{err}");
    let reasons: Vec<Option<String>> = edited.metadata["kiln.steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().map(str::to_string))
        .collect();
    assert_eq!(reasons[1], None, "the first COPY was reused");
    assert_eq!(reasons[2].as_deref(), Some("1 file changed (src/main.txt)"));
    // Without SOURCE_DATE_EPOCH too, a rebuild that reuses every step makes the same image
    // (its timestamps are the earlier build's) and writes no blob. A second apart, so the
    // clock alone would change it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let blobs_before = blobs(store.path());
    let same = build_as(who, store.path(), ctx.path(), DOCKERFILE, &[], &[]);
    assert_eq!(same.id, edited.id, "an unchanged rebuild is the same image");
    assert_eq!(blobs(store.path()), blobs_before, "no new blob");
    let changed = DOCKERFILE.replace("echo unrelated", "echo changed");
    let b = build_as(
        who,
        store.path(),
        ctx.path(),
        &changed,
        &["--explain-cache"],
        &[],
    );
    assert!(
        b.stderr()
            .contains("cache miss: instruction changed: step.op.run.argv"),
        "{}",
        b.stderr()
    );
}

/// Cached steps survive `kiln prune` (their records are roots), `kiln cache ls` lists them,
/// and `kiln cache prune --all` drops them: the next build runs every step again.
#[test]
fn cache_records_are_roots_until_pruned() {
    let who = Runner::Root;
    let Some((store, ctx)) = fixture(
        who,
        "cache_records_are_roots_until_pruned",
        &[("a.txt", "a"), ("src/main.txt", "one")],
    ) else {
        return;
    };
    build_as(
        who,
        store.path(),
        ctx.path(),
        DOCKERFILE,
        &["-t", "c:1"],
        &[],
    );
    let kiln = |args: &[&str]| common::build::kiln_ok_as(who, store.path(), args);
    let listed: serde_json::Value =
        serde_json::from_str(&kiln(&["cache", "ls", "--format", "json"])).unwrap();
    let kinds: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.len(), 4, "{listed}");
    assert_eq!(kinds.iter().filter(|k| **k == "run").count(), 2);
    assert!(kiln(&["cache", "du"]).starts_with("4 cached steps"));
    // The image's name goes and the store is pruned: the cached layers stay.
    kiln(&["rmi", "c:1"]);
    kiln(&["prune"]);
    let again = build_as(who, store.path(), ctx.path(), DOCKERFILE, &[], &[]);
    assert!(
        cached(&again)[1..].iter().all(|(_, c)| *c),
        "{:?}",
        cached(&again)
    );
    // Dropping the records frees the layers and the next build runs everything.
    let out = kiln(&["cache", "prune", "--all"]);
    assert!(out.starts_with("removed 4 cache records"), "{out}");
    assert!(kiln(&["cache", "du"]).starts_with("0 cached steps"));
    let cold = build_as(who, store.path(), ctx.path(), DOCKERFILE, &[], &[]);
    assert!(cached(&cold).iter().all(|(_, c)| !c), "{:?}", cached(&cold));
}

/// `location → cached` of each step with a cache key (FROM and config steps have none).
fn keyed(b: &Built) -> Vec<(String, bool)> {
    b.metadata["kiln.steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["key"].is_string())
        .map(|s| {
            (
                s["instruction"].as_str().unwrap().to_string(),
                s["cached"].as_bool().unwrap(),
            )
        })
        .collect()
}

const TWO_STAGES: &str = "FROM busybox AS a\n\
    COPY src/ /src/\n\
    RUN cat /src/main.txt > /main.out && echo stable > /stable.out\n\
    FROM busybox\n\
    COPY --from=a /stable.out /stable.out\n\
    ARG VERSION=1\n\
    RUN echo $VERSION > /version\n\
    RUN echo after > /after\n";

fn build_args_and_copy_from(who: Runner) {
    let test = format!("build_args_and_copy_from_{}", who.label());
    let Some((store, ctx)) = fixture(who, &test, &[("src/main.txt", "one")]) else {
        return;
    };
    let sde = [("SOURCE_DATE_EPOCH", "1700000000")];
    let first = build_as(who, store.path(), ctx.path(), TWO_STAGES, &[], &sde);
    assert!(keyed(&first).iter().all(|(_, c)| !c), "{:?}", keyed(&first));

    // A build arg only the last stage declares: everything before its first use is reused.
    let arg = build_as(
        who,
        store.path(),
        ctx.path(),
        TWO_STAGES,
        &["--build-arg", "VERSION=2", "--explain-cache"],
        &sde,
    );
    let flags: Vec<bool> = hits(&arg);
    assert_eq!(flags, [true, true, true, false, false], "{:?}", keyed(&arg));
    assert_eq!(arg.read("version"), "2\n");
    assert!(
        arg.stderr()
            .contains("cache miss: parent step missed: build arg VERSION: 1 → 2 ("),
        "{}",
        arg.stderr()
    );

    // An edit in stage a that does not change what `COPY --from=a` selects: the stage runs
    // again, the copy and what follows are reused (BuildKit's content fallback).
    write(ctx.path(), "src/main.txt", "two");
    let edited = build_as(
        who,
        store.path(),
        ctx.path(),
        TWO_STAGES,
        &["--build-arg", "VERSION=2"],
        &sde,
    );
    let flags: Vec<bool> = hits(&edited);
    assert_eq!(
        flags,
        [false, false, true, true, true],
        "{:?}",
        keyed(&edited)
    );
    assert_eq!(edited.id, arg.id, "the same final image");
    // And once more: now the stage's own key hits too.
    let again = build_as(
        who,
        store.path(),
        ctx.path(),
        TWO_STAGES,
        &["--build-arg", "VERSION=2"],
        &sde,
    );
    assert!(keyed(&again).iter().all(|(_, c)| *c), "{:?}", keyed(&again));
}

#[test]
fn build_args_and_copy_from_miss_only_what_they_change() {
    for who in RUNNERS {
        build_args_and_copy_from(who);
    }
}

/// A wildcard is keyed by the files it matches, and a symlinked source by its target's
/// content (the copy follows it), not by the whole context or the link text.
#[test]
fn wildcards_and_symlinks_are_keyed_by_what_they_select() {
    let who = Runner::Root;
    let Some((store, ctx)) = fixture(
        who,
        "wildcards_and_symlinks",
        &[("a.txt", "a"), ("b.md", "b"), ("real/data", "1")],
    ) else {
        return;
    };
    std::os::unix::fs::symlink("real/data", ctx.path().join("link")).unwrap();
    let df = "FROM busybox\nCOPY *.txt /t/\nCOPY link /l\n";
    build_as(who, store.path(), ctx.path(), df, &[], &[]);
    write(ctx.path(), "b.md", "bb");
    let b = build_as(who, store.path(), ctx.path(), df, &[], &[]);
    assert!(keyed(&b).iter().all(|(_, c)| *c), "{:?}", keyed(&b));
    write(ctx.path(), "c.txt", "c");
    let b = build_as(who, store.path(), ctx.path(), df, &["--explain-cache"], &[]);
    assert!(!keyed(&b)[0].1, "a new match misses");
    assert!(
        b.stderr().contains("cache miss: 1 file changed (c.txt)"),
        "{}",
        b.stderr()
    );
    use std::os::unix::fs::PermissionsExt;
    let a = ctx.path().join("a.txt");
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
    build_as(who, store.path(), ctx.path(), df, &[], &[]);
    std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o755)).unwrap();
    let b = build_as(who, store.path(), ctx.path(), df, &["--explain-cache"], &[]);
    assert!(
        b.stderr().contains("cache miss: mode of a.txt 0644 → 0755"),
        "{}",
        b.stderr()
    );
    write(ctx.path(), "real/data", "2");
    let b = build_as(who, store.path(), ctx.path(), df, &[], &[]);
    assert_eq!(hits(&b), [true, false], "the link's target changed");
    assert_eq!(b.read("l"), "2");
}

/// `--require-cache` fails at the first step that would run, naming it and why;
/// `--no-cache-filter STAGE` runs that stage's steps again and reuses the others'.
#[test]
fn require_cache_and_no_cache_filter() {
    let who = Runner::Root;
    let Some((store, ctx)) = fixture(
        who,
        "require_cache_and_no_cache_filter",
        &[("src/main.txt", "one")],
    ) else {
        return;
    };
    let err = common::build::build_error_as(
        who,
        store.path(),
        ctx.path(),
        TWO_STAGES,
        &["--require-cache"],
        &[],
    );
    assert!(
        err.contains(":2: COPY src/ /src/: --require-cache: the step is not cached (first build of this step)"),
        "{err}"
    );
    build_as(who, store.path(), ctx.path(), TWO_STAGES, &[], &[]);
    build_as(
        who,
        store.path(),
        ctx.path(),
        TWO_STAGES,
        &["--require-cache"],
        &[],
    );
    let b = build_as(
        who,
        store.path(),
        ctx.path(),
        TWO_STAGES,
        &["--no-cache-filter", "a"],
        &[],
    );
    let flags: Vec<bool> = hits(&b);
    assert_eq!(flags, [false, false, true, true, true], "{:?}", keyed(&b));
}

/// `kiln cache stats --json` reports the hit rates a script computes from the builds'
/// metadata files.
#[test]
fn cache_stats_match_the_metadata_files() {
    for who in RUNNERS {
        cache_stats_match_the_metadata_files_as(who);
    }
}

fn cache_stats_match_the_metadata_files_as(who: Runner) {
    let Some((store, ctx)) = fixture(
        who,
        &format!("cache_stats_match_{}", who.label()),
        &[("src/main.txt", "one")],
    ) else {
        return;
    };
    let mut expected: Vec<(usize, usize)> = Vec::new();
    for (i, args) in [
        &[][..],
        &[][..],
        &["--build-arg", "VERSION=2"][..],
        &["--no-cache"][..],
        &[][..],
    ]
    .iter()
    .enumerate()
    {
        if i == 4 {
            write(ctx.path(), "src/main.txt", "edited");
        }
        let b = build_as(who, store.path(), ctx.path(), TWO_STAGES, args, &[]);
        let k = keyed(&b);
        expected.push((k.iter().filter(|(_, c)| *c).count(), k.len()));
    }
    let out = common::build::kiln_ok_as(who, store.path(), &["cache", "stats", "--json"]);
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    let builds = stats["builds"].as_array().unwrap();
    let got: Vec<(usize, usize)> = builds
        .iter()
        .map(|b| {
            (
                b["hits"].as_u64().unwrap() as usize,
                b["steps"].as_u64().unwrap() as usize,
            )
        })
        .collect();
    assert_eq!(got, expected);
    let hits: usize = expected.iter().map(|e| e.0).sum();
    let steps: usize = expected.iter().map(|e| e.1).sum();
    let rate = stats["overall"]["hit_rate"].as_f64().unwrap();
    assert!((rate - hits as f64 / steps as f64).abs() < 1e-9, "{stats}");
    assert!(stats["overall"]["saved_seconds"].as_f64().unwrap() > 0.0);
    // --last 2 keeps the last two, and the steps that missed most are named with reasons.
    let text = common::build::kiln_ok_as(who, store.path(), &["cache", "stats", "--last", "2"]);
    assert!(text.contains("overall: 2 builds"), "{text}");
    assert!(text.contains("most missed:"), "{text}");
    assert!(text.contains("--no-cache"), "{text}");
}

/// Serves the current `body` for any path, counting requests; stops after `max` requests or
/// when the test ends (the listener is non-blocking and the thread exits on a flag).
fn serve_changing(
    body: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> (String, std::thread::JoinHandle<()>) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
        while !stop.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            let mut conn = match listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    continue;
                }
                Err(_) => return,
            };
            count.fetch_add(1, Ordering::SeqCst);
            conn.set_nonblocking(false).unwrap();
            conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
                .unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let body = body.lock().unwrap().clone();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    (format!("http://{addr}"), handle)
}

/// ADD of a URL: with `--checksum` a hit downloads nothing; without it the URL is fetched
/// every build and keyed by its bytes, so a changed file misses and an unchanged one hits.
#[test]
fn add_url_is_keyed_by_checksum_or_content() {
    use std::sync::atomic::Ordering;
    let who = Runner::Root;
    let Some((store, ctx)) = fixture(who, "add_url_keyed", &[]) else {
        return;
    };
    let body = std::sync::Arc::new(std::sync::Mutex::new(b"one\n".to_vec()));
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (url, server) = serve_changing(body.clone(), count.clone(), stop.clone());
    let sum = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"one\n"))
    };
    let df = format!(
        "FROM busybox\nADD --checksum=sha256:{sum} {url}/pinned.txt /pinned.txt\nADD {url}/live.txt /live.txt\n"
    );
    let first = build_as(who, store.path(), ctx.path(), &df, &[], &[]);
    assert_eq!(count.load(Ordering::SeqCst), 2);
    assert!(keyed(&first).iter().all(|(_, c)| !c));
    let second = build_as(who, store.path(), ctx.path(), &df, &[], &[]);
    assert!(
        keyed(&second).iter().all(|(_, c)| *c),
        "{:?}",
        keyed(&second)
    );
    assert_eq!(
        count.load(Ordering::SeqCst),
        3,
        "only the unpinned URL is fetched"
    );
    *body.lock().unwrap() = b"two\n".to_vec();
    let third = build_as(
        who,
        store.path(),
        ctx.path(),
        &df,
        &["--explain-cache"],
        &[],
    );
    assert_eq!(hits(&third), [true, false]);
    assert_eq!(
        count.load(Ordering::SeqCst),
        4,
        "fetched once, for the key and the copy"
    );
    assert_eq!(third.read("live.txt"), "two\n");
    assert!(
        third.stderr().contains(&format!(
            "cache miss: the content at {url}/live.txt changed"
        )),
        "{}",
        third.stderr()
    );
    stop.store(true, Ordering::SeqCst);
    server.join().unwrap();
}

/// A new base image under the same name: the FROM names the new image ID, and every step
/// after it says that is why it missed.
#[test]
fn a_new_base_image_is_named_as_the_cause() {
    let who = Runner::Root;
    let Some((store, ctx)) = fixture(
        who,
        "a_new_base_image_is_named",
        &[("a.txt", "a"), ("src/main.txt", "one")],
    ) else {
        return;
    };
    let Some(tar) = common::build::busybox_rootfs("a_new_base_image_is_named") else {
        return;
    };
    build_as(who, store.path(), ctx.path(), DOCKERFILE, &[], &[]);
    // The same rootfs with one more file, imported as busybox:latest.
    let work = runner_dir(who);
    let changed = work.path().join("busybox2.tar");
    std::fs::copy(&tar, &changed).unwrap();
    write(work.path(), "etc/extra", "x");
    let st = std::process::Command::new("tar")
        .arg("-rf")
        .arg(&changed)
        .arg("-C")
        .arg(work.path())
        .arg("etc/extra")
        .status()
        .unwrap();
    assert!(st.success());
    common::build::import_busybox(&changed, store.path());
    let b = build_as(
        who,
        store.path(),
        ctx.path(),
        DOCKERFILE,
        &["--explain-cache"],
        &[],
    );
    let err = b.stderr();
    assert!(
        err.contains("cache miss: parent step missed: base image busybox now sha256:"),
        "{err}"
    );
    assert!(keyed(&b).iter().all(|(_, c)| !c), "{:?}", keyed(&b));
}
