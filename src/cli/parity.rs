//! `clip2gan parity`: the generator on the configured device against the
//! reference fixtures; prints JSON and fails outside the tolerances.

use std::path::PathBuf;

use clap::Args;
use clip2gan::config::Config;
use clip2gan::device;
use clip2gan::error::Error;

#[derive(Args)]
pub struct ParityArgs {
    #[arg(long, default_value = "tests/fixtures/mobilestylegan")]
    fixtures: PathBuf,
}

pub fn run(cfg: &Config, a: ParityArgs) -> anyhow::Result<()> {
    let dev = device::select(&cfg.device)?;
    let g = cfg.open_generator(&dev, true)?;
    let r = clip2gan::generator::parity::generator_vs_fixtures(g.as_ref(), &a.fixtures)?;
    println!("{}", serde_json::to_string(&r)?);
    if !r.pass {
        return Err(Error::invalid("the generator is outside the parity tolerances").into());
    }
    Ok(())
}
