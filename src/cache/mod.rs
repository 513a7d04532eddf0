//! The build cache: step keys and the index of cached results in the store.
//!
//! - [`key`]: a step's [`CacheKey`] is the sha256 of a canonical JSON [`KeyDocument`] holding
//!   the step's own inputs, its parent's key (a chain), the key-format version, the platform and
//!   the layer-writing settings that change bytes. [`first_difference`] names the first field in
//!   which two documents differ (`step.op.run.argv[2]: "a" → "b"`), for explaining misses.
//! - [`index`]: `<store>/kiln/cache/`, one record file per key (key → layer descriptors,
//!   diffIDs, config change, the key document, created/last-used times, bytes), written
//!   atomically; the digests the records reference are GC roots; [`PrunePolicy`] picks what a
//!   `kiln cache prune` removes.
//! - [`exchange`]: `--cache-to`/`--cache-from type=local`: records and their blobs as an OCI
//!   layout with one image manifest, key documents redacted to per-field digests.
//!
//! - [`history`]: what explains a miss and feeds `kiln cache stats`: the key documents last
//!   seen in each stage, by step position, the per-file digests behind a selection digest, one record per
//!   build.
//!
//! The module takes a step as any `Serialize` value and never names the builder's types: the
//! builder decides what a step's inputs are, this module only hashes, stores and compares them.

pub mod exchange;
pub mod history;
pub mod index;
pub mod key;

use std::path::PathBuf;

pub use exchange::ExchangeError;
pub use history::{BuildStats, Lineage, SelectedFile, StagePlace, StepStats};
pub use index::{CacheRecord, CacheResult, Index, PrunePolicy, RemoveReport, Roots};
pub use key::{
    CacheKey, FieldChange, KEY_FORMAT_VERSION, KeyDocument, KeySettings, LayerSettings, Parent,
    differences, first_difference,
};

/// Errors of the cache module.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file or directory of the index could not be read or written.
    #[error("build cache: {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A step's inputs could not be turned into a canonical document (e.g. a non-integer
    /// number, which has no single canonical form).
    #[error("build cache: the key document of a step cannot be written as canonical JSON")]
    Document(#[source] serde_json::Error),
    /// A record could not be serialised.
    #[error("build cache: writing the record of {key}")]
    Record {
        key: CacheKey,
        #[source]
        source: serde_json::Error,
    },
}

impl CacheError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        CacheError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}
