//! Hostile sizes through the real binary: variable expansion is capped (1 MiB per value, 4 MiB
//! per instruction, 64 MiB per build) with an error naming `Dockerfile:LINE` and the
//! instruction, and memory stays bounded while kiln finds out; and a Dockerfile of 100,000
//! steps builds (each step costs the same however many came before).
//!
//! Memory is bounded by running kiln under `prlimit --as` (address space): past the limit an
//! allocation fails and kiln aborts, so the expected message only appears when kiln stayed
//! within it. Nothing here asserts on time; a watchdog only keeps a regression from hanging the
//! suite.

mod common;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::build::{Runner, available, kiln_as, runner_dir};
use serde_json::Value;

/// Address space kiln may use in the hostile cases. The unbounded expansion needed more than
/// 5 GB for the nine-line file; a bounded kiln needs well under 100 MB.
const ADDRESS_SPACE: u64 = 768 << 20;

/// How long any one kiln run may take before the watchdog kills it (a hang guard, not a
/// speed check: the slowest run here takes seconds).
const WATCHDOG: Duration = Duration::from_secs(120);

const MIB: usize = 1 << 20;

/// `who`'s kiln command wrapped in `prlimit --as=ADDRESS_SPACE` (the limit is inherited by the
/// user-namespace re-exec and everything kiln starts).
fn limited(who: Runner) -> Command {
    let inner = kiln_as(who);
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={ADDRESS_SPACE}"))
        .arg("--")
        .arg(inner.get_program())
        .args(inner.get_args());
    if who != Runner::Root {
        // kiln_as gives users a clean environment.
        cmd.env_clear();
    }
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    if let Some(dir) = inner.get_current_dir() {
        cmd.current_dir(dir);
    }
    cmd
}

/// Runs `cmd` to completion, killing it after [`WATCHDOG`].
fn run_watched(mut cmd: Command, what: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    // Drain the pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut v).ok();
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut v).ok();
        v
    });
    let deadline = Instant::now() + WATCHDOG;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().ok();
            child.wait().ok();
            panic!("{what}: still running after {WATCHDOG:?}, killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out_t.join().unwrap(),
        stderr: err_t.join().unwrap(),
    }
}

/// A context directory for `who` holding `Dockerfile`.
fn context(who: Runner, dockerfile: &str) -> common::build::Scratch {
    let dir = runner_dir(who);
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    if who != Runner::Root {
        let (uid, gid) = who.ids();
        std::os::unix::fs::chown(dir.path().join("Dockerfile"), Some(uid), Some(gid)).unwrap();
    }
    dir
}

/// `kiln build` of `dockerfile` as `who` under the address-space limit, into a fresh store.
fn build_limited(
    who: Runner,
    dockerfile: &str,
    extra: &[&str],
) -> (Output, common::build::Scratch) {
    let ctx = context(who, dockerfile);
    let root = runner_dir(who);
    let mut cmd = limited(who);
    cmd.arg("--root")
        .arg(root.path())
        .args(["build", "--progress", "plain"])
        .args(extra)
        .arg(ctx.path());
    (
        run_watched(cmd, &format!("kiln build as {}", who.label())),
        root,
    )
}

/// Checks a failure: exit status 1 (not a signal: kiln stayed within its memory), and a first
/// error line naming `Dockerfile:LINE: INSTRUCTION…:` and the limit.
fn assert_limit_error(out: &Output, file: &str, line: usize, inst: &str, limit: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected kiln's own failure (exit 1), got {:?}:\n{stderr}",
        out.status
    );
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line:\n{stderr}"));
    let want = format!("{file}:{line}: {inst}");
    assert!(
        error.contains(&want),
        "error should name {want:?}:\n{error}"
    );
    assert!(
        error.contains(limit),
        "error should name {limit:?}:\n{error}"
    );
}

/// Nine lines of nested ARGs, each eight times the one before: unbounded, `I` would be 16 GB.
fn nested_args(meta: bool) -> String {
    let mut lines = Vec::new();
    if !meta {
        lines.push("FROM scratch".to_string());
    }
    lines.push(format!("ARG A={}", "x".repeat(1000)));
    let names: Vec<char> = ('A'..='I').collect();
    for w in names.windows(2) {
        lines.push(format!("ARG {}={}", w[1], format!("${}", w[0]).repeat(8)));
    }
    if meta {
        lines.push("FROM scratch".to_string());
        lines.push("ARG I".to_string());
    }
    lines.push("ENV I=$I".to_string());
    lines.join("\n") + "\n"
}

/// The nested ARGs fail at the first value past 1 MiB (`E`: 4 MB), in the stage and before
/// the first FROM, for `kiln debug plan` and `kiln build` (as root and as the unprivileged
/// users), with kiln's address space limited.
#[test]
fn nested_args_fail_at_the_cap_with_bounded_memory() {
    for meta in [false, true] {
        let text = nested_args(meta);
        // `E` is on line 6 in the stage (after FROM) and line 5 before it.
        let line = if meta { 5 } else { 6 };
        let inst = "ARG E=$D$D$D$D$D$D$D$D: failed to process \"$D$D$D$D$D$D$D$D\"";

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("Dockerfile");
        std::fs::write(&path, &text).unwrap();
        let mut cmd = limited(Runner::Root);
        cmd.args(["debug", "plan"]).arg(&path);
        let out = run_watched(cmd, "kiln debug plan");
        assert_limit_error(&out, &path.display().to_string(), line, inst, "1 MiB");

        for who in available(
            "nested_args_fail_at_the_cap_with_bounded_memory",
            &common::build::RUNNERS,
        ) {
            let (out, _root) = build_limited(who, &text, &[]);
            assert_limit_error(&out, "Dockerfile", line, inst, "1 MiB");
        }
    }
}

/// `ARG C` expands to exactly 1 MiB (`$A` is 32 KiB, `$B` eight of those, `$C` four `$B`).
fn one_mib_args() -> String {
    format!(
        "FROM scratch\nARG A={}\nARG B={}\nARG C=$B$B$B$B\n",
        "a".repeat(32 << 10),
        "$A".repeat(8)
    )
}

/// A value of exactly 1 MiB is fine everywhere (ENV, LABEL, heredoc, COPY destination); one
/// byte more is refused, in each instruction the build itself expands.
#[test]
fn a_value_at_the_cap_builds_and_one_byte_more_fails() {
    let who = Runner::Root;
    // The heredoc body is one line: 1 MiB with its newline.
    let ok = format!(
        "{}ENV BIG=$C\nLABEL big=\"$C\"\nCOPY <<EOF /big\n${{C#a}}\nEOF\n",
        one_mib_args()
    );
    let (out, root) = build_limited(who, &ok, &["-t", "big:1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect = kiln_as(who)
        .arg("--root")
        .arg(root.path())
        .args(["inspect", "big:1"])
        .output()
        .unwrap();
    assert!(inspect.status.success());
    let v: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let config = &v["config"]["config"];
    let big = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .find_map(|e| e.as_str().unwrap().strip_prefix("BIG="))
        .expect("BIG in Env");
    assert_eq!(big.len(), MIB);
    assert!(big.bytes().all(|b| b == b'a'));
    assert_eq!(config["Labels"]["big"].as_str().unwrap().len(), MIB);

    // One byte past the cap, in each instruction kiln expands while building (the plan does
    // not expand these, so this is the build's own check). Lines: 5 is the first after C.
    let cases = [
        ("LABEL big=${C}x", "LABEL big=${C}x"),
        ("ENV BIG=x$C", "ENV BIG=x$C"),
        ("WORKDIR /$C", "WORKDIR /$C"),
        ("USER $C$A", "USER $C$A"),
        ("EXPOSE $C$A", "EXPOSE $C$A"),
        ("COPY <<EOF /big\n$C$A\nEOF", "COPY <<EOF /big"),
        ("COPY Dockerfile /$C", "COPY Dockerfile /$C"),
        ("STOPSIGNAL ${C}1", "STOPSIGNAL ${C}1"),
        ("VOLUME /x$C", "VOLUME /x$C"),
    ];
    for (line, inst) in cases {
        let text = format!("{}{line}\n", one_mib_args());
        let (out, _root) = build_limited(who, &text, &[]);
        assert_limit_error(&out, "Dockerfile", 5, inst, "1 MiB");
    }
}

/// Words each under the cap still add up: one instruction may not substitute more than 4 MiB
/// (five 1 MiB labels), and a build not more than 64 MiB (70 one-MiB labels on 70 lines).
#[test]
fn instruction_and_build_totals_are_capped() {
    let who = Runner::Root;
    let five = format!("{}LABEL a=$C b=$C c=$C d=$C e=$C\n", one_mib_args());
    let (out, _root) = build_limited(who, &five, &[]);
    assert_limit_error(
        &out,
        "Dockerfile",
        5,
        "LABEL a=$C b=$C",
        "4 MiB in this instruction",
    );

    let mut many = one_mib_args();
    for i in 0..70 {
        many.push_str(&format!("LABEL l{i}=$C\n"));
    }
    let (out, _root) = build_limited(who, &many, &[]);
    // B and C substitute 0.25 + 1 MiB (eight `$A`, four `$B`), labels l0..l61 62 MiB more:
    // l62, on line 5 + 62, passes 64 MiB.
    assert_limit_error(
        &out,
        "Dockerfile",
        67,
        "LABEL l62=$C",
        "64 MiB in this build",
    );
}

/// 100,000 ENV lines build (before, each ENV scanned every earlier one: this took minutes),
/// and the image config holds every value, in order; a last line looks one up.
#[test]
fn hundred_thousand_env_lines_build() {
    const N: usize = 100_000;
    let who = Runner::Root;
    let mut text = String::from("FROM scratch\n");
    for i in 0..N {
        text.push_str(&format!("ENV V{i}=value{i}\n"));
    }
    text.push_str("ENV V0=again LAST=$V99999-$V0\n");
    let started = Instant::now();
    let (out, root) = build_limited(who, &text, &["-q", "-t", "many:1"]);
    eprintln!("100,000 ENV lines built in {:?}", started.elapsed());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inspect = kiln_as(who)
        .arg("--root")
        .arg(root.path())
        .args(["inspect", "many:1"])
        .output()
        .unwrap();
    assert!(inspect.status.success());
    let v: Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let env: Vec<&str> = v["config"]["config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    let mut want = vec![format!(
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    )];
    want.push("V0=again".to_string());
    want.extend((1..N).map(|i| format!("V{i}=value{i}")));
    want.push("LAST=value99999-again".to_string());
    assert_eq!(env.len(), want.len());
    for (got, want) in env.iter().zip(&want) {
        assert_eq!(got, want);
    }
    // One history entry per step.
    assert_eq!(v["config"]["history"].as_array().unwrap().len(), N + 1);
}
