//! The Redis queue, timed, against a redis-server of its own on 127.0.0.1
//! (AOF on, as deployed):
//!
//! 1. Latency the queue adds: one client, jobs one after the other, on an
//!    instant backend (so only the bookkeeping is measured), submit to
//!    output ready in process vs through `QueueClient` and one worker.
//! 2. Throughput: `--clients` clients on the real pipeline
//!    (`clip2gan bench engine`'s: MobileStyleGAN, a random ViT-B/32-shaped
//!    CLIP and mapper, the settings of `config.toml`), in process, then
//!    through the queue with 1 and 2 workers in this process (each worker
//!    its own engine; on one machine they share its cores).
//!
//!     cargo bench --locked --bench queue [-- --jobs 200 --clients 8 --images 32]
//!
//! A benchmark, not a test: it asserts only that every job succeeded.

#[path = "../tests/redis_server/mod.rs"]
mod redis_server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clip2gan::engine::blank::Blank;
use clip2gan::engine::{Engine, EngineConfig};
use clip2gan::inference::Inference;
use clip2gan::queue::{worker, QueueClient, QueueConfig};
use serde_json::json;

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

/// `clients` clients, `jobs` jobs each one after the other: latencies (ms,
/// sorted) and images per second.
async fn clients(inf: Arc<dyn Inference>, clients: usize, jobs: usize) -> (Vec<f64>, f64) {
    /// One client's jobs, each once the last one's image is back: ms each.
    async fn client(inf: Arc<dyn Inference>, c: usize, jobs: usize) -> Vec<f64> {
        let mut ms = Vec::new();
        for j in 0..jobs {
            let t = Instant::now();
            let job = inf
                .submit(c as u64, clip2gan::bench::bench_request(c, j))
                .await
                .expect("submitted");
            job.wait().await.expect("an image");
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms
    }
    let t0 = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        tasks.spawn(client(inf.clone(), c, jobs));
    }
    let mut ms = Vec::new();
    while let Some(done) = tasks.join_next().await {
        ms.extend(done.unwrap());
    }
    let rate = ms.len() as f64 / t0.elapsed().as_secs_f64();
    ms.sort_by(f64::total_cmp);
    (ms, rate)
}

fn queue_config(redis: &redis_server::Redis, prefix: &str) -> QueueConfig {
    QueueConfig {
        url: redis.url(),
        prefix: prefix.into(),
        per_user_limit: 4,
        ..Default::default()
    }
}

fn spawn_worker(cfg: QueueConfig, engine: Arc<Engine>) -> tokio::sync::oneshot::Sender<()> {
    worker::spawn(cfg, engine, Duration::from_secs(5)).1
}

fn main() {
    clip2gan::runtime::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let jobs = arg(&args, "--jobs", 200);
    let n_clients = arg(&args, "--clients", 8);
    let images = arg(&args, "--images", 32);
    let redis = redis_server::Redis::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let instant = || {
        Arc::new(
            Engine::start(
                EngineConfig {
                    per_user_limit: 64,
                    ..Default::default()
                },
                || Ok(Blank),
            )
            .unwrap(),
        )
    };

    // 1. Latency added by the queue.
    let (local, _) = rt.block_on(clients(instant(), 1, jobs));
    let queued = rt.block_on(async {
        let cfg = queue_config(&redis, "lat");
        let _stop = spawn_worker(cfg.clone(), instant());
        let q: Arc<dyn Inference> = Arc::new(QueueClient::start(cfg).unwrap());
        clients(q.clone(), 1, 5).await; // connections made, scripts loaded
        clients(q, 1, jobs).await.0
    });
    println!(
        "queue latency, {jobs} jobs one at a time, instant backend: in process p50 {:.2} ms p95 \
         {:.2} ms | through Redis p50 {:.2} ms p95 {:.2} ms | added p50 {:.2} ms p95 {:.2} ms",
        pct(&local, 0.5),
        pct(&local, 0.95),
        pct(&queued, 0.5),
        pct(&queued, 0.95),
        pct(&queued, 0.5) - pct(&local, 0.5),
        pct(&queued, 0.95) - pct(&local, 0.95),
    );

    // 2. Throughput on the real pipeline.
    let app = clip2gan::config::Config::load(None).expect("config");
    let dev = clip2gan::device::select(&app.device).expect("device");
    let cfg = app.bench_setup();
    let max_batch = cfg.engine.max_batch;
    let per_client = images.div_ceil(n_clients).max(1);
    let warm = || clip2gan::bench::warm_engine(&cfg, &dev, n_clients, max_batch).expect("engine");
    let (_, in_process) = rt.block_on(clients(warm(), n_clients, per_client));
    let mut rates = Vec::new();
    for workers in [1, 2] {
        let engines: Vec<_> = (0..workers).map(|_| warm()).collect();
        let rate = rt.block_on(async {
            let qc = queue_config(&redis, &format!("tput{workers}"));
            let _stops: Vec<_> = engines
                .into_iter()
                .map(|e| spawn_worker(qc.clone(), e))
                .collect();
            let q: Arc<dyn Inference> = Arc::new(QueueClient::start(qc).unwrap());
            clients(q, n_clients, per_client).await.1
        });
        rates.push(rate);
    }
    println!(
        "throughput, {n_clients} clients x {per_client} images: in process {in_process:.2} img/s \
         | queue, 1 worker {:.2} img/s | 2 workers {:.2} img/s",
        rates[0], rates[1]
    );
    println!(
        "{}",
        json!({"bench": "queue", "device": clip2gan::device::describe(&dev),
            "latency_ms": {"in_process": {"p50": pct(&local, 0.5), "p95": pct(&local, 0.95)},
                           "queue": {"p50": pct(&queued, 0.5), "p95": pct(&queued, 0.95)}},
            "images_per_s": {"in_process": in_process, "workers_1": rates[0], "workers_2": rates[1]}})
    );
}
