//! What the bot's messages look like: the text and buttons of a result
//! (user text in it cleaned and escaped by [`super::text`]), and its attached image (a grid for
//! several images, shrunk until it fits the interaction's size limit); the
//! `/history` grid and the morph animation likewise.

use serenity::all::{ButtonStyle, CreateActionRow, CreateButton};

use super::config::MAX_IMAGES;
use super::store::{Origin, Record, Ref, ResultId};
use super::text::{clean_input, escape, truncate};

/// Images in the `/history` grid: two rows of "Use N" buttons.
pub const HISTORY_SHOWN: usize = 8;

/// The text of a message showing a result (or one image of it).
pub fn result_content(rec: &Record, shown: Option<usize>, note: Option<&str>) -> String {
    let prompt = escape(&rec.prompt);
    // Lines that began with a photo have no prompt.
    let prompt_part = if rec.prompt.is_empty() {
        String::new()
    } else {
        format!("prompt: {prompt} · ")
    };
    let mut head = match &rec.origin {
        Origin::Imagine { seed, count } => format!(
            "**/imagine** {prompt}\nseed `{seed}` · {count} image{} · result #{}",
            if *count == 1 { "" } else { "s" },
            rec.id
        ),
        Origin::Edit {
            instruction,
            strength,
        } => format!(
            "**/edit** {} · strength `{strength}` · of {}\n{prompt_part}result #{}",
            escape(instruction),
            parent_text(rec.parent),
            rec.id
        ),
        Origin::Variations { seed } => format!(
            "**Variations** of {} · seed `{seed}`\n{prompt_part}result #{}",
            parent_text(rec.parent),
            rec.id
        ),
        Origin::Photo { filename } => format!(
            "**Photo** `{}` reimagined · result #{}",
            escape(&clean_input(filename)),
            rec.id
        ),
        Origin::Refined { steps } => format!(
            "**Refined** {} · {steps} steps\n{prompt_part}result #{}",
            parent_text(rec.parent),
            rec.id
        ),
    };
    if let Some(k) = shown.filter(|_| rec.latents.len() > 1) {
        head.push_str(&format!(" · image {} of {}", k + 1, rec.latents.len()));
    }
    head.push_str(&format!(" · by <@{}>", rec.owner));
    if let Some(n) = note {
        head.push('\n');
        head.push_str(n);
    }
    truncate(head)
}

fn parent_text(p: Option<Ref>) -> String {
    match p {
        Some(r) => format!("#{} image {}", r.id, r.index + 1),
        None => "an earlier image".into(),
    }
}

/// Button actions; the custom id carries the image it acts on, so a button
/// works on its own message's image, whoever presses it and however old.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Variations,
    Reroll,
    Edit,
    Undo,
    Delete,
    Pick,
    /// Quality mode on one image.
    Refine,
    /// Quality mode on every image of a grid.
    RefineAll,
    /// The edit modal was submitted.
    EditSubmit,
}

const PREFIX: &str = "c2g";

impl Action {
    fn code(self) -> &'static str {
        match self {
            Action::Variations => "var",
            Action::Reroll => "reroll",
            Action::Edit => "edit",
            Action::Undo => "undo",
            Action::Delete => "del",
            Action::Pick => "pick",
            Action::Refine => "refine",
            Action::RefineAll => "refineall",
            Action::EditSubmit => "editm",
        }
    }

    pub fn custom_id(self, r: Ref) -> String {
        format!("{PREFIX}:{}:{}:{}", self.code(), r.id, r.index)
    }

    pub fn parse(id: &str) -> Option<(Action, Ref)> {
        let mut parts = id.split(':');
        if parts.next()? != PREFIX {
            return None;
        }
        let action = match parts.next()? {
            "var" => Action::Variations,
            "reroll" => Action::Reroll,
            "edit" => Action::Edit,
            "undo" => Action::Undo,
            "del" => Action::Delete,
            "pick" => Action::Pick,
            "refine" => Action::Refine,
            "refineall" => Action::RefineAll,
            "editm" => Action::EditSubmit,
            _ => return None,
        };
        let id: ResultId = parts.next()?.parse().ok()?;
        let index: usize = parts.next()?.parse().ok()?;
        if parts.next().is_some() || index >= MAX_IMAGES {
            return None;
        }
        Some((action, Ref { id, index }))
    }
}

/// The Morph button's id carries both images: `c2g:morph:A:i:B:j`.
pub fn morph_id(a: Ref, b: Ref) -> String {
    format!("{PREFIX}:morph:{}:{}:{}:{}", a.id, a.index, b.id, b.index)
}

pub fn parse_morph(id: &str) -> Option<(Ref, Ref)> {
    let rest = id.strip_prefix(PREFIX)?.strip_prefix(":morph:")?;
    let v: Vec<u64> = rest
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    let [a, ai, b, bi] = v[..] else { return None };
    if ai as usize >= MAX_IMAGES || bi as usize >= MAX_IMAGES {
        return None;
    }
    Some((
        Ref {
            id: a,
            index: ai as usize,
        },
        Ref {
            id: b,
            index: bi as usize,
        },
    ))
}

fn button(action: Action, r: Ref, label: &str, style: ButtonStyle) -> CreateButton {
    CreateButton::new(action.custom_id(r))
        .label(label)
        .style(style)
}

/// Buttons under a result. A grid gets one pick button per image (the
/// other actions need one image), re-roll and delete; one image gets
/// variations, re-roll (for `/imagine` results), edit, undo and delete.
pub fn buttons(rec: &Record, shown: Option<usize>) -> Vec<CreateActionRow> {
    let first = Ref {
        id: rec.id,
        index: 0,
    };
    let reroll = matches!(rec.origin, Origin::Imagine { .. });
    let delete = button(Action::Delete, first, "Delete", ButtonStyle::Danger);
    match shown {
        None if rec.latents.len() > 1 => {
            let picks = (0..rec.latents.len())
                .map(|k| {
                    button(
                        Action::Pick,
                        Ref {
                            id: rec.id,
                            index: k,
                        },
                        &format!("Use {}", k + 1),
                        ButtonStyle::Secondary,
                    )
                })
                .collect();
            let mut second = Vec::new();
            if reroll {
                second.push(button(
                    Action::Reroll,
                    first,
                    "Re-roll",
                    ButtonStyle::Primary,
                ));
            }
            second.push(button(
                Action::RefineAll,
                first,
                "Refine",
                ButtonStyle::Success,
            ));
            second.push(delete);
            vec![
                CreateActionRow::Buttons(picks),
                CreateActionRow::Buttons(second),
            ]
        }
        _ => {
            let r = Ref {
                id: rec.id,
                index: shown.unwrap_or(0),
            };
            let mut row = vec![button(
                Action::Variations,
                r,
                "Variations",
                ButtonStyle::Primary,
            )];
            if reroll {
                row.push(button(
                    Action::Reroll,
                    first,
                    "Re-roll",
                    ButtonStyle::Primary,
                ));
            }
            row.push(button(Action::Edit, r, "Edit…", ButtonStyle::Secondary));
            row.push(button(Action::Undo, r, "Undo", ButtonStyle::Secondary));
            row.push(delete);
            // Discord puts at most 5 buttons in a row.
            let quality = vec![button(Action::Refine, r, "Refine", ButtonStyle::Success)];
            vec![
                CreateActionRow::Buttons(row),
                CreateActionRow::Buttons(quality),
            ]
        }
    }
}

/// A short description of one image, for lists (`/history`).
pub fn describe(rec: &Record, index: usize) -> String {
    let short = |s: &str| {
        let s = clean_input(s);
        let cut: String = s.chars().take(60).collect();
        let more = if cut.len() < s.len() { "…" } else { "" };
        format!("{}{more}", escape(&cut))
    };
    let what = match &rec.origin {
        Origin::Imagine { .. } => format!("/imagine {}", short(&rec.prompt)),
        Origin::Edit { instruction, .. } => format!("/edit {}", short(instruction)),
        Origin::Variations { .. } => "a variation".to_string(),
        Origin::Photo { filename } => format!("photo `{}`", short(filename)),
        Origin::Refined { .. } => format!("refined {}", short(&rec.prompt)),
    };
    if rec.latents.len() > 1 {
        format!("#{} image {}: {what}", rec.id, index + 1)
    } else {
        format!("#{}: {what}", rec.id)
    }
}

/// The `/history` message: one line per image (newest first).
pub fn history_content(user: u64, lines: &[String]) -> String {
    let mut out = format!("**Recent images of <@{user}>**, newest first:\n");
    for (k, l) in lines.iter().enumerate() {
        out.push_str(&format!("{}. {l}\n", k + 1));
    }
    out.push_str("**Use N** makes one your current image (for `/edit` and the buttons)");
    if lines.len() >= 2 {
        out.push_str("; **Morph 2 → 1** animates from the second to the newest");
    }
    out.push('.');
    truncate(out)
}

/// "Use N" for each image (rows of four), and Morph for the newest two.
pub fn history_buttons(refs: &[Ref]) -> Vec<CreateActionRow> {
    let mut rows: Vec<CreateActionRow> = refs
        .chunks(4)
        .enumerate()
        .map(|(row, chunk)| {
            CreateActionRow::Buttons(
                chunk
                    .iter()
                    .enumerate()
                    .map(|(k, r)| {
                        button(
                            Action::Pick,
                            *r,
                            &format!("Use {}", 4 * row + k + 1),
                            ButtonStyle::Secondary,
                        )
                    })
                    .collect(),
            )
        })
        .collect();
    if refs.len() >= 2 {
        rows.push(CreateActionRow::Buttons(vec![CreateButton::new(morph_id(
            refs[1], refs[0],
        ))
        .label("Morph 2 → 1")
        .style(ButtonStyle::Primary)]));
    }
    rows
}

/// The morph message's text.
pub fn morph_content(user: u64, a: Ref, b: Ref, frames: usize, note: Option<&str>) -> String {
    let mut out = format!(
        "**Morph** from #{} image {} to #{} image {} · {frames} frames · by <@{user}>",
        a.id,
        a.index + 1,
        b.id,
        b.index + 1
    );
    if let Some(n) = note {
        out.push('\n');
        out.push_str(n);
    }
    truncate(out)
}

/// An animated GIF that fits `limit` bytes: the engine's own when it fits,
/// else its frames halved in size until it does (the motion is the point,
/// so frames are never dropped).
pub fn fit_gif(gif: Vec<u8>, limit: u32) -> Result<Vec<u8>, String> {
    use image::AnimationDecoder;
    let limit = if limit == 0 { 10 << 20 } else { limit as usize };
    if gif.len() <= limit {
        return Ok(gif);
    }
    let bad = |e: image::ImageError| format!("the animation could not be re-encoded ({e})");
    let frames = image::codecs::gif::GifDecoder::new(std::io::Cursor::new(&gif))
        .map_err(bad)?
        .into_frames()
        .collect_frames()
        .map_err(bad)?;
    let delay = frames
        .first()
        .map(|f| f.delay())
        .unwrap_or(image::Delay::from_numer_denom_ms(100, 1));
    let mut images: Vec<image::RgbaImage> = frames.into_iter().map(|f| f.into_buffer()).collect();
    loop {
        let w = images.first().map_or(0, |i| i.width());
        if w <= 16 {
            return Err(format!(
                "the animation does not fit Discord's upload limit of {limit} bytes here"
            ));
        }
        images = images
            .iter()
            .map(|i| {
                image::imageops::resize(
                    i,
                    i.width() / 2,
                    i.height() / 2,
                    image::imageops::FilterType::Triangle,
                )
            })
            .collect();
        let mut buf = Vec::new();
        {
            let mut enc = image::codecs::gif::GifEncoder::new_with_speed(&mut buf, 10);
            enc.set_repeat(image::codecs::gif::Repeat::Infinite)
                .map_err(bad)?;
            for img in &images {
                enc.encode_frame(image::Frame::from_parts(img.clone(), 0, 0, delay))
                    .map_err(bad)?;
            }
        }
        if buf.len() <= limit {
            return Ok(buf);
        }
    }
}

/// One PNG for the message: the image itself, or a grid of several; halved
/// until it fits `limit` bytes (Discord refuses larger uploads).
pub fn compose_png(images: &[Vec<u8>], limit: u32) -> Result<Vec<u8>, String> {
    // 0 would be a payload without the field; Discord's base limit is 10 MiB.
    let limit = if limit == 0 { 10 << 20 } else { limit as usize };
    if images.len() == 1 && images[0].len() <= limit {
        return Ok(images[0].clone());
    }
    let decoded = images
        .iter()
        .map(|b| image::load_from_memory(b).map(|i| i.to_rgb8()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the image could not be read back ({e})"))?;
    let mut img = crate::image_io::grid(&decoded);
    loop {
        let png = crate::image_io::encode_png(&img).map_err(|e| e.to_string())?;
        if png.len() <= limit {
            return Ok(png);
        }
        if img.width() <= 16 {
            return Err(format!(
                "the image does not fit Discord's upload limit of {limit} bytes here"
            ));
        }
        img = image::imageops::resize(
            &img,
            img.width() / 2,
            img.height() / 2,
            image::imageops::FilterType::Triangle,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ids_round_trip_and_reject_junk() {
        let r = Ref { id: 42, index: 3 };
        for a in [
            Action::Variations,
            Action::Reroll,
            Action::Edit,
            Action::Undo,
            Action::Delete,
            Action::Pick,
            Action::EditSubmit,
        ] {
            assert_eq!(Action::parse(&a.custom_id(r)), Some((a, r)));
            assert!(a.custom_id(r).len() <= 100, "Discord's limit");
        }
        let (a, b) = (Ref { id: 7, index: 0 }, Ref { id: 9, index: 3 });
        assert_eq!(parse_morph(&morph_id(a, b)), Some((a, b)));
        assert!(
            morph_id(
                Ref {
                    id: u64::MAX,
                    index: 3
                },
                Ref {
                    id: u64::MAX,
                    index: 3
                }
            )
            .len()
                <= 100
        );
        for bad in [
            "c2g:morph:1:0:2",
            "c2g:morph:1:0:2:4",
            "c2g:morph:1:0:2:0:0",
            "c2g:var:1:0",
        ] {
            assert_eq!(parse_morph(bad), None, "{bad}");
        }
        for bad in [
            "",
            "c2g",
            "c2g:var:1",
            "c2g:nope:1:0",
            "x:var:1:0",
            "c2g:var:1:9",
            "c2g:var:-1:0",
            "c2g:var:1:0:0",
        ] {
            assert_eq!(Action::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn long_content_is_cut_within_the_limit() {
        let rec = Record {
            id: 1,
            owner: 2,
            created_unix: 0,
            prompt: "*".repeat(1000),
            origin: Origin::Imagine { seed: 1, count: 1 },
            parent: None,
            latents: Vec::new(),
        };
        let c = result_content(&rec, None, None);
        assert!(c.chars().count() <= super::super::text::MAX_CONTENT);
    }
}
