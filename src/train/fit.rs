//! The closed-form mapper: ridge regression from CLIP image embeddings to
//! the W residual over `w_avg`, fitted on the pair bank in seconds.
//!
//! Why it works where a small MLP does not: with a few thousand pairs the
//! best predictor of W from a CLIP embedding is close to linear, and a
//! linear fit has a closed form with one knob (the ridge strength), which
//! cross-validation picks on held-out pairs.
//!
//! Why it is safe on text: a plain ridge blows up on inputs outside the
//! image embeddings' cluster (text embeddings, LAFITE-perturbed ones),
//! because face embeddings sit in a narrow cap of the sphere (mean pairwise
//! cosine ~0.9) and the fit is free to put large weights on directions the
//! images barely vary in. Three things keep it in range:
//! - the component along the images' mean direction is dropped (it is the
//!   radial direction of that cap, where a perturbed or text embedding
//!   differs most and the images least);
//! - the ridge strength is the one with the lowest clean held-out error
//!   among those that keep the error on perturbed copies of the held-out
//!   embeddings (`robust_xi`) below always-w_avg's (`robust_max`), so
//!   directions that only noise excites get small weights;
//! - the predicted shift from the mean latent is clamped to the largest
//!   shift the fit makes on the bank itself.
//!
//! Text embeddings are also moved by the modality gap's mean
//! (`mu_image - mu_text`, see [`super::captions`]) before they are mapped.
//! Variety comes from the fit's own residuals: image k of a prompt adds a
//! residual drawn from the bank, so every sample is the predicted mean plus a
//! deviation real faces show (see [`crate::mapper::Mapper::sample`]).

use std::time::Instant;

use candle_core::{Device, Tensor};
use nalgebra::{DMatrix, SymmetricEigen};
use serde::{Deserialize, Serialize};

use super::cache::PairSet;
use crate::error::{Error, Result};

/// `[train.fit]`: how the closed-form mapper is fitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitConfig {
    /// Folds of the cross-validation that picks the ridge strength.
    pub folds: usize,
    /// LAFITE noise level of the perturbed held-out copies the choice must
    /// also predict well (a stand-in for text inputs).
    pub robust_xi: f64,
    /// The choice is the lowest clean held-out error among the strengths
    /// whose error on the perturbed copies stays at most this share of
    /// always-w_avg's (so off-distribution inputs do no worse than the
    /// average face); if none does, the most robust strength.
    pub robust_max: f64,
}

impl Default for FitConfig {
    fn default() -> Self {
        Self {
            folds: 5,
            robust_xi: 0.5,
            robust_max: 0.97,
        }
    }
}

impl FitConfig {
    pub fn validate(&self) -> Result<()> {
        if !(2..=20).contains(&self.folds) {
            return Err(Error::Config("train.fit.folds must be 2 to 20".into()));
        }
        if !(0.0..1.0).contains(&self.robust_xi)
            || self.robust_max.is_nan()
            || self.robust_max <= 0.0
        {
            return Err(Error::Config(
                "train.fit.robust_xi must be in [0, 1) and robust_max positive".into(),
            ));
        }
        Ok(())
    }
}

/// Held-out errors of one ridge strength (mean squared error per latent
/// value, as `eval-mapper` reports it).
#[derive(Debug, Clone, Serialize)]
pub struct CvRow {
    /// Ridge strength relative to the mean eigenvalue of the inputs' Gram matrix.
    pub lambda_rel: f64,
    pub clean_mse: f64,
    pub perturbed_mse: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub pairs: usize,
    pub lambda_rel: f64,
    /// Held-out error of "always w_avg" on the same folds.
    pub baseline_mse: f64,
    pub clean_mse: f64,
    pub perturbed_mse: f64,
    pub cv: Vec<CvRow>,
    pub fit_s: f64,
}

/// The fitted map `e -> w - w_avg = weight e + bias`, its clamp and residuals.
pub struct Fitted {
    /// `[w_dim, clip_dim]`
    pub weight: Tensor,
    /// `[w_dim]`
    pub bias: Tensor,
    /// Largest `|weight e|` over the bank: predictions are clamped to it.
    pub max_shift: f32,
    /// `[n, w_dim]`: `w - w_avg - prediction` of each bank pair.
    pub residuals: Tensor,
    pub report: FitReport,
}

/// Ridge strengths tried, relative to the mean eigenvalue of `X^T X`.
const LAMBDA_GRID: [f64; 13] = [
    1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0,
];

fn to_matrix(t: &Tensor) -> Result<DMatrix<f64>> {
    let (n, d) = t.dims2()?;
    let v: Vec<f64> = t
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F64)?
        .flatten_all()?
        .to_vec1()?;
    Ok(DMatrix::from_row_slice(n, d, &v))
}

fn to_tensor(m: &DMatrix<f64>) -> Result<Tensor> {
    let (n, d) = m.shape();
    // nalgebra is column-major; the transpose's storage is the row-major data.
    let v: Vec<f32> = m.transpose().iter().map(|&x| x as f32).collect();
    Ok(Tensor::from_vec(v, (n, d), &Device::Cpu)?)
}

/// Inputs as the fit sees them: centred on `mu`, with the component along
/// `mu`'s direction removed (`x = (e - mu) P`, `P = I - m m^T`).
struct Inputs {
    mu: nalgebra::DVector<f64>,
    dir: nalgebra::DVector<f64>,
}

impl Inputs {
    fn new(e: &DMatrix<f64>) -> Self {
        let mu = e.row_mean().transpose();
        let dir = mu.normalize();
        Self { mu, dir }
    }

    fn apply(&self, e: &DMatrix<f64>) -> DMatrix<f64> {
        let mut x = e.clone();
        for mut row in x.row_iter_mut() {
            row -= self.mu.transpose();
            let along = row.dot(&self.dir.transpose());
            row -= along * self.dir.transpose();
        }
        x
    }

    /// `P`: folding it into the weights makes the map a plain affine one.
    fn projector(&self) -> DMatrix<f64> {
        let d = self.dir.len();
        DMatrix::identity(d, d) - &self.dir * self.dir.transpose()
    }
}

/// Ridge solution pieces for one training set: `X^T X = V diag(s) V^T` and
/// `Z = V^T X^T Y`, so that `B(lambda) = V diag(1 / (s + lambda)) Z`.
struct Ridge {
    v: DMatrix<f64>,
    s: Vec<f64>,
    z: DMatrix<f64>,
    mean_eig: f64,
}

impl Ridge {
    fn new(x: &DMatrix<f64>, y: &DMatrix<f64>) -> Self {
        let gram = x.transpose() * x;
        let eig = SymmetricEigen::new(gram);
        let s: Vec<f64> = eig.eigenvalues.iter().map(|&v| v.max(0.0)).collect();
        let mean_eig = s.iter().sum::<f64>() / s.len() as f64;
        let z = eig.eigenvectors.transpose() * (x.transpose() * y);
        Self {
            v: eig.eigenvectors,
            s,
            z,
            mean_eig,
        }
    }

    /// `diag(1 / (s + lambda)) Z` for `lambda = rel * mean eigenvalue`.
    fn scaled_z(&self, rel: f64) -> DMatrix<f64> {
        let lambda = rel * self.mean_eig;
        let mut z = self.z.clone();
        for (i, mut row) in z.row_iter_mut().enumerate() {
            row /= self.s[i] + lambda;
        }
        z
    }

    fn coefficients(&self, rel: f64) -> DMatrix<f64> {
        &self.v * self.scaled_z(rel)
    }
}

fn mse(pred: &DMatrix<f64>, truth: &DMatrix<f64>) -> f64 {
    (pred - truth).norm_squared() / (truth.nrows() * truth.ncols()) as f64
}

/// Fit the closed-form mapper on `pairs` (which must be unmixed: one w per
/// pair, the same at every style). `seed` draws the perturbed held-out copies.
pub fn fit(
    pairs: &PairSet,
    w_avg: &Tensor,
    num_styles: usize,
    cfg: &FitConfig,
    seed: u64,
) -> Result<Fitted> {
    cfg.validate()?;
    let began = Instant::now();
    let n = pairs.len();
    if n < 4 * cfg.folds {
        return Err(Error::invalid(format!(
            "the closed-form fit needs at least {} pairs, the bank has {n}",
            4 * cfg.folds
        )));
    }
    if pairs.cross.iter().any(|&c| c as usize != num_styles) {
        return Err(Error::invalid(
            "the closed-form fit maps to one w per image, but these pairs mix styles: \
             build the pair bank with train.style_mixing = 0",
        ));
    }
    let e = to_matrix(&pairs.e)?;
    let w = to_matrix(&pairs.w.narrow(1, 0, 1)?.squeeze(1)?)?;
    let w_avg = to_matrix(&w_avg.unsqueeze(0)?)?;
    let mut y = w.clone();
    for mut row in y.row_iter_mut() {
        row -= w_avg.row(0);
    }
    let y_mean = y.row_mean();
    let mut yc = y.clone();
    for mut row in yc.row_iter_mut() {
        row -= &y_mean;
    }
    let inputs = Inputs::new(&e);
    let x = inputs.apply(&e);
    let perturbed = super::gap::perturb(&pairs.e, cfg.robust_xi, seed, "fit-heldout")?;
    let xp = inputs.apply(&to_matrix(&perturbed)?);

    // K-fold cross-validation over the grid, on contiguous folds (pairs are
    // independent draws, so any split is a random one).
    let mut clean = [0f64; LAMBDA_GRID.len()];
    let mut noisy = [0f64; LAMBDA_GRID.len()];
    let mut baseline = 0f64;
    for k in 0..cfg.folds {
        let (lo, hi) = (k * n / cfg.folds, (k + 1) * n / cfg.folds);
        let train_rows: Vec<usize> = (0..n).filter(|i| !(lo..hi).contains(i)).collect();
        let held: Vec<usize> = (lo..hi).collect();
        let ridge = Ridge::new(&x.select_rows(&train_rows), &yc.select_rows(&train_rows));
        let truth = yc.select_rows(&held);
        // "Always w_avg" predicts a zero residual.
        baseline += mse(
            &DMatrix::zeros(held.len(), y.ncols()),
            &y.select_rows(&held),
        );
        let h = x.select_rows(&held) * &ridge.v;
        let hp = xp.select_rows(&held) * &ridge.v;
        for (j, &rel) in LAMBDA_GRID.iter().enumerate() {
            let sz = ridge.scaled_z(rel);
            clean[j] += mse(&(&h * &sz), &truth);
            noisy[j] += mse(&(&hp * &sz), &truth);
        }
    }
    let folds = cfg.folds as f64;
    let baseline_mse = baseline / folds;
    let cv: Vec<CvRow> = LAMBDA_GRID
        .iter()
        .enumerate()
        .map(|(j, &rel)| CvRow {
            lambda_rel: rel,
            clean_mse: clean[j] / folds,
            perturbed_mse: noisy[j] / folds,
        })
        .collect();
    let robust = |r: &&CvRow| r.perturbed_mse <= cfg.robust_max * baseline_mse;
    let best = cv
        .iter()
        .filter(robust)
        .min_by(|a, b| a.clean_mse.total_cmp(&b.clean_mse))
        .or_else(|| {
            cv.iter()
                .min_by(|a, b| a.perturbed_mse.total_cmp(&b.perturbed_mse))
        })
        .expect("the grid is not empty")
        .clone();

    // The final fit on every pair, with P folded into the weights:
    // (e - mu) P B = e P B, since P mu = 0.
    let ridge = Ridge::new(&x, &yc);
    let b = inputs.projector() * ridge.coefficients(best.lambda_rel); // [d, w_dim]
    let shift = &x * ridge.coefficients(best.lambda_rel); // predictions minus y_mean
    let max_shift = shift.row_iter().map(|r| r.norm()).fold(0f64, f64::max);
    let residuals = yc - &shift;
    // The intercept: mean(y) - mean(e) P B (= mean(y): mu P = 0).
    let intercept = &y_mean - e.row_mean() * &b;
    Ok(Fitted {
        weight: to_tensor(&b.transpose())?,
        bias: Tensor::from_vec(
            intercept.iter().map(|&v| v as f32).collect(),
            intercept.len(),
            &Device::Cpu,
        )?,
        max_shift: max_shift as f32,
        residuals: to_tensor(&residuals)?,
        report: FitReport {
            pairs: n,
            lambda_rel: best.lambda_rel,
            baseline_mse,
            clean_mse: best.clean_mse,
            perturbed_mse: best.perturbed_mse,
            cv,
            fit_s: began.elapsed().as_secs_f64(),
        },
    })
}

/// The weights of an MLP mapper (no layer norm, leaky ReLU, `c.width` at
/// least twice the embedding) that computes exactly the fitted affine map
/// (unclamped), so that training starts from the fit instead of from w_avg.
///
/// A leaky ReLU of slope `a` passes `x` through a pair of units:
/// `lrelu(x) - lrelu(-x) = (1 + a) x`. So the first layer writes `[e; -e]`,
/// each further layer maps the pair to itself, and the output layer reads
/// `(h+ - h-) / (1 + a)` through the fit's weight, the same for every
/// style. The other units start at zero and are free to learn.
pub fn mlp_start(
    f: &Fitted,
    c: &crate::mapper::MapperConfig,
    num_styles: usize,
) -> Result<Vec<(String, Tensor)>> {
    use crate::mapper::{Activation, LEAKY_SLOPE};
    let (w_dim, d) = f.weight.dims2()?;
    if c.layer_norm || c.activation != Activation::LeakyRelu || c.depth == 0 {
        return Err(Error::invalid(
            "an MLP can start from the fit only without layer norm and with the leaky ReLU",
        ));
    }
    if c.width < 2 * d {
        return Err(Error::invalid(format!(
            "an MLP starts from the fit with mapper.width >= {} (twice the CLIP embedding), not {}",
            2 * d,
            c.width
        )));
    }
    let dev = Device::Cpu;
    let eye = Tensor::eye(d, candle_core::DType::F32, &dev)?;
    let pad_rows = |t: Tensor, cols: usize| -> Result<Tensor> {
        let rows = c.width - t.dim(0)?;
        Ok(Tensor::cat(
            &[
                t,
                Tensor::zeros((rows, cols), candle_core::DType::F32, &dev)?,
            ],
            0,
        )?)
    };
    let pad_cols = |t: Tensor| -> Result<Tensor> {
        let (rows, cols) = t.dims2()?;
        Ok(Tensor::cat(
            &[
                t,
                Tensor::zeros((rows, c.width - cols), candle_core::DType::F32, &dev)?,
            ],
            1,
        )?)
    };
    let keep = 1.0 / (1.0 + LEAKY_SLOPE as f64);
    // [I, -I] / (1 + a): the pair (h+, h-) back to x.
    let read = (Tensor::cat(&[&eye, &eye.neg()?], 1)? * keep)?;
    let pass = pad_rows(pad_cols(Tensor::cat(&[&read, &read.neg()?], 0)?)?, c.width)?;
    let mut vars = Vec::new();
    let zeros = Tensor::zeros(c.width, candle_core::DType::F32, &dev)?;
    for i in 0..c.depth {
        let weight = if i == 0 {
            pad_rows(Tensor::cat(&[&eye, &eye.neg()?], 0)?, d)?
        } else {
            pass.clone()
        };
        vars.push((format!("hidden.{i}.linear.weight"), weight));
        vars.push((format!("hidden.{i}.linear.bias"), zeros.clone()));
    }
    let out = pad_cols(f.weight.matmul(&read)?)?;
    let outs = vec![out; num_styles];
    vars.push(("out.weight".into(), Tensor::cat(&outs, 0)?));
    let biases = vec![f.bias.clone(); num_styles];
    vars.push(("out.bias".into(), Tensor::cat(&biases, 0)?));
    debug_assert_eq!(
        vars.last().map(|(_, t)| t.dims1().ok()),
        Some(Some(num_styles * w_dim))
    );
    Ok(vars)
}

/// Overwrite a fresh MLP's weights in `varmap` in place with
/// [`mlp_start`] of `f`, so that it computes the fit (the optimiser may
/// already hold the same variables).
pub fn write_start(
    varmap: &candle_nn::VarMap,
    f: &Fitted,
    c: &crate::mapper::MapperConfig,
    num_styles: usize,
    dev: &Device,
) -> Result<()> {
    let vars = varmap.data().lock().expect("not poisoned");
    for (name, t) in mlp_start(f, c, num_styles)? {
        let var = vars.get(&name).ok_or_else(|| {
            Error::Training(format!(
                "the fresh MLP has no variable {name} to start from the fit"
            ))
        })?;
        var.set(&t.to_device(dev)?)?;
    }
    Ok(())
}

impl FitReport {
    /// One line for the person at the terminal.
    pub fn summary(&self) -> String {
        format!(
            "closed-form mapper from {} pairs in {:.1} s: ridge {:.0e} (x mean eigenvalue), held-out latent MSE {:.4} \
             ({:.2}x always-w_avg), {:.4} on perturbed inputs ({:.2}x)",
            self.pairs,
            self.fit_s,
            self.lambda_rel,
            self.clean_mse,
            self.clean_mse / self.baseline_mse,
            self.perturbed_mse,
            self.perturbed_mse / self.baseline_mse,
        )
    }
}

/// The closed-form mapper of `pairs`, its variables (for
/// [`crate::mapper::save`]) and the fit it was made from, whose text shift
/// is the variable `text_shift`.
pub struct Closed {
    pub mapper: crate::mapper::Mapper,
    pub varmap: candle_nn::VarMap,
    pub fitted: Fitted,
}

impl Closed {
    /// `mu_image - mu_text`, the text shift the mapper applies.
    pub fn text_shift(&self) -> Result<Tensor> {
        let data = self.varmap.data().lock().expect("not poisoned");
        let var = data
            .get("text_shift")
            .ok_or_else(|| Error::invalid("the closed-form mapper has no text shift"))?;
        Ok(var.as_tensor().clone())
    }
}

/// The closed-form mapper of `pairs` for generator `g` and `clip`: the fit,
/// the text shift from `captions` (see [`super::captions`]), and metadata
/// saying how it was made (`metrics.text_shift`: which captions).
pub fn make_mapper(
    g: &dyn crate::generator::Generator,
    clip: &crate::clip::Clip,
    clip_model: &str,
    train: &super::TrainConfig,
    pairs: &PairSet,
    captions: &super::captions::Captions,
) -> Result<Closed> {
    use crate::mapper::{MapperConfig, MapperKind};
    let f = fit(pairs, g.w_avg(), g.num_styles(), &train.fit, train.seed)?;
    let dev = g.device();
    let mu_text = super::captions::text_mean(clip, captions)?.to_device(&Device::Cpu)?;
    let mu_image = pairs.e.to_device(&Device::Cpu)?.mean(0)?;
    let vars = [
        ("linear.weight", f.weight.clone()),
        ("linear.bias", f.bias.clone()),
        ("max_shift", Tensor::new(&[f.max_shift], &Device::Cpu)?),
        ("text_shift", (mu_image - mu_text)?),
        ("residuals", f.residuals.clone()),
    ];
    let varmap = crate::mapper::varmap_of(vars, dev)?;
    let mut meta = super::mapper_meta(g, clip, clip_model, train);
    meta.config = MapperConfig {
        kind: MapperKind::Linear,
        depth: 0,
        width: 0,
        bank: pairs.len(),
        ..MapperConfig::default()
    };
    meta.metrics = serde_json::json!({ "fit": f.report, "text_shift": captions.record() });
    let mapper = crate::mapper::Mapper::init(&varmap, meta, g.w_avg(), dev)?;
    Ok(Closed {
        mapper,
        varmap,
        fitted: f,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mapper::{Mapper, MapperConfig, MapperMeta};

    /// An MLP written by [`mlp_start`] predicts what the fit does, at every
    /// style, before any training.
    #[test]
    fn mlp_started_from_the_fit_computes_the_fit() -> Result<()> {
        let dev = Device::Cpu;
        let (n, d, w_dim, styles) = (96, 8, 6, 3);
        let normal = |name: &str, shape: &[usize]| crate::rng::normal_tensor(1, name, shape, &dev);
        let e = crate::clip::l2_normalize(&normal("e", &[n, d])?)?;
        // A w that depends on e (plus noise), the same at both mixed slots.
        let w = (e.matmul(&normal("a", &[d, w_dim])?)? + (normal("n", &[n, w_dim])? * 0.1)?)?;
        let pairs = PairSet {
            w: Tensor::stack(&[&w, &w], 1)?,
            cross: vec![styles as u32; n],
            e: e.clone(),
        };
        let w_avg = Tensor::zeros(w_dim, candle_core::DType::F32, &dev)?;
        let f = fit(&pairs, &w_avg, styles, &FitConfig::default(), 0)?;
        let config = MapperConfig {
            depth: 3,
            width: 2 * d + 4,
            layer_norm: false,
            ..MapperConfig::default()
        };
        let varmap = candle_nn::VarMap::new();
        for (name, t) in mlp_start(&f, &config, styles)? {
            let var = candle_core::Var::from_tensor(&t)?;
            varmap
                .data()
                .lock()
                .expect("not poisoned")
                .insert(name, var);
        }
        let meta = MapperMeta {
            clip_model: "test".into(),
            clip_dim: d,
            generator: "test".into(),
            num_styles: styles,
            w_dim,
            config: config.clone(),
            step: 0,
            training: serde_json::Value::Null,
            metrics: serde_json::Value::Null,
        };
        let got = Mapper::init(&varmap, meta, &w_avg, &dev)?.forward(&e)?; // [n, styles, w_dim]
        let want = e.matmul(&f.weight.t()?)?.broadcast_add(&f.bias)?;
        let largest = |t: &Tensor| -> Result<f32> { Ok(t.abs()?.max_all()?.to_scalar::<f32>()?) };
        for s in 0..styles {
            let diff = largest(&(got.narrow(1, s, 1)?.squeeze(1)? - &want)?)?;
            assert!(diff < 1e-5, "style {s}: {diff}");
        }
        // The fit is not trivial: it moves w away from w_avg.
        let moved = largest(&want)?;
        assert!(moved > 0.1, "{moved}");

        let narrow = MapperConfig {
            width: 2 * d - 1,
            ..config
        };
        let err = mlp_start(&f, &narrow, styles).unwrap_err().to_string();
        assert!(err.contains("mapper.width >= 16"), "{err}");
        Ok(())
    }
}
