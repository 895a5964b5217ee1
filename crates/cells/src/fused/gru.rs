//! The fused GRU, both reset conventions.

use candle_core::{Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::{
    FlowNorms, FlowSink, FusedOp, Kernel, Real, Saved, add_column_sums, chunk_rows, input_grads,
    input_projection, matmul, matmul_serial, pack, param_offsets, previous_states, transpose, wide,
};
use crate::cell::{GruReset, State};

/// The whole sequence `xs (B, T, I)` from `state` through one fused op; `T ≥ 1`.
/// `weights` are `weight_ih, weight_hh, bias_ih, bias_hh`.
pub(crate) fn gru_sequence(
    xs: &Tensor,
    state: &State,
    weights: [&Tensor; 4],
    reset: GruReset,
    flow: &FlowSink,
) -> Result<(Tensor, State)> {
    let (batch, seq_len, input) = xs.dims3()?;
    let hidden = weights[1].dim(1)?;
    let op = GruOp {
        batch,
        seq_len,
        input,
        hidden,
        reset,
        saved: Saved::default(),
        flow: flow.clone(),
    };
    let out = xs
        .contiguous()?
        .apply_op3(&state.h.contiguous()?, &pack(&weights)?, FusedOp(op))?;
    let h = out.narrow(1, seq_len - 1, 1)?.squeeze(1)?;
    Ok((out, State { h, c: None }))
}

struct GruOp {
    batch: usize,
    seq_len: usize,
    input: usize,
    hidden: usize,
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

impl GruOp {
    /// The time loop for the batch rows of one chunk: `[gates, out, extra]` as in the
    /// forward, `h0` the chunk's initial states.
    #[inline(always)]
    fn forward_chunk<T: Real>(
        &self,
        [gates, out, extra]: [&mut [T]; 3],
        h0: &[T],
        weight_hh_t: &[T],
        bias_hh: &[T],
    ) {
        let Self {
            seq_len,
            hidden,
            reset,
            ..
        } = *self;
        let gh = 3 * hidden;
        let batch = h0.len() / hidden;
        let out_rs = seq_len * hidden;
        // Per step: h W_hhᵀ (reset after) or h W_hrzᵀ (reset before), then (W_hn (r ⊙ h)).
        let mut recurrent = vec![T::ZERO; batch * gh];
        for t in 0..seq_len {
            let (h_prev, h_rs) = if t == 0 {
                (h0, hidden)
            } else {
                (&out[(t - 1) * hidden..], out_rs)
            };
            let rec_cols = if reset == GruReset::After {
                gh
            } else {
                2 * hidden
            };
            matmul_serial(
                (batch, rec_cols, hidden),
                &mut recurrent,
                gh,
                (h_prev, h_rs, 1),
                (weight_hh_t, gh, 1),
                false,
            );
            if reset == GruReset::Before {
                for b in 0..batch {
                    let row = (b * seq_len + t) * gh;
                    let (rz, rec) = (
                        &mut gates[row..row + 2 * hidden],
                        &recurrent[b * gh..b * gh + 2 * hidden],
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
                // The n columns of `recurrent` get (r ⊙ h) W_hnᵀ.
                matmul_serial(
                    (batch, hidden, hidden),
                    &mut recurrent[2 * hidden..],
                    gh,
                    (&extra[t * hidden..], seq_len * hidden, 1),
                    (&weight_hh_t[2 * hidden..], gh, 1),
                    false,
                );
            }
            for b in 0..batch {
                let row = (b * seq_len + t) * gh;
                let cell = (b * seq_len + t) * hidden;
                let g = &mut gates[row..row + gh];
                let rec = &recurrent[b * gh..(b + 1) * gh];
                let (rz, n) = g.split_at_mut(2 * hidden);
                let n_rec = &rec[2 * hidden..];
                if reset == GruReset::After {
                    rz.iter_mut()
                        .zip(&rec[..2 * hidden])
                        .for_each(|(g, &r)| *g = (*g + r).sigmoid_());
                    let hn = &mut extra[cell..cell + hidden];
                    let b_hn = &bias_hh[2 * hidden..];
                    for j in 0..hidden {
                        hn[j] = n_rec[j] + b_hn[j];
                        n[j] = (n[j] + rz[j] * hn[j]).tanh_();
                    }
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
                let h = &mut after[..hidden];
                for j in 0..hidden {
                    h[j] = n[j] + z[j] * (h_prev[j] - n[j]);
                }
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
        weight_hh: &[T],
    ) -> FlowNorms {
        let Self {
            seq_len,
            hidden,
            reset,
            ..
        } = *self;
        let gh = 3 * hidden;
        let batch = h0.len() / hidden;
        let out_rs = seq_len * hidden;
        let mut d_h_rec = vec![T::ZERO; batch * hidden];
        let mut d_h_direct = vec![T::ZERO; batch * hidden];
        let mut d_rh = vec![T::ZERO; batch * hidden];
        let mut flow = FlowNorms::new(batch, seq_len);
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
                let d_pre_row = &mut d_pre[row..row + gh];
                let d_rec_row = &mut d_rec[row..row + gh];
                let direct = &mut d_h_direct[b * hidden..(b + 1) * hidden];
                let mut squared = 0.0;
                for j in 0..hidden {
                    let d_h = g_out[j] + d_h_rec[b * hidden + j];
                    squared += d_h.to_f64() * d_h.to_f64();
                    let d_n = d_h * (T::ONE - z[j]) * (T::ONE - n[j] * n[j]);
                    let d_z = d_h * (h_prev[j] - n[j]) * z[j] * (T::ONE - z[j]);
                    direct[j] = d_h * z[j];
                    d_pre_row[hidden + j] = d_z;
                    d_pre_row[2 * hidden + j] = d_n;
                    d_rec_row[hidden + j] = d_z;
                    if reset == GruReset::After {
                        let hn = extra[cell + j];
                        let d_r = d_n * hn * r[j] * (T::ONE - r[j]);
                        d_pre_row[j] = d_r;
                        d_rec_row[j] = d_r;
                        d_rec_row[2 * hidden + j] = d_n * r[j];
                    } else {
                        d_rec_row[2 * hidden + j] = d_n;
                    }
                }
                flow.add(t, squared);
            }
            if reset == GruReset::Before {
                // ∂L/∂(r ⊙ h) = d_n · W_hn, then r's gradient and r's share of ∂L/∂h.
                matmul_serial(
                    (batch, hidden, hidden),
                    &mut d_rh,
                    hidden,
                    (&d_pre[t * gh + 2 * hidden..], seq_len * gh, 1),
                    (&weight_hh[2 * hidden * hidden..], hidden, 1),
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
            let k = if reset == GruReset::After {
                gh
            } else {
                2 * hidden
            };
            matmul_serial(
                (batch, hidden, k),
                &mut d_h_rec,
                hidden,
                (&d_rec[t * gh..], seq_len * gh, 1),
                (weight_hh, hidden, 1),
                true,
            );
        }

        d_h0.copy_from_slice(&d_h_rec);
        flow
    }
}

impl Kernel for GruOp {
    const NAME: &'static str = "fused-gru";

    fn out_shape(&self) -> Shape {
        Shape::from((self.batch, self.seq_len, self.hidden))
    }

    fn forward<T: Real>(&self, x: &[T], h0: &[T], params: &[T]) -> Result<Vec<T>> {
        let Self {
            batch,
            seq_len,
            input,
            hidden,
            reset,
            ..
        } = *self;
        let gh = 3 * hidden;
        let [o_wih, o_whh, o_bih, o_bhh, end] = param_offsets(3 * hidden, input, hidden);
        if params.len() != end || x.len() != batch * seq_len * input {
            bail!("fused GRU: inputs do not match the layer's sizes");
        }
        let (weight_ih, weight_hh) = (&params[o_wih..o_whh], &params[o_whh..o_bih]);
        let (bias_ih, bias_hh) = (&params[o_bih..o_bhh], &params[o_bhh..end]);
        // b_hr and b_hz fold into the input projection; so does b_hn when the reset gate
        // acts before W_hn, but not after (there it is scaled by r).
        let folded = if reset == GruReset::Before {
            gh
        } else {
            2 * hidden
        };
        let mut bias = bias_ih.to_vec();
        bias[..folded]
            .iter_mut()
            .zip(bias_hh)
            .for_each(|(b, &h)| *b += h);
        let mut gates = input_projection(x, weight_ih, &bias, batch * seq_len, input);
        let weight_hh_t = transpose(weight_hh, gh, hidden);

        let out_rs = seq_len * hidden;
        let mut out = vec![T::ZERO; batch * out_rs];
        let mut extra = vec![T::ZERO; batch * seq_len * hidden];
        let rows = chunk_rows(batch);
        gates
            .par_chunks_mut(rows * seq_len * gh)
            .zip(out.par_chunks_mut(rows * out_rs))
            .zip(extra.par_chunks_mut(rows * seq_len * hidden))
            .zip(h0.par_chunks(rows * hidden))
            .for_each(|(((gates, out), extra), h0)| {
                wide(|| self.forward_chunk([gates, out, extra], h0, &weight_hh_t, bias_hh));
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
        let Self {
            batch,
            seq_len,
            input,
            hidden,
            reset,
            ..
        } = *self;
        let gh = 3 * hidden;
        let [o_wih, o_whh, o_bih, o_bhh, end] = param_offsets(3 * hidden, input, hidden);
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
                        self.backward_chunk(grads, [grad_out, out, gates, extra, h0], weight_hh)
                    })
                },
            )
            .collect();
        let mut flow = FlowNorms::new(batch, seq_len);
        flows.iter().for_each(|part| flow.merge(part));
        flow.finish(&self.flow);
        let mut d_params = vec![T::ZERO; end];
        let d_x = input_grads(
            &d_pre,
            x,
            weight_ih,
            &mut d_params[o_wih..o_whh],
            (rows, gh, input),
        );
        let mut h_prev = vec![T::ZERO; rows * hidden];
        previous_states(&mut h_prev, (h0, hidden), (out, out_rs), seq_len, hidden);
        let d_weight_hh = &mut d_params[o_whh..o_bih];
        match reset {
            GruReset::After => {
                matmul(
                    (gh, hidden, rows),
                    d_weight_hh,
                    hidden,
                    (&d_rec, 1, gh),
                    (&h_prev, hidden, 1),
                    false,
                );
            }
            GruReset::Before => {
                let (d_rz, d_n) = d_weight_hh.split_at_mut(2 * hidden * hidden);
                matmul(
                    (2 * hidden, hidden, rows),
                    d_rz,
                    hidden,
                    (&d_rec, 1, gh),
                    (&h_prev, hidden, 1),
                    false,
                );
                matmul(
                    (hidden, hidden, rows),
                    d_n,
                    hidden,
                    (&d_rec[2 * hidden..], 1, gh),
                    (&saved.extra, hidden, 1),
                    false,
                );
            }
        }
        add_column_sums(&mut d_params[o_bih..o_bhh], &d_pre, gh);
        add_column_sums(&mut d_params[o_bhh..end], &d_rec, gh);
        Ok((d_x, d_h0, d_params))
    }
}
