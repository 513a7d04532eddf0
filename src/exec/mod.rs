//! The rootless sandbox that runs a `RUN` step (design decisions 2 and 3).
//!
//! Two halves:
//!
//! * [`userns`] — once per `kiln` process, [`userns::ensure_userns`]: an unprivileged user
//!   re-executes itself inside a new user + mount namespace (a full subordinate-id map through
//!   `newuidmap`/`newgidmap` when `/etc/subuid` and `/etc/subgid` give a range, else a single-id
//!   map and one warning). Real root does nothing. After it, the process is root of its namespace
//!   and everything that touches snapshots (unpack, mounts, RUN, diff) runs there.
//! * [`sandbox`] — per command, [`sandbox::run`]: a child in new mount, pid, ipc and uts
//!   namespaces (and an empty network namespace with loopback up for [`Network::None`]) mounts an
//!   overlay of the snapshots (or binds a plain directory), `/proc`, a minimal `/dev`, read-only
//!   `/etc/hosts`, `/etc/resolv.conf` and `/etc/hostname`, pivots into it, takes the requested
//!   ids and execs the command. The command is pid 1 of its namespace, so the whole process tree
//!   dies with it; every mount lives in the child's mount namespace, so none is left behind.
//!
//! The module knows nothing of OCI formats: it takes directories and argv/env, and reports an exit
//! status, the mount-point stubs it had to create, and the last lines of output.

pub mod mount;
pub mod sandbox;
mod sys;
pub mod userns;

pub use sandbox::{
    ExtraMount, Killer, Network, RootfsSpec, RunReport, RunSpec, Running, run, spawn,
};
pub use userns::{UsernsState, ensure_userns};

/// How the command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal number (e.g. 9 for SIGKILL).
    Signal(i32),
}

impl ExitStatus {
    /// `true` for `Code(0)`.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit code {c}"),
            ExitStatus::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

/// Errors of the sandbox; each says what failed, with the system call and path where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// The [`RunSpec`] cannot be run as given.
    #[error("invalid run spec: {0}")]
    InvalidSpec(String),
    /// A system call (or file operation) made by the calling process failed.
    #[error("{what}: {source}")]
    Sys {
        /// The call and its object, e.g. `create directory /tmp/kiln-run-x/root`.
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// Setting up the sandbox failed inside the child, before the command started.
    #[error("sandbox setup: {what}: {source}{}", detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Setup {
        /// The step, with its system call and path, e.g. `mount overlay at /tmp/kiln-run-x/root`.
        what: String,
        /// Extra words from the kernel (the fs-context log of the new mount API), if any.
        detail: Option<String>,
        #[source]
        source: std::io::Error,
    },
    /// The command could not be started (not found in the container's `PATH`, not executable…).
    #[error("exec {program:?}: {reason}")]
    Exec {
        program: String,
        reason: String,
        /// The program does not exist (ENOENT): shells and `docker run` exit 127 for this and
        /// 126 for a program that exists but cannot be executed.
        not_found: bool,
    },
    /// Entering or mapping the user namespace failed.
    #[error("user namespace: {0}")]
    Userns(String),
    /// `run` needs root in the current user namespace.
    #[error(
        "the sandbox needs root in its user namespace (effective uid is {0}): call exec::ensure_userns() at startup"
    )]
    NotRoot(u32),
    /// Writing the command's output to the caller's writer failed (the command was killed).
    #[error("writing the command's output: {0}")]
    Output(#[source] std::io::Error),
}

impl ExecError {
    /// The exit status a shell gives a command that could not be started: 127 when it was not
    /// found, 126 when it could not be executed. `None` for errors of kiln's own set-up.
    pub fn exec_exit_code(&self) -> Option<u8> {
        match self {
            ExecError::Exec { not_found, .. } => Some(if *not_found { 127 } else { 126 }),
            _ => None,
        }
    }

    pub(crate) fn sys(what: impl Into<String>, source: std::io::Error) -> Self {
        ExecError::Sys {
            what: what.into(),
            source,
        }
    }
}
