//! What the store keeps: results (the images one job made, as latents), the
//! references buttons and `/undo` act on, how each result was made, a
//! member's quota window, and a record's bytes on disk (shared with the
//! Redis store).

use serde::{Deserialize, Serialize};

use crate::bot::guild::QUOTA_WINDOW_S;
use crate::engine::Latent;

/// A result: the images one job produced (their latents), numbered.
pub type ResultId = u64;

/// One image of a result: what buttons, `/edit` and `/undo` act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ref {
    pub id: ResultId,
    pub index: usize,
}

/// How a result was made; enough to show it and to reproduce it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Origin {
    Imagine {
        seed: u64,
        count: usize,
    },
    Edit {
        instruction: String,
        strength: f64,
    },
    Variations {
        seed: u64,
    },
    /// A photo the user sent, turned into a latent (CLIP image feature ->
    /// mapper).
    Photo {
        filename: String,
    },
    /// Quality mode's CLIP-guided steps from the parent image (the Refine
    /// button).
    Refined {
        steps: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub id: ResultId,
    /// The user who made it (and who alone may delete it).
    pub owner: u64,
    pub created_unix: u64,
    /// The `/imagine` prompt this line of images started from.
    pub prompt: String,
    pub origin: Origin,
    /// The image this one was made from (edits, variations).
    pub parent: Option<Ref>,
    #[serde(skip)]
    pub latents: Vec<Latent>,
}

impl Record {
    /// An `/imagine` of "a face" by `owner` with `n` latents filled with
    /// `v`, `v + 1`, ...: what the stores' tests insert.
    #[doc(hidden)]
    pub fn example(owner: u64, n: usize, v: f32) -> Record {
        Record {
            id: 0,
            owner,
            created_unix: 1,
            prompt: "a face".into(),
            origin: Origin::Imagine { seed: 3, count: n },
            parent: None,
            latents: (0..n)
                .map(|k| Latent {
                    styles: 2,
                    dim: 3,
                    data: vec![v + k as f32; 6],
                })
                .collect(),
        }
    }
}

/// A charge taken (`Ok`) or refused (`Err`), with the window either way.
pub type Charged = Result<Usage, Usage>;

/// A member's quota window after a charge (or a refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub used: u32,
    pub window_start: u64,
}

impl Usage {
    /// When the window ends and the quota is whole again.
    pub fn resets_at(&self) -> u64 {
        self.window_start + QUOTA_WINDOW_S
    }
}

/// On disk: `u32` length of a JSON header (the record without latents, plus
/// their shape), the header, then the latents as little-endian f32.
#[derive(Serialize, Deserialize)]
struct Header {
    record: Record,
    styles: usize,
    dim: usize,
    count: usize,
}

pub(crate) fn encode_record(r: &Record) -> Vec<u8> {
    let (styles, dim) = r.latents.first().map_or((0, 0), |l| (l.styles, l.dim));
    let header = serde_json::to_vec(&Header {
        record: r.clone(),
        styles,
        dim,
        count: r.latents.len(),
    })
    .expect("records serialise");
    let mut out = Vec::with_capacity(4 + header.len() + 4 * styles * dim * r.latents.len());
    out.extend_from_slice(&(header.len() as u32).to_le_bytes());
    out.extend_from_slice(&header);
    for l in &r.latents {
        for v in &l.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

pub(crate) fn decode_record(bytes: &[u8]) -> Result<Record, String> {
    let n = u32::from_le_bytes(
        bytes
            .get(..4)
            .ok_or("short record")?
            .try_into()
            .map_err(|_| "short record")?,
    ) as usize;
    let header: Header = serde_json::from_slice(bytes.get(4..4 + n).ok_or("short header")?)
        .map_err(|e| e.to_string())?;
    let body = &bytes[4 + n..];
    let per = header.styles * header.dim;
    if body.len() != 4 * per * header.count {
        return Err("latent data has the wrong length".into());
    }
    let mut rec = header.record;
    rec.latents = body
        .chunks_exact(4 * per.max(1))
        .take(header.count)
        .map(|c| Latent {
            styles: header.styles,
            dim: header.dim,
            data: c
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
        })
        .collect();
    Ok(rec)
}
