//! The StyleGAN2 generator (Karras et al. 2020, config-f and the ADA
//! variant) as native candle code, following NVIDIA's equations:
//!
//! - mapping: `z / sqrt(mean(z^2) + 1e-8)`, then fully connected layers with
//!   leaky ReLU 0.2 times sqrt 2, weights scaled by `lr / sqrt(fan_in)` and
//!   biases by `lr` (the learning-rate multiplier, 0.01);
//! - synthesis ("skip" architecture): a learned 4x4 constant; per block a
//!   modulated 3x3 conv with 2x upsampling (except at 4 px), a modulated 3x3
//!   conv, and a ToRGB (modulated 1x1 conv, no demodulation) whose output is
//!   added to the 2x-upsampled RGB of the block before;
//! - a modulated conv: style `s = A w + b` (`A` scaled by `1/sqrt(w_dim)`),
//!   weights `W' = W s / sqrt(fan_in)` per sample, demodulated by
//!   `1 / sqrt(sum W'^2 + eps)`; then noise times its learned strength, bias,
//!   leaky ReLU times sqrt 2, and ADA's optional clamp to +-conv_clamp;
//! - up/down-sampling by `upfirdn2d` with the [1, 3, 3, 1] filter.
//!
//! Execution: modulation and demodulation scale activations before and after
//! one conv with weights shared by the whole batch (NVIDIA's non-fused
//! modconv; the same arithmetic as per-sample weights). The upsampling conv
//! (NVIDIA: transposed 3x3 conv, stride 2, then a 4x4 FIR) is run as one
//! ordinary 2x2 conv with the four output phases of the transposed conv as
//! extra output channels, interleaved, then the FIR filter as two 1-D passes.
//! On the CPU, convs run on gemm (`conv`), FIR and epilogue on fused kernels;
//! elsewhere on candle ops.
//!
//! W+ layout (`2 log2(R) - 2` styles): index 0 drives the 4 px conv, 1 the
//! 4 px ToRGB and the 8 px upsampling conv, then per block of resolution
//! `2^(k+2)` (k >= 1): `2k-1` conv0, `2k` conv1, `2k+1` ToRGB.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};

use super::load::{Arch, Checkpoint, LoadOptions, Naming, RawConv, RawParams, RawRgb};
use crate::error::{Error, Result};
use crate::generator::{seeded_normal, Generator, NoiseMode};
use crate::ops::conv::Conv2d;
use crate::ops::epilogue::{epilogue, Epilogue};
use crate::ops::fir::{interleave_phases_fir, UpFirDn, FILTER_1331};

const LRELU_SLOPE: f32 = 0.2;
const LRELU_GAIN: f32 = std::f32::consts::SQRT_2;
const DEMOD_EPS: f64 = 1e-8;
/// How many mapped z estimate `w_avg` for checkpoints that lack it.
pub const W_AVG_SAMPLES: usize = 10_000;
const W_AVG_SEED: u64 = 0x5747_4156; // "WAVG"

/// `s = A w + b`, `A` already scaled by its gain: `w [n, w_dim] -> [n, c]`.
struct Affine {
    weight_t: Tensor, // [w_dim, c]
    bias: Tensor,     // [c]
}

impl Affine {
    fn new(w: &Tensor, b: &Tensor, gain: f64, device: &Device) -> Result<Self> {
        Ok(Self {
            weight_t: (w.t()? * gain)?.contiguous()?.to_device(device)?,
            bias: b.to_device(device)?,
        })
    }

    fn forward(&self, w: &Tensor) -> Result<Tensor> {
        Ok(w.matmul(&self.weight_t)?.broadcast_add(&self.bias)?)
    }
}

/// A layer's noise input: the constant buffer and the learned strength.
struct Noise {
    constant: Tensor, // [1, 1, r, r]
    strength: f32,
}

/// Modulated, demodulated 3x3 conv + noise + bias + leaky ReLU (+ clamp).
struct ModConv {
    affine: Affine,
    /// `[c_out, c_in, 3, 3]` times `1 / sqrt(fan_in)`; for an upsampling
    /// conv, the polyphase `[4 c_out, c_in, 2, 2]` form of it.
    conv: Conv2d,
    /// `sum_k weight^2`, transposed: `[c_in, c_out]`, for demodulation.
    weight_sq: Tensor,
    demod_eps: f64,
    bias: Tensor, // [c_out]
    noise: Option<Noise>,
    up: bool,
    /// NVIDIA's FIR after the transposed conv: gain 4, padding 1 on each
    /// side of its `2h + 1` rows, i.e. (1, 0) on the `2h + 2` interleaved ones.
    up_fir: UpFirDn,
    clamp: Option<f32>,
}

impl ModConv {
    fn new(raw: &RawConv, arch: &Arch, naming: Naming, up: bool, device: &Device) -> Result<Self> {
        let (_, c_in, _, _) = raw.weight.dims4()?;
        let fan_in = (c_in * 9) as f64;
        let w = (&raw.weight / fan_in.sqrt())?;
        let weight_sq = w.sqr()?.sum((2, 3))?.t()?.contiguous()?;
        let weight = if up { polyphase_up_weight(&w)? } else { w };
        Ok(Self {
            affine: Affine::new(
                &raw.affine_w,
                &raw.affine_b,
                1.0 / (arch.w_dim as f64).sqrt(),
                device,
            )?,
            conv: Conv2d::new(&weight.to_device(device)?, 1)?,
            weight_sq: weight_sq.to_device(device)?,
            // NVIDIA adds 1e-8 to the sum over unscaled weights, rosinality
            // over scaled ones: the same eps relative to each.
            demod_eps: match naming {
                Naming::Nvidia => DEMOD_EPS / fan_in,
                Naming::Rosinality => DEMOD_EPS,
            },
            bias: raw.bias.to_device(device)?,
            noise: match &raw.noise {
                Some((c, s)) => Some(Noise {
                    constant: c.to_device(device)?,
                    strength: *s,
                }),
                None => None,
            },
            up,
            up_fir: UpFirDn::new(&FILTER_1331, 1, 1, (1, 0), 4.0),
            clamp: arch.conv_clamp,
        })
    }

    /// `x [n, c_in, h, w]` -> `[n, c_out, h', w']`; `noise`: unscaled
    /// `[n or 1, 1, h', w']` N(0, 1) values, or none.
    fn forward(&self, x: &Tensor, w: &Tensor, noise: Option<&Tensor>) -> Result<Tensor> {
        let s = self.affine.forward(w)?; // [n, c_in]
        let y = if self.up {
            // Phases (a, b) of the transposed conv as channel groups, then
            // interleaved: row 2m + a, column 2k + b. The last row and column
            // come out zero, which is the FIR filter's right-hand padding.
            let p = self.conv.forward_scaled(x, Some(&s))?; // [n, 4 c_out, h+1, w+1]
            interleave_phases_fir(&p, &self.up_fir)?
        } else {
            self.conv.forward_scaled(x, Some(&s))?
        };
        let demod = (s.sqr()?.matmul(&self.weight_sq)? + self.demod_eps)?
            .sqrt()?
            .recip()?; // [n, c_out]
        let noise = match (&self.noise, noise) {
            (Some(nz), Some(t)) => Some((t, nz.strength)),
            _ => None,
        };
        epilogue(
            y,
            &Epilogue {
                scale: Some(&demod),
                noise,
                bias: &self.bias,
                lrelu: Some((LRELU_SLOPE, LRELU_GAIN)),
                clamp: self.clamp,
            },
        )
    }
}

/// The transposed 3x3 conv with stride 2 as a 2x2 conv (padding 1) per
/// output phase: `out[2m + a] = x[m] K[a] + x[m - 1] K[a + 2]` (K[3] = 0),
/// in both axes. Returns `[4 c_out, c_in, 2, 2]`, phase `2a + b` first.
fn polyphase_up_weight(k: &Tensor) -> Result<Tensor> {
    let dev = k.device();
    // Taps (x[m-1], x[m]) of each phase, as indices into K padded to 4 taps.
    let taps = |a: usize| Tensor::new(if a == 0 { &[2u32, 0] } else { &[3u32, 1] }, dev);
    let k4 = k.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
    let mut phases = Vec::with_capacity(4);
    for a in 0..2 {
        for b in 0..2 {
            phases.push(k4.index_select(&taps(a)?, 2)?.index_select(&taps(b)?, 3)?);
        }
    }
    Ok(Tensor::cat(&phases, 0)?.contiguous()?)
}

/// Modulated 1x1 conv to RGB (no demodulation) + bias (+ clamp).
struct ToRgb {
    affine: Affine,
    weight: Tensor, // [3, c_in], times 1 / sqrt(c_in)
    bias: Tensor,   // [3]
    clamp: Option<f32>,
}

impl ToRgb {
    fn new(raw: &RawRgb, arch: &Arch, device: &Device) -> Result<Self> {
        let c_in = raw.weight.dim(1)?;
        let gain = 1.0 / (arch.w_dim as f64).sqrt();
        Ok(Self {
            affine: Affine::new(&raw.affine_w, &raw.affine_b, gain, device)?,
            weight: (raw.weight.reshape((3, c_in))? / (c_in as f64).sqrt())?.to_device(device)?,
            bias: raw.bias.to_device(device)?,
            clamp: arch.conv_clamp,
        })
    }

    fn forward(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let (n, c, h, wd) = x.dims4()?;
        // The style folds into a per-sample [3, c] matrix: one batched matmul.
        let s = self.affine.forward(w)?; // [n, c]
        let k = self.weight.unsqueeze(0)?.broadcast_mul(&s.unsqueeze(1)?)?; // [n, 3, c]
        let y = k
            .matmul(&x.reshape((n, c, h * wd))?)?
            .reshape((n, 3, h, wd))?;
        epilogue(
            y,
            &Epilogue {
                scale: None,
                noise: None,
                bias: &self.bias,
                lrelu: None,
                clamp: self.clamp,
            },
        )
    }
}

pub struct StyleGan2 {
    id: String,
    device: Device,
    arch: Arch,
    mapping: Vec<(Tensor, Tensor)>, // (weight^T * gain [in, out], bias * lr [out])
    w_avg: Tensor,
    constant: Tensor, // [1, c, 4, 4]
    convs: Vec<ModConv>,
    rgbs: Vec<ToRgb>,
    skip_up: UpFirDn,
}

impl StyleGan2 {
    /// Load a checkpoint file (`.pt` or `.safetensors`, either naming).
    pub fn load(path: &Path, opts: &LoadOptions, device: &Device) -> Result<Self> {
        let ck = Checkpoint::open(path)?;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        Self::from_checkpoint(ck, &format!("stylegan2-{stem}"), opts, device)
    }

    /// Random config-f weights at `resolution` (benchmarks).
    pub fn random_config_f(resolution: usize, seed: u64, device: &Device) -> Result<Self> {
        let arch = Arch::config_f(resolution)?;
        let ck = super::load::random_checkpoint(&arch, seed)?;
        Self::from_checkpoint(
            ck,
            &format!("stylegan2-random-config-f-{resolution}"),
            &LoadOptions::default(),
            device,
        )
    }

    pub fn from_checkpoint(
        ck: Checkpoint,
        id: &str,
        opts: &LoadOptions,
        device: &Device,
    ) -> Result<Self> {
        let file = ck.file().to_string();
        let raw = ck.parse(opts)?;
        Self::build(raw, id, &file, device)
    }

    fn build(raw: RawParams, id: &str, file: &str, device: &Device) -> Result<Self> {
        let arch = raw.arch.clone();
        let lr = arch.mapping_lr;
        let mapping = raw
            .mapping
            .iter()
            .map(|(w, b)| -> Result<(Tensor, Tensor)> {
                let gain = lr / (w.dim(1)? as f64).sqrt();
                Ok((
                    (w.t()? * gain)?.contiguous()?.to_device(device)?,
                    (b * lr)?.to_device(device)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let convs = raw
            .convs
            .iter()
            .enumerate()
            .map(|(j, c)| ModConv::new(c, &arch, raw.naming, j > 0 && j % 2 == 1, device))
            .collect::<Result<Vec<_>>>()?;
        let rgbs = raw
            .rgbs
            .iter()
            .map(|r| ToRgb::new(r, &arch, device))
            .collect::<Result<Vec<_>>>()?;
        let mut g = Self {
            id: id.to_string(),
            device: device.clone(),
            mapping,
            w_avg: Tensor::zeros(arch.w_dim, DType::F32, device)?,
            constant: raw.constant.to_device(device)?,
            convs,
            rgbs,
            skip_up: UpFirDn::upsample2(&FILTER_1331),
            arch,
        };
        g.w_avg = match raw.w_avg {
            Some(avg) => avg.to_device(device)?,
            None => {
                eprintln!(
                    "note: {file} stores no w_avg (latent_avg); using the mean of {W_AVG_SAMPLES} mapped z as the truncation centre"
                );
                g.estimate_w_avg(W_AVG_SAMPLES)?
            }
        };
        Ok(g)
    }

    pub fn arch(&self) -> &Arch {
        &self.arch
    }

    /// Mean of `samples` mapped z (fixed seed), for checkpoints without `w_avg`.
    pub fn estimate_w_avg(&self, samples: usize) -> Result<Tensor> {
        let chunk = 1000;
        let mut sum = Tensor::zeros(self.arch.w_dim, DType::F64, &self.device)?;
        let mut done = 0;
        let mut k = 0u64;
        while done < samples {
            let n = chunk.min(samples - done);
            let z = seeded_normal(W_AVG_SEED.wrapping_add(k), n, self.arch.z_dim, &self.device)?;
            sum = (sum + self.map(&z)?.to_dtype(DType::F64)?.sum(0)?)?;
            done += n;
            k += 1;
        }
        Ok((sum / samples as f64)?.to_dtype(DType::F32)?)
    }

    /// Synthesis with explicit noise: `noise[j]` is N(0, 1) noise `[n or 1,
    /// 1, r, r]` for conv layer `j` (0 = the 4 px conv, then conv0 / conv1 of
    /// each block), scaled by the layer's learned strength.
    pub fn synthesize_with_noise(&self, wplus: &Tensor, noise: &[Tensor]) -> Result<Tensor> {
        if noise.len() != self.convs.len() {
            return Err(Error::invalid(format!(
                "{} noise tensors for {} conv layers",
                noise.len(),
                self.convs.len()
            )));
        }
        self.run(wplus, |j| Ok(Some(noise[j].clone())))
    }

    fn run(
        &self,
        wplus: &Tensor,
        noise: impl Fn(usize) -> Result<Option<Tensor>>,
    ) -> Result<Tensor> {
        let (n, k, d) = wplus.dims3()?;
        if k != self.arch.num_ws() || d != self.arch.w_dim {
            return Err(Error::invalid(format!(
                "W+ must be [n, {}, {}], got {:?}",
                self.arch.num_ws(),
                self.arch.w_dim,
                wplus.dims()
            )));
        }
        let wplus = wplus.to_dtype(DType::F32)?.to_device(&self.device)?;
        let style = |i: usize| -> Result<Tensor> { Ok(wplus.narrow(1, i, 1)?.squeeze(1)?) };
        let (_, c, h, w) = self.constant.dims4()?;
        let x = self.constant.broadcast_as((n, c, h, w))?.contiguous()?;
        let mut x = self.convs[0].forward(&x, &style(0)?, noise(0)?.as_ref())?;
        let mut img = self.rgbs[0].forward(&x, &style(1)?)?;
        for b in 1..self.rgbs.len() {
            let (j0, j1) = (2 * b - 1, 2 * b);
            x = self.convs[j0].forward(&x, &style(j0)?, noise(j0)?.as_ref())?;
            x = self.convs[j1].forward(&x, &style(j1)?, noise(j1)?.as_ref())?;
            let rgb = self.rgbs[b].forward(&x, &style(2 * b + 1)?)?;
            img = (self.skip_up.forward(&img)? + rgb)?;
        }
        Ok(img)
    }
}

impl Generator for StyleGan2 {
    fn id(&self) -> &str {
        &self.id
    }
    fn z_dim(&self) -> usize {
        self.arch.z_dim
    }
    fn w_dim(&self) -> usize {
        self.arch.w_dim
    }
    fn num_styles(&self) -> usize {
        self.arch.num_ws()
    }
    fn resolution(&self) -> usize {
        self.arch.resolution
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn w_avg(&self) -> &Tensor {
        &self.w_avg
    }

    fn map(&self, z: &Tensor) -> Result<Tensor> {
        crate::generator::check_z(z, self.arch.z_dim)?;
        let z = z.to_dtype(DType::F32)?.to_device(&self.device)?;
        let norm = (z.sqr()?.mean_keepdim(D::Minus1)? + 1e-8)?.sqrt()?;
        let mut x = z.broadcast_div(&norm)?;
        for (w_t, b) in &self.mapping {
            let y = x.matmul(w_t)?.broadcast_add(b)?;
            x = (y.maximum(&(&y * LRELU_SLOPE as f64)?)? * LRELU_GAIN as f64)?;
        }
        Ok(x)
    }

    fn synthesize(&self, wplus: &Tensor, noise: NoiseMode) -> Result<Tensor> {
        let n = wplus.dim(0)?;
        self.run(wplus, |j| {
            let Some(nz) = &self.convs[j].noise else {
                return Ok(None);
            };
            match noise {
                NoiseMode::Fixed => Ok(Some(nz.constant.clone())),
                NoiseMode::Random(seed) => {
                    let r = Arch::conv_resolution(j);
                    let stream = seed
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .wrapping_add(j as u64);
                    Ok(Some(
                        seeded_normal(stream, n, r * r, &self.device)?.reshape((n, 1, r, r))?,
                    ))
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testing::max_diff;

    /// The polyphase 2x2 conv equals a transposed 3x3 conv with stride 2.
    #[test]
    fn polyphase_matches_conv_transpose() {
        let dev = Device::Cpu;
        let x = seeded_normal(1, 1, 2 * 3 * 5 * 4, &dev)
            .unwrap()
            .reshape((2, 3, 5, 4))
            .unwrap();
        let k = seeded_normal(2, 1, 4 * 3 * 9, &dev)
            .unwrap()
            .reshape((4, 3, 3, 3))
            .unwrap();
        // conv_transpose2d wants [c_in, c_out, k, k].
        let want = x
            .conv_transpose2d(
                &k.transpose(0, 1).unwrap().contiguous().unwrap(),
                0,
                0,
                2,
                1,
            )
            .unwrap(); // [2, 4, 11, 9]
        let p = x
            .conv2d(&polyphase_up_weight(&k).unwrap(), 1, 1, 1, 1)
            .unwrap();
        let got = p
            .reshape((2, 2, 2, 4, 6, 5))
            .unwrap()
            .permute((0, 3, 4, 1, 5, 2))
            .unwrap()
            .reshape((2, 4, 12, 10))
            .unwrap();
        let head = got.narrow(2, 0, 11).unwrap().narrow(3, 0, 9).unwrap();
        let d = max_diff(&head, &want);
        assert!(d < 1e-5, "{d}");
        let last_row = got.narrow(2, 11, 1).unwrap();
        let tail = max_diff(&last_row, &last_row.zeros_like().unwrap());
        assert_eq!(tail, 0.0, "the extra last row must be zero");
    }
}
