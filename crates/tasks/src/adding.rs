//! The adding problem, in the form of Arjovsky et al. 2016.

use crate::{Evaluation, Sample, SampleRng, Target};

/// Two steps are needed for one marker in each half.
pub const MIN_SEQ_LEN: usize = 2;
/// Channel 0: the values; channel 1: the markers.
pub const INPUT_SIZE: usize = 2;
/// MSE of always predicting 1: the variance of a sum of two U[0, 1] values, 2/12.
pub const BASELINE_MSE: f64 = 1.0 / 6.0;
/// Hochreiter & Schmidhuber 1997 count a sequence right when |error| < 0.04.
pub const TOLERANCE: f64 = 0.04;

/// Channel 0 ~ U[0, 1); channel 1 has exactly two 1s, one uniform in `[0, T/2)` and one
/// uniform in `[T/2, T)`; the target is the sum of the two marked values.
pub fn sample(seq_len: usize, rng: &mut SampleRng) -> Sample {
    let mut input = vec![0.0; seq_len * INPUT_SIZE];
    for step in input.chunks_exact_mut(INPUT_SIZE) {
        step[0] = rng.uniform();
    }
    let half = seq_len / 2;
    let first = rng.below(half);
    let second = half + rng.below(seq_len - half);
    input[first * INPUT_SIZE + 1] = 1.0;
    input[second * INPUT_SIZE + 1] = 1.0;
    let target = input[first * INPUT_SIZE] + input[second * INPUT_SIZE];
    Sample {
        input,
        target: Target::Value(target),
    }
}

/// MSE, and the fraction of sequences within [`TOLERANCE`].
pub fn evaluate(outputs: &[f32], targets: &[f32]) -> Evaluation {
    let errors = outputs
        .iter()
        .zip(targets)
        .map(|(&y, &t)| f64::from(y) - f64::from(t));
    let (mut squared, mut close) = (0.0, 0usize);
    for error in errors {
        squared += error * error;
        close += usize::from(error.abs() < TOLERANCE);
    }
    let n = targets.len() as f64;
    Evaluation {
        loss: squared / n,
        metric: close as f64 / n,
    }
}
