//! A stage's image config as steps change it: one [`StageConfig::apply`] used both while
//! lowering (so later steps see ENV, USER, WORKDIR, SHELL) and while building (so the image
//! gets them), plus the value checks and formats those changes need.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use crate::dockerfile::instructions::HealthCheck;
use crate::image::ImageConfig;
use crate::image::config::{Empty, Healthcheck};

use super::step::ConfigChange;

/// The PATH an image gets when its base has none (BuildKit's default for Linux).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The config of `FROM scratch`: the host platform, working directory `/`.
pub fn scratch_config() -> ImageConfig {
    let host = crate::platform::Platform::host();
    let mut c = ImageConfig::new(&host.os, &host.architecture, host.variant.as_deref());
    c.container_config_mut().working_dir = "/".into();
    c
}

/// An image config being changed step by step.
#[derive(Debug, Clone)]
pub struct StageConfig {
    config: ImageConfig,
    /// Where each variable of the `Env` list is, so ENV updates in place without a scan (a
    /// stage may have many thousands of ENV lines).
    env_index: HashMap<String, usize>,
    /// CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set: bool,
}

impl StageConfig {
    /// A stage's config from its base's: every stage has a PATH (BuildKit's default when the
    /// base sets none), and the base's ONBUILD triggers are returned, not inherited.
    pub fn start(base: ImageConfig) -> (StageConfig, Vec<String>) {
        let mut config = base;
        let cc = config.container_config_mut();
        if !cc.env.iter().any(|e| e.starts_with("PATH=")) {
            cc.env.insert(0, format!("PATH={DEFAULT_PATH}"));
        }
        let triggers = std::mem::take(&mut cc.on_build);
        let env_index = env_index(&config);
        (
            StageConfig {
                config,
                env_index,
                cmd_set: false,
            },
            triggers,
        )
    }

    pub fn config(&self) -> &ImageConfig {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut ImageConfig {
        &mut self.config
    }

    pub fn into_config(self) -> ImageConfig {
        self.config
    }

    pub fn cmd_set(&self) -> bool {
        self.cmd_set
    }

    /// The `Env` list as pairs.
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.config
            .config
            .iter()
            .flat_map(|c| &c.env)
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }

    /// The SHELL, or `/bin/sh -c`.
    pub fn shell(&self) -> Vec<String> {
        match self.config.config.as_ref().map(|c| &c.shell) {
            Some(s) if !s.is_empty() => s.clone(),
            _ => vec!["/bin/sh".into(), "-c".into()],
        }
    }

    /// The working directory, `/` when unset.
    pub fn workdir(&self) -> String {
        match self.workdir_raw() {
            "" => "/".into(),
            w => w.to_string(),
        }
    }

    /// The working directory as the config has it (empty when unset).
    pub fn workdir_raw(&self) -> &str {
        self.config
            .config
            .as_ref()
            .map_or("", |c| c.working_dir.as_str())
    }

    pub fn set_workdir(&mut self, path: &str) {
        self.config.container_config_mut().working_dir = path.to_string();
    }

    /// The USER, empty when unset.
    pub fn user(&self) -> &str {
        self.config.config.as_ref().map_or("", |c| c.user.as_str())
    }

    /// Applies a config change (history is the caller's).
    pub fn apply(&mut self, change: &ConfigChange) {
        let cc = self.config.container_config_mut();
        match change {
            ConfigChange::Env(pairs) => {
                for (k, v) in pairs {
                    set_env(&mut cc.env, &mut self.env_index, k, v);
                }
            }
            ConfigChange::Label(pairs) => {
                for (k, v) in pairs {
                    cc.labels.insert(k.clone(), v.clone());
                }
            }
            ConfigChange::Maintainer(name) => self.config.author = name.clone(),
            ConfigChange::Arg(_) => {}
            ConfigChange::User(u) => cc.user = u.clone(),
            ConfigChange::Expose(ports) => {
                for p in ports {
                    cc.exposed_ports.insert(p.clone(), Empty {});
                }
            }
            ConfigChange::Volume(vols) => {
                for v in vols {
                    cc.volumes.insert(v.clone(), Empty {});
                }
            }
            ConfigChange::StopSignal(s) => cc.stop_signal = s.clone(),
            ConfigChange::Cmd(words) => {
                cc.cmd = words.clone();
                self.cmd_set = true;
            }
            ConfigChange::Entrypoint { words, clear_cmd } => {
                cc.entrypoint = words.clone();
                if *clear_cmd {
                    cc.cmd.clear();
                }
            }
            ConfigChange::Shell(words) => cc.shell = words.clone(),
            ConfigChange::Healthcheck(h) => cc.healthcheck = Some(h.clone()),
            ConfigChange::Onbuild(expr) => cc.on_build.push(expr.clone()),
        }
    }
}

/// The name of an `Env` entry: up to the first `=`, or all of it.
fn env_name(entry: &str) -> &str {
    entry.split_once('=').map_or(entry, |(k, _)| k)
}

/// Positions of the config's `Env` entries by name (the first of a repeated name, which is
/// the one ENV replaces).
fn env_index(config: &ImageConfig) -> HashMap<String, usize> {
    let mut index = HashMap::new();
    for (i, e) in config.config.iter().flat_map(|c| &c.env).enumerate() {
        index.entry(env_name(e).to_string()).or_insert(i);
    }
    index
}

/// ENV: replaces the variable's entry in place, or appends it.
fn set_env(env: &mut Vec<String>, index: &mut HashMap<String, usize>, key: &str, value: &str) {
    let entry = format!("{key}={value}");
    match index.entry(key.to_string()) {
        Entry::Occupied(slot) => env[*slot.get()] = entry,
        Entry::Vacant(slot) => {
            slot.insert(env.len());
            env.push(entry);
        }
    }
}

/// WORKDIR paths build on the previous one.
pub fn join_workdir(current: &str, path: &str) -> String {
    let base = if path.starts_with('/') || current.is_empty() {
        String::new()
    } else {
        current.to_string()
    };
    crate::pathclean::clean_absolute(&format!("{base}/{path}"))
}

/// A config value BuildKit refuses.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("invalid port: {port:?}: invalid proto: {proto}")]
    PortProtocol { port: String, proto: String },
    #[error("invalid containerPort: {0}")]
    PortNumber(String),
    #[error("invalid signal: {0}")]
    Signal(String),
}

/// `80` → `80/tcp`; `53/udp` stays; ranges are kept as written.
pub fn normalize_port(port: &str) -> Result<String, ConfigError> {
    let (num, proto) = match port.split_once('/') {
        Some((n, p)) => (n, p.to_lowercase()),
        None => (port, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(ConfigError::PortProtocol {
            port: port.to_string(),
            proto,
        });
    }
    let valid = |s: &str| s.parse::<u16>().is_ok();
    let ok = match num.split_once('-') {
        Some((a, b)) => valid(a) && valid(b),
        None => valid(num),
    };
    if !ok {
        return Err(ConfigError::PortNumber(num.to_string()));
    }
    Ok(format!("{num}/{proto}"))
}

/// STOPSIGNAL accepts a number or a signal name (with or without `SIG`).
pub fn validate_signal(signal: &str) -> Result<(), ConfigError> {
    const NAMES: [&str; 31] = [
        "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "IOT", "BUS", "FPE", "KILL", "USR1", "SEGV",
        "USR2", "PIPE", "ALRM", "TERM", "STKFLT", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU",
        "URG", "XCPU", "XFSZ", "VTALRM", "PROF", "WINCH", "IO", "PWR",
    ];
    if let Ok(n) = signal.parse::<u32>()
        && (1..=64).contains(&n)
    {
        return Ok(());
    }
    let upper = signal.to_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if NAMES.contains(&name) || name.starts_with("RTMIN") || name.starts_with("RTMAX") {
        return Ok(());
    }
    Err(ConfigError::Signal(signal.to_string()))
}

pub fn to_healthcheck(h: &HealthCheck) -> Healthcheck {
    let ns = |d: Option<std::time::Duration>| d.map(|d| d.as_nanos() as i64);
    Healthcheck {
        test: h.test.clone(),
        interval: ns(h.interval),
        timeout: ns(h.timeout),
        start_period: ns(h.start_period),
        start_interval: ns(h.start_interval),
        retries: h.retries,
        ..Healthcheck::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_joins() {
        assert_eq!(join_workdir("/", "foo"), "/foo");
        assert_eq!(join_workdir("/test1", "test2"), "/test1/test2");
        assert_eq!(join_workdir("/test1/test2", ".."), "/test1");
        assert_eq!(join_workdir("/a", "/b/./c/"), "/b/c");
    }

    #[test]
    fn ports() {
        assert_eq!(normalize_port("80").unwrap(), "80/tcp");
        assert_eq!(normalize_port("53/UDP").unwrap(), "53/udp");
        assert!(normalize_port("x").is_err());
    }

    #[test]
    fn signals() {
        assert!(validate_signal("SIGTERM").is_ok());
        assert!(validate_signal("9").is_ok());
        assert!(validate_signal("NOPE").is_err());
    }

    #[test]
    fn entrypoint_clears_the_base_cmd_unless_cmd_was_set() {
        let mut base = scratch_config();
        base.container_config_mut().cmd = vec!["base".into()];
        let (mut c, _) = StageConfig::start(base);
        c.apply(&ConfigChange::Entrypoint {
            words: vec!["e".into()],
            clear_cmd: !c.cmd_set(),
        });
        assert!(c.config().config.as_ref().unwrap().cmd.is_empty());
        c.apply(&ConfigChange::Cmd(vec!["c".into()]));
        assert!(c.cmd_set());
    }
}
