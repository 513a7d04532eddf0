//! BuildKit shell-lexer conformance: `shell/envVarTest`, `shell/wordsTest` and
//! `shell/lex-cases.json` from the external corpus (see its README §3), run through
//! `kiln::dockerfile::shell::Lexer`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use kiln::dockerfile::shell::{Env, Lexer, envs_from_slice};
use serde_json::Value;

fn read(dir: &Path, name: &str) -> String {
    let path = dir.join("shell").join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// README §3.1: `<platform>|<input>|<expected>`, env PWD/SHELL/KOREAN/NULL, A and U rows only.
#[test]
fn env_var_test() {
    let Some(dir) = common::conformance_dir("conformance_shell") else {
        return;
    };
    let text = read(&dir, "envVarTest");
    let env = envs_from_slice(&["PWD=/home", "SHELL=bash", "KOREAN=한국어", "NULL="]);
    let lexer = Lexer::new('\\');
    let (mut checked, mut skipped) = (0, 0);
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.starts_with('#') {
            continue;
        }
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(fields.len(), 3, "envVarTest:{n}: need 3 fields: {line:?}");
        let (platform, input, expected) = (fields[0].trim(), fields[1].trim(), fields[2].trim());
        match platform {
            "A" | "U" => {}
            "W" => {
                skipped += 1;
                continue;
            }
            other => panic!("envVarTest:{n}: bad platform {other:?}"),
        }
        let got = lexer.process_word(input, &env);
        if expected == "error" {
            assert!(
                got.is_err(),
                "envVarTest:{n}: {input:?} should fail, got {got:?}"
            );
        } else {
            assert_eq!(got.as_deref(), Ok(expected), "envVarTest:{n}: {input:?}");
        }
        checked += 1;
    }
    eprintln!("envVarTest: {checked} rows checked ({skipped} Windows-only rows skipped)");
    assert!(checked > 0);
}

/// README §3.2: `ENV` lines pile up; `input | word,word,…` with trailing spaces significant.
#[test]
fn words_test() {
    let Some(dir) = common::conformance_dir("conformance_shell") else {
        return;
    };
    let text = read(&dir, "wordsTest");
    let lexer = Lexer::new('\\');
    let mut env_lines: Vec<String> = Vec::new();
    let mut checked = 0;
    for (n, line) in text.lines().enumerate() {
        let n = n + 1;
        if line.starts_with('#') {
            continue;
        }
        if let Some(rest) = line.strip_prefix("ENV ") {
            env_lines.push(rest.trim_start_matches(' ').to_owned());
            continue;
        }
        let fields: Vec<&str> = line.split('|').collect();
        assert_eq!(
            fields.len(),
            2,
            "wordsTest:{n}: need exactly one '|': {line:?}"
        );
        let input = fields[0].trim();
        let expected: Vec<&str> = fields[1].trim_start_matches(' ').split(',').collect();
        let env = envs_from_slice(&env_lines);
        let got = lexer
            .process_words(input, &env)
            .unwrap_or_else(|_| vec!["error".to_owned()]);
        assert_eq!(got, expected, "wordsTest:{n}: {input:?}");
        checked += 1;
    }
    eprintln!("wordsTest: {checked} rows checked");
    assert!(checked > 0);
}

/// What a `process_word_with_matches` case expects.
#[derive(Debug, PartialEq)]
enum Outcome {
    Error,
    Value {
        value: String,
        matched: BTreeSet<String>,
        unmatched: BTreeSet<String>,
    },
}

/// Rows of `process_word_with_matches` whose transcription disagrees with upstream
/// `TestProcessWithMatches` (moby/buildkit `frontend/dockerfile/shell/lex_test.go`, checked
/// against the upstream source): upstream expects these values, but the JSON marks the rows as
/// errors and lists the upstream `unmatched` set under `matched`. Keyed by input and env; each
/// entry must match exactly one JSON row, and that row must still be the mistranscribed one.
/// Every row, corrected or not, goes through the lexer.
struct Upstream {
    input: &'static str,
    env: &'static [(&'static str, &'static str)],
    value: &'static str,
    matched: &'static [&'static str],
    unmatched: &'static [&'static str],
}

const FOO_BAR: &[(&str, &str)] = &[("FOO", "xxx"), ("BAR", "")];
const XXYY: &[(&str, &str)] = &[("FOO", "xxyy")];

const UPSTREAM: &[Upstream] = &[
    Upstream {
        input: "x ${FOO}",
        env: &[("FOO", "y")],
        value: "x y",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO-aaa} ${BAR-bbb} ${BAZ-ccc}",
        env: FOO_BAR,
        value: "xxx  ccc",
        matched: &["FOO", "BAR"],
        unmatched: &["BAZ"],
    },
    Upstream {
        input: "${FOO:-aaa} ${BAR:-bbb} ${BAZ:-ccc}",
        env: FOO_BAR,
        value: "xxx bbb ccc",
        matched: &["FOO", "BAR"],
        unmatched: &["BAZ"],
    },
    Upstream {
        input: "${FOO:-}",
        env: FOO_BAR,
        value: "xxx",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO+aaa} ${BAR+bbb} ${BAZ+ccc}",
        env: FOO_BAR,
        value: "aaa bbb ",
        matched: &["FOO", "BAR"],
        unmatched: &["BAZ"],
    },
    Upstream {
        input: "${FOO:+aaa} ${BAR:+bbb} ${BAZ:+ccc}",
        env: FOO_BAR,
        value: "aaa  ",
        matched: &["FOO", "BAR"],
        unmatched: &["BAZ"],
    },
    Upstream {
        input: "${FOO?aaa}",
        env: FOO_BAR,
        value: "xxx",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: "${BAR?bbb}",
        env: FOO_BAR,
        value: "",
        matched: &["BAR"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO:?aaa}",
        env: FOO_BAR,
        value: "xxx",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: r"${FOO#()[]{\}^$.\*\?|\\}",
        env: &[("FOO", r"()[]{}^$.*?|\x")],
        value: "x",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: r"${FOO%%\**}",
        env: &[("FOO", "xx**")],
        value: "xx",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO#*x*y}",
        env: XXYY,
        value: "y",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO#*}",
        env: XXYY,
        value: "xxyy",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO#$BAR}",
        env: &[("FOO", "xxyy"), ("BAR", "x")],
        value: "xyy",
        matched: &["FOO", "BAR"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO#$BAR}",
        env: &[("FOO", "xxyy"), ("BAR", "")],
        value: "xxyy",
        matched: &["FOO", "BAR"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO#}",
        env: XXYY,
        value: "xxyy",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO##*x}",
        env: XXYY,
        value: "yy",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO##}",
        env: XXYY,
        value: "xxyy",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: r"${FOO#?\?}",
        env: &[("FOO", "???y")],
        value: "?y",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: "${ABC:-.}${FOO%x}${ABC:-.}",
        env: XXYY,
        value: ".xxyy.",
        matched: &["FOO"],
        unmatched: &["ABC"],
    },
    Upstream {
        input: r"${FOO%%\**\*}",
        env: &[("FOO", "a***yy*")],
        value: "a",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO%}",
        env: XXYY,
        value: "xxyy",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO%%$BAR}",
        env: &[("FOO", "xxyy"), ("BAR", "")],
        value: "xxyy",
        matched: &["FOO", "BAR"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
        env: &[("FOO", "/foo*/*/*.txt"), ("NEEDLE", r"\*/")],
        value: "/foo.*/*.txt - /foo..*.txt",
        matched: &["FOO", "NEEDLE"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO/$NEEDLE/} - ${FOO//$NEEDLE/}",
        env: &[("FOO", "/tmp/tmp/bar.txt"), ("NEEDLE", "/tmp")],
        value: "/tmp/bar.txt - /bar.txt",
        matched: &["FOO", "NEEDLE"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO/$NEEDLE/$REPLACEMENT} - ${FOO//$NEEDLE/$REPLACEMENT}",
        env: &[
            ("FOO", "/a/foo/b/c.txt"),
            ("NEEDLE", "/?/"),
            ("REPLACEMENT", "/"),
        ],
        value: "/foo/b/c.txt - /foo/c.txt",
        matched: &["FOO", "NEEDLE", "REPLACEMENT"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO/$NEEDLE/$REPLACEMENT}",
        env: &[
            ("FOO", "http://google.de"),
            ("NEEDLE", "http://"),
            ("REPLACEMENT", "https://"),
        ],
        value: "https://google.de",
        matched: &["FOO", "NEEDLE", "REPLACEMENT"],
        unmatched: &[],
    },
    Upstream {
        input: r"${FOO//\//\/}",
        env: &[("FOO", "/tmp/foo.txt")],
        value: r"\/tmp\/foo.txt",
        matched: &["FOO"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO/$BAR/ww}",
        env: &[("FOO", "xxyy"), ("BAR", "")],
        value: "wwxxyy",
        matched: &["FOO", "BAR"],
        unmatched: &[],
    },
    Upstream {
        input: "${FOO///}",
        env: XXYY,
        value: "xxyy",
        matched: &["FOO"],
        unmatched: &[],
    },
];

fn str_set(v: Option<&Value>) -> BTreeSet<String> {
    v.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn str_map(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .expect("env is an object")
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_str().expect("env value is a string").to_owned(),
            )
        })
        .collect()
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_array()
        .expect("env_list is an array")
        .iter()
        .map(|s| s.as_str().expect("env_list entry is a string").to_owned())
        .collect()
}

fn cases<'a>(doc: &'a Value, table: &str) -> &'a [Value] {
    doc[table]["cases"]
        .as_array()
        .unwrap_or_else(|| panic!("lex-cases.json: {table}.cases missing"))
}

fn run(lexer: &Lexer, input: &str, env: &dyn Env) -> Outcome {
    match lexer.process_word_with_matches(input, env) {
        Ok(e) => Outcome::Value {
            value: e.value,
            matched: e.matched,
            unmatched: e.unmatched,
        },
        Err(_) => Outcome::Error,
    }
}

fn process_word_with_matches(doc: &Value) -> (usize, usize) {
    let lexer = Lexer::new('\\');
    let mut used = vec![0usize; UPSTREAM.len()];
    let mut corrected = 0;
    let rows = cases(doc, "process_word_with_matches");
    for (i, case) in rows.iter().enumerate() {
        let input = case["input"].as_str().expect("input");
        let env = str_map(&case["env"]);
        let transcribed = if case["expect_error"].as_bool() == Some(true) {
            Outcome::Error
        } else {
            Outcome::Value {
                value: case["expected"].as_str().expect("expected").to_owned(),
                matched: str_set(case.get("matched")),
                unmatched: str_set(case.get("unmatched")),
            }
        };
        let fix = UPSTREAM.iter().position(|u| {
            u.input == input
                && u.env.len() == env.len()
                && u.env
                    .iter()
                    .all(|(k, v)| env.get(*k).map(String::as_str) == Some(*v))
        });
        let expected = match fix {
            Some(j) => {
                used[j] += 1;
                let u = &UPSTREAM[j];
                let upstream = Outcome::Value {
                    value: u.value.to_owned(),
                    matched: u.matched.iter().map(|s| (*s).to_owned()).collect(),
                    unmatched: u.unmatched.iter().map(|s| (*s).to_owned()).collect(),
                };
                assert_ne!(
                    transcribed, upstream,
                    "row {i} ({input:?}) now agrees with upstream: drop its UPSTREAM entry"
                );
                corrected += 1;
                upstream
            }
            None => transcribed,
        };
        let got = run(&lexer, input, &env);
        match &expected {
            // On expected errors only the error is checked (README §3.3).
            Outcome::Error => assert_eq!(got, Outcome::Error, "row {i}: {input:?} env {env:?}"),
            Outcome::Value { .. } => assert_eq!(got, expected, "row {i}: {input:?} env {env:?}"),
        }
    }
    for (j, n) in used.iter().enumerate() {
        assert_eq!(
            *n, 1,
            "UPSTREAM entry {j} ({:?}) matched {n} rows",
            UPSTREAM[j].input
        );
    }
    (rows.len(), corrected)
}

fn platform_args(doc: &Value) -> usize {
    let lexer = Lexer::new('\\');
    let rows = cases(doc, "platform_args");
    for (i, case) in rows.iter().enumerate() {
        let input = case["input"].as_str().expect("input");
        let env = str_map(&case["env"]);
        let expected = case["expected"].as_str().expect("expected");
        let got = lexer
            .process_word_with_matches(input, &env)
            .map(|e| e.value);
        assert_eq!(got.as_deref(), Ok(expected), "platform_args {i}");
    }
    rows.len()
}

fn mandatory_vars(doc: &Value) -> usize {
    let lexer = Lexer::new('\\');
    let rows = cases(doc, "mandatory_vars");
    for (i, case) in rows.iter().enumerate() {
        let input = case["input"].as_str().expect("input");
        let env = envs_from_slice(&str_list(&case["env_list"]));
        let got = lexer.process_word(input, &env);
        if let Some(needle) = case["expect_error_contains"].as_str() {
            let err = got.expect_err("mandatory_vars: expected an error");
            assert!(
                err.to_string().contains(needle),
                "mandatory_vars {i}: {err} lacks {needle:?}"
            );
        } else {
            let expected = case["expected"].as_str().expect("expected");
            assert_eq!(got.as_deref(), Ok(expected), "mandatory_vars {i}");
        }
    }
    rows.len()
}

fn env_from_slice(doc: &Value) -> usize {
    let lexer = Lexer::new('\\');
    let rows = cases(doc, "env_from_slice");
    for (i, case) in rows.iter().enumerate() {
        let env = envs_from_slice(&str_list(&case["env_list"]));
        let name = case["lookup"].as_str().expect("lookup");
        let expected = case["expected"].as_str().expect("expected");
        assert_eq!(
            env.lookup(name).unwrap_or_default(),
            expected,
            "env_from_slice {i}"
        );
        // And the same through the lexer, as upstream's getEnv does.
        let got = lexer.process_word(&format!("${{{name}}}"), &env);
        assert_eq!(got.as_deref(), Ok(expected), "env_from_slice {i} via lexer");
    }
    rows.len()
}

/// README §3.3: every table of `lex-cases.json`.
#[test]
fn lex_cases() {
    let Some(dir) = common::conformance_dir("conformance_shell") else {
        return;
    };
    let doc: Value = serde_json::from_str(&read(&dir, "lex-cases.json")).expect("valid JSON");
    let tables = doc.as_object().expect("top-level object");
    for (name, table) in tables {
        match name.as_str() {
            "source" => continue,
            "process_word_with_matches" => {
                let (n, corrected) = process_word_with_matches(&doc);
                eprintln!(
                    "lex-cases.json {name}: {n} rows checked ({corrected} checked against \
                     upstream lex_test.go where the transcription disagrees)"
                );
            }
            "platform_args" => eprintln!(
                "lex-cases.json {name}: {} rows checked",
                platform_args(&doc)
            ),
            "mandatory_vars" => eprintln!(
                "lex-cases.json {name}: {} rows checked",
                mandatory_vars(&doc)
            ),
            "env_from_slice" => eprintln!(
                "lex-cases.json {name}: {} rows checked",
                env_from_slice(&doc)
            ),
            other => panic!(
                "lex-cases.json has a table this harness does not know: {other} ({})",
                table["description"]
            ),
        }
    }
}
