//! Prometheus metrics: every name the crate records, their buckets, and
//! the recorder (served over HTTP by [`crate::endpoint`]).
//!
//! The layers record through the `metrics` facade (a no-op until a recorder
//! is installed, so tests and the CLI pay nothing); only the command layer
//! installs the recorder, once per process, from the `[metrics]` section.
//! It is off by default: a bot and a worker on one host would otherwise
//! fight over the port, and an operator who scrapes turns it on. It listens
//! on 127.0.0.1 unless told otherwise: the numbers are for the operator's
//! scraper, not the internet. No metric carries a user id as a label.

use std::net::SocketAddr;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde::Deserialize;

use crate::health::Health;

/// Jobs waiting in the queue (gauge; the engine's, or a worker's view of
/// the shared stream).
pub const QUEUE_DEPTH: &str = "clip2gan_queue_depth";
/// Submit to the start of the job's batch (histogram, seconds).
pub const QUEUE_WAIT: &str = "clip2gan_queue_wait_seconds";
/// Images per forward pass (histogram).
pub const BATCH_IMAGES: &str = "clip2gan_batch_images";
/// Time per stage (histogram, seconds, label `stage`: clip, mapper,
/// generator, clip_image, resize, encode). Compute stages are recorded once
/// per batch, encoding once per job.
pub const STAGE: &str = "clip2gan_stage_seconds";
/// Jobs the engine finished (counter, labels `kind` and `outcome`).
pub const ENGINE_JOBS: &str = "clip2gan_engine_jobs_total";
/// Submit to encoded output inside the engine (histogram, seconds).
pub const ENGINE_JOB: &str = "clip2gan_engine_job_seconds";
/// The bot's jobs (counter, labels `command`: imagine, edit, invert,
/// variations, interpolate, render; `outcome`: delivered, failed, refused,
/// undelivered).
pub const JOBS: &str = "clip2gan_jobs_total";
/// Interaction received to its result posted (histogram, seconds).
pub const END_TO_END: &str = "clip2gan_end_to_end_seconds";
/// Interaction received to its "thinking…" acknowledged by Discord
/// (histogram, seconds; Discord's limit is 3 s).
pub const DEFER: &str = "clip2gan_defer_seconds";
/// Queue jobs taken over from a worker that went quiet (counter).
pub const REDELIVERIES: &str = "clip2gan_redeliveries_total";
/// Queue jobs given up after too many deliveries (counter).
pub const DEAD_LETTERS: &str = "clip2gan_dead_letters_total";

/// Seconds buckets: from a fast refusal to a long queue.
const SECONDS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Batch sizes: powers of two up to the largest batch anyone configures.
const IMAGES: [f64; 7] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];

/// The `[metrics]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve `/metrics` for Prometheus, with `/healthz` and `/readyz`.
    pub enabled: bool,
    /// Address to listen on; another interface than 127.0.0.1 exposes the
    /// numbers to whoever can reach it.
    pub listen: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: false,
            listen: "127.0.0.1:9185".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics.listen must be an address and port such as 127.0.0.1:9185, not \"{0}\"")]
    Address(String),
    #[error("cannot serve metrics on {addr}: {why} (is another process using the port? set metrics.listen to another one)")]
    Install { addr: SocketAddr, why: String },
}

/// Start recording, and serve `/metrics` with `health`'s `/healthz` and
/// `/readyz` ([`crate::endpoint`]), if enabled; returns the address it
/// listens on. Call once per process, inside the tokio runtime.
pub fn install(cfg: &MetricsConfig, health: &Health) -> Result<Option<SocketAddr>, MetricsError> {
    if !cfg.enabled {
        return Ok(None);
    }
    let addr: SocketAddr = cfg
        .listen
        .parse()
        .map_err(|_| MetricsError::Address(cfg.listen.clone()))?;
    let fail = |why: String| MetricsError::Install { addr, why };
    // The port first: taken, it is the error to report (and nothing has
    // been installed that a retry on another port would trip over).
    let listener = crate::endpoint::bind(addr).map_err(|e| fail(e.to_string()))?;
    let bound = listener.local_addr().map_err(|e| fail(e.to_string()))?;
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_IMAGES.into()), &IMAGES))
        .map_err(|e| fail(e.to_string()))?
        .install_recorder()
        .map_err(|e| fail(e.to_string()))?;
    // What the exporter's own listener would do: histograms are drained
    // into their buckets periodically, so memory stays bounded between
    // scrapes.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    crate::endpoint::spawn(listener, Some(handle), health.clone());
    Ok(Some(bound))
}

/// How often the recorder's histograms are drained (the exporter's default).
const UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

/// Milliseconds (as [`crate::engine::JobTimes`] keeps them) to a histogram
/// in seconds.
pub fn record_ms(name: &'static str, ms: f64) {
    metrics::histogram!(name).record(ms / 1000.0);
}
