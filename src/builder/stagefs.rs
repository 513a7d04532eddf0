//! The filesystem of a stage while it builds, on one of two snapshotters.
//!
//! * **overlay** (design decision 3): a stage is the list of its layers' diffIDs. Each layer is
//!   unpacked once into the store's `snapshots/<diffID>/` (shared by every build); a RUN mounts
//!   them as overlay `lowerdir`s under a fresh upperdir, and the finished upperdir *becomes* the new
//!   layer's snapshot. COPY/ADD and `COPY --from` read a read-only overlay *view* of the same
//!   lowerdirs, mounted in kiln's private mount namespace.
//! * **copy** (the fallback where the kernel refuses overlay, or `KILN_SNAPSHOTTER=copy`): a stage
//!   is a materialised directory; a RUN runs in a full copy of it and the layer is the difference
//!   between the two trees.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::exec::mount::{MountGuard, mount_overlay};
use crate::exec::{RootfsSpec, RunReport};
use crate::image::{Descriptor, ImageError, Store};
use crate::layer::{
    ApplyOptions, ApplyReport, DiffId, DiffOptions, Ensured, LayerEntry, Ownership, SnapshotStore,
    apply_layer, diff_trees, diff_upperdir,
};

/// Which snapshotter a build uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Snapshotter {
    Overlay,
    /// With the reason the overlay snapshotter is not used.
    Copy(String),
}

impl std::fmt::Display for Snapshotter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Snapshotter::Overlay => write!(f, "overlay (native kernel overlay, stacked snapshots)"),
            Snapshotter::Copy(why) => write!(f, "copy ({why})"),
        }
    }
}

/// Picks the snapshotter: `KILN_SNAPSHOTTER=copy|overlay` forces one; otherwise overlay when a
/// test mount under `scratch` works.
fn choose(scratch: &Path) -> Snapshotter {
    match std::env::var("KILN_SNAPSHOTTER").as_deref() {
        Ok("copy") => return Snapshotter::Copy("KILN_SNAPSHOTTER=copy".into()),
        Ok("overlay") => return Snapshotter::Overlay,
        _ => {}
    }
    match crate::exec::mount::probe_overlay(scratch) {
        Ok(()) => Snapshotter::Overlay,
        Err(e) => Snapshotter::Copy(format!("the kernel refused an overlay mount: {e}")),
    }
}

/// Errors of the stage filesystem, already phrased for the step that hit them.
#[derive(Debug, thiserror::Error)]
pub enum StageFsError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error(transparent)]
    Exec(#[from] crate::exec::ExecError),
    /// A layer could not be unpacked into its snapshot (or applied to a stage directory).
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

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> StageFsError {
    let what = what.into();
    move |source| StageFsError::Io { what, source }
}

/// The shared machinery: the store, its snapshots, and the snapshotter in use.
pub struct Filesystems<'a> {
    pub store: &'a Store,
    pub snapshots: SnapshotStore,
    pub snapshotter: Snapshotter,
    apply: ApplyOptions,
    /// `<store>/snapshots/.empty`: the bottom layer of views with fewer than two lowers.
    empty: PathBuf,
    /// What unpacking layers could not reproduce (device nodes a user namespace cannot make):
    /// (layer digest, line), until [`take_warnings`](Filesystems::take_warnings).
    warnings: std::sync::Mutex<Vec<(String, String)>>,
}

/// One stage's filesystem.
pub struct StageFs {
    /// The layers' diffIDs, base first.
    pub diff_ids: Vec<DiffId>,
    view: View,
}

enum View {
    // The mount is declared first so it is detached before its directory is removed.
    Overlay {
        mount: Option<MountGuard>,
        dir: tempfile::TempDir,
    },
    Copy {
        dir: tempfile::TempDir,
    },
}

/// What a RUN changed, ready to be written as a layer, and what to do once it is written.
pub struct Changes {
    pub entries: Vec<LayerEntry>,
    pub diff_seconds: f64,
    pending: Pending,
}

enum Pending {
    Overlay {
        scratch: crate::layer::ScratchDir,
        upper: PathBuf,
        skip: DiffOptions,
    },
    Copy {
        dir: tempfile::TempDir,
    },
}

/// A prepared RUN root: where the command runs, and what must stay alive until it is diffed.
pub struct RunRoot {
    pub rootfs: RootfsSpec,
    pending: Pending,
    lowers: Vec<PathBuf>,
}

/// Removes the leftovers of killed kiln processes from the store (directories whose owner's
/// lease is gone; [`crate::lease`]), so a kill costs disk only until the next build. Directories
/// of builds that are still running are left alone; when another process is sweeping, this one
/// does not wait. Returns the bytes freed.
pub fn sweep_leftovers(store: &Store) -> Result<u64, StageFsError> {
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

impl<'a> Filesystems<'a> {
    /// The store's filesystems, on the snapshotter [`choose`] picks (probed in the store's
    /// temp directory, so on the file system the snapshots live on).
    ///
    /// It first removes what killed builds left in the store (their scratch directories, RUN
    /// upper directories and temp files): see [`sweep_leftovers`].
    pub fn new(store: &'a Store, single_id: bool) -> Result<Self, StageFsError> {
        sweep_leftovers(store)?;
        let probe = crate::lease::tempdir_in(store.root(), store.tmp_dir(), "probe-").map_err(
            io(format!(
                "creating a temporary directory in {}",
                store.tmp_dir().display()
            )),
        )?;
        let snapshotter = choose(probe.path());
        drop(probe);
        let apply = ApplyOptions {
            ownership: if single_id {
                Ownership::BestEffort
            } else {
                Ownership::Auto
            },
            ..ApplyOptions::default()
        };
        let snapshots = SnapshotStore::new(store.root())?.with_apply_options(apply.clone());
        let empty = snapshots.root().join(".empty");
        match std::fs::create_dir(&empty) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(format!("creating {}", empty.display()))(e)),
        }
        Ok(Filesystems {
            store,
            snapshots,
            snapshotter,
            apply,
            empty,
            warnings: Default::default(),
        })
    }

    /// A new directory in the store's temp directory, owned by this process's lease (so the
    /// next build removes it if this one is killed), removed when dropped.
    pub fn tmpdir(&self, prefix: &str) -> Result<tempfile::TempDir, StageFsError> {
        crate::lease::tempdir_in(self.store.root(), self.store.tmp_dir(), prefix).map_err(io(
            format!(
                "creating a temporary directory in {}",
                self.store.tmp_dir().display()
            ),
        ))
    }

    /// A stage on `layers` (with `diff_ids`, base first).
    pub fn stage(
        &self,
        layers: &[Descriptor],
        diff_ids: &[DiffId],
    ) -> Result<StageFs, StageFsError> {
        let mut fs = match self.snapshotter {
            Snapshotter::Overlay => StageFs {
                diff_ids: Vec::new(),
                view: View::Overlay {
                    dir: self.tmpdir("view-")?,
                    mount: None,
                },
            },
            Snapshotter::Copy(_) => StageFs {
                diff_ids: Vec::new(),
                view: View::Copy {
                    dir: self.tmpdir("stage-")?,
                },
            },
        };
        for (desc, diff_id) in layers.iter().zip(diff_ids) {
            self.add_layer(&mut fs, desc, diff_id)?;
        }
        self.remount(&mut fs)?;
        Ok(fs)
    }

    fn add_layer(
        &self,
        fs: &mut StageFs,
        desc: &Descriptor,
        diff_id: &DiffId,
    ) -> Result<(), StageFsError> {
        match &fs.view {
            View::Overlay { .. } => {
                let store = self.store;
                let ensured = self
                    .snapshots
                    .ensure_with_report(diff_id, || {
                        store
                            .open_blob(desc.digest())
                            .map_err(|e| std::io::Error::other(e.to_string()))
                    })
                    .map_err(|source| StageFsError::Unpack {
                        action: "unpacking",
                        digest: desc.digest().to_string(),
                        source,
                    })?;
                // A snapshot is unpacked once per store: what it lacks is said then.
                if let Ensured::Unpacked(_, report) = &ensured {
                    self.note(desc, report);
                }
            }
            View::Copy { dir } => {
                let blob = self.store.open_blob(desc.digest())?;
                let report = apply_layer(blob, dir.path(), &self.apply).map_err(|source| {
                    StageFsError::Unpack {
                        action: "applying",
                        digest: desc.digest().to_string(),
                        source,
                    }
                })?;
                self.note(desc, &report);
            }
        }
        fs.diff_ids.push(*diff_id);
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

    /// Adds a layer written on top of the stage (COPY, ADD, WORKDIR) and refreshes the view.
    pub fn push_layer(
        &self,
        fs: &mut StageFs,
        desc: &Descriptor,
        diff_id: &DiffId,
    ) -> Result<(), StageFsError> {
        self.add_layer(fs, desc, diff_id)?;
        self.remount(fs)
    }

    fn remount(&self, fs: &mut StageFs) -> Result<(), StageFsError> {
        let lowers = self.snapshots.lowerdirs(&fs.diff_ids);
        if let View::Overlay { dir, mount } = &mut fs.view {
            if let Some(m) = mount.take() {
                m.unmount()?;
            }
            // With no layer at all (FROM scratch) the empty directory itself is the view.
            if !lowers.is_empty() {
                *mount = Some(mount_overlay(&lowers, None, &self.empty, dir.path())?);
            }
        }
        Ok(())
    }

    /// Prepares the root a RUN runs in.
    pub fn run_root(&self, fs: &StageFs) -> Result<RunRoot, StageFsError> {
        match &fs.view {
            View::Overlay { .. } => {
                let scratch = self.snapshots.scratch()?;
                let upper = scratch.path().join("upper");
                let work = scratch.path().join("work");
                for d in [&upper, &work] {
                    std::fs::create_dir(d).map_err(io(format!("creating {}", d.display())))?;
                }
                let lowers = self.snapshots.lowerdirs(&fs.diff_ids);
                Ok(RunRoot {
                    rootfs: RootfsSpec::Overlay {
                        lowerdirs: lowers.clone(),
                        upperdir: upper.clone(),
                        workdir: work,
                    },
                    pending: Pending::Overlay {
                        scratch,
                        upper,
                        skip: DiffOptions::default(),
                    },
                    lowers,
                })
            }
            View::Copy { dir } => {
                let copy = self.tmpdir("stage-")?;
                crate::layer::copy_tree(dir.path(), copy.path())?;
                Ok(RunRoot {
                    rootfs: RootfsSpec::Dir(copy.path().to_path_buf()),
                    pending: Pending::Copy { dir: copy },
                    lowers: Vec::new(),
                })
            }
        }
    }

    /// After the RUN: removes the mount-point stubs and reads the changes.
    pub fn changes(
        &self,
        fs: &StageFs,
        root: RunRoot,
        report: &RunReport,
        skip: DiffOptions,
    ) -> Result<Changes, StageFsError> {
        let started = Instant::now();
        let (entries, pending) = match root.pending {
            Pending::Overlay { scratch, upper, .. } => {
                report.remove_stubs(&upper)?;
                let entries = diff_upperdir(&upper, &root.lowers, &skip)?;
                (
                    entries,
                    Pending::Overlay {
                        scratch,
                        upper,
                        skip,
                    },
                )
            }
            Pending::Copy { dir } => {
                report.remove_stubs(dir.path())?;
                let View::Copy { dir: old } = &fs.view else {
                    unreachable!("a copy run root belongs to a copy stage")
                };
                let entries = diff_trees(old.path(), dir.path(), &skip)?;
                (entries, Pending::Copy { dir })
            }
        };
        Ok(Changes {
            entries,
            diff_seconds: secs(started.elapsed()),
            pending,
        })
    }

    /// Makes the RUN's result the stage's top layer: `written` is the layer written from the
    /// changes' entries (`None`: the RUN changed nothing and made no layer).
    pub fn commit_run(
        &self,
        fs: &mut StageFs,
        pending: Changes,
        written: Option<&DiffId>,
    ) -> Result<(), StageFsError> {
        match pending.pending {
            Pending::Overlay {
                scratch,
                upper,
                skip,
            } => {
                if let Some(diff_id) = written {
                    self.snapshots.adopt(diff_id, &upper, &skip)?;
                    fs.diff_ids.push(*diff_id);
                    self.remount(fs)?;
                }
                drop(scratch);
            }
            Pending::Copy { dir } => {
                // Mount targets masked their paths during the run: outside the stubs (removed
                // already) the copy holds there what the stage held.
                if let Some(diff_id) = written {
                    fs.view = View::Copy { dir };
                    fs.diff_ids.push(*diff_id);
                }
            }
        }
        Ok(())
    }
}

impl StageFs {
    /// The stage's filesystem as a directory (read-only in overlay mode).
    pub fn root(&self) -> &Path {
        match &self.view {
            View::Overlay { dir, .. } | View::Copy { dir } => dir.path(),
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
