//! `.dockerignore` text and paths through Docker's rules: reading the file, building the
//! matcher, every matching entry point, and the walk filter. Input: the file's text, a NUL byte,
//! then one path per line.
#![no_main]

use kiln::context::ignore::clean;
use kiln::context::{ContextFilter, PatternMatcher, WalkOptions, matches, read_ignore_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (ignore, paths) = text.split_once('\0').unwrap_or((text, "a/b\nfoo\n"));
    let patterns = read_ignore_file(ignore);
    for path in paths.lines() {
        // Go's filepath.Clean is idempotent; ours must be too.
        let once = clean(path);
        assert_eq!(clean(&once), once, "clean({path:?})");
        let _ = matches(path, &patterns);
    }
    if let Ok(m) = PatternMatcher::new(&patterns) {
        for path in paths.lines() {
            let _ = m.matches_or_parent_matches(path);
            let _ = m.matches_exact(path);
        }
    }
    let opts = WalkOptions {
        include: Vec::new(),
        exclude: patterns,
    };
    if let Ok(filter) = ContextFilter::new(&opts) {
        for path in paths.lines() {
            let _ = filter.is_excluded(path);
        }
    }
});
