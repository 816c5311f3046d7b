//! Row kernels of the transformer layers (CLIP's encoders), on f32 rows
//! in place or into a buffer: layer norm, softmax with masked keys, bias +
//! quick GELU, each compiled for AVX2 when the CPU has it.

use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::checkpoint_values;
use super::simd::{exp, simd_dispatch, sum};
use crate::error::Result;

const LN_EPS: f32 = 1e-5;

/// Below this many elements a row kernel runs on the calling thread.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// A layer norm's weight and bias.
pub(crate) struct Norm {
    pub(crate) w: Vec<f32>,
    pub(crate) b: Vec<f32>,
}

impl Norm {
    pub(crate) fn load(vb: VarBuilder, d: usize) -> Result<Self> {
        Ok(Self {
            w: checkpoint_values(&vb, d, "weight")?,
            b: checkpoint_values(&vb, d, "bias")?,
        })
    }
}

/// Mean and 1 / standard deviation of a row (two passes: the variance of
/// the centred values, which keeps precision for rows far from zero).
#[inline(always)]
fn norm_stats(x: &[f32]) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            let v = c[i] - mean;
            acc[i] += v * v;
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    let var = (acc.iter().sum::<f32>() + tail) / n;
    (mean, 1.0 / (var + LN_EPS).sqrt())
}

simd_dispatch! {
    /// `dst = layer_norm(src) * w + b` for one row.
    pub(crate) fn layer_norm(src: &[f32], w: &[f32], b: &[f32], dst: &mut [f32]) {
        let (mean, inv) = norm_stats(src);
        let n = dst.len();
        let (src, w, b) = (&src[..n], &w[..n], &b[..n]);
        for i in 0..n {
            dst[i] = (src[i] - mean) * inv * w[i] + b[i];
        }
    }
}

simd_dispatch! {
    /// Layer norm of one row in place.
    pub(crate) fn layer_norm_in_place(x: &mut [f32], w: &[f32], b: &[f32]) {
        let (mean, inv) = norm_stats(x);
        let n = x.len();
        let (w, b) = (&w[..n], &b[..n]);
        for i in 0..n {
            x[i] = (x[i] - mean) * inv * w[i] + b[i];
        }
    }
}

simd_dispatch! {
    /// Softmax over `row[..valid]`; `row[valid..]` (masked keys) set to 0.
    pub(crate) fn softmax(row: &mut [f32], valid: usize) {
        let (head, masked) = row.split_at_mut(valid);
        masked.fill(0.0);
        let mut acc = [f32::MIN; 16];
        let mut chunks = head.chunks_exact(16);
        for c in &mut chunks {
            for i in 0..16 {
                acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(acc.iter())
            .fold(f32::MIN, |m, &v| if v > m { v } else { m });
        for v in head.iter_mut() {
            *v = exp(*v - max);
        }
        let inv = 1.0 / sum(head);
        for v in head.iter_mut() {
            *v *= inv;
        }
    }
}

simd_dispatch! {
    /// `row += bias`, then quick GELU `x * sigmoid(1.702 x)` if `gelu`.
    pub(crate) fn bias_act(row: &mut [f32], bias: &[f32], gelu: bool) {
        let n = row.len();
        let bias = &bias[..n];
        if gelu {
            for i in 0..n {
                let v = row[i] + bias[i];
                row[i] = v / (1.0 + exp(-1.702 * v));
            }
        } else {
            for i in 0..n {
                row[i] += bias[i];
            }
        }
    }
}

simd_dispatch! {
    /// Quick GELU in place (no bias).
    pub(crate) fn gelu_in_place(row: &mut [f32]) {
        for v in row.iter_mut() {
            *v /= 1.0 + exp(-1.702 * *v);
        }
    }
}

/// Layer norm of every `d`-wide row of `src` into `dst`.
pub(crate) fn norm_rows(src: &[f32], norm: &Norm, dst: &mut [f32]) {
    let d = norm.w.len();
    let rows_per_task = (PAR_MIN_ELEMS / d).max(1);
    let task = |(s, o): (&[f32], &mut [f32])| {
        for (s, o) in s.chunks_exact(d).zip(o.chunks_exact_mut(d)) {
            layer_norm(s, &norm.w, &norm.b, o);
        }
    };
    if src.len() <= PAR_MIN_ELEMS {
        task((src, dst));
    } else {
        src.par_chunks(rows_per_task * d)
            .zip(dst.par_chunks_mut(rows_per_task * d))
            .for_each(task);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_kernels_match_plain_formulas() {
        let x: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.1 - 4.0)
            .collect();
        let w: Vec<f32> = (0..37).map(|i| 0.5 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..37).map(|i| i as f32 * -0.02).collect();
        let mean = x.iter().sum::<f32>() / 37.0;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 37.0;
        let mut out = vec![0f32; 37];
        layer_norm(&x, &w, &b, &mut out);
        let mut inplace = x.clone();
        layer_norm_in_place(&mut inplace, &w, &b);
        for i in 0..37 {
            let want = (x[i] - mean) / (var + LN_EPS).sqrt() * w[i] + b[i];
            assert!((out[i] - want).abs() < 1e-5 && out[i] == inplace[i]);
        }
        let mut row = x.clone();
        softmax(&mut row, 30);
        let m = x[..30].iter().cloned().fold(f32::MIN, f32::max);
        let z: f32 = x[..30].iter().map(|v| (v - m).exp()).sum();
        for i in 0..37 {
            let want = if i < 30 { (x[i] - m).exp() / z } else { 0.0 };
            assert!((row[i] - want).abs() < 1e-6);
        }
        let mut g = x.clone();
        bias_act(&mut g, &b, true);
        for i in 0..37 {
            let v = x[i] + b[i];
            let want = v / (1.0 + (-1.702 * v).exp());
            assert!((g[i] - want).abs() < 1e-6);
        }
    }
}
