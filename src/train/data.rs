//! Training samples from the generator: latent codes drawn per sample index
//! (so sample `i` of a seed is always the same, however samples are batched,
//! cached or resumed), W+ with optional style mixing, images, and their CLIP
//! image embeddings through the differentiable preprocessing path.

use candle_core::{DType, Tensor};
use rand::Rng;

use crate::clip::Clip;
use crate::error::Result;
use crate::generator::{Generator, NoiseMode};
use crate::rng;

/// How samples are drawn and rendered (a subset of `TrainConfig`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSpec {
    pub truncation: f64,
    pub style_mixing: f64,
    /// Side of the image CLIP sees (already capped at the resolution).
    pub image_size: usize,
    pub gen_batch: usize,
}

/// The latent codes of some samples: two w per sample and the style index
/// where W+ switches from the first to the second (`num_styles` = no mixing).
#[derive(Debug, Clone)]
pub struct Codes {
    pub w: Tensor, // [n, 2, w_dim]
    pub cross: Vec<u32>,
}

/// Codes of samples `indices` in stream family `domain` ("pair", "eval", ...).
pub fn sample_codes(
    g: &dyn Generator,
    seed: u64,
    domain: &str,
    indices: std::ops::Range<u64>,
    spec: &SampleSpec,
) -> Result<Codes> {
    let (zd, styles) = (g.z_dim(), g.num_styles());
    let n = (indices.end - indices.start) as usize;
    let mut z = Vec::with_capacity(2 * n * zd);
    let mut cross = Vec::with_capacity(n);
    for i in indices {
        let mut r = rng::stream(seed, &format!("{domain}-{i}"));
        z.extend(rng::normals(&mut r, 2 * zd));
        let mix = styles > 1 && r.random::<f64>() < spec.style_mixing;
        cross.push(if mix {
            r.random_range(1..styles) as u32
        } else {
            styles as u32
        });
    }
    let z = Tensor::from_vec(z, (2 * n, zd), g.device())?;
    let w = g.truncate(&g.map(&z)?, spec.truncation)?;
    Ok(Codes {
        w: w.reshape((n, 2, g.w_dim()))?,
        cross,
    })
}

/// W+ `[n, num_styles, w_dim]`: styles before `cross` from the first w, the
/// rest from the second.
pub fn wplus(codes: &Codes, num_styles: usize) -> Result<Tensor> {
    let (n, _, d) = codes.w.dims3()?;
    let mask: Vec<u8> = codes
        .cross
        .iter()
        .flat_map(|&c| (0..num_styles).map(move |s| u8::from((s as u32) < c)))
        .collect();
    let mask = Tensor::from_vec(mask, (n, num_styles, 1), codes.w.device())?
        .broadcast_as((n, num_styles, d))?;
    let first = codes.w.narrow(1, 0, 1)?.broadcast_as((n, num_styles, d))?;
    let second = codes.w.narrow(1, 1, 1)?.broadcast_as((n, num_styles, d))?;
    Ok(mask.where_cond(&first, &second)?.contiguous()?)
}

/// Render W+ in batches of `spec.gen_batch` and reduce to `spec.image_size`.
/// Without gradients (fast kernels); see [`render_differentiable`].
pub fn render(g: &dyn Generator, wplus: &Tensor, spec: &SampleSpec) -> Result<Tensor> {
    let n = wplus.dim(0)?;
    let mut out = Vec::new();
    for start in (0..n).step_by(spec.gen_batch) {
        let len = spec.gen_batch.min(n - start);
        let img = g.synthesize(&wplus.narrow(0, start, len)?, NoiseMode::Fixed)?;
        out.push(reduce(&img, spec.image_size)?);
    }
    Ok(Tensor::cat(&out, 0)?)
}

/// Render W+ that carries a gradient: the portable (differentiable) kernels
/// on this thread, the whole batch at once. (The kernels also refuse their
/// fast, gradient-less path for inputs that carry a gradient; the guard says
/// so for the whole render, constant inputs included.)
pub fn render_differentiable(g: &dyn Generator, wplus: &Tensor, size: usize) -> Result<Tensor> {
    let _portable = crate::ops::Portable::on();
    reduce(&g.synthesize(wplus, NoiseMode::Fixed)?, size)
}

/// Area-reduce `[n, 3, R, R]` to `size` (a power-of-two divisor of R).
pub fn reduce(images: &Tensor, size: usize) -> Result<Tensor> {
    let r = images.dim(3)?;
    Ok(if r == size {
        images.clone()
    } else {
        images.avg_pool2d(r / size)?
    })
}

/// L2-normalised CLIP image embeddings of generator images `[n, 3, s, s]`.
pub fn embed(clip: &Clip, images: &Tensor) -> Result<Tensor> {
    clip.encode_generated(&images.to_dtype(DType::F32)?)
}

/// Rendered samples: codes, W+, images at `image_size` and embeddings.
pub struct Rendered {
    pub codes: Codes,
    pub wplus: Tensor,
    pub images: Tensor,
    pub e: Tensor,
}

/// Draw, render and embed samples `indices` of `domain`.
pub fn render_samples(
    g: &dyn Generator,
    clip: &Clip,
    seed: u64,
    domain: &str,
    indices: std::ops::Range<u64>,
    spec: &SampleSpec,
) -> Result<Rendered> {
    let codes = sample_codes(g, seed, domain, indices, spec)?;
    let wplus = wplus(&codes, g.num_styles())?;
    let images = render(g, &wplus, spec)?;
    let e = embed(clip, &images)?;
    Ok(Rendered {
        codes,
        wplus,
        images,
        e,
    })
}

/// The side CLIP's input is reduced to for generator `g`.
pub fn effective_image_size(requested: usize, resolution: usize) -> usize {
    requested.min(resolution)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn wplus_switches_at_the_crossover() {
        let w = Tensor::from_vec(
            vec![1f32, 1.0, 2.0, 2.0, 3.0, 3.0, 4.0, 4.0],
            (2, 2, 2),
            &Device::Cpu,
        )
        .unwrap();
        let codes = Codes {
            w,
            cross: vec![1, 3],
        };
        let wp = wplus(&codes, 3).unwrap().to_vec3::<f32>().unwrap();
        assert_eq!(wp[0], [[1.0, 1.0], [2.0, 2.0], [2.0, 2.0]]);
        assert_eq!(wp[1], [[3.0, 3.0], [3.0, 3.0], [3.0, 3.0]]);
    }
}
