//! `clip2gan tokenize` and `clip2gan clip-score` end to end, with a small
//! random CLIP that has the real vocabulary, loaded from a local directory.

mod common;

use common::{bin, SMALL_CLIP};

#[test]
fn tokenize_prints_ids_and_reports_truncation() {
    let o = bin()
        .args(["tokenize", "a photo of a cat"])
        .output()
        .unwrap();
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "[49406,320,1125,539,320,2368,49407]"
    );
    let long = "cat ".repeat(100);
    let o = bin().args(["tokenize", &long]).output().unwrap();
    let ids: Vec<u32> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ids.len(), 77);
    assert!(String::from_utf8_lossy(&o.stderr).contains("truncated"));
}

#[test]
fn clip_score_from_a_local_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("clip");
    clip2gan::clip::save_random_checkpoint(&dir, SMALL_CLIP).unwrap();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip/images");
    let a = fixtures.join("landscape_300x200.png");
    let b = fixtures.join("rgba_100x80.png");
    let o = bin()
        .args(["clip-score", "--text", "a man with a beard"])
        .arg(&a)
        .arg(&b)
        .env("CLIP2GAN_CLIP__MODEL", &dir)
        .env("CLIP2GAN_DEVICE", "cpu")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        let s = l["clip_score"].as_f64().unwrap();
        assert!((-100.0..=100.0).contains(&s), "{s}");
    }
    assert_ne!(lines[0]["clip_score"], lines[1]["clip_score"]);

    // A file that is not an image fails before the model loads, and says so.
    let junk = tmp.path().join("junk.png");
    std::fs::write(&junk, b"definitely not a png").unwrap();
    let o = bin()
        .args(["clip-score", "--text", "x"])
        .arg(&junk)
        .env("CLIP2GAN_CLIP__MODEL", &dir)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("is not a readable image"));
}
