//! The modality gap: a mapper trained on CLIP *image* embeddings is used
//! with CLIP *text* embeddings, which lie elsewhere on the sphere. LAFITE's
//! remedy (Zhou et al. 2022): train on image embeddings perturbed with
//! noise, so that text embeddings fall inside the training distribution:
//! `e' = normalise((1 - xi) e + xi n/|n|)`, `n ~ N(0, I)`.

use candle_core::Tensor;

use crate::clip::l2_normalize;
use crate::error::Result;

/// Perturb L2-normalised embeddings `[n, d]` with noise from stream `name`
/// of run `seed`. `xi = 0` returns `e` unchanged.
pub fn perturb(e: &Tensor, xi: f64, seed: u64, name: &str) -> Result<Tensor> {
    if xi == 0.0 {
        return Ok(e.clone());
    }
    let noise = crate::rng::normal_tensor(seed, name, e.dims(), e.device())?;
    let mixed = ((e * (1.0 - xi))? + (l2_normalize(&noise)? * xi)?)?;
    l2_normalize(&mixed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn perturbation_keeps_unit_norm_and_moves_by_xi() {
        let e = l2_normalize(&Tensor::randn(0f32, 1.0, (64, 512), &Device::Cpu).unwrap()).unwrap();
        let p = perturb(&e, 0.5, 1, "t").unwrap();
        let norms = p.sqr().unwrap().sum(1).unwrap().to_vec1::<f32>().unwrap();
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5));
        // In high dimension the noise is almost orthogonal to e, so
        // cos(e, e') is about (1 - xi) / sqrt((1 - xi)^2 + xi^2) = 0.707.
        let cos = (&e * &p)
            .unwrap()
            .sum(1)
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!((cos - 0.707).abs() < 0.03, "{cos}");
        assert_eq!(
            perturb(&e, 0.5, 1, "t").unwrap().to_vec2::<f32>().unwrap(),
            p.to_vec2::<f32>().unwrap()
        );
        let same = perturb(&e, 0.0, 1, "t").unwrap();
        assert_eq!(same.to_vec2::<f32>().unwrap(), e.to_vec2::<f32>().unwrap());
    }
}
