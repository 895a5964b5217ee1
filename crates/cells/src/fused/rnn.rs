//! The fused vanilla RNN.

use candle_core::{Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::{
    FlowNorms, FlowSink, FusedOp, Kernel, Real, add_column_sums, chunk_rows, input_grads,
    input_projection, matmul, matmul_serial, pack, param_offsets, previous_states, transpose, wide,
};
use crate::cell::{Nonlinearity, State};

/// The whole sequence `xs (B, T, I)` from `state` through one fused op; `T ≥ 1`.
/// `weights` are `weight_ih, weight_hh, bias_ih, bias_hh`.
pub(crate) fn rnn_sequence(
    xs: &Tensor,
    state: &State,
    weights: [&Tensor; 4],
    nonlinearity: Nonlinearity,
    flow: &FlowSink,
) -> Result<(Tensor, State)> {
    let (batch, seq_len, input) = xs.dims3()?;
    let hidden = weights[1].dim(1)?;
    let op = RnnOp {
        batch,
        seq_len,
        input,
        hidden,
        nonlinearity,
        flow: flow.clone(),
    };
    let out = xs
        .contiguous()?
        .apply_op3(&state.h.contiguous()?, &pack(&weights)?, FusedOp(op))?;
    let h = out.narrow(1, seq_len - 1, 1)?.squeeze(1)?;
    Ok((out, State { h, c: None }))
}

struct RnnOp {
    batch: usize,
    seq_len: usize,
    input: usize,
    hidden: usize,
    nonlinearity: Nonlinearity,
    flow: FlowSink,
}

impl RnnOp {
    /// The time loop for the batch rows of one chunk (`out` holds their pre-activations).
    #[inline(always)]
    fn forward_chunk<T: Real>(&self, out: &mut [T], h0: &[T], weight_hh_t: &[T]) {
        let Self {
            seq_len,
            hidden,
            nonlinearity,
            ..
        } = *self;
        let batch = h0.len() / hidden;
        let out_rs = seq_len * hidden;
        let mut h_prev = h0.to_vec();
        for t in 0..seq_len {
            matmul_serial(
                (batch, hidden, hidden),
                &mut out[t * hidden..],
                out_rs,
                (&h_prev, hidden, 1),
                (weight_hh_t, hidden, 1),
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
        weight_hh: &[T],
    ) -> FlowNorms {
        let Self {
            seq_len,
            hidden,
            nonlinearity,
            ..
        } = *self;
        let batch = d_h0.len() / hidden;
        let out_rs = seq_len * hidden;
        let mut d_h_rec = vec![T::ZERO; batch * hidden];
        let mut flow = FlowNorms::new(batch, seq_len);
        for t in (0..seq_len).rev() {
            for b in 0..batch {
                let at = b * out_rs + t * hidden;
                let (h, g) = (&out[at..at + hidden], &grad_out[at..at + hidden]);
                let rec = &d_h_rec[b * hidden..(b + 1) * hidden];
                let d = &mut d_pre[at..at + hidden];
                let mut squared = 0.0;
                for j in 0..hidden {
                    let d_h = g[j] + rec[j];
                    squared += d_h.to_f64() * d_h.to_f64();
                    let slope = match nonlinearity {
                        Nonlinearity::Tanh => T::ONE - h[j] * h[j],
                        Nonlinearity::Relu if h[j] > T::ZERO => T::ONE,
                        Nonlinearity::Relu => T::ZERO,
                    };
                    d[j] = d_h * slope;
                }
                flow.add(t, squared);
            }
            matmul_serial(
                (batch, hidden, hidden),
                &mut d_h_rec,
                hidden,
                (&d_pre[t * hidden..], out_rs, 1),
                (weight_hh, hidden, 1),
                false,
            );
        }
        d_h0.copy_from_slice(&d_h_rec);
        flow
    }
}

impl Kernel for RnnOp {
    const NAME: &'static str = "fused-rnn";

    fn out_shape(&self) -> Shape {
        Shape::from((self.batch, self.seq_len, self.hidden))
    }

    fn forward<T: Real>(&self, x: &[T], h0: &[T], params: &[T]) -> Result<Vec<T>> {
        let Self {
            batch,
            seq_len,
            input,
            hidden,
            ..
        } = *self;
        let [o_wih, o_whh, o_bih, o_bhh, end] = param_offsets(hidden, input, hidden);
        if params.len() != end || x.len() != batch * seq_len * input {
            bail!("fused RNN: inputs do not match the layer's sizes");
        }
        let bias: Vec<T> = params[o_bih..o_bhh]
            .iter()
            .zip(&params[o_bhh..end])
            .map(|(&a, &b)| a + b)
            .collect();
        // The pre-activations become the outputs in place: (B, T, H) is the same layout.
        let mut out = input_projection(x, &params[o_wih..o_whh], &bias, batch * seq_len, input);
        let out_rs = seq_len * hidden;
        let weight_hh_t = transpose(&params[o_whh..o_bih], hidden, hidden);
        let rows = chunk_rows(batch);
        out.par_chunks_mut(rows * out_rs)
            .zip(h0.par_chunks(rows * hidden))
            .for_each(|(out, h0)| wide(|| self.forward_chunk(out, h0, &weight_hh_t)));
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
            ..
        } = *self;
        let [o_wih, o_whh, o_bih, o_bhh, end] = param_offsets(hidden, input, hidden);
        let out_rs = seq_len * hidden;
        let rows = batch * seq_len;
        let mut d_pre = vec![T::ZERO; rows * hidden];
        let mut d_h0 = vec![T::ZERO; batch * hidden];
        let chunk = chunk_rows(batch);
        let flows: Vec<FlowNorms> = d_pre
            .par_chunks_mut(chunk * out_rs)
            .zip(d_h0.par_chunks_mut(chunk * hidden))
            .zip(out.par_chunks(chunk * out_rs))
            .zip(grad_out.par_chunks(chunk * out_rs))
            .map(|(((d_pre, d_h0), out), grad_out)| {
                wide(|| self.backward_chunk([d_pre, d_h0], [out, grad_out], &params[o_whh..o_bih]))
            })
            .collect();
        let mut flow = FlowNorms::new(batch, seq_len);
        flows.iter().for_each(|part| flow.merge(part));
        flow.finish(&self.flow);
        let mut d_params = vec![T::ZERO; end];
        let d_x = input_grads(
            &d_pre,
            x,
            &params[o_wih..o_whh],
            &mut d_params[o_wih..o_whh],
            (rows, hidden, input),
        );
        let mut h_prev = vec![T::ZERO; rows * hidden];
        previous_states(&mut h_prev, (h0, hidden), (out, out_rs), seq_len, hidden);
        matmul(
            (hidden, hidden, rows),
            &mut d_params[o_whh..o_bih],
            hidden,
            (&d_pre, 1, hidden),
            (&h_prev, hidden, 1),
            false,
        );
        add_column_sums(&mut d_params[o_bih..o_bhh], &d_pre, hidden);
        let (head, tail) = d_params.split_at_mut(o_bhh);
        tail.copy_from_slice(&head[o_bih..]);
        Ok((d_x, d_h0, d_params))
    }
}
