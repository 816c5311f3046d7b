//! `clip2gan tokenize`: the CLIP token ids of a text, as a JSON array.

use clap::Args;
use clip2gan::clip;

#[derive(Args)]
pub struct TokenizeArgs {
    text: String,
}

pub fn run(a: TokenizeArgs) -> anyhow::Result<()> {
    let t = clip::Tokenizer::shared().encode(&a.text);
    if t.truncated {
        eprintln!("note: the text is longer than 77 tokens and was truncated");
    }
    println!("{}", serde_json::to_string(&t.ids)?);
    Ok(())
}
