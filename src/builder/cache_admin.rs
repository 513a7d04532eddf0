//! `kiln cache ls|du|prune`: what the step cache holds, how much it takes, and removing records
//! by age, size or all at once. Removing a record frees its layers at the next prune of the
//! store (done here right after), unless an image or another record still uses them.

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
    let store = super::prune::prune(store)?;
    Ok(CachePruneReport {
        records: removed.records,
        store,
    })
}
