//! The CUDA backend (feature `cuda`). Without a GPU: every kernel compiles with NVRTC
//! (CI installs the `nvidia-cuda-nvrtc` wheel and sets `RNNLAB_REQUIRE_NVRTC=1`, so the
//! test cannot pass by skipping there). With a GPU (`scripts/gpu-check.sh`): each cell
//! with a CUDA kernel against its CPU kernel — outputs, final states, every gradient and
//! the gradient flow — and a rerun that must give the same bits. A test that needs what
//! the machine lacks says so by name and passes.
#![cfg(feature = "cuda")]

use std::sync::Arc;

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{flat, gradients};
use rnnlab_cells::cuda::{Gpu, compile, nvrtc_available};
use rnnlab_cells::{Backend, CellConfig, HeadKind, Init, ModelConfig, State, registry};

/// The kernel names the source must define (each is loaded by `Gpu::open`).
const KERNELS: [&str; 13] = [
    "gemm",
    "add_bias",
    "column_sums",
    "previous_states",
    "row_norms",
    "transpose",
    "lstm_forward_step",
    "lstm_backward_step",
    "lstm_state_grads",
    "rnn_forward_step",
    "rnn_backward_step",
    "gru_forward_step",
    "gru_backward_step",
];

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !nvrtc_available() {
        assert!(
            std::env::var_os("RNNLAB_REQUIRE_NVRTC").is_none(),
            "RNNLAB_REQUIRE_NVRTC is set but libnvrtc.so.13 is not on LD_LIBRARY_PATH"
        );
        eprintln!("skipped every_kernel_compiles_with_nvrtc: NVRTC not found");
        return;
    }
    // NVRTC's default target and the H100's.
    for arch in [None, Some("compute_90")] {
        let ptx = compile(arch).unwrap().to_src();
        for name in KERNELS {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "{arch:?}: no kernel {name} in the PTX"
            );
        }
    }
}

/// Device 0, or `None` (and a line naming `test`) on a machine without one.
fn gpu(test: &str) -> Option<Arc<Gpu>> {
    match Gpu::open(0) {
        Ok(gpu) => Some(Arc::new(gpu)),
        Err(e) => {
            eprintln!("skipped {test}: {e}");
            None
        }
    }
}

/// `common::wave` in f32.
fn wave(dims: &[usize], salt: f64) -> Tensor {
    common::wave(dims, salt, DType::F32)
}

/// Every value, gradient and the gradient flow of one layer of `cell` on `backend`, by
/// name, for a fixed input and loss.
fn run(
    cell: &CellConfig,
    (batch, seq_len, input, hidden): (usize, usize, usize, usize),
    backend: &Backend,
) -> Vec<(String, Vec<f64>)> {
    let config = ModelConfig {
        cell: cell.clone(),
        input_size: input,
        hidden: vec![hidden],
        output_size: 1,
        head: HeadKind::LastStep,
    };
    let mut params = Init::default()
        .params(&config, 5, DType::F32, &Device::Cpu)
        .unwrap();
    params.set_backend(backend.clone());
    let layer = cell.build(&params, 0, input, hidden).unwrap();
    let x = Var::from_tensor(&wave(&[batch, seq_len, input], 1.0)).unwrap();
    let h0 = Var::from_tensor(&wave(&[batch, hidden], 2.0)).unwrap();
    let c0 = layer
        .has_cell_state()
        .then(|| Var::from_tensor(&wave(&[batch, layer.cell_state_size()], 3.0)).unwrap());
    let state = State {
        h: h0.as_tensor().clone(),
        c: c0.as_ref().map(|c| c.as_tensor().clone()),
    };
    let (out, last, flow) = layer.sequence_traced(x.as_tensor(), &state).unwrap();
    let mut loss = (&out * wave(out.dims(), 4.0)).unwrap().sum_all().unwrap();
    if let Some(c) = &last.c {
        loss = (loss + (c * wave(c.dims(), 6.0)).unwrap().sum_all().unwrap()).unwrap();
    }
    let grads = loss.backward().unwrap();
    let mut values = vec![("output".to_string(), flat(&out))];
    if let Some(c) = &last.c {
        values.push(("c_T".into(), flat(c)));
    }
    values.extend(gradients(
        &grads,
        (&x, &h0, c0.as_ref()),
        &params,
        !layer.flow_on_cell_state(),
    ));
    values.push(("flow".into(), flow.norms().expect("filled by the backward")));
    values
}

/// The cells with a CUDA kernel, among every registered configuration.
fn cuda_cells() -> Vec<CellConfig> {
    registry::examples()
        .into_iter()
        .filter(|cell| cell.spec().has_cuda_kernel())
        .collect()
}

#[test]
fn gpu_kernels_match_the_cpu_kernels() {
    let Some(gpu) = gpu("gpu_kernels_match_the_cpu_kernels") else {
        return;
    };
    assert!(!cuda_cells().is_empty());
    for cell in cuda_cells() {
        for dims in [
            (1, 1, 3, 1),
            (3, 7, 2, 5),
            (32, 100, 2, 128),
            (5, 30, 7, 300),
        ] {
            let cpu = run(&cell, dims, &Backend::Cpu);
            let cuda = run(&cell, dims, &Backend::Cuda(gpu.clone()));
            for ((name, got), (_, want)) in cuda.iter().zip(&cpu) {
                let scale = want.iter().fold(1e-30_f64, |m, v| m.max(v.abs()));
                let err = got
                    .iter()
                    .zip(want)
                    .fold(0.0_f64, |m, (g, w)| m.max((g - w).abs()));
                eprintln!(
                    "{cell:?} {dims:?} {name}: max error {:.2e} of {scale:.2e}",
                    err
                );
                assert!(
                    err <= 2e-5 * scale.max(1.0),
                    "{cell:?} {dims:?}: {name} differs by {err} (largest value {scale})"
                );
            }
        }
    }
}

#[test]
fn gpu_reruns_give_the_same_bits() {
    let Some(gpu) = gpu("gpu_reruns_give_the_same_bits") else {
        return;
    };
    for cell in cuda_cells() {
        let dims = (16, 50, 3, 64);
        let first = run(&cell, dims, &Backend::Cuda(gpu.clone()));
        let second = run(&cell, dims, &Backend::Cuda(gpu.clone()));
        for ((name, a), (_, b)) in first.iter().zip(&second) {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{cell:?}: {name} differs between two runs");
        }
    }
}
