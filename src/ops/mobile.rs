//! The kernels MobileStyleGAN needs beyond candle's matmul.
//!
//! candle implements a grouped convolution as one convolution per group, so a
//! depthwise 3x3 over 512 channels becomes 512 tiny convolutions: far too
//! slow. Each op here has a fast CPU kernel (plain loops over contiguous
//! planes, parallel over planes with rayon, written so the compiler
//! vectorises the inner row loop) and a portable version built from candle
//! tensor ops that runs on any device (CUDA included) and carries gradients;
//! [`super::fast_path`] picks one. Tests check the two agree.

use std::sync::Arc;

use candle_core::{Shape, Tensor};
use rayon::prelude::*;

pub use super::epilogue::{noise_bias_lrelu, noise_bias_lrelu_portable};
use super::{fast_path, values, Dims4, Kernel, Nchw, SharedOut};
use crate::error::Result;

// ---------------------------------------------------------------------------
// Depthwise 3x3 convolution, zero padding 1, stride 1, per-sample weights.

/// `x`: `[N, C, H, W]`; `w`: `[N, C, 3, 3]` (a separate kernel per sample,
/// which lets callers fold the style modulation into the weights).
pub fn depthwise3x3(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let (n, c, _, _) = x.dims4()?;
    let w = w.reshape((n, c, 9))?;
    if fast_path(&[x, &w]) {
        return Ok(x.contiguous()?.apply_op1_no_bwd(&Kernel(&Depthwise3x3 {
            weights: values(&w)?.into(),
        }))?);
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

impl Nchw for Depthwise3x3 {
    const NAME: &'static str = "depthwise3x3";

    fn run(&self, x: &[f32], dims: Dims4) -> candle_core::Result<(Vec<f32>, Shape)> {
        let (n, c, h, w) = dims;
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
        Ok((out, Shape::from(dims)))
    }
}

/// One plane: `dst[y][x] = sum k[dy][dx] * src[y+dy-1][x+dx-1]` (zero outside).
fn dw_plane(src: &[f32], dst: &mut [f32], k: &[f32], h: usize, w: usize) {
    let zeros = vec![0f32; w];
    for y in 0..h {
        dw_row(src, &zeros, y, h, w, k, &mut dst[y * w..(y + 1) * w]);
    }
}

/// Output row `y` of a depthwise 3x3 over plane `src` (`h` x `w`), written
/// (not accumulated) into `out`. `zeros` is a row of `w` zeros standing in
/// for the padding above the first and below the last row.
#[inline]
fn dw_row(src: &[f32], zeros: &[f32], y: usize, h: usize, w: usize, k: &[f32], out: &mut [f32]) {
    let row = |r: isize| -> &[f32] {
        if r < 0 || r >= h as isize {
            zeros
        } else {
            &src[r as usize * w..(r as usize + 1) * w]
        }
    };
    let (u, m, d) = (row(y as isize - 1), row(y as isize), row(y as isize + 1));
    if w == 1 {
        out[0] = k[1] * u[0] + k[4] * m[0] + k[7] * d[0];
        return;
    }
    // Interior columns in one pass. Exact-length slices and hoisted taps let
    // the compiler drop bounds checks and vectorise the loop.
    let n = w - 2;
    let [k0, k1, k2, k3, k4, k5, k6, k7, k8] =
        [k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7], k[8]];
    let (ul, uc, ur) = (&u[..n], &u[1..n + 1], &u[2..n + 2]);
    let (ml, mc, mr) = (&m[..n], &m[1..n + 1], &m[2..n + 2]);
    let (dl, dc, dr) = (&d[..n], &d[1..n + 1], &d[2..n + 2]);
    let inner = &mut out[1..n + 1];
    for i in 0..n {
        inner[i] = k0 * ul[i]
            + k1 * uc[i]
            + k2 * ur[i]
            + k3 * ml[i]
            + k4 * mc[i]
            + k5 * mr[i]
            + k6 * dl[i]
            + k7 * dc[i]
            + k8 * dr[i];
    }
    let edge = |c: usize, l: Option<usize>, r: Option<usize>| {
        let tap = |row: &[f32], o: usize| {
            let mut v = k[o + 1] * row[c];
            if let Some(l) = l {
                v += k[o] * row[l];
            }
            if let Some(r) = r {
                v += k[o + 2] * row[r];
            }
            v
        };
        tap(u, 0) + tap(m, 3) + tap(d, 6)
    };
    out[0] = edge(0, None, Some(1));
    out[w - 1] = edge(w - 1, Some(w - 2), None);
}

// ---------------------------------------------------------------------------
// Fused styled depthwise-separable conv (CPU): dw 3x3 -> pointwise -> noise,
// bias, leaky ReLU, one band of rows at a time so the intermediate stays in
// cache and the output is written once.

/// Parameters of one fused styled conv; see [`styled_dwsep_conv`].
pub struct DwSepParams<'a> {
    /// `[N, Cin, 3, 3]` per-sample depthwise kernels (style folded in).
    pub k_dw: &'a Tensor,
    /// `[Cout, Cin]` pointwise weights.
    pub w_pw: &'a Tensor,
    /// `[N or 1, 1, H, W]` noise, already scaled.
    pub noise: &'a Tensor,
    /// `[Cout]`
    pub bias: &'a Tensor,
    pub slope: f32,
}

/// `lrelu(pw(dw(x)) + noise + bias)`; `x`: `[N, Cin, H, W]` -> `[N, Cout, H, W]`.
pub fn styled_dwsep_conv(x: &Tensor, p: &DwSepParams) -> Result<Tensor> {
    let (n, cin, h, w) = x.dims4()?;
    let cout = p.w_pw.dim(0)?;
    if fast_path(&[x, p.k_dw, p.w_pw, p.noise, p.bias]) {
        let nn = p.noise.dim(0)?;
        if p.noise.dims() != [nn, 1, h, w] || (nn != 1 && nn != n) {
            return Err(crate::error::Error::invalid(format!(
                "noise {:?} does not fit {:?}",
                p.noise.dims(),
                x.dims()
            )));
        }
        let op = FusedDwSep {
            k_dw: values(&p.k_dw.reshape((n, cin, 9))?)?,
            w_pw: values(p.w_pw)?,
            noise: values(p.noise)?,
            noise_per_sample: nn != 1,
            bias: values(p.bias)?,
            cout,
            slope: p.slope,
        };
        return Ok(x.contiguous()?.apply_op1_no_bwd(&Kernel(&op))?);
    }
    let y = depthwise3x3(x, p.k_dw)?;
    let pw = p
        .w_pw
        .unsqueeze(0)?
        .broadcast_as((n, cout, cin))?
        .contiguous()?;
    let y = pw
        .matmul(&y.reshape((n, cin, h * w))?)?
        .reshape((n, cout, h, w))?;
    noise_bias_lrelu(y, p.noise, p.bias, p.slope)
}

struct FusedDwSep {
    k_dw: Vec<f32>,
    w_pw: Vec<f32>,
    noise: Vec<f32>,
    noise_per_sample: bool,
    bias: Vec<f32>,
    cout: usize,
    slope: f32,
}

/// Pixels per band: the dw output of one band (Cin x BAND_PIXELS floats, at
/// most 512 KB for Cin = 32 at 512 px) stays in L2 for the pointwise matmul.
const BAND_PIXELS: usize = 4096;

impl Nchw for FusedDwSep {
    const NAME: &'static str = "styled-dwsep-conv";

    fn run(&self, x: &[f32], dims: Dims4) -> candle_core::Result<(Vec<f32>, Shape)> {
        let (n, cin, h, w) = dims;
        let cout = self.cout;
        if self.k_dw.len() != n * cin * 9
            || self.w_pw.len() != cout * cin
            || self.bias.len() != cout
        {
            candle_core::bail!(
                "styled-dwsep-conv: parameter sizes do not fit input {:?}",
                Shape::from(dims)
            );
        }
        let plane = h * w;
        let rows = (BAND_PIXELS / w).clamp(1, h);
        let bands = h.div_ceil(rows);
        let len = n * cout * plane;
        let mut out: Vec<f32> = Vec::with_capacity(len);
        let dst = SharedOut(out.as_mut_ptr());
        (0..n * bands).into_par_iter().for_each(|task| {
            let (b, band) = (task / bands, task % bands);
            let y0 = band * rows;
            let y1 = (y0 + rows).min(h);
            let px = (y1 - y0) * w;
            let zeros = vec![0f32; w];
            let mut mid = vec![0f32; cin * px];
            for ci in 0..cin {
                let src = &x[(b * cin + ci) * plane..(b * cin + ci + 1) * plane];
                let k = &self.k_dw[(b * cin + ci) * 9..(b * cin + ci) * 9 + 9];
                for y in y0..y1 {
                    let o = ci * px + (y - y0) * w;
                    dw_row(src, &zeros, y, h, w, k, &mut mid[o..o + w]);
                }
            }
            let base = dst.at(b * cout * plane + y0 * w);
            // SAFETY: `base` addresses rows y0..y1 of every output channel of
            // sample b: an in-bounds region no other task writes. gemm reads
            // `mid` and `w_pw` and writes each of the cout x px destination
            // elements (read_dst = false, so uninitialised memory is fine).
            unsafe {
                gemm::gemm(
                    cout,
                    px,
                    cin,
                    base,
                    1,
                    plane as isize,
                    false,
                    self.w_pw.as_ptr(),
                    1,
                    cin as isize,
                    mid.as_ptr(),
                    1,
                    px as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            let noise = if self.noise_per_sample {
                &self.noise[b * plane + y0 * w..b * plane + y1 * w]
            } else {
                &self.noise[y0 * w..y1 * w]
            };
            for co in 0..cout {
                // SAFETY: the same disjoint region, now initialised by gemm.
                let row = unsafe { std::slice::from_raw_parts_mut(base.add(co * plane), px) };
                let (bias, slope) = (self.bias[co], self.slope);
                for (v, nz) in row.iter_mut().zip(noise) {
                    let t = *v + nz + bias;
                    // max(t, slope * t) == leaky ReLU for slope < 1; branch-free.
                    *v = t.max(t * slope);
                }
            }
        });
        // SAFETY: every element was written above (the bands tile all rows of
        // every channel of every sample).
        unsafe { out.set_len(len) };
        Ok((out, Shape::from((n, cout, h, w))))
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
    if fast_path(&[x]) && scale.is_none_or(|s| fast_path(&[s])) {
        let scale = match scale {
            Some(s) => Some(values(&s.reshape((n, c4))?)?.into()),
            None => None,
        };
        return Ok(x
            .contiguous()?
            .apply_op1_no_bwd(&Kernel(&IdwtHaar { scale }))?);
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

impl Nchw for IdwtHaar {
    const NAME: &'static str = "idwt-haar";

    fn run(&self, x: &[f32], dims: Dims4) -> candle_core::Result<(Vec<f32>, Shape)> {
        let (n, c4, h, w) = dims;
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
        Ok((out, Shape::from((n, c, 2 * h, 2 * w))))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{max_diff, portable, rand};
    use super::*;
    use candle_core::Device;

    // Odd, tiny and band-splitting shapes: 1-pixel planes, single rows and
    // columns, widths whose bands do not divide the height.
    const SHAPES: [(usize, usize, usize, usize); 6] = [
        (1, 3, 1, 1),
        (2, 2, 1, 7),
        (1, 2, 5, 1),
        (2, 3, 4, 4),
        (1, 2, 37, 130),
        (3, 2, 64, 64),
    ];

    #[test]
    fn depthwise_fast_matches_portable() {
        for (i, &(n, c, h, w)) in SHAPES.iter().enumerate() {
            let x = rand(i as u64, &[n, c, h, w]);
            let k = rand(100 + i as u64, &[n, c, 3, 3]);
            let fast = depthwise3x3(&x, &k).unwrap();
            let slow = depthwise3x3_portable(&x, &k).unwrap();
            assert!(max_diff(&fast, &slow) < 1e-5, "shape {:?}", (n, c, h, w));
        }
    }

    #[test]
    fn fused_dwsep_matches_portable() {
        for (i, &(n, cin, h, w)) in SHAPES.iter().enumerate() {
            let cout = 3 + i;
            let x = rand(i as u64, &[n, cin, h, w]);
            let k_dw = rand(10 + i as u64, &[n, cin, 3, 3]);
            let w_pw = rand(20 + i as u64, &[cout, cin]);
            let bias = rand(30 + i as u64, &[cout]);
            for noise_n in [1, n] {
                let noise = rand(40 + i as u64, &[noise_n, 1, h, w]);
                let p = DwSepParams {
                    k_dw: &k_dw,
                    w_pw: &w_pw,
                    noise: &noise,
                    bias: &bias,
                    slope: 0.2,
                };
                let fast = styled_dwsep_conv(&x, &p).unwrap();
                let slow = portable(|| styled_dwsep_conv(&x, &p).unwrap());
                assert!(max_diff(&fast, &slow) < 1e-4, "shape {:?}", (n, cin, h, w));
            }
        }
    }

    #[test]
    fn idwt_fast_matches_portable_and_inverts_haar() {
        let x = rand(1, &[2, 8, 5, 3]);
        let scale = rand(2, &[2, 8]);
        for s in [None, Some(&scale)] {
            let fast = idwt_haar(&x, s).unwrap();
            let slow = idwt_haar_portable(&x, s).unwrap();
            assert_eq!(fast.dims(), [2, 2, 10, 6]);
            assert!(max_diff(&fast, &slow) < 1e-6);
        }
        // A constant low band alone gives a constant image LL/2 (Haar: a^2 = 1/2).
        let mut v = vec![0f32; 4 * 4];
        v[..4].fill(2.0);
        let x = Tensor::from_vec(v, (1, 4, 2, 2), &Device::Cpu).unwrap();
        let out = idwt_haar(&x, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(out.iter().all(|&o| (o - 1.0).abs() < 1e-6), "{out:?}");
    }
}
