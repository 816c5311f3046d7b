//! Face captions for the modality gap's text side: CLIP embeds text and
//! images in different regions of its sphere, so a mapper fitted on image
//! embeddings sees text embeddings off to one side. Their mean over typical
//! prompts (`mu_text`) against the bank's image mean (`mu_image`) gives the
//! shift `e' = normalise(e - mu_text + mu_image)` applied to text at
//! inference (TOMCap's mean alignment). The captions cover the attributes
//! people ask a face generator for, in the words they use.

use candle_core::Tensor;

use crate::clip::Clip;
use crate::error::Result;

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

/// Mean of the L2-normalised CLIP text embeddings of [`FACE_CAPTIONS`], `[d]`.
pub fn text_mean(clip: &Clip) -> Result<Tensor> {
    let mut sum: Option<Tensor> = None;
    // Batches of 16 keep the padded length (and memory) small.
    for chunk in FACE_CAPTIONS.chunks(16) {
        let (e, _) = clip.encode_text(chunk)?;
        let s = e.sum(0)?;
        sum = Some(match sum {
            Some(acc) => (acc + s)?,
            None => s,
        });
    }
    Ok((sum.expect("captions are not empty") / FACE_CAPTIONS.len() as f64)?)
}
