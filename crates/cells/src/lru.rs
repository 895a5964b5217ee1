//! The linear recurrent unit (LRU), Orvieto et al. 2023.

use candle_core::{D, Result, Tensor, bail};
use rayon::prelude::*;

use crate::cell::{FlowSink, GradFlow, State};
use crate::fused::{
    self, Dims, FlowNorms, Kernel, Real, Saved, add_column_sums, chunk_rows, input_grads,
    input_projection, wide,
};
use crate::layer::{CellConfig, CellKind, CellMath, Layer, block};
use crate::packed::{par_product, par_product_strided};
use crate::spec::{CellSpec, LayerWeights, ParamRole, ParamSpec, layer_ranges};

/// The ring the eigenvalues are drawn from at initialisation: `|λ| ∈ [R_MIN, R_MAX]`
/// (uniform in the disc's area) and phase `arg λ ∈ [0, MAX_PHASE]`, the values of
/// Orvieto et al.'s code for their long-range tasks.
pub(crate) const R_MIN: f64 = 0.9;
/// See [`R_MIN`].
pub(crate) const R_MAX: f64 = 0.999;
/// See [`R_MIN`].
pub(crate) const MAX_PHASE: f64 = std::f64::consts::TAU;

/// LRU layer (Orvieto et al. 2023, "Resurrecting Recurrent Neural Networks for Long
/// Sequences"): a linear recurrence with a diagonal complex matrix, `H` complex units,
///
/// ```text
/// λ = exp(−exp(ν) + i·exp(θ))            (|λ| < 1 for any ν: stable by construction)
/// γ = √(1 − |λ|²)                         (normalisation)
/// x_t = λ ⊙ x_{t−1} + γ ⊙ (B x̃_t)        (complex, B = B_re + i·B_im)
/// y_t = Re(C x_t) + D x̃_t + b             (Re(C x) = C_re·Re x − C_im·Im x)
/// h_t = GELU(y_t)                         (tanh approximation)
/// ```
///
/// where `x̃_t` is the layer's input. `∂x_t/∂x_{t−1}` is the diagonal `λ`, so the
/// gradient reaching early steps decays as `|λ|^T` and no faster: with `|λ|` near 1
/// (the ring initialisation puts it in [0.9, 0.999]) memory spans hundreds of steps.
/// The paper follows each LRU with an MLP or GLU per step; the GELU here is the least
/// of that which makes one layer nonlinear (a linear layer cannot multiply the adding
/// task's marker by its value). `γ` is computed from `λ` at every step rather than
/// trained on its own (the paper initialises its `γ_log` to exactly this).
/// Parameters: `nu_log` and `theta_log` `(H)`, `weight_ih` `(3H, I)` (rows `B_re`,
/// `B_im`, `D`), `bias` `(H)`, `weight_c` `(H, 2H)` (`[C_re | −C_im]`, acting on
/// `[Re x | Im x]`). The state carries `h` and `c = [Re x | Im x]`.
pub type Lru = Layer<LruSpec>;

/// The LRU's options (none: the ring is 0.9 ≤ |λ| ≤ 0.999, phases up to 2π).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LruSpec;

/// `model.cell: lru`.
pub static LRU: CellKind = CellKind {
    name: "lru",
    display: "LRU",
    summary: "LRU (Orvieto et al. 2023): x = λ ⊙ x + γ ⊙ B u (diagonal complex λ, ring init), h = GELU(Re(C x) + D u + b)",
    configure: |options| {
        options.only_defaults("lru")?;
        Ok(CellConfig::new(LruSpec))
    },
    colors: &[("lru", [200, 80, 160])],
    examples: || vec![CellConfig::new(LruSpec)],
};

impl CellSpec for LruSpec {
    fn label(&self) -> String {
        "lru".into()
    }

    fn cell_state_size(&self, hidden: usize) -> usize {
        2 * hidden
    }

    fn flow_on_cell_state(&self) -> bool {
        true
    }

    fn layer_params(&self, input: usize, hidden: usize) -> Vec<ParamSpec> {
        vec![
            ParamSpec::new("nu_log", &[hidden], ParamRole::RingRadius),
            ParamSpec::new("theta_log", &[hidden], ParamRole::RingPhase),
            ParamSpec::new("weight_ih", &[3 * hidden, input], ParamRole::InputWeight),
            ParamSpec::new("bias", &[hidden], ParamRole::Bias { forget_block: None }),
            ParamSpec::new("weight_c", &[hidden, 2 * hidden], ParamRole::InputWeight),
        ]
    }

    fn saved_floats_per_step(&self, hidden: usize) -> usize {
        // B x̃ (2H), the state (2H), y (H) and the output.
        6 * hidden
    }

    fn has_cuda_kernel(&self) -> bool {
        true
    }
}

/// `(Re λ, Im λ, γ)` of every unit from `ν` and `θ`, in f64.
fn eigenvalues(nu_log: &[f64], theta_log: &[f64]) -> Vec<(f64, f64, f64)> {
    nu_log
        .iter()
        .zip(theta_log)
        .map(|(&nu, &theta)| {
            let (radius, phase) = ((-nu.exp()).exp(), theta.exp());
            (
                radius * phase.cos(),
                radius * phase.sin(),
                (1.0 - radius * radius).sqrt(),
            )
        })
        .collect()
}

/// `GELU(y)` in the tanh approximation, and its derivative.
/// `∂L/∂ν` and `∂L/∂θ` into `d_params` from each unit's `∂L/∂(Re λ, Im λ, γ)`, through
/// `λ = r·e^{iφ}`, `r = exp(−e^ν)`, `φ = e^θ`, `γ = √(1 − r²)`, in f64.
fn ring_grads<T: Real>(
    sums: &[[f64; 3]],
    params: &[T],
    (nu, theta): (std::ops::Range<usize>, std::ops::Range<usize>),
    d_params: &mut [T],
) {
    for (j, &[d_re, d_im, d_gamma]) in sums.iter().enumerate() {
        let (e_nu, phase) = (
            params[nu.start + j].to_f64().exp(),
            params[theta.start + j].to_f64().exp(),
        );
        let radius = (-e_nu).exp();
        let gamma = (1.0 - radius * radius).sqrt();
        let d_radius = d_re * phase.cos() + d_im * phase.sin() - d_gamma * radius / gamma;
        let d_phase = radius * (d_im * phase.cos() - d_re * phase.sin());
        d_params[nu.start + j] = T::from_f64(d_radius * (-e_nu * radius));
        d_params[theta.start + j] = T::from_f64(d_phase * phase);
    }
}

#[inline(always)]
fn gelu<T: Real>(y: T) -> (T, T) {
    let k = T::from_f64(0.797_884_560_802_865_4); // √(2/π)
    let c = T::from_f64(0.044_715);
    let half = T::from_f64(0.5);
    let t = (k * (y + c * y * y * y)).tanh_();
    let value = half * y * (T::ONE + t);
    let slope = half * (T::ONE + t)
        + half * y * (T::ONE - t * t) * k * (T::ONE + T::from_f64(3.0) * c * y * y);
    (value, slope)
}

impl CellMath for LruSpec {
    fn step(&self, weights: &LayerWeights, x: &Tensor, state: &State) -> Result<State> {
        self.step_probed(weights, x, state, &Ok)
    }

    fn step_probed(
        &self,
        weights: &LayerWeights,
        x: &Tensor,
        state: &State,
        probe: &dyn Fn(Tensor) -> Result<Tensor>,
    ) -> Result<State> {
        let hidden = weights.hidden;
        let [nu_log, theta_log, weight_ih, bias, weight_c] =
            [0, 1, 2, 3, 4].map(|k| weights.get(k));
        let radius = nu_log?.exp()?.neg()?.exp()?;
        let phase = theta_log?.exp()?;
        let (re, im) = ((&radius * phase.cos()?)?, (&radius * phase.sin()?)?);
        let gamma = (radius.sqr()?.neg()? + 1.0)?.sqrt()?;
        let projected = x.matmul(&weight_ih?.t()?)?;
        let carried = state.c.as_ref().expect("checked: LRU state has c");
        let (x_re, x_im) = (block(carried, 0, hidden)?, block(carried, 1, hidden)?);
        let next_re = ((x_re.broadcast_mul(&re)? - x_im.broadcast_mul(&im)?)?
            + block(&projected, 0, hidden)?.broadcast_mul(&gamma)?)?;
        let next_im = ((x_im.broadcast_mul(&re)? + x_re.broadcast_mul(&im)?)?
            + block(&projected, 1, hidden)?.broadcast_mul(&gamma)?)?;
        let c = probe(Tensor::cat(&[&next_re, &next_im], D::Minus1)?)?;
        let y =
            (c.matmul(&weight_c?.t()?)? + block(&projected, 2, hidden)?)?.broadcast_add(bias?)?;
        // GELU written out: candle's own `gelu` differentiates with constants rounded
        // to 6 digits, and this graph is the reference the fused kernel is checked by.
        let inner = ((&y + (y.powf(3.0)? * 0.044_715)?)? * 0.797_884_560_802_865_4)?;
        let h = ((inner.tanh()? + 1.0)? * &y)?.affine(0.5, 0.0)?;
        Ok(State { h, c: Some(c) })
    }

    fn fused(
        &self,
        weights: &LayerWeights,
        xs: &Tensor,
        state: &State,
    ) -> Result<(Tensor, State, GradFlow)> {
        let c0 = state.c.as_ref().expect("checked: LRU state has c");
        let state0 = Tensor::cat(&[&state.h, c0], 1)?;
        // Output (B, T + 2, H): h of every step, then Re x_T and Im x_T.
        let (out, flow) = fused::apply(xs, &state0, weights, |dims, flow| LruOp {
            dims,
            saved: Saved::default(),
            flow,
        })?;
        let seq_len = out.dim(1)? - 2;
        let hs = out.narrow(1, 0, seq_len)?;
        let h = fused::step_of(&out, seq_len - 1)?;
        let c = out.narrow(1, seq_len, 2)?.flatten_from(1)?;
        Ok((hs, State { h, c: Some(c) }, flow))
    }
}

/// The fused LRU: one GEMM projects every step's input (`B x̃`, `D x̃`), the complex
/// recurrence is pointwise, and one GEMM maps every step's state to `y`.
struct LruOp {
    dims: Dims,
    /// `(projections (B·T, 3H), states (B·T, 2H), y (B·T, H))` of the forward.
    saved: Saved,
    flow: FlowSink,
}

/// `Re λ`, `Im λ` and `γ` of every unit, each its own vector so that the loops over
/// units vectorise.
struct Units<T> {
    re: Vec<T>,
    im: Vec<T>,
    gamma: Vec<T>,
}

/// Per unit, `∂L/∂(Re λ)`, `∂L/∂(Im λ)` and `∂L/∂γ` summed in f64 over steps and rows.
struct RingSums {
    re: Vec<f64>,
    im: Vec<f64>,
    gamma: Vec<f64>,
}

/// One step of the LRU's reverse recurrence for one batch row: with `d_x = ∂L/∂x_t`
/// `[re | im]`, the previous state `prev` and `p = B x̃_t` `[re | im]`, adds each unit's
/// `∂L/∂(Re λ, Im λ, γ)` to `sums`, turns `p` into its gradient `γ ∂L/∂x_t`, and `d_x`
/// into `∂L/∂x_{t−1} = λ̄ ∂L/∂x_t` (without the readout's share). Each unit alone, so the
/// loop vectorises; the sums in f64, added in the order of the steps.
#[inline(always)]
fn reverse_step<T: Real>(
    units: &Units<T>,
    sums: &mut RingSums,
    d_x: &mut [T],
    prev: &[T],
    p: &mut [T],
) {
    let hidden = units.re.len();
    let (d_re, d_im) = d_x.split_at_mut(hidden);
    let (x_re, x_im) = prev.split_at(hidden);
    let (p_re, p_im) = p.split_at_mut(hidden);
    // Every slice exactly `hidden` long, so the loop has no bounds checks.
    let (x_im, p_im, d_im) = (&x_im[..hidden], &mut p_im[..hidden], &mut d_im[..hidden]);
    let (l_re, l_im, gamma) = (&units.re[..], &units.im[..hidden], &units.gamma[..hidden]);
    let (s_re, s_im, s_gamma) = (
        &mut sums.re[..hidden],
        &mut sums.im[..hidden],
        &mut sums.gamma[..hidden],
    );
    for j in 0..hidden {
        let (dr, di) = (d_re[j], d_im[j]);
        let (xr, xi) = (x_re[j], x_im[j]);
        s_re[j] += (dr * xr + di * xi).to_f64();
        s_im[j] += (di * xr - dr * xi).to_f64();
        s_gamma[j] += (dr * p_re[j] + di * p_im[j]).to_f64();
        p_re[j] = gamma[j] * dr;
        p_im[j] = gamma[j] * di;
        d_re[j] = l_re[j] * dr + l_im[j] * di;
        d_im[j] = l_re[j] * di - l_im[j] * dr;
    }
}

/// The LRU's recurrence `x_t = λ ⊙ x_{t−1} + γ ⊙ B x̃_t` over the batch rows of one
/// chunk: `states (B, T, 2H)` from `projected (B, T, 3H)` and `state0 (B, 3H)`. A
/// function of its own so that it is compiled inside [`wide`]'s AVX2 function: written
/// in the forward's closure it was not (`perf annotate`: scalar SSE with bounds checks).
#[inline(always)]
fn forward_rows<T: Real>(units: &Units<T>, states: &mut [T], projected: &[T], state0: &[T]) {
    let hidden = units.re.len();
    let rows = state0.len() / (3 * hidden);
    let (s_rs, p_rs) = (states.len() / rows, projected.len() / rows);
    for ((row, p), s0) in states
        .chunks_exact_mut(s_rs)
        .zip(projected.chunks_exact(p_rs))
        .zip(state0.chunks_exact(3 * hidden))
    {
        let (mut re, mut im) = (s0[hidden..2 * hidden].to_vec(), s0[2 * hidden..].to_vec());
        for (p, s) in p
            .chunks_exact(3 * hidden)
            .zip(row.chunks_exact_mut(2 * hidden))
        {
            let (s_re, s_im) = s.split_at_mut(hidden);
            forward_step(units, &mut re, &mut im, s_re, s_im, p);
        }
    }
}

/// One step of [`forward_rows`] for one row, every slice an argument of its own (so the
/// compiler knows they do not overlap) and cut to `H` (no bounds checks).
#[inline(always)]
fn forward_step<T: Real>(
    units: &Units<T>,
    re: &mut [T],
    im: &mut [T],
    s_re: &mut [T],
    s_im: &mut [T],
    projected: &[T],
) {
    let hidden = units.re.len();
    let (l_re, l_im, gamma) = (&units.re[..], &units.im[..hidden], &units.gamma[..hidden]);
    let (re, im, s_re, s_im) = (
        &mut re[..hidden],
        &mut im[..hidden],
        &mut s_re[..hidden],
        &mut s_im[..hidden],
    );
    let (p_re, p_im) = (&projected[..hidden], &projected[hidden..2 * hidden]);
    for j in 0..hidden {
        let next_re = l_re[j] * re[j] - l_im[j] * im[j] + gamma[j] * p_re[j];
        let next_im = l_re[j] * im[j] + l_im[j] * re[j] + gamma[j] * p_im[j];
        (re[j], im[j]) = (next_re, next_im);
        s_re[j] = next_re;
        s_im[j] = next_im;
    }
}

/// What the forward keeps for the backward.
struct Activations<T> {
    projected: Vec<T>,
    states: Vec<T>,
    y: Vec<T>,
}

impl LruOp {
    /// `[nu_log, theta_log, weight_ih, bias, weight_c]` ranges and the total length.
    fn ranges(&self) -> ([std::ops::Range<usize>; 5], usize) {
        layer_ranges(&LruSpec, self.dims.input, self.dims.hidden)
    }

    /// `(Re λ, Im λ, γ)` of every unit, computed in f64 and stored as `T`.
    fn unit_constants<T: Real>(&self, params: &[T]) -> Units<T> {
        let ([nu, theta, ..], _) = self.ranges();
        let f = |range: std::ops::Range<usize>| -> Vec<f64> {
            params[range].iter().map(|v| v.to_f64()).collect()
        };
        let values = eigenvalues(&f(nu), &f(theta));
        let column = |pick: fn(&(f64, f64, f64)) -> f64| -> Vec<T> {
            values.iter().map(|v| T::from_f64(pick(v))).collect()
        };
        Units {
            re: column(|v| v.0),
            im: column(|v| v.1),
            gamma: column(|v| v.2),
        }
    }
}

impl Kernel for LruOp {
    const NAME: &'static str = "fused-lru";

    fn dims(&self) -> Dims {
        self.dims
    }

    fn out_shape(&self) -> candle_core::Shape {
        let Dims {
            batch,
            seq_len,
            hidden,
            ..
        } = self.dims;
        candle_core::Shape::from((batch, seq_len + 2, hidden))
    }

    fn forward<T: Real>(&self, x: &[T], state0: &[T], params: &[T]) -> Result<Vec<T>> {
        let Dims {
            batch,
            seq_len,
            input,
            hidden,
            ..
        } = self.dims;
        let ([_, _, w_ih, bias, w_c], total) = self.ranges();
        if params.len() != total || x.len() != batch * seq_len * input {
            bail!("fused LRU: inputs do not match the layer's sizes");
        }
        let units = self.unit_constants(params);
        let zeros = vec![T::ZERO; 3 * hidden];
        let projected = input_projection(x, &params[w_ih], &zeros, batch * seq_len, input);
        // The recurrence, per batch chunk: states (B, T, 2H) = [Re x_t | Im x_t].
        let mut states = vec![T::ZERO; batch * seq_len * 2 * hidden];
        let rows = chunk_rows(batch);
        let (p_rs, s_rs, st_rs) = (seq_len * 3 * hidden, seq_len * 2 * hidden, 3 * hidden);
        states
            .par_chunks_mut(rows * s_rs)
            .zip(projected.par_chunks(rows * p_rs))
            .zip(state0.par_chunks(rows * st_rs))
            .for_each(|((states, projected), state0)| {
                wide(|| forward_rows(&units, states, projected, state0));
            });
        // y = states · weight_cᵀ + D x̃ + b, for every step at once.
        let steps = batch * seq_len;
        let mut y = vec![T::ZERO; steps * hidden];
        for (y, p) in y
            .chunks_exact_mut(hidden)
            .zip(projected.chunks_exact(3 * hidden))
        {
            y.iter_mut()
                .zip(&p[2 * hidden..])
                .zip(&params[bias.clone()])
                .for_each(|((y, &d), &b)| *y = d + b);
        }
        par_product_strided(
            &mut y,
            (&states, 2 * hidden, 1),
            (&params[w_c], 1, 2 * hidden),
            (2 * hidden, hidden),
            true,
        );
        let mut out = vec![T::ZERO; batch * (seq_len + 2) * hidden];
        let out_rs = (seq_len + 2) * hidden;
        // The readout per batch row, in parallel (elementwise: the same bits whatever
        // the threads).
        out.par_chunks_mut(out_rs)
            .zip(y.par_chunks(seq_len * hidden))
            .zip(states.par_chunks(s_rs))
            .for_each(|((out, y), states)| {
                wide(|| {
                    for (o, &v) in out.iter_mut().zip(y) {
                        *o = gelu(v).0;
                    }
                    out[seq_len * hidden..].copy_from_slice(&states[s_rs - 2 * hidden..]);
                })
            });
        *self.saved.lock().expect("saved activations") = Some(Box::new(Activations {
            projected,
            states,
            y,
        }));
        Ok(out)
    }

    fn backward<T: Real>(
        &self,
        x: &[T],
        state0: &[T],
        params: &[T],
        _out: &[T],
        grad_out: &[T],
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)> {
        let Dims {
            batch,
            seq_len,
            input,
            hidden,
            ..
        } = self.dims;
        let ([nu, theta, w_ih, bias, w_c], total) = self.ranges();
        let act = fused::take_saved::<Activations<T>>(&self.saved, Self::NAME)?;
        let Activations {
            mut projected,
            states,
            y,
        } = act;
        let units = self.unit_constants(params);
        let steps = batch * seq_len;
        let out_rs = (seq_len + 2) * hidden;
        // ∂L/∂y, and ∂L/∂x_T from the final-state rows of the output.
        let mut d_y = vec![T::ZERO; steps * hidden];
        d_y.par_chunks_mut(seq_len * hidden)
            .zip(grad_out.par_chunks(out_rs))
            .zip(y.par_chunks(seq_len * hidden))
            .for_each(|((d_y, grad), y)| {
                wide(|| {
                    for ((d, &g), &v) in d_y.iter_mut().zip(grad).zip(y) {
                        *d = g * gelu(v).1;
                    }
                })
            });
        let mut d_params = vec![T::ZERO; total];
        // ∂L/∂weight_c = d_yᵀ · states; ∂L/∂states = d_y · weight_c.
        par_product(
            &mut d_params[w_c.clone()],
            (&d_y, 1, hidden),
            &states,
            steps,
            2 * hidden,
        );
        let mut d_states = vec![T::ZERO; steps * 2 * hidden];
        par_product(
            &mut d_states,
            (&d_y, hidden, 1),
            &params[w_c.clone()],
            hidden,
            2 * hidden,
        );
        add_column_sums(&mut d_params[bias], &d_y, hidden);
        // The reverse recurrence per batch row, in f64 for the per-unit sums: turns the
        // projections into their gradients (γ ∂L/∂x_t for B x̃, ∂L/∂y for D x̃) and sums
        // ∂L/∂(Re λ, Im λ, γ) per unit.
        let mut d_state0 = vec![T::ZERO; batch * 3 * hidden];
        let (p_rs, s_rs) = (seq_len * 3 * hidden, seq_len * 2 * hidden);
        let rows = chunk_rows(batch);
        let parts: Vec<(RingSums, FlowNorms)> = projected
            .par_chunks_mut(rows * p_rs)
            .zip(d_state0.par_chunks_mut(rows * 3 * hidden))
            .zip(states.par_chunks(rows * s_rs))
            .zip(d_states.par_chunks(rows * s_rs))
            .zip(d_y.par_chunks(rows * seq_len * hidden))
            .zip(state0.par_chunks(rows * 3 * hidden))
            .zip(grad_out.par_chunks(rows * out_rs))
            .map(
                |((((((projected, d_state0), states), d_states), d_y), state0), grad)| {
                    wide(|| {
                        let mut sums = RingSums {
                            re: vec![0.0; hidden],
                            im: vec![0.0; hidden],
                            gamma: vec![0.0; hidden],
                        };
                        let mut flow = FlowNorms::new(seq_len, &self.flow);
                        let chunk_batch = state0.len() / (3 * hidden);
                        for b in 0..chunk_batch {
                            let p = &mut projected[b * p_rs..(b + 1) * p_rs];
                            let (s, ds) = (&states[b * s_rs..], &d_states[b * s_rs..]);
                            let d_y = &d_y[b * seq_len * hidden..];
                            let s0 = &state0[b * 3 * hidden + hidden..(b + 1) * 3 * hidden];
                            // ∂L/∂x_T through the final-state output rows.
                            let last = &grad[b * out_rs + seq_len * hidden..(b + 1) * out_rs];
                            let mut d_x: Vec<T> = last.to_vec();
                            for t in (0..seq_len).rev() {
                                let now = t * 2 * hidden;
                                let prev: &[T] = if t == 0 {
                                    s0
                                } else {
                                    &s[now - 2 * hidden..now]
                                };
                                for j in 0..2 * hidden {
                                    d_x[j] += ds[now + j];
                                }
                                flow.add(t, &d_x);
                                let p_t = &mut p[t * 3 * hidden..(t + 1) * 3 * hidden];
                                let (p_x, p_d) = p_t.split_at_mut(2 * hidden);
                                reverse_step(&units, &mut sums, &mut d_x, prev, p_x);
                                p_d.copy_from_slice(&d_y[t * hidden..(t + 1) * hidden]);
                            }
                            d_state0[b * 3 * hidden + hidden..(b + 1) * 3 * hidden]
                                .copy_from_slice(&d_x);
                        }
                        (sums, flow)
                    })
                },
            )
            .collect();
        FlowNorms::finish(parts.iter().map(|(_, flow)| flow), self.dims, &self.flow);
        let sums: Vec<[f64; 3]> = (0..hidden)
            .map(|j| {
                parts.iter().fold([0.0; 3], |acc, (sums, _)| {
                    [
                        acc[0] + sums.re[j],
                        acc[1] + sums.im[j],
                        acc[2] + sums.gamma[j],
                    ]
                })
            })
            .collect();
        ring_grads(&sums, params, (nu, theta), &mut d_params);
        let d_x = input_grads(
            &projected,
            x,
            &params[w_ih.clone()],
            (&mut d_params[w_ih], None),
            (steps, 3 * hidden, input),
            self.dims.input_grad,
        );
        Ok((d_x, d_state0, d_params))
    }

    #[cfg(feature = "cuda")]
    fn cuda_forward(
        &self,
        gpu: &crate::cuda::Gpu,
        x: &[f32],
        state0: &[f32],
        params: &[f32],
    ) -> Result<Vec<f32>> {
        let (ranges, total) = self.ranges();
        if params.len() != total {
            bail!("fused LRU: inputs do not match the layer's sizes");
        }
        let units = self.unit_constants::<f32>(params);
        // [Re λ | Im λ | γ], H each.
        let flat = [units.re, units.im, units.gamma].concat();
        let (out, saved) =
            crate::cuda::lru_forward(gpu, (self.dims, &ranges), &flat, (x, state0, params))?;
        *self.saved.lock().expect("saved activations") = Some(Box::new(saved));
        Ok(out)
    }

    #[cfg(feature = "cuda")]
    fn cuda_backward(
        &self,
        gpu: &crate::cuda::Gpu,
        _x: &[f32],
        _state0: &[f32],
        params: &[f32],
        _out: &[f32],
        grad_out: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let (ranges, _) = self.ranges();
        let saved = fused::take_saved::<crate::cuda::LruGpuSaved>(&self.saved, Self::NAME)?;
        let (mut grads, sums) =
            crate::cuda::lru_backward(gpu, (self.dims, &ranges), saved, grad_out)?;
        let [nu, theta, ..] = ranges;
        ring_grads(&sums, params, (nu, theta), &mut grads.d_params);
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
    fn parameter_count_and_ring_by_hand() {
        // I = 3, H = 4: ν 4 + θ 4 + W_ih 12·3 + b 4 + W_c 4·8 = 80; head (1 on 4) 5.
        let config = ModelConfig {
            cell: CellConfig::new(LruSpec),
            input_size: 3,
            hidden: vec![4],
            output_size: 1,
            head: HeadKind::LastStep,
        };
        assert_eq!(config.parameter_count(), 85);
        let params = Init::default()
            .params(&config, 0, DType::F64, &Device::Cpu)
            .unwrap();
        let values = |name: &str| -> Vec<f64> { params.get(name).unwrap().to_vec1().unwrap() };
        for (re, im, gamma) in eigenvalues(&values("nu_log_l0"), &values("theta_log_l0")) {
            let radius = re.hypot(im);
            assert!((R_MIN..=R_MAX).contains(&radius), "|λ| = {radius}");
            assert!((gamma * gamma + radius * radius - 1.0).abs() < 1e-12);
        }
    }

    #[test]
    fn one_unit_two_steps_by_hand() {
        // ν = ln(ln 2) so r = exp(−ln 2) = 0.5; θ = ln(π/2) so λ = 0.5i; γ = √0.75.
        // B = 1 + 0i, D = 0, b = 0, C = [1 | 0] (y = Re x); x̃ = (1, 1), x_0 = 0:
        // x_1 = γ = 0.8660; x_2 = 0.5i·γ + γ = γ(1 + 0.5i); y = (γ, γ).
        let dev = Device::Cpu;
        let mut params = Params::new();
        let put = |params: &mut Params, name: &str, values: &[f64], dims: &[usize]| {
            let tensor = Tensor::from_vec(values.to_vec(), dims, &dev).unwrap();
            params.insert(name, Var::from_tensor(&tensor).unwrap());
        };
        put(&mut params, "nu_log_l0", &[2f64.ln().ln()], &[1]);
        put(
            &mut params,
            "theta_log_l0",
            &[std::f64::consts::FRAC_PI_2.ln()],
            &[1],
        );
        put(&mut params, "weight_ih_l0", &[1.0, 0.0, 0.0], &[3, 1]);
        put(&mut params, "bias_l0", &[0.0], &[1]);
        put(&mut params, "weight_c_l0", &[1.0, 0.0], &[1, 2]);
        let cell = Lru::new(LruSpec, &params, 0, 1, 1).unwrap();
        let xs = Tensor::new(&[[[1.0f64], [1.0]]], &dev).unwrap();
        let state = cell.zero_state(1).unwrap();
        let (hs, last) = cell.sequence(&xs, &state).unwrap();
        let gamma = 0.75f64.sqrt();
        let gelu = |y: f64| {
            0.5 * y * (1.0 + (0.797_884_560_802_865_4 * (y + 0.044_715 * y.powi(3))).tanh())
        };
        let got: Vec<f64> = hs.flatten_all().unwrap().to_vec1().unwrap();
        for g in &got {
            assert!((g - gelu(gamma)).abs() < 1e-12, "{got:?}");
        }
        let c: Vec<f64> = last.c.unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(
            (c[0] - gamma).abs() < 1e-12 && (c[1] - 0.5 * gamma).abs() < 1e-12,
            "{c:?}"
        );
    }
}
