//! The deployment recipes (Dockerfiles, compose.yaml, deploy/) against the
//! code they deploy: every metric an alert or a dashboard panel asks for
//! is one the code records; every `CLIP2GAN_*` variable they set is a
//! configuration key the binary accepts; the autoscaler reads the stream
//! and consumer group the workers use. Text checks, no tools needed; the
//! tools' own checks (hadolint, promtool, systemd-analyze, the schemas)
//! are in `.ci/run`, and `tests/prometheus.rs` runs the rules and queries
//! on a real Prometheus.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use clip2gan::metrics as m;

fn read(rel: &str) -> String {
    let p: PathBuf = common::repo().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Words of `text` starting with `prefix`, made of [A-Za-z0-9_].
fn words(text: &str, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find(prefix) {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

const RECORDED: [&str; 11] = [
    m::QUEUE_DEPTH,
    m::QUEUE_WAIT,
    m::BATCH_IMAGES,
    m::STAGE,
    m::ENGINE_JOBS,
    m::ENGINE_JOB,
    m::JOBS,
    m::END_TO_END,
    m::DEFER,
    m::REDELIVERIES,
    m::DEAD_LETTERS,
];

/// A series name Prometheus has for what the code records: the name, or
/// a histogram's `_bucket`, `_sum` and `_count`.
fn is_recorded(series: &str) -> bool {
    RECORDED.iter().any(|name| {
        series == *name
            || ["_bucket", "_sum", "_count"]
                .iter()
                .any(|s| series.strip_suffix(s) == Some(name))
    })
}

#[test]
fn alerts_and_dashboard_ask_only_for_recorded_metrics() {
    for file in [
        "deploy/prometheus/alerts.yml",
        "deploy/grafana/clip2gan.json",
    ] {
        let used = words(&read(file), "clip2gan_");
        assert!(used.len() >= 6, "{file}: {used:?}");
        let unknown: Vec<_> = used.iter().filter(|s| !is_recorded(s)).collect();
        assert!(
            unknown.is_empty(),
            "{file} asks for series the code does not record: {unknown:?}"
        );
    }
    // The check itself can fail.
    assert!(!is_recorded("clip2gan_jobs_totals"));
    assert!(is_recorded("clip2gan_end_to_end_seconds_bucket"));
}

#[test]
fn the_dashboard_covers_queue_latency_batches_and_outcomes() {
    let d: serde_json::Value = serde_json::from_str(&read("deploy/grafana/clip2gan.json")).unwrap();
    let exprs: String = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_string() + "\n")
        .collect();
    for name in [
        m::QUEUE_DEPTH,
        m::QUEUE_WAIT,
        m::END_TO_END,
        m::STAGE,
        m::BATCH_IMAGES,
        m::JOBS,
        m::ENGINE_JOBS,
        m::DEAD_LETTERS,
    ] {
        assert!(exprs.contains(name), "no panel shows {name}");
    }
    assert!(exprs.contains("by (le, stage)"), "latency by stage");
}

/// Runs `clip2gan tokenize` (which loads the configuration, and needs no
/// model) with `vars` set: the configuration must load.
fn config_loads(vars: &[(String, String)]) -> Result<(), String> {
    let out = common::bin()
        .args(["tokenize", "a face"])
        .current_dir(common::repo())
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `CLIP2GAN_X=value` settings of a recipe (`KEY=value`, `KEY: value`, or
/// `name: KEY, value: value` in Kubernetes' form).
fn settings(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for key in words(text, "CLIP2GAN_") {
        if key == "CLIP2GAN_" {
            continue;
        }
        // The value after the key (=, :, or value: on a k8s line), else a
        // harmless one of the right type is not knowable: use the
        // documented default of a well-known key.
        let at = text.find(&key).unwrap() + key.len();
        let tail = &text[at..];
        let value = tail
            .strip_prefix('=')
            .or_else(|| tail.split_once("value:").map(|(_, v)| v))
            .map(|v| {
                v.trim_start()
                    .trim_start_matches('"')
                    .split(|c: char| c == '"' || c == '}' || c.is_whitespace())
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .unwrap_or_default();
        out.push((key, value));
    }
    out
}

#[test]
fn every_setting_in_the_recipes_is_a_configuration_key() {
    let files = [
        "Dockerfile",
        "Dockerfile.cpu",
        "compose.yaml",
        "deploy/clip2gan.service",
        "deploy/k8s/frontend.yaml",
        "deploy/k8s/workers.yaml",
    ];
    let mut all = Vec::new();
    for f in files {
        let mut vars = settings(&read(f));
        // %d is systemd's credentials directory; the file need not exist
        // for the configuration to load.
        for (_, v) in &mut vars {
            *v = v.replace("%d", "/run/credentials/clip2gan.service");
        }
        if let Err(e) = config_loads(&vars) {
            panic!("{f} sets a configuration the binary refuses ({vars:?}):\n{e}");
        }
        all.extend(vars.into_iter().map(|(k, _)| k));
    }
    for key in [
        "CLIP2GAN_METRICS__ENABLED",
        "CLIP2GAN_METRICS__LISTEN",
        "CLIP2GAN_MODELS_DIR",
        "CLIP2GAN_DISCORD__TOKEN_FILE",
        "CLIP2GAN_BOT__STORE_PATH",
    ] {
        assert!(all.iter().any(|k| k == key), "{key} in none of {files:?}");
    }
    // A misspelt key is refused: the check can fail.
    let bad = [("CLIP2GAN_METRICS__ENABLD".to_string(), "true".to_string())];
    assert!(config_loads(&bad).is_err());
}

#[test]
fn the_autoscaler_reads_the_workers_stream_and_group() {
    let so = read("deploy/k8s/scaledobject.yaml");
    let stream = clip2gan::queue::QueueConfig::default().jobs();
    assert!(so.contains(&format!("stream: {stream}\n")), "{stream}");
    assert!(
        so.contains(&format!("consumerGroup: {}\n", clip2gan::queue::GROUP)),
        "{}",
        clip2gan::queue::GROUP
    );
    assert!(so.contains("type: redis-streams"));
    // It scales the workers' Deployment.
    let workers = read("deploy/k8s/workers.yaml");
    assert!(so.contains("scaleTargetRef:\n    name: workers\n"));
    assert!(workers.contains("kind: Deployment\nmetadata:\n  name: workers\n"));
}

/// cargo refuses a manifest whose `[[bench]]` files are missing, so each
/// image's build stage must copy `benches/` with the sources.
#[test]
fn each_dockerfile_copies_what_the_manifest_needs() {
    let manifest = read("Cargo.toml");
    let mut needed = vec!["Cargo.toml", "Cargo.lock", "src"];
    if manifest.contains("[[bench]]") {
        needed.push("benches");
    }
    for f in ["Dockerfile", "Dockerfile.cpu"] {
        let copied: Vec<String> = read(f)
            .lines()
            .filter_map(|l| l.strip_prefix("COPY "))
            .filter(|l| !l.starts_with("--from"))
            .flat_map(|l| {
                let parts: Vec<&str> = l.split_whitespace().collect();
                // Every word but the destination.
                parts[..parts.len() - 1]
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
            })
            .collect();
        for n in &needed {
            assert!(
                copied.iter().any(|c| c == n),
                "{f} does not COPY {n}: {copied:?}"
            );
        }
    }
}
