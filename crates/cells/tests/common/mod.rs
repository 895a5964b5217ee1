//! Helpers shared by the kernel tests (`fused.rs`, `cuda.rs`).
#![allow(dead_code)] // each test crate uses its own subset

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use rnnlab_cells::Params;

/// A deterministic, sign-changing fill of `dims`.
pub fn wave(dims: &[usize], salt: f64, dtype: DType) -> Tensor {
    let n: usize = dims.iter().product();
    let values: Vec<f64> = (0..n)
        .map(|k| 1.3 * ((k as f64 + salt) * 0.617).sin())
        .collect();
    Tensor::from_vec(values, dims, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

/// The values of `t` in f64, flattened.
pub fn flat(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// `grad.input`, `grad.h0`, `grad.c0` and `grad.<parameter>` of one layer (the head left
/// out), in that order. A state the cell never reads (the LRU's `h0`, `reads_h0` false)
/// has no gradient in an unrolled graph and a zero one from a fused kernel: zeros.
pub fn gradients(
    grads: &GradStore,
    (x, h0, c0): (&Var, &Var, Option<&Var>),
    params: &Params,
    reads_h0: bool,
) -> Vec<(String, Vec<f64>)> {
    let mut wrt: Vec<(String, &Var)> = vec![("input".into(), x), ("h0".into(), h0)];
    if let Some(c0) = c0 {
        wrt.push(("c0".into(), c0));
    }
    wrt.extend(
        params
            .iter()
            .filter(|(n, _)| !n.starts_with("head."))
            .map(|(n, v)| (n.to_string(), v)),
    );
    wrt.into_iter()
        .map(|(name, var)| {
            let zeros = var.zeros_like().unwrap();
            let grad = match grads.get(var) {
                Some(grad) => grad,
                None if name == "h0" && !reads_h0 => &zeros,
                None => panic!("no gradient for {name}"),
            };
            (format!("grad.{name}"), flat(grad))
        })
        .collect()
}
