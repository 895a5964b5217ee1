//! The recurrent GEMM of the time loops, on a weight matrix packed once per sequence.
//!
//! Every step of a recurrence multiplies a few batch rows (a chunk of at most 16) by the
//! same recurrent matrix. A general GEMM re-reads that matrix with a row stride and
//! re-derives its blocking on every call; here the matrix is packed once per forward or
//! backward into panels of [`PANEL`] columns, each panel's `k` rows contiguous; the left
//! operand is copied per block of terms with each register tile's rows side by side (with
//! AVX-512, 16 × 16 blocks transposed in registers), and a tile of up to 4 (AVX2,
//! portable) or 16 (AVX-512) rows × `PANEL` accumulators streams down a panel.
//! [`par_product`] does the same for the weight gradients and the LRU's readout over
//! all `B·T` steps, one part of the rows per thread. Measured on the project's Xeon,
//! one thread, 16 × 1,024 × 256 (the LSTM's forward step at H = 256): 120–129 GFLOP/s
//! with AVX-512 and 91–96 with AVX2, against the crate's 67–81 (three runs, FAQ sweep
//! paused).
//!
//! **The sums are the `gemm` crate's, bit for bit.** The kernels called it per step
//! before; each output element there is a chain of fused multiply-adds from zero in `k`
//! order over blocks of `kc` terms, each block's sum added to the destination (or, for
//! the first block of an overwrite, stored). This module computes each element the same
//! way, with `kc` from the crate's own blocking rule ([`block_depth`]), so results did not
//! change when it replaced the crate in the time loops (`same_bits_as_the_gemm_crate`);
//! tile sizes, vector width and threads do not enter any element's sum.

use rayon::prelude::*;

use super::fused::{Real, add_column_sums, prefetch};

/// Columns per packed panel: two AVX2 vectors of f32.
pub(crate) const PANEL: usize = 16;
/// Rows per register tile in the portable and AVX2 kernels (`ROWS × PANEL` accumulators:
/// 8 of AVX2's 16 vector registers); the AVX-512 kernel takes 16 rows.
const ROWS: usize = 4;
/// Floats of `a` a group of rows may take in one k-block (1 MiB of f32, half an L2).
const GROUP_FLOATS: usize = 256 * 1024;

/// A `k × (blocks·width)` matrix packed into panels, for products `a (rows × k) · W`.
///
/// Columns come in `blocks` (the gates) of `width` (the units); each block is cut into
/// `⌈width / PANEL⌉` panels, the last one padded with zeros, so that a panel never
/// straddles two gates.
pub(crate) struct Panels<T> {
    /// Panel `p` of block `b` holds `W[kk, b·width + p·PANEL + j]` at
    /// `start + ((b·per_block + p)·k + kk)·PANEL + j`.
    storage: Vec<T>,
    /// Where the panels start in `storage`: on a 64-byte boundary, so that no vector
    /// load of a panel row straddles two cache lines (the allocator aligns to 16).
    start: usize,
    shape: Shape,
}

/// The packed matrix's sizes.
#[derive(Clone, Copy)]
struct Shape {
    k: usize,
    blocks: usize,
    width: usize,
    per_block: usize,
    /// Terms per partial sum (the `gemm` crate's `kc` for the same product).
    kc: usize,
}

/// A kernel for f32: `(shape, panels, dst, a, rows, accumulate)` as [`Panels::mul`].
type F32Kernel = fn(Shape, &[f32], (&mut [f32], usize), (&[f32], usize, usize), usize, bool);

impl<T: Real> Panels<T> {
    /// Packs the matrix whose element `(kk, c)` is `w[kk·rs + c·cs]`, for `k` rows and
    /// `blocks × width` columns. `rows` is the number of rows the `gemm` crate was called
    /// with for this product (the batch chunk), which its blocking rule reads.
    pub(crate) fn pack(
        w: &[T],
        (rs, cs): (usize, usize),
        k: usize,
        (blocks, width): (usize, usize),
        rows: usize,
    ) -> Self {
        if cs == 1 {
            return Self::pack_rows(|kk| &w[kk * rs..], k, (blocks, width), rows);
        }
        Self::build(k, (blocks, width), rows, |storage, kk, column, cols| {
            storage.extend((column..column + cols).map(|c| w[kk * rs + c * cs]));
        })
    }

    /// [`Self::pack`] for a row-major matrix given row by row: `row(kk)` holds the
    /// columns of row `kk` (the weight gradients' `h_{t−1}`, read where the outputs lie).
    pub(crate) fn pack_rows<'w>(
        row: impl Fn(usize) -> &'w [T],
        k: usize,
        (blocks, width): (usize, usize),
        rows: usize,
    ) -> Self
    where
        T: 'w,
    {
        Self::build(k, (blocks, width), rows, |storage, kk, column, cols| {
            let values = &row(kk)[column..column + cols];
            // A whole panel row as an array of known length: a `memcpy` call per row was
            // 1.7 % of an LSTM step at H = 128, T = 100.
            match <&[T; PANEL]>::try_from(values) {
                Ok(whole) => storage.extend_from_slice(whole),
                Err(_) => storage.extend_from_slice(values),
            }
        })
    }

    /// The panels in order, each row's `cols` values appended by `push_row(storage, kk,
    /// first column, cols)` and padded with zeros; the storage is filled as it grows,
    /// not zeroed first (the zeroing was 0.6 % of an LSTM step at H = 128, T = 100).
    fn build(
        k: usize,
        (blocks, width): (usize, usize),
        rows: usize,
        mut push_row: impl FnMut(&mut Vec<T>, usize, usize, usize),
    ) -> Self {
        let per_block = width.div_ceil(PANEL);
        let len = blocks * per_block * k * PANEL;
        let slack = 64 / size_of::<T>();
        let mut storage: Vec<T> = Vec::with_capacity(len + slack);
        let start = storage.as_ptr().align_offset(64).min(slack);
        storage.resize(start, T::ZERO);
        for block in 0..blocks {
            for first in (0..width).step_by(PANEL) {
                let cols = PANEL.min(width - first);
                for kk in 0..k {
                    push_row(&mut storage, kk, block * width + first, cols);
                    storage.resize(storage.len() + PANEL - cols, T::ZERO);
                }
            }
        }
        debug_assert_eq!(storage.len(), start + len);
        let shape = Shape {
            k,
            blocks,
            width,
            per_block,
            kc: block_depth(k, blocks * width, rows, size_of::<T>()),
        };
        Self {
            storage,
            start,
            shape,
        }
    }

    /// The panels.
    fn data(&self) -> &[T] {
        let len = self.shape.blocks * self.shape.per_block * self.shape.k * PANEL;
        &self.storage[self.start..self.start + len]
    }

    /// `dst[r·dst_rs + c] (+)= Σ_kk a[r·a_rs + kk·a_cs] · W[kk, c]` for `rows` rows and every
    /// column; `accumulate` adds to `dst` instead of overwriting it. `a`'s rows or its
    /// terms are contiguous (`a_cs` or `a_rs` is 1). In f32 on a CPU with
    /// AVX-512 or AVX2 and FMA, by the widest SIMD kernel; else in plain Rust.
    pub(crate) fn mul(
        &self,
        (dst, dst_rs): (&mut [T], usize),
        (a, a_rs, a_cs): (&[T], usize, usize),
        rows: usize,
        accumulate: bool,
    ) {
        if let (Some(kernel), Some(data), Some(a)) =
            (simd_kernel(), T::f32s(self.data()), T::f32s(a))
        {
            let dst = T::f32s_mut(dst).expect("f32 like the weights");
            return kernel(
                self.shape,
                data,
                (dst, dst_rs),
                (a, a_rs, a_cs),
                rows,
                accumulate,
            );
        }
        portable(
            self.shape,
            self.data(),
            (dst, dst_rs),
            (a, a_rs, a_cs),
            rows,
            accumulate,
        );
    }
}

/// `dst = a · w` for a `k × n` row-major `w` and `rows = dst.len() / n` rows of `a`
/// (`a[r·a_rs + kk·a_cs]`, rows or terms contiguous), with `w` packed once and the rows
/// shared between the current pool's threads (which do not enter any sum); the same
/// sums as the `gemm` crate's product. The recurrent weight gradients `dᵀ · h` over all
/// `B·T` steps use it (`a_rs = 1`).
pub(crate) fn par_product<T: Real>(
    dst: &mut [T],
    a: (&[T], usize, usize),
    w: &[T],
    k: usize,
    n: usize,
) {
    par_product_strided(dst, a, (w, n, 1), (k, n), false);
}

/// [`par_product`] for a `w` whose element `(kk, c)` is `w[kk·w_rs + c·w_cs]` (a PyTorch
/// `(n, k)` weight read transposed has `w_rs = 1`), adding to `dst` when `accumulate`:
/// `dst (+)= a · w`, still the `gemm` crate's sums for the same product.
pub(crate) fn par_product_strided<T: Real>(
    dst: &mut [T],
    (a, a_rs, a_cs): (&[T], usize, usize),
    (w, w_rs, w_cs): (&[T], usize, usize),
    (k, n): (usize, usize),
    accumulate: bool,
) {
    let rows = dst.len() / n;
    if a_rs == 1 && w_cs == 1 && n <= NARROW {
        return narrow_product(dst, (a, a_cs), (w, w_rs), (k, n), accumulate, None);
    }
    let panels = Panels::pack(w, (w_rs, w_cs), k, (1, n), rows);
    par_mul(dst, (a, a_rs, a_cs), &panels, n, accumulate);
}

/// [`par_product`] of `dᵀ` (`a = (d, 1, a_cs)`, `k` rows of `d`) and `w`, adding each
/// column sum of `d` (`Σ_kk d[kk, r]`, in `kk` order) to `column_sums[r]`: the input
/// weights' and input bias's gradients from the pre-activation gradients. Where the
/// product is narrow, the sums ride along its single pass over `d`.
pub(crate) fn par_product_and_column_sums<T: Real>(
    dst: &mut [T],
    (d, a_cs): (&[T], usize),
    w: &[T],
    (k, n): (usize, usize),
    column_sums: &mut [T],
) {
    if n <= NARROW {
        return narrow_product(dst, (d, a_cs), (w, n), (k, n), false, Some(column_sums));
    }
    par_product(dst, (d, 1, a_cs), w, k, n);
    add_column_sums(column_sums, &d[..k * a_cs], a_cs);
}

/// [`par_product`] for a `w` given row by row (`row(kk)`, at least `n` values): the
/// recurrent weight gradients' `h_{t−1}`, packed from the outputs without first being
/// copied into a matrix of their own.
pub(crate) fn par_product_rows<'w, T: Real + 'w>(
    dst: &mut [T],
    a: (&[T], usize, usize),
    row: impl Fn(usize) -> &'w [T],
    (k, n): (usize, usize),
) {
    let panels = Panels::pack_rows(row, k, (1, n), dst.len() / n);
    par_mul(dst, a, &panels, n, false);
}

/// `dst (+)= a · W` for packed `W` of `n` columns, the rows of `dst` shared between
/// the current pool's threads.
fn par_mul<T: Real>(
    dst: &mut [T],
    (a, a_rs, a_cs): (&[T], usize, usize),
    panels: &Panels<T>,
    n: usize,
    accumulate: bool,
) {
    let rows = dst.len() / n;
    // One part per thread, of at most `MAX_PART` rows: each part streams every panel
    // once per group of rows, so larger parts read the packed `h` (B·T × H, tens of MiB
    // at T = 1,000) fewer times.
    const MAX_PART: usize = 512;
    let threads = rayon::current_num_threads().max(1);
    let part_rows = rows
        .div_ceil(threads)
        .next_multiple_of(16)
        .clamp(16, MAX_PART);
    dst.par_chunks_mut(part_rows * n)
        .enumerate()
        .for_each(|(part, dst)| {
            let (first, part_rows) = (part * part_rows, dst.len() / n);
            panels.mul(
                (dst, n),
                (&a[first * a_rs..], a_rs, a_cs),
                part_rows,
                accumulate,
            );
        });
}

/// Columns up to which [`par_product_strided`] takes [`narrow_product`]: a panel of
/// [`PANEL`] columns would be mostly zeros (the input weights' gradient has as many
/// columns as the task has input features, 2 for the adding problem).
const NARROW: usize = 4;

/// `dst (+)= a · w` for `a[r + kk·a_cs]` (rows contiguous per term: the pre-activation
/// gradients read transposed) and a row-major `w` of at most [`NARROW`] columns, without
/// panels or copies: a tile of consecutive rows of `dst` is one set of vectors per
/// column, fed by each term's contiguous rows of `a` and a broadcast of `w`. The sums are
/// the panels' (and so the `gemm` crate's): a chain of fused multiply-adds from zero in
/// `k` order per block of `kc` terms, each block's sum stored or added.
fn narrow_product<T: Real>(
    dst: &mut [T],
    a: (&[T], usize),
    w: (&[T], usize),
    (k, n): (usize, usize),
    accumulate: bool,
    column_sums: Option<&mut [T]>,
) {
    let rows = dst.len() / n;
    let kc = block_depth(k, n, rows, size_of::<T>());
    let threads = rayon::current_num_threads().max(1);
    // Whole parts of 32 rows, the widest tile.
    let part_rows = rows.div_ceil(threads).next_multiple_of(32);
    // Each part's share of the column sums, if any.
    let sums: Vec<Option<&mut [T]>> = match column_sums {
        Some(sums) => sums.chunks_mut(part_rows).map(Some).collect(),
        None => (0..rows.div_ceil(part_rows)).map(|_| None).collect(),
    };
    dst.par_chunks_mut(part_rows * n)
        .zip(sums)
        .enumerate()
        .for_each(|(part, (dst, column_sums))| {
            let part = NarrowPart {
                dst,
                column_sums,
                first: part * part_rows,
                a,
                w,
                k,
                kc,
                accumulate,
            };
            match n {
                1 => part.columns::<1, 4>(),
                2 => part.columns::<2, 4>(),
                3 => part.columns::<3, 2>(),
                _ => part.columns::<NARROW, 2>(),
            }
        });
}

/// One thread's rows `first..` of a [`narrow_product`], whose sums go to `dst`.
struct NarrowPart<'a, T> {
    dst: &'a mut [T],
    /// `Σ_kk a[kk, r]` for each row `r` of the part is added here, if given: the same
    /// sums, in the same order, as `fused::add_column_sums` over `a`'s rows, made while
    /// `a` passes by anyway (a pass of its own was 1.8 % of an LSTM step at H = 128).
    column_sums: Option<&'a mut [T]>,
    first: usize,
    a: (&'a [T], usize),
    w: (&'a [T], usize),
    k: usize,
    kc: usize,
    accumulate: bool,
}

impl<T: Real> NarrowPart<'_, T> {
    /// `N` columns: tiles of `8·V` rows (`N·V` AVX2 vectors of sums) in f32 with AVX2
    /// and FMA, then the rest one row at a time.
    fn columns<const N: usize, const V: usize>(mut self) {
        let rows = self.dst.len() / N;
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("fma")
            && let (Some(dst), Some(a), Some(w)) =
                (T::f32s_mut(self.dst), T::f32s(self.a.0), T::f32s(self.w.0))
        {
            done = rows / (8 * V) * (8 * V);
            let column_sums = self
                .column_sums
                .as_deref_mut()
                .map(|sums| T::f32s_mut(&mut sums[..done]).expect("f32 like `a`"));
            let part = NarrowPart {
                dst: &mut dst[..done * N],
                column_sums,
                first: self.first,
                a: (a, self.a.1),
                w: (w, self.w.1),
                k: self.k,
                kc: self.kc,
                accumulate: self.accumulate,
            };
            // SAFETY: the CPU has the features the kernel is compiled for.
            #[allow(unsafe_code)]
            unsafe {
                avx2::narrow::<N, V>(part)
            };
        }
        for r in done..rows {
            self.row::<N>(r);
        }
    }

    /// Row `r` of the part, in plain Rust.
    fn row<const N: usize>(&mut self, r: usize) {
        let ((a, a_cs), (w, w_rs)) = (self.a, self.w);
        let row = self.first + r;
        if let Some(sums) = self.column_sums.as_deref_mut() {
            sums[r] = (0..self.k).fold(sums[r], |sum, kk| sum + a[kk * a_cs + row]);
        }
        for k0 in (0..self.k).step_by(self.kc) {
            let mut sums = [T::ZERO; N];
            for kk in k0..self.k.min(k0 + self.kc) {
                let x = a[kk * a_cs + row];
                for (sum, &w) in sums.iter_mut().zip(&w[kk * w_rs..kk * w_rs + N]) {
                    *sum = x.mul_add_(w, *sum);
                }
            }
            store_sums(
                &mut self.dst[r * N..(r + 1) * N],
                &sums,
                self.accumulate || k0 > 0,
            );
        }
    }
}

/// Stores (or adds, with `add`) one row's block sums.
#[inline(always)]
fn store_sums<T: Real>(out: &mut [T], sums: &[T], add: bool) {
    for (out, &sum) in out.iter_mut().zip(sums) {
        if add {
            *out += sum;
        } else {
            *out = sum;
        }
    }
}

/// The widest SIMD kernel this CPU runs, chosen once.
fn simd_kernel() -> Option<F32Kernel> {
    static KERNEL: std::sync::OnceLock<Option<F32Kernel>> = std::sync::OnceLock::new();
    *KERNEL.get_or_init(|| simd_kernels().first().map(|&(_, kernel)| kernel))
}

/// The SIMD kernels this CPU can run, widest first, by name.
fn simd_kernels() -> Vec<(&'static str, F32Kernel)> {
    #[allow(unused_mut)]
    let mut kernels: Vec<(&'static str, F32Kernel)> = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: only listed when the CPU has the feature the kernel is compiled for.
            #[allow(unsafe_code)]
            kernels.push(("avx512", |s, p, d, a, r, acc| unsafe {
                avx512::mul(s, p, d, a, r, acc)
            }));
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: as above.
            #[allow(unsafe_code)]
            kernels.push(("avx2", |s, p, d, a, r, acc| unsafe {
                avx2::mul(s, p, d, a, r, acc)
            }));
        }
    }
    kernels
}

/// [`Panels::mul`] in plain Rust, for any float type and CPU.
fn portable<T: Real>(
    shape: Shape,
    data: &[T],
    dst: (&mut [T], usize),
    a: (&[T], usize, usize),
    rows: usize,
    accumulate: bool,
) {
    tiles::<T, ROWS>(
        shape,
        data,
        dst,
        a,
        rows,
        accumulate,
        copy_rows::<T, ROWS>,
        |tile| match tile.rows {
            1 => portable_tile::<T, 1>(tile),
            2 => portable_tile::<T, 2>(tile),
            3 => portable_tile::<T, 3>(tile),
            _ => portable_tile::<T, ROWS>(tile),
        },
    );
}

/// Cuts the product into register tiles (k-blocks, then panels, then up to `TILE`
/// rows) and hands each to `each`; `copy` copies a tile's rows of `a` where they are
/// contiguous in `k` ([`copy_rows`], or the kernel's faster one).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn tiles<T: Real, const TILE: usize>(
    shape: Shape,
    data: &[T],
    (dst, dst_rs): (&mut [T], usize),
    (a, a_rs, a_cs): (&[T], usize, usize),
    rows: usize,
    accumulate: bool,
    mut copy: impl FnMut(&[T], usize, usize, usize, &mut [T]),
    mut each: impl FnMut(Tile<'_, T>),
) {
    let Shape {
        k,
        blocks,
        width,
        per_block,
        kc,
    } = shape;
    if rows == 0 {
        return;
    }
    assert!(
        (rows - 1) * a_rs + (k.max(1) - 1) * a_cs < a.len() && (a_rs == 1 || a_cs == 1),
        "packed GEMM: lhs too short, or neither its rows nor its terms contiguous"
    );
    assert!(
        (rows - 1) * dst_rs + blocks * width <= dst.len(),
        "packed GEMM: dst too short"
    );
    if k == 0 {
        if !accumulate {
            (0..rows).for_each(|r| dst[r * dst_rs..r * dst_rs + blocks * width].fill(T::ZERO));
        }
        return;
    }
    // Rows go in groups whose share of `a` in one k-block stays in L2 while the panels
    // pass over it (the weight gradients' `a` is (G·H) × (B·T)); a batch chunk is one.
    let group = (GROUP_FLOATS / kc).max(TILE) / TILE * TILE;
    // `a` is copied per group and k-block, tile by tile, each tile's rows side by side
    // per term: the tiles then read it sequentially at fixed offsets (the weight
    // gradients' `dᵀ` would otherwise cost a page per term).
    let mut group_a = vec![T::ZERO; group.min(rows.next_multiple_of(TILE)) * kc];
    for k0 in (0..k).step_by(kc) {
        let len = kc.min(k - k0);
        let add = accumulate || k0 > 0;
        for g0 in (0..rows).step_by(group) {
            let group_end = rows.min(g0 + group);
            if a_cs == 1 {
                // Rows contiguous in k (the time loops): one row at a time.
                for (t, tile_a) in group_a.chunks_exact_mut(TILE * len).enumerate() {
                    let first = g0 + t * TILE;
                    if first >= group_end {
                        break;
                    }
                    let tile_rows = TILE.min(group_end - first);
                    copy(&a[first * a_rs + k0..], a_rs, tile_rows, len, tile_a);
                }
            } else {
                // Rows contiguous per term (`a_rs` = 1: the weight gradients' `dᵀ`): term
                // by term, so that `a` is read in order (tile by tile, every term is
                // another page), each term's rows dealt out to the tiles, whole tiles as
                // arrays of known length (a `memcpy` call per tile and term cost 5 % of an
                // LSTM step at T = 1,000).
                for kk in 0..len {
                    let start = g0 + (k0 + kk) * a_cs;
                    let terms = &a[start..start + (group_end - g0)];
                    prefetch(a, start + AHEAD * a_cs, terms.len());
                    let mut whole = terms.chunks_exact(TILE);
                    for (t, rows) in whole.by_ref().enumerate() {
                        let slot = t * TILE * len + kk * TILE;
                        let slots: &mut [T; TILE] = (&mut group_a[slot..slot + TILE])
                            .try_into()
                            .expect("a tile's slots");
                        *slots = rows.try_into().expect("a tile's rows");
                    }
                    let rest = whole.remainder();
                    if !rest.is_empty() {
                        let slot = terms.len() / TILE * TILE * len + kk * TILE;
                        group_a[slot..slot + rest.len()].copy_from_slice(rest);
                    }
                }
            }
            for (index, panel) in data.chunks_exact(k * PANEL).enumerate() {
                let first = (index / per_block) * width + (index % per_block) * PANEL;
                let mut r0 = g0;
                while r0 < group_end {
                    let tile_rows = TILE.min(group_end - r0);
                    each(Tile {
                        dst: &mut dst[r0 * dst_rs + first..],
                        dst_rs,
                        cols: PANEL.min(width - (index % per_block) * PANEL),
                        add,
                        a: &group_a[(r0 - g0) * len..(r0 - g0 + TILE) * len],
                        len,
                        panel: &panel[k0 * PANEL..(k0 + len) * PANEL],
                        rows: tile_rows,
                    });
                    r0 += tile_rows;
                }
            }
        }
    }
}

/// Terms ahead of the one being copied that [`tiles`] asks the caches for: reading
/// `dᵀ` term by term stalled on memory.
const AHEAD: usize = 8;

/// Copies `rows` rows of `a` (`len` terms each, rows `a_rs` apart) into a tile's share
/// of the left operand, term by term with the rows side by side (`tile_a[kk·TILE + r]`).
#[inline(always)]
fn copy_rows<T: Real, const TILE: usize>(
    a: &[T],
    a_rs: usize,
    rows: usize,
    len: usize,
    tile_a: &mut [T],
) {
    for r in 0..rows {
        let row = &a[r * a_rs..r * a_rs + len];
        for (slot, &v) in tile_a[r..].iter_mut().step_by(TILE).zip(row) {
            *slot = v;
        }
    }
}

/// One register tile's work: `rows` rows of `a`, `len` terms each, stored term by term
/// with the tile's rows side by side (`a[kk·TILE + r]`, `TILE` the kernel's tile
/// height), against `panel`; the sums go into the first `cols` columns of `dst`'s rows
/// (stride `dst_rs`), added to them with `add`.
struct Tile<'a, T> {
    dst: &'a mut [T],
    dst_rs: usize,
    cols: usize,
    add: bool,
    a: &'a [T],
    len: usize,
    panel: &'a [T],
    rows: usize,
}

impl<T: Real> Tile<'_, T> {
    /// Stores (or adds) row `r`'s sums.
    #[inline(always)]
    fn store(&mut self, r: usize, sums: &[T; PANEL]) {
        let out = &mut self.dst[r * self.dst_rs..r * self.dst_rs + self.cols];
        if self.add {
            out.iter_mut().zip(sums).for_each(|(o, &s)| *o += s);
        } else {
            out.copy_from_slice(&sums[..self.cols]);
        }
    }
}

/// An `R`-row tile in plain Rust (`R = tile.rows`).
#[inline(always)]
fn portable_tile<T: Real, const R: usize>(mut tile: Tile<'_, T>) {
    let a = tile.a;
    let mut acc = [[T::ZERO; PANEL]; R];
    for (kk, w) in tile.panel.chunks_exact(PANEL).enumerate() {
        for (r, acc) in acc.iter_mut().enumerate() {
            let x = a[kk * ROWS + r];
            for (acc, &w) in acc.iter_mut().zip(w) {
                *acc = x.mul_add_(w, *acc);
            }
        }
    }
    for (r, sums) in acc.iter().enumerate() {
        tile.store(r, sums);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::{
        __m256, _mm256_add_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_set1_ps, _mm256_setzero_ps,
        _mm256_storeu_ps,
    };

    use super::{NarrowPart, PANEL, ROWS, Shape, Tile, copy_rows, prefetch, store_sums, tiles};

    /// Terms per turn of a narrow tile (see [`narrow`]).
    const CHUNK: usize = 16;

    /// [`NarrowPart::columns`]' tiles: `8·V` rows × `N` columns of sums in registers per
    /// k-block; the part's rows are a whole number of tiles.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn narrow<const N: usize, const V: usize>(part: NarrowPart<'_, f32>) {
        let NarrowPart {
            dst,
            column_sums,
            first,
            a: (a, a_cs),
            w: (w, w_rs),
            k,
            kc,
            accumulate,
        } = part;
        let rows = dst.len() / N;
        if rows == 0 || k == 0 {
            return;
        }
        assert!(
            (k - 1) * a_cs + first + rows <= a.len() && (k - 1) * w_rs + N <= w.len(),
            "narrow product: operands too short"
        );
        let tiles = rows / (8 * V);
        // Every tile's sums, kept between chunks of `CHUNK` terms: the tiles take turns
        // on a chunk, so that `a` is read as `CHUNK` sequential streams (the next
        // chunk's asked for ahead), not a page per term and tile, which left the narrow
        // product waiting on memory (3.5 % of an LSTM step at H = 128, T = 100; 1.6 %
        // now, perf).
        let mut held = vec![[[_mm256_setzero_ps(); V]; N]; tiles];
        // The column sums' running totals, per tile, from the values they add to.
        let mut totals: Vec<[__m256; V]> = match &column_sums {
            Some(sums) => sums
                .chunks_exact(8 * V)
                .map(|sums| {
                    // SAFETY: the chunk holds the 8·V floats the V loads read.
                    #[allow(unsafe_code)]
                    std::array::from_fn(|v| unsafe { _mm256_loadu_ps(sums.as_ptr().add(8 * v)) })
                })
                .collect(),
            None => Vec::new(),
        };
        for k0 in (0..k).step_by(kc) {
            let end = k.min(k0 + kc);
            for c0 in (k0..end).step_by(CHUNK) {
                let c_end = end.min(c0 + CHUNK);
                for (tile, held) in held.iter_mut().enumerate() {
                    let mut total = totals.get_mut(tile);
                    let mut acc = if c0 == k0 {
                        [[_mm256_setzero_ps(); V]; N]
                    } else {
                        *held
                    };
                    for kk in c0..c_end {
                        // SAFETY: term kk's rows first + 8·V·tile .. + 8·V of `a` and
                        // its N columns of `w` are in bounds (asserted above).
                        #[allow(unsafe_code)]
                        unsafe {
                            let start = kk * a_cs + first + 8 * V * tile;
                            prefetch(a, start + CHUNK * a_cs, 8 * V);
                            let rows = a.as_ptr().add(start);
                            let x: [__m256; V] =
                                std::array::from_fn(|v| _mm256_loadu_ps(rows.add(8 * v)));
                            if let Some(total) = total.as_deref_mut() {
                                for (total, &x) in total.iter_mut().zip(&x) {
                                    *total = _mm256_add_ps(*total, x);
                                }
                            }
                            for (c, acc) in acc.iter_mut().enumerate() {
                                let w = _mm256_set1_ps(*w.as_ptr().add(kk * w_rs + c));
                                for (acc, &x) in acc.iter_mut().zip(&x) {
                                    *acc = _mm256_fmadd_ps(x, w, *acc);
                                }
                            }
                        }
                    }
                    *held = acc;
                }
            }
            for (tile, acc) in held.iter().enumerate() {
                let mut sums = [[0.0f32; N]; 32];
                for (c, acc) in acc.iter().enumerate() {
                    for (v, acc) in acc.iter().enumerate() {
                        let mut lanes = [0.0f32; 8];
                        // SAFETY: `lanes` holds the 8 floats the store writes.
                        #[allow(unsafe_code)]
                        unsafe {
                            _mm256_storeu_ps(lanes.as_mut_ptr(), *acc);
                        }
                        for (l, &lane) in lanes.iter().enumerate() {
                            sums[8 * v + l][c] = lane;
                        }
                    }
                }
                let r0 = 8 * V * tile;
                for (r, sums) in sums.iter().take(8 * V).enumerate() {
                    let out = &mut dst[(r0 + r) * N..(r0 + r + 1) * N];
                    store_sums(out, sums, accumulate || k0 > 0);
                }
            }
        }
        if let Some(sums) = column_sums {
            for (sums, total) in sums.chunks_exact_mut(8 * V).zip(&totals) {
                for (v, total) in total.iter().enumerate() {
                    // SAFETY: the chunk holds the 8·V floats the V stores write.
                    #[allow(unsafe_code)]
                    unsafe {
                        _mm256_storeu_ps(sums.as_mut_ptr().add(8 * v), *total);
                    }
                }
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) fn mul(
        shape: Shape,
        data: &[f32],
        dst: (&mut [f32], usize),
        a: (&[f32], usize, usize),
        rows: usize,
        accumulate: bool,
    ) {
        tiles::<f32, ROWS>(
            shape,
            data,
            dst,
            a,
            rows,
            accumulate,
            copy_rows::<f32, ROWS>,
            |tile| match tile.rows {
                1 => tile_of::<1>(tile),
                2 => tile_of::<2>(tile),
                3 => tile_of::<3>(tile),
                _ => tile_of::<ROWS>(tile),
            },
        );
    }

    /// An `R`-row tile: two 8-lane accumulators per row, one broadcast of `a` per row
    /// and term; `fmadd(x, w, acc)` is the same rounding as the portable `mul_add`.
    #[target_feature(enable = "avx2,fma")]
    fn tile_of<const R: usize>(mut tile: Tile<'_, f32>) {
        let len = tile.len;
        assert!(tile.panel.len() == len * PANEL && tile.a.len() == len * ROWS && R <= ROWS);
        let mut acc: [[__m256; 2]; R] = [[_mm256_setzero_ps(); 2]; R];
        let (panel, a) = (tile.panel.as_ptr(), tile.a.as_ptr());
        for kk in 0..len {
            // SAFETY: `kk < len`; the panel holds `len` rows of PANEL floats and each of
            // the R rows of `a` holds `len` terms (asserted above).
            #[allow(unsafe_code)]
            unsafe {
                let w0 = _mm256_loadu_ps(panel.add(kk * PANEL));
                let w1 = _mm256_loadu_ps(panel.add(kk * PANEL + 8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_set1_ps(*a.add(kk * ROWS + r));
                    acc[0] = _mm256_fmadd_ps(x, w0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, w1, acc[1]);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let mut sums = [0.0f32; PANEL];
            // SAFETY: `sums` holds the 16 floats the two stores write.
            #[allow(unsafe_code)]
            unsafe {
                _mm256_storeu_ps(sums.as_mut_ptr(), acc[0]);
                _mm256_storeu_ps(sums.as_mut_ptr().add(8), acc[1]);
            }
            tile.store(r, &sums);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::{
        __m512, _mm512_castpd_ps, _mm512_castps_pd, _mm512_fmadd_ps, _mm512_loadu_ps,
        _mm512_set1_ps, _mm512_setzero_ps, _mm512_shuffle_f32x4, _mm512_storeu_ps,
        _mm512_unpackhi_pd, _mm512_unpackhi_ps, _mm512_unpacklo_pd, _mm512_unpacklo_ps,
    };

    use super::{PANEL, Shape, Tile, copy_rows, tiles};

    /// Rows per tile: 16 accumulators of 16 lanes (a whole batch chunk), so that the
    /// two FMA units never wait on a sum; the broadcasts of `a` ride the load ports.
    const ROWS: usize = 16;

    #[target_feature(enable = "avx512f")]
    pub(super) fn mul(
        shape: Shape,
        data: &[f32],
        dst: (&mut [f32], usize),
        a: (&[f32], usize, usize),
        rows: usize,
        accumulate: bool,
    ) {
        tiles::<f32, ROWS>(
            shape,
            data,
            dst,
            a,
            rows,
            accumulate,
            |a, a_rs, rows, len, tile_a| transpose(a, a_rs, rows, len, tile_a),
            |tile| match tile.rows {
                1 => tile_of::<1>(tile),
                2 => tile_of::<2>(tile),
                3 => tile_of::<3>(tile),
                4 => tile_of::<4>(tile),
                5 => tile_of::<5>(tile),
                6 => tile_of::<6>(tile),
                7 => tile_of::<7>(tile),
                8 => tile_of::<8>(tile),
                9 => tile_of::<9>(tile),
                10 => tile_of::<10>(tile),
                11 => tile_of::<11>(tile),
                12 => tile_of::<12>(tile),
                13 => tile_of::<13>(tile),
                14 => tile_of::<14>(tile),
                15 => tile_of::<15>(tile),
                _ => tile_of::<ROWS>(tile),
            },
        );
    }

    /// [`copy_rows`] for a whole tile of 16 rows: 16 × 16 blocks transposed in
    /// registers (three rounds of lane shuffles) instead of 256 scattered stores.
    #[target_feature(enable = "avx512f")]
    fn transpose(a: &[f32], a_rs: usize, rows: usize, len: usize, tile_a: &mut [f32]) {
        if rows < ROWS {
            return copy_rows::<f32, ROWS>(a, a_rs, rows, len, tile_a);
        }
        assert!((ROWS - 1) * a_rs + len <= a.len() && len * ROWS <= tile_a.len());
        let whole = len / 16 * 16;
        for kk0 in (0..whole).step_by(16) {
            // SAFETY: rows r < 16 read terms kk0..kk0 + 16 ≤ len of row r, and the
            // stores write terms kk0..kk0 + 16 of `tile_a` (asserted above).
            #[allow(unsafe_code)]
            unsafe {
                let r: [__m512; 16] =
                    std::array::from_fn(|i| _mm512_loadu_ps(a.as_ptr().add(i * a_rs + kk0)));
                // Per 128-bit lane j: rows (2i, 2i+1) interleaved at terms 4j, 4j+1
                // (even t) and 4j+2, 4j+3 (odd t).
                let t: [__m512; 16] = std::array::from_fn(|i| {
                    let (x, y) = (r[i & !1], r[i | 1]);
                    if i % 2 == 0 {
                        _mm512_unpacklo_ps(x, y)
                    } else {
                        _mm512_unpackhi_ps(x, y)
                    }
                });
                // u[4g + c]: rows 4g..4g+4 of term 4j + c in lane j.
                let u: [__m512; 16] = std::array::from_fn(|i| {
                    let (g, c) = (i / 4, i % 4);
                    let x = _mm512_castps_pd(t[4 * g + (c / 2)]);
                    let y = _mm512_castps_pd(t[4 * g + 2 + (c / 2)]);
                    _mm512_castpd_ps(if c % 2 == 0 {
                        _mm512_unpacklo_pd(x, y)
                    } else {
                        _mm512_unpackhi_pd(x, y)
                    })
                });
                // v[8h + c] (c < 4), lane by lane: terms c and c + 8 of rows 8h..8h+4,
                // then the same terms of rows 8h+4..8h+8; v[8h + 4 + c]: terms c + 4
                // and c + 12.
                let v: [__m512; 16] = std::array::from_fn(|i| {
                    let (h, odd, c) = (i / 8, (i / 4) % 2, i % 4);
                    let (x, y) = (u[8 * h + c], u[8 * h + 4 + c]);
                    if odd == 0 {
                        _mm512_shuffle_f32x4::<0x88>(x, y)
                    } else {
                        _mm512_shuffle_f32x4::<0xdd>(x, y)
                    }
                });
                // Term c: its 16 rows in order.
                for c in 0..16 {
                    let (x, y) = (v[c % 8], v[8 + c % 8]);
                    let column = if c < 8 {
                        _mm512_shuffle_f32x4::<0x88>(x, y)
                    } else {
                        _mm512_shuffle_f32x4::<0xdd>(x, y)
                    };
                    _mm512_storeu_ps(tile_a.as_mut_ptr().add((kk0 + c) * ROWS), column);
                }
            }
        }
        for r in 0..ROWS {
            for kk in whole..len {
                tile_a[kk * ROWS + r] = a[r * a_rs + kk];
            }
        }
    }

    /// An `R`-row tile: one 16-lane accumulator per row (a panel is one vector).
    #[target_feature(enable = "avx512f")]
    fn tile_of<const R: usize>(mut tile: Tile<'_, f32>) {
        let len = tile.len;
        assert!(tile.panel.len() == len * PANEL && tile.a.len() == len * ROWS && R <= ROWS);
        let mut acc: [__m512; R] = [_mm512_setzero_ps(); R];
        let (panel, a) = (tile.panel.as_ptr(), tile.a.as_ptr());
        for kk in 0..len {
            // SAFETY: as in the AVX2 tile.
            #[allow(unsafe_code)]
            unsafe {
                let w = _mm512_loadu_ps(panel.add(kk * PANEL));
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(kk * ROWS + r)), w, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let mut sums = [0.0f32; PANEL];
            // SAFETY: `sums` holds the 16 floats the store writes.
            #[allow(unsafe_code)]
            unsafe {
                _mm512_storeu_ps(sums.as_mut_ptr(), *acc);
            }
            tile.store(r, &sums);
        }
    }
}

/// The `gemm` crate's `kc` for `(rows × k) · (k × n)` with a row-major destination: it
/// transposes such a product to `(n × k) · (k × rows)`, takes `min(k, 512)` when both
/// sides are at most 64 and its cache-derived `kernel_params` otherwise (with its FMA
/// kernels' 16 × 6 f32 tile, 8 × 6 in f64).
fn block_depth(k: usize, n: usize, rows: usize, size: usize) -> usize {
    if k == 0 {
        return 0;
    }
    if n <= 64 && rows <= 64 {
        k.min(512)
    } else {
        gemm_common::cache::kernel_params(n, rows, k, 64 / size, 6, size).kc
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::{matmul_serial, mixed_values as values};

    /// Every f32 kernel this CPU can run: the portable one and the SIMD ones.
    fn kernels() -> Vec<(&'static str, F32Kernel)> {
        let mut kernels = simd_kernels();
        kernels.push(("portable", portable::<f32>));
        eprintln!(
            "kernels checked: {:?}",
            kernels.iter().map(|k| k.0).collect::<Vec<_>>()
        );
        kernels
    }

    /// The claim of the module: for the shapes the time loops use (and partial tiles,
    /// panels and k-blocks), every element equals the `gemm` crate's, bit for bit.
    #[test]
    fn same_bits_as_the_gemm_crate() {
        // (rows, blocks, width, k): LSTM/GRU/RNN forward (k = H, n = G·H) and backward
        // (k = G·H, n = H) at H = 64…512, odd widths, and k above the crate's 512.
        let shapes = [
            (16, 4, 64, 64),
            (16, 1, 64, 256),
            (16, 4, 256, 256),
            (16, 1, 256, 1024),
            (16, 4, 512, 512),
            (16, 1, 512, 2048),
            (16, 3, 74, 74),
            (16, 1, 74, 222),
            (5, 3, 37, 37),
            (9, 1, 300, 1200),
            (3, 2, 20, 700),
        ];
        let kernels = kernels();
        for &(rows, blocks, width, k) in &shapes {
            let n = blocks * width;
            let a_rs = k + 3;
            let a = values(rows * a_rs, 1);
            // The crate was given W row-major `(k, n)`: the forward's transposed copy of
            // a PyTorch `(n, k)` weight, or the backward's weight itself. The panels
            // are packed from either.
            let w = values(k * n, 2);
            let w_t: Vec<f32> = (0..n * k).map(|i| w[(i % k) * n + i / k]).collect();
            let row_major = Panels::pack(&w, (n, 1), k, (blocks, width), rows);
            let transposed = Panels::pack(&w_t, (1, k), k, (blocks, width), rows);
            let cases = [false, true]
                .map(|accumulate| [(accumulate, &row_major), (accumulate, &transposed)]);
            for (accumulate, panels) in cases.into_iter().flatten() {
                let dst_rs = n + 5;
                let mut expected = values(rows * dst_rs, 3);
                let got = expected.clone();
                matmul_serial(
                    (rows, n, k),
                    &mut expected,
                    dst_rs,
                    (&a, a_rs, 1),
                    (&w, n, 1),
                    accumulate,
                );
                for &(kernel, mul) in &kernels {
                    let mut got = got.clone();
                    let (shape, data) = (panels.shape, panels.data());
                    mul(
                        shape,
                        data,
                        (&mut got, dst_rs),
                        (&a, a_rs, 1),
                        rows,
                        accumulate,
                    );
                    let differ = expected
                        .iter()
                        .zip(&got)
                        .filter(|(e, g)| e.to_bits() != g.to_bits())
                        .count();
                    assert_eq!(
                        differ, 0,
                        "{kernel}: {differ} elements differ at rows {rows}, {blocks}×{width} columns, k {k}, accumulate {accumulate}"
                    );
                }
            }
        }
    }

    /// The weight gradient `dᵀ · h` against the `gemm` crate's parallel product, bit for
    /// bit: LSTM and GRU shapes at B·T = 3,200 and a long one with several k-blocks.
    #[test]
    fn weight_gradients_have_the_gemm_crates_bits() {
        for &(rows, hidden, k) in &[(1024, 256, 3200), (222, 74, 3200), (96, 40, 5000)] {
            let d = values(k * rows, 6);
            let h = values(k * hidden, 7);
            let mut expected = vec![0.0f32; rows * hidden];
            crate::fused::matmul(
                (rows, hidden, k),
                &mut expected,
                hidden,
                (&d, 1, rows),
                (&h, hidden, 1),
                false,
            );
            let mut got = values(rows * hidden, 8);
            par_product(&mut got, (&d, 1, rows), &h, k, hidden);
            let differ = expected
                .iter()
                .zip(&got)
                .filter(|(e, g)| e.to_bits() != g.to_bits())
                .count();
            assert_eq!(differ, 0, "{differ} differ at {rows} × {hidden}, k {k}");
        }
    }

    /// The LRU's readout products and the expRNN's recurrent ones against the `gemm`
    /// crate, bit for bit, where those kernels called it before: `y += s · Cᵀ` (C read
    /// transposed, added to `D x̃ + b`), `∂L/∂C = ∂L/∂yᵀ · s` over every step (several
    /// k-blocks) and `∂L/∂s = ∂L/∂y · C` at H = 64 and 128 with B·T = 3,200 and 64; and
    /// the expRNN's `h · W` per 16-row chunk. (Below about 64 rows the crate reads a
    /// transposed right-hand side through another path whose sums differ in the last
    /// bit, and one row through a matrix-vector path; the packed kernels' sums are the
    /// rule there: no result in the repository was computed at such a shape.)
    #[test]
    fn readout_products_have_the_gemm_crates_bits() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        type Operand<'a> = (&'a [f32], usize, usize);
        let check = |(rows, n, k): (usize, usize, usize), a: Operand, w: Operand, add: bool| {
            let mut expected = values(rows * n, 4);
            let mut got = expected.clone();
            crate::fused::matmul((rows, n, k), &mut expected, n, a, w, add);
            par_product_strided(&mut got, a, w, (k, n), add);
            assert_eq!(bits(&got), bits(&expected), "{rows} × {n}, k {k}");
        };
        for &(steps, hidden) in &[(3200, 64), (3200, 128), (64, 64), (64, 37)] {
            let two = 2 * hidden;
            let states = values(steps * two, 1);
            let c = values(hidden * two, 2);
            let d_y = values(steps * hidden, 3);
            check((steps, hidden, two), (&states, two, 1), (&c, 1, two), true);
            check(
                (hidden, two, steps),
                (&d_y, 1, hidden),
                (&states, two, 1),
                false,
            );
            check((steps, two, hidden), (&d_y, hidden, 1), (&c, two, 1), false);
        }
        for &hidden in &[64, 128, 256, 37] {
            let h = values(16 * hidden, 5);
            let w = values(hidden * hidden, 6);
            for add in [false, true] {
                check((16, hidden, hidden), (&h, hidden, 1), (&w, hidden, 1), add);
            }
        }
    }

    /// The input weights' gradient `dᵀ · X` for a few input features: the narrow path
    /// against the panels (every column count it takes, partial tiles, several
    /// k-blocks, rows split between 1 and 3 threads) and, where `input_grads` calls it (2 or
    /// more features), against the `gemm` crate, bit for bit.
    #[test]
    fn narrow_products_have_the_panels_and_the_crates_bits() {
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        for &(rows, k) in &[(256, 3200), (300, 3200), (1024, 100), (37, 5000), (512, 3)] {
            for n in 1..=NARROW {
                let d = values(k * rows, 9);
                let x = values(k * (n + 1), 10);
                for (accumulate, threads) in [(false, 1), (true, 1), (false, 3)] {
                    let start = values(rows * n, 11);
                    let mut narrow = start.clone();
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .expect("a pool")
                        .install(|| {
                            narrow_product(
                                &mut narrow,
                                (&d, rows),
                                (&x, n + 1),
                                (k, n),
                                accumulate,
                                None,
                            )
                        });
                    let mut panels = start.clone();
                    Panels::pack(&x, (n + 1, 1), k, (1, n), rows).mul(
                        (&mut panels, n),
                        (&d, 1, rows),
                        rows,
                        accumulate,
                    );
                    let at = format!("{rows} × {n}, k {k}, {threads} threads, add {accumulate}");
                    assert_eq!(bits(&narrow), bits(&panels), "panels: {at}");
                    if n >= 2 {
                        let mut crate_sums = start.clone();
                        crate::fused::matmul(
                            (rows, n, k),
                            &mut crate_sums,
                            n,
                            (&d, 1, rows),
                            (&x, n + 1, 1),
                            accumulate,
                        );
                        assert_eq!(bits(&narrow), bits(&crate_sums), "crate: {at}");
                    }
                }
            }
        }
    }

    /// Row-major `W (k, n)` as the backward reads it, against the definition in f64.
    #[test]
    fn row_major_weights_give_the_product() {
        let (rows, k, n) = (7, 40, 21);
        let a = values(rows * k, 4);
        let w = values(k * n, 5);
        let panels = Panels::pack(&w, (n, 1), k, (1, n), rows);
        let mut got = vec![0.0f32; rows * n];
        panels.mul((&mut got, n), (&a, k, 1), rows, false);
        for r in 0..rows {
            for c in 0..n {
                let exact: f64 = (0..k)
                    .map(|kk| a[r * k + kk] as f64 * w[kk * n + c] as f64)
                    .sum();
                let err = (got[r * n + c] as f64 - exact).abs();
                assert!(err <= 1e-4 * exact.abs().max(1.0), "({r}, {c}): {err}");
            }
        }
    }
}
