//! `kiln run`: an image's entrypoint and command (or the command given) in the same sandbox a
//! RUN step uses, on the image's snapshots, so a user without a daemon can try what they built.
//! The run's writes land in a throwaway upper directory: nothing is kept (as `docker run --rm`).

use crate::exec::{ExecError, ExitStatus, Network, RunSpec, sandbox};
use crate::image::Store;

use super::BuildError;
use super::copy::{UserError, resolve_exec_user};
use crate::snapshot::Snapshotter;

/// What `kiln run` runs.
#[derive(Debug, Clone)]
pub struct RunImageOptions {
    /// The image: a name or a digest in the store.
    pub image: String,
    /// Replaces the image's CMD when not empty (the ENTRYPOINT stays), as `docker run`.
    pub command: Vec<String>,
    pub network: Network,
    /// A single-id user namespace: only root can run.
    pub single_id: bool,
}

/// Why `kiln run` could not run the image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunImageError {
    #[error(
        "{image}: the image has no ENTRYPOINT or CMD; give a command: kiln run {image} COMMAND…"
    )]
    NoCommand { image: String },
    /// The image's USER is not in its account files.
    #[error(transparent)]
    User(#[from] UserError),
    #[error(
        "USER {user} (uid {uid}) cannot run in a single-id user namespace (only root is mapped): \
         give your user subordinate ids in /etc/subuid and /etc/subgid"
    )]
    SingleId { user: String, uid: u32 },
    /// The sandbox failed (other than a command that could not be started).
    #[error(transparent)]
    Sandbox(ExecError),
}

fn err(e: impl Into<RunImageError>) -> BuildError {
    BuildError::Run(e.into())
}

/// Runs the command to its end with stdout and stderr passed through; returns how it ended.
pub fn run_image(store: &Store, opts: &RunImageOptions) -> Result<ExitStatus, BuildError> {
    let img = store.resolve(&opts.image)?;
    let fss = Snapshotter::new(store, opts.single_id)?;
    let fs = fss.view(img.layers(), &img.config.rootfs.diff_ids)?;
    for (_, w) in fss.take_warnings() {
        eprintln!("kiln: warning: {w}");
    }

    let cc = img.config.config.clone().unwrap_or_default();
    let mut args = cc.entrypoint.clone();
    if opts.command.is_empty() {
        args.extend(cc.cmd.iter().cloned());
    } else {
        args.extend(opts.command.iter().cloned());
    }
    if args.is_empty() {
        return Err(err(RunImageError::NoCommand {
            image: opts.image.clone(),
        }));
    }
    let user = resolve_exec_user(&cc.user, fss.root(&fs)?).map_err(err)?;
    if opts.single_id && (user.uid != 0 || user.gid != 0) {
        return Err(err(RunImageError::SingleId {
            user: cc.user.clone(),
            uid: user.uid,
        }));
    }
    let mut env = cc.env.clone();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, format!("PATH={}", super::DEFAULT_PATH));
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        env.push(format!("HOME={}", user.home_or_default()));
    }

    let root = fss.prepare(&fs)?;
    // The copy snapshotter applies the layers when the view is first read.
    for (_, w) in fss.take_warnings() {
        eprintln!("kiln: warning: {w}");
    }
    let scratch = fss.tmpdir("run-")?;
    let mut spec = RunSpec::new(root.rootfs.clone(), args);
    spec.scratch_dir = Some(scratch.path().to_path_buf());
    spec.env = env;
    spec.cwd = if cc.working_dir.is_empty() {
        "/".into()
    } else {
        cc.working_dir.clone()
    };
    spec.uid = user.uid;
    spec.gid = user.gid;
    if !opts.single_id {
        spec.groups = user.groups;
    }
    spec.network = opts.network;
    let report = sandbox::run(&spec, std::io::stdout(), std::io::stderr()).map_err(|e| match e
        .exec_exit_code()
    {
        Some(exit_code) => BuildError::CommandNotStarted {
            exit_code,
            source: e,
        },
        None => err(RunImageError::Sandbox(e)),
    })?;
    // The upper directory goes with `root`: nothing the command wrote is kept.
    drop(root);
    Ok(report.status)
}
