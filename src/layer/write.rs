//! Writing a layer: tar → sha256 (diffID) → compressor → sha256 (digest) + size → output,
//! in one streaming pass.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::LayerError;
use super::digest::{DiffId, HashWriter, LayerDigest};
use super::entry::{EntryKind, FileSource, LayerEntry, compare_layer_paths, normalize_layer_path};
use super::tarfmt::{self, EncodeError};

/// OCI media type of an uncompressed layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI media type of a gzip-compressed layer.
pub const MEDIA_TYPE_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI media type of a zstd-compressed layer.
pub const MEDIA_TYPE_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The version of the layer writer's byte output: bump it whenever the same entries and
/// [`WriteOptions`] would give different bytes (tar header rules, entry order, a compressor
/// library or its settings). The build cache puts it in every key, so layers cached by an older
/// writer are not reused as if the new one had written them.
pub const WRITER_SCHEME_VERSION: u32 = 1;

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// gzip (deflate) at this level, 0–9.
    Gzip(u32),
    /// zstd at this level (1–22; negative levels are zstd's fast modes).
    Zstd(i32),
    /// No compression.
    Uncompressed,
}

impl Compression {
    /// The default gzip level.
    pub const GZIP_DEFAULT_LEVEL: u32 = 6;
    /// The default zstd level.
    pub const ZSTD_DEFAULT_LEVEL: i32 = 3;

    /// gzip at the default level 6.
    pub const fn gzip() -> Self {
        Compression::Gzip(Self::GZIP_DEFAULT_LEVEL)
    }

    /// zstd at the default level 3.
    pub const fn zstd() -> Self {
        Compression::Zstd(Self::ZSTD_DEFAULT_LEVEL)
    }

    /// The OCI layer media type of a blob compressed this way.
    pub const fn media_type(&self) -> &'static str {
        match self {
            Compression::Gzip(_) => MEDIA_TYPE_LAYER_GZIP,
            Compression::Zstd(_) => MEDIA_TYPE_LAYER_ZSTD,
            Compression::Uncompressed => MEDIA_TYPE_LAYER_TAR,
        }
    }
}

impl Default for Compression {
    fn default() -> Self {
        Compression::gzip()
    }
}

/// How to write a layer.
#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// Blob compression (default gzip level 6).
    pub compression: Compression,
    /// `SOURCE_DATE_EPOCH`: mtimes later than this are set to it.
    pub source_date_epoch: Option<i64>,
    /// zstd worker threads (default: available parallelism). 0 is treated as 1: kiln always uses
    /// zstd's multi-threaded mode, whose output is the same for any number of workers (but not
    /// the same as the single-threaded mode's).
    pub zstd_workers: u32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        WriteOptions {
            compression: Compression::default(),
            source_date_epoch: None,
            zstd_workers: std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1),
        }
    }
}

/// What was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenLayer {
    /// sha256 of the uncompressed tar.
    pub diff_id: DiffId,
    /// sha256 of the blob as written.
    pub digest: LayerDigest,
    /// Size of the blob as written, in bytes.
    pub size: u64,
    /// Size of the uncompressed tar, in bytes.
    pub uncompressed_size: u64,
    /// OCI media type of the blob.
    pub media_type: &'static str,
}

enum Encoder<W: Write> {
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    fn new(out: W, opts: &WriteOptions) -> Result<Self, LayerError> {
        Ok(match opts.compression {
            Compression::Gzip(level) => {
                if level > 9 {
                    return Err(LayerError::CompressionLevel {
                        algorithm: "gzip",
                        level: i64::from(level),
                    });
                }
                let enc = flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(out, flate2::Compression::new(level));
                Encoder::Gzip(enc)
            }
            Compression::Zstd(level) => {
                if !zstd::compression_level_range().contains(&level) {
                    return Err(LayerError::CompressionLevel {
                        algorithm: "zstd",
                        level: i64::from(level),
                    });
                }
                let setup = |out| -> io::Result<_> {
                    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                    enc.include_checksum(true)?;
                    enc.multithread(opts.zstd_workers.max(1))?;
                    Ok(enc)
                };
                Encoder::Zstd(setup(out).map_err(|e| LayerError::stream("starting zstd", e))?)
            }
            Compression::Uncompressed => Encoder::Plain(out),
        })
    }

    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Plain(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Plain(w) => w.flush(),
        }
    }
}

/// The streaming pipeline behind every layer blob: tar bytes written to it are hashed (diffID),
/// compressed, hashed and counted again (digest, size) and passed on to the output.
type Pipeline<W> = HashWriter<Encoder<HashWriter<W>>>;

/// Starts a [`Pipeline`] into `out`, compressing as `opts` says.
fn pipeline<W: Write>(out: W, opts: &WriteOptions) -> Result<Pipeline<W>, LayerError> {
    Ok(HashWriter::new(Encoder::new(HashWriter::new(out), opts)?))
}

/// Ends the compression and both digests, and flushes (does not sync) the output.
fn finish_pipeline<W: Write>(
    pipeline: Pipeline<W>,
    media_type: &'static str,
) -> Result<(WrittenLayer, W), LayerError> {
    let (diff_id, uncompressed_size, enc) = pipeline.finish();
    let blob = enc
        .finish()
        .map_err(|e| LayerError::stream("finishing compression", e))?;
    let (digest, size, mut out) = blob.finish();
    out.flush()
        .map_err(|e| LayerError::stream("flushing the layer blob", e))?;
    Ok((
        WrittenLayer {
            diff_id: DiffId::from_bytes(diff_id),
            digest: LayerDigest::from_bytes(digest),
            size,
            uncompressed_size,
            media_type,
        },
        out,
    ))
}

const COPY_BUF: usize = 256 * 1024;

/// Streams entries, already in layer order, into a layer blob.
///
/// Each [`append`](Self::append) checks the order ([`compare_layer_paths`], strictly increasing)
/// and folds repeated [`LayerEntry::link_key`]s into hard links. [`finish`](Self::finish) ends the
/// archive, the compression and both digests.
pub struct LayerWriter<W: Write> {
    tar: BufWriter<Pipeline<W>>,
    media_type: &'static str,
    epoch: Option<i64>,
    last: Option<PathBuf>,
    links: HashMap<(u64, u64), PathBuf>,
    header: Vec<u8>,
    buf: Vec<u8>,
}

impl<W: Write> LayerWriter<W> {
    /// Starts a layer written to `out` (for example a temporary file in the blob directory).
    pub fn new(out: W, opts: &WriteOptions) -> Result<Self, LayerError> {
        Ok(LayerWriter {
            tar: BufWriter::with_capacity(128 * 1024, pipeline(out, opts)?),
            media_type: opts.compression.media_type(),
            epoch: opts.source_date_epoch,
            last: None,
            links: HashMap::new(),
            header: Vec::with_capacity(2 * tarfmt::BLOCK),
            buf: Vec::new(),
        })
    }

    /// Writes one entry. Its path must sort after the previous entry's.
    pub fn append(&mut self, entry: &LayerEntry) -> Result<(), LayerError> {
        let path = normalize_layer_path(&entry.path)?;
        if let Some(prev) = &self.last
            && compare_layer_paths(prev, &path) != Ordering::Less
        {
            return Err(LayerError::Order {
                prev: prev.clone(),
                next: path,
            });
        }
        let is_root = path.as_os_str().is_empty();
        if is_root && entry.kind != EntryKind::Dir {
            return Err(LayerError::invalid(
                &entry.path,
                "only a directory can be the layer root",
            ));
        }

        let mut kind = &entry.kind;
        let folded;
        if let (Some(key), false) = (entry.link_key, matches!(kind, EntryKind::Dir)) {
            match self.links.get(&key) {
                Some(first) => {
                    folded = EntryKind::Hardlink(first.clone());
                    kind = &folded;
                }
                None => {
                    self.links.insert(key, path.clone());
                }
            }
        }

        let mut name = if is_root {
            b"./".to_vec()
        } else {
            path.as_os_str().as_bytes().to_vec()
        };
        let mut size = 0u64;
        let mut linkname: Vec<u8> = Vec::new();
        let mut dev = None;
        let mut disk: Option<File> = None;
        let typeflag = match kind {
            EntryKind::File(FileSource::Bytes(b)) => {
                size = b.len() as u64;
                tarfmt::TYPE_FILE
            }
            EntryKind::File(FileSource::Disk(src)) => {
                let f = File::open(src)
                    .map_err(|e| LayerError::entry(&path, "opening source file", e))?;
                let md = f
                    .metadata()
                    .map_err(|e| LayerError::entry(&path, "reading source file metadata", e))?;
                if !md.is_file() {
                    return Err(LayerError::invalid(
                        &path,
                        format!("source `{}` is not a regular file", src.display()),
                    ));
                }
                size = md.len();
                disk = Some(f);
                tarfmt::TYPE_FILE
            }
            EntryKind::Dir => {
                if !is_root {
                    name.push(b'/');
                }
                tarfmt::TYPE_DIR
            }
            EntryKind::Symlink(target) => {
                linkname = target.as_os_str().as_bytes().to_vec();
                if linkname.is_empty() {
                    return Err(LayerError::invalid(&path, "symlink with an empty target"));
                }
                tarfmt::TYPE_SYMLINK
            }
            EntryKind::Hardlink(target) => {
                let target = normalize_layer_path(target)?;
                if target.as_os_str().is_empty() || target == path {
                    return Err(LayerError::invalid(
                        &path,
                        format!("invalid hard link target `{}`", target.display()),
                    ));
                }
                linkname = target.as_os_str().as_bytes().to_vec();
                tarfmt::TYPE_HARDLINK
            }
            EntryKind::CharDevice { major, minor } => {
                dev = Some((*major, *minor));
                tarfmt::TYPE_CHAR
            }
            EntryKind::BlockDevice { major, minor } => {
                dev = Some((*major, *minor));
                tarfmt::TYPE_BLOCK
            }
            EntryKind::Fifo => tarfmt::TYPE_FIFO,
        };
        let mtime = match self.epoch {
            Some(epoch) if entry.mtime > epoch => epoch,
            _ => entry.mtime,
        };

        self.header.clear();
        let h = tarfmt::Header {
            name: &name,
            typeflag,
            mode: entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            size,
            mtime,
            linkname: &linkname,
            dev,
            xattrs: &entry.xattrs,
        };
        tarfmt::encode(&h, &mut self.header).map_err(|e| match e {
            EncodeError::DeviceNumber => {
                LayerError::invalid(&path, "device number too large for a tar header")
            }
            EncodeError::XattrName(n) => {
                LayerError::invalid(&path, format!("invalid extended attribute name {n:?}"))
            }
        })?;
        let werr = |e| LayerError::entry(&path, "writing layer", e);
        self.tar.write_all(&self.header).map_err(werr)?;

        match (kind, disk) {
            (EntryKind::File(FileSource::Bytes(b)), _) => self.tar.write_all(b).map_err(werr)?,
            (_, Some(mut f)) => {
                if self.buf.is_empty() {
                    self.buf = vec![0; COPY_BUF];
                }
                let mut remaining = size;
                while remaining > 0 {
                    let want = remaining.min(self.buf.len() as u64) as usize;
                    let n = match f.read(&mut self.buf[..want]) {
                        Ok(0) => {
                            return Err(LayerError::invalid(
                                &path,
                                "source file shrank while it was being written",
                            ));
                        }
                        Ok(n) => n,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => return Err(LayerError::entry(&path, "reading source file", e)),
                    };
                    self.tar.write_all(&self.buf[..n]).map_err(werr)?;
                    remaining -= n as u64;
                }
                match f.read(&mut self.buf[..1]) {
                    Ok(0) => {}
                    Ok(_) => {
                        return Err(LayerError::invalid(
                            &path,
                            "source file grew while it was being written",
                        ));
                    }
                    Err(e) => return Err(LayerError::entry(&path, "reading source file", e)),
                }
            }
            _ => {}
        }
        let pad = tarfmt::padding(size);
        if pad > 0 {
            self.tar
                .write_all(&[0u8; tarfmt::BLOCK][..pad])
                .map_err(werr)?;
        }
        self.last = Some(path);
        Ok(())
    }

    /// Ends the archive (two zero blocks) and the compression; returns the digests and the
    /// output writer (flushed, not synced).
    pub fn finish(mut self) -> Result<(WrittenLayer, W), LayerError> {
        self.tar
            .write_all(&[0u8; 2 * tarfmt::BLOCK])
            .map_err(|e| LayerError::stream("writing the end of the layer", e))?;
        let pipeline = self
            .tar
            .into_inner()
            .map_err(|e| LayerError::stream("writing the layer", e.into_error()))?;
        finish_pipeline(pipeline, self.media_type)
    }
}

/// Writes a layer from `entries` (any order; sorted here) to `out` in one streaming pass.
///
/// Pass `&mut file` to keep the file; the output is flushed, not synced.
pub fn write_layer<W: Write>(
    mut entries: Vec<LayerEntry>,
    opts: &WriteOptions,
    out: W,
) -> Result<WrittenLayer, LayerError> {
    for e in &mut entries {
        e.path = normalize_layer_path(&e.path)?;
    }
    entries.sort_by(|a, b| compare_layer_paths(&a.path, &b.path));
    let mut w = LayerWriter::new(out, opts)?;
    for e in &entries {
        w.append(e)?;
    }
    Ok(w.finish()?.0)
}

/// Size of the blocks [`compress_tar`] feeds the compressor.
const COMPRESS_BLOCK: usize = 128 * 1024;

/// Compresses a tar that already exists (read from `tar`, uncompressed) into `out` in one pass,
/// through the same pipeline as [`LayerWriter`]: sha256 of the tar (diffID), compression as
/// `opts.compression` says (same settings), sha256 and size of the blob (digest). The tar is
/// taken as it is (`opts.source_date_epoch` is not used); `out` is flushed, not synced.
///
/// The tar is fed to the compressor in fixed 128 KiB blocks, however `tar` splits its reads:
/// gzip's output depends on how its input is cut into writes, so this keeps the blob a function
/// of the tar bytes and the compression alone. [`LayerWriter`] cuts its writes differently, so
/// for a tar over 128 KiB the gzip blob made here can differ from the one [`write_layer`] makes
/// of the same entries (same diffID; zstd blobs are the same).
pub fn compress_tar<R: Read, W: Write>(
    mut tar: R,
    opts: &WriteOptions,
    out: W,
) -> Result<WrittenLayer, LayerError> {
    let mut pipeline = pipeline(out, opts)?;
    let mut block = vec![0u8; COMPRESS_BLOCK];
    loop {
        // Fill a whole block (or reach the end), then write it at once.
        let mut filled = 0;
        while filled < block.len() {
            match tar.read(&mut block[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(LayerError::stream("reading the tar", e)),
            }
        }
        if filled > 0 {
            pipeline
                .write_all(&block[..filled])
                .map_err(|e| LayerError::stream("writing the layer", e))?;
        }
        if filled < block.len() {
            break;
        }
    }
    Ok(finish_pipeline(pipeline, opts.compression.media_type())?.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<LayerEntry> {
        vec![
            LayerEntry::file("b/file.txt", b"hello\n".to_vec(), 0o644).with_mtime(1_700_000_000),
            LayerEntry::dir("b", 0o755).with_mtime(1_700_000_000),
            LayerEntry::symlink("a-link", "b/file.txt"),
            LayerEntry::file("b/big", vec![7u8; 3000], 0o4755).with_owner(3_000_000, 7),
            LayerEntry::whiteout("gone"),
        ]
    }

    fn write(
        entries: Vec<LayerEntry>,
        c: Compression,
        epoch: Option<i64>,
    ) -> (WrittenLayer, Vec<u8>) {
        let opts = WriteOptions {
            compression: c,
            source_date_epoch: epoch,
            zstd_workers: 2,
        };
        let mut out = Vec::new();
        let w = write_layer(entries, &opts, &mut out).unwrap();
        (w, out)
    }

    #[test]
    fn uncompressed_digests_match() {
        let (w, tar) = write(sample(), Compression::Uncompressed, None);
        assert_eq!(w.diff_id.as_bytes(), w.digest.as_bytes());
        assert_eq!(w.diff_id, DiffId::of(&tar));
        assert_eq!(w.size, tar.len() as u64);
        assert_eq!(w.uncompressed_size, tar.len() as u64);
        assert_eq!(w.media_type, MEDIA_TYPE_LAYER_TAR);
        assert_eq!(tar.len() % 512, 0);
        assert!(tar[tar.len() - 1024..].iter().all(|&b| b == 0));
    }

    #[test]
    fn reads_back_with_tar_crate_in_order() {
        let (_, tar) = write(sample(), Compression::Uncompressed, None);
        let mut a = tar::Archive::new(&tar[..]);
        let mut got = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let p = String::from_utf8(e.path_bytes().into_owned()).unwrap();
            let uid = match e.pax_extensions().unwrap() {
                Some(exts) => exts
                    .filter_map(Result::ok)
                    .find(|x| x.key() == Ok("uid"))
                    .map(|x| x.value().unwrap().parse::<u64>().unwrap()),
                None => None,
            }
            .unwrap_or(e.header().uid().unwrap());
            got.push((p, e.header().mode().unwrap(), uid));
        }
        assert_eq!(
            got,
            [
                (".wh.gone".to_string(), 0, 0),
                ("a-link".to_string(), 0o777, 0),
                ("b/".to_string(), 0o755, 0),
                ("b/big".to_string(), 0o4755, 3_000_000),
                ("b/file.txt".to_string(), 0o644, 0),
            ]
        );
    }

    #[test]
    fn epoch_clamps_only_later_mtimes() {
        let entries = vec![
            LayerEntry::file("new", b"x".to_vec(), 0o644).with_mtime(2_000_000_000),
            LayerEntry::file("old", b"x".to_vec(), 0o644).with_mtime(1_000),
        ];
        let (_, tar) = write(entries, Compression::Uncompressed, Some(1_500_000_000));
        let mut a = tar::Archive::new(&tar[..]);
        let mtimes: Vec<u64> = a
            .entries()
            .unwrap()
            .map(|e| e.unwrap().header().mtime().unwrap())
            .collect();
        assert_eq!(mtimes, [1_500_000_000, 1_000]);
    }

    #[test]
    fn duplicates_and_bad_roots_are_refused() {
        let opts = WriteOptions::default();
        let dup = vec![LayerEntry::dir("a", 0o755), LayerEntry::dir("/a/", 0o755)];
        assert!(matches!(
            write_layer(dup, &opts, io::sink()),
            Err(LayerError::Order { .. })
        ));
        let root_file = vec![LayerEntry::file("/", b"".to_vec(), 0o644)];
        assert!(matches!(
            write_layer(root_file, &opts, io::sink()),
            Err(LayerError::Invalid { .. })
        ));
        let mut w = LayerWriter::new(io::sink(), &opts).unwrap();
        w.append(&LayerEntry::dir("b", 0o755)).unwrap();
        assert!(matches!(
            w.append(&LayerEntry::dir("a", 0o755)),
            Err(LayerError::Order { .. })
        ));
    }

    #[test]
    fn link_keys_fold_into_hardlinks() {
        let mut a = LayerEntry::file("z", b"same".to_vec(), 0o644);
        a.link_key = Some((1, 42));
        let mut b = LayerEntry::file("a", b"same".to_vec(), 0o644);
        b.link_key = Some((1, 42));
        let (_, tar) = write(vec![a, b], Compression::Uncompressed, None);
        let mut ar = tar::Archive::new(&tar[..]);
        let v: Vec<(String, tar::EntryType, Option<String>, u64)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                    e.size(),
                )
            })
            .collect();
        assert_eq!(
            v,
            [
                ("a".into(), tar::EntryType::Regular, None, 4),
                ("z".into(), tar::EntryType::Link, Some("a".into()), 0),
            ]
        );
    }

    #[test]
    fn compressed_blobs_are_deterministic_and_decode_to_the_tar() {
        let (plain, tar) = write(sample(), Compression::Uncompressed, None);
        for c in [
            Compression::gzip(),
            Compression::zstd(),
            Compression::Gzip(1),
        ] {
            let (w1, b1) = write(sample(), c, None);
            let (w2, b2) = write(sample(), c, None);
            assert_eq!(b1, b2, "{c:?}");
            assert_eq!(w1, w2);
            assert_eq!(w1.diff_id, plain.diff_id, "{c:?}");
            assert_eq!(w1.digest, LayerDigest::of(&b1));
            assert_eq!(w1.size, b1.len() as u64);
            assert_eq!(w1.media_type, c.media_type());
            let mut dec = Vec::new();
            match c {
                Compression::Gzip(_) => {
                    assert_eq!(&b1[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, b1[8], 255]);
                    flate2::read::GzDecoder::new(&b1[..])
                        .read_to_end(&mut dec)
                        .unwrap();
                }
                Compression::Zstd(_) => {
                    zstd::stream::read::Decoder::new(&b1[..])
                        .unwrap()
                        .read_to_end(&mut dec)
                        .unwrap();
                }
                Compression::Uncompressed => unreachable!(),
            };
            assert_eq!(dec, tar);
        }
    }

    #[test]
    fn zstd_bytes_do_not_depend_on_worker_count() {
        let big: Vec<LayerEntry> = (0..40)
            .map(|i| {
                let data: Vec<u8> = (0..200_000u32)
                    .map(|j| ((j * 31 + i * 7) % 251) as u8 ^ (j >> 9) as u8)
                    .collect();
                LayerEntry::file(format!("f{i}"), data, 0o644)
            })
            .collect();
        let mut outs = Vec::new();
        for workers in [1, 2, 4] {
            let opts = WriteOptions {
                compression: Compression::zstd(),
                source_date_epoch: None,
                zstd_workers: workers,
            };
            let mut out = Vec::new();
            write_layer(big.clone(), &opts, &mut out).unwrap();
            outs.push(out);
        }
        assert_eq!(outs[0], outs[1]);
        assert_eq!(outs[1], outs[2]);
    }

    #[test]
    fn compress_tar_matches_the_writer_on_a_small_tar() {
        let (_, tar) = write(sample(), Compression::Uncompressed, None);
        for c in [
            Compression::gzip(),
            Compression::zstd(),
            Compression::Uncompressed,
        ] {
            let (w, blob) = write(sample(), c, None);
            let opts = WriteOptions {
                compression: c,
                source_date_epoch: None,
                zstd_workers: 2,
            };
            let mut out = Vec::new();
            assert_eq!(compress_tar(&tar[..], &opts, &mut out).unwrap(), w);
            assert_eq!(out, blob, "{c:?}");
        }
        let bad = WriteOptions {
            compression: Compression::Gzip(10),
            ..WriteOptions::default()
        };
        assert!(matches!(
            compress_tar(&tar[..], &bad, io::sink()),
            Err(LayerError::CompressionLevel { .. })
        ));
    }

    #[test]
    fn bad_levels_are_refused() {
        for c in [Compression::Gzip(10), Compression::Zstd(99)] {
            let opts = WriteOptions {
                compression: c,
                ..WriteOptions::default()
            };
            assert!(matches!(
                LayerWriter::new(io::sink(), &opts),
                Err(LayerError::CompressionLevel { .. })
            ));
        }
    }
}
