//! A job's way through the bot, shared by every command family: the
//! context of an interaction, the store read that answers for itself when
//! the store is down, admission (cooldown, the daily quota charged and given
//! back), submitting and deferring, the queue feedback while it waits, and
//! the reply: saving the new result, composing the image and delivering it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::{counter, histogram};
use serenity::all::Permissions;
use tracing::{error, info, warn};

use crate::engine::{EngineError, Latent, Output, Request};
use crate::inference::Job;
use crate::metrics as names;

use crate::bot::config::BotConfig;
use crate::bot::guild::Effective;
use crate::bot::render;
use crate::bot::respond::{Reply, Responder};
use crate::bot::store::{Origin, Record, Ref};
use crate::bot::Bot;

/// Said when the results store (shared by front ends) cannot be reached.
pub(super) const STORE_DOWN: &str =
    "The bot's storage cannot be reached just now; please try again in a \
                          minute.";

/// A store read, or the interaction answered with [`STORE_DOWN`] and the
/// handler left.
macro_rules! stored {
    ($bot:expr, $resp:expr, $read:expr) => {
        match $read.await {
            Ok(v) => v,
            Err(e) => {
                ::tracing::error!(error = %e, "reading the results store failed");
                return $bot.say(&$resp, $crate::bot::handlers::jobs::STORE_DOWN).await;
            }
        }
    };
}
pub(super) use stored;

pub(super) const GONE: &str =
    "This image is no longer stored (the bot keeps only the most recent results, \
                    or it was deleted). Make a new one with `/imagine`.";

/// Who is asking, where, and the settings in force there.
pub(super) struct Ctx {
    /// When the interaction arrived: defer and end-to-end times count from here.
    pub(super) received: Instant,
    pub(super) user: u64,
    pub(super) guild: Option<u64>,
    pub(super) perms: Option<Permissions>,
    pub(super) eff: Effective,
    /// The bot's config with this server's blocked words added.
    pub(super) cfg: BotConfig,
}

/// What to do with a job's output.
pub(super) enum Then {
    /// A new result, owned by the user who asked.
    New {
        prompt: String,
        origin: Origin,
        parent: Option<Ref>,
    },
    /// Show an existing image again (undo, pick).
    Show { r: Ref, note: String },
    /// An animation from `a` to `b` (not stored: it is no latent).
    Morph { a: Ref, b: Ref, frames: usize },
    /// The user's recent images as a grid.
    History { refs: Vec<Ref> },
}

impl Then {
    /// Jobs that make new images count against the daily quota; showing
    /// earlier ones (undo, pick, history) does not.
    fn counts(&self) -> bool {
        matches!(self, Then::New { .. } | Then::Morph { .. })
    }
}

/// A job's charge to a member's daily quota, given back if it fails.
#[derive(Debug, Clone, Copy)]
pub(super) struct Charge {
    guild: u64,
    user: u64,
    window_start: u64,
}

/// "in 3 h 12 min", "in 40 s".
fn wait_text(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s} s"),
        (0, _) => format!("{m} min"),
        _ => format!("{h} h {m} min"),
    }
}

impl Bot {
    /// An ephemeral reply; failures are only logged (nothing else to do).
    pub(super) async fn say(&self, resp: &Responder, text: &str) {
        if let Err(e) = resp.ephemeral(text).await {
            warn!(error = %e, "could not answer an interaction");
        }
    }

    pub(super) async fn push(&self, user: u64, r: Ref) {
        if let Err(e) = self.store.push(user, r).await {
            error!(error = %e, "saving the history failed");
        }
    }

    /// The cooldown and, for jobs that make new images, the daily quota
    /// (taken now, given back if the job fails). `Err`: the refusal.
    pub(super) async fn admit(&self, ctx: &Ctx, counts: bool) -> Result<Option<Charge>, String> {
        match self.store.cooldown_left(ctx.user, ctx.eff.cooldown).await {
            Ok(None) => {}
            Ok(Some(left)) => {
                let wait = left.as_secs_f64();
                return Err(format!(
                    "Slow down a little: you can start another image in {wait:.1} s."
                ));
            }
            Err(e) => {
                error!(error = %e, "the cooldown could not be checked");
                return Err(STORE_DOWN.into());
            }
        }
        let quota = ctx.eff.daily_quota;
        if !counts || quota == 0 {
            return Ok(None);
        }
        let (g, user, now) = (ctx.guild.unwrap_or(0), ctx.user, self.clock.now_unix());
        match self.store.charge((g, user), now, quota).await {
            Ok(Ok(usage)) => Ok(Some(Charge {
                guild: g,
                user,
                window_start: usage.window_start,
            })),
            Ok(Err(usage)) => {
                let at = usage.resets_at();
                Err(format!(
                    "You have used all {quota} new images of your daily quota here (0 of \
                     {quota} left). It resets <t:{at}:R>, in {}. Until then `/history`, \
                     `/undo` and picking earlier images still work.",
                    wait_text(at.saturating_sub(now))
                ))
            }
            Err(e) => {
                error!(error = %e, "the quota could not be checked");
                Err("The bot could not check your daily quota just now; please try again.".into())
            }
        }
    }

    pub(super) async fn refund(&self, charge: Option<Charge>) {
        let Some(c) = charge else { return };
        if let Err(e) = self.store.refund(c.guild, c.user, c.window_start).await {
            error!(error = %e, "giving back a quota charge failed");
        }
    }

    pub(super) async fn started(&self, user: u64, cooldown: Duration) {
        if let Err(e) = self.store.started(user, cooldown).await {
            warn!(error = %e, "the cooldown could not be recorded");
        }
    }

    /// Submit a job, defer the response, and follow the job to its end in a
    /// task of its own. Refusals (cooldown, quota, busy, full queue) are
    /// answered at once.
    pub(super) async fn start(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        request: Request,
        then: Then,
    ) {
        self.start_then_refine(resp, ctx, request, then, None).await
    }

    /// [`Bot::start`], and with `refine` (target text, steps: `quality:
    /// best`) the job's latents refined towards the text before the reply,
    /// as one job for the quota and the cooldown.
    pub(super) async fn start_then_refine(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        request: Request,
        then: Then,
        refine: Option<(String, usize)>,
    ) {
        let user = ctx.user;
        let command = request.kind();
        let refused = || counter!(names::JOBS, "command" => command, "outcome" => "refused");
        let charge = match self.admit(ctx, then.counts()).await {
            Ok(c) => c,
            Err(text) => {
                refused().increment(1);
                return self.say(&resp, &text).await;
            }
        };
        let job = match self.engine.submit(user, request).await {
            Ok(job) => job,
            Err(e) => {
                refused().increment(1);
                self.refund(charge).await;
                return self.say(&resp, &sentence(&e)).await;
            }
        };
        self.started(user, ctx.eff.cooldown).await;
        let deferred = resp.defer().await;
        histogram!(names::DEFER).record(ctx.received.elapsed().as_secs_f64());
        if let Err(e) = deferred {
            // Without a deferred response there is nothing to put the image
            // in: give the slot back.
            warn!(error = %e, "could not defer the response; cancelling the job");
            self.engine.cancel(job.id).await;
            self.refund(charge).await;
            return;
        }
        let bot = self.clone();
        let received = ctx.received;
        self.inflight.spawn(async move {
            bot.follow(resp, user, job, then, charge, (command, received), refine)
                .await;
        });
    }

    /// Wait for the job while showing its queue position.
    pub(super) async fn wait(
        &self,
        resp: &Responder,
        mut job: Job,
        shown: &mut Option<String>,
    ) -> Result<Output, EngineError> {
        let id = job.id;
        let mut progress = job.progress.take();
        let wait = job.wait();
        tokio::pin!(wait);
        let mut tick = tokio::time::interval(Duration::from_millis(
            self.cfg.progress_interval_ms.max(100),
        ));
        loop {
            tokio::select! {
                r = &mut wait => return r,
                Some(p) = async { progress.as_mut()?.recv().await } => {
                    let text = format!(
                        "🔧 Refining: step {}/{} (CLIP score {:.1})",
                        p.step, p.steps, p.score
                    );
                    resp.progress(&text).await;
                    *shown = Some(text);
                }
                _ = tick.tick() => {
                    // Worth a message only when others are ahead; after
                    // that, each change until it runs.
                    let text = match self.engine.position(id).await {
                        Some(n) if n > 0 => format!("⏳ Queued: {n} ahead of you."),
                        Some(_) if shown.is_some() => "⏳ You are next.".to_string(),
                        None if shown.is_some() => "🎨 Rendering…".to_string(),
                        _ => continue,
                    };
                    if shown.as_ref() != Some(&text) {
                        resp.progress(&text).await;
                        *shown = Some(text);
                    }
                }
            }
        }
    }

    /// Wait for the job (and, with `refine`, the refinement of its
    /// latents that follows it), then deliver.
    // The job's whole context, passed on from `start_then_refine`.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn follow(
        &self,
        resp: Responder,
        user: u64,
        job: Job,
        then: Then,
        charge: Option<Charge>,
        started: (&'static str, Instant),
        refine: Option<(String, usize)>,
    ) {
        let mut id = job.id;
        let mut shown = None;
        let mut result = self.wait(&resp, job, &mut shown).await;
        if let (Some((prompt, steps)), Ok(out)) = (refine, &result) {
            // Quality mode: the new latents, refined, are the result.
            let request = Request::Refine {
                latents: out.latents.clone(),
                prompt,
                steps,
            };
            result = match self.engine.submit(user, request).await {
                Ok(job) => {
                    id = job.id;
                    self.wait(&resp, job, &mut shown).await
                }
                Err(e) => Err(e),
            };
        }
        let reply = match result {
            Ok(out) => self.result_reply(&resp, user, out, then).await,
            Err(e) => {
                self.refund(charge).await;
                failure(&e)
            }
        };
        self.deliver(&resp, user, &reply, id.0, started).await
    }

    /// Post the final reply; `started`: the command (a metric label) and
    /// when its interaction arrived.
    pub(super) async fn deliver(
        &self,
        resp: &Responder,
        user: u64,
        reply: &Reply,
        job: u64,
        started: (&'static str, Instant),
    ) {
        let (command, t) = started;
        let outcome = match resp.finish(reply).await {
            Ok(()) => {
                info!(user, job, ms = t.elapsed().as_millis() as u64, "delivered");
                // A reply without a file says what went wrong.
                if reply.file.is_some() {
                    "delivered"
                } else {
                    "failed"
                }
            }
            Err(e) => {
                error!(user, job, error = %e, "could not deliver a result");
                "undelivered"
            }
        };
        counter!(names::JOBS, "command" => command, "outcome" => outcome).increment(1);
        histogram!(names::END_TO_END).record(t.elapsed().as_secs_f64());
    }

    /// Store a new result and make its first image the user's current one.
    /// `Err` carries the unsaved record, for its text.
    pub(super) async fn save(
        &self,
        user: u64,
        prompt: String,
        origin: Origin,
        parent: Option<Ref>,
        latents: Vec<Latent>,
    ) -> Result<Arc<Record>, Record> {
        let rec = Record {
            id: 0,
            owner: user,
            created_unix: unix_now(),
            prompt,
            origin,
            parent,
            latents,
        };
        let saved = self.store.insert(rec.clone(), user, 0).await;
        saved.map_err(|why| {
            error!(error = %why, "saving a result failed");
            rec
        })
    }

    /// The message for a new result (saved or not).
    pub(super) async fn new_reply(
        &self,
        resp: &Responder,
        saved: Result<Arc<Record>, Record>,
        images: Vec<Vec<u8>>,
        note: Option<&str>,
    ) -> Reply {
        let png = self.png(resp, images).await;
        match (saved, png) {
            (Ok(rec), Ok(png)) => Reply {
                content: render::result_content(&rec, None, note),
                components: render::buttons(&rec, None),
                file: Some((format!("clip2gan-{}.png", rec.id), png)),
            },
            // Deliver the image anyway, without buttons that would point
            // at nothing.
            (Err(rec), png) => Reply {
                content: format!(
                    "{}\n(This image could not be saved, so it cannot be edited.)",
                    render::result_content(&rec, None, note)
                ),
                components: Vec::new(),
                file: png.ok().map(|p| ("clip2gan.png".into(), p)),
            },
            (Ok(_), Err(e)) => Reply {
                content: format!("❌ {e}"),
                ..Default::default()
            },
        }
    }

    pub(super) async fn result_reply(
        &self,
        resp: &Responder,
        user: u64,
        out: Output,
        then: Then,
    ) -> Reply {
        match then {
            Then::New {
                prompt,
                origin,
                parent,
            } => {
                let note = out
                    .truncated_prompt
                    .then_some("Note: CLIP reads 77 tokens; the end of the prompt was ignored.");
                let saved = self.save(user, prompt, origin, parent, out.latents).await;
                self.new_reply(resp, saved, out.images, note).await
            }
            Then::Show { r, note } => {
                let Ok(Some(rec)) = self.store.get(r.id).await else {
                    return Reply {
                        content: GONE.into(),
                        ..Default::default()
                    };
                };
                match self.png(resp, out.images).await {
                    Ok(png) => Reply {
                        content: render::result_content(&rec, Some(r.index), Some(&note)),
                        components: render::buttons(&rec, Some(r.index)),
                        file: Some((format!("clip2gan-{}.png", rec.id), png)),
                    },
                    Err(e) => Reply {
                        content: format!("❌ {e}"),
                        ..Default::default()
                    },
                }
            }
            Then::Morph { a, b, frames } => {
                let limit = resp.size_limit;
                let Some(gif) = out.images.into_iter().next() else {
                    return Reply {
                        content: "❌ The morph produced no animation.".into(),
                        ..Default::default()
                    };
                };
                let full = gif.len();
                let fitted = tokio::task::spawn_blocking(move || render::fit_gif(gif, limit))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r);
                match fitted {
                    Ok(gif) => {
                        let note = (gif.len() < full).then_some(
                            "Shown at a smaller size, to fit Discord's upload limit here.",
                        );
                        Reply {
                            content: render::morph_content(user, a, b, frames, note),
                            components: Vec::new(),
                            file: Some((format!("clip2gan-morph-{}-{}.gif", a.id, b.id), gif)),
                        }
                    }
                    Err(e) => Reply {
                        content: format!("❌ {e}"),
                        ..Default::default()
                    },
                }
            }
            Then::History { refs } => {
                let mut lines = Vec::with_capacity(refs.len());
                for r in &refs {
                    lines.push(match self.store.get(r.id).await {
                        Ok(Some(rec)) => render::describe(&rec, r.index),
                        _ => format!("#{} (no longer stored)", r.id),
                    });
                }
                match self.png(resp, out.images).await {
                    Ok(png) => Reply {
                        content: render::history_content(user, &lines),
                        components: render::history_buttons(&refs),
                        file: Some(("clip2gan-history.png".into(), png)),
                    },
                    Err(e) => Reply {
                        content: format!("❌ {e}"),
                        ..Default::default()
                    },
                }
            }
        }
    }

    pub(super) async fn png(
        &self,
        resp: &Responder,
        images: Vec<Vec<u8>>,
    ) -> Result<Vec<u8>, String> {
        let limit = resp.size_limit;
        tokio::task::spawn_blocking(move || render::compose_png(&images, limit))
            .await
            .map_err(|e| format!("composing the image failed: {e}"))?
    }
}

/// The reply that a job failed, and why.
pub(super) fn failure(e: &EngineError) -> Reply {
    Reply {
        content: format!("❌ {}", sentence(e)),
        ..Default::default()
    }
}

/// An engine error as a reply: its message, capitalised, with a full stop.
pub(super) fn sentence(e: &EngineError) -> String {
    let msg = e.to_string();
    let mut chars = msg.chars();
    let mut out: String = match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => return "Something went wrong.".into(),
    };
    if !out.ends_with('.') {
        out.push('.');
    }
    out
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_read_naturally() {
        assert_eq!(wait_text(40), "40 s");
        assert_eq!(wait_text(600), "10 min");
        assert_eq!(wait_text(86_399), "23 h 59 min");
    }
}
