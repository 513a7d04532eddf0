//! The 281 real-world Dockerfiles: each parses, and `kiln debug plan` plans each except the
//! few BuildKit itself rejects, which must fail with BuildKit's error.

mod common;

/// Fixtures BuildKit rejects when planning, with the error it gives.
const REJECTED: [(&str, &str); 9] = [
    // `ARG BASE` without a value: `FROM $BASE` expands to nothing.
    (
        "containerd+containerd__integration__images__volume-copy-up__Dockerfile",
        "base name ($BASE) should not be blank",
    ),
    (
        "containerd+containerd__integration__images__volume-copy-up__Dockerfile_windows",
        "base name ($BASE) should not be blank",
    ),
    (
        "containerd+containerd__integration__images__volume-ownership__Dockerfile_windows",
        "base name ($BASE) should not be blank",
    ),
    (
        "containers+buildah__tests__bud__from-with-arg__Containerfile",
        "base name (${base}) should not be blank",
    ),
    // `ADD --checksum <url>`: the flag takes the URL as... nothing; it has no `=value`.
    (
        "containers+buildah__tests__bud__add-checksum__Containerfile.bad",
        "missing a value on flag: --checksum",
    ),
    (
        "containers+buildah__tests__bud__copy-multistage-paths__Dockerfile.invalid_from",
        "missing a value on flag: --from",
    ),
    // `COPY --from=$X`.
    (
        "containers+buildah__tests__bud__arg-scope__Containerfile.copy-from-arg",
        "variable expansion is not supported for --from",
    ),
    (
        "containers+buildah__tests__bud__arg-scope__Containerfile.stage-overrides-header-copy-from",
        "variable expansion is not supported for --from",
    ),
    // buildah's SELinux `z` mount option is not BuildKit syntax.
    (
        "containers+buildah__tests__bud__buildkit-mount__Dockerfile",
        "invalid field 'z' must be a key=value pair",
    ),
];

#[test]
fn realworld_dockerfiles_parse_and_plan() {
    let Some(dir) = common::conformance_dir("realworld_dockerfiles_parse_and_plan") else {
        return;
    };
    let mut cases: Vec<_> = std::fs::read_dir(dir.join("realworld"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 281, "the corpus has 281 Dockerfiles");
    let mut failures = Vec::new();
    let (mut parsed, mut planned, mut rejected) = (0, 0, 0);
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        let file = case.join("Dockerfile");
        let parse = common::kiln()
            .args(["debug", "parse"])
            .arg(&file)
            .output()
            .unwrap();
        if parse.status.success() {
            parsed += 1;
        } else {
            failures.push(format!(
                "{name}: parse failed: {}",
                String::from_utf8_lossy(&parse.stderr)
            ));
        }
        let plan = common::kiln()
            .args(["debug", "plan"])
            .arg(&file)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&plan.stderr);
        match REJECTED.iter().find(|(n, _)| *n == name) {
            Some((_, err)) => {
                if plan.status.success() || !stderr.contains(err) {
                    failures.push(format!(
                        "{name}: expected BuildKit's error {err:?}, got {stderr}"
                    ));
                } else if !stderr.contains("Dockerfile:") {
                    failures.push(format!("{name}: error names no file:line: {stderr}"));
                } else {
                    rejected += 1;
                }
            }
            None => {
                let json: Result<serde_json::Value, _> = serde_json::from_slice(&plan.stdout);
                match (plan.status.success(), json) {
                    (true, Ok(v)) if v["build_order"].as_array().is_some_and(|a| !a.is_empty()) => {
                        planned += 1
                    }
                    _ => failures.push(format!("{name}: plan failed: {stderr}")),
                }
            }
        }
    }
    eprintln!(
        "realworld: {} files, {parsed} parsed, {planned} planned, {rejected} rejected as BuildKit does",
        cases.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
