//! Where the fused kernels run.

#[cfg(feature = "cuda")]
use std::sync::Arc;

#[cfg(feature = "cuda")]
use crate::cuda::Gpu;

/// Where a layer's fused whole-sequence kernel runs. Tensors, heads, losses and
/// optimisers stay on the CPU either way; with [`Backend::Cuda`] each layer's kernel
/// copies its inputs to the GPU and its results back (see `cuda/mod.rs`). Carried by
/// [`crate::Params`], as candle's `VarBuilder` carries a device, so every layer built from
/// the parameters runs there.
#[derive(Debug, Clone, Default)]
pub enum Backend {
    /// The CPU kernels (`fused.rs` and the cell files).
    #[default]
    Cpu,
    /// An NVIDIA GPU, for the cells whose spec says they have a CUDA kernel
    /// ([`crate::CellSpec::has_cuda_kernel`]).
    #[cfg(feature = "cuda")]
    Cuda(Arc<Gpu>),
}
