//! `engine.memory_limit`: from a limit on the process's resident memory,
//! the batch size and the generator's high-resolution chunk, or a refusal
//! to start when the models alone do not fit.
//!
//! The estimate is the one `clip2gan bench memory` measures (CPU, real
//! MobileStyleGAN, ViT-B/32-shaped CLIP loaded from a checkpoint,
//! 2026-12-03): the process itself, each model's weights as read from its
//! files, and per image of a batch the working memory of a pass. The peak
//! of a batch of `b` images in chunks of `c` is
//! `models + c * CHUNK_IMAGE + b * BATCH_IMAGE` (at 1024 px; the image
//! terms scale with the generator's pixels).

use crate::error::{Error, Result};

const MIB: u64 = 1 << 20;

/// The process without models: the binary's pages, the async runtime,
/// thread stacks, the results store (measured: 10 MiB at start, about 40
/// with the bot's runtime and store; rounded up).
pub const PROCESS: u64 = 48 * MIB;
/// Resident bytes of a model beyond its weight files' size (the
/// generator's 37 MiB of files took 71 MiB: transposed copies, thread
/// pools' first buffers).
pub const PER_MODEL: u64 = 36 * MIB;
/// Working memory of one image going through the high-resolution layers
/// (128 px and above) at 1024 px: 184 MiB for a batch of 1 minus its share
/// of [`BATCH_IMAGE`], rounded up.
pub const CHUNK_IMAGE: u64 = 164 * MIB;
/// Working memory of each image of a batch outside its chunk: its
/// low-resolution activations, its output image at full size and
/// downscaled, its latents (measured: +23 MiB per image from a batch of 1
/// to one of 8, rounded up).
pub const BATCH_IMAGE: u64 = 24 * MIB;

/// Working memory of one latent's refinement step (quality mode) at 1024
/// px: the backward keeps every activation of the generator and of CLIP's
/// vision tower (measured with `clip2gan bench refine --batch 1`: a peak of
/// 8.2 GB with the models loaded; rounded up).
pub const REFINE_IMAGE: u64 = 7680 * MIB;

/// A byte size as written in the settings: a number and a unit, `B`,
/// `KB`/`MB`/`GB` (powers of 1000) or `KiB`/`MiB`/`GiB` (powers of 1024),
/// e.g. "1GiB", "900MB", "1.5 GiB".
pub fn parse_bytes(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = (t[..split].trim(), t[split..].trim());
    let scale: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?}: give a size with a unit, e.g. \"1GiB\", \"900MB\" or \"1536MiB\""
            ))
        }
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?}: the number before the unit is not a number"))?;
    let bytes = n * scale as f64;
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!("{text:?}: the size must be positive"));
    }
    Ok(bytes as u64)
}

/// What the models take: each one's name and the size of its weight files.
#[derive(Debug, Clone)]
pub struct Models {
    pub files: Vec<(String, u64)>,
    /// The generator's output side (px): the image terms scale with its
    /// pixels.
    pub resolution: usize,
}

impl Models {
    /// Resident bytes of the process with the models loaded.
    pub fn resident(&self) -> u64 {
        PROCESS + self.files.iter().map(|(_, b)| b + PER_MODEL).sum::<u64>()
    }

    fn scaled(&self, bytes: u64) -> u64 {
        let px = (self.resolution * self.resolution) as f64 / (1024.0 * 1024.0);
        (bytes as f64 * px).ceil() as u64
    }

    /// The estimated peak of a refinement step that differentiates `chunk`
    /// latents together (`pipeline.refine_chunk`).
    pub fn refine_peak(&self, chunk: usize) -> u64 {
        self.resident() + self.scaled(REFINE_IMAGE) * chunk.max(1) as u64
    }

    /// The estimated peak of a batch of `batch` images in chunks of `chunk`.
    pub fn peak(&self, batch: usize, chunk: usize) -> u64 {
        let chunk = chunk.min(batch).max(1);
        self.resident()
            + self.scaled(CHUNK_IMAGE) * chunk as u64
            + self.scaled(BATCH_IMAGE) * batch as u64
    }
}

/// The batch size and chunk a limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub max_batch: usize,
    /// Images per pass through the high-resolution layers (0: the batch).
    pub high_res_chunk: usize,
}

/// The largest plan within `limit` that does not exceed `wanted`: the
/// chunk is lowered first (it saves memory at little cost in speed; see
/// README "Memory and start-up"), then the batch. An error, naming the
/// limit and what the models need, when not even one image fits.
pub fn plan(limit: u64, models: &Models, wanted: Plan) -> Result<Plan> {
    let one = models.peak(1, 1);
    if one > limit {
        let list: Vec<String> = models
            .files
            .iter()
            .map(|(n, b)| format!("{n} {:.0} MiB", (b + PER_MODEL) as f64 / MIB as f64))
            .collect();
        return Err(Error::Config(format!(
            "engine.memory_limit = {:.0} MiB cannot hold the models: they need about {:.0} MiB \
             ({}, the process {:.0} MiB) and one image {:.0} MiB more, {:.0} MiB in all; \
             raise engine.memory_limit to at least that, or unset it",
            limit as f64 / MIB as f64,
            models.resident() as f64 / MIB as f64,
            list.join(", "),
            PROCESS as f64 / MIB as f64,
            (one - models.resident()) as f64 / MIB as f64,
            one as f64 / MIB as f64,
        )));
    }
    let want_chunk = match wanted.high_res_chunk {
        0 => wanted.max_batch,
        c => c.min(wanted.max_batch),
    }
    .max(1);
    let mut chunk = want_chunk;
    while chunk > 1 && models.peak(wanted.max_batch, chunk) > limit {
        chunk -= 1;
    }
    let mut batch = wanted.max_batch.max(1);
    while batch > 1 && models.peak(batch, chunk) > limit {
        batch -= 1;
    }
    Ok(Plan {
        max_batch: batch,
        high_res_chunk: if chunk >= batch && wanted.high_res_chunk == 0 {
            0
        } else {
            chunk
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vit_b32() -> Models {
        Models {
            files: vec![
                ("CLIP".into(), 605_156_576),
                ("generator".into(), 38_500_000),
            ],
            resolution: 1024,
        }
    }

    #[test]
    fn sizes_parse_with_their_units() {
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("900 MB"), Ok(900_000_000));
        assert_eq!(parse_bytes("1.5GiB"), Ok(3 << 29));
        assert_eq!(parse_bytes("512kib"), Ok(512 << 10));
        for bad in ["1", "GiB", "1 parsec", "-1GiB", "0MB", ""] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_refinement_needs_gigabytes_and_scales_with_its_chunk() {
        let m = vit_b32();
        let one = m.refine_peak(1);
        assert!(one > 8 << 30 && one < 9 << 30, "{one}");
        assert_eq!(m.refine_peak(2) - one, REFINE_IMAGE);
        let small = Models {
            resolution: 256,
            ..vit_b32()
        };
        assert_eq!(small.refine_peak(1) - small.resident(), REFINE_IMAGE / 16);
    }

    #[test]
    fn a_roomy_limit_keeps_the_settings() {
        let want = Plan {
            max_batch: 8,
            high_res_chunk: 1,
        };
        assert_eq!(plan(4 << 30, &vit_b32(), want).unwrap(), want);
    }

    #[test]
    fn a_tight_limit_lowers_the_chunk_then_the_batch() {
        let m = vit_b32();
        let want = Plan {
            max_batch: 8,
            high_res_chunk: 0,
        };
        let p = plan(1 << 30, &m, want).unwrap();
        assert_eq!(p.high_res_chunk, 1);
        assert!(m.peak(p.max_batch, p.high_res_chunk) <= 1 << 30);
        assert!(m.peak(p.max_batch + 1, 1) > 1 << 30 || p.max_batch == 8);
        // Just above one image: batch 1.
        let p = plan(m.peak(1, 1) + 1, &m, want).unwrap();
        assert_eq!(
            p,
            Plan {
                max_batch: 1,
                high_res_chunk: 0
            }
        );
    }

    #[test]
    fn models_that_do_not_fit_are_refused_with_the_figures() {
        let m = vit_b32();
        let e = plan(
            512 << 20,
            &m,
            Plan {
                max_batch: 8,
                high_res_chunk: 1,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("engine.memory_limit = 512 MiB"), "{e}");
        assert!(e.contains("CLIP 613 MiB"), "{e}");
        let need = m.peak(1, 1) as f64 / MIB as f64;
        assert!(e.contains(&format!("{need:.0} MiB in all")), "{e}");
    }
}
