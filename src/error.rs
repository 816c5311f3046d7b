//! Typed errors, written for the person who reads them: what went wrong and
//! what to do about it. `anyhow` is used only in `main.rs`.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("model weights not found at {path}.\n  {hint}")]
    MissingWeights { path: PathBuf, hint: String },

    #[error("{file}: {detail}\n  The file is corrupt or from another model; delete it and run `clip2gan fetch` again.")]
    BadWeights { file: String, detail: String },

    #[error("fetching weights failed: {0}")]
    Fetch(String),

    #[error("bad latent file {path}: {detail}")]
    BadLatent { path: PathBuf, detail: String },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("configuration: {0}")]
    Config(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}
