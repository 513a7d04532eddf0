//! The arrows of docs/ARCHITECTURE.md point down: no lower module imports `builder` (the
//! scheduler) or the CLI, and `dockerfile` knows nothing of the modules built on it. Read from
//! the source text, so a new `use` that reaches up fails here, not in review.

use std::path::{Path, PathBuf};

/// The modules below `builder`, each with the crate modules it must not name.
const RULES: &[(&str, &[&str])] = &[
    (
        "dockerfile",
        &[
            "builder", "plan", "context", "image", "layer", "exec", "snapshot", "cache",
        ],
    ),
    (
        "plan",
        &[
            "builder", "context", "image", "layer", "exec", "snapshot", "cache",
        ],
    ),
    (
        "context",
        &["builder", "plan", "dockerfile", "image", "exec"],
    ),
    (
        "layer",
        &[
            "builder",
            "plan",
            "dockerfile",
            "image",
            "context",
            "snapshot",
        ],
    ),
    (
        "exec",
        &[
            "builder",
            "plan",
            "dockerfile",
            "image",
            "layer",
            "context",
            "snapshot",
        ],
    ),
    (
        "image",
        &[
            "builder",
            "plan",
            "dockerfile",
            "exec",
            "context",
            "snapshot",
        ],
    ),
    // The snapshotter stacks layers (`layer`), mounts them (`exec::mount`) and reads their blobs
    // (`image::Store`); it knows nothing of Dockerfiles or steps.
    ("snapshot", &["builder", "plan", "dockerfile", "context"]),
    ("cache", &["builder"]),
    ("progress", &["builder"]),
    ("platform", &["builder"]),
    ("lease", &["builder", "image", "layer", "snapshot"]),
    // Lexical path cleaning is a leaf: everyone may use it, it uses no one.
    (
        "pathclean",
        &[
            "builder",
            "plan",
            "dockerfile",
            "context",
            "image",
            "layer",
            "exec",
            "snapshot",
            "cache",
            "progress",
            "platform",
            "lease",
        ],
    ),
];

fn sources(module: &str) -> Vec<PathBuf> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let file = src.join(format!("{module}.rs"));
    if file.is_file() {
        out.push(file);
    }
    let mut stack = vec![src.join(module)];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn lower_modules_do_not_reach_up() {
    let mut found = 0;
    let mut bad = Vec::new();
    for (module, forbidden) in RULES {
        for file in sources(module) {
            found += 1;
            let text = std::fs::read_to_string(&file).unwrap();
            for (n, line) in text.lines().enumerate() {
                let code = line.split("//").next().unwrap_or("");
                for f in *forbidden {
                    if code.contains(&format!("crate::{f}::"))
                        || code.contains(&format!("crate::{f}}}"))
                        || code.contains(&format!("crate::{f};"))
                        || code.contains(&format!("crate::{{{f}"))
                        || code.contains(&format!("kiln::{f}::"))
                    {
                        bad.push(format!(
                            "{}:{}: {module} uses {f}: {}",
                            file.display(),
                            n + 1,
                            line.trim()
                        ));
                    }
                }
                // The CLI is main.rs; nothing in the library may name it or anyhow.
                if code.contains("anyhow") {
                    bad.push(format!(
                        "{}:{}: anyhow below the CLI: {}",
                        file.display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        found > 20,
        "only {found} source files found: has src/ moved?"
    );
    assert!(bad.is_empty(), "imports that point up:\n{}", bad.join("\n"));
}

#[test]
fn the_builder_is_not_in_a_folder_named_build() {
    // Tooling and ignore templates treat `build/` as output.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert!(!src.join("build").exists());
    assert!(src.join("builder/mod.rs").is_file());
}

/// The CLI talks to `builder` and `image` (and `progress` for its renderers, and the
/// crate-root `error_chain`): prune, exports, namespace setup and secrets have a home below it.
#[test]
fn the_cli_names_only_builder_image_and_progress() {
    const ALLOWED: &[&str] = &["builder", "image", "progress", "error_chain"];
    let main = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/main.rs");
    let text = std::fs::read_to_string(&main).unwrap();
    let mut named = 0;
    let mut bad = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        for (i, _) in code.match_indices("kiln::") {
            named += 1;
            let rest = &code[i + "kiln::".len()..];
            // `kiln::{a, b}` names every item of the list.
            let names: Vec<&str> = match rest.strip_prefix('{') {
                Some(list) => list
                    .split('}')
                    .next()
                    .unwrap_or("")
                    .split(',')
                    .map(str::trim)
                    .collect(),
                None => vec![rest],
            };
            for name in names {
                let item: String = name
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !ALLOWED.contains(&item.as_str()) {
                    bad.push(format!(
                        "src/main.rs:{}: names kiln::{item}: {}",
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        named > 3,
        "main.rs names kiln only {named} times: has it moved?"
    );
    assert!(
        bad.is_empty(),
        "the CLI reaches past builder/image:\n{}",
        bad.join("\n")
    );
}
