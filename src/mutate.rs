//! Damaged inputs for the fuzz tests: random bytes, or a valid encoding
//! with bits flipped, bytes set to edge values, cut short, grown by a huge
//! varint or length, or doubled. Seeded by the caller, so a failure
//! replays. Used by the decoders' unit tests and by `tests/fuzz.rs`.

use rand::rngs::StdRng;
use rand::Rng;

/// One damaged input: a quarter are random bytes (up to `64` long), the
/// rest are `valid` damaged one to three times.
pub fn damaged(rng: &mut StdRng, valid: &[u8]) -> Vec<u8> {
    if rng.random_ratio(1, 4) {
        let len = rng.random_range(0..64);
        return (0..len).map(|_| rng.random()).collect();
    }
    let mut bytes = valid.to_vec();
    for _ in 0..rng.random_range(1..4) {
        match rng.random_range(0..6) {
            0 if !bytes.is_empty() => {
                let i = rng.random_range(0..bytes.len());
                bytes[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !bytes.is_empty() => {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = [0x00, 0x01, 0x7f, 0x80, 0xff][rng.random_range(0..5)];
            }
            2 => bytes.truncate(rng.random_range(0..=bytes.len())),
            3 => {
                // A varint or little-endian length near its maximum.
                let i = rng.random_range(0..=bytes.len());
                let huge = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
                bytes.splice(i..i, huge.iter().copied());
            }
            4 if bytes.len() >= 4 => {
                let i = rng.random_range(0..=bytes.len() - 4);
                bytes[i..i + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            }
            _ => {
                let copy = bytes.clone();
                bytes.extend_from_slice(&copy);
            }
        }
    }
    bytes
}
