//! What the handlers need of the results store, whichever holds it: results
//! and their latents, each user's undo history, server settings, daily
//! quotas and cooldowns.
//!
//! Two implementations: [`Local`], the redb file of [`super::store`] with
//! cooldowns in this process's memory (one process: the default), and
//! [`super::shared::RedisResults`], shared by every front end.
//! Every call is async and may fail: a shared store can be unreachable,
//! and the handlers say so instead of "that image is gone".

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use dashmap::DashMap;

use crate::engine::Latent;

use super::guild::GuildSettings;
use super::store::{Charged, Record, Ref, ResultId, Store};
use super::BotError;

#[async_trait]
pub trait ResultStore: Send + Sync + 'static {
    async fn get(&self, id: ResultId) -> Result<Option<Arc<Record>>, BotError>;

    /// The latent of one image, if its result is still stored.
    async fn latent(&self, r: Ref) -> Result<Option<(Arc<Record>, Latent)>, BotError> {
        Ok(self
            .get(r.id)
            .await?
            .and_then(|rec| rec.latents.get(r.index).cloned().map(|l| (rec, l))))
    }

    /// The user's current image: the newest history entry still stored.
    async fn current(&self, user: u64) -> Result<Option<Ref>, BotError>;

    /// The user's most recent images still stored, newest first, each once.
    async fn recent(&self, user: u64, n: usize) -> Result<Vec<Ref>, BotError>;

    /// Store a new result (its id is assigned here) and make image
    /// `current` of it the user's current image; the oldest results beyond
    /// the store's bound are forgotten.
    async fn insert(&self, rec: Record, user: u64, current: usize)
        -> Result<Arc<Record>, BotError>;

    /// Make an existing image the user's current one.
    async fn push(&self, user: u64, r: Ref) -> Result<(), BotError>;

    /// Drop the user's current image; the one before it, now current.
    async fn undo(&self, user: u64) -> Result<Option<Ref>, BotError>;

    /// Forget a result and its owner's history entries pointing at it.
    async fn delete(&self, id: ResultId) -> Result<(), BotError>;

    /// A server's own settings (`None`: it follows the config).
    async fn guild(&self, guild: u64) -> Result<Option<GuildSettings>, BotError>;

    async fn set_guild(&self, guild: u64, settings: GuildSettings) -> Result<(), BotError>;

    /// Take one job from a member's (`(guild, user)`) daily quota at `now`
    /// (unix seconds).
    /// `Ok(Err(usage))`: nothing left.
    async fn charge(&self, member: (u64, u64), now: u64, quota: u32) -> Result<Charged, BotError>;

    /// Give back a charge whose job produced nothing.
    async fn refund(&self, guild: u64, user: u64, window_start: u64) -> Result<(), BotError>;

    /// Time the user must still wait before starting another job.
    async fn cooldown_left(
        &self,
        user: u64,
        cooldown: Duration,
    ) -> Result<Option<Duration>, BotError>;

    /// A job of the user's started now: its cooldown runs from here.
    async fn started(&self, user: u64, cooldown: Duration) -> Result<(), BotError>;

    /// Results held, for the start-up log line.
    async fn count(&self) -> Result<usize, BotError>;
}

/// One process: the redb store on disk, cooldowns in memory (a restart
/// forgets them, which costs a user at most one cooldown).
pub struct Local {
    pub store: Arc<Store>,
    cooldowns: DashMap<u64, Instant>,
}

impl Local {
    pub fn new(store: Arc<Store>) -> Self {
        Local {
            store,
            cooldowns: DashMap::new(),
        }
    }

    /// A write, on a blocking thread: redb fsyncs on commit.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, BotError> + Send + 'static,
    ) -> Result<T, BotError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| BotError::Store(format!("the store task failed: {e}")))?
    }
}

#[async_trait]
impl ResultStore for Local {
    async fn get(&self, id: ResultId) -> Result<Option<Arc<Record>>, BotError> {
        Ok(self.store.get(id))
    }

    async fn current(&self, user: u64) -> Result<Option<Ref>, BotError> {
        Ok(self.store.current(user))
    }

    async fn recent(&self, user: u64, n: usize) -> Result<Vec<Ref>, BotError> {
        Ok(self.store.recent(user, n))
    }

    async fn insert(
        &self,
        rec: Record,
        user: u64,
        current: usize,
    ) -> Result<Arc<Record>, BotError> {
        self.blocking(move |s| s.insert(rec, user, current)).await
    }

    async fn push(&self, user: u64, r: Ref) -> Result<(), BotError> {
        self.blocking(move |s| s.push(user, r)).await
    }

    async fn undo(&self, user: u64) -> Result<Option<Ref>, BotError> {
        self.blocking(move |s| s.undo(user)).await
    }

    async fn delete(&self, id: ResultId) -> Result<(), BotError> {
        self.blocking(move |s| s.delete(id)).await
    }

    async fn guild(&self, guild: u64) -> Result<Option<GuildSettings>, BotError> {
        Ok(self.store.guild(guild))
    }

    async fn set_guild(&self, guild: u64, settings: GuildSettings) -> Result<(), BotError> {
        self.blocking(move |s| s.set_guild(guild, settings)).await
    }

    async fn charge(&self, member: (u64, u64), now: u64, quota: u32) -> Result<Charged, BotError> {
        self.blocking(move |s| s.charge(member, now, quota)).await
    }

    async fn refund(&self, guild: u64, user: u64, window_start: u64) -> Result<(), BotError> {
        self.blocking(move |s| s.refund(guild, user, window_start))
            .await
    }

    async fn cooldown_left(
        &self,
        user: u64,
        cooldown: Duration,
    ) -> Result<Option<Duration>, BotError> {
        let since = self.cooldowns.get(&user).map(|t| t.elapsed());
        Ok(since.filter(|s| *s < cooldown).map(|s| cooldown - s))
    }

    async fn started(&self, user: u64, cooldown: Duration) -> Result<(), BotError> {
        self.cooldowns.insert(user, Instant::now());
        if self.cooldowns.len() > 10_000 {
            // Forget users whose cooldown is over, so the map stays small.
            self.cooldowns.retain(|_, t| t.elapsed() < cooldown);
        }
        Ok(())
    }

    async fn count(&self) -> Result<usize, BotError> {
        Ok(self.store.len())
    }
}
