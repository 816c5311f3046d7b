//! The slash commands and the message command: their registration
//! payloads, and their options turned into checked, typed requests (or a
//! reply saying what to fix).

use serenity::all::{
    ActionRowComponent, CommandData, CommandDataOptionValue, CommandOptionType, CommandType,
    CreateCommand, CreateCommandOption, MessageId, ModalInteractionData,
};

use super::attach::Photo;
use super::config::{BotConfig, MAX_IMAGES, MAX_MORPH_FRAMES};
use super::guild::SettingsCmd;
use super::render::Action;
use super::store::Ref;
use super::text::{blocked, clean_input, escape};
use crate::engine::limits::{strength_ok, strength_span, DEFAULT_STRENGTH, STRENGTH_RANGE};

/// Largest seed: Discord integer options stop at 2^53 - 1.
pub const SEED_MAX: u64 = (1 << 53) - 1;

/// `quality:` on `/imagine` and `/edit`: the mapper alone, or followed by
/// quality mode's CLIP-guided steps (`bot.refine_steps`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quality {
    #[default]
    Fast,
    Best,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Imagine {
        prompt: String,
        count: usize,
        seed: Option<u64>,
        /// A photo: a face like it, moved toward the prompt.
        image: Option<Photo>,
        quality: Quality,
    },
    Edit {
        instruction: String,
        strength: f64,
        /// A photo to edit instead of the latest image.
        image: Option<Photo>,
        quality: Quality,
    },
    Undo,
    Morph {
        from: Option<Ref>,
        to: Option<Ref>,
        frames: Option<usize>,
    },
    History,
    Settings(SettingsCmd),
    /// "Edit this face" on a message: its first image, if it has one.
    EditThisFace {
        photo: Option<Photo>,
    },
}

/// Every command, as registered (bulk overwrite, so a removed command
/// disappears too).
pub fn definitions(cfg: &BotConfig) -> Vec<CreateCommand> {
    let max_len = cfg.max_prompt_chars.min(6000) as u16;
    let words = &cfg.words;
    let image = |description: &str| {
        CreateCommandOption::new(CommandOptionType::Attachment, "image", description)
    };
    let quality = || {
        CreateCommandOption::new(
            CommandOptionType::String,
            "quality",
            format!(
                "fast (default) or best: {} steps that match the text better (slower)",
                cfg.refine_steps
            ),
        )
        .add_string_choice("fast", "fast")
        .add_string_choice("best", "best")
    };
    let result = |name: &str, description: &str| {
        CreateCommandOption::new(CommandOptionType::String, name, description).max_length(24)
    };
    vec![
        CreateCommand::new("imagine")
            .description(format!("Create {} from a text description", words.plural()))
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    "prompt",
                    format!(
                        "What the {} looks like, e.g. \"{}\"",
                        words.noun(),
                        words.example_prompt()
                    ),
                )
                .required(true)
                .max_length(max_len),
            )
            .add_option(
                CreateCommandOption::new(CommandOptionType::Integer, "count", "Images, 1 to 4")
                    .min_int_value(1)
                    .max_int_value(MAX_IMAGES as u64),
            )
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::Integer,
                    "seed",
                    "Repeat a result: the seed shown under it",
                )
                .min_int_value(0)
                .max_int_value(SEED_MAX),
            )
            .add_option(image(&format!(
                "A photo: makes {} like it, moved toward the prompt",
                words.one()
            )))
            .add_option(quality()),
        CreateCommand::new("edit")
            .description(format!(
                "Change your latest image: {}",
                words.example_edits()
            ))
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    "instruction",
                    "What to change",
                )
                .required(true)
                .max_length(max_len),
            )
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::Number,
                    "strength",
                    format!(
                        "How much, {} (default {DEFAULT_STRENGTH}; negative reverses the edit)",
                        strength_span()
                    ),
                )
                .min_number_value(*STRENGTH_RANGE.start())
                .max_number_value(*STRENGTH_RANGE.end()),
            )
            .add_option(image(&format!(
                "A photo of {} to edit instead of your latest image",
                words.one()
            )))
            .add_option(quality()),
        CreateCommand::new("undo").description("Go back to your previous image"),
        CreateCommand::new("morph")
            .description("Animate from one of your images to another (default: your last two)")
            .add_option(result(
                "from",
                "Result number of the start, e.g. 12, or 12.2 for its image 2",
            ))
            .add_option(result(
                "to",
                "Result number of the end (default: your latest)",
            ))
            .add_option(
                CreateCommandOption::new(CommandOptionType::Integer, "frames", "2 to 32")
                    .min_int_value(2)
                    .max_int_value(MAX_MORPH_FRAMES as u64),
            ),
        CreateCommand::new("history")
            .description("Your recent images in a grid, to pick one again or morph two"),
        super::guild::definition(),
        CreateCommand::new(words.edit_this()).kind(CommandType::Message),
    ]
}

/// `12` or `#12` (image 1) or `12.3` / `12/3` (image 3 of result 12).
pub fn parse_ref(raw: &str) -> Option<Ref> {
    let t = raw.trim().trim_start_matches('#');
    let (id, index) = match t.split_once(['.', '/', ' ']) {
        Some((a, b)) => (a.trim(), b.trim().trim_start_matches("image").trim()),
        None => (t, "1"),
    };
    let id: u64 = id.parse().ok().filter(|&i| i > 0)?;
    let index: usize = index.parse().ok()?;
    (1..=MAX_IMAGES).contains(&index).then_some(Ref {
        id,
        index: index - 1,
    })
}

/// The attachment named by the `image` option, as Discord resolved it.
fn attachment(data: &CommandData) -> Result<Option<Photo>, String> {
    let Some(o) = data.options.iter().find(|o| o.name == "image") else {
        return Ok(None);
    };
    match &o.value {
        CommandDataOptionValue::Attachment(id) => data
            .resolved
            .attachments
            .get(id)
            .map(|a| Some(Photo::from(a)))
            .ok_or_else(|| "The attached photo did not come through; attach it again.".into()),
        _ => Err("`image` must be an attached photo.".into()),
    }
}

/// Check a prompt or an instruction; `what` names it in the reply.
pub fn check_text(raw: &str, what: &str, cfg: &BotConfig) -> Result<String, String> {
    let text = clean_input(raw);
    if text.is_empty() {
        let w = &cfg.words;
        return Err(match what {
            "prompt" => format!(
                "The prompt is empty: describe {}, e.g. `/imagine {}`.",
                w.one(),
                w.example_prompt()
            ),
            _ => format!(
                "The instruction is empty: say what to change, e.g. `/edit {}`.",
                w.example_edit()
            ),
        });
    }
    let n = text.chars().count();
    if n > cfg.max_prompt_chars {
        return Err(format!(
            "The {what} has {n} characters; the limit is {}. CLIP reads only its first 77 tokens \
             (about 300 characters), so shorten it to the essentials.",
            cfg.max_prompt_chars
        ));
    }
    if blocked(&text, &cfg.blocklist).is_some() {
        return Err(format!(
            "This {what} contains a word that is not allowed here; please rephrase it."
        ));
    }
    Ok(text)
}

fn int(v: &CommandDataOptionValue, name: &str) -> Result<i64, String> {
    match v {
        CommandDataOptionValue::Integer(i) => Ok(*i),
        _ => Err(format!("`{name}` must be a whole number.")),
    }
}

/// The command's options checked against the limits; the error is the
/// ephemeral reply to send.
pub fn parse(data: &CommandData, cfg: &BotConfig) -> Result<Command, String> {
    let opt = |name: &str| {
        data.options
            .iter()
            .find(|o| o.name == name)
            .map(|o| &o.value)
    };
    // A text option, checked (a missing one is empty, and refused).
    let text = |name: &str| {
        let raw = match opt(name) {
            Some(CommandDataOptionValue::String(s)) => s.as_str(),
            _ => "",
        };
        check_text(raw, name, cfg)
    };
    let quality = || match opt("quality") {
        None => Ok(Quality::Fast),
        Some(CommandDataOptionValue::String(s)) if s == "fast" => Ok(Quality::Fast),
        Some(CommandDataOptionValue::String(s)) if s == "best" => Ok(Quality::Best),
        Some(_) => Err("`quality` must be `fast` or `best`.".to_string()),
    };
    match data.name.as_str() {
        "imagine" => {
            let prompt = text("prompt")?;
            let count = match opt("count") {
                None => 1,
                Some(v) => int(v, "count")?,
            };
            if !(1..=MAX_IMAGES as i64).contains(&count) {
                return Err(format!(
                    "`count` must be 1 to {MAX_IMAGES} (it was {count})."
                ));
            }
            let seed = match opt("seed") {
                None => None,
                Some(v) => {
                    let s = int(v, "seed")?;
                    if !(0..=SEED_MAX as i64).contains(&s) {
                        return Err(format!("`seed` must be 0 to {SEED_MAX} (it was {s})."));
                    }
                    Some(s as u64)
                }
            };
            let image = attachment(data)?;
            if image.is_some() && (count != 1 || seed.is_some()) {
                return Err(format!(
                    "With a photo, `/imagine` makes one {} from it: leave out `count` and `seed`.",
                    cfg.words.noun()
                ));
            }
            Ok(Command::Imagine {
                prompt,
                count: count as usize,
                seed,
                image,
                quality: quality()?,
            })
        }
        "edit" => {
            let instruction = text("instruction")?;
            let strength = match opt("strength") {
                None => DEFAULT_STRENGTH,
                Some(CommandDataOptionValue::Number(x)) => *x,
                Some(CommandDataOptionValue::Integer(i)) => *i as f64,
                Some(_) => {
                    return Err(format!(
                        "`strength` must be a number from {}.",
                        strength_span()
                    ))
                }
            };
            Ok(Command::Edit {
                instruction,
                strength: check_strength(strength)?,
                image: attachment(data)?,
                quality: quality()?,
            })
        }
        "undo" => Ok(Command::Undo),
        "morph" => {
            let r = |name: &str| match opt(name) {
                None => Ok(None),
                Some(CommandDataOptionValue::String(s)) => {
                    parse_ref(s).map(Some).ok_or_else(|| {
                        format!(
                            "`{name}` must be a result number as shown under an image, e.g. `12`, \
                         or `12.2` for image 2 of result #12 (it was \"{}\").",
                            escape(&clean_input(s))
                        )
                    })
                }
                Some(_) => Err(format!("`{name}` must be a result number, e.g. `12`.")),
            };
            let frames = match opt("frames") {
                None => None,
                Some(v) => {
                    let f = int(v, "frames")?;
                    if !(2..=MAX_MORPH_FRAMES as i64).contains(&f) {
                        return Err(format!(
                            "`frames` must be 2 to {MAX_MORPH_FRAMES} (it was {f})."
                        ));
                    }
                    Some(f as usize)
                }
            };
            Ok(Command::Morph {
                from: r("from")?,
                to: r("to")?,
                frames,
            })
        }
        "history" => Ok(Command::History),
        "settings" => super::guild::parse(&data.options).map(Command::Settings),
        // Any subject's name: a bot restarted with another generator may
        // still get the old registration's command.
        name if data.kind == CommandType::Message && name.starts_with(super::words::EDIT_THIS) => {
            let message = data
                .target_id
                .and_then(|t| data.resolved.messages.get(&MessageId::new(t.get())));
            let photo = message.and_then(|m| {
                m.attachments
                    .iter()
                    .find(|a| {
                        a.content_type
                            .as_deref()
                            .is_some_and(|c| c.starts_with("image/"))
                            || a.width.is_some()
                    })
                    .map(Photo::from)
            });
            Ok(Command::EditThisFace { photo })
        }
        other => Err(format!(
            "Unknown command `/{}`. This bot has `/imagine`, `/edit`, `/undo`, `/morph`, \
             `/history` and `/settings`.",
            escape(other)
        )),
    }
}

pub fn check_strength(s: f64) -> Result<f64, String> {
    if strength_ok(s) {
        Ok(s)
    } else {
        Err(format!(
            "`strength` must be from {} (it was {s}); 1 is a clear change, negative reverses it.",
            strength_span()
        ))
    }
}

/// Modal custom ids of "Edit this face": `c2g:photo:<key>`.
pub const PHOTO_MODAL: &str = "c2g:photo:";

/// What a submitted edit dialog edits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DialogTarget {
    /// A stored image (the dialog of its Edit button).
    Stored(Ref),
    /// The photo kept under this key for "Edit this face".
    Photo(u64),
}

/// A submitted edit dialog: what it edits, its instruction and strength,
/// checked; the error is the ephemeral reply to send.
pub fn parse_modal(
    data: &ModalInteractionData,
    cfg: &BotConfig,
) -> Result<(DialogTarget, String, f64), String> {
    let field = |name: &str| {
        data.components
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
    let photo_key = data
        .custom_id
        .strip_prefix(PHOTO_MODAL)
        .and_then(|k| k.parse::<u64>().ok());
    let target = match (photo_key, Action::parse(&data.custom_id)) {
        (Some(key), _) => DialogTarget::Photo(key),
        (None, Some((Action::EditSubmit, r))) => DialogTarget::Stored(r),
        _ => return Err("This dialog belongs to an older version of the bot.".into()),
    };
    let instruction = check_text(&field("instruction"), "instruction", cfg)?;
    let raw = field("strength");
    let strength = if raw.trim().is_empty() {
        DEFAULT_STRENGTH
    } else {
        raw.trim()
            .parse::<f64>()
            .map_err(|_| {
                format!(
                    "`strength` must be a number from {}, not \"{}\".",
                    strength_span(),
                    escape(&clean_input(&raw))
                )
            })
            .and_then(check_strength)?
    };
    Ok((target, instruction, strength))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_numbers() {
        let r = |id, index| Some(Ref { id, index });
        assert_eq!(parse_ref("12"), r(12, 0));
        assert_eq!(parse_ref(" #12 "), r(12, 0));
        assert_eq!(parse_ref("12.2"), r(12, 1));
        assert_eq!(parse_ref("12/4"), r(12, 3));
        assert_eq!(parse_ref("#12 image 3"), r(12, 2));
        for bad in [
            "",
            "0",
            "-3",
            "12.5",
            "12.0",
            "x",
            "12.a",
            "99999999999999999999999",
        ] {
            assert_eq!(parse_ref(bad), None, "{bad}");
        }
    }
}
