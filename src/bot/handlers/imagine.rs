//! `/imagine` and what grows from its results: new faces from a text, the
//! Variations button (faces around one image) and Re-roll (the same prompt
//! with a new seed).

use std::sync::Arc;

use crate::engine::Request;

use super::jobs::{Ctx, Then};
use crate::bot::respond::Responder;
use crate::bot::store::{Origin, Record, Ref};
use crate::bot::Bot;

impl Bot {
    /// `/imagine` from a text: new faces, their seed drawn when not given.
    pub(super) async fn imagine(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        prompt: String,
        count: usize,
        seed: Option<u64>,
    ) {
        let seed = seed.unwrap_or_else(random_seed);
        let request = Request::Imagine {
            prompt: prompt.clone(),
            count,
            seed,
            truncation: None,
            candidates: count,
        };
        let then = Then::New {
            prompt,
            origin: Origin::Imagine { seed, count },
            parent: None,
        };
        self.start(resp, ctx, request, then).await
    }

    /// The Variations button: new faces around one image of a result.
    pub(super) async fn variations(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        rec: &Record,
        r: Ref,
    ) {
        let seed = random_seed();
        let request = Request::Variations {
            latent: rec.latents[r.index].clone(),
            seed,
            count: self.cfg.variations_count,
            amount: self.cfg.variation_amount,
        };
        let then = Then::New {
            prompt: rec.prompt.clone(),
            origin: Origin::Variations { seed },
            parent: Some(r),
        };
        self.start(resp, ctx, request, then).await
    }

    /// The Re-roll button: an `/imagine` result drawn again with a new seed.
    pub(super) async fn reroll(self: &Arc<Self>, resp: Responder, ctx: &Ctx, rec: &Record) {
        let Origin::Imagine { count, .. } = rec.origin else {
            return self
                .say(&resp, "Only `/imagine` results can be re-rolled.")
                .await;
        };
        let seed = random_seed();
        let request = Request::Imagine {
            prompt: rec.prompt.clone(),
            count,
            seed,
            truncation: None,
            candidates: count,
        };
        let then = Then::New {
            prompt: rec.prompt.clone(),
            origin: Origin::Imagine { seed, count },
            parent: None,
        };
        self.start(resp, ctx, request, then).await
    }
}

fn random_seed() -> u64 {
    rand::random::<u32>() as u64
}
