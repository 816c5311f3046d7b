//! The front end's side of the queue: [`QueueClient`] is an
//! [`Inference`] that publishes each job on `{prefix}:jobs` and waits for
//! its result on this front end's own result stream.
//!
//! Admission happens in one Lua script, so that every front end sees the
//! same numbers: the user's jobs in progress (`{prefix}:busy:{user}`, freed
//! by the worker that publishes the result) and the jobs waiting (the
//! stream's entries added minus the group's entries read). The same two
//! numbers give a job's queue position across workers: the jobs published
//! before it that no worker has read yet.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use redis::streams::StreamReadReply;
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use crate::engine::{EngineError, JobId, Output, Request, UserId};
use crate::inference::{Inference, Job};

use super::link::{Link, Quiet};
use super::wire::{self, JobEntry};
use super::{random_name, unix_ms, QueueConfig, QueueError, GROUP};

/// Quality mode through the queue is refused: workers would run it, but
/// its step-by-step progress and its cancelling between steps do not cross
/// the stream (yet), and a worker of an older version could not read it.
pub const NO_REFINE_IN_QUEUE: &str =
    "quality mode (refining) is not available on this bot: it runs with a queue of workers \
     (`bot --queue`); use quality: fast, or ask the bot's admin to run it without --queue";

/// Lua, shared by the scripts below: `group_read(stream, name)` says
/// whether the stream has the consumer group `name`, and how many entries
/// it has read (0 while Redis has not counted them).
macro_rules! lua_group_read {
    () => {
        r#"
local function group_read(stream, name)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local n, r = nil, false
    for i = 1, #g, 2 do
      if g[i] == 'name' then n = g[i + 1] end
      if g[i] == 'entries-read' then r = g[i + 1] end
    end
    if n == name then return true, (r or 0) end
  end
  return false, 0
end
"#
    };
}

/// Checks the user's and the queue's limits, publishes the job, and makes
/// sure the workers' group exists (created by whoever publishes first;
/// `ENTRIESREAD` says the entries already there are all unread).
/// Returns `{0, number}` (the job's ordinal in the stream), `{-1, busy}` or
/// `{-2, waiting}`.
const SUBMIT: &str = concat!(
    lua_group_read!(),
    r#"
local added, read, group = 0, 0, false
if redis.call('EXISTS', KEYS[1]) == 1 then
  local info = redis.call('XINFO', 'STREAM', KEYS[1])
  for i = 1, #info, 2 do
    if info[i] == 'entries-added' then added = info[i + 1] end
  end
  group, read = group_read(KEYS[1], ARGV[4])
end
local busy = tonumber(redis.call('GET', KEYS[2]) or '0')
if busy >= tonumber(ARGV[2]) then return {-1, busy} end
if added - read >= tonumber(ARGV[3]) then return {-2, added - read} end
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('XADD', KEYS[1], '*', 'job', ARGV[1])
if not group then
  local unread = redis.call('XLEN', KEYS[1])
  redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[4], '0', 'ENTRIESREAD', added + 1 - unread)
end
return {0, added + 1}
"#
);

/// The workers' group's entries read (`-1`: no group yet).
const READ: &str = concat!(
    lua_group_read!(),
    r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local found, read = group_read(KEYS[1], ARGV[1])
if found then return read end
return -1
"#
);

struct Waiter {
    tx: oneshot::Sender<Result<Output, EngineError>>,
    /// The job's ordinal in the stream, for its position.
    number: u64,
}

struct Inner {
    cfg: QueueConfig,
    link: Link,
    /// This front end's name: its result stream is `{prefix}:results:{name}`.
    name: String,
    waiters: DashMap<u64, Waiter>,
    closing: AtomicBool,
    submit: redis::Script,
    read: redis::Script,
    quiet: Quiet,
}

/// A front end's connection to the workers.
pub struct QueueClient {
    inner: Arc<Inner>,
}

impl QueueClient {
    /// Start reading this front end's results. Redis need not be up yet:
    /// jobs are refused ("busy") until it is, and the reader keeps trying.
    pub fn start(cfg: QueueConfig) -> Result<QueueClient, QueueError> {
        cfg.validate()?;
        let inner = Arc::new(Inner {
            link: Link::new(&cfg)?,
            name: random_name("front"),
            waiters: DashMap::new(),
            closing: AtomicBool::new(false),
            submit: redis::Script::new(SUBMIT),
            read: redis::Script::new(READ),
            quiet: Quiet::new(Duration::from_secs(10)),
            cfg,
        });
        let reader = Link::blocking(&inner.cfg)?;
        tokio::spawn(listen(inner.clone(), reader));
        info!(front_end = %inner.name, url = %super::link::redacted(&inner.cfg.url), "publishing jobs on Redis");
        Ok(QueueClient { inner })
    }

    /// Whether Redis answers now (for start-up: say so early).
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.inner
            .link
            .run::<String>(&redis::cmd("PING"))
            .await
            .map(|_| ())
    }

    fn unavailable(&self, what: &str, e: &QueueError) -> EngineError {
        self.inner.quiet.warn(what, e);
        EngineError::Unavailable
    }
}

#[async_trait]
impl Inference for QueueClient {
    async fn submit(&self, user: UserId, request: Request) -> Result<Job, EngineError> {
        let inner = &self.inner;
        if inner.closing.load(Ordering::SeqCst) {
            return Err(EngineError::ShuttingDown);
        }
        if matches!(request, Request::Refine { .. }) {
            return Err(EngineError::InvalidRequest(NO_REFINE_IN_QUEUE.into()));
        }
        let cfg = &inner.cfg;
        let id: u64 = inner
            .link
            .run(redis::cmd("INCR").arg(cfg.job_ids()))
            .await
            .map_err(|e| self.unavailable("cannot publish a job", &e))?;
        let ttl = Duration::from_secs(cfg.job_ttl_s);
        let entry = JobEntry {
            id,
            user,
            reply_to: inner.name.clone(),
            deadline_ms: unix_ms() + ttl.as_millis() as u64,
            request,
        };
        let (tx, rx) = oneshot::channel();
        // Waiting before publishing: a fast worker may answer at once.
        inner.waiters.insert(id, Waiter { tx, number: 0 });
        let answer: Result<(i64, u64), QueueError> = inner
            .link
            .script(
                inner
                    .submit
                    .key(cfg.jobs())
                    .key(cfg.busy(user))
                    .arg(entry.encode())
                    .arg(cfg.per_user_limit)
                    .arg(cfg.capacity)
                    .arg(GROUP)
                    .arg(cfg.job_ttl_s + 60),
            )
            .await;
        let number = match answer {
            Ok((0, number)) => number,
            Ok((code, _)) => {
                inner.waiters.remove(&id);
                return Err(if code == -1 {
                    EngineError::UserBusy {
                        limit: cfg.per_user_limit,
                    }
                } else {
                    EngineError::QueueFull {
                        capacity: cfg.capacity,
                    }
                });
            }
            Err(e) => {
                inner.waiters.remove(&id);
                return Err(self.unavailable("cannot publish a job", &e));
            }
        };
        if let Some(mut w) = inner.waiters.get_mut(&id) {
            w.number = number;
        }
        debug!(job = id, number, "published");
        let inner = inner.clone();
        Ok(Job::new(
            JobId(id),
            Box::pin(async move {
                match tokio::time::timeout(ttl, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => Err(EngineError::ShuttingDown),
                    Err(_) => {
                        inner.waiters.remove(&id);
                        warn!(
                            job = id,
                            "no worker finished the job before its token expired"
                        );
                        Err(EngineError::Failed(
                            "no image worker finished the job in time".into(),
                        ))
                    }
                }
            }),
        ))
    }

    async fn position(&self, id: JobId) -> Option<usize> {
        let inner = &self.inner;
        let number = inner.waiters.get(&id.0)?.number;
        let read: i64 = inner
            .link
            .script(inner.read.key(inner.cfg.jobs()).arg(GROUP))
            .await
            .ok()?;
        let read = read.max(0) as u64;
        (number > read).then(|| (number - read - 1) as usize)
    }

    async fn cancel(&self, id: JobId) -> bool {
        if self.position(id).await.is_none() {
            return false;
        }
        let inner = &self.inner;
        let marked: Result<(), _> = inner
            .link
            .run(
                redis::cmd("SET")
                    .arg(inner.cfg.cancelled(id.0))
                    .arg(1)
                    .arg("EX")
                    .arg(inner.cfg.job_ttl_s + 60),
            )
            .await;
        if marked.is_err() {
            return false;
        }
        if let Some((_, w)) = inner.waiters.remove(&id.0) {
            let _ = w.tx.send(Err(EngineError::Cancelled));
        }
        true
    }

    async fn close(self: Arc<Self>) {
        self.inner.closing.store(true, Ordering::SeqCst);
        // Jobs no worker has taken are withdrawn; running ones are still
        // delivered, within the bot's grace period.
        let ids: Vec<u64> = self.inner.waiters.iter().map(|w| *w.key()).collect();
        for id in ids {
            if self.cancel(JobId(id)).await {
                debug!(job = id, "withdrawn at shutdown");
            }
        }
        for id in self
            .inner
            .waiters
            .iter()
            .map(|w| *w.key())
            .collect::<Vec<_>>()
        {
            if self.position(JobId(id)).await.is_some() {
                if let Some((_, w)) = self.inner.waiters.remove(&id) {
                    let _ = w.tx.send(Err(EngineError::ShuttingDown));
                }
            }
        }
    }
}

impl Drop for QueueClient {
    fn drop(&mut self) {
        // Ends the reader.
        self.inner.closing.store(true, Ordering::SeqCst);
    }
}

/// Read this front end's result stream and hand each result to its job.
/// A result nobody waits for (a duplicate, or a job given up) is dropped.
async fn listen(inner: Arc<Inner>, reader: Link) {
    let key = inner.cfg.results(&inner.name);
    let mut last = "0-0".to_string();
    let mut pause = Duration::from_millis(50);
    while !inner.closing.load(Ordering::SeqCst) {
        let read = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(64)
            .arg("BLOCK")
            .arg(inner.cfg.block_ms)
            .arg("STREAMS")
            .arg(&key)
            .arg(&last)
            .to_owned();
        let reply: Option<StreamReadReply> = match reader.run(&read).await {
            Ok(r) => r,
            Err(e) => {
                inner
                    .quiet
                    .warn("cannot read results from Redis; retrying", &e);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        pause = Duration::from_millis(50);
        let mut handled = false;
        for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
            handled = true;
            last = entry.id.clone();
            match wire::decode_result(&entry.map) {
                Ok((id, result)) => match inner.waiters.remove(&id) {
                    Some((_, w)) => {
                        let _ = w.tx.send(result);
                    }
                    None => debug!(job = id, "a result nobody waits for was dropped"),
                },
                Err(e) => warn!(error = %e, entry = %entry.id, "an unreadable result was skipped"),
            }
        }
        // Handled results are not needed again (an idle read handled none).
        if !handled {
            continue;
        }
        let trim = redis::cmd("XTRIM")
            .arg(&key)
            .arg("MINID")
            .arg(&last)
            .to_owned();
        let _ = inner.link.run::<i64>(&trim).await;
    }
}
