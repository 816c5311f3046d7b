//! Image preprocessing for CLIP, two ways.
//!
//! - [`Preprocessor::pixels`]: the reference pipeline for user images, exact
//!   to the byte: RGB, shortest side to 224 with PIL's bicubic filter (its
//!   fixed-point arithmetic and 8-bit intermediate included), centre crop,
//!   rescale by 1/255 and normalise with the checkpoint's mean/std
//!   (transformers' `CLIPImageProcessor`).
//! - [`Preprocessor::from_generator`]: a differentiable tensor path for
//!   training, from generator output `[n, 3, H, W]` in [-1, 1]: area
//!   resampling (as matrix products), centre crop, normalisation. It is not
//!   bit-identical to the reference (no 8-bit rounding, area instead of
//!   bicubic), which is the point: gradients flow through it. Without a
//!   gradient on the CPU the same weights are applied as sparse taps, fused
//!   with the crop and normalisation (the dense products cost ~2.5 ms per
//!   image, a sizeable part of a ~50 ms budget per CLIP image); both are
//!   [`crate::ops::resize`]'s.

use candle_core::{Device, Tensor};
use image::{DynamicImage, RgbImage};

use crate::error::{Error, Result};
use crate::image_io::convert_rgb;
use crate::ops::resize::{area_crop_affine, area_matrix};

/// Resampling constants of PIL's `Resample.c` for 8-bit images.
const PRECISION_BITS: u32 = 32 - 8 - 2;

#[derive(Debug, Clone)]
pub struct Preprocessor {
    /// Shortest side after resizing.
    pub resize: usize,
    /// Side of the square centre crop.
    pub crop: usize,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Default for Preprocessor {
    /// OpenAI CLIP's values.
    fn default() -> Self {
        Self {
            resize: 224,
            crop: 224,
            mean: [0.481_454_66, 0.457_827_5, 0.408_210_73],
            std: [0.268_629_54, 0.261_302_6, 0.275_777_1],
        }
    }
}

impl Preprocessor {
    /// Resize and centre-crop to an RGB8 image of `crop` x `crop`.
    pub fn resize_and_crop(&self, img: &DynamicImage) -> Result<RgbImage> {
        let rgb = convert_rgb(img);
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        if w == 0 || h == 0 {
            return Err(Error::invalid("the image is empty (0 pixels)"));
        }
        // transformers' get_resize_output_image_size: short side to `resize`,
        // long side scaled and floored.
        let (nw, nh) = if w <= h {
            (
                self.resize,
                (self.resize as f64 * h as f64 / w as f64) as usize,
            )
        } else {
            (
                (self.resize as f64 * w as f64 / h as f64) as usize,
                self.resize,
            )
        };
        let resized = resize_bicubic_pil(&rgb, nw.max(1), nh.max(1));
        Ok(center_crop(&resized, self.crop))
    }

    /// Reference preprocessing of user images: `[n, 3, crop, crop]` f32.
    pub fn pixels(&self, images: &[DynamicImage], device: &Device) -> Result<Tensor> {
        let mut data = Vec::with_capacity(images.len() * 3 * self.crop * self.crop);
        for img in images {
            let rgb = self.resize_and_crop(img)?;
            data.extend(self.normalize_rgb8(&rgb));
        }
        Ok(Tensor::from_vec(
            data,
            (images.len(), 3, self.crop, self.crop),
            device,
        )?)
    }

    /// CHW floats: `((v / 255) - mean) / std`, computed like numpy does in
    /// transformers (the division in f64, the rest in f32).
    pub fn normalize_rgb8(&self, img: &RgbImage) -> Vec<f32> {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut out = vec![0f32; 3 * w * h];
        for (i, px) in img.pixels().enumerate() {
            for c in 0..3 {
                let x = (px.0[c] as f64 * (1.0 / 255.0)) as f32;
                out[c * w * h + i] = (x - self.mean[c]) / self.std[c];
            }
        }
        out
    }

    /// Differentiable path from generator output in [-1, 1] to CLIP input.
    pub fn from_generator(&self, images: &Tensor) -> Result<Tensor> {
        let (_, c, h, w) = images.dims4()?;
        if c != 3 {
            return Err(Error::invalid(format!("expected 3 channels, got {c}")));
        }
        let (nh, nw) = if w <= h {
            (self.resize * h / w, self.resize)
        } else {
            (self.resize, self.resize * w / h)
        };
        if crate::ops::fast_path(&[images]) {
            // `((v + 1) / 2 - mean) / std` after the taps.
            let affine: Vec<(f32, f32)> = (0..3)
                .map(|ch| (0.5 / self.std[ch], (0.5 - self.mean[ch]) / self.std[ch]))
                .collect();
            return area_crop_affine(images, nh, nw, self.crop, &affine);
        }
        let dev = images.device();
        let rows = area_matrix(h, nh, dev)?; // [nh, h]
        let cols = area_matrix(w, nw, dev)?.t()?; // [w, nw]
        let x = ((images + 1.0)? * 0.5)?;
        let x = rows.broadcast_matmul(&x)?.broadcast_matmul(&cols)?;
        let (top, left) = ((nh - self.crop) / 2, (nw - self.crop) / 2);
        let x = x.narrow(2, top, self.crop)?.narrow(3, left, self.crop)?;
        let mean = Tensor::new(&self.mean, dev)?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&self.std, dev)?.reshape((1, 3, 1, 1))?;
        Ok(x.broadcast_sub(&mean)?.broadcast_div(&std)?)
    }
}

/// transformers' `center_crop`: top/left = (size - crop) // 2.
fn center_crop(img: &RgbImage, crop: usize) -> RgbImage {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let top = h.saturating_sub(crop) / 2;
    let left = w.saturating_sub(crop) / 2;
    let mut out = RgbImage::new(crop as u32, crop as u32);
    for y in 0..crop.min(h) {
        for x in 0..crop.min(w) {
            out.put_pixel(
                x as u32,
                y as u32,
                *img.get_pixel((left + x) as u32, (top + y) as u32),
            );
        }
    }
    out
}

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// PIL's `precompute_coeffs` + `normalize_coeffs_8bpc`: for each output
/// sample, the first input index, the tap count and fixed-point weights.
fn coefficients(in_size: usize, out_size: usize) -> (Vec<(usize, usize)>, Vec<i32>, usize) {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ksize = support.ceil() as usize * 2 + 1;
    let mut bounds = Vec::with_capacity(out_size);
    let mut kk = vec![0i32; out_size * ksize];
    for xx in 0..out_size {
        let center = (xx as f64 + 0.5) * scale;
        let ss = 1.0 / filterscale;
        let xmin = ((center - support + 0.5) as isize).max(0) as usize;
        let xmax = ((center + support + 0.5) as isize).min(in_size as isize) as usize - xmin;
        let w: Vec<f64> = (0..xmax)
            .map(|x| bicubic((x as f64 + xmin as f64 - center + 0.5) * ss))
            .collect();
        let total: f64 = w.iter().sum();
        for (x, wx) in w.iter().enumerate() {
            let v = if total != 0.0 { wx / total } else { *wx };
            let f = v * (1u32 << PRECISION_BITS) as f64;
            kk[xx * ksize + x] = if v < 0.0 {
                (-0.5 + f) as i32
            } else {
                (0.5 + f) as i32
            };
        }
        bounds.push((xmin, xmax));
    }
    (bounds, kk, ksize)
}

fn clip8(v: i64) -> u8 {
    if v >= (1i64 << PRECISION_BITS << 8) {
        255
    } else if v <= 0 {
        0
    } else {
        (v >> PRECISION_BITS) as u8
    }
}

/// PIL's `Image.resize(..., BICUBIC)` for RGB8: a horizontal pass over the
/// rows the vertical pass needs, rounded to 8 bits, then a vertical pass.
pub fn resize_bicubic_pil(img: &RgbImage, out_w: usize, out_h: usize) -> RgbImage {
    let (in_w, in_h) = (img.width() as usize, img.height() as usize);
    let src = img.as_raw();
    let (vb, vk, vks) = coefficients(in_h, out_h);
    let need_h = out_w != in_w;
    let need_v = out_h != in_h;
    // Rows of the source the vertical pass reads.
    let (first, last) = if need_v {
        (vb[0].0, vb[out_h - 1].0 + vb[out_h - 1].1)
    } else {
        (0, in_h)
    };
    let (tmp, tmp_w, row0) = if need_h {
        let (hb, hk, hks) = coefficients(in_w, out_w);
        let rows = last - first;
        let mut tmp = vec![0u8; rows * out_w * 3];
        for y in 0..rows {
            let line = &src[(first + y) * in_w * 3..(first + y + 1) * in_w * 3];
            for (xx, &(xmin, n)) in hb.iter().enumerate() {
                let k = &hk[xx * hks..xx * hks + n];
                for c in 0..3 {
                    let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                    for (x, &kx) in k.iter().enumerate() {
                        ss += line[(xmin + x) * 3 + c] as i64 * kx as i64;
                    }
                    tmp[(y * out_w + xx) * 3 + c] = clip8(ss);
                }
            }
        }
        (tmp, out_w, first)
    } else {
        (src.to_vec(), in_w, 0)
    };
    if !need_v {
        return RgbImage::from_raw(tmp_w as u32, out_h as u32, tmp).expect("sized");
    }
    let mut out = vec![0u8; out_h * tmp_w * 3];
    for (yy, &(ymin, n)) in vb.iter().enumerate() {
        let k = &vk[yy * vks..yy * vks + n];
        let ymin = ymin - row0;
        for x in 0..tmp_w {
            for c in 0..3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (y, &ky) in k.iter().enumerate() {
                    ss += tmp[((ymin + y) * tmp_w + x) * 3 + c] as i64 * ky as i64;
                }
                out[(yy * tmp_w + x) * 3 + c] = clip8(ss);
            }
        }
    }
    RgbImage::from_raw(tmp_w as u32, out_h as u32, out).expect("sized")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_path_matches_reference_on_a_flat_image() {
        let p = Preprocessor::default();
        // A uniform image: every path gives the same normalised value.
        let t = Tensor::full(0.2f32, (1, 3, 256, 256), &Device::Cpu).unwrap();
        let x = p.from_generator(&t).unwrap();
        assert_eq!(x.dims(), [1, 3, 224, 224]);
        let v = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = (0.6 - p.mean[0]) / p.std[0];
        assert!((v[0] - want).abs() < 1e-5);
    }

    /// The CPU kernel computes what the differentiable tensor path does:
    /// downsampling (the pair bank's 256 -> 224), non-square input with a
    /// crop, upsampling.
    #[test]
    fn generator_path_cpu_kernel_matches_tensor_path() {
        let cases = [
            (Preprocessor::default(), (2, 3, 256, 256)),
            (Preprocessor::default(), (1, 3, 300, 260)),
            (
                Preprocessor {
                    resize: 40,
                    crop: 32,
                    ..Default::default()
                },
                (2, 3, 24, 30),
            ),
        ];
        for (i, (p, shape)) in cases.into_iter().enumerate() {
            let x = (crate::rng::normal_tensor(
                i as u64,
                "px",
                &[shape.0, shape.1, shape.2, shape.3],
                &Device::Cpu,
            )
            .unwrap()
                * 0.5)
                .unwrap();
            let fast = p.from_generator(&x).unwrap();
            let slow = crate::ops::testing::portable(|| p.from_generator(&x)).unwrap();
            let d = crate::ops::testing::max_diff(&fast, &slow);
            assert!(d < 1e-5, "case {i}: differs by {d}");
        }
    }

    #[test]
    fn pil_resize_keeps_flat_images_flat() {
        let img = RgbImage::from_pixel(37, 23, image::Rgb([10, 128, 250]));
        let r = resize_bicubic_pil(&img, 224, 139);
        assert!(r.pixels().all(|p| p.0 == [10, 128, 250]));
    }
}
