//! The step-by-step composition of [`Cell::step`]: the reference the fused kernels are
//! tested against, and the path for devices and dtypes they lack.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, bail};

use crate::cell::{Cell, FlowSink, GradFlow, State, check_sequence};
use crate::fused::slice;

/// Identity on `h_t` (or `c_t`, see [`Cell::flow_on_cell_state`]) whose backward records `g_t` (candle keeps no gradients of
/// intermediate tensors, so the unrolled graph measures its gradient flow this way).
struct FlowProbe {
    sink: FlowSink,
    step: usize,
    seq_len: usize,
}

impl CustomOp1 for FlowProbe {
    fn name(&self) -> &'static str {
        "gradient-flow-probe"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let copy = match storage {
            CpuStorage::F32(_) => CpuStorage::F32(slice::<f32>(storage, layout)?.to_vec()),
            CpuStorage::F64(_) => CpuStorage::F64(slice::<f64>(storage, layout)?.to_vec()),
            _ => bail!("the gradient-flow probe runs in f32 or f64"),
        };
        Ok((copy, layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let per_row = grad_res.to_dtype(DType::F64)?.sqr()?.sum(1)?.sqrt()?;
        let norm = per_row.mean_all()?.to_scalar::<f64>()?;
        let mut sink = self.sink.lock().expect("gradient-flow sink");
        sink.get_or_insert_with(|| vec![0.0; self.seq_len])[self.step] = norm;
        Ok(Some(grad_res.clone()))
    }
}

/// The step-by-step composition of [`Cell::step`] over a sequence: the reference the
/// fused kernels are tested against, and the path for devices and dtypes they lack.
pub fn unroll<C: Cell + ?Sized>(
    cell: &C,
    xs: &Tensor,
    state: &State,
) -> Result<(Tensor, State, GradFlow)> {
    let (batch, seq_len) = check_sequence(cell, xs, state)?;
    let sink = FlowSink::default();
    if seq_len == 0 {
        let output = Tensor::zeros((batch, 0, cell.hidden_size()), xs.dtype(), xs.device())?;
        return Ok((output, state.clone(), GradFlow::recorded(sink)));
    }
    let mut state = state.clone();
    let mut hs = Vec::with_capacity(seq_len);
    for t in 0..seq_len {
        // Each per-step slice costs a zero-padded gradient of the whole input in the
        // backward (quadratic in T): fine for a reference, which is why it is not the
        // hot path.
        let x = xs.narrow(1, t, 1)?.squeeze(1)?;
        state = if xs.device().is_cpu() {
            let probe = |value: Tensor| {
                value.contiguous()?.apply_op1(FlowProbe {
                    sink: sink.clone(),
                    step: t,
                    seq_len,
                })
            };
            cell.step_probed(&x, &state, &probe)?
        } else {
            cell.step(&x, &state)?
        };
        hs.push(state.h.clone());
    }
    Ok((Tensor::stack(&hs, 1)?, state, GradFlow::recorded(sink)))
}
