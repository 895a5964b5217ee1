//! The LSTM and its variants (gates i, f, g, o; peepholes; removed, coupled or
//! unactivated gates; full gate recurrence; [`crate::lstm`] has the equations) on the GPU:
//! the same algorithm as the CPU kernel — the input projection of every step as one GEMM,
//! then the time loop: in one persistent kernel each way, or (per the [`super::TimeLoop`])
//! per step one kernel for the recurrent product and the pointwise update forwards and
//! one pointwise kernel and one GEMM for `∂L/∂h_{t−1}` backwards; then the weight
//! gradients as GEMMs over all `B·T` rows and the peepholes' as sums. Full gate
//! recurrence adds `G · [i; f; o]_{t−1}` to the gates' pre-activations each step (a
//! kernel per step, or inside the persistent one), passes `∂L/∂[i; f; o]_{t−1} =
//! d_pre_t · G` back a step, and takes `G`'s gradient as one GEMM over the previous
//! gates, gathered at the end of the forward.

use candle_core::{Result, bail};

use super::gated::{self, Grads};
use super::{Buf, Gpu, Strided, int, long};
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
    /// The output `(B, T + 1, H)`, or `(B, T + 4, H)` with full gate recurrence.
    out: Buf<f32>,
    /// With full gate recurrence, `[i | f | o]_{t−1}` of every step `(B·T, 3H)`.
    previous_gates: Option<Buf<f32>>,
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
    /// Where `weight_gg` starts, with full gate recurrence.
    weight_gg: Option<usize>,
}

impl Variant {
    fn new(options: &LstmOptions, offsets: &GatedOffsets) -> Result<Self> {
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
            (options.full_gate_recurrence, 16),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, bit)| bit)
        .sum();
        let weight_gg = options
            .full_gate_recurrence
            .then(|| offsets.extra[options.peephole_gates().len()]);
        if weight_gg.is_some() && cols != 0x3210 {
            bail!("full gate recurrence needs the four gates in order i, f, g, o");
        }
        Ok(Self {
            blocks: rows.len(),
            cols,
            flags,
            peepholes,
            weight_gg,
        })
    }

    /// Floats per batch row of the initial state: `[h | c]`, or `[h | c | i | f | o]`.
    fn state_width(&self, hidden: usize) -> usize {
        if self.weight_gg.is_some() {
            5 * hidden
        } else {
            2 * hidden
        }
    }

    /// Rows of the output after the hidden states: `c_T`, and `i_T, f_T, o_T`.
    fn state_rows(&self) -> usize {
        if self.weight_gg.is_some() { 4 } else { 1 }
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
/// (B, 2H)` (`[h0 | c0 | i0 | f0 | o0]` `(B, 5H)` with full gate recurrence): the output
/// `(B, T + 1, H)` (hidden states, then the final cell state; `(B, T + 4, H)` with the
/// last gates too) and what the backward needs.
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
        ..
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
    let out_rs = (seq_len + variant.state_rows()) * hidden;
    let out = gpu.zeros::<f32>(batch * out_rs)?;
    let sw = variant.state_width(hidden);
    // Gᵀ, so that neighbouring units read neighbouring weights (full gate recurrence).
    let weight_gg_t = variant
        .weight_gg
        .map(|at| gated::transposed(gpu, (&params_dev, at), 3 * hidden, 3 * hidden))
        .transpose()?;
    let weight_gg_t_at = match &weight_gg_t {
        Some(w) => gpu.at(w, 0, 9 * hidden * hidden)?,
        None => 0,
    };
    let cells = gpu.zeros::<f32>(rows * hidden)?;
    let weight_hh_t_at = gpu.at(&weight_hh_t, 0, hidden * gh)?;
    let [p_i, p_f, p_o] = variant.peephole_addresses(gpu, &params_dev, hidden)?;
    let gates_at = gpu.at(&gates, 0, rows * gh)?;
    let cells_at = gpu.at(&cells, 0, rows * hidden)?;
    let out_at = gpu.at(&out, 0, batch * out_rs)?;
    if gpu.persistent(hidden) {
        let (h0, _, c0, state_rs) = previous(gpu, 0, (&state0_dev, &cells, &out), dims, &variant)?;
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
                &weight_gg_t_at,
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
            let (h_prev, h_rs, c_prev, c_rs) =
                previous(gpu, t, (&state0_dev, &cells, &out), dims, &variant)?;
            if variant.weight_gg.is_some() {
                gpu.launch(
                    "lstm_gate_recurrence_step",
                    Gpu::elementwise(batch * hidden),
                    &[
                        &int(batch),
                        &int(seq_len),
                        &int(hidden),
                        &int(t),
                        &weight_gg_t_at,
                        &gpu.at(&state0_dev, 0, batch * sw)?,
                        &long(sw),
                        &gates_at,
                    ],
                )?;
            }
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
    let previous_gates = match variant.weight_gg {
        Some(_) => {
            let prev = gpu.zeros::<f32>(rows * 3 * hidden)?;
            gpu.launch(
                "lstm_previous_gates",
                Gpu::elementwise(rows * 3 * hidden),
                &[
                    &int(batch),
                    &int(seq_len),
                    &int(hidden),
                    &gpu.at(&state0_dev, 0, batch * sw)?,
                    &long(sw),
                    &gates_at,
                    &gpu.at(&prev, 0, rows * 3 * hidden)?,
                ],
            )?;
            Some(prev)
        }
        None => None,
    };
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
            previous_gates,
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
    variant: &Variant,
) -> Result<(u64, usize, u64, usize)> {
    let Dims {
        batch,
        seq_len,
        hidden,
        ..
    } = dims;
    if t == 0 {
        let sw = variant.state_width(hidden);
        Ok((
            gpu.at(state0, 0, batch * sw)?,
            sw,
            gpu.at(state0, hidden, batch * sw - hidden)?,
            sw,
        ))
    } else {
        let out_rs = (seq_len + variant.state_rows()) * hidden;
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

/// The backward of [`lstm_forward`] given the output's gradient (the output's shape):
/// the gradients of the input, of the initial state and of the parameters (in spec
/// order), and the batch-averaged `‖∂L/∂h_t‖` of every step.
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
    let out_rs = (seq_len + variant.state_rows()) * hidden;
    let sw = variant.state_width(hidden);
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
        previous_gates,
    } = saved;
    let grad_out_dev = gpu.upload(grad_out)?;
    // ∂L/∂c_T is the gradient of the output's row after the hidden states; with full gate
    // recurrence the next three rows are what i_T, f_T, o_T receive.
    let tail = |from: usize, to: usize| -> Vec<f32> {
        grad_out
            .chunks_exact(out_rs)
            .flat_map(|row| &row[from * hidden..to * hidden])
            .copied()
            .collect()
    };
    let d_c = gpu.upload(&tail(seq_len, seq_len + 1))?;
    let d_later = match variant.weight_gg {
        Some(_) => Some(gpu.upload(&tail(seq_len + 1, seq_len + 4))?),
        None => None,
    };
    let d_later_at = match &d_later {
        Some(d) => gpu.at(d, 0, batch * 3 * hidden)?,
        None => 0,
    };
    let weight_gg_at = match variant.weight_gg {
        Some(at) => gpu.at(&params, at, 9 * hidden * hidden)?,
        None => 0,
    };
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
        let (_, _, c0, c0_rs) = previous(gpu, 0, (&state0, &cells, &out), dims, &variant)?;
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
                &weight_gg_at,
                &grad_out_at,
                &long(out_rs),
                &dh_rec_at,
                &d_c_at,
                &d_later_at,
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
            let (_, _, c_prev, c_rs) = previous(gpu, t, (&state0, &cells, &out), dims, &variant)?;
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
                    &d_later_at,
                ],
            )?;
            gated::recurrent_grad(gpu, offsets, (&gates, &params), (&dh_rec, false), t, dims)?;
            if variant.weight_gg.is_some() {
                gpu.launch(
                    "lstm_gate_recurrence_grad_step",
                    Gpu::elementwise(batch * hidden),
                    &[
                        &int(batch),
                        &int(seq_len),
                        &int(hidden),
                        &int(t),
                        &weight_gg_at,
                        &gates_at,
                        &d_later_at,
                    ],
                )?;
            }
        }
    }
    let d_state0 = gpu.zeros::<f32>(batch * sw)?;
    gpu.launch(
        "lstm_state_grads",
        Gpu::elementwise(batch * hidden),
        &[
            &int(batch),
            &int(hidden),
            &dh_rec_at,
            &d_c_at,
            &d_later_at,
            &gpu.at(&d_state0, 0, batch * sw)?,
        ],
    )?;
    let flow = gated::flow(gpu, &dh_all, dims)?;
    let (d_x, mut d_params) = gated::weight_grads(
        gpu,
        offsets,
        (&gates, None),
        (&x, &params),
        (&state0, sw),
        (&out, out_rs),
        None,
        dims,
    )?;
    // G's gradient: Σ over all rows of d_pre(i, f, o)ᵀ · [i | f | o]_{t−1}, a GEMM per
    // gate block of G's rows (the gate columns i, f, o are 0, 1 and 3 of a row).
    if let (Some(start), Some(prev)) = (variant.weight_gg, &previous_gates) {
        let n = 3 * hidden;
        let d_gg = gpu.zeros::<f32>(n * n)?;
        for (q, col) in [0, 1, 3].into_iter().enumerate() {
            gpu.gemm(
                (hidden, n, rows),
                Strided::new(&gates, col * hidden, 1, gh),
                Strided::new(prev, 0, n, 1),
                Strided::new(&d_gg, q * hidden * n, n, 1),
                0.0,
            )?;
        }
        d_params[start..start + n * n].copy_from_slice(&gpu.download(&d_gg)?);
    }
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
                &gpu.at(&state0, hidden, batch * sw - hidden)?,
                &long(sw),
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
