//! Variable scopes as BuildKit keeps them: the global scope (predefined platform args and the
//! ARGs before the first FROM) and each stage's ARG/ENV scope, where ENV shadows ARG and an
//! ARG must be (re)declared in the stage to be seen there.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use crate::dockerfile::instructions::{ArgDecl, KeyValue};
use crate::dockerfile::shell::{Budget, Env, Lexer, ShellError};
use crate::platform::Platform;

/// A word that could not be expanded: BuildKit's `failed to process "<word>": <why>`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("failed to process {word:?}: {source}")]
pub struct ExpandError {
    pub word: String,
    #[source]
    pub source: ShellError,
}

/// The ARGs BuildKit defines without a declaration: visible to FROM lines, and inside a stage
/// once declared with `ARG NAME` (no default needed).
pub fn predefined_args(
    target: &Platform,
    build: &Platform,
    target_stage: &str,
) -> Vec<(String, String)> {
    let mut out = vec![("TARGETSTAGE".to_string(), target_stage.to_string())];
    for (prefix, p) in [("TARGET", target), ("BUILD", build)] {
        out.push((format!("{prefix}PLATFORM"), p.to_string()));
        out.push((format!("{prefix}OS"), p.os.clone()));
        out.push((format!("{prefix}ARCH"), p.architecture.clone()));
        out.push((
            format!("{prefix}VARIANT"),
            p.variant.clone().unwrap_or_default(),
        ));
    }
    out
}

/// Proxy variables: passed to RUN from `--build-arg` without a declaration, but kept out of
/// the image config, history and cache keys unless the Dockerfile declares them.
pub const PROXY_ARGS: [&str; 10] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// Variables in the order each name was first set, holding the last value set. Lookups and
/// assignments are by hash, so a stage's thousandth ENV costs what its first did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Vars {
    entries: Vec<(String, String)>,
    index: HashMap<String, usize>,
}

impl Vars {
    fn set(&mut self, key: &str, value: &str) {
        match self.index.entry(key.to_owned()) {
            Entry::Occupied(slot) => value.clone_into(&mut self.entries[*slot.get()].1),
            Entry::Vacant(slot) => {
                slot.insert(self.entries.len());
                self.entries.push((key.to_owned(), value.to_owned()));
            }
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.index.get(key).map(|&i| self.entries[i].1.as_str())
    }
}

/// A variable scope.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// What expansion sees (the last assignment of a name wins): ENV and ARGs with a value both
    /// assign, so whichever comes later shadows the other.
    vars: Vars,
    /// Declared ARGs in declaration order; `None` when declared without any value.
    args: Vec<(String, Option<String>)>,
    /// ENV as assigned (these, not ARGs, go into the image config).
    env: Vars,
    /// Values a declaration without default falls back to (predefined, or global ARGs).
    fallback: BTreeMap<String, String>,
    /// In the global scope the predefined args are visible without a declaration.
    global: bool,
}

impl Env for Scope {
    fn lookup(&self, name: &str) -> Option<String> {
        if let Some(v) = self.vars.get(name) {
            return Some(v.to_owned());
        }
        if self.global {
            return self.fallback.get(name).cloned();
        }
        None
    }
}

impl Scope {
    /// The global scope, seeded with the predefined args.
    pub fn new(predefined: Vec<(String, String)>) -> Self {
        Scope {
            fallback: predefined.into_iter().collect(),
            global: true,
            ..Scope::default()
        }
    }

    /// A fresh stage scope under `global`: nothing visible until declared.
    pub fn for_stage(global: &Scope) -> Self {
        let mut fallback = global.fallback.clone();
        for (k, v) in &global.args {
            match v {
                Some(v) => {
                    fallback.insert(k.clone(), v.clone());
                }
                None => {
                    fallback.remove(k);
                }
            }
        }
        Scope {
            fallback,
            ..Scope::default()
        }
    }

    /// Seeds ENV (e.g. from the base image's config).
    pub fn with_env(mut self, env: impl IntoIterator<Item = (String, String)>) -> Self {
        for (k, v) in env {
            self.assign_env(&k, &v);
        }
        self
    }

    /// Expands one word (no word splitting) in this scope, within `budget`. Errors read
    /// `failed to process "<word>": <why>`, as BuildKit's.
    pub fn expand(
        &self,
        lexer: &Lexer,
        budget: &Budget,
        word: &str,
    ) -> Result<String, ExpandError> {
        lexer
            .process_word_in(word, self, budget)
            .map_err(|source| ExpandError {
                word: word.to_string(),
                source,
            })
    }

    /// `ARG key[=default]`: a `--build-arg` wins, then the default (expanded here), then — in
    /// a stage — the global or predefined value of the same name.
    pub fn declare_arg(
        &mut self,
        lexer: &Lexer,
        budget: &Budget,
        decl: &ArgDecl,
        build_args: &BTreeMap<String, String>,
    ) -> Result<(), ExpandError> {
        let value = if let Some(v) = build_args.get(&decl.key) {
            Some(v.clone())
        } else if let Some(d) = &decl.value {
            Some(self.expand(lexer, budget, d)?)
        } else {
            self.fallback.get(&decl.key).cloned()
        };
        if let Some(v) = &value {
            self.vars.set(&decl.key, v);
        }
        self.args.push((decl.key.clone(), value));
        Ok(())
    }

    /// `ENV key=value`, the value expanded in this scope first.
    pub fn set_env(
        &mut self,
        lexer: &Lexer,
        budget: &Budget,
        kv: &KeyValue,
    ) -> Result<(), ExpandError> {
        let value = self.expand(lexer, budget, &kv.value)?;
        self.assign_env(&kv.key, &value);
        Ok(())
    }

    /// Sets an ENV variable to an already expanded value.
    pub fn assign_env(&mut self, key: &str, value: &str) {
        self.vars.set(key, value);
        self.env.set(key, value);
    }

    /// Declared ARGs with their values (the last declaration wins).
    pub fn declared_args(&self) -> BTreeMap<String, Option<String>> {
        self.args.iter().cloned().collect()
    }

    /// ENV as set in this scope, last assignment of each name winning, in first-set order.
    pub fn env(&self) -> Vec<(String, String)> {
        self.env.entries.clone()
    }

    /// The environment a RUN sees: the scope's variables (ENV and valued ARGs), plus
    /// undeclared proxy variables from `--build-arg` (never persisted; see [`proxy_env`]).
    pub fn run_env(&self, build_args: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut out = self.vars();
        out.extend(proxy_env(&out, build_args));
        out
    }

    /// The scope's variables (ENV and valued ARGs), last assignment of each name winning.
    pub fn vars(&self) -> Vec<(String, String)> {
        self.vars.entries.clone()
    }
}

/// The undeclared proxy variables a RUN gets from `--build-arg`, beside `vars` (the step's own
/// variables, which win). As BuildKit's proxy environment, a proxy build-arg is matched in any
/// case and given to the command in both (`--build-arg http_proxy=x` sets `HTTP_PROXY` and
/// `http_proxy`); they are not part of the step (nor, as in BuildKit, of its cache key).
pub fn proxy_env(
    vars: &[(String, String)],
    build_args: &BTreeMap<String, String>,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for upper in PROXY_ARGS
        .iter()
        .filter(|p| p.starts_with(char::is_uppercase))
    {
        let lower = upper.to_lowercase();
        // An exact-case build-arg wins over one in the other case.
        let value = build_args
            .get(*upper)
            .or_else(|| build_args.get(&lower))
            .or_else(|| {
                build_args
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(upper))
                    .map(|(_, v)| v)
            });
        let Some(value) = value else { continue };
        for name in [upper.to_string(), lower] {
            if !vars.iter().any(|(k, _)| *k == name) {
                out.push((name, value.clone()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decl(k: &str, v: Option<&str>) -> ArgDecl {
        ArgDecl {
            key: k.into(),
            value: v.map(str::to_string),
            comment: String::new(),
        }
    }

    #[test]
    fn stage_sees_global_only_when_redeclared() {
        let lexer = Lexer::new('\\');
        let b = Budget::new();
        let none = BTreeMap::new();
        let mut g = Scope::new(predefined_args(&Platform::host(), &Platform::host(), ""));
        g.declare_arg(&lexer, &b, &decl("V", Some("1")), &none)
            .unwrap();
        assert_eq!(g.expand(&lexer, &b, "x$V").unwrap(), "x1");
        let mut s = Scope::for_stage(&g);
        assert_eq!(s.expand(&lexer, &b, "x$V").unwrap(), "x");
        assert_eq!(s.expand(&lexer, &b, "$TARGETOS").unwrap(), "");
        s.declare_arg(&lexer, &b, &decl("V", None), &none).unwrap();
        s.declare_arg(&lexer, &b, &decl("TARGETOS", None), &none)
            .unwrap();
        assert_eq!(s.expand(&lexer, &b, "x$V-$TARGETOS").unwrap(), "x1-linux");
    }

    #[test]
    fn env_shadows_arg_and_build_args_override() {
        let lexer = Lexer::new('\\');
        let b = Budget::new();
        let mut ba = BTreeMap::new();
        ba.insert("A".to_string(), "cli".to_string());
        ba.insert("http_proxy".to_string(), "http://p".to_string());
        let mut s = Scope::for_stage(&Scope::new(vec![]));
        s.declare_arg(&lexer, &b, &decl("A", Some("default")), &ba)
            .unwrap();
        assert_eq!(s.expand(&lexer, &b, "$A").unwrap(), "cli");
        s.set_env(
            &lexer,
            &b,
            &KeyValue {
                key: "A".into(),
                value: "env-$A".into(),
            },
        )
        .unwrap();
        assert_eq!(s.expand(&lexer, &b, "$A").unwrap(), "env-cli");
        // A later ARG with a value shadows the ENV again, as in BuildKit.
        s.declare_arg(&lexer, &b, &decl("A", Some("again")), &BTreeMap::new())
            .unwrap();
        assert_eq!(s.expand(&lexer, &b, "$A").unwrap(), "again");
        assert_eq!(s.env(), vec![("A".to_string(), "env-cli".to_string())]);
        let env = s.run_env(&ba);
        assert!(env.contains(&("http_proxy".into(), "http://p".into())));
        assert!(!s.declared_args().contains_key("http_proxy"));
    }
}
