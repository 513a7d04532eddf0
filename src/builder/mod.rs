//! The builder: works out every step of the build first ([`lower`]), then runs the stages on
//! a small pool of workers ([`scheduler`]): a stage starts once the stages it reads are built,
//! independent stages run at once, and each step goes through one door — inputs known →
//! execute → commit its result (layer, snapshot, history).
//!
//! Each stage's filesystem is a [`crate::snapshot::View`]: on the overlay snapshotter, the stack of
//! its layers' snapshots (each layer unpacked once into the store, shared by every build) seen
//! through a read-only overlay view; on the copy fallback, a materialised directory. COPY/ADD
//! compute their layer entries against that filesystem (destination symlinks, existing owners,
//! `/etc/passwd` for `--chown`), the layer is written straight into a store blob and added to
//! the stage. RUN runs in the sandbox on the same snapshots and the upperdir becomes the layer.

pub mod cache_admin;
mod cache_exchange;
pub mod cached;
pub mod config;
pub mod container;
pub mod copy;
pub mod debug;
pub mod export;
pub mod host;
pub mod lower;
pub mod mounts;
pub mod prune;
pub mod run;
pub mod scheduler;
pub mod step;

/// `--cache-to`/`--cache-from` specs, for the CLI.
pub use crate::cache::exchange::{LocalExport, LocalImport};
use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use thiserror::Error;

use crate::context::{ContextFilter, WalkOptions, read_ignore_file};
// The CLI names these through the builder (it talks to `builder` and `image` only).
pub use crate::exec::{ExitStatus, Network};
use crate::image::{ImageError, ImageRef, Store, StoredImage};
use crate::layer::Compression;
use crate::plan::{self, Graph, PlanOptions};
use crate::progress::{Event, Progress};

use crate::snapshot::Snapshotter;
pub use config::DEFAULT_PATH;
use lower::{BaseConfigs, LoweredStage, Lowering};
pub use step::{Location, Step, StepId};

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
    /// How many stages may run at once (at least 1).
    pub jobs: usize,
    /// `--no-cache`: run every step (results are still recorded).
    pub no_cache: bool,
    /// `--explain-cache`: say why each cache miss missed.
    pub explain_cache: bool,
    /// `--no-cache-filter`: stages (by name or index) whose steps run without a lookup.
    pub no_cache_filter: Vec<String>,
    /// `--require-cache`: a step that would run fails the build instead.
    pub require_cache: bool,
    /// `--cache-from type=local`: caches a local miss is looked up in.
    pub cache_from: Vec<crate::cache::exchange::LocalImport>,
    /// `--cache-to type=local`: where the build's cache is written after it succeeds.
    pub cache_to: Vec<crate::cache::exchange::LocalExport>,
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
    /// Seconds spent writing the layer blob (tar, digest, compression), for a step that wrote one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_seconds: Option<f64>,
    /// The step's cache key (`sha256:…`), for steps that make or may make a layer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Why the step was not reused (a cacheable step that ran).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A reused step: the seconds it took when it ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saved_seconds: Option<f64>,
    /// A reused step: the history time of the build that ran it (Unix seconds).
    #[serde(skip)]
    pub recorded: Option<i64>,
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
    #[error("{file}{}: {source}", place(*line, instruction.as_deref()))]
    Dockerfile {
        file: String,
        line: Option<usize>,
        instruction: Option<String>,
        #[source]
        source: Box<DockerfileError>,
    },
    /// A step failed: where, and why (with its causes).
    #[error("{loc}: {source}")]
    Step {
        loc: Location,
        #[source]
        source: Box<StepError>,
    },
    /// The build context cannot be read (its `.dockerignore`, named as `FILE:LINE` when one
    /// line is at fault).
    #[error("reading the build context {}: {source}", path.display())]
    Context {
        path: PathBuf,
        #[source]
        source: ContextReadError,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Filesystem(#[from] crate::snapshot::SnapshotError),
    /// Writing `--cache-to` failed.
    #[error("--cache-to")]
    CacheExport(#[from] crate::cache::ExchangeError),
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

/// Why a step failed. kiln's own messages follow BuildKit's wording where it has one; every
/// other failure keeps its cause.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StepError {
    /// The instruction's values are invalid (a bad port, signal, network mode…).
    #[error("{0}")]
    Invalid(String),
    /// `--require-cache`, and the step is not in the cache.
    #[error("--require-cache: the step is not cached ({0})")]
    NotCached(String),
    /// Variable expansion failed (syntax, or over kiln's expansion limits).
    #[error(transparent)]
    Expand(#[from] crate::plan::ExpandError),
    /// A `--mount` spec is invalid.
    #[error(transparent)]
    MountSpec(#[from] crate::dockerfile::instructions::MountError),
    #[error(transparent)]
    Shell(#[from] crate::dockerfile::shell::ShellError),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Base(#[from] BaseError),
    /// `--from` names what this build cannot read.
    #[error("{0}")]
    Source(String),
    #[error(transparent)]
    Copy(#[from] copy::CopyError),
    #[error(transparent)]
    Mounts(#[from] mounts::MountError),
    #[error(transparent)]
    User(#[from] copy::UserError),
    /// The command could not be started.
    #[error("running the step")]
    Start(#[source] crate::exec::ExecError),
    /// A heredoc script (`#!…`) could not be started: most likely its interpreter is missing.
    #[error("running the step: is the interpreter of `{shebang}` in the image?")]
    Interpreter {
        shebang: String,
        #[source]
        source: crate::exec::ExecError,
    },
    /// The command ran and failed.
    #[error(
        "process {argv:?} did not complete successfully: {how}{}",
        output_tail(tail)
    )]
    Failed {
        argv: String,
        how: String,
        tail: Vec<String>,
    },
    #[error(transparent)]
    Filesystem(#[from] crate::snapshot::SnapshotError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Layer(#[from] crate::layer::LayerError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
}

impl BuildError {
    /// The step at `loc` failed.
    pub fn step(loc: &Location, source: StepError) -> BuildError {
        BuildError::Step {
            loc: loc.clone(),
            source: Box::new(source),
        }
    }
}

fn output_tail(tail: &[String]) -> String {
    if tail.is_empty() {
        return String::new();
    }
    format!("\n--- last lines of its output ---\n{}", tail.join("\n"))
}

/// What is wrong with the Dockerfile before any step runs.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum DockerfileError {
    #[error(transparent)]
    Plan(#[from] crate::plan::PlanError),
    /// A base image (FROM) cannot be read.
    #[error(transparent)]
    Base(#[from] BaseError),
    #[error("stage {0} must be built before it is used as a base")]
    StageOrder(usize),
    #[error("ONBUILD trigger {trigger:?}: {source}")]
    Trigger {
        trigger: String,
        #[source]
        source: TriggerError,
    },
}

/// Why an ONBUILD trigger of the base is not an instruction kiln can run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum TriggerError {
    #[error(transparent)]
    Parse(#[from] crate::dockerfile::ParseError),
    #[error(transparent)]
    Instruction(#[from] crate::dockerfile::instructions::InstructionError),
    #[error("onbuild trigger should be a single expression")]
    NotSingle,
    #[error("FROM isn't allowed as an ONBUILD trigger")]
    From,
}

/// Why the build context (its ignore rules) cannot be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ContextReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Filter(#[from] crate::context::ContextError),
    /// One `.dockerignore` line's pattern is refused.
    #[error("{pattern}: {source}")]
    Pattern {
        pattern: String,
        #[source]
        source: crate::context::IgnoreError,
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
/// line, trimmed and cut at 80 characters), unless the message already starts with it.
fn dockerfile_error(
    file: &str,
    text: &str,
    line: Option<usize>,
    source: impl Into<DockerfileError>,
) -> BuildError {
    let source = source.into();
    let message = source.to_string();
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
        source: Box::new(source),
    }
}

/// Runs one build.
pub fn build(
    store: &Store,
    opts: &BuildOptions,
    progress: &dyn Progress,
) -> Result<BuildOutcome, BuildError> {
    let file = &opts.dockerfile_name;
    let text = &opts.dockerfile;
    let (df, graph) = plan_build(
        file,
        text,
        &opts.build_args,
        opts.target.as_deref(),
        opts.source_date_epoch,
    )?;
    let bases = StoreBases::new(store, false);
    let lowered = Lowering::new(&df, &graph, file, text, &bases).lower_all()?;
    let filter = context_filter(opts)?;
    let fss = Snapshotter::new(store, opts.single_id)?;
    progress.event(&Event::Notice {
        message: format!("snapshotter: {}", fss.kind()),
    });
    let imports = cache_exchange::open_imports(&opts.cache_from, progress);
    cache_exchange::restore_mounts(store, &imports, opts.single_id, progress);
    let mut shared = scheduler::Shared::new(
        store,
        &fss,
        opts,
        &filter,
        progress,
        bases.into_images(),
        &graph.build_args,
    );
    shared.imports = imports;
    let now = shared.now;
    let started = std::time::Instant::now();
    let built = shared.run_stages(&lowered, &graph)?;
    // FROM and config-only steps make no layer and are not counted.
    let cacheable = built.records.iter().filter(|r| r.key.is_some()).count();
    let hits = built.records.iter().filter(|r| r.cached).count();
    let saved = built
        .records
        .iter()
        .filter_map(|r| r.saved_seconds)
        .fold(0.0, |a, b| a + b);
    if cacheable > 0 {
        progress.event(&Event::Notice {
            message: format!(
                "{hits}/{cacheable} steps cached ({:.0}%), saved ~{saved:.1} s",
                100.0 * hits as f64 / cacheable as f64
            ),
        });
    }
    let (config, layers) = built.image(graph.target);
    let mut config = config;
    let created = reused_time(opts, &built.records).unwrap_or(now);
    if created != now {
        // Every step was reused: the image is the one the earlier build made, timestamps
        // included, so an unchanged rebuild writes no new blob.
        let this_build = crate::image::config::format_rfc3339(now);
        for h in &mut config.history {
            if h.created.as_deref() == Some(this_build.as_str()) {
                h.created = Some(crate::image::config::format_rfc3339(created));
            }
        }
    }
    config.created = Some(crate::image::config::format_rfc3339(created));
    let manifest = store.write_image(&config, &layers)?;
    for tag in &opts.tags {
        store.tag(tag, &manifest)?;
    }
    cache_exchange::export(store, opts, &lowered, graph.target, &built.records)?;
    let image = store.resolve(manifest.digest().as_ref())?;
    record_build_stats(
        built.cache.as_ref(),
        opts,
        &built.records,
        &image,
        started.elapsed(),
        progress,
    );
    progress.event(&Event::ImageWritten {
        manifest_digest: image.digest().to_string(),
        config_digest: image.id().to_string(),
        names: opts.tags.iter().map(|t| t.to_string()).collect(),
    });
    Ok(BuildOutcome {
        image,
        steps: built.records,
        warned_layers: built.warned_layers,
    })
}

/// Without SOURCE_DATE_EPOCH, when every step with a key was reused: the newest history time
/// their records carry, which this build's timestamps take instead of now (so an unchanged
/// rebuild makes the image the last build made).
fn reused_time(opts: &BuildOptions, records: &[StepRecord]) -> Option<i64> {
    if opts.source_date_epoch.is_some() {
        return None;
    }
    let keyed: Vec<&StepRecord> = records.iter().filter(|r| r.key.is_some()).collect();
    if keyed.is_empty() || !keyed.iter().all(|r| r.cached) {
        return None;
    }
    let stamps: Option<Vec<i64>> = keyed.iter().map(|r| r.recorded).collect();
    stamps?.into_iter().max()
}

/// Appends this build to the store's build statistics (`kiln cache stats`); best effort.
fn record_build_stats(
    index: Option<&crate::cache::Index>,
    opts: &BuildOptions,
    records: &[StepRecord],
    image: &StoredImage,
    took: std::time::Duration,
    progress: &dyn Progress,
) {
    let Some(index) = index else {
        return;
    };
    let steps = records
        .iter()
        .filter_map(|r| {
            Some(crate::cache::StepStats {
                location: r.location.clone(),
                stage: r.stage.clone(),
                instruction: r.instruction.clone(),
                key: r.key.as_deref()?.parse().ok()?,
                cached: r.cached,
                seconds: r.seconds,
                saved_seconds: r.saved_seconds.unwrap_or(0.0),
                bytes: r.layer_size.unwrap_or(0),
                reason: r.reason.clone(),
            })
        })
        .collect();
    let stats = crate::cache::BuildStats {
        time: crate::image::config::now_unix(),
        dockerfile: opts
            .dockerfile_path
            .as_ref()
            .map_or_else(|| opts.dockerfile_name.clone(), |p| p.display().to_string()),
        context: opts.context.display().to_string(),
        image: image.digest().to_string(),
        seconds: took.as_secs_f64(),
        steps,
    };
    if let Err(e) = index.add_build(&stats) {
        progress.event(&Event::Notice {
            message: format!("warning: {}", crate::error_chain(&e)),
        });
    }
}

/// The Dockerfile parsed and planned (stage DAG, build order, ARG scopes); `SOURCE_DATE_EPOCH`
/// is a build-arg unless one is given.
fn plan_build(
    file: &str,
    text: &str,
    build_args: &[(String, String)],
    target: Option<&str>,
    source_date_epoch: Option<i64>,
) -> Result<(crate::dockerfile::instructions::Dockerfile, Graph), BuildError> {
    let df = plan::load(text).map_err(|e| dockerfile_error(file, text, e.line, e))?;
    let mut build_args = build_args.to_vec();
    if let Some(sde) = source_date_epoch
        && !build_args.iter().any(|(k, _)| k == "SOURCE_DATE_EPOCH")
    {
        build_args.push(("SOURCE_DATE_EPOCH".into(), sde.to_string()));
    }
    let graph = plan::plan(
        &df,
        &PlanOptions {
            build_args,
            target: target.map(str::to_string),
            platform: None,
        },
    )
    .map_err(|e| dockerfile_error(file, text, e.line, e))?;
    Ok((df, graph))
}

/// The lowered steps of the Dockerfile `text` (named `file` in errors), for `kiln debug steps`:
/// base images are read from `store` when it is given and holds them; any other base is lowered
/// against an empty config and its steps say which values are unresolved. Reads no file and
/// needs no privilege.
pub fn lower_steps(
    file: &str,
    text: &str,
    build_args: &[(String, String)],
    target: Option<&str>,
    source_date_epoch: Option<i64>,
    store: Option<&Store>,
) -> Result<Vec<LoweredStage>, BuildError> {
    let (df, graph) = plan_build(file, text, build_args, target, source_date_epoch)?;
    match store {
        Some(store) => {
            let bases = StoreBases::new(store, true);
            Lowering::new(&df, &graph, file, text, &bases).lower_all()
        }
        None => Lowering::new(&df, &graph, file, text, &lower::UnknownBases).lower_all(),
    }
}

/// Base images found in the store as the lowering asks for them, kept for the build.
struct StoreBases<'s> {
    store: &'s Store,
    images: std::sync::Mutex<BTreeMap<String, StoredImage>>,
    /// `kiln debug steps`: a base that is not in the store is unknown, not an error.
    missing_is_unknown: bool,
}

impl<'s> StoreBases<'s> {
    fn new(store: &'s Store, missing_is_unknown: bool) -> Self {
        StoreBases {
            store,
            images: Default::default(),
            missing_is_unknown,
        }
    }

    fn into_images(self) -> BTreeMap<String, StoredImage> {
        self.images.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl BaseConfigs for StoreBases<'_> {
    fn config(&self, reference: &str) -> Result<Option<crate::image::ImageConfig>, BaseError> {
        let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(img) = images.get(reference) {
            return Ok(Some(img.config.clone()));
        }
        match resolve_image(self.store, reference) {
            Ok(img) => {
                let config = img.config.clone();
                images.insert(reference.to_string(), img);
                Ok(Some(config))
            }
            Err(BaseError::NotInStore { .. }) if self.missing_is_unknown => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Why a base image (FROM, `--from`) cannot be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum BaseError {
    #[error(
        "image {name} not found in the store (pulling from registries is not supported yet; \
         use `kiln import` or `kiln load` to add it)"
    )]
    NotInStore { name: String },
    #[error(transparent)]
    Image(#[from] ImageError),
}

/// Finds an image in the store. Registries arrive later; until then a missing image is an
/// error that says how to get it into the store.
fn resolve_image(store: &Store, reference: &str) -> Result<StoredImage, BaseError> {
    let name = crate::image::parse_ref(reference)?;
    store.resolve(&name.to_string()).map_err(|e| match e {
        ImageError::NotFound { .. } => BaseError::NotInStore {
            name: name.to_string(),
        },
        other => BaseError::Image(other),
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
                    source: e.into(),
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
                source: e.into(),
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
                source: ContextReadError::Pattern {
                    pattern,
                    source: err,
                },
            },
            None => BuildError::Context {
                path,
                source: e.into(),
            },
        }
    })
}
