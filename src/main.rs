//! The `kiln` command line (../shared/CLI.md is the contract).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Args, Parser, Subcommand, ValueEnum};

use kiln::dockerfile;
use kiln::plan::{self, PlanOptions};

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

#[derive(Subcommand)]
enum Commands {
    /// Tools for tests and curious users.
    #[command(subcommand)]
    Debug(DebugCommand),
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let _root = cli.root;
    match cli.command {
        Commands::Debug(DebugCommand::Parse { format, file }) => debug_parse(&file, format),
        Commands::Debug(DebugCommand::Plan(args)) => debug_plan(args),
    }
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

fn located(name: &str, line: Option<usize>, message: &str) -> anyhow::Error {
    match line {
        Some(l) => anyhow!("{name}:{l}: {message}"),
        None => anyhow!("{name}: {message}"),
    }
}

fn parse_file(name: &str, text: &str) -> Result<dockerfile::ParsedDockerfile> {
    dockerfile::parse(text).map_err(|e| located(name, e.start_line, &e.message))
}

fn debug_parse(path: &Path, format: ParseFormat) -> Result<()> {
    let (text, name) = read_dockerfile(path)?;
    let parsed = parse_file(&name, &text)?;
    for w in &parsed.warnings {
        eprintln!("warning: {name}:{}: {}", w.line, w.short);
    }
    match format {
        ParseFormat::Buildkit => println!("{}", parsed.ast.dump()),
        ParseFormat::Json => println!("{}", serde_json::to_string_pretty(&parsed)?),
    }
    Ok(())
}

fn debug_plan(args: PlanArgs) -> Result<()> {
    let (text, name) = read_dockerfile(&args.file)?;
    let df = plan::load(&text).map_err(|e| located(&name, e.line, &e.message))?;
    let mut build_args = Vec::new();
    for a in &args.build_args {
        match a.split_once('=') {
            Some((k, v)) => build_args.push((k.to_string(), v.to_string())),
            None => {
                if let Ok(v) = std::env::var(a) {
                    build_args.push((a.clone(), v));
                }
            }
        }
    }
    let opts = PlanOptions {
        build_args,
        target: args.target,
        platform: args.platform,
    };
    let graph = plan::plan(&df, &opts).map_err(|e| located(&name, e.line, &e.message))?;
    println!("{}", serde_json::to_string_pretty(&graph)?);
    Ok(())
}
