//! Crash anywhere, lose nothing acknowledged: the `clip2gan bot` binary
//! against the fake Discord, killed with SIGKILL at seeded moments while it
//! serves a stream of jobs, 20 rounds, restarted each time.
//!
//! Each round starts the bot, sends jobs (five `/imagine` from five users
//! and, from the second round, a Variations button on an earlier result) and kills the
//! bot at a moment picked by a seeded stream, from one of three kinds of
//! event: the k-th call the fake Discord records, or the k-th image it
//! receives (killed inside the fake's handler, after the call is recorded
//! and before it is answered: Discord has the message, the bot never
//! learns it arrived), or the k-th line the bot logs after the jobs were
//! sent. No sleep decides anything:
//! every wait is for an event, with a deadline only to fail a stuck test.
//!
//! After every kill, before the next start, the store is opened in the
//! test: with no warning and no note (nothing set aside, no entry skipped,
//! no unfinished creation), and with every result Discord received so far
//! in it, owned by its user; no result id was delivered twice, and no
//! interaction got two images. After the 20 rounds one more start checks
//! from outside that every result Discord received can still be edited: its
//! Variations button and its Edit button (the dialog, then its submission)
//! give images made from it, and each user's `/edit` edits a stored image.
//!
//! Models: the tiny random generator and CLIP (`common::tiny_bot_models`),
//! so that a start takes a fraction of a second and a job milliseconds.
//! Runtime: 7 s on the shared 2-core machine. `C2G_KILL_ROUNDS` changes
//! the rounds, `C2G_KILL_SEED` the seed; `C2G_SHOW_LOGS=1` prints each
//! bot's log.

mod common;
mod fake_discord;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clip2gan::bot::store::{Store, TEST_PAUSE_ENV};
use common::child::{kill_now, Proc};
use fake_discord::{Event, Fake};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(60);
const USERS: [u64; 5] = [1, 2, 3, 5, 6];
/// The user who presses Variations on earlier results.
const PRESSER: u64 = 4;
/// The user who checks every result at the end.
const CHECKER: u64 = 9;

fn env_or(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
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

/// `clip2gan bot` on the tiny models, Discord at `api_base`, its store at
/// `store`.
fn bot_command(m: &Models, api_base: &str, store: &Path) -> Command {
    let mut c = common::bin();
    c.arg("bot")
        .current_dir(store.parent().unwrap())
        .env("DISCORD_TOKEN", "fake.bot.token")
        .env("RUST_LOG", "warn,clip2gan=info")
        .env_remove(TEST_PAUSE_ENV)
        .env_remove("CLIP2GAN_QUEUE__URL")
        .env("CLIP2GAN_MODELS_DIR", &m.root)
        .env("CLIP2GAN_GENERATOR__WEIGHTS", "tiny-g")
        .env("CLIP2GAN_CLIP__MODEL", &m.clip)
        .env("CLIP2GAN_MAPPER__PATH", &m.mapper)
        .env("CLIP2GAN_MAPPER__BUILD", "false")
        .env("CLIP2GAN_ENGINE__OUTPUT_SIZE", "64")
        .env("CLIP2GAN_DEVICE", "cpu")
        .env("CLIP2GAN_METRICS__ENABLED", "false")
        .env("CLIP2GAN_DISCORD__API_BASE", api_base)
        .env("CLIP2GAN_BOT__STORE_PATH", store)
        .env("CLIP2GAN_BOT__COOLDOWN_MS", "0")
        .env("CLIP2GAN_BOT__VARIATIONS_COUNT", "1")
        .env("CLIP2GAN_BOT__SHUTDOWN_GRACE_S", "5");
    c
}

fn content(payload: &Value) -> &str {
    payload["content"].as_str().unwrap_or("")
}

/// The result id in a delivered message ("... result #12 ...").
fn result_id(payload: &Value) -> Option<u64> {
    let c = content(payload);
    let at = c.rfind("result #")? + 8;
    c[at..]
        .chars()
        .take_while(|ch| ch.is_ascii_digit())
        .collect::<String>()
        .parse()
        .ok()
}

fn button(payload: &Value, prefix: &str) -> String {
    payload["components"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|row| row["components"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["custom_id"].as_str().map(String::from))
        .find(|b| b.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} button in {payload}"))
}

/// A result Discord received: the message that carried it.
#[derive(Clone)]
struct Acked {
    token: String,
    owner: u64,
    payload: Value,
}

/// Every result Discord has received so far (an edit with an image that
/// the fake answered 200, whether or not the bot lived to see the answer),
/// by result id. Panics on a duplicate: one id in two messages, or two
/// images for one interaction.
fn acknowledged(fake: &Fake, owners: &BTreeMap<String, u64>) -> BTreeMap<u64, Acked> {
    let mut by_id: BTreeMap<u64, Acked> = BTreeMap::new();
    let mut images_of: BTreeMap<String, usize> = BTreeMap::new();
    for (token, t) in fake.all_events() {
        let Event::Edit {
            payload,
            files,
            status,
        } = t.event
        else {
            continue;
        };
        if files.is_empty() || status >= 300 {
            continue;
        }
        *images_of.entry(token.clone()).or_default() += 1;
        let id = result_id(&payload).unwrap_or_else(|| {
            panic!("an image delivered without a result id (not saved?): {payload}")
        });
        let owner = owners[&token];
        let acked = Acked {
            token: token.clone(),
            owner,
            payload,
        };
        if let Some(was) = by_id.insert(id, acked) {
            panic!(
                "result #{id} delivered twice: to {} and to {token}",
                was.token
            );
        }
    }
    for (token, n) in images_of {
        assert_eq!(n, 1, "{token} got {n} images");
    }
    by_id
}

/// The store as the next start will find it: opened here, with no warning
/// or note, holding every acknowledged result with its owner.
fn check_store(store: &Path, acked: &BTreeMap<u64, Acked>, round: usize) {
    let o = Store::open(store, 20, 5000).unwrap_or_else(|e| panic!("round {round}: {e}"));
    assert!(
        o.warnings.is_empty() && o.notes.is_empty(),
        "round {round}: the store needed repair: {:?} {:?}",
        o.warnings,
        o.notes
    );
    for (id, a) in acked {
        let rec = o.store.get(*id).unwrap_or_else(|| {
            panic!("round {round}: result #{id}, which Discord received, is lost")
        });
        assert_eq!(rec.owner, a.owner, "round {round}: owner of #{id}");
        assert_eq!(rec.latents.len(), 1, "round {round}: #{id}");
    }
    let dir = store.parent().unwrap();
    let odd: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("corrupt") || n.contains("creating"))
        .collect();
    assert!(odd.is_empty(), "round {round}: {odd:?}");
}

/// Wait for the process to exit; it must have been killed by SIGKILL.
fn reap_killed(bot: &mut Proc, round: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(st) = bot.child.try_wait().unwrap() {
            bot.join_reader();
            assert_eq!(
                st.signal(),
                Some(libc::SIGKILL),
                "round {round}: the bot ended with {st} before it was killed:\n{}",
                bot.log()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "round {round}: the kill never came:\n{}",
            bot.log()
        );
        // Waiting for an exit already under way (std has no wait with a
        // timeout); decides nothing.
        std::thread::sleep(Duration::from_millis(5));
    }
}

async fn start(fake: &Fake, m: &Models, store: &Path) -> Proc {
    let before = fake.identifies() + fake.resumes();
    let bot = Proc::spawn(bot_command(m, &fake.base, store));
    assert!(
        fake.wait_ready(before + 1, WAIT).await,
        "the bot never reached the gateway:\n{}",
        bot.log()
    );
    // Its own word that it is up (after the fake's READY was read).
    tokio::task::block_in_place(|| bot.wait_line("connected to the Discord gateway"));
    bot
}

/// The image answer of `token`.
async fn image(fake: &Fake, token: &str) -> Value {
    let t = fake
        .wait_answer(token, WAIT)
        .await
        .unwrap_or_else(|| panic!("no answer for {token}: {:#?}", fake.events(token)));
    match t.event {
        Event::Edit { payload, files, .. } if files.len() == 1 => payload,
        other => panic!("expected an image for {token}, got {other:#?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_seeded_moments_loses_nothing_acknowledged() {
    let started = Instant::now();
    let rounds = env_or("C2G_KILL_ROUNDS", 20) as usize;
    let mut rng = ChaCha8Rng::seed_from_u64(env_or("C2G_KILL_SEED", 26));
    let m = models();
    let fake = Fake::start().await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store.redb");
    let mut owners: BTreeMap<String, u64> = BTreeMap::new();
    let mut acked: BTreeMap<u64, Acked> = BTreeMap::new();
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();

    for round in 1..=rounds {
        let mut bot = start(&fake, &m, &store).await;
        let pid = bot.pid();
        let moment = rng.random_range(0..3);
        // Lines of the start are not the moments chosen from.
        while bot.lines.try_recv().is_ok() {}
        let mut sent = Vec::new();
        for &u in &USERS {
            let prompt = format!("a face, round {round}, user {u}");
            let seed = rng.random_range(0..1_000_000u64);
            let options = json!([{"name": "prompt", "type": 3, "value": prompt},
                                 {"name": "seed", "type": 4, "value": seed}]);
            sent.push((u, fake.command(u, "imagine", options)));
        }
        if !acked.is_empty() {
            let ids: Vec<&u64> = acked.keys().collect();
            let a = &acked[ids[rng.random_range(0..ids.len())]];
            let id = button(&a.payload, "c2g:var:");
            sent.push((PRESSER, fake.button(PRESSER, &id)));
        }
        for (u, t) in &sent {
            owners.insert(t.clone(), *u);
        }
        // Every job makes at least two calls (its defer and its image), and
        // logs at least two lines ("command", "delivered"): the k-th always
        // comes.
        let n = sent.len();
        let kind = match moment {
            0 => {
                let k = rng.random_range(1..=2 * n);
                fake.after_events(k, |_| true, move || kill_now(pid));
                tokio::task::block_in_place(|| reap_killed(&mut bot, round));
                format!("at call {k} to Discord")
            }
            1 => {
                let k = rng.random_range(1..=n);
                fake.after_events(k, fake_discord::is_image, move || kill_now(pid));
                tokio::task::block_in_place(|| reap_killed(&mut bot, round));
                format!("as Discord received image {k}")
            }
            _ => {
                let k = rng.random_range(1..=2 * n);
                tokio::task::block_in_place(|| {
                    for seen in 1..=k {
                        if bot.lines.recv_timeout(WAIT).is_err() {
                            panic!(
                                "round {round}: line {seen} of {k} never came:\n{}",
                                bot.log()
                            );
                        }
                    }
                    kill_now(pid);
                    reap_killed(&mut bot, round);
                });
                format!("at log line {k}")
            }
        };
        *kinds
            .entry(["at a call", "at an image received", "at a log line"][moment])
            .or_default() += 1;
        if std::env::var_os("C2G_SHOW_LOGS").is_some() {
            eprintln!("--- round {round}:\n{}---", bot.log());
        }
        assert!(
            !bot.log().contains("could not be read"),
            "round {round}:\n{}",
            bot.log()
        );
        let now = acknowledged(&fake, &owners);
        for id in acked.keys() {
            assert!(now.contains_key(id), "#{id} no longer counted");
        }
        let answered = sent
            .iter()
            .filter(|(_, t)| now.values().any(|a| &a.token == t))
            .count();
        eprintln!(
            "round {round}: killed {kind}, {answered} of {n} answered; {} results acknowledged in all",
            now.len()
        );
        acked = now;
        check_store(&store, &acked, round);
    }
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
    assert!(
        acked.len() >= rounds,
        "only {} results were delivered in {rounds} rounds: the kills came too early to test much",
        acked.len()
    );

    // From outside: every acknowledged result can still be edited.
    let mut bot = start(&fake, &m, &store).await;
    for &u in USERS.iter().chain([&PRESSER]) {
        let Some(newest) = acked
            .iter()
            .rev()
            .find(|(_, a)| a.owner == u)
            .map(|(id, _)| *id)
        else {
            continue;
        };
        let t = fake.command(
            u,
            "edit",
            json!([{"name": "instruction", "type": 3, "value": "add smile"}]),
        );
        let p = image(&fake, &t).await;
        let c = content(&p);
        let parent: u64 = c
            .split("of #")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("/edit of user {u}: {c}"));
        assert!(
            parent >= newest,
            "user {u}'s /edit edited #{parent}, older than #{newest}, their newest result Discord has"
        );
    }
    for (id, a) in &acked {
        let of = format!("of #{id} image 1");
        let t = fake.button(CHECKER, &button(&a.payload, "c2g:var:"));
        let p = image(&fake, &t).await;
        assert!(content(&p).contains(&of), "Variations of #{id}: {p}");
        let t = fake.button(a.owner, &button(&a.payload, "c2g:edit:"));
        let modal = fake
            .wait_answer(&t, WAIT)
            .await
            .unwrap_or_else(|| panic!("no dialog for #{id}"));
        let Event::Callback { kind: 9, data } = &modal.event else {
            panic!("expected the edit dialog for #{id}: {modal:#?}")
        };
        let modal_id = data["custom_id"].as_str().unwrap().to_string();
        let t = fake.modal(
            a.owner,
            &modal_id,
            &[("instruction", "make older"), ("strength", "1")],
        );
        let p = image(&fake, &t).await;
        assert!(content(&p).contains(&of), "Edit of #{id}: {p}");
    }
    let (st, _) = tokio::task::block_in_place(|| bot.terminate(Duration::from_secs(30)));
    assert_eq!(st.and_then(|s| s.code()), Some(0), "{}", bot.log());
    bot.join_reader();
    let o = Store::open(&store, 20, 5000).unwrap();
    assert!(o.warnings.is_empty() && o.notes.is_empty());
    assert!(fake.violations().is_empty(), "{:#?}", fake.violations());
    eprintln!(
        "{rounds} SIGKILLs ({kinds:?}): {} results acknowledged, 0 lost, 0 duplicates, the store \
         opened without repair every time; each edited through /edit, Variations and Edit after \
         the last restart ({:.1?} in all)",
        acked.len(),
        started.elapsed()
    );
}
