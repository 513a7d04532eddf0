//! The overlay snapshotter: a view is a read-only overlay of the chain's snapshots, an active
//! snapshot a fresh upperdir over them whose result becomes the new layer's snapshot.

use crate::exec::RootfsSpec;
use crate::exec::mount::mount_overlay;
use crate::image::Descriptor;
use crate::layer::{DiffId, DiffOptions};

use super::{Active, ActiveState, Ensured, Lazy, SnapshotError, Snapshotter, View, io};

/// Unpacks the layer into its snapshot unless the store has it already.
pub(super) fn ensure(
    s: &Snapshotter<'_>,
    desc: &Descriptor,
    diff_id: &DiffId,
) -> Result<(), SnapshotError> {
    let store = s.store;
    let ensured = s
        .snapshots
        .ensure_with_report(diff_id, || {
            store
                .open_blob(desc.digest())
                .map_err(std::io::Error::other)
        })
        .map_err(|source| SnapshotError::Unpack {
            action: "unpacking",
            digest: desc.digest().to_string(),
            source,
        })?;
    // A snapshot is unpacked once per store: what it lacks is said then.
    if let Ensured::Unpacked(_, report) = &ensured {
        s.note(desc, report);
    }
    Ok(())
}

/// Unpacks the snapshots the view's pushes left for later (a failure leaves the rest pending).
fn unpack_pending(s: &Snapshotter<'_>, lazy: &mut Lazy) -> Result<(), SnapshotError> {
    while let Some((desc, diff_id)) = lazy.unpack.first() {
        ensure(s, desc, diff_id)?;
        lazy.unpack.remove(0);
    }
    Ok(())
}

/// Mounts the view over its whole chain, unless it is mounted so already.
pub(super) fn show(s: &Snapshotter<'_>, view: &View, lazy: &mut Lazy) -> Result<(), SnapshotError> {
    if lazy.fresh {
        return Ok(());
    }
    unpack_pending(s, lazy)?;
    if let Some(m) = lazy.mount.take() {
        m.unmount()?;
    }
    let lowers = s.snapshots.lowerdirs(&view.diff_ids);
    // With no layer at all (FROM scratch) the empty directory itself is the view.
    if !lowers.is_empty() {
        lazy.mount = Some(mount_overlay(&lowers, None, &s.empty, view.dir.path())?);
    }
    lazy.fresh = true;
    Ok(())
}

/// A fresh upperdir (and workdir) in the snapshot directory, over the view's snapshots.
pub(super) fn prepare(s: &Snapshotter<'_>, view: &View) -> Result<Active, SnapshotError> {
    unpack_pending(s, &mut view.lazy.lock().unwrap_or_else(|e| e.into_inner()))?;
    let scratch = s.snapshots.scratch()?;
    let upper = scratch.path().join("upper");
    let work = scratch.path().join("work");
    for d in [&upper, &work] {
        std::fs::create_dir(d).map_err(io(format!("creating {}", d.display())))?;
    }
    let lowers = s.snapshots.lowerdirs(&view.diff_ids);
    Ok(Active {
        rootfs: RootfsSpec::Overlay {
            lowerdirs: lowers.clone(),
            upperdir: upper.clone(),
            workdir: work,
        },
        state: ActiveState::Overlay {
            scratch,
            upper,
            lowers,
            skip: DiffOptions::default(),
        },
    })
}
