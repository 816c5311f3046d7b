//! Tensor names of the two layouts, NVIDIA's and rosinality's, by position
//! in the network: the one place that knows either naming.

use std::collections::BTreeSet;

/// Which tensor names a checkpoint uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    Nvidia,
    Rosinality,
}

/// The layout of a set of tensor names, by the names only `has` holds.
pub(super) fn detect(has: impl Fn(&str) -> bool) -> Option<Naming> {
    if has("synthesis.b4.const") || has("mapping.fc0.weight") {
        Some(Naming::Nvidia)
    } else if has("input.input") || has("style.1.weight") {
        Some(Naming::Rosinality)
    } else {
        None
    }
}

/// "expected ... found ..." for a file of no known layout, names abbreviated.
pub(super) fn unknown_layout<'n>(names: impl IntoIterator<Item = &'n str>, why: &str) -> String {
    const SHOW: usize = 8;
    let names: BTreeSet<&str> = names.into_iter().collect();
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
         found {} tensor(s): {found}",
        names.len()
    )
}

/// Names of one modulated conv's tensors.
pub(super) struct ConvNames {
    pub(super) weight: String,
    pub(super) affine_w: String,
    pub(super) affine_b: String,
    pub(super) bias: String,
    pub(super) noise_const: String,
    pub(super) noise_strength: String,
}

/// Names of one ToRGB's tensors.
pub(super) struct RgbNames {
    pub(super) weight: String,
    pub(super) affine_w: String,
    pub(super) affine_b: String,
    pub(super) bias: String,
}

/// Tensor names of either layout, by position in the network.
pub(super) struct Names(pub(super) Naming);

impl Names {
    pub(super) fn mapping(&self, i: usize) -> (String, String) {
        let p = match self.0 {
            Naming::Nvidia => format!("mapping.fc{i}"),
            Naming::Rosinality => format!("style.{}", i + 1),
        };
        (format!("{p}.weight"), format!("{p}.bias"))
    }

    pub(super) fn w_avg(&self) -> [&'static str; 2] {
        match self.0 {
            Naming::Nvidia => ["mapping.w_avg", "latent_avg"],
            Naming::Rosinality => ["latent_avg", "mapping.w_avg"],
        }
    }

    pub(super) fn constant(&self) -> String {
        match self.0 {
            Naming::Nvidia => "synthesis.b4.const".into(),
            Naming::Rosinality => "input.input".into(),
        }
    }

    /// Conv layer `j`: 0 = the 4 px conv, then conv0 / conv1 per block.
    pub(super) fn conv(&self, j: usize) -> ConvNames {
        // Suffixes of weight, affine weight and bias, bias, noise strength.
        let (p, suffixes, noise_const) = match self.0 {
            Naming::Nvidia => {
                let p = if j == 0 {
                    "synthesis.b4.conv1".to_string()
                } else {
                    format!("synthesis.b{}.conv{}", conv_resolution(j), 1 - j % 2)
                };
                let noise_const = format!("{p}.noise_const");
                let suffixes = [
                    "weight",
                    "affine.weight",
                    "affine.bias",
                    "bias",
                    "noise_strength",
                ];
                (p, suffixes, noise_const)
            }
            Naming::Rosinality => {
                let p = if j == 0 {
                    "conv1".to_string()
                } else {
                    format!("convs.{}", j - 1)
                };
                let suffixes = [
                    "conv.weight",
                    "conv.modulation.weight",
                    "conv.modulation.bias",
                    "activate.bias",
                    "noise.weight",
                ];
                (p, suffixes, format!("noises.noise_{j}"))
            }
        };
        let [weight, affine_w, affine_b, bias, noise_strength] =
            suffixes.map(|s| format!("{p}.{s}"));
        ConvNames {
            weight,
            affine_w,
            affine_b,
            bias,
            noise_const,
            noise_strength,
        }
    }

    /// ToRGB of block `b` (0 = 4 px).
    pub(super) fn rgb(&self, b: usize) -> RgbNames {
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
/// Resolution of conv layer `j` (0 = the 4 px conv, then conv0 / conv1
/// of each block): the block its names carry.
pub(super) fn conv_resolution(j: usize) -> usize {
    4 << j.div_ceil(2)
}
