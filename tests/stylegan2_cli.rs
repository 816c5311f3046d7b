//! `clip2gan generate` with a StyleGAN2 checkpoint, end to end, using the
//! example configuration tests/fixtures/stylegan2/config.toml (the 32 px
//! fixture network in rosinality's .pt layout).

mod common;

use std::path::Path;
use std::process::Output;

use clip2gan::npy::{self, Array};
use common::{fixture, repo};

/// Run from the repository root (the example config's paths are relative to
/// it), without environment overrides of the models directory or device.
fn clip2gan(args: &[&str]) -> Output {
    common::bin()
        .args(["--config", "tests/fixtures/stylegan2/config.toml"])
        .args(args)
        .env_remove("CLIP2GAN_MODELS_DIR")
        .env_remove("CLIP2GAN_DEVICE")
        .current_dir(repo())
        .output()
        .expect("run clip2gan")
}

fn check_ok(o: &Output) {
    assert!(
        o.status.success(),
        "clip2gan failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The images the CLI writes for the fixture's z at psi 0.7 are the PyTorch
/// reference images, to within one 8-bit step.
#[test]
fn generate_from_z_matches_reference() {
    let exp = candle_core::safetensors::load(
        fixture("stylegan2/net32_expected.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let z = tmp.path().join("z.npy");
    npy::write_f32(
        &z,
        &Array {
            data: exp["z"].flatten_all().unwrap().to_vec1().unwrap(),
            shape: exp["z"].dims().to_vec(),
        },
    )
    .unwrap();
    let out = tmp.path().join("img.png");
    let lat = tmp.path().join("wplus.npy");
    let o = clip2gan(&[
        "generate",
        "--latent",
        p(&z),
        "--space",
        "z",
        "--truncation",
        "0.7",
        "--save-latent",
        p(&lat),
        "-o",
        p(&out),
    ]);
    check_ok(&o);
    check_images(&out, &exp["img_trunc"]);
    assert_eq!(
        npy::read_f32(&lat).unwrap().shape,
        vec![3, 8, 32],
        "W+ of 8 styles"
    );
}

/// The numbered images at `out` are `reference` (`[n, 3, r, r]` in
/// [-1, 1]) to within one 8-bit step, at the checkpoint's resolution.
fn check_images(out: &Path, reference: &candle_core::Tensor) {
    let (n, _, r, _) = reference.dims4().unwrap();
    let reference: Vec<f32> = reference.flatten_all().unwrap().to_vec1().unwrap();
    for k in 0..n {
        let img = image::open(clip2gan::image_io::numbered_path(out, k))
            .unwrap()
            .to_rgb8();
        assert_eq!(
            img.dimensions(),
            (r as u32, r as u32),
            "default size = the checkpoint's resolution"
        );
        let mut worst = 0f32;
        for (x, y, px) in img.enumerate_pixels() {
            for c in 0..3 {
                let v = reference[((k * 3 + c) * r + y as usize) * r + x as usize];
                let v8 = ((v + 1.0) * 127.5).clamp(0.0, 255.0).round();
                worst = worst.max((px.0[c] as f32 - v8).abs());
            }
        }
        assert!(worst <= 1.0, "image {k} differs by {worst} steps of 255");
    }
}

/// The files people download, read natively: a legacy (PyTorch < 1.6)
/// rosinality `.pt` and an NVIDIA `.pkl`, generated from the reference z
/// by the binary run with a PATH that has no Python at all.
#[test]
fn generate_reads_legacy_pt_and_nvidia_pkl_without_python() {
    let no_python = tempfile::tempdir().unwrap();
    for (file, net) in [("net16_legacy.pt", "net16"), ("net16_ada.pkl", "net16_ada")] {
        let exp = candle_core::safetensors::load(
            fixture(&format!("stylegan2/{net}_expected.safetensors")),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let z = tmp.path().join("z.npy");
        npy::write_f32(
            &z,
            &Array {
                data: exp["z"].flatten_all().unwrap().to_vec1().unwrap(),
                shape: exp["z"].dims().to_vec(),
            },
        )
        .unwrap();
        let cfg = tmp.path().join("c.toml");
        std::fs::write(
            &cfg,
            format!(
                "models_dir = {:?}\n[generator]\nkind = \"stylegan2\"\ncheckpoint = {file:?}\n",
                fixture("stylegan2").display().to_string()
            ),
        )
        .unwrap();
        let out = tmp.path().join("img.png");
        let o = common::bin()
            .args(["--config", p(&cfg), "--device", "cpu", "generate"])
            .args(["--latent", p(&z), "--space", "z", "--truncation", "0.7"])
            .args(["-o", p(&out)])
            .env_remove("CLIP2GAN_MODELS_DIR")
            .env("PATH", no_python.path())
            .output()
            .unwrap();
        check_ok(&o);
        check_images(&out, &exp["img_trunc"]);
    }
    // The PATH really has no Python: nothing can be found on it.
    let found = std::process::Command::new("python3")
        .env("PATH", no_python.path())
        .output();
    assert!(found.is_err(), "python3 found on the test's PATH");
}

#[test]
fn seeds_grid_and_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let grid = tmp.path().join("grid.png");
    let o = clip2gan(&[
        "generate",
        "--seed",
        "3",
        "-n",
        "4",
        "--grid",
        "--size",
        "16",
        "-o",
        p(&grid),
    ]);
    check_ok(&o);
    assert_eq!(
        image::open(&grid).unwrap().to_rgb8().dimensions(),
        (32, 32),
        "2x2 grid of 16 px"
    );

    let out = tmp.path().join("x.png");
    let o = clip2gan(&["generate", "--size", "64", "-o", p(&out)]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("size 64 is not supported: use 32"), "{e}");
    assert!(!out.exists());
}

/// `generate` with the configuration file `cfg` (its paths alone name the
/// models), on the CPU.
fn generate_with(cfg: &Path, out: &Path) -> Output {
    common::bin()
        .args([
            "--config",
            p(cfg),
            "--device",
            "cpu",
            "generate",
            "-o",
            p(out),
        ])
        .env_remove("CLIP2GAN_MODELS_DIR")
        .output()
        .unwrap()
}

/// A wrong checkpoint path or layout fails with the file named, nothing written.
#[test]
fn bad_checkpoint_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let cfg = tmp.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "models_dir = {:?}\n[generator]\nkind = \"stylegan2\"\ncheckpoint = \"net64.safetensors\"\nchannel_multiplier = 2\n",
            fixture("stylegan2").display().to_string()
        ),
    )
    .unwrap();
    let o = generate_with(&cfg, &out);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("net64.safetensors: channels per block"), "{e}");
    assert!(e.contains("generator.channel_multiplier = 2"), "{e}");

    std::fs::write(
        &cfg,
        "[generator]\nkind = \"stylegan2\"\ncheckpoint = \"/nonexistent/g.pt\"\n",
    )
    .unwrap();
    let o = generate_with(&cfg, &out);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("/nonexistent/g.pt"), "{e}");
    assert!(!out.exists());
}
