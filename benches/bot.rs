//! The bot end to end, timed: N users at once send /imagine through the
//! fake Discord of the end-to-end tests (gateway and HTTP API on 127.0.0.1)
//! to the real bot and engine, each user the next once the last image is
//! posted. Reported: interaction sent to image posted, p50 and p95, and
//! images/s, next to the engine alone with the same clients in the same
//! run (submit to PNG ready, `clip2gan bench engine`'s measure).
//!
//! The pipeline is `clip2gan bench engine`'s (the real MobileStyleGAN, a
//! random ViT-B/32-shaped CLIP and mapper) with the settings of
//! `config.toml`. Run from the repository root:
//!
//!     cargo bench --locked --bench bot [-- --users 1,16 --jobs 2]
//!
//! A benchmark, not a test: it asserts only that every job got its image.

#[path = "../tests/fake_discord/mod.rs"]
mod fake_discord;

use std::sync::Arc;
use std::time::{Duration, Instant};

use clip2gan::bot::{BotConfig, DiscordConfig, Settings, Token};
use fake_discord::{Event, Fake, Timed};
use serde::Serialize;
use serde_json::json;

#[derive(Debug, Serialize)]
struct Latencies {
    images: usize,
    images_per_s: f64,
    p50_ms: f64,
    p95_ms: f64,
}

#[derive(Debug, Serialize)]
struct Case {
    users: usize,
    jobs_per_user: usize,
    /// Interaction sent to image posted, through the bot.
    bot: Latencies,
    /// The same clients submitting to the engine directly.
    engine: Latencies,
    /// bot p50 / engine p50.
    p50_ratio: f64,
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// `users` users at once, `jobs` /imagine each, through a bot on `engine`.
async fn through_bot(
    engine: Arc<clip2gan::engine::Engine>,
    users: usize,
    jobs: usize,
) -> Latencies {
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        discord: DiscordConfig {
            api_base: fake.base.clone(),
            ..Default::default()
        },
        bot: BotConfig {
            store_path: dir.path().join("store.redb"),
            // The engine's per-user limit paces each user; a cooldown
            // would only add idle time between a user's jobs.
            cooldown_ms: 0,
            ..Default::default()
        },
        ..Default::default()
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let bot = tokio::spawn(clip2gan::bot::run(
        settings,
        Token::new("fake.bot.token"),
        engine,
        async move {
            let _ = stopped.await;
        },
    ));
    assert!(
        fake.wait_ready(1, Duration::from_secs(120)).await,
        "the bot never identified on the fake gateway"
    );
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..users)
        .map(|u| {
            let fake = fake.clone();
            tokio::spawn(async move {
                let mut ms = Vec::new();
                for j in 0..jobs {
                    let options = json!([
                        {"name": "prompt", "type": 3, "value": format!("a portrait of person number {u}")},
                        {"name": "seed", "type": 4, "value": u * 1000 + j},
                    ]);
                    let token = fake.command(5000 + u as u64, "imagine", options);
                    match fake.wait_answer(&token, Duration::from_secs(1800)).await {
                        Some(Timed {
                            at,
                            event: Event::Edit { files, .. },
                        }) if files.len() == 1 => {
                            let sent = fake.sent_at(&token).expect("sent");
                            ms.push((at - sent).as_secs_f64() * 1000.0);
                        }
                        other => panic!("user {u} job {j}: no image but {other:#?}"),
                    }
                }
                ms
            })
        })
        .collect();
    let mut ms = Vec::new();
    for t in tasks {
        ms.extend(t.await.unwrap());
    }
    let wall = t0.elapsed().as_secs_f64();
    let _ = stop.send(());
    bot.await.unwrap().unwrap();
    ms.sort_by(f64::total_cmp);
    Latencies {
        images: ms.len(),
        images_per_s: ms.len() as f64 / wall,
        p50_ms: pct(&ms, 0.5),
        p95_ms: pct(&ms, 0.95),
    }
}

fn main() {
    clip2gan::runtime::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let users: Vec<usize> = arg(&args, "--users")
        .unwrap_or_else(|| "1,16".into())
        .split(',')
        .map(|u| u.trim().parse().expect("--users: numbers, e.g. 1,16"))
        .collect();
    let jobs: usize = arg(&args, "--jobs").map_or(2, |j| j.parse().expect("--jobs: a number"));
    let app = clip2gan::config::Config::load(None).expect("config");
    let dev = clip2gan::device::select(&app.device).expect("device");
    let cfg = app.bench_setup();
    let max_batch = cfg.engine.max_batch;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut cases = Vec::new();
    for &n in &users {
        let e = clip2gan::bench::engine_clients(&cfg, &dev, n, jobs, max_batch).expect("engine");
        let engine = Latencies {
            images: e.images,
            images_per_s: e.images_per_s,
            p50_ms: e.p50_ms,
            p95_ms: e.p95_ms,
        };
        let warm = clip2gan::bench::warm_engine(&cfg, &dev, n, max_batch).expect("engine");
        let bot = rt.block_on(through_bot(warm, n, jobs));
        cases.push(Case {
            users: n,
            jobs_per_user: jobs,
            p50_ratio: bot.p50_ms / engine.p50_ms,
            bot,
            engine,
        });
    }
    println!(
        "{:>5} {:>5} | {:>9} {:>9} {:>7} | {:>9} {:>9} {:>7} | {:>9}",
        "users", "jobs", "bot p50", "bot p95", "img/s", "eng p50", "eng p95", "img/s", "p50 ratio"
    );
    for c in &cases {
        println!(
            "{:>5} {:>5} | {:>7.0}ms {:>7.0}ms {:>7.2} | {:>7.0}ms {:>7.0}ms {:>7.2} | {:>9.2}",
            c.users,
            c.jobs_per_user,
            c.bot.p50_ms,
            c.bot.p95_ms,
            c.bot.images_per_s,
            c.engine.p50_ms,
            c.engine.p95_ms,
            c.engine.images_per_s,
            c.p50_ratio
        );
    }
    println!(
        "{}",
        serde_json::to_string(&json!({"bench": "bot", "device": clip2gan::device::describe(&dev), "max_batch": max_batch, "cases": cases})).unwrap()
    );
}
