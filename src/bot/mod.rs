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
//! - [`words`]: the noun for what the generator makes (`generator.subject`)
//!   and the texts and examples built on it.
//! - [`results`]: what the handlers need of a results store
//!   ([`results::ResultStore`]), and [`results::Local`], the one-process
//!   store.
//! - [`shared`]: the results store in Redis, shared by front ends.
//! - [`store`]: results, per-user undo history, server settings and quotas,
//!   in memory and on disk (redb); `store/open` opens it (an unreadable
//!   file set aside), `store/save` writes each change (a full disk said).
//! - [`guild`]: the settings server admins control, merged with the config.
//! - [`attach`]: downloading and checking the photos users send.
//! - `ready`: the gateway's part of `/readyz` (every shard connected).
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
mod ready;
pub mod render;
pub mod respond;
pub mod results;
pub mod shared;
pub mod store;
pub mod text;
pub mod words;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
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

/// serenity's event handler. It holds the bot weakly: serenity's tasks
/// keep the handler after `run_on` returns when the gateway had to be
/// dropped (still connecting at shutdown), and they must not keep the bot,
/// and with it the results store, open.
struct Handler(Weak<Bot>);

#[async_trait]
impl EventHandler for Handler {
    async fn ready(&self, ctx: Context, ready: Ready) {
        info!(bot = %ready.user.name, "connected to the Discord gateway");
        let Some(bot) = self.0.upgrade() else { return };
        // READY comes again after each re-identify; commands need
        // registering once per run.
        if bot.registered.swap(true, Ordering::SeqCst) {
            return;
        }
        let defs = commands::definitions(&bot.cfg);
        if bot.discord.guilds.is_empty() {
            match DiscordCommand::set_global_commands(&ctx.http, defs).await {
                Ok(c) => info!(commands = c.len(), "registered the commands globally"),
                Err(e) => error!(error = %e, "registering the commands failed"),
            }
        } else {
            for g in &bot.discord.guilds {
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
        if let Some(bot) = self.0.upgrade() {
            bot.handle(ctx.http.clone(), interaction).await;
        }
    }
}

/// Everything `run` needs besides the engine and the token.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub discord: DiscordConfig,
    pub bot: BotConfig,
    /// Where the bot reports its gateway connection for `/readyz`
    /// ([`crate::health::GATEWAY`]; a live check once the client exists,
    /// taken back at shutdown). The default is a set nobody reads.
    pub health: crate::health::Health,
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
    for n in &opened.notes {
        info!("{n}");
    }
    info!(path = %cfg.store_path.display(), "results store open");
    let store = Arc::new(opened.store);
    let local: Arc<dyn ResultStore> = Arc::new(Local::new(store.clone()));
    let outcome = run_on(settings, token, engine, local, shutdown, clock).await;
    // Every store write is already committed (fsynced); the file closes when
    // the last holder lets go of it: answers still finishing (their tasks
    // end a moment after `run_on`, or were cut short at the grace period and
    // are still winding down). Wait briefly, so that the file is closed when
    // `run` returns and a restart in the same process can open it again, but
    // no longer: shutdown is bounded.
    crate::shutdown::stage("closing the results store");
    let deadline = Instant::now() + STORE_RELEASE;
    while Arc::strong_count(&store) > 1 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if Arc::strong_count(&store) > 1 {
        warn!("the results store is still in use by answers cut short; it closes when they end");
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
    let Settings {
        discord,
        bot: cfg,
        health,
    } = settings;
    cfg.validate()?;
    discord.validate()?;
    health.require(crate::health::GATEWAY, "not connected yet");
    let fetcher = Fetcher::new(
        AllowList::parse(&discord.attachment_hosts).map_err(BotError::Config)?,
        attach::Limits {
            max_bytes: cfg.max_attachment_bytes,
            max_pixels: cfg.max_image_pixels,
            timeout: Duration::from_millis(cfg.attachment_timeout_ms),
        },
    )
    .map_err(BotError::Config)?;
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
    // Start-up asks the store (Redis, for front ends) and Discord (the
    // gateway's address), either of which may not answer: a signal
    // meanwhile stops it.
    let mut shutdown = std::pin::pin!(shutdown);
    let starting = async {
        match bot.store.count().await {
            Ok(n) => info!(results = n, "results store ready"),
            // A shared store may come back later; the handlers say so meanwhile.
            Err(e) => warn!(error = %e, "the results store cannot be read yet"),
        }
        // Interactions need no privileged intents (nor any other).
        ClientBuilder::new_with_http(http, GatewayIntents::empty())
            .event_handler(Handler(Arc::downgrade(&bot)))
            .await
            .map_err(|e| BotError::Discord(format!("cannot create the client: {e}")))
    };
    let client = tokio::select! {
        c = starting => Some(c?),
        _ = &mut shutdown => None,
    };
    let mut gateway = client.map(|mut client| {
        let shards = client.shard_manager.clone();
        let (range, count) = (bot.discord.shards, bot.discord.shard_count);
        health.live(
            crate::health::GATEWAY,
            Arc::new(ready::Gateway {
                shards: shards.clone(),
                expected: ready::local_shards(range, count),
            }),
        );
        let task = tokio::spawn(async move { connect(&mut client, range, count).await });
        (task, shards)
    });
    // `None`: shut down by the signal (or before the gateway started).
    let ended_by_itself = match gateway.as_mut() {
        Some((task, _)) => tokio::select! {
            r = task => Some(r),
            _ = &mut shutdown => None,
        },
        None => None,
    };

    // Every step from here is bounded by the grace period, so that the bot
    // stops in time whatever Redis, the engine or Discord are doing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(bot.cfg.shutdown_grace_s);
    info!("shutting down: refusing new interactions, answering queued jobs");
    bot.closing.store(true, Ordering::SeqCst);
    // Load balancers and orchestrators stop sending work here.
    health.require(crate::health::GATEWAY, "shutting down");
    crate::shutdown::stage("telling queued jobs the bot is shutting down");
    if tokio::time::timeout_at(deadline, engine.clone().close())
        .await
        .is_err()
    {
        warn!(
            "telling queued jobs the bot is shutting down took the whole grace period; cut short"
        );
    }
    crate::shutdown::stage("waiting for the answers in progress");
    bot.inflight.close();
    if tokio::time::timeout_at(deadline, bot.inflight.wait())
        .await
        .is_err()
    {
        warn!(
            pending = bot.inflight.len(),
            "answers still in progress after the grace period were dropped"
        );
    }
    let outcome = match gateway {
        Some((task, shards)) => close_gateway(task, &shards, ended_by_itself, deadline).await,
        None => Ok(()),
    };
    drop(bot);
    outcome
}

/// The least time the gateway gets to close cleanly, even when the answers
/// in progress took the whole grace period.
const GATEWAY_CLOSE_MIN: Duration = Duration::from_millis(500);

/// How long `run` waits, after the gateway, for the last answers to let go
/// of the results store.
const STORE_RELEASE: Duration = Duration::from_millis(500);

type GatewayTask = tokio::task::JoinHandle<serenity::Result<()>>;

/// Close the gateway connection within what is left of `deadline` (at
/// least [`GATEWAY_CLOSE_MIN`]); what has not closed by then is dropped,
/// with a line saying what was cut short. `ended`: the gateway task's
/// result if it ended by itself (then no signal came, and its error is the
/// outcome).
///
/// serenity ends its client only once every shard it runs has closed, and
/// never while it is still trying to start one: with Discord unreachable it
/// retries every 5 s for ever, and `shutdown_all` returns at once, as it
/// knows of no shard yet. Waiting for the client then would never end.
async fn close_gateway(
    mut task: GatewayTask,
    shards: &serenity::gateway::ShardManager,
    ended: Option<Result<serenity::Result<()>, tokio::task::JoinError>>,
    deadline: tokio::time::Instant,
) -> Result<(), BotError> {
    crate::shutdown::stage("closing the gateway");
    let until = deadline.max(tokio::time::Instant::now() + GATEWAY_CLOSE_MIN);
    let Some(ended) = ended else {
        let mut stages = Vec::new();
        let closed = tokio::time::timeout_at(until, async {
            stages = shards
                .runners
                .lock()
                .await
                .iter()
                .map(|(id, r)| format!("shard {id} {}", r.stage))
                .collect();
            shards.shutdown_all().await;
            if stages.is_empty() {
                return false;
            }
            let _ = (&mut task).await;
            true
        })
        .await;
        match closed {
            Ok(true) => {}
            Ok(false) => {
                task.abort();
                warn!(
                    cut_short = "connecting to the gateway",
                    "no gateway connection had been made yet (is Discord reachable?); stopped \
                     trying"
                );
            }
            Err(_) => {
                task.abort();
                warn!(
                    cut_short = "closing the gateway",
                    shards = %stages.join(", "),
                    "the gateway did not close in time; its connection was dropped"
                );
            }
        }
        return Ok(());
    };
    if tokio::time::timeout_at(until, shards.shutdown_all())
        .await
        .is_err()
    {
        warn!(
            cut_short = "closing the gateway",
            "the shards did not close in time"
        );
    }
    match ended {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BotError::Discord(format!(
            "the gateway connection ended: {e}. If it says the token is invalid, reset it on the \
             developer portal and set DISCORD_TOKEN again"
        ))),
        Err(e) => Err(BotError::Discord(format!("the gateway task failed: {e}"))),
    }
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
