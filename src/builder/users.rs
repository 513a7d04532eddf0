//! `--chown` values: `user`, `user:group`, `uid`, `uid:gid` and mixes, with names looked up in
//! a root filesystem's `/etc/passwd` and `/etc/group` (resolved inside that root, following
//! symlinks as a chroot would), as BuildKit's file operations do.
//!
//! - A user alone: a name takes the user's primary group from `/etc/passwd`; a number `n`
//!   means `n:n`.
//! - A group given by name is looked up in `/etc/group`; a number is used as it is.
//! - A missing file is the same as a file with no matching entry.

use std::fs;
use std::path::Path;

use crate::layer::resolve_in_root;

/// A name that is not in the root filesystem's account files. The messages are BuildKit's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    /// No `/etc/passwd` entry with this name.
    #[error("unable to find user {0}: no matching entries in passwd file")]
    UnknownUser(String),
    /// No `/etc/group` entry with this name.
    #[error("unable to find group {0}: no matching entries in group file")]
    UnknownGroup(String),
}

/// Resolves a `--chown` value to numeric `(uid, gid)` against the root filesystem at `rootfs`.
pub fn resolve_chown(spec: &str, rootfs: &Path) -> Result<(u64, u64), UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, mut gid) = match parse_id(user) {
        Some(n) => (n, n),
        None => lookup(rootfs, "/etc/passwd", user, 2, Some(3))
            .ok_or_else(|| UserError::UnknownUser(user.to_string()))?,
    };
    if let Some(group) = group {
        gid = match parse_id(group) {
            Some(n) => n,
            None => {
                lookup(rootfs, "/etc/group", group, 2, None)
                    .ok_or_else(|| UserError::UnknownGroup(group.to_string()))?
                    .0
            }
        };
    }
    Ok((uid, gid))
}

/// Who a RUN (or `kiln run`) runs as, from the image's `USER`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: the `/etc/group` entries that list the user by name (only when
    /// `USER` names no group, as runc does).
    pub groups: Vec<u32>,
    /// The user's home from `/etc/passwd`; `None` when the user has no entry.
    pub home: Option<String>,
}

impl ExecUser {
    /// `HOME` for the command: the passwd entry's, else `/root` for root and `/` for others.
    pub fn home_or_default(&self) -> String {
        match &self.home {
            Some(h) => h.clone(),
            None if self.uid == 0 => "/root".into(),
            None => "/".into(),
        }
    }
}

/// Resolves `USER` (`user`, `user:group`, `uid`, `uid:gid`; empty means root) the way runc
/// does for docker: a name must be in `/etc/passwd`; a number not in it runs with gid 0; a group
/// name must be in `/etc/group`.
pub fn resolve_exec_user(spec: &str, rootfs: &Path) -> Result<ExecUser, UserError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user = if user.is_empty() { "0" } else { user };
    let passwd = read_entries(rootfs, "/etc/passwd");
    let groups = read_entries(rootfs, "/etc/group");
    let num = |f: &Vec<String>, i: usize| f.get(i).and_then(|v| v.trim().parse::<u32>().ok());
    let by_id = parse_id(user).map(|n| n as u32);
    let entry = passwd.iter().find(|f| match by_id {
        Some(n) => num(f, 2) == Some(n),
        None => f.first().map(String::as_str) == Some(user),
    });
    let (uid, mut gid, name, home) = match (by_id, entry) {
        (_, Some(f)) => (
            num(f, 2).unwrap_or(0),
            num(f, 3).unwrap_or(0),
            f.first().cloned(),
            f.get(5).cloned().filter(|h| !h.is_empty()),
        ),
        (Some(n), None) => (n, 0, None, None),
        (None, None) => return Err(UserError::UnknownUser(user.to_string())),
    };
    let mut supplementary = Vec::new();
    match group.filter(|g| !g.is_empty()) {
        Some(g) => {
            gid = match parse_id(g) {
                Some(n) => n as u32,
                None => groups
                    .iter()
                    .find(|f| f.first().map(String::as_str) == Some(g))
                    .and_then(|f| num(f, 2))
                    .ok_or_else(|| UserError::UnknownGroup(g.to_string()))?,
            }
        }
        None => {
            if let Some(name) = &name {
                for f in &groups {
                    let members = f.get(3).map(String::as_str).unwrap_or("");
                    if members.split(',').any(|m| m.trim() == name)
                        && let Some(g) = num(f, 2)
                        && !supplementary.contains(&g)
                    {
                        supplementary.push(g);
                    }
                }
            }
        }
    }
    Ok(ExecUser {
        uid,
        gid,
        groups: supplementary,
        home,
    })
}

/// The colon-separated fields of each entry of an account file in `rootfs` (none if missing).
fn read_entries(rootfs: &Path, file: &str) -> Vec<Vec<String>> {
    let Ok(path) = resolve_in_root(rootfs, Path::new(file), true) else {
        return Vec::new();
    };
    let Ok(text) = fs::read(path) else {
        return Vec::new();
    };
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

fn parse_id(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().map(u64::from)
}

/// The numeric fields `a` (and `b`) of the first line of `file` whose first field is `name`.
fn lookup(rootfs: &Path, file: &str, name: &str, a: usize, b: Option<usize>) -> Option<(u64, u64)> {
    if name.is_empty() {
        return None;
    }
    let path = resolve_in_root(rootfs, Path::new(file), true).ok()?;
    let text = fs::read(path).ok()?;
    let text = String::from_utf8_lossy(&text);
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() != Some(&name) {
            continue;
        }
        let num = |i: usize| fields.get(i).and_then(|f| f.trim().parse::<u64>().ok());
        let first = num(a)?;
        let second = match b {
            Some(b) => num(b)?,
            None => 0,
        };
        return Some((first, second));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_users() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("etc")).unwrap();
        fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1001:\nwheel:x:10:root,app\naudio:x:29:app\n",
        )
        .unwrap();
        let r = |s| resolve_exec_user(s, dir.path());
        let app = r("app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.groups.clone()),
            (1000, 1001, vec![10, 29])
        );
        assert_eq!(app.home.as_deref(), Some("/home/app"));
        assert_eq!(r("1000").unwrap().groups, vec![10, 29]);
        let n = r("4242").unwrap();
        assert_eq!((n.uid, n.gid, n.home), (4242, 0, None));
        assert_eq!(r("app:10").unwrap().groups, Vec::<u32>::new());
        assert_eq!(r("app:audio").unwrap().gid, 29);
        assert_eq!(r("").unwrap().home.as_deref(), Some("/root"));
        assert!(r("nobody").is_err());
        assert!(r("app:nogroup").is_err());
    }

    #[test]
    fn names_and_numbers() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        fs::create_dir_all(root.join("real")).unwrap();
        std::os::unix::fs::symlink("/real", root.join("etc")).unwrap();
        fs::write(
            root.join("real/passwd"),
            "root:x:0:0:root:/root:/bin/sh\n# comment\ndaemon:x:1:1:daemon:/usr/sbin:/bin/false\nuser:x:1000:1001::/home/user:/bin/sh\n",
        )
        .unwrap();
        fs::write(
            root.join("real/group"),
            "root:x:0:\ndaemon:x:1:\nnobody:x:65534:\nuser:x:1001:\n",
        )
        .unwrap();
        assert_eq!(resolve_chown("daemon", root), Ok((1, 1)));
        assert_eq!(resolve_chown("user", root), Ok((1000, 1001)));
        assert_eq!(resolve_chown("1000", root), Ok((1000, 1000)));
        assert_eq!(resolve_chown("1000:nobody", root), Ok((1000, 65534)));
        assert_eq!(resolve_chown("user:0", root), Ok((1000, 0)));
        assert_eq!(resolve_chown("300:400", root), Ok((300, 400)));
        assert_eq!(
            resolve_chown("nosuch", root).unwrap_err().to_string(),
            "unable to find user nosuch: no matching entries in passwd file"
        );
        assert_eq!(
            resolve_chown("user:nosuch", root).unwrap_err().to_string(),
            "unable to find group nosuch: no matching entries in group file"
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_chown("daemon", empty.path()),
            Err(UserError::UnknownUser("daemon".into()))
        );
        assert_eq!(resolve_chown("5:6", empty.path()), Ok((5, 6)));
    }
}
