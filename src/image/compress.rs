//! Compressing an *existing* tar stream (import, load, export with another compression) and
//! hashing what comes out of a decompressor.
//!
//! The compression itself is the layer module's ([`crate::layer::compress_tar`]: the same
//! pipeline and settings as the layer writer); [`compress_tar`] and [`recompress`] adapt it to
//! [`io::Error`]s, and the rest of this file detects and undoes compression.

use std::io::{self, Read, Write};

use crate::layer::{
    self, Compression, DiffId, HashWriter, LayerError, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR,
    MEDIA_TYPE_LAYER_ZSTD, WriteOptions, WrittenLayer,
};

/// The compression of a stream, as detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// gzip magic `1f 8b`.
    Gzip,
    /// zstd magic `28 b5 2f fd`.
    Zstd,
    /// Anything else (taken to be a plain tar).
    None,
}

impl Detected {
    /// Detects the compression from (at least the first 4) bytes ([`layer::Sniffed`] as a
    /// layer sees it: bzip2 or xz is taken to be a plain tar).
    pub fn from_magic(head: &[u8]) -> Detected {
        Detected::from_sniffed(layer::Sniffed::from_head(head))
    }

    fn from_sniffed(s: layer::Sniffed) -> Detected {
        match s.layer() {
            layer::Sniffed::Gzip => Detected::Gzip,
            layer::Sniffed::Zstd => Detected::Zstd,
            _ => Detected::None,
        }
    }

    /// The OCI layer media type of a blob compressed this way.
    pub fn media_type(self) -> &'static str {
        match self {
            Detected::Gzip => MEDIA_TYPE_LAYER_GZIP,
            Detected::Zstd => MEDIA_TYPE_LAYER_ZSTD,
            Detected::None => MEDIA_TYPE_LAYER_TAR,
        }
    }

    /// The compression family of a layer media type (OCI or Docker), if it is a layer type.
    pub fn from_media_type(mt: &str) -> Option<Detected> {
        Some(match mt {
            MEDIA_TYPE_LAYER_TAR
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar" => Detected::None,
            MEDIA_TYPE_LAYER_GZIP
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Detected::Gzip,
            MEDIA_TYPE_LAYER_ZSTD
            | "application/vnd.docker.image.rootfs.diff.tar.zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Detected::Zstd,
            _ => return None,
        })
    }

    /// Whether `c` is this family.
    pub fn matches(self, c: Compression) -> bool {
        matches!(
            (self, c),
            (Detected::Gzip, Compression::Gzip(_))
                | (Detected::Zstd, Compression::Zstd(_))
                | (Detected::None, Compression::Uncompressed)
        )
    }
}

/// Reads the first bytes of `r` and returns a reader of the decompressed stream (gzip, zstd or
/// passed through) and what was detected.
pub fn decompressing_reader<'a, R: Read + 'a>(r: R) -> io::Result<(Box<dyn Read + 'a>, Detected)> {
    let (sniffed, stream) = layer::sniff(r)?;
    let det = Detected::from_sniffed(sniffed);
    let reader = layer::decompress(sniffed.layer(), stream)?;
    Ok((reader, det))
}

/// Compresses the uncompressed tar read from `tar` into `out` in one pass: sha256 of the input
/// (diffID), compression, sha256 and size of the output (digest). `out` is flushed.
///
/// This is [`crate::layer::compress_tar`] (the layer writer's pipeline and settings, zstd with
/// one worker per available CPU) with its errors as [`io::Error`]s. The output depends only on
/// the input bytes and `compression` (the input is fed to the compressor in fixed 128 KiB blocks,
/// however `tar` returns it).
pub fn compress_tar<R: Read, W: Write>(
    tar: R,
    compression: Compression,
    out: W,
) -> io::Result<WrittenLayer> {
    let opts = WriteOptions {
        compression,
        ..WriteOptions::default()
    };
    layer::compress_tar(tar, &opts, out).map_err(|e| match e {
        // Reading the tar, compressing or writing: the I/O error itself.
        LayerError::Stream { source, .. } => source,
        LayerError::CompressionLevel { .. } => {
            io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
        }
        other => io::Error::other(other),
    })
}

/// Recompresses a layer blob (gzip, zstd or plain, detected) to `compression`, in one pass.
pub fn recompress<R: Read, W: Write>(
    blob: R,
    compression: Compression,
    out: W,
) -> io::Result<WrittenLayer> {
    let (tar, _) = decompressing_reader(blob)?;
    compress_tar(tar, compression, out)
}

/// A sink that decompresses what is written to it (compression detected from the first bytes)
/// and hashes the result: the diffID of a layer blob being copied somewhere else.
pub(crate) struct DiffHasher {
    state: DiffState,
}

enum DiffState {
    Head(Vec<u8>),
    Gzip(Box<flate2::write::MultiGzDecoder<HashWriter<io::Sink>>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, HashWriter<io::Sink>>>),
    Plain(HashWriter<io::Sink>),
}

impl DiffHasher {
    pub(crate) fn new() -> Self {
        DiffHasher {
            state: DiffState::Head(Vec::with_capacity(4)),
        }
    }

    fn start(&mut self) -> io::Result<()> {
        if let DiffState::Head(head) = &self.state {
            let head = head.clone();
            let sink = HashWriter::new(io::sink());
            self.state = match Detected::from_magic(&head) {
                Detected::Gzip => {
                    DiffState::Gzip(Box::new(flate2::write::MultiGzDecoder::new(sink)))
                }
                Detected::Zstd => {
                    DiffState::Zstd(Box::new(zstd::stream::write::Decoder::new(sink)?))
                }
                Detected::None => DiffState::Plain(sink),
            };
            self.write_all(&head)?;
        }
        Ok(())
    }

    /// The compression seen, the diffID and the uncompressed size.
    pub(crate) fn finish(mut self) -> io::Result<(Detected, DiffId, u64)> {
        self.start()?;
        let (det, sink) = match self.state {
            DiffState::Gzip(d) => (Detected::Gzip, d.finish()?),
            DiffState::Zstd(mut d) => {
                d.flush()?;
                (Detected::Zstd, d.into_inner())
            }
            DiffState::Plain(s) => (Detected::None, s),
            DiffState::Head(_) => unreachable!("started above"),
        };
        let (h, n, _) = sink.finish();
        Ok((det, DiffId::from_bytes(h), n))
    }
}

impl Write for DiffHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.state {
            DiffState::Head(head) => {
                let take = (4 - head.len()).min(buf.len());
                head.extend_from_slice(&buf[..take]);
                if head.len() == 4 {
                    self.start()?;
                }
                Ok(take)
            }
            DiffState::Gzip(d) => d.write(buf),
            DiffState::Zstd(d) => d.write(buf),
            DiffState::Plain(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{LayerEntry, WriteOptions, write_layer};

    fn sample_tar() -> Vec<u8> {
        let mut out = Vec::new();
        let opts = WriteOptions {
            compression: Compression::Uncompressed,
            ..WriteOptions::default()
        };
        let entries = vec![
            LayerEntry::dir("etc", 0o755),
            LayerEntry::file("etc/hello", b"hello world\n".repeat(1000), 0o644),
        ];
        write_layer(entries, &opts, &mut out).unwrap();
        out
    }

    #[test]
    fn compress_matches_the_layer_writer() {
        let tar = sample_tar();
        for c in [
            Compression::gzip(),
            Compression::zstd(),
            Compression::Uncompressed,
        ] {
            let mut ours = Vec::new();
            let w = compress_tar(&tar[..], c, &mut ours).unwrap();
            let entries = vec![
                LayerEntry::dir("etc", 0o755),
                LayerEntry::file("etc/hello", b"hello world\n".repeat(1000), 0o644),
            ];
            let mut theirs = Vec::new();
            let opts = WriteOptions {
                compression: c,
                ..WriteOptions::default()
            };
            let w2 = write_layer(entries, &opts, &mut theirs).unwrap();
            assert_eq!(ours, theirs, "{c:?}: same bytes as the layer module");
            assert_eq!(w, w2);

            // Recompressing from any form gives the same blob.
            let mut again = Vec::new();
            let w3 = recompress(&ours[..], c, &mut again).unwrap();
            assert_eq!(w3, w);

            let mut dh = DiffHasher::new();
            for chunk in ours.chunks(3) {
                dh.write_all(chunk).unwrap();
            }
            let (det, diff, n) = dh.finish().unwrap();
            assert!(det.matches(c));
            assert_eq!(diff, w.diff_id);
            assert_eq!(n, tar.len() as u64);
        }
    }

    /// A reader returning at most `n` bytes per read.
    struct Dribble<'a>(&'a [u8], usize);
    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.1.min(buf.len()).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn output_does_not_depend_on_read_sizes() {
        let data: Vec<u8> = (0..700_000u32)
            .map(|i| (i.wrapping_mul(7919) % 251) as u8 ^ (i >> 11) as u8)
            .collect();
        for c in [Compression::gzip(), Compression::zstd()] {
            let mut outs = Vec::new();
            for step in [1 << 20, 8192, 1000, 77] {
                let mut out = Vec::new();
                compress_tar(Dribble(&data, step), c, &mut out).unwrap();
                outs.push(out);
            }
            assert!(outs.windows(2).all(|w| w[0] == w[1]), "{c:?}");
        }
    }

    #[test]
    fn diff_hasher_on_tiny_input() {
        let (det, diff, n) = DiffHasher::new().finish().unwrap();
        assert_eq!(det, Detected::None);
        assert_eq!(diff, DiffId::of(b""));
        assert_eq!(n, 0);
    }
}
