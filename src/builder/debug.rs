//! `kiln debug parse`, `kiln debug plan` and `kiln debug steps`: what the parser, the planner
//! and the lowering make of a Dockerfile, as text the CLI prints. Errors name the file and line, as a build's do.

use crate::dockerfile::{self, ParseError};
use crate::plan::{self, PlanError, PlanOptions};

/// How `debug parse` shows the AST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseFormat {
    /// BuildKit's `Node.Dump()` text.
    Buildkit,
    /// The AST, directives and warnings as pretty JSON.
    Json,
}

/// A Dockerfile that does not parse or plan, with the name it was read under (boxed: the
/// error kinds are large).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DebugError {
    #[error("{}{}: {source}", name, line.map(|l| format!(":{l}")).unwrap_or_default())]
    Parse {
        name: String,
        line: Option<usize>,
        #[source]
        source: Box<ParseError>,
    },
    #[error("{}{}: {source}", name, line.map(|l| format!(":{l}")).unwrap_or_default())]
    Plan {
        name: String,
        line: Option<usize>,
        #[source]
        source: Box<PlanError>,
    },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The lowering refused a step (or the Dockerfile), naming its line.
    #[error(transparent)]
    Lower(#[from] Box<super::BuildError>),
}

/// What `debug parse` shows: the parser's warnings (`warning: FILE:LINE: …` lines for stderr)
/// and the AST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseShown {
    pub warnings: Vec<String>,
    pub output: String,
}

/// Parses `text` (read from `name`) and shows its AST in `format`.
pub fn parse(name: &str, text: &str, format: ParseFormat) -> Result<ParseShown, DebugError> {
    let parsed = dockerfile::parse(text).map_err(|source| DebugError::Parse {
        name: name.to_string(),
        line: source.start_line,
        source: Box::new(source),
    })?;
    let warnings = parsed
        .warnings
        .iter()
        .map(|w| format!("warning: {name}:{}: {}", w.line, w.short))
        .collect();
    let output = match format {
        ParseFormat::Buildkit => parsed.ast.dump(),
        ParseFormat::Json => serde_json::to_string_pretty(&parsed)?,
    };
    Ok(ParseShown { warnings, output })
}

/// Plans `text` (read from `name`) with the build args, target and platform a build would
/// get, and shows the stage graph as pretty JSON.
pub fn plan(
    name: &str,
    text: &str,
    build_args: Vec<(String, String)>,
    target: Option<String>,
    platform: Option<String>,
) -> Result<String, DebugError> {
    let located = |source: PlanError| DebugError::Plan {
        name: name.to_string(),
        line: source.line,
        source: Box::new(source),
    };
    let df = plan::load(text).map_err(located)?;
    let opts = PlanOptions {
        build_args,
        target,
        platform,
    };
    let graph = plan::plan(&df, &opts).map_err(located)?;
    Ok(serde_json::to_string_pretty(&graph)?)
}

/// The lowered steps of every stage the target needs, as pretty JSON: nothing runs (with
/// `SOURCE_DATE_EPOCH`, as a build under it sees it: the predefined ARG). Bases are
/// read from `store` when given and found there; any other base is lowered against an empty
/// config and its steps list what is `unresolved`.
pub fn steps(
    name: &str,
    text: &str,
    build_args: Vec<(String, String)>,
    target: Option<String>,
    source_date_epoch: Option<i64>,
    store: Option<&crate::image::Store>,
) -> Result<String, DebugError> {
    let opts = super::BuildOptions {
        context: std::path::PathBuf::from("."),
        dockerfile: text.to_string(),
        dockerfile_name: name.to_string(),
        dockerfile_path: None,
        build_args,
        target,
        tags: Vec::new(),
        source_date_epoch,
        compression: crate::layer::Compression::gzip(),
        network: crate::exec::Network::Host,
        secrets: Default::default(),
        single_id: false,
        jobs: 1,
        no_cache: true,
        explain_cache: false,
    };
    let stages = super::lower_steps(&opts, store).map_err(Box::new)?;
    Ok(serde_json::to_string_pretty(&stages)?)
}
