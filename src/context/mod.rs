//! The build context: `.dockerignore` matching with Docker's rules and the filtered walk.
//!
//! - [`read_ignore_file`] turns a `.dockerignore` file into patterns (`ignorefile.ReadAll`).
//! - [`PatternMatcher`] applies them with moby/patternmatcher's rules. These are Docker's, not
//!   gitignore's, so the matcher is hand-written rather than taken from a gitignore crate.
//! - [`walk`] / [`ContextFilter`] list the files BuildKit would send for a context directory
//!   (tonistiigi/fsutil's filtered walk), and [`ContextFilter::is_excluded`] answers for one
//!   path.
//! - [`digest`]: content digests of selected context paths (for step keys), with a per-store
//!   metadata index so a warm run stats files instead of reading them. Not wired into builds
//!   yet.

pub mod digest;
mod digest_index;
mod goregex;
pub mod ignore;
pub mod walk;

pub use digest::{
    ContextDigester, Digest, DigestError, DigestStats, FileChanges, FileDigest, IndexState,
    RootDigest, SelectionDigest, diff_by_path, diff_files, digest_paths,
};
pub use ignore::{
    IgnoreError, MatchInfo, MatchType, Pattern, PatternMatcher, matches, read_ignore_file,
};
pub use walk::{ContextError, ContextFilter, EntryKind, WalkEntry, WalkOptions, walk};
