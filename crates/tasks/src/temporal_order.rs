//! Temporal order, Hochreiter & Schmidhuber 1997 experiment 6a, scaled to any length.

use crate::{Evaluation, Sample, SampleRng, Target};

/// Both marker windows, `[0.1T, 0.2T)` and `[0.5T, 0.6T)`, are non-empty from T = 10.
pub const MIN_SEQ_LEN: usize = 10;
/// Symbols a, b, c, d (fillers), X, Y (markers); inputs are one-hot over them.
pub const ALPHABET: usize = 6;
/// Printable names of the symbols.
pub const SYMBOLS: [char; ALPHABET] = ['a', 'b', 'c', 'd', 'X', 'Y'];
/// Index of X in the alphabet (Y follows it).
pub const MARKER_X: usize = 4;

/// The windows `[⌊0.1T⌋, ⌊0.2T⌋)` and `[⌊0.5T⌋, ⌊0.6T⌋)` of the two markers.
pub fn windows(seq_len: usize) -> [(usize, usize); 2] {
    [(seq_len / 10, seq_len / 5), (seq_len / 2, 3 * seq_len / 5)]
}

/// Random fillers, a marker (X or Y) at one position in each window. With 4 classes the
/// label is XX 0, XY 1, YX 2, YY 3; with 2 it is 1 when the markers differ.
pub fn sample(seq_len: usize, classes: usize, rng: &mut SampleRng) -> Sample {
    let mut ids: Vec<usize> = (0..seq_len).map(|_| rng.below(MARKER_X)).collect();
    let mut markers = [0usize; 2];
    for ((lo, hi), marker) in windows(seq_len).into_iter().zip(&mut markers) {
        let position = lo + rng.below(hi - lo);
        *marker = rng.below(2);
        ids[position] = MARKER_X + *marker;
    }
    let mut input = vec![0.0; seq_len * ALPHABET];
    for (step, &id) in ids.iter().enumerate() {
        input[step * ALPHABET + id] = 1.0;
    }
    let label = match classes {
        4 => 2 * markers[0] + markers[1],
        _ => usize::from(markers[0] != markers[1]),
    };
    Sample {
        input,
        target: Target::Class(label as u32),
    }
}

/// Sigmoid binary cross-entropy of one logit per sequence, and the accuracy.
pub fn evaluate_binary(logits: &[f32], targets: &[u32]) -> Evaluation {
    let (mut loss, mut correct) = (0.0, 0usize);
    for (&z, &y) in logits.iter().zip(targets) {
        let (z, y) = (f64::from(z), f64::from(y));
        // softplus(z) − y·z, written to stay finite for large |z|.
        loss += z.max(0.0) - y * z + (-z.abs()).exp().ln_1p();
        correct += usize::from((z > 0.0) == (y > 0.5));
    }
    let n = targets.len() as f64;
    Evaluation {
        loss: loss / n,
        metric: correct as f64 / n,
    }
}
