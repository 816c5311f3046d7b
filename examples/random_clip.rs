//! Write a randomly initialised CLIP checkpoint in transformers layout, for
//! measuring speed and the mapper pipeline where no real CLIP weights can be
//! downloaded. The weights depend only on the seed.
//!
//!     cargo run --release --example random_clip -- DIR [vit-b-32|tiny] [SEED]
//!
//! `vit-b-32` (the default) has the shapes of openai/clip-vit-base-patch32
//! (transformers' CLIPConfig defaults); `tiny` is the test configuration.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = std::path::PathBuf::from(
        args.next()
            .ok_or("usage: random_clip DIR [vit-b-32|tiny] [SEED]")?,
    );
    let config = match args.next().as_deref().unwrap_or("vit-b-32") {
        "vit-b-32" => "{}",
        "tiny" => clip2gan::clip::config::TINY_CONFIG_JSON,
        other => {
            return Err(format!("unknown configuration {other:?}: use vit-b-32 or tiny").into())
        }
    };
    let seed = args.next().map(|s| s.parse()).transpose()?.unwrap_or(0);
    std::fs::create_dir_all(&dir)?;
    clip2gan::clip::save_seeded_random_checkpoint(&dir, config, seed)?;
    println!("{}", dir.display());
    Ok(())
}
