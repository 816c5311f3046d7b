//! The kernel layer the generators and CLIP run on: the ops candle lacks or
//! runs slowly on the CPU, each with a fast CPU kernel and a portable
//! version built from candle tensor ops, and the one switch between the two.
//!
//! The generators':
//!
//! - [`mobile`]: MobileStyleGAN's depthwise 3x3, fused styled
//!   depthwise-separable conv and inverse Haar DWT.
//! - [`fir`]: StyleGAN2's separable FIR resampling (`upfirdn2d`).
//! - [`conv`]: dense k x k convolution on gemm (StyleGAN2's convs).
//! - [`epilogue`]: scale, noise, bias, leaky ReLU and clamp in one pass
//!   (the tail of every styled conv of both generators).
//!
//! CLIP's (its CPU encoders, `clip::fast`, are built from them; the
//! portable path is candle-transformers' model):
//!
//! - [`linear`]: linear layers on gemm with the bias and quick GELU fused
//!   in, residual adds folded into the gemm, Q, K and V stacked into one.
//! - [`attention`]: multi-head attention read in place from the fused QKV
//!   rows, causal or not, for every row or only the pooled ones.
//! - [`rows`]: layer norm, softmax and quick GELU on rows.
//! - [`resize`]: area resampling with a centre crop (generator output to
//!   CLIP's input), sparse taps on the CPU, matrix products elsewhere.
//! - [`simd`]: kernels compiled for AVX2 + FMA and picked at run time, and
//!   the polynomial `exp` they share.
//!
//! Which path runs: the fast kernels are CPU-only (plain loops over
//! contiguous planes, parallel with rayon) and have no backward pass, so a
//! kernel takes its fast path only when every input is an f32 tensor on the
//! CPU, none of them carries a gradient, and this thread has not asked for
//! the portable path ([`force_portable`], or the [`Portable`] guard for a
//! scope). Everything else (CUDA, gradients, tests of the portable code on
//! the CPU) takes the portable path, which candle can differentiate. Checking
//! for gradients here, rather than trusting each caller to flip the switch,
//! is what keeps a training step from silently losing its gradient in a
//! kernel that cannot carry one. Tests check the two paths agree.

pub mod attention;
pub mod conv;
pub mod epilogue;
pub mod fir;
pub mod linear;
pub mod mobile;
pub mod resize;
pub mod rows;
pub mod simd;

pub use mobile::{
    depthwise3x3, depthwise3x3_portable, idwt_haar, idwt_haar_portable, noise_bias_lrelu,
    noise_bias_lrelu_portable, styled_dwsep_conv, DwSepParams,
};

use std::cell::Cell;

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use candle_nn::VarBuilder;

use crate::error::Result;

thread_local! {
    static FORCE_PORTABLE: Cell<bool> = const { Cell::new(false) };
}

/// Use the portable tensor-op versions even on the CPU, for calls made from
/// this thread (tests, benchmarks and debugging: this is how CPU runs check
/// the code path other devices take). Covers every kernel of this layer and
/// CLIP's fast path.
pub fn force_portable(on: bool) {
    FORCE_PORTABLE.with(|f| f.set(on));
}

/// Whether [`force_portable`] is on for this thread.
pub fn portable_forced() -> bool {
    FORCE_PORTABLE.with(Cell::get)
}

/// The portable (differentiable) path on this thread until dropped; restores
/// what was set before, so guards nest.
pub struct Portable {
    before: bool,
}

impl Portable {
    pub fn on() -> Self {
        let before = portable_forced();
        force_portable(true);
        Self { before }
    }
}

impl Drop for Portable {
    fn drop(&mut self) {
        force_portable(self.before);
    }
}

/// Whether the fast CPU kernels may run on these inputs (see the module
/// documentation): CPU, f32, no gradient, portable path not forced.
pub(crate) fn fast_path(inputs: &[&Tensor]) -> bool {
    !portable_forced()
        && inputs
            .iter()
            .all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && !t.track_op())
}

/// `(n, c, h, w)`: the shape every fast kernel's input has.
pub(crate) type Dims4 = (usize, usize, usize, usize);

/// A fast CPU kernel: one contiguous f32 `[n, c, h, w]` tensor in, new data
/// out. [`Kernel`] runs it as candle's `CustomOp1` (no backward pass).
pub(crate) trait Nchw: Send + Sync {
    /// The op's name in candle's errors.
    const NAME: &'static str;
    /// The output values and shape for input `x` of shape `dims`.
    fn run(&self, x: &[f32], dims: Dims4) -> candle_core::Result<(Vec<f32>, Shape)>;
}

/// A [`Nchw`] kernel as candle's `CustomOp1`: `t.apply_op1_no_bwd(&Kernel(&op))`.
pub(crate) struct Kernel<'a, K>(pub(crate) &'a K);

impl<K: Nchw> CustomOp1 for Kernel<'_, K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (out, shape) = self.0.run(contiguous_f32(s, l)?, l.shape().dims4()?)?;
        Ok((CpuStorage::F32(out), shape))
    }
}

/// The f32 values of a contiguous CPU tensor, as a fast kernel reads them.
fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(data) = s else {
        candle_core::bail!("expected f32 storage")
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => candle_core::bail!("expected a contiguous tensor"),
    }
}

/// The values of a small parameter tensor (weights, biases, noise) that a
/// fast kernel captures.
pub(crate) fn values(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?)
}

/// The f32 values of checkpoint tensor `name` of `shape` (a missing or
/// misshapen tensor is an error), as the CLIP kernels keep their weights.
pub(crate) fn checkpoint_values(
    vb: &VarBuilder,
    shape: impl Into<Shape>,
    name: &str,
) -> Result<Vec<f32>> {
    Ok(vb.get(shape, name)?.flatten_all()?.to_vec1::<f32>()?)
}

/// A raw pointer that may cross threads: tasks write disjoint regions.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Going through a method makes closures capture the whole wrapper (which
    /// is Sync), not its raw-pointer field.
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the allocation.
        unsafe { self.0.add(offset) }
    }
}

/// Leaky ReLU from tensor ops (slope < 1).
pub fn leaky_relu(x: &Tensor, slope: f32) -> Result<Tensor> {
    Ok(x.maximum(&(x * slope as f64)?)?)
}

/// What the kernels' tests (and other unit tests comparing two paths) share.
#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Tensor};

    /// Seeded N(0, 1) values of `shape` on the CPU.
    pub fn rand(seed: u64, shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        crate::rng::seeded_normal(seed, 1, n, &Device::Cpu)
            .unwrap()
            .reshape(shape)
            .unwrap()
    }

    /// The largest absolute difference of two tensors of one shape.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar()
            .unwrap()
    }

    /// The mean absolute value of a tensor.
    pub fn mean_abs(t: &Tensor) -> f32 {
        t.abs().unwrap().mean_all().unwrap().to_scalar().unwrap()
    }

    /// `f` with the portable path forced on this thread.
    pub fn portable<T>(f: impl FnOnce() -> T) -> T {
        let _portable = super::Portable::on();
        f()
    }

    #[test]
    fn fast_path_needs_cpu_f32_and_no_gradient() {
        let x = rand(1, &[2, 3]);
        assert!(super::fast_path(&[&x]));
        let v = candle_core::Var::from_tensor(&x).unwrap();
        let tracked = (v.as_tensor() * 2.0).unwrap();
        assert!(!super::fast_path(&[&x, &tracked]), "a gradient input");
        assert!(!super::fast_path(&[&x
            .to_dtype(candle_core::DType::F64)
            .unwrap()]));
        portable(|| assert!(!super::fast_path(&[&x])));
        assert!(super::fast_path(&[&x]), "the guard restores the switch");
    }
}
