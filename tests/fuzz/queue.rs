//! Jobs and results read back from Redis streams (`queue::wire`:
//! `JobEntry::decode` on a worker, `decode_result` on a front end), and a
//! decoded job's request submitted to an engine, as a worker does (its
//! checks are the last line before the models). Seeds: a job of every
//! request kind and results of both outcomes, as the wire encodes them.
//! An input is the entry's fields as JSON (a string is a bulk string, a
//! number an integer, null nil, an array an array, `{"simple": s}` a simple
//! string); mutations edit the job and meta JSON inside the fields (sizes,
//! counts, latents' shapes, enum tags), the fields themselves and their kinds.

use std::collections::HashMap;
use std::sync::Arc;

use rand::Rng as _;
use redis::Value as R;
use serde_json::{json, Value};

use clip2gan::engine::{
    Backend, Engine, EngineConfig, EngineError, JobTimes, Latent, Output, RawOutput, Request,
};
use clip2gan::queue::wire::{decode_result, encode_result, JobEntry};

use crate::harness::{Outcome, Rng};
use crate::mutate;

const SHAPE: (usize, usize) = (2, 3);

/// Refuses every job it is given: the target is about what reaches it.
struct Refuse;

impl Backend for Refuse {
    fn latent_shape(&self) -> (usize, usize) {
        SHAPE
    }
    fn run(&mut self, jobs: &[Request]) -> Vec<Result<RawOutput, EngineError>> {
        jobs.iter()
            .map(|_| Err(EngineError::Failed("the fuzz backend runs nothing".into())))
            .collect()
    }
}

pub fn engine() -> Arc<Engine> {
    Arc::new(
        Engine::start(
            EngineConfig {
                max_wait_ms: 0,
                settle_ms: 0,
                ..Default::default()
            },
            || Ok(Refuse),
        )
        .unwrap(),
    )
}

fn latent() -> Latent {
    Latent {
        styles: SHAPE.0,
        dim: SHAPE.1,
        data: vec![0.5; SHAPE.0 * SHAPE.1],
    }
}

pub fn seeds() -> Vec<Vec<u8>> {
    let requests = vec![
        Request::Imagine {
            prompt: "a man with a beard".into(),
            count: 2,
            seed: 7,
            truncation: Some(0.7),
            candidates: 4,
        },
        Request::Edit {
            latent: latent(),
            instruction: "add smile".into(),
            strength: 1.0,
            layers: Default::default(),
        },
        Request::Invert {
            image: vec![137, 80, 78, 71],
        },
        Request::Variations {
            latent: latent(),
            seed: 3,
            count: 4,
            amount: 0.5,
        },
        Request::Interpolate {
            a: latent(),
            b: latent(),
            frames: 8,
        },
        Request::Render {
            latents: vec![latent(), latent()],
        },
    ];
    let mut out: Vec<Vec<u8>> = requests
        .into_iter()
        .enumerate()
        .map(|(i, request)| {
            let job = JobEntry {
                id: i as u64 + 1,
                user: 42,
                reply_to: "test:results:front-1".into(),
                deadline_ms: 1 << 50,
                request,
            };
            json!({"job": {"job": job.encode()}})
                .to_string()
                .into_bytes()
        })
        .collect();
    let ok = Ok(Output {
        images: vec![b"img-a".to_vec(), b"img-b".to_vec()],
        latents: vec![latent(), latent()],
        truncated_prompt: false,
        scores: Some(vec![0.25, 0.5]),
        times: JobTimes::default(),
    });
    for r in [ok, Err(EngineError::InvalidRequest("bad".into()))] {
        let fields: serde_json::Map<String, Value> = encode_result(9, &r)
            .into_iter()
            .map(|(k, v)| (k, Value::String(String::from_utf8(v).unwrap())))
            .collect();
        out.push(json!({ "result": fields }).to_string().into_bytes());
    }
    out
}

fn to_redis(v: &Value) -> R {
    match v {
        Value::Null => R::Nil,
        Value::Bool(b) => R::Boolean(*b),
        Value::Number(n) => R::Int(n.as_i64().unwrap_or(i64::MAX)),
        Value::String(s) => R::BulkString(s.clone().into_bytes()),
        Value::Array(a) => R::Array(a.iter().map(to_redis).collect()),
        Value::Object(o) => match o.get("simple").and_then(Value::as_str) {
            Some(s) => R::SimpleString(s.into()),
            None => R::Nil,
        },
    }
}

pub fn check(input: &[u8], engine: &Engine, rt: &tokio::runtime::Runtime) -> Outcome {
    let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(input) else {
        return Outcome::Refused("not the test's framing".into());
    };
    let fields = |v: &Value| -> HashMap<String, R> {
        v.as_object()
            .map(|o| o.iter().map(|(k, v)| (k.clone(), to_redis(v))).collect())
            .unwrap_or_default()
    };
    let mut refused = None;
    if let Some(job) = top.get("job") {
        match JobEntry::decode(&fields(job)) {
            Ok(j) => {
                let _ = (j.request.kind(), j.reply_to.len());
                match engine.submit(j.user, j.request) {
                    Ok(h) => match rt.block_on(h.wait()) {
                        Err(EngineError::Failed(_)) => {}
                        other => panic!("the fuzz backend fails every job: {other:?}"),
                    },
                    Err(e) => refused = Some(e.to_string()),
                }
            }
            Err(e) => refused = Some(e.to_string()),
        }
    }
    if let Some(result) = top.get("result") {
        if let Err(e) = decode_result(&fields(result)) {
            refused = Some(e.to_string());
        }
    }
    match refused {
        Some(why) => Outcome::Refused(why),
        None => Outcome::Accepted,
    }
}

pub fn mutate(rng: &mut Rng, seed: &[u8], _others: &[Vec<u8>]) -> Vec<u8> {
    let mut top: Value = serde_json::from_slice(seed).unwrap();
    // The JSON inside the job or meta field, most of the time.
    let inner = ["job", "result"].into_iter().find_map(|k| {
        let name = if k == "job" { "job" } else { "meta" };
        top.get(k)?
            .get(name)?
            .as_str()
            .map(|s| (k, name, s.to_string()))
    });
    match inner {
        Some((k, name, s)) if rng.random_bool(0.7) => {
            let v: Value = serde_json::from_str(&s).unwrap_or(Value::Null);
            let edited = mutate::json(rng, &v).to_string();
            let edited = if rng.random_bool(0.1) {
                String::from_utf8_lossy(&mutate::text(rng, edited.as_bytes())).into_owned()
            } else {
                edited
            };
            top[k][name] = Value::String(edited);
        }
        _ => top = mutate::json(rng, &top),
    }
    top.to_string().into_bytes()
}
