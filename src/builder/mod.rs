//! The scheduler: walks the plan's stages in build order, dispatches each instruction against
//! the stage's state, writes layers and configs into the store, and reports progress.
//!
//! Each stage's filesystem is a [`stagefs::StageFs`]: on the overlay snapshotter, the stack of
//! its layers' snapshots (each layer unpacked once into the store, shared by every build) seen
//! through a read-only overlay view; on the copy fallback, a materialised directory. COPY/ADD
//! compute their layer entries against that filesystem (destination symlinks, existing owners,
//! `/etc/passwd` for `--chown`), the layer is written straight into a store blob and added to
//! the stage. RUN runs in the sandbox on the same snapshots and the upperdir becomes the layer.

pub mod container;
pub mod copy;
pub mod debug;
pub mod export;
pub mod host;
pub mod mounts;
pub mod prune;
pub mod run;
pub mod stagefs;

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;
use thiserror::Error;

use crate::context::{ContextFilter, WalkOptions, read_ignore_file};
use crate::dockerfile::instructions::{
    self, Command, CommandLine, Dockerfile, HealthCheck, Instruction, Parsed,
};
use crate::dockerfile::shell::{Budget, Lexer};
use crate::dockerfile::{self as df_mod};
// The CLI names these through the builder (it talks to `builder` and `image` only).
pub use crate::exec::{ExitStatus, Network};
use crate::image::config::{ContainerConfig, Empty, Healthcheck, History, format_rfc3339};
use crate::image::{Descriptor, ImageConfig, ImageError, ImageRef, Store, StoredImage};
use crate::layer::{Compression, LayerEntry, WriteOptions};
use crate::plan::{self, Base, Graph, PlanOptions, Scope};
use crate::progress::{Event, Progress};

use copy::{CopyRequest, CopySource};
use stagefs::{Filesystems, StageFs};

/// The PATH an image gets when its base has none (BuildKit's default for Linux).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// The build context directory.
    pub context: PathBuf,
    /// The Dockerfile's text.
    pub dockerfile: String,
    /// How errors name the Dockerfile (its path as given, or `<stdin>`).
    pub dockerfile_name: String,
    /// The Dockerfile's path, when it is a file: `<path>.dockerignore` beside it wins over the
    /// context's `.dockerignore`.
    pub dockerfile_path: Option<PathBuf>,
    pub build_args: Vec<(String, String)>,
    pub target: Option<String>,
    /// Names for the result (already normalised).
    pub tags: Vec<ImageRef>,
    /// Clamp file mtimes and set `created` to this (SOURCE_DATE_EPOCH).
    pub source_date_epoch: Option<i64>,
    /// Compression of the layers kiln stores.
    pub compression: Compression,
    /// The network RUN steps get unless they say `--network=…`.
    pub network: Network,
    /// `--secret` values by id.
    pub secrets: BTreeMap<String, mounts::SecretSource>,
    /// The process runs in a user namespace with a single-id map: other owners are squashed.
    pub single_id: bool,
}

/// One step of the build, for `--metadata-file` and the caller's summary.
#[derive(Debug, Clone, Serialize)]
pub struct StepRecord {
    pub stage: String,
    pub instruction: String,
    /// `Dockerfile:12`
    pub location: String,
    pub cached: bool,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_size: Option<u64>,
    /// The layer's diffID (`sha256:…`): its snapshot is `<store>/snapshots/<hex>/`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
    /// RUN: seconds spent reading the changes (the upperdir differ).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff_seconds: Option<f64>,
    /// RUN: seconds spent writing the layer blob (tar, digest, compression).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_seconds: Option<f64>,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildOutcome {
    pub image: StoredImage,
    pub steps: Vec<StepRecord>,
    /// Digests of the layers whose unpacking was warned about (device nodes not created), so an
    /// export of the same layers need not say it again.
    pub warned_layers: std::collections::BTreeSet<String>,
}

/// A build failure. Dockerfile errors name `file:line` and the instruction.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The Dockerfile as a whole (`line: None`: empty, no such `--target`…) or one line of it
    /// before any step runs; `instruction` is that line's text when the message does not
    /// already begin with it.
    #[error("{file}{}: {message}", place(*line, instruction.as_deref()))]
    Dockerfile {
        file: String,
        line: Option<usize>,
        instruction: Option<String>,
        message: String,
    },
    #[error("{file}:{line}: {instruction}: {message}")]
    Step {
        file: String,
        line: usize,
        instruction: String,
        message: String,
    },
    #[error("reading the build context {}: {message}", path.display())]
    Context { path: PathBuf, message: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Filesystem(#[from] stagefs::StageFsError),
    /// `kiln run` could not run the image.
    #[error(transparent)]
    Run(#[from] container::RunImageError),
    /// `kiln run`'s command could not be started; `exit_code` is 127 (not found) or 126 (not
    /// executable), as `docker run` exits.
    #[error("{source}")]
    CommandNotStarted {
        exit_code: u8,
        #[source]
        source: crate::exec::ExecError,
    },
}

/// `:LINE` and `: INSTRUCTION` for a [`BuildError::Dockerfile`], as far as they are known.
fn place(line: Option<usize>, instruction: Option<&str>) -> String {
    match (line, instruction) {
        (None, _) => String::new(),
        (Some(l), None) => format!(":{l}"),
        (Some(l), Some(i)) => format!(":{l}: {i}"),
    }
}

/// A [`BuildError::Dockerfile`] naming the instruction at `line` of `text` (its first physical
/// line, trimmed and cut at 80 characters), unless `message` already starts with it.
fn dockerfile_error(file: &str, text: &str, line: Option<usize>, message: String) -> BuildError {
    let instruction = line
        .and_then(|l| text.lines().nth(l.checked_sub(1)?))
        .map(|l| l.trim().trim_end_matches('\\').trim_end())
        .filter(|l| !l.is_empty() && !message.starts_with(l))
        .map(|l| match l.char_indices().nth(80) {
            Some((cut, _)) => format!("{}…", &l[..cut]),
            None => l.to_string(),
        });
    BuildError::Dockerfile {
        file: file.to_string(),
        line,
        instruction,
        message,
    }
}

/// What COPY and ADD share, as written (unexpanded).
struct CopyFlags<'i> {
    add: bool,
    sources: &'i instructions::SourcesAndDest,
    from: Option<&'i str>,
    chown: Option<&'i str>,
    chmod: Option<&'i str>,
    parents: bool,
    exclude: &'i [String],
    unpack: Option<bool>,
    checksum: Option<&'i str>,
}

/// The state of one stage while it builds.
struct StageState {
    fs: StageFs,
    config: ImageConfig,
    layers: Vec<Descriptor>,
    scope: Scope,
    /// Where each variable of `config`'s `Env` list is, so ENV updates in place without a
    /// scan (a stage may have many thousands of ENV lines).
    env_index: HashMap<String, usize>,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
}

/// Runs one build.
pub fn build(
    store: &Store,
    opts: &BuildOptions,
    progress: &mut dyn Progress,
) -> Result<BuildOutcome, BuildError> {
    let file = opts.dockerfile_name.clone();
    let df = plan::load(&opts.dockerfile)
        .map_err(|e| dockerfile_error(&file, &opts.dockerfile, e.line, e.to_string()))?;
    let mut build_args = opts.build_args.clone();
    if let Some(sde) = opts.source_date_epoch
        && !build_args.iter().any(|(k, _)| k == "SOURCE_DATE_EPOCH")
    {
        build_args.push(("SOURCE_DATE_EPOCH".into(), sde.to_string()));
    }
    let graph = plan::plan(
        &df,
        &PlanOptions {
            build_args,
            target: opts.target.clone(),
            platform: None,
        },
    )
    .map_err(|e| dockerfile_error(&file, &opts.dockerfile, e.line, e.to_string()))?;

    let filter = context_filter(opts)?;
    let fss = Filesystems::new(store, opts.single_id)?;
    progress.event(&Event::Notice {
        message: format!("snapshotter: {}", fss.snapshotter),
    });
    let mut b = Builder {
        store,
        fss,
        opts,
        df: &df,
        graph: &graph,
        file,
        filter,
        lexer: Lexer::new(df.escape),
        budget: Budget::new(),
        stages: BTreeMap::new(),
        images: BTreeMap::new(),
        steps: Vec::new(),
        warned_layers: Default::default(),
        step_extra: StepExtra::default(),
        current_step: 0,
        next_id: 1,
        progress,
        now: opts
            .source_date_epoch
            .unwrap_or_else(crate::image::config::now_unix),
    };
    for &index in &graph.build_order {
        b.build_stage(index)?;
    }
    let final_stage = b.stages.remove(&graph.target).expect("target was built");
    let mut config = final_stage.config;
    config.created = Some(format_rfc3339(b.now));
    let manifest = store.write_image(&config, &final_stage.layers)?;
    for tag in &opts.tags {
        store.tag(tag, &manifest)?;
    }
    let image = store.resolve(manifest.digest().as_ref())?;
    b.progress.event(&Event::ImageWritten {
        manifest_digest: image.digest().to_string(),
        config_digest: image.id().to_string(),
        names: opts.tags.iter().map(|t| t.to_string()).collect(),
    });
    Ok(BuildOutcome {
        image,
        steps: b.steps,
        warned_layers: b.warned_layers,
    })
}

/// `.dockerignore` rules: `<Dockerfile>.dockerignore` beside the Dockerfile wins over the
/// context's `.dockerignore`.
fn context_filter(opts: &BuildOptions) -> Result<ContextFilter, BuildError> {
    let mut candidates = Vec::new();
    if let Some(p) = &opts.dockerfile_path {
        let mut name = p.as_os_str().to_owned();
        name.push(".dockerignore");
        candidates.push(PathBuf::from(name));
    }
    candidates.push(opts.context.join(".dockerignore"));
    let mut exclude = Vec::new();
    let mut source: Option<(PathBuf, String)> = None;
    for c in candidates {
        match std::fs::read(&c) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes).into_owned();
                exclude = read_ignore_file(&text);
                source = Some((c, text));
                break;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(BuildError::Context {
                    path: c,
                    message: e.to_string(),
                });
            }
        }
    }
    ContextFilter::new(&WalkOptions {
        include: Vec::new(),
        exclude,
    })
    .map_err(|e| {
        let Some((path, text)) = source else {
            return BuildError::Context {
                path: opts.context.join(".dockerignore"),
                message: e.to_string(),
            };
        };
        // Name the first line whose pattern is refused on its own: the matcher only says that
        // one of them is.
        let bad = text.split('\n').enumerate().find_map(|(i, line)| {
            let patterns = read_ignore_file(line);
            let err = crate::context::PatternMatcher::new(&patterns).err()?;
            Some((i + 1, line.trim().to_string(), err))
        });
        match bad {
            Some((line, pattern, err)) => BuildError::Context {
                path: PathBuf::from(format!("{}:{line}", path.display())),
                message: format!("{pattern}: {err}"),
            },
            None => BuildError::Context {
                path,
                message: e.to_string(),
            },
        }
    })
}

/// What a step measured beyond its time, for its [`StepRecord`].
#[derive(Default)]
struct StepExtra {
    diff_id: Option<String>,
    diff_seconds: Option<f64>,
    layer_seconds: Option<f64>,
}

struct Builder<'a> {
    store: &'a Store,
    fss: Filesystems<'a>,
    opts: &'a BuildOptions,
    df: &'a Dockerfile,
    graph: &'a Graph,
    file: String,
    filter: ContextFilter,
    lexer: Lexer,
    /// What variable expansion may still produce: per instruction and for the whole build.
    budget: Budget,
    /// Finished stages (kept for `FROM <stage>` and `COPY --from`).
    stages: BTreeMap<usize, StageState>,
    /// Filesystems of images read by `COPY --from=<image>` and `RUN --mount=from=<image>`.
    images: BTreeMap<String, StageFs>,
    steps: Vec<StepRecord>,
    warned_layers: std::collections::BTreeSet<String>,
    step_extra: StepExtra,
    /// The id of the step running now (RUN output is reported under it).
    current_step: usize,
    next_id: usize,
    progress: &'a mut dyn Progress,
    /// Timestamp for history entries and files kiln creates.
    now: i64,
}

impl Builder<'_> {
    fn step_error(&self, inst: &Instruction, message: impl Into<String>) -> BuildError {
        BuildError::Step {
            file: self.file.clone(),
            line: inst.location.start_line,
            instruction: inst.original.trim().to_string(),
            message: message.into(),
        }
    }

    /// `e` as an error of the step `inst` (a full disk while writing its layer, a snapshot that
    /// cannot be unpacked…), with its causes, unless it already names its place.
    fn at_step(&self, inst: &Instruction, e: BuildError) -> BuildError {
        match e {
            BuildError::Step { .. } | BuildError::Dockerfile { .. } => e,
            other => self.step_error(inst, crate::error_chain(&other)),
        }
    }

    fn stage_label(&self, index: usize) -> String {
        self.df.stages[index]
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"))
    }

    fn start_step(&mut self, name: String) -> (usize, Instant) {
        let id = self.next_id;
        self.next_id += 1;
        self.current_step = id;
        self.progress.event(&Event::StepStarted { id, name });
        (id, Instant::now())
    }

    fn build_stage(&mut self, index: usize) -> Result<(), BuildError> {
        let stage = &self.df.stages[index];
        let planned = &self.graph.stages[index];
        let label = self.stage_label(index);
        let total = stage.commands.len() + 1;
        let (id, started) = self.start_step(format!(
            "[{label} 1/{total}] FROM {}",
            planned.base_expanded
        ));
        let host = crate::image::Platform::host();
        let (config, layers) = match &planned.base {
            Base::Scratch => {
                let mut c = ImageConfig::new(&host.os, &host.architecture, host.variant.as_deref());
                c.container_config_mut().working_dir = "/".into();
                (c, Vec::new())
            }
            Base::Stage { stage: dep } => {
                let s = self.stages.get(dep).expect("dependencies are built first");
                (s.config.clone(), s.layers.clone())
            }
            Base::Image { reference } => {
                let img = self.resolve_image(reference).map_err(|message| {
                    dockerfile_error(
                        &self.file,
                        &self.opts.dockerfile,
                        Some(stage.location.start_line),
                        message,
                    )
                })?;
                (img.config.clone(), img.layers().to_vec())
            }
        };
        let mut config = config;
        // Like BuildKit, every stage has a PATH: the default one when the base sets none.
        let cc = config.container_config_mut();
        if !cc.env.iter().any(|e| e.starts_with("PATH=")) {
            cc.env.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        let diff_ids = config.rootfs.diff_ids.clone();
        if diff_ids.len() != layers.len() {
            return Err(BuildError::Image(ImageError::Invalid(format!(
                "{}: the image has {} layers but its config lists {} diffIDs",
                planned.base_expanded,
                layers.len(),
                diff_ids.len()
            ))));
        }
        let fs = self.fss.stage(&layers, &diff_ids)?;
        self.report_fs_warnings();
        let env: Vec<(String, String)> = config
            .config
            .as_ref()
            .map(|c| {
                c.env
                    .iter()
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => (k.to_string(), v.to_string()),
                        None => (kv.clone(), String::new()),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let scope = Scope::for_stage(&self.graph.global_scope).with_env(env);
        let env_index = env_index(&config);
        let mut state = StageState {
            fs,
            config,
            layers,
            scope,
            env_index,
            cmd_set: false,
        };
        self.finish_step(
            id,
            started,
            &label,
            &stage.original,
            stage.location.start_line,
            None,
        );

        // ONBUILD triggers of the base run first, then are not inherited.
        let triggers = state
            .config
            .config
            .as_mut()
            .map(|c| std::mem::take(&mut c.on_build))
            .unwrap_or_default();
        for trigger in triggers {
            let inst = self.parse_trigger(&trigger, stage.location.start_line)?;
            let (id, started) = self.start_step(format!("[{label}] ONBUILD {}", inst.original));
            let layer = self
                .dispatch(&mut state, &inst)
                .map_err(|e| self.at_step(&inst, e))?;
            self.finish_step(
                id,
                started,
                &label,
                &inst.original,
                inst.location.start_line,
                layer,
            );
        }

        for (i, inst) in stage.commands.iter().enumerate() {
            let (id, started) = self.start_step(format!(
                "[{label} {}/{total}] {}",
                i + 2,
                inst.original.trim()
            ));
            match self
                .dispatch(&mut state, inst)
                .map_err(|e| self.at_step(inst, e))
            {
                Ok(layer) => self.finish_step(
                    id,
                    started,
                    &label,
                    &inst.original,
                    inst.location.start_line,
                    layer,
                ),
                Err(e) => {
                    self.progress.event(&Event::StepFailed {
                        id,
                        error: e.to_string(),
                    });
                    return Err(e);
                }
            }
        }
        self.stages.insert(index, state);
        Ok(())
    }

    fn finish_step(
        &mut self,
        id: usize,
        started: Instant,
        stage: &str,
        instruction: &str,
        line: usize,
        layer: Option<Descriptor>,
    ) {
        let seconds = started.elapsed().as_secs_f64();
        let extra = std::mem::take(&mut self.step_extra);
        self.progress.event(&Event::StepDone {
            id,
            seconds,
            cached: false,
        });
        self.steps.push(StepRecord {
            stage: stage.to_string(),
            instruction: instruction.trim().to_string(),
            location: format!("{}:{line}", self.file),
            cached: false,
            seconds,
            layer_digest: layer.as_ref().map(|l| l.digest().to_string()),
            layer_size: layer.as_ref().map(|l| l.size()),
            diff_id: extra.diff_id,
            diff_seconds: extra.diff_seconds,
            layer_seconds: extra.layer_seconds,
        });
    }

    fn parse_trigger(&self, trigger: &str, line: usize) -> Result<Instruction, BuildError> {
        let err = |message: String| {
            dockerfile_error(
                &self.file,
                &self.opts.dockerfile,
                Some(line),
                format!("ONBUILD trigger {trigger:?}: {message}"),
            )
        };
        let parsed = df_mod::parse(trigger).map_err(|e| err(e.to_string()))?;
        if parsed.ast.children.len() != 1 {
            return Err(err("onbuild trigger should be a single expression".into()));
        }
        match instructions::parse_instruction(&parsed.ast.children[0]) {
            Ok(Parsed::Command(mut c)) => {
                c.location.start_line = line;
                c.location.end_line = line;
                Ok(c)
            }
            Ok(Parsed::Stage(_)) => Err(err("FROM isn't allowed as an ONBUILD trigger".into())),
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// Finds an image in the store. Registries arrive later; until then a missing image is an
    /// error that says how to get it into the store.
    fn resolve_image(&self, reference: &str) -> Result<StoredImage, String> {
        let name = crate::image::parse_ref(reference).map_err(|e| e.to_string())?;
        self.store.resolve(&name.to_string()).map_err(|e| match e {
            ImageError::NotFound { .. } => format!(
                "image {name} not found in the store (pulling from registries is not supported yet; \
                 use `kiln import` or `kiln load` to add it)"
            ),
            other => other.to_string(),
        })
    }

    fn expand(
        &self,
        state: &StageState,
        inst: &Instruction,
        word: &str,
    ) -> Result<String, BuildError> {
        state
            .scope
            .expand(&self.lexer, &self.budget, word)
            .map_err(|m| self.step_error(inst, m.to_string()))
    }

    /// Runs one instruction. Returns the layer it wrote, if any.
    fn dispatch(
        &mut self,
        state: &mut StageState,
        inst: &Instruction,
    ) -> Result<Option<Descriptor>, BuildError> {
        let created_by = inst.original.trim().to_string();
        self.budget.next_instruction();
        match &inst.command {
            Command::Run(r) => self.run(state, inst, r),
            Command::Env { vars } => {
                let mut assigned = Vec::new();
                for kv in vars {
                    let key = self.expand(state, inst, &kv.key)?;
                    let value = self.expand(state, inst, &kv.value)?;
                    state.scope.assign_env(&key, &value);
                    set_env(
                        state.config.container_config_mut(),
                        &mut state.env_index,
                        &key,
                        &value,
                    );
                    assigned.push(format!("{key}={value}"));
                }
                self.history(state, format!("ENV {}", assigned.join(" ")), true);
                Ok(None)
            }
            Command::Label { labels } => {
                let mut shown = Vec::new();
                for kv in labels {
                    let key = self.expand(state, inst, &kv.key)?;
                    let value = self.expand(state, inst, &kv.value)?;
                    shown.push(format!("{key}={value}"));
                    state
                        .config
                        .container_config_mut()
                        .labels
                        .insert(key, value);
                }
                self.history(state, format!("LABEL {}", shown.join(" ")), true);
                Ok(None)
            }
            Command::Maintainer { name } => {
                state.config.author = name.clone();
                self.history(state, created_by, true);
                Ok(None)
            }
            Command::Arg { args } => {
                let build_args = &self.graph.build_args;
                let mut shown = Vec::new();
                for decl in args {
                    state
                        .scope
                        .declare_arg(&self.lexer, &self.budget, decl, build_args)
                        .map_err(|m| self.step_error(inst, m.to_string()))?;
                    match &decl.value {
                        Some(v) => shown.push(format!("{}={v}", decl.key)),
                        None => shown.push(decl.key.clone()),
                    }
                }
                self.history(state, format!("ARG {}", shown.join(" ")), true);
                Ok(None)
            }
            Command::Workdir { path } => {
                let path = self.expand(state, inst, path)?;
                let cc = state.config.container_config_mut();
                let wd = join_workdir(&cc.working_dir, &path);
                cc.working_dir = wd.clone();
                let layer = self.ensure_dir(state, inst, &wd)?;
                self.history(state, format!("WORKDIR {wd}"), layer.is_none());
                Ok(layer)
            }
            Command::User { user } => {
                let user = self.expand(state, inst, user)?;
                state.config.container_config_mut().user = user.clone();
                self.history(state, format!("USER {user}"), true);
                Ok(None)
            }
            Command::Expose { ports } => {
                let mut shown = Vec::new();
                for p in ports {
                    // BuildKit expands EXPOSE with word splitting: `$PORTS` may hold several.
                    let words = self
                        .lexer
                        .process_words_in(p, &state.scope, &self.budget)
                        .map_err(|e| self.step_error(inst, e.to_string()))?;
                    for port in &words {
                        let port = normalize_port(port).map_err(|m| self.step_error(inst, m))?;
                        shown.push(port.clone());
                        state
                            .config
                            .container_config_mut()
                            .exposed_ports
                            .insert(port, Empty {});
                    }
                }
                self.history(state, format!("EXPOSE {}", shown.join(" ")), true);
                Ok(None)
            }
            Command::Volume { volumes } => {
                let mut shown = Vec::new();
                for v in volumes {
                    let v = self.expand(state, inst, v)?;
                    if v.trim().is_empty() {
                        return Err(
                            self.step_error(inst, "VOLUME specified can not be an empty string")
                        );
                    }
                    shown.push(v.clone());
                    state
                        .config
                        .container_config_mut()
                        .volumes
                        .insert(v, Empty {});
                }
                self.history(state, format!("VOLUME [{}]", shown.join(" ")), true);
                Ok(None)
            }
            Command::Stopsignal { signal } => {
                let signal = self.expand(state, inst, signal)?;
                validate_signal(&signal).map_err(|m| self.step_error(inst, m))?;
                state.config.container_config_mut().stop_signal = signal.clone();
                self.history(state, format!("STOPSIGNAL {signal}"), true);
                Ok(None)
            }
            Command::Cmd(cl) => {
                let cmd = self.command_words(state, cl);
                state.config.container_config_mut().cmd = cmd.clone();
                state.cmd_set = true;
                self.history(state, format!("CMD {}", go_string_slice(&cmd)), true);
                Ok(None)
            }
            Command::Entrypoint(cl) => {
                let ep = self.command_words(state, cl);
                let cmd_set = state.cmd_set;
                let cc = state.config.container_config_mut();
                cc.entrypoint = ep.clone();
                if !cmd_set {
                    cc.cmd.clear();
                }
                self.history(state, format!("ENTRYPOINT {}", go_string_slice(&ep)), true);
                Ok(None)
            }
            Command::Shell { shell } => {
                state.config.container_config_mut().shell = shell.clone();
                self.history(state, format!("SHELL {}", go_string_slice(shell)), true);
                Ok(None)
            }
            Command::Healthcheck(h) => {
                state.config.container_config_mut().healthcheck = Some(to_healthcheck(h));
                self.history(state, created_by, true);
                Ok(None)
            }
            Command::Onbuild { expression } => {
                state
                    .config
                    .container_config_mut()
                    .on_build
                    .push(expression.clone());
                self.history(state, format!("ONBUILD {expression}"), true);
                Ok(None)
            }
            Command::Copy(c) => self.copy_or_add(
                state,
                inst,
                &CopyFlags {
                    add: false,
                    sources: &c.sources,
                    from: c.from.as_deref(),
                    chown: c.chown.as_deref(),
                    chmod: c.chmod.as_deref(),
                    parents: c.parents,
                    exclude: &c.exclude,
                    unpack: None,
                    checksum: None,
                },
            ),
            Command::Add(a) => self.copy_or_add(
                state,
                inst,
                &CopyFlags {
                    add: true,
                    sources: &a.sources,
                    from: None,
                    chown: a.chown.as_deref(),
                    chmod: a.chmod.as_deref(),
                    parents: false,
                    exclude: &a.exclude,
                    unpack: a.unpack,
                    checksum: a.checksum.as_deref(),
                },
            ),
        }
    }

    /// COPY and ADD: expand what BuildKit expands (sources, destination, `--chown`, `--chmod`,
    /// `--checksum`; not `--from` or `--exclude`), then write the layer.
    fn copy_or_add(
        &mut self,
        state: &mut StageState,
        inst: &Instruction,
        flags: &CopyFlags<'_>,
    ) -> Result<Option<Descriptor>, BuildError> {
        let sources = self.expand_all(state, inst, &flags.sources.source_paths)?;
        let contents = self.heredoc_contents(state, inst, &flags.sources.source_contents)?;
        let dest = self.expand(state, inst, &flags.sources.dest)?;
        let chown = self.expand_opt(state, inst, flags.chown)?;
        let chmod = self.expand_opt(state, inst, flags.chmod)?;
        let checksum = self.expand_opt(state, inst, flags.checksum)?;
        let from_root = match flags.from {
            Some(from) => Some(self.copy_from_root(inst, from)?),
            None => None,
        };
        let source = match &from_root {
            Some(root) => CopySource::Rootfs { root },
            None => CopySource::Context {
                root: &self.opts.context,
                filter: &self.filter,
            },
        };
        let req = CopyRequest {
            add: flags.add,
            source,
            sources: &sources,
            contents: &contents,
            dest: &dest,
            workdir: &workdir(state),
            chown: chown.as_deref(),
            chmod: chmod.as_deref(),
            parents: flags.parents,
            exclude: flags.exclude,
            unpack: flags.unpack,
            checksum: checksum.as_deref(),
            now: self.now,
        };
        let keyword = if flags.add { "ADD" } else { "COPY" };
        let shown = format!("{keyword} {} {dest}", show_sources(&sources, &contents));
        let entries = copy::copy_entries(&req, state.fs.root())
            .map_err(|e| self.step_error(inst, e.to_string()))?;
        let desc = self.commit_layer(state, entries, format!("{shown} # buildkit"))?;
        Ok(Some(desc))
    }

    fn expand_all(
        &self,
        state: &StageState,
        inst: &Instruction,
        words: &[String],
    ) -> Result<Vec<String>, BuildError> {
        words.iter().map(|w| self.expand(state, inst, w)).collect()
    }

    fn expand_opt(
        &self,
        state: &StageState,
        inst: &Instruction,
        word: Option<&str>,
    ) -> Result<Option<String>, BuildError> {
        word.map(|w| self.expand(state, inst, w)).transpose()
    }

    /// Heredoc bodies, expanded unless the delimiter was quoted (quotes in the body are text).
    fn heredoc_contents(
        &self,
        state: &StageState,
        inst: &Instruction,
        contents: &[instructions::SourceContent],
    ) -> Result<Vec<(String, String)>, BuildError> {
        let lexer = Lexer {
            skip_process_quotes: true,
            ..self.lexer.clone()
        };
        contents
            .iter()
            .map(|c| {
                let data = if c.expand {
                    lexer
                        .process_word_in(&c.data, &state.scope, &self.budget)
                        .map_err(|e| self.step_error(inst, e.to_string()))?
                } else {
                    c.data.clone()
                };
                Ok((c.path.clone(), data))
            })
            .collect()
    }

    /// The filesystem `COPY --from=X` reads: a stage (by name or index) or an image.
    fn copy_from_root(&mut self, inst: &Instruction, from: &str) -> Result<PathBuf, BuildError> {
        let by_stage = match from.parse::<usize>() {
            Ok(i) => Some(i),
            Err(_) => self
                .df
                .stages
                .iter()
                .rposition(|s| s.name.as_deref() == Some(&from.to_lowercase())),
        };
        if let Some(i) = by_stage {
            return match self.stages.get(&i) {
                Some(s) => Ok(s.fs.root().to_path_buf()),
                None => Err(self.step_error(
                    inst,
                    format!("stage {from:?} must be built before it is copied from"),
                )),
            };
        }
        if let Some(fs) = self.images.get(from) {
            return Ok(fs.root().to_path_buf());
        }
        let img = self
            .resolve_image(from)
            .map_err(|m| self.step_error(inst, m))?;
        let fs = self.fss.stage(img.layers(), &img.config.rootfs.diff_ids)?;
        self.report_fs_warnings();
        let path = fs.root().to_path_buf();
        self.images.insert(from.to_string(), fs);
        Ok(path)
    }

    /// Writes `entries` as a layer blob, applies it to the stage and records it.
    fn commit_layer(
        &mut self,
        state: &mut StageState,
        entries: Vec<LayerEntry>,
        created_by: String,
    ) -> Result<Descriptor, BuildError> {
        let (written, desc) = self.store.put_layer(entries, &self.write_options())?;
        self.fss
            .push_layer(&mut state.fs, &desc, &written.diff_id)?;
        self.report_fs_warnings();
        self.record_layer(state, written.diff_id, &desc, created_by);
        Ok(desc)
    }

    /// Says once what unpacking layers could not reproduce (device nodes in a user namespace).
    fn report_fs_warnings(&mut self) {
        for (digest, w) in self.fss.take_warnings() {
            if self.warned_layers.insert(digest) {
                self.progress.event(&Event::Notice {
                    message: format!("warning: {w}"),
                });
            }
        }
    }

    fn write_options(&self) -> WriteOptions {
        WriteOptions {
            compression: self.opts.compression,
            source_date_epoch: self.opts.source_date_epoch,
            ..WriteOptions::default()
        }
    }

    /// Adds a written layer to the stage's image: its descriptor, diffID and history entry.
    fn record_layer(
        &mut self,
        state: &mut StageState,
        diff_id: crate::layer::DiffId,
        desc: &Descriptor,
        created_by: String,
    ) {
        self.step_extra.diff_id = Some(diff_id.to_string());
        state.layers.push(desc.clone());
        state.config.push_layer(
            diff_id,
            History {
                created: Some(format_rfc3339(self.now)),
                created_by,
                ..History::default()
            },
        );
    }

    /// WORKDIR creates its directory (owned by root, as BuildKit's mkdir) when it is missing.
    fn ensure_dir(
        &mut self,
        state: &mut StageState,
        inst: &Instruction,
        dir: &str,
    ) -> Result<Option<Descriptor>, BuildError> {
        let resolved = crate::layer::resolve_in_root(state.fs.root(), Path::new(dir), true)
            .map_err(|e| self.step_error(inst, e.to_string()))?;
        if resolved.is_dir() {
            return Ok(None);
        }
        // BuildKit creates it as the current USER.
        let user = state
            .config
            .config
            .as_ref()
            .map(|c| c.user.clone())
            .filter(|u| !u.is_empty());
        let req = CopyRequest {
            add: false,
            source: CopySource::Context {
                root: &self.opts.context,
                filter: &self.filter,
            },
            sources: &[],
            contents: &[],
            dest: &format!("{}/", dir.trim_end_matches('/')),
            workdir: "/",
            chown: user.as_deref(),
            chmod: None,
            parents: false,
            exclude: &[],
            unpack: None,
            checksum: None,
            now: self.now,
        };
        let entries = copy::copy_entries(&req, state.fs.root())
            .map_err(|e| self.step_error(inst, e.to_string()))?;
        let desc = self.commit_layer(state, entries, format!("WORKDIR {dir}"))?;
        Ok(Some(desc))
    }

    /// Exec form as is; shell form wrapped in the stage's SHELL (default `/bin/sh -c`).
    fn command_words(&self, state: &StageState, cl: &CommandLine) -> Vec<String> {
        if !cl.prepend_shell {
            return cl.cmd_line.clone();
        }
        let mut words = shell_of(&state.config);
        words.extend(cl.cmd_line.iter().cloned());
        words
    }

    fn history(&self, state: &mut StageState, created_by: String, empty_layer: bool) {
        if empty_layer {
            state.config.history.push(History {
                created: Some(format_rfc3339(self.now)),
                created_by,
                empty_layer: true,
                ..History::default()
            });
        }
    }
}

fn shell_of(config: &ImageConfig) -> Vec<String> {
    match config.config.as_ref().map(|c| &c.shell) {
        Some(s) if !s.is_empty() => s.clone(),
        _ => vec!["/bin/sh".into(), "-c".into()],
    }
}

fn workdir(state: &StageState) -> String {
    match state.config.config.as_ref().map(|c| c.working_dir.as_str()) {
        Some(w) if !w.is_empty() => w.to_string(),
        _ => "/".into(),
    }
}

/// The name of an `Env` entry: up to the first `=`, or all of it.
fn env_name(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// Positions of the config's `Env` entries by name (the first of a repeated name, which is
/// the one ENV replaces).
fn env_index(config: &ImageConfig) -> HashMap<String, usize> {
    let mut index = HashMap::new();
    for (i, e) in config.config.iter().flat_map(|c| &c.env).enumerate() {
        index.entry(env_name(e).to_string()).or_insert(i);
    }
    index
}

/// ENV: replaces the variable's entry in place, or appends it.
fn set_env(cc: &mut ContainerConfig, index: &mut HashMap<String, usize>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match index.entry(key.to_string()) {
        Entry::Occupied(slot) => cc.env[*slot.get()] = entry,
        Entry::Vacant(slot) => {
            slot.insert(cc.env.len());
            cc.env.push(entry);
        }
    }
}

/// WORKDIR paths build on the previous one.
fn join_workdir(current: &str, path: &str) -> String {
    let base = if path.starts_with('/') || current.is_empty() {
        String::new()
    } else {
        current.to_string()
    };
    crate::pathclean::clean_absolute(&format!("{base}/{path}"))
}

/// `80` → `80/tcp`; `53/udp` stays; ranges are kept as written.
fn normalize_port(port: &str) -> Result<String, String> {
    let (num, proto) = match port.split_once('/') {
        Some((n, p)) => (n, p.to_lowercase()),
        None => (port, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(format!("invalid port: {port:?}: invalid proto: {proto}"));
    }
    let valid = |s: &str| s.parse::<u16>().is_ok();
    let ok = match num.split_once('-') {
        Some((a, b)) => valid(a) && valid(b),
        None => valid(num),
    };
    if !ok {
        return Err(format!("invalid containerPort: {num}"));
    }
    Ok(format!("{num}/{proto}"))
}

/// STOPSIGNAL accepts a number or a signal name (with or without `SIG`).
fn validate_signal(signal: &str) -> Result<(), String> {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
        "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
        "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR",
    ];
    if let Ok(n) = signal.parse::<u32>()
        && (1..=64).contains(&n)
    {
        return Ok(());
    }
    let upper = signal.to_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if NAMES.contains(&name) || name.starts_with("RTMIN") || name.starts_with("RTMAX") {
        return Ok(());
    }
    Err(format!("invalid signal: {signal}"))
}

fn to_healthcheck(h: &HealthCheck) -> Healthcheck {
    let ns = |d: Option<std::time::Duration>| d.map(|d| d.as_nanos() as i64);
    Healthcheck {
        test: h.test.clone(),
        interval: ns(h.interval),
        timeout: ns(h.timeout),
        start_period: ns(h.start_period),
        start_interval: ns(h.start_interval),
        retries: h.retries,
        ..Healthcheck::default()
    }
}

/// Go's `%q` of a `[]string`, as BuildKit writes CMD/ENTRYPOINT history.
fn go_string_slice(words: &[String]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| df_mod::parser::go_quote(w)).collect();
    format!("[{}]", quoted.join(" "))
}

fn show_sources(sources: &[String], contents: &[(String, String)]) -> String {
    let mut all: Vec<String> = sources.to_vec();
    all.extend(contents.iter().map(|(name, _)| format!("<<{name}")));
    all.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_joins() {
        assert_eq!(join_workdir("/", "foo"), "/foo");
        assert_eq!(join_workdir("/test1", "test2"), "/test1/test2");
        assert_eq!(join_workdir("/test1/test2", ".."), "/test1");
        assert_eq!(join_workdir("/a", "/b/./c/"), "/b/c");
    }

    #[test]
    fn ports() {
        assert_eq!(normalize_port("80").unwrap(), "80/tcp");
        assert_eq!(normalize_port("53/UDP").unwrap(), "53/udp");
        assert!(normalize_port("x").is_err());
    }

    #[test]
    fn signals() {
        assert!(validate_signal("SIGTERM").is_ok());
        assert!(validate_signal("9").is_ok());
        assert!(validate_signal("NOPE").is_err());
    }
}
