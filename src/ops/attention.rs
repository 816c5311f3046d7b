//! Multi-head attention for CLIP's encoders, per (sequence, head) as two
//! single-threaded gemms that read Q, K and V in place from the fused QKV
//! rows and write the heads merged, the heads in parallel; causal or not,
//! for every row or only the pooled one of each sequence.

use rayon::prelude::*;

use super::linear::gemm1;
use super::rows::softmax;
use super::SharedOut;

/// A sequence's rows in the stacked activations and the row it is pooled at.
pub(crate) struct Seq {
    pub(crate) start: usize,
    pub(crate) len: usize,
    pub(crate) pool: usize,
}

/// Which queries attention computes.
#[derive(Clone, Copy)]
pub(crate) enum Queries<'a> {
    /// Every row, Q read from the fused QKV rows.
    All,
    /// One row per sequence (its pooled row), Q given as `[S, D]`.
    Pooled(&'a [f32]),
}

/// Multi-head attention over `qkv` (rows `[q | k | v]`, each `d` wide),
/// written merged into `out` (rows `d` wide: all rows, or one per sequence).
#[allow(clippy::too_many_arguments)]
pub(crate) fn attention(
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
