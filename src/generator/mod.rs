//! Image generators behind one trait, so the pipeline, the engine and the bot
//! never name a concrete architecture.
//!
//! Latent spaces: `z` (Gaussian input of the mapping network), `w` (one style
//! vector) and `W+` (one style vector per style input of the synthesis
//! network, `[n, num_styles, w_dim]`).
//!
//! - [`config`]: the `[generator]` section and `open`.
//! - [`mobilestylegan`], [`stylegan2`]: the two architectures.
//! - [`latent`]: latent files (z, w, W+) and turning any of them into W+.
//! - [`parity`]: a generator against the reference fixtures, and the tensor
//!   differences the tests measure with.

pub mod config;
pub mod latent;
pub mod mobilestylegan;
pub mod parity;
pub mod stylegan2;

pub use config::GeneratorConfig;

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// How the per-layer noise inputs are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NoiseMode {
    /// The fixed buffers stored with the weights: deterministic output.
    #[default]
    Fixed,
    /// Fresh Gaussian noise from this seed, scaled like the stored buffers.
    Random(u64),
}

pub trait Generator: Send + Sync {
    /// Short identifier stored with mappers trained for this generator.
    fn id(&self) -> &str;
    fn z_dim(&self) -> usize;
    fn w_dim(&self) -> usize;
    /// Number of style vectors in W+.
    fn num_styles(&self) -> usize;
    /// Side of the square output image in pixels.
    fn resolution(&self) -> usize;
    fn device(&self) -> &Device;
    /// Mean of the mapping network's output, `[w_dim]`: the truncation centre.
    fn w_avg(&self) -> &Tensor;
    /// `z [n, z_dim]` -> `w [n, w_dim]`.
    fn map(&self, z: &Tensor) -> Result<Tensor>;
    /// `W+ [n, num_styles, w_dim]` -> images `[n, 3, R, R]`, RGB, about [-1, 1].
    fn synthesize(&self, wplus: &Tensor, noise: NoiseMode) -> Result<Tensor>;

    /// Style indices of the coarse (pose, face shape), middle (features,
    /// hair style) and fine (colour, texture) layers, in that order. The
    /// default splits W+ at 30% and 57%, which for StyleGAN-like 1024 px
    /// generators puts <= 16 px in coarse and >= 128 px in fine.
    fn layer_groups(&self) -> [std::ops::Range<usize>; 3] {
        let n = self.num_styles();
        let a = ((n as f64) * 0.30).round() as usize;
        let b = ((n as f64) * 0.57).round() as usize;
        [0..a, a..b, b..n]
    }

    /// Repeat each `w [n, w_dim]` for every style input: `[n, num_styles, w_dim]`.
    fn broadcast_w(&self, w: &Tensor) -> Result<Tensor> {
        let (n, d) = w.dims2()?;
        Ok(w.unsqueeze(1)?
            .broadcast_as((n, self.num_styles(), d))?
            .contiguous()?)
    }

    /// Truncation trick: `w_avg + psi * (w - w_avg)`, for `w` or `W+`.
    fn truncate(&self, w: &Tensor, psi: f64) -> Result<Tensor> {
        if psi == 1.0 {
            return Ok(w.clone());
        }
        let avg = self.w_avg();
        Ok(((w.broadcast_sub(avg)? * psi)?.broadcast_add(avg))?)
    }
}

/// Standard-normal `[n, dim]` from a seed (in [`crate::rng`], which the
/// kernel layer's tests use too).
pub use crate::rng::seeded_normal;

/// Latent `z` for each of `count` seeds starting at `seed` (seed, seed+1, ...),
/// so image k of a batch is the same as a single run with seed+k.
pub fn z_for_seeds(seed: u64, count: usize, dim: usize, device: &Device) -> Result<Tensor> {
    let rows = (0..count)
        .map(|k| seeded_normal(seed.wrapping_add(k as u64), 1, dim, device))
        .collect::<Result<Vec<_>>>()?;
    Ok(Tensor::cat(&rows, 0)?)
}

/// Refuse a `z` that is not `[n, z_dim]` (both generators' `map`).
pub(crate) fn check_z(z: &Tensor, z_dim: usize) -> Result<()> {
    let (_, d) = z.dims2()?;
    if d != z_dim {
        return Err(Error::invalid(format!(
            "z must have {z_dim} columns, got {d}"
        )));
    }
    Ok(())
}

/// Check a truncation value.
pub fn check_truncation(psi: f64) -> Result<()> {
    if !psi.is_finite() || !(0.0..=2.0).contains(&psi) {
        return Err(Error::invalid(format!(
            "truncation {psi} is out of range: use a value in [0, 2] (1 = none, 0.7 = typical)"
        )));
    }
    Ok(())
}

/// Refuse latents with NaN or infinite values: they would produce a black or
/// garbage image with no hint why.
pub fn check_finite(t: &Tensor, what: &str) -> Result<()> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::invalid(format!(
            "{what} has a non-finite value ({}) at flat index {i}",
            v[i]
        )));
    }
    Ok(())
}

/// Open the configured generator (`generator.kind`), fetching its weights
/// first if they are missing and `auto_fetch` is set (MobileStyleGAN only:
/// StyleGAN2 checkpoints are the user's own). Relative paths in `cfg` are
/// resolved against `models_dir`.
pub fn open(
    cfg: &GeneratorConfig,
    models_dir: &Path,
    device: &Device,
    auto_fetch: bool,
) -> Result<Box<dyn Generator>> {
    if cfg.kind == "stylegan2" {
        return Ok(Box::new(stylegan2::open(cfg, models_dir, device)?));
    }
    let dir = cfg.weights_dir(models_dir);
    if auto_fetch {
        mobilestylegan::fetch::ensure(models_dir, &dir)?;
    }
    Ok(Box::new(
        mobilestylegan::MobileStyleGan::load(&dir, device)?.with_high_res_chunk(cfg.high_res_chunk),
    ))
}
