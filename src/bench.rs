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
