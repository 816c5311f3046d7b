//! `clip2gan edit`: a saved W+ latent edited with an instruction ("add
//! smile", "make older", ...), written as an image and its new latent.

use std::path::PathBuf;

use clap::Args;
use clip2gan::config::Config;
use clip2gan::error::Error;
use clip2gan::generator::latent;
use clip2gan::pipeline::{EditRequest, Layers};

use super::pipeline;

#[derive(Args)]
pub struct EditArgs {
    /// What to change: "add smile", "remove beard", "make older", "more happy", ...
    instruction: String,
    /// The latent to edit (.npy W+ [23,512] or [1,23,512], e.g. from imagine).
    #[arg(long)]
    latent: PathBuf,
    // The help names the pipeline's range, so that it is written once.
    #[arg(long, default_value_t = clip2gan::pipeline::limits::DEFAULT_STRENGTH,
          help = format!("{}, in standard deviations of the generator's latents along the edit; negative reverses it.", clip2gan::pipeline::limits::strength_span()))]
    strength: f64,
    /// Restrict the edit to coarse, middle or fine layers.
    #[arg(long, value_enum, default_value = "all")]
    layers: Layers,
    /// Output side in pixels: the generator's resolution divided by a power
    /// of two (default: the generator's resolution).
    #[arg(long)]
    size: Option<usize>,
    #[arg(long, short = 'o', default_value = "edited.png")]
    output: PathBuf,
    /// Quality mode: this many CLIP-guided steps from the edited latent
    /// towards the instruction's target text (0 = none; at most 32).
    #[arg(long, default_value_t = 0)]
    refine: usize,
    /// Print each refinement step's CLIP score.
    #[arg(long, short = 'v')]
    verbose: bool,
}

pub fn run(cfg: &Config, a: EditArgs) -> anyhow::Result<()> {
    // Before loading the models: a typo should not cost their start-up.
    clip2gan::pipeline::limits::check_refine_steps(a.refine)
        .map_err(clip2gan::error::Error::InvalidArgument)?;
    let (p, size) = pipeline::load_for(cfg, a.size, &a.output)?;
    let w = latent::load_wplus(p.generator.as_ref(), &a.latent, latent::Space::Wplus, 1.0)?;
    if w.dim(0)? != 1 {
        return Err(Error::invalid(format!(
            "{} holds {} latents; edit takes one ([23, 512] or [1, 23, 512])",
            a.latent.display(),
            w.dim(0)?
        ))
        .into());
    }
    let req = EditRequest {
        latent: w.squeeze(0)?,
        instruction: a.instruction,
        strength: a.strength,
        layers: a.layers,
    };
    let r = p.edit(std::slice::from_ref(&req))?.remove(0);
    let target = p.edit_target(&req.instruction)?;
    let r = pipeline::refined(&p, r, &target, a.refine, a.verbose)?;
    pipeline::write_results(&a.output, false, size, &r)
}
