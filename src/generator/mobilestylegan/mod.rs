//! MobileStyleGAN (Belousov 2021), the default generator: FFHQ faces at
//! 1024 px. `fetch` gets and converts the weights, `model` runs them.

pub mod convert;
pub mod fetch;
pub mod ir;
pub mod model;

pub use model::MobileStyleGan;
