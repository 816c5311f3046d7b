//! Whether this process is ready to serve: the conditions behind `/readyz`
//! ([`crate::endpoint`] serves it beside `/metrics` and `/healthz`).
//!
//! The command layer names what its process needs before it starts any of
//! it (a bot: the models and the gateway; a front end: the gateway and
//! Redis; a worker: the models and Redis), so that `/readyz` lists every
//! condition from the first moment, each "waiting" until met. A condition
//! is either a fact that becomes true once (the models have loaded) or a
//! live check asked on each request (the gateway's shards are connected,
//! Redis answers PING), because those come and go after start-up and a
//! flag set once would go on claiming them.
//!
//! `/healthz` needs none of this: that the endpoint answers at all is the
//! process being up.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

/// The models are loaded and the engine runs.
pub const MODELS: &str = "models";
/// Every gateway shard this process runs is connected.
pub const GATEWAY: &str = "gateway";
/// The queue's Redis answers.
pub const REDIS: &str = "redis";

/// The longest a live check may take before it counts as failed: a Redis
/// that does not answer must not hang the orchestrator's probe (they time
/// out at 1 s by default in Kubernetes, which then counts a failure anyway).
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A live check, asked on each `/readyz`. `Err` says what is wrong, for the
/// operator reading the probe's body.
#[async_trait]
pub trait Probe: Send + Sync {
    async fn check(&self) -> Result<(), String>;
}

#[derive(Clone)]
enum State {
    Waiting(String),
    Met,
    Live(Arc<dyn Probe>),
}

/// The conditions of one process, shared by whoever meets them. A clone is
/// the same set; a new one has no condition (and so is ready).
#[derive(Clone, Default)]
pub struct Health(Arc<Mutex<Vec<(&'static str, State)>>>);

impl fmt::Debug for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.lock().iter().map(|(n, _)| *n).collect();
        f.debug_tuple("Health").field(&names).finish()
    }
}

/// One condition's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    /// `Err`: what it is waiting for, or what is wrong.
    pub state: Result<(), String>,
}

/// Every condition, in the order they were named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn ready(&self) -> bool {
        self.checks.iter().all(|c| c.state.is_ok())
    }

    /// The probe's body: "ready" or "not ready", then one line per
    /// condition ("models: ok", "gateway: not connected yet").
    pub fn text(&self) -> String {
        let mut s = String::from(if self.ready() {
            "ready\n"
        } else {
            "not ready\n"
        });
        for c in &self.checks {
            match &c.state {
                Ok(()) => s.push_str(&format!("{}: ok\n", c.name)),
                Err(why) => s.push_str(&format!("{}: {why}\n", c.name)),
            }
        }
        s
    }
}

impl Health {
    pub fn new() -> Health {
        Health::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(&'static str, State)>> {
        // A panic elsewhere while holding it leaves a list that is still whole.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, name: &'static str, state: State) {
        let mut list = self.lock();
        match list.iter_mut().find(|(n, _)| *n == name) {
            Some((_, s)) => *s = state,
            None => list.push((name, state)),
        }
    }

    /// Name a condition not met yet; `waiting` says what it waits for. Also
    /// how a met condition is taken back (the bot shutting down).
    pub fn require(&self, name: &'static str, waiting: impl Into<String>) {
        self.set(name, State::Waiting(waiting.into()));
    }

    /// The condition is met from now on.
    pub fn met(&self, name: &'static str) {
        self.set(name, State::Met);
    }

    /// The condition is whatever `probe` says at each request.
    pub fn live(&self, name: &'static str, probe: Arc<dyn Probe>) {
        self.set(name, State::Live(probe));
    }

    /// Ask every condition now; live checks run together (each on a task
    /// of its own), each bounded by [`PROBE_TIMEOUT`].
    pub async fn report(&self) -> Report {
        let list = self.lock().clone();
        let asked: Vec<_> = list
            .into_iter()
            .map(|(name, state)| {
                let answer = tokio::spawn(async move {
                    match state {
                        State::Waiting(why) => Err(why),
                        State::Met => Ok(()),
                        State::Live(p) => {
                            match tokio::time::timeout(PROBE_TIMEOUT, p.check()).await {
                                Ok(r) => r,
                                Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
                            }
                        }
                    }
                });
                (name, answer)
            })
            .collect();
        let mut checks = Vec::with_capacity(asked.len());
        for (name, answer) in asked {
            let state = answer
                .await
                .unwrap_or_else(|e| Err(format!("the check failed: {e}")));
            checks.push(Check { name, state });
        }
        Report { checks }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<(), String>);

    #[async_trait]
    impl Probe for Fixed {
        async fn check(&self) -> Result<(), String> {
            self.0.clone()
        }
    }

    struct Hangs;

    #[async_trait]
    impl Probe for Hangs {
        async fn check(&self) -> Result<(), String> {
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn ready_only_once_every_condition_is_met() {
        let h = Health::new();
        assert!(h.report().await.ready(), "no condition: ready");
        h.require(MODELS, "loading");
        h.require(GATEWAY, "not connected yet");
        let r = h.report().await;
        assert!(!r.ready());
        assert_eq!(
            r.text(),
            "not ready\nmodels: loading\ngateway: not connected yet\n"
        );
        h.met(MODELS);
        h.live(
            GATEWAY,
            Arc::new(Fixed(Err("0 of 1 shards connected".into()))),
        );
        let r = h.report().await;
        assert!(!r.ready());
        assert_eq!(
            r.text(),
            "not ready\nmodels: ok\ngateway: 0 of 1 shards connected\n"
        );
        h.live(GATEWAY, Arc::new(Fixed(Ok(()))));
        let r = h.report().await;
        assert!(r.ready());
        assert_eq!(r.text(), "ready\nmodels: ok\ngateway: ok\n");
        // Taken back: shutting down.
        h.clone().require(GATEWAY, "shutting down");
        assert!(!h.report().await.ready());
    }

    #[tokio::test]
    async fn a_check_that_hangs_counts_as_failed() {
        let h = Health::new();
        h.live(REDIS, Arc::new(Hangs));
        h.met(MODELS);
        let r = h.report().await;
        assert_eq!(r.checks[0].state, Err("no answer within 3s".to_string()));
        assert_eq!(r.checks[1].state, Ok(()));
    }
}
