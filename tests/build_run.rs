//! RUN end to end: the busybox/alpine rows of ../shared/conformance/semantics.md that need a RUN
//! executor (alpine → the local busybox base; busybox has no `adduser`, so users are written as
//! passwd/group lines), and RUN's own basics (exec form, SHELL, WORKDIR, ENV/ARG, USER, HOME,
//! PATH, networks, the copy snapshotter, errors, `kiln run`).
//!
//! Each test runs for every runner of `RUNNERS` (root, `kiln-test` with subordinate ids,
//! `kiln-nosubid` with a single-id map), each with its own store imported by that runner and
//! its own context, unless the row is about ownership: then root and `kiln-test` only, because a
//! single-id user namespace maps only root (files of other owners cannot be made or kept). The
//! users need root to switch to (CI); without root every test prints SKIP lines.

mod common;

use std::path::Path;

use common::build::{
    Built, OWNERSHIP_RUNNERS, RUNNERS, Runner, build_as, build_error_as, kiln_as, make_tree,
    runner_store, try_build_as,
};

/// busybox has no adduser: the row's `adduser -D user`.
const ADD_USER: &str = "RUN echo 'user:x:1000:1000::/home/user:/bin/sh' >> /etc/passwd && \
                        echo 'user:x:1000:' >> /etc/group && mkdir -p /home/user && chown 1000:1000 /home/user";
const ADD_USER01: &str = "RUN echo 'user01:x:1001:1001::/home/user01:/bin/sh' >> /etc/passwd && \
                          echo 'user01:x:1001:' >> /etc/group";

const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `f(who, store, ctx)` for every available runner of `runners`, each with a fresh busybox
/// store imported by that runner and an empty context directory it can reach.
fn each(test: &str, runners: &[Runner], f: impl Fn(Runner, &Path, &Path)) {
    for &who in runners {
        let Some(store) = runner_store(who, test) else {
            continue;
        };
        let ctx = common::build::runner_dir(who);
        eprintln!("{test}: as {}", who.label());
        f(who, store.path(), ctx.path());
    }
}

/// A build that must succeed, with no extra flags or environment.
fn ok(who: Runner, store: &Path, ctx: &Path, dockerfile: &str) -> Built {
    build_as(who, store, ctx, dockerfile, &[], &[])
}

/// The file names (not directories) under `dir` of the result, relative to it, sorted.
fn files_under(b: &Built, dir: &str) -> Vec<String> {
    let prefix = format!("{}/", dir.trim_matches('/'));
    b.tree()
        .into_iter()
        .filter(|p| p.starts_with(&prefix) && !b.path(p).is_dir())
        .map(|p| p[prefix.len()..].to_string())
        .collect()
}

fn env_of(b: &Built) -> Vec<String> {
    b.inspect()["config"]["config"]["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

// ---- semantics.md rows ----

#[test]
fn s17_symbolic_chmod_from_a_stage_made_by_run() {
    each("s17", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox AS base\n\
             RUN mkdir -p /src/dir && echo x > /src/file && chmod 0666 /src/file && chmod 0124 /src/dir\n\
             FROM scratch\n\
             COPY --from=base --chmod=go-w /src/file /f1\n\
             COPY --from=base --chmod=go-w /src/ /o1/\n\
             COPY --from=base --chmod=u=rw,g=r,o=r /src/file /f2\n\
             COPY --from=base --chmod=u=rw,g=r,o=r /src/ /o2/\n\
             COPY --from=base --chmod=a+X /src/file /f3\n\
             COPY --from=base --chmod=a+X /src/ /o3/\n",
        );
        let l = who.label();
        for (f, o, file_mode, dir_mode) in [
            ("/f1", "/o1", 0o644, 0o104),
            ("/f2", "/o2", 0o644, 0o644),
            ("/f3", "/o3", 0o666, 0o135),
        ] {
            assert_eq!(b.mode(f), file_mode, "{f} as {l}");
            assert_eq!(b.mode(&format!("{o}/file")), file_mode, "{o}/file as {l}");
            assert_eq!(b.mode(&format!("{o}/dir")), dir_mode, "{o}/dir as {l}");
        }
        assert_eq!(b.read("/f1"), "x\n");
    });
}

#[test]
fn s19_chown_owns_the_created_destination() {
    // Ownership: root and kiln-test only (a single-id map has no uid 1000).
    each("s19", &OWNERSHIP_RUNNERS, |who, store, ctx| {
        make_tree(ctx, &["a=1", "d/b=2"]);
        let b = build_as(
            who,
            store,
            ctx,
            &format!(
                "FROM busybox\n{ADD_USER}\n{ADD_USER01}\nCOPY --chown=user:user . /dest\n\
                 ENV owner=user01\nARG group\nCOPY --chown=${{owner}}:${{group}} . /dest01\n"
            ),
            &["--build-arg", "group=user"],
            &[],
        );
        let l = who.label();
        for p in ["/dest", "/dest/a", "/dest/d", "/dest/d/b"] {
            assert_eq!(b.owner(p), (1000, 1000), "{p} as {l}");
        }
        for p in ["/dest01", "/dest01/a", "/dest01/d/b"] {
            assert_eq!(b.owner(p), (1001, 1000), "{p} as {l}");
        }
        assert_eq!(b.read("/dest01/d/b"), "2");
    });
}

#[test]
fn s20_owners_from_a_stage_and_existing_dirs() {
    // Ownership: root and kiln-test only (RUN chown to 100:200 needs those ids mapped).
    each("s20", &OWNERSHIP_RUNNERS, |who, store, ctx| {
        let stages = "FROM busybox AS source\n\
             RUN echo f > /file && mkdir -p /dir/subdir && echo n > /dir/subdir/nestedfile && \
             chown 100:200 /file /dir && chown 101:201 /dir/subdir && chown 102:202 /dir/subdir/nestedfile\n\
             FROM busybox AS test_base\n\
             RUN mkdir -p /existingdir/existingsubdir && echo e > /existingdir/existingfile && \
             chown 500:600 /existingdir && chown 501:601 /existingdir/existingsubdir /existingdir/existingfile\n\
             FROM test_base\nWORKDIR /\n";
        let l = who.label();
        let b = ok(
            who,
            store,
            ctx,
            &format!(
                "{stages}COPY --from=source /file .\nCOPY --from=source /dir /dir\n\
                 COPY --from=source /dir/. /existingdir\n"
            ),
        );
        for (p, o) in [
            ("/file", (100, 200)),
            ("/dir", (0, 0)),
            ("/dir/subdir", (101, 201)),
            ("/dir/subdir/nestedfile", (102, 202)),
            ("/existingdir", (500, 600)),
            ("/existingdir/existingsubdir", (501, 601)),
            ("/existingdir/existingfile", (501, 601)),
            ("/existingdir/subdir", (101, 201)),
            ("/existingdir/subdir/nestedfile", (102, 202)),
        ] {
            assert_eq!(b.owner(p), o, "{p} as {l}");
        }
        let b = ok(
            who,
            store,
            ctx,
            &format!(
                "{stages}COPY --chown=300:400 --from=source /file .\n\
                 COPY --chown=300:400 --from=source /dir /dir\n\
                 COPY --chown=300:400 --from=source /dir/. /existingdir\n"
            ),
        );
        for p in [
            "/file",
            "/dir",
            "/dir/subdir",
            "/dir/subdir/nestedfile",
            "/existingdir/subdir",
            "/existingdir/subdir/nestedfile",
        ] {
            assert_eq!(b.owner(p), (300, 400), "{p} as {l}");
        }
        assert_eq!(b.owner("/existingdir"), (500, 600), "as {l}");
        assert_eq!(b.owner("/existingdir/existingsubdir"), (501, 601), "as {l}");
        assert_eq!(b.owner("/existingdir/existingfile"), (501, 601), "as {l}");
    });
}

#[test]
fn s22_symlinks_in_a_stage_source_path() {
    each("s22", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox AS build\n\
             RUN mkdir -p /out/sub && ln -s /out/sub /sub && ln -s out/sub /sub2 && echo -n data > /out/sub/foo\n\
             FROM scratch\nCOPY --from=build /sub/foo .\nCOPY --from=build /sub2/foo bar\n",
        );
        assert_eq!(b.read("/foo"), "data", "as {}", who.label());
        assert_eq!(b.read("/bar"), "data");
        assert_eq!(b.tree(), ["bar", "foo"]);
    });
}

/// The base of S34 (made with RUN).
const PARENTS_BASE: &str = "FROM busybox AS base\n\
     RUN mkdir -p /test/a/b/c/d/e /test/a/b2/c/d/e /test/a/b/c2/d/e /test/a/b/c2/d/e2 && \
     echo -n foo > /test/a/b/c/d/foo && echo -n bay > /test/a/b/c/d/e/bay && \
     echo -n bar > /test/a/b2/c/d/e/bar && echo -n baz > /test/a/b/c2/d/e/baz && \
     echo -n baz2 > /test/a/b/c2/d/e2/baz\n";

#[test]
fn s34_parents_pivots_from_a_stage() {
    each("s34", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            &format!(
                "{PARENTS_BASE}FROM scratch\n\
                 COPY --from=base --parents /test/a/b/./c/d /out1/\n\
                 COPY --from=base --parents /test/a/b/c/d/. /out2/\n\
                 COPY --from=base --parents ./test/a/b/c/d /out3/\n\
                 COPY --from=base --parents /test/a/./b/./c /out4/\n\
                 COPY --from=base --parents /test/a/./*/c /out5/\n\
                 COPY --from=base --parents /test/a/b*/./c/**/e /out6/\n"
            ),
        );
        let l = who.label();
        assert_eq!(files_under(&b, "out1"), ["c/d/e/bay", "c/d/foo"], "as {l}");
        let full = ["test/a/b/c/d/e/bay", "test/a/b/c/d/foo"];
        assert_eq!(files_under(&b, "out2"), full, "pivot-less keeps the path");
        assert_eq!(files_under(&b, "out3"), full);
        assert_eq!(
            files_under(&b, "out4"),
            ["b/c/d/e/bay", "b/c/d/foo"],
            "the first pivot counts"
        );
        assert_eq!(
            files_under(&b, "out5"),
            ["b/c/d/e/bay", "b/c/d/foo", "b2/c/d/e/bar"],
            "a wildcard after the pivot; no c2"
        );
        assert_eq!(files_under(&b, "out6"), ["c/d/e/bar", "c/d/e/bay"]);
        assert_eq!(b.read("/out6/c/d/e/bar"), "bar");
    });
}

#[test]
fn s35_parents_missing_paths_from_a_stage() {
    // The row's "same base" is upstream's own base for this test, where b2*/c2* match nothing;
    // with S34's base they would match, so this base has only /test/a/b/c.
    let base =
        "FROM busybox AS base\nRUN mkdir -p /test/a/b/c/d && echo -n foo > /test/a/b/c/d/foo\n";
    each("s35", &RUNNERS, |who, store, ctx| {
        let err = build_error_as(
            who,
            store,
            ctx,
            &format!(
                "{base}FROM scratch\nCOPY --from=base --parents /test/nonexistent-file /out/\n"
            ),
            &[],
            &[],
        );
        assert!(
            err.contains("\"/test/nonexistent-file\": not found"),
            "as {}: {err}",
            who.label()
        );
        assert!(err.contains(":4"), "{err}");
        let b = ok(
            who,
            store,
            ctx,
            &format!(
                "{base}FROM scratch\nCOPY --from=base --parents /test/a/b2*/c /out/\n\
                 COPY --from=base --parents /test/a/b/./c2* /out/\n"
            ),
        );
        assert!(files_under(&b, "out").is_empty(), "{:?}", b.tree());
    });
}

#[test]
fn s37_workdir_is_created_for_the_user() {
    // Ownership: root and kiln-test only.
    each("s37", &OWNERSHIP_RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            &format!(
                "FROM busybox\n{ADD_USER}\nRUN mkdir /existing && chown 1234:1234 /existing\n\
                 USER user\nWORKDIR /mydir\nRUN stat -c %u:%g . > /tmp/mydir-owner && touch mine\n\
                 WORKDIR /existing\nUSER root\nRUN stat -c %u:%g . > /tmp/existing-owner\n"
            ),
        );
        let l = who.label();
        assert_eq!(b.owner("/mydir"), (1000, 1000), "as {l}");
        assert_eq!(b.owner("/mydir/mine"), (1000, 1000), "as {l}");
        assert_eq!(b.read("/tmp/mydir-owner"), "1000:1000\n");
        assert_eq!(
            b.owner("/existing"),
            (1234, 1234),
            "an existing dir keeps its owner"
        );
        assert_eq!(b.read("/tmp/existing-owner"), "1234:1234\n");
    });
}

#[test]
fn s42_invalid_json_is_shell_form() {
    each("s42", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox\nENTRYPOINT []random string\n",
        );
        assert_eq!(
            b.inspect()["config"]["config"]["Entrypoint"],
            serde_json::json!(["/bin/sh", "-c", "[]random string"])
        );
        let err = build_error_as(
            who,
            store,
            ctx,
            "FROM busybox\nRUN [\"echo\", \"hello\"]this is invalid\n",
            &[],
            &[],
        );
        assert!(
            err.contains("[\"echo\", \"hello\"]this is invalid"),
            "as {}: {err}",
            who.label()
        );
        assert!(err.contains("Dockerfile.kiln-test:2"), "{err}");
        assert!(err.contains("exit code: "), "{err}");
    });
}

#[test]
fn s46_meta_args_in_run() {
    each("s46", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "ARG a1=\"foo bar\" a2=box\nARG a3=\"$a2-foo\"\nFROM busy$a2 AS build\n\
             ARG a3 a4=\"123 456\" a1\nRUN echo -n \"$a1:$a3:$a4\" > /out\n",
        );
        assert_eq!(
            b.read("/out"),
            "foo bar:box-foo:123 456",
            "as {}",
            who.label()
        );
    });
}

/// S47's stages: TARGETSTAGE before and after its declaration.
const S47_BASE: &str = "FROM busybox AS base\nRUN mkdir /out && echo -n \"value:$TARGETSTAGE\" > /out/first\n\
                        ARG TARGETSTAGE\nRUN echo -n \"value:$TARGETSTAGE\" > /out/second\n\
                        FROM scratch AS foo\nCOPY --from=base /out /\n";

#[test]
fn s47_targetstage_arg() {
    each("s47", &RUNNERS, |who, store, ctx| {
        let l = who.label();
        let b = build_as(
            who,
            store,
            ctx,
            &format!("{S47_BASE}FROM scratch\nCOPY --from=base /out /\n"),
            &["--target", "foo"],
            &[],
        );
        assert_eq!(b.read("/first"), "value:", "not declared yet, as {l}");
        assert_eq!(b.read("/second"), "value:foo", "as {l}");
        let b = ok(
            who,
            store,
            ctx,
            &format!("{S47_BASE}FROM scratch AS final\nCOPY --from=base /out /\n"),
        );
        assert_eq!(b.read("/second"), "value:final", "named last stage, as {l}");
    });
}

#[test]
fn s47_targetstage_arg_default() {
    each("s47_default", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            &format!("{S47_BASE}FROM scratch\nCOPY --from=base /out /\n"),
        );
        assert_eq!(
            b.read("/second"),
            "value:default",
            "unnamed last stage, as {}",
            who.label()
        );
    });
}

#[test]
fn s48_builtin_proxy_args() {
    each("s48", &RUNNERS, |who, store, ctx| {
        let df = "FROM busybox\nARG FOO\nARG BAR\nARG BAZ=bazcontent\n\
                  RUN echo -n $HTTP_PROXY::$NO_PROXY::$FOO::$BAR::$BAZ > /out\n";
        let b = build_as(
            who,
            store,
            ctx,
            df,
            &[
                "--build-arg",
                "FOO=foocontents",
                "--build-arg",
                "http_proxy=hpvalue",
                "--build-arg",
                "NO_PROXY=npvalue",
            ],
            &[],
        );
        assert_eq!(
            b.read("/out"),
            "hpvalue::npvalue::foocontents::::bazcontent",
            "as {}",
            who.label()
        );
        // Proxy values are not part of the image.
        let env = env_of(&b);
        assert!(
            !env.iter().any(|e| e.to_lowercase().contains("proxy")),
            "{env:?}"
        );
        // Changing only the proxy values does not bust the cache (as BuildKit: they are not
        // part of the step), and with --no-cache the new values reach the RUN.
        let b = build_as(
            who,
            store,
            ctx,
            df,
            &[
                "--build-arg",
                "FOO=foocontents",
                "--build-arg",
                "http_proxy=hpvalue2",
                "--build-arg",
                "NO_PROXY=npvalue2",
            ],
            &[],
        );
        assert_eq!(
            b.read("/out"),
            "hpvalue::npvalue::foocontents::::bazcontent"
        );
        let b = build_as(
            who,
            store,
            ctx,
            df,
            &[
                "--build-arg",
                "FOO=foocontents",
                "--build-arg",
                "http_proxy=hpvalue2",
                "--build-arg",
                "NO_PROXY=npvalue2",
                "--no-cache",
            ],
            &[],
        );
        assert_eq!(
            b.read("/out"),
            "hpvalue2::npvalue2::foocontents::::bazcontent"
        );
    });
}

#[test]
fn s49_default_env_with_args() {
    each("s49", &RUNNERS, |who, store, ctx| {
        let df = "FROM busybox\nARG my_arg\nENV my_arg \"my_arg=${my_arg:-def_val}\"\n\
                  ENV my_trimmed_arg \"${my_arg%%e*}\"\nRUN echo -n \"$my_arg|$my_trimmed_arg\" > /out\n";
        for (args, full, trimmed) in [
            (&[][..], "my_arg=def_val", "my_arg=d"),
            (
                &["--build-arg", "my_arg="][..],
                "my_arg=def_val",
                "my_arg=d",
            ),
            (
                &["--build-arg", "my_arg=override"][..],
                "my_arg=override",
                "my_arg=ov",
            ),
        ] {
            let b = build_as(who, store, ctx, df, args, &[]);
            let env = env_of(&b);
            assert!(env.contains(&format!("my_arg={full}")), "{args:?}: {env:?}");
            assert!(
                env.contains(&format!("my_trimmed_arg={trimmed}")),
                "{args:?}: {env:?}"
            );
            // ENV wins over the ARG of the same name in RUN's environment too.
            assert_eq!(
                b.read("/out"),
                format!("{full}|{trimmed}"),
                "{args:?} as {}",
                who.label()
            );
        }
    });
}

#[test]
fn s50_empty_string_arg_in_run_env() {
    each("s50", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox\nARG FOO\nARG BAR=\nRUN env > env.txt\n",
        );
        let env = b.read("/env.txt");
        assert!(
            env.lines().any(|l| l == "BAR="),
            "as {}: {env}",
            who.label()
        );
        assert!(!env.lines().any(|l| l.starts_with("FOO=")), "{env}");
    });
}

#[test]
fn s51_env_value_is_literal() {
    each("s51", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox\nENV myenv foo%sbar\nRUN printf '%s' \"$myenv\" > /out\n",
        );
        assert!(env_of(&b).contains(&"myenv=foo%sbar".to_string()));
        assert_eq!(b.read("/out"), "foo%sbar", "as {}", who.label());
    });
}

#[test]
fn s53_stage_made_by_run_shadows_an_image() {
    each("s53", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox AS golang\nRUN echo -n go-binary > /usr/bin/go\n\
             FROM scratch\nCOPY --from=golang /usr/bin/go go\n",
        );
        assert_eq!(b.read("/go"), "go-binary", "as {}", who.label());
    });
}

#[test]
fn s61_heredoc_copy_chown_to_a_user_made_by_run() {
    // Ownership: root and kiln-test only. (The rest of S61 is in build_semantics.rs.)
    each("s61", &OWNERSHIP_RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            &format!(
                "FROM busybox\n{ADD_USER}\nCOPY --chown=user:user <<EOF /permfiles/owned\nx\nEOF\n\
                 COPY --chown=user:user --chmod=0640 <<EOF <<EOF2 /permfiles/both/\none\nEOF\ntwo\nEOF2\n"
            ),
        );
        let l = who.label();
        assert_eq!(b.owner("/permfiles/owned"), (1000, 1000), "as {l}");
        assert_eq!(b.read("/permfiles/owned"), "x\n");
        assert_eq!(b.owner("/permfiles/both/EOF2"), (1000, 1000), "as {l}");
        assert_eq!(b.mode("/permfiles/both/EOF"), 0o640);
        assert_eq!(b.read("/permfiles/both/EOF2"), "two\n");
    });
}

#[test]
fn s64_run_heredoc_is_expanded_by_the_shell() {
    each("s64", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox\nARG name=world\nRUN mkdir /dest\n\
             RUN <<EOF\necho \"Hello ${name}!\" > /dest/r1\nEOF\n\
             RUN <<EOF\nname=\"new world\"\necho \"Hello ${name}!\" > /dest/r2\nEOF\n",
        );
        assert_eq!(b.read("/dest/r1"), "Hello world!\n", "as {}", who.label());
        assert_eq!(b.read("/dest/r2"), "Hello new world!\n");
    });
}

#[test]
fn s65_run_heredoc_indent() {
    each("s65", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox\nRUN mkdir /dest\n\
             RUN <<EOF\n\techo \"\n\tfoo\" > /dest/foo-run\nEOF\n\
             RUN <<-EOF\n\techo \"\n\tbar\" > /dest/bar-run\nEOF\n",
        );
        assert_eq!(b.read("/dest/foo-run"), "\n\tfoo\n", "as {}", who.label());
        assert_eq!(
            b.read("/dest/bar-run"),
            "\nbar\n",
            "<<- strips tabs even inside quotes"
        );
    });
}

#[test]
fn s66_run_heredocs_on_file_descriptors() {
    each("s66_fds", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox\nRUN mkdir /dest\n\
             RUN <<EOF 3<<IN1 4<<IN2 awk -f - > /dest/complex\n\
             BEGIN {\n\
               while ((getline line < \"/proc/self/fd/3\") > 0) print \"fd3:\" line\n\
               while ((getline line < \"/proc/self/fd/4\") > 0) print \"fd4:\" line\n\
             }\n\
             EOF\none\nIN1\ntwo\nIN2\n",
        );
        assert_eq!(
            b.read("/dest/complex"),
            "fd3:one\nfd4:two\n",
            "as {}",
            who.label()
        );
    });
}

#[test]
fn s66_run_heredoc_script_by_the_shell() {
    each("s66_shell", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox\nRUN mkdir /dest\nSHELL [\"/usr/bin/awk\"]\n\
             RUN <<EOF\nBEGIN { print \"awk-shell\" > \"/dest/fake\" }\nEOF\n",
        );
        assert_eq!(b.read("/dest/fake"), "awk-shell\n", "as {}", who.label());
    });
}

#[test]
fn s66_run_heredoc_script_by_its_shebang() {
    each("s66_shebang", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox\nRUN mkdir /dest\n\
             RUN <<EOF\n#!/usr/bin/awk -f\nBEGIN { print \"shebang\" > \"/dest/shebang\" }\nEOF\n",
        );
        assert_eq!(b.read("/dest/shebang"), "shebang\n", "as {}", who.label());
    });
}

#[test]
fn s70_onbuild_runs_once_and_is_cleared() {
    each("s70", &RUNNERS, |who, store, ctx| {
        let l = who.label();
        build_as(
            who,
            store,
            ctx,
            "FROM busybox\nONBUILD RUN mkdir -p /out && echo -n 11 >> /out/foo\n",
            &["-t", "onbuild-base"],
            &[],
        );
        let child = build_as(
            who,
            store,
            ctx,
            "FROM onbuild-base\n",
            &["-t", "onbuild-child"],
            &[],
        );
        assert_eq!(child.read("/out/foo"), "11", "as {l}");
        let c = child.inspect();
        let onbuild = &c["config"]["config"]["OnBuild"];
        assert!(
            onbuild.is_null() || onbuild.as_array().is_some_and(|a| a.is_empty()),
            "the trigger is cleared in the child: {onbuild}"
        );
        let b = ok(
            who,
            store,
            ctx,
            "FROM onbuild-child AS base\nFROM scratch\nCOPY --from=base /out /\n",
        );
        assert_eq!(b.read("/foo"), "11", "not 1111, as {l}");
    });
}

#[test]
fn s71_onbuild_keeps_heredoc_bodies() {
    each("s71", &RUNNERS, |who, store, ctx| {
        build_as(
            who,
            store,
            ctx,
            "FROM busybox\nONBUILD RUN <<EOF\necho \"hello world\" >> /dest\nEOF\n",
            &["-t", "onbuild-heredoc"],
            &[],
        );
        let b = ok(
            who,
            store,
            ctx,
            "FROM onbuild-heredoc AS b\nFROM scratch\nCOPY --from=b /dest /dest\n",
        );
        assert_eq!(b.read("/dest"), "hello world\n", "as {}", who.label());
    });
}

// ---- RUN basics ----

#[test]
fn run_as_another_user_in_a_single_id_map_fails_clearly() {
    // Only kiln-nosubid: a single-id map has no uid but root to run as.
    each("run_user_single_id", &RUNNERS[2..], |who, store, ctx| {
        let err = build_error_as(
            who,
            store,
            ctx,
            "FROM busybox\nUSER 1000\nRUN id\n",
            &[],
            &[],
        );
        assert!(err.contains("Dockerfile.kiln-test:3"), "{err}");
        assert!(err.contains("single-id"), "{err}");
    });
}

#[test]
fn run_shell_and_exec_forms_layers_and_whiteouts() {
    each("run_forms", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox\nENV X=1\n\
             RUN echo shell > /shell-form\n\
             RUN [\"/bin/sh\", \"-c\", \"echo exec > /exec1\"]\n\
             RUN [\"touch\", \"/exec2\"]\n\
             RUN [\"/bin/sh\", \"-c\", \"echo \\\"$0\\\" > /exec3\", \"$X\"]\n\
             RUN rm /shell-form /bin/vi && rm -r /home && mkdir -p /new/dir && echo y > /new/dir/f\n",
        );
        let l = who.label();
        assert!(
            !b.exists("/shell-form"),
            "a file of an earlier RUN is deleted, as {l}"
        );
        assert_eq!(b.read("/exec1"), "exec\n");
        assert!(b.exists("/exec2"), "exec form finds touch through PATH");
        assert_eq!(b.read("/exec3"), "$X\n", "exec form is not expanded");
        assert!(!b.exists("/bin/vi"), "a deleted file of the base is gone");
        assert!(b.exists("/bin/sh"));
        assert!(!b.exists("/home"), "a deleted dir is gone");
        assert!(b.exists("/etc/passwd"));
        assert_eq!(b.read("/new/dir/f"), "y\n");
        assert_eq!(b.owner("/new/dir/f"), (0, 0), "as {l}");
        // One layer per RUN (five RUNs on a one-layer base).
        let layers = b.inspect()["config"]["rootfs"]["diff_ids"]
            .as_array()
            .map(|a| a.len())
            .unwrap_or_default();
        assert_eq!(layers, 6, "as {l}");
    });
}

#[test]
fn run_shell_instruction_changes_the_shell() {
    each("run_shell", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox\n\
             SHELL [\"/bin/sh\", \"-c\", \"echo \\\"$0|$1\\\" > /shell-args\", \"sh0\"]\n\
             RUN hello world\n\
             SHELL [\"/bin/sh\", \"-c\"]\nRUN echo back > /back\n",
        );
        assert_eq!(
            b.read("/shell-args"),
            "sh0|hello world\n",
            "as {}",
            who.label()
        );
        assert_eq!(b.read("/back"), "back\n");
    });
}

#[test]
fn run_workdir_env_arg_and_path() {
    each("run_workdir_env", &RUNNERS, |who, store, ctx| {
        let df = "FROM busybox\nWORKDIR /w1\nWORKDIR w2\nRUN pwd > /pwd && touch rel\n\
                  ARG A=arg-a\nENV E=env-e\nRUN echo \"$A:$E\" > /ae && echo \"$PATH\" > /path\n\
                  ENV PATH=/bin\nRUN echo \"$PATH\" > /path2 && ls / > /dev/null\n";
        let b = ok(who, store, ctx, df);
        let l = who.label();
        assert_eq!(b.read("/pwd"), "/w1/w2\n", "as {l}");
        assert!(b.exists("/w1/w2/rel"));
        assert_eq!(b.read("/ae"), "arg-a:env-e\n");
        assert_eq!(
            b.read("/path"),
            format!("{DEFAULT_PATH}\n"),
            "the default PATH when the base has none"
        );
        assert_eq!(b.read("/path2"), "/bin\n");
        let env = env_of(&b);
        assert!(env.contains(&"E=env-e".to_string()), "{env:?}");
        assert!(
            !env.iter().any(|e| e.starts_with("A=")),
            "ARG is not ENV: {env:?}"
        );
        let b = build_as(who, store, ctx, df, &["--build-arg", "A=over"], &[]);
        assert_eq!(b.read("/ae"), "over:env-e\n");
    });
}

#[test]
fn run_home_per_user() {
    each("run_home_root", &RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox\nRUN echo \"$HOME\" > /home-root && id -u > /uid-root\n\
             ENV HOME=/custom\nRUN echo \"$HOME\" > /home-env\n",
        );
        assert_eq!(b.read("/home-root"), "/root\n", "as {}", who.label());
        assert_eq!(b.read("/uid-root"), "0\n");
        assert_eq!(b.read("/home-env"), "/custom\n", "ENV HOME wins");
    });
    // Other users: root and kiln-test only (a single-id map has no uid 1000 or 4242).
    each("run_home_users", &OWNERSHIP_RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            &format!(
                "FROM busybox\n{ADD_USER}\nUSER user\nRUN echo \"$HOME\" > /tmp/home-user\n\
                 USER 4242\nRUN echo \"$HOME\" > /tmp/home-unknown\n"
            ),
        );
        assert_eq!(
            b.read("/tmp/home-user"),
            "/home/user\n",
            "as {}",
            who.label()
        );
        assert_eq!(b.read("/tmp/home-unknown"), "/\n", "an unknown uid");
    });
}

#[test]
fn run_user_ids_and_supplementary_groups() {
    // Ids: root and kiln-test only (a single-id map has only root).
    each("run_user_ids", &OWNERSHIP_RUNNERS, |who, store, ctx| {
        let b = ok(
            who,
            store,
            ctx,
            &format!(
                "FROM busybox\n{ADD_USER}\n\
                 RUN echo 'extra:x:2000:user' >> /etc/group && echo 'other:x:3000:someone,user' >> /etc/group\n\
                 USER user\nRUN id -u > /tmp/u && id -g > /tmp/g && id -G > /tmp/gs && touch /tmp/by-user\n\
                 USER 1234:5678\nRUN id -u > /tmp/nu && id -g > /tmp/ng && id -G > /tmp/ngs && touch /tmp/by-num\n\
                 USER user:extra\nRUN id -g > /tmp/ug\n\
                 USER root\nRUN id -u > /ru\n"
            ),
        );
        let l = who.label();
        assert_eq!(b.read("/tmp/u"), "1000\n", "as {l}");
        assert_eq!(b.read("/tmp/g"), "1000\n");
        let mut gs: Vec<String> = b
            .read("/tmp/gs")
            .split_whitespace()
            .map(String::from)
            .collect();
        gs.sort();
        assert_eq!(
            gs,
            ["1000", "2000", "3000"],
            "supplementary groups from /etc/group, as {l}"
        );
        assert_eq!(b.owner("/tmp/by-user"), (1000, 1000));
        assert_eq!(b.read("/tmp/nu"), "1234\n");
        assert_eq!(b.read("/tmp/ng"), "5678\n");
        let ngs = b.read("/tmp/ngs");
        assert!(
            ngs.split_whitespace().all(|g| g == "5678"),
            "uid:gid gets no other groups (none of the caller's): {ngs:?} as {l}"
        );
        assert_eq!(b.owner("/tmp/by-num"), (1234, 5678));
        assert_eq!(b.read("/tmp/ug"), "2000\n", "user:group sets the group");
        assert_eq!(b.read("/ru"), "0\n");
    });
}

/// The network device names in a /proc/net/dev text.
fn net_devices(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim().to_string())
        .filter(|n| !n.contains('|'))
        .collect();
    v.sort();
    v
}

#[test]
fn run_network_none_has_loopback_only() {
    let host = net_devices(&std::fs::read_to_string("/proc/net/dev").unwrap());
    each("run_network", &RUNNERS, |who, store, ctx| {
        let l = who.label();
        let b = ok(
            who,
            store,
            ctx,
            "FROM busybox\nRUN --network=none cat /proc/net/dev > /none\n\
             RUN cat /proc/net/dev > /default\nRUN --network=host cat /proc/net/dev > /host\n",
        );
        assert_eq!(net_devices(&b.read("/none")), ["lo"], "as {l}");
        // The host's devices (read before and after the build, in case another process adds one).
        let host_now = net_devices(&std::fs::read_to_string("/proc/net/dev").unwrap());
        for f in ["/default", "/host"] {
            let seen = net_devices(&b.read(f));
            assert!(
                seen == host || seen == host_now,
                "{f}: host network by default and with --network=host, as {l}: {seen:?} vs {host:?}"
            );
        }
        // `--network none` on the command line is the default for every RUN.
        let b = build_as(
            who,
            store,
            ctx,
            "FROM busybox\nRUN cat /proc/net/dev > /none\n",
            &["--network", "none"],
            &[],
        );
        assert_eq!(
            net_devices(&b.read("/none")),
            ["lo"],
            "--network none as {l}"
        );
    });
}

#[test]
fn run_on_the_copy_snapshotter() {
    each("run_copy_snapshotter", &RUNNERS, |who, store, ctx| {
        let l = who.label();
        let chown = if who.keeps_ownership() {
            " && echo o > /owned && chown 1000:1000 /owned"
        } else {
            ""
        };
        let b = build_as(
            who,
            store,
            ctx,
            &format!(
                "FROM busybox\nWORKDIR /w\nARG A=a\nENV E=e\n\
                 RUN pwd > /pwd && pwd > /pwd2 && echo \"$A$E\" > /ae{chown}\n\
                 RUN rm /bin/vi /pwd && echo z > /etc/new\n\
                 RUN [\"/bin/sh\", \"-c\", \"cat /etc/new > /copied\"]\n"
            ),
            &["--progress", "plain"],
            &[("KILN_SNAPSHOTTER", "copy")],
        );
        let log = format!("{}{}", b.stdout(), b.stderr());
        assert!(
            log.lines().any(|x| x.contains("snapshotter: copy")),
            "as {l}: {log}"
        );
        assert!(
            !b.exists("/pwd") && !b.exists("/bin/vi"),
            "deletions, as {l}"
        );
        assert_eq!(b.read("/ae"), "ae\n");
        assert_eq!(b.read("/copied"), "z\n");
        assert_eq!(b.read("/pwd2"), "/w\n");
        if who.keeps_ownership() {
            assert_eq!(b.owner("/owned"), (1000, 1000), "as {l}");
        }
    });
}

#[test]
fn run_failure_names_the_place_and_the_output() {
    each("run_failure", &RUNNERS, |who, store, ctx| {
        let b = try_build_as(
            who,
            store,
            ctx,
            "FROM busybox\nRUN echo fine\nRUN echo out-line-1; echo err-line-2 >&2; exit 3\n",
            &[],
            &[],
        );
        let err = b.stderr();
        let l = who.label();
        assert!(!b.output.status.success(), "as {l}: {err}");
        assert!(err.contains("Dockerfile.kiln-test:3"), "as {l}: {err}");
        assert!(err.contains("echo out-line-1; echo err-line-2"), "{err}");
        assert!(err.contains("exit code: 3"), "{err}");
        assert!(
            err.contains("out-line-1") && err.contains("err-line-2"),
            "{err}"
        );
        // A missing command too.
        let err = build_error_as(
            who,
            store,
            ctx,
            "FROM busybox\nRUN [\"/no/such/cmd\"]\n",
            &[],
            &[],
        );
        assert!(err.contains("Dockerfile.kiln-test:2"), "as {l}: {err}");
        // The store is still fine.
        let b = ok(who, store, ctx, "FROM busybox\nRUN echo ok > /ok\n");
        assert_eq!(b.read("/ok"), "ok\n");
    });
}

#[test]
fn kiln_run_runs_a_command_in_an_image() {
    each("kiln_run", &RUNNERS, |who, store, ctx| {
        let l = who.label();
        build_as(
            who,
            store,
            ctx,
            "FROM busybox\nRUN echo hi > /hello\nWORKDIR /w\nENV V=v1\n",
            &["-t", "runimg"],
            &[],
        );
        let run = |args: &[&str]| {
            kiln_as(who)
                .arg("--root")
                .arg(store)
                .arg("run")
                .arg("--rm")
                .arg("runimg")
                .args(args)
                .stdin(std::process::Stdio::null())
                .output()
                .unwrap()
        };
        let out = run(&["sh", "-c", "cat /hello; pwd; echo $V"]);
        assert!(
            out.status.success(),
            "as {l}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "hi\n/w\nv1\n",
            "as {l}"
        );
        let out = run(&["sh", "-c", "exit 7"]);
        assert_eq!(out.status.code(), Some(7), "as {l}");
        // As docker run: a command that is not found exits 127, one that cannot be executed
        // 126, each with the reason on stderr; kiln's own failures stay 125.
        for (args, code, reason) in [
            (
                &["no-such-command"][..],
                127,
                "executable file not found in PATH",
            ),
            (&["/no/such/file"][..], 127, "No such file or directory"),
            (&["/etc/passwd"][..], 126, "Permission denied"),
            (&["/w"][..], 126, "Permission denied"),
        ] {
            let out = run(args);
            let err = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(code), "as {l}: {args:?}: {err}");
            assert!(err.contains(reason), "as {l}: {args:?}: {err}");
        }
        let out = kiln_as(who)
            .arg("--root")
            .arg(store)
            .args(["run", "--rm", "no-such-image:latest", "true"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125), "as {l}");
    });
}

/// `ln -f a b` over an identical, separate `b`: neither file changed by itself, but the layer
/// must make them one inode (each runner: the link does not depend on ids).
#[test]
fn run_linking_two_equal_files_keeps_the_link() {
    use std::os::unix::fs::MetadataExt;
    each(
        "run_linking_two_equal_files",
        &RUNNERS,
        |who, store, ctx| {
            let b = ok(
                who,
                store,
                ctx,
                "FROM busybox\n\
             RUN echo same > /a && echo same > /b && touch -d '2020-01-01 00:00:00' /a /b\n\
             RUN ln -f /a /b\n",
            );
            let ino = |p: &str| b.path(p).symlink_metadata().unwrap().ino();
            assert_eq!(
                ino("/a"),
                ino("/b"),
                "as {}: /a and /b are one file",
                who.label()
            );
            assert_eq!(b.read("/b"), "same\n");
        },
    );
}
