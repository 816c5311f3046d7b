//! From the bytes of a PyTorch file to the generator's tensors: which
//! container it is ([`super::torch`]), whether it is a state dict (a
//! rosinality `.pt`, `{"g_ema": ..., "latent_avg": ...}` or the state dict
//! alone) or an NVIDIA network pickle ([`super::nvidia`]), and which of its
//! tensors make the generator.

use std::collections::{BTreeMap, HashMap};

use candle_core::Tensor;

use super::naming::{detect, unknown_layout};
use super::pickle::Id;
use super::torch::TorchFile;
use super::CONVERT_HINT;
use crate::error::{Error, Result};

/// Tensors and metadata of a `.pt` / `.pth` / `.pkl` file's generator.
pub(super) fn read_torch(
    file: &str,
    bytes: &[u8],
) -> Result<(HashMap<String, Tensor>, HashMap<String, String>)> {
    let bad = |detail: String| Error::BadCheckpoint {
        file: file.to_string(),
        detail,
    };
    let unreadable = |e: String| bad(format!("cannot read the PyTorch checkpoint: {e}"));
    let mut tf = if bytes.starts_with(b"PK") {
        TorchFile::zip(bytes)
    } else if bytes.first() == Some(&0x80) {
        TorchFile::pickle(bytes)
    } else if bytes.get(257..262) == Some(b"ustar") {
        return Err(bad(format!(
            "a tar archive: the serialisation of PyTorch before 0.4, which clip2gan does not read; {CONVERT_HINT}"
        )));
    } else {
        return Err(unreadable(
            "neither a zip archive (torch.save since PyTorch 1.6) nor a pickle (older torch.save, NVIDIA's .pkl): \
             the file is damaged or not a PyTorch file"
                .into(),
        ));
    }
    .map_err(unreadable)?;

    let g = &tf.graph;
    let network_pickle = g.lookup(tf.root, "G_ema").is_some()
        || (0..g.len()).any(|id| g.global(id).is_some_and(|(m, _)| m.starts_with("dnnlib.")));
    let (chosen, metadata) = if network_pickle {
        super::nvidia::generator(&tf).map_err(bad)?
    } else {
        (state_dict(&tf).map_err(bad)?, HashMap::new())
    };
    let mut tensors = HashMap::new();
    for (name, id) in chosen {
        let t = tf
            .tensor(id)
            .map_err(|e| unreadable(format!("tensor `{name}`: {e}")))?;
        tensors.insert(name, t);
    }
    Ok((tensors, metadata))
}

/// The generator's tensors of a pickled state dict: the whole file if its
/// names are a generator's, else the entries under `g_ema` (rosinality) or
/// `G_ema`, plus rosinality's `latent_avg` kept next to them.
fn state_dict(tf: &TorchFile<'_>) -> std::result::Result<BTreeMap<String, Id>, String> {
    let all = tf.tensor_names(tf.root)?;
    if detect(|n| all.contains_key(n)).is_some() {
        return Ok(all);
    }
    for prefix in ["g_ema.", "G_ema."] {
        let mut sub: BTreeMap<String, Id> = all
            .iter()
            .filter_map(|(k, &v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v)))
            .collect();
        if detect(|n| sub.contains_key(n)).is_some() {
            if let Some(&avg) = all.get("latent_avg") {
                sub.entry("latent_avg".into()).or_insert(avg);
            }
            return Ok(sub);
        }
    }
    Err(unknown_layout(
        all.keys().map(String::as_str),
        "the file has no `g_ema` entry and no generator tensors at its top level",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(bytes: &[u8]) -> String {
        match read_torch("x.pkl", bytes) {
            Ok(_) => panic!("must fail"),
            Err(e) => e.to_string(),
        }
    }

    /// Network pickles that are not a PyTorch StyleGAN2 say what they are.
    #[test]
    fn other_network_pickles_are_named() {
        // {"G": dnnlib.tflib.network.Network()}: NVIDIA's TensorFlow pickles.
        let tf = b"\x80\x02}(X\x01\x00\x00\x00Gcdnnlib.tflib.network\nNetwork\n)\x81u.";
        let e = err(tf);
        assert!(e.contains("x.pkl: a TensorFlow StyleGAN pickle"), "{e}");
        assert!(e.contains("tools/stylegan2_to_safetensors.py"), "{e}");
        // {"G": EasyDict()}: NVIDIA's, but without G_ema.
        let no_ema = b"\x80\x02}(X\x01\x00\x00\x00Gcdnnlib.util\nEasyDict\n)\x81u.";
        let e = err(no_ema);
        assert!(
            e.contains("no `G_ema` network") && e.contains("top-level keys are [G]"),
            "{e}"
        );
        // A pickle of nothing StyleGAN-like.
        let e = err(b"\x80\x02}(X\x01\x00\x00\x00aK\x01u.");
        assert!(
            e.contains("no `g_ema` entry") && e.contains("found 0 tensor(s)"),
            "{e}"
        );
    }
}
