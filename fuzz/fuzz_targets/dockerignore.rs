//! `.dockerignore` text and paths through Docker's rules: reading the file, building the
//! matcher, every matching entry point, and the walk filter. Input: the file's text (UTF-8), a
//! NUL byte, then one path per line; paths are bytes, as file names are (need not be UTF-8).
#![no_main]

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use kiln::context::ignore::{clean, clean_bytes};
use kiln::context::{ContextFilter, PatternMatcher, WalkOptions, matches, read_ignore_file};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (ignore, paths) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"a/b\nfoo\n"[..]),
    };
    let Ok(ignore) = std::str::from_utf8(ignore) else {
        return;
    };
    let patterns = read_ignore_file(ignore);
    let paths: Vec<&OsStr> = paths
        .split(|&b| b == b'\n')
        .map(OsStr::from_bytes)
        .collect();
    for path in &paths {
        // Go's filepath.Clean is idempotent; ours must be too.
        let once = clean_bytes(path.as_bytes());
        assert_eq!(clean_bytes(&once), once, "clean_bytes({path:?})");
        if let Some(text) = path.to_str() {
            assert_eq!(clean(text).as_bytes(), once, "clean({text:?})");
        }
        let _ = matches(path, &patterns);
    }
    if let Ok(m) = PatternMatcher::new(&patterns) {
        for path in &paths {
            let _ = m.matches_or_parent_matches(path);
            let _ = m.matches_exact(path);
        }
    }
    let opts = WalkOptions {
        include: Vec::new(),
        exclude: patterns,
    };
    if let Ok(filter) = ContextFilter::new(&opts) {
        for path in &paths {
            let _ = filter.is_excluded(path);
        }
    }
});
