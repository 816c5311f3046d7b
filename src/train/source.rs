//! Where each step's batch comes from: the pair cache (shuffled anew every
//! epoch) or fresh generator samples plus, optionally, the user's images.
//! A batch depends only on the seed and the step number, which is what lets
//! a resumed run see exactly the batches the uninterrupted run would have.

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::Rng;

use super::cache::PairSet;
use super::data::{self, Codes, SampleSpec};
use super::images::UserImages;
use crate::clip::Clip;
use crate::error::Result;
use crate::generator::Generator;
use crate::rng;

pub struct Batch {
    /// Clean, L2-normalised CLIP embeddings `[b, d]` (the mapper gets them
    /// perturbed; the CLIP loss compares against them as they are).
    pub e: Tensor,
    /// W+ targets of the first `wplus.dim(0)` rows; the rest (user images) have none.
    pub wplus: Option<Tensor>,
    /// Image targets `[b, 3, r, r]` at `recon_size` (full mode).
    pub images: Option<Tensor>,
}

pub trait Source {
    fn batch(&mut self, step: u64) -> Result<Batch>;
}

/// Batches from cached pairs: epoch k visits the pairs in a permutation
/// drawn from stream `epoch-k`.
pub struct CacheSource {
    w: Tensor,
    cross: Vec<u32>,
    e: Tensor,
    num_styles: usize,
    batch: usize,
    seed: u64,
    epoch: Option<(u64, Vec<u32>)>,
}

impl CacheSource {
    pub fn new(
        pairs: PairSet,
        num_styles: usize,
        batch: usize,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            w: pairs.w.to_device(device)?,
            e: pairs.e.to_device(device)?,
            batch: batch.min(pairs.len()),
            cross: pairs.cross,
            num_styles,
            seed,
            epoch: None,
        })
    }
}

impl Source for CacheSource {
    fn batch(&mut self, step: u64) -> Result<Batch> {
        let n = self.cross.len();
        let per_epoch = (n / self.batch) as u64;
        let (epoch, pos) = ((step - 1) / per_epoch, ((step - 1) % per_epoch) as usize);
        if self.epoch.as_ref().is_none_or(|(k, _)| *k != epoch) {
            let mut perm: Vec<u32> = (0..n as u32).collect();
            perm.shuffle(&mut rng::stream(self.seed, &format!("epoch-{epoch}")));
            self.epoch = Some((epoch, perm));
        }
        let perm = &self.epoch.as_ref().expect("set above").1;
        let idx = perm[pos * self.batch..(pos + 1) * self.batch].to_vec();
        let cross = idx.iter().map(|&i| self.cross[i as usize]).collect();
        let idx = Tensor::from_vec(idx, self.batch, self.w.device())?;
        let codes = Codes {
            w: self.w.index_select(&idx, 0)?,
            cross,
        };
        Ok(Batch {
            e: self.e.index_select(&idx, 0)?,
            wplus: Some(data::wplus(&codes, self.num_styles)?),
            images: None,
        })
    }
}

/// Fresh samples every step: step t renders samples `(t-1)*b .. t*b` of
/// stream family "full", so no two steps share a sample.
pub struct FullSource<'a> {
    pub g: &'a dyn Generator,
    pub clip: &'a Clip,
    pub spec: SampleSpec,
    pub recon_size: usize,
    pub batch: usize,
    pub seed: u64,
    pub user: Option<UserImages>,
    pub user_share: f64,
}

impl FullSource<'_> {
    fn user_count(&self) -> usize {
        match &self.user {
            Some(_) => {
                ((self.batch as f64 * self.user_share).round() as usize).clamp(1, self.batch)
            }
            None => 0,
        }
    }
}

impl Source for FullSource<'_> {
    fn batch(&mut self, step: u64) -> Result<Batch> {
        let n_user = self.user_count();
        let n_gen = self.batch - n_user;
        let mut es = Vec::new();
        let mut targets = Vec::new();
        let mut wplus = None;
        if n_gen > 0 {
            let first = (step - 1) * n_gen as u64;
            let s = data::render_samples(
                self.g,
                self.clip,
                self.seed,
                "full",
                first..first + n_gen as u64,
                &self.spec,
            )?;
            es.push(s.e);
            targets.push(data::reduce(&s.images, self.recon_size)?);
            wplus = Some(s.wplus);
        }
        if let Some(u) = &self.user {
            let mut r = rng::stream(self.seed, &format!("user-{step}"));
            let count = u.e.dim(0)?;
            let idx: Vec<u32> = (0..n_user)
                .map(|_| r.random_range(0..count as u32))
                .collect();
            let idx = Tensor::from_vec(idx, n_user, u.e.device())?;
            es.push(u.e.index_select(&idx, 0)?);
            targets.push(u.targets.index_select(&idx, 0)?);
        }
        Ok(Batch {
            e: Tensor::cat(&es, 0)?,
            wplus,
            images: Some(Tensor::cat(&targets, 0)?),
        })
    }
}
