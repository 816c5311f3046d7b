//! NVIDIA's network pickles (stylegan2-ada-pytorch, stylegan3), read as
//! data. A training snapshot is `pickle.dump(dict(G=..., D=..., G_ema=...,
//! augment_pipe=..., training_set_kwargs=...))`, where each network is a
//! `torch_utils.persistence` record: a call of
//! `_reconstruct_persistent_obj(meta)` with `meta = {type: 'class',
//! version, module_src, class_name, state}`. `module_src` is the source of
//! NVIDIA's module, which their loader imports and runs; here it is never
//! looked at beyond its class name. `state` is the module's `__dict__`:
//! `_parameters` and `_buffers` (ordered dicts of tensors), `_modules`
//! (the sub-networks, records themselves) and plain attributes such as
//! `conv_clamp` or `bias_gain`.
//!
//! Walking `G_ema`'s records gives exactly the names of its `state_dict()`
//! (`mapping.fc0.weight`, `synthesis.b4.conv1.noise_const`, ...), which is
//! the NVIDIA naming the rest of the loader knows; the settings no tensor
//! records become the same metadata `tools/stylegan2_to_safetensors.py`
//! writes.

use std::collections::{BTreeMap, HashMap};

use super::pickle::{Graph, Id, Node};
use super::torch::{Res, TorchFile};

const RECONSTRUCT: (&str, &str) = ("torch_utils.persistence", "_reconstruct_persistent_obj");
/// Module nesting followed (a StyleGAN2 generator is 4 deep).
const MAX_DEPTH: usize = 16;

/// One module: its class name (if recorded) and its `__dict__`.
struct Module {
    class: String,
    state: Id,
}

/// The module pickled at `id`: a persistence record, or a plain
/// `torch.nn.Module` pickle (an object whose state has `_parameters`).
fn module(g: &Graph<'_>, id: Id) -> Res<Option<Module>> {
    if let Some((func, args)) = g.call(id) {
        if func == RECONSTRUCT {
            let meta = g
                .seq(args)
                .and_then(|a| a.first().copied())
                .ok_or("a persistence record without its meta dict")?;
            let field = |k: &str| g.lookup(meta, k);
            match field("type").and_then(|t| g.str(t)) {
                Some("class") => {}
                other => {
                    return Err(format!(
                        "a persistence record of type {other:?}, expected 'class'"
                    ))
                }
            }
            let class = field("class_name")
                .and_then(|c| g.str(c))
                .unwrap_or("?")
                .to_string();
            let state = field("state")
                .ok_or_else(|| format!("the persistence record of {class} has no state"))?;
            return Ok(Some(Module { class, state }));
        }
        if let Some(state) = g.call_node(id).and_then(|c| c.state.as_ref()) {
            if g.lookup(*state, "_parameters").is_some() {
                let class = g
                    .seq(args)
                    .and_then(|a| a.first())
                    .and_then(|&c| g.global(c))
                    .map(|(_, n)| n)
                    .unwrap_or(func.1)
                    .to_string();
                return Ok(Some(Module {
                    class,
                    state: *state,
                }));
            }
        }
    }
    Ok(None)
}

/// What a walk found: tensors by state-dict name, classes and states by
/// module path ("" = the root).
struct Walk {
    tensors: BTreeMap<String, Id>,
    classes: BTreeMap<String, String>,
    states: HashMap<String, Id>,
    /// Modules left to visit: shared submodules (memo references) must
    /// not multiply the work beyond the graph's size.
    visits: usize,
}

fn walk(f: &TorchFile<'_>, m: &Module, path: &str, out: &mut Walk, depth: usize) -> Res<()> {
    if depth > MAX_DEPTH {
        return Err(format!(
            "modules nested deeper than {MAX_DEPTH} (a reference cycle?)"
        ));
    }
    out.visits = out
        .visits
        .checked_sub(1)
        .ok_or("the same modules referenced over and over: the file is damaged")?;
    let g = &f.graph;
    out.classes.insert(path.to_string(), m.class.clone());
    out.states.insert(path.to_string(), m.state);
    let join = |k: &str| {
        if path.is_empty() {
            k.to_string()
        } else {
            format!("{path}.{k}")
        }
    };
    for kind in ["_parameters", "_buffers"] {
        let Some(d) = g.lookup(m.state, kind) else {
            continue;
        };
        for &(k, v) in g.items(d).unwrap_or(&[]) {
            // A parameter registered as None has no tensor.
            if let (Some(name), true) = (g.str(k), f.is_tensor(v)) {
                out.tensors.insert(join(name), v);
            }
        }
    }
    if let Some(d) = g.lookup(m.state, "_modules") {
        for &(k, v) in g.items(d).unwrap_or(&[]) {
            let (Some(name), Some(sub)) = (g.str(k), module(g, v)?) else {
                continue;
            };
            walk(f, &sub, &join(name), out, depth + 1)?;
        }
    }
    Ok(())
}

/// `G_ema`'s tensors (state-dict names) and its settings as metadata
/// (`conv_clamp`, `mapping_lr_multiplier`), from a network pickle.
pub(super) fn generator(f: &TorchFile<'_>) -> Res<(BTreeMap<String, Id>, HashMap<String, String>)> {
    let g = &f.graph;
    let keys: Vec<&str> = g
        .items(f.root)
        .unwrap_or(&[])
        .iter()
        .filter_map(|(k, _)| g.str(*k))
        .collect();
    let tf = (0..g.len()).any(|id| {
        g.global(id)
            .is_some_and(|(m, _)| m.starts_with("dnnlib.tflib"))
    });
    if tf {
        return Err("a TensorFlow StyleGAN pickle (dnnlib.tflib networks): it holds TensorFlow variables, not \
                    PyTorch tensors; convert it with tools/stylegan2_to_safetensors.py, which uses NVIDIA's \
                    legacy.py (see README.md, \"StyleGAN2 generators\")"
            .into());
    }
    let Some(ema) = g.lookup(f.root, "G_ema") else {
        return Err(format!(
            "no `G_ema` network: a stylegan2-ada-pytorch / stylegan3 snapshot is a dict with G, D and G_ema; \
             this pickle's top-level keys are [{}]",
            keys.join(", ")
        ));
    };
    let m = module(g, ema)?
        .ok_or("`G_ema` is not a network record (torch_utils.persistence) or a torch module")?;
    let mut w = Walk {
        tensors: BTreeMap::new(),
        classes: BTreeMap::new(),
        states: HashMap::new(),
        visits: g.len() + 16,
    };
    walk(f, &m, "", &mut w, 0)?;

    let is_sg3 = w.classes.values().any(|c| c == "SynthesisInput")
        || w.classes.contains_key("synthesis.input");
    if is_sg3 {
        return Err("a StyleGAN3 (alias-free) generator: its synthesis network (Fourier-feature input, \
                    filtered non-linearities) is a different network from StyleGAN2's and is not supported \
                    yet. StyleGAN2 and StyleGAN2-ADA pickles, including stylegan3's `stylegan2-*.pkl`, load"
            .into());
    }
    if let Some(c) = g.lookup(m.state, "c_dim").and_then(|c| g.int(c)) {
        if c > 0 {
            return Err(format!(
                "a conditional generator (c_dim = {c}): only unconditional StyleGAN2 is supported"
            ));
        }
    }
    let synthesis = w.classes.get("synthesis").map(String::as_str);
    if synthesis.is_some_and(|c| c != "SynthesisNetwork") {
        return Err(format!(
            "G_ema.synthesis is a {}, not StyleGAN2's SynthesisNetwork",
            synthesis.unwrap_or_default()
        ));
    }

    let mut meta = HashMap::new();
    // The attribute of the first module (in name order) under `prefix`
    // that has it: every synthesis layer carries the same conv_clamp.
    let attr = |prefix: &str, key: &str| -> Option<Id> {
        w.states
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .find_map(|&s| g.lookup(s, key))
    };
    if let Some(c) =
        attr("synthesis.b4.conv1", "conv_clamp").or_else(|| attr("synthesis.", "conv_clamp"))
    {
        let v = match g.get(c) {
            Node::None => "none".to_string(),
            _ => g
                .number(c)
                .map(|x| x.to_string())
                .ok_or("synthesis conv_clamp is neither a number nor None")?,
        };
        meta.insert("conv_clamp".to_string(), v);
    }
    // FullyConnectedLayer keeps `bias_gain = lr_multiplier`.
    if let Some(lr) =
        attr("mapping.fc0", "bias_gain").or_else(|| attr("mapping.fc0", "lr_multiplier"))
    {
        let v = g
            .number(lr)
            .ok_or("mapping.fc0's bias_gain is not a number")?;
        meta.insert("mapping_lr_multiplier".to_string(), v.to_string());
    }
    meta.insert("naming".into(), "nvidia".into());
    meta.insert("source".into(), format!("G_ema ({})", m.class));
    Ok((w.tensors, meta))
}
