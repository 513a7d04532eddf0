//! The step cache at the scheduler's door: a step's key from its parent's key, its own lowered
//! op and the digests of what it reads; a hit replays the recorded result without running
//! anything; a miss runs the step and records its result.
//!
//! What a key covers: the op as lowered (a RUN's environment is left out: the ENV and ARG steps
//! that set it are in the chain through the parent keys, and a base's ENV through its config
//! digest), plus — for what a step reads beyond its stage — the content digest of the selected
//! context paths (COPY/ADD, `RUN --mount=type=bind`), the final key of a stage read with
//! `--from`, or an image's config digest. A step whose input cannot be digested (an ADD of a
//! URL, a context path that does not exist) is not cached: it runs, and fails as it would.

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::cache::{CacheKey, CacheRecord, CacheResult, KeyDocument, Parent};
use crate::context::{ContextDigester, ContextFilter, SelectionDigest, WalkOptions};
use crate::pathclean::clean_relative;

use super::StepError;
use super::scheduler::{Shared, StageState, StepResult};
use super::step::{CopyOp, Op, Source, Step};

/// A step's cache identity: its key document (and key), and what the last build at the same
/// place had.
pub(super) struct StepKey {
    pub document: KeyDocument,
    pub key: CacheKey,
    /// A key the index may be asked about: every step that makes or may make a layer.
    pub cacheable: bool,
    /// What changed at this step's place since the last build there.
    pub change: Change,
}

/// What changed at a step's place (the Dockerfile, context, stage and position) since the
/// last build there.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Change {
    /// Nothing was built here before.
    First,
    /// The same key as last time.
    Same,
    /// The step's own inputs changed: why, in words.
    Own(String),
    /// Only its parent changed (an earlier step, or the stage it builds on).
    Parent,
}

impl Shared<'_> {
    /// The key of `step` on top of `parent` (`None` for a stage's FROM step), and what changed
    /// at its place since the last build there (which is then remembered).
    pub(super) fn step_key(
        &self,
        step: &Step,
        parent: Option<&CacheKey>,
        previous: Option<KeyDocument>,
    ) -> Result<StepKey, StepError> {
        let parent = match (&step.op, parent) {
            (Op::Base(source), _) => self.base_parent(source)?,
            (_, Some(p)) => Parent::Step(*p),
            (_, None) => unreachable!("every stage starts with its FROM step"),
        };
        let (inputs, cacheable) = match &step.op {
            Op::Base(_) | Op::Config(_) => (Value::Null, false),
            Op::Mkdir(_) => (Value::Null, true),
            Op::Copy(c) => match &c.from {
                Some(source) => (json!({ "from": self.source_key(source)? }), true),
                None if c.add && c.sources.iter().any(|s| is_url(s)) => self.url_inputs(c),
                None => match self.context_digest(&c.sources, c.parents) {
                    Some(d) => (json!({ "context": d }), true),
                    None => (Value::Null, false),
                },
            },
            Op::Run(r) => {
                let mut mounts = Vec::new();
                let mut cacheable = true;
                for m in &r.mounts {
                    let input = match (&m.kind[..], &m.from) {
                        (_, Some(from)) => match r.mount_sources.get(from) {
                            Some(source) => self.source_key(source)?,
                            None => Value::Null,
                        },
                        ("bind", None) => {
                            let src = m.source.clone().unwrap_or_else(|| ".".into());
                            match self.context_digest(&[src], false) {
                                Some(d) => Value::String(d),
                                None => {
                                    cacheable = false;
                                    Value::Null
                                }
                            }
                        }
                        _ => Value::Null,
                    };
                    mounts.push(input);
                }
                // The network a RUN without --network gets is the build's choice.
                let network = match self.opts.network {
                    crate::exec::Network::Host => "host",
                    crate::exec::Network::None => "none",
                };
                (json!({ "mounts": mounts, "network": network }), cacheable)
            }
        };
        let document = self.document(step, parent, inputs)?;
        let key = document.key().map_err(cache_error)?;
        let change = self.change_since(step, previous.as_ref(), &document);
        Ok(StepKey {
            document,
            key,
            cacheable,
            change,
        })
    }

    /// What an ADD of URLs reads: with `--checksum`, the checksum (a hit downloads nothing);
    /// otherwise each URL's bytes and `Last-Modified` time, fetched now and handed to the
    /// copy, as BuildKit keys an HTTP source by its content (so such an ADD fetches every
    /// build). Local sources beside them are digested as a COPY's. Not cacheable when a fetch
    /// fails: the step runs and reports the download's error.
    fn url_inputs(&self, c: &CopyOp) -> (Value, bool) {
        if let Some(sum) = &c.checksum {
            return (json!({ "checksum": sum }), true);
        }
        let mut urls = Vec::new();
        for url in c.sources.iter().filter(|s| is_url(s)) {
            let Ok(f) = super::copy::fetch(url) else {
                return (Value::Null, false);
            };
            urls.push(json!([CacheKey::of(&f.body).to_string(), f.mtime]));
            self.fetched
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(url.clone(), f);
        }
        let local: Vec<String> = c.sources.iter().filter(|s| !is_url(s)).cloned().collect();
        if local.is_empty() {
            return (json!({ "urls": urls }), true);
        }
        match self.context_digest(&local, c.parents) {
            Some(d) => (json!({ "urls": urls, "context": d }), true),
            None => (Value::Null, false),
        }
    }

    /// The key document of `step` on `parent` reading `inputs`.
    fn document(
        &self,
        step: &Step,
        parent: Parent,
        inputs: Value,
    ) -> Result<KeyDocument, StepError> {
        let mut op = serde_json::to_value(&step.op)
            .map_err(|e| cache_error(crate::cache::CacheError::Document(e)))?;
        // A RUN's environment is in the chain already: the ENV and ARG steps that set it are
        // its ancestors, and a base's ENV is in its config digest.
        if let Some(run) = op.get_mut("run").and_then(Value::as_object_mut) {
            run.remove("env");
        }
        // In a single-id user namespace other owners are squashed: the same step makes other
        // bytes than with a full id map.
        let inputs = match (self.opts.single_id, inputs) {
            (true, Value::Null) => json!({ "single_id": true }),
            (true, Value::Object(mut m)) => {
                m.insert("single_id".into(), Value::Bool(true));
                Value::Object(m)
            }
            (_, inputs) => inputs,
        };
        KeyDocument::new(&self.key_settings, parent, &json!({ "op": op }))
            .and_then(|d| d.with_inputs(&inputs))
            .map_err(cache_error)
    }

    fn base_parent(&self, source: &Source) -> Result<Parent, StepError> {
        Ok(match source {
            Source::Scratch => Parent::Scratch,
            Source::Image { reference } => match self.base_image(reference) {
                Some(img) => Parent::Image(img.id().clone()),
                None => {
                    return Err(StepError::Source(format!("image {reference} not resolved")));
                }
            },
            Source::Stage { index, .. } => Parent::Step(self.stage_key(*index)?),
        })
    }

    /// A built stage's last key: every stage a step reads is built before it.
    fn stage_key(&self, index: usize) -> Result<CacheKey, StepError> {
        self.final_key(index).ok_or_else(|| {
            StepError::Source(format!("stage {index} must be built before it is used"))
        })
    }

    /// What a `--from` contributes to a key: a stage's final key, an image's config digest.
    fn source_key(&self, source: &Source) -> Result<Value, StepError> {
        Ok(match source {
            Source::Scratch => Value::Null,
            Source::Stage { index, .. } => json!({ "stage": self.stage_key(*index)?.to_string() }),
            Source::Image { reference } => {
                let img = super::resolve_image(self.store, reference)?;
                json!({ "image": img.id().to_string() })
            }
        })
    }

    /// The content digest of the context paths `sources` select, found as the copy finds them
    /// (wildcards expanded, symlinks on the way followed). `None` when they cannot be digested
    /// (a missing source): the step is then not cached, it runs and fails as it would.
    fn context_digest(&self, sources: &[String], parents: bool) -> Option<String> {
        let mut digester = self.digester.lock().unwrap_or_else(|e| e.into_inner());
        let digester = digester.as_mut()?;
        let roots: Vec<PathBuf> = if super::copy::sources_are_plain(&self.opts.context, sources) {
            sources
                .iter()
                .map(|s| PathBuf::from(clean_relative(s).unwrap_or_else(|| ".".to_string())))
                .collect()
        } else {
            let kept = digester.kept(self.filter).ok()?;
            super::copy::selected_paths(&self.opts.context, Some(&kept), sources, parents).ok()?
        };
        let selection = digester.digest(self.filter, &roots, None).ok()?;
        Some(self.remember_selection(&selection))
    }

    /// Keeps the per-file digests behind a selection, so a later miss can name the files that
    /// changed. Returns the selection's digest as text.
    fn remember_selection(&self, selection: &SelectionDigest) -> String {
        let digest = selection.digest.to_string();
        if let Some(index) = &self.cache
            && !index.has_selection(&digest)
        {
            let files: Vec<crate::cache::SelectedFile> = selection
                .files
                .iter()
                .map(|f| {
                    (
                        f.path.to_string_lossy().into_owned(),
                        f.digest.hex(),
                        f.mode,
                    )
                })
                .collect();
            let _ = index.put_selection(&digest, &files);
        }
        digest
    }

    /// `COPY --from=<stage>`: the key from the content of the paths it selects in the stage,
    /// as BuildKit falls back to when the stage's own key changed, so a change in the stage
    /// that the copy does not read keeps the hit. `None` when the selection cannot be
    /// digested (the copy then runs, and fails as it would).
    pub(super) fn content_key(
        &self,
        c: &CopyOp,
        primary: &StepKey,
    ) -> Result<Option<(KeyDocument, CacheKey)>, StepError> {
        let Some(source @ Source::Stage { .. }) = &c.from else {
            return Ok(None);
        };
        let root = self.source_root(source)?;
        let Some(digest) = rootfs_digest(&root, &c.sources, c.parents) else {
            return Ok(None);
        };
        let mut inputs = primary.document.inputs.clone();
        if let Some(m) = inputs.as_object_mut() {
            m.insert("from".into(), json!({ "content": digest }));
        }
        let mut document = primary.document.clone();
        document.inputs = inputs;
        let key = document.key().map_err(cache_error)?;
        Ok(Some((document, key)))
    }

    /// A hit: the recorded layers become the stage's, as if the step had run.
    pub(super) fn replay(
        &self,
        state: &mut StageState,
        step: &Step,
        record: &CacheRecord,
    ) -> Result<StepResult, StepError> {
        if let Op::Mkdir(m) = &step.op {
            state.config.set_workdir(&m.path);
        }
        let mut result = StepResult {
            cached: true,
            saved_seconds: record.seconds,
            recorded: (record.stamp > 0).then_some(record.stamp),
            chain: record.result.chain,
            ..StepResult::default()
        };
        let layers = record.result.layers.iter().zip(&record.result.diff_ids);
        if record.result.layers.is_empty() {
            self.empty_history(state, &step.created_by);
        }
        for (desc, diff_id) in layers {
            self.fss.push(&mut state.fs, desc, diff_id)?;
            self.report_fs_warnings();
            self.record_layer(state, diff_id, desc, &step.created_by);
            result.layer = Some(desc.clone());
            result.diff_id = Some(*diff_id);
        }
        Ok(result)
    }

    /// Whether every blob a record names is still in the store (a prune may have taken it).
    pub(super) fn record_usable(&self, record: &CacheRecord) -> bool {
        record.result.layers.len() == record.result.diff_ids.len()
            && record
                .result
                .layers
                .iter()
                .all(|l| self.store.has_blob(l.digest()))
    }

    /// Records what a step that ran produced under `document` (best effort: a record that
    /// cannot be written only costs a later miss). `chain`: the key later steps build on, when
    /// it is not this document's own (a `COPY --from` remembered by its stage's key chains on
    /// its content key).
    pub(super) fn remember(
        &self,
        document: KeyDocument,
        result: &StepResult,
        seconds: f64,
        chain: Option<CacheKey>,
    ) {
        let Some(index) = &self.cache else { return };
        let record = CacheRecord::new(
            document,
            CacheResult {
                layers: result.layer.iter().cloned().collect(),
                diff_ids: result.diff_id.iter().copied().collect(),
                config: Value::Null,
                chain,
            },
            crate::image::config::now_unix(),
        )
        .map(|mut r| {
            r.seconds = seconds;
            r.stamp = self.now;
            r
        });
        if let Err(e) = record.and_then(|r| index.put(&r)) {
            self.progress.event(&crate::progress::Event::Notice {
                message: format!("warning: {}", crate::error_chain(&e)),
            });
        }
    }
}

/// The content digest of what `sources` select in a root filesystem (every path kept).
fn rootfs_digest(root: &Path, sources: &[String], parents: bool) -> Option<String> {
    let roots = super::copy::selected_paths(root, None, sources, parents).ok()?;
    let everything = ContextFilter::new(&WalkOptions::default()).ok()?;
    let mut digester = ContextDigester::new(root).ok()?;
    let selection = digester.digest(&everything, &roots, None).ok()?;
    Some(selection.digest.to_string())
}

impl Shared<'_> {
    /// What changed at `step`'s place since the last build there, whose document was
    /// `previous`.
    fn change_since(
        &self,
        step: &Step,
        previous: Option<&KeyDocument>,
        document: &KeyDocument,
    ) -> Change {
        match previous {
            None => Change::First,
            Some(old) if old == document => Change::Same,
            Some(old) => match self.describe(step, old, document) {
                Some(text) => Change::Own(text),
                None => Change::Parent,
            },
        }
    }

    /// The first way `new` differs from `old` that is the step's own, in words; `None` when
    /// only the parent differs (the FROM of an image names the base's new ID).
    fn describe(&self, step: &Step, old: &KeyDocument, new: &KeyDocument) -> Option<String> {
        let change = crate::cache::first_difference(old, new)?;
        let path = change.path.as_str();
        let top = path.split(['.', '[']).next().unwrap_or(path);
        Some(match top {
            "version" => "kiln's cache key format changed".to_string(),
            "platform" => format!("platform {change}"),
            "layer" => format!("layer settings changed: {change}"),
            "parent" => match (&step.op, &new.parent) {
                (Op::Base(Source::Image { reference }), Parent::Image(id)) => {
                    format!("base image {reference} now {id}")
                }
                _ => return None,
            },
            "inputs" => self.describe_inputs(step, old, new, &change),
            _ => match build_arg_change(old, new) {
                Some(text) => text,
                None => format!("instruction changed: {change}"),
            },
        })
    }

    fn describe_inputs(
        &self,
        step: &Step,
        old: &KeyDocument,
        new: &KeyDocument,
        change: &crate::cache::FieldChange,
    ) -> String {
        let path = change.path.as_str();
        let files = |field: &str| -> Option<String> {
            let index = self.cache.as_ref()?;
            let digest_at = |d: &KeyDocument| -> Option<String> {
                let v = d.inputs.pointer(field)?;
                v.as_str().map(str::to_string)
            };
            let old_files = index.selection(&digest_at(old)?)?;
            let new_files = index.selection(&digest_at(new)?)?;
            let changes = changed_files(&old_files, &new_files);
            if let Some(text) = mode_change(&changes, &old_files, &new_files) {
                return Some(text);
            }
            (!changes.is_empty()).then(|| changes.summary(3))
        };
        if path.starts_with("inputs.context") {
            return files("/context")
                .unwrap_or_else(|| "the context files it copies changed".to_string());
        }
        if path.starts_with("inputs.mounts") {
            let i: Option<usize> = path
                .strip_prefix("inputs.mounts[")
                .and_then(|r| r.split(']').next())
                .and_then(|n| n.parse().ok());
            return match i.and_then(|i| files(&format!("/mounts/{i}"))) {
                Some(text) => format!("bind mount: {text}"),
                None => "the files a mount reads changed".to_string(),
            };
        }
        if path.starts_with("inputs.urls") {
            let urls: Vec<&str> = match &step.op {
                Op::Copy(c) => c
                    .sources
                    .iter()
                    .map(String::as_str)
                    .filter(|s| is_url(s))
                    .collect(),
                _ => Vec::new(),
            };
            let i: Option<usize> = path
                .strip_prefix("inputs.urls[")
                .and_then(|r| r.split(']').next())
                .and_then(|n| n.parse().ok());
            return match i.and_then(|i| urls.get(i)) {
                Some(url) => format!("the content at {url} changed"),
                None => "a downloaded file changed".to_string(),
            };
        }
        if path.starts_with("inputs.from") {
            return match &step.op {
                Op::Copy(CopyOp {
                    from: Some(Source::Stage { index, name }),
                    ..
                }) => {
                    let name = name.clone().unwrap_or_else(|| index.to_string());
                    match self.stage_cause(*index) {
                        Some(cause) => format!("stage {name} changed: {cause}"),
                        None => format!("stage {name} changed"),
                    }
                }
                Op::Copy(CopyOp {
                    from: Some(Source::Image { reference }),
                    ..
                }) => match new.inputs.pointer("/from/image").and_then(Value::as_str) {
                    Some(id) => format!("image {reference} now {id}"),
                    None => format!("image {reference} changed"),
                },
                _ => "the stage or image it reads changed".to_string(),
            };
        }
        change.to_string()
    }

    /// Why `key` missed, in words: its own change, or the root cause of its parent's.
    pub(super) fn miss_reason(&self, key: &StepKey, cause: Option<&str>) -> String {
        if self.opts.no_cache {
            return "--no-cache".into();
        }
        if self.cache.is_none() {
            return "the cache index cannot be opened".into();
        }
        match &key.change {
            Change::First => "first build of this step".into(),
            Change::Same => "its earlier result is no longer in the cache".into(),
            Change::Own(text) => text.clone(),
            Change::Parent => match cause {
                Some(c) => format!("parent step missed: {c}"),
                None => "parent step missed".into(),
            },
        }
    }
}

/// `build arg NAME: old → new` when two ARG steps differ in a value.
fn build_arg_change(old: &KeyDocument, new: &KeyDocument) -> Option<String> {
    let args = |d: &KeyDocument| -> Option<Vec<(String, Option<String>)>> {
        serde_json::from_value(d.step.pointer("/op/config/arg")?.clone()).ok()
    };
    let (a, b) = (args(old)?, args(new)?);
    let show = |v: Option<&Option<String>>| match v {
        Some(Some(v)) => v.clone(),
        _ => "(unset)".to_string(),
    };
    for (name, value) in &b {
        let before = a.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        if before != Some(value) {
            return Some(format!(
                "build arg {name}: {} → {}",
                show(before),
                show(Some(value))
            ));
        }
    }
    None
}

/// `mode of run.sh 0644 → 0755` when the one change is a file whose mode changed.
fn mode_change(
    changes: &crate::context::FileChanges,
    old: &[crate::cache::SelectedFile],
    new: &[crate::cache::SelectedFile],
) -> Option<String> {
    let [path] = &changes.changed[..] else {
        return None;
    };
    if !changes.added.is_empty() || !changes.removed.is_empty() {
        return None;
    }
    let path = path.to_string_lossy();
    let mode =
        |files: &[crate::cache::SelectedFile]| files.iter().find(|f| f.0 == path).map(|f| f.2);
    let (a, b) = (mode(old)?, mode(new)?);
    (a != b).then(|| format!("mode of {path} {a:04o} → {b:04o}"))
}

/// The paths that differ between two remembered selections (a directory's entry digest
/// covers only its own metadata: a file added in it names the file, not the directory).
fn changed_files(
    old: &[crate::cache::SelectedFile],
    new: &[crate::cache::SelectedFile],
) -> crate::context::FileChanges {
    crate::context::diff_by_path(
        old.iter().map(|f| (Path::new(&f.0), f.1.as_str())),
        new.iter().map(|f| (Path::new(&f.0), f.1.as_str())),
    )
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://") || s.starts_with("git@")
}

fn cache_error(e: impl Into<crate::cache::CacheError>) -> StepError {
    StepError::Cache(e.into())
}
