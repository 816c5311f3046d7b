//! What the bot needs of image generation, whoever does it: submit a job,
//! ask its queue position, cancel it, wait for its output, and close.
//!
//! Two implementations: the in-process [`Engine`] (one machine: the default)
//! and [`crate::queue::QueueClient`] (jobs published on Redis Streams for
//! GPU workers elsewhere). The bot holds an `Arc<dyn Inference>` and cannot
//! tell them apart; both answer in the engine's plain types.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::engine::{Engine, EngineError, JobId, Output, Progress, Request, UserId};

/// The future of one job's output.
pub type Waiting = Pin<Box<dyn Future<Output = Result<Output, EngineError>> + Send>>;

/// A submitted job: await [`Job::wait`] for its output.
pub struct Job {
    pub id: JobId,
    waiting: Waiting,
    /// A refinement's steps as they are done, where the service reports them.
    pub progress: Option<tokio::sync::mpsc::UnboundedReceiver<Progress>>,
}

impl Job {
    pub fn new(id: JobId, waiting: Waiting) -> Self {
        Job {
            id,
            waiting,
            progress: None,
        }
    }

    pub async fn wait(self) -> Result<Output, EngineError> {
        self.waiting.await
    }
}

#[async_trait]
pub trait Inference: Send + Sync + 'static {
    /// Queue a job. Fails at once when the request is invalid, the queue is
    /// full, the user has too many jobs, or the service is closing or
    /// unreachable; each error is written for the user.
    async fn submit(&self, user: UserId, request: Request) -> Result<Job, EngineError>;

    /// Jobs ahead of `id`; `None` once it runs or is done.
    async fn position(&self, id: JobId) -> Option<usize>;

    /// Cancel a queued job (running jobs finish). True if it was cancelled.
    async fn cancel(&self, id: JobId) -> bool;

    /// Stop taking jobs; jobs still queued here are answered
    /// [`EngineError::ShuttingDown`]. Returns when that is done.
    async fn close(self: Arc<Self>);
}

#[async_trait]
impl Inference for Engine {
    async fn submit(&self, user: UserId, request: Request) -> Result<Job, EngineError> {
        let mut handle = Engine::submit(self, user, request)?;
        let id = handle.id;
        let progress = handle.take_progress();
        let mut job = Job::new(id, Box::pin(handle.wait()));
        job.progress = progress;
        Ok(job)
    }

    async fn position(&self, id: JobId) -> Option<usize> {
        Engine::position(self, id)
    }

    async fn cancel(&self, id: JobId) -> bool {
        Engine::cancel(self, id)
    }

    async fn close(self: Arc<Self>) {
        // Joining the inference thread blocks: not on the async threads.
        let _ = tokio::task::spawn_blocking(move || self.shutdown(false)).await;
    }
}
