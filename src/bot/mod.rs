//! The Discord bot (`clip2gan bot`): slash commands `/imagine`, `/edit`,
//! `/undo`, `/morph`, `/history` and `/settings`, the message command
//! "Edit this face", and buttons on each result, served through the
//! inference engine. It knows the engine's plain types only (prompts,
//! latents as numbers, PNG bytes), never tensors.
//!
//! - [`config`]: the `[discord]` and `[bot]` settings, the limits they and
//!   the commands share, and the token.
//! - [`commands`]: registration payloads; options parsed and checked.
//! - [`handlers`]: what each interaction does, one module per command
//!   family (imagine, edit and photos, morph and history, settings, buttons
//!   and dialogs) behind a dispatcher, and the job flow they share (quota
//!   charges, deferring, queue feedback, delivery).
//! - [`respond`]: answering one interaction, with retries.
//! - [`render`]: message text, buttons, the attached image.
//! - [`text`]: user text cleaned, matched against the blocklist, escaped
//!   in echoes, and cut to Discord's limit.
//! - [`results`]: what the handlers need of a results store
//!   ([`results::ResultStore`]), and [`results::Local`], the one-process
//!   store.
//! - [`shared`]: the results store in Redis, shared by front ends.
//! - [`store`]: results, per-user undo history, server settings and quotas,
//!   in memory and on disk (redb).
//! - [`guild`]: the settings server admins control, merged with the config.
//! - [`attach`]: downloading and checking the photos users send.
//!
//! [`run`] drives the serenity client until a shutdown signal. The bot gets
//! only its own sections ([`Settings`]) and something that makes images
//! ([`crate::inference::Inference`]: the engine in this process, or a queue
//! to workers elsewhere): loading the models, starting the engine and the
//! signals are the `clip2gan bot` command's (`src/cli/bot.rs` in the binary).

pub mod attach;
pub mod commands;
pub mod config;
pub mod guild;
mod handlers;
pub mod render;
pub mod respond;
pub mod results;
pub mod shared;
pub mod store;
pub mod text;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serenity::all::{
    async_trait, ClientBuilder, Command as DiscordCommand, Context, EventHandler, GatewayIntents,
    GuildId, HttpBuilder, Interaction, Ready, ResumedEvent,
};
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::inference::Inference;

use attach::{AllowList, Fetcher, Photo};
pub use config::{BotConfig, DiscordConfig, Token};
use respond::Retry;
use results::{Local, ResultStore};
use store::Store;

/// Why the bot could not start or run; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    #[error("{0}")]
    Token(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("results store: {0}")]
    Store(String),
    #[error("Discord: {0}")]
    Discord(String),
    #[error("the image engine could not start: {0}")]
    Engine(String),
}

/// The time daily quotas are counted in: unix seconds. The bot uses the
/// system clock; tests pass their own, so a day can pass in an instant.
pub trait Clock: Send + Sync + 'static {
    fn now_unix(&self) -> u64;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_unix(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A photo picked with "Edit this face", waiting for its edit dialog.
struct PendingPhoto {
    photo: Photo,
    user: u64,
    since: Instant,
}

/// Shared by every handler.
pub(crate) struct Bot {
    engine: Arc<dyn Inference>,
    store: Arc<dyn ResultStore>,
    cfg: BotConfig,
    discord: DiscordConfig,
    retry: Retry,
    fetcher: Fetcher,
    clock: Arc<dyn Clock>,
    pending: DashMap<u64, PendingPhoto>,
    /// Set at shutdown: new interactions are refused politely.
    closing: AtomicBool,
    /// Every answer in progress, so that shutdown can wait for them.
    inflight: TaskTracker,
    registered: AtomicBool,
}

struct Handler(Arc<Bot>);

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, ctx: Context, ready: Ready) {
        info!(bot = %ready.user.name, "connected to the Discord gateway");
        // READY comes again after each re-identify; commands need
        // registering once per run.
        if self.0.registered.swap(true, Ordering::SeqCst) {
            return;
        }
        let defs = commands::definitions(&self.0.cfg);
        if self.0.discord.guilds.is_empty() {
            match DiscordCommand::set_global_commands(&ctx.http, defs).await {
                Ok(c) => info!(commands = c.len(), "registered the commands globally"),
                Err(e) => error!(error = %e, "registering the commands failed"),
            }
        } else {
            for g in &self.0.discord.guilds {
                match GuildId::new(*g).set_commands(&ctx.http, defs.clone()).await {
                    Ok(c) => info!(guild = g, commands = c.len(), "registered the commands"),
                    Err(e) => error!(guild = g, error = %e, "registering the commands failed"),
                }
            }
        }
    }

    async fn resume(&self, _ctx: Context, _: ResumedEvent) {
        info!("gateway session resumed");
    }

    async fn interaction_create(&self, ctx: Context, interaction: Interaction) {
        self.0.clone().handle(ctx.http.clone(), interaction).await;
    }
}

/// Everything `run` needs besides the engine and the token.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub discord: DiscordConfig,
    pub bot: BotConfig,
}

/// Run the bot until `shutdown` completes, then stop taking interactions,
/// answer queued jobs (the engine is shut down: they get "shutting down"),
/// let running ones be delivered (up to `bot.shutdown_grace_s`), and close
/// the store and the gateway.
pub async fn run(
    settings: Settings,
    token: Token,
    engine: Arc<dyn Inference>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), BotError> {
    run_with_clock(settings, token, engine, shutdown, Arc::new(SystemClock)).await
}

/// [`run`] with another clock for the daily quotas.
pub async fn run_with_clock(
    settings: Settings,
    token: Token,
    engine: Arc<dyn Inference>,
    shutdown: impl Future<Output = ()> + Send,
    clock: Arc<dyn Clock>,
) -> Result<(), BotError> {
    settings.bot.validate()?;
    let cfg = &settings.bot;
    let (path, depth, max) = (cfg.store_path.clone(), cfg.history_depth, cfg.max_latents);
    let opened = tokio::task::spawn_blocking(move || Store::open(&path, depth, max))
        .await
        .map_err(|e| BotError::Store(e.to_string()))??;
    for w in &opened.warnings {
        warn!("{w}");
    }
    info!(path = %cfg.store_path.display(), "results store open");
    let store = Arc::new(opened.store);
    let local: Arc<dyn ResultStore> = Arc::new(Local::new(store.clone()));
    let outcome = run_on(settings, token, engine, local, shutdown, clock).await;
    // Every store write is already committed (fsynced); the file closes when
    // the last handler lets go of it. serenity's shard tasks drop the event
    // handler (and with it the store) a moment after the gateway task ends:
    // wait for that, so the file is closed when `run` returns and a restart
    // in the same process can open it again.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Arc::strong_count(&store) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if Arc::strong_count(&store) > 1 {
        warn!("the results store is still in use; it closes when the last handler ends");
    }
    drop(store);
    info!("stopped");
    outcome
}

/// [`run_with_clock`] on a results store of the caller's (shared by front
/// ends, say); the caller closes it.
pub async fn run_on(
    settings: Settings,
    token: Token,
    engine: Arc<dyn Inference>,
    store: Arc<dyn ResultStore>,
    shutdown: impl Future<Output = ()> + Send,
    clock: Arc<dyn Clock>,
) -> Result<(), BotError> {
    let Settings { discord, bot: cfg } = settings;
    cfg.validate()?;
    discord.validate()?;
    let fetcher = Fetcher::new(
        AllowList::parse(&discord.attachment_hosts).map_err(BotError::Config)?,
        attach::Limits {
            max_bytes: cfg.max_attachment_bytes,
            max_pixels: cfg.max_image_pixels,
            timeout: Duration::from_millis(cfg.attachment_timeout_ms),
        },
    )
    .map_err(BotError::Config)?;
    match store.count().await {
        Ok(n) => info!(results = n, "results store ready"),
        // A shared store may come back later; the handlers say so meanwhile.
        Err(e) => warn!(error = %e, "the results store cannot be read yet"),
    }
    let http = if discord.api_base.is_empty() {
        HttpBuilder::new(token.expose()).build()
    } else {
        // serenity's rate limiter would send to Discord itself, ignoring
        // the proxy; our own retries handle 429 and 5xx instead.
        info!(api_base = %discord.api_base, "using another Discord API host");
        HttpBuilder::new(token.expose())
            .proxy(discord.api_base.trim_end_matches('/'))
            .ratelimiter_disabled(true)
            .build()
    };
    let bot = Arc::new(Bot {
        engine: engine.clone(),
        store,
        retry: Retry {
            attempts: cfg.http_attempts,
            base: Duration::from_millis(cfg.retry_base_ms),
        },
        cfg,
        discord,
        fetcher,
        clock,
        pending: DashMap::new(),
        closing: AtomicBool::new(false),
        inflight: TaskTracker::new(),
        registered: AtomicBool::new(false),
    });
    // Interactions need no privileged intents (nor any other).
    let mut client = ClientBuilder::new_with_http(http, GatewayIntents::empty())
        .event_handler(Handler(bot.clone()))
        .await
        .map_err(|e| BotError::Discord(format!("cannot create the client: {e}")))?;
    let shards = client.shard_manager.clone();
    let (range, count) = (bot.discord.shards, bot.discord.shard_count);
    let mut gateway = tokio::spawn(async move { connect(&mut client, range, count).await });

    let ended_by_itself = tokio::select! {
        r = &mut gateway => Some(r),
        _ = shutdown => None,
    };
    info!("shutting down: refusing new interactions, answering queued jobs");
    bot.closing.store(true, Ordering::SeqCst);
    engine.clone().close().await;
    let grace = Duration::from_secs(bot.cfg.shutdown_grace_s);
    bot.inflight.close();
    if tokio::time::timeout(grace, bot.inflight.wait())
        .await
        .is_err()
    {
        warn!(
            pending = bot.inflight.len(),
            "answers still in progress after the grace period were dropped"
        );
    }
    shards.shutdown_all().await;
    let outcome = match ended_by_itself {
        Some(Ok(Ok(()))) | None => Ok(()),
        Some(Ok(Err(e))) => Err(BotError::Discord(format!(
            "the gateway connection ended: {e}. If it says the token is invalid, reset it on the \
             developer portal and set DISCORD_TOKEN again"
        ))),
        Some(Err(e)) => Err(BotError::Discord(format!("the gateway task failed: {e}"))),
    };
    if !gateway.is_finished() {
        let _ = gateway.await;
    }
    drop(bot);
    outcome
}

/// Connect the configured shards (one, by default) and run until they end.
async fn connect(
    client: &mut serenity::Client,
    range: Option<[u32; 2]>,
    count: u32,
) -> serenity::Result<()> {
    let Some([first, last]) = range else {
        return match count {
            0 => client.start().await,
            n => client.start_shards(n).await,
        };
    };
    let total = match count {
        0 => {
            let n = client.http.get_bot_gateway().await?.shards;
            info!(shards = n, "using Discord's recommended shard count");
            n
        }
        n => n,
    };
    info!(first, last, total, "running a range of the gateway shards");
    // serenity 0.12 reads the range's end as the last shard to start
    // (inclusive), whatever `Range` suggests.
    client.start_shard_range(first..last, total).await
}

/// Logs to stderr, filtered by `RUST_LOG` (default: info for clip2gan,
/// warnings for the libraries).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,clip2gan=info"));
    // Colours only on a terminal; log collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .try_init();
}
