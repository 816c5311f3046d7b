//! A folder of the user's own images as training data (full mode): each
//! image is encoded once with CLIP's reference preprocessing and kept as a
//! reconstruction target at `recon_size`. These samples have no true W+, so
//! they only feed the image and CLIP losses.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use image::imageops::FilterType;

use crate::clip::{open_image, Clip};
use crate::error::{Error, Result};

const EXTENSIONS: [&str; 6] = ["png", "jpg", "jpeg", "webp", "gif", "bmp"];

pub struct UserImages {
    pub files: Vec<PathBuf>,
    /// L2-normalised CLIP embeddings `[n, d]`.
    pub e: Tensor,
    /// Targets `[n, 3, s, s]` in [-1, 1] (centre square, area-like resize).
    pub targets: Tensor,
}

/// Image files directly in `dir`, sorted by name.
pub fn list(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|err| Error::Read {
        path: dir.to_path_buf(),
        err,
    })?;
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::invalid(format!(
            "no images in {} (looked for {} files directly in it)",
            dir.display(),
            EXTENSIONS.join(", ")
        )));
    }
    Ok(files)
}

/// Decode every image (failing on the first unreadable one, by name), encode
/// with CLIP and make the targets.
pub fn load(dir: &Path, clip: &Clip, recon_size: usize, device: &Device) -> Result<UserImages> {
    let files = list(dir)?;
    let mut es = Vec::new();
    let mut targets = Vec::new();
    for batch in files.chunks(16) {
        let imgs = batch
            .iter()
            .map(|p| open_image(p))
            .collect::<Result<Vec<_>>>()?;
        es.push(clip.encode_images(&imgs)?);
        for img in &imgs {
            targets.push(target(img, recon_size, device)?);
        }
    }
    Ok(UserImages {
        files,
        e: Tensor::cat(&es, 0)?.to_device(device)?,
        targets: Tensor::stack(&targets, 0)?,
    })
}

/// Centre square, resized to `size`, as `[3, size, size]` in [-1, 1].
fn target(img: &image::DynamicImage, size: usize, device: &Device) -> Result<Tensor> {
    let rgb = crate::image_io::convert_rgb(img);
    let (w, h) = rgb.dimensions();
    let side = w.min(h);
    let square =
        image::imageops::crop_imm(&rgb, (w - side) / 2, (h - side) / 2, side, side).to_image();
    let small = image::imageops::resize(&square, size as u32, size as u32, FilterType::Triangle);
    let data: Vec<f32> = small
        .into_raw()
        .iter()
        .map(|&v| v as f32 / 127.5 - 1.0)
        .collect();
    Ok(Tensor::from_vec(data, (size, size, 3), device)?
        .permute((2, 0, 1))?
        .contiguous()?)
}
