//! The architecture of a checkpoint, read off its tensor shapes, and the
//! raw parameters in the order the network uses them.

use candle_core::{DType, Tensor};

use super::naming::{detect, unknown_layout, Names};
use super::{Checkpoint, Naming};
use crate::error::{Error, Result};
use crate::ops::fir::FILTER_1331;

/// The mapping network's default learning-rate multiplier (NVIDIA's and
/// rosinality's `lr_mlp`); it scales the stored weights at run time.
pub const DEFAULT_MAPPING_LR: f64 = 0.01;

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
        super::naming::conv_resolution(j)
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

impl Checkpoint {
    /// Check and arrange everything the generator needs.
    pub(crate) fn parse(mut self, opts: &LoadOptions) -> Result<RawParams> {
        self.strip_ema_prefix();
        let naming = detect(|n| self.has(n)).ok_or_else(|| {
            self.bad(unknown_layout(
                self.tensors.keys().map(String::as_str),
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

#[cfg(test)]
mod tests {
    use super::super::random_checkpoint;
    use super::*;
    use candle_core::Device;
    use std::collections::HashMap;

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

    /// The message of a parse that must fail.
    fn parse_err(c: Checkpoint, opts: LoadOptions) -> String {
        c.parse(&opts).err().unwrap().to_string()
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
        let e = parse_err(
            Checkpoint::from_tensors("x.pt", t, HashMap::new()),
            LoadOptions::default(),
        );
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
        // A fresh checkpoint parsed with one option set.
        let with = |set: fn(&mut LoadOptions)| {
            let mut opts = LoadOptions::default();
            set(&mut opts);
            parse_err(ck(), opts)
        };
        let e = with(|o| o.channel_multiplier = Some(1));
        assert!(
            e.contains("[512, 512, 512, 512, 512] (channel multiplier 2)"),
            "{e}"
        );
        assert!(
            e.contains("generator.channel_multiplier = 1 means [512, 512, 512, 512, 256]"),
            "{e}"
        );
        let e = with(|o| o.resolution = Some(256));
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
        let e = parse_err(c, LoadOptions::default());
        assert!(e.contains("`synthesis.b16.conv0.weight` has shape [512, 256, 3, 3], expected [512, 512, 3, 3]"), "{e}");

        let mut c = ck();
        c.tensors.insert(
            "synthesis.b8.resample_filter".into(),
            Tensor::ones((4, 4), DType::F32, &dev).unwrap(),
        );
        let e = parse_err(c, LoadOptions::default());
        assert!(e.contains("is not [1, 3, 3, 1]"), "{e}");
    }
}
