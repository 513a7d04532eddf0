//! Step keys: a chain of sha256 digests over canonical JSON documents.
//!
//! A step's [`KeyDocument`] holds only what that step adds (its lowered op as the builder
//! serialises it, plus content digests in `inputs`) and its parent's key. What earlier steps set
//! (ENV, ARG, USER, WORKDIR, SHELL) reaches the key through the parent, so no document repeats
//! the environment and a chain of n steps costs n constant-size documents.
//!
//! The document is written with [`crate::image::canonical_json`] (object keys sorted byte-wise,
//! no whitespace, integers only), the same writer as every digested JSON document in kiln, and
//! the key is its sha256. Any change in how a document is laid out must bump
//! [`KEY_FORMAT_VERSION`]: the unit test `pinned_document_and_key` fails until it is.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::CacheError;
use crate::image::{Digest, canonical_json};
use crate::layer::{Compression, ParseDigestError, WRITER_SCHEME_VERSION};
use crate::platform::Platform;

/// The version of the key document's layout. A new version makes every key new (a cold cache),
/// never a wrong hit.
pub const KEY_FORMAT_VERSION: u32 = 1;

/// A step's cache key: the sha256 of its canonical [`KeyDocument`]. Displays as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// Wraps raw sha256 bytes.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        CacheKey(bytes)
    }

    /// The sha256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        CacheKey(Sha256::digest(data).into())
    }

    /// The raw sha256 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The 64 lowercase hex digits, without `sha256:`.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CacheKey({self})")
    }
}

impl FromStr for CacheKey {
    type Err = ParseDigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // The same rules as the layer digests: `sha256:` and 64 lowercase hex digits.
        crate::layer::DiffId::from_str(s).map(|d| CacheKey(*d.as_bytes()))
    }
}

impl Serialize for CacheKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CacheKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a step builds on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parent {
    /// Nothing: the FROM step of `FROM scratch`.
    Scratch,
    /// A stored image, by its config digest (the image ID): it covers the image's config and
    /// diffIDs but not how its blobs are compressed, so a re-compressed or re-pushed base
    /// still hits.
    Image(Digest),
    /// The previous step's key; for `FROM <stage>`, that stage's final key.
    Step(CacheKey),
}

/// The layer-writing settings that change a layer's bytes, and so its digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSettings {
    /// `SOURCE_DATE_EPOCH` (clamps mtimes in the tar).
    pub source_date_epoch: Option<i64>,
    /// `gzip`, `zstd` or `none`.
    pub compression: String,
    /// The compression level (`None` for `none`).
    pub level: Option<i64>,
    /// [`crate::layer::WRITER_SCHEME_VERSION`]: the layer writer's byte output version.
    pub scheme: u32,
}

impl LayerSettings {
    /// The settings of layers written with `compression` and `source_date_epoch` by this
    /// kiln's layer writer. (zstd's worker count is left out: its output does not depend on it.)
    pub fn new(compression: Compression, source_date_epoch: Option<i64>) -> LayerSettings {
        let (name, level) = match compression {
            Compression::Gzip(l) => ("gzip", Some(i64::from(l))),
            Compression::Zstd(l) => ("zstd", Some(i64::from(l))),
            Compression::Uncompressed => ("none", None),
        };
        LayerSettings {
            source_date_epoch,
            compression: name.to_string(),
            level,
            scheme: WRITER_SCHEME_VERSION,
        }
    }
}

/// What every key of one build shares: the platform and the layer settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySettings {
    /// The target platform, `os/arch[/variant]`.
    pub platform: String,
    pub layer: LayerSettings,
}

impl KeySettings {
    /// The settings of a build for `platform` writing layers as `layer` says.
    pub fn new(platform: &Platform, layer: LayerSettings) -> KeySettings {
        KeySettings {
            platform: platform.to_string(),
            layer,
        }
    }
}

/// The document a [`CacheKey`] is the digest of. Stored beside the cached result, so a later
/// miss can be compared field by field ([`first_difference`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyDocument {
    /// [`KEY_FORMAT_VERSION`].
    pub version: u32,
    pub platform: String,
    pub layer: LayerSettings,
    pub parent: Parent,
    /// The step as the builder lowered it (its own inputs only).
    pub step: Value,
    /// Digests of what the step reads besides its parent (the selected context files of a
    /// COPY, a fetched URL, a bind mount's source); `null` when it reads nothing.
    pub inputs: Value,
}

impl KeyDocument {
    /// The document of a step that builds on `parent`. `step` is serialised as it is; it
    /// should hold the step's own inputs, never what earlier steps set.
    pub fn new(
        settings: &KeySettings,
        parent: Parent,
        step: &impl Serialize,
    ) -> Result<KeyDocument, CacheError> {
        Ok(KeyDocument {
            version: KEY_FORMAT_VERSION,
            platform: settings.platform.clone(),
            layer: settings.layer.clone(),
            parent,
            step: serde_json::to_value(step).map_err(CacheError::Document)?,
            inputs: Value::Null,
        })
    }

    /// The same document with `inputs` (content digests of what the step reads).
    pub fn with_inputs(mut self, inputs: &impl Serialize) -> Result<KeyDocument, CacheError> {
        self.inputs = serde_json::to_value(inputs).map_err(CacheError::Document)?;
        Ok(self)
    }

    /// The canonical bytes the key is the digest of.
    pub fn canonical(&self) -> Result<Vec<u8>, CacheError> {
        canonical_json(self).map_err(CacheError::Document)
    }

    /// The key: sha256 of [`canonical`](Self::canonical).
    pub fn key(&self) -> Result<CacheKey, CacheError> {
        Ok(CacheKey::of(&self.canonical()?))
    }

    /// The document of the next step in the chain: this document's key becomes its parent.
    pub fn child(
        &self,
        settings: &KeySettings,
        step: &impl Serialize,
    ) -> Result<KeyDocument, CacheError> {
        KeyDocument::new(settings, Parent::Step(self.key()?), step)
    }
}

/// One field in which two key documents differ: its path in the document
/// (`step.op.run.argv[2]`) and its old and new values (`None`: absent on that side).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldChange {
    pub path: String,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// Longest value shown in a [`FieldChange`]'s text before it is cut.
const SHOWN_VALUE: usize = 120;

fn show(v: &Option<Value>) -> String {
    let Some(v) = v else {
        return "(absent)".to_string();
    };
    let s = v.to_string();
    if s.chars().count() <= SHOWN_VALUE {
        return s;
    }
    let mut cut: String = s.chars().take(SHOWN_VALUE).collect();
    cut.push('…');
    cut
}

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} → {}",
            self.path,
            show(&self.old),
            show(&self.new)
        )
    }
}

/// The top-level fields in the order they are compared: the step's own fields before its
/// parent, so a step that changed is named for its own change (the parent differs whenever any
/// earlier step changed), and the build-wide settings first, as they change every key at once.
const FIELD_ORDER: &[&str] = &["version", "platform", "layer", "step", "inputs", "parent"];

/// The first field in which `new` differs from `old`, in [`differences`]' order; `None` when
/// the documents are equal.
pub fn first_difference(old: &KeyDocument, new: &KeyDocument) -> Option<FieldChange> {
    let mut out = Vec::new();
    walk_documents(old, new, &mut out, 1);
    out.pop()
}

/// Every field (leaf) in which `new` differs from `old`. Order: the top-level fields as
/// `version, platform, layer, step, inputs, parent`; inside an object, keys in byte order
/// (the canonical order); inside an array, by index. A value on one side only is a change with
/// the other side `None`; a value whose type changed is one change at its path.
pub fn differences(old: &KeyDocument, new: &KeyDocument) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk_documents(old, new, &mut out, usize::MAX);
    out
}

fn walk_documents(old: &KeyDocument, new: &KeyDocument, out: &mut Vec<FieldChange>, limit: usize) {
    let as_map = |d: &KeyDocument| match serde_json::to_value(d) {
        Ok(Value::Object(m)) => m,
        _ => serde_json::Map::new(),
    };
    let (a, b) = (as_map(old), as_map(new));
    let mut rest: Vec<&String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| !FIELD_ORDER.contains(&k.as_str()))
        .collect();
    rest.sort();
    rest.dedup();
    let fields = FIELD_ORDER
        .iter()
        .copied()
        .chain(rest.iter().map(|k| k.as_str()));
    for field in fields {
        if out.len() >= limit {
            return;
        }
        let mut path = String::new();
        push_key(&mut path, field);
        walk(&mut path, a.get(field), b.get(field), out, limit);
    }
}

/// Appends `.key`, or `["key"]` when the key is not a plain name (so a path stays readable and
/// unambiguous: file paths and variable names may hold dots).
fn push_key(path: &mut String, key: &str) {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
    } else {
        path.push('[');
        path.push_str(&Value::String(key.to_string()).to_string());
        path.push(']');
    }
}

fn walk(
    path: &mut String,
    old: Option<&Value>,
    new: Option<&Value>,
    out: &mut Vec<FieldChange>,
    limit: usize,
) {
    if out.len() >= limit {
        return;
    }
    let change = |path: &str| FieldChange {
        path: path.to_string(),
        old: old.cloned(),
        new: new.cloned(),
    };
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let len = path.len();
                push_key(path, k);
                walk(path, a.get(k.as_str()), b.get(k.as_str()), out, limit);
                path.truncate(len);
                if out.len() >= limit {
                    return;
                }
            }
        }
        (Some(Value::Array(a)), Some(Value::Array(b))) => {
            for i in 0..a.len().max(b.len()) {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                walk(path, a.get(i), b.get(i), out, limit);
                path.truncate(len);
                if out.len() >= limit {
                    return;
                }
            }
        }
        (a, b) if a == b => {}
        _ => out.push(change(path)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings() -> KeySettings {
        KeySettings {
            platform: "linux/amd64".to_string(),
            layer: LayerSettings::new(Compression::gzip(), None),
        }
    }

    /// A pinned document: if this fails, the layout of key documents changed, so every key
    /// changes. Bump KEY_FORMAT_VERSION and update the pin.
    #[test]
    fn pinned_document_and_key() {
        let d = KeyDocument::new(
            &settings(),
            Parent::Scratch,
            &json!({"op": {"run": {"argv": ["/bin/sh", "-c", "true"]}}}),
        )
        .unwrap();
        let text = String::from_utf8(d.canonical().unwrap()).unwrap();
        assert_eq!(
            text,
            r#"{"inputs":null,"layer":{"compression":"gzip","level":6,"scheme":1,"source_date_epoch":null},"parent":"scratch","platform":"linux/amd64","step":{"op":{"run":{"argv":["/bin/sh","-c","true"]}}},"version":1}"#
        );
        assert_eq!(d.key().unwrap(), CacheKey::of(text.as_bytes()));
    }

    #[test]
    fn key_text_round_trips() {
        let k = CacheKey::of(b"x");
        let s = k.to_string();
        assert!(s.starts_with("sha256:") && s.len() == 71);
        assert_eq!(s.parse::<CacheKey>().unwrap(), k);
        assert_eq!(
            serde_json::from_str::<CacheKey>(&format!("\"{s}\"")).unwrap(),
            k
        );
        assert!("sha256:ABC".parse::<CacheKey>().is_err());
        assert!(k.hex().parse::<CacheKey>().is_err());
    }

    #[test]
    fn settings_reach_the_key() {
        let step = json!({"op": {"config": {"env": [["A", "1"]]}}});
        let base = KeyDocument::new(&settings(), Parent::Scratch, &step).unwrap();
        let mut variants = Vec::new();
        for layer in [
            LayerSettings::new(Compression::Gzip(9), None),
            LayerSettings::new(Compression::zstd(), None),
            LayerSettings::new(Compression::Uncompressed, None),
            LayerSettings::new(Compression::gzip(), Some(0)),
            LayerSettings {
                scheme: WRITER_SCHEME_VERSION + 1,
                ..LayerSettings::new(Compression::gzip(), None)
            },
        ] {
            let s = KeySettings {
                layer,
                ..settings()
            };
            variants.push(KeyDocument::new(&s, Parent::Scratch, &step).unwrap());
        }
        let arm = KeySettings {
            platform: "linux/arm64/v8".to_string(),
            ..settings()
        };
        variants.push(KeyDocument::new(&arm, Parent::Scratch, &step).unwrap());
        let mut v2 = base.clone();
        v2.version += 1;
        variants.push(v2);
        let mut keys: Vec<CacheKey> = variants.iter().map(|d| d.key().unwrap()).collect();
        keys.push(base.key().unwrap());
        let n = keys.len();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), n, "every setting changes the key");
    }

    #[test]
    fn floats_are_refused_not_hashed_ambiguously() {
        let d = KeyDocument::new(&settings(), Parent::Scratch, &json!({"x": 1.5})).unwrap();
        assert!(matches!(d.key(), Err(CacheError::Document(_))));
    }

    #[test]
    fn paths_name_keys_and_indexes() {
        let s = settings();
        let a = KeyDocument::new(
            &s,
            Parent::Scratch,
            &json!({"op": {"copy": {"sources": ["a.txt"], "chmod": null}}}),
        )
        .unwrap()
        .with_inputs(&json!({"files": {"src/main.rs": "sha256:1", "a.b": "x"}}))
        .unwrap();
        let b = KeyDocument::new(
            &s,
            Parent::Scratch,
            &json!({"op": {"copy": {"sources": ["a.txt", "b.txt"], "chmod": "755"}}}),
        )
        .unwrap()
        .with_inputs(&json!({"files": {"src/main.rs": "sha256:2", "a.b": "x"}}))
        .unwrap();
        let all = differences(&a, &b);
        let paths: Vec<&str> = all.iter().map(|c| c.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "step.op.copy.chmod",
                "step.op.copy.sources[1]",
                r#"inputs.files["src/main.rs"]"#,
            ]
        );
        assert_eq!(all[1].old, None);
        assert_eq!(
            all[1].to_string(),
            r#"step.op.copy.sources[1]: (absent) → "b.txt""#
        );
        assert_eq!(first_difference(&a, &b), Some(all[0].clone()));
        assert_eq!(first_difference(&a, &a), None);
    }

    #[test]
    fn own_changes_are_named_before_the_parent() {
        let s = settings();
        let a = KeyDocument::new(&s, Parent::Step(CacheKey::of(b"1")), &json!({"n": 1})).unwrap();
        let b = KeyDocument::new(&s, Parent::Step(CacheKey::of(b"2")), &json!({"n": 2})).unwrap();
        assert_eq!(first_difference(&a, &b).unwrap().path, "step.n");
        let c = KeyDocument::new(&s, Parent::Step(CacheKey::of(b"2")), &json!({"n": 1})).unwrap();
        let d = first_difference(&a, &c).unwrap();
        assert_eq!(d.path, "parent.step");
        let e = KeyDocument::new(&s, Parent::Scratch, &json!({"n": 1})).unwrap();
        // A changed variant is one change at `parent`, whole values on both sides.
        let d = first_difference(&a, &e).unwrap();
        assert_eq!(d.path, "parent");
        assert_eq!(d.new, Some(json!("scratch")));
    }

    #[test]
    fn long_values_are_cut_in_text() {
        let c = FieldChange {
            path: "step.x".into(),
            old: Some(json!("a".repeat(500))),
            new: None,
        };
        let t = c.to_string();
        assert!(
            t.len() < 200 && t.contains('…') && t.ends_with("→ (absent)"),
            "{t}"
        );
    }
}
