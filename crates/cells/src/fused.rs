//! Fused whole-sequence kernels: one candle graph node per layer and sequence.
//!
//! Each cell's forward over all time steps and its backward through time are one
//! [`candle_core::CustomOp3`] of `(input, initial state, flat parameters)`:
//! - the input projection of every step is one GEMM, `(B·T, I)·W_ihᵀ`;
//! - each step is one recurrent GEMM over the concatenated gates and one fused
//!   pointwise pass, whose activations are saved once for the backward;
//! - the backward runs the steps in reverse (one GEMM per step for `∂L/∂h_{t−1}`) and
//!   then forms the weight gradients with one GEMM each over all `B·T` rows.
//!
//! The per-step recurrent GEMMs of the LSTM, GRU and RNN run on weights packed once per
//! sequence (`crate::packed`, whose sums are the `gemm` crate's bit for bit); the other
//! GEMMs go through the `gemm` crate (the one candle uses). `tanh` and the sigmoid in
//! f32 are Eigen's rational approximation (a few ulp, branch-free, so the loops
//! vectorise); f64 uses the exact functions, for finite-difference tests.

use std::any::Any;
use std::ops::{Add, AddAssign, Mul, MulAssign, Neg, Sub, SubAssign};
use std::sync::Mutex;

use candle_core::{
    CpuStorage, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor, WithDType, bail,
};

use crate::backend::Backend;
use crate::cell::{FlowSink, GradFlow};
#[cfg(feature = "cuda")]
use crate::cuda::Gpu;
use crate::packed::{par_product, par_product_and_column_sums, par_product_rows};
use crate::spec::{CellSpec, LayerWeights, param_ranges};

/// The float types the kernels run in.
pub(crate) trait Real:
    WithDType
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
    + MulAssign
    + PartialOrd
{
    const ZERO: Self;
    const ONE: Self;
    fn tanh_(self) -> Self;
    fn sigmoid_(self) -> Self;
    fn max_(self, other: Self) -> Self;
    fn exp_(self) -> Self;
    fn ln_(self) -> Self;
    /// `self · a + b` rounded once (a fused multiply-add), as the `gemm` crate's
    /// microkernels compute their sums.
    fn mul_add_(self, a: Self, b: Self) -> Self;
    /// `values` as f32, when this type is f32 (for the SIMD kernels written for it).
    fn f32s(values: &[Self]) -> Option<&[f32]>;
    /// [`Self::f32s`] for a mutable slice.
    fn f32s_mut(values: &mut [Self]) -> Option<&mut [f32]>;
}

impl Real for f32 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;

    #[inline(always)]
    fn tanh_(self) -> Self {
        fast_tanh(self)
    }

    #[inline(always)]
    fn sigmoid_(self) -> Self {
        0.5 + 0.5 * fast_tanh(0.5 * self)
    }

    #[inline(always)]
    fn max_(self, other: Self) -> Self {
        if self > other { self } else { other }
    }

    #[inline(always)]
    fn exp_(self) -> Self {
        self.exp()
    }

    #[inline(always)]
    fn ln_(self) -> Self {
        self.ln()
    }

    #[inline(always)]
    fn mul_add_(self, a: Self, b: Self) -> Self {
        self.mul_add(a, b)
    }

    fn f32s(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }

    fn f32s_mut(values: &mut [Self]) -> Option<&mut [f32]> {
        Some(values)
    }
}

impl Real for f64 {
    const ZERO: Self = 0.0;
    const ONE: Self = 1.0;

    fn tanh_(self) -> Self {
        self.tanh()
    }

    fn sigmoid_(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }

    fn max_(self, other: Self) -> Self {
        if self > other { self } else { other }
    }

    fn exp_(self) -> Self {
        self.exp()
    }

    fn ln_(self) -> Self {
        self.ln()
    }

    #[inline(always)]
    fn mul_add_(self, a: Self, b: Self) -> Self {
        self.mul_add(a, b)
    }

    fn f32s(_: &[Self]) -> Option<&[f32]> {
        None
    }

    fn f32s_mut(_: &mut [Self]) -> Option<&mut [f32]> {
        None
    }
}

/// `tanh` in f32 as Eigen's `generic_fast_tanh_float`: a 13/6-degree rational function
/// on [−9, 9] (outside, tanh is ±1 in f32), accurate to a few ulp and free of branches.
#[inline(always)]
pub(crate) fn fast_tanh(x: f32) -> f32 {
    // Eigen's coefficients as published (more digits than f32 holds).
    #[allow(clippy::excessive_precision)]
    const ALPHA: [f32; 7] = [
        4.89352455891786e-03,
        6.37261928875436e-04,
        1.48572235717979e-05,
        5.12229709037114e-08,
        -8.60467152213735e-11,
        2.00018790482477e-13,
        -2.76076847742355e-16,
    ];
    #[allow(clippy::excessive_precision)]
    const BETA: [f32; 4] = [
        4.89352518554385e-03,
        2.26843463243900e-03,
        1.18534705686654e-04,
        1.19825839466702e-06,
    ];
    let x = x.clamp(-9.0, 9.0);
    let x2 = x * x;
    let mut p = ALPHA[6];
    for &a in ALPHA[..6].iter().rev() {
        p = p * x2 + a;
    }
    let mut q = BETA[3];
    for &b in BETA[..3].iter().rev() {
        q = q * x2 + b;
    }
    x * p / q
}

/// `dst (m×n, row stride dst_rs) (+)= a (m×k) · b (k×n)`, where element `(r, c)` of `a`
/// is `a[r·a_rs + c·a_cs]` and likewise for `b`; `accumulate` adds to `dst` instead of
/// overwriting it. The strides let one call read a transpose or every `T`-th row.
///
/// Uses the threads of the current rayon pool; [`matmul_serial`] uses one.
pub(crate) fn matmul<T: Real>(
    dims: (usize, usize, usize),
    dst: &mut [T],
    dst_rs: usize,
    a: (&[T], usize, usize),
    b: (&[T], usize, usize),
    accumulate: bool,
) {
    let threads = rayon::current_num_threads();
    gemm_checked(dims, dst, dst_rs, a, b, accumulate, threads);
}

/// `a · b` for `n × n` row-major f32 matrices through the `gemm` crate on the current
/// rayon pool. `rnnlab bench --peak` times it and [`square_matmul_packed`] and takes the
/// faster as the machine's GEMM peak. Which is faster depends on the CPU: on the
/// project's Xeon the crate (the packed kernels' blocking is bound to the crate's sums),
/// on the AMD EPYC (Zen 5) the packed kernels (343–357 against 216–219 GFLOP/s at
/// n = 2,048 on 2 threads, 2026-12-06).
pub fn square_matmul(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * n];
    matmul((n, n, n), &mut out, n, (a, n, 1), (b, n, 1), false);
    out
}

/// [`square_matmul`] through the packed kernels of the recurrent time loops.
pub fn square_matmul_packed(a: &[f32], b: &[f32], n: usize) -> Vec<f32> {
    let mut out = vec![0.0; n * n];
    par_product(&mut out, (a, n, 1), b, n, n);
    out
}

/// [`matmul`] on the calling thread only: for the per-step GEMMs of one batch chunk,
/// which already runs in parallel with the other chunks.
pub(crate) fn matmul_serial<T: Real>(
    dims: (usize, usize, usize),
    dst: &mut [T],
    dst_rs: usize,
    a: (&[T], usize, usize),
    b: (&[T], usize, usize),
    accumulate: bool,
) {
    gemm_checked(dims, dst, dst_rs, a, b, accumulate, 1);
}

fn gemm_checked<T: Real>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_rs: usize,
    (a, a_rs, a_cs): (&[T], usize, usize),
    (b, b_rs, b_cs): (&[T], usize, usize),
    accumulate: bool,
    threads: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    // Rows of `dst` must not overlap: the parallel kernel writes them from several
    // threads, so overlapping rows would be a data race reachable from safe code.
    assert!(
        m == 1 || dst_rs >= n,
        "matmul: dst rows overlap (stride {dst_rs} < {n} columns)"
    );
    assert!((m - 1) * dst_rs + n <= dst.len(), "matmul: dst too short");
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|r| dst[r * dst_rs..r * dst_rs + n].fill(T::ZERO));
        }
        return;
    }
    assert!(
        (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "matmul: lhs too short"
    );
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "matmul: rhs too short"
    );
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let stride = |s: usize| s as isize;
    // SAFETY: the asserts above keep every element the strides reach inside the slices;
    // `dst` is borrowed mutably, so it cannot alias `a` or `b`.
    #[allow(unsafe_code)]
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            stride(dst_rs),
            accumulate,
            a.as_ptr(),
            stride(a_cs),
            stride(a_rs),
            b.as_ptr(),
            stride(b_cs),
            stride(b_rs),
            T::ONE,
            T::ONE,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// Runs a batch chunk's time loop `f`: inside a function compiled for AVX2 and FMA when
/// the CPU has them (the pointwise loops run eight lanes wide instead of SSE2's four; the
/// results are the same bit for bit, as the loops are elementwise and Rust never
/// contracts a multiply and an add into an FMA by itself), and with denormal floats
/// flushed to zero.
///
/// Flushing matters for speed: on long sequences the gradients that travel back through
/// time shrink into f32's denormal range (below 1.2e-38), where each multiply in the
/// recurrent GEMM takes a microcode assist; measured on this project's Intel Xeon, an
/// LSTM step at H = 64, B = 32 went from 157 ms to 18 ms at T = 200 and from 276 ms to
/// 41 ms at T = 400 (T = 100, without denormals: 7.2–7.6 ms either way). What it changes in the
/// numbers is below 1.2e-38. The mode is set for the loop and restored after it, on
/// whichever thread runs the chunk, so results do not depend on the thread count.
#[inline(always)]
pub(crate) fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        let _flush = FlushDenormals::new();
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            #[target_feature(enable = "avx2,fma")]
            fn avx2<R>(f: impl FnOnce() -> R) -> R {
                f()
            }
            // SAFETY: the CPU has the features `avx2` is compiled for.
            #[allow(unsafe_code)]
            return unsafe { avx2(f) };
        }
        f()
    }
    #[cfg(not(target_arch = "x86_64"))]
    f()
}

/// SSE's flush-to-zero and denormals-are-zero modes (MXCSR bits 15 and 6) while it lives;
/// the previous MXCSR comes back when it is dropped.
#[cfg(target_arch = "x86_64")]
struct FlushDenormals {
    saved: u32,
}

#[cfg(target_arch = "x86_64")]
impl FlushDenormals {
    const FTZ_DAZ: u32 = 0x8040;

    fn new() -> Self {
        let mut saved: u32 = 0;
        let flushed: u32;
        // SAFETY: `stmxcsr` stores the 32-bit MXCSR into `saved`, a live local; `ldmxcsr`
        // loads a copy with only the FTZ and DAZ bits added, which changes how denormal
        // results and inputs are treated, not rounding, exceptions or memory.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::asm!("stmxcsr [{}]", in(reg) &mut saved, options(nostack));
            flushed = saved | Self::FTZ_DAZ;
            std::arch::asm!("ldmxcsr [{}]", in(reg) &flushed, options(nostack, readonly));
        }
        Self { saved }
    }
}

#[cfg(target_arch = "x86_64")]
impl Drop for FlushDenormals {
    fn drop(&mut self) {
        // SAFETY: restores the MXCSR saved by `new` on this thread.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::asm!("ldmxcsr [{}]", in(reg) &self.saved, options(nostack, readonly));
        }
    }
}

/// Rows of the batch each chunk of the recurrence takes. The recurrence of one sequence
/// never reads another's, so batch chunks run their time loops independently, in
/// parallel. The chunk size is fixed, not derived from the thread count, so that every
/// GEMM has the same shape (and the results the same bits) whatever the threads.
pub(crate) fn chunk_rows(batch: usize) -> usize {
    const ROWS: usize = 16;
    batch.clamp(1, ROWS)
}

/// The `(cols, rows)` transpose of a `(rows, cols)` row-major matrix. Recurrent weights
/// are transposed once per sequence so that each step's GEMM reads them in the layout
/// the `gemm` kernels take without repacking.
pub(crate) fn transpose<T: Real>(matrix: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::ZERO; rows * cols];
    for (r, row) in matrix.chunks_exact(cols).enumerate() {
        for (c, &v) in row.iter().enumerate() {
            out[c * rows + r] = v;
        }
    }
    out
}

/// Column sums of a `(rows, cols)` row-major matrix, added to `out`.
pub(crate) fn add_column_sums<T: Real>(out: &mut [T], matrix: &[T], cols: usize) {
    for row in matrix.chunks_exact(cols) {
        out.iter_mut().zip(row).for_each(|(o, &v)| *o += v);
    }
}

/// Asks the caches for `len` elements of `values` from `start` (addresses past the end
/// are harmless: a prefetch never faults).
#[inline(always)]
pub(crate) fn prefetch<T>(values: &[T], start: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..len).step_by(64 / size_of::<T>().max(1)) {
        let line = values.as_ptr().wrapping_add(start + offset);
        // SAFETY: a prefetch reads nothing the program sees and never faults.
        #[allow(unsafe_code)]
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.cast());
        }
    }
}

/// The contiguous slice a CPU storage holds for `layout`.
pub(crate) fn slice<'a, T: Real>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [T]> {
    let data = T::cpu_storage_as_slice(storage)?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("fused kernels need contiguous inputs"),
    }
}

/// The sizes of one layer over one batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub batch: usize,
    pub seq_len: usize,
    pub input: usize,
    pub hidden: usize,
    /// Whether the backward computes `∂L/∂x`: not when nothing asks for it (the first
    /// layer, whose input is the data), which saves a `B·T × G·H × I` product.
    pub input_grad: bool,
}

/// Runs a layer's kernel over `xs (B, T, I)` (`T ≥ 1`) from `state0` with the layer's
/// parameters packed in spec order. `kernel` makes the op from the sizes and the sink
/// its backward records the gradient flow into.
pub(crate) fn apply<K: Kernel>(
    xs: &Tensor,
    state0: &Tensor,
    weights: &LayerWeights,
    kernel: impl FnOnce(Dims, FlowSink) -> K,
) -> Result<(Tensor, GradFlow)> {
    let (batch, seq_len, input) = xs.dims3()?;
    let dims = Dims {
        batch,
        seq_len,
        input,
        hidden: weights.hidden,
        input_grad: xs.track_op(),
    };
    let sink = FlowSink::default();
    let params = pack(&weights.tensors.iter().collect::<Vec<_>>())?;
    let op = FusedOp {
        kernel: kernel(dims, sink.clone()),
        backend: weights.backend.clone(),
    };
    let out = xs
        .contiguous()?
        .apply_op3(&state0.contiguous()?, &params, op)?;
    Ok((out, GradFlow::recorded(sink)))
}

/// Step `t` of a `(B, T', H)` output: `(B, H)`.
pub(crate) fn step_of(out: &Tensor, t: usize) -> Result<Tensor> {
    out.narrow(1, t, 1)?.squeeze(1)
}

/// A fused layer: forward over the whole sequence and backward through time, generic
/// over the float type. Arguments are the input `(B, T, I)`, the initial state and the
/// flat parameters, all contiguous.
pub(crate) trait Kernel: Send + Sync + 'static {
    /// The op's name in candle's graph.
    const NAME: &'static str;

    /// The sizes the op runs at.
    fn dims(&self) -> Dims;

    /// Shape of the op's output: the hidden states `(B, T, H)` unless the cell adds more.
    fn out_shape(&self) -> Shape {
        let Dims {
            batch,
            seq_len,
            hidden,
            ..
        } = self.dims();
        Shape::from((batch, seq_len, hidden))
    }

    /// The output; saves what the backward needs in the kernel.
    fn forward<T: Real>(&self, x: &[T], state0: &[T], params: &[T]) -> Result<Vec<T>>;

    /// Gradients of the input, the initial state and the parameters, given the forward's
    /// output and its gradient.
    fn backward<T: Real>(
        &self,
        x: &[T],
        state0: &[T],
        params: &[T],
        out: &[T],
        grad_out: &[T],
    ) -> Result<(Vec<T>, Vec<T>, Vec<T>)>;

    /// [`Kernel::forward`] on a GPU, in f32, for the cells whose spec says
    /// [`CellSpec::has_cuda_kernel`].
    #[cfg(feature = "cuda")]
    fn cuda_forward(
        &self,
        gpu: &Gpu,
        x: &[f32],
        state0: &[f32],
        params: &[f32],
    ) -> Result<Vec<f32>> {
        let _ = (gpu, x, state0, params);
        bail!(
            "{} has no CUDA kernel: train it on the CPU (train.device: cpu)",
            Self::NAME
        )
    }

    /// [`Kernel::backward`] on a GPU, after [`Kernel::cuda_forward`].
    #[cfg(feature = "cuda")]
    fn cuda_backward(
        &self,
        gpu: &Gpu,
        x: &[f32],
        state0: &[f32],
        params: &[f32],
        out: &[f32],
        grad_out: &[f32],
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let _ = (gpu, x, state0, params, out, grad_out);
        bail!(
            "{} has no CUDA kernel: train it on the CPU (train.device: cpu)",
            Self::NAME
        )
    }
}

/// Any [`Kernel`] as a candle op, run on `backend`.
pub(crate) struct FusedOp<K> {
    kernel: K,
    backend: Backend,
}

impl<K: Kernel> CustomOp3 for FusedOp<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let storage = match (&self.backend, s1) {
            (Backend::Cpu, CpuStorage::F32(_)) => CpuStorage::F32(self.kernel.forward::<f32>(
                slice(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
            )?),
            (Backend::Cpu, CpuStorage::F64(_)) => CpuStorage::F64(self.kernel.forward::<f64>(
                slice(s1, l1)?,
                slice(s2, l2)?,
                slice(s3, l3)?,
            )?),
            #[cfg(feature = "cuda")]
            (Backend::Cuda(gpu), CpuStorage::F32(_)) => {
                let [x, state0, params] = [slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?];
                CpuStorage::F32(gpu.busy(|| self.kernel.cuda_forward(gpu, x, state0, params))?)
            }
            _ => bail!("{} runs in f32 or f64 on the CPU, f32 on a GPU", K::NAME),
        };
        Ok((storage, self.kernel.out_shape()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        state0: &Tensor,
        params: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        type Grads<T> = (Vec<T>, Vec<T>, Vec<T>);
        /// Calls `backward` on the tensors' data, read in place (no copies of the large
        /// output and its gradient), and wraps its gradients as tensors.
        fn run<T: Real>(
            name: &str,
            [x, state0, params, res, grad_res]: [&Tensor; 5],
            backward: impl FnOnce([&[T]; 5]) -> Result<Grads<T>>,
        ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
            let grad_res = grad_res.contiguous()?;
            let guards = [x, state0, params, res, &grad_res].map(Tensor::storage_and_layout);
            let mut slices = Vec::with_capacity(5);
            for (storage, layout) in &guards {
                match &**storage {
                    Storage::Cpu(cpu) => slices.push(slice::<T>(cpu, layout)?),
                    _ => bail!("{name} reads CPU tensors"),
                }
            }
            let (dx, ds, dp) = backward([slices[0], slices[1], slices[2], slices[3], slices[4]])?;
            // An empty `∂L/∂x`: not computed, as no gradient was asked of the input.
            let dx = (!dx.is_empty()).then(|| tensor(dx, x.dims())).transpose()?;
            Ok((
                dx,
                Some(tensor(ds, state0.dims())?),
                Some(tensor(dp, params.dims())?),
            ))
        }
        let args = [x, state0, params, res, grad_res];
        let kernel = &self.kernel;
        match (&self.backend, x.dtype()) {
            (Backend::Cpu, DType::F32) => run::<f32>(K::NAME, args, |[x, s, p, o, g]| {
                kernel.backward(x, s, p, o, g)
            }),
            (Backend::Cpu, DType::F64) => run::<f64>(K::NAME, args, |[x, s, p, o, g]| {
                kernel.backward(x, s, p, o, g)
            }),
            #[cfg(feature = "cuda")]
            (Backend::Cuda(gpu), DType::F32) => run::<f32>(K::NAME, args, |[x, s, p, o, g]| {
                gpu.busy(|| kernel.cuda_backward(gpu, x, s, p, o, g))
            }),
            (_, other) => bail!("{} cannot run in {other:?} here", K::NAME),
        }
    }
}

/// `(B·T, G·H)` pre-activations `X · W_ihᵀ + bias` of every step at once.
pub(crate) fn input_projection<T: Real>(
    x: &[T],
    weight_ih: &[T],
    bias: &[T],
    rows: usize,
    input: usize,
) -> Vec<T> {
    let cols = bias.len();
    if input <= 2 && rows * cols > 256 {
        return short_projection(x, weight_ih, bias, input);
    }
    let mut pre = vec![T::ZERO; rows * cols];
    matmul(
        (rows, cols, input),
        &mut pre,
        cols,
        (x, input, 1),
        (weight_ih, 1, input),
        false,
    );
    for row in pre.chunks_exact_mut(cols) {
        row.iter_mut().zip(bias).for_each(|(p, &b)| *p += b);
    }
    pre
}

/// [`input_projection`] for one or two input features (the adding task's), in one pass
/// instead of three (zeroing, product, bias). The `gemm` crate computes such a product
/// as `x₁·w₁ + x₀·w₀`, each product and the sum rounded on their own (no fused
/// multiply-add: its small-`k` path, taken above 256 output elements), and the bias was
/// added after it; the same operations in the same order give the same bits.
/// The weights' columns are split apart first, so that each row is one pass over
/// contiguous slices (it vectorises; reading `(G·H, 2)` weights pairwise did not).
fn short_projection<T: Real>(x: &[T], weight_ih: &[T], bias: &[T], input: usize) -> Vec<T> {
    let column =
        |i: usize| -> Vec<T> { weight_ih.iter().skip(i).step_by(input).copied().collect() };
    let (w0, w1) = (column(0), column(input - 1));
    let mut pre = Vec::with_capacity(x.len() / input * bias.len());
    for features in x.chunks_exact(input) {
        let weights = w0.iter().zip(&w1).zip(bias);
        if let [x0, x1] = *features {
            pre.extend(weights.map(|((&w0, &w1), &b)| (x1 * w1 + x0 * w0) + b));
        } else {
            pre.extend(weights.map(|((&w0, _), &b)| features[0] * w0 + b));
        }
    }
    pre
}

/// Where the parts of a gated layer's flat parameters lie: `[weight_ih | weight_hh |
/// bias_ih | bias_hh]` ([`crate::spec::gated_layer`]) and whatever the cell adds after
/// them (`extra`, e.g. the LSTM's peepholes), then the total length `end`.
pub(crate) struct GatedOffsets {
    pub weight_ih: usize,
    pub weight_hh: usize,
    pub bias_ih: usize,
    pub bias_hh: usize,
    /// Start of each parameter after `bias_hh`, in spec order.
    pub extra: Vec<usize>,
    pub end: usize,
}

impl GatedOffsets {
    /// The offsets of `spec`'s layer with `input` features and `hidden` units.
    pub(crate) fn new(spec: &dyn CellSpec, input: usize, hidden: usize) -> Self {
        let (ranges, end) = param_ranges(&spec.layer_params(input, hidden));
        Self {
            weight_ih: ranges[0].start,
            weight_hh: ranges[1].start,
            bias_ih: ranges[2].start,
            bias_hh: ranges[3].start,
            extra: ranges[4..].iter().map(|r| r.start).collect(),
            end,
        }
    }

    /// Gate rows `G·H`.
    pub(crate) fn gate_rows(&self) -> usize {
        self.bias_hh - self.bias_ih
    }

    /// The forward's prologue shared by the gated kernels: checks the sizes, then returns
    /// the input projection of every step `(B·T, G·H)` with `bias_ih` added and, on its
    /// first `folded` columns, `bias_hh` too (the rest of `bias_hh` is the kernel's).
    pub(crate) fn prologue<T: Real>(
        &self,
        kernel: &str,
        (x, params): (&[T], &[T]),
        folded: usize,
        (rows, input): (usize, usize),
    ) -> Result<Vec<T>> {
        if params.len() != self.end || x.len() != rows * input {
            bail!("{kernel}: inputs do not match the layer's sizes");
        }
        let mut bias = params[self.bias_ih..self.bias_hh].to_vec();
        bias[..folded]
            .iter_mut()
            .zip(&params[self.bias_hh..])
            .for_each(|(b, &h)| *b += h);
        let weight_ih = &params[self.weight_ih..self.weight_hh];
        Ok(input_projection(x, weight_ih, &bias, rows, input))
    }
}

/// The backward's epilogue for a cell whose recurrent GEMM and input projection see the
/// same pre-activations (RNN, LSTM): from `d_pre (B·T, G·H)`, the gradients of the
/// parameters (`weight_ih`, `weight_hh` over all `B·T` rows at once, both biases; the
/// `extra` parameters left zero for the caller) and of the input.
pub(crate) fn gated_weight_grads<T: Real>(
    offsets: &GatedOffsets,
    d_pre: &[T],
    x: &[T],
    params: &[T],
    h0: (&[T], usize),
    out: (&[T], usize),
    dims: Dims,
) -> (Vec<T>, Vec<T>) {
    let Dims {
        batch,
        seq_len,
        input,
        hidden,
        input_grad,
    } = dims;
    let rows = batch * seq_len;
    let gh = offsets.gate_rows();
    let mut d_params = vec![T::ZERO; offsets.end];
    let (d_weight_ih, d_bias_ih) = two_mut(
        &mut d_params,
        offsets.weight_ih..offsets.weight_hh,
        offsets.bias_ih..offsets.bias_hh,
    );
    let d_x = input_grads(
        d_pre,
        x,
        &params[offsets.weight_ih..offsets.weight_hh],
        (d_weight_ih, Some(d_bias_ih)),
        (rows, gh, input),
        input_grad,
    );
    par_product_rows(
        &mut d_params[offsets.weight_hh..offsets.bias_ih],
        (d_pre, 1, gh),
        previous_state(h0, out, seq_len, hidden),
        (rows, hidden),
    );
    let (head, tail) = d_params.split_at_mut(offsets.bias_hh);
    tail[..gh].copy_from_slice(&head[offsets.bias_ih..]);
    (d_x, d_params)
}

/// Two disjoint ranges of `values`, the first before the second, both writable.
pub(crate) fn two_mut<T>(
    values: &mut [T],
    first: std::ops::Range<usize>,
    second: std::ops::Range<usize>,
) -> (&mut [T], &mut [T]) {
    assert!(first.end <= second.start, "two_mut: ranges out of order");
    let (head, tail) = values.split_at_mut(second.start);
    (&mut head[first], &mut tail[..second.len()])
}

/// Row `b·T + t` of the `(B·T, H)` matrix of `h_{t−1}`, where it lies: `h0` row `b`
/// (stride `h0_rs`) at `t = 0`, else the output at `t − 1` (output rows of batch `b`
/// start at `b·out_rs`). The recurrent weight gradients pack these rows directly
/// (copying them into a matrix first was 1.2 % of an LSTM step at H = 128, T = 100).
pub(crate) fn previous_state<'a, T>(
    (h0, h0_rs): (&'a [T], usize),
    (out, out_rs): (&'a [T], usize),
    seq_len: usize,
    hidden: usize,
) -> impl Fn(usize) -> &'a [T] {
    move |row| {
        let (b, t) = (row / seq_len, row % seq_len);
        if t == 0 {
            &h0[b * h0_rs..b * h0_rs + hidden]
        } else {
            &out[b * out_rs + (t - 1) * hidden..b * out_rs + t * hidden]
        }
    }
}

/// Given `d_pre (B·T, G·H)`, the gradient of the input projection's output: writes
/// `∂L/∂W_ih = d_preᵀ · X` into `d_weight_ih`, adds the column sums of `d_pre` (the
/// gradient of a bias added to the projection, in row order as [`add_column_sums`]) to
/// `d_bias` if given, and returns `∂L/∂X = d_pre · W_ih`.
///
/// `∂L/∂W_ih` reads `d_pre` by columns and has only `input` columns (a few to tens):
/// the `gemm` crate took 36 ms for it at B·T = 32,000, G·H = 1,024, 2 inputs (2
/// threads), so it goes through [`par_product`], which gives the crate's sums bit for
/// bit, except where the crate itself takes other paths (one input feature, products
/// of at most 256 elements), which it still computes. `∂L/∂X` reads `d_pre` by rows;
/// the crate does it well (6.5 ms there). Without `input_grad` (see [`Dims`]) `∂L/∂X`
/// is not computed and comes back empty.
pub(crate) fn input_grads<T: Real>(
    d_pre: &[T],
    x: &[T],
    weight_ih: &[T],
    (d_weight_ih, d_bias): (&mut [T], Option<&mut [T]>),
    (rows, cols, input): (usize, usize, usize),
    input_grad: bool,
) -> Vec<T> {
    if input >= 2 && rows >= 3 && cols * input > 256 {
        match d_bias {
            Some(d_bias) => {
                par_product_and_column_sums(d_weight_ih, (d_pre, cols), x, (rows, input), d_bias);
            }
            None => par_product(d_weight_ih, (d_pre, 1, cols), x, rows, input),
        }
    } else {
        matmul(
            (cols, input, rows),
            d_weight_ih,
            input,
            (d_pre, 1, cols),
            (x, input, 1),
            false,
        );
        if let Some(d_bias) = d_bias {
            add_column_sums(d_bias, d_pre, cols);
        }
    }
    if !input_grad {
        return Vec::new();
    }
    let mut d_x = vec![T::ZERO; rows * input];
    matmul(
        (rows, input, cols),
        &mut d_x,
        input,
        (d_pre, cols, 1),
        (weight_ih, input, 1),
        false,
    );
    d_x
}

/// Accumulates `‖∂L/∂h_{b,t}‖` over the batch rows of one chunk, per step;
/// [`Self::finish`] averages the chunks over the batch.
pub(crate) struct FlowNorms {
    per_step: Vec<f64>,
    wanted: bool,
}

impl FlowNorms {
    /// Norms for `seq_len` steps, to be stored in `sink`. They are computed only while
    /// somebody holds the layer's [`GradFlow`](crate::cell::GradFlow) as well as the
    /// kernel (training keeps it on the steps whose flow it records): otherwise each
    /// step's in-order f64 sum would cost a few percent of a small step for nothing.
    pub(crate) fn new(seq_len: usize, sink: &FlowSink) -> Self {
        Self {
            per_step: vec![0.0; seq_len],
            wanted: std::sync::Arc::strong_count(sink) > 1,
        }
    }

    /// Adds one batch row's `‖∂L/∂h_t‖` (`d_h` its values), if the flow is wanted.
    #[inline(always)]
    pub(crate) fn add<T: Real>(&mut self, t: usize, d_h: &[T]) {
        if self.wanted {
            self.per_step[t] += squared_sum(d_h).sqrt();
        }
    }

    /// Stores in `sink` the batch-averaged norms of the batch chunks' `parts`, added up
    /// in chunk order (so the result does not depend on the threads).
    pub(crate) fn finish<'a>(
        parts: impl IntoIterator<Item = &'a Self>,
        dims: Dims,
        sink: &FlowSink,
    ) {
        let mut per_step = vec![0.0; dims.seq_len];
        let mut wanted = false;
        for part in parts {
            wanted |= part.wanted;
            per_step
                .iter_mut()
                .zip(&part.per_step)
                .for_each(|(a, b)| *a += b);
        }
        if !wanted {
            return;
        }
        let batch = dims.batch as f64;
        let norms = per_step.into_iter().map(|n| n / batch).collect();
        *sink.lock().expect("gradient-flow sink") = Some(norms);
    }
}

/// Adds the batch chunks' gradients of one parameter (`parts`, each with its chunk's
/// flow) into `total` and stores their gradient flow in `sink`, both in chunk order, so
/// the sums do not depend on the threads.
pub(crate) fn finish_chunks<T: Real>(
    parts: &[(Vec<T>, FlowNorms)],
    total: &mut [T],
    dims: Dims,
    sink: &FlowSink,
) {
    for (part, _) in parts {
        total
            .iter_mut()
            .zip(part)
            .for_each(|(sum, &value)| *sum += value);
    }
    FlowNorms::finish(parts.iter().map(|(_, norms)| norms), dims, sink);
}

/// `Σ v²` in f64.
fn squared_sum<T: Real>(values: &[T]) -> f64 {
    values.iter().map(|v| v.to_f64() * v.to_f64()).sum()
}

/// Activations saved by a forward pass for its backward, whatever the dtype.
pub(crate) type Saved = Mutex<Option<Box<dyn Any + Send>>>;

/// What `kernel`'s forward left in `saved`, taken: each forward has one backward.
pub(crate) fn take_saved<S: 'static>(saved: &Saved, kernel: &str) -> Result<S> {
    let taken = saved.lock().expect("saved activations").take();
    match taken.map(|s| s.downcast::<S>()) {
        Some(Ok(s)) => Ok(*s),
        _ => bail!(
            "{kernel} backward without its forward's activations (run backward once per forward)"
        ),
    }
}

/// Whether the fused kernels serve this input: CPU, f32 or f64, at least one step.
pub(crate) fn supported(xs: &Tensor) -> bool {
    xs.device().is_cpu()
        && matches!(xs.dtype(), DType::F32 | DType::F64)
        && xs.dim(1).is_ok_and(|t| t > 0)
}

/// Flattens and joins parameter tensors into one `(N,)` tensor (its backward splits
/// the gradient back).
pub(crate) fn pack(tensors: &[&Tensor]) -> Result<Tensor> {
    let flat = tensors
        .iter()
        .map(|t| t.flatten_all())
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&flat, 0)
}

/// A gradient buffer as a tensor of `dims` on the CPU.
pub(crate) fn tensor<T: Real>(data: Vec<T>, dims: &[usize]) -> Result<Tensor> {
    Tensor::from_vec(data, dims, &candle_core::Device::Cpu)
}

/// Values of mixed sign and magnitude, so that the order of a sum shows in its bits:
/// the inputs of the tests that hold a kernel to the `gemm` crate's bits.
#[cfg(test)]
pub(crate) fn mixed_values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32)
        .map(|i| {
            let h = (i.wrapping_add(seed).wrapping_mul(2_654_435_761)) >> 8;
            (h % 20_001) as f32 / 1000.0 - 10.0 + (h % 7) as f32 * 1e-4
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The one-pass projection of one or two features has the `gemm` crate's bits (what
    /// `input_projection` computed before), at the adding task's shapes and odd ones.
    #[test]
    fn short_projections_have_the_gemm_crates_bits() {
        for &(rows, cols, input) in &[(3200, 1024, 2), (600, 148, 2), (257, 3, 2), (1000, 37, 1)] {
            let x = mixed_values(rows * input, 1);
            let weight_ih = mixed_values(cols * input, 2);
            let bias = mixed_values(cols, 3);
            let mut expected = vec![0.0f32; rows * cols];
            matmul(
                (rows, cols, input),
                &mut expected,
                cols,
                (&x, input, 1),
                (&weight_ih, 1, input),
                false,
            );
            for row in expected.chunks_exact_mut(cols) {
                row.iter_mut().zip(&bias).for_each(|(p, &b)| *p += b);
            }
            let got = input_projection(&x, &weight_ih, &bias, rows, input);
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&expected), "{rows} × {cols} × {input}");
        }
    }

    /// `input_grads`' `∂L/∂W_ih` through the packed kernels has the `gemm` crate's bits
    /// (what it computed before), and its bias gradient `add_column_sums`' (the narrow
    /// product's fused sums, 2–4 inputs, tiles and leftover rows), on shapes of the adding task (2 inputs), the copy
    /// task's one-hot inputs and odd sizes, with several of the crate's k-blocks (`B·T`
    /// up to 6,400 terms); and `∂L/∂X` too.
    #[test]
    fn input_gradients_have_the_gemm_crates_bits() {
        // (rows = B·T, cols = G·H, input)
        for &(rows, cols, input) in &[
            (6400, 1024, 2),
            (3200, 148, 10),
            (1000, 600, 3),
            (130, 96, 5),
        ] {
            let d_pre = mixed_values(rows * cols, 1);
            let x = mixed_values(rows * input, 2);
            let weight_ih = mixed_values(cols * input, 3);
            let mut d_weight_ih = mixed_values(cols * input, 4);
            // Sums added to values already there, as to a bias gradient in progress.
            let mut d_bias = mixed_values(cols, 5);
            let mut expected_bias = d_bias.clone();
            add_column_sums(&mut expected_bias, &d_pre, cols);
            let d_x = input_grads(
                &d_pre,
                &x,
                &weight_ih,
                (&mut d_weight_ih, Some(&mut d_bias)),
                (rows, cols, input),
                true,
            );
            let mut expected_dw = vec![0.0f32; cols * input];
            matmul(
                (cols, input, rows),
                &mut expected_dw,
                input,
                (&d_pre, 1, cols),
                (&x, input, 1),
                false,
            );
            let mut expected_dx = vec![0.0f32; rows * input];
            matmul(
                (rows, input, cols),
                &mut expected_dx,
                input,
                (&d_pre, cols, 1),
                (&weight_ih, input, 1),
                false,
            );
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&d_weight_ih),
                bits(&expected_dw),
                "dW_ih at {rows} × {cols} × {input}"
            );
            assert_eq!(
                bits(&d_bias),
                bits(&expected_bias),
                "column sums at {rows} × {cols} × {input}"
            );
            assert_eq!(
                bits(&d_x),
                bits(&expected_dx),
                "dX at {rows} × {cols} × {input}"
            );
        }
    }

    #[test]
    fn fast_tanh_is_within_a_few_ulp() {
        let mut worst = 0f64;
        for k in -200_000..=200_000 {
            let x = k as f32 * 1e-4; // [−20, 20]
            let err = (f64::from(fast_tanh(x)) - f64::from(x).tanh()).abs();
            worst = worst.max(err);
        }
        assert!(worst < 5e-7, "max |fast_tanh − tanh| = {worst}");
        assert_eq!(fast_tanh(0.0), 0.0);
        assert_eq!(fast_tanh(30.0), 1.0);
        assert_eq!(fast_tanh(-30.0), -1.0);
    }

    #[test]
    fn matmul_with_strides_matches_the_definition() {
        // a = [[1, 2, 3], [4, 5, 6]] read transposed from its column-major copy.
        let a_col_major = [1.0f64, 4.0, 2.0, 5.0, 3.0, 6.0];
        let b = [1.0f64, 0.0, 2.0, 1.0, 0.0, 3.0]; // [[1, 0], [2, 1], [0, 3]]
        let mut dst = [10.0f64; 4];
        matmul(
            (2, 2, 3),
            &mut dst,
            2,
            (&a_col_major, 1, 2),
            (&b, 2, 1),
            true,
        );
        // a·b = [[5, 11], [14, 23]], plus the 10s already there.
        assert_eq!(dst, [15.0, 21.0, 24.0, 33.0]);
        matmul((2, 2, 0), &mut dst, 2, (&[], 0, 0), (&[], 0, 0), false);
        assert_eq!(dst, [0.0; 4]);
    }
}
