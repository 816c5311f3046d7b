//! Adherence, measured with the pixel judges: what share of a prompt's
//! faces land in the bin it names, how far apart the low and high prompts'
//! faces are, and whether an edit moves its attribute the asked way and
//! leaves the others alone.
//!
//! Methods compared on the same seeds: a pipeline's mapper (any of them:
//! the first-use fit, the refined MLP, each gap treatment, always-w_avg
//! with residuals) and retrieval (the latents of the bank faces whose CLIP
//! embeddings are nearest the text's, mixed with seeded Dirichlet weights).

use candle_core::{DType, Device, Tensor};
use rand_distr::Distribution;
use serde::Serialize;

use super::captions;
use super::judges::{judge, Attribute, AttributeStats, Bin, Judged};
use crate::error::Result;
use crate::generator::z_for_seeds;
use crate::mapper::Mapper;
use crate::pipeline::{EditRequest, ImagineRequest, Layers, Pipeline};

/// How a prompt becomes latents.
pub enum Method {
    /// `imagine` with this mapper in the pipeline (boxed: a mapper is large
    /// beside the other variant).
    Mapper { name: String, mapper: Box<Mapper> },
    /// `imagine` with this mapper, then quality mode's `steps` refinement
    /// steps towards the prompt. `range`: the farthest style of any refined
    /// latent from `w_avg`, over the generator's farthest sample (so far).
    Refined {
        mapper: Box<Mapper>,
        steps: usize,
        range: f64,
    },
    /// The `k` nearest bank latents, mixed with Dirichlet(1) weights drawn
    /// by each seed, or (with `residuals`) their mean plus the residual a
    /// mapper's `imagine` draws for the seed, at its temperature: the
    /// same variety as that mapper, so adherence is compared at equal
    /// variety (the Dirichlet mix gives nearly the same face every seed).
    Retrieval {
        k: usize,
        /// L2-normalised CLIP image embeddings `[n, d]` of the bank.
        e: Tensor,
        /// Their w `[n, w_dim]`.
        w: Tensor,
        /// A mapper's residuals `[bank, w_dim]` and sample temperature.
        residuals: Option<(Tensor, f64)>,
    },
}

impl Method {
    pub fn name(&self) -> String {
        match self {
            Method::Mapper { name, .. } => name.clone(),
            Method::Refined { steps, .. } => format!("this mapper, refined {steps} steps"),
            Method::Retrieval {
                k, residuals: None, ..
            } => format!("retrieval (k = {k})"),
            Method::Retrieval { k, .. } => format!("retrieval + residuals (k = {k})"),
        }
    }
}

/// Faces of `prompt` for seeds `first..first + n` (`imagine --seed s` for
/// each s), `[n, 3, R, R]`.
pub fn faces(
    p: &mut Pipeline,
    m: &mut Method,
    prompt: &str,
    first: u64,
    n: usize,
) -> Result<Tensor> {
    match m {
        Method::Refined {
            mapper,
            steps,
            range,
        } => {
            let (latents, _) = imagine_blocks(p, mapper, prompt, first, n)?;
            // Four at a time: a step keeps every layer's activations of
            // the 1024 px generator for the backward pass (GBs per image).
            let radius = p.latent_radius()?;
            let mut images = Vec::new();
            for start in (0..n).step_by(4) {
                let len = 4.min(n - start);
                let prompts = vec![prompt; len];
                let r = p.refine(&latents.narrow(0, start, len)?, &prompts, *steps, |_, _| {})?;
                let far = crate::variety::farthest_style(&r.latents, p.generator.w_avg())?;
                *range = range.max(far / radius);
                images.push(r.images);
            }
            Ok(Tensor::cat(&images, 0)?)
        }
        Method::Mapper { mapper, .. } => Ok(imagine_blocks(p, mapper, prompt, first, n)?.1),
        Method::Retrieval { k, e, w, residuals } => {
            let (t, _) = p.clip.encode_text(&[prompt])?;
            let sims = e
                .matmul(&t.to_device(e.device())?.t()?)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let mut order: Vec<usize> = (0..sims.len()).collect();
            order.sort_by(|a, b| sims[*b].total_cmp(&sims[*a]));
            order.truncate((*k).max(1));
            let idx = Tensor::from_vec(
                order.iter().map(|&i| i as u32).collect::<Vec<_>>(),
                order.len(),
                w.device(),
            )?;
            let near = w.contiguous()?.index_select(&idx, 0)?; // [k, w_dim]
            if let Some((res, temperature)) = residuals {
                let seeds: Vec<u64> = (first..first + n as u64).collect();
                let drawn = crate::mapper::draw_residuals(res, &seeds)?;
                let w = (drawn.to_device(near.device())? * *temperature)?
                    .broadcast_add(&near.mean_keepdim(0)?)?
                    .to_device(p.generator.device())?;
                return p.render(&p.generator.broadcast_w(&w)?);
            }
            let mut rows = Vec::with_capacity(n);
            for seed in first..first + n as u64 {
                let mut r = crate::rng::stream(seed, "retrieval-mix");
                let g: Vec<f32> = (0..order.len())
                    .map(|_| rand_distr::Exp1.sample(&mut r))
                    .collect();
                let sum: f32 = g.iter().sum();
                let a = Tensor::from_vec(
                    g.iter().map(|x| x / sum).collect::<Vec<_>>(),
                    (1, order.len()),
                    w.device(),
                )?;
                rows.push(a.matmul(&near)?);
            }
            let w = Tensor::cat(&rows, 0)?.to_device(p.generator.device())?;
            p.render(&p.generator.broadcast_w(&w)?)
        }
    }
}

/// `imagine` with `mapper` in the pipeline for seeds `first..first + n`:
/// latents and images.
fn imagine_blocks(
    p: &mut Pipeline,
    mapper: &mut Box<Mapper>,
    prompt: &str,
    first: u64,
    n: usize,
) -> Result<(Tensor, Tensor)> {
    // Image k of `imagine --seed s -n n` is the image of seed s + k
    // alone, so a block of seeds is one request.
    std::mem::swap(&mut p.mapper, mapper);
    let mut lat = Vec::new();
    let mut out = Vec::new();
    let mut result = Ok(());
    for start in (0..n).step_by(crate::pipeline::MAX_COUNT) {
        let count = crate::pipeline::MAX_COUNT.min(n - start);
        match p.imagine(&[ImagineRequest {
            prompt: prompt.to_string(),
            count,
            seed: first + start as u64,
            truncation: None,
            candidates: count,
        }]) {
            Ok(mut r) => {
                let r = r.remove(0);
                lat.push(r.latents);
                out.push(r.images);
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    // The mapper goes back whatever happened.
    std::mem::swap(&mut p.mapper, mapper);
    result?;
    Ok((Tensor::cat(&lat, 0)?, Tensor::cat(&out, 0)?))
}

/// One prompt's faces, judged.
#[derive(Debug, Clone, Serialize)]
pub struct PromptResult {
    pub prompt: String,
    /// The bins it names (the others are `middle`, unasked).
    pub asked: Vec<(Attribute, Bin)>,
    /// Share of faces in every asked bin.
    pub adherence: f64,
    /// Mean judge values, in [`Attribute::ALL`]'s order.
    pub mean: [f64; 3],
    /// How different its faces are from each other: [`variety`].
    pub variety: f64,
}

/// A method's text adherence.
#[derive(Debug, Clone, Serialize)]
pub struct TextReport {
    pub method: String,
    /// Mean adherence of the six single-attribute prompts (chance 1/3).
    pub single_adherence: f64,
    /// `(mean of the high prompt - mean of the low one) / sd over random
    /// faces`, per attribute.
    pub separation: [f64; 3],
    /// Mean adherence of the two-attribute prompts (chance 1/9).
    pub pair_adherence: f64,
    /// Mean [`variety`] of the single-attribute prompts' faces.
    pub variety: f64,
    /// Seeds `0..faces_per_prompt` for every prompt.
    pub faces_per_prompt: usize,
    pub single: Vec<PromptResult>,
    pub pairs: Vec<PromptResult>,
}

/// The single-attribute prompts: each attribute's low and high canonical phrase.
pub fn single_prompts() -> Vec<(String, Vec<(Attribute, Bin)>)> {
    let mut out = Vec::new();
    for a in Attribute::ALL {
        for b in [Bin::Low, Bin::High] {
            out.push((a.prompt(b).to_string(), vec![(a, b)]));
        }
    }
    out
}

/// Two-attribute prompts: every pair of attributes, low and high of each,
/// in the canonical combined words.
pub fn pair_prompts() -> Vec<(String, Vec<(Attribute, Bin)>)> {
    let mut out = Vec::new();
    let all = Attribute::ALL;
    for i in 0..3 {
        for j in i + 1..3 {
            for bi in [Bin::Low, Bin::High] {
                for bj in [Bin::Low, Bin::High] {
                    let mut bins = [Bin::Middle; 3];
                    bins[i] = bi;
                    bins[j] = bj;
                    out.push((captions::canonical(bins), vec![(all[i], bi), (all[j], bj)]));
                }
            }
        }
    }
    out
}

/// Prompts in other words than the canonical ones (synonyms), for choosing
/// a method's knobs (retrieval's k) without touching the test prompts.
pub fn heldout_prompts() -> Vec<(String, Vec<(Attribute, Bin)>)> {
    let mut out = Vec::new();
    for a in Attribute::ALL {
        for b in [Bin::Low, Bin::High] {
            let w = captions::synonyms(a, b)[1];
            let text = match a {
                Attribute::Brightness => format!("a {w} picture of a face"),
                Attribute::Warmth => format!("a face with a {w} backdrop"),
                Attribute::Colourfulness => format!("a {w} face"),
            };
            out.push((text, vec![(a, b)]));
        }
    }
    out
}

/// The faces of one prompt for seeds `first..first + n`, judged against
/// the bins it asks.
pub fn prompt_adherence(
    p: &mut Pipeline,
    m: &mut Method,
    stats: &AttributeStats,
    prompt: &str,
    asked: &[(Attribute, Bin)],
    first: u64,
    n: usize,
) -> Result<PromptResult> {
    let images = faces(p, m, prompt, first, n)?;
    let judged = judge(&images)?;
    let hits = judged
        .iter()
        .filter(|j| {
            let bins = stats.bins(j);
            asked.iter().all(|(a, b)| bins[a.index()] == *b)
        })
        .count();
    Ok(PromptResult {
        prompt: prompt.to_string(),
        asked: asked.to_vec(),
        adherence: hits as f64 / judged.len() as f64,
        mean: mean_judged(&judged),
        variety: variety(&images)?,
    })
}

/// Mean pairwise RMS difference of faces `[n, 3, R, R]` area-resized to
/// 64x64, RGB in [0, 1]: 0 when a prompt gives the same face every time.
/// A method can buy adherence by giving every seed the same face; this
/// says what it gave up.
pub fn variety(images: &Tensor) -> Result<f64> {
    let (n, _, h, _) = images.dims4()?;
    let x = ((images.to_dtype(DType::F32)? + 1.0)? * 0.5)?.clamp(0f32, 1f32)?;
    let x = x.avg_pool2d((h / 64).max(1))?.flatten_from(1)?;
    let v = x.to_vec2::<f32>()?;
    let (mut sum, mut pairs) = (0f64, 0usize);
    for i in 0..n {
        for j in i + 1..n {
            let d: f64 = v[i]
                .iter()
                .zip(&v[j])
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum::<f64>()
                / v[i].len() as f64;
            sum += d.sqrt();
            pairs += 1;
        }
    }
    Ok(sum / pairs.max(1) as f64)
}

fn mean_judged(j: &[Judged]) -> [f64; 3] {
    [0, 1, 2].map(|a| j.iter().map(|x| x[a] as f64).sum::<f64>() / j.len().max(1) as f64)
}

/// Adherence of `m` on the single and (with `pairs`) two-attribute prompts,
/// `faces` seeds each (seeds `0..faces`, the same for every prompt).
pub fn text_adherence(
    p: &mut Pipeline,
    m: &mut Method,
    stats: &AttributeStats,
    faces: usize,
    pairs: bool,
) -> Result<TextReport> {
    let single = single_prompts()
        .iter()
        .map(|(t, asked)| prompt_adherence(p, m, stats, t, asked, 0, faces))
        .collect::<Result<Vec<_>>>()?;
    let pair = if pairs {
        pair_prompts()
            .iter()
            .map(|(t, asked)| prompt_adherence(p, m, stats, t, asked, 0, faces))
            .collect::<Result<Vec<_>>>()?
    } else {
        Vec::new()
    };
    let mean =
        |r: &[PromptResult]| r.iter().map(|x| x.adherence).sum::<f64>() / r.len().max(1) as f64;
    let separation = [0, 1, 2].map(|a| {
        let (low, high) = (&single[2 * a], &single[2 * a + 1]);
        (high.mean[a] - low.mean[a]) / stats.tertiles[a].sd as f64
    });
    Ok(TextReport {
        method: m.name(),
        faces_per_prompt: faces,
        single_adherence: mean(&single),
        variety: single.iter().map(|x| x.variety).sum::<f64>() / single.len().max(1) as f64,
        pair_adherence: mean(&pair),
        single,
        pairs: pair,
        separation,
    })
}

/// Mean single-prompt adherence on [`heldout_prompts`] (for choosing knobs).
pub fn heldout_adherence(
    p: &mut Pipeline,
    m: &mut Method,
    stats: &AttributeStats,
    faces: usize,
) -> Result<f64> {
    let mut sum = 0.0;
    let prompts = heldout_prompts();
    for (t, asked) in &prompts {
        sum += prompt_adherence(p, m, stats, t, asked, 1000, faces)?.adherence;
    }
    Ok(sum / prompts.len() as f64)
}

/// The edits measured: for each attribute, the instruction that should
/// raise it and the one that should lower it.
pub const EDITS: [(Attribute, &str, &str); 3] = [
    (Attribute::Brightness, "make it brighter", "make it darker"),
    (Attribute::Warmth, "warmer background", "cooler background"),
    (Attribute::Colourfulness, "more colourful", "paler"),
];

#[derive(Debug, Clone, Serialize)]
pub struct EditResult {
    pub instruction: String,
    pub attribute: Attribute,
    /// +1: should raise the attribute, -1: lower it.
    pub direction: i8,
    /// Share of starts moved the asked way.
    pub moved_share: f64,
    /// Mean move in the asked direction, in judge sds.
    pub mean_move_sd: f64,
    /// Mean |move| of the other two attributes, in their sds.
    pub others_move_sd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct EditReport {
    pub starts: usize,
    pub strength: f64,
    pub edits: Vec<EditResult>,
    pub moved_share: f64,
    pub mean_move_sd: f64,
    pub others_move_sd: f64,
}

/// Edit adherence of the pipeline's mapper from `starts` random faces
/// (seeds 5000.. at the generator's truncation `psi`, as `generate`).
pub fn edit_adherence(
    p: &Pipeline,
    stats: &AttributeStats,
    starts: usize,
    psi: f64,
    strength: f64,
) -> Result<EditReport> {
    let g = &p.generator;
    let z = z_for_seeds(5000, starts, g.z_dim(), g.device())?;
    let wplus = g.broadcast_w(&g.truncate(&g.map(&z)?, psi)?)?;
    let before = judge(&p.render(&wplus)?)?;
    let mut edits = Vec::new();
    for (a, up, down) in EDITS {
        for (instruction, direction) in [(up, 1i8), (down, -1i8)] {
            let reqs: Vec<EditRequest> = (0..starts)
                .map(|i| {
                    Ok(EditRequest {
                        latent: wplus.get(i)?,
                        instruction: instruction.to_string(),
                        strength,
                        layers: Layers::All,
                    })
                })
                .collect::<Result<_>>()?;
            let out = p.edit(&reqs)?;
            let images = Tensor::cat(&out.iter().map(|r| r.images.clone()).collect::<Vec<_>>(), 0)?;
            let after = judge(&images)?;
            let mut moved = 0usize;
            let (mut along, mut others) = (0f64, 0f64);
            for (b, af) in before.iter().zip(&after) {
                let (sb, sa) = (stats.in_sds(b), stats.in_sds(af));
                let d = (sa[a.index()] - sb[a.index()]) as f64 * direction as f64;
                if d > 0.0 {
                    moved += 1;
                }
                along += d;
                for o in Attribute::ALL.iter().filter(|o| **o != a) {
                    others += ((sa[o.index()] - sb[o.index()]) as f64).abs() / 2.0;
                }
            }
            edits.push(EditResult {
                instruction: instruction.to_string(),
                attribute: a,
                direction,
                moved_share: moved as f64 / starts as f64,
                mean_move_sd: along / starts as f64,
                others_move_sd: others / starts as f64,
            });
        }
    }
    let mean = |f: fn(&EditResult) -> f64| edits.iter().map(f).sum::<f64>() / edits.len() as f64;
    Ok(EditReport {
        starts,
        strength,
        moved_share: mean(|e| e.moved_share),
        mean_move_sd: mean(|e| e.mean_move_sd),
        others_move_sd: mean(|e| e.others_move_sd),
        edits,
    })
}

/// A mapper that predicts `w_avg` for every input but keeps `like`'s
/// residual draws, given as `w - w_avg` of the bank (`[n, w_dim]`): the
/// chance level of text adherence, with the same variety as the others.
pub fn always_w_avg(like: &Mapper, spread: &Tensor, dev: &Device) -> Result<Mapper> {
    let (w_dim, d) = (like.meta.w_dim, like.meta.clip_dim);
    let vars = [
        (
            "linear.weight",
            Tensor::zeros((w_dim, d), DType::F32, &Device::Cpu)?,
        ),
        (
            "linear.bias",
            Tensor::zeros(w_dim, DType::F32, &Device::Cpu)?,
        ),
        // The weight is zero, so every shift is; a zero clamp would divide
        // by zero.
        ("max_shift", Tensor::new(&[1f32], &Device::Cpu)?),
        ("text_shift", Tensor::zeros(d, DType::F32, &Device::Cpu)?),
        ("residuals", spread.to_device(&Device::Cpu)?),
    ];
    let varmap = crate::mapper::varmap_of(vars, dev)?;
    let mut meta = like.meta.clone();
    meta.config = crate::mapper::MapperConfig {
        kind: crate::mapper::MapperKind::Linear,
        depth: 0,
        width: 0,
        bank: spread.dim(0)?,
        ..crate::mapper::MapperConfig::default()
    };
    Mapper::init(&varmap, meta, like.w_avg(), dev)
}

/// A table of text adherence, one row per method.
pub fn text_table(rows: &[TextReport]) -> String {
    let mut s = String::from(
        "method                                   single  sep(bright) sep(warm) sep(colour)  pairs  variety\n",
    );
    for r in rows {
        // "-" where the two-attribute prompts were skipped.
        let pairs = if r.pairs.is_empty() {
            "-".to_string()
        } else {
            format!("{:.3}", r.pair_adherence)
        };
        s += &format!(
            "{:<40} {:>6.3} {:>11.2} {:>9.2} {:>11.2} {:>6} {:>8.3}\n",
            r.method,
            r.single_adherence,
            r.separation[0],
            r.separation[1],
            r.separation[2],
            pairs,
            r.variety
        );
    }
    s
}

pub fn edit_table(r: &EditReport) -> String {
    let mut s = format!(
        "edit (strength {}, {} starts)          moved  move(sd)  others(sd)\n",
        r.strength, r.starts
    );
    for e in &r.edits {
        s += &format!(
            "{:<36} {:>6.3} {:>9.2} {:>11.2}\n",
            e.instruction, e.moved_share, e.mean_move_sd, e.others_move_sd
        );
    }
    s += &format!(
        "{:<36} {:>6.3} {:>9.2} {:>11.2}\n",
        "mean", r.moved_share, r.mean_move_sd, r.others_move_sd
    );
    s
}
