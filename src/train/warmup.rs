//! First use: there is no mapper yet, so one is built from generated faces
//! (a pair bank and the closed-form fit of [`super::fit`]) before the first
//! face, and improved later.
//!
//! - [`build_first`]: the command line's way: render `first_pairs` pairs
//!   with a progress bar, fit, write the mapper, go on.
//! - [`Growth`]: the bot's way: the engine's worker renders a few pairs at a
//!   time while no job waits, fits once `first_pairs` are there (serving
//!   starts), and refits at each doubling up to `pairs`, so the mapper gets
//!   better as the bot idles. The bank is the same resumable pair cache
//!   `clip2gan train` uses, so nothing rendered is ever rendered again.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use super::cache::{Bank, CacheKey, Renderer};
use super::data::{self, SampleSpec};
use super::refine::Refinement;
use super::{Setup, TrainConfig};
use crate::clip::Clip;
use crate::error::{Error, Result};
use crate::generator::Generator;
use crate::mapper::Mapper;

/// What first use builds and where (from `[mapper]` and `[train]`).
#[derive(Debug, Clone)]
pub struct Plan {
    /// The mapper file to write.
    pub out: PathBuf,
    /// The run directory whose `pairs/` holds the bank.
    pub run_dir: PathBuf,
    /// `[train]` in fit mode: seed, sampling, image size, batch sizes.
    pub train: TrainConfig,
    /// The CLIP checkpoint's name, recorded in the mapper.
    pub clip_model: String,
    /// Typical prompts of the generator, for the text shift.
    pub captions: super::captions::Captions,
    pub first_pairs: usize,
    pub pairs: usize,
}

impl Plan {
    fn bank_dir(&self) -> PathBuf {
        self.run_dir.join("pairs")
    }

    fn spec(&self, g: &dyn Generator) -> SampleSpec {
        SampleSpec {
            truncation: self.train.truncation,
            style_mixing: self.train.style_mixing,
            image_size: data::effective_image_size(self.train.image_size, g.resolution()),
            gen_batch: self.train.gen_batch,
        }
    }

    /// The first `limit` pairs of this plan's bank, read only (for
    /// measurements: a bank of other settings is an error, never rebuilt).
    pub fn read_bank(
        &self,
        clip: &Clip,
        g: &dyn Generator,
        limit: usize,
    ) -> Result<super::cache::PairSet> {
        let key = CacheKey::new(g, clip, &self.clip_model, self.train.seed, &self.spec(g));
        super::cache::read(&self.bank_dir(), &key, limit)
    }

    /// The next bank size to fit at after `n` pairs: `first_pairs`, then
    /// doublings, capped at `pairs`.
    fn next_milestone(&self, n: usize) -> Option<usize> {
        let mut m = self.first_pairs;
        while m <= n && m < self.pairs {
            m = (m * 2).min(self.pairs);
        }
        (m > n).then_some(m)
    }
}

/// Build the first mapper on the command line: renders (or reuses) the first
/// `first_pairs` pairs with a progress bar, fits, and writes `plan.out`.
pub fn build_first(
    plan: &Plan,
    clip: &Clip,
    g: &dyn Generator,
    stop: &AtomicBool,
    quiet: bool,
) -> Result<()> {
    // Serve early: the fit alone; refining waits for the full bank.
    let config = TrainConfig {
        pairs: plan.first_pairs,
        refine: super::refine::RefineConfig {
            steps: 0,
            ..plan.train.refine.clone()
        },
        ..plan.train.clone()
    };
    let report = super::train(&Setup {
        g,
        clip,
        clip_model: plan.clip_model.clone(),
        config,
        captions: plan.captions.clone(),
        run_dir: plan.run_dir.clone(),
        out: plan.out.clone(),
        resume: false,
        stop,
        stop_after: None,
        quiet,
    })?;
    if report.interrupted {
        return Err(Error::Training(format!(
            "interrupted while building the first mapper; the pairs rendered so far are kept in {} \
             and the next run goes on from there",
            plan.bank_dir().display()
        )));
    }
    Ok(())
}

/// How far the first mapper is (for "warming up" answers).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Warming {
    pub done: usize,
    pub target: usize,
    /// Seconds left at the rate so far; `None` before a rate is known.
    pub eta_s: Option<f64>,
}

impl Warming {
    pub fn percent(&self) -> u8 {
        (100 * self.done / self.target.max(1)).min(99) as u8
    }
}

/// The bank growing in the background, a few pairs per [`Growth::step`].
pub struct Growth {
    plan: Plan,
    key: CacheKey,
    spec: SampleSpec,
    bank: Bank,
    /// When rendering started in this process, and the bank size then.
    began: Option<(Instant, usize)>,
    /// Whether a mapper exists (from this growth or from an earlier run).
    fitted: bool,
    /// The MLP refined from the fit on the full bank is still to be made
    /// (`[train.refine]`), and, once started, its steps.
    refine_pending: bool,
    refining: Option<Refinement>,
}

impl Growth {
    /// Open the bank of `plan` for `g` and `clip`; `fitted` says whether a
    /// usable mapper already exists (then growth only improves it).
    pub fn new(plan: Plan, clip: &Clip, g: &dyn Generator, fitted: bool) -> Result<Self> {
        let spec = plan.spec(g);
        let key = CacheKey::new(g, clip, &plan.clip_model, plan.train.seed, &spec);
        let bank = Bank::open(
            &plan.bank_dir(),
            &key,
            plan.pairs,
            plan.train.chunk_pairs,
            true,
        )?;
        Ok(Self {
            refine_pending: plan.train.refine.steps > 0,
            refining: None,
            plan,
            key,
            spec,
            bank,
            began: None,
            fitted,
        })
    }

    /// Whether there is work left: pairs to render, or the MLP to refine.
    pub fn growing(&self) -> bool {
        self.bank.len() < self.plan.pairs || self.refine_pending
    }

    /// `Some` while there is no mapper yet.
    pub fn warming(&self) -> Option<Warming> {
        if self.fitted {
            return None;
        }
        let done = self.bank.len();
        let target = self.plan.first_pairs;
        let eta_s = self.began.and_then(|(t, at)| {
            let rate = done.saturating_sub(at) as f64 / t.elapsed().as_secs_f64().max(1e-3);
            (rate > 0.0).then(|| target.saturating_sub(done) as f64 / rate)
        });
        Some(Warming {
            done,
            target,
            eta_s,
        })
    }

    /// Render one generator batch of pairs, or run one step of the
    /// refinement; when the bank reaches the next size to fit at (or already
    /// holds the first, e.g. after a restart with no mapper), fit, write the
    /// mapper and return it, and the same when the refined MLP is done.
    pub fn step(&mut self, clip: &Clip, g: &dyn Generator) -> Result<Option<Mapper>> {
        if let Some(r) = &mut self.refining {
            r.step(g, clip)?;
            return if r.done() {
                self.refined(g).map(Some)
            } else {
                Ok(None)
            };
        }
        let n = self.bank.len();
        if !self.fitted && n >= self.plan.first_pairs {
            return self.fit(clip, g, n).map(Some);
        }
        let Some(limit) = self.plan.next_milestone(n) else {
            // The bank is full but the MLP was never refined (a restart
            // in between): fit again, which starts it.
            if self.refine_pending {
                return self.fit(clip, g, n).map(Some);
            }
            return Ok(None);
        };
        if self.began.is_none() {
            self.began = Some((Instant::now(), n));
        }
        let r = Renderer {
            g,
            clip,
            key: self.key.clone(),
            spec: self.spec,
        };
        self.bank.grow(&r, limit)?;
        if self.bank.len() == limit {
            return self.fit(clip, g, limit).map(Some);
        }
        Ok(None)
    }

    /// Fit on the first `n` pairs and write the mapper.
    fn fit(&mut self, clip: &Clip, g: &dyn Generator, n: usize) -> Result<Mapper> {
        let pairs = self.bank.pairs(n)?;
        let config = TrainConfig {
            pairs: n,
            ..self.plan.train.clone()
        };
        let closed = super::fit::make_mapper(
            g,
            clip,
            &self.plan.clip_model,
            &config,
            &pairs,
            &self.plan.captions,
        )?;
        crate::mapper::save(
            &self.plan.out,
            &closed.varmap,
            closed.mapper.w_avg(),
            &closed.mapper.meta,
        )?;
        tracing::info!(
            pairs = n,
            file = %self.plan.out.display(),
            "{}",
            closed.fitted.report.summary()
        );
        self.fitted = true;
        if self.refine_pending && n >= self.plan.pairs {
            self.refining = Some(Refinement::new(
                g,
                clip,
                &self.plan.clip_model,
                &config,
                &pairs,
                &closed,
            )?);
            tracing::info!(
                steps = config.refine.steps,
                "refining the fit into an MLP in idle time"
            );
        }
        Ok(closed.mapper)
    }

    /// Write the refined MLP and return it; growth is done.
    fn refined(&mut self, g: &dyn Generator) -> Result<Mapper> {
        let r = self.refining.take().expect("called while refining");
        let (mapper, varmap) = r.finish(g)?;
        crate::mapper::save(&self.plan.out, &varmap, mapper.w_avg(), &mapper.meta)?;
        tracing::info!(file = %self.plan.out.display(), "the MLP refined from the fit is in use");
        self.refine_pending = false;
        Ok(mapper)
    }
}
