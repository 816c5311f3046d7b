//! Answering one interaction: the first response (an ephemeral reply, a
//! defer, or a modal) and later edits of it, with retries where Discord's
//! answer is temporary (5xx, 429, a dropped connection).

use std::sync::Arc;
use std::time::Duration;

use serenity::all::{
    Builder, CreateActionRow, CreateAllowedMentions, CreateAttachment, CreateInteractionResponse,
    CreateInteractionResponseFollowup, CreateInteractionResponseMessage, CreateModal,
    EditInteractionResponse, Http, InteractionId,
};
use tracing::{debug, warn};

/// How to retry deliveries.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub base: Duration,
}

/// One interaction's reply channel (its id and token: valid 15 minutes).
#[derive(Clone)]
pub struct Responder {
    pub http: Arc<Http>,
    pub id: InteractionId,
    pub token: String,
    /// Largest upload this interaction accepts, in bytes.
    pub size_limit: u32,
    pub retry: Retry,
}

/// The final state of a response message.
#[derive(Clone, Default)]
pub struct Reply {
    pub content: String,
    pub components: Vec<CreateActionRow>,
    /// The attached image: file name (its extension gives the type) and bytes.
    pub file: Option<(String, Vec<u8>)>,
}

/// No message of the bot may ping anyone: user text is echoed in them.
fn no_mentions() -> CreateAllowedMentions {
    CreateAllowedMentions::new()
}

fn status(e: &serenity::Error) -> Option<u16> {
    match e {
        serenity::Error::Http(h) => h.status_code().map(|s| s.as_u16()),
        _ => None,
    }
}

/// Worth another try: Discord overloaded (5xx), rate limited (429), or the
/// request never got an answer. Other 4xx answers will not change.
fn temporary(e: &serenity::Error) -> bool {
    match e {
        serenity::Error::Http(h) => match h.status_code() {
            Some(s) => s.is_server_error() || s.as_u16() == 429,
            None => matches!(h, serenity::all::HttpError::Request(_)),
        },
        _ => false,
    }
}

impl Responder {
    /// A reply only the user sees: refusals and explanations.
    pub async fn ephemeral(&self, text: &str) -> serenity::Result<()> {
        let msg = CreateInteractionResponseMessage::new()
            .content(text)
            .ephemeral(true)
            .allowed_mentions(no_mentions());
        CreateInteractionResponse::Message(msg)
            .execute(&self.http, (self.id, &self.token))
            .await
    }

    /// "Thinking…": must come within 3 s of the interaction; the result is
    /// then edited in.
    pub async fn defer(&self) -> serenity::Result<()> {
        CreateInteractionResponse::Defer(
            CreateInteractionResponseMessage::new().allowed_mentions(no_mentions()),
        )
        .execute(&self.http, (self.id, &self.token))
        .await
    }

    /// Acknowledge a button without a new message (Delete).
    pub async fn acknowledge(&self) -> serenity::Result<()> {
        CreateInteractionResponse::Acknowledge
            .execute(&self.http, (self.id, &self.token))
            .await
    }

    pub async fn modal(&self, modal: CreateModal) -> serenity::Result<()> {
        CreateInteractionResponse::Modal(modal)
            .execute(&self.http, (self.id, &self.token))
            .await
    }

    /// Progress text ("queued: 3 ahead"); one try, a later edit supersedes it.
    pub async fn progress(&self, text: &str) {
        let edit = EditInteractionResponse::new()
            .content(text)
            .allowed_mentions(no_mentions());
        if let Err(e) = edit.execute(&self.http, &self.token).await {
            debug!(error = %e, "progress edit failed");
        }
    }

    /// Put the final text, buttons and image in the response, retrying
    /// temporary failures with doubling pauses. (With serenity's rate
    /// limiter on, it has already waited out 429s before we see them.)
    pub async fn finish(&self, reply: &Reply) -> serenity::Result<()> {
        let mut pause = self.retry.base;
        let mut attempt = 1;
        loop {
            let mut edit = EditInteractionResponse::new()
                .content(&reply.content)
                .components(reply.components.clone())
                .allowed_mentions(no_mentions());
            if let Some((name, bytes)) = &reply.file {
                edit = edit.new_attachment(CreateAttachment::bytes(bytes.clone(), name.clone()));
            }
            match edit.execute(&self.http, &self.token).await {
                Ok(_) => return Ok(()),
                Err(e) if temporary(&e) && attempt < self.retry.attempts => {
                    warn!(error = %e, attempt, "delivering a result failed; retrying");
                    // serenity's error drops the Retry-After header; Discord's
                    // per-route windows are about a second, so a 429 waits at
                    // least that.
                    let wait = if status(&e) == Some(429) {
                        pause.max(Duration::from_secs(1))
                    } else {
                        pause
                    };
                    tokio::time::sleep(wait).await;
                    pause = (pause * 2).min(Duration::from_secs(10));
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// A refusal found after the response was deferred (a photo that
    /// could not be downloaded or read): said only to the user, in an
    /// ephemeral follow-up, and the public "thinking…" message is removed.
    /// If the follow-up cannot be sent, the text goes in the message itself,
    /// so the user is never left waiting.
    pub async fn fail_privately(&self, text: &str) {
        let followup = CreateInteractionResponseFollowup::new()
            .content(text)
            .ephemeral(true)
            .allowed_mentions(no_mentions());
        match followup.execute(&self.http, (None, &self.token)).await {
            Ok(_) => {
                if let Err(e) = self.delete_message().await {
                    debug!(error = %e, "could not remove the deferred message");
                }
            }
            Err(e) => {
                warn!(error = %e, "ephemeral follow-up failed; answering in the message");
                let reply = Reply {
                    content: format!("❌ {text}"),
                    ..Default::default()
                };
                if let Err(e) = self.finish(&reply).await {
                    warn!(error = %e, "could not answer the interaction");
                }
            }
        }
    }

    /// Delete the message a button is on (after [`Self::acknowledge`]).
    pub async fn delete_message(&self) -> serenity::Result<()> {
        self.http
            .delete_original_interaction_response(&self.token)
            .await
    }
}
