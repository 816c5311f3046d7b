//! Contrastive training of a CLIP from random weights, as CLIP itself was
//! trained: a batch of (image, caption) pairs, both towers, the symmetric
//! cross-entropy of their scaled cosine similarities, a learned temperature.
//! It makes the toy CLIP ([`crate::adherence::toy`]): a model small enough
//! to train on this machine whose text does mean something about its
//! images, with a real modality gap (Liang et al. 2022: random encoders
//! map everything into narrow cones, and training at CLIP's temperature
//! keeps the text and image cones apart).
//!
//! Both towers are the differentiable copies ([`super::vision`],
//! [`super::text`]; candle's own model stops gradients at its fused layer
//! norm) over a `VarMap` in the transformers layout, so the result loads
//! like any checkpoint (`[clip] model = DIR`), the fast CPU path included. Captions that are the same string in a batch are
//! each other's positives (so "a photo of a face", said of many faces, is
//! not pushed away from its own images).

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{Optimizer, VarBuilder, VarMap};
use rand::seq::SliceRandom;
use rand::Rng;

use super::config::ClipSpec;
use super::text::TextTower;
use super::vision::VisionTower;
use super::{l2_normalize, padded_ids, Tokenizer, MUST_EXIST};
use crate::error::{Error, Result};

/// How the towers are trained.
#[derive(Debug, Clone)]
pub struct ContrastiveConfig {
    pub steps: usize,
    pub batch: usize,
    /// Peak learning rate (AdamW), reached after `warmup` steps, then a
    /// cosine decay to zero.
    pub lr: f64,
    pub warmup: usize,
    pub weight_decay: f64,
    pub seed: u64,
}

/// CLIP's initial temperature, `ln(1 / 0.07)`, and its cap, `ln(100)`.
const LOGIT_SCALE_INIT: f64 = 2.659_260_036_932_778_4;
const LOGIT_SCALE_MAX: f64 = 4.605_170_185_988_091;

/// Learning rate at `step`: linear warm-up, then cosine to zero.
fn lr_at(c: &ContrastiveConfig, step: usize) -> f64 {
    if step < c.warmup {
        return c.lr * (step + 1) as f64 / c.warmup as f64;
    }
    let t = (step - c.warmup) as f64 / (c.steps - c.warmup).max(1) as f64;
    c.lr * 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos())
}

/// The two towers being trained.
pub struct Towers {
    pub vision: VisionTower,
    pub text: TextTower,
}

/// A fresh model of `spec` with seeded weights, in a `VarMap` whose names
/// are the checkpoint's, and its temperature (a variable `logit_scale`).
pub fn init(spec: &ClipSpec, seed: u64) -> Result<(VarMap, Towers, Var)> {
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let hidden = spec.candle.vision_config.embed_dim;
    varmap.get(
        hidden,
        MUST_EXIST[0],
        candle_nn::Init::Const(0.0),
        DType::F32,
        &dev,
    )?;
    varmap.get(
        (),
        "logit_scale",
        candle_nn::Init::Const(LOGIT_SCALE_INIT),
        DType::F32,
        &dev,
    )?;
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let model = Towers {
        vision: VisionTower::load(&vb, &spec.candle.vision_config)?,
        text: TextTower::load(&vb, &spec.candle.text_config)?,
    };
    let layers = spec
        .candle
        .text_config
        .num_hidden_layers
        .max(spec.candle.vision_config.num_hidden_layers);
    let mut scale = None;
    {
        let vars = varmap.data().lock().expect("not poisoned");
        for (name, var) in vars.iter() {
            let dims = var.dims().to_vec();
            let normal = |std: f64| -> Result<Tensor> {
                Ok((crate::rng::normal_tensor(seed, name, &dims, &dev)? * std)?)
            };
            // Roughly transformers' CLIP initialisation: small embeddings,
            // 1/sqrt(fan_in) matrices, the residual branches' outputs scaled
            // down with depth, zero biases, unit norms.
            let value = if name == "logit_scale" {
                scale = Some(var.clone());
                continue;
            } else if name.contains("layer_norm")
                || name.contains("layrnorm")
                || name.contains("layernorm")
            {
                continue;
            } else if name == MUST_EXIST[0] {
                normal(1.0 / (hidden as f64).sqrt())?
            } else if name.contains("embedding") && dims.len() == 2 {
                normal(0.02)?
            } else if dims.len() >= 2 {
                let fan_in: usize = dims[1..].iter().product();
                let depth = if name.contains("out_proj") || name.contains("fc2") {
                    (2.0 * layers as f64).sqrt()
                } else {
                    1.0
                };
                normal(1.0 / (fan_in as f64).sqrt() / depth)?
            } else {
                Tensor::zeros(dims.as_slice(), DType::F32, &dev)?
            };
            var.set(&value)?;
        }
    }
    let scale = scale.expect("logit_scale was created above");
    Ok((varmap, model, scale))
}

/// Train on `pixels` (`[n, 3, S, S]`, already CLIP-normalised) with
/// captions from `caption(i, step)` (a fresh one each time a sample is
/// drawn, so the text side sees the grammar's variety). Each sample is
/// flipped left-right at random (none of the toy's attributes cares).
/// `progress(step, loss)` is called after every step. Returns the weights
/// and the loss of each step.
pub fn train(
    spec: &ClipSpec,
    pixels: &Tensor,
    caption: &mut dyn FnMut(usize, usize) -> String,
    c: &ContrastiveConfig,
    progress: &mut dyn FnMut(usize, f32),
) -> Result<(VarMap, Vec<f32>)> {
    let n = pixels.dim(0)?;
    if n < c.batch || c.batch < 2 || c.steps == 0 {
        return Err(Error::invalid(format!(
            "contrastive training needs steps >= 1 and 2 <= batch <= samples ({} of {n})",
            c.batch
        )));
    }
    let dev = Device::Cpu;
    let pixels = pixels.to_device(&dev)?.to_dtype(DType::F32)?;
    let (varmap, model, scale) = init(spec, c.seed)?;
    let tokenizer = Tokenizer::new(spec.context_length);
    let mut opt = candle_nn::AdamW::new(
        varmap.all_vars(),
        candle_nn::ParamsAdamW {
            lr: c.lr,
            weight_decay: c.weight_decay,
            ..Default::default()
        },
    )?;
    let side = pixels.dim(3)?;
    let mirror = Tensor::from_vec((0..side as u32).rev().collect::<Vec<_>>(), side, &dev)?;
    let mut rng = crate::rng::stream(c.seed, "contrastive-batches");
    let mut order: Vec<usize> = Vec::new();
    let mut losses = Vec::with_capacity(c.steps);
    for step in 0..c.steps {
        // Epochs of a seeded shuffle.
        if order.len() < c.batch {
            let mut epoch: Vec<usize> = (0..n).collect();
            epoch.shuffle(&mut rng);
            order.extend(epoch);
        }
        let picked: Vec<usize> = order.drain(..c.batch).collect();
        let idx = Tensor::from_vec(
            picked.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            c.batch,
            &dev,
        )?;
        let x = pixels.index_select(&idx, 0)?;
        let flip: Vec<u8> = (0..c.batch)
            .map(|_| u8::from(rng.random_bool(0.5)))
            .collect();
        let flip = Tensor::from_vec(flip, (c.batch, 1, 1, 1), &dev)?.broadcast_as(x.shape())?;
        let x = flip.where_cond(&x.index_select(&mirror, 3)?, &x)?;
        let texts: Vec<String> = picked.iter().map(|&i| caption(i, step)).collect();
        let tokens: Vec<_> = texts.iter().map(|t| tokenizer.encode(t)).collect();
        let ids = padded_ids(&tokens, spec, &dev)?;
        let img = l2_normalize(&model.vision.forward(&x)?)?;
        let txt = l2_normalize(&model.text.forward(&ids)?)?;
        let logits = txt
            .matmul(&img.t()?)?
            .broadcast_mul(&scale.as_tensor().exp()?)?;
        let targets = same_caption_targets(&texts, &dev)?;
        let loss = ((soft_cross_entropy(&logits, &targets)?
            + soft_cross_entropy(&logits.t()?, &targets)?)?
            * 0.5)?;
        let value = loss.to_scalar::<f32>()?;
        if !value.is_finite() {
            return Err(Error::Training(format!(
                "the contrastive loss is {value} at step {step}; lower the learning rate"
            )));
        }
        opt.set_learning_rate(lr_at(c, step));
        opt.backward_step(&loss)?;
        let s = scale.as_tensor().to_scalar::<f32>()? as f64;
        if s > LOGIT_SCALE_MAX {
            scale.set(&Tensor::new(LOGIT_SCALE_MAX as f32, &dev)?)?;
        }
        losses.push(value);
        progress(step, value);
    }
    Ok((varmap, losses))
}

/// Row-normalised `[n, n]`: pair `(i, j)` is a positive when caption `i` and
/// caption `j` are the same string (the diagonal always is).
fn same_caption_targets(texts: &[String], dev: &Device) -> Result<Tensor> {
    let n = texts.len();
    let mut t = vec![0f32; n * n];
    for i in 0..n {
        let same: Vec<usize> = (0..n).filter(|&j| texts[j] == texts[i]).collect();
        for &j in &same {
            t[i * n + j] = 1.0 / same.len() as f32;
        }
    }
    Ok(Tensor::from_vec(t, (n, n), dev)?)
}

/// Mean over rows of `-sum_j target_ij log softmax(logits)_ij`.
fn soft_cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    Ok((targets * logp)?.sum(D::Minus1)?.mean_all()?.neg()?)
}

/// Write `varmap` as a checkpoint directory: `config.json` (as given),
/// `model.safetensors` and a `preprocessor_config.json` for `image_size`.
pub fn save(
    dir: &std::path::Path,
    config_json: &str,
    varmap: &VarMap,
    image_size: usize,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|err| Error::Write {
        path: dir.to_path_buf(),
        err,
    })?;
    crate::fsutil::write_atomic(&dir.join("config.json"), config_json.as_bytes())?;
    let pre = serde_json::json!({
        "crop_size": image_size,
        "size": {"shortest_edge": image_size},
        "do_center_crop": true,
        "do_normalize": true,
        "do_resize": true,
        "image_mean": super::preprocess::Preprocessor::default().mean,
        "image_std": super::preprocess::Preprocessor::default().std,
        "resample": 3,
    });
    crate::fsutil::write_atomic(
        &dir.join("preprocessor_config.json"),
        pre.to_string().as_bytes(),
    )?;
    let tmp = dir.join("model.safetensors.part");
    varmap.save(&tmp)?;
    std::fs::rename(&tmp, dir.join("model.safetensors")).map_err(|err| Error::Write {
        path: dir.join("model.safetensors"),
        err,
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let c = ContrastiveConfig {
            steps: 100,
            batch: 4,
            lr: 1e-3,
            warmup: 10,
            weight_decay: 0.0,
            seed: 0,
        };
        assert!((lr_at(&c, 9) - 1e-3).abs() < 1e-12);
        assert!(lr_at(&c, 0) < lr_at(&c, 5));
        assert!(lr_at(&c, 50) < 1e-3 && lr_at(&c, 50) > 0.0);
        assert!(lr_at(&c, 99) < 1e-5);
    }

    /// The trained towers compute what the loader's model does with the
    /// saved weights (the fast CPU path and candle's), so training trains
    /// the network inference runs.
    #[test]
    fn towers_match_the_loaded_checkpoint() -> Result<()> {
        let spec = super::super::config::parse(super::super::config::TINY_CONFIG_JSON, "tiny")?;
        let (varmap, towers, _) = init(&spec, 3)?;
        let dir = tempfile::tempdir().unwrap();
        save(
            dir.path(),
            super::super::config::TINY_CONFIG_JSON,
            &varmap,
            spec.image_size,
        )?;
        let clip = super::super::Clip::from_dir(dir.path(), &Device::Cpu)?;
        let pixels = crate::rng::normal_tensor(1, "px", &[3, 3, 32, 32], &Device::Cpu)?;
        let texts = ["a dark photo of a face", "a pale face", ""];
        let tokens: Vec<_> = texts.iter().map(|t| clip.tokenizer().encode(t)).collect();
        let ids = padded_ids(&tokens, &spec, &Device::Cpu)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()?)
        };
        let ours = towers.text.forward(&ids)?;
        assert!(diff(&ours, &clip.text_features(&tokens)?)? < 1e-4);
        let ours = towers.vision.forward(&pixels)?;
        assert!(diff(&ours, &clip.image_features(&pixels)?)? < 1e-4);
        let _portable = crate::ops::Portable::on();
        assert!(diff(&towers.text.forward(&ids)?, &clip.text_features(&tokens)?)? < 1e-4);
        Ok(())
    }

    #[test]
    fn same_captions_share_the_target() {
        let t: Vec<String> = ["a", "b", "a"].iter().map(|s| s.to_string()).collect();
        let m = same_caption_targets(&t, &Device::Cpu)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        assert_eq!(m[0], vec![0.5, 0.0, 0.5]);
        assert_eq!(m[1], vec![0.0, 1.0, 0.0]);
    }
}
