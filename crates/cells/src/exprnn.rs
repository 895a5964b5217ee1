//! The exponential RNN (expRNN), Lezcano-Casado & Martínez-Rubio 2019.

use candle_core::{DType, Result, Tensor, bail};
use rayon::prelude::*;

use crate::cell::{FlowSink, GradFlow, State};
use crate::fused::{
    self, Dims, FlowNorms, Kernel, Real, Saved, chunk_rows, finish_chunks, input_grads,
    input_projection, matmul, previous_state, transpose, wide,
};
use crate::layer::{CellConfig, CellKind, CellMath, Layer};
use crate::packed::{Panels, par_product_rows};
use crate::spec::{CellSpec, LayerWeights, ParamRole, ParamSpec, layer_ranges};

/// The bound of the uniform draw of the modReLU bias, as Lezcano-Casado's code.
pub(crate) const MODRELU_BIAS_BOUND: f64 = 0.01;

/// expRNN layer (Lezcano-Casado & Martínez-Rubio 2019, "Cheap Orthogonal Constraints in
/// Neural Networks"): an RNN whose recurrent matrix is orthogonal by construction,
///
/// ```text
/// W   = exp(A − Aᵀ)                       (A strictly upper triangular: A − Aᵀ is skew,
///                                          so W is orthogonal, det W = 1)
/// z_t = W_ih x_t + W h_{t−1}
/// h_t = modrelu(z_t) = sign(z_t) ⊙ relu(|z_t| + b)
/// ```
///
/// `∂h_t/∂h_{t−1} = diag(active) · W`, and `W` preserves norms, so the gradient reaching
/// early steps is not shrunk or grown by the recurrent matrix, only by the units that
/// modReLU switches off. Training moves `A` freely (gradients reach it through the
/// adjoint of the matrix exponential's derivative), and `W` stays orthogonal to
/// rounding. `A` starts as Henaff et al. 2016's block diagonal of 2×2 rotations
/// (`A[2k, 2k+1] ~ U(−π, π)`, every other entry 0; or Helfrich et al.'s Cayley
/// initialisation, [`SkewInit::Cayley`]), whatever the initialisation scheme;
/// the modReLU bias as Lezcano-Casado's code, `U(−0.01, 0.01)`. There is no input bias
/// (the paper's `nn.Linear(bias=False)`). Parameters: `weight_ih_l{k}` `(H, I)`,
/// `log_weight_hh_l{k}` `(H(H−1)/2)` (the strictly upper triangle of `A`, row by row),
/// `bias_l{k}` `(H)` (the modReLU `b`).
///
/// The exponential is computed in f64 whatever the training precision: a Taylor
/// polynomial of degree [`TAYLOR_DEGREE`] after scaling `A − Aᵀ` to 1-norm ≤ 1/4
/// (truncation below 3e-18), then squared back.
pub type ExpRnn = Layer<ExpRnnSpec>;

/// The expRNN's options: how `A` is initialised (the trivialisation is the static one,
/// `W = exp(A − Aᵀ)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ExpRnnSpec {
    /// The initial `A`.
    pub init: SkewInit,
}

/// How the expRNN's `A` starts: a block diagonal of 2×2 generators `[[0, s], [−s, 0]]`
/// (rotations by `s`), as Lezcano-Casado's `henaff_init_` and `cayley_init_` draw them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SkewInit {
    /// Henaff et al. 2016: `s ~ U(−π, π)`.
    #[default]
    Henaff,
    /// Helfrich et al. 2018 (scoRNN): `s = −√((1 − cos u)/(1 + cos u)) = −tan(u/2)`,
    /// `u ~ U(0, π/2)`, so `s ∈ (−1, 0]`.
    Cayley,
}

impl SkewInit {
    /// The block entry `s` from a uniform draw `u ∈ [0, 1)`.
    pub(crate) fn block_angle(self, u: f64) -> f64 {
        match self {
            Self::Henaff => std::f64::consts::PI * (2.0 * u - 1.0),
            Self::Cayley => {
                let angle = std::f64::consts::FRAC_PI_2 * u;
                -((1.0 - angle.cos()) / (1.0 + angle.cos())).sqrt()
            }
        }
    }
}

/// `model.cell: exprnn`.
pub static EXPRNN: CellKind = CellKind {
    name: "exprnn",
    display: "expRNN",
    summary: "expRNN (Lezcano-Casado & Martínez-Rubio 2019): h = modrelu(W_ih x + exp(A − Aᵀ) h), an orthogonal recurrence",
    configure: |options| {
        options.refuse_scan("exprnn")?;
        options.refuse_indrnn_init("exprnn")?;
        options.refuse_ablation_and_reset("exprnn")?;
        Ok(CellConfig::new(ExpRnnSpec {
            init: options.skew_init,
        }))
    },
    colors: &[
        ("exprnn", [178, 34, 34]),
        ("exprnn (cayley init)", [230, 120, 100]),
    ],
    examples: || {
        [SkewInit::Henaff, SkewInit::Cayley]
            .map(|init| CellConfig::new(ExpRnnSpec { init }))
            .to_vec()
    },
};

/// Number of free entries of a `hidden × hidden` skew-symmetric matrix.
pub(crate) fn skew_len(hidden: usize) -> usize {
    hidden * hidden.saturating_sub(1) / 2
}

/// Index of `A[i][j]`, `i < j`, in the packed strictly upper triangle (row by row).
pub(crate) fn packed_index(i: usize, j: usize, hidden: usize) -> usize {
    i * hidden - i * (i + 1) / 2 + (j - i - 1)
}

impl CellSpec for ExpRnnSpec {
    fn label(&self) -> String {
        match self.init {
            SkewInit::Henaff => "exprnn".into(),
            SkewInit::Cayley => "exprnn (cayley init)".into(),
        }
    }

    fn layer_params(&self, input: usize, hidden: usize) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new("weight_ih", &[hidden, input], ParamRole::InputWeight),
            ParamSpec::new(
                "log_weight_hh",
                &[skew_len(hidden)],
                ParamRole::SkewGenerator(self.init),
            ),
            ParamSpec::new("bias", &[hidden], ParamRole::ModReluBias),
        ]
    }

    fn saved_floats_per_step(&self, hidden: usize) -> usize {
        hidden
    }

    fn has_cuda_kernel(&self) -> bool {
        true
    }
}

impl CellMath for ExpRnnSpec {
    fn step(&self, weights: &LayerWeights, x: &Tensor, state: &State) -> Result<State> {
        let (weight_ih, packed, bias) = (weights.get(0)?, weights.get(1)?, weights.get(2)?);
        let w = recurrent_matrix(packed, weights.hidden)?;
        let z = (x.matmul(&weight_ih.t()?)? + state.h.matmul(&w.t()?)?)?;
        // sign(z) ⊙ relu(|z| + b), with sign(0) = 0 as torch.sign: the sign masks carry
        // no gradient, as in torch.
        let positive = z.gt(0.0)?.to_dtype(z.dtype())?;
        let negative = z.lt(0.0)?.to_dtype(z.dtype())?;
        let h = ((positive * z.broadcast_add(bias)?.relu()?)?
            - (negative * z.neg()?.broadcast_add(bias)?.relu()?)?)?;
        Ok(State { h, c: None })
    }

    fn fused(
        &self,
        weights: &LayerWeights,
        xs: &Tensor,
        state: &State,
    ) -> Result<(Tensor, State, GradFlow)> {
        let (out, flow) = fused::apply(xs, &state.h, weights, |dims, flow| ExpRnnOp {
            dims,
            saved: Saved::default(),
            flow,
        })?;
        let h = fused::step_of(&out, out.dim(1)? - 1)?;
        Ok((out, State { h, c: None }, flow))
    }
}

/// `W = exp(A − Aᵀ)` `(H, H)` from the packed strictly upper triangle of `A`, built from
/// candle ops (so autograd differentiates through it), in f64 and returned in the
/// packed tensor's dtype: the step-by-step reference of the fused kernel's exponential,
/// and the matrix to inspect (it stays orthogonal through training).
pub fn recurrent_matrix(packed: &Tensor, hidden: usize) -> Result<Tensor> {
    let dtype = packed.dtype();
    let device = packed.device();
    let packed64 = packed.to_dtype(DType::F64)?;
    // S = A − Aᵀ gathered from [0, θ, −θ]: entry (i, j) reads 0 on the diagonal, θ_k
    // above it and −θ_k below.
    let n = skew_len(hidden);
    let source = Tensor::cat(
        &[
            &Tensor::zeros(1, DType::F64, device)?,
            &packed64,
            &packed64.neg()?,
        ],
        0,
    )?;
    let index: Vec<u32> = (0..hidden * hidden)
        .map(|k| {
            let (i, j) = (k / hidden, k % hidden);
            let at = match i.cmp(&j) {
                std::cmp::Ordering::Equal => 0,
                std::cmp::Ordering::Less => 1 + packed_index(i, j, hidden),
                std::cmp::Ordering::Greater => 1 + n + packed_index(j, i, hidden),
            };
            at as u32
        })
        .collect();
    let index = Tensor::from_vec(index, hidden * hidden, device)?;
    let skew = source.index_select(&index, 0)?.reshape((hidden, hidden))?;
    let values: Vec<f64> = skew.flatten_all()?.to_vec1()?;
    let squarings = squarings(&values, hidden);
    let eye = Tensor::eye(hidden, DType::F64, device)?;
    let x = skew.affine(0.5f64.powi(squarings as i32), 0.0)?;
    let mut e = eye.clone();
    for k in (1..=TAYLOR_DEGREE).rev() {
        e = (x.matmul(&e)?.affine(1.0 / k as f64, 0.0)? + &eye)?;
    }
    for _ in 0..squarings {
        e = e.matmul(&e)?;
    }
    e.to_dtype(dtype)
}

/// Degree of the Taylor polynomial of the exponential after scaling (see [`ExpRnn`]).
pub const TAYLOR_DEGREE: usize = 12;

/// The scaled matrix's largest 1-norm: with it, the Taylor remainder after
/// [`TAYLOR_DEGREE`] is below `(1/4)^13 / 13! ≈ 2.4e-18` of the 1-norm.
const SCALED_NORM: f64 = 0.25;

/// Squarings `s` that bring `‖m‖₁ / 2^s` to at most [`SCALED_NORM`]. The same `s` serves
/// `m` and `mᵀ` (a skew matrix's row and column sums agree up to sign).
fn squarings(m: &[f64], n: usize) -> u32 {
    let norm = (0..n)
        .map(|c| (0..n).map(|r| m[r * n + c].abs()).sum::<f64>())
        .fold(0.0, f64::max);
    let mut s = 0;
    while norm * 0.5f64.powi(s as i32) > SCALED_NORM {
        s += 1;
    }
    s
}

/// An `n × n` row-major f64 matrix with, optionally, its derivative in one direction
/// (forward mode): products follow `(x, ẋ)(y, ẏ) = (xy, xẏ + ẋy)`, so running the
/// exponential on jets gives its derivative from the same polynomial and squarings.
struct Jet {
    value: Vec<f64>,
    tangent: Option<Vec<f64>>,
}

impl Jet {
    fn mul(&self, other: &Self, n: usize) -> Self {
        let product = |a: &[f64], b: &[f64], out: &mut Vec<f64>, accumulate: bool| {
            matmul((n, n, n), out, n, (a, n, 1), (b, n, 1), accumulate);
        };
        let mut value = vec![0.0; n * n];
        product(&self.value, &other.value, &mut value, false);
        let tangent = match (&self.tangent, &other.tangent) {
            (Some(da), Some(db)) => {
                let mut d = vec![0.0; n * n];
                product(&self.value, db, &mut d, false);
                product(da, &other.value, &mut d, true);
                Some(d)
            }
            _ => None,
        };
        Self { value, tangent }
    }

    /// `Σ c_i · X^i` over `powers` (`X^0 = I`, whose derivative is 0, first).
    fn combination(coefficients: &[f64], powers: &[&Self], n: usize) -> Self {
        let mut value = vec![0.0; n * n];
        (0..n).for_each(|i| value[i * n + i] = coefficients[0]);
        let with_tangent = powers.iter().all(|p| p.tangent.is_some());
        let mut tangent = with_tangent.then(|| vec![0.0; n * n]);
        for (&c, power) in coefficients[1..].iter().zip(powers) {
            value
                .iter_mut()
                .zip(&power.value)
                .for_each(|(v, p)| *v += c * p);
            if let (Some(t), Some(p)) = (&mut tangent, &power.tangent) {
                t.iter_mut().zip(p).for_each(|(v, p)| *v += c * p);
            }
        }
        Self { value, tangent }
    }
}

/// `exp(m)` of an `n × n` row-major matrix, and with `direction` also its derivative
/// there: the Taylor polynomial of degree 12 after `s` halvings (evaluated as Paterson
/// & Stockmeyer 1973 do, in 5 products instead of 12: `p = B₀ + X⁴(B₁ + X⁴B₂)`, each
/// `Bⱼ` a combination of `I, X, X², X³ (, X⁴)`), then squared `s` times.
///
/// Called with `m = Sᵀ` and `direction = ∂L/∂W` it gives `∂L/∂S` for `W = exp(S)`: the
/// adjoint of a matrix power series' derivative at `S` is its derivative at `Sᵀ`.
fn expm(m: &[f64], direction: Option<&[f64]>, n: usize, s: u32) -> Jet {
    let scale = 0.5f64.powi(s as i32);
    let scaled = |v: &[f64]| v.iter().map(|x| x * scale).collect::<Vec<_>>();
    let x = Jet {
        value: scaled(m),
        tangent: direction.map(scaled),
    };
    let x2 = x.mul(&x, n);
    let x3 = x2.mul(&x, n);
    let x4 = x2.mul(&x2, n);
    // 1/k! for k = 0..=12.
    let mut c = [1.0f64; TAYLOR_DEGREE + 1];
    for k in 1..=TAYLOR_DEGREE {
        c[k] = c[k - 1] / k as f64;
    }
    let b0 = Jet::combination(&c[0..4], &[&x, &x2, &x3], n);
    let b1 = Jet::combination(&c[4..8], &[&x, &x2, &x3], n);
    let b2 = Jet::combination(&c[8..13], &[&x, &x2, &x3, &x4], n);
    let mut e = x4.mul(&b2, n);
    add_into(&mut e, &b1);
    e = x4.mul(&e, n);
    add_into(&mut e, &b0);
    for _ in 0..s {
        e = e.mul(&e, n);
    }
    e
}

fn add_into(a: &mut Jet, b: &Jet) {
    a.value.iter_mut().zip(&b.value).for_each(|(x, y)| *x += y);
    if let (Some(t), Some(u)) = (&mut a.tangent, &b.tangent) {
        t.iter_mut().zip(u).for_each(|(x, y)| *x += y);
    }
}

/// `S = A − Aᵀ` `(n × n)` from the packed strictly upper triangle of `A`.
fn skew_from_packed<T: Real>(packed: &[T], n: usize) -> Vec<f64> {
    let mut s = vec![0.0; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let v = packed[packed_index(i, j, n)].to_f64();
            s[i * n + j] = v;
            s[j * n + i] = -v;
        }
    }
    s
}

/// `(S, s, W = exp(S))` of a layer's packed generator.
fn orthogonal<T: Real>(packed: &[T], n: usize) -> Orthogonal {
    let s_matrix = skew_from_packed(packed, n);
    let s = squarings(&s_matrix, n);
    let w = expm(&s_matrix, None, n, s).value;
    (s_matrix, s, w)
}

fn cast<T: Real>(values: &[f64]) -> Vec<T> {
    values.iter().map(|&v| T::from_f64(v)).collect()
}

/// The fused expRNN: `W` formed once per sequence; the input projection of every step
/// is one GEMM, each step one recurrent GEMM and the modReLU.
struct ExpRnnOp {
    dims: Dims,
    /// The forward's `(S, squarings, W)` for the backward (the exponential is formed
    /// once per training step).
    saved: Saved,
    flow: FlowSink,
}

/// `S = A − Aᵀ`, the squarings of its exponential, and `W = exp(S)`, all in f64.
type Orthogonal = (Vec<f64>, u32, Vec<f64>);

impl ExpRnnOp {
    /// `[weight_ih, log_weight_hh, bias]` ranges in the flat parameters, and their total.
    fn ranges(&self) -> ([std::ops::Range<usize>; 3], usize) {
        layer_ranges(&ExpRnnSpec::default(), self.dims.input, self.dims.hidden)
    }

    /// The time loop for one chunk: `out` holds its rows' input projections.
    #[inline(always)]
    fn forward_chunk<T: Real>(&self, out: &mut [T], h0: &[T], w_t: &Panels<T>, bias: &[T]) {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let batch = h0.len() / hidden;
        let out_rs = seq_len * hidden;
        let mut h_prev = h0.to_vec();
        for t in 0..seq_len {
            w_t.mul(
                (&mut out[t * hidden..], out_rs),
                (&h_prev, hidden, 1),
                batch,
                true,
            );
            for b in 0..batch {
                let h = &mut out[b * out_rs + t * hidden..b * out_rs + (t + 1) * hidden];
                for (v, &bias) in h.iter_mut().zip(bias) {
                    let z = *v;
                    // sign(z) · relu(|z| + b); 0 at z = 0.
                    *v = if z > T::ZERO {
                        (z + bias).max_(T::ZERO)
                    } else if z < T::ZERO {
                        -((bias - z).max_(T::ZERO))
                    } else {
                        T::ZERO
                    };
                }
                h_prev[b * hidden..(b + 1) * hidden].copy_from_slice(h);
            }
        }
    }

    /// The reverse time loop for one chunk: fills `d_pre` (∂L/∂z) and `d_h0`, returns
    /// `∂L/∂b` over the chunk and its gradient flow. modReLU's slope is read from its
    /// output: 1 where it is non-zero (its sign is `sign(z)`, the slope of `b`), else 0.
    #[inline(always)]
    fn backward_chunk<T: Real>(
        &self,
        [d_pre, d_h0]: [&mut [T]; 2],
        [out, grad_out]: [&[T]; 2],
        w: &Panels<T>,
    ) -> (Vec<T>, FlowNorms) {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let batch = d_h0.len() / hidden;
        let out_rs = seq_len * hidden;
        let mut d_rec = vec![T::ZERO; batch * hidden];
        let mut d_bias = vec![T::ZERO; hidden];
        let mut flow = FlowNorms::new(seq_len, &self.flow);
        for t in (0..seq_len).rev() {
            for b in 0..batch {
                let at = b * out_rs + t * hidden;
                let (h, g) = (&out[at..at + hidden], &grad_out[at..at + hidden]);
                let rec = &d_rec[b * hidden..(b + 1) * hidden];
                let d = &mut d_pre[at..at + hidden];
                // ∂L/∂h_t first, its squared norm summed apart (in order: a running f64
                // sum would keep the elementwise loop scalar), then through modReLU.
                d.iter_mut()
                    .zip(g.iter().zip(rec))
                    .for_each(|(d, (&g, &r))| *d = g + r);
                flow.add(t, d);
                for ((d, bias), &h) in d.iter_mut().zip(d_bias.iter_mut()).zip(h) {
                    let d_h = *d;
                    (*d, *bias) = if h > T::ZERO {
                        (d_h, *bias + d_h)
                    } else if h < T::ZERO {
                        (d_h, *bias - d_h)
                    } else {
                        (T::ZERO, *bias)
                    };
                }
            }
            w.mul(
                (&mut d_rec, hidden),
                (&d_pre[t * hidden..], out_rs, 1),
                batch,
                false,
            );
        }
        d_h0.copy_from_slice(&d_rec);
        (d_bias, flow)
    }
}

impl Kernel for ExpRnnOp {
    const NAME: &'static str = "fused-exprnn";

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
        let ([w_ih, packed, bias], total) = self.ranges();
        if params.len() != total || x.len() != batch * seq_len * input {
            bail!("fused expRNN: inputs do not match the layer's sizes");
        }
        let generator = orthogonal(&params[packed], hidden);
        let zero_bias = vec![T::ZERO; hidden];
        let mut out = input_projection(x, &params[w_ih], &zero_bias, batch * seq_len, input);
        let rows = chunk_rows(batch);
        // Wᵀ, for h_{t−1} · Wᵀ: the panels read W by columns.
        let w_t = Panels::pack(
            &cast::<T>(&generator.2),
            (1, hidden),
            hidden,
            (1, hidden),
            rows,
        );
        let bias = &params[bias];
        out.par_chunks_mut(rows * seq_len * hidden)
            .zip(h0.par_chunks(rows * hidden))
            .for_each(|(out, h0)| wide(|| self.forward_chunk(out, h0, &w_t, bias)));
        *self.saved.lock().expect("saved exponential") = Some(Box::new(generator));
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
        let ([w_ih, packed, bias], total) = self.ranges();
        let generator = fused::take_saved::<Orthogonal>(&self.saved, Self::NAME)?;
        let (s_matrix, squarings, w) = generator;
        let out_rs = seq_len * hidden;
        let rows = batch * seq_len;
        let mut d_pre = vec![T::ZERO; rows * hidden];
        let mut d_h0 = vec![T::ZERO; batch * hidden];
        let chunk = chunk_rows(batch);
        let recurrent = Panels::pack(&cast::<T>(&w), (hidden, 1), hidden, (1, hidden), chunk);
        let parts: Vec<(Vec<T>, FlowNorms)> = d_pre
            .par_chunks_mut(chunk * out_rs)
            .zip(d_h0.par_chunks_mut(chunk * hidden))
            .zip(out.par_chunks(chunk * out_rs))
            .zip(grad_out.par_chunks(chunk * out_rs))
            .map(|(((d_pre, d_h0), out), grad_out)| {
                wide(|| self.backward_chunk([d_pre, d_h0], [out, grad_out], &recurrent))
            })
            .collect();
        let mut d_params = vec![T::ZERO; total];
        finish_chunks(&parts, &mut d_params[bias], self.dims, &self.flow);
        let d_x = input_grads(
            &d_pre,
            x,
            &params[w_ih.clone()],
            (&mut d_params[w_ih], None),
            (rows, hidden, input),
            self.dims.input_grad,
        );
        // ∂L/∂W = Σ_t ∂L/∂z_tᵀ · h_{t−1} over all B·T rows, then through the exponential.
        let h_prev = previous_state((h0, hidden), (out, out_rs), seq_len, hidden);
        let mut d_w = vec![T::ZERO; hidden * hidden];
        par_product_rows(&mut d_w, (&d_pre, 1, hidden), h_prev, (rows, hidden));
        packed_grad(&d_w, (&s_matrix, squarings), hidden, &mut d_params[packed]);
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
            bail!("fused expRNN: inputs do not match the layer's sizes");
        }
        let hidden = self.dims.hidden;
        let generator = orthogonal(&params[ranges[1].clone()], hidden);
        let w_t = cast::<f32>(&transpose(&generator.2, hidden, hidden));
        let out = crate::cuda::exprnn_forward(gpu, (self.dims, &ranges), &w_t, (x, h0, params))?;
        *self.saved.lock().expect("saved exponential") = Some(Box::new(generator));
        Ok(out)
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
        let hidden = self.dims.hidden;
        let generator = fused::take_saved::<Orthogonal>(&self.saved, Self::NAME)?;
        let (s_matrix, squarings, w) = generator;
        let w_t = cast::<f32>(&transpose(&w, hidden, hidden));
        let (mut grads, d_w) = crate::cuda::exprnn_backward(
            gpu,
            (self.dims, &ranges),
            &w_t,
            (x, h0, params),
            (out, grad_out),
        )?;
        packed_grad(
            &d_w,
            (&s_matrix, squarings),
            hidden,
            &mut grads.d_params[ranges[1].clone()],
        );
        *self.flow.lock().expect("gradient-flow sink") = Some(grads.flow);
        Ok((grads.d_x, grads.d_state0, grads.d_params))
    }
}

/// `∂L/∂A` (packed) from `∂L/∂W` through `W = exp(S)`, `S = A − Aᵀ`: the derivative's
/// adjoint is the derivative at `Sᵀ` in the direction `∂L/∂W`, in f64.
fn packed_grad<T: Real>(
    d_w: &[T],
    (s_matrix, squarings): (&[f64], u32),
    hidden: usize,
    d_packed: &mut [T],
) {
    let d_w: Vec<f64> = d_w.iter().map(|v| v.to_f64()).collect();
    let s_t = transpose(s_matrix, hidden, hidden);
    let d_s = expm(&s_t, Some(&d_w), hidden, squarings)
        .tangent
        .expect("a derivative was asked for");
    for i in 0..hidden {
        for j in i + 1..hidden {
            d_packed[packed_index(i, j, hidden)] =
                T::from_f64(d_s[i * hidden + j] - d_s[j * hidden + i]);
        }
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;
    use crate::{Cell, HeadKind, Init, ModelConfig, Params};

    #[test]
    fn packed_indices_run_row_by_row() {
        // H = 4: (0,1) (0,2) (0,3) (1,2) (1,3) (2,3) are 0..6.
        let order: Vec<usize> = [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
            .iter()
            .map(|&(i, j)| packed_index(i, j, 4))
            .collect();
        assert_eq!(order, [0, 1, 2, 3, 4, 5]);
        assert_eq!(skew_len(4), 6);
        assert_eq!(skew_len(1), 0);
    }

    #[test]
    fn the_exponential_of_a_rotation_generator_is_the_rotation() {
        // exp([[0, θ], [−θ, 0]]) = [[cos θ, sin θ], [−sin θ, cos θ]]; θ = 3 needs 4
        // squarings (3 / 16 ≤ 1/4).
        let theta = 3.0f64;
        let m = [0.0, theta, -theta, 0.0];
        let s = squarings(&m, 2);
        assert_eq!(s, 4);
        let w = expm(&m, None, 2, s).value;
        let want = [theta.cos(), theta.sin(), -theta.sin(), theta.cos()];
        for (g, w) in w.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{g} vs {w}");
        }
        // The candle reference agrees.
        let packed = Tensor::new(&[theta], &Device::Cpu).unwrap();
        let w: Vec<f64> = recurrent_matrix(&packed, 2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for (g, w) in w.iter().zip(want) {
            assert!((g - w).abs() < 1e-15, "{g} vs {w}");
        }
    }

    #[test]
    fn the_derivative_of_the_exponential_matches_finite_differences() {
        // A non-normal 3×3 matrix and direction, so that the order of the products
        // matters; central differences with step 1e-6 agree to ~1e-9.
        let m = [0.3, -1.2, 0.5, 0.7, 0.1, -0.4, -0.2, 0.9, 0.6];
        let d = [0.5, 0.1, -0.3, 0.2, -0.7, 0.4, 0.8, 0.0, 0.3];
        let s = squarings(&m, 3);
        let analytic = expm(&m, Some(&d), 3, s).tangent.unwrap();
        let eps = 1e-6;
        let shifted = |sign: f64| -> Vec<f64> {
            let p: Vec<f64> = m.iter().zip(&d).map(|(a, b)| a + sign * eps * b).collect();
            expm(&p, None, 3, s).value
        };
        let (plus, minus) = (shifted(1.0), shifted(-1.0));
        for k in 0..9 {
            let numeric = (plus[k] - minus[k]) / (2.0 * eps);
            assert!(
                (numeric - analytic[k]).abs() < 1e-8,
                "entry {k}: {numeric} vs {analytic:?}"
            );
        }
    }

    #[test]
    fn one_step_by_hand() {
        // H = 2, I = 1: A's one entry θ = π/2 gives W = [[0, 1], [−1, 0]]; W_ih = (1, 1),
        // b = (0.1, −0.5). From h = (0.3, 0.2) at x = 0.5: z = (0.5 + 0.2, 0.5 − 0.3) =
        // (0.7, 0.2); modrelu: 0.7 + 0.1 = 0.8, and |0.2| − 0.5 < 0 gives 0.
        // From h = (0.3, 2.0): z = (2.5, 0.2) → (2.6, 0); at x = −1, h = 0: z = (−1, −1)
        // → (−1.1, −0.5).
        let dev = Device::Cpu;
        let mut params = Params::new();
        let put = |p: &mut Params, name: &str, t: Tensor| {
            p.insert(name, Var::from_tensor(&t).unwrap());
        };
        put(
            &mut params,
            "weight_ih_l0",
            Tensor::new(&[[1.0f64], [1.0]], &dev).unwrap(),
        );
        put(
            &mut params,
            "log_weight_hh_l0",
            Tensor::new(&[std::f64::consts::FRAC_PI_2], &dev).unwrap(),
        );
        put(
            &mut params,
            "bias_l0",
            Tensor::new(&[0.1f64, -0.5], &dev).unwrap(),
        );
        let cell = ExpRnn::new(ExpRnnSpec::default(), &params, 0, 1, 2).unwrap();
        for (x, h0, want) in [
            (0.5, [0.3, 0.2], [0.8, 0.0]),
            (0.5, [0.3, 2.0], [2.6, 0.0]),
            (-1.0, [0.0, 0.0], [-1.1, -0.5]),
        ] {
            let state = State {
                h: Tensor::new(&[h0], &dev).unwrap(),
                c: None,
            };
            let xs = Tensor::new(&[[[x]]], &dev).unwrap();
            let (fused, _) = cell.sequence(&xs, &state).unwrap();
            let stepped = cell.step(&xs.squeeze(1).unwrap(), &state).unwrap().h;
            for h in [fused, stepped] {
                let got: Vec<f64> = h.flatten_all().unwrap().to_vec1().unwrap();
                for (g, w) in got.iter().zip(want) {
                    assert!((g - w).abs() < 1e-12, "x = {x}, h0 = {h0:?}: {got:?}");
                }
            }
        }
    }

    #[test]
    fn henaff_initialisation_and_parameter_count() {
        // I = 3, H = 5: W_ih 15 + A's 10 free entries + b 5 = 30; head 1 × 5 + 1 = 6.
        let config = ModelConfig {
            cell: CellConfig::new(ExpRnnSpec::default()),
            input_size: 3,
            hidden: vec![5],
            output_size: 1,
            head: HeadKind::LastStep,
        };
        assert_eq!(config.parameter_count(), 36);
        // A is what the state feeds back through; W_ih and b are not.
        assert_eq!(config.recurrent_params(), ["log_weight_hh_l0"]);
        let params = Init::default()
            .params(&config, 3, DType::F64, &Device::Cpu)
            .unwrap();
        let packed: Vec<f64> = params.get("log_weight_hh_l0").unwrap().to_vec1().unwrap();
        // Only A[0][1] and A[2][3] (the 2×2 blocks) are drawn, in (−π, π).
        for i in 0..5 {
            for j in i + 1..5 {
                let v = packed[packed_index(i, j, 5)];
                if j == i + 1 && i % 2 == 0 {
                    assert!(
                        v != 0.0 && v.abs() < std::f64::consts::PI,
                        "A[{i}][{j}] = {v}"
                    );
                } else {
                    assert_eq!(v, 0.0, "A[{i}][{j}]");
                }
            }
        }
        let bias: Vec<f64> = params.get("bias_l0").unwrap().to_vec1().unwrap();
        assert!(
            bias.iter().all(|b| b.abs() <= MODRELU_BIAS_BOUND),
            "{bias:?}"
        );

        // The Cayley initialisation draws the same blocks in (−1, 0]: −tan(u/2) for
        // u in [0, π/2), e.g. the middle draw u = π/4 gives −tan(π/8).
        let middle = SkewInit::Cayley.block_angle(0.5);
        assert!((middle + (std::f64::consts::PI / 8.0).tan()).abs() < 1e-15);
        let cayley = ModelConfig {
            cell: CellConfig::new(ExpRnnSpec {
                init: SkewInit::Cayley,
            }),
            ..config
        };
        let params = Init::default()
            .params(&cayley, 3, DType::F64, &Device::Cpu)
            .unwrap();
        let packed: Vec<f64> = params.get("log_weight_hh_l0").unwrap().to_vec1().unwrap();
        for (i, j) in [(0, 1), (2, 3)] {
            let v = packed[packed_index(i, j, 5)];
            assert!(v <= 0.0 && v > -1.0, "A[{i}][{j}] = {v}");
        }
        assert_eq!(packed.iter().filter(|v| **v != 0.0).count(), 2);
    }

    #[test]
    fn the_recurrent_matrix_stays_orthogonal_through_training() {
        // 40 Adam steps at lr 0.05 in f32 on a random regression: A's entries move by up
        // to ~0.5 (rotations by half a radian), and WᵀW stays the identity to 1e-5 at
        // every step.
        use candle_nn::Optimizer;
        let dev = Device::Cpu;
        let (input, hidden, batch, seq) = (3, 16, 4, 12);
        let config = ModelConfig {
            cell: CellConfig::new(ExpRnnSpec::default()),
            input_size: input,
            hidden: vec![hidden],
            output_size: 1,
            head: HeadKind::LastStep,
        };
        let params = Init::default()
            .params(&config, 11, DType::F32, &dev)
            .unwrap();
        let packed = params.get("log_weight_hh_l0").unwrap().clone();
        let start: Vec<f32> = packed.to_vec1().unwrap();
        let model = crate::Model::new(&config, &params).unwrap();
        let vars: Vec<Var> = params.iter().map(|(_, v)| v.clone()).collect();
        let mut adam = candle_nn::AdamW::new(
            vars,
            candle_nn::ParamsAdamW {
                lr: 0.05,
                weight_decay: 0.0,
                ..Default::default()
            },
        )
        .unwrap();
        let xs = Tensor::randn(0f32, 1.0, (batch, seq, input), &dev).unwrap();
        let ys = Tensor::randn(0f32, 1.0, (batch, 1), &dev).unwrap();
        let eye = Tensor::eye(hidden, DType::F32, &dev).unwrap();
        for step in 0..40 {
            let (y, _) = model.forward(&xs).unwrap();
            let loss = (y - &ys).unwrap().sqr().unwrap().mean_all().unwrap();
            adam.backward_step(&loss).unwrap();
            let w = recurrent_matrix(packed.as_tensor(), hidden).unwrap();
            let error: f32 = (w.t().unwrap().matmul(&w).unwrap() - &eye)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar()
                .unwrap();
            assert!(error < 1e-5, "step {step}: max |WᵀW − I| = {error}");
        }
        let end: Vec<f32> = packed.to_vec1().unwrap();
        let moved = start
            .iter()
            .zip(&end)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            moved > 0.25,
            "A hardly moved ({moved}): the test would be vacuous"
        );
    }
}
