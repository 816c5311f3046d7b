//! The pipeline's settings: the `[pipeline]` section (checked here, beside
//! its type), and [`PipelineSetup`], everything loading a pipeline needs
//! (the model sections and the folder their relative paths start from).
//! The application's `Config` hands these down; nothing below it sees the
//! rest of the configuration.

use std::path::PathBuf;

use serde::Deserialize;

use super::Settings;
use crate::clip::{ClipConfig, ClipFiles};
use crate::error::{Error, Result};
use crate::generator::{Generator, GeneratorConfig, NoiseMode};
use crate::mapper::MapperFileConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    /// Truncation of mapped latents toward w_avg (1 = none).
    pub truncation: f64,
    /// Perturbation of the text embedding per seed (variety between images).
    pub variation_xi: f64,
    /// Blend of a seeded random style into the fine layers.
    pub fine_mix: f64,
    /// Share of a drawn fit residual each image adds (mappers with residuals).
    pub sample_temperature: f64,
    /// Quality mode: Adam's step size on the latent.
    pub refine_step_size: f64,
    /// Quality mode: weight of the squared distance to the start latent.
    pub refine_pull: f64,
    /// Quality mode: move W+ (one offset per style) or W (one for all).
    pub refine_space: super::RefineSpace,
    /// Quality mode: latents per forward and backward pass within a step.
    pub refine_chunk: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let s = Settings::default();
        Self {
            truncation: s.truncation,
            variation_xi: s.variation_xi,
            fine_mix: s.fine_mix,
            sample_temperature: s.sample_temperature,
            refine_step_size: s.refine.step_size,
            refine_pull: s.refine.pull,
            refine_space: s.refine.space,
            refine_chunk: s.refine.chunk,
        }
    }
}

impl PipelineConfig {
    pub fn validate(&self) -> Result<()> {
        if !(0.0..=1.0).contains(&self.variation_xi)
            || !(0.0..=1.0).contains(&self.fine_mix)
            || !(0.0..=1.5).contains(&self.sample_temperature)
        {
            return Err(Error::Config(
                "pipeline.variation_xi and fine_mix must be in [0, 1], sample_temperature in [0, 1.5]"
                    .into(),
            ));
        }
        self.refine().validate()?;
        crate::generator::check_truncation(self.truncation)
    }

    /// Quality mode's settings.
    pub fn refine(&self) -> super::RefineSettings {
        super::RefineSettings {
            step_size: self.refine_step_size,
            pull: self.refine_pull,
            space: self.refine_space,
            chunk: self.refine_chunk,
        }
    }

    /// The run-time settings, with the generator's batch bound.
    pub fn settings(&self, max_batch: usize) -> Settings {
        Settings {
            truncation: self.truncation,
            variation_xi: self.variation_xi,
            fine_mix: self.fine_mix,
            sample_temperature: self.sample_temperature,
            max_batch,
            noise: NoiseMode::Fixed,
            subject: super::instruction::FACE.into(),
            refine: self.refine(),
        }
    }
}

/// What loading a pipeline needs: the sections of its three models, its
/// own, and the folder relative model paths start from.
#[derive(Debug, Clone)]
pub struct PipelineSetup {
    pub models_dir: PathBuf,
    pub clip: ClipConfig,
    pub generator: GeneratorConfig,
    pub mapper: MapperFileConfig,
    pub pipeline: PipelineConfig,
}

impl PipelineSetup {
    /// Pipeline settings from `[pipeline]` and `[generator]`.
    pub fn settings(&self) -> Settings {
        Settings {
            subject: self.generator.subject.clone(),
            ..self.pipeline.settings(self.generator.max_batch)
        }
    }

    pub fn mapper_path(&self) -> PathBuf {
        self.mapper.path_in(&self.models_dir)
    }

    /// Locate (and download if needed) the configured CLIP checkpoint.
    pub fn clip_files(&self) -> Result<ClipFiles> {
        self.clip.files(&self.models_dir)
    }

    /// Open the configured generator (see [`crate::generator::open`]).
    pub fn open_generator(
        &self,
        device: &candle_core::Device,
        auto_fetch: bool,
    ) -> Result<Box<dyn Generator>> {
        crate::generator::open(&self.generator, &self.models_dir, device, auto_fetch)
    }
}
