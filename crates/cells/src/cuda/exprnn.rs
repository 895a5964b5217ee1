//! The expRNN ([`crate::exprnn`] has the equations) on the GPU. The orthogonal matrix
//! `W = exp(A − Aᵀ)` and the adjoint of the exponential stay on the host in f64 (one
//! `H × H` exponential per training step, as on the CPU); the recurrence runs here: the
//! input projection as one GEMM, the time loop as the RNN's (one persistent kernel each
//! way, or one launch per step forward and a pointwise kernel and a GEMM per step
//! backward), then `∂L/∂W = Σ ∂L/∂z_tᵀ h_{t−1}` and the input weights' gradients over
//! all `B·T` rows.

use candle_core::{Result, bail};

use super::gated::{self, Grads};
use super::{ELMAN_MODRELU, Gpu, Strided, int, long};
use crate::fused::Dims;

/// Where `[weight_ih | log_weight_hh | bias]` lie in the flat parameters.
pub(crate) type ExpRnnRanges = [std::ops::Range<usize>; 3];

/// The hidden states `(B, T, H)` over `x (B, T, I)` from `h0 (B, H)`, given `w_t = Wᵀ`.
pub(crate) fn exprnn_forward(
    gpu: &Gpu,
    (dims, [w_ih, _, bias]): (Dims, &ExpRnnRanges),
    w_t: &[f32],
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
    if x.len() != rows * input || w_t.len() != hidden * hidden || bias.end > params.len() {
        bail!("fused-exprnn on CUDA: inputs do not match the layer's sizes");
    }
    let [x_dev, h0_dev, params_dev, w_t_dev] = gpu.upload_all([x, h0, params, w_t])?;
    // No input bias: the modReLU's b is the only one.
    let out = gated::projection(
        gpu,
        (&x_dev, &params_dev, w_ih.start),
        &vec![0.0; hidden],
        (rows, input),
    )?;
    let w_t_at = gpu.at(&w_t_dev, 0, hidden * hidden)?;
    let bias_at = gpu.at(&params_dev, bias.start, hidden)?;
    let out_at = gpu.at(&out, 0, rows * hidden)?;
    if gpu.persistent(hidden) {
        gpu.launch(
            "elman_forward_persistent",
            gated::persistent_launch(batch, hidden),
            &[
                &int(batch),
                &int(seq_len),
                &int(hidden),
                &ELMAN_MODRELU,
                &w_t_at,
                &bias_at,
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
                &ELMAN_MODRELU,
                &w_t_at,
                &bias_at,
                &h_prev,
                &long(h_rs),
                &out_at,
            ],
        )?;
    }
    gpu.download(&out)
}

/// The gradients of [`exprnn_forward`] given its output and the output's gradient:
/// those of the input, `h0`, `weight_ih` and the bias (the generator's slot left zero),
/// the flow, and `∂L/∂W` `(H, H)` for the host to take through the exponential.
pub(crate) fn exprnn_backward(
    gpu: &Gpu,
    (dims, [w_ih, _, bias]): (Dims, &ExpRnnRanges),
    w_t: &[f32],
    (x, h0, params): (&[f32], &[f32], &[f32]),
    (out, grad_out): (&[f32], &[f32]),
) -> Result<(Grads, Vec<f32>)> {
    let Dims {
        batch,
        seq_len,
        input,
        hidden,
        ..
    } = dims;
    let rows = batch * seq_len;
    if out.len() != rows * hidden || grad_out.len() != out.len() {
        bail!("fused-exprnn on CUDA: the output or its gradient does not match the layer");
    }
    let [x_dev, h0_dev, params_dev, out_dev, grad_out_dev, w_t_dev] =
        gpu.upload_all([x, h0, params, out, grad_out, w_t])?;
    let d_pre = gpu.zeros::<f32>(rows * hidden)?;
    let d_bias_rows = gpu.zeros::<f32>(rows * hidden)?;
    let dh_rec = gpu.zeros::<f32>(batch * hidden)?;
    let dh_all = gpu.zeros::<f32>(seq_len * batch * hidden)?;
    let args = [
        gpu.at(&out_dev, 0, rows * hidden)?,
        gpu.at(&grad_out_dev, 0, rows * hidden)?,
        gpu.at(&dh_rec, 0, batch * hidden)?,
        gpu.at(&d_pre, 0, rows * hidden)?,
        gpu.at(&d_bias_rows, 0, rows * hidden)?,
        gpu.at(&dh_all, 0, seq_len * batch * hidden)?,
    ];
    if gpu.persistent(hidden) {
        // W row-major, so that neighbouring threads read neighbouring weights.
        let w = gated::transposed(gpu, (&w_t_dev, 0), hidden, hidden)?;
        gpu.launch(
            "elman_backward_persistent",
            gated::persistent_launch(batch, hidden),
            &[
                &int(batch),
                &int(seq_len),
                &int(hidden),
                &ELMAN_MODRELU,
                &gpu.at(&w, 0, hidden * hidden)?,
                &args[0],
                &args[1],
                &args[2],
                &args[3],
                &args[4],
                &args[5],
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
                    &ELMAN_MODRELU,
                    &args[0],
                    &args[1],
                    &args[2],
                    &args[3],
                    &args[4],
                    &args[5],
                ],
            )?;
            // ∂L/∂h_{t−1} = ∂L/∂z_t · W, with W(k, j) = w_t[j·H + k].
            gpu.gemm(
                (batch, hidden, hidden),
                Strided::new(&d_pre, t * hidden, seq_len * hidden, 1),
                Strided::new(&w_t_dev, 0, 1, hidden),
                Strided::new(&dh_rec, 0, hidden, 1),
                0.0,
            )?;
        }
    }
    let flow = gated::flow(gpu, &dh_all, dims)?;
    let d_params = gpu.zeros::<f32>(params.len())?;
    let d_x = gated::input_grads(
        gpu,
        (&d_pre, &x_dev, &params_dev),
        (&d_params, w_ih.start),
        (rows, hidden, input),
        dims.input_grad,
    )?;
    gated::column_sums(gpu, (&d_bias_rows, rows, hidden), (&d_params, bias.start))?;
    let h_prev =
        gated::previous_states(gpu, (&h0_dev, hidden), (&out_dev, seq_len * hidden), dims)?;
    let d_w = gpu.zeros::<f32>(hidden * hidden)?;
    gpu.gemm(
        (hidden, hidden, rows),
        Strided::new(&d_pre, 0, 1, hidden),
        Strided::new(&h_prev, 0, hidden, 1),
        Strided::new(&d_w, 0, hidden, 1),
        0.0,
    )?;
    Ok((
        Grads {
            d_x: gated::download_input_grad(gpu, d_x)?,
            d_state0: gpu.download(&dh_rec)?,
            d_params: gpu.download(&d_params)?,
            flow,
        },
        gpu.download(&d_w)?,
    ))
}
