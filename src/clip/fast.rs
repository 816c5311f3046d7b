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
//! the same two cores. Here:
//!
//! - each linear layer is one gemm (the `gemm` crate, as candle uses) split
//!   across threads by output columns, with bias and quick GELU applied to
//!   each thread's block while it is in cache; Q, K and V are one matmul;
//! - residual adds are folded into the gemm (it accumulates into the
//!   residual stream);
//! - attention runs per (sequence, head) as two single-threaded gemms that
//!   read Q, K and V in place from the fused QKV rows and write the heads
//!   merged, with the heads in parallel;
//! - layer norm, softmax and quick GELU are row kernels with a polynomial
//!   `exp`, compiled for AVX2 when the CPU has it (the build targets
//!   baseline x86-64);
//! - the patch embedding is one im2col matmul;
//! - the last layer computes keys and values for every token but the rest
//!   only for the row that reaches the output (class token, end token);
//! - texts are not padded: each runs up to its pooled (end) token, which is
//!   exact because the causal mask stops later tokens reaching it.
//!
//! [`super::Clip`] uses this path on the CPU unless
//! [`crate::ops::force_portable`] is on; tests check it against candle's
//! model and the reference fixtures.

use candle_core::{Device, Shape, Tensor};
use candle_nn::VarBuilder;
use gemm::Parallelism;
use rayon::prelude::*;

use super::config::ClipSpec;
use super::Tokens;
use crate::error::{Error, Result};
use crate::ops::SharedOut;

const LN_EPS: f32 = 1e-5;

/// Below this many multiply-adds a matmul runs on the calling thread:
/// waking the pool would cost more than the split saves.
const PAR_MIN_MACS: usize = 1 << 17;

/// Below this many elements a row kernel runs on the calling thread.
const PAR_MIN_ELEMS: usize = 1 << 15;

/// Compile a kernel twice, for the build's baseline target and with AVX2 +
/// FMA, and pick at run time. The kernels are plain loops that LLVM
/// vectorises: 8 lanes instead of SSE2's 4 (and AVX2's integer ops for the
/// `exp` bit tricks). No explicit FMA is used, so both copies round alike.
macro_rules! simd_dispatch {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn imp($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has the features `wide` is compiled for.
                    return unsafe { wide($($arg),*) };
                }
            }
            imp($($arg),*)
        }
    };
}
pub(crate) use simd_dispatch;

// ---------------------------------------------------------------------------
// Row kernels.

/// `e^x` for f32 without a libm call, so loops over it vectorise: Cody-Waite
/// range reduction to `r` in [-ln2/2, ln2/2], Cephes' degree-6 polynomial
/// (relative error ~1e-7, like `expf`), `2^n` built in the exponent bits.
/// Inputs are clamped to [-87, 88], where `2^n` stays a normal float.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let mut p = 1.987_569_1e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    // t's low mantissa bits hold n (two's complement, offset by MAGIC's bits).
    let scale = f32::from_bits(t.to_bits().wrapping_sub(0x4B40_0000 - 127) << 23);
    y * scale
}

/// Sum with 16 independent accumulators (a strict-order float sum does not
/// vectorise).
#[inline(always)]
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            acc[i] += c[i];
        }
    }
    let tail: f32 = chunks.remainder().iter().sum();
    acc.iter().sum::<f32>() + tail
}

/// Mean and 1 / standard deviation of a row (two passes: the variance of
/// the centred values, which keeps precision for rows far from zero).
#[inline(always)]
fn norm_stats(x: &[f32]) -> (f32, f32) {
    let n = x.len() as f32;
    let mean = sum(x) / n;
    let mut acc = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for i in 0..16 {
            let v = c[i] - mean;
            acc[i] += v * v;
        }
    }
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|v| (v - mean) * (v - mean))
        .sum();
    let var = (acc.iter().sum::<f32>() + tail) / n;
    (mean, 1.0 / (var + LN_EPS).sqrt())
}

simd_dispatch! {
    /// `dst = layer_norm(src) * w + b` for one row.
    fn layer_norm(src: &[f32], w: &[f32], b: &[f32], dst: &mut [f32]) {
        let (mean, inv) = norm_stats(src);
        let n = dst.len();
        let (src, w, b) = (&src[..n], &w[..n], &b[..n]);
        for i in 0..n {
            dst[i] = (src[i] - mean) * inv * w[i] + b[i];
        }
    }
}

simd_dispatch! {
    /// Layer norm of one row in place.
    fn layer_norm_in_place(x: &mut [f32], w: &[f32], b: &[f32]) {
        let (mean, inv) = norm_stats(x);
        let n = x.len();
        let (w, b) = (&w[..n], &b[..n]);
        for i in 0..n {
            x[i] = (x[i] - mean) * inv * w[i] + b[i];
        }
    }
}

simd_dispatch! {
    /// Softmax over `row[..valid]`; `row[valid..]` (masked keys) set to 0.
    fn softmax(row: &mut [f32], valid: usize) {
        let (head, masked) = row.split_at_mut(valid);
        masked.fill(0.0);
        let mut acc = [f32::MIN; 16];
        let mut chunks = head.chunks_exact(16);
        for c in &mut chunks {
            for i in 0..16 {
                acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
            }
        }
        let max = chunks
            .remainder()
            .iter()
            .chain(acc.iter())
            .fold(f32::MIN, |m, &v| if v > m { v } else { m });
        for v in head.iter_mut() {
            *v = exp(*v - max);
        }
        let inv = 1.0 / sum(head);
        for v in head.iter_mut() {
            *v *= inv;
        }
    }
}

simd_dispatch! {
    /// `row += bias`, then quick GELU `x * sigmoid(1.702 x)` if `gelu`.
    fn bias_act(row: &mut [f32], bias: &[f32], gelu: bool) {
        let n = row.len();
        let bias = &bias[..n];
        if gelu {
            for i in 0..n {
                let v = row[i] + bias[i];
                row[i] = v / (1.0 + exp(-1.702 * v));
            }
        } else {
            for i in 0..n {
                row[i] += bias[i];
            }
        }
    }
}

simd_dispatch! {
    /// Quick GELU in place (no bias).
    fn gelu_in_place(row: &mut [f32]) {
        for v in row.iter_mut() {
            *v /= 1.0 + exp(-1.702 * *v);
        }
    }
}

/// Layer norm of every `d`-wide row of `src` into `dst`.
fn norm_rows(src: &[f32], norm: &Norm, dst: &mut [f32]) {
    let d = norm.w.len();
    let rows_per_task = (PAR_MIN_ELEMS / d).max(1);
    let task = |(s, o): (&[f32], &mut [f32])| {
        for (s, o) in s.chunks_exact(d).zip(o.chunks_exact_mut(d)) {
            layer_norm(s, &norm.w, &norm.b, o);
        }
    };
    if src.len() <= PAR_MIN_ELEMS {
        task((src, dst));
    } else {
        src.par_chunks(rows_per_task * d)
            .zip(dst.par_chunks_mut(rows_per_task * d))
            .for_each(task);
    }
}

// ---------------------------------------------------------------------------
// Matmuls.

/// `dst (+)= beta * lhs · rhs` on the calling thread, for row-major `dst`
/// and `lhs` (unit column stride) and any `rhs` strides.
///
/// SAFETY: every pointer must be valid for the extents its strides and
/// `m`, `n`, `k` describe, and `dst` must not overlap the operands.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm1(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    rhs: *const f32,
    rhs_cs: usize,
    rhs_rs: usize,
    beta: f32,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs,
        1,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        beta,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// A linear layer `y = x · wᵀ + b`. `w` is kept in the checkpoint's
/// `[n, k]` layout (out x in features, which gemm reads as a column-major
/// `[k, n]` matrix without packing it) unless `k > n`, where it is stored
/// transposed, `[k, n]` row-major: measured single-threaded, that is
/// 5-25% faster for the deep, narrow fc2 and projections at 50-400 rows
/// and no better elsewhere.
struct Lin {
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    n: usize,
    k: usize,
    /// `w` is `[k, n]` (transposed).
    kn: bool,
}

/// Output features `j0..j1` of a [`Lin`].
#[derive(Clone, Copy)]
struct LinRef<'a> {
    /// From the first element of output feature `j0`.
    w: &'a [f32],
    b: Option<&'a [f32]>,
    n: usize,
    k: usize,
    kn: bool,
    /// Distance between consecutive rows of the stored matrix.
    ld: usize,
}

impl Lin {
    /// From `w` in the checkpoint's `[n, k]` layout.
    fn new(w: Vec<f32>, b: Option<Vec<f32>>, n: usize, k: usize) -> Self {
        let kn = k > n;
        let w = if kn {
            let mut t = vec![0f32; n * k];
            for (j, row) in w.chunks_exact(k).enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    t[i * n + j] = v;
                }
            }
            t
        } else {
            w
        };
        Self { w, b, n, k, kn }
    }

    fn load(vb: VarBuilder, k: usize, n: usize, bias: bool) -> Result<Self> {
        let b = if bias {
            Some(values(&vb, n, "bias")?)
        } else {
            None
        };
        Ok(Self::new(values(&vb, (n, k), "weight")?, b, n, k))
    }

    /// The layers stacked along the output features (fused Q, K, V).
    fn stack(parts: Vec<Lin>) -> Self {
        let k = parts[0].k;
        let n = parts.iter().map(|p| p.n).sum();
        let mut w = Vec::with_capacity(n * k);
        let mut b = Vec::with_capacity(n);
        for p in &parts {
            assert!(
                !p.kn && p.k == k,
                "stacking needs [n, k] layers of one width"
            );
            w.extend_from_slice(&p.w);
            b.extend_from_slice(p.b.as_deref().expect("stacked layers have biases"));
        }
        Self::new(w, Some(b), n, k)
    }

    fn all(&self) -> LinRef<'_> {
        self.rows(0, self.n)
    }

    fn rows(&self, j0: usize, j1: usize) -> LinRef<'_> {
        assert!(j0 <= j1 && j1 <= self.n);
        let (w, ld) = if self.kn {
            (&self.w[j0..], self.n)
        } else {
            (&self.w[j0 * self.k..], self.k)
        };
        LinRef {
            w,
            b: self.b.as_ref().map(|b| &b[j0..j1]),
            n: j1 - j0,
            k: self.k,
            kn: self.kn,
            ld,
        }
    }
}

/// Where a linear layer writes: columns `col..col + n` of rows `ld` apart.
struct Out<'a> {
    buf: &'a mut [f32],
    ld: usize,
    col: usize,
    /// Add to what is there (a residual) instead of overwriting it.
    accumulate: bool,
}

impl<'a> Out<'a> {
    fn new(buf: &'a mut [f32], ld: usize) -> Self {
        Self {
            buf,
            ld,
            col: 0,
            accumulate: false,
        }
    }

    fn residual(buf: &'a mut [f32], ld: usize) -> Self {
        Self {
            accumulate: true,
            ..Self::new(buf, ld)
        }
    }
}

/// `out[r, col..col + n] (+)= x[r] · wᵀ + b`, then quick GELU if `gelu`,
/// for the `m` rows of `x` (`m x k`, contiguous).
///
/// The output columns are split into one block per thread, each a
/// single-threaded gemm followed by its bias/activation while the block is
/// in cache. Splitting by columns gives each thread its own slice of the
/// weights, which matters at small `m`, where streaming the weights from
/// memory is the cost.
fn linear(x: &[f32], m: usize, lin: LinRef, out: Out, gelu: bool) {
    let (n, k) = (lin.n, lin.k);
    if m == 0 || n == 0 {
        return;
    }
    let w_extent = if lin.kn {
        (k - 1) * lin.ld + n
    } else {
        (n - 1) * lin.ld + k
    };
    assert!(
        x.len() >= m * k
            && lin.w.len() >= w_extent
            && out.col + n <= out.ld
            && out.buf.len() >= (m - 1) * out.ld + out.col + n,
        "linear: operand sizes do not fit"
    );
    let threads = rayon::current_num_threads().max(1);
    let parts = if m * n * k < PAR_MIN_MACS {
        1
    } else {
        threads.min(n.div_ceil(16))
    };
    let chunk = n.div_ceil(parts).next_multiple_of(16).min(n);
    let parts = n.div_ceil(chunk);
    let (ld, col, accumulate) = (out.ld, out.col, out.accumulate);
    let dst = SharedOut(out.buf.as_mut_ptr());
    let run = |p: usize| {
        let (j0, j1) = (p * chunk, ((p + 1) * chunk).min(n));
        let base = dst.at(col + j0);
        // Output features j0..j1 of w: (pointer, column stride, row stride)
        // of the [k, j1 - j0] right-hand side.
        let (rhs, rhs_cs, rhs_rs) = if lin.kn {
            (lin.w[j0..].as_ptr(), 1, lin.ld)
        } else {
            (lin.w[j0 * lin.ld..].as_ptr(), lin.ld, 1)
        };
        // SAFETY: checked above: x holds m x k, w the k x n extent of its
        // strides, and the destination block (m rows ld apart, columns
        // col + j0 .. col + j1) lies inside out.buf; blocks of different
        // tasks are disjoint columns.
        unsafe {
            gemm1(
                m,
                j1 - j0,
                k,
                base,
                ld,
                accumulate,
                x.as_ptr(),
                k,
                rhs,
                rhs_cs,
                rhs_rs,
                1.0,
            );
        }
        for r in 0..m {
            // SAFETY: row r of this task's block, written by gemm above.
            let row = unsafe { std::slice::from_raw_parts_mut(base.add(r * ld), j1 - j0) };
            match lin.b {
                Some(b) => bias_act(row, &b[j0..j1], gelu),
                None if gelu => gelu_in_place(row),
                None => {}
            }
        }
    };
    if parts == 1 {
        run(0);
    } else {
        (0..parts).into_par_iter().for_each(run);
    }
}

// ---------------------------------------------------------------------------
// The transformer.

/// A sequence's rows in the stacked activations and the row it is pooled at.
struct Seq {
    start: usize,
    len: usize,
    pool: usize,
}

/// Which queries attention computes.
#[derive(Clone, Copy)]
enum Queries<'a> {
    /// Every row, Q read from the fused QKV rows.
    All,
    /// One row per sequence (its pooled row), Q given as `[S, D]`.
    Pooled(&'a [f32]),
}

/// Multi-head attention over `qkv` (rows `[q | k | v]`, each `d` wide),
/// written merged into `out` (rows `d` wide: all rows, or one per sequence).
#[allow(clippy::too_many_arguments)]
fn attention(
    qkv: &[f32],
    d: usize,
    heads: usize,
    seqs: &[Seq],
    causal: bool,
    queries: Queries,
    out: &mut [f32],
) {
    let hd = d / heads;
    let ld = 3 * d;
    let scale = (hd as f32).powf(-0.5);
    for (s, q) in seqs.iter().enumerate() {
        let out_rows = match queries {
            Queries::All => q.start + q.len,
            Queries::Pooled(qp) => {
                assert!(qp.len() >= (s + 1) * d);
                s + 1
            }
        };
        assert!(q.len > 0 && q.pool < q.len && qkv.len() >= (q.start + q.len) * ld);
        assert!(out.len() >= out_rows * d);
    }
    let dst = SharedOut(out.as_mut_ptr());
    (0..seqs.len() * heads).into_par_iter().for_each(|task| {
        let (s, h) = (task / heads, task % heads);
        let seq = &seqs[s];
        let rows = &qkv[seq.start * ld..];
        // (queries, their row stride, count, position of the first, output offset)
        let (q, q_ld, nq, pos0, o) = match queries {
            Queries::All => (&rows[h * hd..], ld, seq.len, 0, seq.start * d + h * hd),
            Queries::Pooled(qp) => (&qp[s * d + h * hd..], d, 1, seq.pool, s * d + h * hd),
        };
        let nk = if causal { pos0 + nq } else { seq.len };
        let mut p = vec![0f32; nq * nk];
        // SAFETY (both gemms): checked above that the sequence's rows lie in
        // qkv, the queries in q and the output rows in out; K and V of head
        // h are columns d + h*hd and 2d + h*hd of rows `ld` apart. Each task
        // writes its own head's columns of its own rows.
        unsafe {
            // p = scale * Q Kᵀ: rhs[c][j] = K[j][c].
            gemm1(
                nq,
                nk,
                hd,
                p.as_mut_ptr(),
                nk,
                false,
                q.as_ptr(),
                q_ld,
                rows.as_ptr().add(d + h * hd),
                ld,
                1,
                scale,
            );
        }
        for (i, row) in p.chunks_exact_mut(nk).enumerate() {
            softmax(row, if causal { pos0 + i + 1 } else { nk });
        }
        unsafe {
            // out = p V
            gemm1(
                nq,
                hd,
                nk,
                dst.at(o),
                d,
                false,
                p.as_ptr(),
                nk,
                rows.as_ptr().add(2 * d + h * hd),
                1,
                ld,
                1.0,
            );
        }
    });
}

struct Norm {
    w: Vec<f32>,
    b: Vec<f32>,
}

impl Norm {
    fn load(vb: VarBuilder, d: usize) -> Result<Self> {
        Ok(Self {
            w: values(&vb, d, "weight")?,
            b: values(&vb, d, "bias")?,
        })
    }
}

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

fn values(vb: &VarBuilder, shape: impl Into<Shape>, name: &str) -> Result<Vec<f32>> {
    Ok(vb.get(shape, name)?.flatten_all()?.to_vec1::<f32>()?)
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
            values(
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
            class: values(&e, d, "class_embedding")?,
            pos: values(&e.pp("position_embedding"), (tokens, d), "weight")?,
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
            token: values(
                &t.pp("embeddings.token_embedding"),
                (tc.vocab_size, d),
                "weight",
            )?,
            position: values(
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

    #[test]
    fn exp_is_accurate() {
        let mut worst = 0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1000.0) < 1e-37 && exp(1000.0) > 1e38);
    }

    #[test]
    fn row_kernels_match_plain_formulas() {
        let x: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 101) as f32 * 0.1 - 4.0)
            .collect();
        let w: Vec<f32> = (0..37).map(|i| 0.5 + i as f32 * 0.01).collect();
        let b: Vec<f32> = (0..37).map(|i| i as f32 * -0.02).collect();
        let mean = x.iter().sum::<f32>() / 37.0;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / 37.0;
        let mut out = vec![0f32; 37];
        layer_norm(&x, &w, &b, &mut out);
        let mut inplace = x.clone();
        layer_norm_in_place(&mut inplace, &w, &b);
        for i in 0..37 {
            let want = (x[i] - mean) / (var + LN_EPS).sqrt() * w[i] + b[i];
            assert!((out[i] - want).abs() < 1e-5 && out[i] == inplace[i]);
        }
        let mut row = x.clone();
        softmax(&mut row, 30);
        let m = x[..30].iter().cloned().fold(f32::MIN, f32::max);
        let z: f32 = x[..30].iter().map(|v| (v - m).exp()).sum();
        for i in 0..37 {
            let want = if i < 30 { (x[i] - m).exp() / z } else { 0.0 };
            assert!((row[i] - want).abs() < 1e-6);
        }
        let mut g = x.clone();
        bias_act(&mut g, &b, true);
        for i in 0..37 {
            let v = x[i] + b[i];
            let want = v / (1.0 + (-1.702 * v).exp());
            assert!((g[i] - want).abs() < 1e-6);
        }
    }
}
