//! Rootless by re-exec (design decision 2): [`ensure_userns`].
//!
//! # What happens for an ordinary user
//!
//! 1. The parent (the `kiln` the user started) decides the id maps: when `/etc/subuid` and
//!    `/etc/subgid` give the user (by name or uid) at least one range each and `newuidmap` /
//!    `newgidmap` are installed, a full map — container id 0 → the user's uid/gid, 1..=N → the
//!    ranges in file order. Otherwise a single-id map (0 → the user) and one warning on stderr:
//!    ownership other than root is then squashed (files of other owners in layers become root's,
//!    `chown` to another id fails).
//! 2. It creates the child with `clone3(CLONE_NEWUSER | CLONE_NEWNS)`. The child closes its copy
//!    of a pipe's write end and blocks reading the pipe: it must not `execve` before its maps
//!    exist, or it would lose the capabilities the new namespace gives it (exec recomputes them
//!    from the uid, which is unmapped until then).
//! 3. The parent writes the maps: `newuidmap PID 0 UID 1 1 START COUNT…` and the same with
//!    `newgidmap` (setuid helpers from Debian's `uidmap`), or for the single-id map it writes
//!    `/proc/PID/setgroups` = `deny`, `uid_map` = `0 UID 1`, `gid_map` = `0 GID 1` itself. Then it
//!    writes one byte into the pipe.
//! 4. The child wakes and executes `/proc/self/exe` with the same arguments and environment plus
//!    `_KILN_IN_USERNS=1`; the new image starts as root of the namespace with full capabilities
//!    there, calls `ensure_userns` again, which sees it is inside and returns.
//! 5. The parent waits for the child and exits with its status (`128 + n` if it was killed by
//!    signal `n`). While it waits it relays SIGTERM and SIGHUP to the child and ignores SIGINT and
//!    SIGQUIT (the terminal sends those to the child too). The child gets SIGKILL if the parent
//!    dies (`PR_SET_PDEATHSIG`).
//!
//! As real root (uid 0 in the initial user namespace) nothing happens: the same code then runs
//! with host ids. A process that already is root of some user namespace (for example started by
//! `unshare --user --map-root-user`) is also left as it is.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::process::Command;

use nix::libc;
use rustix::io::Errno;
use rustix::process::{Signal, WaitId, WaitIdOptions};

use super::ExecError;
use super::sys::{self, Forked};

/// Set in the environment of the re-executed process.
pub const IN_USERNS_ENV: &str = "_KILN_IN_USERNS";

/// Where the process stands after [`ensure_userns`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsernsState {
    /// Real root in the initial user namespace: nothing was done; ids are host ids.
    RealRoot,
    /// Root inside a user namespace whose maps cover this many uids and gids (1 each: a single-id
    /// map, where every id but root is squashed).
    UserNamespace { mapped_uids: u64, mapped_gids: u64 },
}

impl UsernsState {
    /// `true` for a single-id map: only root exists inside, so `chown` to other ids fails and
    /// layers' other owners cannot be represented.
    pub fn single_id(&self) -> bool {
        matches!(self, UsernsState::UserNamespace { mapped_uids, mapped_gids } if *mapped_uids <= 1 || *mapped_gids <= 1)
    }
}

/// One range of subordinate ids from `/etc/subuid` or `/etc/subgid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIdRange {
    pub start: u32,
    pub count: u32,
}

/// The first start at or above 100000, in steps of `count` (as useradd allots them), of a range
/// of `count` ids that overlaps no range of any user in the given `/etc/subuid`/`/etc/subgid`
/// texts: what the no-subordinate-ids hint can suggest without clashing with another user.
pub fn free_subid_range(files: &[&str], count: u32) -> u32 {
    let taken: Vec<(u64, u64)> = files
        .iter()
        .flat_map(|text| text.lines())
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| {
            let mut f = line.trim().split(':');
            let (_, start, n) = (f.next()?, f.next()?, f.next()?);
            let (start, n) = (start.parse::<u64>().ok()?, n.parse::<u64>().ok()?);
            Some((start, start + n))
        })
        .collect();
    let mut start = 100_000u64;
    let count = count.max(1) as u64;
    while start + count <= u32::MAX as u64 {
        let end = start + count;
        match taken
            .iter()
            .filter(|(s, e)| *s < end && start < *e)
            .map(|(_, e)| *e)
            .max()
        {
            None => return start as u32,
            // Past the clash, rounded up to the next multiple of `count` above 100000.
            Some(e) => start = 100_000 + (e.saturating_sub(100_000)).div_ceil(count) * count,
        }
    }
    100_000
}

/// The ranges of `user` (matched by name, or by numeric `id`) in the text of an `/etc/subuid`
/// or `/etc/subgid` file (`name:start:count` lines), in file order. Malformed lines and empty
/// ranges are skipped.
pub fn parse_subid(text: &str, user: &str, id: u32) -> Vec<SubIdRange> {
    let id = id.to_string();
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let mut f = line.split(':');
            let (who, start, count) = (f.next()?, f.next()?, f.next()?);
            if f.next().is_some() || (who != user && who != id) {
                return None;
            }
            let r = SubIdRange {
                start: start.trim().parse().ok()?,
                count: count.trim().parse().ok()?,
            };
            (r.count > 0 && r.start.checked_add(r.count - 1).is_some()).then_some(r)
        })
        .collect()
}

/// `true` when this process is not in the initial user namespace (its uid map is not the
/// identity over all 2³²−1 ids). Overlay mounts then need `userxattr`.
pub fn in_user_namespace() -> bool {
    match std::fs::read_to_string("/proc/self/uid_map") {
        Ok(m) => {
            let lines: Vec<Vec<&str>> = m.lines().map(|l| l.split_whitespace().collect()).collect();
            !(lines.len() == 1 && lines[0] == ["0", "0", "4294967295"])
        }
        Err(_) => false,
    }
}

/// Total ids covered by a `/proc/self/{uid,gid}_map`.
fn mapped_count(file: &str) -> u64 {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok())
        .sum()
}

/// Makes sure the process can build: see the module docs. Call it first thing in `main`,
/// before any work; in the parent of a re-exec it does not return (it exits with the child's
/// status).
pub fn ensure_userns() -> Result<UsernsState, ExecError> {
    let euid = rustix::process::geteuid();
    if euid.is_root() {
        if !in_user_namespace() {
            return Ok(UsernsState::RealRoot);
        }
        if std::env::var_os(IN_USERNS_ENV).is_some() {
            // We are the re-executed child: die with the parent that waits for us.
            let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
        }
        return Ok(UsernsState::UserNamespace {
            mapped_uids: mapped_count("/proc/self/uid_map"),
            mapped_gids: mapped_count("/proc/self/gid_map"),
        });
    }
    if std::env::var_os(IN_USERNS_ENV).is_some() {
        return Err(ExecError::Userns(format!(
            "{IN_USERNS_ENV} is set but this process is not root of its user namespace (uid {}); refusing to re-exec again",
            euid.as_raw()
        )));
    }
    let code = reexec_in_userns()?;
    std::process::exit(code)
}

/// The maps the parent will write.
enum Maps {
    Full {
        newuidmap: PathBuf,
        newgidmap: PathBuf,
        uids: Vec<SubIdRange>,
        gids: Vec<SubIdRange>,
    },
    Single {
        reason: String,
    },
}

fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn plan_maps(uid: u32, user: &str) -> Maps {
    let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
    let uids = parse_subid(&read("/etc/subuid"), user, uid);
    let gids = parse_subid(&read("/etc/subgid"), user, uid);
    if uids.is_empty() || gids.is_empty() {
        return Maps::Single {
            reason: format!(
                "user {user} has no subordinate id range in /etc/subuid and /etc/subgid"
            ),
        };
    }
    match (find_tool("newuidmap"), find_tool("newgidmap")) {
        (Some(newuidmap), Some(newgidmap)) => Maps::Full {
            newuidmap,
            newgidmap,
            uids,
            gids,
        },
        _ => Maps::Single {
            reason: "newuidmap/newgidmap are not installed (Debian: apt-get install uidmap)".into(),
        },
    }
}

/// `PID 0 ID 1 1 START COUNT [next START COUNT]…` for newuidmap/newgidmap.
fn map_args(pid: i32, own: u32, ranges: &[SubIdRange]) -> Vec<String> {
    let mut args = vec![pid.to_string(), "0".into(), own.to_string(), "1".into()];
    let mut next: u64 = 1;
    for r in ranges {
        args.extend([next.to_string(), r.start.to_string(), r.count.to_string()]);
        next += u64::from(r.count);
    }
    args
}

fn write_maps(pid: i32, uid: u32, gid: u32, maps: &Maps) -> Result<(), ExecError> {
    match maps {
        Maps::Full {
            newuidmap,
            newgidmap,
            uids,
            gids,
        } => {
            for (tool, own, ranges) in [(newuidmap, uid, uids), (newgidmap, gid, gids)] {
                let args = map_args(pid, own, ranges);
                let out = Command::new(tool)
                    .args(&args)
                    .output()
                    .map_err(|e| ExecError::Userns(format!("run {}: {e}", tool.display())))?;
                if !out.status.success() {
                    return Err(ExecError::Userns(format!(
                        "{} {} failed ({}): {}",
                        tool.display(),
                        args.join(" "),
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )));
                }
            }
        }
        Maps::Single { .. } => {
            for (file, content) in [
                ("setgroups", "deny".to_string()),
                ("uid_map", format!("0 {uid} 1\n")),
                ("gid_map", format!("0 {gid} 1\n")),
            ] {
                let path = format!("/proc/{pid}/{file}");
                std::fs::write(&path, content)
                    .map_err(|e| ExecError::sys(format!("write {path}"), e))?;
            }
        }
    }
    Ok(())
}

/// The parent side: make the child, map it, let it exec, wait, return its exit code.
fn reexec_in_userns() -> Result<i32, ExecError> {
    let uid = rustix::process::getuid().as_raw();
    let gid = rustix::process::getgid().as_raw();
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| uid.to_string());
    let maps = plan_maps(uid, &user);
    if let Maps::Single { reason } = &maps {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let start = free_subid_range(&[&read("/etc/subuid"), &read("/etc/subgid")], 65536);
        let end = start as u64 + 65535;
        eprintln!(
            "kiln: warning: {reason}; using a single-id user namespace (only root is mapped): \
             file ownership other than root is squashed to root and chown to other ids fails. \
             Add ranges with `usermod --add-subuids {start}-{end} --add-subgids {start}-{end} {user}`."
        );
    }

    // Everything the child needs, prepared before clone3.
    let to_c = |s: OsString| CString::new(s.into_vec()).ok();
    let args: Vec<CString> = std::env::args_os().filter_map(to_c).collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != IN_USERNS_ENV)
        .filter_map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.as_bytes());
            CString::new(kv).ok()
        })
        .collect();
    env.push(CString::new(format!("{IN_USERNS_ENV}=1")).expect("no NUL"));
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    let exe = c"/proc/self/exe";

    let (sync_r, sync_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| ExecError::sys("pipe", e.into()))?;
    let flags = (libc::CLONE_NEWUSER | libc::CLONE_NEWNS) as u64;
    // SAFETY: the child branch only closes a descriptor, sets its death signal, reads one byte
    // and execs the prepared argv/envp (or _exits): system calls only, no allocation.
    let forked = unsafe { sys::clone3(flags, true) }.map_err(|e| {
        ExecError::Userns(format!(
            "cannot create a user namespace (clone3 CLONE_NEWUSER|CLONE_NEWNS): {e}; \
             are unprivileged user namespaces enabled (sysctl kernel.unprivileged_userns_clone, \
             user.max_user_namespaces, AppArmor's apparmor_restrict_unprivileged_userns)?"
        ))
    })?;
    let (pid, pidfd) = match forked {
        Forked::Child => {
            drop(sync_w);
            let _ = rustix::process::set_parent_process_death_signal(Some(Signal::KILL));
            let mut byte = [0u8; 1];
            loop {
                match rustix::io::read(&sync_r, &mut byte[..]) {
                    Ok(1) if byte[0] == 1 => break,
                    Err(Errno::INTR) => continue,
                    _ => sys::exit_now(1),
                }
            }
            sys::reset_signals();
            let _ = sys::execve(exe, &argv, &envp);
            let _ = rustix::io::write(
                rustix::stdio::stderr(),
                b"kiln: re-exec of /proc/self/exe in the user namespace failed\n",
            );
            sys::exit_now(127)
        }
        Forked::Parent { pid, pidfd } => (pid, pidfd),
    };
    drop(sync_r);
    let pidfd = pidfd.ok_or_else(|| ExecError::Userns("clone3 returned no pidfd".into()))?;
    let wait = || loop {
        match rustix::process::waitid(
            WaitId::PidFd(rustix::fd::AsFd::as_fd(&pidfd)),
            WaitIdOptions::EXITED,
        ) {
            Ok(Some(st)) => {
                return match (st.exit_status(), st.terminating_signal()) {
                    (_, Some(sig)) => 128 + sig,
                    (Some(code), None) => code,
                    (None, None) => 1,
                };
            }
            Ok(None) | Err(Errno::INTR) => continue,
            Err(_) => return 1,
        }
    };
    if let Err(e) = write_maps(pid, uid, gid, &maps) {
        drop(sync_w); // the child sees EOF and exits
        wait();
        return Err(e);
    }
    rustix::io::write(&sync_w, &[1u8])
        .map_err(|e| ExecError::sys("wake the namespaced child", e.into()))?;
    drop(sync_w);
    sys::relay_signals_to(pid);
    Ok(wait())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_suggested_subid_range_is_free() {
        assert_eq!(free_subid_range(&["", ""], 65536), 100_000);
        // useradd's first range is taken in one file: the next block.
        let uid = "kiln-test:100000:65536\n";
        assert_eq!(free_subid_range(&[uid, ""], 65536), 165_536);
        // An odd range elsewhere pushes past its end, to a block boundary.
        let gid = "a:165536:10\nb:300000:5\n";
        assert_eq!(free_subid_range(&[uid, gid], 65536), 231_072);
        assert_eq!(free_subid_range(&[uid, gid], 1000), 166_000);
        // Comments and malformed lines take nothing.
        assert_eq!(free_subid_range(&["# x:100000:9\nbad\n"], 65536), 100_000);
    }
}
