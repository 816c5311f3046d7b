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
pub mod growing;
pub mod types;

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ::metrics::{counter, gauge, histogram};
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::metrics::{self as names, record_ms};

pub use backend::{Backend, PipelineBackend, RawOutput};
pub use growing::GrowingBackend;
pub use types::*;

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
            max_batch: 8,
            max_wait_ms: 25,
            settle_ms: 3,
            per_user_limit: 2,
            output_size: 512,
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
        *s.per_user.entry(user).or_default() += 1;
        let submitted = Instant::now();
        s.queue.push_back(Queued {
            id,
            user,
            submitted,
            request,
            tx,
        });
        gauge!(names::QUEUE_DEPTH).set(s.queue.len() as f64);
        drop(s);
        self.shared.wake.notify_all();
        Ok(JobHandle { id, rx, submitted })
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

    /// Cancel a queued job (running jobs finish). True if it was cancelled.
    pub fn cancel(&self, id: JobId) -> bool {
        let mut s = self.shared.lock();
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

/// Cheap checks done at submit time, so a bad request never joins a batch.
fn validate(r: &Request, shape: (usize, usize)) -> Result<(), EngineError> {
    let bad = |m: String| Err(EngineError::InvalidRequest(m));
    let check_latent = |d: &Latent| match d {
        d if (d.styles, d.dim) != shape || d.data.len() != d.styles * d.dim => bad(format!(
            "the latent has shape {}x{} ({} values); this generator needs {}x{}",
            d.styles,
            d.dim,
            d.data.len(),
            shape.0,
            shape.1
        )),
        d if d.data.iter().any(|v| !v.is_finite()) => {
            bad("the latent has NaN or infinite values".into())
        }
        _ => Ok(()),
    };
    match r {
        Request::Imagine {
            prompt,
            count,
            candidates,
            truncation,
            ..
        } => {
            limits::check_prompt(prompt).or_else(bad)?;
            limits::check_count(*count, *candidates).or_else(bad)?;
            if let Some(t) = truncation {
                crate::generator::check_truncation(*t)
                    .map_err(|e| EngineError::InvalidRequest(e.to_string()))?;
            }
            Ok(())
        }
        Request::Edit {
            latent,
            instruction,
            strength,
            ..
        } => {
            limits::check_instruction(instruction).or_else(bad)?;
            limits::check_strength(*strength).or_else(bad)?;
            check_latent(latent)
        }
        Request::Invert { image } => {
            if image.is_empty() {
                return bad("the image is empty".into());
            }
            Ok(())
        }
        Request::Variations {
            latent,
            count,
            amount,
            ..
        } => {
            limits::check_variations(*count, *amount).or_else(bad)?;
            check_latent(latent)
        }
        Request::Interpolate { a, b, frames } => {
            limits::check_frames(*frames).or_else(bad)?;
            check_latent(a)?;
            check_latent(b)
        }
        Request::Render { latents } => {
            limits::check_render(latents.len()).or_else(bad)?;
            latents.iter().try_for_each(check_latent)
        }
    }
}

/// What the worker does next.
enum Next {
    Batch(Vec<Queued>),
    /// No job waits and the backend has background work.
    Idle,
    Stop,
}

/// Take the next batch: the oldest job, plus (if batchable) later jobs of
/// the same kind up to `max_batch` images, waiting up to `max_wait` for them.
/// With an empty queue: [`Next::Idle`] if `idle_work`, else wait for a job.
fn next_batch(shared: &Shared, idle_work: bool) -> Next {
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

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
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
fn serve<B: Backend>(shared: &Arc<Shared>, mut backend: B) {
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
struct InFlight {
    shared: Arc<Shared>,
    user: UserId,
    submitted: Instant,
    tx: Option<oneshot::Sender<Result<RawOutput, EngineError>>>,
}

impl InFlight {
    fn answer(mut self, r: Result<RawOutput, EngineError>) {
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
    loop {
        let batch = match next_batch(shared, idle_work) {
            Next::Stop => break,
            Next::Batch(b) => b,
            Next::Idle => {
                // A panic in background work ends that work, not the worker.
                idle_work = catch_unwind(AssertUnwindSafe(|| backend.idle())).unwrap_or(false);
                shared.lock().warming = backend.warming();
                continue;
            }
        };
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
    use super::*;

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
