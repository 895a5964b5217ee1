//! The fused kernel of the cells whose gates read only the input (minGRU, minLSTM): one
//! GEMM projects every step's `G·H` gate pre-activations, then a pointwise recurrence
//! runs over time with no recurrent GEMM. A cell supplies the per-step pointwise math
//! ([`ScanStep`]); this module owns the loops, the saved activations and the gradients.

use candle_core::{Result, Tensor, bail};
use rayon::prelude::*;

use crate::cell::{FlowSink, GradFlow, State};
use crate::fused::{
    self, Dims, FlowNorms, Kernel, Real, Saved, add_column_sums, chunk_rows, input_grads,
    input_projection, squared_sum, wide,
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
/// its [`ScanOp`].
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

    /// Turns the step's pre-activations `gates` `(G·H)` into what the backward needs (in
    /// place) and writes `h` from `h_prev`.
    fn forward<T: Real>(gates: &mut [T], h_prev: &[T], h: &mut [T]);

    /// Given `d_h` (∂L/∂h_t), turns the saved `gates` into the gradients of their
    /// pre-activations (in place) and writes ∂L/∂h_{t−1} into `d_prev`.
    fn backward<T: Real>(gates: &mut [T], h_prev: &[T], d_h: &[T], d_prev: &mut [T]);
}

/// The fused whole-sequence op of a [`ScanStep`] cell.
pub(crate) struct ScanOp<C: ScanStep> {
    dims: Dims,
    cell: C,
    /// The gates of every step `(B, T, G·H)`, as [`ScanStep::forward`] left them.
    saved: Saved,
    flow: FlowSink,
}

impl<C: ScanStep> ScanOp<C> {
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
                flow.add(t, squared_sum(&d_h));
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
        let width = C::GATES * hidden;
        let (ranges, total) = param_ranges(&self.cell.layer_params(input, hidden));
        // The gates are taken, not borrowed: their gradients overwrite them.
        let saved = self.saved.lock().expect("saved activations").take();
        let Some(Ok(mut d_gates)) = saved.map(|s| s.downcast::<Vec<T>>()) else {
            bail!("{} backward without its forward's activations", C::NAME);
        };
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
                wide(|| self.backward_chunk([gates, d_h0], [out, grad_out, h0]))
            })
            .collect();
        FlowNorms::finish(&flows, self.dims, &self.flow);
        let mut d_params = vec![T::ZERO; total];
        let d_x = input_grads(
            &d_gates,
            x,
            &params[ranges[0].clone()],
            &mut d_params[ranges[0].clone()],
            (batch * seq_len, width, input),
        );
        add_column_sums(&mut d_params[ranges[1].clone()], &d_gates, width);
        Ok((d_x, d_h0, d_params))
    }
}
