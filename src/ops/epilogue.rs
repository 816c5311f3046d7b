//! The tail of a styled conv in both generators, as one in-place pass on the
//! CPU: `clamp(gain * lrelu(y * scale + noise * strength + bias))`.
//!
//! StyleGAN2 uses all of it (demodulation as the scale, leaky ReLU times
//! sqrt 2, ADA's optional clamp); MobileStyleGAN only noise (already scaled),
//! bias and a plain leaky ReLU. The terms a caller leaves out cost nothing
//! and change no bit: the kernel multiplies by exactly 1 and clamps to
//! infinity, the portable path skips them.

use std::sync::Arc;

use candle_core::{CpuStorage, InplaceOp1, Layout, Tensor};
use rayon::prelude::*;

use super::{fast_path, values};
use crate::error::{Error, Result};

/// What follows the conv; see the module documentation.
pub struct Epilogue<'a> {
    /// Per sample and channel `[n, c]` (StyleGAN2's demodulation).
    pub scale: Option<&'a Tensor>,
    /// `[n or 1, 1, h, w]` noise and the factor it is multiplied by.
    pub noise: Option<(&'a Tensor, f32)>,
    /// `[c]`
    pub bias: &'a Tensor,
    /// Leaky ReLU `(slope, gain)`: `gain * max(t, slope t)`; none = identity.
    pub lrelu: Option<(f32, f32)>,
    /// Clamp to `[-c, c]` after the activation.
    pub clamp: Option<f32>,
}

impl Epilogue<'_> {
    fn check(&self, y: &Tensor) -> Result<()> {
        let (n, c, h, w) = y.dims4()?;
        let bad_noise = self.noise.is_some_and(|(t, _)| {
            let nn = t.dims().first().copied().unwrap_or(0);
            t.dims() != [nn, 1, h, w] || (nn != 1 && nn != n)
        });
        let bad_scale = self.scale.is_some_and(|s| s.dims() != [n, c]);
        if bad_noise || bad_scale || self.bias.dims() != [c] {
            return Err(Error::invalid(format!(
                "noise {:?} / scale {:?} / bias {:?} do not fit features {:?}: expected \
                 noise [{n} or 1, 1, {h}, {w}], scale [{n}, {c}], bias [{c}]",
                self.noise.map(|(t, _)| t.dims().to_vec()),
                self.scale.map(|s| s.dims().to_vec()),
                self.bias.dims(),
                y.dims()
            )));
        }
        Ok(())
    }
}

/// Apply `p` to the conv output `y` `[n, c, h, w]` (in place on the CPU).
pub fn epilogue(y: Tensor, p: &Epilogue) -> Result<Tensor> {
    p.check(&y)?;
    let mut inputs = vec![&y, p.bias];
    inputs.extend(p.scale);
    inputs.extend(p.noise.map(|(t, _)| t));
    if !fast_path(&inputs) {
        return epilogue_portable(&y, p);
    }
    let y = y.contiguous()?;
    let op = EpilogueOp {
        scale: p.scale.map(values).transpose()?.map(Arc::from),
        noise: match p.noise {
            Some((t, s)) => Some((values(t)?.into(), t.dim(0)? != 1, s)),
            None => None,
        },
        bias: values(p.bias)?.into(),
        channels: y.dim(1)?,
        lrelu: p.lrelu.unwrap_or((1.0, 1.0)),
        clamp: p.clamp,
    };
    y.inplace_op1(&op)?;
    Ok(y)
}

/// The same from tensor ops (any device, differentiable).
pub fn epilogue_portable(y: &Tensor, p: &Epilogue) -> Result<Tensor> {
    p.check(y)?;
    let (n, c, _, _) = y.dims4()?;
    let mut y = y.clone();
    if let Some(s) = p.scale {
        y = y.broadcast_mul(&s.reshape((n, c, 1, 1))?)?;
    }
    if let Some((t, s)) = p.noise {
        y = if s == 1.0 {
            y.broadcast_add(t)?
        } else {
            y.broadcast_add(&(t * s as f64)?)?
        };
    }
    y = y.broadcast_add(&p.bias.reshape((1, c, 1, 1))?)?;
    if let Some((slope, gain)) = p.lrelu {
        y = super::leaky_relu(&y, slope)?;
        if gain != 1.0 {
            y = (y * gain as f64)?;
        }
    }
    if let Some(c) = p.clamp {
        y = y.clamp(-c, c)?;
    }
    Ok(y)
}

/// MobileStyleGAN's epilogue: `lrelu(x + noise + bias)`; `x`: `[N, C, H, W]`,
/// `noise`: `[N or 1, 1, H, W]` (already scaled), `bias`: `[C]`.
pub fn noise_bias_lrelu(x: Tensor, noise: &Tensor, bias: &Tensor, slope: f32) -> Result<Tensor> {
    epilogue(x, &plain(noise, bias, slope))
}

/// [`noise_bias_lrelu`] from tensor ops.
pub fn noise_bias_lrelu_portable(
    x: &Tensor,
    noise: &Tensor,
    bias: &Tensor,
    slope: f32,
) -> Result<Tensor> {
    epilogue_portable(x, &plain(noise, bias, slope))
}

fn plain<'a>(noise: &'a Tensor, bias: &'a Tensor, slope: f32) -> Epilogue<'a> {
    Epilogue {
        scale: None,
        noise: Some((noise, 1.0)),
        bias,
        lrelu: Some((slope, 1.0)),
        clamp: None,
    }
}

struct EpilogueOp {
    scale: Option<Arc<[f32]>>,
    noise: Option<(Arc<[f32]>, bool, f32)>, // (values, per sample, factor)
    bias: Arc<[f32]>,
    channels: usize,
    lrelu: (f32, f32),
    clamp: Option<f32>,
}

impl InplaceOp1 for EpilogueOp {
    fn name(&self) -> &'static str {
        "conv-epilogue"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("conv-epilogue: not contiguous")
        };
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("conv-epilogue: expected f32 storage")
        };
        let (_, _, h, w) = l.shape().dims4()?;
        let plane = h * w;
        let (lo, hi) = match self.clamp {
            Some(c) => (-c, c),
            None => (f32::NEG_INFINITY, f32::INFINITY),
        };
        let (slope, gain) = self.lrelu;
        data[a..b]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(p, dst)| {
                let (sample, ch) = (p / self.channels, p % self.channels);
                let scale = self.scale.as_ref().map_or(1.0, |s| s[p]);
                let bias = self.bias[ch];
                let act = |t: f32| {
                    let t = if t < 0.0 { t * slope } else { t };
                    (t * gain).clamp(lo, hi)
                };
                match &self.noise {
                    Some((v, per_sample, factor)) => {
                        let i = if *per_sample { sample } else { 0 };
                        for (d, z) in dst.iter_mut().zip(&v[i * plane..(i + 1) * plane]) {
                            *d = act(*d * scale + z * factor + bias);
                        }
                    }
                    None => {
                        for d in dst.iter_mut() {
                            *d = act(*d * scale + bias);
                        }
                    }
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{max_diff, rand};
    use super::*;

    #[test]
    fn fast_matches_portable() {
        let x = rand(3, &[2, 3, 4, 5]);
        let noise = rand(4, &[1, 1, 4, 5]);
        let bias = rand(5, &[3]);
        let slow = noise_bias_lrelu_portable(&x, &noise, &bias, 0.2).unwrap();
        let fast = noise_bias_lrelu(x.copy().unwrap(), &noise, &bias, 0.2).unwrap();
        assert!(max_diff(&fast, &slow) < 1e-6);
        assert!(noise_bias_lrelu(x.copy().unwrap(), &rand(6, &[1, 1, 5, 4]), &bias, 0.2).is_err());

        // Every term: per-sample scale and noise, gain, clamp.
        let scale = rand(7, &[2, 3]);
        let noise = rand(8, &[2, 1, 4, 5]);
        let p = Epilogue {
            scale: Some(&scale),
            noise: Some((&noise, 0.3)),
            bias: &bias,
            lrelu: Some((0.2, std::f32::consts::SQRT_2)),
            clamp: Some(0.5),
        };
        let slow = epilogue_portable(&x, &p).unwrap();
        let fast = epilogue(x.copy().unwrap(), &p).unwrap();
        assert!(max_diff(&fast, &slow) < 1e-6);
    }
}
