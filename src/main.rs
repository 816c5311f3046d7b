//! Command-line front end. Each subcommand parses its flags, validates them
//! before any expensive work, and calls into the library.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use clip2gan::config::Config;
use clip2gan::error::Error;
use clip2gan::generator::stylegan2::StyleGan2;
use clip2gan::generator::{self, check_finite, check_truncation, NoiseMode};
use clip2gan::{bench, clip, device, fsutil, image_io, latent};

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
    Fetch(FetchArgs),
    /// Generate faces from seeds or from a latent file.
    Generate(GenerateArgs),
    /// Text to faces with the trained mapper; writes images and their W+ latents (.npy).
    Imagine(ImagineArgs),
    /// Edit a saved latent with an instruction ("add smile", "make older", ...).
    Edit(EditArgs),
    /// Print the CLIP token ids of a text as a JSON array (start and end
    /// tokens included, truncated to 77, no padding).
    Tokenize { text: String },
    /// CLIP score (100 x cosine) of each image against a text; one JSON line per image.
    ClipScore {
        #[arg(long)]
        text: String,
        #[arg(required = true)]
        images: Vec<PathBuf>,
    },
    /// Serve the Discord bot (token from DISCORD_TOKEN or discord.token_file).
    Bot(cli::bot::BotArgs),
    /// Run the engine on jobs from a Redis queue (the GPU side of
    /// `clip2gan bot --queue`).
    Worker(cli::worker::WorkerArgs),
    /// Measure speed; prints one JSON line.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Compare the generator on the configured device with the reference
    /// fixtures; prints JSON, exits 1 outside the tolerances.
    Parity {
        #[arg(long, default_value = "tests/fixtures/mobilestylegan")]
        fixtures: PathBuf,
    },
    /// Train the mapper (self-supervised; see README "Training the mapper").
    Train(cli::train::TrainArgs),
    /// Evaluate a mapper on held-out samples against baselines; prints a
    /// table and writes JSON.
    EvalMapper(cli::eval::EvalArgs),
}

#[derive(Args)]
struct FetchArgs {
    /// Convert this already-downloaded random-face wheel instead of running pip.
    #[arg(long)]
    wheel: Option<PathBuf>,
    /// Convert again even if converted weights exist.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct GenerateArgs {
    /// First seed; image k uses seed + k.
    #[arg(long, default_value_t = 0, conflicts_with = "latent")]
    seed: u64,
    /// Number of images (1 to 64).
    #[arg(long, short = 'n', default_value_t = 1, conflicts_with = "latent")]
    count: usize,
    /// Truncation psi in [0, 2] (default: the config's for seeds, 1 for latent files).
    #[arg(long)]
    truncation: Option<f64>,
    /// Output side in pixels: the generator's resolution (default; 1024 for
    /// MobileStyleGAN) or that divided by a power of two.
    #[arg(long)]
    size: Option<usize>,
    /// Latent file (.npy, float32) to render instead of seeds.
    #[arg(long)]
    latent: Option<PathBuf>,
    /// Space of --latent: z [n,512], w [n,512] or wplus [n,styles,512]
    /// (23 styles for MobileStyleGAN, 18 for a 1024 px StyleGAN2).
    #[arg(long, value_enum, requires = "latent")]
    space: Option<latent::Space>,
    /// Write all images into one grid image instead of out.png, out-1.png, ...
    #[arg(long)]
    grid: bool,
    /// Also save the W+ latents used (float32 .npy, [n,styles,512]).
    #[arg(long)]
    save_latent: Option<PathBuf>,
    /// Noise: the fixed buffers shipped with the weights (deterministic), or random.
    #[arg(long, value_parser = ["fixed", "random"], default_value = "fixed")]
    noise: String,
    /// Seed for --noise random.
    #[arg(long, default_value_t = 0)]
    noise_seed: u64,
    /// Output PNG path.
    #[arg(long, short = 'o', default_value = "face.png")]
    output: PathBuf,
}

#[derive(Args)]
struct ImagineArgs {
    prompt: String,
    /// Number of images (1 to 16); image k uses seed + k.
    #[arg(long, short = 'n', default_value_t = 1)]
    count: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Truncation toward the average face (default: pipeline.truncation).
    #[arg(long)]
    truncation: Option<f64>,
    /// Draw this many candidates and keep the best `count` by CLIP score.
    #[arg(long)]
    candidates: Option<usize>,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// One grid image instead of out.png, out-1.png, ...
    #[arg(long)]
    grid: bool,
    #[arg(long, short = 'o', default_value = "imagine.png")]
    output: PathBuf,
}

#[derive(Args)]
struct EditArgs {
    /// What to change: "add smile", "remove beard", "make older", "more happy", ...
    instruction: String,
    /// The latent to edit (.npy W+ [23,512] or [1,23,512], e.g. from imagine).
    #[arg(long)]
    latent: PathBuf,
    // The help names the pipeline's range, so that it is written once.
    #[arg(long, default_value_t = 1.0,
          help = format!("{}; negative reverses the edit.", clip2gan::pipeline::limits::strength_span()))]
    strength: f64,
    /// Restrict the edit to coarse, middle or fine layers.
    #[arg(long, value_enum, default_value = "all")]
    layers: clip2gan::pipeline::Layers,
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long, short = 'o', default_value = "edited.png")]
    output: PathBuf,
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Time the image generator (z -> image).
    Generator {
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Output side (default: the generator's resolution).
        #[arg(long)]
        size: Option<usize>,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// mobilestylegan (the fetched weights) or stylegan2 (random
        /// config-f weights at --resolution: no checkpoint needed).
        #[arg(long, default_value = "mobilestylegan")]
        kind: String,
        /// Resolution of the random StyleGAN2 (--kind stylegan2).
        #[arg(long, default_value_t = 1024)]
        resolution: usize,
    },
    /// Concurrent clients against the inference engine, batching on and
    /// off, with where the time goes per image and the generator's own best
    /// rate from the same run (a table on stderr, JSON on stdout).
    Engine {
        /// Clients at once; several (e.g. 1,16) run one after the other.
        #[arg(long, value_delimiter = ',', default_value = "1,16")]
        concurrency: Vec<usize>,
        #[arg(long, default_value_t = 2)]
        jobs_per_client: usize,
        #[arg(long, default_value_t = 8)]
        max_batch: usize,
        /// Repeat the generator sweep and every case this many times and
        /// quote the median ratios (a few-second run drifts by several
        /// percent on a shared CPU).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// The pair bank's rate (generator, then CLIP's image encoder, as first
    /// use and `train` build it) against the limit of the two at their own
    /// speed, measured in the same run (random ViT-B/32-shaped CLIP: the
    /// same work as real weights).
    Bank {
        /// Pairs per round (the bank embeds 8 at a time; more per round
        /// steadies the figures on a shared machine).
        #[arg(long, default_value_t = 16)]
        pairs: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// Time CLIP's text and image encoders at ViT-B/32 shapes (random
    /// weights) against an sgemm of the same run.
    Clip {
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Also time the portable path (candle-transformers' model), interleaved.
        #[arg(long)]
        candle: bool,
    },
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
        Command::Fetch(a) => fetch(&cfg, a),
        Command::Generate(a) => generate(&cfg, a),
        Command::Tokenize { text } => {
            let t = clip::Tokenizer::shared().encode(&text);
            if t.truncated {
                eprintln!("note: the text is longer than 77 tokens and was truncated");
            }
            println!("{}", serde_json::to_string(&t.ids)?);
            Ok(())
        }
        Command::ClipScore { text, images } => clip_score(&cfg, &text, &images),
        Command::Parity { fixtures } => {
            let dev = device::select(&cfg.device)?;
            let g = cfg.open_generator(&dev, true)?;
            let r = clip2gan::parity::generator_vs_fixtures(g.as_ref(), &fixtures)?;
            println!("{}", serde_json::to_string(&r)?);
            if !r.pass {
                return Err(
                    Error::invalid("the generator is outside the parity tolerances").into(),
                );
            }
            Ok(())
        }
        Command::Bot(a) => cli::bot::run(cfg, a),
        Command::Worker(a) => cli::worker::run(cfg, a),
        Command::Imagine(a) => imagine(&cfg, a),
        Command::Edit(a) => edit(&cfg, a),
        Command::Bench(BenchCommand::Engine {
            concurrency,
            jobs_per_client,
            max_batch,
            rounds,
        }) => {
            if concurrency.contains(&0) || jobs_per_client == 0 || max_batch == 0 || rounds == 0 {
                return Err(Error::invalid(
                    "--concurrency, --jobs-per-client, --max-batch and --rounds must be at least 1",
                )
                .into());
            }
            let dev = device::select(&cfg.device)?;
            let setup = cfg.bench_setup();
            let r = bench::engine(
                &setup,
                &dev,
                &concurrency,
                jobs_per_client,
                max_batch,
                rounds,
            )?;
            eprint!("{}", r.table());
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
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
        Command::Bench(BenchCommand::Bank { pairs, rounds }) => {
            if pairs == 0 || rounds == 0 {
                return Err(Error::invalid("--pairs and --rounds must be at least 1").into());
            }
            let dev = device::select(&cfg.device)?;
            let g = generator::open(&cfg.generator, &cfg.models_dir, &dev, true)?;
            let c = clip::Clip::with_random_weights(clip::config::vit_base_patch32(), &dev)?;
            let spec = clip2gan::train::data::SampleSpec {
                truncation: cfg.train.truncation,
                style_mixing: 0.0,
                image_size: clip2gan::train::data::effective_image_size(
                    cfg.train.image_size,
                    g.resolution(),
                ),
                gen_batch: cfg.train.gen_batch,
            };
            let name = "ViT-B/32 shapes, random weights";
            let r = bench::bank(g.as_ref(), &c, name, &spec, pairs, rounds)?;
            eprintln!("{}", r.summary());
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Command::Bench(BenchCommand::Clip { iters, candle }) => {
            let dev = device::select(&cfg.device)?;
            let c = clip::Clip::with_random_weights(clip::config::vit_base_patch32(), &dev)?;
            let r = bench::clip(&c, "ViT-B/32 shapes, random weights", iters, candle)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Command::Bench(BenchCommand::Generator {
            batch,
            size,
            iters,
            kind,
            resolution,
        }) => {
            if batch == 0 {
                return Err(Error::invalid("--batch must be at least 1").into());
            }
            let dev = device::select(&cfg.device)?;
            let g: Box<dyn generator::Generator> = match kind.as_str() {
                "mobilestylegan" => {
                    let g = generator::GeneratorConfig {
                        kind,
                        ..cfg.generator.clone()
                    };
                    generator::open(&g, &cfg.models_dir, &dev, true)?
                }
                "stylegan2" => Box::new(StyleGan2::random_config_f(resolution, 0, &dev)?),
                _ => {
                    return Err(Error::invalid(format!(
                    "generator kind {kind:?} is not in this build: use mobilestylegan or stylegan2"
                ))
                    .into())
                }
            };
            let size = size.unwrap_or(g.resolution());
            image_io::check_size(size, g.resolution())?;
            let r = bench::generator(g.as_ref(), batch, size, iters)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
}

fn load_pipeline(cfg: &Config) -> anyhow::Result<clip2gan::pipeline::Pipeline> {
    let dev = device::select(&cfg.device)?;
    let setup = cfg.pipeline_setup();
    let first_use = cfg.first_use().filter(|_| !setup.mapper_path().exists());
    let (p, warnings) = match first_use {
        None => clip2gan::pipeline::Pipeline::load(&setup, &dev)?,
        Some(plan) => {
            let clip = clip::Clip::load(&setup.clip_files()?, &dev)?;
            let g = setup.open_generator(&dev, true)?;
            eprintln!(
                "No mapper at {} yet: building one from {} generated faces (once; later runs reuse it). \
                 `clip2gan train --mode fit --pairs {}` or the bot's idle time make it better.",
                plan.out.display(),
                plan.first_pairs,
                plan.pairs
            );
            let stop = clip2gan::train::interrupt::install();
            clip2gan::train::warmup::build_first(&plan, &clip, g.as_ref(), stop, false)?;
            clip2gan::pipeline::Pipeline::assemble(&setup, clip, g)?
        }
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(p)
}

/// Write images (numbered or as a grid) and each image's W+ beside it.
fn write_results(
    out: &std::path::Path,
    grid: bool,
    size: usize,
    r: &clip2gan::pipeline::Rendered,
) -> anyhow::Result<()> {
    let images = image_io::to_rgb8(&image_io::resize_area(&r.images, size)?)?;
    if grid {
        image_io::save_png(out, &image_io::grid(&images))?;
        println!("{}", out.display());
        latent::save_wplus(&out.with_extension("npy"), &r.latents)?;
        return Ok(());
    }
    for (k, img) in images.iter().enumerate() {
        let path = image_io::numbered_path(out, k);
        image_io::save_png(&path, img)?;
        latent::save_wplus(&path.with_extension("npy"), &r.latents.narrow(0, k, 1)?)?;
        println!("{}", path.display());
    }
    Ok(())
}

fn imagine(cfg: &Config, a: ImagineArgs) -> anyhow::Result<()> {
    image_io::check_size(a.size, 1024)?;
    fsutil::check_writable(&a.output)?;
    let p = load_pipeline(cfg)?;
    let req = clip2gan::pipeline::ImagineRequest {
        prompt: a.prompt,
        count: a.count,
        seed: a.seed,
        truncation: a.truncation,
        candidates: a.candidates.unwrap_or(a.count),
    };
    let r = p.imagine(std::slice::from_ref(&req))?.remove(0);
    if r.truncated {
        eprintln!("note: the prompt is longer than 77 CLIP tokens; the end was cut");
    }
    write_results(&a.output, a.grid, a.size, &r)
}

fn edit(cfg: &Config, a: EditArgs) -> anyhow::Result<()> {
    image_io::check_size(a.size, 1024)?;
    fsutil::check_writable(&a.output)?;
    let p = load_pipeline(cfg)?;
    let w = latent::load_wplus(p.generator.as_ref(), &a.latent, latent::Space::Wplus, 1.0)?;
    if w.dim(0)? != 1 {
        return Err(Error::invalid(format!(
            "{} holds {} latents; edit takes one ([23, 512] or [1, 23, 512])",
            a.latent.display(),
            w.dim(0)?
        ))
        .into());
    }
    let req = clip2gan::pipeline::EditRequest {
        latent: w.squeeze(0)?,
        instruction: a.instruction,
        strength: a.strength,
        layers: a.layers,
    };
    let r = p.edit(std::slice::from_ref(&req))?.remove(0);
    write_results(&a.output, false, a.size, &r)
}

fn clip_score(cfg: &Config, text: &str, images: &[PathBuf]) -> anyhow::Result<()> {
    // Read every image first: a bad file fails before the model loads.
    let decoded = images
        .iter()
        .map(|p| clip::open_image(p))
        .collect::<Result<Vec<_>, _>>()?;
    let dev = device::select(&cfg.device)?;
    let model = clip::Clip::load(&cfg.clip_files()?, &dev)?;
    let (t, tokens) = model.encode_text(&[text])?;
    if tokens[0].truncated {
        eprintln!("note: the text is longer than 77 tokens and was truncated");
    }
    let e = model.encode_images(&decoded)?;
    let cos = e.matmul(&t.t()?)?.flatten_all()?.to_vec1::<f32>()?;
    for (path, c) in images.iter().zip(cos) {
        let line =
            serde_json::json!({ "image": path.display().to_string(), "clip_score": 100.0 * c });
        println!("{line}");
    }
    Ok(())
}

fn fetch(cfg: &Config, a: FetchArgs) -> anyhow::Result<()> {
    use generator::mobilestylegan::fetch as f;
    let dir = cfg.generator_dir();
    match a.wheel {
        Some(wheel) => f::convert_wheel(&wheel, &dir)?,
        None if a.force => {
            let wheel = f::download_wheel(&cfg.models_dir)?;
            f::convert_wheel(&wheel, &dir)?
        }
        None => {
            f::ensure(&cfg.models_dir, &dir)?;
            eprintln!("weights ready in {}", dir.display());
        }
    }
    Ok(())
}

fn generate(cfg: &Config, a: GenerateArgs) -> anyhow::Result<()> {
    // Validate everything cheap before loading weights.
    let psi = a.truncation.unwrap_or(if a.latent.is_some() {
        1.0
    } else {
        cfg.generator.truncation
    });
    check_truncation(psi)?;
    if !(1..=64).contains(&a.count) {
        return Err(
            Error::invalid(format!("--count {} is out of range: use 1 to 64", a.count)).into(),
        );
    }
    // The resolution is known before loading for MobileStyleGAN, and for
    // StyleGAN2 if configured; otherwise --size is checked once it is.
    let known = cfg.generator.known_resolution();
    if let (Some(size), Some(res)) = (a.size, known) {
        image_io::check_size(size, res)?;
    }
    fsutil::check_writable(&a.output)?;
    if let Some(p) = &a.save_latent {
        fsutil::check_writable(p)?;
    }
    let noise = match a.noise.as_str() {
        "random" => NoiseMode::Random(a.noise_seed),
        _ => NoiseMode::Fixed,
    };

    let dev = device::select(&cfg.device)?;
    let g = cfg.open_generator(&dev, true)?;
    let size = a.size.unwrap_or(g.resolution());
    image_io::check_size(size, g.resolution())?;
    let wplus = match &a.latent {
        Some(path) => {
            let space = a
                .space
                .ok_or_else(|| Error::invalid("--latent needs --space z, w or wplus"))?;
            latent::load_wplus(g.as_ref(), path, space, psi)?
        }
        None => {
            let z = generator::z_for_seeds(a.seed, a.count, g.z_dim(), g.device())?;
            g.broadcast_w(&g.truncate(&g.map(&z)?, psi)?)?
        }
    };
    let n = wplus.dim(0)?;
    let mut images = Vec::with_capacity(n);
    for start in (0..n).step_by(cfg.generator.max_batch) {
        let len = cfg.generator.max_batch.min(n - start);
        let out = g.synthesize(&wplus.narrow(0, start, len)?, noise)?;
        check_finite(&out, "generated image").context("the generator produced invalid values")?;
        images.extend(image_io::to_rgb8(&image_io::resize_area(&out, size)?)?);
        eprintln!("generated {}/{n}", images.len());
    }
    if let Some(p) = &a.save_latent {
        latent::save_wplus(p, &wplus)?;
        eprintln!("saved latents to {}", p.display());
    }
    if a.grid {
        image_io::save_png(&a.output, &image_io::grid(&images))?;
        println!("{}", a.output.display());
    } else {
        for (k, img) in images.iter().enumerate() {
            let path = image_io::numbered_path(&a.output, k);
            image_io::save_png(&path, img)?;
            println!("{}", path.display());
        }
    }
    Ok(())
}
