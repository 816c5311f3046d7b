//! MobileStyleGAN (FFHQ, 1024 px) as native candle code.
//!
//! The structure mirrors the exported graph, which is the ground truth for
//! these weights (an earlier revision of the MobileStyleGAN code than its
//! current files):
//!
//! - mapping: pixel norm, then 8 x (linear, leaky ReLU 0.2, gain sqrt 2);
//! - synthesis: a constant 512x4x4 input; a dense modulated 3x3 conv; then 7
//!   blocks of (modulated inverse Haar DWT upsampler, two modulated
//!   depthwise-separable convs); a modulated 1x1 "to_img" to 12 wavelet
//!   channels (3 colours x 4 sub-bands) at 512 px; a final inverse DWT to
//!   1024 px.
//!
//! Sizes come from the weight shapes, not from constants: `w_dim` and `z_dim`
//! from the mapping layers, the channel widths from each block's tensors, the
//! number of blocks from the tensor names (resolution `4 * 2^(blocks + 1)`,
//! `3 * blocks + 2` styles). The FFHQ weights give the numbers above;
//! [`super::random`] writes small random weight sets of the same layout for
//! tests.
//! - A styled conv is `lrelu(pw(dw(x * s)) + noise + bias)`, where `s` is the
//!   style's affine projection times a constant gain. Demodulation, weight
//!   gains and noise strengths were folded into the constants at export.
//!
//! Style indices in W+ (23) follow the original code: 0 for the first conv,
//! `3i+1` for block i's upsampler and first conv, `3i+2` for its second conv,
//! `3i+3` for its to_img (only the last block's is in the graph). Index 1 is
//! also the skipped first to_img, and index 22 is not used by this network.
//!
//! Speed: the style modulation is folded into the depthwise kernel (one
//! 3x3 kernel per sample and channel), the pointwise conv is one batched
//! matmul, and noise + bias + activation run as one in-place pass.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Shape, Tensor, D};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::convert::{LEAKY_SLOPE, MAPPING_GAIN, PIXEL_NORM_EPS};
use crate::error::{Error, Result};
use crate::generator::{seeded_normal, Generator, NoiseMode};
use crate::ops;

pub const MAPPING_FILE: &str = "mapping.safetensors";
pub const SYNTHESIS_FILE: &str = "synthesis.safetensors";
/// Styles of the FFHQ network (7 blocks); other weight sets have `3 * blocks + 2`.
pub const NUM_STYLES: usize = 23;
/// Metadata key naming the generator in `synthesis.safetensors` (its `Generator::id`).
pub const GENERATOR_META_KEY: &str = "generator";
/// The id of the FFHQ weights, also used when a file carries no metadata.
pub const FFHQ_ID: &str = "mobilestylegan-ffhq";

/// One weight file as a candle [`VarBuilder`] backend: its tensors, read as
/// f32, checked against the shape asked for, where `0` stands for any size
/// (the sizes are read off the weights); errors name the file and tensor.
struct WeightFile {
    /// The file's name, for errors.
    file: String,
    tensors: HashMap<String, Tensor>,
}

impl SimpleBackend for WeightFile {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let t = self.get_unchecked(name, dtype, dev)?;
        let want = shape.dims();
        let ok =
            t.rank() == want.len() && t.dims().iter().zip(want).all(|(a, b)| *b == 0 || a == b);
        if !ok {
            candle_core::bail!(
                "{}: tensor `{name}` has shape {:?}, expected {want:?}",
                self.file,
                t.dims()
            );
        }
        Ok(t)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match self.tensors.get(name) {
            Some(t) => t.to_dtype(dtype)?.to_device(dev),
            None => candle_core::bail!("{}: tensor `{name}` is missing", self.file),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }
}

/// `path` as a [`VarBuilder`] (f32 on `device`), and the file's metadata.
fn open(path: &Path, device: &Device) -> Result<(VarBuilder<'static>, HashMap<String, String>)> {
    if !path.exists() {
        return Err(Error::MissingWeights {
            path: path.to_path_buf(),
            hint:
                "Run `clip2gan fetch` to download and convert them (or see README.md, \"Models\")."
                    .into(),
        });
    }
    let bytes = std::fs::read(path).map_err(|err| Error::Read {
        path: path.to_path_buf(),
        err,
    })?;
    let crate::tensorfile::TensorFile { tensors, metadata } =
        crate::tensorfile::decode(&bytes, device).map_err(|e| Error::BadWeights {
            file: path.display().to_string(),
            detail: format!("cannot read safetensors: {e}"),
        })?;
    let file = path.file_name().map_or_else(
        || path.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let backend = WeightFile { file, tensors };
    Ok((
        VarBuilder::from_backend(Box::new(backend), DType::F32, device.clone()),
        metadata,
    ))
}

/// The one-element tensor `name` as a number.
fn scalar(vb: &VarBuilder, name: &str) -> candle_core::Result<f32> {
    Ok(vb.get(1, name)?.to_vec1::<f32>()?[0])
}

/// `s = (W w + b) * scale`: a style vector's per-channel modulation.
struct StyleAffine {
    weight_t: Tensor, // [w_dim, C], transposed once at load
    bias: Tensor,     // [C]
    scale: f64,
}

impl StyleAffine {
    /// `vb` at `<module>.modulation`; `scaled`: it has a constant gain.
    fn new(vb: VarBuilder, w_dim: usize, scaled: bool) -> candle_core::Result<Self> {
        let weight = vb.get((0, w_dim), "weight")?;
        let c = weight.dim(0)?;
        Ok(Self {
            weight_t: weight.t()?.contiguous()?,
            bias: vb.get(c, "bias")?,
            scale: if scaled {
                scalar(&vb, "scale")? as f64
            } else {
                1.0
            },
        })
    }

    fn channels(&self) -> usize {
        self.bias.dims()[0]
    }

    /// `w [n, w_dim]` -> `[n, C]`.
    fn forward(&self, w: &Tensor) -> Result<Tensor> {
        let s = w.matmul(&self.weight_t)?.broadcast_add(&self.bias)?;
        Ok(if self.scale == 1.0 {
            s
        } else {
            (s * self.scale)?
        })
    }
}

/// Noise buffer of a layer plus its strength, for random noise.
struct Noise {
    fixed: Tensor, // [1, 1, H, W], already scaled
    std: f64,
}

impl Noise {
    /// `vb` at `<module>.noise`.
    fn new(vb: VarBuilder, size: usize) -> candle_core::Result<Self> {
        let fixed = vb.get((1, 1, size, size), "noise")?;
        // The exporter stored strength * N(0, 1): its std recovers the strength.
        let std = fixed
            .flatten_all()?
            .sqr()?
            .mean_all()?
            .to_scalar::<f32>()?
            .sqrt() as f64;
        Ok(Self { fixed, std })
    }

    fn tensor(&self, mode: NoiseMode, n: usize, layer: u64) -> Result<Tensor> {
        match mode {
            NoiseMode::Fixed => Ok(self.fixed.clone()),
            NoiseMode::Random(seed) => {
                let (h, w) = (self.fixed.dim(2)?, self.fixed.dim(3)?);
                let stream = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(layer);
                let z = seeded_normal(stream, n, h * w, self.fixed.device())?;
                Ok((z * self.std)?.reshape((n, 1, h, w))?)
            }
        }
    }
}

/// Modulated depthwise-separable conv with noise, bias and leaky ReLU.
struct StyledDwConv {
    affine: StyleAffine,
    weight_dw: Tensor, // [Cin, 9]
    weight_pw: Tensor, // [Cout, Cin]
    noise: Noise,
    bias: Tensor, // [Cout]
}

impl StyledDwConv {
    /// `vb` at the module (`layers.{i}.conv1`, ...).
    fn new(vb: VarBuilder, w_dim: usize, size: usize) -> candle_core::Result<Self> {
        let conv = vb.pp("conv");
        let affine = StyleAffine::new(conv.pp("modulation"), w_dim, true)?;
        let cin = affine.channels();
        let weight_pw = conv.get((0, cin), "weight_pw")?;
        let cout = weight_pw.dim(0)?;
        Ok(Self {
            weight_dw: conv.get((cin, 1, 3, 3), "weight_dw")?.reshape((cin, 9))?,
            weight_pw,
            noise: Noise::new(vb.pp("noise"), size)?,
            bias: vb.get(cout, "bias")?,
            affine,
        })
    }

    fn forward(&self, x: &Tensor, w: &Tensor, noise: NoiseMode, layer: u64) -> Result<Tensor> {
        let n = x.dim(0)?;
        let s = self.affine.forward(w)?; // [n, cin]
                                         // (x * s) conv k == x conv (k * s): fold the style into the kernel.
        let k = self
            .weight_dw
            .unsqueeze(0)?
            .broadcast_mul(&s.unsqueeze(2)?)?;
        let noise = self.noise.tensor(noise, n, layer)?;
        ops::styled_dwsep_conv(
            x,
            &ops::DwSepParams {
                k_dw: &k,
                w_pw: &self.weight_pw,
                noise: &noise,
                bias: &self.bias,
                slope: LEAKY_SLOPE,
            },
        )
    }
}

/// The first, dense modulated 3x3 conv on the constant input.
struct FirstConv {
    input: Tensor, // [1, C, 4, 4]
    affine: StyleAffine,
    weight: Tensor, // [C, C, 3, 3]
    noise: Noise,
    bias: Tensor,
}

impl FirstConv {
    fn forward(&self, w: &Tensor, noise: NoiseMode) -> Result<Tensor> {
        let n = w.dim(0)?;
        let s = self.affine.forward(w)?;
        let x = self.input.broadcast_mul(&s.unsqueeze(2)?.unsqueeze(3)?)?;
        let y = x.conv2d(&self.weight, 1, 1, 1, 1)?;
        ops::noise_bias_lrelu(y, &self.noise.tensor(noise, n, 0)?, &self.bias, LEAKY_SLOPE)
    }
}

struct Block {
    up: StyleAffine,
    conv1: StyledDwConv,
    conv2: StyledDwConv,
}

struct ToImg {
    affine: StyleAffine,
    weight: Tensor, // [12, C]
    bias: Tensor,   // [12]
}

pub struct MobileStyleGan {
    id: String,
    device: Device,
    z_dim: usize,
    w_dim: usize,
    mapping: Vec<(Tensor, Tensor)>, // (weight^T [in, w_dim], bias [w_dim])
    w_avg: Tensor,
    first: FirstConv,
    blocks: Vec<Block>,
    to_img: ToImg,
    /// Images per pass through the blocks from [`HIGH_RES_FROM`] px on
    /// (0: the whole batch); see [`MobileStyleGan::with_high_res_chunk`].
    high_res_chunk: usize,
}

/// Side (px) from which a block's activations are large enough that
/// batching them costs memory without saving time: a 1024 px image needs
/// about 165 MB of working memory, nearly all in the blocks at 256 and 512
/// px, whose convolutions are as fast one image at a time.
pub const HIGH_RES_FROM: usize = 128;

impl MobileStyleGan {
    /// Run the blocks from [`HIGH_RES_FROM`] px on `images` images at a
    /// time (0: the whole batch). The low-resolution blocks, where
    /// batching pays (small images, wide channels), still see the whole
    /// batch; the peak memory of a batch of `n` becomes about that of
    /// `min(n, images)` images plus the low-resolution activations of `n`.
    pub fn with_high_res_chunk(mut self, images: usize) -> Self {
        self.high_res_chunk = images;
        self
    }

    /// Load `mapping.safetensors` and `synthesis.safetensors` from `dir`.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (mapping, _) = open(&dir.join(MAPPING_FILE), device)?;
        let (synthesis, metadata) = open(&dir.join(SYNTHESIS_FILE), device)?;
        let id = metadata
            .get(GENERATOR_META_KEY)
            .cloned()
            .unwrap_or_else(|| FFHQ_ID.to_string());
        // The weight files' errors name the file and the tensor.
        Self::new(mapping, synthesis, id).map_err(|e| Error::BadWeights {
            file: dir.display().to_string(),
            detail: e.to_string(),
        })
    }

    /// The network from its two weight files: the mapping's tensors
    /// (`layers.{i}.{weight,bias}`, `w_avg`) and the synthesis'
    /// (`input.input`, `conv1.*`, `layers.{i}.{up,conv1,conv2}.*`, the last
    /// block's `to_img.*`).
    pub fn new(
        mapping: VarBuilder,
        synthesis: VarBuilder,
        id: String,
    ) -> candle_core::Result<Self> {
        let device = synthesis.device().clone();
        let (w_dim, z_dim) = mapping.get((0, 0), "layers.0.weight")?.dims2()?;
        let mut layers = Vec::new();
        while mapping.contains_tensor(&format!("layers.{}.weight", layers.len())) {
            let l = mapping.pp(format!("layers.{}", layers.len()));
            let fan_in = if layers.is_empty() { z_dim } else { w_dim };
            let w = l.get((w_dim, fan_in), "weight")?;
            layers.push((w.t()?.contiguous()?, l.get(w_dim, "bias")?));
        }
        let w_avg = mapping.get(w_dim, "w_avg")?;

        let s = synthesis;
        let input = s.get((1, 0, 4, 4), "input.input")?;
        let c0 = input.dim(1)?;
        let conv1 = s.pp("conv1");
        let first = FirstConv {
            input,
            affine: StyleAffine::new(conv1.pp("conv.modulation"), w_dim, true)?,
            weight: conv1.get((c0, c0, 3, 3), "conv.weight")?,
            noise: Noise::new(conv1.pp("noise"), 4)?,
            bias: conv1.get(c0, "bias")?,
        };
        let mut blocks = Vec::new();
        while s.contains_tensor(&format!("layers.{}.up.modulation.weight", blocks.len())) {
            let l = s.pp(format!("layers.{}", blocks.len()));
            let size = 8 << blocks.len();
            blocks.push(Block {
                up: StyleAffine::new(l.pp("up.modulation"), w_dim, false)?,
                conv1: StyledDwConv::new(l.pp("conv1"), w_dim, size)?,
                conv2: StyledDwConv::new(l.pp("conv2"), w_dim, size)?,
            });
        }
        if blocks.is_empty() {
            candle_core::bail!(
                "{SYNTHESIS_FILE}: no synthesis blocks (`layers.0.up.modulation.weight`)"
            );
        }
        let t = s.pp(format!("layers.{}.to_img", blocks.len() - 1));
        let affine = StyleAffine::new(t.pp("conv.modulation"), w_dim, true)?;
        let c = affine.channels();
        let to_img = ToImg {
            weight: t.get((12, c), "conv.weight")?,
            bias: t.get(12, "bias")?,
            affine,
        };
        // Channel counts must chain: the upsampler turns 4C into C.
        let mut c = c0;
        for (i, b) in blocks.iter().enumerate() {
            if b.up.channels() != c || c % 4 != 0 || b.conv1.affine.channels() != c / 4 {
                candle_core::bail!(
                    "{SYNTHESIS_FILE}: block {i}: channel counts do not chain ({c} in)"
                );
            }
            c = b.conv2.weight_pw.dim(0)?;
        }
        if to_img.affine.channels() != c {
            candle_core::bail!(
                "{SYNTHESIS_FILE}: to_img takes {} channels, the last block gives {c}",
                to_img.affine.channels()
            );
        }
        Ok(Self {
            id,
            device,
            z_dim,
            w_dim,
            mapping: layers,
            w_avg,
            first,
            blocks,
            to_img,
            high_res_chunk: 0,
        })
    }

    /// Channel widths: the constant input's, then each block's output.
    pub fn channels(&self) -> Vec<usize> {
        let mut c = vec![self.first.bias.dims()[0]];
        c.extend(self.blocks.iter().map(|b| b.conv2.bias.dims()[0]));
        c
    }

    fn style(wplus: &Tensor, i: usize) -> Result<Tensor> {
        Ok(wplus.narrow(1, i, 1)?.squeeze(1)?)
    }
}

/// Mapping network on its own, used by `fetch` to compute `w_avg` before the
/// synthesis weights are loaded.
pub fn map_z(layers: &[(Tensor, Tensor)], z: &Tensor) -> Result<Tensor> {
    let norm = (z.sqr()?.mean_keepdim(D::Minus1)? + PIXEL_NORM_EPS as f64)?.sqrt()?;
    let mut x = z.broadcast_div(&norm)?;
    for (w_t, b) in layers {
        let y = x.matmul(w_t)?.broadcast_add(b)?;
        x = (ops::leaky_relu(&y, LEAKY_SLOPE)? * MAPPING_GAIN as f64)?;
    }
    Ok(x)
}

impl Generator for MobileStyleGan {
    fn id(&self) -> &str {
        &self.id
    }
    fn z_dim(&self) -> usize {
        self.z_dim
    }
    fn w_dim(&self) -> usize {
        self.w_dim
    }
    fn num_styles(&self) -> usize {
        3 * self.blocks.len() + 2
    }
    fn resolution(&self) -> usize {
        4 << (self.blocks.len() + 1)
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn w_avg(&self) -> &Tensor {
        &self.w_avg
    }

    fn map(&self, z: &Tensor) -> Result<Tensor> {
        crate::generator::check_z(z, self.z_dim)?;
        map_z(&self.mapping, &z.to_dtype(DType::F32)?)
    }

    fn synthesize(&self, wplus: &Tensor, noise: NoiseMode) -> Result<Tensor> {
        let (_, k, d) = wplus.dims3()?;
        let (styles, w_dim) = (self.num_styles(), self.w_dim);
        if k != styles || d != w_dim {
            return Err(Error::invalid(format!(
                "W+ must be [n, {styles}, {w_dim}], got {:?}",
                wplus.dims()
            )));
        }
        let wplus = wplus.to_dtype(DType::F32)?;
        let n = wplus.dim(0)?;
        let mut x = self.first.forward(&Self::style(&wplus, 0)?, noise)?;
        // Blocks below HIGH_RES_FROM px on the whole batch; block i outputs
        // 8 << i px.
        let split = (0..self.blocks.len())
            .find(|i| 8 << i >= HIGH_RES_FROM)
            .unwrap_or(self.blocks.len());
        x = self.blocks_forward(x, &wplus, 0..split, noise)?;
        // Random noise is drawn per call for the call's whole batch, so a
        // chunk would get other noise than its images get in the batch:
        // that mode (`generate --noise random` only) runs the batch whole.
        let chunk = match (self.high_res_chunk, noise) {
            (0, _) | (_, NoiseMode::Random(_)) => n,
            (c, NoiseMode::Fixed) => c.min(n),
        };
        if chunk >= n {
            let x = self.blocks_forward(x, &wplus, split..self.blocks.len(), noise)?;
            return self.to_image(&x, &wplus);
        }
        let mut out = Vec::with_capacity(n.div_ceil(chunk));
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let w = wplus.narrow(0, start, len)?;
            let xi = self.blocks_forward(
                x.narrow(0, start, len)?,
                &w,
                split..self.blocks.len(),
                noise,
            )?;
            out.push(self.to_image(&xi, &w)?);
        }
        Ok(Tensor::cat(&out, 0)?)
    }
}

impl MobileStyleGan {
    /// Blocks `range` on `x`, with their styles from `wplus`.
    fn blocks_forward(
        &self,
        mut x: Tensor,
        wplus: &Tensor,
        range: std::ops::Range<usize>,
        noise: NoiseMode,
    ) -> Result<Tensor> {
        for i in range {
            let b = &self.blocks[i];
            let w1 = Self::style(wplus, 3 * i + 1)?;
            let w2 = Self::style(wplus, 3 * i + 2)?;
            x = ops::idwt_haar(&x, Some(&b.up.forward(&w1)?))?;
            x = b.conv1.forward(&x, &w1, noise, 2 * i as u64 + 1)?;
            x = b.conv2.forward(&x, &w2, noise, 2 * i as u64 + 2)?;
        }
        Ok(x)
    }

    /// The last block's output to the image: to_img, then the inverse DWT.
    fn to_image(&self, x: &Tensor, wplus: &Tensor) -> Result<Tensor> {
        let w_img = Self::style(wplus, 3 * (self.blocks.len() - 1) + 3)?;
        let (n, c, h, wd) = x.dims4()?;
        let s = self.to_img.affine.forward(&w_img)?; // [n, c]
        let k = self
            .to_img
            .weight
            .unsqueeze(0)?
            .broadcast_mul(&s.unsqueeze(1)?)?; // [n, 12, c]
        let freq = k
            .matmul(&x.reshape((n, c, h * wd))?)?
            .broadcast_add(&self.to_img.bias.reshape((1, 12, 1))?)?
            .reshape((n, 12, h, wd))?;
        ops::idwt_haar(&freq, None)
    }
}
