//! `config.toml` and `CLIP2GAN_*` environment values (`Config::from_toml`,
//! then every section's own checks as the commands run them). Seeds: the
//! repository's `config.toml`, with and without variables. An input is
//! the TOML, then a line `#ENV`, then `NAME=value` lines; mutations edit
//! the TOML's numbers and lines, and set variables of real keys to edge
//! values and wrong types.

use std::collections::HashMap;

use rand::Rng as _;

use clip2gan::config::Config;

use crate::harness::{Outcome, Rng};
use crate::mutate::{self, edge};

const ENV: &str = "\n#ENV\n";

pub fn seeds() -> Vec<Vec<u8>> {
    let toml = include_str!("../../config.toml");
    let env = "CLIP2GAN_ENGINE__MAX_BATCH=4\nCLIP2GAN_GENERATOR__TRUNCATION=0.6\n\
               CLIP2GAN_BOT__COOLDOWN_MS=100\nCLIP2GAN_DEVICE=cpu\n";
    vec![
        toml.as_bytes().to_vec(),
        format!("{toml}{ENV}{env}").into_bytes(),
        format!("[engine]\nmax_batch = 2\n{ENV}CLIP2GAN_QUEUE__URL=redis://127.0.0.1:6379\n")
            .into_bytes(),
    ]
}

fn split(input: &[u8]) -> (String, HashMap<String, String>) {
    let s = String::from_utf8_lossy(input);
    let (toml, env) = s.split_once(ENV).unwrap_or((&s, ""));
    let env = env
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    (toml.to_string(), env)
}

/// Every section checked as the command that uses it does.
fn checked(cfg: &Config) -> Result<(), String> {
    cfg.bot.validate().map_err(|e| e.to_string())?;
    cfg.discord.validate().map_err(|e| e.to_string())?;
    cfg.engine.validate().map_err(|e| e.to_string())?;
    cfg.train.validate().map_err(|e| e.to_string())?;
    if !cfg.queue.url.is_empty() {
        cfg.queue.validate().map_err(|e| e.to_string())?;
    }
    let _ = (
        cfg.pipeline_setup(),
        cfg.first_use(),
        cfg.bench_setup(),
        cfg.mapper_path(),
    );
    Ok(())
}

pub fn check(input: &[u8]) -> Outcome {
    let (toml, env) = split(input);
    match Config::from_toml(&toml, env).map_err(|e| e.to_string()) {
        Ok(cfg) => match checked(&cfg) {
            Ok(()) => {
                // What is accepted can be run: every wait a setting makes
                // fits a clock (`Instant + d` panics on overflow).
                for (name, d) in cfg.durations() {
                    assert!(
                        d <= clip2gan::config::MAX_WAIT,
                        "{name} = {d:?} was accepted"
                    );
                }
                Outcome::Accepted
            }
            Err(e) => Outcome::Refused(e),
        },
        Err(e) => Outcome::Refused(e),
    }
}

/// Keys of the seed file as variable names (`CLIP2GAN_SECTION__KEY`).
fn keys() -> Vec<String> {
    let mut section = String::new();
    let mut out = Vec::new();
    for l in include_str!("../../config.toml").lines() {
        let l = l.trim().trim_start_matches("# ");
        if let Some(s) = l.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            section = format!("{}__", s.to_uppercase());
        } else if let Some((k, _)) = l.split_once(" = ") {
            if k.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                out.push(format!("CLIP2GAN_{section}{}", k.to_uppercase()));
            }
        }
    }
    out
}

pub fn mutate(rng: &mut Rng, seed: &[u8], _others: &[Vec<u8>]) -> Vec<u8> {
    let (toml, mut env) = split(seed);
    let toml = if rng.random_bool(0.6) {
        String::from_utf8_lossy(&mutate::text(rng, toml.as_bytes())).into_owned()
    } else {
        toml
    };
    if rng.random_bool(0.6) {
        let keys = keys();
        for _ in 0..rng.random_range(1..=3) {
            let k = keys[rng.random_range(0..keys.len())].clone();
            let v = match rng.random_range(0..6) {
                0 => (edge(rng) as i64).to_string(),
                1 => ["", "true", "-1", "nan", "1e400", "[1,2]", "0.0"][rng.random_range(0..7)]
                    .to_string(),
                2 => "x".repeat(rng.random_range(0..300)),
                _ => edge(rng).to_string(),
            };
            env.insert(k, v);
        }
    }
    let mut env: Vec<_> = env.into_iter().collect();
    env.sort();
    let lines: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    format!("{toml}{ENV}{lines}").into_bytes()
}
