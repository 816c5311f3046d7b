//! Prompt files: one text prompt per line, UTF-8. Blank lines are skipped;
//! a line that is not valid UTF-8 is an error naming the line, so a file
//! saved in another encoding fails loudly instead of scoring mojibake.

use std::path::Path;

use crate::error::{Error, Result};

pub fn read(path: &Path) -> Result<Vec<String>> {
    let bytes = std::fs::read(path).map_err(|err| Error::Read {
        path: path.to_path_buf(),
        err,
    })?;
    parse(&bytes, &path.display().to_string())
}

/// Parse the bytes of prompt file `name`.
pub fn parse(bytes: &[u8], name: &str) -> Result<Vec<String>> {
    let mut prompts = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line).map_err(|e| {
            Error::invalid(format!(
                "{name}, line {}: not valid UTF-8 (at byte {} of the line); save the file as UTF-8",
                i + 1,
                e.valid_up_to()
            ))
        })?;
        let text = text.trim_start_matches('\u{feff}').trim();
        if !text.is_empty() {
            prompts.push(text.to_string());
        }
    }
    if prompts.is_empty() {
        return Err(Error::invalid(format!(
            "{name} holds no prompts (one per line)"
        )));
    }
    Ok(prompts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_blanks_and_bad_bytes() {
        let p = parse(b"\xef\xbb\xbfa smiling man\r\n\n  a woman  \n", "f").unwrap();
        assert_eq!(p, ["a smiling man", "a woman"]);
        let err = parse(b"ok\nfine\ncaf\xe9\n", "p.txt")
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.txt, line 3: not valid UTF-8"), "{err}");
        assert!(parse(b"\n \n", "e")
            .unwrap_err()
            .to_string()
            .contains("no prompts"));
    }
}
