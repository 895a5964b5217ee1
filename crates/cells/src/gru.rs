//! The GRU, in both reset conventions.

use candle_core::{Result, Tensor, bail};
use candle_nn::ops::sigmoid;
use rayon::prelude::*;

use crate::cell::{FlowSink, GradFlow, State};
use crate::fused::{
    self, Dims, FlowNorms, GatedOffsets, Kernel, Real, Saved, add_column_sums, chunk_rows,
    input_grads, previous_state, two_mut, wide,
};
use crate::layer::{CellConfig, CellKind, CellMath, Layer, affine, block};
use crate::packed::{Panels, par_product, par_product_rows};
use crate::spec::{CellSpec, LayerWeights, ParamSpec, gated_layer};

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
pub type Gru = Layer<GruReset>;

/// Where the GRU applies its reset gate: the GRU's options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GruReset {
    /// `n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))`: PyTorch, cuDNN, Keras 3 default.
    #[default]
    After,
    /// `n = tanh(W_in x + b_in + W_hn (r ⊙ h) + b_hn)`: Cho et al. 2014, Keras
    /// `reset_after=False`.
    Before,
}

/// `model.cell: gru` (with `model.gru_reset: after | before`).
pub static GRU: CellKind = CellKind {
    name: "gru",
    display: "GRU",
    summary: "GRU (Cho et al. 2014; torch.nn.GRU), reset gate after W_hn or before (gru_reset)",
    configure: |options| {
        let reset = if options.reset_before {
            GruReset::Before
        } else {
            GruReset::After
        };
        if options.has_ablation() {
            return Err(
                "`model.ablation` is only allowed with `cell: lstm` or `peephole_lstm`, not `gru`"
                    .into(),
            );
        }
        options.refuse_scan("gru")?;
        options.refuse_skew_init("gru")?;
        options.refuse_indrnn_init("gru")?;
        Ok(CellConfig::new(reset))
    },
    colors: &[("gru", [213, 94, 0]), ("gru (reset before)", [230, 159, 0])],
    examples: || {
        vec![
            CellConfig::new(GruReset::After),
            CellConfig::new(GruReset::Before),
        ]
    },
};

impl CellSpec for GruReset {
    fn label(&self) -> String {
        match self {
            Self::After => "gru".into(),
            Self::Before => "gru (reset before)".into(),
        }
    }

    fn layer_params(&self, input: usize, hidden: usize) -> Vec<ParamSpec> {
        gated_layer(3, input, hidden, None)
    }

    fn saved_floats_per_step(&self, hidden: usize) -> usize {
        // Gates r, z, n, one extra vector (W_hn h + b_hn or r ⊙ h) and the output.
        5 * hidden
    }

    fn has_cuda_kernel(&self) -> bool {
        true
    }
}

impl CellMath for GruReset {
    fn fused(
        &self,
        weights: &LayerWeights,
        xs: &Tensor,
        state: &State,
    ) -> Result<(Tensor, State, GradFlow)> {
        let (out, flow) = fused::apply(xs, &state.h, weights, |dims, flow| GruOp {
            dims,
            reset: *self,
            saved: Saved::default(),
            flow,
        })?;
        let h = fused::step_of(&out, out.dim(1)? - 1)?;
        Ok((out, State { h, c: None }, flow))
    }

    fn step(&self, weights: &LayerWeights, x: &Tensor, state: &State) -> Result<State> {
        let [weight_ih, weight_hh, bias_ih, bias_hh] = weights.four()?;
        let hidden = weights.hidden;
        let h = &state.h;
        let from_input = affine(x, weight_ih, bias_ih)?;
        let (pre_r, pre_z, recurrent_n) = match self {
            GruReset::After => {
                let from_h = affine(h, weight_hh, bias_hh)?;
                let recurrent_n = block(&from_h, 2, hidden)?;
                (
                    block(&from_h, 0, hidden)?,
                    block(&from_h, 1, hidden)?,
                    Some(recurrent_n),
                )
            }
            GruReset::Before => {
                let w_rz = weight_hh.narrow(0, 0, 2 * hidden)?;
                let b_rz = bias_hh.narrow(0, 0, 2 * hidden)?;
                let from_h = affine(h, &w_rz, &b_rz)?;
                (block(&from_h, 0, hidden)?, block(&from_h, 1, hidden)?, None)
            }
        };
        let r = sigmoid(&(block(&from_input, 0, hidden)? + pre_r)?)?;
        let z = sigmoid(&(block(&from_input, 1, hidden)? + pre_z)?)?;
        let recurrent_n = match recurrent_n {
            Some(recurrent_n) => (r * recurrent_n)?,
            None => {
                let w_n = weight_hh.narrow(0, 2 * hidden, hidden)?;
                let b_n = bias_hh.narrow(0, 2 * hidden, hidden)?;
                affine(&(r * h)?, &w_n, &b_n)?
            }
        };
        let n = (block(&from_input, 2, hidden)? + recurrent_n)?.tanh()?;
        // (1 − z) ⊙ n + z ⊙ h, written as n + z ⊙ (h − n).
        let h = (&n + (z * (h - &n)?)?)?;
        Ok(State { h, c: None })
    }
}

// The fused kernel: the whole sequence as one candle op (see `crate::fused`).

struct GruOp {
    dims: Dims,
    reset: GruReset,
    saved: Saved,
    flow: FlowSink,
}

/// Activated gates `[r, z, n]` `(B, T, 3H)` and, per step, `W_hn h + b_hn` (reset after)
/// or `r ⊙ h` (reset before) `(B, T, H)`.
struct GruSaved<T> {
    gates: Vec<T>,
    extra: Vec<T>,
}

/// The GRU's recurrent GEMMs on packed weights: `main` multiplies by `W_hh` (all three
/// gates with the reset after `W_hn`; r and z with it before), `n` by `W_hn` alone (the
/// reset before it, applied to `r ⊙ h`).
struct GruPanels<T> {
    main: Panels<T>,
    n: Option<Panels<T>>,
}

impl<T: Real> GruPanels<T> {
    /// For the forward's `h · W_hhᵀ`: `W_hh` read transposed.
    fn forward(weight_hh: &[T], reset: GruReset, hidden: usize, rows: usize) -> Self {
        let transposed =
            |w: &[T], gates| Panels::pack(w, (1, hidden), hidden, (gates, hidden), rows);
        match reset {
            GruReset::After => Self {
                main: transposed(weight_hh, 3),
                n: None,
            },
            GruReset::Before => Self {
                main: transposed(weight_hh, 2),
                n: Some(transposed(&weight_hh[2 * hidden * hidden..], 1)),
            },
        }
    }

    /// For the backward's `∂L/∂h_{t−1} = d_rec · W_hh`: `W_hh` as it is.
    fn backward(weight_hh: &[T], reset: GruReset, hidden: usize, rows: usize) -> Self {
        let plain =
            |w: &[T], gates: usize| Panels::pack(w, (hidden, 1), gates * hidden, (1, hidden), rows);
        match reset {
            GruReset::After => Self {
                main: plain(weight_hh, 3),
                n: None,
            },
            GruReset::Before => Self {
                main: plain(weight_hh, 2),
                n: Some(plain(&weight_hh[2 * hidden * hidden..], 1)),
            },
        }
    }

    /// The `W_hn` panels of the reset-before GRU.
    fn n(&self) -> &Panels<T> {
        self.n
            .as_ref()
            .expect("W_hn panels with the reset before W_hn")
    }
}

impl GruOp {
    /// The time loop for the batch rows of one chunk: `[gates, out, extra]` as in the
    /// forward, `h0` the chunk's initial states.
    #[inline(always)]
    fn forward_chunk<T: Real>(
        &self,
        [gates, out, extra]: [&mut [T]; 3],
        h0: &[T],
        recurrent: &GruPanels<T>,
        bias_hh: &[T],
    ) {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let reset = self.reset;
        let gh = 3 * hidden;
        let batch = h0.len() / hidden;
        let out_rs = seq_len * hidden;
        // Per step: h W_hhᵀ (reset after) or h W_hrzᵀ (reset before), then (W_hn (r ⊙ h)).
        let mut products = vec![T::ZERO; batch * gh];
        for t in 0..seq_len {
            let (h_prev, h_rs) = if t == 0 {
                (h0, hidden)
            } else {
                (&out[(t - 1) * hidden..], out_rs)
            };
            recurrent
                .main
                .mul((&mut products, gh), (h_prev, h_rs, 1), batch, false);
            if reset == GruReset::Before {
                for b in 0..batch {
                    let row = (b * seq_len + t) * gh;
                    let (rz, rec) = (
                        &mut gates[row..row + 2 * hidden],
                        &products[b * gh..b * gh + 2 * hidden],
                    );
                    rz.iter_mut()
                        .zip(rec)
                        .for_each(|(g, &r)| *g = (*g + r).sigmoid_());
                    let h = &h_prev[b * h_rs..b * h_rs + hidden];
                    let rh = &mut extra[(b * seq_len + t) * hidden..(b * seq_len + t + 1) * hidden];
                    rh.iter_mut()
                        .zip(rz[..hidden].iter().zip(h))
                        .for_each(|(v, (&r, &h))| *v = r * h);
                }
                // The n columns of `products` get (r ⊙ h) W_hnᵀ.
                recurrent.n().mul(
                    (&mut products[2 * hidden..], gh),
                    (&extra[t * hidden..], seq_len * hidden, 1),
                    batch,
                    false,
                );
            }
            for b in 0..batch {
                let row = (b * seq_len + t) * gh;
                let cell = (b * seq_len + t) * hidden;
                let g = &mut gates[row..row + gh];
                let rec = &products[b * gh..(b + 1) * gh];
                let (rz, n) = g.split_at_mut(2 * hidden);
                let n_rec = &rec[2 * hidden..];
                if reset == GruReset::After {
                    rz.iter_mut()
                        .zip(&rec[..2 * hidden])
                        .for_each(|(g, &r)| *g = (*g + r).sigmoid_());
                    let hn = &mut extra[cell..cell + hidden];
                    candidate_after(n, &rz[..hidden], hn, n_rec, &bias_hh[2 * hidden..]);
                } else {
                    n.iter_mut()
                        .zip(n_rec)
                        .for_each(|(n, &r)| *n = (*n + r).tanh_());
                }
                let z = &rz[hidden..];
                let at = b * out_rs + t * hidden;
                let (before, after) = out.split_at_mut(at);
                let h_prev = if t == 0 {
                    &h0[b * hidden..(b + 1) * hidden]
                } else {
                    &before[at - hidden..]
                };
                blend(&mut after[..hidden], n, z, h_prev);
            }
        }
    }

    /// The reverse time loop for the batch rows of one chunk: fills `[d_pre, d_rec,
    /// d_h0]` from `[grad_out, out, gates, extra, h0]` and returns the gradient flow.
    #[inline(always)]
    fn backward_chunk<T: Real>(
        &self,
        [d_pre, d_rec, d_h0]: [&mut [T]; 3],
        [grad_out, out, gates, extra, h0]: [&[T]; 5],
        recurrent: &GruPanels<T>,
    ) -> FlowNorms {
        let Dims {
            seq_len, hidden, ..
        } = self.dims;
        let reset = self.reset;
        let gh = 3 * hidden;
        let batch = h0.len() / hidden;
        let out_rs = seq_len * hidden;
        let mut d_h_rec = vec![T::ZERO; batch * hidden];
        let mut d_h_direct = vec![T::ZERO; batch * hidden];
        let mut d_rh = vec![T::ZERO; batch * hidden];
        let mut d_h = vec![T::ZERO; hidden];
        let mut flow = FlowNorms::new(seq_len, &self.flow);
        for t in (0..seq_len).rev() {
            let (h_prev, h_rs) = if t == 0 {
                (h0, hidden)
            } else {
                (&out[(t - 1) * hidden..], out_rs)
            };
            for b in 0..batch {
                let row = (b * seq_len + t) * gh;
                let cell = (b * seq_len + t) * hidden;
                let (r, rest) = gates[row..row + gh].split_at(hidden);
                let (z, n) = rest.split_at(hidden);
                let h_prev = &h_prev[b * h_rs..b * h_rs + hidden];
                let g_out = &grad_out[b * out_rs + t * hidden..b * out_rs + (t + 1) * hidden];
                let (d_pre_r, d_pre_zn) = d_pre[row..row + gh].split_at_mut(hidden);
                let (d_pre_z, d_pre_n) = d_pre_zn.split_at_mut(hidden);
                let (d_rec_r, d_rec_zn) = d_rec[row..row + gh].split_at_mut(hidden);
                let (d_rec_z, d_rec_n) = d_rec_zn.split_at_mut(hidden);
                let direct = &mut d_h_direct[b * hidden..(b + 1) * hidden];
                d_h.iter_mut()
                    .zip(g_out)
                    .zip(&d_h_rec[b * hidden..(b + 1) * hidden])
                    .for_each(|((d, &g), &r)| *d = g + r);
                // Summed apart, in order: a running f64 sum kept the loop below scalar.
                flow.add(t, &d_h);
                z_and_n_grads(&d_h, z, n, h_prev, direct, d_pre_z, d_pre_n);
                d_rec_z.copy_from_slice(d_pre_z);
                if reset == GruReset::After {
                    let hn = &extra[cell..cell + hidden];
                    r_grads_after(d_pre_n, r, hn, d_pre_r, d_rec_n);
                    d_rec_r.copy_from_slice(d_pre_r);
                } else {
                    d_rec_n.copy_from_slice(d_pre_n);
                }
            }
            if reset == GruReset::Before {
                // ∂L/∂(r ⊙ h) = d_n · W_hn, then r's gradient and r's share of ∂L/∂h.
                recurrent.n().mul(
                    (&mut d_rh, hidden),
                    (&d_pre[t * gh + 2 * hidden..], seq_len * gh, 1),
                    batch,
                    false,
                );
                for b in 0..batch {
                    let row = (b * seq_len + t) * gh;
                    let r = &gates[row..row + hidden];
                    let h_prev = &h_prev[b * h_rs..b * h_rs + hidden];
                    for j in 0..hidden {
                        let d_rh = d_rh[b * hidden + j];
                        let d_r = d_rh * h_prev[j] * r[j] * (T::ONE - r[j]);
                        d_pre[row + j] = d_r;
                        d_rec[row + j] = d_r;
                        d_h_direct[b * hidden + j] += d_rh * r[j];
                    }
                }
            }
            // ∂L/∂h_{t−1} = direct share + d_rec[:, t] · W_hh (r, z rows only when the
            // reset acts before W_hn: its n rows were applied to r ⊙ h, handled above).
            d_h_rec.copy_from_slice(&d_h_direct);
            recurrent.main.mul(
                (&mut d_h_rec, hidden),
                (&d_rec[t * gh..], seq_len * gh, 1),
                batch,
                true,
            );
        }

        d_h0.copy_from_slice(&d_h_rec);
        flow
    }
}

impl Kernel for GruOp {
    const NAME: &'static str = "fused-gru";

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
        let reset = self.reset;
        let gh = 3 * hidden;
        let offsets = GatedOffsets::new(&self.reset, input, hidden);
        let bias_hh = &params[offsets.bias_hh..offsets.end];
        // b_hr and b_hz fold into the input projection; so does b_hn when the reset gate
        // acts before W_hn, but not after (there it is scaled by r).
        let folded = if reset == GruReset::Before {
            gh
        } else {
            2 * hidden
        };
        let mut gates =
            offsets.prologue(Self::NAME, (x, params), folded, (batch * seq_len, input))?;

        let out_rs = seq_len * hidden;
        let mut out = vec![T::ZERO; batch * out_rs];
        let mut extra = vec![T::ZERO; batch * seq_len * hidden];
        let rows = chunk_rows(batch);
        let weight_hh = &params[offsets.weight_hh..offsets.bias_ih];
        let recurrent = GruPanels::forward(weight_hh, reset, hidden, rows);
        gates
            .par_chunks_mut(rows * seq_len * gh)
            .zip(out.par_chunks_mut(rows * out_rs))
            .zip(extra.par_chunks_mut(rows * seq_len * hidden))
            .zip(h0.par_chunks(rows * hidden))
            .for_each(|(((gates, out), extra), h0)| {
                wide(|| self.forward_chunk([gates, out, extra], h0, &recurrent, bias_hh));
            });
        *self.saved.lock().expect("saved activations") = Some(Box::new(GruSaved { gates, extra }));
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
        let reset = self.reset;
        let gh = 3 * hidden;
        let GatedOffsets {
            weight_ih: o_wih,
            weight_hh: o_whh,
            bias_ih: o_bih,
            bias_hh: o_bhh,
            end,
            ..
        } = GatedOffsets::new(&self.reset, input, hidden);
        let (weight_ih, weight_hh) = (&params[o_wih..o_whh], &params[o_whh..o_bih]);
        let guard = self.saved.lock().expect("saved activations");
        let Some(saved) = guard.as_ref().and_then(|s| s.downcast_ref::<GruSaved<T>>()) else {
            bail!("fused GRU backward without its forward's activations");
        };
        let out_rs = seq_len * hidden;
        let rows = batch * seq_len;

        // Gradients of the input projection's outputs and of the recurrent GEMM's outputs.
        let mut d_pre = vec![T::ZERO; rows * gh];
        let mut d_rec = vec![T::ZERO; rows * gh];
        let mut d_h0 = vec![T::ZERO; batch * hidden];
        let chunk = chunk_rows(batch);
        let recurrent = GruPanels::backward(weight_hh, reset, hidden, chunk);
        let flows: Vec<FlowNorms> = d_pre
            .par_chunks_mut(chunk * seq_len * gh)
            .zip(d_rec.par_chunks_mut(chunk * seq_len * gh))
            .zip(d_h0.par_chunks_mut(chunk * hidden))
            .zip(grad_out.par_chunks(chunk * out_rs))
            .zip(out.par_chunks(chunk * out_rs))
            .zip(saved.gates.par_chunks(chunk * seq_len * gh))
            .zip(saved.extra.par_chunks(chunk * seq_len * hidden))
            .zip(h0.par_chunks(chunk * hidden))
            .map(
                |(((((((d_pre, d_rec), d_h0), grad_out), out), gates), extra), h0)| {
                    let grads = [d_pre, d_rec, d_h0];
                    wide(|| {
                        self.backward_chunk(grads, [grad_out, out, gates, extra, h0], &recurrent)
                    })
                },
            )
            .collect();
        FlowNorms::finish(&flows, self.dims, &self.flow);
        let mut d_params = vec![T::ZERO; end];
        let (d_weight_ih, d_bias_ih) = two_mut(&mut d_params, o_wih..o_whh, o_bih..o_bhh);
        let d_x = input_grads(
            &d_pre,
            x,
            weight_ih,
            (d_weight_ih, Some(d_bias_ih)),
            (rows, gh, input),
            self.dims.input_grad,
        );
        let h_prev = || previous_state((h0, hidden), (out, out_rs), seq_len, hidden);
        let d_weight_hh = &mut d_params[o_whh..o_bih];
        match reset {
            GruReset::After => {
                par_product_rows(d_weight_hh, (&d_rec, 1, gh), h_prev(), (rows, hidden));
            }
            GruReset::Before => {
                let (d_rz, d_n) = d_weight_hh.split_at_mut(2 * hidden * hidden);
                par_product_rows(d_rz, (&d_rec, 1, gh), h_prev(), (rows, hidden));
                par_product(
                    d_n,
                    (&d_rec[2 * hidden..], 1, gh),
                    &saved.extra,
                    rows,
                    hidden,
                );
            }
        }
        add_column_sums(&mut d_params[o_bhh..end], &d_rec, gh);
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
        let offsets = GatedOffsets::new(&self.reset, self.dims.input, self.dims.hidden);
        let (out, saved) =
            crate::cuda::gru_forward(gpu, (self.dims, self.reset), &offsets, (x, h0, params))?;
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
        let saved = fused::take_saved::<crate::cuda::GruGpuSaved>(&self.saved, Self::NAME)?;
        let offsets = GatedOffsets::new(&self.reset, self.dims.input, self.dims.hidden);
        let grads =
            crate::cuda::gru_backward(gpu, (self.dims, self.reset), &offsets, saved, grad_out)?;
        *self.flow.lock().expect("gradient-flow sink") = Some(grads.flow);
        Ok((grads.d_x, grads.d_state0, grads.d_params))
    }
}

// The GRU's pointwise loops, one step of one batch row each. Every slice is an argument
// of its own so that, inlined, the compiler knows they do not overlap and vectorises the
// loops; split from the rows of `gates` and `d_pre` inside the time loop they ran one
// unit at a time (perf annotate). Each is elementwise, so the results are the same bits.

/// Reset after `W_hn`: `hn = W_hn h + b_hn` (kept for the backward) and
/// `n = tanh(n_x + r ⊙ hn)` in place.
#[inline(always)]
fn candidate_after<T: Real>(n: &mut [T], r: &[T], hn: &mut [T], n_rec: &[T], b_hn: &[T]) {
    let units = n.len();
    let (r, hn, n_rec, b_hn) = (
        &r[..units],
        &mut hn[..units],
        &n_rec[..units],
        &b_hn[..units],
    );
    for j in 0..units {
        hn[j] = n_rec[j] + b_hn[j];
        n[j] = (n[j] + r[j] * hn[j]).tanh_();
    }
}

/// `h = n + z ⊙ (h_prev − n)`.
#[inline(always)]
fn blend<T: Real>(h: &mut [T], n: &[T], z: &[T], h_prev: &[T]) {
    let units = h.len();
    let (n, z, h_prev) = (&n[..units], &z[..units], &h_prev[..units]);
    for j in 0..units {
        h[j] = n[j] + z[j] * (h_prev[j] - n[j]);
    }
}

/// From `∂L/∂h_t`: the z and n pre-activations' gradients and `∂L/∂h_{t−1}`'s direct
/// share `∂L/∂h_t ⊙ z`.
#[inline(always)]
fn z_and_n_grads<T: Real>(
    d_h: &[T],
    z: &[T],
    n: &[T],
    h_prev: &[T],
    direct: &mut [T],
    d_z: &mut [T],
    d_n: &mut [T],
) {
    let units = d_h.len();
    let (z, n, h_prev) = (&z[..units], &n[..units], &h_prev[..units]);
    let (direct, d_z, d_n) = (&mut direct[..units], &mut d_z[..units], &mut d_n[..units]);
    for j in 0..units {
        d_n[j] = d_h[j] * (T::ONE - z[j]) * (T::ONE - n[j] * n[j]);
        d_z[j] = d_h[j] * (h_prev[j] - n[j]) * z[j] * (T::ONE - z[j]);
        direct[j] = d_h[j] * z[j];
    }
}

/// Reset after `W_hn`: r's pre-activation gradient and the recurrent n columns' `d_n ⊙ r`.
#[inline(always)]
fn r_grads_after<T: Real>(d_n: &[T], r: &[T], hn: &[T], d_r: &mut [T], d_rec_n: &mut [T]) {
    let units = d_n.len();
    let (r, hn, d_r, d_rec_n) = (
        &r[..units],
        &hn[..units],
        &mut d_r[..units],
        &mut d_rec_n[..units],
    );
    for j in 0..units {
        d_r[j] = d_n[j] * hn[j] * r[j] * (T::ONE - r[j]);
        d_rec_n[j] = d_n[j] * r[j];
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::*;
    use crate::Cell;
    use crate::Params;

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
        let gru = Gru::new(reset, &params, 0, 1, 1).unwrap();
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
