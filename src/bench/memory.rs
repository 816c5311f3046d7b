//! `clip2gan bench memory`: where the process's bytes go. The models are
//! loaded one by one (the resident set and the allocator's bytes in use
//! after each: the weights per model), then an engine runs one batch of
//! each size up to `max_batch` (the peak over the loaded models: the
//! activations per batch size), then a photo (CLIP's image encoder), and
//! last the allocator's slack (freed bytes it keeps) and what a trim gives
//! back.

use std::path::Path;

use serde::Serialize;

use super::engine::{bench_request, random_mapper_pipeline, BenchConfig};
use crate::error::{Error, Result};
use crate::memstat::{self, mib, Heap, Rss};

/// The process after one step.
#[derive(Debug, Serialize)]
pub struct MemoryStep {
    pub step: String,
    pub rss: Rss,
    pub heap: Heap,
    /// `rss.total` minus the step before's, MiB.
    pub rss_delta_mib: f64,
}

/// One batch through the engine.
#[derive(Debug, Serialize)]
pub struct BatchPeak {
    pub images: usize,
    /// The peak resident set while the batch ran, MiB.
    pub peak_rss_mib: f64,
    /// That peak over the resident set with the models loaded: the batch's
    /// working memory (activations, outputs, encoding), MiB.
    pub over_models_mib: f64,
    pub over_models_per_image_mib: f64,
}

#[derive(Debug, Serialize)]
pub struct MemoryBench {
    pub bench: &'static str,
    pub device: String,
    pub clip: String,
    pub max_batch: usize,
    pub high_res_chunk: usize,
    pub bank_pairs: usize,
    /// Resident MiB each model added when loaded.
    pub generator_mib: f64,
    pub clip_mib: f64,
    pub mapper_mib: f64,
    pub batches: Vec<BatchPeak>,
    /// A photo job (CLIP's image encoder, then an imagine-sized render).
    pub photo: BatchPeak,
    /// The allocator's free bytes kept at the end (reused by later jobs;
    /// counted in the resident set until trimmed), MiB.
    pub allocator_slack_mib: f64,
    /// The resident set after `malloc_trim`, MiB.
    pub after_trim_mib: f64,
    /// The peak resident set of the whole run, MiB.
    pub peak_rss_mib: f64,
    pub steps: Vec<MemoryStep>,
}

struct Steps(Vec<MemoryStep>);

impl Steps {
    fn take(&mut self, step: &str) -> Rss {
        let (rss, heap) = (memstat::rss(), memstat::heap());
        let before = self.0.last().map_or(0, |s| s.rss.total);
        self.0.push(MemoryStep {
            step: step.into(),
            rss,
            heap,
            rss_delta_mib: mib(rss.total) - mib(before),
        });
        rss
    }
}

/// A noise photo of `side` px, PNG-encoded: what a photo edit decodes.
fn photo_png(side: u32) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(side, side, |x, y| {
        let v = ((x * 7 + y * 13) % 251) as u8;
        image::Rgb([v, v.wrapping_mul(3), 255 - v])
    });
    crate::image_io::encode_png(&img).map_err(|e| Error::invalid(e.to_string()))
}

/// The measurement. `clip_dir`: a CLIP checkpoint directory (transformers
/// layout) loaded as the bot loads it; `None`: random ViT-B/32 weights, as
/// `bench engine` uses (candle's copy and the fast path's: twice the bytes
/// of a loaded checkpoint).
pub fn memory(
    cfg: &BenchConfig,
    device: &candle_core::Device,
    clip_dir: Option<&Path>,
    max_batch: usize,
) -> Result<MemoryBench> {
    use crate::engine::{Engine, EngineConfig, PipelineBackend, Request};
    let mut steps = Steps(Vec::new());
    let start = steps.take("start");
    let generator = crate::generator::open(&cfg.generator, &cfg.models_dir, device, true)?;
    let with_gen = steps.take("generator loaded");
    let clip = match clip_dir {
        Some(d) => crate::clip::Clip::from_dir(d, device)?,
        None => {
            crate::clip::Clip::with_random_weights(crate::clip::config::vit_base_patch32(), device)?
        }
    };
    let with_clip = steps.take("clip loaded");
    let pipeline = random_mapper_pipeline(cfg, clip, generator)?;
    let models = steps.take("mapper loaded");
    let ecfg = EngineConfig {
        queue_capacity: 2 * max_batch,
        max_batch,
        per_user_limit: 1,
        ..cfg.engine.clone()
    };
    let output_size = ecfg.output_size;
    let engine = Engine::start(ecfg, move || {
        Ok(PipelineBackend {
            pipeline,
            output_size,
        })
    })?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .map_err(|e| Error::Config(e.to_string()))?;
    let run = |reqs: Vec<Request>| -> Result<()> {
        rt.block_on(async {
            let hs = reqs
                .into_iter()
                .enumerate()
                .map(|(u, r)| engine.submit(u as u64, r))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            for h in hs {
                h.wait().await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        })
        .map_err(Error::Config)
    };
    let peak = |images: usize, steps: &mut Steps, name: String| {
        let r = steps.take(&name);
        let over = mib(r.peak) - mib(models.total);
        BatchPeak {
            images,
            peak_rss_mib: mib(r.peak),
            over_models_mib: over,
            over_models_per_image_mib: over / images as f64,
        }
    };
    let mut batches = Vec::new();
    let mut b = 1;
    loop {
        b = b.min(max_batch);
        memstat::reset_peak();
        run((0..b).map(|u| bench_request(u, 1)).collect())?;
        batches.push(peak(b, &mut steps, format!("batch of {b}")));
        if b == max_batch {
            break;
        }
        b *= 2;
    }
    memstat::reset_peak();
    run(vec![Request::Invert {
        image: photo_png(512)?,
    }])?;
    let photo = peak(1, &mut steps, "photo".into());
    engine.shutdown(true);
    let slack = memstat::heap().free;
    steps.take("engine stopped");
    memstat::trim();
    let trimmed = steps.take("trimmed");
    let _ = (start, with_gen, with_clip);
    let mb = |i: usize| mib(steps.0[i].rss.total) - mib(steps.0[i - 1].rss.total);
    Ok(MemoryBench {
        bench: "memory",
        device: crate::device::describe(device),
        clip: clip_dir.map_or("random ViT-B/32 shapes".into(), |d| d.display().to_string()),
        max_batch,
        high_res_chunk: cfg.generator.high_res_chunk,
        bank_pairs: cfg.bank_pairs,
        generator_mib: mb(1),
        clip_mib: mb(2),
        mapper_mib: mb(3),
        batches,
        photo,
        allocator_slack_mib: mib(slack),
        after_trim_mib: mib(trimmed.total),
        peak_rss_mib: mib(memstat::rss().peak.max(trimmed.peak)),
        steps: steps.0,
    })
}

impl MemoryBench {
    /// The figures for people (the JSON line has them all).
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "memory ({}, CLIP: {}, engine.max_batch {}, generator.high_res_chunk {}):",
            self.device, self.clip, self.max_batch, self.high_res_chunk
        );
        for st in &self.steps {
            let _ = writeln!(
                s,
                "  {:<18} rss {:7.1} MiB ({:+7.1})  peak {:7.1}  anon {:7.1}  file {:7.1}  heap in use {:7.1}  free {:7.1}",
                st.step,
                mib(st.rss.total),
                st.rss_delta_mib,
                mib(st.rss.peak),
                mib(st.rss.anon),
                mib(st.rss.file),
                mib(st.heap.in_use),
                mib(st.heap.free)
            );
        }
        for b in self.batches.iter().chain(std::iter::once(&self.photo)) {
            let _ = writeln!(
                s,
                "  {} image(s): peak {:.1} MiB, {:.1} over the models ({:.1} per image)",
                b.images, b.peak_rss_mib, b.over_models_mib, b.over_models_per_image_mib
            );
        }
        let _ = writeln!(
            s,
            "  weights: generator {:.1} MiB, CLIP {:.1}, mapper {:.1}; allocator slack {:.1}; after trim {:.1}; peak {:.1}",
            self.generator_mib,
            self.clip_mib,
            self.mapper_mib,
            self.allocator_slack_mib,
            self.after_trim_mib,
            self.peak_rss_mib
        );
        s
    }
}
