//! Runs `kiln::context::digest` from the shell, for `benches/context_digest.sh`.
//!
//! `context_digest CONTEXT [INDEX_DIR]`: digests the whole context (its `.dockerignore`
//! applied), with the metadata index in INDEX_DIR when given (read, then written), and prints
//! `<seconds> <digest> entries=N hits=N files_hashed=N bytes_hashed=N rollups_reused=N index=STATE`.

use std::path::Path;
use std::time::Instant;

use kiln::context::{ContextDigester, ContextFilter, WalkOptions, read_ignore_file};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(context) = args.first() else {
        eprintln!("usage: context_digest CONTEXT [INDEX_DIR]");
        std::process::exit(2);
    };
    let context = Path::new(context);
    let start = Instant::now();
    let exclude = std::fs::read_to_string(context.join(".dockerignore"))
        .map(|t| read_ignore_file(&t))
        .unwrap_or_default();
    let filter = ContextFilter::new(&WalkOptions {
        include: vec![],
        exclude,
    })
    .unwrap_or_else(|e| fail(e));
    let mut d = match args.get(1) {
        Some(index) => ContextDigester::with_index(context, Path::new(index)),
        None => ContextDigester::new(context),
    }
    .unwrap_or_else(|e| fail(e));
    let out = d.digest(&filter, &["."], None).unwrap_or_else(|e| fail(e));
    d.save().unwrap_or_else(|e| fail(e));
    let s = out.stats;
    println!(
        "{:.3} {} entries={} hits={} files_hashed={} bytes_hashed={} rollups_reused={} index={:?}",
        start.elapsed().as_secs_f64(),
        out.digest,
        s.entries,
        s.index_hits,
        s.files_hashed,
        s.bytes_hashed,
        s.rollups_reused,
        d.index_state(),
    );
}

fn fail(e: impl std::fmt::Display) -> ! {
    eprintln!("context_digest: {e}");
    std::process::exit(1);
}
