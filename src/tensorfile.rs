//! Named tensors with string metadata in one safetensors file, written
//! atomically (a crash or a full disk leaves the previous file intact).
//! Used for mapper files, training checkpoints and the pair cache.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// Tensors and metadata of one file.
pub struct TensorFile {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

/// Serialise `tensors` (any dtype, any device) with `metadata` and write
/// the file atomically.
pub fn write(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<()> {
    write_atomic(path, &serialize(tensors, metadata)?)
}

/// The safetensors bytes of `tensors` with `metadata`.
pub fn serialize(
    tensors: &[(String, Tensor)],
    metadata: HashMap<String, String>,
) -> Result<Vec<u8>> {
    let cpu = tensors
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.to_device(&Device::Cpu)?.contiguous()?)))
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(cpu, Some(metadata))
        .map_err(|e| Error::invalid(format!("cannot serialise tensors: {e}")))
}

/// Read a file written by [`write`] (or any safetensors file).
pub fn read(path: &Path, device: &Device) -> Result<TensorFile> {
    let bytes = std::fs::read(path).map_err(|err| Error::Read {
        path: path.to_path_buf(),
        err,
    })?;
    parse(&bytes, path, device)
}

/// Parse safetensors bytes read from `path` (named in errors).
pub fn parse(bytes: &[u8], path: &Path, device: &Device) -> Result<TensorFile> {
    decode(bytes, device).map_err(|e| Error::BadWeights {
        file: path.display().to_string(),
        detail: format!("not a readable safetensors file: {e}"),
    })
}

/// Tensors and metadata of safetensors bytes: the one safetensors reader of
/// the crate (mappers, checkpoints, the pair cache and both generators' weight
/// files). The error is the reason alone, for callers to word for their files.
pub fn decode(bytes: &[u8], device: &Device) -> std::result::Result<TensorFile, String> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let tensors =
        candle_core::safetensors::load_buffer(bytes, device).map_err(|e| e.to_string())?;
    Ok(TensorFile { tensors, metadata })
}

impl TensorFile {
    /// A tensor that must be present.
    pub fn take(&mut self, name: &str, path: &Path) -> Result<Tensor> {
        self.tensors.remove(name).ok_or_else(|| Error::BadWeights {
            file: path.display().to_string(),
            detail: format!("tensor `{name}` is missing"),
        })
    }
}
