//! The GRU, in both reset conventions.

use candle_core::{Result, Tensor};
use candle_nn::ops::sigmoid;

use crate::Params;
use crate::cell::{
    Cell, GradFlow, GruReset, LayerNames, State, affine, block, check_sequence, check_state, unroll,
};
use crate::fused::{self, FlowSink};

/// GRU layer, `torch.nn.GRU` with [`GruReset::After`] (gate order r, z, n):
///
/// ```text
/// r_t = σ(W_ir x_t + b_ir + W_hr h_{t−1} + b_hr)
/// z_t = σ(W_iz x_t + b_iz + W_hz h_{t−1} + b_hz)
/// n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t−1} + b_hn))      reset after
/// n_t = tanh(W_in x_t + b_in + W_hn (r_t ⊙ h_{t−1}) + b_hn)      reset before (Cho 2014)
/// h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t−1}
/// ```
///
/// The source article's candidate `(1 − r_t) ⊙ h_{t−1}` is the reset-before GRU with the
/// reset gate's parameters negated (`1 − σ(a) = σ(−a)`), not a different cell.
///
/// Parameters: `weight_ih_l{k}` `(3H, I)`, `weight_hh_l{k}` `(3H, H)`, `bias_ih_l{k}`,
/// `bias_hh_l{k}` `(3H)`.
#[derive(Debug, Clone)]
pub struct Gru {
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    reset: GruReset,
}

impl Gru {
    /// Layer `layer` of a stack, from `params`.
    pub fn new(
        params: &Params,
        layer: usize,
        input_size: usize,
        hidden_size: usize,
        reset: GruReset,
    ) -> Result<Self> {
        let names = LayerNames::new(layer);
        let rows = 3 * hidden_size;
        Ok(Self {
            weight_ih: params.tensor(&names.weight_ih, &[rows, input_size])?,
            weight_hh: params.tensor(&names.weight_hh, &[rows, hidden_size])?,
            bias_ih: params.tensor(&names.bias_ih, &[rows])?,
            bias_hh: params.tensor(&names.bias_hh, &[rows])?,
            reset,
        })
    }

    /// Where this layer applies its reset gate.
    pub fn reset(&self) -> GruReset {
        self.reset
    }
}

impl Cell for Gru {
    fn input_size(&self) -> usize {
        self.weight_ih.dims()[1]
    }

    fn hidden_size(&self) -> usize {
        self.weight_hh.dims()[1]
    }

    fn has_cell_state(&self) -> bool {
        false
    }

    fn zero_state(&self, batch: usize) -> Result<State> {
        let h = Tensor::zeros(
            (batch, self.hidden_size()),
            self.weight_hh.dtype(),
            self.weight_hh.device(),
        )?;
        Ok(State { h, c: None })
    }

    fn sequence_traced(&self, xs: &Tensor, state: &State) -> Result<(Tensor, State, GradFlow)> {
        if !fused::supported(xs) {
            return unroll(self, xs, state);
        }
        check_sequence(self, xs, state)?;
        let weights = [
            &self.weight_ih,
            &self.weight_hh,
            &self.bias_ih,
            &self.bias_hh,
        ];
        let sink = FlowSink::default();
        let (hs, last) = fused::gru_sequence(xs, state, weights, self.reset, &sink)?;
        Ok((hs, last, GradFlow::recorded(sink)))
    }

    fn step(&self, x: &Tensor, state: &State) -> Result<State> {
        check_state(self, state, x.dim(0)?)?;
        let hidden = self.hidden_size();
        let h = &state.h;
        let from_input = affine(x, &self.weight_ih, &self.bias_ih)?;
        let (pre_r, pre_z, recurrent_n) = match self.reset {
            GruReset::After => {
                let from_h = affine(h, &self.weight_hh, &self.bias_hh)?;
                let recurrent_n = block(&from_h, 2, hidden)?;
                (
                    block(&from_h, 0, hidden)?,
                    block(&from_h, 1, hidden)?,
                    Some(recurrent_n),
                )
            }
            GruReset::Before => {
                let w_rz = self.weight_hh.narrow(0, 0, 2 * hidden)?;
                let b_rz = self.bias_hh.narrow(0, 0, 2 * hidden)?;
                let from_h = affine(h, &w_rz, &b_rz)?;
                (block(&from_h, 0, hidden)?, block(&from_h, 1, hidden)?, None)
            }
        };
        let r = sigmoid(&(block(&from_input, 0, hidden)? + pre_r)?)?;
        let z = sigmoid(&(block(&from_input, 1, hidden)? + pre_z)?)?;
        let recurrent_n = match recurrent_n {
            Some(recurrent_n) => (r * recurrent_n)?,
            None => {
                let w_n = self.weight_hh.narrow(0, 2 * hidden, hidden)?;
                let b_n = self.bias_hh.narrow(0, 2 * hidden, hidden)?;
                affine(&(r * h)?, &w_n, &b_n)?
            }
        };
        let n = (block(&from_input, 2, hidden)? + recurrent_n)?.tanh()?;
        // (1 − z) ⊙ n + z ⊙ h, written as n + z ⊙ (h − n).
        let h = (&n + (z * (h - &n)?)?)?;
        Ok(State { h, c: None })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;

    fn step(reset: GruReset) -> f64 {
        // Zero weights but W_hn = 2, b_hn = 0.2; so r = z = σ(0) = 0.5 at h = 0.5.
        let dev = Device::Cpu;
        let mut params = Params::new();
        let w_ih = Tensor::zeros((3, 1), DType::F64, &dev).unwrap();
        let w_hh = Tensor::new(&[[0.0f64], [0.0], [2.0]], &dev).unwrap();
        let b_hh = Tensor::new(&[0.0f64, 0.0, 0.2], &dev).unwrap();
        params.insert("weight_ih_l0", Var::from_tensor(&w_ih).unwrap());
        params.insert("weight_hh_l0", Var::from_tensor(&w_hh).unwrap());
        params.insert(
            "bias_ih_l0",
            Var::from_tensor(&b_hh.zeros_like().unwrap()).unwrap(),
        );
        params.insert("bias_hh_l0", Var::from_tensor(&b_hh).unwrap());
        let gru = Gru::new(&params, 0, 1, 1, reset).unwrap();
        let state = State {
            h: Tensor::new(&[[0.5f64]], &dev).unwrap(),
            c: None,
        };
        let next = gru
            .step(&Tensor::new(&[[1.0f64]], &dev).unwrap(), &state)
            .unwrap();
        next.h.to_vec2::<f64>().unwrap()[0][0]
    }

    #[test]
    fn one_step_by_hand() {
        // after:  n = tanh(0.5·(2·0.5 + 0.2)) = tanh(0.6); h = 0.5·n + 0.5·0.5
        assert!((step(GruReset::After) - 0.518_524_783_499_017_7).abs() < 1e-15);
        // before: n = tanh(2·(0.5·0.5) + 0.2) = tanh(0.7); h = 0.5·n + 0.25
        assert!((step(GruReset::Before) - 0.552_183_888_558_581_8).abs() < 1e-15);
    }
}
