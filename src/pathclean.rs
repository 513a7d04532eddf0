//! Lexical path cleaning, the crate's one implementation (no file system access, `/` only).
//!
//! Two rules, as Go has them, under a few names for the shapes callers want:
//!
//! - [`clean`] / [`clean_bytes`]: Go's `path.Clean`. A relative path stays relative and keeps the
//!   `..` it cannot resolve (`../x`); an empty result is `.`. For `.dockerignore` patterns and
//!   context paths, where `..` climbing out of the context must stay visible.
//! - The *rooted* variants clean as `path.Clean("/" + p)`: `..` stops at the root, so the result
//!   can never climb out of it. They differ only in how they spell the result:
//!   [`clean_absolute`] (`/a/c`, `/` for the root: container paths, WORKDIR),
//!   [`clean_relative`] (`a/c`, `None` for the root: paths inside an archive) and
//!   [`clean_components`] (the names, empty for the root: tar entry names and COPY sources,
//!   which need not be UTF-8).

use std::ffi::OsString;
use std::ops::Range;
use std::os::unix::ffi::OsStringExt;

/// The byte ranges of `path`'s components once cleaned. With `rooted`, `..` stops at the root;
/// without, a `..` with nothing left to remove is kept. Ranges split at `/`, so they fall on
/// character boundaries of a `str`.
fn parts(path: &[u8], rooted: bool) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    let mut start = 0;
    for piece in path.split(|&b| b == b'/') {
        let r = start..start + piece.len();
        start = r.end + 1;
        match piece {
            b"" | b"." => {}
            b".." => {
                if out.last().is_some_and(|last| &path[last.clone()] != b"..") {
                    out.pop();
                } else if !rooted {
                    out.push(r);
                }
            }
            _ => out.push(r),
        }
    }
    out
}

/// Go's `path.Clean`: collapse `//`, drop `.`, resolve `..` against earlier elements (never
/// above `/`), no trailing `/`, and `.` for an empty result.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let joined = parts(path.as_bytes(), rooted)
        .into_iter()
        .map(|r| &path[r])
        .collect::<Vec<_>>()
        .join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_string()
    } else {
        joined
    }
}

/// [`clean`] for a path that is bytes (a file name need not be UTF-8).
pub fn clean_bytes(path: &[u8]) -> Vec<u8> {
    let rooted = path.first() == Some(&b'/');
    let joined = parts(path, rooted)
        .into_iter()
        .map(|r| &path[r])
        .collect::<Vec<_>>()
        .join(&b'/');
    if rooted {
        let mut out = Vec::with_capacity(joined.len() + 1);
        out.push(b'/');
        out.extend_from_slice(&joined);
        out
    } else if joined.is_empty() {
        b".".to_vec()
    } else {
        joined
    }
}

/// `path.Clean("/" + p)`: always absolute, `..` stops at the root, `/` for the root.
pub fn clean_absolute(p: &str) -> String {
    let names: Vec<&str> = parts(p.as_bytes(), true)
        .into_iter()
        .map(|r| &p[r])
        .collect();
    format!("/{}", names.join("/"))
}

/// [`clean_absolute`] without the leading `/`: `None` for the root.
pub fn clean_relative(p: &str) -> Option<String> {
    let names: Vec<&str> = parts(p.as_bytes(), true)
        .into_iter()
        .map(|r| &p[r])
        .collect();
    (!names.is_empty()).then(|| names.join("/"))
}

/// The components of `path.Clean("/" + raw)`: `..` stops at the root, empty for the root.
pub fn clean_components(raw: &[u8]) -> Vec<OsString> {
    parts(raw, true)
        .into_iter()
        .map(|r| OsString::from_vec(raw[r].to_vec()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the variants part ways: a relative `..` and the empty path.
    #[test]
    fn variants_differ_on_climbing_and_the_root() {
        let comps = |p: &str| -> Vec<String> {
            clean_components(p.as_bytes())
                .into_iter()
                .map(|c| c.into_string().unwrap())
                .collect()
        };
        // (input, clean, clean_absolute, clean_relative)
        for (input, go, abs, rel) in [
            ("", ".", "/", None),
            (".", ".", "/", None),
            ("/", "/", "/", None),
            ("../x", "../x", "/x", Some("x")),
            ("a/../../b", "../b", "/b", Some("b")),
            ("a/..", ".", "/", None),
            ("/../x", "/x", "/x", Some("x")),
            ("./a//b/./c/", "a/b/c", "/a/b/c", Some("a/b/c")),
            ("/a/b/../c", "/a/c", "/a/c", Some("a/c")),
            ("..", "..", "/", None),
            ("../..", "../..", "/", None),
        ] {
            assert_eq!(clean(input), go, "clean({input:?})");
            assert_eq!(clean_bytes(input.as_bytes()), go.as_bytes(), "{input:?}");
            assert_eq!(clean_absolute(input), abs, "clean_absolute({input:?})");
            assert_eq!(clean_relative(input).as_deref(), rel, "{input:?}");
            let want: Vec<String> = rel
                .map(|r| r.split('/').map(String::from).collect())
                .unwrap_or_default();
            assert_eq!(comps(input), want, "clean_components({input:?})");
        }
    }

    #[test]
    fn bytes_and_unicode_stay_whole() {
        assert_eq!(clean_bytes(b"a/\xff/../b/"), b"a/b");
        assert_eq!(clean_bytes(b"\xff/./\xfe"), b"\xff/\xfe");
        assert_eq!(
            clean_components(b"/x/\xff/../\xfe"),
            vec![OsString::from("x"), OsString::from_vec(vec![0xfe])]
        );
        assert_eq!(clean("é/./ü/../ß"), "é/ß");
        assert_eq!(clean_absolute("é//ü"), "/é/ü");
    }
}
