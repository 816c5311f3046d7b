//! clip2gan: text-to-face generation after CLIP2GAN (arXiv 2211.15045).
//!
//! This is the crate's one module map; the README points here.
//!
//! # Threads and data flow (`clip2gan bot`)
//!
//! ```text
//!  Discord gateway ──> serenity task (tokio) ──> bot::handlers
//!                                                   │ engine::Request (plain types)
//!                                                   v
//!                                     engine queue (bounded, per-user limits)
//!                                                   │ batches of one kind
//!                                                   v
//!            worker thread "clip2gan-inference" ── Backend::run
//!              (owns the models and the device)     │ pipeline: CLIP -> mapper
//!              idle time: grow the pair bank,       │   -> generator (tensors)
//!              refit, refine (engine::growing)      v
//!                                     RawOutput (RGB images, latents)
//!                                                   │ back to the awaiting task
//!                                                   v
//!                    PNG / GIF encoding (tokio blocking thread)
//!                                                   │ engine::Output (bytes)
//!                                                   v
//!                    bot::respond: the reply, with retries ──> Discord HTTP
//! ```
//!
//! Beyond one machine (`clip2gan bot --queue redis://...` and `clip2gan
//! worker`), the bot talks to [`queue::QueueClient`] instead of the engine:
//! jobs go on a Redis stream, workers run them on their own engine (as
//! above, batching included) and publish each result on the stream of the
//! front end that asked, which posts it; results, histories, quotas and
//! cooldowns are then kept in Redis ([`bot::shared`]), so any front end
//! serves any user.
//!
//! The CLI commands run the same pipeline on the main thread, without the
//! engine. Settings flow the other way: only the command layer (the binary:
//! `src/main.rs`, `src/cli/`) holds the whole `Config` of [`config`]; it hands
//! each layer its own section ([`generator::GeneratorConfig`],
//! [`pipeline::PipelineSetup`], [`engine::EngineConfig`],
//! [`bot::Settings`], [`train::TrainConfig`], [`eval::Options`],
//! [`bench::BenchConfig`]), and no layer imports `config`.
//!
//! # Modules
//!
//! - [`generator`]: the [`generator::Generator`] trait (z -> w -> W+ -> image),
//!   its `[generator]` section and `open`. [`generator::mobilestylegan`] is
//!   the default: `ir` reads the OpenVINO IR the weights ship in, `convert`
//!   walks that graph into named tensors, `fetch` downloads and converts
//!   once, `model` is the native candle network, `random` makes random
//!   weight sets for tests. [`generator::stylegan2`] runs StyleGAN2
//!   checkpoints users bring (`load`: rosinality `.pt` in PyTorch's zip or
//!   legacy serialisation, NVIDIA `.pkl`, safetensors in either naming;
//!   `load/pickle` reads pickles without running code, `load/torch` the
//!   PyTorch containers, `load/nvidia` NVIDIA's network records, then
//!   naming, architecture and random weights; `model`).
//!   `latent`: latent files (z, w, W+) in NumPy format, read into W+;
//!   `parity`: a generator against the reference fixtures, and tensor
//!   differences for the tests (also at [`parity`]).
//! - [`clip`]: CLIP text and image encoders: `tokenizer` (offline, with the
//!   original clean-up), `preprocess` (PIL-exact resize + crop, and a
//!   differentiable path for training), `config` (transformers
//!   `config.json`), `hub` (the `[clip]` section; local dir or hub
//!   download; `hub/env`: the hub settings from the environment), `fast`
//!   (the CPU encoders on [`ops`]' kernels), `vision` and `text` (the
//!   differentiable towers), `contrastive` (training a CLIP from random
//!   weights, for the toy CLIP).
//! - [`mapper`]: the CLIP2GAN mapping network (CLIP embedding -> W+ residual
//!   over `w_avg`): an MLP or the closed-form linear map, with the text
//!   shift and residual sampling; its file format, compatibility checks and
//!   the `[mapper]` section.
//! - [`pipeline`]: CLIP -> mapper -> generator for batches of requests
//!   (imagine, edit, invert, variations, interpolate); `refine` (quality
//!   mode: CLIP-guided Adam steps on latents); `config` (the
//!   `[pipeline]` section, [`pipeline::PipelineSetup`]), `limits` (request
//!   limits and their messages, for every layer), `instruction` (edit
//!   phrases to text pairs).
//! - [`engine`]: the inference engine (queue, batching, per-user limits,
//!   idle-time work, warm-up) in plain types: `types` (requests, outputs,
//!   errors), `validate` (submit-time checks), `schedule` (which jobs form
//!   the next batch), `worker` (the inference thread's loop, panics
//!   contained), `backend` (the pipeline as a backend), `growing` (the
//!   backend that builds and refits the mapper while idle), `budget` (the
//!   batch settings from `engine.memory_limit`), `refine` (refinement jobs a
//!   step at a time between other jobs; the pipeline's side in
//!   `refine_backend`).
//! - [`inference`]: what the bot needs of image generation (submit,
//!   position, cancel, wait), served by the engine in this process or by
//!   [`queue`]: Redis Streams between bot front ends and GPU workers
//!   (`clip2gan worker`), with its own map in `queue/mod.rs`.
//! - [`bot`]: the Discord bot on the engine (commands, buttons, dialogs,
//!   results store, server settings, photo downloads); it knows nothing of
//!   tensors. Its own map is in `bot/mod.rs`.
//! - [`train`]: making a mapper from generated images (pair cache,
//!   closed-form fit and the MLP refined from it, its text shift from
//!   `captions`: `[mapper] captions` or the built-in face captions, first
//!   use, MLP training); its map is in `train/mod.rs`.
//!   [`adherence`]: what text and edits do to a face, judged on pixels
//!   (`judges`, `captions`, the toy CLIP in `toy`, `measure`);
//!   [`eval`]: measuring a mapper against baselines, with [`variety`] (range
//!   and variety of imagine's latents); [`prompts`]: prompt files.
//! - [`ops`]: the one kernel layer, of both generators (depthwise 3x3,
//!   inverse Haar DWT, FIR resampling, dense conv on gemm, the fused conv
//!   epilogue) and of CLIP (linear layers with fused epilogues, attention,
//!   row kernels, the area resize of generator output), each with a fast
//!   CPU path and a portable, differentiable tensor-op path, and the one
//!   switch between them.
//! - [`npy`]: NumPy `.npy` files.
//! - [`image_io`]: area resizing, RGB8 conversion (of generator output, and
//!   of decoded photos as PIL does it), grids, atomic PNG writes.
//! - [`bench`]: the `clip2gan bench` measurements (printed as JSON), one
//!   file per benchmark (`memory` and `soak`: where the bytes go, and
//!   memory over many jobs).
//! - [`config`]: `config.toml` + environment + flags, the whole file (for
//!   the command layer only); [`device`]: CPU/CUDA choice.
//! - [`metrics`]: the Prometheus metrics' names and buckets, and the
//!   recorder (the `[metrics]` section); [`endpoint`]: the HTTP endpoint
//!   that serves them with `/healthz` and `/readyz`; [`health`]: what
//!   `/readyz` checks (models, gateway, Redis).
//! - [`error`]: typed errors that say what to do; [`fsutil`]: atomic writes;
//!   [`memstat`]: the resident set, its peak and the allocator's bytes
//!   (what `bench memory` and the soak read); [`tensorfile`]: safetensors files with metadata; [`rng`]: named,
//!   seeded random streams; [`runtime`]: process start-up tuning (allocator);
//!   [`shutdown`]: the bound on shutdown after a signal (its watchdog).
//!
//! The binary is the clap front end over these modules: `src/main.rs` is
//! the command tree and the dispatch, `src/cli/` one file per subcommand. `tools/` holds
//! reference scripts, `tests/` the integration tests (shared fixtures in
//! `tests/common/`; `tests/fuzz/` fuzzes every parser of untrusted input,
//! run by `tools/fuzz.sh`), `models/` the fetched weights (never committed).

pub mod adherence;
pub mod bench;
pub mod bot;
pub mod clip;
pub mod config;
pub mod device;
pub mod endpoint;
pub mod engine;
pub mod error;
pub mod eval;
pub mod fsutil;
pub mod generator;
pub mod health;
pub mod image_io;
pub mod inference;
pub mod mapper;
pub mod memstat;
pub mod metrics;
pub mod npy;
pub mod ops;
pub mod pipeline;
pub mod prompts;
pub mod queue;
pub mod rng;
pub mod runtime;
pub mod shutdown;
pub mod tensorfile;
pub mod train;
pub mod variety;

/// The tests' path to [`generator::parity`] (the fixtures and tensor
/// differences they share).
pub use generator::parity;
