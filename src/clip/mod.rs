//! CLIP text and image encoders on candle-transformers' CLIP, with the
//! checks it lacks (every tensor present, supported configuration), an
//! offline tokenizer and reference-exact image preprocessing.
//!
//! Embeddings returned here are L2-normalised, `[n, embed_dim]`.
//!
//! Three implementations of the encoders over the same weights:
//! - on the CPU, inference goes through [`fast::FastClip`], our own
//!   forward pass on the fused kernels of [`crate::ops`] (about twice as
//!   fast as candle's);
//! - pixels that carry a gradient (training) go through
//!   [`vision::VisionTower`], a differentiable copy of the vision encoder;
//! - everything else (other devices, and the CPU under
//!   [`crate::ops::force_portable`]) uses candle-transformers' model.

pub mod config;
pub mod contrastive;
pub mod fast;
pub mod hub;
pub mod preprocess;
pub mod text;
pub mod tokenizer;
pub mod vision;
mod weights;

use std::path::Path;
use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::VarBuilder;
use candle_transformers::models::clip::ClipModel;
use image::DynamicImage;

use crate::error::{Error, Result};
pub use hub::{ClipConfig, ClipFiles};
pub use preprocess::Preprocessor;
pub use tokenizer::{Tokenizer, Tokens};
use weights::Weights;

pub struct Clip {
    /// candle-transformers' model: the portable path. Built at load on
    /// other devices; on the CPU only on first use (tests, `force_portable`),
    /// so that the fast path's copy is the only copy of the weights.
    model: OnceLock<ClipModel>,
    /// The CPU inference path (f32 weights on the CPU only).
    fast: Option<fast::FastClip>,
    tokenizer: Tokenizer,
    pub preprocessor: Preprocessor,
    pub spec: config::ClipSpec,
    device: Device,
    /// The weights, to build the portable model or the differentiable
    /// tower on first use.
    weights: Weights,
    vision_grad: OnceLock<vision::VisionTower>,
}

/// Tensors candle's CLIP would silently invent if absent.
pub(crate) const MUST_EXIST: [&str; 1] = ["vision_model.embeddings.class_embedding"];

impl Clip {
    /// Load from resolved checkpoint files.
    pub fn load(files: &ClipFiles, device: &Device) -> Result<Self> {
        let spec = config::read(&files.config)?;
        let preprocessor = config::preprocessor(files.preprocessor.as_deref(), spec.image_size)?;
        let file = files.weights.display().to_string();
        let bad = |detail: String| Error::BadWeights {
            file: file.clone(),
            detail,
        };
        let vb = weights::open(&files.weights, device, device.is_cpu())
            .map_err(|e| bad(format!("cannot read the weights: {e}")))?;
        for name in MUST_EXIST {
            if !vb.contains_tensor(name) {
                return Err(bad(format!("tensor `{name}` is missing")));
            }
        }
        let model = OnceLock::new();
        let fast = if device.is_cpu() {
            Some(
                fast::FastClip::load(&vb, &spec)
                    .map_err(|e| bad(format!("does not fit config.json: {e}")))?,
            )
        } else {
            let m = ClipModel::new(vb.clone(), &spec.candle)
                .map_err(|e| bad(format!("does not fit config.json: {e}")))?;
            let _ = model.set(m);
            None
        };
        // On the CPU the fast path holds its own copy (`weights`: why the
        // file is not kept open).
        let weights = if fast.is_some() {
            drop(vb);
            Weights::File(files.weights.clone())
        } else {
            Weights::Held(vb)
        };
        Ok(Self {
            model,
            fast,
            tokenizer: Tokenizer::new(spec.context_length),
            preprocessor,
            spec,
            device: device.clone(),
            weights,
            vision_grad: OnceLock::new(),
        })
    }

    /// A model with random weights of the given shape (benchmarks and tests:
    /// speed does not depend on weight values).
    pub fn with_random_weights(spec: config::ClipSpec, device: &Device) -> Result<Self> {
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, device);
        // candle's model first: it draws the random values (the fast path
        // would find the variables absent and create them constant).
        let model = OnceLock::from(ClipModel::new(vb.clone(), &spec.candle)?);
        let fast = if device.is_cpu() {
            Some(fast::FastClip::load(&vb, &spec)?)
        } else {
            None
        };
        Ok(Self {
            model,
            fast,
            tokenizer: Tokenizer::new(spec.context_length),
            preprocessor: config::preprocessor(None, spec.image_size)?,
            spec,
            device: device.clone(),
            weights: Weights::Held(vb),
            vision_grad: OnceLock::new(),
        })
    }

    /// Load from a local directory in transformers layout.
    pub fn from_dir(dir: &Path, device: &Device) -> Result<Self> {
        Self::load(&hub::from_dir(dir)?, device)
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn embed_dim(&self) -> usize {
        self.spec.embed_dim
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// candle-transformers' model, built on first use on the CPU.
    fn model(&self) -> Result<&ClipModel> {
        if let Some(m) = self.model.get() {
            return Ok(m);
        }
        let m = ClipModel::new(self.weights.open(&self.device)?, &self.spec.candle)?;
        Ok(self.model.get_or_init(|| m))
    }

    /// Whether inference on this thread takes the fast CPU path.
    pub fn uses_fast_path(&self) -> bool {
        self.fast().is_some()
    }

    /// The fast CPU path, unless this thread asked for the portable one.
    fn fast(&self) -> Option<&fast::FastClip> {
        self.fast
            .as_ref()
            .filter(|_| !crate::ops::portable_forced())
    }

    /// Projected text features before normalisation, from token ids.
    pub fn text_features(&self, tokens: &[Tokens]) -> Result<Tensor> {
        if tokens.is_empty() {
            return Err(Error::invalid("no texts to encode"));
        }
        if let Some(f) = self.fast() {
            return f.text_features(tokens);
        }
        Ok(self
            .model()?
            .get_text_features(&padded_ids(tokens, &self.spec, &self.device)?)?)
    }

    /// L2-normalised text embeddings and the tokens (with truncation flags).
    ///
    /// Empty text is encoded as the reference does: start and end token only.
    pub fn encode_text(&self, texts: &[&str]) -> Result<(Tensor, Vec<Tokens>)> {
        let tokens: Vec<Tokens> = texts.iter().map(|t| self.tokenizer.encode(t)).collect();
        Ok((l2_normalize(&self.text_features(&tokens)?)?, tokens))
    }

    /// Projected image features before normalisation, from preprocessed pixels.
    /// Differentiable with respect to `pixels` when they carry a gradient.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = pixels.dims4()?;
        let s = self.spec.image_size;
        if c != 3 || h != s || w != s {
            return Err(Error::invalid(format!(
                "CLIP expects [n, 3, {s}, {s}] pixels, got {:?}",
                pixels.dims()
            )));
        }
        if pixels.track_op() {
            return self.vision_tower()?.forward(pixels);
        }
        if let Some(f) = self.fast() {
            return f.image_features(pixels);
        }
        Ok(self.model()?.get_image_features(pixels)?)
    }

    /// The differentiable vision encoder, built on first use (it holds a
    /// second copy of the vision weights when they come from a file).
    pub fn vision_tower(&self) -> Result<&vision::VisionTower> {
        if let Some(t) = self.vision_grad.get() {
            return Ok(t);
        }
        let tower = vision::VisionTower::load(
            &self.weights.open(&self.device)?,
            &self.spec.candle.vision_config,
        )?;
        Ok(self.vision_grad.get_or_init(|| tower))
    }

    /// L2-normalised embeddings of preprocessed pixels `[n, 3, S, S]`.
    pub fn encode_pixels(&self, pixels: &Tensor) -> Result<Tensor> {
        l2_normalize(&self.image_features(pixels)?)
    }

    /// L2-normalised embeddings of user images (reference preprocessing).
    pub fn encode_images(&self, images: &[DynamicImage]) -> Result<Tensor> {
        if images.is_empty() {
            return Err(Error::invalid("no images to encode"));
        }
        self.encode_pixels(&self.preprocessor.pixels(images, &self.device)?)
    }

    /// L2-normalised embeddings of generator output in [-1, 1], through the
    /// differentiable preprocessing path (and the differentiable vision
    /// tower when `images` carry a gradient).
    pub fn encode_generated(&self, images: &Tensor) -> Result<Tensor> {
        self.encode_pixels(&self.preprocessor.from_generator(images)?)
    }
}

/// Write a checkpoint directory (config.json + model.safetensors) with
/// random weights for the transformers-style `config_json`: for tests and
/// CPU experiments where real CLIP weights cannot be had. The files go
/// through the same loader as real checkpoints. The weights are those of
/// [`save_seeded_random_checkpoint`] with seed 0.
pub fn save_random_checkpoint(dir: &Path, config_json: &str) -> Result<()> {
    save_seeded_random_checkpoint(dir, config_json, 0)
}

/// [`save_random_checkpoint`] with weights that depend only on `seed`
/// (candle's initialisers draw from an unseeded generator, and a test that
/// trains on CLIP features must see the same features every run). Each
/// tensor is drawn like candle initialises it: matrices and convolutions
/// `N(0, 2/fan_in)`, biases `U(-1/sqrt(fan_in), 1/sqrt(fan_in))`, embeddings
/// `N(0, 1)`, norms 1 and 0.
pub fn save_seeded_random_checkpoint(dir: &Path, config_json: &str, seed: u64) -> Result<()> {
    let file = dir.join("config.json");
    let spec = config::parse(config_json, &file.display().to_string())?;
    let varmap = candle_nn::VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    ClipModel::new(vb, &spec.candle)?;
    let class = Tensor::zeros(
        spec.candle.vision_config.embed_dim,
        DType::F32,
        &Device::Cpu,
    )?;
    let mut vars = varmap.data().lock().expect("not poisoned");
    vars.insert(
        MUST_EXIST[0].to_string(),
        candle_core::Var::from_tensor(&class)?,
    );
    let shapes: std::collections::HashMap<String, Vec<usize>> = vars
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    for (name, var) in vars.iter() {
        let dims = var.dims();
        let normal = |std: f64| -> Result<Tensor> {
            Ok((crate::rng::normal_tensor(seed, name, dims, &Device::Cpu)? * std)?)
        };
        let is_norm =
            name.contains("layer_norm") || name.contains("layrnorm") || name.contains("layernorm");
        let value = if is_norm {
            continue; // constant initialisation: already deterministic
        } else if dims.len() == 4 {
            normal((2.0 / (dims[1] * dims[2] * dims[3]) as f64).sqrt())?
        } else if name.contains("embedding") {
            normal(1.0)?
        } else if dims.len() == 2 {
            normal((2.0 / dims[1] as f64).sqrt())?
        } else {
            let weight = name.trim_end_matches("bias").to_string() + "weight";
            let fan_in = shapes
                .get(&weight)
                .and_then(|s| s.get(1))
                .copied()
                .unwrap_or(dims[0]);
            let bound = 1.0 / (fan_in as f64).sqrt();
            let mut r = crate::rng::stream(seed, name);
            let v: Vec<f32> = (0..dims[0])
                .map(|_| rand::Rng::random_range(&mut r, -bound..bound) as f32)
                .collect();
            Tensor::from_vec(v, dims[0], &Device::Cpu)?
        };
        var.set(&value)?;
    }
    drop(vars);
    std::fs::create_dir_all(dir).map_err(|err| Error::Write {
        path: dir.to_path_buf(),
        err,
    })?;
    crate::fsutil::write_atomic(&file, config_json.as_bytes())?;
    varmap.save(dir.join("model.safetensors"))?;
    Ok(())
}

/// Token ids, checked against `spec` and padded with 0 to the longest
/// text: `[n, len]` u32.
///
/// Pooling takes the position of the largest id (the end token), so
/// padding must be smaller than it; the causal mask means padding after
/// the end token changes nothing, so batches need not be padded to 77.
pub(crate) fn padded_ids(
    tokens: &[Tokens],
    spec: &config::ClipSpec,
    device: &Device,
) -> Result<Tensor> {
    let len = tokens.iter().map(|t| t.ids.len()).max().unwrap_or(0);
    let mut data = Vec::with_capacity(tokens.len() * len);
    for t in tokens {
        fast::check_ids(
            &t.ids,
            spec.vocab_size,
            spec.candle.text_config.max_position_embeddings,
        )?;
        data.extend(t.ids.iter().copied());
        data.extend(std::iter::repeat_n(0u32, len - t.ids.len()));
    }
    Ok(Tensor::from_vec(data, (tokens.len(), len), device)?)
}

/// Row-wise L2 normalisation.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x
        .sqr()?
        .sum_keepdim(D::Minus1)?
        .sqrt()?
        .clamp(1e-12, f64::MAX)?;
    Ok(x.broadcast_div(&norm)?)
}

/// Open an image file as RGB-convertible pixels, with errors a person can act on.
pub fn open_image(path: &Path) -> Result<DynamicImage> {
    let reader = image::ImageReader::open(path)
        .map_err(|err| Error::Read {
            path: path.to_path_buf(),
            err,
        })?
        .with_guessed_format()
        .map_err(|err| Error::Read {
            path: path.to_path_buf(),
            err,
        })?;
    let mut reader = reader;
    reader.limits(crate::image_io::decode_limits());
    reader.decode().map_err(|e| {
        Error::invalid(format!(
            "{} is not a readable image ({e}); use PNG, JPEG, WebP, GIF or BMP up to 16384 px a side",
            path.display()
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::ops::testing::{max_diff, portable};

    /// The fast CPU path computes what candle's model computes, for both
    /// towers: batches > 1, texts of different lengths (so candle pads and
    /// the fast path does not), zero padding after the end token, two end
    /// tokens (pooled at the first), no end token (pooled at the start
    /// token, the largest id), a full 77-token text. Three layers run both
    /// the full and the pooled-only layer code; widths that are not
    /// multiples of 16 leave ragged column blocks in the threaded matmuls.
    #[test]
    fn fast_path_matches_candle() {
        const CONFIG: &str = r#"{"projection_dim": 40,
          "text_config": {"hidden_size": 48, "intermediate_size": 100, "num_hidden_layers": 3, "num_attention_heads": 6},
          "vision_config": {"hidden_size": 48, "intermediate_size": 100, "num_hidden_layers": 3, "num_attention_heads": 4, "image_size": 48, "patch_size": 12}}"#;
        let dir = tempfile::tempdir().unwrap();
        save_seeded_random_checkpoint(dir.path(), CONFIG, 7).unwrap();
        let clip = Clip::from_dir(dir.path(), &Device::Cpu).unwrap();
        use tokenizer::{END_OF_TEXT as E, START_OF_TEXT as S};
        let ids: Vec<Vec<u32>> = vec![
            vec![S, 320, 321, E],
            vec![S, 400, 401, 402, 403, 404, 405, E, 0, 0, 0],
            vec![S, E],
            vec![S, 500, E, 600, E],
            vec![S, 700, 701, 702],
            std::iter::once(S)
                .chain((0..75).map(|i| 1000 + i))
                .chain(std::iter::once(E))
                .collect(),
        ];
        let tokens: Vec<Tokens> = ids
            .into_iter()
            .map(|ids| Tokens {
                ids,
                truncated: false,
            })
            .collect();
        for batch in [&tokens[..], &tokens[1..2], &tokens[5..]] {
            let fast = clip.text_features(batch).unwrap();
            let slow = portable(|| clip.text_features(batch)).unwrap();
            let d = max_diff(&fast, &slow);
            eprintln!("{} texts: features max abs diff {d:.2e}", batch.len());
            assert!(d <= 1e-4, "text features differ by {d}");
            let d = max_diff(&l2_normalize(&fast).unwrap(), &l2_normalize(&slow).unwrap());
            assert!(d <= 1e-5, "text embeddings differ by {d}");
        }
        let px = crate::rng::normal_tensor(3, "px", &[3, 3, 48, 48], &Device::Cpu).unwrap();
        let fast = clip.image_features(&px).unwrap();
        let slow = portable(|| clip.image_features(&px)).unwrap();
        let d = max_diff(&fast, &slow);
        eprintln!("images: features max abs diff {d:.2e}");
        assert!(d <= 1e-4, "image features differ by {d}");
        // Generator output through the preprocessing and the image tower.
        let img = (crate::rng::normal_tensor(4, "img", &[2, 3, 64, 64], &Device::Cpu).unwrap()
            * 0.4)
            .unwrap();
        let fast = clip.encode_generated(&img).unwrap();
        let slow = portable(|| clip.encode_generated(&img)).unwrap();
        let d = max_diff(&fast, &slow);
        assert!(d <= 1e-5, "generated-image embeddings differ by {d}");
        // Bad ids are refused by both paths alike.
        let bad = [Tokens {
            ids: vec![S, 49408, E],
            truncated: false,
        }];
        let e1 = clip.text_features(&bad).unwrap_err().to_string();
        let e2 = portable(|| clip.text_features(&bad))
            .unwrap_err()
            .to_string();
        assert!(
            e1.contains("outside the vocabulary") && e1 == e2,
            "{e1} / {e2}"
        );
    }

    /// The differentiable tower computes what candle's CLIP and the fast
    /// path compute, and passes gradients back to the pixels.
    #[test]
    fn vision_tower_matches_and_has_gradients() {
        let dir = tempfile::tempdir().unwrap();
        save_random_checkpoint(dir.path(), config::TINY_CONFIG_JSON).unwrap();
        let clip = Clip::from_dir(dir.path(), &Device::Cpu).unwrap();
        let s = clip.spec.image_size;
        let px = Tensor::randn(0f32, 1.0, (2, 3, s, s), &Device::Cpu).unwrap();
        let fast = clip.image_features(&px).unwrap();
        let fused = portable(|| clip.image_features(&px)).unwrap();
        let var = candle_core::Var::from_tensor(&px).unwrap();
        let plain = clip.image_features(var.as_tensor()).unwrap();
        for other in [&fast, &fused] {
            let d = max_diff(other, &plain);
            assert!(d < 1e-4, "towers differ by {d}");
        }
        let grads = plain.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let g = grads
            .get(var.as_tensor())
            .expect("gradient reaches the pixels");
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(norm > 0.0 && norm.is_finite());
    }
}
