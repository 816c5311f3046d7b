//! The edit grammar: turning "add smile" into a target and a neutral phrase.
//!
//! | instruction                         | target phrase                      | neutral phrase          |
//! |-------------------------------------|------------------------------------|-------------------------|
//! | `add X`, `with X`, `give X`         | a photo of a face with X           | a photo of a face       |
//! | `remove X`, `without X`, `no X`     | a photo of a face                  | a photo of a face with X|
//! | `make X`, `make it X`, `more X`     | a photo of a/an X face             | a photo of a face       |
//! | `less X`, `not X`                   | a photo of a face                  | a photo of a/an X face  |
//! | `make it brighter`, `darker`, `warmer background`, `paler`, ... (see [`COMPARATIVES`]) | the attribute's photo phrase | a photo of a face |
//! | anything else                       | the text as written                | a photo of a face       |
//!
//! Comparatives ("brighter", "a cooler background") are matched first:
//! CLIP knows "a bright photo of a face" far better than "a photo of a
//! brighter face", the phrase the `make X` rule would build.
//!
//! Words are matched case-insensitively; the direction applied to a latent
//! is `M(target) - M(neutral)` (M = CLIP text encoder, then the mapper).

pub const NEUTRAL: &str = "a photo of a face";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditPhrases {
    pub target: String,
    pub neutral: String,
}

fn article(word: &str) -> &'static str {
    match word.chars().next().map(|c| c.to_ascii_lowercase()) {
        Some('a' | 'e' | 'i' | 'o' | 'u') => "an",
        _ => "a",
    }
}

fn with(x: &str) -> String {
    format!("{NEUTRAL} with {x}")
}

fn adjective(x: &str) -> String {
    format!("a photo of {} {x} face", article(x))
}

/// Comparative edits of a whole photo: the words (after an optional
/// "make it" / "make the" / "a") and the phrase they target.
pub const COMPARATIVES: [(&[&str], &str); 6] = [
    (
        &["brighter", "lighter", "more light", "more bright"],
        "a bright photo of a face",
    ),
    (
        &["darker", "dimmer", "less light", "less bright"],
        "a dark photo of a face",
    ),
    (
        &["warmer background", "background warmer", "warmer backdrop"],
        "a face in front of a warm background",
    ),
    (
        &[
            "cooler background",
            "colder background",
            "background cooler",
            "cooler backdrop",
        ],
        "a face in front of a cool background",
    ),
    (
        &[
            "more colourful",
            "more colorful",
            "colourful",
            "colorful",
            "more vivid",
        ],
        "a colourful face",
    ),
    (
        &[
            "paler",
            "less colourful",
            "less colorful",
            "pale",
            "more pale",
        ],
        "a pale face",
    ),
];

fn comparative(lower: &str) -> Option<&'static str> {
    let mut rest = lower.trim_end_matches(['.', '!']);
    for prefix in ["make it ", "make the ", "make ", "a ", "give it a "] {
        if let Some(r) = rest.strip_prefix(prefix) {
            rest = r;
            break;
        }
    }
    COMPARATIVES
        .iter()
        .find(|(words, _)| words.contains(&rest))
        .map(|(_, target)| *target)
}

/// Parse an instruction; `None` for empty text.
pub fn parse(instruction: &str) -> Option<EditPhrases> {
    let text = instruction.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return None;
    }
    let lower = text.to_lowercase();
    if let Some(target) = comparative(&lower) {
        return Some(EditPhrases {
            target: target.into(),
            neutral: NEUTRAL.into(),
        });
    }
    let rest = |prefix: &str| -> Option<&str> {
        lower
            .strip_prefix(prefix)
            .filter(|r| r.starts_with(' '))
            .map(|_| text[prefix.len()..].trim())
            .filter(|r| !r.is_empty())
    };
    let phrases = |target: String, neutral: String| Some(EditPhrases { target, neutral });
    for p in ["add", "with", "give"] {
        if let Some(x) = rest(p) {
            return phrases(with(x), NEUTRAL.into());
        }
    }
    for p in ["remove", "without", "no"] {
        if let Some(x) = rest(p) {
            return phrases(NEUTRAL.into(), with(x));
        }
    }
    for p in ["make it", "make", "more"] {
        if let Some(x) = rest(p) {
            return phrases(adjective(x), NEUTRAL.into());
        }
    }
    for p in ["less", "not"] {
        if let Some(x) = rest(p) {
            return phrases(NEUTRAL.into(), adjective(x));
        }
    }
    phrases(text, NEUTRAL.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grammar() {
        let p = parse("Add  smile").unwrap();
        assert_eq!(p.target, "a photo of a face with smile");
        assert_eq!(p.neutral, NEUTRAL);
        let p = parse("remove beard").unwrap();
        assert_eq!(
            (p.target.as_str(), p.neutral.as_str()),
            (NEUTRAL, "a photo of a face with beard")
        );
        // (instruction, the prompt it targets, the prompt it moves away from)
        for (text, target, neutral) in [
            ("make older", "a photo of an older face", NEUTRAL),
            ("more happy", "a photo of a happy face", NEUTRAL),
            ("less angry", NEUTRAL, "a photo of an angry face"),
            ("with glasses", "a photo of a face with glasses", NEUTRAL),
            ("red lipstick", "red lipstick", NEUTRAL),
        ] {
            let p = parse(text).unwrap();
            assert_eq!(p.target, target, "{text}");
            assert_eq!(p.neutral, neutral, "{text}");
        }
        // A verb alone is raw text, not an empty attribute.
        assert_eq!(parse("add").unwrap().target, "add");
        assert_eq!(
            parse("additional light").unwrap().target,
            "additional light"
        );
        assert!(parse("   ").is_none());
    }

    #[test]
    fn comparatives_target_the_attribute_phrases() {
        for (text, target) in [
            ("make it brighter", "a bright photo of a face"),
            ("Make it darker.", "a dark photo of a face"),
            ("warmer background", "a face in front of a warm background"),
            (
                "make the background cooler",
                "a face in front of a cool background",
            ),
            ("more colourful", "a colourful face"),
            ("paler", "a pale face"),
        ] {
            let p = parse(text).unwrap();
            assert_eq!(
                (p.target.as_str(), p.neutral.as_str()),
                (target, NEUTRAL),
                "{text}"
            );
        }
        // Other `make X` edits keep their rule.
        assert_eq!(
            parse("make older").unwrap().target,
            "a photo of an older face"
        );
    }
}
