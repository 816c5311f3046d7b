//! The CLIP2GAN mapper: from a CLIP embedding to a W+ latent, predicting
//! the residual over the generator's `w_avg` (so an untrained or uncertain
//! mapper lands on the average face, not on noise). Two kinds share one file
//! format and one API:
//!
//! - `mlp`: the network `clip2gan train` learns (hidden layers, an output
//!   layer to every style);
//! - `linear`: the closed-form fit of `train::fit`, one w for all
//!   styles, with the shift clamped to what the fit makes on real faces.
//!
//! Either may carry a text shift (the modality gap's mean, applied to text
//! embeddings by [`Mapper::forward_text`]) and a bank of residuals that
//! [`Mapper::sample`] draws variety from.
//!
//! A mapper file is safetensors with its metadata (`clip2gan.mapper`, JSON):
//! which CLIP and generator it was trained for, its architecture, training
//! settings, step and metrics. Loading checks the metadata against the CLIP
//! and generator in use and says what does not fit. A training checkpoint is
//! a mapper file with more tensors and metadata (see `train::checkpoint`),
//! so it loads as a mapper too.
//!
//! `file`: the file format, reading and saving, and the `[mapper]` section.
//!
//! The layer norm is computed with plain tensor ops: candle-nn's fused
//! LayerNorm has no backward pass and would stop gradients silently.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{Init, LayerNorm, Linear, Module, VarBuilder, VarMap};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

mod file;

pub use file::{read_meta, save, save_with, tensors_of, varmap_of, MapperFileConfig, META_KEY};

const LN_EPS: f32 = 1e-5;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    LeakyRelu,
    Gelu,
    Silu,
}

/// Negative slope of the MLP's leaky ReLU.
pub const LEAKY_SLOPE: f32 = 0.2;

/// How a mapper computes its prediction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MapperKind {
    /// Hidden layers and an output layer to every style (`clip2gan train`).
    #[default]
    Mlp,
    /// One affine map to w, shared by every style (`train --mode fit`).
    Linear,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapperConfig {
    pub kind: MapperKind,
    /// Hidden layers.
    pub depth: usize,
    /// Width of the hidden layers.
    pub width: usize,
    /// LayerNorm after each hidden linear layer.
    pub layer_norm: bool,
    pub activation: Activation,
    /// Residuals of the fit kept for [`Mapper::sample`] (tensor
    /// `residuals`, `[bank, w_dim]`); 0 = none.
    pub bank: usize,
}

impl Default for MapperConfig {
    fn default() -> Self {
        Self {
            kind: MapperKind::Mlp,
            depth: 4,
            width: 1024,
            layer_norm: true,
            activation: Activation::LeakyRelu,
            bank: 0,
        }
    }
}

/// What a mapper was built for, plus its training record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapperMeta {
    /// CLIP checkpoint (hub id or directory) whose embeddings it maps.
    pub clip_model: String,
    pub clip_dim: usize,
    /// `Generator::id()` of the generator whose W+ it predicts.
    pub generator: String,
    pub num_styles: usize,
    pub w_dim: usize,
    pub config: MapperConfig,
    /// Optimiser steps taken.
    #[serde(default)]
    pub step: u64,
    /// Training settings (free-form JSON written by `clip2gan train`).
    #[serde(default)]
    pub training: serde_json::Value,
    /// Latest evaluation metrics.
    #[serde(default)]
    pub metrics: serde_json::Value,
}

/// The CLIP and generator a mapper is about to be used with.
#[derive(Debug, Clone)]
pub struct Compat<'a> {
    pub clip_model: &'a str,
    pub clip_dim: usize,
    pub generator: &'a str,
    pub num_styles: usize,
    pub w_dim: usize,
}

impl MapperMeta {
    /// Hard mismatches are errors (the shapes or the latent space differ); a
    /// different CLIP name with the same dimension is only a warning, since
    /// the same weights can live under another path.
    pub fn check(&self, c: &Compat) -> Result<Vec<String>> {
        let mut errors = Vec::new();
        if self.clip_dim != c.clip_dim {
            errors.push(format!(
                "CLIP dimension {} (mapper) vs {} (loaded CLIP)",
                self.clip_dim, c.clip_dim
            ));
        }
        if self.generator != c.generator {
            errors.push(format!(
                "generator {:?} (mapper) vs {:?} (in use)",
                self.generator, c.generator
            ));
        }
        if self.num_styles != c.num_styles || self.w_dim != c.w_dim {
            errors.push(format!(
                "W+ shape {}x{} (mapper) vs {}x{} (generator)",
                self.num_styles, self.w_dim, c.num_styles, c.w_dim
            ));
        }
        if !errors.is_empty() {
            return Err(Error::invalid(format!(
                "the mapper does not fit: {}. Train one for this CLIP and generator with `clip2gan train`.",
                errors.join("; ")
            )));
        }
        let mut warnings = Vec::new();
        if self.clip_model != c.clip_model {
            warnings.push(format!(
                "mapper was trained with CLIP {:?}, the loaded CLIP is {:?}",
                self.clip_model, c.clip_model
            ));
        }
        Ok(warnings)
    }
}

/// What computes the residual over `w_avg`.
enum Body {
    Mlp {
        hidden: Vec<(Linear, Option<LayerNorm>)>,
        out: Linear,
        /// Largest `|w+ - w_avg|` (over all styles) a prediction may have:
        /// the farthest of the bank's own latents (tensor `max_residual`,
        /// optional; the MLP refined from the fit has it).
        max_residual: Option<f64>,
    },
    /// `w - w_avg = weight e + bias`, with `|weight e|` clamped to `max_shift`.
    Linear { map: Linear, max_shift: f64 },
}

pub struct Mapper {
    body: Body,
    w_avg: Tensor, // [w_dim]
    /// `mu_image - mu_text`: moves text embeddings to the images' side of
    /// the modality gap before mapping (tensor `text_shift`, optional).
    text_shift: Option<Tensor>,
    /// `[n, w_dim]` residuals of the fit on its bank, drawn by
    /// [`Mapper::sample`] (tensor `residuals`, optional).
    residuals: Option<Tensor>,
    pub meta: MapperMeta,
}

/// Most hidden layers a mapper may have (trained ones have 2 to 8): a
/// file's metadata that says more is damaged.
pub const MAX_DEPTH: usize = 64;

impl Mapper {
    /// Build on a `VarBuilder`: random init from a `VarMap` (training), or
    /// weights from a file (inference).
    pub fn new(vb: VarBuilder, meta: MapperMeta) -> Result<Self> {
        let c = &meta.config;
        let body = match c.kind {
            MapperKind::Mlp => Self::mlp(&vb, &meta)?,
            MapperKind::Linear => {
                let map = candle_nn::linear(meta.clip_dim, meta.w_dim, vb.pp("linear"))?;
                let max_shift = vb.get(1, "max_shift")?.to_vec1::<f32>()?[0] as f64;
                Body::Linear { map, max_shift }
            }
        };
        let w_avg = vb.get_with_hints(meta.w_dim, "w_avg", Init::Const(0.0))?;
        let text_shift = if vb.contains_tensor("text_shift") {
            Some(vb.get(meta.clip_dim, "text_shift")?)
        } else {
            None
        };
        let residuals = match c.bank {
            0 => None,
            n => Some(vb.get((n, meta.w_dim), "residuals")?),
        };
        Ok(Self {
            body,
            w_avg,
            text_shift,
            residuals,
            meta,
        })
    }

    fn mlp(vb: &VarBuilder, meta: &MapperMeta) -> Result<Body> {
        let c = &meta.config;
        if c.depth == 0 || c.width == 0 || c.depth > MAX_DEPTH {
            return Err(Error::invalid(format!(
                "mapper depth {} and width {} must be 1 to {MAX_DEPTH} and at least 1",
                c.depth, c.width
            )));
        }
        // Not with_capacity(depth): the depth comes from a file's metadata.
        let mut hidden = Vec::new();
        let mut fan_in = meta.clip_dim;
        for i in 0..c.depth {
            let vb = vb.pp(format!("hidden.{i}"));
            let lin = candle_nn::linear(fan_in, c.width, vb.pp("linear"))?;
            let norm = if c.layer_norm {
                Some(candle_nn::layer_norm(c.width, 1e-5, vb.pp("norm"))?)
            } else {
                None
            };
            hidden.push((lin, norm));
            fan_in = c.width;
        }
        let out_dim = meta.num_styles * meta.w_dim;
        // A small output layer: training starts near w_avg.
        let ovb = vb.pp("out");
        let w = ovb.get_with_hints(
            (out_dim, fan_in),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.01 / (fan_in as f64).sqrt(),
            },
        )?;
        let b = ovb.get_with_hints(out_dim, "bias", Init::Const(0.0))?;
        let max_residual = if vb.contains_tensor("max_residual") {
            Some(vb.get(1, "max_residual")?.to_vec1::<f32>()?[0] as f64)
        } else {
            None
        };
        Ok(Body::Mlp {
            hidden,
            out: Linear::new(w, Some(b)),
            max_residual,
        })
    }

    /// A fresh, trainable mapper whose variables live in `varmap`; `w_avg`
    /// is the generator's.
    pub fn init(
        varmap: &VarMap,
        meta: MapperMeta,
        w_avg: &Tensor,
        device: &Device,
    ) -> Result<Self> {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, device);
        let m = Self::new(vb, meta)?;
        // w_avg is a buffer, not a parameter: set it, keep it out of training.
        let mut data = varmap.data().lock().expect("not poisoned");
        data.remove("w_avg");
        drop(data);
        Ok(Self {
            w_avg: w_avg.to_dtype(DType::F32)?.to_device(device)?,
            ..m
        })
    }

    /// A fresh mapper whose initial weights depend only on `seed` (candle's
    /// own initialisers draw from an unseeded generator): hidden weights
    /// `N(0, 2/fan_in)`, zero biases, unit norms, and an output layer 100x
    /// smaller, as in [`Mapper::new`]. Training and the "untrained mapper"
    /// baseline of `eval-mapper` start from the same weights this way.
    pub fn init_seeded(
        varmap: &VarMap,
        meta: MapperMeta,
        w_avg: &Tensor,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let c = meta.config.clone();
        let put = |name: String, shape: &[usize], std: Option<f64>, fill: f64| -> Result<()> {
            let t = match std {
                Some(std) => (crate::rng::normal_tensor(seed, &name, shape, device)? * std)?,
                None => Tensor::full(fill as f32, shape, device)?,
            };
            varmap
                .data()
                .lock()
                .expect("not poisoned")
                .insert(name, Var::from_tensor(&t)?);
            Ok(())
        };
        let mut fan_in = meta.clip_dim;
        for i in 0..c.depth {
            let p = format!("hidden.{i}");
            let std = (2.0 / fan_in as f64).sqrt();
            put(
                format!("{p}.linear.weight"),
                &[c.width, fan_in],
                Some(std),
                0.0,
            )?;
            put(format!("{p}.linear.bias"), &[c.width], None, 0.0)?;
            if c.layer_norm {
                put(format!("{p}.norm.weight"), &[c.width], None, 1.0)?;
                put(format!("{p}.norm.bias"), &[c.width], None, 0.0)?;
            }
            fan_in = c.width;
        }
        let out_dim = meta.num_styles * meta.w_dim;
        let std = 0.01 / (fan_in as f64).sqrt();
        put("out.weight".into(), &[out_dim, fan_in], Some(std), 0.0)?;
        put("out.bias".into(), &[out_dim], None, 0.0)?;
        Self::init(varmap, meta, w_avg, device)
    }

    pub fn w_avg(&self) -> &Tensor {
        &self.w_avg
    }

    /// CLIP image embeddings `[n, clip_dim]` -> W+ `[n, num_styles, w_dim]`.
    pub fn forward(&self, e: &Tensor) -> Result<Tensor> {
        let (n, d) = e.dims2()?;
        if d != self.meta.clip_dim {
            return Err(Error::invalid(format!(
                "embedding has {d} dimensions, the mapper expects {}",
                self.meta.clip_dim
            )));
        }
        let x = e.to_dtype(DType::F32)?;
        let (styles, w_dim) = (self.meta.num_styles, self.meta.w_dim);
        let residual = match &self.body {
            Body::Mlp {
                hidden,
                out,
                max_residual,
            } => {
                let mut x = x;
                for (lin, norm) in hidden {
                    x = lin.forward(&x)?;
                    if let Some(norm) = norm {
                        let bias = norm.bias().expect("built with a bias");
                        x = candle_nn::ops::layer_norm_slow(&x, norm.weight(), bias, LN_EPS)?;
                    }
                    x = match self.meta.config.activation {
                        Activation::LeakyRelu => crate::ops::leaky_relu(&x, LEAKY_SLOPE)?,
                        Activation::Gelu => x.gelu()?,
                        Activation::Silu => x.silu()?,
                    };
                }
                let residual = out.forward(&x)?;
                let residual = match max_residual {
                    Some(max) => clamp_rows(&residual, *max)?,
                    None => residual,
                };
                residual.reshape((n, styles, w_dim))?
            }
            Body::Linear { map, max_shift } => {
                // Clamp the shift, not the intercept: no input may move the
                // face further from the bank's mean than a real face did.
                let shift = clamp_rows(&x.matmul(&map.weight().t()?)?, *max_shift)?;
                let bias = map.bias().expect("built with a bias");
                shift
                    .broadcast_add(bias)?
                    .unsqueeze(1)?
                    .broadcast_as((n, styles, w_dim))?
                    .contiguous()?
            }
        };
        Ok(residual.broadcast_add(&self.w_avg)?)
    }

    /// CLIP text embeddings `[n, clip_dim]` -> W+: [`Mapper::forward`] after
    /// moving them across the modality gap, when the mapper knows it.
    pub fn forward_text(&self, e: &Tensor) -> Result<Tensor> {
        match &self.text_shift {
            Some(shift) => {
                let moved = e.to_dtype(DType::F32)?.broadcast_add(shift)?;
                self.forward(&crate::clip::l2_normalize(&moved)?)
            }
            None => self.forward(e),
        }
    }

    /// The fit's residuals that [`Mapper::sample`] draws from, `[bank, w_dim]`.
    pub fn residuals(&self) -> Option<&Tensor> {
        self.residuals.as_ref()
    }

    /// Whether [`Mapper::sample`] can draw variety from the mapper itself.
    pub fn can_sample(&self) -> bool {
        self.residuals.is_some()
    }

    /// One W+ per text embedding row and seed: the prediction plus
    /// `temperature` times a residual of the fit drawn by the seed, i.e. the
    /// deviation from its prediction that some real face of the bank showed.
    /// The same seed draws the same residual for any prompt, so a seed keeps
    /// a face's individual traits while the prompt moves its prediction.
    /// `None` if the mapper has no residuals.
    pub fn sample(&self, e: &Tensor, seeds: &[u64], temperature: f64) -> Result<Option<Tensor>> {
        let Some(res) = &self.residuals else {
            return Ok(None);
        };
        let mean = self.forward_text(e)?;
        let (n, styles, w_dim) = mean.dims3()?;
        if seeds.len() != n {
            return Err(Error::invalid(format!(
                "{} seeds for {n} embeddings",
                seeds.len()
            )));
        }
        let drawn = (draw_residuals(res, seeds)? * temperature)?
            .unsqueeze(1)?
            .broadcast_as((n, styles, w_dim))?;
        Ok(Some((mean + drawn)?))
    }
}

/// The residual each seed draws from `residuals` (`[bank, w_dim]`): `[n, w_dim]`.
pub fn draw_residuals(residuals: &Tensor, seeds: &[u64]) -> Result<Tensor> {
    use rand::Rng;
    let bank = residuals.dim(0)? as u64;
    let idx: Vec<u32> = seeds
        .iter()
        .map(|&s| crate::rng::stream(s, "residual").random_range(0..bank) as u32)
        .collect();
    let idx = Tensor::from_vec(idx, seeds.len(), residuals.device())?;
    Ok(residuals.index_select(&idx, 0)?)
}

/// Rows of `x` `[n, k]` scaled down to an L2 norm of at most `max`.
fn clamp_rows(x: &Tensor, max: f64) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
    let scale = norm.clamp(max, f64::MAX)?.recip()?.affine(max, 0.0)?;
    Ok(x.broadcast_mul(&scale)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> MapperMeta {
        MapperMeta {
            clip_model: "tiny".into(),
            clip_dim: 8,
            generator: "g".into(),
            num_styles: 3,
            w_dim: 4,
            config: MapperConfig {
                depth: 2,
                width: 16,
                ..Default::default()
            },
            step: 7,
            training: serde_json::json!({"lr": 1e-3}),
            metrics: serde_json::Value::Null,
        }
    }

    fn compat(m: &MapperMeta) -> Compat<'_> {
        Compat {
            clip_model: &m.clip_model,
            clip_dim: m.clip_dim,
            generator: &m.generator,
            num_styles: m.num_styles,
            w_dim: m.w_dim,
        }
    }

    #[test]
    fn save_load_roundtrip_and_compat() {
        let dev = Device::Cpu;
        let varmap = VarMap::new();
        let w_avg = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &dev).unwrap();
        let m = Mapper::init(&varmap, meta(), &w_avg, &dev).unwrap();
        let e = Tensor::randn(0f32, 1.0, (5, 8), &dev).unwrap();
        let y = m.forward(&e).unwrap();
        assert_eq!(y.dims(), [5, 3, 4]);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        save(&p, &varmap, &w_avg, &m.meta).unwrap();
        let meta = read_meta(&p).unwrap();
        assert_eq!(meta, m.meta);
        let (loaded, warnings) = Mapper::load(&p, &compat(&meta), &dev).unwrap();
        assert!(warnings.is_empty());
        let y2 = loaded.forward(&e).unwrap();
        let d = crate::generator::parity::max_abs_diff(&y, &y2).unwrap();
        assert_eq!(d, 0.0);

        let mut other = meta.clone();
        other.clip_dim = 512;
        other.generator = "h".into();
        let err = Mapper::load(&p, &compat(&other), &dev)
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("CLIP dimension 8 (mapper) vs 512") && err.contains("generator"),
            "{err}"
        );
        other = meta.clone();
        other.clip_model = "another".into();
        assert_eq!(Mapper::load(&p, &compat(&other), &dev).unwrap().1.len(), 1);
        let err = read_meta(&dir.path().join("none.safetensors"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("clip2gan train"), "{err}");
    }

    /// An MLP with `max_residual` never moves a prediction further from
    /// `w_avg` (over all styles) than that; without it, the same weights do.
    #[test]
    fn max_residual_clamps_an_mlp() {
        let dev = Device::Cpu;
        let w_avg = Tensor::new(&[1f32, 2.0, 3.0, 4.0], &dev).unwrap();
        let e = Tensor::randn(0f32, 1.0, (6, 8), &dev).unwrap();
        let norms = |m: &Mapper| -> Vec<f32> {
            let r = m.forward(&e).unwrap().broadcast_sub(&w_avg).unwrap();
            r.reshape((6, 12))
                .unwrap()
                .sqr()
                .unwrap()
                .sum(1)
                .unwrap()
                .sqrt()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let varmap = VarMap::new();
        let free = Mapper::init_seeded(&varmap, meta(), &w_avg, 3, &dev).unwrap();
        let before = norms(&free);
        let max = before.iter().cloned().fold(f32::MAX, f32::min) * 0.5;
        varmap.data().lock().unwrap().insert(
            "max_residual".into(),
            Var::from_tensor(&Tensor::new(&[max], &dev).unwrap()).unwrap(),
        );
        let clamped = Mapper::init(&varmap, meta(), &w_avg, &dev).unwrap();
        for (b, a) in before.iter().zip(norms(&clamped)) {
            assert!(
                *b > max && (a - max).abs() < 1e-4 * max,
                "{b} -> {a}, max {max}"
            );
        }
    }

    /// Every parameter gets a gradient (the layer norm included), and a
    /// seeded init is the same every time.
    #[test]
    fn gradients_reach_every_layer_and_init_is_seeded() {
        let dev = Device::Cpu;
        let w_avg = Tensor::zeros(4, DType::F32, &dev).unwrap();
        let varmap = VarMap::new();
        let m = Mapper::init_seeded(&varmap, meta(), &w_avg, 5, &dev).unwrap();
        let e = Tensor::randn(0f32, 1.0, (3, 8), &dev).unwrap();
        let loss = m.forward(&e).unwrap().sqr().unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let data = varmap.data().lock().unwrap();
        assert_eq!(data.len(), 10, "2 x (linear w, b, norm w, b) + out w, b");
        for (name, var) in data.iter() {
            let g = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("no gradient for {name}"));
            let n: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(n > 0.0, "zero gradient for {name}");
        }
        let again = VarMap::new();
        let m2 = Mapper::init_seeded(&again, meta(), &w_avg, 5, &dev).unwrap();
        let (a, b) = (m.forward(&e).unwrap(), m2.forward(&e).unwrap());
        assert_eq!(
            a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            b.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
    }
}
