//! Dense k x k convolution (stride 1, zero padding) with a CPU kernel built
//! on gemm, for StyleGAN2's wide-and-shallow layers.
//!
//! candle's CPU conv2d builds im2col tiles, whose cost dominates when the
//! channel count is small (32 channels at 1024 px run several times slower
//! than the same multiply-adds as one matmul). Here the input is padded once
//! per sample with rows of width `Wp = W + 2p`; then, for each kernel tap,
//! the shifted input of a band of output rows is one contiguous slice per
//! channel, and the band's output is `sum_taps W_tap [c_out, c_in] @
//! X_tap [c_in, rows * Wp]`: one gemm per tap, no im2col. The `2p` columns
//! per row that wrap around are computed and dropped.
//!
//! Output rows whose weights are all zero for a tap are skipped, so the
//! polyphase form of the upsampling conv (whose phases use 4, 2, 2 and 1 of
//! the 2x2 taps) costs the multiply-adds of the transposed conv it replaces.
//! Other devices, and inputs that carry a gradient, use candle's conv2d.

use std::sync::Arc;

use candle_core::{DType, Device, Shape, Tensor};
use rayon::prelude::*;

use super::{fast_path, values, Dims4, Kernel, Nchw, SharedOut};
use crate::error::Result;

/// Output floats per band (`c_out` x padded pixels): the band's accumulator
/// stays in cache across the tap loop.
const BAND_FLOATS: usize = 1 << 18;

pub struct Conv2d {
    /// `[c_out, c_in, k, k]`, for devices other than the CPU.
    weight: Tensor,
    pad: usize,
    cpu: Arc<CpuConv>,
}

struct CpuConv {
    /// `[k * k, c_out, c_in]`: tap-major copies of the weight.
    taps: Vec<f32>,
    /// Per tap, the ranges of output channels with a non-zero weight.
    rows: Vec<Vec<(usize, usize)>>,
    c_out: usize,
    c_in: usize,
    k: usize,
    pad: usize,
}

impl Conv2d {
    pub fn new(weight: &Tensor, pad: usize) -> Result<Self> {
        let (c_out, c_in, k, k2) = weight.dims4()?;
        if k != k2 {
            return Err(crate::error::Error::invalid(format!(
                "square kernels only, got {:?}",
                weight.dims()
            )));
        }
        let taps: Vec<f32> = weight
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?
            .permute((2, 3, 0, 1))?
            .flatten_all()?
            .to_vec1()?;
        let rows = taps
            .chunks(c_out * c_in)
            .map(|tap| {
                let mut ranges: Vec<(usize, usize)> = Vec::new();
                for (o, row) in tap.chunks(c_in).enumerate() {
                    if row.iter().all(|&v| v == 0.0) {
                        continue;
                    }
                    match ranges.last_mut() {
                        Some(r) if r.1 == o => r.1 = o + 1,
                        _ => ranges.push((o, o + 1)),
                    }
                }
                ranges
            })
            .collect();
        Ok(Self {
            weight: weight.clone(),
            pad,
            cpu: Arc::new(CpuConv {
                taps,
                rows,
                c_out,
                c_in,
                k,
                pad,
            }),
        })
    }

    /// `[n, c_in, h, w]` -> `[n, c_out, h + 2p - k + 1, w + 2p - k + 1]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_scaled(x, None)
    }

    /// The conv of `x * scale` for a per-channel `scale` `[n, c_in]` (the
    /// style modulation); on the CPU the scaling happens while padding.
    pub fn forward_scaled(&self, x: &Tensor, scale: Option<&Tensor>) -> Result<Tensor> {
        if fast_path(&[x]) && scale.is_none_or(|s| fast_path(&[s])) {
            let scale = scale.map(values).transpose()?;
            let op = CpuConvOp {
                conv: self.cpu.clone(),
                scale,
            };
            return Ok(x.contiguous()?.apply_op1_no_bwd(&Kernel(&op))?);
        }
        let x = match scale {
            Some(s) => {
                let (n, c) = s.dims2()?;
                x.broadcast_mul(&s.reshape((n, c, 1, 1))?)?
            }
            None => x.clone(),
        };
        Ok(x.conv2d(&self.weight.to_device(x.device())?, self.pad, 1, 1, 1)?)
    }
}

struct CpuConvOp {
    conv: Arc<CpuConv>,
    /// `[n * c_in]` input channel scales.
    scale: Option<Vec<f32>>,
}

impl Nchw for CpuConvOp {
    const NAME: &'static str = "stylegan2-conv2d";

    fn run(&self, x: &[f32], dims: Dims4) -> candle_core::Result<(Vec<f32>, Shape)> {
        let c = &*self.conv;
        let (n, c_in, h, w) = dims;
        let bad_scale = self.scale.as_ref().is_some_and(|s| s.len() != n * c_in);
        if c_in != c.c_in || h + 2 * c.pad < c.k || w + 2 * c.pad < c.k || bad_scale {
            candle_core::bail!(
                "stylegan2-conv2d: input {:?} does not fit {}x{} kernel over {} channels",
                Shape::from(dims),
                c.k,
                c.k,
                c.c_in
            );
        }
        let (hp, wp) = (h + 2 * c.pad, w + 2 * c.pad);
        let (ho, wo) = (hp - c.k + 1, wp - c.k + 1);
        // Padded input; the k - 1 extra floats let the last tap's slice of
        // the last channel run past its last row (into dropped columns).
        let chan = hp * wp;
        let sample = c_in * chan;
        let mut xp = vec![0f32; n * sample + c.k];
        xp[..n * sample]
            .par_chunks_mut(chan)
            .zip(x.par_chunks(h * w))
            .enumerate()
            .for_each(|(p, (dst, src))| {
                let s = self.scale.as_ref().map_or(1.0, |s| s[p]);
                for (y, row) in src.chunks(w).enumerate() {
                    let at = (y + c.pad) * wp + c.pad;
                    for (d, v) in dst[at..at + w].iter_mut().zip(row) {
                        *d = v * s;
                    }
                }
            });

        // Bands of rows: small enough for the cache, and enough of them to
        // keep every thread busy (low resolutions have few rows but many
        // channels), split evenly.
        let pixels = (BAND_FLOATS / c.c_out).clamp(256, 8192);
        let min_tasks = 2 * rayon::current_num_threads();
        let bands = ho
            .div_ceil((pixels / wp).max(1))
            .max(min_tasks.div_ceil(n))
            .min(ho);
        let rows_per_band = ho.div_ceil(bands);
        let bands = ho.div_ceil(rows_per_band);
        let plane = ho * wo;
        let mut out: Vec<f32> = Vec::with_capacity(n * c.c_out * plane);
        let dst = SharedOut(out.as_mut_ptr());
        (0..n * bands).into_par_iter().for_each(|task| {
            let (bi, band) = (task / bands, task % bands);
            let y0 = band * rows_per_band;
            let rows = rows_per_band.min(ho - y0);
            let len = rows * wp;
            let mut acc = vec![0f32; c.c_out * len];
            for (t, ranges) in c.rows.iter().enumerate() {
                let (ky, kx) = (t / c.k, t % c.k);
                let rhs = &xp[bi * sample + (y0 + ky) * wp + kx..];
                let lhs = &c.taps[t * c.c_out * c.c_in..(t + 1) * c.c_out * c.c_in];
                for &(r0, r1) in ranges {
                    // SAFETY: acc is [c_out, len] (rows r0..r1 in bounds); lhs
                    // rows r0..r1 of [c_out, c_in]; rhs reads c_in rows of
                    // stride `chan` and `len` columns from an offset that
                    // stays within xp (padded by k floats at the end).
                    unsafe {
                        gemm::gemm(
                            r1 - r0,
                            len,
                            c.c_in,
                            acc.as_mut_ptr().add(r0 * len),
                            1,
                            len as isize,
                            true,
                            lhs.as_ptr().add(r0 * c.c_in),
                            1,
                            c.c_in as isize,
                            rhs.as_ptr(),
                            1,
                            chan as isize,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
            }
            for o in 0..c.c_out {
                let base = dst.at(((bi * c.c_out + o) * ho + y0) * wo);
                for r in 0..rows {
                    let src = &acc[o * len + r * wp..o * len + r * wp + wo];
                    // SAFETY: rows y0..y0+rows of channel o of sample bi: in
                    // bounds, and written by no other task.
                    unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), base.add(r * wo), wo) };
                }
            }
        });
        // SAFETY: the bands tile every row of every channel of every sample.
        unsafe { out.set_len(n * c.c_out * plane) };
        Ok((out, Shape::from((n, c.c_out, ho, wo))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{max_diff, rand};
    use super::*;

    #[test]
    fn matches_candle_conv2d() {
        let cases = [
            // (n, c_in, c_out, h, w, k, pad)
            (2, 3, 5, 7, 9, 3, 1),
            (1, 4, 8, 4, 4, 2, 1),
            (1, 2, 3, 1, 1, 3, 1),
            (3, 8, 4, 70, 65, 3, 1),
            (1, 3, 2, 5, 6, 1, 0),
        ];
        for (i, &(n, ci, co, h, w, k, p)) in cases.iter().enumerate() {
            let x = rand(i as u64, &[n, ci, h, w]);
            let mut wt = rand(50 + i as u64, &[co, ci, k, k]);
            if i == 1 {
                // Structural zeros: whole output rows of one tap.
                let mask = Tensor::from_vec(
                    (0..co * ci * k * k)
                        .map(|j| {
                            if (j / (ci * k * k)) % 2 == 1 && j % (k * k) == 0 {
                                0f32
                            } else {
                                1.0
                            }
                        })
                        .collect::<Vec<_>>(),
                    (co, ci, k, k),
                    &Device::Cpu,
                )
                .unwrap();
                wt = (wt * mask).unwrap();
            }
            let scale = rand(90 + i as u64, &[n, ci]);
            let xs = x
                .broadcast_mul(&scale.reshape((n, ci, 1, 1)).unwrap())
                .unwrap();
            let want = xs.conv2d(&wt, p, 1, 1, 1).unwrap();
            let got = Conv2d::new(&wt, p)
                .unwrap()
                .forward_scaled(&x, Some(&scale))
                .unwrap();
            let d = max_diff(&got, &want);
            assert!(d < 1e-4, "case {i}: {d}");
        }
    }
}
