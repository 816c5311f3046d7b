//! Shared test support: where the fetched weights and fixtures are.

#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Mutex;

use candle_core::Device;
use clip2gan::generator::mobilestylegan::{fetch, MobileStyleGan};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

/// The converted MobileStyleGAN weights, fetched on first use exactly as the
/// CLI does. If they cannot be had the test fails: a parity test that skipped
/// silently would prove nothing.
pub fn mobilestylegan() -> MobileStyleGan {
    static FETCH: Mutex<()> = Mutex::new(());
    let models = std::env::var_os("CLIP2GAN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models"));
    let dir = models.join("mobilestylegan-ffhq");
    {
        // One fetch per test binary, not one per test thread.
        let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
        fetch::ensure(&models, &dir).unwrap_or_else(|e| panic!("cannot fetch the weights: {e}"));
    }
    MobileStyleGan::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{e}"))
}

pub fn npy(path: PathBuf) -> clip2gan::npy::Array {
    clip2gan::npy::read_f32(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// (max abs diff, mean abs diff)
pub fn diff(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let mut max = 0f32;
    let mut sum = 0f64;
    for (x, y) in a.iter().zip(b) {
        let d = (x - y).abs();
        assert!(d.is_finite(), "non-finite value");
        max = max.max(d);
        sum += d as f64;
    }
    (max, (sum / a.len() as f64) as f32)
}

/// A tiny random MobileStyleGAN (3 blocks, 64 px, w_dim 32, 11 styles) in
/// `<models>/tiny-g` and a tiny random CLIP (real vocabulary, widths 32,
/// 32 px images) in `<models>/tiny-clip`: the whole pipeline in seconds.
pub fn tiny_models(models: &std::path::Path) -> (PathBuf, PathBuf) {
    let g = models.join("tiny-g");
    let c = models.join("tiny-clip");
    clip2gan::generator::mobilestylegan::random_weights(&g, &TINY_CHANNELS, 32, 7).unwrap();
    clip2gan::clip::save_random_checkpoint(&c, clip2gan::clip::config::TINY_CONFIG_JSON).unwrap();
    (g, c)
}

pub const TINY_CHANNELS: [usize; 4] = [64, 64, 32, 16];
