//! The `[discord]` and `[bot]` sections of `config.toml`, and the token.
//!
//! The token is deliberately not a config key: it comes from the environment
//! (`DISCORD_TOKEN`) or from a file named here, so that `config.toml` can be
//! committed and shown without leaking it.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::BotError;
use crate::engine::limits::check_wait;

/// Most images in one message (`/imagine count`, variations): one row of
/// pick buttons.
pub const MAX_IMAGES: usize = 4;
/// Most frames of a morph (`/morph frames`, `bot.morph_frames`).
pub const MAX_MORPH_FRAMES: usize = 32;
/// Largest daily quota (0 is no limit).
pub const MAX_QUOTA: u32 = 10_000;
/// Longest cooldown (the config's, or one an admin sets).
pub const MAX_COOLDOWN_S: u64 = 3600;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DiscordConfig {
    /// A file whose first line is the bot token; used when `DISCORD_TOKEN`
    /// is not set.
    pub token_file: Option<PathBuf>,
    /// Another API host (`http://127.0.0.1:8080`: tests, a proxy); empty for
    /// Discord itself. With it the client sends to that host with serenity's
    /// rate limiter off (it would ignore the host), and the bot's own retries
    /// alone handle 429 and 5xx answers.
    pub api_base: String,
    /// Register the slash commands in these guilds only (they appear at
    /// once); empty: register them globally.
    pub guilds: Vec<u64>,
    /// Answer only in these guilds (and not in DMs); empty: anywhere.
    pub allowed_guilds: Vec<u64>,
    /// Hosts photos are downloaded from (uploads to `/edit`, `/imagine`,
    /// "Edit this face"): `host`, `host:port` or `http://host[:port]`.
    /// Without a scheme only https on port 443 is allowed; `http://` allows
    /// plain http to that host (tests, a local mirror). Redirects are
    /// followed only to hosts on this list.
    pub attachment_hosts: Vec<String>,
    /// The gateway shards this process runs, first and last (inclusive),
    /// e.g. `[0, 1]` of 4 on one front end and `[2, 3]` on another; absent:
    /// all of them (`shard_count`).
    pub shards: Option<[u32; 2]>,
    /// Shards of the whole bot (Discord requires sharding from 2,500
    /// servers; a server's shard is `(guild_id >> 22) % shard_count`). 0:
    /// one shard when `shards` is absent, else Discord's recommendation.
    pub shard_count: u32,
}

impl DiscordConfig {
    pub fn validate(&self) -> Result<(), BotError> {
        if let Some([first, last]) = self.shards {
            if first > last || (self.shard_count > 0 && last >= self.shard_count) {
                return Err(BotError::Config(format!(
                    "discord.shards = [{first}, {last}] must be first <= last < \
                     discord.shard_count ({})",
                    self.shard_count
                )));
            }
        }
        Ok(())
    }
}

/// Discord's attachment hosts (the CDN and its media proxy).
pub const DISCORD_ATTACHMENT_HOSTS: [&str; 2] = ["cdn.discordapp.com", "media.discordapp.net"];

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            token_file: None,
            api_base: String::new(),
            guilds: Vec::new(),
            allowed_guilds: Vec::new(),
            attachment_hosts: DISCORD_ATTACHMENT_HOSTS.map(String::from).to_vec(),
            shards: None,
            shard_count: 0,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BotConfig {
    /// The results database (latents and undo history), created if missing.
    pub store_path: PathBuf,
    /// Steps of undo kept per user.
    pub history_depth: usize,
    /// Latents kept in all (about 47 KB each in memory and on disk); the
    /// oldest results are forgotten first.
    pub max_latents: usize,
    /// Least time between two jobs of one user.
    pub cooldown_ms: u64,
    /// Longest prompt or edit instruction accepted (CLIP reads about 77
    /// tokens, some 300 characters, anyway).
    pub max_prompt_chars: usize,
    /// Prompts and instructions containing any of these words or phrases
    /// (case-insensitive) are refused.
    pub blocklist: Vec<String>,
    /// Images of the Variations button.
    pub variations_count: usize,
    /// Quality mode: CLIP-guided steps of `quality: best` and the Refine
    /// button (1 to 32; each about a second on a CPU).
    pub refine_steps: usize,
    /// How far variations move from their source (0 = not at all, 1 = far).
    pub variation_amount: f64,
    /// How often a queued job's position is refreshed in its message.
    pub progress_interval_ms: u64,
    /// Attempts at delivering a result when Discord answers 5xx or 429.
    pub http_attempts: u32,
    /// First pause between attempts; doubled each time (at most 10 s).
    pub retry_base_ms: u64,
    /// On SIGINT/SIGTERM, how long running jobs may take to be delivered.
    pub shutdown_grace_s: u64,
    /// Jobs that make new images, per user and day (per server; 0: no
    /// limit). Server admins may change it with `/settings quota`.
    pub daily_quota: u32,
    /// Channels the bot answers in (empty: all); the default for servers
    /// whose admins have not set their own with `/settings channels`.
    pub channels: Vec<u64>,
    /// A role members need to use the bot (absent: none); the default for
    /// servers that have not set one with `/settings role`.
    pub required_role: Option<u64>,
    /// Largest photo accepted for download, in bytes.
    pub max_attachment_bytes: u64,
    /// Longest a photo download may take, connection included.
    pub attachment_timeout_ms: u64,
    /// Largest photo accepted, in pixels (width x height), checked from
    /// the file's header before it is decoded.
    pub max_image_pixels: u64,
    /// Frames of a morph animation (`/morph`).
    pub morph_frames: usize,
    /// What the generator makes, for the texts (from `generator.subject`,
    /// set by the command that starts the bot; not a `[bot]` key).
    #[serde(skip)]
    pub words: super::words::Words,
}

impl Default for BotConfig {
    fn default() -> Self {
        Self {
            store_path: PathBuf::from("bot-store.redb"),
            history_depth: 20,
            max_latents: 5000,
            cooldown_ms: 2000,
            max_prompt_chars: 500,
            blocklist: Vec::new(),
            variations_count: 4,
            refine_steps: 8,
            variation_amount: 0.5,
            progress_interval_ms: 1500,
            http_attempts: 5,
            retry_base_ms: 500,
            shutdown_grace_s: 30,
            daily_quota: 0,
            channels: Vec::new(),
            required_role: None,
            max_attachment_bytes: 10 << 20,
            attachment_timeout_ms: 15_000,
            max_image_pixels: 40_000_000,
            morph_frames: 16,
            words: super::words::Words::default(),
        }
    }
}

impl BotConfig {
    pub fn validate(&self) -> Result<(), BotError> {
        let bad = |m: &str| Err(BotError::Config(m.to_string()));
        if self.history_depth == 0 || self.max_latents == 0 {
            return bad("bot.history_depth and bot.max_latents must be at least 1");
        }
        if !(1..=crate::engine::limits::MAX_REFINE_STEPS).contains(&self.refine_steps) {
            return bad("bot.refine_steps must be 1 to 32");
        }
        if !(1..=MAX_IMAGES).contains(&self.variations_count) {
            return bad("bot.variations_count must be 1 to 4");
        }
        if !(0.0..=1.0).contains(&self.variation_amount) {
            return bad("bot.variation_amount must be in [0, 1]");
        }
        if self.max_prompt_chars == 0 || self.max_prompt_chars > 1000 {
            // Twice this (escaped) must fit Discord's 2000-character messages.
            return bad("bot.max_prompt_chars must be 1 to 1000");
        }
        if self.http_attempts == 0 {
            return bad("bot.http_attempts must be at least 1");
        }
        if self.max_attachment_bytes == 0 || self.attachment_timeout_ms == 0 {
            return bad(
                "bot.max_attachment_bytes and bot.attachment_timeout_ms must be at least 1",
            );
        }
        if self.max_image_pixels == 0 {
            return bad("bot.max_image_pixels must be at least 1");
        }
        if !(2..=MAX_MORPH_FRAMES).contains(&self.morph_frames) {
            return bad("bot.morph_frames must be 2 to 32");
        }
        if self.daily_quota > MAX_QUOTA {
            return bad("bot.daily_quota must be 0 (no limit) to 10000");
        }
        if self.cooldown_ms > MAX_COOLDOWN_S * 1000 {
            return bad("bot.cooldown_ms must be at most 3600000 (an hour)");
        }
        for (name, d) in self.durations() {
            check_wait(name, d).map_err(BotError::Config)?;
        }
        Ok(())
    }

    /// The waits these settings make, by name (checked by `validate`).
    pub fn durations(&self) -> Vec<(&'static str, Duration)> {
        let ms = Duration::from_millis;
        vec![
            ("bot.cooldown_ms", ms(self.cooldown_ms)),
            ("bot.progress_interval_ms", ms(self.progress_interval_ms)),
            ("bot.retry_base_ms", ms(self.retry_base_ms)),
            (
                "bot.shutdown_grace_s",
                Duration::from_secs(self.shutdown_grace_s),
            ),
            ("bot.attachment_timeout_ms", ms(self.attachment_timeout_ms)),
        ]
    }
}

/// The bot token. Its `Debug` never shows it, so it cannot leak into logs.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Self {
        Token(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<hidden>)")
    }
}

/// `DISCORD_TOKEN` if set, else the first line of `discord.token_file`.
pub fn resolve_token(cfg: &DiscordConfig) -> Result<Token, BotError> {
    let from_env = std::env::var("DISCORD_TOKEN").ok();
    let (raw, source) =
        match (from_env, &cfg.token_file) {
            (Some(t), _) if !t.trim().is_empty() => (t, "DISCORD_TOKEN".to_string()),
            (_, Some(path)) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    BotError::Token(format!(
                    "cannot read discord.token_file {}: {e}; put the bot token on its first line",
                    path.display()
                ))
                })?;
                let first = text.lines().next().unwrap_or("").to_string();
                (first, format!("discord.token_file {}", path.display()))
            }
            _ => return Err(BotError::Token(
                "no bot token: set DISCORD_TOKEN, or name a file holding it in discord.token_file \
                 (config.toml). The token is on the Discord developer portal: your application \
                 -> Bot -> Reset Token"
                    .into(),
            )),
        };
    let token = raw.trim();
    let token = token.strip_prefix("Bot ").unwrap_or(token);
    if token.is_empty() || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BotError::Token(format!(
            "the token from {source} is empty or has spaces in it; paste it exactly as the \
             developer portal shows it"
        )));
    }
    Ok(Token(token.to_string()))
}
