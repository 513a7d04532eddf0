//! The local image store: an OCI image layout at the store root, with kiln's own files beside it.
//!
//! ```text
//! ROOT/oci-layout             {"imageLayoutVersion":"1.0.0"}
//! ROOT/index.json             one manifest entry per tag; org.opencontainers.image.ref.name =
//!                             the full normalised name (docker.io/library/busybox:latest)
//! ROOT/blobs/sha256/<hex>     content-addressed blobs
//! ROOT/kiln/tmp/              blobs and index.json being written (ignored by OCI tools)
//! ROOT/kiln/index.lock        flock: serialises read-modify-write of index.json
//! ROOT/kiln/gc.lock           flock: shared by every open Store, exclusive for prune
//! ```
//!
//! Every file is written to a temporary file in `kiln/tmp/`, fsynced, renamed into place, and its
//! directory fsynced, so a killed process leaves the layout valid (at worst with unreferenced
//! blobs and temp files, which [`Store::prune`] removes). A temp file is flocked by the process
//! writing it, which is how prune tells a live write from a dead one.
//!
//! Concurrency: updates of `index.json` hold `kiln/index.lock` exclusively; reads need no lock
//! (the file is replaced atomically). Every [`Store`] holds `kiln/gc.lock` shared for its
//! lifetime, and [`Store::prune`] needs it exclusively, so no process can lose a blob it has
//! written but not yet tagged to another process's prune. Within one process, do not prune
//! while other threads write images they have not tagged yet.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use oci_spec::image::{Arch, Descriptor, Digest, ImageIndex, ImageManifest, MediaType, Os};
use sha2::{Digest as _, Sha256};

use super::compress;
use super::config::{ImageConfig, canonical_json};
use super::reference::ImageRef;
use super::{
    ANNOTATION_REF_NAME, ImageError, MEDIA_TYPE_CONFIG, MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_DOCKER_MANIFEST_LIST, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST, parse_ref,
    sha256_digest, sha256_hex,
};
use crate::layer::HashWriter;
use crate::layer::{Compression, LayerEntry, WriteOptions, WrittenLayer};

const OCI_LAYOUT: &str = "oci-layout";
const OCI_LAYOUT_CONTENT: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;
const INDEX_JSON: &str = "index.json";
/// Temp files without a lease token (an older kiln's) younger than this are left alone by prune
/// even when unlocked (the moment between creating a temp file and locking it).
const TEMP_GRACE: Duration = Duration::from_secs(5);
/// Largest JSON document (manifest, config, index) kiln reads into memory.
pub(crate) const MAX_JSON: u64 = 64 << 20;

pub use crate::platform::Platform;

/// The image side of [`Platform`]: its place in image configs and oci-spec descriptors.
impl Platform {
    /// The platform of an image config.
    pub fn of_config(c: &ImageConfig) -> Platform {
        Platform {
            os: c.os.clone(),
            architecture: c.architecture.clone(),
            variant: (!c.variant.is_empty()).then(|| c.variant.clone()),
        }
    }

    /// As an oci-spec platform (for descriptors).
    pub fn to_oci(&self) -> oci_spec::image::Platform {
        let mut p = oci_spec::image::Platform::default();
        p.set_os(Os::from(self.os.as_str()));
        p.set_architecture(Arch::from(self.architecture.as_str()));
        p.set_variant(self.variant.clone());
        p
    }

    /// From an oci-spec platform.
    pub fn from_oci(p: &oci_spec::image::Platform) -> Platform {
        Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        }
    }
}

/// An image in the store.
#[derive(Debug, Clone)]
pub struct StoredImage {
    /// The tag it was found by (`None` when found by digest or ID and untagged).
    pub name: Option<ImageRef>,
    /// The manifest's descriptor.
    pub manifest_descriptor: Descriptor,
    /// The manifest.
    pub manifest: ImageManifest,
    /// The config.
    pub config: ImageConfig,
    /// The config's descriptor (its digest is the image ID).
    pub config_descriptor: Descriptor,
}

impl StoredImage {
    /// The image ID, as Docker defines it: the config digest.
    pub fn id(&self) -> &Digest {
        self.config_descriptor.digest()
    }

    /// The manifest digest.
    pub fn digest(&self) -> &Digest {
        self.manifest_descriptor.digest()
    }

    /// The layer descriptors, base first.
    pub fn layers(&self) -> &[Descriptor] {
        self.manifest.layers()
    }

    /// Bytes of all blobs (manifest, config, layers as stored).
    pub fn size(&self) -> u64 {
        self.manifest_descriptor.size()
            + self.config_descriptor.size()
            + self.layers().iter().map(|l| l.size()).sum::<u64>()
    }

    /// The platform of its config.
    pub fn platform(&self) -> Platform {
        Platform::of_config(&self.config)
    }
}

/// What [`Store::prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Unreferenced blobs removed.
    pub blobs_removed: u64,
    /// Bytes of those blobs, plus stale temp files.
    pub bytes_freed: u64,
    /// Temp files and build directories left by killed processes, removed.
    pub temp_files_removed: u64,
}

/// The descriptor of a layer blob written by the layer module.
pub fn layer_descriptor(w: &WrittenLayer) -> Descriptor {
    Descriptor::new(
        MediaType::from(w.media_type),
        w.size,
        sha256_digest(w.digest.as_bytes()),
    )
}

/// The local store. See the module documentation.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    index_lock: PathBuf,
    gc_lock: File,
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A temp file in `kiln/tmp/`, flocked while open, removed on drop unless persisted.
pub(crate) struct TempFile {
    path: PathBuf,
    file: Option<File>,
}

impl TempFile {
    fn create(dir: &Path, prefix: &str) -> Result<TempFile, ImageError> {
        loop {
            let nanos = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            let name = format!(
                "{prefix}-{}-{nanos:x}-{}",
                std::process::id(),
                TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
            );
            let path = dir.join(name);
            match OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(file) => {
                    file.lock()
                        .map_err(|e| ImageError::io("locking temp file", &path, e))?;
                    return Ok(TempFile {
                        path,
                        file: Some(file),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(ImageError::io("creating temp file", &path, e)),
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("temp file is open")
    }

    fn take_file(&mut self) -> File {
        self.file.take().expect("temp file is open")
    }

    /// fsyncs the file, renames it to `dest` and fsyncs `dest`'s directory.
    fn persist(mut self, file: &File, dest: &Path) -> Result<(), ImageError> {
        file.sync_all()
            .map_err(|e| ImageError::io("syncing", &self.path, e))?;
        fs::rename(&self.path, dest).map_err(|e| ImageError::io("renaming into place", dest, e))?;
        self.path = PathBuf::new();
        sync_dir(dest.parent().unwrap_or(Path::new(".")))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ImageError::io("syncing directory", dir, e))
}

/// Writes a blob while hashing it; [`finish`](Self::finish) moves it into `blobs/sha256/`.
/// Dropped unfinished, the temp file is removed.
pub struct BlobWriter<'s> {
    store: &'s Store,
    tmp: TempFile,
    out: HashWriter<BufWriter<File>>,
}

impl Write for BlobWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.out.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl BlobWriter<'_> {
    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.out.count()
    }

    /// Commits the blob: fsync, rename to `blobs/sha256/<digest>`, fsync the directory.
    pub fn finish(self, media_type: &str) -> Result<Descriptor, ImageError> {
        self.finish_inner(media_type, None)
    }

    /// Like [`finish`](Self::finish), but refuses (and removes) the blob unless its digest is
    /// `expected`.
    pub fn finish_expecting(
        self,
        media_type: &str,
        expected: &Digest,
    ) -> Result<Descriptor, ImageError> {
        self.finish_inner(media_type, Some(expected))
    }

    fn finish_inner(
        mut self,
        media_type: &str,
        expected: Option<&Digest>,
    ) -> Result<Descriptor, ImageError> {
        let (hash, size, buf) = self.out.finish();
        let file = buf
            .into_inner()
            .map_err(|e| ImageError::io("writing", self.tmp.path(), e.into_error()))?;
        let digest = sha256_digest(&hash);
        if let Some(exp) = expected
            && exp != &digest
        {
            return Err(ImageError::DigestMismatch {
                what: "blob".to_string(),
                expected: exp.to_string(),
                actual: digest.to_string(),
            });
        }
        let _ = self.tmp.take_file();
        let dest = self.store.blobs.join(digest.digest());
        self.tmp.persist(&file, &dest)?;
        Ok(Descriptor::new(MediaType::from(media_type), size, digest))
    }
}

/// Reads a blob and checks its digest when the end is reached (an `InvalidData` error then if
/// it does not match).
pub struct BlobReader {
    file: io::BufReader<File>,
    hasher: Option<Sha256>,
    expected: Digest,
    path: PathBuf,
}

impl BlobReader {
    /// The blob's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Read for BlobReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if let Some(h) = &mut self.hasher {
            if n == 0 && !buf.is_empty() {
                let h = self.hasher.take().expect("hasher");
                let got = sha256_digest(&h.finalize().into());
                if got != self.expected {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "blob {} is corrupt: its content hashes to {got}",
                            self.expected
                        ),
                    ));
                }
            } else {
                h.update(&buf[..n]);
            }
        }
        Ok(n)
    }
}

/// The lock guard of `index.json` updates.
struct IndexLock(#[allow(dead_code)] File);

impl Store {
    /// Opens the store at `root`, creating the layout if needed, or validating an existing one.
    pub fn open(root: &Path) -> Result<Store, ImageError> {
        let blobs = root.join("blobs").join("sha256");
        let kiln = root.join("kiln");
        let tmp = kiln.join("tmp");
        for d in [&blobs, &tmp] {
            fs::create_dir_all(d).map_err(|e| ImageError::io("creating directory", d, e))?;
        }
        let gc_path = kiln.join("gc.lock");
        let gc_lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&gc_path)
            .map_err(|e| ImageError::io("opening", &gc_path, e))?;
        gc_lock
            .lock_shared()
            .map_err(|e| ImageError::io("locking", &gc_path, e))?;
        let store = Store {
            root: root.to_path_buf(),
            blobs,
            tmp,
            index_lock: kiln.join("index.lock"),
            gc_lock,
        };
        store.init_layout()?;
        Ok(store)
    }

    fn init_layout(&self) -> Result<(), ImageError> {
        let layout = self.root.join(OCI_LAYOUT);
        let index = self.root.join(INDEX_JSON);
        if !layout.exists() || !index.exists() {
            let _g = self.lock_index()?;
            if !layout.exists() {
                self.write_atomic(&layout, OCI_LAYOUT_CONTENT)?;
            }
            if !index.exists() {
                self.write_index(&empty_index())?;
            }
        }
        let bytes = fs::read(&layout).map_err(|e| ImageError::io("reading", &layout, e))?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::json(layout.display().to_string(), e))?;
        match v.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some("1.0.0") => {}
            other => {
                return Err(ImageError::archive(
                    &layout,
                    format!("unsupported imageLayoutVersion {other:?} (kiln writes 1.0.0)"),
                ));
            }
        }
        self.read_index().map(|_| ())
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// kiln's temp directory inside the store (same file system as the blobs).
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// A temp file named `<prefix>-<lease token>-…`: once its writer is gone (its lease dead),
    /// the next sweep removes it at once, without waiting out [`TEMP_GRACE`].
    pub(crate) fn temp_file(&self, prefix: &str) -> Result<TempFile, ImageError> {
        let token = crate::lease::token(&self.root)
            .map_err(|e| ImageError::io("taking a lease in", &self.root, e))?;
        TempFile::create(&self.tmp, &format!("{prefix}-{token}"))
    }

    /// Writes `bytes` to `dest` atomically (temp file in `kiln/tmp`, fsync, rename, fsync dir).
    fn write_atomic(&self, dest: &Path, bytes: &[u8]) -> Result<(), ImageError> {
        let mut t = self.temp_file("file")?;
        t.file()
            .write_all(bytes)
            .map_err(|e| ImageError::io("writing", dest, e))?;
        let f = t.take_file();
        t.persist(&f, dest)
    }

    fn lock_index(&self) -> Result<IndexLock, ImageError> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&self.index_lock)
            .map_err(|e| ImageError::io("opening", &self.index_lock, e))?;
        f.lock()
            .map_err(|e| ImageError::io("locking", &self.index_lock, e))?;
        Ok(IndexLock(f))
    }

    // ---- blobs -------------------------------------------------------------------------------

    /// Starts writing a blob.
    pub fn blob_writer(&self) -> Result<BlobWriter<'_>, ImageError> {
        let mut tmp = self.temp_file("blob")?;
        let f = tmp
            .file()
            .try_clone()
            .map_err(|e| ImageError::io("opening", tmp.path(), e))?;
        Ok(BlobWriter {
            store: self,
            tmp,
            out: HashWriter::new(BufWriter::with_capacity(256 * 1024, f)),
        })
    }

    /// Stores `bytes` as a blob (unless it is already there) and returns its descriptor.
    pub fn put_bytes(&self, media_type: &str, bytes: &[u8]) -> Result<Descriptor, ImageError> {
        let digest = sha256_digest(&Sha256::digest(bytes).into());
        let path = self.blobs.join(digest.digest());
        if fs::metadata(&path).is_ok_and(|m| m.len() == bytes.len() as u64) {
            return Ok(Descriptor::new(
                MediaType::from(media_type),
                bytes.len() as u64,
                digest,
            ));
        }
        let mut w = self.blob_writer()?;
        w.write_all(bytes)
            .map_err(|e| ImageError::io("writing", w.tmp.path(), e))?;
        w.finish_expecting(media_type, &digest)
    }

    /// Whether the blob is in the store.
    pub fn has_blob(&self, digest: &Digest) -> bool {
        sha256_hex(digest).is_ok_and(|h| self.blobs.join(h).is_file())
    }

    /// The blob's path (whether or not it exists).
    pub fn blob_path(&self, digest: &Digest) -> Result<PathBuf, ImageError> {
        Ok(self.blobs.join(sha256_hex(digest)?))
    }

    /// Opens a blob; its digest is checked when it has been read to the end.
    pub fn open_blob(&self, digest: &Digest) -> Result<BlobReader, ImageError> {
        let path = self.blob_path(digest)?;
        let file = File::open(&path).map_err(|e| self.blob_open_error(digest, &path, e))?;
        Ok(BlobReader {
            file: io::BufReader::with_capacity(256 * 1024, file),
            hasher: Some(Sha256::new()),
            expected: digest.clone(),
            path,
        })
    }

    fn blob_open_error(&self, digest: &Digest, path: &Path, e: io::Error) -> ImageError {
        if e.kind() == io::ErrorKind::NotFound {
            ImageError::BlobMissing {
                digest: digest.to_string(),
                root: self.root.clone(),
            }
        } else {
            ImageError::io("opening blob", path, e)
        }
    }

    /// Reads a (small) blob whole and verifies its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, ImageError> {
        let path = self.blob_path(digest)?;
        let file = File::open(&path).map_err(|e| self.blob_open_error(digest, &path, e))?;
        let mut bytes = Vec::new();
        file.take(MAX_JSON + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| ImageError::io("reading blob", &path, e))?;
        if bytes.len() as u64 > MAX_JSON {
            return Err(ImageError::Invalid(format!(
                "blob {digest} is too large to read into memory"
            )));
        }
        let got = sha256_digest(&Sha256::digest(&bytes).into());
        if &got != digest {
            return Err(ImageError::DigestMismatch {
                what: format!("blob {}", path.display()),
                expected: digest.to_string(),
                actual: got.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Writes a layer from entries (see [`crate::layer::write_layer`]) straight into a blob.
    pub fn put_layer(
        &self,
        entries: Vec<LayerEntry>,
        opts: &WriteOptions,
    ) -> Result<(WrittenLayer, Descriptor), ImageError> {
        let mut w = self.blob_writer()?;
        let written = crate::layer::write_layer(entries, opts, &mut w)?;
        let desc = w.finish_expecting(
            written.media_type,
            &sha256_digest(written.digest.as_bytes()),
        )?;
        Ok((written, desc))
    }

    /// Stores a layer blob from a tar stream (plain, gzip or zstd: detected), compressed to
    /// `compression`, in one pass.
    pub fn put_layer_tar<R: Read>(
        &self,
        tar: R,
        compression: Compression,
    ) -> Result<(WrittenLayer, Descriptor), ImageError> {
        let mut w = self.blob_writer()?;
        let written = compress::recompress(tar, compression, &mut w)
            .map_err(|e| ImageError::io("compressing layer into", w.tmp.path(), e))?;
        let desc = w.finish_expecting(
            written.media_type,
            &sha256_digest(written.digest.as_bytes()),
        )?;
        Ok((written, desc))
    }

    // ---- index.json --------------------------------------------------------------------------

    /// Reads `index.json`.
    pub fn read_index(&self) -> Result<ImageIndex, ImageError> {
        let path = self.root.join(INDEX_JSON);
        let bytes = fs::read(&path).map_err(|e| ImageError::io("reading", &path, e))?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::json(path.display().to_string(), e))
    }

    fn write_index(&self, index: &ImageIndex) -> Result<(), ImageError> {
        let bytes = canonical_json(index).map_err(|e| ImageError::json("index.json", e))?;
        self.write_atomic(&self.root.join(INDEX_JSON), &bytes)
    }

    /// Points `name` (which must have a tag and no digest) at a manifest already in the store,
    /// replacing what the name pointed at. The entry carries the platform of the image.
    pub fn tag(&self, name: &ImageRef, manifest: &Descriptor) -> Result<(), ImageError> {
        if name.digest.is_some() || name.tag.is_none() {
            return Err(ImageError::Invalid(format!(
                "cannot tag \"{name}\": a name in the store needs a tag and no digest"
            )));
        }
        if !self.has_blob(manifest.digest()) {
            return Err(ImageError::BlobMissing {
                digest: manifest.digest().to_string(),
                root: self.root.clone(),
            });
        }
        let mut entry = Descriptor::new(
            manifest.media_type().clone(),
            manifest.size(),
            manifest.digest().clone(),
        );
        let platform = match manifest.platform() {
            Some(p) => Some(p.clone()),
            None => self
                .load_image(manifest, None)
                .ok()
                .map(|img| img.platform().to_oci()),
        };
        entry.set_platform(platform);
        let mut ann: HashMap<String, String> = manifest.annotations().clone().unwrap_or_default();
        ann.insert(ANNOTATION_REF_NAME.to_string(), name.to_string());
        entry.set_annotations(Some(ann));

        let full = name.to_string();
        let _g = self.lock_index()?;
        let mut index = self.read_index()?;
        let mut entries: Vec<Descriptor> = index
            .manifests()
            .iter()
            .filter(|d| ref_name(d) != Some(full.as_str()))
            .cloned()
            .collect();
        entries.push(entry);
        sort_entries(&mut entries);
        index.set_manifests(entries);
        self.write_index(&index)
    }

    /// Removes the tag `name`; returns the descriptor it pointed at.
    pub fn untag(&self, name: &ImageRef) -> Result<Descriptor, ImageError> {
        let full = name.to_string();
        let _g = self.lock_index()?;
        let mut index = self.read_index()?;
        let (gone, kept): (Vec<Descriptor>, Vec<Descriptor>) = index
            .manifests()
            .iter()
            .cloned()
            .partition(|d| ref_name(d) == Some(full.as_str()));
        let Some(first) = gone.into_iter().next() else {
            return Err(ImageError::NotFound(full));
        };
        index.set_manifests(kept);
        self.write_index(&index)?;
        Ok(first)
    }

    /// The tags in the store: (name, manifest descriptor), sorted by name. Entries whose
    /// `ref.name` is not a full normalised name (written by another tool) are skipped.
    pub fn tags(&self) -> Result<Vec<(ImageRef, Descriptor)>, ImageError> {
        let index = self.read_index()?;
        let mut out: Vec<(ImageRef, Descriptor)> = index
            .manifests()
            .iter()
            .filter_map(|d| {
                let n = ref_name(d)?;
                let r = ImageRef::parse(n).ok()?;
                (r.to_string() == n).then(|| (r, d.clone()))
            })
            .collect();
        out.sort_by_key(|a| a.0.to_string());
        Ok(out)
    }

    /// Every tagged image, sorted by name.
    pub fn list(&self) -> Result<Vec<StoredImage>, ImageError> {
        self.tags()?
            .into_iter()
            .map(|(name, d)| self.load_image(&d, Some(name)))
            .collect()
    }

    /// Reads the manifest and config a manifest descriptor points at.
    pub fn load_image(
        &self,
        manifest_descriptor: &Descriptor,
        name: Option<ImageRef>,
    ) -> Result<StoredImage, ImageError> {
        let what = || match &name {
            Some(n) => format!("manifest of \"{n}\""),
            None => format!("manifest {}", manifest_descriptor.digest()),
        };
        let bytes = self.read_blob(manifest_descriptor.digest())?;
        let mt = manifest_media_type(&bytes);
        if mt.as_deref() == Some(MEDIA_TYPE_INDEX)
            || mt.as_deref() == Some(MEDIA_TYPE_DOCKER_MANIFEST_LIST)
        {
            return Err(ImageError::Invalid(format!(
                "{} is an image index, not a single-platform image",
                what()
            )));
        }
        let manifest: ImageManifest =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::json(what(), e))?;
        let config_descriptor = manifest.config().clone();
        let cbytes = self.read_blob(config_descriptor.digest())?;
        let config = ImageConfig::from_slice(&cbytes)
            .map_err(|e| ImageError::json(format!("config {}", config_descriptor.digest()), e))?;
        let mut manifest_descriptor = manifest_descriptor.clone();
        if manifest_descriptor.platform().is_none() {
            manifest_descriptor.set_platform(Some(Platform::of_config(&config).to_oci()));
        }
        Ok(StoredImage {
            name,
            manifest_descriptor,
            manifest,
            config,
            config_descriptor,
        })
    }

    /// Finds an image by name (`busybox`, `docker.io/library/busybox:latest`), name with digest
    /// (`busybox@sha256:…`), manifest digest or image ID (`sha256:<hex>`, or 64 hex digits), or
    /// an unambiguous image-ID prefix of at least 4 hex digits (`3f57d940`), as Docker does.
    pub fn resolve(&self, s: &str) -> Result<StoredImage, ImageError> {
        let tags = self.tags()?;
        // A full digest: a manifest digest or an image ID.
        let hex_part = s.strip_prefix("sha256:").unwrap_or(s);
        let is_hex = !hex_part.is_empty()
            && hex_part
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if is_hex && hex_part.len() == 64 {
            let d: Digest = format!("sha256:{hex_part}")
                .parse()
                .map_err(|_| ImageError::NotFound(s.to_string()))?;
            if let Some((n, desc)) = tags.iter().find(|(_, desc)| desc.digest() == &d) {
                return self.load_image(desc, Some(n.clone()));
            }
            for (n, desc) in &tags {
                let img = self.load_image(desc, Some(n.clone()))?;
                if img.id() == &d {
                    return Ok(img);
                }
            }
            if self.has_blob(&d)
                && let Ok(img) = self.load_image(&manifest_desc(&d, self)?, None)
            {
                return Ok(img);
            }
            return Err(ImageError::NotFound(s.to_string()));
        }
        let parsed = ImageRef::parse(s);
        if let Ok(r) = &parsed {
            let found = match (&r.tag, &r.digest) {
                (_, Some(dg)) => {
                    let d: Digest = dg
                        .parse()
                        .map_err(|_| ImageError::NotFound(r.to_string()))?;
                    let repo = r.repository();
                    let tagged = tags.iter().find(|(n, desc)| {
                        desc.digest() == &d
                            && n.repository() == repo
                            && (r.tag.is_none() || n.tag == r.tag)
                    });
                    match tagged {
                        Some((n, desc)) => Some(self.load_image(desc, Some(n.clone()))?),
                        None if r.tag.is_none() && self.has_blob(&d) => {
                            Some(self.load_image(&manifest_desc(&d, self)?, None)?)
                        }
                        None => None,
                    }
                }
                (Some(_), None) => match tags.iter().find(|(n, _)| n == r) {
                    Some((n, desc)) => Some(self.load_image(desc, Some(n.clone()))?),
                    None => None,
                },
                (None, None) => None,
            };
            if let Some(img) = found {
                return Ok(img);
            }
        }
        // An image-ID prefix.
        if is_hex && hex_part.len() >= 4 {
            let mut matches: BTreeMap<String, StoredImage> = BTreeMap::new();
            for (n, desc) in &tags {
                let img = self.load_image(desc, Some(n.clone()))?;
                if img.id().digest().starts_with(hex_part) {
                    matches.entry(img.id().to_string()).or_insert(img);
                }
            }
            match matches.len() {
                0 => {}
                1 => return Ok(matches.into_values().next().expect("one match")),
                _ => {
                    return Err(ImageError::Ambiguous {
                        prefix: s.to_string(),
                        candidates: matches.into_keys().collect(),
                    });
                }
            }
        }
        match parsed {
            Ok(r) => Err(ImageError::NotFound(r.to_string())),
            Err(_) if is_hex => Err(ImageError::NotFound(s.to_string())),
            Err(_) => Err(parse_ref(s).expect_err("parse failed above")),
        }
    }

    /// Writes the config and an OCI manifest for it (both canonical JSON) and returns the
    /// manifest's descriptor (with the platform of the config). `layers` are descriptors of
    /// blobs already in the store, base first, one per `config.rootfs.diff_ids`.
    pub fn write_image(
        &self,
        config: &ImageConfig,
        layers: &[Descriptor],
    ) -> Result<Descriptor, ImageError> {
        if layers.len() != config.rootfs.diff_ids.len() {
            return Err(ImageError::Invalid(format!(
                "image config lists {} layer diff_ids but {} layers were given",
                config.rootfs.diff_ids.len(),
                layers.len()
            )));
        }
        for l in layers {
            if !self.has_blob(l.digest()) {
                return Err(ImageError::BlobMissing {
                    digest: l.digest().to_string(),
                    root: self.root.clone(),
                });
            }
        }
        let cdesc = self.put_bytes(MEDIA_TYPE_CONFIG, &config.to_canonical_json())?;
        self.write_manifest(cdesc, layers, Some(Platform::of_config(config)))
    }

    /// Writes an OCI manifest (canonical JSON) for a config and layers already in the store.
    pub(crate) fn write_manifest(
        &self,
        config: Descriptor,
        layers: &[Descriptor],
        platform: Option<Platform>,
    ) -> Result<Descriptor, ImageError> {
        let bytes = manifest_bytes(config, layers)?;
        let mut d = self.put_bytes(MEDIA_TYPE_MANIFEST, &bytes)?;
        d.set_platform(platform.map(|p| p.to_oci()));
        Ok(d)
    }

    // ---- prune -------------------------------------------------------------------------------

    /// Removes every blob not reachable from `index.json` (manifests → config and layers;
    /// indexes → manifests), and temp files left by killed processes. Fails with
    /// [`ImageError::StoreBusy`] while another process has the store open.
    pub fn prune(&self) -> Result<PruneReport, ImageError> {
        self.prune_keeping(&[])
    }

    /// [`prune`](Self::prune), also keeping `roots` and what they reference (for blobs that
    /// other parts of kiln, such as the build cache, refer to without a tag).
    pub fn prune_keeping(&self, roots: &[Digest]) -> Result<PruneReport, ImageError> {
        self.while_exclusive(|| self.prune_locked(roots))?
    }

    /// Runs `f` while this process is the only one with the store open (the garbage-collection
    /// lock held exclusively), for clean-ups that must not race a build: pruning, and removing
    /// what killed builds left in the store's side directories. Fails with
    /// [`ImageError::StoreBusy`] while another process has the store open.
    pub fn while_exclusive<T>(&self, f: impl FnOnce() -> T) -> Result<T, ImageError> {
        let gc_path = self.root.join("kiln").join("gc.lock");
        match self.gc_lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                // A failed conversion may have dropped our shared lock: take it back.
                self.gc_lock
                    .lock_shared()
                    .map_err(|e| ImageError::io("locking", &gc_path, e))?;
                return Err(ImageError::StoreBusy {
                    root: self.root.clone(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(ImageError::io("locking", &gc_path, e)),
        }
        let result = f();
        self.gc_lock
            .lock_shared()
            .map_err(|e| ImageError::io("locking", &gc_path, e))?;
        Ok(result)
    }

    fn prune_locked(&self, roots: &[Digest]) -> Result<PruneReport, ImageError> {
        let _g = self.lock_index()?;
        let index = self.read_index()?;
        let mut keep: BTreeSet<String> = BTreeSet::new();
        let mut stack: Vec<(Digest, Option<String>)> = index
            .manifests()
            .iter()
            .map(|d| (d.digest().clone(), Some(d.media_type().to_string())))
            .collect();
        stack.extend(roots.iter().map(|d| (d.clone(), None)));
        while let Some((d, mt)) = stack.pop() {
            let Ok(hex) = sha256_hex(&d) else { continue };
            if !keep.insert(hex.to_string()) {
                continue;
            }
            let json_like = match mt.as_deref() {
                Some(
                    MEDIA_TYPE_MANIFEST
                    | MEDIA_TYPE_INDEX
                    | MEDIA_TYPE_DOCKER_MANIFEST
                    | MEDIA_TYPE_DOCKER_MANIFEST_LIST,
                ) => true,
                Some(_) => false,
                None => self
                    .blob_path(&d)
                    .ok()
                    .and_then(|p| fs::metadata(p).ok())
                    .is_some_and(|m| m.len() <= MAX_JSON),
            };
            if !json_like {
                continue;
            }
            let Ok(bytes) = self.read_blob(&d) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            for key in ["config", "subject"] {
                if let Some(c) = v.get(key) {
                    push_child(&mut stack, c);
                }
            }
            for key in ["layers", "manifests", "blobs"] {
                if let Some(arr) = v.get(key).and_then(|a| a.as_array()) {
                    for c in arr {
                        push_child(&mut stack, c);
                    }
                }
            }
        }

        let mut report = PruneReport::default();
        let rd =
            fs::read_dir(&self.blobs).map_err(|e| ImageError::io("listing", &self.blobs, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| ImageError::io("listing", &self.blobs, e))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            let is_digest = name.len() == 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            if !is_digest || keep.contains(name) {
                continue;
            }
            let len = ent.metadata().map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(ent.path()) {
                Ok(()) => {
                    report.blobs_removed += 1;
                    report.bytes_freed += len;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io("removing", ent.path(), e)),
            }
        }
        sync_dir(&self.blobs)?;

        let (removed, bytes) = self.sweep_temp(true)?;
        report.temp_files_removed += removed;
        report.bytes_freed += bytes;
        Ok(report)
    }

    /// Removes what killed processes left in `kiln/tmp/`: directories and temp files whose
    /// owner's lease is gone (see [`crate::lease`]), and token-less temp files nobody holds
    /// locked (older than a few seconds: the moment between creating one and locking it). Safe while other builds run. With
    /// `unowned`, also directories without a lease token (from an older kiln): only while no
    /// other process has the store open. Returns how many entries went and the bytes freed.
    pub fn sweep_temp(&self, unowned: bool) -> Result<(u64, u64), ImageError> {
        let now = SystemTime::now();
        let (mut removed, mut bytes) = (0, 0);
        let rd = fs::read_dir(&self.tmp).map_err(|e| ImageError::io("listing", &self.tmp, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| ImageError::io("listing", &self.tmp, e))?;
            let path = ent.path();
            let Ok(md) = ent.metadata() else { continue };
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            let prefix = name.find('-').map_or(name, |i| &name[..=i]);
            let owner = crate::lease::owner(&self.root, name, prefix);
            if md.is_dir() {
                if owner.removable(unowned) {
                    let size = crate::layer::tree_bytes(&path);
                    if crate::layer::remove_tree_in_place(&path).is_ok() {
                        removed += 1;
                        bytes += size;
                    }
                }
                continue;
            }
            // A temp file whose writer's lease is gone goes now; one without a token (from an
            // older kiln) once it is old and unlocked.
            let young = owner == crate::lease::Owner::Unknown
                && md
                    .modified()
                    .ok()
                    .and_then(|m| now.duration_since(m).ok())
                    .is_none_or(|age| age < TEMP_GRACE);
            if owner == crate::lease::Owner::Alive || young || !md.is_file() {
                continue;
            }
            let Ok(f) = File::open(&path) else { continue };
            if f.try_lock().is_ok() && fs::remove_file(&path).is_ok() {
                removed += 1;
                bytes += std::os::unix::fs::MetadataExt::blocks(&md) * 512;
            }
        }
        Ok((removed, bytes))
    }
}

fn push_child(stack: &mut Vec<(Digest, Option<String>)>, c: &serde_json::Value) {
    let Some(d) = c
        .get("digest")
        .and_then(|d| d.as_str())
        .and_then(|d| d.parse::<Digest>().ok())
    else {
        return;
    };
    let mt = c
        .get("mediaType")
        .and_then(|m| m.as_str())
        .map(str::to_string);
    stack.push((d, Some(mt.unwrap_or_default())));
}

/// The `mediaType` field of a JSON document, if any.
pub(crate) fn manifest_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Mt {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
    }
    let m: Mt = serde_json::from_slice(bytes).ok()?;
    m.media_type
        .or_else(|| m.manifests.is_some().then(|| MEDIA_TYPE_INDEX.to_string()))
}

/// A descriptor for a manifest blob known only by digest.
fn manifest_desc(d: &Digest, store: &Store) -> Result<Descriptor, ImageError> {
    let bytes = store.read_blob(d)?;
    let mt = manifest_media_type(&bytes).unwrap_or_else(|| MEDIA_TYPE_MANIFEST.to_string());
    Ok(Descriptor::new(
        MediaType::from(mt.as_str()),
        bytes.len() as u64,
        d.clone(),
    ))
}

/// The canonical bytes of an OCI manifest.
pub(crate) fn manifest_bytes(
    config: Descriptor,
    layers: &[Descriptor],
) -> Result<Vec<u8>, ImageError> {
    let manifest = oci_spec::image::ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config)
        .layers(layers.to_vec())
        .build()
        .map_err(|e| ImageError::Invalid(format!("building manifest: {e}")))?;
    canonical_json(&manifest).map_err(|e| ImageError::json("manifest", e))
}

/// An empty OCI index.
pub(crate) fn empty_index() -> ImageIndex {
    let mut i = ImageIndex::default();
    i.set_media_type(Some(MediaType::ImageIndex));
    i.set_manifests(Vec::new());
    i
}

/// The `org.opencontainers.image.ref.name` annotation of a descriptor.
pub(crate) fn ref_name(d: &Descriptor) -> Option<&str> {
    d.annotations()
        .as_ref()?
        .get(ANNOTATION_REF_NAME)
        .map(String::as_str)
}

fn sort_entries(entries: &mut [Descriptor]) {
    entries.sort_by(|a, b| {
        ref_name(a)
            .cmp(&ref_name(b))
            .then_with(|| a.digest().to_string().cmp(&b.digest().to_string()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::config::History;
    use crate::image::parse_ref;

    fn tiny_image(store: &Store, text: &str) -> (Descriptor, ImageConfig) {
        let (w, l) = store
            .put_layer(
                vec![LayerEntry::file("hello", text.as_bytes().to_vec(), 0o644)],
                &WriteOptions::default(),
            )
            .unwrap();
        let mut c = ImageConfig::new("linux", "amd64", None);
        c.push_layer(
            w.diff_id,
            History {
                created_by: format!("COPY {text}"),
                ..History::default()
            },
        );
        (store.write_image(&c, &[l]).unwrap(), c)
    }

    fn index_value(root: &Path) -> serde_json::Value {
        serde_json::from_slice(&fs::read(root.join("index.json")).unwrap()).unwrap()
    }

    #[test]
    fn open_creates_a_valid_layout() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(
            fs::read(dir.path().join("oci-layout")).unwrap(),
            OCI_LAYOUT_CONTENT
        );
        assert_eq!(
            fs::read_to_string(dir.path().join("index.json")).unwrap(),
            r#"{"manifests":[],"mediaType":"application/vnd.oci.image.index.v1+json","schemaVersion":2}"#
        );
        assert!(dir.path().join("blobs/sha256").is_dir());
        drop(s);
        // Reopening keeps it; a bad version is refused.
        Store::open(dir.path()).unwrap();
        fs::write(
            dir.path().join("oci-layout"),
            br#"{"imageLayoutVersion":"9"}"#,
        )
        .unwrap();
        let e = Store::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains("imageLayoutVersion"), "{e}");
    }

    #[test]
    fn blobs_are_content_addressed_and_verified() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let d = s.put_bytes("application/octet-stream", b"hello").unwrap();
        assert_eq!(
            d.digest().to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(d.size(), 5);
        assert!(s.has_blob(d.digest()));
        assert_eq!(s.read_blob(d.digest()).unwrap(), b"hello");
        let mut r = String::new();
        s.open_blob(d.digest())
            .unwrap()
            .read_to_string(&mut r)
            .unwrap();
        assert_eq!(r, "hello");
        // No temp file is left behind.
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);

        // Corruption is detected on read.
        fs::write(s.blob_path(d.digest()).unwrap(), b"HELLO").unwrap();
        assert!(matches!(
            s.read_blob(d.digest()),
            Err(ImageError::DigestMismatch { .. })
        ));
        let mut sink = Vec::new();
        let e = s
            .open_blob(d.digest())
            .unwrap()
            .read_to_end(&mut sink)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);

        // A dropped writer leaves nothing.
        let mut w = s.blob_writer().unwrap();
        w.write_all(b"partial").unwrap();
        drop(w);
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);

        // A wrong expected digest is refused and the blob not stored.
        let mut w = s.blob_writer().unwrap();
        w.write_all(b"x").unwrap();
        assert!(w.finish_expecting("a/b", d.digest()).is_err());
        assert!(!s.has_blob(&crate::image::digest_of(b"x")));
        let missing = crate::image::digest_of(b"nope");
        assert!(matches!(
            s.read_blob(&missing),
            Err(ImageError::BlobMissing { .. })
        ));
    }

    #[test]
    fn tag_resolve_untag() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (m, c) = tiny_image(&s, "one");
        let name = parse_ref("busybox").unwrap();
        s.tag(&name, &m).unwrap();
        let v = index_value(dir.path());
        let e = &v["manifests"][0];
        assert_eq!(
            e["annotations"][ANNOTATION_REF_NAME],
            "docker.io/library/busybox:latest"
        );
        assert_eq!(e["platform"]["architecture"], "amd64");
        assert_eq!(e["mediaType"], MEDIA_TYPE_MANIFEST);

        for q in [
            "busybox",
            "busybox:latest",
            "docker.io/library/busybox:latest",
            "docker.io/busybox",
        ] {
            let img = s.resolve(q).unwrap();
            assert_eq!(img.name.as_ref().unwrap().to_string(), name.to_string());
            assert_eq!(img.config, c);
            assert_eq!(img.digest(), m.digest());
        }
        let img = s.resolve("busybox").unwrap();
        let id = img.id().to_string();
        let hex = id.strip_prefix("sha256:").unwrap();
        // By image ID, full or prefix, and by manifest digest.
        assert_eq!(s.resolve(&id).unwrap().digest(), m.digest());
        assert_eq!(s.resolve(hex).unwrap().digest(), m.digest());
        assert_eq!(s.resolve(&hex[..12]).unwrap().digest(), m.digest());
        assert_eq!(s.resolve(m.digest().as_ref()).unwrap().id().to_string(), id);
        assert_eq!(
            s.resolve(&format!("busybox@{}", m.digest()))
                .unwrap()
                .digest(),
            m.digest()
        );

        // Errors name the image.
        let e = s.resolve("nope").unwrap_err().to_string();
        assert_eq!(
            e,
            "image \"docker.io/library/nope:latest\" not found in the store"
        );
        let e = s.resolve("Nope").unwrap_err().to_string();
        assert!(e.contains("must be lowercase"), "{e}");
        assert!(
            s.tag(&parse_ref(&format!("x@{}", m.digest())).unwrap(), &m)
                .is_err()
        );

        // Retagging replaces; a second tag adds an entry; untag removes.
        let (m2, _) = tiny_image(&s, "two");
        s.tag(&name, &m2).unwrap();
        s.tag(&parse_ref("alpha:1").unwrap(), &m).unwrap();
        let names: Vec<String> = s.tags().unwrap().iter().map(|t| t.0.to_string()).collect();
        assert_eq!(
            names,
            [
                "docker.io/library/alpha:1",
                "docker.io/library/busybox:latest"
            ]
        );
        assert_eq!(s.resolve("busybox").unwrap().digest(), m2.digest());
        assert_eq!(s.untag(&name).unwrap().digest(), m2.digest());
        assert!(matches!(s.untag(&name), Err(ImageError::NotFound(_))));
        assert_eq!(s.list().unwrap().len(), 1);
    }

    #[test]
    fn id_prefixes_need_four_digits() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (m, _) = tiny_image(&s, "img");
        s.tag(&parse_ref("img").unwrap(), &m).unwrap();
        let id = s.resolve("img").unwrap().id().digest().to_string();
        assert!(matches!(s.resolve(&id[..3]), Err(ImageError::NotFound(_))));
        assert_eq!(s.resolve(&id[..4]).unwrap().digest(), m.digest());
        assert_eq!(
            s.resolve(&format!("sha256:{}", &id[..6])).unwrap().digest(),
            m.digest()
        );
        let e = ImageError::Ambiguous {
            prefix: "abcd".into(),
            candidates: vec!["sha256:abcd1".into(), "sha256:abcd2".into()],
        };
        assert_eq!(
            e.to_string(),
            "image ID prefix \"abcd\" is ambiguous: it matches sha256:abcd1, sha256:abcd2"
        );
    }

    #[test]
    fn write_image_checks_layers() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let c = ImageConfig::new("linux", "amd64", None);
        let fake = Descriptor::new(
            MediaType::ImageLayerGzip,
            1,
            crate::image::digest_of(b"not there"),
        );
        assert!(s.write_image(&c, std::slice::from_ref(&fake)).is_err());
        let mut c2 = c.clone();
        c2.rootfs.diff_ids.push(crate::layer::DiffId::of(b""));
        assert!(matches!(
            s.write_image(&c2, &[fake]),
            Err(ImageError::BlobMissing { .. })
        ));
        // An image with no layers is fine, and writing it twice gives the same digest.
        let a = s.write_image(&c, &[]).unwrap();
        let b = s.write_image(&c, &[]).unwrap();
        assert_eq!(a, b);
        let m: serde_json::Value =
            serde_json::from_slice(&s.read_blob(a.digest()).unwrap()).unwrap();
        assert_eq!(m["config"]["mediaType"], MEDIA_TYPE_CONFIG);
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["mediaType"], MEDIA_TYPE_MANIFEST);
    }

    #[test]
    fn concurrent_tags_from_threads_keep_index_valid() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (m, _) = tiny_image(&s, "shared");
        drop(s);
        let root = dir.path().to_path_buf();
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let root = root.clone();
                let m = m.clone();
                std::thread::spawn(move || {
                    // Each thread opens its own Store: separate lock file descriptors, like
                    // separate processes.
                    let s = Store::open(&root).unwrap();
                    for i in 0..15 {
                        s.tag(&parse_ref(&format!("t{t}:v{i}")).unwrap(), &m)
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let s = Store::open(&root).unwrap();
        assert_eq!(s.tags().unwrap().len(), 8 * 15);
        assert_eq!(fs::read_dir(s.tmp_dir()).unwrap().count(), 0);
    }

    #[test]
    fn prune_keeps_referenced_blobs_and_removes_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path()).unwrap();
        let (keep, _) = tiny_image(&s, "keep");
        s.tag(&parse_ref("keep").unwrap(), &keep).unwrap();
        let (gone, _) = tiny_image(&s, "gone");
        let (rooted, _) = tiny_image(&s, "rooted");
        let junk = s.put_bytes("x/y", b"junk").unwrap();
        // A stale temp file (unlocked, old) and a live one (locked).
        let stale = s.tmp_dir().join("blob-1-0-0");
        fs::write(&stale, b"stale").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        // A young one whose writer's lease is gone (a build killed mid-write): no grace.
        let dead = s.tmp_dir().join("blob-1x1-0");
        fs::write(&dead, b"dead").unwrap();
        let mut live = s.blob_writer().unwrap();
        live.write_all(b"in flight").unwrap();
        let live_path = live.tmp.path().to_path_buf();
        File::options()
            .write(true)
            .open(&live_path)
            .unwrap()
            .set_modified(old)
            .unwrap();

        let before = fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count();
        assert_eq!(before, 3 * 3 + 1);
        let r = s.prune_keeping(&[rooted.digest().clone()]).unwrap();
        // gone: manifest, config, layer; junk.
        assert_eq!(r.blobs_removed, 4);
        assert_eq!(r.temp_files_removed, 2);
        assert!(r.bytes_freed > 0);
        assert!(!stale.exists());
        assert!(!dead.exists());
        assert!(live_path.exists());
        assert!(!s.has_blob(gone.digest()));
        assert!(!s.has_blob(junk.digest()));
        for m in [&keep, &rooted] {
            let img = s.load_image(m, None).unwrap();
            assert!(s.has_blob(img.id()));
            for l in img.layers() {
                assert!(s.has_blob(l.digest()));
            }
        }
        let d = live.finish("a/b").unwrap();
        assert!(s.has_blob(d.digest()));
        // Pruning again removes nothing more than the new, unreferenced blob.
        let r = s.prune().unwrap();
        assert_eq!(
            r.blobs_removed, 4,
            "the finished in-flight blob and all of rooted"
        );
        assert!(s.resolve("keep").is_ok());
    }

    #[test]
    fn prune_waits_for_no_one_and_reports_busy() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(dir.path()).unwrap();
        let b = Store::open(dir.path()).unwrap();
        assert!(matches!(a.prune(), Err(ImageError::StoreBusy { .. })));
        // a still holds its shared lock: b cannot prune either.
        assert!(matches!(b.prune(), Err(ImageError::StoreBusy { .. })));
        drop(b);
        a.prune().unwrap();
        // After pruning, a holds the shared lock again.
        let c = Store::open(dir.path()).unwrap();
        assert!(matches!(c.prune(), Err(ImageError::StoreBusy { .. })));
    }

    #[test]
    fn platforms() {
        assert_eq!(
            Platform::parse("linux/arm64/v8").unwrap().to_string(),
            "linux/arm64/v8"
        );
        assert_eq!(
            Platform::parse("linux/x86_64").unwrap().architecture,
            "amd64"
        );
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux//").is_err());
        let h = Platform::host();
        assert_eq!(h.os, "linux");
        assert!(h.matches(&Platform::from_oci(&h.to_oci())));
    }
}
