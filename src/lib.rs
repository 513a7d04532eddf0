//! kiln: a rootless, daemonless Dockerfile → OCI image builder.
//!
//! The modules follow the rooms of the design (see `docs/ARCHITECTURE.md`);
//! arrows point down only: `plan` uses `dockerfile`, nothing reaches up.

pub mod builder;

/// An error and its causes on one line, `outer: cause: root cause`. A cause whose text the
/// message before it already ends with (an error that prints its source as well as returning
/// it) is said once, not twice. The CLI prints errors with it; the builder uses it where a cause
/// must become a step's message.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut line = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !line.ends_with(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        cause = c.source();
    }
    line
}
pub mod cache;
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
pub mod snapshot;
