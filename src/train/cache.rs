//! The pair cache: (latent codes, CLIP image embedding) pairs rendered once
//! and reused by every epoch and every later run with the same settings.
//!
//! Layout of the cache directory: chunk files `pairs-<first>-<count>.safetensors`
//! (tensors `w` `[n, 2, w_dim]`, `cross` `[n]` (u32), `e` `[n, clip_dim]`)
//! and `manifest.json`, which names the settings the pairs were drawn with
//! and lists the chunks in order with their sha256. Each chunk is written
//! atomically, then the manifest is rewritten atomically, so after an
//! interruption the manifest lists only complete chunks: a new run checks
//! them, reuses them, deletes strays and renders the rest. Pair `i` depends
//! only on the seed and `i`, so a resumed or extended cache holds exactly the
//! pairs an uninterrupted build would have. Different settings (generator,
//! CLIP, seed, truncation, mixing, image size) rebuild the cache.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::data::{self, SampleSpec};
use super::progress::Progress;
use crate::clip::Clip;
use crate::error::{Error, Result};
use crate::fsutil::{sha256_hex, write_atomic};
use crate::generator::Generator;

pub const MANIFEST: &str = "manifest.json";
const VERSION: u32 = 1;
/// Stream family of cached pairs (eval samples use another).
pub const DOMAIN: &str = "pair";
/// Pairs rendered per step: the generator runs them in `gen_batch` chunks,
/// CLIP's image encoder takes them at once (per image it costs about half
/// at batch 8 what it costs at batch 1 on a CPU).
const EMBED_BATCH: usize = 8;

/// Pairs one [`Bank::grow`] renders with these settings.
pub fn grow_step(spec: &SampleSpec) -> usize {
    EMBED_BATCH.max(spec.gen_batch)
}

/// What the pairs depend on. A cache is reused only under an equal key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CacheKey {
    pub version: u32,
    pub generator: String,
    pub clip_model: String,
    pub clip_dim: usize,
    pub num_styles: usize,
    pub w_dim: usize,
    pub seed: u64,
    pub truncation: f64,
    pub style_mixing: f64,
    pub image_size: usize,
}

impl CacheKey {
    pub fn new(
        g: &dyn Generator,
        clip: &Clip,
        clip_model: &str,
        seed: u64,
        spec: &SampleSpec,
    ) -> Self {
        Self {
            version: VERSION,
            generator: g.id().to_string(),
            clip_model: clip_model.to_string(),
            clip_dim: clip.embed_dim(),
            num_styles: g.num_styles(),
            w_dim: g.w_dim(),
            seed,
            truncation: spec.truncation,
            style_mixing: spec.style_mixing,
            image_size: spec.image_size,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    key: CacheKey,
    chunks: Vec<Chunk>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Chunk {
    file: String,
    first: u64,
    pairs: usize,
    sha256: String,
}

/// Pairs in memory (on the CPU).
#[derive(Debug, Clone)]
pub struct PairSet {
    pub w: Tensor, // [n, 2, w_dim]
    pub cross: Vec<u32>,
    pub e: Tensor, // [n, clip_dim]
}

impl PairSet {
    pub fn len(&self) -> usize {
        self.cross.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cross.is_empty()
    }
}

/// How a cache was obtained.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CacheStats {
    pub reused: usize,
    pub rendered: usize,
    /// Seconds spent rendering (0 when everything was reused).
    pub render_s: f64,
}

impl CacheStats {
    pub fn pairs_per_s(&self) -> Option<f64> {
        (self.rendered > 0 && self.render_s > 0.0).then(|| self.rendered as f64 / self.render_s)
    }
}

/// Everything rendering needs.
pub struct Renderer<'a> {
    pub g: &'a dyn Generator,
    pub clip: &'a Clip,
    pub key: CacheKey,
    pub spec: SampleSpec,
}

/// A pair cache being read or grown: the complete chunks on disk, plus the
/// pairs rendered since the last chunk was written. [`ensure`] grows it to a
/// size in one go; the engine grows it a few pairs at a time while idle.
pub struct Bank {
    dir: PathBuf,
    manifest: Manifest,
    /// Pairs of the chunks on disk, in order, then the pending ones.
    parts: Vec<PairSet>,
    /// Pairs in `parts` that are not in a chunk file yet.
    pending: usize,
    chunk_pairs: usize,
}

impl Bank {
    /// Open the cache in `dir` for `key`: the listed chunks are checked and
    /// loaded (at most `limit` pairs' worth), unusable ones and strays
    /// removed; a cache of other settings is started anew.
    pub fn open(
        dir: &Path,
        key: &CacheKey,
        limit: usize,
        chunk_pairs: usize,
        quiet: bool,
    ) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|err| Error::Write {
            path: dir.to_path_buf(),
            err,
        })?;
        let fresh = Manifest {
            key: key.clone(),
            chunks: Vec::new(),
        };
        let mut manifest = match read_manifest(dir)? {
            Some(m) if m.key == *key => m,
            Some(m) => {
                note(
                    quiet,
                    &format!(
                        "the pair cache in {} was built with other settings ({}); rebuilding it",
                        dir.display(),
                        key_changes(&m.key, key)
                    ),
                );
                fresh
            }
            None => fresh,
        };
        // Load listed chunks in order while they are intact and needed.
        let mut parts: Vec<PairSet> = Vec::new();
        let mut covered = 0usize;
        let mut kept = Vec::new();
        for c in &manifest.chunks {
            if covered >= limit {
                kept.push(c.clone());
                continue;
            }
            match load_chunk(dir, c, covered as u64) {
                Ok(p) => {
                    covered += p.len();
                    parts.push(p);
                    kept.push(c.clone());
                }
                Err(e) => {
                    note(quiet, &format!("pair cache chunk {} is unusable ({e}); rendering from pair {covered} again", c.file));
                    break;
                }
            }
        }
        manifest.chunks = kept;
        write_manifest(dir, &manifest)?;
        remove_strays(dir, &manifest)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            manifest,
            parts,
            pending: 0,
            chunk_pairs: chunk_pairs.max(1),
        })
    }

    /// Pairs in memory (written or pending).
    pub fn len(&self) -> usize {
        self.parts.iter().map(PairSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Render the next pairs (one CLIP batch, not past `limit`) and write a
    /// chunk when one is complete or `limit` is reached. Returns the pairs
    /// rendered.
    pub fn grow(&mut self, r: &Renderer, limit: usize) -> Result<usize> {
        let have = self.len();
        let step = grow_step(&r.spec);
        let n = step.min(limit.saturating_sub(have));
        if n == 0 {
            return Ok(0);
        }
        let start = have as u64;
        let s = data::render_samples(
            r.g,
            r.clip,
            r.key.seed,
            DOMAIN,
            start..start + n as u64,
            &r.spec,
        )?;
        crate::generator::check_finite(&s.e, "a CLIP embedding of a rendered pair")?;
        self.parts.push(PairSet {
            w: s.codes.w.to_device(&Device::Cpu)?,
            cross: s.codes.cross,
            e: s.e.to_device(&Device::Cpu)?,
        });
        self.pending += n;
        if self.pending >= self.chunk_pairs || self.len() >= limit {
            self.write_pending()?;
        }
        Ok(n)
    }

    /// Write the pending pairs as one chunk and list it in the manifest.
    fn write_pending(&mut self) -> Result<()> {
        if self.pending == 0 {
            return Ok(());
        }
        let mut tail = Vec::new();
        let mut count = 0;
        while count < self.pending {
            let p = self.parts.pop().expect("pending pairs are in parts");
            count += p.len();
            tail.push(p);
        }
        tail.reverse();
        let chunk = concat(tail, count)?;
        let first = self.len() as u64;
        let c = save_chunk(&self.dir, first, &chunk)?;
        self.manifest.chunks.push(c);
        write_manifest(&self.dir, &self.manifest)?;
        self.parts.push(chunk);
        self.pending = 0;
        Ok(())
    }

    /// The first `n` pairs (at most all of them).
    pub fn pairs(&self, n: usize) -> Result<PairSet> {
        concat(self.parts.clone(), n.min(self.len()))
    }
}

/// The first `limit` pairs of the cache in `dir` built under `key`, without
/// changing it: a cache of other settings (or none) is an error here, not
/// a reason to start anew as [`Bank::open`] does.
pub fn read(dir: &Path, key: &CacheKey, limit: usize) -> Result<PairSet> {
    match read_manifest(dir)? {
        Some(m) if m.key == *key => {}
        Some(m) => {
            return Err(Error::invalid(format!(
                "the pair bank in {} was built with other settings ({}); build this one with                  `clip2gan train --mode fit --pairs N`",
                dir.display(),
                key_changes(&m.key, key)
            )))
        }
        None => {
            return Err(Error::invalid(format!(
                "there is no pair bank in {}; build one with `clip2gan train --mode fit --pairs N`",
                dir.display()
            )))
        }
    }
    let bank = Bank::open(dir, key, limit, usize::MAX, true)?;
    bank.pairs(limit)
}

/// The first `total` pairs, from `dir` where possible, rendering (and
/// saving) what is missing. `None` if `stop` was raised: the complete chunks
/// stay on disk for the next run.
pub fn ensure(
    dir: &Path,
    r: &Renderer,
    total: usize,
    chunk_pairs: usize,
    stop: &AtomicBool,
    quiet: bool,
) -> Result<Option<(PairSet, CacheStats)>> {
    let mut bank = Bank::open(dir, &r.key, total, chunk_pairs, quiet)?;
    let covered = bank.len();
    let mut stats = CacheStats {
        reused: covered.min(total),
        ..Default::default()
    };
    if covered < total {
        note(
            quiet,
            &format!(
                "pair cache: {covered} pairs reused, rendering {} more into {}",
                total - covered,
                dir.display()
            ),
        );
    }
    let mut progress = Progress::new("pairs", covered as u64, total as u64, quiet);
    while bank.len() < total {
        if stop.load(Ordering::SeqCst) {
            progress.finish();
            return Ok(None);
        }
        stats.rendered += bank.grow(r, total)?;
        progress.update(bank.len() as u64, "");
    }
    progress.finish();
    stats.render_s = if stats.rendered > 0 {
        progress.elapsed_s()
    } else {
        0.0
    };
    Ok(Some((bank.pairs(total)?, stats)))
}

fn note(quiet: bool, msg: &str) {
    if !quiet {
        tracing::info!("{msg}");
    }
}

fn key_changes(a: &CacheKey, b: &CacheKey) -> String {
    let (a, b) = (
        serde_json::to_value(a).unwrap_or_default(),
        serde_json::to_value(b).unwrap_or_default(),
    );
    let mut out = Vec::new();
    if let (Some(a), Some(b)) = (a.as_object(), b.as_object()) {
        for (k, va) in a {
            if b.get(k) != Some(va) {
                out.push(format!(
                    "{k}: {va} -> {}",
                    b.get(k).cloned().unwrap_or_default()
                ));
            }
        }
    }
    out.join(", ")
}

fn read_manifest(dir: &Path) -> Result<Option<Manifest>> {
    let path = dir.join(MANIFEST);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|err| Error::Read {
        path: path.clone(),
        err,
    })?;
    match serde_json::from_str(&text) {
        Ok(m) => Ok(Some(m)),
        Err(e) => {
            tracing::warn!(
                "{} is unreadable ({e}); rebuilding the pair cache",
                path.display()
            );
            Ok(None)
        }
    }
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let text = serde_json::to_string_pretty(m).map_err(|e| Error::invalid(e.to_string()))?;
    write_atomic(&dir.join(MANIFEST), text.as_bytes())
}

fn chunk_name(first: u64, n: usize) -> String {
    format!("pairs-{first:09}-{n}.safetensors")
}

/// Delete chunk files the manifest does not list and leftovers of
/// interrupted atomic writes.
fn remove_strays(dir: &Path, m: &Manifest) -> Result<()> {
    let listed: Vec<&str> = m.chunks.iter().map(|c| c.file.as_str()).collect();
    let entries = std::fs::read_dir(dir).map_err(|err| Error::Read {
        path: dir.to_path_buf(),
        err,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stray_chunk = name.starts_with("pairs-")
            && name.ends_with(".safetensors")
            && !listed.contains(&name.as_str());
        let partial = name.starts_with('.') && name.ends_with(".partial");
        if stray_chunk || partial {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

fn save_chunk(dir: &Path, first: u64, p: &PairSet) -> Result<Chunk> {
    let file = chunk_name(first, p.len());
    let cross = Tensor::from_vec(p.cross.clone(), p.len(), &Device::Cpu)?;
    let bytes = crate::tensorfile::serialize(
        &[
            ("w".into(), p.w.to_dtype(DType::F32)?),
            ("cross".into(), cross),
            ("e".into(), p.e.to_dtype(DType::F32)?),
        ],
        HashMap::from([("first".to_string(), first.to_string())]),
    )?;
    write_atomic(&dir.join(&file), &bytes)?;
    Ok(Chunk {
        file,
        first,
        pairs: p.len(),
        sha256: sha256_hex(&bytes),
    })
}

fn load_chunk(dir: &Path, c: &Chunk, expect_first: u64) -> Result<PairSet> {
    if c.first != expect_first {
        return Err(Error::invalid(format!(
            "starts at pair {}, expected {expect_first}",
            c.first
        )));
    }
    let path: PathBuf = dir.join(&c.file);
    let bytes = std::fs::read(&path).map_err(|err| Error::Read {
        path: path.clone(),
        err,
    })?;
    if sha256_hex(&bytes) != c.sha256 {
        return Err(Error::invalid("checksum mismatch".to_string()));
    }
    let mut f = crate::tensorfile::parse(&bytes, &path, &Device::Cpu)?;
    let w = f.take("w", &path)?;
    let cross: Vec<u32> = f.take("cross", &path)?.to_vec1()?;
    let e = f.take("e", &path)?;
    if w.dim(0)? != c.pairs || cross.len() != c.pairs || e.dim(0)? != c.pairs {
        return Err(Error::invalid(format!("does not hold {} pairs", c.pairs)));
    }
    Ok(PairSet { w, cross, e })
}

/// Concatenate parts and keep the first `n` pairs.
fn concat(parts: Vec<PairSet>, n: usize) -> Result<PairSet> {
    let w: Vec<&Tensor> = parts.iter().map(|p| &p.w).collect();
    let e: Vec<&Tensor> = parts.iter().map(|p| &p.e).collect();
    let mut cross: Vec<u32> = parts.iter().flat_map(|p| p.cross.iter().copied()).collect();
    cross.truncate(n);
    Ok(PairSet {
        w: Tensor::cat(&w, 0)?.narrow(0, 0, n)?,
        cross,
        e: Tensor::cat(&e, 0)?.narrow(0, 0, n)?,
    })
}
