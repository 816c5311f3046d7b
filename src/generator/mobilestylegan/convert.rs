//! Turns MobileStyleGAN's OpenVINO IR into named tensors.
//!
//! The IR is a traced graph: many constants keep their PyTorch names
//! (`m.layers.0.conv1.conv.weight_dw`), others were folded by the exporter
//! (`Mul_106_copy` is the pointwise weight with its equalised-lr gain, the
//! per-layer noise is a pre-scaled `[1,1,H,W]` buffer with a numeric name).
//! Names alone cannot tell which folded constant belongs where, so we walk the
//! graph's edges from each named modulation weight along the data path and
//! check every op type on the way. A graph of any other shape is rejected
//! with the layer where the walk failed.
//!
//! Output naming follows the original module structure, with the `m.` prefix
//! dropped; folded constants get names in the same scheme:
//! `<module>.conv.modulation.{weight,bias,scale}`, `<module>.conv.weight_dw`
//! `[C,1,3,3]`, `<module>.conv.weight_pw` `[Cout,Cin]`, `<module>.conv.weight`
//! (the first, dense 3x3 conv), `<module>.noise.noise` `[1,1,H,W]`,
//! `<module>.bias` `[C]`, `layers.N.up.modulation.{weight,bias}`, `input.input`.

use std::collections::BTreeMap;

use super::ir::{IrGraph, Layer};
use crate::error::Result;

/// A tensor pulled out of the graph: values and shape.
#[derive(Debug, Clone)]
pub struct NamedTensor {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

pub type Tensors = BTreeMap<String, NamedTensor>;

/// Constants the architecture fixes; the walk checks the graph agrees.
pub const LEAKY_SLOPE: f32 = 0.2;
pub const MAPPING_GAIN: f32 = std::f32::consts::SQRT_2;
pub const PIXEL_NORM_EPS: f32 = 1e-8;
const HAAR: f32 = std::f32::consts::FRAC_1_SQRT_2;

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-6 * b.abs().max(1.0)
}

fn put(
    out: &mut Tensors,
    g: &IrGraph,
    name: String,
    l: &Layer,
    shape: Option<Vec<usize>>,
) -> Result<()> {
    let (data, s) = g.const_f32(l)?;
    let shape = shape.unwrap_or(s);
    if shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)) != Some(data.len()) {
        return Err(g.error(format!("constant {} cannot be viewed as {shape:?}", l.name)));
    }
    if out
        .insert(name.clone(), NamedTensor { data, shape })
        .is_some()
    {
        return Err(g.error(format!("two constants map to {name}")));
    }
    Ok(())
}

/// [`put`] the constant input of `node` as it is stored.
fn put_input(out: &mut Tensors, g: &IrGraph, name: String, node: &Layer) -> Result<()> {
    put(out, g, name, g.const_input(node.id)?, None)
}

fn expect_scalar(g: &IrGraph, l: &Layer, want: f32, what: &str) -> Result<()> {
    let v = g.const_scalar(l)?;
    if !close(v, want) {
        return Err(g.error(format!(
            "{what} is {v}, expected {want} (constant {})",
            l.name
        )));
    }
    Ok(())
}

/// Mapping network: pixel norm, then 8 x (linear, leaky ReLU, gain).
pub fn convert_mapping(g: &IrGraph) -> Result<Tensors> {
    let layers = g.layers_sorted();
    let input = layers
        .iter()
        .find(|l| l.kind == "Parameter")
        .ok_or_else(|| g.error("no input"))?;
    // Pixel norm: x * (mean(x^2) + eps)^-0.5, with the eps checked.
    let pow2 = g.next_of_kind(input.id, "Power")?;
    expect_scalar(g, g.const_input(pow2.id)?, 2.0, "pixel-norm power")?;
    let mean = g.next(pow2.id, "ReduceMean")?;
    let add_eps = g.next(mean.id, "Add")?;
    expect_scalar(
        g,
        g.const_input(add_eps.id)?,
        PIXEL_NORM_EPS,
        "pixel-norm eps",
    )?;
    let mut x = g.next_of_kind(input.id, "Multiply")?;
    let mut out = Tensors::new();
    let mut i = 0;
    loop {
        let mm = match g.data_consumers(x.id).as_slice() {
            [l] if l.kind == "MatMul" => *l,
            [l] if l.kind == "Result" => break,
            other => {
                return Err(g.error(format!(
                    "mapping layer {i}: unexpected consumers {:?}",
                    other.iter().map(|l| &l.name).collect::<Vec<_>>()
                )))
            }
        };
        if mm.data.get("transpose_b").map(String::as_str) != Some("true") {
            return Err(g.error("mapping MatMul without transpose_b"));
        }
        put_input(&mut out, g, format!("layers.{i}.weight"), mm)?;
        let add = g.next(mm.id, "Add")?;
        let bias = g.const_input(add.id)?;
        let n = bias.output_shapes[0].iter().product();
        put(&mut out, g, format!("layers.{i}.bias"), bias, Some(vec![n]))?;
        let act = g.next(add.id, "PReLU")?;
        expect_scalar(g, g.const_input(act.id)?, LEAKY_SLOPE, "leaky ReLU slope")?;
        let gain = g.next(act.id, "Multiply")?;
        expect_scalar(g, g.const_input(gain.id)?, MAPPING_GAIN, "activation gain")?;
        x = gain;
        i += 1;
    }
    if i == 0 {
        return Err(g.error("mapping network has no layers"));
    }
    Ok(out)
}

/// Synthesis network: walk from every named modulation weight.
pub fn convert_synthesis(g: &IrGraph) -> Result<Tensors> {
    let mut out = Tensors::new();
    check_haar(g)?;
    for l in g.layers_sorted() {
        if l.kind != "Const" {
            continue;
        }
        if l.name == "m.input.input" {
            put(&mut out, g, "input.input".into(), l, None)?;
            continue;
        }
        let Some(prefix) = l
            .name
            .strip_prefix("m.")
            .and_then(|n| n.strip_suffix(".modulation.weight"))
        else {
            continue;
        };
        walk_modulated(g, &mut out, prefix, l)?;
    }
    if !out.contains_key("input.input") || !out.contains_key("conv1.conv.weight") {
        return Err(g.error("graph lacks the constant input or the first convolution"));
    }
    Ok(out)
}

/// From `<prefix>.modulation.weight` follow the style path into the feature
/// path and collect the constants of that module.
fn walk_modulated(g: &IrGraph, out: &mut Tensors, prefix: &str, w: &Layer) -> Result<()> {
    put(out, g, format!("{prefix}.modulation.weight"), w, None)?;
    let mm = g.next(w.id, "MatMul")?;
    let add = g.next(mm.id, "Add")?;
    let b = g.const_input(add.id)?;
    let n = b.output_shapes[0].iter().product();
    put(
        out,
        g,
        format!("{prefix}.modulation.bias"),
        b,
        Some(vec![n]),
    )?;
    let reshape = g.next(add.id, "Reshape")?;
    let after = g.next(reshape.id, "Multiply")?;
    if prefix.ends_with(".up") {
        // Modulated inverse-DWT upsampler: x * (W s + b), then the Haar IDWT
        // (checked once in `check_haar`). Nothing else to collect.
        g.next(after.id, "VariadicSplit")?;
        return Ok(());
    }
    // conv modules scale the style by a constant (the equalised-lr gain).
    let scale = g.const_input(after.id)?;
    put(
        out,
        g,
        format!("{prefix}.modulation.scale"),
        scale,
        Some(vec![1]),
    )?;
    let modulate = g.next(after.id, "Multiply")?;
    let module = prefix.strip_suffix(".conv").unwrap_or(prefix);
    let conv = match g.data_consumers(modulate.id).as_slice() {
        [l] => *l,
        _ => return Err(g.error(format!("{prefix}: modulated input has several consumers"))),
    };
    let last = match conv.kind.as_str() {
        "GroupConvolution" => {
            let dw = g.const_input(conv.id)?;
            let c = dw.output_shapes[0][0];
            put(
                out,
                g,
                format!("{prefix}.weight_dw"),
                dw,
                Some(vec![c, 1, 3, 3]),
            )?;
            let pw = g.next(conv.id, "Convolution")?;
            let pwc = g.const_input(pw.id)?;
            let s = &pwc.output_shapes[0];
            put(
                out,
                g,
                format!("{prefix}.weight_pw"),
                pwc,
                Some(vec![s[0], s[1]]),
            )?;
            pw
        }
        "Convolution" => {
            let wc = g.const_input(conv.id)?;
            let s = wc.output_shapes[0].clone();
            if s[2..] == [1, 1] {
                // to_img: 1x1 conv, bias, no noise and no activation.
                put(
                    out,
                    g,
                    format!("{prefix}.weight"),
                    wc,
                    Some(vec![s[0], s[1]]),
                )?;
                let bias_add = g.next(conv.id, "Add")?;
                let bias = g.const_input(bias_add.id)?;
                put(out, g, format!("{module}.bias"), bias, Some(vec![s[0]]))?;
                return Ok(());
            }
            put(out, g, format!("{prefix}.weight"), wc, None)?;
            conv
        }
        other => return Err(g.error(format!("{prefix}: unexpected op {other} after modulation"))),
    };
    let noise_add = g.next(last.id, "Add")?;
    put_input(out, g, format!("{module}.noise.noise"), noise_add)?;
    let bias_add = g.next(noise_add.id, "Add")?;
    let bias = g.const_input(bias_add.id)?;
    let c = bias.output_shapes[0][1];
    put(out, g, format!("{module}.bias"), bias, Some(vec![c]))?;
    let act = g.next(bias_add.id, "PReLU")?;
    expect_scalar(g, g.const_input(act.id)?, LEAKY_SLOPE, "leaky ReLU slope")?;
    Ok(())
}

/// Every transposed convolution in the graph must be a Haar synthesis filter
/// (`[a, a]` or `[a, -a]` per channel, a = 1/sqrt 2), so that the model may
/// implement the inverse DWT in closed form.
fn check_haar(g: &IrGraph) -> Result<()> {
    let mut seen = 0;
    for l in g.layers_sorted() {
        if l.kind != "GroupConvolutionBackpropData" {
            continue;
        }
        let (v, _) = g.const_f32(g.const_input(l.id)?)?;
        let ok = v
            .chunks_exact(2)
            .all(|p| close(p[0], HAAR) && close(p[1].abs(), HAAR))
            && (v.chunks_exact(2).all(|p| p[1] > 0.0) || v.chunks_exact(2).all(|p| p[1] < 0.0));
        if !ok {
            return Err(g.error(format!("{} is not a Haar synthesis filter", l.name)));
        }
        seen += 1;
    }
    if seen == 0 {
        return Err(g.error("no inverse-DWT upsampling found"));
    }
    Ok(())
}
