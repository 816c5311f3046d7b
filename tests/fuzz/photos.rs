//! Photos users attach or link (`bot::attach::prepare`: the header check,
//! the decode within limits, the conversion to RGB): a generated face in
//! each accepted format, with the fields decoders trust edited: PNG chunk
//! lengths and IHDR (checksums fixed), JPEG segment lengths and frame
//! dimensions, GIF screen and frame sizes, BMP header fields, WebP chunk
//! sizes and canvas.

use std::io::Cursor;

use image::{DynamicImage, ImageFormat, RgbImage};
use rand::Rng as _;

use crate::harness::{Outcome, Rng};
use crate::mutate::{self, edge, set_field};

/// The pixel budget the target runs with; the heap bound follows from it.
pub const MAX_PIXELS: u64 = 1 << 20;

/// The face in every format the bot accepts, plus a grey and a
/// transparent PNG and a two-frame GIF (other decoder paths).
pub fn seeds(face: &RgbImage) -> Vec<Vec<u8>> {
    let img = DynamicImage::ImageRgb8(face.clone());
    let mut out = Vec::new();
    for f in [
        ImageFormat::Png,
        ImageFormat::Jpeg,
        ImageFormat::Gif,
        ImageFormat::WebP,
        ImageFormat::Bmp,
    ] {
        out.push(encode(&img, f));
    }
    out.push(encode(
        &DynamicImage::ImageLuma8(img.to_luma8()),
        ImageFormat::Png,
    ));
    out.push(encode(
        &DynamicImage::ImageRgba8(img.to_rgba8()),
        ImageFormat::Png,
    ));
    let mut gif = Vec::new();
    {
        let mut enc = image::codecs::gif::GifEncoder::new(&mut gif);
        for k in 0..2u8 {
            let mut f = img.to_rgba8();
            f.pixels_mut()
                .for_each(|p| p.0[0] = p.0[0].wrapping_add(k * 40));
            enc.encode_frame(image::Frame::new(f)).expect("gif frame");
        }
    }
    out.push(gif);
    out
}

fn encode(img: &DynamicImage, f: ImageFormat) -> Vec<u8> {
    let mut b = Vec::new();
    img.write_to(&mut Cursor::new(&mut b), f).expect("encode");
    b
}

pub fn check(bytes: &[u8]) -> Outcome {
    match clip2gan::bot::attach::prepare(bytes, MAX_PIXELS) {
        Ok(p) => {
            // What is accepted must be the plain RGB PNG the engine expects.
            let back = image::load_from_memory(&p.png).expect("prepare's PNG decodes");
            assert_eq!(back.color(), image::ColorType::Rgb8);
            Outcome::Accepted
        }
        Err(why) => Outcome::Refused(why),
    }
}

pub fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seed.to_vec();
    match image::guess_format(&b) {
        Ok(ImageFormat::Png) => png(rng, &mut b),
        Ok(ImageFormat::Jpeg) => jpeg(rng, &mut b),
        Ok(ImageFormat::Gif) => {
            // Screen width/height, and a frame descriptor's box.
            let mut fields = vec![6, 8];
            if let Some(d) = b.iter().position(|&x| x == 0x2c) {
                fields.extend([d + 1, d + 3, d + 5, d + 7]);
            }
            let at = fields[rng.random_range(0..fields.len())];
            set_field(&mut b, at, 2, edge(rng), false);
        }
        Ok(ImageFormat::Bmp) => {
            // size, data offset, header size, width, height, planes, bpp,
            // compression, image size, colours used.
            const F: &[(usize, usize)] = &[
                (2, 4),
                (10, 4),
                (14, 4),
                (18, 4),
                (22, 4),
                (26, 2),
                (28, 2),
                (30, 4),
                (34, 4),
                (46, 4),
            ];
            let (at, w) = F[rng.random_range(0..F.len())];
            set_field(&mut b, at, w, edge(rng), false);
        }
        Ok(ImageFormat::WebP) => {
            // RIFF size, first chunk size, VP8L/VP8 dimension bytes, VP8X canvas.
            const F: &[(usize, usize)] = &[(4, 4), (16, 4), (21, 4), (24, 3), (26, 2), (27, 3)];
            let (at, w) = F[rng.random_range(0..F.len())];
            set_field(&mut b, at, w, edge(rng), false);
        }
        _ => return mutate::bytes(rng, &b, others),
    }
    if rng.random_bool(0.3) {
        b = mutate::bytes(rng, &b, others);
    }
    b
}

fn png(rng: &mut Rng, b: &mut Vec<u8>) {
    let chunks = mutate::png_chunks(b);
    let (at, len) = chunks[rng.random_range(0..chunks.len())];
    match rng.random_range(0..4) {
        // The length field lies (the checksum no longer matches either).
        0 => set_field(b, at, 4, edge(rng), true),
        // IHDR: width, height, bit depth, colour type, interlace.
        1 => {
            let ihdr = chunks[0].0 + 8;
            let (off, w) = [(0, 4), (4, 4), (8, 1), (9, 1), (12, 1)][rng.random_range(0..5)];
            set_field(b, ihdr + off, w, edge(rng), true);
            mutate::png_fix_crc(b, chunks[0].0);
        }
        // The data edited, the checksum fixed: the decoder goes on.
        2 if len > 0 => {
            let k = at + 8 + rng.random_range(0..len);
            b[k] = rng.random();
            mutate::png_fix_crc(b, at);
        }
        // A chunk repeated (two IHDRs, an IDAT after IEND, ...).
        _ => {
            let end = (at + 12 + len).min(b.len());
            let chunk = b[at..end].to_vec();
            let to = chunks[rng.random_range(0..chunks.len())].0;
            b.splice(to..to, chunk);
        }
    }
}

fn jpeg(rng: &mut Rng, b: &mut [u8]) {
    // Markers with a length: (offset of the marker, its length).
    let mut segs = Vec::new();
    let mut at = 2;
    while at + 4 <= b.len() && b[at] == 0xff {
        let m = b[at + 1];
        let len = u16::from_be_bytes([b[at + 2], b[at + 3]]) as usize;
        segs.push((at, m));
        if m == 0xda {
            break;
        }
        at += 2 + len;
    }
    if segs.is_empty() {
        return;
    }
    let (at, m) = segs[rng.random_range(0..segs.len())];
    if matches!(m, 0xc0..=0xc2) && rng.random_bool(0.6) {
        // Precision, height, width, components.
        let (off, w) = [(4, 1), (5, 2), (7, 2), (9, 1)][rng.random_range(0..4)];
        set_field(b, at + off, w, edge(rng), true);
    } else {
        set_field(b, at + 2, 2, edge(rng), true);
    }
}
