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

/// A pipeline with real generator weights, a random ViT-B/32-shaped CLIP and
/// a random mapper: the speed of the real thing, without trained weights.
pub fn random_pipeline(
    cfg: &crate::config::Config,
    device: &candle_core::Device,
) -> Result<crate::pipeline::Pipeline> {
    let clip =
        crate::clip::Clip::with_random_weights(crate::clip::config::vit_base_patch32(), device)?;
    let generator = crate::generator::open(cfg, device, true)?;
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
        settings: cfg.pipeline_settings(),
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
    cfg: &crate::config::Config,
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
