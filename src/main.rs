//! Command-line front end: the clap tree and the dispatch. Each subcommand
//! lives in its own file under `src/cli/`, which parses its flags, validates
//! them before any expensive work, and calls into the library.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use clip2gan::config::Config;

#[derive(Parser)]
#[command(
    name = "clip2gan",
    version,
    about = "Text-to-face generation (CLIP2GAN) and its Discord bot"
)]
struct Cli {
    /// Configuration file (default: ./config.toml when present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Compute device: auto, cpu or cuda:N (overrides the config).
    #[arg(long, global = true)]
    device: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Download and convert the model weights (idempotent).
    Fetch(cli::fetch::FetchArgs),
    /// Generate faces from seeds or from a latent file.
    Generate(cli::generate::GenerateArgs),
    /// Text to faces with the trained mapper; writes images and their W+ latents (.npy).
    Imagine(cli::imagine::ImagineArgs),
    /// Edit a saved latent with an instruction ("add smile", "make older", ...).
    Edit(cli::edit::EditArgs),
    /// Print the CLIP token ids of a text as a JSON array (start and end
    /// tokens included, truncated to 77, no padding).
    Tokenize(cli::tokenize::TokenizeArgs),
    /// CLIP score (100 x cosine) of each image against a text; one JSON line per image.
    ClipScore(cli::clip_score::ClipScoreArgs),
    /// Serve the Discord bot (token from DISCORD_TOKEN or discord.token_file).
    Bot(cli::bot::BotArgs),
    /// Run the engine on jobs from a Redis queue (the GPU side of
    /// `clip2gan bot --queue`).
    Worker(cli::worker::WorkerArgs),
    /// Ask a running bot's or worker's endpoint whether it is up (or, with
    /// --ready, ready); exits 0 only if so (for container health checks).
    Health(cli::health::HealthArgs),
    /// Measure speed; prints one JSON line.
    #[command(subcommand)]
    Bench(cli::bench::BenchCommand),
    /// Compare the generator on the configured device with the reference
    /// fixtures; prints JSON, exits 1 outside the tolerances.
    Parity(cli::parity::ParityArgs),
    /// Train the mapper (self-supervised; see README "Training the mapper").
    Train(cli::train::TrainArgs),
    /// Evaluate a mapper on held-out samples against baselines; prints a
    /// table and writes JSON.
    EvalMapper(cli::eval::EvalArgs),
}

fn main() -> ExitCode {
    clip2gan::runtime::tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let mut cfg = Config::load(cli.config.as_deref())?;
    if let Some(d) = &cli.device {
        cfg.device = d.clone();
    }
    Ok(cfg)
}

/// The library's notes (progress, downloads, warnings) go through tracing;
/// at the terminal they read as plain lines, level and message, filtered by
/// `RUST_LOG` (default: info for clip2gan, warnings for the rest). The bot
/// sets up its own log format.
fn init_cli_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,clip2gan=info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .without_time()
        .with_target(false)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if !matches!(cli.command, Command::Bot(_) | Command::Worker(_)) {
        init_cli_logging();
    }
    let cfg = load_config(&cli)?;
    match cli.command {
        Command::Fetch(a) => cli::fetch::run(&cfg, a),
        Command::Generate(a) => cli::generate::run(&cfg, a),
        Command::Imagine(a) => cli::imagine::run(&cfg, a),
        Command::Edit(a) => cli::edit::run(&cfg, a),
        Command::Tokenize(a) => cli::tokenize::run(a),
        Command::ClipScore(a) => cli::clip_score::run(&cfg, a),
        Command::Bot(a) => cli::bot::run(cfg, a),
        Command::Worker(a) => cli::worker::run(cfg, a),
        Command::Health(a) => cli::health::run(&cfg, a),
        Command::Bench(c) => cli::bench::run(&cfg, c),
        Command::Parity(a) => cli::parity::run(&cfg, a),
        Command::Train(a) => {
            if cli::train::run(&cfg, &a)?.interrupted {
                // The conventional status of a process stopped by SIGINT.
                std::process::exit(130);
            }
            Ok(())
        }
        Command::EvalMapper(a) => {
            cli::eval::run(&cfg, &a)?;
            Ok(())
        }
    }
}
