//! `kiln prune`: blobs of the image store that no image and no step-cache record references,
//! unpacked layers (snapshots) no named image or cached step uses, and what killed processes left behind, under the store's exclusive lock.

use std::fmt;

use crate::image::{ImageError, Store};
use crate::layer::LayerError;
use crate::snapshot::SnapshotStore;

/// What [`prune`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub blobs_removed: u64,
    pub snapshots_removed: usize,
    /// Temp files and directories (the image store's and the snapshot store's scratch).
    pub temp_removed: u64,
    pub bytes_freed: u64,
}

impl fmt::Display for PruneReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "removed {} blobs, {} snapshots and {} leftover temp files/dirs, {} bytes freed",
            self.blobs_removed, self.snapshots_removed, self.temp_removed, self.bytes_freed
        )
    }
}

/// Why pruning stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PruneError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Snapshot(#[from] LayerError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

/// Prunes the store. Snapshots made in a user namespace hold files of subordinate ids: call it
/// after [`enter_namespaces`](super::host::enter_namespaces).
pub fn prune(store: &Store) -> Result<PruneReport, PruneError> {
    // The step cache's records are roots: their layers stay (`kiln cache prune` drops records).
    let roots = crate::cache::Index::open(store.root())?.roots()?;
    let images = store.prune_keeping(&roots.blobs)?;
    // Unpacked layers of images that are still named, or of cached steps, stay; the rest is
    // rebuilt on demand.
    let mut keep: Vec<_> = store
        .list()?
        .iter()
        .flat_map(|img| img.config.rootfs.diff_ids.clone())
        .collect();
    keep.extend(roots.diff_ids);
    let snapshots = SnapshotStore::new(store.root())?;
    let ((removed, snapshot_bytes), (scratch, scratch_bytes)) = store.while_exclusive(|| {
        let pruned = snapshots.prune(&keep)?;
        let swept = snapshots.sweep(true)?;
        crate::lease::remove_dead_leases(store.root());
        Ok::<_, LayerError>((pruned, swept))
    })??;
    Ok(PruneReport {
        blobs_removed: images.blobs_removed,
        snapshots_removed: removed.len(),
        temp_removed: images.temp_files_removed + scratch as u64,
        bytes_freed: images.bytes_freed + snapshot_bytes + scratch_bytes,
    })
}
