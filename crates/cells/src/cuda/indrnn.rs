//! The IndRNN ([`crate::indrnn`] has the equation) on the GPU: its recurrence is
//! diagonal, so after the input projection (one GEMM) the whole sequence is one kernel
//! with a thread per (row, unit), and so is the backward; then `W_ih`'s and the bias's
//! gradients over all `B·T` rows.

use candle_core::{Result, bail};

use super::gated::{self, Grads};
use super::{Gpu, int};
use crate::fused::Dims;

/// Where `[weight_ih | u | bias_ih]` lie in the flat parameters.
pub(crate) type IndRnnRanges = [std::ops::Range<usize>; 3];

/// The hidden states `(B, T, H)` of the IndRNN over `x (B, T, I)` from `h0 (B, H)`.
pub(crate) fn indrnn_forward(
    gpu: &Gpu,
    dims: Dims,
    [w_ih, u, bias]: &IndRnnRanges,
    (x, h0, params): (&[f32], &[f32], &[f32]),
) -> Result<Vec<f32>> {
    let Dims {
        batch,
        seq_len,
        input,
        hidden,
        ..
    } = dims;
    let rows = batch * seq_len;
    if x.len() != rows * input || h0.len() != batch * hidden || bias.end > params.len() {
        bail!("fused-indrnn on CUDA: inputs do not match the layer's sizes");
    }
    let [x_dev, h0_dev, params_dev] = gpu.upload_all([x, h0, params])?;
    let out = gated::projection(
        gpu,
        (&x_dev, &params_dev, w_ih.start),
        &params[bias.clone()],
        (rows, input),
    )?;
    gpu.launch(
        "indrnn_forward",
        Gpu::elementwise(batch * hidden),
        &[
            &int(batch),
            &int(seq_len),
            &int(hidden),
            &gpu.at(&params_dev, u.start, hidden)?,
            &gpu.at(&h0_dev, 0, batch * hidden)?,
            &gpu.at(&out, 0, rows * hidden)?,
        ],
    )?;
    gpu.download(&out)
}

/// The gradients of the input, `h0` and the parameters of [`indrnn_forward`], given its
/// output and the output's gradient, and the batch-averaged `‖∂L/∂h_t‖` of every step.
pub(crate) fn indrnn_backward(
    gpu: &Gpu,
    dims: Dims,
    [w_ih, u, bias]: &IndRnnRanges,
    (x, h0, params): (&[f32], &[f32], &[f32]),
    (out, grad_out): (&[f32], &[f32]),
) -> Result<Grads> {
    let Dims {
        batch,
        seq_len,
        input,
        hidden,
        ..
    } = dims;
    let rows = batch * seq_len;
    if out.len() != rows * hidden || grad_out.len() != out.len() {
        bail!("fused-indrnn on CUDA: the output or its gradient does not match the layer");
    }
    let [x_dev, h0_dev, params_dev, out_dev, grad_out_dev] =
        gpu.upload_all([x, h0, params, out, grad_out])?;
    let d_pre = gpu.zeros::<f32>(rows * hidden)?;
    let dh_all = gpu.zeros::<f32>(seq_len * batch * hidden)?;
    let d_h0 = gpu.zeros::<f32>(batch * hidden)?;
    let d_u_rows = gpu.zeros::<f32>(batch * hidden)?;
    gpu.launch(
        "indrnn_backward",
        Gpu::elementwise(batch * hidden),
        &[
            &int(batch),
            &int(seq_len),
            &int(hidden),
            &gpu.at(&params_dev, u.start, hidden)?,
            &gpu.at(&h0_dev, 0, batch * hidden)?,
            &gpu.at(&out_dev, 0, rows * hidden)?,
            &gpu.at(&grad_out_dev, 0, rows * hidden)?,
            &gpu.at(&d_pre, 0, rows * hidden)?,
            &gpu.at(&dh_all, 0, seq_len * batch * hidden)?,
            &gpu.at(&d_h0, 0, batch * hidden)?,
            &gpu.at(&d_u_rows, 0, batch * hidden)?,
        ],
    )?;
    let flow = gated::flow(gpu, &dh_all, dims)?;
    let d_params = gpu.zeros::<f32>(params.len())?;
    let d_x = gated::input_grads(
        gpu,
        (&d_pre, &x_dev, &params_dev),
        (&d_params, w_ih.start),
        (rows, hidden, input),
        dims.input_grad,
    )?;
    gated::column_sums(gpu, (&d_u_rows, batch, hidden), (&d_params, u.start))?;
    gated::column_sums(gpu, (&d_pre, rows, hidden), (&d_params, bias.start))?;
    Ok(Grads {
        d_x: gated::download_input_grad(gpu, d_x)?,
        d_state0: gpu.download(&d_h0)?,
        d_params: gpu.download(&d_params)?,
        flow,
    })
}
