//! Which jobs run next: the oldest job, and the later jobs of its kind that
//! join it in one batch (the dynamic batching of the module doc).

use std::time::{Duration, Instant};

use ::metrics::gauge;

use super::{EngineError, Queued, Shared};
use crate::metrics as names;

/// What the worker does next.
pub(super) enum Next {
    Batch(Vec<Queued>),
    /// No job waits and the backend has background work.
    Idle,
    /// No job waits and refinements are running: take their next step.
    Refine,
    Stop,
}

/// Take the next batch: the oldest job, plus (if batchable) later jobs of
/// the same kind up to `max_batch` images, waiting up to `max_wait` for them.
/// With an empty queue: [`Next::Idle`] if `idle_work`, else wait for a job.
/// With `refining`, an empty queue gives [`Next::Refine`] at once.
pub(super) fn next_batch(shared: &Shared, idle_work: bool, refining: bool) -> Next {
    let cfg = &shared.config;
    let mut s = shared.lock();
    loop {
        if s.shutting_down && (!s.drain || s.queue.is_empty()) {
            let rest: Vec<Queued> = s.queue.drain(..).collect();
            drop(s);
            for q in rest {
                shared.finish(q.user);
                let _ = q.tx.send(Err(EngineError::ShuttingDown));
            }
            return Next::Stop;
        }
        if s.queue.is_empty() {
            if refining && !s.shutting_down {
                return Next::Refine;
            }
            if idle_work {
                return Next::Idle;
            }
            s = shared.wake.wait(s).unwrap_or_else(|e| e.into_inner());
            continue;
        }
        let kind = s.queue[0].request.batch_kind();
        let batching = kind.is_some() && cfg.max_batch > 1;
        if batching {
            let deadline = Instant::now() + Duration::from_millis(cfg.max_wait_ms);
            let settle = Duration::from_millis(cfg.settle_ms);
            let (mut seen, mut last_arrival) = (0, Instant::now());
            loop {
                let (jobs, images) = s
                    .queue
                    .iter()
                    .filter(|q| q.request.batch_kind() == kind)
                    .fold((0, 0), |(j, i), q| (j + 1, i + q.request.images()));
                let now = Instant::now();
                if jobs > seen {
                    (seen, last_arrival) = (jobs, now);
                }
                let until = deadline.min(last_arrival + settle);
                if images >= cfg.max_batch || now >= until || s.shutting_down || s.queue.is_empty()
                {
                    break;
                }
                s = shared
                    .wake
                    .wait_timeout(s, until - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
        }
        // Jobs may have been cancelled, or shutdown requested, while we
        // waited: start over if the queue emptied, its head changed kind, or
        // queued jobs are to be rejected.
        if s.queue.is_empty()
            || s.queue[0].request.batch_kind() != kind
            || (s.shutting_down && !s.drain)
        {
            continue;
        }
        // The oldest job always goes; others of its kind join while they fit.
        let first = s.queue.pop_front().expect("queue is not empty");
        let mut images = first.request.images();
        let mut batch = vec![first];
        if batching {
            let mut i = 0;
            while i < s.queue.len() {
                let q = &s.queue[i];
                if q.request.batch_kind() == kind && images + q.request.images() <= cfg.max_batch {
                    images += q.request.images();
                    batch.push(s.queue.remove(i).expect("index in range"));
                } else {
                    i += 1;
                }
            }
        }
        gauge!(names::QUEUE_DEPTH).set(s.queue.len() as f64);
        return Next::Batch(batch);
    }
}
