//! Jobs and results as stream entries. A job is one JSON field (requests
//! are small, but for a photo); a result carries its images as raw binary
//! fields (`img0`, `img1`, ...) beside a JSON `meta` field, so PNG bytes are
//! not inflated fourfold into JSON arrays. JSON keeps an entry readable
//! with `redis-cli XRANGE` when an operator looks at the dead letters.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::engine::{EngineError, JobTimes, Latent, Output, Request, UserId};

use super::QueueError;

/// One job in `{prefix}:jobs`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobEntry {
    pub id: u64,
    pub user: UserId,
    /// The front end whose result stream gets the answer.
    pub reply_to: String,
    /// Unix ms after which no result can be posted (the token has expired).
    pub deadline_ms: u64,
    pub request: Request,
}

impl JobEntry {
    pub fn encode(&self) -> String {
        serde_json::to_string(self).expect("jobs serialise")
    }

    pub fn decode(fields: &HashMap<String, redis::Value>) -> Result<JobEntry, QueueError> {
        let raw = bytes(fields, "job").ok_or_else(|| bad("a job entry without its job field"))?;
        serde_json::from_slice(&raw).map_err(|e| bad(&format!("an unreadable job ({e})")))
    }
}

/// A result's fields besides its images.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    error: Option<EngineError>,
    latents: Vec<Latent>,
    truncated_prompt: bool,
    scores: Option<Vec<f32>>,
    times: JobTimes,
}

/// The fields of a result entry for job `id`.
pub fn encode_result(id: u64, result: &Result<Output, EngineError>) -> Vec<(String, Vec<u8>)> {
    let (meta, images) = match result {
        Ok(out) => (
            Meta {
                error: None,
                latents: out.latents.clone(),
                truncated_prompt: out.truncated_prompt,
                scores: out.scores.clone(),
                times: out.times,
            },
            out.images.as_slice(),
        ),
        Err(e) => (
            Meta {
                error: Some(e.clone()),
                latents: Vec::new(),
                truncated_prompt: false,
                scores: None,
                times: JobTimes::default(),
            },
            &[][..],
        ),
    };
    let mut fields = vec![
        ("job".to_string(), id.to_string().into_bytes()),
        (
            "meta".to_string(),
            serde_json::to_vec(&meta).expect("results serialise"),
        ),
    ];
    for (i, img) in images.iter().enumerate() {
        fields.push((format!("img{i}"), img.clone()));
    }
    fields
}

/// A result entry back: its job id and the job's outcome.
pub fn decode_result(
    fields: &HashMap<String, redis::Value>,
) -> Result<(u64, Result<Output, EngineError>), QueueError> {
    let id = bytes(fields, "job")
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| bad("a result without its job id"))?;
    let meta: Meta = bytes(fields, "meta")
        .ok_or_else(|| bad("a result without its meta field"))
        .and_then(|m| {
            serde_json::from_slice(&m).map_err(|e| bad(&format!("an unreadable result ({e})")))
        })?;
    if let Some(e) = meta.error {
        return Ok((id, Err(e)));
    }
    let mut images = Vec::new();
    while let Some(img) = bytes(fields, &format!("img{}", images.len())) {
        images.push(img);
    }
    Ok((
        id,
        Ok(Output {
            images,
            latents: meta.latents,
            truncated_prompt: meta.truncated_prompt,
            scores: meta.scores,
            times: meta.times,
        }),
    ))
}

fn bytes(fields: &HashMap<String, redis::Value>, name: &str) -> Option<Vec<u8>> {
    match fields.get(name)? {
        redis::Value::BulkString(b) => Some(b.clone()),
        redis::Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn bad(what: &str) -> QueueError {
    QueueError::Protocol(what.to_string())
}
