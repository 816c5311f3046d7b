//! Photos users send (`/edit image:`, `/imagine image:`, "Edit this face"):
//! downloaded only from allowed hosts, bounded in size and time, and
//! checked before and while decoding.
//!
//! The order of the checks is the point: what Discord tells us about the
//! file (host, declared type, size and dimensions) is checked before any
//! byte is fetched, so most bad uploads get an ephemeral refusal at once;
//! the download is capped by bytes and by a deadline and never follows a
//! redirect off the allowlist; the file's own header (format, dimensions)
//! is read before any pixel is decoded, and the decoder runs under the
//! same limits as every other user image (`image_io::decode_limits`).
//! What reaches the engine is a plain 8-bit RGB PNG we encoded ourselves.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use image::{DynamicImage, ImageDecoder, ImageFormat};
use reqwest::Url;

use crate::image_io::{decode_limits, MAX_DECODE_SIDE};

/// Formats the decoder is built with (see `image`'s features in Cargo.toml).
const FORMATS: &str = "PNG, JPEG, WebP, GIF or BMP";

/// Photos larger than this on their short side are reduced before they go
/// to the engine: CLIP looks at 224 px anyway, and a 40-megapixel PNG would
/// cost seconds to encode and decode again for nothing.
const MAX_SHORT_SIDE: u32 = 1024;

/// One allowed origin: scheme, host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostRule {
    https: bool,
    host: String,
    port: u16,
}

/// Where photos may be downloaded from (`discord.attachment_hosts`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList(Vec<HostRule>);

impl AllowList {
    /// Parse `host`, `host:port` (https) or `http://host[:port]` entries.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut rules = Vec::new();
        for e in entries {
            let e = e.trim();
            let (https, rest) = match e.split_once("://") {
                None => (true, e),
                Some(("https", r)) => (true, r),
                Some(("http", r)) => (false, r),
                Some((s, _)) => {
                    return Err(format!(
                        "discord.attachment_hosts: \"{e}\" has the scheme {s}; use https (the \
                         default) or http"
                    ))
                }
            };
            let scheme = if https { "https" } else { "http" };
            let url = Url::parse(&format!("{scheme}://{rest}"))
                .ok()
                .filter(|u| u.path() == "/" && u.query().is_none() && u.username().is_empty());
            let Some((host, port)) = url.and_then(|u| {
                let port = u.port_or_known_default()?;
                Some((u.host_str()?.to_ascii_lowercase(), port))
            }) else {
                return Err(format!(
                    "discord.attachment_hosts: \"{e}\" is not a host name; write it like \
                     cdn.discordapp.com or http://127.0.0.1:8080"
                ));
            };
            rules.push(HostRule { https, host, port });
        }
        Ok(AllowList(rules))
    }

    pub fn allows(&self, url: &Url) -> bool {
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => return false,
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return false;
        };
        // Credentials in the address are never ours to send.
        if !url.username().is_empty() || url.password().is_some() {
            return false;
        }
        self.0
            .iter()
            .any(|r| r.https == https && r.port == port && r.host.eq_ignore_ascii_case(host))
    }
}

/// An attachment as Discord describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Photo {
    pub url: String,
    pub filename: String,
    pub size: u64,
    pub content_type: Option<String>,
    pub width: Option<u32>,
    pub height: Option<u32>,
}

impl From<&serenity::all::Attachment> for Photo {
    fn from(a: &serenity::all::Attachment) -> Self {
        Photo {
            url: a.url.clone(),
            filename: a.filename.clone(),
            size: a.size as u64,
            content_type: a.content_type.clone(),
            width: a.width,
            height: a.height,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_pixels: u64,
    pub timeout: Duration,
}

/// Downloads photos from the allowlist.
pub struct Fetcher {
    client: reqwest::Client,
    allow: Arc<AllowList>,
    pub limits: Limits,
}

/// Content types of the formats we decode; anything else `image/...`
/// (HEIC, AVIF, SVG, TIFF) is refused with the list.
fn supported_type(ct: &str) -> bool {
    matches!(
        ct,
        "image/png"
            | "image/jpeg"
            | "image/jpg"
            | "image/pjpeg"
            | "image/webp"
            | "image/gif"
            | "image/bmp"
            | "image/x-bmp"
            | "image/x-ms-bmp"
            | "image/apng"
    )
}

fn mime(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn megabytes(n: u64) -> String {
    format!("{:.1} MB", n as f64 / 1e6)
}

fn pixels_text(max: u64) -> String {
    format!("{:.0} megapixels", max as f64 / 1e6)
}

fn too_many_pixels(w: u64, h: u64, max: u64) -> Option<String> {
    let side = MAX_DECODE_SIDE as u64;
    (w * h > max || w > side || h > side).then(|| {
        format!(
            "The photo is {w}×{h} pixels; the limit is {} (at most {side} pixels a side). Send a \
             smaller version of it.",
            pixels_text(max)
        )
    })
}

/// The sizes of a GIF's first `n` frames, read from their image
/// descriptors without decoding. A walk that meets something it does not
/// know (a damaged or cut file) stops there: the decoder then says what is
/// wrong.
fn gif_frame_sizes(b: &[u8], n: usize) -> Vec<(u16, u16)> {
    let u16_at = |i: usize| b.get(i..i + 2).map(|x| u16::from_le_bytes([x[0], x[1]]));
    let table = |flags: u8| {
        if flags & 0x80 != 0 {
            3usize << ((flags & 7) + 1)
        } else {
            0
        }
    };
    // Data sub-blocks (a length byte, then that many bytes) up to a 0.
    let skip_blocks = |mut i: usize| loop {
        match b.get(i) {
            Some(0) => return Some(i + 1),
            Some(&len) => i += 1 + len as usize,
            None => return None,
        }
    };
    let mut sizes = Vec::new();
    let Some(&flags) = b.get(10) else {
        return sizes;
    };
    let mut i = 13 + table(flags);
    while sizes.len() < n {
        match b.get(i) {
            // An extension: its label, then its sub-blocks.
            Some(0x21) => match skip_blocks(i + 2) {
                Some(next) => i = next,
                None => break,
            },
            // An image: left, top, width, height, flags, a colour table,
            // the LZW code size, then the data's sub-blocks.
            Some(0x2c) => {
                let (Some(w), Some(h), Some(&f)) = (u16_at(i + 5), u16_at(i + 7), b.get(i + 9))
                else {
                    break;
                };
                sizes.push((w, h));
                match skip_blocks(i + 10 + table(f) + 1) {
                    Some(next) => i = next,
                    None => break,
                }
            }
            _ => break,
        }
    }
    sizes
}

impl Fetcher {
    pub fn new(allow: AllowList, limits: Limits) -> Result<Self, String> {
        let allow = Arc::new(allow);
        let policy_allow = allow.clone();
        let client = reqwest::Client::builder()
            // A redirect is followed only to another allowed host (Discord's
            // CDN may move files between its own hosts), and at most twice;
            // otherwise the 3xx answer itself comes back and is refused.
            .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() < 3 && policy_allow.allows(attempt.url()) {
                    attempt.follow()
                } else {
                    attempt.stop()
                }
            }))
            // Straight to the allowed host, whatever proxy the environment names.
            .no_proxy()
            .connect_timeout(limits.timeout)
            .build()
            .map_err(|e| format!("cannot build the download client: {e}"))?;
        Ok(Fetcher {
            client,
            allow,
            limits,
        })
    }

    /// What Discord says about the file, checked before downloading it; the
    /// error is the reply to send.
    pub fn precheck(&self, p: &Photo) -> Result<Url, String> {
        let name = super::text::escape(&super::text::clean_input(&p.filename));
        let url = Url::parse(&p.url).map_err(|_| {
            "The attachment has no usable address; upload the photo again.".to_string()
        })?;
        if !self.allow.allows(&url) {
            return Err(format!(
                "I only download photos from Discord's own attachment hosts, and this one is on \
                 `{}`. Upload the photo to Discord itself (attach the file) instead of linking it.",
                super::text::escape(url.host_str().unwrap_or("?"))
            ));
        }
        if let Some(ct) = p.content_type.as_deref().map(mime) {
            if !ct.starts_with("image/") {
                return Err(format!(
                    "`{name}` is not an image ({}); attach a photo as {FORMATS}.",
                    super::text::escape(&ct)
                ));
            }
            if !supported_type(&ct) {
                return Err(format!(
                    "`{name}` is a {} image, which I cannot read; convert it to {FORMATS} (a \
                     screenshot of it works too).",
                    super::text::escape(&ct)
                ));
            }
        }
        if p.size > self.limits.max_bytes {
            return Err(format!(
                "The photo is {}; the limit is {}. Send a smaller version (lower resolution or \
                 quality).",
                megabytes(p.size),
                megabytes(self.limits.max_bytes)
            ));
        }
        if let (Some(w), Some(h)) = (p.width, p.height) {
            if let Some(why) = too_many_pixels(w as u64, h as u64, self.limits.max_pixels) {
                return Err(why);
            }
        }
        Ok(url)
    }

    /// Download a prechecked photo: at most `max_bytes`, within `timeout`.
    pub async fn download(&self, url: Url) -> Result<Vec<u8>, String> {
        let limit = self.limits.max_bytes;
        let secs = self.limits.timeout.as_secs_f64();
        let secs = if secs.fract() == 0.0 {
            format!("{secs:.0}")
        } else {
            format!("{secs:.1}")
        };
        let fetch = async {
            let resp = self.client.get(url).send().await.map_err(|e| {
                if e.is_timeout() || e.is_connect() {
                    "The photo could not be downloaded (Discord's file server did not answer); \
                     please try again in a moment."
                        .to_string()
                } else {
                    format!(
                        "The photo could not be downloaded ({}); please try again.",
                        e.without_url()
                    )
                }
            })?;
            let status = resp.status();
            if status.is_redirection() {
                return Err(
                    "The photo's address sent me to a host that is not one of Discord's, \
                            so I did not follow it. Upload the file to Discord itself."
                        .to_string(),
                );
            }
            if !status.is_success() {
                return Err(format!(
                    "The photo could not be downloaded (the file server answered {}); upload it \
                     again.",
                    status.as_u16()
                ));
            }
            if let Some(ct) = resp
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(mime)
            {
                // Octet-stream is what some servers say for anything; the
                // file's own header decides below.
                if !ct.starts_with("image/") && ct != "application/octet-stream" {
                    return Err(format!(
                        "That file is not an image (it is {}); attach a photo as {FORMATS}.",
                        super::text::escape(&ct)
                    ));
                }
            }
            let too_big = || {
                format!(
                    "The photo is larger than the limit of {}; send a smaller version.",
                    megabytes(limit)
                )
            };
            if resp.content_length().is_some_and(|n| n > limit) {
                return Err(too_big());
            }
            let mut resp = resp;
            let mut body = Vec::new();
            loop {
                match resp.chunk().await {
                    Ok(Some(c)) => {
                        if body.len() as u64 + c.len() as u64 > limit {
                            return Err(too_big());
                        }
                        body.extend_from_slice(&c);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        return Err("The download of the photo was cut off before the end; \
                                    please try again."
                            .to_string())
                    }
                }
            }
            if body.is_empty() {
                return Err("The photo file is empty; upload it again.".to_string());
            }
            Ok(body)
        };
        match tokio::time::timeout(self.limits.timeout, fetch).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "The photo took longer than {secs} s to download, so I gave up; please try \
                 again, or send a smaller version."
            )),
        }
    }
}

/// A checked photo, ready for the engine.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// 8-bit RGB PNG.
    pub png: Vec<u8>,
    /// What the user should know (an animation reduced to its first frame,
    /// a black-and-white photo).
    pub notes: Vec<String>,
}

/// Check the file's format and dimensions from its header, decode it
/// within the limits, and encode it again as a plain RGB PNG. The error is
/// the reply to send. CPU-bound: run it on a blocking thread.
pub fn prepare(bytes: &[u8], max_pixels: u64) -> Result<Prepared, String> {
    let format = image::guess_format(bytes).ok().filter(|f| {
        matches!(
            f,
            ImageFormat::Png
                | ImageFormat::Jpeg
                | ImageFormat::WebP
                | ImageFormat::Gif
                | ImageFormat::Bmp
        )
    });
    let Some(format) = format else {
        return Err(format!(
            "That file is not an image I can read; attach a photo as {FORMATS}."
        ));
    };
    let damaged = |e: image::ImageError| match e {
        image::ImageError::Limits(_) => format!(
            "The photo claims to be larger than I decode (more than {MAX_DECODE_SIDE} pixels a \
             side, or more memory than allowed); send a smaller version of it, at most {}.",
            pixels_text(max_pixels)
        ),
        other => format!(
            "The photo file is damaged or incomplete, so I cannot read it ({other}); upload it \
             again, or save it anew as PNG or JPEG."
        ),
    };
    let reader = || {
        let mut r = image::ImageReader::with_format(Cursor::new(bytes), format);
        r.limits(decode_limits());
        r
    };
    // The header alone: a few bytes that claim 100000 x 100000 pixels are
    // refused here, before any allocation.
    let (w, h) = reader().into_dimensions().map_err(damaged)?;
    if w == 0 || h == 0 {
        return Err("The photo has no pixels (0 wide or high); send another one.".into());
    }
    if let Some(why) = too_many_pixels(w as u64, h as u64, max_pixels) {
        return Err(why);
    }
    let mut notes = Vec::new();
    let first_frame = "It is an animation: I used its first frame.".to_string();
    let img = match format {
        ImageFormat::Gif => {
            // The header's size is the screen's; each frame has its own,
            // and the decoder allocates a whole frame (up to 1 GiB within
            // the decode limits) whatever the screen. The two frames it
            // decodes are held to the same bound as the screen.
            for (fw, fh) in gif_frame_sizes(bytes, 2) {
                if let Some(why) = too_many_pixels(fw as u64, fh as u64, max_pixels) {
                    return Err(format!("A frame of the GIF is larger than the GIF: {why}"));
                }
            }
            let mut dec =
                image::codecs::gif::GifDecoder::new(Cursor::new(bytes)).map_err(damaged)?;
            dec.set_limits(decode_limits()).map_err(damaged)?;
            let mut frames = image::AnimationDecoder::into_frames(dec);
            let first = frames
                .next()
                .ok_or_else(|| "The GIF has no frames; send another photo.".to_string())?
                .map_err(damaged)?;
            // Peeking at the second frame tells an animation from a still
            // GIF; its size is bounded by the header checked above.
            if frames.next().is_some() {
                notes.push(first_frame);
            }
            DynamicImage::ImageRgba8(first.into_buffer())
        }
        _ => {
            let animated = match format {
                ImageFormat::Png => image::codecs::png::PngDecoder::new(Cursor::new(bytes))
                    .and_then(|d| d.is_apng())
                    .unwrap_or(false),
                ImageFormat::WebP => image::codecs::webp::WebPDecoder::new(Cursor::new(bytes))
                    .map(|d| d.has_animation())
                    .unwrap_or(false),
                _ => false,
            };
            if animated {
                notes.push(first_frame);
            }
            reader().decode().map_err(damaged)?
        }
    };
    if matches!(
        img,
        DynamicImage::ImageLuma8(_)
            | DynamicImage::ImageLumaA8(_)
            | DynamicImage::ImageLuma16(_)
            | DynamicImage::ImageLumaA16(_)
    ) {
        notes.push(
            "It is a black-and-white photo: the generator only makes colour images, so the \
             result is in colour."
                .into(),
        );
    }
    // Exactly the conversion CLIP's preprocessing applies (16-bit to 8,
    // transparency over white), so the engine sees what CLIP would.
    let mut rgb = crate::image_io::convert_rgb(&img);
    drop(img);
    let short = rgb.width().min(rgb.height());
    if short > MAX_SHORT_SIDE {
        let k = MAX_SHORT_SIDE as f64 / short as f64;
        let (nw, nh) = (
            ((rgb.width() as f64 * k).round() as u32).max(1),
            ((rgb.height() as f64 * k).round() as u32).max(1),
        );
        rgb = image::imageops::resize(&rgb, nw, nh, image::imageops::FilterType::Triangle);
    }
    let png = crate::image_io::encode_png(&rgb).map_err(|e| e.to_string())?;
    Ok(Prepared { png, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_matches_scheme_host_and_port() {
        let a = AllowList::parse(&["cdn.discordapp.com".into(), "http://127.0.0.1:8080".into()])
            .unwrap();
        let ok = |u: &str| a.allows(&Url::parse(u).unwrap());
        assert!(ok("https://cdn.discordapp.com/attachments/1/2/a.png?ex=1"));
        assert!(ok("https://CDN.discordapp.com:443/a.png"));
        assert!(!ok("http://cdn.discordapp.com/a.png"), "plain http");
        assert!(!ok("https://cdn.discordapp.com:8443/a.png"), "other port");
        assert!(!ok("https://cdn.discordapp.com.evil.test/a.png"));
        assert!(!ok("https://user:pw@cdn.discordapp.com/a.png"));
        assert!(ok("http://127.0.0.1:8080/f/a.png"));
        assert!(!ok("http://127.0.0.1:8081/f/a.png"));
        assert!(!ok("https://127.0.0.1:8080/f/a.png"));
        assert!(!ok("ftp://cdn.discordapp.com/a.png"));
        for bad in ["ftp://x", "a b", "http://x/path", ""] {
            assert!(AllowList::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }

    fn png(img: DynamicImage) -> Vec<u8> {
        let mut out = Cursor::new(Vec::new());
        img.write_to(&mut out, ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn prepare_checks_headers_and_converts() {
        let rgb = DynamicImage::ImageRgb8(image::RgbImage::from_fn(8, 6, |x, y| {
            image::Rgb([x as u8 * 30, y as u8 * 40, 7])
        }));
        let p = prepare(&png(rgb.clone()), 1000).unwrap();
        assert!(p.notes.is_empty());
        assert_eq!(
            image::load_from_memory(&p.png).unwrap().to_rgb8(),
            rgb.to_rgb8()
        );

        let grey = DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(
            4,
            4,
            image::Luma([40000u16]),
        ));
        let p = prepare(&png(grey), 1000).unwrap();
        assert!(p.notes[0].contains("black-and-white"), "{:?}", p.notes);
        let back = image::load_from_memory(&p.png).unwrap();
        assert_eq!(back.color(), image::ColorType::Rgb8);

        assert!(prepare(&png(rgb.clone()), 47)
            .unwrap_err()
            .contains("8×6 pixels"));
        assert!(prepare(b"GIF89a but not really", 1000).is_err());

        // A still GIF of 4x4 whose one frame claims 200x100 (more than the
        // 1,000 pixels allowed): refused before decoding.
        let mut gif = b"GIF89a\x04\x00\x04\x00\x00\x00\x00".to_vec();
        gif.extend_from_slice(b"\x21\xf9\x04\x00\x00\x00\x00\x00");
        gif.extend_from_slice(b"\x2c\x00\x00\x00\x00\xc8\x00\x64\x00\x00");
        gif.extend_from_slice(b"\x02\x02\x44\x01\x00\x3b");
        assert_eq!(gif_frame_sizes(&gif, 2), vec![(200, 100)]);
        let e = prepare(&gif, 1000).unwrap_err();
        assert!(
            e.contains("frame of the GIF") && e.contains("200×100"),
            "{e}"
        );
        assert!(prepare(b"plain text", 1000)
            .unwrap_err()
            .contains("not an image"));
        let full = png(rgb);
        let cut = &full[..full.len() - 20];
        assert!(prepare(cut, 1000).unwrap_err().contains("damaged"));
    }
}
