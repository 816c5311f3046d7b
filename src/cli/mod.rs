//! The command layer's per-command modules (part of the binary, not the
//! library). Only `main.rs` and these hold the application [`Config`]
//! (`clip2gan::config::Config`); each hands the library layers their own
//! sections.
//!
//! [`Config`]: clip2gan::config::Config

pub mod adherence;
pub mod bot;
pub mod eval;
pub mod train;
pub mod worker;
