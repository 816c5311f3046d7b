//! `clip2gan generate`: faces from seeds or from a latent file, straight
//! from the generator (no CLIP, no mapper), as numbered PNGs or one grid.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use clip2gan::config::Config;
use clip2gan::error::Error;
use clip2gan::generator::{self, check_finite, check_truncation, latent, NoiseMode};
use clip2gan::{device, fsutil, image_io};

#[derive(Args)]
pub struct GenerateArgs {
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

pub fn run(cfg: &Config, a: GenerateArgs) -> anyhow::Result<()> {
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
