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

const CROPS: [(usize, usize); 4] = [(0, 0), (504, 504), (1008, 1008), (200, 760)];

fn images_from_fixture_z(g: &dyn Generator) -> Tensor {
    let z = npy(fixture("mobilestylegan/z.npy"));
    let z = Tensor::from_vec(z.data, (3, 512), &Device::Cpu).unwrap();
    let w = g.broadcast_w(&g.map(&z).unwrap()).unwrap();
    g.synthesize(&w, NoiseMode::Fixed).unwrap()
}

fn check_images(img: &Tensor, label: &str) {
    let crops = npy(fixture("mobilestylegan/crops.npy"));
    let small = npy(fixture("mobilestylegan/image_64.npy"));
    assert_eq!(img.dims(), [3, 3, 1024, 1024]);
    let mut ours = Vec::new();
    for n in 0..3 {
        for (y, x) in CROPS {
            let c = img
                .get(n)
                .unwrap()
                .narrow(1, y, 16)
                .unwrap()
                .narrow(2, x, 16)
                .unwrap();
            ours.extend(c.flatten_all().unwrap().to_vec1::<f32>().unwrap());
        }
    }
    let (max, mean) = diff(&ours, &crops.data);
    eprintln!("{label}: crops max abs diff {max:.2e}, mean {mean:.2e}");
    assert!(
        max <= 1e-2 && mean <= 1e-3,
        "{label}: crops differ: max {max}, mean {mean}"
    );
    let ours = img
        .avg_pool2d(16)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let (max, mean) = diff(&ours, &small.data);
    eprintln!("{label}: 64 px max abs diff {max:.2e}, mean {mean:.2e}");
    assert!(
        max <= 1e-2 && mean <= 1e-3,
        "{label}: downsampled images differ: max {max}, mean {mean}"
    );
}

#[test]
fn mapping_matches_reference() {
    let g = common::mobilestylegan();
    let z = npy(fixture("mobilestylegan/z.npy"));
    let w_ref = npy(fixture("mobilestylegan/w.npy"));
    let w = g
        .map(&Tensor::from_vec(z.data, (3, 512), &Device::Cpu).unwrap())
        .unwrap();
    let (max, _) = diff(
        &w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        &w_ref.data,
    );
    eprintln!("w max abs diff {max:.2e}");
    assert!(max <= 1e-4, "w differs by {max}");
}

#[test]
fn images_match_reference() {
    let g = common::mobilestylegan();
    check_images(&images_from_fixture_z(&g), "fast CPU kernels");
}

/// The portable ops (used on CUDA and other devices) give the same images.
#[test]
fn portable_ops_match_reference() {
    let g = common::mobilestylegan();
    ops::force_portable(true);
    let img = images_from_fixture_z(&g);
    ops::force_portable(false);
    check_images(&img, "portable ops");
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
