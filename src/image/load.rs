//! `kiln load` (a docker-archive or an OCI archive into the store) and `kiln import` (a rootfs
//! tar as a one-layer image).
//!
//! Loading reads the archive once, as a stream (it may itself be gzip- or zstd-compressed, and
//! may come from a pipe): files over 1 MiB go straight into the store as blobs, hashed on the
//! way (and, for possible layers, decompressed and hashed again for their diffID); smaller
//! files are kept in memory until `manifest.json` / `index.json` say what they are.
//!
//! - **docker-archive** (has `manifest.json`, as `docker save` and `podman save` write it,
//!   old and new layouts alike): the config blob is stored byte for byte (so the image ID stays
//!   the same), each layer is checked against the config's diff_ids and stored as it is: an
//!   uncompressed tar keeps `application/vnd.oci.image.layer.v1.tar` (its digest is its diffID;
//!   no re-compression cost, no loss) unless [`LoadOptions::compression`] asks for compression, a
//!   gzip or zstd layer keeps its bytes and gets the matching OCI media type. An OCI manifest is
//!   written for it and every `RepoTags` name is tagged.
//! - **OCI archive** (has `index.json`): blobs are checked against their names; OCI manifests are
//!   stored as they are, Docker schema 2 manifests are converted to OCI ones (config bytes
//!   unchanged). An index entry that is itself an index (multi-platform) loads the manifest for
//!   [`LoadOptions::platform`] (default: the host). Names come from `io.containerd.image.name`,
//!   else from `org.opencontainers.image.ref.name` when that is a full name (`busybox:1.36`,
//!   `docker.io/library/busybox:latest`). A bare `ref.name` such as `latest` (BuildKit writes
//!   the tag alone) names no repository: like containerd, kiln loads that image untagged.
//!
//! Blobs written by a load that fails half-way are left unreferenced, for `prune`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, ImageManifest, MediaType};

use super::compress::{self, Detected, DiffHasher};
use super::config::{History, ImageConfig, format_rfc3339, now_unix};
use super::reference::ImageRef;
use super::store::{MAX_JSON, Platform, Store, StoredImage, manifest_media_type};
use super::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ImageError, MEDIA_TYPE_CONFIG,
    MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_INDEX,
    MEDIA_TYPE_MANIFEST, digest_of, parse_ref,
};
use crate::layer::{Compression, DiffId};
// Archive paths: no leading `./` or `/`, no `.`, `..` applied; `None` for the root.
use crate::pathclean::clean_relative as clean;

/// Files up to this size are kept in memory while an archive is read.
const IN_MEMORY: u64 = 1 << 20;

/// How to load an archive.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Compress uncompressed layers of docker-archives on the way in (`None`: store them as
    /// uncompressed tars).
    pub compression: Option<Compression>,
    /// For OCI archives whose entries are indexes: the platform to load (`None`: the host's).
    pub platform: Option<Platform>,
}

/// One image loaded.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// The names it was tagged with (empty: loaded untagged, reachable by ID until a prune).
    pub names: Vec<ImageRef>,
    /// Its manifest in the store.
    pub manifest: Descriptor,
    /// Its image ID (config digest).
    pub id: Digest,
}

/// A file of the archive.
enum Ingested {
    Memory(Vec<u8>),
    Blob {
        digest: Digest,
        size: u64,
        detected: Detected,
        /// `None` when the content is not a valid tar stream compression.
        diff_id: Option<DiffId>,
    },
}

/// Loads the archive at `path` (`-` is not special: pass stdin to [`load`]).
pub fn load_file(
    store: &Store,
    path: &Path,
    opts: &LoadOptions,
) -> Result<Vec<LoadedImage>, ImageError> {
    let f = File::open(path).map_err(|e| ImageError::io("opening", path, e))?;
    load(
        store,
        io::BufReader::with_capacity(256 * 1024, f),
        path,
        opts,
    )
}

/// Loads a docker-archive or OCI archive read from `reader`; `source` names it in errors.
pub fn load<R: Read>(
    store: &Store,
    reader: R,
    source: &Path,
    opts: &LoadOptions,
) -> Result<Vec<LoadedImage>, ImageError> {
    let bad = |reason: String| ImageError::archive(source, reason);
    let (stream, _) =
        compress::decompressing_reader(reader).map_err(|e| ImageError::io("reading", source, e))?;
    let mut archive = tar::Archive::new(stream);
    let mut files: HashMap<String, Ingested> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let entries = archive
        .entries()
        .map_err(|e| ImageError::io("reading archive", source, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| ImageError::io("reading archive", source, e))?;
        let raw = entry.path_bytes().into_owned();
        let Some(path) = clean(&String::from_utf8_lossy(&raw)) else {
            continue;
        };
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let Some(target) = entry
                .link_name()
                .map_err(|e| ImageError::io("reading archive", source, e))?
            else {
                continue;
            };
            let target = target.to_string_lossy().into_owned();
            let resolved = if kind.is_symlink() && !target.starts_with('/') {
                let parent = Path::new(&path).parent().unwrap_or(Path::new(""));
                clean(&parent.join(&target).to_string_lossy())
            } else {
                clean(&target)
            };
            if let Some(r) = resolved {
                links.insert(path, r);
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let size = entry.size();
        let item = if size <= IN_MEMORY {
            let mut buf = Vec::with_capacity(size as usize);
            entry
                .read_to_end(&mut buf)
                .map_err(|e| ImageError::io(format!("reading {path} from"), source, e))?;
            Ingested::Memory(buf)
        } else {
            let mut blob = store.blob_writer()?;
            // `None` once the content turned out not to be a valid (compressed) stream: then it
            // is simply not a layer.
            let mut diff = Some(DiffHasher::new());
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = match entry.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(ImageError::io(format!("reading {path} from"), source, e));
                    }
                };
                blob.write_all(&buf[..n])
                    .map_err(|e| ImageError::io("writing blob", store.tmp_dir(), e))?;
                if let Some(d) = &mut diff
                    && d.write_all(&buf[..n]).is_err()
                {
                    diff = None;
                }
            }
            let desc = blob.finish("application/octet-stream")?;
            let (detected, diff_id) = match diff.map(DiffHasher::finish) {
                Some(Ok((d, id, _))) => (d, Some(id)),
                _ => (Detected::None, None),
            };
            Ingested::Blob {
                digest: desc.digest().clone(),
                size: desc.size(),
                detected,
                diff_id,
            }
        };
        files.insert(path, item);
    }

    let ar = Archive {
        store,
        source,
        files,
        links,
    };
    if ar.get("manifest.json").is_some() {
        ar.load_docker(opts)
    } else if ar.get("index.json").is_some() {
        ar.load_oci(opts)
    } else {
        Err(bad(
            "neither a docker-archive (no manifest.json) nor an OCI archive (no index.json)"
                .to_string(),
        ))
    }
}

struct Archive<'a> {
    store: &'a Store,
    source: &'a Path,
    files: HashMap<String, Ingested>,
    links: HashMap<String, String>,
}

#[derive(serde::Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

impl Archive<'_> {
    fn bad(&self, reason: impl Into<String>) -> ImageError {
        ImageError::archive(self.source, reason)
    }

    fn get(&self, path: &str) -> Option<&Ingested> {
        let mut p = clean(path)?;
        for _ in 0..32 {
            if let Some(f) = self.files.get(&p) {
                return Some(f);
            }
            p = self.links.get(&p)?.clone();
        }
        None
    }

    fn need(&self, path: &str) -> Result<&Ingested, ImageError> {
        self.get(path)
            .ok_or_else(|| self.bad(format!("{path} is listed but not in the archive")))
    }

    /// The bytes of a (small) file.
    fn bytes(&self, path: &str) -> Result<Vec<u8>, ImageError> {
        match self.need(path)? {
            Ingested::Memory(b) => Ok(b.clone()),
            Ingested::Blob { digest, size, .. } => {
                if *size > MAX_JSON {
                    return Err(self.bad(format!("{path} is too large ({size} bytes)")));
                }
                self.store.read_blob(digest)
            }
        }
    }

    /// Stores a file as a blob with this media type (if it is not already).
    fn store_file(&self, path: &str, media_type: &str) -> Result<Descriptor, ImageError> {
        match self.need(path)? {
            Ingested::Memory(b) => self.store.put_bytes(media_type, b),
            Ingested::Blob { digest, size, .. } => Ok(Descriptor::new(
                MediaType::from(media_type),
                *size,
                digest.clone(),
            )),
        }
    }

    /// Compression and diffID of a file.
    fn diff_of(&self, path: &str) -> Result<(Detected, DiffId), ImageError> {
        match self.need(path)? {
            Ingested::Memory(b) => {
                let mut h = DiffHasher::new();
                h.write_all(b)
                    .and_then(|_| h.finish())
                    .map(|(d, id, _)| (d, id))
                    .map_err(|e| self.bad(format!("{path}: not a valid layer: {e}")))
            }
            Ingested::Blob {
                detected, diff_id, ..
            } => diff_id.map(|id| (*detected, id)).ok_or_else(|| {
                self.bad(format!("{path}: not a valid layer (corrupt compression)"))
            }),
        }
    }

    fn load_docker(&self, opts: &LoadOptions) -> Result<Vec<LoadedImage>, ImageError> {
        let bytes = self.bytes("manifest.json")?;
        let entries: Vec<DockerManifestEntry> = serde_json::from_slice(&bytes).map_err(|e| {
            ImageError::json(format!("manifest.json in {}", self.source.display()), e)
        })?;
        if entries.is_empty() {
            return Err(self.bad("manifest.json lists no image"));
        }
        let mut loaded = Vec::new();
        for entry in entries {
            let cbytes = self.bytes(&entry.config)?;
            let config = ImageConfig::from_slice(&cbytes).map_err(|e| {
                ImageError::json(
                    format!("image config {} in {}", entry.config, self.source.display()),
                    e,
                )
            })?;
            let cdigest = digest_of(&cbytes);
            if let Some(named) = hex_in_name(&entry.config)
                && named != cdigest.digest()
            {
                return Err(ImageError::DigestMismatch {
                    what: format!("{} in {}", entry.config, self.source.display()),
                    expected: format!("sha256:{named}"),
                    actual: cdigest.to_string(),
                });
            }
            if config.rootfs.diff_ids.len() != entry.layers.len() {
                return Err(self.bad(format!(
                    "{} lists {} diff_ids but manifest.json lists {} layers",
                    entry.config,
                    config.rootfs.diff_ids.len(),
                    entry.layers.len()
                )));
            }
            let mut layers = Vec::new();
            for (path, want) in entry.layers.iter().zip(&config.rootfs.diff_ids) {
                let (det, diff) = self.diff_of(path)?;
                if &diff != want {
                    return Err(ImageError::DigestMismatch {
                        what: format!("layer {path} in {}", self.source.display()),
                        expected: want.to_string(),
                        actual: diff.to_string(),
                    });
                }
                let desc = self.store_file(path, det.media_type())?;
                let desc = match (det, opts.compression) {
                    (Detected::None, Some(c)) if c != Compression::Uncompressed => {
                        let src = self.store.open_blob(desc.digest())?;
                        let (w, d) = self.store.put_layer_tar(src, c)?;
                        if &w.diff_id != want {
                            return Err(ImageError::DigestMismatch {
                                what: format!("layer {path} in {}", self.source.display()),
                                expected: want.to_string(),
                                actual: w.diff_id.to_string(),
                            });
                        }
                        d
                    }
                    _ => desc,
                };
                layers.push(desc);
            }
            let cdesc = self.store.put_bytes(MEDIA_TYPE_CONFIG, &cbytes)?;
            let manifest = self.store.write_manifest(
                cdesc.clone(),
                &layers,
                Some(Platform::of_config(&config)),
            )?;
            let mut names = Vec::new();
            for t in entry.repo_tags.unwrap_or_default() {
                let name = parse_ref(&t)?;
                self.store.tag(&name, &manifest)?;
                names.push(name);
            }
            loaded.push(LoadedImage {
                names,
                manifest,
                id: cdesc.digest().clone(),
            });
        }
        Ok(loaded)
    }

    fn load_oci(&self, opts: &LoadOptions) -> Result<Vec<LoadedImage>, ImageError> {
        if let Some(Ingested::Memory(b)) = self.get("oci-layout") {
            let v: serde_json::Value = serde_json::from_slice(b).map_err(|e| {
                ImageError::json(format!("oci-layout in {}", self.source.display()), e)
            })?;
            if v.get("imageLayoutVersion").and_then(|v| v.as_str()) != Some("1.0.0") {
                return Err(self.bad(format!("unsupported oci-layout {v}")));
            }
        }
        let bytes = self.bytes("index.json")?;
        let index: oci_spec::image::ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::json(format!("index.json in {}", self.source.display()), e))?;
        let platform = opts.platform.clone().unwrap_or_else(Platform::host);
        // Several entries may name the same manifest: load it once, with all its names.
        let mut by_manifest: BTreeMap<String, LoadedImage> = BTreeMap::new();
        let mut order = Vec::new();
        for entry in index.manifests() {
            let manifest = self.load_oci_entry(entry, &platform, 0)?;
            let key = manifest.digest().to_string();
            let id = {
                let img = self.store.load_image(&manifest, None)?;
                img.id().clone()
            };
            let li = by_manifest.entry(key.clone()).or_insert_with(|| {
                order.push(key.clone());
                LoadedImage {
                    names: Vec::new(),
                    manifest: manifest.clone(),
                    id,
                }
            });
            if let Some(name) = entry_name(entry)? {
                self.store.tag(&name, &manifest)?;
                if !li.names.contains(&name) {
                    li.names.push(name);
                }
            }
        }
        Ok(order
            .into_iter()
            .filter_map(|k| by_manifest.remove(&k))
            .collect())
    }

    /// The blob of a descriptor, from the archive's `blobs/<alg>/<hex>`.
    fn blob_path(&self, d: &Digest) -> String {
        format!("blobs/{}/{}", d.algorithm(), d.digest())
    }

    /// Ensures the blob of `d` is in the store (checking its digest) and returns its bytes
    /// when it is small.
    fn ensure_blob(&self, d: &Descriptor) -> Result<(), ImageError> {
        let path = self.blob_path(d.digest());
        match self.need(&path)? {
            Ingested::Memory(b) => {
                let got = digest_of(b);
                if &got != d.digest() {
                    return Err(ImageError::DigestMismatch {
                        what: format!("{path} in {}", self.source.display()),
                        expected: d.digest().to_string(),
                        actual: got.to_string(),
                    });
                }
                self.store.put_bytes(d.media_type().as_ref(), b)?;
            }
            Ingested::Blob { digest, .. } => {
                if digest != d.digest() {
                    return Err(ImageError::DigestMismatch {
                        what: format!("{path} in {}", self.source.display()),
                        expected: d.digest().to_string(),
                        actual: digest.to_string(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Loads what an index entry points at; returns the (OCI) manifest descriptor in the store.
    fn load_oci_entry(
        &self,
        entry: &Descriptor,
        platform: &Platform,
        depth: u32,
    ) -> Result<Descriptor, ImageError> {
        if depth > 4 {
            return Err(self.bad("image indexes nested too deeply"));
        }
        let path = self.blob_path(entry.digest());
        let bytes = self.bytes(&path)?;
        if &digest_of(&bytes) != entry.digest() {
            return Err(ImageError::DigestMismatch {
                what: format!("{path} in {}", self.source.display()),
                expected: entry.digest().to_string(),
                actual: digest_of(&bytes).to_string(),
            });
        }
        let mt = manifest_media_type(&bytes).unwrap_or_else(|| entry.media_type().to_string());
        if mt == MEDIA_TYPE_INDEX || mt == MEDIA_TYPE_DOCKER_MANIFEST_LIST {
            let idx: oci_spec::image::ImageIndex = serde_json::from_slice(&bytes)
                .map_err(|e| ImageError::json(format!("{path} in {}", self.source.display()), e))?;
            let pick = idx
                .manifests()
                .iter()
                .find(|m| {
                    m.platform()
                        .as_ref()
                        .is_some_and(|p| platform.matches(&Platform::from_oci(p)))
                })
                .ok_or_else(|| {
                    self.bad(format!(
                        "the image index {} has no manifest for {platform}",
                        entry.digest()
                    ))
                })?;
            return self.load_oci_entry(pick, platform, depth + 1);
        }
        let manifest: ImageManifest = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::json(format!("{path} in {}", self.source.display()), e))?;
        self.ensure_blob(manifest.config())?;
        for l in manifest.layers() {
            self.ensure_blob(l)?;
        }
        let cbytes = self.store.read_blob(manifest.config().digest())?;
        let config = ImageConfig::from_slice(&cbytes).map_err(|e| {
            ImageError::json(
                format!(
                    "config {} in {}",
                    manifest.config().digest(),
                    self.source.display()
                ),
                e,
            )
        })?;
        let platform = Some(Platform::of_config(&config));
        if mt == MEDIA_TYPE_DOCKER_MANIFEST {
            // Convert: same config bytes and layer blobs, OCI media types.
            let c = manifest.config();
            let cdesc = Descriptor::new(
                MediaType::from(MEDIA_TYPE_CONFIG),
                c.size(),
                c.digest().clone(),
            );
            let layers: Vec<Descriptor> = manifest
                .layers()
                .iter()
                .map(|l| {
                    let det = Detected::from_media_type(l.media_type().as_ref())
                        .unwrap_or(Detected::Gzip);
                    let mut d = Descriptor::new(
                        MediaType::from(det.media_type()),
                        l.size(),
                        l.digest().clone(),
                    );
                    d.set_annotations(l.annotations().clone());
                    d
                })
                .collect();
            return self.store.write_manifest(cdesc, &layers, platform);
        }
        if mt != MEDIA_TYPE_MANIFEST {
            return Err(self.bad(format!("{path}: unsupported manifest media type \"{mt}\"")));
        }
        let mut d = self.store.put_bytes(MEDIA_TYPE_MANIFEST, &bytes)?;
        d.set_platform(platform.map(|p| p.to_oci()));
        Ok(d)
    }
}

/// The name an OCI index entry gives its image, if it gives a full one.
fn entry_name(entry: &Descriptor) -> Result<Option<ImageRef>, ImageError> {
    let ann = match entry.annotations() {
        Some(a) => a,
        None => return Ok(None),
    };
    if let Some(n) = ann.get(ANNOTATION_IMAGE_NAME) {
        return parse_ref(n).map(Some);
    }
    match ann.get(ANNOTATION_REF_NAME) {
        Some(n) if n.contains([':', '/', '@']) => parse_ref(n).map(Some),
        _ => Ok(None),
    }
}

/// The hex digest in `<hex>.json` or `blobs/sha256/<hex>`, if the name has one.
fn hex_in_name(path: &str) -> Option<&str> {
    let base = path.rsplit('/').next()?;
    let hex = base.strip_suffix(".json").unwrap_or(base);
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

/// How to import a rootfs tar.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Platform recorded in the config (default: the host).
    pub platform: Platform,
    /// Creation time, seconds since the epoch (default: now). Pass `SOURCE_DATE_EPOCH` here for
    /// a reproducible import.
    pub created: Option<i64>,
    /// Where the tar came from, for the history comment (`Imported from <source>`; default `-`).
    pub source: Option<String>,
    /// Layer compression (default gzip).
    pub compression: Compression,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            platform: Platform::host(),
            created: None,
            source: None,
            compression: Compression::gzip(),
        }
    }
}

/// `kiln import`: makes a one-layer image from a rootfs tar (plain, gzip or zstd: detected), like
/// `docker import`, and tags it `name`. The tar's bytes are the layer (its diffID is the sha256
/// of the uncompressed tar as given).
pub fn import<R: Read>(
    store: &Store,
    rootfs: R,
    name: &ImageRef,
    opts: &ImportOptions,
) -> Result<StoredImage, ImageError> {
    let source = opts.source.clone().unwrap_or_else(|| "-".to_string());
    let (tar, _) = compress::decompressing_reader(rootfs)
        .map_err(|e| ImageError::io("reading", PathBuf::from(&source), e))?;
    let mut checked = TarCheck::new(tar);
    let (written, layer) = store.put_layer_tar(&mut checked, opts.compression)?;
    if let Some(reason) = checked.problem {
        return Err(ImageError::archive(source, reason));
    }
    let p = &opts.platform;
    let mut config = ImageConfig::new(&p.os, &p.architecture, p.variant.as_deref());
    let created = format_rfc3339(opts.created.unwrap_or_else(now_unix));
    config.created = Some(created.clone());
    config.push_layer(
        written.diff_id,
        History {
            created: Some(created),
            comment: format!("Imported from {source}"),
            ..History::default()
        },
    );
    let manifest = store.write_image(&config, &[layer])?;
    store.tag(name, &manifest)?;
    store.load_image(&manifest, Some(name.clone()))
}

/// Passes a stream through, checking that its first block is a tar header (or the zero block of
/// an empty archive).
struct TarCheck<R> {
    inner: R,
    head: Vec<u8>,
    problem: Option<String>,
}

impl<R> TarCheck<R> {
    fn new(inner: R) -> Self {
        TarCheck {
            inner,
            head: Vec::with_capacity(512),
            problem: None,
        }
    }

    fn check(&mut self) {
        let h = &self.head;
        if h.is_empty() {
            self.problem = Some("empty input: not a tar archive".to_string());
            return;
        }
        if h.len() < 512 {
            self.problem = Some("not a tar archive (shorter than one block)".to_string());
            return;
        }
        if h.iter().all(|&b| b == 0) {
            return;
        }
        let stored = std::str::from_utf8(&h[148..156])
            .ok()
            .map(|s| s.trim_matches(|c: char| c == '\0' || c == ' '))
            .and_then(|s| u32::from_str_radix(s, 8).ok());
        let sum: u32 = h
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u32::from(b)
                }
            })
            .sum();
        if stored != Some(sum) {
            self.problem = Some("not a tar archive (bad header checksum)".to_string());
        }
    }
}

impl<R: Read> Read for TarCheck<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.head.len() < 512 {
            let take = (512 - self.head.len()).min(n);
            self.head.extend_from_slice(&buf[..take]);
            if self.head.len() == 512 || n == 0 {
                self.check();
            }
        }
        if n == 0 && self.head.len() < 512 && self.problem.is_none() {
            self.check();
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::export::{
        DockerArchiveImage, OciExportOptions, write_docker_archive, write_oci_archive,
    };
    use crate::layer::{LayerEntry, WriteOptions};

    fn raw_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        let entries = files
            .iter()
            .map(|(p, c)| LayerEntry::file(*p, c.to_vec(), 0o644))
            .collect();
        let opts = WriteOptions {
            compression: Compression::Uncompressed,
            ..WriteOptions::default()
        };
        crate::layer::write_layer(entries, &opts, &mut out).unwrap();
        out
    }

    fn import_one(store: &Store, name: &str, content: &[u8]) -> StoredImage {
        let tar = raw_tar(&[("etc/hello", content)]);
        import(
            store,
            &tar[..],
            &parse_ref(name).unwrap(),
            &ImportOptions {
                created: Some(0),
                ..ImportOptions::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn import_makes_a_one_layer_gzip_image() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let tar = raw_tar(&[("etc/hello", b"hi\n")]);
        let img = import_one(&s, "base:1", b"hi\n");
        assert_eq!(img.layers().len(), 1);
        assert_eq!(
            img.layers()[0].media_type().to_string(),
            crate::layer::MEDIA_TYPE_LAYER_GZIP
        );
        assert_eq!(img.config.rootfs.diff_ids, [DiffId::of(&tar)]);
        assert_eq!(img.config.history.len(), 1);
        assert_eq!(img.config.history[0].comment, "Imported from -");
        assert_eq!(img.config.created.as_deref(), Some("1970-01-01T00:00:00Z"));
        assert_eq!(img.config.os, "linux");
        // Deterministic: the same input gives the same image.
        let again = import_one(&s, "base:2", b"hi\n");
        assert_eq!(again.digest(), img.digest());
        // zstd and gzip inputs give the same diffID.
        for c in [Compression::zstd(), Compression::gzip()] {
            let mut z = Vec::new();
            compress::compress_tar(&tar[..], c, &mut z).unwrap();
            let i = import(
                &s,
                &z[..],
                &parse_ref("base:z").unwrap(),
                &ImportOptions {
                    created: Some(0),
                    ..ImportOptions::default()
                },
            )
            .unwrap();
            assert_eq!(i.id(), img.id());
        }
        // Not a tar.
        let e = import(
            &s,
            &b"hello, world"[..],
            &parse_ref("bad").unwrap(),
            &ImportOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("not a tar archive"), "{e}");
        assert!(s.resolve("bad").is_err());
    }

    #[test]
    fn docker_archive_round_trip_keeps_the_image_id() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let img = import_one(&s, "localhost:5000/x/app:v1", &vec![7u8; 3 << 20]);
        let mut tarball = Vec::new();
        write_docker_archive(
            &s,
            &[DockerArchiveImage {
                image: &img,
                names: vec![img.name.clone().unwrap(), parse_ref("app2").unwrap()],
            }],
            &mut tarball,
        )
        .unwrap();
        // Deterministic.
        let mut again = Vec::new();
        write_docker_archive(
            &s,
            &[DockerArchiveImage {
                image: &img,
                names: vec![img.name.clone().unwrap(), parse_ref("app2").unwrap()],
            }],
            &mut again,
        )
        .unwrap();
        assert_eq!(tarball, again);

        for compression in [None, Some(Compression::gzip())] {
            let dir2 = tempfile::tempdir().unwrap();
            let s2 = Store::open(dir2.path()).unwrap();
            let loaded = load(
                &s2,
                &tarball[..],
                Path::new("x.tar"),
                &LoadOptions {
                    compression,
                    ..LoadOptions::default()
                },
            )
            .unwrap();
            assert_eq!(loaded.len(), 1);
            assert_eq!(&loaded[0].id, img.id());
            let names: Vec<String> = loaded[0].names.iter().map(|n| n.to_string()).collect();
            assert_eq!(
                names,
                ["localhost:5000/x/app:v1", "docker.io/library/app2:latest"]
            );
            let back = s2.resolve("localhost:5000/x/app:v1").unwrap();
            assert_eq!(back.id(), img.id());
            let want = match compression {
                None => crate::layer::MEDIA_TYPE_LAYER_TAR,
                Some(_) => crate::layer::MEDIA_TYPE_LAYER_GZIP,
            };
            assert_eq!(back.layers()[0].media_type().to_string(), want);
        }
    }

    #[test]
    fn oci_archive_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let img = import_one(&s, "busybox:1.36", b"small");
        let mut tarball = Vec::new();
        let names = vec![img.name.clone().unwrap()];
        write_oci_archive(&s, &img, &names, &mut tarball, &OciExportOptions::default()).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = Store::open(dir2.path()).unwrap();
        let loaded = load(
            &s2,
            &tarball[..],
            Path::new("x.tar"),
            &LoadOptions::default(),
        )
        .unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].manifest.digest(), img.digest());
        assert_eq!(loaded[0].names, names);
        assert_eq!(s2.resolve("busybox:1.36").unwrap().digest(), img.digest());

        // Untagged export: loaded untagged, found by ID.
        let mut t2 = Vec::new();
        write_oci_archive(&s, &img, &[], &mut t2, &OciExportOptions::default()).unwrap();
        let dir3 = tempfile::tempdir().unwrap();
        let s3 = Store::open(dir3.path()).unwrap();
        let loaded = load(&s3, &t2[..], Path::new("y.tar"), &LoadOptions::default()).unwrap();
        assert!(loaded[0].names.is_empty());
        assert_eq!(&loaded[0].id, img.id());
        let by_digest = s3.resolve(img.digest().as_ref()).unwrap();
        assert_eq!(by_digest.id(), img.id());
        assert!(by_digest.name.is_none());
    }

    #[test]
    fn corrupt_and_foreign_archives_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let e = load(
            &s,
            &raw_tar(&[("hello", b"x")])[..],
            Path::new("f.tar"),
            &LoadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("f.tar: neither a docker-archive"), "{e}");

        let img = import_one(&s, "a", b"payload");
        let mut tarball = Vec::new();
        write_docker_archive(
            &s,
            &[DockerArchiveImage {
                image: &img,
                names: vec![parse_ref("a").unwrap()],
            }],
            &mut tarball,
        )
        .unwrap();
        // Flip a byte of the layer's content ("payload" → "paYload").
        let pos = tarball.windows(7).position(|w| w == b"payload").unwrap();
        tarball[pos + 2] = b'Y';
        let dir2 = tempfile::tempdir().unwrap();
        let s2 = Store::open(dir2.path()).unwrap();
        let e = load(
            &s2,
            &tarball[..],
            Path::new("c.tar"),
            &LoadOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("digest mismatch") && e.contains("c.tar"), "{e}");
        assert!(s2.tags().unwrap().is_empty());
    }

    /// An archive in the old `docker save` layout: `<id>/layer.tar` files, a repeated layer as a
    /// symlink to the first, a gzip layer, the whole archive gzip-compressed (`docker save |
    /// gzip`), `./`-prefixed names.
    #[test]
    fn legacy_docker_save_layout_with_links_and_gzip() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let l1 = raw_tar(&[("a", b"first")]);
        let l2 = raw_tar(&[("b", b"second")]);
        let mut l2gz = Vec::new();
        compress::compress_tar(&l2[..], Compression::gzip(), &mut l2gz).unwrap();
        let mut config = ImageConfig::new("linux", "arm64", Some("v8"));
        for l in [&l1, &l2, &l1] {
            config.push_layer(DiffId::of(l), History::default());
        }
        let cbytes = br#"{"architecture":"arm64","os":"linux","variant":"v8","rootfs":{"type":"layers","diff_ids":["DIFFS"]},"docker_version":"1.13"}"#;
        let diffs: Vec<String> = config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| d.to_string())
            .collect();
        let cbytes = String::from_utf8(cbytes.to_vec())
            .unwrap()
            .replace("\"DIFFS\"", &format!("\"{}\"", diffs.join("\",\"")));
        let chex = digest_of(cbytes.as_bytes()).digest().to_string();
        let manifest = format!(
            r#"[{{"Config":"{chex}.json","RepoTags":["legacy:1","localhost:5000/legacy:2"],"Layers":["aaa/layer.tar","bbb/layer.tar","ccc/layer.tar"]}}]"#
        );

        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        };
        add("./aaa/layer.tar", &l1);
        add("./bbb/layer.tar", &l2gz);
        add(&format!("./{chex}.json"), cbytes.as_bytes());
        add("./manifest.json", manifest.as_bytes());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_cksum();
        b.append_link(&mut h, "ccc/layer.tar", "../aaa/layer.tar")
            .unwrap();
        let plain = b.into_inner().unwrap();
        let mut gz = Vec::new();
        compress::compress_tar(&plain[..], Compression::gzip(), &mut gz).unwrap();

        let loaded = load(
            &s,
            &gz[..],
            Path::new("legacy.tar.gz"),
            &LoadOptions::default(),
        )
        .unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].id.digest(), chex, "config bytes kept");
        let img = s.resolve("localhost:5000/legacy:2").unwrap();
        assert_eq!(s.resolve("legacy:1").unwrap().digest(), img.digest());
        let types: Vec<String> = img
            .layers()
            .iter()
            .map(|l| l.media_type().to_string())
            .collect();
        assert_eq!(
            types,
            [
                crate::layer::MEDIA_TYPE_LAYER_TAR,
                crate::layer::MEDIA_TYPE_LAYER_GZIP,
                crate::layer::MEDIA_TYPE_LAYER_TAR
            ]
        );
        assert_eq!(img.layers()[0].digest(), img.layers()[2].digest());
        assert_eq!(img.platform().to_string(), "linux/arm64/v8");
        assert_eq!(
            img.config.extra["docker_version"],
            serde_json::Value::from("1.13")
        );
    }
}
