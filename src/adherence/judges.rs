//! Attributes measured on pixels: the judges of what text and edits do to a
//! face. They are exact formulas on the image, independent of every CLIP,
//! so optimising a CLIP score cannot fool them.
//!
//! Every judge reads the image area-resized to 64x64, RGB in [0, 1] (the
//! generator's [-1, 1] output clamped as a saved image is):
//! - brightness: mean luma `0.299 R + 0.587 G + 0.114 B` over the image;
//! - background warmth: mean `R - B` over the four 12x12 corner patches;
//! - face colourfulness: mean HSV saturation `(max - min) / max` (0 where
//!   max is 0) over the centre 32x32.
//!
//! Each attribute is split into three bins by the tertiles of its values
//! over the generator's own faces ([`AttributeStats`]); captions name the
//! low and high bins, and adherence asks whether a face lands in the bin a
//! prompt names.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Side of the image the judges read.
pub const JUDGE_SIZE: usize = 64;
/// Side of each background corner patch.
const CORNER: usize = 12;
/// Side of the centre patch the face colourfulness reads.
const CENTRE: usize = 32;

/// The attributes, in the order of every `[f32; 3]` here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribute {
    Brightness,
    Warmth,
    Colourfulness,
}

impl Attribute {
    pub const ALL: [Attribute; 3] = [
        Attribute::Brightness,
        Attribute::Warmth,
        Attribute::Colourfulness,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn name(self) -> &'static str {
        match self {
            Attribute::Brightness => "brightness",
            Attribute::Warmth => "background warmth",
            Attribute::Colourfulness => "face colourfulness",
        }
    }

    /// The canonical prompt of the low or high bin.
    pub fn prompt(self, bin: Bin) -> &'static str {
        match (self, bin) {
            (Attribute::Brightness, Bin::Low) => "a dark photo of a face",
            (Attribute::Brightness, Bin::High) => "a bright photo of a face",
            (Attribute::Warmth, Bin::Low) => "a face in front of a cool background",
            (Attribute::Warmth, Bin::High) => "a face in front of a warm background",
            (Attribute::Colourfulness, Bin::Low) => "a pale face",
            (Attribute::Colourfulness, Bin::High) => "a colourful face",
            (_, Bin::Middle) => crate::pipeline::instruction::NEUTRAL,
        }
    }
}

/// Where a value falls among the tertiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Bin {
    Low,
    Middle,
    High,
}

impl Bin {
    pub const ALL: [Bin; 3] = [Bin::Low, Bin::Middle, Bin::High];
}

/// The three judges of one image.
pub type Judged = [f32; 3];

/// Judge generator output `[n, 3, R, R]` (RGB, about [-1, 1]); `R` must be
/// a multiple of 64.
pub fn judge(images: &Tensor) -> Result<Vec<Judged>> {
    let (n, c, h, w) = images.dims4()?;
    if c != 3 || h != w || h % JUDGE_SIZE != 0 {
        return Err(Error::invalid(format!(
            "the judges read square RGB images whose side is a multiple of {JUDGE_SIZE}, got {:?}",
            images.dims()
        )));
    }
    // Clamp first, as a saved image is, then area-resize.
    let x = ((images.to_dtype(DType::F32)? + 1.0)? * 0.5)?.clamp(0f32, 1f32)?;
    let x = if h == JUDGE_SIZE {
        x
    } else {
        x.avg_pool2d(h / JUDGE_SIZE)?
    };
    let v = x.flatten_all()?.to_vec1::<f32>()?;
    let plane = JUDGE_SIZE * JUDGE_SIZE;
    Ok((0..n)
        .map(|i| judge_rgb(&v[i * 3 * plane..(i + 1) * 3 * plane]))
        .collect())
}

/// The judges of one 64x64 image, planar RGB in [0, 1].
fn judge_rgb(rgb: &[f32]) -> Judged {
    let s = JUDGE_SIZE;
    let plane = s * s;
    let px = |y: usize, x: usize| {
        let i = y * s + x;
        (rgb[i], rgb[plane + i], rgb[2 * plane + i])
    };
    let mut luma = 0.0f64;
    for y in 0..s {
        for x in 0..s {
            let (r, g, b) = px(y, x);
            luma += (0.299 * r + 0.587 * g + 0.114 * b) as f64;
        }
    }
    let mut warmth = 0.0f64;
    let far = s - CORNER;
    for (y0, x0) in [(0, 0), (0, far), (far, 0), (far, far)] {
        for y in y0..y0 + CORNER {
            for x in x0..x0 + CORNER {
                let (r, _, b) = px(y, x);
                warmth += (r - b) as f64;
            }
        }
    }
    let mut saturation = 0.0f64;
    let c0 = (s - CENTRE) / 2;
    for y in c0..c0 + CENTRE {
        for x in c0..c0 + CENTRE {
            let (r, g, b) = px(y, x);
            let max = r.max(g).max(b);
            let min = r.min(g).min(b);
            if max > 0.0 {
                saturation += ((max - min) / max) as f64;
            }
        }
    }
    [
        (luma / plane as f64) as f32,
        (warmth / (4 * CORNER * CORNER) as f64) as f32,
        (saturation / (CENTRE * CENTRE) as f64) as f32,
    ]
}

/// One attribute over the generator's faces: its tertiles, mean and spread.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tertiles {
    /// Values below this are [`Bin::Low`].
    pub low_below: f32,
    /// Values above this are [`Bin::High`].
    pub high_above: f32,
    pub mean: f32,
    /// Standard deviation: the unit of separations and edit moves.
    pub sd: f32,
}

impl Tertiles {
    pub fn of(values: &[f32]) -> Result<Self> {
        if values.len() < 3 || values.iter().any(|v| !v.is_finite()) {
            return Err(Error::invalid(
                "tertiles need at least 3 finite values".to_string(),
            ));
        }
        let mut sorted = values.to_vec();
        sorted.sort_by(f32::total_cmp);
        let n = sorted.len();
        let q = |p: f64| {
            // Linear interpolation between order statistics (numpy's default).
            let x = p * (n - 1) as f64;
            let (i, f) = (x.floor() as usize, x - x.floor());
            let next = sorted[(i + 1).min(n - 1)];
            (sorted[i] as f64 * (1.0 - f) + next as f64 * f) as f32
        };
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
        let var = values
            .iter()
            .map(|&v| (v as f64 - mean).powi(2))
            .sum::<f64>()
            / (n - 1) as f64;
        Ok(Self {
            low_below: q(1.0 / 3.0),
            high_above: q(2.0 / 3.0),
            mean: mean as f32,
            sd: var.sqrt() as f32,
        })
    }

    pub fn bin(&self, v: f32) -> Bin {
        if v < self.low_below {
            Bin::Low
        } else if v > self.high_above {
            Bin::High
        } else {
            Bin::Middle
        }
    }
}

/// The bins of every attribute over a generator's faces, as `generate
/// --seed S` renders them (written beside the toy CLIP as
/// `attributes.json`, read by the adherence measurements).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttributeStats {
    pub generator: String,
    /// Seeds `0..faces` at `truncation`.
    pub faces: usize,
    pub truncation: f64,
    /// In [`Attribute::ALL`]'s order.
    pub tertiles: [Tertiles; 3],
}

impl AttributeStats {
    pub fn of(generator: &str, truncation: f64, judged: &[Judged]) -> Result<Self> {
        let col = |a: usize| judged.iter().map(|j| j[a]).collect::<Vec<_>>();
        Ok(Self {
            generator: generator.to_string(),
            faces: judged.len(),
            truncation,
            tertiles: [
                Tertiles::of(&col(0))?,
                Tertiles::of(&col(1))?,
                Tertiles::of(&col(2))?,
            ],
        })
    }

    pub fn bins(&self, j: &Judged) -> [Bin; 3] {
        [0, 1, 2].map(|a| self.tertiles[a].bin(j[a]))
    }

    /// `(v - mean) / sd` per attribute.
    pub fn in_sds(&self, j: &Judged) -> [f32; 3] {
        [0, 1, 2].map(|a| (j[a] - self.tertiles[a].mean) / self.tertiles[a].sd.max(1e-12))
    }

    pub fn read(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|err| Error::Read {
            path: path.to_path_buf(),
            err,
        })?;
        serde_json::from_str(&text).map_err(|e| {
            Error::invalid(format!(
                "{} is not an attributes file ({e}); `cargo run --release --example toy_clip` writes one beside the toy CLIP",
                path.display()
            ))
        })
    }

    pub fn write(&self, path: &std::path::Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::invalid(e.to_string()))?;
        crate::fsutil::write_atomic(path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A 128 px image (in [-1, 1]) with a background colour in the corners,
    /// a face colour in the centre.
    fn scene(bg: [f32; 3], face: [f32; 3]) -> Tensor {
        let s = 128;
        let mut v = vec![0f32; 3 * s * s];
        for c in 0..3 {
            for y in 0..s {
                for x in 0..s {
                    let centre = (32..96).contains(&y) && (32..96).contains(&x);
                    let value = if centre { face[c] } else { bg[c] };
                    v[c * s * s + y * s + x] = value * 2.0 - 1.0;
                }
            }
        }
        Tensor::from_vec(v, (1, 3, s, s), &Device::Cpu).unwrap()
    }

    #[test]
    fn judges_read_the_formulas() {
        let j = judge(&scene([0.8, 0.4, 0.2], [0.5, 0.25, 0.25])).unwrap()[0];
        // Luma: a quarter of the image is the face, the rest the background.
        let luma = |c: [f32; 3]| 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2];
        let want = 0.25 * luma([0.5, 0.25, 0.25]) + 0.75 * luma([0.8, 0.4, 0.2]);
        assert!((j[0] - want).abs() < 1e-5, "{} vs {want}", j[0]);
        assert!((j[1] - 0.6).abs() < 1e-5, "warmth {}", j[1]);
        assert!((j[2] - 0.5).abs() < 1e-5, "saturation {}", j[2]);
        // Black has saturation 0, not NaN; values outside [-1, 1] clamp.
        let dark = judge(&(scene([0.0; 3], [0.0; 3]) * 3.0).unwrap()).unwrap()[0];
        assert_eq!(dark, [0.0, 0.0, 0.0]);
        assert!(
            judge(&Tensor::zeros((1, 3, 100, 100), DType::F32, &Device::Cpu).unwrap()).is_err()
        );
    }

    #[test]
    fn tertiles_split_in_thirds() {
        let v: Vec<f32> = (0..300).map(|i| i as f32).collect();
        let t = Tertiles::of(&v).unwrap();
        let count = |b: Bin| v.iter().filter(|&&x| t.bin(x) == b).count();
        assert_eq!(
            (count(Bin::Low), count(Bin::Middle), count(Bin::High)),
            (100, 100, 100)
        );
        assert!((t.mean - 149.5).abs() < 1e-4);
    }
}
