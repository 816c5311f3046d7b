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
    pub mapper: MapperSection,
    pub train: crate::train::TrainConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapperSection {
    /// The trained mapper (`clip2gan train` writes it, `imagine` reads it);
    /// relative to the working directory unless absolute.
    pub path: PathBuf,
}

impl Default for MapperSection {
    fn default() -> Self {
        Self {
            path: PathBuf::from("models/mapper.safetensors"),
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
    /// Hub download cache, relative to `models_dir` unless absolute.
    pub cache_dir: PathBuf,
    /// Never touch the network; use the cache only (also: HF_HUB_OFFLINE=1).
    pub offline: bool,
}

impl Default for ClipConfig {
    fn default() -> Self {
        Self {
            model: "openai/clip-vit-base-patch32".into(),
            revision: "main".into(),
            cache_dir: PathBuf::from("hf"),
            offline: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeneratorConfig {
    /// Generator architecture; `mobilestylegan` is the one built in.
    pub kind: String,
    /// Directory of the converted weights, relative to `models_dir` unless absolute.
    pub weights: PathBuf,
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
            mapper: MapperSection::default(),
            train: crate::train::TrainConfig::default(),
        }
    }
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            kind: "mobilestylegan".into(),
            weights: PathBuf::from("mobilestylegan-ffhq"),
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
        if self.generator.max_batch == 0 {
            return Err(Error::Config(
                "generator.max_batch must be at least 1".into(),
            ));
        }
        if self.generator.kind != "mobilestylegan" {
            return Err(Error::Config(format!(
                "generator.kind = {:?} is not available; this build has \"mobilestylegan\"",
                self.generator.kind
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
            &self.models_dir.join(&c.cache_dir),
            c.offline,
        )
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
        // The environment overrides the file (tests run with CLIP2GAN_MODELS_DIR).
        if std::env::var_os("CLIP2GAN_MODELS_DIR").is_none() {
            assert_eq!(c.models_dir, PathBuf::from("/tmp/m"));
        }
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
}
