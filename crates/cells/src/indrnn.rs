//! The independently recurrent network (IndRNN), Li et al. 2018.

use candle_core::{Result, Tensor, bail};
use rayon::prelude::*;

use crate::cell::{FlowSink, GradFlow, State};
use crate::fused::{
    self, Dims, FlowNorms, Kernel, Real, chunk_rows, finish_chunks, input_grads, input_projection,
    two_mut, wide,
};
use crate::layer::{CellConfig, CellKind, CellMath, Layer, affine};
use crate::spec::{CellSpec, LayerWeights, ParamRole, ParamSpec, layer_ranges};

/// IndRNN layer (Li et al. 2018, "Independently Recurrent Neural Network (IndRNN):
/// Building A Longer and Deeper RNN"): each unit sees only its own past,
///
/// ```text
/// h_t = relu(W_ih x_t + b_ih + u ⊙ h_{t−1})
/// ```
///
/// so `∂h_t/∂h_{t−1}` is the diagonal `u ⊙ relu'(·)` and a unit's gradient over `T`
/// steps is the product of its own `u`s: Li et al. keep `|u| ≤ 2^{1/T}` for long
/// memory. Parameters: `weight_ih_l{k}` `(H, I)`, `weight_hh_l{k}` `(H)` (the diagonal
/// `u`), `bias_ih_l{k}` `(H)`. By default they are drawn as the run's `model.init`
/// scheme draws any cell's (PyTorch's: every one from U(±1/√H), so `|u|` starts below
/// 1/√H); with [`IndRnnSpec::li2018`], as Li et al.'s adding-task code draws them.
pub type IndRnn = Layer<IndRnnSpec>;

/// The IndRNN's options (ReLU, as in Li et al.'s experiments).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndRnnSpec {
    /// `Some(T)`: Li et al. 2018's recipe for sequences of `T` steps
    /// (`model.indrnn_init: li2018`): `u` from U(0, 2^{1/T}) in the first layer and from
    /// U(2^{−1/T}, 2^{1/T}) above, kept within ±2^{1/T} after every update
    /// ([`ParamRole::BoundedDiagonal`]), input weights from N(0, 0.001²), biases 0.
    pub li2018: Option<usize>,
}

/// `model.cell: indrnn`.
pub static INDRNN: CellKind = CellKind {
    name: "indrnn",
    display: "IndRNN",
    summary: "IndRNN (Li et al. 2018): h = relu(W x + b + u ⊙ h), a diagonal recurrence",
    configure: |options| {
        let li2018 = options.indrnn_li2018;
        let others = crate::CellOptions {
            indrnn_li2018: None,
            ..*options
        };
        others.only_defaults("indrnn")?;
        Ok(CellConfig::new(IndRnnSpec { li2018 }))
    },
    colors: &[
        ("indrnn", [120, 94, 240]),
        ("indrnn (li2018 init)", [60, 40, 150]),
    ],
    examples: || {
        vec![
            CellConfig::new(IndRnnSpec::default()),
            CellConfig::new(IndRnnSpec { li2018: Some(10) }),
        ]
    },
};

impl CellSpec for IndRnnSpec {
    fn label(&self) -> String {
        match self.li2018 {
            None => "indrnn".into(),
            Some(_) => "indrnn (li2018 init)".into(),
        }
    }

    fn layer_params(&self, input: usize, hidden: usize) -> Vec<ParamSpec> {
        let (input_role, recurrent_role, bias_role) = match self.li2018 {
            None => (
                ParamRole::InputWeight,
                ParamRole::RecurrentDiagonal,
                ParamRole::Bias { forget_block: None },
            ),
            Some(seq_len) => (
                ParamRole::SmallInputWeight,
                ParamRole::BoundedDiagonal { seq_len },
                ParamRole::ZeroBias,
            ),
        };
        vec![
            ParamSpec::new("weight_ih", &[hidden, input], input_role),
            ParamSpec::new("weight_hh", &[hidden], recurrent_role),
            ParamSpec::new("bias_ih", &[hidden], bias_role),
        ]
    }

    fn saved_floats_per_step(&self, hidden: usize) -> usize {
        hidden
    }

    fn has_cuda_kernel(&self) -> bool {
        true
    }
}

impl CellMath for IndRnnSpec {
    fn step(&self, weights: &LayerWeights, x: &Tensor, state: &State) -> Result<State> {
        let (weight_ih, u, bias) = (weights.get(0)?, weights.get(1)?, weights.get(2)?);
        let h = (affine(x, weight_ih, bias)? + state.h.broadcast_mul(u)?)?.relu()?;
        Ok(State { h, c: None })
    }

    fn fused(
        &self,
        weights: &LayerWeights,
        xs: &Tensor,
        state: &State,
    ) -> Result<(Tensor, State, GradFlow)> {
        let (out, flow) =
            fused::apply(xs, &state.h, weights, |dims, flow| IndRnnOp { dims, flow })?;
        let h = fused::step_of(&out, out.dim(1)? - 1)?;
        Ok((out, State { h, c: None }, flow))
    }
}

/// The fused IndRNN: the input projection of every step is one GEMM; the recurrence is
/// pointwise (no recurrent GEMM), so each batch chunk's time loop is one pass per step.
struct IndRnnOp {
    dims: Dims,
    flow: FlowSink,
}

impl IndRnnOp {
    /// `[weight_ih, u, bias]` ranges in the flat parameters, and their total length.
    fn ranges(&self) -> ([std::ops::Range<usize>; 3], usize) {
        layer_ranges(&IndRnnSpec::default(), self.dims.input, self.dims.hidden)
    }

    /// The time loop for one chunk: `out` holds the pre-activations of its rows.
    #[inline(always)]
    fn forward_chunk<T: Real>(&self, out: &mut [T], h0: &[T], u: &[T]) {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let out_rs = seq_len * hidden;
        for (row, h0) in out.chunks_exact_mut(out_rs).zip(h0.chunks_exact(hidden)) {
            let (first, _) = row.split_at_mut(hidden);
            for j in 0..hidden {
                first[j] = (first[j] + u[j] * h0[j]).max_(T::ZERO);
            }
            for t in 1..seq_len {
                let (past, now) = row.split_at_mut(t * hidden);
                let prev = &past[(t - 1) * hidden..];
                for j in 0..hidden {
                    now[j] = (now[j] + u[j] * prev[j]).max_(T::ZERO);
                }
            }
        }
    }

    /// The reverse time loop for one chunk: fills `d_pre` and `d_h0`, returns `∂L/∂u`
    /// over the chunk and its gradient flow.
    #[inline(always)]
    fn backward_chunk<T: Real>(
        &self,
        [d_pre, d_h0]: [&mut [T]; 2],
        [out, grad_out, h0]: [&[T]; 3],
        u: &[T],
    ) -> (Vec<T>, FlowNorms) {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let out_rs = seq_len * hidden;
        let batch = h0.len() / hidden;
        let mut d_u = vec![T::ZERO; hidden];
        let mut flow = FlowNorms::new(seq_len, &self.flow);
        let mut d_h = vec![T::ZERO; hidden];
        for b in 0..batch {
            let (out, grad_out) = (&out[b * out_rs..], &grad_out[b * out_rs..]);
            let d_pre = &mut d_pre[b * out_rs..(b + 1) * out_rs];
            // ∂L/∂h_t through the recurrence from step t + 1; zero after the last step.
            let mut d_rec = vec![T::ZERO; hidden];
            for t in (0..seq_len).rev() {
                let at = t * hidden;
                let h_prev = if t == 0 {
                    &h0[b * hidden..(b + 1) * hidden]
                } else {
                    &out[at - hidden..at]
                };
                for j in 0..hidden {
                    d_h[j] = grad_out[at + j] + d_rec[j];
                    let d = if out[at + j] > T::ZERO {
                        d_h[j]
                    } else {
                        T::ZERO
                    };
                    d_pre[at + j] = d;
                    d_u[j] += d * h_prev[j];
                    d_rec[j] = d * u[j];
                }
                flow.add(t, &d_h);
            }
            d_h0[b * hidden..(b + 1) * hidden].copy_from_slice(&d_rec);
        }
        (d_u, flow)
    }
}

impl Kernel for IndRnnOp {
    const NAME: &'static str = "fused-indrnn";

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
        let ([w_ih, u, bias], total) = self.ranges();
        if params.len() != total || x.len() != batch * seq_len * input {
            bail!("fused IndRNN: inputs do not match the layer's sizes");
        }
        // The pre-activations become the outputs in place: (B, T, H) is the same layout.
        let mut out = input_projection(x, &params[w_ih], &params[bias], batch * seq_len, input);
        let rows = chunk_rows(batch);
        let u = &params[u];
        out.par_chunks_mut(rows * seq_len * hidden)
            .zip(h0.par_chunks(rows * hidden))
            .for_each(|(out, h0)| wide(|| self.forward_chunk(out, h0, u)));
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
        let ([w_ih, u, bias], total) = self.ranges();
        let out_rs = seq_len * hidden;
        let rows = batch * seq_len;
        let mut d_pre = vec![T::ZERO; rows * hidden];
        let mut d_h0 = vec![T::ZERO; batch * hidden];
        let chunk = chunk_rows(batch);
        let parts: Vec<(Vec<T>, FlowNorms)> = d_pre
            .par_chunks_mut(chunk * out_rs)
            .zip(d_h0.par_chunks_mut(chunk * hidden))
            .zip(out.par_chunks(chunk * out_rs))
            .zip(grad_out.par_chunks(chunk * out_rs))
            .zip(h0.par_chunks(chunk * hidden))
            .map(|((((d_pre, d_h0), out), grad_out), h0)| {
                wide(|| self.backward_chunk([d_pre, d_h0], [out, grad_out, h0], &params[u.clone()]))
            })
            .collect();
        let mut d_params = vec![T::ZERO; total];
        finish_chunks(&parts, &mut d_params[u], self.dims, &self.flow);
        let weight_ih = &params[w_ih.clone()];
        let (d_weight_ih, d_bias) = two_mut(&mut d_params, w_ih, bias);
        let d_x = input_grads(
            &d_pre,
            x,
            weight_ih,
            (d_weight_ih, Some(d_bias)),
            (rows, hidden, input),
            self.dims.input_grad,
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
        let (ranges, total) = self.ranges();
        if params.len() != total {
            bail!("fused IndRNN: inputs do not match the layer's sizes");
        }
        crate::cuda::indrnn_forward(gpu, self.dims, &ranges, (x, h0, params))
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
        let (ranges, _) = self.ranges();
        let grads = crate::cuda::indrnn_backward(
            gpu,
            self.dims,
            &ranges,
            (x, h0, params),
            (out, grad_out),
        )?;
        *self.flow.lock().expect("gradient-flow sink") = Some(grads.flow);
        Ok((grads.d_x, grads.d_state0, grads.d_params))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;
    use crate::{Cell, HeadKind, Init, ModelConfig, Params};

    #[test]
    fn li2018_recipe_draws_as_their_code_and_bounds_u() {
        // T = 100: the bound is 2^{1/100} = e^{0.00693147…} = 1.00695555005671881.
        let spec = IndRnnSpec { li2018: Some(100) };
        let config = ModelConfig {
            cell: CellConfig::new(spec),
            input_size: 2,
            hidden: vec![500, 500],
            output_size: 1,
            head: HeadKind::LastStep,
        };
        assert_eq!(
            config.bounded_params(),
            [
                ("weight_hh_l0".to_owned(), 1.006_955_550_056_718_9),
                ("weight_hh_l1".to_owned(), 1.006_955_550_056_718_9),
            ]
        );
        assert_eq!(config.recurrent_params(), ["weight_hh_l0", "weight_hh_l1"]);
        let params = Init::default()
            .params(&config, 3, DType::F64, &Device::Cpu)
            .unwrap();
        let values = |name: &str| -> Vec<f64> {
            let tensor = params.get(name).unwrap().as_tensor().flatten_all().unwrap();
            tensor.to_vec1().unwrap()
        };
        let bound = 1.006_955_550_056_718_9;
        // The first layer's u in U(0, b), the second's in U(1/b, b) = U(0.99309, 1.00696):
        // 500 draws each come within 1 % of the ends of their range.
        for (name, low) in [("weight_hh_l0", 0.0), ("weight_hh_l1", 1.0 / bound)] {
            let u = values(name);
            let (min, max) = u
                .iter()
                .fold((f64::MAX, f64::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
            assert!(low <= min && max < bound, "{name}: {min}..{max}");
            assert!(min - low < 0.01 * (bound - low) && bound - max < 0.01 * (bound - low));
        }
        // Input weights N(0, 0.001²): 1,000 and 250,000 draws, sample deviation within
        // 10 % of 0.001; biases 0.
        for name in ["weight_ih_l0", "weight_ih_l1"] {
            let w = values(name);
            let rms = (w.iter().map(|v| v * v).sum::<f64>() / w.len() as f64).sqrt();
            assert!((rms - 1e-3).abs() < 1e-4, "{name}: rms {rms}");
        }
        assert!(
            values("bias_ih_l0")
                .iter()
                .chain(&values("bias_ih_l1"))
                .all(|&b| b == 0.0)
        );
        // Without the recipe (PyTorch's scheme) nothing is bounded and u is U(±1/√H).
        let plain = ModelConfig {
            cell: CellConfig::new(IndRnnSpec::default()),
            ..config
        };
        assert!(plain.bounded_params().is_empty());
    }

    #[test]
    fn parameter_count_by_hand() {
        // I = 3, H = 5: W_ih 15 + u 5 + b 5 = 25; a second layer of 4 units on 5 inputs
        // 20 + 4 + 4 = 28; the head (2 outputs on 4 units) 10. Total 63.
        let config = ModelConfig {
            cell: CellConfig::new(IndRnnSpec::default()),
            input_size: 3,
            hidden: vec![5, 4],
            output_size: 2,
            head: HeadKind::LastStep,
        };
        assert_eq!(config.parameter_count(), 63);
        let params = Init::default()
            .params(&config, 0, DType::F32, &Device::Cpu)
            .unwrap();
        assert_eq!(params.element_count(), 63);
        assert_eq!(
            params.get("weight_hh_l1").unwrap().dims(),
            &[4],
            "u is a vector"
        );
    }

    #[test]
    fn two_steps_by_hand() {
        // W = 0.5, u = −2, b = 0.1, h0 = 0.3; x = (1, 1):
        // h1 = relu(0.5 + 0.1 − 0.6) = relu(0.0) = 0; h2 = relu(0.6 + 0) = 0.6.
        // From h0 = −0.3 instead: h1 = relu(0.6 + 0.6) = 1.2, h2 = relu(0.6 − 2.4) = 0.
        let dev = Device::Cpu;
        let mut params = Params::new();
        let weight = Tensor::new(&[[0.5f64]], &dev).unwrap();
        params.insert("weight_ih_l0", Var::from_tensor(&weight).unwrap());
        for (name, value) in [("weight_hh_l0", -2.0f64), ("bias_ih_l0", 0.1)] {
            params.insert(
                name,
                Var::from_tensor(&Tensor::new(&[value], &dev).unwrap()).unwrap(),
            );
        }
        let cell = IndRnn::new(IndRnnSpec::default(), &params, 0, 1, 1).unwrap();
        let xs = Tensor::new(&[[[1.0f64], [1.0]]], &dev).unwrap();
        for (h0, want) in [(0.3, [0.0, 0.6]), (-0.3, [1.2, 0.0])] {
            let state = State {
                h: Tensor::new(&[[h0]], &dev).unwrap(),
                c: None,
            };
            let (hs, _) = cell.sequence(&xs, &state).unwrap();
            let got: Vec<f64> = hs.flatten_all().unwrap().to_vec1().unwrap();
            for (g, w) in got.iter().zip(want) {
                assert!((g - w).abs() < 1e-12, "h0 = {h0}: {got:?} vs {want:?}");
            }
        }
    }
}
