//! `clip2gan fetch`: download the MobileStyleGAN weights and convert them
//! once (or convert a wheel already on disk).

use std::path::PathBuf;

use clap::Args;
use clip2gan::config::Config;
use clip2gan::generator::mobilestylegan::fetch as f;

#[derive(Args)]
pub struct FetchArgs {
    /// Convert this already-downloaded random-face wheel instead of running pip.
    #[arg(long)]
    wheel: Option<PathBuf>,
    /// Convert again even if converted weights exist.
    #[arg(long)]
    force: bool,
}

pub fn run(cfg: &Config, a: FetchArgs) -> anyhow::Result<()> {
    let dir = cfg.generator_dir();
    match a.wheel {
        Some(wheel) => f::convert_wheel(&wheel, &dir)?,
        None if a.force => {
            let wheel = f::download_wheel(&cfg.models_dir)?;
            f::convert_wheel(&wheel, &dir)?
        }
        None => {
            f::ensure(&cfg.models_dir, &dir)?;
            eprintln!("weights ready in {}", dir.display());
        }
    }
    Ok(())
}
