//! The GRU ([`crate::gru`] has the equations) on the GPU, with the reset gate after `W_hn`
//! (`torch.nn.GRU`) or before it (Cho et al. 2014): the input projection as one GEMM
//! (with `b_hr`, `b_hz` folded in, and `b_hn` too with the reset before); the time loop
//! in one persistent kernel each way or (per the [`super::TimeLoop`]) per step forward
//! one kernel (two with the reset before: r and z, then n over `r ⊙ h_{t−1}`) and per
//! step backward a pointwise kernel and a GEMM for the recurrent share of `∂L/∂h_{t−1}`
//! (with the reset before, first a GEMM for `∂L/∂(r ⊙ h_{t−1})` and r's gradient); then
//! the weight gradients over all `B·T` rows, `W_hh`'s and `b_hh`'s from the recurrent
//! product's own gradient.

use candle_core::{Result, bail};

use super::gated::{self, Grads};
use super::{Buf, Gpu, Strided, int, long};
use crate::fused::{Dims, GatedOffsets};
use crate::gru::GruReset;

/// What the forward keeps on the device for the backward.
pub(crate) struct GruGpuSaved {
    x: Buf<f32>,
    h0: Buf<f32>,
    params: Buf<f32>,
    /// The activated gates `[r, z, n]` `(B, T, 3H)`.
    gates: Buf<f32>,
    /// `(B, T, H)`: `W_hn h_{t−1} + b_hn` with the reset after `W_hn`, `r ⊙ h_{t−1}` with
    /// it before.
    extra: Buf<f32>,
    /// The hidden states `(B, T, H)`.
    out: Buf<f32>,
}

/// The hidden states `(B, T, H)` of the GRU over `x (B, T, I)` from `h0 (B, H)`, and
/// what the backward needs.
pub(crate) fn gru_forward(
    gpu: &Gpu,
    (dims, reset): (Dims, GruReset),
    offsets: &GatedOffsets,
    (x, h0, params): (&[f32], &[f32], &[f32]),
) -> Result<(Vec<f32>, GruGpuSaved)> {
    let Dims {
        batch,
        seq_len,
        input,
        hidden,
        ..
    } = dims;
    let gh = 3 * hidden;
    let rows = batch * seq_len;
    if offsets.gate_rows() != gh || params.len() != offsets.end || x.len() != rows * input {
        bail!("fused-gru on CUDA: inputs do not match the layer's sizes");
    }
    let [x_dev, h0_dev, params_dev] = gpu.upload_all([x, h0, params])?;
    // b_hn folds in only with the reset before W_hn: after it, r scales it.
    let folded = match reset {
        GruReset::After => 2 * hidden,
        GruReset::Before => gh,
    };
    let gates = gated::input_projection(
        gpu,
        offsets,
        (&x_dev, &params_dev, params),
        (rows, input),
        folded,
    )?;
    let extra = gpu.zeros::<f32>(rows * hidden)?;
    let out = gpu.zeros::<f32>(rows * hidden)?;
    let [gates_at, extra_at, out_at, h0_at] = [
        gpu.at(&gates, 0, rows * gh)?,
        gpu.at(&extra, 0, rows * hidden)?,
        gpu.at(&out, 0, rows * hidden)?,
        gpu.at(&h0_dev, 0, batch * hidden)?,
    ];
    let sizes = [int(batch), int(seq_len), int(hidden)];
    match reset {
        GruReset::After => {
            let weight_hh_t = gated::weight_hh_t(gpu, offsets, &params_dev, hidden)?;
            let weight_hh_t_at = gpu.at(&weight_hh_t, 0, hidden * gh)?;
            let b_hn = gpu.at(&params_dev, offsets.bias_hh + 2 * hidden, hidden)?;
            if gpu.persistent(hidden) {
                gpu.launch(
                    "gru_forward_persistent",
                    gated::persistent_launch(batch, hidden),
                    &[
                        &sizes[0],
                        &sizes[1],
                        &sizes[2],
                        &weight_hh_t_at,
                        &b_hn,
                        &h0_at,
                        &gates_at,
                        &extra_at,
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
                            &sizes[0],
                            &sizes[1],
                            &sizes[2],
                            &int(t),
                            &weight_hh_t_at,
                            &b_hn,
                            &h_prev,
                            &long(h_rs),
                            &gates_at,
                            &extra_at,
                            &out_at,
                        ],
                    )?;
                }
            }
        }
        GruReset::Before => {
            let w_rz_t =
                gated::transposed(gpu, (&params_dev, offsets.weight_hh), 2 * hidden, hidden)?;
            let w_n_t = gated::transposed(
                gpu,
                (&params_dev, offsets.weight_hh + 2 * hidden * hidden),
                hidden,
                hidden,
            )?;
            let w_rz_t_at = gpu.at(&w_rz_t, 0, 2 * hidden * hidden)?;
            let w_n_t_at = gpu.at(&w_n_t, 0, hidden * hidden)?;
            if gpu.persistent(hidden) {
                gpu.launch(
                    "gru_before_forward_persistent",
                    gated::persistent_launch(batch, hidden),
                    &[
                        &sizes[0], &sizes[1], &sizes[2], &w_rz_t_at, &w_n_t_at, &h0_at, &gates_at,
                        &extra_at, &out_at,
                    ],
                )?;
            } else {
                for t in 0..seq_len {
                    let (h_prev, h_rs) = gated::previous_hidden(gpu, t, (&h0_dev, &out), dims)?;
                    gpu.launch(
                        "gru_before_rz_step",
                        gated::step_launch(batch, hidden),
                        &[
                            &sizes[0],
                            &sizes[1],
                            &sizes[2],
                            &int(t),
                            &w_rz_t_at,
                            &h_prev,
                            &long(h_rs),
                            &gates_at,
                            &extra_at,
                        ],
                    )?;
                    gpu.launch(
                        "gru_before_n_step",
                        gated::step_launch(batch, hidden),
                        &[
                            &sizes[0],
                            &sizes[1],
                            &sizes[2],
                            &int(t),
                            &w_n_t_at,
                            &h_prev,
                            &long(h_rs),
                            &gates_at,
                            &extra_at,
                            &out_at,
                        ],
                    )?;
                }
            }
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
            extra,
            out,
        },
    ))
}

/// The backward of [`gru_forward`] given the output's gradient `(B, T, H)`.
pub(crate) fn gru_backward(
    gpu: &Gpu,
    (dims, reset): (Dims, GruReset),
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
        extra,
        out,
    } = saved;
    let grad_out_dev = gpu.upload(grad_out)?;
    let d_pre = gpu.zeros::<f32>(rows * gh)?;
    let d_rec = gpu.zeros::<f32>(rows * gh)?;
    let dh_rec = gpu.zeros::<f32>(batch * hidden)?;
    let dh_all = gpu.zeros::<f32>(seq_len * batch * hidden)?;
    let [grad_out_at, gates_at, extra_at] = [
        gpu.at(&grad_out_dev, 0, rows * hidden)?,
        gpu.at(&gates, 0, rows * gh)?,
        gpu.at(&extra, 0, rows * hidden)?,
    ];
    let [dh_rec_at, d_pre_at, d_rec_at, dh_all_at] = [
        gpu.at(&dh_rec, 0, batch * hidden)?,
        gpu.at(&d_pre, 0, rows * gh)?,
        gpu.at(&d_rec, 0, rows * gh)?,
        gpu.at(&dh_all, 0, seq_len * batch * hidden)?,
    ];
    let sizes = [int(batch), int(seq_len), int(hidden)];
    if gpu.persistent(hidden) {
        let w_hh = gpu.at(&params, offsets.weight_hh, gh * hidden)?;
        let [h0_at, out_at] = [
            gpu.at(&h0, 0, batch * hidden)?,
            gpu.at(&out, 0, rows * hidden)?,
        ];
        match reset {
            GruReset::After => gpu.launch(
                "gru_backward_persistent",
                gated::persistent_launch(batch, hidden),
                &[
                    &sizes[0],
                    &sizes[1],
                    &sizes[2],
                    &w_hh,
                    &grad_out_at,
                    &gates_at,
                    &extra_at,
                    &h0_at,
                    &out_at,
                    &dh_rec_at,
                    &d_pre_at,
                    &d_rec_at,
                    &dh_all_at,
                ],
            )?,
            GruReset::Before => gpu.launch(
                "gru_before_backward_persistent",
                gated::persistent_launch(batch, hidden),
                &[
                    &sizes[0],
                    &sizes[1],
                    &sizes[2],
                    &w_hh,
                    &grad_out_at,
                    &gates_at,
                    &h0_at,
                    &out_at,
                    &dh_rec_at,
                    &d_pre_at,
                    &d_rec_at,
                    &dh_all_at,
                ],
            )?,
        }
    } else {
        let d_rh = gpu.zeros::<f32>(batch * hidden)?;
        for t in (0..seq_len).rev() {
            let (h_prev, h_rs) = gated::previous_hidden(gpu, t, (&h0, &out), dims)?;
            match reset {
                GruReset::After => {
                    gpu.launch(
                        "gru_backward_step",
                        Gpu::elementwise(batch * hidden),
                        &[
                            &sizes[0],
                            &sizes[1],
                            &sizes[2],
                            &int(t),
                            &grad_out_at,
                            &gates_at,
                            &extra_at,
                            &h_prev,
                            &long(h_rs),
                            &dh_rec_at,
                            &d_pre_at,
                            &d_rec_at,
                            &dh_all_at,
                        ],
                    )?;
                    // ∂L/∂h_{t−1} = z ⊙ ∂L/∂h_t (left in dh_rec) + d_rec[:, t] · W_hh.
                    gated::recurrent_grad(
                        gpu,
                        offsets,
                        (&d_rec, &params),
                        (&dh_rec, true),
                        t,
                        dims,
                    )?;
                }
                GruReset::Before => {
                    gpu.launch(
                        "gru_before_backward_step",
                        Gpu::elementwise(batch * hidden),
                        &[
                            &sizes[0],
                            &sizes[1],
                            &sizes[2],
                            &int(t),
                            &grad_out_at,
                            &gates_at,
                            &h_prev,
                            &long(h_rs),
                            &dh_rec_at,
                            &d_pre_at,
                            &d_rec_at,
                            &dh_all_at,
                        ],
                    )?;
                    // ∂L/∂(r ⊙ h_{t−1}) = d_n · W_hn, then r's gradient and its share.
                    gpu.gemm(
                        (batch, hidden, hidden),
                        Strided::new(&d_pre, t * gh + 2 * hidden, seq_len * gh, 1),
                        Strided::new(&params, offsets.weight_hh + 2 * hidden * hidden, hidden, 1),
                        Strided::new(&d_rh, 0, hidden, 1),
                        0.0,
                    )?;
                    gpu.launch(
                        "gru_before_reset_step",
                        Gpu::elementwise(batch * hidden),
                        &[
                            &sizes[0],
                            &sizes[1],
                            &sizes[2],
                            &int(t),
                            &gates_at,
                            &h_prev,
                            &long(h_rs),
                            &gpu.at(&d_rh, 0, batch * hidden)?,
                            &dh_rec_at,
                            &d_pre_at,
                            &d_rec_at,
                        ],
                    )?;
                    // ∂L/∂h_{t−1} = that share + d_rec[:, t, r and z] · W_hr,hz.
                    gpu.gemm(
                        (batch, hidden, 2 * hidden),
                        Strided::new(&d_rec, t * gh, seq_len * gh, 1),
                        Strided::new(&params, offsets.weight_hh, hidden, 1),
                        Strided::new(&dh_rec, 0, hidden, 1),
                        1.0,
                    )?;
                }
            }
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
        (reset == GruReset::Before).then_some(&extra),
        dims,
    )?;
    Ok(Grads {
        d_x,
        d_state0: gpu.download(&dh_rec)?,
        d_params,
        flow,
    })
}
