//! A real Prometheus (Debian's `prometheus` package; `.ci/run` installs
//! it) scraping a real `clip2gan bot` (the tiny pipeline, the fake
//! Discord), both on 127.0.0.1: after one `/imagine`, Prometheus's HTTP API
//! has `clip2gan_jobs_total{command="imagine",outcome="delivered"} 1`;
//! the alert rules of `deploy/prometheus/alerts.yml` load and evaluate on
//! the bot's own series without error; and every query of the Grafana
//! dashboard (`deploy/grafana/clip2gan.json`) is one Prometheus accepts.
//!
//! A missing `prometheus` fails the test, as a missing `redis-server`
//! does: a monitoring check that skipped would prove nothing. Every wait
//! polls for the state it needs, with a generous deadline.

mod common;
mod fake_discord;
mod served;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fake_discord::{Event, Fake};
use serde_json::{json, Value};
use served::{Served, WAIT};

fn repo() -> PathBuf {
    common::repo()
}

/// A Prometheus of the test's own: its config, data and port.
struct Prometheus {
    child: Child,
    base: String,
    _dir: tempfile::TempDir,
    log: PathBuf,
}

impl Prometheus {
    /// Scrape `target` every 500 ms and evaluate the deployed alert rules
    /// as often.
    fn start(target: &str) -> Prometheus {
        let found = Command::new("prometheus")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            found,
            "prometheus is not installed: this test runs a real one (apt-get install prometheus; \
             .ci/run installs it)"
        );
        let dir = tempfile::tempdir().unwrap();
        let rules = repo().join("deploy/prometheus/alerts.yml");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 500ms\n  scrape_timeout: 400ms\n  \
                 evaluation_interval: 500ms\nrule_files:\n  - {rules:?}\nscrape_configs:\n  \
                 - job_name: clip2gan\n    static_configs:\n      - targets: [\"{target}\"]\n",
            ),
        )
        .unwrap();
        let port = served::free_port();
        let log = dir.path().join("prometheus.log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("prometheus starts");
        Prometheus {
            child,
            base: format!("http://127.0.0.1:{port}"),
            _dir: dir,
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// GET an API path; its JSON `data`, or the error Prometheus gave.
    async fn api(&self, path_and_query: &str) -> Result<Value, String> {
        let (status, body) = served::get(&format!("{}{path_and_query}", self.base))
            .await
            .ok_or("prometheus does not answer")?;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("{status}: {body}"));
        }
        Ok(v["data"].clone())
    }

    async fn query(&self, promql: &str) -> Result<Value, String> {
        let q: String = url_encode(promql);
        self.api(&format!("/api/v1/query?query={q}")).await
    }

    /// Poll until `f` gives a value from the API; the value.
    async fn wait<T>(&mut self, what: &str, mut f: impl AsyncProbe<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let last = match f.probe(self).await {
                Ok(v) => return v,
                Err(e) => e,
            };
            if let Some(st) = self.child.try_wait().unwrap() {
                panic!("prometheus exited ({st}) before {what}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "{what} never came within {WAIT:?} (last: {last}); prometheus's log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A check against the API that may not hold yet (`Err`: why not).
trait AsyncProbe<T> {
    async fn probe(&mut self, p: &Prometheus) -> Result<T, String>;
}

struct Query<F>(&'static str, F);

impl<T, F: FnMut(&Value) -> Result<T, String>> AsyncProbe<T> for Query<F> {
    async fn probe(&mut self, p: &Prometheus) -> Result<T, String> {
        let data = p.query(self.0).await?;
        (self.1)(&data)
    }
}

struct Rules;

impl AsyncProbe<Vec<Value>> for Rules {
    async fn probe(&mut self, p: &Prometheus) -> Result<Vec<Value>, String> {
        let data = p.api("/api/v1/rules").await?;
        let rules: Vec<Value> = data["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        if rules.is_empty() {
            return Err("no rules loaded yet".into());
        }
        // Evaluated at least once each (a rule never evaluated has the
        // zero time).
        match rules.iter().find(|r| {
            r["lastEvaluation"]
                .as_str()
                .is_none_or(|t| t.starts_with("0001"))
        }) {
            Some(r) => Err(format!("{} not evaluated yet", r["name"])),
            None => Ok(rules),
        }
    }
}

/// The value of a one-series instant vector.
fn single_value(data: &Value) -> Result<f64, String> {
    let result = data["result"].as_array().ok_or("no result")?;
    match result.as_slice() {
        [one] => one["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("{one}")),
        other => Err(format!("{} series: {other:?}", other.len())),
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `expr` of the dashboard's panels, with Grafana's variables put
/// as Grafana would.
fn dashboard_queries(path: &Path) -> Vec<String> {
    let d: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let mut out = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let e = t["expr"].as_str().expect("each target has an expr");
            out.push(e.replace("$__rate_interval", "1m"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_bot_and_runs_its_rules() {
    let _ = common::mobilestylegan(); // fetched before the process needs it
    let models = common::tiny_pipeline_dir();
    let fake = Fake::start().await;
    let state = tempfile::tempdir().unwrap();
    let mut bot = Served::spawn(served::command(
        &["bot"],
        models.path(),
        &fake.base,
        state.path(),
    ));
    bot.wait_for("/readyz", "the bot ready", |s, _| s == 200)
        .await;
    let mut prom = Prometheus::start(&bot.addr.to_string());
    prom.wait(
        "the bot's target up",
        Query("up{job=\"clip2gan\"}", |d: &Value| {
            (single_value(d)? == 1.0)
                .then_some(())
                .ok_or(format!("{d}"))
        }),
    )
    .await;

    let token = fake.command(
        7,
        "imagine",
        json!([{"name": "prompt", "type": 3, "value": "a man with a beard"}]),
    );
    let answer = fake
        .wait_answer(&token, WAIT)
        .await
        .unwrap_or_else(|| panic!("no answer:\n{}", bot.log()));
    assert!(
        matches!(&answer.event, Event::Edit { files, .. } if files.len() == 1),
        "{answer:#?}"
    );

    let jobs = prom
        .wait(
            "clip2gan_jobs_total in Prometheus",
            Query(
                "clip2gan_jobs_total{job=\"clip2gan\",command=\"imagine\",outcome=\"delivered\"}",
                |d: &Value| single_value(d),
            ),
        )
        .await;
    assert_eq!(jobs, 1.0);
    let engine = prom
        .wait(
            "the engine's job in Prometheus",
            Query(
                "sum(clip2gan_engine_jobs_total{outcome=\"ok\"})",
                |d: &Value| single_value(d),
            ),
        )
        .await;
    assert!(engine >= 1.0, "{engine}");

    // The deployed rules: loaded, evaluated on these series, no error,
    // and none firing on a bot that is fine.
    let rules = prom.wait("every rule evaluated", Rules).await;
    let names: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    for want in [
        "Clip2ganQueueGrowing",
        "Clip2ganEndToEndSlow",
        "Clip2ganDeadLetters",
        "Clip2ganJobsFailing",
        "Clip2ganNoWorkerConsuming",
    ] {
        assert!(names.contains(&want), "{want} not loaded: {names:?}");
    }
    for r in &rules {
        assert_eq!(r["health"], "ok", "{r:#}");
        assert_eq!(r["state"], "inactive", "{r:#}");
    }

    // The dashboard's queries parse and run.
    let queries = dashboard_queries(&repo().join("deploy/grafana/clip2gan.json"));
    assert!(queries.len() >= 10, "{queries:?}");
    for q in &queries {
        if let Err(e) = prom.query(q).await {
            panic!("the dashboard's query {q:?} fails: {e}");
        }
    }

    drop(prom);
    assert_eq!(
        tokio::task::block_in_place(|| bot.terminate()).code(),
        Some(0),
        "{}",
        bot.log()
    );
}
