//! Renderers for build progress events: plain (CI logs, like `docker build --progress=plain`),
//! quiet, and json (one event per line, for machines).
//!
//! Stages build on several threads at once, so a sink is `Send + Sync` and takes events through
//! `&self`; each event names its step by the step's number, so a renderer can tell interleaved
//! stages apart.

use std::io::Write;
use std::sync::Mutex;

use serde::Serialize;

/// What the build reports as it goes.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A step starts. `id` is the step's number in the build (from 1, stage by stage in
    /// build order), whatever order the steps run in.
    StepStarted {
        id: usize,
        /// The stage's name, or `stage-N`.
        stage: String,
        /// `Dockerfile:12`
        loc: String,
        /// e.g. `[build 2/4] COPY . /src`
        name: String,
    },
    /// A line of information about a running step.
    StepLog { id: usize, line: String },
    /// A step finished.
    StepDone {
        id: usize,
        seconds: f64,
        cached: bool,
        /// The size of the layer the step wrote, if it wrote one.
        #[serde(skip_serializing_if = "Option::is_none")]
        bytes: Option<u64>,
    },
    /// A step failed.
    StepFailed { id: usize, error: String },
    /// Something the user should know about the build as a whole (e.g. which snapshotter runs).
    Notice { message: String },
    /// The build wrote an image.
    ImageWritten {
        manifest_digest: String,
        config_digest: String,
        names: Vec<String>,
    },
}

/// Receives progress events, from any thread.
pub trait Progress: Send + Sync {
    fn event(&self, event: &Event);
}

/// Ignores everything.
pub struct Quiet;

impl Progress for Quiet {
    fn event(&self, _event: &Event) {}
}

/// `#N [stage i/n] INSTRUCTION` … `#N DONE 0.1s`, like BuildKit's plain output.
pub struct Plain<W: Write> {
    out: Mutex<W>,
}

impl<W: Write> Plain<W> {
    pub fn new(out: W) -> Self {
        Plain {
            out: Mutex::new(out),
        }
    }
}

impl<W: Write + Send> Progress for Plain<W> {
    fn event(&self, event: &Event) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let out = &mut *out;
        // Progress output is best effort: a closed stderr must not fail the build.
        let _ = match event {
            Event::StepStarted { id, name, .. } => writeln!(out, "#{id} {name}"),
            Event::StepLog { id, line } => writeln!(out, "#{id} {line}"),
            Event::StepDone {
                id,
                seconds,
                cached,
                ..
            } => {
                if *cached {
                    writeln!(out, "#{id} CACHED")
                } else {
                    writeln!(out, "#{id} DONE {seconds:.1}s")
                }
            }
            Event::StepFailed { id, error } => writeln!(out, "#{id} ERROR: {error}"),
            Event::Notice { message } => writeln!(out, "#0 {message}"),
            Event::ImageWritten {
                manifest_digest,
                config_digest,
                names,
            } => {
                let mut r = writeln!(out, "#0 writing image {config_digest}");
                if r.is_ok() {
                    r = writeln!(out, "#0 manifest {manifest_digest}");
                }
                for n in names {
                    if r.is_ok() {
                        r = writeln!(out, "#0 naming to {n}");
                    }
                }
                r
            }
        };
    }
}

/// One JSON object per event and line.
pub struct Json<W: Write> {
    out: Mutex<W>,
}

impl<W: Write> Json<W> {
    pub fn new(out: W) -> Self {
        Json {
            out: Mutex::new(out),
        }
    }
}

impl<W: Write + Send> Progress for Json<W> {
    fn event(&self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
            let _ = writeln!(out, "{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_lines() {
        let mut buf = Vec::new();
        {
            let p = Plain::new(&mut buf);
            p.event(&Event::StepStarted {
                id: 1,
                stage: "stage-0".into(),
                loc: "Dockerfile:1".into(),
                name: "[1/2] FROM scratch".into(),
            });
            p.event(&Event::StepDone {
                id: 1,
                seconds: 0.04,
                cached: false,
                bytes: None,
            });
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "#1 [1/2] FROM scratch\n#1 DONE 0.0s\n"
        );
    }

    #[test]
    fn json_lines() {
        let mut buf = Vec::new();
        Json::new(&mut buf).event(&Event::StepLog {
            id: 2,
            line: "x".into(),
        });
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "{\"event\":\"step_log\",\"id\":2,\"line\":\"x\"}\n"
        );
    }
}
