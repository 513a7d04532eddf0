//! kiln: a rootless, daemonless Dockerfile → OCI image builder.
//!
//! The modules follow the rooms of the design (see `docs/ARCHITECTURE.md`);
//! arrows point down only: `plan` uses `dockerfile`, nothing reaches up.

pub mod builder;
pub mod context;
pub mod dockerfile;
pub mod exec;
pub mod image;
pub mod layer;
pub mod lease;
pub mod pathclean;
pub mod plan;
pub mod platform;
pub mod progress;
