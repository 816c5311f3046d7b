//! `clip2gan bench refine`: quality mode's cost. Seconds per refinement
//! step at each batch (the configured generator with real weights, a
//! random ViT-B/32-shaped CLIP: the same work as trained weights), the
//! eight steps of one user against the 10 s target, and the latency of
//! fast jobs (one imagine at a time) with and without a refinement running
//! in the same engine, with the p95 ratio. Peak RSS of the process at the end.

use std::time::Instant;

use serde::Serialize;

use super::engine::{random_pipeline, BenchConfig};
use super::median;
use crate::engine::{Engine, PipelineBackend, Request};
use crate::error::Result;
use crate::pipeline::ImagineRequest;

/// The target of the issue: eight steps for one user in this many seconds.
pub const EIGHT_STEPS_TARGET_S: f64 = 10.0;

#[derive(Debug, Clone, Serialize)]
pub struct RefineCase {
    pub batch: usize,
    /// Wall time of each step, s (the first includes first-use costs).
    pub step_s: Vec<f64>,
    /// Median of the steps after the first.
    pub median_step_s: f64,
    /// Eight steps at that rate, and over the target.
    pub eight_steps_s: f64,
    pub eight_steps_over_target: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FastLatency {
    pub jobs: usize,
    pub alone_p95_ms: f64,
    pub during_refinement_p95_ms: f64,
    /// during / alone.
    pub ratio: f64,
    /// The refinement's own steps while the fast jobs ran.
    pub refinement_steps: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct RefineBench {
    pub clip: String,
    pub generator_resolution: usize,
    pub clip_input: usize,
    pub cases: Vec<RefineCase>,
    pub fast: Option<FastLatency>,
    pub peak_rss_mb: f64,
}

fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    r.ru_maxrss as f64 / 1024.0
}

fn p95(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 * 0.95).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

pub fn refine(
    cfg: &BenchConfig,
    device: &candle_core::Device,
    batches: &[usize],
    steps: usize,
    fast_jobs: usize,
) -> Result<RefineBench> {
    let p = random_pipeline(cfg, device)?;
    let radius = p.latent_radius()?;
    let mut cases = Vec::new();
    for &batch in batches {
        let req = ImagineRequest {
            prompt: "a smiling woman with red hair".into(),
            count: batch,
            seed: 1,
            truncation: None,
            candidates: batch,
        };
        let r = p.imagine(std::slice::from_ref(&req))?.remove(0);
        let prompts = vec![req.prompt.as_str(); batch];
        let mut states = p.refine_begin(&r.latents, &prompts)?;
        let mut step_s = Vec::new();
        for _ in 0..steps.max(2) {
            let t = Instant::now();
            p.refine_step(&mut states, radius)?;
            step_s.push(t.elapsed().as_secs_f64());
        }
        let m = median(step_s[1..].to_vec());
        cases.push(RefineCase {
            batch,
            step_s,
            median_step_s: m,
            eight_steps_s: 8.0 * m,
            eight_steps_over_target: 8.0 * m / EIGHT_STEPS_TARGET_S,
        });
    }
    let clip_input = p.clip.spec.image_size;
    let generator_resolution = p.generator.resolution();
    let fast = if fast_jobs > 0 {
        Some(fast_latency(cfg, p, fast_jobs)?)
    } else {
        None
    };
    Ok(RefineBench {
        clip: "ViT-B/32 shapes, random weights".into(),
        generator_resolution,
        clip_input,
        cases,
        fast,
        peak_rss_mb: peak_rss_mb(),
    })
}

/// One imagine at a time, `jobs` of them, alone and then beside a
/// refinement long enough to outlast them.
fn fast_latency(
    cfg: &BenchConfig,
    p: crate::pipeline::Pipeline,
    jobs: usize,
) -> Result<FastLatency> {
    let output_size = cfg.engine.output_size;
    let engine = Engine::start(cfg.engine.clone(), move || {
        Ok(PipelineBackend {
            pipeline: p,
            output_size,
        })
    })?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| crate::error::Error::invalid(format!("cannot start a runtime: {e}")))?;
    let imagine = |k: u64| Request::Imagine {
        prompt: "an old man".into(),
        count: 1,
        seed: k,
        truncation: None,
        candidates: 1,
    };
    let fail = |e: crate::engine::EngineError| crate::error::Error::invalid(e.to_string());
    rt.block_on(async {
        let mut alone = Vec::new();
        for k in 0..jobs as u64 {
            let t = Instant::now();
            engine
                .submit(2, imagine(k))
                .map_err(fail)?
                .wait()
                .await
                .map_err(fail)?;
            alone.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let start = engine
            .submit(2, imagine(99))
            .map_err(fail)?
            .wait()
            .await
            .map_err(fail)?;
        let mut slow = engine
            .submit(
                1,
                Request::Refine {
                    latents: start.latents,
                    prompt: "an old man".into(),
                    steps: crate::pipeline::limits::MAX_REFINE_STEPS,
                },
            )
            .map_err(fail)?;
        let mut progress = slow.take_progress().expect("a fresh job");
        // The refinement has started once its first step is reported.
        progress.recv().await;
        let mut during = Vec::new();
        for k in 0..jobs as u64 {
            let t = Instant::now();
            engine
                .submit(2, imagine(k))
                .map_err(fail)?
                .wait()
                .await
                .map_err(fail)?;
            during.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let mut refinement_steps = 1;
        while progress.try_recv().is_ok() {
            refinement_steps += 1;
        }
        engine.cancel(slow.id);
        let _ = slow.wait().await;
        let (a, d) = (p95(alone), p95(during));
        Ok(FastLatency {
            jobs,
            alone_p95_ms: a,
            during_refinement_p95_ms: d,
            ratio: d / a,
            refinement_steps,
        })
    })
}
