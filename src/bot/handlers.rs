//! What the bot does with each interaction: checks (shutdown, guild,
//! channel, role, cooldown, daily quota), the engine job, the queue
//! feedback while it waits, and the final message. Every interaction gets
//! an answer: a refusal is an ephemeral reply, an accepted job a deferred
//! message edited with the result or with what went wrong. A photo that
//! turns out to be unusable only after the response was deferred (the
//! download or the decoding failed) is refused in an ephemeral follow-up,
//! and the public "thinking…" message is removed.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::{counter, histogram};
use reqwest::Url;
use serenity::all::{
    ActionRowComponent, CommandInteraction, ComponentInteraction, CreateActionRow, CreateInputText,
    CreateModal, Http, InputTextStyle, Interaction, Member, ModalInteraction, Permissions,
};
use tracing::{error, info, warn};

use crate::engine::{limits, EngineError, Latent, Layers, Output, Request};
use crate::inference::Job;
use crate::metrics as names;

use super::attach::{self, Photo};
use super::commands::{self, check_strength, check_text, Command};
use super::config::BotConfig;
use super::guild::{self, Effective, SettingsCmd};
use super::render::{self, Action, HISTORY_SHOWN};
use super::respond::{Reply, Responder};
use super::store::{Origin, Record, Ref};
use super::{Bot, PendingPhoto};

/// Said when the results store (shared by front ends) cannot be reached.
const STORE_DOWN: &str = "The bot's storage cannot be reached just now; please try again in a \
                          minute.";

/// A store read, or the interaction answered with [`STORE_DOWN`] and the
/// handler left.
macro_rules! stored {
    ($bot:expr, $resp:expr, $read:expr) => {
        match $read.await {
            Ok(v) => v,
            Err(e) => {
                error!(error = %e, "reading the results store failed");
                return $bot.say(&$resp, STORE_DOWN).await;
            }
        }
    };
}

const GONE: &str = "This image is no longer stored (the bot keeps only the most recent results, \
                    or it was deleted). Make a new one with `/imagine`.";

/// Said with every image made from a photo: there is no face detector, so
/// a photo without a face is inverted like any other, and the user should
/// know what the result is.
const PHOTO_NOTE: &str = "Made from your photo: CLIP reads the whole picture and the mapper \
                          turns that reading into a face, so this is what CLIP makes of the \
                          photo, not a copy of it. A photo without a clear face still gives a \
                          face.";

/// Modal custom ids of "Edit this face": `c2g:photo:<key>`.
const PHOTO_MODAL: &str = "c2g:photo:";
/// How long an "Edit this face" dialog may stay open (Discord's interaction
/// tokens last 15 minutes too).
const PENDING_TTL: Duration = Duration::from_secs(15 * 60);

/// Who is asking, where, and the settings in force there.
pub(super) struct Ctx {
    /// When the interaction arrived: defer and end-to-end times count from here.
    received: Instant,
    user: u64,
    guild: Option<u64>,
    perms: Option<Permissions>,
    eff: Effective,
    /// The bot's config with this server's blocked words added.
    cfg: BotConfig,
}

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
struct Charge {
    guild: u64,
    user: u64,
    window_start: u64,
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

/// "in 3 h 12 min", "in 40 s".
fn wait_text(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s} s"),
        (0, _) => format!("{m} min"),
        _ => format!("{h} h {m} min"),
    }
}

fn role_ids(m: Option<&Member>) -> Vec<u64> {
    m.map(|m| m.roles.iter().map(|r| r.get()).collect())
        .unwrap_or_default()
}

impl Bot {
    pub(super) async fn handle(self: Arc<Self>, http: Arc<Http>, interaction: Interaction) {
        // Counted from the start, so a shutdown waits for answers in progress.
        let _guard = self.inflight.token();
        let received = Instant::now();
        // The three kinds carry these under the same names, but serenity
        // gives them no common trait: a macro reads them from each.
        macro_rules! context {
            ($i:expr, $member:expr) => {
                (
                    $i.id,
                    &$i.token,
                    $i.user.id,
                    $i.guild_id,
                    $i.attachment_size_limit,
                    $i.channel_id,
                    $i.channel.as_ref().and_then(|ch| ch.parent_id),
                    $member,
                )
            };
        }
        let (id, token, user, guild, limit, channel, parent, member) = match &interaction {
            Interaction::Command(c) => context!(c, c.member.as_deref()),
            Interaction::Component(c) => context!(c, c.member.as_ref()),
            Interaction::Modal(m) => context!(m, m.member.as_ref()),
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
        let guild = guild.map(|g| g.get());
        let refusal = if self.closing.load(Ordering::SeqCst) {
            Some("The bot is restarting; please try again in a minute.".to_string())
        } else if !self.discord.allowed_guilds.is_empty()
            && !guild.is_some_and(|g| self.discord.allowed_guilds.contains(&g))
        {
            Some("This bot is not enabled here.".to_string())
        } else {
            None
        };
        if let Some(text) = refusal {
            return self.say(&resp, &text).await;
        }
        let own = match guild {
            Some(g) => stored!(self, resp, self.store.guild(g)),
            None => None,
        };
        let eff = Effective::new(&self.cfg, own.as_ref());
        let ctx = Ctx {
            received,
            user,
            guild,
            perms: member.and_then(|m| m.permissions),
            cfg: BotConfig {
                blocklist: eff.blocklist.clone(),
                ..self.cfg.clone()
            },
            eff,
        };
        // `/settings` works anywhere in a server, so admins can always
        // change (or undo) a restriction; everything else obeys them.
        let settings = matches!(&interaction, Interaction::Command(c) if c.data.name == "settings");
        if !settings && guild.is_some() {
            if let Some(text) = self.gate(&ctx, channel.get(), parent.map(|p| p.get()), member) {
                return self.say(&resp, &text).await;
            }
        }
        match interaction {
            Interaction::Command(c) => self.command(resp, &ctx, &c).await,
            Interaction::Component(c) => self.button(resp, &ctx, &c).await,
            Interaction::Modal(m) => self.modal(resp, &ctx, &m).await,
            _ => {}
        }
    }

    /// The server's channel list and required role; the refusal to send.
    fn gate(
        &self,
        ctx: &Ctx,
        channel: u64,
        parent: Option<u64>,
        member: Option<&Member>,
    ) -> Option<String> {
        if !ctx.eff.channel_allowed(channel, parent) {
            let list = ctx
                .eff
                .channels
                .iter()
                .map(|c| format!("<#{c}>"))
                .collect::<Vec<_>>()
                .join(", ");
            return Some(format!(
                "I don't answer in this channel on this server; please use {list}."
            ));
        }
        if let Some(role) = ctx.eff.role {
            // Those who manage the server set the requirement; they need
            // not hold the role themselves.
            if !role_ids(member).contains(&role) && !guild::may_manage(ctx.perms) {
                return Some(format!(
                    "On this server you need the <@&{role}> role to use this bot; ask a server \
                     admin for it."
                ));
            }
        }
        None
    }

    /// An ephemeral reply; failures are only logged (nothing else to do).
    async fn say(&self, resp: &Responder, text: &str) {
        if let Err(e) = resp.ephemeral(text).await {
            warn!(error = %e, "could not answer an interaction");
        }
    }

    async fn command(self: &Arc<Self>, resp: Responder, ctx: &Ctx, c: &CommandInteraction) {
        let user = ctx.user;
        info!(user, command = %c.data.name, "command");
        let cmd = match commands::parse(&c.data, &ctx.cfg) {
            Ok(cmd) => cmd,
            Err(text) => return self.say(&resp, &text).await,
        };
        match cmd {
            Command::Imagine {
                prompt,
                image: Some(photo),
                ..
            } => {
                // "A face like this photo", moved toward the prompt: the
                // paper's image edit with the prompt as the text.
                self.photo(resp, ctx, &photo, Some((prompt.clone(), 1.0)), prompt)
                    .await
            }
            Command::Imagine {
                prompt,
                count,
                seed,
                image: None,
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
                self.start(resp, ctx, request, then).await
            }
            Command::Edit {
                instruction,
                strength,
                image: Some(photo),
            } => {
                self.edit_photo(resp, ctx, &photo, instruction, strength)
                    .await
            }
            Command::Edit {
                instruction,
                strength,
                image: None,
            } => match stored!(self, resp, self.store.current(user)) {
                Some(r) => self.edit(resp, ctx, r, instruction, strength).await,
                None => {
                    self.say(
                        &resp,
                        "You have no image to edit yet: make one with `/imagine` first, then \
                         `/edit add smile` (or attach a photo: `/edit add smile image:`).",
                    )
                    .await
                }
            },
            Command::Undo => self.undo(resp, ctx).await,
            Command::Morph { from, to, frames } => {
                let recent = stored!(self, resp, self.store.recent(user, 2));
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
            Command::History => self.history(resp, ctx).await,
            Command::Settings(cmd) => self.settings(resp, ctx, cmd).await,
            Command::EditThisFace { photo: None } => {
                self.say(
                    &resp,
                    "That message has no image attached. Use **Edit this face** on a message \
                     with a photo uploaded as a file (not a link).",
                )
                .await
            }
            Command::EditThisFace { photo: Some(photo) } => {
                if let Err(text) = self.fetcher.precheck(&photo) {
                    return self.say(&resp, &text).await;
                }
                let key = resp.id.get();
                self.remember(key, photo, user);
                if let Err(e) = resp.modal(photo_modal(key, ctx.cfg.max_prompt_chars)).await {
                    warn!(error = %e, "could not open the edit dialog");
                    self.pending.remove(&key);
                }
            }
        }
    }

    /// Keep a photo for its edit dialog, forgetting old ones.
    fn remember(&self, key: u64, photo: Photo, user: u64) {
        if self.pending.len() >= 1000 {
            self.pending.retain(|_, p| p.since.elapsed() < PENDING_TTL);
        }
        self.pending.insert(
            key,
            PendingPhoto {
                photo,
                user,
                since: Instant::now(),
            },
        );
    }

    async fn edit(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        r: Ref,
        instruction: String,
        strength: f64,
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
        let then = Then::New {
            prompt: rec.prompt.clone(),
            origin: Origin::Edit {
                instruction,
                strength,
            },
            parent: Some(r),
        };
        self.start(resp, ctx, request, then).await
    }

    async fn undo(self: &Arc<Self>, resp: Responder, ctx: &Ctx) {
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
    async fn show(self: &Arc<Self>, resp: Responder, ctx: &Ctx, r: Ref, note: String) {
        let Some((_, latent)) = stored!(self, resp, self.store.latent(r)) else {
            return self.say(&resp, GONE).await;
        };
        let request = Request::Render {
            latents: vec![latent],
        };
        self.start(resp, ctx, request, Then::Show { r, note }).await
    }

    async fn morph(
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

    async fn history(self: &Arc<Self>, resp: Responder, ctx: &Ctx) {
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

    /// `/settings`: Manage Server is checked here too, whatever the
    /// command's registered default (servers can override who sees it).
    async fn settings(&self, resp: Responder, ctx: &Ctx, cmd: SettingsCmd) {
        let Some(g) = ctx.guild else {
            return self
                .say(
                    &resp,
                    "Settings belong to a server: use `/settings` in the server you manage.",
                )
                .await;
        };
        if !guild::may_manage(ctx.perms) {
            return self
                .say(
                    &resp,
                    "Changing the bot's settings needs the **Manage Server** permission; ask a \
                     server admin.",
                )
                .await;
        }
        let cur = stored!(self, resp, self.store.guild(g));
        if cmd == SettingsCmd::Show {
            return self.say(&resp, &guild::show(cur.as_ref(), &self.cfg)).await;
        }
        let (new, said) = match guild::apply(&cmd, &cur.unwrap_or_default(), &self.cfg) {
            Ok(x) => x,
            Err(text) => return self.say(&resp, &text).await,
        };
        match self.store.set_guild(g, new.clone()).await {
            Ok(()) => {
                info!(guild = g, user = ctx.user, ?cmd, "settings changed");
                let text = format!("Saved. {said}\n\n{}", guild::show(Some(&new), &self.cfg));
                self.say(&resp, &render::truncate(text)).await
            }
            Err(e) => {
                error!(error = %e, "saving settings failed");
                self.say(
                    &resp,
                    "The settings could not be saved on the bot's side; nothing changed. Please \
                     try again.",
                )
                .await
            }
        }
    }

    async fn button(self: &Arc<Self>, resp: Responder, ctx: &Ctx, c: &ComponentInteraction) {
        let user = ctx.user;
        if let Some((a, b)) = render::parse_morph(&c.data.custom_id) {
            info!(user, from = a.id, to = b.id, "morph button");
            return self.morph(resp, ctx, a, b, None).await;
        }
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
        let Some(rec) = stored!(self, resp, self.store.get(r.id)) else {
            return self.say(&resp, GONE).await;
        };
        if r.index >= rec.latents.len() {
            return self.say(&resp, GONE).await;
        }
        match action {
            Action::Variations => {
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
                self.start(resp, ctx, request, then).await
            }
            Action::Edit => {
                if let Err(e) = resp.modal(edit_modal(r, self.cfg.max_prompt_chars)).await {
                    warn!(error = %e, "could not open the edit dialog");
                }
            }
            Action::Undo => {
                if stored!(self, resp, self.store.current(user)) == Some(r) {
                    return self.undo(resp, ctx).await;
                }
                let parent = match rec.parent {
                    Some(p) => stored!(self, resp, self.store.latent(p)).map(|_| p),
                    None => None,
                };
                match parent {
                    Some(p) => {
                        self.push(user, p).await;
                        let note = "The image this one was made from; it is now your current \
                                    image.";
                        self.show(resp, ctx, p, note.into()).await
                    }
                    None => {
                        self.say(&resp, "There is no earlier image behind this one.")
                            .await
                    }
                }
            }
            Action::Pick => {
                self.push(user, r).await;
                let note = if rec.latents.len() > 1 {
                    format!(
                        "Image {} picked: `/edit` and the buttons below now act on it.",
                        r.index + 1
                    )
                } else {
                    format!(
                        "#{} picked: `/edit` and the buttons below now act on it.",
                        r.id
                    )
                };
                self.show(resp, ctx, r, note).await
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
                if let Err(e) = self.store.delete(r.id).await {
                    error!(error = %e, "deleting a result failed");
                }
                if let Err(e) = resp.delete_message().await {
                    warn!(error = %e, "could not delete the message");
                }
            }
            Action::EditSubmit => self.say(&resp, GONE).await,
        }
    }

    async fn modal(self: &Arc<Self>, resp: Responder, ctx: &Ctx, m: &ModalInteraction) {
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
        let photo_key = m
            .data
            .custom_id
            .strip_prefix(PHOTO_MODAL)
            .and_then(|k| k.parse::<u64>().ok());
        // Ok: the edit dialog of a stored image; Err: of a pending photo.
        let target = match (photo_key, Action::parse(&m.data.custom_id)) {
            (Some(key), _) => Some(Err(key)),
            (None, Some((Action::EditSubmit, r))) => Some(Ok(r)),
            _ => None,
        };
        let Some(target) = target else {
            return self
                .say(&resp, "This dialog belongs to an older version of the bot.")
                .await;
        };
        let instruction = match check_text(&field("instruction"), "instruction", &ctx.cfg) {
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
                        "`strength` must be a number from {}, not \"{}\".",
                        limits::strength_span(),
                        render::escape(&render::clean_input(&raw))
                    )
                })
                .and_then(check_strength)
        };
        let strength = match strength {
            Ok(s) => s,
            Err(text) => return self.say(&resp, &text).await,
        };
        match target {
            Ok(r) => self.edit(resp, ctx, r, instruction, strength).await,
            Err(key) => {
                let photo = self
                    .pending
                    .remove_if(&key, |_, p| {
                        p.user == ctx.user && p.since.elapsed() < PENDING_TTL
                    })
                    .map(|(_, p)| p.photo);
                match photo {
                    Some(photo) => {
                        self.edit_photo(resp, ctx, &photo, instruction, strength)
                            .await
                    }
                    None => {
                        self.say(
                            &resp,
                            "This dialog has expired (or the bot restarted since). Use **Edit \
                             this face** on the message again.",
                        )
                        .await
                    }
                }
            }
        }
    }

    async fn push(&self, user: u64, r: Ref) {
        if let Err(e) = self.store.push(user, r).await {
            error!(error = %e, "saving the history failed");
        }
    }

    /// The cooldown and, for jobs that make new images, the daily quota
    /// (taken now, given back if the job fails). `Err`: the refusal.
    async fn admit(&self, ctx: &Ctx, counts: bool) -> Result<Option<Charge>, String> {
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

    async fn refund(&self, charge: Option<Charge>) {
        let Some(c) = charge else { return };
        if let Err(e) = self.store.refund(c.guild, c.user, c.window_start).await {
            error!(error = %e, "giving back a quota charge failed");
        }
    }

    async fn started(&self, user: u64, cooldown: Duration) {
        if let Err(e) = self.store.started(user, cooldown).await {
            warn!(error = %e, "the cooldown could not be recorded");
        }
    }

    /// Submit a job, defer the response, and follow the job to its end in a
    /// task of its own. Refusals (cooldown, quota, busy, full queue) are
    /// answered at once.
    async fn start(self: &Arc<Self>, resp: Responder, ctx: &Ctx, request: Request, then: Then) {
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
            bot.follow(resp, user, job, then, charge, (command, received))
                .await;
        });
    }

    /// A photo job: checks on what Discord says about the photo (answered
    /// at once), then defer, download, decode, invert, maybe edit.
    /// A photo with an edit to apply once it is inverted.
    async fn edit_photo(
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

    async fn photo(
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

    /// Wait for the job while showing its queue position.
    async fn wait(
        &self,
        resp: &Responder,
        job: Job,
        shown: &mut Option<String>,
    ) -> Result<Output, EngineError> {
        let id = job.id;
        let wait = job.wait();
        tokio::pin!(wait);
        let mut tick = tokio::time::interval(Duration::from_millis(
            self.cfg.progress_interval_ms.max(100),
        ));
        loop {
            tokio::select! {
                r = &mut wait => return r,
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

    /// Wait for the job, then deliver.
    async fn follow(
        &self,
        resp: Responder,
        user: u64,
        job: Job,
        then: Then,
        charge: Option<Charge>,
        started: (&'static str, Instant),
    ) {
        let id = job.id;
        let result = self.wait(&resp, job, &mut None).await;
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
    async fn deliver(
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
        notes.insert(0, PHOTO_NOTE.to_string());
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
            return Err(Refused::say(
                "The photo gave no face; please try another one.",
            ));
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

    /// Store a new result and make its first image the user's current one.
    /// `Err` carries the unsaved record, for its text.
    async fn save(
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
    async fn new_reply(
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

    async fn result_reply(&self, resp: &Responder, user: u64, out: Output, then: Then) -> Reply {
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

    async fn png(&self, resp: &Responder, images: Vec<Vec<u8>>) -> Result<Vec<u8>, String> {
        let limit = resp.size_limit;
        tokio::task::spawn_blocking(move || render::compose_png(&images, limit))
            .await
            .map_err(|e| format!("composing the image failed: {e}"))?
    }
}

/// A photo job that made nothing; the text, if any, is still to be said.
struct Refused(Option<String>);

impl Refused {
    fn say(text: impl Into<String>) -> Self {
        Refused(Some(text.into()))
    }
}

fn text_inputs(max_chars: usize) -> Vec<CreateActionRow> {
    let instruction = CreateInputText::new(InputTextStyle::Short, "What to change", "instruction")
        .placeholder("add smile, make older, remove beard…")
        .max_length(max_chars.min(4000) as u16)
        .required(true);
    let strength = CreateInputText::new(
        InputTextStyle::Short,
        format!("Strength, {}", limits::strength_span()),
        "strength",
    )
    .placeholder("1")
    .max_length(8)
    .required(false);
    vec![
        CreateActionRow::InputText(instruction),
        CreateActionRow::InputText(strength),
    ]
}

fn edit_modal(r: Ref, max_chars: usize) -> CreateModal {
    CreateModal::new(Action::EditSubmit.custom_id(r), "Edit this image")
        .components(text_inputs(max_chars))
}

fn photo_modal(key: u64, max_chars: usize) -> CreateModal {
    CreateModal::new(format!("{PHOTO_MODAL}{key}"), "Edit this face")
        .components(text_inputs(max_chars))
}

/// The reply that a job failed, and why.
fn failure(e: &EngineError) -> Reply {
    Reply {
        content: format!("❌ {}", sentence(e)),
        ..Default::default()
    }
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
