//! The [`Cell`] trait shared by every recurrent cell, its state and its gradient flow.

use std::sync::{Arc, Mutex};

use candle_core::{Result, Tensor, bail};

/// The recurrent state carried between time steps: hidden state `h` `(batch, hidden)`
/// and, for the LSTM family, the cell state `c` `(batch, hidden)` (wider for a cell that
/// also carries earlier values, see [`Cell::cell_state_size`]).
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

    /// Width of `c`: 0 without a cell state, else the hidden size, or more for a cell
    /// that carries other values with it (the LSTM with full gate recurrence carries its
    /// last gates: `[c | i | f | o]`).
    fn cell_state_size(&self) -> usize {
        if self.has_cell_state() {
            self.hidden_size()
        } else {
            0
        }
    }

    /// Whether the gradient flow is measured on `c` rather than on `h`: true for a cell
    /// whose recurrence runs through `c` alone (the LRU's complex state), `h` being a
    /// per-step readout of it.
    fn flow_on_cell_state(&self) -> bool {
        false
    }

    /// The all-zero state for `batch` sequences (PyTorch's default `h0`, `c0`).
    fn zero_state(&self, batch: usize) -> Result<State>;

    /// One time step: input `x` `(batch, input)` and the previous state give the next.
    fn step(&self, x: &Tensor, state: &State) -> Result<State>;

    /// [`Cell::step`] with `probe` applied to the value whose gradient is the gradient
    /// flow (`h_t`, or `c_t` where [`Cell::flow_on_cell_state`]) before anything reads
    /// it, so that its gradient is the total derivative: how [`crate::unroll`] measures
    /// the flow of the unrolled graph.
    fn step_probed(
        &self,
        x: &Tensor,
        state: &State,
        probe: &dyn Fn(Tensor) -> Result<Tensor>,
    ) -> Result<State> {
        let mut next = self.step(x, state)?;
        next.h = probe(next.h)?;
        Ok(next)
    }

    /// A whole sequence: input `(batch, seq, input)` and the initial state give the
    /// hidden states of every step `(batch, seq, hidden)` and the final state. A
    /// zero-length sequence gives a `(batch, 0, hidden)` output and the initial state.
    fn sequence(&self, xs: &Tensor, state: &State) -> Result<(Tensor, State)> {
        let (hs, last, _) = self.sequence_traced(xs, state)?;
        Ok((hs, last))
    }

    /// [`Cell::sequence`], and the layer's [`GradFlow`], filled in by the backward pass.
    ///
    /// A cell without a fused kernel returns [`crate::unroll`]`(self, xs, state)`.
    fn sequence_traced(&self, xs: &Tensor, state: &State) -> Result<(Tensor, State, GradFlow)>;
}

/// Where a backward pass leaves `‖∂L/∂h_t‖` per step (see [`GradFlow`]).
pub(crate) type FlowSink = Arc<Mutex<Option<Vec<f64>>>>;

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

    /// The flow a kernel or probe records into `sink`.
    pub(crate) fn recorded(sink: FlowSink) -> Self {
        Self(sink)
    }
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
    let expected_c = [batch, cell.cell_state_size()];
    match (&state.c, cell.has_cell_state()) {
        (Some(c), true) if c.dims() != expected_c => {
            bail!("c has shape {:?}, expected {expected_c:?}", c.dims())
        }
        (None, true) => bail!("this cell needs a cell state c"),
        (Some(_), false) => bail!("this cell has no cell state, but c was given"),
        _ => Ok(()),
    }
}
