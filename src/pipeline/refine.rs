//! Quality mode: a few CLIP-guided Adam steps from a latent (the mapper's,
//! or a photo's inversion) towards its prompt.
//!
//! Each step renders the batch through the generator's differentiable path
//! (a latent that carries a gradient sends every kernel down its portable
//! tensor-op path, see [`crate::ops`]), encodes the images with CLIP's
//! differentiable preprocessing and vision tower, and moves each latent by
//! one Adam step on `-cos(prompt, image) + pull * |w - start|^2`, the
//! distance averaged over styles. The rendered latent is clamped, style by
//! style, to the farthest of the generator's own samples from `w_avg`
//! ([`crate::variety::generator_range`]), inside the graph, so the clamp is
//! part of what is optimised and every latent a step returns is in range:
//! the face stays a face.
//!
//! The state of each latent is its own ([`Refining`]: start, offset, Adam
//! moments, step count): Adam is element-wise and the loss a sum over the
//! batch, so a batch of refinements of different users, joined or left at
//! any step, is one forward and backward per step and gives each latent
//! what it would get alone. That is what lets the engine batch them.
//!
//! The image is rendered at the generator's size and area-resized for CLIP
//! by [`crate::clip::Preprocessor::from_generator`]: MobileStyleGAN's graph
//! has only its last block's `to_img` (README, "Quality mode"), so no
//! earlier block can give a smaller picture.

use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::{limits, Pipeline};
use crate::error::{Error, Result};

/// Which latent the steps move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RefineSpace {
    /// One offset per style: the most freedom.
    #[default]
    #[value(name = "wplus")]
    #[serde(rename = "wplus")]
    WPlus,
    /// One offset shared by every style (the face moves as a whole).
    W,
}

/// How refinement steps move a latent (`[pipeline] refine_*`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefineSettings {
    /// Adam's step size (each coordinate of w moves about this much a step).
    pub step_size: f64,
    /// Weight of the squared distance to the start latent (per style).
    pub pull: f64,
    pub space: RefineSpace,
    /// Latents per forward and backward pass within one step. The backward
    /// keeps every activation of the generator at full resolution (about
    /// 8 GB for one 1024 px MobileStyleGAN image on a CPU), so a batch of
    /// refinements is differentiated a chunk at a time: the same gradients
    /// (the loss is a sum of per-latent terms), memory bounded by the chunk.
    pub chunk: usize,
}

impl Default for RefineSettings {
    fn default() -> Self {
        Self {
            step_size: 0.01,
            pull: 0.002,
            space: RefineSpace::WPlus,
            chunk: 1,
        }
    }
}

impl RefineSettings {
    pub fn validate(&self) -> Result<()> {
        if !(self.step_size.is_finite() && self.step_size > 0.0 && self.step_size <= 10.0) {
            return Err(Error::Config(format!(
                "pipeline.refine_step_size = {}: use a value in (0, 10] (0.01 is typical)",
                self.step_size
            )));
        }
        if !(self.pull.is_finite() && self.pull >= 0.0) {
            return Err(Error::Config(format!(
                "pipeline.refine_pull = {}: use 0 or a positive number",
                self.pull
            )));
        }
        if self.chunk == 0 || self.chunk > limits::MAX_COUNT {
            return Err(Error::Config(format!(
                "pipeline.refine_chunk = {}: use 1 to {} (latents per backward pass)",
                self.chunk,
                limits::MAX_COUNT
            )));
        }
        Ok(())
    }
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

/// One latent being refined: everything its next step needs.
pub struct Refining {
    /// `[styles, w_dim]`, where it started (and is pulled back to).
    start: Tensor,
    /// `[styles, w_dim]` (W+) or `[1, w_dim]` (W): what Adam moves.
    offset: Tensor,
    m: Tensor,
    v: Tensor,
    /// `[1, embed_dim]`, the prompt's normalised CLIP embedding.
    text: Tensor,
    /// Steps taken.
    pub steps: usize,
}

impl Refining {
    /// The latent as it is now (clamped to the generator's range).
    pub fn latent(&self, p: &Pipeline, radius: f64) -> Result<Tensor> {
        let w = self.start.broadcast_add(&self.offset)?.unsqueeze(0)?;
        Ok(clamp_styles(&w, p.generator.w_avg(), radius)?.squeeze(0)?)
    }
}

/// Each style of `w` `[n, styles, w_dim]` moved towards `w_avg` to at most
/// `radius` from it. Differentiable (a max and a division).
pub fn clamp_styles(w: &Tensor, w_avg: &Tensor, radius: f64) -> Result<Tensor> {
    let r = w.broadcast_sub(w_avg)?;
    let norm = r.sqr()?.sum_keepdim(2)?.sqrt()?; // [n, styles, 1]
    let scale = (norm.maximum(radius)?.recip()? * radius)?;
    Ok(r.broadcast_mul(&scale)?.broadcast_add(w_avg)?)
}

/// What one refinement step reports for each latent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepScore {
    /// CLIP score (100 x cosine) of the latent the step started from.
    pub score: f32,
}

impl Pipeline {
    /// The text an edit's refinement aims at: the instruction's target
    /// ("add smile" -> "a smiling face").
    pub fn edit_target(&self, instruction: &str) -> Result<String> {
        super::instruction::parse_about(instruction, &self.settings.subject)
            .map(|p| p.target)
            .ok_or_else(|| Error::invalid(limits::EMPTY_EDIT))
    }

    /// The radius refined latents are clamped to: the farthest of the
    /// generator's own samples from `w_avg` (about 10 ms of mapping on a
    /// CPU; callers that refine many times may keep it).
    pub fn latent_radius(&self) -> Result<f64> {
        crate::variety::generator_range(self.generator.as_ref())
    }

    /// Start refining each latent of `latents` (`[n, styles, w_dim]`)
    /// towards its prompt (one per latent).
    pub fn refine_begin(&self, latents: &Tensor, prompts: &[&str]) -> Result<Vec<Refining>> {
        let (n, s, d) = latents.dims3()?;
        if prompts.len() != n {
            return Err(Error::invalid(format!(
                "{} prompts for {n} latents",
                prompts.len()
            )));
        }
        let g = &self.generator;
        if (s, d) != (g.num_styles(), g.w_dim()) {
            return Err(Error::invalid(format!(
                "latent has shape [{s}, {d}], this generator needs [{}, {}]",
                g.num_styles(),
                g.w_dim()
            )));
        }
        for p in prompts {
            limits::check_prompt(p).map_err(Error::InvalidArgument)?;
        }
        let (text, _) = self.clip.encode_text(prompts)?;
        let latents = latents
            .to_device(self.generator.device())?
            .to_dtype(candle_core::DType::F32)?
            .detach();
        let rows = match self.settings.refine.space {
            RefineSpace::WPlus => s,
            RefineSpace::W => 1,
        };
        (0..n)
            .map(|i| {
                let offset = Tensor::zeros((rows, d), candle_core::DType::F32, g.device())?;
                Ok(Refining {
                    start: latents.get(i)?,
                    m: offset.clone(),
                    v: offset.clone(),
                    offset,
                    text: text.narrow(0, i, 1)?.detach(),
                    steps: 0,
                })
            })
            .collect()
    }

    /// One Adam step for every latent of `states`, one forward and backward
    /// pass per [`RefineSettings::chunk`] latents; the CLIP score of each
    /// latent before the step.
    pub fn refine_step(&self, states: &mut [Refining], radius: f64) -> Result<Vec<StepScore>> {
        let chunk = self.settings.refine.chunk.max(1);
        let mut scores = Vec::with_capacity(states.len());
        for part in states.chunks_mut(chunk) {
            scores.extend(self.refine_step_together(part, radius)?);
        }
        Ok(scores)
    }

    /// One Adam step for every latent of `states` in one forward and
    /// backward pass.
    fn refine_step_together(&self, states: &mut [Refining], radius: f64) -> Result<Vec<StepScore>> {
        if states.is_empty() {
            return Ok(Vec::new());
        }
        let cfg = self.settings.refine;
        let g = &self.generator;
        let (s, d) = (g.num_styles(), g.w_dim());
        let offsets = Tensor::stack(
            &states
                .iter()
                .map(|st| st.offset.broadcast_as((s, d))?.contiguous())
                .collect::<candle_core::Result<Vec<_>>>()?,
            0,
        )?;
        // W shares one offset across styles: the variable is one row each.
        let var = match cfg.space {
            RefineSpace::WPlus => Var::from_tensor(&offsets)?,
            RefineSpace::W => Var::from_tensor(&offsets.narrow(1, 0, 1)?.contiguous()?)?,
        };
        let starts = Tensor::stack(
            &states.iter().map(|st| st.start.clone()).collect::<Vec<_>>(),
            0,
        )?;
        let texts = Tensor::cat(
            &states.iter().map(|st| st.text.clone()).collect::<Vec<_>>(),
            0,
        )?;
        let w = clamp_styles(&starts.broadcast_add(var.as_tensor())?, g.w_avg(), radius)?;
        let images = g.synthesize(&w, self.settings.noise)?;
        let e = self.clip.encode_generated(&images)?;
        let cos = (e * &texts)?.sum(1)?; // [n]
        let dist = (&w - &starts)?.sqr()?.sum(2)?.mean(1)?; // [n]
        let loss = ((dist * cfg.pull)? - &cos)?.sum_all()?;
        let grads = loss.backward()?;
        let grad = grads
            .get(var.as_tensor())
            .ok_or_else(|| Error::invalid("refinement: the latent got no gradient"))?
            .detach();
        let scores = cos.detach().to_vec1::<f32>()?;
        let lr = cfg.step_size;
        for (i, st) in states.iter_mut().enumerate() {
            let gi = grad.get(i)?;
            st.steps += 1;
            let t = st.steps as i32;
            st.m = ((&st.m * BETA1)? + (&gi * (1.0 - BETA1))?)?;
            st.v = ((&st.v * BETA2)? + (gi.sqr()? * (1.0 - BETA2))?)?;
            let m_hat = (&st.m / (1.0 - BETA1.powi(t)))?;
            let v_hat = (&st.v / (1.0 - BETA2.powi(t)))?;
            let update = (m_hat / (v_hat.sqrt()? + EPS)?)?;
            st.offset = (&st.offset - (update * lr)?)?;
        }
        Ok(scores
            .into_iter()
            .map(|c| StepScore { score: 100.0 * c })
            .collect())
    }

    /// CLIP scores (100 x cosine) of `images` `[n, 3, R, R]` against the
    /// prompts' embeddings of `states` (no gradient).
    pub fn refine_scores(&self, states: &[Refining], images: &Tensor) -> Result<Vec<f32>> {
        let texts = Tensor::cat(
            &states.iter().map(|st| st.text.clone()).collect::<Vec<_>>(),
            0,
        )?;
        let e = self.clip.encode_generated(&images.detach())?;
        Ok(((e * texts)?.sum(1)? * 100.0)?.to_vec1::<f32>()?)
    }

    /// Refine each latent of `latents` for `steps` steps towards its prompt;
    /// `on_step(i, scores)` hears the scores before step `i` (1-based).
    /// Returns the refined latents, their images and final CLIP scores.
    pub fn refine(
        &self,
        latents: &Tensor,
        prompts: &[&str],
        steps: usize,
        mut on_step: impl FnMut(usize, &[StepScore]),
    ) -> Result<Refined> {
        limits::check_refine_steps(steps).map_err(Error::InvalidArgument)?;
        let radius = self.latent_radius()?;
        let mut states = self.refine_begin(latents, prompts)?;
        for i in 1..=steps {
            let scores = self.refine_step(&mut states, radius)?;
            on_step(i, &scores);
        }
        self.refine_finish(&states, radius)
    }

    /// The latents of `states` as they are now, rendered, with their scores.
    pub fn refine_finish(&self, states: &[Refining], radius: f64) -> Result<Refined> {
        let w = Tensor::stack(
            &states
                .iter()
                .map(|st| st.latent(self, radius))
                .collect::<Result<Vec<_>>>()?,
            0,
        )?;
        let images = self.render(&w)?;
        let scores = self.refine_scores(states, &images)?;
        Ok(Refined {
            latents: w,
            images,
            scores,
        })
    }
}

/// Refined latents `[n, styles, w_dim]`, their images `[n, 3, R, R]` and
/// their CLIP scores (100 x cosine).
#[derive(Debug, Clone)]
pub struct Refined {
    pub latents: Tensor,
    pub images: Tensor,
    pub scores: Vec<f32>,
}
