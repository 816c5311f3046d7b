//! Captions for the modality gap's text side: CLIP embeds text and images
//! in different regions of its sphere, so a mapper fitted on image
//! embeddings sees text embeddings off to one side. Their mean over typical
//! prompts (`mu_text`) against the bank's image mean (`mu_image`) gives the
//! shift `e' = normalise(e - mu_text + mu_image)` applied to text at
//! inference (TOMCap's mean alignment).
//!
//! The prompts must be typical of the generator: [`FACE_CAPTIONS`] (the
//! default) cover the attributes people ask a face generator for, in the
//! words they use; another generator (cats, cars) names a file of its own
//! with `[mapper] captions` ([`Captions::read`]), and the mapper's metadata
//! records which set made its shift ([`Captions::record`]).

use std::path::Path;

use candle_core::Tensor;
use sha2::{Digest, Sha256};

use crate::clip::Clip;
use crate::error::{Error, Result};

/// Fewer captions than this make a noisy mean.
pub const MIN_CAPTIONS: usize = 8;
/// Longer lines are not prompts (CLIP reads 77 tokens).
const MAX_CAPTION_CHARS: usize = 300;
/// Name of the built-in set in the metadata.
pub const BUILT_IN: &str = "built-in face captions";

/// The prompts whose mean text embedding is `mu_text`, and where they came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Captions {
    source: String,
    texts: Vec<String>,
}

impl Captions {
    /// The built-in [`FACE_CAPTIONS`].
    pub fn faces() -> Self {
        Self {
            source: BUILT_IN.into(),
            texts: FACE_CAPTIONS.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// A file of typical prompts, one per line (blank lines and lines
    /// starting with `#` are skipped).
    pub fn read(path: &Path) -> Result<Self> {
        let what_to_do = "mapper.captions names a text file of typical prompts for the generator, \
                          one per line (e.g. \"a tabby cat sleeping\"), at least 8";
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Config(format!("cannot read {}: {e}; {what_to_do}", path.display()))
        })?;
        let mut texts = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.chars().count() > MAX_CAPTION_CHARS {
                return Err(Error::Config(format!(
                    "{} line {}: {} characters, more than a prompt ({MAX_CAPTION_CHARS}); {what_to_do}",
                    path.display(),
                    i + 1,
                    line.chars().count()
                )));
            }
            texts.push(line.to_string());
        }
        if texts.len() < MIN_CAPTIONS {
            return Err(Error::Config(format!(
                "{} has {} caption(s); {what_to_do}",
                path.display(),
                texts.len()
            )));
        }
        Ok(Self {
            source: path.display().to_string(),
            texts,
        })
    }

    pub fn texts(&self) -> &[String] {
        &self.texts
    }

    /// [`BUILT_IN`] or the file's path.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What the mapper file records: the source, the count, a SHA-256 of
    /// the captions (one per line) and the first few, so that a shift can
    /// be traced to the prompts that made it.
    pub fn record(&self) -> serde_json::Value {
        let mut h = Sha256::new();
        for t in &self.texts {
            h.update(t.as_bytes());
            h.update(b"\n");
        }
        let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        serde_json::json!({
            "source": self.source,
            "count": self.texts.len(),
            "sha256": digest,
            "first": self.texts.iter().take(3).collect::<Vec<_>>(),
        })
    }
}

pub const FACE_CAPTIONS: [&str; 64] = [
    "a man with a beard",
    "a woman with long blond hair",
    "a smiling young woman",
    "an old man with grey hair",
    "a bald man with glasses",
    "a girl with curly red hair",
    "a boy with short brown hair",
    "a woman wearing earrings",
    "a man with a moustache",
    "an elderly woman with wrinkles",
    "a young man with a serious face",
    "a woman with dark skin and short hair",
    "a man with blue eyes",
    "a child laughing",
    "a woman with black hair and red lipstick",
    "a man wearing a hat",
    "a teenager with freckles",
    "a portrait of a middle-aged man",
    "a woman with a ponytail",
    "a man with a shaved head",
    "a face with a big smile",
    "a sad looking man",
    "a surprised woman",
    "an angry old man",
    "a woman with bangs",
    "a man with sideburns",
    "a woman with wavy brown hair",
    "a young woman with makeup",
    "a man with a thick beard and long hair",
    "an Asian woman with straight black hair",
    "an African man smiling",
    "a woman with glasses and a smile",
    "a photo of a face",
    "a close-up portrait of a person",
    "a headshot of a woman",
    "a headshot of a man",
    "a man in his thirties",
    "a woman in her sixties",
    "a baby face",
    "a man with a goatee",
    "a woman with pale skin and blue eyes",
    "a man with a tanned face",
    "a woman with short pink hair",
    "a man with dreadlocks",
    "a woman with a headscarf",
    "a man with a double chin",
    "a woman with high cheekbones",
    "a man with bushy eyebrows",
    "a young man with a stubble",
    "a woman with grey hair in a bun",
    "a smiling man with white teeth",
    "a woman looking to the side",
    "a man with a round face",
    "a woman with a narrow face",
    "a man with a scar",
    "a handsome young man",
    "a beautiful woman",
    "a face with rosy cheeks",
    "a man with receding hairline",
    "a girl with braids",
    "a woman with green eyes",
    "a man with a pointy nose",
    "an old woman smiling warmly",
    "a person with a neutral expression",
];

/// Mean of the L2-normalised CLIP text embeddings of `captions`, `[d]`.
pub fn text_mean(clip: &Clip, captions: &Captions) -> Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    // Batches of 16 keep the padded length (and memory) small.
    for chunk in captions.texts.chunks(16) {
        let chunk: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let (e, _) = clip.encode_text(&chunk)?;
        let s = e.sum(0)?;
        sum = Some(match sum {
            Some(acc) => (acc + s)?,
            None => s,
        });
    }
    let sum = sum.ok_or_else(|| Error::invalid("no captions for the text shift"))?;
    Ok((sum / captions.texts.len() as f64)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caption_files_are_read_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cats.txt");
        let lines: Vec<String> = (0..9).map(|i| format!("a photo of cat {i}")).collect();
        std::fs::write(&p, format!("# cats\n\n{}\n", lines.join("\n"))).unwrap();
        let c = Captions::read(&p).unwrap();
        assert_eq!(c.texts(), &lines[..]);
        assert_eq!(c.source(), p.display().to_string());
        let r = c.record();
        assert_eq!(r["count"], 9);
        assert_eq!(r["first"][0], "a photo of cat 0");
        assert_ne!(r["sha256"], Captions::faces().record()["sha256"]);
        assert_eq!(Captions::faces().record()["source"], BUILT_IN);
        assert_eq!(Captions::faces().texts().len(), 64);

        std::fs::write(&p, "a cat\n# only one\n").unwrap();
        let e = Captions::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("has 1 caption(s)") && e.contains("at least 8"),
            "{e}"
        );
        let e = Captions::read(&dir.path().join("none.txt"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("cannot read") && e.contains("mapper.captions"),
            "{e}"
        );
    }
}
