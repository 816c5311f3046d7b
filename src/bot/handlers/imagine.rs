//! `/imagine` and what grows from its results: new faces from a text, the
//! Variations button (faces around one image) and Re-roll (the same prompt
//! with a new seed).

use std::sync::Arc;

use crate::engine::Request;

use super::jobs::{Ctx, Then};
use crate::bot::commands::Quality;
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
        quality: Quality,
    ) {
        let seed = seed.unwrap_or_else(random_seed);
        let request = Request::Imagine {
            prompt: prompt.clone(),
            count,
            seed,
            truncation: None,
            candidates: count,
        };
        let refine = self.refine_after(quality, &prompt);
        let then = Then::New {
            prompt,
            origin: Origin::Imagine { seed, count },
            parent: None,
        };
        self.start_then_refine(resp, ctx, request, then, refine)
            .await
    }

    /// What `quality: best` refines towards, and how many steps.
    pub(super) fn refine_after(&self, quality: Quality, target: &str) -> Option<(String, usize)> {
        (quality == Quality::Best).then(|| (target.to_string(), self.cfg.refine_steps))
    }

    /// The Refine button: the image (or every image of a grid) refined
    /// towards the line's prompt; a new result, made from this one.
    pub(super) async fn refine(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        rec: &Record,
        r: Ref,
        all: bool,
    ) {
        let prompt = refine_target(rec, self.cfg.words.noun());
        if prompt.trim().is_empty() {
            return self
                .say(
                    &resp,
                    "This image has no text to match (it began as a photo with no prompt); \
                     use `/edit` with an instruction instead.",
                )
                .await;
        }
        let latents = if all {
            rec.latents.clone()
        } else {
            vec![rec.latents[r.index].clone()]
        };
        let steps = self.cfg.refine_steps;
        let request = Request::Refine {
            latents,
            prompt,
            steps,
        };
        let then = Then::New {
            prompt: rec.prompt.clone(),
            origin: Origin::Refined { steps },
            parent: Some(r),
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

/// The text a result's refinement aims at: for an edit, its instruction's
/// target ("add smile" -> "a smiling face", what was asked last); else the
/// line's prompt.
pub(super) fn refine_target(rec: &Record, subject: &str) -> String {
    match &rec.origin {
        Origin::Edit { instruction, .. } => {
            crate::pipeline::instruction::parse_about(instruction, subject)
                .map_or_else(|| rec.prompt.clone(), |p| p.target)
        }
        _ => rec.prompt.clone(),
    }
}

fn random_seed() -> u64 {
    rand::random::<u32>() as u64
}
