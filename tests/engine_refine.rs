//! Refinement jobs in the engine with a fake backend whose first step
//! waits for the test: fast jobs are served between steps, progress
//! reaches the submitter, cancelling stops a refinement between steps.
//! The orderings are forced by that gate, not by timing; under a second.

use std::sync::{mpsc, Arc, Mutex};

use clip2gan::engine::*;

type Log = Arc<Mutex<Vec<String>>>;

/// Logs what it runs. Its first refinement step tells `started` and then
/// waits on `gate` (a message, or the sender dropped).
struct Gated {
    log: Log,
    started: mpsc::Sender<()>,
    gate: mpsc::Receiver<()>,
    steps: usize,
}

fn latent(v: f32) -> Latent {
    Latent {
        styles: 2,
        dim: 3,
        data: vec![v; 6],
    }
}

fn raw(v: f32) -> RawOutput {
    RawOutput {
        images: vec![image::RgbImage::new(1, 1)],
        latents: vec![latent(v)],
        animate: false,
        truncated_prompt: false,
        scores: None,
        times: JobTimes::default(),
    }
}

impl Backend for Gated {
    fn latent_shape(&self) -> (usize, usize) {
        (2, 3)
    }

    fn run(&mut self, batch: &[Request]) -> Vec<Result<RawOutput, EngineError>> {
        self.log
            .lock()
            .unwrap()
            .push(format!("run {}", batch[0].kind()));
        batch.iter().map(|_| Ok(raw(0.0))).collect()
    }

    fn refine_begin(&mut self, _job: &Request) -> Result<RefineState, EngineError> {
        self.log.lock().unwrap().push("begin".into());
        Ok(Box::new(0usize))
    }

    fn refine_step(&mut self, states: &mut [RefineState]) -> Result<Vec<Vec<f32>>, EngineError> {
        self.steps += 1;
        self.log
            .lock()
            .unwrap()
            .push(format!("step {}", self.steps));
        if self.steps == 1 {
            self.started.send(()).unwrap();
            let _ = self.gate.recv();
        }
        Ok(states
            .iter_mut()
            .map(|s| {
                let n = s.downcast_mut::<usize>().unwrap();
                *n += 1;
                vec![10.0 * *n as f32]
            })
            .collect())
    }

    fn refine_finish(&mut self, state: RefineState) -> Result<RawOutput, EngineError> {
        let n = *state.downcast::<usize>().unwrap();
        self.log.lock().unwrap().push("finish".into());
        Ok(raw(n as f32))
    }
}

/// An engine on [`Gated`]; its log, the "first step started" signal and
/// the gate that lets that step go on.
fn engine() -> (Engine, Log, mpsc::Receiver<()>, mpsc::Sender<()>) {
    let log: Log = Arc::default();
    let (started_tx, started) = mpsc::channel();
    let (gate, gate_rx) = mpsc::channel();
    let l = log.clone();
    let e = Engine::start(EngineConfig::default(), move || {
        Ok(Gated {
            log: l,
            started: started_tx,
            gate: gate_rx,
            steps: 0,
        })
    })
    .unwrap();
    (e, log, started, gate)
}

fn refine(steps: usize) -> Request {
    Request::Refine {
        latents: vec![latent(0.5)],
        prompt: "a smiling woman".into(),
        steps,
    }
}

fn imagine() -> Request {
    Request::Imagine {
        prompt: "an old man".into(),
        count: 1,
        seed: 1,
        truncation: None,
        candidates: 1,
    }
}

/// A fast job of another user, submitted while a refinement's first step
/// runs, is served right after that step, before the refinement's other
/// steps; the refinement then finishes with every step reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_job_submitted_during_a_refinement_finishes_first() {
    let (engine, log, started, gate) = engine();
    let mut slow = engine.submit(1, refine(3)).unwrap();
    let mut progress = slow.take_progress().unwrap();
    started.recv().unwrap();
    let fast = engine.submit(2, imagine()).unwrap();
    gate.send(()).unwrap();
    fast.wait().await.unwrap();
    let out = slow.wait().await.unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            "begin",
            "step 1",
            "run imagine",
            "step 2",
            "step 3",
            "finish"
        ]
    );
    assert_eq!(
        out.latents,
        vec![latent(3.0)],
        "the finished state's output"
    );
    let mut seen = Vec::new();
    while let Some(p) = progress.recv().await {
        seen.push((p.step, p.steps, p.score));
    }
    assert_eq!(seen, [(1, 3, 10.0), (2, 3, 20.0), (3, 3, 30.0)]);
}

/// Cancelling a running refinement stops it before its next step; its
/// user's slot is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_refinement_is_cancelled_between_steps() {
    let (engine, log, started, gate) = engine();
    let job = engine.submit(1, refine(5)).unwrap();
    let id = job.id;
    started.recv().unwrap();
    assert!(engine.cancel(id), "a running refinement can be cancelled");
    gate.send(()).unwrap();
    match job.wait().await {
        Err(EngineError::Cancelled) => {}
        other => panic!("expected Cancelled, got {:?}", other.map(|o| o.latents)),
    }
    assert_eq!(*log.lock().unwrap(), ["begin", "step 1"]);
    assert!(!engine.cancel(id), "a job that ended cannot be cancelled");
    // The slot is free: the same user's next job runs.
    engine.submit(1, imagine()).unwrap().wait().await.unwrap();
}

/// A backend without quality mode refuses a refinement with a reason, and
/// a bad refinement is refused at submit.
#[tokio::test]
async fn refinements_are_refused_where_they_cannot_run() {
    let e = Engine::start(EngineConfig::default(), || Ok(blank::Blank)).unwrap();
    let (styles, dim) = e.latent_shape();
    let req = Request::Refine {
        latents: vec![Latent {
            styles,
            dim,
            data: vec![0.0; styles * dim],
        }],
        prompt: "a face".into(),
        steps: 2,
    };
    match e.submit(1, req).unwrap().wait().await {
        Err(EngineError::InvalidRequest(m)) => assert!(m.contains("cannot refine"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|o| o.latents)),
    }
    let too_many = Request::Refine {
        latents: vec![],
        prompt: "a face".into(),
        steps: 1000,
    };
    match e.submit(1, too_many) {
        Err(EngineError::InvalidRequest(m)) => assert!(m.contains("at most"), "{m}"),
        other => panic!("expected a refusal, got {:?}", other.map(|h| h.id)),
    }
}

/// An engine whose memory limit cannot hold a refinement (the command
/// layer set `refinement_refused`) refuses one at submit with that reason,
/// and serves fast jobs as usual.
#[tokio::test]
async fn a_memory_limit_too_small_for_refinement_refuses_it_at_submit() {
    let why =
        "quality mode (refinement) is off on this server: one refinement step needs about 8.9 GB";
    let cfg = EngineConfig {
        refinement_refused: Some(why.into()),
        ..EngineConfig::default()
    };
    let e = Engine::start(cfg, || Ok(blank::Blank)).unwrap();
    let (styles, dim) = e.latent_shape();
    let req = Request::Refine {
        latents: vec![Latent {
            styles,
            dim,
            data: vec![0.0; styles * dim],
        }],
        prompt: "a face".into(),
        steps: 2,
    };
    match e.submit(1, req) {
        Err(EngineError::InvalidRequest(m)) => assert_eq!(m, why),
        other => panic!("expected a refusal, got {:?}", other.map(|h| h.id)),
    }
    assert!(e.submit(1, imagine()).unwrap().wait().await.is_ok());
}
