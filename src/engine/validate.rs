//! The checks a request passes at submit time, so a bad one never joins a
//! batch and its user hears at once what is wrong.

use super::EngineError;
use super::{limits, Latent, Request};

/// Cheap checks done at submit time, so a bad request never joins a batch.
pub(super) fn validate(r: &Request, shape: (usize, usize)) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidRequest(m));
    let check_latent = |d: &Latent| match d {
        d if (d.styles, d.dim) != shape || d.data.len() != d.styles * d.dim => bad(format!(
            "the latent has shape {}x{} ({} values); this generator needs {}x{}",
            d.styles,
            d.dim,
            d.data.len(),
            shape.0,
            shape.1
        )),
        d if d.data.iter().any(|v| !v.is_finite()) => {
            bad("the latent has NaN or infinite values".into())
        }
        _ => Ok(()),
    };
    match r {
        Request::Imagine {
            prompt,
            count,
            candidates,
            truncation,
            ..
        } => {
            limits::check_prompt(prompt).or_else(bad)?;
            limits::check_count(*count, *candidates).or_else(bad)?;
            if let Some(t) = truncation {
                crate::generator::check_truncation(*t)
                    .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
            }
            Ok(())
        }
        Request::Edit {
            latent,
            instruction,
            strength,
            ..
        } => {
            limits::check_instruction(instruction).or_else(bad)?;
            limits::check_strength(*strength).or_else(bad)?;
            check_latent(latent)
        }
        Request::Invert { image } => {
            if image.is_empty() {
                return bad("the image is empty".into());
            }
            Ok(())
        }
        Request::Variations {
            latent,
            count,
            amount,
            ..
        } => {
            limits::check_variations(*count, *amount).or_else(bad)?;
            check_latent(latent)
        }
        Request::Interpolate { a, b, frames } => {
            limits::check_frames(*frames).or_else(bad)?;
            check_latent(a)?;
            check_latent(b)
        }
        Request::Render { latents } => {
            limits::check_render(latents.len()).or_else(bad)?;
            latents.iter().try_for_each(check_latent)
        }
        Request::Refine {
            latents,
            prompt,
            steps,
        } => {
            limits::check_prompt(prompt).or_else(bad)?;
            limits::check_refine_steps(*steps).or_else(bad)?;
            limits::check_render(latents.len()).or_else(bad)?;
            latents.iter().try_for_each(check_latent)
        }
    }
}
