//! CLIP's text tower written with plain tensor ops, so that gradients flow
//! through it (training a CLIP: [`super::contrastive`]). The same network
//! as candle-transformers' text model (same tensor names and maths: token
//! and position embeddings, causal pre-norm transformer, final norm, the
//! end token's state, projection), with [`super::vision`]'s differentiable
//! layers; candle's own stops gradients at its fused layer norm.

use candle_core::{Device, IndexOp, Tensor};
use candle_nn::{Embedding, Linear, Module, VarBuilder};
use candle_transformers::models::clip::text_model::ClipTextConfig;

use super::vision::{Layer, Norm};
use crate::error::Result;

pub struct TextTower {
    tokens: Embedding,
    positions: Tensor, // [max_positions, D]
    layers: Vec<Layer>,
    final_ln: Norm,
    projection: Linear,
    heads: usize,
}

/// Added to attention logits a token may not see (later tokens): large
/// enough to zero its weight, small enough not to overflow in the sum.
const MASKED: f32 = -1e9;

impl TextTower {
    /// Load from the root of a CLIP checkpoint (`text_model.*`,
    /// `text_projection.weight`).
    pub fn load(vb: &VarBuilder, c: &ClipTextConfig) -> Result<Self> {
        let t = vb.pp("text_model");
        let e = t.pp("embeddings");
        let d = c.embed_dim;
        let layers = (0..c.num_hidden_layers)
            .map(|i| Layer::load(t.pp(format!("encoder.layers.{i}")), d, c.intermediate_size))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            tokens: candle_nn::embedding(c.vocab_size, d, e.pp("token_embedding"))?,
            positions: e.get((c.max_position_embeddings, d), "position_embedding.weight")?,
            layers,
            final_ln: Norm::load(t.pp("final_layer_norm"), d)?,
            projection: candle_nn::linear_no_bias(d, c.projection_dim, vb.pp("text_projection"))?,
            heads: c.num_attention_heads,
        })
    }

    /// Projected text features (not normalised) of token ids `[n, len]`
    /// (u32, padded with ids below the end token, which is the largest).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let (n, len) = ids.dims2()?;
        let x = self
            .tokens
            .forward(ids)?
            .broadcast_add(&self.positions.narrow(0, 0, len)?)?;
        let mask = causal_mask(len, ids.device())?;
        let mut x = x;
        for l in &self.layers {
            x = l.forward(&x, self.heads, Some(&mask))?;
        }
        let x = self.final_ln.forward(&x)?;
        // The end token's state: the position of the largest id.
        let ends = ids.argmax(1)?.to_vec1::<u32>()?;
        let rows = (0..n)
            .map(|i| x.i((i, ends[i] as usize)).and_then(|r| r.unsqueeze(0)))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(self.projection.forward(&Tensor::cat(&rows, 0)?)?)
    }
}

fn causal_mask(len: usize, dev: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { MASKED } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(m, (len, len), dev)?)
}
