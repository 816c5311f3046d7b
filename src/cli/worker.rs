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
    clip2gan::image_io::check_size(output_size, 1024)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async move {
        if let Some(addr) = clip2gan::metrics::install(&cfg.metrics)? {
            info!(%addr, "serving Prometheus metrics at /metrics");
        }
        let engine_cfg = cfg.engine.clone();
        let queue = cfg.queue.clone();
        let grace = Duration::from_secs(cfg.bot.shutdown_grace_s);
        info!("loading the models");
        let engine = tokio::task::spawn_blocking(move || {
            Engine::start(engine_cfg, move || {
                super::bot::open_backend(&cfg, output_size)
            })
        })
        .await
        .context("the model loading task failed")??;
        info!("models loaded");
        let engine = Arc::new(engine);
        clip2gan::queue::worker::run(queue, engine.clone(), super::bot::signal(), grace).await?;
        let _ = tokio::task::spawn_blocking(move || engine.shutdown(true)).await;
        anyhow::Ok(())
    })
}
