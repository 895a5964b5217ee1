//! What the GPU kernels of the gated layers share (`[weight_ih | weight_hh | bias_ih |
//! bias_hh | …]`, [`crate::spec::gated_layer`]): the input projection, `W_hhᵀ`, the step
//! kernels' launch shape, the weight gradients over all `B·T` rows and the gradient flow —
//! the GPU side of `fused::{GatedOffsets::prologue, gated_weight_grads, FlowNorms}`.

use candle_core::Result;
use cudarc::driver::LaunchConfig;

use super::{Buf, Gpu, Strided, blocks, int, long};
use crate::fused::{Dims, GatedOffsets};

/// A backward's results, on the host.
pub(crate) struct Grads {
    /// `∂L/∂x` `(B, T, I)`.
    pub d_x: Vec<f32>,
    /// The initial state's gradient (`∂L/∂h0`, or `∂L/∂[h0 | c0]`).
    pub d_state0: Vec<f32>,
    /// The parameters' gradients, in spec order.
    pub d_params: Vec<f32>,
    /// The batch-averaged `‖∂L/∂h_t‖` of every step.
    pub flow: Vec<f64>,
}

/// Units and batch rows per block of the step kernels (`STEP_UNITS`, `STEP_ROWS`).
const UNITS: usize = 32;
const ROWS: usize = 8;

/// The launch shape of a step kernel built on `recurrent_product`.
pub(super) fn step_launch(batch: usize, hidden: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks(hidden, UNITS), blocks(batch, ROWS), 1),
        block_dim: (UNITS as u32, ROWS as u32, 1),
        shared_mem_bytes: 0,
    }
}

/// The launch shape of a persistent kernel: a block per `SEQ_ROWS` batch rows, a thread
/// per unit (rounded up to whole warps).
pub(super) fn persistent_launch(batch: usize, hidden: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (blocks(batch, SEQ_ROWS), 1, 1),
        block_dim: (blocks(hidden, 32) * 32, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// Batch rows per block of the persistent kernels (`SEQ_ROWS`).
const SEQ_ROWS: usize = 4;

/// `(B·T, G·H)` pre-activations `X · W_ihᵀ + bias_ih`, with `bias_hh` added on the
/// first `folded` columns (the CPU's order: product, then biases).
pub(super) fn input_projection(
    gpu: &Gpu,
    offsets: &GatedOffsets,
    (x, params_dev, params): (&Buf<f32>, &Buf<f32>, &[f32]),
    (rows, input): (usize, usize),
    folded: usize,
) -> Result<Buf<f32>> {
    let mut bias = params[offsets.bias_ih..offsets.bias_hh].to_vec();
    bias[..folded]
        .iter_mut()
        .zip(&params[offsets.bias_hh..])
        .for_each(|(b, &h)| *b += h);
    projection(
        gpu,
        (x, params_dev, offsets.weight_ih),
        &bias,
        (rows, input),
    )
}

/// `(B·T, C)` `X · W_ihᵀ + bias`, with `W_ih` `(C, I)` at `weight_ih` in the parameters
/// and `bias` the `C` values to add (the CPU's `input_projection`).
pub(super) fn projection(
    gpu: &Gpu,
    (x, params_dev, weight_ih): (&Buf<f32>, &Buf<f32>, usize),
    bias: &[f32],
    (rows, input): (usize, usize),
) -> Result<Buf<f32>> {
    let cols = bias.len();
    let pre = gpu.zeros::<f32>(rows * cols)?;
    gpu.gemm(
        (rows, cols, input),
        Strided::new(x, 0, input, 1),
        Strided::new(params_dev, weight_ih, 1, input),
        Strided::new(&pre, 0, cols, 1),
        0.0,
    )?;
    let bias = gpu.upload(bias)?;
    gpu.launch(
        "add_bias",
        Gpu::elementwise(rows * cols),
        &[
            &long(rows),
            &int(cols),
            &gpu.at(&bias, 0, cols)?,
            &gpu.at(&pre, 0, rows * cols)?,
        ],
    )?;
    Ok(pre)
}

/// Given `d_pre (B·T, C)`, the gradient of a projection's output: writes `∂L/∂W_ih =
/// d_preᵀ · X` at `weight_ih` in `d_params` and returns `∂L/∂X = d_pre · W_ih` (the
/// CPU's `input_grads`).
pub(super) fn input_grads(
    gpu: &Gpu,
    (d_pre, x, params_dev): (&Buf<f32>, &Buf<f32>, &Buf<f32>),
    (d_params, weight_ih): (&Buf<f32>, usize),
    (rows, cols, input): (usize, usize, usize),
    input_grad: bool,
) -> Result<Option<Buf<f32>>> {
    gpu.gemm(
        (cols, input, rows),
        Strided::new(d_pre, 0, 1, cols),
        Strided::new(x, 0, input, 1),
        Strided::new(d_params, weight_ih, input, 1),
        0.0,
    )?;
    if !input_grad {
        return Ok(None);
    }
    let d_x = gpu.zeros::<f32>(rows * input)?;
    gpu.gemm(
        (rows, input, cols),
        Strided::new(d_pre, 0, cols, 1),
        Strided::new(params_dev, weight_ih, input, 1),
        Strided::new(&d_x, 0, input, 1),
        0.0,
    )?;
    Ok(Some(d_x))
}

/// [`input_grads`]' `∂L/∂X` on the host; empty when it was not computed.
pub(super) fn download_input_grad(gpu: &Gpu, d_x: Option<Buf<f32>>) -> Result<Vec<f32>> {
    d_x.map_or(Ok(Vec::new()), |d_x| gpu.download(&d_x))
}

/// `out[j] = Σ_r m[r·C + j]` for `rows` rows, the rows in order, into `C` floats of
/// `into` from `offset`.
pub(super) fn column_sums(
    gpu: &Gpu,
    (m, rows, cols): (&Buf<f32>, usize, usize),
    (into, offset): (&Buf<f32>, usize),
) -> Result<()> {
    gpu.launch(
        "column_sums",
        Gpu::elementwise(cols),
        &[
            &long(rows),
            &int(cols),
            &gpu.at(m, 0, rows * cols)?,
            &gpu.at(into, offset, cols)?,
        ],
    )
}

/// `W_hhᵀ` `(H, G·H)`, so that neighbouring threads (units) read neighbouring weights.
pub(super) fn weight_hh_t(
    gpu: &Gpu,
    offsets: &GatedOffsets,
    params_dev: &Buf<f32>,
    hidden: usize,
) -> Result<Buf<f32>> {
    transposed(
        gpu,
        (params_dev, offsets.weight_hh),
        offsets.gate_rows(),
        hidden,
    )
}

/// The transpose `(cols, rows)` of the row-major `(rows, cols)` matrix at `offset` in `m`.
pub(super) fn transposed(
    gpu: &Gpu,
    (m, offset): (&Buf<f32>, usize),
    rows: usize,
    cols: usize,
) -> Result<Buf<f32>> {
    let out = gpu.zeros::<f32>(rows * cols)?;
    gpu.launch(
        "transpose",
        Gpu::elementwise(rows * cols),
        &[
            &int(rows),
            &int(cols),
            &gpu.at(m, offset, rows * cols)?,
            &gpu.at(&out, 0, rows * cols)?,
        ],
    )?;
    Ok(out)
}

/// `∂L/∂h_{t−1} = d_pre[:, t] · W_hh` `(B, H)` into `dh_rec`, added to what it holds
/// when `accumulate`.
pub(super) fn recurrent_grad(
    gpu: &Gpu,
    offsets: &GatedOffsets,
    (d_pre, params_dev): (&Buf<f32>, &Buf<f32>),
    (dh_rec, accumulate): (&Buf<f32>, bool),
    t: usize,
    dims: Dims,
) -> Result<()> {
    let gh = offsets.gate_rows();
    gpu.gemm(
        (dims.batch, dims.hidden, gh),
        Strided::new(d_pre, t * gh, dims.seq_len * gh, 1),
        Strided::new(params_dev, offsets.weight_hh, dims.hidden, 1),
        Strided::new(dh_rec, 0, dims.hidden, 1),
        if accumulate { 1.0 } else { 0.0 },
    )
}

/// From `d_pre (B·T, G·H)`, the gradient of the input projection's output: `∂L/∂X` and
/// the parameters' gradients (`weight_ih`, `weight_hh` over all `B·T` rows, both biases;
/// the rest zero for the caller), as the CPU's `gated_weight_grads`. `d_rec`, when the
/// recurrent product's output has a gradient of its own (the GRU's), gives `weight_hh`
/// and `bias_hh` theirs; otherwise `d_pre` does. `h0` and `out` give `h_{t−1}`: `h0` row
/// `b` at stride `h0_rs` for `t = 0`, else the output of step `t − 1` (rows of batch `b`
/// at `b·out_rs`). `last_rows_input`, when given `(B·T, H)`, is what the last `H` rows of
/// `W_hh` multiplied instead of `h_{t−1}` (the reset-before GRU's `r ⊙ h_{t−1}`).
#[allow(clippy::too_many_arguments)]
pub(super) fn weight_grads(
    gpu: &Gpu,
    offsets: &GatedOffsets,
    (d_pre, d_rec): (&Buf<f32>, Option<&Buf<f32>>),
    (x, params_dev): (&Buf<f32>, &Buf<f32>),
    (h0, h0_rs): (&Buf<f32>, usize),
    (out, out_rs): (&Buf<f32>, usize),
    last_rows_input: Option<&Buf<f32>>,
    dims: Dims,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let Dims {
        batch,
        seq_len,
        input,
        hidden,
        ..
    } = dims;
    let gh = offsets.gate_rows();
    let rows = batch * seq_len;
    let d_params = gpu.zeros::<f32>(offsets.end)?;
    let d_x = input_grads(
        gpu,
        (d_pre, x, params_dev),
        (&d_params, offsets.weight_ih),
        (rows, gh, input),
        dims.input_grad,
    )?;
    let h_prev = previous_states(gpu, (h0, h0_rs), (out, out_rs), dims)?;
    let d_out = d_rec.unwrap_or(d_pre);
    let from_h = gh - last_rows_input.map_or(0, |_| hidden);
    gpu.gemm(
        (from_h, hidden, rows),
        Strided::new(d_out, 0, 1, gh),
        Strided::new(&h_prev, 0, hidden, 1),
        Strided::new(&d_params, offsets.weight_hh, hidden, 1),
        0.0,
    )?;
    if let Some(input) = last_rows_input {
        gpu.gemm(
            (hidden, hidden, rows),
            Strided::new(d_out, from_h, 1, gh),
            Strided::new(input, 0, hidden, 1),
            Strided::new(&d_params, offsets.weight_hh + from_h * hidden, hidden, 1),
            0.0,
        )?;
    }
    column_sums(gpu, (d_pre, rows, gh), (&d_params, offsets.bias_ih))?;
    if let Some(d_rec) = d_rec {
        column_sums(gpu, (d_rec, rows, gh), (&d_params, offsets.bias_hh))?;
    }
    let mut d_params = gpu.download(&d_params)?;
    if d_rec.is_none() {
        let (head, tail) = d_params.split_at_mut(offsets.bias_hh);
        tail[..gh].copy_from_slice(&head[offsets.bias_ih..]);
    }
    Ok((download_input_grad(gpu, d_x)?, d_params))
}

/// The address and row stride of `h_{t−1}` for a layer whose output is its hidden
/// states `(B, T, H)`: `h0` at `t = 0`, else step `t − 1` of `out`.
pub(super) fn previous_hidden(
    gpu: &Gpu,
    t: usize,
    (h0, out): (&Buf<f32>, &Buf<f32>),
    dims: Dims,
) -> Result<(u64, usize)> {
    let Dims {
        batch,
        seq_len,
        hidden,
        ..
    } = dims;
    if t == 0 {
        Ok((gpu.at(h0, 0, batch * hidden)?, hidden))
    } else {
        let offset = (t - 1) * hidden;
        Ok((
            gpu.at(out, offset, batch * seq_len * hidden - offset)?,
            seq_len * hidden,
        ))
    }
}

/// `h_{t−1}` of every step as a `(B·T, H)` matrix: `h0` row `b` (stride `h0_rs`) at
/// `t = 0`, else the output of step `t − 1` (rows of batch `b` at `b·out_rs`).
pub(super) fn previous_states(
    gpu: &Gpu,
    (h0, h0_rs): (&Buf<f32>, usize),
    (out, out_rs): (&Buf<f32>, usize),
    dims: Dims,
) -> Result<Buf<f32>> {
    let Dims {
        batch,
        seq_len,
        hidden,
        ..
    } = dims;
    let rows = batch * seq_len;
    let h_prev = gpu.zeros::<f32>(rows * hidden)?;
    gpu.launch(
        "previous_states",
        Gpu::elementwise(rows * hidden),
        &[
            &int(batch),
            &int(seq_len),
            &int(hidden),
            &gpu.at(h0, 0, (batch - 1) * h0_rs + hidden)?,
            &long(h0_rs),
            &gpu.at(out, 0, (batch - 1) * out_rs + seq_len * hidden)?,
            &long(out_rs),
            &gpu.at(&h_prev, 0, rows * hidden)?,
        ],
    )?;
    Ok(h_prev)
}

/// The batch-averaged `‖∂L/∂h_t‖` of every step from `dh_all (T, B, H)`, summed over
/// the batch in row order on the host (as `FlowNorms` does).
pub(super) fn flow(gpu: &Gpu, dh_all: &Buf<f32>, dims: Dims) -> Result<Vec<f64>> {
    flow_of(gpu, dh_all, dims, dims.hidden)
}

/// [`flow`] of a state `width` floats wide (the LRU's `[Re x | Im x]`: `2H`).
pub(super) fn flow_of(gpu: &Gpu, dh_all: &Buf<f32>, dims: Dims, width: usize) -> Result<Vec<f64>> {
    let Dims { batch, seq_len, .. } = dims;
    let hidden = width;
    let norms = gpu.zeros::<f64>(seq_len * batch)?;
    gpu.launch(
        "row_norms",
        Gpu::elementwise(seq_len * batch),
        &[
            &long(seq_len * batch),
            &int(hidden),
            &gpu.at(dh_all, 0, seq_len * batch * hidden)?,
            &gpu.at(&norms, 0, seq_len * batch)?,
        ],
    )?;
    Ok(gpu
        .download(&norms)?
        .chunks_exact(batch)
        .map(|step| step.iter().sum::<f64>() / batch as f64)
        .collect())
}
