//! `clip2gan bot`: the wiring of the served bot. In one process the models
//! are loaded into a growing backend (the mapper on disk, or one built on
//! first use) on the engine's worker thread, the engine is started, and the
//! bot runs on it until SIGINT or SIGTERM. With `--queue redis://...` no
//! model is loaded: jobs go to `clip2gan worker` processes over Redis. The
//! bot itself (`clip2gan::bot`) gets only its `[bot]` and `[discord]`
//! sections and something that makes images.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clip2gan::bot::{self, attach::AllowList, BotError, Token};
use clip2gan::clip::Clip;
use clip2gan::config::Config;
use clip2gan::engine::{Engine, GrowingBackend};
use clip2gan::health::{self, Health};
use clip2gan::queue::{Link, QueueClient};
use clip2gan::train::warmup::Growth;
use tracing::info;

#[derive(Args, Debug, Default)]
pub struct BotArgs {
    /// Publish jobs on this Redis (`redis://host:port`) for `clip2gan
    /// worker` processes instead of running the models here (overrides
    /// queue.url).
    #[arg(long, value_name = "URL")]
    pub queue: Option<String>,
}

pub fn run(mut cfg: Config, args: BotArgs) -> anyhow::Result<()> {
    bot::init_logging();
    if let Some(url) = args.queue {
        cfg.queue.url = url;
    }
    // The token first: a missing one should not cost a model load.
    let token = bot::config::resolve_token(&cfg.discord)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = rt.block_on(serve(cfg, token));
    stop_runtime(rt);
    served?;
    Ok(())
}

/// Stop the runtime without its drop, which waits for every blocking task
/// without limit; one may be a DNS lookup of a gateway that does not
/// resolve, or a model load a signal interrupted. The async tasks are
/// dropped (closing what they hold); blocking ones get
/// [`RUNTIME_STOP`] and are then left to the process's exit.
pub(crate) fn stop_runtime(rt: tokio::runtime::Runtime) {
    clip2gan::shutdown::stage("stopping the async runtime");
    rt.shutdown_timeout(RUNTIME_STOP);
}

const RUNTIME_STOP: Duration = Duration::from_millis(500);

/// Load the models into the engine, then run until SIGINT or SIGTERM.
async fn serve(cfg: Config, token: Token) -> Result<(), BotError> {
    // What /readyz waits for, named before any of it starts: the models
    // (here, unless workers run them), the gateway, and Redis when used.
    let health = Health::new();
    if cfg.queue.url.is_empty() {
        health.require(health::MODELS, "loading");
    } else {
        // The settings' own check first: it says what a queue URL must be.
        cfg.queue
            .validate()
            .map_err(|e| BotError::Config(e.to_string()))?;
        let link = Link::new(&cfg.queue).map_err(|e| BotError::Config(e.to_string()))?;
        health.live(health::REDIS, Arc::new(link));
    }
    health.require(health::GATEWAY, "not connected yet");
    let settings = bot::Settings {
        discord: cfg.discord.clone(),
        bot: bot::BotConfig {
            words: bot::words::Words::new(&cfg.generator.subject),
            ..cfg.bot.clone()
        },
        health: health.clone(),
    };
    // Settings first: a typo should not cost a model load.
    settings.bot.validate()?;
    let signal = Signal::install(Duration::from_secs(settings.bot.shutdown_grace_s));
    if let Some(addr) = clip2gan::metrics::install(&cfg.metrics, &health)
        .map_err(|e| BotError::Config(e.to_string()))?
    {
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    AllowList::parse(&settings.discord.attachment_hosts).map_err(BotError::Config)?;
    let output_size = cfg.engine.output_size;
    // Against the resolution the configuration knows; the loaded generator's
    // is checked again when the engine's backend is built.
    if let Some(res) = cfg.generator.known_resolution() {
        clip2gan::image_io::check_size(output_size, res)
            .map_err(|e| BotError::Config(format!("engine.output_size: {e}")))?;
    }
    if !cfg.queue.url.is_empty() {
        return serve_front_end(cfg, settings, token, signal).await;
    }
    let mut cfg = cfg;
    super::budget::apply(&mut cfg).map_err(|e| BotError::Config(e.to_string()))?;
    let engine_cfg = cfg.engine.clone();
    info!("loading the models");
    let loading = tokio::task::spawn_blocking(move || {
        Engine::start(engine_cfg, move || open_backend(&cfg, output_size))
    });
    let engine = tokio::select! {
        e = loading => e
            .map_err(|e| BotError::Engine(e.to_string()))?
            .map_err(|e| BotError::Engine(e.to_string()))?,
        // Nothing is open yet; the load is left to the process's exit.
        _ = signal.wait() => {
            info!("stopped before the models had loaded");
            return Ok(());
        }
    };
    info!("models loaded");
    health.met(health::MODELS);
    bot::run(settings, token, Arc::new(engine), signal.wait()).await
}

/// A front end: jobs go to the workers over Redis. Redis need not be up
/// yet: users are told "busy, try again" until it is.
async fn serve_front_end(
    cfg: Config,
    settings: bot::Settings,
    token: Token,
    signal: Signal,
) -> Result<(), BotError> {
    let queue =
        QueueClient::start(cfg.queue.clone()).map_err(|e| BotError::Config(e.to_string()))?;
    // Bounded by queue.timeout_ms; a signal meanwhile is acted on next.
    if let Err(e) = queue.ping().await {
        tracing::error!("{e}");
    }
    // Shared by every front end: any of them serves any user.
    let store = bot::shared::RedisResults::new(
        &cfg.queue,
        settings.bot.history_depth,
        settings.bot.max_latents,
    )?;
    bot::run_on(
        settings,
        token,
        Arc::new(queue),
        Arc::new(store),
        signal.wait(),
        Arc::new(bot::SystemClock),
    )
    .await
}

/// The backend `clip2gan bot` serves: the configured models, and the mapper
/// on disk or (first use) one to build. A closed-form mapper keeps
/// improving as its bank grows; a trained one is served as it is.
pub(crate) fn open_backend(
    cfg: &Config,
    output_size: usize,
) -> clip2gan::error::Result<GrowingBackend> {
    let dev = clip2gan::device::select(&cfg.device)?;
    let setup = cfg.pipeline_setup();
    let path = setup.mapper_path();
    let plan = cfg.first_use()?;
    if plan.is_none() {
        // Cheap first: a missing mapper should not cost a CLIP download.
        clip2gan::mapper::read_meta(&path)?;
    }
    let clip = Clip::load(&setup.clip_files()?, &dev)?;
    let generator = setup.open_generator(&dev, true)?;
    let mapper = if path.exists() {
        let (m, warnings) = clip2gan::pipeline::load_mapper(&setup, &clip, generator.as_ref())?;
        for w in warnings {
            tracing::warn!("{w}");
        }
        Some(m)
    } else {
        info!(
            file = %path.display(),
            "no mapper yet: building one from generated faces in the background"
        );
        None
    };
    let grows = mapper
        .as_ref()
        .is_none_or(|m| m.meta.config.kind == clip2gan::mapper::MapperKind::Linear);
    let growth = match plan.filter(|_| grows) {
        Some(plan) => Some(Growth::new(
            plan,
            &clip,
            generator.as_ref(),
            mapper.is_some(),
        )?),
        None => None,
    };
    GrowingBackend::new(
        clip,
        generator,
        mapper,
        growth,
        setup.settings(),
        output_size,
    )
}

/// SIGINT (Ctrl-C) or SIGTERM (docker stop, systemd), watched from the
/// moment it is installed, on a task of its own: a signal is seen at once
/// whatever start-up is doing (loading models, waiting for Redis or
/// Discord). It starts the shutdown watchdog (the process ends the grace
/// period plus [`clip2gan::shutdown::WATCHDOG_MARGIN`] later, whatever is
/// still running) and completes every [`Signal::wait`].
#[derive(Clone)]
pub(crate) struct Signal(tokio::sync::watch::Receiver<bool>);

impl Signal {
    /// Install the handlers now (in the runtime). From here on SIGINT and
    /// SIGTERM no longer end the process at once: they start the shutdown.
    pub(crate) fn install(grace: Duration) -> Signal {
        let (tx, rx) = tokio::sync::watch::channel(false);
        #[cfg(unix)]
        let streams = {
            use tokio::signal::unix::{signal, SignalKind};
            (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            )
        };
        tokio::spawn(async move {
            #[cfg(unix)]
            match streams {
                (Ok(mut int), Ok(mut term)) => {
                    tokio::select! {
                        _ = int.recv() => {},
                        _ = term.recv() => {},
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
            info!("signal received");
            clip2gan::shutdown::watchdog(grace + clip2gan::shutdown::WATCHDOG_MARGIN);
            let _ = tx.send(true);
        });
        Signal(rx)
    }

    /// Completes once a signal came (at once if one already did).
    pub(crate) fn wait(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error: the watching task is gone (the runtime is stopping).
            let _ = rx.wait_for(|came| *came).await;
        }
    }
}
