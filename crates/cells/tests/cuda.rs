//! The CUDA backend (feature `cuda`), checked against the CPU kernels. Without a GPU:
//! every kernel compiles with NVRTC, and the host code with the kernels compiled for the
//! host by a C++ compiler (`Gpu::emulated`: one OS thread per CUDA thread, barriers for
//! `__syncthreads`) gives the CPU's outputs, final states, gradients and gradient flow.
//! CI installs the `nvidia-cuda-nvrtc` wheel and sets `RNNLAB_REQUIRE_KERNEL_TESTS=1`,
//! so neither test can pass there by skipping. With a GPU (`scripts/gpu-check.sh`): the
//! same comparison on the device at larger shapes, and a rerun that must give the same
//! bits. A test that needs what the machine lacks says so by name and passes.
#![cfg(feature = "cuda")]

use std::sync::Arc;

mod common;

use candle_core::{DType, Device, Tensor, Var};
use common::{flat, gradients};
use rnnlab_cells::cuda::{Gpu, KERNELS, TimeLoop, build_emulator, compile, nvrtc_available};
use rnnlab_cells::{Backend, CellConfig, HeadKind, Init, ModelConfig, State, registry};

/// Whether CI asked for the kernel tests to run rather than skip.
fn required() -> bool {
    std::env::var_os("RNNLAB_REQUIRE_KERNEL_TESTS").is_some()
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !nvrtc_available() {
        assert!(
            !required(),
            "RNNLAB_REQUIRE_KERNEL_TESTS is set but libnvrtc.so.13 is not on LD_LIBRARY_PATH"
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
            // The first line: candle appends a backtrace when RUST_BACKTRACE is set.
            let reason = e.to_string();
            eprintln!(
                "skipped {test}: {}",
                reason.lines().next().unwrap_or_default()
            );
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

/// The emulator built in a fresh folder with `$CXX` (default `c++`) as one handle per
/// time loop (per step, persistent), or `None` (and a line naming `test`) where no C++20
/// compiler is found.
fn emulator(test: &str) -> Option<[Arc<Gpu>; 2]> {
    let dir = std::env::temp_dir().join(format!("rnnlab-cuda-emulator-{}", std::process::id()));
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    match build_emulator(&dir, &compiler) {
        Ok(Ok(library)) => {
            Some([TimeLoop::PerStep, TimeLoop::Persistent].map(|time_loop| {
                Arc::new(Gpu::emulated(&library).unwrap().with_time_loop(time_loop))
            }))
        }
        Ok(Err(messages)) => panic!("{compiler} could not build the CUDA emulator:\n{messages}"),
        Err(e) => {
            assert!(
                !required(),
                "RNNLAB_REQUIRE_KERNEL_TESTS is set but {compiler}: {e}"
            );
            eprintln!("skipped {test}: no C++ compiler ({compiler}: {e})");
            None
        }
    }
}

/// Runs every cell with a CUDA kernel at `shapes` on each of `gpus` and on the CPU, and
/// checks every value and gradient to 2e-5 of the largest (or absolutely, below 1), and
/// that the `gpus` (the time loops) agree bit for bit: the same sums in the same order,
/// only launched differently.
fn matches_the_cpu(gpus: &[Arc<Gpu>], shapes: &[(usize, usize, usize, usize)]) {
    assert!(!cuda_cells().is_empty());
    for cell in cuda_cells() {
        for &dims in shapes {
            let cpu = run(&cell, dims, &Backend::Cpu);
            let runs: Vec<_> = gpus
                .iter()
                .map(|gpu| run(&cell, dims, &Backend::Cuda(gpu.clone())))
                .collect();
            for (values, gpu) in runs.iter().zip(gpus) {
                for ((name, got), (_, want)) in values.iter().zip(&cpu) {
                    let scale = want.iter().fold(1e-30_f64, |m, v| m.max(v.abs()));
                    let err = got
                        .iter()
                        .zip(want)
                        .fold(0.0_f64, |m, (g, w)| m.max((g - w).abs()));
                    eprintln!(
                        "{} {dims:?} {name} ({gpu:?}): max error {err:.2e} of {scale:.2e}",
                        cell.label(),
                    );
                    assert!(
                        err <= 2e-5 * scale.max(1.0),
                        "{cell:?} {dims:?} on {gpu:?}: {name} differs by {err} (largest value {scale})"
                    );
                }
            }
            for (other, gpu) in runs[1..].iter().zip(&gpus[1..]) {
                for ((name, a), (_, b)) in runs[0].iter().zip(other) {
                    let differ = a
                        .iter()
                        .zip(b)
                        .filter(|(x, y)| x.to_bits() != y.to_bits())
                        .count();
                    assert_eq!(
                        differ, 0,
                        "{cell:?} {dims:?}: {differ} values of {name} differ between {:?} and {gpu:?}",
                        gpus[0]
                    );
                }
            }
        }
    }
}

#[test]
fn emulated_kernels_match_the_cpu_kernels() {
    let Some(gpus) = emulator("emulated_kernels_match_the_cpu_kernels") else {
        return;
    };
    copies_move_each_input_and_output_once(&gpus[0]);
    // Partial tiles and blocks: H = 40 spans two blocks of 32 units, B = 9 two of 8 rows
    // (three persistent blocks of 4).
    matches_the_cpu(&gpus, &[(1, 1, 3, 1), (3, 7, 2, 5), (9, 6, 3, 40)]);
    for gpu in &gpus {
        reruns_give_the_same_bits(gpu, (3, 5, 2, 7));
    }
}

/// An LSTM layer's forward and backward on `gpu`, counted ([`Gpu::count_time`]): each
/// copies its inputs up and its results down once, and what the forward keeps for the
/// backward stays on the device. Up: `x (B·T·I)`, `[h0 | c0] (B·2H)`, the parameters
/// `4H·(I + H + 2)`, the bias `b_ih + b_hh (4H)` summed on the host, then the output's
/// gradient `(B·(T + 1)·H)` and its `c_T` row again `(B·H)`, which the kernel reads as
/// a buffer of its own; down: the output, the gradients of `x`, the state and the
/// parameters, and the traced gradient flow (`B·T` f64 norms).
fn copies_move_each_input_and_output_once(gpu: &Arc<Gpu>) {
    let (batch, seq_len, input, hidden) = (3, 5, 2, 7);
    let lstm = registry::examples()
        .into_iter()
        .find(|cell| cell.label() == "lstm")
        .expect("the plain LSTM is an example");
    gpu.count_time();
    run(
        &lstm,
        (batch, seq_len, input, hidden),
        &Backend::Cuda(gpu.clone()),
    );
    let time = gpu.take_time().expect("counting");
    let each_way = batch * seq_len * input
        + batch * 2 * hidden
        + 4 * hidden * (input + hidden + 2)
        + batch * (seq_len + 1) * hidden;
    // 3·5·2 + 3·14 + 28·11 + 3·6·7 = 30 + 42 + 308 + 126 = 506 floats.
    assert_eq!(each_way, 506);
    // 2·506 + 28 + 21 floats, and 15 f64.
    assert_eq!(time.copied_bytes, 4 * (2 * 506 + 28 + 21) + 8 * 15);
    assert_eq!(time.calls, 2, "one forward and one backward");
    assert!(time.copies <= time.busy, "{time:?}");
    assert_eq!(gpu.take_time().expect("still counting").calls, 0);
}

#[test]
fn gpu_kernels_match_the_cpu_kernels() {
    if gpu("gpu_kernels_match_the_cpu_kernels").is_none() {
        return;
    }
    let gpus = [TimeLoop::PerStep, TimeLoop::Persistent]
        .map(|time_loop| Arc::new(Gpu::open(0).unwrap().with_time_loop(time_loop)));
    matches_the_cpu(
        &gpus,
        &[
            (1, 1, 3, 1),
            (3, 7, 2, 5),
            (32, 100, 2, 128),
            (5, 30, 7, 300),
        ],
    );
}

#[test]
fn gpu_reruns_give_the_same_bits() {
    let Some(gpu) = gpu("gpu_reruns_give_the_same_bits") else {
        return;
    };
    reruns_give_the_same_bits(&gpu, (16, 50, 3, 64));
}

/// Two runs of every cell with a CUDA kernel on `gpu` give the same bits.
fn reruns_give_the_same_bits(gpu: &Arc<Gpu>, dims: (usize, usize, usize, usize)) {
    for cell in cuda_cells() {
        let first = run(&cell, dims, &Backend::Cuda(gpu.clone()));
        let second = run(&cell, dims, &Backend::Cuda(gpu.clone()));
        for ((name, a), (_, b)) in first.iter().zip(&second) {
            let same = a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
            assert!(same, "{cell:?}: {name} differs between two runs");
        }
    }
}
