//! `clip2gan clip-score`: the CLIP score (100 x cosine) of each image
//! against a text, one JSON line per image.

use std::path::PathBuf;

use clap::Args;
use clip2gan::config::Config;
use clip2gan::{clip, device};

#[derive(Args)]
pub struct ClipScoreArgs {
    #[arg(long)]
    text: String,
    #[arg(required = true)]
    images: Vec<PathBuf>,
}

pub fn run(cfg: &Config, a: ClipScoreArgs) -> anyhow::Result<()> {
    let (text, images) = (a.text.as_str(), a.images.as_slice());
    // Read every image first: a bad file fails before the model loads.
    let decoded = images
        .iter()
        .map(|p| clip::open_image(p))
        .collect::<Result<Vec<_>, _>>()?;
    let dev = device::select(&cfg.device)?;
    let model = clip::Clip::load(&cfg.clip_files()?, &dev)?;
    let (t, tokens) = model.encode_text(&[text])?;
    if tokens[0].truncated {
        eprintln!("note: the text is longer than 77 tokens and was truncated");
    }
    let e = model.encode_images(&decoded)?;
    let cos = e.matmul(&t.t()?)?.flatten_all()?.to_vec1::<f32>()?;
    for (path, c) in images.iter().zip(cos) {
        let line =
            serde_json::json!({ "image": path.display().to_string(), "clip_score": 100.0 * c });
        println!("{line}");
    }
    Ok(())
}
