//! A backend that answers every job at once with one blank image and a zero
//! latent: for measuring and testing what surrounds the models (the queue,
//! the bot, metrics) without their cost.

use super::{Backend, EngineError, Latent, RawOutput, Request};

/// Latents of 2 styles x 3 values; images 8 x 8.
pub struct Blank;

impl Backend for Blank {
    fn latent_shape(&self) -> (usize, usize) {
        (2, 3)
    }

    fn run(&mut self, batch: &[Request]) -> Vec<Result<RawOutput, EngineError>> {
        batch
            .iter()
            .map(|_| {
                Ok(RawOutput {
                    images: vec![image::RgbImage::new(8, 8)],
                    latents: vec![Latent {
                        styles: 2,
                        dim: 3,
                        data: vec![0.0; 6],
                    }],
                    animate: false,
                    truncated_prompt: false,
                    scores: None,
                    times: Default::default(),
                })
            })
            .collect()
    }
}
