//! What users type, made safe to use and to echo: input cleaned of control
//! and invisible characters, the blocklist matched on it, echoes escaped so
//! Discord shows them as typed, and messages cut to Discord's limit.

/// Discord's limit on a message's text.
pub const MAX_CONTENT: usize = 2000;

/// Prompt text as the model should see it: control and invisible
/// (zero-width, bidi, soft hyphen) characters removed, whitespace runs
/// collapsed to one space. Invisible characters would otherwise let a
/// blocked word through (`n\u{200B}ame`) and make echoes misleading.
pub fn clean_input(s: &str) -> String {
    let kept: String = s
        .chars()
        .map(|c| if c.is_whitespace() { ' ' } else { c })
        .filter(|&c| !c.is_control() && !is_invisible(c))
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}'
        | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}' | '\u{E0000}'..='\u{E007F}')
}

/// User text made inert in a Discord message: markdown, mentions
/// (`<@id>`, `@everyone`), masked links and emoji codes are shown as typed.
/// (Every message also carries empty `allowed_mentions`, so nothing pings
/// even if an escape were missed.)
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '*'
                | '_'
                | '~'
                | '`'
                | '|'
                | '<'
                | '>'
                | '['
                | ']'
                | '('
                | ')'
                | '@'
                | ':'
                | '#'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A case-insensitive match of any blocklist entry in the cleaned text.
pub fn blocked<'a>(text: &str, blocklist: &'a [String]) -> Option<&'a str> {
    let lower = text.to_lowercase();
    blocklist
        .iter()
        .map(|w| w.trim())
        .find(|w| !w.is_empty() && lower.contains(&w.to_lowercase()))
}

/// Cut to Discord's limit on a character boundary (an escape is never split
/// from its character, so nothing unescaped can appear at the cut).
pub fn truncate(s: String) -> String {
    if s.chars().count() <= MAX_CONTENT {
        return s;
    }
    let mut out: String = s.chars().take(MAX_CONTENT - 1).collect();
    if out.ends_with('\\') {
        out.pop();
    }
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cleaning_and_escaping() {
        assert_eq!(clean_input("  a\u{200B}b\tc\n\u{0007}d\u{FEFF} "), "ab c d");
        assert_eq!(clean_input("\u{200B}\u{200D} \u{0000}"), "");
        let e = escape("@everyone <@123> **bold** [x](http://y) `c` :smile:");
        assert!(!e.contains("<@"), "{e}");
        assert!(e.contains("\\@everyone") && e.contains("\\*\\*bold") && e.contains("\\[x\\]"));
        assert_eq!(blocked("A Bad Word", &["bad".into()]), Some("bad"));
        assert_eq!(blocked("fine", &["bad".into(), " ".into()]), None);
    }
}
