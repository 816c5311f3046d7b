//! `clip2gan bench ...`: throughput measurements printed as one JSON line, so
//! scripts (tools/bench_generator.py) can compare against a reference runtime
//! in the same run. Benchmarks never assert: timing belongs here, not in tests.

use std::time::Instant;

use serde::Serialize;

use crate::error::Result;
use crate::generator::{z_for_seeds, Generator, NoiseMode};
use crate::image_io::resize_area;

#[derive(Debug, Serialize)]
pub struct GeneratorBench {
    pub bench: &'static str,
    pub generator: String,
    pub device: String,
    pub batch: usize,
    pub size: usize,
    pub iters: usize,
    /// Median over iterations of (batch wall time / batch).
    pub ms_per_image: f64,
    pub images_per_s: f64,
    pub min_ms_per_image: f64,
    pub max_ms_per_image: f64,
}

/// Time z -> w -> image (resized to `size`) for `iters` batches after one warm-up.
pub fn generator(
    g: &dyn Generator,
    batch: usize,
    size: usize,
    iters: usize,
) -> Result<GeneratorBench> {
    let run = |seed: u64| -> Result<f64> {
        let t0 = Instant::now();
        let z = z_for_seeds(seed, batch, g.z_dim(), g.device())?;
        let w = g.broadcast_w(&g.map(&z)?)?;
        let img = resize_area(&g.synthesize(&w, NoiseMode::Fixed)?, size)?;
        // Reading the result back forces any queued device work to finish.
        let _ = img.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        Ok(t0.elapsed().as_secs_f64() * 1000.0 / batch as f64)
    };
    run(0)?;
    let mut ms = (0..iters.max(1))
        .map(|i| run(i as u64 + 1))
        .collect::<Result<Vec<_>>>()?;
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    Ok(GeneratorBench {
        bench: "generator",
        generator: g.id().to_string(),
        device: crate::device::describe(g.device()),
        batch,
        size,
        iters: ms.len(),
        ms_per_image: median,
        images_per_s: 1000.0 / median,
        min_ms_per_image: ms[0],
        max_ms_per_image: ms[ms.len() - 1],
    })
}

#[derive(Debug, Serialize)]
pub struct ClipBench {
    pub bench: &'static str,
    pub model: String,
    pub device: String,
    pub iters: usize,
    /// Median ms for one call encoding a batch of 1 / 16 texts (77 tokens).
    pub text_batch1_ms: f64,
    pub text_batch16_ms: f64,
    /// Median ms for one call encoding a batch of 1 / 8 preprocessed images.
    pub image_batch1_ms: f64,
    pub image_batch8_ms: f64,
}

fn median_ms(iters: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut v = Vec::with_capacity(iters);
    for _ in 0..iters.max(1) {
        let t0 = Instant::now();
        f()?;
        v.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    v.sort_by(f64::total_cmp);
    Ok(v[v.len() / 2])
}

/// Time CLIP's encoders. Texts are full-length (77 tokens) so the figure is
/// the worst case for a prompt.
pub fn clip(c: &crate::clip::Clip, model: &str, iters: usize) -> Result<ClipBench> {
    use crate::clip::Tokens;
    let long = Tokens {
        ids: std::iter::once(crate::clip::tokenizer::START_OF_TEXT)
            .chain((0..c.tokenizer().context_length() - 2).map(|i| 320 + i as u32))
            .chain(std::iter::once(crate::clip::tokenizer::END_OF_TEXT))
            .collect(),
        truncated: false,
    };
    let text = |n: usize| {
        let t = vec![long.clone(); n];
        median_ms(iters, || c.text_features(&t).map(|_| ()))
    };
    let s = c.spec.image_size;
    let image = |n: usize| {
        let px =
            crate::generator::seeded_normal(1, n, 3 * s * s, c.device())?.reshape((n, 3, s, s))?;
        median_ms(iters, || c.image_features(&px).map(|_| ()))
    };
    Ok(ClipBench {
        bench: "clip",
        model: model.to_string(),
        device: crate::device::describe(c.device()),
        iters,
        text_batch1_ms: text(1)?,
        text_batch16_ms: text(16)?,
        image_batch1_ms: image(1)?,
        image_batch8_ms: image(8)?,
    })
}
