//! CLIP's vision tower written with plain tensor ops, so that gradients flow
//! through it (training a mapper with a CLIP loss).
//!
//! candle-transformers' CLIP calls candle-nn's fused LayerNorm whenever its
//! input is contiguous, and that op has no backward pass: gradients would
//! stop silently at the first layer norm. This is the same network (same
//! tensor names, same maths: pre-norm ViT, quick GELU, class-token pooling,
//! post-norm, projection) with a layer norm built from differentiable ops.
//! [`super::Clip`] uses it only when the pixels carry a gradient; inference
//! keeps the fused ops ([`super::fast`] on the CPU, candle's model
//! elsewhere). A test checks the three agree.

use candle_core::{IndexOp, Tensor, D};
use candle_nn::{LayerNorm, Linear, Module, VarBuilder};
use candle_transformers::models::clip::vision_model::ClipVisionConfig;

use crate::error::Result;

const LN_EPS: f32 = 1e-5;

/// Layer norm from tensor ops (candle-nn's `layer_norm_slow`).
pub(crate) struct Norm(LayerNorm);

impl Norm {
    pub(crate) fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self(candle_nn::layer_norm(dim, 1e-5, vb)?))
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let bias = self.0.bias().expect("loaded with bias");
        Ok(candle_nn::ops::layer_norm_slow(
            x,
            self.0.weight(),
            bias,
            LN_EPS,
        )?)
    }
}

/// One pre-norm transformer layer (both towers have the same).
pub(crate) struct Layer {
    ln1: Norm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: Norm,
    fc1: Linear,
    fc2: Linear,
}

pub struct VisionTower {
    patch: Tensor, // [D, C, P, P]
    class: Tensor, // [D]
    pos: Tensor,   // [T, D]
    pre_ln: Norm,
    layers: Vec<Layer>,
    post_ln: Norm,
    projection: Linear,
    heads: usize,
    patch_size: usize,
}

impl VisionTower {
    /// Load from the root of a CLIP checkpoint (`vision_model.*`,
    /// `visual_projection.weight`).
    pub fn load(vb: &VarBuilder, c: &ClipVisionConfig) -> Result<Self> {
        let v = vb.pp("vision_model");
        let e = v.pp("embeddings");
        let d = c.embed_dim;
        let tokens = (c.image_size / c.patch_size).pow(2) + 1;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(v.pp(format!("encoder.layers.{i}")), d, c.intermediate_size))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch: e.get(
                (d, c.num_channels, c.patch_size, c.patch_size),
                "patch_embedding.weight",
            )?,
            class: e.get(d, "class_embedding")?,
            pos: e.get((tokens, d), "position_embedding.weight")?,
            pre_ln: Norm::load(v.pp("pre_layrnorm"), d)?,
            layers,
            post_ln: Norm::load(v.pp("post_layernorm"), d)?,
            projection: candle_nn::linear_no_bias(d, c.projection_dim, vb.pp("visual_projection"))?,
            heads: c.num_attention_heads,
            patch_size: c.patch_size,
        })
    }

    /// Projected image features (not normalised) of pixels `[n, C, S, S]`.
    pub fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let n = pixels.dim(0)?;
        let d = self.class.dim(0)?;
        // The patch embedding as one matmul over flattened patches (the
        // same sums as the stride-P convolution, whose backward is slow on
        // the CPU).
        let (c, s, p) = (pixels.dim(1)?, pixels.dim(2)?, self.patch_size);
        let g = s / p;
        let flat = pixels
            .reshape((n, c, g, p, g, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((n * g * g, c * p * p))?;
        let patches = flat
            .matmul(&self.patch.reshape((d, c * p * p))?.t()?)?
            .reshape((n, g * g, d))?; // [n, T-1, D]
        let class = self.class.reshape((1, 1, d))?.broadcast_as((n, 1, d))?;
        let x = Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.pos)?;
        let mut x = self.pre_ln.forward(&x)?;
        for l in &self.layers {
            x = l.forward(&x, self.heads, None)?;
        }
        let pooled = self.post_ln.forward(&x.i((.., 0, ..))?)?;
        Ok(self.projection.forward(&pooled)?)
    }
}

/// `l` over the last dimension of `x`, as one 2-D matmul: candle's linear
/// on a 3-D input broadcasts the weight, and its backward then makes a
/// weight gradient per batch item before summing them.
pub(crate) fn apply(l: &Linear, x: &Tensor) -> Result<Tensor> {
    let mut dims = x.dims().to_vec();
    let last = dims.pop().expect("at least one dimension");
    let y = l.forward(&x.reshape(((), last))?)?;
    dims.push(y.dim(1)?);
    Ok(y.reshape(dims)?)
}

impl Layer {
    /// Layer `vb` (`encoder.layers.i`) of width `d`.
    pub(crate) fn load(l: VarBuilder, d: usize, intermediate: usize) -> Result<Self> {
        let a = l.pp("self_attn");
        Ok(Layer {
            ln1: Norm::load(l.pp("layer_norm1"), d)?,
            q: candle_nn::linear(d, d, a.pp("q_proj"))?,
            k: candle_nn::linear(d, d, a.pp("k_proj"))?,
            v: candle_nn::linear(d, d, a.pp("v_proj"))?,
            out: candle_nn::linear(d, d, a.pp("out_proj"))?,
            ln2: Norm::load(l.pp("layer_norm2"), d)?,
            fc1: candle_nn::linear(d, intermediate, l.pp("mlp.fc1"))?,
            fc2: candle_nn::linear(intermediate, d, l.pp("mlp.fc2"))?,
        })
    }

    /// `x + attention(ln1 x)`, then `+ mlp(ln2 x)`; `mask` `[t, t]` is added
    /// to the attention logits (the text tower's causal mask).
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        heads: usize,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let h = self.ln1.forward(x)?;
        let x = (x + self.attention(&h, heads, mask)?)?;
        let h = apply(&self.fc1, &self.ln2.forward(&x)?)?;
        let h = (&h * candle_nn::ops::sigmoid(&(&h * 1.702)?)?)?; // quick GELU
        Ok((&x + apply(&self.fc2, &h)?)?)
    }

    fn attention(&self, x: &Tensor, heads: usize, mask: Option<&Tensor>) -> Result<Tensor> {
        let (n, t, d) = x.dims3()?;
        let hd = d / heads;
        let split = |y: Tensor| -> Result<Tensor> {
            Ok(y.reshape((n, t, heads, hd))?
                .transpose(1, 2)?
                .contiguous()?)
        };
        let q = split((apply(&self.q, x)? * (hd as f64).powf(-0.5))?)?;
        let k = split(apply(&self.k, x)?)?;
        let v = split(apply(&self.v, x)?)?;
        let logits = q.matmul(&k.t()?)?;
        let logits = match mask {
            Some(m) => logits.broadcast_add(m)?,
            None => logits,
        };
        let att = candle_nn::ops::softmax(&logits, D::Minus1)?;
        let y = att.matmul(&v)?.transpose(1, 2)?.reshape((n, t, d))?;
        apply(&self.out, &y)
    }
}
