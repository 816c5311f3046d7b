//! A real `clip2gan bot` or `clip2gan worker` process for the deployment
//! tests: the tiny pipeline (or a model directory of the test's), the
//! fake Discord, and the endpoint (`/metrics`, `/healthz`, `/readyz`) on
//! 127.0.0.1 and a free port. Its stderr is kept for failure messages.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Generous: model loads on two busy cores, serenity's 5 s reconnect pause.
pub const WAIT: Duration = Duration::from_secs(120);

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Served {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<String>>,
}

/// `clip2gan ARGS` on the pipeline in `models` (a `tiny_pipeline_dir`),
/// Discord at `api_base`, its state in `state`, the endpoint on a free port.
pub fn command(
    args: &[&str],
    models: &Path,
    api_base: &str,
    state: &Path,
) -> (Command, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_clip2gan"));
    c.args(args)
        .current_dir(state)
        .env("DISCORD_TOKEN", "fake.bot.token")
        .env("RUST_LOG", "warn,clip2gan=info")
        .env_remove("CLIP2GAN_QUEUE__URL")
        .env_remove("C2G_TEST_STORE_PAUSE")
        .env(
            "CLIP2GAN_MODELS_DIR",
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models"),
        )
        .env("CLIP2GAN_CLIP__MODEL", models.join("clip"))
        .env("CLIP2GAN_MAPPER__PATH", models.join("mapper.safetensors"))
        .env("CLIP2GAN_MAPPER__BUILD", "false")
        .env("CLIP2GAN_ENGINE__OUTPUT_SIZE", "64")
        .env("CLIP2GAN_DEVICE", "cpu")
        .env("CLIP2GAN_METRICS__ENABLED", "true")
        .env("CLIP2GAN_METRICS__LISTEN", addr.to_string())
        .env("CLIP2GAN_DISCORD__API_BASE", api_base)
        .env("CLIP2GAN_BOT__STORE_PATH", state.join("store.redb"))
        .env("CLIP2GAN_BOT__SHUTDOWN_GRACE_S", "2")
        .env("CLIP2GAN_BOT__COOLDOWN_MS", "0")
        .env("CLIP2GAN_QUEUE__TIMEOUT_MS", "300")
        .env("CLIP2GAN_QUEUE__BLOCK_MS", "300");
    (c, addr)
}

impl Served {
    pub fn spawn((mut cmd, addr): (Command, SocketAddr)) -> Served {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start clip2gan");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let keep = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                keep.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Served { child, addr, log }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// GET `path` on the endpoint: (status, body), or `None` while nothing
    /// answers there.
    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        get(&format!("http://{}{path}", self.addr)).await
    }

    /// Poll `path` until its answer satisfies `ok`; the last answer.
    pub async fn wait_for(
        &mut self,
        path: &str,
        what: &str,
        ok: impl Fn(u16, &str) -> bool,
    ) -> (u16, String) {
        let deadline = Instant::now() + WAIT;
        let mut last = None;
        loop {
            if let Some((status, body)) = self.get(path).await {
                if ok(status, &body) {
                    return (status, body);
                }
                last = Some((status, body));
            }
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("clip2gan exited ({st}) before {what}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{what} never came within {WAIT:?} (last answer of {path}: {last:?}):\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, and the exit status (it must come within a minute).
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child, not yet waited for.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(r, 0, "kill(SIGTERM) failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `url`: (status, body), or `None` if nothing answers.
pub async fn get(url: &str) -> Option<(u16, String)> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let r = client.get(url).send().await.ok()?;
    let status = r.status().as_u16();
    Some((status, r.text().await.ok()?))
}
