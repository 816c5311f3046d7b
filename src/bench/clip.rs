//! `clip2gan bench clip`: CLIP's text and image encoders at their usual
//! batches, fast and portable paths, against an sgemm of the same run.

use std::time::Instant;

use serde::Serialize;

use super::{median, process_cpu_s};
use crate::error::Result;

#[derive(Debug, Serialize)]
pub struct ClipCase {
    /// `image`: preprocessed pixels through the image encoder; `generated`:
    /// 256 px generator output through `Clip::encode_generated`
    /// (preprocessing + image encoder, the pair bank's path); `text`.
    pub input: &'static str,
    /// `fast` (the CPU path) or `candle` (candle-transformers' model and
    /// the tensor-op preprocessing: the portable path, as before the fast
    /// path existed).
    pub path: &'static str,
    pub batch: usize,
    /// Tokens per text (texts only).
    pub tokens: Option<usize>,
    /// Median over rounds.
    pub ms_per_call: f64,
    /// Median CPU time of the process (all threads) per call: the work
    /// done, less sensitive than wall time to other load on the machine
    /// (idle threads spinning for work count too).
    pub cpu_ms_per_call: f64,
    pub ms_per_item: f64,
    /// FLOPs of one item as the reference model computes them (encoder
    /// only; preprocessing is not counted), and the rate by that count: the
    /// figure comparable across paths.
    pub gflop_per_item: f64,
    pub gflop_per_s: f64,
    /// `gflop_per_s` over the sgemm rate of the same run.
    pub share_of_sgemm: f64,
    /// The FLOPs this path executes (the fast path skips most of its last
    /// layer) and their share of the sgemm rate: how well the machine is
    /// used.
    pub executed_gflop_per_item: f64,
    pub executed_share_of_sgemm: f64,
}

#[derive(Debug, Serialize)]
pub struct ClipBench {
    pub bench: &'static str,
    pub model: String,
    pub device: String,
    pub threads: usize,
    pub iters: usize,
    /// Side of the square sgemm timed in every round (gemm crate, all
    /// threads, as candle calls it): the machine's attainable f32 rate.
    pub sgemm_n: usize,
    pub sgemm_gflop_per_s: f64,
    pub cases: Vec<ClipCase>,
}

/// Time one `n`-cubed sgemm (seconds).
fn sgemm_once(n: usize, a: &[f32], b: &[f32], c: &mut [f32]) -> f64 {
    let t0 = Instant::now();
    // SAFETY: a, b and c each hold n x n row-major floats.
    unsafe {
        gemm::gemm(
            n,
            n,
            n,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            n as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
    t0.elapsed().as_secs_f64()
}

/// Time CLIP's encoders: images at batch 1 and 8 (preprocessed, and from
/// generator output), texts of 10 tokens (a short prompt) at batch 1 and of
/// 77 at batch 1 and 16; with `candle` also the portable path. Each round
/// runs every case once and then a 4096 sgemm, so that load from other
/// processes hits all alike; the first round is a warm-up, figures are
/// medians over the others.
pub fn clip(c: &crate::clip::Clip, model: &str, iters: usize, candle: bool) -> Result<ClipBench> {
    use crate::clip::fast::{image_flops, text_flops, Count};
    use crate::clip::tokenizer::{END_OF_TEXT, START_OF_TEXT};
    use crate::clip::Tokens;
    let text = |len: usize, n: usize| {
        let t = Tokens {
            ids: std::iter::once(START_OF_TEXT)
                .chain((0..len - 2).map(|i| 320 + i as u32))
                .chain(std::iter::once(END_OF_TEXT))
                .collect(),
            truncated: false,
        };
        vec![t; n]
    };
    let dev = c.device();
    let s = c.spec.image_size;
    let pixels = |n: usize| -> Result<candle_core::Tensor> {
        Ok(crate::generator::seeded_normal(1, n, 3 * s * s, dev)?.reshape((n, 3, s, s))?)
    };
    let generated = |n: usize| -> Result<candle_core::Tensor> {
        let x = crate::generator::seeded_normal(2, n, 3 * 256 * 256, dev)?;
        Ok((x.reshape((n, 3, 256, 256))? * 0.4)?.clamp(-1f32, 1f32)?)
    };
    enum Input {
        Text(Vec<Tokens>),
        Pixels(candle_core::Tensor),
        Generated(candle_core::Tensor),
    }
    let mut inputs = vec![
        ("image", 1, None, Input::Pixels(pixels(1)?)),
        ("image", 8, None, Input::Pixels(pixels(8)?)),
        ("generated", 8, None, Input::Generated(generated(8)?)),
        ("text", 1, Some(10), Input::Text(text(10, 1))),
        ("text", 1, Some(77), Input::Text(text(77, 1))),
        ("text", 16, Some(77), Input::Text(text(77, 16))),
    ];
    let paths: &[&'static str] = if candle {
        &["fast", "candle"]
    } else {
        &["fast"]
    };
    let run = |input: &Input| -> Result<()> {
        match input {
            Input::Text(t) => c.text_features(t).map(|_| ()),
            Input::Pixels(p) => c.image_features(p).map(|_| ()),
            Input::Generated(g) => c.encode_generated(g).map(|_| ()),
        }
    };
    let sg = 4096;
    let a = vec![0.5f32; sg * sg];
    let b = vec![0.25f32; sg * sg];
    let mut out = vec![0f32; sg * sg];
    let mut times = vec![Vec::new(); inputs.len() * paths.len()];
    let mut sgemm = Vec::new();
    for round in 0..=iters.max(1) {
        for (i, (_, _, _, input)) in inputs.iter().enumerate() {
            for (j, path) in paths.iter().enumerate() {
                crate::ops::force_portable(*path == "candle");
                let (t0, c0) = (Instant::now(), process_cpu_s());
                let r = run(input);
                let (dt, dc) = (t0.elapsed().as_secs_f64(), process_cpu_s() - c0);
                crate::ops::force_portable(false);
                r?;
                if round > 0 {
                    times[i * paths.len() + j].push((dt, dc));
                }
            }
        }
        let dt = sgemm_once(sg, &a, &b, &mut out);
        if round > 0 {
            sgemm.push(dt);
        }
    }
    let sgemm_rate = 2.0 * (sg as f64).powi(3) / median(sgemm) / 1e9;
    let mut cases = Vec::new();
    for (i, (name, batch, tokens, _)) in inputs.drain(..).enumerate() {
        let flops = |count| match tokens {
            Some(t) => text_flops(&c.spec, t, count),
            None => image_flops(&c.spec, count),
        };
        let flop = flops(Count::Reference);
        for (j, path) in paths.iter().enumerate() {
            let executed = if *path == "fast" && c.uses_fast_path() {
                flops(Count::FastPath)
            } else {
                flop
            };
            let (wall, cpu): (Vec<f64>, Vec<f64>) = std::mem::take(&mut times[i * paths.len() + j])
                .into_iter()
                .unzip();
            let sec = median(wall);
            let rate = flop * batch as f64 / sec / 1e9;
            cases.push(ClipCase {
                input: name,
                path,
                batch,
                tokens,
                ms_per_call: sec * 1000.0,
                cpu_ms_per_call: median(cpu) * 1000.0,
                ms_per_item: sec * 1000.0 / batch as f64,
                gflop_per_item: flop / 1e9,
                gflop_per_s: rate,
                share_of_sgemm: rate / sgemm_rate,
                executed_gflop_per_item: executed / 1e9,
                executed_share_of_sgemm: rate * executed / flop / sgemm_rate,
            });
        }
    }
    Ok(ClipBench {
        bench: "clip",
        model: model.to_string(),
        device: crate::device::describe(dev),
        threads: rayon::current_num_threads(),
        iters: iters.max(1),
        sgemm_n: sg,
        sgemm_gflop_per_s: sgemm_rate,
        cases,
    })
}
