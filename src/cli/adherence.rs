//! `clip2gan eval-mapper --adherence`: what text and edits do to faces,
//! judged on pixels (`clip2gan::adherence`), for the mapper and, with
//! `--compare`, beside the baselines and variants built from the pair
//! bank: always-w_avg with residuals (chance), retrieval, the closed-form
//! fit with and without the text shift, and the refined MLP at three
//! LAFITE noise levels.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use clap::Args;
use clip2gan::adherence::measure::{self, EditReport, Method, TextReport};
use clip2gan::adherence::AttributeStats;
use clip2gan::clip::Clip;
use clip2gan::config::Config;
use clip2gan::error::{Error, Result};
use clip2gan::mapper::{Compat, Mapper};
use clip2gan::pipeline::Pipeline;
use clip2gan::train::fit::make_mapper;
use clip2gan::train::refine::Refinement;
use serde::Serialize;

#[derive(Args, Debug, Clone)]
pub struct AdherenceArgs {
    /// Measure text and edit adherence (see `clip2gan::adherence`).
    #[arg(long)]
    pub adherence: bool,
    /// The judges' tertiles (default: attributes.json in the [clip] model
    /// directory, which the toy CLIP example writes).
    #[arg(long)]
    pub attributes: Option<PathBuf>,
    /// Faces per prompt (seeds 0..N).
    #[arg(long, default_value_t = 16)]
    pub faces: usize,
    /// Random starts per edit.
    #[arg(long, default_value_t = 16)]
    pub starts: usize,
    /// Edit strength.
    #[arg(long, default_value_t = clip2gan::pipeline::limits::DEFAULT_STRENGTH)]
    pub strength: f64,
    /// Also the baselines and variants built from the first-use pair bank.
    #[arg(long)]
    pub compare: bool,
    /// With --compare: pairs of the bank to build them from (default: all).
    #[arg(long)]
    pub bank: Option<usize>,
    /// Skip the two-attribute prompts.
    #[arg(long)]
    pub no_pairs: bool,
    /// The learning curve instead: first use's final mapper (the fit, then
    /// the refined MLP) and retrieval, built from the first 512, 1,024,
    /// 2,048, ... pairs of the bank, up to --bank or all of it.
    #[arg(long)]
    pub curve: bool,
    /// Quality mode: also this mapper's faces refined by each of these
    /// step counts (e.g. 0,4,8,16), with how far the refined latents went
    /// (farthest style from w_avg over the generator's farthest sample).
    #[arg(long, value_delimiter = ',')]
    pub refine: Vec<usize>,
}

#[derive(Debug, Serialize)]
struct AdherenceReport {
    mapper: String,
    clip_model: String,
    attributes: AttributeStats,
    bank: Option<usize>,
    retrieval_k: Option<Vec<(usize, f64)>>,
    /// Refinement steps and the range their latents reached.
    refined_range: Vec<(usize, f64)>,
    text: Vec<TextReport>,
    edits: EditReport,
}

/// Run the adherence measurements for the mapper at `path`.
pub fn run(cfg: &Config, path: &Path, json: Option<&Path>, a: &AdherenceArgs) -> Result<()> {
    let json = json.map(Path::to_path_buf).unwrap_or_else(|| {
        let mut s = path.as_os_str().to_owned();
        s.push(".adherence.json");
        PathBuf::from(s)
    });
    clip2gan::fsutil::check_writable(&json)?;
    let attributes_path = match &a.attributes {
        Some(p) => p.clone(),
        None => {
            let dir = PathBuf::from(&cfg.clip.model);
            if !dir.is_dir() {
                return Err(Error::invalid(format!(
                    "--adherence needs the judges' tertiles: pass --attributes FILE, or set [clip] model \
                     to a toy CLIP directory (`cargo run --release --example toy_clip -- DIR`); {:?} is not a directory",
                    cfg.clip.model
                )));
            }
            dir.join("attributes.json")
        }
    };
    let stats = AttributeStats::read(&attributes_path)?;
    let dev = clip2gan::device::select(&cfg.device)?;
    let g = cfg.open_generator(&dev, true)?;
    if stats.generator != g.id() {
        return Err(Error::invalid(format!(
            "{} holds tertiles of generator {:?}, the configured one is {:?}",
            attributes_path.display(),
            stats.generator,
            g.id()
        )));
    }
    let clip = Clip::load(&cfg.clip_files()?, &dev)?;
    let compat = Compat {
        clip_model: &cfg.clip.model,
        clip_dim: clip.embed_dim(),
        generator: g.id(),
        num_styles: g.num_styles(),
        w_dim: g.w_dim(),
    };
    let (mapper, warnings) = Mapper::load(path, &compat, &dev)?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    if a.curve {
        let mut p = Pipeline {
            clip,
            mapper,
            generator: g,
            settings: cfg.pipeline_setup().settings(),
        };
        let points = curve(cfg, &mut p, &stats, a)?;
        let body = serde_json::to_string_pretty(&CurveReport {
            clip_model: cfg.clip.model.clone(),
            faces_per_prompt: a.faces,
            points,
        })
        .map_err(|e| Error::invalid(e.to_string()))?;
        clip2gan::fsutil::write_atomic(&json, body.as_bytes())?;
        eprintln!("report written to {}", json.display());
        return Ok(());
    }
    let mut methods = Vec::new();
    let mut bank_size = None;
    let mut retrieval_bank = None;
    if a.compare {
        let plan = cfg.first_use()?.ok_or_else(|| {
            Error::invalid("--compare builds its variants from the first-use pair bank; set [mapper] build = true")
        })?;
        let pairs = plan.read_bank(&clip, g.as_ref(), a.bank.unwrap_or(usize::MAX))?;
        bank_size = Some(pairs.len());
        eprintln!("building the variants from {} pairs", pairs.len());
        let train = &plan.train;
        let closed = make_mapper(
            g.as_ref(),
            &clip,
            &plan.clip_model,
            train,
            &pairs,
            &plan.captions,
        )?;
        let w = pairs.w.narrow(1, 0, 1)?.squeeze(1)?;
        let spread = w.broadcast_sub(&g.w_avg().to_device(w.device())?)?;
        methods.push(Method::Mapper {
            name: "always w_avg (with residuals)".into(),
            mapper: Box::new(measure::always_w_avg(&closed.mapper, &spread, &dev)?),
        });
        retrieval_bank = Some((pairs.e.clone(), w, closed.mapper.residuals().cloned()));
        methods.push(Method::Mapper {
            name: "fit, no text shift".into(),
            mapper: Box::new(without_shift(
                &closed.varmap,
                &closed.mapper,
                g.w_avg(),
                &dev,
            )?),
        });
        for xi in [0.0, 0.33, 0.5] {
            let mut t = train.clone();
            t.refine.lafite_xi = xi;
            let mut r = Refinement::new(g.as_ref(), &clip, &plan.clip_model, &t, &pairs, &closed)?;
            while !r.done() {
                r.step(g.as_ref(), &clip)?;
            }
            let (mlp, _) = r.finish(g.as_ref())?;
            eprintln!("refined MLP at xi {xi} built");
            methods.push(Method::Mapper {
                name: format!("refined MLP, xi {xi}"),
                mapper: Box::new(mlp),
            });
        }
        methods.push(Method::Mapper {
            name: "fit, text shift (first use)".into(),
            mapper: Box::new(closed.mapper),
        });
    }
    // The pipeline holds the mapper being measured; it starts with a
    // placeholder and takes each method's mapper in turn.
    let placeholder = measure::always_w_avg(
        &mapper,
        &Tensor::zeros((1, g.w_dim()), DType::F32, &Device::Cpu)?,
        &dev,
    )?;
    for &steps in &a.refine {
        clip2gan::pipeline::limits::check_refine_steps(steps).map_err(Error::InvalidArgument)?;
        let (m, _) = Mapper::load(path, &compat, &dev)?;
        methods.push(Method::Refined {
            mapper: Box::new(m),
            steps,
            range: 0.0,
        });
    }
    methods.push(Method::Mapper {
        name: format!(
            "this mapper ({:?}, {})",
            mapper.meta.config.kind,
            path.display()
        ),
        mapper: Box::new(mapper),
    });
    let mut p = Pipeline {
        clip,
        mapper: placeholder,
        generator: g,
        settings: cfg.pipeline_setup().settings(),
    };
    // Retrieval's k, chosen on prompts in other words than the test's.
    let mut retrieval_k = None;
    if let Some((e, w, residuals)) = retrieval_bank {
        let mut scores = Vec::new();
        for k in [1, 8, 32, 128] {
            let mut m = Method::Retrieval {
                k,
                e: e.clone(),
                w: w.clone(),
                residuals: None,
            };
            let score = measure::heldout_adherence(&mut p, &mut m, &stats, 8)?;
            eprintln!("retrieval k = {k}: held-out adherence {score:.3}");
            scores.push((k, score));
        }
        let best = scores
            .iter()
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|s| s.0)
            .unwrap_or(8);
        if let Some(res) = residuals {
            methods.insert(
                1,
                Method::Retrieval {
                    k: best,
                    e: e.clone(),
                    w: w.clone(),
                    residuals: Some((res, p.settings.sample_temperature)),
                },
            );
        }
        methods.insert(
            1,
            Method::Retrieval {
                k: best,
                e,
                w,
                residuals: None,
            },
        );
        retrieval_k = Some(scores);
    }
    let mut text = Vec::new();
    for m in methods.iter_mut() {
        text.push(measure::text_adherence(
            &mut p,
            m,
            &stats,
            a.faces,
            !a.no_pairs,
        )?);
        eprintln!("measured {}", m.name());
    }
    let refined_range: Vec<(usize, f64)> = methods
        .iter()
        .filter_map(|m| match m {
            Method::Refined { steps, range, .. } => Some((*steps, *range)),
            _ => None,
        })
        .collect();
    for (steps, range) in &refined_range {
        eprintln!("refined {steps} steps: range {range:.3} (farthest style / generator's farthest sample)");
    }
    // Edits with the mapper itself (the last method).
    if let Some(Method::Mapper { mapper, .. }) = methods.last_mut() {
        std::mem::swap(mapper.as_mut(), &mut p.mapper);
    }
    let edits =
        measure::edit_adherence(&p, &stats, a.starts, cfg.generator.truncation, a.strength)?;
    print!("{}", measure::text_table(&text));
    print!("{}", measure::edit_table(&edits));
    let report = AdherenceReport {
        mapper: path.display().to_string(),
        clip_model: cfg.clip.model.clone(),
        attributes: stats,
        bank: bank_size,
        retrieval_k,
        refined_range,
        text,
        edits,
    };
    let body = serde_json::to_string_pretty(&report).map_err(|e| Error::invalid(e.to_string()))?;
    clip2gan::fsutil::write_atomic(&json, body.as_bytes())?;
    eprintln!("report written to {}", json.display());
    Ok(())
}

/// The closed-form mapper with its text shift set to zero (text embeddings
/// mapped as they are).
fn without_shift(
    varmap: &candle_nn::VarMap,
    like: &Mapper,
    w_avg: &Tensor,
    dev: &Device,
) -> Result<Mapper> {
    let vars: Vec<(String, Tensor)> = clip2gan::mapper::tensors_of(varmap)
        .into_iter()
        .map(|(name, t)| {
            if name == "text_shift" {
                Ok((name, t.zeros_like()?))
            } else {
                Ok((name, t))
            }
        })
        .collect::<Result<_>>()?;
    let varmap = clip2gan::mapper::varmap_of(vars, dev)?;
    Mapper::init(&varmap, like.meta.clone(), w_avg, dev)
}

#[derive(Debug, Serialize)]
struct CurveReport {
    clip_model: String,
    faces_per_prompt: usize,
    points: Vec<CurvePoint>,
}

/// One bank size: what first use's final mapper and retrieval do with it.
#[derive(Debug, Serialize)]
struct CurvePoint {
    pairs: usize,
    mapper: TextReport,
    retrieval: TextReport,
    /// Retrieval at the mapper's variety (its residual draws).
    retrieval_with_residuals: Option<TextReport>,
    /// Retrieval's k, chosen on the held-out prompts at this size.
    retrieval_k: usize,
}

/// The learning curve: for each bank prefix (512, doubling, up to
/// `--bank` or the whole bank), the configured first-use path's final
/// mapper and retrieval on the same prompts and seeds.
fn curve(
    cfg: &Config,
    p: &mut Pipeline,
    stats: &AttributeStats,
    a: &AdherenceArgs,
) -> Result<Vec<CurvePoint>> {
    let plan = cfg.first_use()?.ok_or_else(|| {
        Error::invalid(
            "--curve builds its mappers from the first-use pair bank; set [mapper] build = true",
        )
    })?;
    let all = plan.read_bank(&p.clip, p.generator.as_ref(), a.bank.unwrap_or(usize::MAX))?;
    let mut sizes = Vec::new();
    let mut n = 512;
    while n < all.len() {
        sizes.push(n);
        n *= 2;
    }
    sizes.push(all.len());
    println!(
        "pairs  first use: single pairs variety   retrieval: single pairs variety   retrieval + residuals"
    );
    let mut points = Vec::new();
    for n in sizes {
        let pairs = plan.read_bank(&p.clip, p.generator.as_ref(), n)?;
        let g = p.generator.as_ref();
        let closed = make_mapper(
            g,
            &p.clip,
            &plan.clip_model,
            &plan.train,
            &pairs,
            &plan.captions,
        )?;
        let mut r = Refinement::new(g, &p.clip, &plan.clip_model, &plan.train, &pairs, &closed)?;
        while !r.done() {
            r.step(g, &p.clip)?;
        }
        let (mlp, _) = r.finish(g)?;
        let residuals = mlp.residuals().cloned();
        let mut m = Method::Mapper {
            name: format!("first use, {n} pairs"),
            mapper: Box::new(mlp),
        };
        let mapper = measure::text_adherence(p, &mut m, stats, a.faces, !a.no_pairs)?;
        let w = pairs.w.narrow(1, 0, 1)?.squeeze(1)?;
        let mut best = (0, f64::MIN);
        for k in [8, 32, 128] {
            let mut m = Method::Retrieval {
                k,
                e: pairs.e.clone(),
                w: w.clone(),
                residuals: None,
            };
            let score = measure::heldout_adherence(p, &mut m, stats, 8)?;
            if score > best.1 {
                best = (k, score);
            }
        }
        let mut m = Method::Retrieval {
            k: best.0,
            e: pairs.e.clone(),
            w: w.clone(),
            residuals: None,
        };
        let retrieval = measure::text_adherence(p, &mut m, stats, a.faces, !a.no_pairs)?;
        let with_residuals = match residuals {
            Some(res) => {
                let mut m = Method::Retrieval {
                    k: best.0,
                    e: pairs.e.clone(),
                    w,
                    residuals: Some((res, p.settings.sample_temperature)),
                };
                Some(measure::text_adherence(
                    p,
                    &mut m,
                    stats,
                    a.faces,
                    !a.no_pairs,
                )?)
            }
            None => None,
        };
        let row = |r: &TextReport| {
            format!(
                "{:.3} {:.3} {:.3}",
                r.single_adherence, r.pair_adherence, r.variety
            )
        };
        println!(
            "{n:>5}  {:>20}   {:>20} (k {:>3})   {:>20}",
            row(&mapper),
            row(&retrieval),
            best.0,
            with_residuals
                .as_ref()
                .map(row)
                .unwrap_or_else(|| "-".into())
        );
        points.push(CurvePoint {
            pairs: n,
            mapper,
            retrieval,
            retrieval_with_residuals: with_residuals,
            retrieval_k: best.0,
        });
    }
    Ok(points)
}
