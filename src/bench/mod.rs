//! `clip2gan bench ...`: throughput measurements printed as one JSON line, so
//! scripts (tools/bench_generator.py) can compare against a reference runtime
//! in the same run. Benchmarks never assert: timing belongs here, not in tests.
//!
//! One file a benchmark: `generator` (z -> image), `clip` (CLIP's encoders
//! against an sgemm), `engine` (concurrent clients against the inference
//! engine, with the engine the other benchmarks under `benches/` share),
//! `bank` (the pair bank against its limit), `memory` (where the bytes go),
//! `soak` (memory over many mixed jobs), `refine` (quality mode's steps,
//! and fast jobs beside them); here the process CPU clock and
//! the median they all use.

mod bank;
mod clip;
mod engine;
mod generator;
mod memory;
mod refine;
mod soak;

pub use self::bank::{bank, BankBench, BankRound};
pub use self::clip::{clip, ClipBench, ClipCase};
pub use self::engine::{
    bench_request, engine, engine_clients, random_mapper_pipeline, random_pipeline, warm_engine,
    BenchConfig, EngineBench, EngineCase, EngineRound, EngineRun, EngineSummary, StageTable,
};
pub use self::generator::{generator, GeneratorBench};
pub use self::memory::{memory, BatchPeak, MemoryBench, MemoryStep};
pub use self::refine::{refine, FastLatency, RefineBench, RefineCase, EIGHT_STEPS_TARGET_S};
pub use self::soak::{soak, SoakBench, SoakPoint};

/// CPU time used by this process so far (user + system, all threads), s.
pub(crate) fn process_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut r: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(r.ru_utime) + tv(r.ru_stime)
}

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
