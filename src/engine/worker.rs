//! The inference thread's loop: take a batch, run it on the backend with
//! every panic contained (a failing batch is retried job by job; a panic
//! that escapes the loop restarts it), answer each job, record its metrics.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::metrics::{counter, histogram};
use tokio::sync::oneshot;

use super::refine::Refinements;
use super::schedule::{next_batch, Next};
use super::{Backend, EngineError, RawOutput, Shared, UserId};
use crate::metrics::{self as names, record_ms};

pub(super) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The worker loop, restarted when a panic escapes it (from backend code
/// outside the per-job catch, such as `warming`, or a bug here): the queue,
/// the backend and its models stay, the jobs it held are answered by their
/// [`InFlight`] guards, and serving goes on. The pause keeps a panic that
/// recurs at once from spinning a core.
pub(super) fn serve<B: Backend>(shared: &Arc<Shared>, mut backend: B) {
    while let Err(p) = catch_unwind(AssertUnwindSafe(|| worker(shared, &mut backend))) {
        tracing::error!(
            panic = %panic_message(&*p),
            "the inference thread panicked; its jobs were failed and it is restarting"
        );
        std::thread::sleep(RESTART_PAUSE);
    }
}

const RESTART_PAUSE: Duration = Duration::from_millis(100);

/// What a job whose worker panicked is told.
const RESTARTED: &str =
    "internal error: the image worker stopped during this job and was restarted; please try again";

/// A job taken from the queue into a batch, until it is answered. Dropped
/// unanswered (a panic unwinding the worker), it answers the job with an
/// internal error and frees the user's slot, so no client waits for ever
/// and no user stays "busy".
pub(super) struct InFlight {
    pub(super) shared: Arc<Shared>,
    pub(super) user: UserId,
    pub(super) submitted: Instant,
    pub(super) tx: Option<oneshot::Sender<Result<RawOutput, EngineError>>>,
}

impl InFlight {
    pub(super) fn answer(mut self, r: Result<RawOutput, EngineError>) {
        self.shared.finish(self.user);
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(r);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            self.shared.finish(self.user);
            let _ = tx.send(Err(EngineError::Failed(RESTARTED.into())));
        }
    }
}

fn worker<B: Backend>(shared: &Arc<Shared>, backend: &mut B) {
    // Ask once: a backend without background work answers false.
    let mut idle_work = true;
    // Refinements run a step at a time: one after each batch of other jobs.
    let mut refining = Refinements::default();
    loop {
        let mut batch = match next_batch(shared, idle_work, !refining.is_empty()) {
            Next::Stop => {
                // Draining finishes the refinements too; otherwise they
                // are answered as the queue was.
                while shared.lock().drain && !refining.is_empty() {
                    refining.step(shared, backend);
                }
                refining.fail_all(shared, EngineError::ShuttingDown);
                break;
            }
            Next::Refine => {
                refining.step(shared, backend);
                continue;
            }
            Next::Batch(b) => b,
            Next::Idle => {
                // A panic in background work ends that work, not the worker.
                idle_work = catch_unwind(AssertUnwindSafe(|| backend.idle())).unwrap_or(false);
                shared.lock().warming = backend.warming();
                continue;
            }
        };
        if batch.len() == 1 && matches!(batch[0].request, super::Request::Refine { .. }) {
            refining.begin(shared, batch.pop().expect("one job"), backend);
            continue;
        }
        // The requests move into the batch (an uploaded photo is megabytes).
        let (waiting, jobs): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .map(|q| {
                let job = InFlight {
                    shared: shared.clone(),
                    user: q.user,
                    submitted: q.submitted,
                    tx: Some(q.tx),
                };
                (job, q.request)
            })
            .unzip();
        let started = Instant::now();
        let batch_images: usize = jobs.iter().map(|j| j.images()).sum();
        let results = match catch_unwind(AssertUnwindSafe(|| backend.run(&jobs))) {
            Ok(r) if r.len() == jobs.len() => r,
            // A panic (or a malformed answer): run each job alone so only the
            // culprit fails.
            _ => jobs
                .iter()
                .map(|j| {
                    catch_unwind(AssertUnwindSafe(|| backend.run(std::slice::from_ref(j))))
                        .map_err(|p| {
                            EngineError::Failed(format!("internal error ({})", panic_message(&*p)))
                        })
                        .and_then(|mut v| {
                            v.pop()
                                .unwrap_or_else(|| Err(EngineError::Failed("no result".into())))
                        })
                })
                .collect(),
        };
        let run_ms = started.elapsed().as_secs_f64() * 1000.0;
        record_batch(&results, batch_images);
        // Release the user's slot before answering: a client that gets its
        // result may submit its next job at once.
        for ((waiter, mut r), job) in waiting.into_iter().zip(results).zip(&jobs) {
            let outcome = r.as_ref().err().map_or("ok", EngineError::label);
            counter!(names::ENGINE_JOBS, "kind" => job.kind(), "outcome" => outcome).increment(1);
            if let Ok(raw) = &mut r {
                let t = &mut raw.times;
                t.batch_images = batch_images;
                t.queue_ms = (started - waiter.submitted).as_secs_f64() * 1000.0;
                record_ms(names::QUEUE_WAIT, t.queue_ms);
                t.worker_other_ms = (run_ms - t.worker_ms()).max(0.0);
            }
            waiter.answer(r);
        }
        if !refining.is_empty() {
            refining.step(shared, backend);
        }
    }
}

/// A batch's size and compute stages (the same for each of its jobs: the
/// first result that has them speaks for the batch).
fn record_batch(results: &[Result<RawOutput, EngineError>], images: usize) {
    histogram!(names::BATCH_IMAGES).record(images as f64);
    let Some(t) = results
        .iter()
        .find_map(|r| r.as_ref().ok())
        .map(|r| r.times)
    else {
        return;
    };
    for (stage, ms) in [
        ("clip", t.clip_text_ms),
        ("mapper", t.mapper_ms),
        ("generator", t.generator_ms),
        ("clip_image", t.clip_image_ms),
        ("resize", t.resize_ms),
    ] {
        histogram!(names::STAGE, "stage" => stage).record(ms / 1000.0);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EngineConfig, State};
    use super::*;
    use std::sync::{Condvar, Mutex};

    /// A job dropped unanswered, as a panic unwinding the worker drops the
    /// batch it held: its client hears why and its user is free again.
    #[test]
    fn a_job_dropped_by_a_panicking_worker_is_answered_and_freed() {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
            config: EngineConfig::default(),
            latent_shape: (2, 3),
        });
        shared.lock().per_user.insert(7, 1);
        let (tx, mut rx) = oneshot::channel();
        let job = InFlight {
            shared: shared.clone(),
            user: 7,
            submitted: Instant::now(),
            tx: Some(tx),
        };
        let unwound = catch_unwind(AssertUnwindSafe(move || {
            let _held = job;
            panic!("a bug in the worker loop");
        }));
        assert!(unwound.is_err());
        match rx.try_recv() {
            Ok(Err(EngineError::Failed(m))) => assert!(m.contains("try again"), "{m}"),
            Ok(Err(e)) => panic!("expected the restart's answer, got {e:?}"),
            Ok(Ok(_)) => panic!("expected the restart's answer, got an output"),
            Err(e) => panic!("the job was not answered: {e:?}"),
        }
        assert!(shared.lock().per_user.is_empty(), "the user's slot is free");
    }
}
