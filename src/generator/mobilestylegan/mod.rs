//! MobileStyleGAN (Belousov 2021), the default generator: FFHQ faces at
//! 1024 px. `fetch` gets and converts the weights, `model` runs them,
//! `random` writes small random weight sets of the same layout (tests).

pub mod convert;
pub mod fetch;
pub mod ir;
pub mod model;
pub mod random;

pub use model::MobileStyleGan;
pub use random::random_weights;
