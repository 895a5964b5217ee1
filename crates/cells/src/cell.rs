//! The [`Cell`] trait shared by every recurrent cell, and the cell configuration.

use candle_core::{CpuStorage, CustomOp1, D, DType, Layout, Result, Shape, Tensor, bail};

use crate::fused::FlowSink;
use crate::{Gru, Lstm, Params, VanillaRnn};

/// The recurrent state carried between time steps: hidden state `h` `(batch, hidden)`
/// and, for the LSTM family, the cell state `c` `(batch, hidden)`.
#[derive(Debug, Clone)]
pub struct State {
    /// Hidden state `h_t` (what the next layer and the head see).
    pub h: Tensor,
    /// Cell state `c_t`; `None` for cells without one (RNN, GRU).
    pub c: Option<Tensor>,
}

/// A recurrent cell: one layer of a recurrent network.
///
/// The sequence-level method is the one callers use, so that a fused whole-sequence
/// kernel can replace the step-by-step composition without changing them.
pub trait Cell: Send + Sync {
    /// Number of input features `I`.
    fn input_size(&self) -> usize;

    /// Number of hidden units `H`.
    fn hidden_size(&self) -> usize;

    /// Whether the state has a cell state `c` (the LSTM family).
    fn has_cell_state(&self) -> bool;

    /// The all-zero state for `batch` sequences (PyTorch's default `h0`, `c0`).
    fn zero_state(&self, batch: usize) -> Result<State>;

    /// One time step: input `x` `(batch, input)` and the previous state give the next.
    fn step(&self, x: &Tensor, state: &State) -> Result<State>;

    /// A whole sequence: input `(batch, seq, input)` and the initial state give the
    /// hidden states of every step `(batch, seq, hidden)` and the final state. A
    /// zero-length sequence gives a `(batch, 0, hidden)` output and the initial state.
    fn sequence(&self, xs: &Tensor, state: &State) -> Result<(Tensor, State)> {
        let (hs, last, _) = self.sequence_traced(xs, state)?;
        Ok((hs, last))
    }

    /// [`Cell::sequence`], and the layer's [`GradFlow`], filled in by the backward pass.
    ///
    /// The default runs [`unroll`]; the built-in cells override it with fused kernels.
    fn sequence_traced(&self, xs: &Tensor, state: &State) -> Result<(Tensor, State, GradFlow)> {
        unroll(self, xs, state)
    }
}

/// The gradient flow of one layer over one sequence,
/// `g_t = (1/B) Σ_b ‖∂L/∂h_{b,t}‖₂` for every step `t`: the total derivative of the loss
/// with respect to the layer's hidden state at step `t` — through the outputs of later
/// steps and the recurrence, as backpropagation through time computes it — as a
/// Euclidean norm over the hidden units, averaged over the batch. Plotted against `t`
/// it is the vanishing/exploding-gradient picture.
pub struct GradFlow(FlowSink);

impl GradFlow {
    /// `g_t` for every step, once `loss.backward()` has run; `None` before.
    pub fn norms(&self) -> Option<Vec<f64>> {
        self.0.lock().expect("gradient-flow sink").clone()
    }

    pub(crate) fn recorded(sink: FlowSink) -> Self {
        Self(sink)
    }
}

/// Identity on `h_t` whose backward records `g_t` (candle keeps no gradients of
/// intermediate tensors, so the unrolled graph measures its gradient flow this way).
struct FlowProbe {
    sink: FlowSink,
    step: usize,
    seq_len: usize,
}

impl CustomOp1 for FlowProbe {
    fn name(&self) -> &'static str {
        "gradient-flow-probe"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let copy = match storage {
            CpuStorage::F32(_) => {
                CpuStorage::F32(crate::fused::slice::<f32>(storage, layout)?.to_vec())
            }
            CpuStorage::F64(_) => {
                CpuStorage::F64(crate::fused::slice::<f64>(storage, layout)?.to_vec())
            }
            _ => bail!("the gradient-flow probe runs in f32 or f64"),
        };
        Ok((copy, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let per_row = grad_res.to_dtype(DType::F64)?.sqr()?.sum(1)?.sqrt()?;
        let norm = per_row.mean_all()?.to_scalar::<f64>()?;
        let mut sink = self.sink.lock().expect("gradient-flow sink");
        sink.get_or_insert_with(|| vec![0.0; self.seq_len])[self.step] = norm;
        Ok(Some(grad_res.clone()))
    }
}

/// The step-by-step composition of [`Cell::step`] over a sequence: the reference the
/// fused kernels are tested against, and the path for devices and dtypes they lack.
pub fn unroll<C: Cell + ?Sized>(
    cell: &C,
    xs: &Tensor,
    state: &State,
) -> Result<(Tensor, State, GradFlow)> {
    let (batch, seq_len) = check_sequence(cell, xs, state)?;
    let sink = FlowSink::default();
    if seq_len == 0 {
        let output = Tensor::zeros((batch, 0, cell.hidden_size()), xs.dtype(), xs.device())?;
        return Ok((output, state.clone(), GradFlow(sink)));
    }
    let mut state = state.clone();
    let mut hs = Vec::with_capacity(seq_len);
    for t in 0..seq_len {
        // Each per-step slice costs a zero-padded gradient of the whole input in the
        // backward (quadratic in T): fine for a reference, which is why it is not the
        // hot path.
        let x = xs.narrow(1, t, 1)?.squeeze(1)?;
        state = cell.step(&x, &state)?;
        if xs.device().is_cpu() {
            let probe = FlowProbe {
                sink: sink.clone(),
                step: t,
                seq_len,
            };
            state.h = state.h.contiguous()?.apply_op1(probe)?;
        }
        hs.push(state.h.clone());
    }
    Ok((Tensor::stack(&hs, 1)?, state, GradFlow(sink)))
}

/// Checks `xs (batch, seq, input)` and `state` against `cell`; returns `(batch, seq)`.
pub(crate) fn check_sequence<C: Cell + ?Sized>(
    cell: &C,
    xs: &Tensor,
    state: &State,
) -> Result<(usize, usize)> {
    let (batch, seq_len, input) = xs.dims3()?;
    if input != cell.input_size() {
        bail!(
            "input has {input} features, the cell expects {}",
            cell.input_size()
        );
    }
    check_state(cell, state, batch)?;
    Ok((batch, seq_len))
}

/// Checks that `state` fits `cell` and a batch of `batch` sequences.
pub(crate) fn check_state(cell: &(impl Cell + ?Sized), state: &State, batch: usize) -> Result<()> {
    let expected = [batch, cell.hidden_size()];
    if state.h.dims() != expected {
        bail!("h has shape {:?}, expected {expected:?}", state.h.dims());
    }
    match (&state.c, cell.has_cell_state()) {
        (Some(c), true) if c.dims() != expected => {
            bail!("c has shape {:?}, expected {expected:?}", c.dims())
        }
        (None, true) => bail!("this cell needs a cell state c"),
        (Some(_), false) => bail!("this cell has no cell state, but c was given"),
        _ => Ok(()),
    }
}

/// The activation of the vanilla RNN (PyTorch's `nonlinearity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nonlinearity {
    /// `tanh`, the default.
    #[default]
    Tanh,
    /// `relu`, as in the IRNN of Le et al. 2015.
    Relu,
}

/// Where the GRU applies its reset gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GruReset {
    /// `n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`: PyTorch, cuDNN, Keras 3 default.
    #[default]
    After,
    /// `n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)`: Cho et al. 2014, Keras
    /// `reset_after=False`.
    Before,
}

/// The LSTM variants of Greff et al. 2017 ("LSTM: A Search Space Odyssey").
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
}

impl Default for LstmOptions {
    fn default() -> Self {
        Self {
            input_gate: true,
            forget_gate: true,
            output_gate: true,
            coupled_input_forget: false,
            peepholes: false,
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

    /// Rejects contradictory combinations.
    pub fn validate(&self) -> Result<()> {
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

/// Which cell a layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CellConfig {
    /// [`VanillaRnn`].
    Rnn(Nonlinearity),
    /// [`Lstm`] (and its variants, the peephole LSTM among them).
    Lstm(LstmOptions),
    /// [`Gru`].
    Gru(GruReset),
}

impl CellConfig {
    /// Rows of `weight_ih` per hidden unit: 1 (RNN), 3 (GRU), up to 4 (LSTM).
    pub fn gate_count(&self) -> usize {
        match self {
            Self::Rnn(_) => 1,
            Self::Lstm(options) => options.gate_rows().len(),
            Self::Gru(_) => 3,
        }
    }

    /// Builds layer `layer` from `params`, checking every shape.
    pub fn build(
        &self,
        params: &Params,
        layer: usize,
        input_size: usize,
        hidden_size: usize,
    ) -> Result<Box<dyn Cell>> {
        Ok(match *self {
            Self::Rnn(nonlinearity) => Box::new(VanillaRnn::new(
                params,
                layer,
                input_size,
                hidden_size,
                nonlinearity,
            )?),
            Self::Lstm(options) => {
                Box::new(Lstm::new(params, layer, input_size, hidden_size, options)?)
            }
            Self::Gru(reset) => Box::new(Gru::new(params, layer, input_size, hidden_size, reset)?),
        })
    }
}

/// The PyTorch names of layer `layer`'s weights and biases.
pub(crate) struct LayerNames {
    pub weight_ih: String,
    pub weight_hh: String,
    pub bias_ih: String,
    pub bias_hh: String,
}

impl LayerNames {
    pub fn new(layer: usize) -> Self {
        Self {
            weight_ih: format!("weight_ih_l{layer}"),
            weight_hh: format!("weight_hh_l{layer}"),
            bias_ih: format!("bias_ih_l{layer}"),
            bias_hh: format!("bias_hh_l{layer}"),
        }
    }
}

/// The peephole vector's name for `gate` in layer `layer`.
pub fn peephole_name(gate: Gate, layer: usize) -> String {
    format!("peephole_{}_l{layer}", gate.letter())
}

/// `x W_ihᵀ + b_ih + h W_hhᵀ + b_hh`-style affine map: `x (B, in) · wᵀ + b`.
pub(crate) fn affine(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.matmul(&weight.t()?)?.broadcast_add(bias)
}

/// The `index`-th of `count` equal column blocks of `(B, count·H)` gates.
pub(crate) fn block(gates: &Tensor, index: usize, hidden: usize) -> Result<Tensor> {
    gates.narrow(D::Minus1, index * hidden, hidden)
}
