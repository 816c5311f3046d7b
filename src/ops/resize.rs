//! Area (box) resampling of image planes followed by a centre crop, two
//! ways: the portable path as two matrix products ([`area_matrix`], which
//! candle differentiates), and the fast CPU path ([`area_crop_affine`]) that
//! computes only the taps of the cropped outputs, one plane per task, fused
//! with a per-channel affine. CLIP's preprocessing of generator output
//! picks between them with [`super::fast_path`]; its tests check the two
//! agree.

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

use super::simd::simd_dispatch;
use crate::error::Result;

/// Weights of area (box) resampling from `n` to `m` samples: row i averages
/// the input interval [i*n/m, (i+1)*n/m) with fractional overlaps.
pub fn area_matrix(n: usize, m: usize, dev: &Device) -> Result<Tensor> {
    let mut a = vec![0f32; m * n];
    for (i, (first, taps)) in area_taps(n, m).iter().enumerate() {
        a[i * n + first..i * n + first + taps.len()].copy_from_slice(taps);
    }
    Ok(Tensor::from_vec(a, (m, n), dev)?.to_dtype(DType::F32)?)
}

/// The non-zero entries of [`area_matrix`]'s rows: for each output, the
/// first input it reads and the weights from there on.
pub(crate) fn area_taps(n: usize, m: usize) -> Vec<(usize, Vec<f32>)> {
    let scale = n as f64 / m as f64;
    (0..m)
        .map(|i| {
            let (lo, hi) = (i as f64 * scale, (i + 1) as f64 * scale);
            let first = lo.floor() as usize;
            let mut taps = Vec::new();
            let mut j = first;
            while (j as f64) < hi && j < n {
                let overlap = (hi.min(j as f64 + 1.0) - lo.max(j as f64)).max(0.0);
                taps.push((overlap / scale) as f32);
                j += 1;
            }
            (first, taps)
        })
        .collect()
}

/// `images` `[n, c, h, w]` resampled by area to `nh` x `nw`, the centred
/// `crop` x `crop` kept, then `v * a + b` with channel `ch`'s `affine[ch]`:
/// on the CPU, without autograd. An affine that maps `v` first and then
/// resamples gives the same result (the area weights sum to 1).
pub fn area_crop_affine(
    images: &Tensor,
    nh: usize,
    nw: usize,
    crop: usize,
    affine: &[(f32, f32)],
) -> Result<Tensor> {
    let (n, c, h, w) = images.dims4()?;
    let (top, left) = ((nh - crop) / 2, (nw - crop) / 2);
    let rows = &area_taps(h, nh)[top..top + crop];
    let cols = &area_taps(w, nw)[left..left + crop];
    // The input rows the cropped outputs read.
    let r0 = rows[0].0;
    let r1 = rows.iter().map(|(f, t)| f + t.len()).max().unwrap_or(r0);
    let src = images.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; n * c * crop * crop];
    out.par_chunks_mut(crop * crop)
        .enumerate()
        .for_each(|(p, dst)| {
            let ch = p % c;
            let (a, b) = affine[ch];
            let plane = &src[p * h * w..(p + 1) * h * w];
            resample_plane(plane, w, rows, cols, r0, r1, a, b, dst);
        });
    Ok(Tensor::from_vec(out, (n, c, crop, crop), images.device())?)
}

simd_dispatch! {
    /// One plane through the separable taps: rows r0..r1 horizontally, then
    /// vertically, then `a * v + b`.
    #[allow(clippy::too_many_arguments)]
    fn resample_plane(
        plane: &[f32],
        w: usize,
        rows: &[(usize, Vec<f32>)],
        cols: &[(usize, Vec<f32>)],
        r0: usize,
        r1: usize,
        a: f32,
        b: f32,
        dst: &mut [f32],
    ) {
        let crop = cols.len();
        let mut tmp = vec![0f32; (r1 - r0) * crop];
        for (y, t) in (r0..r1).zip(tmp.chunks_exact_mut(crop)) {
            let line = &plane[y * w..(y + 1) * w];
            for (o, (first, taps)) in t.iter_mut().zip(cols) {
                *o = taps.iter().zip(&line[*first..]).map(|(k, v)| k * v).sum();
            }
        }
        for (o, (first, taps)) in dst.chunks_exact_mut(crop).zip(rows) {
            o.fill(0.0);
            for (i, &k) in taps.iter().enumerate() {
                let t = &tmp[(first + i - r0) * crop..(first + i - r0 + 1) * crop];
                for (v, x) in o.iter_mut().zip(t) {
                    *v += k * x;
                }
            }
            for v in o.iter_mut() {
                *v = *v * a + b;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_matrix_rows_sum_to_one() {
        let a = area_matrix(1024, 224, &Device::Cpu).unwrap();
        let sums = a.sum(1).unwrap().to_vec1::<f32>().unwrap();
        assert!(sums.iter().all(|s| (s - 1.0).abs() < 1e-5));
    }
}
