//! The Prometheus endpoint: installed from `[metrics]`, scraped over HTTP
//! while the engine runs jobs; its counters and histograms move.

use std::collections::HashMap;
use std::sync::Arc;

use clip2gan::engine::blank::Blank;
use clip2gan::engine::{Engine, EngineConfig, Request};
use clip2gan::health::Health;
use clip2gan::inference::Inference;
use clip2gan::metrics::{self, MetricsConfig};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The value of the line of metric `name` carrying all of `labels`.
fn value(m: &HashMap<String, f64>, name: &str, labels: &[&str]) -> Option<f64> {
    m.iter()
        .find(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{")))
                && labels.iter().all(|l| k.contains(l))
        })
        .map(|(_, v)| *v)
}

/// `name{labels} value` lines of a scrape.
fn parse(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("the endpoint answers")
        .text()
        .await
        .unwrap();
    parse(&text)
}

fn imagine(seed: u64) -> Request {
    Request::Imagine {
        prompt: "a face".into(),
        count: 1,
        seed,
        truncation: None,
        candidates: 1,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_shows_jobs_batches_and_stages() {
    let cfg = MetricsConfig {
        enabled: true,
        listen: format!("127.0.0.1:{}", free_port()),
    };
    let addr = metrics::install(&cfg, &Health::new())
        .unwrap()
        .expect("enabled");
    assert!(addr.ip().is_loopback());
    let engine = Arc::new(Engine::start(EngineConfig::default(), || Ok(Blank)).unwrap());
    let ok = |m: &HashMap<String, f64>| {
        value(
            m,
            "clip2gan_engine_jobs_total",
            &["kind=\"imagine\"", "outcome=\"ok\""],
        )
    };

    let job = Inference::submit(&*engine, 1, imagine(1)).await.unwrap();
    job.wait().await.unwrap();
    let first = scrape(addr).await;
    assert_eq!(ok(&first), Some(1.0), "{first:#?}");
    assert_eq!(value(&first, "clip2gan_batch_images_count", &[]), Some(1.0));
    assert!(
        value(
            &first,
            "clip2gan_stage_seconds_bucket",
            &["stage=\"encode\"", "le=\"0.005\""]
        )
        .is_some(),
        "histograms have explicit buckets: {first:#?}"
    );
    assert!(first.contains_key("clip2gan_queue_depth"));

    for seed in 2..5 {
        let job = Inference::submit(&*engine, seed, imagine(seed))
            .await
            .unwrap();
        job.wait().await.unwrap();
    }
    let later = scrape(addr).await;
    assert_eq!(ok(&later), Some(4.0), "{later:#?}");
    assert_eq!(
        value(&later, "clip2gan_queue_wait_seconds_count", &[]),
        Some(4.0),
        "{later:#?}"
    );

    // A second exporter on the same port is refused with what to do.
    let again = metrics::install(&cfg, &Health::new())
        .unwrap_err()
        .to_string();
    assert!(again.contains("metrics.listen"), "{again}");
}

#[test]
fn a_bad_address_says_what_is_expected() {
    let e = metrics::install(
        &MetricsConfig {
            enabled: true,
            listen: "localhost".into(),
        },
        &Health::new(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("127.0.0.1:9185"), "{e}");
}
