//! RUN: the command as BuildKit forms it (shell or exec form, heredocs), the environment and
//! user it runs with, its mounts, the sandbox run on the stage's snapshots, and the layer made
//! from what it changed.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use super::StepError;
use super::copy::{ExecUser, resolve_exec_user};
use super::mounts::{self, MountContext};
use super::scheduler::{Apply, Shared, StageState, StepResult};
use super::step::{PIPES_DIR, RunOp, Step};
use crate::exec::{ExitStatus, ExtraMount, Network, RunSpec, sandbox};
use crate::layer::DiffOptions;
use crate::progress::{Event, Progress};

impl Shared<'_> {
    /// Runs one RUN step; its layer is `None` when the command changed nothing.
    pub(super) fn run(
        &self,
        state: &mut StageState,
        step: &Step,
        r: &RunOp,
    ) -> Result<StepResult, StepError> {
        if let Some(sec) = &r.security {
            return Err(StepError::Invalid(format!(
                "RUN --security={sec} needs an entitlement kiln does not grant (steps always run sandboxed)"
            )));
        }
        if !r.devices.is_empty() {
            return Err(StepError::Invalid(
                "RUN --device is not supported by kiln".into(),
            ));
        }
        let network = match r.network.as_deref() {
            Some("none") => Network::None,
            Some("host") => Network::Host,
            _ => self.opts.network,
        };
        let mut from_roots: BTreeMap<String, PathBuf> = BTreeMap::new();
        for (name, source) in &r.mount_sources {
            from_roots.insert(name.clone(), self.source_root(source)?);
        }

        let scratch = crate::lease::tempdir_in(self.store.root(), self.store.tmp_dir(), "run-")
            .map_err(|source| StepError::Io {
                what: format!(
                    "creating a temporary directory in {}",
                    self.store.tmp_dir().display()
                ),
                source,
            })?;
        let script_mount = match &r.script {
            Some(script) => {
                let dir = scratch.path().join("pipes");
                let path = dir.join(&script.name);
                let write = || -> std::io::Result<()> {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::create_dir(&dir)?;
                    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
                    std::fs::write(&path, &script.body)?;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                };
                write().map_err(|source| StepError::Io {
                    what: "writing the heredoc script".into(),
                    source,
                })?;
                Some(ExtraMount::Bind {
                    src: dir,
                    dst: PIPES_DIR.into(),
                    readonly: true,
                })
            }
            None => None,
        };

        let mut user: ExecUser = resolve_exec_user(&r.user, self.fss.root(&state.fs)?)?;
        if self.opts.single_id {
            if user.uid != 0 || user.gid != 0 {
                return Err(StepError::Invalid(format!(
                    "USER {} (uid {}, gid {}) cannot run here: this rootless build has a \
                     single-id user namespace where only root exists; give your user subordinate \
                     ids in /etc/subuid and /etc/subgid (usermod --add-subuids/--add-subgids)",
                    r.user, user.uid, user.gid
                )));
            }
            // setgroups is denied in a single-id namespace.
            user.groups.clear();
        }

        let cache_root = self.store.root().join("cache-mounts");
        let mount_cx = MountContext {
            scratch: scratch.path(),
            cache_root: &cache_root,
            context: &self.opts.context,
            filter: self.filter,
            secrets: &self.opts.secrets,
            workdir: &r.workdir,
            single_id: self.opts.single_id,
        };
        let mut prepared = mounts::prepare(&r.mounts, &mount_cx, &from_roots)?;

        let mut env = r.env.clone();
        env.extend(crate::plan::proxy_env(&r.env, self.build_args));
        if !env.iter().any(|(k, _)| k == "HOME") {
            env.push(("HOME".into(), user.home_or_default()));
        }
        for (k, v) in &prepared.env {
            env.retain(|(ek, _)| ek != k);
            env.push((k.clone(), v.clone()));
        }

        let mut root = self.fss.prepare(&state.fs)?;
        self.report_fs_warnings();
        let mut spec = RunSpec::new(root.rootfs.clone(), r.argv.clone());
        spec.scratch_dir = Some(scratch.path().to_path_buf());
        spec.env = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        spec.cwd = r.workdir.clone();
        spec.uid = user.uid;
        spec.gid = user.gid;
        spec.groups = user.groups.clone();
        spec.network = network;
        spec.mounts = prepared.mounts.clone();
        if let Some(m) = script_mount {
            spec.mounts.push(m);
        }

        let report = {
            let sink = RefCell::new(LineSink {
                progress: self.progress,
                id: step.id.number,
                pending: [Vec::new(), Vec::new()],
            });
            let report = sandbox::spawn(&spec).and_then(|running| {
                // Registered so a failure in another stage can kill it (and its pid namespace).
                let _kill_on_cancel = self.running(step.id.number, running.killer());
                running.wait(SinkHalf(&sink, 0), SinkHalf(&sink, 1))
            });
            sink.borrow_mut().finish();
            report
        };
        let report = report.map_err(|e| {
            // A heredoc script that exists but cannot start names its `#!` line, not the file.
            match (&e, &r.script) {
                (crate::exec::ExecError::Exec { .. }, Some(script)) => StepError::Interpreter {
                    shebang: script.body.lines().next().unwrap_or_default().to_string(),
                    source: e,
                },
                _ => StepError::Start(e),
            }
        })?;
        let skip_paths = std::mem::take(&mut prepared.skip);
        drop(prepared);
        if report.status != ExitStatus::Code(0) {
            let how = match report.status {
                ExitStatus::Code(c) => format!("exit code: {c}"),
                ExitStatus::Signal(s) => format!("killed by signal {s}"),
            };
            return Err(StepError::Failed {
                argv: r.argv.join(" "),
                how,
                tail: report.tail.clone(),
            });
        }

        let skip = DiffOptions {
            skip: skip_paths,
            skip_contents: Vec::new(),
        };
        let started = Instant::now();
        let entries = self.fss.changes(&mut root, &report, skip)?;
        let diff_seconds = Some(started.elapsed().as_secs_f64());
        let result = self.commit_layer(state, entries, &step.created_by, Apply::Adopt(root))?;
        drop(scratch);
        Ok(StepResult {
            diff_seconds,
            ..result
        })
    }
}

/// Turns the command's output into `StepLog` lines, one per line, as it arrives.
struct LineSink<'p> {
    progress: &'p dyn Progress,
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
