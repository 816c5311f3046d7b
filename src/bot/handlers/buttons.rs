//! The buttons on each result and the dialogs: which button was pressed
//! and on what, the edit dialogs (of a stored image, and of a photo picked
//! with "Edit this face", kept here until its dialog is sent) and what they
//! send back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serenity::all::{
    ComponentInteraction, CreateActionRow, CreateInputText, CreateModal, InputTextStyle,
    ModalInteraction,
};
use tracing::{error, info, warn};

use crate::engine::limits;

use super::jobs::{stored, Ctx, GONE};
use crate::bot::attach::Photo;
use crate::bot::commands::{parse_modal, DialogTarget, PHOTO_MODAL};
use crate::bot::render::{self, Action};
use crate::bot::respond::Responder;
use crate::bot::store::Ref;
use crate::bot::{Bot, PendingPhoto};

/// How long an "Edit this face" dialog may stay open (Discord's interaction
/// tokens last 15 minutes too).
const PENDING_TTL: Duration = Duration::from_secs(15 * 60);

impl Bot {
    /// "Edit this face" on a message: its photo kept for the edit dialog,
    /// which opens at once.
    pub(super) async fn edit_this_face(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        photo: Option<Photo>,
    ) {
        match photo {
            None => {
                let text = format!(
                    "That message has no image attached. Use **{}** on a message with a photo \
                     uploaded as a file (not a link).",
                    self.cfg.words.edit_this()
                );
                self.say(&resp, &text).await
            }
            Some(photo) => {
                if let Err(text) = self.fetcher.precheck(&photo) {
                    return self.say(&resp, &text).await;
                }
                let key = resp.id.get();
                self.remember(key, photo, ctx.user);
                if let Err(e) = resp
                    .modal(photo_modal(
                        key,
                        ctx.cfg.max_prompt_chars,
                        &ctx.cfg.words.edit_this(),
                    ))
                    .await
                {
                    warn!(error = %e, "could not open the edit dialog");
                    self.pending.remove(&key);
                }
            }
        }
    }

    /// Keep a photo for its edit dialog, forgetting old ones.
    pub(super) fn remember(&self, key: u64, photo: Photo, user: u64) {
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

    pub(super) async fn button(
        self: &Arc<Self>,
        resp: Responder,
        ctx: &Ctx,
        c: &ComponentInteraction,
    ) {
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
            Action::Variations => self.variations(resp, ctx, &rec, r).await,
            Action::Reroll => self.reroll(resp, ctx, &rec).await,
            Action::Refine => self.refine(resp, ctx, &rec, r, false).await,
            Action::RefineAll => self.refine(resp, ctx, &rec, r, true).await,
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

    pub(super) async fn modal(self: &Arc<Self>, resp: Responder, ctx: &Ctx, m: &ModalInteraction) {
        let (target, instruction, strength) = match parse_modal(&m.data, &ctx.cfg) {
            Ok(parsed) => parsed,
            Err(text) => return self.say(&resp, &text).await,
        };
        match target {
            DialogTarget::Stored(r) => self.edit(resp, ctx, r, instruction, strength).await,
            DialogTarget::Photo(key) => {
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
                        let text = format!(
                            "This dialog has expired (or the bot restarted since). Use **{}** \
                             on the message again.",
                            self.cfg.words.edit_this()
                        );
                        self.say(&resp, &text).await
                    }
                }
            }
        }
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
    .placeholder(limits::DEFAULT_STRENGTH.to_string())
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

fn photo_modal(key: u64, max_chars: usize, title: &str) -> CreateModal {
    CreateModal::new(format!("{PHOTO_MODAL}{key}"), title).components(text_inputs(max_chars))
}
