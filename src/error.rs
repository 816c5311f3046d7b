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

    // The io::Error is part of the message rather than a `#[source]`, so
    // that printing the error chain does not repeat it.
    #[error("cannot write {path}: {err}")]
    Write { path: PathBuf, err: std::io::Error },

    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },

    #[error("configuration: {0}")]
    Config(String),

    #[error("training stopped: {0}")]
    Training(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// A user-supplied checkpoint (e.g. StyleGAN2) that cannot be used as is.
    #[error("{file}: {detail}")]
    BadCheckpoint { file: String, detail: String },
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Error::InvalidArgument(msg.into())
    }
}
