//! `/settings`: what a server's admins change (channels, role, cooldown,
//! quota, blocked words), checked, saved and shown back.

use tracing::{error, info};

use super::jobs::{stored, Ctx};
use crate::bot::guild::{self, SettingsCmd};
use crate::bot::respond::Responder;
use crate::bot::text;
use crate::bot::Bot;

impl Bot {
    /// `/settings`: Manage Server is checked here too, whatever the
    /// command's registered default (servers can override who sees it).
    pub(super) async fn settings(&self, resp: Responder, ctx: &Ctx, cmd: SettingsCmd) {
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
                self.say(&resp, &text::truncate(text)).await
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
}
