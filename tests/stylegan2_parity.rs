//! StyleGAN2 in candle against the PyTorch reference of
//! tests/fixtures/stylegan2/make_fixtures.py (NVIDIA's equations, pinned
//! torch): a 32 px network in rosinality's `.pt` layout and a 64 px ADA-like
//! network (conv clamp, 2 mapping layers, z != w) in NVIDIA's safetensors
//! layout, loaded through the same code as users' checkpoints; and, from
//! make_formats.py, the files as people have them: a legacy (pre-1.6)
//! torch.save, a memo-aliased state dict, NVIDIA's `.pkl` network pickles.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use clip2gan::generator::stylegan2::{Checkpoint, LoadOptions, StyleGan2};
use clip2gan::generator::{Generator, NoiseMode};
use clip2gan::ops;
use common::fixture;

/// Bound on the max abs difference to the reference images and latents.
const TOL: f32 = 1e-4;

fn net_path(name: &str) -> PathBuf {
    fixture(&format!("stylegan2/{name}"))
}

fn load(name: &str) -> StyleGan2 {
    StyleGan2::load(&net_path(name), &LoadOptions::default(), &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"))
}

fn expected(net: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(
        net_path(&format!("{net}_expected.safetensors")),
        &Device::Cpu,
    )
    .unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    common::diff(&a, &b).0
}

fn noises(exp: &HashMap<String, Tensor>) -> Vec<Tensor> {
    (0..)
        .map_while(|i| exp.get(&format!("noise_{i}")).cloned())
        .collect()
}

/// All fixture cases of one network; returns the worst difference.
fn check(g: &StyleGan2, net: &str, label: &str) -> f32 {
    let exp = expected(net);
    let mut worst = 0f32;
    let mut report = |what: &str, d: f32| {
        eprintln!("{net} {label}: {what} max abs diff {d:.2e}");
        assert!(d <= TOL, "{net} {label}: {what} differs by {d}");
        worst = worst.max(d);
    };
    let w = g.map(&exp["z"]).unwrap();
    report("w = mapping(z)", max_diff(&w, &exp["w"]));
    // W input, truncated, broadcast to every layer; constant noise.
    let ws = g.broadcast_w(&g.truncate(&w, 0.7).unwrap()).unwrap();
    let img = g.synthesize(&ws, NoiseMode::Fixed).unwrap();
    report(
        "image (w, psi 0.7, const noise)",
        max_diff(&img, &exp["img_trunc"]),
    );
    // W+ input.
    if let Some(want) = exp.get("img_wplus") {
        let img = g.synthesize(&exp["wplus"], NoiseMode::Fixed).unwrap();
        report("image (W+, const noise)", max_diff(&img, want));
    }
    // W+ with given per-sample noise ("random" noise of the reference).
    let img = g
        .synthesize_with_noise(&exp["wplus"], &noises(&exp))
        .unwrap();
    report("image (W+, given noise)", max_diff(&img, &exp["img_noise"]));
    worst
}

/// (resolution, styles, z size, w size)
fn sizes(g: &StyleGan2) -> (usize, usize, usize, usize) {
    (g.resolution(), g.num_styles(), g.z_dim(), g.w_dim())
}

#[test]
fn rosinality_pt_matches_reference() {
    let g = load("net32.pt");
    assert_eq!(sizes(&g), (32, 8, 32, 32));
    check(&g, "net32", "fast CPU ops");
}

#[test]
fn nvidia_safetensors_matches_reference() {
    let g = load("net64.safetensors");
    assert_eq!(sizes(&g), (64, 10, 24, 32));
    assert_eq!(
        g.arch().conv_clamp,
        Some(1.5),
        "conv_clamp from the metadata"
    );
    assert_eq!(g.arch().mapping_lr, 0.02, "lr multiplier from the metadata");
    check(&g, "net64", "fast CPU ops");
}

/// The tensor-op versions (the path CUDA takes) give the same images.
#[test]
fn portable_ops_match_reference() {
    ops::force_portable(true);
    check(&load("net32.pt"), "net32", "portable ops");
    check(&load("net64.safetensors"), "net64", "portable ops");
    ops::force_portable(false);
}

/// The other two combinations: rosinality names in safetensors, NVIDIA
/// names next to a `latent_avg` (as a converted `.pt` would hold them).
#[test]
fn either_naming_in_safetensors() {
    let tmp = tempfile::tempdir().unwrap();
    let ros = Checkpoint::open(&net_path("net32.pt")).unwrap();
    let p = tmp.path().join("net32_rosinality.safetensors");
    candle_core::safetensors::save(ros.tensors(), &p).unwrap();
    let g = StyleGan2::load(&p, &LoadOptions::default(), &Device::Cpu).unwrap();
    check(&g, "net32", "rosinality names in safetensors");

    // NVIDIA names under a `G_ema.` prefix (a whole-pickle dump), with the
    // clamp given by the configuration instead of metadata.
    let nv = Checkpoint::open(&net_path("net64.safetensors")).unwrap();
    let prefixed: HashMap<String, Tensor> = nv
        .tensors()
        .iter()
        .map(|(k, v)| (format!("G_ema.{k}"), v.clone()))
        .collect();
    let meta = HashMap::from([("mapping_lr_multiplier".to_string(), "0.02".to_string())]);
    let ck = Checkpoint::from_tensors("prefixed", prefixed, meta);
    let opts = LoadOptions {
        conv_clamp: Some(1.5),
        ..Default::default()
    };
    let g = StyleGan2::from_checkpoint(ck, "t", &opts, &Device::Cpu).unwrap();
    check(&g, "net64", "prefixed names, clamp from config");
}

/// Batch composition does not change an image.
#[test]
fn batch_matches_single() {
    let g = load("net64.safetensors");
    let exp = expected("net64");
    let wplus = &exp["wplus"];
    let batch = g.synthesize(wplus, NoiseMode::Fixed).unwrap();
    let single = g
        .synthesize(&wplus.narrow(0, 1, 1).unwrap(), NoiseMode::Fixed)
        .unwrap();
    let d = max_diff(&batch.narrow(0, 1, 1).unwrap(), &single);
    assert!(d <= 1e-5, "batched and single differ by {d}");
}

/// Random noise is seeded: same seed, same image; another seed, other details.
#[test]
fn random_noise_is_seeded() {
    let g = load("net32.pt");
    let exp = expected("net32");
    let render = |mode| g.synthesize(&exp["wplus"], mode).unwrap();
    let a = render(NoiseMode::Random(1));
    assert_eq!(max_diff(&a, &render(NoiseMode::Random(1))), 0.0);
    assert!(max_diff(&a, &render(NoiseMode::Random(2))) > 1e-3);
    assert!(max_diff(&a, &render(NoiseMode::Fixed)) > 1e-3);
}

/// A checkpoint without w_avg gets the mean of mapped z, close to the stored one.
#[test]
fn missing_w_avg_is_estimated() {
    let ros = Checkpoint::open(&net_path("net32.pt")).unwrap();
    let stored = ros.tensors()["latent_avg"].clone();
    let mut t = ros.tensors().clone();
    t.remove("latent_avg");
    let g = StyleGan2::from_checkpoint(
        Checkpoint::from_tensors("no-avg", t, HashMap::new()),
        "t",
        &LoadOptions::default(),
        &Device::Cpu,
    )
    .unwrap();
    let scale: f32 = stored.abs().unwrap().max(0).unwrap().to_scalar().unwrap();
    let d = max_diff(g.w_avg(), &stored);
    assert!(
        d < 0.1 * scale,
        "estimated w_avg off by {d} (scale {scale})"
    );
}

#[test]
fn bad_checkpoints_fail_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |p: &std::path::Path, opts: &LoadOptions| {
        StyleGan2::load(p, opts, &Device::Cpu)
            .err()
            .expect("should fail")
            .to_string()
    };
    let none = LoadOptions::default();

    // Another model's safetensors.
    let p = tmp.path().join("other.safetensors");
    let t = HashMap::from([(
        "encoder.weight".to_string(),
        Tensor::zeros((2, 2), candle_core::DType::F32, &Device::Cpu).unwrap(),
    )]);
    candle_core::safetensors::save(&t, &p).unwrap();
    let e = err(&p, &none);
    assert!(e.contains("no known StyleGAN2 generator layout"), "{e}");
    assert!(e.contains("found 1 tensor(s): encoder.weight"), "{e}");

    // A damaged .pt.
    let p = tmp.path().join("truncated.pt");
    let bytes = std::fs::read(net_path("net32.pt")).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    let e = err(&p, &none);
    assert!(
        e.contains("truncated.pt: cannot read the PyTorch checkpoint"),
        "{e}"
    );

    // Damaged pickles, in either container, fail the way a damaged zip does.
    for (name, bytes) in [
        ("network-snapshot.pkl", &b"\x80\x04junk"[..]),
        ("old.pt", b"\x80\x02legacy"),
    ] {
        let p = tmp.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let e = err(&p, &none);
        assert!(
            e.contains(&format!(
                "{name}: cannot read the PyTorch checkpoint: pickle byte"
            )),
            "{e}"
        );
    }
    let p = tmp.path().join("text.pt");
    std::fs::write(&p, b"hello").unwrap();
    let e = err(&p, &none);
    assert!(e.contains("neither a zip archive"), "{e}");

    // Mismatched expectations from the configuration.
    let multiplier = LoadOptions {
        channel_multiplier: Some(2),
        ..Default::default()
    };
    let resolution = LoadOptions {
        resolution: Some(1024),
        ..Default::default()
    };
    for (file, opts, want) in [
        ("net32.pt", multiplier, "channels per block (4 px up) are [32, 32, 16, 16] (no standard channel multiplier), but generator.channel_multiplier = 2 means [512, 512, 512, 512]"),
        ("net64.safetensors", resolution, "a 64 px generator, but generator.resolution = 1024"),
    ] {
        let e = err(&net_path(file), &opts);
        assert!(e.contains(want), "{e}");
    }

    // A missing tensor is named.
    let mut t = Checkpoint::open(&net_path("net64.safetensors"))
        .unwrap()
        .tensors()
        .clone();
    t.remove("synthesis.b16.conv1.affine.bias");
    let p = tmp.path().join("incomplete.safetensors");
    candle_core::safetensors::save(&t, &p).unwrap();
    let e = err(&p, &none);
    assert!(
        e.contains("incomplete.safetensors: tensor `synthesis.b16.conv1.affine.bias` is missing"),
        "{e}"
    );

    let e = err(&tmp.path().join("absent.pt"), &none);
    assert!(
        e.contains("absent.pt") && e.contains("generator.checkpoint"),
        "{e}"
    );
}

/// PyTorch < 1.6's serialisation (rosinality's published checkpoints):
/// read natively, strided and offset tensors included, `g_ema` picked over `g`.
#[test]
fn legacy_pt_matches_reference() {
    let g = load("net16_legacy.pt");
    assert_eq!(sizes(&g), (16, 6, 16, 16));
    let worst = check(&g, "net16", "legacy torch.save");
    assert!(worst > 0.0, "a real comparison");
}

/// `{"alias": sd, "g_ema": sd}`: the second key is a memo reference to the
/// first dict; it loads like the dict itself.
#[test]
fn memo_aliased_pt_loads() {
    let alias = Checkpoint::open(&net_path("net16_alias.pt")).unwrap();
    let legacy = Checkpoint::open(&net_path("net16_legacy.pt")).unwrap();
    let mut names: Vec<&String> = alias.tensors().keys().collect();
    names.sort();
    let mut want: Vec<&String> = legacy.tensors().keys().collect();
    want.sort();
    assert_eq!(names, want, "the same generator tensors (and latent_avg)");
    assert!(names.len() > 30, "{} tensors", names.len());
    check(&load("net16_alias.pt"), "net16", "memo-aliased state dict");
}

/// An NVIDIA training snapshot (G, D, G_ema, augment_pipe): G_ema's
/// records walked to their parameters and buffers, conv_clamp and the
/// mapping's learning-rate multiplier read from the modules' attributes.
#[test]
fn nvidia_pkl_matches_reference() {
    let ck = Checkpoint::open(&net_path("net16_ada.pkl")).unwrap();
    assert_eq!(ck.metadata()["conv_clamp"], "1");
    assert_eq!(ck.metadata()["mapping_lr_multiplier"], "0.05");
    assert!(ck.tensors().contains_key("mapping.w_avg"));
    assert!(ck.tensors().contains_key("synthesis.b16.conv0.noise_const"));
    let g = load("net16_ada.pkl");
    assert_eq!(sizes(&g), (16, 6, 12, 16));
    assert_eq!(g.arch().conv_clamp, Some(1.0), "conv_clamp from the record");
    assert_eq!(g.arch().mapping_lr, 0.05, "lr multiplier from mapping.fc0");
    check(&g, "net16_ada", "NVIDIA pickle");
}

#[test]
fn stylegan3_pkl_is_refused_clearly() {
    let e = StyleGan2::load(&net_path("sg3.pkl"), &LoadOptions::default(), &Device::Cpu)
        .err()
        .expect("StyleGAN3 must be refused")
        .to_string();
    assert!(
        e.contains("sg3.pkl: a StyleGAN3 (alias-free) generator"),
        "{e}"
    );
    assert!(e.contains("not supported yet"), "{e}");
}
