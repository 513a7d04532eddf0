//! AST nodes → typed instructions, with BuildKit's validation (argument counts, flags, FROM
//! stage names, ONBUILD limits, HEALTHCHECK options, RUN mounts) and messages.
//!
//! Arguments stay unexpanded here: variable expansion needs the stage's ARG/ENV scope, which
//! the planner ([`crate::plan`]) owns.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use thiserror::Error;

use super::parser::{Heredoc, Node, ParsedDockerfile, chomp_heredoc_content, parse_heredoc};

/// An instruction-level error with the line range of the instruction. It reads as its
/// [`kind`](Self::kind) (BuildKit's text) and has the kind's cause as its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstructionError {
    pub kind: InstructionErrorKind,
    pub start_line: usize,
    pub end_line: usize,
}

impl std::fmt::Display for InstructionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.kind.fmt(f)
    }
}

impl std::error::Error for InstructionError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.kind.source()
    }
}

/// Why an instruction is invalid. The texts are BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum InstructionErrorKind {
    #[error("no build stage in current context")]
    NoStage,
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error("{keyword} requires exactly one argument")]
    ExactlyOne { keyword: &'static str },
    #[error("{keyword} requires at least one argument")]
    AtLeastOne { keyword: &'static str },
    #[error(
        "{keyword} requires at least two arguments, but only one was provided. Destination could not be determined"
    )]
    NoDestination { keyword: &'static str },
    #[error("{keyword} cannot accept a heredoc as a destination")]
    HeredocDestination { keyword: &'static str },
    #[error("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")]
    OnbuildChained,
    #[error("{trigger} isn't allowed as an ONBUILD trigger")]
    OnbuildTrigger { trigger: String },
    #[error("VOLUME specified can not be an empty string")]
    EmptyVolume,
    #[error("ARG names can not be blank")]
    BlankArg,
    #[error("SHELL requires the arguments to be in JSON form")]
    ShellNotJson,
    #[error("unknown instruction: {keyword}{}", .suggestion.as_ref().map(|s| format!(" (did you mean {s}?)")).unwrap_or_default())]
    Unknown {
        keyword: String,
        suggestion: Option<String>,
    },
    #[error(
        "invalid name for build stage: {}, name can't start with a number or contain symbols",
        super::parser::go_quote(.name)
    )]
    StageName { name: String },
    #[error("FROM requires either one or three arguments")]
    FromArguments,
    /// A RUN `--mount` whose CSV does not read.
    #[error("failed to parse csv mounts: {0}")]
    MountCsv(#[source] CsvError),
    #[error("'from' doesn't support variable expansion, define alias stage instead")]
    MountFromVariable,
    #[error("invalid network mode {0:?}")]
    Network(String),
    #[error("security {0:?} is not valid")]
    Security(String),
    #[error(transparent)]
    Healthcheck(#[from] HealthcheckError),
}

/// An instruction flag that BuildKit's `BFlags` refuses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FlagError {
    #[error("arg should start with -- : {arg}")]
    NotAFlag { arg: String },
    #[error("unknown flag: --{name}{}", .suggestion.as_ref().map(|s| format!(" (did you mean --{s}?)")).unwrap_or_default())]
    Unknown {
        name: String,
        suggestion: Option<String>,
    },
    #[error("duplicate flag specified: --{name}")]
    Duplicate { name: String },
    #[error("missing a value on flag: --{name}")]
    MissingValue { name: String },
    #[error("expecting boolean value for flag {name}, not: {value}")]
    NotBoolean { name: String, value: String },
}

/// A `--mount` value that BuildKit's `parseMount` refuses (after expansion).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MountError {
    #[error("failed to parse csv mounts: {0}")]
    Csv(#[source] CsvError),
    #[error("invalid field '{field}' must be a key=value pair")]
    NotKeyValue { field: String },
    #[error("unsupported mount type {0:?}")]
    Type(String),
    #[error("invalid value for {key}: {value}")]
    Boolean { key: String, value: String },
    #[error("unexpected key '{key}' for mount type '{kind}'")]
    KeyForType { key: String, kind: String },
    #[error("unsupported sharing value {0:?}")]
    Sharing(String),
    /// `mode`, `uid` or `gid` that is not a number (octal for `mode`).
    #[error("invalid value {value} for {key}")]
    Number { key: &'static str, value: String },
    #[error("unexpected key '{key}' in '{field}'")]
    UnknownKey { key: String, field: String },
    /// `mode`, `uid` or `gid` on a mount type that has no owner.
    #[error("{key} not allowed for {kind:?} type mounts")]
    OwnerNotAllowed { key: &'static str, kind: String },
    #[error("secret mount should not have a from")]
    SecretFrom,
    #[error("secret mount should not define sharing")]
    SecretSharing,
    #[error("invalid secret mount. one of source, target required")]
    SecretTarget,
    #[error("both source and id can't be set")]
    SecretSourceAndId,
    #[error("invalid cache sharing set for {kind} mount")]
    SharingNotCache { kind: String },
}

/// A CSV record with an unbalanced quote (Go's `encoding/csv`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("extraneous or missing \" in quoted-field: {input}")]
pub struct CsvError {
    pub input: String,
}

/// A HEALTHCHECK that BuildKit refuses.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum HealthcheckError {
    #[error("HEALTHCHECK requires at least one argument")]
    NoArguments,
    #[error(transparent)]
    Flag(#[from] FlagError),
    #[error("HEALTHCHECK NONE takes no arguments")]
    NoneWithArguments,
    #[error("Unknown type {} in HEALTHCHECK (try CMD)", super::parser::go_quote(.kind))]
    Type { kind: String },
    #[error("Missing command after HEALTHCHECK CMD")]
    NoCommand,
    #[error(transparent)]
    Duration(#[from] DurationError),
    #[error("Interval \"{name}\" cannot be less than 1ms")]
    TooShort { name: String },
    #[error("strconv.ParseInt: parsing {}: invalid syntax", super::parser::go_quote(.value))]
    Retries { value: String },
    #[error("--retries cannot be negative ({0})")]
    NegativeRetries(i64),
}

/// A duration Go's `time.ParseDuration` refuses; the texts are Go's.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum DurationError {
    #[error("time: invalid duration {}", super::parser::go_quote(.input))]
    Invalid { input: String },
    #[error("time: missing unit in duration {}", super::parser::go_quote(.input))]
    MissingUnit { input: String },
    #[error(
        "time: unknown unit {} in duration {}",
        super::parser::go_quote(.unit),
        super::parser::go_quote(.input)
    )]
    UnknownUnit { unit: String, input: String },
}

/// Where an instruction sits in the Dockerfile (1-based lines).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Location {
    pub start_line: usize,
    pub end_line: usize,
}

/// `name=value` from ENV or LABEL, and `name[=value]` from ARG (value `None` when absent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// One `ARG` name with its optional default, still unexpanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    pub key: String,
    pub value: Option<String>,
    /// The doc comment for this ARG (`# NAME does something` above it).
    pub comment: String,
}

/// A heredoc or file body used as a COPY/ADD source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceContent {
    pub path: String,
    pub data: String,
    pub expand: bool,
}

/// COPY/ADD sources and destination.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct SourcesAndDest {
    pub dest: String,
    pub source_paths: Vec<String>,
    pub source_contents: Vec<SourceContent>,
}

/// An inline file for RUN (heredoc body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ShellInlineFile {
    pub name: String,
    pub data: String,
    pub chomp: bool,
}

/// The command of RUN/CMD/ENTRYPOINT: exec form or a shell command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct CommandLine {
    pub cmd_line: Vec<String>,
    /// Shell form: run through the image's SHELL.
    pub prepend_shell: bool,
    pub files: Vec<ShellInlineFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct CopyCommand {
    pub sources: SourcesAndDest,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub parents: bool,
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct AddCommand {
    pub sources: SourcesAndDest,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub keep_git_dir: Option<bool>,
    pub checksum: Option<String>,
    pub exclude: Vec<String>,
    pub unpack: Option<bool>,
}

/// One `RUN --mount=…` as written (values unexpanded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Mount {
    /// bind | cache | tmpfs | secret | ssh
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub read_only: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sharing: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gid: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

/// A `--mount` value as written; validated by [`parse_mount`] once expanded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct MountSpec {
    pub raw: String,
    /// The `from=` field (never expanded: BuildKit forbids variables there).
    pub from: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RunCommand {
    pub command: CommandLine,
    pub mounts: Vec<MountSpec>,
    pub network: Option<String>,
    pub security: Option<String>,
    pub devices: Vec<String>,
    pub flags_used: Vec<String>,
}

/// A health check: `test` as Docker stores it (`["NONE"]`, `["CMD", …]`, `["CMD-SHELL", s]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct HealthCheck {
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
    pub retries: Option<i64>,
}

/// Every instruction that may follow FROM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "instruction", rename_all = "lowercase")]
pub enum Command {
    Env { vars: Vec<KeyValue> },
    Maintainer { name: String },
    Label { labels: Vec<KeyValue> },
    Add(AddCommand),
    Copy(CopyCommand),
    Onbuild { expression: String },
    Workdir { path: String },
    Run(RunCommand),
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    Healthcheck(HealthCheck),
    Expose { ports: Vec<String> },
    User { user: String },
    Volume { volumes: Vec<String> },
    Stopsignal { signal: String },
    Arg { args: Vec<ArgDecl> },
    Shell { shell: Vec<String> },
}

/// An instruction with its position and original text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instruction {
    pub command: Command,
    pub location: Location,
    /// The logical line, e.g. `COPY --from=build /out /app`.
    pub original: String,
    /// The keyword in upper case, e.g. `COPY`.
    pub keyword: String,
}

/// A `FROM` and the instructions up to the next one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stage {
    /// Lower-cased stage name from `AS name`, if any.
    pub name: Option<String>,
    /// The base reference as written (may hold `$VAR`s).
    pub base_name: String,
    pub platform: Option<String>,
    pub location: Location,
    pub original: String,
    /// The doc comment for this stage.
    pub comment: String,
    pub commands: Vec<Instruction>,
}

/// The whole Dockerfile as stages plus the ARGs before the first FROM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Dockerfile {
    pub meta_args: Vec<Instruction>,
    pub stages: Vec<Stage>,
    pub escape: char,
}

/// Either a stage start or a command; what one AST node becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Stage(Stage),
    Command(Instruction),
}

/// Turns a parsed Dockerfile into stages. BuildKit's rule: ARGs before the first FROM are
/// global ("meta") args; any other instruction there is an error.
pub fn from_ast(parsed: &ParsedDockerfile) -> Result<Dockerfile, InstructionError> {
    let mut meta_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &parsed.ast.children {
        match parse_instruction(node)? {
            Parsed::Stage(s) => stages.push(s),
            Parsed::Command(c) => match stages.last_mut() {
                Some(stage) => stage.commands.push(c),
                None if matches!(c.command, Command::Arg { .. }) => meta_args.push(c),
                None => {
                    return Err(err_at(node, InstructionErrorKind::NoStage));
                }
            },
        }
    }
    Ok(Dockerfile {
        meta_args,
        stages,
        escape: parsed.escape,
    })
}

fn err_at(node: &Node, kind: InstructionErrorKind) -> InstructionError {
    InstructionError {
        kind,
        start_line: node.start_line,
        end_line: node.end_line,
    }
}

/// Every instruction keyword BuildKit knows.
const INSTRUCTIONS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// BuildKit's "did you mean" hint: the closest option within edit distance 2 (ties: first in
/// `options`), nothing when the value is itself an option. With `match_case`, comparison
/// ignores case and the hint takes the value's case (all lower or all upper).
pub fn suggest(value: &str, options: &[&str], match_case: bool) -> Option<String> {
    let norm = |s: &str| {
        if match_case {
            s.to_lowercase()
        } else {
            s.to_string()
        }
    };
    let v = norm(value);
    let mut best: Option<(usize, &str)> = None;
    for &opt in options {
        let o = norm(opt);
        if o == v {
            return None;
        }
        let d = levenshtein(&v, &o);
        if d < 3 && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, opt));
        }
    }
    let (_, opt) = best?;
    if match_case && value.chars().all(|c| !c.is_uppercase()) {
        Some(opt.to_lowercase())
    } else {
        Some(opt.to_string())
    }
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The flags an instruction accepts, parsed like BuildKit's `BFlags`.
struct Flags<'a> {
    values: BTreeMap<&'a str, Vec<String>>,
}

#[derive(Clone, Copy, PartialEq)]
enum FlagKind {
    Bool,
    String,
    Strings,
}

impl<'a> Flags<'a> {
    fn parse(raw: &'a [String], spec: &'a [(&'a str, FlagKind)]) -> Result<Self, FlagError> {
        let mut values: BTreeMap<&'a str, Vec<String>> = BTreeMap::new();
        for arg in raw {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(FlagError::NotAFlag { arg: arg.clone() });
            };
            if body.is_empty() {
                break;
            }
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let Some(&(key, kind)) = spec.iter().find(|(n, _)| *n == name) else {
                let names: Vec<&str> = spec.iter().map(|(n, _)| *n).collect();
                return Err(FlagError::Unknown {
                    name: name.to_string(),
                    suggestion: suggest(name, &names, false),
                });
            };
            let seen = values.entry(key).or_default();
            if !seen.is_empty() && kind != FlagKind::Strings {
                return Err(FlagError::Duplicate {
                    name: name.to_string(),
                });
            }
            match kind {
                FlagKind::Bool => {
                    let v = match value.map(str::to_ascii_lowercase).as_deref() {
                        None | Some("true") => "true",
                        Some("") => {
                            return Err(FlagError::MissingValue {
                                name: name.to_string(),
                            });
                        }
                        Some("false") => "false",
                        Some(_) => {
                            return Err(FlagError::NotBoolean {
                                name: name.to_string(),
                                value: value.unwrap_or_default().to_string(),
                            });
                        }
                    };
                    seen.push(v.to_string());
                }
                FlagKind::String | FlagKind::Strings => match value {
                    Some(v) => seen.push(v.to_string()),
                    None => {
                        return Err(FlagError::MissingValue {
                            name: name.to_string(),
                        });
                    }
                },
            }
        }
        Ok(Flags { values })
    }

    fn string(&self, name: &str) -> Option<String> {
        self.values.get(name).and_then(|v| v.last().cloned())
    }

    fn strings(&self, name: &str) -> Vec<String> {
        self.values.get(name).cloned().unwrap_or_default()
    }

    fn bool(&self, name: &str) -> Option<bool> {
        self.values
            .get(name)
            .and_then(|v| v.last())
            .map(|v| v == "true")
    }

    fn used(&self) -> Vec<String> {
        self.values.keys().map(|k| k.to_string()).collect()
    }
}

/// The arguments of a node as BuildKit's `nodeArgs` lists them (ONBUILD's nested instruction
/// contributes its keyword and arguments).
fn node_args(node: &Node) -> Vec<String> {
    let mut out = Vec::new();
    for arg in &node.next {
        match arg.children.as_slice() {
            [] => out.push(arg.value.clone()),
            [child] => {
                out.push(child.value.clone());
                out.extend(node_args(child));
            }
            _ => {}
        }
    }
    out
}

fn exactly_one(keyword: &'static str, args: &[String]) -> Result<String, InstructionErrorKind> {
    match args {
        [one] => Ok(one.clone()),
        _ => Err(InstructionErrorKind::ExactlyOne { keyword }),
    }
}

fn at_least_one(keyword: &'static str, args: &[String]) -> Result<(), InstructionErrorKind> {
    if args.is_empty() {
        Err(InstructionErrorKind::AtLeastOne { keyword })
    } else {
        Ok(())
    }
}

fn no_flags(flags: &[String]) -> Result<(), FlagError> {
    Flags::parse(flags, &[]).map(|_| ())
}

/// `[a-z][a-z0-9-_.]*`: BuildKit's rule for stage names (after lower-casing).
fn is_valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// The doc comment for `name`: the rest of the first collected comment line starting with
/// `name `.
fn doc_comment(comments: &[String], name: &str) -> String {
    if name.is_empty() {
        return String::new();
    }
    let prefix = format!("{name} ");
    comments
        .iter()
        .find_map(|c| c.strip_prefix(&prefix))
        .unwrap_or_default()
        .to_string()
}

/// Parses one AST node (a top-level instruction or ONBUILD's trigger).
pub fn parse_instruction(node: &Node) -> Result<Parsed, InstructionError> {
    parse_node(node).map_err(|m| err_at(node, m))
}

fn parse_node(node: &Node) -> Result<Parsed, InstructionErrorKind> {
    let keyword = node.value.to_uppercase();
    let args = node_args(node);
    let flags = node.flags.as_slice();
    let location = Location {
        start_line: node.start_line,
        end_line: node.end_line,
    };
    let command = match keyword.as_str() {
        "FROM" => return parse_from(node, &args, flags, location).map(Parsed::Stage),
        "ENV" => {
            no_flags(flags)?;
            at_least_one("ENV", &args)?;
            Command::Env {
                vars: key_values(&args),
            }
        }
        "MAINTAINER" => {
            let name = exactly_one("MAINTAINER", &args)?;
            no_flags(flags)?;
            Command::Maintainer { name }
        }
        "LABEL" => {
            no_flags(flags)?;
            at_least_one("LABEL", &args)?;
            Command::Label {
                labels: key_values(&args),
            }
        }
        "ADD" => {
            need_destination("ADD", &args)?;
            let f = Flags::parse(
                flags,
                &[
                    ("chown", FlagKind::String),
                    ("chmod", FlagKind::String),
                    ("link", FlagKind::Bool),
                    ("keep-git-dir", FlagKind::Bool),
                    ("checksum", FlagKind::String),
                    ("exclude", FlagKind::Strings),
                    ("unpack", FlagKind::Bool),
                ],
            )?;
            let sources = sources_and_dest("ADD", &args, &node.heredocs)?;
            Command::Add(AddCommand {
                sources,
                chown: f.string("chown"),
                chmod: f.string("chmod"),
                link: f.bool("link").unwrap_or(false),
                keep_git_dir: f.bool("keep-git-dir"),
                checksum: f.string("checksum"),
                exclude: f.strings("exclude"),
                unpack: f.bool("unpack"),
            })
        }
        "COPY" => {
            need_destination("COPY", &args)?;
            let f = Flags::parse(
                flags,
                &[
                    ("from", FlagKind::String),
                    ("chown", FlagKind::String),
                    ("chmod", FlagKind::String),
                    ("link", FlagKind::Bool),
                    ("parents", FlagKind::Bool),
                    ("exclude", FlagKind::Strings),
                ],
            )?;
            let sources = sources_and_dest("COPY", &args, &node.heredocs)?;
            Command::Copy(CopyCommand {
                sources,
                from: f.string("from"),
                chown: f.string("chown"),
                chmod: f.string("chmod"),
                link: f.bool("link").unwrap_or(false),
                parents: f.bool("parents").unwrap_or(false),
                exclude: f.strings("exclude"),
            })
        }
        "ONBUILD" => {
            at_least_one("ONBUILD", &args)?;
            no_flags(flags)?;
            let trigger = args[0].to_uppercase();
            match trigger.as_str() {
                "ONBUILD" => {
                    return Err(InstructionErrorKind::OnbuildChained);
                }
                "MAINTAINER" | "FROM" => {
                    return Err(InstructionErrorKind::OnbuildTrigger { trigger });
                }
                _ => {}
            }
            let mut expression = node
                .next
                .first()
                .and_then(|n| n.children.first())
                .map(|c| c.original.trim().to_string())
                .unwrap_or_default();
            // The trigger keeps its heredoc bodies, as BuildKit stores them: each body and its
            // terminator after the line, so the trigger parses again as written.
            for h in &node.heredocs {
                expression.push('\n');
                expression.push_str(&h.content);
                expression.push_str(&h.name);
            }
            Command::Onbuild { expression }
        }
        "WORKDIR" => {
            let path = exactly_one("WORKDIR", &args)?;
            no_flags(flags)?;
            Command::Workdir { path }
        }
        "RUN" => Command::Run(parse_run(node, &args, flags)?),
        "CMD" => {
            no_flags(flags)?;
            Command::Cmd(command_line(node, &args))
        }
        "ENTRYPOINT" => {
            no_flags(flags)?;
            Command::Entrypoint(command_line(node, &args))
        }
        "HEALTHCHECK" => Command::Healthcheck(parse_healthcheck(node, &args, flags)?),
        "EXPOSE" => {
            at_least_one("EXPOSE", &args)?;
            no_flags(flags)?;
            Command::Expose { ports: args }
        }
        "USER" => {
            let user = exactly_one("USER", &args)?;
            no_flags(flags)?;
            Command::User { user }
        }
        "VOLUME" => {
            at_least_one("VOLUME", &args)?;
            no_flags(flags)?;
            if args.iter().any(|v| v.trim().is_empty()) {
                return Err(InstructionErrorKind::EmptyVolume);
            }
            Command::Volume { volumes: args }
        }
        "STOPSIGNAL" => {
            // BuildKit never parses STOPSIGNAL's flags.
            Command::Stopsignal {
                signal: exactly_one("STOPSIGNAL", &args)?,
            }
        }
        "ARG" => {
            // BuildKit never parses ARG's flags.
            at_least_one("ARG", &args)?;
            let mut decls = Vec::new();
            for word in &args {
                let (key, value) = match word.split_once('=') {
                    Some((k, v)) => (k.to_string(), Some(v.to_string())),
                    None => (word.clone(), None),
                };
                if key.is_empty() {
                    return Err(InstructionErrorKind::BlankArg);
                }
                let comment = doc_comment(&node.prev_comment, &key);
                decls.push(ArgDecl {
                    key,
                    value,
                    comment,
                });
            }
            Command::Arg { args: decls }
        }
        "SHELL" => {
            no_flags(flags)?;
            at_least_one("SHELL", &args)?;
            if !node.json {
                return Err(InstructionErrorKind::ShellNotJson);
            }
            Command::Shell { shell: args }
        }
        _ => {
            return Err(InstructionErrorKind::Unknown {
                keyword: node.value.clone(),
                suggestion: suggest(&node.value, &INSTRUCTIONS, true),
            });
        }
    };
    Ok(Parsed::Command(Instruction {
        command,
        location,
        original: node.original.clone(),
        keyword,
    }))
}

fn key_values(args: &[String]) -> Vec<KeyValue> {
    args.chunks(3)
        .filter(|c| c.len() >= 2)
        .map(|c| KeyValue {
            key: c[0].clone(),
            value: c[1].clone(),
        })
        .collect()
}

fn parse_from(
    node: &Node,
    args: &[String],
    flags: &[String],
    location: Location,
) -> Result<Stage, InstructionErrorKind> {
    let name = match args {
        [_, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
            let lower = name.to_lowercase();
            if !is_valid_stage_name(&lower) {
                return Err(InstructionErrorKind::StageName { name: name.clone() });
            }
            Some(lower)
        }
        [_] => None,
        _ => return Err(InstructionErrorKind::FromArguments),
    };
    let f = Flags::parse(flags, &[("platform", FlagKind::String)])?;
    let comment = doc_comment(&node.prev_comment, name.as_deref().unwrap_or_default());
    Ok(Stage {
        name,
        base_name: args[0].clone(),
        platform: f.string("platform").filter(|p| !p.is_empty()),
        location,
        original: node.original.trim().to_string(),
        comment,
        commands: Vec::new(),
    })
}

fn need_destination(keyword: &'static str, args: &[String]) -> Result<(), InstructionErrorKind> {
    if args.len() < 2 {
        return Err(InstructionErrorKind::NoDestination { keyword });
    }
    Ok(())
}

fn sources_and_dest(
    keyword: &'static str,
    args: &[String],
    heredocs: &[Heredoc],
) -> Result<SourcesAndDest, InstructionErrorKind> {
    need_destination(keyword, args)?;
    let (srcs, dest) = args.split_at(args.len() - 1);
    let dest = &dest[0];
    if matches!(parse_heredoc(dest), Ok(Some(_))) {
        return Err(InstructionErrorKind::HeredocDestination { keyword });
    }
    let mut out = SourcesAndDest {
        dest: dest.clone(),
        ..SourcesAndDest::default()
    };
    for src in srcs {
        match parse_heredoc(src) {
            Ok(Some(h)) => {
                let body = heredocs
                    .iter()
                    .rev()
                    .find(|d| d.name == h.name)
                    .map(|d| d.content.as_str())
                    .unwrap_or_default();
                let data = if h.chomp {
                    chomp_heredoc_content(body)
                } else {
                    body.to_string()
                };
                out.source_contents.push(SourceContent {
                    path: h.name,
                    data,
                    expand: h.expand,
                });
            }
            _ => out.source_paths.push(src.clone()),
        }
    }
    Ok(out)
}

/// Exec form keeps the words; shell form joins them into one command line.
fn command_line(node: &Node, args: &[String]) -> CommandLine {
    let cmd_line = if args.is_empty() {
        Vec::new()
    } else if node.json {
        args.to_vec()
    } else {
        vec![args.join(" ")]
    };
    CommandLine {
        cmd_line,
        prepend_shell: !node.json,
        files: node
            .heredocs
            .iter()
            .map(|h| ShellInlineFile {
                name: h.name.clone(),
                data: h.content.clone(),
                chomp: h.chomp,
            })
            .collect(),
    }
}

fn parse_run(
    node: &Node,
    args: &[String],
    flags: &[String],
) -> Result<RunCommand, InstructionErrorKind> {
    let f = Flags::parse(
        flags,
        &[
            ("mount", FlagKind::Strings),
            ("network", FlagKind::String),
            ("security", FlagKind::String),
            ("device", FlagKind::Strings),
        ],
    )?;
    // BuildKit only checks a mount's CSV and `from` here; the rest is validated after
    // expansion, when the stage is built (see `parse_mount`).
    let mut mounts = Vec::new();
    for raw in f.strings("mount") {
        let fields = split_csv(&raw).map_err(InstructionErrorKind::MountCsv)?;
        let mut from = None;
        for field in &fields {
            if let Some((k, v)) = field.split_once('=')
                && k.eq_ignore_ascii_case("from")
            {
                if v.find('$').is_some_and(|i| i + 1 < v.len()) {
                    return Err(InstructionErrorKind::MountFromVariable);
                }
                from = Some(v.to_string());
            }
        }
        mounts.push(MountSpec { raw, from });
    }
    let network = f.string("network");
    if let Some(n) = &network
        && !matches!(n.as_str(), "default" | "none" | "host")
    {
        return Err(InstructionErrorKind::Network(n.clone()));
    }
    let security = f.string("security");
    if let Some(s) = &security
        && !matches!(s.as_str(), "sandbox" | "insecure")
    {
        return Err(InstructionErrorKind::Security(s.clone()));
    }
    Ok(RunCommand {
        command: command_line(node, args),
        mounts,
        network,
        security,
        devices: f.strings("device"),
        flags_used: f.used(),
    })
}

/// Parses and validates one `--mount` value after variable expansion: comma-separated
/// `key=value` fields (CSV quoting allowed), as BuildKit's `parseMount`.
pub fn parse_mount(spec: &str) -> Result<Mount, MountError> {
    let fields = split_csv(spec).map_err(MountError::Csv)?;
    let mut m = Mount {
        kind: "bind".into(),
        ..Mount::default()
    };
    let mut read_only: Option<bool> = None;
    for field in &fields {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        };
        let boolean = |v: Option<&str>| -> Result<bool, MountError> {
            match v {
                None => Ok(true),
                Some(v) => parse_go_bool(v).ok_or_else(|| MountError::Boolean {
                    key: key.clone(),
                    value: v.to_string(),
                }),
            }
        };
        if value.is_none()
            && !matches!(
                key.as_str(),
                "readonly" | "ro" | "readwrite" | "rw" | "required"
            )
        {
            return Err(MountError::NotKeyValue {
                field: field.clone(),
            });
        }
        let v = value.unwrap_or_default().to_string();
        match key.as_str() {
            "type" => {
                m.kind = match v.to_ascii_lowercase().as_str() {
                    t @ ("bind" | "cache" | "tmpfs" | "secret" | "ssh") => t.to_string(),
                    _ => return Err(MountError::Type(v)),
                }
            }
            "readonly" | "ro" => read_only = Some(boolean(value)?),
            "readwrite" | "rw" => read_only = Some(!boolean(value)?),
            "required" if matches!(m.kind.as_str(), "secret" | "ssh") => {
                m.required = boolean(value)?
            }
            "size" if m.kind == "tmpfs" => m.size = Some(v),
            "required" | "size" => {
                return Err(MountError::KeyForType { key, kind: m.kind });
            }
            "target" | "dst" | "destination" => m.target = Some(v),
            "source" | "src" => m.source = Some(v),
            "from" => m.from = Some(v),
            "id" => m.id = Some(v),
            "env" => m.env = Some(v),
            "sharing" => {
                let lower = v.to_ascii_lowercase();
                if !matches!(lower.as_str(), "shared" | "private" | "locked") {
                    return Err(MountError::Sharing(v));
                }
                m.sharing = Some(lower);
            }
            "mode" => {
                m.mode = Some(u32::from_str_radix(&v, 8).map_err(|_| MountError::Number {
                    key: "mode",
                    value: v.clone(),
                })?)
            }
            "uid" => {
                m.uid = Some(
                    v.parse::<u32>()
                        .map_err(|_| MountError::Number {
                            key: "uid",
                            value: v.clone(),
                        })?
                        .into(),
                )
            }
            "gid" => {
                m.gid = Some(
                    v.parse::<u32>()
                        .map_err(|_| MountError::Number {
                            key: "gid",
                            value: v.clone(),
                        })?
                        .into(),
                )
            }
            _ => {
                return Err(MountError::UnknownKey {
                    key,
                    field: field.clone(),
                });
            }
        }
    }
    let owner_ok = matches!(m.kind.as_str(), "secret" | "ssh" | "cache");
    for (set, what) in [
        (m.mode.is_some(), "mode"),
        (m.uid.is_some(), "uid"),
        (m.gid.is_some(), "gid"),
    ] {
        if set && !owner_ok {
            return Err(MountError::OwnerNotAllowed {
                key: what,
                kind: m.kind,
            });
        }
    }
    m.read_only = read_only.unwrap_or(matches!(m.kind.as_str(), "bind" | "secret" | "ssh"));
    if m.kind == "secret" {
        if m.from.is_some() {
            return Err(MountError::SecretFrom);
        }
        if m.sharing.is_some() {
            return Err(MountError::SecretSharing);
        }
        if m.source.is_none() && m.target.is_none() && m.id.is_none() {
            return Err(MountError::SecretTarget);
        }
        if m.source.is_some() && m.id.is_some() {
            return Err(MountError::SecretSourceAndId);
        }
    }
    if m.sharing.is_some() && m.kind != "cache" {
        return Err(MountError::SharingNotCache { kind: m.kind });
    }
    Ok(m)
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

/// Splits `a=b,"c=d,e"` like Go's `encoding/csv` reading one record.
pub fn split_csv(s: &str) -> Result<Vec<String>, CsvError> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut chars = s.chars().peekable();
    let mut in_quotes = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        if in_quotes {
            if c == '"' {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    field.push('"');
                } else {
                    in_quotes = false;
                }
            } else {
                field.push(c);
            }
        } else if c == '"' && at_field_start {
            in_quotes = true;
            at_field_start = false;
        } else if c == ',' {
            out.push(std::mem::take(&mut field));
            at_field_start = true;
        } else {
            field.push(c);
            at_field_start = false;
        }
    }
    if in_quotes {
        return Err(CsvError {
            input: s.to_string(),
        });
    }
    out.push(field);
    Ok(out)
}

fn parse_healthcheck(
    node: &Node,
    args: &[String],
    flags: &[String],
) -> Result<HealthCheck, HealthcheckError> {
    if args.is_empty() {
        return Err(HealthcheckError::NoArguments);
    }
    let typ = args[0].to_uppercase();
    let rest = &args[1..];
    if typ == "NONE" {
        if !rest.is_empty() {
            return Err(HealthcheckError::NoneWithArguments);
        }
        // BuildKit never parses HEALTHCHECK NONE's flags.
        return Ok(HealthCheck {
            test: vec![typ],
            ..HealthCheck::default()
        });
    }
    let f = Flags::parse(
        flags,
        &[
            ("interval", FlagKind::String),
            ("timeout", FlagKind::String),
            ("start-period", FlagKind::String),
            ("start-interval", FlagKind::String),
            ("retries", FlagKind::String),
        ],
    )?;
    if typ != "CMD" {
        return Err(HealthcheckError::Type { kind: typ });
    }
    let cmd = if rest.is_empty() {
        Vec::new()
    } else if node.json {
        rest.to_vec()
    } else {
        vec![rest.join(" ")]
    };
    if cmd.is_empty() {
        return Err(HealthcheckError::NoCommand);
    }
    let mut test = vec![if node.json { "CMD" } else { "CMD-SHELL" }.to_string()];
    test.extend(cmd);
    let interval = |name: &str| -> Result<Option<Duration>, HealthcheckError> {
        let Some(v) = f.string(name).filter(|v| !v.is_empty()) else {
            return Ok(None);
        };
        let d = parse_go_duration(&v)?;
        if d.is_zero() {
            return Ok(None);
        }
        if d < Duration::from_millis(1) {
            return Err(HealthcheckError::TooShort {
                name: name.to_string(),
            });
        }
        Ok(Some(d))
    };
    let retries = match f.string("retries").filter(|v| !v.is_empty()) {
        Some(v) => {
            let n: i64 = v
                .parse()
                .map_err(|_| HealthcheckError::Retries { value: v.clone() })?;
            if n < 0 {
                return Err(HealthcheckError::NegativeRetries(n));
            }
            Some(n)
        }
        None => None,
    };
    Ok(HealthCheck {
        test,
        interval: interval("interval")?,
        timeout: interval("timeout")?,
        start_period: interval("start-period")?,
        start_interval: interval("start-interval")?,
        retries,
    })
}

/// Go's `time.ParseDuration` for non-negative values: `300ms`, `1.5h`, `2h45m`.
pub fn parse_go_duration(s: &str) -> Result<Duration, DurationError> {
    let bad = || DurationError::Invalid {
        input: s.to_string(),
    };
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    if rest.is_empty() || rest.starts_with('-') {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(DurationError::MissingUnit {
                    input: s.to_string(),
                });
            }
            u => {
                return Err(DurationError::UnknownUnit {
                    unit: u.to_string(),
                    input: s.to_string(),
                });
            }
        };
        rest = &rest[unit_len..];
        total += value * nanos;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(Duration::from_nanos(total as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dockerfile::parse;

    fn one(src: &str) -> Result<Parsed, InstructionError> {
        let p = parse(src).unwrap();
        parse_instruction(&p.ast.children[0])
    }

    #[test]
    fn from_with_stage_name() {
        let Parsed::Stage(s) = one("FROM --platform=linux/amd64 busybox AS Build").unwrap() else {
            panic!("not a stage")
        };
        assert_eq!(s.name.as_deref(), Some("build"));
        assert_eq!(s.platform.as_deref(), Some("linux/amd64"));
    }

    #[test]
    fn run_mounts() {
        let Parsed::Command(i) =
            one("RUN --mount=type=cache,target=/root/.cache,sharing=locked --network=none make")
                .unwrap()
        else {
            panic!()
        };
        let Command::Run(r) = i.command else { panic!() };
        let m = parse_mount(&r.mounts[0].raw).unwrap();
        assert_eq!(m.kind, "cache");
        assert_eq!(m.sharing.as_deref(), Some("locked"));
        assert!(!m.read_only);
        assert_eq!(r.network.as_deref(), Some("none"));
        assert_eq!(r.command.cmd_line, vec!["make"]);
    }

    #[test]
    fn bad_flags() {
        assert_eq!(
            one("COPY --nope a b").unwrap_err().to_string(),
            "unknown flag: --nope"
        );
        assert_eq!(
            one("FROM --platform x").unwrap_err().to_string(),
            "missing a value on flag: --platform"
        );
    }

    /// A mount whose CSV does not read keeps the CSV error as its cause.
    #[test]
    fn mount_csv_error_keeps_its_cause() {
        use std::error::Error as _;
        let err = parse_mount("type=cache,\"target=/x").unwrap_err();
        assert_eq!(
            err.to_string(),
            "failed to parse csv mounts: extraneous or missing \" in quoted-field: type=cache,\"target=/x"
        );
        let csv = err.source().unwrap().downcast_ref::<CsvError>().unwrap();
        assert_eq!(csv.input, "type=cache,\"target=/x");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(
            parse_go_duration("1.5s").unwrap(),
            Duration::from_millis(1500)
        );
        assert!(parse_go_duration("5").is_err());
    }
}
