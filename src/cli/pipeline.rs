//! What `clip2gan imagine` and `clip2gan edit` share: the pipeline loaded
//! from the configuration (building a first mapper when there is none yet),
//! and the images they write, each with its W+ latent beside it.

use clip2gan::config::Config;
use clip2gan::generator::latent;
use clip2gan::pipeline::{Pipeline, Rendered};
use clip2gan::{clip, device, fsutil, image_io};

/// [`load`], once the output side and path are known to be good (a bad
/// flag should not cost a model load), and the output side: `size`, or the
/// generator's own resolution. A size is checked against the resolution
/// when the configuration knows it, and against the loaded generator's in
/// any case (a StyleGAN2 checkpoint may be smaller than the size asked for).
pub fn load_for(
    cfg: &Config,
    size: Option<usize>,
    output: &std::path::Path,
) -> anyhow::Result<(Pipeline, usize)> {
    if let (Some(size), Some(res)) = (size, cfg.generator.known_resolution()) {
        image_io::check_size(size, res)?;
    }
    fsutil::check_writable(output)?;
    let p = load(cfg)?;
    let res = p.generator.resolution();
    let size = size.unwrap_or(res);
    image_io::check_size(size, res)?;
    Ok((p, size))
}

fn load(cfg: &Config) -> anyhow::Result<Pipeline> {
    let dev = device::select(&cfg.device)?;
    let setup = cfg.pipeline_setup();
    let first_use = cfg.first_use()?.filter(|_| !setup.mapper_path().exists());
    let (p, warnings) = match first_use {
        None => Pipeline::load(&setup, &dev)?,
        Some(plan) => {
            let clip = clip::Clip::load(&setup.clip_files()?, &dev)?;
            let g = setup.open_generator(&dev, true)?;
            eprintln!(
                "No mapper at {} yet: building one from {} generated {} (once; later runs reuse it). \
                 `clip2gan train --mode fit --pairs {}` or the bot's idle time make it better.",
                plan.out.display(),
                plan.first_pairs,
                clip2gan::pipeline::instruction::plural(&cfg.generator.subject),
                plan.pairs
            );
            let stop = clip2gan::train::interrupt::install();
            clip2gan::train::warmup::build_first(&plan, &clip, g.as_ref(), stop, false)?;
            Pipeline::assemble(&setup, clip, g)?
        }
    };
    for w in warnings {
        eprintln!("warning: {w}");
    }
    Ok(p)
}

/// Write images (numbered or as a grid) and each image's W+ beside it.
pub fn write_results(
    out: &std::path::Path,
    grid: bool,
    size: usize,
    r: &Rendered,
) -> anyhow::Result<()> {
    let images = image_io::to_rgb8(&image_io::resize_area(&r.images, size)?)?;
    if grid {
        image_io::save_png(out, &image_io::grid(&images))?;
        println!("{}", out.display());
        latent::save_wplus(&out.with_extension("npy"), &r.latents)?;
        return Ok(());
    }
    for (k, img) in images.iter().enumerate() {
        let path = image_io::numbered_path(out, k);
        image_io::save_png(&path, img)?;
        latent::save_wplus(&path.with_extension("npy"), &r.latents.narrow(0, k, 1)?)?;
        println!("{}", path.display());
    }
    Ok(())
}

/// Quality mode for the CLI: `steps` CLIP-guided steps from `r`'s latents
/// towards `prompt` (0: `r` as it is); with `verbose`, each step's CLIP
/// score on stderr.
pub fn refined(
    p: &Pipeline,
    r: clip2gan::pipeline::Rendered,
    prompt: &str,
    steps: usize,
    verbose: bool,
) -> anyhow::Result<clip2gan::pipeline::Rendered> {
    if steps == 0 {
        return Ok(r);
    }
    let n = r.latents.dim(0)?;
    let prompts = vec![prompt; n];
    let started = std::time::Instant::now();
    let out = p.refine(&r.latents, &prompts, steps, |i, scores| {
        if verbose {
            let s: Vec<String> = scores.iter().map(|s| format!("{:.2}", s.score)).collect();
            eprintln!(
                "refine step {i}/{steps}: CLIP score {} ({:.1} s)",
                s.join(" "),
                started.elapsed().as_secs_f64()
            );
        }
    })?;
    if verbose {
        let s: Vec<String> = out.scores.iter().map(|s| format!("{s:.2}")).collect();
        eprintln!("refined: CLIP score {}", s.join(" "));
    }
    Ok(clip2gan::pipeline::Rendered {
        latents: out.latents,
        images: out.images,
        truncated: r.truncated,
        scores: Some(out.scores),
    })
}
