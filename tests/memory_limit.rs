//! `engine.memory_limit` too small for the models: `clip2gan bot` and
//! `clip2gan worker` refuse to start, naming the limit and what the models
//! need, before loading anything (the tiny CLIP and mapper over the real
//! MobileStyleGAN; a few seconds).

mod common;
mod served;

use std::process::Stdio;

fn refused(args: &[&str]) -> String {
    let models = common::tiny_pipeline_dir();
    let state = tempfile::tempdir().unwrap();
    let (mut cmd, _) = served::command(args, models.path(), "http://127.0.0.1:9", state.path());
    let out = cmd
        .env("CLIP2GAN_ENGINE__MEMORY_LIMIT", "64MiB")
        .env("CLIP2GAN_QUEUE__URL", "redis://127.0.0.1:9")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run clip2gan");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{args:?} started:\n{err}");
    assert!(
        !err.contains("models loaded"),
        "{args:?} loaded the models first:\n{err}"
    );
    err
}

#[test]
fn a_limit_below_the_models_is_refused_with_the_figures() {
    // The bot in one process (queue.url unset by `served::command`'s
    // environment for the bot: set here only for the worker).
    let bot = {
        let models = common::tiny_pipeline_dir();
        let state = tempfile::tempdir().unwrap();
        let (mut cmd, _) =
            served::command(&["bot"], models.path(), "http://127.0.0.1:9", state.path());
        let out = cmd
            .env("CLIP2GAN_ENGINE__MEMORY_LIMIT", "64MiB")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .expect("run clip2gan bot");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let worker = refused(&["worker"]);
    for (who, err) in [("bot", &bot), ("worker", &worker)] {
        assert!(
            err.contains("engine.memory_limit = 64 MiB cannot hold the models"),
            "{who}:\n{err}"
        );
        // What the models need, each and in all, and what to do.
        assert!(
            err.contains("CLIP ") && err.contains("generator "),
            "{who}:\n{err}"
        );
        assert!(err.contains("MiB in all"), "{who}:\n{err}");
        assert!(err.contains("raise engine.memory_limit"), "{who}:\n{err}");
    }
}

#[test]
fn a_limit_that_is_not_a_size_is_refused() {
    let models = common::tiny_pipeline_dir();
    let state = tempfile::tempdir().unwrap();
    let (mut cmd, _) = served::command(&["bot"], models.path(), "http://127.0.0.1:9", state.path());
    let out = cmd
        .env("CLIP2GAN_ENGINE__MEMORY_LIMIT", "lots")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("run clip2gan bot");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("engine.memory_limit") && err.contains("1GiB"),
        "{err}"
    );
}
