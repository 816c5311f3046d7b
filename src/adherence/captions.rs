//! Captions of judged faces, for training the toy CLIP: the low and high
//! bins of each attribute in words (with a few synonyms and word orders),
//! the middle bins unsaid. The model only ever sees these strings: no
//! attribute value reaches it.
//!
//! Among them, always, the canonical phrases of [`Attribute::prompt`]
//! ("a dark photo of a face", "a pale face", ...) and their combination
//! "a bright photo of a pale face in front of a cool background".

use rand::seq::IndexedRandom;
use rand::Rng;

use super::judges::{Attribute, Bin};

/// The caption of a face with nothing to say: the edit grammar's neutral
/// phrase.
pub use crate::pipeline::instruction::NEUTRAL;

/// Words for a bin: the canonical one first.
fn words(a: Attribute, bin: Bin) -> &'static [&'static str] {
    match (a, bin) {
        (Attribute::Brightness, Bin::Low) => &["dark", "dim", "shadowy"],
        (Attribute::Brightness, Bin::High) => &["bright", "light", "sunny"],
        (Attribute::Warmth, Bin::Low) => &["cool", "cold", "blue"],
        (Attribute::Warmth, Bin::High) => &["warm", "orange", "golden"],
        (Attribute::Colourfulness, Bin::Low) => &["pale", "colourless", "washed-out"],
        (Attribute::Colourfulness, Bin::High) => &["colourful", "colorful", "vivid"],
        (_, Bin::Middle) => &[],
    }
}

/// Every phrase a caption may use for an attribute's bin (for prompt
/// files and the parser's tests).
pub fn synonyms(a: Attribute, bin: Bin) -> &'static [&'static str] {
    words(a, bin)
}

fn article(word: &str) -> &'static str {
    match word.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

/// A caption for a face in `bins`. With probability `drop` each named
/// attribute is left unsaid (a caption need not say everything); half the
/// captions use only the canonical words and order.
pub fn caption(bins: [Bin; 3], drop: f64, r: &mut impl Rng) -> String {
    let canonical = r.random_bool(0.5);
    caption_with(bins, drop, canonical, r)
}

/// The caption of `bins` in the canonical words and order, saying every
/// low and high bin ("a bright photo of a pale face in front of a cool
/// background").
pub fn canonical(bins: [Bin; 3]) -> String {
    caption_with(bins, 0.0, true, &mut crate::rng::stream(0, "canonical"))
}

fn caption_with(bins: [Bin; 3], drop: f64, canonical: bool, r: &mut impl Rng) -> String {
    let pick = |a: Attribute, r: &mut dyn rand::RngCore| -> Option<&'static str> {
        let w = words(a, bins[a.index()]);
        if w.is_empty() || r.random_bool(drop) {
            return None;
        }
        Some(if canonical {
            w[0]
        } else {
            w.choose(r).copied().unwrap_or(w[0])
        })
    };
    let light = pick(Attribute::Brightness, r);
    let background = pick(Attribute::Warmth, r);
    let colour = pick(Attribute::Colourfulness, r);
    let noun = if canonical {
        "photo"
    } else {
        *["photo", "picture", "image"].choose(r).expect("not empty")
    };
    let backdrop = if canonical {
        "background"
    } else {
        *["background", "backdrop"].choose(r).expect("not empty")
    };
    let face = match colour {
        Some(c) => format!("{} {c} face", article(c)),
        None => "a face".to_string(),
    };
    let behind = background.map(|b| {
        if canonical || r.random_bool(0.5) {
            format!("in front of {} {b} {backdrop}", article(b))
        } else {
            format!("with {} {b} {backdrop}", article(b))
        }
    });
    let shot = |light: &str| format!("{} {light} {noun}", article(light));
    let order = if canonical { 0 } else { r.random_range(0..3) };
    let text = match (light, order) {
        // "a bright photo of a pale face in front of a cool background"
        (Some(l), 0) => format!("{} of {face}", shot(l)),
        // "a pale face in front of a cool background, a bright photo"
        (Some(l), 1) => match &behind {
            Some(b) => return format!("{face} {b}, {}", shot(l)),
            None => format!("{face}, {}", shot(l)),
        },
        // "a bright photo: a pale face in front of a cool background"
        (Some(l), _) => format!("{}, {face}", shot(l)),
        (None, _) if colour.is_none() && behind.is_none() => return NEUTRAL.to_string(),
        (None, _) if !canonical && r.random_bool(0.3) => format!("a {noun} of {face}"),
        (None, _) => face,
    };
    match behind {
        Some(b) => format!("{text} {b}"),
        None => text,
    }
}

/// Typical prompts for this caption grammar (the text side of the
/// modality gap's mean for a CLIP trained on it).
pub fn typical(count: usize, seed: u64) -> Vec<String> {
    let mut r = crate::rng::stream(seed, "typical-captions");
    let mut out = Vec::with_capacity(count);
    for a in Attribute::ALL {
        for b in [Bin::Low, Bin::High] {
            out.push(a.prompt(b).to_string());
        }
    }
    while out.len() < count {
        let bins = [0, 1, 2].map(|_| *Bin::ALL.choose(&mut r).expect("not empty"));
        let c = caption(bins, 0.2, &mut r);
        if !out.contains(&c) {
            out.push(c);
        }
    }
    out.truncate(count);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_captions_say_the_canonical_phrases() {
        let mut seen = std::collections::HashSet::new();
        let mut r = crate::rng::stream(1, "t");
        for _ in 0..4000 {
            for a in Attribute::ALL {
                for b in [Bin::Low, Bin::High] {
                    let mut bins = [Bin::Middle; 3];
                    bins[a.index()] = b;
                    seen.insert(caption(bins, 0.0, &mut r));
                }
            }
            let all = caption([Bin::High, Bin::Low, Bin::Low], 0.0, &mut r);
            seen.insert(all);
        }
        for a in Attribute::ALL {
            for b in [Bin::Low, Bin::High] {
                assert!(seen.contains(a.prompt(b)), "{}", a.prompt(b));
            }
        }
        assert!(seen.contains("a bright photo of a pale face in front of a cool background"));
        assert!(seen.contains(NEUTRAL) || caption([Bin::Middle; 3], 0.0, &mut r) == NEUTRAL);
        // Synonyms and other orders occur too.
        assert!(seen.iter().any(|c| c.contains("dim")));
        assert!(seen.iter().any(|c| c.contains(", a bright")));
    }

    #[test]
    fn middle_bins_say_nothing() {
        let mut r = crate::rng::stream(2, "t");
        for _ in 0..100 {
            assert_eq!(caption([Bin::Middle; 3], 0.0, &mut r), NEUTRAL);
        }
    }
}
