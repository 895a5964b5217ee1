//! The LSTM, its Greff et al. 2017 ablations and the peephole LSTM.

use candle_core::{Result, Shape, Tensor, bail};
use candle_nn::ops::sigmoid;
use rayon::prelude::*;

use crate::cell::{FlowSink, GradFlow, State};
use crate::fused::{
    self, Dims, FlowNorms, GatedOffsets, Kernel, Real, Saved, chunk_rows, gated_weight_grads,
    matmul_serial, wide,
};
use crate::layer::{CellConfig, CellKind, CellMath, Layer, affine, block};
use crate::packed::Panels;
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
/// no output activation `h = o ⊙ c` (no tanh), and full gate recurrence (Greff et al.'s
/// FGR): every gate also sees the gates of the previous step,
///
/// ```text
/// [i_t; f_t; o_t] pre-activations += G · [i_{t−1}; f_{t−1}; o_{t−1}]    (G: 3H × 3H)
/// ```
///
/// with the gates before the first step taken as 0; the state then carries them,
/// `c = [c_t | i_t | f_t | o_t]` `(B, 4H)`.
///
/// Parameters: `weight_ih_l{k}` `(G·H, I)`, `weight_hh_l{k}` `(G·H, H)`, `bias_ih_l{k}`,
/// `bias_hh_l{k}` `(G·H)` with `G` the gates that have rows ([`LstmOptions::gate_rows`]),
/// `peephole_{i,f,o}_l{k}` `(H)`, and with full gate recurrence `weight_gg_l{k}`
/// `(3H, 3H)` (rows: the gate it feeds, columns: the previous gate; i, f, o order).
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
    /// Recurrent connections from the previous step's `i, f, o` into this step's ("FGR").
    pub full_gate_recurrence: bool,
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
            full_gate_recurrence: false,
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
    display: "LSTM",
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
        ("lstm (full gate recurrence)", [90, 90, 200]),
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
    display: "peephole LSTM",
    summary: "peephole LSTM (Gers & Schmidhuber 2000): the LSTM whose gates see the cell state",
    configure: |options| LstmOptions::from_config(options, true),
    colors: &[
        ("peephole_lstm (coupled gates)", [23, 190, 207]),
        ("peephole_lstm (full gate recurrence)", [120, 60, 140]),
    ],
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
        let name = if peepholes { "peephole_lstm" } else { "lstm" };
        options.refuse_scan(name)?;
        options.refuse_skew_init(name)?;
        options.refuse_indrnn_init(name)?;
        let lstm = Self {
            input_gate: !options.no_input_gate,
            forget_gate: !options.no_forget_gate,
            output_gate: !options.no_output_gate,
            coupled_input_forget: options.coupled_gates,
            peepholes: peepholes || options.peepholes,
            input_activation: !options.no_input_activation,
            output_activation: !options.no_output_activation,
            full_gate_recurrence: options.full_gate_recurrence,
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
            Self {
                full_gate_recurrence: true,
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

    /// `weight_gg` `(3H, 3H)` of `weights`, after the peepholes, with full gate recurrence.
    fn gate_recurrence<'a>(&self, weights: &'a LayerWeights) -> Result<Option<&'a Tensor>> {
        if !self.full_gate_recurrence {
            return Ok(None);
        }
        weights.get(4 + self.peephole_gates().len()).map(Some)
    }

    /// Rows of the fused op's output after the hidden states: the final cell state and,
    /// with full gate recurrence, the last step's `i, f, o`.
    fn state_rows(&self) -> usize {
        if self.full_gate_recurrence { 4 } else { 1 }
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
            (self.full_gate_recurrence, "full gate recurrence"),
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

    fn cell_state_size(&self, hidden: usize) -> usize {
        if self.full_gate_recurrence {
            4 * hidden
        } else {
            hidden
        }
    }

    fn layer_params(&self, input: usize, hidden: usize) -> Vec<ParamSpec> {
        let rows = self.gate_rows();
        let forget = rows.iter().position(|gate| *gate == Gate::Forget);
        let mut specs = gated_layer(rows.len(), input, hidden, forget);
        for gate in self.peephole_gates() {
            let name = format!("peephole_{}", gate.letter());
            specs.push(ParamSpec::new(&name, &[hidden], ParamRole::Peephole));
        }
        if self.full_gate_recurrence {
            let gates = 3 * hidden;
            specs.push(ParamSpec::new(
                "weight_gg",
                &[gates, gates],
                ParamRole::GateRecurrence,
            ));
        }
        specs
    }

    fn saved_floats_per_step(&self, hidden: usize) -> usize {
        // Activated gates, the cell state and the output.
        (self.gate_rows().len() + 2) * hidden
    }

    fn has_cuda_kernel(&self) -> bool {
        true
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
        if self.full_gate_recurrence
            && (!self.input_gate
                || !self.forget_gate
                || !self.output_gate
                || self.coupled_input_forget)
        {
            bail!(
                "full_gate_recurrence connects the input, forget and output gates: it needs all three, uncoupled"
            );
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
        // Output (B, T + 1, H): the hidden states of every step, then the final cell state
        // (and with full gate recurrence the last i, f, o: (B, T + 4, H)).
        let (out, flow) = fused::apply(xs, &state0, weights, |dims, flow| LstmOp {
            dims,
            options: *self,
            saved: Saved::default(),
            flow,
        })?;
        let rows = self.state_rows();
        let seq_len = out.dim(1)? - rows;
        let hs = out.narrow(1, 0, seq_len)?;
        let h = fused::step_of(&out, seq_len - 1)?;
        let c = if rows == 1 {
            fused::step_of(&out, seq_len)?
        } else {
            out.narrow(1, seq_len, rows)?.flatten_from(1)?
        };
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
        let carried = state.c.as_ref().expect("checked: LSTM state has c");
        let c_prev = &carried.narrow(1, 0, hidden)?;
        let gates = (affine(x, weight_ih, bias_ih)? + affine(&state.h, weight_hh, bias_hh)?)?;
        let mut pre: [Option<Tensor>; 4] = [None, None, None, None];
        for (index, gate) in self.gate_rows().into_iter().enumerate() {
            pre[gate as usize] = Some(block(&gates, index, hidden)?);
        }
        if let Some(weight_gg) = self.gate_recurrence(weights)? {
            // G · [i; f; o]_{t−1}, split back over the three gates.
            let previous = carried.narrow(1, hidden, 3 * hidden)?;
            let recurrent = previous.matmul(&weight_gg.t()?)?;
            for (k, gate) in [Gate::Input, Gate::Forget, Gate::Output]
                .into_iter()
                .enumerate()
            {
                let slot = &mut pre[gate as usize];
                let own = slot.take().expect("validated: FGR has i, f and o");
                *slot = Some((own + block(&recurrent, k, hidden)?)?);
            }
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
        let o = pre_o.map(|pre| gate(Gate::Output, pre, &c)).transpose()?;
        let h = match &o {
            Some(o) => (o * squashed)?,
            None => squashed,
        };
        let c = match (self.full_gate_recurrence, &i, &f, &o) {
            (true, Some(i), Some(f), Some(o)) => Tensor::cat(&[&c, i, f, o], 1)?,
            _ => c,
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
    /// Start of `weight_gg` (full gate recurrence).
    gate_recurrence: Option<usize>,
}

impl ParamOffsets {
    fn new(dims: Dims, options: &LstmOptions) -> Self {
        let gated = GatedOffsets::new(options, dims.input, dims.hidden);
        let mut peephole = [None; 4];
        let peepholes = options.peephole_gates();
        for (gate, &start) in peepholes.iter().zip(&gated.extra) {
            peephole[*gate as usize] = Some(start);
        }
        let gate_recurrence = options
            .full_gate_recurrence
            .then(|| gated.extra[peepholes.len()]);
        Self {
            gated,
            peephole,
            gate_recurrence,
        }
    }

    /// `weight_gg` `(3H, 3H)` in `params`, with full gate recurrence.
    fn weight_gg<'a, T>(&self, params: &'a [T], hidden: usize) -> Option<&'a [T]> {
        self.gate_recurrence
            .map(|o| &params[o..o + 9 * hidden * hidden])
    }
}

/// Full gate recurrence in a batch chunk's time loop (all four gates present, so a row
/// of gate values is `[i | f | g | o]`): the previous step's `i, f, o` gathered into one
/// `(B, 3H)` block and multiplied with `weight_gg` `G` `(3H, 3H)`.
struct GateRecurrence<'a, T> {
    weight: &'a [T],
    hidden: usize,
    batch: usize,
    /// `[i | f | o]` of the previous step, per batch row.
    previous: Vec<T>,
    /// Forward: `previous · Gᵀ`; backward: this step's `i, f, o` pre-activation gradients.
    current: Vec<T>,
}

impl<'a, T: Real> GateRecurrence<'a, T> {
    fn new(weight: Option<&'a [T]>, batch: usize, hidden: usize) -> Option<Self> {
        Some(Self {
            weight: weight?,
            hidden,
            batch,
            previous: vec![T::ZERO; batch * 3 * hidden],
            current: vec![T::ZERO; batch * 3 * hidden],
        })
    }

    /// `[i | f | o]` of a row `[i | f | g | o]` into `dst` `(3H)`.
    fn gather(row: &[T], hidden: usize, dst: &mut [T]) {
        dst[..2 * hidden].copy_from_slice(&row[..2 * hidden]);
        dst[2 * hidden..3 * hidden].copy_from_slice(&row[3 * hidden..4 * hidden]);
    }

    /// Gathers step `t`'s `[i | f | o]` from `gates` into `dst` for every batch row.
    fn gather_step(&self, gates: &[T], t: usize, seq_len: usize, dst: &mut [T]) {
        let (h, gh) = (self.hidden, 4 * self.hidden);
        for b in 0..self.batch {
            let row = (b * seq_len + t) * gh;
            Self::gather(
                &gates[row..row + gh],
                h,
                &mut dst[b * 3 * h..(b + 1) * 3 * h],
            );
        }
    }

    /// The gates before step `t`: the carried ones (`state0` rows `[h | c | i | f | o]`)
    /// at `t = 0`, else step `t − 1`'s activations.
    fn load_previous(&mut self, gates: &[T], state0: &[T], t: usize, seq_len: usize) {
        let h = self.hidden;
        let mut previous = std::mem::take(&mut self.previous);
        if t == 0 {
            for (b, dst) in previous.chunks_exact_mut(3 * h).enumerate() {
                dst.copy_from_slice(&state0[b * 5 * h + 2 * h..(b + 1) * 5 * h]);
            }
        } else {
            self.gather_step(gates, t - 1, seq_len, &mut previous);
        }
        self.previous = previous;
    }

    /// Adds `G · [i; f; o]_{t−1}` to step `t`'s `i, f, o` pre-activations.
    fn forward_step(&mut self, gates: &mut [T], state0: &[T], t: usize, seq_len: usize) {
        let (h, n) = (self.hidden, 3 * self.hidden);
        self.load_previous(gates, state0, t, seq_len);
        matmul_serial(
            (self.batch, n, n),
            &mut self.current,
            n,
            (&self.previous, n, 1),
            (self.weight, 1, n),
            false,
        );
        for (b, product) in self.current.chunks_exact(n).enumerate() {
            let row = (b * seq_len + t) * 4 * h;
            let pre = &mut gates[row..row + 4 * h];
            let (ifg_pre, o_pre) = pre.split_at_mut(3 * h);
            ifg_pre[..2 * h]
                .iter_mut()
                .chain(o_pre.iter_mut())
                .zip(product)
                .for_each(|(v, &p)| *v += p);
        }
    }

    /// Once `gates[:, t]` holds pre-activation gradients (and `gates[:, t − 1]` still the
    /// activations): `d_previous` ← `d_pre_t · G`, what the previous gates receive, and
    /// `d_weight` += `d_pre_tᵀ · [i; f; o]_{t−1}`.
    fn backward_step(
        &mut self,
        (gates, state0): (&[T], &[T]),
        (t, seq_len): (usize, usize),
        d_previous: &mut [T],
        d_weight: &mut [T],
    ) {
        let n = 3 * self.hidden;
        self.load_previous(gates, state0, t, seq_len);
        let mut current = std::mem::take(&mut self.current);
        self.gather_step(gates, t, seq_len, &mut current);
        matmul_serial(
            (self.batch, n, n),
            d_previous,
            n,
            (&current, n, 1),
            (self.weight, n, 1),
            false,
        );
        matmul_serial(
            (n, n, self.batch),
            d_weight,
            n,
            (&current, 1, n),
            (&self.previous, n, 1),
            true,
        );
        self.current = current;
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
    /// Floats per batch row of the initial state: `[h | c]`, or `[h | c | i | f | o]`.
    fn state_width(&self) -> usize {
        self.dims.hidden + self.options.cell_state_size(self.dims.hidden)
    }

    /// The time loop for the batch rows of `chunk`: recurrent GEMM and pointwise pass
    /// per step, then the final cell state (and last gates) after the hidden states.
    #[inline(always)]
    fn forward_chunk<T: Real>(
        &self,
        chunk: ForwardChunk<'_, T>,
        recurrent: &Panels<T>,
        peephole: [Option<&[T]>; 4],
        weight_gg: Option<&[T]>,
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
        let sw = self.state_width();
        let batch = state0.len() / sw;
        let out_rs = (seq_len + self.options.state_rows()) * hidden;
        let mut tanh_cell = vec![T::ZERO; hidden];
        let mut gate_rec = GateRecurrence::new(weight_gg, batch, hidden);
        for t in 0..seq_len {
            // gates[:, t] += h_{t−1} · W_hhᵀ
            let (h_prev, h_rs) = if t == 0 {
                (state0, sw)
            } else {
                (&out[(t - 1) * hidden..], out_rs)
            };
            recurrent.mul(
                (&mut gates[t * gh..], seq_len * gh),
                (h_prev, h_rs, 1),
                batch,
                true,
            );
            if let Some(rec) = gate_rec.as_mut() {
                rec.forward_step(gates, state0, t, seq_len);
            }
            for b in 0..batch {
                let row = (b * seq_len + t) * gh;
                let cell = (b * seq_len + t) * hidden;
                if t + 1 < seq_len {
                    // The next step's input projections, written long before.
                    fused::prefetch(gates, row + gh, gh);
                }
                let (before, rest) = cells.split_at_mut(cell);
                let c_prev = if t == 0 {
                    &state0[b * sw + hidden..b * sw + 2 * hidden]
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
            let tail = &mut out[b * out_rs + seq_len * hidden..(b + 1) * out_rs];
            tail[..hidden].copy_from_slice(&cells[last..last + hidden]);
            if gate_rec.is_some() {
                let row = (b * seq_len + seq_len - 1) * gh;
                GateRecurrence::gather(&gates[row..row + gh], hidden, &mut tail[hidden..]);
            }
        }
    }

    /// The reverse time loop for the batch rows of `chunk`: fills the chunk's gate
    /// gradients and its initial-state gradient, and returns its peephole and gate
    /// recurrence gradients and its gradient flow.
    #[inline(always)]
    fn backward_chunk<T: Real>(
        &self,
        chunk: BackwardChunk<'_, T>,
        recurrent: &Panels<T>,
        peephole: [Option<&[T]>; 4],
        weight_gg: Option<&[T]>,
    ) -> ChunkGrads<T> {
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
        let sw = self.state_width();
        let batch = state0.len() / sw;
        let out_rs = (seq_len + self.options.state_rows()) * hidden;
        let mut d_h_rec = vec![T::ZERO; batch * hidden];
        let mut d_c = vec![T::ZERO; batch * hidden];
        let mut gate_rec = GateRecurrence::new(weight_gg, batch, hidden);
        // ∂L/∂[i | f | o] of the step before the one being processed (full gate recurrence).
        let mut d_previous = vec![
            T::ZERO;
            if gate_rec.is_some() {
                batch * 3 * hidden
            } else {
                0
            }
        ];
        let mut d_weight_gg = vec![
            T::ZERO;
            if gate_rec.is_some() {
                9 * hidden * hidden
            } else {
                0
            }
        ];
        for b in 0..batch {
            let at = b * out_rs + seq_len * hidden;
            d_c[b * hidden..(b + 1) * hidden].copy_from_slice(&grad_out[at..at + hidden]);
            if gate_rec.is_some() {
                d_previous[b * 3 * hidden..(b + 1) * 3 * hidden]
                    .copy_from_slice(&grad_out[at + hidden..at + 4 * hidden]);
            }
        }
        let mut d_peep = [(); 4].map(|_| vec![T::ZERO; hidden]);
        let mut d_h = vec![T::ZERO; hidden];
        let mut tanh_cell = vec![T::ZERO; hidden];
        let mut flow = FlowNorms::new(seq_len, &self.flow);
        for t in (0..seq_len).rev() {
            for b in 0..batch {
                let row = (b * seq_len + t) * gh;
                let cell = (b * seq_len + t) * hidden;
                let c_prev = if t == 0 {
                    &state0[b * sw + hidden..b * sw + 2 * hidden]
                } else {
                    &cells[cell - hidden..cell]
                };
                let g_out = &grad_out[b * out_rs + t * hidden..b * out_rs + (t + 1) * hidden];
                if t > 0 {
                    // The next step's rows, read backwards a jump apart per batch row,
                    // are more streams than the hardware follows: asked for ahead.
                    fused::prefetch(grad_out, b * out_rs + (t - 1) * hidden, hidden);
                    fused::prefetch(gates, row - gh, gh);
                }
                if t > 1 {
                    fused::prefetch(cells, cell - 2 * hidden, hidden);
                }
                let rec = &d_h_rec[b * hidden..(b + 1) * hidden];
                d_h.iter_mut()
                    .zip(g_out.iter().zip(rec))
                    .for_each(|(d, (&a, &r))| *d = a + r);
                flow.add(t, &d_h);
                let step = StepBackward {
                    gates: split_gates(&mut gates[row..row + gh], hidden, layout),
                    c_prev,
                    c: &cells[cell..cell + hidden],
                    tc: &mut tanh_cell,
                    d_h: &d_h,
                    d_c: &mut d_c[b * hidden..(b + 1) * hidden],
                    peephole,
                    d_peep: &mut d_peep,
                    d_gates_later: gate_rec
                        .is_some()
                        .then(|| &d_previous[b * 3 * hidden..(b + 1) * 3 * hidden]),
                };
                step_backward(step, self.options);
            }
            // ∂L/∂h_{t−1} through the recurrence: d_gates[:, t] · W_hh.
            recurrent.mul(
                (&mut d_h_rec, hidden),
                (&gates[t * gh..], seq_len * gh, 1),
                batch,
                false,
            );
            if let Some(rec) = gate_rec.as_mut() {
                rec.backward_step(
                    (gates, state0),
                    (t, seq_len),
                    &mut d_previous,
                    &mut d_weight_gg,
                );
            }
        }
        for b in 0..batch {
            let at = b * sw;
            d_state0[at..at + hidden].copy_from_slice(&d_h_rec[b * hidden..(b + 1) * hidden]);
            d_state0[at + hidden..at + 2 * hidden]
                .copy_from_slice(&d_c[b * hidden..(b + 1) * hidden]);
            if gate_rec.is_some() {
                d_state0[at + 2 * hidden..at + 5 * hidden]
                    .copy_from_slice(&d_previous[b * 3 * hidden..(b + 1) * 3 * hidden]);
            }
        }
        ChunkGrads {
            d_peep,
            d_weight_gg,
            flow,
        }
    }
}

/// What one batch chunk's backward returns besides its slices of the gate and state
/// gradients: its shares of the peephole and `weight_gg` gradients and its flow norms.
struct ChunkGrads<T> {
    d_peep: [Vec<T>; 4],
    d_weight_gg: Vec<T>,
    flow: FlowNorms,
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
        Shape::from((batch, seq_len + self.options.state_rows(), hidden))
    }

    fn forward<T: Real>(&self, x: &[T], state0: &[T], params: &[T]) -> Result<Vec<T>> {
        let Dims {
            batch,
            seq_len,
            input,
            hidden,
            ..
        } = self.dims;
        let layout = Layout4::new(&self.options);
        let gh = layout.count * hidden;
        let offsets = ParamOffsets::new(self.dims, &self.options);
        let peephole = offsets.peephole.map(|o| o.map(|o| &params[o..o + hidden]));
        let weight_gg = offsets.weight_gg(params, hidden);
        // Input projection of every step, with both biases folded in.
        let mut gates =
            offsets
                .gated
                .prologue(Self::NAME, (x, params), gh, (batch * seq_len, input))?;
        let out_rs = (seq_len + self.options.state_rows()) * hidden;
        let mut out = vec![T::ZERO; batch * out_rs];
        let mut cells = vec![T::ZERO; batch * seq_len * hidden];
        let rows = chunk_rows(batch);
        // gates[:, t] += h_{t−1} · W_hhᵀ: W_hh read transposed, one block per gate.
        let weight_hh = &params[offsets.gated.weight_hh..offsets.gated.bias_ih];
        let recurrent = Panels::pack(weight_hh, (1, hidden), hidden, (layout.count, hidden), rows);
        gates
            .par_chunks_mut(rows * seq_len * gh)
            .zip(out.par_chunks_mut(rows * out_rs))
            .zip(cells.par_chunks_mut(rows * seq_len * hidden))
            .zip(state0.par_chunks(rows * self.state_width()))
            .for_each(|(((gates, out), cells), state0)| {
                let chunk = ForwardChunk {
                    gates,
                    out,
                    cells,
                    state0,
                };
                wide(|| self.forward_chunk(chunk, &recurrent, peephole, weight_gg));
            });
        *self.saved.lock().expect("saved activations") = Some(Box::new(LstmSaved { gates, cells }));
        Ok(out)
    }

    /// Backward through time; `grad_out` is `(B, T + 1, H)`: hidden states, then the
    /// final cell state (then the last i, f, o with full gate recurrence). The state
    /// gradient is `[∂h0 | ∂c0]` (then the initial gates').
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
            hidden,
            ..
        } = self.dims;
        let layout = Layout4::new(&self.options);
        let gh = layout.count * hidden;
        let offsets = ParamOffsets::new(self.dims, &self.options);
        let weight_hh = &params[offsets.gated.weight_hh..offsets.gated.bias_ih];
        let peephole = offsets.peephole.map(|o| o.map(|o| &params[o..o + hidden]));
        let weight_gg = offsets.weight_gg(params, hidden);
        // The activations are taken, not borrowed: the gate gradients overwrite them.
        let saved = fused::take_saved::<LstmSaved<T>>(&self.saved, Self::NAME)?;
        let LstmSaved {
            gates: mut d_gates,
            cells,
        } = saved;
        let out_rs = (seq_len + self.options.state_rows()) * hidden;
        let sw = self.state_width();

        let mut d_state0 = vec![T::ZERO; batch * sw];
        let chunk = chunk_rows(batch);
        // ∂L/∂h_{t−1} = d_gates[:, t] · W_hh.
        let recurrent = Panels::pack(weight_hh, (hidden, 1), gh, (1, hidden), chunk);
        let chunks: Vec<ChunkGrads<T>> = d_gates
            .par_chunks_mut(chunk * seq_len * gh)
            .zip(d_state0.par_chunks_mut(chunk * sw))
            .zip(grad_out.par_chunks(chunk * out_rs))
            .zip(cells.par_chunks(chunk * seq_len * hidden))
            .zip(state0.par_chunks(chunk * sw))
            .map(|((((gates, d_state0), grad_out), cells), state0)| {
                let chunk = BackwardChunk {
                    gates,
                    d_state0,
                    grad_out,
                    cells,
                    state0,
                };
                wide(|| self.backward_chunk(chunk, &recurrent, peephole, weight_gg))
            })
            .collect();
        let mut d_peep = [(); 4].map(|_| vec![T::ZERO; hidden]);
        let mut d_weight_gg = vec![
            T::ZERO;
            if weight_gg.is_some() {
                9 * hidden * hidden
            } else {
                0
            }
        ];
        for part in &chunks {
            for (total, part) in d_peep.iter_mut().zip(&part.d_peep) {
                total.iter_mut().zip(part).for_each(|(t, &p)| *t += p);
            }
            d_weight_gg
                .iter_mut()
                .zip(&part.d_weight_gg)
                .for_each(|(t, &p)| *t += p);
        }
        FlowNorms::finish(chunks.iter().map(|part| &part.flow), self.dims, &self.flow);

        // Weight gradients over all B·T rows at once (the cell states no longer needed).
        drop(cells);
        let (d_x, mut d_params) = gated_weight_grads(
            &offsets.gated,
            &d_gates,
            x,
            params,
            (state0, sw),
            (out, out_rs),
            self.dims,
        );
        for gate in [Gate::Input, Gate::Forget, Gate::Output] {
            if let Some(o) = offsets.peephole[gate as usize] {
                d_params[o..o + hidden].copy_from_slice(&d_peep[gate as usize]);
            }
        }
        if let Some(o) = offsets.gate_recurrence {
            d_params[o..o + d_weight_gg.len()].copy_from_slice(&d_weight_gg);
        }
        Ok((d_x, d_state0, d_params))
    }

    #[cfg(feature = "cuda")]
    fn cuda_forward(
        &self,
        gpu: &crate::cuda::Gpu,
        x: &[f32],
        state0: &[f32],
        params: &[f32],
    ) -> Result<Vec<f32>> {
        let offsets = GatedOffsets::new(&self.options, self.dims.input, self.dims.hidden);
        let (out, saved) = crate::cuda::lstm_forward(
            gpu,
            (self.dims, &self.options),
            &offsets,
            (x, state0, params),
        )?;
        *self.saved.lock().expect("saved activations") = Some(Box::new(saved));
        Ok(out)
    }

    #[cfg(feature = "cuda")]
    fn cuda_backward(
        &self,
        gpu: &crate::cuda::Gpu,
        _x: &[f32],
        _state0: &[f32],
        _params: &[f32],
        _out: &[f32],
        grad_out: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let saved = fused::take_saved::<crate::cuda::LstmGpuSaved>(&self.saved, Self::NAME)?;
        let offsets = GatedOffsets::new(&self.options, self.dims.input, self.dims.hidden);
        let grads =
            crate::cuda::lstm_backward(gpu, (self.dims, &self.options), &offsets, saved, grad_out)?;
        *self.flow.lock().expect("gradient-flow sink") = Some(grads.flow);
        Ok((grads.d_x, grads.d_state0, grads.d_params))
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
        mut g,
        mut o,
        c_prev,
        c,
        tc,
        h,
        peephole,
    } = s;
    if let (Some(i), Some(f), Some(g), Some(o), true, true, [None, None, None, None]) = (
        i.as_deref_mut(),
        f.as_deref_mut(),
        g.as_deref_mut(),
        o.as_deref_mut(),
        options.input_activation,
        options.output_activation,
        peephole,
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features `avx512` is compiled for.
            #[allow(unsafe_code)]
            return unsafe { avx512::plain_step_forward(i, f, g, o, c_prev, c, h) };
        }
        return plain_step_forward(i, f, g, o, c_prev, c, h);
    }
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

/// [`step_forward`] for the plain LSTM (every gate, both activations, no peepholes) in
/// one pass over the units: the same operations on each unit as the general path, so
/// the same bits, with each slice its own argument so that the loop vectorises.
#[inline(always)]
fn plain_step_forward<T: Real>(
    i: &mut [T],
    f: &mut [T],
    g: &mut [T],
    o: &mut [T],
    c_prev: &[T],
    c: &mut [T],
    h: &mut [T],
) {
    let n = c.len();
    let (i, f, g, o, c_prev, h) = (
        &mut i[..n],
        &mut f[..n],
        &mut g[..n],
        &mut o[..n],
        &c_prev[..n],
        &mut h[..n],
    );
    for j in 0..n {
        let gv = g[j].tanh_();
        let fv = f[j].sigmoid_();
        let iv = i[j].sigmoid_();
        let cv = fv * c_prev[j] + iv * gv;
        let ov = o[j].sigmoid_();
        (i[j], f[j], g[j], o[j], c[j]) = (iv, fv, gv, ov, cv);
        h[j] = ov * cv.tanh_();
    }
}

/// [`step_backward`] for the plain LSTM in one pass over the units, `tanh(c)` included:
/// the same operations on each unit as before, with each slice its own argument so that
/// the loop vectorises.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn plain_step_backward<T: Real>(
    i: &mut [T],
    f: &mut [T],
    g: &mut [T],
    o: &mut [T],
    c_prev: &[T],
    c: &[T],
    d_h: &[T],
    d_c: &mut [T],
) {
    let n = d_h.len();
    let (i, f, g, o) = (&mut i[..n], &mut f[..n], &mut g[..n], &mut o[..n]);
    let (c_prev, c, d_c) = (&c_prev[..n], &c[..n], &mut d_c[..n]);
    for j in 0..n {
        let (iv, fv, gv, ov) = (i[j], f[j], g[j], o[j]);
        let tc = c[j].tanh_();
        let dc = d_c[j] + d_h[j] * ov * (T::ONE - tc * tc);
        o[j] = d_h[j] * tc * ov * (T::ONE - ov);
        i[j] = dc * gv * iv * (T::ONE - iv);
        g[j] = dc * iv * (T::ONE - gv * gv);
        f[j] = dc * c_prev[j] * fv * (T::ONE - fv);
        d_c[j] = dc * fv;
    }
}

/// The plain LSTM's pointwise passes compiled for AVX-512: 16 units per vector halve
/// the instructions of the rational `tanh` (5 per unit forward, 1 backward) against
/// AVX2, with the same operations on each unit, so the same bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::Real;

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn plain_step_forward<T: Real>(
        i: &mut [T],
        f: &mut [T],
        g: &mut [T],
        o: &mut [T],
        c_prev: &[T],
        c: &mut [T],
        h: &mut [T],
    ) {
        super::plain_step_forward(i, f, g, o, c_prev, c, h);
    }

    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) fn plain_step_backward<T: Real>(
        i: &mut [T],
        f: &mut [T],
        g: &mut [T],
        o: &mut [T],
        c_prev: &[T],
        c: &[T],
        d_h: &[T],
        d_c: &mut [T],
    ) {
        super::plain_step_backward(i, f, g, o, c_prev, c, d_h, d_c);
    }
}

struct StepBackward<'a, T> {
    /// In: the activated gates `i, f, g, o` of the step (indexed by [`Gate`]); out: the
    /// gradients of their pre-activations. Reusing the buffer saves `B·T·G·H` floats.
    gates: [Option<&'a mut [T]>; 4],
    c_prev: &'a [T],
    c: &'a [T],
    /// Scratch for `tanh(c)` (or `c` without the output activation).
    tc: &'a mut [T],
    d_h: &'a [T],
    /// In: ∂L/∂c_t from later steps; out: ∂L/∂c_{t−1}.
    d_c: &'a mut [T],
    peephole: [Option<&'a [T]>; 4],
    d_peep: &'a mut [Vec<T>; 4],
    /// Full gate recurrence: ∂L/∂[i | f | o] of this step through the next step's gates.
    d_gates_later: Option<&'a [T]>,
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
        d_gates_later,
    } = s;
    let [mut i, mut f, g, mut o] = gates;
    let g = g.expect("g always has rows");
    let n = d_h.len();
    // The plain LSTM (the common case) gets a branch-free loop that vectorises.
    let plain =
        !options.coupled_input_forget && options.input_activation && options.output_activation;
    if let (Some(i), Some(f), Some(o), true, [None, None, None, None], None) = (
        i.as_deref_mut(),
        f.as_deref_mut(),
        o.as_deref_mut(),
        plain,
        peephole,
        d_gates_later,
    ) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has the features `avx512` is compiled for.
            #[allow(unsafe_code)]
            return unsafe { avx512::plain_step_backward(i, f, g, o, c_prev, c, d_h, d_c) };
        }
        return plain_step_backward(i, f, g, o, c_prev, c, d_h, d_c);
    }
    let tc = &mut tc[..n];
    if options.output_activation {
        tc.iter_mut().zip(c).for_each(|(tc, &c)| *tc = c.tanh_());
    } else {
        tc.copy_from_slice(&c[..n]);
    }
    let p = |gate: Gate| peephole[gate as usize];
    // What a gate's activation receives through the next step's gates: [i | f | o].
    let later = |gate: Gate, j: usize| match (d_gates_later, gate) {
        (None, _) => T::ZERO,
        (Some(d), Gate::Input) => d[j],
        (Some(d), Gate::Forget) => d[n + j],
        (Some(d), _) => d[2 * n + j],
    };
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
            let d_pre = (d_h[j] * tc[j] + later(Gate::Output, j)) * o_j * (T::ONE - o_j);
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
            let mut d_f = dc * c_prev[j] + later(Gate::Forget, j);
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
            let d_pre = (d_i + later(Gate::Input, j)) * i_j * (T::ONE - i_j);
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

    /// One unit with one input: zero weights, `bias_ih` (i, f, g, o) = `bias`, zero
    /// `bias_hh`.
    fn one_unit(bias: [f64; 4]) -> Params {
        let dev = Device::Cpu;
        let mut params = Params::new();
        let zeros = Tensor::zeros((4, 1), candle_core::DType::F64, &dev).unwrap();
        params.insert("weight_ih_l0", Var::from_tensor(&zeros).unwrap());
        params.insert("weight_hh_l0", Var::from_tensor(&zeros).unwrap());
        let bias = Tensor::new(&bias, &dev).unwrap();
        params.insert("bias_ih_l0", Var::from_tensor(&bias).unwrap());
        params.insert(
            "bias_hh_l0",
            Var::from_tensor(&bias.zeros_like().unwrap()).unwrap(),
        );
        params
    }

    #[test]
    fn one_step_by_hand() {
        // Zero weights; biases (i, f, g, o) = (0, ln 3, atanh 0.5, 0) give
        // i = 0.5, f = 0.75, g = 0.5, o = 0.5. With c₀ = 0.4:
        // c = 0.75·0.4 + 0.5·0.5 = 0.55, h = 0.5·tanh(0.55) = 0.250 260 105 595 117 7.
        let dev = Device::Cpu;
        let params = one_unit([0.0, 3f64.ln(), 0.5f64.atanh(), 0.0]);
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

    #[test]
    fn one_step_with_full_gate_recurrence_by_hand() {
        // Zero input and recurrent weights; biases (i, f, g, o) = (0, 0, atanh 0.5, 0).
        // The carried gates (i, f, o) = (0.5, 0.5, 0.5) reach this step's through
        // weight_gg: the f row (0, 2 ln 3, 0) and the o row (2 ln 3, 0, 0) each add
        // 2 ln 3 · 0.5 = ln 3, so i = 0.5, f = σ(ln 3) = 0.75, g = 0.5, o = 0.75. With
        // c₀ = 0.4: c = 0.75·0.4 + 0.5·0.5 = 0.55, h = 0.75·tanh(0.55) = 0.375 390 158 392 676 4,
        // and the state carries [c | i | f | o] = [0.55, 0.5, 0.75, 0.75].
        let dev = Device::Cpu;
        let mut params = one_unit([0.0, 0.0, 0.5f64.atanh(), 0.0]);
        let l3 = 2.0 * 3f64.ln();
        let weight_gg =
            Tensor::new(&[[0.0f64, 0.0, 0.0], [0.0, l3, 0.0], [l3, 0.0, 0.0]], &dev).unwrap();
        params.insert("weight_gg_l0", Var::from_tensor(&weight_gg).unwrap());
        let options = LstmOptions {
            full_gate_recurrence: true,
            ..LstmOptions::default()
        };
        let lstm = Lstm::new(options, &params, 0, 1, 1).unwrap();
        let state = State {
            h: Tensor::new(&[[0.9f64]], &dev).unwrap(),
            c: Some(Tensor::new(&[[0.4f64, 0.5, 0.5, 0.5]], &dev).unwrap()),
        };
        let x = Tensor::new(&[[[1.0f64]]], &dev).unwrap();
        // The fused kernel (one step as a sequence) and the step form agree with the hand.
        let (_, fused) = lstm.sequence(&x, &state).unwrap();
        let stepped = lstm.step(&x.squeeze(1).unwrap(), &state).unwrap();
        for next in [fused, stepped] {
            let carried = next.c.unwrap().to_vec2::<f64>().unwrap()[0].clone();
            let want = [0.55, 0.5, 0.75, 0.75];
            for (got, want) in carried.iter().zip(want) {
                assert!((got - want).abs() < 1e-15, "carried {carried:?}");
            }
            let h = next.h.to_vec2::<f64>().unwrap()[0][0];
            assert!((h - 0.375_390_158_392_676_4).abs() < 1e-15, "h = {h}");
        }
    }
}
