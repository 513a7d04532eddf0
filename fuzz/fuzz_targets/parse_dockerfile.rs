//! Any text through the whole front end: parse, dump, typed instructions, plan.
#![no_main]

use kiln::dockerfile::{instructions, parse, parser};
use kiln::plan::{self, PlanOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = parser::detect_syntax(text);
    if let Ok(parsed) = parse(text) {
        let _ = parsed.ast.dump();
        if let Ok(df) = instructions::from_ast(&parsed) {
            let _ = plan::plan(&df, &PlanOptions::default());
            let opts = PlanOptions {
                build_args: vec![("A".into(), "x y".into())],
                target: Some("a".into()),
                platform: Some("linux/arm64/v8".into()),
            };
            let _ = plan::plan(&df, &opts);
        }
    }
    for line in text.lines().take(8) {
        let _ = instructions::parse_mount(line);
        let _ = parser::parse_heredoc(line);
    }
});
