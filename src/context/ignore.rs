//! `.dockerignore` files and Docker's pattern matcher.
//!
//! This is hand-written on purpose: Docker's rules are not gitignore's. A pattern is anchored
//! at the context root (`foo` never matches `a/foo`), there is no "directory only" trailing `/`
//! (it is cleaned away), `**` is the only way to cross directories, a path is also matched when
//! any parent directory matches, and `!` exceptions are applied in order with the last match
//! winning. Crates built for gitignore get every one of these wrong in some corner.
//!
//! The behaviour follows moby/patternmatcher (`New`, `MatchesOrParentMatches`,
//! `MatchesUsingParentResults`) and `ignorefile.ReadAll`, including their quirks:
//! - syntax is validated the way Go's `filepath.Match(pattern, ".")` does, which checks every
//!   chunk of the pattern;
//! - the glob is turned into a Go regexp by text substitution, so text that passes
//!   `filepath.Match` can still be rejected when the regexp is compiled (`[Local-Only]` has the
//!   reversed range `l-O`). That error is not raised by [`PatternMatcher::new`] but by every
//!   match call that evaluates the pattern, as upstream does;
//! - class contents and `\` escapes are read with Go's regexp rules (see `goregex`).
//!
//! Paths are slash-separated and relative to the context root. Only the Unix flavour (`/`
//! separator, `\` escapes) is implemented. Paths are bytes (`OsStr`), as Linux file names are:
//! exact, prefix and suffix patterns compare bytes, and a regexp pattern sees the path the way
//! Go's `regexp.MatchString` does, each byte that is not part of valid UTF-8 read as U+FFFD
//! (so `caf*` matches `caf\xe9.txt`, and `?` matches one such byte). Patterns are text (they
//! come from a UTF-8 file).

use std::borrow::Cow;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use regex::Regex;

use super::goregex;
// Go's `path.Clean`, re-exported: patterns and context paths are cleaned with it.
pub use crate::pathclean::{clean, clean_bytes};

/// Errors from building or evaluating patterns. The messages are upstream's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IgnoreError {
    /// A pattern that is only `!`.
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    /// Go's `filepath.ErrBadPattern`: malformed glob, or a glob whose regexp does not compile.
    #[error("syntax error in pattern")]
    BadPattern,
    /// A [`MatchInfo`] from a different matcher.
    #[error("wrong number of values in parentMatched")]
    WrongParentInfo,
}

/// Turn the text of a `.dockerignore` file into patterns, as `ignorefile.ReadAll` does.
///
/// Lines are split on `\n` (a trailing `\r` is dropped). A UTF-8 BOM is removed from the first
/// line. A line whose first character is `#` is a comment; a `#` after leading blanks is not.
/// Lines are trimmed and blank ones skipped. A leading `!` is split off and the rest trimmed
/// again, then cleaned (`filepath.Clean`) and one leading `/` removed; the `!` is put back.
/// A lone `!` survives here and is rejected by [`PatternMatcher::new`].
///
/// Upstream fails on a line longer than 64 KiB (its line scanner's limit); this does not.
pub fn read_ignore_file(text: &str) -> Vec<String> {
    let mut lines: Vec<&str> = text.split('\n').collect();
    if lines.last() == Some(&"") {
        lines.pop();
    }
    let mut out = Vec::new();
    for (index, raw) in lines.into_iter().enumerate() {
        let mut line = raw.strip_suffix('\r').unwrap_or(raw);
        if index == 0 {
            line = line.strip_prefix('\u{FEFF}').unwrap_or(line);
        }
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = match pattern.strip_prefix('!') {
            Some(rest) => {
                pattern = rest.trim();
                true
            }
            None => false,
        };
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        out.push(cleaned);
    }
    out
}

/// The text Go's regexp matcher sees for these bytes: valid UTF-8 as is, and every byte that
/// is not part of a valid UTF-8 sequence as one U+FFFD (Go decodes an invalid byte as
/// `RuneError` of width 1; `String::from_utf8_lossy` would merge some runs).
pub(crate) fn go_text(bytes: &[u8]) -> Cow<'_, str> {
    let mut rest = match std::str::from_utf8(bytes) {
        Ok(s) => return Cow::Borrowed(s),
        Err(_) => bytes,
    };
    let mut out = String::with_capacity(bytes.len() + 8);
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                return Cow::Owned(out);
            }
            Err(e) => {
                let (valid, bad) = rest.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                out.push(char::REPLACEMENT_CHARACTER);
                rest = bad.get(1..).unwrap_or_default();
            }
        }
    }
}

/// How a pattern is matched (upstream's `matchType`; `compile.tsv` lists examples).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchType {
    /// The path equals the pattern.
    Exact,
    /// `dir/**` with nothing special before: the path starts with `dir/`.
    Prefix,
    /// `**…` with nothing special after: the path ends with the rest (or `**/foo` is `foo`).
    Suffix,
    /// Everything else, through the generated regexp.
    Regexp,
    /// The generated regexp does not compile; every evaluation is an error.
    Invalid,
}

#[derive(Debug, Clone)]
enum Matcher {
    Exact,
    Prefix,
    Suffix,
    Regexp(Regex),
    Invalid,
}

/// One cleaned pattern of a [`PatternMatcher`].
#[derive(Debug, Clone)]
pub struct Pattern {
    cleaned: String,
    exclusion: bool,
    go_regexp: Option<String>,
    matcher: Matcher,
}

impl Pattern {
    fn compile(cleaned: String, exclusion: bool) -> Pattern {
        let (kind, go) = glob_to_go_regexp(&cleaned);
        let matcher = match kind {
            MatchType::Exact => Matcher::Exact,
            MatchType::Prefix => Matcher::Prefix,
            MatchType::Suffix => Matcher::Suffix,
            MatchType::Regexp | MatchType::Invalid => goregex::translate(&go)
                .and_then(|rust| Regex::new(&rust).ok())
                .map_or(Matcher::Invalid, Matcher::Regexp),
        };
        let go_regexp = (kind == MatchType::Regexp).then_some(go);
        Pattern {
            cleaned,
            exclusion,
            go_regexp,
            matcher,
        }
    }

    /// The cleaned pattern, without its `!`.
    pub fn as_str(&self) -> &str {
        &self.cleaned
    }

    /// Whether this is a `!` exception.
    pub fn is_exclusion(&self) -> bool {
        self.exclusion
    }

    /// How the pattern is matched.
    pub fn match_type(&self) -> MatchType {
        match self.matcher {
            Matcher::Exact => MatchType::Exact,
            Matcher::Prefix => MatchType::Prefix,
            Matcher::Suffix => MatchType::Suffix,
            Matcher::Regexp(_) => MatchType::Regexp,
            Matcher::Invalid => MatchType::Invalid,
        }
    }

    /// The Go-syntax regexp upstream would compile (for `Regexp` and `Invalid` patterns).
    pub fn go_regexp(&self) -> Option<&str> {
        self.go_regexp.as_deref()
    }

    /// Match this one pattern against a path (no parent-directory logic).
    pub fn matches(&self, path: impl AsRef<OsStr>) -> Result<bool, IgnoreError> {
        self.matches_bytes(path.as_ref().as_bytes())
    }

    fn matches_bytes(&self, path_b: &[u8]) -> Result<bool, IgnoreError> {
        let pat = self.cleaned.as_bytes();
        match &self.matcher {
            Matcher::Exact => Ok(path_b == pat),
            Matcher::Prefix => {
                // Strip the trailing `**`; byte-wise, like upstream.
                let prefix = pat.get(..pat.len().saturating_sub(2)).unwrap_or_default();
                Ok(path_b.starts_with(prefix))
            }
            Matcher::Suffix => {
                // Strip the leading `**`.
                let suffix = pat.get(2..).unwrap_or_default();
                if path_b.ends_with(suffix) {
                    return Ok(true);
                }
                // `**/foo` also matches `foo`.
                Ok(suffix.first() == Some(&b'/') && suffix.get(1..) == Some(path_b))
            }
            Matcher::Regexp(re) => Ok(re.is_match(&go_text(path_b))),
            Matcher::Invalid => Err(IgnoreError::BadPattern),
        }
    }
}

/// Upstream's glob → Go regexp substitution, and the match type it detects.
fn glob_to_go_regexp(pattern: &str) -> (MatchType, String) {
    let chars: Vec<char> = pattern.chars().collect();
    let mut pos = 0;
    // Go's text/scanner silently skips a BOM at the very start.
    if chars.first() == Some(&'\u{FEFF}') {
        pos = 1;
    }
    let mut re = String::from("^");
    let mut kind = MatchType::Exact;
    let mut first = true;
    while let Some(&ch) = chars.get(pos) {
        pos += 1;
        match ch {
            '*' if chars.get(pos) == Some(&'*') => {
                pos += 1;
                // `**/` is treated as `**`.
                if chars.get(pos) == Some(&'/') {
                    pos += 1;
                }
                if pos >= chars.len() {
                    // Trailing `**` matches everything below.
                    if kind == MatchType::Exact {
                        kind = MatchType::Prefix;
                    } else {
                        re.push_str(".*");
                        kind = MatchType::Regexp;
                    }
                } else {
                    // Any number of segments, including none.
                    re.push_str("(.*/)?");
                    kind = MatchType::Regexp;
                }
                if first {
                    kind = MatchType::Suffix;
                }
            }
            '*' => {
                re.push_str("[^/]*");
                kind = MatchType::Regexp;
            }
            '?' => {
                re.push_str("[^/]");
                kind = MatchType::Regexp;
            }
            '.' | '+' | '(' | ')' | '|' | '{' | '}' | '$' => {
                re.push('\\');
                re.push(ch);
            }
            '\\' => match chars.get(pos) {
                Some(&next) => {
                    pos += 1;
                    re.push('\\');
                    re.push(next);
                    kind = MatchType::Regexp;
                }
                None => re.push('\\'),
            },
            '[' | ']' => {
                re.push(ch);
                kind = MatchType::Regexp;
            }
            _ => re.push(ch),
        }
        first = false;
    }
    if kind == MatchType::Regexp {
        re.push('$');
    }
    (kind, re)
}

/// Go's `filepath.Match(pattern, ".")` error check, which validates every chunk of the pattern.
fn glob_is_valid(pattern: &str) -> bool {
    let mut rest = pattern.as_bytes();
    while !rest.is_empty() {
        while rest.first() == Some(&b'*') {
            rest = &rest[1..];
        }
        // A chunk runs to the next `*` outside brackets; `\` protects one byte.
        let mut in_range = false;
        let mut i = 0;
        while i < rest.len() {
            match rest[i] {
                b'\\' if i + 1 < rest.len() => i += 1,
                b'[' => in_range = true,
                b']' => in_range = false,
                b'*' if !in_range => break,
                _ => {}
            }
            i += 1;
        }
        let (chunk, tail) = rest.split_at(i);
        if !chunk_is_valid(chunk) {
            return false;
        }
        rest = tail;
    }
    true
}

fn chunk_is_valid(mut chunk: &[u8]) -> bool {
    while let Some(&b) = chunk.first() {
        chunk = &chunk[1..];
        match b {
            b'[' => {
                if chunk.first() == Some(&b'^') {
                    chunk = &chunk[1..];
                }
                let mut ranges = 0;
                loop {
                    if chunk.first() == Some(&b']') && ranges > 0 {
                        chunk = &chunk[1..];
                        break;
                    }
                    let Some(rest) = class_char(chunk) else {
                        return false;
                    };
                    chunk = rest;
                    if chunk.first() == Some(&b'-') {
                        let Some(rest) = class_char(&chunk[1..]) else {
                            return false;
                        };
                        chunk = rest;
                    }
                    ranges += 1;
                }
            }
            b'\\' => {
                if chunk.is_empty() {
                    return false;
                }
                chunk = &chunk[1..];
            }
            _ => {}
        }
    }
    true
}

/// One class character (possibly `\`-escaped); what follows it, which must not be empty.
fn class_char(chunk: &[u8]) -> Option<&[u8]> {
    let mut chunk = chunk;
    match chunk.first() {
        None | Some(b'-') | Some(b']') => return None,
        Some(b'\\') => {
            chunk = &chunk[1..];
        }
        Some(_) => {}
    }
    let width = match *chunk.first()? {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => return None,
    };
    let rest = chunk.get(width..)?;
    (!rest.is_empty()).then_some(rest)
}

/// Go's `filepath.Dir` split into its growing prefixes (`a/b/c` → `a`, `a/b`); empty when the
/// parent is `.`.
fn parent_prefixes(path: &[u8]) -> Vec<Vec<u8>> {
    let dir = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => clean_bytes(&path[..=i]),
        None => return Vec::new(),
    };
    if dir == b"." {
        return Vec::new();
    }
    let parts: Vec<&[u8]> = dir.split(|&b| b == b'/').collect();
    (1..=parts.len()).map(|n| parts[..n].join(&b'/')).collect()
}

/// Per-pattern results for a directory, handed down to its children by a walker
/// (upstream's `MatchInfo`). The default value means "no information".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatchInfo {
    parent_matched: Vec<bool>,
}

/// An ordered list of Docker ignore patterns.
#[derive(Debug, Clone, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl PatternMatcher {
    /// Build a matcher: each pattern is trimmed, empty ones are skipped, the rest cleaned. A
    /// leading `!` makes an exception (a lone `!` is an error), and the syntax is checked the
    /// way `filepath.Match` does.
    pub fn new(patterns: &[impl AsRef<str>]) -> Result<Self, IgnoreError> {
        let mut out = Vec::with_capacity(patterns.len());
        let mut exclusions = false;
        for raw in patterns {
            let trimmed = raw.as_ref().trim();
            if trimmed.is_empty() {
                continue;
            }
            let cleaned = clean(trimmed);
            let (exclusion, body) = match cleaned.strip_prefix('!') {
                Some("") => return Err(IgnoreError::IllegalExclusion),
                Some(rest) => (true, rest.to_string()),
                None => (false, cleaned),
            };
            exclusions |= exclusion;
            if !glob_is_valid(&body) {
                return Err(IgnoreError::BadPattern);
            }
            out.push(Pattern::compile(body, exclusion));
        }
        Ok(PatternMatcher {
            patterns: out,
            exclusions,
        })
    }

    /// The patterns, in order.
    pub fn patterns(&self) -> &[Pattern] {
        &self.patterns
    }

    /// Whether any pattern is a `!` exception.
    pub fn exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether `path` (used as given: not cleaned) or any of its parent directories is matched
    /// once all patterns are applied in order.
    pub fn matches_or_parent_matches(&self, path: impl AsRef<OsStr>) -> Result<bool, IgnoreError> {
        let path = path.as_ref().as_bytes();
        let parents = parent_prefixes(path);
        let mut matched = false;
        for pattern in &self.patterns {
            // An inclusion only matters while unmatched, an exception only while matched.
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches_bytes(path)?;
            if !hit {
                hit = parents
                    .iter()
                    .any(|p| pattern.matches_bytes(p).unwrap_or(false));
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// Like [`Self::matches_or_parent_matches`] without the parent directories.
    pub fn matches_exact(&self, path: impl AsRef<OsStr>) -> Result<bool, IgnoreError> {
        let path = path.as_ref().as_bytes();
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            if pattern.matches_bytes(path)? {
                matched = !pattern.exclusion;
            }
        }
        Ok(matched)
    }

    /// The walker's form of [`Self::matches_or_parent_matches`]: `parent` holds the results
    /// of the parent directory (from the same matcher), so each pattern that matched the
    /// parent counts as matched without being evaluated again. With the default `MatchInfo`
    /// the parents are checked by path instead. Returns the result and the info for children.
    ///
    /// A pattern skipped because of the current state records `false`, so with
    /// `["foo/bar", "!foo"]` the exception is never remembered for `foo` and `foo/bar/x` stays
    /// excluded here, while `matches_or_parent_matches` says it is not.
    pub fn matches_using_parent_results(
        &self,
        path: impl AsRef<OsStr>,
        parent: &MatchInfo,
    ) -> Result<(bool, MatchInfo), IgnoreError> {
        let path = path.as_ref().as_bytes();
        let parent = &parent.parent_matched;
        if !parent.is_empty() && parent.len() != self.patterns.len() {
            return Err(IgnoreError::WrongParentInfo);
        }
        let mut parents: Option<Vec<Vec<u8>>> = None;
        let mut info = vec![false; self.patterns.len()];
        let mut matched = false;
        for (i, pattern) in self.patterns.iter().enumerate() {
            let mut hit = parent.get(i).copied().unwrap_or(false);
            if !hit {
                if pattern.exclusion != matched {
                    continue;
                }
                hit = pattern.matches_bytes(path)?;
                if !hit && parent.is_empty() {
                    let parents = parents.get_or_insert_with(|| parent_prefixes(path));
                    hit = parents
                        .iter()
                        .any(|p| pattern.matches_bytes(p).unwrap_or(false));
                }
            }
            if let Some(slot) = info.get_mut(i) {
                *slot = hit;
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        Ok((
            matched,
            MatchInfo {
                parent_matched: info,
            },
        ))
    }
}

/// Whether `path` matches `patterns`, like upstream's package-level `MatchesOrParentMatches`:
/// the path is cleaned first and the context root (`.`) never matches.
pub fn matches(path: impl AsRef<OsStr>, patterns: &[impl AsRef<str>]) -> Result<bool, IgnoreError> {
    let pm = PatternMatcher::new(patterns)?;
    let path = clean_bytes(path.as_ref().as_bytes());
    if path == b"." {
        return Ok(false);
    }
    pm.matches_or_parent_matches(OsStr::from_bytes(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(patterns: &[&str]) -> PatternMatcher {
        PatternMatcher::new(patterns).expect("valid patterns")
    }

    #[test]
    fn clean_like_go() {
        for (input, want) in [
            ("", "."),
            ("a/./b/", "a/b"),
            ("a//b", "a/b"),
            ("/../x", "/x"),
            ("../../x", "../../x"),
            ("a/../..", ".."),
            ("/", "/"),
            ("!./foo", "!./foo"),
        ] {
            assert_eq!(clean(input), want, "clean({input:?})");
        }
    }

    #[test]
    fn read_ignore_file_details() {
        let text = "\u{FEFF}# comment\r\n  # not a comment\r\n/abs\n! /x/../y/\n\n/\n!\n";
        assert_eq!(
            read_ignore_file(text),
            ["# not a comment", "abs", "!y", "/", "!"]
        );
        assert!(read_ignore_file("").is_empty());
    }

    #[test]
    fn exception_ordering() {
        let m = pm(&["**", "!util/docker/web"]);
        assert!(!m.matches_or_parent_matches("util/docker/web/foo").unwrap());
        assert!(m.matches_or_parent_matches("util/docker/other").unwrap());
        let m = pm(&["!fileutils.go", "*.go"]);
        assert!(m.matches_or_parent_matches("fileutils.go").unwrap());
        assert!(m.exclusions());
    }

    #[test]
    fn class_swallows_generated_text() {
        // `[*]` is a class holding `*` for filepath.Match, but upstream's regexp is
        // `^[[^/]*]$`: any run of `[`, `^`, `/` followed by `]`.
        let m = pm(&["[*]"]);
        assert!(m.matches_or_parent_matches("[^]").unwrap());
        assert!(m.matches_or_parent_matches("]").unwrap());
        assert!(!m.matches_or_parent_matches("*").unwrap());
        // Backslash escapes are regexp escapes: `\d` is a digit.
        let m = pm(&[r"a\d"]);
        assert!(m.matches_or_parent_matches("a7").unwrap());
        assert!(!m.matches_or_parent_matches("ad").unwrap());
    }

    #[test]
    fn regexp_errors_surface_when_evaluated() {
        let m = pm(&["[Local-Only]/"]);
        assert_eq!(m.patterns()[0].match_type(), MatchType::Invalid);
        for _ in 0..2 {
            assert_eq!(
                m.matches_or_parent_matches("x"),
                Err(IgnoreError::BadPattern)
            );
        }
        // Skipped patterns are never evaluated, so no error.
        let m = pm(&["x", "![Local-Only]"]);
        assert_eq!(m.matches_or_parent_matches("y"), Ok(false));
    }

    #[test]
    fn syntax_errors() {
        for bad in [
            "[", "[^", "a[", "[]a]", "[-]", "[x-]", "[a-b-c]", "\\", "*[", "a/*/[",
        ] {
            assert_eq!(
                PatternMatcher::new(&[bad]).err(),
                Some(IgnoreError::BadPattern),
                "{bad:?}"
            );
        }
        assert_eq!(
            PatternMatcher::new(&[" ! "]).err(),
            Some(IgnoreError::IllegalExclusion)
        );
        assert_eq!(
            IgnoreError::IllegalExclusion.to_string(),
            "illegal exclusion pattern: \"!\""
        );
        assert!(PatternMatcher::new(&["[\\]a]", "[*]", "a\\*b", "x/**"]).is_ok());
    }

    #[test]
    fn parent_results_differ_from_parent_matches() {
        let m = pm(&["foo/bar", "!foo"]);
        let (_, foo) = m
            .matches_using_parent_results("foo", &MatchInfo::default())
            .unwrap();
        let (_, bar) = m.matches_using_parent_results("foo/bar", &foo).unwrap();
        let (x, _) = m.matches_using_parent_results("foo/bar/x", &bar).unwrap();
        assert!(x);
        assert!(!m.matches_or_parent_matches("foo/bar/x").unwrap());
        assert_eq!(
            m.matches_using_parent_results(
                "a",
                &MatchInfo {
                    parent_matched: vec![true]
                }
            ),
            Err(IgnoreError::WrongParentInfo)
        );
    }

    #[test]
    fn odd_paths() {
        let m = pm(&["**/"]);
        assert!(m.matches_or_parent_matches("/").unwrap());
        assert_eq!(parent_prefixes(b"/"), [&b""[..], b"/"]);
        assert_eq!(parent_prefixes(b"dir/file/"), [&b"dir"[..], b"dir/file"]);
        assert!(parent_prefixes(b"file").is_empty());
        // A leading BOM is dropped from the regexp but kept for exact/prefix/suffix matches.
        let m = pm(&["\u{FEFF}*"]);
        assert!(m.matches_or_parent_matches("anything").unwrap());
        let m = pm(&["\u{FEFF}**x"]);
        assert!(!m.matches_or_parent_matches("x").unwrap());
    }

    #[test]
    fn paths_are_bytes() {
        let latin1 = OsStr::from_bytes(b"caf\xe9.txt");
        let m = pm(&["caf*"]);
        assert!(m.matches_or_parent_matches(latin1).unwrap());
        assert!(
            m.matches_or_parent_matches(OsStr::from_bytes(b"caf\xe9/x"))
                .unwrap()
        );
        // An invalid byte is one character for `?`, as in Go; a UTF-8 `é` is one too.
        let m = pm(&["caf?.txt"]);
        assert!(m.matches_or_parent_matches(latin1).unwrap());
        assert!(m.matches_or_parent_matches("café.txt").unwrap());
        let m = pm(&["x??"]);
        assert!(m.matches_exact(OsStr::from_bytes(b"x\xe2\x82")).unwrap());
        // Exact patterns compare bytes: UTF-8 `é` is not the byte 0xe9.
        let m = pm(&["café.txt"]);
        assert!(!m.matches_or_parent_matches(latin1).unwrap());
        // Prefix and suffix patterns too.
        assert!(pm(&["**.txt"]).matches_exact(latin1).unwrap());
        let m = pm(&["d\u{ff}/**"]);
        assert!(m.matches_exact("d\u{ff}/y").unwrap());
        let (hit, _) = m
            .matches_using_parent_results(OsStr::from_bytes(b"d\xff/y"), &MatchInfo::default())
            .unwrap();
        assert!(!hit);
        assert!(matches(OsStr::from_bytes(b"./d\xff//a.txt"), &["d*/*.txt"]).unwrap());
    }

    #[test]
    fn go_text_replaces_each_bad_byte() {
        assert_eq!(go_text(b"abc"), "abc");
        assert_eq!(go_text(b"a\xe9b"), "a\u{FFFD}b");
        // A truncated sequence is two bad bytes for Go (from_utf8_lossy gives one U+FFFD).
        assert_eq!(go_text(b"\xe2\x82"), "\u{FFFD}\u{FFFD}");
        assert_eq!(go_text(b"\xff\xc3\xa9"), "\u{FFFD}é");
        assert_eq!(clean_bytes(b"a/\xff/../b/"), b"a/b");
    }

    #[test]
    fn arbitrary_patterns_do_not_panic() {
        const ALPHABET: &[&str] = &[
            "*", "**", "?", "[", "]", "^", "-", "\\", "/", "!", ".", "a", "b", "Z", ":", "{", "}",
            "(", ")", "|", "$", "+", "Q", "E", "p", "x", "1", "0", " ", "é", "\u{FEFF}", "[:",
            ":]", "\\Q", "\\E", "\\p", "\\x", "..",
        ];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..5_000 {
            let len = (rand() % 8) as usize;
            let pattern: String = (0..len)
                .map(|_| ALPHABET[(rand() % ALPHABET.len() as u64) as usize])
                .collect();
            if let Ok(m) = PatternMatcher::new(&[pattern.as_str()]) {
                for path in ["a", "a/b", "/", "", "é/x", "[/]"] {
                    let _ = m.matches_or_parent_matches(path);
                    let _ = m.matches_using_parent_results(path, &MatchInfo::default());
                }
            }
            let _ = read_ignore_file(&pattern);
        }
    }
}
