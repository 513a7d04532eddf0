//! The on-disk metadata index of [`super::digest`]: relative path → what `lstat` said when the
//! entry was last hashed → what hashing found. One file per context directory, named by the
//! sha256 of the directory's canonical path, under a directory the caller chooses.
//!
//! Format (all integers big-endian): `KILNCIX1`, the canonical context path, the entry count,
//! the entries, then the sha256 of everything before it. A file whose checksum, magic, path or
//! length does not add up is ignored as a whole (and rebuilt), never trusted in part.
//!
//! Writes go to a temporary file in the same directory, renamed over the old one: two builds
//! writing at once leave one whole index (the last rename wins), never a torn one.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

const MAGIC: &[u8; 8] = b"KILNCIX1";

/// What `lstat` says about an entry; any difference means "hash it again". Never part of a
/// digest: only a sign that the content may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StatKey {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    /// `st_mode`, file type bits included.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl StatKey {
    pub fn of(md: &fs::Metadata) -> StatKey {
        StatKey {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: md.mtime().saturating_mul(1_000_000_000) + md.mtime_nsec(),
            ctime_ns: md.ctime().saturating_mul(1_000_000_000) + md.ctime_nsec(),
            mode: md.mode(),
            uid: md.uid(),
            gid: md.gid(),
        }
    }
}

/// A cached directory roll-up: valid for the filter and `--chown` override it was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rollup {
    /// sha256 of [`ContextFilter::fingerprint`](super::ContextFilter::fingerprint).
    pub filter: [u8; 32],
    pub owner: Option<(u32, u32)>,
    pub digest: [u8; 32],
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IndexEntry {
    pub key: StatKey,
    /// Files: the content's sha256; symlinks: the target's; others: the device number's.
    pub extra: [u8; 32],
    /// sha256 of the digested extended attributes.
    pub xattrs: [u8; 32],
    /// Directories only.
    pub rollup: Option<Rollup>,
}

/// What became of the index file when it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexState {
    /// No index directory was given.
    Disabled,
    /// There was no index file yet.
    Missing,
    /// Read and verified.
    Loaded,
    /// Unreadable, torn or corrupt: ignored, to be rebuilt.
    Corrupt,
}

#[derive(Debug)]
pub(crate) struct Index {
    pub entries: HashMap<Vec<u8>, IndexEntry>,
    /// The index file's own mtime (seconds), as the file system stamped it.
    written_sec: Option<i64>,
    pub state: IndexState,
}

impl Index {
    pub fn empty(state: IndexState) -> Index {
        Index {
            entries: HashMap::new(),
            written_sec: None,
            state,
        }
    }

    /// Git's "racy" rule: an entry stamped in the same second as the index write, or later, may
    /// have changed again after it was hashed without its times moving (timestamps are coarse:
    /// a clock tick, or a whole second on some file systems), so it is hashed again. BuildKit's
    /// contenthash has no such rule and trusts equal stat data. Seconds rather than
    /// nanoseconds: the context and the index may live on file systems with different
    /// timestamp granularity.
    pub fn is_racy(&self, key: &StatKey) -> bool {
        match self.written_sec {
            None => true,
            Some(w) => {
                key.mtime_ns.div_euclid(1_000_000_000) >= w
                    || key.ctime_ns.div_euclid(1_000_000_000) >= w
            }
        }
    }

    /// Reads the index of `context` (canonical) from `dir`. Anything wrong with the file gives
    /// an empty index in state `Corrupt`; racy entries are dropped right away, so that a later
    /// write (with a newer time) cannot make them look trustworthy (git "smudges" them).
    pub fn load(dir: &Path, context: &Path) -> Index {
        let path = index_path(dir, context);
        let (bytes, md) = match fs::read(&path).and_then(|b| Ok((b, fs::metadata(&path)?))) {
            Ok(x) => x,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Index::empty(IndexState::Missing);
            }
            Err(_) => return Index::empty(IndexState::Corrupt),
        };
        let Some(entries) = decode(&bytes, context) else {
            return Index::empty(IndexState::Corrupt);
        };
        let mut index = Index {
            entries,
            written_sec: Some(md.mtime()),
            state: IndexState::Loaded,
        };
        let racy: Vec<Vec<u8>> = index
            .entries
            .iter()
            .filter(|(_, e)| index.is_racy(&e.key))
            .map(|(k, _)| k.clone())
            .collect();
        for k in racy {
            index.entries.remove(&k);
        }
        index
    }

    /// Writes the whole index atomically (temporary file + rename).
    pub fn save(&self, dir: &Path, context: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)?;
        let bytes = encode(&self.entries, context);
        let mut tmp = tempfile::Builder::new()
            .prefix(".ctxindex-")
            .tempfile_in(dir)?;
        tmp.write_all(&bytes)?;
        tmp.flush()?;
        tmp.persist(index_path(dir, context)).map_err(|e| e.error)?;
        Ok(())
    }
}

/// `<dir>/<sha256 of the canonical context path>.idx`.
pub(crate) fn index_path(dir: &Path, context: &Path) -> PathBuf {
    let name = hex::encode(Sha256::digest(context.as_os_str().as_bytes()));
    dir.join(format!("{name}.idx"))
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_u32(out, b.len() as u32);
    out.extend_from_slice(b);
}

fn encode(entries: &HashMap<Vec<u8>, IndexEntry>, context: &Path) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + entries.len() * 200);
    out.extend_from_slice(MAGIC);
    put_bytes(&mut out, context.as_os_str().as_bytes());
    put_u64(&mut out, entries.len() as u64);
    for (path, e) in entries {
        put_bytes(&mut out, path);
        let k = &e.key;
        put_u64(&mut out, k.dev);
        put_u64(&mut out, k.ino);
        put_u64(&mut out, k.size);
        put_u64(&mut out, k.mtime_ns as u64);
        put_u64(&mut out, k.ctime_ns as u64);
        put_u32(&mut out, k.mode);
        put_u32(&mut out, k.uid);
        put_u32(&mut out, k.gid);
        out.extend_from_slice(&e.extra);
        out.extend_from_slice(&e.xattrs);
        match &e.rollup {
            None => out.push(0),
            Some(r) => {
                out.push(1);
                out.extend_from_slice(&r.filter);
                match r.owner {
                    None => out.push(0),
                    Some((u, g)) => {
                        out.push(1);
                        put_u32(&mut out, u);
                        put_u32(&mut out, g);
                    }
                }
                out.extend_from_slice(&r.digest);
            }
        }
    }
    let sum = Sha256::digest(&out);
    out.extend_from_slice(&sum);
    out
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn digest(&mut self) -> Option<[u8; 32]> {
        self.take(32)?.try_into().ok()
    }
}

fn decode(bytes: &[u8], context: &Path) -> Option<HashMap<Vec<u8>, IndexEntry>> {
    let body_len = bytes.len().checked_sub(32)?;
    let (body, sum) = bytes.split_at(body_len);
    if Sha256::digest(body).as_slice() != sum {
        return None;
    }
    let mut r = Reader { buf: body };
    if r.take(MAGIC.len())? != MAGIC || r.bytes()? != context.as_os_str().as_bytes() {
        return None;
    }
    let count = r.u64()?;
    // Each entry takes at least 125 bytes: a count beyond that is a lie, not an allocation.
    let mut entries = HashMap::with_capacity((count as usize).min(body.len() / 125));
    for _ in 0..count {
        let path = r.bytes()?.to_vec();
        let key = StatKey {
            dev: r.u64()?,
            ino: r.u64()?,
            size: r.u64()?,
            mtime_ns: r.u64()? as i64,
            ctime_ns: r.u64()? as i64,
            mode: r.u32()?,
            uid: r.u32()?,
            gid: r.u32()?,
        };
        let extra = r.digest()?;
        let xattrs = r.digest()?;
        let rollup = match r.u8()? {
            0 => None,
            1 => {
                let filter = r.digest()?;
                let owner = match r.u8()? {
                    0 => None,
                    1 => Some((r.u32()?, r.u32()?)),
                    _ => return None,
                };
                Some(Rollup {
                    filter,
                    owner,
                    digest: r.digest()?,
                })
            }
            _ => return None,
        };
        entries.insert(
            path,
            IndexEntry {
                key,
                extra,
                xattrs,
                rollup,
            },
        );
    }
    r.buf.is_empty().then_some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HashMap<Vec<u8>, IndexEntry> {
        let key = StatKey {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 4,
            ctime_ns: 5,
            mode: 0o100644,
            uid: 6,
            gid: 7,
        };
        let mut m = HashMap::new();
        m.insert(
            b"a/f\xff".to_vec(),
            IndexEntry {
                key,
                extra: [1; 32],
                xattrs: [2; 32],
                rollup: None,
            },
        );
        m.insert(
            b"a".to_vec(),
            IndexEntry {
                key,
                extra: [0; 32],
                xattrs: [3; 32],
                rollup: Some(Rollup {
                    filter: [4; 32],
                    owner: Some((1, 2)),
                    digest: [5; 32],
                }),
            },
        );
        m
    }

    /// Times in the index's write second, or later, are racy; a nanosecond before it is not.
    #[test]
    fn racy_is_decided_in_whole_seconds() {
        let mut index = Index::empty(IndexState::Loaded);
        let key = |m: i64, c: i64| StatKey {
            mtime_ns: m,
            ctime_ns: c,
            ..sample()[&b"a".to_vec()].key
        };
        assert!(
            index.is_racy(&key(0, 0)),
            "no write time: nothing is trusted"
        );
        index.written_sec = Some(100);
        let s = 1_000_000_000;
        assert!(!index.is_racy(&key(99 * s + 999_999_999, 99 * s)));
        assert!(index.is_racy(&key(100 * s, 99 * s)), "same second, mtime");
        assert!(index.is_racy(&key(100 * s + 500, 99 * s)));
        assert!(
            index.is_racy(&key(99 * s, 100 * s + 1)),
            "same second, ctime"
        );
        assert!(index.is_racy(&key(99 * s, 101 * s)));
    }

    #[test]
    fn round_trip() {
        let ctx = Path::new("/ctx");
        let m = sample();
        assert_eq!(decode(&encode(&m, ctx), ctx), Some(m));
    }

    #[test]
    fn any_damage_is_refused() {
        let ctx = Path::new("/ctx");
        let bytes = encode(&sample(), ctx);
        // Every truncation and every single-byte flip.
        for n in 0..bytes.len() {
            assert_eq!(decode(&bytes[..n], ctx), None, "truncated at {n}");
            let mut b = bytes.clone();
            b[n] ^= 0x40;
            assert_eq!(decode(&b, ctx), None, "flipped byte {n}");
        }
        // Another context's index is not this one's.
        assert_eq!(decode(&bytes, Path::new("/other")), None);
    }
}
