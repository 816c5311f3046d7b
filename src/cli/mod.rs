//! The command layer's per-command modules, one file a subcommand (part of
//! the binary, not the library); `pipeline` is what `imagine` and `edit`
//! share. Only `main.rs` and these hold the application [`Config`]
//! (`clip2gan::config::Config`); each hands the library layers their own
//! sections.
//!
//! [`Config`]: clip2gan::config::Config

pub mod adherence;
pub mod bench;
pub mod bot;
pub mod budget;
pub mod clip_score;
pub mod edit;
pub mod eval;
pub mod fetch;
pub mod generate;
pub mod health;
pub mod imagine;
pub mod parity;
pub mod pipeline;
pub mod tokenize;
pub mod train;
pub mod worker;
