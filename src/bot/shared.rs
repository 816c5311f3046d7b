//! [`RedisResults`]: the results store in Redis, shared by every front end,
//! so any front end serves any user (an `/imagine` on one, its `/edit` on
//! another), and limits hold across them: daily quotas and cooldowns are
//! Redis keys, not process memory.
//!
//! Bounded as the redb store is: at most `max_latents` latents in all (the
//! oldest results go first, in one Lua script with the insert) and
//! `history_depth` steps per user. History entries that point at forgotten
//! results are skipped when read, as in redb.
//!
//! Keys, under the queue's prefix: `result:{id}` (the record, in the redb
//! store's encoding), `results` (ids by age), `result_sizes` (latents per
//! id), `latents` (their total), `next_result`, `history:{user}` (a list of
//! `id:index`), `guild:{id}` (JSON), `quota:{guild}:{user}`,
//! `cooldown:{user}`. With AOF on, a Redis restart keeps them all.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::queue::{Link, QueueConfig, QueueError};

use super::guild::{GuildSettings, QUOTA_WINDOW_S};
use super::results::ResultStore;
use super::store::{decode_record, encode_record, Charged, Record, Ref, ResultId, Usage};
use super::BotError;

/// Store the record, evict the oldest beyond the bound (never the new
/// one), and push the new image onto the user's history.
/// KEYS: results, result_sizes, latents, history. ARGV: prefix, id, record,
/// its latents, max latents, history depth, the history entry.
const INSERT: &str = r#"
redis.call('SET', ARGV[1] .. ':result:' .. ARGV[2], ARGV[3])
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[4])
local total = redis.call('INCRBY', KEYS[3], ARGV[4])
while total > tonumber(ARGV[5]) do
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0)
  if #oldest == 0 or oldest[1] == ARGV[2] then break end
  local id = oldest[1]
  local n = tonumber(redis.call('HGET', KEYS[2], id) or '0')
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
  redis.call('DEL', ARGV[1] .. ':result:' .. id)
  total = redis.call('DECRBY', KEYS[3], n)
end
redis.call('RPUSH', KEYS[4], ARGV[7])
redis.call('LTRIM', KEYS[4], -tonumber(ARGV[6]), -1)
return 1
"#;

/// Forget a result and its owner's entries for it.
/// KEYS: results, result_sizes, latents, owner's history. ARGV: prefix, id.
const DELETE: &str = r#"
local n = redis.call('HGET', KEYS[2], ARGV[2])
if not n then return 0 end
redis.call('ZREM', KEYS[1], ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[2])
redis.call('DEL', ARGV[1] .. ':result:' .. ARGV[2])
redis.call('DECRBY', KEYS[3], n)
for _, r in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
  if string.match(r, '^(%d+):') == ARGV[2] then redis.call('LREM', KEYS[4], 0, r) end
end
return 1
"#;

/// Push an image onto a history unless it is already the last entry.
/// KEYS: history. ARGV: entry, depth.
const PUSH: &str = r#"
if redis.call('LINDEX', KEYS[1], -1) == ARGV[1] then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[2]), -1)
return 1
"#;

/// Undo: drop entries whose result is gone, then the last one; returns
/// the new last entry, or false (nothing changed) with fewer than two.
/// KEYS: history. ARGV: prefix.
const UNDO: &str = r#"
local kept = {}
for _, r in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  local id = string.match(r, '^(%d+):')
  if id and redis.call('EXISTS', ARGV[1] .. ':result:' .. id) == 1 then kept[#kept + 1] = r end
end
if #kept < 2 then return false end
table.remove(kept)
redis.call('DEL', KEYS[1])
redis.call('RPUSH', KEYS[1], unpack(kept))
return kept[#kept]
"#;

/// Take one job from a member's quota window. KEYS: quota. ARGV: now,
/// quota, window. Returns {taken (0/1), used, window start}.
const CHARGE: &str = r#"
local start = tonumber(redis.call('HGET', KEYS[1], 'start') or '-1')
local used = tonumber(redis.call('HGET', KEYS[1], 'used') or '0')
local now, window = tonumber(ARGV[1]), tonumber(ARGV[3])
if start < 0 or now >= start + window then start = now; used = 0 end
if used >= tonumber(ARGV[2]) then return {0, used, start} end
redis.call('HSET', KEYS[1], 'start', start, 'used', used + 1)
redis.call('EXPIRE', KEYS[1], 2 * window)
return {1, used + 1, start}
"#;

/// Give back a charge of the window starting at ARGV[1]. KEYS: quota.
const REFUND: &str = r#"
if tonumber(redis.call('HGET', KEYS[1], 'start') or '-1') == tonumber(ARGV[1])
   and tonumber(redis.call('HGET', KEYS[1], 'used') or '0') > 0 then
  redis.call('HINCRBY', KEYS[1], 'used', -1)
end
return 1
"#;

pub struct RedisResults {
    link: Link,
    prefix: String,
    history_depth: usize,
    max_latents: usize,
    insert: redis::Script,
    delete: redis::Script,
    push: redis::Script,
    undo: redis::Script,
    charge: redis::Script,
    refund: redis::Script,
}

fn down(e: QueueError) -> BotError {
    BotError::Store(e.to_string())
}

fn entry(r: Ref) -> String {
    format!("{}:{}", r.id, r.index)
}

fn parse_entry(s: &str) -> Option<Ref> {
    let (id, index) = s.split_once(':')?;
    Some(Ref {
        id: id.parse().ok()?,
        index: index.parse().ok()?,
    })
}

impl RedisResults {
    /// The store on the queue's Redis; `history_depth` and `max_latents`
    /// are the `[bot]` bounds.
    pub fn new(
        queue: &QueueConfig,
        history_depth: usize,
        max_latents: usize,
    ) -> Result<RedisResults, BotError> {
        Ok(RedisResults {
            link: Link::new(queue).map_err(down)?,
            prefix: queue.prefix.clone(),
            history_depth,
            max_latents,
            insert: redis::Script::new(INSERT),
            delete: redis::Script::new(DELETE),
            push: redis::Script::new(PUSH),
            undo: redis::Script::new(UNDO),
            charge: redis::Script::new(CHARGE),
            refund: redis::Script::new(REFUND),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}:{name}", self.prefix)
    }

    async fn history(&self, user: u64) -> Result<Vec<Ref>, BotError> {
        let raw: Vec<String> = self
            .link
            .run(
                redis::cmd("LRANGE")
                    .arg(self.key(&format!("history:{user}")))
                    .arg(0)
                    .arg(-1),
            )
            .await
            .map_err(down)?;
        Ok(raw.iter().filter_map(|s| parse_entry(s)).collect())
    }

    /// Whether the image still exists: its record's latent count, kept in
    /// `result_sizes` by the same scripts that write and delete the record,
    /// so the record itself need not be fetched and decoded.
    async fn stored(&self, r: Ref) -> Result<bool, BotError> {
        let n: Option<usize> = self
            .link
            .run(redis::cmd("HGET").arg(self.key("result_sizes")).arg(r.id))
            .await
            .map_err(down)?;
        Ok(n.is_some_and(|n| r.index < n))
    }
}

#[async_trait]
impl ResultStore for RedisResults {
    async fn get(&self, id: ResultId) -> Result<Option<Arc<Record>>, BotError> {
        let raw: Option<Vec<u8>> = self
            .link
            .run(redis::cmd("GET").arg(self.key(&format!("result:{id}"))))
            .await
            .map_err(down)?;
        Ok(raw.and_then(|b| decode_record(&b).ok()).map(Arc::new))
    }

    async fn current(&self, user: u64) -> Result<Option<Ref>, BotError> {
        for r in self.history(user).await?.into_iter().rev() {
            if self.stored(r).await? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    async fn recent(&self, user: u64, n: usize) -> Result<Vec<Ref>, BotError> {
        let mut out: Vec<Ref> = Vec::new();
        for r in self.history(user).await?.into_iter().rev() {
            if out.len() == n {
                break;
            }
            if !out.contains(&r) && self.stored(r).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    async fn insert(
        &self,
        mut rec: Record,
        user: u64,
        current: usize,
    ) -> Result<Arc<Record>, BotError> {
        rec.id = self
            .link
            .run(redis::cmd("INCR").arg(self.key("next_result")))
            .await
            .map_err(down)?;
        let bytes = encode_record(&rec);
        let mut inv = self.insert.prepare_invoke();
        inv.key(self.key("results"))
            .key(self.key("result_sizes"))
            .key(self.key("latents"))
            .key(self.key(&format!("history:{user}")))
            .arg(&self.prefix)
            .arg(rec.id)
            .arg(bytes)
            .arg(rec.latents.len())
            .arg(self.max_latents)
            .arg(self.history_depth)
            .arg(entry(Ref {
                id: rec.id,
                index: current,
            }));
        self.link.script::<i64>(&inv).await.map_err(down)?;
        Ok(Arc::new(rec))
    }

    async fn push(&self, user: u64, r: Ref) -> Result<(), BotError> {
        let mut inv = self.push.prepare_invoke();
        inv.key(self.key(&format!("history:{user}")))
            .arg(entry(r))
            .arg(self.history_depth);
        self.link.script::<i64>(&inv).await.map_err(down)?;
        Ok(())
    }

    async fn undo(&self, user: u64) -> Result<Option<Ref>, BotError> {
        let mut inv = self.undo.prepare_invoke();
        inv.key(self.key(&format!("history:{user}")))
            .arg(&self.prefix);
        let now: Option<String> = self.link.script(&inv).await.map_err(down)?;
        Ok(now.as_deref().and_then(parse_entry))
    }

    async fn delete(&self, id: ResultId) -> Result<(), BotError> {
        let Some(rec) = self.get(id).await? else {
            return Ok(());
        };
        let mut inv = self.delete.prepare_invoke();
        inv.key(self.key("results"))
            .key(self.key("result_sizes"))
            .key(self.key("latents"))
            .key(self.key(&format!("history:{}", rec.owner)))
            .arg(&self.prefix)
            .arg(id);
        self.link.script::<i64>(&inv).await.map_err(down)?;
        Ok(())
    }

    async fn guild(&self, guild: u64) -> Result<Option<GuildSettings>, BotError> {
        let raw: Option<String> = self
            .link
            .run(redis::cmd("GET").arg(self.key(&format!("guild:{guild}"))))
            .await
            .map_err(down)?;
        // An unreadable row (an older version's?) falls back to the config.
        Ok(raw.and_then(|s| serde_json::from_str(&s).ok()))
    }

    async fn set_guild(&self, guild: u64, settings: GuildSettings) -> Result<(), BotError> {
        let json = serde_json::to_string(&settings).expect("settings serialise");
        self.link
            .run::<()>(
                redis::cmd("SET")
                    .arg(self.key(&format!("guild:{guild}")))
                    .arg(json),
            )
            .await
            .map_err(down)
    }

    async fn charge(&self, member: (u64, u64), now: u64, quota: u32) -> Result<Charged, BotError> {
        let (guild, user) = member;
        let mut inv = self.charge.prepare_invoke();
        inv.key(self.key(&format!("quota:{guild}:{user}")))
            .arg(now)
            .arg(quota)
            .arg(QUOTA_WINDOW_S);
        let (taken, used, window_start): (i64, u32, u64) =
            self.link.script(&inv).await.map_err(down)?;
        let usage = Usage { used, window_start };
        Ok(if taken == 1 { Ok(usage) } else { Err(usage) })
    }

    async fn refund(&self, guild: u64, user: u64, window_start: u64) -> Result<(), BotError> {
        let mut inv = self.refund.prepare_invoke();
        inv.key(self.key(&format!("quota:{guild}:{user}")))
            .arg(window_start);
        self.link.script::<i64>(&inv).await.map_err(down)?;
        Ok(())
    }

    async fn cooldown_left(
        &self,
        user: u64,
        _cooldown: Duration,
    ) -> Result<Option<Duration>, BotError> {
        let ms: i64 = self
            .link
            .run(redis::cmd("PTTL").arg(self.key(&format!("cooldown:{user}"))))
            .await
            .map_err(down)?;
        Ok((ms > 0).then(|| Duration::from_millis(ms as u64)))
    }

    async fn started(&self, user: u64, cooldown: Duration) -> Result<(), BotError> {
        let ms = cooldown.as_millis() as u64;
        if ms == 0 {
            return Ok(());
        }
        self.link
            .run::<()>(
                redis::cmd("SET")
                    .arg(self.key(&format!("cooldown:{user}")))
                    .arg(1)
                    .arg("PX")
                    .arg(ms),
            )
            .await
            .map_err(down)
    }

    async fn count(&self) -> Result<usize, BotError> {
        self.link
            .run(redis::cmd("ZCARD").arg(self.key("results")))
            .await
            .map_err(down)
    }
}
