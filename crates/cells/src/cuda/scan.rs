//! minGRU and minLSTM ([`crate::scan`]) on the GPU, in either form: their gates read
//! only the input, so after the input projection (one GEMM) the whole sequence is one
//! kernel with a thread per (row, unit), and so is the backward; then `W_ih`'s and the
//! bias's gradients over all `B·T` rows.

use candle_core::{Result, bail};

use super::gated::{self, Grads};
use super::{Buf, Gpu, int};
use crate::fused::Dims;

/// A scan cell's kernels: its gate blocks and its form's kernels.
#[derive(Clone, Copy)]
pub(crate) struct ScanKernels {
    pub gates: usize,
    pub form: ScanKernelForm,
}

/// Which kernels run a scan cell.
#[derive(Clone, Copy)]
pub(crate) enum ScanKernelForm {
    /// The cell's own sequential forward and backward, by name.
    Sequential {
        forward: &'static str,
        backward: &'static str,
    },
    /// `scan_log_forward` and `scan_log_backward` with the cell's code (`SCAN_*`).
    LogSpace { cell: i32 },
}

impl ScanKernels {
    /// The forward's name, for messages.
    fn name(&self) -> &'static str {
        match self.form {
            ScanKernelForm::Sequential { forward, .. } => forward,
            ScanKernelForm::LogSpace { .. } => "scan_log_forward",
        }
    }
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
        ..
    } = dims;
    let width = kernels.gates * hidden;
    let rows = batch * seq_len;
    if x.len() != rows * input || h0.len() != batch * hidden || params.len() != width * (input + 1)
    {
        bail!(
            "{} on CUDA: inputs do not match the layer's sizes",
            kernels.name()
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
    let [h0_at, gates_at, out_at] = [
        gpu.at(&h0_dev, 0, batch * hidden)?,
        gpu.at(&gates, 0, rows * width)?,
        gpu.at(&out, 0, rows * hidden)?,
    ];
    let sizes = [int(batch), int(seq_len), int(hidden)];
    match kernels.form {
        ScanKernelForm::Sequential { forward, .. } => gpu.launch(
            forward,
            Gpu::elementwise(batch * hidden),
            &[&sizes[0], &sizes[1], &sizes[2], &h0_at, &gates_at, &out_at],
        )?,
        ScanKernelForm::LogSpace { cell } => gpu.launch(
            "scan_log_forward",
            Gpu::elementwise(batch * hidden),
            &[
                &sizes[0],
                &sizes[1],
                &sizes[2],
                &int(kernels.gates),
                &cell,
                &h0_at,
                &gates_at,
                &out_at,
            ],
        )?,
    }
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
        ..
    } = dims;
    let width = kernels.gates * hidden;
    let rows = batch * seq_len;
    if grad_out.len() != rows * hidden {
        bail!(
            "{} on CUDA: the output gradient does not match the output",
            kernels.name()
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
    let [h0_at, out_at, grad_out_at, gates_at, dh_all_at, d_h0_at] = [
        gpu.at(&h0, 0, batch * hidden)?,
        gpu.at(&out, 0, rows * hidden)?,
        gpu.at(&grad_out_dev, 0, rows * hidden)?,
        gpu.at(&gates, 0, rows * width)?,
        gpu.at(&dh_all, 0, seq_len * batch * hidden)?,
        gpu.at(&d_h0, 0, batch * hidden)?,
    ];
    let sizes = [int(batch), int(seq_len), int(hidden)];
    match kernels.form {
        ScanKernelForm::Sequential { backward, .. } => gpu.launch(
            backward,
            Gpu::elementwise(batch * hidden),
            &[
                &sizes[0],
                &sizes[1],
                &sizes[2],
                &h0_at,
                &out_at,
                &grad_out_at,
                &gates_at,
                &dh_all_at,
                &d_h0_at,
            ],
        )?,
        ScanKernelForm::LogSpace { cell } => {
            // A_t and s_t of every step, which the reverse sweep reads.
            let [cum, sums] = [
                gpu.zeros::<f32>(rows * hidden)?,
                gpu.zeros::<f32>(rows * hidden)?,
            ];
            gpu.launch(
                "scan_log_backward",
                Gpu::elementwise(batch * hidden),
                &[
                    &sizes[0],
                    &sizes[1],
                    &sizes[2],
                    &int(kernels.gates),
                    &cell,
                    &h0_at,
                    &out_at,
                    &grad_out_at,
                    &gates_at,
                    &gpu.at(&cum, 0, rows * hidden)?,
                    &gpu.at(&sums, 0, rows * hidden)?,
                    &dh_all_at,
                    &d_h0_at,
                ],
            )?;
        }
    }
    let flow = gated::flow(gpu, &dh_all, dims)?;
    let d_params = gpu.zeros::<f32>(width * (input + 1))?;
    let d_x = gated::input_grads(
        gpu,
        (&gates, &x, &params),
        (&d_params, 0),
        (rows, width, input),
        dims.input_grad,
    )?;
    gated::column_sums(gpu, (&gates, rows, width), (&d_params, width * input))?;
    Ok(Grads {
        d_x: gated::download_input_grad(gpu, d_x)?,
        d_state0: gpu.download(&d_h0)?,
        d_params: gpu.download(&d_params)?,
        flow,
    })
}
