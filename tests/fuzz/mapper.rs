//! Mapper files (safetensors with the mapper's metadata: `mapper::read_meta`
//! and `Mapper::load` with its checks against the CLIP and generator in
//! use), and the crate's one safetensors reader (`tensorfile::decode`, also
//! used for checkpoints, the pair cache and generator weights). Seeds: an
//! MLP and a linear mapper saved by `mapper::save`. Mutations: the header
//! length, and the JSON header's dtypes, shapes and data offsets (the
//! length fixed, so the reader gets past it), or the metadata's sizes.

use std::path::Path;

use candle_core::{Device, Tensor};
use rand::Rng as _;
use serde_json::Value;

use clip2gan::mapper::{self, Compat, Mapper, MapperConfig, MapperKind, MapperMeta};

use crate::harness::{Outcome, Rng};
use crate::mutate::{self, edge, set_field};

const CLIP_DIM: usize = 16;
const STYLES: usize = 4;
const W_DIM: usize = 8;

fn meta(kind: MapperKind) -> MapperMeta {
    MapperMeta {
        clip_model: "fuzz-clip".into(),
        clip_dim: CLIP_DIM,
        generator: "fuzz-generator".into(),
        num_styles: STYLES,
        w_dim: W_DIM,
        config: MapperConfig {
            kind,
            depth: 2,
            width: 16,
            ..Default::default()
        },
        step: 0,
        training: Value::Null,
        metrics: Value::Null,
    }
}

pub fn compat() -> Compat<'static> {
    Compat {
        clip_model: "fuzz-clip",
        clip_dim: CLIP_DIM,
        generator: "fuzz-generator",
        num_styles: STYLES,
        w_dim: W_DIM,
    }
}

/// An MLP and a linear mapper, as `mapper::save` writes them.
pub fn seeds(dir: &Path) -> Vec<Vec<u8>> {
    let w_avg = Tensor::arange(0f32, W_DIM as f32, &Device::Cpu).unwrap();
    [MapperKind::Mlp, MapperKind::Linear]
        .into_iter()
        .enumerate()
        .map(|(i, kind)| {
            let varmap = candle_nn::VarMap::new();
            let m = Mapper::init_seeded(&varmap, meta(kind), &w_avg, 7, &Device::Cpu).unwrap();
            let path = dir.join(format!("seed{i}.safetensors"));
            mapper::save(&path, &varmap, &w_avg, &m.meta).unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect()
}

/// Both readers on the same bytes: the safetensors reader in memory, the
/// mapper loader from a file (it memory-maps). A mapper that loads must
/// map an embedding to W+ of the shape it promised.
pub fn check(bytes: &[u8], file: &Path) -> Outcome {
    // Only its not panicking is checked here: the mapper loader below reads
    // the same bytes with its own checks.
    let _ = clip2gan::tensorfile::decode(bytes, &Device::Cpu);
    std::fs::write(file, bytes).unwrap();
    let loaded = mapper::read_meta(file)
        .and_then(|_| Mapper::load(file, &compat(), &Device::Cpu))
        .and_then(|(m, _)| {
            let e = Tensor::ones((1, CLIP_DIM), candle_core::DType::F32, &Device::Cpu)?;
            let w = m.forward(&e)?;
            assert_eq!(w.dims(), &[1, STYLES, W_DIM], "a loaded mapper's output");
            Ok(())
        });
    match loaded {
        Ok(()) => Outcome::Accepted,
        Err(e) => Outcome::Refused(e.to_string()),
    }
}

pub fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let n = u64::from_le_bytes(seed[..8].try_into().unwrap()) as usize;
    let (header, data) = (&seed[8..8 + n], &seed[8 + n..]);
    let mut b = match rng.random_range(0..5) {
        0 => {
            let mut b = seed.to_vec();
            set_field(&mut b, 0, 8, edge(rng), false);
            b
        }
        k => {
            let v: Value = serde_json::from_slice(header).unwrap();
            let v = match k {
                1 => dtype(rng, v),
                2 => metadata(rng, v),
                _ => mutate::json(rng, &v),
            };
            let h = serde_json::to_vec(&v).unwrap();
            let mut b = (h.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(&h);
            b.extend_from_slice(data);
            b
        }
    };
    if rng.random_bool(0.15) {
        b = mutate::bytes(rng, &b, others);
    }
    b
}

/// One tensor's dtype changed (its offsets then no longer fit the shape).
fn dtype(rng: &mut Rng, mut v: Value) -> Value {
    let names: Vec<String> = v
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    let name = &names[rng.random_range(0..names.len())];
    let d = [
        "F16", "BF16", "F64", "I64", "U8", "BOOL", "F8_E4M3", "Q4", "",
    ][rng.random_range(0..9)];
    v[name]["dtype"] = Value::String(d.into());
    v
}

/// The mapper metadata (JSON inside a JSON string) edited.
fn metadata(rng: &mut Rng, mut v: Value) -> Value {
    let key = mapper::META_KEY;
    let Some(s) = v["__metadata__"][key].as_str() else {
        return mutate::json(rng, &v);
    };
    let inner: Value = serde_json::from_str(s).unwrap_or(Value::Null);
    let edited = mutate::json(rng, &inner);
    v["__metadata__"][key] = Value::String(edited.to_string());
    v
}
