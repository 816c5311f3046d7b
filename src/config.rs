//! Settings: built-in defaults, then `config.toml` (or the file given with
//! `--config`), then environment variables `CLIP2GAN_<KEY>` with `__` between
//! levels (e.g. `CLIP2GAN_GENERATOR__TRUNCATION=0.6`), then command-line flags.
//!
//! [`Config`] is the whole file, and only the command layer (`src/main.rs`
//! and `src/cli/`) holds it: each section's type lives with the layer it
//! configures and checks itself there, and the command layer hands every
//! layer its own sections. So this module imports the layers, and no layer
//! imports it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::bot::{BotConfig, DiscordConfig};
pub use crate::clip::ClipConfig;
pub use crate::engine::limits::MAX_WAIT;
use crate::engine::EngineConfig;
use crate::error::{Error, Result};
pub use crate::generator::GeneratorConfig;
pub use crate::mapper::MapperFileConfig;
use crate::metrics::MetricsConfig;
pub use crate::pipeline::{PipelineConfig, PipelineSetup};
use crate::queue::QueueConfig;
use crate::train::TrainConfig;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where fetched and converted weights live.
    pub models_dir: PathBuf,
    /// `auto`, `cpu` or `cuda:N`.
    pub device: String,
    pub generator: GeneratorConfig,
    pub clip: ClipConfig,
    pub mapper: MapperFileConfig,
    pub pipeline: PipelineConfig,
    pub engine: EngineConfig,
    pub discord: DiscordConfig,
    pub bot: BotConfig,
    pub metrics: MetricsConfig,
    pub queue: QueueConfig,
    pub train: TrainConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            models_dir: PathBuf::from("models"),
            device: "auto".into(),
            generator: GeneratorConfig::default(),
            clip: ClipConfig::default(),
            mapper: MapperFileConfig::default(),
            pipeline: PipelineConfig::default(),
            engine: EngineConfig::default(),
            discord: DiscordConfig::default(),
            bot: BotConfig::default(),
            metrics: MetricsConfig::default(),
            queue: QueueConfig::default(),
            train: TrainConfig::default(),
        }
    }
}

impl Config {
    /// Load from `path` if given (it must exist), else from `./config.toml`
    /// if present, then apply the environment.
    pub fn load(path: Option<&Path>) -> Result<Self> {
        let mut b = config::Config::builder();
        match path {
            Some(p) => {
                if !p.exists() {
                    return Err(Error::Config(format!(
                        "config file {} does not exist",
                        p.display()
                    )));
                }
                b = b.add_source(config::File::from(p).format(config::FileFormat::Toml));
            }
            None => {
                b = b.add_source(
                    config::File::from(Path::new("config.toml"))
                        .format(config::FileFormat::Toml)
                        .required(false),
                )
            }
        }
        Self::build(b.add_source(environment()))
    }

    /// The settings of `config.toml` text and environment variables `env`
    /// (names as in the process environment, `CLIP2GAN_...`), read and
    /// checked as [`Config::load`] does: what the fuzz tests drive.
    pub fn from_toml(text: &str, env: HashMap<String, String>) -> Result<Self> {
        let b = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(environment().source(Some(env.into_iter().collect())));
        Self::build(b)
    }

    fn build(b: config::ConfigBuilder<config::builder::DefaultState>) -> Result<Self> {
        let cfg: Config = b
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Each section checks itself; `[train]`, `[engine]` and the bot's
    /// sections are checked by the commands that use them, once their flags
    /// are applied.
    pub fn validate(&self) -> Result<()> {
        self.generator.validate()?;
        self.pipeline.validate()?;
        self.mapper.validate()
    }

    /// Every wait the settings in use make, by name: each section's, which
    /// its own check holds to [`MAX_WAIT`] (the queue's only with a queue).
    pub fn durations(&self) -> Vec<(&'static str, std::time::Duration)> {
        let mut d = self.engine.durations();
        d.extend(self.bot.durations());
        if !self.queue.url.is_empty() {
            d.extend(self.queue.durations());
        }
        d
    }

    /// What the benchmarks run on: the configured generator, pipeline and
    /// engine settings, and a mapper bank of `[mapper] pairs`.
    pub fn bench_setup(&self) -> crate::bench::BenchConfig {
        crate::bench::BenchConfig {
            models_dir: self.models_dir.clone(),
            generator: self.generator.clone(),
            settings: self.pipeline_setup().settings(),
            engine: self.engine.clone(),
            bank_pairs: self.mapper.pairs,
        }
    }

    /// What loading the pipeline needs, from `[clip]`, `[generator]`,
    /// `[mapper]`, `[pipeline]` and `models_dir`.
    pub fn pipeline_setup(&self) -> PipelineSetup {
        PipelineSetup {
            models_dir: self.models_dir.clone(),
            clip: self.clip.clone(),
            generator: self.generator.clone(),
            mapper: self.mapper.clone(),
            pipeline: self.pipeline.clone(),
        }
    }

    /// Locate (and download if needed) the configured CLIP checkpoint.
    pub fn clip_files(&self) -> Result<crate::clip::ClipFiles> {
        self.clip.files(&self.models_dir)
    }

    pub fn mapper_path(&self) -> PathBuf {
        self.mapper.path_in(&self.models_dir)
    }

    /// The captions of the fit's text shift (`[mapper] captions`, else the
    /// built-in face captions).
    pub fn captions(&self) -> Result<crate::train::captions::Captions> {
        self.mapper.captions_in(&self.models_dir)
    }

    /// How first use builds the mapper when there is none at
    /// [`Config::mapper_path`] (`None` when `[mapper] build` is off): the
    /// `[train]` settings in fit mode, on the run directory's pair cache.
    /// Fails if `[mapper] captions` cannot be read, before anything renders.
    pub fn first_use(&self) -> Result<Option<crate::train::warmup::Plan>> {
        if !self.mapper.build {
            return Ok(None);
        }
        let captions = self.captions()?;
        Ok(Some(crate::train::warmup::Plan {
            out: self.mapper_path(),
            run_dir: self.models_dir.join(&self.train.run_dir),
            train: TrainConfig {
                mode: crate::train::Mode::Fit,
                style_mixing: 0.0,
                ..self.train.clone()
            },
            clip_model: self.clip.model.clone(),
            captions,
            first_pairs: self.mapper.first_pairs,
            pairs: self.mapper.pairs,
        }))
    }

    /// Open the configured generator (see [`crate::generator::open`]).
    pub fn open_generator(
        &self,
        device: &candle_core::Device,
        auto_fetch: bool,
    ) -> Result<Box<dyn crate::generator::Generator>> {
        crate::generator::open(&self.generator, &self.models_dir, device, auto_fetch)
    }

    /// The StyleGAN2 checkpoint path, resolved against `models_dir`.
    pub fn checkpoint_path(&self) -> Option<PathBuf> {
        self.generator.checkpoint_path(&self.models_dir)
    }

    pub fn generator_dir(&self) -> PathBuf {
        self.generator.weights_dir(&self.models_dir)
    }
}

/// `CLIP2GAN_<KEY>` variables, `__` between levels.
fn environment() -> config::Environment {
    config::Environment::with_prefix("CLIP2GAN")
        .prefix_separator("_")
        .separator("__")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_and_env_override_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            "models_dir = \"/tmp/m\"\n[generator]\ntruncation = 0.5\n",
        )
        .unwrap();
        let c = Config::load(Some(&p)).unwrap();
        // The environment wins over the file (tests often run with it set).
        let want = std::env::var_os("CLIP2GAN_MODELS_DIR")
            .map_or_else(|| PathBuf::from("/tmp/m"), PathBuf::from);
        assert_eq!(c.models_dir, want);
        assert_eq!(c.generator.truncation, 0.5);
        assert_eq!(c.generator.max_batch, 4);
        std::fs::write(&p, "[generator]\ntruncation = 7.0\n").unwrap();
        assert!(Config::load(Some(&p))
            .unwrap_err()
            .to_string()
            .contains("truncation"));
        std::fs::write(&p, "[generator]\ntruncaton = 0.5\n").unwrap();
        assert!(Config::load(Some(&p)).is_err(), "unknown keys are rejected");
        // A key that no longer does anything still loads (older configs).
        std::fs::write(&p, "[engine]\nlatent_cache = 10000\n").unwrap();
        Config::load(Some(&p)).unwrap();
        assert!(Config::load(Some(&dir.path().join("missing.toml"))).is_err());
    }

    #[test]
    fn stylegan2_settings_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        let load = |body: &str| {
            std::fs::write(&p, format!("models_dir = \"/m\"\n[generator]\n{body}")).unwrap();
            Config::load(Some(&p)).map_err(|e| e.to_string())
        };
        let c = load("kind = \"stylegan2\"\ncheckpoint = \"ffhq.pt\"\nresolution = 1024\nchannel_multiplier = 2\n").unwrap();
        assert_eq!(c.checkpoint_path(), Some(c.models_dir.join("ffhq.pt")));
        let e = load("kind = \"stylegan2\"\n").unwrap_err();
        assert!(e.contains("needs generator.checkpoint"), "{e}");
        let e =
            load("kind = \"stylegan2\"\ncheckpoint = \"a.pt\"\nresolution = 1000\n").unwrap_err();
        assert!(e.contains("resolution = 1000 is not a power of two"), "{e}");
        let e = load("kind = \"stylegan2\"\ncheckpoint = \"a.pt\"\nchannel_multiplier = 0\n")
            .unwrap_err();
        assert!(e.contains("channel_multiplier must be at least 1"), "{e}");
        let e = load("kind = \"biggan\"\n").unwrap_err();
        assert!(e.contains("\"stylegan2\""), "{e}");
    }
}
