//! Text that means something: the small toy CLIP trained on generated
//! faces, a closed-form mapper fitted on those faces, and the pixel
//! judges' verdict on what the brightness prompts do (they must land well
//! above chance, and always-w_avg must not).

mod common;

use candle_core::{Device, Tensor};
use clip2gan::adherence::measure::{self, Method};
use clip2gan::adherence::toy::{self, ToyPlan};
use clip2gan::adherence::{Attribute, AttributeStats, Bin};
use clip2gan::clip::Clip;
use clip2gan::generator::Generator;
use clip2gan::pipeline::{Pipeline, Settings};
use clip2gan::train::cache::PairSet;
use clip2gan::train::{Mode, TrainConfig};

#[test]
fn toy_clip_reads_its_attributes_and_text_steers_brightness() {
    // The only test of this binary, so nothing else runs yet.
    clip2gan::runtime::serial_elementwise();
    let g = common::mobilestylegan();
    let dir = tempfile::tempdir().unwrap();
    let (report, faces) = toy::build(&g, 0.7, 8, dir.path(), &ToyPlan::small(), 0, &mut |l| {
        eprintln!("{l}")
    })
    .unwrap();
    eprintln!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(
        report.last_loss < report.first_loss,
        "the contrastive loss did not fall"
    );
    // Zero-shot, nearest of "a dark photo of a face" / "a photo of a face" /
    // "a bright photo of a face": chance is 1/3.
    assert!(
        report.zero_shot[0] >= 0.6,
        "brightness zero-shot {:?}",
        report.zero_shot
    );
    // A modality gap: matched pairs closer than unmatched ones, and the
    // two modalities' means apart.
    assert!(report.gap.matched_cos > report.gap.unmatched_cos);
    assert!(report.gap.mean_gap > 0.05, "{:?}", report.gap);

    // The directory loads as any checkpoint, with its tertiles beside it.
    let clip = Clip::from_dir(dir.path(), &Device::Cpu).unwrap();
    let stats = AttributeStats::read(&dir.path().join("attributes.json")).unwrap();
    assert_eq!(stats.generator, g.id());

    // A first-use fit on the toy's own faces (their w, their embeddings).
    let n = faces.w.dim(0).unwrap();
    let pairs = PairSet {
        w: Tensor::stack(&[&faces.w, &faces.w], 1).unwrap(),
        cross: vec![g.num_styles() as u32; n],
        e: clip.encode_pixels(&faces.pixels).unwrap(),
    };
    let train = TrainConfig {
        mode: Mode::Fit,
        ..TrainConfig::default()
    };
    let captions = clip2gan::train::captions::Captions::faces();
    let closed =
        clip2gan::train::fit::make_mapper(&g, &clip, "toy", &train, &pairs, &captions).unwrap();
    let w = pairs.w.narrow(1, 0, 1).unwrap().squeeze(1).unwrap();
    let spread = w.broadcast_sub(g.w_avg()).unwrap();
    // The average face plus the fit's residual draws: the chance level.
    let chance = || measure::always_w_avg(&closed.mapper, &spread, &Device::Cpu).unwrap();
    let mut untrained = Method::Mapper {
        name: "always w_avg".into(),
        mapper: Box::new(chance()),
    };
    let mut p = Pipeline {
        clip,
        mapper: chance(),
        generator: Box::new(g),
        settings: Settings::default(),
    };
    let brightness = |p: &mut Pipeline, m: &mut Method| {
        let [low, high] = [Bin::Low, Bin::High].map(|bin| {
            let prompt = Attribute::Brightness.prompt(bin);
            measure::prompt_adherence(p, m, &stats, prompt, &[(Attribute::Brightness, bin)], 0, 16)
                .unwrap()
        });
        let sd = stats.tertiles[0].sd as f64;
        (
            (low.adherence + high.adherence) / 2.0,
            (high.mean[0] - low.mean[0]) / sd,
        )
    };
    let mut fitted = Method::Mapper {
        name: "fit".into(),
        mapper: Box::new(closed.mapper),
    };
    let (adherence, separation) = brightness(&mut p, &mut fitted);
    eprintln!("fit: adherence {adherence:.3}, separation {separation:.2}");
    assert!(
        adherence >= 0.6,
        "brightness adherence {adherence} (chance 0.33)"
    );
    assert!(separation >= 0.8, "brightness separation {separation}");
    // The untrained baseline (the average face plus the same residuals)
    // does not pass the same bars.
    let (adherence, separation) = brightness(&mut p, &mut untrained);
    eprintln!("always w_avg: adherence {adherence:.3}, separation {separation:.2}");
    assert!(
        adherence < 0.6 && separation.abs() < 0.8,
        "{adherence} {separation}"
    );
}
