//! What the engine's worker runs: a [`Backend`] turns a batch of requests
//! into images. [`PipelineBackend`] is the real one (CLIP + mapper +
//! generator); tests also use small fakes to exercise the queue.

use std::io::Cursor;
use std::time::Instant;

use candle_core::Tensor;
use image::RgbImage;

use super::refine::RefineState;
use super::types::{EngineError, JobTimes, Latent, Request, Warmup};
use crate::image_io;
use crate::pipeline::{EditRequest, ImagineRequest, Pipeline, Rendered, Stages};

/// Images and latents of one job, before encoding.
#[derive(Debug, Clone)]
pub struct RawOutput {
    pub images: Vec<RgbImage>,
    pub latents: Vec<Latent>,
    /// Encode the images as one animation instead of separate PNGs.
    pub animate: bool,
    pub truncated_prompt: bool,
    pub scores: Option<Vec<f32>>,
    /// The compute stages the backend timed (the engine fills in the rest).
    pub times: JobTimes,
}

pub trait Backend: Send + 'static {
    /// Shape of this backend's latents: (styles, dim).
    fn latent_shape(&self) -> (usize, usize);
    /// Run requests of one batch kind together; one result per request, in order.
    fn run(&mut self, batch: &[Request]) -> Vec<Result<RawOutput, EngineError>>;
    /// One short piece of background work, done while no job waits (growing
    /// the mapper's pair bank). Returns whether more remains.
    fn idle(&mut self) -> bool {
        false
    }
    /// `Some` while the backend cannot serve yet: how far it is.
    fn warming(&self) -> Option<Warmup> {
        None
    }
    /// Start a [`Request::Refine`] job: the state its steps carry on.
    fn refine_begin(&mut self, _job: &Request) -> Result<RefineState, EngineError> {
        Err(EngineError::InvalidRequest(NO_REFINE.into()))
    }
    /// One step of each refinement of `states` (one pass for all of them);
    /// for each, the CLIP score of each of its images before the step.
    fn refine_step(&mut self, _states: &mut [RefineState]) -> Result<Vec<Vec<f32>>, EngineError> {
        Err(EngineError::InvalidRequest(NO_REFINE.into()))
    }
    /// The refined images and latents of a finished refinement.
    fn refine_finish(&mut self, _state: RefineState) -> Result<RawOutput, EngineError> {
        Err(EngineError::InvalidRequest(NO_REFINE.into()))
    }
}

/// What a backend without quality mode answers a refinement.
pub const NO_REFINE: &str = "this image service cannot refine images (quality mode)";

pub struct PipelineBackend {
    pub pipeline: Pipeline,
    /// Side of the delivered images (area-downscaled from the generator's).
    pub output_size: usize,
}

/// The pipeline's (and candle's) errors, sorted by variant: requests the
/// pipeline refused become [`EngineError::InvalidRequest`].
pub(super) fn failed(e: impl Into<crate::error::Error>) -> EngineError {
    EngineError::from(e.into())
}

impl PipelineBackend {
    pub(super) fn tensor(&self, l: &Latent) -> Result<Tensor, EngineError> {
        let dev = self.pipeline.generator.device();
        Tensor::from_vec(l.data.clone(), (l.styles, l.dim), dev).map_err(failed)
    }

    pub(super) fn output(&self, r: Rendered, animate: bool) -> Result<RawOutput, EngineError> {
        let t0 = Instant::now();
        let images = image_io::to_rgb8_resized(&r.images, self.output_size).map_err(failed)?;
        let resize_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let (n, s, d) = r.latents.dims3().map_err(failed)?;
        let flat = r
            .latents
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .map_err(failed)?;
        let latents = (0..n)
            .map(|i| Latent {
                styles: s,
                dim: d,
                data: flat[i * s * d..(i + 1) * s * d].to_vec(),
            })
            .collect();
        Ok(RawOutput {
            images,
            latents,
            animate,
            truncated_prompt: r.truncated,
            scores: r.scores,
            times: JobTimes {
                resize_ms,
                ..JobTimes::default()
            },
        })
    }

    fn run_one(&self, job: &Request) -> Result<RawOutput, EngineError> {
        let p = &self.pipeline;
        match job {
            Request::Invert { image } => {
                let img = image::ImageReader::new(Cursor::new(image))
                    .with_guessed_format()
                    .map_err(|e| EngineError::Failed(e.to_string()))?
                    .decode()
                    .map_err(|e| {
                        EngineError::InvalidRequest(format!(
                            "that file is not a readable image ({e})"
                        ))
                    })?;
                let r = p.invert(&[img]).map_err(failed)?;
                self.output(r.into_iter().next().expect("one result"), false)
            }
            Request::Variations {
                latent,
                seed,
                count,
                amount,
            } => {
                let lat = self.tensor(latent)?;
                self.output(
                    p.variations(&lat, *seed, *count, *amount).map_err(failed)?,
                    false,
                )
            }
            Request::Interpolate { a, b, frames } => {
                let a = self.tensor(a)?;
                let b = self.tensor(b)?;
                self.output(p.interpolate(&a, &b, *frames).map_err(failed)?, true)
            }
            Request::Render { latents } => {
                let ws = latents
                    .iter()
                    .map(|l| self.tensor(l)?.unsqueeze(0).map_err(failed))
                    .collect::<Result<Vec<_>, _>>()?;
                let w = Tensor::cat(&ws, 0).map_err(failed)?;
                let images = p.render(&w).map_err(failed)?;
                self.output(Rendered::plain(w, images), false)
            }
            _ => {
                let mut v = self.run_batch(std::slice::from_ref(job))?;
                Ok(v.remove(0))
            }
        }
    }

    /// Imagine or edit requests in one forward pass.
    fn run_batch(&self, batch: &[Request]) -> Result<Vec<RawOutput>, EngineError> {
        let p = &self.pipeline;
        let mut stages = Stages::default();
        let (mut imagine, mut edit) = (Vec::new(), Vec::new());
        for job in batch {
            match job {
                Request::Imagine {
                    prompt,
                    count,
                    seed,
                    truncation,
                    candidates,
                } => imagine.push(ImagineRequest {
                    prompt: prompt.clone(),
                    count: *count,
                    seed: *seed,
                    truncation: *truncation,
                    candidates: *candidates,
                }),
                Request::Edit {
                    latent,
                    instruction,
                    strength,
                    layers,
                } => edit.push(EditRequest {
                    latent: self.tensor(latent)?,
                    instruction: instruction.clone(),
                    strength: *strength,
                    layers: *layers,
                }),
                _ => return Err(EngineError::Failed("not a batchable request".into())),
            }
        }
        let rendered = match (imagine.is_empty(), edit.is_empty()) {
            (false, true) => p.imagine_timed(&imagine, &mut stages),
            (true, false) => p.edit_timed(&edit, &mut stages),
            _ => return Err(EngineError::Failed("mixed batch".into())),
        }
        .map_err(failed)?;
        let mut out = rendered
            .into_iter()
            .map(|r| self.output(r, false))
            .collect::<Result<Vec<_>, _>>()?;
        // Every job of the batch waited for all of it: give each the batch's times.
        let resize_ms = out.iter().map(|o| o.times.resize_ms).sum();
        for o in &mut out {
            o.times = JobTimes {
                clip_text_ms: stages.clip_text_ms,
                mapper_ms: stages.mapper_ms,
                generator_ms: stages.generator_ms,
                clip_image_ms: stages.clip_image_ms,
                resize_ms,
                ..JobTimes::default()
            };
        }
        Ok(out)
    }
}

impl Backend for PipelineBackend {
    fn latent_shape(&self) -> (usize, usize) {
        let g = &self.pipeline.generator;
        (g.num_styles(), g.w_dim())
    }

    fn refine_begin(&mut self, job: &Request) -> Result<RefineState, EngineError> {
        super::refine_backend::begin(self, job)
    }

    fn refine_step(&mut self, states: &mut [RefineState]) -> Result<Vec<Vec<f32>>, EngineError> {
        super::refine_backend::step(self, states)
    }

    fn refine_finish(&mut self, state: RefineState) -> Result<RawOutput, EngineError> {
        super::refine_backend::finish(self, state)
    }

    fn run(&mut self, batch: &[Request]) -> Vec<Result<RawOutput, EngineError>> {
        if batch.len() == 1 {
            return vec![self.run_one(&batch[0])];
        }
        match self.run_batch(batch) {
            Ok(v) => v.into_iter().map(Ok).collect(),
            // One bad request must not fail its neighbours: retry one by one.
            Err(_) => batch.iter().map(|j| self.run_one(j)).collect(),
        }
    }
}
