//! Layer-writing throughput, driven by `benches/layer_throughput.sh`.
//!
//! `layer_bench gen DIR` writes a deterministic ~200 MB mixed tree; `layer_bench run DIR RUNS`
//! writes it as a layer (scan + tar + sha256 + compression + sha256, output discarded) with
//! gzip-6, zstd-3 and no compression, and prints one line per configuration:
//! `<name> <best seconds> <tar bytes> <blob bytes> <digest>`.

use std::fs;
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use kiln::layer::{Compression, ScanOptions, WriteOptions, scan_dir, write_layer};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const WORDS: &[&str] = &[
    "the",
    "layer",
    "image",
    "build",
    "kiln",
    "digest",
    "config",
    "return",
    "struct",
    "impl",
    "let",
    "mut",
    "self",
    "fn",
    "pub",
    "use",
    "match",
    "Some",
    "None",
    "Ok",
    "Err",
    "error",
    "path",
    "file",
    "directory",
    "entry",
    "header",
    "size",
    "mode",
    "owner",
    "group",
    "time",
    "registry",
    "manifest",
    "index",
    "blob",
    "tar",
    "gzip",
    "zstd",
    "sha256",
    "stream",
    "write",
    "read",
    "apply",
    "snapshot",
    "overlay",
    "namespace",
    "user",
    "root",
    "cache",
    "key",
    "value",
    "Dockerfile",
    "RUN",
    "COPY",
    "FROM",
    "ENV",
    "ARG",
    "LABEL",
    "WORKDIR",
    "echo",
    "install",
    "apt-get",
    "-y",
    "--no-install-recommends",
    "&&",
    "\\",
    "=",
    "{",
    "}",
    "(",
    ")",
    ";",
    "0",
    "1",
    "42",
    "1024",
    "/usr/bin",
    "/etc/passwd",
    "// comment",
    "# note",
    "TODO",
    "fixme",
];

fn text(rng: &mut Rng, len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    while out.len() - start < len {
        let w = WORDS[(rng.next() % WORDS.len() as u64) as usize];
        out.extend_from_slice(w.as_bytes());
        out.push(if rng.next().is_multiple_of(11) {
            b'\n'
        } else {
            b' '
        });
    }
    out.truncate(start + len);
}

fn random(rng: &mut Rng, len: usize, out: &mut Vec<u8>) {
    let start = out.len();
    while out.len() - start < len {
        out.extend_from_slice(&rng.next().to_le_bytes());
    }
    out.truncate(start + len);
}

fn generate(dir: &Path) -> io::Result<()> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut total = 0usize;
    // ~52 MB: 8000 small text files, 1-12 KB, in 80 directories.
    for d in 0..80 {
        let sub = dir.join(format!("src/module{d:02}"));
        fs::create_dir_all(&sub)?;
        for f in 0..100 {
            let len = 1024 + (rng.next() % 11_264) as usize;
            let mut buf = Vec::with_capacity(len);
            text(&mut rng, len, &mut buf);
            total += len;
            fs::write(sub.join(format!("file{f:03}.rs")), buf)?;
        }
    }
    // ~100 MB: 4 large semi-compressible files (text, random and repetitive 4 KB chunks).
    fs::create_dir_all(dir.join("data"))?;
    for i in 0..4 {
        let mut buf = Vec::with_capacity(25 << 20);
        while buf.len() < 25 << 20 {
            match rng.next() % 4 {
                0 | 1 => text(&mut rng, 4096, &mut buf),
                2 => random(&mut rng, 4096, &mut buf),
                _ => {
                    let b = rng.next() as u8;
                    buf.extend((0..4096).map(|j| b.wrapping_add((j % 16) as u8)));
                }
            }
        }
        total += buf.len();
        fs::write(dir.join(format!("data/mixed{i}.bin")), buf)?;
    }
    // ~50 MB: 2 files of random bytes.
    for i in 0..2 {
        let mut buf = Vec::with_capacity(25 << 20);
        random(&mut rng, 25 << 20, &mut buf);
        total += buf.len();
        fs::write(dir.join(format!("data/random{i}.bin")), buf)?;
    }
    eprintln!(
        "generated {:.1} MB in {}",
        total as f64 / 1e6,
        dir.display()
    );
    Ok(())
}

fn run(dir: &Path, runs: u32) -> Result<(), Box<dyn std::error::Error>> {
    let configs = [
        ("gzip-6", Compression::Gzip(6)),
        ("zstd-3", Compression::Zstd(3)),
        ("uncompressed", Compression::Uncompressed),
    ];
    for (name, compression) in configs {
        let opts = WriteOptions {
            compression,
            source_date_epoch: Some(0),
            ..WriteOptions::default()
        };
        let mut best = f64::MAX;
        let mut last = None;
        for _ in 0..runs {
            let t = Instant::now();
            let entries = scan_dir(dir, &ScanOptions::default())?;
            let w = write_layer(entries, &opts, io::sink())?;
            best = best.min(t.elapsed().as_secs_f64());
            last = Some(w);
        }
        let w = last.expect("at least one run");
        println!(
            "{name} {best:.3} {} {} {}",
            w.uncompressed_size, w.size, w.digest
        );
        io::stdout().flush()?;
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("gen") if args.len() == 3 => generate(Path::new(&args[2]))?,
        Some("run") if args.len() >= 3 => {
            let runs = args.get(3).map(|r| r.parse()).transpose()?.unwrap_or(3);
            run(Path::new(&args[2]), runs)?
        }
        _ => {
            eprintln!("usage: layer_bench gen DIR | layer_bench run DIR [RUNS]");
            std::process::exit(2);
        }
    }
    Ok(())
}
