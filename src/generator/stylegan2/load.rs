//! Reading StyleGAN2 checkpoints into one neutral description of the network
//! (raw parameters, before their run-time gains, in NVIDIA's conventions).
//!
//! Two tensor layouts are recognised, in `.pt` and `.safetensors` files alike:
//!
//! - **NVIDIA** (stylegan2-ada-pytorch, stylegan3's StyleGAN2, and the
//!   official TF weights after NVIDIA's `legacy.py`): `mapping.fc{i}.*`,
//!   `mapping.w_avg`, `synthesis.b{res}.{const,conv0,conv1,torgb}.*`.
//!   `.pkl` files hold pickled Python classes; convert them first with
//!   `tools/stylegan2_to_safetensors.py`.
//! - **rosinality** (stylegan2-pytorch): `style.{i}.*`, `input.input`,
//!   `conv1`, `to_rgb1`, `convs.{j}`, `to_rgbs.{k}`, `noises.noise_{j}`;
//!   in a `.pt` under the `g_ema` key, with `latent_avg` next to it.
//!
//! Everything (resolution, mapping depth, z/w sizes, channels per block) is
//! read off the tensor shapes. Settings that no tensor records (ADA's
//! `conv_clamp`, the mapping learning-rate multiplier) come from safetensors
//! metadata as the converter writes it, then from the configuration, else
//! from NVIDIA's defaults (no clamp, 0.01).

use std::collections::{BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::generator::seeded_normal;
use crate::ops::fir::FILTER_1331;

/// The mapping network's default learning-rate multiplier (NVIDIA's and
/// rosinality's `lr_mlp`); it scales the stored weights at run time.
pub const DEFAULT_MAPPING_LR: f64 = 0.01;

/// Which tensor names a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    Nvidia,
    Rosinality,
}

/// The shape of a StyleGAN2 generator, as read from a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Arch {
    pub resolution: usize,
    pub z_dim: usize,
    pub w_dim: usize,
    /// Width of each mapping layer's output (the last is `w_dim`).
    pub mapping_dims: Vec<usize>,
    /// Feature maps of each block, from 4 px up to `resolution`.
    pub channels: Vec<usize>,
    pub mapping_lr: f64,
    /// ADA's clamp of conv outputs to +-X.
    pub conv_clamp: Option<f32>,
}

impl Arch {
    /// Channels per block for rosinality's `channel_multiplier` (NVIDIA's
    /// `channel_base = 16384 * multiplier`, `channel_max = 512`).
    pub fn channels_for(resolution: usize, multiplier: usize) -> Vec<usize> {
        block_resolutions(resolution)
            .map(|r| (16384 * multiplier / r).min(512))
            .collect()
    }

    /// StyleGAN2 config-f: z = w = 512, 8 mapping layers, channel multiplier 2.
    pub fn config_f(resolution: usize) -> Result<Self> {
        check_resolution(resolution)?;
        Ok(Self {
            resolution,
            z_dim: 512,
            w_dim: 512,
            mapping_dims: vec![512; 8],
            channels: Self::channels_for(resolution, 2),
            mapping_lr: DEFAULT_MAPPING_LR,
            conv_clamp: None,
        })
    }

    /// Style vectors in W+: two per block (conv1 and ToRGB for 4 px, conv0
    /// sharing the previous ToRGB's, conv1, ToRGB after that).
    pub fn num_ws(&self) -> usize {
        2 * self.channels.len()
    }

    /// Noise inputs / modulated 3x3 convs: 1 + 2 per block above 4 px.
    pub fn num_convs(&self) -> usize {
        2 * self.channels.len() - 1
    }

    /// Resolution of conv layer `j` (0 = the 4 px conv, then conv0 / conv1
    /// of each block).
    pub fn conv_resolution(j: usize) -> usize {
        4 << j.div_ceil(2)
    }
}

/// Powers of two from 4 up to `resolution`.
pub fn block_resolutions(resolution: usize) -> impl Iterator<Item = usize> {
    (2..=resolution.max(4).ilog2()).map(|i| 1usize << i)
}

/// A resolution a StyleGAN2 synthesis network can have.
pub fn check_resolution(resolution: usize) -> Result<()> {
    if !resolution.is_power_of_two() || !(4..=4096).contains(&resolution) {
        return Err(Error::invalid(format!(
            "resolution {resolution} is not a power of two between 4 and 4096 (StyleGAN2 doubles the size per block from 4x4)"
        )));
    }
    Ok(())
}

/// Settings from the configuration that constrain or complete a checkpoint.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Refuse a checkpoint of another resolution.
    pub resolution: Option<usize>,
    /// Refuse a checkpoint whose channels differ from this multiplier's.
    pub channel_multiplier: Option<usize>,
    /// Override the conv clamp: `Some(0.0)` disables it.
    pub conv_clamp: Option<f64>,
}

/// One modulated 3x3 conv layer's raw parameters.
pub(crate) struct RawConv {
    pub affine_w: Tensor, // [c_in, w_dim]
    pub affine_b: Tensor, // [c_in]
    pub weight: Tensor,   // [c_out, c_in, 3, 3]
    pub bias: Tensor,     // [c_out]
    /// The constant noise buffer `[1, 1, r, r]` and its strength.
    pub noise: Option<(Tensor, f32)>,
}

/// One ToRGB layer's raw parameters.
pub(crate) struct RawRgb {
    pub affine_w: Tensor, // [c_in, w_dim]
    pub affine_b: Tensor, // [c_in]
    pub weight: Tensor,   // [3, c_in, 1, 1]
    pub bias: Tensor,     // [3]
}

/// A whole generator, read and checked, not yet on its device.
pub(crate) struct RawParams {
    pub arch: Arch,
    pub naming: Naming,
    pub mapping: Vec<(Tensor, Tensor)>, // ([out, in], [out])
    pub w_avg: Option<Tensor>,          // [w_dim]
    pub constant: Tensor,               // [1, c, 4, 4]
    pub convs: Vec<RawConv>,
    pub rgbs: Vec<RawRgb>,
}

/// The tensors (f32, CPU) and metadata of one checkpoint file.
pub struct Checkpoint {
    file: String,
    tensors: HashMap<String, Tensor>,
    metadata: HashMap<String, String>,
}

const CONVERT_HINT: &str =
    "convert it with tools/stylegan2_to_safetensors.py (see README.md, \"StyleGAN2 generators\")";

impl Checkpoint {
    /// Read a `.pt`/`.pth` (PyTorch zip, state dict or `{"g_ema": ...}`) or
    /// `.safetensors` file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = path.display().to_string();
        if !path.exists() {
            return Err(Error::MissingWeights {
                path: path.to_path_buf(),
                hint: "Set generator.checkpoint to a StyleGAN2 checkpoint: a .pt (rosinality's, with g_ema) or a .safetensors (see README.md, \"StyleGAN2 generators\").".into(),
            });
        }
        let bad = |detail: String| Error::BadCheckpoint {
            file: file.clone(),
            detail,
        };
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if ext == "pkl" {
            return Err(bad(format!(
                "NVIDIA .pkl files hold pickled Python classes that only NVIDIA's code can load; {CONVERT_HINT}"
            )));
        }
        let mut magic = [0u8; 4];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut magic))
            .map_err(|err| Error::Read {
                path: path.to_path_buf(),
                err,
            })?;
        if ext == "safetensors" || (ext != "pt" && ext != "pth" && &magic[..n.min(2)] != b"PK") {
            let tensors = candle_core::safetensors::load(path, &Device::Cpu)
                .map_err(|e| bad(format!("cannot read safetensors: {e}")))?;
            let metadata = safetensors_metadata(path).map_err(bad)?;
            return Ok(Self {
                file,
                tensors,
                metadata,
            });
        }
        if &magic[..n.min(2)] != b"PK" {
            return Err(bad(format!(
                "not a PyTorch zip checkpoint (torch.save writes zip archives since PyTorch 1.6): re-save it with a recent PyTorch, or {CONVERT_HINT}"
            )));
        }
        let read = |key: Option<&str>| -> Result<HashMap<String, Tensor>> {
            let pth = candle_core::pickle::PthTensors::new(path, key)
                .map_err(|e| bad(format!("cannot read the PyTorch checkpoint: {e}")))?;
            let mut out = HashMap::new();
            for name in pth.tensor_infos().keys() {
                let t = pth
                    .get(name)
                    .map_err(|e| bad(format!("cannot read tensor `{name}`: {e}")))?;
                if let Some(t) = t {
                    out.insert(name.clone(), t);
                }
            }
            Ok(out)
        };
        let top = read(None)?;
        let mut tensors =
            if detect(&top).is_some() {
                top.clone()
            } else {
                match read(Some("g_ema")) {
                    Ok(t) => t,
                    Err(_) => return Err(bad(unknown_layout(
                        &top,
                        "the file has no `g_ema` entry and no generator tensors at its top level",
                    ))),
                }
            };
        // rosinality keeps the truncation centre next to the state dict.
        if let Some(avg) = top.get("latent_avg") {
            tensors
                .entry("latent_avg".into())
                .or_insert_with(|| avg.clone());
        }
        Ok(Self {
            file,
            tensors,
            metadata: HashMap::new(),
        })
    }

    /// A checkpoint from tensors already in memory (random weights, tests).
    pub fn from_tensors(
        name: &str,
        tensors: HashMap<String, Tensor>,
        metadata: HashMap<String, String>,
    ) -> Self {
        Self {
            file: name.into(),
            tensors,
            metadata,
        }
    }

    pub fn file(&self) -> &str {
        &self.file
    }

    pub fn tensors(&self) -> &HashMap<String, Tensor> {
        &self.tensors
    }

    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    fn bad(&self, detail: String) -> Error {
        Error::BadCheckpoint {
            file: self.file.clone(),
            detail,
        }
    }

    fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Dims of a tensor, if present.
    fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.tensors.get(name).map(|t| t.dims().to_vec())
    }

    /// The named tensor as f32 in `shape`. Layouts differ only by size-1
    /// dimensions (`[1, O, I, k, k]` vs `[O, I, k, k]`, a bias `[1, 3, 1, 1]`
    /// vs `[3]`), so shapes are compared without them.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.tensors.get(name).ok_or_else(|| {
            self.bad(format!(
                "tensor `{name}` is missing; the checkpoint is incomplete or of another architecture"
            ))
        })?;
        let squeeze = |d: &[usize]| d.iter().copied().filter(|&x| x != 1).collect::<Vec<_>>();
        if squeeze(t.dims()) != squeeze(shape) {
            return Err(self.bad(format!(
                "tensor `{name}` has shape {:?}, expected {shape:?} (channel counts must chain from block to block)",
                t.dims()
            )));
        }
        Ok(t.to_dtype(DType::F32)?.reshape(shape)?)
    }

    fn scalar(&self, name: &str) -> Result<f32> {
        Ok(self.get(name, &[1])?.to_vec1::<f32>()?[0])
    }

    /// Keys under `g_ema.` / `G_ema.` when a whole training state was saved.
    fn strip_ema_prefix(&mut self) {
        for prefix in ["g_ema.", "G_ema."] {
            if self.tensors.keys().any(|k| k.starts_with(prefix)) {
                self.tensors = self
                    .tensors
                    .iter()
                    .filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone())))
                    .collect();
                return;
            }
        }
    }

    /// Check and arrange everything the generator needs.
    pub(crate) fn parse(mut self, opts: &LoadOptions) -> Result<RawParams> {
        self.strip_ema_prefix();
        let naming = detect(&self.tensors).ok_or_else(|| {
            self.bad(unknown_layout(
                &self.tensors,
                "no known StyleGAN2 generator layout",
            ))
        })?;
        let names = Names(naming);
        if self.has("mapping.embed.weight") {
            return Err(self.bad(
                "a conditional (class-label) generator: only unconditional StyleGAN2 is supported"
                    .into(),
            ));
        }

        // Mapping network: a chain of fully connected layers.
        let mut mapping = Vec::new();
        let mut dims = Vec::new();
        let z_dim = match self.dims(&names.mapping(0).0) {
            Some(d) if d.len() == 2 => d[1],
            _ => {
                return Err(self.bad(format!(
                    "tensor `{}` is missing or not a matrix",
                    names.mapping(0).0
                )))
            }
        };
        let mut fan_in = z_dim;
        while let Some(d) = self.dims(&names.mapping(mapping.len()).0) {
            let (w, b) = names.mapping(mapping.len());
            let out = d.first().copied().unwrap_or(0); // a bad rank fails in get()
            mapping.push((self.get(&w, &[out, fan_in])?, self.get(&b, &[out])?));
            dims.push(out);
            fan_in = out;
        }
        let w_dim = fan_in;

        // Synthesis: blocks from 4 px while their layers exist.
        let mut blocks = 1;
        while self.has(&names.conv(2 * blocks).weight)
            || self.has(&names.conv(2 * blocks - 1).weight)
        {
            blocks += 1;
        }
        let resolution = 4 << (blocks - 1);
        let out_channels = |j: usize| -> Result<usize> {
            let name = names.conv(j).weight;
            let d = self.dims(&name).ok_or_else(|| {
                self.bad(format!(
                    "tensor `{name}` is missing ({resolution} px generator)"
                ))
            })?;
            if d.len() < 4 {
                return Err(self.bad(format!(
                    "tensor `{name}` has shape {d:?}, expected [c_out, c_in, 3, 3]"
                )));
            }
            Ok(d[d.len() - 4])
        };
        let channels = (0..blocks)
            .map(|b| out_channels(2 * b))
            .collect::<Result<Vec<_>>>()?;

        let constant = self.get(&names.constant(), &[1, channels[0], 4, 4])?;
        let mut convs = Vec::new();
        for j in 0..2 * blocks - 1 {
            let block = j.div_ceil(2);
            let c_in = if j % 2 == 1 {
                channels[block - 1]
            } else {
                channels[block]
            };
            let c_out = channels[block];
            let n = names.conv(j);
            let r = Arch::conv_resolution(j);
            let noise = match (self.has(&n.noise_const), self.has(&n.noise_strength)) {
                (true, true) => Some((
                    self.get(&n.noise_const, &[1, 1, r, r])?,
                    self.scalar(&n.noise_strength)?,
                )),
                (false, false) => None,
                (true, false) => {
                    return Err(self.bad(format!("tensor `{}` is missing", n.noise_strength)))
                }
                (false, true) => {
                    return Err(self.bad(format!("tensor `{}` is missing", n.noise_const)))
                }
            };
            convs.push(RawConv {
                affine_w: self.get(&n.affine_w, &[c_in, w_dim])?,
                affine_b: self.get(&n.affine_b, &[c_in])?,
                weight: self.get(&n.weight, &[c_out, c_in, 3, 3])?,
                bias: self.get(&n.bias, &[c_out])?,
                noise,
            });
        }
        let mut rgbs = Vec::new();
        for (b, &c) in channels.iter().enumerate() {
            let n = names.rgb(b);
            if !self.has(&n.weight) {
                return Err(self.bad(format!(
                    "tensor `{}` is missing: only the 'skip' generator architecture (a ToRGB per block, StyleGAN2's default) is supported",
                    n.weight
                )));
            }
            rgbs.push(RawRgb {
                affine_w: self.get(&n.affine_w, &[c, w_dim])?,
                affine_b: self.get(&n.affine_b, &[c])?,
                weight: self.get(&n.weight, &[3, c, 1, 1])?,
                bias: self.get(&n.bias, &[3])?,
            });
        }
        self.check_filters()?;

        let w_avg = match names.w_avg().iter().find(|n| self.has(n)) {
            Some(n) => Some(self.get(n, &[w_dim])?),
            None => None,
        };
        let mapping_lr = match self.metadata.get("mapping_lr_multiplier") {
            Some(v) => v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| {
                    self.bad(format!(
                        "metadata mapping_lr_multiplier = {v:?} is not a positive number"
                    ))
                })?,
            None => DEFAULT_MAPPING_LR,
        };
        let conv_clamp = match opts.conv_clamp {
            Some(c) if c > 0.0 => Some(c as f32),
            Some(_) => None,
            None => match self.metadata.get("conv_clamp").map(|s| s.trim()) {
                None | Some("") | Some("none") | Some("None") | Some("null") => None,
                Some(v) => Some(
                    v.parse::<f32>()
                        .ok()
                        .filter(|x| x.is_finite() && *x > 0.0)
                        .ok_or_else(|| {
                            self.bad(format!(
                                "metadata conv_clamp = {v:?} is not a positive number or none"
                            ))
                        })?,
                ),
            },
        };
        let arch = Arch {
            resolution,
            z_dim,
            w_dim,
            mapping_dims: dims,
            channels,
            mapping_lr,
            conv_clamp,
        };
        self.check_expectations(&arch, opts)?;
        Ok(RawParams {
            arch,
            naming,
            mapping,
            w_avg,
            constant,
            convs,
            rgbs,
        })
    }

    /// Every stored resampling filter must be [1, 3, 3, 1] (up to scale).
    fn check_filters(&self) -> Result<()> {
        let want: Vec<f32> = FILTER_1331
            .iter()
            .flat_map(|a| FILTER_1331.iter().map(move |b| a * b))
            .collect();
        for (name, t) in &self.tensors {
            if !(name.ends_with("resample_filter")
                || name.ends_with("blur.kernel")
                || name.ends_with("upsample.kernel"))
            {
                continue;
            }
            let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
            let sum: f32 = v.iter().sum();
            let ok = v.len() == 16
                && sum != 0.0
                && v.iter().zip(&want).all(|(a, b)| (a / sum - b).abs() < 1e-5);
            if !ok {
                return Err(self.bad(format!(
                    "resampling filter `{name}` is not [1, 3, 3, 1]: only StyleGAN2's standard filter is supported"
                )));
            }
        }
        Ok(())
    }

    fn check_expectations(&self, arch: &Arch, opts: &LoadOptions) -> Result<()> {
        if let Some(r) = opts.resolution {
            if r != arch.resolution {
                return Err(self.bad(format!(
                    "the checkpoint is a {} px generator, but generator.resolution = {r}",
                    arch.resolution
                )));
            }
        }
        if let Some(m) = opts.channel_multiplier {
            let want = Arch::channels_for(arch.resolution, m);
            if want != arch.channels {
                let found = (1..=8)
                    .find(|&k| Arch::channels_for(arch.resolution, k) == arch.channels)
                    .map(|k| format!("channel multiplier {k}"))
                    .unwrap_or_else(|| "no standard channel multiplier".into());
                return Err(self.bad(format!(
                    "channels per block (4 px up) are {:?} ({found}), but generator.channel_multiplier = {m} means {want:?}",
                    arch.channels
                )));
            }
        }
        Ok(())
    }
}

/// Read the `__metadata__` of a safetensors header.
fn safetensors_metadata(path: &Path) -> std::result::Result<HashMap<String, String>, String> {
    let mut f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(len);
    if len > 100_000_000 {
        return Err("safetensors header is implausibly large".into());
    }
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header).map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_slice(&header).map_err(|e| format!("bad safetensors header: {e}"))?;
    Ok(v.get("__metadata__")
        .and_then(|m| m.as_object())
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
                .collect()
        })
        .unwrap_or_default())
}

fn detect(tensors: &HashMap<String, Tensor>) -> Option<Naming> {
    if tensors.contains_key("synthesis.b4.const") || tensors.contains_key("mapping.fc0.weight") {
        Some(Naming::Nvidia)
    } else if tensors.contains_key("input.input") || tensors.contains_key("style.1.weight") {
        Some(Naming::Rosinality)
    } else {
        None
    }
}

/// "expected ... found ..." for a file of no known layout, names abbreviated.
fn unknown_layout(tensors: &HashMap<String, Tensor>, why: &str) -> String {
    const SHOW: usize = 8;
    let names: BTreeSet<&str> = tensors.keys().map(String::as_str).collect();
    let mut found = names
        .iter()
        .take(SHOW)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > SHOW {
        found.push_str(&format!(", ... ({} more)", names.len() - SHOW));
    }
    if names.is_empty() {
        found = "none".into();
    }
    format!(
        "{why}. Expected the tensors of a StyleGAN2 generator, named as NVIDIA's \
         (mapping.fc0.weight, mapping.w_avg, synthesis.b4.const, synthesis.b4.conv1.weight, \
         synthesis.b4.torgb.weight, ...) or rosinality's (style.1.weight, input.input, \
         conv1.conv.weight, to_rgb1.conv.weight, convs.0.conv.weight, ..., under `g_ema` in a .pt); \
         found {} tensor(s): {found}. NVIDIA .pkl files: {CONVERT_HINT}",
        names.len()
    )
}

/// Names of one modulated conv's tensors.
struct ConvNames {
    weight: String,
    affine_w: String,
    affine_b: String,
    bias: String,
    noise_const: String,
    noise_strength: String,
}

/// Names of one ToRGB's tensors.
struct RgbNames {
    weight: String,
    affine_w: String,
    affine_b: String,
    bias: String,
}

/// Tensor names of either layout, by position in the network.
struct Names(Naming);

impl Names {
    fn mapping(&self, i: usize) -> (String, String) {
        let p = match self.0 {
            Naming::Nvidia => format!("mapping.fc{i}"),
            Naming::Rosinality => format!("style.{}", i + 1),
        };
        (format!("{p}.weight"), format!("{p}.bias"))
    }

    fn w_avg(&self) -> [&'static str; 2] {
        match self.0 {
            Naming::Nvidia => ["mapping.w_avg", "latent_avg"],
            Naming::Rosinality => ["latent_avg", "mapping.w_avg"],
        }
    }

    fn constant(&self) -> String {
        match self.0 {
            Naming::Nvidia => "synthesis.b4.const".into(),
            Naming::Rosinality => "input.input".into(),
        }
    }

    /// Conv layer `j`: 0 = the 4 px conv, then conv0 / conv1 per block.
    fn conv(&self, j: usize) -> ConvNames {
        match self.0 {
            Naming::Nvidia => {
                let p = if j == 0 {
                    "synthesis.b4.conv1".to_string()
                } else {
                    format!("synthesis.b{}.conv{}", Arch::conv_resolution(j), 1 - j % 2)
                };
                ConvNames {
                    weight: format!("{p}.weight"),
                    affine_w: format!("{p}.affine.weight"),
                    affine_b: format!("{p}.affine.bias"),
                    bias: format!("{p}.bias"),
                    noise_const: format!("{p}.noise_const"),
                    noise_strength: format!("{p}.noise_strength"),
                }
            }
            Naming::Rosinality => {
                let p = if j == 0 {
                    "conv1".to_string()
                } else {
                    format!("convs.{}", j - 1)
                };
                ConvNames {
                    weight: format!("{p}.conv.weight"),
                    affine_w: format!("{p}.conv.modulation.weight"),
                    affine_b: format!("{p}.conv.modulation.bias"),
                    bias: format!("{p}.activate.bias"),
                    noise_const: format!("noises.noise_{j}"),
                    noise_strength: format!("{p}.noise.weight"),
                }
            }
        }
    }

    /// ToRGB of block `b` (0 = 4 px).
    fn rgb(&self, b: usize) -> RgbNames {
        let (p, conv) = match self.0 {
            Naming::Nvidia => (format!("synthesis.b{}.torgb", 4 << b), ""),
            Naming::Rosinality if b == 0 => ("to_rgb1".to_string(), ".conv"),
            Naming::Rosinality => (format!("to_rgbs.{}", b - 1), ".conv"),
        };
        let (aw, ab) = match self.0 {
            Naming::Nvidia => ("affine.weight", "affine.bias"),
            Naming::Rosinality => ("conv.modulation.weight", "conv.modulation.bias"),
        };
        RgbNames {
            weight: format!("{p}{conv}.weight"),
            affine_w: format!("{p}.{aw}"),
            affine_b: format!("{p}.{ab}"),
            bias: format!("{p}.bias"),
        }
    }
}

/// Random weights for `arch` in NVIDIA's layout, initialised as NVIDIA does
/// (weights N(0, 1), mapping weights / lr, affine biases 1, other biases
/// 0), with noise strength 0.1 so the noise path runs, and `w_avg` = 0.
/// Deterministic per seed. For benchmarks and tests: the images mean nothing.
pub fn random_checkpoint(arch: &Arch, seed: u64) -> Result<Checkpoint> {
    let dev = Device::Cpu;
    let mut t = HashMap::new();
    let mut stream = 0u64;
    let mut normal = |shape: &[usize], scale: f64| -> Result<Tensor> {
        stream += 1;
        let n: usize = shape.iter().product();
        let s = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(stream);
        Ok((seeded_normal(s, 1, n, &dev)?.reshape(shape)? * scale)?)
    };
    let full = |shape: &[usize], v: f32| Tensor::full(v, shape, &dev);
    let mut fan_in = arch.z_dim;
    for (i, &out) in arch.mapping_dims.iter().enumerate() {
        t.insert(
            format!("mapping.fc{i}.weight"),
            normal(&[out, fan_in], 1.0 / arch.mapping_lr)?,
        );
        t.insert(format!("mapping.fc{i}.bias"), full(&[out], 0.0)?);
        fan_in = out;
    }
    t.insert("mapping.w_avg".into(), full(&[arch.w_dim], 0.0)?);
    let names = Names(Naming::Nvidia);
    t.insert(names.constant(), normal(&[arch.channels[0], 4, 4], 1.0)?);
    for j in 0..arch.num_convs() {
        let block = j.div_ceil(2);
        let c_in = if j % 2 == 1 {
            arch.channels[block - 1]
        } else {
            arch.channels[block]
        };
        let c_out = arch.channels[block];
        let r = Arch::conv_resolution(j);
        let n = names.conv(j);
        t.insert(n.weight, normal(&[c_out, c_in, 3, 3], 1.0)?);
        t.insert(n.affine_w, normal(&[c_in, arch.w_dim], 1.0)?);
        t.insert(n.affine_b, full(&[c_in], 1.0)?);
        t.insert(n.bias, full(&[c_out], 0.0)?);
        t.insert(n.noise_const, normal(&[r, r], 1.0)?);
        t.insert(n.noise_strength, Tensor::new(0.1f32, &dev)?);
    }
    for (b, &c) in arch.channels.iter().enumerate() {
        let n = names.rgb(b);
        t.insert(n.weight, normal(&[3, c, 1, 1], 1.0)?);
        t.insert(n.affine_w, normal(&[c, arch.w_dim], 1.0)?);
        t.insert(n.affine_b, full(&[c], 1.0)?);
        t.insert(n.bias, full(&[3], 0.0)?);
    }
    let mut meta = HashMap::new();
    meta.insert("mapping_lr_multiplier".into(), arch.mapping_lr.to_string());
    if let Some(c) = arch.conv_clamp {
        meta.insert("conv_clamp".into(), c.to_string());
    }
    Ok(Checkpoint::from_tensors(
        &format!("random StyleGAN2 {} px (seed {seed})", arch.resolution),
        t,
        meta,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_f_shapes() {
        let a = Arch::config_f(1024).unwrap();
        assert_eq!(a.channels, [512, 512, 512, 512, 512, 256, 128, 64, 32]);
        assert_eq!(a.num_ws(), 18);
        assert_eq!(a.num_convs(), 17);
        assert_eq!(Arch::config_f(256).unwrap().num_ws(), 14);
        assert_eq!(Arch::conv_resolution(0), 4);
        assert_eq!(Arch::conv_resolution(1), 8);
        assert_eq!(Arch::conv_resolution(2), 8);
        assert_eq!(Arch::conv_resolution(16), 1024);
        assert!(Arch::config_f(1000)
            .unwrap_err()
            .to_string()
            .contains("power of two"));
    }

    #[test]
    fn random_checkpoint_round_trips_through_the_parser() {
        let mut arch = Arch::config_f(32).unwrap();
        arch.channels = vec![16, 16, 8, 8];
        arch.mapping_dims = vec![32, 32];
        arch.z_dim = 24;
        arch.w_dim = 32;
        arch.conv_clamp = Some(256.0);
        let p = random_checkpoint(&arch, 1)
            .unwrap()
            .parse(&LoadOptions::default())
            .unwrap();
        assert_eq!(p.arch, arch);
        assert_eq!(p.naming, Naming::Nvidia);
        assert_eq!(p.convs.len(), 7);
        assert_eq!(p.rgbs.len(), 4);
    }

    #[test]
    fn unknown_layouts_and_mismatches_are_explained() {
        let dev = Device::Cpu;
        let mut t = HashMap::new();
        for i in 0..12 {
            t.insert(
                format!("encoder.layer{i:02}.weight"),
                Tensor::zeros(2, DType::F32, &dev).unwrap(),
            );
        }
        let e = Checkpoint::from_tensors("x.pt", t, HashMap::new())
            .parse(&LoadOptions::default())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.starts_with("x.pt: no known StyleGAN2 generator layout"),
            "{e}"
        );
        assert!(
            e.contains("synthesis.b4.const") && e.contains("input.input"),
            "{e}"
        );
        assert!(
            e.contains("found 12 tensor(s): encoder.layer00.weight,"),
            "{e}"
        );
        assert!(e.contains("(4 more)"), "{e}");

        let arch = Arch::config_f(64).unwrap();
        let ck = || random_checkpoint(&arch, 2).unwrap();
        let e = ck()
            .parse(&LoadOptions {
                channel_multiplier: Some(1),
                ..Default::default()
            })
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("[512, 512, 512, 512, 512] (channel multiplier 2)"),
            "{e}"
        );
        assert!(
            e.contains("generator.channel_multiplier = 1 means [512, 512, 512, 512, 256]"),
            "{e}"
        );
        let e = ck()
            .parse(&LoadOptions {
                resolution: Some(256),
                ..Default::default()
            })
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("a 64 px generator, but generator.resolution = 256"),
            "{e}"
        );

        // A block whose input channels do not chain.
        let mut c = ck();
        c.tensors.insert(
            "synthesis.b16.conv0.weight".into(),
            Tensor::zeros((512, 256, 3, 3), DType::F32, &dev).unwrap(),
        );
        let e = c.parse(&LoadOptions::default()).err().unwrap().to_string();
        assert!(e.contains("`synthesis.b16.conv0.weight` has shape [512, 256, 3, 3], expected [512, 512, 3, 3]"), "{e}");

        let mut c = ck();
        c.tensors.insert(
            "synthesis.b8.resample_filter".into(),
            Tensor::ones((4, 4), DType::F32, &dev).unwrap(),
        );
        let e = c.parse(&LoadOptions::default()).err().unwrap().to_string();
        assert!(e.contains("is not [1, 3, 3, 1]"), "{e}");
    }
}
