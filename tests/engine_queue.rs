//! The engine's queue mechanics with a fake backend: capacity, per-user
//! limits, cancellation, positions, batching, panics and shutdown.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use clip2gan::engine::*;

/// Prompts of each batch the fake ran, in order.
type Batches = Arc<Mutex<Vec<Vec<String>>>>;

/// Answers each imagine job with one 1x1 image; "panic" panics, and while
/// `gate` is set each batch waits for a message before running.
struct Fake {
    batches: Batches,
    gate: Option<mpsc::Receiver<()>>,
}

impl Backend for Fake {
    fn latent_shape(&self) -> (usize, usize) {
        (2, 3)
    }

    fn run(&mut self, batch: &[Request]) -> Vec<Result<RawOutput, EngineError>> {
        if let Some(g) = &self.gate {
            let _ = g.recv_timeout(Duration::from_secs(10));
        }
        let prompts: Vec<String> = batch
            .iter()
            .map(|j| match j {
                Request::Imagine { prompt, .. } => prompt.clone(),
                Request::Edit { instruction, .. } => format!("edit:{instruction}"),
                _ => "other".into(),
            })
            .collect();
        self.batches.lock().unwrap().push(prompts.clone());
        prompts
            .iter()
            .map(|p| {
                if p == "panic" {
                    panic!("boom");
                }
                Ok(RawOutput {
                    images: vec![image::RgbImage::new(1, 1)],
                    latents: vec![latent(2, 3, 0.5)],
                    animate: false,
                    truncated_prompt: false,
                    scores: None,
                    times: JobTimes::default(),
                })
            })
            .collect()
    }
}

/// A `styles x dim` latent filled with `v`.
fn latent(styles: usize, dim: usize, v: f32) -> Latent {
    Latent {
        styles,
        dim,
        data: vec![v; styles * dim],
    }
}

fn engine(cfg: EngineConfig, gated: bool) -> (Engine, Batches, Option<mpsc::Sender<()>>) {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let b = batches.clone();
    let e = Engine::start(cfg, move || {
        Ok(Fake {
            batches: b,
            gate: gated.then_some(rx),
        })
    })
    .unwrap();
    (e, batches, gated.then_some(tx))
}

fn imagine(p: &str) -> Request {
    Request::Imagine {
        prompt: p.into(),
        count: 1,
        seed: 0,
        truncation: None,
        candidates: 1,
    }
}

fn cfg(capacity: usize, max_batch: usize, wait_ms: u64, per_user: usize) -> EngineConfig {
    EngineConfig {
        queue_capacity: capacity,
        max_batch,
        max_wait_ms: wait_ms,
        // The whole wait, so that what shares a batch does not depend on
        // how the test thread is scheduled between submits.
        settle_ms: wait_ms,
        per_user_limit: per_user,
        ..Default::default()
    }
}

/// Wait until the worker has taken the head job (the queue shrank).
fn wait_queue_len(e: &Engine, n: usize) {
    // A guard against a hang, not a race: the worker takes the job at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while e.queue_len() != n {
        assert!(
            std::time::Instant::now() < deadline,
            "queue never reached {n}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Wait until a shutdown requested on another thread has begun.
fn wait_shutting_down(e: &Engine) {
    while !e.is_shutting_down() {
        std::thread::yield_now();
    }
}

#[tokio::test]
async fn full_queue_rejects_at_once_and_positions_are_reported() {
    let (e, _, gate) = engine(cfg(2, 1, 0, 10), true);
    let a = e.submit(1, imagine("a")).unwrap();
    wait_queue_len(&e, 0); // a is running (held by the gate)
    let b = e.submit(2, imagine("b")).unwrap();
    let c = e.submit(3, imagine("c")).unwrap();
    assert_eq!(e.position(a.id), None);
    assert_eq!(e.position(b.id), Some(0));
    assert_eq!(e.position(c.id), Some(1));
    assert_eq!(
        e.submit(4, imagine("d")).err(),
        Some(EngineError::QueueFull { capacity: 2 })
    );
    let gate = gate.unwrap();
    for _ in 0..3 {
        gate.send(()).unwrap();
    }
    for h in [a, b, c] {
        assert_eq!(h.wait().await.unwrap().images.len(), 1);
    }
}

#[tokio::test]
async fn cancellation_removes_a_queued_job() {
    let (e, batches, gate) = engine(cfg(8, 1, 0, 10), true);
    let a = e.submit(1, imagine("a")).unwrap();
    wait_queue_len(&e, 0);
    let b = e.submit(1, imagine("b")).unwrap();
    let c = e.submit(2, imagine("c")).unwrap();
    assert!(e.cancel(b.id));
    assert!(!e.cancel(b.id), "cancelling twice");
    assert!(!e.cancel(a.id), "a running job is not cancelled");
    let gate = gate.unwrap();
    gate.send(()).unwrap();
    gate.send(()).unwrap();
    assert_eq!(b.wait().await.err(), Some(EngineError::Cancelled));
    a.wait().await.unwrap();
    c.wait().await.unwrap();
    let seen: Vec<String> = batches.lock().unwrap().iter().flatten().cloned().collect();
    assert_eq!(seen, vec!["a", "c"], "the cancelled job never ran");
}

#[tokio::test]
async fn per_user_limit_holds_and_frees_up() {
    let (e, _, gate) = engine(cfg(8, 1, 0, 1), true);
    let a = e.submit(7, imagine("a")).unwrap();
    assert_eq!(
        e.submit(7, imagine("b")).err(),
        Some(EngineError::UserBusy { limit: 1 })
    );
    let other = e.submit(8, imagine("c")).unwrap();
    let gate = gate.unwrap();
    gate.send(()).unwrap();
    gate.send(()).unwrap();
    a.wait().await.unwrap();
    other.wait().await.unwrap();
    // Done jobs no longer count.
    let again = e.submit(7, imagine("d")).unwrap();
    gate.send(()).unwrap();
    again.wait().await.unwrap();
}

#[tokio::test]
async fn concurrent_jobs_of_different_users_share_a_batch() {
    // One prompt per user, all submitted before any is awaited.
    async fn each_user_once(max_batch: usize, prompts: &[&str]) -> Batches {
        let (e, batches, _) = engine(cfg(16, max_batch, 300, 2), false);
        let hs: Vec<_> = prompts
            .iter()
            .enumerate()
            .map(|(u, p)| e.submit(u as u64, imagine(p)).unwrap())
            .collect();
        for h in hs {
            h.wait().await.unwrap();
        }
        batches
    }
    let batches = each_user_once(4, &["a", "b", "c"]).await;
    assert_eq!(batches.lock().unwrap().clone(), vec![vec!["a", "b", "c"]]);
    // Batching off: one job per pass.
    let batches = each_user_once(1, &["a", "b"]).await;
    assert_eq!(batches.lock().unwrap().len(), 2);
}

/// A lone job does not sit out the batching wait: it ends once no job has
/// arrived for `settle_ms`. (The wait is ten minutes; the guard, far below
/// it and far above the settle time, only keeps a regression from hanging.)
#[tokio::test]
async fn a_lone_job_runs_once_arrivals_settle() {
    let (e, batches, _) = engine(
        EngineConfig {
            settle_ms: 1,
            ..cfg(16, 8, 600_000, 2)
        },
        false,
    );
    let h = e.submit(1, imagine("alone")).unwrap();
    tokio::time::timeout(Duration::from_secs(120), h.wait())
        .await
        .expect("the lone job waited for the whole max_wait")
        .unwrap();
    assert_eq!(batches.lock().unwrap().clone(), vec![vec!["alone"]]);
}

/// Stage times come back with each output and add up to its total.
#[tokio::test]
async fn outputs_carry_their_stage_times() {
    let (e, _, _) = engine(cfg(16, 4, 0, 2), false);
    let out = e.submit(1, imagine("a")).unwrap().wait().await.unwrap();
    let t = out.times;
    assert_eq!(t.batch_images, 1);
    let parts = t.queue_ms + t.worker_ms() + t.encode_ms + t.handoff_ms;
    assert!(t.total_ms > 0.0 && t.encode_ms > 0.0);
    assert!(
        (parts - t.total_ms).abs() < 1e-6 * t.total_ms.max(1.0),
        "{t:?}"
    );
}

#[tokio::test]
async fn a_panicking_job_fails_alone_and_the_worker_keeps_serving() {
    let (e, _, _) = engine(cfg(16, 4, 200, 2), false);
    let bad = e.submit(1, imagine("panic")).unwrap();
    let good = e.submit(2, imagine("fine")).unwrap();
    let err = bad.wait().await.err().unwrap();
    assert!(
        matches!(&err, EngineError::Failed(m) if m.contains("boom")),
        "{err:?}"
    );
    good.wait().await.unwrap();
    let next = e.submit(1, imagine("next")).unwrap();
    next.wait().await.unwrap();
}

#[tokio::test]
async fn bad_requests_are_refused_and_outputs_can_be_edited() {
    let (e, _, _) = engine(cfg(16, 1, 0, 2), false);
    assert!(matches!(
        e.submit(1, imagine("   ")),
        Err(EngineError::InvalidRequest(_))
    ));
    let edit = |latent, strength| Request::Edit {
        latent,
        instruction: "add smile".into(),
        strength,
        layers: Layers::All,
    };
    assert!(matches!(
        e.submit(1, edit(latent(3, 3, 0.0), 1.0)),
        Err(EngineError::InvalidRequest(_))
    ));
    assert!(matches!(
        e.submit(1, edit(latent(2, 3, 0.0), 9.0)),
        Err(EngineError::InvalidRequest(_))
    ));
    // A latent the engine produced goes back to it by value.
    let out = e.submit(1, imagine("x")).unwrap().wait().await.unwrap();
    let produced = out.latents.into_iter().next().unwrap();
    e.submit(1, edit(produced, 1.0))
        .unwrap()
        .wait()
        .await
        .unwrap();
}

/// Job a running (held by the gate), job b queued, then a shutdown (draining
/// or not) from another thread; the gate opens `opens` times once the
/// shutdown is under way, so b is still queued when it is requested
/// (whatever the machine's load). Returns once the worker has stopped.
fn shut_down_with_one_queued(
    drain: bool,
    opens: usize,
) -> (Arc<Engine>, Batches, JobHandle, JobHandle) {
    let (e, batches, gate) = engine(cfg(8, 1, 0, 10), true);
    let a = e.submit(1, imagine("a")).unwrap();
    wait_queue_len(&e, 0);
    let b = e.submit(2, imagine("b")).unwrap();
    let gate = gate.unwrap();
    let e = Arc::new(e);
    let e2 = e.clone();
    let stopper = std::thread::spawn(move || e2.shutdown(drain));
    wait_shutting_down(&e);
    for _ in 0..opens {
        gate.send(()).unwrap();
    }
    stopper.join().unwrap();
    (e, batches, a, b)
}

#[tokio::test]
async fn shutdown_answers_queued_jobs() {
    let (e, _, a, b) = shut_down_with_one_queued(false, 1);
    a.wait().await.unwrap();
    assert_eq!(b.wait().await.err(), Some(EngineError::ShuttingDown));
    assert_eq!(
        e.submit(3, imagine("c")).err(),
        Some(EngineError::ShuttingDown)
    );
}

#[tokio::test]
async fn draining_shutdown_runs_queued_jobs() {
    let (_, batches, a, b) = shut_down_with_one_queued(true, 2);
    a.wait().await.unwrap();
    b.wait().await.unwrap();
    assert_eq!(batches.lock().unwrap().len(), 2);
}

/// Background work whose `warming` (backend code the worker calls outside
/// any job) panics its first `panics` times after start.
struct PanicsInWarming {
    calls: Arc<Mutex<usize>>,
    panics: usize,
}

impl Backend for PanicsInWarming {
    fn latent_shape(&self) -> (usize, usize) {
        (2, 3)
    }

    fn run(&mut self, batch: &[Request]) -> Vec<Result<RawOutput, EngineError>> {
        batch
            .iter()
            .map(|_| {
                Ok(RawOutput {
                    images: vec![image::RgbImage::new(1, 1)],
                    latents: vec![latent(2, 3, 0.5)],
                    animate: false,
                    truncated_prompt: false,
                    scores: None,
                    times: JobTimes::default(),
                })
            })
            .collect()
    }

    fn idle(&mut self) -> bool {
        *self.calls.lock().unwrap() <= self.panics
    }

    fn warming(&self) -> Option<Warmup> {
        let n = {
            let mut n = self.calls.lock().unwrap();
            *n += 1;
            *n
        };
        // Call 1 is Engine::start's, before the worker loop.
        if n > 1 && n <= self.panics + 1 {
            panic!("warming broke ({n})");
        }
        None
    }
}

#[tokio::test]
async fn a_panicking_inference_thread_is_restarted_and_serves_on() {
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let e = Engine::start(cfg(16, 4, 0, 2), move || {
        Ok(PanicsInWarming {
            calls: c,
            panics: 3,
        })
    })
    .unwrap();
    // Submitted while the loop dies and restarts: served all the same.
    let first = e.submit(1, imagine("during")).unwrap();
    first.wait().await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while *calls.lock().unwrap() < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the loop was not restarted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for user in 1..=3 {
        e.submit(user, imagine("after"))
            .unwrap()
            .wait()
            .await
            .unwrap();
    }
    assert!(!e.is_shutting_down());
    e.shutdown(true);
}
