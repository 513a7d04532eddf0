//! Cache export and import (`--cache-to`, `--cache-from`): cached step results as an OCI image
//! layout another store can read.
//!
//! ```text
//! DIR/oci-layout
//! DIR/index.json          → one image manifest, annotated org.opencontainers.image.ref.name=kiln-cache
//! DIR/blobs/sha256/<hex>  the manifest, its config and the layer blobs
//! ```
//!
//! The manifest is an OCI *image manifest*, never an index: registries reject index-shaped
//! caches (moby/buildkit#2251), and [7/9] pushes this same manifest and its blobs to a registry
//! unchanged. Its config (media type [`CONFIG_MEDIA_TYPE`]) is a [`CacheConfig`], in the spirit
//! of BuildKit's `cacheconfig.v0`: the layers (blob digest and diffID, parallel to the
//! manifest's `layers`), the records (key → indices into those layers) and, with `mounts=true`,
//! `RUN --mount=type=cache` directories, each one more layer.
//!
//! Privacy: a record's key document leaves the machine with every string and number replaced
//! by its sha256 ([`redact`]), keeping the field structure, so a miss can still be explained by
//! field name but no build arg or path is readable. The key stays the key the local build
//! computes (the sha256 of the *plaintext* document): an importer trusts a record by its key —
//! it computes the same key from its own plaintext inputs — and never rehashes the exported
//! document, which no longer hashes to it.
//!
//! Writing: blobs first (each into a temp file in `blobs/sha256/`, verified, renamed), then
//! `index.json` through a temp file and a rename, so a reader sees the old cache or the new one.
//! Nothing kiln did not write is removed: other `index.json` entries are kept, and blobs are
//! never deleted.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::index::{CacheRecord, CacheResult};
use super::key::{CacheKey, KeyDocument};
use crate::image::{Descriptor, Digest, MediaType, Store, canonical_json};
use crate::layer::{DiffId, LayerEntry, WriteOptions};

/// The media type of the cache manifest's config blob.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.v1+json";
/// The `org.opencontainers.image.ref.name` of the cache manifest in `index.json`.
pub const REF_NAME: &str = "kiln-cache";
/// The annotation naming a manifest in an OCI layout's `index.json`.
pub const REF_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// [`CacheConfig::version`].
pub const CONFIG_VERSION: u32 = 1;
/// Largest manifest or config kiln reads.
const MAX_JSON: u64 = 64 << 20;
const TMP_PREFIX: &str = ".kiln-tmp-";

/// Errors of cache export and import.
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// A `--cache-to`/`--cache-from` value kiln does not accept.
    #[error("{flag} {spec:?}: {message}")]
    Spec {
        flag: &'static str,
        spec: String,
        message: String,
    },
    /// A file of the layout could not be read or written.
    #[error("cache {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The directory is not a kiln cache, or a part of it does not verify.
    #[error("{} is not a kiln cache: {message}", dir.display())]
    Invalid { dir: PathBuf, message: String },
    /// A blob of the store could not be read or written.
    #[error("cache blob")]
    Image(#[from] crate::image::ImageError),
    /// A layer could not be written.
    #[error("cache mount layer")]
    Layer(#[from] crate::layer::LayerError),
    #[error("cache: writing JSON")]
    Json(#[from] serde_json::Error),
    /// The local index could not be read.
    #[error(transparent)]
    Cache(#[from] super::CacheError),
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExchangeError + use<> {
    let path = path.to_path_buf();
    move |source| ExchangeError::Io {
        action,
        path,
        source,
    }
}

// ---- specs ------------------------------------------------------------------------------------

/// Which steps `--cache-to` exports (BuildKit's `mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ExportMode {
    /// The steps of the target stage and the stages it is built `FROM` (the default).
    #[default]
    Min,
    /// Every step of the build.
    Max,
}

/// `--cache-to type=local,dest=DIR[,mode=min|max][,mounts=true]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalExport {
    pub dest: PathBuf,
    pub mode: ExportMode,
    /// Also export the build's `RUN --mount=type=cache` directories.
    pub mounts: bool,
}

/// `--cache-from type=local,src=DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImport {
    pub src: PathBuf,
}

/// `k=v,k=v` → fields; the type checked and removed.
fn spec_fields(flag: &'static str, spec: &str) -> Result<HashMap<String, String>, ExchangeError> {
    let err = |message: String| ExchangeError::Spec {
        flag,
        spec: spec.to_string(),
        message,
    };
    let mut fields = HashMap::new();
    for part in spec.split(',') {
        let Some((k, v)) = part.split_once('=') else {
            if !spec.contains('=') {
                // buildx reads a bare value as a registry reference.
                return Err(err(
                    "a registry cache (type=registry) is not supported yet; use type=local".into(),
                ));
            }
            return Err(err(format!("{part:?} is not KEY=VALUE")));
        };
        if fields.insert(k.trim().to_string(), v.to_string()).is_some() {
            return Err(err(format!("{k:?} is given twice")));
        }
    }
    match fields.remove("type").as_deref() {
        Some("local") => Ok(fields),
        Some("registry") => Err(err(
            "a registry cache (type=registry) is not supported yet; use type=local".into(),
        )),
        Some(other) => Err(err(format!("unknown type {other:?} (local)"))),
        None => Err(err("type= is missing (type=local)".into())),
    }
}

fn reject_rest(
    flag: &'static str,
    spec: &str,
    fields: HashMap<String, String>,
) -> Result<(), ExchangeError> {
    let mut rest: Vec<String> = fields.into_keys().collect();
    rest.sort();
    match rest.first() {
        None => Ok(()),
        Some(k) => Err(ExchangeError::Spec {
            flag,
            spec: spec.to_string(),
            message: format!("unknown option {k:?}"),
        }),
    }
}

impl LocalExport {
    /// Parses a `--cache-to` value.
    pub fn parse(spec: &str) -> Result<LocalExport, ExchangeError> {
        const FLAG: &str = "--cache-to";
        let err = |message: String| ExchangeError::Spec {
            flag: FLAG,
            spec: spec.to_string(),
            message,
        };
        let mut f = spec_fields(FLAG, spec)?;
        let dest = match f.remove("dest") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => return Err(err("dest=DIR is missing".into())),
        };
        let mode = match f.remove("mode").as_deref() {
            None | Some("min") => ExportMode::Min,
            Some("max") => ExportMode::Max,
            Some(m) => return Err(err(format!("mode={m:?}: min or max"))),
        };
        let mounts = match f.remove("mounts").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(m) => return Err(err(format!("mounts={m:?}: true or false"))),
        };
        reject_rest(FLAG, spec, f)?;
        Ok(LocalExport { dest, mode, mounts })
    }
}

impl LocalImport {
    /// Parses a `--cache-from` value.
    pub fn parse(spec: &str) -> Result<LocalImport, ExchangeError> {
        const FLAG: &str = "--cache-from";
        let mut f = spec_fields(FLAG, spec)?;
        let src = match f.remove("src") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => {
                return Err(ExchangeError::Spec {
                    flag: FLAG,
                    spec: spec.to_string(),
                    message: "src=DIR is missing".into(),
                });
            }
        };
        reject_rest(FLAG, spec, f)?;
        Ok(LocalImport { src })
    }
}

// ---- the config -------------------------------------------------------------------------------

/// The config blob of the cache manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheConfig {
    /// [`CONFIG_VERSION`].
    pub version: u32,
    /// Parallel to the manifest's `layers`.
    pub layers: Vec<ConfigLayer>,
    pub records: Vec<ExportedRecord>,
    /// `RUN --mount=type=cache` directories (`mounts=true`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<ExportedMount>,
}

/// One layer of the manifest: its blob and the digest of its uncompressed tar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigLayer {
    pub blob: Digest,
    #[serde(rename = "diffID")]
    pub diff_id: DiffId,
}

/// One cached step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedRecord {
    /// The step's key: the sha256 of its plaintext document (not of `document`).
    pub key: CacheKey,
    /// The key document, [`redact`]ed.
    pub document: Value,
    /// Indices into the layers, in the step's order.
    pub layers: Vec<usize>,
    /// Unix seconds when the result was recorded.
    pub created: i64,
    /// The key later steps build on, when not this one (a `COPY --from` chains on the key
    /// of the content it copied). A digest, never plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<CacheKey>,
    /// Milliseconds the step took when it ran (what a hit saves; an integer, as canonical
    /// JSON has no other numbers).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub millis: u64,
    /// The history time the exporting build gave the step (Unix seconds): a build made only
    /// of imported hits then makes the exporter's image, timestamps included.
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub stamp: i64,
}

fn is_zero(x: &u64) -> bool {
    *x == 0
}

fn is_zero_i64(x: &i64) -> bool {
    *x == 0
}

/// A cache mount's directory, as a layer whose root is the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedMount {
    /// The mount's directory name in the store (the sha256 of its identity, never the identity).
    pub id: String,
    pub layer: usize,
}

/// `doc` with every string and number replaced by `sha256:<hex>` of its canonical JSON (so
/// `"1"` and `1` stay different), object keys and structure kept. Booleans and nulls stay.
pub fn redact(doc: &KeyDocument) -> Result<Value, ExchangeError> {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => m.values_mut().for_each(walk),
            Value::Array(a) => a.iter_mut().for_each(walk),
            Value::String(_) | Value::Number(_) => {
                let text = v.to_string();
                *v = Value::String(format!("sha256:{}", hex::encode(Sha256::digest(text))));
            }
            Value::Bool(_) | Value::Null => {}
        }
    }
    let mut v = serde_json::to_value(doc)?;
    walk(&mut v);
    // Object keys may hold names (a variable, a file): digest those that are not plain field
    // names of kiln's own documents.
    fn keys(v: &mut Value) {
        match v {
            Value::Object(m) => {
                let old = std::mem::take(m);
                for (k, mut val) in old {
                    keys(&mut val);
                    let plain = !k.is_empty()
                        && k.len() <= 32
                        && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
                    let k = if plain {
                        k
                    } else {
                        format!("sha256:{}", hex::encode(Sha256::digest(k.as_bytes())))
                    };
                    m.insert(k, val);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(keys),
            _ => {}
        }
    }
    keys(&mut v);
    Ok(v)
}

// ---- writing ----------------------------------------------------------------------------------

/// Writes a cache into an OCI layout directory. See the module documentation.
pub struct LayoutWriter {
    dir: PathBuf,
    blobs: PathBuf,
    layers: Vec<(Descriptor, DiffId)>,
    by_blob: HashMap<String, usize>,
    records: Vec<ExportedRecord>,
    mounts: Vec<ExportedMount>,
}

impl LayoutWriter {
    /// Opens `dir` (created if missing) for a new cache.
    pub fn create(dir: &Path) -> Result<LayoutWriter, ExchangeError> {
        let blobs = dir.join("blobs/sha256");
        fs::create_dir_all(&blobs).map_err(io_err("creating", &blobs))?;
        let layout = dir.join("oci-layout");
        if !layout.exists() {
            write_atomic(dir, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        }
        Ok(LayoutWriter {
            dir: dir.to_path_buf(),
            blobs,
            layers: Vec::new(),
            by_blob: HashMap::new(),
            records: Vec::new(),
            mounts: Vec::new(),
        })
    }

    fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs.join(digest.digest())
    }

    /// Copies a blob of `store` into the layout (unless it is there), verifying its digest.
    fn copy_blob(&self, store: &Store, desc: &Descriptor) -> Result<(), ExchangeError> {
        let dest = self.blob_path(desc.digest());
        if fs::metadata(&dest).is_ok_and(|m| m.len() == desc.size()) {
            return Ok(());
        }
        let mut from = store.open_blob(desc.digest())?;
        let src = from.path().to_path_buf();
        self.write_blob(desc.digest(), |w| {
            io::copy(&mut from, w)
                .map(|_| ())
                .map_err(io_err("copying", &src))
        })
    }

    /// Writes a blob through a temp file in `blobs/sha256/`, checks it is `expected`, renames.
    fn write_blob(
        &self,
        expected: &Digest,
        fill: impl FnOnce(&mut dyn Write) -> Result<(), ExchangeError>,
    ) -> Result<(), ExchangeError> {
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.blobs)
            .map_err(io_err("creating a temp file in", &self.blobs))?;
        let tmp_path = tmp.path().to_path_buf();
        let mut hashing = Hashing::new(io::BufWriter::new(tmp.as_file_mut()));
        fill(&mut hashing)?;
        let (digest, mut out) = hashing.finish();
        out.flush().map_err(io_err("writing", &tmp_path))?;
        drop(out);
        if &digest != expected {
            return Err(ExchangeError::Invalid {
                dir: self.dir.clone(),
                message: format!("blob {expected} was read as {digest}"),
            });
        }
        self.persist(tmp, expected)
    }

    fn persist(&self, tmp: tempfile::NamedTempFile, digest: &Digest) -> Result<(), ExchangeError> {
        tmp.as_file()
            .sync_all()
            .map_err(io_err("syncing", tmp.path()))?;
        let dest = self.blob_path(digest);
        tmp.persist(&dest).map_err(|e| ExchangeError::Io {
            action: "renaming into place",
            path: dest.clone(),
            source: e.error,
        })?;
        // Readable by whoever restores the cache (a CI runner's other user).
        let _ = fs::set_permissions(&dest, std::os::unix::fs::PermissionsExt::from_mode(0o644));
        Ok(())
    }

    fn add_layer(&mut self, desc: &Descriptor, diff_id: DiffId) -> usize {
        let k = desc.digest().to_string();
        if let Some(&i) = self.by_blob.get(&k) {
            return i;
        }
        self.layers.push((desc.clone(), diff_id));
        self.by_blob.insert(k, self.layers.len() - 1);
        self.layers.len() - 1
    }

    /// Adds a record and copies its blobs from `store`.
    pub fn add_record(&mut self, store: &Store, record: &CacheRecord) -> Result<(), ExchangeError> {
        let r = &record.result;
        if r.layers.len() != r.diff_ids.len() {
            return Ok(());
        }
        let mut layers = Vec::new();
        for (desc, diff_id) in r.layers.iter().zip(&r.diff_ids) {
            self.copy_blob(store, desc)?;
            layers.push(self.add_layer(desc, *diff_id));
        }
        self.records.push(ExportedRecord {
            key: record.key,
            document: redact(&record.document)?,
            layers,
            created: record.created,
            chain: record.result.chain,
            millis: (record.seconds * 1000.0).round() as u64,
            stamp: record.stamp,
        });
        Ok(())
    }

    /// Adds a cache mount's directory `data` as a layer whose root is that directory.
    pub fn add_mount(
        &mut self,
        id: &str,
        entries: Vec<LayerEntry>,
        opts: &WriteOptions,
    ) -> Result<(), ExchangeError> {
        let mut tmp = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .tempfile_in(&self.blobs)
            .map_err(io_err("creating a temp file in", &self.blobs))?;
        let written = {
            let mut out = io::BufWriter::new(tmp.as_file_mut());
            let w = crate::layer::write_layer(entries, opts, &mut out)?;
            out.flush().map_err(io_err("writing", &self.blobs))?;
            w
        };
        let digest: Digest =
            written
                .digest
                .to_string()
                .parse()
                .map_err(|_| ExchangeError::Invalid {
                    dir: self.dir.clone(),
                    message: "a written layer has no sha256 digest".into(),
                })?;
        self.persist(tmp, &digest)?;
        let desc = Descriptor::new(MediaType::from(written.media_type), written.size, digest);
        let layer = self.add_layer(&desc, written.diff_id);
        self.mounts.push(ExportedMount {
            id: id.to_string(),
            layer,
        });
        Ok(())
    }

    /// Writes the config and the manifest, then points `index.json` at it. Returns the
    /// manifest's descriptor.
    pub fn finish(mut self) -> Result<Descriptor, ExchangeError> {
        self.records.sort_by_key(|r| r.key);
        self.records.dedup_by_key(|r| r.key);
        let config = CacheConfig {
            version: CONFIG_VERSION,
            layers: self
                .layers
                .iter()
                .map(|(d, id)| ConfigLayer {
                    blob: d.digest().clone(),
                    diff_id: *id,
                })
                .collect(),
            records: std::mem::take(&mut self.records),
            mounts: std::mem::take(&mut self.mounts),
        };
        let config_desc = self.put_json(CONFIG_MEDIA_TYPE, &config)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": self.layers.iter().map(|(d, _)| d).collect::<Vec<_>>(),
            "annotations": { "org.opencontainers.image.title": "kiln build cache" },
        });
        let mut manifest_desc =
            self.put_json("application/vnd.oci.image.manifest.v1+json", &manifest)?;
        manifest_desc.set_annotations(Some(
            [(REF_ANNOTATION.to_string(), REF_NAME.to_string())].into(),
        ));
        // Keep what else index.json lists (not kiln's cache).
        let index_path = self.dir.join("index.json");
        let mut manifests: Vec<Value> = match fs::read(&index_path) {
            Ok(b) => serde_json::from_slice::<Value>(&b)
                .ok()
                .and_then(|v| v.get("manifests").and_then(Value::as_array).cloned())
                .unwrap_or_default()
                .into_iter()
                .filter(|m| {
                    m.pointer("/annotations/org.opencontainers.image.ref.name")
                        .and_then(Value::as_str)
                        != Some(REF_NAME)
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        manifests.push(serde_json::to_value(&manifest_desc)?);
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        write_atomic(&self.dir, &index_path, &serde_json::to_vec_pretty(&index)?)?;
        Ok(manifest_desc)
    }

    fn put_json(
        &self,
        media_type: &str,
        value: &impl Serialize,
    ) -> Result<Descriptor, ExchangeError> {
        let bytes = canonical_json(value)?;
        let digest = crate::image::digest_of(&bytes);
        if !fs::metadata(self.blob_path(&digest)).is_ok_and(|m| m.len() == bytes.len() as u64) {
            self.write_blob(&digest, |w| {
                w.write_all(&bytes).map_err(io_err("writing", &self.blobs))
            })?;
        }
        Ok(Descriptor::new(
            MediaType::from(media_type),
            bytes.len() as u64,
            digest,
        ))
    }
}

fn write_atomic(dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), ExchangeError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempfile_in(dir)
        .map_err(io_err("creating a temp file in", dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_err("writing", dest))?;
    tmp.persist(dest).map_err(|e| ExchangeError::Io {
        action: "renaming into place",
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    let _ = fs::set_permissions(dest, std::os::unix::fs::PermissionsExt::from_mode(0o644));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("syncing", dir))
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }
    fn finish(self) -> (Digest, W) {
        let hex = hex::encode(self.hasher.finalize());
        let digest = format!("sha256:{hex}").parse().expect("a sha256 digest");
        (digest, self.inner)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

// ---- reading ----------------------------------------------------------------------------------

/// A cache read from a layout: its manifest and config only; blobs are read on a hit.
#[derive(Debug)]
pub struct Imported {
    dir: PathBuf,
    layers: Vec<Descriptor>,
    config: CacheConfig,
    by_key: HashMap<CacheKey, usize>,
}

impl Imported {
    /// Reads the cache in `dir`: `index.json`, the manifest named [`REF_NAME`] (or the only
    /// one whose config is a kiln cache), its config. Every part is checked against its digest.
    pub fn open(dir: &Path) -> Result<Imported, ExchangeError> {
        let invalid = |message: String| ExchangeError::Invalid {
            dir: dir.to_path_buf(),
            message,
        };
        let index_path = dir.join("index.json");
        let index: Value = serde_json::from_slice(&read_small(&index_path)?)
            .map_err(|e| invalid(format!("index.json: {e}")))?;
        let manifests = index
            .get("manifests")
            .and_then(Value::as_array)
            .ok_or_else(|| invalid("index.json lists no manifests".into()))?;
        let named = manifests.iter().find(|m| {
            m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(Value::as_str)
                == Some(REF_NAME)
        });
        let desc: Descriptor = match named.or(manifests.first()) {
            Some(m) => serde_json::from_value(m.clone())
                .map_err(|e| invalid(format!("index.json: {e}")))?,
            None => return Err(invalid("index.json lists no manifests".into())),
        };
        let manifest: crate::image::ImageManifest =
            serde_json::from_slice(&read_blob(dir, desc.digest())?)
                .map_err(|e| invalid(format!("manifest {}: {e}", desc.digest())))?;
        if manifest.config().media_type().to_string() != CONFIG_MEDIA_TYPE {
            return Err(invalid(format!(
                "its manifest's config is {}, not {CONFIG_MEDIA_TYPE}",
                manifest.config().media_type()
            )));
        }
        let config: CacheConfig =
            serde_json::from_slice(&read_blob(dir, manifest.config().digest())?)
                .map_err(|e| invalid(format!("config: {e}")))?;
        if config.version != CONFIG_VERSION {
            return Err(invalid(format!(
                "cache format version {} (this kiln reads {CONFIG_VERSION})",
                config.version
            )));
        }
        let layers = manifest.layers().clone();
        let consistent = layers.len() == config.layers.len()
            && layers
                .iter()
                .zip(&config.layers)
                .all(|(d, c)| d.digest() == &c.blob)
            && config
                .records
                .iter()
                .flat_map(|r| &r.layers)
                .chain(config.mounts.iter().map(|m| &m.layer))
                .all(|&i| i < layers.len());
        if !consistent {
            return Err(invalid(
                "its config's layers do not match its manifest".into(),
            ));
        }
        let by_key = config
            .records
            .iter()
            .enumerate()
            .map(|(i, r)| (r.key, i))
            .collect();
        Ok(Imported {
            dir: dir.to_path_buf(),
            layers,
            config,
            by_key,
        })
    }

    /// The directory read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config as read.
    pub fn config(&self) -> &CacheConfig {
        &self.config
    }

    /// The result recorded for `key`, if this cache has it (its blobs are not read yet: see
    /// [`fetch`](Self::fetch)).
    pub fn result(&self, key: &CacheKey) -> Option<CacheResult> {
        let r = &self.config.records[*self.by_key.get(key)?];
        Some(CacheResult {
            layers: r.layers.iter().map(|&i| self.layers[i].clone()).collect(),
            diff_ids: r
                .layers
                .iter()
                .map(|&i| self.config.layers[i].diff_id)
                .collect(),
            config: Value::Null,
            chain: r.chain,
        })
    }

    /// Seconds the step of `key` took when it ran.
    pub fn seconds(&self, key: &CacheKey) -> f64 {
        self.by_key
            .get(key)
            .map_or(0.0, |&i| self.config.records[i].millis as f64 / 1000.0)
    }

    /// The history time the exporting build gave the step of `key` (0: unknown).
    pub fn stamp(&self, key: &CacheKey) -> i64 {
        self.by_key
            .get(key)
            .map_or(0, |&i| self.config.records[i].stamp)
    }

    /// Copies the blobs of `result` that `store` lacks into it, verifying their digests.
    pub fn fetch(&self, store: &Store, result: &CacheResult) -> Result<(), ExchangeError> {
        for desc in &result.layers {
            if store.has_blob(desc.digest()) {
                continue;
            }
            let path = self.dir.join("blobs/sha256").join(desc.digest().digest());
            let mut from = File::open(&path).map_err(io_err("opening", &path))?;
            let mut w = store.blob_writer()?;
            io::copy(&mut from, &mut w).map_err(io_err("reading", &path))?;
            w.finish_expecting(desc.media_type().as_ref(), desc.digest())?;
        }
        Ok(())
    }

    /// The cache mounts: each one's id, layer blob and diffID.
    pub fn mounts(&self) -> impl Iterator<Item = (&str, &Descriptor, &DiffId)> {
        self.config.mounts.iter().map(|m| {
            (
                m.id.as_str(),
                &self.layers[m.layer],
                &self.config.layers[m.layer].diff_id,
            )
        })
    }

    /// Opens a blob of the layout.
    pub fn open_blob(&self, desc: &Descriptor) -> Result<impl Read + use<>, ExchangeError> {
        let path = self.dir.join("blobs/sha256").join(desc.digest().digest());
        let f = File::open(&path).map_err(io_err("opening", &path))?;
        Ok(io::BufReader::new(f))
    }
}

fn read_small(path: &Path) -> Result<Vec<u8>, ExchangeError> {
    let f = File::open(path).map_err(io_err("opening", path))?;
    let mut bytes = Vec::new();
    f.take(MAX_JSON)
        .read_to_end(&mut bytes)
        .map_err(io_err("reading", path))?;
    Ok(bytes)
}

fn read_blob(dir: &Path, digest: &Digest) -> Result<Vec<u8>, ExchangeError> {
    let bytes = read_small(&dir.join("blobs/sha256").join(digest.digest()))?;
    let got = crate::image::digest_of(&bytes);
    if &got != digest {
        return Err(ExchangeError::Invalid {
            dir: dir.to_path_buf(),
            message: format!("blob {digest} reads as {got}"),
        });
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::{KeySettings, LayerSettings, Parent};
    use crate::layer::Compression;
    use serde_json::json;

    fn doc(secret: &str) -> KeyDocument {
        let settings = KeySettings {
            platform: "linux/amd64".into(),
            layer: LayerSettings::new(Compression::gzip(), Some(7)),
        };
        KeyDocument::new(
            &settings,
            Parent::Scratch,
            &json!({ "op": { "run": { "argv": ["sh", "-c", secret], "workdir": "/" } } }),
        )
        .unwrap()
    }

    #[test]
    fn specs() {
        let e = LocalExport::parse("type=local,dest=/x,mode=max,mounts=true").unwrap();
        assert_eq!(
            e,
            LocalExport {
                dest: "/x".into(),
                mode: ExportMode::Max,
                mounts: true
            }
        );
        assert_eq!(
            LocalExport::parse("type=local,dest=d").unwrap().mode,
            ExportMode::Min
        );
        assert_eq!(
            LocalImport::parse("type=local,src=/y").unwrap().src,
            PathBuf::from("/y")
        );
        for (bad, says) in [
            ("type=local", "dest=DIR is missing"),
            ("type=local,dest=d,mode=all", "min or max"),
            ("type=local,dest=d,colour=red", "unknown option \"colour\""),
            ("type=s3,dest=d", "unknown type \"s3\""),
            ("type=registry,ref=r/x:cache", "not supported yet"),
            ("user/app:cache", "not supported yet"),
            ("dest=d", "type= is missing"),
        ] {
            let e = LocalExport::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says) && e.contains("--cache-to"), "{bad}: {e}");
        }
        let e = LocalImport::parse("type=local,dest=d")
            .unwrap_err()
            .to_string();
        assert!(e.contains("src=DIR is missing"), "{e}");
    }

    #[test]
    fn redaction_keeps_structure_and_drops_values() {
        let a = doc("echo plaintext-marker");
        let b = doc("echo other");
        let (ra, rb) = (redact(&a).unwrap(), redact(&b).unwrap());
        let text = ra.to_string();
        assert!(
            !text.contains("plaintext-marker") && !text.contains("linux/amd64"),
            "{text}"
        );
        assert_eq!(ra["step"]["op"]["run"]["argv"].as_array().unwrap().len(), 3);
        assert_eq!(
            ra["step"]["op"]["run"]["argv"][0],
            rb["step"]["op"]["run"]["argv"][0]
        );
        assert_ne!(
            ra["step"]["op"]["run"]["argv"][2],
            rb["step"]["op"]["run"]["argv"][2]
        );
        // Numbers and strings of the same text differ.
        assert_ne!(
            ra["layer"]["source_date_epoch"],
            json!(format!("sha256:{}", hex::encode(Sha256::digest("\"7\""))))
        );
        // A key that is not a plain field name is digested too.
        let mut c = a.clone();
        c.inputs = json!({ "files": { "SECRET_NAME.txt": 1 } });
        assert!(!redact(&c).unwrap().to_string().contains("SECRET_NAME"));
    }

    /// The shape the format promises (a registry would accept an index too, so only this test
    /// catches a regression to an index-shaped cache).
    #[test]
    fn layout_is_one_image_manifest_with_a_kiln_config() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("store")).unwrap();
        let blob = store
            .put_bytes(crate::layer::MEDIA_TYPE_LAYER_GZIP, b"layer bytes")
            .unwrap();
        let document = doc("echo plaintext-marker");
        let record = CacheRecord::new(
            document.clone(),
            CacheResult {
                layers: vec![blob.clone()],
                diff_ids: vec![DiffId::of(b"tar")],
                config: Value::Null,
                chain: None,
            },
            42,
        )
        .unwrap();
        let dir = t.path().join("cache");
        let mut w = LayoutWriter::create(&dir).unwrap();
        w.add_record(&store, &record).unwrap();
        let desc = w.finish().unwrap();

        let index: Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let ms = index["manifests"].as_array().unwrap();
        assert_eq!(ms.len(), 1);
        assert_eq!(
            ms[0]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(ms[0]["annotations"][REF_ANNOTATION], REF_NAME);
        let manifest: Value =
            serde_json::from_slice(&read_blob(&dir, desc.digest()).unwrap()).unwrap();
        assert_eq!(
            manifest["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(manifest["schemaVersion"], 2);
        assert!(
            manifest.get("manifests").is_none(),
            "an index, not a manifest"
        );
        assert_eq!(manifest["config"]["mediaType"], CONFIG_MEDIA_TYPE);
        assert_eq!(manifest["layers"][0]["digest"], blob.digest().to_string());
        let config_digest: Digest = manifest["config"]["digest"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let config: Value =
            serde_json::from_slice(&read_blob(&dir, &config_digest).unwrap()).unwrap();
        assert_eq!(
            config,
            json!({
                "version": 1,
                "layers": [{ "blob": blob.digest().to_string(), "diffID": DiffId::of(b"tar").to_string() }],
                "records": [{
                    "key": record.key.to_string(),
                    "document": redact(&document).unwrap(),
                    "layers": [0],
                    "created": 42,
                }],
            })
        );
        assert!(
            !fs::read_to_string(dir.join("index.json"))
                .unwrap()
                .contains("plaintext")
        );

        // Read back: a hit by key, its blob fetched into another store.
        let imported = Imported::open(&dir).unwrap();
        let result = imported.result(&record.key).unwrap();
        assert_eq!(result.layers, record.result.layers);
        assert_eq!(result.diff_ids, record.result.diff_ids);
        assert!(imported.result(&CacheKey::of(b"other")).is_none());
        let other = Store::open(&t.path().join("other")).unwrap();
        imported.fetch(&other, &result).unwrap();
        assert_eq!(other.read_blob(blob.digest()).unwrap(), b"layer bytes");

        // Written again: index.json keeps entries kiln did not make, and names one cache.
        let mut index = index.clone();
        index["manifests"].as_array_mut().unwrap().push(json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", "a".repeat(64)), "size": 1,
            "annotations": { REF_ANNOTATION: "someone-else" }
        }));
        fs::write(dir.join("index.json"), index.to_string()).unwrap();
        let mut w = LayoutWriter::create(&dir).unwrap();
        w.add_record(&store, &record).unwrap();
        w.finish().unwrap();
        let index: Value =
            serde_json::from_slice(&fs::read(dir.join("index.json")).unwrap()).unwrap();
        let names: Vec<&str> = index["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["annotations"][REF_ANNOTATION].as_str().unwrap())
            .collect();
        assert_eq!(names, ["someone-else", REF_NAME]);
        // No temp file stays.
        assert!(fs::read_dir(&dir).unwrap().all(|e| {
            !e.unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(TMP_PREFIX)
        }));
    }

    #[test]
    fn a_directory_that_is_not_a_cache_is_refused() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            Imported::open(t.path()),
            Err(ExchangeError::Io { .. })
        ));
        fs::write(t.path().join("index.json"), "{}").unwrap();
        let e = Imported::open(t.path()).unwrap_err().to_string();
        assert!(e.contains("is not a kiln cache"), "{e}");
    }
}
