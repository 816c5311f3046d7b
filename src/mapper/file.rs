//! The mapper file: safetensors with the metadata under [`META_KEY`],
//! read ([`read_meta`], [`Mapper::load`] with its checks) and written
//! atomically ([`save`], [`save_with`]); a `VarMap`'s variables to and from
//! tensors; and the `[mapper]` section naming the file the pipeline serves.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use serde::Deserialize;

use super::{Compat, Mapper, MapperMeta};
use crate::error::{Error, Result};

pub const META_KEY: &str = "clip2gan.mapper";

/// The `[mapper]` section: the mapper file the pipeline serves, and how
/// first use builds one when it is missing.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MapperFileConfig {
    /// The trained mapper `imagine` and `edit` use, relative to `models_dir`
    /// unless absolute.
    pub path: PathBuf,
    /// No mapper at `path`: build one on first use (a pair bank of
    /// generated faces and the closed-form fit, see `train --mode fit`).
    pub build: bool,
    /// Pairs of the first fit (serving starts after it).
    pub first_pairs: usize,
    /// The bank grows to this many pairs while the bot is idle, and the
    /// mapper is refitted at each doubling.
    pub pairs: usize,
    /// A file of typical prompts for this generator, one per line (relative
    /// to `models_dir` unless absolute): their mean text embedding is the
    /// text side of the fit's modality-gap shift. Unset: 64 built-in face
    /// captions, right for face generators only.
    pub captions: Option<PathBuf>,
}

impl Default for MapperFileConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("mapper.safetensors"),
            build: true,
            first_pairs: 512,
            pairs: 2048,
            captions: None,
        }
    }
}

impl MapperFileConfig {
    pub fn validate(&self) -> Result<()> {
        if self.first_pairs < 32 || self.pairs < self.first_pairs {
            return Err(Error::Config(format!(
                "mapper.first_pairs = {} must be at least 32 and mapper.pairs = {} at least that",
                self.first_pairs, self.pairs
            )));
        }
        Ok(())
    }

    /// The mapper file, resolved against `models_dir`.
    pub fn path_in(&self, models_dir: &Path) -> PathBuf {
        models_dir.join(&self.path)
    }

    /// The captions of the text shift: the configured file's, or the
    /// built-in face captions.
    pub fn captions_in(&self, models_dir: &Path) -> Result<crate::train::captions::Captions> {
        match &self.captions {
            Some(p) => crate::train::captions::Captions::read(&models_dir.join(p)),
            None => Ok(crate::train::captions::Captions::faces()),
        }
    }
}

impl Mapper {
    /// Load a mapper file and check it against the CLIP and generator in use.
    /// Returns the mapper and any warnings for the caller to show.
    pub fn load(path: &Path, compat: &Compat, device: &Device) -> Result<(Self, Vec<String>)> {
        let meta = read_meta(path)?;
        let warnings = meta.check(compat)?;
        let bad = |detail: String| Error::BadWeights {
            file: path.display().to_string(),
            detail,
        };
        // SAFETY: read-only memory map of a file we do not modify while loaded.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[path], DType::F32, device) }
            .map_err(|e| bad(format!("cannot read: {e}")))?;
        if !vb.contains_tensor("w_avg") {
            return Err(bad("tensor `w_avg` is missing".into()));
        }
        let m =
            Self::new(vb, meta).map_err(|e| bad(format!("does not match its metadata: {e}")))?;
        Ok((m, warnings))
    }
}

/// A `VarMap` holding `vars` on `device`: the variables of a mapper made
/// from known tensors (a fit, a refined MLP, a benchmark's random mapper)
/// for [`Mapper::init`] and [`save`].
pub fn varmap_of<N: Into<String>>(
    vars: impl IntoIterator<Item = (N, Tensor)>,
    device: &Device,
) -> Result<VarMap> {
    let varmap = VarMap::new();
    {
        let mut data = varmap.data().lock().expect("not poisoned");
        for (name, t) in vars {
            data.insert(name.into(), Var::from_tensor(&t.to_device(device)?)?);
        }
    }
    Ok(varmap)
}

/// The metadata of a mapper file, without loading its weights.
pub fn read_meta(path: &Path) -> Result<MapperMeta> {
    if !path.exists() {
        return Err(Error::MissingWeights {
            path: path.to_path_buf(),
            hint: "Build one with `clip2gan train --mode fit` (seconds after its pairs are rendered; \
                   `[mapper] build = true` does it on first use) or train one with `clip2gan train` \
                   (see README.md), or set mapper.path in config.toml."
                .into(),
        });
    }
    let bad = |detail: String| Error::BadWeights {
        file: path.display().to_string(),
        detail,
    };
    let bytes = std::fs::read(path).map_err(|err| Error::Read {
        path: path.to_path_buf(),
        err,
    })?;
    let (_, st_meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
    let json = st_meta
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY))
        .ok_or_else(|| {
            bad(format!(
                "no `{META_KEY}` metadata: not a clip2gan mapper file"
            ))
        })?;
    serde_json::from_str(json).map_err(|e| bad(format!("bad mapper metadata: {e}")))
}

/// Save the variables of `varmap` plus `w_avg` with metadata, atomically.
pub fn save(path: &Path, varmap: &VarMap, w_avg: &Tensor, meta: &MapperMeta) -> Result<()> {
    save_with(path, varmap, w_avg, meta, Vec::new(), HashMap::new())
}

/// A VarMap's variables as plain tensors, sorted by name. They share the
/// variables' storage: an optimiser step that sets a variable changes them
/// too (`Tensor::copy` for a snapshot).
pub fn tensors_of(varmap: &VarMap) -> Vec<(String, Tensor)> {
    let mut t: Vec<(String, Tensor)> = varmap
        .data()
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

/// [`save`] plus more tensors and metadata in the same file (training
/// checkpoints: optimiser state). Tensor names are sorted, so equal
/// contents give identical files.
pub fn save_with(
    path: &Path,
    varmap: &VarMap,
    w_avg: &Tensor,
    meta: &MapperMeta,
    extra: Vec<(String, Tensor)>,
    mut extra_meta: HashMap<String, String>,
) -> Result<()> {
    let mut tensors = tensors_of(varmap);
    tensors.push(("w_avg".into(), w_avg.clone()));
    tensors.extend(extra);
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let tensors = tensors
        .into_iter()
        .map(|(k, t)| Ok((k, t.to_dtype(DType::F32)?)))
        .collect::<Result<Vec<_>>>()?;
    let meta_json = serde_json::to_string(meta).map_err(|e| Error::invalid(e.to_string()))?;
    extra_meta.insert(META_KEY.to_string(), meta_json);
    crate::tensorfile::write(path, &tensors, extra_meta)
}
