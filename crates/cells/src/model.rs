//! Stacks of recurrent layers, linear heads, and the model that joins them.

use candle_core::{Result, Tensor, bail};

use crate::Params;
use crate::cell::{Cell, GradFlow, State};
use crate::layer::CellConfig;

/// Name of the head's weight `(output, H_last)`.
pub const HEAD_WEIGHT: &str = "head.weight";
/// Name of the head's bias `(output)`.
pub const HEAD_BIAS: &str = "head.bias";

/// Where the linear head reads the last layer's hidden states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadKind {
    /// On the last time step only: `(batch, output)` (regression, sequence classification).
    #[default]
    LastStep,
    /// On every time step: `(batch, seq, output)` (the copy task).
    EveryStep,
}

/// The shape of a model: a stack of recurrent layers of one cell kind and a linear head.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// The cell of every layer.
    pub cell: CellConfig,
    /// Input features per time step.
    pub input_size: usize,
    /// Hidden units of each layer, bottom first (the article's Keras model: `[128, 64]`).
    pub hidden: Vec<usize>,
    /// Outputs of the head.
    pub output_size: usize,
    /// Where the head reads.
    pub head: HeadKind,
}

impl ModelConfig {
    /// The number of trainable scalars (what [`crate::Init::params`] draws), without
    /// drawing them.
    pub fn parameter_count(&self) -> usize {
        let mut input = self.input_size;
        let mut count = 0;
        for &hidden in &self.hidden {
            let specs = self.cell.layer_params(input, hidden);
            count += specs.iter().map(|spec| spec.len()).sum::<usize>();
            input = hidden;
        }
        count + self.output_size * (input + 1)
    }

    /// The full names (`weight_hh_l0`) of the parameters through which the state feeds
    /// back ([`crate::ParamRole::is_recurrent`]).
    pub fn recurrent_params(&self) -> Vec<String> {
        self.layer_params()
            .into_iter()
            .filter(|(_, spec)| spec.role.is_recurrent())
            .map(|(name, _)| name)
            .collect()
    }

    /// The parameters kept within a bound after every update
    /// ([`ParamRole::bound`](crate::ParamRole::bound)),
    /// by name, with their bound.
    pub fn bounded_params(&self) -> Vec<(String, f64)> {
        self.layer_params()
            .into_iter()
            .filter_map(|(name, spec)| Some((name, spec.role.bound()?)))
            .collect()
    }

    /// Every layer parameter's spec with its full name, bottom layer first.
    fn layer_params(&self) -> Vec<(String, crate::ParamSpec)> {
        let mut input = self.input_size;
        let mut params = Vec::new();
        for (layer, &hidden) in self.hidden.iter().enumerate() {
            for spec in self.cell.layer_params(input, hidden) {
                params.push((spec.name_in(layer), spec));
            }
            input = hidden;
        }
        params
    }

    /// Rejects empty stacks, zero sizes and contradictory cell options.
    pub fn validate(&self) -> Result<()> {
        if self.input_size == 0 || self.output_size == 0 {
            bail!("input and output sizes must be at least 1");
        }
        if self.hidden.is_empty() || self.hidden.contains(&0) {
            bail!("hidden must list at least one layer, each with at least 1 unit");
        }
        self.cell.spec().validate()
    }
}

/// Layers applied in turn, each reading the previous layer's hidden states.
pub struct Stack {
    layers: Vec<Box<dyn Cell>>,
}

impl Stack {
    /// Builds layers `0..hidden.len()` from `params` (names `*_l0`, `*_l1`, …).
    pub fn new(
        cell: &CellConfig,
        input_size: usize,
        hidden: &[usize],
        params: &Params,
    ) -> Result<Self> {
        let mut layers = Vec::with_capacity(hidden.len());
        let mut layer_input = input_size;
        for (layer, &hidden_size) in hidden.iter().enumerate() {
            layers.push(cell.build(params, layer, layer_input, hidden_size)?);
            layer_input = hidden_size;
        }
        Ok(Self { layers })
    }

    /// The layers, bottom first.
    pub fn layers(&self) -> &[Box<dyn Cell>] {
        &self.layers
    }

    /// The zero state of every layer.
    pub fn zero_state(&self, batch: usize) -> Result<Vec<State>> {
        self.layers
            .iter()
            .map(|layer| layer.zero_state(batch))
            .collect()
    }

    /// Runs the whole sequence `(batch, seq, input)` through every layer from `states`
    /// (one per layer); returns the top layer's hidden states `(batch, seq, H_last)` and
    /// every layer's final state.
    pub fn forward(&self, xs: &Tensor, states: &[State]) -> Result<(Tensor, Vec<State>)> {
        let (hs, finals, _) = self.forward_traced(xs, states)?;
        Ok((hs, finals))
    }

    /// [`Stack::forward`], and every layer's [`GradFlow`] (bottom first).
    pub fn forward_traced(
        &self,
        xs: &Tensor,
        states: &[State],
    ) -> Result<(Tensor, Vec<State>, Vec<GradFlow>)> {
        if states.len() != self.layers.len() {
            bail!(
                "{} initial states for {} layers",
                states.len(),
                self.layers.len()
            );
        }
        let mut hs = xs.clone();
        let mut finals = Vec::with_capacity(states.len());
        let mut flows = Vec::with_capacity(states.len());
        for (layer, state) in self.layers.iter().zip(states) {
            let (out, last, flow) = layer.sequence_traced(&hs, state)?;
            hs = out;
            finals.push(last);
            flows.push(flow);
        }
        Ok((hs, finals, flows))
    }
}

/// A linear map `y = W h + b` on the last step or on every step.
#[derive(Debug, Clone)]
pub struct Head {
    weight: Tensor,
    bias: Tensor,
    kind: HeadKind,
}

impl Head {
    /// The head reading `input_size` hidden units, from `head.weight` and `head.bias`.
    pub fn new(
        params: &Params,
        input_size: usize,
        output_size: usize,
        kind: HeadKind,
    ) -> Result<Self> {
        Ok(Self {
            weight: params.tensor(HEAD_WEIGHT, &[output_size, input_size])?,
            bias: params.tensor(HEAD_BIAS, &[output_size])?,
            kind,
        })
    }

    /// `W h + b` for `(batch, H)` hidden states.
    pub fn apply(&self, h: &Tensor) -> Result<Tensor> {
        h.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)
    }

    /// `(batch, seq, H)` hidden states to `(batch, output)` or `(batch, seq, output)`.
    pub fn forward(&self, hs: &Tensor) -> Result<Tensor> {
        let (batch, seq_len, hidden) = hs.dims3()?;
        match self.kind {
            HeadKind::LastStep => {
                if seq_len == 0 {
                    bail!("a last-step head needs a sequence of at least one step");
                }
                self.apply(&hs.narrow(1, seq_len - 1, 1)?.squeeze(1)?)
            }
            HeadKind::EveryStep => {
                let flat = hs.reshape((batch * seq_len, hidden))?;
                let out = flat.matmul(&self.weight.t()?)?.broadcast_add(&self.bias)?;
                out.reshape((batch, seq_len, self.weight.dim(0)?))
            }
        }
    }
}

/// A recurrent stack and its head.
pub struct Model {
    stack: Stack,
    head: Head,
}

impl Model {
    /// Builds `config` from `params` (see [`crate::Init::params`]).
    pub fn new(config: &ModelConfig, params: &Params) -> Result<Self> {
        config.validate()?;
        let stack = Stack::new(&config.cell, config.input_size, &config.hidden, params)?;
        let last = *config.hidden.last().expect("validated: at least one layer");
        let head = Head::new(params, last, config.output_size, config.head)?;
        Ok(Self { stack, head })
    }

    /// The recurrent layers.
    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    /// Runs `(batch, seq, input)` from the zero state; returns the head's output and the
    /// top layer's hidden states `(batch, seq, H_last)`.
    pub fn forward(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let (y, hs, _) = self.forward_traced(xs)?;
        Ok((y, hs))
    }

    /// [`Model::forward`], and every layer's [`GradFlow`] (bottom first).
    pub fn forward_traced(&self, xs: &Tensor) -> Result<(Tensor, Tensor, Vec<GradFlow>)> {
        let states = self.stack.zero_state(xs.dim(0)?)?;
        let (hs, finals, flows) = self.stack.forward_traced(xs, &states)?;
        let y = match (self.head.kind, finals.last()) {
            // The top layer's final h is the last step's output; reading it there rather
            // than slicing `hs` saves the backward one zero-padded copy of `hs`.
            (HeadKind::LastStep, Some(last)) if hs.dim(1)? > 0 => self.head.apply(&last.h)?,
            _ => self.head.forward(&hs)?,
        };
        Ok((y, hs, flows))
    }
}
