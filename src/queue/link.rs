//! A connection to Redis that is made when first needed and comes back by
//! itself: a front end that starts while Redis is down keeps answering
//! users ("busy, try again") and connects once Redis is up, without a
//! restart. Commands time out after `timeout_ms`, so a Redis that stops
//! answering costs a user seconds, not the interaction.
//!
//! Blocking reads (XREAD/XREADGROUP with BLOCK) hold their connection until
//! they return, so each reader gets a [`Link`] of its own: on a shared one
//! every other command would queue behind them. A link is also `/readyz`'s
//! Redis check ([`crate::health::REDIS`]): PING, within `timeout_ms`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::Mutex;
use tracing::warn;

use super::{QueueConfig, QueueError};

pub struct Link {
    client: redis::Client,
    url: String,
    config: ConnectionManagerConfig,
    conn: Mutex<Option<ConnectionManager>>,
}

impl Link {
    /// A link for ordinary commands.
    pub fn new(cfg: &QueueConfig) -> Result<Link, QueueError> {
        Self::with_timeout(cfg, cfg.timeout())
    }

    /// A link for blocking reads of up to `block_ms`.
    pub fn blocking(cfg: &QueueConfig) -> Result<Link, QueueError> {
        Self::with_timeout(cfg, cfg.timeout() + Duration::from_millis(cfg.block_ms))
    }

    fn with_timeout(cfg: &QueueConfig, response: Duration) -> Result<Link, QueueError> {
        let client = redis::Client::open(cfg.url.as_str()).map_err(|e| {
            QueueError::Config(format!(
                "queue.url \"{}\" is not a Redis URL ({e}); write redis://host:port",
                redacted(&cfg.url)
            ))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(cfg.timeout())
            .set_response_timeout(response)
            // Few quick retries inside one command; the caller's own loop
            // (or the user's next try) does the rest.
            .set_number_of_retries(2)
            .set_max_delay(500);
        Ok(Link {
            client,
            url: redacted(&cfg.url),
            config,
            conn: Mutex::new(None),
        })
    }

    /// The connection, made now if there is none yet.
    pub async fn get(&self) -> Result<ConnectionManager, QueueError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let made = ConnectionManager::new_with_config(self.client.clone(), self.config.clone())
            .await
            .map_err(|e| self.unreachable(e))?;
        *slot = Some(made.clone());
        Ok(made)
    }

    /// Run a command; a failure that is the connection's is reported as
    /// Redis being unreachable (the manager reconnects behind the scenes).
    ///
    /// The first command after Redis restarted finds the old connection
    /// dropped; the manager reconnects when told so, so that one is tried
    /// once more on the new connection.
    pub async fn run<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, QueueError> {
        let mut c = self.get().await?;
        match cmd.query_async(&mut c).await {
            Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                cmd.query_async(&mut c).await.map_err(|e| self.failed(e))
            }
            r => r.map_err(|e| self.failed(e)),
        }
    }

    /// Run a Lua script (tried twice, as [`Link::run`]).
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, QueueError> {
        let mut c = self.get().await?;
        match inv.invoke_async(&mut c).await {
            Err(e) if e.is_connection_dropped() || e.is_io_error() => {
                inv.invoke_async(&mut c).await.map_err(|e| self.failed(e))
            }
            r => r.map_err(|e| self.failed(e)),
        }
    }

    pub(crate) fn failed(&self, e: redis::RedisError) -> QueueError {
        if e.is_io_error()
            || e.is_timeout()
            || e.is_connection_dropped()
            || e.is_connection_refusal()
        {
            self.unreachable(e)
        } else {
            QueueError::Protocol(e.to_string())
        }
    }

    fn unreachable(&self, e: redis::RedisError) -> QueueError {
        QueueError::Unreachable {
            url: self.url.clone(),
            why: e.to_string(),
        }
    }
}

#[async_trait::async_trait]
impl crate::health::Probe for Link {
    async fn check(&self) -> Result<(), String> {
        self.run::<String>(&redis::cmd("PING"))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// The URL without its password, for messages and logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            format!("{}://<credentials>@{}", &url[..s], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// Log an unreachable Redis at most once per `every` per caller.
pub(crate) struct Quiet {
    last: std::sync::Mutex<Option<std::time::Instant>>,
    every: Duration,
}

impl Quiet {
    pub fn new(every: Duration) -> Self {
        Quiet {
            last: std::sync::Mutex::new(None),
            every,
        }
    }

    pub fn warn(&self, what: &str, e: &QueueError) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| t.elapsed() >= self.every) {
            *last = Some(std::time::Instant::now());
            warn!(error = %e, "{what}");
        }
    }
}
