//! clip2gan: text-to-face generation after CLIP2GAN (arXiv 2211.15045).
//!
//! # Layout
//!
//! - [`generator`]: the [`generator::Generator`] trait (z -> w -> W+ -> image)
//!   and its implementations. [`generator::mobilestylegan`] is the default:
//!   `ir` reads the OpenVINO IR the weights ship in, `convert` walks that
//!   graph into named tensors, `fetch` downloads and converts once, `model`
//!   is the native candle network. [`generator::stylegan2`] runs StyleGAN2
//!   checkpoints users bring (`load`: rosinality `.pt` / safetensors in
//!   either naming; `model`; `fir`: upfirdn2d resampling).
//! - [`clip`]: CLIP text and image encoders (on candle-transformers' CLIP):
//!   `tokenizer` (offline, with the original clean-up), `preprocess`
//!   (PIL-exact resize + crop, and a differentiable path for training),
//!   `config` (transformers `config.json`), `hub` (local dir or hub download).
//! - [`mapper`]: the CLIP2GAN mapping network (CLIP embedding -> W+ residual
//!   over `w_avg`): an MLP or the closed-form linear map, with the text
//!   shift and residual sampling; its file format and compatibility checks.
//! - [`train`]: `clip2gan train`, making a mapper from generated faces: the
//!   pair cache (`cache`, growable `Bank`), the closed-form fit (`fit`,
//!   `captions`), first use (`warmup`: the first mapper before the first
//!   face, improved in idle time), and MLP training (modality-gap noise,
//!   losses, AdamW, checkpoints, resume); [`eval`]: `clip2gan eval-mapper`
//!   against baselines, with [`variety`] (range and variety of imagine's
//!   latents); [`prompts`]: prompt files.
//! - [`ops`]: the kernel layer of both generators (depthwise 3x3, inverse
//!   Haar DWT, FIR resampling, dense conv on gemm, the fused conv epilogue),
//!   each with a fast CPU path and a portable, differentiable tensor-op path,
//!   and the one switch between them.
//! - [`latent`] and [`npy`]: latent files (z, w, W+) in NumPy format.
//! - [`image_io`]: area resizing, RGB8 conversion, grids, atomic PNG writes.
//! - [`engine`]: the inference engine (queue, batching, per-user limits,
//!   idle-time work, warm-up) over the [`pipeline`] (CLIP -> mapper ->
//!   generator), in plain types; `engine::growing` is the backend that
//!   builds and refits the mapper while idle.
//! - [`bot`]: the Discord bot on the engine (commands, buttons, results
//!   store); it knows nothing of tensors.
//! - [`config`]: `config.toml` + environment + flags; [`device`]: CPU/CUDA choice.
//! - [`bench`]: the `clip2gan bench` measurements (printed as JSON).
//! - [`error`]: typed errors that say what to do; [`fsutil`]: atomic writes;
//!   [`tensorfile`]: safetensors files with metadata; [`rng`]: named,
//!   seeded random streams; [`runtime`]: process start-up tuning (allocator).
//!
//! The binary (`src/main.rs`) is a thin clap front end over these modules.

pub mod bench;
pub mod bot;
pub mod clip;
pub mod config;
pub mod device;
pub mod engine;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod generator;
pub mod image_io;
pub mod latent;
pub mod mapper;
pub mod npy;
pub mod ops;
pub mod parity;
pub mod pipeline;
pub mod prompts;
pub mod rng;
pub mod runtime;
pub mod tensorfile;
pub mod train;
pub mod variety;
