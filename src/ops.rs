//! The few kernels MobileStyleGAN needs beyond candle's matmul.
//!
//! candle implements a grouped convolution as one convolution per group, so a
//! depthwise 3x3 over 512 channels becomes 512 tiny convolutions: far too
//! slow. Each op here has a fast CPU kernel (plain loops over contiguous
//! planes, parallel over planes with rayon, written so the compiler
//! vectorises the inner row loop) and a portable version built from candle
//! tensor ops that runs on any device (CUDA included). Tests check the two
//! agree.

use std::cell::Cell;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, DType, Device, InplaceOp1, Layout, Shape, Tensor};
use rayon::prelude::*;

use crate::error::Result;

thread_local! {
    static FORCE_PORTABLE: Cell<bool> = const { Cell::new(false) };
}

/// Use the portable tensor-op versions even on the CPU, for calls made from
/// this thread (tests and debugging: this is how CPU runs check the code path
/// other devices take).
pub fn force_portable(on: bool) {
    FORCE_PORTABLE.with(|f| f.set(on));
}

/// Whether the fast CPU kernels apply to this tensor.
fn cpu_fast(x: &Tensor) -> bool {
    matches!(x.device(), Device::Cpu) && x.dtype() == DType::F32 && !FORCE_PORTABLE.with(Cell::get)
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let data = match s {
        CpuStorage::F32(v) => v,
        _ => candle_core::bail!("expected f32 storage"),
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

// ---------------------------------------------------------------------------
// Depthwise 3x3 convolution, zero padding 1, stride 1, per-sample weights.

/// `x`: `[N, C, H, W]`; `w`: `[N, C, 3, 3]` (a separate kernel per sample,
/// which lets callers fold the style modulation into the weights).
pub fn depthwise3x3(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let w = w.reshape((n, c, 9))?;
    if cpu_fast(x) {
        let weights: Vec<f32> = w.flatten_all()?.to_vec1()?;
        return Ok(x.contiguous()?.apply_op1_no_bwd(&Depthwise3x3 {
            weights: weights.into(),
        })?);
    }
    depthwise3x3_portable(x, &w)
}

/// Reference formulation from tensor ops: the sum of 9 shifted, scaled copies.
pub fn depthwise3x3_portable(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, c, h, wd) = x.dims4()?;
    let w = w.reshape((n, c, 9))?;
    let padded = x.pad_with_zeros(2, 1, 1)?.pad_with_zeros(3, 1, 1)?;
    let mut acc: Option<Tensor> = None;
    for ky in 0..3 {
        for kx in 0..3 {
            let tap = w.narrow(2, ky * 3 + kx, 1)?.reshape((n, c, 1, 1))?;
            let shifted = padded.narrow(2, ky, h)?.narrow(3, kx, wd)?;
            let term = shifted.broadcast_mul(&tap)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
    }
    Ok(acc.expect("9 taps"))
}

struct Depthwise3x3 {
    weights: Arc<[f32]>,
}

impl CustomOp1 for Depthwise3x3 {
    fn name(&self) -> &'static str {
        "depthwise3x3"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let (n, c, h, w) = l.shape().dims4()?;
        if self.weights.len() != n * c * 9 {
            candle_core::bail!(
                "depthwise3x3: {} weights for {n}x{c} planes",
                self.weights.len()
            );
        }
        let plane = h * w;
        let mut out = vec![0f32; n * c * plane];
        out.par_chunks_mut(plane).enumerate().for_each(|(p, dst)| {
            let src = &x[p * plane..(p + 1) * plane];
            let k = &self.weights[p * 9..p * 9 + 9];
            dw_plane(src, dst, k, h, w);
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// One plane: `dst[y][x] = sum k[dy][dx] * src[y+dy-1][x+dx-1]` (zero outside).
fn dw_plane(src: &[f32], dst: &mut [f32], k: &[f32], h: usize, w: usize) {
    for y in 0..h {
        let out = &mut dst[y * w..(y + 1) * w];
        for dy in 0..3 {
            let sy = y as isize + dy as isize - 1;
            if sy < 0 || sy >= h as isize {
                continue;
            }
            let row = &src[sy as usize * w..(sy as usize + 1) * w];
            let (k0, k1, k2) = (k[dy * 3], k[dy * 3 + 1], k[dy * 3 + 2]);
            if w == 1 {
                out[0] += k1 * row[0];
                continue;
            }
            // Interior columns: three aligned slices, vectorised by the compiler.
            let inner = &mut out[1..w - 1];
            let (l, m, r) = (&row[..w - 2], &row[1..w - 1], &row[2..]);
            for i in 0..w - 2 {
                inner[i] += k0 * l[i] + k1 * m[i] + k2 * r[i];
            }
            out[0] += k1 * row[0] + k2 * row[1];
            out[w - 1] += k0 * row[w - 2] + k1 * row[w - 1];
        }
    }
}

// ---------------------------------------------------------------------------
// Epilogue of a styled conv: add noise and bias, leaky ReLU, in place.

/// `x`: `[N, C, H, W]`; `noise`: `[N or 1, 1, H, W]`; `bias`: `[C]`.
pub fn noise_bias_lrelu(x: Tensor, noise: &Tensor, bias: &Tensor, slope: f32) -> Result<Tensor> {
    if cpu_fast(&x) && x.is_contiguous() {
        let (n, c, h, w) = x.dims4()?;
        let nn = noise.dim(0)?;
        if noise.dims() != [nn, 1, h, w] || (nn != 1 && nn != n) || bias.dims() != [c] {
            return Err(crate::error::Error::invalid(format!(
                "noise {:?} / bias {:?} do not fit features {:?}",
                noise.dims(),
                bias.dims(),
                x.dims()
            )));
        }
        let op = NoiseBiasLrelu {
            noise: noise.flatten_all()?.to_vec1::<f32>()?.into(),
            noise_per_sample: nn != 1,
            bias: bias.to_vec1::<f32>()?.into(),
            channels: c,
            slope,
        };
        x.inplace_op1(&op)?;
        return Ok(x);
    }
    noise_bias_lrelu_portable(&x, noise, bias, slope)
}

pub fn noise_bias_lrelu_portable(
    x: &Tensor,
    noise: &Tensor,
    bias: &Tensor,
    slope: f32,
) -> Result<Tensor> {
    let c = bias.dim(0)?;
    let y = x
        .broadcast_add(noise)?
        .broadcast_add(&bias.reshape((1, c, 1, 1))?)?;
    Ok(y.maximum(&(&y * slope as f64)?)?)
}

struct NoiseBiasLrelu {
    noise: Arc<[f32]>,
    noise_per_sample: bool,
    bias: Arc<[f32]>,
    channels: usize,
    slope: f32,
}

impl InplaceOp1 for NoiseBiasLrelu {
    fn name(&self) -> &'static str {
        "noise-bias-lrelu"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> candle_core::Result<()> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("not contiguous".into()))?;
        let CpuStorage::F32(data) = s else {
            candle_core::bail!("expected f32 storage")
        };
        let (_, _, h, w) = l.shape().dims4()?;
        let plane = h * w;
        let slope = self.slope;
        data[a..b]
            .par_chunks_mut(plane)
            .enumerate()
            .for_each(|(p, dst)| {
                let bias = self.bias[p % self.channels];
                let sample = p / self.channels;
                let noise = if self.noise_per_sample {
                    &self.noise[sample * plane..(sample + 1) * plane]
                } else {
                    &self.noise[..plane]
                };
                for (v, nz) in dst.iter_mut().zip(noise) {
                    let t = *v + nz + bias;
                    *v = if t < 0.0 { t * slope } else { t };
                }
            });
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Inverse Haar DWT (one level), with optional per-channel modulation first.

/// `x`: `[N, 4C, H, W]` laid out as `C` low-pass channels followed by `C x 3`
/// high-pass bands (channel-major: band `k` of channel `c` is `C + 3c + k`).
/// `scale`, if given, is `[N, 4C]` and multiplies each input channel first
/// (MobileStyleGAN's modulated upsampler). Returns `[N, C, 2H, 2W]`.
///
/// With the Haar synthesis filters `[a, a]` and `[a, -a]` (a = 1/sqrt 2):
/// `out[2i+y][2j+x] = (LL + sy*B0 + sx*B1 + sx*sy*B2) / 2`, where `sy`, `sx`
/// are +1 for the first row/column of the 2x2 cell and -1 for the second.
pub fn idwt_haar(x: &Tensor, scale: Option<&Tensor>) -> Result<Tensor> {
    let (n, c4, _, _) = x.dims4()?;
    if c4 % 4 != 0 {
        return Err(crate::error::Error::invalid(format!(
            "inverse DWT needs 4C channels, got {c4}"
        )));
    }
    if cpu_fast(x) {
        let scale = match scale {
            Some(s) => Some(s.reshape((n, c4))?.flatten_all()?.to_vec1::<f32>()?.into()),
            None => None,
        };
        return Ok(x.contiguous()?.apply_op1_no_bwd(&IdwtHaar { scale })?);
    }
    idwt_haar_portable(x, scale)
}

pub fn idwt_haar_portable(x: &Tensor, scale: Option<&Tensor>) -> Result<Tensor> {
    let (n, c4, h, w) = x.dims4()?;
    let c = c4 / 4;
    let x = match scale {
        Some(s) => x.broadcast_mul(&s.reshape((n, c4, 1, 1))?)?,
        None => x.clone(),
    };
    let ll = x.narrow(1, 0, c)?;
    let high = x.narrow(1, c, 3 * c)?.reshape((n, c, 3, h, w))?;
    let b0 = high.narrow(2, 0, 1)?.squeeze(2)?;
    let b1 = high.narrow(2, 1, 1)?.squeeze(2)?;
    let b2 = high.narrow(2, 2, 1)?.squeeze(2)?;
    let (s0, d0) = ((&ll + &b0)?, (&ll - &b0)?); // rows: sy = +1, -1
    let (s1, d1) = ((&b1 + &b2)?, (&b1 - &b2)?);
    let p00 = (&s0 + &s1)?; // sy=+1, sx=+1
    let p01 = (&s0 - &s1)?; // sy=+1, sx=-1
    let p10 = (&d0 + &d1)?; // sy=-1, sx=+1
    let p11 = (&d0 - &d1)?; // sy=-1, sx=-1
    let row0 = Tensor::stack(&[p00, p01], 4)?; // [n, c, h, w, 2]
    let row1 = Tensor::stack(&[p10, p11], 4)?;
    let out = Tensor::stack(&[row0, row1], 3)?; // [n, c, h, 2, w, 2]
    Ok((out.reshape((n, c, 2 * h, 2 * w))? * 0.5)?)
}

struct IdwtHaar {
    scale: Option<Arc<[f32]>>,
}

impl CustomOp1 for IdwtHaar {
    fn name(&self) -> &'static str {
        "idwt-haar"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l)?;
        let (n, c4, h, w) = l.shape().dims4()?;
        let c = c4 / 4;
        let plane = h * w;
        let out_plane = 4 * plane;
        let mut out = vec![0f32; n * c * out_plane];
        out.par_chunks_mut(out_plane)
            .enumerate()
            .for_each(|(p, dst)| {
                let (b, ch) = (p / c, p % c);
                let idx = [ch, c + 3 * ch, c + 3 * ch + 1, c + 3 * ch + 2];
                let get = |i: usize| &x[(b * c4 + idx[i]) * plane..(b * c4 + idx[i] + 1) * plane];
                let m = |i: usize| {
                    0.5 * match &self.scale {
                        Some(s) => s[b * c4 + idx[i]],
                        None => 1.0,
                    }
                };
                let (ll, h0, h1, h2) = (get(0), get(1), get(2), get(3));
                let (m0, m1, m2, m3) = (m(0), m(1), m(2), m(3));
                for y in 0..h {
                    let (top, bottom) = dst[2 * y * 2 * w..(2 * y + 2) * 2 * w].split_at_mut(2 * w);
                    for xx in 0..w {
                        let i = y * w + xx;
                        let (a, b0, b1, b2) = (ll[i] * m0, h0[i] * m1, h1[i] * m2, h2[i] * m3);
                        let (s0, d0, s1, d1) = (a + b0, a - b0, b1 + b2, b1 - b2);
                        top[2 * xx] = s0 + s1;
                        top[2 * xx + 1] = s0 - s1;
                        bottom[2 * xx] = d0 + d1;
                        bottom[2 * xx + 1] = d0 - d1;
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((n, c, 2 * h, 2 * w))))
    }
}

/// Leaky ReLU from tensor ops (slope < 1).
pub fn leaky_relu(x: &Tensor, slope: f32) -> Result<Tensor> {
    Ok(x.maximum(&(x * slope as f64)?)?)
}
