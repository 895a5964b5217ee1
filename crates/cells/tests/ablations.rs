//! The peephole LSTM and the Greff et al. 2017 ablations have no PyTorch counterpart:
//! their gradients are checked against central finite differences in f64, and each
//! variant is shown to be the plain LSTM with the removed gate pinned.

use candle_core::{DType, Device, IndexOp, Tensor, Var};
use rnnlab_cells::{
    Cell, CellConfig, Gate, HeadKind, Init, LstmOptions, ModelConfig, Params, State, registry,
};

const INPUT: usize = 3;
const HIDDEN: usize = 4;
const BATCH: usize = 2;
const SEQ: usize = 5;

fn f64_params(cell: &CellConfig, seed: u64) -> Params {
    let config = ModelConfig {
        cell: cell.clone(),
        input_size: INPUT,
        hidden: vec![HIDDEN],
        output_size: 1,
        head: HeadKind::LastStep,
    };
    let init = Init {
        forget_bias: 0.5,
        ..Init::default()
    };
    init.params(&config, seed, DType::F64, &Device::Cpu)
        .unwrap()
}

/// Deterministic f64 values in (−1.5, 1.5), different per `salt`.
fn wave(dims: &[usize], salt: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let values: Vec<f64> = (0..n)
        .map(|k| 1.5 * ((k as f64 + salt) * 0.731).sin())
        .collect();
    Tensor::from_vec(values, dims, &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

/// loss = Σ output ⊙ G + Σ c_T ⊙ G_c: every output and the final cell state matter.
fn loss(layer: &dyn Cell, input: &Tensor, h0: &Tensor, c0: Option<&Tensor>) -> Tensor {
    let state = State {
        h: h0.clone(),
        c: c0.cloned(),
    };
    let (out, last) = layer.sequence(input, &state).unwrap();
    let mut loss = (&out * wave(out.dims(), 1.0)).unwrap().sum_all().unwrap();
    if let Some(c) = last.c {
        loss = (loss + (&c * wave(c.dims(), 2.0)).unwrap().sum_all().unwrap()).unwrap();
    }
    loss
}

fn scalar(t: &Tensor) -> f64 {
    t.to_scalar::<f64>().unwrap()
}

/// Central differences of `loss` in every element of `var`, compared with `analytic`.
fn check_var(name: &str, var: &Var, analytic: &Tensor, loss: &dyn Fn() -> f64) -> Vec<String> {
    const EPS: f64 = 1e-6;
    let original = var.as_tensor().copy().unwrap();
    let base = values(&original);
    let analytic = values(analytic);
    let mut problems = Vec::new();
    for k in 0..base.len() {
        let at = |delta: f64| {
            let mut moved = base.clone();
            moved[k] += delta;
            var.set(&Tensor::from_vec(moved, original.dims(), &Device::Cpu).unwrap())
                .unwrap();
            loss()
        };
        let numeric = (at(EPS) - at(-EPS)) / (2.0 * EPS);
        if (numeric - analytic[k]).abs() > 1e-7 + 1e-6 * numeric.abs() {
            problems.push(format!(
                "{name}[{k}]: autograd {} vs finite difference {numeric}",
                analytic[k]
            ));
        }
    }
    var.set(&original).unwrap();
    problems
}

fn gradient_check(label: &str, cell: &CellConfig) {
    let params = f64_params(cell, 17);
    let layer = cell.build(&params, 0, INPUT, HIDDEN).unwrap();
    let input = Var::from_tensor(&wave(&[BATCH, SEQ, INPUT], 3.0)).unwrap();
    let h0 = Var::from_tensor(&(wave(&[BATCH, HIDDEN], 4.0) * 0.5).unwrap()).unwrap();
    let c0 = layer
        .has_cell_state()
        .then(|| Var::from_tensor(&wave(&[BATCH, layer.cell_state_size()], 5.0)).unwrap());
    let evaluate = || {
        scalar(&loss(
            layer.as_ref(),
            &input,
            &h0,
            c0.as_ref().map(Var::as_tensor),
        ))
    };
    let grads = loss(layer.as_ref(), &input, &h0, c0.as_ref().map(Var::as_tensor))
        .backward()
        .unwrap();

    let mut checked: Vec<(String, &Var)> = vec![("input".into(), &input), ("h0".into(), &h0)];
    if let Some(c0) = &c0 {
        checked.push(("c0".into(), c0));
    }
    // The head is not part of the layer; every parameter of the layer must get a gradient.
    checked.extend(
        params
            .iter()
            .filter(|(name, _)| !name.starts_with("head."))
            .map(|(n, v)| (n.to_string(), v)),
    );
    let mut problems = Vec::new();
    for (name, var) in &checked {
        let analytic = grads
            .get(var)
            .unwrap_or_else(|| panic!("{label}: no gradient for {name}"));
        problems.extend(check_var(name, var, analytic, &evaluate));
    }
    assert!(problems.is_empty(), "{label}:\n{}", problems.join("\n"));
}

#[test]
fn every_cell_matches_finite_differences() {
    for cell in registry::examples() {
        gradient_check(&cell.label(), &cell);
    }
}

fn run(cell: &CellConfig, params: &Params) -> (Tensor, Tensor) {
    let layer = cell.build(params, 0, INPUT, HIDDEN).unwrap();
    let state = State {
        h: wave(&[BATCH, HIDDEN], 4.0),
        c: Some(wave(&[BATCH, HIDDEN], 5.0)),
    };
    let (out, last) = layer
        .sequence(&wave(&[BATCH, SEQ, INPUT], 3.0), &state)
        .unwrap();
    (out, last.c.unwrap())
}

#[test]
fn peepholes_at_zero_are_the_plain_lstm_exactly() {
    let plain = LstmOptions::default();
    let mut params = f64_params(&CellConfig::new(plain), 3);
    for gate in [Gate::Input, Gate::Forget, Gate::Output] {
        let zeros = Tensor::zeros(HIDDEN, DType::F64, &Device::Cpu).unwrap();
        params.insert(
            &format!("peephole_{}_l0", gate.letter()),
            Var::from_tensor(&zeros).unwrap(),
        );
    }
    let (a, ca) = run(&CellConfig::new(plain), &params);
    let (b, cb) = run(&CellConfig::new(LstmOptions::peephole()), &params);
    assert_eq!(values(&a), values(&b));
    assert_eq!(values(&ca), values(&cb));
}

/// The plain LSTM's parameters with `rows` (H of them) put back at gate position `at`.
fn with_gate_rows(
    variant: &Params,
    at: usize,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
) -> Params {
    let splice = |name: &str, rows: Tensor| {
        let t = variant.get(name).unwrap().as_tensor().clone();
        let before = t.i(..at * HIDDEN).unwrap();
        let after = t.i(at * HIDDEN..).unwrap();
        Var::from_tensor(&Tensor::cat(&[before, rows, after], 0).unwrap()).unwrap()
    };
    let mut plain = Params::new();
    plain.insert("weight_ih_l0", splice("weight_ih_l0", weight_ih));
    plain.insert("weight_hh_l0", splice("weight_hh_l0", weight_hh));
    plain.insert("bias_ih_l0", splice("bias_ih_l0", bias_ih));
    let zero_bias = Tensor::zeros(HIDDEN, DType::F64, &Device::Cpu).unwrap();
    plain.insert("bias_hh_l0", splice("bias_hh_l0", zero_bias));
    plain
}

fn assert_close(label: &str, a: &Tensor, b: &Tensor) {
    for (x, y) in values(a).iter().zip(values(b)) {
        assert!((x - y).abs() <= 1e-12, "{label}: {x} vs {y}");
    }
}

#[test]
fn a_removed_gate_is_the_plain_lstm_with_that_gate_saturated_open() {
    // σ(1000) is exactly 1 in f64, so a gate with zero weights and bias 1000 is open.
    let zeros_ih = Tensor::zeros((HIDDEN, INPUT), DType::F64, &Device::Cpu).unwrap();
    let zeros_hh = Tensor::zeros((HIDDEN, HIDDEN), DType::F64, &Device::Cpu).unwrap();
    let open = Tensor::full(1000.0, HIDDEN, &Device::Cpu).unwrap();
    let plain = LstmOptions::default();
    for (label, options, at) in [
        (
            "no input gate",
            LstmOptions {
                input_gate: false,
                ..plain
            },
            0,
        ),
        (
            "no forget gate",
            LstmOptions {
                forget_gate: false,
                ..plain
            },
            1,
        ),
        (
            "no output gate",
            LstmOptions {
                output_gate: false,
                ..plain
            },
            3,
        ),
    ] {
        let variant = f64_params(&CellConfig::new(options), 21);
        let pinned = with_gate_rows(
            &variant,
            at,
            zeros_ih.clone(),
            zeros_hh.clone(),
            open.clone(),
        );
        let (a, ca) = run(&CellConfig::new(options), &variant);
        let (b, cb) = run(&CellConfig::new(plain), &pinned);
        assert_close(label, &a, &b);
        assert_close(label, &ca, &cb);
    }
}

#[test]
fn coupled_gates_are_the_plain_lstm_with_input_weights_minus_forget_weights() {
    // 1 − σ(a) = σ(−a): an input gate with the forget gate's parameters negated.
    let options = LstmOptions {
        coupled_input_forget: true,
        ..LstmOptions::default()
    };
    let variant = f64_params(&CellConfig::new(options), 23);
    // Rows of the coupled variant are f, g, o: the f rows are the first H.
    let forget = |name: &str| {
        variant
            .get(name)
            .unwrap()
            .as_tensor()
            .i(..HIDDEN)
            .unwrap()
            .neg()
            .unwrap()
    };
    let bias = (forget("bias_ih_l0") + forget("bias_hh_l0")).unwrap();
    let pinned = with_gate_rows(
        &variant,
        0,
        forget("weight_ih_l0"),
        forget("weight_hh_l0"),
        bias,
    );
    let (a, ca) = run(&CellConfig::new(options), &variant);
    let (b, cb) = run(&CellConfig::new(LstmOptions::default()), &pinned);
    assert_close("coupled", &a, &b);
    assert_close("coupled", &ca, &cb);
}
