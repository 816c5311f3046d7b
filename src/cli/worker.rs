//! `clip2gan worker`: the GPU side of `clip2gan bot --queue`. Loads the
//! models into the engine (as `clip2gan bot` does in one process) and runs
//! it on jobs read from Redis until SIGINT or SIGTERM; the queue layer
//! (`clip2gan::queue::worker`) gets only the `[queue]` section and the engine.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use clip2gan::config::Config;
use clip2gan::engine::Engine;
use clip2gan::health::{self, Health};
use clip2gan::queue::Link;
use tracing::info;

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The Redis the front ends publish on (`redis://host:port`; overrides
    /// queue.url).
    #[arg(long, value_name = "URL")]
    pub queue: Option<String>,
}

pub fn run(mut cfg: Config, args: WorkerArgs) -> anyhow::Result<()> {
    clip2gan::bot::init_logging();
    if let Some(url) = args.queue {
        cfg.queue.url = url;
    }
    if cfg.queue.url.is_empty() {
        anyhow::bail!(
            "clip2gan worker needs a queue: pass --queue redis://host:port or set queue.url"
        );
    }
    // Settings first: a typo should not cost a model load.
    cfg.queue.validate()?;
    let output_size = cfg.engine.output_size;
    if let Some(res) = cfg.generator.known_resolution() {
        clip2gan::image_io::check_size(output_size, res)
            .map_err(|e| anyhow::anyhow!("engine.output_size: {e}"))?;
    }
    super::budget::apply(&mut cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = rt.block_on(async move {
        let grace = Duration::from_secs(cfg.bot.shutdown_grace_s);
        let signal = super::bot::Signal::install(grace);
        // What /readyz waits for: the models, and Redis answering.
        let health = Health::new();
        health.require(health::MODELS, "loading");
        health.live(health::REDIS, Arc::new(Link::new(&cfg.queue)?));
        if let Some(addr) = clip2gan::metrics::install(&cfg.metrics, &health)? {
            info!(%addr, "serving /metrics, /healthz and /readyz");
        }
        let engine_cfg = cfg.engine.clone();
        let queue = cfg.queue.clone();
        info!("loading the models");
        let loading = tokio::task::spawn_blocking(move || {
            Engine::start(engine_cfg, move || {
                super::bot::open_backend(&cfg, output_size)
            })
        });
        let engine = tokio::select! {
            e = loading => e.context("the model loading task failed")??,
            // Nothing taken from the queue yet; the load is left to the
            // process's exit.
            _ = signal.wait() => {
                info!("stopped before the models had loaded");
                return anyhow::Ok(());
            }
        };
        info!("models loaded");
        health.met(health::MODELS);
        let engine = Arc::new(engine);
        clip2gan::queue::worker::run(queue, engine.clone(), signal.wait(), grace).await?;
        // The jobs in hand have had the grace period; a batch the engine
        // is still running belongs to jobs that stay pending for another
        // worker, so it gets a moment, not another grace period.
        clip2gan::shutdown::stage("stopping the engine");
        let stopping = tokio::task::spawn_blocking(move || engine.shutdown(true));
        if tokio::time::timeout(ENGINE_STOP, stopping).await.is_err() {
            tracing::warn!(
                cut_short = "stopping the engine",
                "the engine was still running a batch; left unfinished (its jobs stay pending \
                 for another worker)"
            );
        }
        anyhow::Ok(())
    });
    super::bot::stop_runtime(rt);
    served
}

const ENGINE_STOP: Duration = Duration::from_millis(500);
