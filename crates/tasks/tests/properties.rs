//! Properties of every sample, statistics of many, and determinism of the streams.

use proptest::prelude::*;
use rnnlab_tasks::{Batch, Split, Target, Targets, Task, TaskConfig};

fn split() -> impl Strategy<Value = Split> {
    prop::sample::select(Split::ALL.to_vec())
}

/// Index of the 1 in each one-hot step.
fn ids(input: &[f32], alphabet: usize) -> Vec<usize> {
    input
        .chunks_exact(alphabet)
        .map(|step| {
            assert_eq!(
                step.iter().filter(|&&v| v == 1.0).count(),
                1,
                "one-hot: {step:?}"
            );
            assert_eq!(step.iter().filter(|&&v| v == 0.0).count(), alphabet - 1);
            step.iter().position(|&v| v == 1.0).unwrap()
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn adding_has_one_marker_per_half_and_sums_them(
        seq_len in 2usize..400, seed: u64, split in split(), index in 0u64..1_000_000,
    ) {
        let task = Task::new(TaskConfig::Adding { seq_len }).unwrap();
        let sample = task.sample(seed, split, index);
        prop_assert_eq!(sample.input.len(), seq_len * 2);
        let marked: Vec<usize> = (0..seq_len).filter(|&t| sample.input[2 * t + 1] == 1.0).collect();
        prop_assert!((0..seq_len).all(|t| [0.0, 1.0].contains(&sample.input[2 * t + 1])));
        prop_assert_eq!(marked.len(), 2);
        prop_assert!(marked[0] < seq_len / 2 && marked[1] >= seq_len / 2);
        prop_assert!((0..seq_len).all(|t| (0.0..1.0).contains(&sample.input[2 * t])));
        let sum = sample.input[2 * marked[0]] + sample.input[2 * marked[1]];
        prop_assert_eq!(sample.target, Target::Value(sum));
    }

    #[test]
    fn copy_target_repeats_the_symbols_after_the_delimiter(
        seq_len in 1usize..300, seed: u64, split in split(), index in 0u64..1_000_000,
    ) {
        let task = Task::new(TaskConfig::Copy { seq_len }).unwrap();
        let sample = task.sample(seed, split, index);
        let input = ids(&sample.input, 10);
        prop_assert_eq!(input.len(), seq_len + 20);
        prop_assert!(input[..10].iter().all(|&s| (1..=8).contains(&s)));
        prop_assert_eq!(input[seq_len + 9], 9, "delimiter at T + 9");
        let blanks = input[10..].iter().enumerate().all(|(k, &s)| k + 10 == seq_len + 9 || s == 0);
        prop_assert!(blanks);
        let Target::Steps(target) = sample.target else { panic!("copy targets are steps") };
        prop_assert_eq!(target.len(), seq_len + 20);
        prop_assert!(target[..seq_len + 10].iter().all(|&s| s == 0));
        let recalled: Vec<usize> = target[seq_len + 10..].iter().map(|&s| s as usize).collect();
        prop_assert_eq!(&recalled[..], &input[..10]);
    }

    #[test]
    fn temporal_order_markers_fall_in_their_windows_and_set_the_label(
        seq_len in 10usize..400, classes in prop::sample::select(vec![2usize, 4]),
        seed: u64, split in split(), index in 0u64..1_000_000,
    ) {
        let task = Task::new(TaskConfig::TemporalOrder { seq_len, classes }).unwrap();
        let sample = task.sample(seed, split, index);
        let input = ids(&sample.input, 6);
        let markers: Vec<(usize, usize)> =
            input.iter().enumerate().filter(|&(_, &s)| s >= 4).map(|(t, &s)| (t, s - 4)).collect();
        prop_assert_eq!(markers.len(), 2);
        let (t1, t2) = (markers[0].0 as f64, markers[1].0 as f64);
        let n = seq_len as f64;
        prop_assert!(t1 >= (0.1 * n).floor() && t1 < (0.2 * n).floor(), "t1 = {t1}");
        prop_assert!(t2 >= (0.5 * n).floor() && t2 < (0.6 * n).floor(), "t2 = {t2}");
        let (m1, m2) = (markers[0].1 as u32, markers[1].1 as u32);
        let want = if classes == 4 { 2 * m1 + m2 } else { u32::from(m1 != m2) };
        prop_assert_eq!(sample.target, Target::Class(want));
    }
}

#[test]
fn adding_baseline_mse_is_one_sixth() {
    let task = Task::new(TaskConfig::Adding { seq_len: 50 }).unwrap();
    let batch = task.batch(3, Split::Train, 0, 20_000);
    let eval = task.evaluate(&task.baseline_outputs(&batch), &batch);
    assert!(
        (eval.loss - 1.0 / 6.0).abs() < 0.01,
        "baseline MSE {}",
        eval.loss
    );
    assert_eq!(task.baseline(), 1.0 / 6.0);
    // A perfect predictor has MSE 0 and every sequence within 0.04.
    let Targets::Values(targets) = &batch.targets else {
        unreachable!()
    };
    let perfect = task.evaluate(targets, &batch);
    assert_eq!((perfect.loss, perfect.metric), (0.0, 1.0));
    assert!(task.solved().is_met(&perfect) && !task.solved().is_met(&eval));
}

#[test]
fn copy_symbols_are_uniform_and_the_baseline_is_exact() {
    let task = Task::new(TaskConfig::Copy { seq_len: 5 }).unwrap();
    let batch = task.batch(1, Split::Train, 0, 4_000);
    let Targets::StepClasses(targets) = &batch.targets else {
        unreachable!()
    };
    let mut counts = [0usize; 10];
    for seq in targets.chunks_exact(25) {
        seq[15..].iter().for_each(|&s| counts[s as usize] += 1);
    }
    // 40 000 symbols, 5 000 expected per symbol; chi-square with 7 degrees of freedom
    // stays below 24.3 with probability 0.999.
    assert_eq!(counts[0] + counts[9], 0);
    let chi2: f64 = counts[1..9]
        .iter()
        .map(|&c| (c as f64 - 5_000.0).powi(2) / 5_000.0)
        .sum();
    assert!(chi2 < 24.3, "counts {counts:?}, chi² {chi2}");
    let eval = task.evaluate(&task.baseline_outputs(&batch), &batch);
    let want = 10.0 * 8f64.ln() / 25.0;
    assert!((eval.loss - want).abs() < 1e-9 && (task.baseline() - want).abs() < 1e-12);
}

#[test]
fn temporal_order_labels_are_balanced_and_chance_is_the_baseline() {
    for classes in [2usize, 4] {
        let task = Task::new(TaskConfig::TemporalOrder {
            seq_len: 100,
            classes,
        })
        .unwrap();
        let batch = task.batch(2, Split::Validation, 0, 8_000);
        let Targets::Classes(labels) = &batch.targets else {
            unreachable!()
        };
        let mut counts = vec![0usize; classes];
        labels.iter().for_each(|&l| counts[l as usize] += 1);
        let expected = 8_000.0 / classes as f64;
        let chi2: f64 = counts
            .iter()
            .map(|&c| (c as f64 - expected).powi(2) / expected)
            .sum();
        // 0.999 quantiles of chi-square with 1 and 3 degrees of freedom.
        assert!(
            chi2 < if classes == 2 { 10.83 } else { 16.27 },
            "{classes}: {counts:?}"
        );
        let eval = task.evaluate(&task.baseline_outputs(&batch), &batch);
        assert!(
            (eval.loss - (classes as f64).ln()).abs() < 1e-9,
            "{classes}: {}",
            eval.loss
        );
    }
}

#[test]
fn samples_do_not_depend_on_batching_or_order() {
    let configs = [
        TaskConfig::Adding { seq_len: 30 },
        TaskConfig::Copy { seq_len: 12 },
        TaskConfig::TemporalOrder {
            seq_len: 40,
            classes: 4,
        },
    ];
    for config in configs {
        let task = Task::new(config).unwrap();
        let whole = task.batch(9, Split::Test, 100, 32);
        let singles: Vec<Batch> = (0..32)
            .rev()
            .map(|k| task.batch(9, Split::Test, 100 + k, 1))
            .collect();
        let mut inputs = Vec::new();
        singles
            .iter()
            .rev()
            .for_each(|b| inputs.extend_from_slice(&b.inputs));
        assert_eq!(inputs, whole.inputs, "{config:?}");
        let threaded: Vec<Vec<f32>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4u64)
                .map(|k| s.spawn(move || task.batch(9, Split::Test, 100 + 8 * k, 8).inputs))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(threaded.concat(), whole.inputs, "{config:?}");
    }
}

#[test]
fn splits_and_seeds_give_different_data() {
    let task = Task::new(TaskConfig::Adding { seq_len: 20 }).unwrap();
    let train = task.batch(0, Split::Train, 0, 4).inputs;
    assert_ne!(train, task.batch(0, Split::Validation, 0, 4).inputs);
    assert_ne!(train, task.batch(0, Split::Test, 0, 4).inputs);
    assert_ne!(train, task.batch(1, Split::Train, 0, 4).inputs);
}

#[test]
fn bad_configs_are_refused_with_the_allowed_values() {
    let err = Task::new(TaskConfig::Adding { seq_len: 1 })
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "seq_len 1 is out of range for the adding task: allowed 2..=1000000"
    );
    let err = Task::new(TaskConfig::TemporalOrder {
        seq_len: 9,
        classes: 4,
    })
    .unwrap_err();
    assert!(err.to_string().contains("allowed 10..="), "{err}");
    let err = Task::new(TaskConfig::TemporalOrder {
        seq_len: 50,
        classes: 3,
    })
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "classes 3 is not allowed for the temporal_order task: allowed 2 or 4"
    );
    assert!(Task::new(TaskConfig::Copy { seq_len: 0 }).is_err());
    let err = Task::from_name("parity", 10, 4).unwrap_err().to_string();
    assert_eq!(
        err,
        "unknown task `parity`: allowed adding, copy, temporal_order"
    );
}

#[test]
fn known_sample_is_pinned() {
    // Guards the stream itself: a change to the key layout or the conversions would
    // silently change every dataset. Values read back from `rnnlab data export --task
    // adding --seq-len 8 --seed 42 --first 7 --count 1` with pyarrow.
    let task = Task::new(TaskConfig::Adding { seq_len: 8 }).unwrap();
    let sample = task.sample(42, Split::Train, 7);
    let values: Vec<f32> = sample.input.chunks_exact(2).map(|s| s[0]).collect();
    let markers: Vec<usize> = (0..8).filter(|&t| sample.input[2 * t + 1] == 1.0).collect();
    assert_eq!(
        values[..4],
        [0.523_173_03, 0.127_218_07, 0.425_623_9, 0.756_413_1]
    );
    assert_eq!(markers, [3, 5]);
    assert_eq!(sample.target, Target::Value(0.756_413_1 + 0.946_791_23));
    assert!(task.render(&sample).contains("markers at t = 3 and t = 5"));
}
