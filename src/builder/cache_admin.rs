//! `kiln cache ls|du|prune|stats`: what the step cache holds, how much it takes, removing
//! records by age, size or all at once, and how well it served the last builds. Removing a
//! record frees its layers at the next prune of the store (done here right after), unless an
//! image or another record still uses them.

use std::time::Duration;

use serde::Serialize;

use crate::cache::{CacheError, CacheRecord, Index, PrunePolicy};
use crate::image::Store;

use super::prune::{PruneError, PruneReport};

/// One record as `kiln cache ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CacheEntry {
    pub key: String,
    /// `run`, `copy`, `mkdir`.
    pub kind: String,
    /// A short description of the step (a RUN's command, a COPY's sources and destination).
    pub step: String,
    pub layers: usize,
    pub bytes: u64,
    pub created: i64,
    pub last_used: i64,
}

/// Why a cache command failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheAdminError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Prune(#[from] PruneError),
}

/// The records, most recently used first.
pub fn list(store: &Store) -> Result<Vec<CacheEntry>, CacheAdminError> {
    let index = Index::open(store.root())?;
    let mut records = index.list()?;
    records.sort_by(|a, b| b.last_used.cmp(&a.last_used).then(a.key.cmp(&b.key)));
    Ok(records.iter().map(entry).collect())
}

fn entry(r: &CacheRecord) -> CacheEntry {
    let op = &r.document.step["op"];
    let (kind, step) = match op.as_object().and_then(|o| o.iter().next()) {
        Some((kind, body)) => (kind.clone(), describe(kind, body)),
        None => ("?".into(), String::new()),
    };
    CacheEntry {
        key: r.key.to_string(),
        kind,
        step,
        layers: r.result.layers.len(),
        bytes: r.bytes,
        created: r.created,
        last_used: r.last_used,
    }
}

fn describe(kind: &str, body: &serde_json::Value) -> String {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    let text = match kind {
        "run" => strings(&body["argv"]).join(" "),
        "copy" => {
            let mut words = strings(&body["sources"]);
            words.push(body["dest"].as_str().unwrap_or_default().to_string());
            words.join(" ")
        }
        "mkdir" => body["path"].as_str().unwrap_or_default().to_string(),
        _ => String::new(),
    };
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// `kiln cache du`: how many records and the bytes of their layers (a layer two records
/// share is counted once).
pub fn usage(store: &Store) -> Result<(usize, u64), CacheAdminError> {
    let index = Index::open(store.root())?;
    let records = index.list()?;
    let mut seen = std::collections::BTreeSet::new();
    let bytes = records
        .iter()
        .flat_map(|r| &r.result.layers)
        .filter(|l| seen.insert(l.digest().to_string()))
        .map(|l| l.size())
        .sum();
    Ok((records.len(), bytes))
}

/// What `kiln cache prune` removed.
#[derive(Debug, Clone, Copy)]
pub struct CachePruneReport {
    pub records: u64,
    pub store: PruneReport,
}

impl std::fmt::Display for CachePruneReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "removed {} cache records; {}", self.records, self.store)
    }
}

/// `kiln cache prune`: removes the records `policy` picks (least recently used first), then
/// prunes the store so their layers go unless something else uses them. Call it after
/// [`enter_namespaces`](super::host::enter_namespaces), as [`prune`](super::prune::prune).
pub fn prune(
    store: &Store,
    all: bool,
    until: Option<Duration>,
    keep_storage: Option<u64>,
) -> Result<CachePruneReport, CacheAdminError> {
    let index = Index::open(store.root())?;
    let records = index.list()?;
    let policy = PrunePolicy {
        all,
        until,
        keep_storage,
    };
    let chosen = policy.select(&records, crate::image::config::now_unix());
    let removed = index.remove(&chosen)?;
    index.sweep_selections()?;
    let store = super::prune::prune(store)?;
    Ok(CachePruneReport {
        records: removed.records,
        store,
    })
}

/// `kiln cache stats`: the hit rate of each build and overall, the time hits saved, and the
/// steps that miss most often and why.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStats {
    pub builds: Vec<BuildSummary>,
    pub overall: Overall,
    /// Most misses first (at most 10).
    pub most_missed: Vec<MissedStep>,
}

/// One build in [`CacheStats`]. Steps are those with a key: FROM and config-only steps are
/// not counted.
#[derive(Debug, Clone, Serialize)]
pub struct BuildSummary {
    pub time: i64,
    pub dockerfile: String,
    pub image: String,
    pub steps: usize,
    pub hits: usize,
    /// `hits / steps` (1 when there are no steps).
    pub hit_rate: f64,
    pub seconds: f64,
    pub saved_seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Overall {
    pub builds: usize,
    pub steps: usize,
    pub hits: usize,
    pub hit_rate: f64,
    pub saved_seconds: f64,
}

/// A step (by Dockerfile and location) that missed, with its reasons, most frequent first.
#[derive(Debug, Clone, Serialize)]
pub struct MissedStep {
    pub dockerfile: String,
    pub location: String,
    pub instruction: String,
    pub misses: usize,
    pub reasons: Vec<(String, usize)>,
}

fn rate(hits: usize, steps: usize) -> f64 {
    if steps == 0 {
        1.0
    } else {
        hits as f64 / steps as f64
    }
}

/// The statistics of the last `last` builds (all when `None`).
pub fn stats(store: &Store, last: Option<usize>) -> Result<CacheStats, CacheAdminError> {
    let index = Index::open(store.root())?;
    let builds = index.builds(last)?;
    let mut missed: std::collections::BTreeMap<(String, String), MissedStep> = Default::default();
    for b in &builds {
        for s in b.steps.iter().filter(|s| !s.cached) {
            let m = missed
                .entry((b.dockerfile.clone(), s.location.clone()))
                .or_insert_with(|| MissedStep {
                    dockerfile: b.dockerfile.clone(),
                    location: s.location.clone(),
                    instruction: s.instruction.clone(),
                    misses: 0,
                    reasons: Vec::new(),
                });
            m.misses += 1;
            m.instruction = s.instruction.clone();
            let reason = s.reason.clone().unwrap_or_default();
            match m.reasons.iter_mut().find(|(r, _)| *r == reason) {
                Some((_, n)) => *n += 1,
                None => m.reasons.push((reason, 1)),
            }
        }
    }
    let mut most_missed: Vec<MissedStep> = missed.into_values().collect();
    for m in &mut most_missed {
        m.reasons.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    }
    most_missed.sort_by(|a, b| b.misses.cmp(&a.misses).then(a.location.cmp(&b.location)));
    most_missed.truncate(10);
    let summaries: Vec<BuildSummary> = builds
        .iter()
        .map(|b| BuildSummary {
            time: b.time,
            dockerfile: b.dockerfile.clone(),
            image: b.image.clone(),
            steps: b.steps.len(),
            hits: b.hits(),
            hit_rate: rate(b.hits(), b.steps.len()),
            seconds: b.seconds,
            saved_seconds: b.saved_seconds(),
        })
        .collect();
    let steps = summaries.iter().map(|b| b.steps).sum();
    let hits = summaries.iter().map(|b| b.hits).sum();
    Ok(CacheStats {
        overall: Overall {
            builds: summaries.len(),
            steps,
            hits,
            hit_rate: rate(hits, steps),
            saved_seconds: summaries.iter().fold(0.0, |a, b| a + b.saved_seconds),
        },
        builds: summaries,
        most_missed,
    })
}

impl std::fmt::Display for CacheStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{:<20}  {:>11}  {:>6}  {:>9}  {:>9}  DOCKERFILE",
            "BUILD", "HITS", "RATE", "SECONDS", "SAVED"
        )?;
        for b in &self.builds {
            writeln!(
                f,
                "{:<20}  {:>11}  {:>5.0}%  {:>9.1}  {:>8.1}s  {}",
                crate::image::config::format_rfc3339(b.time),
                format!("{}/{}", b.hits, b.steps),
                100.0 * b.hit_rate,
                b.seconds,
                b.saved_seconds,
                b.dockerfile
            )?;
        }
        let o = &self.overall;
        writeln!(
            f,
            "overall: {} builds, {}/{} steps cached ({:.0}%), saved ~{:.1} s",
            o.builds,
            o.hits,
            o.steps,
            100.0 * o.hit_rate,
            o.saved_seconds
        )?;
        if !self.most_missed.is_empty() {
            writeln!(f, "most missed:")?;
        }
        for m in &self.most_missed {
            let why: Vec<String> = m
                .reasons
                .iter()
                .take(3)
                .map(|(r, n)| format!("{n}× {r}"))
                .collect();
            writeln!(
                f,
                "  {} {} ({} misses): {}",
                m.location,
                m.instruction,
                m.misses,
                why.join("; ")
            )?;
        }
        Ok(())
    }
}
