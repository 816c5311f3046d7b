//! MobileStyleGAN in candle against the OpenVINO reference runtime.
//!
//! Fixtures come from tests/fixtures/mobilestylegan/make_fixtures.py
//! (pinned openvino + numpy, f32 inference): z for three seeds, the mapped w,
//! four exact 16x16 crops of each 1024 px image and a 16x16-area-averaged
//! 64x64 copy of each image.

mod common;

use candle_core::{Device, Tensor};
use clip2gan::generator::{Generator, NoiseMode};
use clip2gan::ops;
use common::{diff, fixture, npy};

fn check(label: &str) {
    let g = common::mobilestylegan();
    let r = clip2gan::parity::generator_vs_fixtures(&g, &fixture("mobilestylegan")).unwrap();
    eprintln!("{label}: {r:?}");
    assert!(r.pass, "{label}: outside the tolerances: {r:?}");
}

#[test]
fn mapping_and_images_match_reference() {
    check("fast CPU kernels");
}

/// The portable ops (used on CUDA and other devices) give the same images.
#[test]
fn portable_ops_match_reference() {
    ops::force_portable(true);
    check("portable ops");
    ops::force_portable(false);
}

/// Batch composition must not change an image: sample 2 alone equals sample 2
/// in a batch of 3.
#[test]
fn batch_matches_single() {
    let g = common::mobilestylegan();
    let z = npy(fixture("mobilestylegan/z.npy"));
    let z = Tensor::from_vec(z.data, (3, 512), &Device::Cpu).unwrap();
    let w = g.broadcast_w(&g.map(&z).unwrap()).unwrap();
    let batch = g.synthesize(&w, NoiseMode::Fixed).unwrap();
    let single = g
        .synthesize(&w.narrow(0, 2, 1).unwrap(), NoiseMode::Fixed)
        .unwrap();
    let a = batch
        .get(2)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let b = single.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (max, _) = diff(&a, &b);
    assert!(max <= 1e-5, "batched and single differ by {max}");
}

/// Random noise is seeded: same seed, same image; other seed, other details.
#[test]
fn random_noise_is_seeded() {
    let g = common::mobilestylegan();
    let z = clip2gan::generator::z_for_seeds(5, 1, 512, &Device::Cpu).unwrap();
    let w = g.broadcast_w(&g.map(&z).unwrap()).unwrap();
    let render = |mode| {
        g.synthesize(&w, mode)
            .unwrap()
            .avg_pool2d(4)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    let a = render(NoiseMode::Random(1));
    assert!(
        a == render(NoiseMode::Random(1)),
        "same noise seed, different image"
    );
    let (_, mean_other) = diff(&a, &render(NoiseMode::Random(2)));
    let (_, mean_fixed) = diff(&a, &render(NoiseMode::Fixed));
    assert!(mean_other > 1e-4, "noise seed has no effect");
    // Noise changes details, not the face: the mean difference stays small.
    assert!(
        mean_fixed < 0.1,
        "random noise changed the image too much: {mean_fixed}"
    );
}
