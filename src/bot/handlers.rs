//! What the bot does with each interaction: checks (shutdown, guild,
//! cooldown), the engine job, the queue feedback while it waits, and the
//! final message. Every interaction gets an answer: a refusal is an
//! ephemeral reply, an accepted job a deferred message edited with the
//! result or with what went wrong.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serenity::all::{
    ActionRowComponent, CommandInteraction, ComponentInteraction, CreateActionRow, CreateInputText,
    CreateModal, Http, InputTextStyle, Interaction, ModalInteraction,
};
use tracing::{error, info, warn};

use crate::engine::{EngineError, JobHandle, LatentRef, Layers, Request};

use super::commands::{self, check_strength, check_text, Command};
use super::render::{self, Action};
use super::respond::{Reply, Responder};
use super::store::{Origin, Record, Ref};
use super::Bot;

const GONE: &str = "This image is no longer stored (the bot keeps only the most recent results, \
                    or it was deleted). Make a new one with `/imagine`.";

/// What to do with a job's output.
enum Then {
    /// A new result, owned by the user who asked.
    New {
        prompt: String,
        origin: Origin,
        parent: Option<Ref>,
    },
    /// Show an existing image again (undo, pick).
    Show { r: Ref, note: String },
}

impl Bot {
    pub(super) async fn handle(self: Arc<Self>, http: Arc<Http>, interaction: Interaction) {
        // Counted from the start, so a shutdown waits for answers in progress.
        let _guard = self.inflight.enter();
        let (id, token, user, guild, limit) = match &interaction {
            Interaction::Command(c) => (
                c.id,
                &c.token,
                c.user.id,
                c.guild_id,
                c.attachment_size_limit,
            ),
            Interaction::Component(c) => (
                c.id,
                &c.token,
                c.user.id,
                c.guild_id,
                c.attachment_size_limit,
            ),
            Interaction::Modal(m) => (
                m.id,
                &m.token,
                m.user.id,
                m.guild_id,
                m.attachment_size_limit,
            ),
            _ => return,
        };
        let resp = Responder {
            http,
            id,
            token: token.clone(),
            size_limit: limit,
            retry: self.retry,
        };
        let user = user.get();
        let refusal = if self.closing.load(Ordering::SeqCst) {
            Some("The bot is restarting; please try again in a minute.")
        } else if !self.discord.allowed_guilds.is_empty()
            && !guild.is_some_and(|g| self.discord.allowed_guilds.contains(&g.get()))
        {
            Some("This bot is not enabled here.")
        } else {
            None
        };
        if let Some(text) = refusal {
            self.say(&resp, text).await;
            return;
        }
        match interaction {
            Interaction::Command(c) => self.command(resp, user, &c).await,
            Interaction::Component(c) => self.button(resp, user, &c).await,
            Interaction::Modal(m) => self.modal(resp, user, &m).await,
            _ => {}
        }
    }

    /// An ephemeral reply; failures are only logged (nothing else to do).
    async fn say(&self, resp: &Responder, text: &str) {
        if let Err(e) = resp.ephemeral(text).await {
            warn!(error = %e, "could not answer an interaction");
        }
    }

    async fn command(self: &Arc<Self>, resp: Responder, user: u64, c: &CommandInteraction) {
        info!(user, command = %c.data.name, "command");
        let cmd = match commands::parse(&c.data, &self.cfg) {
            Ok(cmd) => cmd,
            Err(text) => return self.say(&resp, &text).await,
        };
        match cmd {
            Command::Imagine {
                prompt,
                count,
                seed,
            } => {
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
                self.start(resp, user, request, then).await
            }
            Command::Edit {
                instruction,
                strength,
            } => match self.store.current(user) {
                Some(r) => self.edit(resp, user, r, instruction, strength).await,
                None => {
                    self.say(
                        &resp,
                        "You have no image to edit yet: make one with `/imagine` first, then \
                         `/edit add smile`.",
                    )
                    .await
                }
            },
            Command::Undo => self.undo(resp, user).await,
        }
    }

    async fn edit(
        self: &Arc<Self>,
        resp: Responder,
        user: u64,
        r: Ref,
        instruction: String,
        strength: f64,
    ) {
        let Some((rec, latent)) = self.store.latent(r) else {
            return self.say(&resp, GONE).await;
        };
        // By value: the engine's own latent cache may have evicted it, or
        // the bot may have restarted since.
        let request = Request::Edit {
            latent: LatentRef::Data(latent),
            instruction: instruction.clone(),
            strength,
            layers: Layers::All,
        };
        let then = Then::New {
            prompt: rec.prompt.clone(),
            origin: Origin::Edit {
                instruction,
                strength,
            },
            parent: Some(r),
        };
        self.start(resp, user, request, then).await
    }

    async fn undo(self: &Arc<Self>, resp: Responder, user: u64) {
        let store = self.store.clone();
        let undone = tokio::task::spawn_blocking(move || store.undo(user)).await;
        match undone {
            Ok(Ok(Some(r))) => {
                let note = "Undone: this is your current image again; `/edit` applies to it.";
                self.show(resp, user, r, note.into()).await
            }
            Ok(Ok(None)) => {
                self.say(
                    &resp,
                    "Nothing to undo: you have no earlier image. `/undo` goes back one step \
                     after an `/edit`, a variation or a re-roll.",
                )
                .await
            }
            Ok(Err(e)) => {
                error!(error = %e, "undo failed");
                self.say(&resp, "Undo failed on the bot's side; please try again.")
                    .await
            }
            Err(e) => error!(error = %e, "undo task failed"),
        }
    }

    /// Render a stored image again (a variation of amount 0 is the image
    /// itself) and post it with its buttons.
    async fn show(self: &Arc<Self>, resp: Responder, user: u64, r: Ref, note: String) {
        let Some((_, latent)) = self.store.latent(r) else {
            return self.say(&resp, GONE).await;
        };
        let request = Request::Variations {
            latent: LatentRef::Data(latent),
            seed: 0,
            count: 1,
            amount: 0.0,
        };
        self.start(resp, user, request, Then::Show { r, note })
            .await
    }

    async fn button(self: &Arc<Self>, resp: Responder, user: u64, c: &ComponentInteraction) {
        let Some((action, r)) = Action::parse(&c.data.custom_id) else {
            return self
                .say(
                    &resp,
                    "This button belongs to an older version of the bot; make a new image with \
                     `/imagine`.",
                )
                .await;
        };
        info!(user, ?action, result = r.id, "button");
        let Some(rec) = self.store.get(r.id) else {
            return self.say(&resp, GONE).await;
        };
        if r.index >= rec.latents.len() {
            return self.say(&resp, GONE).await;
        }
        match action {
            Action::Variations => {
                let seed = random_seed();
                let request = Request::Variations {
                    latent: LatentRef::Data(rec.latents[r.index].clone()),
                    seed,
                    count: self.cfg.variations_count,
                    amount: self.cfg.variation_amount,
                };
                let then = Then::New {
                    prompt: rec.prompt.clone(),
                    origin: Origin::Variations { seed },
                    parent: Some(r),
                };
                self.start(resp, user, request, then).await
            }
            Action::Reroll => {
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
                self.start(resp, user, request, then).await
            }
            Action::Edit => {
                if let Err(e) = resp.modal(edit_modal(r, self.cfg.max_prompt_chars)).await {
                    warn!(error = %e, "could not open the edit dialog");
                }
            }
            Action::Undo => {
                if self.store.current(user) == Some(r) {
                    return self.undo(resp, user).await;
                }
                match rec.parent.filter(|p| self.store.latent(*p).is_some()) {
                    Some(p) => {
                        self.push(user, p).await;
                        let note = "The image this one was made from; it is now your current \
                                    image.";
                        self.show(resp, user, p, note.into()).await
                    }
                    None => {
                        self.say(&resp, "There is no earlier image behind this one.")
                            .await
                    }
                }
            }
            Action::Pick => {
                self.push(user, r).await;
                let note = format!(
                    "Image {} picked: `/edit` and the buttons below now act on it.",
                    r.index + 1
                );
                self.show(resp, user, r, note).await
            }
            Action::Delete => {
                if rec.owner != user {
                    let text = format!(
                        "Only the person who made this image (<@{}>) can delete it.",
                        rec.owner
                    );
                    return self.say(&resp, &text).await;
                }
                if let Err(e) = resp.acknowledge().await {
                    return warn!(error = %e, "could not acknowledge a delete");
                }
                let store = self.store.clone();
                let id = r.id;
                match tokio::task::spawn_blocking(move || store.delete(id)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => error!(error = %e, "deleting a result failed"),
                    Err(e) => error!(error = %e, "delete task failed"),
                }
                if let Err(e) = resp.delete_message().await {
                    warn!(error = %e, "could not delete the message");
                }
            }
            Action::EditSubmit => self.say(&resp, GONE).await,
        }
    }

    async fn modal(self: &Arc<Self>, resp: Responder, user: u64, m: &ModalInteraction) {
        let Some((Action::EditSubmit, r)) = Action::parse(&m.data.custom_id) else {
            return self
                .say(&resp, "This dialog belongs to an older version of the bot.")
                .await;
        };
        let field = |name: &str| {
            m.data
                .components
                .iter()
                .flat_map(|row| &row.components)
                .find_map(|c| match c {
                    ActionRowComponent::InputText(t) if t.custom_id == name => {
                        Some(t.value.clone().unwrap_or_default())
                    }
                    _ => None,
                })
                .unwrap_or_default()
        };
        let instruction = match check_text(&field("instruction"), "instruction", &self.cfg) {
            Ok(t) => t,
            Err(text) => return self.say(&resp, &text).await,
        };
        let raw = field("strength");
        let strength = if raw.trim().is_empty() {
            Ok(1.0)
        } else {
            raw.trim()
                .parse::<f64>()
                .map_err(|_| {
                    format!(
                        "`strength` must be a number from -3 to 3, not \"{}\".",
                        render::escape(&render::clean_input(&raw))
                    )
                })
                .and_then(check_strength)
        };
        match strength {
            Ok(s) => self.edit(resp, user, r, instruction, s).await,
            Err(text) => self.say(&resp, &text).await,
        }
    }

    async fn push(&self, user: u64, r: Ref) {
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.push(user, r)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "saving the history failed"),
            Err(e) => error!(error = %e, "history task failed"),
        }
    }

    /// Submit a job, defer the response, and follow the job to its end in a
    /// task of its own. Refusals (cooldown, busy, full queue) are answered
    /// at once.
    async fn start(self: &Arc<Self>, resp: Responder, user: u64, request: Request, then: Then) {
        let cooldown = Duration::from_millis(self.cfg.cooldown_ms);
        if let Some(last) = self.cooldowns.get(&user).map(|t| *t) {
            let since = last.elapsed();
            if since < cooldown {
                let wait = (cooldown - since).as_secs_f64();
                let text =
                    format!("Slow down a little: you can start another image in {wait:.1} s.");
                return self.say(&resp, &text).await;
            }
        }
        let job = match self.engine.submit(user, request) {
            Ok(job) => job,
            Err(e) => return self.say(&resp, &sentence(&e)).await,
        };
        self.cooldowns.insert(user, Instant::now());
        if self.cooldowns.len() > 10_000 {
            // Forget users whose cooldown is over, so the map stays small.
            self.cooldowns.retain(|_, t| t.elapsed() < cooldown);
        }
        if let Err(e) = resp.defer().await {
            // Without a deferred response there is nothing to put the image
            // in: give the slot back.
            warn!(error = %e, "could not defer the response; cancelling the job");
            self.engine.cancel(job.id);
            return;
        }
        let bot = self.clone();
        let guard = self.inflight.enter();
        tokio::spawn(async move {
            let _guard = guard;
            bot.follow(resp, user, job, then).await;
        });
    }

    /// Wait for the job while showing its queue position, then deliver.
    async fn follow(&self, resp: Responder, user: u64, job: JobHandle, then: Then) {
        let id = job.id;
        let started = Instant::now();
        let wait = job.wait();
        tokio::pin!(wait);
        let mut tick = tokio::time::interval(Duration::from_millis(
            self.cfg.progress_interval_ms.max(100),
        ));
        let mut shown: Option<String> = None;
        let result = loop {
            tokio::select! {
                r = &mut wait => break r,
                _ = tick.tick() => {
                    // Worth a message only when others are ahead; after
                    // that, each change until it runs.
                    let text = match self.engine.position(id) {
                        Some(n) if n > 0 => format!("⏳ Queued: {n} ahead of you."),
                        Some(_) if shown.is_some() => "⏳ You are next.".to_string(),
                        None if shown.is_some() => "🎨 Rendering…".to_string(),
                        _ => continue,
                    };
                    if shown.as_ref() != Some(&text) {
                        resp.progress(&text).await;
                        shown = Some(text);
                    }
                }
            }
        };
        let reply = match result {
            Ok(out) => self.result_reply(&resp, user, out, then).await,
            Err(e) => Reply {
                content: format!("❌ {}", sentence(&e)),
                ..Default::default()
            },
        };
        match resp.finish(&reply).await {
            Ok(()) => info!(
                user,
                job = id.0,
                ms = started.elapsed().as_millis() as u64,
                "delivered"
            ),
            Err(e) => error!(user, job = id.0, error = %e, "could not deliver a result"),
        }
    }

    async fn result_reply(
        &self,
        resp: &Responder,
        user: u64,
        out: crate::engine::Output,
        then: Then,
    ) -> Reply {
        let (rec, shown, note) = match then {
            Then::New {
                prompt,
                origin,
                parent,
            } => {
                let rec = Record {
                    id: 0,
                    owner: user,
                    created_unix: unix_now(),
                    prompt,
                    origin,
                    parent,
                    latents: out.latents.into_iter().map(|(_, l)| l).collect(),
                };
                let note = out.truncated_prompt.then(|| {
                    "Note: CLIP reads 77 tokens; the end of the prompt was ignored.".to_string()
                });
                let store = self.store.clone();
                let pending = rec.clone();
                let saved =
                    match tokio::task::spawn_blocking(move || store.insert(pending, user, 0)).await
                    {
                        Ok(r) => r.map_err(|e| e.to_string()),
                        Err(e) => Err(e.to_string()),
                    };
                match saved {
                    Ok(rec) => (rec, None, note),
                    Err(why) => {
                        error!(error = %why, "saving a result failed");
                        // Deliver the image anyway, without buttons that
                        // would point at nothing.
                        let png = self.png(resp, out.images).await;
                        return Reply {
                            content: format!(
                                "{}\n(This image could not be saved, so it cannot be edited.)",
                                render::result_content(&rec, None, note.as_deref())
                            ),
                            components: Vec::new(),
                            png: png.ok().map(|p| ("clip2gan.png".into(), p)),
                        };
                    }
                }
            }
            Then::Show { r, note } => match self.store.get(r.id) {
                Some(rec) => (rec, Some(r.index), Some(note)),
                None => {
                    return Reply {
                        content: GONE.into(),
                        ..Default::default()
                    }
                }
            },
        };
        match self.png(resp, out.images).await {
            Ok(png) => Reply {
                content: render::result_content(&rec, shown, note.as_deref()),
                components: render::buttons(&rec, shown),
                png: Some((format!("clip2gan-{}.png", rec.id), png)),
            },
            Err(e) => Reply {
                content: format!("❌ {e}"),
                ..Default::default()
            },
        }
    }

    async fn png(&self, resp: &Responder, images: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
        let limit = resp.size_limit;
        tokio::task::spawn_blocking(move || render::compose_png(&images, limit))
            .await
            .map_err(|e| format!("composing the image failed: {e}"))?
    }
}

fn edit_modal(r: Ref, max_chars: usize) -> CreateModal {
    let instruction = CreateInputText::new(InputTextStyle::Short, "What to change", "instruction")
        .placeholder("add smile, make older, remove beard…")
        .max_length(max_chars.min(4000) as u16)
        .required(true);
    let strength = CreateInputText::new(InputTextStyle::Short, "Strength, -3 to 3", "strength")
        .placeholder("1")
        .max_length(8)
        .required(false);
    CreateModal::new(Action::EditSubmit.custom_id(r), "Edit this image").components(vec![
        CreateActionRow::InputText(instruction),
        CreateActionRow::InputText(strength),
    ])
}

/// An engine error as a reply: its message, capitalised, with a full stop.
fn sentence(e: &EngineError) -> String {
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

fn random_seed() -> u64 {
    rand::random::<u32>() as u64
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
