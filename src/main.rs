//! Command-line front end. Each subcommand parses its flags, validates them
//! before any expensive work, and calls into the library.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use clip2gan::config::Config;
use clip2gan::error::Error;
use clip2gan::generator::stylegan2::StyleGan2;
use clip2gan::generator::{self, check_finite, check_truncation, NoiseMode};
use clip2gan::{bench, device, fsutil, image_io, latent};

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
    /// Measure speed; prints one JSON line.
    #[command(subcommand)]
    Bench(BenchCommand),
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
                    let mut cfg = cfg.clone();
                    cfg.generator.kind = kind;
                    generator::open(&cfg, &dev, true)?
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
    let known = match cfg.generator.kind.as_str() {
        "mobilestylegan" => Some(1024),
        _ => cfg.generator.resolution,
    };
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
    let g = generator::open(cfg, &dev, true)?;
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
