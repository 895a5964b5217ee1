//! The fused kernel of the cells whose gates read only the input (minGRU, minLSTM): one
//! GEMM projects every step's `G·H` gate pre-activations, then a pointwise recurrence
//! runs over time with no recurrent GEMM. A cell supplies the per-step pointwise math
//! ([`ScanStep`]); this module owns the loops, the saved activations and the gradients.

use candle_core::{Result, Tensor, bail};
use rayon::prelude::*;

use crate::cell::{FlowSink, GradFlow, State};
use crate::fused::{
    self, Dims, FlowNorms, Kernel, Real, Saved, chunk_rows, input_grads, input_projection, two_mut,
    wide,
};
use crate::spec::{CellSpec, LayerWeights, ParamRole, ParamSpec, param_ranges};

/// The parameters of an input-gated layer: `weight_ih` `(G·H, I)` and `bias_ih` `(G·H)`,
/// whose block `forget_block` takes the forget-bias offset.
pub(crate) fn layer_params(
    gates: usize,
    input: usize,
    hidden: usize,
    forget_block: Option<usize>,
) -> Vec<ParamSpec> {
    vec![
        ParamSpec::new(
            "weight_ih",
            &[gates * hidden, input],
            ParamRole::InputWeight,
        ),
        ParamSpec::new(
            "bias_ih",
            &[gates * hidden],
            ParamRole::Bias { forget_block },
        ),
    ]
}

/// [`crate::layer::CellMath::fused`] of an input-gated cell: the whole sequence through
/// its [`ScanOp`], in the cell's [`ScanForm`].
pub(crate) fn fused<C: ScanStep>(
    cell: C,
    weights: &LayerWeights,
    xs: &Tensor,
    state: &State,
) -> Result<(Tensor, State, GradFlow)> {
    let (out, flow) = fused::apply(xs, &state.h, weights, |dims, flow| ScanOp {
        dims,
        cell,
        saved: Saved::default(),
        flow,
    })?;
    let h = fused::step_of(&out, out.dim(1)? - 1)?;
    Ok((out, State { h, c: None }, flow))
}

/// The pointwise math of one step of an input-gated cell, for one batch row. Parameters
/// are `weight_ih` `(G·H, I)` and `bias_ih` `(G·H)`, in that order.
pub(crate) trait ScanStep: CellSpec + Copy + Send + Sync + 'static {
    /// The op's name in candle's graph.
    const NAME: &'static str;
    /// Gate blocks `G` of `H` pre-activations per step.
    const GATES: usize;
    /// The names of the sequential form's forward and backward in `cuda/kernels.cu`.
    #[cfg(feature = "cuda")]
    const CUDA_KERNELS: [&'static str; 2];
    /// The cell's code for the log-space form's kernels (`crate::cuda::SCAN_*`).
    #[cfg(feature = "cuda")]
    const CUDA_LOG_CELL: i32;

    /// Turns the step's pre-activations `gates` `(G·H)` into what the backward needs (in
    /// place) and writes `h` from `h_prev`.
    fn forward<T: Real>(gates: &mut [T], h_prev: &[T], h: &mut [T]);

    /// Given `d_h` (∂L/∂h_t), turns the saved `gates` into the gradients of their
    /// pre-activations (in place) and writes ∂L/∂h_{t−1} into `d_prev`.
    fn backward<T: Real>(gates: &mut [T], h_prev: &[T], d_h: &[T], d_prev: &mut [T]);

    /// Which form the cell computes in.
    fn form(&self) -> ScanForm;

    /// The log-space form: `log a` (the forget factor) and `log b` (the gated
    /// candidate) from a step's pre-activations `gates`.
    fn log_coefficients<T: Real>(gates: &[T], log_a: &mut [T], log_b: &mut [T]);

    /// The log-space form: overwrites `gates` (pre-activations) with their gradients,
    /// given those of `log a` and `log b`.
    fn log_backward<T: Real>(gates: &mut [T], d_log_a: &[T], d_log_b: &[T]);
}

/// The fused whole-sequence op of a [`ScanStep`] cell.
pub(crate) struct ScanOp<C: ScanStep> {
    dims: Dims,
    cell: C,
    /// The gates of every step `(B, T, G·H)`, as [`ScanStep::forward`] left them (the
    /// pre-activations, in log space).
    saved: Saved,
    flow: FlowSink,
}

impl<C: ScanStep> ScanOp<C> {
    /// The CUDA kernels of the cell's form.
    #[cfg(feature = "cuda")]
    fn cuda_kernels(&self) -> crate::cuda::ScanKernels {
        use crate::cuda::ScanKernelForm;
        let [forward, backward] = C::CUDA_KERNELS;
        crate::cuda::ScanKernels {
            gates: C::GATES,
            form: match self.cell.form() {
                ScanForm::Sequential => ScanKernelForm::Sequential { forward, backward },
                ScanForm::LogSpace => ScanKernelForm::LogSpace {
                    cell: C::CUDA_LOG_CELL,
                },
            },
        }
    }

    /// The time loop for one chunk of batch rows: `gates` holds their pre-activations.
    #[inline(always)]
    fn forward_chunk<T: Real>(&self, gates: &mut [T], out: &mut [T], h0: &[T]) {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let width = C::GATES * hidden;
        let (g_rs, out_rs) = (seq_len * width, seq_len * hidden);
        for (b, h0) in h0.chunks_exact(hidden).enumerate() {
            let (gates, out) = (
                &mut gates[b * g_rs..(b + 1) * g_rs],
                &mut out[b * out_rs..(b + 1) * out_rs],
            );
            for t in 0..seq_len {
                let (past, now) = out.split_at_mut(t * hidden);
                let h_prev = if t == 0 {
                    h0
                } else {
                    &past[(t - 1) * hidden..]
                };
                C::forward(
                    &mut gates[t * width..(t + 1) * width],
                    h_prev,
                    &mut now[..hidden],
                );
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
        let width = C::GATES * hidden;
        let (g_rs, out_rs) = (seq_len * width, seq_len * hidden);
        let mut flow = FlowNorms::new(seq_len, &self.flow);
        let mut d_h = vec![T::ZERO; hidden];
        for (b, h0) in h0.chunks_exact(hidden).enumerate() {
            let gates = &mut gates[b * g_rs..(b + 1) * g_rs];
            let (out, grad_out) = (&out[b * out_rs..], &grad_out[b * out_rs..]);
            // ∂L/∂h_t through the recurrence from step t + 1; zero after the last step.
            let mut d_rec = vec![T::ZERO; hidden];
            for t in (0..seq_len).rev() {
                let at = t * hidden;
                let h_prev = if t == 0 { h0 } else { &out[at - hidden..at] };
                d_h.iter_mut()
                    .zip(&grad_out[at..at + hidden])
                    .zip(&d_rec)
                    .for_each(|((d, &g), &r)| *d = g + r);
                C::backward(
                    &mut gates[t * width..(t + 1) * width],
                    h_prev,
                    &d_h,
                    &mut d_rec,
                );
                flow.add(t, &d_h);
            }
            d_h0[b * hidden..(b + 1) * hidden].copy_from_slice(&d_rec);
        }
        flow
    }
}

impl<C: ScanStep> Kernel for ScanOp<C> {
    const NAME: &'static str = C::NAME;

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
        let width = C::GATES * hidden;
        let (ranges, total) = param_ranges(&self.cell.layer_params(input, hidden));
        if params.len() != total || x.len() != batch * seq_len * input {
            bail!("{}: inputs do not match the layer's sizes", C::NAME);
        }
        let (w_ih, bias) = (&params[ranges[0].clone()], &params[ranges[1].clone()]);
        let mut gates = input_projection(x, w_ih, bias, batch * seq_len, input);
        let mut out = vec![T::ZERO; batch * seq_len * hidden];
        let rows = chunk_rows(batch);
        gates
            .par_chunks_mut(rows * seq_len * width)
            .zip(out.par_chunks_mut(rows * seq_len * hidden))
            .zip(h0.par_chunks(rows * hidden))
            .for_each(|((gates, out), h0)| {
                wide(|| match self.cell.form() {
                    ScanForm::Sequential => self.forward_chunk(gates, out, h0),
                    ScanForm::LogSpace => self.log_forward_chunk(gates, out, h0),
                })
            });
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
            ..
        } = self.dims;
        let width = C::GATES * hidden;
        let (ranges, total) = param_ranges(&self.cell.layer_params(input, hidden));
        // The gates are taken, not borrowed: their gradients overwrite them.
        let mut d_gates = fused::take_saved::<Vec<T>>(&self.saved, Self::NAME)?;
        let mut d_h0 = vec![T::ZERO; batch * hidden];
        let chunk = chunk_rows(batch);
        let out_rs = seq_len * hidden;
        let flows: Vec<FlowNorms> = d_gates
            .par_chunks_mut(chunk * seq_len * width)
            .zip(d_h0.par_chunks_mut(chunk * hidden))
            .zip(out.par_chunks(chunk * out_rs))
            .zip(grad_out.par_chunks(chunk * out_rs))
            .zip(h0.par_chunks(chunk * hidden))
            .map(|((((gates, d_h0), out), grad_out), h0)| {
                wide(|| match self.cell.form() {
                    ScanForm::Sequential => self.backward_chunk([gates, d_h0], [out, grad_out, h0]),
                    ScanForm::LogSpace => {
                        self.log_backward_chunk([gates, d_h0], [out, grad_out, h0])
                    }
                })
            })
            .collect();
        FlowNorms::finish(&flows, self.dims, &self.flow);
        let mut d_params = vec![T::ZERO; total];
        let (d_weight_ih, d_bias) = two_mut(&mut d_params, ranges[0].clone(), ranges[1].clone());
        let d_x = input_grads(
            &d_gates,
            x,
            &params[ranges[0].clone()],
            (d_weight_ih, Some(d_bias)),
            (batch * seq_len, width, input),
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
        let (out, saved) =
            crate::cuda::scan_forward(gpu, (self.dims, self.cuda_kernels()), (x, h0, params))?;
        *self.saved.lock().expect("saved activations") = Some(Box::new(saved));
        Ok(out)
    }

    #[cfg(feature = "cuda")]
    fn cuda_backward(
        &self,
        gpu: &crate::cuda::Gpu,
        _x: &[f32],
        _h0: &[f32],
        _params: &[f32],
        _out: &[f32],
        grad_out: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let saved = fused::take_saved::<crate::cuda::ScanGpuSaved>(&self.saved, Self::NAME)?;
        let grads =
            crate::cuda::scan_backward(gpu, (self.dims, self.cuda_kernels()), saved, grad_out)?;
        *self.flow.lock().expect("gradient-flow sink") = Some(grads.flow);
        Ok((grads.d_x, grads.d_state0, grads.d_params))
    }
}

/// How minGRU and minLSTM compute their recurrence `h_t = a_t ⊙ h_{t−1} + b_t` (Feng et
/// al. 2024): step by step (their sequential mode), or in log space over the whole
/// sequence (their parallel mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScanForm {
    /// `h_t = h_{t−1} + (1 − a_t) ⊙ (h̃_t − h_{t−1})` with the candidate `h̃ = W_h x + b_h`
    /// as it is (the paper's sequential listings).
    #[default]
    Sequential,
    /// The paper's log-space mode: the candidate passes through
    /// `g(x) = x + 0.5 (x ≥ 0), σ(x) (x < 0)` so that `b_t > 0`, and with
    /// `A_t = Σ_{k≤t} log a_k`,
    ///
    /// ```text
    /// h_t = exp(A_t) ⊙ h_0 + exp(A_t + logcumsumexp_{k≤t}(log b_k − A_k))
    /// ```
    ///
    /// (Heinsen 2023), computed with a running maximum so that no `exp` overflows
    /// however long the sequence. The paper also maps `h_0` through `g`; here `h_0` is
    /// the state as given (0 at the start of a sequence, where `g` would make it 0.5),
    /// and enters linearly, so any sign is allowed. The same math as the sequential
    /// mode with `g` on the candidate, which is this form's step-by-step reference.
    LogSpace,
}

impl ScanForm {
    /// The suffix of a cell's label: `""` or `" (log-space)"`.
    pub(crate) fn label_suffix(self) -> &'static str {
        match self {
            Self::Sequential => "",
            Self::LogSpace => " (log-space)",
        }
    }
}

/// The candidate `h̃` of a step on candle tensors: the pre-activation as it is, or
/// through `g` for the log-space form.
pub(crate) fn candidate(pre: &Tensor, form: ScanForm) -> Result<Tensor> {
    match form {
        ScanForm::Sequential => Ok(pre.clone()),
        ScanForm::LogSpace => {
            // g(x) = x + 0.5 for x ≥ 0, σ(x) below; the masks carry no gradient.
            let at_least_zero = pre.ge(0.0)?.to_dtype(pre.dtype())?;
            let below = (1.0 - &at_least_zero)?;
            (at_least_zero * (pre + 0.5)?)? + (below * candle_nn::ops::sigmoid(pre)?)?
        }
    }
}

/// `log(1 + eˣ)` without overflow.
#[inline(always)]
pub(crate) fn softplus<T: Real>(x: T) -> T {
    let magnitude = if x > T::ZERO { x } else { -x };
    x.max_(T::ZERO) + (T::ONE + (-magnitude).exp_()).ln_()
}

/// `log g(x)` and its derivative, where `g` (Feng et al.) keeps the log-space form's
/// candidate positive.
#[inline(always)]
pub(crate) fn log_g<T: Real>(x: T) -> (T, T) {
    if x >= T::ZERO {
        let shifted = x + T::from_f64(0.5);
        (shifted.ln_(), T::ONE / shifted)
    } else {
        // log σ(x) = −softplus(−x); its derivative σ(−x).
        (-softplus(-x), (-x).sigmoid_())
    }
}

/// Four consecutive `len`-long parts of `buffer`.
fn split4<T>(buffer: &mut [T], len: usize) -> [&mut [T]; 4] {
    let (a, rest) = buffer.split_at_mut(len);
    let (b, rest) = rest.split_at_mut(len);
    let (c, d) = rest.split_at_mut(len);
    [a, b, c, &mut d[..len]]
}

/// `log(eˣ + eʸ)` by the larger of the two.
#[inline(always)]
fn log_add_exp<T: Real>(x: T, y: T) -> T {
    let (big, small) = if x > y { (x, y) } else { (y, x) };
    big + (T::ONE + (small - big).exp_()).ln_()
}

/// The log-space form's loops (see [`ScanForm::LogSpace`]): the backward recomputes
/// `log a`, `log b`, `A_t` and the running log-sum `s_t` of each batch row.
impl<C: ScanStep> ScanOp<C> {
    /// One batch row's sweep over time: fills `log_a`, `log_b`, `cum` (`A_t`) and
    /// `sums` (`s_t`), each `(T, H)`, and, given `out`, writes `h_t`.
    #[inline(always)]
    fn sweep<T: Real>(
        &self,
        gates: &[T],
        h0: &[T],
        [log_a, log_b, cum, sums]: [&mut [T]; 4],
        mut out: Option<&mut [T]>,
    ) {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let width = C::GATES * hidden;
        for t in 0..seq_len {
            let at = t * hidden;
            C::log_coefficients(
                &gates[t * width..(t + 1) * width],
                &mut log_a[at..at + hidden],
                &mut log_b[at..at + hidden],
            );
            for j in 0..hidden {
                let previous_cum = if t == 0 {
                    T::ZERO
                } else {
                    cum[at - hidden + j]
                };
                let a_star = previous_cum + log_a[at + j];
                let v = log_b[at + j] - a_star;
                let s = if t == 0 {
                    v
                } else {
                    log_add_exp(sums[at - hidden + j], v)
                };
                cum[at + j] = a_star;
                sums[at + j] = s;
                if let Some(out) = out.as_deref_mut() {
                    out[at + j] = a_star.exp_() * h0[j] + (a_star + s).exp_();
                }
            }
        }
    }

    fn log_forward_chunk<T: Real>(&self, gates: &[T], out: &mut [T], h0: &[T]) {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let width = C::GATES * hidden;
        let (g_rs, out_rs) = (seq_len * width, seq_len * hidden);
        let mut scratch = vec![T::ZERO; 4 * out_rs];
        for (b, h0) in h0.chunks_exact(hidden).enumerate() {
            let [log_a, log_b, cum, sums] = split4(&mut scratch, out_rs);
            self.sweep(
                &gates[b * g_rs..(b + 1) * g_rs],
                h0,
                [log_a, log_b, cum, sums],
                Some(&mut out[b * out_rs..(b + 1) * out_rs]),
            );
        }
    }

    /// The gradients of one chunk's pre-activations (in place), `d_h0` and the flow, in
    /// log space.
    ///
    /// With `e_t = exp(A_t + s_t)` and `g_t = ∂L/∂h_t` from the output: the running sum
    /// takes `σ_t = g_t e_t + σ_{t+1} exp(s_t − s_{t+1})`, `log b_t` takes
    /// `σ_t exp(log b_t − A_t − s_t)`, and `log a_t` the sum over `k ≥ t` of
    /// `g_k h_k − ∂L/∂(log b_k)`; every exponent is ≤ 0. The state's own gradient
    /// `∂L/∂h_{t−1} = a_t ∂L/∂h_t` (what the flow reports, and `d_h0`) runs beside.
    fn log_backward_chunk<T: Real>(
        &self,
        [gates, d_h0]: [&mut [T]; 2],
        [out, grad_out, h0]: [&[T]; 3],
    ) -> FlowNorms {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let width = C::GATES * hidden;
        let (g_rs, out_rs) = (seq_len * width, seq_len * hidden);
        let mut flow = FlowNorms::new(seq_len, &self.flow);
        let mut scratch = vec![T::ZERO; 4 * out_rs];
        let mut d_log_b = vec![T::ZERO; hidden];
        for (b, h0) in h0.chunks_exact(hidden).enumerate() {
            let gates = &mut gates[b * g_rs..(b + 1) * g_rs];
            let (out, grad_out) = (&out[b * out_rs..], &grad_out[b * out_rs..]);
            let [log_a, log_b, cum, sums] = split4(&mut scratch, out_rs);
            self.sweep(
                gates,
                h0,
                [&mut *log_a, &mut *log_b, &mut *cum, &mut *sums],
                None,
            );
            let mut sigma = vec![T::ZERO; hidden];
            let mut alpha = vec![T::ZERO; hidden];
            // ∂L/∂h_t as a state, through the recurrence from step t + 1.
            let mut d_state = vec![T::ZERO; hidden];
            for t in (0..seq_len).rev() {
                let at = t * hidden;
                let step_gates = &mut gates[t * width..(t + 1) * width];
                for j in 0..hidden {
                    let g = grad_out[at + j];
                    let (a_star, s) = (cum[at + j], sums[at + j]);
                    let next = if t + 1 < seq_len {
                        sigma[j] * (s - sums[at + hidden + j]).exp_()
                    } else {
                        T::ZERO
                    };
                    sigma[j] = g * (a_star + s).exp_() + next;
                    let d_b = sigma[j] * (log_b[at + j] - a_star - s).exp_();
                    alpha[j] += g * out[at + j] - d_b;
                    d_log_b[j] = d_b;
                    d_state[j] += g;
                }
                flow.add(t, &d_state);
                for j in 0..hidden {
                    d_state[j] *= log_a[at + j].exp_();
                }
                C::log_backward(step_gates, &alpha, &d_log_b);
            }
            d_h0[b * hidden..(b + 1) * hidden].copy_from_slice(&d_state);
        }
        flow
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::layer::CellConfig;
    use crate::unroll::unroll;
    use crate::{HeadKind, Init, MinGruSpec, MinLstmSpec, ModelConfig};

    #[test]
    fn the_log_space_form_in_f32_loses_precision_in_proportion_to_the_length() {
        // With forget factors near 0.5 (biases 0), A_t = Σ log a_k falls by ~0.7 a step:
        // at T = 3000 it is about −2000, far beyond f32's exp range (±88), which a
        // cumulative product (Heinsen's form without logs) could not survive. In log
        // space, h_t = exp(A_t + s_t) adds two numbers of size |A_t| with opposite signs,
        // so f32's relative spacing (6e-8) times |A_t| is lost: measured against the
        // sequential recurrence with g unrolled in f64, 3.0e-6 at T = 100, 3.7e-5 (minGRU)
        // and 4.2e-5 (minLSTM) at 1000, 1.2e-4 at 3000, 4.7e-4 at 10000 (minGRU). The test
        // holds the kernel to 5e-8·T, and to finite values.
        let (input, hidden, batch) = (3, 6, 2);
        let dev = Device::Cpu;
        for seq in [100, 3000] {
            let values: Vec<f64> = (0..batch * seq * input)
                .map(|k| 1.5 * (k as f64 * 0.731).sin())
                .collect();
            let xs = Tensor::from_vec(values, (batch, seq, input), &dev).unwrap();
            for cell in [
                CellConfig::new(MinGruSpec {
                    form: ScanForm::LogSpace,
                }),
                CellConfig::new(MinLstmSpec {
                    form: ScanForm::LogSpace,
                }),
            ] {
                let config = ModelConfig {
                    cell: cell.clone(),
                    input_size: input,
                    hidden: vec![hidden],
                    output_size: 1,
                    head: HeadKind::LastStep,
                };
                let params = Init::default()
                    .params(&config, 5, DType::F64, &dev)
                    .unwrap();
                let exact = cell.build(&params, 0, input, hidden).unwrap();
                let state = exact.zero_state(batch).unwrap();
                let (want, _, _) = unroll(exact.as_ref(), &xs, &state).unwrap();
                let params32 = params.cast(DType::F32, &dev).unwrap();
                let fast = cell.build(&params32, 0, input, hidden).unwrap();
                let (got, _) = fast
                    .sequence(
                        &xs.to_dtype(DType::F32).unwrap(),
                        &fast.zero_state(batch).unwrap(),
                    )
                    .unwrap();
                let got: Vec<f64> = got
                    .to_dtype(DType::F64)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap();
                let want: Vec<f64> = want.flatten_all().unwrap().to_vec1().unwrap();
                assert!(got.iter().all(|v| v.is_finite()));
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs() / (1.0 + w.abs()))
                    .fold(0.0, f64::max);
                let bound = 5e-8 * seq as f64;
                assert!(
                    worst < bound,
                    "{} at T = {seq}: off by {worst:e}",
                    cell.label()
                );
            }
        }
    }
}
