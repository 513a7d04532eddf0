//! The OCI platform triple: `os/architecture[/variant]`, with Go's names (`linux/amd64`,
//! `linux/arm64/v8`, `linux/arm/v7`).
//!
//! One type for both of its users: [`plan`](crate::plan) derives the `TARGET*` and `BUILD*`
//! args from it, and [`image`](crate::image) records it in image configs, manifests and index
//! entries (the conversions from and to those — `Platform::of_config`, `to_oci`, `from_oci` —
//! are defined in `image`, next to the types they convert). Each module keeps its own error
//! type: [`ParsePlatformError`] becomes a `String` in `plan` and an `ImageError` in `image`.

use std::fmt;

/// A platform: `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`, `arm64`, …
    pub architecture: String,
    /// `v8`, `v7`, …
    pub variant: Option<String>,
}

/// A platform string that is not `os/arch[/variant]` with three (or two) non-empty parts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {input:?}: expected os/arch[/variant]")]
pub struct ParsePlatformError {
    /// The string given.
    pub input: String,
}

impl Platform {
    /// The machine kiln runs on, as an image records it: Go's architecture names, arm64 with its
    /// variant `v8` and arm with `v7`. For the build args, drop arm64's default variant
    /// ([`without_default_variant`](Self::without_default_variant)).
    pub fn host() -> Platform {
        let (arch, variant) = match std::env::consts::ARCH {
            "x86_64" => ("amd64", None),
            "x86" => ("386", None),
            "aarch64" => ("arm64", Some("v8")),
            "arm" => ("arm", Some("v7")),
            "powerpc64" if cfg!(target_endian = "little") => ("ppc64le", None),
            "loongarch64" => ("loong64", None),
            other => (other, None),
        };
        Platform {
            os: std::env::consts::OS.to_string(),
            architecture: arch.to_string(),
            variant: variant.map(str::to_string),
        }
    }

    /// This platform without arm64's default variant `v8`, as BuildKit spells platforms in the
    /// `TARGET*`/`BUILD*` args (`linux/arm64`, an empty `TARGETVARIANT`). Others are unchanged.
    pub fn without_default_variant(mut self) -> Platform {
        if self.architecture == "arm64" && self.variant.as_deref() == Some("v8") {
            self.variant = None;
        }
        self
    }

    /// Parses `os/arch[/variant]` into OCI names (`linux/amd64`, `linux/arm64/v8`): every part
    /// lower-cased, and `x86_64`/`x86-64` read as `amd64`, `aarch64` as `arm64`.
    pub fn parse(s: &str) -> Result<Platform, ParsePlatformError> {
        let (os, arch, variant) = split(s)?;
        let architecture = match arch.to_ascii_lowercase().as_str() {
            "x86_64" | "x86-64" => "amd64".to_string(),
            "aarch64" => "arm64".to_string(),
            a => a.to_string(),
        };
        Ok(Platform {
            os: os.to_ascii_lowercase(),
            architecture,
            variant: variant.map(str::to_ascii_lowercase),
        })
    }

    /// Parses `os/arch[/variant]` as written, only lower-casing os and arch: no architecture
    /// alias is resolved (`x86_64` stays `x86_64`) and the variant keeps its case. This is how
    /// `plan` reads `--platform` for the `TARGET*` args; [`parse`](Self::parse) normalises.
    pub fn parse_literal(s: &str) -> Result<Platform, ParsePlatformError> {
        let (os, arch, variant) = split(s)?;
        Ok(Platform {
            os: os.to_lowercase(),
            architecture: arch.to_lowercase(),
            variant: variant.map(str::to_string),
        })
    }

    /// Whether an image of platform `other` runs here: same os and architecture, and the same
    /// variant when both have one (arm64 images rarely carry one).
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && match (&self.variant, &other.variant) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// `os/arch[/variant]` split into its parts, none of them empty.
fn split(s: &str) -> Result<(&str, &str, Option<&str>), ParsePlatformError> {
    let parts: Vec<&str> = s.split('/').collect();
    match parts.as_slice() {
        [os, arch] if !os.is_empty() && !arch.is_empty() => Ok((os, arch, None)),
        [os, arch, variant] if !os.is_empty() && !arch.is_empty() && !variant.is_empty() => {
            Ok((os, arch, Some(variant)))
        }
        _ => Err(ParsePlatformError {
            input: s.to_string(),
        }),
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_normalises_and_parse_literal_does_not() {
        let p = Platform::parse("Linux/X86_64/V1").unwrap();
        assert_eq!(p.to_string(), "linux/amd64/v1");
        let p = Platform::parse_literal("Linux/X86_64/V1").unwrap();
        assert_eq!(p.to_string(), "linux/x86_64/V1");
        for bad in [
            "linux",
            "linux/",
            "/amd64",
            "linux//",
            "linux/arm/",
            "a/b/c/d",
            "",
        ] {
            assert!(Platform::parse(bad).is_err(), "{bad:?}");
            assert!(Platform::parse_literal(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            Platform::parse("linux").unwrap_err().to_string(),
            "invalid platform \"linux\": expected os/arch[/variant]"
        );
    }

    #[test]
    fn default_variant_and_matching() {
        let arm64 = Platform::parse("linux/arm64/v8").unwrap();
        assert_eq!(
            arm64.clone().without_default_variant().to_string(),
            "linux/arm64"
        );
        let armv7 = Platform::parse("linux/arm/v7").unwrap();
        assert_eq!(armv7.clone().without_default_variant(), armv7);
        assert!(arm64.matches(&Platform::parse("linux/arm64").unwrap()));
        assert!(!arm64.matches(&Platform::parse("linux/arm64/v9").unwrap()));
        assert!(!arm64.matches(&armv7));
    }
}
