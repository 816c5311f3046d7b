//! Training the mapper on tiny random generators and CLIP: it learns, it
//! resumes exactly, full mode learns through StyleGAN2, and it fails safely
//! (NaN, failed checkpoint writes, interrupted pair caches, bad image folders).

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use candle_core::Device;
use clip2gan::clip::Clip;
use clip2gan::eval;
use clip2gan::generator::mobilestylegan::MobileStyleGan;
use clip2gan::generator::stylegan2::{LoadOptions, StyleGan2};
use clip2gan::mapper::{Compat, Mapper};
use clip2gan::train::{self, cache, checkpoint, MapperInit, Mode, Setup, TrainConfig};

struct Tiny {
    dir: tempfile::TempDir,
    g: MobileStyleGan,
    clip: Clip,
}

fn tiny() -> Tiny {
    let dir = tempfile::tempdir().unwrap();
    let (g, c) = common::tiny_models(dir.path());
    Tiny {
        g: MobileStyleGan::load(&g, &Device::Cpu).unwrap(),
        clip: Clip::from_dir(&c, &Device::Cpu).unwrap(),
        dir,
    }
}

/// The settings of the learning test: small, fast, and with the modality
/// noise low enough that the embedding still pins down the latent.
fn config() -> TrainConfig {
    let mut c = TrainConfig {
        mode: Mode::Cache,
        steps: 300,
        batch_size: 64,
        lr: 2e-3,
        warmup_steps: 20,
        seed: 1,
        lafite_xi: 0.1,
        pairs: 1024,
        chunk_pairs: 256,
        gen_batch: 64,
        checkpoint_every: 100,
        ..Default::default()
    };
    c.mapper.depth = 2;
    c.mapper.width = 256;
    c
}

/// Full mode without the latent and pull losses (image and CLIP losses
/// only): `steps` steps of `batch` samples, reconstructed at `recon_size`.
fn full_config(steps: u64, batch: usize, recon_size: usize, warmup_steps: u64) -> TrainConfig {
    let mut cfg = config();
    cfg.mode = Mode::Full;
    cfg.steps = steps;
    cfg.batch_size = batch;
    cfg.gen_batch = batch;
    cfg.recon_size = recon_size;
    cfg.warmup_steps = warmup_steps;
    cfg.loss.latent = 0.0;
    cfg.loss.pull = 0.0;
    cfg
}

static NEVER: AtomicBool = AtomicBool::new(false);

fn setup<'a>(t: &'a Tiny, cfg: TrainConfig, run: &str) -> Setup<'a> {
    Setup {
        g: &t.g,
        clip: &t.clip,
        clip_model: "tiny-clip".into(),
        config: cfg,
        captions: clip2gan::train::captions::Captions::faces(),
        run_dir: t.dir.path().join(run),
        out: t.dir.path().join(run).join("mapper.safetensors"),
        resume: false,
        stop: &NEVER,
        stop_after: None,
        quiet: true,
    }
}

/// The error of a run that must fail.
fn train_err(t: &Tiny, cfg: TrainConfig, run: &str) -> String {
    common::err_text(train::train(&setup(t, cfg, run)))
}

fn compat<'a>(t: &'a Tiny) -> Compat<'a> {
    use clip2gan::generator::Generator;
    Compat {
        clip_model: "tiny-clip",
        clip_dim: t.clip.embed_dim(),
        generator: t.g.id(),
        num_styles: t.g.num_styles(),
        w_dim: t.g.w_dim(),
    }
}

fn evaluate(t: &Tiny, mapper: &Path, cfg: &TrainConfig) -> eval::EvalReport {
    let (m, _) = Mapper::load(mapper, &compat(t), &Device::Cpu).unwrap();
    let (untrained, _) = train::untrained_mapper(&t.g, &t.clip, "tiny-clip", cfg).unwrap();
    eval::evaluate(
        &t.g,
        &t.clip,
        &m,
        &untrained,
        &eval::Options {
            samples: 128,
            seed: 99,
            psnr_size: 256,
            xi: 0.0,
            batch: 64,
            prompts: Some(vec![
                "a face".into(),
                "a smiling woman".into(),
                "an old man".into(),
            ]),
            candidates: 100,
        },
    )
    .unwrap()
}

/// Short training lowers the held-out latent MSE far below the w_avg
/// baseline, and a run interrupted at step 130 and resumed reproduces the
/// uninterrupted run's per-step losses exactly.
#[test]
fn learns_and_resumes_exactly() {
    let t = tiny();
    let cfg = config();

    let full = train::train(&setup(&t, cfg.clone(), "a")).unwrap();
    assert_eq!(
        (full.start_step, full.step, full.interrupted),
        (0, 300, false)
    );
    let stats = full.cache.clone().unwrap();
    assert_eq!((stats.rendered, stats.reused), (1024, 0));
    let mapper = full.mapper.clone().unwrap();

    let r = evaluate(&t, &mapper, &cfg);
    eprint!("{}", eval::table(&r));
    let (trained, untrained, avg) = (&r.rows[0], &r.rows[1], &r.rows[2]);
    // The untrained mapper predicts w_avg plus a tiny residual.
    assert!((untrained.latent_mse - avg.latent_mse).abs() < 0.05 * avg.latent_mse);
    // Measured 0.186 vs 0.531 (0.35x). The run is deterministic (seeded tiny
    // models, seeded everything), so the bound at 0.5x only has to absorb
    // floating-point differences between machines: a wide margin.
    assert!(
        trained.latent_mse < 0.5 * avg.latent_mse,
        "trained {} vs w_avg {}",
        trained.latent_mse,
        avg.latent_mse
    );
    assert!(
        trained.psnr_db > avg.psnr_db,
        "{} vs {}",
        trained.psnr_db,
        avg.psnr_db
    );
    assert!(trained.clip_score.is_some() && r.candidates == Some(3));

    // Interrupted after step 130 (a checkpoint at 100, and one on interrupt).
    let mut s = setup(&t, cfg.clone(), "b");
    s.stop_after = Some(130);
    let first = train::train(&s).unwrap();
    assert_eq!(
        (first.step, first.interrupted, first.mapper.is_none()),
        (130, true, true)
    );
    assert_eq!(first.losses[..], full.losses[..130]);
    s.stop_after = None;
    s.resume = true;
    let resumed = train::train(&s).unwrap();
    assert_eq!((resumed.start_step, resumed.step), (130, 300));
    assert_eq!(
        resumed.cache.as_ref().unwrap().reused,
        1024,
        "the pair cache is reused"
    );
    assert_eq!(
        resumed.losses[..],
        full.losses[130..],
        "resumed losses differ"
    );
    // The metrics file holds every step once, equal to the uninterrupted run's.
    let a = train::progress::read_step_losses(&full.metrics).unwrap();
    let b = train::progress::read_step_losses(&resumed.metrics).unwrap();
    assert_eq!(a, b);
    // And the mapper files are identical, tensor for tensor.
    let ta = clip2gan::tensorfile::read(&mapper, &Device::Cpu)
        .unwrap()
        .tensors;
    let tb = clip2gan::tensorfile::read(&resumed.mapper.unwrap(), &Device::Cpu)
        .unwrap()
        .tensors;
    for (k, v) in &ta {
        let d = common::max_abs(v, &tb[k]);
        assert_eq!(d, 0.0, "{k}");
    }

    // Resuming with other settings is refused, naming them.
    let mut other = setup(
        &t,
        TrainConfig {
            lr: 1e-3,
            ..cfg.clone()
        },
        "b",
    );
    other.resume = true;
    let err = common::err_text(train::train(&other));
    assert!(err.contains("lr: 0.002 -> 0.001"), "{err}");
    // A new run refuses to overwrite a run directory with a checkpoint.
    let err = train_err(&t, cfg, "b");
    assert!(err.contains("--resume"), "{err}");
}

/// `init = "fit"`: the MLP starts where the closed-form fit on the run's
/// pairs is (its first loss far below a random start's) and training goes on
/// from there; a mapper it cannot express the fit in is refused up front.
#[test]
fn mlp_can_start_from_the_fit() {
    let t = tiny();
    let mut cfg = config();
    cfg.steps = 60;
    cfg.warmup_steps = 10;
    cfg.style_mixing = 0.0;
    cfg.mapper.layer_norm = false;
    let random = train::train(&setup(&t, cfg.clone(), "random")).unwrap();
    cfg.init = MapperInit::Fit;
    let fitted = train::train(&setup(&t, cfg.clone(), "fit")).unwrap();
    let (r0, f0) = (random.losses[0].1, fitted.losses[0].1);
    let f_last = fitted.losses.last().unwrap().1;
    eprintln!("first loss: random start {r0}, fit start {f0}; fit start after 60 steps {f_last}");
    assert!(f0 < 0.7 * r0, "fit start {f0} vs random start {r0}");
    assert!(
        f_last < 1.05 * f0,
        "training from the fit went from {f0} to {f_last}"
    );

    cfg.mapper.layer_norm = true;
    let err = train_err(&t, cfg, "refused");
    assert!(err.contains("mapper.layer_norm = false"), "{err}");
}

/// `mode = "fit"` with `[train.refine]`: the closed-form mapper is written
/// first, then replaced by an MLP that starts as the fit, whose loss falls,
/// and that keeps the fit's text shift, its residuals for variety and a
/// clamp; on held-out pairs it beats the fit.
#[test]
fn fit_mode_refines_the_fit_into_an_mlp() {
    use clip2gan::mapper::MapperKind;
    use clip2gan::train::refine::RefineConfig;
    let t = tiny();
    let mut cfg = config();
    cfg.mode = Mode::Fit;
    cfg.style_mixing = 0.0;
    cfg.refine = RefineConfig {
        steps: 0,
        ..Default::default()
    };
    let fit = train::train(&setup(&t, cfg.clone(), "fit")).unwrap();
    assert!(fit.losses.is_empty(), "no steps without refinement");
    cfg.refine = RefineConfig {
        steps: 120,
        lafite_xi: 0.1,
        lr: 2e-3,
        warmup_steps: 10,
        depth: 2,
        width: 256,
        ema: 0.9,
    };
    // The same run directory: the pairs are reused, not rendered again.
    let mut again = setup(&t, cfg.clone(), "fit");
    again.out = t.dir.path().join("refined.safetensors");
    let refined = train::train(&again).unwrap();
    assert_eq!(refined.cache.as_ref().map(|c| c.rendered), Some(0));
    assert!(!refined.interrupted);
    let losses: Vec<f32> = refined.losses.iter().map(|l| l.1).collect();
    assert_eq!(losses.len(), 120);
    let (first, last) = (losses[0], *losses.last().unwrap());
    let late = losses[100..].iter().sum::<f32>() / 20.0;
    eprintln!("refinement loss: first {first}, last {last}, mean of the last 20 {late}");
    assert!(late < 0.9 * first, "the loss went from {first} to {late}");

    let path = refined.mapper.clone().unwrap();
    let (m, _) = Mapper::load(&path, &compat(&t), &Device::Cpu).unwrap();
    assert_eq!(m.meta.config.kind, MapperKind::Mlp);
    assert_eq!((m.meta.config.bank, m.meta.step), (1024, 120));
    assert!(m.can_sample(), "the fit's residuals came along");
    let names = safetensors_names(&path);
    for name in ["text_shift", "residuals", "max_residual"] {
        assert!(
            names.contains(&name.to_string()),
            "{name} missing: {names:?}"
        );
    }

    // Trained as one style row (the pairs are unmixed), written out for
    // every style: a full mapper file.
    let out = candle_core::safetensors::load(&path, &Device::Cpu).unwrap()["out.weight"].clone();
    let (styles, w_dim) = (m.meta.num_styles, m.meta.w_dim);
    assert_eq!(out.dims(), [styles * w_dim, 256]);
    let first = out.narrow(0, 0, w_dim).unwrap();
    for s in 1..styles {
        let row = out.narrow(0, s * w_dim, w_dim).unwrap();
        let diff = (&row - &first).unwrap().abs().unwrap().max_all().unwrap();
        assert_eq!(diff.to_scalar::<f32>().unwrap(), 0.0, "style {s}");
    }

    let (f, r) = (
        evaluate(&t, &fit.mapper.unwrap(), &cfg),
        evaluate(&t, &path, &cfg),
    );
    let (fit_mse, refined_mse, avg) = (
        f.rows[0].latent_mse,
        r.rows[0].latent_mse,
        r.rows[2].latent_mse,
    );
    eprintln!("held-out latent MSE: fit {fit_mse}, refined {refined_mse}, w_avg {avg}");
    assert!(
        refined_mse < fit_mse && fit_mse < avg,
        "fit {fit_mse}, refined {refined_mse}, w_avg {avg}"
    );
}

/// The refinement's weight average starts at the fit: with a decay close
/// to 1 and a few large steps, the averaged MLP predicts almost what the fit
/// does, while the last step's weights have moved away.
#[test]
fn refinement_average_starts_at_the_fit() {
    use clip2gan::train::refine::RefineConfig;
    let t = tiny();
    let mut cfg = config();
    cfg.mode = Mode::Fit;
    cfg.style_mixing = 0.0;
    let refine = |ema: f64| RefineConfig {
        steps: 3,
        lr: 5e-2,
        warmup_steps: 0,
        depth: 2,
        width: 256,
        ema,
        ..Default::default()
    };
    let mut mapper = |name: &str, r: RefineConfig| {
        cfg.refine = r;
        let mut s = setup(&t, cfg.clone(), "fit");
        s.out = t.dir.path().join(name);
        let path = train::train(&s).unwrap().mapper.unwrap();
        Mapper::load(&path, &compat(&t), &Device::Cpu).unwrap().0
    };
    let fit = mapper(
        "fit.safetensors",
        RefineConfig {
            steps: 0,
            ..refine(0.0)
        },
    );
    let last = mapper("last.safetensors", refine(0.0));
    let averaged = mapper("averaged.safetensors", refine(0.999));
    let shape = [32, t.clip.embed_dim()];
    let e = clip2gan::rng::normal_tensor(1, "refine-test", &shape, &Device::Cpu).unwrap();
    let e = e
        .broadcast_div(&e.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap())
        .unwrap();
    let gap = |m: &Mapper| -> f32 {
        let d = (m.forward(&e).unwrap() - fit.forward(&e).unwrap()).unwrap();
        d.abs().unwrap().max_all().unwrap().to_scalar().unwrap()
    };
    let (moved, kept) = (gap(&last), gap(&averaged));
    eprintln!("largest change from the fit: last weights {moved}, averaged {kept}");
    assert!(
        moved > 0.0 && kept < 0.05 * moved,
        "last {moved}, averaged {kept}"
    );
}

/// First use in the bot's idle time: [`warmup::Growth`] fits at
/// `first_pairs`, refits on the full bank, then refines one step per call
/// and puts the MLP in use; a restart with the fit on disk and the bank full
/// (the refinement was cut short) goes straight to refining.
#[test]
fn growth_fits_then_refines_in_idle_steps() {
    use clip2gan::mapper::MapperKind::{Linear, Mlp};
    use clip2gan::train::refine::RefineConfig;
    use clip2gan::train::warmup;
    let t = tiny();
    let plan = warmup::Plan {
        out: t.dir.path().join("mapper.safetensors"),
        run_dir: t.dir.path().join("run"),
        train: TrainConfig {
            mode: Mode::Fit,
            style_mixing: 0.0,
            chunk_pairs: 16,
            gen_batch: 16,
            refine: RefineConfig {
                steps: 6,
                depth: 1,
                width: 64,
                ..Default::default()
            },
            ..config()
        },
        clip_model: "tiny-clip".into(),
        captions: clip2gan::train::captions::Captions::faces(),
        first_pairs: 32,
        pairs: 64,
    };
    let grow = |fitted: bool| {
        let mut growth = warmup::Growth::new(plan.clone(), &t.clip, &t.g, fitted).unwrap();
        let (mut calls, mut installed) = (0, Vec::new());
        while growth.growing() {
            calls += 1;
            assert!(calls < 100, "growth does not end");
            if let Some(m) = growth.step(&t.clip, &t.g).unwrap() {
                installed.push((m.meta.config.kind, m.meta.config.bank, calls));
            }
        }
        let on_disk = Mapper::load(&plan.out, &compat(&t), &Device::Cpu)
            .unwrap()
            .0;
        assert_eq!(on_disk.meta.config.kind, Mlp, "the refined MLP is the file");
        installed
    };
    // 16 pairs a call: the fit at 32 and the refit at 64 come with the
    // render that completes them, then one refinement step a call.
    assert_eq!(
        grow(false),
        [(Linear, 32, 2), (Linear, 64, 4), (Mlp, 64, 10)]
    );
    assert_eq!(grow(true), [(Linear, 64, 1), (Mlp, 64, 7)]);
}

fn safetensors_names(path: &Path) -> Vec<String> {
    candle_core::safetensors::load(path, &Device::Cpu)
        .unwrap()
        .into_keys()
        .collect()
}

/// Full mode: the image and CLIP losses reach the mapper through the frozen
/// generator and CLIP, with part of each batch from a folder of images.
#[test]
fn full_mode_backpropagates_through_generator_and_clip() {
    let t = tiny();
    let images = t.dir.path().join("faces");
    std::fs::create_dir_all(&images).unwrap();
    for (i, c) in [[200u8, 150, 120], [40, 60, 90], [120, 120, 120]]
        .iter()
        .enumerate()
    {
        let img = image::RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([c[0], c[1].wrapping_add(x as u8), c[2].wrapping_add(y as u8)])
        });
        img.save(images.join(format!("{i}.png"))).unwrap();
    }
    std::fs::write(images.join("notes.txt"), "not an image").unwrap();
    let mut cfg = full_config(12, 4, 16, 2);
    cfg.image_dir = Some(images.clone());
    let r = train::train(&setup(&t, cfg.clone(), "full")).unwrap();
    assert_eq!(r.step, 12);
    let text = std::fs::read_to_string(&r.metrics).unwrap();
    let steps: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "step")
        .collect();
    assert_eq!(steps.len(), 12);
    for s in &steps {
        assert!(
            s["image"].as_f64().unwrap().is_finite() && s["clip"].as_f64().unwrap().is_finite()
        );
        assert!(
            s["grad_norm"].as_f64().unwrap() > 0.0,
            "no gradient reached the mapper: {s}"
        );
    }
    let first: f64 = steps[..3]
        .iter()
        .map(|s| s["image"].as_f64().unwrap())
        .sum();
    let last: f64 = steps[9..]
        .iter()
        .map(|s| s["image"].as_f64().unwrap())
        .sum();
    eprintln!("image loss, first 3 steps {first:.4}, last 3 {last:.4}");

    // An empty or missing folder is refused before training starts.
    let empty = t.dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    cfg.image_dir = Some(empty);
    let err = train_err(&t, cfg.clone(), "e1");
    assert!(err.contains("no images in"), "{err}");
    cfg.image_dir = Some(t.dir.path().join("missing"));
    let err = train_err(&t, cfg.clone(), "e2");
    assert!(
        err.contains("cannot read") && err.contains("missing"),
        "{err}"
    );
    // An unreadable image is named.
    std::fs::write(images.join("broken.png"), b"not a png").unwrap();
    cfg.image_dir = Some(images);
    let err = train_err(&t, cfg, "e3");
    assert!(err.contains("broken.png"), "{err}");
}

/// A loss that turns NaN stops the run with a message; the last checkpoint
/// written before it stays loadable.
#[test]
fn nan_loss_stops_and_keeps_the_last_checkpoint() {
    let t = tiny();
    let mut cfg = config();
    cfg.pairs = 128;
    cfg.lr = 1e30; // the first update throws the weights to ~1e30
    cfg.warmup_steps = 0;
    cfg.checkpoint_every = 1;
    let s = setup(&t, cfg, "nan");
    let err = train::train(&s).err().unwrap().to_string();
    assert!(
        err.contains("training stopped") && err.contains("at step 2"),
        "{err}"
    );
    assert!(err.contains("last good checkpoint (step 1)"), "{err}");
    let l = checkpoint::load(&s.run_dir.join(checkpoint::FILE), &Device::Cpu).unwrap();
    assert_eq!(l.state.step, 1);
}

/// A checkpoint write that fails (here: the temporary file cannot be
/// created, as with a full disk) stops the run with the error and leaves the
/// previous checkpoint intact. (A read-only directory would not do: the
/// tests may run as root.)
#[test]
fn failed_checkpoint_write_keeps_the_previous_one() {
    let t = tiny();
    let mut cfg = config();
    cfg.pairs = 128;
    cfg.checkpoint_every = 3;
    let mut s = setup(&t, cfg, "disk");
    s.stop_after = Some(3);
    train::train(&s).unwrap();
    let ckpt = s.run_dir.join(checkpoint::FILE);
    let before = std::fs::read(&ckpt).unwrap();
    let blocker = s.run_dir.join(format!(
        ".{}.{}.partial",
        checkpoint::FILE,
        std::process::id()
    ));
    std::fs::create_dir(&blocker).unwrap();
    s.stop_after = None;
    s.resume = true;
    let err = train::train(&s).err().unwrap().to_string();
    assert!(
        err.contains("cannot write") && err.contains(checkpoint::FILE),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&ckpt).unwrap(),
        before,
        "the previous checkpoint changed"
    );
    assert_eq!(checkpoint::load(&ckpt, &Device::Cpu).unwrap().state.step, 3);
    std::fs::remove_dir(&blocker).unwrap();
}

fn cache_renderer<'a>(t: &'a Tiny, seed: u64) -> cache::Renderer<'a> {
    let spec = train::data::SampleSpec {
        truncation: 1.0,
        style_mixing: 0.5,
        image_size: 64,
        gen_batch: 16,
    };
    cache::Renderer {
        g: &t.g,
        clip: &t.clip,
        key: cache::CacheKey::new(&t.g, &t.clip, "tiny-clip", seed, &spec),
        spec,
    }
}

fn same_pairs(a: &cache::PairSet, b: &cache::PairSet) {
    assert_eq!(a.cross, b.cross);
    assert_eq!(
        a.w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.w.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
    assert_eq!(
        a.e.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        b.e.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    );
}

/// An interrupted or damaged pair cache is detected and completed, and the
/// result is the same pairs an uninterrupted build gives.
#[test]
fn pair_cache_resumes_and_rebuilds() {
    let t = tiny();
    let dir: PathBuf = t.dir.path().join("pairs");
    let r = cache_renderer(&t, 3);
    let (whole, stats) = cache::ensure(&dir, &r, 100, 32, &NEVER, true)
        .unwrap()
        .unwrap();
    assert_eq!((whole.len(), stats.rendered), (100, 100));
    assert!(
        whole.cross.iter().any(|&c| c < 11) && whole.cross.contains(&11),
        "some pairs are mixed"
    );

    // Stopped before the first chunk: nothing listed, nothing returned.
    let stopped = AtomicBool::new(true);
    assert!(
        cache::ensure(&t.dir.path().join("p2"), &r, 100, 32, &stopped, true)
            .unwrap()
            .is_none()
    );

    // Damage: the manifest loses its last chunk (a crash between writing
    // the chunk and the manifest), chunk 2 is corrupted, and a half-written
    // temporary file lies around.
    let manifest = dir.join(cache::MANIFEST);
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let chunks = m["chunks"].as_array_mut().unwrap();
    assert_eq!(chunks.len(), 4);
    chunks.pop();
    std::fs::write(&manifest, serde_json::to_string(&m).unwrap()).unwrap();
    let second = dir.join(m["chunks"][1]["file"].as_str().unwrap());
    let mut bytes = std::fs::read(&second).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&second, bytes).unwrap();
    std::fs::write(
        dir.join(".pairs-000000064-32.safetensors.1.partial"),
        b"half",
    )
    .unwrap();

    let (again, stats) = cache::ensure(&dir, &r, 100, 32, &NEVER, true)
        .unwrap()
        .unwrap();
    assert_eq!((stats.reused, stats.rendered), (32, 68));
    same_pairs(&whole, &again);
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(files, 5, "4 chunks + manifest, no strays");

    // More pairs extend the cache; fewer reuse a prefix.
    let (more, stats) = cache::ensure(&dir, &r, 120, 32, &NEVER, true)
        .unwrap()
        .unwrap();
    assert_eq!((stats.reused, stats.rendered), (100, 20));
    assert_eq!(more.cross[..100], whole.cross[..]);
    let (fewer, stats) = cache::ensure(&dir, &r, 50, 32, &NEVER, true)
        .unwrap()
        .unwrap();
    assert_eq!((stats.reused, stats.rendered, fewer.len()), (50, 0, 50));

    // Other settings rebuild.
    let (other, stats) = cache::ensure(&dir, &cache_renderer(&t, 4), 40, 32, &NEVER, true)
        .unwrap()
        .unwrap();
    assert_eq!(stats.rendered, 40);
    assert_ne!(other.cross, whole.cross[..40]);
}

/// The 32 px StyleGAN2 test network (random weights) and the tiny CLIP.
fn tiny_stylegan2(dir: &Path) -> (StyleGan2, Clip) {
    let c = dir.join("tiny-clip");
    clip2gan::clip::save_random_checkpoint(&c, clip2gan::clip::config::TINY_CONFIG_JSON).unwrap();
    let g = StyleGan2::load(
        &common::fixture("stylegan2/net32.pt"),
        &LoadOptions::default(),
        &Device::Cpu,
    )
    .unwrap();
    (g, Clip::from_dir(&c, &Device::Cpu).unwrap())
}

/// The gradient of an image reaches every style input of W+ that changes
/// the image, in both generators, with or without the training guard: the
/// fast kernels have no backward pass, so they must stand aside for inputs
/// that carry a gradient. (When only MobileStyleGAN's kernels heeded the
/// guard, StyleGAN2's conv styles got no gradient at all: only its ToRGB
/// matmuls passed one on.)
#[test]
fn gradients_reach_every_style_of_both_generators() {
    use candle_core::Tensor;
    use clip2gan::generator::{Generator, NoiseMode};
    let t = tiny();
    let (sg2, _) = tiny_stylegan2(t.dir.path());
    let gens: [&dyn Generator; 2] = [&t.g, &sg2];
    for g in gens {
        let z = clip2gan::generator::seeded_normal(3, 2, g.z_dim(), &Device::Cpu).unwrap();
        let w = g.broadcast_w(&g.map(&z).unwrap()).unwrap();
        let image = |w: &Tensor| g.synthesize(w, NoiseMode::Fixed).unwrap();
        let base = image(&w);
        // Which styles the image depends on (MobileStyleGAN's W+ has slots
        // its synthesis never reads), by the fast path without gradients.
        let used: Vec<bool> = (0..g.num_styles())
            .map(|k| {
                let mut shift = vec![0f32; g.num_styles()];
                shift[k] = 0.5;
                let shift = Tensor::from_vec(shift, (1, g.num_styles(), 1), &Device::Cpu).unwrap();
                let moved = image(&w.broadcast_add(&shift).unwrap());
                let d: f32 = (moved - &base)
                    .unwrap()
                    .abs()
                    .unwrap()
                    .max_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                d > 0.0
            })
            .collect();
        assert!(used.iter().filter(|&&u| u).count() >= 8, "{used:?}");
        for guard in [false, true] {
            let wv = candle_core::Var::from_tensor(&w).unwrap();
            let _portable = guard.then(clip2gan::ops::Portable::on);
            let img = g.synthesize(wv.as_tensor(), NoiseMode::Fixed).unwrap();
            let grads = img.sqr().unwrap().mean_all().unwrap().backward().unwrap();
            let per_style: Vec<f32> = grads
                .get(wv.as_tensor())
                .expect("a gradient for W+")
                .abs()
                .unwrap()
                .sum((0, 2))
                .unwrap()
                .to_vec1()
                .unwrap();
            let reached: Vec<bool> = per_style.iter().map(|&v| v > 0.0).collect();
            assert_eq!(
                reached,
                used,
                "{} (guard {guard}): gradient per style {per_style:?}",
                g.id()
            );
        }
    }
}

/// Full mode learns through the tiny StyleGAN2: 30 steps of the image loss
/// alone (batch 8) lower the image loss of 64 held-out samples, mapped from
/// their clean embeddings, from 1.425 (the untrained mapper, i.e. w_avg) to
/// 0.798 (0.56x). Before the kernels shared one switch, the same training
/// stayed flat at ~1.0-1.26: the gradient never reached the conv styles.
/// Seeded throughout, so the bound at 0.75x only absorbs floating-point
/// differences between machines.
#[test]
fn full_mode_lowers_the_image_loss_through_stylegan2() {
    use clip2gan::generator::Generator;
    let dir = tempfile::tempdir().unwrap();
    let (g, clip) = tiny_stylegan2(dir.path());
    let mut cfg = full_config(30, 8, 32, 5);
    cfg.image_size = 32;
    cfg.lr = 4e-3;
    cfg.loss.clip = 0.0;
    let spec = train::data::SampleSpec {
        truncation: cfg.truncation,
        style_mixing: cfg.style_mixing,
        image_size: 32,
        gen_batch: 64,
    };
    let held = train::data::render_samples(&g, &clip, 99, "held-out", 0..64, &spec).unwrap();
    let image_loss = |m: &Mapper| -> f32 {
        let img = train::data::render(&g, &m.forward(&held.e).unwrap(), &spec).unwrap();
        (img - &held.images)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let (untrained, _) = train::untrained_mapper(&g, &clip, "tiny-clip", &cfg).unwrap();
    let before = image_loss(&untrained);

    let s = Setup {
        g: &g,
        clip: &clip,
        clip_model: "tiny-clip".into(),
        config: cfg,
        captions: clip2gan::train::captions::Captions::faces(),
        run_dir: dir.path().join("run"),
        out: dir.path().join("run/mapper.safetensors"),
        resume: false,
        stop: &NEVER,
        stop_after: None,
        quiet: true,
    };
    let r = train::train(&s).unwrap();
    let compat = Compat {
        clip_model: "tiny-clip",
        clip_dim: clip.embed_dim(),
        generator: g.id(),
        num_styles: g.num_styles(),
        w_dim: g.w_dim(),
    };
    let (trained, _) = Mapper::load(&r.mapper.unwrap(), &compat, &Device::Cpu).unwrap();
    let after = image_loss(&trained);
    eprintln!("held-out image loss: untrained {before:.4}, trained {after:.4}");
    assert!(
        after < 0.75 * before,
        "full mode did not learn: held-out image loss {before} -> {after}"
    );
}
