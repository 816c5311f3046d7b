//! Refinement jobs ([`Request::Refine`], quality mode) on the inference
//! thread: taken from the queue like any job, then run one step at a time.
//! Between two steps the worker serves the next batch of fast jobs, so a
//! refinement of 16 steps delays another user's imagine by one step, not
//! sixteen. Running refinements are stepped together (up to `max_batch`
//! images a step: one forward and backward pass), each reporting its
//! progress to its submitter; each is cancellable between steps.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use ::metrics::counter;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedSender;

use super::worker::{panic_message, InFlight};
use super::{Backend, EngineError, JobId, Queued, Request, Shared};
use crate::metrics as names;

/// A backend's own state of one refinement between steps (its latents,
/// optimiser moments and prompt), opaque to the engine.
pub type RefineState = Box<dyn Any + Send>;

/// How far a refinement is: sent to its submitter after each step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Steps done (1-based).
    pub step: usize,
    pub steps: usize,
    /// Mean CLIP score (100 x cosine) of the job's images before this step.
    pub score: f32,
}

/// One running refinement.
struct Active {
    id: JobId,
    job: InFlight,
    /// `None` only while its step runs.
    state: Option<RefineState>,
    images: usize,
    steps: usize,
    done: usize,
    started: Instant,
    progress: UnboundedSender<Progress>,
}

/// The refinements the worker is running, oldest first.
#[derive(Default)]
pub(super) struct Refinements {
    active: VecDeque<Active>,
}

impl Refinements {
    pub(super) fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// Start a refinement job taken from the queue; a refusal (or a
    /// panic) answers it at once.
    pub(super) fn begin<B: Backend>(&mut self, shared: &Arc<Shared>, q: Queued, backend: &mut B) {
        let Queued {
            id,
            user,
            submitted,
            request,
            tx,
            progress,
        } = q;
        let job = InFlight {
            shared: shared.clone(),
            user,
            submitted,
            tx: Some(tx),
        };
        let (images, steps) = match &request {
            Request::Refine { latents, steps, .. } => (latents.len(), *steps),
            _ => (1, 0),
        };
        let begun = catch_unwind(AssertUnwindSafe(|| backend.refine_begin(&request)))
            .unwrap_or_else(|p| {
                Err(EngineError::Failed(format!(
                    "internal error ({})",
                    panic_message(&*p)
                )))
            });
        match begun {
            Ok(state) => {
                shared.lock().refining.insert(id);
                self.active.push_back(Active {
                    id,
                    job,
                    state: Some(state),
                    images,
                    steps,
                    done: 0,
                    started: Instant::now(),
                    progress,
                });
                // Zero steps: the start latents as they are.
                self.finish_done(shared, backend);
            }
            Err(e) => {
                counter!(names::ENGINE_JOBS, "kind" => "refine", "outcome" => e.label())
                    .increment(1);
                job.answer(Err(e));
            }
        }
    }

    /// Answer every refinement with `e` (shutdown without draining).
    pub(super) fn fail_all(&mut self, shared: &Shared, e: EngineError) {
        for a in self.active.drain(..) {
            shared.lock().refining.remove(&a.id);
            a.job.answer(Err(e.clone()));
        }
    }

    /// Drop the refinements cancelled since the last step, answering them.
    fn drop_cancelled(&mut self, shared: &Shared) {
        let mut s = shared.lock();
        let cancelled: Vec<JobId> = s.cancelled.drain().collect();
        drop(s);
        for id in cancelled {
            if let Some(i) = self.active.iter().position(|a| a.id == id) {
                let a = self.active.remove(i).expect("index from position");
                shared.lock().refining.remove(&id);
                counter!(names::ENGINE_JOBS, "kind" => "refine", "outcome" => "cancelled")
                    .increment(1);
                a.job.answer(Err(EngineError::Cancelled));
            }
        }
    }

    /// One step of the oldest refinements that fit `max_batch` images
    /// together (at least one), which then go to the back: refinements
    /// take turns when more run than one pass holds.
    pub(super) fn step<B: Backend>(&mut self, shared: &Arc<Shared>, backend: &mut B) {
        self.drop_cancelled(shared);
        if self.active.is_empty() {
            return;
        }
        let max = shared.config.max_batch.max(1);
        let mut take = 0;
        let mut images = 0;
        for a in &self.active {
            if take > 0 && images + a.images > max {
                break;
            }
            images += a.images;
            take += 1;
        }
        let mut group: Vec<Active> = self.active.drain(..take).collect();
        let mut states: Vec<RefineState> = group
            .iter_mut()
            .map(|a| a.state.take().expect("state between steps"))
            .collect();
        let stepped = catch_unwind(AssertUnwindSafe(|| backend.refine_step(&mut states)))
            .unwrap_or_else(|p| {
                Err(EngineError::Failed(format!(
                    "internal error ({})",
                    panic_message(&*p)
                )))
            });
        match stepped {
            Ok(scores) if scores.len() == group.len() => {
                for ((a, st), sc) in group.iter_mut().zip(states).zip(scores) {
                    a.state = Some(st);
                    a.done += 1;
                    let score = sc.iter().sum::<f32>() / sc.len().max(1) as f32;
                    let _ = a.progress.send(Progress {
                        step: a.done,
                        steps: a.steps,
                        score,
                    });
                }
                self.active.extend(group);
                self.finish_done(shared, backend);
            }
            other => {
                let e = match other {
                    Err(e) => e,
                    Ok(_) => EngineError::Failed("the backend's step gave no scores".into()),
                };
                for a in group {
                    shared.lock().refining.remove(&a.id);
                    counter!(names::ENGINE_JOBS, "kind" => "refine", "outcome" => e.label())
                        .increment(1);
                    a.job.answer(Err(e.clone()));
                }
            }
        }
    }

    /// Render and answer the refinements that have taken all their steps.
    fn finish_done<B: Backend>(&mut self, shared: &Shared, backend: &mut B) {
        while let Some(i) = self.active.iter().position(|a| a.done >= a.steps) {
            let mut a = self.active.remove(i).expect("index from position");
            shared.lock().refining.remove(&a.id);
            let state = a.state.take().expect("state between steps");
            let r = catch_unwind(AssertUnwindSafe(|| backend.refine_finish(state)))
                .unwrap_or_else(|p| {
                    Err(EngineError::Failed(format!(
                        "internal error ({})",
                        panic_message(&*p)
                    )))
                })
                .map(|mut raw| {
                    raw.times.batch_images = a.images;
                    raw.times.queue_ms = (a.started - a.job.submitted).as_secs_f64() * 1000.0;
                    raw.times.worker_other_ms = a.started.elapsed().as_secs_f64() * 1000.0;
                    raw
                });
            let outcome = r.as_ref().err().map_or("ok", EngineError::label);
            counter!(names::ENGINE_JOBS, "kind" => "refine", "outcome" => outcome).increment(1);
            a.job.answer(r);
        }
    }
}
