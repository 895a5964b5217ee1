//! The vanilla (Elman) RNN.

use candle_core::{Result, Tensor};

use crate::Params;
use crate::cell::{
    Cell, GradFlow, LayerNames, Nonlinearity, State, affine, check_sequence, unroll,
};
use crate::fused::{self, FlowSink};

/// Vanilla RNN layer, `torch.nn.RNN`:
///
/// ```text
/// h_t = φ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh),   φ = tanh (default) or relu
/// ```
///
/// Parameters: `weight_ih_l{k}` `(H, I)`, `weight_hh_l{k}` `(H, H)`, `bias_ih_l{k}` `(H)`,
/// `bias_hh_l{k}` `(H)`.
#[derive(Debug, Clone)]
pub struct VanillaRnn {
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor,
    bias_hh: Tensor,
    nonlinearity: Nonlinearity,
}

impl VanillaRnn {
    /// Layer `layer` of a stack, from `params`.
    pub fn new(
        params: &Params,
        layer: usize,
        input_size: usize,
        hidden_size: usize,
        nonlinearity: Nonlinearity,
    ) -> Result<Self> {
        let names = LayerNames::new(layer);
        Ok(Self {
            weight_ih: params.tensor(&names.weight_ih, &[hidden_size, input_size])?,
            weight_hh: params.tensor(&names.weight_hh, &[hidden_size, hidden_size])?,
            bias_ih: params.tensor(&names.bias_ih, &[hidden_size])?,
            bias_hh: params.tensor(&names.bias_hh, &[hidden_size])?,
            nonlinearity,
        })
    }
}

impl Cell for VanillaRnn {
    fn input_size(&self) -> usize {
        self.weight_ih.dims()[1]
    }

    fn hidden_size(&self) -> usize {
        self.weight_hh.dims()[0]
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
        let (hs, last) = fused::rnn_sequence(xs, state, weights, self.nonlinearity, &sink)?;
        Ok((hs, last, GradFlow::recorded(sink)))
    }

    fn step(&self, x: &Tensor, state: &State) -> Result<State> {
        let pre = (affine(x, &self.weight_ih, &self.bias_ih)?
            + affine(&state.h, &self.weight_hh, &self.bias_hh)?)?;
        let h = match self.nonlinearity {
            Nonlinearity::Tanh => pre.tanh()?,
            Nonlinearity::Relu => pre.relu()?,
        };
        Ok(State { h, c: None })
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;

    fn one_unit(nonlinearity: Nonlinearity) -> VanillaRnn {
        let mut params = Params::new();
        let dev = Device::Cpu;
        let put =
            |p: &mut Params, name: &str, t: Tensor| p.insert(name, Var::from_tensor(&t).unwrap());
        put(
            &mut params,
            "weight_ih_l0",
            Tensor::new(&[[0.5f64]], &dev).unwrap(),
        );
        put(
            &mut params,
            "weight_hh_l0",
            Tensor::new(&[[-1.0f64]], &dev).unwrap(),
        );
        put(
            &mut params,
            "bias_ih_l0",
            Tensor::new(&[0.1f64], &dev).unwrap(),
        );
        put(
            &mut params,
            "bias_hh_l0",
            Tensor::new(&[0.2f64], &dev).unwrap(),
        );
        VanillaRnn::new(&params, 0, 1, 1, nonlinearity).unwrap()
    }

    #[test]
    fn one_step_by_hand() {
        // pre = 0.5·2 + 0.1 + (−1)·0.3 + 0.2 = 1.0
        let x = Tensor::new(&[[2.0f64]], &Device::Cpu).unwrap();
        let state = State {
            h: Tensor::new(&[[0.3f64]], &Device::Cpu).unwrap(),
            c: None,
        };
        let h = |cell: VanillaRnn| cell.step(&x, &state).unwrap().h.to_vec2::<f64>().unwrap()[0][0];
        assert!((h(one_unit(Nonlinearity::Tanh)) - 0.761_594_155_955_764_9).abs() < 1e-15); // tanh(1)
        assert!((h(one_unit(Nonlinearity::Relu)) - 1.0).abs() < 1e-15);
    }
}
