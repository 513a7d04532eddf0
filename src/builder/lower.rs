//! Lowering: a planned stage plus its base's config → the stage's [`Step`]s, with no I/O.
//!
//! Everything BuildKit works out in `dockerfile2llb` before it solves anything happens here:
//! variable expansion (within the build's expansion budget), ARG/ENV scoping, ONBUILD triggers
//! of the base, SHELL, USER and WORKDIR as later steps see them, heredoc bodies, `--mount`
//! specs and `--from` names. The only outside input is each base image's config, handed in by
//! the caller; a base kiln cannot read is lowered against an empty config and the values that
//! depend on it are marked unresolved.

use std::collections::BTreeMap;

use crate::dockerfile::instructions::{
    self, Command, CommandLine, Dockerfile, Instruction, Parsed, RunCommand, parse_mount,
};
use crate::dockerfile::parser::{chomp_heredoc_content, go_quote, parse_heredoc};
use crate::dockerfile::shell::{Budget, Env as _, Lexer};
use crate::image::ImageConfig;
use crate::plan::{Base, Graph, Scope};

use super::config::{self, StageConfig};
use super::step::{
    ConfigChange, CopyOp, Location, MkdirOp, Op, PIPES_DIR, RunOp, Script, Source, Step, StepId,
};
use super::{BaseError, BuildError, DockerfileError, StepError, TriggerError, dockerfile_error};

/// A stage's steps, in order (the FROM step first).
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoweredStage {
    pub index: usize,
    pub label: String,
    pub steps: Vec<Step>,
}

/// The base configs the lowering reads: by image reference, `None` when kiln cannot read it.
pub trait BaseConfigs {
    /// `Err` is an error of the FROM line (e.g. the image is not in the store).
    fn config(&self, reference: &str) -> Result<Option<ImageConfig>, BaseError>;
}

/// What lowering shares across stages.
pub struct Lowering<'a> {
    pub df: &'a Dockerfile,
    pub graph: &'a Graph,
    pub file: &'a str,
    /// The Dockerfile's text (errors quote its lines).
    pub text: &'a str,
    pub bases: &'a dyn BaseConfigs,
    lexer: Lexer,
    budget: Budget,
    /// Each lowered stage's final config (a later `FROM <stage>` starts from it).
    finals: BTreeMap<usize, (ImageConfig, bool)>,
    next_number: usize,
}

/// One stage's environment while it is lowered: what expansion and later steps see.
struct StageEnv {
    scope: Scope,
    config: StageConfig,
    /// The base's config could not be read: values from it are unknown.
    base_unknown: bool,
    user_set: bool,
    workdir_set: bool,
    shell_set: bool,
}

impl<'a> Lowering<'a> {
    pub fn new(
        df: &'a Dockerfile,
        graph: &'a Graph,
        file: &'a str,
        text: &'a str,
        bases: &'a dyn BaseConfigs,
    ) -> Self {
        Lowering {
            df,
            graph,
            file,
            text,
            bases,
            lexer: Lexer::new(df.escape),
            budget: Budget::new(),
            finals: BTreeMap::new(),
            next_number: 1,
        }
    }

    /// Lowers every stage the target needs, in build order.
    pub fn lower_all(mut self) -> Result<Vec<LoweredStage>, BuildError> {
        let order = self.graph.build_order.clone();
        order.into_iter().map(|i| self.lower_stage(i)).collect()
    }

    fn label(&self, index: usize) -> String {
        self.df.stages[index]
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{index}"))
    }

    fn lower_stage(&mut self, index: usize) -> Result<LoweredStage, BuildError> {
        let stage = &self.df.stages[index];
        let planned = &self.graph.stages[index];
        let label = self.label(index);
        let total = stage.commands.len() + 1;
        let from_loc = Location {
            file: self.file.to_string(),
            line: stage.location.start_line,
            instruction: stage.original.trim().to_string(),
        };
        let (source, base_config, base_unknown) = match &planned.base {
            Base::Scratch => (Source::Scratch, config::scratch_config(), false),
            Base::Stage { stage: dep } => {
                let (c, unknown) = self.finals.get(dep).cloned().ok_or_else(|| {
                    dockerfile_error(
                        self.file,
                        self.text,
                        Some(stage.location.start_line),
                        DockerfileError::StageOrder(*dep),
                    )
                })?;
                (
                    Source::Stage {
                        index: *dep,
                        name: self.df.stages[*dep].name.clone(),
                    },
                    c,
                    unknown,
                )
            }
            Base::Image { reference } => {
                let found = self.bases.config(reference).map_err(|e| {
                    dockerfile_error(self.file, self.text, Some(stage.location.start_line), e)
                })?;
                let reference = reference.clone();
                match found {
                    Some(c) => (Source::Image { reference }, c, false),
                    None => (Source::Image { reference }, config::scratch_config(), true),
                }
            }
        };
        let (config, triggers) = StageConfig::start(base_config);
        let scope = Scope::for_stage(&self.graph.global_scope).with_env(config.env_pairs());
        let mut env = StageEnv {
            scope,
            config,
            base_unknown,
            user_set: false,
            workdir_set: false,
            shell_set: false,
        };
        let mut steps = Vec::with_capacity(total + triggers.len());
        steps.push(Step {
            id: self.next_id(index, 0),
            stage: label.clone(),
            name: format!("[{label} 1/{total}] FROM {}", planned.base_expanded),
            loc: from_loc,
            created_by: String::new(),
            op: Op::Base(source),
            unresolved: if base_unknown {
                vec!["config"]
            } else {
                Vec::new()
            },
        });

        // ONBUILD triggers of the base run first, then are not inherited.
        for trigger in &triggers {
            let inst = self.parse_trigger(trigger, stage.location.start_line)?;
            let name = format!("[{label}] ONBUILD {}", inst.original);
            let id = self.next_id(index, steps.len());
            steps.push(self.lower_instruction(&mut env, &inst, id, &label, name)?);
        }
        for (i, inst) in stage.commands.iter().enumerate() {
            let name = format!("[{label} {}/{total}] {}", i + 2, inst.original.trim());
            let id = self.next_id(index, steps.len());
            steps.push(self.lower_instruction(&mut env, inst, id, &label, name)?);
        }
        self.finals
            .insert(index, (env.config.into_config(), env.base_unknown));
        Ok(LoweredStage {
            index,
            label,
            steps,
        })
    }

    fn next_id(&mut self, stage: usize, index: usize) -> StepId {
        let number = self.next_number;
        self.next_number += 1;
        StepId {
            stage,
            index,
            number,
        }
    }

    fn parse_trigger(&self, trigger: &str, line: usize) -> Result<Instruction, BuildError> {
        let err = |source: TriggerError| {
            dockerfile_error(
                self.file,
                self.text,
                Some(line),
                DockerfileError::Trigger {
                    trigger: trigger.to_string(),
                    source,
                },
            )
        };
        let parsed = crate::dockerfile::parse(trigger).map_err(|e| err(e.into()))?;
        if parsed.ast.children.len() != 1 {
            return Err(err(TriggerError::NotSingle));
        }
        match instructions::parse_instruction(&parsed.ast.children[0]) {
            Ok(Parsed::Command(mut c)) => {
                c.location.start_line = line;
                c.location.end_line = line;
                Ok(c)
            }
            Ok(Parsed::Stage(_)) => Err(err(TriggerError::From)),
            Err(e) => Err(err(e.into())),
        }
    }

    fn lower_instruction(
        &self,
        env: &mut StageEnv,
        inst: &Instruction,
        id: StepId,
        label: &str,
        name: String,
    ) -> Result<Step, BuildError> {
        let loc = Location {
            file: self.file.to_string(),
            line: inst.location.start_line,
            instruction: inst.original.trim().to_string(),
        };
        self.budget.next_instruction();
        let mut unresolved = Vec::new();
        let (op, created_by) = self
            .lower_op(env, inst, &mut unresolved)
            .map_err(|source| BuildError::step(&loc, source))?;
        if let Op::Config(change) = &op {
            env.config.apply(change);
        }
        if env.base_unknown {
            unresolved.sort_unstable();
            unresolved.dedup();
        } else {
            unresolved.clear();
        }
        Ok(Step {
            id,
            stage: label.to_string(),
            loc,
            name,
            created_by,
            op,
            unresolved,
        })
    }

    fn expand(&self, env: &StageEnv, word: &str) -> Result<String, StepError> {
        env.scope
            .expand(&self.lexer, &self.budget, word)
            .map_err(StepError::from)
    }

    fn expand_opt(&self, env: &StageEnv, word: Option<&str>) -> Result<Option<String>, StepError> {
        word.map(|w| self.expand(env, w)).transpose()
    }

    fn lower_op(
        &self,
        env: &mut StageEnv,
        inst: &Instruction,
        unresolved: &mut Vec<&'static str>,
    ) -> Result<(Op, String), StepError> {
        let config = |c: ConfigChange, created_by: String| Ok((Op::Config(c), created_by));
        match &inst.command {
            Command::Run(r) => self.lower_run(env, r, unresolved),
            Command::Env { vars } => {
                // Each pair sees the ones before it in the same instruction (kiln's behaviour
                // so far; BuildKit expands them all with the environment from before it).
                let mut pairs = Vec::with_capacity(vars.len());
                for kv in vars {
                    let key = self.expand(env, &kv.key)?;
                    let value = self.expand(env, &kv.value)?;
                    env.scope.assign_env(&key, &value);
                    pairs.push((key, value));
                }
                let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                config(ConfigChange::Env(pairs), format!("ENV {}", shown.join(" ")))
            }
            Command::Label { labels } => {
                let mut pairs = Vec::with_capacity(labels.len());
                for kv in labels {
                    pairs.push((self.expand(env, &kv.key)?, self.expand(env, &kv.value)?));
                }
                let shown: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                config(
                    ConfigChange::Label(pairs),
                    format!("LABEL {}", shown.join(" ")),
                )
            }
            Command::Maintainer { name } => config(
                ConfigChange::Maintainer(name.clone()),
                inst.original.trim().to_string(),
            ),
            Command::Arg { args } => {
                let mut shown = Vec::new();
                let mut values = Vec::with_capacity(args.len());
                for decl in args {
                    env.scope
                        .declare_arg(&self.lexer, &self.budget, decl, &self.graph.build_args)
                        .map_err(StepError::from)?;
                    match &decl.value {
                        Some(v) => shown.push(format!("{}={v}", decl.key)),
                        None => shown.push(decl.key.clone()),
                    }
                    // The value later steps see (a --build-arg, the default, or the global one):
                    // what makes two builds' ARG steps differ.
                    values.push((decl.key.clone(), env.scope.lookup(&decl.key)));
                }
                let created_by = format!("ARG {}", shown.join(" "));
                config(ConfigChange::Arg(values), created_by)
            }
            Command::Workdir { path } => {
                let path = self.expand(env, path)?;
                if !path.starts_with('/') && !env.workdir_set {
                    unresolved.push("workdir");
                }
                let wd = config::join_workdir(env.config.workdir_raw(), &path);
                env.config.set_workdir(&wd);
                env.workdir_set |= path.starts_with('/') || env.workdir_set;
                if !env.user_set {
                    unresolved.push("user");
                }
                let created_by = format!("WORKDIR {wd}");
                Ok((
                    Op::Mkdir(MkdirOp {
                        path: wd,
                        user: env.config.user().to_string(),
                    }),
                    created_by,
                ))
            }
            Command::User { user } => {
                let user = self.expand(env, user)?;
                env.user_set = true;
                config(ConfigChange::User(user.clone()), format!("USER {user}"))
            }
            Command::Expose { ports } => {
                let mut shown = Vec::new();
                for p in ports {
                    // BuildKit expands EXPOSE with word splitting: `$PORTS` may hold several.
                    let words = self
                        .lexer
                        .process_words_in(p, &env.scope, &self.budget)
                        .map_err(StepError::from)?;
                    for port in &words {
                        shown.push(config::normalize_port(port)?);
                    }
                }
                let created_by = format!("EXPOSE {}", shown.join(" "));
                config(ConfigChange::Expose(shown), created_by)
            }
            Command::Volume { volumes } => {
                let mut shown = Vec::new();
                for v in volumes {
                    let v = self.expand(env, v)?;
                    if v.trim().is_empty() {
                        return Err(StepError::Invalid(
                            "VOLUME specified can not be an empty string".into(),
                        ));
                    }
                    shown.push(v);
                }
                let created_by = format!("VOLUME [{}]", shown.join(" "));
                config(ConfigChange::Volume(shown), created_by)
            }
            Command::Stopsignal { signal } => {
                let signal = self.expand(env, signal)?;
                config::validate_signal(&signal)?;
                let created_by = format!("STOPSIGNAL {signal}");
                config(ConfigChange::StopSignal(signal), created_by)
            }
            Command::Cmd(cl) => {
                let cmd = self.command_words(env, cl, unresolved);
                let created_by = format!("CMD {}", go_string_slice(&cmd));
                config(ConfigChange::Cmd(cmd), created_by)
            }
            Command::Entrypoint(cl) => {
                let words = self.command_words(env, cl, unresolved);
                let created_by = format!("ENTRYPOINT {}", go_string_slice(&words));
                config(
                    ConfigChange::Entrypoint {
                        words,
                        clear_cmd: !env.config.cmd_set(),
                    },
                    created_by,
                )
            }
            Command::Shell { shell } => {
                env.shell_set = true;
                config(
                    ConfigChange::Shell(shell.clone()),
                    format!("SHELL {}", go_string_slice(shell)),
                )
            }
            Command::Healthcheck(h) => config(
                ConfigChange::Healthcheck(config::to_healthcheck(h)),
                inst.original.trim().to_string(),
            ),
            Command::Onbuild { expression } => config(
                ConfigChange::Onbuild(expression.clone()),
                format!("ONBUILD {expression}"),
            ),
            Command::Copy(c) => self.lower_copy(
                env,
                CopyFlags {
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
                unresolved,
            ),
            Command::Add(a) => self.lower_copy(
                env,
                CopyFlags {
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
                unresolved,
            ),
        }
    }

    /// Exec form as is; shell form wrapped in the stage's SHELL (default `/bin/sh -c`).
    fn command_words(
        &self,
        env: &StageEnv,
        cl: &CommandLine,
        unresolved: &mut Vec<&'static str>,
    ) -> Vec<String> {
        if !cl.prepend_shell {
            return cl.cmd_line.clone();
        }
        if !env.shell_set {
            unresolved.push("shell");
        }
        let mut words = env.config.shell();
        words.extend(cl.cmd_line.iter().cloned());
        words
    }

    /// A `--from` name: a stage by index or name (the last stage of that name), else an image.
    /// A stage must come earlier in build order: that is what the scheduler waits for.
    fn source_named(&self, from: &str) -> Result<Source, StepError> {
        let by_stage = match from.parse::<usize>() {
            Ok(i) => Some(i),
            Err(_) => self
                .df
                .stages
                .iter()
                .rposition(|s| s.name.as_deref() == Some(&from.to_lowercase())),
        };
        match by_stage {
            Some(index) if self.finals.contains_key(&index) => Ok(Source::Stage {
                index,
                name: self.df.stages.get(index).and_then(|s| s.name.clone()),
            }),
            Some(_) => Err(StepError::Source(format!(
                "stage {from:?} must be built before it is copied from"
            ))),
            None => Ok(Source::Image {
                reference: from.to_string(),
            }),
        }
    }

    /// COPY and ADD: expand what BuildKit expands (sources, destination, `--chown`, `--chmod`,
    /// `--checksum`; not `--from` or `--exclude`).
    fn lower_copy(
        &self,
        env: &StageEnv,
        flags: CopyFlags<'_>,
        unresolved: &mut Vec<&'static str>,
    ) -> Result<(Op, String), StepError> {
        let sources = flags
            .sources
            .source_paths
            .iter()
            .map(|w| self.expand(env, w))
            .collect::<Result<Vec<_>, _>>()?;
        let heredocs = self.heredoc_contents(env, &flags.sources.source_contents)?;
        let dest = self.expand(env, &flags.sources.dest)?;
        if !dest.starts_with('/') && !env.workdir_set {
            unresolved.push("workdir");
        }
        let keyword = if flags.add { "ADD" } else { "COPY" };
        let created_by = format!(
            "{keyword} {} {dest} # buildkit",
            show_sources(&sources, &heredocs)
        );
        let op = CopyOp {
            add: flags.add,
            from: flags.from.map(|f| self.source_named(f)).transpose()?,
            sources,
            heredocs,
            dest,
            workdir: env.config.workdir(),
            chown: self.expand_opt(env, flags.chown)?,
            chmod: self.expand_opt(env, flags.chmod)?,
            parents: flags.parents,
            exclude: flags.exclude.to_vec(),
            unpack: flags.unpack,
            checksum: self.expand_opt(env, flags.checksum)?,
        };
        Ok((Op::Copy(op), created_by))
    }

    /// Heredoc bodies, expanded unless the delimiter was quoted (quotes in the body are text).
    fn heredoc_contents(
        &self,
        env: &StageEnv,
        contents: &[instructions::SourceContent],
    ) -> Result<Vec<(String, String)>, StepError> {
        let lexer = Lexer {
            skip_process_quotes: true,
            ..self.lexer.clone()
        };
        contents
            .iter()
            .map(|c| {
                let data = if c.expand {
                    lexer
                        .process_word_in(&c.data, &env.scope, &self.budget)
                        .map_err(StepError::from)?
                } else {
                    c.data.clone()
                };
                Ok((c.path.clone(), data))
            })
            .collect()
    }

    fn lower_run(
        &self,
        env: &StageEnv,
        r: &RunCommand,
        unresolved: &mut Vec<&'static str>,
    ) -> Result<(Op, String), StepError> {
        let network = match r.network.as_deref() {
            None | Some("default") => None,
            Some(n @ ("none" | "host")) => Some(n.to_string()),
            Some(other) => {
                return Err(StepError::Invalid(format!(
                    "unsupported network mode {other:?}"
                )));
            }
        };
        // Mount specs are expanded like BuildKit's flags, then validated.
        let mut mounts = Vec::with_capacity(r.mounts.len());
        let mut mount_sources = BTreeMap::new();
        for m in &r.mounts {
            let raw = self.expand(env, &m.raw)?;
            let mut mount = parse_mount(&raw).map_err(StepError::from)?;
            if m.from.is_some() {
                mount.from = m.from.clone();
            }
            if let Some(from) = &mount.from {
                mount_sources.insert(from.clone(), self.source_named(from)?);
            }
            mounts.push(mount);
        }
        let (argv, script) = self.run_args(env, r, unresolved)?;
        unresolved.extend(
            ["env", "user", "workdir"]
                .iter()
                .copied()
                .filter(|f| match *f {
                    "user" => !env.user_set,
                    "workdir" => !env.workdir_set,
                    _ => true,
                }),
        );
        let created_by = format!("RUN {} # buildkit", argv.join(" "));
        let op = RunOp {
            argv,
            script,
            env: env.scope.vars(),
            user: env.config.user().to_string(),
            workdir: env.config.workdir(),
            mounts,
            mount_sources,
            network,
            security: r.security.clone().filter(|s| s != "sandbox"),
            devices: r.devices.clone(),
        };
        Ok((Op::Run(op), created_by))
    }

    /// The argv, as BuildKit forms it: exec form as is; shell form through SHELL; a RUN that is
    /// a single heredoc runs its body as the shell's command text, or — when the body starts
    /// with `#!` — as a script file mounted under /dev/pipes; other heredocs are put back
    /// into the command text for the shell to read.
    fn run_args(
        &self,
        env: &StageEnv,
        r: &RunCommand,
        unresolved: &mut Vec<&'static str>,
    ) -> Result<(Vec<String>, Option<Script>), StepError> {
        let cl = &r.command;
        let mut args = cl.cmd_line.clone();
        let mut prepend_shell = cl.prepend_shell;
        let mut script = None;
        if !cl.files.is_empty() {
            if args.len() != 1 || !prepend_shell {
                return Err(StepError::Invalid(format!(
                    "parsing produced an invalid run command: {args:?}"
                )));
            }
            let single = parse_heredoc(&args[0]).ok().flatten().is_some();
            if single {
                let file = &cl.files[0];
                let data = if file.chomp {
                    chomp_heredoc_content(&file.data)
                } else {
                    file.data.clone()
                };
                if data.starts_with("#!") {
                    args = vec![format!("{PIPES_DIR}/{}", file.name)];
                    script = Some(Script {
                        name: file.name.clone(),
                        body: data,
                    });
                    prepend_shell = false;
                } else {
                    args = vec![data];
                }
            } else {
                let mut full = args[0].clone();
                for f in &cl.files {
                    full.push('\n');
                    full.push_str(&f.data);
                    full.push_str(&f.name);
                }
                args = vec![full];
            }
        }
        if prepend_shell {
            if !env.shell_set {
                unresolved.push("shell");
            }
            let mut shell = env.config.shell();
            shell.extend(args);
            args = shell;
        }
        if args.is_empty() {
            return Err(StepError::Invalid("RUN has no command".into()));
        }
        Ok((args, script))
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

/// Go's `%q` of a `[]string`, as BuildKit writes CMD/ENTRYPOINT history.
fn go_string_slice(words: &[String]) -> String {
    let quoted: Vec<String> = words.iter().map(|w| go_quote(w)).collect();
    format!("[{}]", quoted.join(" "))
}

fn show_sources(sources: &[String], contents: &[(String, String)]) -> String {
    let mut all: Vec<String> = sources.to_vec();
    all.extend(contents.iter().map(|(name, _)| format!("<<{name}")));
    all.join(" ")
}

/// No base can be read: `kiln debug steps` for a base that is not in the store.
pub struct UnknownBases;

impl BaseConfigs for UnknownBases {
    fn config(&self, _reference: &str) -> Result<Option<ImageConfig>, BaseError> {
        Ok(None)
    }
}
