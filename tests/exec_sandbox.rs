//! The sandbox as root (CI): output, exit status, overlay effects, isolation, mounts, ids, and
//! that nothing is left behind. The same runs inside an unprivileged user namespace are in
//! `exec_rootless.rs`.

#[path = "exec_common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use common::*;
use kiln::exec::{ExecError, ExitStatus, ExtraMount, Network, RootfsSpec, RunSpec};

macro_rules! setup {
    ($test:expr) => {{
        if skip_unless_root($test) {
            return;
        }
        match Layers::new($test) {
            Some(l) => l,
            None => return,
        }
    }};
}

#[test]
fn echo_hi_streams_stdout() {
    let l = setup!("echo_hi_streams_stdout");
    let mut spec = RunSpec::new(l.rootfs(), vec!["echo".into(), "hi".into()]);
    spec.env = vec!["PATH=/bin".into()];
    let (report, out, err) = run(&spec);
    assert_eq!(report.status, ExitStatus::Code(0));
    assert_eq!(out, "hi\n");
    assert_eq!(err, "");
    assert_eq!(report.tail, vec!["hi".to_string()]);
}

#[test]
fn exit_code_propagates_with_both_streams_and_tail() {
    let l = setup!("exit_code_propagates_with_both_streams_and_tail");
    let (report, out, err) =
        run(&l.sh("echo out; echo err >&2; for i in 1 2 3; do echo line$i; done; exit 7"));
    assert_eq!(report.status, ExitStatus::Code(7));
    assert!(!report.status.success());
    assert_eq!(out, "out\nline1\nline2\nline3\n");
    assert_eq!(err, "err\n");
    // Both streams are in the tail; their relative order is as the pipes delivered them.
    let mut tail = report.tail.clone();
    tail.sort();
    assert_eq!(tail, ["err", "line1", "line2", "line3", "out"]);
}

#[test]
fn signal_death_is_reported_and_command_is_pid_1() {
    let l = setup!("signal_death_is_reported_and_command_is_pid_1");
    let mut spec = l.sh("exec sleep 1000");
    spec.env.push("MARK=signal-test".into());
    let running = kiln::exec::spawn(&spec).unwrap();
    // From the host the command has a host pid; in its own pid namespace it is 1.
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.pid())).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(nspid.split_whitespace().last() == Some("1"), "{nspid}");
    let killer = running.killer();
    let t = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(200));
        killer.kill().unwrap();
    });
    let report = running.wait(std::io::sink(), std::io::sink()).unwrap();
    t.join().unwrap();
    assert_eq!(report.status, ExitStatus::Signal(9));
}

#[test]
fn overlay_upperdir_gets_changes_and_whiteouts_lower_unchanged() {
    let l = setup!("overlay_upperdir_gets_changes_and_whiteouts_lower_unchanged");
    let before = listing(&l.lower);
    let (report, out, err) = run(&l.sh(
        "echo new > /new.txt && rm /data/gone && echo changed > /data/keep \
         && rm -rf /olddir && mkdir /olddir && echo fresh > /olddir/g && cat /data/keep",
    ));
    assert_eq!(report.status, ExitStatus::Code(0), "{out}{err}");
    assert_eq!(out, "changed\n");
    assert_eq!(
        std::fs::read_to_string(l.upper.join("new.txt")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_to_string(l.upper.join("data/keep")).unwrap(),
        "changed\n"
    );
    assert!(
        is_whiteout(&l.upper.join("data/gone")),
        "{:?}",
        listing(&l.upper)
    );
    assert_eq!(
        opaque_xattr(&l.upper.join("olddir")).as_deref(),
        Some("trusted.overlay.opaque=y")
    );
    assert!(!l.upper.join("olddir/f").exists());
    assert_eq!(listing(&l.lower), before, "the lowerdir changed");
    // Every mount point existed in the busybox rootfs except /etc/hosts and /etc/resolv.conf.
    assert_eq!(
        report.stubs,
        vec![PathBuf::from("etc/hosts"), PathBuf::from("etc/resolv.conf")]
    );
    // Nothing of /proc, /dev or the binds reached the upperdir; only /etc for the stubs.
    let mut top: Vec<String> = std::fs::read_dir(&l.upper)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, ["data", "etc", "new.txt", "olddir"]);
}

#[test]
fn stubs_are_reported_parents_first_and_are_all_the_run_added() {
    if skip_unless_root("stubs_are_reported_parents_first_and_are_all_the_run_added") {
        return;
    }
    let Some(bb) = busybox() else {
        skip(
            "stubs_are_reported_parents_first_and_are_all_the_run_added",
            "no busybox",
        );
        return;
    };
    // A bare rootfs: just /bin/busybox and /bin/sh.
    let dir = tempfile::tempdir().unwrap();
    let lower = dir.path().join("lower");
    std::fs::create_dir_all(lower.join("bin")).unwrap();
    std::fs::copy(&bb, lower.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", lower.join("bin/sh")).unwrap();
    let (upper, work) = (dir.path().join("upper"), dir.path().join("work"));
    std::fs::create_dir(&upper).unwrap();
    std::fs::create_dir(&work).unwrap();
    let rootfs = RootfsSpec::Overlay {
        lowerdirs: vec![lower],
        upperdir: upper.clone(),
        workdir: work,
    };
    let mut spec = RunSpec::new(
        rootfs,
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "/bin/busybox cat /etc/hostname".into(),
        ],
    );
    spec.hostname = "bare".into();
    spec.mounts = vec![ExtraMount::Tmpfs {
        dst: "/run/cache".into(),
        size: Some(1 << 20),
    }];
    let (report, out, _) = run(&spec);
    assert_eq!(report.status, ExitStatus::Code(0));
    assert_eq!(out, "bare\n");
    let stubs: Vec<String> = report
        .stubs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        stubs,
        [
            "proc",
            "dev",
            "etc",
            "etc/hosts",
            "etc/resolv.conf",
            "etc/hostname",
            "run",
            "run/cache"
        ]
    );
    // Removing them leaves the upperdir as if no mount had been made.
    for s in &report.stubs {
        let m = std::fs::symlink_metadata(upper.join(s)).unwrap();
        assert!(
            m.is_dir() || m.len() == 0,
            "{s:?} is a directory or an empty file"
        );
    }
    report.remove_stubs(&upper).unwrap();
    assert_eq!(listing(&upper), Vec::<String>::new());
}

#[test]
fn dir_rootfs_runs_in_place() {
    if skip_unless_root("dir_rootfs_runs_in_place") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs");
    if !busybox_rootfs(&root, "dir_rootfs_runs_in_place") {
        return;
    }
    let (report, out, _) = run(&sh_spec(
        RootfsSpec::Dir(root.clone()),
        "echo made > /made-here && rm /data/gone && ls /data",
    ));
    assert_eq!(report.status, ExitStatus::Code(0));
    assert_eq!(out, "keep\n");
    assert_eq!(
        std::fs::read_to_string(root.join("made-here")).unwrap(),
        "made\n"
    );
    assert!(!root.join("data/gone").exists());
    assert_eq!(
        report.stubs,
        vec![PathBuf::from("etc/hosts"), PathBuf::from("etc/resolv.conf")]
    );
}

#[test]
fn isolation_files_and_processes() {
    let l = setup!("isolation_files_and_processes");
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("host-secret");
    std::fs::write(&marker, "secret").unwrap();
    let m = marker.display();
    let script = format!(
        "test -e {m} && echo VISIBLE || echo HIDDEN; echo pid=$$; \
         tr '\\0' ' ' < /proc/1/cmdline; echo; \
         ls /proc | grep -E '^[0-9]+$' | sort -n | tr '\\n' ' '; echo; \
         mkdir -p {d} && echo x > {m} && echo wrote-inside",
        d = marker_dir.path().display()
    );
    let (report, out, err) = run(&l.sh(&script));
    assert_eq!(report.status, ExitStatus::Code(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "HIDDEN");
    assert_eq!(lines[1], "pid=1");
    assert!(lines[2].starts_with("sh -c"), "pid 1 is {:?}", lines[2]);
    // Only the shell (1) and its own children (ls, grep, sort, tr…) exist.
    let pids: Vec<u32> = lines[3]
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids[0], 1);
    assert!(
        pids.iter().all(|&p| p < 20),
        "host processes visible: {pids:?}"
    );
    assert_eq!(lines[4], "wrote-inside");
    // The write went to the upperdir, not to the host file.
    assert_eq!(std::fs::read_to_string(&marker).unwrap(), "secret");
    let inside = l.upper.join(marker.strip_prefix("/").unwrap());
    assert_eq!(std::fs::read_to_string(inside).unwrap(), "x\n");
}

/// A one-shot TCP server on the host's 127.0.0.1: answers "pong" to one connection.
fn pong_server() -> (u16, std::thread::JoinHandle<Option<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, _)) => {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
                        .unwrap();
                    let mut buf = [0u8; 64];
                    let n = s.read(&mut buf).unwrap_or(0);
                    s.write_all(b"pong\n").unwrap();
                    return Some(String::from_utf8_lossy(&buf[..n]).into_owned());
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(20)),
            }
        }
        None
    });
    (port, h)
}

#[test]
fn network_none_cannot_reach_host_loopback_host_network_can() {
    let l = setup!("network_none_cannot_reach_host_loopback_host_network_can");
    let (port, server) = pong_server();
    let probe = format!("echo ping | nc -w 5 127.0.0.1 {port}");

    let mut none = l.sh(&format!("ip -o link | cut -d: -f2 | tr -d ' ' | tr '\\n' ,; ip -o link show lo | grep -q UP && echo lo-up; {probe}"));
    none.network = Network::None;
    let (report, out, _) = run(&none);
    assert_ne!(
        report.status,
        ExitStatus::Code(0),
        "reached the host: {out}"
    );
    assert!(out.starts_with("lo,lo-up\n"), "{out:?}");
    assert!(!out.contains("pong"));

    let (report, out, err) = run(&l.sh(&probe));
    assert_eq!(report.status, ExitStatus::Code(0), "{out}{err}");
    assert_eq!(out, "pong\n");
    assert_eq!(server.join().unwrap().as_deref(), Some("ping\n"));
}

#[test]
fn nothing_left_behind_mounts_or_processes() {
    let l = setup!("nothing_left_behind_mounts_or_processes");
    let before = mountinfo();
    let (report, out, _) = run(&l.sh("sleep 4242 & sleep 4243 & echo started"));
    assert_eq!(report.status, ExitStatus::Code(0));
    assert_eq!(out, "started\n");
    // The background sleeps died with pid 1.
    assert_eq!(processes_matching("sleep 4242"), vec![]);
    assert_eq!(processes_matching("sleep 4243"), vec![]);
    // No mount of this run appeared in our namespace.
    let new: Vec<String> = mountinfo()
        .into_iter()
        .filter(|m| !before.contains(m))
        .collect();
    let tmp = l.dir.path().display().to_string();
    assert!(
        !new.iter()
            .any(|m| m.contains(&tmp) || m.contains("kiln-run-") || m.contains(" overlay ")),
        "mounts left behind: {new:#?}"
    );
    // A failing run leaves nothing either.
    let (report, _, _) = run(&l.sh("sleep 4244 & exit 3"));
    assert_eq!(report.status, ExitStatus::Code(3));
    assert_eq!(processes_matching("sleep 4244"), vec![]);
    let new: Vec<String> = mountinfo()
        .into_iter()
        .filter(|m| !before.contains(m))
        .collect();
    assert!(
        !new.iter()
            .any(|m| m.contains(&tmp) || m.contains(" overlay ")),
        "{new:#?}"
    );
    // And no child process of ours is a sandbox (other tests may run their own meanwhile; none of
    // them is a sleep 424x).
    for pid in children_of_self() {
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmd).contains("424"),
            "leftover child {pid}"
        );
    }
}

#[test]
fn dev_proc_and_etc_files() {
    let l = setup!("dev_proc_and_etc_files");
    let resolv = l.dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.53\n").unwrap();
    let mut spec = l.sh("ls /dev | tr '\\n' ' '; echo; \
         echo x > /dev/null && echo null-ok; \
         head -c 5 /dev/zero | wc -c; head -c 5 /dev/urandom | wc -c; \
         (echo x > /dev/full) 2>/dev/null || echo full-enospc; \
         for f in fd stdout ptmx; do readlink /dev/$f; done | tr '\\n' ' '; echo; \
         test -c /dev/pts/ptmx && echo pts-ok; \
         echo shm > /dev/shm/x && cat /dev/shm/x; \
         wc -c < /proc/timer_list; ls /proc/acpi | wc -l; \
         (echo 1 > /proc/sys/kernel/ns_last_pid) 2>/dev/null || echo proc-sys-ro; \
         hostname; cat /etc/hostname; cat /etc/resolv.conf; grep -c localhost /etc/hosts; \
         (echo x >> /etc/hosts) 2>/dev/null || echo hosts-ro; \
         (echo x >> /etc/hostname) 2>/dev/null || echo hostname-ro; umask");
    spec.hostname = "kiln-test".into();
    spec.resolv_conf = Some(resolv);
    let (report, out, err) = run(&spec);
    assert_eq!(report.status, ExitStatus::Code(0), "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    let devs: Vec<&str> = lines[0].split_whitespace().collect();
    for d in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd", "stdin",
        "stdout", "stderr",
    ] {
        assert!(devs.contains(&d), "/dev lacks {d}: {devs:?}");
    }
    assert_eq!(
        &lines[1..],
        [
            "null-ok",
            "5",
            "5",
            "full-enospc",
            "/proc/self/fd /proc/self/fd/1 pts/ptmx ",
            "pts-ok",
            "shm",
            "0",
            "0",
            "proc-sys-ro",
            "kiln-test",
            "kiln-test",
            "nameserver 192.0.2.53",
            "2",
            "hosts-ro",
            "hostname-ro",
            "0022",
        ]
    );
}

#[test]
fn user_groups_cwd_and_capabilities() {
    let l = setup!("user_groups_cwd_and_capabilities");
    let caps = "grep -E '^Cap(Eff|Bnd)' /proc/self/status | tr '\\t\\n' '  '; echo";
    let (report, out, _) = run(&l.sh(caps));
    assert_eq!(report.status, ExitStatus::Code(0));
    // Docker's default set, and nothing else, for root.
    assert_eq!(out, "CapEff: 00000000a80425fb CapBnd: 00000000a80425fb \n");

    let mut spec = l.sh(&format!(
        "id -u; id -g; id -G; umask; pwd; {caps}; touch /forbidden 2>/dev/null && echo WROTE || echo DENIED"
    ));
    spec.uid = 1000;
    spec.gid = 1000;
    spec.groups = vec![10, 20];
    spec.cwd = "/work/dir/".into();
    let (report, out, err) = run(&spec);
    assert_eq!(report.status, ExitStatus::Code(0), "{out}{err}");
    assert_eq!(
        out,
        "1000\n1000\n1000 10 20\n0022\n/work/dir\nCapEff: 0000000000000000 CapBnd: 00000000a80425fb \nDENIED\n"
    );
    // The working directory was created (and is kept: it is not a stub).
    assert!(l.upper.join("work/dir").is_dir());
    assert!(!report.stubs.iter().any(|s| s.starts_with("work")));
}

#[test]
fn command_is_found_in_the_containers_path_not_the_hosts() {
    let l = setup!("command_is_found_in_the_containers_path_not_the_hosts");
    let tools = l.lower.join("opt/tools");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::write(
        tools.join("hello"),
        "#!/bin/sh\necho hello-from-container \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(tools.join("hello"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut spec = RunSpec::new(l.rootfs(), vec!["hello".into(), "a b".into()]);
    spec.env = vec!["PATH=/nonexistent:/opt/tools:/bin".into()];
    let (report, out, _) = run(&spec);
    assert_eq!(report.status, ExitStatus::Code(0));
    assert_eq!(out, "hello-from-container a b\n");

    // `cargo` exists on the host but not in the rootfs.
    let mut spec = RunSpec::new(l.rootfs(), vec!["cargo".into()]);
    spec.env = vec!["PATH=/usr/local/bin:/usr/bin:/bin".into()];
    match kiln::exec::run(&spec, std::io::sink(), std::io::sink()) {
        Err(ExecError::Exec {
            program,
            reason,
            not_found,
        }) => {
            assert_eq!(program, "cargo");
            assert!(not_found);
            assert!(
                reason.contains("not found in PATH (/usr/local/bin:/usr/bin:/bin)"),
                "{reason}"
            );
        }
        other => panic!("expected an exec error, got {other:?}"),
    }
    let spec = RunSpec::new(l.rootfs(), vec!["/no/such/tool".into()]);
    let err = kiln::exec::run(&spec, std::io::sink(), std::io::sink()).unwrap_err();
    assert!(
        err.to_string().contains("No such file or directory"),
        "{err}"
    );
}

#[test]
fn extra_mounts_bind_ro_rw_and_tmpfs() {
    let l = setup!("extra_mounts_bind_ro_rw_and_tmpfs");
    let ro = l.dir.path().join("ro");
    let rw = l.dir.path().join("rw");
    std::fs::create_dir(&ro).unwrap();
    std::fs::create_dir(&rw).unwrap();
    std::fs::write(ro.join("input"), "from-host\n").unwrap();
    let mut spec = l.sh(
        "cat /mnt/ro/input; (echo x > /mnt/ro/new) 2>/dev/null || echo ro-denied; \
         echo out > /mnt/rw/result; echo cached > /cache/c; cat /cache/c",
    );
    spec.mounts = vec![
        ExtraMount::Bind {
            src: ro.clone(),
            dst: "/mnt/ro".into(),
            readonly: true,
        },
        ExtraMount::Bind {
            src: rw.clone(),
            dst: "/mnt/rw".into(),
            readonly: false,
        },
        ExtraMount::Tmpfs {
            dst: "/cache".into(),
            size: None,
        },
    ];
    let (report, out, err) = run(&spec);
    assert_eq!(report.status, ExitStatus::Code(0), "{out}{err}");
    assert_eq!(out, "from-host\nro-denied\ncached\n");
    assert!(!ro.join("new").exists());
    assert_eq!(std::fs::read_to_string(rw.join("result")).unwrap(), "out\n");
    // The mount points are stubs; what was written under them is not in the upperdir.
    let stubs: Vec<String> = report
        .stubs
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(
        stubs,
        [
            "etc/hosts",
            "etc/resolv.conf",
            "mnt",
            "mnt/ro",
            "mnt/rw",
            "cache"
        ]
    );
    assert_eq!(std::fs::read_dir(l.upper.join("cache")).unwrap().count(), 0);
    assert_eq!(
        std::fs::read_dir(l.upper.join("mnt/rw")).unwrap().count(),
        0
    );
    // A stub parent the command wrote into is kept; the rest goes.
    std::fs::write(l.upper.join("mnt/note"), "kept").unwrap();
    report.remove_stubs(&l.upper).unwrap();
    assert!(!l.upper.join("mnt/ro").exists() && !l.upper.join("cache").exists());
    assert!(!l.upper.join("etc/hosts").exists());
    assert_eq!(
        std::fs::read_to_string(l.upper.join("mnt/note")).unwrap(),
        "kept"
    );
}

#[test]
fn output_is_streamed_live_and_not_clipped() {
    let l = setup!("output_is_streamed_live_and_not_clipped");
    // The command waits for a file that the test creates only after it has *received* "first":
    // if output were buffered until exit, this would time out (exit 3).
    let sync = l.dir.path().join("sync");
    std::fs::create_dir(&sync).unwrap();
    struct GoWriter {
        seen: Vec<u8>,
        go: PathBuf,
    }
    impl Write for GoWriter {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.seen.extend_from_slice(b);
            if self.seen.starts_with(b"first\n") && !self.go.exists() {
                std::fs::write(&self.go, "")?;
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut spec = l.sh(
        "echo first; i=0; while [ ! -e /sync/go ]; do sleep 0.05; i=$((i+1)); \
         [ $i -gt 600 ] && exit 3; done; echo second; seq 1 200000",
    );
    spec.mounts = vec![ExtraMount::Bind {
        src: sync.clone(),
        dst: "/sync".into(),
        readonly: true,
    }];
    let mut w = GoWriter {
        seen: Vec::new(),
        go: sync.join("go"),
    };
    let report = kiln::exec::run(&spec, &mut w, std::io::sink()).unwrap();
    assert_eq!(report.status, ExitStatus::Code(0));
    let out = String::from_utf8(w.seen).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2 + 200000);
    assert_eq!(lines[..3], ["first", "second", "1"]);
    assert_eq!(lines.last(), Some(&"200000"));
    assert_eq!(report.tail.len(), kiln::exec::sandbox::TAIL_LINES);
    assert_eq!(report.tail.last().map(String::as_str), Some("200000"));
}

#[test]
fn several_lowerdirs_stack_top_first() {
    let l = setup!("several_lowerdirs_stack_top_first");
    let top = l.dir.path().join("top");
    std::fs::create_dir_all(top.join("data")).unwrap();
    std::fs::write(top.join("data/keep"), "from-top\n").unwrap();
    let rootfs = RootfsSpec::Overlay {
        lowerdirs: vec![top, l.lower.clone()],
        upperdir: l.upper.clone(),
        workdir: l.work.clone(),
    };
    let (report, out, _) = run(&sh_spec(rootfs, "cat /data/keep /data/gone"));
    assert_eq!(report.status, ExitStatus::Code(0));
    assert_eq!(out, "from-top\ngone\n");
}

#[test]
fn invalid_specs_are_refused_before_anything_runs() {
    let l = setup!("invalid_specs_are_refused_before_anything_runs");
    let spec = RunSpec::new(l.rootfs(), vec![]);
    assert!(matches!(
        kiln::exec::run(&spec, std::io::sink(), std::io::sink()),
        Err(ExecError::InvalidSpec(_))
    ));
    let spec = RunSpec::new(
        RootfsSpec::Overlay {
            lowerdirs: vec![l.lower.clone()],
            upperdir: l.dir.path().join("missing"),
            workdir: l.work.clone(),
        },
        vec!["true".into()],
    );
    let err = kiln::exec::run(&spec, std::io::sink(), std::io::sink()).unwrap_err();
    assert!(err.to_string().contains("upperdir"), "{err}");
}

#[test]
fn root_outside_a_user_namespace_needs_no_reexec() {
    if skip_unless_root("root_outside_a_user_namespace_needs_no_reexec") {
        return;
    }
    if kiln::exec::userns::in_user_namespace() {
        skip(
            "root_outside_a_user_namespace_needs_no_reexec",
            "already in a user namespace",
        );
        return;
    }
    assert_eq!(
        kiln::exec::ensure_userns().unwrap(),
        kiln::exec::UsernsState::RealRoot
    );
}

#[test]
fn setup_errors_name_the_step_and_the_kernels_reason() {
    let l = setup!("setup_errors_name_the_step_and_the_kernels_reason");
    if !std::path::Path::new("/dev/shm").is_dir() {
        skip(
            "setup_errors_name_the_step_and_the_kernels_reason",
            "no /dev/shm",
        );
        return;
    }
    // A workdir on another filesystem than the upperdir: the kernel refuses the overlay.
    let other_fs = tempfile::tempdir_in("/dev/shm").unwrap();
    let spec = RunSpec::new(
        RootfsSpec::Overlay {
            lowerdirs: vec![l.lower.clone()],
            upperdir: l.upper.clone(),
            workdir: other_fs.path().to_path_buf(),
        },
        vec!["/bin/true".into()],
    );
    match kiln::exec::run(&spec, std::io::sink(), std::io::sink()) {
        Err(e @ ExecError::Setup { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.starts_with("sandbox setup: create the overlay"),
                "{msg}"
            );
            assert!(msg.contains(&l.upper.display().to_string()), "{msg}");
            assert!(
                msg.contains(&other_fs.path().display().to_string()),
                "{msg}"
            );
            // With the kernel's reason when it gives one in the fs-context log, else a pointer.
            let ExecError::Setup { detail, .. } = e else {
                unreachable!()
            };
            assert!(detail.is_some_and(|d| d.contains("overlay")), "{msg}");
        }
        other => panic!("expected a setup error, got {other:?}"),
    }
}

#[test]
fn concurrent_runs_do_not_interfere() {
    if skip_unless_root("concurrent_runs_do_not_interfere") {
        return;
    }
    let handles: Vec<_> = (0..6)
        .map(|i| {
            std::thread::spawn(move || {
                let l = Layers::new("concurrent_runs_do_not_interfere")?;
                let mut spec = l.sh(&format!(
                    "echo run{i} > /mine; sleep 0.2; cat /mine; exit {i}"
                ));
                spec.network = if i % 2 == 0 {
                    Network::None
                } else {
                    Network::Host
                };
                let (report, out, _) = run(&spec);
                assert_eq!(report.status, ExitStatus::Code(i));
                assert_eq!(out, format!("run{i}\n"));
                Some(())
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn etc_files_that_are_symlinks_in_the_image() {
    let l = setup!("etc_files_that_are_symlinks_in_the_image");
    // A dangling link (as systemd images ship resolv.conf) and a link to a real file.
    std::os::unix::fs::symlink(
        "../run/systemd/resolve/stub-resolv.conf",
        l.lower.join("etc/resolv.conf"),
    )
    .unwrap();
    std::fs::write(l.lower.join("etc/hosts.real"), "image hosts\n").unwrap();
    std::os::unix::fs::symlink("hosts.real", l.lower.join("etc/hosts")).unwrap();
    let resolv = l.dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 192.0.2.1\n").unwrap();
    let mut spec = l.sh("cat /etc/resolv.conf; head -1 /etc/hosts; head -1 /etc/hosts.real");
    spec.resolv_conf = Some(resolv);
    let (report, out, err) = run(&spec);
    assert_eq!(report.status, ExitStatus::Code(0), "{out}{err}");
    // Through the symlink to an existing file, the mount covers the file it names.
    assert_eq!(
        out,
        "nameserver 192.0.2.1\n127.0.0.1\tlocalhost kiln\n127.0.0.1\tlocalhost kiln\n"
    );
    assert_eq!(report.stubs, Vec::<PathBuf>::new());
    assert_eq!(listing(&l.upper), Vec::<String>::new());
    assert_eq!(
        std::fs::read_to_string(l.lower.join("etc/hosts.real")).unwrap(),
        "image hosts\n"
    );
}

#[test]
fn run_then_diff_the_upperdir_with_the_layer_differ() {
    let l = setup!("run_then_diff_the_upperdir_with_the_layer_differ");
    let mut spec = l.sh("echo new > /new.txt && rm /data/gone && rm -rf /olddir && mkdir /olddir");
    spec.mounts = vec![ExtraMount::Tmpfs {
        dst: "/run/cache".into(),
        size: None,
    }];
    let (report, _, _) = run(&spec);
    assert_eq!(report.status, ExitStatus::Code(0));
    report.remove_stubs(&l.upper).unwrap();
    let entries = kiln::layer::diff_upperdir(
        &l.upper,
        std::slice::from_ref(&l.lower),
        &kiln::layer::DiffOptions::default(),
    )
    .unwrap();
    let paths: Vec<String> = entries
        .iter()
        .map(|e| e.path.display().to_string())
        .collect();
    // Only what the command did: no /etc/hosts, /etc/resolv.conf, /run/cache, /proc or /dev.
    assert_eq!(
        paths,
        [
            "data",
            "data/.wh.gone",
            "new.txt",
            "olddir",
            "olddir/.wh..wh..opq"
        ]
    );
}
