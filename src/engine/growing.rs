//! A backend whose mapper is built, and then improved, in the worker's idle
//! time ([`crate::train::warmup::Growth`]). Until the first fit is written
//! the engine refuses jobs at once with the progress ("warming up: 40%,
//! about 2 min left"); after it, each refit replaces the mapper between
//! batches. With no growth (a trained mapper, or first use switched off) it
//! is a plain [`PipelineBackend`].

use super::backend::{Backend, PipelineBackend, RawOutput};
use super::refine::RefineState;
use super::types::{EngineError, Request, Warmup};

/// A refinement reached a backend with no models ready (never once ready:
/// a refinement starts from a latent the models made).
const NOT_READY: &str = "the face model is not ready; please try again later";
use crate::clip::Clip;
use crate::generator::Generator;
use crate::mapper::Mapper;
use crate::pipeline::{Pipeline, Settings};
use crate::train::warmup::Growth;

enum Stage {
    /// No mapper yet: the models wait for the first fit.
    Warming {
        clip: Box<Clip>,
        generator: Box<dyn Generator>,
    },
    // Boxed: the pipeline is large and the stage changes once.
    Ready(Box<PipelineBackend>),
    /// The first mapper could not be built; every job says why.
    Failed(String),
}

pub struct GrowingBackend {
    stage: Stage,
    growth: Option<Growth>,
    settings: Settings,
    output_size: usize,
    latent_shape: (usize, usize),
}

impl GrowingBackend {
    /// `mapper`: the one on disk, if any; `growth`: the bank to grow (None:
    /// serve `mapper` as it is). One of the two must be given.
    pub fn new(
        clip: Clip,
        generator: Box<dyn Generator>,
        mapper: Option<Mapper>,
        growth: Option<Growth>,
        settings: Settings,
        output_size: usize,
    ) -> crate::error::Result<Self> {
        // Checked here too, not only against the configured resolution: a
        // StyleGAN2 checkpoint's is known once it is loaded, and a size above
        // it would fail every job.
        let res = generator.resolution();
        crate::image_io::check_size(output_size, res).map_err(|e| {
            crate::error::Error::invalid(format!(
                "engine.output_size: {e} (this generator makes {res} px images)"
            ))
        })?;
        let latent_shape = (generator.num_styles(), generator.w_dim());
        let stage = match mapper {
            Some(mapper) => Stage::Ready(Box::new(PipelineBackend {
                pipeline: Pipeline {
                    clip,
                    mapper,
                    generator,
                    settings: settings.clone(),
                },
                output_size,
            })),
            None if growth.is_some() => Stage::Warming {
                clip: Box::new(clip),
                generator,
            },
            None => {
                return Err(crate::error::Error::invalid(
                    "no mapper and nothing to build one with",
                ))
            }
        };
        Ok(Self {
            stage,
            growth,
            settings,
            output_size,
            latent_shape,
        })
    }

    /// Put a new mapper to use.
    fn install(&mut self, mapper: Mapper) {
        match std::mem::replace(&mut self.stage, Stage::Failed(String::new())) {
            Stage::Warming { clip, generator } => {
                self.stage = Stage::Ready(Box::new(PipelineBackend {
                    pipeline: Pipeline {
                        clip: *clip,
                        mapper,
                        generator,
                        settings: self.settings.clone(),
                    },
                    output_size: self.output_size,
                }));
            }
            Stage::Ready(mut b) => {
                b.pipeline.mapper = mapper;
                self.stage = Stage::Ready(b);
            }
            failed => self.stage = failed,
        }
    }
}

impl Backend for GrowingBackend {
    fn latent_shape(&self) -> (usize, usize) {
        self.latent_shape
    }

    fn run(&mut self, batch: &[Request]) -> Vec<Result<RawOutput, EngineError>> {
        match &mut self.stage {
            Stage::Ready(b) => b.run(batch),
            // The engine refuses jobs while warming; one that slipped in
            // gets the same answer.
            Stage::Warming { .. } => {
                let w = self.warming().unwrap_or(Warmup {
                    percent: 0,
                    eta_s: None,
                });
                batch
                    .iter()
                    .map(|_| Err(EngineError::WarmingUp(w)))
                    .collect()
            }
            Stage::Failed(why) => batch
                .iter()
                .map(|_| Err(EngineError::Failed(why.clone())))
                .collect(),
        }
    }

    fn refine_begin(&mut self, job: &Request) -> Result<RefineState, EngineError> {
        match &mut self.stage {
            Stage::Ready(b) => b.refine_begin(job),
            _ => Err(EngineError::Failed(NOT_READY.into())),
        }
    }

    fn refine_step(&mut self, states: &mut [RefineState]) -> Result<Vec<Vec<f32>>, EngineError> {
        match &mut self.stage {
            Stage::Ready(b) => b.refine_step(states),
            _ => Err(EngineError::Failed(NOT_READY.into())),
        }
    }

    fn refine_finish(&mut self, state: RefineState) -> Result<RawOutput, EngineError> {
        match &mut self.stage {
            Stage::Ready(b) => b.refine_finish(state),
            _ => Err(EngineError::Failed(NOT_READY.into())),
        }
    }

    fn idle(&mut self) -> bool {
        let Some(growth) = &mut self.growth else {
            return false;
        };
        let (clip, generator) = match &self.stage {
            Stage::Warming { clip, generator } => (clip.as_ref(), generator.as_ref()),
            Stage::Ready(b) => (&b.pipeline.clip, b.pipeline.generator.as_ref()),
            Stage::Failed(_) => return false,
        };
        match growth.step(clip, generator) {
            Ok(Some(mapper)) => self.install(mapper),
            Ok(None) => {}
            Err(e) => {
                // Serving goes on with the mapper there is; without one,
                // jobs fail with the reason instead of waiting forever.
                tracing::error!(error = %e, "growing the mapper's pair bank failed; it stops here");
                self.growth = None;
                if matches!(self.stage, Stage::Warming { .. }) {
                    self.stage = Stage::Failed(format!(
                        "the face model could not be built ({e}); the bot's operator has to look at its log"
                    ));
                }
                return false;
            }
        }
        self.growth.as_ref().is_some_and(Growth::growing)
    }

    fn warming(&self) -> Option<Warmup> {
        if !matches!(self.stage, Stage::Warming { .. }) {
            return None;
        }
        let w = self.growth.as_ref()?.warming()?;
        Some(Warmup {
            percent: w.percent(),
            eta_s: w.eta_s.map(|s| s.ceil() as u64),
        })
    }
}
