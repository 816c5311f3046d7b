//! `clip2gan train` on the command line: flags over the `[train]` section,
//! loading the generator and CLIP, Ctrl-C handling, and the summary the
//! user reads (stderr; the mapper's path on stdout).

use std::path::PathBuf;

use clap::Args;
use clip2gan::config::Config;
use clip2gan::error::Result;
use clip2gan::train::{interrupt, train, Mode, Report, Setup};

/// Flags override `[train]` in config.toml (which documents every setting;
/// the rest can be set with CLIP2GAN_TRAIN__<KEY> variables).
#[derive(Args, Debug, Clone, Default)]
pub struct TrainArgs {
    /// cache: precomputed pairs, latent losses (CPU); full: image + CLIP losses (GPU).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
    /// Optimiser steps of the whole run.
    #[arg(long)]
    pub steps: Option<u64>,
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Pairs in the cache (cache mode).
    #[arg(long)]
    pub pairs: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
    /// LAFITE noise level xi in [0, 1] (0 = no perturbation).
    #[arg(long)]
    pub xi: Option<f64>,
    /// A folder of your own images to train on too (full mode).
    #[arg(long)]
    pub image_dir: Option<PathBuf>,
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
    /// Checkpoint, metrics and pair cache (default: <models_dir>/train).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Where the finished mapper goes (default: [mapper] path).
    #[arg(long, short = 'o')]
    pub out: Option<PathBuf>,
    /// Continue the run in the run directory from its checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl TrainArgs {
    /// Apply the flags to the configuration.
    pub fn apply(&self, cfg: &mut Config) {
        let t = &mut cfg.train;
        macro_rules! set {
            ($($flag:ident => $field:ident),*) => {
                $(if let Some(v) = self.$flag.clone() { t.$field = v; })*
            };
        }
        set!(mode => mode, steps => steps, batch_size => batch_size, lr => lr, pairs => pairs,
             seed => seed, xi => lafite_xi, checkpoint_every => checkpoint_every, run_dir => run_dir);
        if let Some(d) = &self.image_dir {
            t.image_dir = Some(d.clone());
        }
    }
}

/// Run `clip2gan train`: returns the report; prints a summary on stderr.
pub fn run(cfg: &Config, args: &TrainArgs) -> Result<Report> {
    let mut cfg = cfg.clone();
    args.apply(&mut cfg);
    cfg.train.validate()?;
    let out = args.out.clone().unwrap_or_else(|| cfg.mapper_path());
    let run_dir = cfg.models_dir.join(&cfg.train.run_dir);
    let dev = clip2gan::device::select(&cfg.device)?;
    let stop = interrupt::install();
    let g = cfg.open_generator(&dev, true)?;
    let clip = clip2gan::clip::Clip::load(&cfg.clip_files()?, &dev)?;
    if !args.quiet {
        eprintln!(
            "training a mapper: CLIP {} (dim {}) -> {} W+ {}x{} ({} px), {} mode, {} steps",
            cfg.clip.model,
            clip.embed_dim(),
            g.id(),
            g.num_styles(),
            g.w_dim(),
            g.resolution(),
            cfg.train.mode,
            cfg.train.steps
        );
    }
    let r = train(&Setup {
        g: g.as_ref(),
        clip: &clip,
        clip_model: cfg.clip.model.clone(),
        config: cfg.train.clone(),
        captions: cfg.captions()?,
        run_dir,
        out,
        resume: args.resume,
        stop,
        stop_after: None,
        quiet: args.quiet,
    })?;
    if let Some(c) = &r.cache {
        if let Some(rate) = c.pairs_per_s() {
            eprintln!(
                "pair cache: {} rendered at {rate:.2} pairs/s, {} reused",
                c.rendered, c.reused
            );
        }
    }
    if r.interrupted {
        if r.step > r.start_step || r.start_step > 0 {
            eprintln!(
                "interrupted at step {}: checkpoint in {}; continue with the same command and --resume",
                r.step,
                r.checkpoint.display()
            );
        } else {
            eprintln!("interrupted before training began; run the same command again (the pair cache resumes)");
        }
    } else {
        eprintln!(
            "done: step {} at {:.2} steps/s; metrics in {}",
            r.step,
            r.steps_per_s,
            r.metrics.display()
        );
        if let Some(m) = &r.mapper {
            println!("{}", m.display());
        }
    }
    Ok(r)
}
