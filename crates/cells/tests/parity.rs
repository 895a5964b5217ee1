//! Parity with PyTorch: every fixture in `tests/fixtures/` (written by
//! `scripts/torch_fixtures.py` in float64 from `torch.nn.RNN/LSTM/GRU`, and from autograd
//! transcriptions of the IndRNN, minGRU, minLSTM and LRU papers) is run through our
//! cells, and outputs, final states and all gradients must agree within 1e-4
//! (absolute + relative). Adding a case is dropping a file in the folder.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{D, DType, Device, Tensor, Var};
use rnnlab_cells::{
    CellConfig, ExpRnnSpec, GruReset, IndRnnSpec, LruSpec, LstmOptions, MinGruSpec, MinLstmSpec,
    Nonlinearity, Params, ScanForm, Stack, State,
};
use safetensors::SafeTensors;

const TOLERANCE: f64 = 1e-4;

struct Fixture {
    name: String,
    metadata: HashMap<String, String>,
    tensors: HashMap<String, Tensor>,
}

fn fixtures() -> Vec<Fixture> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "safetensors"))
        .collect();
    paths.sort();
    paths.iter().map(|path| load(path)).collect()
}

fn load(path: &Path) -> Fixture {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let metadata = header.metadata().clone().unwrap_or_default();
    let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    Fixture {
        name,
        metadata,
        tensors,
    }
}

impl Fixture {
    fn meta(&self, key: &str) -> &str {
        self.metadata
            .get(key)
            .unwrap_or_else(|| panic!("{}: metadata has no `{key}`", self.name))
    }

    fn size(&self, key: &str) -> usize {
        self.meta(key).parse().unwrap()
    }

    fn cell(&self) -> CellConfig {
        match self.meta("cell") {
            "rnn" => CellConfig::new(
                match self.metadata.get("nonlinearity").map(String::as_str) {
                    None | Some("tanh") => Nonlinearity::Tanh,
                    Some("relu") => Nonlinearity::Relu,
                    Some(other) => panic!("{}: unknown nonlinearity {other}", self.name),
                },
            ),
            "lstm" => CellConfig::new(LstmOptions::default()),
            "gru" => CellConfig::new(match self.meta("gru_reset") {
                "after" => GruReset::After,
                "before" => GruReset::Before,
                other => panic!("{}: unknown gru_reset {other}", self.name),
            }),
            "indrnn" => CellConfig::new(IndRnnSpec::default()),
            "mingru" => CellConfig::new(MinGruSpec { form: self.scan() }),
            "minlstm" => CellConfig::new(MinLstmSpec { form: self.scan() }),
            "lru" => CellConfig::new(LruSpec),
            "exprnn" => CellConfig::new(ExpRnnSpec::default()),
            other => panic!("{}: unknown cell {other}", self.name),
        }
    }

    /// minGRU's and minLSTM's form: `scan: log_space` in the metadata, else sequential.
    fn scan(&self) -> ScanForm {
        match self.metadata.get("scan").map(String::as_str) {
            None => ScanForm::Sequential,
            Some("log_space") => ScanForm::LogSpace,
            Some(other) => panic!("{}: unknown scan {other}", self.name),
        }
    }

    fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("{}: no tensor `{name}`", self.name))
    }
}

/// Runs the fixture's case and lists every value that disagrees with it.
fn mismatches(fixture: &Fixture) -> Vec<String> {
    let layers = fixture.size("num_layers");
    let hidden = vec![fixture.size("hidden_size"); layers];
    let cell = fixture.cell();
    // The LSTM's c, or the LRU's complex state [Re x | Im x].
    let has_c = fixture.tensors.contains_key("c0");

    let state_dict: HashMap<String, Tensor> = fixture
        .tensors
        .iter()
        .filter(|(name, _)| {
            !name.starts_with("grad")
                && !["input", "h0", "c0", "output", "h_n", "c_n"].contains(&name.as_str())
        })
        .map(|(name, tensor)| (name.clone(), tensor.clone()))
        .collect();
    let params = Params::from_tensors(&state_dict).unwrap();
    let stack = Stack::new(&cell, fixture.size("input_size"), &hidden, &params).unwrap();

    let input = Var::from_tensor(fixture.tensor("input")).unwrap();
    let h0 = Var::from_tensor(fixture.tensor("h0")).unwrap();
    let c0 = has_c.then(|| Var::from_tensor(fixture.tensor("c0")).unwrap());
    let states: Vec<State> = (0..layers)
        .map(|layer| State {
            h: h0.get(layer).unwrap(),
            c: c0.as_ref().map(|c0| c0.get(layer).unwrap()),
        })
        .collect();
    let (output, finals) = stack.forward(&input, &states).unwrap();
    let loss = (&output * fixture.tensor("grad_output"))
        .unwrap()
        .sum_all()
        .unwrap();
    let grads = loss.backward().unwrap();

    let h_n = Tensor::stack(&finals.iter().map(|s| s.h.clone()).collect::<Vec<_>>(), 0).unwrap();
    let mut actual: Vec<(String, Tensor)> = vec![
        ("output".into(), output),
        ("h_n".into(), h_n),
        ("grad.input".into(), grads.get(&input).unwrap().clone()),
        ("grad.h0".into(), grads.get(&h0).unwrap().clone()),
    ];
    if let Some(c0) = &c0 {
        let c_n: Vec<Tensor> = finals.iter().map(|s| s.c.clone().unwrap()).collect();
        actual.push(("c_n".into(), Tensor::stack(&c_n, 0).unwrap()));
        actual.push(("grad.c0".into(), grads.get(c0).unwrap().clone()));
    }
    for (name, var) in params.iter() {
        let grad = grads
            .get(var)
            .unwrap_or_else(|| panic!("{}: no gradient for {name}", fixture.name));
        actual.push((format!("grad.{name}"), grad.clone()));
    }

    let mut problems = Vec::new();
    for (name, got) in actual {
        let want = fixture.tensor(&name);
        if got.dims() != want.dims() {
            problems.push(format!(
                "{name}: shape {:?}, expected {:?}",
                got.dims(),
                want.dims()
            ));
            continue;
        }
        let excess = (got.to_dtype(DType::F64).unwrap() - want.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .broadcast_sub(
                &(want.to_dtype(DType::F64).unwrap().abs().unwrap() * TOLERANCE)
                    .unwrap()
                    .affine(1.0, TOLERANCE)
                    .unwrap(),
            )
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(D::Minus1)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        if excess > 0.0 {
            problems.push(format!("{name}: off by {excess:.3e} beyond the tolerance"));
        }
    }
    problems
}

#[test]
fn every_fixture_matches_pytorch() {
    let fixtures = fixtures();
    assert!(
        fixtures.len() >= 72,
        "expected the committed fixtures, found {}",
        fixtures.len()
    );
    let mut failures = Vec::new();
    for fixture in &fixtures {
        for problem in mismatches(fixture) {
            failures.push(format!("{}: {problem}", fixture.name));
        }
    }
    assert!(
        failures.is_empty(),
        "PyTorch parity failures:\n{}",
        failures.join("\n")
    );
}

#[test]
fn fixtures_cover_the_required_cases() {
    let fixtures = fixtures();
    for cell in [
        "rnn_tanh",
        "rnn_relu",
        "lstm",
        "gru_after",
        "gru_before",
        "indrnn",
        "mingru",
        "minlstm",
        "lru",
        "exprnn",
        "mingru_log",
        "minlstm_log",
    ] {
        for (layers, batch, seq_len) in [(1, 3, 17), (2, 1, 1), (2, 3, 17), (1, 1, 1)] {
            let name = format!("{cell}_l{layers}_b{batch}_t{seq_len}.safetensors");
            assert!(
                fixtures.iter().any(|f| f.name == name),
                "missing fixture {name}"
            );
        }
    }
    // Inputs and initial states must be non-trivial for the test to mean anything.
    for fixture in &fixtures {
        assert_ne!(fixture.size("input_size"), fixture.size("hidden_size"));
        let h0_norm = fixture.tensor("h0").sqr().unwrap().sum_all().unwrap();
        assert!(
            h0_norm.to_scalar::<f32>().unwrap() > 0.0,
            "{}: h0 is zero",
            fixture.name
        );
    }
}

/// The comparison must be able to fail: a perturbation of 1e-3 in any expected tensor,
/// ten times the tolerance, is reported.
#[test]
fn a_perturbed_fixture_is_caught() {
    let fixture = fixtures()
        .into_iter()
        .find(|f| f.name == "lstm_l2_b3_t17.safetensors")
        .unwrap();
    assert!(mismatches(&fixture).is_empty());
    for name in [
        "output",
        "h_n",
        "c_n",
        "grad.input",
        "grad.c0",
        "grad.weight_hh_l0",
        "grad.bias_ih_l1",
    ] {
        let mut perturbed = Fixture {
            name: fixture.name.clone(),
            metadata: fixture.metadata.clone(),
            tensors: fixture.tensors.clone(),
        };
        let original = fixture.tensor(name);
        let bump = original.ones_like().unwrap().affine(1e-3, 0.0).unwrap();
        let bumped = original.flatten_all().unwrap();
        // Only the first element moves.
        let first = bump.flatten_all().unwrap().narrow(0, 0, 1).unwrap();
        let rest = bumped
            .zeros_like()
            .unwrap()
            .narrow(0, 1, bumped.dim(0).unwrap() - 1)
            .unwrap();
        let delta = Tensor::cat(&[first, rest], 0)
            .unwrap()
            .reshape(original.dims())
            .unwrap();
        perturbed
            .tensors
            .insert(name.into(), (original + delta).unwrap());
        let problems = mismatches(&perturbed);
        assert_eq!(problems.len(), 1, "perturbing {name}: {problems:?}");
        assert!(problems[0].starts_with(&format!("{name}:")), "{problems:?}");
    }
}
