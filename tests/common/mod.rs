//! Shared test support: where the fetched weights and fixtures are, the
//! binary, and the tiny pipeline (a small random CLIP and a random mapper
//! over the real MobileStyleGAN) that the pipeline, engine, bot and CLI
//! tests share.

#![allow(dead_code)]

pub mod child;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use candle_core::{Device, Tensor};
use clip2gan::generator::mobilestylegan::{fetch, MobileStyleGan};
use clip2gan::generator::Generator;
use clip2gan::mapper::{self, Mapper, MapperConfig, MapperMeta};
use clip2gan::pipeline::{Pipeline, Settings};

/// A small random CLIP with the real vocabulary: widths 32, one layer,
/// 32 px images, embeddings of 16.
pub const SMALL_CLIP: &str = r#"{
  "projection_dim": 16,
  "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "image_size": 32, "patch_size": 8}
}"#;

/// The message of a call that must fail (`unwrap_err` would need the
/// success type to be `Debug`, which models and generators are not).
pub fn err_text<T, E: std::fmt::Display>(r: Result<T, E>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

/// The `clip2gan` binary of this build.
pub fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_clip2gan"))
}

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

/// A temp dir with `clip/` (a random [`SMALL_CLIP`]) and
/// `mapper.safetensors` (a random mapper for MobileStyleGAN).
pub fn tiny_pipeline_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    clip2gan::clip::save_random_checkpoint(&tmp.path().join("clip"), SMALL_CLIP).unwrap();
    let g = mobilestylegan();
    let meta = MapperMeta {
        clip_model: tmp.path().join("clip").display().to_string(),
        clip_dim: 16,
        generator: g.id().into(),
        num_styles: g.num_styles(),
        w_dim: g.w_dim(),
        config: MapperConfig {
            depth: 2,
            width: 64,
            ..Default::default()
        },
        step: 0,
        training: serde_json::Value::Null,
        metrics: serde_json::Value::Null,
    };
    let varmap = candle_nn::VarMap::new();
    // Scale up the random output layer so that prompts map to visibly
    // different latents (a fresh mapper stays very close to w_avg).
    let m = Mapper::init(&varmap, meta, g.w_avg(), &Device::Cpu).unwrap();
    for (name, var) in varmap.data().lock().unwrap().iter() {
        if name == "out.weight" {
            var.set(&(var.as_tensor() * 300.0).unwrap()).unwrap();
        }
    }
    mapper::save(
        &tmp.path().join("mapper.safetensors"),
        &varmap,
        g.w_avg(),
        &m.meta,
    )
    .unwrap();
    tmp
}

/// The pipeline of a [`tiny_pipeline_dir`].
pub fn tiny_pipeline(dir: &Path, settings: Settings) -> Pipeline {
    let path = dir.join("mapper.safetensors");
    let meta = mapper::read_meta(&path).unwrap();
    let (mapper, _) = Mapper::load(&path, &compat(&meta), &Device::Cpu).unwrap();
    Pipeline {
        clip: clip2gan::clip::Clip::from_dir(&dir.join("clip"), &Device::Cpu).unwrap(),
        mapper,
        generator: Box::new(mobilestylegan()),
        settings,
    }
}

/// What a mapper's metadata says it fits.
pub fn compat(m: &MapperMeta) -> mapper::Compat<'_> {
    mapper::Compat {
        clip_model: &m.clip_model,
        clip_dim: m.clip_dim,
        generator: &m.generator,
        num_styles: m.num_styles,
        w_dim: m.w_dim,
    }
}

/// Largest absolute difference of two tensors of one shape.
pub fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    clip2gan::parity::max_abs_diff(a, b).unwrap()
}

/// A small disk that a test fills up: a tmpfs mounted at a fresh temporary
/// directory (root only, as CI runs; the mount is refused otherwise and the
/// test says so), unmounted when dropped. Filling it is deterministic: a
/// filler file written until the kernel says ENOSPC, removed to give the
/// space back.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    pub fn mount(mib: usize) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a small tmpfs and needs root (CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { dir }
    }

    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }

    pub fn filler(&self) -> std::path::PathBuf {
        self.path().join("filler")
    }

    /// Write the filler until the disk is full; returns its size.
    pub fn fill(&self) -> u64 {
        use std::io::Write;
        let mut f = std::fs::File::create(self.filler()).unwrap();
        let chunk = vec![7u8; 4096];
        let mut n = 0u64;
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        // Data the kernel took but could not place shows at fsync.
        let _ = f.sync_all();
        n
    }

    pub fn free(&self) {
        std::fs::remove_file(self.filler()).unwrap();
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// [`tiny_models`] and a random mapper between them
/// (`<models>/tiny-mapper.safetensors`): a whole bot or worker process that
/// starts in about a second and runs a job in milliseconds. Returns (the
/// generator's directory, the CLIP's, the mapper file); the mapper names
/// the CLIP by the path as given, as `clip.model` must then be set.
pub fn tiny_bot_models(models: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let (g, c) = tiny_models(models);
    let gen = MobileStyleGan::load(&g, &Device::Cpu).unwrap();
    let meta = MapperMeta {
        clip_model: c.display().to_string(),
        clip_dim: 32,
        generator: gen.id().into(),
        num_styles: gen.num_styles(),
        w_dim: gen.w_dim(),
        config: MapperConfig {
            depth: 1,
            width: 32,
            ..Default::default()
        },
        step: 0,
        training: serde_json::Value::Null,
        metrics: serde_json::Value::Null,
    };
    let varmap = candle_nn::VarMap::new();
    let m = Mapper::init(&varmap, meta, gen.w_avg(), &Device::Cpu).unwrap();
    let path = models.join("tiny-mapper.safetensors");
    mapper::save(&path, &varmap, gen.w_avg(), &m.meta).unwrap();
    (g, c, path)
}
