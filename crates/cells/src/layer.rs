//! [`Layer`], the one [`Cell`] implementation, generic over a cell file's math; the
//! [`CellConfig`] that holds any cell's options; and the [`CellKind`] registry entry.

use std::fmt;
use std::sync::Arc;

use candle_core::{D, Result, Tensor};

use crate::cell::{Cell, GradFlow, State, check_sequence};
use crate::spec::{CellOptions, CellSpec, LayerWeights, ParamSpec};
use crate::{Params, fused, unroll};

/// One configured cell: a kind and its options (for example the LSTM without an input
/// gate). What [`crate::ModelConfig`] holds for every layer.
///
/// Two configs are equal when their [`CellSpec::label`]s are: the label names every
/// option that changes the math.
#[derive(Clone)]
pub struct CellConfig(Arc<dyn BuildLayer>);

impl CellConfig {
    /// Wraps a cell file's options.
    pub fn new(spec: impl CellMath) -> Self {
        Self(Arc::new(spec))
    }

    /// The spec.
    pub fn spec(&self) -> &dyn CellSpec {
        self.0.as_spec()
    }

    /// One layer's parameters (see [`CellSpec::layer_params`]).
    pub fn layer_params(&self, input: usize, hidden: usize) -> Vec<ParamSpec> {
        self.0.as_spec().layer_params(input, hidden)
    }

    /// Builds layer `layer` from `params`, checking every shape.
    pub fn build(
        &self,
        params: &Params,
        layer: usize,
        input: usize,
        hidden: usize,
    ) -> Result<Box<dyn Cell>> {
        self.0.as_spec().validate()?;
        self.0.build(params, layer, input, hidden)
    }

    /// The series label in reports and figures (`lstm (no input gate)`).
    pub fn label(&self) -> String {
        self.0.as_spec().label()
    }
}

impl fmt::Debug for CellConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.0.as_spec(), f)
    }
}

impl PartialEq for CellConfig {
    fn eq(&self, other: &Self) -> bool {
        self.label() == other.label()
    }
}

/// What [`CellConfig`] needs of a cell's options: its spec, and layers built from it.
/// Every [`CellMath`] has it.
trait BuildLayer: Send + Sync {
    fn as_spec(&self) -> &dyn CellSpec;

    fn build(
        &self,
        params: &Params,
        layer: usize,
        input: usize,
        hidden: usize,
    ) -> Result<Box<dyn Cell>>;
}

impl<S: CellMath> BuildLayer for S {
    fn as_spec(&self) -> &dyn CellSpec {
        self
    }

    fn build(
        &self,
        params: &Params,
        layer: usize,
        input: usize,
        hidden: usize,
    ) -> Result<Box<dyn Cell>> {
        Ok(Box::new(Layer::new(
            self.clone(),
            params,
            layer,
            input,
            hidden,
        )?))
    }
}

/// A cell's registry entry: how configs name it, how figures colour it and which
/// configurations the test suites run. Each cell file defines its entries as `pub
/// static`s; [`crate::registry::CELLS`] lists them.
pub struct CellKind {
    /// The name in configs (`model.cell`).
    pub name: &'static str,
    /// The name in figures and reports (`LSTM`, `tanh RNN`).
    pub display: &'static str,
    /// One line for listings: what the cell is, with its citation.
    pub summary: &'static str,
    /// The cell this name means with `options`, or which option does not apply.
    pub configure: fn(&CellOptions) -> std::result::Result<CellConfig, String>,
    /// The labels this entry's configs produce, each with its colour in figures (sRGB),
    /// in the order figures and tables list them.
    pub colors: &'static [(&'static str, [u8; 3])],
    /// The configurations every cell test suite runs (every variant of the math).
    pub examples: fn() -> Vec<CellConfig>,
}

impl fmt::Debug for CellKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CellKind")
            .field("name", &self.name)
            .finish()
    }
}

/// The math a cell file supplies: one step on candle tensors (the reference) and the
/// whole sequence through its fused kernel.
pub trait CellMath: CellSpec + Clone + 'static {
    /// One time step: input `x` `(batch, input)` and the previous state give the next.
    fn step(&self, weights: &LayerWeights, x: &Tensor, state: &State) -> Result<State>;

    /// [`Self::step`] with `probe` applied to the value the gradient flow is measured on
    /// (see [`crate::Cell::step_probed`]).
    fn step_probed(
        &self,
        weights: &LayerWeights,
        x: &Tensor,
        state: &State,
        probe: &dyn Fn(Tensor) -> Result<Tensor>,
    ) -> Result<State> {
        let mut next = self.step(weights, x, state)?;
        next.h = probe(next.h)?;
        Ok(next)
    }

    /// The whole sequence `xs (B, T, I)`, `T ≥ 1`, on the CPU in f32 or f64, through the
    /// fused kernel (shapes already checked).
    fn fused(
        &self,
        weights: &LayerWeights,
        xs: &Tensor,
        state: &State,
    ) -> Result<(Tensor, State, GradFlow)>;
}

/// One layer of a cell: its options (`S`) and its parameters. `Lstm`, `Gru`,
/// `VanillaRnn` and the rest are this type with their cell file's `S`.
#[derive(Debug, Clone)]
pub struct Layer<S> {
    spec: S,
    weights: LayerWeights,
}

impl<S: CellMath> Layer<S> {
    /// Layer `layer` of a stack, from `params` (shapes checked against the spec).
    pub fn new(
        spec: S,
        params: &Params,
        layer: usize,
        input_size: usize,
        hidden_size: usize,
    ) -> Result<Self> {
        spec.validate()?;
        let weights = LayerWeights::load(&spec, params, layer, input_size, hidden_size)?;
        Ok(Self { spec, weights })
    }

    /// The options this layer computes with.
    pub fn spec(&self) -> &S {
        &self.spec
    }
}

impl<S: CellMath> Cell for Layer<S> {
    fn input_size(&self) -> usize {
        self.weights.input
    }

    fn hidden_size(&self) -> usize {
        self.weights.hidden
    }

    fn has_cell_state(&self) -> bool {
        self.cell_state_size() > 0
    }

    fn cell_state_size(&self) -> usize {
        self.spec.cell_state_size(self.weights.hidden)
    }

    fn flow_on_cell_state(&self) -> bool {
        self.spec.flow_on_cell_state()
    }

    fn zero_state(&self, batch: usize) -> Result<State> {
        let first = self.weights.get(0)?;
        let (dtype, device) = (first.dtype(), first.device());
        let h = Tensor::zeros((batch, self.weights.hidden), dtype, device)?;
        let c = match self.cell_state_size() {
            0 => None,
            width => Some(Tensor::zeros((batch, width), dtype, device)?),
        };
        Ok(State { h, c })
    }

    fn step(&self, x: &Tensor, state: &State) -> Result<State> {
        crate::cell::check_state(self, state, x.dim(0)?)?;
        self.spec.step(&self.weights, x, state)
    }

    fn step_probed(
        &self,
        x: &Tensor,
        state: &State,
        probe: &dyn Fn(Tensor) -> Result<Tensor>,
    ) -> Result<State> {
        crate::cell::check_state(self, state, x.dim(0)?)?;
        self.spec.step_probed(&self.weights, x, state, probe)
    }

    fn sequence_traced(&self, xs: &Tensor, state: &State) -> Result<(Tensor, State, GradFlow)> {
        if !fused::supported(xs) {
            return unroll(self, xs, state);
        }
        check_sequence(self, xs, state)?;
        self.spec.fused(&self.weights, xs, state)
    }
}

/// `x · wᵀ + b` for `x (B, in)`: the affine maps of the step-by-step cells.
pub(crate) fn affine(x: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    x.matmul(&weight.t()?)?.broadcast_add(bias)
}

/// The `index`-th of the equal `hidden`-wide column blocks of `(B, G·H)` gates.
pub(crate) fn block(gates: &Tensor, index: usize, hidden: usize) -> Result<Tensor> {
    gates.narrow(D::Minus1, index * hidden, hidden)
}
