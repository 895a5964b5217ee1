//! The per-sample random stream.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::Split;

/// Domain separation: another use of ChaCha with the same seed gives other numbers.
const DOMAIN: &[u8; 16] = b"rnnlab-tasks/v1\0";

/// The random stream of one sample: ChaCha8 keyed by (seed, split), stream number = the
/// sample's index. Streams of different indices or splits never overlap, and a sample
/// needs no other sample to be drawn first.
///
/// Only the raw ChaCha output is used (our own conversions below), so the data do not
/// change if `rand`'s distribution code does.
pub struct SampleRng(ChaCha8Rng);

impl SampleRng {
    /// The stream of sample `index` of `split` for `seed`.
    pub fn new(seed: u64, split: Split, index: u64) -> Self {
        let mut key = [0u8; 32];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8] = match split {
            Split::Train => 1,
            Split::Validation => 2,
            Split::Test => 3,
        };
        key[16..].copy_from_slice(DOMAIN);
        let mut rng = ChaCha8Rng::from_seed(key);
        rng.set_stream(index);
        Self(rng)
    }

    /// Uniform in [0, 1), on the 2⁻²⁴ grid (every value exact in f32).
    pub fn uniform(&mut self) -> f32 {
        (self.0.next_u32() >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
    }

    /// Uniform in `0..n` (multiply-shift; the bias is below n / 2⁶⁴).
    ///
    /// # Panics
    /// If `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "below(0)");
        ((u128::from(self.0.next_u64()) * n as u128) >> 64) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_keyed_by_seed_split_and_index() {
        let draw = |seed, split, index| {
            let mut rng = SampleRng::new(seed, split, index);
            (0..4).map(|_| rng.below(1 << 20)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1, Split::Train, 5), draw(1, Split::Train, 5));
        assert_ne!(draw(1, Split::Train, 5), draw(1, Split::Train, 6));
        assert_ne!(draw(1, Split::Train, 5), draw(1, Split::Validation, 5));
        assert_ne!(draw(1, Split::Train, 5), draw(2, Split::Train, 5));
    }

    #[test]
    fn conversions_stay_in_range() {
        let mut rng = SampleRng::new(0, Split::Test, 0);
        for _ in 0..10_000 {
            let u = rng.uniform();
            assert!((0.0..1.0).contains(&u));
            assert!(rng.below(3) < 3);
        }
        // below(1) is always 0; multiply-shift never reaches n.
        assert_eq!(rng.below(1), 0);
    }
}
