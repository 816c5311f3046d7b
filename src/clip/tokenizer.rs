//! CLIP's tokenizer, fully offline: the text clean-up of the original
//! (`ftfy.fix_text`, HTML unescaping, whitespace collapsing, lowercasing),
//! its word-splitting regex with the two special tokens, and byte-level BPE
//! over OpenAI's 49,152 merges (the vocabulary ships inside the
//! `instant-clip-tokenizer` crate, which runs the BPE on each word).
//!
//! `ftfy` is a large heuristic library; we implement the steps of its
//! default `fix_text` that change real prompts (see [`fix_text`]). Its
//! mojibake repair ("cafÃ©" -> "café") is not implemented: such text is
//! tokenized as written. tests/clip_tokenizer.rs checks parity with the
//! reference on a committed corpus.

use std::sync::OnceLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

pub const START_OF_TEXT: u32 = 49406;
pub const END_OF_TEXT: u32 = 49407;
/// CLIP's context length: start token + 75 text tokens + end token.
pub const CONTEXT_LENGTH: usize = 77;

/// Token ids for one text, as the text encoder sees them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Start token, text tokens, end token; at most the context length.
    pub ids: Vec<u32>,
    /// The text had more tokens than fit and was cut (the end token kept).
    pub truncated: bool,
}

pub struct Tokenizer {
    bpe: instant_clip_tokenizer::Tokenizer,
    words: Regex,
    context_length: usize,
}

impl Tokenizer {
    /// Building the merge table takes ~50 ms; share one tokenizer.
    pub fn new(context_length: usize) -> Self {
        // The original pattern, applied to lowercased text.
        let words = Regex::new(
            r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
        )
        .expect("valid regex");
        Self {
            bpe: instant_clip_tokenizer::Tokenizer::new(),
            words,
            context_length: context_length.clamp(2, CONTEXT_LENGTH),
        }
    }

    /// A process-wide tokenizer with CLIP's context length of 77.
    pub fn shared() -> &'static Tokenizer {
        static T: OnceLock<Tokenizer> = OnceLock::new();
        T.get_or_init(|| Tokenizer::new(CONTEXT_LENGTH))
    }

    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// BPE ids of `text` after clean-up, without start/end tokens or truncation.
    pub fn bpe(&self, text: &str) -> Vec<u32> {
        let text = clean(text).to_lowercase();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for m in self.words.find_iter(&text) {
            match m.as_str() {
                "<|startoftext|>" => out.push(START_OF_TEXT),
                "<|endoftext|>" => out.push(END_OF_TEXT),
                word => {
                    // Each match is one word of the original split, which the
                    // crate's own (equivalent) split leaves whole.
                    buf.clear();
                    self.bpe.encode(word, &mut buf);
                    out.extend(buf.iter().map(|t| t.to_u16() as u32));
                }
            }
        }
        out
    }

    /// Start token, BPE ids, end token; cut to the context length keeping the
    /// end token last (as the original `clip.tokenize(truncate=True)` does).
    pub fn encode(&self, text: &str) -> Tokens {
        let bpe = self.bpe(text);
        let room = self.context_length - 2;
        let truncated = bpe.len() > room;
        let mut ids = Vec::with_capacity(bpe.len().min(room) + 2);
        ids.push(START_OF_TEXT);
        ids.extend(bpe.into_iter().take(room));
        ids.push(END_OF_TEXT);
        Tokens { ids, truncated }
    }
}

/// The original's `whitespace_clean(basic_clean(text))`.
pub fn clean(text: &str) -> String {
    let fixed = fix_text(text);
    let once = htmlize::unescape(fixed).into_owned();
    let twice = htmlize::unescape(once).into_owned();
    collapse_whitespace(twice.trim_matches(is_py_space))
}

/// Python's `str.isspace`, which `\s` and `strip()` follow: Unicode
/// White_Space plus the four information separators U+001C..U+001F.
fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_space = false;
    for c in s.chars() {
        if is_py_space(c) {
            if !in_space {
                out.push(' ');
            }
            in_space = true;
        } else {
            out.push(c);
            in_space = false;
        }
    }
    out.trim_matches(' ').to_string()
}

/// The steps of ftfy 6's default `fix_text` that matter for prompts, in its
/// order: HTML entities (only when the text has no `<`, i.e. is not markup),
/// terminal escapes, C1 controls read as Windows-1252, Latin ligatures, full-
/// and half-width forms, curly quotes, line breaks, control characters, NFC.
/// Each step sees the output of the one before, as in ftfy.
pub fn fix_text(text: &str) -> String {
    static ENTITY: OnceLock<Regex> = OnceLock::new();
    static ESCAPES: OnceLock<Regex> = OnceLock::new();
    let mut text = text.to_string();
    if !text.contains('<') {
        let entity =
            ENTITY.get_or_init(|| Regex::new("&#?[0-9A-Za-z]{1,24};").expect("valid regex"));
        text = entity
            .replace_all(&text, |m: &regex::Captures| {
                htmlize::unescape(m[0].to_string()).into_owned()
            })
            .into_owned();
    }
    let escapes =
        ESCAPES.get_or_init(|| Regex::new("\x1b\\[((?:\\d|;)*)([a-zA-Z])").expect("valid regex"));
    let text = escapes.replace_all(&text, "");
    let step = |s: &str, f: &dyn Fn(char, &mut String)| {
        let mut out = String::with_capacity(s.len());
        s.chars().for_each(|c| f(c, &mut out));
        out
    };
    let text = step(&text, &|c, out| match c {
        '\u{80}'..='\u{9f}' => out.extend(cp1252(c as u8).or(Some(c))),
        c => out.push(c),
    });
    let text = step(&text, &|c, out| match ligature(c) {
        Some(s) => out.push_str(s),
        None => out.push(c),
    });
    let text = step(&text, &|c, out| match c {
        '\u{3000}' => out.push(' '),
        '\u{ff01}'..='\u{ff5e}' | '\u{ff65}'..='\u{ffdc}' => out.extend(c.to_string().nfkc()),
        c => out.push(c),
    });
    let text = step(&text, &|c, out| match c {
        '\u{2018}'..='\u{201b}' | '\u{2bc}' => out.push('\''),
        '\u{201c}'..='\u{201f}' => out.push('"'),
        c => out.push(c),
    });
    let text = text.replace("\r\n", "\n");
    let text = step(&text, &|c, out| match c {
        '\r' | '\u{2028}' | '\u{2029}' | '\u{85}' => out.push('\n'),
        c if is_control(c) => {}
        c => out.push(c),
    });
    text.nfc().collect()
}

/// ftfy's table of Latin ligatures and digraphs.
fn ligature(c: char) -> Option<&'static str> {
    Some(match c {
        'Ĳ' => "IJ",
        'ĳ' => "ij",
        'ŉ' => "ʼn",
        'Ǳ' => "DZ",
        'ǲ' => "Dz",
        'ǳ' => "dz",
        'Ǆ' => "DŽ",
        'ǅ' => "Dž",
        'ǆ' => "dž",
        'Ǉ' => "LJ",
        'ǈ' => "Lj",
        'ǉ' => "lj",
        'Ǌ' => "NJ",
        'ǋ' => "Nj",
        'ǌ' => "nj",
        'ﬀ' => "ff",
        'ﬁ' => "fi",
        'ﬂ' => "fl",
        'ﬃ' => "ffi",
        'ﬄ' => "ffl",
        'ﬅ' => "ſt",
        'ﬆ' => "st",
        _ => return None,
    })
}

/// ftfy's `remove_control_chars` set (tab, newline, form feed and carriage
/// return are kept; they are whitespace).
fn is_control(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{8}' | '\u{b}' | '\u{e}'..='\u{1f}' | '\u{7f}'
        | '\u{206a}'..='\u{206f}' | '\u{feff}' | '\u{fff9}'..='\u{fffc}'
        | '\u{e0000}'..='\u{e007f}')
        && !matches!(c, '\u{1c}'..='\u{1f}')
}

fn cp1252(b: u8) -> Option<char> {
    let c = match b {
        0x80 => '€',
        0x82 => '‚',
        0x83 => 'ƒ',
        0x84 => '„',
        0x85 => '…',
        0x86 => '†',
        0x87 => '‡',
        0x88 => 'ˆ',
        0x89 => '‰',
        0x8a => 'Š',
        0x8b => '‹',
        0x8c => 'Œ',
        0x8e => 'Ž',
        0x91 => '‘',
        0x92 => '’',
        0x93 => '“',
        0x94 => '”',
        0x95 => '•',
        0x96 => '–',
        0x97 => '—',
        0x98 => '˜',
        0x99 => '™',
        0x9a => 'š',
        0x9b => '›',
        0x9c => 'œ',
        0x9e => 'ž',
        0x9f => 'Ÿ',
        _ => return None,
    };
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids_and_truncation() {
        let t = Tokenizer::shared();
        assert_eq!(
            t.encode("a photo of a cat").ids,
            vec![49406, 320, 1125, 539, 320, 2368, 49407]
        );
        assert_eq!(t.encode("").ids, vec![START_OF_TEXT, END_OF_TEXT]);
        let long = "cat ".repeat(100);
        let e = t.encode(&long);
        assert!(e.truncated);
        assert_eq!(e.ids.len(), 77);
        assert_eq!(*e.ids.last().unwrap(), END_OF_TEXT);
    }

    #[test]
    fn cleanup_follows_the_original() {
        assert_eq!(clean("  Tom &amp;amp; Jerry\t\n "), "Tom & Jerry");
        assert_eq!(clean("\u{201c}ﬁne\u{201d}"), "\"fine\"");
        assert_eq!(clean("ＡＢＣ"), "ABC");
        assert_eq!(clean("e\u{301}"), "é");
    }
}
