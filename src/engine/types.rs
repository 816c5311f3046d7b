//! The engine's API in plain types: what the bot and the CLI send and get
//! back. Nothing here is a tensor.

use serde::{Deserialize, Serialize};

/// The request limits and their messages, as the pipeline enforces them:
/// the engine's clients (the bot's commands and dialogs) use these.
pub use crate::pipeline::limits;
pub use crate::pipeline::Layers;

/// Who asked (a Discord user id, or anything unique per client).
pub type UserId = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct JobId(pub u64);

/// A W+ latent as plain data, `styles x dim` floats, row-major.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latent {
    pub styles: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

/// Serialisable, so that a queue can carry it to a worker elsewhere.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Request {
    Imagine {
        prompt: String,
        count: usize,
        seed: u64,
        truncation: Option<f64>,
        /// Draw this many (>= count) and keep the best by CLIP score.
        candidates: usize,
    },
    Edit {
        latent: Latent,
        instruction: String,
        strength: f64,
        layers: Layers,
    },
    /// Encoded image bytes (PNG, JPEG, ...) to turn into an editable latent.
    Invert { image: Vec<u8> },
    Variations {
        latent: Latent,
        seed: u64,
        count: usize,
        amount: f64,
    },
    /// An animation from `a` to `b`.
    Interpolate { a: Latent, b: Latent, frames: usize },
    /// Render stored latents as they are (one PNG each): showing an earlier
    /// result again, or several of them side by side.
    Render { latents: Vec<Latent> },
    /// Quality mode: `steps` CLIP-guided steps moving each latent towards
    /// `prompt`, run a step at a time between other jobs, reporting
    /// progress (see `engine::refine`).
    Refine {
        latents: Vec<Latent>,
        prompt: String,
        steps: usize,
    },
}

impl Request {
    /// The request's name, for logs and metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Request::Imagine { .. } => "imagine",
            Request::Edit { .. } => "edit",
            Request::Invert { .. } => "invert",
            Request::Variations { .. } => "variations",
            Request::Interpolate { .. } => "interpolate",
            Request::Render { .. } => "render",
            Request::Refine { .. } => "refine",
        }
    }

    /// Requests of the same kind can share one forward pass.
    pub(crate) fn batch_kind(&self) -> Option<u8> {
        match self {
            Request::Imagine { .. } => Some(0),
            Request::Edit { .. } => Some(1),
            _ => None,
        }
    }

    /// Images this request renders (its weight in a batch).
    pub(crate) fn images(&self) -> usize {
        match self {
            Request::Imagine { candidates, .. } => *candidates,
            Request::Variations { count, .. } => *count,
            Request::Interpolate { frames, .. } => *frames,
            Request::Render { latents } | Request::Refine { latents, .. } => latents.len(),
            Request::Edit { .. } | Request::Invert { .. } => 1,
        }
    }
}

/// What a finished job returns.
#[derive(Debug, Clone)]
pub struct Output {
    /// PNG files, one per image; for `Interpolate`, one animated GIF.
    pub images: Vec<Vec<u8>>,
    /// The latent of each image, for follow-up requests (the client keeps
    /// them and sends them back by value).
    pub latents: Vec<Latent>,
    /// The prompt was longer than CLIP's 77 tokens and was cut.
    pub truncated_prompt: bool,
    /// CLIP scores of the kept candidates, when candidates were ranked.
    pub scores: Option<Vec<f32>>,
    /// Where the job's time went.
    pub times: JobTimes,
}

/// Where one job's time went, in ms of wall time, from submit to its output
/// being ready. The compute stages are those of the whole batch the job ran
/// in (`batch_images` images), shared with the other jobs of that batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct JobTimes {
    /// Images in the batch this job ran in.
    pub batch_images: usize,
    /// Submit to the start of its batch: waiting for earlier batches and
    /// for others to join this one.
    pub queue_ms: f64,
    pub clip_text_ms: f64,
    pub mapper_ms: f64,
    pub generator_ms: f64,
    /// Ranking candidates with the image encoder.
    pub clip_image_ms: f64,
    /// Area downscale to the output size and conversion to 8-bit RGB.
    pub resize_ms: f64,
    /// The rest of the batch's time on the inference thread (reading
    /// latents back, requests whose stages are not split).
    pub worker_other_ms: f64,
    /// PNG (or GIF) encoding of this job's images.
    pub encode_ms: f64,
    /// Everything else: the result travelling from the inference thread to
    /// the awaiting task and to an encoding thread and back.
    pub handoff_ms: f64,
    pub total_ms: f64,
}

impl JobTimes {
    /// Stages in the order a job passes them, with their names.
    pub fn rows(&self) -> [(&'static str, f64); 10] {
        [
            ("queue", self.queue_ms),
            ("clip text", self.clip_text_ms),
            ("mapper", self.mapper_ms),
            ("generator", self.generator_ms),
            ("clip image", self.clip_image_ms),
            ("resize", self.resize_ms),
            ("worker other", self.worker_other_ms),
            ("encode", self.encode_ms),
            ("hand-off", self.handoff_ms),
            ("total", self.total_ms),
        ]
    }

    /// The batch's time on the inference thread.
    pub fn worker_ms(&self) -> f64 {
        self.clip_text_ms
            + self.mapper_ms
            + self.generator_ms
            + self.clip_image_ms
            + self.resize_ms
            + self.worker_other_ms
    }
}

/// Why a job did not produce images. Messages are written for the end user.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
pub enum EngineError {
    #[error("the queue is full ({capacity} jobs waiting); please try again in a minute")]
    QueueFull { capacity: usize },
    #[error("you already have {limit} jobs in progress; wait for one to finish")]
    UserBusy { limit: usize },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("the job was cancelled")]
    Cancelled,
    #[error("the image service is shutting down; please try again later")]
    ShuttingDown,
    #[error("{0}")]
    WarmingUp(Warmup),
    #[error("generation failed: {0}")]
    Failed(String),
    /// The workers cannot be reached (a queue between front end and
    /// workers is down); the job was not queued.
    #[error("the image service is busy right now; please try again in a minute")]
    Unavailable,
}

impl EngineError {
    /// The error's name, for metric labels.
    pub fn label(&self) -> &'static str {
        match self {
            EngineError::QueueFull { .. } => "queue_full",
            EngineError::UserBusy { .. } => "user_busy",
            EngineError::InvalidRequest(_) => "invalid",
            EngineError::Cancelled => "cancelled",
            EngineError::ShuttingDown => "shutting_down",
            EngineError::WarmingUp(_) => "warming_up",
            EngineError::Failed(_) => "failed",
            EngineError::Unavailable => "unavailable",
        }
    }
}

/// How far a backend is from serving its first job (e.g. while the first
/// mapper is being built from generated faces).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warmup {
    pub percent: u8,
    /// Seconds left, once a rate is known.
    pub eta_s: Option<u64>,
}

impl std::fmt::Display for Warmup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "warming up: the face model is being built from generated faces ({}%",
            self.percent
        )?;
        match self.eta_s {
            Some(s) if s >= 90 => write!(f, ", about {} min left", (s + 30) / 60)?,
            Some(s) => write!(f, ", about {} s left", s.max(1))?,
            None => {}
        }
        write!(f, "); please try again then")
    }
}

/// Errors from the pipeline by kind: a request it refused is the user's to
/// fix; anything else is a failure of the service.
impl From<crate::error::Error> for EngineError {
    fn from(e: crate::error::Error) -> Self {
        match e {
            crate::error::Error::InvalidArgument(m) => EngineError::InvalidRequest(m),
            other => EngineError::Failed(other.to_string()),
        }
    }
}
