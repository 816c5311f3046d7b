//! StyleGAN2 generators (config-f and the ADA variant) loaded from the
//! checkpoints people already have, natively and without running any code
//! they carry: rosinality `.pt` files (zip or PyTorch < 1.6's legacy
//! serialisation), NVIDIA `.pkl` network pickles, and safetensors in
//! NVIDIA's or rosinality's naming. `load` reads and checks a checkpoint,
//! `model` runs it on the kernels of [`crate::ops`] (FIR resampling, dense
//! conv on gemm, the fused epilogue).

pub mod load;
pub mod model;

pub use load::{Arch, Checkpoint, LoadOptions, Naming};
pub use model::StyleGan2;

use std::path::Path;

use candle_core::Device;

use crate::error::{Error, Result};
use crate::generator::GeneratorConfig;

/// Open the checkpoint named by `generator.checkpoint`, checked against the
/// configured resolution and channel multiplier if those are set.
pub fn open(cfg: &GeneratorConfig, models_dir: &Path, device: &Device) -> Result<StyleGan2> {
    let path = cfg.checkpoint_path(models_dir).ok_or_else(|| {
        Error::Config(
            "generator.kind = \"stylegan2\" needs generator.checkpoint = \"path/to/model.pt\" (or .pkl, .safetensors)".into(),
        )
    })?;
    let opts = LoadOptions {
        resolution: cfg.resolution,
        channel_multiplier: cfg.channel_multiplier,
        conv_clamp: cfg.conv_clamp,
    };
    StyleGan2::load(&path, &opts, device)
}
