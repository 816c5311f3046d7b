//! The edit grammar: turning "add smile" into a target and a neutral phrase.
//!
//! The phrases name the generator's subject (`generator.subject`, "face" by
//! default): with subject "cat", `add a collar` targets "a photo of a cat
//! with a collar". In the table, S is the subject with its article
//! ("a face", "an owl").
//!
//! | instruction                         | target phrase                      | neutral phrase          |
//! |-------------------------------------|------------------------------------|-------------------------|
//! | `add X`, `with X`, `give X`         | a photo of S with X                | a photo of S            |
//! | `remove X`, `without X`, `no X`     | a photo of S                       | a photo of S with X     |
//! | `make X`, `make it X`, `more X`     | a photo of a/an X subject          | a photo of S            |
//! | `less X`, `not X`                   | a photo of S                       | a photo of a/an X subject |
//! | `make it brighter`, `darker`, `warmer background`, `paler`, ... (see [`COMPARATIVES`]) | the attribute's photo phrase | a photo of S |
//! | anything else                       | the text as written                | a photo of S            |
//!
//! Comparatives ("brighter", "a cooler background") are matched first:
//! CLIP knows "a bright photo of a face" far better than "a photo of a
//! brighter face", the phrase the `make X` rule would build.
//!
//! Words are matched case-insensitively; the direction applied to a latent
//! is `M(target) - M(neutral)` (M = CLIP text encoder, then the mapper).

/// The neutral phrase of the default subject, "face".
pub const NEUTRAL: &str = "a photo of a face";

/// The default `generator.subject`.
pub const FACE: &str = "face";

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

/// "a face", "an owl".
fn with_article(noun: &str) -> String {
    format!("{} {noun}", article(noun))
}

/// English plural by the regular rules ("cats", "buses", "butterflies").
pub fn plural(noun: &str) -> String {
    let n = noun;
    let consonant_y = n.ends_with('y') && !n[..n.len() - 1].ends_with(['a', 'e', 'i', 'o', 'u']);
    if consonant_y {
        format!("{}ies", &n[..n.len() - 1])
    } else if n.ends_with(['s', 'x', 'z']) || n.ends_with("ch") || n.ends_with("sh") {
        format!("{n}es")
    } else {
        format!("{n}s")
    }
}

/// "a photo of a face": the neutral phrase for `subject`.
pub fn neutral(subject: &str) -> String {
    format!("a photo of {}", with_article(subject))
}

fn with(x: &str, subject: &str) -> String {
    format!("{} with {x}", neutral(subject))
}

fn adjective(x: &str, subject: &str) -> String {
    format!("a photo of {} {x} {subject}", article(x))
}

/// Comparative edits of a whole photo: the words (after an optional
/// "make it" / "make the" / "a") and the phrase they target, where `{a}`
/// stands for the subject with its article and `{n}` for the subject.
pub const COMPARATIVES: [(&[&str], &str); 6] = [
    (
        &["brighter", "lighter", "more light", "more bright"],
        "a bright photo of {a}",
    ),
    (
        &["darker", "dimmer", "less light", "less bright"],
        "a dark photo of {a}",
    ),
    (
        &["warmer background", "background warmer", "warmer backdrop"],
        "{a} in front of a warm background",
    ),
    (
        &[
            "cooler background",
            "colder background",
            "background cooler",
            "cooler backdrop",
        ],
        "{a} in front of a cool background",
    ),
    (
        &[
            "more colourful",
            "more colorful",
            "colourful",
            "colorful",
            "more vivid",
        ],
        "a colourful {n}",
    ),
    (
        &[
            "paler",
            "less colourful",
            "less colorful",
            "pale",
            "more pale",
        ],
        "a pale {n}",
    ),
];

fn comparative(lower: &str, subject: &str) -> Option<String> {
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
        .map(|(_, target)| {
            target
                .replace("{a}", &with_article(subject))
                .replace("{n}", subject)
        })
}

/// Parse an instruction about a face; `None` for empty text.
pub fn parse(instruction: &str) -> Option<EditPhrases> {
    parse_about(instruction, FACE)
}

/// Parse an instruction about the generator's `subject` ("face", "cat",
/// "car"); `None` for empty text.
pub fn parse_about(instruction: &str, subject: &str) -> Option<EditPhrases> {
    let text = instruction.split_whitespace().collect::<Vec<_>>().join(" ");
    if text.is_empty() {
        return None;
    }
    let plain = neutral(subject);
    let lower = text.to_lowercase();
    if let Some(target) = comparative(&lower, subject) {
        return Some(EditPhrases {
            target,
            neutral: plain,
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
            return phrases(with(x, subject), plain);
        }
    }
    for p in ["remove", "without", "no"] {
        if let Some(x) = rest(p) {
            return phrases(plain, with(x, subject));
        }
    }
    for p in ["make it", "make", "more"] {
        if let Some(x) = rest(p) {
            return phrases(adjective(x, subject), plain);
        }
    }
    for p in ["less", "not"] {
        if let Some(x) = rest(p) {
            return phrases(plain, adjective(x, subject));
        }
    }
    phrases(text, plain)
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

    #[test]
    fn phrases_name_the_subject() {
        assert_eq!(neutral(FACE), NEUTRAL);
        for (text, target, neutral) in [
            (
                "add a collar",
                "a photo of a cat with a collar",
                "a photo of a cat",
            ),
            (
                "remove the collar",
                "a photo of a cat",
                "a photo of a cat with the collar",
            ),
            (
                "make fluffier",
                "a photo of a fluffier cat",
                "a photo of a cat",
            ),
            ("less angry", "a photo of a cat", "a photo of an angry cat"),
            (
                "make it brighter",
                "a bright photo of a cat",
                "a photo of a cat",
            ),
            (
                "warmer background",
                "a cat in front of a warm background",
                "a photo of a cat",
            ),
            ("paler", "a pale cat", "a photo of a cat"),
            ("sleeping", "sleeping", "a photo of a cat"),
        ] {
            let p = parse_about(text, "cat").unwrap();
            assert_eq!(
                (p.target.as_str(), p.neutral.as_str()),
                (target, neutral),
                "{text}"
            );
        }
        let p = parse_about("more red", "owl").unwrap();
        assert_eq!(
            (p.target.as_str(), p.neutral.as_str()),
            ("a photo of a red owl", "a photo of an owl")
        );
        assert!(!parse_about("add wheels", "car")
            .unwrap()
            .target
            .contains("face"));
    }
}
