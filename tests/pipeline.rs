//! Text-to-image and edits through the real generator, with a small random
//! CLIP (real vocabulary) and a random mapper: the flow is real, only the
//! weights of CLIP and the mapper are untrained.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use clip2gan::engine::{Engine, EngineConfig, Output, PipelineBackend, Request};
use clip2gan::pipeline::{EditRequest, ImagineRequest, Layers, Pipeline, Settings};

use common::{bin, max_abs, tiny_pipeline_dir as setup};

fn pipeline(dir: &Path) -> Pipeline {
    common::tiny_pipeline(dir, Settings::default())
}

/// An engine on the tiny pipeline in `dir`.
fn engine(dir: &Path, cfg: EngineConfig) -> Engine {
    let (d, output_size) = (dir.to_path_buf(), cfg.output_size);
    Engine::start(cfg, move || {
        Ok(PipelineBackend {
            pipeline: pipeline(&d),
            output_size,
        })
    })
    .unwrap()
}

/// Submit and wait; the job must succeed.
async fn run(engine: &Engine, user: u64, request: Request) -> Output {
    engine.submit(user, request).unwrap().wait().await.unwrap()
}

fn req(prompt: &str, count: usize, seed: u64) -> ImagineRequest {
    ImagineRequest {
        prompt: prompt.into(),
        count,
        seed,
        truncation: None,
        candidates: count,
    }
}

/// Three users' jobs merged into one engine batch give the same latents and
/// images as each job run alone.
#[tokio::test]
async fn batched_jobs_equal_jobs_run_one_by_one() {
    let dir = setup();
    let p = pipeline(dir.path());
    let jobs = [
        req("a man with a beard", 1, 1),
        req("a smiling woman", 2, 7),
        req("an old man", 1, 3),
    ];
    let alone: Vec<_> = jobs
        .iter()
        .map(|j| p.imagine(std::slice::from_ref(j)).unwrap().remove(0))
        .collect();

    let cfg = EngineConfig {
        max_batch: 8,
        max_wait_ms: 2000,
        // The whole wait: the three jobs must share one batch however the
        // submitting thread is scheduled.
        settle_ms: 2000,
        output_size: 64,
        ..Default::default()
    };
    let engine = engine(dir.path(), cfg);
    let handles: Vec<_> = jobs
        .iter()
        .enumerate()
        .map(|(u, j)| {
            engine
                .submit(
                    u as u64,
                    Request::Imagine {
                        prompt: j.prompt.clone(),
                        count: j.count,
                        seed: j.seed,
                        truncation: None,
                        candidates: j.count,
                    },
                )
                .unwrap()
        })
        .collect();
    for (h, single) in handles.into_iter().zip(&alone) {
        let out = h.wait().await.unwrap();
        assert_eq!(out.images.len(), single.images.dim(0).unwrap());
        for (k, lat) in out.latents.iter().enumerate() {
            let t = Tensor::from_vec(lat.data.clone(), (23, 512), &Device::Cpu).unwrap();
            let d = max_abs(&t, &single.latents.get(k).unwrap());
            assert!(d < 1e-4, "latent {k} differs by {d}");
            let png = image::load_from_memory(&out.images[k]).unwrap().to_rgb8();
            let want = clip2gan::image_io::to_rgb8(
                &clip2gan::image_io::resize_area(&single.images.narrow(0, k, 1).unwrap(), 64)
                    .unwrap(),
            )
            .unwrap()
            .remove(0);
            let worst = png
                .as_raw()
                .iter()
                .zip(want.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(worst <= 1, "image {k} differs by {worst} levels");
        }
    }
}

#[test]
fn one_prompt_gives_varied_images_and_edits_move_the_latent() {
    let dir = setup();
    let p = pipeline(dir.path());
    let r = p
        .imagine(&[req("a man with a beard", 3, 11)])
        .unwrap()
        .remove(0);
    assert_eq!(r.images.dims(), [3, 3, 1024, 1024]);
    let small = r.images.avg_pool2d(16).unwrap();
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let d = clip2gan::pipeline::mean_abs_diff(&small.get(a).unwrap(), &small.get(b).unwrap())
            .unwrap();
        assert!(d > 0.02, "images {a} and {b} are nearly identical ({d})");
    }
    // Image k of a request equals seed + k asked alone.
    let alone = p
        .imagine(&[req("a man with a beard", 1, 12)])
        .unwrap()
        .remove(0);
    assert!(max_abs(&alone.latents.get(0).unwrap(), &r.latents.get(1).unwrap()) < 1e-5);

    let latent = r.latents.get(0).unwrap();
    let edit = |strength, layers| EditRequest {
        latent: latent.clone(),
        instruction: "add smile".into(),
        strength,
        layers,
    };
    let out = p
        .edit(&[
            edit(0.0, Layers::All),
            edit(2.0, Layers::All),
            edit(2.0, Layers::Fine),
        ])
        .unwrap();
    assert!(
        max_abs(&out[0].latents.get(0).unwrap(), &latent) < 1e-6,
        "strength 0 is the identity"
    );
    assert!(
        max_abs(&out[1].latents.get(0).unwrap(), &latent) > 1e-3,
        "the edit changed nothing"
    );
    let fine = p.generator.layer_groups()[2].clone();
    let moved = out[2].latents.get(0).unwrap();
    assert!(
        max_abs(
            &moved.narrow(0, 0, fine.start).unwrap(),
            &latent.narrow(0, 0, fine.start).unwrap()
        ) < 1e-6
    );
    assert!(
        p.edit(&[edit(5.0, Layers::All)]).is_err(),
        "strength out of range"
    );
    assert!(p.imagine(&[req("   ", 1, 0)]).is_err(), "empty prompt");
}

#[tokio::test]
async fn ranking_variations_and_interpolation() {
    let dir = setup();
    let p = pipeline(dir.path());
    let mut r = req("a woman with glasses", 2, 5);
    r.candidates = 4;
    let out = p.imagine(&[r]).unwrap().remove(0);
    let s = out.scores.unwrap();
    assert_eq!(s.len(), 2);
    assert!(s[0] >= s[1], "kept candidates are sorted by CLIP score");

    let cfg = EngineConfig {
        output_size: 32,
        ..Default::default()
    };
    let engine = engine(dir.path(), cfg);
    let first = run(
        &engine,
        1,
        Request::Imagine {
            prompt: "a face".into(),
            count: 2,
            seed: 1,
            truncation: None,
            candidates: 2,
        },
    )
    .await;
    let (a, b) = (first.latents[0].clone(), first.latents[1].clone());
    let gif = run(
        &engine,
        1,
        Request::Interpolate {
            a: a.clone(),
            b,
            frames: 4,
        },
    )
    .await;
    assert_eq!(gif.images.len(), 1);
    assert!(gif.images[0].starts_with(b"GIF89a"));
    assert_eq!(gif.latents.len(), 4);
    let v = run(
        &engine,
        1,
        Request::Variations {
            latent: a,
            seed: 3,
            count: 2,
            amount: 0.5,
        },
    )
    .await;
    assert_eq!(v.images.len(), 2);
    let png = image::load_from_memory(&v.images[0]).unwrap();
    assert_eq!((png.width(), png.height()), (32, 32));
    let image = first.images[0].clone();
    let inv = run(&engine, 2, Request::Invert { image }).await;
    assert_eq!(inv.latents[0].data.len(), 23 * 512);
    let bad = engine
        .submit(
            2,
            Request::Invert {
                image: b"not an image".to_vec(),
            },
        )
        .unwrap()
        .wait()
        .await;
    assert!(
        matches!(bad, Err(clip2gan::engine::EngineError::InvalidRequest(_))),
        "{bad:?}"
    );
}

fn cli(dir: &Path, args: &[&str]) -> std::process::Output {
    let models = std::env::var_os("CLIP2GAN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo().join("models"));
    bin()
        .args(args)
        .env("CLIP2GAN_MODELS_DIR", models)
        .env("CLIP2GAN_CLIP__MODEL", dir.join("clip"))
        .env("CLIP2GAN_MAPPER__PATH", dir.join("mapper.safetensors"))
        .env("CLIP2GAN_DEVICE", "cpu")
        .output()
        .unwrap()
}

#[test]
fn cli_imagine_then_edit() {
    let dir = setup();
    let _ = common::mobilestylegan(); // weights fetched
    let out = dir.path().join("face.png");
    // Both commands render at 128 px.
    let at_128 = |args: &[&str], out: &Path| {
        let more = ["--size", "128", "-o", out.to_str().unwrap()];
        cli(dir.path(), &[args, &more].concat())
    };
    let o = at_128(&["imagine", "a man with a beard", "-n", "2"], &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lat = dir.path().join("face-1.npy");
    assert!(dir.path().join("face.npy").exists() && lat.exists());
    assert_eq!(
        clip2gan::npy::read_f32(&lat).unwrap().shape,
        vec![1, 23, 512]
    );
    let edited = dir.path().join("edited.png");
    let lat_arg = lat.to_str().unwrap();
    let edit = [
        "edit",
        "add smile",
        "--latent",
        lat_arg,
        "--strength",
        "1.5",
    ];
    let o = at_128(&edit, &edited);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let a = image::open(dir.path().join("face-1.png"))
        .unwrap()
        .to_rgb8();
    let b = image::open(&edited).unwrap().to_rgb8();
    assert_eq!(b.dimensions(), (128, 128));
    assert!(a != b, "the edit changed nothing");

    // Without a mapper and with first use switched off (first use itself
    // is tested in tests/hub.rs): the error says how to get one.
    std::fs::remove_file(dir.path().join("mapper.safetensors")).unwrap();
    let o = bin()
        .args(["imagine", "x", "-o", out.to_str().unwrap()])
        .env(
            "CLIP2GAN_MAPPER__PATH",
            dir.path().join("mapper.safetensors"),
        )
        .env("CLIP2GAN_MAPPER__BUILD", "false")
        .env("CLIP2GAN_DEVICE", "cpu")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("clip2gan train"));
}
