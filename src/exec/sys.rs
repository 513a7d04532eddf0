//! The few raw system calls `rustix` does not wrap: `clone3`, `execve`, `_exit`, `close_range`,
//! the loopback `ioctl` and signal dispositions. Every `unsafe` block of the module lives here or
//! in the clone call sites, each with a `// SAFETY:` line.
//!
//! Everything in this file is allocation-free and async-signal-safe, because it runs in a child
//! made by a raw `clone3` from a possibly multi-threaded process: such a child has a copy of the
//! parent's memory, including any lock (the allocator's, stdio's) another thread held at that
//! instant, so it may only make system calls until it execs or exits.

use std::ffi::CStr;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::libc;
use rustix::io::Errno;

/// What `clone3` returned, in the process that sees it.
pub(crate) enum Forked {
    /// We are the new process.
    Child,
    /// We are the caller; the new process has this pid and (if asked) this pidfd.
    Parent { pid: i32, pidfd: Option<OwnedFd> },
}

/// `clone3(flags | CLONE_PIDFD?, exit_signal = SIGCHLD)` with no new stack: fork semantics, plus
/// namespaces from `flags` (`CLONE_NEW*`).
///
/// # Safety
///
/// In the child ([`Forked::Child`]) the caller must only run allocation-free, async-signal-safe
/// code (raw system calls on data prepared before the call) and must end with `execve` or
/// [`exit_now`]; it must never return into code that unwinds, allocates or takes a lock.
pub(crate) unsafe fn clone3(flags: u64, want_pidfd: bool) -> io::Result<Forked> {
    let mut pidfd: libc::c_int = -1;
    // The first, 64-byte version of `struct clone_args` (CLONE_ARGS_SIZE_VER0).
    #[repr(C)]
    struct CloneArgs {
        flags: u64,
        pidfd: u64,
        child_tid: u64,
        parent_tid: u64,
        exit_signal: u64,
        stack: u64,
        stack_size: u64,
        tls: u64,
    }
    let mut args = CloneArgs {
        flags: flags
            | if want_pidfd {
                libc::CLONE_PIDFD as u64
            } else {
                0
            },
        pidfd: if want_pidfd {
            &mut pidfd as *mut libc::c_int as u64
        } else {
            0
        },
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
    };
    // SAFETY: `args` is a valid, fully initialised clone_args of the size passed; with stack 0 the
    // child continues on a copy of this stack (fork semantics); the caller upholds the child rules.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match ret {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => {
            let pidfd = (want_pidfd && pidfd >= 0).then(|| {
                // SAFETY: the kernel just created this pidfd for us (CLONE_PIDFD); we own it.
                unsafe { OwnedFd::from_raw_fd(pidfd) }
            });
            Ok(Forked::Parent {
                pid: pid as i32,
                pidfd,
            })
        }
    }
}

/// `_exit(code)`: leaves without running atexit handlers or destructors (child side).
pub(crate) fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions; it never returns.
    unsafe { libc::_exit(code) }
}

/// `execve(path, argv, envp)`; returns only on failure, with the errno.
///
/// `argv` and `envp` must be null-terminated arrays of pointers to NUL-terminated strings that
/// outlive the call (they are checked: the last element must be null).
pub(crate) fn execve(
    path: &CStr,
    argv: &[*const libc::c_char],
    envp: &[*const libc::c_char],
) -> Errno {
    if argv.last().is_none_or(|p| !p.is_null()) || envp.last().is_none_or(|p| !p.is_null()) {
        return Errno::INVAL;
    }
    // SAFETY: path is NUL-terminated; argv/envp are null-terminated arrays of valid C strings
    // (built by the caller from CStrings it keeps alive), as checked above.
    unsafe { libc::execve(path.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::INVAL)
}

/// Marks every descriptor from `first` up close-on-exec, so nothing the caller's other threads
/// opened leaks into the command. Falls back to a bounded `fcntl` loop on kernels without
/// `CLOSE_RANGE_CLOEXEC` (< 5.11).
pub(crate) fn cloexec_from(first: u32) {
    const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
    // SAFETY: close_range only changes descriptor flags of this process; no memory is touched.
    let ret = unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, CLOSE_RANGE_CLOEXEC) };
    if ret != 0 {
        for fd in first as RawFd..4096 {
            // SAFETY: F_SETFD on a descriptor number that may not be open: harmless (EBADF).
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// Brings the loopback interface of the current network namespace up
/// (`SIOCSIFFLAGS lo IFF_UP|IFF_LOOPBACK|IFF_RUNNING`).
pub(crate) fn loopback_up() -> Result<(), Errno> {
    use rustix::net::{AddressFamily, SocketType, socket};
    let sock = socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_UP | libc::IFF_LOOPBACK | libc::IFF_RUNNING) as libc::c_short;
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCSIFFLAGS reads a struct ifreq, which `ifr` is, valid for the call.
    let ret = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCSIFFLAGS,
            &ifr as *const libc::ifreq,
        )
    };
    if ret != 0 {
        return Err(Errno::from_io_error(&io::Error::last_os_error()).unwrap_or(Errno::INVAL));
    }
    Ok(())
}

/// Resets every catchable signal to its default disposition and unblocks all signals, so the
/// command starts as from a fresh login (Rust ignores SIGPIPE at startup; the caller's thread may
/// block signals).
pub(crate) fn reset_signals() {
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing SIG_DFL has no memory-safety preconditions; invalid numbers fail.
        unsafe { libc::signal(sig, libc::SIG_DFL) };
    }
    // SAFETY: an empty, initialised sigset passed to sigprocmask; the old set is not requested.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}

/// The pid [`forward_signal`] relays to (0: none).
static FORWARD_TO: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(0);

extern "C" fn forward_signal(sig: libc::c_int) {
    let pid = FORWARD_TO.load(std::sync::atomic::Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe and touches no memory.
        unsafe { libc::kill(pid, sig) };
    }
}

/// While the re-exec parent waits: SIGTERM and SIGHUP sent to it are relayed to `pid`; SIGINT and
/// SIGQUIT (which a terminal sends to the whole foreground group, the child included) are ignored
/// so the parent outlives the child's own clean-up.
pub(crate) fn relay_signals_to(pid: i32) {
    FORWARD_TO.store(pid, std::sync::atomic::Ordering::Relaxed);
    // SAFETY: the handler only loads an atomic and calls kill (async-signal-safe); SIG_IGN is
    // always valid.
    unsafe {
        let handler = forward_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGTERM, handler);
        libc::signal(libc::SIGHUP, handler);
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGQUIT, libc::SIG_IGN);
    }
}
