//! Stored images again: `/morph` (an animation between two results),
//! `/history` (the recent ones as a grid), `/undo`, and showing one stored
//! image again with its buttons.

use std::sync::Arc;

use tracing::error;

use crate::engine::{Latent, Request};

use super::jobs::{stored, Ctx, Then, GONE};
use crate::bot::render::HISTORY_SHOWN;
use crate::bot::respond::Responder;
use crate::bot::store::Ref;
use crate::bot::Bot;

impl Bot {
    pub(super) async fn morph(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        a: Ref,
        b: Ref,
        frames: Option<usize>,
    ) {
        if a == b {
            return self
                .say(
                    &resp,
                    "Those are the same image; a morph needs two different ones.",
                )
                .await;
        }
        let gone = |r: Ref| {
            format!(
                "Result #{} image {} is not stored (it may be too old, deleted, or not exist); \
                 pick results from `/history`.",
                r.id,
                r.index + 1
            )
        };
        let la = stored!(self, resp, self.store.latent(a)).map(|(_, l)| l);
        let lb = stored!(self, resp, self.store.latent(b)).map(|(_, l)| l);
        let (la, lb) = match (la.ok_or_else(|| gone(a)), lb.ok_or_else(|| gone(b))) {
            (Ok(la), Ok(lb)) => (la, lb),
            (Err(t), _) | (_, Err(t)) => return self.say(&resp, &t).await,
        };
        let frames = frames.unwrap_or(self.cfg.morph_frames);
        let request = Request::Interpolate {
            a: la,
            b: lb,
            frames,
        };
        self.start(resp, ctx, request, Then::Morph { a, b, frames })
            .await
    }

    /// `/morph`: between the results named, or the user's last two.
    pub(super) async fn morph_recent(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        from: Option<Ref>,
        to: Option<Ref>,
        frames: Option<usize>,
    ) {
        let recent = stored!(self, resp, self.store.recent(ctx.user, 2));
        let to = to.or(recent.first().copied());
        let from = from.or(recent.iter().copied().find(|r| Some(*r) != to));
        match (from, to) {
            (Some(a), Some(b)) => self.morph(resp, ctx, a, b, frames).await,
            _ => {
                self.say(
                    &resp,
                    "A morph needs two images: make another one with `/imagine`, or name \
                     two results, e.g. `/morph from:12 to:15`.",
                )
                .await
            }
        }
    }

    pub(super) async fn history(self: &Arc<Self>, resp: Responder, ctx: &Ctx) {
        let refs = stored!(self, resp, self.store.recent(ctx.user, HISTORY_SHOWN));
        if refs.is_empty() {
            return self
                .say(
                    &resp,
                    "You have no stored images yet: make one with `/imagine` (or `/edit` with a \
                     photo attached).",
                )
                .await;
        }
        let mut latents: Vec<Latent> = Vec::with_capacity(refs.len());
        for r in &refs {
            if let Some((_, l)) = stored!(self, resp, self.store.latent(*r)) {
                latents.push(l);
            }
        }
        if latents.len() != refs.len() {
            // Deleted between the two looks: ask again rather than mislabel.
            return self
                .say(&resp, "Your history changed just now; please try again.")
                .await;
        }
        let request = Request::Render { latents };
        self.start(resp, ctx, request, Then::History { refs }).await
    }

    pub(super) async fn undo(self: &Arc<Self>, resp: Responder, ctx: &Ctx) {
        match self.store.undo(ctx.user).await {
            Ok(Some(r)) => {
                let note = "Undone: this is your current image again; `/edit` applies to it.";
                self.show(resp, ctx, r, note.into()).await
            }
            Ok(None) => {
                self.say(
                    &resp,
                    "Nothing to undo: you have no earlier image. `/undo` goes back one step \
                     after an `/edit`, a variation or a re-roll.",
                )
                .await
            }
            Err(e) => {
                error!(error = %e, "undo failed");
                self.say(&resp, "Undo failed on the bot's side; please try again.")
                    .await
            }
        }
    }

    /// Render a stored image again and post it with its buttons.
    pub(super) async fn show(self: &Arc<Self>, resp: Responder, ctx: &Ctx, r: Ref, note: String) {
        let Some((_, latent)) = stored!(self, resp, self.store.latent(r)) else {
            return self.say(&resp, GONE).await;
        };
        let request = Request::Render {
            latents: vec![latent],
        };
        self.start(resp, ctx, request, Then::Show { r, note }).await
    }
}
