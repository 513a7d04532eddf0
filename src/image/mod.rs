//! Images: references, configs, the local store (itself an OCI image layout), exports and loads.
//!
//! - [`reference`](mod@reference): Docker name normalisation ([`ImageRef`]).
//! - [`config`]: kiln's own image-config struct ([`ImageConfig`]) and [`canonical_json`], the one
//!   writer for every JSON document kiln digests.
//! - [`store`]: the [`Store`] at `$KILN_ROOT`: `oci-layout`, `index.json` (one entry per tag,
//!   `org.opencontainers.image.ref.name` = the full normalised name) and `blobs/sha256/`, with
//!   kiln's temp files and locks in `kiln/` beside them. Any OCI tool can read it as it is.
//! - [`export`]: OCI layout directory or tar (BuildKit's annotations), docker-archive.
//! - [`load`](mod@load): `kiln load` (docker-archive or OCI archive) and `kiln import` (a rootfs tar).
//!
//! Manifests, indexes and descriptors are `oci-spec` types, always serialised through
//! [`canonical_json`] (oci-spec's own maps are `HashMap`s).

pub mod compress;
pub mod config;
pub mod export;
pub mod load;
pub mod reference;
pub mod store;

use std::io;
use std::path::PathBuf;

/// The layer compressions the exports take.
pub use crate::layer::Compression;
pub use config::{
    ContainerConfig, Healthcheck, History, ImageConfig, RootFs, canonical_json, format_rfc3339,
};
pub use export::{
    DockerArchiveImage, OciExportOptions, write_docker_archive, write_docker_archive_file,
    write_oci_archive, write_oci_archive_file, write_oci_dir, write_output_file,
};
pub use load::{ImportOptions, LoadOptions, LoadedImage, import, load, load_file};
pub use oci_spec::image::{Descriptor, Digest, ImageIndex, ImageManifest, MediaType};
pub use reference::{ImageRef, ReferenceError};
pub use store::{
    BlobReader, BlobWriter, Platform, PruneReport, Store, StoredImage, layer_descriptor,
};

/// `org.opencontainers.image.ref.name`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
/// `io.containerd.image.name` (BuildKit and containerd write the full name here).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// OCI image manifest.
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image config.
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker schema 2 manifest.
pub const MEDIA_TYPE_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const MEDIA_TYPE_DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const MEDIA_TYPE_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Errors of the image module. Each names the image, blob or file concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImageError {
    /// A name that is not a valid reference.
    #[error("invalid image name \"{input}\": {source}")]
    Reference {
        /// What was given.
        input: String,
        /// Why it was refused.
        #[source]
        source: ReferenceError,
    },
    /// No image by that name, digest or ID.
    #[error("image \"{0}\" not found in the store")]
    NotFound(String),
    /// An ID prefix matching more than one image.
    #[error("image ID prefix \"{prefix}\" is ambiguous: it matches {}", candidates.join(", "))]
    Ambiguous {
        /// The prefix given.
        prefix: String,
        /// The IDs it matches.
        candidates: Vec<String>,
    },
    /// A blob that should be in the store is not.
    #[error("blob {digest} is missing from the store at {}", root.display())]
    BlobMissing {
        /// The blob's digest.
        digest: String,
        /// The store root.
        root: PathBuf,
    },
    /// Content whose digest is not the one expected.
    #[error("{what}: digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was checked.
        what: String,
        /// The digest it should have.
        expected: String,
        /// The digest it has.
        actual: String,
    },
    /// An I/O error on a file or directory.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: String,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A JSON document that does not parse.
    #[error("invalid {what}: {source}")]
    Json {
        /// Which document.
        what: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// An archive or layout that kiln cannot read.
    #[error("{}: {reason}", file.display())]
    Archive {
        /// The archive or layout.
        file: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Something inconsistent or unsupported (a digest algorithm, a name with a digest where a
    /// tag is needed, a config whose diff_ids do not match the layers…).
    #[error("{0}")]
    Invalid(String),
    /// Another kiln process holds the store; `prune` does not wait for it.
    #[error(
        "the store at {} is in use by another kiln process; run prune again when it is done",
        root.display()
    )]
    StoreBusy {
        /// The store root.
        root: PathBuf,
    },
    /// A layer error (writing, compressing).
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
}

impl ImageError {
    pub(crate) fn io(
        action: impl Into<String>,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        ImageError::Io {
            action: action.into(),
            path: path.into(),
            source,
        }
    }

    pub(crate) fn json(what: impl Into<String>, source: serde_json::Error) -> Self {
        ImageError::Json {
            what: what.into(),
            source,
        }
    }

    pub(crate) fn archive(file: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ImageError::Archive {
            file: file.into(),
            reason: reason.into(),
        }
    }
}

/// A platform string that does not parse (from [`Platform::parse`]), as an [`ImageError`].
impl From<crate::platform::ParsePlatformError> for ImageError {
    fn from(e: crate::platform::ParsePlatformError) -> Self {
        ImageError::Invalid(format!(
            "invalid platform \"{}\": expected os/arch[/variant], e.g. linux/amd64",
            e.input
        ))
    }
}

/// Parses and normalises an image name, as an [`ImageError`].
pub fn parse_ref(name: &str) -> Result<ImageRef, ImageError> {
    ImageRef::parse(name).map_err(|source| ImageError::Reference {
        input: name.to_string(),
        source,
    })
}

/// The sha256 hex of a digest, or an error for other algorithms.
pub(crate) fn sha256_hex(d: &Digest) -> Result<&str, ImageError> {
    match d.algorithm() {
        oci_spec::image::DigestAlgorithm::Sha256 => Ok(d.digest()),
        _ => Err(ImageError::Invalid(format!(
            "unsupported digest algorithm in {d} (kiln stores sha256 only)"
        ))),
    }
}

/// `sha256:<hex>` as a [`Digest`].
pub(crate) fn sha256_digest(bytes: &[u8; 32]) -> Digest {
    format!("sha256:{}", hex::encode(bytes))
        .parse()
        .expect("a sha256 digest is valid")
}

/// The sha256 [`Digest`] of `data`.
pub fn digest_of(data: &[u8]) -> Digest {
    use sha2::Digest as _;
    sha256_digest(&sha2::Sha256::digest(data).into())
}
