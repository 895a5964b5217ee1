//! The vanilla RNN (`torch.nn.RNN`, tanh or ReLU; [`crate::rnn`] has the equation) on
//! the GPU: the input projection as one GEMM; the time loop in one persistent kernel
//! each way or (per the [`super::TimeLoop`]) one kernel per step forward (recurrent
//! product and activation) and one pointwise kernel and one GEMM per step backward; then
//! the weight gradients over all `B·T` rows.

use candle_core::{Result, bail};

use super::gated::{self, Grads};
use super::{ELMAN_RELU, ELMAN_TANH, Gpu, int, long};
use crate::fused::{Dims, GatedOffsets};

/// The hidden states `(B, T, H)` of the RNN over `x (B, T, I)` from `h0 (B, H)`.
pub(crate) fn rnn_forward(
    gpu: &Gpu,
    dims: Dims,
    offsets: &GatedOffsets,
    relu: bool,
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
    if offsets.gate_rows() != hidden || params.len() != offsets.end || x.len() != rows * input {
        bail!("fused-rnn on CUDA: inputs do not match the layer's sizes");
    }
    let [x_dev, h0_dev, params_dev] = gpu.upload_all([x, h0, params])?;
    // The pre-activations become the outputs in place: (B, T, H) is the same layout.
    let out = gated::input_projection(
        gpu,
        offsets,
        (&x_dev, &params_dev, params),
        (rows, input),
        hidden,
    )?;
    let weight_hh_t = gated::weight_hh_t(gpu, offsets, &params_dev, hidden)?;
    let weight_hh_t_at = gpu.at(&weight_hh_t, 0, hidden * hidden)?;
    let out_at = gpu.at(&out, 0, rows * hidden)?;
    if gpu.persistent(hidden) {
        gpu.launch(
            "elman_forward_persistent",
            gated::persistent_launch(batch, hidden),
            &[
                &int(batch),
                &int(seq_len),
                &int(hidden),
                &activation(relu),
                &weight_hh_t_at,
                &0u64,
                &gpu.at(&h0_dev, 0, batch * hidden)?,
                &out_at,
            ],
        )?;
        return gpu.download(&out);
    }
    for t in 0..seq_len {
        let (h_prev, h_rs) = gated::previous_hidden(gpu, t, (&h0_dev, &out), dims)?;
        gpu.launch(
            "elman_forward_step",
            gated::step_launch(batch, hidden),
            &[
                &int(batch),
                &int(seq_len),
                &int(hidden),
                &int(t),
                &activation(relu),
                &weight_hh_t_at,
                &0u64,
                &h_prev,
                &long(h_rs),
                &out_at,
            ],
        )?;
    }
    gpu.download(&out)
}

/// The gradients of the input, `h0` and the parameters (in spec order) of
/// [`rnn_forward`], given its output and the output's gradient, and the batch-averaged
/// `‖∂L/∂h_t‖` of every step.
pub(crate) fn rnn_backward(
    gpu: &Gpu,
    dims: Dims,
    offsets: &GatedOffsets,
    relu: bool,
    (x, h0, params): (&[f32], &[f32], &[f32]),
    (out, grad_out): (&[f32], &[f32]),
) -> Result<Grads> {
    let Dims {
        batch,
        seq_len,
        hidden,
        ..
    } = dims;
    let rows = batch * seq_len;
    if out.len() != rows * hidden || grad_out.len() != out.len() {
        bail!("fused-rnn on CUDA: the output or its gradient does not match the layer");
    }
    let [x_dev, h0_dev, params_dev, out_dev, grad_out_dev] =
        gpu.upload_all([x, h0, params, out, grad_out])?;
    let d_pre = gpu.zeros::<f32>(rows * hidden)?;
    let dh_rec = gpu.zeros::<f32>(batch * hidden)?;
    let dh_all = gpu.zeros::<f32>(seq_len * batch * hidden)?;
    let args = [
        gpu.at(&out_dev, 0, rows * hidden)?,
        gpu.at(&grad_out_dev, 0, rows * hidden)?,
        gpu.at(&dh_rec, 0, batch * hidden)?,
        gpu.at(&d_pre, 0, rows * hidden)?,
        gpu.at(&dh_all, 0, seq_len * batch * hidden)?,
    ];
    if gpu.persistent(hidden) {
        gpu.launch(
            "elman_backward_persistent",
            gated::persistent_launch(batch, hidden),
            &[
                &int(batch),
                &int(seq_len),
                &int(hidden),
                &activation(relu),
                &gpu.at(&params_dev, offsets.weight_hh, hidden * hidden)?,
                &args[0],
                &args[1],
                &args[2],
                &args[3],
                &0u64,
                &args[4],
            ],
        )?;
    } else {
        for t in (0..seq_len).rev() {
            gpu.launch(
                "elman_backward_step",
                Gpu::elementwise(batch * hidden),
                &[
                    &int(batch),
                    &int(seq_len),
                    &int(hidden),
                    &int(t),
                    &activation(relu),
                    &args[0],
                    &args[1],
                    &args[2],
                    &args[3],
                    &0u64,
                    &args[4],
                ],
            )?;
            gated::recurrent_grad(
                gpu,
                offsets,
                (&d_pre, &params_dev),
                (&dh_rec, false),
                t,
                dims,
            )?;
        }
    }
    let flow = gated::flow(gpu, &dh_all, dims)?;
    let (d_x, d_params) = gated::weight_grads(
        gpu,
        offsets,
        (&d_pre, None),
        (&x_dev, &params_dev),
        (&h0_dev, hidden),
        (&out_dev, seq_len * hidden),
        None,
        dims,
    )?;
    Ok(Grads {
        d_x,
        d_state0: gpu.download(&dh_rec)?,
        d_params,
        flow,
    })
}

/// The Elman kernels' code for φ.
fn activation(relu: bool) -> i32 {
    if relu { ELMAN_RELU } else { ELMAN_TANH }
}
