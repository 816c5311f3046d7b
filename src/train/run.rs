//! The training run: restore or create the mapper and optimiser, open the
//! data, then step, log and checkpoint until done, interrupted or broken.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use candle_core::Device;
use candle_nn::VarMap;

use super::config::{MapperInit, Mode, TrainConfig};
use super::source::Source;
use super::{
    cache, checkpoint, data, images, losses, named_vars, optim, progress, source, untrained_mapper,
    Report, Setup,
};
use crate::error::{Error, Result};
use crate::mapper::{self, Compat, Mapper, MapperMeta};

/// The mapper being trained, its optimiser and the steps done.
struct State {
    mapper: Mapper,
    varmap: VarMap,
    meta: MapperMeta,
    opt: optim::AdamW,
    step: u64,
}

impl State {
    /// A new mapper with the seeded initial weights.
    fn fresh(s: &Setup) -> Result<Self> {
        let (mapper, varmap) = untrained_mapper(s.g, s.clip, &s.clip_model, &s.config)?;
        Ok(Self {
            meta: mapper.meta.clone(),
            opt: optim::AdamW::new(named_vars(&varmap), &s.config)?,
            mapper,
            varmap,
            step: 0,
        })
    }

    /// The run in the checkpoint, after checking it is this run.
    fn restore(s: &Setup, ckpt: &Path, dev: &Device) -> Result<Self> {
        let (g, cfg) = (s.g, &s.config);
        let l = checkpoint::load(ckpt, dev)?;
        l.meta.check(&Compat {
            clip_model: &s.clip_model,
            clip_dim: s.clip.embed_dim(),
            generator: g.id(),
            num_styles: g.num_styles(),
            w_dim: g.w_dim(),
        })?;
        let diffs = cfg.differences(&l.state.config);
        if !diffs.is_empty() {
            return Err(Error::invalid(format!(
                "--resume continues the run in {}, but these settings differ from its checkpoint: {}. \
                 Use the run's settings, or another run_dir for a new run.",
                s.run_dir.display(),
                diffs.join("; ")
            )));
        }
        if !s.quiet {
            if l.state.config.steps != cfg.steps {
                tracing::warn!(
                    "note: the run had {} steps, now {}: the learning-rate schedule changes from here",
                    l.state.config.steps, cfg.steps
                );
            }
            tracing::info!("resuming from step {} ({})", l.state.step, ckpt.display());
        }
        let mut meta = l.meta;
        meta.training = serde_json::to_value(cfg).unwrap_or_default();
        let mapper = Mapper::init(&l.varmap, meta.clone(), &l.w_avg, dev)?;
        let mut opt = optim::AdamW::new(named_vars(&l.varmap), cfg)?;
        let mut moments = l.optimiser;
        opt.load_state(|k| moments.remove(k))?;
        Ok(Self {
            mapper,
            varmap: l.varmap,
            meta,
            opt,
            step: l.state.step,
        })
    }

    /// Write the checkpoint, refusing to replace a good one with NaN weights.
    fn save(&mut self, ckpt: &Path, cfg: &TrainConfig) -> Result<()> {
        let step = self.step;
        if !self.opt.params_finite()? {
            return Err(Error::Training(format!(
                "the mapper's weights are not finite at step {step}; the checkpoint was not overwritten. \
                 Lower train.lr and resume with --resume."
            )));
        }
        self.meta.step = step;
        let state = checkpoint::TrainState {
            step,
            config: cfg.clone(),
            rng: checkpoint::RNG_SCHEME.into(),
        };
        checkpoint::save(
            ckpt,
            &self.varmap,
            self.mapper.w_avg(),
            &self.meta,
            self.opt.state(),
            &state,
        )
    }
}

/// Train (or continue training) a mapper as `s` says.
pub fn train(s: &Setup) -> Result<Report> {
    let cfg = &s.config;
    cfg.validate()?;
    if cfg.mode == Mode::Fit {
        return fit_run(s);
    }
    let dev = s.g.device().clone();
    let ckpt = s.run_dir.join(checkpoint::FILE);
    let metrics_path = s.run_dir.join("metrics.jsonl");
    prepare_paths(s, &ckpt)?;

    let mut st = if s.resume {
        State::restore(s, &ckpt, &dev)?
    } else {
        if ckpt.exists() {
            let step = checkpoint::load(&ckpt, &dev)
                .map(|l| l.state.step.to_string())
                .unwrap_or_else(|_| "?".into());
            return Err(Error::invalid(format!(
                "{} already holds a checkpoint (step {step}): pass --resume to continue that run, \
                 or use another run_dir (or delete the checkpoint) to start a new one",
                s.run_dir.display()
            )));
        }
        State::fresh(s)?
    };
    let start = st.step;
    let mut metrics = progress::Metrics::open(&metrics_path, s.resume.then_some(start))?;
    let mut report = Report {
        start_step: start,
        step: start,
        interrupted: false,
        losses: Vec::new(),
        cache: None,
        steps_per_s: 0.0,
        checkpoint: ckpt.clone(),
        metrics: metrics_path,
        mapper: None,
    };
    let image_size = data::effective_image_size(cfg.image_size, s.g.resolution());
    let Some((mut source, pairs)) = open_source(s, image_size, &mut metrics, &mut report)? else {
        report.interrupted = true;
        return Ok(report);
    };
    if cfg.init == MapperInit::Fit && start == 0 {
        let pairs = pairs.expect("init = fit is validated to need cache mode");
        start_from_fit(s, &st.varmap, &pairs, &mut metrics)?;
    }
    let objective = losses::Objective {
        weights: cfg.loss.clone(),
        through_generator: cfg.mode == Mode::Full,
        g: s.g,
        clip: s.clip,
        image_size,
        recon_size: cfg.recon_size.min(image_size),
        xi: cfg.lafite_xi,
        seed: cfg.seed,
    };

    let mut bar = progress::Progress::new("step", start, cfg.steps, s.quiet);
    let mut last_saved = start;
    while st.step < cfg.steps {
        if s.stop.load(Ordering::SeqCst) {
            report.interrupted = true;
            break;
        }
        let step = st.step + 1;
        let lr = optim::lr_at(cfg, step);
        let batch = source.batch(step)?;
        let l = objective.compute(&st.mapper, &batch, step)?;
        let total = l.total.to_scalar::<f32>()?;
        if !total.is_finite() {
            bar.finish();
            return Err(Error::Training(format!(
                "the loss became {total} at step {step}. The last good checkpoint (step {last_saved}) is {}; \
                 lower train.lr (now {}) or raise warmup_steps, then continue with --resume.",
                ckpt.display(),
                cfg.lr
            )));
        }
        let grad_norm = st.opt.step(&l.total.backward()?, step, lr)?;
        st.step = step;
        let mut rec = serde_json::json!({
            "event": "step", "step": step, "lr": lr, "loss": total, "grad_norm": grad_norm,
            "elapsed_s": bar.elapsed_s(),
        });
        let mut detail = format!("loss {total:.5}");
        for (name, t) in &l.terms {
            let v = t.to_scalar::<f32>()?;
            rec[*name] = serde_json::json!(v);
            detail.push_str(&format!(" {name} {v:.4}"));
        }
        metrics.write(&rec)?;
        report.losses.push((step, total));
        bar.update(step, &format!("| {detail} | lr {lr:.2e}"));
        if step % cfg.checkpoint_every == 0 || step == cfg.steps {
            st.save(&ckpt, cfg)?;
            last_saved = step;
        }
        if s.stop_after == Some(step) {
            report.interrupted = true;
            break;
        }
    }
    bar.finish();
    report.step = st.step;
    report.steps_per_s = bar.rate(st.step);
    if st.step > last_saved {
        st.save(&ckpt, cfg)?;
    }
    metrics.write(&serde_json::json!({
        "event": if report.interrupted { "interrupted" } else { "done" },
        "step": st.step, "steps_per_s": report.steps_per_s,
    }))?;
    if st.step >= cfg.steps && !report.interrupted {
        st.meta.step = st.step;
        st.meta.metrics = serde_json::json!({
            "final_loss": report.losses.last().map(|l| l.1),
            "steps_per_s": report.steps_per_s,
        });
        mapper::save(&s.out, &st.varmap, st.mapper.w_avg(), &st.meta)?;
        report.mapper = Some(s.out.clone());
    }
    Ok(report)
}

/// Fail early on what would fail late: nothing to resume, unwritable paths.
fn prepare_paths(s: &Setup, ckpt: &Path) -> Result<()> {
    if s.resume && !ckpt.exists() {
        return Err(Error::invalid(format!(
            "nothing to resume: there is no checkpoint at {}. Start without --resume.",
            ckpt.display()
        )));
    }
    let dirs: [Option<PathBuf>; 2] = [
        Some(s.run_dir.clone()),
        s.out.parent().map(Path::to_path_buf),
    ];
    for dir in dirs
        .into_iter()
        .flatten()
        .filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(&dir).map_err(|err| Error::Write {
            path: dir.clone(),
            err,
        })?;
    }
    crate::fsutil::check_writable(ckpt)?;
    crate::fsutil::check_writable(&s.out)
}

/// The batch source of the run's mode and, in cache mode, its pairs; `None`
/// if interrupted while the pair cache was being rendered.
#[allow(clippy::type_complexity)]
fn open_source<'a>(
    s: &Setup<'a>,
    image_size: usize,
    metrics: &mut progress::Metrics,
    report: &mut Report,
) -> Result<Option<(Box<dyn Source + 'a>, Option<cache::PairSet>)>> {
    let (g, clip, cfg) = (s.g, s.clip, &s.config);
    let dev = g.device();
    let spec = data::SampleSpec {
        truncation: cfg.truncation,
        style_mixing: cfg.style_mixing,
        image_size,
        gen_batch: cfg.gen_batch,
    };
    Ok(Some(match cfg.mode {
        Mode::Cache | Mode::Fit => {
            let Some(pairs) = pair_cache(s, spec, metrics, report)? else {
                return Ok(None);
            };
            let kept = pairs.clone();
            let source =
                source::CacheSource::new(pairs, g.num_styles(), cfg.batch_size, cfg.seed, dev)?;
            (Box::new(source) as Box<dyn Source + 'a>, Some(kept))
        }
        Mode::Full => {
            let user = match &cfg.image_dir {
                Some(dir) => {
                    let u = images::load(dir, clip, cfg.recon_size.min(image_size), dev)?;
                    if !s.quiet {
                        tracing::info!("{} of your images from {}", u.files.len(), dir.display());
                    }
                    Some(u)
                }
                None => None,
            };
            let source = source::FullSource {
                g,
                clip,
                spec,
                recon_size: cfg.recon_size.min(image_size),
                batch: cfg.batch_size,
                seed: cfg.seed,
                user,
                user_share: cfg.image_share,
            };
            (Box::new(source) as Box<dyn Source + 'a>, None)
        }
    }))
}

/// `init = "fit"`: overwrite the fresh MLP's weights in place (the mapper
/// and the optimiser hold the same variables) with the closed-form fit on
/// `pairs`, so step 1 starts at the fit's predictions.
fn start_from_fit(
    s: &Setup,
    varmap: &candle_nn::VarMap,
    pairs: &cache::PairSet,
    metrics: &mut progress::Metrics,
) -> Result<()> {
    let cfg = &s.config;
    let f = super::fit::fit(pairs, s.g.w_avg(), s.g.num_styles(), &cfg.fit, cfg.seed)?;
    if !s.quiet {
        tracing::info!("the MLP starts from the {}", f.report.summary());
    }
    metrics.write(&serde_json::json!({ "event": "init_from_fit", "fit": f.report }))?;
    super::fit::write_start(varmap, &f, &cfg.mapper, s.g.num_styles(), s.g.device())
}

/// The run's first `train.pairs` cached pairs (rendering what is missing);
/// `None` if interrupted.
fn pair_cache(
    s: &Setup,
    spec: data::SampleSpec,
    metrics: &mut progress::Metrics,
    report: &mut Report,
) -> Result<Option<cache::PairSet>> {
    let cfg = &s.config;
    let key = cache::CacheKey::new(s.g, s.clip, &s.clip_model, cfg.seed, &spec);
    let r = cache::Renderer {
        g: s.g,
        clip: s.clip,
        key,
        spec,
    };
    let dir = s.run_dir.join("pairs");
    let Some((pairs, stats)) =
        cache::ensure(&dir, &r, cfg.pairs, cfg.chunk_pairs, s.stop, s.quiet)?
    else {
        return Ok(None);
    };
    metrics.write(&serde_json::json!({
        "event": "pair_cache", "reused": stats.reused, "rendered": stats.rendered,
        "render_s": stats.render_s, "pairs_per_s": stats.pairs_per_s(),
    }))?;
    report.cache = Some(stats);
    Ok(Some(pairs))
}

/// `mode = "fit"`: the pair cache, then the closed-form mapper (no steps,
/// no checkpoint: the fit takes seconds and is the same every time).
fn fit_run(s: &Setup) -> Result<Report> {
    let cfg = &s.config;
    let ckpt = s.run_dir.join(checkpoint::FILE);
    let metrics_path = s.run_dir.join("metrics.jsonl");
    prepare_paths(s, &ckpt)?;
    let mut metrics = progress::Metrics::open(&metrics_path, None)?;
    let mut report = Report {
        start_step: 0,
        step: 0,
        interrupted: false,
        losses: Vec::new(),
        cache: None,
        steps_per_s: 0.0,
        checkpoint: ckpt,
        metrics: metrics_path,
        mapper: None,
    };
    let spec = data::SampleSpec {
        truncation: cfg.truncation,
        style_mixing: cfg.style_mixing,
        image_size: data::effective_image_size(cfg.image_size, s.g.resolution()),
        gen_batch: cfg.gen_batch,
    };
    let Some(pairs) = pair_cache(s, spec, &mut metrics, &mut report)? else {
        report.interrupted = true;
        return Ok(report);
    };
    let closed = super::fit::make_mapper(s.g, s.clip, &s.clip_model, cfg, &pairs, &s.captions)?;
    let fit = &closed.fitted.report;
    metrics.write(&serde_json::json!({"event": "fit", "fit": fit}))?;
    if !s.quiet {
        tracing::info!("{}", fit.summary());
    }
    mapper::save(
        &s.out,
        &closed.varmap,
        closed.mapper.w_avg(),
        &closed.mapper.meta,
    )?;
    report.mapper = Some(s.out.clone());
    if cfg.refine.steps > 0 {
        refine(s, &pairs, &closed, &mut metrics, &mut report)?;
    }
    Ok(report)
}

/// `[train.refine]`: the MLP refined from the fit replaces it in `s.out`
/// (Ctrl-C keeps the fit there).
fn refine(
    s: &Setup,
    pairs: &cache::PairSet,
    closed: &super::fit::Closed,
    metrics: &mut progress::Metrics,
    report: &mut Report,
) -> Result<()> {
    let mut r =
        super::refine::Refinement::new(s.g, s.clip, &s.clip_model, &s.config, pairs, closed)?;
    let (_, steps) = r.progress();
    if !s.quiet {
        tracing::info!(
            "{} written; refining it into an MLP ({steps} steps, `train.refine.steps = 0` skips this)",
            s.out.display()
        );
    }
    let mut bar = progress::Progress::new("step", 0, steps, s.quiet);
    while !r.done() {
        if s.stop.load(Ordering::SeqCst) {
            bar.finish();
            report.interrupted = true;
            if !s.quiet {
                tracing::warn!(
                    "interrupted: {} stays the closed-form mapper; run again to refine it",
                    s.out.display()
                );
            }
            return Ok(());
        }
        let loss = r.step(s.g, s.clip)?;
        let (step, _) = r.progress();
        metrics.write(&serde_json::json!({
            "event": "refine_step", "step": step, "loss": loss, "elapsed_s": bar.elapsed_s(),
        }))?;
        report.losses.push((step, loss));
        bar.update(step, &format!("| loss {loss:.5}"));
    }
    bar.finish();
    report.step = steps;
    report.steps_per_s = bar.rate(steps);
    let (mapper, varmap) = r.finish(s.g)?;
    mapper::save(&s.out, &varmap, mapper.w_avg(), &mapper.meta)?;
    metrics.write(&serde_json::json!({
        "event": "refined", "steps": steps, "steps_per_s": report.steps_per_s,
    }))?;
    Ok(())
}
