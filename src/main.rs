//! The `kiln` command line (../shared/CLI.md is the contract).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};

use kiln::builder::{BuildOptions, ExitStatus, Network, debug, host};
use kiln::image::{
    Compression, DockerArchiveImage, ImageRef, ImportOptions, LoadOptions, OciExportOptions, Store,
    StoredImage, parse_ref, write_docker_archive, write_docker_archive_file, write_oci_archive,
    write_oci_archive_file, write_oci_dir, write_output_file,
};
use kiln::progress::{Json as JsonProgress, Plain, Progress, Quiet};

#[derive(Parser)]
#[command(
    name = "kiln",
    version,
    about = "Rootless, daemonless Dockerfile → OCI image builder"
)]
struct Cli {
    /// The store directory (default $XDG_DATA_HOME/kiln, else ~/.local/share/kiln).
    #[arg(long, global = true, env = "KILN_ROOT", value_name = "DIR")]
    root: Option<PathBuf>,

    #[command(subcommand)]
    command: Commands,
}

#[derive(Clone, Copy, ValueEnum)]
enum NetworkMode {
    Host,
    None,
}

#[derive(Subcommand)]
enum Commands {
    /// Build an image from a Dockerfile and a context directory.
    Build(Box<BuildArgs>),
    /// Run a command in an image (its ENTRYPOINT/CMD by default) in kiln's sandbox; nothing the
    /// command writes is kept. Exits with the command's status.
    Run {
        /// Accepted for docker compatibility: kiln never keeps a container.
        #[arg(long)]
        rm: bool,
        /// The network: host (default) or none.
        #[arg(long, value_enum, default_value_t = NetworkMode::Host)]
        network: NetworkMode,
        /// The image.
        image: String,
        /// The command (replaces CMD; ENTRYPOINT stays).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// List the images in the store.
    Images,
    /// Show an image's config and manifest as JSON.
    Inspect { name: String },
    /// Give an image another name.
    Tag { source: String, target: String },
    /// Remove image names from the store (blobs go with `kiln prune`).
    Rmi {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove blobs no image or cached step refers to.
    Prune,
    /// The step cache: list, disk usage, prune.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Make a one-layer image from a rootfs tarball (.tar, .tar.gz, .tar.zst), like `docker import`.
    Import { rootfs: PathBuf, name: String },
    /// Load images from a docker-archive or OCI archive.
    Load {
        /// The archive (`-` for stdin).
        file: PathBuf,
    },
    /// Save an image as a docker-archive (to stdout without -o, or with `-o -`).
    Save {
        name: String,
        /// The archive file (`-`, or no -o: stdout, which must not be a terminal).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Tools for tests and curious users.
    #[command(subcommand)]
    Debug(DebugCommand),
}

#[derive(Args)]
struct BuildArgs {
    /// The Dockerfile (default CONTEXT/Dockerfile; `-` reads stdin).
    #[arg(short, long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Name the result NAME[:TAG] in the store (repeatable).
    #[arg(short, long = "tag", value_name = "NAME[:TAG]")]
    tags: Vec<String>,
    /// Build-time variable `K=V`, or `K` to take the value from the environment.
    #[arg(long = "build-arg", value_name = "K[=V]")]
    build_args: Vec<String>,
    /// Build up to this stage.
    #[arg(long)]
    target: Option<String>,
    /// Export the result too: type=oci|docker|tar|local,dest=PATH[,tar=false][,compression=gzip|zstd|uncompressed][,compression-level=N]; dest=- is stdout; `-o -` is type=tar,dest=-
    #[arg(short, long = "output", value_name = "SPEC")]
    outputs: Vec<String>,
    /// Progress output.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
    progress: ProgressMode,
    /// Print only the image ID on stdout (nothing when an export goes to stdout).
    #[arg(short, long)]
    quiet: bool,
    /// Write the image ID (config digest) to this file.
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Write build metadata (digests, names, steps) as JSON to this file.
    #[arg(long = "metadata-file", value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// A secret for `RUN --mount=type=secret`: id=ID,src=FILE or id=ID,env=VAR (repeatable).
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR")]
    secrets: Vec<String>,
    /// The network RUN steps get: host (default) or none (loopback only).
    #[arg(long, value_enum, default_value_t = NetworkMode::Host)]
    network: NetworkMode,
    /// Run every step, reusing no cached result (results are still recorded).
    #[arg(long = "no-cache")]
    no_cache: bool,
    /// Say why each cache miss missed.
    #[arg(long = "explain-cache")]
    explain_cache: bool,
    /// Run this stage's steps without looking them up in the cache (repeatable).
    #[arg(long = "no-cache-filter", value_name = "STAGE")]
    no_cache_filter: Vec<String>,
    /// Fail the build if any step is not in the cache.
    #[arg(long = "require-cache")]
    require_cache: bool,
    /// Read cached steps from type=local,src=DIR (repeatable).
    #[arg(long = "cache-from", value_name = "SPEC")]
    cache_from: Vec<String>,
    /// Write the build's cache to type=local,dest=DIR[,mode=min|max][,mounts=true] (repeatable).
    #[arg(long = "cache-to", value_name = "SPEC")]
    cache_to: Vec<String>,
    /// How many stages run at once (default: the number of cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    jobs: Option<u16>,
    /// The build context directory.
    context: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProgressMode {
    /// Plain (a rich terminal renderer arrives later).
    Auto,
    Plain,
    Quiet,
    Json,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List the cached steps, most recently used first.
    Ls {
        /// `table` or `json`.
        #[arg(long, value_enum, default_value_t = ListFormat::Table)]
        format: ListFormat,
    },
    /// How many cached steps, and the bytes of their layers.
    Du,
    /// Hit rate per build and overall, time saved, the steps that miss most often and why.
    Stats {
        /// Only the last N builds.
        #[arg(long, value_name = "N")]
        last: Option<usize>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove cached steps (by default all), then the layers nothing else uses.
    Prune {
        /// Remove every record.
        #[arg(long)]
        all: bool,
        /// `until=DURATION` (e.g. 24h, 30m, 90s): remove records unused for that long.
        #[arg(long, value_name = "until=DURATION")]
        filter: Option<String>,
        /// Remove least recently used records until the cache takes at most SIZE (e.g. 2GB).
        #[arg(long = "keep-storage", value_name = "SIZE")]
        keep_storage: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ListFormat {
    Table,
    Json,
}

#[derive(Subcommand)]
enum DebugCommand {
    /// Print a Dockerfile's AST (BuildKit's dump format, or JSON).
    Parse {
        #[arg(long, value_enum, default_value_t = ParseFormat::Buildkit)]
        format: ParseFormat,
        /// The Dockerfile (`-` for stdin).
        file: PathBuf,
    },
    /// Print the stage DAG as JSON (see docs/plan-schema.md).
    Plan(PlanArgs),
    /// Print the lowered steps as JSON: every value worked out, nothing run.
    Steps(StepsArgs),
}

#[derive(Args)]
struct StepsArgs {
    /// Build-time variable `K=V`, or `K` to take the value from the environment.
    #[arg(long = "build-arg", value_name = "K[=V]")]
    build_args: Vec<String>,
    /// Lower up to this stage.
    #[arg(long)]
    target: Option<String>,
    /// The Dockerfile (`-` for stdin).
    file: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum ParseFormat {
    Buildkit,
    Json,
}

#[derive(Args)]
struct PlanArgs {
    /// Build-time variable `K=V`, or `K` to take the value from the environment.
    #[arg(long = "build-arg", value_name = "K[=V]")]
    build_args: Vec<String>,
    /// Plan up to this stage.
    #[arg(long)]
    target: Option<String>,
    /// Target platform, os/arch[/variant] (default: this machine's).
    #[arg(long)]
    platform: Option<String>,
    /// The Dockerfile (`-` for stdin).
    file: PathBuf,
}

/// Prints a line on stdout. A reader that went away (`kiln debug parse … | head`) ends the
/// output quietly instead of panicking as `println!` does.
fn say(line: String) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{line}").and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r.context("writing to stdout"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Commands::Run {
        rm: _,
        network,
        image,
        command,
    } = &cli.command
    {
        return match cmd_run(cli.root.clone(), image, command, *network) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("error: {}", kiln::error_chain(e.as_ref()));
                // A command that could not be started exits 127 (not found) or 126 (not
                // executable), as a shell and `docker run` do; kiln's own failures are 125, as
                // docker run's are, to keep them apart from the command's codes.
                let not_started = e.chain().find_map(|c| match c.downcast_ref() {
                    Some(kiln::builder::BuildError::CommandNotStarted { exit_code, .. }) => {
                        Some(*exit_code)
                    }
                    _ => None,
                });
                ExitCode::from(not_started.unwrap_or(125))
            }
        };
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", kiln::error_chain(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// `kiln run`: the command's exit code, or 128 + the signal that killed it.
fn cmd_run(
    root: Option<PathBuf>,
    image: &str,
    command: &[String],
    network: NetworkMode,
) -> Result<u8> {
    let single_id = enter_namespaces()?;
    let root = store_root(root)?;
    let store = Store::open(&root)?;
    let status = kiln::builder::container::run_image(
        &store,
        &kiln::builder::container::RunImageOptions {
            image: image.to_string(),
            command: command.to_vec(),
            network: match network {
                NetworkMode::Host => Network::Host,
                NetworkMode::None => Network::None,
            },
            single_id,
        },
    )?;
    Ok(match status {
        ExitStatus::Code(c) => c as u8,
        ExitStatus::Signal(s) => (128 + s) as u8,
    })
}

fn run(cli: Cli) -> Result<()> {
    let root = store_root(cli.root)?;
    match cli.command {
        Commands::Run { .. } => unreachable!("handled in main"),
        Commands::Build(args) => cmd_build(&root, *args),
        Commands::Images => cmd_images(&root),
        Commands::Inspect { name } => cmd_inspect(&root, &name),
        Commands::Tag { source, target } => {
            let store = Store::open(&root)?;
            let img = store.resolve(&source)?;
            store.tag(&parse_ref(&target)?, &img.manifest_descriptor)?;
            Ok(())
        }
        Commands::Rmi { names } => {
            let store = Store::open(&root)?;
            for n in names {
                let name = parse_ref(&n)?;
                store.untag(&name)?;
                say(format!("Untagged: {name}"))?;
            }
            Ok(())
        }
        Commands::Prune => {
            // Snapshots made in a user namespace hold files of subordinate ids: remove them there.
            enter_namespaces()?;
            let store = Store::open(&root)?;
            println!("{}", kiln::builder::prune::prune(&store)?);
            Ok(())
        }
        Commands::Cache(cmd) => cmd_cache(&root, cmd),
        Commands::Import { rootfs, name } => {
            let store = Store::open(&root)?;
            let name = parse_ref(&name)?;
            let file = std::fs::File::open(&rootfs)
                .with_context(|| format!("opening {}", rootfs.display()))?;
            let opts = ImportOptions {
                created: source_date_epoch(&[])?,
                source: Some(rootfs.display().to_string()),
                ..ImportOptions::default()
            };
            let img = kiln::image::import(&store, std::io::BufReader::new(file), &name, &opts)?;
            say(format!("{}", img.id()))?;
            Ok(())
        }
        Commands::Load { file } => {
            let store = Store::open(&root)?;
            let loaded = if file == Path::new("-") {
                kiln::image::load(
                    &store,
                    std::io::stdin().lock(),
                    &file,
                    &LoadOptions::default(),
                )?
            } else {
                kiln::image::load_file(&store, &file, &LoadOptions::default())?
            };
            for img in loaded {
                if img.names.is_empty() {
                    say(format!("Loaded image ID: {}", img.id))?;
                }
                for n in img.names {
                    say(format!("Loaded image: {n}"))?;
                }
            }
            Ok(())
        }
        Commands::Save { name, output } => {
            let dest = match output {
                None => Dest::Stdout,
                Some(p) if p == Path::new("-") => Dest::Stdout,
                Some(p) => Dest::Path(p),
            };
            if dest == Dest::Stdout {
                refuse_terminal("the docker-archive", "use -o FILE")?;
            }
            let store = Store::open(&root)?;
            let img = store.resolve(&name)?;
            let names = img.name.clone().into_iter().collect();
            let images = [DockerArchiveImage { image: &img, names }];
            match &dest {
                Dest::Stdout => to_stdout(|w| write_docker_archive(&store, &images, w))?,
                Dest::Path(p) => write_docker_archive_file(&store, &images, p)?,
            }
            Ok(())
        }
        Commands::Debug(DebugCommand::Parse { format, file }) => debug_parse(&file, format),
        Commands::Debug(DebugCommand::Plan(args)) => debug_plan(args),
        Commands::Debug(DebugCommand::Steps(args)) => debug_steps(args, &root),
    }
}

/// `--root`/`KILN_ROOT`, else `$XDG_DATA_HOME/kiln`, else `~/.local/share/kiln`.
fn store_root(flag: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(r) = flag {
        return Ok(r);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
        return Ok(PathBuf::from(x).join("kiln"));
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("cannot find the store: set --root, KILN_ROOT or HOME"))?;
    Ok(PathBuf::from(home).join(".local/share/kiln"))
}

/// `SOURCE_DATE_EPOCH` from `--build-arg` (wins) or the environment.
fn source_date_epoch(build_args: &[(String, String)]) -> Result<Option<i64>> {
    let value = build_args
        .iter()
        .rev()
        .find(|(k, _)| k == "SOURCE_DATE_EPOCH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("SOURCE_DATE_EPOCH").ok())
        .filter(|v| !v.is_empty());
    match value {
        None => Ok(None),
        Some(v) => v
            .parse::<i64>()
            .map(Some)
            .map_err(|_| anyhow!("SOURCE_DATE_EPOCH must be a number of seconds, not {v:?}")),
    }
}

fn parse_build_args(raw: &[String]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for a in raw {
        match a.split_once('=') {
            Some((k, v)) => out.push((k.to_string(), v.to_string())),
            None => {
                if let Ok(v) = std::env::var(a) {
                    out.push((a.clone(), v));
                }
            }
        }
    }
    out
}

/// Where a file output goes.
#[derive(Debug, PartialEq)]
enum Dest {
    /// `dest=-`.
    Stdout,
    Path(PathBuf),
}

impl Dest {
    fn new(path: PathBuf) -> Dest {
        if path == Path::new("-") {
            Dest::Stdout
        } else {
            Dest::Path(path)
        }
    }
}

/// One `-o/--output` value.
#[derive(Debug, PartialEq)]
enum Output {
    Oci {
        dest: Dest,
        tar: bool,
        compression: Option<Compression>,
    },
    Docker {
        dest: Dest,
    },
    /// The final filesystem as one tar (buildx's `type=tar`).
    Tar {
        dest: Dest,
    },
    Local {
        dest: PathBuf,
    },
}

impl Output {
    fn to_stdout(&self) -> bool {
        matches!(
            self,
            Output::Oci {
                dest: Dest::Stdout,
                ..
            } | Output::Docker { dest: Dest::Stdout }
                | Output::Tar { dest: Dest::Stdout }
        )
    }
}

fn parse_output(spec: &str) -> Result<Output> {
    // `-o -` is `type=tar,dest=-` and `-o DIR` is `type=local,dest=DIR`, as in buildx.
    if spec == "-" {
        return Ok(Output::Tar { dest: Dest::Stdout });
    }
    if !spec.contains('=') {
        return Ok(Output::Local {
            dest: PathBuf::from(spec),
        });
    }
    let mut fields = std::collections::BTreeMap::new();
    for f in spec.split(',') {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| anyhow!("--output {spec:?}: {f:?} is not key=value"))?;
        fields.insert(k.trim().to_string(), v.trim().to_string());
    }
    let take = |fields: &mut std::collections::BTreeMap<String, String>, k: &str| fields.remove(k);
    let kind = take(&mut fields, "type").unwrap_or_else(|| "local".into());
    let dest = take(&mut fields, "dest").map(PathBuf::from);
    let need_dest =
        |d: Option<PathBuf>| d.ok_or_else(|| anyhow!("--output {spec:?}: dest= is required"));
    let out = match kind.as_str() {
        "oci" => {
            let tar = match take(&mut fields, "tar").as_deref() {
                None | Some("true") => true,
                Some("false") => false,
                Some(v) => {
                    return Err(anyhow!(
                        "--output {spec:?}: tar must be true or false, not {v:?}"
                    ));
                }
            };
            let level = match take(&mut fields, "compression-level") {
                Some(l) => Some(l.parse::<i32>().map_err(|_| {
                    anyhow!("--output {spec:?}: compression-level must be a number")
                })?),
                None => None,
            };
            let compression = match take(&mut fields, "compression").as_deref() {
                None => level.map(|l| Compression::Gzip(l.max(0) as u32)),
                Some("gzip") => Some(Compression::Gzip(level.unwrap_or(6).max(0) as u32)),
                Some("zstd") => Some(Compression::Zstd(level.unwrap_or(3))),
                Some("uncompressed") => Some(Compression::Uncompressed),
                Some(c) => {
                    return Err(anyhow!(
                        "--output {spec:?}: unknown compression {c:?} (gzip, zstd, uncompressed)"
                    ));
                }
            };
            let dest = Dest::new(need_dest(dest)?);
            if !tar && dest == Dest::Stdout {
                return Err(anyhow!(
                    "--output {spec:?}: tar=false writes a directory, which cannot go to stdout"
                ));
            }
            Output::Oci {
                dest,
                tar,
                compression,
            }
        }
        "docker" => Output::Docker {
            dest: Dest::new(need_dest(dest)?),
        },
        "tar" => Output::Tar {
            dest: Dest::new(need_dest(dest)?),
        },
        "local" => {
            let dest = need_dest(dest)?;
            if dest == Path::new("-") {
                return Err(anyhow!(
                    "--output {spec:?}: type=local writes a directory; for a tar on stdout use -o - (type=tar,dest=-)"
                ));
            }
            Output::Local { dest }
        }
        "registry" | "image" => {
            return Err(anyhow!(
                "--output type={kind}: pushing to registries is not supported yet"
            ));
        }
        other => {
            return Err(anyhow!(
                "--output {spec:?}: unknown type {other:?} (oci, docker, tar, local)"
            ));
        }
    };
    if let Some(k) = fields.keys().next() {
        return Err(anyhow!("--output {spec:?}: unknown option {k:?}"));
    }
    Ok(out)
}

/// An archive on a terminal is garbage on the screen: refuse, as `docker save` does.
fn refuse_terminal(what: &str, hint: &str) -> Result<()> {
    use std::io::IsTerminal;
    if std::io::stdout().is_terminal() {
        return Err(anyhow!(
            "refusing to write {what} to a terminal: redirect stdout, or {hint}"
        ));
    }
    Ok(())
}

/// Streams an export to stdout (flushed at the end).
fn to_stdout<E>(f: impl FnOnce(&mut dyn std::io::Write) -> Result<(), E>) -> Result<()>
where
    E: std::error::Error + Send + Sync + 'static,
{
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    f(&mut out).context("writing the export to stdout")?;
    out.flush().context("writing the export to stdout")
}

/// Enters the build namespaces before anything else happens (in particular before stdin is
/// read or a thread starts): as an ordinary user, re-executes kiln in a user namespace; then
/// gives the process a private mount namespace. Returns whether ids are squashed (single-id map).
fn enter_namespaces() -> Result<bool> {
    Ok(host::enter_namespaces()?)
}

fn cmd_build(root: &Path, args: BuildArgs) -> Result<()> {
    let single_id = enter_namespaces()?;
    let secrets = host::parse_secrets(&args.secrets)?;
    // Check everything the user typed before doing any work.
    let outputs: Vec<Output> = args
        .outputs
        .iter()
        .map(|o| parse_output(o))
        .collect::<Result<_>>()?;
    let on_stdout = outputs.iter().filter(|o| o.to_stdout()).count();
    if on_stdout > 1 {
        return Err(anyhow!("only one --output can go to stdout (dest=-)"));
    }
    if on_stdout == 1 {
        refuse_terminal("the export", "give the output a dest=FILE")?;
    }
    let cache_from = args
        .cache_from
        .iter()
        .map(|s| kiln::builder::LocalImport::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let cache_to = args
        .cache_to
        .iter()
        .map(|s| kiln::builder::LocalExport::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    let tags: Vec<ImageRef> = args
        .tags
        .iter()
        .map(|t| parse_ref(t))
        .collect::<Result<_, _>>()?;
    let build_args = parse_build_args(&args.build_args);
    let sde = source_date_epoch(&build_args)?;
    let context = args.context.clone();
    if !context.is_dir() {
        return Err(anyhow!(
            "the build context {} is not a directory",
            context.display()
        ));
    }
    let dockerfile_path = args
        .file
        .clone()
        .unwrap_or_else(|| context.join("Dockerfile"));
    let (text, name) = read_dockerfile(&dockerfile_path)?;
    let store = Store::open(root)?;
    let opts = BuildOptions {
        context,
        dockerfile: text,
        dockerfile_name: name,
        dockerfile_path: (dockerfile_path != Path::new("-")).then_some(dockerfile_path),
        build_args,
        target: args.target,
        tags: tags.clone(),
        source_date_epoch: sde,
        compression: Compression::gzip(),
        network: match args.network {
            NetworkMode::Host => Network::Host,
            NetworkMode::None => Network::None,
        },
        secrets,
        single_id,
        jobs: args.jobs.map_or_else(default_jobs, usize::from),
        no_cache: args.no_cache,
        explain_cache: args.explain_cache,
        no_cache_filter: args.no_cache_filter,
        require_cache: args.require_cache,
        cache_from,
        cache_to,
    };
    let progress: Box<dyn Progress> = match (args.quiet, args.progress) {
        (true, _) | (_, ProgressMode::Quiet) => Box::new(Quiet),
        (_, ProgressMode::Json) => Box::new(JsonProgress::new(std::io::stderr())),
        _ => Box::new(Plain::new(std::io::stderr())),
    };
    let outcome = kiln::builder::build(&store, &opts, progress.as_ref())?;
    let img = &outcome.image;
    let mut warned = outcome.warned_layers.clone();
    for out in &outputs {
        export(&store, img, &tags, out, single_id, &mut warned)?;
    }
    if let Some(path) = &args.iidfile {
        std::fs::write(path, img.id().to_string())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.metadata_file {
        let names: Vec<String> = tags.iter().map(|t| t.to_string()).collect();
        let meta = serde_json::json!({
            "containerimage.digest": img.digest().to_string(),
            "containerimage.config.digest": img.id().to_string(),
            "containerimage.descriptor": {
                "mediaType": img.manifest_descriptor.media_type().to_string(),
                "digest": img.digest().to_string(),
                "size": img.manifest_descriptor.size(),
            },
            "image.name": names.join(","),
            "kiln.steps": outcome.steps,
        });
        std::fs::write(path, serde_json::to_vec_pretty(&meta)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // The image ID would corrupt an archive streamed on stdout.
    if args.quiet && on_stdout == 0 {
        say(format!("{}", img.id()))?;
    }
    Ok(())
}

/// `single_id`: kiln runs in a single-id user namespace, where owners other than root cannot
/// be set (a `type=tar` export then has root's files, as the snapshots do).
fn export(
    store: &Store,
    img: &StoredImage,
    tags: &[ImageRef],
    out: &Output,
    single_id: bool,
    warned: &mut std::collections::BTreeSet<String>,
) -> Result<()> {
    match out {
        Output::Oci {
            dest,
            tar,
            compression,
        } => {
            let opts = OciExportOptions {
                compression: *compression,
                force_compression: compression.is_some(),
            };
            match (dest, *tar) {
                (Dest::Stdout, _) => {
                    to_stdout(|w| write_oci_archive(store, img, tags, w, &opts).map(|_| ()))?
                }
                (Dest::Path(p), true) => {
                    write_oci_archive_file(store, img, tags, p, &opts)?;
                }
                (Dest::Path(p), false) => {
                    write_oci_dir(store, img, tags, p, &opts)?;
                }
            }
        }
        Output::Docker { dest } => {
            let images = [DockerArchiveImage {
                image: img,
                names: tags.to_vec(),
            }];
            match dest {
                Dest::Stdout => to_stdout(|w| write_docker_archive(store, &images, w))?,
                Dest::Path(p) => write_docker_archive_file(store, &images, p)?,
            }
        }
        Output::Tar { dest } => {
            let tar = kiln::builder::export::rootfs_tar(store, img, single_id, warned)?;
            match dest {
                Dest::Stdout => to_stdout(|w| tar.write_to(w))?,
                Dest::Path(p) => write_output_file(p, |w| tar.write_to(w).map_err(Into::into))?,
            }
        }
        Output::Local { dest } => kiln::builder::export::local(store, img, dest, warned)?,
    }
    Ok(())
}

fn cmd_images(root: &Path) -> Result<()> {
    let store = Store::open(root)?;
    let mut rows = Vec::new();
    for (name, desc) in store.tags()? {
        let img = store.load_image(&desc, Some(name.clone()))?;
        rows.push([
            name.familiar_repository(),
            name.tag.clone().unwrap_or_else(|| "<none>".into()),
            img.digest().to_string(),
            human_size(img.size()),
            img.config.created.clone().unwrap_or_default(),
        ]);
    }
    let header = ["NAME", "TAG", "DIGEST", "SIZE", "CREATED"];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: [&str; 5]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}   ", w = widths[i]));
            }
        }
        let _ = say(s.trim_end().to_string());
    };
    line(header);
    for r in &rows {
        line([&r[0], &r[1], &r[2], &r[3], &r[4]]);
    }
    Ok(())
}

fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "kB", "MB", "GB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

fn cmd_inspect(root: &Path, name: &str) -> Result<()> {
    let store = Store::open(root)?;
    let img = store.resolve(name)?;
    let out = serde_json::json!({
        "name": img.name.as_ref().map(|n| n.to_string()),
        "id": img.id().to_string(),
        "digest": img.digest().to_string(),
        "manifest": img.manifest,
        "config": img.config,
    });
    say(serde_json::to_string_pretty(&out)?)?;
    Ok(())
}

/// Reads a Dockerfile from a path or stdin (`-`), returning its text and display name.
fn read_dockerfile(path: &Path) -> Result<(String, String)> {
    let (bytes, name) = if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading the Dockerfile from stdin")?;
        (buf, "<stdin>".to_string())
    } else {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        (bytes, path.display().to_string())
    };
    match String::from_utf8(bytes) {
        Ok(text) => Ok((text, name)),
        Err(e) => {
            let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
            let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
            Err(anyhow!("{name}:{line}: the Dockerfile is not valid UTF-8"))
        }
    }
}

fn debug_parse(path: &Path, format: ParseFormat) -> Result<()> {
    let (text, name) = read_dockerfile(path)?;
    let format = match format {
        ParseFormat::Buildkit => debug::ParseFormat::Buildkit,
        ParseFormat::Json => debug::ParseFormat::Json,
    };
    let shown = debug::parse(&name, &text, format)?;
    for w in &shown.warnings {
        eprintln!("{w}");
    }
    println!("{}", shown.output);
    Ok(())
}

fn debug_plan(args: PlanArgs) -> Result<()> {
    let (text, name) = read_dockerfile(&args.file)?;
    let graph = debug::plan(
        &name,
        &text,
        parse_build_args(&args.build_args),
        args.target,
        args.platform,
    )?;
    say(graph)?;
    Ok(())
}

/// Stages run at once by default: one per core.
fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `kiln debug steps`: lowers the Dockerfile without running anything. Base images are read
/// from the store when it exists (nothing is created); others are unresolved.
fn debug_steps(args: StepsArgs, root: &Path) -> Result<()> {
    let (text, name) = read_dockerfile(&args.file)?;
    let store = match root.join("index.json").is_file() {
        true => Some(Store::open(root)?),
        false => None,
    };
    let build_args = parse_build_args(&args.build_args);
    let sde = source_date_epoch(&build_args)?;
    let steps = debug::steps(&name, &text, build_args, args.target, sde, store.as_ref())?;
    say(steps)?;
    Ok(())
}

fn cmd_cache(root: &Path, cmd: CacheCommand) -> Result<()> {
    use kiln::builder::cache_admin;
    match cmd {
        CacheCommand::Ls { format } => {
            let store = Store::open(root)?;
            let entries = cache_admin::list(&store)?;
            match format {
                ListFormat::Json => say(serde_json::to_string_pretty(&entries)?)?,
                ListFormat::Table => {
                    say(format!(
                        "{:<19}  {:<5}  {:>6}  {:>10}  {:<20}  STEP",
                        "KEY", "KIND", "LAYERS", "SIZE", "LAST USED"
                    ))?;
                    for e in &entries {
                        say(format!(
                            "{:<19}  {:<5}  {:>6}  {:>10}  {:<20}  {}",
                            &e.key[..e.key.len().min(19)],
                            e.kind,
                            e.layers,
                            e.bytes,
                            kiln::image::config::format_rfc3339(e.last_used),
                            e.step
                        ))?;
                    }
                }
            }
            Ok(())
        }
        CacheCommand::Stats { last, json } => {
            let store = Store::open(root)?;
            let stats = cache_admin::stats(&store, last)?;
            if json {
                say(serde_json::to_string_pretty(&stats)?)?;
            } else {
                say(stats.to_string().trim_end().to_string())?;
            }
            Ok(())
        }
        CacheCommand::Du => {
            let store = Store::open(root)?;
            let (records, bytes) = cache_admin::usage(&store)?;
            say(format!("{records} cached steps, {bytes} bytes of layers"))?;
            Ok(())
        }
        CacheCommand::Prune {
            all,
            filter,
            keep_storage,
        } => {
            let until = filter
                .map(|f| {
                    let d = f
                        .strip_prefix("until=")
                        .ok_or_else(|| anyhow!("--filter takes until=DURATION, not {f:?}"))?;
                    parse_duration(d)
                })
                .transpose()?;
            let keep = keep_storage.map(|s| parse_size(&s)).transpose()?;
            // Snapshots made in a user namespace hold files of subordinate ids: remove them there.
            enter_namespaces()?;
            let store = Store::open(root)?;
            let all = all || (until.is_none() && keep.is_none());
            say(cache_admin::prune(&store, all, until, keep)?.to_string())?;
            Ok(())
        }
    }
}

/// `90s`, `30m`, `24h`, `7d`.
fn parse_duration(s: &str) -> Result<std::time::Duration> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("invalid duration {s:?} (e.g. 90s, 30m, 24h, 7d)"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(anyhow!("invalid duration {s:?} (e.g. 90s, 30m, 24h, 7d)")),
    };
    Ok(std::time::Duration::from_secs(secs))
}

/// `512`, `100KB`, `2GB` (decimal) or `1GiB` (binary).
fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("invalid size {s:?} (e.g. 500MB, 2GB)"))?;
    let mul: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1000,
        "mb" | "m" => 1_000_000,
        "gb" | "g" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(anyhow!("invalid size {s:?} (e.g. 500MB, 2GB)")),
    };
    Ok(n * mul)
}
