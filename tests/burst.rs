//! Resource exhaustion: 1,000 interactions from 200 users in one burst
//! against the engine's `queue_capacity`, the per-user limit and a daily
//! quota, the real serenity client and engine (the tiny random models)
//! against the fake Discord.
//!
//! Asserted: every one of the 1,000 is answered (deferred and then
//! delivered or failed, or refused at once with a reason), and afterwards
//! the bot's runtime is back to its idle count of tokio tasks (none leaked
//! per interaction; the bot runs on a runtime of its own, whose metrics
//! count its tasks), with the engine's queue empty; the process's peak RSS
//! grows by less than [`RSS_BOUND`]. Reported, not asserted (wall time
//! depends on the machine): the time to first answer as the fake sees it
//! (its p50 / p99 / max against Discord's 3 s defer limit), how the 1,000
//! were answered, and the RSS figures. `tools/` has no wrapper: run
//! `cargo test --release --test burst -- --nocapture` (on a quiet machine
//! for the times).
//!
//! Runtime: about 10 s on the shared 2-core machine (5 s of it the wait
//! for the idle count before the burst).

mod common;
mod fake_discord;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::Device;
use clip2gan::bot::{BotConfig, DiscordConfig, Settings, Token};
use clip2gan::engine::{Engine, EngineConfig, PipelineBackend};
use clip2gan::generator::mobilestylegan::MobileStyleGan;
use clip2gan::mapper::{self, Mapper};
use clip2gan::pipeline::{Pipeline, Settings as PipelineSettings};
use fake_discord::{Event, Fake};
use serde_json::json;

const USERS: u64 = 200;
const PER_USER: u64 = 5;
const GUILD: u64 = 5 << 22;
/// The daily quota per member: 3 of each user's 5 can be charged.
const QUOTA: u32 = 3;
/// How much the peak RSS may grow over the burst.
const RSS_BOUND: u64 = 1 << 30;
const WAIT: Duration = Duration::from_secs(300);

fn pipeline(g: &Path, clip: &Path, mapper_path: &Path) -> Pipeline {
    let meta = mapper::read_meta(mapper_path).unwrap();
    let (m, _) = Mapper::load(mapper_path, &common::compat(&meta), &Device::Cpu).unwrap();
    Pipeline {
        clip: clip2gan::clip::Clip::from_dir(clip, &Device::Cpu).unwrap(),
        mapper: m,
        generator: Box::new(MobileStyleGan::load(g, &Device::Cpu).unwrap()),
        settings: PipelineSettings {
            max_batch: 8,
            ..Default::default()
        },
    }
}

/// `VmHWM` / `VmRSS` of this process, in bytes.
fn rss(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

fn mib(b: u64) -> f64 {
    b as f64 / (1 << 20) as f64
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// What the first answer was, for the tally.
fn first_kind(e: &Event) -> &'static str {
    match e {
        Event::Callback { kind: 5, .. } => "deferred, then",
        Event::Callback { kind: 4, .. } => "refused at once, for",
        _ => "other",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_1000_interactions_is_all_answered_and_nothing_leaks() {
    let dir = tempfile::tempdir().unwrap();
    let (g, clip, mapper_path) = common::tiny_bot_models(dir.path());
    let fake = Fake::start().await;
    fake.set_guild(Some(GUILD));
    // No kept-alive connections: their tasks would stay after the burst,
    // as many as it opened, and hide a leak.
    fake.close_connections(true);

    // The bot on a runtime of its own, so that its task count is its own.
    let bot_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bot-rt")
        .enable_all()
        .build()
        .unwrap();
    let handle = bot_rt.handle().clone();
    let engine = {
        let (g, clip, m) = (g.clone(), clip.clone(), mapper_path.clone());
        Arc::new(
            Engine::start(
                EngineConfig {
                    queue_capacity: 64,
                    max_batch: 8,
                    max_wait_ms: 5,
                    settle_ms: 2,
                    per_user_limit: 2,
                    output_size: 64,
                    ..Default::default()
                },
                move || {
                    Ok(PipelineBackend {
                        pipeline: pipeline(&g, &clip, &m),
                        output_size: 64,
                    })
                },
            )
            .unwrap(),
        )
    };
    let settings = Settings {
        discord: DiscordConfig {
            api_base: fake.base.clone(),
            ..Default::default()
        },
        bot: BotConfig {
            store_path: dir.path().join("store.redb"),
            cooldown_ms: 0,
            daily_quota: QUOTA,
            progress_interval_ms: 1000,
            retry_base_ms: 100,
            shutdown_grace_s: 30,
            ..Default::default()
        },
        ..Default::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let bot = handle.spawn(clip2gan::bot::run_with_clock(
        settings,
        Token::new("fake.bot.token"),
        engine.clone(),
        async move {
            let _ = stop_rx.await;
        },
        Arc::new(clip2gan::bot::SystemClock),
    ));
    assert!(fake.wait_ready(1, WAIT).await, "the bot never identified");
    let alive = || handle.metrics().num_alive_tasks();

    // Idle, after one job of each kind the burst sends (anything spawned
    // once, lazily, is there now): the count to come back to.
    for (u, t) in [(9000, fake.command(9000, "imagine", imagine(0)))] {
        let a = fake.wait_answer(&t, WAIT).await;
        assert!(
            a.is_some(),
            "the warm-up job of {u}: {:#?}",
            fake.events(&t)
        );
    }
    let baseline = settle(&alive, None).await;
    let rss_before = rss("VmRSS:");
    let hwm_before = rss("VmHWM:");

    let mut tokens = Vec::new();
    for round in 0..PER_USER {
        for u in 0..USERS {
            tokens.push(fake.command(1 + u, "imagine", imagine(round * USERS + u)));
        }
    }
    // Every one has its first answer, then its last.
    let first = fake
        .wait_until(WAIT, |f| {
            let firsts: Vec<_> = tokens
                .iter()
                .map(|t| f.events(t).into_iter().next())
                .collect::<Option<Vec<_>>>()?;
            Some(firsts)
        })
        .await
        .expect("not every interaction got a first answer");
    for t in &tokens {
        assert!(
            fake.wait_answer(t, WAIT).await.is_some(),
            "{t} was never answered: {:#?}",
            fake.events(t)
        );
    }
    for (t, e) in tokens.iter().zip(&first) {
        assert!(
            matches!(e.event, Event::Callback { kind: 4 | 5, .. }),
            "{t}: the first answer is a defer or a reply: {:#?}",
            e.event
        );
    }
    let hwm_after = rss("VmHWM:");
    let after = settle(&alive, Some(baseline)).await;
    assert_eq!(
        after, baseline,
        "tokio tasks of the bot: {baseline} idle before the burst, {after} after"
    );
    assert_eq!(engine.queue_len(), 0, "the engine's queue is empty");
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());

    let mut times: Vec<Duration> = tokens
        .iter()
        .zip(&first)
        .map(|(t, e)| e.at - fake.sent_at(t).unwrap())
        .collect();
    times.sort();
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for (t, e) in tokens.iter().zip(&first) {
        let last = fake
            .events(t)
            .into_iter()
            .rev()
            .find(|x| fake_discord::is_answer(&x.event));
        let end = match last.map(|x| x.event) {
            Some(Event::Edit { files, .. }) if !files.is_empty() => "an image",
            Some(Event::Edit { .. }) => "an error",
            Some(Event::Callback { kind: 4, data }) => {
                let c = data["content"].as_str().unwrap_or("");
                if c.contains("of your daily quota") {
                    "the quota"
                } else if c.contains("queue is full") {
                    "a full queue"
                } else if c.contains("jobs in progress") {
                    "the per-user limit"
                } else {
                    "another reason"
                }
            }
            _ => "other",
        };
        *tally
            .entry(format!("{}: {end}", first_kind(&e.event)))
            .or_default() += 1;
    }
    let over_3s = times
        .iter()
        .filter(|d| **d >= Duration::from_secs(3))
        .count();
    eprintln!(
        "burst: {} interactions from {USERS} users, all answered: {tally:?}\n\
         time to first answer: p50 {:.1?}, p99 {:.1?}, max {:.1?}; {over_3s} at 3 s or more\n\
         bot tasks: {baseline} idle before, {after} after\n\
         RSS: {:.0} MiB before, peak {:.0} MiB before and {:.0} MiB over the burst (+{:.0} MiB)",
        tokens.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times[times.len() - 1],
        mib(rss_before),
        mib(hwm_before),
        mib(hwm_after),
        mib(hwm_after.saturating_sub(hwm_before)),
    );
    assert!(
        hwm_after - hwm_before < RSS_BOUND,
        "the burst grew the peak RSS by {:.0} MiB",
        mib(hwm_after - hwm_before)
    );
    let _ = stop_tx.send(());
    let r = tokio::task::block_in_place(|| {
        handle.block_on(async { tokio::time::timeout(WAIT, bot).await })
    });
    r.expect("the bot stops").unwrap().unwrap();
    drop(engine);
    tokio::task::block_in_place(move || drop(bot_rt));
}

fn imagine(seed: u64) -> serde_json::Value {
    json!([{"name": "prompt", "type": 3, "value": "a face"},
           {"name": "seed", "type": 4, "value": seed}])
}

/// The bot's task count as soon as it is down to `target`, or once it has
/// held still for 5 s (tasks end a moment after their last call is
/// answered; with no target, this is the idle count).
async fn settle(alive: &impl Fn() -> usize, target: Option<usize>) -> usize {
    let deadline = Instant::now() + WAIT;
    let (mut last, mut still) = (alive(), 0);
    loop {
        if target.is_some_and(|t| last <= t) {
            return last;
        }
        // A poll of the runtime's count (it has no event for it); the
        // count it returns does not depend on when it looks.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = alive();
        if now == last {
            still += 1;
            if still >= 100 {
                return now;
            }
        } else {
            (last, still) = (now, 0);
        }
        assert!(Instant::now() < deadline, "the task count never settled");
    }
}
