//! The gateway's part of `/readyz` ([`crate::health`]): every shard this
//! process runs is connected.
//!
//! Asked of serenity's shard manager at each request rather than kept from
//! events: a shard that cannot reconnect (Discord unreachable) is removed
//! from the manager and retried without any event saying it went, so a
//! flag set at READY would go on claiming a connection that is gone.

use std::sync::Arc;

use async_trait::async_trait;
use serenity::gateway::{ConnectionStage, ShardManager};

use crate::health::Probe;

pub(crate) struct Gateway {
    pub shards: Arc<ShardManager>,
    /// How many shards this process runs.
    pub expected: u32,
}

/// The shards a front end runs: its range, else all of `shard_count` (at
/// least one).
pub(crate) fn local_shards(range: Option<[u32; 2]>, count: u32) -> u32 {
    match range {
        Some([first, last]) => last.saturating_sub(first) + 1,
        None => count.max(1),
    }
}

#[async_trait]
impl Probe for Gateway {
    async fn check(&self) -> Result<(), String> {
        let runners = self.shards.runners.lock().await;
        let connected = runners
            .values()
            .filter(|r| r.stage == ConnectionStage::Connected)
            .count();
        if connected as u32 >= self.expected {
            return Ok(());
        }
        let mut others: Vec<String> = runners
            .iter()
            .filter(|(_, r)| r.stage != ConnectionStage::Connected)
            .map(|(id, r)| format!("shard {id} {}", r.stage))
            .collect();
        others.sort();
        let mut why = format!("{connected} of {} shards connected", self.expected);
        if !others.is_empty() {
            why.push_str(&format!(" ({})", others.join(", ")));
        }
        Err(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_counts_its_own_shards() {
        assert_eq!(local_shards(None, 0), 1);
        assert_eq!(local_shards(None, 4), 4);
        assert_eq!(local_shards(Some([0, 1]), 4), 2);
        assert_eq!(local_shards(Some([2, 2]), 0), 1);
    }
}
