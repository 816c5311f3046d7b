//! `clip2gan train` and `clip2gan eval-mapper` end to end on a tiny random
//! generator and CLIP: a run, its evaluation, Ctrl-C and --resume, and the
//! errors a person sees for bad input.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

struct Env {
    dir: tempfile::TempDir,
    clip: PathBuf,
}

fn env() -> Env {
    let dir = tempfile::tempdir().unwrap();
    let (_, clip) = common::tiny_models(dir.path());
    Env { dir, clip }
}

impl Env {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = common::bin();
        c.args(args)
            .env("CLIP2GAN_MODELS_DIR", self.dir.path())
            .env("CLIP2GAN_GENERATOR__WEIGHTS", "tiny-g")
            .env("CLIP2GAN_CLIP__MODEL", &self.clip)
            .env("CLIP2GAN_DEVICE", "cpu")
            .env("CLIP2GAN_TRAIN__MAPPER__DEPTH", "1")
            .env("CLIP2GAN_TRAIN__MAPPER__WIDTH", "64")
            .env("CLIP2GAN_TRAIN__GEN_BATCH", "64")
            .env("CLIP2GAN_TRAIN__WARMUP_STEPS", "10")
            .current_dir(self.dir.path());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run clip2gan")
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn ok(o: &Output) {
    assert!(o.status.success(), "failed: {}", stderr(o));
}

fn fails_with(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(o));
    assert!(
        stderr(o).contains(needle),
        "stderr lacks {needle:?}:\n{}",
        stderr(o)
    );
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn train_then_eval_with_prompts() {
    let e = env();
    let out = e.path("m.safetensors");
    let o = e.run(&[
        "train",
        "--steps",
        "40",
        "--pairs",
        "128",
        "--xi",
        "0.1",
        "--run-dir",
        "run",
        "-o",
        s(&out),
    ]);
    ok(&o);
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), s(&out));
    let err = stderr(&o);
    assert!(err.contains("pairs/s") && err.contains("steps/s"), "{err}");
    let metrics = std::fs::read_to_string(e.path("run/metrics.jsonl")).unwrap();
    assert_eq!(
        metrics
            .lines()
            .filter(|l| l.contains("\"event\":\"step\""))
            .count(),
        40
    );

    let prompts = e.path("prompts.txt");
    std::fs::write(
        &prompts,
        "a man with a beard\na smiling woman\n\nan old man\n",
    )
    .unwrap();
    let json = e.path("eval.json");
    let o = e.run(&[
        "eval-mapper",
        "--mapper",
        s(&out),
        "--samples",
        "16",
        "--prompts",
        s(&prompts),
        "--json",
        s(&json),
    ]);
    ok(&o);
    let table = String::from_utf8_lossy(&o.stdout).into_owned();
    for row in [
        "trained (step 40)",
        "untrained mapper",
        "always w_avg",
        "latent MSE",
        "R@1/3",
    ] {
        assert!(table.contains(row), "{row} missing:\n{table}");
    }
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["rows"].as_array().unwrap().len(), 3);
    assert_eq!(r["prompts"], 3);
    assert!(r["rows"][0]["latent_mse"].as_f64().unwrap().is_finite());

    // A prompt file with a line that is not UTF-8 is refused, naming the line.
    std::fs::write(&prompts, b"a face\ncaf\xe9 au lait\n").unwrap();
    let o = e.run(&[
        "eval-mapper",
        "--mapper",
        s(&out),
        "--samples",
        "4",
        "--prompts",
        s(&prompts),
    ]);
    fails_with(&o, "line 2: not valid UTF-8");

    // A mapper trained for another generator is refused.
    clip2gan::generator::mobilestylegan::random_weights(
        &e.path("other-g"),
        &common::TINY_CHANNELS,
        32,
        8,
    )
    .unwrap();
    let o = e
        .cmd(&["eval-mapper", "--mapper", s(&out), "--samples", "4"])
        .env("CLIP2GAN_GENERATOR__WEIGHTS", "other-g")
        .output()
        .unwrap();
    fails_with(&o, "the mapper does not fit");

    // Bad settings fail before any work.
    let o = e.run(&["train", "--image-dir", "x", "--run-dir", "bad"]);
    fails_with(&o, "image_dir needs mode = \"full\"");
    let o = e.run(&["train", "--resume", "--run-dir", "nothing-here"]);
    fails_with(&o, "nothing to resume");
}

/// Ctrl-C writes a checkpoint and exits with 130; `--resume` finishes the
/// run with exactly the losses of an uninterrupted run.
#[cfg(unix)]
#[test]
fn ctrl_c_checkpoints_and_resume_matches() {
    let e = env();
    let args = |run: &'static str| -> Vec<&'static str> {
        vec![
            "train",
            "--steps",
            "300",
            "--pairs",
            "256",
            "--xi",
            "0.1",
            "--run-dir",
            run,
            "--quiet",
        ]
    };
    let mut child = e
        .cmd(&[args("a"), vec!["-o", "a.safetensors"]].concat())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let metrics = e.path("a/metrics.jsonl");
    // Wait for the first step, then interrupt.
    while !std::fs::read_to_string(&metrics).is_ok_and(|m| m.contains("\"event\":\"step\"")) {
        assert!(child.try_wait().unwrap().is_none(), "training ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(
        err.contains("interrupted at step") && err.contains("--resume"),
        "{err}"
    );
    let stopped_at = clip2gan::train::progress::read_step_losses(&metrics)
        .unwrap()
        .len();
    assert!(stopped_at < 300, "interrupted too late to test anything");

    let o = e.run(&[args("a"), vec!["-o", "a.safetensors", "--resume"]].concat());
    ok(&o);
    let o = e.run(&[args("b"), vec!["-o", "b.safetensors"]].concat());
    ok(&o);
    let a = clip2gan::train::progress::read_step_losses(&metrics).unwrap();
    let b = clip2gan::train::progress::read_step_losses(&e.path("b/metrics.jsonl")).unwrap();
    assert_eq!(a.len(), 300);
    assert_eq!(
        a, b,
        "interrupted at step {stopped_at}, the resumed losses differ"
    );
}
