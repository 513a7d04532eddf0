//! Runs the lowered stages: one worker thread per ready stage, at most `jobs` at once, and per
//! step one door — its inputs are known (lowered) → execute → commit the result.
//!
//! A stage is ready when every stage it reads (`FROM`, `COPY --from`, `RUN --mount=from=`) is
//! built. Output does not depend on the interleaving: each stage's layers depend only on its
//! own steps and the stages it read, history times are the build's one timestamp, and the step
//! records are put back in step order at the end. A worker is a scoped thread that lives until
//! its stage is done, which a RUN needs: its child is tied to the spawning thread by
//! PDEATHSIG.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::context::ContextFilter;
use crate::image::config::{History, format_rfc3339};
use crate::image::{Descriptor, ImageConfig, ImageError, Store, StoredImage};
use crate::layer::{DiffId, LayerEntry, WriteOptions};
use crate::plan::Graph;
use crate::progress::{Event, Progress};

use super::cached::{Change, StepKey};
use super::config::{StageConfig, scratch_config};
use super::copy::{self, CopyRequest, CopySource};
use super::lower::LoweredStage;
use super::step::{CopyOp, MkdirOp, Op, Source, Step};
use super::{BuildError, BuildOptions, StepError, StepRecord};
use crate::exec::sandbox::Killer;
use crate::snapshot::{Active, Snapshotter, View};

/// The state of one stage while it builds.
pub(super) struct StageState {
    pub fs: View,
    pub config: StageConfig,
    pub layers: Vec<Descriptor>,
}

/// How a written layer becomes part of the stage's view.
pub(super) enum Apply {
    /// COPY/ADD/WORKDIR: the layer's snapshot is made from its blob and pushed on the view.
    Push,
    /// RUN: the directory the command wrote becomes the layer's snapshot.
    Adopt(Active),
}

/// What a step produced, for its record and progress.
#[derive(Default)]
pub(super) struct StepResult {
    /// The step was not run: its recorded result was reused.
    pub cached: bool,
    /// The step's cache key (steps that make or may make a layer).
    pub key: Option<String>,
    /// Why a cacheable step was not reused.
    pub miss: Option<String>,
    pub layer: Option<Descriptor>,
    pub diff_id: Option<DiffId>,
    /// The key later steps of the stage build on (a step's own key, or for `COPY --from` the
    /// key of what it copied).
    pub chain: Option<crate::cache::CacheKey>,
    /// A hit: the seconds the step took when it ran.
    pub saved_seconds: f64,
    /// A hit: the history time of the build that ran it.
    pub recorded: Option<i64>,
    /// RUN: seconds spent reading the changes.
    pub diff_seconds: Option<f64>,
    /// Seconds spent writing the layer blob.
    pub layer_seconds: Option<f64>,
}

/// What every worker shares. All of it is `Sync`: the store and snapshots lock on disk, the
/// rest is behind mutexes.
pub(super) struct Shared<'a> {
    pub store: &'a Store,
    pub fss: &'a Snapshotter<'a>,
    pub opts: &'a BuildOptions,
    pub filter: &'a ContextFilter,
    pub progress: &'a dyn Progress,
    /// Timestamp for history entries and files kiln creates.
    pub now: i64,
    /// The build's `--build-arg`s (RUN gets the undeclared proxy ones).
    pub build_args: &'a BTreeMap<String, String>,
    /// Base images the lowering resolved, by reference.
    bases: BTreeMap<String, StoredImage>,
    /// Finished stages (for `FROM <stage>`, `COPY --from`, mounts `from=`).
    done: Mutex<BTreeMap<usize, Arc<Mutex<StageState>>>>,
    /// Filesystems of images read by `COPY --from=<image>` and `RUN --mount=from=<image>`.
    images: Mutex<BTreeMap<String, Arc<View>>>,
    records: Mutex<Vec<(usize, StepRecord)>>,
    warned_layers: Mutex<BTreeSet<String>>,
    /// A stage failed: the others start no further step, and their running commands are
    /// killed.
    cancelled: AtomicBool,
    /// The commands running now, by step number.
    running: Mutex<BTreeMap<usize, Killer>>,
    /// The step cache (`None` when the index cannot be opened: every step then runs).
    pub cache: Option<crate::cache::Index>,
    pub key_settings: crate::cache::KeySettings,
    /// Content digests of the build context, with the store's metadata index.
    pub digester: Mutex<Option<crate::context::ContextDigester>>,
    /// Each built stage's last key (what `FROM <stage>` and `--from=<stage>` build on).
    final_keys: Mutex<BTreeMap<usize, crate::cache::CacheKey>>,
    /// Each built stage's root cause of change since its last build, if any (for explaining
    /// the misses of stages built on it).
    causes: Mutex<BTreeMap<usize, String>>,
    /// URLs fetched to key an ADD by their bytes, until the ADD runs.
    pub fetched: Mutex<BTreeMap<String, copy::Fetched>>,
    /// `--cache-from` caches, read after a local miss.
    pub imports: Vec<crate::cache::exchange::Imported>,
}

/// Keeps a running command registered for cancellation; unregisters it when dropped.
pub(super) struct RunningCommand<'s> {
    running: &'s Mutex<BTreeMap<usize, Killer>>,
    step: usize,
}

impl Drop for RunningCommand<'_> {
    fn drop(&mut self) {
        lock(self.running).remove(&self.step);
    }
}

/// A worker's stack: copying a deep context tree recurses once per directory level.
const WORKER_STACK: usize = 64 << 20;

/// How a stage's worker ended.
enum StageOutcome {
    Built(Box<StageState>),
    /// The step with this number failed.
    Failed(usize, BuildError),
    /// It started no further step because another stage failed (or the worker panicked).
    Stopped,
}

/// A worker's answer to the scheduler. Sent exactly once: if the worker panics, dropping the
/// reply sends `Stopped`, so the scheduler never waits for a worker that is gone.
struct Reply {
    tx: mpsc::Sender<(usize, StageOutcome)>,
    stage: usize,
    sent: bool,
}

impl Reply {
    fn send(&mut self, outcome: StageOutcome) {
        self.sent = true;
        let _ = self.tx.send((self.stage, outcome));
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        if !self.sent {
            let _ = self.tx.send((self.stage, StageOutcome::Stopped));
        }
    }
}

/// What the workers built.
pub(super) struct Built {
    stages: BTreeMap<usize, Arc<Mutex<StageState>>>,
    pub records: Vec<StepRecord>,
    pub warned_layers: BTreeSet<String>,
    /// The step cache the build used (`None` when it could not be opened).
    pub cache: Option<crate::cache::Index>,
}

impl Built {
    /// A stage's final config and layers.
    pub fn image(&self, stage: usize) -> (ImageConfig, Vec<Descriptor>) {
        let s = lock(&self.stages[&stage]);
        (s.config.config().clone(), s.layers.clone())
    }
}

/// Keeps the first own change at a stage's places as the stage's root cause, with where it
/// is (unless its text already says where: a stage it copies from changed).
fn note_cause(cause: &mut Option<String>, step: &Step, change: &Change) {
    let Change::Own(text) = change else { return };
    if cause.is_some() {
        return;
    }
    let here = format!("({}:", step.loc.file);
    *cause = Some(if text.ends_with(')') && text.contains(&here) {
        text.clone()
    } else {
        format!("{text} ({}:{})", step.loc.file, step.loc.line)
    });
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker that panicked has already failed the build; its data is still consistent
    // enough to read for cleanup.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<'a> Shared<'a> {
    pub fn new(
        store: &'a Store,
        fss: &'a Snapshotter<'a>,
        opts: &'a BuildOptions,
        filter: &'a ContextFilter,
        progress: &'a dyn Progress,
        bases: BTreeMap<String, StoredImage>,
        build_args: &'a BTreeMap<String, String>,
    ) -> Self {
        let now = opts
            .source_date_epoch
            .unwrap_or_else(crate::image::config::now_unix);
        Shared {
            store,
            fss,
            opts,
            filter,
            progress,
            now,
            build_args,
            bases,
            done: Mutex::new(BTreeMap::new()),
            images: Mutex::new(BTreeMap::new()),
            records: Mutex::new(Vec::new()),
            warned_layers: Mutex::new(BTreeSet::new()),
            cancelled: AtomicBool::new(false),
            running: Mutex::new(BTreeMap::new()),
            cache: crate::cache::Index::open(store.root()).ok(),
            key_settings: crate::cache::KeySettings::new(
                &crate::platform::Platform::host(),
                crate::cache::LayerSettings::new(opts.compression, opts.source_date_epoch),
            ),
            digester: Mutex::new(
                crate::context::ContextDigester::with_index(
                    &opts.context,
                    &store.root().join("kiln").join("context-index"),
                )
                .ok(),
            ),
            final_keys: Mutex::new(BTreeMap::new()),
            causes: Mutex::new(BTreeMap::new()),
            fetched: Mutex::new(BTreeMap::new()),
            imports: Vec::new(),
        }
    }

    /// Runs every stage, at most `opts.jobs` at once. On a failure no new stage or step starts
    /// (a step already running finishes), and the first error is returned.
    pub fn run_stages(self, stages: &[LoweredStage], graph: &Graph) -> Result<Built, BuildError> {
        let position: BTreeMap<usize, usize> = graph
            .build_order
            .iter()
            .enumerate()
            .map(|(pos, &s)| (s, pos))
            .collect();
        // A stage waits for the stages it reads that come before it in build order; a read of
        // any other stage fails at its step.
        let deps: Vec<BTreeSet<usize>> = stages
            .iter()
            .map(|st| {
                st.steps
                    .iter()
                    .flat_map(|s| s.reads())
                    .filter_map(|src| match src {
                        Source::Stage { index, .. } => Some(*index),
                        _ => None,
                    })
                    .filter(|d| match (position.get(d), position.get(&st.index)) {
                        (Some(a), Some(b)) => a < b,
                        _ => false,
                    })
                    .collect()
            })
            .collect();
        let jobs = self.opts.jobs.max(1);
        let mut pending: Vec<usize> = (0..stages.len()).collect();
        let mut finished: BTreeSet<usize> = BTreeSet::new();
        // The first failure stops the build: the other stages start no further step and their
        // commands are killed (their steps then end as `Stopped`). Two stages failing on their
        // own at the same moment: the lower step number is reported. With --jobs 1 it is the
        // first failure in build order, as before stages ran at once.
        let mut first_error: Option<(usize, BuildError)> = None;
        std::thread::scope(|scope| {
            let (tx, rx) = mpsc::channel::<(usize, StageOutcome)>();
            let mut running = 0usize;
            loop {
                while running < jobs && first_error.is_none() {
                    let Some(pos) = pending
                        .iter()
                        .position(|&i| deps[i].iter().all(|d| finished.contains(d)))
                    else {
                        break;
                    };
                    let i = pending.remove(pos);
                    let reply = Reply {
                        tx: tx.clone(),
                        stage: i,
                        sent: false,
                    };
                    let this = &self;
                    let stage = &stages[i];
                    running += 1;
                    std::thread::Builder::new()
                        .name(format!("kiln-{}", stage.label))
                        // Copying a deep context tree recurses per directory level: give a
                        // worker the stack the main thread has, and more.
                        .stack_size(WORKER_STACK)
                        .spawn_scoped(scope, move || {
                            let mut reply = reply;
                            reply.send(this.run_stage(stage));
                        })
                        .expect("spawning a stage worker");
                }
                if running == 0 {
                    break;
                }
                let Ok((i, outcome)) = rx.recv() else { break };
                running -= 1;
                match outcome {
                    StageOutcome::Built(state) => {
                        let index = stages[i].index;
                        lock(&self.done).insert(index, Arc::new(Mutex::new(*state)));
                        finished.insert(index);
                    }
                    StageOutcome::Failed(number, e) => {
                        if first_error.as_ref().is_none_or(|(n, _)| number < *n) {
                            first_error = Some((number, e));
                        }
                    }
                    // Stopped by another stage's failure, or a worker that panicked: the
                    // panic is raised again when the scope ends.
                    StageOutcome::Stopped => {
                        self.cancelled.store(true, Ordering::SeqCst);
                    }
                }
            }
        });
        if let Some((_, e)) = first_error {
            return Err(e);
        }
        let mut records = self.records.into_inner().unwrap_or_else(|e| e.into_inner());
        records.sort_by_key(|(n, _)| *n);
        // The context's metadata index: the next build stats what this one read.
        if let Some(d) = lock(&self.digester).as_mut()
            && let Err(e) = d.save()
        {
            self.progress.event(&Event::Notice {
                message: format!("warning: {}", crate::error_chain(&e)),
            });
        }
        Ok(Built {
            cache: self.cache,
            stages: self.done.into_inner().unwrap_or_else(|e| e.into_inner()),
            records: records.into_iter().map(|(_, r)| r).collect(),
            warned_layers: self
                .warned_layers
                .into_inner()
                .unwrap_or_else(|e| e.into_inner()),
        })
    }

    /// Runs one stage's steps in order.
    /// Runs one stage's steps in order, then remembers the key documents its steps had (what
    /// the next build's misses are explained against).
    fn run_stage(&self, stage: &LoweredStage) -> StageOutcome {
        let place = crate::cache::StagePlace::new(
            &self.opts.dockerfile_name,
            &self.opts.context.to_string_lossy(),
            &stage.label,
        );
        let mut lineage = match &self.cache {
            Some(index) => index.lineage(&place),
            None => Vec::new(),
        };
        let before = lineage.len();
        let mut changed = false;
        let outcome = self.run_steps(stage, &mut lineage, &mut changed);
        if let Some(index) = &self.cache
            && (changed || lineage.len() != before)
        {
            let _ = index.set_lineage(&place, &lineage);
        }
        outcome
    }

    fn run_steps(
        &self,
        stage: &LoweredStage,
        lineage: &mut crate::cache::Lineage,
        changed: &mut bool,
    ) -> StageOutcome {
        let mut state: Option<StageState> = None;
        let mut parent: Option<crate::cache::CacheKey> = None;
        // The first change at this stage's places since its last build, with its location:
        // what a miss that only inherits its parent's change is explained by.
        let mut cause: Option<String> = None;
        for step in &stage.steps {
            if self.cancelled.load(Ordering::SeqCst) {
                return StageOutcome::Stopped;
            }
            let started = Instant::now();
            self.progress.event(&Event::StepStarted {
                id: step.id.number,
                stage: step.stage.clone(),
                loc: format!("{}:{}", step.loc.file, step.loc.line),
                name: step.name.clone(),
            });
            let position = step.id.index;
            if lineage.len() <= position {
                lineage.resize(position + 1, None);
            }
            let previous = lineage[position].take();
            let outcome = self
                .step_key(step, parent.as_ref(), previous)
                .and_then(|key| {
                    if key.change != Change::Same {
                        *changed = true;
                    }
                    lineage[position] = Some(key.document.clone());
                    let own = key.key;
                    let change = key.change.clone();
                    if let Op::Base(Source::Stage { index, .. }) = &step.op {
                        cause = self.stage_cause(*index);
                    }
                    let result = self.execute(&mut state, step, key, cause.as_deref())?;
                    // A step that hit is not a cause, even if its own input changed (a build
                    // arg set back to an earlier value).
                    if !result.cached {
                        note_cause(&mut cause, step, &change);
                    }
                    parent = Some(result.chain.unwrap_or(own));
                    Ok(result)
                });
            match outcome {
                Ok(result) => self.finish_step(step, started, result),
                Err(source) => {
                    let e = BuildError::step(&step.loc, source);
                    self.progress.event(&Event::StepFailed {
                        id: step.id.number,
                        error: crate::error_chain(&e),
                    });
                    // A step that failed because the build was already failing (its command
                    // was killed) is not the build's error.
                    if self.cancelled.swap(true, Ordering::SeqCst) {
                        return StageOutcome::Stopped;
                    }
                    for killer in lock(&self.running).values() {
                        let _ = killer.kill();
                    }
                    return StageOutcome::Failed(step.id.number, e);
                }
            }
        }
        if let Some(key) = parent {
            lock(&self.final_keys).insert(stage.index, key);
        }
        if let Some(cause) = cause {
            lock(&self.causes).insert(stage.index, cause);
        }
        StageOutcome::Built(Box::new(
            state.expect("every stage starts with its FROM step"),
        ))
    }

    fn finish_step(&self, step: &Step, started: Instant, result: StepResult) {
        let seconds = started.elapsed().as_secs_f64();
        let bytes = result.layer.as_ref().map(|l| l.size());
        self.progress.event(&Event::StepDone {
            id: step.id.number,
            seconds,
            cached: result.cached,
            bytes,
        });
        let record = StepRecord {
            stage: step.stage.clone(),
            instruction: step.loc.instruction.clone(),
            location: format!("{}:{}", step.loc.file, step.loc.line),
            cached: result.cached,
            seconds,
            layer_digest: result.layer.as_ref().map(|l| l.digest().to_string()),
            layer_size: bytes,
            diff_id: result.diff_id.map(|d| d.to_string()),
            diff_seconds: result.diff_seconds,
            layer_seconds: result.layer_seconds,
            key: result.key,
            reason: result.miss,
            saved_seconds: result.cached.then_some(result.saved_seconds),
            recorded: result.recorded,
        };
        lock(&self.records).push((step.id.number, record));
    }

    /// The one door: a step whose inputs are all known is looked up in the cache; a hit is
    /// replayed, a miss is executed, its result committed and recorded.
    fn execute(
        &self,
        state: &mut Option<StageState>,
        step: &Step,
        key: StepKey,
        cause: Option<&str>,
    ) -> Result<StepResult, StepError> {
        let chain = Some(key.key);
        if let Op::Base(source) = &step.op {
            *state = Some(self.start_stage(source)?);
            return Ok(StepResult {
                chain,
                ..StepResult::default()
            });
        }
        let state = state.as_mut().expect("the FROM step comes first");
        if let Op::Config(change) = &step.op {
            state.config.apply(change);
            self.empty_history(state, &step.created_by);
            return Ok(StepResult {
                chain,
                ..StepResult::default()
            });
        }
        if !key.cacheable {
            return self.run_op(state, step);
        }
        let look = !self.opts.no_cache && !self.opts.no_cache_filter.contains(&step.stage);
        if look && let Some(record) = self.cached_record(&key.key, &key.document) {
            let mut result = self.replay(state, step, &record)?;
            result.key = Some(key.key.to_string());
            result.chain = result.chain.or(chain);
            return Ok(result);
        }
        // COPY --from=<stage> whose stage changed: what it copies may not have.
        let content = match &step.op {
            Op::Copy(c) if c.from.is_some() => self.content_key(c, &key)?,
            _ => None,
        };
        if look
            && let Some((_, content_key)) = &content
            && let Some((content_doc, _)) = &content
            && let Some(record) = self.cached_record(content_key, content_doc)
        {
            let mut result = self.replay(state, step, &record)?;
            result.key = Some(key.key.to_string());
            result.chain = Some(*content_key);
            self.remember(key.document, &result, record.seconds, result.chain);
            return Ok(result);
        }
        let reason = self.miss_reason(&key, cause);
        if self.opts.require_cache {
            return Err(StepError::NotCached(reason));
        }
        if self.opts.explain_cache {
            self.progress.event(&Event::StepLog {
                id: step.id.number,
                line: format!("cache miss: {reason}"),
            });
        }
        let started = Instant::now();
        let mut result = self.run_op(state, step)?;
        let seconds = started.elapsed().as_secs_f64();
        result.key = Some(key.key.to_string());
        result.miss = Some(reason);
        result.chain = chain;
        if let Some((document, content_key)) = content {
            self.remember(document, &result, seconds, None);
            result.chain = Some(content_key);
        }
        self.remember(
            key.document,
            &result,
            seconds,
            result.chain.filter(|c| Some(*c) != chain),
        );
        Ok(result)
    }

    fn run_op(&self, state: &mut StageState, step: &Step) -> Result<StepResult, StepError> {
        match &step.op {
            Op::Base(_) | Op::Config(_) => unreachable!("handled by execute"),
            Op::Mkdir(m) => self.mkdir(state, m, &step.created_by),
            Op::Copy(c) => self.copy(state, c, &step.created_by),
            Op::Run(r) => self.run(state, step, r),
        }
    }

    /// The root cause of a built stage's change, if it changed.
    pub(super) fn stage_cause(&self, stage: usize) -> Option<String> {
        lock(&self.causes).get(&stage).cloned()
    }

    /// The fetched bodies of `sources` that are URLs (each handed out once).
    fn take_fetched(&self, sources: &[String]) -> BTreeMap<String, copy::Fetched> {
        let mut fetched = lock(&self.fetched);
        sources
            .iter()
            .filter_map(|s| Some((s.clone(), fetched.remove(s)?)))
            .collect()
    }

    /// A base image the lowering resolved.
    pub(super) fn base_image(&self, reference: &str) -> Option<&StoredImage> {
        self.bases.get(reference)
    }

    /// A built stage's last key.
    pub(super) fn final_key(&self, stage: usize) -> Option<crate::cache::CacheKey> {
        lock(&self.final_keys).get(&stage).copied()
    }

    fn start_stage(&self, source: &Source) -> Result<StageState, StepError> {
        let (config, layers) = match source {
            Source::Scratch => (scratch_config(), Vec::new()),
            Source::Stage { index, .. } => {
                let stage = self.finished(*index).ok_or_else(|| {
                    StepError::Source(format!("stage {index} must be built before it is used"))
                })?;
                let s = lock(&stage);
                (s.config.config().clone(), s.layers.clone())
            }
            Source::Image { reference } => {
                let img = self
                    .bases
                    .get(reference)
                    .ok_or_else(|| StepError::Source(format!("image {reference} not resolved")))?;
                (img.config.clone(), img.layers().to_vec())
            }
        };
        let diff_ids = config.rootfs.diff_ids.clone();
        if diff_ids.len() != layers.len() {
            return Err(StepError::Image(ImageError::Invalid(format!(
                "the image has {} layers but its config lists {} diffIDs",
                layers.len(),
                diff_ids.len()
            ))));
        }
        let fs = self.fss.view(&layers, &diff_ids)?;
        self.report_fs_warnings();
        let (config, _triggers_already_lowered) = StageConfig::start(config);
        Ok(StageState { fs, config, layers })
    }

    fn finished(&self, index: usize) -> Option<Arc<Mutex<StageState>>> {
        lock(&self.done).get(&index).cloned()
    }

    /// Registers a command that has started, so a failure elsewhere kills it; a build that is
    /// already failing kills it at once.
    pub(super) fn running(&self, step: usize, killer: Killer) -> RunningCommand<'_> {
        let mut running = lock(&self.running);
        if self.cancelled.load(Ordering::SeqCst) {
            let _ = killer.kill();
        }
        running.insert(step, killer);
        RunningCommand {
            running: &self.running,
            step,
        }
    }

    /// The root of what a `--from` names: a finished stage's filesystem or an image's.
    pub(super) fn source_root(&self, source: &Source) -> Result<PathBuf, StepError> {
        match source {
            Source::Scratch => Err(StepError::Source("scratch has no filesystem".into())),
            Source::Stage { index, name } => match self.finished(*index) {
                Some(stage) => {
                    let root = self.fss.root(&lock(&stage).fs)?.to_path_buf();
                    self.report_fs_warnings();
                    Ok(root)
                }
                None => {
                    let from = name.clone().unwrap_or_else(|| index.to_string());
                    Err(StepError::Source(format!(
                        "stage {from:?} must be built before it is copied from"
                    )))
                }
            },
            Source::Image { reference } => {
                let mut images = lock(&self.images);
                if let Some(view) = images.get(reference) {
                    return Ok(self.fss.root(view)?.to_path_buf());
                }
                let img = super::resolve_image(self.store, reference)?;
                let view = self.fss.view(img.layers(), &img.config.rootfs.diff_ids)?;
                let root = self.fss.root(&view)?.to_path_buf();
                self.report_fs_warnings();
                images.insert(reference.clone(), Arc::new(view));
                Ok(root)
            }
        }
    }

    fn copy(
        &self,
        state: &mut StageState,
        c: &CopyOp,
        created_by: &str,
    ) -> Result<StepResult, StepError> {
        let from_root = c.from.as_ref().map(|s| self.source_root(s)).transpose()?;
        let source = match &from_root {
            Some(root) => CopySource::Rootfs { root },
            None => CopySource::Context {
                root: &self.opts.context,
                filter: self.filter,
            },
        };
        // The context as the step cache walked it: the copy need not walk it again.
        let kept = match &c.from {
            None => lock(&self.digester)
                .as_mut()
                .and_then(|d| d.kept(self.filter).ok()),
            Some(_) => None,
        };
        let req = CopyRequest {
            add: c.add,
            source,
            sources: &c.sources,
            contents: &c.heredocs,
            dest: &c.dest,
            workdir: &c.workdir,
            chown: c.chown.as_deref(),
            chmod: c.chmod.as_deref(),
            parents: c.parents,
            exclude: &c.exclude,
            unpack: c.unpack,
            checksum: c.checksum.as_deref(),
            now: self.now,
            fetched: &self.take_fetched(&c.sources),
            kept: kept.as_deref(),
        };
        let entries = copy::copy_entries(&req, self.fss.root(&state.fs)?)?;
        self.report_fs_warnings();
        self.commit_layer(state, entries, created_by, Apply::Push)
    }

    /// WORKDIR creates its directory (owned by the current USER, as BuildKit's mkdir) when it
    /// is missing.
    fn mkdir(
        &self,
        state: &mut StageState,
        m: &MkdirOp,
        created_by: &str,
    ) -> Result<StepResult, StepError> {
        state.config.set_workdir(&m.path);
        let root = self.fss.root(&state.fs)?;
        self.report_fs_warnings();
        let resolved =
            crate::layer::resolve_in_root(root, Path::new(&m.path), true).map_err(|source| {
                StepError::Io {
                    what: format!("resolving {}", m.path),
                    source,
                }
            })?;
        if resolved.is_dir() {
            self.empty_history(state, created_by);
            return Ok(StepResult::default());
        }
        let user = Some(m.user.as_str()).filter(|u| !u.is_empty());
        let req = CopyRequest {
            add: false,
            source: CopySource::Context {
                root: &self.opts.context,
                filter: self.filter,
            },
            sources: &[],
            contents: &[],
            dest: &format!("{}/", m.path.trim_end_matches('/')),
            workdir: "/",
            chown: user,
            chmod: None,
            parents: false,
            exclude: &[],
            unpack: None,
            checksum: None,
            now: self.now,
            fetched: &BTreeMap::new(),
            kept: None,
        };
        let entries = copy::copy_entries(&req, self.fss.root(&state.fs)?)?;
        self.report_fs_warnings();
        self.commit_layer(state, entries, created_by, Apply::Push)
    }

    /// The one commit path of every step that changes the filesystem (COPY, ADD, WORKDIR,
    /// RUN): write `entries` as a layer blob, make the layer part of the stage's view, record
    /// it (descriptor, diffID, history). A RUN that changed nothing makes no layer.
    ///
    /// The view only needs the diffID (`Apply::Adopt`) or the blob (`Apply::Push`); the
    /// history and the image need both. Compressing off the critical path ([9/9]) splits
    /// `put_layer` here: the diffID is known when the tar is written, the blob later.
    pub(super) fn commit_layer(
        &self,
        state: &mut StageState,
        entries: Vec<LayerEntry>,
        created_by: &str,
        apply: Apply,
    ) -> Result<StepResult, StepError> {
        if entries.is_empty()
            && let Apply::Adopt(active) = apply
        {
            self.fss.remove(active)?;
            self.empty_history(state, created_by);
            return Ok(StepResult::default());
        }
        let started = Instant::now();
        let (written, desc) = self.store.put_layer(entries, &self.write_options())?;
        let layer_seconds = started.elapsed().as_secs_f64();
        match apply {
            Apply::Push => self.fss.push(&mut state.fs, &desc, &written.diff_id)?,
            Apply::Adopt(active) => self.fss.commit(&mut state.fs, active, &written.diff_id)?,
        }
        self.report_fs_warnings();
        self.record_layer(state, &written.diff_id, &desc, created_by);
        Ok(StepResult {
            layer: Some(desc),
            diff_id: Some(written.diff_id),
            layer_seconds: Some(layer_seconds),
            ..StepResult::default()
        })
    }

    /// Says once what unpacking layers could not reproduce (device nodes in a user namespace).
    pub(super) fn report_fs_warnings(&self) {
        for (digest, w) in self.fss.take_warnings() {
            if lock(&self.warned_layers).insert(digest) {
                self.progress.event(&Event::Notice {
                    message: format!("warning: {w}"),
                });
            }
        }
    }

    pub(super) fn write_options(&self) -> WriteOptions {
        WriteOptions {
            compression: self.opts.compression,
            source_date_epoch: self.opts.source_date_epoch,
            ..WriteOptions::default()
        }
    }

    /// Adds a written layer to the stage's image: its descriptor, diffID and history entry.
    pub(super) fn record_layer(
        &self,
        state: &mut StageState,
        diff_id: &DiffId,
        desc: &Descriptor,
        created_by: &str,
    ) {
        state.layers.push(desc.clone());
        state.config.config_mut().push_layer(
            *diff_id,
            History {
                created: Some(format_rfc3339(self.now)),
                created_by: created_by.to_string(),
                ..History::default()
            },
        );
    }

    /// A history entry for a step that made no layer.
    pub(super) fn empty_history(&self, state: &mut StageState, created_by: &str) {
        state.config.config_mut().history.push(History {
            created: Some(format_rfc3339(self.now)),
            created_by: created_by.to_string(),
            empty_layer: true,
            ..History::default()
        });
    }
}
