//! `.npy` latent files (`npy::parse_f32`, what `--latent` files and the
//! CLI's latent outputs go through): real z, w and W+ files, with the
//! header's dtype, order and shape edited (the header length fixed, so the
//! parser reads the edited text), or the version and header length lying.

use rand::Rng as _;

use clip2gan::npy::{parse_f32, to_bytes, Array};

use crate::harness::{Outcome, Rng};
use crate::mutate::{self, edge, set_field};

pub fn seeds() -> Vec<Vec<u8>> {
    let a = |shape: Vec<usize>| {
        let n = shape.iter().product::<usize>();
        to_bytes(&Array {
            data: (0..n).map(|i| (i as f32 * 0.37).sin()).collect(),
            shape,
        })
    };
    vec![
        a(vec![512]),
        a(vec![2, 512]),
        a(vec![1, 16, 64]),
        a(vec![3]),
    ]
}

pub fn check(bytes: &[u8]) -> Outcome {
    match parse_f32(bytes) {
        Ok(a) => {
            // The shape must describe the data exactly: callers build
            // tensors from the two.
            let n = a.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            assert_eq!(
                n,
                Some(a.data.len()),
                "shape {:?} vs {} values",
                a.shape,
                a.data.len()
            );
            Outcome::Accepted
        }
        Err(e) => Outcome::Refused(e),
    }
}

pub fn mutate(rng: &mut Rng, seed: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
    let header_len = u16::from_le_bytes([seed[8], seed[9]]) as usize;
    let (head, body) = seed.split_at(10 + header_len);
    match rng.random_range(0..6) {
        0 => {
            let mut b = seed.to_vec();
            b[6] = [0, 1, 2, 3, 4, 255][rng.random_range(0..6)];
            b
        }
        1 => {
            let mut b = seed.to_vec();
            set_field(&mut b, 8, 2, edge(rng), false);
            b
        }
        _ => {
            // The header text edited and its length fixed; the data cut or
            // grown now and then.
            let text = mutate::text(rng, &head[10..]);
            let mut b = head[..8].to_vec();
            b.extend_from_slice(&(text.len().min(65_535) as u16).to_le_bytes());
            b.extend_from_slice(&text);
            let mut data = body.to_vec();
            if rng.random_bool(0.2) {
                data.truncate(rng.random_range(0..=data.len()));
            }
            b.extend_from_slice(&data);
            if rng.random_bool(0.2) {
                b = mutate::bytes(rng, &b, others);
            }
            b
        }
    }
}
