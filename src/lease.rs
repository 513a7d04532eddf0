//! Which kiln process owns a scratch directory in a store.
//!
//! Every process that makes scratch directories in a store (stage filesystems and RUN scratch in
//! `kiln/tmp/`, RUN upper directories in `snapshots/`) first takes a *lease*: the file
//! `kiln/leases/<token>.lock`, flocked exclusively for the rest of the process's life. The
//! directories it makes carry the token in their names (`<prefix><token>-<random>`). The kernel
//! drops the flock when the process dies, however it dies, so any later kiln can tell the
//! leftovers of a killed build from the directories of a running one without a grace period or a
//! pid that may have been reused.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::SystemTime;

const LEASES: &str = "kiln/leases";

/// This process's lease in each store it has used: the token and the flocked file.
fn held() -> &'static Mutex<HashMap<PathBuf, (String, File)>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, (String, File)>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lease_path(store_root: &Path, token: &str) -> PathBuf {
    store_root.join(LEASES).join(format!("{token}.lock"))
}

/// This process's token in the store at `store_root`, taking the lease on first use.
/// Tokens are `<pid>x<nanoseconds>`: lower-case hex and digits, never a `-`.
pub fn token(store_root: &Path) -> io::Result<String> {
    let mut held = held().lock().unwrap_or_else(|p| p.into_inner());
    if let Some((token, _)) = held.get(store_root) {
        return Ok(token.clone());
    }
    std::fs::create_dir_all(store_root.join(LEASES))?;
    loop {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let token = format!("{}x{nanos:x}", std::process::id());
        let path = lease_path(store_root, &token);
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(file) => {
                file.lock()?;
                // A sweeper may have found the file unlocked before our flock and removed it
                // (it unlinks while holding the flock): then the token is dead, take another.
                if !same_file(&file, &path)? {
                    continue;
                }
                held.insert(store_root.to_path_buf(), (token.clone(), file));
                return Ok(token);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A directory `<prefix><token>-<random>` in `dir`, owned by this process's lease in the store at
/// `store_root` (removed when the `TempDir` drops).
pub fn tempdir_in(store_root: &Path, dir: &Path, prefix: &str) -> io::Result<tempfile::TempDir> {
    let token = token(store_root)?;
    tempfile::Builder::new()
        .prefix(&format!("{prefix}{token}-"))
        .tempdir_in(dir)
}

/// Whose a directory named `name` is, given the `prefix` its maker used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner {
    /// A process that still holds its lease (this one included).
    Alive,
    /// A process that is gone: the directory is a leftover.
    Dead,
    /// The name carries no token (not made with a lease, e.g. by an older kiln).
    Unknown,
}

impl Owner {
    /// Whether a sweep may remove the directory: its owner is gone, or (with `unowned`, only
    /// while no other process has the store open) it carries no token at all.
    pub fn removable(self, unowned: bool) -> bool {
        match self {
            Owner::Dead => true,
            Owner::Unknown => unowned,
            Owner::Alive => false,
        }
    }
}

/// Whether the owner of `name` (made by [`tempdir_in`] with `prefix`) is still alive.
pub fn owner(store_root: &Path, name: &str, prefix: &str) -> Owner {
    let Some(token) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.split_once('-'))
        .map(|(token, _)| token)
        .filter(|t| is_token(t))
    else {
        return Owner::Unknown;
    };
    if lease_alive(&lease_path(store_root, token)) {
        Owner::Alive
    } else {
        Owner::Dead
    }
}

fn is_token(t: &str) -> bool {
    t.split_once('x').is_some_and(|(pid, nanos)| {
        !pid.is_empty()
            && !nanos.is_empty()
            && pid.bytes().all(|b| b.is_ascii_digit())
            && nanos.bytes().all(|b| b.is_ascii_hexdigit())
    })
}

/// A lease is alive while its file exists and someone holds its flock. Any error other than
/// "locked" or "missing" counts as alive: when in doubt, nothing is removed.
fn lease_alive(path: &Path) -> bool {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    match file.try_lock() {
        Ok(()) => false,
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(_)) => true,
    }
}

/// Whether `path` still names the open `file`.
fn same_file(file: &File, path: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let ours = file.metadata()?;
    Ok(match std::fs::metadata(path) {
        Ok(m) => m.dev() == ours.dev() && m.ino() == ours.ino(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => false,
        Err(e) => return Err(e),
    })
}

/// Removes the lease files of processes that are gone. Call it after their directories were
/// swept (a directory whose lease file is missing also counts as dead, so the order only matters
/// for tidiness).
pub fn remove_dead_leases(store_root: &Path) {
    let dir = store_root.join(LEASES);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return;
    };
    for de in rd.flatten() {
        let path = de.path();
        let is_lease = de
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(".lock"))
            .is_some_and(is_token);
        if !is_lease {
            continue;
        }
        // Unlinked while flocked: a process that creates its lease file and has not locked it
        // yet sees it gone once it has ([`token`]) and takes another.
        let Ok(file) = File::open(&path) else {
            continue;
        };
        if file.try_lock().is_ok() {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// An exclusive, non-blocking hold on the store's sweep lock (`kiln/sweep.lock`): one sweeper at a
/// time, and a build never waits for another's sweep. `None` when another process is sweeping.
pub fn try_sweep_lock(store_root: &Path) -> io::Result<Option<File>> {
    let path = store_root.join("kiln/sweep.lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lease taken while another process sweeps dead leases is never swept from under its
    /// holder (the sweeper can catch it between its creation and its flock).
    #[test]
    fn a_lease_taken_during_a_sweep_survives_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().to_path_buf();
        std::fs::create_dir_all(root.join(LEASES)).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sweeper = {
            let (root, stop) = (root.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    remove_dead_leases(&root);
                }
            })
        };
        // Each path is another name of the same store, so each takes a new lease in it.
        let mut lost = Vec::new();
        for i in 0..1000 {
            let link = t.path().join(format!("link-{i}"));
            std::os::unix::fs::symlink(&root, &link).unwrap();
            let token = token(&link).unwrap();
            if !lease_alive(&lease_path(&root, &token)) {
                lost.push(token);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        sweeper.join().unwrap();
        assert!(lost.is_empty(), "leases swept while held: {lost:?}");
    }

    #[test]
    fn own_directories_are_alive_and_foreign_tokens_dead() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        let d = tempdir_in(root, root, "run-").unwrap();
        let name = d.path().file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(owner(root, &name, "run-"), Owner::Alive);
        // A token whose lease file is gone, or not held, is dead.
        assert_eq!(owner(root, "run-1x1-abc", "run-"), Owner::Dead);
        std::fs::write(lease_path(root, "2x2"), "").unwrap();
        assert_eq!(owner(root, "run-2x2-abc", "run-"), Owner::Dead);
        assert_eq!(owner(root, "run-abc", "run-"), Owner::Unknown);
        assert_eq!(owner(root, "other-1x1-abc", "run-"), Owner::Unknown);
        remove_dead_leases(root);
        assert!(!lease_path(root, "2x2").exists());
        assert!(lease_path(root, &token(root).unwrap()).exists());
    }
}
