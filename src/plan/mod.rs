//! From typed instructions and build options to a stage DAG: global vs stage ARG scoping,
//! expansion of base names and platforms, dependencies through `FROM <stage>`,
//! `COPY --from` and `RUN --mount=from=`, pruning to `--target`, and a build order.

mod scope;

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use thiserror::Error;

use crate::dockerfile::instructions::{
    Command, Dockerfile, InstructionErrorKind, MountError, parse_mount,
};
use crate::dockerfile::parser::ParseErrorKind;
use crate::dockerfile::shell::{Budget, Lexer, ShellError};
use crate::platform::ParsePlatformError;

pub use crate::platform::Platform;
pub use scope::{ExpandError, Scope, predefined_args, proxy_env};

/// A planning error with the Dockerfile line when there is one. It reads as its
/// [`kind`](Self::kind) and has the kind's cause as its source.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanError {
    pub kind: PlanErrorKind,
    pub line: Option<usize>,
}

impl std::fmt::Display for PlanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for PlanError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source()
    }
}

impl PlanError {
    fn at(line: usize, kind: impl Into<PlanErrorKind>) -> Self {
        PlanError {
            kind: kind.into(),
            line: Some(line),
        }
    }

    fn file_wide(kind: impl Into<PlanErrorKind>) -> Self {
        PlanError {
            kind: kind.into(),
            line: None,
        }
    }

    /// An error of one instruction, named as the build names it (`ARG A=$B: …`).
    fn in_instruction(line: usize, original: &str, source: ExpandError) -> Self {
        Self::at(
            line,
            PlanErrorKind::Expand {
                instruction: original.trim().to_string(),
                source,
            },
        )
    }
}

/// Why a Dockerfile cannot be planned (BuildKit's wording where it has one).
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum PlanErrorKind {
    #[error("the Dockerfile cannot be empty")]
    Empty,
    #[error(transparent)]
    Parse(#[from] ParseErrorKind),
    #[error(transparent)]
    Instruction(#[from] InstructionErrorKind),
    #[error("dockerfile contains no stages to build")]
    NoStages,
    /// `--platform` of the build.
    #[error(transparent)]
    Platform(#[from] ParsePlatformError),
    #[error("target stage {target:?} could not be found{}", .suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    Target {
        target: String,
        suggestion: Option<String>,
    },
    /// A word of `instruction` (as written) did not expand.
    #[error("{instruction}: {source}")]
    Expand {
        instruction: String,
        #[source]
        source: ExpandError,
    },
    #[error("base name ({base}) should not be blank")]
    BlankBase { base: String },
    #[error("failed to process arguments for platform {platform}: {source}")]
    PlatformExpand {
        platform: String,
        #[source]
        source: ShellError,
    },
    #[error("empty platform value from expression {platform}")]
    EmptyPlatform { platform: String },
    #[error("failed to parse platform {platform}: {source}")]
    StagePlatform {
        platform: String,
        #[source]
        source: ParsePlatformError,
    },
    #[error(
        "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"
    )]
    FromExpansion,
    #[error("invalid stage index {0}")]
    StageIndex(i64),
    #[error(
        "cannot mount from stage {other:?} to {this:?}, stage needs to be defined before current command"
    )]
    MountFromLater { other: String, this: String },
    #[error(
        "cannot copy from stage {other:?}, it needs to be defined before current stage {this:?}"
    )]
    CopyFromLater { other: String, this: String },
    #[error("circular dependency detected on stage: {stage}")]
    Cycle { stage: String },
    /// A RUN `--mount` that is invalid once expanded.
    #[error(transparent)]
    Mount(#[from] MountError),
}

/// What the caller decides: build args, target stage and target platform.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `--build-arg` pairs in the order given (a later duplicate wins).
    pub build_args: Vec<(String, String)>,
    pub target: Option<String>,
    /// `os/arch[/variant]`; default: the build machine's platform.
    pub platform: Option<String>,
}

/// What a stage starts from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Base {
    /// `FROM scratch`: an empty filesystem.
    Scratch,
    /// An earlier stage, by index.
    Stage { stage: usize },
    /// An image reference, as expanded.
    Image { reference: String },
}

/// One stage of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedStage {
    pub index: usize,
    pub name: Option<String>,
    /// The base reference as written in the Dockerfile.
    pub base_written: String,
    /// The base reference after expanding global ARGs.
    pub base_expanded: String,
    pub base: Base,
    /// The platform from `FROM --platform`, expanded, if given.
    pub platform: Option<String>,
    pub line: usize,
    /// Number of instructions after FROM.
    pub instructions: usize,
    /// False when the stage is not needed for the target and will not be built.
    pub reachable: bool,
}

/// Why one stage needs another or an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, PartialOrd, Ord)]
pub enum EdgeCause {
    #[serde(rename = "FROM")]
    From,
    #[serde(rename = "COPY --from")]
    CopyFrom,
    #[serde(rename = "RUN --mount=from")]
    RunMountFrom,
}

/// `stage` depends on stage `depends_on` (or on `image`, for references that are not stages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Edge {
    pub stage: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    pub cause: EdgeCause,
    pub line: usize,
}

/// The stage DAG.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Graph {
    pub stages: Vec<PlannedStage>,
    pub edges: Vec<Edge>,
    /// The stage the build produces (the last one, or `--target`).
    pub target: usize,
    /// Stages not needed for the target: never built.
    pub pruned: Vec<usize>,
    /// Reachable stages, dependencies first.
    pub build_order: Vec<usize>,
    /// Images the reachable stages need (FROM, COPY --from, RUN --mount=from), deduplicated.
    pub images: Vec<String>,
    /// Global (pre-FROM) ARGs with their values after build args; `null` when unset.
    pub global_args: BTreeMap<String, Option<String>>,
    pub target_platform: String,
    pub build_platform: String,
    /// The global scope stages start from (see [`Scope::for_stage`]).
    #[serde(skip)]
    pub global_scope: Scope,
    /// `--build-arg` values, the last of each name winning.
    #[serde(skip)]
    pub build_args: BTreeMap<String, String>,
}

/// Reads a Dockerfile's text into stages, with BuildKit's errors for an empty file.
pub fn load(text: &str) -> Result<Dockerfile, PlanError> {
    if text.is_empty() {
        return Err(PlanError::file_wide(PlanErrorKind::Empty));
    }
    let parsed = crate::dockerfile::parse(text).map_err(|e| PlanError {
        kind: e.kind.into(),
        line: e.start_line,
    })?;
    crate::dockerfile::instructions::from_ast(&parsed)
        .map_err(|e| PlanError::at(e.start_line, e.kind))
}

/// BuildKit's name for a stage in messages: its own name, else `stage-N`.
fn stage_label(df: &Dockerfile, index: usize) -> String {
    df.stages[index]
        .name
        .clone()
        .unwrap_or_else(|| format!("stage-{index}"))
}

/// Plans a Dockerfile.
pub fn plan(df: &Dockerfile, opts: &PlanOptions) -> Result<Graph, PlanError> {
    if df.stages.is_empty() {
        return Err(PlanError::file_wide(PlanErrorKind::NoStages));
    }
    // BuildKit's spelling: arm64 without its default variant, `--platform` as written.
    let build_platform = Platform::host().without_default_variant();
    let target_platform = match &opts.platform {
        Some(p) => Platform::parse_literal(p).map_err(PlanError::file_wide)?,
        None => build_platform.clone(),
    };
    let build_args: BTreeMap<String, String> = opts.build_args.iter().cloned().collect();
    let lexer = Lexer::new(df.escape);
    // One expansion budget for the whole plan, renewed per instruction.
    let budget = Budget::new();

    let by_name = |name: &str| -> Option<usize> {
        // A repeated stage name refers to the last stage of that name.
        df.stages
            .iter()
            .rposition(|s| s.name.as_deref() == Some(&name.to_lowercase()))
    };
    let target = match &opts.target {
        Some(t) => by_name(t).ok_or_else(|| {
            let names: Vec<&str> = df.stages.iter().filter_map(|s| s.name.as_deref()).collect();
            PlanError::file_wide(PlanErrorKind::Target {
                target: t.clone(),
                suggestion: crate::dockerfile::instructions::suggest(t, &names, false),
            })
        })?,
        None => df.stages.len() - 1,
    };
    // BuildKit names an unnamed target stage `default`.
    let target_stage = df.stages[target]
        .name
        .clone()
        .unwrap_or_else(|| "default".into());

    // Global scope: the predefined args, then the meta ARGs in order.
    let mut global = Scope::new(predefined_args(
        &target_platform,
        &build_platform,
        &target_stage,
    ));
    for inst in &df.meta_args {
        if let Command::Arg { args } = &inst.command {
            budget.next_instruction();
            for decl in args {
                global
                    .declare_arg(&lexer, &budget, decl, &build_args)
                    .map_err(|m| {
                        PlanError::in_instruction(inst.location.start_line, &inst.original, m)
                    })?;
            }
        }
    }

    // Base names expand in the global scope; only an earlier stage can be a base (matched
    // against the lower-cased stage names as written, like BuildKit), a later name is an image.
    let mut stages = Vec::with_capacity(df.stages.len());
    let mut edges = Vec::new();
    for (index, st) in df.stages.iter().enumerate() {
        let line = st.location.start_line;
        budget.next_instruction();
        let expanded = global
            .expand(&lexer, &budget, &st.base_name)
            .map_err(|m| PlanError::in_instruction(line, &st.original, m))?;
        if expanded.is_empty() {
            return Err(PlanError::at(
                line,
                PlanErrorKind::BlankBase {
                    base: st.base_name.clone(),
                },
            ));
        }
        let platform = match &st.platform {
            Some(p) => {
                let v = lexer
                    .process_word_in(p, &global, &budget)
                    .map_err(|source| {
                        PlanError::at(
                            line,
                            PlanErrorKind::PlatformExpand {
                                platform: p.clone(),
                                source,
                            },
                        )
                    })?;
                if v.is_empty() {
                    return Err(PlanError::at(
                        line,
                        PlanErrorKind::EmptyPlatform {
                            platform: p.clone(),
                        },
                    ));
                }
                Platform::parse_literal(&v).map_err(|source| {
                    PlanError::at(
                        line,
                        PlanErrorKind::StagePlatform {
                            platform: v.clone(),
                            source,
                        },
                    )
                })?;
                Some(v)
            }
            None => None,
        };
        let earlier = df.stages[..index]
            .iter()
            .rposition(|s| s.name.as_deref() == Some(expanded.as_str()));
        let base = if let Some(dep) = earlier {
            edges.push(Edge {
                stage: index,
                depends_on: Some(dep),
                image: None,
                cause: EdgeCause::From,
                line,
            });
            Base::Stage { stage: dep }
        } else if expanded == "scratch" {
            Base::Scratch
        } else {
            edges.push(Edge {
                stage: index,
                depends_on: None,
                image: Some(expanded.clone()),
                cause: EdgeCause::From,
                line,
            });
            Base::Image {
                reference: expanded.clone(),
            }
        };
        stages.push(PlannedStage {
            index,
            name: st.name.clone(),
            base_written: st.base_name.clone(),
            base_expanded: expanded,
            base,
            platform,
            line,
            instructions: st.commands.len(),
            reachable: false,
        });
    }

    // Dependencies from instructions: `--from` may name any stage, earlier or later.
    for (index, st) in df.stages.iter().enumerate() {
        for inst in &st.commands {
            let line = inst.location.start_line;
            let mut refs = Vec::new();
            match &inst.command {
                Command::Copy(c) => {
                    if let Some(from) = &c.from {
                        let empty = BTreeMap::<String, String>::new();
                        if lexer.process_word(from, &empty).ok().as_deref() != Some(from.as_str()) {
                            return Err(PlanError::at(line, PlanErrorKind::FromExpansion));
                        }
                        refs.push((from.clone(), EdgeCause::CopyFrom));
                    }
                }
                Command::Run(r) => {
                    for m in &r.mounts {
                        if let Some(from) = m.from.as_ref().filter(|f| !f.is_empty()) {
                            refs.push((from.clone(), EdgeCause::RunMountFrom));
                        }
                    }
                }
                _ => {}
            }
            for (reference, cause) in refs {
                let edge = match reference.parse::<i64>() {
                    Ok(n) if n < 0 || n as usize >= df.stages.len() => {
                        return Err(PlanError::at(line, PlanErrorKind::StageIndex(n)));
                    }
                    Ok(n) => Edge {
                        stage: index,
                        depends_on: Some(n as usize),
                        image: None,
                        cause,
                        line,
                    },
                    Err(_) => match by_name(&reference) {
                        Some(dep) => Edge {
                            stage: index,
                            depends_on: Some(dep),
                            image: None,
                            cause,
                            line,
                        },
                        None => Edge {
                            stage: index,
                            depends_on: None,
                            image: Some(reference.clone()),
                            cause,
                            line,
                        },
                    },
                };
                edges.push(edge);
            }
        }
    }

    check_cycles(df, &edges)?;
    let build_order = order_from(target, &edges, df.stages.len());
    let reachable: BTreeSet<usize> = build_order.iter().copied().collect();

    // What BuildKit checks only when it builds a stage: the order of stage references, and
    // RUN mounts once their values are expanded.
    for &index in &build_order {
        for e in edges.iter().filter(|e| e.stage == index) {
            let Some(dep) = e.depends_on else { continue };
            if dep > index {
                let (this, other) = (stage_label(df, index), stage_label(df, dep));
                return Err(PlanError::at(
                    e.line,
                    match e.cause {
                        EdgeCause::RunMountFrom => PlanErrorKind::MountFromLater { other, this },
                        _ => PlanErrorKind::CopyFromLater { other, this },
                    },
                ));
            }
        }
        check_stage_expansions(df, index, &global, (&lexer, &budget), &build_args)?;
    }

    for s in &mut stages {
        s.reachable = reachable.contains(&s.index);
    }
    let pruned = (0..stages.len())
        .filter(|i| !reachable.contains(i))
        .collect();
    let mut images = Vec::new();
    for e in &edges {
        if let Some(img) = &e.image
            && reachable.contains(&e.stage)
            && !images.contains(img)
        {
            images.push(img.clone());
        }
    }
    Ok(Graph {
        stages,
        edges,
        target,
        pruned,
        build_order,
        images,
        global_args: global.declared_args(),
        target_platform: target_platform.to_string(),
        build_platform: build_platform.to_string(),
        global_scope: global,
        build_args,
    })
}

/// Walks a stage's ARG/ENV scope and validates what expands: RUN mounts (BuildKit checks them
/// only after expansion, for stages it builds).
fn check_stage_expansions(
    df: &Dockerfile,
    index: usize,
    global: &Scope,
    (lexer, budget): (&Lexer, &Budget),
    build_args: &BTreeMap<String, String>,
) -> Result<(), PlanError> {
    let mut scope = Scope::for_stage(global);
    for inst in &df.stages[index].commands {
        let line = inst.location.start_line;
        let err = |m: MountError| PlanError::at(line, m);
        let in_inst = |m: ExpandError| PlanError::in_instruction(line, &inst.original, m);
        budget.next_instruction();
        match &inst.command {
            Command::Arg { args } => {
                for decl in args {
                    scope
                        .declare_arg(lexer, budget, decl, build_args)
                        .map_err(in_inst)?;
                }
            }
            Command::Env { vars } => {
                for kv in vars {
                    scope.set_env(lexer, budget, kv).map_err(in_inst)?;
                }
            }
            Command::Run(r) => {
                for m in &r.mounts {
                    let expanded = scope.expand(lexer, budget, &m.raw).map_err(in_inst)?;
                    parse_mount(&expanded).map_err(err)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// BuildKit checks every stage, reachable or not, for dependency cycles.
fn check_cycles(df: &Dockerfile, edges: &[Edge]) -> Result<(), PlanError> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let n = df.stages.len();
    let deps = dependency_lists(edges, n);
    let mut marks = vec![Mark::New; n];
    for start in 0..n {
        if marks[start] != Mark::New {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        marks[start] = Mark::Active;
        while let Some(top) = stack.last_mut() {
            let (s, next) = (top.0, top.1);
            if let Some(&(d, line)) = deps[s].get(next) {
                top.1 += 1;
                match marks[d] {
                    Mark::Done => {}
                    Mark::Active => {
                        return Err(PlanError::at(
                            line,
                            PlanErrorKind::Cycle {
                                stage: stage_label(df, d),
                            },
                        ));
                    }
                    Mark::New => {
                        marks[d] = Mark::Active;
                        stack.push((d, 0));
                    }
                }
            } else {
                marks[s] = Mark::Done;
                stack.pop();
            }
        }
    }
    Ok(())
}

/// For each stage, the stages it depends on (with the line of the first reference), sorted.
fn dependency_lists(edges: &[Edge], n: usize) -> Vec<Vec<(usize, usize)>> {
    let mut deps: Vec<Vec<(usize, usize)>> = vec![Vec::new(); n];
    for e in edges {
        if let Some(d) = e.depends_on
            && !deps[e.stage].iter().any(|&(x, _)| x == d)
        {
            deps[e.stage].push((d, e.line));
        }
    }
    for d in &mut deps {
        d.sort();
    }
    deps
}

/// The stages the target needs, dependencies first (the graph is acyclic by now).
fn order_from(target: usize, edges: &[Edge], n: usize) -> Vec<usize> {
    let deps = dependency_lists(edges, n);
    let mut seen = vec![false; n];
    let mut order = Vec::new();
    let mut stack = vec![(target, 0usize)];
    seen[target] = true;
    while let Some(top) = stack.last_mut() {
        let (s, next) = (top.0, top.1);
        if let Some(&(d, _)) = deps[s].get(next) {
            top.1 += 1;
            if !seen[d] {
                seen[d] = true;
                stack.push((d, 0));
            }
        } else {
            order.push(s);
            stack.pop();
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    /// A planning error keeps the lexer's error as its cause, under BuildKit's text.
    #[test]
    fn expansion_error_keeps_its_cause() {
        let df = load("FROM busybox\nARG A=${B:-x\n").unwrap();
        let err = plan(&df, &PlanOptions::default()).unwrap_err();
        assert_eq!(err.line, Some(2));
        assert_eq!(
            err.to_string(),
            "ARG A=${B:-x: failed to process \"${B:-x\": syntax error: missing '}'"
        );
        let expand = err.source().unwrap().downcast_ref::<ExpandError>().unwrap();
        assert_eq!(expand.source, ShellError::MissingBrace);
        assert_eq!(
            crate::error_chain(&err),
            err.to_string(),
            "a cause already in the text is said once"
        );
    }

    /// A RUN mount that is invalid once expanded is the mount module's error.
    #[test]
    fn mount_error_is_typed() {
        let df = load("FROM busybox\nARG T=bogus\nRUN --mount=type=$T true\n").unwrap();
        let err = plan(&df, &PlanOptions::default()).unwrap_err();
        assert_eq!(err.line, Some(3));
        assert_eq!(err.kind, MountError::Type("bogus".into()).into());
        assert_eq!(err.to_string(), "unsupported mount type \"bogus\"");
    }
}
