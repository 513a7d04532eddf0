//! Layers: deterministic tar writing, compression and digests in one streaming pass,
//! and safe application (unpacking) of layer tars into a directory.
//!
//! # Writing
//!
//! A layer is a list of [`LayerEntry`]s (made by hand, or read from a directory tree with
//! [`scan_dir`]). [`write_layer`] sorts them and streams them through one pass:
//!
//! ```text
//! tar bytes ──► sha256 (diffID) ──► gzip | zstd | nothing ──► sha256 (blob digest) + size ──► your Write
//! ```
//!
//! [`LayerWriter`] is the same pipeline for callers that already produce entries in order.
//!
//! The tar is written by our own header writer so that the bytes depend only on the entries:
//!
//! - **Order.** Entries are sorted by path *component by component*, each component compared
//!   byte-wise: a directory comes before its children and its whole subtree comes before the
//!   next sibling (`a`, `a/b`, `a-b`). This is the order of a depth-first walk that reads each
//!   directory sorted by name — what Go's `filepath.Walk` (containerd, BuildKit) and
//!   `tar --sort=name` produce. Equivalently: byte-wise order where `/` sorts before every
//!   other byte. See [`compare_layer_paths`].
//! - **Headers.** POSIX ustar headers; a PAX extended header (`x`, named like Go's
//!   `archive/tar` does: `<dir>/PaxHeaders.0/<name>`, `<dir>/PaxHeaders.0` for a directory) is
//!   added only when needed: a path or link target longer than 100 bytes or not ASCII (names are
//!   bytes; one that is not UTF-8 travels as it is in the `path`/`linkpath` record, the ustar
//!   field keeping its ASCII bytes, as Go writes it), a uid/gid above 2097151, a size of 8 GiB or
//!   more, an mtime before 1970 or after 2242, or extended attributes (`SCHILY.xattr.<name>`,
//!   which is how `security.capability` travels). PAX records are sorted by key. uname/gname are empty; ids
//!   are numeric only. Directories are named with a trailing `/`; the layer root, if present,
//!   is `./`. No ustar `prefix` field is used.
//! - **Times.** Mtimes are whole seconds. With a `SOURCE_DATE_EPOCH`
//!   ([`WriteOptions::source_date_epoch`]) every mtime later than it is set to it.
//! - **Hard links.** Entries sharing a [`LayerEntry::link_key`] (device, inode) are written once;
//!   every later one (in layer order) becomes a hard link (`1`) to the first path.
//! - **Whiteouts** are the OCI ones: an empty regular file `.wh.<name>` (mode 0, owner 0:0, mtime 0)
//!   and `.wh..wh..opq` for an opaque directory ([`LayerEntry::whiteout`],
//!   [`LayerEntry::opaque_whiteout`]).
//! - The archive ends with two zero blocks and is not padded to a record size.
//! - gzip: `flate2` (zlib-rs) with header mtime 0, no file name, OS byte 255; zstd: always run in
//!   the multi-threaded mode (at least one worker), whose output does not depend on the number of
//!   workers.
//!
//! # Applying
//!
//! [`apply_layer`] unpacks a layer (compression detected from its magic bytes) into a directory as
//! if that directory were `/`: entry names are cleaned (`..` cannot climb above the target,
//! absolute names are taken relative to it), and every directory on the way to an entry is
//! resolved *inside* the target, following symlinks the way the kernel would in a chroot.
//! Symlinks are created exactly as they are in the archive; they are only ever followed by this
//! resolution, never by the file system calls that write. Hard-link targets are resolved the same
//! way and must already exist. Whiteouts delete what lower layers put in the target.
//!
//! The resolution is path-based: it assumes nothing else modifies the target while a layer is
//! applied (true for snapshots, which only kiln writes).
//!
//! # The differs
//!
//! A RUN step runs on an overlay mount whose lower directories are *snapshots* (`crate::snapshot`):
//! each layer unpacked once, by diffID, with overlay-native whiteouts
//! ([`apply_layer_with_whiteouts`] with [`WhiteoutMode::Overlay`]: `.wh.name` becomes a character
//! device 0:0, `.wh..wh..opq` the `trusted.overlay.opaque` / `user.overlay.opaque` attribute).
//! After the step, [`diff_upperdir`] reads the layer from the upper directory alone (whiteouts
//! and opaque directories back to their OCI form, unchanged copy-ups left out), and the
//! snapshot store makes that upper directory the new layer's snapshot. Without overlay,
//! [`diff_trees`] compares a copy of the stage with the original.

mod apply;
mod diff;
mod digest;
mod entry;
mod overlay;
mod sniff;
mod tarfmt;
mod tree;
mod write;

use std::io;
use std::path::PathBuf;

pub use apply::{
    ApplyOptions, ApplyReport, Ownership, apply_layer, apply_layer_with_whiteouts, resolve_in_root,
};
pub(crate) use apply::{Probe, ResolveError, resolve_with};
pub use diff::{DiffOptions, diff_upperdir, lookup_lower};
pub(crate) use digest::HashWriter;
pub use digest::{DiffId, LayerDigest, ParseDigestError};
pub(crate) use entry::normalize_layer_path;
pub use entry::{
    EntryKind, FileSource, LayerEntry, OPAQUE_WHITEOUT, ScanOptions, WHITEOUT_PREFIX,
    compare_layer_paths, scan_dir,
};
#[cfg(test)]
pub(crate) use overlay::read_xattrs_and_overlay_names;
pub use overlay::{OverlayXattrPrefix, WhiteoutMode};
pub(crate) use overlay::{get_xattr, list_xattrs};
pub use sniff::{SNIFF_LEN, Sniffed, Sniffing, decompress, sniff};
pub use tree::{diff_trees, remove_tree_in_place, tree_bytes};
pub use write::{
    Compression, LayerWriter, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_ZSTD,
    WRITER_SCHEME_VERSION, WriteOptions, WrittenLayer, compress_tar, write_layer,
};

/// Errors of the layer module. Each names the entry (the path inside the layer) when there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayerError {
    /// An I/O error while reading, writing or applying one entry.
    #[error("layer entry `{}`: {action}", path.display())]
    Entry {
        /// The entry's path inside the layer (for [`scan_dir`]: the path on disk).
        path: PathBuf,
        /// What was being done.
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// An entry that cannot be written or applied as it is.
    #[error("layer entry `{}`: {reason}", path.display())]
    Invalid {
        /// The entry's path inside the layer.
        path: PathBuf,
        /// Why it was refused.
        reason: String,
    },
    /// Entries handed to a [`LayerWriter`] out of order, or the same path twice.
    #[error(
        "layer entry `{}` comes after `{}`: entries must be unique and in layer order",
        next.display(),
        prev.display()
    )]
    Order {
        /// The entry written before.
        prev: PathBuf,
        /// The entry that should have come first (or is a duplicate).
        next: PathBuf,
    },
    /// A compression level the compressor does not accept.
    #[error("invalid {algorithm} compression level {level}")]
    CompressionLevel {
        /// `gzip` or `zstd`.
        algorithm: &'static str,
        /// The level asked for.
        level: i64,
    },
    /// A layer whose uncompressed content does not have the diffID it was asked for under.
    #[error("layer content is {actual}, not the expected {expected}")]
    DiffIdMismatch {
        /// The diffID asked for.
        expected: DiffId,
        /// The sha256 of what was read.
        actual: DiffId,
    },
    /// An I/O error not tied to one entry: the output, the compressor, the end of the archive,
    /// or the archive stream being read.
    #[error("{context}")]
    Stream {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

impl LayerError {
    pub(crate) fn entry(path: impl Into<PathBuf>, action: &'static str, source: io::Error) -> Self {
        LayerError::Entry {
            path: path.into(),
            action,
            source,
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        LayerError::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn stream(context: &'static str, source: io::Error) -> Self {
        LayerError::Stream { context, source }
    }
}
