//! Training checkpoints: one safetensors file that is a complete mapper file
//! (so `eval-mapper` and `imagine` can load it as is) plus the optimiser
//! moments (`adam.m.*`, `adam.v.*`) and the run state (metadata
//! `clip2gan.train`: step, settings, how randomness is drawn). Written
//! atomically: a crash or a full disk leaves the previous checkpoint intact.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use crate::error::{Error, Result};
use crate::mapper::{self, MapperMeta};

pub const FILE: &str = "checkpoint.safetensors";
pub const STATE_KEY: &str = "clip2gan.train";
/// How a run draws randomness; stored so a reader knows the step is the
/// whole random state.
pub const RNG_SCHEME: &str =
    "streams derived from (seed, name) with SHA-256 -> ChaCha8; per-step names, so the step is the RNG position";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps completed.
    pub step: u64,
    pub config: TrainConfig,
    pub rng: String,
}

/// A checkpoint read back.
pub struct Loaded {
    /// The mapper's parameters, ready for `Mapper::init`.
    pub varmap: VarMap,
    pub w_avg: Tensor,
    pub meta: MapperMeta,
    pub state: TrainState,
    /// Optimiser moments by name.
    pub optimiser: HashMap<String, Tensor>,
}

pub fn save(
    path: &Path,
    varmap: &VarMap,
    w_avg: &Tensor,
    meta: &MapperMeta,
    optimiser: Vec<(String, Tensor)>,
    state: &TrainState,
) -> Result<()> {
    let json = serde_json::to_string(state).map_err(|e| Error::invalid(e.to_string()))?;
    mapper::save_with(
        path,
        varmap,
        w_avg,
        meta,
        optimiser,
        HashMap::from([(STATE_KEY.to_string(), json)]),
    )
}

pub fn load(path: &Path, device: &Device) -> Result<Loaded> {
    let meta = mapper::read_meta(path)?;
    let mut f = crate::tensorfile::read(path, device)?;
    let bad = |detail: String| Error::BadWeights {
        file: path.display().to_string(),
        detail,
    };
    let state: TrainState = match f.metadata.get(STATE_KEY) {
        Some(json) => {
            serde_json::from_str(json).map_err(|e| bad(format!("bad training state: {e}")))?
        }
        None => {
            return Err(bad(
                "a mapper file, not a training checkpoint: nothing to resume".into(),
            ))
        }
    };
    let w_avg = f.take("w_avg", path)?;
    let varmap = VarMap::new();
    let mut optimiser = HashMap::new();
    {
        let mut vars = varmap.data().lock().expect("not poisoned");
        for (name, t) in f.tensors.drain() {
            if name.starts_with("adam.") {
                optimiser.insert(name, t);
            } else {
                vars.insert(name, Var::from_tensor(&t)?);
            }
        }
    }
    Ok(Loaded {
        varmap,
        w_avg,
        meta,
        state,
        optimiser,
    })
}
