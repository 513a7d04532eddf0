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
