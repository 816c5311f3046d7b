//! Refinement jobs on the pipeline ([`PipelineBackend`]'s side of
//! `engine::refine`): each job's latents become [`Refining`] states, and
//! one step of several jobs is one call of [`crate::pipeline::Pipeline::refine_step`]
//! over all their latents.

use candle_core::Tensor;

use super::backend::{failed, PipelineBackend, RawOutput};
use super::refine::RefineState;
use super::types::{EngineError, Request};
use crate::pipeline::Refining;

/// One job's refinement between steps.
struct JobState {
    latents: Vec<Refining>,
    /// The clamp radius (the generator's farthest sample from `w_avg`).
    radius: f64,
}

fn job_state(s: &mut RefineState) -> Result<&mut JobState, EngineError> {
    s.downcast_mut::<JobState>()
        .ok_or_else(|| EngineError::Failed("a refinement of another backend".into()))
}

pub(super) fn begin(b: &PipelineBackend, job: &Request) -> Result<RefineState, EngineError> {
    let Request::Refine {
        latents, prompt, ..
    } = job
    else {
        return Err(EngineError::Failed("not a refinement".into()));
    };
    let ws = latents
        .iter()
        .map(|l| b.tensor(l)?.unsqueeze(0).map_err(failed))
        .collect::<Result<Vec<_>, _>>()?;
    let w = Tensor::cat(&ws, 0).map_err(failed)?;
    let prompts = vec![prompt.as_str(); latents.len()];
    let p = &b.pipeline;
    Ok(Box::new(JobState {
        latents: p.refine_begin(&w, &prompts).map_err(failed)?,
        radius: p.latent_radius().map_err(failed)?,
    }))
}

pub(super) fn step(
    b: &PipelineBackend,
    states: &mut [RefineState],
) -> Result<Vec<Vec<f32>>, EngineError> {
    let mut all = Vec::new();
    let mut counts = Vec::with_capacity(states.len());
    let mut radius = f64::INFINITY;
    for s in states.iter_mut() {
        let js = job_state(s)?;
        counts.push(js.latents.len());
        radius = radius.min(js.radius);
        all.append(&mut js.latents);
    }
    let stepped = b.pipeline.refine_step(&mut all, radius);
    // The states go back whatever happened, so a failed step leaves no
    // job without its latents.
    let mut rest = all.into_iter();
    for (s, n) in states.iter_mut().zip(&counts) {
        job_state(s)?.latents = rest.by_ref().take(*n).collect();
    }
    let scores = stepped.map_err(failed)?;
    let mut at = 0;
    Ok(counts
        .iter()
        .map(|n| {
            let v = scores[at..at + n].iter().map(|s| s.score).collect();
            at += n;
            v
        })
        .collect())
}

pub(super) fn finish(
    b: &PipelineBackend,
    mut state: RefineState,
) -> Result<RawOutput, EngineError> {
    let js = job_state(&mut state)?;
    let r = b
        .pipeline
        .refine_finish(&js.latents, js.radius)
        .map_err(failed)?;
    let mut rendered = crate::pipeline::Rendered::plain(r.latents, r.images);
    rendered.scores = Some(r.scores);
    b.output(rendered, false)
}
