//! Quality mode's refinement on a tiny random generator (64 px) and a tiny
//! random CLIP (32 px): the optimisation itself, not what a trained CLIP
//! makes of it (that is the README's "Quality mode" figures). Seeded; about
//! 10 s in all on 2 cores.

mod common;

use candle_core::{Device, Tensor};
use clip2gan::generator::mobilestylegan::MobileStyleGan;
use clip2gan::generator::{z_for_seeds, Generator};
use clip2gan::mapper::{Mapper, MapperConfig, MapperMeta};
use clip2gan::pipeline::{Pipeline, RefineSettings, RefineSpace, Settings};

const PROMPTS: [&str; 4] = [
    "a smiling woman with red hair",
    "an old man with a beard",
    "a child in the sun",
    "a face in a dark room",
];

fn pipeline(models: &std::path::Path, space: RefineSpace) -> Pipeline {
    let (g, c) = common::tiny_models(models);
    let clip = clip2gan::clip::Clip::from_dir(&c, &Device::Cpu).unwrap();
    let generator = MobileStyleGan::load(&g, &Device::Cpu).unwrap();
    let meta = MapperMeta {
        clip_model: "tiny".into(),
        clip_dim: clip.embed_dim(),
        generator: generator.id().into(),
        num_styles: generator.num_styles(),
        w_dim: generator.w_dim(),
        config: MapperConfig::default(),
        step: 0,
        training: serde_json::Value::Null,
        metrics: serde_json::Value::Null,
    };
    let varmap = candle_nn::VarMap::new();
    let mapper = Mapper::init(&varmap, meta, generator.w_avg(), &Device::Cpu).unwrap();
    Pipeline {
        clip,
        mapper,
        generator: Box::new(generator),
        settings: Settings {
            refine: RefineSettings {
                space,
                ..RefineSettings::default()
            },
            ..Settings::default()
        },
    }
}

/// Four of the generator's own latents, as W+.
fn latents(p: &Pipeline) -> Tensor {
    let g = &p.generator;
    let z = z_for_seeds(11, PROMPTS.len(), g.z_dim(), &Device::Cpu).unwrap();
    g.broadcast_w(&g.map(&z).unwrap()).unwrap()
}

/// The mean CLIP score over the batch before each of `steps` steps, and
/// after the last; and the refined latents.
fn mean_scores(p: &Pipeline, steps: usize) -> (Vec<f32>, Tensor) {
    let mut means = Vec::new();
    let r = p
        .refine(&latents(p), &PROMPTS, steps, |_, s| {
            means.push(s.iter().map(|s| s.score).sum::<f32>() / s.len() as f32)
        })
        .unwrap();
    means.push(r.scores.iter().sum::<f32>() / r.scores.len() as f32);
    (means, r.latents)
}

/// The score refinement optimises rises at every step, on average over a
/// batch of four prompts, in W+ and in W; a zero gradient (or a step that
/// ignored it) would leave it flat. The refined latents stay within the
/// generator's range, and each differs from where it started.
#[test]
fn refinement_raises_the_clip_score_step_by_step() {
    let dir = tempfile::tempdir().unwrap();
    for space in [RefineSpace::WPlus, RefineSpace::W] {
        let p = pipeline(dir.path(), space);
        let (means, refined) = mean_scores(&p, 5);
        eprintln!("{space:?}: {means:?}");
        assert_eq!(means.len(), 6);
        for k in 1..means.len() {
            assert!(
                means[k] > means[k - 1],
                "{space:?}: the mean score fell or stayed at step {k}: {means:?}"
            );
        }
        let radius = p.latent_radius().unwrap();
        let far = clip2gan::variety::farthest_style(&refined, p.generator.w_avg()).unwrap();
        assert!(far <= radius * 1.0001, "{space:?}: {far} > {radius}");
        let moved = common::max_abs(&refined, &latents(&p));
        assert!(moved > 1e-3, "{space:?}: the latents did not move");
        if space == RefineSpace::W {
            // One offset for all styles: every style moved by the same vector
            // (no style was clamped: the start latents are the generator's own).
            let d = (&refined - &latents(&p)).unwrap();
            let first = d.narrow(1, 0, 1).unwrap().broadcast_as(d.shape()).unwrap();
            assert!(common::max_abs(&d, &first.contiguous().unwrap()) < 1e-4);
        }
    }
}

/// A batch is what its latents would get alone: the same steps, one at a
/// time, give the same latents (what lets the engine join refinements of
/// different users at any step), whether the batch is differentiated in
/// one pass (`refine_chunk` 4) or a latent at a time (the default, 1).
#[test]
fn a_batch_of_refinements_equals_each_refined_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = pipeline(dir.path(), RefineSpace::WPlus);
    let all = latents(&p);
    p.settings.refine.chunk = PROMPTS.len();
    let together = p.refine(&all, &PROMPTS, 2, |_, _| {}).unwrap();
    p.settings.refine.chunk = 1;
    let chunked = p.refine(&all, &PROMPTS, 2, |_, _| {}).unwrap();
    let diff = common::max_abs(&chunked.latents, &together.latents);
    assert!(diff < 1e-4, "chunks of 1 against one pass: {diff}");
    for i in [0, 3] {
        let alone = p
            .refine(&all.narrow(0, i, 1).unwrap(), &PROMPTS[i..=i], 2, |_, _| {})
            .unwrap();
        let diff = common::max_abs(&alone.latents, &together.latents.narrow(0, i, 1).unwrap());
        assert!(diff < 1e-4, "latent {i}: {diff}");
    }
    // Too many steps are refused with the limit.
    let err = common::err_text(p.refine(&all, &PROMPTS, 1000, |_, _| {}));
    assert!(err.contains("at most"), "{err}");
}
