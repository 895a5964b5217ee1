//! The LSTM and its variants but full gate recurrence (gates i, f, g, o; peepholes;
//! removed, coupled or unactivated gates; [`crate::lstm`] has the equations) on the GPU:
//! the same algorithm as the CPU kernel — the input projection of every step as one GEMM,
//! then the time loop: in one persistent kernel each way, or (per the [`super::TimeLoop`])
//! per step one kernel for the recurrent product and the pointwise update forwards and
//! one pointwise kernel and one GEMM for `∂L/∂h_{t−1}` backwards; then the weight
//! gradients as GEMMs over all `B·T` rows and the peepholes' as sums.

use candle_core::{Result, bail};

use super::gated::{self, Grads};
use super::{Buf, Gpu, int, long};
use crate::fused::{Dims, GatedOffsets};
use crate::lstm::{Gate, LstmOptions};

/// What the forward keeps on the device for the backward.
pub(crate) struct LstmGpuSaved {
    x: Buf<f32>,
    state0: Buf<f32>,
    params: Buf<f32>,
    /// The activated gates `(B, T, G·H)`.
    gates: Buf<f32>,
    /// `c_t` `(B, T, H)`.
    cells: Buf<f32>,
    /// The output `(B, T + 1, H)`.
    out: Buf<f32>,
}

/// A variant as the kernels take it (`kernels.cu`, "The LSTM and its variants").
struct Variant {
    /// Gate blocks `G` in a row of gate values.
    blocks: usize,
    /// Each gate's block, 4 bits per gate (i, f, g, o), `0xF` when removed.
    cols: i32,
    flags: i32,
    /// Where the peepholes of i, f, o start in the parameters, if they exist.
    peepholes: [Option<usize>; 3],
}

impl Variant {
    fn new(options: &LstmOptions, offsets: &GatedOffsets) -> Result<Self> {
        if options.full_gate_recurrence {
            bail!("the LSTM with full gate recurrence has no CUDA kernel");
        }
        let rows = options.gate_rows();
        let mut cols = 0;
        for (k, gate) in [Gate::Input, Gate::Forget, Gate::Cell, Gate::Output]
            .into_iter()
            .enumerate()
        {
            let col = rows
                .iter()
                .position(|g| *g == gate)
                .map_or(0xF, |c| c as i32);
            cols |= col << (4 * k);
        }
        let mut peepholes = [None; 3];
        for (gate, &start) in options.peephole_gates().iter().zip(&offsets.extra) {
            let slot = match gate {
                Gate::Input => 0,
                Gate::Forget => 1,
                _ => 2,
            };
            peepholes[slot] = Some(start);
        }
        let flags = [
            (options.coupled_input_forget, 1),
            (options.input_activation, 2),
            (options.output_activation, 4),
            (options.peepholes, 8),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, bit)| bit)
        .sum();
        Ok(Self {
            blocks: rows.len(),
            cols,
            flags,
            peepholes,
        })
    }

    /// The peepholes' device addresses (0 for those that do not exist: never read).
    fn peephole_addresses(&self, gpu: &Gpu, params: &Buf<f32>, hidden: usize) -> Result<[u64; 3]> {
        let mut addresses = [0; 3];
        for (address, start) in addresses.iter_mut().zip(self.peepholes) {
            if let Some(start) = start {
                *address = gpu.at(params, start, hidden)?;
            }
        }
        Ok(addresses)
    }
}

/// The forward of `Lstm` with `options` over `x (B, T, I)` from `state0 = [h0 | c0]
/// (B, 2H)`: the output `(B, T + 1, H)` (hidden states, then the final cell state) and
/// what the backward needs.
pub(crate) fn lstm_forward(
    gpu: &Gpu,
    (dims, options): (Dims, &LstmOptions),
    offsets: &GatedOffsets,
    (x, state0, params): (&[f32], &[f32], &[f32]),
) -> Result<(Vec<f32>, LstmGpuSaved)> {
    let Dims {
        batch,
        seq_len,
        input,
        hidden,
    } = dims;
    let variant = Variant::new(options, offsets)?;
    let gh = variant.blocks * hidden;
    let rows = batch * seq_len;
    if offsets.gate_rows() != gh || params.len() != offsets.end || x.len() != rows * input {
        bail!("fused-lstm on CUDA: inputs do not match the layer's sizes");
    }
    let [x_dev, state0_dev, params_dev] = gpu.upload_all([x, state0, params])?;
    let gates = gated::input_projection(
        gpu,
        offsets,
        (&x_dev, &params_dev, params),
        (rows, input),
        gh,
    )?;
    let weight_hh_t = gated::weight_hh_t(gpu, offsets, &params_dev, hidden)?;
    let out_rs = (seq_len + 1) * hidden;
    let out = gpu.zeros::<f32>(batch * out_rs)?;
    let cells = gpu.zeros::<f32>(rows * hidden)?;
    let weight_hh_t_at = gpu.at(&weight_hh_t, 0, hidden * gh)?;
    let [p_i, p_f, p_o] = variant.peephole_addresses(gpu, &params_dev, hidden)?;
    let gates_at = gpu.at(&gates, 0, rows * gh)?;
    let cells_at = gpu.at(&cells, 0, rows * hidden)?;
    let out_at = gpu.at(&out, 0, batch * out_rs)?;
    if gpu.persistent(hidden) {
        let (h0, _, c0, state_rs) = previous(gpu, 0, (&state0_dev, &cells, &out), dims)?;
        gpu.launch(
            [
                "lstm_forward_persistent_1",
                "lstm_forward_persistent_2",
                "lstm_forward_persistent_3",
                "lstm_forward_persistent_4",
            ][variant.blocks - 1],
            gated::persistent_launch(batch, hidden),
            &[
                &int(batch),
                &int(seq_len),
                &int(hidden),
                &variant.cols,
                &variant.flags,
                &weight_hh_t_at,
                &h0,
                &long(state_rs),
                &c0,
                &long(state_rs),
                &p_i,
                &p_f,
                &p_o,
                &gates_at,
                &cells_at,
                &out_at,
                &long(out_rs),
            ],
        )?;
    } else {
        let kernel = [
            "lstm_forward_step_1",
            "lstm_forward_step_2",
            "lstm_forward_step_3",
            "lstm_forward_step_4",
        ][variant.blocks - 1];
        for t in 0..seq_len {
            let (h_prev, h_rs, c_prev, c_rs) = previous(gpu, t, (&state0_dev, &cells, &out), dims)?;
            gpu.launch(
                kernel,
                gated::step_launch(batch, hidden),
                &[
                    &int(batch),
                    &int(seq_len),
                    &int(hidden),
                    &int(t),
                    &variant.cols,
                    &variant.flags,
                    &weight_hh_t_at,
                    &h_prev,
                    &long(h_rs),
                    &c_prev,
                    &long(c_rs),
                    &p_i,
                    &p_f,
                    &p_o,
                    &gates_at,
                    &cells_at,
                    &out_at,
                    &long(out_rs),
                ],
            )?;
        }
    }
    let host_out = gpu.download(&out)?;
    Ok((
        host_out,
        LstmGpuSaved {
            x: x_dev,
            state0: state0_dev,
            params: params_dev,
            gates,
            cells,
            out,
        },
    ))
}

/// The addresses and row strides of `h_{t−1}` and `c_{t−1}`: the initial state at
/// `t = 0`, else step `t − 1` of the output and of the cell states.
fn previous(
    gpu: &Gpu,
    t: usize,
    (state0, cells, out): (&Buf<f32>, &Buf<f32>, &Buf<f32>),
    dims: Dims,
) -> Result<(u64, usize, u64, usize)> {
    let Dims {
        batch,
        seq_len,
        hidden,
        ..
    } = dims;
    if t == 0 {
        let sw = 2 * hidden;
        Ok((
            gpu.at(state0, 0, batch * sw)?,
            sw,
            gpu.at(state0, hidden, batch * sw - hidden)?,
            sw,
        ))
    } else {
        let out_rs = (seq_len + 1) * hidden;
        let c_rs = seq_len * hidden;
        let offset = (t - 1) * hidden;
        Ok((
            gpu.at(out, offset, batch * out_rs - offset)?,
            out_rs,
            gpu.at(cells, offset, batch * c_rs - offset)?,
            c_rs,
        ))
    }
}

/// The backward of [`lstm_forward`] given the output's gradient `(B, T + 1, H)`: the
/// gradients of the input, of `[h0 | c0]` and of the parameters (in spec order), and the
/// batch-averaged `‖∂L/∂h_t‖` of every step.
pub(crate) fn lstm_backward(
    gpu: &Gpu,
    (dims, options): (Dims, &LstmOptions),
    offsets: &GatedOffsets,
    saved: LstmGpuSaved,
    grad_out: &[f32],
) -> Result<Grads> {
    let Dims {
        batch,
        seq_len,
        hidden,
        ..
    } = dims;
    let variant = Variant::new(options, offsets)?;
    let gh = variant.blocks * hidden;
    let rows = batch * seq_len;
    let out_rs = (seq_len + 1) * hidden;
    if grad_out.len() != batch * out_rs {
        bail!("fused-lstm on CUDA: the output gradient does not match the output");
    }
    let LstmGpuSaved {
        x,
        state0,
        params,
        gates,
        cells,
        out,
    } = saved;
    let grad_out_dev = gpu.upload(grad_out)?;
    // ∂L/∂c_T is the gradient of the output's last row.
    let d_c_host: Vec<f32> = grad_out
        .chunks_exact(out_rs)
        .flat_map(|row| &row[seq_len * hidden..])
        .copied()
        .collect();
    let d_c = gpu.upload(&d_c_host)?;
    let dh_rec = gpu.zeros::<f32>(batch * hidden)?;
    let dh_all = gpu.zeros::<f32>(seq_len * batch * hidden)?;
    let grad_out_at = gpu.at(&grad_out_dev, 0, batch * out_rs)?;
    let dh_rec_at = gpu.at(&dh_rec, 0, batch * hidden)?;
    let d_c_at = gpu.at(&d_c, 0, batch * hidden)?;
    let cells_at = gpu.at(&cells, 0, rows * hidden)?;
    let gates_at = gpu.at(&gates, 0, rows * gh)?;
    let dh_all_at = gpu.at(&dh_all, 0, seq_len * batch * hidden)?;
    let [p_i, p_f, p_o] = variant.peephole_addresses(gpu, &params, hidden)?;
    if gpu.persistent(hidden) {
        let (_, _, c0, c0_rs) = previous(gpu, 0, (&state0, &cells, &out), dims)?;
        gpu.launch(
            "lstm_backward_persistent",
            gated::persistent_launch(batch, hidden),
            &[
                &int(batch),
                &int(seq_len),
                &int(hidden),
                &int(variant.blocks),
                &variant.cols,
                &variant.flags,
                &gpu.at(&params, offsets.weight_hh, gh * hidden)?,
                &grad_out_at,
                &long(out_rs),
                &dh_rec_at,
                &d_c_at,
                &cells_at,
                &c0,
                &long(c0_rs),
                &p_i,
                &p_f,
                &p_o,
                &gates_at,
                &dh_all_at,
            ],
        )?;
    } else {
        for t in (0..seq_len).rev() {
            let (_, _, c_prev, c_rs) = previous(gpu, t, (&state0, &cells, &out), dims)?;
            gpu.launch(
                "lstm_backward_step",
                Gpu::elementwise(batch * hidden),
                &[
                    &int(batch),
                    &int(seq_len),
                    &int(hidden),
                    &int(t),
                    &int(variant.blocks),
                    &variant.cols,
                    &variant.flags,
                    &grad_out_at,
                    &long(out_rs),
                    &dh_rec_at,
                    &d_c_at,
                    &cells_at,
                    &c_prev,
                    &long(c_rs),
                    &p_i,
                    &p_f,
                    &p_o,
                    &gates_at,
                    &dh_all_at,
                ],
            )?;
            gated::recurrent_grad(gpu, offsets, (&gates, &params), (&dh_rec, false), t, dims)?;
        }
    }
    let d_state0 = gpu.zeros::<f32>(batch * 2 * hidden)?;
    gpu.launch(
        "lstm_state_grads",
        Gpu::elementwise(batch * hidden),
        &[
            &int(batch),
            &int(hidden),
            &dh_rec_at,
            &d_c_at,
            &gpu.at(&d_state0, 0, batch * 2 * hidden)?,
        ],
    )?;
    let flow = gated::flow(gpu, &dh_all, dims)?;
    let (d_x, mut d_params) = gated::weight_grads(
        gpu,
        offsets,
        (&gates, None),
        (&x, &params),
        (&state0, 2 * hidden),
        (&out, out_rs),
        None,
        dims,
    )?;
    // The peepholes: Σ over all rows of the gate's gradient times the cell state it reads
    // (c_{t−1} for i and f, c_t for o).
    for (gate, (start, use_c_t)) in [Gate::Input, Gate::Forget, Gate::Output]
        .into_iter()
        .zip(variant.peepholes.into_iter().zip([0, 0, 1]))
    {
        let Some(start) = start else { continue };
        let col = (variant.cols >> (4 * gate as i32)) & 0xF;
        let grad = gpu.zeros::<f32>(hidden)?;
        gpu.launch(
            "lstm_peephole_grad",
            Gpu::elementwise(hidden),
            &[
                &int(batch),
                &int(seq_len),
                &int(hidden),
                &int(variant.blocks),
                &col,
                &use_c_t,
                &gates_at,
                &cells_at,
                &gpu.at(&state0, hidden, batch * 2 * hidden - hidden)?,
                &long(2 * hidden),
                &gpu.at(&grad, 0, hidden)?,
            ],
        )?;
        d_params[start..start + hidden].copy_from_slice(&gpu.download(&grad)?);
    }
    Ok(Grads {
        d_x,
        d_state0: gpu.download(&d_state0)?,
        d_params,
        flow,
    })
}
