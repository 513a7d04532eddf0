//! A build step as data: what one instruction will do, worked out before anything runs.
//!
//! [`lower`](super::lower) turns each stage's instructions into [`Step`]s with every variable
//! expanded, heredocs resolved, SHELL/USER/WORKDIR/ENV applied and `--from` names resolved to
//! a stage or an image. A step holds no host path, no temporary directory, no mtime and no
//! secret value (secrets by id only), so it can be shown (`kiln debug steps`) and, from [6/9]
//! on, hashed into a cache key. What only the filesystem can answer (a USER name's ids in
//! `/etc/passwd`, whether a WORKDIR already exists) is left to the step's execution.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::dockerfile::instructions::Mount;
use crate::image::config::Healthcheck;

/// Where a step comes from: `Dockerfile:12` and the instruction as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: String,
    pub line: usize,
    /// The instruction's text, trimmed (an ONBUILD trigger's text for a trigger).
    pub instruction: String,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.instruction)
    }
}

/// A step's identity: its stage (the Dockerfile's stage index) and its place in that stage
/// (0 is the FROM step), plus its number in the whole build (`#N` in progress output; steps
/// are numbered stage by stage in build order, whatever order they run in).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct StepId {
    pub stage: usize,
    pub index: usize,
    pub number: usize,
}

/// A stage or an image that a step reads (`FROM`, `COPY --from`, `RUN --mount=from=`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// An empty filesystem (`FROM scratch`).
    Scratch,
    /// Another stage of this Dockerfile, by index (and name, when it has one).
    Stage {
        index: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// An image, by reference as expanded.
    Image { reference: String },
}

/// One step of a stage.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub id: StepId,
    /// The stage's name, or `stage-N`.
    pub stage: String,
    pub loc: Location,
    /// How progress names it: `[build 2/4] COPY . /src`.
    pub name: String,
    /// The image history's `created_by` for this step.
    pub created_by: String,
    pub op: Op,
    /// Values that depend on a base image kiln could not read (`kiln debug steps` with a base
    /// that is not in the store): they were worked out against an empty config.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unresolved: Vec<&'static str>,
}

/// What a step does.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// FROM: the stage starts from this filesystem and config.
    Base(Source),
    /// A change to the image config only (ENV, LABEL, CMD, …): no filesystem.
    Config(ConfigChange),
    /// WORKDIR: sets the working directory and creates it (owned by `user`, as BuildKit) when
    /// it does not exist yet — the one part decided at execution.
    Mkdir(MkdirOp),
    Copy(CopyOp),
    Run(RunOp),
}

/// A config change, with values already expanded.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigChange {
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Maintainer(String),
    /// ARG changes no config (its values reach later steps through their expansion); it is a
    /// history entry. Each name with the value later steps see (`None`: declared, no value).
    Arg(Vec<(String, Option<String>)>),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    StopSignal(String),
    Cmd(Vec<String>),
    /// `clear_cmd`: no CMD was set earlier in this stage, so the base's CMD goes.
    Entrypoint {
        words: Vec<String>,
        clear_cmd: bool,
    },
    Shell(Vec<String>),
    Healthcheck(Healthcheck),
    Onbuild(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MkdirOp {
    /// Absolute, cleaned.
    pub path: String,
    /// The USER at this point (empty: root): the owner of a created directory.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
}

/// COPY or ADD.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CopyOp {
    pub add: bool,
    /// `--from`: a stage or an image; `None` reads the build context.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<Source>,
    /// Source paths (or URLs for ADD), expanded, otherwise as written.
    pub sources: Vec<String>,
    /// Heredoc sources: file name and body, expanded unless the delimiter was quoted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<(String, String)>,
    pub dest: String,
    /// The stage's working directory (a relative `dest` is under it).
    pub workdir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chown: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chmod: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub parents: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unpack: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
}

/// RUN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunOp {
    /// The command as the sandbox runs it: SHELL prepended for the shell form, heredocs put in.
    pub argv: Vec<String>,
    /// A heredoc that starts with `#!` runs as this file, mounted at `/dev/pipes/<name>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<Script>,
    /// The environment the step sees: ENV and valued ARGs. At execution HOME is added when
    /// missing (from the user's passwd entry), and so are undeclared proxy build-args, which
    /// are not part of the step (as in BuildKit, they do not change what a step is).
    pub env: Vec<(String, String)>,
    /// The USER at this point (empty: root); resolved to ids in the rootfs at execution.
    pub user: String,
    pub workdir: String,
    /// `--mount` specs, expanded and validated.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// What each `from=` of the mounts names.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub mount_sources: BTreeMap<String, Source>,
    /// `--network`: `none` or `host`; `None` takes the build's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// `--security=insecure`: BuildKit needs an entitlement for it, which kiln never grants;
    /// the step is lowered as written and refused when it would run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub security: Option<String>,
    /// `--device`: not supported by kiln; refused when the step would run.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Script {
    pub name: String,
    pub body: String,
}

/// Where BuildKit puts a heredoc that starts with `#!`, to run it as a script file.
pub const PIPES_DIR: &str = "/dev/pipes";

impl Step {
    /// The stages and images this step reads besides its own stage.
    pub fn reads(&self) -> Vec<&Source> {
        match &self.op {
            Op::Base(s) => vec![s],
            Op::Copy(c) => c.from.iter().collect(),
            Op::Run(r) => r.mount_sources.values().collect(),
            Op::Config(_) | Op::Mkdir(_) => Vec::new(),
        }
    }
}
