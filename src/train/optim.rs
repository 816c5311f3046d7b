//! AdamW with its state in plain tensors (candle-nn's keeps its moments
//! private, and a checkpoint must save them to resume exactly), global
//! gradient-norm clipping, and the learning-rate schedule.

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::config::TrainConfig;
use crate::error::{Error, Result};

/// Learning rate for step `step` (1-based): linear warm-up to `lr` over
/// `warmup_steps`, then cosine decay to `lr * min_lr_ratio` at `steps`.
pub fn lr_at(c: &TrainConfig, step: u64) -> f64 {
    if step <= c.warmup_steps {
        return c.lr * step as f64 / c.warmup_steps.max(1) as f64;
    }
    let span = c.steps.saturating_sub(c.warmup_steps).max(1) as f64;
    let t = ((step - c.warmup_steps) as f64 / span).min(1.0);
    let floor = c.lr * c.min_lr_ratio;
    floor + (c.lr - floor) * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
}

pub struct AdamW {
    /// Parameters sorted by name: the order sums are taken in is fixed, so
    /// a run is reproducible to the bit.
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    grad_clip: f64,
}

impl AdamW {
    /// Fresh state for `params` (any order; sorted here).
    pub fn new(mut params: Vec<(String, Var)>, c: &TrainConfig) -> Result<Self> {
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let m = params
            .iter()
            .map(|(_, p)| Ok(p.as_tensor().zeros_like()?))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            v: m.clone(),
            m,
            params,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: 1e-8,
            weight_decay: c.weight_decay,
            grad_clip: c.grad_clip,
        })
    }

    /// The moments as named tensors (`adam.m.<param>`, `adam.v.<param>`).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::with_capacity(2 * self.params.len());
        for (i, (name, _)) in self.params.iter().enumerate() {
            out.push((format!("adam.m.{name}"), self.m[i].clone()));
            out.push((format!("adam.v.{name}"), self.v[i].clone()));
        }
        out
    }

    /// Restore moments saved by [`AdamW::state`].
    pub fn load_state(&mut self, mut get: impl FnMut(&str) -> Option<Tensor>) -> Result<()> {
        for (i, (name, p)) in self.params.iter().enumerate() {
            for (kind, slot) in [("m", &mut self.m[i]), ("v", &mut self.v[i])] {
                let key = format!("adam.{kind}.{name}");
                let t = get(&key).ok_or_else(|| {
                    Error::invalid(format!("the checkpoint lacks optimiser state `{key}`"))
                })?;
                if t.dims() != p.as_tensor().dims() {
                    return Err(Error::invalid(format!(
                        "optimiser state `{key}` has the wrong shape"
                    )));
                }
                *slot = t.to_device(p.as_tensor().device())?;
            }
        }
        Ok(())
    }

    /// One update at (1-based) `step` with learning rate `lr`. Returns the
    /// gradient norm before clipping.
    pub fn step(&mut self, grads: &GradStore, step: u64, lr: f64) -> Result<f64> {
        let grads: Vec<Option<&Tensor>> = self
            .params
            .iter()
            .map(|(_, p)| grads.get(p.as_tensor()))
            .collect();
        let mut sq = 0f64;
        for g in grads.iter().flatten() {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
        }
        let norm = sq.sqrt();
        let scale = if self.grad_clip > 0.0 && norm > self.grad_clip {
            self.grad_clip / norm
        } else {
            1.0
        };
        let (b1, b2) = (self.beta1, self.beta2);
        let bc1 = 1.0 - b1.powi(step as i32);
        let bc2 = 1.0 - b2.powi(step as i32);
        for (i, g) in grads.into_iter().enumerate() {
            let Some(g) = g else { continue };
            let g = if scale != 1.0 {
                (g * scale)?
            } else {
                g.clone()
            };
            self.m[i] = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&self.m[i] / bc1)? / ((&self.v[i] / bc2)?.sqrt()? + self.eps)?)?;
            let p = self.params[i].1.as_tensor();
            // Decoupled decay on matrices only: biases and norm gains keep their scale.
            let decayed = if self.weight_decay > 0.0 && p.rank() > 1 {
                (p * (1.0 - lr * self.weight_decay))?
            } else {
                p.clone()
            };
            self.params[i].1.set(&(decayed - (update * lr)?)?)?;
        }
        Ok(norm)
    }

    /// Whether every parameter is finite (a checkpoint must never hold NaN).
    pub fn params_finite(&self) -> Result<bool> {
        for (_, p) in &self.params {
            let s = p
                .as_tensor()
                .abs()?
                .sum_all()?
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?;
            if !s.is_finite() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn schedule_warms_up_then_decays() {
        let c = TrainConfig {
            steps: 110,
            warmup_steps: 10,
            lr: 1.0,
            min_lr_ratio: 0.1,
            ..Default::default()
        };
        assert!((lr_at(&c, 5) - 0.5).abs() < 1e-12);
        assert!((lr_at(&c, 10) - 1.0).abs() < 1e-12);
        assert!((lr_at(&c, 60) - 0.55).abs() < 1e-12);
        assert!((lr_at(&c, 110) - 0.1).abs() < 1e-12);
        assert!((lr_at(&c, 500) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn adamw_minimises_a_quadratic() {
        let c = TrainConfig {
            weight_decay: 0.0,
            grad_clip: 0.0,
            ..Default::default()
        };
        let x = Var::from_tensor(&Tensor::new(&[3f32, -2.0], &Device::Cpu).unwrap()).unwrap();
        let mut opt = AdamW::new(vec![("x".into(), x.clone())], &c).unwrap();
        for step in 1..=300 {
            let loss = x.as_tensor().sqr().unwrap().sum_all().unwrap();
            let g = loss.backward().unwrap();
            opt.step(&g, step, 0.05).unwrap();
        }
        let v = x.as_tensor().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|a| a.abs() < 0.05), "{v:?}");
        assert_eq!(opt.state().len(), 2);
    }
}
