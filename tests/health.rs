//! `/healthz` and `/readyz` of real `clip2gan` processes (the tiny
//! pipeline over the real MobileStyleGAN, the fake Discord, a real
//! `redis-server`): up as soon as the endpoint answers; ready only once
//! the models have loaded and the gateway is connected, and (queue mode)
//! only while Redis answers.
//!
//! Every step waits on an event, never on the clock: the model load is
//! held at a named pipe standing for CLIP's `config.json` (the process
//! blocks opening it until the test writes it, and the test knows it is
//! there because a non-blocking open for writing succeeds only once a
//! reader has the pipe open); the gateway is held by the fake refusing
//! connections; Redis by stopping it.

mod common;
mod fake_discord;
mod redis_server;
mod served;

use std::ffi::CString;
use std::io::Write;
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use fake_discord::Fake;
use redis_server::Redis;
use served::{Served, WAIT};

/// One process at a time: they load models on few cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The tiny pipeline, made once for the whole binary.
fn models() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let _ = common::mobilestylegan(); // fetched once, before any process needs it
        common::tiny_pipeline_dir()
    })
    .path()
}

/// Open `fifo` for writing once some process has it open for reading
/// (before that, a non-blocking open fails with ENXIO).
fn writer_once_read(fifo: &Path, served: &Served) -> std::fs::File {
    let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
    let deadline = Instant::now() + WAIT;
    loop {
        // SAFETY: a NUL-terminated path; the fd is owned by the File below.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_NONBLOCK) };
        if fd >= 0 {
            // SAFETY: a fresh fd of ours; clear O_NONBLOCK so that writes block.
            unsafe { libc::fcntl(fd, libc::F_SETFL, 0) };
            return unsafe { std::fs::File::from_raw_fd(fd) };
        }
        let e = std::io::Error::last_os_error();
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO), "{e}");
        assert!(
            Instant::now() < deadline,
            "the process never opened {}:\n{}",
            fifo.display(),
            served.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn status_is(want: u16) -> impl Fn(u16, &str) -> bool {
    move |s, _| s == want
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_is_ready_only_once_its_models_loaded_and_the_gateway_connected() {
    let _serial = SERIAL.lock().await;
    let fake = Fake::start().await;
    fake.set_gateway_down(true);
    // A pipeline of its own whose CLIP config.json is a named pipe.
    let dir = common::tiny_pipeline_dir();
    let config = dir.path().join("clip/config.json");
    let config_text = std::fs::read(&config).unwrap();
    std::fs::remove_file(&config).unwrap();
    let c = CString::new(config.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let state = tempfile::tempdir().unwrap();
    let mut bot = Served::spawn(served::command(
        &["bot"],
        dir.path(),
        &fake.base,
        state.path(),
    ));

    // Up at once, and not ready: the models are loading.
    bot.wait_for("/healthz", "/healthz answering 200", status_is(200))
        .await;
    let mut config_pipe = tokio::task::block_in_place(|| writer_once_read(&config, &bot));
    let (status, body) = bot.get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body,
        "not ready\nmodels: loading\ngateway: not connected yet\n"
    );
    assert_eq!(fake.identifies(), 0);

    // The models load; the gateway refuses: still not ready, and /readyz
    // says why.
    let before = fake.refused();
    tokio::task::block_in_place(|| config_pipe.write_all(&config_text).unwrap());
    drop(config_pipe);
    assert!(
        fake.wait_until(WAIT, |f| (f.refused() > before).then_some(()))
            .await
            .is_some(),
        "the bot never tried the gateway:\n{}",
        bot.log()
    );
    let (status, body) = bot.get("/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("models: ok\n"), "{body}");
    assert!(body.contains("gateway: 0 of 1 shards connected"), "{body}");

    // The gateway takes it: ready.
    fake.set_gateway_down(false);
    assert!(fake.wait_ready(1, WAIT).await, "{}", bot.log());
    let (_, body) = bot
        .wait_for("/readyz", "/readyz answering 200", status_is(200))
        .await;
    assert_eq!(body, "ready\nmodels: ok\ngateway: ok\n");
    // Beside it, /metrics (empty until a job records something).
    let (status, metrics) = bot.get("/metrics").await.unwrap();
    assert_eq!(status, 200, "{metrics}");
    let (status, body) = bot.get("/nothing").await.unwrap();
    assert_eq!(status, 404);
    assert!(body.contains("/metrics, /healthz, /readyz"), "{body}");

    // The connection drops and cannot be made again: not ready any more.
    fake.set_gateway_down(true);
    fake.drop_gateway();
    let (_, body) = bot
        .wait_for("/readyz", "/readyz answering 503", status_is(503))
        .await;
    assert!(body.contains("models: ok\n"), "{body}");
    assert!(!body.contains("gateway: ok"), "{body}");
    assert_eq!(
        tokio::task::block_in_place(|| bot.terminate()).code(),
        Some(0),
        "{}",
        bot.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_end_is_not_ready_while_redis_is_down() {
    let _serial = SERIAL.lock().await;
    let fake = Fake::start().await;
    let mut redis = Redis::start();
    let state = tempfile::tempdir().unwrap();
    let url = redis.url();
    let mut front = Served::spawn(served::command(
        &["bot", "--queue", &url],
        models(),
        &fake.base,
        state.path(),
    ));
    let (_, body) = front
        .wait_for("/readyz", "/readyz answering 200", status_is(200))
        .await;
    // No models in a front end: the workers have them.
    assert_eq!(body, "ready\nredis: ok\ngateway: ok\n");

    redis.down();
    let (_, body) = front
        .wait_for("/readyz", "/readyz answering 503", status_is(503))
        .await;
    assert!(body.contains("gateway: ok\n"), "{body}");
    assert!(body.contains("redis: cannot reach Redis"), "{body}");
    // Up is not ready: the process still answers.
    assert_eq!(front.get("/healthz").await.unwrap().0, 200);

    redis.up();
    front
        .wait_for("/readyz", "/readyz answering 200 again", status_is(200))
        .await;
    assert_eq!(
        tokio::task::block_in_place(|| front.terminate()).code(),
        Some(0),
        "{}",
        front.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_is_ready_once_its_models_loaded_and_redis_answers() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::stopped();
    let state = tempfile::tempdir().unwrap();
    let url = redis.url();
    let mut worker = Served::spawn(served::command(
        &["worker", "--queue", &url],
        models(),
        "http://127.0.0.1:9",
        state.path(),
    ));
    let (_, body) = worker
        .wait_for("/readyz", "the models loaded", |_, b| {
            b.contains("models: ok")
        })
        .await;
    assert!(body.starts_with("not ready\n"), "{body}");
    assert!(body.contains("redis: cannot reach Redis"), "{body}");

    redis.up();
    let (_, body) = worker
        .wait_for("/readyz", "/readyz answering 200", status_is(200))
        .await;
    assert_eq!(body, "ready\nmodels: ok\nredis: ok\n");
    assert_eq!(
        tokio::task::block_in_place(|| worker.terminate()).code(),
        Some(0),
        "{}",
        worker.log()
    );
}

/// `clip2gan health` is what the images' HEALTHCHECK runs: 0 when the
/// route answers 200, 1 otherwise, with the body and a line saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_command_exits_by_the_answer() {
    let _serial = SERIAL.lock().await;
    let mut redis = Redis::stopped();
    let state = tempfile::tempdir().unwrap();
    let url = redis.url();
    let mut worker = Served::spawn(served::command(
        &["worker", "--queue", &url],
        models(),
        "http://127.0.0.1:9",
        state.path(),
    ));
    worker
        .wait_for("/readyz", "the models loaded", |_, b| {
            b.contains("models: ok")
        })
        .await;
    let addr = worker.addr.to_string();
    let health = |args: &[&str]| {
        let out = common::bin()
            .arg("health")
            .args(args)
            .args(["--addr", &addr])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = tokio::task::block_in_place(|| health(&[]));
    assert_eq!((code, out.as_str()), (Some(0), "ok\n"));
    let (code, out, err) = tokio::task::block_in_place(|| health(&["--ready"]));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(out.contains("redis: cannot reach Redis"), "{out}");
    assert!(err.contains("answered 503"), "{err}");
    redis.up();
    worker
        .wait_for("/readyz", "/readyz answering 200", status_is(200))
        .await;
    let (code, out, _) = tokio::task::block_in_place(|| health(&["--ready"]));
    assert_eq!(code, Some(0), "{out}");

    // Nothing there: says what to check.
    let closed = format!("127.0.0.1:{}", served::free_port());
    let out = common::bin()
        .args(["health", "--addr", &closed])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics.enabled = true"), "{err}");
    assert_eq!(
        tokio::task::block_in_place(|| worker.terminate()).code(),
        Some(0),
        "{}",
        worker.log()
    );
}
