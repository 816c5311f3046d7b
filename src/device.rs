//! Choosing the compute device from the `device` setting.

use candle_core::Device;

use crate::error::{Error, Result};

/// `auto` (CUDA when built with it and a GPU is present, else CPU), `cpu`, or `cuda:N`.
pub fn select(spec: &str) -> Result<Device> {
    match spec.trim() {
        "cpu" => Ok(Device::Cpu),
        "auto" => {
            if cfg!(feature = "cuda") {
                if let Ok(d) = Device::new_cuda(0) {
                    return Ok(d);
                }
            }
            Ok(Device::Cpu)
        }
        s => {
            let ordinal = s
                .strip_prefix("cuda:")
                .or_else(|| (s == "cuda").then_some("0"))
                .and_then(|n| n.parse::<usize>().ok())
                .ok_or_else(|| {
                    Error::Config(format!("device {s:?}: use \"auto\", \"cpu\" or \"cuda:N\""))
                })?;
            if !cfg!(feature = "cuda") {
                return Err(Error::Config(format!(
                    "device {s:?} needs a build with CUDA: cargo build --release --features cuda"
                )));
            }
            Device::new_cuda(ordinal).map_err(|e| Error::Config(format!("cannot open {s}: {e}")))
        }
    }
}

pub fn describe(d: &Device) -> String {
    match d {
        Device::Cpu => format!("cpu ({} threads)", rayon::current_num_threads()),
        Device::Cuda(_) => "cuda".into(),
        _ => format!("{d:?}"),
    }
}
