//! What Discord sends the bot (`bot::commands::parse` for the slash
//! commands' options, `bot::guild::parse` for `/settings`,
//! `commands::parse_modal` for the edit dialogs, `render::Action::parse`
//! and `render::parse_morph` for the custom ids of buttons, old ones
//! included, and `commands::parse_ref` for result numbers), each deserialised
//! by serenity first as the gateway does. Seeds: every command with its
//! options, both dialogs, every button's id and result references.
//! Mutations edit the JSON node by node (option types and values, names,
//! nesting) and ids' numbers and separators.

use rand::Rng as _;
use serde_json::{json, Value};
use serenity::all::{CommandData, ModalInteractionData};

use clip2gan::bot::commands::{self, parse_modal, parse_ref};
use clip2gan::bot::render::{morph_id, parse_morph, Action};
use clip2gan::bot::store::Ref;
use clip2gan::bot::BotConfig;

use crate::harness::{Outcome, Rng};
use crate::mutate;

fn command(name: &str, options: Value) -> Value {
    json!({"command": {"id": "9001", "name": name, "type": 1, "options": options}})
}

fn opt(name: &str, kind: u8, value: Value) -> Value {
    json!({"name": name, "type": kind, "value": value})
}

fn sub(name: &str, options: Value) -> Value {
    json!({"name": name, "type": 1, "options": options})
}

pub fn seeds() -> Vec<Vec<u8>> {
    let photo = json!({"id": "77", "filename": "face.png", "size": 1000, "url": "http://127.0.0.1/f.png",
                       "proxy_url": "http://127.0.0.1/f.png", "content_type": "image/png",
                       "width": 64, "height": 64});
    let mut with_photo = command(
        "imagine",
        json!([
            opt("prompt", 3, json!("a smiling woman")),
            opt("image", 11, json!("77"))
        ]),
    );
    with_photo["command"]["resolved"] = json!({"attachments": {"77": photo}});
    let r = Ref { id: 12, index: 1 };
    let modal = |id: String| {
        json!({"modal": {"custom_id": id, "components": [
            {"type": 1, "components": [{"type": 4, "custom_id": "instruction", "value": "add smile"}]},
            {"type": 1, "components": [{"type": 4, "custom_id": "strength", "value": "0.8"}]}]}})
    };
    let mut v = vec![
        command(
            "imagine",
            json!([
                opt("prompt", 3, json!("a man with a beard")),
                opt("count", 4, json!(2)),
                opt("seed", 4, json!(123456))
            ]),
        ),
        with_photo,
        command(
            "edit",
            json!([
                opt("instruction", 3, json!("make older")),
                opt("strength", 10, json!(1.5))
            ]),
        ),
        command("undo", json!([])),
        command(
            "morph",
            json!([
                opt("from", 3, json!("#3")),
                opt("to", 3, json!("4.2")),
                opt("frames", 4, json!(8))
            ]),
        ),
        command("history", json!([])),
        command("settings", json!([sub("show", json!([]))])),
        command(
            "settings",
            json!([{"name": "blocklist", "type": 2, "options": [sub("add", json!([opt("word", 3, json!("ugly"))]))]}]),
        ),
        command(
            "settings",
            json!([sub("cooldown", json!([opt("seconds", 4, json!(30))]))]),
        ),
        command(
            "settings",
            json!([sub("quota", json!([opt("per_day", 4, json!(20))]))]),
        ),
        modal(Action::EditSubmit.custom_id(r)),
        modal(format!("{}5", commands::PHOTO_MODAL)),
        json!({"custom_id": morph_id(r, Ref { id: 13, index: 0 })}),
        json!({"ref": "12.3"}),
        json!({"ref": "#7"}),
    ];
    for a in [
        Action::Variations,
        Action::Reroll,
        Action::Edit,
        Action::Undo,
        Action::Delete,
        Action::Pick,
        Action::EditSubmit,
    ] {
        v.push(json!({ "custom_id": a.custom_id(r) }));
    }
    v.into_iter().map(|x| x.to_string().into_bytes()).collect()
}

pub fn check(input: &[u8], cfg: &BotConfig) -> Outcome {
    let Ok(v) = serde_json::from_slice::<Value>(input) else {
        return Outcome::Refused("not the test's framing".into());
    };
    let refused = |e: String| Outcome::Refused(e);
    if let Some(data) = v.get("command") {
        // Discord's payload as serenity reads it; what it refuses never
        // reaches the bot.
        let data: CommandData = match serde_json::from_value(data.clone()) {
            Ok(d) => d,
            Err(e) => return refused(format!("serenity: {e}")),
        };
        return match commands::parse(&data, cfg) {
            Ok(_) => Outcome::Accepted,
            Err(e) => refused(e),
        };
    }
    if let Some(data) = v.get("modal") {
        let data: ModalInteractionData = match serde_json::from_value(data.clone()) {
            Ok(d) => d,
            Err(e) => return refused(format!("serenity: {e}")),
        };
        return match parse_modal(&data, cfg) {
            Ok((_, instruction, strength)) => {
                assert!(!instruction.is_empty() && strength.is_finite());
                Outcome::Accepted
            }
            Err(e) => refused(e),
        };
    }
    if let Some(id) = v.get("custom_id").and_then(Value::as_str) {
        // An id that parses names what it would be written as again.
        if let Some((a, r)) = Action::parse(id) {
            assert_eq!(Action::parse(&a.custom_id(r)), Some((a, r)));
            return Outcome::Accepted;
        }
        if let Some((a, b)) = parse_morph(id) {
            assert_eq!(parse_morph(&morph_id(a, b)), Some((a, b)));
            return Outcome::Accepted;
        }
        return refused("not a button of this bot".into());
    }
    if let Some(s) = v.get("ref").and_then(Value::as_str) {
        return match parse_ref(s) {
            Some(_) => Outcome::Accepted,
            None => refused("not a result number".into()),
        };
    }
    refused("nothing to parse".into())
}

pub fn mutate(rng: &mut Rng, seed: &[u8], _others: &[Vec<u8>]) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(seed).unwrap();
    let text_key = ["custom_id", "ref"]
        .into_iter()
        .find(|k| v.get(*k).is_some());
    match text_key {
        Some(k) if rng.random_bool(0.7) => {
            let s = v[k].as_str().unwrap_or_default().to_string();
            let edited = if rng.random_bool(0.3) {
                let seps = [":", ".", "/", " ", "#", "::", ""];
                s.replacen(
                    ':',
                    seps[rng.random_range(0..seps.len())],
                    rng.random_range(1..3),
                )
            } else {
                String::from_utf8_lossy(&mutate::text(rng, s.as_bytes())).into_owned()
            };
            v[k] = Value::String(edited);
        }
        _ => v = mutate::json(rng, &v),
    }
    v.to_string().into_bytes()
}
