//! Server settings that server admins control with `/settings`: the
//! channels the bot answers in, the cooldown, a per-member daily quota,
//! extra blocked words and a role members need.
//!
//! A server stores only what its admins changed ([`GuildSettings`]); the
//! rest follows `config.toml`, so a host who changes a default changes it
//! for every server that kept it. [`Effective`] is the merge the handlers
//! use. The host's own blocklist always applies: server words are added to
//! it, never replace it.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serenity::all::{
    ChannelType, CommandDataOption, CommandDataOptionValue, CommandOptionType, CreateCommand,
    CreateCommandOption, InteractionContext, Permissions,
};

use super::config::{BotConfig, MAX_COOLDOWN_S, MAX_QUOTA};
use super::text::{clean_input, escape};

/// Channels in a server's list, words in its blocklist, and their length.
pub const MAX_CHANNELS: usize = 25;
pub const MAX_WORDS: usize = 100;
pub const MAX_WORD_CHARS: usize = 100;
/// How long a quota window lasts, from the first job in it.
pub const QUOTA_WINDOW_S: u64 = 24 * 3600;

/// A server's required role: the config's, none, or one of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoleSetting {
    #[default]
    Default,
    None,
    Role(u64),
}

/// What a server's admins changed; `None` follows `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GuildSettings {
    /// Empty list: every channel.
    pub channels: Option<Vec<u64>>,
    pub cooldown_s: Option<u64>,
    pub daily_quota: Option<u32>,
    pub role: RoleSetting,
    /// Added to the config's blocklist (lower case).
    pub words: Vec<String>,
}

/// The settings in force in one place (a server, or a DM).
#[derive(Debug, Clone, PartialEq)]
pub struct Effective {
    pub channels: Vec<u64>,
    pub cooldown: Duration,
    /// 0: no limit.
    pub daily_quota: u32,
    pub role: Option<u64>,
    /// The config's words and the server's.
    pub blocklist: Vec<String>,
}

impl Effective {
    pub fn new(cfg: &BotConfig, g: Option<&GuildSettings>) -> Self {
        let d = GuildSettings::default();
        let g = g.unwrap_or(&d);
        let mut blocklist = cfg.blocklist.clone();
        blocklist.extend(g.words.iter().cloned());
        Effective {
            channels: g.channels.clone().unwrap_or_else(|| cfg.channels.clone()),
            cooldown: g
                .cooldown_s
                .map_or(Duration::from_millis(cfg.cooldown_ms), Duration::from_secs),
            daily_quota: g.daily_quota.unwrap_or(cfg.daily_quota),
            role: match g.role {
                RoleSetting::Default => cfg.required_role,
                RoleSetting::None => None,
                RoleSetting::Role(r) => Some(r),
            },
            blocklist,
        }
    }

    /// Whether the bot answers in `channel` (or in the thread's `parent`).
    pub fn channel_allowed(&self, channel: u64, parent: Option<u64>) -> bool {
        self.channels.is_empty()
            || self.channels.contains(&channel)
            || parent.is_some_and(|p| self.channels.contains(&p))
    }
}

/// Whether a member may change the settings: Manage Server (or
/// Administrator, which implies it). Checked on every `/settings` call,
/// since servers can override who sees the command.
pub fn may_manage(perms: Option<Permissions>) -> bool {
    perms.is_some_and(|p| p.manage_guild() || p.administrator())
}

#[derive(Debug, Clone, PartialEq)]
pub enum SettingsCmd {
    Show,
    ChannelAdd(u64),
    ChannelRemove(u64),
    ChannelsAll,
    WordAdd(String),
    WordRemove(String),
    WordsClear,
    Cooldown(u64),
    Quota(u32),
    Role(Option<u64>),
    Reset,
}

fn sub(name: &str, description: &str) -> CreateCommandOption {
    CreateCommandOption::new(CommandOptionType::SubCommand, name, description)
}

fn group(name: &str, description: &str) -> CreateCommandOption {
    CreateCommandOption::new(CommandOptionType::SubCommandGroup, name, description)
}

/// `/settings`: only members with Manage Server see it by default, and
/// only in servers.
pub fn definition() -> CreateCommand {
    let channel = || {
        CreateCommandOption::new(CommandOptionType::Channel, "channel", "A text channel")
            .channel_types(vec![ChannelType::Text, ChannelType::News])
            .required(true)
    };
    let word = || {
        CreateCommandOption::new(CommandOptionType::String, "word", "A word or phrase")
            .required(true)
            .max_length(MAX_WORD_CHARS as u16)
    };
    CreateCommand::new("settings")
        .description("This server's settings for the bot (needs Manage Server)")
        .default_member_permissions(Permissions::MANAGE_GUILD)
        .contexts(vec![InteractionContext::Guild])
        .add_option(sub("show", "Show the settings in force here"))
        .add_option(
            group("channels", "Channels the bot answers in")
                .add_sub_option(sub("add", "Answer in this channel").add_sub_option(channel()))
                .add_sub_option(
                    sub("remove", "Stop answering in this channel").add_sub_option(channel()),
                )
                .add_sub_option(sub("all", "Answer in every channel")),
        )
        .add_option(
            group("blocklist", "Words refused in prompts and edits here")
                .add_sub_option(sub("add", "Refuse prompts with this word").add_sub_option(word()))
                .add_sub_option(sub("remove", "Allow this word again").add_sub_option(word()))
                .add_sub_option(sub("clear", "Remove all of this server's words")),
        )
        .add_option(
            sub("cooldown", "Least time between two jobs of a member").add_sub_option(
                CreateCommandOption::new(CommandOptionType::Integer, "seconds", "0 to 3600")
                    .required(true)
                    .min_int_value(0)
                    .max_int_value(MAX_COOLDOWN_S),
            ),
        )
        .add_option(
            sub("quota", "New images per member per day").add_sub_option(
                CreateCommandOption::new(
                    CommandOptionType::Integer,
                    "per_day",
                    "0 (no limit) to 10000",
                )
                .required(true)
                .min_int_value(0)
                .max_int_value(MAX_QUOTA as u64),
            ),
        )
        .add_option(
            sub("role", "A role members need to use the bot").add_sub_option(
                CreateCommandOption::new(
                    CommandOptionType::Role,
                    "role",
                    "Leave out to need no role",
                ),
            ),
        )
        .add_option(sub("reset", "Back to the bot's defaults"))
}

/// The subcommand and its options, checked; the error is the reply.
pub fn parse(options: &[CommandDataOption]) -> Result<SettingsCmd, String> {
    let usage = "Use `/settings show`, or one of `/settings channels`, `blocklist`, `cooldown`, \
                 `quota`, `role`, `reset`.";
    let Some(first) = options.first() else {
        return Err(usage.into());
    };
    let (path, opts): (String, &[CommandDataOption]) = match &first.value {
        CommandDataOptionValue::SubCommand(o) => (first.name.clone(), o),
        CommandDataOptionValue::SubCommandGroup(subs) => match subs.first() {
            Some(CommandDataOption {
                name,
                value: CommandDataOptionValue::SubCommand(o),
                ..
            }) => (format!("{} {name}", first.name), o),
            _ => return Err(usage.into()),
        },
        _ => return Err(usage.into()),
    };
    let opt = |name: &str| opts.iter().find(|o| o.name == name).map(|o| &o.value);
    let channel = || match opt("channel") {
        Some(CommandDataOptionValue::Channel(c)) => Ok(c.get()),
        _ => Err("Name a channel, e.g. `/settings channels add #images`.".to_string()),
    };
    let word = || match opt("word") {
        Some(CommandDataOptionValue::String(s)) => {
            let w = clean_input(s).to_lowercase();
            let n = w.chars().count();
            if n == 0 || n > MAX_WORD_CHARS {
                Err(format!(
                    "A blocked word must have 1 to {MAX_WORD_CHARS} characters (this one has {n})."
                ))
            } else {
                Ok(w)
            }
        }
        _ => Err("Name a word, e.g. `/settings blocklist add word:gore`.".to_string()),
    };
    let int = |name: &str| match opt(name) {
        Some(CommandDataOptionValue::Integer(i)) => Some(*i),
        _ => None,
    };
    // An integer option from 0 to `max`; else the message, told what came.
    let within = |name: &str, max: u64, msg: fn(String) -> String| match int(name) {
        Some(v) if (0..=max as i64).contains(&v) => Ok(v as u64),
        other => Err(msg(shown(other))),
    };
    Ok(match path.as_str() {
        "show" => SettingsCmd::Show,
        "reset" => SettingsCmd::Reset,
        "channels add" => SettingsCmd::ChannelAdd(channel()?),
        "channels remove" => SettingsCmd::ChannelRemove(channel()?),
        "channels all" => SettingsCmd::ChannelsAll,
        "blocklist add" => SettingsCmd::WordAdd(word()?),
        "blocklist remove" => SettingsCmd::WordRemove(word()?),
        "blocklist clear" => SettingsCmd::WordsClear,
        "cooldown" => SettingsCmd::Cooldown(within("seconds", MAX_COOLDOWN_S, |got| {
            format!("The cooldown must be 0 to {MAX_COOLDOWN_S} seconds{got}.")
        })?),
        "quota" => SettingsCmd::Quota(within("per_day", MAX_QUOTA.into(), |got| {
            format!("The daily quota must be 0 (no limit) to {MAX_QUOTA}{got}.")
        })? as u32),
        "role" => match opt("role") {
            None => SettingsCmd::Role(None),
            Some(CommandDataOptionValue::Role(r)) => SettingsCmd::Role(Some(r.get())),
            Some(_) => return Err("Name a role, e.g. `/settings role @Artists`.".into()),
        },
        _ => return Err(usage.into()),
    })
}

fn shown(v: Option<i64>) -> String {
    v.map_or(String::new(), |v| format!(" (it was {v})"))
}

/// Apply a change to a server's settings; returns the new settings and a
/// sentence saying what changed. The error is the reply (nothing changed).
pub fn apply(
    cmd: &SettingsCmd,
    cur: &GuildSettings,
    cfg: &BotConfig,
) -> Result<(GuildSettings, String), String> {
    let mut g = cur.clone();
    let eff = Effective::new(cfg, Some(cur));
    let said = match cmd {
        SettingsCmd::Show => return Err("nothing to change".into()),
        SettingsCmd::Reset => {
            g = GuildSettings::default();
            "All settings are back to the bot's defaults.".to_string()
        }
        SettingsCmd::ChannelAdd(c) => {
            let mut list = eff.channels.clone();
            if list.contains(c) {
                return Err(format!("I already answer in <#{c}>."));
            }
            if list.len() >= MAX_CHANNELS {
                return Err(format!(
                    "The list already has {MAX_CHANNELS} channels; remove one first."
                ));
            }
            list.push(*c);
            let text = format!("I now answer only in {}.", channels_text(&list));
            g.channels = Some(list);
            text
        }
        SettingsCmd::ChannelRemove(c) => {
            let mut list = eff.channels.clone();
            if !list.contains(c) {
                return Err(format!(
                    "<#{c}> is not on the list ({}).",
                    channels_text(&eff.channels)
                ));
            }
            list.retain(|x| x != c);
            let text = if list.is_empty() {
                "That was the last channel on the list, so I answer in every channel again."
                    .to_string()
            } else {
                format!("I now answer only in {}.", channels_text(&list))
            };
            g.channels = Some(list);
            text
        }
        SettingsCmd::ChannelsAll => {
            g.channels = Some(Vec::new());
            "I answer in every channel.".into()
        }
        SettingsCmd::WordAdd(w) => {
            if g.words.contains(w) {
                return Err(format!("`{}` is already blocked here.", escape(w)));
            }
            if g.words.len() >= MAX_WORDS {
                return Err(format!(
                    "This server already blocks {MAX_WORDS} words; remove some first."
                ));
            }
            g.words.push(w.clone());
            format!(
                "Prompts and edits containing `{}` are refused now.",
                escape(w)
            )
        }
        SettingsCmd::WordRemove(w) => {
            if !g.words.contains(w) {
                return Err(format!(
                    "`{}` is not on this server's blocklist (the bot's own list cannot be \
                     changed here).",
                    escape(w)
                ));
            }
            g.words.retain(|x| x != w);
            format!("`{}` is allowed again.", escape(w))
        }
        SettingsCmd::WordsClear => {
            g.words.clear();
            "This server's blocked words are cleared (the bot's own list still applies)."
                .to_string()
        }
        SettingsCmd::Cooldown(s) => {
            g.cooldown_s = Some(*s);
            format!("Members now wait {s} s between jobs.")
        }
        SettingsCmd::Quota(q) => {
            g.daily_quota = Some(*q);
            if *q == 0 {
                "There is no daily limit now.".to_string()
            } else {
                format!("Each member may now make {q} new images a day.")
            }
        }
        SettingsCmd::Role(r) => {
            g.role = match r {
                Some(r) => RoleSetting::Role(*r),
                None => RoleSetting::None,
            };
            match r {
                Some(r) => format!("Members now need the <@&{r}> role to use the bot."),
                None => "No role is needed to use the bot now.".to_string(),
            }
        }
    };
    Ok((g, said))
}

fn channels_text(list: &[u64]) -> String {
    if list.is_empty() {
        return "every channel".into();
    }
    list.iter()
        .map(|c| format!("<#{c}>"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `/settings show`: what is in force, and where it comes from.
pub fn show(g: Option<&GuildSettings>, cfg: &BotConfig) -> String {
    let d = GuildSettings::default();
    let g = g.unwrap_or(&d);
    let eff = Effective::new(cfg, Some(g));
    let from = |own: bool| if own { "" } else { " (default)" };
    let quota = if eff.daily_quota == 0 {
        "no limit".to_string()
    } else {
        format!("{} new images per member per day", eff.daily_quota)
    };
    let role = match eff.role {
        Some(r) => format!("<@&{r}>"),
        None => "none".into(),
    };
    let words = if g.words.is_empty() {
        "none".to_string()
    } else {
        g.words
            .iter()
            .map(|w| format!("`{}`", escape(w)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = format!(
        "**Bot settings for this server**\n\
         Channels: {}{}\n\
         Cooldown: {} s between jobs{}\n\
         Daily quota: {quota}{}\n\
         Required role: {role}{}\n\
         Blocked words: {words}",
        channels_text(&eff.channels),
        from(g.channels.is_some()),
        eff.cooldown.as_secs_f64(),
        from(g.cooldown_s.is_some()),
        from(g.daily_quota.is_some()),
        from(g.role != RoleSetting::Default),
    );
    if !cfg.blocklist.is_empty() {
        out.push_str(&format!(
            " (plus {} set by the bot's host)",
            cfg.blocklist.len()
        ));
    }
    out.push_str("\nChange them with `/settings …`; `/settings reset` restores the defaults.");
    super::text::truncate(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_and_changes() {
        let cfg = BotConfig {
            channels: vec![1],
            daily_quota: 5,
            blocklist: vec!["host word".into()],
            ..Default::default()
        };
        let e = Effective::new(&cfg, None);
        assert_eq!((e.channels.clone(), e.daily_quota), (vec![1], 5));
        assert!(e.channel_allowed(1, None) && !e.channel_allowed(2, None));
        assert!(
            e.channel_allowed(3, Some(1)),
            "a thread of an allowed channel"
        );

        let (g, _) = apply(&SettingsCmd::ChannelAdd(2), &GuildSettings::default(), &cfg).unwrap();
        assert_eq!(g.channels, Some(vec![1, 2]));
        let (g, said) = apply(&SettingsCmd::ChannelRemove(1), &g, &cfg).unwrap();
        let (g, said2) = apply(&SettingsCmd::ChannelRemove(2), &g, &cfg).unwrap();
        assert!(said.contains("<#2>") && said2.contains("every channel"));
        assert!(Effective::new(&cfg, Some(&g)).channel_allowed(9, None));
        assert!(apply(&SettingsCmd::ChannelRemove(2), &g, &cfg).is_err());

        let (g, _) = apply(&SettingsCmd::WordAdd("gore".into()), &g, &cfg).unwrap();
        assert_eq!(
            Effective::new(&cfg, Some(&g)).blocklist,
            ["host word", "gore"]
        );
        assert!(apply(&SettingsCmd::WordRemove("host word".into()), &g, &cfg).is_err());
        let (g, _) = apply(&SettingsCmd::Role(None), &g, &cfg).unwrap();
        let cfg_role = BotConfig {
            required_role: Some(7),
            ..cfg.clone()
        };
        assert_eq!(Effective::new(&cfg_role, Some(&g)).role, None);
        assert_eq!(Effective::new(&cfg_role, None).role, Some(7));
        let (g, _) = apply(&SettingsCmd::Reset, &g, &cfg).unwrap();
        assert_eq!(g, GuildSettings::default());
        assert!(show(Some(&g), &cfg).contains("(plus 1 set by the bot's host)"));
        assert!(!may_manage(None) && !may_manage(Some(Permissions::SEND_MESSAGES)));
        assert!(may_manage(Some(Permissions::MANAGE_GUILD)));
        assert!(may_manage(Some(Permissions::ADMINISTRATOR)));
    }
}
