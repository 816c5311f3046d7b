//! `clip2gan bench generator`: z -> w -> image, timed per image.

use std::time::Instant;

use serde::Serialize;

use super::process_cpu_s;
use crate::error::Result;
use crate::generator::{z_for_seeds, Generator, NoiseMode};
use crate::image_io::resize_area;

#[derive(Debug, Clone, Serialize)]
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
    /// Median CPU time of the process (all threads) per image: the work
    /// done, less sensitive than wall time to other load on the machine.
    pub cpu_ms_per_image: f64,
}

impl GeneratorBench {
    /// Two passes of the same batch as one: times and CPU averaged, the
    /// extremes of both.
    pub(super) fn mean_with(&self, other: &GeneratorBench) -> GeneratorBench {
        let ms = (self.ms_per_image + other.ms_per_image) / 2.0;
        GeneratorBench {
            iters: self.iters + other.iters,
            ms_per_image: ms,
            images_per_s: 1000.0 / ms,
            min_ms_per_image: self.min_ms_per_image.min(other.min_ms_per_image),
            max_ms_per_image: self.max_ms_per_image.max(other.max_ms_per_image),
            cpu_ms_per_image: (self.cpu_ms_per_image + other.cpu_ms_per_image) / 2.0,
            ..self.clone()
        }
    }
}

/// Time z -> w -> image (resized to `size`) for `iters` batches after one warm-up.
pub fn generator(
    g: &dyn Generator,
    batch: usize,
    size: usize,
    iters: usize,
) -> Result<GeneratorBench> {
    let run = |seed: u64| -> Result<(f64, f64)> {
        let (t0, c0) = (Instant::now(), process_cpu_s());
        let z = z_for_seeds(seed, batch, g.z_dim(), g.device())?;
        let w = g.broadcast_w(&g.map(&z)?)?;
        let img = resize_area(&g.synthesize(&w, NoiseMode::Fixed)?, size)?;
        // Reading one value back forces any queued device work to finish
        // (a reduction over the batch would add its own time).
        let _ = img.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
        Ok((
            t0.elapsed().as_secs_f64() * 1000.0 / batch as f64,
            (process_cpu_s() - c0) * 1000.0 / batch as f64,
        ))
    };
    run(0)?;
    let (mut ms, cpu): (Vec<f64>, Vec<f64>) = (0..iters.max(1))
        .map(|i| run(i as u64 + 1))
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .unzip();
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
        cpu_ms_per_image: super::median(cpu),
    })
}
