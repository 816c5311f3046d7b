//! Front ends and workers apart, over a real redis-server: the bot (the
//! real serenity client against the fake Discord) publishes jobs with
//! `QueueClient`, `queue::worker::run` serves them on an engine, and the
//! results store is the shared one in Redis. The engines run an instant
//! backend: what is tested is the queue, not the models; one test runs real
//! `clip2gan worker` processes (real models) and kills one with SIGKILL.

mod common;
mod fake_discord;
mod redis_server;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use clip2gan::bot::shared::RedisResults;
use clip2gan::bot::{BotConfig, BotError, DiscordConfig, Settings, SystemClock, Token};
use clip2gan::engine::{Backend, Engine, EngineConfig, EngineError, Latent, RawOutput, Request};
use clip2gan::queue::{worker, QueueClient, QueueConfig};
use fake_discord::{Event, Fake};
use redis_server::Redis;
use serde_json::json;
use tokio::sync::oneshot;

const WAIT: Duration = Duration::from_secs(60);
/// Servers on shard 0 and shard 1 of 2: `(guild >> 22) % 2`.
const GUILD_0: u64 = 2 << 22;
const GUILD_1: u64 = 3 << 22;

/// Instant images, a latent per image that remembers how it was made
/// (edits add 1), a panic for the prompt "panic", and an optional gate that holds every batch until
/// released, with a signal when a batch has started.
struct Quick {
    gate: Option<Arc<Gate>>,
}

#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    changed: std::sync::Condvar,
    entered: AtomicUsize,
}

impl Gate {
    fn release(&self) {
        *self.open.lock().unwrap() = true;
        self.changed.notify_all();
    }
}

/// Opens the gate when dropped, so a failing test ends instead of waiting
/// on an engine that waits on the gate.
struct OpenOnDrop(Arc<Gate>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.release();
    }
}

impl Backend for Quick {
    fn latent_shape(&self) -> (usize, usize) {
        (2, 3)
    }

    fn run(&mut self, batch: &[Request]) -> Vec<Result<RawOutput, EngineError>> {
        if let Some(g) = &self.gate {
            g.entered.fetch_add(1, Ordering::SeqCst);
            let mut open = g.open.lock().unwrap();
            while !*open {
                open = g.changed.wait(open).unwrap();
            }
        }
        batch
            .iter()
            .map(|job| {
                let (base, n) = match job {
                    // A poisoned job: it panics on every worker it reaches.
                    Request::Imagine { prompt, .. } if prompt == "panic" => panic!("poisoned job"),
                    Request::Imagine { candidates, .. } => (0.0, *candidates),
                    Request::Edit { latent, .. } => (latent.data[0] + 1.0, 1),
                    Request::Variations { latent, count, .. } => (latent.data[0] + 1.0, *count),
                    Request::Render { latents } => (0.0, latents.len()),
                    _ => (0.0, 1),
                };
                Ok(RawOutput {
                    images: vec![image::RgbImage::new(8, 8); n],
                    latents: vec![
                        Latent {
                            styles: 2,
                            dim: 3,
                            data: vec![base; 6],
                        };
                        n
                    ],
                    animate: false,
                    truncated_prompt: false,
                    scores: None,
                    times: Default::default(),
                })
            })
            .collect()
    }
}

fn queue_config(redis: &Redis) -> QueueConfig {
    QueueConfig {
        url: redis.url(),
        prefix: "test".into(),
        claim_idle_ms: 300,
        block_ms: 200,
        timeout_ms: 500,
        per_user_limit: 2,
        ..Default::default()
    }
}

/// A worker running until its sender is dropped (or its task aborted: a
/// worker killed, as far as Redis can tell).
struct Worker {
    task: tokio::task::JoinHandle<Result<(), clip2gan::queue::QueueError>>,
    _stop: oneshot::Sender<()>,
    /// Kept here too: a killed worker's engine (held by a gate) must not be
    /// shut down, and joined, inside the runtime.
    _engine: Arc<Engine>,
}

fn start_worker(cfg: QueueConfig, gate: Option<Arc<Gate>>) -> Worker {
    let engine = Arc::new(
        Engine::start(
            EngineConfig {
                max_batch: 4,
                max_wait_ms: 5,
                settle_ms: 2,
                per_user_limit: 64,
                ..Default::default()
            },
            move || Ok(Quick { gate }),
        )
        .unwrap(),
    );
    let kept = engine.clone();
    let (task, tx) = worker::spawn(cfg, engine, Duration::from_secs(5));
    Worker {
        task,
        _stop: tx,
        _engine: kept,
    }
}

/// A front end running shards `shards` of 2 (or the only shard).
struct FrontEnd {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), BotError>>,
}

impl FrontEnd {
    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the front end stops")
            .unwrap()
            .unwrap();
    }
}

async fn start_front_end(fake: &Arc<Fake>, cfg: QueueConfig, shard: Option<u32>) -> FrontEnd {
    // The logs only when asked for (RUST_LOG=clip2gan=debug).
    if std::env::var_os("RUST_LOG").is_some() {
        clip2gan::bot::init_logging();
    }
    let before = fake.identifies();
    let settings = Settings {
        discord: DiscordConfig {
            api_base: fake.base.clone(),
            shards: shard.map(|s| [s, s]),
            shard_count: if shard.is_some() { 2 } else { 0 },
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

/// The final answer of `token` with its image; panics otherwise.
async fn image(fake: &Fake, token: &str) -> serde_json::Value {
    match fake.wait_answer(token, WAIT).await.map(|t| t.event) {
        Some(Event::Edit { payload, files, .. }) if files.len() == 1 => payload,
        other => panic!("expected an image for {token}: {other:#?}"),
    }
}

/// The final answer's text.
async fn text(fake: &Fake, token: &str) -> String {
    let t = fake.wait_answer(token, WAIT).await.expect("an answer");
    t.event.content().unwrap_or_default().to_string()
}

/// Posts of a result (edits with a file) for `token`.
fn posts(fake: &Fake, token: &str) -> usize {
    fake.events(token)
        .iter()
        .filter(|t| matches!(&t.event, Event::Edit { files, .. } if !files.is_empty()))
        .count()
}

/// `/name` with its one text option in `guild`; the interaction's token.
fn command(fake: &Fake, user: u64, guild: u64, name: &str, option: &str, value: &str) -> String {
    let options = json!([{"name": option, "type": 3, "value": value}]);
    fake.command_in(user, Some(guild), name, options)
}

fn imagine(fake: &Fake, user: u64, guild: u64, prompt: &str) -> String {
    command(fake, user, guild, "imagine", "prompt", prompt)
}

fn edit(fake: &Fake, user: u64, guild: u64, what: &str) -> String {
    command(fake, user, guild, "edit", "instruction", what)
}

/// The metrics endpoint of this test binary, installed once.
fn metrics() -> std::net::SocketAddr {
    static ADDR: OnceLock<std::net::SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        clip2gan::metrics::install(
            &clip2gan::metrics::MetricsConfig {
                enabled: true,
                listen: format!("127.0.0.1:{}", redis_server::free_port()),
            },
            &clip2gan::health::Health::new(),
        )
        .unwrap()
        .unwrap()
    })
}

/// The value of metric `name` on the line carrying all of `labels` (0 if
/// none yet).
async fn scrape(addr: std::net::SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            (l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
                && labels.iter().all(|x| l.contains(x))
        })
        .find_map(|l| l.rsplit_once(' ')?.1.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_front_ends_and_two_workers_share_users() {
    let addr = metrics();
    let redis = Redis::start();
    let cfg = queue_config(&redis);
    let fake = Fake::start().await;
    let _w1 = start_worker(cfg.clone(), None);
    let _w2 = start_worker(cfg.clone(), None);
    let f0 = start_front_end(&fake, cfg.clone(), Some(0)).await;
    let f1 = start_front_end(&fake, cfg.clone(), Some(1)).await;
    let delivered = ["command=\"imagine\"", "outcome=\"delivered\""];
    let before = scrape(addr, "clip2gan_jobs_total", &delivered).await;

    // /imagine on shard 0's front end, /edit on shard 1's: the history is
    // shared, so the edit finds the image.
    let t = imagine(&fake, 7, GUILD_0, "a face");
    image(&fake, &t).await;
    let t = edit(&fake, 7, GUILD_1, "add smile");
    let payload = image(&fake, &t).await;
    assert!(
        payload["content"].as_str().unwrap().contains("add smile"),
        "{payload}"
    );

    // 20 users at once, across both shards: every one answered with an image.
    let tokens: Vec<String> = (0..20)
        .map(|u| imagine(&fake, 100 + u, [GUILD_0, GUILD_1][u as usize % 2], "a face"))
        .collect();
    for t in &tokens {
        image(&fake, t).await;
        assert_eq!(posts(&fake, t), 1, "posted once: {t}");
    }
    // The bot counts a delivery once Discord (the fake) has answered it,
    // a moment after the fake saw it: wait for the count.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let after = scrape(addr, "clip2gan_jobs_total", &delivered).await;
        if after >= before + 21.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the counter moved: {before} -> {after}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let defer = scrape(addr, "clip2gan_defer_seconds_count", &[]).await;
    assert!(defer >= 22.0, "defers timed: {defer}");
    f0.stop().await;
    f1.stop().await;
}

/// A worker killed mid-job: its engine holds the job at a gate, and the
/// worker's task is aborted while it runs (as far as Redis can tell, a
/// worker process killed: no acknowledgement, no renewals).
struct Killed {
    fake: Arc<Fake>,
    front: FrontEnd,
    /// The /imagine the dead worker had taken.
    t: String,
    gate: Arc<Gate>,
    // Fields drop in order: the gate opens before the dead worker's engine,
    // which waits on it, is dropped.
    _open: OpenOnDrop,
    _doomed: Worker,
}

async fn a_worker_killed_mid_job(cfg: &QueueConfig) -> Killed {
    let fake = Fake::start().await;
    let gate = Arc::new(Gate::default());
    let doomed = start_worker(cfg.clone(), Some(gate.clone()));
    let open = OpenOnDrop(gate.clone());
    let front = start_front_end(&fake, cfg.clone(), None).await;
    let t = imagine(&fake, 7, GUILD_0, "a face");
    fake.wait_until(WAIT, |_| {
        (gate.entered.load(Ordering::SeqCst) > 0).then_some(())
    })
    .await
    .expect("the first worker took the job");
    doomed.task.abort();
    Killed {
        fake,
        front,
        t,
        gate,
        _open: open,
        _doomed: doomed,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_of_a_killed_worker_is_finished_by_another_and_posted_once() {
    let redis = Redis::start();
    let cfg = queue_config(&redis);
    let killed = a_worker_killed_mid_job(&cfg).await;
    let (fake, t) = (killed.fake.clone(), killed.t.clone());
    let _survivor = start_worker(cfg.clone(), None);
    image(&fake, &t).await;
    // The dead worker's engine finishing late posts nothing more.
    killed.gate.release();
    let again = imagine(&fake, 8, GUILD_0, "another face");
    image(&fake, &again).await;
    assert_eq!(posts(&fake, &t), 1, "{:#?}", fake.events(&t));
    let pending = redis
        .cli(&["XPENDING", "test:jobs", "workers"])
        .unwrap_or_default();
    assert!(pending.starts_with("0"), "nothing left pending: {pending}");
    killed.front.stop().await;
}

/// A real `clip2gan worker` process on `cfg`'s Redis, with a small random
/// CLIP and mapper over the real MobileStyleGAN from `models`; its log goes
/// to `<models>/<name>.log`.
struct WorkerProcess {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl WorkerProcess {
    fn start(cfg: &QueueConfig, models: &std::path::Path, name: &str) -> WorkerProcess {
        let _ = common::mobilestylegan(); // fetched once, before any worker needs it
        let log = models.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let clip = models.join("clip");
        let child = common::bin()
            .args(["worker", "--queue", &cfg.url])
            .current_dir(models)
            .env("CLIP2GAN_MODELS_DIR", common::repo().join("models"))
            .env("CLIP2GAN_CLIP__MODEL", clip.display().to_string())
            .env("CLIP2GAN_MAPPER__PATH", models.join("mapper.safetensors"))
            .env("CLIP2GAN_MAPPER__BUILD", "false")
            .env("CLIP2GAN_ENGINE__OUTPUT_SIZE", "64")
            .env("CLIP2GAN_QUEUE__PREFIX", &cfg.prefix)
            .env(
                "CLIP2GAN_QUEUE__CLAIM_IDLE_MS",
                cfg.claim_idle_ms.to_string(),
            )
            .env("CLIP2GAN_QUEUE__BLOCK_MS", cfg.block_ms.to_string())
            .env("CLIP2GAN_QUEUE__TIMEOUT_MS", cfg.timeout_ms.to_string())
            .env("CLIP2GAN_METRICS__ENABLED", "false")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start clip2gan worker");
        WorkerProcess { child, log }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own child's pid, which it still is: the
        // child is not waited for until it is dropped or killed.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(r, 0, "kill({sig}) failed");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Jobs read by a worker and not yet published (published = acknowledged,
/// in one script).
fn pending_jobs(redis: &Redis, cfg: &QueueConfig) -> usize {
    redis
        .cli(&["XPENDING", &format!("{}:jobs", cfg.prefix), "workers"])
        .and_then(|o| o.lines().next().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0)
}

/// `kill -9` of a real worker process while it runs a job: the job is
/// finished by another worker process and posted exactly once.
///
/// "While it runs": the test waits until Redis shows the job taken, stops
/// the worker (SIGSTOP) and checks the job is still pending, i.e. not yet
/// published, which happens in one script with the acknowledgement; only
/// then SIGKILL. Should the worker have finished in between (a render takes
/// a few hundred ms, the check a few), the test goes on with the next
/// /imagine, so the outcome does not depend on timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_process_killed_with_sigkill_mid_job_is_replaced_and_posted_once() {
    let redis = Redis::start();
    let cfg = queue_config(&redis);
    let models = common::tiny_pipeline_dir();
    let fake = Fake::start().await;
    let front = start_front_end(&fake, cfg.clone(), None).await;
    let doomed = WorkerProcess::start(&cfg, models.path(), "doomed");
    let mut taken = None;
    for user in 100..110 {
        let t = imagine(&fake, user, GUILD_0, "a face");
        // Polled, not awaited on the fake: Redis does not tell it.
        let deadline = std::time::Instant::now() + WAIT;
        let seen = loop {
            if pending_jobs(&redis, &cfg) > 0 {
                break Some(true);
            }
            let answered = fake
                .events(&t)
                .iter()
                .any(|e| fake_discord::is_answer(&e.event));
            if answered {
                break Some(false);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        assert!(seen.is_some(), "no worker took the job:\n{}", doomed.log());
        if seen == Some(true) {
            doomed.signal(libc::SIGSTOP);
            if pending_jobs(&redis, &cfg) > 0 {
                doomed.signal(libc::SIGKILL);
                eprintln!("the worker was killed mid-job at /imagine {}", user - 99);
                taken = Some(t);
                break;
            }
            doomed.signal(libc::SIGCONT);
        }
        image(&fake, &t).await;
    }
    let t = taken.expect("the worker was never caught mid-job in 10 tries");
    let survivor = WorkerProcess::start(&cfg, models.path(), "survivor");
    let answer = fake.wait_answer(&t, WAIT).await.map(|a| a.event);
    assert!(
        matches!(&answer, Some(Event::Edit { files, .. }) if files.len() == 1),
        "expected the image: {answer:#?}\nsurvivor's log:\n{}",
        survivor.log()
    );
    let again = imagine(&fake, 200, GUILD_0, "another face");
    image(&fake, &again).await;
    assert_eq!(posts(&fake, &t), 1, "{:#?}", fake.events(&t));
    assert_eq!(pending_jobs(&redis, &cfg), 0, "nothing left pending");
    front.stop().await;
}

/// The fake Discord, one worker and one front end on `cfg`.
async fn one_of_each(cfg: &QueueConfig) -> (Arc<Fake>, Worker, FrontEnd) {
    let fake = Fake::start().await;
    let worker = start_worker(cfg.clone(), None);
    let front = start_front_end(&fake, cfg.clone(), None).await;
    (fake, worker, front)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_restart_between_imagine_and_edit_loses_nothing() {
    let mut redis = Redis::start();
    let cfg = queue_config(&redis);
    let (fake, _w, front) = one_of_each(&cfg).await;
    let t = imagine(&fake, 7, GUILD_0, "a face");
    image(&fake, &t).await;
    redis.down();
    redis.up();
    let t = edit(&fake, 7, GUILD_0, "add smile");
    let payload = image(&fake, &t).await;
    assert!(payload["content"].as_str().unwrap().contains("add smile"));
    front.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_redis_is_said_and_survived() {
    // Nothing listens yet: the front end and the worker start anyway.
    let mut redis = Redis::stopped();
    let cfg = queue_config(&redis);
    let (fake, _w, front) = one_of_each(&cfg).await;
    told_to_try_again(&fake, 7).await;

    // Redis comes up: served without a restart.
    redis.up();
    served(&fake, 7).await;

    // Down mid-run, then back.
    redis.down();
    told_to_try_again(&fake, 8).await;
    redis.up();
    served(&fake, 9).await;
    front.stop().await;
}

/// An /imagine of `user` answered with "try again".
async fn told_to_try_again(fake: &Fake, user: u64) {
    let t = imagine(fake, user, GUILD_0, "a face");
    let said = text(fake, &t).await;
    assert!(said.contains("try again"), "{said}");
}

/// An /imagine of `user` answered with its image.
async fn served(fake: &Fake, user: u64) {
    let t = imagine(fake, user, GUILD_0, "a face");
    image(fake, &t).await;
}

/// The shared store keeps redb's bounds and semantics: history depth,
/// undo, eviction of the oldest results beyond `max_latents`, quotas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_store_is_bounded_as_the_redb_one() {
    use clip2gan::bot::results::ResultStore;
    use clip2gan::bot::store::{Record, Ref};
    let redis = Redis::start();
    let s = RedisResults::new(&queue_config(&redis), 3, 5).unwrap();
    let rec = Record::example;
    let a = s.insert(rec(1, 2, 0.0), 1, 0).await.unwrap();
    let b = s.insert(rec(1, 1, 10.0), 1, 0).await.unwrap();
    assert_eq!(
        s.current(1).await.unwrap(),
        Some(Ref { id: b.id, index: 0 })
    );
    assert_eq!(*s.get(a.id).await.unwrap().unwrap(), *a, "read back whole");
    assert_eq!(s.undo(1).await.unwrap(), Some(Ref { id: a.id, index: 0 }));
    assert_eq!(s.undo(1).await.unwrap(), None, "nothing before the first");
    s.push(1, Ref { id: a.id, index: 1 }).await.unwrap();
    let (_, l) = s
        .latent(s.current(1).await.unwrap().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(l.data[0], 1.0);
    // 2 + 1 + 3 latents > 5: the oldest result goes.
    let c = s.insert(rec(2, 3, 20.0), 2, 0).await.unwrap();
    assert!(s.get(a.id).await.unwrap().is_none());
    assert!(s.get(b.id).await.unwrap().is_some());
    assert_eq!(
        s.current(1).await.unwrap(),
        None,
        "user 1 only had a's images"
    );
    assert_eq!(s.count().await.unwrap(), 2);
    s.delete(c.id).await.unwrap();
    assert_eq!(s.current(2).await.unwrap(), None);
    for i in 0..5 {
        s.push(
            2,
            Ref {
                id: b.id,
                index: i % 2,
            },
        )
        .await
        .unwrap();
    }
    let raw = redis.cli(&["LLEN", "test:history:2"]).unwrap();
    assert_eq!(raw.trim(), "3", "history depth");
    // Quotas and cooldowns live in Redis too.
    let t0 = 1_000_000;
    assert!(s.charge((9, 1), t0, 1).await.unwrap().is_ok());
    assert!(s.charge((9, 1), t0 + 1, 1).await.unwrap().is_err());
    s.refund(9, 1, t0).await.unwrap();
    assert!(s.charge((9, 1), t0 + 2, 1).await.unwrap().is_ok());
    let cool = Duration::from_secs(60);
    assert!(s.cooldown_left(1, cool).await.unwrap().is_none());
    s.started(1, cool).await.unwrap();
    assert!(s.cooldown_left(1, cool).await.unwrap().is_some());
}

/// A job whose every worker dies is set aside after `max_deliveries`
/// deliveries, and its user is told instead of waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_that_outlives_its_deliveries_is_dead_lettered_and_said() {
    let redis = Redis::start();
    let cfg = QueueConfig {
        max_deliveries: 1,
        ..queue_config(&redis)
    };
    let killed = a_worker_killed_mid_job(&cfg).await;
    let (fake, t) = (killed.fake.clone(), killed.t.clone());
    let _next = start_worker(cfg.clone(), None);
    let said = text(&fake, &t).await;
    assert!(said.contains("set aside"), "{said}");
    assert_eq!(posts(&fake, &t), 0);
    let dead = redis.cli(&["XLEN", "test:dead"]).unwrap();
    assert_eq!(dead.trim(), "1", "kept for an operator");
    killed.front.stop().await;
}

/// A job that panics the worker's backend fails alone: its user is told,
/// it is acknowledged once (not redelivered, not dead-lettered: the engine
/// contained the panic), and the worker serves the next job.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_job_is_answered_once_and_the_worker_serves_on() {
    let redis = Redis::start();
    let cfg = queue_config(&redis);
    let (fake, _w, front) = one_of_each(&cfg).await;
    let t = imagine(&fake, 7, GUILD_0, "panic");
    let said = text(&fake, &t).await;
    assert!(said.contains("poisoned job"), "{said}");
    let t2 = imagine(&fake, 8, GUILD_0, "a face");
    image(&fake, &t2).await;
    assert_eq!(pending_jobs(&redis, &cfg), 0, "both jobs acknowledged");
    let dead = redis.cli(&["XLEN", "test:dead"]).unwrap();
    assert_eq!(dead.trim(), "0");
    assert_eq!(
        posts(&fake, &t),
        0,
        "a failure is said, not posted as an image"
    );
    front.stop().await;
}
