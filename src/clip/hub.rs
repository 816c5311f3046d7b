//! Where CLIP weights come from: a local directory in transformers layout,
//! or the Hugging Face hub (downloaded once into a cache with `hf-hub`).

use std::path::{Path, PathBuf};

use hf_hub::{Repo, RepoType};

use crate::error::{Error, Result};

/// The files of one checkpoint.
#[derive(Debug, Clone)]
pub struct ClipFiles {
    pub config: PathBuf,
    /// `model.safetensors` or `pytorch_model.bin`.
    pub weights: PathBuf,
    pub preprocessor: Option<PathBuf>,
}

const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// Files in a local directory.
pub fn from_dir(dir: &Path) -> Result<ClipFiles> {
    let config = dir.join("config.json");
    let weights = WEIGHT_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.exists());
    match (config.exists(), weights) {
        (true, Some(weights)) => Ok(ClipFiles {
            config,
            weights,
            preprocessor: Some(dir.join("preprocessor_config.json")).filter(|p| p.exists()),
        }),
        _ => Err(Error::MissingWeights {
            path: dir.to_path_buf(),
            hint:
                "A CLIP directory needs config.json and model.safetensors (or pytorch_model.bin), \
                   as on the checkpoint's Hugging Face page."
                    .into(),
        }),
    }
}

/// Resolve `model` (a directory, or a hub repo id such as
/// `openai/clip-vit-base-patch32`) to files, downloading if allowed.
pub fn resolve(model: &str, revision: &str, cache_dir: &Path, offline: bool) -> Result<ClipFiles> {
    let as_dir = Path::new(model);
    if as_dir.is_dir() {
        return from_dir(as_dir);
    }
    if !model.contains('/') || model.starts_with('.') || model.starts_with('/') {
        return Err(Error::MissingWeights {
            path: as_dir.to_path_buf(),
            hint: "clip.model is neither a directory nor a hub repo id like openai/clip-vit-base-patch32".into(),
        });
    }
    let repo = Repo::with_revision(model.to_string(), RepoType::Model, revision.to_string());
    let manual = format!(
        "Download config.json, model.safetensors and preprocessor_config.json from the Hugging Face \
         repo {model} (revision {revision}) into a directory and set clip.model to that directory \
         (or CLIP2GAN_CLIP__MODEL=/path/to/dir)."
    );
    let offline = offline || std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| v == "1" || v == "true");
    if offline {
        let cache = hf_hub::Cache::new(cache_dir.to_path_buf()).repo(repo);
        let config = cache.get("config.json");
        let weights = WEIGHT_FILES.iter().find_map(|f| cache.get(f));
        return match (config, weights) {
            (Some(config), Some(weights)) => Ok(ClipFiles {
                config,
                weights,
                preprocessor: cache.get("preprocessor_config.json"),
            }),
            _ => Err(Error::MissingWeights {
                path: cache_dir.to_path_buf(),
                hint: format!("CLIP {model} is not in the cache and offline mode is on. {manual}"),
            }),
        };
    }
    let api = hf_hub::api::sync::ApiBuilder::new()
        .with_cache_dir(cache_dir.to_path_buf())
        .with_progress(true)
        .build()
        .map_err(|e| Error::Fetch(format!("cannot set up the hub client: {e}. {manual}")))?;
    let r = api.repo(repo);
    let fetch = |f: &str| r.get(f);
    let config = fetch("config.json").map_err(|e| {
        Error::Fetch(format!(
            "cannot download {model}/config.json ({e}). {manual}"
        ))
    })?;
    let weights = match fetch("model.safetensors") {
        Ok(p) => p,
        Err(_) => fetch("pytorch_model.bin").map_err(|e| {
            Error::Fetch(format!(
                "cannot download the weights of {model} ({e}). {manual}"
            ))
        })?,
    };
    Ok(ClipFiles {
        config,
        weights,
        preprocessor: fetch("preprocessor_config.json").ok(),
    })
}
