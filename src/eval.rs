//! `clip2gan eval-mapper`: how well a mapper inverts "generator then CLIP"
//! on held-out samples, beside two baselines: "always w_avg" (the average
//! face for every input) and "untrained mapper" (the same architecture with
//! the weights training started from).
//!
//! Held-out samples are drawn like training samples (the mapper records its
//! training settings) but from the stream family "eval", which training
//! never draws from. Metrics: latent MSE (predicted vs true W+), image PSNR
//! (generated image of the prediction vs of the truth, at `psnr_size`, images
//! in [0, 1]), and CLIP self-consistency (cosine between the CLIP embedding of
//! the prediction's image and the input embedding). With a prompt file: CLIP
//! score (100 x max(cos, 0) of text and generated image) and R-precision
//! (the true prompt ranks first among `candidates`: it and others drawn at
//! random). Text metrics only mean something with real CLIP weights.

use candle_core::{Tensor, D};
use rand::seq::IteratorRandom;
use serde::Serialize;

use crate::clip::Clip;
use crate::error::{Error, Result};
use crate::generator::{Generator, NoiseMode};
use crate::mapper::Mapper;
use crate::train::data::{self, SampleSpec};
use crate::train::TrainConfig;

/// One line of the table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub latent_mse: f64,
    pub psnr_db: f64,
    pub clip_cos: f64,
    pub clip_score: Option<f64>,
    pub r_precision: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    pub mapper: String,
    pub step: u64,
    pub generator: String,
    pub clip_model: String,
    pub samples: usize,
    pub seed: u64,
    pub xi: f64,
    pub psnr_size: usize,
    pub prompts: Option<usize>,
    pub candidates: Option<usize>,
    pub rows: Vec<Row>,
    pub variety: Option<crate::variety::VarietyReport>,
}

/// The mappers compared; `WAvg` is the constant prediction.
enum Predictor<'a> {
    Mapper(&'a Mapper),
    WAvg(&'a Tensor),
}

impl Predictor<'_> {
    fn predict(&self, e: &Tensor, styles: usize) -> Result<Tensor> {
        match self {
            // Detached: an untrained mapper's weights are training
            // variables, and a prediction that carries a gradient makes the
            // generator take its differentiable kernels and keep every
            // activation alive (64 samples grew past 21 GB).
            Predictor::Mapper(m) => Ok(m.forward(e)?.detach()),
            Predictor::WAvg(w) => {
                let (n, d) = (e.dim(0)?, w.dim(0)?);
                Ok(w.reshape((1, 1, d))?
                    .broadcast_as((n, styles, d))?
                    .contiguous()?)
            }
        }
    }
}

pub struct Options {
    pub samples: usize,
    pub seed: u64,
    pub psnr_size: usize,
    pub xi: f64,
    pub batch: usize,
    pub prompts: Option<Vec<String>>,
    pub candidates: usize,
}

/// Evaluate `trained` and the baselines on the same held-out samples.
pub fn evaluate(
    g: &dyn Generator,
    clip: &Clip,
    trained: &Mapper,
    untrained: &Mapper,
    o: &Options,
) -> Result<EvalReport> {
    if o.samples == 0 || o.batch == 0 {
        return Err(Error::invalid("--samples and --batch must be at least 1"));
    }
    crate::image_io::check_size(o.psnr_size.min(g.resolution()), g.resolution())?;
    let psnr_size = o.psnr_size.min(g.resolution());
    let tc: TrainConfig = serde_json::from_value(trained.meta.training.clone()).unwrap_or_default();
    let spec = SampleSpec {
        truncation: tc.truncation,
        style_mixing: tc.style_mixing,
        image_size: data::effective_image_size(tc.image_size, g.resolution()),
        gen_batch: o.batch,
    };
    let predictors = [
        (
            format!("trained (step {})", trained.meta.step),
            Predictor::Mapper(trained),
        ),
        ("untrained mapper".to_string(), Predictor::Mapper(untrained)),
        ("always w_avg".to_string(), Predictor::WAvg(trained.w_avg())),
    ];
    let styles = g.num_styles();
    let mut sums = vec![[0f64; 3]; predictors.len()];
    let mut avg_render: Option<(Tensor, Tensor)> = None;
    let mut done = 0;
    while done < o.samples {
        let n = o.batch.min(o.samples - done);
        let range = done as u64..(done + n) as u64;
        let codes = data::sample_codes(g, o.seed, "eval", range, &spec)?;
        let wplus = data::wplus(&codes, styles)?;
        let full = g.synthesize(&wplus, NoiseMode::Fixed)?;
        let truth_img = to_unit(&data::reduce(&full, psnr_size)?)?;
        let e = data::embed(clip, &data::reduce(&full, spec.image_size)?)?;
        let input = crate::train::gap::perturb(&e, o.xi, o.seed, &format!("eval-gap-{done}"))?;
        for (k, (_, p)) in predictors.iter().enumerate() {
            let pred = p.predict(&input, styles)?;
            let latent = (&pred - &wplus)?.sqr()?.mean(D::Minus1)?.mean(D::Minus1)?;
            // The constant prediction has one image: render it once.
            let (small, e_hat) = match (p, &avg_render) {
                (Predictor::WAvg(_), Some(r)) => r.clone(),
                _ => {
                    let rows = if matches!(p, Predictor::WAvg(_)) {
                        1
                    } else {
                        n
                    };
                    let img = g.synthesize(&pred.narrow(0, 0, rows)?, NoiseMode::Fixed)?;
                    let r = (
                        to_unit(&data::reduce(&img, psnr_size)?)?,
                        data::embed(clip, &data::reduce(&img, spec.image_size)?)?,
                    );
                    if matches!(p, Predictor::WAvg(_)) {
                        avg_render = Some(r.clone());
                    }
                    r
                }
            };
            let mse = small
                .broadcast_sub(&truth_img)?
                .sqr()?
                .flatten_from(1)?
                .mean(1)?;
            let cos = e_hat.broadcast_mul(&e)?.sum(1)?;
            sums[k][0] += latent.sum_all()?.to_scalar::<f32>()? as f64;
            sums[k][1] += mse
                .to_vec1::<f32>()?
                .iter()
                .map(|&m| psnr(m as f64))
                .sum::<f64>();
            sums[k][2] += cos.sum_all()?.to_scalar::<f32>()? as f64;
        }
        done += n;
    }
    let mut rows: Vec<Row> = predictors
        .iter()
        .zip(&sums)
        .map(|((name, _), s)| Row {
            name: name.clone(),
            latent_mse: s[0] / o.samples as f64,
            psnr_db: s[1] / o.samples as f64,
            clip_cos: s[2] / o.samples as f64,
            clip_score: None,
            r_precision: None,
        })
        .collect();
    let mut candidates = None;
    if let Some(prompts) = &o.prompts {
        let t = encode_texts(clip, prompts)?;
        let c = o
            .candidates
            .clamp(2, prompts.len().max(2))
            .min(prompts.len());
        candidates = Some(c);
        for (row, (_, p)) in rows.iter_mut().zip(&predictors) {
            let mut es = Vec::new();
            for start in (0..prompts.len()).step_by(o.batch) {
                let len = o.batch.min(prompts.len() - start);
                let pred = p.predict(&t.narrow(0, start, len)?, styles)?;
                if let Predictor::WAvg(_) = p {
                    // One image for every prompt.
                    let img = g.synthesize(&pred.narrow(0, 0, 1)?, NoiseMode::Fixed)?;
                    let e = data::embed(clip, &data::reduce(&img, spec.image_size)?)?;
                    es.push(e.broadcast_as((prompts.len(), e.dim(1)?))?.contiguous()?);
                    break;
                }
                let img = g.synthesize(&pred, NoiseMode::Fixed)?;
                es.push(data::embed(clip, &data::reduce(&img, spec.image_size)?)?);
            }
            let sims = Tensor::cat(&es, 0)?.matmul(&t.t()?)?.to_vec2::<f32>()?;
            let (score, rprec) = text_metrics(&sims, c, o.seed);
            row.clip_score = Some(score);
            row.r_precision = Some(rprec);
        }
    }
    Ok(EvalReport {
        mapper: String::new(),
        step: trained.meta.step,
        generator: g.id().to_string(),
        clip_model: trained.meta.clip_model.clone(),
        samples: o.samples,
        seed: o.seed,
        xi: o.xi,
        psnr_size,
        prompts: o.prompts.as_ref().map(|p| p.len()),
        candidates,
        rows,
        variety: None,
    })
}

/// Text embeddings of the prompts (over-long prompts are cut at 77 tokens,
/// as at inference).
fn encode_texts(clip: &Clip, prompts: &[String]) -> Result<Tensor> {
    let mut parts = Vec::new();
    for chunk in prompts.chunks(32) {
        let texts: Vec<&str> = chunk.iter().map(|s| s.as_str()).collect();
        parts.push(clip.encode_text(&texts)?.0);
    }
    Ok(Tensor::cat(&parts, 0)?)
}

/// CLIP score (mean of 100 * max(cos, 0) on the diagonal) and R-precision
/// from `sims[image][text]`: image j counts when its own text scores
/// strictly above `c - 1` others drawn from stream `rprec-j`.
pub fn text_metrics(sims: &[Vec<f32>], c: usize, seed: u64) -> (f64, f64) {
    let n = sims.len();
    let mut score = 0.0;
    let mut hits = 0usize;
    for (j, row) in sims.iter().enumerate() {
        score += 100.0 * row[j].max(0.0) as f64;
        let mut r = crate::rng::stream(seed, &format!("rprec-{j}"));
        let others = (0..n).filter(|&k| k != j).choose_multiple(&mut r, c - 1);
        if others.iter().all(|&k| row[j] > row[k]) {
            hits += 1;
        }
    }
    (score / n as f64, hits as f64 / n as f64)
}

/// Generator output in [-1, 1] -> [0, 1], clamped like a saved image.
fn to_unit(x: &Tensor) -> Result<Tensor> {
    Ok(((x + 1.0)? * 0.5)?.clamp(0f32, 1f32)?)
}

/// PSNR in dB for images in [0, 1] (capped at 100 dB for identical images).
fn psnr(mse: f64) -> f64 {
    if mse <= 1e-10 {
        100.0
    } else {
        -10.0 * mse.log10()
    }
}

/// The table `eval-mapper` prints.
pub fn table(r: &EvalReport) -> String {
    let text = r.prompts.is_some();
    let mut out = format!(
        "{} held-out samples (seed {}, xi {}), generator {}, CLIP {}\n",
        r.samples, r.seed, r.xi, r.generator, r.clip_model
    );
    out.push_str(&format!(
        "{:<24} {:>12} {:>12} {:>10}",
        "",
        "latent MSE",
        format!("PSNR@{} dB", r.psnr_size),
        "CLIP cos"
    ));
    if text {
        out.push_str(&format!(
            " {:>11} {:>10}",
            "CLIP score",
            format!("R@1/{}", r.candidates.unwrap_or(0))
        ));
    }
    out.push('\n');
    for row in &r.rows {
        out.push_str(&format!(
            "{:<24} {:>12.5} {:>12.2} {:>10.4}",
            row.name, row.latent_mse, row.psnr_db, row.clip_cos
        ));
        if let (Some(s), Some(p)) = (row.clip_score, row.r_precision) {
            out.push_str(&format!(" {s:>11.2} {p:>10.3}"));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_metrics_count_strict_wins() {
        let sims = vec![
            vec![0.9, 0.1, 0.2],
            vec![0.5, 0.4, 0.1],
            vec![0.3, 0.3, 0.3],
        ];
        let (score, r) = text_metrics(&sims, 3, 0);
        assert!((score - 100.0 * (0.9 + 0.4 + 0.3) / 3.0).abs() < 1e-4);
        assert!((r - 1.0 / 3.0).abs() < 1e-9, "ties do not count");
        assert!((psnr(0.01) - 20.0).abs() < 1e-9);
    }
}
