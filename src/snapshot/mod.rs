//! Snapshots: the filesystems a build reads and writes, in containerd's vocabulary, over stacked
//! layer directories.
//!
//! * A **view** ([`Snapshotter::view`]) is a read-only filesystem of a chain of layers (base
//!   first): what COPY/ADD resolve against, what `COPY --from` and `RUN --mount=from=` read. It
//!   is lazy: nothing is mounted, unpacked or materialised until [`Snapshotter::root`] first
//!   asks for its directory (or a RUN prepares on it), and a layer
//!   [`push`](Snapshotter::push)ed onto it costs no remount or unpack until then.
//! * An **active** snapshot ([`Snapshotter::prepare`]) is a writable filesystem on top of a
//!   view, where a RUN runs. [`Snapshotter::changes`] reads what the RUN changed (layer
//!   entries); once the layer is written, [`Snapshotter::commit`] makes it the view's new top
//!   layer, and [`Snapshotter::remove`] discards an active snapshot that made none.
//! * **Committed** snapshots are the layers unpacked once by diffID into
//!   `<store>/snapshots/<diffID>/` ([`SnapshotStore`], shared by every build), removed by
//!   [`SnapshotStore::prune`] and swept by [`sweep_leftovers`].
//!
//! Two implementations, picked once per process ([`Kind`]):
//!
//! * **overlay** (design decision 3, [`overlay`]): a view is an overlay of the chain's
//!   snapshots, mounted read-only in kiln's private mount namespace; an active snapshot is a
//!   fresh upperdir over them, and the finished upperdir *becomes* the new layer's snapshot.
//! * **copy** (the fallback where the kernel refuses overlay, or `KILN_SNAPSHOTTER=copy`,
//!   [`copy`]): a view is a directory with the layers applied; an active snapshot is a full copy
//!   of it, and the layer is the difference between the two trees.
//!
//! The mount system calls are `exec::mount`'s; this module decides what to mount.

mod copy;
mod overlay;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::exec::mount::MountGuard;
use crate::exec::{RootfsSpec, RunReport};
use crate::image::{Descriptor, ImageError, Store};
use crate::layer::{ApplyOptions, ApplyReport, DiffId, DiffOptions, LayerEntry};

pub use copy::{copy_tree, copy_tree_best_effort};
pub use store::{Ensured, ScratchDir, SnapshotStore};

/// Which implementation a build uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Overlay,
    /// With the reason the overlay snapshotter is not used.
    Copy(String),
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Kind::Overlay => write!(f, "overlay (native kernel overlay, stacked snapshots)"),
            Kind::Copy(why) => write!(f, "copy ({why})"),
        }
    }
}

/// Picks the implementation: `KILN_SNAPSHOTTER=copy|overlay` forces one; otherwise overlay when
/// a test mount under `scratch` works.
fn choose(scratch: &Path) -> Kind {
    match std::env::var("KILN_SNAPSHOTTER").as_deref() {
        Ok("copy") => return Kind::Copy("KILN_SNAPSHOTTER=copy".into()),
        Ok("overlay") => return Kind::Overlay,
        _ => {}
    }
    match crate::exec::mount::probe_overlay(scratch) {
        Ok(()) => Kind::Overlay,
        Err(e) => Kind::Copy(format!("the kernel refused an overlay mount: {e}")),
    }
}

/// Errors of the snapshotter, each keeping its cause.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    /// A layer could not be unpacked into its snapshot (or applied to a view's directory).
    #[error("{action} layer {digest}")]
    Unpack {
        action: &'static str,
        digest: String,
        #[source]
        source: crate::layer::LayerError,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let what = what.into();
    move |source| SnapshotError::Io { what, source }
}

/// The snapshotter of one store: its committed snapshots, the implementation in use, and what
/// unpacking layers could not reproduce. Shared by the threads of a build (`Send + Sync`).
pub struct Snapshotter<'a> {
    store: &'a Store,
    snapshots: SnapshotStore,
    kind: Kind,
    apply: ApplyOptions,
    /// `<store>/snapshots/.empty`: the bottom layer of overlay views with fewer than two lowers.
    empty: PathBuf,
    /// What unpacking layers could not reproduce (device nodes a user namespace cannot make):
    /// (layer digest, line), until [`take_warnings`](Snapshotter::take_warnings).
    warnings: Mutex<Vec<(String, String)>>,
}

/// A read-only filesystem of a chain of layers; see the [module](self) documentation. Owned by
/// one stage, readable from any thread.
pub struct View {
    /// The layers' diffIDs, base first.
    diff_ids: Vec<DiffId>,
    // Declared before `dir`: a mount is detached before its directory is removed.
    lazy: Mutex<Lazy>,
    dir: tempfile::TempDir,
}

/// What a [`View`] has done to its directory so far.
#[derive(Default)]
struct Lazy {
    /// overlay: the mount, when one is up.
    mount: Option<MountGuard>,
    /// overlay: the mount (or its absence, for no layer) shows the whole chain.
    fresh: bool,
    /// copy: layers of the chain not applied to the directory yet, base first.
    pending: Vec<Descriptor>,
    /// overlay: layers of the chain whose snapshots are not in the store yet, base first:
    /// unpacked when the view is first mounted or prepared, so a build that only replays
    /// cached layers unpacks nothing.
    unpack: Vec<(Descriptor, DiffId)>,
}

/// A writable filesystem on top of a [`View`], where a RUN runs.
pub struct Active {
    /// What the sandbox mounts as the command's root.
    pub rootfs: RootfsSpec,
    state: ActiveState,
}

enum ActiveState {
    Overlay {
        scratch: ScratchDir,
        upper: PathBuf,
        lowers: Vec<PathBuf>,
        /// What [`Snapshotter::changes`] was told to leave out; the same goes from the snapshot.
        skip: DiffOptions,
    },
    Copy {
        /// The view's directory the copy was made from.
        base: PathBuf,
        dir: tempfile::TempDir,
    },
}

// The builder shares one snapshotter between stage workers.
fn _assert_sync<T: Send + Sync>() {}
fn _assert_send<T: Send>() {}
fn _assertions() {
    _assert_sync::<Snapshotter<'static>>();
    _assert_sync::<View>();
    _assert_send::<Active>();
}

/// Removes the leftovers of killed kiln processes from the store (directories whose owner's
/// lease is gone; [`crate::lease`]), so a kill costs disk only until the next build. Directories
/// of builds that are still running are left alone; when another process is sweeping, this one
/// does not wait. Returns the bytes freed.
pub fn sweep_leftovers(store: &Store) -> Result<u64, SnapshotError> {
    let root = store.root();
    let Some(_sweeping) = crate::lease::try_sweep_lock(root).map_err(io(format!(
        "locking {}",
        root.join("kiln/sweep.lock").display()
    )))?
    else {
        return Ok(0);
    };
    let (_, temp_bytes) = store.sweep_temp(false)?;
    let (_, scratch_bytes) = SnapshotStore::new(root)?.sweep(false)?;
    crate::lease::remove_dead_leases(root);
    Ok(temp_bytes + scratch_bytes)
}

impl<'a> Snapshotter<'a> {
    /// The store's snapshotter, on the implementation [`choose`] picks (probed in the store's
    /// temp directory, so on the file system the snapshots live on). `single_id`: a single-id
    /// user namespace, where layers are applied with best-effort ownership.
    ///
    /// It first removes what killed builds left in the store (their scratch directories, RUN
    /// upper directories and temp files): see [`sweep_leftovers`].
    pub fn new(store: &'a Store, single_id: bool) -> Result<Self, SnapshotError> {
        sweep_leftovers(store)?;
        let probe = crate::lease::tempdir_in(store.root(), store.tmp_dir(), "probe-").map_err(
            io(format!(
                "creating a temporary directory in {}",
                store.tmp_dir().display()
            )),
        )?;
        let kind = choose(probe.path());
        drop(probe);
        Self::with_kind(store, single_id, kind)
    }

    /// The store's snapshotter on the implementation `kind`, without a probe (nor a sweep).
    pub fn with_kind(store: &'a Store, single_id: bool, kind: Kind) -> Result<Self, SnapshotError> {
        let apply = ApplyOptions::for_namespace(single_id);
        let snapshots = SnapshotStore::new(store.root())?.with_apply_options(apply.clone());
        let empty = snapshots.root().join(".empty");
        match std::fs::create_dir(&empty) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(format!("creating {}", empty.display()))(e)),
        }
        Ok(Snapshotter {
            store,
            snapshots,
            kind,
            apply,
            empty,
            warnings: Default::default(),
        })
    }

    /// The implementation in use.
    pub fn kind(&self) -> &Kind {
        &self.kind
    }

    /// The committed snapshots.
    pub fn snapshots(&self) -> &SnapshotStore {
        &self.snapshots
    }

    /// A new directory in the store's temp directory, owned by this process's lease (so the
    /// next build removes it if this one is killed), removed when dropped.
    pub fn tmpdir(&self, prefix: &str) -> Result<tempfile::TempDir, SnapshotError> {
        crate::lease::tempdir_in(self.store.root(), self.store.tmp_dir(), prefix).map_err(io(
            format!(
                "creating a temporary directory in {}",
                self.store.tmp_dir().display()
            ),
        ))
    }

    /// A view of `layers` (with `diff_ids`, base first). Nothing is unpacked or mounted until
    /// [`root`](Self::root) or [`prepare`](Self::prepare).
    pub fn view(&self, layers: &[Descriptor], diff_ids: &[DiffId]) -> Result<View, SnapshotError> {
        let prefix = match self.kind {
            Kind::Overlay => "view-",
            Kind::Copy(_) => "stage-",
        };
        let mut view = View {
            diff_ids: Vec::new(),
            lazy: Mutex::new(Lazy::default()),
            dir: self.tmpdir(prefix)?,
        };
        for (desc, diff_id) in layers.iter().zip(diff_ids) {
            self.push(&mut view, desc, diff_id)?;
        }
        Ok(view)
    }

    /// Adds a layer on top of the view (COPY, ADD, WORKDIR, a replayed cache hit). overlay: a
    /// snapshot not in the store yet is unpacked when the view is next read or prepared; the
    /// view shows the layer from the next [`root`](Self::root) on (a view never read is never
    /// remounted, and a layer never read is never unpacked).
    pub fn push(
        &self,
        view: &mut View,
        desc: &Descriptor,
        diff_id: &DiffId,
    ) -> Result<(), SnapshotError> {
        let lazy = view.lazy.get_mut().unwrap_or_else(|e| e.into_inner());
        match self.kind {
            Kind::Overlay => {
                if !self.snapshots.contains(diff_id) {
                    lazy.unpack.push((desc.clone(), *diff_id));
                }
                lazy.fresh = false;
            }
            Kind::Copy(_) => lazy.pending.push(desc.clone()),
        }
        view.diff_ids.push(*diff_id);
        Ok(())
    }

    /// The view's filesystem as a directory (read-only on overlay): mounted (overlay) or brought
    /// up to date (copy: the layers pushed since are applied) on the first call after a change.
    pub fn root<'v>(&self, view: &'v View) -> Result<&'v Path, SnapshotError> {
        let mut lazy = view.lazy.lock().unwrap_or_else(|e| e.into_inner());
        match self.kind {
            Kind::Overlay => overlay::show(self, view, &mut lazy)?,
            Kind::Copy(_) => copy::show(self, view, &mut lazy)?,
        }
        Ok(view.dir.path())
    }

    /// Prepares a writable filesystem on top of `view`, for a RUN. overlay: a fresh upperdir
    /// over the view's snapshots (the view itself is not mounted); copy: a full copy of the
    /// view's directory.
    pub fn prepare(&self, view: &View) -> Result<Active, SnapshotError> {
        match self.kind {
            Kind::Overlay => overlay::prepare(self, view),
            Kind::Copy(_) => copy::prepare(self, view),
        }
    }

    /// After the RUN (`report`): removes the mount-point stubs it made and reads what it changed
    /// as layer entries, leaving out `skip` (which [`commit`](Self::commit) also leaves out of
    /// the snapshot).
    pub fn changes(
        &self,
        active: &mut Active,
        report: &RunReport,
        skip: DiffOptions,
    ) -> Result<Vec<LayerEntry>, SnapshotError> {
        Ok(match &mut active.state {
            ActiveState::Overlay {
                upper,
                lowers,
                skip: kept,
                ..
            } => {
                report.remove_stubs(upper)?;
                let entries = crate::layer::diff_upperdir(upper, lowers, &skip)?;
                *kept = skip;
                entries
            }
            ActiveState::Copy { base, dir } => {
                report.remove_stubs(dir.path())?;
                crate::layer::diff_trees(base, dir.path(), &skip)?
            }
        })
    }

    /// Makes `active` the view's new top layer `diff_id`: the layer written from its
    /// [`changes`](Self::changes). overlay: the upperdir becomes the layer's snapshot (the view is
    /// remounted when next read); copy: the copy becomes the view's directory.
    pub fn commit(
        &self,
        view: &mut View,
        active: Active,
        diff_id: &DiffId,
    ) -> Result<(), SnapshotError> {
        let lazy = view.lazy.get_mut().unwrap_or_else(|e| e.into_inner());
        match active.state {
            ActiveState::Overlay {
                scratch,
                upper,
                skip,
                ..
            } => {
                self.snapshots.adopt(diff_id, &upper, &skip)?;
                lazy.fresh = false;
                drop(scratch);
            }
            ActiveState::Copy { dir, .. } => {
                // Mount targets masked their paths during the run: outside the stubs (removed
                // already) the copy holds there what the view held.
                debug_assert!(
                    lazy.pending.is_empty(),
                    "prepare brought the view up to date"
                );
                view.dir = dir;
            }
        }
        view.diff_ids.push(*diff_id);
        Ok(())
    }

    /// Discards an active snapshot (a RUN that changed nothing, or `kiln run`).
    pub fn remove(&self, active: Active) -> Result<(), SnapshotError> {
        drop(active);
        Ok(())
    }

    fn note(&self, desc: &Descriptor, report: &ApplyReport) {
        if let Some(w) = report.skipped_devices_warning() {
            let digest = desc.digest().to_string();
            let line = format!("layer {digest}: {w}");
            self.warnings
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((digest, line));
        }
    }

    /// The warnings gathered since the last call, as (layer digest, line).
    pub fn take_warnings(&self) -> Vec<(String, String)> {
        std::mem::take(&mut *self.warnings.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl View {
    /// The layers' diffIDs, base first.
    pub fn diff_ids(&self) -> &[DiffId] {
        &self.diff_ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{LayerEntry, WriteOptions};

    fn layer(store: &Store, name: &str) -> (Descriptor, DiffId) {
        let entries = vec![LayerEntry::file(name, &b"x"[..], 0o644)];
        let (w, desc) = store.put_layer(entries, &WriteOptions::default()).unwrap();
        (desc, w.diff_id)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|d| d.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_copy_view_applies_its_layers_when_first_read() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(t.path()).unwrap();
        let snap = Snapshotter::with_kind(&store, false, Kind::Copy("test".into())).unwrap();
        let (d1, id1) = layer(&store, "a");
        let (d2, id2) = layer(&store, "b");
        let mut view = snap.view(&[d1], &[id1]).unwrap();
        assert!(
            names(view.dir.path()).is_empty(),
            "nothing applied before root"
        );
        snap.push(&mut view, &d2, &id2).unwrap();
        assert!(names(view.dir.path()).is_empty(), "a push applies nothing");
        assert_eq!(view.diff_ids(), [id1, id2]);
        let root = snap.root(&view).unwrap().to_path_buf();
        assert_eq!(names(&root), ["a", "b"]);
        // An active snapshot is a copy of the view; removing it leaves the view as it was.
        let active = snap.prepare(&view).unwrap();
        let RootfsSpec::Dir(dir) = &active.rootfs else {
            panic!("a copy snapshot runs in a directory")
        };
        std::fs::write(dir.join("c"), "c").unwrap();
        snap.remove(active).unwrap();
        assert_eq!(names(snap.root(&view).unwrap()), ["a", "b"]);
    }

    /// The mounts at `dir` in this thread's mount namespace, by mount id.
    fn mounts_at(dir: &Path) -> Vec<String> {
        std::fs::read_to_string("/proc/thread-self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(dir.to_str().unwrap()))
            .map(|l| l.split(' ').next().unwrap().to_string())
            .collect()
    }

    #[test]
    fn an_overlay_view_mounts_and_unpacks_when_first_read_and_a_push_does_not_remount() {
        // A thread of its own: its mount namespace is private to it.
        std::thread::spawn(|| {
            if crate::exec::mount::private_mount_namespace().is_err() {
                eprintln!("SKIP: no mount namespace here (not root)");
                return;
            }
            let t = tempfile::tempdir().unwrap();
            let store = Store::open(t.path()).unwrap();
            let snap = Snapshotter::with_kind(&store, false, Kind::Overlay).unwrap();
            let (d1, id1) = layer(&store, "a");
            let (d2, id2) = layer(&store, "b");
            let mut view = snap.view(&[d1], &[id1]).unwrap();
            let dir = view.dir.path().to_path_buf();
            assert!(
                !snap.snapshots().contains(&id1),
                "nothing unpacked before the view is read"
            );
            assert!(mounts_at(&dir).is_empty(), "nothing mounted before root");
            if snap.root(&view).is_err() {
                eprintln!("SKIP: the kernel refuses overlay here");
                return;
            }
            let first = mounts_at(&dir);
            assert_eq!(first.len(), 1, "{first:?}");
            assert_eq!(names(&dir), ["a"]);
            assert!(snap.snapshots().contains(&id1), "unpacked when first read");
            snap.push(&mut view, &d2, &id2).unwrap();
            assert!(
                !snap.snapshots().contains(&id2),
                "a pushed snapshot is unpacked when next read, not at once"
            );
            // Not remounted: the mount still shows the chain without the new layer.
            assert_eq!(mounts_at(&dir), first, "a push does not remount");
            assert_eq!(names(&dir), ["a"], "a push does not remount");
            assert_eq!(names(snap.root(&view).unwrap()), ["a", "b"]);
            assert_eq!(mounts_at(&dir).len(), 1);
            // A RUN on the view needs no view mount of its own.
            let (d3, id3) = layer(&store, "c");
            let mut next = snap.view(&[], &[]).unwrap();
            snap.push(&mut next, &d3, &id3).unwrap();
            let active = snap.prepare(&next).unwrap();
            assert!(snap.snapshots().contains(&id3), "a RUN's prepare unpacks");
            assert!(mounts_at(next.dir.path()).is_empty());
            snap.remove(active).unwrap();
            drop(view);
            assert!(mounts_at(&dir).is_empty(), "unmounted with the view");
        })
        .join()
        .unwrap();
    }
}
