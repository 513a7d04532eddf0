//! The filesystem exports of a built image: `type=local` (the final filesystem into a
//! directory) and `type=tar` (the same as one deterministic tar). The OCI and docker archives
//! are [`crate::image`]'s.

use std::collections::BTreeSet;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::image::{ImageError, Store, StoredImage};
use crate::layer::{
    ApplyOptions, Compression, LayerError, Ownership, ScanOptions, WriteOptions, apply_layer,
    scan_dir, write_layer,
};

/// Why an export failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("creating a directory in {}", dir.display())]
    TempDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("creating {}", dir.display())]
    CreateDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A layer could not be applied into the export's directory.
    #[error("exporting to {}", dest.display())]
    Apply {
        dest: PathBuf,
        #[source]
        source: LayerError,
    },
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// The image's final filesystem, ready to be written as one uncompressed tar by
/// [`RootfsTar::write_to`]. Its directory is removed when this is dropped.
pub struct RootfsTar {
    entries: Vec<crate::layer::LayerEntry>,
    _dir: tempfile::TempDir,
}

impl RootfsTar {
    /// Writes the tar (deterministic: the same filesystem gives the same bytes).
    pub fn write_to(self, w: &mut dyn Write) -> Result<(), LayerError> {
        let opts = WriteOptions {
            compression: Compression::Uncompressed,
            ..WriteOptions::default()
        };
        write_layer(self.entries, &opts, w)?;
        Ok(())
    }
}

/// Prepares a `type=tar` export of the image's final filesystem. The filesystem is
/// materialised in the store's temp dir (in the build's user namespace, so owners are the
/// image's; `single_id`: owners other than root cannot be set, so the files are root's, as the
/// snapshots are), under this process's lease, so a killed export is swept by the next build.
/// `warned`: the layers already warned about (see [`local`]).
pub fn rootfs_tar(
    store: &Store,
    img: &StoredImage,
    single_id: bool,
    warned: &mut BTreeSet<String>,
) -> Result<RootfsTar, ExportError> {
    let tmp =
        crate::lease::tempdir_in(store.root(), store.tmp_dir(), "export-").map_err(|source| {
            ExportError::TempDir {
                dir: store.tmp_dir().to_path_buf(),
                source,
            }
        })?;
    let rootfs = tmp.path().join("rootfs");
    let apply = ApplyOptions::for_namespace(single_id);
    apply_layers(store, img, &rootfs, &apply, warned)?;
    let entries = scan_dir(&rootfs, &ScanOptions::default())?;
    Ok(RootfsTar { entries, _dir: tmp })
}

/// Applies the image's layers, base first, into `dest`. Rootless, the files are the invoking
/// user's (root of the namespace is the user outside it): the image's other owners cannot be
/// set outside, and files of subordinate ids could not be removed by the user; directories stay
/// u+rwx so `rm -rf` works, and a note says how many owners were not kept. Device nodes that
/// could not be created are warned about once per layer and command (`warned`).
pub fn local(
    store: &Store,
    img: &StoredImage,
    dest: &Path,
    warned: &mut BTreeSet<String>,
) -> Result<(), ExportError> {
    let rootless = super::host::rootless();
    let apply = ApplyOptions {
        ownership: if rootless {
            Ownership::Ignore
        } else {
            Ownership::Auto
        },
        removable: rootless,
        ..ApplyOptions::default()
    };
    let ignored = apply_layers(store, img, dest, &apply, warned)?;
    if rootless && ignored > 0 {
        eprintln!(
            "kiln: note: {} exported as your files: {ignored} entries of the image have \
             other owners, which a rootless local export cannot keep (type=tar keeps them)",
            dest.display()
        );
    }
    Ok(())
}

/// Applies the image's layers, base first, into `dest`, and warns about device nodes that
/// could not be created (in a user namespace), once per layer and command (`warned`: the
/// layers already warned about). Returns the entries whose owner was not kept.
fn apply_layers(
    store: &Store,
    img: &StoredImage,
    dest: &Path,
    apply: &ApplyOptions,
    warned: &mut BTreeSet<String>,
) -> Result<u64, ExportError> {
    let mut ownership_ignored = 0;
    std::fs::create_dir_all(dest).map_err(|source| ExportError::CreateDir {
        dir: dest.to_path_buf(),
        source,
    })?;
    for l in img.layers() {
        let blob = store.open_blob(l.digest())?;
        let report = apply_layer(blob, dest, apply).map_err(|source| ExportError::Apply {
            dest: dest.to_path_buf(),
            source,
        })?;
        if let Some(w) = report.skipped_devices_warning()
            && warned.insert(l.digest().to_string())
        {
            eprintln!("kiln: warning: exporting layer {}: {w}", l.digest());
        }
        ownership_ignored += report.ownership_ignored;
    }
    Ok(ownership_ignored)
}
