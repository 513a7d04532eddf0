//! `build::mounts` end to end through the real sandbox (as root): a secret readable at
//! `/run/secrets/x` and in `$TOK`, a cache mount persisting between two runs, a writable context
//! bind whose writes are thrown away, and none of it reaching the upperdir.

#[path = "exec_common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use kiln::builder::mounts::{MountContext, SecretSource, prepare};
use kiln::context::{ContextFilter, WalkOptions};
use kiln::dockerfile::instructions::parse_mount;
use kiln::exec::{ExitStatus, RootfsSpec};

/// Every regular file under `root` whose contents include `needle`.
fn files_containing(root: &Path, needle: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file()
                && std::fs::read(e.path())
                    .unwrap()
                    .windows(needle.len())
                    .any(|w| w == needle.as_bytes())
            {
                out.push(e.path());
            }
        }
    }
    out
}

#[test]
fn secret_cache_and_rw_bind_through_the_sandbox() {
    let test = "secret_cache_and_rw_bind_through_the_sandbox";
    if skip_unless_root(test) {
        return;
    }
    let Some(l) = Layers::new(test) else { return };
    std::thread::spawn(move || {
        kiln::exec::mount::private_mount_namespace().unwrap();
        let base = l.dir.path().to_path_buf();
        let context = base.join("context");
        std::fs::create_dir_all(context.join("src")).unwrap();
        std::fs::write(context.join("src/main.c"), "int main;\n").unwrap();
        std::fs::write(context.join("private.key"), "nope\n").unwrap();
        let secret_file = base.join("secret.txt");
        std::fs::write(&secret_file, "s3cr3t-value").unwrap();
        let mut secrets = BTreeMap::new();
        secrets.insert("x".to_string(), SecretSource::File(secret_file));
        let filter = ContextFilter::new(&WalkOptions {
            include: vec![],
            exclude: vec!["*.key".into()],
        })
        .unwrap();
        let cache_root = base.join("cache-mounts");
        let mounts: Vec<_> = [
            "type=secret,id=x",
            "type=secret,id=x,env=TOK",
            "type=cache,target=/cache",
            "type=bind,target=/ctx,rw",
        ]
        .iter()
        .map(|s| parse_mount(s).unwrap())
        .collect();
        let script = "cat /run/secrets/x; echo; stat -c '%a %u' /run/secrets/x; echo \"tok=$TOK\"; \
                      echo run >> /cache/log; cat /cache/log; ls /ctx; echo w > /ctx/src/main.c; \
                      cat /ctx/src/main.c";

        let mut outputs = Vec::new();
        for n in 0..2 {
            let scratch = base.join(format!("scratch{n}"));
            let (upper, work) = (
                base.join(format!("upper{n}")),
                base.join(format!("work{n}")),
            );
            for d in [&scratch, &upper, &work] {
                std::fs::create_dir(d).unwrap();
            }
            let cx = MountContext {
                scratch: &scratch,
                cache_root: &cache_root,
                context: &context,
                filter: &filter,
                secrets: &secrets,
                workdir: "/",
                single_id: false,
            };
            let pm = prepare(&mounts, &cx, &Default::default()).unwrap();
            let mut spec = sh_spec(
                RootfsSpec::Overlay {
                    lowerdirs: vec![l.lower.clone()],
                    upperdir: upper.clone(),
                    workdir: work.clone(),
                },
                script,
            );
            spec.mounts = pm.mounts.clone();
            spec.env
                .extend(pm.env.iter().map(|(k, v)| format!("{k}={v}")));
            let (report, out, err) = run(&spec);
            assert_eq!(report.status, ExitStatus::Code(0), "{out}{err}");
            report.remove_stubs(&upper).unwrap();
            drop(pm);
            kiln::layer::remove_tree_in_place(&scratch).unwrap();
            assert!(
                files_containing(&upper, "s3cr3t").is_empty(),
                "the secret reached the upperdir"
            );
            assert!(!upper.join("cache").exists() && !upper.join("ctx").exists());
            assert!(!upper.join("run/secrets").exists(), "stubs left");
            outputs.push(out);
        }
        assert_eq!(
            outputs[0],
            "s3cr3t-value\n400 0\ntok=s3cr3t-value\nrun\nsrc\nw\n"
        );
        assert_eq!(
            outputs[1],
            "s3cr3t-value\n400 0\ntok=s3cr3t-value\nrun\nrun\nsrc\nw\n"
        );
        // The context is untouched; the secret is nowhere under the build's directories but
        // its own source file.
        assert_eq!(
            std::fs::read_to_string(context.join("src/main.c")).unwrap(),
            "int main;\n"
        );
        assert_eq!(
            files_containing(&base, "s3cr3t"),
            vec![base.join("secret.txt")]
        );
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p));
}
