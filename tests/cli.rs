//! The `clip2gan` binary end to end: generation from seeds and latent files,
//! and clear failures (non-zero exit, nothing written) on bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use clip2gan::npy::{self, Array};
use common::{fixture, npy as read_npy};

fn models_dir() -> PathBuf {
    // Fetch (once) and return the models dir the binary should use.
    let _ = common::mobilestylegan();
    std::env::var_os("CLIP2GAN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::repo().join("models"))
}

/// `clip2gan generate ARGS` on the models in `models`.
fn generate(models: &Path, args: &[&str]) -> Output {
    common::bin()
        .arg("generate")
        .args(args)
        .env("CLIP2GAN_MODELS_DIR", models)
        .env("CLIP2GAN_DEVICE", "cpu")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run clip2gan")
}

/// [`generate`], which must succeed.
fn generate_ok(models: &Path, args: &[&str]) {
    let o = generate(models, args);
    assert!(o.status.success(), "{}", stderr(&o));
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn expect_failure(o: &Output, needle: &str) {
    assert!(
        !o.status.success(),
        "expected failure, got success; stderr: {}",
        stderr(o)
    );
    let e = stderr(o);
    assert!(e.contains(needle), "stderr lacks {needle:?}:\n{e}");
}

/// `--latent LATENT --space SPACE`, then `more`.
fn latent_args<'a>(latent: &'a str, space: &'a str, more: &[&'a str]) -> Vec<&'a str> {
    [&["--latent", latent, "--space", space][..], more].concat()
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `--latent z.npy --space z --truncation 1` reproduces the OpenVINO
/// reference images (fixture: 16x16 area averages, here compared as the
/// 64 px PNGs the CLI writes, so within one 8-bit step).
#[test]
fn latent_z_reproduces_reference_images() {
    let models = models_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("ref.png");
    generate_ok(
        &models,
        &latent_args(
            path_str(&fixture("mobilestylegan/z.npy")),
            "z",
            &["--truncation", "1", "--size", "64", "-o", path_str(&out)],
        ),
    );
    let reference = read_npy(fixture("mobilestylegan/image_64.npy"));
    for k in 0..3 {
        let path = clip2gan::image_io::numbered_path(&out, k);
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (64, 64));
        let mut worst = 0f32;
        for (x, y, px) in img.enumerate_pixels() {
            for c in 0..3 {
                let r = reference.data[((k * 3 + c) * 64 + y as usize) * 64 + x as usize];
                let r8 = ((r + 1.0) * 127.5).clamp(0.0, 255.0).round();
                worst = worst.max((px.0[c] as f32 - r8).abs());
            }
        }
        assert!(worst <= 1.0, "image {k} differs by {worst} steps of 255");
    }
}

#[test]
fn seeds_grid_and_saved_latents_roundtrip() {
    let models = models_dir();
    let tmp = tempfile::tempdir().unwrap();
    let grid = tmp.path().join("grid.png");
    let lat = tmp.path().join("lat.npy");
    generate_ok(
        &models,
        &[
            "--seed",
            "7",
            "-n",
            "3",
            "--size",
            "128",
            "--grid",
            "--save-latent",
            path_str(&lat),
            "-o",
            path_str(&grid),
        ],
    );
    assert_eq!(
        image::open(&grid).unwrap().to_rgb8().dimensions(),
        (256, 256),
        "2x2 grid of 128 px"
    );
    let a = npy::read_f32(&lat).unwrap();
    assert_eq!(a.shape, vec![3, 23, 512]);

    // Image 2 of seed 7 is seed 9 alone, and re-rendering its saved W+ gives
    // the same pixels.
    let single = tmp.path().join("single.png");
    generate_ok(
        &models,
        &["--seed", "9", "--size", "128", "-o", path_str(&single)],
    );
    let one = tmp.path().join("one.npy");
    npy::write_f32(
        &one,
        &Array {
            data: a.data[2 * 23 * 512..].to_vec(),
            shape: vec![23, 512],
        },
    )
    .unwrap();
    let again = tmp.path().join("again.png");
    generate_ok(
        &models,
        &latent_args(
            path_str(&one),
            "wplus",
            &["--size", "128", "-o", path_str(&again)],
        ),
    );
    let (x, y) = (
        image::open(&single).unwrap().to_rgb8(),
        image::open(&again).unwrap().to_rgb8(),
    );
    assert_eq!(x.dimensions(), (128, 128));
    assert!(x == y, "saved W+ does not re-render the same image");
    let g = image::open(&grid).unwrap().to_rgb8();
    let third = image::imageops::crop_imm(&g, 0, 128, 128, 128).to_image();
    assert!(third == x, "grid cell 3 should be seed 9");
}

#[test]
fn bad_arguments_fail_clearly() {
    let models = models_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    for (flag, value, want) in [
        ("--truncation", "5", "truncation 5 is out of range"),
        ("--size", "300", "size 300 is not supported"),
        ("-n", "0", "--count 0 is out of range"),
    ] {
        expect_failure(
            &generate(&models, &[flag, value, "-o", path_str(&out)]),
            want,
        );
    }
    expect_failure(
        &generate(&models, &["-o", "/nonexistent-dir/face.png"]),
        "cannot write /nonexistent-dir/face.png",
    );
    assert!(!out.exists(), "nothing may be written on failure");
}

#[test]
fn bad_latent_files_fail_clearly() {
    let models = models_dir();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("x.png");
    let generate = |latent: &str, space: &str| {
        generate(
            &models,
            &latent_args(latent, space, &["-o", path_str(&out)]),
        )
    };
    let mut nan = vec![0.0; 512];
    nan[7] = f32::NAN;
    for (data, shape, space, want) in [
        (vec![0.0; 511], vec![511], "z", "does not fit --space z"),
        (vec![0.0; 512], vec![512], "wplus", "expected [n, 23, 512]"),
        (nan, vec![1, 512], "w", "non-finite value"),
    ] {
        let p = tmp.path().join(format!("lat-{space}-{}.npy", data.len()));
        npy::write_f32(&p, &Array { data, shape }).unwrap();
        expect_failure(&generate(path_str(&p), space), want);
    }
    // float64 data
    let mut bytes = npy::to_bytes(&Array {
        data: vec![0.0; 2],
        shape: vec![2],
    });
    let pos = bytes.windows(3).position(|w| w == b"<f4").unwrap();
    bytes[pos + 2] = b'8';
    let p = tmp.path().join("f64.npy");
    std::fs::write(&p, bytes).unwrap();
    expect_failure(&generate(path_str(&p), "z"), "not little-endian float32");
    expect_failure(
        &generate("/nonexistent.npy", "z"),
        "cannot read /nonexistent.npy",
    );
    assert!(!out.exists(), "nothing may be written on failure");
}

#[test]
fn broken_weights_name_file_and_tensor() {
    let models = models_dir();
    let real = models.join("mobilestylegan-ffhq");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mobilestylegan-ffhq");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        real.join("mapping.safetensors"),
        dir.join("mapping.safetensors"),
    )
    .unwrap();
    let out = tmp.path().join("x.png");

    // A synthesis file without one tensor.
    let mut t = candle_core::safetensors::load(
        real.join("synthesis.safetensors"),
        &candle_core::Device::Cpu,
    )
    .unwrap();
    t.remove("layers.3.conv2.conv.weight_dw").unwrap();
    candle_core::safetensors::save(&t, dir.join("synthesis.safetensors")).unwrap();
    let o = generate(tmp.path(), &["-o", path_str(&out)]);
    expect_failure(
        &o,
        "synthesis.safetensors: tensor `layers.3.conv2.conv.weight_dw` is missing",
    );

    // A truncated file.
    let bytes = std::fs::read(real.join("synthesis.safetensors")).unwrap();
    std::fs::write(dir.join("synthesis.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let o = generate(tmp.path(), &["-o", path_str(&out)]);
    expect_failure(&o, "synthesis.safetensors: cannot read safetensors");
    expect_failure(&o, "run `clip2gan fetch` again");
    assert!(!out.exists());
}

/// Without weights and without a way to download them, the error says which
/// file to place where.
#[test]
fn missing_weights_offline_says_what_to_do() {
    let tmp = tempfile::tempdir().unwrap();
    let o = common::bin()
        .args(["generate", "-o", path_str(&tmp.path().join("x.png"))])
        .env("CLIP2GAN_MODELS_DIR", tmp.path())
        .env("PYTHON", "/nonexistent/python3")
        .output()
        .unwrap();
    expect_failure(&o, "random_face-2021.7.21.1-py3-none-any.whl");
    expect_failure(&o, "place the file at");
}
