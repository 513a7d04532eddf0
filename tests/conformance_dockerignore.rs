//! Conformance: `.dockerignore` patterns, `ignorefile.ReadAll`, and the filtered context walk,
//! against `conformance/dockerignore/` (README §4). Every row goes through the real code.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use kiln::context::{
    ContextFilter, IgnoreError, MatchInfo, MatchType, PatternMatcher, WalkOptions, matches,
    read_ignore_file, walk,
};
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    True,
    False,
    Error,
}

impl Outcome {
    fn parse(s: &str) -> Outcome {
        match s {
            "true" => Outcome::True,
            "false" => Outcome::False,
            "error" => Outcome::Error,
            other => panic!("unknown expected value {other:?}"),
        }
    }

    fn of(r: Result<bool, IgnoreError>) -> Outcome {
        match r {
            Ok(true) => Outcome::True,
            Ok(false) => Outcome::False,
            Err(_) => Outcome::Error,
        }
    }
}

struct Case {
    line: usize,
    api: String,
    platform: String,
    patterns: Vec<String>,
    path: String,
    expected: Outcome,
}

fn load_cases(dir: &Path) -> Vec<Case> {
    let tsv = fs::read_to_string(dir.join("cases.tsv")).expect("cases.tsv");
    let mut lines = tsv.split('\n').enumerate();
    let (_, header) = lines.next().expect("header");
    assert_eq!(
        header.split('\t').collect::<Vec<_>>(),
        [
            "api",
            "platform",
            "patterns_json",
            "path",
            "expected",
            "source",
            "note"
        ]
    );
    let mut cases = Vec::new();
    for (i, line) in lines {
        if line.is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 7, "cases.tsv line {}: {line:?}", i + 1);
        cases.push(Case {
            line: i + 1,
            api: cols[0].to_string(),
            platform: cols[1].to_string(),
            patterns: serde_json::from_str(cols[2]).expect("patterns_json"),
            path: cols[3].to_string(),
            expected: Outcome::parse(cols[4]),
        });
    }

    // cases.json is the same table; a mismatch would mean one of them was mis-transcribed.
    let json: Vec<Value> =
        serde_json::from_str(&fs::read_to_string(dir.join("cases.json")).expect("cases.json"))
            .expect("cases.json parses");
    assert_eq!(
        json.len(),
        cases.len(),
        "cases.json and cases.tsv row counts"
    );
    for (c, j) in cases.iter().zip(&json) {
        let expected = match &j["expected"] {
            Value::Bool(true) => Outcome::True,
            Value::Bool(false) => Outcome::False,
            Value::String(s) => Outcome::parse(s),
            other => panic!("cases.json expected {other:?}"),
        };
        let patterns: Vec<String> =
            serde_json::from_value(j["patterns"].clone()).expect("patterns");
        assert!(
            j["api"] == c.api.as_str()
                && j["platform"] == c.platform.as_str()
                && j["path"] == c.path.as_str()
                && patterns == c.patterns
                && expected == c.expected,
            "cases.tsv line {} differs from cases.json: {j}",
            c.line
        );
    }
    cases
}

/// Upstream's extra check: the walker API, with parent results built by walking the parent
/// directories of `path`, must agree with `MatchesOrParentMatches`.
fn via_parent_results(pm: &PatternMatcher, path: &str) -> Result<bool, IgnoreError> {
    let mut info = MatchInfo::default();
    if let Some(slash) = path.rfind('/') {
        let dir = kiln::context::ignore::clean(&path[..=slash]);
        if dir != "." {
            let parts: Vec<&str> = dir.split('/').collect();
            for n in 1..=parts.len() {
                info = pm
                    .matches_using_parent_results(parts[..n].join("/"), &info)?
                    .1;
            }
        }
    }
    pm.matches_using_parent_results(path, &info).map(|r| r.0)
}

#[test]
fn pattern_cases() {
    let Some(root) = common::conformance_dir("conformance_dockerignore::pattern_cases") else {
        return;
    };
    let cases = load_cases(&root.join("dockerignore"));
    let mut failures = Vec::new();
    let (mut mopm, mut deprecated, mut skipped) = (0, 0, 0);
    for c in &cases {
        if c.platform != "all" && c.platform != "unix" {
            skipped += 1;
            continue;
        }
        let what = format!("line {} {} {:?} {:?}", c.line, c.api, c.patterns, c.path);
        match c.api.as_str() {
            "MatchesOrParentMatches" => {
                mopm += 1;
                let pm = match PatternMatcher::new(&c.patterns) {
                    Ok(pm) => pm,
                    Err(_) => {
                        if c.expected != Outcome::Error {
                            failures.push(format!("{what}: New failed, want {:?}", c.expected));
                        }
                        continue;
                    }
                };
                // Repeated calls must give the same answer (the malformed-regexp row).
                let answers = [
                    (
                        "MatchesOrParentMatches",
                        Outcome::of(pm.matches_or_parent_matches(&c.path)),
                    ),
                    ("again", Outcome::of(pm.matches_or_parent_matches(&c.path))),
                    (
                        "UsingParentResults(walked)",
                        Outcome::of(via_parent_results(&pm, &c.path)),
                    ),
                    (
                        "UsingParentResults(empty)",
                        Outcome::of(
                            pm.matches_using_parent_results(&c.path, &MatchInfo::default())
                                .map(|r| r.0),
                        ),
                    ),
                ];
                for (api, got) in answers {
                    if got != c.expected {
                        failures.push(format!("{what}: {api} gave {got:?}, want {:?}", c.expected));
                    }
                }
            }
            "Matches" => {
                // README §4.1: the deprecated Matches is checked with MatchesOrParentMatches
                // semantics (path cleaned, `.` never matches). The one documented
                // disagreement (`**/dir` vs `dir/file`) is a MatchesOrParentMatches row.
                deprecated += 1;
                let got = Outcome::of(matches(&c.path, &c.patterns));
                if got != c.expected {
                    failures.push(format!("{what}: got {got:?}, want {:?}", c.expected));
                }
            }
            other => failures.push(format!("line {}: unknown api {other:?}", c.line)),
        }
    }
    eprintln!(
        "cases.tsv: {} rows; MatchesOrParentMatches {mopm} (each also via MatchesUsingParentResults \
         walked/empty), Matches {deprecated}, skipped (platform) {skipped}, failures {}",
        cases.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn compile_table() {
    let Some(root) = common::conformance_dir("conformance_dockerignore::compile_table") else {
        return;
    };
    let tsv = fs::read_to_string(root.join("dockerignore/compile.tsv")).expect("compile.tsv");
    let mut failures = Vec::new();
    let mut rows = 0;
    for (i, line) in tsv.split('\n').enumerate().skip(1) {
        if line.is_empty() {
            continue;
        }
        rows += 1;
        let cols: Vec<&str> = line.split('\t').collect();
        let (pattern, kind, regexp) = (cols[0], cols[1], cols.get(2).copied().unwrap_or(""));
        let want = match kind {
            "exactMatch" => MatchType::Exact,
            "prefixMatch" => MatchType::Prefix,
            "suffixMatch" => MatchType::Suffix,
            "regexpMatch" => MatchType::Regexp,
            other => panic!("compile.tsv line {}: match type {other:?}", i + 1),
        };
        let pm = PatternMatcher::new(&[pattern]).expect("compile.tsv patterns are valid");
        let p = &pm.patterns()[0];
        let got_re = p.go_regexp().unwrap_or("");
        if p.match_type() != want || got_re != regexp {
            failures.push(format!(
                "line {} {pattern:?}: got {:?} {got_re:?}, want {want:?} {regexp:?}",
                i + 1,
                p.match_type()
            ));
        }
    }
    eprintln!("compile.tsv: {rows} rows, failures {}", failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn readall_cases() {
    let Some(root) = common::conformance_dir("conformance_dockerignore::readall_cases") else {
        return;
    };
    let dir = root.join("dockerignore");
    let data: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("readall.json")).expect("readall.json"))
            .expect("readall.json parses");
    let file = data["input_file"].as_str().expect("input_file");
    let text = fs::read_to_string(dir.join(file)).expect("readall input file");
    assert_eq!(
        Some(text.as_str()),
        data["input"].as_str(),
        "input and input_file differ"
    );
    let expected: Vec<String> = serde_json::from_value(data["expected"].clone()).expect("expected");
    let got = read_ignore_file(&text);
    assert_eq!(got, expected);
    // Notes: an empty input gives no patterns; `!` survives ReadAll but New rejects it.
    assert!(read_ignore_file("").is_empty());
    let err = PatternMatcher::new(&got).expect_err("a lone ! must be rejected");
    assert_eq!(err.to_string(), "illegal exclusion pattern: \"!\"");
    eprintln!(
        "readall.json: 1 case ({} patterns) + 2 notes, all passed",
        expected.len()
    );
}

#[test]
fn context_walk_cases() {
    let Some(root) = common::conformance_dir("conformance_dockerignore::context_walk_cases") else {
        return;
    };
    let data: Value = serde_json::from_str(
        &fs::read_to_string(root.join("dockerignore/context-walk.json")).expect("context-walk"),
    )
    .expect("context-walk.json parses");
    let cases = data["cases"].as_array().expect("cases");
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|s| s.as_str().expect("string").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut failures = Vec::new();
    let (mut walks, mut errors, mut opens, mut no_walk) = (0, 0, 0, 0);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let tmp = tempfile::tempdir().expect("tempdir");
        for entry in case["tree"].as_array().expect("tree") {
            let path = tmp.path().join(entry[0].as_str().expect("tree path"));
            match entry[1].as_str() {
                Some("dir") => fs::create_dir_all(&path).expect("mkdir"),
                Some("file") => {
                    if let Some(parent) = path.parent() {
                        fs::create_dir_all(parent).expect("mkdir");
                    }
                    fs::write(&path, entry.get(2).and_then(Value::as_str).unwrap_or(""))
                        .expect("write");
                }
                other => panic!("{name}: tree entry type {other:?}"),
            }
        }
        let opts = WalkOptions {
            include: strings(&case["include"]),
            exclude: strings(&case["exclude"]),
        };
        let result = walk(tmp.path(), &opts);
        if case["expect_error"].as_bool() == Some(true) {
            errors += 1;
            if let Ok(entries) = result {
                failures.push(format!("{name}: expected an error, walked {entries:?}"));
            }
            continue;
        }
        let entries = match result {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("{name}: walk failed: {e}"));
                continue;
            }
        };
        let got: Vec<String> = entries.iter().map(ToString::to_string).collect();
        if case.get("expected_walk").is_some() {
            walks += 1;
            let want = strings(&case["expected_walk"]);
            if got != want {
                failures.push(format!("{name}: walk\n  got  {got:?}\n  want {want:?}"));
            }
        } else {
            no_walk += 1;
        }
        if let Some(open) = case.get("open").and_then(Value::as_object) {
            let filter = ContextFilter::new(&opts).expect("patterns valid");
            let open: BTreeMap<&String, bool> = open
                .iter()
                .map(|(k, v)| (k, v.as_bool().expect("bool")))
                .collect();
            for (path, want) in open {
                opens += 1;
                // fsutil Open: the path passes the filter and exists.
                let by_filter =
                    !filter.is_excluded(path).expect("match") && tmp.path().join(path).exists();
                // The walker's view: the path is among the walked entries.
                let by_walk = entries.iter().any(|e| &e.path == path);
                if by_filter != want || by_walk != want {
                    failures.push(format!(
                        "{name}: open {path:?}: filter {by_filter}, walk {by_walk}, want {want}"
                    ));
                }
            }
        }
    }
    eprintln!(
        "context-walk.json: {} cases; walks compared {walks}, expect_error {errors}, \
         open-only (no expected_walk) {no_walk}, open paths {opens}, failures {}",
        cases.len(),
        failures.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
