//! The cache index in the store: one record file per key.
//!
//! ```text
//! ROOT/kiln/cache/records/<hex>.json   a CacheRecord (the key's 64 hex digits)
//! ROOT/kiln/cache/tmp/put-<lease>-*    records being written
//! ```
//!
//! A record is written to a temp file, fsynced, renamed over `<hex>.json` and the directory
//! fsynced, so a reader sees the old record or the new one, whole, and a killed writer leaves at
//! most a temp file. Temp names carry the writer's lease token ([`crate::lease`]), so
//! [`Index::open`] removes the temp files of dead writers without a grace period and never one
//! that a live build is writing. Two builds putting the same key both rename a whole record; the
//! last rename wins (a `--no-cache` build's fresh result replaces the old one).
//!
//! One file per key, not one shared file: a lookup is one open, a put never rewrites other
//! records, and concurrent builds need no lock. A record is read back only if its document
//! hashes to its key, so a damaged or hand-edited record is a miss, never a wrong hit.
//!
//! `last_used` is the record file's mtime: a hit sets it with one `futimens`, without rewriting
//! the record.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::CacheError;
use super::key::{CacheKey, KeyDocument};
use crate::image::{Descriptor, Digest};
use crate::layer::DiffId;

const RECORDS: &str = "kiln/cache/records";
const TMP: &str = "kiln/cache/tmp";
const TMP_PREFIX: &str = "put-";
/// Largest record kiln reads (a COPY's inputs can list many files, but not this many bytes).
const MAX_RECORD: u64 = 64 << 20;

/// What a cached step produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheResult {
    /// The layer blobs the step added, in order (none for a config-only step).
    pub layers: Vec<Descriptor>,
    /// Their diffIDs (the snapshot ids), in the same order.
    pub diff_ids: Vec<DiffId>,
    /// The step's change to the image config (and history), as the builder records it.
    pub config: Value,
    /// The key later steps build on, when not the record's own (a `COPY --from` found by its
    /// stage's key chains on the key of the content it copied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<CacheKey>,
}

/// One entry of the index.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheRecord {
    pub key: CacheKey,
    /// The document `key` is the digest of.
    pub document: KeyDocument,
    pub result: CacheResult,
    /// Unix seconds when the record was written.
    pub created: i64,
    /// Unix seconds of the last hit (or the write). Read from the record file's mtime.
    pub last_used: i64,
    /// Bytes of the result's layer blobs.
    pub bytes: u64,
    /// Seconds the step took when it ran: what a hit saves.
    #[serde(default)]
    pub seconds: f64,
    /// The history time the build that ran the step gave it (Unix seconds; 0 when unknown):
    /// a rebuild that reuses every step takes its newest, so it makes the same image.
    #[serde(default)]
    pub stamp: i64,
}

impl CacheRecord {
    /// A record of `result` for `document`, created and last used at `now` (Unix seconds).
    pub fn new(
        document: KeyDocument,
        result: CacheResult,
        now: i64,
    ) -> Result<CacheRecord, CacheError> {
        Ok(CacheRecord {
            key: document.key()?,
            bytes: result.layers.iter().map(|l| l.size()).sum(),
            document,
            result,
            created: now,
            last_used: now,
            seconds: 0.0,
            stamp: 0,
        })
    }
}

/// What the index's records reference: kept by `kiln prune` (blobs through
/// `image::Store::prune_keeping`, snapshots by diffID).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    /// Layer blob digests, each once, in text order.
    pub blobs: Vec<Digest>,
    /// Layer diffIDs.
    pub diff_ids: BTreeSet<DiffId>,
}

/// What [`Index::remove`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// Records removed (keys that had none are not counted).
    pub records: u64,
    /// Bytes of the removed record files (their blobs go in the store's prune).
    pub file_bytes: u64,
}

/// Which records `kiln cache prune` removes.
///
/// - `all`: every record; the other settings are ignored.
/// - otherwise the candidates are the records not used for at least `until` (every record
///   when `until` is `None`); with `keep_storage`, candidates go least recently used first
///   (then oldest, then by key) only while the bytes of all records exceed it; without it,
///   every candidate goes. With nothing set every record goes: a record is never "dangling",
///   any one may be hit again, so there is no smaller default to fall back to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrunePolicy {
    pub all: bool,
    pub until: Option<Duration>,
    pub keep_storage: Option<u64>,
}

impl PrunePolicy {
    /// The keys of `records` to remove at `now` (Unix seconds).
    pub fn select(&self, records: &[CacheRecord], now: i64) -> Vec<CacheKey> {
        if self.all {
            return records.iter().map(|r| r.key).collect();
        }
        let mut candidates: Vec<&CacheRecord> = records
            .iter()
            .filter(|r| match self.until {
                None => true,
                Some(age) => {
                    let age = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
                    now.saturating_sub(r.last_used) >= age
                }
            })
            .collect();
        let Some(keep) = self.keep_storage else {
            return candidates.iter().map(|r| r.key).collect();
        };
        candidates.sort_by_key(|r| (r.last_used, r.created, r.key));
        let mut total: u64 = records.iter().map(|r| r.bytes).sum();
        let mut out = Vec::new();
        for r in candidates {
            if total <= keep {
                break;
            }
            total = total.saturating_sub(r.bytes);
            out.push(r.key);
        }
        out
    }
}

/// The cache index of one store. See the module documentation.
#[derive(Debug, Clone)]
pub struct Index {
    store_root: PathBuf,
    records: PathBuf,
    tmp: PathBuf,
}

impl Index {
    /// Opens (creating if needed) the index of the store at `store_root`, removing the temp
    /// files of writers that are gone.
    pub fn open(store_root: &Path) -> Result<Index, CacheError> {
        let index = Index {
            store_root: store_root.to_path_buf(),
            records: store_root.join(RECORDS),
            tmp: store_root.join(TMP),
        };
        for d in [&index.records, &index.tmp] {
            fs::create_dir_all(d).map_err(|e| CacheError::io("creating directory", d, e))?;
        }
        index.sweep()?;
        Ok(index)
    }

    /// The directory of the record files.
    pub fn records_dir(&self) -> &Path {
        &self.records
    }

    fn record_path(&self, key: &CacheKey) -> PathBuf {
        self.records.join(format!("{}.json", key.hex()))
    }

    /// The record of `key`, marking it used now; `None` on a miss (no record, or one that
    /// does not verify).
    pub fn get(&self, key: &CacheKey) -> Result<Option<CacheRecord>, CacheError> {
        self.read(key, true)
    }

    /// The record of `key` without marking it used (for listing and explaining).
    pub fn peek(&self, key: &CacheKey) -> Result<Option<CacheRecord>, CacheError> {
        self.read(key, false)
    }

    fn read(&self, key: &CacheKey, touch: bool) -> Result<Option<CacheRecord>, CacheError> {
        let path = self.record_path(key);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::io("opening", &path, e)),
        };
        let Some(mut record) = read_record(&file, &path)? else {
            return Ok(None);
        };
        if record.key != *key {
            return Ok(None);
        }
        if touch {
            let now = SystemTime::now();
            // Best effort: a record kiln cannot touch (another user's store) still hits.
            if file.set_modified(now).is_ok() {
                record.last_used = unix_seconds(now);
            }
        }
        Ok(Some(record))
    }

    /// Writes `record` atomically (see the module documentation). It replaces any record of
    /// the same key.
    pub fn put(&self, record: &CacheRecord) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(record).map_err(|source| CacheError::Record {
            key: record.key,
            source,
        })?;
        self.write_atomic(&self.record_path(&record.key), &bytes, true)
    }

    /// Writes `bytes` to `dest` through a lease-named temp file and a rename, so a reader sees
    /// the old file or the new one, whole, and a killed writer leaves only a temp file that
    /// [`sweep`](Self::sweep) removes. `durable`: fsync the file and its directory.
    pub(crate) fn write_atomic(
        &self,
        dest: &Path,
        bytes: &[u8],
        durable: bool,
    ) -> Result<(), CacheError> {
        let dir = dest.parent().unwrap_or(&self.records);
        fs::create_dir_all(dir).map_err(|e| CacheError::io("creating directory", dir, e))?;
        let token = crate::lease::token(&self.store_root)
            .map_err(|e| CacheError::io("taking a lease in", &self.store_root, e))?;
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}{token}-"))
            .tempfile_in(&self.tmp)
            .map_err(|e| CacheError::io("creating a temp file in", &self.tmp, e))?;
        let tmp_path = tmp.path().to_path_buf();
        tmp.write_all(bytes)
            .and_then(|()| {
                if durable {
                    tmp.as_file().sync_all()
                } else {
                    Ok(())
                }
            })
            .map_err(|e| CacheError::io("writing", &tmp_path, e))?;
        tmp.persist(dest)
            .map_err(|e| CacheError::io("renaming into place", dest, e.error))?;
        if durable { sync_dir(dir) } else { Ok(()) }
    }

    /// The cache's directory in the store (`ROOT/kiln/cache`).
    pub fn dir(&self) -> &Path {
        self.records
            .parent()
            .expect("records live in the cache directory")
    }

    /// Every record that verifies, by key. Files that do not parse or verify are skipped
    /// (each is a miss for its key, and the next put of that key replaces it).
    pub fn list(&self) -> Result<Vec<CacheRecord>, CacheError> {
        let mut out = Vec::new();
        for (key, path) in self.record_files()? {
            let file = match File::open(&path) {
                Ok(f) => f,
                // Removed since the listing (a concurrent prune).
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(CacheError::io("opening", &path, e)),
            };
            if let Some(r) = read_record(&file, &path)?
                && r.key == key
            {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The record files, by key (names that are not `<64 hex>.json` are left alone).
    fn record_files(&self) -> Result<BTreeMap<CacheKey, PathBuf>, CacheError> {
        let rd =
            fs::read_dir(&self.records).map_err(|e| CacheError::io("listing", &self.records, e))?;
        let mut out = BTreeMap::new();
        for ent in rd {
            let ent = ent.map_err(|e| CacheError::io("listing", &self.records, e))?;
            let name = ent.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if let Ok(key) = format!("sha256:{hex}").parse::<CacheKey>() {
                out.insert(key, ent.path());
            }
        }
        Ok(out)
    }

    /// Removes the records of `keys` (missing ones are skipped).
    pub fn remove(&self, keys: &[CacheKey]) -> Result<RemoveReport, CacheError> {
        let mut report = RemoveReport::default();
        for key in keys {
            let path = self.record_path(key);
            let len = fs::symlink_metadata(&path).map(|m| m.len()).unwrap_or(0);
            match fs::remove_file(&path) {
                Ok(()) => {
                    report.records += 1;
                    report.file_bytes += len;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(CacheError::io("removing", &path, e)),
            }
        }
        if report.records > 0 {
            sync_dir(&self.records)?;
        }
        Ok(report)
    }

    /// The blobs and diffIDs the records reference: GC roots for `kiln prune`.
    pub fn roots(&self) -> Result<Roots, CacheError> {
        let mut blobs: BTreeMap<String, Digest> = BTreeMap::new();
        let mut diff_ids = BTreeSet::new();
        for r in self.list()? {
            for l in &r.result.layers {
                blobs.insert(l.digest().to_string(), l.digest().clone());
            }
            diff_ids.extend(r.result.diff_ids.iter().copied());
        }
        Ok(Roots {
            blobs: blobs.into_values().collect(),
            diff_ids,
        })
    }

    /// Removes the temp files of writers that are gone (killed mid-put). Returns how many went.
    /// Safe while other builds write: their leases are alive.
    pub fn sweep(&self) -> Result<u64, CacheError> {
        let rd = fs::read_dir(&self.tmp).map_err(|e| CacheError::io("listing", &self.tmp, e))?;
        let mut removed = 0;
        for ent in rd {
            let ent = ent.map_err(|e| CacheError::io("listing", &self.tmp, e))?;
            let name = ent.file_name();
            let Some(name) = name.to_str() else { continue };
            if crate::lease::owner(&self.store_root, name, TMP_PREFIX).removable(false)
                && fs::remove_file(ent.path()).is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }
}

/// Reads and verifies a record: `None` when it does not parse or its document does not hash to
/// its key. `last_used` is taken from the file's mtime.
fn read_record(file: &File, path: &Path) -> Result<Option<CacheRecord>, CacheError> {
    let md = file
        .metadata()
        .map_err(|e| CacheError::io("reading", path, e))?;
    if md.len() > MAX_RECORD {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(md.len() as usize);
    file.take(MAX_RECORD)
        .read_to_end(&mut bytes)
        .map_err(|e| CacheError::io("reading", path, e))?;
    let Ok(mut record) = serde_json::from_slice::<CacheRecord>(&bytes) else {
        return Ok(None);
    };
    if !record.document.key().is_ok_and(|k| k == record.key) {
        return Ok(None);
    }
    if let Ok(m) = md.modified() {
        record.last_used = unix_seconds(m);
    }
    Ok(Some(record))
}

fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn sync_dir(dir: &Path) -> Result<(), CacheError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| CacheError::io("syncing directory", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::{KeySettings, LayerSettings, Parent};
    use crate::image::MediaType;
    use crate::layer::Compression;
    use serde_json::json;

    fn record(n: u64, layers: &[(&str, u64)]) -> CacheRecord {
        let settings = KeySettings {
            platform: "linux/amd64".into(),
            layer: LayerSettings::new(Compression::gzip(), None),
        };
        let doc = KeyDocument::new(&settings, Parent::Scratch, &json!({ "n": n })).unwrap();
        let result = CacheResult {
            layers: layers
                .iter()
                .map(|(hex_byte, size)| {
                    Descriptor::new(
                        MediaType::ImageLayerGzip,
                        *size,
                        format!("sha256:{}", hex_byte.repeat(64))
                            .parse::<Digest>()
                            .unwrap(),
                    )
                })
                .collect(),
            diff_ids: layers
                .iter()
                .map(|(b, _)| DiffId::of(b.as_bytes()))
                .collect(),
            config: json!({"env": [["N", n.to_string()]]}),
            chain: None,
        };
        CacheRecord::new(doc, result, 1_000).unwrap()
    }

    #[test]
    fn put_get_list_remove() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(t.path()).unwrap();
        let a = record(1, &[("a", 10), ("b", 5)]);
        let b = record(2, &[]);
        assert_eq!(a.bytes, 15);
        assert_eq!(ix.get(&a.key).unwrap(), None);
        ix.put(&a).unwrap();
        ix.put(&b).unwrap();
        let got = ix.peek(&a.key).unwrap().unwrap();
        assert_eq!(got.result, a.result);
        assert_eq!(got.document, a.document);
        let mut keys: Vec<CacheKey> = ix.list().unwrap().iter().map(|r| r.key).collect();
        let mut want = vec![a.key, b.key];
        want.sort();
        keys.sort();
        assert_eq!(keys, want);
        let rep = ix.remove(&[a.key, a.key, CacheKey::of(b"none")]).unwrap();
        assert_eq!(rep.records, 1);
        assert!(rep.file_bytes > 0);
        assert_eq!(ix.get(&a.key).unwrap(), None);
        assert_eq!(ix.list().unwrap().len(), 1);
        // No temp file stays behind after a put.
        assert_eq!(fs::read_dir(t.path().join(TMP)).unwrap().count(), 0);
    }

    #[test]
    fn a_record_that_does_not_verify_is_a_miss() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(t.path()).unwrap();
        let a = record(1, &[("a", 10)]);
        let b = record(2, &[]);
        ix.put(&a).unwrap();
        let path = ix.record_path(&a.key);
        // The document edited: it no longer hashes to the key.
        let text = fs::read_to_string(&path).unwrap();
        fs::write(&path, text.replace(r#""n":1"#, r#""n":7"#)).unwrap();
        assert_eq!(ix.get(&a.key).unwrap(), None);
        // Another key's record under this key's name.
        fs::write(&path, serde_json::to_vec(&b).unwrap()).unwrap();
        assert_eq!(ix.get(&a.key).unwrap(), None);
        // Truncated.
        fs::write(&path, b"{\"key\":").unwrap();
        assert_eq!(ix.get(&a.key).unwrap(), None);
        assert!(ix.list().unwrap().is_empty());
        fs::write(ix.records_dir().join("notes.txt"), "x").unwrap();
        assert!(ix.list().unwrap().is_empty());
        // The next put replaces it.
        ix.put(&a).unwrap();
        assert_eq!(ix.get(&a.key).unwrap().unwrap().key, a.key);
    }

    #[test]
    fn a_hit_updates_last_used_without_rewriting() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(t.path()).unwrap();
        let a = record(1, &[]);
        ix.put(&a).unwrap();
        let path = ix.record_path(&a.key);
        let long_ago = UNIX_EPOCH + Duration::from_secs(1_000_000);
        File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        let before = fs::read(&path).unwrap();
        assert_eq!(ix.peek(&a.key).unwrap().unwrap().last_used, 1_000_000);
        let now = unix_seconds(SystemTime::now());
        let hit = ix.get(&a.key).unwrap().unwrap();
        assert!(hit.last_used >= now, "{} < {now}", hit.last_used);
        assert_eq!(hit.created, 1_000);
        assert!(ix.peek(&a.key).unwrap().unwrap().last_used >= now);
        assert_eq!(fs::read(&path).unwrap(), before);
    }

    #[test]
    fn roots_are_every_referenced_blob_and_diff_id_once() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(t.path()).unwrap();
        ix.put(&record(1, &[("a", 1), ("b", 1)])).unwrap();
        ix.put(&record(2, &[("b", 1), ("c", 1)])).unwrap();
        ix.put(&record(3, &[])).unwrap();
        let roots = ix.roots().unwrap();
        let blobs: Vec<String> = roots.blobs.iter().map(|d| d.to_string()).collect();
        assert_eq!(
            blobs,
            ["a", "b", "c"].map(|b| format!("sha256:{}", b.repeat(64)))
        );
        assert_eq!(roots.diff_ids.len(), 3);
        assert!(roots.diff_ids.contains(&DiffId::of(b"c")));
    }

    fn aged(n: u64, last_used: i64, created: i64, bytes: u64) -> CacheRecord {
        let mut r = record(n, &[]);
        r.last_used = last_used;
        r.created = created;
        r.bytes = bytes;
        r
    }

    #[test]
    fn prune_policy() {
        let now = 100_000;
        let rs = vec![
            aged(1, now - 10, 0, 100),     // recent
            aged(2, now - 7200, 5, 300),   // two hours
            aged(3, now - 86_400, 1, 200), // a day
            aged(4, now - 7200, 2, 50),    // two hours, created before 2
        ];
        let k = |i: usize| rs[i].key;
        let sel = |p: PrunePolicy| p.select(&rs, now);
        assert_eq!(sel(PrunePolicy::default()).len(), 4);
        assert_eq!(
            sel(PrunePolicy {
                all: true,
                until: Some(Duration::from_secs(1 << 40)),
                keep_storage: Some(u64::MAX),
            })
            .len(),
            4
        );
        let hour = Some(Duration::from_secs(3600));
        let mut until = sel(PrunePolicy {
            until: hour,
            ..Default::default()
        });
        until.sort();
        let mut want = vec![k(1), k(2), k(3)];
        want.sort();
        assert_eq!(until, want);
        // 650 bytes in all; keep 400: least recently used first (n=3, then n=4 before n=2, created
        // earlier), until 400 are left.
        assert_eq!(
            sel(PrunePolicy {
                keep_storage: Some(400),
                ..Default::default()
            }),
            vec![k(2), k(3)]
        );
        // Keep 1000: nothing goes.
        assert!(
            sel(PrunePolicy {
                keep_storage: Some(1000),
                ..Default::default()
            })
            .is_empty()
        );
        // Keep 0 among those idle for an hour: the recent one stays.
        assert_eq!(
            sel(PrunePolicy {
                until: hour,
                keep_storage: Some(0),
                ..Default::default()
            }),
            vec![k(2), k(3), k(1)]
        );
    }

    #[test]
    fn dead_writers_temp_files_are_swept_live_ones_kept() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(t.path()).unwrap();
        let tmp = t.path().join(TMP);
        let mine = tmp.join(format!(
            "{TMP_PREFIX}{}-abc",
            crate::lease::token(t.path()).unwrap()
        ));
        let dead = tmp.join(format!("{TMP_PREFIX}1x1-abc"));
        let foreign = tmp.join("something-else");
        for p in [&mine, &dead, &foreign] {
            fs::write(p, "{").unwrap();
        }
        assert_eq!(ix.sweep().unwrap(), 1);
        assert!(mine.exists() && !dead.exists() && foreign.exists());
    }
}
