//! Reading a CLIP checkpoint's `config.json` (transformers layout) into
//! candle's configuration, with transformers' defaults for omitted keys
//! (`save_pretrained` leaves out values equal to the defaults).

use std::path::Path;

use candle_transformers::models::clip::{text_model, vision_model, ClipConfig};
use serde::Deserialize;

use crate::error::{Error, Result};

#[derive(Debug, Clone, Deserialize)]
struct HfClipConfig {
    #[serde(default)]
    text_config: HfText,
    #[serde(default)]
    vision_config: HfVision,
    #[serde(default = "d512")]
    projection_dim: usize,
    #[serde(default = "logit_scale")]
    logit_scale_init_value: f32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct HfText {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    max_position_embeddings: usize,
    hidden_act: String,
    layer_norm_eps: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
struct HfVision {
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_channels: usize,
    image_size: usize,
    patch_size: usize,
    hidden_act: String,
    layer_norm_eps: f64,
}

fn d512() -> usize {
    512
}
fn logit_scale() -> f32 {
    2.6592
}

impl Default for HfText {
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

impl Default for HfVision {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: "quick_gelu".into(),
            layer_norm_eps: 1e-5,
        }
    }
}

/// A parsed checkpoint configuration.
#[derive(Debug, Clone)]
pub struct ClipSpec {
    pub candle: ClipConfig,
    /// Dimension of the joint embedding space.
    pub embed_dim: usize,
    /// Longest token sequence the text encoder accepts.
    pub context_length: usize,
    pub vocab_size: usize,
    pub image_size: usize,
}

pub fn read(path: &Path) -> Result<ClipSpec> {
    let text = std::fs::read_to_string(path).map_err(|err| Error::Read {
        path: path.to_path_buf(),
        err,
    })?;
    parse(&text, &path.display().to_string())
}

/// A tiny CLIP of the same architecture (transformers `config.json`): the
/// real vocabulary and context length, widths of 32, 32 px images in 8 px
/// patches. With [`super::save_random_checkpoint`] it makes a checkpoint
/// that loads in milliseconds, for tests and CPU experiments.
pub const TINY_CONFIG_JSON: &str = r#"{
  "projection_dim": 32,
  "text_config": {"hidden_size": 32, "intermediate_size": 64,
                  "num_hidden_layers": 1, "num_attention_heads": 4},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64,
                    "num_hidden_layers": 2, "num_attention_heads": 4,
                    "image_size": 32, "patch_size": 8}
}"#;

/// ViT-B/32 as a `config.json` (every value is transformers' default).
pub const VIT_B32_CONFIG_JSON: &str = "{}";

/// OpenAI's ViT-B/32 (transformers' defaults), for benchmarks and tests.
pub fn vit_base_patch32() -> ClipSpec {
    parse("{}", "built-in ViT-B/32").expect("defaults are valid")
}

pub fn parse(text: &str, file: &str) -> Result<ClipSpec> {
    let bad = |detail: String| Error::BadWeights {
        file: file.to_string(),
        detail,
    };
    let c: HfClipConfig =
        serde_json::from_str(text).map_err(|e| bad(format!("not a CLIP config.json: {e}")))?;
    // candle's CLIP hard-codes these; refuse checkpoints that differ rather
    // than compute something else silently.
    for (what, act, eps) in [
        (
            "text",
            &c.text_config.hidden_act,
            c.text_config.layer_norm_eps,
        ),
        (
            "vision",
            &c.vision_config.hidden_act,
            c.vision_config.layer_norm_eps,
        ),
    ] {
        if act != "quick_gelu" {
            return Err(bad(format!(
                "{what} hidden_act {act:?} is not supported (only quick_gelu)"
            )));
        }
        if (eps - 1e-5).abs() > 1e-12 {
            return Err(bad(format!(
                "{what} layer_norm_eps {eps} is not supported (only 1e-5)"
            )));
        }
    }
    let (t, v) = (&c.text_config, &c.vision_config);
    if t.hidden_size % t.num_attention_heads != 0 || v.hidden_size % v.num_attention_heads != 0 {
        return Err(bad(
            "hidden_size is not a multiple of num_attention_heads".into()
        ));
    }
    if v.image_size % v.patch_size != 0 {
        return Err(bad("image_size is not a multiple of patch_size".into()));
    }
    let text_config = text_model::ClipTextConfig {
        vocab_size: t.vocab_size,
        embed_dim: t.hidden_size,
        activation: text_model::Activation::QuickGelu,
        intermediate_size: t.intermediate_size,
        max_position_embeddings: t.max_position_embeddings,
        pad_with: None,
        num_hidden_layers: t.num_hidden_layers,
        num_attention_heads: t.num_attention_heads,
        projection_dim: c.projection_dim,
    };
    let vision_config = vision_model::ClipVisionConfig {
        embed_dim: v.hidden_size,
        activation: text_model::Activation::QuickGelu,
        intermediate_size: v.intermediate_size,
        num_hidden_layers: v.num_hidden_layers,
        num_attention_heads: v.num_attention_heads,
        projection_dim: c.projection_dim,
        num_channels: v.num_channels,
        image_size: v.image_size,
        patch_size: v.patch_size,
    };
    Ok(ClipSpec {
        candle: ClipConfig {
            text_config,
            vision_config,
            logit_scale_init_value: c.logit_scale_init_value,
            image_size: v.image_size,
        },
        embed_dim: c.projection_dim,
        context_length: t
            .max_position_embeddings
            .min(super::tokenizer::CONTEXT_LENGTH),
        vocab_size: t.vocab_size,
        image_size: v.image_size,
    })
}

/// `preprocessor_config.json`, when the checkpoint has one.
#[derive(Debug, Clone, Deserialize)]
pub struct HfPreprocessor {
    pub image_mean: Option<[f32; 3]>,
    pub image_std: Option<[f32; 3]>,
    pub size: Option<serde_json::Value>,
    pub crop_size: Option<serde_json::Value>,
}

/// Mean/std and sizes from the preprocessor config over CLIP's defaults.
pub fn preprocessor(
    path: Option<&Path>,
    image_size: usize,
) -> Result<super::preprocess::Preprocessor> {
    let mut p = super::preprocess::Preprocessor {
        resize: image_size,
        crop: image_size,
        ..Default::default()
    };
    let Some(path) = path else { return Ok(p) };
    let text = std::fs::read_to_string(path).map_err(|err| Error::Read {
        path: path.to_path_buf(),
        err,
    })?;
    let c: HfPreprocessor = serde_json::from_str(&text).map_err(|e| Error::BadWeights {
        file: path.display().to_string(),
        detail: format!("not a preprocessor config: {e}"),
    })?;
    if let Some(m) = c.image_mean {
        p.mean = m;
    }
    if let Some(s) = c.image_std {
        p.std = s;
    }
    // `size` is {"shortest_edge": n} or a plain number; `crop_size` is
    // {"height": n, "width": n} or a plain number.
    let num = |v: &serde_json::Value, keys: &[&str]| -> Option<usize> {
        v.as_u64()
            .or_else(|| keys.iter().find_map(|k| v.get(*k).and_then(|x| x.as_u64())))
            .map(|n| n as usize)
    };
    if let Some(n) = c
        .size
        .as_ref()
        .and_then(|v| num(v, &["shortest_edge", "height"]))
    {
        p.resize = n;
    }
    if let Some(n) = c
        .crop_size
        .as_ref()
        .and_then(|v| num(v, &["height", "width"]))
    {
        p.crop = n;
    }
    if p.crop != image_size || p.resize < p.crop {
        return Err(Error::BadWeights {
            file: path.display().to_string(),
            detail: format!(
                "crop {} / resize {} do not fit the model's image size {image_size}",
                p.crop, p.resize
            ),
        });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_common_openai_shapes() {
        let b32 = vit_base_patch32();
        assert_eq!(
            (b32.embed_dim, b32.context_length, b32.image_size),
            (512, 77, 224)
        );
        assert_eq!(b32.candle.vision_config.patch_size, 32);
        // ViT-B/16 differs only in the patch size.
        let b16 = parse(r#"{"vision_config": {"patch_size": 16}}"#, "b16").unwrap();
        assert_eq!(b16.candle.vision_config.patch_size, 16);
        // ViT-L/14 as its config.json spells it.
        let l14 = parse(
            r#"{"projection_dim": 768,
                "text_config": {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12},
                "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                                  "num_hidden_layers": 24, "patch_size": 14}}"#,
            "l14",
        )
        .unwrap();
        assert_eq!(l14.embed_dim, 768);
        assert_eq!(l14.candle.text_config.embed_dim, 768);
        assert_eq!(l14.candle.vision_config.num_hidden_layers, 24);
        let tiny = parse(TINY_CONFIG_JSON, "tiny").unwrap();
        assert_eq!(
            (tiny.embed_dim, tiny.vocab_size, tiny.image_size),
            (32, 49408, 32)
        );
        let bad = parse(r#"{"text_config": {"hidden_act": "gelu"}}"#, "x").unwrap_err();
        assert!(bad.to_string().contains("quick_gelu"));
    }
}
