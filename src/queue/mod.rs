//! Front ends and GPU workers apart, over Redis Streams.
//!
//! ```text
//!  bot front end ──XADD──> {prefix}:jobs ──XREADGROUP (group "workers")──> worker
//!   (QueueClient)                                                     (engine, batching)
//!        ^                                                                │
//!        └──XREAD── {prefix}:results:{front end} <──XADD (one Lua script)─┘
//! ```
//!
//! - [`client`]: the front end's [`crate::inference::Inference`]: publishes
//!   jobs, reads its own result stream, answers queue positions.
//! - [`worker`]: `clip2gan worker`: reads jobs through the consumer group,
//!   runs them on a local engine (which batches them as in one process),
//!   takes over jobs of workers that went quiet, dead-letters jobs that
//!   keep failing.
//! - [`wire`]: jobs and results as stream fields.
//! - [`link`]: connections that come back by themselves after Redis does.
//!
//! Delivery: the worker hands results back on the front end's result
//! stream; the front end posts them. Posting from the worker through the
//! interaction webhook would work too (a follow-up needs only the token),
//! but the reply is more than the image: the result is stored, numbered,
//! given buttons and the user's history and quota updated, all of which is
//! the bot's, and a worker that posted would need the bot's store, its
//! rendering and a route to Discord. Workers stay model-only and hold no
//! Discord secrets. The cost: a front end that dies mid-job loses its
//! interactions' results (their tokens die with nobody to post).
//!
//! Guarantees: work is at least once (a job is acknowledged only once its
//! result is published; a worker that dies leaves it pending, and another
//! takes it over with XAUTOCLAIM after `claim_idle_ms`). Posting is at most
//! once: publishing is one Lua script that sets a `done` marker with SET NX,
//! appends the result and acknowledges the job, so a job run twice is
//! published once. A job delivered `max_deliveries` times is moved to
//! `{prefix}:dead` and its user told. A job older than its interaction
//! token is dropped with a log line.

pub mod client;
pub mod link;
pub mod wire;
pub mod worker;

use std::time::Duration;

use serde::Deserialize;

pub use client::QueueClient;
pub use link::Link;

/// How front ends and workers use Redis (`--queue redis://...` or the
/// `[queue]` section). Each side reads only what concerns it.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// `redis://host:port[/db]`; empty: no queue (one process).
    pub url: String,
    /// Prefix of every key, so several bots can share one Redis.
    pub prefix: String,
    /// Jobs waiting in the stream at most; more are refused ("queue full").
    pub capacity: usize,
    /// Jobs one user may have queued or running, across all front ends.
    pub per_user_limit: usize,
    /// A job pending this long on a worker that no longer renews it is
    /// taken over by another worker.
    pub claim_idle_ms: u64,
    /// Deliveries of one job before it is dead-lettered.
    pub max_deliveries: u32,
    /// Longest wait of one blocking read (XREAD/XREADGROUP).
    pub block_ms: u64,
    /// Longest wait for a Redis answer (or a connection) before the user is
    /// told the service is busy.
    pub timeout_ms: u64,
    /// How long a job may wait for its result: an interaction token lasts
    /// 15 minutes, after which nothing can be posted.
    pub job_ttl_s: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            url: String::new(),
            prefix: "c2g".into(),
            capacity: 256,
            per_user_limit: 2,
            claim_idle_ms: 30_000,
            max_deliveries: 3,
            block_ms: 2_000,
            timeout_ms: 2_000,
            job_ttl_s: 14 * 60,
        }
    }
}

/// Why the queue could not be used; each says what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum QueueError {
    #[error("queue: {0}")]
    Config(String),
    #[error(
        "cannot reach Redis at {url}: {why}. Start it (or fix queue.url / --queue); \
         clip2gan keeps retrying"
    )]
    Unreachable { url: String, why: String },
    #[error("Redis answered unexpectedly: {0}")]
    Protocol(String),
}

impl QueueConfig {
    pub fn validate(&self) -> Result<(), QueueError> {
        let bad = |m: &str| Err(QueueError::Config(m.to_string()));
        if !(self.url.starts_with("redis://") || self.url.starts_with("rediss://")) {
            return bad("queue.url (--queue) must start with redis:// or rediss://");
        }
        if self.prefix.is_empty() || self.prefix.contains(char::is_whitespace) {
            return bad("queue.prefix must be a word without spaces, such as c2g");
        }
        if self.capacity == 0 || self.per_user_limit == 0 || self.max_deliveries == 0 {
            return bad("queue.capacity, per_user_limit and max_deliveries must be at least 1");
        }
        if self.claim_idle_ms < 100 || self.block_ms == 0 || self.timeout_ms == 0 {
            return bad(
                "queue.claim_idle_ms must be at least 100, block_ms and timeout_ms at least 1",
            );
        }
        if self.job_ttl_s == 0 || self.job_ttl_s > 15 * 60 {
            return bad("queue.job_ttl_s must be 1 to 900 (an interaction token lasts 15 min)");
        }
        for (name, d) in self.durations() {
            crate::engine::limits::check_wait(name, d).map_err(QueueError::Config)?;
        }
        Ok(())
    }

    /// The waits these settings make, by name (checked by `validate`).
    pub fn durations(&self) -> Vec<(&'static str, Duration)> {
        let ms = Duration::from_millis;
        vec![
            ("queue.claim_idle_ms", ms(self.claim_idle_ms)),
            ("queue.block_ms", ms(self.block_ms)),
            ("queue.timeout_ms", ms(self.timeout_ms)),
            ("queue.job_ttl_s", Duration::from_secs(self.job_ttl_s)),
        ]
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The stream jobs are published on (deploy/k8s's autoscaler reads it).
    pub fn jobs(&self) -> String {
        format!("{}:jobs", self.prefix)
    }

    /// Jobs given up on, for an operator to look at.
    pub fn dead(&self) -> String {
        format!("{}:dead", self.prefix)
    }

    /// One front end's results.
    pub(crate) fn results(&self, front_end: &str) -> String {
        format!("{}:results:{front_end}", self.prefix)
    }

    pub(crate) fn done(&self, job: u64) -> String {
        format!("{}:done:{job}", self.prefix)
    }

    pub(crate) fn cancelled(&self, job: u64) -> String {
        format!("{}:cancel:{job}", self.prefix)
    }

    pub(crate) fn busy(&self, user: u64) -> String {
        format!("{}:busy:{user}", self.prefix)
    }

    pub(crate) fn job_ids(&self) -> String {
        format!("{}:next_job", self.prefix)
    }
}

/// The consumer group of the workers (deploy/k8s's autoscaler reads its
/// pending entries and lag).
pub const GROUP: &str = "workers";

/// Milliseconds since the epoch (job deadlines cross machines).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A random id for a front end or a worker (its stream, its consumer name).
pub(crate) fn random_name(kind: &str) -> String {
    format!("{kind}-{:016x}", rand::random::<u64>())
}
