//! The LRU ([`crate::lru`] has the equations) on the GPU: the input projection and the
//! readout as GEMMs over all `B·T` rows, the complex diagonal recurrence as one kernel
//! with a thread per (row, unit) each way; the units' `(Re λ, Im λ, γ)` are formed on the
//! host, and the per-unit sums of their gradients come back for the host to take through
//! `λ(ν, θ)` in f64.

use candle_core::{Result, bail};

use super::gated::{self, Grads};
use super::{Buf, Gpu, Strided, int, long};
use crate::fused::Dims;

/// Where `[nu_log | theta_log | weight_ih | bias | weight_c]` lie in the parameters.
pub(crate) type LruRanges = [std::ops::Range<usize>; 5];

/// What the forward keeps on the device for the backward.
pub(crate) struct LruGpuSaved {
    x: Buf<f32>,
    state0: Buf<f32>,
    params: Buf<f32>,
    units: Buf<f32>,
    /// `[B_re x̃ | B_im x̃ | D x̃]` `(B, T, 3H)`.
    projected: Buf<f32>,
    /// `[Re x_t | Im x_t]` `(B, T, 2H)`.
    states: Buf<f32>,
    /// The readout's pre-activation `(B, T, H)`.
    y: Buf<f32>,
}

/// The output `(B, T + 2, H)` (GELU of the readout, then the final `[Re x | Im x]`) over
/// `x (B, T, I)` from `state0 = [h | Re x | Im x] (B, 3H)`, given `units` = `[Re λ | Im λ
/// | γ]` `(3H)`, and what the backward needs.
pub(crate) fn lru_forward(
    gpu: &Gpu,
    (dims, [_, _, w_ih, bias, w_c]): (Dims, &LruRanges),
    units: &[f32],
    (x, state0, params): (&[f32], &[f32], &[f32]),
) -> Result<(Vec<f32>, LruGpuSaved)> {
    let Dims {
        batch,
        seq_len,
        input,
        hidden,
        ..
    } = dims;
    let rows = batch * seq_len;
    if x.len() != rows * input || state0.len() != batch * 3 * hidden || w_c.end > params.len() {
        bail!("fused-lru on CUDA: inputs do not match the layer's sizes");
    }
    let [x_dev, state0_dev, params_dev, units_dev] = gpu.upload_all([x, state0, params, units])?;
    let projected = gated::projection(
        gpu,
        (&x_dev, &params_dev, w_ih.start),
        &vec![0.0; 3 * hidden],
        (rows, input),
    )?;
    let states = gpu.zeros::<f32>(rows * 2 * hidden)?;
    gpu.launch(
        "lru_forward_scan",
        Gpu::elementwise(batch * hidden),
        &[
            &int(batch),
            &int(seq_len),
            &int(hidden),
            &gpu.at(&units_dev, 0, 3 * hidden)?,
            &gpu.at(&state0_dev, 0, batch * 3 * hidden)?,
            &gpu.at(&projected, 0, rows * 3 * hidden)?,
            &gpu.at(&states, 0, rows * 2 * hidden)?,
        ],
    )?;
    // y = D x̃ + b, then += states · W_cᵀ (the CPU's order).
    let y = gpu.zeros::<f32>(rows * hidden)?;
    gpu.launch(
        "lru_readout_init",
        Gpu::elementwise(rows * hidden),
        &[
            &long(rows),
            &int(hidden),
            &gpu.at(&projected, 0, rows * 3 * hidden)?,
            &gpu.at(&params_dev, bias.start, hidden)?,
            &gpu.at(&y, 0, rows * hidden)?,
        ],
    )?;
    gpu.gemm(
        (rows, hidden, 2 * hidden),
        Strided::new(&states, 0, 2 * hidden, 1),
        Strided::new(&params_dev, w_c.start, 1, 2 * hidden),
        Strided::new(&y, 0, hidden, 1),
        1.0,
    )?;
    let out_len = batch * (seq_len + 2) * hidden;
    let out = gpu.zeros::<f32>(out_len)?;
    gpu.launch(
        "lru_output",
        Gpu::elementwise(out_len),
        &[
            &int(batch),
            &int(seq_len),
            &int(hidden),
            &gpu.at(&y, 0, rows * hidden)?,
            &gpu.at(&states, 0, rows * 2 * hidden)?,
            &gpu.at(&out, 0, out_len)?,
        ],
    )?;
    let host_out = gpu.download(&out)?;
    Ok((
        host_out,
        LruGpuSaved {
            x: x_dev,
            state0: state0_dev,
            params: params_dev,
            units: units_dev,
            projected,
            states,
            y,
        },
    ))
}

/// The backward of [`lru_forward`] given the output's gradient `(B, T + 2, H)`: the
/// gradients (ν's and θ's slots left zero), the flow, and each unit's
/// `∂L/∂(Re λ, Im λ, γ)` summed over the batch in row order.
pub(crate) fn lru_backward(
    gpu: &Gpu,
    (dims, [_, _, w_ih, bias, w_c]): (Dims, &LruRanges),
    saved: LruGpuSaved,
    grad_out: &[f32],
) -> Result<(Grads, Vec<[f64; 3]>)> {
    let Dims {
        batch,
        seq_len,
        input,
        hidden,
        ..
    } = dims;
    let rows = batch * seq_len;
    if grad_out.len() != batch * (seq_len + 2) * hidden {
        bail!("fused-lru on CUDA: the output gradient does not match the output");
    }
    let LruGpuSaved {
        x,
        state0,
        params,
        units,
        projected,
        states,
        y,
    } = saved;
    // weight_c is the last parameter.
    let total = w_c.end;
    let grad_out_dev = gpu.upload(grad_out)?;
    let d_y = gpu.zeros::<f32>(rows * hidden)?;
    gpu.launch(
        "lru_d_y",
        Gpu::elementwise(rows * hidden),
        &[
            &int(batch),
            &int(seq_len),
            &int(hidden),
            &gpu.at(&grad_out_dev, 0, grad_out.len())?,
            &gpu.at(&y, 0, rows * hidden)?,
            &gpu.at(&d_y, 0, rows * hidden)?,
        ],
    )?;
    let d_params = gpu.zeros::<f32>(total)?;
    // ∂L/∂W_c = d_yᵀ · states; ∂L/∂states = d_y · W_c; ∂L/∂b = Σ d_y.
    gpu.gemm(
        (hidden, 2 * hidden, rows),
        Strided::new(&d_y, 0, 1, hidden),
        Strided::new(&states, 0, 2 * hidden, 1),
        Strided::new(&d_params, w_c.start, 2 * hidden, 1),
        0.0,
    )?;
    let d_states = gpu.zeros::<f32>(rows * 2 * hidden)?;
    gpu.gemm(
        (rows, 2 * hidden, hidden),
        Strided::new(&d_y, 0, hidden, 1),
        Strided::new(&params, w_c.start, 2 * hidden, 1),
        Strided::new(&d_states, 0, 2 * hidden, 1),
        0.0,
    )?;
    gated::column_sums(gpu, (&d_y, rows, hidden), (&d_params, bias.start))?;
    let flow_rows = gpu.zeros::<f32>(seq_len * batch * 2 * hidden)?;
    let d_state0 = gpu.zeros::<f32>(batch * 3 * hidden)?;
    let unit_sums = gpu.zeros::<f64>(batch * hidden * 3)?;
    gpu.launch(
        "lru_backward_scan",
        Gpu::elementwise(batch * hidden),
        &[
            &int(batch),
            &int(seq_len),
            &int(hidden),
            &gpu.at(&units, 0, 3 * hidden)?,
            &gpu.at(&state0, 0, batch * 3 * hidden)?,
            &gpu.at(&states, 0, rows * 2 * hidden)?,
            &gpu.at(&d_states, 0, rows * 2 * hidden)?,
            &gpu.at(&d_y, 0, rows * hidden)?,
            &gpu.at(&grad_out_dev, 0, grad_out.len())?,
            &gpu.at(&projected, 0, rows * 3 * hidden)?,
            &gpu.at(&flow_rows, 0, seq_len * batch * 2 * hidden)?,
            &gpu.at(&d_state0, 0, batch * 3 * hidden)?,
            &gpu.at(&unit_sums, 0, batch * hidden * 3)?,
        ],
    )?;
    let flow = gated::flow_of(gpu, &flow_rows, dims, 2 * hidden)?;
    // `projected` now holds the gradient of the input projection's output.
    let d_x = gated::input_grads(
        gpu,
        (&projected, &x, &params),
        (&d_params, w_ih.start),
        (rows, 3 * hidden, input),
        dims.input_grad,
    )?;
    let per_row = gpu.download(&unit_sums)?;
    let mut sums = vec![[0.0; 3]; hidden];
    for row in per_row.chunks_exact(hidden * 3) {
        for (sum, unit) in sums.iter_mut().zip(row.chunks_exact(3)) {
            sum.iter_mut().zip(unit).for_each(|(s, &u)| *s += u);
        }
    }
    Ok((
        Grads {
            d_x: gated::download_input_grad(gpu, d_x)?,
            d_state0: gpu.download(&d_state0)?,
            d_params: gpu.download(&d_params)?,
            flow,
        },
        sums,
    ))
}
