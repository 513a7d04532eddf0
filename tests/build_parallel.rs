//! Parallel stages (issue "[5/9] Work out every step before it runs"): independent stages run at
//! once (`kiln build --jobs N`, default the number of cores), and the image does not depend on
//! how their work interleaves.
//!
//! * The rendezvous: two independent stages each write a marker into one shared cache mount
//!   (`sharing=shared`: a shared `flock`, so both RUNs hold it at once) and wait, bounded at
//!   60 s, for the other's marker. That can only succeed if both RUNs are alive at the same
//!   time; run one after another the first one times out and the build fails (it does not hang).
//!   Each run uses a fresh store (cache mounts live in the store) and a cache id of its own, and
//!   each RUN fails if its own marker is already there, so markers left by an earlier run cannot
//!   make it pass.
//! * Determinism: a four-stage Dockerfile (two independent stages with random sleeps, so they
//!   finish in either order, a stage on top of one of them, a scratch final stage copying from
//!   all three) built under `SOURCE_DATE_EPOCH`, five times with the default jobs and five times
//!   with `--jobs 1`, each into a fresh store: every manifest digest is the same. Fresh stores,
//!   because then every build unpacks the base and runs every step (concurrently, for the
//!   parallel builds), and the test stays meaningful once a step cache can answer from a store.

mod common;

use common::build::{Built, Runner, runner_dir, runner_store, try_build_as};

use common::unique;

/// The flags that let two stages run at once: none where the default (the number of cores) is
/// at least 2, else `--jobs 2` (on one core the default is serial, by contract).
fn two_at_once() -> Vec<&'static str> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cores >= 2 {
        vec![]
    } else {
        vec!["--jobs", "2"]
    }
}

fn digest(b: &Built) -> String {
    b.metadata["containerimage.digest"]
        .as_str()
        .unwrap_or_else(|| panic!("no containerimage.digest in {}", b.metadata))
        .to_string()
}

/// One stage's RUN of the rendezvous: marks `me`, waits (600 × 0.1 s) for `other`.
fn rendezvous_run(id: &str, me: &str, other: &str) -> String {
    format!(
        "RUN --mount=type=cache,target=/shared,id={id},sharing=shared \
         if [ -e /shared/{me} ]; then echo 'stale marker /shared/{me}: not a fresh cache' >&2; exit 1; fi; \
         touch /shared/{me}; i=0; \
         while [ ! -e /shared/{other} ]; do \
           i=$((i+1)); \
           if [ $i -gt 600 ]; then echo 'stage {me}: no marker from stage {other} after 60 s: the stages did not run at once' >&2; exit 1; fi; \
           sleep 0.1; \
         done; \
         echo 'stage {me} met stage {other}' > /met-{me}"
    )
}

fn rendezvous(who: Runner) {
    let t = format!("independent_stages_run_at_once_as_{}", who.label());
    let Some(store) = runner_store(who, &t) else {
        return;
    };
    let ctx = runner_dir(who);
    let id = unique("rendezvous");
    let dockerfile = format!(
        "FROM busybox AS a\n{}\n\nFROM busybox AS b\n{}\n\n\
         FROM scratch\nCOPY --from=a /met-a /\nCOPY --from=b /met-b /\n",
        rendezvous_run(&id, "a", "b"),
        rendezvous_run(&id, "b", "a"),
    );
    let start = std::time::Instant::now();
    let b = try_build_as(
        who,
        store.path(),
        ctx.path(),
        &dockerfile,
        &two_at_once(),
        &[],
    );
    assert!(
        b.output.status.success(),
        "{t}: the two independent stages must run at the same time (failed after {:.1} s):\n\
         {dockerfile}\n{}",
        start.elapsed().as_secs_f64(),
        b.stderr()
    );
    assert_eq!(b.read("/met-a"), "stage a met stage b\n");
    assert_eq!(b.read("/met-b"), "stage b met stage a\n");
}

#[test]
fn independent_stages_run_at_once_as_root() {
    rendezvous(Runner::Root);
}

#[test]
fn independent_stages_run_at_once_rootless() {
    rendezvous(Runner::User("kiln-test"));
}

/// Two independent stages that finish in random order, with different content, one stage on
/// top of `a`, and a final stage copying from all three (not in the order they were defined).
const FOUR_STAGES: &str = r#"FROM busybox AS a
ENV WHO=a
RUN sleep 0.$((RANDOM % 4)); mkdir -p /out && echo "made by $WHO" > /out/a.txt && seq 1 3000 > /out/numbers

FROM busybox AS b
RUN sleep 0.$((RANDOM % 4)); mkdir -p /out/deep/er && echo "made by b" > /out/b.txt && \
    i=0; while [ $i -lt 200 ]; do echo "b line $i" >> /out/deep/er/lines; i=$((i+1)); done

FROM a AS c
RUN echo "c on top of a" >> /out/a.txt && rm /out/numbers

FROM scratch
COPY --from=b /out/ /b/
COPY --from=c /out/ /c/
COPY --from=a /out/a.txt /out/numbers /a/
"#;

#[test]
fn parallel_and_serial_builds_give_the_same_digest() {
    const T: &str = "parallel_and_serial_builds_give_the_same_digest";
    let env = [("SOURCE_DATE_EPOCH", "1700000000")];
    let mut runs: Vec<(&str, String)> = Vec::new();
    for (label, flags) in [("default jobs", vec![]), ("--jobs 1", vec!["--jobs", "1"])] {
        for _ in 0..5 {
            let Some(store) = runner_store(Runner::Root, T) else {
                return;
            };
            let ctx = runner_dir(Runner::Root);
            let b = try_build_as(
                Runner::Root,
                store.path(),
                ctx.path(),
                FOUR_STAGES,
                &flags,
                &env,
            );
            assert!(
                b.output.status.success(),
                "{T}: build with {label} failed:\n{}",
                b.stderr()
            );
            if runs.is_empty() {
                // The stages' results landed where the Dockerfile says (none swapped or lost).
                assert_eq!(b.read("/a/a.txt"), "made by a\n");
                assert_eq!(b.read("/a/numbers").lines().count(), 3000);
                assert_eq!(b.read("/c/a.txt"), "made by a\nc on top of a\n");
                assert!(!b.exists("/c/numbers"));
                assert_eq!(b.read("/b/b.txt"), "made by b\n");
                assert_eq!(b.read("/b/deep/er/lines").lines().count(), 200);
            }
            runs.push((label, digest(&b)));
        }
    }
    let first = &runs[0].1;
    assert!(
        runs.iter().all(|(_, d)| d == first),
        "{T}: the manifest digest depends on the run:\n{}",
        runs.iter()
            .map(|(l, d)| format!("  {l}: {d}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A failing stage stops the others at their next step: stage `b` is in a RUN when `a` fails,
/// finishes that RUN, and starts nothing after it (the build fails with `a`'s error).
#[test]
fn a_failure_stops_the_other_stages() {
    let who = Runner::Root;
    let Some(store) = runner_store(who, "a_failure_stops_the_other_stages") else {
        return;
    };
    let ctx = runner_dir(who);
    let marker = unique("after-failure");
    let dockerfile = format!(
        "FROM busybox AS a\n\
         RUN sleep 0.5; exit 3\n\
         FROM busybox AS b\n\
         RUN sleep 3\n\
         RUN echo {marker}\n\
         FROM scratch\n\
         COPY --from=a /bin/sh /a\n\
         COPY --from=b /bin/sh /b\n"
    );
    let mut extra = two_at_once();
    extra.extend(["--progress", "plain"]);
    let b = try_build_as(who, store.path(), ctx.path(), &dockerfile, &extra, &[]);
    let err = b.stderr();
    assert!(!b.output.status.success(), "{err}");
    assert!(err.contains(":2: RUN sleep 0.5; exit 3"), "{err}");
    assert!(err.contains("exit code: 3"), "{err}");
    // b's first RUN ran at the same time as a's (it started), its second never started.
    assert!(err.contains("[b 2/3] RUN sleep 3"), "{err}");
    assert!(
        !err.contains(&marker),
        "a step started after the failure:\n{err}"
    );
}

/// A failing stage kills the command another stage is running: the build ends soon after the
/// failure, not when the other command would have finished, and reports the real failure.
#[test]
fn a_failure_kills_the_other_stages_commands() {
    let who = Runner::Root;
    let Some(store) = runner_store(who, "a_failure_kills_the_other_stages_commands") else {
        return;
    };
    let ctx = runner_dir(who);
    let dockerfile = "FROM busybox AS a\n\
         RUN sleep 1; exit 4\n\
         FROM busybox AS b\n\
         RUN sleep 60\n\
         FROM scratch\n\
         COPY --from=a /bin/sh /a\n\
         COPY --from=b /bin/sh /b\n";
    let started = std::time::Instant::now();
    let b = try_build_as(
        who,
        store.path(),
        ctx.path(),
        dockerfile,
        &two_at_once(),
        &[],
    );
    let took = started.elapsed();
    let err = b.stderr();
    assert!(!b.output.status.success(), "{err}");
    assert!(err.contains(":2: RUN sleep 1; exit 4"), "{err}");
    assert!(err.contains("exit code: 4"), "{err}");
    assert!(
        took < std::time::Duration::from_secs(30),
        "the build waited {took:?} for the other stage's sleep 60"
    );
}
