//! `clip2gan worker`: the engine on jobs read from `{prefix}:jobs` through
//! the workers' consumer group.
//!
//! Two loops share one worker:
//! - reading: XREADGROUP as many jobs as the local engine has room for
//!   (two batches: one running, one forming), so that jobs read together
//!   reach the engine within microseconds and batch as they do in one
//!   process, and no worker hoards jobs another could start. Every half
//!   `claim_idle_ms` the same loop first takes over, with XAUTOCLAIM, jobs
//!   pending longer than that on a worker that stopped renewing them (it
//!   died), with the same room; a job delivered more than
//!   `max_deliveries` times is dead-lettered and its user told;
//! - renewing: every third of `claim_idle_ms`, XCLAIM (JUSTID) this
//!   worker's own jobs, which resets their idle time: a long job is not
//!   taken over while its worker lives.
//!
//! Each job's result is published by one Lua script (see [`PUBLISH`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ::metrics::counter;
use dashmap::DashSet;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::engine::{Engine, EngineError, Output};
use crate::metrics as names;

use super::link::{Link, Quiet};
use super::wire::{self, JobEntry};
use super::{random_name, unix_ms, QueueConfig, QueueError, GROUP};

/// The first to finish a job sets its `done` marker (SET NX), appends the
/// result to the front end's stream and frees the user's slot; everyone
/// acknowledges and deletes the job entry. All in one script: a worker that
/// dies halfway leaves either nothing (the job is redelivered) or all.
/// KEYS: done, results, jobs, busy. ARGV: group, entry id, marker ttl (s),
/// result stream length, then the result's field/value pairs (none: drop
/// the job without an answer). Returns 1 if this call published.
pub const PUBLISH: &str = r#"
local won = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[3])
if won then
  if #ARGV > 4 then
    local fields = {}
    for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', unpack(fields))
    redis.call('EXPIRE', KEYS[2], 86400)
  end
  if redis.call('DECR', KEYS[4]) <= 0 then redis.call('DEL', KEYS[4]) end
end
redis.call('XACK', KEYS[3], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[3], ARGV[2])
if won then return 1 end
return 0
"#;

struct Worker {
    cfg: QueueConfig,
    engine: Arc<Engine>,
    /// This worker's consumer name in the group.
    name: String,
    link: Link,
    publish: redis::Script,
    /// Room in the local engine.
    room: Arc<Semaphore>,
    /// Entry ids this worker is running, renewed while it lives.
    mine: DashSet<String>,
    quiet: Quiet,
}

/// [`run`] on a task of its own until the returned sender is used or
/// dropped: a worker inside another program (tests, benchmarks).
pub fn spawn(
    cfg: QueueConfig,
    engine: Arc<Engine>,
    grace: Duration,
) -> (
    tokio::task::JoinHandle<Result<(), QueueError>>,
    tokio::sync::oneshot::Sender<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stopped.await;
    };
    (tokio::spawn(run(cfg, engine, shutdown, grace)), stop)
}

/// Run jobs from the queue on `engine` until `shutdown`; then stop reading,
/// let the jobs in hand finish and publish (up to `grace`), and return.
/// Jobs still unfinished stay pending and go to another worker.
pub async fn run(
    cfg: QueueConfig,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send,
    grace: Duration,
) -> Result<(), QueueError> {
    cfg.validate()?;
    let room = 2 * engine.config().max_batch.max(1);
    let w = Arc::new(Worker {
        name: random_name("worker"),
        link: Link::new(&cfg)?,
        publish: redis::Script::new(PUBLISH),
        room: Arc::new(Semaphore::new(room)),
        mine: DashSet::new(),
        quiet: Quiet::new(Duration::from_secs(10)),
        engine,
        cfg,
    });
    let reader = Link::blocking(&w.cfg)?;
    info!(worker = %w.name, url = %super::link::redacted(&w.cfg.url), "reading jobs from Redis");
    let mut jobs = JoinSet::new();
    {
        let loops = async { tokio::join!(w.read(&reader, &mut jobs), w.renew_loop()) };
        tokio::select! {
            _ = loops => {}
            _ = shutdown => {}
        }
    }
    info!(in_hand = jobs.len(), "stopping: finishing the jobs in hand");
    crate::shutdown::stage("finishing the jobs in hand");
    let finish = async { while jobs.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, finish).await.is_err() {
        warn!(
            cut_short = "finishing the jobs in hand",
            "jobs unfinished after the grace period stay pending for another worker"
        );
    }
    Ok(())
}

impl Worker {
    /// Wait until Redis answers and the group exists (a worker may start
    /// before Redis, or before any front end).
    async fn ensure_group(&self) {
        let mut pause = Duration::from_millis(100);
        loop {
            let create = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(self.cfg.jobs())
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .to_owned();
            match self.link.run::<()>(&create).await {
                Ok(()) => return,
                Err(QueueError::Protocol(m)) if m.contains("BUSYGROUP") => return,
                Err(e) => {
                    self.quiet.warn("waiting for Redis", &e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    async fn read(self: &Arc<Self>, reader: &Link, jobs: &mut JoinSet<()>) {
        self.ensure_group().await;
        let every = Duration::from_millis(self.cfg.claim_idle_ms / 2);
        let mut next_claim = tokio::time::Instant::now();
        loop {
            while jobs.try_join_next().is_some() {}
            if self.engine.warming().is_some() {
                // Its mapper is still being built: leave the jobs to workers
                // that can serve them (they would only be refused here).
                tokio::time::sleep(Duration::from_millis(self.cfg.block_ms)).await;
                continue;
            }
            let Ok(first) = self.room.clone().acquire_owned().await else {
                return;
            };
            let mut permits = vec![first];
            while let Ok(p) = self.room.clone().try_acquire_owned() {
                permits.push(p);
            }
            if tokio::time::Instant::now() >= next_claim {
                next_claim = tokio::time::Instant::now() + every;
                if let Err(e) = self.claim(&mut permits, jobs).await {
                    self.quiet
                        .warn("cannot take over stalled jobs; retrying", &e);
                }
                if permits.is_empty() {
                    continue;
                }
            }
            // Blocks no longer than until the next claim (BLOCK 0 would be
            // forever).
            let block = next_claim
                .saturating_duration_since(tokio::time::Instant::now())
                .as_millis()
                .clamp(1, self.cfg.block_ms as u128);
            let read = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(GROUP)
                .arg(&self.name)
                .arg("COUNT")
                .arg(permits.len())
                .arg("BLOCK")
                .arg(block as u64)
                .arg("STREAMS")
                .arg(self.cfg.jobs())
                .arg(">")
                .to_owned();
            let reply: Option<StreamReadReply> = match reader.run(&read).await {
                Ok(r) => r,
                Err(QueueError::Protocol(m)) if m.contains("NOGROUP") => {
                    // Redis lost its data (no AOF?): make the group again.
                    self.ensure_group().await;
                    continue;
                }
                Err(e) => {
                    self.quiet.warn("cannot read jobs from Redis; retrying", &e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let entries: Vec<StreamId> = reply
                .into_iter()
                .flat_map(|r| r.keys)
                .flat_map(|k| k.ids)
                .collect();
            for (entry, permit) in entries.into_iter().zip(permits.drain(..)) {
                self.mine.insert(entry.id.clone());
                let w = self.clone();
                jobs.spawn(async move { w.handle(entry, permit).await });
            }
        }
    }

    /// Take over jobs idle longer than `claim_idle_ms`, one per permit (the
    /// permits used are taken from `permits`).
    async fn claim(
        self: &Arc<Self>,
        permits: &mut Vec<OwnedSemaphorePermit>,
        jobs: &mut JoinSet<()>,
    ) -> Result<(), QueueError> {
        let claim = redis::cmd("XAUTOCLAIM")
            .arg(self.cfg.jobs())
            .arg(GROUP)
            .arg(&self.name)
            .arg(self.cfg.claim_idle_ms)
            .arg("0-0")
            .arg("COUNT")
            .arg(permits.len())
            .to_owned();
        let claimed: StreamAutoClaimReply = self.link.run(&claim).await?;
        for entry in claimed.claimed {
            let Some(permit) = permits.pop() else { break };
            let deliveries = self.deliveries(&entry.id).await?;
            self.mine.insert(entry.id.clone());
            let w = self.clone();
            if deliveries > self.cfg.max_deliveries as usize {
                jobs.spawn(async move { w.dead_letter(entry, deliveries, permit).await });
            } else {
                counter!(names::REDELIVERIES).increment(1);
                info!(entry = %entry.id, deliveries, "took over a job from a worker that went quiet");
                jobs.spawn(async move { w.handle(entry, permit).await });
            }
        }
        Ok(())
    }

    /// How often the group has delivered the entry (this claim included).
    async fn deliveries(&self, id: &str) -> Result<usize, QueueError> {
        let pending = redis::cmd("XPENDING")
            .arg(self.cfg.jobs())
            .arg(GROUP)
            .arg(id)
            .arg(id)
            .arg(1)
            .to_owned();
        let reply: StreamPendingCountReply = self.link.run(&pending).await?;
        Ok(reply.ids.first().map_or(1, |p| p.times_delivered))
    }

    async fn renew_loop(&self) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.cfg.claim_idle_ms / 3));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let ids: Vec<String> = self.mine.iter().map(|i| i.clone()).collect();
            if ids.is_empty() {
                continue;
            }
            let mut renew = redis::cmd("XCLAIM");
            renew
                .arg(self.cfg.jobs())
                .arg(GROUP)
                .arg(&self.name)
                .arg(0)
                .arg(&ids)
                .arg("JUSTID");
            if let Err(e) = self.link.run::<Vec<String>>(&renew).await {
                self.quiet.warn("cannot renew the jobs in hand", &e);
            }
        }
    }

    /// Run one job and publish its result.
    async fn handle(&self, entry: StreamId, _room: OwnedSemaphorePermit) {
        let job = match JobEntry::decode(&entry.map) {
            Ok(j) => j,
            Err(e) => {
                error!(entry = %entry.id, error = %e, "an unreadable job was set aside");
                self.set_aside(&entry.id, "unreadable", 0).await;
                return self.finish_entry(&entry.id).await;
            }
        };
        let cancelled: Result<bool, _> = self
            .link
            .run(redis::cmd("EXISTS").arg(self.cfg.cancelled(job.id)))
            .await;
        if cancelled.unwrap_or(false) {
            debug!(job = job.id, "cancelled before it ran");
            return self.finish_job(&entry.id, &job, None).await;
        }
        if unix_ms() > job.deadline_ms {
            warn!(
                job = job.id,
                "dropped: its interaction token has expired, so its result could not be posted"
            );
            return self.finish_job(&entry.id, &job, None).await;
        }
        // The front ends enforce the per-user limit across processes; here
        // each job is its own client, so the local limit never refuses one.
        let result = match self.engine.submit(job.id, job.request.clone()) {
            Ok(handle) => handle.wait().await,
            Err(e) => Err(e),
        };
        self.finish_job(&entry.id, &job, Some(result)).await
    }

    /// Give up on a job that keeps failing: keep it in `{prefix}:dead` and
    /// tell its user.
    async fn dead_letter(&self, entry: StreamId, deliveries: usize, _room: OwnedSemaphorePermit) {
        counter!(names::DEAD_LETTERS).increment(1);
        let Ok(job) = JobEntry::decode(&entry.map) else {
            self.set_aside(&entry.id, "unreadable", deliveries).await;
            return self.finish_entry(&entry.id).await;
        };
        error!(
            job = job.id,
            deliveries,
            "a job failed on every delivery and was set aside in the dead-letter stream"
        );
        self.set_aside(&entry.id, &job.encode(), deliveries).await;
        let told = Err(EngineError::Failed(format!(
            "this job stopped its image worker {deliveries} times and was set aside; please try \
             again, perhaps with other words"
        )));
        self.finish_job(&entry.id, &job, Some(told)).await
    }

    async fn set_aside(&self, id: &str, job: &str, deliveries: usize) {
        let add = redis::cmd("XADD")
            .arg(self.cfg.dead())
            .arg("MAXLEN")
            .arg("~")
            .arg(10_000)
            .arg("*")
            .arg("entry")
            .arg(id)
            .arg("job")
            .arg(job)
            .arg("deliveries")
            .arg(deliveries)
            .to_owned();
        if let Err(e) = self.link.run::<String>(&add).await {
            warn!(error = %e, "could not record a dead letter");
        }
    }

    async fn finish_job(
        &self,
        id: &str,
        job: &JobEntry,
        result: Option<Result<Output, EngineError>>,
    ) {
        let fields = result.map(|r| wire::encode_result(job.id, &r));
        self.publish(id, job.id, &job.reply_to, job.user, fields, job.deadline_ms)
            .await;
    }

    /// An entry without a readable job: acknowledge and delete it.
    async fn finish_entry(&self, id: &str) {
        let ack = redis::cmd("XACK")
            .arg(self.cfg.jobs())
            .arg(GROUP)
            .arg(id)
            .to_owned();
        let _ = self.link.run::<i64>(&ack).await;
        let del = redis::cmd("XDEL").arg(self.cfg.jobs()).arg(id).to_owned();
        let _ = self.link.run::<i64>(&del).await;
        self.mine.remove(id);
    }

    /// Publish (or drop) a job's result, retrying while Redis is away and
    /// the result could still be posted; given up, the job stays pending
    /// and another worker runs it again.
    async fn publish(
        &self,
        id: &str,
        job: u64,
        reply_to: &str,
        user: u64,
        fields: Option<Vec<(String, Vec<u8>)>>,
        deadline_ms: u64,
    ) {
        let mut pause = Duration::from_millis(50);
        loop {
            let mut inv = self.publish.prepare_invoke();
            inv.key(self.cfg.done(job))
                .key(self.cfg.results(reply_to))
                .key(self.cfg.jobs())
                .key(self.cfg.busy(user))
                .arg(GROUP)
                .arg(id)
                .arg(self.cfg.job_ttl_s + 60)
                .arg(1000);
            for (k, v) in fields.iter().flatten() {
                inv.arg(k).arg(v.as_slice());
            }
            match self.link.script::<i64>(&inv).await {
                Ok(published) => {
                    if published == 0 && fields.is_some() {
                        debug!(job, "already published by another worker");
                    }
                    self.mine.remove(id);
                    return;
                }
                Err(e) if unix_ms() < deadline_ms => {
                    self.quiet.warn("cannot publish a result; retrying", &e);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    error!(job, error = %e, "a result could not be published before its deadline");
                    self.mine.remove(id);
                    return;
                }
            }
        }
    }
}
