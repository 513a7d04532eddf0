//! The crate's one compression sniffer: which compression a stream has, from its first bytes,
//! and a reader that undoes it.
//!
//! Layer blobs (applying a layer, loading and exporting images) are gzip, zstd or plain tar;
//! they read any other magic as a plain tar ([`Sniffed::layer`]). ADD's local archives also
//! accept bzip2 and xz (Docker's `DecompressStream`).

use std::io::{self, Read};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
const BZIP2_MAGIC: &[u8] = b"BZh";
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0x00];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// How many leading bytes [`Sniffed::from_head`] needs to tell every format apart (xz's magic
/// is the longest).
pub const SNIFF_LEN: usize = XZ_MAGIC.len();

/// A stream's compression, as its magic bytes say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniffed {
    /// gzip: `1f 8b`.
    Gzip,
    /// zstd: `28 b5 2f fd`.
    Zstd,
    /// bzip2: `BZh`.
    Bzip2,
    /// xz: `fd 37 7a 58 5a 00`.
    Xz,
    /// No known magic: taken to be uncompressed.
    Plain,
}

impl Sniffed {
    /// The compression whose magic `head` starts with (a shorter head than [`SNIFF_LEN`] is
    /// fine: a magic it cannot hold does not match).
    pub fn from_head(head: &[u8]) -> Sniffed {
        if head.starts_with(GZIP_MAGIC) {
            Sniffed::Gzip
        } else if head.starts_with(ZSTD_MAGIC) {
            Sniffed::Zstd
        } else if head.starts_with(BZIP2_MAGIC) {
            Sniffed::Bzip2
        } else if head.starts_with(XZ_MAGIC) {
            Sniffed::Xz
        } else {
            Sniffed::Plain
        }
    }

    /// As a layer blob sees it: OCI layers are gzip, zstd or plain, so bzip2 and xz magic is
    /// read as a plain tar (which then fails as one).
    pub fn layer(self) -> Sniffed {
        match self {
            Sniffed::Gzip | Sniffed::Zstd => self,
            Sniffed::Bzip2 | Sniffed::Xz | Sniffed::Plain => Sniffed::Plain,
        }
    }
}

/// The stream [`sniff`] hands back: the bytes it read, then the rest.
pub type Sniffing<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

/// Reads up to [`SNIFF_LEN`] bytes of `r` (fewer only at its end) and returns what they say
/// with the whole stream, those bytes included. Only reading can fail.
pub fn sniff<R: Read>(mut r: R) -> io::Result<(Sniffed, Sniffing<R>)> {
    let mut head = [0u8; SNIFF_LEN];
    let mut got = 0;
    while got < head.len() {
        match r.read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = &head[..got];
    Ok((
        Sniffed::from_head(head),
        io::Cursor::new(head.to_vec()).chain(r),
    ))
}

/// A reader of `stream` decompressed as `kind` says (multi-member gzip, bzip2 and xz are read
/// to their end). Only starting a zstd decoder can fail.
pub fn decompress<'a, R: Read + 'a>(kind: Sniffed, stream: R) -> io::Result<Box<dyn Read + 'a>> {
    Ok(match kind {
        Sniffed::Gzip => Box::new(flate2::read::MultiGzDecoder::new(stream)),
        Sniffed::Zstd => Box::new(zstd::stream::read::Decoder::new(stream)?),
        Sniffed::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(stream)),
        Sniffed::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(stream)),
        Sniffed::Plain => Box::new(stream),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes() {
        assert_eq!(Sniffed::from_head(&[0x1f, 0x8b, 8]), Sniffed::Gzip);
        assert_eq!(
            Sniffed::from_head(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Sniffed::Zstd
        );
        assert_eq!(Sniffed::from_head(b"BZh91AY"), Sniffed::Bzip2);
        assert_eq!(Sniffed::from_head(b"\xfd7zXZ\x00\x00"), Sniffed::Xz);
        // Too short for the magic it starts like.
        assert_eq!(Sniffed::from_head(&[0x28, 0xb5, 0x2f]), Sniffed::Plain);
        assert_eq!(Sniffed::from_head(b"\xfd7zXZ"), Sniffed::Plain);
        assert_eq!(Sniffed::from_head(&[0x1f]), Sniffed::Plain);
        assert_eq!(Sniffed::from_head(b""), Sniffed::Plain);
        assert_eq!(Sniffed::from_head(b"ustar"), Sniffed::Plain);
    }

    #[test]
    fn layers_know_gzip_and_zstd_only() {
        assert_eq!(Sniffed::Gzip.layer(), Sniffed::Gzip);
        assert_eq!(Sniffed::Zstd.layer(), Sniffed::Zstd);
        assert_eq!(Sniffed::Bzip2.layer(), Sniffed::Plain);
        assert_eq!(Sniffed::Xz.layer(), Sniffed::Plain);
        assert_eq!(Sniffed::Plain.layer(), Sniffed::Plain);
    }

    /// A reader returning one byte per read, with an interruption before each.
    struct Trickle<'a>(&'a [u8], bool);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 = !self.1;
            if self.1 {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.0.len()).min(1);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn sniffing_keeps_every_byte() {
        let data = b"\xfd7zXZ\x00 and the rest".to_vec();
        let (kind, mut s) = sniff(Trickle(&data, false)).unwrap();
        assert_eq!(kind, Sniffed::Xz);
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, data);

        let (kind, mut s) = sniff(&b"ab"[..]).unwrap();
        assert_eq!(kind, Sniffed::Plain);
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, b"ab");
    }

    #[test]
    fn decompresses_each_kind() {
        use std::io::Write;
        let text = b"hello, layers\n".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&text).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::encode_all(&text[..], 3).unwrap();
        let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
        bz.write_all(&text).unwrap();
        let bz = bz.finish().unwrap();
        let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
        xz.write_all(&text).unwrap();
        let xz = xz.finish().unwrap();
        for (blob, want) in [
            (&gz, Sniffed::Gzip),
            (&zs, Sniffed::Zstd),
            (&bz, Sniffed::Bzip2),
            (&xz, Sniffed::Xz),
            (&text, Sniffed::Plain),
        ] {
            let (kind, s) = sniff(&blob[..]).unwrap();
            assert_eq!(kind, want);
            let mut out = Vec::new();
            decompress(kind, s).unwrap().read_to_end(&mut out).unwrap();
            assert_eq!(out, text, "{want:?}");
        }
    }
}
