//! Crash anywhere, post exactly once: real `clip2gan worker` processes over
//! a real redis-server, killed with SIGKILL at seeded moments, 20 rounds,
//! behind one front end (the bot's own code, in this test, against the
//! fake Discord).
//!
//! Two workers serve at all times. Each round sends four `/imagine` from
//! four users, kills one of the two workers (picked by a seeded stream) at
//! a seeded moment of one of two kinds, and starts a replacement at once:
//!
//! - at a call to Discord: inside the fake's handler of the k-th call the
//!   front end makes (a defer, a progress edit, a posted result), so the
//!   worker dies wherever it is when the front end gets that far;
//! - mid-job: once Redis shows a job taken by that worker and not yet
//!   published (read, not acknowledged: publishing and acknowledging are
//!   one script), the worker is stopped (SIGSTOP), the job checked to be
//!   still pending on it, and killed there. A worker that finished first (the tiny models take
//!   milliseconds) is let go on, and the next job tried; one that finished
//!   them all is killed once the round's results are posted (counted as
//!   "between jobs").
//!
//! Every round then waits until each of its jobs is answered with its
//! image (the killed worker's jobs are taken over by the other after
//! `queue.claim_idle_ms`); at the end every interaction of every round has
//! exactly one posted result, no job is left pending, and the dead-letter
//! stream is empty. No sleep decides anything: waits are for events (or a
//! poll of Redis's state), with deadlines only to fail a stuck test.
//!
//! Runtime: 8 s on the shared 2-core machine (41 worker starts on the tiny
//! models). `C2G_KILL_ROUNDS` and `C2G_KILL_SEED` change rounds and seed.

mod common;
mod fake_discord;
mod redis_server;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clip2gan::bot::shared::RedisResults;
use clip2gan::bot::{BotConfig, BotError, DiscordConfig, Settings, SystemClock, Token};
use clip2gan::queue::{QueueClient, QueueConfig};
use common::child::{kill_now, Proc};
use fake_discord::{Event, Fake};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use redis_server::Redis;
use serde_json::json;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(60);
const JOBS_PER_ROUND: u64 = 4;

fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn queue_config(redis: &Redis) -> QueueConfig {
    QueueConfig {
        url: redis.url(),
        prefix: "kill".into(),
        claim_idle_ms: 300,
        block_ms: 200,
        timeout_ms: 500,
        per_user_limit: 2,
        ..Default::default()
    }
}

struct Models {
    _dir: tempfile::TempDir,
    root: PathBuf,
    clip: PathBuf,
    mapper: PathBuf,
}

fn models() -> Models {
    let dir = tempfile::tempdir().unwrap();
    let (_, clip, mapper) = common::tiny_bot_models(dir.path());
    Models {
        root: dir.path().to_path_buf(),
        _dir: dir,
        clip,
        mapper,
    }
}

/// A `clip2gan worker` process on the tiny models, and its consumer name
/// in Redis; it has started once it says it reads jobs.
fn start_worker(m: &Models, cfg: &QueueConfig) -> (Proc, String) {
    let mut c = common::bin();
    c.args(["worker", "--queue", &cfg.url])
        .current_dir(&m.root)
        .env("RUST_LOG", "warn,clip2gan=info")
        .env("CLIP2GAN_MODELS_DIR", &m.root)
        .env("CLIP2GAN_GENERATOR__WEIGHTS", "tiny-g")
        .env("CLIP2GAN_CLIP__MODEL", &m.clip)
        .env("CLIP2GAN_MAPPER__PATH", &m.mapper)
        .env("CLIP2GAN_MAPPER__BUILD", "false")
        .env("CLIP2GAN_ENGINE__OUTPUT_SIZE", "64")
        .env("CLIP2GAN_DEVICE", "cpu")
        .env("CLIP2GAN_QUEUE__PREFIX", &cfg.prefix)
        .env(
            "CLIP2GAN_QUEUE__CLAIM_IDLE_MS",
            cfg.claim_idle_ms.to_string(),
        )
        .env("CLIP2GAN_QUEUE__BLOCK_MS", cfg.block_ms.to_string())
        .env("CLIP2GAN_QUEUE__TIMEOUT_MS", cfg.timeout_ms.to_string())
        .env("CLIP2GAN_METRICS__ENABLED", "false");
    let w = Proc::spawn(c);
    let line = tokio::task::block_in_place(|| w.wait_line("reading jobs from Redis"));
    let name = line
        .split_whitespace()
        .find_map(|f| f.strip_prefix("worker="))
        .unwrap_or_else(|| panic!("no worker name in {line:?}"))
        .to_string();
    (w, name)
}

/// The front end: the bot's code on the queue and the shared store.
struct FrontEnd {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), BotError>>,
}

async fn start_front_end(fake: &Arc<Fake>, cfg: QueueConfig) -> FrontEnd {
    let before = fake.identifies();
    let settings = Settings {
        discord: DiscordConfig {
            api_base: fake.base.clone(),
            ..Default::default()
        },
        bot: BotConfig {
            cooldown_ms: 0,
            progress_interval_ms: 100,
            retry_base_ms: 50,
            shutdown_grace_s: 10,
            ..Default::default()
        },
        ..Default::default()
    };
    let store = RedisResults::new(&cfg, 20, 5000).unwrap();
    let queue = QueueClient::start(cfg).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(clip2gan::bot::run_on(
        settings,
        Token::new("fake.bot.token"),
        Arc::new(queue),
        Arc::new(store),
        async move {
            let _ = rx.await;
        },
        Arc::new(SystemClock),
    ));
    assert!(
        fake.wait_ready(before + 1, WAIT).await,
        "the front end never identified"
    );
    FrontEnd {
        stop: Some(tx),
        task,
    }
}

/// Posted results (edits with a file, answered 200) of `token`.
fn posts(fake: &Fake, token: &str) -> usize {
    fake.events(token)
        .iter()
        .filter(|t| matches!(&t.event, Event::Edit { files, status, .. } if !files.is_empty() && *status < 300))
        .count()
}

/// Jobs read by a worker and not yet published.
fn pending_jobs(redis: &Redis, cfg: &QueueConfig) -> usize {
    redis
        .cli(&["XPENDING", &format!("{}:jobs", cfg.prefix), "workers"])
        .and_then(|o| o.lines().next().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

/// Jobs the worker named `consumer` has read and not yet published.
fn pending_of(redis: &Redis, cfg: &QueueConfig, consumer: &str) -> usize {
    let key = format!("{}:jobs", cfg.prefix);
    // One entry per job: id, consumer, idle ms, deliveries (a line each).
    redis
        .cli(&["XPENDING", &key, "workers", "-", "+", "100", consumer])
        .map_or(0, |o| {
            o.lines().filter(|l| !l.trim().is_empty()).count() / 4
        })
}

fn stream_len(redis: &Redis, key: &str) -> usize {
    redis
        .cli(&["XLEN", key])
        .and_then(|o| o.trim().parse().ok())
        .unwrap_or(0)
}

/// Reap a worker killed with SIGKILL; it must not have ended otherwise.
fn reap_killed(w: &mut Proc, round: usize) {
    let st = w.wait();
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "round {round}: the worker ended with {st} before it was killed:\n{}",
        w.log()
    );
}

/// Kill `w` once Redis shows a job taken and unpublished, stopping it
/// first to look; `false` if every one of `tokens` was answered first.
async fn kill_mid_job(
    (w, name): &(Proc, String),
    redis: &Redis,
    cfg: &QueueConfig,
    fake: &Fake,
    tokens: &[String],
) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if pending_of(redis, cfg, name) > 0 {
            w.signal(libc::SIGSTOP);
            if pending_of(redis, cfg, name) > 0 {
                kill_now(w.pid());
                return true;
            }
            w.signal(libc::SIGCONT);
        }
        if tokens.iter().all(|t| posts(fake, t) > 0) {
            kill_now(w.pid());
            return false;
        }
        assert!(Instant::now() < deadline, "the round's jobs never finished");
        // A poll of Redis's state (it does not tell when a job is taken);
        // the outcome does not depend on when it sees it.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_killed_at_seeded_moments_post_every_result_exactly_once() {
    let started = Instant::now();
    let rounds = env_or("C2G_KILL_ROUNDS", 20) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(env_or("C2G_KILL_SEED", 26));
    let redis = Redis::start();
    let cfg = queue_config(&redis);
    let m = models();
    let fake = Fake::start().await;
    let front = start_front_end(&fake, cfg.clone()).await;
    let mut workers = [start_worker(&m, &cfg), start_worker(&m, &cfg)];
    let mut all: Vec<String> = Vec::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();

    for round in 1..=rounds {
        let doomed = rng.random_range(0..2usize);
        let by_call = rng.random_bool(0.5);
        let pid = workers[doomed].0.pid();
        if by_call {
            // Each job makes at least two calls (its defer and its result).
            let k = rng.random_range(1..=2 * JOBS_PER_ROUND as usize);
            fake.after_events(k, |_| true, move || kill_now(pid));
        }
        let tokens: Vec<String> = (0..JOBS_PER_ROUND)
            .map(|u| {
                let seed = rng.random_range(0..1_000_000u64);
                let options = json!([{"name": "prompt", "type": 3, "value": format!("a face {round}")},
                                     {"name": "seed", "type": 4, "value": seed}]);
                fake.command(100 + u, "imagine", options)
            })
            .collect();
        let kind = if by_call {
            "at a call to Discord"
        } else if kill_mid_job(&workers[doomed], &redis, &cfg, &fake, &tokens).await {
            "mid-job"
        } else {
            "between jobs"
        };
        *kinds.entry(kind).or_default() += 1;
        tokio::task::block_in_place(|| reap_killed(&mut workers[doomed].0, round));
        workers[doomed] = start_worker(&m, &cfg);
        for t in &tokens {
            let answer = fake.wait_answer(t, WAIT).await.map(|a| a.event);
            assert!(
                matches!(&answer, Some(Event::Edit { files, .. }) if files.len() == 1),
                "round {round}: expected the image for {t}: {answer:#?}\nworkers' logs:\n{}\n{}",
                workers[0].0.log(),
                workers[1].0.log()
            );
        }
        eprintln!("round {round}: worker {doomed} killed {kind}; the round's 4 jobs posted");
        all.extend(tokens);
    }
    // Nothing in flight any more that could post again.
    let deadline = Instant::now() + WAIT;
    while pending_jobs(&redis, &cfg) > 0 {
        assert!(Instant::now() < deadline, "jobs left pending");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let once = all.iter().filter(|t| posts(&fake, t) == 1).count();
    for t in &all {
        assert_eq!(posts(&fake, t), 1, "{t}: {:#?}", fake.events(t));
    }
    assert_eq!(
        stream_len(&redis, &format!("{}:dead", cfg.prefix)),
        0,
        "no job was dead-lettered"
    );
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
    let _ = front.stop.unwrap().send(());
    tokio::time::timeout(WAIT, front.task)
        .await
        .expect("the front end stops")
        .unwrap()
        .unwrap();
    eprintln!(
        "{rounds} workers SIGKILLed ({kinds:?}): {once} of {} jobs posted exactly once, none \
         pending, none dead-lettered ({:.1?} in all)",
        all.len(),
        started.elapsed()
    );
}
