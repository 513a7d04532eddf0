//! The 281 real-world Dockerfiles: each parses, and `kiln debug plan` plans each except the
//! few BuildKit itself rejects, which must fail with BuildKit's error.

mod common;

#[test]
fn realworld_dockerfiles_parse_and_plan() {
    let Some(dir) = common::conformance_dir("realworld_dockerfiles_parse_and_plan") else {
        return;
    };
    let cases = common::realworld_cases(&dir);
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
        match common::REALWORLD_REJECTED.iter().find(|(n, _)| *n == name) {
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
