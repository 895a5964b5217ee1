//! The contract every cell keeps: shapes, zero-length and length-1 sequences, batch 1,
//! `sequence` = repeated `step`, and seeded determinism. Run over every cell and variant.

use candle_core::{DType, Device, IndexOp, Tensor};
use rnnlab_cells::{
    Cell, CellConfig, CellSpec, HeadKind, Init, InitScheme, LstmOptions, Model, ModelConfig,
    Nonlinearity, Params, PeepholeLstm, State, registry,
};

const INPUT: usize = 3;
const HIDDEN: usize = 5;

/// Every configuration of every registered cell, with its label.
fn every_cell() -> Vec<(String, CellConfig)> {
    registry::examples()
        .into_iter()
        .map(|cell| (cell.label(), cell))
        .collect()
}

fn config(cell: &CellConfig) -> ModelConfig {
    ModelConfig {
        cell: cell.clone(),
        input_size: INPUT,
        hidden: vec![HIDDEN],
        output_size: 2,
        head: HeadKind::LastStep,
    }
}

fn params(cell: &CellConfig, scheme: InitScheme, seed: u64) -> Params {
    let init = Init {
        scheme,
        forget_bias: 1.0,
        ..Init::default()
    };
    init.params(&config(cell), seed, DType::F32, &Device::Cpu)
        .unwrap()
}

fn build(cell: &CellConfig, params: &Params) -> Box<dyn Cell> {
    cell.build(params, 0, INPUT, HIDDEN).unwrap()
}

/// A deterministic, non-trivial input `(batch, seq, INPUT)`.
fn input(batch: usize, seq_len: usize) -> Tensor {
    let n = batch * seq_len * INPUT;
    let values: Vec<f32> = (0..n).map(|k| ((k as f32) * 0.37).sin()).collect();
    Tensor::from_vec(values, (batch, seq_len, INPUT), &Device::Cpu).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn shapes_and_states() {
    for (name, cell) in every_cell() {
        let layer = build(&cell, &params(&cell, InitScheme::Pytorch, 1));
        assert_eq!(
            (layer.input_size(), layer.hidden_size()),
            (INPUT, HIDDEN),
            "{name}"
        );
        // The LSTM family carries a cell state (with full gate recurrence also its last
        // i, f, o); minLSTM, whose only state is h, does not; the LRU carries its complex
        // state as [Re x | Im x].
        let carried = match name.as_str() {
            "lru" => 2 * HIDDEN,
            n if n.starts_with("minlstm") => 0,
            n if n.contains("full gate recurrence") => 4 * HIDDEN,
            n if n.contains("lstm") => HIDDEN,
            _ => 0,
        };
        assert_eq!(layer.has_cell_state(), carried > 0, "{name}");
        let state = layer.zero_state(4).unwrap();
        assert_eq!(state.h.dims(), &[4, HIDDEN], "{name}");
        assert_eq!(layer.cell_state_size(), carried, "{name}");
        assert_eq!(
            state.c.as_ref().map(|c| c.dims().to_vec()),
            (carried > 0).then(|| vec![4, carried])
        );

        let (out, last) = layer.sequence(&input(4, 6), &state).unwrap();
        assert_eq!(out.dims(), &[4, 6, HIDDEN], "{name}");
        assert_eq!(
            max_abs_diff(&out.i((.., 5)).unwrap(), &last.h),
            0.0,
            "{name}: h_T is the last output"
        );
        let values: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{name}");
        assert!(
            values.iter().any(|v| v.abs() > 1e-3),
            "{name}: output is all zero"
        );
    }
}

#[test]
fn zero_length_sequence_returns_the_initial_state() {
    for (name, cell) in every_cell() {
        let layer = build(&cell, &params(&cell, InitScheme::Pytorch, 2));
        let (_, initial) = layer
            .sequence(&input(2, 3), &layer.zero_state(2).unwrap())
            .unwrap();
        let (out, last) = layer.sequence(&input(2, 0), &initial).unwrap();
        assert_eq!(out.dims(), &[2, 0, HIDDEN], "{name}");
        assert_eq!(max_abs_diff(&last.h, &initial.h), 0.0, "{name}");
    }
}

#[test]
fn sequence_equals_repeated_steps_and_length_one_is_one_step() {
    for (name, cell) in every_cell() {
        let layer = build(&cell, &params(&cell, InitScheme::Pytorch, 3));
        let xs = input(2, 7);
        let (out, _) = layer.sequence(&xs, &layer.zero_state(2).unwrap()).unwrap();
        let mut state: State = layer.zero_state(2).unwrap();
        for t in 0..7 {
            state = layer.step(&xs.i((.., t)).unwrap(), &state).unwrap();
            let diff = max_abs_diff(&out.i((.., t)).unwrap(), &state.h);
            assert!(diff <= 1e-6, "{name}: step {t} differs by {diff}");
        }
        let (one, _) = layer
            .sequence(&xs.i((.., ..1)).unwrap(), &layer.zero_state(2).unwrap())
            .unwrap();
        assert_eq!(one.dims(), &[2, 1, HIDDEN]);
        assert!(
            max_abs_diff(&one.i((.., 0)).unwrap(), &out.i((.., 0)).unwrap()) <= 1e-6,
            "{name}"
        );
    }
}

#[test]
fn batch_rows_are_independent() {
    for (name, cell) in every_cell() {
        let layer = build(&cell, &params(&cell, InitScheme::Pytorch, 4));
        let xs = input(3, 5);
        let (all, _) = layer.sequence(&xs, &layer.zero_state(3).unwrap()).unwrap();
        for row in 0..3 {
            let single = xs.i(row..row + 1).unwrap();
            let (out, _) = layer
                .sequence(&single, &layer.zero_state(1).unwrap())
                .unwrap();
            let diff = max_abs_diff(&out, &all.i(row..row + 1).unwrap());
            assert!(diff <= 1e-6, "{name}: batch row {row} differs by {diff}");
        }
    }
}

#[test]
fn seeded_and_deterministic_under_every_scheme() {
    let schemes = [
        InitScheme::Pytorch,
        InitScheme::Keras,
        InitScheme::Orthogonal,
        InitScheme::Identity,
    ];
    for (name, cell) in every_cell() {
        for scheme in schemes {
            let run = |seed| {
                let layer = build(&cell, &params(&cell, scheme, seed));
                layer
                    .sequence(&input(2, 9), &layer.zero_state(2).unwrap())
                    .unwrap()
                    .0
            };
            let (a, b) = (run(7), run(7));
            assert_eq!(
                max_abs_diff(&a, &b),
                0.0,
                "{name} {scheme:?}: same seed, other output"
            );
            if scheme != InitScheme::Identity {
                assert!(
                    max_abs_diff(&a, &run(8)) > 0.0,
                    "{name} {scheme:?}: seed ignored"
                );
            }
        }
    }
}

#[test]
fn wrong_shapes_are_errors() {
    let cell = CellConfig::new(LstmOptions::default());
    let layer = build(&cell, &params(&cell, InitScheme::Pytorch, 1));
    let state = layer.zero_state(2).unwrap();
    let wide = Tensor::zeros((2, 4, INPUT + 1), DType::F32, &Device::Cpu).unwrap();
    let err = layer.sequence(&wide, &state).unwrap_err().to_string();
    assert!(
        err.contains("input has 4 features, the cell expects 3"),
        "{err}"
    );
    let err = layer
        .sequence(&input(3, 4), &state)
        .unwrap_err()
        .to_string();
    assert!(err.contains("h has shape [2, 5], expected [3, 5]"), "{err}");
    let no_c = State {
        h: state.h.clone(),
        c: None,
    };
    assert!(layer.sequence(&input(2, 4), &no_c).is_err());
    let contradictory = LstmOptions {
        input_gate: false,
        coupled_input_forget: true,
        ..LstmOptions::default()
    };
    assert!(contradictory.validate().is_err());
    let err = CellConfig::new(Nonlinearity::Tanh)
        .build(&Params::new(), 0, 3, 5)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("missing parameter `weight_ih_l0`"),
        "{err}"
    );
}

#[test]
fn peephole_lstm_is_the_lstm_with_peepholes() {
    let cell = registry::parse("peephole_lstm", &Default::default()).unwrap();
    assert_eq!(cell, CellConfig::new(LstmOptions::peephole()));
    let params = params(&cell, InitScheme::Pytorch, 9);
    assert!(params.contains("peephole_i_l0") && params.contains("peephole_o_l0"));
    let named = PeepholeLstm::new(LstmOptions::peephole(), &params, 0, INPUT, HIDDEN).unwrap();
    let generic = build(&cell, &params);
    let xs = input(2, 5);
    let (a, _) = named.sequence(&xs, &named.zero_state(2).unwrap()).unwrap();
    let (b, _) = generic
        .sequence(&xs, &generic.zero_state(2).unwrap())
        .unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn parameter_counts_follow_the_variant() {
    // I = 3, H = 5, so a gate block W_ih, W_hh, b_ih, b_hh is H(I + H + 2) = 50: the RNN
    // has 1, the GRU 3, the LSTM 4 and each removed gate (or CIFG) one fewer; peepholes
    // add H per gate with rows except g. The head (2 outputs on 5 units, 2·5 + 2 = 12)
    // is left out. A cell's own file checks its count by hand the same way.
    let expected = std::collections::BTreeMap::from([
        ("rnn", 50),
        ("rnn_relu", 50),
        ("lstm", 200),
        ("lstm (no input gate)", 150),
        ("lstm (no forget gate)", 150),
        ("lstm (no output gate)", 150),
        ("lstm (coupled gates)", 150),
        ("lstm (no input gate, no output gate)", 100),
        ("gru", 150),
        ("gru (reset before)", 150),
        ("peephole_lstm", 215),
        ("peephole_lstm (no input gate)", 160),
        ("peephole_lstm (no forget gate)", 160),
        ("peephole_lstm (no output gate)", 160),
        ("peephole_lstm (coupled gates)", 160),
        ("peephole_lstm (no input gate, no output gate)", 105),
    ]);
    let mut checked = 0;
    for (name, cell) in every_cell() {
        // What initialisation draws is what the count (and the memory estimate) says.
        let drawn = params(&cell, InitScheme::Pytorch, 0).element_count();
        assert_eq!(config(&cell).parameter_count(), drawn, "{name}");
        if let Some(&want) = expected.get(name.as_str()) {
            assert_eq!(drawn - 12, want, "{name}");
            checked += 1;
        }
    }
    assert_eq!(
        checked,
        expected.len(),
        "every listed variant is still registered"
    );
}

#[test]
fn stacked_model_with_both_heads() {
    for (name, cell) in every_cell() {
        for head in [HeadKind::LastStep, HeadKind::EveryStep] {
            let config = ModelConfig {
                cell: cell.clone(),
                input_size: INPUT,
                hidden: vec![8, 4],
                output_size: 3,
                head,
            };
            let params = Init::default()
                .params(&config, 1, DType::F32, &Device::Cpu)
                .unwrap();
            assert_eq!(config.parameter_count(), params.element_count(), "{name}");
            let model = Model::new(&config, &params).unwrap();
            assert_eq!(model.stack().layers().len(), 2);
            let (y, hs) = model.forward(&input(2, 6)).unwrap();
            assert_eq!(hs.dims(), &[2, 6, 4], "{name}");
            let want: &[usize] = if head == HeadKind::LastStep {
                &[2, 3]
            } else {
                &[2, 6, 3]
            };
            assert_eq!(y.dims(), want, "{name} {head:?}");
        }
    }
}
