//! CLIP against the reference implementations (fixtures made by
//! tests/fixtures/clip/make_fixtures.py, versions pinned beside it):
//! image preprocessing against PIL + transformers' CLIP processor, and text
//! and image embeddings of a tiny random CLIP against transformers.

mod common;

use candle_core::{Device, Tensor};
use clip2gan::clip::{open_image, Clip, Preprocessor, Tokens};
use common::fixture;
use serde_json::Value;

fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(a) => a.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        _ => panic!("not numeric: {v}"),
    }
}

/// Every committed image, resized and cropped, equals PIL's output byte for
/// byte; normalisation matches the processor's floats.
#[test]
fn preprocessing_matches_reference() {
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("clip/preprocess_meta.json")).unwrap(),
    )
    .unwrap();
    let p = Preprocessor::default();
    let mut checked = 0;
    for (name, m) in meta["images"].as_object().unwrap() {
        let img = open_image(&fixture(&format!("clip/{}", m["file"].as_str().unwrap()))).unwrap();
        let ours = p.resize_and_crop(&img).unwrap();
        let want = image::open(fixture(&format!("clip/preprocessed/{name}.png")))
            .unwrap()
            .to_rgb8();
        assert_eq!(ours.dimensions(), (224, 224));
        let diff = ours
            .as_raw()
            .iter()
            .zip(want.as_raw())
            .map(|(a, b)| (*a as i32 - *b as i32).abs())
            .max()
            .unwrap();
        if name == "gray16_40x30" {
            // PIL clamps 16-bit grey to 0..255 (a white image); we keep the
            // high byte. Documented in preprocess::to_rgb8.
            assert!(diff > 0);
            continue;
        }
        assert_eq!(
            diff, 0,
            "{name}: resized/cropped pixels differ by up to {diff}"
        );
        let norm = p.normalize_rgb8(&ours);
        for (key, (y, x)) in [
            ("pixel_values_0_0", (0, 0)),
            ("pixel_values_111_57", (111, 57)),
        ] {
            for c in 0..3 {
                let want = m[key][c].as_f64().unwrap() as f32;
                let got = norm[c * 224 * 224 + y * 224 + x];
                assert!(
                    (got - want).abs() <= 1e-6,
                    "{name} {key}[{c}]: {got} vs {want}"
                );
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 9);
}

fn tiny() -> (Clip, Value) {
    let clip = Clip::from_dir(&fixture("clip/tiny"), &Device::Cpu).unwrap();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("clip/tiny/expected.json")).unwrap())
            .unwrap();
    (clip, expected)
}

fn max_abs(a: &Tensor, b: &[f32]) -> f32 {
    let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn text_embeddings_match_reference() {
    let (clip, e) = tiny();
    // The fixture's ids are already padded with 0 after the end token (511).
    let tokens: Vec<Tokens> = e["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| Tokens {
            ids: row
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect(),
            truncated: false,
        })
        .collect();
    let raw = clip.text_features(&tokens).unwrap();
    let d = max_abs(&raw, &floats(&e["text_embeds_unnormalized"]));
    eprintln!("text features max abs diff {d:.2e}");
    assert!(d <= 1e-4, "text features differ by {d}");
    let d = max_abs(
        &clip2gan::clip::l2_normalize(&raw).unwrap(),
        &floats(&e["text_embeds"]),
    );
    eprintln!("text embeddings max abs diff {d:.2e}");
    assert!(d <= 1e-4, "text embeddings differ by {d}");
}

#[test]
fn image_embeddings_match_reference() {
    let (clip, e) = tiny();
    let px = floats(&e["pixel_values"]);
    let pixels = Tensor::from_vec(px, (2, 3, 32, 32), &Device::Cpu).unwrap();
    let raw = clip.image_features(&pixels).unwrap();
    let d = max_abs(&raw, &floats(&e["image_embeds_unnormalized"]));
    eprintln!("image features max abs diff {d:.2e}");
    assert!(d <= 1e-4, "image features differ by {d}");
    let d = max_abs(
        &clip.encode_pixels(&pixels).unwrap(),
        &floats(&e["image_embeds"]),
    );
    eprintln!("image embeddings max abs diff {d:.2e}");
    assert!(d <= 1e-4, "image embeddings differ by {d}");
}

/// A checkpoint without `class_embedding` must be refused (candle would
/// silently invent a random one).
#[test]
fn missing_class_embedding_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let src = fixture("clip/tiny");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).unwrap();
    let mut t =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    t.remove("vision_model.embeddings.class_embedding").unwrap();
    candle_core::safetensors::save(&t, tmp.path().join("model.safetensors")).unwrap();
    let err = common::err_text(Clip::from_dir(tmp.path(), &Device::Cpu));
    assert!(err.contains("class_embedding"), "{err}");
    // A missing tensor that candle would notice itself is reported too.
    t.remove("text_projection.weight").unwrap();
    candle_core::safetensors::save(&t, tmp.path().join("model.safetensors")).unwrap();
    assert!(Clip::from_dir(tmp.path(), &Device::Cpu).is_err());
    // No weights at all: says what the directory needs.
    std::fs::remove_file(tmp.path().join("model.safetensors")).unwrap();
    let err = common::err_text(Clip::from_dir(tmp.path(), &Device::Cpu));
    assert!(err.contains("config.json and model.safetensors"), "{err}");
}

/// Offline with an empty cache: a clear error naming what to download.
#[test]
fn hub_offline_without_cache_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let err = common::err_text(clip2gan::clip::hub::resolve(
        "openai/clip-vit-base-patch32",
        "main",
        Some(tmp.path()),
        true,
    ));
    assert!(
        err.contains("offline") && err.contains("model.safetensors"),
        "{err}"
    );
}
