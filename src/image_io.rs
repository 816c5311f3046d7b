//! From generator output tensors to images on disk: resizing with an area
//! filter, RGB8 conversion, grids, and atomic PNG writes; and decoded
//! images (user photos, files) to RGB8 the way PIL converts them.

use std::path::{Path, PathBuf};

use candle_core::{CpuStorage, DType, Storage, Tensor};
use image::{DynamicImage, RgbImage};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// RGB the way transformers' `convert_rgb` + PIL do it (CLIP's
/// preprocessing, and the photos the bot and training read): images with alpha
/// are composited onto white (PIL's integer `alpha_composite`), 16-bit
/// colour keeps the high byte (PIL reads 16-bit RGB PNGs so). One deliberate
/// difference: PIL clamps 16-bit grey to 0..255 (almost all white); we keep
/// its high byte like colour, which preserves the picture.
pub fn convert_rgb(img: &DynamicImage) -> RgbImage {
    let rgba: image::RgbaImage = match img {
        DynamicImage::ImageRgb8(x) => return x.clone(),
        DynamicImage::ImageLuma8(_) => return img.to_rgb8(),
        DynamicImage::ImageRgb16(x) => {
            return RgbImage::from_fn(x.width(), x.height(), |i, j| {
                let p = x.get_pixel(i, j).0;
                image::Rgb([(p[0] >> 8) as u8, (p[1] >> 8) as u8, (p[2] >> 8) as u8])
            })
        }
        DynamicImage::ImageLuma16(x) => {
            return RgbImage::from_fn(x.width(), x.height(), |i, j| {
                let v = (x.get_pixel(i, j).0[0] >> 8) as u8;
                image::Rgb([v, v, v])
            })
        }
        DynamicImage::ImageRgba16(x) => image::RgbaImage::from_fn(x.width(), x.height(), |i, j| {
            let p = x.get_pixel(i, j).0;
            image::Rgba(p.map(|v| (v >> 8) as u8))
        }),
        DynamicImage::ImageLumaA16(x) => {
            image::RgbaImage::from_fn(x.width(), x.height(), |i, j| {
                let [v, a] = x.get_pixel(i, j).0.map(|v| (v >> 8) as u8);
                image::Rgba([v, v, v, a])
            })
        }
        other => other.to_rgba8(),
    };
    RgbImage::from_fn(rgba.width(), rgba.height(), |i, j| {
        let p = rgba.get_pixel(i, j).0;
        image::Rgb(composite_on_white(p))
    })
}

/// PIL's `ImagingAlphaComposite` of `src` over opaque white.
fn composite_on_white([r, g, b, a]: [u8; 4]) -> [u8; 3] {
    const BITS: u32 = 7;
    if a == 0 {
        return [255; 3];
    }
    let a = a as u32;
    let blend = 255 * (255 - a);
    let outa255 = a * 255 + blend;
    let coef1 = a * 255 * 255 * (1 << BITS) / outa255;
    let coef2 = 255 * (1 << BITS) - coef1;
    let mix = |c: u8| {
        let t = c as u32 * coef1 + 255 * coef2 + (0x80 << BITS);
        ((((t >> 8) + t) >> 8) >> BITS) as u8
    };
    [mix(r), mix(g), mix(b)]
}

/// Output sizes a 1024 px generator can be reduced to exactly with an area
/// (box) filter.
pub fn check_size(size: usize, resolution: usize) -> Result<()> {
    if size == 0
        || size > resolution
        || !resolution.is_multiple_of(size)
        || !(resolution / size).is_power_of_two()
    {
        return Err(Error::invalid(format!(
            "size {size} is not supported: use {resolution} or {resolution} divided by a power of two (e.g. {}, {})",
            resolution / 2,
            resolution / 4
        )));
    }
    Ok(())
}

/// Limits for decoding images that come from users (files, uploads): a
/// bound on each side and on the memory the decoder may allocate, so a small
/// file that claims huge dimensions (a "dimension bomb") fails instead of
/// exhausting memory.
pub fn decode_limits() -> image::Limits {
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_DECODE_SIDE);
    limits.max_image_height = Some(MAX_DECODE_SIDE);
    limits.max_alloc = Some(1 << 30);
    limits
}

/// Longest side [`decode_limits`] accepts.
pub const MAX_DECODE_SIDE: u32 = 16_384;

/// Area-downsample `[n, 3, R, R]` to `size` (R a multiple of size).
pub fn resize_area(images: &Tensor, size: usize) -> Result<Tensor> {
    let r = images.dim(3)?;
    if r == size {
        return Ok(images.clone());
    }
    let k = r / size;
    Ok(images.avg_pool2d(k)?)
}

/// `[n, 3, H, W]` in [-1, 1] -> RGB8 images.
pub fn to_rgb8(images: &Tensor) -> Result<Vec<RgbImage>> {
    let (n, c, h, w) = images.dims4()?;
    if c != 3 {
        return Err(Error::invalid(format!(
            "expected 3 colour channels, got {c}"
        )));
    }
    let u8s = ((images.to_dtype(DType::F32)? + 1.0)? * 127.5)?
        .clamp(0.0, 255.0)?
        .round()?
        .to_dtype(DType::U8)?
        .permute((0, 2, 3, 1))?
        .contiguous()?
        .flatten_all()?
        .to_vec1::<u8>()?;
    let per = h * w * 3;
    Ok((0..n)
        .map(|i| {
            RgbImage::from_raw(w as u32, h as u32, u8s[i * per..(i + 1) * per].to_vec())
                .expect("sized")
        })
        .collect())
}

/// [`resize_area`] followed by [`to_rgb8`], with the same values bit for
/// bit, in one pass over the generator's output when it is f32 on the CPU.
///
/// The two-step path makes seven passes over the data, single-threaded, on
/// the inference thread, between two generator batches (about 10 to 25 ms
/// per 1024 px image on the 2-core machine, with one core idle); this reads
/// each pixel once and splits the rows over the thread pool. The
/// arithmetic follows candle's ops exactly: the block sum from 0 in row-major
/// order times 1/k^2, then `(v + 1) * 127.5`, clamped, rounded, truncated.
pub fn to_rgb8_resized(images: &Tensor, size: usize) -> Result<Vec<RgbImage>> {
    let (n, c, h, w) = images.dims4()?;
    if c != 3 {
        return Err(Error::invalid(format!(
            "expected 3 colour channels, got {c}"
        )));
    }
    let fused = size > 0 && h == w && h.is_multiple_of(size) && images.dtype() == DType::F32;
    if fused {
        let (storage, layout) = images.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(downscale_rgb8(&v[a..b], n, h, size));
        }
    }
    to_rgb8(&resize_area(images, size)?)
}

/// `src`: `[n, 3, r, r]` f32, contiguous; `r` a multiple of `size`.
fn downscale_rgb8(src: &[f32], n: usize, r: usize, size: usize) -> Vec<RgbImage> {
    let k = r / size;
    let scale = (1.0 / (k * k) as f64) as f32;
    let plane = r * r;
    let mut bufs = vec![vec![0u8; size * size * 3]; n];
    bufs.par_iter_mut().enumerate().for_each(|(i, buf)| {
        let img = &src[i * 3 * plane..(i + 1) * 3 * plane];
        buf.par_chunks_mut(size * 3)
            .enumerate()
            .for_each(|(y, row)| {
                // Block sums row by row into `acc`: for each output pixel the
                // order of candle's loop (source rows, then columns).
                let mut acc = vec![0f32; size];
                for ch in 0..3 {
                    let p = &img[ch * plane..(ch + 1) * plane];
                    acc.fill(0.0);
                    for m in 0..k {
                        let line = &p[(y * k + m) * r..(y * k + m + 1) * r];
                        for (a, block) in acc.iter_mut().zip(line.chunks_exact(k)) {
                            for &v in block {
                                *a += v;
                            }
                        }
                    }
                    for (px, &sum) in row.chunks_exact_mut(3).zip(&acc) {
                        let v = ((sum * scale + 1.0) * 127.5).clamp(0.0, 255.0);
                        px[ch] = v.round() as u8;
                    }
                }
            });
    });
    bufs.into_iter()
        .map(|b| RgbImage::from_raw(size as u32, size as u32, b).expect("sized"))
        .collect()
}

/// Tile images in a near-square grid (row-major), black where a row ends early.
pub fn grid(images: &[RgbImage]) -> RgbImage {
    let n = images.len().max(1);
    let cols = (n as f64).sqrt().ceil() as u32;
    let rows = (n as u32).div_ceil(cols);
    let (w, h) = images.first().map(|i| i.dimensions()).unwrap_or((1, 1));
    let mut out = RgbImage::new(w * cols, h * rows);
    for (k, img) in images.iter().enumerate() {
        let (x, y) = ((k as u32 % cols) * w, (k as u32 / cols) * h);
        image::imageops::replace(&mut out, img, x as i64, y as i64);
    }
    out
}

pub fn encode_png(img: &RgbImage) -> Result<Vec<u8>> {
    let mut buf = std::io::Cursor::new(Vec::new());
    img.write_to(&mut buf, image::ImageFormat::Png)
        .map_err(|e| Error::invalid(format!("PNG encoding failed: {e}")))?;
    Ok(buf.into_inner())
}

pub fn save_png(path: &Path, img: &RgbImage) -> Result<()> {
    write_atomic(path, &encode_png(img)?)
}

/// `out.png`, `out-1.png`, `out-2.png`, ... for image k of a set.
pub fn numbered_path(base: &Path, k: usize) -> PathBuf {
    if k == 0 {
        return base.to_path_buf();
    }
    let stem = base
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let ext = base
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    base.with_file_name(format!("{stem}-{k}.{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn area_resize_averages_blocks() {
        let t = Tensor::arange(0f32, 16.0, &Device::Cpu)
            .unwrap()
            .reshape((1, 1, 4, 4))
            .unwrap();
        let r = resize_area(&t, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(r, vec![2.5, 4.5, 10.5, 12.5]);
    }

    #[test]
    fn rgb8_maps_range_and_clamps() {
        let t = Tensor::new(&[-1.5f32, -1.0, 0.0, 1.0, 2.0, 0.5], &Device::Cpu)
            .unwrap()
            .reshape((1, 3, 1, 2))
            .unwrap();
        let img = &to_rgb8(&t).unwrap()[0];
        assert_eq!(img.get_pixel(0, 0).0, [0, 128, 255]);
        assert_eq!(img.get_pixel(1, 0).0, [0, 255, 191]);
    }

    /// The fused path gives the two-step path's bytes exactly, at every
    /// reduction and for values outside [-1, 1] (clamped), and falls back
    /// for views it cannot read directly.
    #[test]
    fn fused_downscale_equals_resize_then_rgb8() {
        let n = 2 * 3 * 16 * 16;
        let v: Vec<f32> = (0..n)
            .map(|i| ((i * 7919 % 1009) as f32 / 1009.0 - 0.5) * 2.6)
            .collect();
        let t = Tensor::from_vec(v, (2, 3, 16, 16), &Device::Cpu).unwrap();
        for size in [16, 8, 4, 1] {
            let want = to_rgb8(&resize_area(&t, size).unwrap()).unwrap();
            let got = to_rgb8_resized(&t, size).unwrap();
            assert_eq!(got, want, "size {size}");
        }
        let view = t.narrow(0, 1, 1).unwrap();
        assert_eq!(
            to_rgb8_resized(&view, 4).unwrap(),
            to_rgb8(&resize_area(&view, 4).unwrap()).unwrap()
        );
        let strided = t.transpose(2, 3).unwrap();
        assert_eq!(
            to_rgb8_resized(&strided, 8).unwrap(),
            to_rgb8(&resize_area(&strided, 8).unwrap()).unwrap()
        );
    }

    #[test]
    fn sizes_and_names() {
        assert!(check_size(512, 1024).is_ok());
        assert!(check_size(300, 1024).is_err());
        assert!(check_size(768, 1024).is_err());
        assert_eq!(
            numbered_path(Path::new("a/out.png"), 2),
            PathBuf::from("a/out-2.png")
        );
        assert_eq!(grid(&vec![RgbImage::new(2, 2); 3]).dimensions(), (4, 4));
    }
}
