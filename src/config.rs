//! Settings: built-in defaults, then `config.toml` (or the file given with
//! `--config`), then environment variables `CLIP2GAN_<KEY>` with `__` between
//! levels (e.g. `CLIP2GAN_GENERATOR__TRUNCATION=0.6`), then command-line flags.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

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
    pub engine: crate::engine::EngineConfig,
    pub discord: crate::bot::DiscordConfig,
    pub bot: crate::bot::BotConfig,
    pub train: crate::train::TrainConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapperFileConfig {
    /// The trained mapper `imagine` and `edit` use, relative to `models_dir`
    /// unless absolute.
    pub path: PathBuf,
    /// No mapper at `path`: build one on first use (a pair bank of
    /// generated faces and the closed-form fit, see `train --mode fit`).
    pub build: bool,
    /// Pairs of the first fit (serving starts after it).
    pub first_pairs: usize,
    /// The bank grows to this many pairs while the bot is idle, and the
    /// mapper is refitted at each doubling.
    pub pairs: usize,
}

impl Default for MapperFileConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("mapper.safetensors"),
            build: true,
            first_pairs: 512,
            pairs: 2048,
        }
    }
}

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
}

impl Default for PipelineConfig {
    fn default() -> Self {
        let s = crate::pipeline::Settings::default();
        Self {
            truncation: s.truncation,
            variation_xi: s.variation_xi,
            fine_mix: s.fine_mix,
            sample_temperature: s.sample_temperature,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClipConfig {
    /// A local directory in transformers layout, or a Hugging Face repo id.
    pub model: String,
    /// Hub revision (branch, tag or commit) when `model` is a repo id.
    pub revision: String,
    /// Hub download cache, relative to `models_dir` unless absolute. Unset:
    /// the Python client's (`HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`), so that its downloads are shared.
    pub cache_dir: Option<PathBuf>,
    /// Never touch the network; use the cache only (also: HF_HUB_OFFLINE=1).
    pub offline: bool,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            model: "openai/clip-vit-base-patch32".into(),
            revision: "main".into(),
            cache_dir: None,
            offline: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Generator architecture: `mobilestylegan` (default, fetched
    /// automatically) or `stylegan2` (a checkpoint you provide).
    pub kind: String,
    /// Directory of the converted weights, relative to `models_dir` unless absolute.
    pub weights: PathBuf,
    /// `stylegan2`: the checkpoint file (`.pt` or `.safetensors`), relative
    /// to `models_dir` unless absolute.
    pub checkpoint: Option<PathBuf>,
    /// `stylegan2`: if set, refuse a checkpoint of another resolution.
    pub resolution: Option<usize>,
    /// `stylegan2`: if set, refuse a checkpoint whose channels differ from
    /// this channel multiplier's (2 = config-f).
    pub channel_multiplier: Option<usize>,
    /// `stylegan2`: clamp conv outputs to +-X (ADA's `conv_clamp`); 0 = off.
    /// Unset: the checkpoint's metadata, else off.
    pub conv_clamp: Option<f64>,
    /// Default truncation psi for seeds and prompts.
    pub truncation: f64,
    /// Images per forward pass; bounds memory (about 1 GB per 1024 px image on CPU).
    pub max_batch: usize,
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
            engine: crate::engine::EngineConfig::default(),
            discord: crate::bot::DiscordConfig::default(),
            bot: crate::bot::BotConfig::default(),
            train: crate::train::TrainConfig::default(),
        }
    }
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            kind: "mobilestylegan".into(),
            weights: PathBuf::from("mobilestylegan-ffhq"),
            checkpoint: None,
            resolution: None,
            channel_multiplier: None,
            conv_clamp: None,
            truncation: 0.7,
            max_batch: 8,
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
        b = b.add_source(
            config::Environment::with_prefix("CLIP2GAN")
                .prefix_separator("_")
                .separator("__"),
        );
        let cfg: Config = b
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<()> {
        crate::generator::check_truncation(self.generator.truncation)?;
        let p = &self.pipeline;
        if !(0.0..=1.0).contains(&p.variation_xi)
            || !(0.0..=1.0).contains(&p.fine_mix)
            || !(0.0..=1.5).contains(&p.sample_temperature)
        {
            return Err(Error::Config(
                "pipeline.variation_xi and fine_mix must be in [0, 1], sample_temperature in [0, 1.5]"
                    .into(),
            ));
        }
        crate::generator::check_truncation(p.truncation)?;
        if self.generator.max_batch == 0 {
            return Err(Error::Config(
                "generator.max_batch must be at least 1".into(),
            ));
        }
        let g = &self.generator;
        match g.kind.as_str() {
            "mobilestylegan" => {}
            "stylegan2" => {
                if g.checkpoint.is_none() {
                    return Err(Error::Config(
                        "generator.kind = \"stylegan2\" needs generator.checkpoint (a .pt or .safetensors file)".into(),
                    ));
                }
                if let Some(r) = g.resolution {
                    crate::generator::stylegan2::load::check_resolution(r)
                        .map_err(|_| Error::Config(format!(
                            "generator.resolution = {r} is not a power of two between 4 and 4096"
                        )))?;
                }
                if g.channel_multiplier == Some(0) {
                    return Err(Error::Config(
                        "generator.channel_multiplier must be at least 1 (2 = config-f)".into(),
                    ));
                }
                if let Some(c) = g.conv_clamp {
                    if !c.is_finite() || c < 0.0 {
                        return Err(Error::Config(format!(
                            "generator.conv_clamp = {c}: use a positive number, or 0 for none"
                        )));
                    }
                }
            }
            other => {
                return Err(Error::Config(format!(
                    "generator.kind = {other:?} is not available; this build has \"mobilestylegan\" and \"stylegan2\""
                )))
            }
        }
        let m = &self.mapper;
        if m.first_pairs < 32 || m.pairs < m.first_pairs {
            return Err(Error::Config(format!(
                "mapper.first_pairs = {} must be at least 32 and mapper.pairs = {} at least that",
                m.first_pairs, m.pairs
            )));
        }
        // [train] is checked by `clip2gan train` once its flags are applied.
        Ok(())
    }

    /// Locate (and download if needed) the configured CLIP checkpoint.
    pub fn clip_files(&self) -> Result<crate::clip::ClipFiles> {
        let c = &self.clip;
        crate::clip::hub::resolve(
            &c.model,
            &c.revision,
            c.cache_dir
                .as_ref()
                .map(|d| self.models_dir.join(d))
                .as_deref(),
            c.offline,
        )
    }

    pub fn mapper_path(&self) -> PathBuf {
        self.models_dir.join(&self.mapper.path)
    }

    /// How first use builds the mapper when there is none at
    /// [`Config::mapper_path`] (`None` when `[mapper] build` is off): the
    /// `[train]` settings in fit mode, on the run directory's pair cache.
    pub fn first_use(&self) -> Option<crate::train::warmup::Plan> {
        self.mapper.build.then(|| crate::train::warmup::Plan {
            out: self.mapper_path(),
            run_dir: self.models_dir.join(&self.train.run_dir),
            train: crate::train::TrainConfig {
                mode: crate::train::Mode::Fit,
                style_mixing: 0.0,
                ..self.train.clone()
            },
            clip_model: self.clip.model.clone(),
            first_pairs: self.mapper.first_pairs,
            pairs: self.mapper.pairs,
        })
    }

    /// Pipeline settings from `[pipeline]` and `[generator]`.
    pub fn pipeline_settings(&self) -> crate::pipeline::Settings {
        crate::pipeline::Settings {
            truncation: self.pipeline.truncation,
            variation_xi: self.pipeline.variation_xi,
            fine_mix: self.pipeline.fine_mix,
            sample_temperature: self.pipeline.sample_temperature,
            max_batch: self.generator.max_batch,
            noise: crate::generator::NoiseMode::Fixed,
        }
    }

    /// The StyleGAN2 checkpoint path, resolved against `models_dir`.
    pub fn checkpoint_path(&self) -> Option<PathBuf> {
        self.generator
            .checkpoint
            .as_ref()
            .map(|c| self.models_dir.join(c))
    }

    pub fn generator_dir(&self) -> PathBuf {
        self.models_dir.join(&self.generator.weights)
    }
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
        assert_eq!(c.generator.max_batch, 8);
        std::fs::write(&p, "[generator]\ntruncation = 7.0\n").unwrap();
        assert!(Config::load(Some(&p))
            .unwrap_err()
            .to_string()
            .contains("truncation"));
        std::fs::write(&p, "[generator]\ntruncaton = 0.5\n").unwrap();
        assert!(Config::load(Some(&p)).is_err(), "unknown keys are rejected");
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
