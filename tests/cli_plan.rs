//! `kiln debug plan` on real Dockerfiles: the DAG it prints and the errors it gives.

mod common;

use std::path::PathBuf;

use serde_json::Value;

fn dockerfile(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Dockerfile");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn plan(text: &str, extra: &[&str]) -> Value {
    let (_dir, path) = dockerfile(text);
    let out = common::kiln()
        .args(["debug", "plan"])
        .args(extra)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `debug plan`, expects failure, and returns the first stderr line.
fn plan_error(text: &str, extra: &[&str]) -> String {
    let (_dir, path) = dockerfile(text);
    let out = common::kiln()
        .args(["debug", "plan"])
        .args(extra)
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success(), "expected failure for {text:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    let first = stderr.lines().next().unwrap_or_default().to_string();
    assert!(
        first.contains(&path.display().to_string()),
        "no file named: {first}"
    );
    first
}

const MULTI: &str = "\
ARG GO=1.22
FROM golang:${GO} AS build
COPY . /src
FROM scratch AS unused
COPY --from=build /src /x
FROM alpine:3 AS assets
FROM build AS test
RUN --mount=from=assets,target=/a true
FROM busybox
COPY --from=build /out /app
COPY --from=docker.io/library/nginx:1 /etc/nginx /etc/nginx
";

#[test]
fn multistage_plan_prunes_and_orders() {
    let v = plan(MULTI, &[]);
    assert_eq!(v["target"], 4);
    assert_eq!(v["build_order"], serde_json::json!([0, 4]));
    assert_eq!(v["pruned"], serde_json::json!([1, 2, 3]));
    assert_eq!(v["stages"][0]["base_expanded"], "golang:1.22");
    assert_eq!(v["stages"][0]["base"]["kind"], "image");
    assert_eq!(v["stages"][1]["base"]["kind"], "scratch");
    assert_eq!(
        v["stages"][3]["base"],
        serde_json::json!({"kind": "stage", "stage": 0})
    );
    assert_eq!(
        v["images"],
        serde_json::json!(["golang:1.22", "busybox", "docker.io/library/nginx:1"])
    );
    let edges = v["edges"].as_array().unwrap();
    assert!(edges.iter().any(|e| e["stage"] == 3
        && e["depends_on"] == 2
        && e["cause"] == "RUN --mount=from"
        && e["line"] == 8));
    assert!(
        edges
            .iter()
            .any(|e| e["stage"] == 4 && e["depends_on"] == 0 && e["cause"] == "COPY --from")
    );
}

#[test]
fn target_and_build_args() {
    let v = plan(MULTI, &["--target", "TEST", "--build-arg", "GO=1.23"]);
    assert_eq!(v["target"], 3);
    assert_eq!(v["build_order"], serde_json::json!([0, 2, 3]));
    assert_eq!(v["stages"][0]["base_expanded"], "golang:1.23");
    assert_eq!(v["global_args"]["GO"], "1.23");
}

#[test]
fn build_arg_from_environment_and_platform_args() {
    let (_dir, path) = dockerfile("ARG BASE\nFROM ${BASE}-$TARGETARCH\n");
    let out = common::kiln()
        .args([
            "debug",
            "plan",
            "--build-arg",
            "BASE",
            "--platform",
            "linux/arm64",
        ])
        .arg(&path)
        .env("BASE", "img")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stages"][0]["base_expanded"], "img-arm64");
    assert_eq!(v["target_platform"], "linux/arm64");
}

#[test]
fn stage_args_need_redeclaring_and_unset_args_expand_empty() {
    // V is global; inside the stage it is only visible once redeclared, so the mount's
    // `from` is literal and the stage `$V` in WORKDIR would be empty. FROM sees it.
    let v = plan(
        "ARG V=base\nARG UNSET\nFROM img${UNSET}:$V\nARG V\nRUN true\n",
        &[],
    );
    assert_eq!(v["stages"][0]["base_expanded"], "img:base");
    assert_eq!(v["global_args"]["UNSET"], Value::Null);
}

#[test]
fn later_stage_name_in_from_is_an_image() {
    let v = plan(
        "FROM later\nFROM scratch AS later\n",
        &["--target", "later"],
    );
    assert_eq!(v["stages"][0]["base"]["kind"], "image");
    assert_eq!(v["build_order"], serde_json::json!([1]));
}

#[test]
fn errors_name_file_and_line() {
    let cases: &[(&str, &[&str], &str)] = &[
        ("FROM x\nFOO bar\n", &[], ":2: unknown instruction: FOO"),
        (
            "FROM x\nRUNN true\n",
            &[],
            ":2: unknown instruction: RUNN (did you mean RUN?)",
        ),
        ("RUN true\n", &[], ":1: no build stage in current context"),
        ("ARG x\n", &[], "dockerfile contains no stages to build"),
        ("FROM x\nRUN <<EOF\necho\n", &[], ":2: unterminated heredoc"),
        (
            "FROM x AS a\nFROM x\nARG S=a\nCOPY --from=$S /a /b\n",
            &[],
            ":4: variable expansion is not supported for --from",
        ),
        (
            "FROM x AS a\nCOPY --from=b /x /x\nFROM x AS b\nCOPY --from=a /y /y\n",
            &[],
            "circular dependency detected on stage: a",
        ),
        (
            "FROM x AS a\nCOPY --from=a /x /x\n",
            &[],
            ":2: circular dependency detected on stage: a",
        ),
        (
            "FROM x\nCOPY --from=3 /x /x\n",
            &[],
            ":2: invalid stage index 3",
        ),
        (
            "ARG B\nFROM $B\n",
            &[],
            ":2: base name ($B) should not be blank",
        ),
        (
            "FROM x\nCOPY --nope /a /b\n",
            &[],
            ":2: unknown flag: --nope",
        ),
        (
            "FROM x AS 1bad\n",
            &[],
            "invalid name for build stage: \"1bad\"",
        ),
        (
            "FROM x\nRUN --mount=type=foo,target=/x true\n",
            &[],
            ":2: unsupported mount type \"foo\"",
        ),
        (
            "FROM x\nCMD [\"a\", 1]\n",
            &[],
            ":2: when using JSON array syntax",
        ),
        (
            "FROM x\n",
            &["--target", "nope"],
            "target stage \"nope\" could not be found",
        ),
        (
            "FROM x AS a\nCOPY --from=b /x /x\nFROM x AS b\n",
            &["--target", "a"],
            ":2: cannot copy from stage \"b\", it needs to be defined before current stage \"a\"",
        ),
    ];
    for (text, extra, want) in cases {
        let got = plan_error(text, extra);
        assert!(got.contains(want), "{text:?}: expected {want:?} in {got:?}");
    }
}

#[test]
fn empty_dockerfile_is_an_error() {
    let got = plan_error("", &[]);
    assert!(got.contains("the Dockerfile cannot be empty"), "{got}");
    let got = plan_error("# just a comment\n\n", &[]);
    assert!(
        got.contains(":2: file with no instructions") || got.contains("file with no instructions"),
        "{got}"
    );
}

#[test]
fn dockerfile_from_stdin() {
    let out = common::kiln()
        .args(["debug", "plan", "-"])
        .write_stdin("FROM scratch\n")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["stages"][0]["base"]["kind"], "scratch");
}

#[test]
fn parse_json_format_has_heredocs_and_lines() {
    let (_dir, path) = dockerfile("FROM x\nRUN <<EOF\necho hi\nEOF\n");
    let out = common::kiln()
        .args(["debug", "parse", "--format", "json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let run = &v["ast"]["children"][1];
    assert_eq!(run["heredocs"][0]["content"], "echo hi\n");
    assert_eq!(run["start_line"], 2);
    assert_eq!(run["end_line"], 4);
}
