//! `/edit` and photos: an instruction applied to the current (or a
//! stored) image, and a photo downloaded, checked, inverted into a face and
//! maybe edited (`/edit image:`, `/imagine image:`, "Edit this face").

use std::sync::Arc;
use std::time::Instant;

use ::metrics::{counter, histogram};
use reqwest::Url;
use tracing::warn;

use crate::engine::{Layers, Request};
use crate::metrics as names;

use super::jobs::{failure, sentence, stored, Ctx, Then, GONE};
use crate::bot::attach::{self, Photo};
use crate::bot::commands::Quality;
use crate::bot::respond::Responder;
use crate::bot::store::{Origin, Ref};
use crate::bot::Bot;

/// Said with every image made from a photo: there is no detector of the
/// subject, so a photo without one is inverted like any other, and the
/// user should know what the result is.
fn photo_note(w: &crate::bot::words::Words) -> String {
    let (one, noun) = (w.one(), w.noun());
    format!(
        "Made from your photo: CLIP reads the whole picture and the mapper turns that reading \
         into {one}, so this is what CLIP makes of the photo, not a copy of it. A photo without \
         a clear {noun} still gives {one}."
    )
}

/// A photo to download and turn into a face, and an edit to apply to it.
struct PhotoJob {
    url: Url,
    filename: String,
    /// Instruction and strength.
    edit: Option<(String, f64)>,
    /// The prompt of the line (`/imagine prompt image:`), empty for `/edit`.
    prompt: String,
}

impl Bot {
    pub(super) async fn edit(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        r: Ref,
        instruction: String,
        strength: f64,
    ) {
        self.edit_refined(resp, ctx, r, instruction, strength, Quality::Fast)
            .await
    }

    /// An edit of a stored image; with `quality: best`, refined towards
    /// the instruction's target afterwards.
    pub(super) async fn edit_refined(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        r: Ref,
        instruction: String,
        strength: f64,
        quality: Quality,
    ) {
        let Some((rec, latent)) = stored!(self, resp, self.store.latent(r)) else {
            return self.say(&resp, GONE).await;
        };
        // By value: the store is the one place latents are kept.
        let request = Request::Edit {
            latent,
            instruction: instruction.clone(),
            strength,
            layers: Layers::All,
        };
        let target = crate::pipeline::instruction::parse_about(&instruction, self.cfg.words.noun())
            .map_or_else(|| instruction.clone(), |p| p.target);
        let refine = self.refine_after(quality, &target);
        let then = Then::New {
            prompt: rec.prompt.clone(),
            origin: Origin::Edit {
                instruction,
                strength,
            },
            parent: Some(r),
        };
        self.start_then_refine(resp, ctx, request, then, refine)
            .await
    }

    /// `/edit` without a photo: the user's current image, edited.
    pub(super) async fn edit_current(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        instruction: String,
        strength: f64,
        quality: Quality,
    ) {
        match stored!(self, resp, self.store.current(ctx.user)) {
            Some(r) => {
                self.edit_refined(resp, ctx, r, instruction, strength, quality)
                    .await
            }
            None => {
                self.say(
                    &resp,
                    "You have no image to edit yet: make one with `/imagine` first, then \
                     `/edit add smile` (or attach a photo: `/edit add smile image:`).",
                )
                .await
            }
        }
    }

    pub(super) async fn photo(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        photo: &Photo,
        edit: Option<(String, f64)>,
        prompt: String,
    ) {
        let url = match self.fetcher.precheck(photo) {
            Ok(u) => u,
            Err(text) => return self.say(&resp, &text).await,
        };
        let charge = match self.admit(ctx, true).await {
            Ok(c) => c,
            Err(text) => {
                counter!(names::JOBS, "command" => "photo", "outcome" => "refused").increment(1);
                return self.say(&resp, &text).await;
            }
        };
        self.started(ctx.user, ctx.eff.cooldown).await;
        let deferred = resp.defer().await;
        histogram!(names::DEFER).record(ctx.received.elapsed().as_secs_f64());
        if let Err(e) = deferred {
            warn!(error = %e, "could not defer the response");
            self.refund(charge).await;
            return;
        }
        let job = PhotoJob {
            url,
            filename: photo.filename.clone(),
            edit,
            prompt,
        };
        let bot = self.clone();
        let user = ctx.user;
        let received = ctx.received;
        self.inflight.spawn(async move {
            if let Err(Refused(text)) = bot.follow_photo(&resp, user, job, received).await {
                counter!(names::JOBS, "command" => "photo", "outcome" => "refused").increment(1);
                bot.refund(charge).await;
                if let Some(text) = text {
                    resp.fail_privately(&text).await;
                }
            }
        });
    }

    /// Download, check, invert and maybe edit a photo, then deliver. `Err`:
    /// nothing was made (the quota is given back); with a text, the
    /// refusal still to be said.
    async fn follow_photo(
        &self,
        resp: &Responder,
        user: u64,
        job: PhotoJob,
        received: Instant,
    ) -> Result<(), Refused> {
        let started = ("photo", received);
        let bytes = self.fetcher.download(job.url).await.map_err(Refused::say)?;
        let max = self.fetcher.limits.max_pixels;
        let prepared = tokio::task::spawn_blocking(move || attach::prepare(&bytes, max))
            .await
            .map_err(|e| {
                Refused::say(format!("Reading the photo failed on the bot's side ({e})."))
            })?
            .map_err(Refused::say)?;
        let mut notes = prepared.notes;
        notes.insert(0, photo_note(&self.cfg.words));
        let mut shown = None;
        let invert = self
            .engine
            .submit(
                user,
                Request::Invert {
                    image: prepared.png,
                },
            )
            .await
            .map_err(|e| Refused::say(sentence(&e)))?;
        let job_id = invert.id.0;
        let out = match self.wait(resp, invert, &mut shown).await {
            Ok(out) => out,
            Err(e) => {
                self.deliver(resp, user, &failure(&e), job_id, started)
                    .await;
                return Err(Refused(None));
            }
        };
        let Some(latent) = out.latents.first().cloned() else {
            return Err(Refused::say(format!(
                "The photo gave no {}; please try another one.",
                self.cfg.words.noun()
            )));
        };
        let photo = self
            .save(
                user,
                String::new(),
                Origin::Photo {
                    filename: job.filename.clone(),
                },
                None,
                vec![latent.clone()],
            )
            .await;
        let Some((instruction, strength)) = job.edit else {
            let reply = self
                .new_reply(resp, photo, out.images, Some(&notes.join("\n")))
                .await;
            self.deliver(resp, user, &reply, job_id, started).await;
            return Ok(());
        };
        let parent = photo.as_ref().ok().map(|r| Ref { id: r.id, index: 0 });
        let request = Request::Edit {
            latent,
            instruction: instruction.clone(),
            strength,
            layers: Layers::All,
        };
        let edit = match self.engine.submit(user, request).await {
            Ok(j) => j,
            Err(e) => {
                // The photo itself is stored and current: say so, with it.
                notes.push(format!("The edit could not start: {}", sentence(&e)));
                let reply = self
                    .new_reply(resp, photo, out.images, Some(&notes.join("\n")))
                    .await;
                self.deliver(resp, user, &reply, job_id, started).await;
                return Ok(());
            }
        };
        let out = match self.wait(resp, edit, &mut shown).await {
            Ok(out) => out,
            Err(e) => {
                self.deliver(resp, user, &failure(&e), job_id, started)
                    .await;
                return Ok(());
            }
        };
        let rec = self
            .save(
                user,
                job.prompt,
                Origin::Edit {
                    instruction,
                    strength,
                },
                parent,
                out.latents,
            )
            .await;
        let reply = self
            .new_reply(resp, rec, out.images, Some(&notes.join("\n")))
            .await;
        self.deliver(resp, user, &reply, job_id, started).await;
        Ok(())
    }

    /// A photo job: checks on what Discord says about the photo (answered
    /// at once), then defer, download, decode, invert, maybe edit.
    /// A photo with an edit to apply once it is inverted.
    pub(super) async fn edit_photo(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        photo: &Photo,
        instruction: String,
        strength: f64,
    ) {
        self.photo(
            resp,
            ctx,
            photo,
            Some((instruction, strength)),
            String::new(),
        )
        .await
    }
}

/// A photo job that made nothing; the text, if any, is still to be said.
struct Refused(Option<String>);

impl Refused {
    fn say(text: impl Into<String>) -> Self {
        Refused(Some(text.into()))
    }
}
