//! minGRU (Feng et al. 2024, "Were RNNs All We Needed?"), in its sequential and
//! log-space forms.

use candle_core::{Result, Tensor};
use candle_nn::ops::sigmoid;

use crate::cell::{GradFlow, State};
use crate::fused::Real;
use crate::layer::{CellConfig, CellKind, CellMath, Layer, affine, block};
use crate::scan::{self, ScanForm, ScanStep, log_g, softplus};
use crate::spec::{CellSpec, LayerWeights, ParamSpec};

/// minGRU layer (Feng et al. 2024): the GRU with gates that read only the input, so that
/// training could run as a parallel scan,
///
/// ```text
/// z_t = σ(W_z x_t + b_z)
/// h̃_t = W_h x_t + b_h
/// h_t = (1 − z_t) ⊙ h_{t−1} + z_t ⊙ h̃_t
/// ```
///
/// By default this is the sequential form (Feng et al.'s Algorithm 1); with
/// [`ScanForm::LogSpace`], their log-space mode (the candidate through `g`, see
/// [`ScanForm`]). `∂h_t/∂h_{t−1}` is the diagonal `1 − z_t`, so the gradient reaching
/// early steps is a product of forget factors the input alone sets. Parameters:
/// `weight_ih_l{k}` `(2H, I)` (rows z, then h̃) and `bias_ih_l{k}` `(2H)`; no recurrent
/// weights.
pub type MinGru = Layer<MinGruSpec>;

/// minGRU's options: how the recurrence is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MinGruSpec {
    /// Sequential (default) or log-space.
    pub form: ScanForm,
}

/// `model.cell: mingru`.
pub static MINGRU: CellKind = CellKind {
    name: "mingru",
    display: "minGRU",
    summary: "minGRU (Feng et al. 2024): h = (1 − z) ⊙ h + z ⊙ (W_h x + b_h), z = σ(W_z x + b_z)",
    configure: |options| {
        options.refuse_skew_init("mingru")?;
        options.refuse_indrnn_init("mingru")?;
        options.refuse_ablation_and_reset("mingru")?;
        Ok(CellConfig::new(MinGruSpec { form: options.scan }))
    },
    colors: &[
        ("mingru", [0, 128, 128]),
        ("mingru (log-space)", [80, 190, 190]),
    ],
    examples: || {
        [ScanForm::Sequential, ScanForm::LogSpace]
            .map(|form| CellConfig::new(MinGruSpec { form }))
            .to_vec()
    },
};

impl CellSpec for MinGruSpec {
    fn label(&self) -> String {
        format!("mingru{}", self.form.label_suffix())
    }

    fn layer_params(&self, input: usize, hidden: usize) -> Vec<ParamSpec> {
        scan::layer_params(2, input, hidden, None)
    }

    fn saved_floats_per_step(&self, hidden: usize) -> usize {
        // z and h̃, and the output.
        3 * hidden
    }

    fn has_cuda_kernel(&self) -> bool {
        true
    }
}

impl CellMath for MinGruSpec {
    fn step(&self, weights: &LayerWeights, x: &Tensor, state: &State) -> Result<State> {
        let hidden = weights.hidden;
        let pre = affine(x, weights.get(0)?, weights.get(1)?)?;
        let z = sigmoid(&block(&pre, 0, hidden)?)?;
        let candidate = scan::candidate(&block(&pre, 1, hidden)?, self.form)?;
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
        scan::fused(*self, weights, xs, state)
    }
}

impl ScanStep for MinGruSpec {
    const NAME: &'static str = "fused-mingru";
    const GATES: usize = 2;
    #[cfg(feature = "cuda")]
    const CUDA_KERNELS: [&'static str; 2] = ["mingru_forward", "mingru_backward"];
    #[cfg(feature = "cuda")]
    const CUDA_LOG_CELL: i32 = crate::cuda::SCAN_MINGRU;

    /// Gates `[z, h̃]`: z is activated in place, h̃ is kept.
    #[inline(always)]
    fn forward<T: Real>(gates: &mut [T], h_prev: &[T], h: &mut [T]) {
        let (z, candidate) = gates.split_at_mut(h.len());
        for j in 0..h.len() {
            z[j] = z[j].sigmoid_();
            h[j] = h_prev[j] + z[j] * (candidate[j] - h_prev[j]);
        }
    }

    #[inline(always)]
    fn backward<T: Real>(gates: &mut [T], h_prev: &[T], d_h: &[T], d_prev: &mut [T]) {
        let (z, candidate) = gates.split_at_mut(d_h.len());
        for j in 0..d_h.len() {
            let zj = z[j];
            let d_z = d_h[j] * (candidate[j] - h_prev[j]);
            d_prev[j] = d_h[j] * (T::ONE - zj);
            candidate[j] = d_h[j] * zj;
            z[j] = d_z * zj * (T::ONE - zj);
        }
    }

    fn form(&self) -> ScanForm {
        self.form
    }

    /// minGRU: `log a = log(1 − z) = −softplus(k)`, `log b = log z + log g(p) =
    /// −softplus(−k) + log g(p)` for pre-activations `[k, p]`.
    #[inline(always)]
    fn log_coefficients<T: Real>(gates: &[T], log_a: &mut [T], log_b: &mut [T]) {
        let n = log_a.len();
        let (k, p) = gates.split_at(n);
        for j in 0..n {
            log_a[j] = -softplus(k[j]);
            log_b[j] = -softplus(-k[j]) + log_g(p[j]).0;
        }
    }

    /// The gradients of [`ScanStep::log_coefficients`]' pre-activations.
    #[inline(always)]
    fn log_backward<T: Real>(gates: &mut [T], d_log_a: &[T], d_log_b: &[T]) {
        let n = d_log_a.len();
        let (k, p) = gates.split_at_mut(n);
        for j in 0..n {
            let z = k[j].sigmoid_();
            k[j] = d_log_b[j] * (T::ONE - z) - d_log_a[j] * z;
            p[j] = d_log_b[j] * log_g(p[j]).1;
        }
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
        let cell = MinGru::new(MinGruSpec::default(), &params, 0, 1, 1).unwrap();
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
