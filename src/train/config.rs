//! The `[train]` section of `config.toml` (with `[train.refine]`, the MLP
//! refined from the fit): every setting of a training run,
//! with the defaults documented there. The whole section is stored in each
//! checkpoint (and in the mapper file), so a resumed run can check that it
//! continues the same experiment.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mapper::{Activation, MapperConfig, MapperKind};

/// Where training pairs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Precompute (W+, CLIP embedding) pairs once, then train on them with
    /// the latent losses: cheap steps, the practical mode on a CPU.
    Cache,
    /// Fresh samples every step, with image and CLIP losses through the
    /// frozen generator and CLIP: the GPU mode.
    Full,
    /// Precompute pairs as in `cache`, then fit the closed-form mapper on
    /// them in seconds (no steps): what first use builds.
    Fit,
}

/// How a new MLP mapper's weights start (cache mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapperInit {
    /// Seeded random weights, the output layer near zero (starts at w_avg).
    #[default]
    Random,
    /// The closed-form fit on the run's pair cache, written into the MLP
    /// so that it computes exactly the fit's map before the first step
    /// (needs `mapper.layer_norm = false`, `activation = "leaky_relu"`, a
    /// width of at least twice CLIP's embedding and `style_mixing = 0`).
    Fit,
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Mode::Cache => "cache",
            Mode::Full => "full",
            Mode::Fit => "fit",
        })
    }
}

/// Loss weights (0 switches a loss off).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LossWeights {
    /// MSE between predicted and sampled W+.
    pub latent: f64,
    /// MSE between the image of the predicted W+ and the target image, at
    /// `recon_size` (full mode).
    pub image: f64,
    /// 1 - cos(CLIP(image of the predicted W+), target embedding) (full mode).
    pub clip: f64,
    /// Mean squared distance of the predicted W+ from `w_avg`.
    pub pull: f64,
}

impl Default for LossWeights {
    fn default() -> Self {
        Self {
            latent: 1.0,
            image: 1.0,
            clip: 1.0,
            pull: 0.01,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    pub mode: Mode,
    /// Optimiser steps of the whole run (the schedule spans them).
    pub steps: u64,
    pub batch_size: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Linear warm-up from 0 over this many steps, then cosine decay.
    pub warmup_steps: u64,
    /// The cosine decay ends at `lr * min_lr_ratio`.
    pub min_lr_ratio: f64,
    /// Decoupled weight decay on the weight matrices (not biases or norms).
    pub weight_decay: f64,
    pub beta1: f64,
    pub beta2: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub grad_clip: f64,
    /// Seeds every random choice of the run (see `rng`).
    pub seed: u64,
    /// LAFITE modality-gap noise: e' = normalise((1 - xi) e + xi n/|n|).
    pub lafite_xi: f64,
    /// Truncation psi for sampled w (1 = the full distribution).
    pub truncation: f64,
    /// Probability of mixing two w into one W+ at a random crossover.
    pub style_mixing: f64,
    /// Generator output is reduced to this side (area filter) before CLIP
    /// sees it (capped at the generator's resolution).
    pub image_size: usize,
    /// Side at which the image reconstruction loss compares images.
    pub recon_size: usize,
    /// Images per generator call when rendering pairs and targets.
    pub gen_batch: usize,
    /// Pairs in the cache (cache mode).
    pub pairs: usize,
    /// Pairs per cache file: the unit of resuming an interrupted cache.
    pub chunk_pairs: usize,
    /// A folder of the user's own images (full mode): image losses only.
    pub image_dir: Option<PathBuf>,
    /// Share of each batch taken from `image_dir` when it is set.
    pub image_share: f64,
    /// Write a checkpoint every this many steps (also at the end and on Ctrl-C).
    pub checkpoint_every: u64,
    /// Checkpoint, metrics and pair cache; relative to `models_dir` unless absolute.
    pub run_dir: PathBuf,
    pub loss: LossWeights,
    /// Architecture of a new mapper.
    pub mapper: MapperConfig,
    /// How a new mapper's weights start.
    pub init: MapperInit,
    /// The closed-form fit (`mode = "fit"`).
    pub fit: super::fit::FitConfig,
    /// The MLP refined from the fit (`mode = "fit"` and first use's full bank).
    pub refine: RefineConfig,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            mode: Mode::Cache,
            steps: 2000,
            batch_size: 64,
            lr: 5e-4,
            warmup_steps: 100,
            min_lr_ratio: 0.05,
            weight_decay: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            grad_clip: 1.0,
            seed: 0,
            lafite_xi: 0.75,
            truncation: 1.0,
            style_mixing: 0.0,
            image_size: 256,
            recon_size: 64,
            gen_batch: 4,
            pairs: 5000,
            chunk_pairs: 64,
            image_dir: None,
            image_share: 0.5,
            checkpoint_every: 500,
            run_dir: PathBuf::from("train"),
            loss: LossWeights::default(),
            mapper: MapperConfig::default(),
            init: MapperInit::Random,
            fit: super::fit::FitConfig::default(),
            refine: RefineConfig::default(),
        }
    }
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(format!("train.{m}")));
        let unit = |x: f64| x.is_finite() && (0.0..=1.0).contains(&x);
        if self.steps == 0 || self.batch_size == 0 || self.gen_batch == 0 || self.chunk_pairs == 0 {
            return bad("steps, batch_size, gen_batch and chunk_pairs must be at least 1".into());
        }
        if self.checkpoint_every == 0 {
            return bad("checkpoint_every must be at least 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr = {} must be a positive number", self.lr));
        }
        for (name, v) in [
            ("min_lr_ratio", self.min_lr_ratio),
            ("lafite_xi", self.lafite_xi),
            ("style_mixing", self.style_mixing),
            ("image_share", self.image_share),
        ] {
            if !unit(v) {
                return bad(format!("{name} = {v} must be in [0, 1]"));
            }
        }
        if !(0.0..1.0).contains(&self.beta1) || !(0.0..1.0).contains(&self.beta2) {
            return bad("beta1 and beta2 must be in [0, 1)".into());
        }
        let non_negative = |x: f64| x.is_finite() && x >= 0.0;
        if !non_negative(self.weight_decay) || !non_negative(self.grad_clip) {
            return bad("weight_decay and grad_clip must be non-negative".into());
        }
        crate::generator::check_truncation(self.truncation)?;
        if !self.image_size.is_power_of_two() || !self.recon_size.is_power_of_two() {
            return bad("image_size and recon_size must be powers of two".into());
        }
        if self.recon_size > self.image_size {
            return bad(format!(
                "recon_size {} must not exceed image_size {}",
                self.recon_size, self.image_size
            ));
        }
        let w = &self.loss;
        for (name, v) in [
            ("latent", w.latent),
            ("image", w.image),
            ("clip", w.clip),
            ("pull", w.pull),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return bad(format!("loss.{name} = {v} must be a non-negative number"));
            }
        }
        match self.mode {
            Mode::Fit => {
                self.fit.validate()?;
                self.refine.validate()?;
                if self.image_dir.is_some() {
                    return bad("image_dir needs mode = \"full\"".into());
                }
                if self.style_mixing != 0.0 {
                    return bad(
                        "style_mixing must be 0 in fit mode (the fit maps to one w per image)"
                            .into(),
                    );
                }
            }
            Mode::Cache => {
                if self.pairs == 0 {
                    return bad("pairs must be at least 1 in cache mode".into());
                }
                if self.image_dir.is_some() {
                    return bad(
                        "image_dir needs mode = \"full\" (user images need the generator in the loop)"
                            .into(),
                    );
                }
                if w.latent + w.pull == 0.0 {
                    return bad(
                        "loss.latent and loss.pull are both 0: cache mode would learn nothing"
                            .into(),
                    );
                }
            }
            Mode::Full => {
                if w.latent + w.image + w.clip + w.pull == 0.0 {
                    return bad("every loss weight is 0".into());
                }
            }
        }
        if self.mapper.depth == 0 || self.mapper.width == 0 {
            return bad("mapper.depth and mapper.width must be at least 1".into());
        }
        if self.init == MapperInit::Fit {
            use crate::mapper::{Activation, MapperKind};
            let m = &self.mapper;
            if self.mode != Mode::Cache {
                return bad(
                    "init = \"fit\" needs mode = \"cache\" (the fit is made on the pair cache)"
                        .into(),
                );
            }
            if m.kind != MapperKind::Mlp || m.layer_norm || m.activation != Activation::LeakyRelu {
                return bad(
                    "init = \"fit\" writes the fit into a plain MLP: set mapper.kind = \"mlp\", \
                     mapper.layer_norm = false and mapper.activation = \"leaky_relu\""
                        .into(),
                );
            }
            if self.style_mixing != 0.0 {
                return bad(
                    "init = \"fit\" needs style_mixing = 0 (the fit maps to one w per image)"
                        .into(),
                );
            }
        }
        Ok(())
    }

    /// Settings a resumed run may change without changing what it computes
    /// (or, for `steps`, knowingly: the schedule stretches).
    fn resumable_view(&self) -> Self {
        Self {
            steps: 0,
            gen_batch: 0,
            chunk_pairs: 0,
            checkpoint_every: 0,
            run_dir: PathBuf::new(),
            ..self.clone()
        }
    }

    /// Differences that make `self` another experiment than `saved`, as
    /// `key: saved -> now` lines (empty when resuming is exact).
    pub fn differences(&self, saved: &TrainConfig) -> Vec<String> {
        let (a, b) = (
            serde_json::to_value(saved.resumable_view()).unwrap_or_default(),
            serde_json::to_value(self.resumable_view()).unwrap_or_default(),
        );
        let mut out = Vec::new();
        diff_json("", &a, &b, &mut out);
        out
    }
}

fn diff_json(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
    match (a, b) {
        (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
            for (k, va) in x {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                diff_json(&key, va, y.get(k).unwrap_or(&serde_json::Value::Null), out);
            }
        }
        _ if a != b => out.push(format!("{prefix}: {a} -> {b}")),
        _ => {}
    }
}

/// `[train.refine]`: the MLP refined from the fit on the full bank.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RefineConfig {
    /// Optimisation steps; 0: the fit is the final mapper.
    pub steps: u64,
    /// LAFITE noise level of the MLP's inputs during these steps.
    pub lafite_xi: f64,
    /// Peak learning rate (linear warm-up, then cosine decay as in `[train]`).
    pub lr: f64,
    pub warmup_steps: u64,
    /// Hidden layers and their width (at least twice CLIP's embedding, so
    /// the fit can be written into the first layer).
    pub depth: usize,
    pub width: usize,
    /// Decay of an exponential moving average of the weights, which the
    /// finished MLP takes instead of the last step's (0: no average).
    pub ema: f64,
}

impl Default for RefineConfig {
    fn default() -> Self {
        Self {
            steps: 450,
            lafite_xi: 0.5,
            lr: 1e-3,
            warmup_steps: 50,
            depth: 4,
            width: 1024,
            ema: 0.995,
        }
    }
}

impl RefineConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.lafite_xi) {
            return Err(Error::Config(
                "train.refine.lafite_xi must be in [0, 1)".into(),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::Config(format!(
                "train.refine.lr = {} must be a positive number",
                self.lr
            )));
        }
        if !(0.0..1.0).contains(&self.ema) {
            return Err(Error::Config("train.refine.ema must be in [0, 1)".into()));
        }
        if self.depth == 0 || self.width == 0 {
            return Err(Error::Config(
                "train.refine.depth and width must be at least 1".into(),
            ));
        }
        Ok(())
    }

    /// The cache-mode training settings these steps run with: `train`'s
    /// optimiser, batch, losses and seed, an MLP started from the fit.
    pub fn run_config(&self, train: &TrainConfig) -> TrainConfig {
        TrainConfig {
            mode: Mode::Cache,
            init: MapperInit::Fit,
            steps: self.steps.max(1),
            lr: self.lr,
            warmup_steps: self.warmup_steps.min(self.steps),
            lafite_xi: self.lafite_xi,
            style_mixing: 0.0,
            mapper: MapperConfig {
                kind: MapperKind::Mlp,
                depth: self.depth,
                width: self.width,
                layer_norm: false,
                activation: Activation::LeakyRelu,
                bank: 0,
            },
            ..train.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_differences_are_named() {
        let c = TrainConfig::default();
        c.validate().unwrap();
        let mut d = c.clone();
        d.steps = 10;
        d.checkpoint_every = 3;
        assert!(d.differences(&c).is_empty());
        d.lr = 1.0;
        d.loss.pull = 0.5;
        let diffs = d.differences(&c);
        assert_eq!(diffs.len(), 2, "{diffs:?}");
        assert!(diffs.iter().any(|l| l.starts_with("loss.pull")));
        d.image_dir = Some("x".into());
        assert!(d.validate().unwrap_err().to_string().contains("full"));
    }
}
