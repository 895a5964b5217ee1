//! The fused LSTM (every [`LstmOptions`] variant).

use candle_core::{Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::{
    FlowNorms, FlowSink, FusedOp, Kernel, Real, Saved, add_column_sums, chunk_rows, input_grads,
    input_projection, matmul, matmul_serial, pack, previous_states, squared_sum, transpose, wide,
};
use crate::cell::{Gate, LstmOptions, State};

/// Parameters of one LSTM layer, as the cell holds them.
pub(crate) struct LstmWeights<'a> {
    pub weight_ih: &'a Tensor,
    pub weight_hh: &'a Tensor,
    pub bias_ih: &'a Tensor,
    pub bias_hh: &'a Tensor,
    /// Peephole vectors indexed by [`Gate`].
    pub peephole: &'a [Option<Tensor>; 4],
}

/// The whole sequence `xs (B, T, I)` from `state` through one fused op; `T ≥ 1`.
pub(crate) fn lstm_sequence(
    xs: &Tensor,
    state: &State,
    weights: &LstmWeights<'_>,
    options: LstmOptions,
    flow: &FlowSink,
) -> Result<(Tensor, State)> {
    let (batch, seq_len, input) = xs.dims3()?;
    let hidden = weights.weight_hh.dim(1)?;
    let c0 = state.c.as_ref().expect("checked: LSTM state has c");
    let mut packed = vec![
        weights.weight_ih,
        weights.weight_hh,
        weights.bias_ih,
        weights.bias_hh,
    ];
    packed.extend(weights.peephole.iter().flatten());
    let params = pack(&packed)?;
    let state0 = Tensor::cat(&[&state.h, c0], 1)?;
    let op = LstmOp {
        dims: Dims {
            batch,
            seq_len,
            input,
            hidden,
        },
        options,
        saved: Saved::default(),
        flow: flow.clone(),
    };
    // Output (B, T + 1, H): the hidden states of every step, then the final cell state.
    let out = xs
        .contiguous()?
        .apply_op3(&state0.contiguous()?, &params, FusedOp(op))?;
    let hs = out.narrow(1, 0, seq_len)?;
    let h = out.narrow(1, seq_len - 1, 1)?.squeeze(1)?;
    let c = out.narrow(1, seq_len, 1)?.squeeze(1)?;
    Ok((hs, State { h, c: Some(c) }))
}

#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    seq_len: usize,
    input: usize,
    hidden: usize,
}

struct LstmOp {
    dims: Dims,
    options: LstmOptions,
    saved: Saved,
    flow: FlowSink,
}

/// Which gates have `H` columns in a row of `G·H` gate values (in the order i, f, g, o).
#[derive(Clone, Copy)]
struct Layout4 {
    /// Whether each gate (indexed by [`Gate`]) has columns; `false` when ablated.
    present: [bool; 4],
    count: usize,
}

impl Layout4 {
    fn new(options: &LstmOptions) -> Self {
        let mut present = [false; 4];
        let rows = options.gate_rows();
        rows.iter().for_each(|gate| present[*gate as usize] = true);
        Self {
            present,
            count: rows.len(),
        }
    }
}

/// Splits a row of `G·H` gate values into per-gate slices (indexed by [`Gate`]).
#[inline(always)]
fn split_gates<T>(row: &mut [T], hidden: usize, layout: Layout4) -> [Option<&mut [T]>; 4] {
    let mut slots: [Option<&mut [T]>; 4] = [None, None, None, None];
    let mut chunks = row.chunks_exact_mut(hidden);
    for gate in [Gate::Input, Gate::Forget, Gate::Cell, Gate::Output] {
        if layout.present[gate as usize] {
            slots[gate as usize] = chunks.next();
        }
    }
    slots
}

/// Offsets of the parts of the flat parameter vector.
struct ParamOffsets {
    weight_ih: usize,
    weight_hh: usize,
    bias_ih: usize,
    bias_hh: usize,
    /// Start of each present peephole vector, indexed by [`Gate`].
    peephole: [Option<usize>; 4],
    total: usize,
}

impl ParamOffsets {
    fn new(dims: Dims, options: &LstmOptions) -> Self {
        let gh = options.gate_rows().len() * dims.hidden;
        let weight_hh = gh * dims.input;
        let bias_ih = weight_hh + gh * dims.hidden;
        let bias_hh = bias_ih + gh;
        let mut next = bias_hh + gh;
        let mut peephole = [None; 4];
        for gate in options.peephole_gates() {
            peephole[gate as usize] = Some(next);
            next += dims.hidden;
        }
        Self {
            weight_ih: 0,
            weight_hh,
            bias_ih,
            bias_hh,
            peephole,
            total: next,
        }
    }
}

/// What the forward keeps for the backward: activated gates `(B, T, G·H)` and cell
/// states `(B, T, H)` (their tanh is recomputed, bit for bit, rather than stored).
struct LstmSaved<T> {
    gates: Vec<T>,
    cells: Vec<T>,
}

/// One batch chunk's buffers for the forward recurrence.
struct ForwardChunk<'a, T> {
    gates: &'a mut [T],
    out: &'a mut [T],
    cells: &'a mut [T],
    state0: &'a [T],
}

/// One batch chunk's buffers for the backward recurrence.
struct BackwardChunk<'a, T> {
    /// In: activated gates; out: gradients of the gate pre-activations.
    gates: &'a mut [T],
    d_state0: &'a mut [T],
    grad_out: &'a [T],
    cells: &'a [T],
    state0: &'a [T],
}

impl LstmOp {
    /// The time loop for the batch rows of `chunk`: recurrent GEMM and pointwise pass
    /// per step, then the final cell state after the hidden states.
    #[inline(always)]
    fn forward_chunk<T: Real>(
        &self,
        chunk: ForwardChunk<'_, T>,
        weight_hh_t: &[T],
        peephole: [Option<&[T]>; 4],
    ) {
        let ForwardChunk {
            gates,
            out,
            cells,
            state0,
        } = chunk;
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let layout = Layout4::new(&self.options);
        let gh = layout.count * hidden;
        let batch = state0.len() / (2 * hidden);
        let out_rs = (seq_len + 1) * hidden;
        let mut tanh_cell = vec![T::ZERO; hidden];
        for t in 0..seq_len {
            // gates[:, t] += h_{t−1} · W_hhᵀ
            let (h_prev, h_rs) = if t == 0 {
                (state0, 2 * hidden)
            } else {
                (&out[(t - 1) * hidden..], out_rs)
            };
            matmul_serial(
                (batch, gh, hidden),
                &mut gates[t * gh..],
                seq_len * gh,
                (h_prev, h_rs, 1),
                (weight_hh_t, gh, 1),
                true,
            );
            for b in 0..batch {
                let row = (b * seq_len + t) * gh;
                let cell = (b * seq_len + t) * hidden;
                let (before, rest) = cells.split_at_mut(cell);
                let c_prev = if t == 0 {
                    &state0[b * 2 * hidden + hidden..(b + 1) * 2 * hidden]
                } else {
                    &before[cell - hidden..]
                };
                let [i, f, g, o] = split_gates(&mut gates[row..row + gh], hidden, layout);
                let c = &mut rest[..hidden];
                let tc = &mut tanh_cell[..];
                let h = &mut out[b * out_rs + t * hidden..b * out_rs + (t + 1) * hidden];
                let step = StepForward {
                    i,
                    f,
                    g,
                    o,
                    c_prev,
                    c,
                    tc,
                    h,
                    peephole,
                };
                step_forward(step, self.options);
            }
        }
        for b in 0..batch {
            let last = (b * seq_len + seq_len - 1) * hidden;
            out[b * out_rs + seq_len * hidden..(b + 1) * out_rs]
                .copy_from_slice(&cells[last..last + hidden]);
        }
    }

    /// The reverse time loop for the batch rows of `chunk`: fills the chunk's gate
    /// gradients and `[∂h0 | ∂c0]`, and returns its peephole gradients and gradient flow.
    #[inline(always)]
    fn backward_chunk<T: Real>(
        &self,
        chunk: BackwardChunk<'_, T>,
        weight_hh: &[T],
        peephole: [Option<&[T]>; 4],
    ) -> ([Vec<T>; 4], FlowNorms) {
        let BackwardChunk {
            gates,
            d_state0,
            grad_out,
            cells,
            state0,
        } = chunk;
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let layout = Layout4::new(&self.options);
        let gh = layout.count * hidden;
        let batch = state0.len() / (2 * hidden);
        let out_rs = (seq_len + 1) * hidden;
        let mut d_h_rec = vec![T::ZERO; batch * hidden];
        let mut d_c = vec![T::ZERO; batch * hidden];
        for b in 0..batch {
            let at = b * out_rs + seq_len * hidden;
            d_c[b * hidden..(b + 1) * hidden].copy_from_slice(&grad_out[at..at + hidden]);
        }
        let mut d_peep = [(); 4].map(|_| vec![T::ZERO; hidden]);
        let mut d_h = vec![T::ZERO; hidden];
        let mut tanh_cell = vec![T::ZERO; hidden];
        let mut flow = FlowNorms::new(batch, seq_len);
        for t in (0..seq_len).rev() {
            for b in 0..batch {
                let row = (b * seq_len + t) * gh;
                let cell = (b * seq_len + t) * hidden;
                let c_prev = if t == 0 {
                    &state0[b * 2 * hidden + hidden..(b + 1) * 2 * hidden]
                } else {
                    &cells[cell - hidden..cell]
                };
                let g_out = &grad_out[b * out_rs + t * hidden..b * out_rs + (t + 1) * hidden];
                let rec = &d_h_rec[b * hidden..(b + 1) * hidden];
                d_h.iter_mut()
                    .zip(g_out.iter().zip(rec))
                    .for_each(|(d, (&a, &r))| *d = a + r);
                flow.add(t, squared_sum(&d_h));
                let c = &cells[cell..cell + hidden];
                tanh_cell
                    .iter_mut()
                    .zip(c)
                    .for_each(|(tc, &c)| *tc = c.tanh_());
                let step = StepBackward {
                    gates: split_gates(&mut gates[row..row + gh], hidden, layout),
                    c_prev,
                    c,
                    tc: &tanh_cell,
                    d_h: &d_h,
                    d_c: &mut d_c[b * hidden..(b + 1) * hidden],
                    peephole,
                    d_peep: &mut d_peep,
                };
                step_backward(step, self.options);
            }
            // ∂L/∂h_{t−1} through the recurrence: d_gates[:, t] · W_hh.
            matmul_serial(
                (batch, hidden, gh),
                &mut d_h_rec,
                hidden,
                (&gates[t * gh..], seq_len * gh, 1),
                (weight_hh, hidden, 1),
                false,
            );
        }
        for b in 0..batch {
            let at = b * 2 * hidden;
            d_state0[at..at + hidden].copy_from_slice(&d_h_rec[b * hidden..(b + 1) * hidden]);
            d_state0[at + hidden..at + 2 * hidden]
                .copy_from_slice(&d_c[b * hidden..(b + 1) * hidden]);
        }
        (d_peep, flow)
    }
}

impl Kernel for LstmOp {
    const NAME: &'static str = "fused-lstm";

    fn out_shape(&self) -> Shape {
        let Dims {
            batch,
            seq_len,
            hidden,
            ..
        } = self.dims;
        Shape::from((batch, seq_len + 1, hidden))
    }

    fn forward<T: Real>(&self, x: &[T], state0: &[T], params: &[T]) -> Result<Vec<T>> {
        let Dims {
            batch,
            seq_len,
            input,
            hidden,
        } = self.dims;
        let layout = Layout4::new(&self.options);
        let gh = layout.count * hidden;
        let offsets = ParamOffsets::new(self.dims, &self.options);
        if params.len() != offsets.total || x.len() != batch * seq_len * input {
            bail!("fused LSTM: inputs do not match the layer's sizes");
        }
        let weight_ih = &params[offsets.weight_ih..offsets.weight_hh];
        let weight_hh = &params[offsets.weight_hh..offsets.bias_ih];
        let peephole = offsets.peephole.map(|o| o.map(|o| &params[o..o + hidden]));

        // Input projection of every step, with both biases folded in.
        let bias: Vec<T> = params[offsets.bias_ih..offsets.bias_hh]
            .iter()
            .zip(&params[offsets.bias_hh..offsets.bias_hh + gh])
            .map(|(&a, &b)| a + b)
            .collect();
        let mut gates = input_projection(x, weight_ih, &bias, batch * seq_len, input);
        let weight_hh_t = transpose(weight_hh, gh, hidden);
        let out_rs = (seq_len + 1) * hidden;
        let mut out = vec![T::ZERO; batch * out_rs];
        let mut cells = vec![T::ZERO; batch * seq_len * hidden];
        let rows = chunk_rows(batch);
        gates
            .par_chunks_mut(rows * seq_len * gh)
            .zip(out.par_chunks_mut(rows * out_rs))
            .zip(cells.par_chunks_mut(rows * seq_len * hidden))
            .zip(state0.par_chunks(rows * 2 * hidden))
            .for_each(|(((gates, out), cells), state0)| {
                let chunk = ForwardChunk {
                    gates,
                    out,
                    cells,
                    state0,
                };
                wide(|| self.forward_chunk(chunk, &weight_hh_t, peephole));
            });
        *self.saved.lock().expect("saved activations") = Some(Box::new(LstmSaved { gates, cells }));
        Ok(out)
    }

    /// Backward through time; `grad_out` is `(B, T + 1, H)`: hidden states, then the
    /// final cell state. The state gradient is `[∂h0 | ∂c0]`.
    fn backward<T: Real>(
        &self,
        x: &[T],
        state0: &[T],
        params: &[T],
        out: &[T],
        grad_out: &[T],
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let Dims {
            batch,
            seq_len,
            input,
            hidden,
        } = self.dims;
        let layout = Layout4::new(&self.options);
        let gh = layout.count * hidden;
        let offsets = ParamOffsets::new(self.dims, &self.options);
        let weight_ih = &params[offsets.weight_ih..offsets.weight_hh];
        let weight_hh = &params[offsets.weight_hh..offsets.bias_ih];
        let peephole = offsets.peephole.map(|o| o.map(|o| &params[o..o + hidden]));
        // The activations are taken, not borrowed: the gate gradients overwrite them.
        let saved = self.saved.lock().expect("saved activations").take();
        let Some(Ok(saved)) = saved.map(|s| s.downcast::<LstmSaved<T>>()) else {
            bail!(
                "fused LSTM backward without its forward's activations (run backward once per forward)"
            );
        };
        let LstmSaved {
            gates: mut d_gates,
            cells,
        } = *saved;
        let out_rs = (seq_len + 1) * hidden;

        let mut d_params = vec![T::ZERO; offsets.total];
        let mut d_state0 = vec![T::ZERO; batch * 2 * hidden];
        let chunk = chunk_rows(batch);
        let chunks: Vec<([Vec<T>; 4], FlowNorms)> = d_gates
            .par_chunks_mut(chunk * seq_len * gh)
            .zip(d_state0.par_chunks_mut(chunk * 2 * hidden))
            .zip(grad_out.par_chunks(chunk * out_rs))
            .zip(cells.par_chunks(chunk * seq_len * hidden))
            .zip(state0.par_chunks(chunk * 2 * hidden))
            .map(|((((gates, d_state0), grad_out), cells), state0)| {
                let chunk = BackwardChunk {
                    gates,
                    d_state0,
                    grad_out,
                    cells,
                    state0,
                };
                wide(|| self.backward_chunk(chunk, weight_hh, peephole))
            })
            .collect();
        let mut d_peep = [(); 4].map(|_| vec![T::ZERO; hidden]);
        let mut flow = FlowNorms::new(batch, seq_len);
        for (peep, norms) in &chunks {
            for (total, part) in d_peep.iter_mut().zip(peep) {
                total.iter_mut().zip(part).for_each(|(t, &p)| *t += p);
            }
            flow.merge(norms);
        }
        flow.finish(&self.flow);

        // Weight gradients over all B·T rows at once.
        let rows = batch * seq_len;
        let d_x = input_grads(
            &d_gates,
            x,
            weight_ih,
            &mut d_params[offsets.weight_ih..offsets.weight_hh],
            (rows, gh, input),
        );
        // ∂L/∂W_hh = d_gatesᵀ · h_{t−1} over all rows; the cell states are no longer
        // needed, so their buffer holds the shifted hidden states.
        let mut h_prev = cells;
        previous_states(
            &mut h_prev,
            (state0, 2 * hidden),
            (out, out_rs),
            seq_len,
            hidden,
        );
        matmul(
            (gh, hidden, rows),
            &mut d_params[offsets.weight_hh..offsets.bias_ih],
            hidden,
            (&d_gates, 1, gh),
            (&h_prev, hidden, 1),
            false,
        );
        add_column_sums(
            &mut d_params[offsets.bias_ih..offsets.bias_hh],
            &d_gates,
            gh,
        );
        let (head, tail) = d_params.split_at_mut(offsets.bias_hh);
        tail[..gh].copy_from_slice(&head[offsets.bias_ih..]);
        for gate in [Gate::Input, Gate::Forget, Gate::Output] {
            if let Some(o) = offsets.peephole[gate as usize] {
                d_params[o..o + hidden].copy_from_slice(&d_peep[gate as usize]);
            }
        }
        Ok((d_x, d_state0, d_params))
    }
}

struct StepForward<'a, T> {
    i: Option<&'a mut [T]>,
    f: Option<&'a mut [T]>,
    g: Option<&'a mut [T]>,
    o: Option<&'a mut [T]>,
    c_prev: &'a [T],
    c: &'a mut [T],
    tc: &'a mut [T],
    h: &'a mut [T],
    peephole: [Option<&'a [T]>; 4],
}

/// One batch row of one step: pre-activations in `i, f, g, o` become activations.
#[inline(always)]
fn step_forward<T: Real>(s: StepForward<'_, T>, options: LstmOptions) {
    let StepForward {
        mut i,
        mut f,
        g,
        o,
        c_prev,
        c,
        tc,
        h,
        peephole,
    } = s;
    let activate = |gate: &mut [T], peep: Option<&[T]>, state: &[T]| match peep {
        Some(p) => gate
            .iter_mut()
            .zip(p.iter().zip(state))
            .for_each(|(v, (&p, &s))| *v = (*v + p * s).sigmoid_()),
        None => gate.iter_mut().for_each(|v| *v = v.sigmoid_()),
    };
    let g = g.expect("g always has rows");
    g.iter_mut().for_each(|v| *v = v.tanh_());
    if let Some(f) = f.as_deref_mut() {
        activate(f, peephole[Gate::Forget as usize], c_prev);
    }
    if let Some(i) = i.as_deref_mut() {
        activate(i, peephole[Gate::Input as usize], c_prev);
    }
    // c = f ⊙ c_prev + i ⊙ g, with a removed gate standing for 1 and i = 1 − f coupled.
    match (i.as_deref(), f.as_deref()) {
        (Some(i), Some(f)) => {
            for j in 0..c.len() {
                c[j] = f[j] * c_prev[j] + i[j] * g[j];
            }
        }
        (None, Some(f)) if options.coupled_input_forget => {
            for j in 0..c.len() {
                c[j] = f[j] * c_prev[j] + (T::ONE - f[j]) * g[j];
            }
        }
        (None, Some(f)) => {
            for j in 0..c.len() {
                c[j] = f[j] * c_prev[j] + g[j];
            }
        }
        (Some(i), None) => {
            for j in 0..c.len() {
                c[j] = c_prev[j] + i[j] * g[j];
            }
        }
        (None, None) => {
            for j in 0..c.len() {
                c[j] = c_prev[j] + g[j];
            }
        }
    }
    tc.iter_mut()
        .zip(c.iter())
        .for_each(|(t, &c)| *t = c.tanh_());
    match o {
        Some(o) => {
            activate(o, peephole[Gate::Output as usize], c);
            h.iter_mut()
                .zip(o.iter().zip(tc.iter()))
                .for_each(|(h, (&o, &t))| *h = o * t);
        }
        None => h.copy_from_slice(tc),
    }
}

struct StepBackward<'a, T> {
    /// In: the activated gates `i, f, g, o` of the step (indexed by [`Gate`]); out: the
    /// gradients of their pre-activations. Reusing the buffer saves `B·T·G·H` floats.
    gates: [Option<&'a mut [T]>; 4],
    c_prev: &'a [T],
    c: &'a [T],
    tc: &'a [T],
    d_h: &'a [T],
    /// In: ∂L/∂c_t from later steps; out: ∂L/∂c_{t−1}.
    d_c: &'a mut [T],
    peephole: [Option<&'a [T]>; 4],
    d_peep: &'a mut [Vec<T>; 4],
}

/// One batch row of one step backwards: gradients of the pre-activations (in place of
/// the activations), of the previous cell state and of the peepholes.
#[inline(always)]
fn step_backward<T: Real>(s: StepBackward<'_, T>, options: LstmOptions) {
    let StepBackward {
        gates,
        c_prev,
        c,
        tc,
        d_h,
        d_c,
        peephole,
        d_peep,
    } = s;
    let [mut i, mut f, g, mut o] = gates;
    let g = g.expect("g always has rows");
    let n = d_h.len();
    // The plain LSTM (the common case) gets a branch-free loop that vectorises.
    if let (Some(i), Some(f), Some(o), false, [None, None, None, None]) = (
        i.as_deref_mut(),
        f.as_deref_mut(),
        o.as_deref_mut(),
        options.coupled_input_forget,
        peephole,
    ) {
        let (i, f, g, o) = (&mut i[..n], &mut f[..n], &mut g[..n], &mut o[..n]);
        let (c_prev, tc, d_c) = (&c_prev[..n], &tc[..n], &mut d_c[..n]);
        for j in 0..n {
            let (iv, fv, gv, ov) = (i[j], f[j], g[j], o[j]);
            let dc = d_c[j] + d_h[j] * ov * (T::ONE - tc[j] * tc[j]);
            o[j] = d_h[j] * tc[j] * ov * (T::ONE - ov);
            i[j] = dc * gv * iv * (T::ONE - iv);
            g[j] = dc * iv * (T::ONE - gv * gv);
            f[j] = dc * c_prev[j] * fv * (T::ONE - fv);
            d_c[j] = dc * fv;
        }
        return;
    }
    let p = |gate: Gate| peephole[gate as usize];
    for j in 0..n {
        let (i_j, f_j, o_j, g_j) = (
            i.as_deref().map(|v| v[j]),
            f.as_deref().map(|v| v[j]),
            o.as_deref().map(|v| v[j]),
            g[j],
        );
        let mut dc = d_c[j] + d_h[j] * o_j.unwrap_or(T::ONE) * (T::ONE - tc[j] * tc[j]);
        if let (Some(o_j), Some(o)) = (o_j, o.as_deref_mut()) {
            let d_pre = d_h[j] * tc[j] * o_j * (T::ONE - o_j);
            o[j] = d_pre;
            if let Some(p_o) = p(Gate::Output) {
                dc += d_pre * p_o[j];
                d_peep[Gate::Output as usize][j] += d_pre * c[j];
            }
        }
        let input = match (i_j, f_j) {
            (Some(i), _) => i,
            (None, Some(f)) if options.coupled_input_forget => T::ONE - f,
            _ => T::ONE,
        };
        let d_i = dc * g_j;
        g[j] = dc * input * (T::ONE - g_j * g_j);
        let mut dc_prev = dc;
        if let (Some(f_j), Some(f)) = (f_j, f.as_deref_mut()) {
            let mut d_f = dc * c_prev[j];
            if options.coupled_input_forget {
                d_f -= d_i;
            }
            let d_pre = d_f * f_j * (T::ONE - f_j);
            f[j] = d_pre;
            dc_prev = dc * f_j;
            if let Some(p_f) = p(Gate::Forget) {
                dc_prev += d_pre * p_f[j];
                d_peep[Gate::Forget as usize][j] += d_pre * c_prev[j];
            }
        }
        if let (Some(i_j), Some(i)) = (i_j, i.as_deref_mut()) {
            let d_pre = d_i * i_j * (T::ONE - i_j);
            i[j] = d_pre;
            if let Some(p_i) = p(Gate::Input) {
                dc_prev += d_pre * p_i[j];
                d_peep[Gate::Input as usize][j] += d_pre * c_prev[j];
            }
        }
        d_c[j] = dc_prev;
    }
}
