//! A generator that does not make faces, end to end: a random StyleGAN2
//! checkpoint configured as a cat generator (`generator.subject = "cat"`,
//! `[mapper] captions` = a file of cat prompts). `imagine` builds the
//! first-use mapper, whose text shift must come from those captions and
//! whose metadata must say so; `edit` then works on the result. The weights
//! are random, so the images mean nothing: this checks the plumbing.

mod common;

use std::path::Path;

use candle_core::{Device, Tensor};
use clip2gan::generator::stylegan2::{load::random_checkpoint, Arch};
use clip2gan::train::captions::{text_mean, Captions};

const CATS: &str = "# typical prompts for a cat generator\n\
a tabby cat sleeping on a sofa\n\
a black cat with green eyes\n\
a fluffy white kitten\n\
a ginger cat in the sun\n\
a grey cat looking up\n\
a siamese cat with blue eyes\n\
a cat with long whiskers\n\
a small kitten playing\n\
a calico cat on a windowsill\n\
a close-up of a cat's face\n\
an old cat with a grey muzzle\n\
a cat in the grass\n";

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_cat_generator_fits_its_text_shift_on_its_own_captions() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let clip_dir = d.join("tiny-clip");
    clip2gan::clip::save_random_checkpoint(&clip_dir, clip2gan::clip::config::TINY_CONFIG_JSON)
        .unwrap();
    // A small random StyleGAN2 written as a user's safetensors would be.
    let arch = Arch {
        resolution: 32,
        z_dim: 16,
        w_dim: 16,
        mapping_dims: vec![16, 16],
        channels: vec![16, 16, 8, 8],
        mapping_lr: 0.01,
        conv_clamp: None,
    };
    let ck = random_checkpoint(&arch, 5).unwrap();
    let mut tensors: Vec<(String, Tensor)> = ck
        .tensors()
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    clip2gan::tensorfile::write(&d.join("cats.safetensors"), &tensors, ck.metadata().clone())
        .unwrap();
    std::fs::write(d.join("cats.txt"), CATS).unwrap();
    let cfg_path = d.join("config.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "models_dir = {:?}\ndevice = \"cpu\"\n[clip]\nmodel = {:?}\n\
             [generator]\nkind = \"stylegan2\"\ncheckpoint = \"cats.safetensors\"\nsubject = \"cat\"\n\
             [mapper]\ncaptions = \"cats.txt\"\nfirst_pairs = 32\npairs = 32\n\
             [train]\nimage_size = 32\nrecon_size = 32\nchunk_pairs = 16\n",
            p(d),
            p(&clip_dir)
        ),
    )
    .unwrap();
    let run = |args: &[&str]| {
        let o = common::bin()
            .args(["--config", p(&cfg_path)])
            .args(args)
            .env_remove("CLIP2GAN_MODELS_DIR")
            .env_remove("CLIP2GAN_DEVICE")
            .current_dir(d)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{args:?} failed:\n{err}");
        err
    };

    let err = run(&[
        "imagine",
        "a black cat",
        "--size",
        "32",
        "-o",
        p(&d.join("cat.png")),
    ]);
    assert!(err.contains("building one from 32 generated cats"), "{err}");
    assert!(d.join("cat.png").exists() && d.join("cat.npy").exists());

    // The metadata names the captions that made the shift...
    let mapper = d.join("mapper.safetensors");
    let meta = clip2gan::mapper::read_meta(&mapper).unwrap();
    let cats = Captions::read(&d.join("cats.txt")).unwrap();
    let rec = &meta.metrics["text_shift"];
    assert_eq!(rec["source"], p(&d.join("cats.txt")), "{rec}");
    assert_eq!(rec["count"], 12, "{rec}");
    assert_eq!(rec["sha256"], cats.record()["sha256"], "{rec}");
    assert_eq!(rec["first"][0], "a tabby cat sleeping on a sofa");

    // ... and the shift is theirs: mu_image (the bank's mean embedding)
    // minus the cat captions' mean text embedding, not the faces'.
    let cfg = clip2gan::config::Config::load(Some(&cfg_path)).unwrap();
    let clip = clip2gan::clip::Clip::load(&cfg.clip_files().unwrap(), &Device::Cpu).unwrap();
    let g = cfg.open_generator(&Device::Cpu, false).unwrap();
    let plan = cfg.first_use().unwrap().unwrap();
    let bank = plan.read_bank(&clip, g.as_ref(), 32).unwrap();
    let mu_image = bank.e.mean(0).unwrap();
    let stored =
        candle_core::safetensors::load(&mapper, &Device::Cpu).unwrap()["text_shift"].clone();
    let gap = |c: &Captions| -> f32 {
        let want = (&mu_image - text_mean(&clip, c).unwrap()).unwrap();
        (&stored - want)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap()
    };
    let (with_cats, with_faces) = (gap(&cats), gap(&Captions::faces()));
    assert!(
        with_cats < 1e-5,
        "text shift off the cat captions' by {with_cats}"
    );
    assert!(
        with_faces > 1e-3,
        "the face captions' shift is {with_faces} away: no test"
    );

    // An edit of the result, in the subject's words.
    run(&[
        "edit",
        "--latent",
        p(&d.join("cat.npy")),
        "add a collar",
        "--size",
        "32",
        "-o",
        p(&d.join("collar.png")),
    ]);
    assert!(d.join("collar.png").exists());

    // Without --size the image is the generator's own size; a size above it
    // is refused with the sizes that work (it used to panic dividing by 0).
    run(&["imagine", "a cat", "-o", p(&d.join("own.png"))]);
    let own = image::open(d.join("own.png")).unwrap();
    assert_eq!((own.width(), own.height()), (32, 32));
    let o = common::bin()
        .args(["--config", p(&cfg_path), "imagine", "a cat", "--size", "64"])
        .args(["-o", p(&d.join("big.png"))])
        .env_remove("CLIP2GAN_MODELS_DIR")
        .env_remove("CLIP2GAN_DEVICE")
        .current_dir(d)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}"); // an error, not a panic (101)
    assert!(
        err.contains("size 64 is not supported: use 32") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!d.join("big.png").exists());
}
