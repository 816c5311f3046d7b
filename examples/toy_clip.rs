//! Train the toy CLIP (see `clip2gan::adherence::toy`): faces of the
//! configured generator, captioned by the pixel judges, a small CLIP
//! trained contrastively on them from seeded random weights.
//!
//!     cargo run --release --example toy_clip -- OUT_DIR [--small] [--seed N]
//!
//! Measured on a busy 2-core CPU with `RAYON_NUM_THREADS=1`: 27.5 min
//! (`--small`, for the tests: 5.6 min; 4.2 min on a quiet one); see the README's "Text that means
//! something" for why one thread, and what it makes.
//! Then `CLIP2GAN_CLIP__MODEL=OUT_DIR clip2gan imagine "a dark photo of a
//! face"` uses it like any checkpoint.

use clip2gan::adherence::toy::{self, ToyPlan};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut out = None;
    let mut small = false;
    let mut seed = 0u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--small" => small = true,
            "--seed" => seed = args.next().ok_or("--seed needs a number")?.parse()?,
            _ if out.is_none() && !a.starts_with('-') => out = Some(std::path::PathBuf::from(a)),
            other => {
                return Err(format!(
                    "unknown argument {other:?}; usage: toy_clip OUT_DIR [--small] [--seed N]"
                )
                .into())
            }
        }
    }
    let out = out.ok_or("usage: toy_clip OUT_DIR [--small] [--seed N]")?;
    clip2gan::runtime::serial_elementwise();
    clip2gan::runtime::tune_allocator();
    let cfg = clip2gan::config::Config::load(None)?;
    let dev = clip2gan::device::select(&cfg.device)?;
    let g = cfg.open_generator(&dev, true)?;
    let plan = if small {
        ToyPlan::small()
    } else {
        ToyPlan::full()
    };
    let (report, _) = toy::build(
        g.as_ref(),
        cfg.generator.truncation,
        cfg.generator.max_batch,
        &out,
        &plan,
        seed,
        &mut |line| eprintln!("{line}"),
    )?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    eprintln!("toy CLIP written to {}", out.display());
    Ok(())
}
