//! `clip2gan worker` and `clip2gan bot --queue` refuse bad settings at
//! once, before any model is loaded, with what to do.

use std::process::{Command, Output};

/// The binary, run in a temporary directory (no config.toml there) with
/// `args`.
fn clip2gan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_clip2gan"))
        .args(args)
        .env("DISCORD_TOKEN", "fake.bot.token")
        .env_remove("CLIP2GAN_QUEUE__URL")
        .current_dir(std::env::temp_dir())
        .output()
        .expect("run clip2gan")
}

fn fails_saying(o: &Output, needle: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected a failure; stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
}

#[test]
fn a_worker_needs_a_queue() {
    fails_saying(&clip2gan(&["worker"]), "--queue redis://");
}

#[test]
fn a_queue_url_must_be_redis() {
    fails_saying(
        &clip2gan(&["worker", "--queue", "http://127.0.0.1:6379"]),
        "must start with redis://",
    );
    fails_saying(
        &clip2gan(&["bot", "--queue", "http://127.0.0.1:6379"]),
        "must start with redis://",
    );
}
