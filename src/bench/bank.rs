//! `clip2gan bench bank`: the pair bank's rate against the limit of the
//! generator then CLIP, each at its own speed, in the same run.

use std::time::Instant;

use serde::Serialize;

use super::{median, process_cpu_s};
use crate::error::Result;
use crate::generator::Generator;

/// One round of [`bank`]: the same samples rendered three ways.
#[derive(Debug, Clone, Serialize)]
pub struct BankRound {
    /// The generator alone (z -> W+ -> image reduced to CLIP's input side),
    /// in the bank's generator batches, per image.
    pub generator_ms: f64,
    /// CLIP alone on those images (`encode_generated`, in the bank's
    /// batches), per image.
    pub clip_ms: f64,
    /// The bank's own step (`data::render_samples`, what `Bank::grow` runs),
    /// per pair.
    pub bank_ms: f64,
    /// CPU time of the process per pair for each (all threads).
    pub generator_cpu_ms: f64,
    pub clip_cpu_ms: f64,
    pub bank_cpu_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct BankBench {
    pub bench: &'static str,
    pub generator: String,
    pub clip: String,
    pub device: String,
    pub threads: usize,
    pub gen_batch: usize,
    pub pairs_per_round: usize,
    /// Every round, the warm-up first.
    pub rounds: Vec<BankRound>,
    /// Medians over the rounds after the warm-up.
    pub bank_pairs_per_s: f64,
    /// The limit of doing the two one after the other at their own best
    /// speed: 1000 / (generator_ms + clip_ms).
    pub limit_pairs_per_s: f64,
    /// `bank_pairs_per_s / limit_pairs_per_s`, the median of the rounds'
    /// ratios.
    pub share_of_limit: f64,
    /// What overlapping the two could reach at best: every core busy all
    /// the time with the work the two do alone (their CPU time per pair).
    pub all_cores_pairs_per_s: f64,
}

/// The pair bank's rate against its limit in the same run: each round
/// renders `pairs` samples through the generator alone, CLIP alone and the
/// bank's own step, so drift on a shared machine hits all three alike. The
/// first round is a warm-up.
pub fn bank(
    g: &dyn Generator,
    clip: &crate::clip::Clip,
    clip_name: &str,
    spec: &crate::train::data::SampleSpec,
    pairs: usize,
    rounds: usize,
) -> Result<BankBench> {
    use crate::train::data;
    let timed = |f: &mut dyn FnMut() -> Result<()>| -> Result<(f64, f64)> {
        let (t0, c0) = (Instant::now(), process_cpu_s());
        f()?;
        Ok((
            t0.elapsed().as_secs_f64() * 1000.0 / pairs as f64,
            (process_cpu_s() - c0) * 1000.0 / pairs as f64,
        ))
    };
    let step = crate::train::cache::grow_step(spec);
    let chunks = |round: usize| {
        let first = (round * pairs) as u64;
        (first..first + pairs as u64)
            .step_by(step)
            .map(move |s| s..(s + step as u64).min(first + pairs as u64))
    };
    let mut all = Vec::new();
    for round in 0..=rounds.max(1) {
        let codes = chunks(round)
            .map(|r| data::sample_codes(g, 0, "bench-bank", r, spec))
            .collect::<Result<Vec<_>>>()?;
        let mut images = Vec::new();
        let (generator_ms, generator_cpu_ms) = timed(&mut || {
            for c in &codes {
                images.push(data::render(g, &data::wplus(c, g.num_styles())?, spec)?);
            }
            Ok(())
        })?;
        let (clip_ms, clip_cpu_ms) = timed(&mut || {
            for im in &images {
                let e = data::embed(clip, im)?;
                let _ = e.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
            }
            Ok(())
        })?;
        // What `Bank::grow` runs, one step at a time.
        let (bank_ms, bank_cpu_ms) = timed(&mut || {
            for r in chunks(round) {
                let s = data::render_samples(g, clip, 0, "bench-bank", r, spec)?;
                let _ = s.e.flatten_all()?.narrow(0, 0, 1)?.to_vec1::<f32>()?;
            }
            Ok(())
        })?;
        all.push(BankRound {
            generator_ms,
            clip_ms,
            bank_ms,
            generator_cpu_ms,
            clip_cpu_ms,
            bank_cpu_ms,
        });
    }
    let measured = &all[1..];
    let of = |f: &dyn Fn(&BankRound) -> f64| median(measured.iter().map(f).collect());
    let threads = rayon::current_num_threads();
    Ok(BankBench {
        bench: "bank",
        generator: g.id().to_string(),
        clip: clip_name.to_string(),
        device: crate::device::describe(g.device()),
        threads,
        gen_batch: spec.gen_batch,
        pairs_per_round: pairs,
        bank_pairs_per_s: of(&|r| 1000.0 / r.bank_ms),
        limit_pairs_per_s: of(&|r| 1000.0 / (r.generator_ms + r.clip_ms)),
        share_of_limit: of(&|r| (r.generator_ms + r.clip_ms) / r.bank_ms),
        all_cores_pairs_per_s: of(&|r| {
            1000.0 * threads as f64 / (r.generator_cpu_ms + r.clip_cpu_ms)
        }),
        rounds: all,
    })
}

impl BankBench {
    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let r = |f: &dyn Fn(&BankRound) -> f64| median(self.rounds[1..].iter().map(f).collect());
        format!(
            "pair bank: {:.2} pairs/s = {:.2}x the limit of generator then CLIP at their own speed \
             ({:.2} pairs/s: generator {:.0} ms + CLIP {:.0} ms per pair); every core busy with \
             that work would give {:.2} pairs/s",
            self.bank_pairs_per_s,
            self.share_of_limit,
            self.limit_pairs_per_s,
            r(&|x| x.generator_ms),
            r(&|x| x.clip_ms),
            self.all_cores_pairs_per_s,
        )
    }
}
