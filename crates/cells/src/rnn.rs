//! The vanilla (Elman) RNN.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use crate::cell::{FlowSink, GradFlow, State};
use crate::fused::{
    self, Dims, FlowNorms, GatedOffsets, Kernel, Real, chunk_rows, gated_weight_grads, wide,
};
use crate::layer::{CellConfig, CellKind, CellMath, Layer, affine};
use crate::packed::Panels;
use crate::spec::{CellOptions, CellSpec, LayerWeights, gated_layer};

/// Vanilla RNN layer, `torch.nn.RNN`:
///
/// ```text
/// h_t = φ(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh),   φ = tanh (default) or relu
/// ```
///
/// Parameters: `weight_ih_l{k}` `(H, I)`, `weight_hh_l{k}` `(H, H)`, `bias_ih_l{k}` `(H)`,
/// `bias_hh_l{k}` `(H)`.
pub type VanillaRnn = Layer<Nonlinearity>;

/// The activation of the vanilla RNN (PyTorch's `nonlinearity`): the RNN's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nonlinearity {
    /// `tanh`, the default.
    #[default]
    Tanh,
    /// `relu`, as in the IRNN of Le et al. 2015.
    Relu,
}

/// `model.cell: rnn`.
pub static RNN: CellKind = CellKind {
    name: "rnn",
    display: "tanh RNN",
    summary: "vanilla tanh RNN (Elman 1990; torch.nn.RNN)",
    configure: |options| {
        options.only_defaults("rnn")?;
        Ok(CellConfig::new(Nonlinearity::Tanh))
    },
    colors: &[("rnn", [0, 0, 0])],
    examples: || vec![CellConfig::new(Nonlinearity::Tanh)],
};

/// `model.cell: rnn_relu` (the IRNN of Le et al. 2015 with `init: identity`).
pub static RNN_RELU: CellKind = CellKind {
    name: "rnn_relu",
    display: "ReLU RNN",
    summary: "vanilla ReLU RNN (the IRNN of Le et al. 2015 with init: identity)",
    configure: |options: &CellOptions| {
        options.only_defaults("rnn_relu")?;
        Ok(CellConfig::new(Nonlinearity::Relu))
    },
    colors: &[("rnn_relu", [204, 121, 167])],
    examples: || vec![CellConfig::new(Nonlinearity::Relu)],
};

impl CellSpec for Nonlinearity {
    fn label(&self) -> String {
        match self {
            Self::Tanh => "rnn".into(),
            Self::Relu => "rnn_relu".into(),
        }
    }

    fn layer_params(&self, input: usize, hidden: usize) -> Vec<crate::ParamSpec> {
        gated_layer(1, input, hidden, None)
    }

    fn saved_floats_per_step(&self, hidden: usize) -> usize {
        hidden
    }

    fn has_cuda_kernel(&self) -> bool {
        true
    }
}

impl CellMath for Nonlinearity {
    fn step(&self, weights: &LayerWeights, x: &Tensor, state: &State) -> Result<State> {
        let [w_ih, w_hh, b_ih, b_hh] = weights.four()?;
        let pre = (affine(x, w_ih, b_ih)? + affine(&state.h, w_hh, b_hh)?)?;
        let h = match self {
            Self::Tanh => pre.tanh()?,
            Self::Relu => pre.relu()?,
        };
        Ok(State { h, c: None })
    }

    fn fused(
        &self,
        weights: &LayerWeights,
        xs: &Tensor,
        state: &State,
    ) -> Result<(Tensor, State, GradFlow)> {
        let (out, flow) = fused::apply(xs, &state.h, weights, |dims, flow| RnnOp {
            dims,
            nonlinearity: *self,
            flow,
        })?;
        let h = fused::step_of(&out, out.dim(1)? - 1)?;
        Ok((out, State { h, c: None }, flow))
    }
}

// The fused kernel: the whole sequence as one candle op (see `crate::fused`).

struct RnnOp {
    dims: Dims,
    nonlinearity: Nonlinearity,
    flow: FlowSink,
}

impl RnnOp {
    /// The time loop for the batch rows of one chunk (`out` holds their pre-activations).
    #[inline(always)]
    fn forward_chunk<T: Real>(&self, out: &mut [T], h0: &[T], recurrent: &Panels<T>) {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let nonlinearity = self.nonlinearity;
        let batch = h0.len() / hidden;
        let out_rs = seq_len * hidden;
        let mut h_prev = h0.to_vec();
        for t in 0..seq_len {
            recurrent.mul(
                (&mut out[t * hidden..], out_rs),
                (&h_prev, hidden, 1),
                batch,
                true,
            );
            for b in 0..batch {
                let h = &mut out[b * out_rs + t * hidden..b * out_rs + (t + 1) * hidden];
                match nonlinearity {
                    Nonlinearity::Tanh => h.iter_mut().for_each(|v| *v = v.tanh_()),
                    Nonlinearity::Relu => h.iter_mut().for_each(|v| *v = v.max_(T::ZERO)),
                }
                h_prev[b * hidden..(b + 1) * hidden].copy_from_slice(h);
            }
        }
    }

    /// The reverse time loop for the batch rows of one chunk: fills `[d_pre, d_h0]`.
    #[inline(always)]
    fn backward_chunk<T: Real>(
        &self,
        [d_pre, d_h0]: [&mut [T]; 2],
        [out, grad_out]: [&[T]; 2],
        recurrent: &Panels<T>,
    ) -> FlowNorms {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let nonlinearity = self.nonlinearity;
        let batch = d_h0.len() / hidden;
        let out_rs = seq_len * hidden;
        let mut d_h_rec = vec![T::ZERO; batch * hidden];
        let mut flow = FlowNorms::new(seq_len, &self.flow);
        for t in (0..seq_len).rev() {
            for b in 0..batch {
                let at = b * out_rs + t * hidden;
                let (h, g) = (&out[at..at + hidden], &grad_out[at..at + hidden]);
                let rec = &d_h_rec[b * hidden..(b + 1) * hidden];
                let d = &mut d_pre[at..at + hidden];
                // ∂L/∂h_t first, its squared norm summed apart (in order: a running f64
                // sum would keep the elementwise loops scalar), then through φ.
                d.iter_mut()
                    .zip(g.iter().zip(rec))
                    .for_each(|(d, (&g, &r))| *d = g + r);
                flow.add(t, d);
                d.iter_mut().zip(h).for_each(|(d, &h)| {
                    let slope = match nonlinearity {
                        Nonlinearity::Tanh => T::ONE - h * h,
                        Nonlinearity::Relu if h > T::ZERO => T::ONE,
                        Nonlinearity::Relu => T::ZERO,
                    };
                    *d *= slope;
                });
            }
            recurrent.mul(
                (&mut d_h_rec, hidden),
                (&d_pre[t * hidden..], out_rs, 1),
                batch,
                false,
            );
        }
        d_h0.copy_from_slice(&d_h_rec);
        flow
    }
}

impl Kernel for RnnOp {
    const NAME: &'static str = "fused-rnn";

    fn dims(&self) -> Dims {
        self.dims
    }

    fn forward<T: Real>(&self, x: &[T], h0: &[T], params: &[T]) -> Result<Vec<T>> {
        let Dims {
            batch,
            seq_len,
            input,
            hidden,
            ..
        } = self.dims;
        let offsets = GatedOffsets::new(&self.nonlinearity, input, hidden);
        // The pre-activations become the outputs in place: (B, T, H) is the same layout.
        let mut out =
            offsets.prologue(Self::NAME, (x, params), hidden, (batch * seq_len, input))?;
        let out_rs = seq_len * hidden;
        let rows = chunk_rows(batch);
        // out[:, t] += h_{t−1} · W_hhᵀ.
        let weight_hh = &params[offsets.weight_hh..offsets.bias_ih];
        let recurrent = Panels::pack(weight_hh, (1, hidden), hidden, (1, hidden), rows);
        out.par_chunks_mut(rows * out_rs)
            .zip(h0.par_chunks(rows * hidden))
            .for_each(|(out, h0)| wide(|| self.forward_chunk(out, h0, &recurrent)));
        Ok(out)
    }

    fn backward<T: Real>(
        &self,
        x: &[T],
        h0: &[T],
        params: &[T],
        out: &[T],
        grad_out: &[T],
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let Dims {
            batch,
            seq_len,
            input,
            hidden,
            ..
        } = self.dims;
        let offsets = GatedOffsets::new(&self.nonlinearity, input, hidden);
        let weight_hh = &params[offsets.weight_hh..offsets.bias_ih];
        let out_rs = seq_len * hidden;
        let rows = batch * seq_len;
        let mut d_pre = vec![T::ZERO; rows * hidden];
        let mut d_h0 = vec![T::ZERO; batch * hidden];
        let chunk = chunk_rows(batch);
        // ∂L/∂h_{t−1} = d_pre[:, t] · W_hh.
        let recurrent = Panels::pack(weight_hh, (hidden, 1), hidden, (1, hidden), chunk);
        let flows: Vec<FlowNorms> = d_pre
            .par_chunks_mut(chunk * out_rs)
            .zip(d_h0.par_chunks_mut(chunk * hidden))
            .zip(out.par_chunks(chunk * out_rs))
            .zip(grad_out.par_chunks(chunk * out_rs))
            .map(|(((d_pre, d_h0), out), grad_out)| {
                wide(|| self.backward_chunk([d_pre, d_h0], [out, grad_out], &recurrent))
            })
            .collect();
        FlowNorms::finish(&flows, self.dims, &self.flow);
        let (d_x, d_params) = gated_weight_grads(
            &offsets,
            &d_pre,
            x,
            params,
            (h0, hidden),
            (out, out_rs),
            self.dims,
        );
        Ok((d_x, d_h0, d_params))
    }

    #[cfg(feature = "cuda")]
    fn cuda_forward(
        &self,
        gpu: &crate::cuda::Gpu,
        x: &[f32],
        h0: &[f32],
        params: &[f32],
    ) -> Result<Vec<f32>> {
        let offsets = GatedOffsets::new(&self.nonlinearity, self.dims.input, self.dims.hidden);
        let relu = self.nonlinearity == Nonlinearity::Relu;
        crate::cuda::rnn_forward(gpu, self.dims, &offsets, relu, (x, h0, params))
    }

    #[cfg(feature = "cuda")]
    fn cuda_backward(
        &self,
        gpu: &crate::cuda::Gpu,
        x: &[f32],
        h0: &[f32],
        params: &[f32],
        out: &[f32],
        grad_out: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let offsets = GatedOffsets::new(&self.nonlinearity, self.dims.input, self.dims.hidden);
        let relu = self.nonlinearity == Nonlinearity::Relu;
        let grads = crate::cuda::rnn_backward(
            gpu,
            self.dims,
            &offsets,
            relu,
            (x, h0, params),
            (out, grad_out),
        )?;
        *self.flow.lock().expect("gradient-flow sink") = Some(grads.flow);
        Ok((grads.d_x, grads.d_state0, grads.d_params))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use super::*;
    use crate::Cell;
    use crate::Params;

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
        VanillaRnn::new(nonlinearity, &params, 0, 1, 1).unwrap()
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
