//! What the CLI asks of the builder before a build or run starts: entering the build's
//! namespaces and reading `--secret` flags. The CLI reaches `exec` and `mounts` only through
//! here.

use std::collections::BTreeMap;

use crate::exec::ExecError;

use super::mounts::{MountError, SecretSource, parse_secret_flag};

/// Enters the build namespaces; call it before anything else happens (in particular before
/// stdin is read or a thread starts): as an ordinary user, re-executes kiln in a user
/// namespace; then gives the process a private mount namespace. Returns whether ids are
/// squashed (a single-id map), which [`BuildOptions::single_id`](super::BuildOptions) wants.
pub fn enter_namespaces() -> Result<bool, ExecError> {
    let state = crate::exec::ensure_userns()?;
    crate::exec::mount::private_mount_namespace()?;
    Ok(state.single_id())
}

/// Whether this process runs in a user namespace (rootless): a local export then writes the
/// invoking user's files.
pub fn rootless() -> bool {
    crate::exec::userns::in_user_namespace()
}

/// Reads `kiln build --secret` values into the map [`BuildOptions::secrets`](super::BuildOptions)
/// takes (a later flag with the same id wins).
pub fn parse_secrets<S: AsRef<str>>(
    flags: &[S],
) -> Result<BTreeMap<String, SecretSource>, MountError> {
    let mut secrets = BTreeMap::new();
    for s in flags {
        let (id, source) = parse_secret_flag(s.as_ref())?;
        secrets.insert(id, source);
    }
    Ok(secrets)
}
