//! The host's view of what a build left behind: processes and mounts.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

/// Processes (other than this one) whose command line contains `needle`.
pub fn procs_with(needle: &str) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) || name == me {
            continue;
        }
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(needle) {
            out.push(format!("{name}: {cmd}"));
        }
    }
    out
}

/// Waits up to 3 s for no process to match `needle`; the ones left.
pub fn procs_left(needle: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let left = procs_with(needle);
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines of this process's mountinfo mentioning kiln or one of `paths`.
pub fn kiln_mounts(paths: &[&Path]) -> BTreeSet<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains("kiln") || paths.iter().any(|p| l.contains(&*p.to_string_lossy())))
        .map(str::to_string)
        .collect()
}
