//! The toy CLIP: a small CLIP trained here, contrastively from random
//! weights, on faces of the default generator captioned by the pixel
//! judges. Real CLIP weights cannot be had on these machines; this model's
//! text does mean something about its images (a few attributes), and it
//! has a modality gap of its own, so what the mapper makes of text can be
//! measured on it (`cargo run --release --example toy_clip`).
//!
//! The directory it writes loads as `[clip] model = DIR` (transformers
//! layout), and holds `attributes.json` (the judges' tertiles over the
//! faces of seeds `0..stats_faces`, as `generate --seed S` renders them),
//! `captions.txt` (typical prompts of its caption grammar) and
//! `toy_clip.json` (how it was made and how well it reads its attributes).

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::Rng;
use serde::Serialize;

use super::captions::{self, NEUTRAL};
use super::judges::{self, Attribute, AttributeStats, Bin, Judged};
use crate::clip::contrastive::{self, ContrastiveConfig};
use crate::clip::{config, Clip, Preprocessor};
use crate::error::Result;
use crate::generator::{z_for_seeds, Generator, NoiseMode};

/// The toy's architecture: 32 px images in 8 px patches (16 tokens), width
/// 128, 4 vision and 3 text layers, 32-token captions, a 128-d joint space.
/// The vocabulary is CLIP's (the tokenizer is), so the text embedding table
/// is most of its 8.5M parameters.
pub const CONFIG_JSON: &str = r#"{
  "projection_dim": 128,
  "text_config": {"hidden_size": 128, "intermediate_size": 512,
                  "num_hidden_layers": 3, "num_attention_heads": 4,
                  "max_position_embeddings": 32},
  "vision_config": {"hidden_size": 128, "intermediate_size": 512,
                    "num_hidden_layers": 4, "num_attention_heads": 4,
                    "image_size": 32, "patch_size": 8}
}"#;

/// How much of everything: the full toy, or `--small` for the tests.
#[derive(Debug, Clone, Serialize)]
pub struct ToyPlan {
    /// Faces of seeds `0..stats_faces` at the configured truncation: the
    /// tertiles, and training faces.
    pub stats_faces: usize,
    /// More training faces, of other seeds and truncations from 0.5 to 1.
    pub extra_faces: usize,
    /// Held-out faces (other seeds, configured truncation) for the report.
    pub heldout_faces: usize,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// Probability that a caption leaves a named attribute unsaid.
    pub caption_drop: f64,
}

impl ToyPlan {
    pub fn full() -> Self {
        Self {
            stats_faces: 1024,
            extra_faces: 1536,
            heldout_faces: 512,
            steps: 2500,
            batch: 128,
            lr: 5e-4,
            caption_drop: 0.2,
        }
    }

    pub fn small() -> Self {
        Self {
            stats_faces: 320,
            extra_faces: 0,
            heldout_faces: 64,
            steps: 400,
            batch: 64,
            lr: 1e-3,
            caption_drop: 0.2,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GapReport {
    /// Mean cosine of each held-out face with its own canonical caption.
    pub matched_cos: f64,
    /// Mean cosine of a face with the other faces' captions.
    pub unmatched_cos: f64,
    /// `|mu_text - mu_image|` over the held-out faces and their captions.
    pub mean_gap: f64,
    /// Mean pairwise cosine among the images, and among the captions.
    pub image_image_cos: f64,
    pub text_text_cos: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToyReport {
    pub seed: u64,
    pub plan: ToyPlan,
    pub generator: String,
    pub truncation: f64,
    pub render_s: f64,
    pub train_s: f64,
    pub first_loss: f32,
    pub last_loss: f32,
    /// Zero-shot accuracy on the held-out faces, per attribute in
    /// [`Attribute::ALL`]'s order: the nearest of "low / a photo of a face /
    /// high" names the bin (chance 1/3).
    pub zero_shot: [f64; 3],
    pub gap: GapReport,
}

/// Faces rendered for the toy: CLIP's input and the judges.
struct Faces {
    pixels: Tensor,
    judged: Vec<Judged>,
}

/// The toy's training faces, kept for building a mapper on them without
/// rendering again (the tests do): each face's w and CLIP input.
pub struct TrainingFaces {
    /// `[n, w_dim]`
    pub w: Tensor,
    /// `[n, 3, S, S]`, CLIP-normalised.
    pub pixels: Tensor,
}

/// Render `w` (`[n, w_dim]`) in batches: preprocessed pixels and judges.
fn render(
    g: &dyn Generator,
    w: &Tensor,
    pre: &Preprocessor,
    batch: usize,
    done: &mut dyn FnMut(usize),
) -> Result<Faces> {
    let n = w.dim(0)?;
    let mut pixels = Vec::new();
    let mut judged = Vec::with_capacity(n);
    for start in (0..n).step_by(batch) {
        let len = batch.min(n - start);
        let wplus = g.broadcast_w(&w.narrow(0, start, len)?)?;
        let img = g.synthesize(&wplus, NoiseMode::Fixed)?;
        crate::generator::check_finite(&img, "a generated face")?;
        judged.extend(judges::judge(&img)?);
        pixels.push(pre.from_generator(&img)?.to_device(&Device::Cpu)?);
        done(start + len);
    }
    Ok(Faces {
        pixels: Tensor::cat(&pixels, 0)?,
        judged,
    })
}

/// `w` of seeds `start..start + n` at truncation `psi`, as `generate` draws them.
fn seed_w(g: &dyn Generator, start: u64, n: usize, psi: f64) -> Result<Tensor> {
    g.truncate(&g.map(&z_for_seeds(start, n, g.z_dim(), g.device())?)?, psi)
}

/// Build the toy CLIP into `out`. `truncation` is the configured one (what
/// `generate` and `imagine` use); `batch` images per generator call.
pub fn build(
    g: &dyn Generator,
    truncation: f64,
    batch: usize,
    out: &Path,
    plan: &ToyPlan,
    seed: u64,
    log: &mut dyn FnMut(&str),
) -> Result<(ToyReport, TrainingFaces)> {
    let spec = config::parse(CONFIG_JSON, "the toy CLIP's config")?;
    let pre = Preprocessor {
        resize: spec.image_size,
        crop: spec.image_size,
        ..Default::default()
    };
    let clock = Instant::now();
    let total = plan.stats_faces + plan.extra_faces + plan.heldout_faces;
    let mut shown = 0usize;
    let mut tick = |base: usize, done: usize, log: &mut dyn FnMut(&str)| {
        let now = base + done;
        if now >= shown + 64 || now == total {
            shown = now;
            log(&format!(
                "rendered {now}/{total} faces ({:.0} s)",
                clock.elapsed().as_secs_f64()
            ));
        }
    };
    // The tertiles' faces: seeds 0.. as `generate --seed S` renders them.
    let stats_w = seed_w(g, 0, plan.stats_faces, truncation)?;
    let stats = render(g, &stats_w, &pre, batch, &mut |d| tick(0, d, log))?;
    let attributes = AttributeStats::of(g.id(), truncation, &stats.judged)?;
    // More variety for training: other seeds, truncations 0.5 to 1.
    let mut train_pixels = vec![stats.pixels];
    let mut train_judged = stats.judged;
    let mut train_w = vec![stats_w];
    if plan.extra_faces > 0 {
        let mut r = crate::rng::stream(seed, "toy-truncation");
        let psi: Vec<f32> = (0..plan.extra_faces)
            .map(|_| r.random_range(0.5..1.0))
            .collect();
        let raw = seed_w(g, 1_000_000, plan.extra_faces, 1.0)?;
        let psi = Tensor::from_vec(psi, (plan.extra_faces, 1), g.device())?;
        let w = raw
            .broadcast_sub(g.w_avg())?
            .broadcast_mul(&psi)?
            .broadcast_add(g.w_avg())?;
        let extra = render(g, &w, &pre, batch, &mut |d| tick(plan.stats_faces, d, log))?;
        train_pixels.push(extra.pixels);
        train_judged.extend(extra.judged);
        train_w.push(w);
    }
    let held_w = seed_w(g, 2_000_000, plan.heldout_faces, truncation)?;
    let held = render(g, &held_w, &pre, batch, &mut |d| {
        tick(plan.stats_faces + plan.extra_faces, d, log)
    })?;
    let render_s = clock.elapsed().as_secs_f64();
    let pixels = Tensor::cat(&train_pixels, 0)?;
    let bins: Vec<[Bin; 3]> = train_judged.iter().map(|j| attributes.bins(j)).collect();

    let clock = Instant::now();
    let c = ContrastiveConfig {
        steps: plan.steps,
        batch: plan.batch,
        lr: plan.lr,
        warmup: (plan.steps / 20).max(1),
        weight_decay: 0.05,
        seed,
    };
    let drop = plan.caption_drop;
    let mut caption = |i: usize, step: usize| {
        let mut r = crate::rng::stream(seed, &format!("caption-{step}-{i}"));
        captions::caption(bins[i], drop, &mut r)
    };
    let every = (plan.steps / 20).max(1);
    let (varmap, losses) =
        contrastive::train(&spec, &pixels, &mut caption, &c, &mut |step, loss| {
            if (step + 1) % every == 0 {
                log(&format!(
                    "step {}/{}: loss {loss:.3} ({:.0} s)",
                    step + 1,
                    plan.steps,
                    clock.elapsed().as_secs_f64()
                ));
            }
        })?;
    let train_s = clock.elapsed().as_secs_f64();
    contrastive::save(out, CONFIG_JSON, &varmap, spec.image_size)?;
    attributes.write(&out.join("attributes.json"))?;
    let typical = captions::typical(64, seed);
    crate::fsutil::write_atomic(
        &out.join("captions.txt"),
        (typical.join("\n") + "\n").as_bytes(),
    )?;

    // What the saved model reads, through the ordinary loader.
    let clip = Clip::from_dir(out, &Device::Cpu)?;
    let e_img = clip.encode_pixels(&held.pixels)?;
    let held_bins: Vec<[Bin; 3]> = held.judged.iter().map(|j| attributes.bins(j)).collect();
    let zero_shot = zero_shot(&clip, &e_img, &held_bins)?;
    let texts: Vec<String> = held_bins.iter().map(|b| captions::canonical(*b)).collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (e_txt, _) = clip.encode_text(&refs)?;
    let gap = gap(&e_img, &e_txt)?;
    let report = ToyReport {
        seed,
        plan: plan.clone(),
        generator: g.id().to_string(),
        truncation,
        render_s,
        train_s,
        first_loss: losses[0],
        last_loss: *losses.last().expect("at least one step"),
        zero_shot,
        gap,
    };
    let text = serde_json::to_string_pretty(&report)
        .map_err(|e| crate::error::Error::invalid(e.to_string()))?;
    crate::fsutil::write_atomic(&out.join("toy_clip.json"), text.as_bytes())?;
    let faces = TrainingFaces {
        w: Tensor::cat(&train_w, 0)?,
        pixels,
    };
    Ok((report, faces))
}

/// Zero-shot accuracy per attribute: the nearest of its low prompt, the
/// neutral one and its high prompt.
pub fn zero_shot(clip: &Clip, e_img: &Tensor, bins: &[[Bin; 3]]) -> Result<[f64; 3]> {
    let mut acc = [0f64; 3];
    for a in Attribute::ALL {
        let phrases = [a.prompt(Bin::Low), NEUTRAL, a.prompt(Bin::High)];
        let (t, _) = clip.encode_text(&phrases)?;
        let sims = e_img.matmul(&t.t()?)?.to_vec2::<f32>()?;
        let right = sims
            .iter()
            .zip(bins)
            .filter(|(s, b)| {
                let best = (0..3)
                    .max_by(|&x, &y| s[x].total_cmp(&s[y]))
                    .expect("three");
                Bin::ALL[best] == b[a.index()]
            })
            .count();
        acc[a.index()] = right as f64 / bins.len() as f64;
    }
    Ok(acc)
}

fn mean_offdiag(m: &[Vec<f32>]) -> f64 {
    let n = m.len();
    let mut sum = 0.0;
    for (i, row) in m.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            if i != j {
                sum += *v as f64;
            }
        }
    }
    sum / (n * (n - 1)).max(1) as f64
}

/// The modality gap of matched embeddings `[n, d]` (row i of each is one pair).
pub fn gap(e_img: &Tensor, e_txt: &Tensor) -> Result<GapReport> {
    let cross = e_img.matmul(&e_txt.t()?)?.to_vec2::<f32>()?;
    let n = cross.len();
    let matched = (0..n).map(|i| cross[i][i] as f64).sum::<f64>() / n as f64;
    let mu = (e_img.mean(0)? - e_txt.mean(0)?)?;
    let mean_gap = mu.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()? as f64;
    let ii = e_img.matmul(&e_img.t()?)?.to_vec2::<f32>()?;
    let tt = e_txt.matmul(&e_txt.t()?)?.to_vec2::<f32>()?;
    Ok(GapReport {
        matched_cos: matched,
        unmatched_cos: mean_offdiag(&cross),
        mean_gap,
        image_image_cos: mean_offdiag(&ii),
        text_text_cos: mean_offdiag(&tt),
    })
}
