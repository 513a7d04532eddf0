//! Shared helpers for the integration tests.
#![allow(dead_code)]

pub mod build;
pub mod host;
pub mod skip;

pub use skip::skip;

use std::path::PathBuf;

/// Where the external conformance corpus lives: `$KILN_CONFORMANCE`, else `../shared/conformance`
/// beside the checkout, else `/work/shared/conformance`. `None` (with one clear line on stderr)
/// when it is absent, so a user's clone skips these tests instead of failing.
pub fn conformance_dir(test: &str) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(p) = std::env::var_os("KILN_CONFORMANCE") {
        candidates.push(PathBuf::from(p));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/conformance"));
    candidates.push(PathBuf::from("/work/shared/conformance"));
    for c in candidates {
        if c.join("README.md").is_file() {
            return Some(c);
        }
    }
    skip(
        test,
        "conformance corpus not found (set KILN_CONFORMANCE or place it at ../shared/conformance)",
    );
    None
}

/// The kiln binary built for these tests.
pub fn kiln() -> assert_cmd::Command {
    assert_cmd::Command::cargo_bin("kiln").expect("kiln binary")
}

/// Compares two trees given as path → node maps and lists every missing, differing and extra
/// path at once.
pub fn assert_same_tree<T: PartialEq + std::fmt::Debug>(
    what: &str,
    want: &std::collections::BTreeMap<String, T>,
    got: &std::collections::BTreeMap<String, T>,
) {
    let mut diffs = Vec::new();
    for (k, v) in want {
        match got.get(k) {
            None => diffs.push(format!("missing {k}: {v:?}")),
            Some(g) if g != v => diffs.push(format!("differs {k}:\n  want {v:?}\n  got  {g:?}")),
            _ => {}
        }
    }
    for k in got.keys().filter(|k| !want.contains_key(*k)) {
        diffs.push(format!("extra {k}: {:?}", got[k]));
    }
    assert!(diffs.is_empty(), "{what}:\n{}", diffs.join("\n"));
}

/// Fixtures BuildKit rejects when planning, with the error it gives.
pub const REALWORLD_REJECTED: [(&str, &str); 9] = [
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

/// A name no earlier run used (pid and clock): for host paths, markers, secrets, cache ids.
pub fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("kiln-{tag}-{}-{nanos:x}", std::process::id())
}

/// The real-world corpus: one directory per Dockerfile, sorted.
pub fn realworld_cases(conformance: &std::path::Path) -> Vec<PathBuf> {
    let mut cases: Vec<_> = std::fs::read_dir(conformance.join("realworld"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert_eq!(cases.len(), 281, "the corpus has 281 Dockerfiles");
    cases
}
