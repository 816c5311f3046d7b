//! Linear layers on gemm with their epilogue fused (CLIP's encoders): one
//! gemm per layer split across threads by output columns, the bias and
//! quick GELU applied to each thread's block while it is in cache, residual
//! adds folded into the gemm (it accumulates into the residual stream), and
//! Q, K and V stacked into one layer ([`Lin::stack`]).

use candle_nn::VarBuilder;
use gemm::Parallelism;
use rayon::prelude::*;

use super::rows::{bias_act, gelu_in_place};
use super::{checkpoint_values, SharedOut};
use crate::error::Result;

/// Below this many multiply-adds a matmul runs on the calling thread:
/// waking the pool would cost more than the split saves.
const PAR_MIN_MACS: usize = 1 << 17;

/// `dst (+)= beta * lhs · rhs` on the calling thread, for row-major `dst`
/// and `lhs` (unit column stride) and any `rhs` strides.
///
/// SAFETY: every pointer must be valid for the extents its strides and
/// `m`, `n`, `k` describe, and `dst` must not overlap the operands.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm1(
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
pub(crate) struct Lin {
    w: Vec<f32>,
    b: Option<Vec<f32>>,
    pub(crate) n: usize,
    pub(crate) k: usize,
    /// `w` is `[k, n]` (transposed).
    kn: bool,
}

/// Output features `j0..j1` of a [`Lin`].
#[derive(Clone, Copy)]
pub(crate) struct LinRef<'a> {
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
    pub(crate) fn new(w: Vec<f32>, b: Option<Vec<f32>>, n: usize, k: usize) -> Self {
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

    pub(crate) fn load(vb: VarBuilder, k: usize, n: usize, bias: bool) -> Result<Self> {
        let b = if bias {
            Some(checkpoint_values(&vb, n, "bias")?)
        } else {
            None
        };
        Ok(Self::new(
            checkpoint_values(&vb, (n, k), "weight")?,
            b,
            n,
            k,
        ))
    }

    /// The layers stacked along the output features (fused Q, K, V).
    pub(crate) fn stack(parts: Vec<Lin>) -> Self {
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

    pub(crate) fn all(&self) -> LinRef<'_> {
        self.rows(0, self.n)
    }

    pub(crate) fn rows(&self, j0: usize, j1: usize) -> LinRef<'_> {
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
pub(crate) struct Out<'a> {
    pub(crate) buf: &'a mut [f32],
    pub(crate) ld: usize,
    pub(crate) col: usize,
    /// Add to what is there (a residual) instead of overwriting it.
    pub(crate) accumulate: bool,
}

impl<'a> Out<'a> {
    pub(crate) fn new(buf: &'a mut [f32], ld: usize) -> Self {
        Self {
            buf,
            ld,
            col: 0,
            accumulate: false,
        }
    }

    pub(crate) fn residual(buf: &'a mut [f32], ld: usize) -> Self {
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
pub(crate) fn linear(x: &[f32], m: usize, lin: LinRef, out: Out, gelu: bool) {
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
