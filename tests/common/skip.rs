//! The one way a test skips. A skip is never silent: the line goes to the real stderr (past the
//! harness's capture), into `$KILN_SKIP_LOG` when scripts/test.sh set it (so the run's last lines
//! count the skips and give their reasons), and under `CI` it fails the test instead.

use std::io::Write;

/// Records that `test` skipped (part of it) because of `why`. Panics when `CI` is set: CI has
/// every tool and user, so a skip there means the set-up is broken.
pub fn skip(test: &str, why: impl std::fmt::Display) {
    let line = format!("SKIP {test}: {why}");
    let _ = writeln!(std::io::stderr(), "{line}");
    if let Some(log) = std::env::var_os("KILN_SKIP_LOG") {
        // O_APPEND writes of one short line do not interleave between test processes.
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }
    if std::env::var_os("CI").is_some_and(|v| !v.is_empty()) {
        panic!(
            "{line}\n(CI is set: a skipped test fails the run; scripts/test.sh sets the machine up)"
        );
    }
}
