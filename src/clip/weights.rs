//! Opening a CLIP checkpoint's weights without keeping the file resident.
//!
//! On the CPU the fast path copies every tensor it uses out of the
//! checkpoint. Through a plain memory map each tensor's pages would stay
//! in the process's resident set after the copy (ViT-B/32: 590 MB of file
//! pages beside the 620 MB copy, the peak of loading 1.2 GB), so here each
//! tensor's pages are dropped from the mapping once it is read (the page
//! cache keeps them; a later read maps them again), and the mapping itself
//! is closed after loading. The portable model and the differentiable
//! tower, rarely needed on the CPU, open the file again ([`Weights`]).

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use crate::error::{Error, Result};

/// Where the portable model's weights come from.
pub(super) enum Weights {
    /// In memory: random weights, or a device whose model holds them anyway.
    Held(VarBuilder<'static>),
    /// The checkpoint file, opened again when needed.
    File(PathBuf),
}

impl Weights {
    pub(super) fn open(&self, device: &Device) -> Result<VarBuilder<'static>> {
        match self {
            Weights::Held(vb) => Ok(vb.clone()),
            Weights::File(path) => open(path, device, false).map_err(|e| Error::BadWeights {
                file: path.display().to_string(),
                detail: format!("cannot read the weights: {e}"),
            }),
        }
    }
}

/// A checkpoint file as f32 weights: PyTorch's (`.bin`, `.pt`, `.pth`) read
/// whole, safetensors memory-mapped. `release`: each safetensors tensor's
/// pages leave the resident set once it has been read (for a loader that
/// copies what it reads).
pub(super) fn open(
    path: &Path,
    device: &Device,
    release: bool,
) -> candle_core::Result<VarBuilder<'static>> {
    let is_pth = path
        .extension()
        .is_some_and(|e| e == "bin" || e == "pt" || e == "pth");
    if is_pth {
        return VarBuilder::from_pth(path, DType::F32, device);
    }
    if !release {
        // SAFETY: the file is memory-mapped read-only; it must not be
        // modified while loaded (the same contract as every mmap loader).
        return unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) };
    }
    // SAFETY: as above.
    let file = unsafe { MmapedSafetensors::new(path)? };
    Ok(VarBuilder::from_backend(
        Box::new(Releasing(file)),
        DType::F32,
        device.clone(),
    ))
}

/// A memory-mapped safetensors file whose tensors' pages are released
/// from the mapping once read.
struct Releasing(MmapedSafetensors);

impl Releasing {
    fn load(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        use candle_core::safetensors::Load;
        let view = self.0.get(name)?;
        let tensor = view.load(dev)?.to_dtype(dtype)?;
        release(view.data());
        Ok(tensor)
    }
}

/// Drop the whole pages of `bytes` (a read-only file mapping) from the
/// resident set; reading them again maps them from the page cache.
fn release(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        let start = (bytes.as_ptr() as usize).div_ceil(page) * page;
        let end = (bytes.as_ptr() as usize + bytes.len()) / page * page;
        if end > start {
            // SAFETY: the range lies inside a private read-only file mapping
            // that outlives this call; MADV_DONTNEED on it only discards
            // pages that are re-read from the file on the next access.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
}

impl SimpleBackend for Releasing {
    fn get(
        &self,
        s: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.load(name, dtype, dev)?;
        if tensor.shape() != &s {
            candle_core::bail!(
                "tensor `{name}` has shape {:?}, expected {:?}",
                tensor.dims(),
                s.dims()
            );
        }
        Ok(tensor)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.load(name, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.get(name).is_ok()
    }
}
