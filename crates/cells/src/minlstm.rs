//! minLSTM (Feng et al. 2024, "Were RNNs All We Needed?"), in its sequential and
//! log-space forms.

use candle_core::{Result, Tensor};
use candle_nn::ops::sigmoid;

use crate::cell::{GradFlow, State};
use crate::fused::Real;
use crate::layer::{CellConfig, CellKind, CellMath, Layer, affine, block};
use crate::scan::{self, ScanForm, ScanStep, log_g, softplus};
use crate::spec::{CellSpec, LayerWeights, ParamSpec};

/// minLSTM layer (Feng et al. 2024): the LSTM with gates that read only the input, no
/// output gate and no cell state apart from `h`, its forget and input gates normalised
/// to sum to 1 (the paper's length-independent scaling),
///
/// ```text
/// f_t = σ(W_f x_t + b_f),   i_t = σ(W_i x_t + b_i)
/// f'_t = f_t / (f_t + i_t),   i'_t = i_t / (f_t + i_t)
/// h̃_t = W_h x_t + b_h
/// h_t = f'_t ⊙ h_{t−1} + i'_t ⊙ h̃_t
/// ```
///
/// By default this is the sequential form (Feng et al.'s Algorithm 3 run step by step;
/// since `f' = 1 − i'`, the kernel computes `h_t = h_{t−1} + i'_t ⊙ (h̃_t − h_{t−1})`);
/// with [`ScanForm::LogSpace`], their log-space mode (the candidate through `g`, see
/// [`ScanForm`]).
/// Parameters: `weight_ih_l{k}` `(3H, I)` (rows f, i, then h̃) and `bias_ih_l{k}`
/// `(3H)`, whose f rows take the forget-bias offset; no recurrent weights.
pub type MinLstm = Layer<MinLstmSpec>;

/// minLSTM's options: how the recurrence is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinLstmSpec {
    /// Sequential (default) or log-space.
    pub form: ScanForm,
}

/// `model.cell: minlstm`.
pub static MINLSTM: CellKind = CellKind {
    name: "minlstm",
    display: "minLSTM",
    summary: "minLSTM (Feng et al. 2024): h = f' ⊙ h + i' ⊙ (W_h x + b_h), f', i' = σ(W_f x + b_f), σ(W_i x + b_i) normalised to sum to 1",
    configure: |options| {
        options.refuse_skew_init("minlstm")?;
        options.refuse_indrnn_init("minlstm")?;
        options.refuse_ablation_and_reset("minlstm")?;
        Ok(CellConfig::new(MinLstmSpec { form: options.scan }))
    },
    colors: &[
        ("minlstm", [90, 160, 60]),
        ("minlstm (log-space)", [160, 210, 120]),
    ],
    examples: || {
        [ScanForm::Sequential, ScanForm::LogSpace]
            .map(|form| CellConfig::new(MinLstmSpec { form }))
            .to_vec()
    },
};

impl CellSpec for MinLstmSpec {
    fn label(&self) -> String {
        format!("minlstm{}", self.form.label_suffix())
    }

    fn layer_params(&self, input: usize, hidden: usize) -> Vec<ParamSpec> {
        scan::layer_params(3, input, hidden, Some(0))
    }

    fn saved_floats_per_step(&self, hidden: usize) -> usize {
        // f, i and h̃, and the output.
        4 * hidden
    }

    fn has_cuda_kernel(&self) -> bool {
        true
    }
}

impl CellMath for MinLstmSpec {
    fn step(&self, weights: &LayerWeights, x: &Tensor, state: &State) -> Result<State> {
        let hidden = weights.hidden;
        let pre = affine(x, weights.get(0)?, weights.get(1)?)?;
        let f = sigmoid(&block(&pre, 0, hidden)?)?;
        let i = sigmoid(&block(&pre, 1, hidden)?)?;
        let candidate = scan::candidate(&block(&pre, 2, hidden)?, self.form)?;
        let i_norm = (&i / (&f + &i)?)?;
        // f' ⊙ h + i' ⊙ h̃ with f' = 1 − i', written as the kernel does.
        let h = (&state.h + (i_norm * (candidate - &state.h)?)?)?;
        Ok(State { h, c: None })
    }

    fn fused(
        &self,
        weights: &LayerWeights,
        xs: &Tensor,
        state: &State,
    ) -> Result<(Tensor, State, GradFlow)> {
        scan::fused(*self, weights, xs, state)
    }
}

impl ScanStep for MinLstmSpec {
    const NAME: &'static str = "fused-minlstm";
    const GATES: usize = 3;
    #[cfg(feature = "cuda")]
    const CUDA_KERNELS: [&'static str; 2] = ["minlstm_forward", "minlstm_backward"];
    #[cfg(feature = "cuda")]
    const CUDA_LOG_CELL: i32 = crate::cuda::SCAN_MINLSTM;

    /// Gates `[f, i, h̃]`: f and i are activated in place, h̃ is kept.
    #[inline(always)]
    fn forward<T: Real>(gates: &mut [T], h_prev: &[T], h: &mut [T]) {
        let n = h.len();
        let (f, rest) = gates.split_at_mut(n);
        let (i, candidate) = rest.split_at_mut(n);
        forward_units(f, i, candidate, h_prev, h);
    }

    /// With `s = f + i` and `p = i / s`: `∂p/∂i = f / s²`, `∂p/∂f = −i / s²`.
    #[inline(always)]
    fn backward<T: Real>(gates: &mut [T], h_prev: &[T], d_h: &[T], d_prev: &mut [T]) {
        let n = d_h.len();
        let (f, rest) = gates.split_at_mut(n);
        let (i, candidate) = rest.split_at_mut(n);
        backward_units(f, i, candidate, d_prev, h_prev, d_h);
    }
    fn form(&self) -> ScanForm {
        self.form
    }

    /// minLSTM: with `d = softplus(−f) − softplus(−i) = log(i / f)`, `log f' = −softplus(d)`
    /// and `log b = log i' + log g(p) = −softplus(−d) + log g(p)` for pre-activations
    /// `[f, i, p]`.
    #[inline(always)]
    fn log_coefficients<T: Real>(gates: &[T], log_a: &mut [T], log_b: &mut [T]) {
        let n = log_a.len();
        let (f, rest) = gates.split_at(n);
        let (i, p) = rest.split_at(n);
        for j in 0..n {
            let d = softplus(-f[j]) - softplus(-i[j]);
            log_a[j] = -softplus(d);
            log_b[j] = -softplus(-d) + log_g(p[j]).0;
        }
    }

    /// The gradients of [`ScanStep::log_coefficients`]' pre-activations.
    #[inline(always)]
    fn log_backward<T: Real>(gates: &mut [T], d_log_a: &[T], d_log_b: &[T]) {
        let n = d_log_a.len();
        let (f, rest) = gates.split_at_mut(n);
        let (i, p) = rest.split_at_mut(n);
        for j in 0..n {
            let d = softplus(-f[j]) - softplus(-i[j]);
            let share = d.sigmoid_();
            let d_d = d_log_b[j] * (T::ONE - share) - d_log_a[j] * share;
            // ∂d/∂f = −σ(−f), ∂d/∂i = σ(−i).
            let (sf, si) = ((-f[j]).sigmoid_(), (-i[j]).sigmoid_());
            f[j] = -d_d * sf;
            i[j] = d_d * si;
            p[j] = d_log_b[j] * log_g(p[j]).1;
        }
    }
}

/// minLSTM's forward for one step of one row: `f` and `i` activated in place, `h` from
/// `h_prev` and the candidate. Each slice is its own argument so that, inlined, the
/// compiler knows they do not overlap and vectorises the loop (split from one `gates`
/// slice, the checks it would need were too many and the loop ran one unit at a time).
#[inline(always)]
fn forward_units<T: Real>(f: &mut [T], i: &mut [T], candidate: &[T], h_prev: &[T], h: &mut [T]) {
    let n = h.len();
    let (f, i, candidate, h_prev) = (&mut f[..n], &mut i[..n], &candidate[..n], &h_prev[..n]);
    for j in 0..n {
        f[j] = f[j].sigmoid_();
        i[j] = i[j].sigmoid_();
        let share = i[j] / (f[j] + i[j]);
        h[j] = h_prev[j] + share * (candidate[j] - h_prev[j]);
    }
}

/// minLSTM's backward for one step of one row, as [`forward_units`]: `f`, `i` and the
/// candidate become their pre-activations' gradients, `d_prev` gets `∂L/∂h_{t−1}`.
/// (Passed as one tuple the three gates lost what tells the compiler they do not
/// overlap, and this loop stayed scalar.)
#[inline(always)]
fn backward_units<T: Real>(
    f: &mut [T],
    i: &mut [T],
    candidate: &mut [T],
    d_prev: &mut [T],
    h_prev: &[T],
    d_h: &[T],
) {
    let n = d_h.len();
    let (f, i, candidate) = (&mut f[..n], &mut i[..n], &mut candidate[..n]);
    let (d_prev, h_prev) = (&mut d_prev[..n], &h_prev[..n]);
    for j in 0..n {
        let (fj, ij) = (f[j], i[j]);
        // One division: 1 / s, then p = i / s and the 1 / s² of both derivatives.
        let inv = T::ONE / (fj + ij);
        let share = ij * inv;
        let d_share = d_h[j] * (candidate[j] - h_prev[j]);
        let d_over = d_share * inv * inv;
        d_prev[j] = d_h[j] * (T::ONE - share);
        candidate[j] = d_h[j] * share;
        i[j] = d_over * fj * ij * (T::ONE - ij);
        f[j] = -(d_over * ij) * fj * (T::ONE - fj);
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::{Cell, Params};

    #[test]
    fn one_step_by_hand() {
        // Biases (f, i, h̃) = (0, ln 3, 0.1) and weights (0, 0, 2) give, at x = 1,
        // f = 0.5, i = σ(ln 3) = 0.75, i' = 0.75 / 1.25 = 0.6 and h̃ = 2.1; from h = 0.3:
        // h = 0.4·0.3 + 0.6·2.1 = 1.38.
        let dev = Device::Cpu;
        let mut params = Params::new();
        let weight = Tensor::new(&[[0.0f64], [0.0], [2.0]], &dev).unwrap();
        let bias = Tensor::new(&[0.0f64, 3f64.ln(), 0.1], &dev).unwrap();
        params.insert("weight_ih_l0", Var::from_tensor(&weight).unwrap());
        params.insert("bias_ih_l0", Var::from_tensor(&bias).unwrap());
        let cell = MinLstm::new(MinLstmSpec::default(), &params, 0, 1, 1).unwrap();
        let state = State {
            h: Tensor::new(&[[0.3f64]], &dev).unwrap(),
            c: None,
        };
        let xs = Tensor::new(&[[[1.0f64]]], &dev).unwrap();
        let (hs, _) = cell.sequence(&xs, &state).unwrap();
        let stepped = cell.step(&xs.squeeze(1).unwrap(), &state).unwrap();
        for h in [hs, stepped.h] {
            let h: Vec<f64> = h.flatten_all().unwrap().to_vec1().unwrap();
            assert!((h[0] - 1.38).abs() < 1e-12, "{h:?}");
        }
    }
}
