//! Memory over many jobs: mixed imagine, edit, morph and photo jobs through
//! the engine (`clip2gan::bench::soak`, as `clip2gan bench soak` runs it),
//! on the tiny CLIP and mapper over the real MobileStyleGAN. The measure is
//! the allocator's bytes in use at marks where no job is in flight, not
//! the resident set (which the allocator's reuse of freed memory makes
//! noisy), counted exactly by `memstat::Counting`: it must not grow by a delivered image per job, and a backend
//! that leaks exactly that is caught by the same check. About 40 s on two
//! busy cores.

mod common;

/// Exact bytes in use (`memstat::heap` reads this count).
#[global_allocator]
static COUNT: clip2gan::memstat::Counting = clip2gan::memstat::Counting;

use std::sync::Arc;

use clip2gan::engine::{Backend, Engine, EngineConfig, PipelineBackend, RawOutput, Request};
use clip2gan::pipeline::Settings;

/// Output side: a 256 px RGB image is 192 KiB, far above the allocator's
/// per-thread caches of small blocks.
const SIDE: usize = 256;
const IMAGE_BYTES: i64 = (SIDE * SIDE * 3) as i64;
/// Jobs between the two marks.
const JOBS: usize = 32;

/// The pipeline's backend; with `.1`, it leaks one delivered image per
/// job: what the test must catch.
struct Leaky(PipelineBackend, bool);

impl Backend for Leaky {
    fn latent_shape(&self) -> (usize, usize) {
        self.0.latent_shape()
    }
    fn run(&mut self, batch: &[Request]) -> Vec<Result<RawOutput, clip2gan::engine::EngineError>> {
        let out = self.0.run(batch);
        for o in out.iter().flatten().filter(|_| self.1) {
            std::mem::forget(o.images[0].clone());
        }
        out
    }
}

fn engine(dir: &std::path::Path, leak: bool) -> Arc<Engine> {
    let cfg = EngineConfig {
        queue_capacity: 16,
        max_batch: 4,
        per_user_limit: 1,
        output_size: SIDE,
        ..Default::default()
    };
    let d = dir.to_path_buf();
    Arc::new(
        Engine::start(cfg, move || {
            let b = PipelineBackend {
                pipeline: common::tiny_pipeline(&d, Settings::default()),
                output_size: SIDE,
            };
            Ok(Leaky(b, leak))
        })
        .unwrap(),
    )
}

/// Growth of the bytes in use from the mark after 8 jobs (every kind run,
/// caches filled) to the one `JOBS` jobs later.
fn growth(leak: bool) -> i64 {
    let dir = common::tiny_pipeline_dir();
    let e = engine(dir.path(), leak);
    let r = clip2gan::bench::soak(&e, 2, &[8, 8 + JOBS]).unwrap();
    e.shutdown(true);
    eprintln!("leak {leak}:\n{}", r.table());
    r.heap_growth_bytes
}

#[test]
fn no_growth_over_jobs_and_a_leak_of_one_image_per_job_is_caught() {
    let limit = JOBS as i64 * IMAGE_BYTES / 4;
    let leaked = growth(true);
    assert!(
        leaked > limit,
        "the check misses a leak of one image per job: +{leaked} bytes over {JOBS} jobs, limit {limit}"
    );
    let clean = growth(false);
    assert!(
        clean < limit,
        "the bytes in use grew by {clean} over {JOBS} jobs ({:.1} images' worth)",
        clean as f64 / IMAGE_BYTES as f64
    );
}
