//! Latent files: which space a file is in, and turning any of them into the
//! W+ tensor the synthesis network takes.

use std::path::Path;

use candle_core::Tensor;

use crate::error::{Error, Result};
use crate::generator::{check_finite, Generator};
use crate::npy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Space {
    /// Gaussian input of the mapping network, `[n, z_dim]`.
    Z,
    /// Mapped style vector, `[n, w_dim]`.
    W,
    /// One style vector per synthesis input, `[n, num_styles, w_dim]`.
    Wplus,
}

impl Space {
    pub fn name(self) -> &'static str {
        match self {
            Space::Z => "z",
            Space::W => "w",
            Space::Wplus => "wplus",
        }
    }
}

/// Read a latent file of `space` and produce W+ with truncation `psi` applied
/// (for z and w; a W+ file is taken as is unless psi != 1).
pub fn load_wplus(g: &dyn Generator, path: &Path, space: Space, psi: f64) -> Result<Tensor> {
    let a = npy::read_f32(path)?;
    let bad = |detail: String| Error::BadLatent {
        path: path.to_path_buf(),
        detail,
    };
    let dim = match space {
        Space::Z => g.z_dim(),
        _ => g.w_dim(),
    };
    let shape = match (space, a.shape.as_slice()) {
        (Space::Z | Space::W, [d]) if *d == dim => vec![1, dim],
        (Space::Z | Space::W, [n, d]) if *d == dim && *n > 0 => vec![*n, dim],
        (Space::Wplus, [k, d]) if *k == g.num_styles() && *d == dim => vec![1, *k, dim],
        (Space::Wplus, [n, k, d]) if *k == g.num_styles() && *d == dim && *n > 0 => {
            vec![*n, *k, dim]
        }
        (_, s) => {
            let want = match space {
                Space::Z | Space::W => format!("[n, {dim}]"),
                Space::Wplus => format!("[n, {}, {dim}]", g.num_styles()),
            };
            return Err(bad(format!(
                "shape {s:?} does not fit --space {}: expected {want}",
                space.name()
            )));
        }
    };
    let t = Tensor::from_vec(a.data, shape, g.device())?;
    check_finite(&t, &format!("latent file {}", path.display())).map_err(|e| bad(e.to_string()))?;
    match space {
        Space::Z => {
            let w = g.map(&t)?;
            g.broadcast_w(&g.truncate(&w, psi)?)
        }
        Space::W => g.broadcast_w(&g.truncate(&t, psi)?),
        Space::Wplus => g.truncate(&t, psi),
    }
}

/// Save W+ `[n, styles, dim]` as `.npy`.
pub fn save_wplus(path: &Path, wplus: &Tensor) -> Result<()> {
    let shape = wplus.dims().to_vec();
    let data = wplus.flatten_all()?.to_vec1::<f32>()?;
    npy::write_f32(path, &npy::Array { data, shape })
}
