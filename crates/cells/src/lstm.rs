//! The LSTM, its Greff et al. 2017 ablations and the peephole LSTM.

use candle_core::{Result, Tensor};
use candle_nn::ops::sigmoid;

use crate::Params;
use crate::cell::{
    Cell, Gate, GradFlow, LayerNames, LstmOptions, State, affine, block, check_sequence,
    check_state, peephole_name, unroll,
};
use crate::fused::{self, FlowSink, LstmWeights};

/// LSTM layer, `torch.nn.LSTM` when [`LstmOptions::default`] (gate order i, f, g, o):
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
/// `o = 1`, coupled `i = 1 − f`.
///
/// Parameters: `weight_ih_l{k}` `(G·H, I)`, `weight_hh_l{k}` `(G·H, H)`, `bias_ih_l{k}`,
/// `bias_hh_l{k}` `(G·H)` with `G` the gates that have rows ([`LstmOptions::gate_rows`]),
/// and `peephole_{i,f,o}_l{k}` `(H)`.
#[derive(Debug, Clone)]
pub struct Lstm {
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    /// Peephole vectors indexed by [`Gate`] (`g` never has one); `None` where absent.
    peephole: [Option<Tensor>; 4],
    options: LstmOptions,
}

impl Lstm {
    /// Layer `layer` of a stack, from `params`.
    pub fn new(
        params: &Params,
        layer: usize,
        input_size: usize,
        hidden_size: usize,
        options: LstmOptions,
    ) -> Result<Self> {
        options.validate()?;
        let names = LayerNames::new(layer);
        let rows = options.gate_rows().len() * hidden_size;
        let mut peephole = [None, None, None, None];
        for gate in options.peephole_gates() {
            peephole[gate as usize] =
                Some(params.tensor(&peephole_name(gate, layer), &[hidden_size])?);
        }
        Ok(Self {
            weight_ih: params.tensor(&names.weight_ih, &[rows, input_size])?,
            weight_hh: params.tensor(&names.weight_hh, &[rows, hidden_size])?,
            bias_ih: params.tensor(&names.bias_ih, &[rows])?,
            bias_hh: params.tensor(&names.bias_hh, &[rows])?,
            peephole,
            options,
        })
    }

    /// The variant this layer computes.
    pub fn options(&self) -> LstmOptions {
        self.options
    }

    /// `σ(pre + p ⊙ c)` for a gate, with the peephole term only where there is one.
    fn gate(&self, gate: Gate, pre: Tensor, c: &Tensor) -> Result<Tensor> {
        let pre = match &self.peephole[gate as usize] {
            Some(p) => (pre + c.broadcast_mul(p)?)?,
            None => pre,
        };
        sigmoid(&pre)
    }
}

impl Cell for Lstm {
    fn input_size(&self) -> usize {
        self.weight_ih.dims()[1]
    }

    fn hidden_size(&self) -> usize {
        self.weight_hh.dims()[1]
    }

    fn has_cell_state(&self) -> bool {
        true
    }

    fn zero_state(&self, batch: usize) -> Result<State> {
        let zeros = Tensor::zeros(
            (batch, self.hidden_size()),
            self.weight_hh.dtype(),
            self.weight_hh.device(),
        )?;
        Ok(State {
            h: zeros.clone(),
            c: Some(zeros),
        })
    }

    fn sequence_traced(&self, xs: &Tensor, state: &State) -> Result<(Tensor, State, GradFlow)> {
        if !fused::supported(xs) {
            return unroll(self, xs, state);
        }
        check_sequence(self, xs, state)?;
        let weights = LstmWeights {
            weight_ih: &self.weight_ih,
            weight_hh: &self.weight_hh,
            bias_ih: &self.bias_ih,
            bias_hh: &self.bias_hh,
            peephole: &self.peephole,
        };
        let sink = FlowSink::default();
        let (hs, last) = fused::lstm_sequence(xs, state, &weights, self.options, &sink)?;
        Ok((hs, last, GradFlow::recorded(sink)))
    }

    fn step(&self, x: &Tensor, state: &State) -> Result<State> {
        check_state(self, state, x.dim(0)?)?;
        let hidden = self.hidden_size();
        let c_prev = state.c.as_ref().expect("checked: LSTM state has c");
        let gates = (affine(x, &self.weight_ih, &self.bias_ih)?
            + affine(&state.h, &self.weight_hh, &self.bias_hh)?)?;
        let mut pre: [Option<Tensor>; 4] = [None, None, None, None];
        for (index, gate) in self.options.gate_rows().into_iter().enumerate() {
            pre[gate as usize] = Some(block(&gates, index, hidden)?);
        }
        let [pre_i, pre_f, pre_g, pre_o] = pre;

        let f = pre_f
            .map(|pre| self.gate(Gate::Forget, pre, c_prev))
            .transpose()?;
        let i = match pre_i {
            Some(pre) => Some(self.gate(Gate::Input, pre, c_prev)?),
            None if self.options.coupled_input_forget => Some(
                f.as_ref()
                    .expect("validated: coupling needs f")
                    .affine(-1.0, 1.0)?,
            ),
            None => None,
        };
        let g = pre_g.expect("g always has rows").tanh()?;
        let kept = match &f {
            Some(f) => (f * c_prev)?,
            None => c_prev.clone(),
        };
        let written = match &i {
            Some(i) => (i * &g)?,
            None => g,
        };
        let c = (kept + written)?;
        let squashed = c.tanh()?;
        let h = match pre_o {
            Some(pre) => (self.gate(Gate::Output, pre, &c)? * squashed)?,
            None => squashed,
        };
        Ok(State { h, c: Some(c) })
    }
}

/// The peephole LSTM (Gers & Schmidhuber 2000): [`Lstm`] with
/// [`LstmOptions::peepholes`] on and every gate present.
#[derive(Debug, Clone)]
pub struct PeepholeLstm(Lstm);

impl PeepholeLstm {
    /// Layer `layer` of a stack, from `params` (which must hold `peephole_{i,f,o}_l{k}`).
    pub fn new(
        params: &Params,
        layer: usize,
        input_size: usize,
        hidden_size: usize,
    ) -> Result<Self> {
        Lstm::new(
            params,
            layer,
            input_size,
            hidden_size,
            LstmOptions::peephole(),
        )
        .map(Self)
    }
}

impl Cell for PeepholeLstm {
    fn input_size(&self) -> usize {
        self.0.input_size()
    }

    fn hidden_size(&self) -> usize {
        self.0.hidden_size()
    }

    fn has_cell_state(&self) -> bool {
        true
    }

    fn zero_state(&self, batch: usize) -> Result<State> {
        self.0.zero_state(batch)
    }

    fn step(&self, x: &Tensor, state: &State) -> Result<State> {
        self.0.step(x, state)
    }

    fn sequence_traced(&self, xs: &Tensor, state: &State) -> Result<(Tensor, State, GradFlow)> {
        self.0.sequence_traced(xs, state)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

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
        let lstm = Lstm::new(&params, 0, 1, 1, LstmOptions::default()).unwrap();
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
