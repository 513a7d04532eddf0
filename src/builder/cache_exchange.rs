//! `--cache-from` and `--cache-to type=local` in a build (the format is
//! [`crate::cache::exchange`]).
//!
//! - Imports are opened once, at the start of the build (index.json, manifest, config); a
//!   directory that is missing or not a kiln cache is a warning and the build goes on cold.
//! - At the door ([`Shared::cached_record`]), a key the local index lacks is looked up in the
//!   imports; a hit copies only the blobs of that record into the store (verified), puts a
//!   local record (the local plaintext document, which hashes to the key) and is replayed.
//! - Cache mounts an import carries and the store lacks are restored before the first step.
//! - After a successful build, [`export`] writes the records of the build's steps (`mode=min`:
//!   the target stage and the stages it is built `FROM`; `mode=max`: every stage) with their
//!   blobs, and with `mounts=true` the build's cache mount directories.

use std::collections::BTreeSet;
use std::path::Path;

use sha2::{Digest as _, Sha256};

use crate::cache::exchange::{ExportMode, Imported, LayoutWriter, LocalExport, LocalImport};
use crate::cache::{CacheKey, CacheRecord, ExchangeError, KeyDocument};
use crate::image::Store;
use crate::layer::{ApplyOptions, ScanOptions, WriteOptions};
use crate::progress::{Event, Progress};

use super::lower::LoweredStage;
use super::scheduler::Shared;
use super::step::{Op, Source};
use super::{BuildOptions, StepRecord};

fn warn(progress: &dyn Progress, e: &(dyn std::error::Error + 'static)) {
    progress.event(&Event::Notice {
        message: format!("warning: {}", crate::error_chain(e)),
    });
}

/// Opens the `--cache-from` caches; one that cannot be read is a warning, not an error (as
/// buildx).
pub(super) fn open_imports(specs: &[LocalImport], progress: &dyn Progress) -> Vec<Imported> {
    specs
        .iter()
        .filter_map(|s| match Imported::open(&s.src) {
            Ok(i) => Some(i),
            Err(e) => {
                warn(progress, &e);
                None
            }
        })
        .collect()
}

impl Shared<'_> {
    /// The door's lookup: the local index, then the imported caches. An imported hit is
    /// fetched into the store and recorded locally, so the next build hits without the import.
    pub(super) fn cached_record(
        &self,
        key: &CacheKey,
        document: &KeyDocument,
    ) -> Option<CacheRecord> {
        if let Some(index) = &self.cache
            && let Ok(Some(record)) = index.get(key)
            && self.record_usable(&record)
        {
            return Some(record);
        }
        for import in &self.imports {
            let Some(result) = import.result(key) else {
                continue;
            };
            if let Err(e) = import.fetch(self.store, &result) {
                warn(self.progress, &e);
                continue;
            }
            // Trusted by key: the exported document is redacted and does not hash to it, but
            // this build computed the key from its own plaintext document, which does.
            let Ok(mut record) =
                CacheRecord::new(document.clone(), result, crate::image::config::now_unix())
            else {
                continue;
            };
            record.seconds = import.seconds(key);
            record.stamp = import.stamp(key);
            if let Some(index) = &self.cache
                && let Err(e) = index.put(&record)
            {
                warn(self.progress, &e);
            }
            return Some(record);
        }
        None
    }
}

/// Restores the cache mounts the imports carry that the store does not have (by their
/// directory name under `<store>/cache-mounts`), made in a temp directory and renamed into
/// place as the RUN steps make theirs.
pub(super) fn restore_mounts(
    store: &Store,
    imports: &[Imported],
    single_id: bool,
    progress: &dyn Progress,
) {
    let root = store.root().join("cache-mounts");
    for import in imports {
        for (id, desc, diff_id) in import.mounts() {
            if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
                continue;
            }
            let entry = root.join(id);
            if entry.join("data").exists() {
                continue;
            }
            if let Err(e) = restore_mount(&root, &entry, import, desc, diff_id, single_id) {
                warn(progress, &e);
            }
        }
    }
}

fn restore_mount(
    root: &Path,
    entry: &Path,
    import: &Imported,
    desc: &crate::image::Descriptor,
    diff_id: &crate::layer::DiffId,
    single_id: bool,
) -> Result<(), ExchangeError> {
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ExchangeError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(root).map_err(io("creating", root))?;
    let tmp = tempfile::Builder::new()
        .prefix(".new-")
        .tempdir_in(root)
        .map_err(io("creating a directory in", root))?;
    let data = tmp.path().join("data");
    let report = crate::layer::apply_layer(
        import.open_blob(desc)?,
        &data,
        &ApplyOptions::for_namespace(single_id),
    )?;
    if &report.diff_id != diff_id {
        return Err(ExchangeError::Invalid {
            dir: import.dir().to_path_buf(),
            message: format!(
                "cache mount layer {} does not match its diffID",
                desc.digest()
            ),
        });
    }
    let id_file = tmp.path().join("id");
    std::fs::write(&id_file, "restored by --cache-from\n").map_err(io("writing", &id_file))?;
    let lock = tmp.path().join("lock");
    std::fs::File::create(&lock).map_err(io("creating", &lock))?;
    let tmp = tmp.keep();
    if let Err(e) = std::fs::rename(&tmp, entry) {
        let _ = crate::layer::remove_tree_in_place(&tmp);
        if !entry.join("data").is_dir() {
            return Err(io("renaming into place", entry)(e));
        }
    }
    Ok(())
}

/// The labels of the stages `mode` exports.
fn exported_stages(mode: ExportMode, stages: &[LoweredStage], target: usize) -> BTreeSet<String> {
    if mode == ExportMode::Max {
        return stages.iter().map(|s| s.label.clone()).collect();
    }
    let mut out = BTreeSet::new();
    let mut next = Some(target);
    while let Some(i) = next.take() {
        let Some(stage) = stages.iter().find(|s| s.index == i) else {
            break;
        };
        if !out.insert(stage.label.clone()) {
            break;
        }
        if let Some(Op::Base(Source::Stage { index, .. })) = stage.steps.first().map(|s| &s.op) {
            next = Some(*index);
        }
    }
    out
}

/// Writes every `--cache-to` of a build that succeeded.
pub(super) fn export(
    store: &Store,
    opts: &BuildOptions,
    stages: &[LoweredStage],
    target: usize,
    records: &[StepRecord],
) -> Result<(), ExchangeError> {
    if opts.cache_to.is_empty() {
        return Ok(());
    }
    let index = crate::cache::Index::open(store.root())?;
    for spec in &opts.cache_to {
        export_one(store, &index, opts, spec, stages, target, records)?;
    }
    Ok(())
}

fn export_one(
    store: &Store,
    index: &crate::cache::Index,
    opts: &BuildOptions,
    spec: &LocalExport,
    stages: &[LoweredStage],
    target: usize,
    records: &[StepRecord],
) -> Result<(), ExchangeError> {
    let wanted = exported_stages(spec.mode, stages, target);
    let mut out = LayoutWriter::create(&spec.dest)?;
    for r in records.iter().filter(|r| wanted.contains(&r.stage)) {
        let Some(key) = r.key.as_deref().and_then(|k| k.parse::<CacheKey>().ok()) else {
            continue;
        };
        if let Some(record) = index.peek(&key)? {
            out.add_record(store, &record)?;
        }
    }
    if spec.mounts {
        let root = store.root().join("cache-mounts");
        let mut seen = BTreeSet::new();
        let write = WriteOptions {
            compression: opts.compression,
            ..WriteOptions::default()
        };
        let mounts = stages
            .iter()
            .filter(|s| wanted.contains(&s.label))
            .flat_map(|s| &s.steps)
            .filter_map(|s| match &s.op {
                Op::Run(r) => Some(&r.mounts),
                _ => None,
            })
            .flatten()
            .filter(|m| m.kind == "cache");
        for m in mounts {
            let id = hex::encode(Sha256::digest(super::mounts::cache_key(m).as_bytes()));
            let data = root.join(&id).join("data");
            if !seen.insert(id.clone()) || !data.is_dir() {
                continue;
            }
            let entries = crate::layer::scan_dir(
                &data,
                &ScanOptions {
                    include_root: true,
                    ..ScanOptions::default()
                },
            )?;
            out.add_mount(&id, entries, &write)?;
        }
    }
    out.finish()?;
    Ok(())
}
