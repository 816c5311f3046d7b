//! Reading StyleGAN2 checkpoints into one neutral description of the network
//! (raw parameters, before their run-time gains, in NVIDIA's conventions).
//!
//! Two tensor layouts are recognised, in every file format:
//!
//! - **NVIDIA** (stylegan2-ada-pytorch, stylegan3's StyleGAN2, and the
//!   official TF weights after NVIDIA's `legacy.py`): `mapping.fc{i}.*`,
//!   `mapping.w_avg`, `synthesis.b{res}.{const,conv0,conv1,torgb}.*`: the
//!   names of `G_ema.state_dict()`, which walking a `.pkl`'s network
//!   records yields.
//! - **rosinality** (stylegan2-pytorch): `style.{i}.*`, `input.input`,
//!   `conv1`, `to_rgb1`, `convs.{j}`, `to_rgbs.{k}`, `noises.noise_{j}`;
//!   in a `.pt` under the `g_ema` key, with `latent_avg` next to it.
//!
//! Everything (resolution, mapping depth, z/w sizes, channels per block) is
//! read off the tensor shapes. Settings that no tensor records (ADA's
//! `conv_clamp`, the mapping learning-rate multiplier) come from a `.pkl`'s
//! module attributes or safetensors metadata as the converter writes it,
//! then from the configuration, else from NVIDIA's defaults (no clamp, 0.01).
//!
//! By job: this file opens a file and hands it to its format's reader,
//! giving a [`Checkpoint`]; [`pickle`] is the pickle reader that runs no
//! code; [`torch`] reads PyTorch's zip and legacy serialisations and
//! pickled tensors; [`nvidia`] walks NVIDIA's network records; [`formats`]
//! picks the generator's tensors out of a PyTorch file; [`naming`] knows
//! both layouts' tensor names; [`arch`] reads the architecture off the
//! shapes and checks it; [`random`] writes random weights.

mod arch;
mod formats;
mod naming;
mod nvidia;
mod pickle;
mod random;
mod torch;

pub use arch::{block_resolutions, check_resolution, Arch, LoadOptions, DEFAULT_MAPPING_LR};
pub(crate) use arch::{RawConv, RawParams, RawRgb};
pub use naming::Naming;
pub use random::random_checkpoint;

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// The tensors (f32, CPU) and metadata of one checkpoint file.
pub struct Checkpoint {
    file: String,
    tensors: HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
}

/// For the files only NVIDIA's or PyTorch's own code can read.
const CONVERT_HINT: &str =
    "convert it with tools/stylegan2_to_safetensors.py (see README.md, \"StyleGAN2 generators\")";

impl Checkpoint {
    /// Read a `.pt`/`.pth` (PyTorch zip or legacy serialisation, a state
    /// dict or `{"g_ema": ...}`), an NVIDIA `.pkl` (`G_ema`) or a
    /// `.safetensors` file. The format is told by the content; nothing in
    /// a pickle is run.
    pub fn open(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        if !path.exists() {
            return Err(Error::MissingWeights {
                path: path.to_path_buf(),
                hint: "Set generator.checkpoint to a StyleGAN2 checkpoint: a .pt (rosinality's, with g_ema), an NVIDIA .pkl or a .safetensors (see README.md, \"StyleGAN2 generators\").".into(),
            });
        }
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let bytes = std::fs::read(path).map_err(|err| Error::Read {
            path: path.to_path_buf(),
            err,
        })?;
        let torch_like = bytes.starts_with(b"PK") || bytes.first() == Some(&0x80);
        if ext == "safetensors" || (!torch_like && !matches!(ext.as_str(), "pt" | "pth" | "pkl")) {
            let crate::tensorfile::TensorFile { tensors, metadata } =
                crate::tensorfile::decode(&bytes, &Device::Cpu).map_err(|e| {
                    Error::BadCheckpoint {
                        file: file.clone(),
                        detail: format!("cannot read safetensors: {e}"),
                    }
                })?;
            return Ok(Self {
                file,
                tensors,
                metadata,
            });
        }
        let (tensors, metadata) = formats::read_torch(&file, &bytes)?;
        Ok(Self {
            file,
            tensors,
            metadata,
        })
    }

    /// A checkpoint from tensors already in memory (random weights, tests).
    pub fn from_tensors(
        name: &str,
        tensors: HashMap<String, Tensor>,
        metadata: HashMap<String, String>,
    ) -> Self {
        Self {
            file: name.into(),
            tensors,
            metadata,
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    fn bad(&self, detail: String) -> Error {
        Error::BadCheckpoint {
            file: self.file.clone(),
            detail,
        }
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Dims of a tensor, if present.
    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.dims().to_vec())
    }

    /// The named tensor as f32 in `shape`. Layouts differ only by size-1
    /// dimensions (`[1, O, I, k, k]` vs `[O, I, k, k]`, a bias `[1, 3, 1, 1]`
    /// vs `[3]`), so shapes are compared without them.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            self.bad(format!(
                "tensor `{name}` is missing; the checkpoint is incomplete or of another architecture"
            ))
        })?;
        let squeeze = |d: &[usize]| d.iter().copied().filter(|&x| x != 1).collect::<Vec<_>>();
        if squeeze(t.dims()) != squeeze(shape) {
            return Err(self.bad(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?} (channel counts must chain from block to block)",
                t.dims()
            )));
        }
        Ok(t.to_dtype(DType::F32)?.reshape(shape)?)
    }

    fn scalar(&self, name: &str) -> Result<f32> {
        Ok(self.get(name, &[1])?.to_vec1::<f32>()?[0])
    }

    /// Keys under `g_ema.` / `G_ema.` when a whole training state was saved.
    fn strip_ema_prefix(&mut self) {
        for prefix in ["g_ema.", "G_ema."] {
            if self.tensors.keys().any(|k| k.starts_with(prefix)) {
                self.tensors = self
                    .tensors
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
                    .collect();
                return;
            }
        }
    }
}
