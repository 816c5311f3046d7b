//! Comparison of a generator with the committed reference fixtures
//! (tests/fixtures/mobilestylegan, made by make_fixtures.py with OpenVINO).
//! Used by the parity tests and by `clip2gan parity generator`, which runs
//! the same check on any device (the GPU check script uses it).

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Serialize;

use crate::error::{Error, Result};
use crate::generator::{Generator, NoiseMode};
use crate::npy;

/// Top-left corners of the 16x16 reference crops.
pub const CROPS: [(usize, usize); 4] = [(0, 0), (504, 504), (1008, 1008), (200, 760)];
pub const W_TOLERANCE: f32 = 1e-4;
pub const IMAGE_MAX_TOLERANCE: f32 = 1e-2;
pub const IMAGE_MEAN_TOLERANCE: f32 = 1e-3;

#[derive(Debug, Clone, Serialize)]
pub struct ParityReport {
    pub device: String,
    pub w_max_abs: f32,
    pub crops_max_abs: f32,
    pub crops_mean_abs: f32,
    pub image64_max_abs: f32,
    pub image64_mean_abs: f32,
    pub pass: bool,
}

fn read(dir: &Path, name: &str) -> Result<npy::Array> {
    npy::read_f32(&dir.join(name))
}

/// (max abs, mean abs) difference.
pub fn diff(a: &[f32], b: &[f32]) -> Result<(f32, f32)> {
    if a.len() != b.len() {
        return Err(Error::invalid(format!("length {} vs {}", a.len(), b.len())));
    }
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        if !d.is_finite() {
            return Err(Error::invalid("non-finite value in the generator output"));
        }
        max = max.max(d);
        sum += d as f64;
    }
    Ok((max, (sum / a.len().max(1) as f64) as f32))
}

/// Largest absolute difference of two tensors of one shape: how the fast
/// kernels are held to their portable paths, and those to candle's own.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    if a.dims() != b.dims() {
        return Err(Error::invalid(format!(
            "shapes {:?} and {:?} differ",
            a.dims(),
            b.dims()
        )));
    }
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar()?)
}

/// Map the fixture z, synthesise, and compare w, the crops and the 64 px images.
pub fn generator_vs_fixtures(g: &dyn Generator, dir: &Path) -> Result<ParityReport> {
    let z = read(dir, "z.npy")?;
    let n = z.shape[0];
    let z = Tensor::from_vec(z.data, (n, 512), g.device())?;
    let w = g.map(&z)?;
    let (w_max, _) = diff(
        &w.to_device(&Device::Cpu)?.flatten_all()?.to_vec1()?,
        &read(dir, "w.npy")?.data,
    )?;
    let img = g
        .synthesize(&g.broadcast_w(&w)?, NoiseMode::Fixed)?
        .to_device(&Device::Cpu)?;
    let mut crops = Vec::new();
    for i in 0..n {
        for (y, x) in CROPS {
            let c = img.get(i)?.narrow(1, y, 16)?.narrow(2, x, 16)?;
            crops.extend(c.flatten_all()?.to_vec1::<f32>()?);
        }
    }
    let (c_max, c_mean) = diff(&crops, &read(dir, "crops.npy")?.data)?;
    let small = img.avg_pool2d(16)?.flatten_all()?.to_vec1::<f32>()?;
    let (s_max, s_mean) = diff(&small, &read(dir, "image_64.npy")?.data)?;
    Ok(ParityReport {
        device: crate::device::describe(g.device()),
        w_max_abs: w_max,
        crops_max_abs: c_max,
        crops_mean_abs: c_mean,
        image64_max_abs: s_max,
        image64_mean_abs: s_mean,
        pass: w_max <= W_TOLERANCE
            && c_max <= IMAGE_MAX_TOLERANCE
            && c_mean <= IMAGE_MEAN_TOLERANCE
            && s_max <= IMAGE_MAX_TOLERANCE
            && s_mean <= IMAGE_MEAN_TOLERANCE,
    })
}
