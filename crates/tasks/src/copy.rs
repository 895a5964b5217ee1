//! The copy task of Arjovsky et al. 2016.

use crate::{Evaluation, Sample, SampleRng, Target, softmax_cross_entropy};

/// One blank between the symbols and the delimiter at least.
pub const MIN_SEQ_LEN: usize = 1;
/// Symbols: 0 blank, 1..=8 data, 9 delimiter; inputs are one-hot over them.
pub const ALPHABET: usize = 10;
/// The blank symbol.
pub const BLANK: u32 = 0;
/// The delimiter ("now recall").
pub const DELIMITER: u32 = 9;
/// Number of data symbols to remember.
pub const RECALL: usize = 10;
/// Data symbols are 1..=8.
pub const DATA_SYMBOLS: usize = 8;

/// `T + 20`: the symbols, `T − 1` blanks, the delimiter, 10 blanks.
pub fn input_len(seq_len: usize) -> usize {
    seq_len + 2 * RECALL
}

/// Cross-entropy of predicting blanks, then a uniform guess over the 8 data symbols for
/// the last 10 steps: `10·ln 8 / (T + 20)`.
pub fn baseline(seq_len: usize) -> f64 {
    RECALL as f64 * (DATA_SYMBOLS as f64).ln() / input_len(seq_len) as f64
}

/// 10 symbols from 1..=8, `T − 1` blanks, the delimiter at step `T + 9`, 10 blanks;
/// target: `T + 10` blanks, then the 10 symbols.
pub fn sample(seq_len: usize, rng: &mut SampleRng) -> Sample {
    let len = input_len(seq_len);
    let symbols: Vec<u32> = (0..RECALL)
        .map(|_| 1 + rng.below(DATA_SYMBOLS) as u32)
        .collect();
    let mut ids = vec![BLANK; len];
    ids[..RECALL].copy_from_slice(&symbols);
    ids[seq_len + RECALL - 1] = DELIMITER;
    let mut input = vec![0.0; len * ALPHABET];
    for (step, &id) in ids.iter().enumerate() {
        input[step * ALPHABET + id as usize] = 1.0;
    }
    let mut target = vec![BLANK; len];
    target[len - RECALL..].copy_from_slice(&symbols);
    Sample {
        input,
        target: Target::Steps(target),
    }
}

/// Cross-entropy over every step, and the accuracy over the 10 recalled symbols.
pub fn evaluate(logits: &[f32], targets: &[u32], seq_len: usize) -> Evaluation {
    let len = input_len(seq_len);
    let (loss, correct) = softmax_cross_entropy(logits, targets, ALPHABET);
    let recalled: Vec<bool> = correct
        .chunks_exact(len)
        .flat_map(|seq| seq[len - RECALL..].to_vec())
        .collect();
    let metric = recalled.iter().filter(|&&c| c).count() as f64 / recalled.len() as f64;
    Evaluation { loss, metric }
}

/// Logits of the memoryless predictor: certain blank, then uniform over the data symbols.
pub fn baseline_outputs(seq_len: usize, batch_size: usize) -> Vec<f32> {
    // exp(−1e9) is 0: the softmax puts exactly probability 1 (or 1/8) where it should.
    const NEVER: f32 = -1e9;
    let len = input_len(seq_len);
    let mut blank = [NEVER; ALPHABET];
    blank[BLANK as usize] = 0.0;
    let mut guess = [0.0; ALPHABET];
    guess[BLANK as usize] = NEVER;
    guess[DELIMITER as usize] = NEVER;
    let one: Vec<f32> = (0..len)
        .flat_map(|step| if step < len - RECALL { blank } else { guess })
        .collect();
    one.repeat(batch_size)
}
