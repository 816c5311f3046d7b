//! The training objective for one batch. The mapper sees the perturbed
//! embedding (modality gap); each loss compares its prediction with what the
//! batch knows: the sampled W+ (latent), the target image (image), the clean
//! embedding (CLIP consistency), and `w_avg` (pull). Image and CLIP losses
//! backpropagate through the frozen generator and CLIP.

use candle_core::Tensor;

use super::config::LossWeights;
use super::data;
use super::gap;
use super::source::Batch;
use crate::clip::Clip;
use crate::error::Result;
use crate::generator::Generator;
use crate::mapper::Mapper;

/// What the objective needs besides the batch.
pub struct Objective<'a> {
    pub weights: LossWeights,
    /// Image and CLIP losses are computed (full mode).
    pub through_generator: bool,
    pub g: &'a dyn Generator,
    pub clip: &'a Clip,
    pub image_size: usize,
    pub recon_size: usize,
    pub xi: f64,
    pub seed: u64,
}

/// The weighted total (to backpropagate) and each unweighted term.
pub struct Losses {
    pub total: Tensor,
    pub terms: Vec<(&'static str, Tensor)>,
}

impl Objective<'_> {
    pub fn compute(&self, mapper: &Mapper, batch: &Batch, step: u64) -> Result<Losses> {
        let w = &self.weights;
        let input = gap::perturb(&batch.e, self.xi, self.seed, &format!("gap-{step}"))?;
        let pred = mapper.forward(&input)?;
        let mut terms = Vec::new();
        let mut total: Option<Tensor> = None;
        let mut add = |name: &'static str, weight: f64, value: Tensor| -> Result<()> {
            let weighted = (&value * weight)?;
            total = Some(match total.take() {
                None => weighted,
                Some(t) => (t + weighted)?,
            });
            terms.push((name, value));
            Ok(())
        };
        if let (Some(target), true) = (&batch.wplus, w.latent > 0.0) {
            let n = target.dim(0)?;
            add("latent", w.latent, mse(&pred.narrow(0, 0, n)?, target)?)?;
        }
        if w.pull > 0.0 {
            add(
                "pull",
                w.pull,
                pred.broadcast_sub(mapper.w_avg())?.sqr()?.mean_all()?,
            )?;
        }
        if self.through_generator && (w.image > 0.0 || w.clip > 0.0) {
            let img = data::render_differentiable(self.g, &pred, self.image_size)?;
            if let (Some(target), true) = (&batch.images, w.image > 0.0) {
                add(
                    "image",
                    w.image,
                    mse(&data::reduce(&img, self.recon_size)?, target)?,
                )?;
            }
            if w.clip > 0.0 {
                let e_hat = data::embed(self.clip, &img)?;
                let cos = (e_hat * &batch.e)?.sum(1)?.mean_all()?;
                add("clip", w.clip, cos.affine(-1.0, 1.0)?)?;
            }
        }
        let total = total.ok_or_else(|| {
            crate::error::Error::invalid("no loss applies to this batch: check train.loss weights")
        })?;
        Ok(Losses { total, terms })
    }
}

fn mse(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok((a - b)?.sqr()?.mean_all()?)
}
