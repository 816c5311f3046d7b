//! The Discord bot end to end: the real serenity client and the real engine
//! (a small random CLIP, a random mapper and the real MobileStyleGAN at a
//! small output size) against a fake Discord on 127.0.0.1.

mod common;
mod fake_discord;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use candle_core::Device;
use clip2gan::bot::{BotConfig, BotError, DiscordConfig, Settings, Token};
use clip2gan::engine::{
    Backend, Engine, EngineConfig, EngineError, GrowingBackend, PipelineBackend, RawOutput, Request,
};
use clip2gan::generator::Generator;
use clip2gan::pipeline::{Pipeline, Settings as PipelineSettings};
use fake_discord::{Event, Failure, Fake, Timed};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const SIZE: usize = 64;
const WAIT: Duration = Duration::from_secs(60);

/// One tiny pipeline (random CLIP + mapper) for the whole test binary.
fn models() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(common::tiny_pipeline_dir).path()
}

fn pipeline(dir: &Path) -> Pipeline {
    common::tiny_pipeline(
        dir,
        PipelineSettings {
            max_batch: 4,
            ..Default::default()
        },
    )
}

fn engine(cfg: EngineConfig) -> Arc<Engine> {
    let dir = models().to_path_buf();
    Arc::new(
        Engine::start(cfg, move || {
            Ok(PipelineBackend {
                pipeline: pipeline(&dir),
                output_size: SIZE,
            })
        })
        .unwrap(),
    )
}

fn engine_config() -> EngineConfig {
    EngineConfig {
        queue_capacity: 64,
        max_batch: 4,
        max_wait_ms: 10,
        settle_ms: 10,
        per_user_limit: 2,
        output_size: SIZE,
        ..Default::default()
    }
}

fn settings(fake: &Fake, store: &Path) -> Settings {
    Settings {
        discord: DiscordConfig {
            api_base: fake.base.clone(),
            ..Default::default()
        },
        bot: BotConfig {
            store_path: store.to_path_buf(),
            cooldown_ms: 0,
            variations_count: 2,
            progress_interval_ms: 200,
            retry_base_ms: 100,
            shutdown_grace_s: 30,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A running bot; `stop` shuts it down gracefully and returns run's result.
struct Running {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), BotError>>,
}

impl Running {
    async fn stop(mut self) -> Result<(), BotError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("the bot stops within a minute")
            .unwrap()
    }

    /// Stop, once the fake has seen no breach of Discord's rules.
    async fn stop_clean(self, fake: &Fake) {
        assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
        self.stop().await.unwrap();
    }
}

/// [`start`] on the default engine.
async fn start_default(fake: &Arc<Fake>, s: Settings) -> Running {
    start(fake, s, engine(engine_config())).await
}

async fn start(fake: &Arc<Fake>, s: Settings, e: Arc<Engine>) -> Running {
    start_clocked(fake, s, e, Arc::new(clip2gan::bot::SystemClock)).await
}

/// [`start`] with the clock the daily quotas are counted in.
async fn start_clocked(
    fake: &Arc<Fake>,
    s: Settings,
    e: Arc<Engine>,
    clock: Arc<dyn clip2gan::bot::Clock>,
) -> Running {
    // The bot's logs only when asked for (RUST_LOG=clip2gan=info,serenity=info).
    if std::env::var_os("RUST_LOG").is_some() {
        clip2gan::bot::init_logging();
    }
    let before = fake.identifies() + fake.resumes();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(clip2gan::bot::run_with_clock(
        s,
        Token::new("fake.bot.token"),
        e,
        async move {
            let _ = rx.await;
        },
        clock,
    ));
    assert!(
        fake.wait_ready(before + 1, WAIT).await,
        "the bot never identified on the fake gateway"
    );
    Running {
        stop: Some(tx),
        task,
    }
}

/// A fake Discord, and a fresh directory with the bot's store path in it.
async fn world() -> (Arc<Fake>, tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.redb");
    (Fake::start().await, dir, store)
}

/// The answer of `token`, which must exist.
async fn answer(fake: &Fake, token: &str) -> Timed {
    match fake.wait_answer(token, WAIT).await {
        Some(t) => t,
        None => panic!("no answer for {token}: {:#?}", fake.events(token)),
    }
}

/// The answer, which must be an edit carrying one PNG; returns (payload, image).
async fn image(fake: &Fake, token: &str) -> (Value, image::RgbImage) {
    let t = answer(fake, token).await;
    match t.event {
        Event::Edit { payload, files, .. } if files.len() == 1 => {
            let img = image::load_from_memory(&files[0].1)
                .expect("a PNG")
                .to_rgb8();
            (payload, img)
        }
        other => panic!("expected an image for {token}, got {other:#?}"),
    }
}

/// The answer, which must be an ephemeral reply; returns its text.
async fn ephemeral(fake: &Fake, token: &str) -> String {
    let t = answer(fake, token).await;
    match &t.event {
        Event::Callback { kind: 4, data } => {
            assert_eq!(data["flags"], 64, "ephemeral: {data}");
            assert_no_mentions(data);
            data["content"].as_str().unwrap().to_string()
        }
        other => panic!("expected an ephemeral reply for {token}, got {other:#?}"),
    }
}

fn assert_no_mentions(payload: &Value) {
    let m = &payload["allowed_mentions"];
    assert_eq!(m["parse"], json!([]), "allowed_mentions: {payload}");
    assert!(m["users"].as_array().is_none_or(|a| a.is_empty()));
    assert!(m["roles"].as_array().is_none_or(|a| a.is_empty()));
}

/// Custom ids of the buttons in a payload.
fn buttons(payload: &Value) -> Vec<String> {
    payload["components"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["custom_id"].as_str().map(String::from))
        .collect()
}

fn button(payload: &Value, prefix: &str) -> String {
    buttons(payload)
        .into_iter()
        .find(|b| b.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} button in {payload}"))
}

fn content(payload: &Value) -> &str {
    payload["content"].as_str().unwrap_or("")
}

/// Size of the image file in the final answer of `token`.
fn delivered_bytes(fake: &Fake, token: &str) -> usize {
    match &fake.events(token).last().unwrap().event {
        Event::Edit { files, .. } if files.len() == 1 => files[0].1.len(),
        other => panic!("expected an image for {token}, got {other:?}"),
    }
}

fn imagine(prompt: &str) -> Value {
    json!([{"name": "prompt", "type": 3, "value": prompt}])
}

fn max_diff(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_buttons_and_history() {
    let (fake, _dir, store) = world().await;
    let bot = start_default(&fake, settings(&fake, &store)).await;

    // Registration: one global bulk overwrite with every command (the
    // options of the new ones are checked in `registration_matches_discord_schema`).
    let regs = fake
        .wait_until(WAIT, |f| Some(f.registrations()).filter(|r| !r.is_empty()))
        .await
        .unwrap();
    assert_eq!(regs.len(), 1);
    assert_eq!(
        regs[0].0,
        format!("/api/v10/applications/{}/commands", fake_discord::APP_ID)
    );
    let cmds = regs[0].1.as_array().unwrap();
    let names: Vec<&str> = cmds.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "imagine",
            "edit",
            "undo",
            "morph",
            "history",
            "settings",
            "Edit this face"
        ]
    );
    let opt = |c: usize, name: &str| {
        cmds[c]["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .cloned()
            .unwrap()
    };
    assert_eq!(opt(0, "prompt")["type"], 3);
    assert_eq!(opt(0, "prompt")["required"], true);
    assert_eq!(
        (
            opt(0, "count")["type"].clone(),
            opt(0, "count")["min_value"].clone(),
            opt(0, "count")["max_value"].clone()
        ),
        (json!(4), json!(1), json!(4))
    );
    assert_eq!(opt(0, "seed")["type"], 4);
    assert_eq!(opt(1, "instruction")["required"], true);
    assert_eq!(
        (
            opt(1, "strength")["type"].clone(),
            opt(1, "strength")["min_value"].clone()
        ),
        (json!(10), json!(-3.0))
    );

    // /imagine: deferred at once, then edited with the image and buttons.
    let t = fake.command(
        1,
        "imagine",
        json!([{"name": "prompt", "type": 3, "value": "a man with a beard"},
               {"name": "seed", "type": 4, "value": 7}]),
    );
    let (first, img1) = image(&fake, &t).await;
    let events = fake.events(&t);
    assert!(
        matches!(events[0].event, Event::Callback { kind: 5, .. }),
        "{events:#?}"
    );
    assert!(events[0].at - fake.sent_at(&t).unwrap() < Duration::from_secs(3));
    assert_eq!(img1.dimensions(), (SIZE as u32, SIZE as u32));
    assert!(
        content(&first).contains("a man with a beard") && content(&first).contains("seed `7`"),
        "{first}"
    );
    assert_no_mentions(&first);
    for prefix in [
        "c2g:var:",
        "c2g:reroll:",
        "c2g:edit:",
        "c2g:undo:",
        "c2g:del:",
    ] {
        button(&first, prefix);
    }

    // /edit applies to the latest image.
    let t = fake.command(1, "edit", json!([{"name": "instruction", "type": 3, "value": "add smile"}, {"name": "strength", "type": 10, "value": 2.0}]));
    let (edited, img2) = image(&fake, &t).await;
    assert!(
        content(&edited).starts_with("**/edit** add smile"),
        "{edited}"
    );
    assert!(max_diff(&img1, &img2) > 10, "the edit changed nothing");

    // /undo shows the image before the edit again.
    let t = fake.command(1, "undo", json!([]));
    let (undone, img3) = image(&fake, &t).await;
    assert!(content(&undone).contains("Undone"), "{undone}");
    assert!(max_diff(&img1, &img3) <= 2, "undo shows the first image");
    let t = fake.command(1, "undo", json!([]));
    assert!(ephemeral(&fake, &t).await.contains("Nothing to undo"));

    // Variations (pressed by another user: the result is theirs): a grid
    // with one pick button per image.
    let t = fake.button(2, &button(&first, "c2g:var:"));
    let (vars, grid) = image(&fake, &t).await;
    assert_eq!(grid.dimensions(), (2 * SIZE as u32, SIZE as u32));
    assert!(content(&vars).contains("by <@2>"), "{vars}");
    let picks: Vec<String> = buttons(&vars)
        .into_iter()
        .filter(|b| b.starts_with("c2g:pick:"))
        .collect();
    assert_eq!(picks.len(), 2, "{vars}");
    let t = fake.button(2, &picks[1]);
    let (picked, _) = image(&fake, &t).await;
    assert!(content(&picked).contains("Image 2 picked"), "{picked}");
    // User 2's /edit now edits that picked image.
    let t = fake.command(
        2,
        "edit",
        json!([{"name": "instruction", "type": 3, "value": "make older"}]),
    );
    let (e2, _) = image(&fake, &t).await;
    assert!(content(&e2).contains("image 2"), "{e2}");

    // Re-roll: same prompt, new seed.
    let t = fake.button(1, &button(&first, "c2g:reroll:"));
    let (rerolled, _) = image(&fake, &t).await;
    assert!(
        content(&rerolled).contains("a man with a beard")
            && !content(&rerolled).contains("seed `7`"),
        "{rerolled}"
    );

    // Edit button: a modal, then its submission.
    let t = fake.button(1, &button(&first, "c2g:edit:"));
    let modal = answer(&fake, &t).await;
    let Event::Callback { kind: 9, data } = &modal.event else {
        panic!("expected a modal: {modal:#?}")
    };
    let modal_id = data["custom_id"].as_str().unwrap().to_string();
    assert!(modal_id.starts_with("c2g:editm:"));
    let t = fake.modal(
        1,
        &modal_id,
        &[("instruction", "remove beard"), ("strength", "abc")],
    );
    assert!(ephemeral(&fake, &t).await.contains("strength"));
    let t = fake.modal(
        1,
        &modal_id,
        &[("instruction", "remove beard"), ("strength", "1.5")],
    );
    let (modal_edit, _) = image(&fake, &t).await;
    assert!(
        content(&modal_edit).contains("remove beard"),
        "{modal_edit}"
    );

    // Undo button on an edit goes back to the image it was made from.
    let t = fake.button(1, &button(&edited, "c2g:undo:"));
    let (_, back) = image(&fake, &t).await;
    assert!(max_diff(&img1, &back) <= 2);

    // Delete: owner only; afterwards its buttons explain.
    let del = button(&edited, "c2g:del:");
    let t = fake.button(2, &del);
    assert!(ephemeral(&fake, &t).await.contains("Only the person"));
    let t = fake.button(1, &del);
    answer(&fake, &t).await;
    let ev = fake.events(&t);
    assert!(
        matches!(ev[0].event, Event::Callback { kind: 6, .. }),
        "{ev:#?}"
    );
    assert!(matches!(ev.last().unwrap().event, Event::Delete));
    let t = fake.button(1, &button(&edited, "c2g:var:"));
    assert!(ephemeral(&fake, &t).await.contains("no longer stored"));

    assert!(fake.unhandled().is_empty(), "{:?}", fake.unhandled());
    bot.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_an_explanation() {
    let (fake, _dir, store) = world().await;
    let mut s = settings(&fake, &store);
    s.bot.cooldown_ms = 60_000;
    s.bot.blocklist = vec!["forbidden thing".into()];
    s.discord.allowed_guilds = vec![11];
    fake.set_guild(Some(11));
    let bot = start_default(&fake, s).await;

    let refused = |opts: Value| {
        let fake = fake.clone();
        async move {
            let t = fake.command(100, "imagine", opts);
            ephemeral(&fake, &t).await
        }
    };
    assert!(refused(imagine("")).await.contains("empty"));
    assert!(refused(imagine(" \u{200B}\u{200D}\u{0007} "))
        .await
        .contains("empty"));
    assert!(refused(imagine(&"a".repeat(6000)))
        .await
        .contains("6000 characters"));
    assert!(refused(imagine("a FORBIDDEN   thing"))
        .await
        .contains("not allowed"));
    assert!(refused(imagine("a forbid\u{200B}den thing"))
        .await
        .contains("not allowed"));
    let count = |v: Value| json!([{"name": "prompt", "type": 3, "value": "a face"}, {"name": "count", "type": 4, "value": v}]);
    assert!(refused(count(json!(0)))
        .await
        .contains("`count` must be 1 to 4"));
    assert!(refused(count(json!(9)))
        .await
        .contains("`count` must be 1 to 4"));
    let wrong_type = json!([{"name": "prompt", "type": 3, "value": "a face"}, {"name": "count", "type": 3, "value": "two"}]);
    assert!(refused(wrong_type).await.contains("whole number"));
    let seed = |v: Value| json!([{"name": "prompt", "type": 3, "value": "a face"}, {"name": "seed", "type": 4, "value": v}]);
    assert!(refused(seed(json!(-1))).await.contains("`seed`"));
    assert!(refused(seed(json!(1u64 << 60))).await.contains("`seed`"));

    // Strength is checked before history is looked at.
    let t = fake.command(100, "edit", json!([{"name": "instruction", "type": 3, "value": "add smile"}, {"name": "strength", "type": 10, "value": 7.5}]));
    assert!(ephemeral(&fake, &t).await.contains("-3 to 3"));
    // Users with no history.
    let t = fake.command(
        101,
        "edit",
        json!([{"name": "instruction", "type": 3, "value": "add smile"}]),
    );
    assert!(ephemeral(&fake, &t).await.contains("no image to edit"));
    let t = fake.command(102, "undo", json!([]));
    assert!(ephemeral(&fake, &t).await.contains("Nothing to undo"));
    let t = fake.command(100, "dance", json!([]));
    assert!(ephemeral(&fake, &t).await.contains("Unknown command"));
    // Buttons of messages whose results are gone (very old, or another
    // store), and of unknown shape.
    for id in [
        "c2g:var:987654:0",
        "c2g:undo:987654:0",
        "c2g:del:987654:0",
        "c2g:pick:987654:1",
    ] {
        let t = fake.button(103, id);
        assert!(
            ephemeral(&fake, &t).await.contains("no longer stored"),
            "{id}"
        );
    }
    let t = fake.button(103, "something-else");
    assert!(ephemeral(&fake, &t).await.contains("older version"));
    let t = fake.modal(103, "c2g:editm:987654:0", &[("instruction", "add smile")]);
    assert!(ephemeral(&fake, &t).await.contains("no longer stored"));

    // Guild allowlist: other guilds and DMs are refused.
    let t = fake.command_in(100, Some(12), "imagine", imagine("a face"));
    assert!(ephemeral(&fake, &t).await.contains("not enabled here"));
    let t = fake.command_in(100, None, "imagine", imagine("a face"));
    assert!(ephemeral(&fake, &t).await.contains("not enabled here"));

    // Mentions, markdown, control and zero-width characters: cleaned,
    // echoed inert, and nothing may ping.
    let t = fake.command(
        104,
        "imagine",
        imagine("@everyone <@123> **bold** [x](http://e.vil) a\u{0000}b\u{200B}c\nman"),
    );
    let (p, _) = image(&fake, &t).await;
    let c = content(&p);
    assert!(
        c.contains("\\@everyone") && !c.contains("<@123>") && c.contains("\\*\\*bold\\*\\*"),
        "{c}"
    );
    assert!(
        c.contains("\\[x\\]\\(http\\://e.vil\\)") && c.contains(" abc man"),
        "{c}"
    );
    assert_no_mentions(&p);

    // An upload limit smaller than the image: it is shrunk to fit. The
    // limit is taken from this very image (same prompt and seed, so the same
    // face), which makes the shrinking necessary whatever the face is.
    let hat = json!([{"name": "prompt", "type": 3, "value": "a man with a hat"},
                     {"name": "seed", "type": 4, "value": 3}]);
    let t = fake.command(105, "imagine", hat.clone());
    let (_, full) = image(&fake, &t).await;
    assert_eq!(full.dimensions(), (SIZE as u32, SIZE as u32));
    let full_bytes = delivered_bytes(&fake, &t);
    let limit = (full_bytes * 3 / 4) as u32;
    fake.set_size_limit(limit);
    let t = fake.command(106, "imagine", hat);
    let (_, small) = image(&fake, &t).await;
    assert!(small.width() < SIZE as u32, "{:?}", small.dimensions());
    assert!(
        delivered_bytes(&fake, &t) <= limit as usize,
        "{} bytes over the limit {limit}",
        delivered_bytes(&fake, &t)
    );
    fake.set_size_limit(8 << 20);

    // Cooldown: a second job right away is refused with the wait.
    let t = fake.command(104, "imagine", imagine("a woman"));
    assert!(ephemeral(&fake, &t).await.contains("Slow down"));

    bot.stop().await.unwrap();
}

/// Twenty users at once: every interaction is answered with an image.
/// Prints the time from interaction to posted image.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_users_at_once() {
    let (fake, _dir, store) = world().await;
    let mut ecfg = engine_config();
    ecfg.max_batch = 8;
    let bot = start(&fake, settings(&fake, &store), engine(ecfg)).await;
    let tokens: Vec<String> = (0..20u64)
        .map(|u| fake.command(1000 + u, "imagine", imagine(&format!("face number {u}"))))
        .collect();
    let mut times = Vec::new();
    let mut unanswered = 0;
    for t in &tokens {
        match fake.wait_answer(t, Duration::from_secs(120)).await {
            Some(Timed {
                at,
                event: Event::Edit { files, .. },
            }) if files.len() == 1 => {
                times.push((at - fake.sent_at(t).unwrap()).as_secs_f64());
            }
            _ => unanswered += 1,
        }
    }
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1];
    let queued_feedback = tokens
        .iter()
        .filter(|t| {
            fake.events(t).iter().any(|e| {
                e.event
                    .content()
                    .is_some_and(|c| c.contains("ahead of you"))
            })
        })
        .count();
    eprintln!(
        "load test: 20 users, {} images, p50 {:.2} s, p95 {:.2} s, max {:.2} s, unanswered {unanswered}, {queued_feedback} saw their queue position",
        times.len(),
        pct(0.5),
        pct(0.95),
        times.last().unwrap()
    );
    assert_eq!(unanswered, 0);
    bot.stop().await.unwrap();
}

/// The delivery of the result fails with 500 twice, or with 429: retried,
/// delivered. Only the deliveries (edits carrying the image) count: a job
/// may also get queue-progress edits, as many as its wait allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_deliveries_are_retried() {
    let (fake, _dir, store) = world().await;
    let bot = start_default(&fake, settings(&fake, &store)).await;
    let a = fake.command(1, "imagine", imagine("a face"));
    fake.fail_deliveries(&a, &[Failure::Status(500), Failure::Status(502)]);
    let b = fake.command(2, "imagine", imagine("another face"));
    fake.fail_deliveries(&b, &[Failure::RateLimited(0.5)]);
    image(&fake, &a).await;
    image(&fake, &b).await;
    let statuses = |t: &str| -> Vec<(u16, Instant)> {
        fake.events(t)
            .into_iter()
            .filter_map(|e| match e.event {
                Event::Edit { status, files, .. } if !files.is_empty() => Some((status, e.at)),
                _ => None,
            })
            .collect()
    };
    let sa = statuses(&a);
    assert_eq!(sa.iter().map(|s| s.0).collect::<Vec<_>>(), [500, 502, 200]);
    let sb = statuses(&b);
    assert_eq!(sb.iter().map(|s| s.0).collect::<Vec<_>>(), [429, 200]);
    assert!(
        sb[1].1 - sb[0].1 >= Duration::from_millis(500),
        "retry-after was honoured"
    );
    bot.stop().await.unwrap();
}

/// The gateway connection drops while a job runs: the result is still
/// delivered (over HTTP), the client reconnects, and new commands work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_drop_mid_job() {
    let (fake, _dir, store) = world().await;
    let bot = start_default(&fake, settings(&fake, &store)).await;
    let t = fake.command(
        1,
        "imagine",
        json!([{"name": "prompt", "type": 3, "value": "a face"}, {"name": "count", "type": 4, "value": 4}]),
    );
    fake.wait_event(&t, WAIT, |e| matches!(e, Event::Callback { kind: 5, .. }))
        .await
        .expect("deferred");
    let sessions = fake.identifies() + fake.resumes();
    fake.drop_gateway();
    let (_, grid) = image(&fake, &t).await;
    assert_eq!(grid.dimensions(), (2 * SIZE as u32, 2 * SIZE as u32));
    assert!(
        fake.wait_ready(sessions + 1, WAIT).await,
        "the client reconnected"
    );
    let t = fake.command(
        1,
        "edit",
        json!([{"name": "instruction", "type": 3, "value": "add glasses"}]),
    );
    image(&fake, &t).await;
    assert_eq!(
        fake.registrations().len(),
        1,
        "commands are registered once per run"
    );
    bot.stop().await.unwrap();
}

/// A restart between /imagine and /edit: the store keeps the latent and the
/// history. A corrupt store file at start is set aside with a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_edit_and_undo_working() {
    let (fake, dir, store) = world().await;
    std::fs::write(
        &store,
        b"this is not a database, just garbage bytes".repeat(100),
    )
    .unwrap();
    let bot = start_default(&fake, settings(&fake, &store)).await;
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept aside");
    let t = fake.command(5, "imagine", imagine("a woman with red hair"));
    let (first, img1) = image(&fake, &t).await;
    bot.stop().await.unwrap();

    let bot = start_default(&fake, settings(&fake, &store)).await;
    let t = fake.command(
        5,
        "edit",
        json!([{"name": "instruction", "type": 3, "value": "add smile"}]),
    );
    let (edited, _) = image(&fake, &t).await;
    assert!(
        content(&edited).contains("a woman with red hair"),
        "{edited}"
    );
    let t = fake.command(5, "undo", json!([]));
    let (_, back) = image(&fake, &t).await;
    assert!(
        max_diff(&img1, &back) <= 2,
        "undo after a restart shows the first image"
    );
    // Buttons of a message from before the restart still act on its image.
    let t = fake.button(6, &button(&first, "c2g:var:"));
    image(&fake, &t).await;
    bot.stop().await.unwrap();
}

/// The real pipeline behind a gate: each batch waits for a permit (or for
/// the gate's sender to be dropped), so a test decides when jobs finish
/// instead of racing the machine's speed.
struct Gated {
    inner: PipelineBackend,
    permits: std::sync::mpsc::Receiver<()>,
}

impl Backend for Gated {
    fn latent_shape(&self) -> (usize, usize) {
        self.inner.latent_shape()
    }

    fn run(&mut self, batch: &[Request]) -> Vec<Result<RawOutput, EngineError>> {
        // Err: the sender is gone, the gate stays open.
        let _ = self.permits.recv();
        self.inner.run(batch)
    }
}

/// An engine whose batches run only when the returned gate lets them.
fn gated_engine(cfg: EngineConfig) -> (Arc<Engine>, std::sync::mpsc::Sender<()>) {
    let dir = models().to_path_buf();
    let (tx, rx) = std::sync::mpsc::channel();
    let e = Engine::start(cfg, move || {
        Ok(Gated {
            inner: PipelineBackend {
                pipeline: pipeline(&dir),
                output_size: SIZE,
            },
            permits: rx,
        })
    })
    .unwrap();
    (Arc::new(e), tx)
}

/// Poll engine state that another task is about to change.
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    // A guard against a hang, not a race: the state changes right away.
    tokio::time::timeout(WAIT, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("never happened: {what}"));
}

/// SIGINT/SIGTERM: queued jobs are answered with a clear message, running
/// ones delivered, and run returns. Before that: a full queue and a busy
/// user get an answer, not silence. The running job is held at a gate, so
/// what is queued, refused and shut down is the same on any machine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_busy_user_and_shutdown() {
    let (fake, _dir, store) = world().await;
    let mut ecfg = engine_config();
    ecfg.max_batch = 1;
    ecfg.queue_capacity = 2;
    ecfg.per_user_limit = 1;
    let (engine, gate) = gated_engine(ecfg);
    let bot = start(&fake, settings(&fake, &store), engine.clone()).await;
    let count4 = |p: &str| json!([{"name": "prompt", "type": 3, "value": p}, {"name": "count", "type": 4, "value": 4}]);
    // User 200's job runs (held at the gate) ...
    let running = fake.command(200, "imagine", count4("a face"));
    fake.wait_event(&running, WAIT, |e| {
        matches!(e, Event::Callback { kind: 5, .. })
    })
    .await
    .expect("deferred");
    until("the worker takes the job", || engine.queue_len() == 0).await;
    // ... so their second is refused (one job in flight per user), two
    // others fill the queue and the last two find it full.
    let mut tokens = vec![fake.command(200, "imagine", count4("a face"))];
    tokens.extend((1..5u64).map(|u| fake.command(200 + u, "imagine", count4("a face"))));
    let (mut busy, mut full, mut queued) = (0, 0, Vec::new());
    for t in &tokens {
        let first = fake
            .wait_event(t, WAIT, |e| matches!(e, Event::Callback { .. }))
            .await
            .expect("every interaction is answered");
        match first.event {
            Event::Callback { kind: 5, .. } => queued.push(t.clone()),
            Event::Callback { kind: 4, data } => {
                let c = data["content"].as_str().unwrap();
                if c.contains("jobs in progress") {
                    busy += 1;
                } else if c.contains("queue is full") {
                    full += 1;
                } else {
                    panic!("unexpected refusal: {c}");
                }
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!((busy, full, queued.len()), (1, 2, 2), "{queued:?}");

    // Shut down while the job still runs: the queued two are told, the
    // running one is delivered once the gate opens.
    let stopping = tokio::spawn(bot.stop());
    until("the engine is shutting down", || engine.is_shutting_down()).await;
    drop(gate);
    stopping.await.unwrap().unwrap();
    for t in &queued {
        let a = answer(&fake, t).await;
        match &a.event {
            Event::Edit { files, payload, .. } if files.is_empty() => {
                assert!(content(payload).contains("shutting down"), "{payload}")
            }
            Event::Edit { files, payload, .. } => panic!(
                "a queued job was not told of the shutdown: {} file(s), {:?}",
                files.len(),
                content(payload)
            ),
            other => panic!("a queued job was not told of the shutdown: {other:?}"),
        }
    }
    let (_, grid) = image(&fake, &running).await;
    assert_eq!(grid.dimensions(), (2 * SIZE as u32, 2 * SIZE as u32));
}

/// Background work (growing the pair bank) only when the test lets it.
struct GatedIdle<B> {
    inner: B,
    permits: std::sync::mpsc::Receiver<()>,
}

impl<B: Backend> Backend for GatedIdle<B> {
    fn latent_shape(&self) -> (usize, usize) {
        self.inner.latent_shape()
    }

    fn run(&mut self, batch: &[Request]) -> Vec<Result<RawOutput, EngineError>> {
        self.inner.run(batch)
    }

    fn idle(&mut self) -> bool {
        // Err: the sender is gone, the work goes on freely.
        let _ = self.permits.recv();
        self.inner.idle()
    }

    fn warming(&self) -> Option<clip2gan::engine::Warmup> {
        self.inner.warming()
    }
}

/// First use: no mapper on disk. Commands are answered at once with the
/// warm-up's progress, never silence; once the first fit is written,
/// /imagine posts a face and the mapper file is there for the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warming_up_then_serving() {
    use clip2gan::train::{warmup, Mode, TrainConfig};
    let (fake, dir, store) = world().await;
    let out = dir.path().join("mapper.safetensors");
    let plan = warmup::Plan {
        out: out.clone(),
        run_dir: dir.path().join("run"),
        train: TrainConfig {
            mode: Mode::Fit,
            image_size: 32,
            chunk_pairs: 8,
            // This test is about warming up; refinement has its own.
            refine: clip2gan::train::refine::RefineConfig {
                steps: 0,
                ..Default::default()
            },
            ..Default::default()
        },
        clip_model: "tiny".into(),
        captions: clip2gan::train::captions::Captions::faces(),
        first_pairs: 24,
        pairs: 32,
    };
    let (gate, permits) = std::sync::mpsc::channel();
    let clip_dir = models().join("clip");
    let engine = Arc::new(
        Engine::start(engine_config(), move || {
            let clip = clip2gan::clip::Clip::from_dir(&clip_dir, &Device::Cpu)?;
            let g: Box<dyn Generator> = Box::new(common::mobilestylegan());
            let growth = warmup::Growth::new(plan, &clip, g.as_ref(), false)?;
            let settings = PipelineSettings {
                max_batch: 4,
                ..Default::default()
            };
            Ok(GatedIdle {
                inner: GrowingBackend::new(clip, g, None, Some(growth), settings, SIZE)?,
                permits,
            })
        })
        .unwrap(),
    );
    let bot = start(&fake, settings(&fake, &store), engine.clone()).await;
    let seeded = json!([{"name": "prompt", "type": 3, "value": "a man with a beard"},
                        {"name": "seed", "type": 4, "value": 5}]);
    let t = fake.command(300, "imagine", seeded.clone());
    let said = ephemeral(&fake, &t).await;
    assert!(said.contains("Warming up") && said.contains("0%"), "{said}");
    assert!(!out.exists(), "no mapper before the first fit");
    drop(gate);
    until("the first mapper is ready", || engine.warming().is_none()).await;
    assert!(out.exists(), "the mapper is written for later runs");
    let t = fake.command(300, "imagine", seeded);
    let (payload, img) = image(&fake, &t).await;
    assert_eq!(img.dimensions(), (SIZE as u32, SIZE as u32));
    assert!(
        content(&payload).contains("a man with a beard"),
        "{payload}"
    );
    bot.stop().await.unwrap();
}

/// `clip2gan bot` without a token fails at once with what to do.
#[test]
fn missing_token_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str| {
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, config).unwrap();
        common::bin()
            .args(["--config", cfg.to_str().unwrap(), "bot"])
            .current_dir(dir.path())
            .env_remove("DISCORD_TOKEN")
            .output()
            .unwrap()
    };
    let o = run("");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("DISCORD_TOKEN") && err.contains("token_file"),
        "{err}"
    );
    let o = run("[discord]\ntoken_file = \"missing-token.txt\"\n");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing-token.txt"));
    std::fs::write(dir.path().join("blank.txt"), "\n").unwrap();
    let o = run("[discord]\ntoken_file = \"blank.txt\"\n");
    assert!(String::from_utf8_lossy(&o.stderr).contains("empty"));
}

// ---------------------------------------------------------------------------
// Photos, morphs, history and server settings (issue 15).
// ---------------------------------------------------------------------------

use clip2gan::bot::store::Store;
use fake_discord::{attachment_json, Serve};

/// A quota clock the test moves by hand: a day passes in an instant.
struct TestClock(std::sync::atomic::AtomicU64);

impl clip2gan::bot::Clock for TestClock {
    fn now_unix(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl TestClock {
    fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Settings whose photo downloads go to the fake CDN.
fn photo_settings(fake: &Fake, store: &Path) -> Settings {
    let mut s = settings(fake, store);
    s.discord.attachment_hosts = vec![fake.files_base.clone()];
    s.bot.max_attachment_bytes = 300_000;
    s.bot.attachment_timeout_ms = 1500;
    s.bot.morph_frames = 4;
    s
}

fn encode(img: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// A deterministic "photo": smooth colour ramps and a disc, no face.
fn photo_rgb(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - w as f32 / 2.0, y as f32 - h as f32 / 2.5);
        let disc = if dx * dx + dy * dy < (w as f32 / 4.0).powi(2) {
            90
        } else {
            0
        };
        image::Rgb([
            (x * 255 / w) as u8,
            (y * 255 / h) as u8 / 2 + disc,
            (((x + y) * 7) % 200) as u8,
        ])
    })
}

fn png_bytes(img: image::DynamicImage) -> Vec<u8> {
    encode(&img, image::ImageFormat::Png)
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A small valid PNG whose header claims `w` x `h` pixels.
fn dimension_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut png = png_bytes(image::DynamicImage::ImageRgb8(photo_rgb(8, 8)));
    // IHDR data starts after the signature (8), length (4) and type (4).
    png[16..20].copy_from_slice(&w.to_be_bytes());
    png[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

fn animated_gif() -> Vec<u8> {
    let mut buf = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut buf);
        for k in 0..3u8 {
            let frame = image::RgbaImage::from_fn(40, 40, |x, y| {
                image::Rgba([x as u8 * 6, y as u8 * 6, k * 80, 255])
            });
            enc.encode_frame(image::Frame::new(frame)).unwrap();
        }
    }
    buf
}

/// Options of a command with an attached `image` (attachment `id`).
fn with_image(mut options: Value, id: u64) -> Value {
    options
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "image", "type": 11, "value": id.to_string()}));
    options
}

fn instruction(text: &str) -> Value {
    json!([{"name": "instruction", "type": 3, "value": text}])
}

/// The answer of a job refused after it was deferred: an ephemeral
/// follow-up, and the public "thinking" message removed.
async fn private_refusal(fake: &Fake, token: &str) -> String {
    let t = answer(fake, token).await;
    let Event::Followup { payload } = &t.event else {
        panic!(
            "expected an ephemeral follow-up for {token}, got {:#?}",
            fake.events(token)
        );
    };
    assert_eq!(payload["flags"], 64, "ephemeral: {payload}");
    assert_no_mentions(payload);
    fake.wait_event(token, WAIT, |e| matches!(e, Event::Delete))
        .await
        .unwrap_or_else(|| panic!("the deferred message stays: {:#?}", fake.events(token)));
    content(payload).to_string()
}

/// The number after the last "result #" in a message.
fn result_id(payload: &Value) -> u64 {
    let c = content(payload);
    let at = c
        .rfind("result #")
        .unwrap_or_else(|| panic!("no result id in {c}"))
        + 8;
    c[at..]
        .chars()
        .take_while(|ch| ch.is_ascii_digit())
        .collect::<String>()
        .parse()
        .unwrap()
}

fn to_rgb(images: &candle_core::Tensor) -> image::RgbImage {
    let small = clip2gan::image_io::resize_area(images, SIZE).unwrap();
    clip2gan::image_io::to_rgb8(&small).unwrap().remove(0)
}

fn latent_of(r: &clip2gan::pipeline::Rendered) -> Vec<f32> {
    r.latents.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// `/edit add smile` with a photo: the image delivered is the photo's
/// inversion plus the edit, exactly as the pipeline computes them when
/// called directly; the inversion and the edit are stored (undo goes back
/// to the inversion). `/imagine` with a photo, and "Edit this face".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn photo_edit_is_the_inversion_plus_the_edit() {
    let (fake, _dir, store) = world().await;
    let bot = start_default(&fake, photo_settings(&fake, &store)).await;
    let photo = png_bytes(image::DynamicImage::ImageRgb8(photo_rgb(96, 80)));
    let url = fake.serve(
        "me.png",
        Serve::File {
            content_type: "image/png".into(),
            body: photo.clone(),
        },
    );
    let att = |id| {
        attachment_json(
            id,
            "me.png",
            &url,
            photo.len(),
            Some("image/png"),
            Some((96, 80)),
        )
    };

    let t = fake.command_with_files(
        1,
        "edit",
        with_image(instruction("add smile"), 501),
        &[att(501)],
    );
    let (edited, img) = image(&fake, &t).await;
    assert!(matches!(
        fake.events(&t)[0].event,
        Event::Callback { kind: 5, .. }
    ));
    let c = content(&edited);
    assert!(c.starts_with("**/edit** add smile"), "{c}");
    // No face detector: the answer says plainly what the image is.
    assert!(
        c.contains("A photo without a clear face still gives a face"),
        "{c}"
    );
    assert_no_mentions(&edited);
    button(&edited, "c2g:var:");
    let edit_id = result_id(&edited);
    assert_eq!(fake.file_hits("me.png"), 1);

    // /undo: the inversion itself is the image before the edit.
    let t = fake.command(1, "undo", json!([]));
    let (undone, inverted_img) = image(&fake, &t).await;
    assert!(content(&undone).contains("**Photo** `me.png`"), "{undone}");
    let photo_id = result_id(&undone);

    // /imagine with a photo: the photo's face moved toward the prompt.
    let t = fake.command_with_files(
        2,
        "imagine",
        with_image(
            json!([{"name": "prompt", "type": 3, "value": "a man with a beard"}]),
            502,
        ),
        &[att(502)],
    );
    let (like, _) = image(&fake, &t).await;
    assert!(content(&like).contains("a man with a beard"), "{like}");
    let t = fake.command_with_files(
        2,
        "imagine",
        with_image(
            json!([{"name": "prompt", "type": 3, "value": "a face"},
                          {"name": "count", "type": 4, "value": 2}]),
            504,
        ),
        &[att(504)],
    );
    assert!(ephemeral(&fake, &t).await.contains("leave out `count`"));
    let like_id = result_id(&like);

    // "Edit this face" on a message with the photo: a dialog, then the edit.
    let t = fake.message_command(3, "Edit this face", &[att(503)]);
    let modal = answer(&fake, &t).await;
    let Event::Callback { kind: 9, data } = &modal.event else {
        panic!("expected a modal: {modal:#?}")
    };
    let modal_id = data["custom_id"].as_str().unwrap().to_string();
    let t = fake.modal(
        3,
        &modal_id,
        &[("instruction", "make older"), ("strength", "2")],
    );
    let (older, _) = image(&fake, &t).await;
    assert!(content(&older).contains("make older") && content(&older).contains("`2`"));
    // The dialog works once.
    let t = fake.modal(3, &modal_id, &[("instruction", "make older")]);
    assert!(ephemeral(&fake, &t).await.contains("expired"));
    // On a message without an image.
    let t = fake.message_command(3, "Edit this face", &[]);
    assert!(ephemeral(&fake, &t).await.contains("no image attached"));

    bot.stop_clean(&fake).await;

    // The same computation, by the pipeline directly.
    let p = pipeline(models());
    let decoded = image::load_from_memory(&photo).unwrap();
    let inv = p.invert(&[decoded]).unwrap().remove(0);
    let edit = |latent: &candle_core::Tensor, text: &str, strength: f64| {
        p.edit(&[clip2gan::pipeline::EditRequest {
            latent: latent.squeeze(0).unwrap(),
            instruction: text.into(),
            strength,
            layers: clip2gan::engine::Layers::All,
        }])
        .unwrap()
        .remove(0)
    };
    // /edit without a strength: the default.
    let smile = edit(
        &inv.latents,
        "add smile",
        clip2gan::pipeline::limits::DEFAULT_STRENGTH,
    );
    let s = Store::open(&store, 20, 5000).unwrap().store;
    let stored = |id: u64| s.get(id).unwrap().latents[0].data.clone();
    assert!(
        max_abs(&stored(photo_id), &latent_of(&inv)) < 1e-5,
        "inversion"
    );
    assert!(
        max_abs(&stored(edit_id), &latent_of(&smile)) < 1e-5,
        "inversion + edit"
    );
    let rec = s.get(edit_id).unwrap();
    assert_eq!(rec.parent.map(|r| r.id), Some(photo_id));
    assert!(
        max_diff(&img, &to_rgb(&smile.images)) <= 1,
        "the delivered edit"
    );
    assert!(
        max_diff(&inverted_img, &to_rgb(&inv.images)) <= 1,
        "the inversion"
    );
    let beard = edit(&inv.latents, "a man with a beard", 1.0);
    assert!(
        max_abs(&stored(like_id), &latent_of(&beard)) < 1e-5,
        "/imagine image:"
    );
    let older_id = s.recent(3, 1)[0].id;
    let older_direct = edit(&inv.latents, "make older", 2.0);
    assert!(max_abs(&stored(older_id), &latent_of(&older_direct)) < 1e-5);
}

/// Every kind of bad photo gets an answer that says what to do: refused at
/// once (ephemeral) when Discord's description of the file is enough,
/// after the download otherwise (an ephemeral follow-up, the public
/// message removed). Odd but readable images are used, and say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_photos_get_an_explanation() {
    let (fake, _dir, store) = world().await;
    let bot = start_default(&fake, photo_settings(&fake, &store)).await;
    let good = png_bytes(image::DynamicImage::ImageRgb8(photo_rgb(64, 64)));
    let next_id = std::cell::Cell::new(600u64);
    let send = |name: &str, url: &str, size: usize, ct: Option<&str>, dims| {
        let id = next_id.get() + 1;
        next_id.set(id);
        let a = attachment_json(id, name, url, size, ct, dims);
        fake.command_with_files(7, "edit", with_image(instruction("add smile"), id), &[a])
    };
    let file = |name: &str, ct: &str, body: Vec<u8>| {
        fake.serve(
            name,
            Serve::File {
                content_type: ct.into(),
                body,
            },
        )
    };
    // Served and described as what it is.
    let post = |name: &str, ct: &str, body: Vec<u8>, dims| {
        let size = body.len();
        let url = file(name, ct, body);
        send(name, &url, size, Some(ct), dims)
    };

    // Refused from Discord's description alone: nothing is downloaded.
    let url = file("notes.txt", "text/plain", b"just words".to_vec());
    let t = send(
        "notes.txt",
        &url,
        10,
        Some("text/plain; charset=utf-8"),
        None,
    );
    assert!(ephemeral(&fake, &t)
        .await
        .contains("is not an image (text/plain)"));
    let url = file("me.heic", "image/heic", b"....ftypheic".to_vec());
    let t = send("me.heic", &url, 12, Some("image/heic"), Some((10, 10)));
    assert!(ephemeral(&fake, &t).await.contains("cannot read"));
    let url = file("big.png", "image/png", good.clone());
    let t = send("big.png", &url, 5_000_000, Some("image/png"), None);
    assert!(ephemeral(&fake, &t).await.contains("the limit is 0.3 MB"));
    let t = send(
        "big.png",
        &url,
        1000,
        Some("image/png"),
        Some((20_000, 20_000)),
    );
    assert!(ephemeral(&fake, &t).await.contains("20000×20000 pixels"));
    let elsewhere = url.replace("127.0.0.1", "localhost");
    let t = send("big.png", &elsewhere, 1000, Some("image/png"), None);
    assert!(ephemeral(&fake, &t)
        .await
        .contains("Discord's own attachment hosts"));
    assert_eq!(fake.file_hits("notes.txt") + fake.file_hits("big.png"), 0);

    // Refused after the download.
    let url = file("page.png", "text/html", b"<html>not found</html>".to_vec());
    let t = send("page.png", &url, 22, Some("image/png"), None);
    assert!(private_refusal(&fake, &t)
        .await
        .contains("not an image (it is text/html)"));
    let url = file(
        "liar.png",
        "application/octet-stream",
        b"plain text, no pixels".to_vec(),
    );
    let t = send("liar.png", &url, 21, Some("image/png"), None);
    assert!(private_refusal(&fake, &t)
        .await
        .contains("not an image I can read"));
    let cut = good[..good.len() - 40].to_vec();
    let t = post("cut.png", "image/png", cut, Some((64, 64)));
    assert!(private_refusal(&fake, &t)
        .await
        .contains("damaged or incomplete"));
    for (name, (w, h)) in [
        ("bomb.png", (100_000, 100_000)),
        ("wide.png", (16_000, 16_000)),
    ] {
        let bomb = dimension_bomb(w, h);
        let url = file(name, "image/png", bomb.clone());
        // Discord may not know the dimensions (or be told wrong ones).
        let t = send(name, &url, bomb.len(), Some("image/png"), None);
        let why = private_refusal(&fake, &t).await;
        assert!(
            why.to_lowercase().contains("send a smaller version"),
            "{name}: {why}"
        );
    }
    // The first 100 bytes, then the server stalls or hangs up.
    for (name, hangs_up, why) in [
        ("slow.png", false, "took longer than 1.5 s"),
        ("dropped.png", true, "cut off"),
    ] {
        let (body, len) = (good[..100].to_vec(), good.len());
        let serve = if hangs_up {
            Serve::Cut { body, len }
        } else {
            Serve::Stall { body, len }
        };
        let url = fake.serve(name, serve);
        let t = send(name, &url, good.len(), Some("image/png"), None);
        assert!(private_refusal(&fake, &t).await.contains(why), "{name}");
    }
    let url = fake.serve(
        "huge.png",
        Serve::Stall {
            body: Vec::new(),
            len: 50_000_000,
        },
    );
    let t = send("huge.png", &url, 1000, Some("image/png"), None);
    assert!(private_refusal(&fake, &t)
        .await
        .contains("larger than the limit"));
    let url = fake.serve("endless.png", Serve::Endless);
    let t = send("endless.png", &url, 1000, Some("image/png"), None);
    assert!(private_refusal(&fake, &t)
        .await
        .contains("larger than the limit"));
    let outside = fake.file_url("ok.png").replace("127.0.0.1", "localhost");
    let url = fake.serve("away.png", Serve::Redirect(outside));
    file("ok.png", "image/png", good.clone());
    let t = send("away.png", &url, good.len(), Some("image/png"), None);
    assert!(private_refusal(&fake, &t)
        .await
        .contains("did not follow it"));
    assert_eq!(fake.file_hits("ok.png"), 0, "the redirect was not followed");

    // Readable: a redirect within the allowed host, an animated GIF (its
    // first frame, said so), 16-bit colour, grey.
    let url = fake.serve("moved.png", Serve::Redirect(fake.file_url("ok.png")));
    let t = send("moved.png", &url, good.len(), Some("image/png"), None);
    image(&fake, &t).await;
    assert_eq!(fake.file_hits("ok.png"), 1);
    let t = post("anim.gif", "image/gif", animated_gif(), Some((40, 40)));
    let (p, _) = image(&fake, &t).await;
    assert!(content(&p).contains("first frame"), "{p}");
    let deep = image::DynamicImage::ImageRgb16(image::ImageBuffer::from_fn(48, 40, |x, y| {
        image::Rgb([x as u16 * 1300, y as u16 * 1600, 40_000])
    }));
    let t = post("deep.png", "image/png", png_bytes(deep), None);
    let (p, _) = image(&fake, &t).await;
    assert!(!content(&p).contains("black-and-white"), "{p}");
    let grey = image::DynamicImage::ImageLuma8(image::ImageBuffer::from_fn(48, 48, |x, y| {
        image::Luma([(x * 5 + y) as u8])
    }));
    let bytes = encode(&grey, image::ImageFormat::Jpeg);
    let t = post("grey.jpg", "image/jpeg", bytes, None);
    let (p, _) = image(&fake, &t).await;
    assert!(content(&p).contains("black-and-white"), "{p}");

    bot.stop_clean(&fake).await;
}

/// A GIF answer: its payload, frames and size in bytes.
async fn gif(fake: &Fake, token: &str) -> (Value, Vec<image::RgbImage>, usize) {
    use image::AnimationDecoder;
    let t = answer(fake, token).await;
    match t.event {
        Event::Edit { payload, files, .. } if files.len() == 1 => {
            assert!(files[0].0.ends_with(".gif"), "{}", files[0].0);
            let frames = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&files[0].1))
                .expect("a GIF")
                .into_frames()
                .collect_frames()
                .unwrap()
                .into_iter()
                .map(|f| image::DynamicImage::ImageRgba8(f.into_buffer()).to_rgb8())
                .collect();
            (payload, frames, files[0].1.len())
        }
        other => panic!("expected a GIF for {token}, got {other:#?}"),
    }
}

fn mean_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let sum: u64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y) as u64)
        .sum();
    sum as f64 / a.as_raw().len() as f64
}

/// `/morph` (the user's last two, or two named), the upload limit, the
/// `/history` grid with "Use N" and Morph buttons, and their bad input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn morph_and_history() {
    let (fake, _dir, store) = world().await;
    let bot = start_default(&fake, photo_settings(&fake, &store)).await;
    let seeded = |p: &str, seed: u64| json!([{"name": "prompt", "type": 3, "value": p}, {"name": "seed", "type": 4, "value": seed}]);
    let t = fake.command(1, "morph", json!([]));
    assert!(ephemeral(&fake, &t).await.contains("needs two images"));
    let t = fake.command(1, "history", json!([]));
    assert!(ephemeral(&fake, &t).await.contains("no stored images"));

    let t = fake.command(1, "imagine", seeded("a woman", 1));
    let (a, img_a) = image(&fake, &t).await;
    let t = fake.command(1, "morph", json!([]));
    assert!(ephemeral(&fake, &t).await.contains("needs two images"));
    let t = fake.command(1, "imagine", seeded("an old man", 2));
    let (b, img_b) = image(&fake, &t).await;
    let (ida, idb) = (result_id(&a), result_id(&b));

    // The last two: from the older to the newer.
    let t = fake.command(1, "morph", json!([]));
    let (m, frames, full) = gif(&fake, &t).await;
    assert_eq!(frames.len(), 4, "bot.morph_frames");
    assert!(
        content(&m).contains(&format!("from #{ida} image 1 to #{idb} image 1")),
        "{m}"
    );
    assert!(buttons(&m).is_empty(), "a morph is not a result");
    let (first, last) = (&frames[0], &frames[3]);
    assert!(
        mean_diff(first, &img_a) < mean_diff(first, &img_b),
        "starts at a"
    );
    assert!(
        mean_diff(last, &img_b) < mean_diff(last, &img_a),
        "ends at b"
    );
    // Named results, other frames; and the upload limit.
    fake.set_size_limit((full / 2) as u32);
    let named = json!([{"name": "from", "type": 3, "value": format!("#{idb}")},
                       {"name": "to", "type": 3, "value": format!("{ida}.1")},
                       {"name": "frames", "type": 4, "value": 3}]);
    let t = fake.command(1, "morph", named);
    let (m, frames, bytes) = gif(&fake, &t).await;
    assert_eq!(frames.len(), 3);
    assert!(
        bytes <= full / 2,
        "{bytes} bytes over the limit {}",
        full / 2
    );
    assert!(frames[0].width() < SIZE as u32);
    assert!(content(&m).contains("smaller size") && content(&m).contains(&format!("from #{idb}")));
    fake.set_size_limit(8 << 20);
    // Bad input.
    let bad = |opts: Value| {
        let fake = fake.clone();
        async move {
            let t = fake.command(1, "morph", opts);
            ephemeral(&fake, &t).await
        }
    };
    assert!(bad(json!([{"name": "from", "type": 3, "value": "abc"}]))
        .await
        .contains("result number"));
    assert!(bad(json!([{"name": "from", "type": 3, "value": "12.7"}]))
        .await
        .contains("result number"));
    assert!(bad(json!([{"name": "frames", "type": 4, "value": 99}]))
        .await
        .contains("2 to 32"));
    let same = json!([{"name": "from", "type": 3, "value": ida.to_string()},
                      {"name": "to", "type": 3, "value": ida.to_string()}]);
    assert!(bad(same).await.contains("same image"));
    assert!(bad(json!([{"name": "from", "type": 3, "value": "99999"}]))
        .await
        .contains("not stored"));

    // /history: newest first, a "Use N" per image, Morph for the newest two.
    let t = fake.command(1, "imagine", seeded("a child", 3));
    let (c, _) = image(&fake, &t).await;
    let idc = result_id(&c);
    let t = fake.command(1, "history", json!([]));
    let (h, grid) = image(&fake, &t).await;
    assert_eq!(
        grid.dimensions(),
        (2 * SIZE as u32, 2 * SIZE as u32),
        "3 images, 2x2"
    );
    let hc = content(&h);
    let (pc, pb, pa) = (
        hc.find(&format!("1. #{idc}")).unwrap(),
        hc.find(&format!("2. #{idb}")).unwrap(),
        hc.find(&format!("3. #{ida}")).unwrap(),
    );
    assert!(pc < pb && pb < pa, "{hc}");
    let ids = buttons(&h);
    assert_eq!(
        ids,
        [
            format!("c2g:pick:{idc}:0"),
            format!("c2g:pick:{idb}:0"),
            format!("c2g:pick:{ida}:0"),
            format!("c2g:morph:{idb}:0:{idc}:0"),
        ]
    );
    let labels: Vec<String> = h["components"][0]["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(labels, ["Use 1", "Use 2", "Use 3"]);
    // Use 3: the oldest image is current again; /edit acts on it.
    let t = fake.button(1, &ids[2]);
    let (picked, again) = image(&fake, &t).await;
    assert!(
        content(&picked).contains(&format!("#{ida} picked")),
        "{picked}"
    );
    assert!(max_diff(&again, &img_a) <= 2);
    let t = fake.command(1, "edit", instruction("add glasses"));
    let (e, _) = image(&fake, &t).await;
    assert!(content(&e).contains(&format!("of #{ida} image 1")), "{e}");
    // The Morph button of the history message.
    let t = fake.button(1, &ids[3]);
    let (m, frames, _) = gif(&fake, &t).await;
    assert_eq!(frames.len(), 4);
    assert!(
        content(&m).contains(&format!("from #{idb} image 1 to #{idc} image 1")),
        "{m}"
    );
    let t = fake.button(1, "c2g:morph:99999:0:1:0");
    assert!(ephemeral(&fake, &t).await.contains("not stored"));

    bot.stop_clean(&fake).await;
}

fn sub(name: &str, options: Value) -> Value {
    json!([{"name": name, "type": 1, "options": options}])
}

fn sub_in(group: &str, name: &str, options: Value) -> Value {
    json!([{"name": group, "type": 2, "options": [{"name": name, "type": 1, "options": options}]}])
}

/// `/settings`: Manage Server only (checked in the interaction, not only
/// at registration); a quota of 2 refuses the third job with the time
/// until it resets (on a clock the test moves); channel, role, blocklist
/// and cooldown obeyed; out-of-range values refused; a restart keeps it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_quota_channels_role_and_restart() {
    const GUILD: u64 = 50;
    const ADMIN: u64 = 1;
    const MEMBER: u64 = 2;
    let (fake, _dir, store) = world().await;
    let t0 = 1_900_000_000u64;
    let clock = Arc::new(TestClock(std::sync::atomic::AtomicU64::new(t0)));
    fake.set_guild(Some(GUILD));
    fake.set_member(ADMIN, &[], 1 << 5);
    fake.set_member(MEMBER, &[], 0);
    // Started again below: a restart keeps what was set.
    let up = || {
        start_clocked(
            &fake,
            settings(&fake, &store),
            engine(engine_config()),
            clock.clone(),
        )
    };
    let bot = up().await;
    let settings_cmd = |user: u64, options: Value| {
        let fake = fake.clone();
        async move {
            let t = fake.command(user, "settings", options);
            ephemeral(&fake, &t).await
        }
    };
    let seeded = |seed: u64| json!([{"name": "prompt", "type": 3, "value": "a face"}, {"name": "seed", "type": 4, "value": seed}]);

    // Without Manage Server (a server may have shown them the command).
    let said = settings_cmd(
        MEMBER,
        sub("quota", json!([{"name": "per_day", "type": 4, "value": 2}])),
    )
    .await;
    assert!(said.contains("Manage Server"), "{said}");
    assert!(settings_cmd(MEMBER, sub("show", json!([])))
        .await
        .contains("Manage Server"));
    let shown = settings_cmd(ADMIN, sub("show", json!([]))).await;
    assert!(shown.contains("Daily quota: no limit (default)"), "{shown}");
    // Out of range, or no value.
    let q = |v: Value| sub("quota", json!([{"name": "per_day", "type": 4, "value": v}]));
    assert!(settings_cmd(ADMIN, q(json!(20_000)))
        .await
        .contains("0 (no limit) to 10000 (it was 20000)"));
    assert!(settings_cmd(ADMIN, q(json!(-1)))
        .await
        .contains("(it was -1)"));
    assert!(settings_cmd(ADMIN, sub("quota", json!([])))
        .await
        .contains("daily quota must be"));
    let cd = |v: i64| {
        sub(
            "cooldown",
            json!([{"name": "seconds", "type": 4, "value": v}]),
        )
    };
    assert!(settings_cmd(ADMIN, cd(3601))
        .await
        .contains("0 to 3600 seconds"));
    let word = |w: &str| {
        sub_in(
            "blocklist",
            "add",
            json!([{"name": "word", "type": 3, "value": w}]),
        )
    };
    assert!(settings_cmd(ADMIN, word(" \u{200B} "))
        .await
        .contains("1 to 100 characters"));
    assert!(settings_cmd(ADMIN, word(&"x".repeat(101)))
        .await
        .contains("1 to 100 characters"));
    assert!(settings_cmd(ADMIN, json!([]))
        .await
        .contains("/settings show"));
    // In a DM there is no server to set.
    let t = fake.command_in(ADMIN, None, "settings", sub("show", json!([])));
    assert!(ephemeral(&fake, &t).await.contains("belong to a server"));

    // A quota of 2: the third job is refused, with when it resets.
    assert!(settings_cmd(ADMIN, q(json!(2)))
        .await
        .starts_with("Saved. Each member may now make 2"));
    for seed in [1, 2] {
        let t = fake.command(MEMBER, "imagine", seeded(seed));
        image(&fake, &t).await;
    }
    clock.advance(3600);
    let t = fake.command(MEMBER, "imagine", seeded(3));
    let refused = ephemeral(&fake, &t).await;
    assert!(
        refused.contains("0 of 2 left")
            && refused.contains(&format!("<t:{}:R>", t0 + 86_400))
            && refused.contains("in 23 h 0 min"),
        "{refused}"
    );
    // Showing earlier images is not a new image.
    let t = fake.command(MEMBER, "history", json!([]));
    image(&fake, &t).await;
    // Another member has a quota of their own.
    let t = fake.command(3, "imagine", seeded(4));
    image(&fake, &t).await;

    // Channels: only #888; /settings itself still works anywhere.
    let ch = |name: &str, c: u64| {
        sub_in(
            "channels",
            name,
            json!([{"name": "channel", "type": 7, "value": c.to_string()}]),
        )
    };
    assert!(settings_cmd(ADMIN, ch("add", 888))
        .await
        .contains("only in <#888>"));
    let t = fake.command(3, "imagine", seeded(5));
    assert!(ephemeral(&fake, &t).await.contains("please use <#888>"));
    let t = fake.button(3, "c2g:var:1:0");
    assert!(ephemeral(&fake, &t).await.contains("please use <#888>"));
    fake.set_channel(888);
    let t = fake.command(3, "imagine", seeded(5));
    let (in888, _) = image(&fake, &t).await;

    // A required role; admins set it without holding it. (User 3 has
    // used their quota: user 4 goes on.)
    let said = settings_cmd(
        ADMIN,
        sub("role", json!([{"name": "role", "type": 8, "value": "555"}])),
    )
    .await;
    assert!(said.contains("<@&555>"), "{said}");
    let t = fake.button(4, &button(&in888, "c2g:var:"));
    assert!(ephemeral(&fake, &t).await.contains("need the <@&555> role"));
    fake.set_member(4, &[555], 0);
    let t = fake.button(4, &button(&in888, "c2g:var:"));
    image(&fake, &t).await;

    // Blocked words of this server, added to the host's.
    assert!(settings_cmd(ADMIN, word("Top Hat"))
        .await
        .contains("`top hat`"));
    let t = fake.command(
        4,
        "imagine",
        json!([{"name": "prompt", "type": 3, "value": "a man in a TOP HAT"}]),
    );
    assert!(ephemeral(&fake, &t).await.contains("not allowed"));
    let t = fake.command(4, "edit", instruction("add top  hat"));
    assert!(ephemeral(&fake, &t).await.contains("not allowed"));
    // Cooldown of this server (user 4's last job was just now).
    assert!(settings_cmd(ADMIN, cd(30)).await.contains("30 s"));
    let t = fake.command(4, "imagine", seeded(6));
    assert!(ephemeral(&fake, &t).await.contains("Slow down"));

    bot.stop_clean(&fake).await;

    // A restart keeps the settings and the quota already used.
    let bot = up().await;
    let shown = settings_cmd(ADMIN, sub("show", json!([]))).await;
    for part in [
        "Channels: <#888>\n",
        "Cooldown: 30 s between jobs\n",
        "Daily quota: 2 new images per member per day\n",
        "Required role: <@&555>\n",
        "Blocked words: `top hat`",
    ] {
        assert!(shown.contains(part), "{part:?} in {shown}");
    }
    let t = fake.command(MEMBER, "imagine", seeded(7));
    assert!(ephemeral(&fake, &t).await.contains("need the <@&555> role"));
    fake.set_member(MEMBER, &[555], 0);
    let t = fake.command(MEMBER, "imagine", seeded(7));
    assert!(ephemeral(&fake, &t).await.contains("0 of 2 left"));
    // A day after the first job the quota is whole again.
    clock.advance(86_400 - 3600);
    let t = fake.command(MEMBER, "imagine", seeded(7));
    image(&fake, &t).await;
    // Reset: back to the config's defaults (no quota, every channel).
    assert!(settings_cmd(ADMIN, sub("reset", json!([])))
        .await
        .contains("back to the bot's defaults"));
    fake.set_channel(777);
    let t = fake.command(MEMBER, "imagine", seeded(8));
    image(&fake, &t).await;

    bot.stop_clean(&fake).await;
}

/// The registration payload against Discord's schema and rules: names,
/// descriptions, option types and order, the permission default of
/// `/settings` as a string, the message command (type 3, no
/// description). The validator itself is shown to catch bad bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_matches_discord_schema() {
    let (fake, _dir, store) = world().await;
    let mut s = settings(&fake, &store);
    s.discord.guilds = vec![31];
    let bot = start_default(&fake, s).await;
    let regs = fake
        .wait_until(WAIT, |f| Some(f.registrations()).filter(|r| !r.is_empty()))
        .await
        .unwrap();
    assert_eq!(
        regs[0].0,
        format!(
            "/api/v10/applications/{}/guilds/31/commands",
            fake_discord::APP_ID
        )
    );
    let body = regs[0].1.clone();
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
    let chat_name = regex::Regex::new(r"^[-_\p{Ll}\p{Lo}\p{N}]{1,32}$").unwrap();
    fn options(v: &Value) -> Vec<Value> {
        v["options"].as_array().cloned().unwrap_or_default()
    }
    for c in body.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        if c["type"] == 3 {
            assert_eq!(name, "Edit this face");
            assert!(
                c.get("description").is_none_or(|d| d.is_null() || d == ""),
                "{c}"
            );
            assert!(options(c).is_empty());
            continue;
        }
        assert!(c.get("type").is_none_or(|t| t == 1), "{c}");
        let mut stack = vec![c.clone()];
        while let Some(x) = stack.pop() {
            let n = x["name"].as_str().unwrap();
            let d = x["description"].as_str().unwrap();
            assert!(chat_name.is_match(n), "name {n:?}");
            assert!(
                (1..=100).contains(&d.chars().count()),
                "description of {n}: {d:?}"
            );
            let opts = options(&x);
            assert!(opts.len() <= 25);
            // Required options come first.
            let first_optional = opts
                .iter()
                .position(|o| o["required"] != true)
                .unwrap_or(opts.len());
            assert!(
                opts[first_optional..].iter().all(|o| o["required"] != true),
                "{n}"
            );
            for o in &opts {
                assert!((1..=11).contains(&o["type"].as_u64().unwrap()), "{o}");
            }
            stack.extend(opts);
        }
    }
    let cmd = |name: &str| {
        body.as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()
            .clone()
    };
    let settings = cmd("settings");
    assert_eq!(
        settings["default_member_permissions"], "32",
        "Manage Server, as a string"
    );
    assert_eq!(settings["contexts"], json!([0]), "servers only");
    let subs: Vec<&str> = settings["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        subs,
        [
            "show",
            "channels",
            "blocklist",
            "cooldown",
            "quota",
            "role",
            "reset"
        ]
    );
    for c in ["imagine", "edit"] {
        let image = options(&cmd(c))
            .into_iter()
            .find(|o| o["name"] == "image")
            .unwrap();
        assert_eq!(
            (image["type"].clone(), image["required"].clone()),
            (json!(11), json!(false))
        );
    }
    assert!(cmd("imagine")
        .get("default_member_permissions")
        .is_none_or(Value::is_null));

    // The validator rejects what Discord would.
    let spec = fake_discord::schema::spec();
    let put = "/applications/{application_id}/commands";
    let mut bad = body.clone();
    bad[0]["name"] = json!("x".repeat(33));
    bad[1]["description"] = json!("y".repeat(101));
    bad[2]["options"] = json!([{"type": 42, "name": "a", "description": "b"}]);
    bad[3]["default_member_permissions"] = json!("not a number");
    let errors = spec.check(put, "put", &bad);
    assert!(
        errors.iter().any(|e| e.starts_with("/0/name")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with("/1/description")),
        "{errors:#?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with("/2/options/0")),
        "{errors:#?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.starts_with("/3/default_member_permissions")),
        "{errors:#?}"
    );
    let callback = "/interactions/{interaction_id}/{interaction_token}/callback";
    assert!(spec
        .check(
            callback,
            "post",
            &json!({"type": 4, "data": {"content": "ok", "flags": 64}})
        )
        .is_empty());
    assert!(!spec
        .check(
            callback,
            "post",
            &json!({"type": 4, "data": {"content": "x".repeat(2001)}})
        )
        .is_empty());
    bot.stop().await.unwrap();
}

/// `run` returns once the store file is closed: a bot started again at
/// once (here on the same, already stopped engine: only the store and the
/// gateway matter) opens it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_then_start_at_once() {
    let (fake, _dir, store) = world().await;
    let e = engine(engine_config());
    for _ in 0..2 {
        let bot = start(&fake, settings(&fake, &store), e.clone()).await;
        bot.stop().await.unwrap();
    }
}

/// The store on a disk that fills up: the bot says the new image could not
/// be saved, keeps serving (an edit of an image saved earlier, read from
/// memory), and saves again once space is back; the store reopens with
/// every saved result and without setting anything aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_said_served_through_and_saving_resumes_once_freed() {
    let disk = common::SmallDisk::mount(16);
    let store = disk.path().join("store.redb");
    let fake = Fake::start().await;
    let bot = start_default(&fake, settings(&fake, &store)).await;
    let t = fake.command(1, "imagine", imagine("a smiling woman"));
    let (before, _) = image(&fake, &t).await;
    assert!(!content(&before).contains("could not be saved"));

    disk.fill();
    let t = fake.command(1, "imagine", imagine("an old man"));
    let (full, _) = image(&fake, &t).await;
    assert!(content(&full).contains("could not be saved"), "{full}");
    assert!(buttons(&full).is_empty(), "no buttons on an unsaved image");
    // The saved image is still the user's current one, from memory.
    let edit = json!([{"name": "instruction", "type": 3, "value": "add glasses"}]);
    let t = fake.command(1, "edit", edit.clone());
    let (edited, _) = image(&fake, &t).await;
    assert!(content(&edited).contains("could not be saved"), "{edited}");

    disk.free();
    let t = fake.command(1, "edit", edit);
    let (after, _) = image(&fake, &t).await;
    assert!(!content(&after).contains("could not be saved"), "{after}");
    assert!(!buttons(&after).is_empty());
    bot.stop_clean(&fake).await;

    let opened = clip2gan::bot::store::Store::open(&store, 20, 5000).unwrap();
    assert!(opened.warnings.is_empty(), "{:?}", opened.warnings);
    assert_eq!(opened.store.len(), 2, "the first image and the last edit");
}

/// Quality mode in the bot: the Refine button under a result gives a new
/// result (made from it, now the user's latest, so `/edit` goes on from it)
/// with the step progress shown on the way; `/imagine quality: best` is
/// one job for the quota (two steps here: each is a backward pass through
/// the 1024 px generator).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refine_button_and_quality_best() {
    let (fake, _dir, store) = world().await;
    let mut s = settings(&fake, &store);
    s.bot.refine_steps = 2;
    s.bot.daily_quota = 2;
    let bot = start_default(&fake, s).await;

    let t = fake.command(
        1,
        "imagine",
        json!([{"name": "prompt", "type": 3, "value": "a man with a beard"},
               {"name": "seed", "type": 4, "value": 7}]),
    );
    let (first, img1) = image(&fake, &t).await;
    let t = fake.button(1, &button(&first, "c2g:refine:"));
    let (refined, img2) = slow_image(&fake, &t).await;
    assert!(
        content(&refined).starts_with("**Refined**") && content(&refined).contains("2 steps"),
        "{refined}"
    );
    assert!(max_diff(&img1, &img2) > 0, "refining changed nothing");
    let steps: Vec<String> = fake
        .events(&t)
        .iter()
        .filter_map(|e| e.event.content().map(String::from))
        .filter(|c| c.contains("Refining: step"))
        .collect();
    assert!(
        steps.iter().any(|c| c.contains("step 2/2")),
        "no progress shown: {:#?}",
        fake.events(&t)
    );
    // The refined image is the latest: /edit acts on it (its parent line
    // says so) and /undo goes back to the first image.
    let t = fake.command(1, "undo", json!([]));
    let (_, back) = image(&fake, &t).await;
    assert!(
        max_diff(&img1, &back) <= 2,
        "undo shows the image before refining"
    );

    // quality: best on /imagine: refined before the reply, one quota charge
    // (user 3 has 2 a day: best and one fast imagine use them up).
    let t = fake.command(
        3,
        "imagine",
        json!([{"name": "prompt", "type": 3, "value": "an old woman"},
               {"name": "quality", "type": 3, "value": "best"}]),
    );
    let (best, _) = slow_image(&fake, &t).await;
    assert!(content(&best).contains("an old woman"), "{best}");
    assert!(
        fake.events(&t)
            .iter()
            .any(|e| e.event.content().is_some_and(|c| c.contains("step 1/2"))),
        "{:#?}",
        fake.events(&t)
    );
    let t = fake.command(
        3,
        "imagine",
        json!([{"name": "prompt", "type": 3, "value": "an old woman"}]),
    );
    let (_, _) = image(&fake, &t).await;
    let t = fake.command(
        3,
        "imagine",
        json!([{"name": "prompt", "type": 3, "value": "an old woman"}]),
    );
    assert!(ephemeral(&fake, &t).await.contains("daily quota"));

    assert!(fake.unhandled().is_empty(), "{:?}", fake.unhandled());
    bot.stop().await.unwrap();
}

/// [`image`] with room for refinement: a process's first CLIP-guided step
/// costs tens of seconds on a loaded 2-core machine (first-use costs),
/// each later one seconds, beyond the 60 s the other answers get.
async fn slow_image(fake: &Fake, token: &str) -> (Value, image::RgbImage) {
    if fake
        .wait_answer(token, Duration::from_secs(600))
        .await
        .is_none()
    {
        panic!("no answer for {token}: {:#?}", fake.events(token));
    }
    image(fake, token).await
}
