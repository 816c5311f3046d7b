//! Random StyleGAN2 weights (benchmarks and tests).

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use super::arch::Arch;
use super::naming::{Names, Naming};
use super::Checkpoint;
use crate::error::Result;
use crate::generator::seeded_normal;

/// Random weights for `arch` in NVIDIA's layout, initialised as NVIDIA does
/// (weights N(0, 1), mapping weights / lr, affine biases 1, other biases
/// 0), with noise strength 0.1 so the noise path runs, and `w_avg` = 0.
/// Deterministic per seed. For benchmarks and tests: the images mean nothing.
pub fn random_checkpoint(arch: &Arch, seed: u64) -> Result<Checkpoint> {
    let dev = Device::Cpu;
    let mut t = HashMap::new();
    let mut stream = 0u64;
    let mut normal = |shape: &[usize], scale: f64| -> Result<Tensor> {
        stream += 1;
        let n: usize = shape.iter().product();
        let s = seed
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(stream);
        Ok((seeded_normal(s, 1, n, &dev)?.reshape(shape)? * scale)?)
    };
    let full = |shape: &[usize], v: f32| Tensor::full(v, shape, &dev);
    let mut fan_in = arch.z_dim;
    for (i, &out) in arch.mapping_dims.iter().enumerate() {
        t.insert(
            format!("mapping.fc{i}.weight"),
            normal(&[out, fan_in], 1.0 / arch.mapping_lr)?,
        );
        t.insert(format!("mapping.fc{i}.bias"), full(&[out], 0.0)?);
        fan_in = out;
    }
    t.insert("mapping.w_avg".into(), full(&[arch.w_dim], 0.0)?);
    let names = Names(Naming::Nvidia);
    t.insert(names.constant(), normal(&[arch.channels[0], 4, 4], 1.0)?);
    for j in 0..arch.num_convs() {
        let block = j.div_ceil(2);
        let c_in = if j % 2 == 1 {
            arch.channels[block - 1]
        } else {
            arch.channels[block]
        };
        let c_out = arch.channels[block];
        let r = Arch::conv_resolution(j);
        let n = names.conv(j);
        t.insert(n.weight, normal(&[c_out, c_in, 3, 3], 1.0)?);
        t.insert(n.affine_w, normal(&[c_in, arch.w_dim], 1.0)?);
        t.insert(n.affine_b, full(&[c_in], 1.0)?);
        t.insert(n.bias, full(&[c_out], 0.0)?);
        t.insert(n.noise_const, normal(&[r, r], 1.0)?);
        t.insert(n.noise_strength, Tensor::new(0.1f32, &dev)?);
    }
    for (b, &c) in arch.channels.iter().enumerate() {
        let n = names.rgb(b);
        t.insert(n.weight, normal(&[3, c, 1, 1], 1.0)?);
        t.insert(n.affine_w, normal(&[c, arch.w_dim], 1.0)?);
        t.insert(n.affine_b, full(&[c], 1.0)?);
        t.insert(n.bias, full(&[3], 0.0)?);
    }
    let mut meta = HashMap::new();
    meta.insert("mapping_lr_multiplier".into(), arch.mapping_lr.to_string());
    if let Some(c) = arch.conv_clamp {
        meta.insert("conv_clamp".into(), c.to_string());
    }
    Ok(Checkpoint::from_tensors(
        &format!("random StyleGAN2 {} px (seed {seed})", arch.resolution),
        t,
        meta,
    ))
}

#[cfg(test)]
mod tests {
    use super::super::LoadOptions;
    use super::*;

    #[test]
    fn random_checkpoint_round_trips_through_the_parser() {
        let mut arch = Arch::config_f(32).unwrap();
        arch.channels = vec![16, 16, 8, 8];
        arch.mapping_dims = vec![32, 32];
        arch.z_dim = 24;
        arch.w_dim = 32;
        arch.conv_clamp = Some(256.0);
        let p = random_checkpoint(&arch, 1)
            .unwrap()
            .parse(&LoadOptions::default())
            .unwrap();
        assert_eq!(p.arch, arch);
        assert_eq!(p.naming, Naming::Nvidia);
        assert_eq!(p.convs.len(), 7);
        assert_eq!(p.rgbs.len(), 4);
    }
}
