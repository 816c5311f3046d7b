//! Text-to-image and edits on top of CLIP, the mapper and a generator.
//!
//! Every operation takes a slice of requests and runs them as one batch
//! (one CLIP call, one mapper call, generator calls of at most `max_batch`
//! images), which is what lets the engine merge concurrent users' work.
//! Results are tensors; the engine turns them into plain bytes. `refine`
//! is quality mode: CLIP-guided steps from a latent towards its prompt.

pub mod config;
pub mod instruction;
pub mod limits;
pub mod refine;

pub use config::{PipelineConfig, PipelineSetup};
pub use limits::{MAX_COUNT, STRENGTH_RANGE};
pub use refine::{RefineSettings, RefineSpace, Refined, Refining};

use std::time::Instant;

use candle_core::{DType, Device, Tensor, D};

use crate::clip::{l2_normalize, Clip};
use crate::error::{Error, Result};
use crate::generator::{seeded_normal, z_for_seeds, Generator, NoiseMode};
use crate::mapper::Mapper;

#[derive(Debug, Clone)]
pub struct Settings {
    /// Truncation applied to mapped latents (1 = none: the mapper's output
    /// already sits near `w_avg`).
    pub truncation: f64,
    /// LAFITE-style perturbation of the text embedding per seed, for variety.
    pub variation_xi: f64,
    /// Blend of a seeded random style into the fine layers (colour, texture).
    pub fine_mix: f64,
    /// Mappers that carry their fit's residuals (the closed-form one): how
    /// much of a drawn residual each image adds to the prediction (0 = every
    /// image the prediction, 1 = as much as real faces deviate from it).
    /// Such mappers take their variety from this instead of `variation_xi`
    /// and `fine_mix`.
    pub sample_temperature: f64,
    /// Images per generator call.
    pub max_batch: usize,
    pub noise: NoiseMode,
    /// What the generator makes (`generator.subject`): the noun of the
    /// edit phrases.
    pub subject: String,
    /// How quality mode's CLIP-guided steps move a latent.
    pub refine: RefineSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            truncation: 1.0,
            variation_xi: 0.15,
            fine_mix: 0.5,
            sample_temperature: 0.8,
            max_batch: 4,
            noise: NoiseMode::Fixed,
            subject: instruction::FACE.into(),
            refine: RefineSettings::default(),
        }
    }
}

/// Which W+ layers an edit may change.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Layers {
    #[default]
    All,
    Coarse,
    Middle,
    Fine,
}

#[derive(Debug, Clone)]
pub struct ImagineRequest {
    pub prompt: String,
    pub count: usize,
    pub seed: u64,
    /// None: the pipeline's setting.
    pub truncation: Option<f64>,
    /// Draw this many candidates (>= count) and keep the best by CLIP score.
    pub candidates: usize,
}

#[derive(Debug, Clone)]
pub struct EditRequest {
    /// W+ `[num_styles, w_dim]`.
    pub latent: Tensor,
    pub instruction: String,
    pub strength: f64,
    pub layers: Layers,
}

/// Latents and images of one request.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// `[n, num_styles, w_dim]`
    pub latents: Tensor,
    /// `[n, 3, R, R]` in about [-1, 1]
    pub images: Tensor,
    /// The prompt had more than 77 tokens and was cut.
    pub truncated: bool,
    /// CLIP score (100 x cosine) of each image, when candidates were ranked.
    pub scores: Option<Vec<f32>>,
}

impl Rendered {
    /// Latents and their images, with no prompt behind them.
    pub fn plain(latents: Tensor, images: Tensor) -> Self {
        Rendered {
            latents,
            images,
            truncated: false,
            scores: None,
        }
    }
}

/// Wall time of each stage of one pipeline call, in ms: what the engine's
/// benchmark reports per image. On a GPU a stage may return before its
/// kernels finish, so its time can show up in a later stage.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Stages {
    /// Text encoder (prompts, or an edit's target and neutral texts).
    pub clip_text_ms: f64,
    /// Text embedding to W+ (mapper, variety, truncation, edit directions).
    pub mapper_ms: f64,
    pub generator_ms: f64,
    /// Image encoder ranking candidates (only when candidates > count).
    pub clip_image_ms: f64,
}

/// Milliseconds since `*t`, and restart it there.
fn lap(t: &mut Instant) -> f64 {
    let now = Instant::now();
    let ms = (now - *t).as_secs_f64() * 1000.0;
    *t = now;
    ms
}

pub struct Pipeline {
    pub clip: Clip,
    pub mapper: Mapper,
    pub generator: Box<dyn Generator>,
    pub settings: Settings,
}

/// The configured mapper, checked against the loaded CLIP and generator;
/// warnings (e.g. a differently named CLIP) for the caller to show.
pub fn load_mapper(
    cfg: &PipelineSetup,
    clip: &Clip,
    generator: &dyn Generator,
) -> Result<(Mapper, Vec<String>)> {
    let compat = crate::mapper::Compat {
        clip_model: &cfg.clip.model,
        clip_dim: clip.embed_dim(),
        generator: generator.id(),
        num_styles: generator.num_styles(),
        w_dim: generator.w_dim(),
    };
    Mapper::load(&cfg.mapper_path(), &compat, generator.device())
}

/// Seeds of the latents an edit's strength is measured against.
const SPREAD_SEED: u64 = 0x5d_0000;
const SPREAD_SAMPLES: usize = 256;

/// An edit direction `d` (`[styles, w_dim]`) rescaled to one standard
/// deviation of `spread` (`[k, w_dim]`, latents about their mean, each
/// standing for the W+ that repeats it) along it; zero stays zero.
///
/// The mapped direction `M(target) - M(neutral)` has no scale of its own:
/// its length follows the CLIP's text geometry and the mapper's
/// regularisation, so a fixed strength moved faces by very different
/// amounts from one CLIP to another. Measured in the generator's own
/// spread, strength 1 means the same on every CLIP (on the toy CLIP: the
/// asked attribute moves by about a standard deviation while the others
/// stay; README, "Text that means something").
pub fn one_sd_along(d: &Tensor, spread: &Tensor) -> Result<Tensor> {
    let norm = d.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    if !norm.is_finite() || norm <= 1e-12 {
        return Ok(d.zeros_like()?);
    }
    let u = (d / norm)?;
    // A latent that repeats w in every style projects on u as <w, sum_s u_s>.
    let along = spread.matmul(&u.sum(0)?.unsqueeze(1)?)?.squeeze(1)?; // [k]
    let mean = along.mean_all()?.to_scalar::<f32>()? as f64;
    let var = (along - mean)?.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok((u * var.sqrt())?)
}

/// LAFITE's perturbation: `normalise((1 - xi) e + xi n / |n|)`.
pub fn perturb(e: &Tensor, xi: f64, seed: u64) -> Result<Tensor> {
    let (n, d) = e.dims2()?;
    let noise = l2_normalize(&seeded_normal(seed, n, d, e.device())?)?;
    l2_normalize(&((e * (1.0 - xi))? + (noise * xi)?)?)
}

impl Pipeline {
    /// Load CLIP, the generator and the mapper named in the configuration,
    /// checking that the mapper fits the other two. Warnings (e.g. a mapper
    /// trained with a differently named CLIP) are returned for display.
    pub fn load(cfg: &PipelineSetup, device: &Device) -> Result<(Pipeline, Vec<String>)> {
        // Cheap checks first: a missing mapper should not cost a CLIP download.
        crate::mapper::read_meta(&cfg.mapper_path())?;
        let clip = Clip::load(&cfg.clip_files()?, device)?;
        let generator = cfg.open_generator(device, true)?;
        Self::assemble(cfg, clip, generator)
    }

    /// The pipeline of loaded models and the configured mapper (checked
    /// against them).
    pub fn assemble(
        cfg: &PipelineSetup,
        clip: Clip,
        generator: Box<dyn Generator>,
    ) -> Result<(Pipeline, Vec<String>)> {
        let (mapper, warnings) = load_mapper(cfg, &clip, generator.as_ref())?;
        Ok((
            Pipeline {
                clip,
                mapper,
                generator,
                settings: cfg.settings(),
            },
            warnings,
        ))
    }

    fn device(&self) -> &Device {
        self.generator.device()
    }

    /// Run the generator in chunks of `max_batch`.
    ///
    /// Inference never back-propagates, so the latents are detached first: a
    /// mapper built on a `VarMap` (random or freshly trained weights) makes
    /// W+ carry a gradient, which sends every generator kernel down its
    /// portable path and keeps each layer's activations alive in the graph
    /// until the images are dropped (measured: a bench engine run grew to
    /// 21 GB and was killed).
    pub fn render(&self, wplus: &Tensor) -> Result<Tensor> {
        let wplus = wplus.detach();
        let n = wplus.dim(0)?;
        let mut out = Vec::new();
        for start in (0..n).step_by(self.settings.max_batch.max(1)) {
            let len = self.settings.max_batch.max(1).min(n - start);
            out.push(
                self.generator
                    .synthesize(&wplus.narrow(0, start, len)?, self.settings.noise)?,
            );
        }
        Ok(Tensor::cat(&out, 0)?)
    }

    fn check_truncation(&self, psi: Option<f64>) -> Result<f64> {
        let psi = psi.unwrap_or(self.settings.truncation);
        crate::generator::check_truncation(psi)?;
        Ok(psi)
    }

    /// Text to faces for several requests in one batch.
    pub fn imagine(&self, reqs: &[ImagineRequest]) -> Result<Vec<Rendered>> {
        self.imagine_timed(reqs, &mut Stages::default())
    }

    /// [`Pipeline::imagine`], adding each stage's time to `times`.
    pub fn imagine_timed(
        &self,
        reqs: &[ImagineRequest],
        times: &mut Stages,
    ) -> Result<Vec<Rendered>> {
        for r in reqs {
            limits::check_prompt(&r.prompt).map_err(Error::InvalidArgument)?;
            limits::check_count(r.count, r.candidates).map_err(Error::InvalidArgument)?;
            self.check_truncation(r.truncation)?;
        }
        let mut clock = Instant::now();
        let prompts: Vec<&str> = reqs.iter().map(|r| r.prompt.as_str()).collect();
        let (text, tokens) = self.clip.encode_text(&prompts)?;
        times.clip_text_ms += lap(&mut clock);
        let g = &self.generator;
        let fine = g.layer_groups()[2].clone();
        let mut wplus = Vec::new();
        for (i, r) in reqs.iter().enumerate() {
            let e = text.narrow(0, i, 1)?;
            // Candidate k uses seed + k everywhere, so one image of a batch
            // equals the same seed asked alone.
            let seeds: Vec<u64> = (0..r.candidates as u64)
                .map(|k| r.seed.wrapping_add(k))
                .collect();
            let rows = e.broadcast_as((r.candidates, e.dim(1)?))?.contiguous()?;
            if let Some(w) = self
                .mapper
                .sample(&rows, &seeds, self.settings.sample_temperature)?
            {
                wplus.push(g.truncate(&w, self.check_truncation(r.truncation)?)?);
                continue;
            }
            let es = (0..r.candidates)
                .map(|k| {
                    perturb(
                        &e,
                        self.settings.variation_xi,
                        r.seed.wrapping_add(k as u64),
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let mut w = self.mapper.forward_text(&Tensor::cat(&es, 0)?)?;
            if self.settings.fine_mix > 0.0 && !fine.is_empty() {
                let z = z_for_seeds(r.seed, r.candidates, g.z_dim(), self.device())?;
                let rand = g
                    .broadcast_w(&g.map(&z)?)?
                    .narrow(1, fine.start, fine.len())?;
                let ours = w.narrow(1, fine.start, fine.len())?;
                let mixed =
                    ((ours * (1.0 - self.settings.fine_mix))? + (rand * self.settings.fine_mix)?)?;
                w = w.slice_assign(&[0..r.candidates, fine.clone(), 0..g.w_dim()], &mixed)?;
            }
            wplus.push(g.truncate(&w, self.check_truncation(r.truncation)?)?);
        }
        let all = Tensor::cat(&wplus, 0)?;
        times.mapper_ms += lap(&mut clock);
        let images = self.render(&all)?;
        times.generator_ms += lap(&mut clock);
        let mut out = Vec::with_capacity(reqs.len());
        let mut offset = 0;
        for (i, r) in reqs.iter().enumerate() {
            let lat = all.narrow(0, offset, r.candidates)?;
            let img = images.narrow(0, offset, r.candidates)?;
            offset += r.candidates;
            let (lat, img, scores) = if r.candidates > r.count {
                let e_img = self.clip.encode_generated(&img)?;
                let cos = e_img
                    .matmul(&text.narrow(0, i, 1)?.t()?)?
                    .flatten_all()?
                    .to_vec1::<f32>()?;
                let mut order: Vec<usize> = (0..cos.len()).collect();
                order.sort_by(|a, b| cos[*b].total_cmp(&cos[*a]));
                order.truncate(r.count);
                let idx = Tensor::new(
                    order.iter().map(|&k| k as u32).collect::<Vec<_>>(),
                    self.device(),
                )?;
                let scores = order.iter().map(|&k| 100.0 * cos[k]).collect();
                (
                    lat.index_select(&idx, 0)?,
                    img.index_select(&idx, 0)?,
                    Some(scores),
                )
            } else {
                (lat, img, None)
            };
            out.push(Rendered {
                latents: lat,
                images: img,
                truncated: tokens[i].truncated,
                scores,
            });
        }
        times.clip_image_ms += lap(&mut clock);
        Ok(out)
    }

    /// `M(target) - M(neutral)` for each instruction: `[n, styles, w_dim]`.
    pub fn directions(&self, instructions: &[&str]) -> Result<Tensor> {
        self.directions_timed(instructions, &mut Stages::default())
    }

    fn directions_timed(&self, instructions: &[&str], times: &mut Stages) -> Result<Tensor> {
        let mut clock = Instant::now();
        let mut texts = Vec::with_capacity(2 * instructions.len());
        for ins in instructions {
            let p = instruction::parse_about(ins, &self.settings.subject)
                .ok_or_else(|| Error::invalid(limits::EMPTY_EDIT))?;
            texts.push(p.target);
            texts.push(p.neutral);
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (e, _) = self.clip.encode_text(&refs)?;
        times.clip_text_ms += lap(&mut clock);
        let w = self.mapper.forward_text(&e)?; // [2n, S, D], target/neutral interleaved
        let (s, d) = (w.dim(1)?, w.dim(2)?);
        let pairs = w.reshape((instructions.len(), 2, s, d))?;
        let dirs = (pairs.narrow(1, 0, 1)? - pairs.narrow(1, 1, 1)?)?.squeeze(1)?;
        times.mapper_ms += lap(&mut clock);
        Ok(dirs)
    }

    fn layer_mask(&self, layers: Layers) -> Result<Tensor> {
        let n = self.generator.num_styles();
        let [c, m, f] = self.generator.layer_groups();
        let range = match layers {
            Layers::All => 0..n,
            Layers::Coarse => c,
            Layers::Middle => m,
            Layers::Fine => f,
        };
        let v: Vec<f32> = (0..n)
            .map(|i| if range.contains(&i) { 1.0 } else { 0.0 })
            .collect();
        Ok(Tensor::from_vec(v, (n, 1), self.device())?)
    }

    /// The generator's own latents about their mean, `[k, w_dim]`: what
    /// an edit's strength is measured against. Seeded, so the same every
    /// call; [`SPREAD_SAMPLES`] of them cost about 10 ms on a CPU, beside
    /// 100s of ms for the image an edit renders.
    fn latent_spread(&self) -> Result<Tensor> {
        let g = &self.generator;
        let z = z_for_seeds(SPREAD_SEED, SPREAD_SAMPLES, g.z_dim(), self.device())?;
        Ok(g.map(&z)?.broadcast_sub(g.w_avg())?)
    }

    /// The paper's edit: add the mapped text direction to each latent,
    /// scaled so that strength 1 moves it by one standard deviation of the
    /// generator's latents along that direction ([`one_sd_along`]).
    pub fn edit(&self, reqs: &[EditRequest]) -> Result<Vec<Rendered>> {
        self.edit_timed(reqs, &mut Stages::default())
    }

    /// [`Pipeline::edit`], adding each stage's time to `times`.
    pub fn edit_timed(&self, reqs: &[EditRequest], times: &mut Stages) -> Result<Vec<Rendered>> {
        if reqs.is_empty() {
            return Ok(Vec::new());
        }
        let shape = (self.generator.num_styles(), self.generator.w_dim());
        for r in reqs {
            limits::check_strength(r.strength).map_err(Error::InvalidArgument)?;
            if r.latent.dims2()? != shape {
                return Err(Error::invalid(format!(
                    "latent has shape {:?}, this generator needs [{}, {}]",
                    r.latent.dims(),
                    shape.0,
                    shape.1
                )));
            }
        }
        let ins: Vec<&str> = reqs.iter().map(|r| r.instruction.as_str()).collect();
        let dirs = self.directions_timed(&ins, times)?;
        let mut clock = Instant::now();
        let mut latents = Vec::with_capacity(reqs.len());
        let spread = self.latent_spread()?;
        for (i, r) in reqs.iter().enumerate() {
            let d = dirs.get(i)?.broadcast_mul(&self.layer_mask(r.layers)?)?;
            let d = one_sd_along(&d, &spread)?;
            let lat = r.latent.to_device(self.device())?.to_dtype(DType::F32)?;
            latents.push((lat + (d * r.strength)?)?.unsqueeze(0)?);
        }
        let w = Tensor::cat(&latents, 0)?;
        times.mapper_ms += lap(&mut clock);
        let out = self.render_each(&w)?;
        times.generator_ms += lap(&mut clock);
        Ok(out)
    }

    /// Photos to editable latents: CLIP image embedding -> mapper.
    pub fn invert(&self, images: &[image::DynamicImage]) -> Result<Vec<Rendered>> {
        let e = self.clip.encode_images(images)?;
        self.render_each(&self.mapper.forward(&e)?)
    }

    /// `count` variations of a latent: a seeded random style blended into the
    /// middle and fine layers by `amount` (0 = none, 1 = strong).
    pub fn variations(
        &self,
        latent: &Tensor,
        seed: u64,
        count: usize,
        amount: f64,
    ) -> Result<Rendered> {
        limits::check_variations(count, amount).map_err(Error::InvalidArgument)?;
        let g = &self.generator;
        let z = z_for_seeds(seed, count, g.z_dim(), self.device())?;
        let rand = g.broadcast_w(&g.map(&z)?)?;
        let from = g.layer_groups()[1].start;
        let n = g.num_styles();
        let mask: Vec<f32> = (0..n)
            .map(|i| if i >= from { amount as f32 } else { 0.0 })
            .collect();
        let mask = Tensor::from_vec(mask, (1, n, 1), self.device())?;
        let base = latent
            .to_device(self.device())?
            .unsqueeze(0)?
            .broadcast_as(rand.shape())?;
        let w = (&base + (rand - &base)?.broadcast_mul(&mask)?)?;
        let images = self.render(&w)?;
        Ok(Rendered::plain(w, images))
    }

    /// `frames` images from latent `a` to `b` (linear in W+), both ends included.
    pub fn interpolate(&self, a: &Tensor, b: &Tensor, frames: usize) -> Result<Rendered> {
        limits::check_frames(frames).map_err(Error::InvalidArgument)?;
        let mut w = Vec::with_capacity(frames);
        for k in 0..frames {
            let t = k as f64 / (frames - 1) as f64;
            w.push(((a * (1.0 - t))? + (b * t)?)?.unsqueeze(0)?);
        }
        let w = Tensor::cat(&w, 0)?.to_device(self.device())?;
        let images = self.render(&w)?;
        Ok(Rendered::plain(w, images))
    }

    fn render_each(&self, w: &Tensor) -> Result<Vec<Rendered>> {
        let images = self.render(w)?;
        (0..w.dim(0)?)
            .map(|i| Ok(Rendered::plain(w.narrow(0, i, 1)?, images.narrow(0, i, 1)?)))
            .collect()
    }
}

/// Mean absolute difference of two image batches (tests and diagnostics).
pub fn mean_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?
        .abs()?
        .flatten_all()?
        .mean(D::Minus1)?
        .to_scalar::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strength 1 is one sd of the spread along the direction, whatever the
    /// direction's length and however many styles share it.
    #[test]
    fn an_edit_step_is_one_sd_of_the_spread() -> Result<()> {
        let dev = Device::Cpu;
        // Latents spread with sd 2 along axis 0 and 0.5 along axis 1.
        let k = 4096;
        let a = (seeded_normal(1, k, 1, &dev)? * 2.0)?;
        let b = (seeded_normal(2, k, 1, &dev)? * 0.5)?;
        let spread = Tensor::cat(&[a, b, Tensor::zeros((k, 1), DType::F32, &dev)?], 1)?;
        let measured = |d: Vec<f32>| -> Result<Vec<f32>> {
            let d = Tensor::from_vec(d, (2, 3), &dev)?;
            Ok(one_sd_along(&d, &spread)?.flatten_all()?.to_vec1::<f32>()?)
        };
        // Along axis 0 in both styles, of any length: each style moves by 2.
        for len in [0.01f32, 7.0] {
            let step = measured(vec![len, 0.0, 0.0, len, 0.0, 0.0])?;
            assert!(
                (step[0] - 2.0).abs() < 0.1 && (step[3] - 2.0).abs() < 0.1,
                "{step:?}"
            );
            assert!(step[1].abs() < 1e-6 && step[4].abs() < 1e-6);
        }
        // Along axis 1 in one style only: that style moves by its sd, 0.5.
        let step = measured(vec![0.0, 3.0, 0.0, 0.0, 0.0, 0.0])?;
        assert!((step[1] - 0.5).abs() < 0.03 && step[4] == 0.0, "{step:?}");
        // No direction, no move.
        assert!(measured(vec![0.0; 6])?.iter().all(|v| *v == 0.0));
        Ok(())
    }
}
