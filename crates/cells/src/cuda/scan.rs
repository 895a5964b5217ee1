//! minGRU and minLSTM in their sequential form ([`crate::scan`]) on the GPU: their gates
//! read only the input, so after the input projection (one GEMM) the whole sequence is
//! one kernel with a thread per (row, unit), and so is the backward; then `W_ih`'s and
//! the bias's gradients over all `B·T` rows.

use candle_core::{Result, bail};

use super::gated::{self, Grads};
use super::{Buf, Gpu, int};
use crate::fused::Dims;

/// A scan cell's kernels: its gate blocks and the names of its forward and backward.
#[derive(Clone, Copy)]
pub(crate) struct ScanKernels {
    pub gates: usize,
    pub forward: &'static str,
    pub backward: &'static str,
}

/// What the forward keeps on the device for the backward.
pub(crate) struct ScanGpuSaved {
    x: Buf<f32>,
    h0: Buf<f32>,
    params: Buf<f32>,
    /// The gates as the forward left them `(B, T, G·H)`.
    gates: Buf<f32>,
    /// The hidden states `(B, T, H)`.
    out: Buf<f32>,
}

/// The hidden states `(B, T, H)` over `x (B, T, I)` from `h0 (B, H)`, with the
/// parameters `[weight_ih (G·H, I) | bias_ih (G·H)]`, and what the backward needs.
pub(crate) fn scan_forward(
    gpu: &Gpu,
    (dims, kernels): (Dims, ScanKernels),
    (x, h0, params): (&[f32], &[f32], &[f32]),
) -> Result<(Vec<f32>, ScanGpuSaved)> {
    let Dims {
        batch,
        seq_len,
        input,
        hidden,
    } = dims;
    let width = kernels.gates * hidden;
    let rows = batch * seq_len;
    if x.len() != rows * input || h0.len() != batch * hidden || params.len() != width * (input + 1)
    {
        bail!(
            "{} on CUDA: inputs do not match the layer's sizes",
            kernels.forward
        );
    }
    let [x_dev, h0_dev, params_dev] = gpu.upload_all([x, h0, params])?;
    let gates = gated::projection(
        gpu,
        (&x_dev, &params_dev, 0),
        &params[width * input..],
        (rows, input),
    )?;
    let out = gpu.zeros::<f32>(rows * hidden)?;
    gpu.launch(
        kernels.forward,
        Gpu::elementwise(batch * hidden),
        &[
            &int(batch),
            &int(seq_len),
            &int(hidden),
            &gpu.at(&h0_dev, 0, batch * hidden)?,
            &gpu.at(&gates, 0, rows * width)?,
            &gpu.at(&out, 0, rows * hidden)?,
        ],
    )?;
    let host_out = gpu.download(&out)?;
    Ok((
        host_out,
        ScanGpuSaved {
            x: x_dev,
            h0: h0_dev,
            params: params_dev,
            gates,
            out,
        },
    ))
}

/// The backward of [`scan_forward`] given the output's gradient `(B, T, H)`.
pub(crate) fn scan_backward(
    gpu: &Gpu,
    (dims, kernels): (Dims, ScanKernels),
    saved: ScanGpuSaved,
    grad_out: &[f32],
) -> Result<Grads> {
    let Dims {
        batch,
        seq_len,
        input,
        hidden,
    } = dims;
    let width = kernels.gates * hidden;
    let rows = batch * seq_len;
    if grad_out.len() != rows * hidden {
        bail!(
            "{} on CUDA: the output gradient does not match the output",
            kernels.backward
        );
    }
    let ScanGpuSaved {
        x,
        h0,
        params,
        gates,
        out,
    } = saved;
    let grad_out_dev = gpu.upload(grad_out)?;
    let dh_all = gpu.zeros::<f32>(seq_len * batch * hidden)?;
    let d_h0 = gpu.zeros::<f32>(batch * hidden)?;
    gpu.launch(
        kernels.backward,
        Gpu::elementwise(batch * hidden),
        &[
            &int(batch),
            &int(seq_len),
            &int(hidden),
            &gpu.at(&h0, 0, batch * hidden)?,
            &gpu.at(&out, 0, rows * hidden)?,
            &gpu.at(&grad_out_dev, 0, rows * hidden)?,
            &gpu.at(&gates, 0, rows * width)?,
            &gpu.at(&dh_all, 0, seq_len * batch * hidden)?,
            &gpu.at(&d_h0, 0, batch * hidden)?,
        ],
    )?;
    let flow = gated::flow(gpu, &dh_all, dims)?;
    let d_params = gpu.zeros::<f32>(width * (input + 1))?;
    let d_x = gated::input_grads(
        gpu,
        (&gates, &x, &params),
        (&d_params, 0),
        (rows, width, input),
    )?;
    gated::column_sums(gpu, (&gates, rows, width), (&d_params, width * input))?;
    Ok(Grads {
        d_x: gpu.download(&d_x)?,
        d_state0: gpu.download(&d_h0)?,
        d_params: gpu.download(&d_params)?,
        flow,
    })
}
