//! minGRU (Feng et al. 2024, "Were RNNs All We Needed?"), in its sequential form.

use candle_core::{Result, Tensor, bail};
use candle_nn::ops::sigmoid;
use rayon::prelude::*;

use crate::cell::{FlowSink, GradFlow, State};
use crate::fused::{
    self, Dims, FlowNorms, Kernel, Real, Saved, add_column_sums, chunk_rows, input_grads,
    input_projection, squared_sum, wide,
};
use crate::layer::{CellConfig, CellKind, CellMath, Layer, affine, block};
use crate::spec::{CellSpec, LayerWeights, ParamRole, ParamSpec, param_ranges};

/// minGRU layer (Feng et al. 2024): the GRU with gates that read only the input, so that
/// training could run as a parallel scan,
///
/// ```text
/// z_t = σ(W_z x_t + b_z)
/// h̃_t = W_h x_t + b_h
/// h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t
/// ```
///
/// This is the sequential form (Feng et al.'s Algorithm 1); `∂h_t/∂h_{t−1}` is the
/// diagonal `1 − z_t`, so the gradient reaching early steps is a product of forget
/// factors the input alone sets. Parameters: `weight_ih_l{k}` `(2H, I)` (rows z, then
/// h̃) and `bias_ih_l{k}` `(2H)`; no recurrent weights.
pub type MinGru = Layer<MinGruSpec>;

/// minGRU's options (none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinGruSpec;

/// `model.cell: mingru`.
pub static MINGRU: CellKind = CellKind {
    name: "mingru",
    display: "minGRU",
    summary: "minGRU (Feng et al. 2024): h = (1 − z) ⊙ h + z ⊙ (W_h x + b_h), z = σ(W_z x + b_z)",
    configure: |options| {
        options.only_defaults("mingru")?;
        Ok(CellConfig::new(MinGruSpec))
    },
    colors: &[("mingru", [0, 128, 128])],
    examples: || vec![CellConfig::new(MinGruSpec)],
};

impl CellSpec for MinGruSpec {
    fn label(&self) -> String {
        "mingru".into()
    }

    fn layer_params(&self, input: usize, hidden: usize) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new("weight_ih", &[2 * hidden, input], ParamRole::InputWeight),
            ParamSpec::new(
                "bias_ih",
                &[2 * hidden],
                ParamRole::Bias { forget_block: None },
            ),
        ]
    }

    fn saved_floats_per_step(&self, hidden: usize) -> usize {
        // z and h̃, and the output.
        3 * hidden
    }
}

impl CellMath for MinGruSpec {
    fn step(&self, weights: &LayerWeights, x: &Tensor, state: &State) -> Result<State> {
        let hidden = weights.hidden;
        let pre = affine(x, weights.get(0)?, weights.get(1)?)?;
        let z = sigmoid(&block(&pre, 0, hidden)?)?;
        let candidate = block(&pre, 1, hidden)?;
        // (1 − z) ⊙ h + z ⊙ h̃, written as h + z ⊙ (h̃ − h) as the kernel does.
        let h = (&state.h + (z * (candidate - &state.h)?)?)?;
        Ok(State { h, c: None })
    }

    fn fused(
        &self,
        weights: &LayerWeights,
        xs: &Tensor,
        state: &State,
    ) -> Result<(Tensor, State, GradFlow)> {
        let (out, flow) = fused::apply(xs, &state.h, weights, |dims, flow| MinGruOp {
            dims,
            saved: Saved::default(),
            flow,
        })?;
        let h = fused::step_of(&out, out.dim(1)? - 1)?;
        Ok((out, State { h, c: None }, flow))
    }
}

/// The fused minGRU: one GEMM for the gates and candidates of every step, then a
/// pointwise recurrence (no recurrent GEMM).
struct MinGruOp {
    dims: Dims,
    /// The gates `[z, h̃]` of every step `(B, T, 2H)`, z activated.
    saved: Saved,
    flow: FlowSink,
}

impl MinGruOp {
    /// The time loop for one chunk: `gates` holds its rows' pre-activations.
    #[inline(always)]
    fn forward_chunk<T: Real>(&self, gates: &mut [T], out: &mut [T], h0: &[T]) {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let (g_rs, out_rs) = (seq_len * 2 * hidden, seq_len * hidden);
        for (b, h0) in h0.chunks_exact(hidden).enumerate() {
            let (gates, out) = (
                &mut gates[b * g_rs..(b + 1) * g_rs],
                &mut out[b * out_rs..(b + 1) * out_rs],
            );
            for t in 0..seq_len {
                let (z, candidate) =
                    gates[t * 2 * hidden..(t + 1) * 2 * hidden].split_at_mut(hidden);
                let (past, now) = out.split_at_mut(t * hidden);
                let h_prev = if t == 0 {
                    h0
                } else {
                    &past[(t - 1) * hidden..]
                };
                for j in 0..hidden {
                    z[j] = z[j].sigmoid_();
                    now[j] = h_prev[j] + z[j] * (candidate[j] - h_prev[j]);
                }
            }
        }
    }

    /// The reverse time loop for one chunk: turns its gates into the gradients of their
    /// pre-activations, fills `d_h0`, and returns its gradient flow.
    #[inline(always)]
    fn backward_chunk<T: Real>(
        &self,
        [gates, d_h0]: [&mut [T]; 2],
        [out, grad_out, h0]: [&[T]; 3],
    ) -> FlowNorms {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let (g_rs, out_rs) = (seq_len * 2 * hidden, seq_len * hidden);
        let mut flow = FlowNorms::new(seq_len);
        let mut d_h = vec![T::ZERO; hidden];
        for (b, h0) in h0.chunks_exact(hidden).enumerate() {
            let gates = &mut gates[b * g_rs..(b + 1) * g_rs];
            let (out, grad_out) = (&out[b * out_rs..], &grad_out[b * out_rs..]);
            // ∂L/∂h_t through the recurrence from step t + 1; zero after the last step.
            let mut d_rec = vec![T::ZERO; hidden];
            for t in (0..seq_len).rev() {
                let at = t * hidden;
                let h_prev = if t == 0 { h0 } else { &out[at - hidden..at] };
                let (z, candidate) =
                    gates[t * 2 * hidden..(t + 1) * 2 * hidden].split_at_mut(hidden);
                for j in 0..hidden {
                    d_h[j] = grad_out[at + j] + d_rec[j];
                    let zj = z[j];
                    let d_z = d_h[j] * (candidate[j] - h_prev[j]);
                    d_rec[j] = d_h[j] * (T::ONE - zj);
                    candidate[j] = d_h[j] * zj;
                    z[j] = d_z * zj * (T::ONE - zj);
                }
                flow.add(t, squared_sum(&d_h));
            }
            d_h0[b * hidden..(b + 1) * hidden].copy_from_slice(&d_rec);
        }
        flow
    }
}

impl Kernel for MinGruOp {
    const NAME: &'static str = "fused-mingru";

    fn dims(&self) -> Dims {
        self.dims
    }

    fn forward<T: Real>(&self, x: &[T], h0: &[T], params: &[T]) -> Result<Vec<T>> {
        let Dims {
            batch,
            seq_len,
            input,
            hidden,
        } = self.dims;
        let (ranges, total) = param_ranges(&MinGruSpec.layer_params(input, hidden));
        if params.len() != total || x.len() != batch * seq_len * input {
            bail!("fused minGRU: inputs do not match the layer's sizes");
        }
        let (w_ih, bias) = (&params[ranges[0].clone()], &params[ranges[1].clone()]);
        let mut gates = input_projection(x, w_ih, bias, batch * seq_len, input);
        let mut out = vec![T::ZERO; batch * seq_len * hidden];
        let rows = chunk_rows(batch);
        gates
            .par_chunks_mut(rows * seq_len * 2 * hidden)
            .zip(out.par_chunks_mut(rows * seq_len * hidden))
            .zip(h0.par_chunks(rows * hidden))
            .for_each(|((gates, out), h0)| wide(|| self.forward_chunk(gates, out, h0)));
        *self.saved.lock().expect("saved activations") = Some(Box::new(gates));
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
        } = self.dims;
        let (ranges, total) = param_ranges(&MinGruSpec.layer_params(input, hidden));
        // The gates are taken, not borrowed: their gradients overwrite them.
        let saved = self.saved.lock().expect("saved activations").take();
        let Some(Ok(mut d_gates)) = saved.map(|s| s.downcast::<Vec<T>>()) else {
            bail!("fused minGRU backward without its forward's activations");
        };
        let mut d_h0 = vec![T::ZERO; batch * hidden];
        let chunk = chunk_rows(batch);
        let out_rs = seq_len * hidden;
        let flows: Vec<FlowNorms> = d_gates
            .par_chunks_mut(chunk * seq_len * 2 * hidden)
            .zip(d_h0.par_chunks_mut(chunk * hidden))
            .zip(out.par_chunks(chunk * out_rs))
            .zip(grad_out.par_chunks(chunk * out_rs))
            .zip(h0.par_chunks(chunk * hidden))
            .map(|((((gates, d_h0), out), grad_out), h0)| {
                wide(|| self.backward_chunk([gates, d_h0], [out, grad_out, h0]))
            })
            .collect();
        FlowNorms::finish(&flows, self.dims, &self.flow);
        let mut d_params = vec![T::ZERO; total];
        let rows = batch * seq_len;
        let d_x = input_grads(
            &d_gates,
            x,
            &params[ranges[0].clone()],
            &mut d_params[ranges[0].clone()],
            (rows, 2 * hidden, input),
        );
        add_column_sums(&mut d_params[ranges[1].clone()], &d_gates, 2 * hidden);
        Ok((d_x, d_h0, d_params))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::{Cell, Params};

    #[test]
    fn one_step_by_hand() {
        // W_z = 0, b_z = 0 give z = 0.5; W_h = 2, b_h = 0.1 give h̃ = 2.1 at x = 1; from
        // h = 0.3: h = 0.3 + 0.5·(2.1 − 0.3) = 1.2. Two layers of parameters: 2 + 2 = 4.
        let dev = Device::Cpu;
        let mut params = Params::new();
        let weight = Tensor::new(&[[0.0f64], [2.0]], &dev).unwrap();
        let bias = Tensor::new(&[0.0f64, 0.1], &dev).unwrap();
        params.insert("weight_ih_l0", Var::from_tensor(&weight).unwrap());
        params.insert("bias_ih_l0", Var::from_tensor(&bias).unwrap());
        let cell = MinGru::new(MinGruSpec, &params, 0, 1, 1).unwrap();
        let state = State {
            h: Tensor::new(&[[0.3f64]], &dev).unwrap(),
            c: None,
        };
        let xs = Tensor::new(&[[[1.0f64]]], &dev).unwrap();
        let (hs, _) = cell.sequence(&xs, &state).unwrap();
        let h: Vec<f64> = hs.flatten_all().unwrap().to_vec1().unwrap();
        assert!((h[0] - 1.2).abs() < 1e-12, "{h:?}");
        let stepped = cell.step(&xs.squeeze(1).unwrap(), &state).unwrap();
        let h: Vec<f64> = stepped.h.flatten_all().unwrap().to_vec1().unwrap();
        assert!((h[0] - 1.2).abs() < 1e-12, "{h:?}");
    }
}
