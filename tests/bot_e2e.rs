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
    Backend, Engine, EngineConfig, EngineError, PipelineBackend, RawOutput, Resolved,
};
use clip2gan::generator::Generator;
use clip2gan::mapper::{self, Mapper, MapperConfig, MapperMeta};
use clip2gan::pipeline::{Pipeline, Settings as PipelineSettings};
use fake_discord::{Event, Failure, Fake, Timed};
use serde_json::{json, Value};
use tokio::sync::oneshot;

const SMALL_CLIP: &str = r#"{
  "projection_dim": 16,
  "text_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2},
  "vision_config": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "image_size": 32, "patch_size": 8}
}"#;
const SIZE: usize = 64;
const WAIT: Duration = Duration::from_secs(60);

/// One random CLIP + mapper for the whole test binary (as in tests/pipeline.rs).
fn models() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        clip2gan::clip::save_random_checkpoint(&tmp.path().join("clip"), SMALL_CLIP).unwrap();
        let g = common::mobilestylegan();
        let meta = MapperMeta {
            clip_model: tmp.path().join("clip").display().to_string(),
            clip_dim: 16,
            generator: g.id().into(),
            num_styles: g.num_styles(),
            w_dim: g.w_dim(),
            config: MapperConfig {
                depth: 2,
                width: 64,
                ..Default::default()
            },
            step: 0,
            training: serde_json::Value::Null,
            metrics: serde_json::Value::Null,
        };
        let varmap = candle_nn::VarMap::new();
        let m = Mapper::init(&varmap, meta, g.w_avg(), &Device::Cpu).unwrap();
        for (name, var) in varmap.data().lock().unwrap().iter() {
            if name == "out.weight" {
                var.set(&(var.as_tensor() * 300.0).unwrap()).unwrap();
            }
        }
        mapper::save(
            &tmp.path().join("mapper.safetensors"),
            &varmap,
            g.w_avg(),
            &m.meta,
        )
        .unwrap();
        tmp
    })
    .path()
}

fn pipeline(dir: &Path) -> Pipeline {
    let path = dir.join("mapper.safetensors");
    let meta = mapper::read_meta(&path).unwrap();
    let compat = mapper::Compat {
        clip_model: &meta.clip_model,
        clip_dim: meta.clip_dim,
        generator: &meta.generator,
        num_styles: meta.num_styles,
        w_dim: meta.w_dim,
    };
    let (mapper, _) = Mapper::load(&path, &compat, &Device::Cpu).unwrap();
    Pipeline {
        clip: clip2gan::clip::Clip::from_dir(&dir.join("clip"), &Device::Cpu).unwrap(),
        mapper,
        generator: Box::new(common::mobilestylegan()),
        settings: PipelineSettings {
            max_batch: 4,
            ..Default::default()
        },
    }
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
        per_user_limit: 2,
        output_size: SIZE,
        latent_cache: 100,
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
}

async fn start(fake: &Arc<Fake>, s: Settings, e: Arc<Engine>) -> Running {
    // The bot's logs only when asked for (RUST_LOG=clip2gan=info,serenity=info).
    if std::env::var_os("RUST_LOG").is_some() {
        clip2gan::bot::init_logging();
    }
    let before = fake.identifies() + fake.resumes();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(clip2gan::bot::run(
        s,
        Token::new("fake.bot.token"),
        e,
        async move {
            let _ = rx.await;
        },
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

fn store_in(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("store.redb")
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
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bot = start(
        &fake,
        settings(&fake, &store_in(&dir)),
        engine(engine_config()),
    )
    .await;

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
        ["imagine", "edit", "undo", "morph", "history", "settings", "Edit this face"]
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
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut s = settings(&fake, &store_in(&dir));
    s.bot.cooldown_ms = 60_000;
    s.bot.blocklist = vec!["forbidden thing".into()];
    s.discord.allowed_guilds = vec![11];
    fake.set_guild(Some(11));
    let bot = start(&fake, s, engine(engine_config())).await;

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
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut ecfg = engine_config();
    ecfg.max_batch = 8;
    let bot = start(&fake, settings(&fake, &store_in(&dir)), engine(ecfg)).await;
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
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bot = start(
        &fake,
        settings(&fake, &store_in(&dir)),
        engine(engine_config()),
    )
    .await;
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
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bot = start(
        &fake,
        settings(&fake, &store_in(&dir)),
        engine(engine_config()),
    )
    .await;
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
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(&dir);
    std::fs::write(
        &store,
        b"this is not a database, just garbage bytes".repeat(100),
    )
    .unwrap();
    let bot = start(&fake, settings(&fake, &store), engine(engine_config())).await;
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept aside");
    let t = fake.command(5, "imagine", imagine("a woman with red hair"));
    let (first, img1) = image(&fake, &t).await;
    bot.stop().await.unwrap();

    let bot = start(&fake, settings(&fake, &store), engine(engine_config())).await;
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

    fn run(&mut self, batch: &[Resolved]) -> Vec<Result<RawOutput, EngineError>> {
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
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut ecfg = engine_config();
    ecfg.max_batch = 1;
    ecfg.queue_capacity = 2;
    ecfg.per_user_limit = 1;
    let (engine, gate) = gated_engine(ecfg);
    let bot = start(&fake, settings(&fake, &store_in(&dir)), engine.clone()).await;
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

/// `clip2gan bot` without a token fails at once with what to do.
#[test]
fn missing_token_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let run = |config: &str| {
        let cfg = dir.path().join("c.toml");
        std::fs::write(&cfg, config).unwrap();
        std::process::Command::new(env!("CARGO_BIN_EXE_clip2gan"))
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
