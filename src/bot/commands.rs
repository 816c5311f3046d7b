//! The slash commands: their registration payloads, and their options
//! turned into checked, typed requests (or a reply saying what to fix).

use serenity::all::{
    CommandData, CommandDataOptionValue, CommandOptionType, CreateCommand, CreateCommandOption,
};

use super::config::BotConfig;
use super::render::{blocked, clean_input, MAX_IMAGES};

/// Largest seed: Discord integer options stop at 2^53 - 1.
pub const SEED_MAX: u64 = (1 << 53) - 1;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Imagine {
        prompt: String,
        count: usize,
        seed: Option<u64>,
    },
    Edit {
        instruction: String,
        strength: f64,
    },
    Undo,
}

/// `/imagine`, `/edit` and `/undo`, as registered (bulk overwrite, so a
/// removed command disappears too).
pub fn definitions(cfg: &BotConfig) -> Vec<CreateCommand> {
    let max_len = cfg.max_prompt_chars.min(6000) as u16;
    vec![
        CreateCommand::new("imagine")
            .description("Create faces from a text description")
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    "prompt",
                    "What the face looks like, e.g. \"a man with a beard\"",
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
            ),
        CreateCommand::new("edit")
            .description(
                "Change your latest image: \"add smile\", \"make older\", \"remove beard\"",
            )
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
                    "How much, -3 to 3 (default 1; negative reverses the edit)",
                )
                .min_number_value(-3.0)
                .max_number_value(3.0),
            ),
        CreateCommand::new("undo").description("Go back to your previous image"),
    ]
}

/// Check a prompt or an instruction; `what` names it in the reply.
pub fn check_text(raw: &str, what: &str, cfg: &BotConfig) -> Result<String, String> {
    let text = clean_input(raw);
    if text.is_empty() {
        return Err(match what {
            "prompt" => {
                "The prompt is empty: describe a face, e.g. `/imagine a man with a beard`.".into()
            }
            _ => "The instruction is empty: say what to change, e.g. `/edit add smile`.".into(),
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
    match data.name.as_str() {
        "imagine" => {
            let prompt = match opt("prompt") {
                Some(CommandDataOptionValue::String(s)) => s.as_str(),
                _ => "",
            };
            let prompt = check_text(prompt, "prompt", cfg)?;
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
            Ok(Command::Imagine {
                prompt,
                count: count as usize,
                seed,
            })
        }
        "edit" => {
            let instruction = match opt("instruction") {
                Some(CommandDataOptionValue::String(s)) => s.as_str(),
                _ => "",
            };
            let instruction = check_text(instruction, "instruction", cfg)?;
            let strength = match opt("strength") {
                None => 1.0,
                Some(CommandDataOptionValue::Number(x)) => *x,
                Some(CommandDataOptionValue::Integer(i)) => *i as f64,
                Some(_) => return Err("`strength` must be a number from -3 to 3.".into()),
            };
            Ok(Command::Edit {
                instruction,
                strength: check_strength(strength)?,
            })
        }
        "undo" => Ok(Command::Undo),
        other => Err(format!(
            "Unknown command `/{}`. This bot has `/imagine`, `/edit` and `/undo`.",
            super::render::escape(other)
        )),
    }
}

pub fn check_strength(s: f64) -> Result<f64, String> {
    if s.is_finite() && crate::pipeline::STRENGTH_RANGE.contains(&s) {
        Ok(s)
    } else {
        Err(format!(
            "`strength` must be from -3 to 3 (it was {s}); 1 is a clear change, negative reverses it."
        ))
    }
}
