//! The LSTM, its Greff et al. 2017 ablations and the peephole LSTM.

use candle_core::{Result, Shape, Tensor, bail};
use candle_nn::ops::sigmoid;
use rayon::prelude::*;

use crate::cell::{FlowSink, GradFlow, State};
use crate::fused::{
    self, Dims, FlowNorms, GatedOffsets, Kernel, Real, Saved, chunk_rows, gated_weight_grads,
    matmul_serial, squared_sum, wide,
};
use crate::layer::{CellConfig, CellKind, CellMath, Layer, affine, block};
use crate::spec::{CellOptions, CellSpec, LayerWeights, ParamRole, ParamSpec, gated_layer};

/// LSTM layer, `torch.nn.LSTM` with [`LstmOptions::default`] (gate order i, f, g, o):
///
/// ```text
/// i_t = σ(W_i x_t + b_ii + R_i h_{t−1} + b_hi + p_i ⊙ c_{t−1})
/// f_t = σ(W_f x_t + b_if + R_f h_{t−1} + b_hf + p_f ⊙ c_{t−1})
/// g_t = tanh(W_g x_t + b_ig + R_g h_{t−1} + b_hg)
/// c_t = f_t ⊙ c_{t−1} + i_t ⊙ g_t
/// o_t = σ(W_o x_t + b_io + R_o h_{t−1} + b_ho + p_o ⊙ c_t)
/// h_t = o_t ⊙ tanh(c_t)
/// ```
///
/// The peephole terms `p ⊙ c` (diagonal, Gers & Schmidhuber 2000; TensorFlow's
/// `use_peepholes=True`) are present only with [`LstmOptions::peepholes`]: the input and
/// forget gates look at the old cell state, the output gate at the new one, and `g` has
/// none. Ablations: no input gate `i = 1`, no forget gate `f = 1`, no output gate
/// `o = 1`, coupled `i = 1 − f`, no input activation `g = W_g x + b + R_g h` (no tanh),
/// no output activation `h = o ⊙ c` (no tanh).
///
/// Parameters: `weight_ih_l{k}` `(G·H, I)`, `weight_hh_l{k}` `(G·H, H)`, `bias_ih_l{k}`,
/// `bias_hh_l{k}` `(G·H)` with `G` the gates that have rows ([`LstmOptions::gate_rows`]),
/// and `peephole_{i,f,o}_l{k}` `(H)`.
///
/// The peephole LSTM is this type with [`LstmOptions::peephole`] ([`PeepholeLstm`]).
pub type Lstm = Layer<LstmOptions>;

/// The peephole LSTM (Gers & Schmidhuber 2000): the [`Lstm`] with
/// [`LstmOptions::peepholes`] on, e.g. `PeepholeLstm::new(LstmOptions::peephole(), ..)`.
pub type PeepholeLstm = Lstm;

/// The LSTM variants of Greff et al. 2017 ("LSTM: A Search Space Odyssey"): the LSTM's
/// options.
///
/// The default is the plain PyTorch LSTM. A removed gate is fixed at 1 and has no
/// parameters, so parameter counts are those of the variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LstmOptions {
    /// Input gate `i` (false: `i = 1`, "NIG").
    pub input_gate: bool,
    /// Forget gate `f` (false: `f = 1`, the 1997 LSTM, "NFG").
    pub forget_gate: bool,
    /// Output gate `o` (false: `o = 1`, "NOG").
    pub output_gate: bool,
    /// Coupled input and forget gate: `i = 1 − f` ("CIFG").
    pub coupled_input_forget: bool,
    /// Diagonal peepholes from the cell state into the gates (Gers & Schmidhuber 2000).
    pub peepholes: bool,
    /// `g = tanh(·)` (false: `g` is the pre-activation itself, "NIAF").
    pub input_activation: bool,
    /// `h = o ⊙ tanh(c)` (false: `h = o ⊙ c`, "NOAF").
    pub output_activation: bool,
}

impl Default for LstmOptions {
    fn default() -> Self {
        Self {
            input_gate: true,
            forget_gate: true,
            output_gate: true,
            coupled_input_forget: false,
            peepholes: false,
            input_activation: true,
            output_activation: true,
        }
    }
}

impl LstmOptions {
    /// The peephole LSTM: the plain LSTM with peepholes on.
    pub fn peephole() -> Self {
        Self {
            peepholes: true,
            ..Self::default()
        }
    }

    /// The gates that have their own rows in `weight_ih`/`weight_hh`, in PyTorch order
    /// (i, f, g, o with removed ones left out).
    pub fn gate_rows(&self) -> Vec<Gate> {
        let mut gates = Vec::with_capacity(4);
        if self.input_gate && !self.coupled_input_forget {
            gates.push(Gate::Input);
        }
        if self.forget_gate {
            gates.push(Gate::Forget);
        }
        gates.push(Gate::Cell);
        if self.output_gate {
            gates.push(Gate::Output);
        }
        gates
    }

    /// The gates that get a peephole vector (none when peepholes are off).
    pub fn peephole_gates(&self) -> Vec<Gate> {
        if !self.peepholes {
            return Vec::new();
        }
        self.gate_rows()
            .into_iter()
            .filter(|gate| *gate != Gate::Cell)
            .collect()
    }
}

/// An LSTM gate, by its PyTorch letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Input gate `i`.
    Input,
    /// Forget gate `f`.
    Forget,
    /// Cell candidate `g`.
    Cell,
    /// Output gate `o`.
    Output,
}

impl Gate {
    /// PyTorch's letter for the gate (used in peephole names such as `peephole_i_l0`).
    pub fn letter(self) -> char {
        match self {
            Self::Input => 'i',
            Self::Forget => 'f',
            Self::Cell => 'g',
            Self::Output => 'o',
        }
    }
}

/// `model.cell: lstm` (with `model.ablation`).
pub static LSTM: CellKind = CellKind {
    name: "lstm",
    summary: "LSTM (Hochreiter & Schmidhuber 1997, forget gate of Gers et al. 2000; torch.nn.LSTM) and the ablations of Greff et al. 2017 (gates, coupling, activations)",
    configure: |options| LstmOptions::from_config(options, false),
    colors: &[
        ("lstm", [0, 114, 178]),
        ("peephole_lstm", [0, 158, 115]),
        ("lstm (no input gate)", [86, 180, 233]),
        ("lstm (no forget gate)", [140, 86, 75]),
        ("lstm (no output gate)", [148, 103, 189]),
        ("lstm (coupled gates)", [160, 160, 30]),
        ("lstm (no input activation)", [231, 41, 138]),
        ("lstm (no output activation)", [166, 118, 29]),
    ],
    examples: || {
        LstmOptions::every_variant(false)
            .into_iter()
            .map(CellConfig::new)
            .collect()
    },
};

/// `model.cell: peephole_lstm`: the LSTM with `ablation.peepholes` on.
pub static PEEPHOLE_LSTM: CellKind = CellKind {
    name: "peephole_lstm",
    summary: "peephole LSTM (Gers & Schmidhuber 2000): the LSTM whose gates see the cell state",
    configure: |options| LstmOptions::from_config(options, true),
    colors: &[("peephole_lstm (coupled gates)", [23, 190, 207])],
    examples: || {
        LstmOptions::every_variant(true)
            .into_iter()
            .map(CellConfig::new)
            .collect()
    },
};

impl LstmOptions {
    /// The options of `cell: lstm` (or `peephole_lstm` when `peepholes`) with `options`.
    fn from_config(
        options: &CellOptions,
        peepholes: bool,
    ) -> std::result::Result<CellConfig, String> {
        if options.reset_before {
            return Err("`model.gru_reset` is only allowed with `cell: gru`".into());
        }
        let lstm = Self {
            input_gate: !options.no_input_gate,
            forget_gate: !options.no_forget_gate,
            output_gate: !options.no_output_gate,
            coupled_input_forget: options.coupled_gates,
            peepholes: peepholes || options.peepholes,
            input_activation: !options.no_input_activation,
            output_activation: !options.no_output_activation,
        };
        lstm.validate()
            .map_err(|err| format!("`model.ablation`: {err}"))?;
        Ok(CellConfig::new(lstm))
    }

    /// The plain LSTM (or the peephole LSTM), each single ablation, CIFG, and no input
    /// and no output gate together: what the test suites run.
    fn every_variant(peepholes: bool) -> Vec<Self> {
        let base = Self {
            peepholes,
            ..Self::default()
        };
        vec![
            base,
            Self {
                input_gate: false,
                ..base
            },
            Self {
                forget_gate: false,
                ..base
            },
            Self {
                output_gate: false,
                ..base
            },
            Self {
                coupled_input_forget: true,
                ..base
            },
            Self {
                input_gate: false,
                output_gate: false,
                ..base
            },
            Self {
                input_activation: false,
                ..base
            },
            Self {
                output_activation: false,
                ..base
            },
        ]
    }

    /// The peephole vectors of `weights`, indexed by [`Gate`] (after the four gated
    /// tensors, in [`LstmOptions::peephole_gates`] order).
    fn peephole_tensors<'a>(&self, weights: &'a LayerWeights) -> Result<[Option<&'a Tensor>; 4]> {
        let mut peephole = [None; 4];
        for (k, gate) in self.peephole_gates().into_iter().enumerate() {
            peephole[gate as usize] = Some(weights.get(4 + k)?);
        }
        Ok(peephole)
    }
}

impl CellSpec for LstmOptions {
    fn label(&self) -> String {
        let mut changes = Vec::new();
        for (on, name) in [
            (!self.input_gate, "no input gate"),
            (!self.forget_gate, "no forget gate"),
            (!self.output_gate, "no output gate"),
            (self.coupled_input_forget, "coupled gates"),
            (!self.input_activation, "no input activation"),
            (!self.output_activation, "no output activation"),
        ] {
            if on {
                changes.push(name);
            }
        }
        let base = if self.peepholes {
            "peephole_lstm"
        } else {
            "lstm"
        };
        if changes.is_empty() {
            base.into()
        } else {
            format!("{base} ({})", changes.join(", "))
        }
    }

    fn has_cell_state(&self) -> bool {
        true
    }

    fn layer_params(&self, input: usize, hidden: usize) -> Vec<ParamSpec> {
        let rows = self.gate_rows();
        let forget = rows.iter().position(|gate| *gate == Gate::Forget);
        let mut specs = gated_layer(rows.len(), input, hidden, forget);
        for gate in self.peephole_gates() {
            let name = format!("peephole_{}", gate.letter());
            specs.push(ParamSpec::new(&name, &[hidden], ParamRole::Peephole));
        }
        specs
    }

    fn saved_floats_per_step(&self, hidden: usize) -> usize {
        // Activated gates, the cell state and the output.
        (self.gate_rows().len() + 2) * hidden
    }

    fn validate(&self) -> Result<()> {
        if self.coupled_input_forget && !self.input_gate {
            bail!(
                "coupled_input_forget computes the input gate as 1 - f: it cannot go with no input gate"
            );
        }
        if self.coupled_input_forget && !self.forget_gate {
            bail!("coupled_input_forget needs the forget gate (i = 1 - f)");
        }
        Ok(())
    }
}

impl CellMath for LstmOptions {
    fn fused(
        &self,
        weights: &LayerWeights,
        xs: &Tensor,
        state: &State,
    ) -> Result<(Tensor, State, GradFlow)> {
        let c0 = state.c.as_ref().expect("checked: LSTM state has c");
        let state0 = Tensor::cat(&[&state.h, c0], 1)?;
        // Output (B, T + 1, H): the hidden states of every step, then the final cell state.
        let (out, flow) = fused::apply(xs, &state0, weights, |dims, flow| LstmOp {
            dims,
            options: *self,
            saved: Saved::default(),
            flow,
        })?;
        let seq_len = out.dim(1)? - 1;
        let hs = out.narrow(1, 0, seq_len)?;
        let h = fused::step_of(&out, seq_len - 1)?;
        let c = fused::step_of(&out, seq_len)?;
        Ok((hs, State { h, c: Some(c) }, flow))
    }

    fn step(&self, weights: &LayerWeights, x: &Tensor, state: &State) -> Result<State> {
        let [weight_ih, weight_hh, bias_ih, bias_hh] = weights.four()?;
        let hidden = weights.hidden;
        let peephole = self.peephole_tensors(weights)?;
        // σ(pre + p ⊙ c) for a gate, with the peephole term only where there is one.
        let gate = |gate: Gate, pre: Tensor, c: &Tensor| -> Result<Tensor> {
            let pre = match &peephole[gate as usize] {
                Some(p) => (pre + c.broadcast_mul(p)?)?,
                None => pre,
            };
            sigmoid(&pre)
        };
        let c_prev = state.c.as_ref().expect("checked: LSTM state has c");
        let gates = (affine(x, weight_ih, bias_ih)? + affine(&state.h, weight_hh, bias_hh)?)?;
        let mut pre: [Option<Tensor>; 4] = [None, None, None, None];
        for (index, gate) in self.gate_rows().into_iter().enumerate() {
            pre[gate as usize] = Some(block(&gates, index, hidden)?);
        }
        let [pre_i, pre_f, pre_g, pre_o] = pre;

        let f = pre_f
            .map(|pre| gate(Gate::Forget, pre, c_prev))
            .transpose()?;
        let i = match pre_i {
            Some(pre) => Some(gate(Gate::Input, pre, c_prev)?),
            None if self.coupled_input_forget => Some(
                f.as_ref()
                    .expect("validated: coupling needs f")
                    .affine(-1.0, 1.0)?,
            ),
            None => None,
        };
        let g = pre_g.expect("g always has rows");
        let g = if self.input_activation { g.tanh()? } else { g };
        let kept = match &f {
            Some(f) => (f * c_prev)?,
            None => c_prev.clone(),
        };
        let written = match &i {
            Some(i) => (i * &g)?,
            None => g,
        };
        let c = (kept + written)?;
        let squashed = if self.output_activation {
            c.tanh()?
        } else {
            c.clone()
        };
        let h = match pre_o {
            Some(pre) => (gate(Gate::Output, pre, &c)? * squashed)?,
            None => squashed,
        };
        Ok(State { h, c: Some(c) })
    }
}

// The fused kernel: the whole sequence as one candle op (see `crate::fused`).

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

/// The flat parameters' offsets, with the peepholes indexed by [`Gate`].
struct ParamOffsets {
    gated: GatedOffsets,
    /// Start of each present peephole vector, indexed by [`Gate`].
    peephole: [Option<usize>; 4],
}

impl ParamOffsets {
    fn new(dims: Dims, options: &LstmOptions) -> Self {
        let gated = GatedOffsets::new(options, dims.input, dims.hidden);
        let mut peephole = [None; 4];
        for (gate, &start) in options.peephole_gates().iter().zip(&gated.extra) {
            peephole[*gate as usize] = Some(start);
        }
        Self { gated, peephole }
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
        let mut flow = FlowNorms::new(seq_len);
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
                if self.options.output_activation {
                    tanh_cell
                        .iter_mut()
                        .zip(c)
                        .for_each(|(tc, &c)| *tc = c.tanh_());
                } else {
                    tanh_cell.copy_from_slice(c);
                }
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

    fn dims(&self) -> Dims {
        self.dims
    }

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
        let peephole = offsets.peephole.map(|o| o.map(|o| &params[o..o + hidden]));
        // Input projection of every step, with both biases folded in.
        let (mut gates, weight_hh_t) = offsets.gated.prologue(
            Self::NAME,
            (x, params),
            gh,
            (batch * seq_len, input, hidden),
        )?;
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
        let weight_hh = &params[offsets.gated.weight_hh..offsets.gated.bias_ih];
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
        for (peep, _) in &chunks {
            for (total, part) in d_peep.iter_mut().zip(peep) {
                total.iter_mut().zip(part).for_each(|(t, &p)| *t += p);
            }
        }
        FlowNorms::finish(chunks.iter().map(|(_, norms)| norms), self.dims, &self.flow);

        // Weight gradients over all B·T rows at once; the cell states are no longer
        // needed, so their buffer holds the shifted hidden states.
        let (d_x, mut d_params) = gated_weight_grads(
            &offsets.gated,
            &d_gates,
            x,
            params,
            Some(cells),
            (state0, 2 * hidden),
            (out, out_rs),
            (batch, seq_len, input, hidden),
        );
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
    if options.input_activation {
        g.iter_mut().for_each(|v| *v = v.tanh_());
    }
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
    if options.output_activation {
        tc.iter_mut()
            .zip(c.iter())
            .for_each(|(t, &c)| *t = c.tanh_());
    } else {
        tc.copy_from_slice(c);
    }
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
    let plain =
        !options.coupled_input_forget && options.input_activation && options.output_activation;
    if let (Some(i), Some(f), Some(o), true, [None, None, None, None]) = (
        i.as_deref_mut(),
        f.as_deref_mut(),
        o.as_deref_mut(),
        plain,
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
        // ∂tanh(c)/∂c, or 1 without the output activation (tc is then c itself).
        let squash = if options.output_activation {
            T::ONE - tc[j] * tc[j]
        } else {
            T::ONE
        };
        let mut dc = d_c[j] + d_h[j] * o_j.unwrap_or(T::ONE) * squash;
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
        g[j] = if options.input_activation {
            dc * input * (T::ONE - g_j * g_j)
        } else {
            dc * input
        };
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

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::Cell;
    use crate::Params;

    #[test]
    fn one_step_by_hand() {
        // Zero weights; biases (i, f, g, o) = (0, ln 3, atanh 0.5, 0) give
        // i = 0.5, f = 0.75, g = 0.5, o = 0.5. With c₀ = 0.4:
        // c = 0.75·0.4 + 0.5·0.5 = 0.55, h = 0.5·tanh(0.55) = 0.250 260 105 595 117 7.
        let dev = Device::Cpu;
        let mut params = Params::new();
        let zeros = Tensor::zeros((4, 1), candle_core::DType::F64, &dev).unwrap();
        params.insert("weight_ih_l0", Var::from_tensor(&zeros).unwrap());
        params.insert("weight_hh_l0", Var::from_tensor(&zeros).unwrap());
        let bias = Tensor::new(&[0.0f64, 3f64.ln(), 0.5f64.atanh(), 0.0], &dev).unwrap();
        params.insert("bias_ih_l0", Var::from_tensor(&bias).unwrap());
        params.insert(
            "bias_hh_l0",
            Var::from_tensor(&bias.zeros_like().unwrap()).unwrap(),
        );
        let lstm = Lstm::new(LstmOptions::default(), &params, 0, 1, 1).unwrap();
        let state = State {
            h: Tensor::new(&[[0.9f64]], &dev).unwrap(),
            c: Some(Tensor::new(&[[0.4f64]], &dev).unwrap()),
        };
        let next = lstm
            .step(&Tensor::new(&[[1.0f64]], &dev).unwrap(), &state)
            .unwrap();
        let c = next.c.unwrap().to_vec2::<f64>().unwrap()[0][0];
        let h = next.h.to_vec2::<f64>().unwrap()[0][0];
        assert!((c - 0.55).abs() < 1e-15, "c = {c}");
        assert!((h - 0.250_260_105_595_117_7).abs() < 1e-15, "h = {h}");
    }
}
