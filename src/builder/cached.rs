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

use std::path::PathBuf;

use serde_json::{Value, json};

use crate::cache::{CacheKey, CacheRecord, CacheResult, KeyDocument, Parent};
use crate::pathclean::clean_relative;

use super::StepError;
use super::scheduler::{Shared, StageState, StepResult};
use super::step::{Op, Source, Step};

/// A step's cache identity: its key document (and key), or why it has none.
pub(super) struct StepKey {
    pub document: KeyDocument,
    pub key: CacheKey,
    /// A key the index may be asked about: every step that makes or may make a layer.
    pub cacheable: bool,
}

impl Shared<'_> {
    /// The key of `step` on top of `parent` (`None` for a stage's FROM step).
    pub(super) fn step_key(
        &self,
        step: &Step,
        parent: Option<&CacheKey>,
    ) -> Result<StepKey, StepError> {
        let parent = match (&step.op, parent) {
            (Op::Base(source), _) => self.base_parent(source)?,
            (_, Some(p)) => Parent::Step(*p),
            (_, None) => unreachable!("every stage starts with its FROM step"),
        };
        let mut op = serde_json::to_value(&step.op)
            .map_err(|e| cache_error(crate::cache::CacheError::Document(e)))?;
        if let Some(run) = op.get_mut("run").and_then(Value::as_object_mut) {
            run.remove("env");
        }
        let (inputs, cacheable) = match &step.op {
            Op::Base(_) | Op::Config(_) => (Value::Null, false),
            Op::Mkdir(_) => (Value::Null, true),
            Op::Copy(c) => match &c.from {
                Some(source) => (json!({ "from": self.source_key(source)? }), true),
                None if c.sources.iter().any(|s| is_url(s)) => (Value::Null, false),
                None => match self.context_digest(&c.sources) {
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
                            match self.context_digest(&[src]) {
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
        let document = KeyDocument::new(&self.key_settings, parent, &json!({ "op": op }))
            .and_then(|d| d.with_inputs(&inputs))
            .map_err(cache_error)?;
        let key = document.key().map_err(cache_error)?;
        Ok(StepKey {
            document,
            key,
            cacheable,
        })
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

    /// The content digest of context sources (wildcards: the whole context, which is never a
    /// wrong hit, only a broader miss). `None` when a source cannot be digested.
    fn context_digest(&self, sources: &[String]) -> Option<String> {
        let roots: Vec<PathBuf> = if sources
            .iter()
            .any(|s| s.contains(['*', '?', '[']) || s.contains('\\'))
        {
            vec![PathBuf::from(".")]
        } else {
            sources
                .iter()
                .map(|s| PathBuf::from(clean_relative(s).unwrap_or_else(|| ".".to_string())))
                .collect()
        };
        let mut digester = self.digester.lock().unwrap_or_else(|e| e.into_inner());
        let digester = digester.as_mut()?;
        digester
            .digest(self.filter, &roots, None)
            .ok()
            .map(|d| d.digest.to_string())
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

    /// Records what a step that ran produced (best effort: a record that cannot be written
    /// only costs a later miss).
    pub(super) fn remember(&self, key: StepKey, result: &StepResult) {
        let Some(index) = &self.cache else { return };
        let record = CacheRecord::new(
            key.document,
            CacheResult {
                layers: result.layer.iter().cloned().collect(),
                diff_ids: result.diff_id.iter().copied().collect(),
                config: Value::Null,
            },
            crate::image::config::now_unix(),
        );
        if let Err(e) = record.and_then(|r| index.put(&r)) {
            self.progress.event(&crate::progress::Event::Notice {
                message: format!("warning: {}", crate::error_chain(&e)),
            });
        }
    }
}

impl Shared<'_> {
    /// Where the last key of this step's place is kept: the Dockerfile, the context directory,
    /// the stage and the step's position in it. A later miss at the same place is explained
    /// against that key's record.
    fn lineage_path(&self, step: &Step) -> Option<PathBuf> {
        let index = self.cache.as_ref()?;
        let place = json!([
            step.loc.file,
            self.opts.context.to_string_lossy(),
            step.stage,
            step.id.index,
        ]);
        let id = CacheKey::of(place.to_string().as_bytes());
        Some(index.records_dir().with_file_name("lineage").join(id.hex()))
    }

    /// Remembers `key` as the latest at this step's place (best effort).
    pub(super) fn note_lineage(&self, step: &Step, key: &CacheKey) {
        let Some(path) = self.lineage_path(step) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            let dir = path.parent().expect("lineage files live in a directory");
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            std::io::Write::write_all(&mut tmp, key.to_string().as_bytes())?;
            tmp.persist(&path).map_err(|e| e.error)?;
            Ok(())
        };
        let _ = write();
    }

    /// Why `key` missed: the first field it differs in from the last key at the same place.
    pub(super) fn miss_reason(&self, step: &Step, key: &StepKey) -> String {
        if self.opts.no_cache {
            return "--no-cache".into();
        }
        let Some(index) = &self.cache else {
            return "the cache index cannot be opened".into();
        };
        let previous = self
            .lineage_path(step)
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|k| k.trim().parse::<CacheKey>().ok());
        let Some(previous) = previous else {
            return "first build of this step".into();
        };
        if previous == key.key {
            return "its earlier result's layers are no longer in the store".into();
        }
        let Ok(Some(record)) = index.peek(&previous) else {
            return "the earlier result is gone from the cache".into();
        };
        match crate::cache::first_difference(&record.document, &key.document) {
            None => "the earlier result is gone from the cache".into(),
            Some(change) if change.path.starts_with("parent") => "an earlier step changed".into(),
            Some(change) if change.path.starts_with("inputs.context") => {
                "the context files it copies changed".into()
            }
            Some(change) if change.path.starts_with("inputs.from") => {
                "the stage or image it copies from changed".into()
            }
            Some(change) if change.path.starts_with("step.") => {
                format!("instruction changed: {change}")
            }
            Some(change) => change.to_string(),
        }
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://") || s.starts_with("git@")
}

fn cache_error(e: impl Into<crate::cache::CacheError>) -> StepError {
    StepError::Cache(e.into())
}
