//! Fuzz targets on stable Rust, run as bounded, deterministic tests: one
//! per parser of untrusted input (photos, `.npy` latents, mapper and
//! safetensors files, the OpenVINO IR, Redis jobs and results, config and
//! environment, Discord payloads, the results store). Each starts from
//! real files made here and mutates them with knowledge of their structure
//! (see `mutate.rs`); the property everywhere: an error that says what is
//! wrong, never a panic, a hang or a heap beyond the target's bound (see
//! `harness.rs`).
//!
//! `cargo test --release --test fuzz` runs each target for its default
//! count (about 2.5 min for all of them on the 2-core machine, two at a time);
//! `tools/fuzz.sh N` runs N cases per target. A crash found becomes a
//! case in `regressions.rs`.

#[path = "../common/mod.rs"]
mod common;

mod alloc;
mod config;
mod discord;
mod harness;
mod ir;
mod latents;
mod mapper;
mod mutate;
mod photos;
mod queue;
mod regressions;
mod store;

use std::sync::OnceLock;

use clip2gan::generator::{Generator, NoiseMode};
use harness::{run, Target};

#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

const MIB: usize = 1 << 20;

/// A face the real MobileStyleGAN made (the average face, 64 px), the seed
/// of the photo target.
fn face() -> &'static image::RgbImage {
    static FACE: OnceLock<image::RgbImage> = OnceLock::new();
    FACE.get_or_init(|| {
        let g = common::mobilestylegan();
        let w = g.broadcast_w(&g.w_avg().unsqueeze(0).unwrap()).unwrap();
        let img = g.synthesize(&w, NoiseMode::Fixed).unwrap();
        clip2gan::image_io::to_rgb8_resized(&img, 64)
            .unwrap()
            .remove(0)
    })
}

#[test]
fn fuzz_photos() {
    harness::init();
    run(
        Target {
            name: "photos",
            seeds: photos::seeds(face()),
            cases: 18_000,
            // The largest picture the pixel budget lets through, as 16-bit
            // RGBA, its RGB copy and PNG, with room to spare.
            max_heap: 96 * MIB,
            mutate: &photos::mutate,
            raw: true,
        },
        photos::check,
    );
}

#[test]
fn fuzz_latents() {
    harness::init();
    run(
        Target {
            name: "latents",
            seeds: latents::seeds(),
            cases: 150_000,
            max_heap: 4 * MIB,
            mutate: &latents::mutate,
            raw: true,
        },
        latents::check,
    );
}

#[test]
fn fuzz_mapper_files() {
    harness::init();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let file = dir.path().join("case.safetensors");
    run(
        Target {
            name: "mapper_files",
            seeds: mapper::seeds(dir.path()),
            cases: 18_000,
            max_heap: 32 * MIB,
            mutate: &mapper::mutate,
            raw: true,
        },
        |b| mapper::check(b, &file),
    );
}

#[test]
fn fuzz_openvino_ir() {
    harness::init();
    let (xml, bin) = ir::network();
    run(
        Target {
            name: "openvino_ir",
            seeds: vec![ir::seed(&xml, &bin)],
            cases: 4_000,
            // The 8 MB weights file, its tensors and the parsed graph.
            max_heap: 64 * MIB,
            mutate: &ir::mutate,
            raw: true,
        },
        |b| ir::check(b, &bin),
    );
}

#[test]
fn fuzz_redis_entries() {
    harness::init();
    let engine = queue::engine();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    run(
        Target {
            name: "redis_entries",
            seeds: queue::seeds(),
            cases: 90_000,
            max_heap: 8 * MIB,
            mutate: &queue::mutate,
            raw: false,
        },
        |b| queue::check(b, &engine, &rt),
    );
}

#[test]
fn fuzz_config() {
    harness::init();
    run(
        Target {
            name: "config",
            seeds: config::seeds(),
            cases: 30_000,
            max_heap: 16 * MIB,
            mutate: &config::mutate,
            raw: false,
        },
        config::check,
    );
}

#[test]
fn fuzz_discord() {
    harness::init();
    let cfg = clip2gan::bot::BotConfig::default();
    run(
        Target {
            name: "discord",
            seeds: discord::seeds(),
            cases: 150_000,
            max_heap: 8 * MIB,
            mutate: &discord::mutate,
            raw: false,
        },
        |b| discord::check(b, &cfg),
    );
}

#[test]
fn fuzz_store() {
    harness::init();
    let dir = tempfile::tempdir_in(scratch()).unwrap();
    let seeds = store::seeds(dir.path());
    run(
        Target {
            name: "store",
            seeds,
            cases: 4_000,
            max_heap: 64 * MIB,
            mutate: &store::mutate,
            raw: true,
        },
        |b| store::check(b, dir.path()),
    );
}

/// Where targets that need files write them: memory-backed when the
/// machine has /dev/shm (the store fsyncs every commit).
fn scratch() -> std::path::PathBuf {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    }
}
