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

/// CPU time used by this process so far (user + system, all threads), s.
fn process_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(r.ru_utime) + tv(r.ru_stime)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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

/// What `bench engine` runs on: the configured generator (real weights),
/// the pipeline settings, and the engine's settings it varies.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub models_dir: std::path::PathBuf,
    pub generator: crate::generator::GeneratorConfig,
    pub settings: crate::pipeline::Settings,
    pub engine: crate::engine::EngineConfig,
}

/// A pipeline with real generator weights, a random ViT-B/32-shaped CLIP and
/// a random mapper: the speed of the real thing, without trained weights.
pub fn random_pipeline(
    cfg: &BenchConfig,
    device: &candle_core::Device,
) -> Result<crate::pipeline::Pipeline> {
    let clip =
        crate::clip::Clip::with_random_weights(crate::clip::config::vit_base_patch32(), device)?;
    let generator = crate::generator::open(&cfg.generator, &cfg.models_dir, device, true)?;
    let meta = crate::mapper::MapperMeta {
        clip_model: "random".into(),
        clip_dim: clip.embed_dim(),
        generator: generator.id().into(),
        num_styles: generator.num_styles(),
        w_dim: generator.w_dim(),
        config: Default::default(),
        step: 0,
        training: serde_json::Value::Null,
        metrics: serde_json::Value::Null,
    };
    let varmap = candle_nn::VarMap::new();
    let mapper = crate::mapper::Mapper::init(&varmap, meta, generator.w_avg(), device)?;
    Ok(crate::pipeline::Pipeline {
        clip,
        mapper,
        generator,
        settings: cfg.settings.clone(),
    })
}

#[derive(Debug, Serialize)]
pub struct EngineRun {
    pub max_batch: usize,
    pub images: usize,
    pub wall_s: f64,
    pub images_per_s: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct EngineBench {
    pub bench: &'static str,
    pub device: String,
    pub concurrency: usize,
    pub jobs_per_client: usize,
    pub output_size: usize,
    pub batched: EngineRun,
    pub unbatched: EngineRun,
    /// images/s batched / images/s unbatched
    pub speedup: f64,
}

/// `concurrency` clients, each submitting `jobs` one-image /imagine jobs one
/// after the other, against the engine with batching on and off.
pub fn engine(
    cfg: &BenchConfig,
    device: &candle_core::Device,
    concurrency: usize,
    jobs: usize,
    max_batch: usize,
) -> Result<EngineBench> {
    use crate::engine::{Engine, EngineConfig, PipelineBackend, Request};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::error::Error::Config(e.to_string()))?;
    let run = |max_batch: usize| -> Result<EngineRun> {
        let ecfg = EngineConfig {
            queue_capacity: concurrency.max(1) * 2,
            max_batch,
            per_user_limit: 1,
            ..cfg.engine.clone()
        };
        let (c2, d2) = (cfg.clone(), device.clone());
        let output_size = ecfg.output_size;
        let engine = std::sync::Arc::new(Engine::start(ecfg, move || {
            Ok(PipelineBackend {
                pipeline: random_pipeline(&c2, &d2)?,
                output_size,
            })
        })?);
        let t0 = Instant::now();
        let mut latencies: Vec<f64> = rt
            .block_on(async {
                let mut tasks = Vec::new();
                for client in 0..concurrency {
                    let engine = engine.clone();
                    tasks.push(tokio::spawn(async move {
                        let mut lat = Vec::new();
                        for j in 0..jobs {
                            let t = Instant::now();
                            let req = Request::Imagine {
                                prompt: format!("a portrait of person number {client}"),
                                count: 1,
                                seed: (client * 1000 + j) as u64,
                                truncation: None,
                                candidates: 1,
                            };
                            let out = engine
                                .submit(client as u64, req)
                                .map_err(|e| e.to_string())?
                                .wait()
                                .await;
                            out.map_err(|e| e.to_string())?;
                            lat.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        Ok::<_, String>(lat)
                    }));
                }
                let mut all = Vec::new();
                for t in tasks {
                    all.extend(t.await.map_err(|e| e.to_string())??);
                }
                Ok::<_, String>(all)
            })
            .map_err(crate::error::Error::Config)?;
        let wall = t0.elapsed().as_secs_f64();
        engine.shutdown(true);
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        Ok(EngineRun {
            max_batch,
            images: latencies.len(),
            wall_s: wall,
            images_per_s: latencies.len() as f64 / wall,
            p50_ms: pct(0.5),
            p95_ms: pct(0.95),
        })
    };
    let batched = run(max_batch)?;
    let unbatched = run(1)?;
    Ok(EngineBench {
        bench: "engine",
        device: crate::device::describe(device),
        concurrency,
        jobs_per_client: jobs,
        output_size: cfg.engine.output_size,
        speedup: batched.images_per_s / unbatched.images_per_s,
        batched,
        unbatched,
    })
}
