//! The lowering pass (`kiln debug steps`): every step worked out before anything runs, with no
//! I/O and no privilege. It runs on the whole real-world corpus as an unprivileged user with no
//! store, twice per file with byte-identical output, and a few step lists are pinned.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};

use common::build::{Runner, kiln_as};

/// `kiln debug steps ARGS -` as `who`, the Dockerfile on stdin, `KILN_ROOT` at `root`.
fn steps_as(who: Runner, root: &Path, text: &[u8], args: &[&str]) -> Output {
    let mut cmd = kiln_as(who);
    cmd.env("KILN_ROOT", root)
        .args(["debug", "steps"])
        .args(args)
        .arg("-")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running kiln");
    child.stdin.take().unwrap().write_all(text).unwrap();
    child.wait_with_output().unwrap()
}

/// One line per step: number, progress name, the op as compact JSON (keys sorted), and the
/// fields left unresolved.
fn summary(json: &[u8]) -> String {
    let stages: serde_json::Value = serde_json::from_slice(json).expect("debug steps prints JSON");
    let mut out = String::new();
    for stage in stages.as_array().unwrap() {
        for s in stage["steps"].as_array().unwrap() {
            out.push_str(&format!(
                "#{} {} => {}",
                s["id"]["number"],
                s["name"].as_str().unwrap(),
                serde_json::to_string(&s["op"]).unwrap()
            ));
            if let Some(u) = s["unresolved"].as_array() {
                let u: Vec<&str> = u.iter().map(|v| v.as_str().unwrap()).collect();
                out.push_str(&format!(" unresolved={}", u.join(",")));
            }
            out.push('\n');
        }
    }
    out
}

#[test]
fn lowering_is_stable_and_needs_nothing_on_the_realworld_corpus() {
    let Some(dir) = common::conformance_dir("lowering_is_stable_on_the_realworld_corpus") else {
        return;
    };
    // Without root, and with a store path that does not exist: lowering must not create it.
    let who = if Runner::User("kiln-nosubid").available("lowering_realworld") {
        Runner::User("kiln-nosubid")
    } else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("no-store-here");
    let cases = common::realworld_cases(&dir);
    let mut failures = Vec::new();
    let (mut lowered, mut rejected, mut steps) = (0, 0, 0);
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read(case.join("Dockerfile")).unwrap();
        let first = steps_as(who, &root, &text, &[]);
        let second = steps_as(who, &root, &text, &[]);
        match common::REALWORLD_REJECTED.iter().find(|(n, _)| *n == name) {
            Some((_, expected)) => {
                let err = String::from_utf8_lossy(&first.stderr);
                if first.status.success() || !err.contains(expected) {
                    failures.push(format!(
                        "{name}: expected the error {expected:?}, got {err}"
                    ));
                } else if first.stderr != second.stderr || second.status.success() {
                    failures.push(format!("{name}: the error differs between two runs"));
                } else {
                    rejected += 1;
                }
            }
            None => {
                if !first.status.success() {
                    failures.push(format!(
                        "{name}: lowering failed: {}",
                        String::from_utf8_lossy(&first.stderr)
                    ));
                } else if first.stdout != second.stdout {
                    failures.push(format!("{name}: two runs printed different steps"));
                } else {
                    lowered += 1;
                    steps += summary(&first.stdout).lines().count();
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert_eq!((lowered, rejected), (272, 9));
    assert!(steps > 281, "every lowered file has steps ({steps})");
    assert!(
        !root.exists(),
        "lowering created {} (it must touch no file)",
        root.display()
    );
    eprintln!("lowered {lowered} files into {steps} steps, twice each; {rejected} rejected");
}

/// ARG/ENV scoping, WORKDIR from ENV, ONBUILD of a stage base, SHELL and USER as later steps
/// see them, EXPOSE normalised, RUN mounts with a stage source, a `#!` heredoc as a script,
/// an expanded COPY heredoc, `--from` of a stage, ENTRYPOINT clearing the base CMD, and an
/// unresolved base.
const PINNED: &str = r#"# syntax=docker/dockerfile:1
ARG TAG=1.0
FROM scratch AS base
ARG TAG
ENV APP=/srv/app PATH=/opt/bin:$PATH
WORKDIR $APP
ONBUILD COPY hooks/ ./hooks/
SHELL ["/bin/ash", "-eo", "pipefail", "-c"]
USER 1000:1000
EXPOSE 80 53/udp
LABEL version=$TAG

FROM base AS build
ARG MODE=release
RUN --mount=type=cache,target=/cache,id=c-$MODE --mount=type=bind,from=base,source=/,target=/b echo "$MODE $TAG" > out
RUN <<EOT
#!/bin/sh
echo script
EOT
COPY --chown=app:app --chmod=0644 <<conf app.conf
mode=$MODE
conf

FROM busybox:latest
COPY --from=build /srv/app/out /out
ENTRYPOINT ["/bin/sh"]
CMD echo $HOME
"#;

const PINNED_STEPS: &str = include_str!("lowering_pinned.txt");

#[test]
fn pinned_step_lists() {
    let scratch = tempfile::tempdir().unwrap();
    let root = scratch.path().join("no-store");
    let out = steps_as(
        Runner::Root,
        &root,
        PINNED.as_bytes(),
        &["--build-arg", "MODE=debug"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = summary(&out.stdout);
    assert_eq!(got, PINNED_STEPS, "got:\n{got}");

    // The target cuts the stages; the default of MODE applies without the build-arg.
    let out = steps_as(
        Runner::Root,
        &root,
        PINNED.as_bytes(),
        &["--target", "build"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = summary(&out.stdout);
    let expected: String = PINNED_STEPS
        .lines()
        .take_while(|l| !l.starts_with("#16 "))
        .map(|l| format!("{}\n", l.replace("debug", "release")))
        .collect();
    assert_eq!(got, expected);
    assert!(!root.exists());
}

/// A base that is in the store is read: its ENV reaches RUN, its WORKDIR a relative COPY, and
/// nothing is unresolved.
#[test]
fn a_stored_base_resolves_the_steps() {
    let Some(store) = common::build::busybox_store("a_stored_base_resolves_the_steps") else {
        return;
    };
    let text = b"FROM busybox\nENV X=1\nRUN echo $X\nCOPY a b\n";
    let out = steps_as(Runner::Root, store.path(), text, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = summary(&out.stdout);
    assert!(!got.contains("unresolved"), "{got}");
    assert!(got.contains(r#"["X","1"]"#), "{got}");
    assert!(got.contains(r#""workdir":"/""#), "{got}");
    // Unknown to an empty store: the same file lowers with its base unresolved.
    let empty = tempfile::tempdir().unwrap();
    let out = steps_as(Runner::Root, &empty.path().join("none"), text, &[]);
    assert!(summary(&out.stdout).contains("unresolved=config"));
}

/// A Dockerfile error names its line and instruction, before anything runs.
#[test]
fn lowering_errors_name_the_line() {
    let scratch = tempfile::tempdir().unwrap();
    let out = steps_as(
        Runner::Root,
        &scratch.path().join("none"),
        b"FROM scratch\nENV A=1\nSTOPSIGNAL NOPE\n",
        &[],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("<stdin>:3: STOPSIGNAL NOPE: invalid signal: NOPE"),
        "{err}"
    );
}

/// A stage read that the planner did not order first (here a `from=` that only expansion
/// reveals) fails at its step, whatever the number of jobs would have made of it.
#[test]
fn a_stage_read_before_it_is_built_fails_at_its_step() {
    let scratch = tempfile::tempdir().unwrap();
    let text = b"FROM scratch AS b\nARG O=from=c,target=/m\nRUN --mount=type=bind,$O cat /m/x\nFROM scratch AS c\nCOPY x /x\nFROM scratch\nCOPY --from=b /p /p\nCOPY --from=c /x /x\n";
    let out = steps_as(Runner::Root, &scratch.path().join("none"), text, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("<stdin>:3: RUN --mount=type=bind,$O cat /m/x: stage \"c\" must be built before it is copied from"),
        "{err}"
    );
}
