//! `clip2gan imagine`: text to faces with the trained mapper; writes the
//! images and their W+ latents (.npy).

use std::path::PathBuf;

use clap::Args;
use clip2gan::config::Config;
use clip2gan::pipeline::ImagineRequest;

use super::pipeline;

#[derive(Args)]
pub struct ImagineArgs {
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
    /// Output side in pixels: the generator's resolution divided by a power
    /// of two (default: the generator's resolution).
    #[arg(long)]
    size: Option<usize>,
    /// One grid image instead of out.png, out-1.png, ...
    #[arg(long)]
    grid: bool,
    #[arg(long, short = 'o', default_value = "imagine.png")]
    output: PathBuf,
    /// Quality mode: this many CLIP-guided steps from each mapped latent
    /// towards the prompt (0 = the mapper alone; 8 is typical, at most 32).
    #[arg(long, default_value_t = 0)]
    refine: usize,
    /// Print each refinement step's CLIP score.
    #[arg(long, short = 'v')]
    verbose: bool,
}

pub fn run(cfg: &Config, a: ImagineArgs) -> anyhow::Result<()> {
    // Before loading the models: a typo should not cost their start-up.
    clip2gan::pipeline::limits::check_refine_steps(a.refine)
        .map_err(clip2gan::error::Error::InvalidArgument)?;
    let (p, size) = pipeline::load_for(cfg, a.size, &a.output)?;
    let req = ImagineRequest {
        prompt: a.prompt,
        count: a.count,
        seed: a.seed,
        truncation: a.truncation,
        candidates: a.candidates.unwrap_or(a.count),
    };
    let r = p.imagine(std::slice::from_ref(&req))?.remove(0);
    let r = pipeline::refined(&p, r, &req.prompt, a.refine, a.verbose)?;
    if r.truncated {
        eprintln!("note: the prompt is longer than 77 CLIP tokens; the end was cut");
    }
    pipeline::write_results(&a.output, a.grid, size, &r)
}
