//! The step cache ([6/9], first part): a second build of an unchanged context runs no step
//! that makes a layer and writes no new blob; `touch` keeps every hit; editing one file re-runs
//! the COPY that selects it and what follows; `--no-cache` runs everything. As root and as the
//! unprivileged user.

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

fn write(ctx: &std::path::Path, rel: &str, text: &str) {
    let p = ctx.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn hits_and_misses(who: Runner) {
    let test = format!("step_cache_{}", who.label());
    let Some(store) = runner_store(who, &test) else {
        return;
    };
    let ctx = runner_dir(who);
    write(ctx.path(), "a.txt", "a");
    write(ctx.path(), "src/main.txt", "one");
    write(ctx.path(), "src/lib.txt", "lib");
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
    let who = Runner::Root;
    let Some(store) = runner_store(who, "misses_explain_themselves") else {
        return;
    };
    let ctx = runner_dir(who);
    write(ctx.path(), "a.txt", "a");
    write(ctx.path(), "src/main.txt", "one");
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
    assert!(
        err.contains("cache miss: the context files it copies changed"),
        "{err}"
    );
    assert!(err.contains("cache miss: an earlier step changed"), "{err}");
    assert!(err.contains("1/4 steps cached (25%)"), "{err}");
    let reasons: Vec<Option<String>> = edited.metadata["kiln.steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().map(str::to_string))
        .collect();
    assert_eq!(reasons[1], None, "the first COPY was reused");
    assert_eq!(
        reasons[2].as_deref(),
        Some("the context files it copies changed")
    );
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
    let Some(store) = runner_store(who, "cache_records_are_roots_until_pruned") else {
        return;
    };
    let ctx = runner_dir(who);
    write(ctx.path(), "a.txt", "a");
    write(ctx.path(), "src/main.txt", "one");
    build_as(
        who,
        store.path(),
        ctx.path(),
        DOCKERFILE,
        &["-t", "c:1"],
        &[],
    );
    let kiln = |args: &[&str]| {
        let out = common::build::kiln_as(who)
            .arg("--root")
            .arg(store.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
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
