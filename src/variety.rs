//! `clip2gan eval-mapper --variety N`: are text-to-face latents sane and
//! varied? For each prompt, `imagine` draws N images, and two numbers
//! compare them with the generator's own samples (1,024 mapped z, no
//! truncation):
//!
//! - range: the largest distance of any style of any image from `w_avg`,
//!   over the largest such distance among the generator's samples; above 1
//!   means a latent outside anything the generator makes (noise images);
//! - coarse variety: the mean pairwise distance of the N images' coarse
//!   styles (pose, face shape, hair), over the same between random samples;
//!   near 0 means N copies of one face, 1 means as different as strangers.

use candle_core::{Tensor, D};
use serde::Serialize;

use crate::error::Result;
use crate::generator::Generator;
use crate::pipeline::{ImagineRequest, Pipeline};

#[derive(Debug, Clone, Serialize)]
pub struct PromptVariety {
    pub prompt: String,
    pub range: f64,
    pub coarse_variety: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct VarietyReport {
    pub images_per_prompt: usize,
    /// Largest `|w - w_avg|` among the generator's samples.
    pub reference_max_distance: f64,
    /// Mean pairwise distance of the samples' coarse styles.
    pub reference_coarse_distance: f64,
    pub prompts: Vec<PromptVariety>,
}

/// Distances of each row of `w` `[n, d]` from `centre` `[d]`.
fn distances(w: &Tensor, centre: &Tensor) -> Result<Vec<f32>> {
    Ok(w.broadcast_sub(centre)?
        .sqr()?
        .sum(D::Minus1)?
        .sqrt()?
        .to_vec1()?)
}

/// Mean distance over all pairs of rows of `x` `[n, k]`.
fn mean_pairwise(x: &Tensor) -> Result<f64> {
    let n = x.dim(0)?;
    let mut sum = 0f64;
    let mut count = 0usize;
    for i in 0..n {
        let d = distances(&x.narrow(0, i + 1, n - i - 1)?, &x.get(i)?)?;
        sum += d.iter().map(|&v| v as f64).sum::<f64>();
        count += d.len();
    }
    Ok(sum / count.max(1) as f64)
}

/// Seeds of the generator's own samples the range is measured on.
const SAMPLE_SEED: u64 = 1 << 40;
const SAMPLES: usize = 1024;

/// The generator's own samples (1,024 mapped z, no truncation), `[k, w_dim]`.
fn own_samples(g: &dyn Generator) -> Result<Tensor> {
    let z = crate::generator::z_for_seeds(SAMPLE_SEED, SAMPLES, g.z_dim(), g.device())?;
    g.map(&z)
}

/// The largest `|w - w_avg|` among the generator's own samples: the radius
/// a latent's every style should stay within (refinement clamps to it).
pub fn generator_range(g: &dyn Generator) -> Result<f64> {
    Ok(distances(&own_samples(g)?, g.w_avg())?
        .into_iter()
        .fold(0f32, f32::max) as f64)
}

/// The farthest style of any latent of `w` (`[n, styles, w_dim]`) from
/// `w_avg`.
pub fn farthest_style(w: &Tensor, w_avg: &Tensor) -> Result<f64> {
    let (n, s, d) = w.dims3()?;
    Ok(distances(&w.reshape((n * s, d))?, w_avg)?
        .into_iter()
        .fold(0f32, f32::max) as f64)
}

pub fn measure(p: &Pipeline, prompts: &[String], count: usize) -> Result<VarietyReport> {
    let g = p.generator.as_ref();
    let coarse = g.layer_groups()[0].clone();
    let w = own_samples(g)?; // [1024, w_dim]
    let w_avg = g.w_avg();
    let reference_max_distance = distances(&w, w_avg)?.into_iter().fold(0f32, f32::max) as f64;
    // Random samples use one w for every style, so their coarse styles are
    // k copies of w: scale by sqrt(k) to compare with W+ rows.
    let k = coarse.len() as f64;
    let reference_coarse_distance = mean_pairwise(&w.narrow(0, 0, 256)?)? * k.sqrt();
    let mut out = Vec::new();
    for prompt in prompts {
        let req = ImagineRequest {
            prompt: prompt.clone(),
            count,
            seed: 0,
            truncation: None,
            candidates: count,
        };
        let r = p.imagine(std::slice::from_ref(&req))?.remove(0);
        let (n, _, d) = r.latents.dims3()?;
        let far = farthest_style(&r.latents, w_avg)?;
        let c = r
            .latents
            .narrow(1, coarse.start, coarse.len())?
            .reshape((n, coarse.len() * d))?;
        out.push(PromptVariety {
            prompt: prompt.clone(),
            range: far / reference_max_distance,
            coarse_variety: mean_pairwise(&c)? / reference_coarse_distance,
        });
    }
    Ok(VarietyReport {
        images_per_prompt: count,
        reference_max_distance,
        reference_coarse_distance,
        prompts: out,
    })
}

/// The report as a table for the terminal.
pub fn table(r: &VarietyReport) -> String {
    let mut s = format!(
        "{} images per prompt; range = farthest style from w_avg / the generator's farthest sample \
         (> 1: outside its range); coarse variety = mean pairwise coarse-style distance / random samples'\n",
        r.images_per_prompt
    );
    s.push_str(&format!(
        "{:<40} {:>8} {:>15}\n",
        "prompt", "range", "coarse variety"
    ));
    for p in &r.prompts {
        let name: String = p.prompt.chars().take(40).collect();
        s.push_str(&format!(
            "{name:<40} {:>8.3} {:>15.3}\n",
            p.range, p.coarse_variety
        ));
    }
    s
}
