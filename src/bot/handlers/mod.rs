//! What the bot does with each interaction: checks (shutdown, guild,
//! channel, role, cooldown, daily quota), the engine job, the queue
//! feedback while it waits, and the final message. Every interaction gets
//! an answer: a refusal is an ephemeral reply, an accepted job a deferred
//! message edited with the result or with what went wrong. A photo that
//! turns out to be unusable only after the response was deferred (the
//! download or the decoding failed) is refused in an ephemeral follow-up,
//! and the public "thinking…" message is removed.

//!
//! This is the dispatcher: the checks every interaction passes and which
//! family answers it. One file a command family:
//!
//! - `imagine`: `/imagine` from a text, the Variations and Re-roll buttons.
//! - `edit`: `/edit` and photos (download, inversion, the edit on top).
//! - `history`: `/morph`, `/history`, `/undo`, showing a stored image again.
//! - `settings`: `/settings`.
//! - `buttons`: the result buttons and the dialogs they and "Edit this
//!   face" open.
//! - `jobs`: what they share: the interaction's context, admission
//!   (cooldown, quota charges), submitting and deferring, waiting with
//!   queue feedback, saving and delivering the reply.

mod buttons;
mod edit;
mod history;
mod imagine;
mod jobs;
mod settings;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use serenity::all::{CommandInteraction, Http, Interaction, Member};
use tracing::info;

use super::commands::{self, Command, Quality};
use super::config::BotConfig;
use super::guild::{self, Effective};
use super::respond::Responder;
use super::Bot;
use jobs::{stored, Ctx};

fn role_ids(m: Option<&Member>) -> Vec<u64> {
    m.map(|m| m.roles.iter().map(|r| r.get()).collect())
        .unwrap_or_default()
}

/// `quality: best` with a photo: the photo's face is made first; its
/// result's Refine button then does the rest.
const PHOTO_BEST: &str = "`quality: best` works on stored images only: send the photo with \
     `quality: fast` (or leave it out), then press **Refine** under the result.";

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

    async fn command(self: &Arc<Self>, resp: Responder, ctx: &Ctx, c: &CommandInteraction) {
        info!(user = ctx.user, command = %c.data.name, "command");
        let cmd = match commands::parse(&c.data, &ctx.cfg) {
            Ok(cmd) => cmd,
            Err(text) => return self.say(&resp, &text).await,
        };
        if let Command::Imagine {
            image: Some(_),
            quality: Quality::Best,
            ..
        }
        | Command::Edit {
            image: Some(_),
            quality: Quality::Best,
            ..
        } = cmd
        {
            return self.say(&resp, PHOTO_BEST).await;
        }
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
                quality,
            } => self.imagine(resp, ctx, prompt, count, seed, quality).await,
            Command::Edit {
                instruction,
                strength,
                image: Some(photo),
                ..
            } => {
                self.edit_photo(resp, ctx, &photo, instruction, strength)
                    .await
            }
            Command::Edit {
                instruction,
                strength,
                image: None,
                quality,
            } => {
                self.edit_current(resp, ctx, instruction, strength, quality)
                    .await
            }
            Command::Undo => self.undo(resp, ctx).await,
            Command::Morph { from, to, frames } => {
                self.morph_recent(resp, ctx, from, to, frames).await
            }
            Command::History => self.history(resp, ctx).await,
            Command::Settings(cmd) => self.settings(resp, ctx, cmd).await,
            Command::EditThisFace { photo } => self.edit_this_face(resp, ctx, photo).await,
        }
    }
}
