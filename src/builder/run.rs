//! RUN: the command as BuildKit forms it (shell or exec form, heredocs), the environment and
//! user it runs with, its mounts, the sandbox run on the stage's snapshots, and the layer made
//! from what it changed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use super::copy::{ExecUser, resolve_exec_user};
use super::mounts::{self, MountContext};
use super::{BuildError, Builder, StageState, shell_of, workdir};
use crate::dockerfile::instructions::{Instruction, Mount, RunCommand, parse_mount};
use crate::dockerfile::parser::{chomp_heredoc_content, parse_heredoc};
use crate::exec::{ExitStatus, ExtraMount, Network, RunSpec, sandbox};
use crate::image::Descriptor;
use crate::layer::DiffOptions;
use crate::progress::{Event, Progress};

/// Where BuildKit puts a heredoc that starts with `#!`, to run it as a script file.
const PIPES_DIR: &str = "/dev/pipes";

impl Builder<'_> {
    /// Runs one RUN step and returns its layer (`None` when the command changed nothing).
    pub(super) fn run(
        &mut self,
        state: &mut StageState,
        inst: &Instruction,
        r: &RunCommand,
    ) -> Result<Option<Descriptor>, BuildError> {
        if let Some(sec) = r.security.as_deref().filter(|s| *s != "sandbox") {
            return Err(self.step_error(
                inst,
                format!(
                    "RUN --security={sec} needs an entitlement kiln does not grant (steps always run sandboxed)"
                ),
            ));
        }
        if !r.devices.is_empty() {
            return Err(self.step_error(inst, "RUN --device is not supported by kiln"));
        }
        let network = match r.network.as_deref() {
            None | Some("default") => self.opts.network,
            Some("none") => Network::None,
            Some("host") => Network::Host,
            Some(other) => {
                return Err(self.step_error(inst, format!("unsupported network mode {other:?}")));
            }
        };

        // Mount specs are expanded like BuildKit's flags, then validated.
        let mut specs: Vec<Mount> = Vec::new();
        for m in &r.mounts {
            let raw = self.expand(state, inst, &m.raw)?;
            let mut mount = parse_mount(&raw).map_err(|e| self.step_error(inst, e.to_string()))?;
            if m.from.is_some() {
                mount.from = m.from.clone();
            }
            specs.push(mount);
        }
        let mut from_roots: BTreeMap<String, PathBuf> = BTreeMap::new();
        for m in &specs {
            if let Some(from) = &m.from
                && !from_roots.contains_key(from)
            {
                let root = self.copy_from_root(inst, from)?;
                from_roots.insert(from.clone(), root);
            }
        }

        let scratch = crate::lease::tempdir_in(self.store.root(), self.store.tmp_dir(), "run-")
            .map_err(|e| BuildError::Context {
                path: self.store.tmp_dir().to_path_buf(),
                message: format!("creating a temporary directory: {e}"),
            })?;
        let (args, script_mount) = self.run_args(state, inst, r, scratch.path())?;

        let user_spec = state
            .config
            .config
            .as_ref()
            .map(|c| c.user.clone())
            .unwrap_or_default();
        let mut user: ExecUser = resolve_exec_user(&user_spec, state.fs.root())
            .map_err(|e| self.step_error(inst, e.to_string()))?;
        if self.opts.single_id {
            if user.uid != 0 || user.gid != 0 {
                return Err(self.step_error(
                    inst,
                    format!(
                        "USER {user_spec} (uid {}, gid {}) cannot run here: this rootless build has a \
                         single-id user namespace where only root exists; give your user subordinate \
                         ids in /etc/subuid and /etc/subgid (usermod --add-subuids/--add-subgids)",
                        user.uid, user.gid
                    ),
                ));
            }
            // setgroups is denied in a single-id namespace.
            user.groups.clear();
        }
        let wd = workdir(state);

        let cache_root = self.store.root().join("cache-mounts");
        let mount_cx = MountContext {
            scratch: scratch.path(),
            cache_root: &cache_root,
            context: &self.opts.context,
            filter: &self.filter,
            secrets: &self.opts.secrets,
            workdir: &wd,
            single_id: self.opts.single_id,
        };
        let mut from_root = |name: &str| -> Result<PathBuf, String> {
            from_roots
                .get(name)
                .cloned()
                .ok_or_else(|| format!("{name}: not a stage or image of this build"))
        };
        let mut prepared = mounts::prepare(&specs, &mount_cx, &mut from_root)
            .map_err(|e| self.step_error(inst, e.to_string()))?;

        let mut env: Vec<(String, String)> = state.scope.run_env(&self.graph.build_args);
        if !env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), user.home_or_default()));
        }
        for (k, v) in &prepared.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }

        let root = self.fss.run_root(&state.fs)?;
        let mut spec = RunSpec::new(root.rootfs.clone(), args.clone());
        spec.scratch_dir = Some(scratch.path().to_path_buf());
        spec.env = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        spec.cwd = wd.clone();
        spec.uid = user.uid;
        spec.gid = user.gid;
        spec.groups = user.groups.clone();
        spec.network = network;
        spec.mounts = prepared.mounts.clone();
        if let Some(m) = script_mount {
            spec.mounts.push(m);
        }

        let id = self.current_step;
        let report = {
            let sink = RefCell::new(LineSink {
                progress: &mut *self.progress,
                id,
                pending: [Vec::new(), Vec::new()],
            });
            let report = sandbox::run(&spec, SinkHalf(&sink, 0), SinkHalf(&sink, 1));
            sink.borrow_mut().finish();
            report
        };
        let report = report.map_err(|e| {
            // A heredoc script that exists but cannot start names its `#!` line, not the file.
            let shebang = match (&e, args[0].strip_prefix(PIPES_DIR)) {
                (crate::exec::ExecError::Exec { .. }, Some(_)) => r
                    .command
                    .files
                    .first()
                    .and_then(|f| f.data.lines().next())
                    .map(|l| format!(" (is the interpreter of `{l}` in the image?)")),
                _ => None,
            };
            self.step_error(
                inst,
                format!("running the step: {e}{}", shebang.unwrap_or_default()),
            )
        })?;
        let skip_paths = std::mem::take(&mut prepared.skip);
        drop(prepared);
        let shown = args.join(" ");
        if report.status != ExitStatus::Code(0) {
            let how = match report.status {
                ExitStatus::Code(c) => format!("exit code: {c}"),
                ExitStatus::Signal(s) => format!("killed by signal {s}"),
            };
            let mut msg = format!("process {shown:?} did not complete successfully: {how}");
            if !report.tail.is_empty() {
                msg.push_str("\n--- last lines of its output ---\n");
                msg.push_str(&report.tail.join("\n"));
            }
            return Err(self.step_error(inst, msg));
        }

        let skip = DiffOptions {
            skip: skip_paths,
            skip_contents: Vec::new(),
        };
        let mut changes = self.fss.changes(&state.fs, root, &report, skip)?;
        self.step_extra.diff_seconds = Some(changes.diff_seconds);
        let created_by = format!("RUN {shown} # buildkit");
        if changes.entries.is_empty() {
            self.fss.commit_run(&mut state.fs, changes, None)?;
            self.history(state, created_by, true);
            return Ok(None);
        }
        let started = Instant::now();
        let entries = std::mem::take(&mut changes.entries);
        let (written, desc) = self.store.put_layer(entries, &self.write_options())?;
        self.step_extra.layer_seconds = Some(started.elapsed().as_secs_f64());
        self.fss
            .commit_run(&mut state.fs, changes, Some(&written.diff_id))?;
        self.record_layer(state, written.diff_id, &desc, created_by);
        drop(scratch);
        Ok(Some(desc))
    }

    /// The argv, as BuildKit forms it: exec form as is; shell form through SHELL; a RUN that is
    /// a single heredoc runs its body as the shell's command text, or — when the body starts
    /// with `#!` — as a script file mounted under /dev/pipes; other heredocs are put back
    /// into the command text for the shell to read.
    fn run_args(
        &self,
        state: &StageState,
        inst: &Instruction,
        r: &RunCommand,
        scratch: &std::path::Path,
    ) -> Result<(Vec<String>, Option<ExtraMount>), BuildError> {
        let cl = &r.command;
        let mut args = cl.cmd_line.clone();
        let mut prepend_shell = cl.prepend_shell;
        let mut script = None;
        if !cl.files.is_empty() {
            if args.len() != 1 || !prepend_shell {
                return Err(self.step_error(
                    inst,
                    format!("parsing produced an invalid run command: {args:?}"),
                ));
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
                    let dir = scratch.join("pipes");
                    let path = dir.join(&file.name);
                    let write = || -> std::io::Result<()> {
                        use std::os::unix::fs::PermissionsExt;
                        std::fs::create_dir(&dir)?;
                        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
                        std::fs::write(&path, &data)?;
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    };
                    write().map_err(|e| {
                        self.step_error(inst, format!("writing the heredoc script: {e}"))
                    })?;
                    script = Some(ExtraMount::Bind {
                        src: dir,
                        dst: PIPES_DIR.into(),
                        readonly: true,
                    });
                    args = vec![format!("{PIPES_DIR}/{}", file.name)];
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
            let mut shell = shell_of(&state.config);
            shell.extend(args);
            args = shell;
        }
        if args.is_empty() {
            return Err(self.step_error(inst, "RUN has no command"));
        }
        Ok((args, script))
    }
}

/// Turns the command's output into `StepLog` lines, one per line, as it arrives.
struct LineSink<'p> {
    progress: &'p mut dyn Progress,
    id: usize,
    pending: [Vec<u8>; 2],
}

impl LineSink<'_> {
    fn push(&mut self, stream: usize, data: &[u8]) {
        let buf = &mut self.pending[stream];
        buf.extend_from_slice(data);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..line.len() - 1]).into_owned();
            self.progress.event(&Event::StepLog { id: self.id, line });
        }
    }

    fn finish(&mut self) {
        for stream in 0..2 {
            let rest = std::mem::take(&mut self.pending[stream]);
            if !rest.is_empty() {
                let line = String::from_utf8_lossy(&rest).into_owned();
                self.progress.event(&Event::StepLog { id: self.id, line });
            }
        }
    }
}

struct SinkHalf<'s, 'p>(&'s RefCell<LineSink<'p>>, usize);

impl Write for SinkHalf<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().push(self.1, buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
