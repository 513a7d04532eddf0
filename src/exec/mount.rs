//! Mounts kiln makes in its own mount namespace while it builds: read-only overlay *views* of a
//! stage's snapshots (the filesystem COPY resolves against and `COPY --from` reads), writable
//! overlays whose writes are thrown away (`RUN --mount=type=bind,rw`), and small tmpfs mounts
//! (secrets, which must never touch the disk).
//!
//! They are made only after [`private_mount_namespace`] (or inside the user namespace
//! [`super::ensure_userns`] made, which has its own mount namespace): nothing kiln mounts is ever
//! visible to the host, and everything goes away with the process, even when it is killed.
//! [`MountGuard`] unmounts early when dropped, so long builds do not pile mounts up.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{CWD, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{
    FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MountPropagationFlags, MoveMountFlags,
    UnmountFlags,
};

use super::ExecError;
use super::userns::in_user_namespace;

/// Gives the calling process a mount namespace of its own, with every mount private, so the
/// mounts of a build never propagate to the host and vanish with the process. Call it before
/// any thread starts (a new mount namespace is per thread, and threads made later inherit it).
/// Inside a user namespace made by [`super::ensure_userns`] the process already has one; the
/// call then only makes the mounts private.
pub fn private_mount_namespace() -> Result<(), ExecError> {
    if !in_user_namespace() {
        // SAFETY: CLONE_NEWNS only gives this thread a new mount namespace (no file table or
        // fs-struct sharing change that Rust code could rely on); called before threads start.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNS) }
            .map_err(|e| ExecError::sys("unshare(CLONE_NEWNS)", e.into()))?;
    }
    rustix::mount::mount_change(
        c"/",
        MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
    )
    .map_err(|e| ExecError::sys("make / private (mount --make-rprivate /)", e.into()))
}

/// A mount that is detached when dropped.
#[derive(Debug)]
pub struct MountGuard {
    target: PathBuf,
    mounted: bool,
}

impl MountGuard {
    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.target
    }

    /// Detaches it now.
    pub fn unmount(mut self) -> Result<(), ExecError> {
        self.detach()
    }

    fn detach(&mut self) -> Result<(), ExecError> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        rustix::mount::unmount(&self.target, UnmountFlags::DETACH)
            .map_err(|e| ExecError::sys(format!("unmount {}", self.target.display()), e.into()))
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = self.detach();
    }
}

/// The writable half of an overlay: `upper` and `work`, empty directories on one file system.
#[derive(Debug, Clone, Copy)]
pub struct UpperDirs<'a> {
    pub upper: &'a Path,
    pub work: &'a Path,
}

/// Mounts an overlay at `target` (an existing directory): `lowers` top first; with `upper` it is
/// writable (changes land in `upper`), without it read-only. `empty` must be an empty directory:
/// it is added as the bottom layer when the kernel would otherwise refuse the mount (no lower at
/// all, or a read-only overlay of a single lower).
pub fn mount_overlay(
    lowers: &[PathBuf],
    upper: Option<UpperDirs<'_>>,
    empty: &Path,
    target: &Path,
) -> Result<MountGuard, ExecError> {
    let mut lowers = lowers.to_vec();
    if lowers.is_empty() || (upper.is_none() && lowers.len() == 1) {
        lowers.push(empty.to_path_buf());
    }
    let in_userns = in_user_namespace();
    let mut options: Vec<(&str, &str)> = Vec::new();
    if in_userns {
        options.push(("userxattr", ""));
    } else if upper.is_some() {
        options.extend([
            ("redirect_dir", "nofollow"),
            ("index", "off"),
            ("metacopy", "off"),
        ]);
    }
    let describe = || {
        format!(
            "mount overlay at {} (lowerdirs {}{})",
            target.display(),
            lowers
                .iter()
                .map(|l| l.display().to_string())
                .collect::<Vec<_>>()
                .join(":"),
            upper
                .map(|u| format!(", upperdir {}", u.upper.display()))
                .unwrap_or_default()
        )
    };
    match overlay_new_api(&lowers, upper, &options, target) {
        Ok(true) => {}
        Ok(false) => overlay_legacy(&lowers, upper, &options, target)
            .map_err(|e| ExecError::sys(describe(), e.into()))?,
        Err((e, log)) => {
            return Err(ExecError::sys(
                format!(
                    "{}{}",
                    describe(),
                    log.map(|l| format!(": {l}")).unwrap_or_default()
                ),
                e.into(),
            ));
        }
    }
    Ok(MountGuard {
        target: target.to_path_buf(),
        mounted: true,
    })
}

fn cstr(p: &Path) -> Result<CString, Errno> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| Errno::INVAL)
}

/// `Ok(false)`: no new mount API or no `lowerdir+` (kernels before 6.8).
fn overlay_new_api(
    lowers: &[PathBuf],
    upper: Option<UpperDirs<'_>>,
    options: &[(&str, &str)],
    target: &Path,
) -> Result<bool, (Errno, Option<String>)> {
    use rustix::mount as m;
    let fs = match m::fsopen(c"overlay", FsOpenFlags::FSOPEN_CLOEXEC) {
        Ok(fs) => fs,
        Err(Errno::NOSYS) => return Ok(false),
        Err(e) => return Err((e, None)),
    };
    let log = |fs: &std::os::fd::OwnedFd| {
        let mut buf = [0u8; 512];
        let mut last = None;
        while let Ok(n) = rustix::io::read(fs, &mut buf[..]) {
            if n == 0 {
                break;
            }
            last = Some(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
        }
        last
    };
    let dir_param = |key: &std::ffi::CStr, p: &Path| -> Result<(), Errno> {
        // Long paths go as descriptors (fsconfig strings stop at 255 bytes).
        let dir = rustix::fs::open(
            p,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        m::fsconfig_set_fd(&fs, key, &dir).or_else(|_| m::fsconfig_set_string(&fs, key, cstr(p)?))
    };
    for (i, l) in lowers.iter().enumerate() {
        match dir_param(c"lowerdir+", l) {
            Ok(()) => {}
            Err(Errno::INVAL) if i == 0 => return Ok(false),
            Err(e) => return Err((e, log(&fs))),
        }
    }
    if let Some(u) = upper {
        dir_param(c"upperdir", u.upper).map_err(|e| (e, log(&fs)))?;
        dir_param(c"workdir", u.work).map_err(|e| (e, log(&fs)))?;
    }
    for (k, v) in options {
        let k = CString::new(*k).expect("static option");
        let r = if v.is_empty() {
            m::fsconfig_set_flag(&fs, &k)
        } else {
            m::fsconfig_set_string(&fs, &k, CString::new(*v).expect("static option"))
        };
        r.map_err(|e| (e, log(&fs)))?;
    }
    m::fsconfig_create(&fs).map_err(|e| (e, log(&fs)))?;
    let attrs = if upper.is_none() {
        MountAttrFlags::MOUNT_ATTR_RDONLY
    } else {
        MountAttrFlags::empty()
    };
    let mnt = m::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, attrs).map_err(|e| (e, log(&fs)))?;
    m::move_mount(
        &mnt,
        c"",
        CWD,
        target,
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
    )
    .map_err(|e| (e, None))?;
    Ok(true)
}

fn overlay_legacy(
    lowers: &[PathBuf],
    upper: Option<UpperDirs<'_>>,
    options: &[(&str, &str)],
    target: &Path,
) -> Result<(), Errno> {
    let mut data = b"lowerdir=".to_vec();
    for (i, l) in lowers.iter().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        for &b in l.as_os_str().as_bytes() {
            if matches!(b, b':' | b'\\' | b',') {
                data.push(b'\\');
            }
            data.push(b);
        }
    }
    if let Some(u) = upper {
        data.extend_from_slice(b",upperdir=");
        data.extend_from_slice(u.upper.as_os_str().as_bytes());
        data.extend_from_slice(b",workdir=");
        data.extend_from_slice(u.work.as_os_str().as_bytes());
    }
    for (k, v) in options {
        data.push(b',');
        data.extend_from_slice(k.as_bytes());
        if !v.is_empty() {
            data.push(b'=');
            data.extend_from_slice(v.as_bytes());
        }
    }
    if data.len() >= 4096 {
        return Err(Errno::TOOBIG);
    }
    let data = CString::new(data).map_err(|_| Errno::INVAL)?;
    let flags = if upper.is_none() {
        MountFlags::RDONLY
    } else {
        MountFlags::empty()
    };
    rustix::mount::mount(c"overlay", target, c"overlay", flags, Some(data.as_c_str()))
}

/// Mounts a tmpfs (mode `mode`, at most `size` bytes) at `target`, an existing directory.
pub fn mount_tmpfs(target: &Path, mode: u32, size: Option<u64>) -> Result<MountGuard, ExecError> {
    let mut data = format!("mode={mode:o}");
    if let Some(s) = size {
        data.push_str(&format!(",size={s}"));
    }
    let data = CString::new(data).expect("no NUL");
    rustix::mount::mount(
        c"tmpfs",
        target,
        c"tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
        Some(data.as_c_str()),
    )
    .map_err(|e| ExecError::sys(format!("mount tmpfs at {}", target.display()), e.into()))?;
    Ok(MountGuard {
        target: target.to_path_buf(),
        mounted: true,
    })
}

/// Whether this process can mount an overlay here (in its user namespace, on the file system
/// of `scratch`): tried once with a tiny writable overlay inside `scratch`, then undone.
/// `Err` carries the kernel's reason, for the progress notice of the copy fallback.
pub fn probe_overlay(scratch: &Path) -> Result<(), ExecError> {
    let dirs = ["lower", "upper", "work", "merged", "empty"].map(|d| scratch.join(d));
    for d in &dirs {
        std::fs::create_dir_all(d)
            .map_err(|e| ExecError::sys(format!("create directory {}", d.display()), e))?;
    }
    let [lower, upper, work, merged, empty] = dirs;
    let guard = mount_overlay(
        &[lower],
        Some(UpperDirs {
            upper: &upper,
            work: &work,
        }),
        &empty,
        &merged,
    )?;
    guard.unmount()
}
