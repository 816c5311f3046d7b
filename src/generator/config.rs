//! The `[generator]` section: which network to open and from where. It
//! checks itself here, beside its type, so that the generator layer can be
//! opened (and tested) without the rest of the application's settings.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

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
    /// `mobilestylegan`: images per pass through the layers at 256 px and
    /// above, within a batch (0 = the whole batch). Those layers hold
    /// nearly all of a batch's working memory (about 165 MB per 1024 px
    /// image) and gain nothing from batching; the low-resolution layers
    /// still run the whole batch. `engine.memory_limit` may lower it.
    pub high_res_chunk: usize,
    /// What the generator makes, one noun ("face", "cat", "car"): the edit
    /// phrases ("a photo of a cat with ...") and the bot's texts use it.
    pub subject: String,
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
            max_batch: 4,
            high_res_chunk: 1,
            subject: "face".into(),
        }
    }
}

impl GeneratorConfig {
    pub fn validate(&self) -> Result<()> {
        super::check_truncation(self.truncation)?;
        let s = self.subject.trim();
        if s.is_empty()
            || s != self.subject
            || s.chars().count() > 22
            || !s.chars().all(|c| c.is_alphabetic() || c == ' ' || c == '-')
        {
            return Err(Error::Config(format!(
                "generator.subject = {:?}: use the noun for what the generator makes, in letters \
                 (up to 22), e.g. \"face\", \"cat\" or \"car\"",
                self.subject
            )));
        }
        if self.max_batch == 0 {
            return Err(Error::Config(
                "generator.max_batch must be at least 1".into(),
            ));
        }
        match self.kind.as_str() {
            "mobilestylegan" => {}
            "stylegan2" => {
                if self.checkpoint.is_none() {
                    return Err(Error::Config(
                        "generator.kind = \"stylegan2\" needs generator.checkpoint (a .pt or .safetensors file)".into(),
                    ));
                }
                if let Some(r) = self.resolution {
                    super::stylegan2::load::check_resolution(r)
                        .map_err(|_| Error::Config(format!(
                            "generator.resolution = {r} is not a power of two between 4 and 4096"
                        )))?;
                }
                if self.channel_multiplier == Some(0) {
                    return Err(Error::Config(
                        "generator.channel_multiplier must be at least 1 (2 = config-f)".into(),
                    ));
                }
                if let Some(c) = self.conv_clamp {
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
        Ok(())
    }

    /// The converted MobileStyleGAN weights, resolved against `models_dir`.
    pub fn weights_dir(&self, models_dir: &Path) -> PathBuf {
        models_dir.join(&self.weights)
    }

    /// The StyleGAN2 checkpoint path, resolved against `models_dir`.
    pub fn checkpoint_path(&self, models_dir: &Path) -> Option<PathBuf> {
        self.checkpoint.as_ref().map(|c| models_dir.join(c))
    }

    /// The output side known before loading: always for MobileStyleGAN,
    /// for StyleGAN2 only when `resolution` is configured.
    pub fn known_resolution(&self) -> Option<usize> {
        match self.kind.as_str() {
            "mobilestylegan" => Some(1024),
            _ => self.resolution,
        }
    }
}
