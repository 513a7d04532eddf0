//! What the cache remembers besides its records, to explain itself:
//!
//! ```text
//! ROOT/kiln/cache/lineage/<hex>      the key documents last seen in a stage, by step position
//! ROOT/kiln/cache/selections/<hex>   the per-file digests behind a selection digest
//! ROOT/kiln/cache/builds/<t>-<n>.json one record per build, for `kiln cache stats`
//! ```
//!
//! A step's *place* is what stays the same from one build of a Dockerfile to the next while its
//! inputs change: the Dockerfile path, the context directory, the stage and the step's position
//! in it. A miss is explained against the document last seen at its place. A stage's places
//! are kept in one file, read when the stage starts and written once when it ends, so a stage
//! of 100,000 steps costs two file operations, not 100,000. These files are
//! local only: they hold plaintext values (build args) that never leave the machine.
//!
//! All writes go through [`Index::write_atomic`]; every read treats a missing or damaged file
//! as "nothing remembered", so at worst an explanation is less precise, never a build fails.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{CacheError, CacheKey, Index, KeyDocument};

const LINEAGE: &str = "lineage";
const SELECTIONS: &str = "selections";
const BUILDS: &str = "builds";
/// How many build records `kiln cache stats` can look back over.
pub const KEPT_BUILDS: usize = 1000;

/// The places of one stage (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagePlace(CacheKey);

impl StagePlace {
    /// The stage `stage` of `dockerfile` built from `context`.
    pub fn new(dockerfile: &str, context: &str, stage: &str) -> StagePlace {
        let id = serde_json::json!([dockerfile, context, stage]);
        StagePlace(CacheKey::of(id.to_string().as_bytes()))
    }
}

/// The key documents last seen in a stage, by step position.
pub type Lineage = Vec<Option<KeyDocument>>;

/// One file of a selection: its path, its digest (both as text) and its permission bits.
pub type SelectedFile = (String, String, u32);

/// One step of a [`BuildStats`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepStats {
    /// `Dockerfile:12`
    pub location: String,
    pub stage: String,
    pub instruction: String,
    pub key: CacheKey,
    pub cached: bool,
    /// Seconds the step took in this build.
    pub seconds: f64,
    /// A hit: the seconds the step took when it ran (what the hit saved).
    pub saved_seconds: f64,
    /// Bytes of the layers reused (a hit) or written (a miss).
    pub bytes: u64,
    /// Why it missed.
    pub reason: Option<String>,
}

/// One build, as `kiln cache stats` reads it. Only steps with a key (those that make or may
/// make a layer) are listed: FROM and config-only steps are not counted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BuildStats {
    /// Unix seconds when the build ended.
    pub time: i64,
    pub dockerfile: String,
    pub context: String,
    /// The image's manifest digest.
    pub image: String,
    pub seconds: f64,
    pub steps: Vec<StepStats>,
}

impl BuildStats {
    pub fn hits(&self) -> usize {
        self.steps.iter().filter(|s| s.cached).count()
    }

    pub fn saved_seconds(&self) -> f64 {
        self.steps.iter().fold(0.0, |a, s| a + s.saved_seconds)
    }
}

impl Index {
    fn lineage_path(&self, place: &StagePlace) -> PathBuf {
        self.dir().join(LINEAGE).join(place.0.hex())
    }

    /// The key documents last seen in the stage at `place` (empty when none are).
    pub fn lineage(&self, place: &StagePlace) -> Lineage {
        fs::read(self.lineage_path(place))
            .ok()
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    /// Remembers `lineage` as the stage's latest (not fsynced: losing it costs only an
    /// explanation).
    pub fn set_lineage(&self, place: &StagePlace, lineage: &Lineage) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(lineage).map_err(CacheError::Document)?;
        self.write_atomic(&self.lineage_path(place), &bytes, false)
    }

    fn selection_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.dir().join(SELECTIONS).join(hex))
    }

    /// Whether the files of the selection `digest` are remembered.
    pub fn has_selection(&self, digest: &str) -> bool {
        self.selection_path(digest).is_some_and(|p| p.exists())
    }

    /// Remembers the files behind the selection `digest` (content-addressed: written once).
    pub fn put_selection(&self, digest: &str, files: &[SelectedFile]) -> Result<(), CacheError> {
        let Some(path) = self.selection_path(digest) else {
            return Ok(());
        };
        if path.exists() {
            return Ok(());
        }
        let bytes = serde_json::to_vec(files).map_err(CacheError::Document)?;
        self.write_atomic(&path, &bytes, false)
    }

    /// The files behind the selection `digest`, when remembered.
    pub fn selection(&self, digest: &str) -> Option<Vec<SelectedFile>> {
        let bytes = fs::read(self.selection_path(digest)?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Removes remembered selections no record's document names (after a prune). Returns how
    /// many went.
    pub fn sweep_selections(&self) -> Result<u64, CacheError> {
        let dir = self.dir().join(SELECTIONS);
        let Ok(rd) = fs::read_dir(&dir) else {
            return Ok(0);
        };
        let mut named = std::collections::BTreeSet::new();
        for r in self.list()? {
            collect_digests(&r.document.inputs, &mut named);
        }
        let mut removed = 0;
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            if !named.contains(&name) && fs::remove_file(ent.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Appends the record of one build, keeping the last [`KEPT_BUILDS`].
    pub fn add_build(&self, build: &BuildStats) -> Result<(), CacheError> {
        self.add_build_keeping(build, KEPT_BUILDS)
    }

    /// Appends the record of one build and removes the oldest beyond the last `keep`.
    pub fn add_build_keeping(&self, build: &BuildStats, keep: usize) -> Result<(), CacheError> {
        let bytes = serde_json::to_vec(build).map_err(CacheError::Document)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{nanos:024}-{}.json", std::process::id());
        let dir = self.dir().join(BUILDS);
        self.write_atomic(&dir.join(name), &bytes, false)?;
        let mut names: Vec<PathBuf> = fs::read_dir(&dir)
            .map_err(|e| CacheError::io("listing", &dir, e))?
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
            .map(|e| e.path())
            .collect();
        if names.len() > keep {
            names.sort();
            for old in &names[..names.len() - keep] {
                // Another build may have removed it already.
                let _ = fs::remove_file(old);
            }
        }
        Ok(())
    }

    /// The last `last` builds (all when `None`), oldest first. Damaged files are skipped.
    pub fn builds(&self, last: Option<usize>) -> Result<Vec<BuildStats>, CacheError> {
        let dir = self.dir().join(BUILDS);
        let rd = match fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(CacheError::io("listing", &dir, e)),
        };
        let mut names: BTreeMap<String, PathBuf> = BTreeMap::new();
        for ent in rd {
            let ent = ent.map_err(|e| CacheError::io("listing", &dir, e))?;
            let name = ent.file_name().to_string_lossy().into_owned();
            if name.ends_with(".json") {
                names.insert(name, ent.path());
            }
        }
        let skip = last.map_or(0, |n| names.len().saturating_sub(n));
        Ok(names
            .into_values()
            .skip(skip)
            .filter_map(|p| serde_json::from_slice(&fs::read(p).ok()?).ok())
            .collect())
    }
}

/// Every `sha256:<hex>` string in `v`, as hex.
fn collect_digests(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
    match v {
        serde_json::Value::String(s) => {
            if let Some(hex) = s.strip_prefix("sha256:") {
                out.insert(hex.to_string());
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_digests(x, out)),
        serde_json::Value::Object(m) => m.values().for_each(|x| collect_digests(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lineage_selections_and_builds_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let ix = Index::open(t.path()).unwrap();
        let place = StagePlace::new("Dockerfile", "/ctx", "0");
        assert_eq!(ix.lineage(&place), Lineage::new());
        let doc = KeyDocument::new(
            &super::super::KeySettings::new(
                &crate::platform::Platform::host(),
                super::super::LayerSettings::new(crate::layer::Compression::gzip(), None),
            ),
            super::super::Parent::Scratch,
            &serde_json::json!({"op": 1}),
        )
        .unwrap();
        let lineage = vec![None, Some(doc)];
        ix.set_lineage(&place, &lineage).unwrap();
        assert_eq!(ix.lineage(&place), lineage);
        assert_eq!(
            ix.lineage(&StagePlace::new("Dockerfile", "/ctx", "1")),
            Lineage::new()
        );

        let d = format!("sha256:{}", "ab".repeat(32));
        let files = vec![("a".to_string(), "x".to_string(), 0o644)];
        ix.put_selection(&d, &files).unwrap();
        assert_eq!(ix.selection(&d), Some(files));
        assert_eq!(ix.selection("sha256:../../etc"), None);
        assert_eq!(ix.sweep_selections().unwrap(), 1, "no record names it");
        assert!(!ix.has_selection(&d));

        for n in 0..3 {
            let b = BuildStats {
                time: n,
                dockerfile: "Dockerfile".into(),
                context: "/ctx".into(),
                image: String::new(),
                seconds: 1.0,
                steps: Vec::new(),
            };
            ix.add_build(&b).unwrap();
        }
        let all = ix.builds(None).unwrap();
        assert_eq!(all.iter().map(|b| b.time).collect::<Vec<_>>(), [0, 1, 2]);
        let last = ix.builds(Some(2)).unwrap();
        assert_eq!(last.iter().map(|b| b.time).collect::<Vec<_>>(), [1, 2]);
        let mut b = all[2].clone();
        b.time = 3;
        ix.add_build_keeping(&b, 2).unwrap();
        let kept = ix.builds(None).unwrap();
        assert_eq!(kept.iter().map(|b| b.time).collect::<Vec<_>>(), [2, 3]);
    }
}
