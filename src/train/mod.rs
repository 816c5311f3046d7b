//! `clip2gan train`: self-supervised training of the CLIP2GAN mapper.
//!
//! Sample z -> w (-> W+ with optional style mixing) -> generator -> image ->
//! CLIP image embedding e; perturb e against the modality gap (LAFITE); map
//! it; compare the predicted W+ with the sampled one, and (full mode) its
//! image and CLIP embedding with the target's. CLIP and the generator stay
//! frozen; only the mapper learns.
//!
//! # Layout
//!
//! - [`config`]: the `[train]` settings (with `[train.refine]`) and the
//!   resume compatibility check.
//! - [`data`]: samples from the generator (codes per index, W+, images,
//!   embeddings); [`images`]: the user's own images.
//! - [`cache`]: the pair cache (chunked, manifest, resumable).
//! - [`source`]: each step's batch, from the cache or fresh samples.
//! - [`gap`]: the LAFITE perturbation; [`losses`]: the objective.
//! - [`fit`]: the closed-form mapper (`mode = "fit"`): ridge regression on
//!   the pair cache, with the text shift from [`captions`] (the configured
//!   file's or the built-in face captions, recorded in the mapper's
//!   metadata); [`refine`]: the
//!   MLP that starts as the fit and learns more from the same pairs.
//! - [`optim`]: AdamW with saveable state, and the schedule.
//! - [`warmup`]: first use: the first mapper built before the first face,
//!   then improved as the bank grows in idle time.
//! - [`checkpoint`]: checkpoint files; [`progress`]: progress line and metrics;
//!   [`interrupt`]: the Ctrl-C flag. The command (`clip2gan train`: flags,
//!   loading, the summary) is the binary's `src/cli/train.rs`.
//! - `run`: [`train`] itself, the loop that ties these together.
//!
//! Determinism: every random draw comes from a stream named after the seed
//! and the step or sample index ([`crate::rng`]), parameters are updated in
//! name order, and a checkpoint holds the optimiser moments, so a resumed run
//! reproduces the uninterrupted run's losses exactly.

pub mod cache;
pub mod captions;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod fit;
pub mod gap;
pub mod images;
pub mod interrupt;
pub mod losses;
pub mod optim;
pub mod progress;
pub mod refine;
mod run;
pub mod source;
pub mod warmup;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use candle_nn::VarMap;

use crate::clip::Clip;
use crate::error::Result;
use crate::generator::Generator;
use crate::mapper::{Mapper, MapperMeta};
pub use config::{LossWeights, MapperInit, Mode, TrainConfig};
pub use run::train;

/// Everything a run needs.
pub struct Setup<'a> {
    pub g: &'a dyn Generator,
    pub clip: &'a Clip,
    /// The CLIP checkpoint's name, recorded in the mapper (`[clip] model`).
    pub clip_model: String,
    pub config: TrainConfig,
    /// Typical prompts for the fit's text shift (`[mapper] captions`).
    pub captions: captions::Captions,
    /// Checkpoint, metrics and pair cache (resolved path).
    pub run_dir: PathBuf,
    /// The finished mapper.
    pub out: PathBuf,
    pub resume: bool,
    /// Raised by Ctrl-C: checkpoint and stop after the current step.
    pub stop: &'a AtomicBool,
    /// Behave as if interrupted right after this step (tests).
    pub stop_after: Option<u64>,
    /// No progress line or notes on stderr.
    pub quiet: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The step the run started from (0 for a new run).
    pub start_step: u64,
    /// The last completed step.
    pub step: u64,
    pub interrupted: bool,
    /// Total loss of each step this invocation ran.
    pub losses: Vec<(u64, f32)>,
    pub cache: Option<cache::CacheStats>,
    pub steps_per_s: f64,
    pub checkpoint: PathBuf,
    pub metrics: PathBuf,
    /// The mapper file, written when the run reached its last step.
    pub mapper: Option<PathBuf>,
}

/// Stream name of the mapper's initial weights.
pub const INIT_STREAM: &str = "mapper-init";

/// The mapper metadata a run with `cfg` writes.
pub fn mapper_meta(
    g: &dyn Generator,
    clip: &Clip,
    clip_model: &str,
    cfg: &TrainConfig,
) -> MapperMeta {
    MapperMeta {
        clip_model: clip_model.to_string(),
        clip_dim: clip.embed_dim(),
        generator: g.id().to_string(),
        num_styles: g.num_styles(),
        w_dim: g.w_dim(),
        config: cfg.mapper.clone(),
        step: 0,
        training: serde_json::to_value(cfg).unwrap_or_default(),
        metrics: serde_json::Value::Null,
    }
}

/// A mapper as training starts it: `eval-mapper`'s "untrained" baseline.
pub fn untrained_mapper(
    g: &dyn Generator,
    clip: &Clip,
    clip_model: &str,
    cfg: &TrainConfig,
) -> Result<(Mapper, VarMap)> {
    let varmap = VarMap::new();
    let meta = mapper_meta(g, clip, clip_model, cfg);
    let seed = crate::rng::derive(cfg.seed, INIT_STREAM);
    let m = Mapper::init_seeded(&varmap, meta, g.w_avg(), seed, g.device())?;
    Ok((m, varmap))
}

/// The parameters of a mapper's `VarMap` with their names.
pub(crate) fn named_vars(varmap: &VarMap) -> Vec<(String, candle_core::Var)> {
    varmap
        .data()
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}
