//! One command in a fresh sandbox: [`run`] (or [`spawn`] + [`Running::wait`]).
//!
//! # How a run goes
//!
//! The caller (root, or root of a user namespace after [`super::ensure_userns`]) describes the
//! run in a [`RunSpec`]. [`spawn`] turns it into a list of steps with every path, string and
//! pointer prepared, then makes the child with `clone3(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC |
//! CLONE_NEWUTS [| CLONE_NEWNET])`: the child is pid 1 of a new pid namespace from birth. The
//! child only makes system calls on the prepared data (it must not allocate: the caller may be
//! multi-threaded) and, in order:
//!
//! 1. wires stdin to `/dev/null` and stdout/stderr to pipes, marks every other descriptor
//!    close-on-exec, resets signals, starts a new session, dies with its parent (`PDEATHSIG`);
//! 2. brings `lo` up (new network namespace only), sets the hostname, makes `/` private
//!    recursively so nothing propagates back to the caller's namespace;
//! 3. mounts the root: an overlay (`lowerdir+` per layer through the new mount API, falling back
//!    to `mount(2)` on kernels before 6.8; `userxattr` inside a user namespace; as real root
//!    `redirect_dir=nofollow,index=off,metacopy=off` so every change is in the upperdir) on a
//!    private mount point, or a recursive bind of [`RootfsSpec::Dir`] onto itself;
//! 4. clones the host sources it will need later as detached mounts (`open_tree`): `/dev/null`,
//!    `zero`, `full`, `random`, `urandom`, `tty`, the hosts/resolv.conf/hostname files and the
//!    caller's bind mounts; and makes a `proc` mount for the new pid namespace (`fsmount`, before
//!    the host's `/proc` leaves the namespace, which the kernel requires inside a user namespace);
//! 5. `pivot_root(".", ".")` into the root and detaches the old one: from here every path
//!    resolves inside the rootfs, so symlinks in the image cannot point mount points at the host;
//! 6. attaches `/proc` (with Docker's masked and read-only paths: `/proc/sys`, `/proc/kcore`…),
//!    a tmpfs `/dev` with the device binds, `/dev/pts` (`newinstance,ptmxmode=0666`), `/dev/shm`,
//!    the `fd`/`stdin`/`stdout`/`stderr` links, read-only `/etc/hosts`, `/etc/resolv.conf`,
//!    `/etc/hostname`, then the caller's mounts;
//! 7. creates the working directory if missing (it stays: BuildKit creates WORKDIR too), trims
//!    capabilities to Docker's default set, sets groups, gid and uid, `chdir`s, and `execve`s
//!    `args[0]` looked up in the `PATH` of the *container's* environment.
//!
//! Failures before `execve` come back through a close-on-exec pipe as (step, errno) and become
//! [`ExecError::Setup`] / [`ExecError::Exec`]; a successful `execve` closes the pipe.
//!
//! # Mount-point stubs
//!
//! A mount needs a mount point. When the rootfs lacks one (`/proc`, `/dev`, `/etc/hosts`, a
//! `RUN --mount` target…), the child creates it — an empty directory, or an empty regular file
//! with mode 0644 — and reports it. With an overlay root the stub lands in the upperdir (with a
//! directory root, in the directory). [`RunReport::stubs`] lists each created path, relative to
//! the rootfs, parents before children. Before diffing the upperdir the caller calls
//! [`RunReport::remove_stubs`], which removes them in reverse order: a file stub always (it was
//! covered by a read-only mount, so the command could not have changed it), a directory stub
//! only if it is empty (the command may have put files in a stub parent such as `/etc`). No
//! whiteout is needed, since a stub only exists where the lower layers had nothing. It also puts
//! back the mtime of each stub's parent (with an overlay, making the stub copied the parent up;
//! with its mtime restored the copy equals the lower directory and the differ leaves it out,
//! unless the command changed that directory too). Existing
//! paths are never reported, and the mounts themselves (`/proc`, `/dev`, the binds) never reach
//! the upperdir. (`layer::DiffOptions::skip` can additionally drop the bind targets by path.)
//!
//! # Processes and mounts left behind
//!
//! None. The command is pid 1 of its pid namespace: when it exits the kernel kills everything
//! else in the namespace, and [`Running::wait`] returns only after it is reaped. The child dies
//! with the thread that spawned it (`PR_SET_PDEATHSIG`), and dropping a [`Running`] kills and
//! reaps it. All mounts are made in the child's own mount namespace, which disappears with it.
//!
//! Being pid 1, the command ignores signals it has no handler for, except SIGKILL from outside:
//! [`Killer::kill`] sends that.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::libc;
use rustix::fs::{CWD, Mode, OFlags, StatVfsMountFlags};
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags, MoveMountFlags,
    OpenTreeFlags, UnmountFlags,
};
use rustix::process::{Gid, Signal, Uid, WaitId, WaitIdOptions};
use rustix::thread::{CapabilitySet, CapabilitySets};

use super::sys::{self, Forked};
use super::{ExecError, ExitStatus};

/// How many lines of output [`RunReport::tail`] keeps.
pub const TAIL_LINES: usize = 20;

/// `PATH` used to look the command up when the environment has none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The root filesystem of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootfsSpec {
    /// An overlay: read-only `lowerdirs` (top layer first; empty means an empty base, as `FROM
    /// scratch`), writable `upperdir` (after the run it holds exactly the changes, with
    /// overlay-native whiteouts), and `workdir` (an empty directory on the same filesystem as
    /// `upperdir`). Inside a user namespace the mount uses `userxattr`, so opaque directories
    /// carry `user.overlay.opaque` instead of `trusted.overlay.opaque`.
    Overlay {
        lowerdirs: Vec<PathBuf>,
        upperdir: PathBuf,
        workdir: PathBuf,
    },
    /// Run directly in this directory (the copy-based fallback): changes are made in place.
    Dir(PathBuf),
}

/// The network the command sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// The caller's network namespace (Docker's `--network host`, BuildKit's default for RUN).
    #[default]
    Host,
    /// A new, empty network namespace with only loopback, up.
    None,
}

/// An extra mount inside the rootfs, applied after the standard ones (so it may cover them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtraMount {
    /// Bind a host file or directory (recursively) at `dst`, an absolute container path.
    /// `readonly` applies to the bind itself; mounts nested under a bound directory keep their
    /// own flags.
    Bind {
        src: PathBuf,
        dst: String,
        readonly: bool,
    },
    /// A fresh tmpfs (mode 1777) at `dst`, optionally limited to `size` bytes.
    Tmpfs { dst: String, size: Option<u64> },
}

/// Everything one command run needs. Build it with [`RunSpec::new`] and set the fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSpec {
    /// The root filesystem.
    pub rootfs: RootfsSpec,
    /// The command; `args[0]` is looked up in the `PATH` of `env` unless it contains a `/`.
    pub args: Vec<String>,
    /// The environment, `KEY=value` each, passed as is (nothing is added: the caller supplies
    /// `PATH`, `HOME`…; [`DEFAULT_PATH`] is only used to find the command when `PATH` is absent).
    pub env: Vec<String>,
    /// Working directory, an absolute container path; created (mode 0755, owned by root) if
    /// missing.
    pub cwd: String,
    /// User id the command runs as (an id inside the user namespace, i.e. an image id).
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups (empty: none).
    pub groups: Vec<u32>,
    /// Network namespace.
    pub network: Network,
    /// Hostname of the new UTS namespace; also bound read-only at `/etc/hostname`.
    pub hostname: String,
    /// Extra mounts (`RUN --mount` and the like), in order.
    pub mounts: Vec<ExtraMount>,
    /// Host file bound read-only at `/etc/hosts`; `None`: a generated one
    /// (`127.0.0.1 localhost <hostname>` and the IPv6 loopback names).
    pub hosts: Option<PathBuf>,
    /// Host file bound read-only at `/etc/resolv.conf`; `None`: the host's `/etc/resolv.conf`
    /// (an empty file if the host has none).
    pub resolv_conf: Option<PathBuf>,
    /// Where the sandbox makes its own few files (the root's mount point, the generated
    /// `/etc/hosts` and `/etc/hostname`), in a new directory removed when the run ends. kiln
    /// passes a directory of its store, so a killed run leaves nothing outside the store;
    /// `None`: the system's temp directory.
    pub scratch_dir: Option<PathBuf>,
}

impl RunSpec {
    /// A spec with defaults: empty environment, cwd `/`, root (0:0, no groups), host network,
    /// hostname `kiln`, no extra mounts, generated `/etc/hosts`, the host's `/etc/resolv.conf`.
    pub fn new(rootfs: RootfsSpec, args: Vec<String>) -> Self {
        RunSpec {
            rootfs,
            args,
            env: Vec::new(),
            cwd: "/".to_string(),
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            network: Network::Host,
            hostname: "kiln".to_string(),
            mounts: Vec::new(),
            hosts: None,
            resolv_conf: None,
            scratch_dir: None,
        }
    }
}

/// What a finished run reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunReport {
    /// How the command ended.
    pub status: ExitStatus,
    /// Mount-point stubs created in the rootfs, relative paths, parents first (see the module
    /// docs: remove them, in reverse order, before diffing).
    pub stubs: Vec<PathBuf>,
    /// The last [`TAIL_LINES`] lines of stdout and stderr, interleaved as they arrived (lossy
    /// UTF-8, long lines cut at 4 KiB), for error messages.
    pub tail: Vec<String>,
    /// For each stub, its parent directory's mtime before and after the stub was made.
    stub_times: Vec<Option<StubTimes>>,
}

/// A stub's parent directory mtime (seconds, nanoseconds) just before and just after the child
/// created the stub, so [`RunReport::remove_stubs`] can undo the change: with an overlay the
/// parent was copied up for the stub, and once its mtime is back it equals the lower one and the
/// differ leaves it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct StubTimes {
    before: (i64, i64),
    after: (i64, i64),
}

impl RunReport {
    /// Removes the stubs from `root` — the upperdir of an overlay run, or the directory of a
    /// [`RootfsSpec::Dir`] run — before it is diffed: in reverse order, each empty regular file,
    /// and each directory that is empty (a stub parent such as `/etc` keeps what the command put
    /// in it). Stubs already gone are fine. No whiteout is needed: a stub only exists where the
    /// lower layers had nothing.
    pub fn remove_stubs(&self, root: &Path) -> Result<(), ExecError> {
        use std::os::unix::fs::MetadataExt;
        let mtime = |p: &Path| {
            std::fs::symlink_metadata(p)
                .ok()
                .map(|m| (m.mtime(), m.mtime_nsec()))
        };
        for (i, stub) in self.stubs.iter().enumerate().rev() {
            let p = root.join(stub);
            let m = match std::fs::symlink_metadata(&p) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ExecError::sys(format!("stat stub {}", p.display()), e)),
            };
            let parent = p.parent().unwrap_or(root).to_path_buf();
            let parent_mtime = mtime(&parent);
            let removed = if m.is_dir() {
                match std::fs::remove_dir(&p) {
                    Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => Ok(false),
                    r => r.map(|()| true),
                }
            } else if m.is_file() && m.len() == 0 {
                std::fs::remove_file(&p).map(|()| true)
            } else {
                Ok(false)
            };
            let removed =
                removed.map_err(|e| ExecError::sys(format!("remove stub {}", p.display()), e))?;
            // Put the parent's mtime back: as before the stub if nothing else touched the
            // directory since, else as it was before this removal.
            let Some(now) = parent_mtime.filter(|_| removed) else {
                continue;
            };
            let times = self.stub_times.get(i).copied().flatten();
            let (sec, nsec) = match times {
                Some(t) if t.after == now => t.before,
                _ => now,
            };
            let ts = rustix::fs::Timestamps {
                last_access: rustix::fs::Timespec {
                    tv_sec: 0,
                    tv_nsec: rustix::fs::UTIME_OMIT,
                },
                last_modification: rustix::fs::Timespec {
                    tv_sec: sec,
                    tv_nsec: nsec as _,
                },
            };
            rustix::fs::utimensat(CWD, &parent, &ts, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                .map_err(|e| {
                    ExecError::sys(
                        format!("restore the mtime of {}", parent.display()),
                        e.into(),
                    )
                })?;
        }
        Ok(())
    }
}

/// Sends SIGKILL to a running command (the one signal pid 1 cannot ignore); cheap to clone and
/// safe to use from another thread, before or after the command ends.
#[derive(Debug, Clone)]
pub struct Killer(Arc<OwnedFd>);

impl Killer {
    /// Kills the command (and with it its whole pid namespace). A command that already ended is
    /// not an error.
    pub fn kill(&self) -> Result<(), ExecError> {
        match rustix::process::pidfd_send_signal(&*self.0, Signal::KILL) {
            Ok(()) | Err(Errno::SRCH) => Ok(()),
            Err(e) => Err(ExecError::sys("pidfd_send_signal SIGKILL", e.into())),
        }
    }
}

/// A command that has started (its `execve` succeeded); [`Running::wait`] streams its output and
/// reaps it. Dropping it without waiting kills it.
#[derive(Debug)]
pub struct Running {
    pid: i32,
    pidfd: Arc<OwnedFd>,
    stdout: Option<File>,
    stderr: Option<File>,
    stubs: Vec<PathBuf>,
    stub_times: Vec<Option<StubTimes>>,
    reaped: bool,
    // Last, so it is removed after the child is gone (it holds the overlay mount point).
    _tmp: tempfile::TempDir,
}

/// Runs `spec` to completion: streams the command's stdout and stderr live into `stdout` and
/// `stderr` (each chunk written and flushed as it arrives, nothing clipped) and reports how it
/// ended. A non-zero exit is a normal [`RunReport`], not an error.
pub fn run<O: Write, E: Write>(
    spec: &RunSpec,
    stdout: O,
    stderr: E,
) -> Result<RunReport, ExecError> {
    spawn(spec)?.wait(stdout, stderr)
}

/// Starts `spec`: returns once the command has been exec'd (or setup failed), with the stubs
/// already known.
///
/// The child is tied to the calling *thread* (`PR_SET_PDEATHSIG` fires when the thread that
/// created it ends): wait for it on the thread that spawned it, or keep that thread alive.
pub fn spawn(spec: &RunSpec) -> Result<Running, ExecError> {
    let euid = rustix::process::geteuid();
    if !euid.is_root() {
        return Err(ExecError::NotRoot(euid.as_raw()));
    }
    let mut tmp = tempfile::Builder::new();
    tmp.prefix("kiln-run-");
    let tmp = match &spec.scratch_dir {
        Some(dir) => tmp.tempdir_in(dir),
        None => tmp.tempdir(),
    }
    .map_err(|e| ExecError::sys("create a temporary directory", e))?;
    let plan = Plan::build(spec, tmp.path())?;
    let mut slots: Vec<Option<OwnedFd>> = (0..plan.slots).map(|_| None).collect();

    let cloexec = rustix::pipe::PipeFlags::CLOEXEC;
    let pipe = |what: &str| {
        rustix::pipe::pipe_with(cloexec)
            .map_err(|e| ExecError::sys(format!("pipe ({what})"), e.into()))
    };
    let (report_r, report_w) = pipe("setup report")?;
    let (out_r, out_w) = pipe("stdout")?;
    let (err_r, err_w) = pipe("stderr")?;
    let devnull = rustix::fs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .map_err(|e| ExecError::sys("open /dev/null", e.into()))?;

    let mut flags =
        (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWUTS) as u64;
    if spec.network == Network::None {
        flags |= libc::CLONE_NEWNET as u64;
    }
    // SAFETY: the child branch calls only `child_main`, which makes raw system calls on the
    // prepared `plan`/`slots` and the descriptors above, never allocates, and ends in execve or
    // _exit.
    let forked = unsafe { sys::clone3(flags, true) }
        .map_err(|e| ExecError::sys("clone3 (new mount, pid, ipc, uts namespaces)", e))?;
    let (pid, pidfd) = match forked {
        Forked::Child => child_main(
            &plan.ops,
            &mut slots,
            ChildFds {
                stdin: &devnull,
                stdout: &out_w,
                stderr: &err_w,
                report: &report_w,
            },
        ),
        Forked::Parent { pid, pidfd } => (pid, pidfd),
    };
    drop((report_w, out_w, err_w, devnull));
    let pidfd = match pidfd {
        Some(fd) => Arc::new(fd),
        None => {
            // Not reachable with CLONE_PIDFD; open one rather than guess.
            let p = rustix::process::Pid::from_raw(pid).ok_or_else(|| {
                ExecError::sys("clone3", std::io::Error::other("no pid returned"))
            })?;
            Arc::new(
                rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
                    .map_err(|e| ExecError::sys("pidfd_open", e.into()))?,
            )
        }
    };
    let mut running = Running {
        pid,
        pidfd,
        stdout: Some(File::from(out_r)),
        stderr: Some(File::from(err_r)),
        stubs: Vec::new(),
        stub_times: Vec::new(),
        reaped: false,
        _tmp: tmp,
    };

    // The child's setup report: stub records, then EOF at execve, or an error record.
    let mut bytes = Vec::new();
    File::from(report_r)
        .read_to_end(&mut bytes)
        .map_err(|e| ExecError::sys("read the sandbox setup report", e))?;
    let mut rest = &bytes[..];
    let mut failure = None;
    while rest.len() >= RECORD_HEADER {
        let word = |i: usize| u32::from_ne_bytes(rest[i * 4..i * 4 + 4].try_into().unwrap());
        let (kind, op, item, errno, len) = (word(0), word(1), word(2), word(3), word(4) as usize);
        let detail = rest.get(RECORD_HEADER..RECORD_HEADER + len).unwrap_or(&[]);
        match kind {
            KIND_STUB => {
                if let Some(p) = plan.stub_path(op, item) {
                    running.stubs.push(p);
                    let t = |i: usize| {
                        detail
                            .get(i * 8..i * 8 + 8)
                            .map(|b| i64::from_ne_bytes(b.try_into().unwrap()))
                    };
                    let times = match (t(0), t(1), t(2), t(3)) {
                        (Some(a), Some(b), Some(c), Some(d)) => Some(StubTimes {
                            before: (a, b),
                            after: (c, d),
                        }),
                        _ => None,
                    };
                    running.stub_times.push(times);
                }
            }
            _ => {
                failure = Some((
                    op,
                    item,
                    errno as i32,
                    String::from_utf8_lossy(detail).into_owned(),
                ))
            }
        }
        rest = rest.get(RECORD_HEADER + len..).unwrap_or(&[]);
    }
    if let Some((op, item, errno, detail)) = failure {
        let _ = running.reap();
        let source = std::io::Error::from_raw_os_error(errno);
        return Err(plan.describe_failure(op, item, source, detail));
    }
    Ok(running)
}

impl Running {
    /// The command's pid as seen from the caller's pid namespace.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    /// A handle that can kill the command from another thread (e.g. on Ctrl-C).
    pub fn killer(&self) -> Killer {
        Killer(self.pidfd.clone())
    }

    /// The stubs created so far (all of them: they are made before the command starts).
    pub fn stubs(&self) -> &[PathBuf] {
        &self.stubs
    }

    /// Streams the output into `stdout`/`stderr` until the command ends, and reaps it. If a
    /// writer fails, the command is killed and [`ExecError::Output`] returned.
    pub fn wait<O: Write, E: Write>(
        mut self,
        mut stdout: O,
        mut stderr: E,
    ) -> Result<RunReport, ExecError> {
        use rustix::event::{PollFd, PollFlags, poll};
        let mut tail = Tail::default();
        let mut streams = [self.stdout.take(), self.stderr.take()];
        let mut buf = vec![0u8; 64 * 1024];
        let mut write_error = None;
        while streams.iter().any(Option::is_some) {
            let mut ready = [false; 2];
            {
                let mut fds = Vec::with_capacity(2);
                let mut which = Vec::with_capacity(2);
                for (i, s) in streams.iter().enumerate() {
                    if let Some(f) = s {
                        fds.push(PollFd::new(f, PollFlags::IN));
                        which.push(i);
                    }
                }
                match poll(&mut fds, None) {
                    Ok(_) | Err(Errno::INTR) => {}
                    Err(e) => return Err(ExecError::sys("poll the command's output", e.into())),
                }
                for (fd, i) in fds.iter().zip(which) {
                    ready[i] = !fd.revents().is_empty();
                }
            }
            for i in 0..2 {
                if !ready[i] {
                    continue;
                }
                let Some(f) = streams[i].as_mut() else {
                    continue;
                };
                let n = match f.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(ExecError::sys("read the command's output", e)),
                };
                if n == 0 {
                    streams[i] = None;
                    continue;
                }
                let chunk = &buf[..n];
                tail.push(i, chunk);
                if write_error.is_none() {
                    let w: &mut dyn Write = if i == 0 { &mut stdout } else { &mut stderr };
                    if let Err(e) = w.write_all(chunk).and_then(|()| w.flush()) {
                        write_error = Some(e);
                        let _ = self.killer().kill();
                    }
                }
            }
        }
        let status = self.reap()?;
        if let Some(e) = write_error {
            return Err(ExecError::Output(e));
        }
        Ok(RunReport {
            status,
            stubs: std::mem::take(&mut self.stubs),
            stub_times: std::mem::take(&mut self.stub_times),
            tail: tail.finish(),
        })
    }

    /// Waits for the child (once) and decodes its status.
    fn reap(&mut self) -> Result<ExitStatus, ExecError> {
        loop {
            match rustix::process::waitid(WaitId::PidFd(self.pidfd.as_fd()), WaitIdOptions::EXITED)
            {
                Ok(Some(st)) => {
                    self.reaped = true;
                    return Ok(match (st.exit_status(), st.terminating_signal()) {
                        (_, Some(sig)) => ExitStatus::Signal(sig),
                        (Some(code), None) => ExitStatus::Code(code),
                        (None, None) => ExitStatus::Code(-1),
                    });
                }
                Ok(None) | Err(Errno::INTR) => continue,
                Err(e) => {
                    self.reaped = true;
                    return Err(ExecError::sys(format!("waitid pid {}", self.pid), e.into()));
                }
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.killer().kill();
            let _ = self.reap();
        }
    }
}

/// Keeps the last [`TAIL_LINES`] complete lines of both streams, in arrival order.
#[derive(Default)]
struct Tail {
    lines: std::collections::VecDeque<String>,
    partial: [Vec<u8>; 2],
}

impl Tail {
    const MAX_LINE: usize = 4096;

    fn push(&mut self, stream: usize, mut chunk: &[u8]) {
        while let Some(nl) = chunk.iter().position(|&b| b == b'\n') {
            self.append(stream, &chunk[..nl]);
            let line = std::mem::take(&mut self.partial[stream]);
            self.complete(line);
            chunk = &chunk[nl + 1..];
        }
        self.append(stream, chunk);
    }

    fn append(&mut self, stream: usize, bytes: &[u8]) {
        let p = &mut self.partial[stream];
        let room = Self::MAX_LINE.saturating_sub(p.len());
        p.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn complete(&mut self, line: Vec<u8>) {
        if self.lines.len() == TAIL_LINES {
            self.lines.pop_front();
        }
        self.lines
            .push_back(String::from_utf8_lossy(&line).into_owned());
    }

    fn finish(mut self) -> Vec<String> {
        for i in 0..2 {
            let line = std::mem::take(&mut self.partial[i]);
            if !line.is_empty() {
                self.complete(line);
            }
        }
        self.lines.into()
    }
}

// ---------------------------------------------------------------------------------------------
// The plan: every step of the child, with its data prepared by the parent.

/// Docker's default capability set for the container's root (the same in and out of a user
/// namespace, so a build behaves alike as root and rootless).
const DEFAULT_CAPS: CapabilitySet = CapabilitySet::CHOWN
    .union(CapabilitySet::DAC_OVERRIDE)
    .union(CapabilitySet::FSETID)
    .union(CapabilitySet::FOWNER)
    .union(CapabilitySet::MKNOD)
    .union(CapabilitySet::NET_RAW)
    .union(CapabilitySet::SETGID)
    .union(CapabilitySet::SETUID)
    .union(CapabilitySet::SETFCAP)
    .union(CapabilitySet::SETPCAP)
    .union(CapabilitySet::NET_BIND_SERVICE)
    .union(CapabilitySet::SYS_CHROOT)
    .union(CapabilitySet::KILL)
    .union(CapabilitySet::AUDIT_WRITE);

const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
/// Docker's read-only paths of /proc.
const PROC_READONLY: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];
/// Docker's masked files of /proc (covered by /dev/null).
const PROC_MASKED_FILES: [&str; 6] = [
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
];
/// Docker's masked directories of /proc (covered by an empty read-only tmpfs).
const PROC_MASKED_DIRS: [&str; 2] = ["/proc/acpi", "/proc/scsi"];

struct OverlayOp {
    target: CString,
    lowers: Vec<CString>,
    upper: CString,
    work: CString,
    /// `(key, value)` string options; `value` empty means a flag (`userxattr`).
    options: Vec<(CString, CString)>,
    /// `mount(2)` data for kernels without `lowerdir+`; `None` if it cannot be expressed
    /// (a path with a comma, or longer than a page).
    legacy_data: Option<CString>,
    force_legacy: bool,
}

struct ExecOp {
    program: String,
    path_var: String,
    candidates: Vec<CString>,
    // Owners of the strings argv/envp point into.
    _args: Vec<CString>,
    _env: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
}

enum Op {
    LoopbackUp,
    SetHostname(Vec<u8>),
    MakeRprivate,
    Overlay(Box<OverlayOp>),
    BindRoot(CString),
    /// Clone a host path as a detached mount into `slot`.
    OpenTree {
        src: CString,
        slot: usize,
        recursive: bool,
    },
    /// A proc mount for the new pid namespace, detached, into `slot`.
    OpenProc {
        slot: usize,
    },
    PivotRoot(CString),
    /// Create the missing components of a path (absolute prefixes, the last one the target).
    Ensure {
        prefixes: Vec<CString>,
        file: bool,
        stub: bool,
    },
    Attach {
        slot: usize,
        dst: CString,
    },
    MountFs {
        fstype: &'static CStr,
        dst: CString,
        flags: MountFlags,
        data: CString,
        optional: bool,
    },
    BindInside {
        src: CString,
        dst: CString,
        optional: bool,
    },
    RemountRo {
        dst: CString,
        optional: bool,
    },
    Symlink {
        target: CString,
        link: CString,
    },
    DropCaps {
        last_cap: u32,
    },
    SetIds {
        uid: u32,
        gid: u32,
        groups: Vec<Gid>,
    },
    Chdir(CString),
    Exec(Box<ExecOp>),
}

struct Plan {
    ops: Vec<Op>,
    slots: usize,
}

fn cstr(s: impl AsRef<OsStr>, what: &str) -> Result<CString, ExecError> {
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| ExecError::InvalidSpec(format!("{what} contains a NUL byte")))
}

fn lossy(c: &CStr) -> String {
    c.to_string_lossy().into_owned()
}

/// Lexically cleans an absolute container path: `a/./b/../c` → `/a/c`. `None` for `/` itself.
fn clean_container_path(p: &str) -> Option<String> {
    Some(crate::pathclean::clean_absolute(p)).filter(|c| c != "/")
}

/// `/a/b/c` → [`/a`, `/a/b`, `/a/b/c`].
fn prefixes(clean: &str) -> Result<Vec<CString>, ExecError> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in clean.split('/').filter(|c| !c.is_empty()) {
        cur.push('/');
        cur.push_str(c);
        out.push(cstr(&cur, "a container path")?);
    }
    Ok(out)
}

fn ensure(path: &str, file: bool, stub: bool) -> Result<Op, ExecError> {
    Ok(Op::Ensure {
        prefixes: prefixes(path)?,
        file,
        stub,
    })
}

/// Escapes a path for the overlay `lowerdir=` list of `mount(2)` data.
fn escape_lower(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    for &b in p {
        if b == b':' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

impl Plan {
    fn build(spec: &RunSpec, tmp: &Path) -> Result<Plan, ExecError> {
        if spec.args.is_empty() {
            return Err(ExecError::InvalidSpec("no command (args is empty)".into()));
        }
        let in_userns = super::userns::in_user_namespace();
        let mut ops = Vec::new();
        let mut slots = 0usize;
        let mut slot = || {
            slots += 1;
            slots - 1
        };

        if spec.network == Network::None {
            ops.push(Op::LoopbackUp);
        }
        ops.push(Op::SetHostname(spec.hostname.as_bytes().to_vec()));
        ops.push(Op::MakeRprivate);

        // The root.
        let root = match &spec.rootfs {
            RootfsSpec::Overlay {
                lowerdirs,
                upperdir,
                workdir,
            } => {
                for (what, d) in [("upperdir", upperdir), ("workdir", workdir)] {
                    if !d.is_dir() {
                        return Err(ExecError::InvalidSpec(format!(
                            "overlay {what} {} is not a directory",
                            d.display()
                        )));
                    }
                }
                let mountpoint = tmp.join("root");
                let mut lowers = lowerdirs.clone();
                if lowers.is_empty() {
                    let empty = tmp.join("empty");
                    std::fs::create_dir(&empty).map_err(|e| {
                        ExecError::sys(format!("create directory {}", empty.display()), e)
                    })?;
                    lowers.push(empty);
                }
                std::fs::create_dir(&mountpoint).map_err(|e| {
                    ExecError::sys(format!("create directory {}", mountpoint.display()), e)
                })?;
                let mut options: Vec<(CString, CString)> = Vec::new();
                let mut legacy_opts = String::new();
                if in_userns {
                    options.push((c"userxattr".into(), CString::default()));
                    legacy_opts.push_str(",userxattr");
                } else {
                    for (k, v) in [
                        ("redirect_dir", "nofollow"),
                        ("index", "off"),
                        ("metacopy", "off"),
                    ] {
                        options.push((cstr(k, "option")?, cstr(v, "option")?));
                        legacy_opts.push_str(&format!(",{k}={v}"));
                    }
                }
                let mut data = b"lowerdir=".to_vec();
                for (i, l) in lowers.iter().enumerate() {
                    if i > 0 {
                        data.push(b':');
                    }
                    data.extend(escape_lower(l.as_os_str().as_bytes()));
                }
                data.extend_from_slice(b",upperdir=");
                data.extend_from_slice(upperdir.as_os_str().as_bytes());
                data.extend_from_slice(b",workdir=");
                data.extend_from_slice(workdir.as_os_str().as_bytes());
                data.extend_from_slice(legacy_opts.as_bytes());
                let paths_have_comma = lowers
                    .iter()
                    .chain([upperdir, workdir])
                    .any(|p| p.as_os_str().as_bytes().contains(&b','));
                let legacy_data = if paths_have_comma || data.len() >= 4096 {
                    None
                } else {
                    CString::new(data).ok()
                };
                let target = cstr(&mountpoint, "the mount point")?;
                ops.push(Op::Overlay(Box::new(OverlayOp {
                    target: target.clone(),
                    lowers: lowers
                        .iter()
                        .map(|l| cstr(l, "a lowerdir"))
                        .collect::<Result<_, _>>()?,
                    upper: cstr(upperdir, "the upperdir")?,
                    work: cstr(workdir, "the workdir")?,
                    options,
                    legacy_data,
                    force_legacy: std::env::var_os("KILN_OVERLAY_MOUNT")
                        .is_some_and(|v| v == "legacy"),
                })));
                target
            }
            RootfsSpec::Dir(dir) => {
                if !dir.is_dir() {
                    return Err(ExecError::InvalidSpec(format!(
                        "rootfs {} is not a directory",
                        dir.display()
                    )));
                }
                let dir = std::fs::canonicalize(dir)
                    .map_err(|e| ExecError::sys(format!("resolve {}", dir.display()), e))?;
                let c = cstr(&dir, "the rootfs path")?;
                ops.push(Op::BindRoot(c.clone()));
                c
            }
        };

        // Host sources, cloned before the pivot.
        let mut device_slots = Vec::new();
        for d in DEVICES {
            let s = slot();
            ops.push(Op::OpenTree {
                src: cstr(format!("/dev/{d}"), "device")?,
                slot: s,
                recursive: false,
            });
            device_slots.push((d, s));
        }
        let write_tmp = |name: &str, content: &str| -> Result<PathBuf, ExecError> {
            let p = tmp.join(name);
            std::fs::write(&p, content)
                .map_err(|e| ExecError::sys(format!("write {}", p.display()), e))?;
            Ok(p)
        };
        let hosts = match &spec.hosts {
            Some(p) => p.clone(),
            None => write_tmp(
                "hosts",
                &format!(
                    "127.0.0.1\tlocalhost {}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
                    spec.hostname
                ),
            )?,
        };
        let resolv = match &spec.resolv_conf {
            Some(p) => p.clone(),
            None if Path::new("/etc/resolv.conf").exists() => PathBuf::from("/etc/resolv.conf"),
            None => write_tmp("resolv.conf", "")?,
        };
        let hostname = write_tmp("hostname", &format!("{}\n", spec.hostname))?;
        let mut etc_slots = Vec::new();
        for (dst, src) in [
            ("/etc/hosts", &hosts),
            ("/etc/resolv.conf", &resolv),
            ("/etc/hostname", &hostname),
        ] {
            if !src.is_file() {
                return Err(ExecError::InvalidSpec(format!(
                    "{} (for {dst}) is not a file",
                    src.display()
                )));
            }
            let s = slot();
            ops.push(Op::OpenTree {
                src: cstr(src, "a host file")?,
                slot: s,
                recursive: false,
            });
            etc_slots.push((dst, s));
        }
        enum Extra {
            Bind {
                slot: usize,
                dst: String,
                dir: bool,
                readonly: bool,
            },
            Tmpfs {
                dst: String,
                size: Option<u64>,
            },
        }
        let mut extras = Vec::new();
        for m in &spec.mounts {
            match m {
                ExtraMount::Bind { src, dst, readonly } => {
                    let dst = clean_container_path(dst).ok_or_else(|| {
                        ExecError::InvalidSpec(format!("bind mount target {dst:?} is the root"))
                    })?;
                    let meta = std::fs::metadata(src).map_err(|e| {
                        ExecError::InvalidSpec(format!("bind mount source {}: {e}", src.display()))
                    })?;
                    let s = slot();
                    ops.push(Op::OpenTree {
                        src: cstr(src, "a bind source")?,
                        slot: s,
                        recursive: meta.is_dir(),
                    });
                    extras.push(Extra::Bind {
                        slot: s,
                        dst,
                        dir: meta.is_dir(),
                        readonly: *readonly,
                    });
                }
                ExtraMount::Tmpfs { dst, size } => {
                    let dst = clean_container_path(dst).ok_or_else(|| {
                        ExecError::InvalidSpec(format!("tmpfs target {dst:?} is the root"))
                    })?;
                    extras.push(Extra::Tmpfs { dst, size: *size });
                }
            }
        }
        let proc_slot = slot();
        ops.push(Op::OpenProc { slot: proc_slot });

        ops.push(Op::PivotRoot(root));

        // Inside the rootfs.
        let c = |s: &str| cstr(s, "a container path");
        ops.push(ensure("/proc", false, true)?);
        ops.push(Op::Attach {
            slot: proc_slot,
            dst: c("/proc")?,
        });
        ops.push(ensure("/dev", false, true)?);
        ops.push(Op::MountFs {
            fstype: c"tmpfs",
            dst: c("/dev")?,
            flags: MountFlags::NOSUID | MountFlags::NODEV | MountFlags::STRICTATIME,
            data: c("mode=755,size=65536k")?,
            optional: false,
        });
        for (d, s) in device_slots {
            let p = format!("/dev/{d}");
            ops.push(ensure(&p, true, false)?);
            ops.push(Op::Attach {
                slot: s,
                dst: c(&p)?,
            });
        }
        ops.push(ensure("/dev/pts", false, false)?);
        ops.push(Op::MountFs {
            fstype: c"devpts",
            dst: c("/dev/pts")?,
            flags: MountFlags::NOSUID | MountFlags::NOEXEC,
            data: c("newinstance,ptmxmode=0666,mode=0620")?,
            optional: false,
        });
        ops.push(ensure("/dev/shm", false, false)?);
        ops.push(Op::MountFs {
            fstype: c"tmpfs",
            dst: c("/dev/shm")?,
            flags: MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            data: c("mode=1777,size=65536k")?,
            optional: false,
        });
        for (target, link) in [
            ("pts/ptmx", "/dev/ptmx"),
            ("/proc/self/fd", "/dev/fd"),
            ("/proc/self/fd/0", "/dev/stdin"),
            ("/proc/self/fd/1", "/dev/stdout"),
            ("/proc/self/fd/2", "/dev/stderr"),
            ("/proc/kcore", "/dev/core"),
        ] {
            ops.push(Op::Symlink {
                target: c(target)?,
                link: c(link)?,
            });
        }
        for p in PROC_READONLY {
            ops.push(Op::BindInside {
                src: c(p)?,
                dst: c(p)?,
                optional: true,
            });
            ops.push(Op::RemountRo {
                dst: c(p)?,
                optional: true,
            });
        }
        for p in PROC_MASKED_FILES {
            ops.push(Op::BindInside {
                src: c("/dev/null")?,
                dst: c(p)?,
                optional: true,
            });
        }
        for p in PROC_MASKED_DIRS {
            ops.push(Op::MountFs {
                fstype: c"tmpfs",
                dst: c(p)?,
                flags: MountFlags::RDONLY
                    | MountFlags::NOSUID
                    | MountFlags::NODEV
                    | MountFlags::NOEXEC,
                data: c("size=0")?,
                optional: true,
            });
        }
        for (dst, s) in etc_slots {
            ops.push(ensure(dst, true, true)?);
            ops.push(Op::Attach {
                slot: s,
                dst: c(dst)?,
            });
            ops.push(Op::RemountRo {
                dst: c(dst)?,
                optional: false,
            });
        }
        for e in extras {
            match e {
                Extra::Bind {
                    slot,
                    dst,
                    dir,
                    readonly,
                } => {
                    ops.push(ensure(&dst, !dir, true)?);
                    ops.push(Op::Attach {
                        slot,
                        dst: c(&dst)?,
                    });
                    if readonly {
                        ops.push(Op::RemountRo {
                            dst: c(&dst)?,
                            optional: false,
                        });
                    }
                }
                Extra::Tmpfs { dst, size } => {
                    ops.push(ensure(&dst, false, true)?);
                    let mut data = "mode=1777".to_string();
                    if let Some(n) = size {
                        data.push_str(&format!(",size={n}"));
                    }
                    ops.push(Op::MountFs {
                        fstype: c"tmpfs",
                        dst: c(&dst)?,
                        flags: MountFlags::NOSUID | MountFlags::NODEV,
                        data: c(&data)?,
                        optional: false,
                    });
                }
            }
        }

        // The process.
        let cwd = clean_container_path(&spec.cwd).unwrap_or_else(|| "/".to_string());
        if cwd != "/" {
            ops.push(ensure(&cwd, false, false)?);
        }
        let last_cap = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40u32)
            .min(63);
        ops.push(Op::DropCaps { last_cap });
        ops.push(Op::SetIds {
            uid: spec.uid,
            gid: spec.gid,
            groups: spec.groups.iter().map(|&g| Gid::from_raw(g)).collect(),
        });
        ops.push(Op::Chdir(c(&cwd)?));
        ops.push(Op::Exec(Box::new(ExecOp::build(spec)?)));
        Ok(Plan { ops, slots })
    }

    /// The rootfs-relative path of a stub the child reported.
    fn stub_path(&self, op: u32, item: u32) -> Option<PathBuf> {
        match self.ops.get(op as usize)? {
            Op::Ensure { prefixes, .. } => {
                let p = prefixes.get(item as usize)?;
                Some(
                    PathBuf::from(OsStr::from_bytes(p.to_bytes()).to_owned())
                        .strip_prefix("/")
                        .ok()?
                        .to_path_buf(),
                )
            }
            _ => None,
        }
    }

    /// Turns a child's (step, item, errno) into an error that names the call and path.
    fn describe_failure(
        &self,
        op: u32,
        item: u32,
        source: std::io::Error,
        detail: String,
    ) -> ExecError {
        let mut detail = (!detail.is_empty()).then_some(detail);
        if detail.is_none()
            && matches!(self.ops.get(op as usize), Some(Op::Overlay(_)))
            && item == ITEM_CREATE
        {
            // Overlayfs says most of its reasons only in the kernel log.
            detail = Some(
                "the kernel log (dmesg) has overlayfs's reason; usual ones: upperdir and workdir \
                 on different filesystems, a workdir that is not empty or in use, a layer on a \
                 filesystem overlay cannot stack on"
                    .into(),
            );
        }
        let what = match self.ops.get(op as usize) {
            None => match item {
                0 => "connect stdin to /dev/null".to_string(),
                1 => "connect stdout to a pipe".to_string(),
                2 => "connect stderr to a pipe".to_string(),
                3 => "start a new session (setsid)".to_string(),
                _ => "set the parent-death signal".to_string(),
            },
            Some(Op::LoopbackUp) => {
                "bring up lo in the new network namespace (SIOCSIFFLAGS)".into()
            }
            Some(Op::SetHostname(h)) => format!("sethostname {:?}", String::from_utf8_lossy(h)),
            Some(Op::MakeRprivate) => "make / rprivate (mount MS_REC|MS_PRIVATE)".into(),
            Some(Op::Overlay(o)) => {
                let t = lossy(&o.target);
                let lower = |i: u32| {
                    o.lowers
                        .get(i as usize)
                        .map(|l| lossy(l))
                        .unwrap_or_default()
                };
                match item {
                    ITEM_FSOPEN => "fsopen overlay".to_string(),
                    ITEM_UPPER => format!("fsconfig overlay upperdir={}", lossy(&o.upper)),
                    ITEM_WORK => format!("fsconfig overlay workdir={}", lossy(&o.work)),
                    ITEM_OPTS => {
                        "fsconfig overlay options (userxattr / redirect_dir, index, metacopy)"
                            .into()
                    }
                    ITEM_CREATE => format!(
                        "create the overlay (lowerdirs {}, upperdir {}, workdir {})",
                        o.lowers
                            .iter()
                            .map(|l| lossy(l))
                            .collect::<Vec<_>>()
                            .join(":"),
                        lossy(&o.upper),
                        lossy(&o.work)
                    ),
                    ITEM_FSMOUNT => "fsmount overlay".into(),
                    ITEM_MOVE => format!("move_mount overlay to {t}"),
                    ITEM_LEGACY => format!(
                        "mount overlay at {t} with mount(2) ({})",
                        o.legacy_data
                            .as_deref()
                            .map(lossy)
                            .unwrap_or_else(|| "paths contain a comma or exceed a page".into())
                    ),
                    i if i >= ITEM_LOWER_BASE => {
                        format!("fsconfig overlay lowerdir+={}", lower(i - ITEM_LOWER_BASE))
                    }
                    _ => format!("mount overlay at {t}"),
                }
            }
            Some(Op::BindRoot(p)) => format!("bind the rootfs {} onto itself", lossy(p)),
            Some(Op::OpenTree { src, .. }) => format!("open_tree (clone) {}", lossy(src)),
            Some(Op::OpenProc { .. }) => match item {
                0 => "fsopen proc".into(),
                1 => "create a proc filesystem for the new pid namespace".into(),
                _ => "fsmount proc".into(),
            },
            Some(Op::PivotRoot(root)) => match item {
                0 => format!("chdir {}", lossy(root)),
                1 => format!("pivot_root into {}", lossy(root)),
                2 => "detach the old root (umount2 MNT_DETACH)".into(),
                _ => "chdir / after pivot_root".into(),
            },
            Some(Op::Ensure { prefixes, file, .. }) => {
                let p = prefixes
                    .get(item as usize)
                    .map(|p| lossy(p))
                    .unwrap_or_default();
                let last = item as usize + 1 == prefixes.len();
                format!(
                    "create {} {p} in the rootfs",
                    if last && *file {
                        "mount-point file"
                    } else {
                        "directory"
                    }
                )
            }
            Some(Op::Attach { dst, .. }) => format!("move_mount onto {}", lossy(dst)),
            Some(Op::MountFs {
                fstype, dst, data, ..
            }) => {
                format!(
                    "mount {} at {} ({})",
                    lossy(fstype),
                    lossy(dst),
                    lossy(data)
                )
            }
            Some(Op::BindInside { src, dst, .. }) => {
                format!("bind {} onto {}", lossy(src), lossy(dst))
            }
            Some(Op::RemountRo { dst, .. }) => match item {
                0 => format!("statvfs {}", lossy(dst)),
                _ => format!("remount {} read-only", lossy(dst)),
            },
            Some(Op::Symlink { target, link }) => {
                format!("symlink {} -> {}", lossy(link), lossy(target))
            }
            Some(Op::DropCaps { .. }) => match item {
                ITEM_CAPSET => "capset (Docker's default capabilities)".into(),
                ITEM_AMBIENT => "clear the ambient capabilities".into(),
                cap => format!("drop capability {cap} from the bounding set"),
            },
            Some(Op::SetIds { uid, gid, groups }) => {
                let hint = if source.raw_os_error() == Some(libc::EINVAL) {
                    " (not mapped in the user namespace?)"
                } else {
                    ""
                };
                match item {
                    0 => format!(
                        "setgroups {:?}{hint}",
                        groups.iter().map(|g| g.as_raw()).collect::<Vec<_>>()
                    ),
                    1 => format!("setgid {gid}{hint}"),
                    _ => format!("setuid {uid}{hint}"),
                }
            }
            Some(Op::Chdir(p)) => format!("chdir {} as the command's user", lossy(p)),
            Some(Op::Exec(e)) => {
                let reason = match source.raw_os_error() {
                    Some(libc::ENOENT) if !e.program.contains('/') => {
                        format!("executable file not found in PATH ({})", e.path_var)
                    }
                    _ => source.to_string(),
                };
                return ExecError::Exec {
                    program: e.program.clone(),
                    reason,
                    not_found: source.raw_os_error() == Some(libc::ENOENT),
                };
            }
        };
        ExecError::Setup {
            what,
            detail,
            source,
        }
    }
}

impl ExecOp {
    fn build(spec: &RunSpec) -> Result<ExecOp, ExecError> {
        let program = spec.args[0].clone();
        let args: Vec<CString> = spec
            .args
            .iter()
            .map(|a| cstr(a, "an argument"))
            .collect::<Result<_, _>>()?;
        for e in &spec.env {
            if !e.contains('=') {
                return Err(ExecError::InvalidSpec(format!(
                    "environment entry {e:?} has no '='"
                )));
            }
        }
        let env: Vec<CString> = spec
            .env
            .iter()
            .map(|e| cstr(e, "an environment entry"))
            .collect::<Result<_, _>>()?;
        let path_var = spec
            .env
            .iter()
            .rev()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or(DEFAULT_PATH)
            .to_string();
        let candidates = if program.contains('/') {
            vec![cstr(&program, "the command")?]
        } else if program.is_empty() {
            return Err(ExecError::InvalidSpec("the command name is empty".into()));
        } else {
            path_var
                .split(':')
                .map(|dir| {
                    let dir = if dir.is_empty() { "." } else { dir };
                    cstr(
                        format!("{}/{program}", dir.trim_end_matches('/')),
                        "the command",
                    )
                })
                .collect::<Result<_, _>>()?
        };
        let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
        argv.push(std::ptr::null());
        let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
        envp.push(std::ptr::null());
        Ok(ExecOp {
            program,
            path_var,
            candidates,
            _args: args,
            _env: env,
            argv,
            envp,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The child. Everything below runs after clone3 in the new process: system calls only, on data
// prepared above; no allocation, no locks, no panics.

const KIND_STUB: u32 = 1;
const KIND_ERROR: u32 = 2;
/// kind, op, item, errno, detail length.
const RECORD_HEADER: usize = 20;
const DETAIL_MAX: usize = 200;
/// The pseudo-op index of the prelude (stdio, session).
const PRELUDE: u32 = u32::MAX;

const ITEM_FSOPEN: u32 = 0;
const ITEM_UPPER: u32 = 1;
const ITEM_WORK: u32 = 2;
const ITEM_OPTS: u32 = 3;
const ITEM_CREATE: u32 = 4;
const ITEM_FSMOUNT: u32 = 5;
const ITEM_MOVE: u32 = 6;
const ITEM_LEGACY: u32 = 7;
const ITEM_LOWER_BASE: u32 = 100;
const ITEM_CAPSET: u32 = 1000;
const ITEM_AMBIENT: u32 = 1001;

struct ChildFds<'a> {
    stdin: &'a OwnedFd,
    stdout: &'a OwnedFd,
    stderr: &'a OwnedFd,
    report: &'a OwnedFd,
}

/// A failed step: which item of it, and the errno.
#[derive(Clone, Copy)]
struct Fail {
    item: u32,
    errno: Errno,
}

impl Fail {
    fn new(item: u32, errno: Errno) -> Fail {
        Fail { item, errno }
    }
}

/// Words from the kernel about a failure (the fs-context log of the new mount API).
struct Detail {
    buf: [u8; DETAIL_MAX],
    len: usize,
}

fn at(item: u32) -> impl Fn(Errno) -> Fail {
    move |e| Fail::new(item, e)
}

type Step = Result<(), Fail>;

fn send(report: &OwnedFd, kind: u32, op: u32, item: u32, errno: i32, detail: &[u8]) {
    let mut rec = [0u8; RECORD_HEADER + DETAIL_MAX];
    let len = detail.len().min(DETAIL_MAX);
    for (i, w) in [kind, op, item, errno as u32, len as u32]
        .iter()
        .enumerate()
    {
        rec[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    rec[RECORD_HEADER..RECORD_HEADER + len].copy_from_slice(&detail[..len]);
    let _ = rustix::io::write(report, &rec[..RECORD_HEADER + len]);
}

fn child_main(ops: &[Op], slots: &mut [Option<OwnedFd>], fds: ChildFds<'_>) -> ! {
    let prelude = [
        rustix::stdio::dup2_stdin(fds.stdin),
        rustix::stdio::dup2_stdout(fds.stdout),
        rustix::stdio::dup2_stderr(fds.stderr),
        rustix::process::setsid().map(|_| ()),
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL)),
    ];
    for (i, r) in prelude.into_iter().enumerate() {
        if let Err(e) = r {
            send(
                fds.report,
                KIND_ERROR,
                PRELUDE,
                i as u32,
                e.raw_os_error(),
                &[],
            );
            sys::exit_now(126);
        }
    }
    sys::cloexec_from(3);
    sys::reset_signals();
    rustix::process::umask(Mode::from_raw_mode(0o022));
    let mut detail = Detail {
        buf: [0; DETAIL_MAX],
        len: 0,
    };
    for (i, op) in ops.iter().enumerate() {
        if let Err(f) = run_op(i as u32, op, slots, fds.report, &mut detail) {
            send(
                fds.report,
                KIND_ERROR,
                i as u32,
                f.item,
                f.errno.raw_os_error(),
                &detail.buf[..detail.len.min(DETAIL_MAX)],
            );
            sys::exit_now(if matches!(op, Op::Exec(_)) { 127 } else { 126 });
        }
    }
    // Unreachable: the last op is Exec, which only returns on failure.
    sys::exit_now(126)
}

fn tolerate(optional: bool, r: Step) -> Step {
    match r {
        Err(f) if optional && f.errno == Errno::NOENT => Ok(()),
        r => r,
    }
}

fn run_op(
    index: u32,
    op: &Op,
    slots: &mut [Option<OwnedFd>],
    report: &OwnedFd,
    detail: &mut Detail,
) -> Step {
    use rustix::mount as m;
    match op {
        Op::LoopbackUp => sys::loopback_up().map_err(at(0)),
        Op::SetHostname(h) => rustix::system::sethostname(h).map_err(at(0)),
        Op::MakeRprivate => m::mount_change(
            c"/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        )
        .map_err(at(0)),
        Op::Overlay(o) => mount_overlay(o, detail),
        Op::BindRoot(p) => m::mount_bind_recursive(p.as_c_str(), p.as_c_str()).map_err(at(0)),
        Op::OpenTree {
            src,
            slot,
            recursive,
        } => {
            let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
            if *recursive {
                flags |= OpenTreeFlags::AT_RECURSIVE;
            }
            let fd = m::open_tree(CWD, src.as_c_str(), flags).map_err(at(0))?;
            store(slots, *slot, fd)
        }
        Op::OpenProc { slot } => {
            let fs = m::fsopen(c"proc", FsOpenFlags::FSOPEN_CLOEXEC).map_err(at(0))?;
            m::fsconfig_create(&fs).map_err(at(1))?;
            let mnt = m::fsmount(
                &fs,
                FsMountFlags::FSMOUNT_CLOEXEC,
                MountAttrFlags::MOUNT_ATTR_NOSUID
                    | MountAttrFlags::MOUNT_ATTR_NODEV
                    | MountAttrFlags::MOUNT_ATTR_NOEXEC,
            )
            .map_err(at(2))?;
            store(slots, *slot, mnt)
        }
        Op::PivotRoot(root) => {
            rustix::process::chdir(root.as_c_str()).map_err(at(0))?;
            rustix::process::pivot_root(c".", c".").map_err(at(1))?;
            m::unmount(c".", UnmountFlags::DETACH).map_err(at(2))?;
            rustix::process::chdir(c"/").map_err(at(3))
        }
        Op::Ensure {
            prefixes,
            file,
            stub,
        } => {
            let last = prefixes.len().saturating_sub(1);
            // (`st_mtime` is an i64 on 64-bit targets, narrower elsewhere.)
            #[allow(clippy::unnecessary_cast)]
            let mtime = |st: &rustix::fs::Stat| (st.st_mtime as i64, st.st_mtime_nsec as i64);
            let mut parent: &CStr = c"/";
            for (i, p) in prefixes.iter().enumerate() {
                match rustix::fs::stat(p.as_c_str()) {
                    Ok(_) => {
                        parent = p.as_c_str();
                        continue;
                    }
                    Err(Errno::NOENT) => {}
                    Err(e) => return Err(Fail::new(i as u32, e)),
                }
                // A dangling symlink as a file mount point (`/etc/resolv.conf ->
                // ../run/systemd/resolve/stub-resolv.conf`): the mount covers the link itself.
                if i == last && *file && rustix::fs::lstat(p.as_c_str()).is_ok() {
                    continue;
                }
                let before = rustix::fs::stat(parent).map(|st| mtime(&st));
                if i == last && *file {
                    let flags = OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::WRONLY
                        | OFlags::CLOEXEC
                        | OFlags::NOFOLLOW;
                    rustix::fs::open(p.as_c_str(), flags, Mode::from_raw_mode(0o644))
                        .map_err(at(i as u32))?;
                } else {
                    rustix::fs::mkdir(p.as_c_str(), Mode::from_raw_mode(0o755))
                        .map_err(at(i as u32))?;
                }
                if *stub {
                    let after = rustix::fs::stat(parent).map(|st| mtime(&st));
                    let mut times = [0u8; 32];
                    if let (Ok(b), Ok(a)) = (before, after) {
                        for (j, v) in [b.0, b.1, a.0, a.1].iter().enumerate() {
                            times[j * 8..j * 8 + 8].copy_from_slice(&v.to_ne_bytes());
                        }
                        send(report, KIND_STUB, index, i as u32, 0, &times);
                    } else {
                        send(report, KIND_STUB, index, i as u32, 0, &[]);
                    }
                }
                parent = p.as_c_str();
            }
            Ok(())
        }
        Op::Attach { slot, dst } => {
            let Some(Some(fd)) = slots.get(*slot) else {
                return Err(Fail::new(0, Errno::BADF));
            };
            // Through a symlink to what it names (inside the rootfs: we are past pivot_root),
            // or onto a dangling symlink itself.
            let mut flags = MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH;
            if rustix::fs::stat(dst.as_c_str()).is_ok() {
                flags |= MoveMountFlags::MOVE_MOUNT_T_SYMLINKS;
            }
            m::move_mount(fd, c"", CWD, dst.as_c_str(), flags).map_err(at(0))
        }
        Op::MountFs {
            fstype,
            dst,
            flags,
            data,
            optional,
        } => tolerate(
            *optional,
            m::mount(
                *fstype,
                dst.as_c_str(),
                *fstype,
                *flags,
                Some(data.as_c_str()),
            )
            .map_err(at(0)),
        ),
        Op::BindInside { src, dst, optional } => tolerate(
            *optional,
            m::mount_bind(src.as_c_str(), dst.as_c_str()).map_err(at(0)),
        ),
        Op::RemountRo { dst, optional } => tolerate(*optional, remount_ro(dst)),
        Op::Symlink { target, link } => {
            rustix::fs::symlink(target.as_c_str(), link.as_c_str()).map_err(at(0))
        }
        Op::DropCaps { last_cap } => {
            for cap in 0..=*last_cap {
                let bit = CapabilitySet::from_bits_retain(1u64 << cap);
                if DEFAULT_CAPS.contains(bit) {
                    continue;
                }
                match rustix::thread::remove_capability_from_bounding_set(bit) {
                    Ok(()) | Err(Errno::INVAL) => {}
                    Err(e) => return Err(Fail::new(cap, e)),
                }
            }
            rustix::thread::set_capabilities(
                None,
                CapabilitySets {
                    effective: DEFAULT_CAPS,
                    permitted: DEFAULT_CAPS,
                    inheritable: CapabilitySet::empty(),
                },
            )
            .map_err(at(ITEM_CAPSET))?;
            match rustix::thread::clear_ambient_capability_set() {
                Ok(()) | Err(Errno::INVAL) => Ok(()),
                Err(e) => Err(Fail::new(ITEM_AMBIENT, e)),
            }
        }
        Op::SetIds { uid, gid, groups } => {
            match rustix::thread::set_thread_groups(groups) {
                Ok(()) => {}
                // setgroups is denied in a single-id user namespace: nothing to drop there.
                Err(Errno::PERM) if groups.is_empty() => {}
                Err(e) => return Err(Fail::new(0, e)),
            }
            rustix::thread::set_thread_gid(Gid::from_raw(*gid)).map_err(at(1))?;
            rustix::thread::set_thread_uid(Uid::from_raw(*uid)).map_err(at(2))
        }
        Op::Chdir(p) => rustix::process::chdir(p.as_c_str()).map_err(at(0)),
        Op::Exec(e) => {
            let mut saw_eacces = false;
            for c in &e.candidates {
                match sys::execve(c, &e.argv, &e.envp) {
                    Errno::NOENT | Errno::NOTDIR => {}
                    Errno::ACCESS => saw_eacces = true,
                    other => return Err(Fail::new(0, other)),
                }
            }
            Err(Fail::new(
                0,
                if saw_eacces {
                    Errno::ACCESS
                } else {
                    Errno::NOENT
                },
            ))
        }
    }
}

fn store(slots: &mut [Option<OwnedFd>], slot: usize, fd: OwnedFd) -> Step {
    match slots.get_mut(slot) {
        Some(s) => {
            *s = Some(fd);
            Ok(())
        }
        None => Err(Fail::new(0, Errno::BADF)),
    }
}

/// `mount -o remount,bind,ro`, keeping the flags the kernel locks in a user namespace.
fn remount_ro(dst: &CStr) -> Step {
    let st = rustix::fs::statvfs(dst).map_err(at(0))?;
    let have = st.f_flag;
    let mut flags = MountFlags::BIND | MountFlags::RDONLY;
    for (s, m) in [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
    ] {
        if have.contains(s) {
            flags |= m;
        }
    }
    rustix::mount::mount_remount(dst, flags, c"").map_err(at(1))
}

/// Mounts the overlay: the new mount API with one `lowerdir+` per layer (no escaping, no page
/// limit), or `mount(2)` when the kernel predates it.
fn mount_overlay(o: &OverlayOp, detail: &mut Detail) -> Step {
    use rustix::mount as m;
    if !o.force_legacy {
        match m::fsopen(c"overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
            Ok(fs) => match overlay_new_api(&fs, o) {
                Ok(true) => return Ok(()),
                Ok(false) => {} // no `lowerdir+`: fall back below
                Err(f) => {
                    kernel_log(&fs, detail);
                    return Err(f);
                }
            },
            Err(Errno::NOSYS) => {}
            Err(e) => return Err(Fail::new(ITEM_FSOPEN, e)),
        }
    }
    let Some(data) = &o.legacy_data else {
        return Err(Fail::new(ITEM_LEGACY, Errno::TOOBIG));
    };
    m::mount(
        c"overlay",
        o.target.as_c_str(),
        c"overlay",
        MountFlags::empty(),
        Some(data.as_c_str()),
    )
    .map_err(at(ITEM_LEGACY))
}

/// `Ok(false)` when the kernel does not know `lowerdir+` (before 6.8).
fn overlay_new_api(fs: &OwnedFd, o: &OverlayOp) -> Result<bool, Fail> {
    use rustix::mount as m;
    for (i, l) in o.lowers.iter().enumerate() {
        match set_dir_param(fs, c"lowerdir+", l) {
            Ok(()) => {}
            Err(Errno::INVAL) if i == 0 => return Ok(false),
            Err(e) => return Err(Fail::new(ITEM_LOWER_BASE + i as u32, e)),
        }
    }
    set_dir_param(fs, c"upperdir", &o.upper).map_err(at(ITEM_UPPER))?;
    set_dir_param(fs, c"workdir", &o.work).map_err(at(ITEM_WORK))?;
    for (k, v) in &o.options {
        if v.is_empty() {
            m::fsconfig_set_flag(fs, k.as_c_str()).map_err(at(ITEM_OPTS))?;
        } else {
            m::fsconfig_set_string(fs, k.as_c_str(), v.as_c_str()).map_err(at(ITEM_OPTS))?;
        }
    }
    m::fsconfig_create(fs).map_err(at(ITEM_CREATE))?;
    let mnt = m::fsmount(fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())
        .map_err(at(ITEM_FSMOUNT))?;
    m::move_mount(
        &mnt,
        c"",
        CWD,
        o.target.as_c_str(),
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(at(ITEM_MOVE))?;
    Ok(true)
}

/// A directory parameter as a string, or — past the 255 bytes `fsconfig` takes for a string — as
/// an open directory descriptor (kernels that accept only strings then report the length).
fn set_dir_param(fs: &OwnedFd, key: &CStr, path: &CStr) -> Result<(), Errno> {
    use rustix::mount as m;
    if path.to_bytes().len() < 256 {
        return m::fsconfig_set_string(fs, key, path);
    }
    let dir = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    m::fsconfig_set_fd(fs, key, &dir)
}

/// Copies the last message of the fs-context log (the kernel's reason) into `detail`.
fn kernel_log(fs: &OwnedFd, detail: &mut Detail) {
    let mut buf = [0u8; DETAIL_MAX];
    while let Ok(n) = rustix::io::read(fs, &mut buf[..]) {
        if n == 0 {
            break;
        }
        let n = n.min(DETAIL_MAX);
        let msg = &buf[..n];
        let msg = msg.strip_suffix(b"\n").unwrap_or(msg);
        detail.buf[..msg.len()].copy_from_slice(msg);
        detail.len = msg.len();
    }
}
