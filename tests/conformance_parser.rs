//! BuildKit's parser corpus: the real `kiln debug parse` binary on every case, plus the
//! transcribed tables (heredocs, JSON arrays, words, directives, instructions) through the
//! library.

mod common;

use std::path::Path;

use kiln::dockerfile::instructions::{self, Command, Parsed};
use kiln::dockerfile::parser::{self, chomp_heredoc_content, parse_heredoc};
use serde_json::Value;

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

#[test]
fn parser_cases_dump_byte_identical() {
    let Some(dir) = common::conformance_dir("parser_cases_dump_byte_identical") else {
        return;
    };
    let mut cases: Vec<_> = std::fs::read_dir(dir.join("parser"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    cases.sort();
    let mut failures = Vec::new();
    for case in &cases {
        let out = common::kiln()
            .args(["debug", "parse", "--format", "buildkit"])
            .arg(case.join("Dockerfile"))
            .output()
            .unwrap();
        let expected = std::fs::read_to_string(case.join("result"))
            .unwrap()
            .replace("\r\n", "\n");
        let got = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() || got != expected {
            failures.push(format!(
                "{}:\n--- expected\n{expected}--- got\n{got}{}",
                case.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    eprintln!(
        "parser cases: {} checked, {} failed",
        cases.len(),
        failures.len()
    );
    assert_eq!(cases.len(), 33, "the corpus has 33 parser cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn negative_cases_fail_with_the_expected_error() {
    let Some(dir) = common::conformance_dir("negative_cases_fail_with_the_expected_error") else {
        return;
    };
    let tsv = std::fs::read_to_string(dir.join("parser-negative-errors.tsv")).unwrap();
    let mut n = 0;
    for row in tsv.lines().skip(1) {
        let cols: Vec<&str> = row.split('\t').collect();
        let (case, error) = (cols[0], cols[1]);
        let out = common::kiln()
            .args(["debug", "parse"])
            .arg(dir.join("parser-negative").join(case).join("Dockerfile"))
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{case} must fail");
        assert!(stderr.contains(error), "{case}: {stderr}");
        // Errors with a place name the Dockerfile and line.
        if case == "env_no_value" || case == "shykes-nested-json" {
            assert!(
                stderr.contains("Dockerfile:") && stderr.chars().any(|c| c.is_ascii_digit()),
                "{case} names no line: {stderr}"
            );
        }
        n += 1;
    }
    eprintln!("negative cases: {n}");
    assert_eq!(n, 4);
}

#[test]
fn heredoc_extraction() {
    let Some(dir) = common::conformance_dir("heredoc_extraction") else {
        return;
    };
    let hd = dir.join("parser-heredoc");
    let expected = read_json(&hd.join("expected.json"));
    let text = std::fs::read_to_string(hd.join("Dockerfile")).unwrap();
    let parsed = parser::parse(&text).unwrap();
    let children = expected["extracts"]["children"].as_array().unwrap();
    assert_eq!(parsed.ast.children.len(), children.len() + 1);
    for (i, want) in children.iter().enumerate() {
        let got = &parsed.ast.children[i + 1].heredocs;
        let want = want.as_array().cloned().unwrap_or_default();
        assert_eq!(got.len(), want.len(), "child {}: {:?}", i + 1, got);
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.name, w["name"].as_str().unwrap(), "child {}", i + 1);
            assert_eq!(g.content, w["content"].as_str().unwrap(), "child {}", i + 1);
            assert_eq!(g.expand, w["expand"].as_bool().unwrap(), "child {}", i + 1);
            assert_eq!(g.chomp, w["chomp"].as_bool().unwrap(), "child {}", i + 1);
            assert_eq!(
                u64::from(g.file_descriptor),
                w["fd"].as_u64().unwrap(),
                "child {}",
                i + 1
            );
        }
    }

    let json_form = std::fs::read_to_string(hd.join("Dockerfile.json-form")).unwrap();
    let parsed = parser::parse(&json_form).unwrap();
    for c in &parsed.ast.children[1..] {
        assert!(c.heredocs.is_empty(), "{c:?}");
    }

    let words = &expected["parse_heredoc_word"];
    for w in strs(&words["valid"]) {
        let h = parse_heredoc(&w)
            .unwrap()
            .unwrap_or_else(|| panic!("{w} is a heredoc"));
        assert_eq!(h.name, "EOF", "{w}");
    }
    for w in strs(&words["invalid"]) {
        assert!(parse_heredoc(&w).is_err(), "{w} must be an error");
    }
    for w in strs(&words["not"]) {
        assert_eq!(parse_heredoc(&w), Ok(None), "{w}");
    }
    for case in expected["heredocs_from_line"]["cases"].as_array().unwrap() {
        let line = case[0].as_str().unwrap();
        let names: Vec<String> = parser::heredocs_from_line(line)
            .unwrap()
            .into_iter()
            .map(|h| h.name)
            .collect();
        assert_eq!(names, strs(&case[1]), "{line}");
    }
    let chomp = &expected["chomp"];
    assert_eq!(
        chomp_heredoc_content(chomp["input"].as_str().unwrap()),
        chomp["expected"].as_str().unwrap()
    );
}

#[test]
fn parser_extra_tables() {
    let Some(dir) = common::conformance_dir("parser_extra_tables") else {
        return;
    };
    let extra = read_json(&dir.join("parser-extra.json"));
    let mut checked = 0;

    for case in extra["json_arrays"]["valid"].as_array().unwrap() {
        let input = case[0].as_str().unwrap();
        let parsed = parser::parse(&format!("CMD {input}")).unwrap();
        let cmd = &parsed.ast.children[0];
        assert!(cmd.json || strs(&case[1]).is_empty(), "{input}");
        assert_eq!(cmd.args().collect::<Vec<_>>(), strs(&case[1]), "{input}");
        checked += 1;
    }
    for input in strs(&extra["json_arrays"]["invalid_not_string_array"]) {
        let err = parser::parse(&format!("CMD {input}")).unwrap_err();
        assert_eq!(err.to_string(), parser::ERR_NOT_STRING_ARRAY, "{input}");
        checked += 1;
    }
    for case in extra["parse_words"]["cases"].as_array().unwrap() {
        let input = case[0].as_str().unwrap();
        assert_eq!(parser::parse_words(input, '\\'), strs(&case[1]), "{input}");
        checked += 1;
    }
    for case in extra["name_val"]["cases"].as_array().unwrap() {
        let src = format!(
            "{} {}",
            case["key"].as_str().unwrap(),
            case["input"].as_str().unwrap()
        );
        match case.get("error") {
            Some(e) => assert_eq!(
                parser::parse(&src).unwrap_err().to_string(),
                e.as_str().unwrap()
            ),
            None => {
                let parsed = parser::parse(&src).unwrap();
                let got: Vec<&str> = parsed.ast.children[0].args().collect();
                assert_eq!(got, strs(&case["nodes"]), "{src}");
            }
        }
        checked += 1;
    }

    let lines = &extra["line_numbers"];
    let text = std::fs::read_to_string(dir.join(lines["dockerfile"].as_str().unwrap())).unwrap();
    let parsed = parser::parse(&text).unwrap();
    let root = &lines["root"];
    assert_eq!(
        [parsed.ast.start_line as u64, parsed.ast.end_line as u64],
        [root[0].as_u64().unwrap(), root[1].as_u64().unwrap()]
    );
    let want: Vec<[u64; 2]> = lines["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| [c[0].as_u64().unwrap(), c[1].as_u64().unwrap()])
        .collect();
    let got: Vec<[u64; 2]> = parsed
        .ast
        .children
        .iter()
        .map(|c| [c.start_line as u64, c.end_line as u64])
        .collect();
    assert_eq!(got, want);
    checked += 1;

    let warn = &extra["empty_continuation_warnings"];
    let parsed = parser::parse(warn["dockerfile"].as_str().unwrap()).unwrap();
    assert_eq!(
        parsed.warnings.len() as u64,
        warn["warning_count"].as_u64().unwrap()
    );
    for (w, contains) in parsed
        .warnings
        .iter()
        .zip(warn["warning_contains"].as_array().unwrap())
    {
        for c in strs(contains) {
            assert!(w.short.contains(&c), "{:?} lacks {c}", w.short);
        }
    }
    assert!(parsed.warnings[0].detail[0].contains("will become errors in a future release"));
    checked += 1;

    let long = format!("\n\t\tFROM image\n\t\tLABEL test={}\n", "a".repeat(65536));
    assert_eq!(
        parser::parse(&long).unwrap_err().to_string(),
        extra["line_too_long"]["error"].as_str().unwrap()
    );
    let just_fits = format!("FROM image\nLABEL a={}\n", "a".repeat(65535 - 8));
    assert!(parser::parse(&just_fits).is_ok());
    checked += 1;

    let directives = &extra["directives"];
    for case in directives["parse_all"].as_array().unwrap() {
        let parsed =
            parser::parse(&format!("{}FROM x\n", case["input"].as_str().unwrap())).unwrap();
        let got: Vec<[String; 2]> = parsed
            .directives
            .iter()
            .map(|d| [d.name.clone(), d.value.clone()])
            .collect();
        let want: Vec<[String; 2]> = case["directives"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| [d[0].as_str().unwrap().into(), d[1].as_str().unwrap().into()])
            .collect();
        assert_eq!(got, want);
        checked += 1;
    }
    for (table, key, any) in [
        ("detect_syntax", "syntax", true),
        ("parse_directive_check", "check", false),
    ] {
        for case in directives[table].as_array().unwrap() {
            let mut input = String::new();
            if case.get("input_hex_prefix").is_some() {
                input.push('\u{feff}');
            }
            input.push_str(case["input"].as_str().unwrap());
            let got = parser::find_directive(key, &input, any);
            assert_eq!(
                got.is_some(),
                case["found"].as_bool().unwrap(),
                "{table}: {input:?}"
            );
            if let Some(m) = got {
                if let Some(r) = case.get("ref") {
                    assert_eq!(m.reference, r.as_str().unwrap(), "{input:?}");
                }
                if let Some(c) = case.get("cmdline") {
                    assert_eq!(m.cmdline, c.as_str().unwrap(), "{input:?}");
                }
                if let Some(l) = case.get("line") {
                    assert_eq!(m.line as u64, l.as_u64().unwrap(), "{input:?}");
                }
            }
            checked += 1;
        }
    }
    eprintln!("parser-extra rows checked: {checked}");
}

fn instruction(src: &str) -> Result<Parsed, String> {
    let parsed = parser::parse(src).map_err(|e| e.to_string())?;
    instructions::parse_instruction(&parsed.ast.children[0]).map_err(|e| e.to_string())
}

fn command(src: &str) -> Command {
    match instruction(src).unwrap() {
        Parsed::Command(c) => c.command,
        Parsed::Stage(_) => panic!("{src} is a stage"),
    }
}

#[test]
fn instruction_tables() {
    let Some(dir) = common::conformance_dir("instruction_tables") else {
        return;
    };
    let t = read_json(&dir.join("instructions.json"));
    let mut checked = 0;
    for (table, extra) in [
        ("exactly_one_argument", ""),
        ("at_least_one_argument", ""),
        ("no_destination", " arg1"),
    ] {
        let template = t[table]["error_template"].as_str().unwrap();
        for cmd in strs(&t[table]["commands"]) {
            let err = instruction(&format!("{cmd}{extra}")).unwrap_err();
            assert_eq!(err, template.replace("{CMD}", &cmd), "{cmd}");
            checked += 1;
        }
    }
    for case in t["error_cases"].as_array().unwrap() {
        let src = case["dockerfile"].as_str().unwrap();
        let err = instruction(src).unwrap_err();
        let want = case["error_contains"].as_str().unwrap();
        assert!(err.contains(want), "{src}: {err}");
        checked += 1;
    }

    let Command::Healthcheck(h) = command("HEALTHCHECK CMD hello world") else {
        panic!()
    };
    assert_eq!(h.test, strs(&t["healthcheck_cmd"]["test"]));
    let Command::Run(r) = command(t["run_flags_used"]["dockerfile"].as_str().unwrap()) else {
        panic!()
    };
    assert_eq!(r.flags_used, strs(&t["run_flags_used"]["flags_used"]));
    checked += 2;

    let comments = &t["comments"];
    let parsed = parser::parse(comments["dockerfile"].as_str().unwrap()).unwrap();
    let df = instructions::from_ast(&parsed).unwrap();
    let exp = &comments["expect"];
    assert_eq!(
        df.stages[0].comment,
        exp["stage0.DocComment"].as_str().unwrap()
    );
    let arg_pairs = |c: &Command| -> Vec<[String; 2]> {
        let Command::Arg { args } = c else { panic!() };
        args.iter()
            .map(|a| [a.key.clone(), a.comment.clone()])
            .collect()
    };
    let pair = |v: &Value| {
        [
            v[0].as_str().unwrap().to_string(),
            v[1].as_str().unwrap().to_string(),
        ]
    };
    assert_eq!(
        arg_pairs(&df.meta_args[0].command)[0],
        pair(&exp["meta.args[0]"])
    );
    assert_eq!(
        arg_pairs(&df.stages[0].commands[0].command)[0],
        pair(&exp["stage0.cmd0.args[0]"])
    );
    let want: Vec<[String; 2]> = exp["stage0.cmd1.args"]
        .as_array()
        .unwrap()
        .iter()
        .map(pair)
        .collect();
    assert_eq!(arg_pairs(&df.stages[0].commands[1].command), want);
    checked += 1;

    for case in t["copy_heredoc"]["cases"].as_array().unwrap() {
        let src = case["dockerfile"].as_str().unwrap();
        let Command::Copy(c) = command(src) else {
            panic!()
        };
        assert_eq!(c.sources.dest, case["dest"].as_str().unwrap(), "{src}");
        assert_eq!(c.sources.source_paths, strs(&case["source_paths"]), "{src}");
        let want: Vec<(String, String, bool)> = case["source_contents"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["path"].as_str().unwrap().to_string(),
                    s["data"].as_str().unwrap().to_string(),
                    s["expand"].as_bool().unwrap(),
                )
            })
            .collect();
        let got: Vec<(String, String, bool)> = c
            .sources
            .source_contents
            .iter()
            .map(|s| (s.path.clone(), s.data.clone(), s.expand))
            .collect();
        assert_eq!(got, want, "{src}");
        checked += 1;
    }
    for case in t["run_heredoc"]["cases"].as_array().unwrap() {
        let src = case["dockerfile"].as_str().unwrap();
        let Command::Run(r) = command(src) else {
            panic!()
        };
        assert_eq!(
            r.command.prepend_shell,
            case["prepend_shell"].as_bool().unwrap(),
            "{src}"
        );
        assert_eq!(r.command.cmd_line, strs(&case["cmdline"]), "{src}");
        let want: Vec<(String, String, bool)> = case["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| {
                (
                    f["name"].as_str().unwrap().to_string(),
                    f["data"].as_str().unwrap().to_string(),
                    f["chomp"].as_bool().unwrap(),
                )
            })
            .collect();
        let got: Vec<(String, String, bool)> = r
            .command
            .files
            .iter()
            .map(|f| (f.name.clone(), f.data.clone(), f.chomp))
            .collect();
        assert_eq!(got, want, "{src}");
        checked += 1;
    }
    eprintln!("instructions.json rows checked: {checked}");
}
