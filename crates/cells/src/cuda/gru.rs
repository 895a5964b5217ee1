//! The GRU with the reset gate after `W_hn` (`torch.nn.GRU`; [`crate::gru`] has the
//! equations) on the GPU: the input projection as one GEMM (with `b_hr`, `b_hz` folded
//! in); the time loop in one persistent kernel each way or (per the
//! [`super::TimeLoop`]) one kernel per step forward and, per step backward, one
//! pointwise kernel and one GEMM for the recurrent share of `∂L/∂h_{t−1}`; then the
//! weight gradients over all `B·T` rows, `W_hh`'s and `b_hh`'s from the recurrent
//! product's own gradient.

use candle_core::{Result, bail};

use super::gated::{self, Grads};
use super::{Buf, Gpu, int, long};
use crate::fused::{Dims, GatedOffsets};

/// What the forward keeps on the device for the backward.
pub(crate) struct GruGpuSaved {
    x: Buf<f32>,
    h0: Buf<f32>,
    params: Buf<f32>,
    /// The activated gates `[r, z, n]` `(B, T, 3H)`.
    gates: Buf<f32>,
    /// `W_hn h_{t−1} + b_hn` `(B, T, H)`.
    hn: Buf<f32>,
    /// The hidden states `(B, T, H)`.
    out: Buf<f32>,
}

/// The hidden states `(B, T, H)` of the GRU over `x (B, T, I)` from `h0 (B, H)`, and
/// what the backward needs.
pub(crate) fn gru_forward(
    gpu: &Gpu,
    dims: Dims,
    offsets: &GatedOffsets,
    (x, h0, params): (&[f32], &[f32], &[f32]),
) -> Result<(Vec<f32>, GruGpuSaved)> {
    let Dims {
        batch,
        seq_len,
        input,
        hidden,
    } = dims;
    let gh = 3 * hidden;
    let rows = batch * seq_len;
    if offsets.gate_rows() != gh || params.len() != offsets.end || x.len() != rows * input {
        bail!("fused-gru on CUDA: inputs do not match the layer's sizes");
    }
    let [x_dev, h0_dev, params_dev] = gpu.upload_all([x, h0, params])?;
    // b_hn stays out: the reset gate scales it.
    let gates = gated::input_projection(
        gpu,
        offsets,
        (&x_dev, &params_dev, params),
        (rows, input),
        2 * hidden,
    )?;
    let weight_hh_t = gated::weight_hh_t(gpu, offsets, &params_dev, hidden)?;
    let hn = gpu.zeros::<f32>(rows * hidden)?;
    let out = gpu.zeros::<f32>(rows * hidden)?;
    let weight_hh_t_at = gpu.at(&weight_hh_t, 0, hidden * gh)?;
    let b_hn = gpu.at(&params_dev, offsets.bias_hh + 2 * hidden, hidden)?;
    let [gates_at, hn_at, out_at] = [
        gpu.at(&gates, 0, rows * gh)?,
        gpu.at(&hn, 0, rows * hidden)?,
        gpu.at(&out, 0, rows * hidden)?,
    ];
    if gpu.persistent(hidden) {
        gpu.launch(
            "gru_forward_persistent",
            gated::persistent_launch(batch, hidden),
            &[
                &int(batch),
                &int(seq_len),
                &int(hidden),
                &weight_hh_t_at,
                &b_hn,
                &gpu.at(&h0_dev, 0, batch * hidden)?,
                &gates_at,
                &hn_at,
                &out_at,
            ],
        )?;
    } else {
        for t in 0..seq_len {
            let (h_prev, h_rs) = gated::previous_hidden(gpu, t, (&h0_dev, &out), dims)?;
            gpu.launch(
                "gru_forward_step",
                gated::step_launch(batch, hidden),
                &[
                    &int(batch),
                    &int(seq_len),
                    &int(hidden),
                    &int(t),
                    &weight_hh_t_at,
                    &b_hn,
                    &h_prev,
                    &long(h_rs),
                    &gates_at,
                    &hn_at,
                    &out_at,
                ],
            )?;
        }
    }
    let host_out = gpu.download(&out)?;
    Ok((
        host_out,
        GruGpuSaved {
            x: x_dev,
            h0: h0_dev,
            params: params_dev,
            gates,
            hn,
            out,
        },
    ))
}

/// The backward of [`gru_forward`] given the output's gradient `(B, T, H)`.
pub(crate) fn gru_backward(
    gpu: &Gpu,
    dims: Dims,
    offsets: &GatedOffsets,
    saved: GruGpuSaved,
    grad_out: &[f32],
) -> Result<Grads> {
    let Dims {
        batch,
        seq_len,
        hidden,
        ..
    } = dims;
    let gh = 3 * hidden;
    let rows = batch * seq_len;
    if grad_out.len() != rows * hidden {
        bail!("fused-gru on CUDA: the output gradient does not match the output");
    }
    let GruGpuSaved {
        x,
        h0,
        params,
        gates,
        hn,
        out,
    } = saved;
    let grad_out_dev = gpu.upload(grad_out)?;
    let d_pre = gpu.zeros::<f32>(rows * gh)?;
    let d_rec = gpu.zeros::<f32>(rows * gh)?;
    let dh_rec = gpu.zeros::<f32>(batch * hidden)?;
    let dh_all = gpu.zeros::<f32>(seq_len * batch * hidden)?;
    let fixed = [
        gpu.at(&grad_out_dev, 0, rows * hidden)?,
        gpu.at(&gates, 0, rows * gh)?,
        gpu.at(&hn, 0, rows * hidden)?,
    ];
    let written = [
        gpu.at(&dh_rec, 0, batch * hidden)?,
        gpu.at(&d_pre, 0, rows * gh)?,
        gpu.at(&d_rec, 0, rows * gh)?,
        gpu.at(&dh_all, 0, seq_len * batch * hidden)?,
    ];
    if gpu.persistent(hidden) {
        gpu.launch(
            "gru_backward_persistent",
            gated::persistent_launch(batch, hidden),
            &[
                &int(batch),
                &int(seq_len),
                &int(hidden),
                &gpu.at(&params, offsets.weight_hh, gh * hidden)?,
                &fixed[0],
                &fixed[1],
                &fixed[2],
                &gpu.at(&h0, 0, batch * hidden)?,
                &gpu.at(&out, 0, rows * hidden)?,
                &written[0],
                &written[1],
                &written[2],
                &written[3],
            ],
        )?;
    } else {
        for t in (0..seq_len).rev() {
            let (h_prev, h_rs) = gated::previous_hidden(gpu, t, (&h0, &out), dims)?;
            gpu.launch(
                "gru_backward_step",
                Gpu::elementwise(batch * hidden),
                &[
                    &int(batch),
                    &int(seq_len),
                    &int(hidden),
                    &int(t),
                    &fixed[0],
                    &fixed[1],
                    &fixed[2],
                    &h_prev,
                    &long(h_rs),
                    &written[0],
                    &written[1],
                    &written[2],
                    &written[3],
                ],
            )?;
            // ∂L/∂h_{t−1} = z ⊙ ∂L/∂h_t (left in dh_rec) + d_rec[:, t] · W_hh.
            gated::recurrent_grad(gpu, offsets, (&d_rec, &params), (&dh_rec, true), t, dims)?;
        }
    }
    let flow = gated::flow(gpu, &dh_all, dims)?;
    let (d_x, d_params) = gated::weight_grads(
        gpu,
        offsets,
        (&d_pre, Some(&d_rec)),
        (&x, &params),
        (&h0, hidden),
        (&out, seq_len * hidden),
        dims,
    )?;
    Ok(Grads {
        d_x,
        d_state0: gpu.download(&dh_rec)?,
        d_params,
        flow,
    })
}
