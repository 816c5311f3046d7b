//! The inference engine: one worker thread owns the models and the device;
//! clients submit jobs from async code and await the result.
//!
//! - A bounded FIFO queue; a full queue rejects at once ([`EngineError::QueueFull`]).
//! - A per-user limit on jobs queued or running.
//! - Dynamic batching: the worker takes the oldest job, waits up to
//!   `max_wait` for more jobs of the same kind (imagine with imagine, edit
//!   with edit) from any user, and runs up to `max_batch` images in one pass.
//!   The wait ends early once no job has arrived for `settle_ms`: jobs
//!   submitted together arrive within microseconds, and a lone job should
//!   not sit out the whole wait while the cores idle.
//! - Queue positions can be asked, queued jobs cancelled.
//! - A panic or error inside a batch is retried job by job, so it fails only
//!   the job that caused it; the worker keeps serving. A panic that escapes
//!   the worker loop (backend code outside a job, an engine bug) fails the
//!   jobs it held and restarts the loop on the same thread and models.
//! - Shutdown either drains the queue or answers every queued job with
//!   [`EngineError::ShuttingDown`].
//! - PNG/GIF encoding happens in the awaiting task (a blocking thread), not
//!   on the inference thread.
//! - While no job waits, the worker gives the backend short pieces of
//!   background work ([`Backend::idle`]); while the backend is warming up
//!   (no mapper yet), jobs are refused at once with its progress.

pub mod backend;
pub mod blank;
pub mod budget;
pub mod growing;
pub mod refine;
mod refine_backend;
mod schedule;
pub mod types;
mod validate;
mod worker;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::metrics::{gauge, histogram};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::{self as names, record_ms};

pub use backend::{Backend, PipelineBackend, RawOutput};
pub use growing::GrowingBackend;
pub use refine::{Progress, RefineState};
pub use types::*;
use validate::validate;
use worker::serve;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// Jobs waiting at most; more are rejected.
    pub queue_capacity: usize,
    /// Images per forward pass (1 turns batching off).
    pub max_batch: usize,
    /// How long the oldest job may wait for others to join its batch.
    pub max_wait_ms: u64,
    /// That wait ends once no job of the batch's kind has arrived for this
    /// long (ms); `max_wait_ms` or more: wait the whole `max_wait_ms`.
    pub settle_ms: u64,
    /// Jobs one user may have queued or running.
    pub per_user_limit: usize,
    /// Side of delivered images in pixels.
    pub output_size: usize,
    /// A bound on the process's resident memory ("1GiB", "900MB"): the
    /// command layer lowers `max_batch` and `generator.high_res_chunk` to
    /// fit it ([`budget`]) and refuses to start when the models alone do
    /// not fit. Unset: no bound (the settings as they are).
    pub memory_limit: Option<String>,
    /// Set by the command layer when `memory_limit` cannot hold a
    /// refinement (quality mode): why, said to whoever asks for one. Not a
    /// setting of the file.
    #[serde(skip)]
    pub refinement_refused: Option<String>,
    /// Accepted and ignored: the engine once kept latents for follow-up
    /// requests; clients now send them by value (older configs still load).
    pub latent_cache: serde::de::IgnoredAny,
}

impl EngineConfig {
    pub fn validate(&self) -> crate::error::Result<()> {
        let bad = |m: String| Err(crate::error::Error::Config(m));
        if self.queue_capacity == 0 || self.max_batch == 0 || self.per_user_limit == 0 {
            return bad(
                "engine.queue_capacity, max_batch and per_user_limit must be at least 1".into(),
            );
        }
        if let Some(l) = &self.memory_limit {
            budget::parse_bytes(l)
                .map_err(|e| crate::error::Error::Config(format!("engine.memory_limit = {e}")))?;
        }
        for (name, d) in self.durations() {
            limits::check_wait(name, d).or_else(bad)?;
        }
        Ok(())
    }

    /// The waits these settings make, by name (checked by `validate`).
    pub fn durations(&self) -> Vec<(&'static str, Duration)> {
        vec![
            (
                "engine.max_wait_ms",
                Duration::from_millis(self.max_wait_ms),
            ),
            ("engine.settle_ms", Duration::from_millis(self.settle_ms)),
        ]
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            queue_capacity: 64,
            max_batch: 4,
            max_wait_ms: 25,
            settle_ms: 3,
            per_user_limit: 2,
            output_size: 512,
            memory_limit: None,
            refinement_refused: None,
            latent_cache: serde::de::IgnoredAny,
        }
    }
}

struct Queued {
    id: JobId,
    user: UserId,
    submitted: Instant,
    request: Request,
    tx: oneshot::Sender<Result<RawOutput, EngineError>>,
    /// Refinement steps as they are done (other jobs send nothing).
    progress: mpsc::UnboundedSender<Progress>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Queued>,
    per_user: HashMap<UserId, usize>,
    next_id: u64,
    shutting_down: bool,
    drain: bool,
    /// The backend's warm-up progress, as the worker last saw it.
    warming: Option<Warmup>,
    /// Refinements the worker is running (out of the queue, between steps).
    refining: HashSet<JobId>,
    /// Of those, the ones cancelled: the worker drops them before its next step.
    cancelled: HashSet<JobId>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    config: EngineConfig,
    latent_shape: (usize, usize),
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The lock is never held across model code, so poisoning means a bug
        // in this module; keep serving with the data as it is.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn finish(&self, user: UserId) {
        let mut s = self.lock();
        if let Some(n) = s.per_user.get_mut(&user) {
            *n -= 1;
            if *n == 0 {
                s.per_user.remove(&user);
            }
        }
    }
}

pub struct Engine {
    shared: Arc<Shared>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

/// A submitted job: await [`JobHandle::wait`] for its output.
pub struct JobHandle {
    pub id: JobId,
    rx: oneshot::Receiver<Result<RawOutput, EngineError>>,
    submitted: Instant,
    progress: Option<mpsc::UnboundedReceiver<Progress>>,
}

impl Engine {
    /// Start the worker thread; `make_backend` runs on it (models are loaded
    /// where they are used). Fails if the backend cannot be built.
    pub fn start<B, F>(config: EngineConfig, make_backend: F) -> crate::error::Result<Engine>
    where
        B: Backend,
        F: FnOnce() -> crate::error::Result<B> + Send + 'static,
    {
        config.validate()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let config2 = config.clone();
        let handle = std::thread::Builder::new()
            .name("clip2gan-inference".into())
            .spawn(move || {
                let backend = match make_backend() {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let shared = Arc::new(Shared {
                    state: Mutex::new(State {
                        warming: backend.warming(),
                        ..State::default()
                    }),
                    wake: Condvar::new(),
                    config: config2,
                    latent_shape: backend.latent_shape(),
                });
                let _ = ready_tx.send(Ok(shared.clone()));
                serve(&shared, backend);
            })
            .map_err(|e| {
                crate::error::Error::Config(format!("cannot start the inference thread: {e}"))
            })?;
        let shared = ready_rx.recv().map_err(|_| {
            crate::error::Error::Config("the inference thread died while starting".into())
        })??;
        Ok(Engine {
            shared,
            worker: Mutex::new(Some(handle)),
        })
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// (styles, dim) of the latents this engine produces and accepts.
    pub fn latent_shape(&self) -> (usize, usize) {
        self.shared.latent_shape
    }

    /// Queue a job. Fails at once when the request is invalid, the queue is
    /// full, the user has too many jobs, or the engine is shutting down.
    pub fn submit(&self, user: UserId, request: Request) -> Result<JobHandle, EngineError> {
        validate(&request, self.shared.latent_shape)?;
        if let (Request::Refine { .. }, Some(why)) =
            (&request, &self.shared.config.refinement_refused)
        {
            return Err(EngineError::InvalidRequest(why.clone()));
        }
        let mut s = self.shared.lock();
        if s.shutting_down {
            return Err(EngineError::ShuttingDown);
        }
        if let Some(w) = s.warming {
            return Err(EngineError::WarmingUp(w));
        }
        // The user's own limit first: "wait for your job" is the accurate
        // answer for them even when the queue happens to be full too.
        let limit = self.shared.config.per_user_limit;
        if s.per_user.get(&user).copied().unwrap_or(0) >= limit {
            return Err(EngineError::UserBusy { limit });
        }
        if s.queue.len() >= self.shared.config.queue_capacity {
            return Err(EngineError::QueueFull {
                capacity: self.shared.config.queue_capacity,
            });
        }
        s.next_id += 1;
        let id = JobId(s.next_id);
        let (tx, rx) = oneshot::channel();
        let (progress, progress_rx) = mpsc::unbounded_channel();
        *s.per_user.entry(user).or_default() += 1;
        let submitted = Instant::now();
        s.queue.push_back(Queued {
            id,
            user,
            submitted,
            request,
            tx,
            progress,
        });
        gauge!(names::QUEUE_DEPTH).set(s.queue.len() as f64);
        drop(s);
        self.shared.wake.notify_all();
        Ok(JobHandle {
            id,
            rx,
            submitted,
            progress: Some(progress_rx),
        })
    }

    /// Jobs ahead of `id` in the queue; `None` once it runs or is done.
    pub fn position(&self, id: JobId) -> Option<usize> {
        self.shared.lock().queue.iter().position(|q| q.id == id)
    }

    pub fn queue_len(&self) -> usize {
        self.shared.lock().queue.len()
    }

    /// `Some` while the backend warms up (jobs are refused meanwhile).
    pub fn warming(&self) -> Option<Warmup> {
        self.shared.lock().warming
    }

    /// Whether [`Engine::shutdown`] has been called (new jobs are refused).
    pub fn is_shutting_down(&self) -> bool {
        self.shared.lock().shutting_down
    }

    /// Cancel a queued job or a running refinement (other running jobs
    /// finish; a refinement stops before its next step). True if it was
    /// cancelled.
    pub fn cancel(&self, id: JobId) -> bool {
        let mut s = self.shared.lock();
        if s.refining.contains(&id) {
            s.cancelled.insert(id);
            return true;
        }
        let Some(i) = s.queue.iter().position(|q| q.id == id) else {
            return false;
        };
        let q = s.queue.remove(i).expect("index from position");
        gauge!(names::QUEUE_DEPTH).set(s.queue.len() as f64);
        drop(s);
        self.shared.finish(q.user);
        let _ = q.tx.send(Err(EngineError::Cancelled));
        true
    }

    /// Stop taking jobs. With `drain`, queued jobs still run; otherwise each
    /// is answered with [`EngineError::ShuttingDown`]. Returns when the
    /// worker has stopped.
    pub fn shutdown(&self, drain: bool) {
        {
            let mut s = self.shared.lock();
            s.shutting_down = true;
            s.drain = drain;
        }
        self.shared.wake.notify_all();
        if let Some(h) = self.worker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.shutdown(false);
    }
}

impl JobHandle {
    /// The job's refinement progress, once (a refinement sends one
    /// [`Progress`] per step; the channel closes when the job ends).
    pub fn take_progress(&mut self) -> Option<mpsc::UnboundedReceiver<Progress>> {
        self.progress.take()
    }

    /// Wait for the result; images are encoded (PNG, or GIF for animations)
    /// on a blocking thread.
    pub async fn wait(self) -> Result<Output, EngineError> {
        let raw = self.rx.await.map_err(|_| EngineError::ShuttingDown)??;
        let RawOutput {
            images,
            latents,
            animate,
            truncated_prompt,
            scores,
            mut times,
        } = raw;
        let (images, encode_ms) = tokio::task::spawn_blocking(move || {
            let t0 = Instant::now();
            encode(&images, animate).map(|i| (i, t0.elapsed().as_secs_f64() * 1000.0))
        })
        .await
        .map_err(|e| EngineError::Failed(format!("encoding task failed: {e}")))??;
        times.encode_ms = encode_ms;
        times.total_ms = self.submitted.elapsed().as_secs_f64() * 1000.0;
        histogram!(names::STAGE, "stage" => "encode").record(encode_ms / 1000.0);
        record_ms(names::ENGINE_JOB, times.total_ms);
        times.handoff_ms =
            (times.total_ms - times.queue_ms - times.worker_ms() - times.encode_ms).max(0.0);
        Ok(Output {
            images,
            latents,
            truncated_prompt,
            scores,
            times,
        })
    }
}

fn encode(images: &[image::RgbImage], animate: bool) -> Result<Vec<Vec<u8>>, EngineError> {
    let fail =
        |e: &dyn std::fmt::Display| EngineError::Failed(format!("encoding the image failed: {e}"));
    if !animate {
        return images
            .iter()
            .map(|i| crate::image_io::encode_png(i).map_err(|e| fail(&e)))
            .collect();
    }
    let mut buf = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new_with_speed(&mut buf, 10);
        enc.set_repeat(image::codecs::gif::Repeat::Infinite)
            .map_err(|e| fail(&e))?;
        for img in images {
            let rgba = image::DynamicImage::ImageRgb8(img.clone()).to_rgba8();
            let frame =
                image::Frame::from_parts(rgba, 0, 0, image::Delay::from_numer_denom_ms(100, 1));
            enc.encode_frame(frame).map_err(|e| fail(&e))?;
        }
    }
    Ok(vec![buf])
}
