//! Random MobileStyleGAN weight sets of any size, in the layout of the
//! converted FFHQ weights, so tests and experiments can train and run the
//! whole pipeline in seconds through the normal loader.
//!
//! The values are not a trained network's: they are scaled so that
//! activations stay near unit variance through every block and the image
//! depends visibly on every style vector (modulation biases of 1, weights
//! of variance 1/fan-in), which is all a mapper-training test needs.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::convert::{NamedTensor, Tensors};
use super::fetch::write_safetensors;
use super::model::{map_z, GENERATOR_META_KEY, MAPPING_FILE, SYNTHESIS_FILE};
use crate::error::{Error, Result};
use crate::generator::seeded_normal;

/// Mapping layers of a random weight set (the FFHQ network has 8; fewer keep
/// w close to Gaussian, which is all tests need).
pub const MAPPING_LAYERS: usize = 4;
/// Relative strength of the style modulation.
const MODULATION: f32 = 0.3;
/// Strength of the stored noise buffers.
const NOISE_STD: f32 = 0.1;
/// z drawn to estimate `w_avg`.
const W_AVG_SAMPLES: usize = 10_000;

/// The `Generator::id` a random weight set gets: its shape and seed, so a
/// mapper trained on one set is refused by another.
pub fn random_id(channels: &[usize], w_dim: usize, seed: u64) -> String {
    let c: Vec<String> = channels.iter().map(|c| c.to_string()).collect();
    format!("mobilestylegan-random-c{}-w{w_dim}-s{seed}", c.join("x"))
}

/// Write `mapping.safetensors` and `synthesis.safetensors` with random
/// weights into `dir`.
///
/// `channels[0]` is the width of the constant 4x4 input and `channels[i]`
/// the output width of block `i - 1`; there are `channels.len() - 1` blocks,
/// so the images are `4 * 2^channels.len()` pixels wide (the FFHQ network is
/// `[512, 512, 512, 512, 512, 256, 128, 64]`: 1024 px). Every width but the
/// last must be a multiple of 4 (the upsampler turns 4C channels into C).
/// `z_dim` equals `w_dim`.
pub fn random_weights(dir: &Path, channels: &[usize], w_dim: usize, seed: u64) -> Result<()> {
    if channels.len() < 2 {
        return Err(Error::invalid(
            "a random MobileStyleGAN needs at least two channel widths (input + one block)",
        ));
    }
    if channels.contains(&0) || w_dim == 0 {
        return Err(Error::invalid("channel widths and w_dim must be positive"));
    }
    if let Some(c) = channels[..channels.len() - 1].iter().find(|c| *c % 4 != 0) {
        return Err(Error::invalid(format!(
            "channel width {c} is not a multiple of 4 (each block's upsampler needs 4C in)"
        )));
    }
    let mut r = Rand { seed };
    let id = random_id(channels, w_dim, seed);

    let mut mapping = Tensors::new();
    for i in 0..MAPPING_LAYERS {
        r.normal(
            &mut mapping,
            format!("layers.{i}.weight"),
            &[w_dim, w_dim],
            (1.0 / w_dim as f32).sqrt(),
        );
        r.normal(&mut mapping, format!("layers.{i}.bias"), &[w_dim], 0.1);
    }
    let w_avg = w_avg(&mapping, w_dim, seed)?;
    mapping.insert("w_avg".into(), w_avg);

    let mut s = Tensors::new();
    let c0 = channels[0];
    r.normal(&mut s, "input.input".into(), &[1, c0, 4, 4], 1.0);
    affine(
        &mut r,
        &mut s,
        "conv1.conv",
        c0,
        w_dim,
        Some(1.0 / (9.0 * c0 as f32).sqrt()),
    );
    r.normal(&mut s, "conv1.conv.weight".into(), &[c0, c0, 3, 3], 1.0);
    r.normal(&mut s, "conv1.noise.noise".into(), &[1, 1, 4, 4], NOISE_STD);
    constant(&mut s, "conv1.bias", &[c0], 0.0);
    let blocks = channels.len() - 1;
    for i in 0..blocks {
        let (cin, cout, size) = (channels[i], channels[i + 1], 8usize << i);
        let p = format!("layers.{i}");
        affine(&mut r, &mut s, &format!("{p}.up"), cin, w_dim, None);
        for (conv, cin) in [("conv1", cin / 4), ("conv2", cout)] {
            let m = format!("{p}.{conv}");
            affine(
                &mut r,
                &mut s,
                &format!("{m}.conv"),
                cin,
                w_dim,
                Some(1.0 / 3.0),
            );
            r.normal(&mut s, format!("{m}.conv.weight_dw"), &[cin, 1, 3, 3], 1.0);
            r.normal(
                &mut s,
                format!("{m}.conv.weight_pw"),
                &[cout, cin],
                (2.0 / cin as f32).sqrt(),
            );
            r.normal(
                &mut s,
                format!("{m}.noise.noise"),
                &[1, 1, size, size],
                NOISE_STD,
            );
            constant(&mut s, &format!("{m}.bias"), &[cout], 0.0);
        }
    }
    let last = channels[blocks];
    let p = format!("layers.{}.to_img", blocks - 1);
    affine(
        &mut r,
        &mut s,
        &format!("{p}.conv"),
        last,
        w_dim,
        Some(1.0 / (last as f32).sqrt()),
    );
    r.normal(&mut s, format!("{p}.conv.weight"), &[12, last], 1.0);
    constant(&mut s, &format!("{p}.bias"), &[12], 0.0);

    let meta = HashMap::from([
        (GENERATOR_META_KEY.to_string(), id),
        (
            "source".to_string(),
            format!("random weights (seed {seed})"),
        ),
    ]);
    write_safetensors(&dir.join(SYNTHESIS_FILE), &s, meta.clone())?;
    write_safetensors(&dir.join(MAPPING_FILE), &mapping, meta)
}

/// Seeded Gaussian tensors, one independent stream per tensor name (so the
/// values of a tensor do not depend on which tensors were drawn before it).
struct Rand {
    seed: u64,
}

impl Rand {
    fn normal(&mut self, out: &mut Tensors, name: String, shape: &[usize], std: f32) {
        let n: usize = shape.iter().product();
        let data = crate::rng::normals(&mut crate::rng::stream(self.seed, &name), n)
            .into_iter()
            .map(|v| v * std)
            .collect();
        out.insert(
            name,
            NamedTensor {
                data,
                shape: shape.to_vec(),
            },
        );
    }
}

fn constant(out: &mut Tensors, name: &str, shape: &[usize], v: f32) {
    let n: usize = shape.iter().product();
    out.insert(
        name.to_string(),
        NamedTensor {
            data: vec![v; n],
            shape: shape.to_vec(),
        },
    );
}

/// A style affine `s = (W w + 1) * scale`: styles modulate around 1, as
/// StyleGAN initialises them. `W ~ N(0, MODULATION^2 / w_dim)` and w has
/// about unit second moment, so each style moves its channels by about
/// +-MODULATION: visibly, without compounding into huge activations over the
/// ~3 modulated layers per block.
fn affine(
    r: &mut Rand,
    out: &mut Tensors,
    prefix: &str,
    c: usize,
    w_dim: usize,
    scale: Option<f32>,
) {
    let std = MODULATION / (w_dim as f32).sqrt();
    r.normal(out, format!("{prefix}.modulation.weight"), &[c, w_dim], std);
    constant(out, &format!("{prefix}.modulation.bias"), &[c], 1.0);
    if let Some(scale) = scale {
        constant(out, &format!("{prefix}.modulation.scale"), &[1], scale);
    }
}

fn w_avg(mapping: &Tensors, w_dim: usize, seed: u64) -> Result<NamedTensor> {
    let dev = Device::Cpu;
    let layers = (0..MAPPING_LAYERS)
        .map(|i| {
            let w = &mapping[&format!("layers.{i}.weight")];
            let b = &mapping[&format!("layers.{i}.bias")];
            Ok((
                Tensor::from_slice(&w.data, (w_dim, w_dim), &dev)?
                    .t()?
                    .contiguous()?,
                Tensor::from_slice(&b.data, w_dim, &dev)?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let z = seeded_normal(seed ^ 0x5747_4156, W_AVG_SAMPLES, w_dim, &dev)?;
    let avg = map_z(&layers, &z)?.mean(0)?;
    Ok(NamedTensor {
        data: avg.to_vec1()?,
        shape: vec![w_dim],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::mobilestylegan::MobileStyleGan;
    use crate::generator::{Generator, NoiseMode};

    #[test]
    fn random_weights_load_and_render() {
        let dir = tempfile::tempdir().unwrap();
        random_weights(dir.path(), &[32, 16, 8], 12, 3).unwrap();
        let g = MobileStyleGan::load(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(g.id(), random_id(&[32, 16, 8], 12, 3));
        assert_eq!(
            (g.z_dim(), g.w_dim(), g.num_styles(), g.resolution()),
            (12, 12, 8, 32)
        );
        assert_eq!(g.channels(), [32, 16, 8]);
        let z = crate::generator::z_for_seeds(0, 2, 12, &Device::Cpu).unwrap();
        let wp = g.broadcast_w(&g.map(&z).unwrap()).unwrap();
        let img = g.synthesize(&wp, NoiseMode::Fixed).unwrap();
        assert_eq!(img.dims(), [2, 3, 32, 32]);
        let v = img.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(v.iter().all(|x| x.is_finite()));
        let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
        assert!((0.1..3.0).contains(&std), "image scale {std}");
        // Two seeds give two different images.
        let d =
            crate::ops::testing::mean_abs(&(img.get(0).unwrap() - img.get(1).unwrap()).unwrap());
        assert!(d > 1e-3, "images do not depend on w: {d}");
        // Same seed, same tensors.
        let again = tempfile::tempdir().unwrap();
        random_weights(again.path(), &[32, 16, 8], 12, 3).unwrap();
        for f in [MAPPING_FILE, SYNTHESIS_FILE] {
            let a = candle_core::safetensors::load(dir.path().join(f), &Device::Cpu).unwrap();
            let b = candle_core::safetensors::load(again.path().join(f), &Device::Cpu).unwrap();
            assert_eq!(a.len(), b.len());
            for (k, t) in &a {
                let same = t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
                    == b[k].flatten_all().unwrap().to_vec1::<f32>().unwrap();
                assert!(same, "{f}: {k} differs");
            }
        }
        assert!(random_weights(dir.path(), &[30, 8], 12, 3).is_err());
        // Deeper and wider sets keep images near unit scale too.
        for (channels, w_dim) in [
            (&[64usize, 64, 32, 16][..], 32),
            (&[128, 128, 64, 64, 32][..], 64),
        ] {
            let d = tempfile::tempdir().unwrap();
            random_weights(d.path(), channels, w_dim, 1).unwrap();
            let g = MobileStyleGan::load(d.path(), &Device::Cpu).unwrap();
            let z = crate::generator::z_for_seeds(0, 4, w_dim, &Device::Cpu).unwrap();
            let img = g
                .synthesize(
                    &g.broadcast_w(&g.map(&z).unwrap()).unwrap(),
                    NoiseMode::Fixed,
                )
                .unwrap();
            let std: f32 = img
                .sqr()
                .unwrap()
                .mean_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                .sqrt();
            eprintln!("{channels:?}: image rms {std}");
            assert!((0.1..3.0).contains(&std), "{channels:?}: image scale {std}");
        }
    }
}
