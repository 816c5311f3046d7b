//! The bot's results store after a crash or a bad disk (`bot::store::Store::open`:
//! redb's file, then our records and JSON rows in it). Seed: a store with
//! results, histories, a server's settings and quotas, as the bot writes
//! it. Mutations: the file header (redb's magic, god byte, page size,
//! commit slots) and page contents edited, the file cut at page
//! boundaries or anywhere. Property: the store opens (a file it cannot read
//! is set aside and a new one started) and then works: a new result is
//! saved and found again after reopening.

use std::path::Path;

use rand::Rng as _;

use clip2gan::bot::guild::GuildSettings;
use clip2gan::bot::store::{Record, Ref, Store};

use crate::harness::{Outcome, Rng};
use crate::mutate::{self, edge, set_field};

const NAME: &str = "results.redb";

pub fn seeds(dir: &Path) -> Vec<Vec<u8>> {
    let path = dir.join(NAME);
    {
        let store = Store::open(&path, 10, 100).unwrap().store;
        for k in 0..4u64 {
            let r = store
                .insert(Record::example(k % 2, 2, k as f32), k % 2, 0)
                .unwrap();
            store.push(k % 2, Ref { id: r.id, index: 1 }).unwrap();
        }
        store
            .set_guild(
                5,
                GuildSettings {
                    words: vec!["ugly".into()],
                    cooldown_s: Some(30),
                    ..Default::default()
                },
            )
            .unwrap();
        store.charge((5, 1), 1000, 20).unwrap().unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    vec![bytes]
}

/// Opens the bytes as the store at a fresh path in `dir` (emptied first).
pub fn check(bytes: &[u8], dir: &Path) -> Outcome {
    for e in std::fs::read_dir(dir).unwrap() {
        std::fs::remove_file(e.unwrap().path()).unwrap();
    }
    let path = dir.join(NAME);
    std::fs::write(&path, bytes).unwrap();
    let opened = match Store::open(&path, 10, 100) {
        Ok(o) => o,
        Err(e) => return Outcome::Refused(e.to_string()),
    };
    let store = opened.store;
    let before = store.len();
    let id = store
        .insert(Record::example(9, 1, 0.5), 9, 0)
        .unwrap_or_else(|e| panic!("a store that opened cannot save: {e}"))
        .id;
    drop(store);
    let again = Store::open(&path, 10, 100)
        .unwrap_or_else(|e| panic!("a store just written does not reopen: {e}"))
        .store;
    assert!(
        again.get(id).is_some(),
        "the result saved before reopening is gone"
    );
    assert!(again.len() >= before.min(100), "results lost on reopening");
    if opened.warnings.is_empty() {
        Outcome::Accepted
    } else {
        Outcome::Refused(opened.warnings.join("; "))
    }
}

pub fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seed.to_vec();
    const PAGE: usize = 4096;
    match rng.random_range(0..5) {
        // The header page: u8 to u64 fields at aligned offsets.
        0 | 1 => {
            let w = [1, 2, 4, 8][rng.random_range(0..4)];
            let at = rng.random_range(0..PAGE.min(b.len()) / w) * w;
            set_field(&mut b, at, w, edge(rng), false);
        }
        // A field inside a later page.
        2 => {
            let at = rng.random_range(0..b.len() / 8) * 8;
            set_field(&mut b, at, 8, edge(rng), false);
        }
        // Cut short, at a page boundary or anywhere.
        3 => {
            let pages = b.len() / PAGE;
            let cut = if rng.random_bool(0.5) && pages > 1 {
                rng.random_range(1..pages) * PAGE
            } else {
                rng.random_range(0..b.len())
            };
            b.truncate(cut);
        }
        _ => b = mutate::bytes(rng, &b, others),
    }
    b
}
