//! Inference-only CLIP encoders for the CPU: the networks of
//! candle-transformers' CLIP over the same checkpoint tensors, computed with
//! fewer and larger kernels.
//!
//! Why not candle's model: profiled at ViT-B/32 shapes on 2 cores, only
//! about half its time is in matmul kernels. Every small op (bias add,
//! quick GELU as three passes with a scalar `exp`, head split/merge copies,
//! the causal mask add) is a separate pass with its own allocation, and the
//! attention matmuls are ~100 tiny gemms each fanned out to all threads;
//! candle's elementwise thread pool spins while rayon's gemm threads want
//! the same two cores. Here, on the kernels of [`crate::ops`]:
//!
//! - each linear layer is one gemm (the `gemm` crate, as candle uses) split
//!   across threads by output columns, with bias and quick GELU applied to
//!   each thread's block while it is in cache; Q, K and V are one matmul;
//!   residual adds are folded into the gemm (it accumulates into the
//!   residual stream) ([`crate::ops::linear`]);
//! - attention runs per (sequence, head) as two single-threaded gemms that
//!   read Q, K and V in place from the fused QKV rows and write the heads
//!   merged, with the heads in parallel ([`crate::ops::attention`]);
//! - layer norm, softmax and quick GELU are row kernels with a polynomial
//!   `exp`, compiled for AVX2 when the CPU has it (the build targets
//!   baseline x86-64) ([`crate::ops::rows`], [`crate::ops::simd`]);
//! - the patch embedding is one im2col matmul;
//! - the last layer computes keys and values for every token but the rest
//!   only for the row that reaches the output (class token, end token);
//! - texts are not padded: each runs up to its pooled (end) token, which is
//!   exact because the causal mask stops later tokens reaching it.
//!
//! This file is the model on those kernels: the weights read from the
//! checkpoint, the layers in order, the towers and their FLOP counts.
//! [`super::Clip`] uses this path on the CPU unless
//! [`crate::ops::force_portable`] is on; tests check it against candle's
//! model (the portable path) and the reference fixtures.

use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

use super::config::ClipSpec;
use super::Tokens;
use crate::error::{Error, Result};
use crate::ops::attention::{attention, Queries, Seq};
use crate::ops::checkpoint_values;
use crate::ops::linear::{linear, Lin, Out};
use crate::ops::rows::{layer_norm_in_place, norm_rows, Norm};

struct Layer {
    ln1: Norm,
    qkv: Lin,
    out: Lin,
    ln2: Norm,
    fc1: Lin,
    fc2: Lin,
}

struct Encoder {
    layers: Vec<Layer>,
    d: usize,
    inter: usize,
    heads: usize,
    causal: bool,
}

impl Encoder {
    /// `vb` at `<tower>.encoder`.
    fn load(
        vb: VarBuilder,
        d: usize,
        inter: usize,
        layers: usize,
        heads: usize,
        causal: bool,
    ) -> Result<Self> {
        if layers == 0 || heads == 0 || !d.is_multiple_of(heads) {
            return Err(Error::invalid(format!(
                "unsupported encoder: {layers} layers, {heads} heads of width {d}"
            )));
        }
        let layers = (0..layers)
            .map(|i| {
                let l = vb.pp(format!("layers.{i}"));
                let a = l.pp("self_attn");
                let proj = |name: &str| Lin::load(a.pp(name), d, d, true);
                Ok(Layer {
                    ln1: Norm::load(l.pp("layer_norm1"), d)?,
                    qkv: Lin::stack(vec![proj("q_proj")?, proj("k_proj")?, proj("v_proj")?]),
                    out: proj("out_proj")?,
                    ln2: Norm::load(l.pp("layer_norm2"), d)?,
                    fc1: Lin::load(l.pp("mlp.fc1"), d, inter, true)?,
                    fc2: Lin::load(l.pp("mlp.fc2"), inter, d, true)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            d,
            inter,
            heads,
            causal,
        })
    }

    /// Runs the layers over `x` (the rows of all sequences stacked, `d`
    /// wide) and returns the final hidden state of each sequence's pooled
    /// row, `[S, d]`.
    fn forward(&self, mut x: Vec<f32>, seqs: &[Seq]) -> Vec<f32> {
        let d = self.d;
        let m = x.len() / d;
        let (heads, causal) = (self.heads, self.causal);
        let mut h = vec![0f32; m * d];
        let mut qkv = vec![0f32; m * 3 * d];
        let mut att = vec![0f32; m * d];
        let mut f = vec![0f32; m * self.inter];
        norm_rows(&x, &self.layers[0].ln1, &mut h);
        let last = self.layers.len() - 1;
        for (i, l) in self.layers[..last].iter().enumerate() {
            linear(&h, m, l.qkv.all(), Out::new(&mut qkv, 3 * d), false);
            attention(&qkv, d, heads, seqs, causal, Queries::All, &mut att);
            linear(&att, m, l.out.all(), Out::residual(&mut x, d), false);
            norm_rows(&x, &l.ln2, &mut h);
            linear(&h, m, l.fc1.all(), Out::new(&mut f, self.inter), true);
            linear(&f, m, l.fc2.all(), Out::residual(&mut x, d), false);
            norm_rows(&x, &self.layers[i + 1].ln1, &mut h);
        }
        // The last layer: only the pooled rows reach the output, but their
        // attention reads every row's keys and values.
        let l = &self.layers[last];
        let kv = Out {
            col: d,
            ..Out::new(&mut qkv, 3 * d)
        };
        linear(&h, m, l.qkv.rows(d, 3 * d), kv, false);
        let s = seqs.len();
        let gather = |src: &[f32]| -> Vec<f32> {
            seqs.iter()
                .flat_map(|q| &src[(q.start + q.pool) * d..(q.start + q.pool + 1) * d])
                .copied()
                .collect()
        };
        let mut hp = gather(&h);
        let mut xp = gather(&x);
        let mut qp = vec![0f32; s * d];
        linear(&hp, s, l.qkv.rows(0, d), Out::new(&mut qp, d), false);
        let mut ap = vec![0f32; s * d];
        attention(&qkv, d, heads, seqs, causal, Queries::Pooled(&qp), &mut ap);
        linear(&ap, s, l.out.all(), Out::residual(&mut xp, d), false);
        norm_rows(&xp, &l.ln2, &mut hp);
        let mut fp = vec![0f32; s * self.inter];
        linear(&hp, s, l.fc1.all(), Out::new(&mut fp, self.inter), true);
        linear(&fp, s, l.fc2.all(), Out::residual(&mut xp, d), false);
        xp
    }
}

/// Final layer norm and projection of pooled rows: `[S, projection_dim]`.
fn project(pooled: Vec<f32>, norm: &Norm, proj: &Lin) -> Result<Tensor> {
    let s = pooled.len() / proj.k;
    let mut h = vec![0f32; pooled.len()];
    norm_rows(&pooled, norm, &mut h);
    let mut out = vec![0f32; s * proj.n];
    linear(&h, s, proj.all(), Out::new(&mut out, proj.n), false);
    Ok(Tensor::from_vec(out, (s, proj.n), &Device::Cpu)?)
}

// ---------------------------------------------------------------------------
// The towers.

struct Vision {
    patch: Lin, // [D, C*P*P], no bias
    class: Vec<f32>,
    pos: Vec<f32>, // [T, D]
    pre: Norm,
    encoder: Encoder,
    post: Norm,
    projection: Lin,
    channels: usize,
    image_size: usize,
    patch_size: usize,
}

struct Text {
    token: Vec<f32>,    // [vocab, D]
    position: Vec<f32>, // [max_positions, D]
    max_positions: usize,
    vocab: usize,
    encoder: Encoder,
    norm: Norm,
    projection: Lin,
}

/// [`Encoder::load`] at `<tower>.encoder` with the sizes of candle's tower
/// config `$cfg` (its text and vision configs name them alike).
macro_rules! tower_encoder {
    ($tower:expr, $cfg:expr, $causal:expr) => {
        Encoder::load(
            $tower.pp("encoder"),
            $cfg.embed_dim,
            $cfg.intermediate_size,
            $cfg.num_hidden_layers,
            $cfg.num_attention_heads,
            $causal,
        )
    };
}

/// Both encoders, weights copied out of a checkpoint.
pub struct FastClip {
    vision: Vision,
    text: Text,
}

impl FastClip {
    /// Load from the root of a CLIP checkpoint, reading the tensors
    /// candle-transformers' `ClipModel` reads (same names and shapes, so the
    /// same checks: a missing or misshapen tensor is an error).
    pub fn load(vb: &VarBuilder, spec: &ClipSpec) -> Result<Self> {
        let (vc, tc) = (&spec.candle.vision_config, &spec.candle.text_config);
        let v = vb.pp("vision_model");
        let e = v.pp("embeddings");
        let d = vc.embed_dim;
        let cpp = vc.num_channels * vc.patch_size * vc.patch_size;
        let tokens = (vc.image_size / vc.patch_size).pow(2) + 1;
        let patch = Lin::new(
            checkpoint_values(
                &e.pp("patch_embedding"),
                (d, vc.num_channels, vc.patch_size, vc.patch_size),
                "weight",
            )?,
            None,
            d,
            cpp,
        );
        let vision = Vision {
            patch,
            class: checkpoint_values(&e, d, "class_embedding")?,
            pos: checkpoint_values(&e.pp("position_embedding"), (tokens, d), "weight")?,
            pre: Norm::load(v.pp("pre_layrnorm"), d)?,
            encoder: tower_encoder!(v, vc, false)?,
            post: Norm::load(v.pp("post_layernorm"), d)?,
            projection: Lin::load(vb.pp("visual_projection"), d, vc.projection_dim, false)?,
            channels: vc.num_channels,
            image_size: vc.image_size,
            patch_size: vc.patch_size,
        };
        let t = vb.pp("text_model");
        let d = tc.embed_dim;
        let text = Text {
            token: checkpoint_values(
                &t.pp("embeddings.token_embedding"),
                (tc.vocab_size, d),
                "weight",
            )?,
            position: checkpoint_values(
                &t.pp("embeddings.position_embedding"),
                (tc.max_position_embeddings, d),
                "weight",
            )?,
            max_positions: tc.max_position_embeddings,
            vocab: tc.vocab_size,
            encoder: tower_encoder!(t, tc, true)?,
            norm: Norm::load(t.pp("final_layer_norm"), d)?,
            projection: Lin::load(vb.pp("text_projection"), d, tc.projection_dim, false)?,
        };
        Ok(Self { vision, text })
    }

    /// Projected image features of preprocessed pixels `[n, C, S, S]`.
    pub fn image_features(&self, pixels: &Tensor) -> Result<Tensor> {
        let v = &self.vision;
        let (n, c, hgt, wid) = pixels.dims4()?;
        let (s, p) = (v.image_size, v.patch_size);
        if c != v.channels || hgt != s || wid != s {
            return Err(Error::invalid(format!(
                "CLIP expects [n, {}, {s}, {s}] pixels, got {:?}",
                v.channels,
                pixels.dims()
            )));
        }
        if n == 0 {
            return Err(Error::invalid("no images to encode"));
        }
        let px = pixels
            .to_dtype(candle_core::DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let (g, d) = (s / p, v.encoder.d);
        let (np, cpp) = (g * g, c * p * p);
        let t = np + 1;
        // im2col: one row per patch, columns in the weight's (c, ky, kx) order.
        let mut cols = vec![0f32; n * np * cpp];
        cols.par_chunks_mut(np * cpp)
            .enumerate()
            .for_each(|(b, dst)| {
                let img = &px[b * c * s * s..(b + 1) * c * s * s];
                for (i, row) in dst.chunks_exact_mut(cpp).enumerate() {
                    let (py, pxx) = (i / g, i % g);
                    for ch in 0..c {
                        for ky in 0..p {
                            let src = ch * s * s + (py * p + ky) * s + pxx * p;
                            let o = (ch * p + ky) * p;
                            row[o..o + p].copy_from_slice(&img[src..src + p]);
                        }
                    }
                }
            });
        let mut pe = vec![0f32; n * np * d];
        linear(&cols, n * np, v.patch.all(), Out::new(&mut pe, d), false);
        drop(cols);
        // Class token + patches, plus positions, through the pre-norm.
        let mut x = vec![0f32; n * t * d];
        x.par_chunks_mut(t * d).enumerate().for_each(|(b, img)| {
            for (tok, row) in img.chunks_exact_mut(d).enumerate() {
                let src = if tok == 0 {
                    &v.class[..]
                } else {
                    &pe[(b * np + tok - 1) * d..(b * np + tok) * d]
                };
                for ((o, a), q) in row.iter_mut().zip(src).zip(&v.pos[tok * d..]) {
                    *o = a + q;
                }
                layer_norm_in_place(row, &v.pre.w, &v.pre.b);
            }
        });
        drop(pe);
        let seqs: Vec<Seq> = (0..n)
            .map(|b| Seq {
                start: b * t,
                len: t,
                pool: 0,
            })
            .collect();
        project(v.encoder.forward(x, &seqs), &v.post, &v.projection)
    }

    /// Projected text features of token ids (each text its own length; the
    /// result equals padding them to a common length).
    pub fn text_features(&self, tokens: &[Tokens]) -> Result<Tensor> {
        let t = &self.text;
        let d = t.encoder.d;
        if tokens.is_empty() {
            return Err(Error::invalid("no texts to encode"));
        }
        let mut seqs = Vec::with_capacity(tokens.len());
        let mut start = 0;
        for tok in tokens {
            check_ids(&tok.ids, t.vocab, t.max_positions)?;
            // Pooled at the first largest id (the end token), as candle's
            // argmax picks it.
            let pool =
                tok.ids.iter().enumerate().fold(
                    0,
                    |best, (i, &id)| if id > tok.ids[best] { i } else { best },
                );
            seqs.push(Seq {
                start,
                len: pool + 1,
                pool,
            });
            start += pool + 1;
        }
        let mut x = vec![0f32; start * d];
        for (tok, seq) in tokens.iter().zip(&seqs) {
            for (i, &id) in tok.ids[..seq.len].iter().enumerate() {
                let row = &mut x[(seq.start + i) * d..(seq.start + i + 1) * d];
                let emb = &t.token[id as usize * d..(id as usize + 1) * d];
                let pos = &t.position[i * d..(i + 1) * d];
                for ((o, a), b) in row.iter_mut().zip(emb).zip(pos) {
                    *o = a + b;
                }
            }
        }
        project(t.encoder.forward(x, &seqs), &t.norm, &t.projection)
    }
}

/// The checks the portable path makes on token ids (vocabulary, length).
pub fn check_ids(ids: &[u32], vocab: usize, max_positions: usize) -> Result<()> {
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::invalid(format!(
            "token id {bad} is outside the vocabulary"
        )));
    }
    if ids.is_empty() {
        return Err(Error::invalid("a text has no tokens"));
    }
    if ids.len() > max_positions {
        return Err(Error::invalid(format!(
            "a text has {} tokens, more than the model's {max_positions} positions",
            ids.len()
        )));
    }
    Ok(())
}

/// Which FLOPs (multiply-adds x 2) of a forward pass to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Count {
    /// As the reference computes them: every token through every layer,
    /// full attention scores. The figure throughput is quoted against, the
    /// same for every path.
    Reference,
    /// What the fast path executes: its last layer computes keys and values
    /// for every token but the rest for the pooled row only (~7% fewer at
    /// ViT-B/32 shapes).
    FastPath,
}

/// FLOPs of one image.
pub fn image_flops(spec: &ClipSpec, count: Count) -> f64 {
    let v = &spec.candle.vision_config;
    let np = (v.image_size / v.patch_size).pow(2);
    let cpp = v.num_channels * v.patch_size * v.patch_size;
    let patch = 2.0 * (np * cpp * v.embed_dim) as f64;
    let enc = encoder_flops(
        np + 1,
        v.embed_dim,
        v.intermediate_size,
        v.num_hidden_layers,
        count,
    );
    patch + enc + 2.0 * (v.embed_dim * v.projection_dim) as f64
}

/// FLOPs of one text of `tokens` tokens.
pub fn text_flops(spec: &ClipSpec, tokens: usize, count: Count) -> f64 {
    let t = &spec.candle.text_config;
    encoder_flops(
        tokens,
        t.embed_dim,
        t.intermediate_size,
        t.num_hidden_layers,
        count,
    ) + 2.0 * (t.embed_dim * t.projection_dim) as f64
}

fn encoder_flops(t: usize, d: usize, inter: usize, layers: usize, count: Count) -> f64 {
    let full = 2 * t * (4 * d * d + 2 * d * inter) + 4 * t * t * d;
    let last = match count {
        Count::Reference => full,
        // K and V of every row; Q, out-projection, MLP and attention of one.
        Count::FastPath => 2 * t * 2 * d * d + 2 * (2 * d * d + 2 * d * inter) + 4 * t * d,
    };
    ((layers - 1) * full + last) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// ViT-B/32: 49 patches of 3072 values, 50 tokens through 12 layers
    /// of width 768 (MLP 3072), projection to 512; the fast path's last
    /// layer carries one row past K/V.
    #[test]
    fn flop_counts() {
        let spec = super::super::config::vit_base_patch32();
        let layer = |t: f64, rows: f64| {
            2.0 * t * 2.0 * 768.0 * 768.0
                + 2.0 * rows * (2.0 * 768.0 * 768.0 + 2.0 * 768.0 * 3072.0)
                + 4.0 * rows * t * 768.0
        };
        let base = 2.0 * 49.0 * 3072.0 * 768.0 + 2.0 * 768.0 * 512.0 + 11.0 * layer(50.0, 50.0);
        assert_eq!(
            image_flops(&spec, Count::Reference),
            base + layer(50.0, 50.0)
        );
        assert_eq!(image_flops(&spec, Count::FastPath), base + layer(50.0, 1.0));
        assert_eq!(text_flops(&spec, 10, Count::Reference), {
            let l = 2.0 * 10.0 * (4.0 * 512.0 * 512.0 + 2.0 * 512.0 * 2048.0) + 4.0 * 100.0 * 512.0;
            12.0 * l + 2.0 * 512.0 * 512.0
        });
    }
}
