//! `upfirdn2d` with a separable FIR filter: upsample by zero insertion, pad
//! (or crop), filter, downsample, the same along both spatial axes.
//!
//! StyleGAN2 resamples with the 2-D filter `outer(f, f) / sum^2` for
//! `f = [1, 3, 3, 1]`, which is separable, so each axis gets one 1-D pass of
//! 4 taps instead of a 16-tap 2-D kernel. As in NVIDIA's `upfirdn2d`, the
//! filter is convolved (flipped, then correlated) and `gain` multiplies the
//! 2-D filter (`sqrt(gain)` per axis).
//!
//! A fast CPU kernel (rayon over planes, row-wise vectorisable loops) and a
//! portable version from tensor ops (any device, differentiable) compute the
//! same thing; [`super::fast_path`] picks one. Tests check them against each
//! other and against a direct 2-D definition.

use candle_core::{Shape, Tensor};
use rayon::prelude::*;

use super::{fast_path, Dims4, Kernel, Nchw};
use crate::error::{Error, Result};

/// StyleGAN2's resampling filter, per axis, normalised to sum 1.
pub const FILTER_1331: [f32; 4] = [0.125, 0.375, 0.375, 0.125];

/// One separable resampling step, applied along both spatial axes.
#[derive(Debug, Clone)]
pub struct UpFirDn {
    /// Correlation taps per axis (the filter already flipped and scaled).
    taps: Vec<f32>,
    up: usize,
    down: usize,
    /// Padding before / after each axis (after upsampling); negative crops.
    pad: (isize, isize),
}

impl UpFirDn {
    /// `filter`: the 1-D filter (convolved, as NVIDIA's `flip_filter=False`);
    /// `gain`: gain of the 2-D filter.
    pub fn new(filter: &[f32], up: usize, down: usize, pad: (isize, isize), gain: f32) -> Self {
        let g = gain.sqrt();
        Self {
            taps: filter.iter().rev().map(|t| t * g).collect(),
            up: up.max(1),
            down: down.max(1),
            pad,
        }
    }

    /// NVIDIA's `upsample2d(x, f, up=2)`: 2x upsampling, gain 4, padding
    /// `[(k+1)/2, (k-2)/2]` for a k-tap filter.
    pub fn upsample2(filter: &[f32]) -> Self {
        let k = filter.len() as isize;
        Self::new(filter, 2, 1, ((k + 1) / 2, (k - 2) / 2), 4.0)
    }

    /// NVIDIA's `downsample2d(x, f, down=2)`: gain 1, padding `[(k-2+1)/2, (k-2)/2]`.
    pub fn downsample2(filter: &[f32]) -> Self {
        let k = filter.len() as isize;
        Self::new(filter, 1, 2, ((k - 1) / 2, (k - 2) / 2), 1.0)
    }

    /// Output length along an axis of input length `len`.
    pub fn out_len(&self, len: usize) -> Result<usize> {
        let full = (len * self.up) as isize + self.pad.0 + self.pad.1 - self.taps.len() as isize;
        if full < 0 {
            return Err(Error::invalid(format!(
                "upfirdn2d: input length {len} is too small for {} taps and padding {:?}",
                self.taps.len(),
                self.pad
            )));
        }
        Ok(full as usize / self.down + 1)
    }

    /// Output height and width of an `h` x `w` plane, as the error type
    /// custom ops return.
    fn out_hw(&self, h: usize, w: usize) -> candle_core::Result<(usize, usize)> {
        let err = |e: Error| candle_core::Error::Msg(e.to_string());
        Ok((self.out_len(h).map_err(err)?, self.out_len(w).map_err(err)?))
    }

    /// `x`: `[N, C, H, W]` -> `[N, C, out_len(H), out_len(W)]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.out_len(h)?;
        self.out_len(w)?;
        if fast_path(&[x]) {
            Ok(x.contiguous()?.apply_op1_no_bwd(&Kernel(self))?)
        } else {
            self.forward_portable(x)
        }
    }

    /// The same from tensor ops: one pass per axis.
    pub fn forward_portable(&self, x: &Tensor) -> Result<Tensor> {
        let y = self.axis_portable(x, 3)?;
        self.axis_portable(&y, 2)
    }

    fn axis_portable(&self, x: &Tensor, dim: usize) -> Result<Tensor> {
        let len = x.dim(dim)?;
        let out = self.out_len(len)?;
        // Zero insertion: [.., L, ..] -> [.., L, up, ..] -> [.., L * up, ..].
        let mut y = if self.up > 1 {
            let mut parts = vec![x.unsqueeze(dim + 1)?];
            let zeros = parts[0].zeros_like()?;
            parts.extend(std::iter::repeat_n(zeros, self.up - 1));
            let mut shape = x.dims().to_vec();
            shape[dim] *= self.up;
            Tensor::cat(&parts, dim + 1)?.reshape(shape)?
        } else {
            x.clone()
        };
        y = pad_axis(&y, dim, self.pad.0, self.pad.1)?;
        // Correlate: sum over taps of shifted copies, keeping every `down`th.
        let full = (out - 1) * self.down + 1;
        let mut acc: Option<Tensor> = None;
        for (t, &k) in self.taps.iter().enumerate() {
            let term = (y.narrow(dim, t, full)? * k as f64)?;
            acc = Some(match acc {
                None => term,
                Some(a) => (a + term)?,
            });
        }
        let acc = acc.ok_or_else(|| Error::invalid("upfirdn2d: empty filter"))?;
        if self.down == 1 {
            return Ok(acc);
        }
        // Keep samples 0, down, 2 down, ...: pad to out * down, split, take 0.
        let acc = pad_axis(&acc, dim, 0, (out * self.down - full) as isize)?;
        let mut shape = acc.dims().to_vec();
        shape[dim] = out;
        shape.insert(dim + 1, self.down);
        Ok(acc
            .reshape(shape)?
            .narrow(dim + 1, 0, 1)?
            .squeeze(dim + 1)?)
    }

    /// Horizontal pass over one row: zero insertion and padding into
    /// `buf`, correlation over contiguous slices (vectorisable), every
    /// `down`th sample kept. `out.len()` is `out_len(src.len())`.
    fn row(&self, src: &[f32], buf: &mut Vec<f32>, full: &mut Vec<f32>, out: &mut [f32]) {
        let k = self.taps.len();
        let len = (src.len() * self.up) as isize + self.pad.0 + self.pad.1;
        buf.clear();
        buf.resize(len.max(0) as usize, 0.0);
        for (i, &v) in src.iter().enumerate() {
            let at = (i * self.up) as isize + self.pad.0;
            if at >= 0 && at < len {
                buf[at as usize] = v;
            }
        }
        let n = buf.len() + 1 - k;
        let dst: &mut [f32] = if self.down == 1 {
            &mut out[..n]
        } else {
            full.clear();
            full.resize(n, 0.0);
            full
        };
        dst.fill(0.0);
        for (t, &c) in self.taps.iter().enumerate() {
            for (o, v) in dst.iter_mut().zip(&buf[t..t + n]) {
                *o += c * v;
            }
        }
        if self.down > 1 {
            for (i, o) in out.iter_mut().enumerate() {
                *o = full[i * self.down];
            }
        }
    }

    /// Vertical pass: `tmp` holds `rows` rows of `width`; writes
    /// `out_len(rows)` rows into `dst`, whole rows at a time.
    fn columns(&self, tmp: &[f32], rows: usize, width: usize, dst: &mut [f32]) {
        dst.fill(0.0);
        for (j, out_row) in dst.chunks_mut(width).enumerate() {
            let base = (j * self.down) as isize - self.pad.0;
            for (t, &k) in self.taps.iter().enumerate() {
                let u = base + t as isize;
                if u < 0 || !(u as usize).is_multiple_of(self.up) || u as usize / self.up >= rows {
                    continue;
                }
                let i = u as usize / self.up;
                for (o, v) in out_row.iter_mut().zip(&tmp[i * width..(i + 1) * width]) {
                    *o += k * v;
                }
            }
        }
    }
}

/// The four output phases of a stride-2 transposed conv, interleaved into
/// one image and FIR-filtered, in one pass per plane.
///
/// `p`: `[N, 4C, H, W]`, channel `(2a + b) C + c` holding the samples at
/// rows `2m + a`, columns `2k + b` of the interleaved `[2H, 2W]` image `Y`.
/// Returns `fir(Y)`. The portable version interleaves with a permute first.
pub fn interleave_phases_fir(p: &Tensor, fir: &UpFirDn) -> Result<Tensor> {
    let (n, c4, h, w) = p.dims4()?;
    if c4 % 4 != 0 {
        return Err(Error::invalid(format!(
            "phase interleave needs 4C channels, got {c4}"
        )));
    }
    if fast_path(&[p]) {
        fir.out_len(2 * h)?;
        fir.out_len(2 * w)?;
        return Ok(p
            .contiguous()?
            .apply_op1_no_bwd(&Kernel(&PhasesFir(fir.clone())))?);
    }
    let c = c4 / 4;
    let y = p
        .reshape((n, 2, 2, c, h, w))?
        .permute((0, 3, 4, 1, 5, 2))?
        .reshape((n, c, 2 * h, 2 * w))?;
    fir.forward_portable(&y)
}

struct PhasesFir(UpFirDn);

impl Nchw for PhasesFir {
    const NAME: &'static str = "interleave-phases-fir";

    fn run(&self, x: &[f32], dims: Dims4) -> candle_core::Result<(Vec<f32>, Shape)> {
        let (n, c4, h, w) = dims;
        let c = c4 / 4;
        let fir = &self.0;
        let (oh, ow) = fir.out_hw(2 * h, 2 * w)?;
        let plane = h * w;
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .enumerate()
            .for_each(|(pi, dst)| {
                let (b, ch) = (pi / c, pi % c);
                let phase = |ph: usize| &x[(b * c4 + ph * c + ch) * plane..][..plane];
                let mut tmp = vec![0f32; 2 * h * ow];
                let (mut line, mut buf, mut full) = (vec![0f32; 2 * w], Vec::new(), Vec::new());
                for r in 0..2 * h {
                    let (a, m) = (r % 2, r / 2);
                    let (p0, p1) = (phase(2 * a), phase(2 * a + 1));
                    for k in 0..w {
                        line[2 * k] = p0[m * w + k];
                        line[2 * k + 1] = p1[m * w + k];
                    }
                    fir.row(&line, &mut buf, &mut full, &mut tmp[r * ow..(r + 1) * ow]);
                }
                fir.columns(&tmp, 2 * h, ow, dst);
            });
        Ok((out, Shape::from((n, c, oh, ow))))
    }
}

fn pad_axis(x: &Tensor, dim: usize, before: isize, after: isize) -> Result<Tensor> {
    let mut y = x.clone();
    if before < 0 {
        let len = y.dim(dim)?;
        y = y.narrow(dim, (-before) as usize, len - (-before) as usize)?;
    }
    if after < 0 {
        let len = y.dim(dim)?;
        y = y.narrow(dim, 0, len - (-after) as usize)?;
    }
    if before > 0 || after > 0 {
        y = y.pad_with_zeros(dim, before.max(0) as usize, after.max(0) as usize)?;
    }
    Ok(y)
}

impl Nchw for UpFirDn {
    const NAME: &'static str = "upfirdn2d";

    fn run(&self, x: &[f32], dims: Dims4) -> candle_core::Result<(Vec<f32>, Shape)> {
        let (n, c, h, w) = dims;
        let (oh, ow) = self.out_hw(h, w)?;
        let mut out = vec![0f32; n * c * oh * ow];
        out.par_chunks_mut(oh * ow)
            .zip(x.par_chunks(h * w))
            .for_each(|(dst, src)| {
                let mut tmp = vec![0f32; h * ow];
                let (mut buf, mut full) = (Vec::new(), Vec::new());
                for (y, row) in src.chunks(w).enumerate() {
                    self.row(row, &mut buf, &mut full, &mut tmp[y * ow..(y + 1) * ow]);
                }
                self.columns(&tmp, h, ow, dst);
            });
        Ok((out, Shape::from((n, c, oh, ow))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{max_diff, portable, rand};
    use super::*;
    use candle_core::{DType, Device};

    fn vec(t: &Tensor) -> Vec<f32> {
        t.flatten_all().unwrap().to_vec1().unwrap()
    }

    /// Direct definition with a 2-D (outer product) kernel, as NVIDIA's
    /// reference: zero insertion, padding, convolution, dropping pixels.
    fn naive(
        x: &Tensor,
        f: &[f32],
        up: usize,
        down: usize,
        pad: (isize, isize),
        gain: f32,
    ) -> Tensor {
        let (n, c, h, w) = x.dims4().unwrap();
        let xs = vec(x);
        let k = f.len();
        let out_len =
            |l: usize| ((l * up) as isize + pad.0 + pad.1 - k as isize) as usize / down + 1;
        let (oh, ow) = (out_len(h), out_len(w));
        let mut out = vec![0f32; n * c * oh * ow];
        for p in 0..n * c {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut acc = 0f32;
                    for ty in 0..k {
                        for tx in 0..k {
                            // Correlation with the flipped filter == convolution.
                            let fv = f[k - 1 - ty] * f[k - 1 - tx] * gain;
                            let uy = (oy * down + ty) as isize - pad.0;
                            let ux = (ox * down + tx) as isize - pad.0;
                            if uy < 0 || ux < 0 {
                                continue;
                            }
                            let (uy, ux) = (uy as usize, ux as usize);
                            if uy % up != 0 || ux % up != 0 || uy / up >= h || ux / up >= w {
                                continue;
                            }
                            acc += fv * xs[p * h * w + (uy / up) * w + ux / up];
                        }
                    }
                    out[p * oh * ow + oy * ow + ox] = acc;
                }
            }
        }
        Tensor::from_vec(out, (n, c, oh, ow), &Device::Cpu).unwrap()
    }

    #[test]
    fn fast_and_portable_match_the_definition() {
        // An asymmetric filter catches a missing flip.
        let skew = [0.1f32, 0.5, 0.3, 0.1];
        type Case<'a> = (UpFirDn, &'a [f32], usize, usize, (isize, isize), f32);
        let cases: Vec<Case> = vec![
            (UpFirDn::upsample2(&skew), &skew, 2, 1, (2, 1), 4.0),
            (UpFirDn::downsample2(&skew), &skew, 1, 2, (1, 1), 1.0),
            (
                UpFirDn::new(&skew, 1, 1, (1, 0), 4.0),
                &skew,
                1,
                1,
                (1, 0),
                4.0,
            ),
            (
                UpFirDn::new(&skew, 2, 1, (-1, 3), 2.0),
                &skew,
                2,
                1,
                (-1, 3),
                2.0,
            ),
            (
                UpFirDn::new(&skew, 1, 2, (2, -1), 1.0),
                &skew,
                1,
                2,
                (2, -1),
                1.0,
            ),
        ];
        for (i, (op, f, up, down, pad, gain)) in cases.into_iter().enumerate() {
            for shape in [[2, 3, 5, 7], [1, 1, 8, 8], [1, 2, 4, 3]] {
                let x = rand(i as u64, &shape);
                let want = naive(&x, f, up, down, pad, gain);
                let fast = op.forward(&x).unwrap();
                let slow = op.forward_portable(&x).unwrap();
                assert!(max_diff(&fast, &want) < 1e-5, "case {i} fast {shape:?}");
                assert!(max_diff(&slow, &want) < 1e-5, "case {i} portable {shape:?}");
            }
        }
    }

    #[test]
    fn interleaved_phases_fast_matches_portable() {
        let fir = UpFirDn::new(&[0.1, 0.5, 0.3, 0.1], 1, 1, (1, 0), 4.0);
        for shape in [[2, 12, 5, 7], [1, 4, 2, 2], [1, 8, 9, 9]] {
            let x = rand(7, &shape);
            let fast = interleave_phases_fir(&x, &fir).unwrap();
            let slow = portable(|| interleave_phases_fir(&x, &fir).unwrap());
            assert_eq!(
                fast.dims(),
                [shape[0], shape[1] / 4, 2 * shape[2] - 2, 2 * shape[3] - 2]
            );
            assert!(max_diff(&fast, &slow) < 1e-5, "{shape:?}");
        }
    }

    #[test]
    fn upsample_keeps_a_constant_image_constant_inside() {
        let x = Tensor::ones((1, 1, 6, 6), DType::F32, &Device::Cpu).unwrap();
        let y = UpFirDn::upsample2(&FILTER_1331).forward(&x).unwrap();
        assert_eq!(y.dims(), [1, 1, 12, 12]);
        let v = vec(&y.narrow(2, 2, 8).unwrap().narrow(3, 2, 8).unwrap());
        assert!(v.iter().all(|&a| (a - 1.0).abs() < 1e-6), "{v:?}");
    }
}
