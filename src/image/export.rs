//! Exports of a stored image: an OCI image layout (directory or tar, as BuildKit writes them) and
//! a docker-archive tar (what `docker save` / `podman save` write and `docker load` /
//! `podman load` read).
//!
//! Both tars are deterministic: entries sorted by path, ustar headers with mtime 0, owner 0:0,
//! no user or group names, modes 0644 (files) and 0755 (directories).
//!
//! OCI layout (`--output type=oci`): `oci-layout`, `blobs/sha256/…`, and an `index.json` with
//! one entry per name, annotated as BuildKit does: `io.containerd.image.name` = the full name,
//! `org.opencontainers.image.ref.name` = the tag only. Layers can be re-compressed on the way out
//! ([`OciExportOptions::compression`]): the layer digests, and so the manifest, change; the
//! config (diff_ids) does not.
//!
//! docker-archive: `<config hex>.json`, one uncompressed `<diffID hex>.tar` per distinct layer,
//! `manifest.json` (`[{"Config", "RepoTags", "Layers"}]`) and `repositories`
//! (`{"docker.io/library/busybox": {"latest": "<top layer chain ID hex>"}}`), the layout
//! containers/image (podman, skopeo) writes. Names are written in the full normalised form
//! (`docker.io/library/busybox:latest`), not Docker's short one: `docker load` normalises either
//! to the same name, while podman would turn a short `busybox:latest` into
//! `localhost/busybox:latest`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Seek, Write};
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, Digest, MediaType};
use sha2::{Digest as _, Sha256};

use super::compress::{self, Detected};
use super::config::canonical_json;
use super::reference::ImageRef;
use super::store::{Store, StoredImage, TempFile, empty_index, manifest_bytes};
use super::{ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, ImageError, sha256_digest, sha256_hex};
use crate::layer::Compression;

/// How to export an OCI layout.
#[derive(Debug, Clone, Copy, Default)]
pub struct OciExportOptions {
    /// Compress layers this way (`None`: as stored). Layers already in that compression are
    /// kept as they are unless [`force_compression`](Self::force_compression).
    pub compression: Option<Compression>,
    /// Re-compress every layer, even those already in the requested compression (to change the
    /// level).
    pub force_compression: bool,
}

/// Where a blob's bytes come from.
enum Source {
    Store(Digest),
    Temp(TempFile),
    Bytes(Vec<u8>),
}

struct Blob {
    hex: String,
    size: u64,
    source: Source,
}

impl Blob {
    /// The store's blob that `d` describes.
    fn stored(d: &Descriptor) -> Result<Blob, ImageError> {
        Ok(Blob {
            hex: sha256_hex(d.digest())?.to_string(),
            size: d.size(),
            source: Source::Store(d.digest().clone()),
        })
    }

    fn reader<'a>(&'a mut self, store: &'a Store) -> Result<Box<dyn Read + 'a>, ImageError> {
        Ok(match &mut self.source {
            Source::Store(d) => Box::new(store.open_blob(d)?),
            Source::Temp(t) => {
                let path = t.path().to_path_buf();
                let f = t.file();
                f.rewind()
                    .map_err(|e| ImageError::io("rewinding", &path, e))?;
                Box::new(io::BufReader::with_capacity(256 * 1024, &*f))
            }
            Source::Bytes(b) => Box::new(&b[..]),
        })
    }
}

/// An OCI layout ready to write: the blobs (manifest last) and the index.
struct Layout {
    blobs: Vec<Blob>,
    index: Vec<u8>,
    manifest: Descriptor,
}

/// The image's diffIDs, one per layer (an error when the config and manifest disagree).
fn layer_diff_ids(image: &StoredImage) -> Result<&[crate::layer::DiffId], ImageError> {
    let diff_ids = &image.config.rootfs.diff_ids;
    if diff_ids.len() != image.layers().len() {
        return Err(ImageError::Invalid(format!(
            "image {}: its config lists {} diff_ids for {} layers",
            display_name(image),
            diff_ids.len(),
            image.layers().len()
        )));
    }
    Ok(diff_ids)
}

fn prepare_oci(
    store: &Store,
    image: &StoredImage,
    names: &[ImageRef],
    opts: &OciExportOptions,
) -> Result<Layout, ImageError> {
    let diff_ids = layer_diff_ids(image)?;
    let mut blobs: Vec<Blob> = Vec::new();
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut push = |blobs: &mut Vec<Blob>, b: Blob| {
        if seen.insert(b.hex.clone(), ()).is_none() {
            blobs.push(b);
        }
    };
    push(&mut blobs, Blob::stored(&image.config_descriptor)?);

    let mut changed = false;
    let mut layers = Vec::with_capacity(image.layers().len());
    for (i, l) in image.layers().iter().enumerate() {
        let current = Detected::from_media_type(l.media_type().as_ref());
        let want = opts
            .compression
            .filter(|c| opts.force_compression || !current.is_some_and(|cur| cur.matches(*c)));
        match want {
            None => {
                push(&mut blobs, Blob::stored(l)?);
                layers.push(l.clone());
            }
            Some(c) => {
                let mut tmp = store.temp_file("export")?;
                let src = store.open_blob(l.digest())?;
                let tmp_path = tmp.path().to_path_buf();
                let w = compress::recompress(src, c, BufWriter::new(&mut *tmp.file()))
                    .map_err(|e| ImageError::io("re-compressing layer into", &tmp_path, e))?;
                if w.diff_id != diff_ids[i] {
                    return Err(ImageError::DigestMismatch {
                        what: format!("layer {} of image {}", l.digest(), display_name(image)),
                        expected: diff_ids[i].to_string(),
                        actual: w.diff_id.to_string(),
                    });
                }
                let digest = sha256_digest(w.digest.as_bytes());
                let mut d = Descriptor::new(MediaType::from(c.media_type()), w.size, digest);
                d.set_annotations(l.annotations().clone());
                push(
                    &mut blobs,
                    Blob {
                        hex: w.digest.hex(),
                        size: w.size,
                        source: Source::Temp(tmp),
                    },
                );
                changed |= &d != l;
                layers.push(d);
            }
        }
    }

    let manifest = if changed {
        let bytes = manifest_bytes(image.config_descriptor.clone(), &layers)?;
        let d = Descriptor::new(
            MediaType::ImageManifest,
            bytes.len() as u64,
            sha256_digest(&Sha256::digest(&bytes).into()),
        );
        push(
            &mut blobs,
            Blob {
                hex: sha256_hex(d.digest())?.to_string(),
                size: d.size(),
                source: Source::Bytes(bytes),
            },
        );
        d
    } else {
        let md = &image.manifest_descriptor;
        push(&mut blobs, Blob::stored(md)?);
        Descriptor::new(md.media_type().clone(), md.size(), md.digest().clone())
    };

    let mut index = empty_index();
    let mut entries = Vec::new();
    if names.is_empty() {
        entries.push(manifest.clone());
    }
    for n in names {
        let mut e = manifest.clone();
        let mut ann = HashMap::new();
        ann.insert(ANNOTATION_IMAGE_NAME.to_string(), n.to_string());
        if let Some(t) = &n.tag {
            ann.insert(ANNOTATION_REF_NAME.to_string(), t.clone());
        }
        e.set_annotations(Some(ann));
        entries.push(e);
    }
    index.set_manifests(entries);
    let index = canonical_json(&index).map_err(|e| ImageError::json("index.json", e))?;
    Ok(Layout {
        blobs,
        index,
        manifest,
    })
}

fn display_name(image: &StoredImage) -> String {
    match &image.name {
        Some(n) => format!("\"{n}\""),
        None => image.digest().to_string(),
    }
}

const OCI_LAYOUT_BYTES: &[u8] = br#"{"imageLayoutVersion":"1.0.0"}"#;

/// Writes `image` as an OCI image layout directory at `dest` (created if needed; blobs already
/// there are kept, `index.json` is replaced). Returns the exported manifest's descriptor.
pub fn write_oci_dir(
    store: &Store,
    image: &StoredImage,
    names: &[ImageRef],
    dest: &Path,
    opts: &OciExportOptions,
) -> Result<Descriptor, ImageError> {
    let mut layout = prepare_oci(store, image, names, opts)?;
    let blob_dir = dest.join("blobs").join("sha256");
    fs::create_dir_all(&blob_dir).map_err(|e| ImageError::io("creating", &blob_dir, e))?;
    for b in &mut layout.blobs {
        let path = blob_dir.join(&b.hex);
        if fs::metadata(&path).is_ok_and(|m| m.len() == b.size) {
            continue;
        }
        let mut r = b.reader(store)?;
        write_file_atomic(&path, |w| {
            io::copy(&mut r, w)
                .map(|_| ())
                .map_err(|e| ImageError::io("writing", &path, e))
        })?;
    }
    sync_dir(&blob_dir)?;
    for (name, bytes) in [
        ("oci-layout", OCI_LAYOUT_BYTES),
        ("index.json", &layout.index[..]),
    ] {
        let path = dest.join(name);
        write_file_atomic(&path, |w| {
            w.write_all(bytes)
                .map_err(|e| ImageError::io("writing", &path, e))
        })?;
    }
    sync_dir(dest)?;
    Ok(layout.manifest)
}

/// Writes `image` as a tar of an OCI image layout (an "OCI archive") to `out`. Returns the
/// exported manifest's descriptor.
pub fn write_oci_archive<W: Write>(
    store: &Store,
    image: &StoredImage,
    names: &[ImageRef],
    out: W,
    opts: &OciExportOptions,
) -> Result<Descriptor, ImageError> {
    oci_archive(store, image, names, out, opts, Path::new("-"))
}

fn oci_archive<W: Write>(
    store: &Store,
    image: &StoredImage,
    names: &[ImageRef],
    out: W,
    opts: &OciExportOptions,
    label: &Path,
) -> Result<Descriptor, ImageError> {
    let mut layout = prepare_oci(store, image, names, opts)?;
    let mut files: Vec<(String, TarItem<'_>)> = vec![
        ("blobs/".into(), TarItem::Dir),
        ("blobs/sha256/".into(), TarItem::Dir),
        ("index.json".into(), TarItem::Bytes(&layout.index)),
        ("oci-layout".into(), TarItem::Bytes(OCI_LAYOUT_BYTES)),
    ];
    for b in &mut layout.blobs {
        files.push((format!("blobs/sha256/{}", b.hex), TarItem::Blob(b)));
    }
    write_tar(store, files, out, "OCI archive", label)?;
    Ok(layout.manifest)
}

/// [`write_oci_archive`] to a file, written atomically (temp file beside it, then renamed).
pub fn write_oci_archive_file(
    store: &Store,
    image: &StoredImage,
    names: &[ImageRef],
    dest: &Path,
    opts: &OciExportOptions,
) -> Result<Descriptor, ImageError> {
    let mut result = None;
    write_file_atomic(dest, |w| {
        result = Some(oci_archive(store, image, names, w, opts, dest)?);
        Ok(())
    })?;
    Ok(result.expect("written"))
}

/// One image of a docker-archive and the names it is saved under.
#[derive(Debug, Clone)]
pub struct DockerArchiveImage<'a> {
    /// The image.
    pub image: &'a StoredImage,
    /// Its names (written to `RepoTags` in full form; names without a tag are skipped).
    pub names: Vec<ImageRef>,
}

#[derive(serde::Serialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Writes a docker-archive tar of `images` to `out` (layers uncompressed, as `docker load`
/// expects).
pub fn write_docker_archive<W: Write>(
    store: &Store,
    images: &[DockerArchiveImage<'_>],
    out: W,
) -> Result<(), ImageError> {
    docker_archive(store, images, out, Path::new("-"))
}

fn docker_archive<W: Write>(
    store: &Store,
    images: &[DockerArchiveImage<'_>],
    out: W,
    label: &Path,
) -> Result<(), ImageError> {
    let mut manifest = Vec::new();
    let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    // File name → what to write (sorted by name when the tar is written).
    let mut configs: BTreeMap<String, Digest> = BTreeMap::new();
    let mut layers: BTreeMap<String, (Descriptor, crate::layer::DiffId, String)> = BTreeMap::new();
    for item in images {
        let img = item.image;
        let diff_ids = layer_diff_ids(img)?;
        let cfg_name = format!("{}.json", sha256_hex(img.id())?);
        configs.insert(cfg_name.clone(), img.id().clone());
        let mut layer_names = Vec::new();
        let mut chain: Option<String> = None;
        for (l, diff) in img.layers().iter().zip(diff_ids) {
            let name = format!("{}.tar", diff.hex());
            layers
                .entry(name.clone())
                .or_insert_with(|| (l.clone(), *diff, display_name(img)));
            layer_names.push(name);
            chain = Some(match chain {
                None => diff.to_string(),
                Some(c) => {
                    let d: [u8; 32] = Sha256::digest(format!("{c} {diff}")).into();
                    sha256_digest(&d).to_string()
                }
            });
        }
        let top = chain
            .as_deref()
            .and_then(|c| c.strip_prefix("sha256:"))
            .map(str::to_string)
            .unwrap_or_else(|| img.id().digest().to_string());
        let mut tags = Vec::new();
        for n in &item.names {
            let Some(t) = &n.tag else { continue };
            tags.push(format!("{}:{t}", n.repository()));
            repositories
                .entry(n.repository())
                .or_default()
                .insert(t.clone(), top.clone());
        }
        manifest.push(DockerManifestEntry {
            config: cfg_name,
            repo_tags: tags,
            layers: layer_names,
        });
    }
    let manifest_json =
        canonical_json(&manifest).map_err(|e| ImageError::json("manifest.json", e))?;
    let repositories_json =
        canonical_json(&repositories).map_err(|e| ImageError::json("repositories", e))?;

    let mut files: Vec<(String, TarItem<'_>)> = vec![
        ("manifest.json".into(), TarItem::Bytes(&manifest_json)),
        ("repositories".into(), TarItem::Bytes(&repositories_json)),
    ];
    for (name, d) in &configs {
        files.push((name.clone(), TarItem::StoreBlob(d)));
    }
    for (name, (desc, diff, img)) in &layers {
        files.push((
            name.clone(),
            TarItem::Uncompressed {
                desc,
                diff: *diff,
                image: img,
            },
        ));
    }
    write_tar(store, files, out, "docker archive", label)
}

/// [`write_docker_archive`] to a file, written atomically.
pub fn write_docker_archive_file(
    store: &Store,
    images: &[DockerArchiveImage<'_>],
    dest: &Path,
) -> Result<(), ImageError> {
    write_file_atomic(dest, |w| docker_archive(store, images, w, dest))
}

enum TarItem<'a> {
    Dir,
    Bytes(&'a [u8]),
    Blob(&'a mut Blob),
    StoreBlob(&'a Digest),
    /// A layer blob, written uncompressed; its diffID is checked.
    Uncompressed {
        desc: &'a Descriptor,
        diff: crate::layer::DiffId,
        image: &'a str,
    },
}

fn header(path: &str, size: u64, dir: bool) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(if dir {
        tar::EntryType::Directory
    } else {
        tar::EntryType::Regular
    });
    h.set_mode(if dir { 0o755 } else { 0o644 });
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(size);
    let _ = h.set_username("");
    let _ = h.set_groupname("");
    h.set_path(path).expect("short ASCII path");
    h.set_cksum();
    h
}

/// Writes the tar; `what` and `label` (the destination file, or `-` for a stream) name it in
/// errors.
fn write_tar<W: Write>(
    store: &Store,
    mut files: Vec<(String, TarItem<'_>)>,
    out: W,
    what: &str,
    label: &Path,
) -> Result<(), ImageError> {
    files.sort_by(|a, b| a.0.cmp(&b.0));
    let mut tar = tar::Builder::new(BufWriter::with_capacity(256 * 1024, out));
    for (path, item) in files {
        let werr = |e| ImageError::io(format!("writing {path} into {what}"), label, e);
        match item {
            TarItem::Dir => tar
                .append(&header(&path, 0, true), io::empty())
                .map_err(werr)?,
            TarItem::Bytes(b) => tar
                .append(&header(&path, b.len() as u64, false), b)
                .map_err(werr)?,
            TarItem::Blob(b) => {
                let size = b.size;
                let r = b.reader(store)?;
                tar.append(&header(&path, size, false), r.take(size))
                    .map_err(werr)?;
            }
            TarItem::StoreBlob(d) => {
                let size = fs::metadata(store.blob_path(d)?)
                    .map_err(|e| ImageError::io("reading", store.root(), e))?
                    .len();
                let r = store.open_blob(d)?;
                tar.append(&header(&path, size, false), r.take(size))
                    .map_err(werr)?;
            }
            TarItem::Uncompressed { desc, diff, image } => {
                let mt = desc.media_type().to_string();
                if Detected::from_media_type(&mt) == Some(Detected::None)
                    && sha256_hex(desc.digest())? == diff.hex()
                {
                    // Already an uncompressed tar: its digest is its diffID.
                    let r = store.open_blob(desc.digest())?;
                    tar.append(&header(&path, desc.size(), false), r.take(desc.size()))
                        .map_err(werr)?;
                    continue;
                }
                let mut tmp = store.temp_file("save")?;
                let tmp_path = tmp.path().to_path_buf();
                let (mut dec, _) = compress::decompressing_reader(store.open_blob(desc.digest())?)
                    .map_err(|e| ImageError::io("decompressing", &tmp_path, e))?;
                let mut hw = crate::layer::HashWriter::new(BufWriter::new(&mut *tmp.file()));
                io::copy(&mut dec, &mut hw)
                    .map_err(|e| ImageError::io("decompressing layer into", &tmp_path, e))?;
                let (h, size, bw) = hw.finish();
                bw.into_inner()
                    .map_err(|e| ImageError::io("writing", &tmp_path, e.into_error()))?;
                if h != *diff.as_bytes() {
                    return Err(ImageError::DigestMismatch {
                        what: format!("layer {} of image {image}", desc.digest()),
                        expected: diff.to_string(),
                        actual: sha256_digest(&h).to_string(),
                    });
                }
                let f = tmp.file();
                f.rewind()
                    .map_err(|e| ImageError::io("rewinding", &tmp_path, e))?;
                tar.append(
                    &header(&path, size, false),
                    io::BufReader::with_capacity(256 * 1024, &*f).take(size),
                )
                .map_err(werr)?;
            }
        }
    }
    let werr = |e| ImageError::io(format!("writing {what}"), label, e);
    let mut w = tar.into_inner().map_err(werr)?;
    w.flush().map_err(werr)?;
    Ok(())
}

/// Writes the file output `dest` through `f`.
///
/// A `dest` that is absent or a regular file is replaced atomically: a temp file beside it,
/// fsynced, renamed into place; on error the temp file is removed and `dest` is untouched.
/// Anything else that exists there (a symlink, `/dev/stdout`, a fifo, a character device) is
/// written *through*, as a shell's `>` does: opened for writing (a symlink followed, a regular
/// file it reaches truncated), never unlinked or renamed over. A directory is an error.
pub fn write_output_file(
    dest: &Path,
    f: impl FnOnce(&mut dyn Write) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    write_file_atomic(dest, |w| f(w))
}

fn write_file_atomic(
    dest: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    match fs::symlink_metadata(dest) {
        Ok(md) if md.is_file() => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Ok(md) if md.is_dir() => {
            return Err(ImageError::io(
                "writing",
                dest,
                io::Error::new(io::ErrorKind::IsADirectory, "is a directory"),
            ));
        }
        Ok(_) => return write_through(dest, f),
        Err(e) => return Err(ImageError::io("reading", dest, e)),
    }
    let dir = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = dir.join(format!(".{name}.kiln-tmp-{}-{n}", std::process::id()));
    // create_new: kiln never opens, and so never removes, a temp file it did not make.
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(|e| ImageError::io("creating", &tmp, e))?;
    let res = (|| -> Result<(), ImageError> {
        let mut w = BufWriter::with_capacity(256 * 1024, file);
        f(&mut w)?;
        let file = w
            .into_inner()
            .map_err(|e| ImageError::io("writing", dest, e.into_error()))?;
        file.sync_all()
            .map_err(|e| ImageError::io("syncing", &tmp, e))?;
        fs::rename(&tmp, dest).map_err(|e| ImageError::io("renaming into place", dest, e))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res?;
    sync_dir(&dir)
}

/// Writes through an existing non-regular `dest` (see [`write_output_file`]).
fn write_through(
    dest: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> Result<(), ImageError>,
) -> Result<(), ImageError> {
    if fs::metadata(dest).is_ok_and(|m| m.is_dir()) {
        return Err(ImageError::io(
            "writing",
            dest,
            io::Error::new(io::ErrorKind::IsADirectory, "leads to a directory"),
        ));
    }
    let file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(dest)
        .map_err(|e| ImageError::io("opening", dest, e))?;
    let mut w = BufWriter::with_capacity(256 * 1024, file);
    f(&mut w)?;
    let file = w
        .into_inner()
        .map_err(|e| ImageError::io("writing", dest, e.into_error()))?;
    if file.metadata().is_ok_and(|m| m.is_file()) {
        file.sync_all()
            .map_err(|e| ImageError::io("syncing", dest, e))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ImageError::io("syncing directory", dir, e))
}
