//! What overlayfs keeps on disk: whiteouts (character device 0:0), opaque directories
//! (`trusted.overlay.opaque=y`, or `user.overlay.opaque=y` when mounted with `userxattr`), and
//! the extended attributes of its own that never belong in a layer.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Which extended-attribute namespace overlayfs reads its own attributes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OverlayXattrPrefix {
    /// `trusted.overlay.*`: overlay mounted without `userxattr` (real root). Setting these
    /// attributes needs `CAP_SYS_ADMIN` in the initial user namespace.
    Trusted,
    /// `user.overlay.*`: overlay mounted with `userxattr` (inside a user namespace; real root may
    /// use it too).
    User,
}

impl OverlayXattrPrefix {
    /// `trusted.overlay.` or `user.overlay.`.
    pub const fn as_str(self) -> &'static str {
        match self {
            OverlayXattrPrefix::Trusted => TRUSTED_PREFIX,
            OverlayXattrPrefix::User => USER_PREFIX,
        }
    }

    /// The name of the opaque-directory attribute: `trusted.overlay.opaque` or
    /// `user.overlay.opaque`.
    pub const fn opaque_xattr(self) -> &'static str {
        match self {
            OverlayXattrPrefix::Trusted => "trusted.overlay.opaque",
            OverlayXattrPrefix::User => "user.overlay.opaque",
        }
    }

    /// Whether overlay must be mounted with the `userxattr` option to read these attributes.
    pub const fn needs_userxattr(self) -> bool {
        matches!(self, OverlayXattrPrefix::User)
    }

    /// [`Trusted`](Self::Trusted) when running as uid 0 in the initial user namespace (real
    /// root), else [`User`](Self::User) (inside a user namespace, or unprivileged).
    pub fn detect() -> Self {
        if is_real_root() {
            OverlayXattrPrefix::Trusted
        } else {
            OverlayXattrPrefix::User
        }
    }
}

/// How a layer's whiteouts (`.wh.name`, `.wh..wh..opq`) are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WhiteoutMode {
    /// Delete what the whiteouts hide from the target (which holds the lower layers): the
    /// target becomes the merged file system.
    #[default]
    Delete,
    /// Write what overlayfs expects in a lower (or upper) directory, for a target that holds this
    /// layer only (a snapshot): `.wh.name` becomes a character device 0:0 named `name` (needs
    /// root, or uid 0 in a user namespace), `.wh..wh..opq` sets `<prefix>opaque=y` on its
    /// directory. Anything already in the target that a whiteout hides is deleted as in
    /// [`Delete`](Self::Delete).
    Overlay {
        /// Which attribute namespace marks opaque directories.
        xattr_prefix: OverlayXattrPrefix,
    },
}

pub(crate) const TRUSTED_PREFIX: &str = "trusted.overlay.";
pub(crate) const USER_PREFIX: &str = "user.overlay.";

/// Whether an attribute belongs to overlayfs itself (`trusted.overlay.*`, `user.overlay.*`).
pub(crate) fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with(TRUSTED_PREFIX) || name.starts_with(USER_PREFIX)
}

/// uid 0 in the initial user namespace.
fn is_real_root() -> bool {
    let root = fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    root && fs::read_to_string("/proc/self/uid_map").is_ok_and(|m| {
        let f: Vec<&str> = m.split_whitespace().collect();
        f == ["0", "0", "4294967295"]
    })
}

/// Whether `md` is an overlay whiteout: a character device with device number 0:0.
pub(crate) fn is_whiteout(md: &fs::Metadata) -> bool {
    md.file_type().is_char_device() && md.rdev() == 0
}

/// Reads one extended attribute of `path` (not following a symlink). `None` when it is not set
/// or the file system has no extended attributes.
pub(crate) fn get_xattr(
    path: &Path,
    name: impl AsRef<std::ffi::OsStr>,
) -> io::Result<Option<Vec<u8>>> {
    let name = name.as_ref();
    let mut buf = vec![0u8; 256];
    loop {
        match rustix::fs::lgetxattr(path, name, &mut buf[..]) {
            Ok(n) => {
                buf.truncate(n);
                return Ok(Some(buf));
            }
            Err(rustix::io::Errno::NODATA) | Err(rustix::io::Errno::NOTSUP) => return Ok(None),
            Err(rustix::io::Errno::RANGE) => {
                let n = rustix::fs::lgetxattr_query(path, name)?;
                buf = vec![0u8; n.max(buf.len() * 2)];
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Whether the directory at `path` is marked opaque in either namespace
/// (`trusted.overlay.opaque` or `user.overlay.opaque` equal to `y`). Attributes that cannot be
/// read (a `trusted.*` one without the privilege) count as unset.
pub(crate) fn is_opaque_dir(path: &Path) -> io::Result<bool> {
    for prefix in [OverlayXattrPrefix::Trusted, OverlayXattrPrefix::User] {
        match get_xattr(path, prefix.opaque_xattr()) {
            Ok(Some(v)) if v == b"y" => return Ok(true),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Names of the extended attributes of `path` (not following a symlink).
pub(crate) fn list_xattrs(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 1024];
    let n = loop {
        match rustix::fs::llistxattr(path, &mut buf[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(rustix::io::Errno::RANGE) => {
                let n = rustix::fs::llistxattr_query(path)?;
                buf = vec![0u8; n.max(buf.len() * 2)];
            }
            Err(e) => return Err(e.into()),
        }
    };
    Ok(buf[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
}

/// The extended attributes of `path` (not following a symlink), without overlayfs's own
/// (`trusted.overlay.*`, `user.overlay.*`). Names that are not UTF-8 are skipped (a layer
/// carries them as PAX record keys); an attribute removed between listing and reading is skipped.
pub(crate) fn read_xattrs(path: &Path) -> io::Result<BTreeMap<String, Vec<u8>>> {
    Ok(read_xattrs_and_overlay_names(path)?.0)
}

/// Extended attributes by name.
pub(crate) type Xattrs = BTreeMap<String, Vec<u8>>;

/// [`read_xattrs`], and the names of overlayfs's own attributes found (which were left out).
pub(crate) fn read_xattrs_and_overlay_names(path: &Path) -> io::Result<(Xattrs, Vec<String>)> {
    let mut out = BTreeMap::new();
    let mut ours = Vec::new();
    for name in list_xattrs(path)? {
        let Ok(name) = String::from_utf8(name) else {
            continue;
        };
        if is_overlay_xattr(&name) {
            ours.push(name);
            continue;
        }
        if let Some(v) = get_xattr(path, &name)? {
            out.insert(name, v);
        }
    }
    Ok((out, ours))
}

/// Creates an overlay whiteout (character device 0:0, mode 0) at `path`.
pub(crate) fn make_whiteout(path: &Path) -> io::Result<()> {
    rustix::fs::mknodat(
        rustix::fs::CWD,
        path,
        rustix::fs::FileType::CharacterDevice,
        rustix::fs::Mode::empty(),
        rustix::fs::makedev(0, 0),
    )?;
    Ok(())
}

/// Sets `<prefix>opaque=y` on the directory at `path`.
pub(crate) fn set_opaque(path: &Path, prefix: OverlayXattrPrefix) -> io::Result<()> {
    rustix::fs::lsetxattr(
        path,
        prefix.opaque_xattr(),
        b"y",
        rustix::fs::XattrFlags::empty(),
    )?;
    Ok(())
}

/// Removes overlayfs's own attributes from `path` (not following a symlink). Used on files
/// unpacked into a snapshot, so a layer cannot smuggle in redirects or metacopy markers.
pub(crate) fn strip_overlay_xattrs(path: &Path) -> io::Result<()> {
    for name in list_xattrs(path)? {
        if is_overlay_xattr(&String::from_utf8_lossy(&name)) {
            match rustix::fs::lremovexattr(path, OsStr::from_bytes(&name)) {
                Ok(()) | Err(rustix::io::Errno::NODATA) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            OverlayXattrPrefix::Trusted.opaque_xattr(),
            "trusted.overlay.opaque"
        );
        assert_eq!(
            OverlayXattrPrefix::User.opaque_xattr(),
            "user.overlay.opaque"
        );
        assert!(
            OverlayXattrPrefix::User
                .opaque_xattr()
                .starts_with(USER_PREFIX)
        );
        assert!(is_overlay_xattr("trusted.overlay.redirect"));
        assert!(is_overlay_xattr("user.overlay.opaque"));
        assert!(!is_overlay_xattr("user.overlayfoo"));
        assert!(!is_overlay_xattr("security.capability"));
    }

    #[test]
    fn user_xattrs_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        fs::create_dir(&d).unwrap();
        assert!(!is_opaque_dir(&d).unwrap());
        if set_opaque(&d, OverlayXattrPrefix::User).is_err() {
            return; // a file system without user xattrs
        }
        assert!(is_opaque_dir(&d).unwrap());
        rustix::fs::lsetxattr(&d, "user.keep", b"v", rustix::fs::XattrFlags::empty()).unwrap();
        let x = read_xattrs(&d).unwrap();
        assert_eq!(
            x.into_iter().collect::<Vec<_>>(),
            [("user.keep".to_string(), b"v".to_vec())]
        );
        strip_overlay_xattrs(&d).unwrap();
        assert!(!is_opaque_dir(&d).unwrap());
        assert!(get_xattr(&d, "user.keep").unwrap().is_some());
    }
}
