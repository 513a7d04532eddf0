//! Image references, normalised the way Docker does it (`github.com/distribution/reference`,
//! `ParseNormalizedNamed` followed by `TagNameOnly`).
//!
//! ```text
//! busybox                          → docker.io/library/busybox:latest
//! docker.io/busybox                → docker.io/library/busybox:latest
//! index.docker.io/library/busybox  → docker.io/library/busybox:latest
//! localhost:5000/x/y:t             → localhost:5000/x/y:t
//! name@sha256:…                    → docker.io/library/name@sha256:…   (no tag added)
//! name:tag@sha256:…                → docker.io/library/name:tag@sha256:…
//! ```
//!
//! The grammar is Docker's:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [domain "/"] path-component ["/" path-component]*
//! domain     := host [":" port]          (a first component is a domain only if it contains
//!                                         "." or ":", is "localhost", or has uppercase letters)
//! path-component := [a-z0-9]+ ( ("." | "_" | "__" | "-"+) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
//! digest     := algorithm ":" hex{32,}    (sha256: exactly 64 lowercase hex digits)
//! ```
//!
//! and the name (domain and path) is at most 255 characters.

use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use regex::Regex;

/// Docker Hub's domain.
pub const DEFAULT_DOMAIN: &str = "docker.io";
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
const OFFICIAL_REPO_PREFIX: &str = "library/";
/// The tag given to a name that has neither a tag nor a digest.
pub const DEFAULT_TAG: &str = "latest";
/// Longest name (domain and path) Docker accepts.
pub const NAME_TOTAL_LENGTH_MAX: usize = 255;

const PATH_COMPONENT: &str = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
const DOMAIN_COMPONENT: &str = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
const TAG: &str = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
const DIGEST: &str = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}";

fn domain_pattern() -> String {
    let name = format!(r"{DOMAIN_COMPONENT}(?:\.{DOMAIN_COMPONENT})*");
    let ipv6 = r"\[[a-fA-F0-9:]+\]";
    format!(r"(?:{name}|{ipv6})(?::[0-9]+)?")
}

/// `^(name)(?::(tag))?(?:@(digest))?$` with `name` = `(?:(domain)/)?(path)`.
static REFERENCE: LazyLock<Regex> = LazyLock::new(|| {
    let domain = domain_pattern();
    Regex::new(&format!(
        r"^((?:({domain})/)?({PATH_COMPONENT}(?:/{PATH_COMPONENT})*))(?::({TAG}))?(?:@({DIGEST}))?$"
    ))
    .expect("reference regex")
});
static TAG_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("^{TAG}$")).expect("tag regex"));
static DIGEST_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("^{DIGEST}$")).expect("digest regex"));
static PATH_COMPONENT_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("^{PATH_COMPONENT}$")).expect("component regex"));
static DOMAIN_RE: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&format!("^{}$", domain_pattern())).expect("domain regex"));

/// Why a string is not an image reference. The messages follow Docker's
/// (`invalid reference format: repository name must be lowercase`), naming the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// The empty string.
    #[error("invalid reference format: repository name must have at least one component")]
    Empty,
    /// Uppercase letters in the repository path.
    #[error("invalid reference format: repository name ({0}) must be lowercase")]
    Uppercase(String),
    /// Domain and path longer than 255 characters.
    #[error(
        "invalid reference format: repository name must not be more than {NAME_TOTAL_LENGTH_MAX} characters (\"{0}\" has {len})",
        len = .0.len()
    )]
    TooLong(String),
    /// A 64-hex-digit string, which would be confused with an image ID.
    #[error("invalid repository name ({0}), cannot specify 64-byte hexadecimal strings")]
    HexName(String),
    /// A bad tag.
    #[error(
        "invalid reference format: invalid tag \"{0}\" (up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-')"
    )]
    Tag(String),
    /// A bad digest.
    #[error("invalid reference format: invalid digest \"{0}\"")]
    Digest(String),
    /// A bad domain or path component.
    #[error(
        "invalid reference format: invalid repository name component \"{0}\" (lowercase letters and digits, separated by '.', '_', '__' or '-')"
    )]
    Component(String),
    /// Anything else that does not parse.
    #[error("invalid reference format: \"{0}\"")]
    Format(String),
}

/// A normalised image reference.
///
/// `Display` gives the full normalised form (`docker.io/library/busybox:latest`);
/// [`familiar`](Self::familiar) the short form Docker shows (`busybox:latest`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ImageRef {
    /// Registry host, with port if any: `docker.io`, `localhost:5000`.
    pub domain: String,
    /// Repository path inside the registry: `library/busybox`, `x/y`.
    pub path: String,
    /// Tag; `latest` when the input had neither tag nor digest.
    pub tag: Option<String>,
    /// Digest (`sha256:…`), if the input had one.
    pub digest: Option<String>,
}

impl ImageRef {
    /// Parses and normalises `s` like Docker (`busybox` → `docker.io/library/busybox:latest`).
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        let mut r = Self::parse_normalized_named(s)?;
        if r.tag.is_none() && r.digest.is_none() {
            r.tag = Some(DEFAULT_TAG.to_string());
        }
        Ok(r)
    }

    /// Like [`parse`](Self::parse) but without adding `latest`: `busybox` stays tagless.
    pub fn parse_name(s: &str) -> Result<ImageRef, ReferenceError> {
        Self::parse_normalized_named(s)
    }

    fn parse_normalized_named(s: &str) -> Result<ImageRef, ReferenceError> {
        if s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(ReferenceError::HexName(s.to_string()));
        }
        let (domain, remainder) = split_docker_domain(s);
        let remote_name = match remainder.find(':') {
            Some(i) => &remainder[..i],
            None => match remainder.find('@') {
                Some(i) => &remainder[..i],
                None => &remainder[..],
            },
        };
        if remote_name.to_lowercase() != remote_name {
            return Err(ReferenceError::Uppercase(remote_name.to_string()));
        }
        Self::parse_full(s, &format!("{domain}/{remainder}"))
    }

    /// Parses an already complete reference (`domain/path[:tag][@digest]`).
    fn parse_full(input: &str, s: &str) -> Result<ImageRef, ReferenceError> {
        if input.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let Some(caps) = REFERENCE.captures(s) else {
            return Err(diagnose(input, s));
        };
        let name = caps.get(1).map_or("", |m| m.as_str());
        if name.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ReferenceError::TooLong(name.to_string()));
        }
        let domain = caps.get(2).map_or("", |m| m.as_str()).to_string();
        let path = caps.get(3).map_or("", |m| m.as_str()).to_string();
        let tag = caps.get(4).map(|m| m.as_str().to_string());
        let digest = match caps.get(5) {
            Some(m) => {
                let d = m.as_str();
                validate_digest(d)?;
                Some(d.to_string())
            }
            None => None,
        };
        Ok(ImageRef {
            domain,
            path,
            tag,
            digest,
        })
    }

    /// `domain/path`, e.g. `docker.io/library/busybox`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The repository in Docker's short form: `busybox`, `user/app`, `localhost:5000/x`.
    pub fn familiar_repository(&self) -> String {
        if self.domain == DEFAULT_DOMAIN {
            match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.path.clone(),
            }
        } else {
            self.repository()
        }
    }

    /// Docker's short form for tables: `busybox:latest`, `localhost:5000/x/y:t`,
    /// `busybox@sha256:…`.
    pub fn familiar(&self) -> String {
        let mut s = self.familiar_repository();
        self.push_suffix(&mut s);
        s
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
    }

    /// The same repository with another tag (and no digest).
    pub fn with_tag(&self, tag: &str) -> Result<ImageRef, ReferenceError> {
        if !TAG_RE.is_match(tag) {
            return Err(ReferenceError::Tag(tag.to_string()));
        }
        Ok(ImageRef {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        })
    }

    /// The same repository with this digest and no tag.
    pub fn with_digest(&self, digest: &str) -> Result<ImageRef, ReferenceError> {
        validate_digest(digest)?;
        Ok(ImageRef {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.repository();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl serde::Serialize for ImageRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ImageRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        ImageRef::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Docker's `splitDockerDomain`.
fn split_docker_domain(name: &str) -> (&str, String) {
    let (mut domain, remainder) = match name.find('/') {
        Some(i)
            if {
                let first = &name[..i];
                first.contains(['.', ':']) || first == "localhost" || first.to_lowercase() != first
            } =>
        {
            (&name[..i], name[i + 1..].to_string())
        }
        _ => (DEFAULT_DOMAIN, name.to_string()),
    };
    if domain == LEGACY_DEFAULT_DOMAIN {
        domain = DEFAULT_DOMAIN;
    }
    let remainder = if domain == DEFAULT_DOMAIN && !remainder.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{remainder}")
    } else {
        remainder
    };
    (domain, remainder)
}

/// go-digest's validation: known algorithms have fixed lengths and lowercase hex.
fn validate_digest(d: &str) -> Result<(), ReferenceError> {
    let bad = || ReferenceError::Digest(d.to_string());
    if !DIGEST_RE.is_match(d) {
        return Err(bad());
    }
    let (alg, hex) = d.split_once(':').ok_or_else(bad)?;
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(bad()),
    };
    if hex.len() != want || hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad());
    }
    Ok(())
}

/// Finds the most specific reason `s` (the domain-prefixed form of `input`) does not parse.
fn diagnose(input: &str, s: &str) -> ReferenceError {
    // Split off the digest, then the tag (a ':' after the last '/').
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest
        && validate_digest(d).is_err()
    {
        return ReferenceError::Digest(d.to_string());
    }
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].find(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag
        && !TAG_RE.is_match(t)
    {
        return ReferenceError::Tag(t.to_string());
    }
    let mut parts = name.split('/');
    let domain = parts.next().unwrap_or("");
    if !DOMAIN_RE.is_match(domain) {
        return ReferenceError::Component(domain.to_string());
    }
    for c in parts {
        if !PATH_COMPONENT_RE.is_match(c) {
            if c.to_lowercase() != c && PATH_COMPONENT_RE.is_match(&c.to_lowercase()) {
                return ReferenceError::Uppercase(c.to_string());
            }
            return ReferenceError::Component(c.to_string());
        }
    }
    ReferenceError::Format(input.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalisation_table() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "busybox:latest",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "docker.io/library/busybox:latest",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "index.docker.io/library/busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            ("user/app:1.0", "docker.io/user/app:1.0", "user/app:1.0"),
            (
                "docker.io/library/a/b",
                "docker.io/library/a/b:latest",
                "library/a/b:latest",
            ),
            (
                "localhost:5000/x/y:t",
                "localhost:5000/x/y:t",
                "localhost:5000/x/y:t",
            ),
            ("localhost/x", "localhost/x:latest", "localhost/x:latest"),
            (
                "registry.example/a/b",
                "registry.example/a/b:latest",
                "registry.example/a/b:latest",
            ),
            (
                "Registry.Example:443/a",
                "Registry.Example:443/a:latest",
                "Registry.Example:443/a:latest",
            ),
            ("[::1]:5000/img:v", "[::1]:5000/img:v", "[::1]:5000/img:v"),
            (
                "a_b.c-d__e--f",
                "docker.io/library/a_b.c-d__e--f:latest",
                "a_b.c-d__e--f:latest",
            ),
            (
                "app:V1.0_rc-2",
                "docker.io/library/app:V1.0_rc-2",
                "app:V1.0_rc-2",
            ),
        ];
        for (input, full, familiar) in cases {
            let r = ImageRef::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), *full, "{input}");
            assert_eq!(r.familiar(), *familiar, "{input}");
            // The full form parses to itself.
            assert_eq!(ImageRef::parse(full).unwrap(), r, "{full}");
        }
    }

    #[test]
    fn digests() {
        let r = ImageRef::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        assert_eq!(r.familiar(), format!("busybox@{D}"));

        let r = ImageRef::parse(&format!("localhost:5000/x:v1@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.to_string(), format!("localhost:5000/x:v1@{D}"));
        assert_eq!(r.familiar(), format!("localhost:5000/x:v1@{D}"));
    }

    #[test]
    fn fields() {
        let r = ImageRef::parse("localhost:5000/x/y:t").unwrap();
        assert_eq!(r.domain, "localhost:5000");
        assert_eq!(r.path, "x/y");
        assert_eq!(r.tag.as_deref(), Some("t"));
        assert_eq!(r.repository(), "localhost:5000/x/y");
        assert_eq!(ImageRef::parse_name("busybox").unwrap().tag, None);
        assert_eq!(
            ImageRef::parse("busybox")
                .unwrap()
                .with_tag("1.36")
                .unwrap()
                .to_string(),
            "docker.io/library/busybox:1.36"
        );
    }

    #[test]
    fn errors() {
        let long = format!("a/{}", "b".repeat(260));
        let long_tag = format!("app:{}", "t".repeat(129));
        let hex64 = "a".repeat(64);
        let cases: Vec<(&str, &str)> = vec![
            ("", "repository name must have at least one component"),
            (
                "Busybox",
                "repository name (library/Busybox) must be lowercase",
            ),
            ("user/App:1", "repository name (user/App) must be lowercase"),
            ("localhost/Foo", "must be lowercase"),
            ("app:bad/tag", "invalid reference format"),
            ("app:-x", "invalid tag \"-x\""),
            ("app:a b", "invalid tag \"a b\""),
            (long_tag.as_str(), "invalid tag"),
            (long.as_str(), "must not be more than 255 characters"),
            (hex64.as_str(), "cannot specify 64-byte hexadecimal strings"),
            ("app@sha256:abc", "invalid digest \"sha256:abc\""),
            (
                "app@sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
                "invalid digest",
            ),
            ("a//b", "invalid reference format"),
            ("-app", "invalid repository name component \"-app\""),
            ("app_", "invalid repository name component \"app_\""),
            ("app:", "invalid tag \"\""),
            ("a..b", "invalid repository name component"),
            (
                "bad_host.com:/x",
                "invalid repository name component \"bad_host.com:\"",
            ),
        ];
        for (input, want) in cases {
            let e = ImageRef::parse(input).expect_err(input).to_string();
            assert!(e.contains(want), "{input:?}: got {e:?}, want {want:?}");
            if !input.is_empty() && !want.contains("64-byte") {
                assert!(e.starts_with("invalid reference format"), "{e}");
            }
        }
        assert_eq!(
            ImageRef::parse("Busybox").unwrap_err().to_string(),
            "invalid reference format: repository name (library/Busybox) must be lowercase"
        );
    }

    #[test]
    fn length_limit_is_on_the_full_name() {
        // docker.io/library/ + 237 = 255: accepted; one more is refused.
        let ok = "b".repeat(255 - "docker.io/library/".len());
        assert!(ImageRef::parse(&ok).is_ok());
        let bad = format!("{ok}b");
        assert!(matches!(
            ImageRef::parse(&bad),
            Err(ReferenceError::TooLong(_))
        ));
    }

    #[test]
    fn serde_uses_the_full_form() {
        let r = ImageRef::parse("busybox").unwrap();
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(j, "\"docker.io/library/busybox:latest\"");
        assert_eq!(serde_json::from_str::<ImageRef>(&j).unwrap(), r);
    }
}
