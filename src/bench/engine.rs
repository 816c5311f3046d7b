//! `clip2gan bench engine`: concurrent clients against the inference
//! engine, batching on and off, beside the generator's own best rate; and
//! the warm engine on a random pipeline that `benches/` drive too.

use std::time::Instant;

use serde::Serialize;

use super::generator::{generator, GeneratorBench};
use super::{median, process_cpu_s};
use crate::error::Result;

/// What `bench engine` runs on: the configured generator (real weights),
/// the pipeline settings, and the engine's settings it varies.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    pub models_dir: std::path::PathBuf,
    pub generator: crate::generator::GeneratorConfig,
    pub settings: crate::pipeline::Settings,
    pub engine: crate::engine::EngineConfig,
    /// Residuals in the random mapper's bank (`[mapper] pairs`).
    pub bank_pairs: usize,
}

/// A pipeline with real generator weights, a random ViT-B/32-shaped CLIP and
/// a random mapper of the kind first use builds (the closed-form fit: one
/// affine map to w and a bank of residuals for variety, `[mapper] pairs` of
/// them): the speed of what a fresh install runs, without trained weights.
pub fn random_pipeline(
    cfg: &BenchConfig,
    device: &candle_core::Device,
) -> Result<crate::pipeline::Pipeline> {
    let clip =
        crate::clip::Clip::with_random_weights(crate::clip::config::vit_base_patch32(), device)?;
    let generator = crate::generator::open(&cfg.generator, &cfg.models_dir, device, true)?;
    random_mapper_pipeline(cfg, clip, generator)
}

/// The pipeline of `clip` and `generator` with the random mapper of
/// [`random_pipeline`].
pub fn random_mapper_pipeline(
    cfg: &BenchConfig,
    clip: crate::clip::Clip,
    generator: Box<dyn crate::generator::Generator>,
) -> Result<crate::pipeline::Pipeline> {
    let device = &generator.device().clone();
    let meta = crate::mapper::MapperMeta {
        clip_model: "random".into(),
        clip_dim: clip.embed_dim(),
        generator: generator.id().into(),
        num_styles: generator.num_styles(),
        w_dim: generator.w_dim(),
        config: crate::mapper::MapperConfig {
            kind: crate::mapper::MapperKind::Linear,
            depth: 0,
            width: 0,
            bank: cfg.bank_pairs,
            ..Default::default()
        },
        step: 0,
        training: serde_json::Value::Null,
        metrics: serde_json::Value::Null,
    };
    let (d, w) = (meta.clip_dim, meta.w_dim);
    let normal = |name: &str, shape: &[usize], std: f64| -> Result<candle_core::Tensor> {
        Ok((crate::rng::normal_tensor(0, name, shape, device)? * std)?)
    };
    let vars = [
        // A unit embedding moves w by about one spread of real faces.
        ("linear.weight", normal("bench-weight", &[w, d], 0.5)?),
        (
            "linear.bias",
            candle_core::Tensor::zeros(w, candle_core::DType::F32, device)?,
        ),
        ("max_shift", candle_core::Tensor::new(&[20f32], device)?),
        (
            "text_shift",
            candle_core::Tensor::zeros(d, candle_core::DType::F32, device)?,
        ),
        (
            "residuals",
            normal("bench-residuals", &[cfg.bank_pairs.max(1), w], 0.3)?,
        ),
    ];
    let varmap = crate::mapper::varmap_of(vars, device)?;
    let mapper = crate::mapper::Mapper::init(&varmap, meta, generator.w_avg(), device)?;
    Ok(crate::pipeline::Pipeline {
        clip,
        mapper,
        generator,
        settings: cfg.settings.clone(),
    })
}

/// Mean of each stage over a run's jobs, ms: the engine's own [`JobTimes`]
/// averaged (`batch_images`: the mean batch, rounded). `total_ms`: in a
/// latency table the mean time from submit to PNG; in a per-image table the
/// inference thread's time per image (the stages from CLIP text to worker
/// other), whose inverse bounds the images/s; the others run elsewhere or
/// are waits.
///
/// [`JobTimes`]: crate::engine::JobTimes
pub type StageTable = crate::engine::JobTimes;

/// Means over jobs; with `per_image`, each stage divided by the images
/// it served first (a batch's stages by the batch's images, a job's own
/// by its images).
fn mean_stages(times: &[(crate::engine::JobTimes, usize)], per_image: bool) -> StageTable {
    let mut t = StageTable::default();
    if times.is_empty() {
        return t;
    }
    for (j, images) in times {
        let (batch, own) = if per_image {
            (j.batch_images.max(1) as f64, (*images).max(1) as f64)
        } else {
            (1.0, 1.0)
        };
        t.queue_ms += j.queue_ms / own;
        t.clip_text_ms += j.clip_text_ms / batch;
        t.mapper_ms += j.mapper_ms / batch;
        t.generator_ms += j.generator_ms / batch;
        t.clip_image_ms += j.clip_image_ms / batch;
        t.resize_ms += j.resize_ms / batch;
        t.worker_other_ms += j.worker_other_ms / batch;
        t.encode_ms += j.encode_ms / own;
        t.handoff_ms += j.handoff_ms / own;
        t.total_ms += if per_image {
            j.worker_ms() / batch
        } else {
            j.total_ms
        };
    }
    let n = times.len() as f64;
    t.batch_images =
        (times.iter().map(|(j, _)| j.batch_images).sum::<usize>() as f64 / n).round() as usize;
    for v in [
        &mut t.queue_ms,
        &mut t.clip_text_ms,
        &mut t.mapper_ms,
        &mut t.generator_ms,
        &mut t.clip_image_ms,
        &mut t.resize_ms,
        &mut t.worker_other_ms,
        &mut t.encode_ms,
        &mut t.handoff_ms,
        &mut t.total_ms,
    ] {
        *v /= n;
    }
    t
}

#[derive(Debug, Serialize)]
pub struct EngineRun {
    pub max_batch: usize,
    pub images: usize,
    pub wall_s: f64,
    pub images_per_s: f64,
    /// CPU time of the process (all threads) over the run, per image.
    pub cpu_ms_per_image: f64,
    /// Submit to PNG ready, per job.
    pub p50_ms: f64,
    pub p95_ms: f64,
    /// Images in the batch a job ran in, averaged over jobs.
    pub mean_batch_images: f64,
    /// Where the time goes per image: each batch stage divided by its
    /// batch's images (the inference thread's time per image: what bounds
    /// images/s), encoding and the waits per image of the job.
    pub per_image: StageTable,
    /// What a job waited for, on average (the batch's stages whole).
    pub latency: StageTable,
    /// `images_per_s` over the generator's best rate of this run.
    pub of_generator_best: f64,
}

#[derive(Debug, Serialize)]
pub struct EngineCase {
    pub concurrency: usize,
    pub batched: EngineRun,
    pub unbatched: EngineRun,
    /// images/s batched / images/s unbatched
    pub speedup: f64,
}

/// One round: the generator's sweep and every case, measured together.
#[derive(Debug, Serialize)]
pub struct EngineRound {
    /// The generator alone (z -> image at its resolution) at batch 1, 2, 4,
    /// ... up to `max_batch`, the mean of a pass before and one after the
    /// round's engine runs.
    pub generator: Vec<GeneratorBench>,
    pub generator_best_batch: usize,
    pub generator_best_images_per_s: f64,
    pub cases: Vec<EngineCase>,
}

/// A concurrency's ratios over the rounds, and their medians.
#[derive(Debug, Serialize)]
pub struct EngineSummary {
    pub concurrency: usize,
    /// Batched images/s over the same round's generator best, per round.
    pub of_generator_best: Vec<f64>,
    pub median_of_generator_best: f64,
    /// Batched over unbatched images/s, per round.
    pub speedup: Vec<f64>,
    pub median_speedup: f64,
}

#[derive(Debug, Serialize)]
pub struct EngineBench {
    pub bench: &'static str,
    pub device: String,
    pub threads: usize,
    pub jobs_per_client: usize,
    pub max_batch: usize,
    pub output_size: usize,
    pub rounds: Vec<EngineRound>,
    pub summary: Vec<EngineSummary>,
}

/// Batch sizes timed for the generator's best rate: powers of two up to
/// `max_batch`, and `max_batch` itself.
fn generator_batches(max_batch: usize) -> Vec<usize> {
    let mut v: Vec<usize> = std::iter::successors(Some(1usize), |b| Some(b * 2))
        .take_while(|&b| b < max_batch)
        .collect();
    v.push(max_batch.max(1));
    v
}

/// For each of `concurrency`, that many clients, each submitting `jobs`
/// one-image /imagine jobs one after the other, against the engine with
/// batching on (`max_batch`) and off; and the generator alone timed in the
/// same round, so the ratio engine / generator holds under the same load.
/// `rounds` repeats all of it: a run of a few seconds on a shared CPU
/// drifts by several percent, so the ratios quoted are the medians.
pub fn engine(
    cfg: &BenchConfig,
    device: &candle_core::Device,
    concurrency: &[usize],
    jobs: usize,
    max_batch: usize,
    rounds: usize,
) -> Result<EngineBench> {
    let gen = crate::generator::open(&cfg.generator, &cfg.models_dir, device, true)?;
    let batches = generator_batches(max_batch);
    let time_generator = || -> Result<Vec<GeneratorBench>> {
        batches
            .iter()
            .map(|&b| generator(gen.as_ref(), b, gen.resolution(), 3))
            .collect()
    };
    let mut all = Vec::new();
    for _ in 0..rounds.max(1) {
        let mut gen_rates = time_generator()?;
        let mut cases = Vec::new();
        for &c in concurrency {
            let batched = engine_clients(cfg, device, c, jobs, max_batch)?;
            let unbatched = engine_clients(cfg, device, c, jobs, 1)?;
            cases.push(EngineCase {
                concurrency: c,
                speedup: batched.images_per_s / unbatched.images_per_s,
                batched,
                unbatched,
            });
        }
        // Again after the engine runs, and the mean of the two passes: the
        // passes bracket the engine's runs, so a drift of the machine's speed
        // during the round weighs on both sides alike (the best of the two
        // would favour the generator by the noise alone).
        for (before, after) in gen_rates.iter_mut().zip(time_generator()?) {
            *before = before.mean_with(&after);
        }
        let best = gen_rates
            .iter()
            .max_by(|a, b| a.images_per_s.total_cmp(&b.images_per_s))
            .expect("at least batch 1");
        let (best_batch, best_rate) = (best.batch, best.images_per_s);
        for c in &mut cases {
            c.batched.of_generator_best = c.batched.images_per_s / best_rate;
            c.unbatched.of_generator_best = c.unbatched.images_per_s / best_rate;
        }
        all.push(EngineRound {
            generator: gen_rates,
            generator_best_batch: best_batch,
            generator_best_images_per_s: best_rate,
            cases,
        });
    }
    let summary = concurrency
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            let of: Vec<f64> = all
                .iter()
                .map(|r| r.cases[i].batched.of_generator_best)
                .collect();
            let sp: Vec<f64> = all.iter().map(|r| r.cases[i].speedup).collect();
            EngineSummary {
                concurrency: c,
                median_of_generator_best: median(of.clone()),
                of_generator_best: of,
                median_speedup: median(sp.clone()),
                speedup: sp,
            }
        })
        .collect();
    Ok(EngineBench {
        bench: "engine",
        device: crate::device::describe(device),
        threads: rayon::current_num_threads(),
        jobs_per_client: jobs,
        max_batch,
        output_size: cfg.engine.output_size,
        rounds: all,
        summary,
    })
}

/// The benchmarks' one-image /imagine job of client `client`.
pub fn bench_request(client: usize, job: usize) -> crate::engine::Request {
    crate::engine::Request::Imagine {
        prompt: format!("a portrait of person number {client}"),
        count: 1,
        seed: (client * 1000 + job) as u64,
        truncation: None,
        candidates: 1,
    }
}

/// An engine as the benchmarks use it: the configured settings at
/// `max_batch`, room for `clients` clients with one job in flight each, the
/// pipeline of [`random_pipeline`], and one full batch already run
/// (untimed: the first pass pays for touching its working memory).
pub fn warm_engine(
    cfg: &BenchConfig,
    device: &candle_core::Device,
    clients: usize,
    max_batch: usize,
) -> Result<std::sync::Arc<crate::engine::Engine>> {
    use crate::engine::{Engine, EngineConfig, PipelineBackend};
    let ecfg = EngineConfig {
        queue_capacity: clients.max(max_batch) * 2,
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
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| crate::error::Error::Config(e.to_string()))?;
    rt.block_on(async {
        let hs = (0..max_batch)
            .map(|u| engine.submit(u as u64, bench_request(u, 999)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        for h in hs {
            h.wait().await.map_err(|e| e.to_string())?;
        }
        Ok::<_, String>(())
    })
    .map_err(crate::error::Error::Config)?;
    Ok(engine)
}

/// `concurrency` clients, each submitting `jobs` one-image /imagine jobs
/// one after the other (the next once the last one's PNG is ready), against
/// a [`warm_engine`].
pub fn engine_clients(
    cfg: &BenchConfig,
    device: &candle_core::Device,
    concurrency: usize,
    jobs: usize,
    max_batch: usize,
) -> Result<EngineRun> {
    let engine = warm_engine(cfg, device, concurrency, max_batch)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::error::Error::Config(e.to_string()))?;
    let (t0, c0) = (Instant::now(), process_cpu_s());
    let mut results: Vec<(f64, crate::engine::JobTimes)> = rt
        .block_on(async {
            let mut tasks = Vec::new();
            for client in 0..concurrency {
                let engine = engine.clone();
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    for j in 0..jobs {
                        let t = Instant::now();
                        let o = engine
                            .submit(client as u64, bench_request(client, j))
                            .map_err(|e| e.to_string())?
                            .wait()
                            .await
                            .map_err(|e| e.to_string())?;
                        out.push((t.elapsed().as_secs_f64() * 1000.0, o.times));
                    }
                    Ok::<_, String>(out)
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.map_err(|e| e.to_string())??);
            }
            Ok::<_, String>(all)
        })
        .map_err(crate::error::Error::Config)?;
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), process_cpu_s() - c0);
    engine.shutdown(true);
    results.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pct = |p: f64| results[((results.len() - 1) as f64 * p).round() as usize].0;
    let times: Vec<_> = results.iter().map(|(_, t)| (*t, 1)).collect();
    let n = results.len();
    Ok(EngineRun {
        max_batch,
        images: n,
        wall_s: wall,
        images_per_s: n as f64 / wall,
        cpu_ms_per_image: cpu * 1000.0 / n as f64,
        p50_ms: pct(0.5),
        p95_ms: pct(0.95),
        mean_batch_images: times
            .iter()
            .map(|(t, _)| t.batch_images as f64)
            .sum::<f64>()
            / n as f64,
        per_image: mean_stages(&times, true),
        latency: mean_stages(&times, false),
        of_generator_best: 0.0,
    })
}

impl EngineBench {
    /// The figures as a table for people (the JSON line has them all): each
    /// round's headline, the last round's stage tables, the medians.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let n = self.rounds.len();
        for (k, r) in self.rounds.iter().enumerate() {
            let _ = writeln!(
                s,
                "round {}/{n}: generator alone ({}, at its resolution; the engine delivers {} px):",
                k + 1,
                self.device,
                self.output_size
            );
            for g in &r.generator {
                let _ = writeln!(
                    s,
                    "  batch {:>3}: {:7.1} ms/img  {:6.2} img/s  cpu {:7.1} ms/img",
                    g.batch, g.ms_per_image, g.images_per_s, g.cpu_ms_per_image
                );
            }
            let _ = writeln!(
                s,
                "  best: batch {} at {:.2} img/s",
                r.generator_best_batch, r.generator_best_images_per_s
            );
            for c in &r.cases {
                let _ = writeln!(
                    s,
                    "  concurrency {} x {} jobs: batched {:.2} img/s ({:.0}% of the generator's best), unbatched {:.2} img/s ({:.0}%), batched/unbatched {:.2}x",
                    c.concurrency,
                    self.jobs_per_client,
                    c.batched.images_per_s,
                    100.0 * c.batched.of_generator_best,
                    c.unbatched.images_per_s,
                    100.0 * c.unbatched.of_generator_best,
                    c.speedup
                );
                if k + 1 == n {
                    stage_table(&mut s, c);
                }
            }
        }
        let _ = writeln!(s, "\nmedians over {n} rounds:");
        for m in &self.summary {
            let pct: Vec<String> = m
                .of_generator_best
                .iter()
                .map(|r| format!("{:.0}%", 100.0 * r))
                .collect();
            let sp: Vec<String> = m.speedup.iter().map(|r| format!("{r:.2}x")).collect();
            let _ = writeln!(
                s,
                "  concurrency {}: batched {:.0}% of the generator's best ({}), batched/unbatched {:.2}x ({})",
                m.concurrency,
                100.0 * m.median_of_generator_best,
                pct.join(", "),
                m.median_speedup,
                sp.join(", ")
            );
        }
        s
    }
}

/// Where the time goes, batched beside unbatched.
fn stage_table(s: &mut String, c: &EngineCase) {
    use std::fmt::Write;
    let _ = writeln!(
        s,
        "    {:<13} {:>10} {:>10} | {:>10} {:>10}",
        "ms", "batched", "", "unbatched", ""
    );
    let _ = writeln!(
        s,
        "    {:<13} {:>10} {:>10} | {:>10} {:>10}",
        "stage", "per image", "latency", "per image", "latency"
    );
    let (b, u) = (&c.batched, &c.unbatched);
    for (((name, bp), (_, bl)), ((_, up), (_, ul))) in b
        .per_image
        .rows()
        .iter()
        .zip(b.latency.rows())
        .zip(u.per_image.rows().iter().zip(u.latency.rows()))
    {
        let _ = writeln!(
            s,
            "    {name:<13} {bp:>10.1} {bl:>10.1} | {up:>10.1} {ul:>10.1}"
        );
    }
    for (name, b, u) in [
        ("p50", b.p50_ms, u.p50_ms),
        ("p95", b.p95_ms, u.p95_ms),
        ("cpu/img", b.cpu_ms_per_image, u.cpu_ms_per_image),
        ("batch (imgs)", b.mean_batch_images, u.mean_batch_images),
    ] {
        let _ = writeln!(s, "    {name:<13} {:>21.1} | {:>21.1}", b, u);
    }
}
