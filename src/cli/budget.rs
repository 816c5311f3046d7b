//! `engine.memory_limit` applied to the settings before the models load:
//! the sizes of the configured weight files, then
//! [`clip2gan::engine::budget::plan`] lowers `engine.max_batch` and
//! `generator.high_res_chunk` to fit, or refuses to start.

use std::path::Path;

use clip2gan::config::Config;
use clip2gan::engine::budget::{self, Models, Plan};
use clip2gan::error::{Error, Result};

/// Bytes of the files in `path` (a file, or a directory's files).
fn size_of(path: &Path) -> u64 {
    if path.is_dir() {
        std::fs::read_dir(path)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter_map(|e| e.metadata().ok())
                    .filter(|m| m.is_file())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    } else {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }
}

/// The configured models' weight files (resolving CLIP may download it, as
/// loading would).
fn models(cfg: &Config) -> Result<Models> {
    let setup = cfg.pipeline_setup();
    let clip = setup.clip_files()?;
    let g = &cfg.generator;
    let generator = match g.checkpoint_path(&cfg.models_dir) {
        Some(p) if g.kind == "stylegan2" => p,
        _ => g.weights_dir(&cfg.models_dir),
    };
    if g.kind != "stylegan2" {
        // The bot fetches the default generator on its first start; the
        // estimate needs its files, so fetch them now as loading would.
        clip2gan::generator::mobilestylegan::fetch::ensure(&cfg.models_dir, &generator)?;
    }
    let mut files = vec![
        ("CLIP".to_string(), size_of(&clip.weights)),
        ("generator".to_string(), size_of(&generator)),
    ];
    let mapper = setup.mapper_path();
    if mapper.exists() {
        files.push(("mapper".into(), size_of(&mapper)));
    }
    if files[1].1 == 0 {
        return Err(Error::Config(format!(
            "engine.memory_limit: the generator's weights are not at {} yet; run `clip2gan fetch` first",
            generator.display()
        )));
    }
    Ok(Models {
        files,
        resolution: g.resolution.unwrap_or(1024),
    })
}

/// Fit the batch and chunk settings to `engine.memory_limit`, if set.
pub fn apply(cfg: &mut Config) -> Result<()> {
    let Some(limit) = &cfg.engine.memory_limit else {
        return Ok(());
    };
    let limit = budget::parse_bytes(limit)
        .map_err(|e| Error::Config(format!("engine.memory_limit = {e}")))?;
    let m = models(cfg)?;
    let wanted = Plan {
        max_batch: cfg.engine.max_batch,
        high_res_chunk: cfg.generator.high_res_chunk,
    };
    let p = budget::plan(limit, &m, wanted)?;
    if p != wanted {
        tracing::info!(
            max_batch = p.max_batch,
            high_res_chunk = p.high_res_chunk,
            estimated_peak_mib = m.peak(p.max_batch, p.high_res_chunk) >> 20,
            "engine.memory_limit: batch settings lowered to fit"
        );
    }
    cfg.engine.max_batch = p.max_batch;
    cfg.generator.high_res_chunk = p.high_res_chunk;
    // Quality mode: differentiate fewer latents at once, or refuse it.
    let wanted = cfg.pipeline.refine_chunk;
    let chunk = (1..=wanted)
        .rev()
        .find(|&c| m.refine_peak(c) <= limit)
        .unwrap_or(0);
    if chunk == 0 {
        let why = refinement_refused(limit, m.refine_peak(1));
        tracing::warn!("{why}");
        cfg.engine.refinement_refused = Some(why);
    } else if chunk != wanted {
        tracing::info!(
            refine_chunk = chunk,
            "engine.memory_limit: refinement chunk lowered to fit"
        );
        cfg.pipeline.refine_chunk = chunk;
    }
    Ok(())
}

/// What a user asking for quality mode hears when the limit cannot hold
/// one refinement step.
fn refinement_refused(limit: u64, needs: u64) -> String {
    let gb = |b: u64| b as f64 / 1e9;
    format!(
        "quality mode (refinement) is off on this server: one refinement step needs about \
         {:.1} GB of memory and engine.memory_limit is {:.1} GB; quality: fast works as usual",
        gb(needs),
        gb(limit)
    )
}
