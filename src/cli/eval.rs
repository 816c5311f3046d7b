//! `clip2gan eval-mapper` on the command line: its flags, loading the
//! generator, CLIP and the mapper from the configuration, and the report
//! (the table on stdout, JSON beside the mapper). The measuring itself is
//! `clip2gan::eval`.

use std::path::{Path, PathBuf};

use clap::Args;
use clip2gan::clip::Clip;
use clip2gan::config::Config;
use clip2gan::error::{Error, Result};
use clip2gan::eval::{evaluate, table, EvalReport, Options};
use clip2gan::mapper::{Compat, Mapper};
use clip2gan::train::TrainConfig;

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    /// Mapper file (default: [mapper] path); a training checkpoint works too.
    #[arg(long)]
    pub mapper: Option<PathBuf>,
    /// Held-out samples.
    #[arg(long, default_value_t = 64)]
    pub samples: usize,
    /// Seed of the held-out samples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Side at which PSNR compares images.
    #[arg(long, default_value_t = 256)]
    pub psnr_size: usize,
    /// Perturb the held-out embeddings with LAFITE noise first (0 = clean).
    #[arg(long, default_value_t = 0.0)]
    pub xi: f64,
    /// Prompt file (one per line, UTF-8) for CLIP score and R-precision.
    #[arg(long)]
    pub prompts: Option<PathBuf>,
    /// With --prompts: also imagine this many images per prompt and report
    /// whether their latents stay in the generator's range and how much
    /// they differ (see `variety`).
    #[arg(long)]
    pub variety: Option<usize>,
    /// R-precision candidates per prompt (the true one included).
    #[arg(long, default_value_t = 100)]
    pub candidates: usize,
    /// Images per generator call.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Where the JSON report goes (default: the mapper path + .eval.json,
    /// or + .adherence.json with --adherence).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Measure text and edit adherence with the pixel judges instead (needs
    /// a CLIP whose text means something about them, e.g. the toy CLIP).
    #[command(flatten)]
    pub adherence: super::adherence::AdherenceArgs,
}

/// Run `clip2gan eval-mapper`.
pub fn run(cfg: &Config, a: &EvalArgs) -> Result<()> {
    let path = a.mapper.clone().unwrap_or_else(|| cfg.mapper_path());
    if a.adherence.adherence {
        return super::adherence::run(cfg, &path, a.json.as_deref(), &a.adherence);
    }
    evaluate_latents(cfg, a, path).map(|_| ())
}

/// The latent, image and CLIP metrics of the mapper at `path`.
fn evaluate_latents(cfg: &Config, a: &EvalArgs, path: PathBuf) -> Result<EvalReport> {
    let prompts = a
        .prompts
        .as_deref()
        .map(clip2gan::prompts::read)
        .transpose()?;
    let json = a.json.clone().unwrap_or_else(|| json_path(&path));
    clip2gan::fsutil::check_writable(&json)?;
    let dev = clip2gan::device::select(&cfg.device)?;
    let meta = clip2gan::mapper::read_meta(&path)?;
    let g = cfg.open_generator(&dev, true)?;
    let clip = Clip::load(&cfg.clip_files()?, &dev)?;
    let (trained, warnings) = Mapper::load(
        &path,
        &Compat {
            clip_model: &cfg.clip.model,
            clip_dim: clip.embed_dim(),
            generator: g.id(),
            num_styles: g.num_styles(),
            w_dim: g.w_dim(),
        },
        &dev,
    )?;
    for w in warnings {
        eprintln!("warning: {w}");
    }
    let mut tc: TrainConfig = serde_json::from_value(meta.training.clone()).unwrap_or_default();
    // A closed-form mapper has no starting weights: its "untrained"
    // baseline is the MLP that `train` would start from.
    if meta.config.kind == clip2gan::mapper::MapperKind::Mlp {
        tc.mapper = meta.config.clone();
    }
    let (untrained, _) =
        clip2gan::train::untrained_mapper(g.as_ref(), &clip, &meta.clip_model, &tc)?;
    let mut report = evaluate(
        g.as_ref(),
        &clip,
        &trained,
        &untrained,
        &Options {
            samples: a.samples,
            seed: a.seed,
            psnr_size: a.psnr_size,
            xi: a.xi,
            batch: a.batch,
            prompts,
            candidates: a.candidates,
        },
    )?;
    report.mapper = path.display().to_string();
    print!("{}", table(&report));
    if let (Some(n), Some(prompts)) = (a.variety, a.prompts.as_deref()) {
        let p = clip2gan::pipeline::Pipeline {
            clip,
            mapper: trained,
            generator: g,
            settings: cfg.pipeline_setup().settings(),
        };
        let v = clip2gan::variety::measure(&p, &clip2gan::prompts::read(prompts)?, n)?;
        print!("{}", clip2gan::variety::table(&v));
        report.variety = Some(v);
    }
    let text = serde_json::to_string_pretty(&report).map_err(|e| Error::invalid(e.to_string()))?;
    clip2gan::fsutil::write_atomic(&json, text.as_bytes())?;
    eprintln!("report written to {}", json.display());
    Ok(report)
}

fn json_path(mapper: &Path) -> PathBuf {
    let mut s = mapper.as_os_str().to_owned();
    s.push(".eval.json");
    PathBuf::from(s)
}
