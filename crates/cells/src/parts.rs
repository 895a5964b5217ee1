//! A time loop whose units are split between threads, in step.
//!
//! Batch chunks give the recurrences their parallelism, but each chunk's thread streams
//! the whole recurrent matrix every step: at H = 256 and 512 the LSTM's `W_hh` (1 and
//! 4 MiB) leaves the 1–2 MiB L2 between steps. Splitting the *units* instead halves each
//! thread's share of the matrix. The price is a barrier per phase of each step, since
//! every unit's next step reads all units' states. [`Parts::run`] runs one closure per
//! part on its own thread with a [`Barrier`] between phases; [`Shared`] is a buffer the
//! parts write at once, each only its own units' elements.
//!
//! Results keep their bits: a part computes each element with the same operations in the
//! same order as one thread does (the packed products' sums do not depend on which
//! columns a call covers, and the gate math is elementwise).

use std::marker::PhantomData;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crate::packed::PANEL;

/// The split of `units` units into parts on panel boundaries.
#[derive(Debug, Clone)]
pub(crate) struct Parts {
    bounds: Vec<usize>,
}

impl Parts {
    /// Splits when the recurrent matrix (`weight_floats` f32 values) would not stay in
    /// one core's cache between steps, into as many parts as the pool has threads (at
    /// most one per panel of units); `None` where one part per batch chunk is better.
    pub(crate) fn for_matrix(units: usize, weight_floats: usize, batch: usize) -> Option<Self> {
        // Half of the 1 MiB L2 of the smaller machines: below it the matrix stays in
        // cache and the batch chunks' own threads lose nothing.
        const SPLIT_FLOATS: usize = 128 * 1024;
        let threads = rayon::current_num_threads();
        let panels = units.div_ceil(PANEL);
        let count = threads.min(panels);
        (count > 1 && weight_floats >= SPLIT_FLOATS && batch > 1).then(|| Self::new(units, count))
    }

    /// `count` parts of whole panels, as even as they come.
    pub(crate) fn new(units: usize, count: usize) -> Self {
        let panels = units.div_ceil(PANEL);
        let bounds = (0..=count)
            .map(|p| (p * panels / count * PANEL).min(units))
            .collect();
        Self { bounds }
    }

    /// The units of each part.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = Range<usize>> + '_ {
        self.bounds.windows(2).map(|w| w[0]..w[1])
    }

    /// Runs `part(index, units, barrier)` for every part at once, the first on this thread,
    /// and returns their results in part order. A part that panics poisons the
    /// barrier, so the others stop at their next wait instead of spinning forever.
    pub(crate) fn run<R: Send>(
        &self,
        part: impl Fn(usize, Range<usize>, &Barrier) -> R + Sync,
    ) -> Vec<R> {
        let ranges: Vec<_> = self.ranges().collect();
        let barrier = Barrier::new(ranges.len());
        let run = |index: usize| {
            let poison = PoisonOnPanic(&barrier);
            let result = part(index, ranges[index].clone(), &barrier);
            std::mem::forget(poison);
            result
        };
        std::thread::scope(|scope| {
            let others: Vec<_> = (1..ranges.len())
                .map(|index| scope.spawn(move || run(index)))
                .collect();
            let first = run(0);
            std::iter::once(first)
                .chain(others.into_iter().map(|other| {
                    other
                        .join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                }))
                .collect()
        })
    }
}

/// Poisons the barrier if dropped while its thread unwinds.
struct PoisonOnPanic<'a>(&'a Barrier);

impl Drop for PoisonOnPanic<'_> {
    fn drop(&mut self) {
        self.0.poisoned.store(true, Ordering::Release);
    }
}

/// A spinning barrier for the parts of one time loop: a step's phase is tens to
/// hundreds of microseconds, too short to sleep and wake between. After a while it
/// yields, so that an oversubscribed machine still makes progress.
pub(crate) struct Barrier {
    parties: usize,
    arrived: AtomicUsize,
    generation: AtomicUsize,
    poisoned: AtomicBool,
}

impl Barrier {
    /// A barrier for `parties` threads (1: `wait` returns at once).
    pub(crate) fn new(parties: usize) -> Self {
        Self {
            parties,
            arrived: AtomicUsize::new(0),
            generation: AtomicUsize::new(0),
            poisoned: AtomicBool::new(false),
        }
    }

    /// The number of threads that wait at it.
    pub(crate) fn parties(&self) -> usize {
        self.parties
    }

    /// Returns once every part has called `wait` as often as this one; everything a
    /// part wrote before its call is then visible to all.
    pub(crate) fn wait(&self) {
        const SPINS_BEFORE_YIELD: u32 = 1 << 14;
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.parties {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            assert!(
                !self.poisoned.load(Ordering::Acquire),
                "another part of the time loop panicked"
            );
            if spins < SPINS_BEFORE_YIELD {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }
}

/// A buffer that the parts write at once, each only the elements of its own units, and
/// read across parts only after a barrier that follows the writes.
#[derive(Clone, Copy)]
pub(crate) struct Shared<'a, T> {
    ptr: *mut T,
    len: usize,
    buffer: PhantomData<&'a mut [T]>,
}

// SAFETY: a `Shared` is a `&mut [T]` handed to several threads; the contract of its
// accessors keeps their accesses disjoint or ordered by barriers.
#[allow(unsafe_code)]
unsafe impl<T: Send> Send for Shared<'_, T> {}
// SAFETY: as above.
#[allow(unsafe_code)]
unsafe impl<T: Send> Sync for Shared<'_, T> {}

impl<'a, T> Shared<'a, T> {
    pub(crate) fn new(buffer: &'a mut [T]) -> Self {
        Self {
            ptr: buffer.as_mut_ptr(),
            len: buffer.len(),
            buffer: PhantomData,
        }
    }

    /// Elements `range`, to write.
    ///
    /// # Safety
    /// Until the next barrier, no other part accesses any element of `range`.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn slice_mut(&self, range: Range<usize>) -> &'a mut [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (asserted); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(range.start), range.len()) }
    }

    /// Elements `range`, to read.
    ///
    /// # Safety
    /// Until the next barrier, no part writes any element of `range`.
    #[allow(unsafe_code)]
    pub(crate) unsafe fn slice(&self, range: Range<usize>) -> &'a [T] {
        assert!(range.start <= range.end && range.end <= self.len);
        // SAFETY: in bounds (asserted); unwritten by the caller's contract.
        unsafe { std::slice::from_raw_parts(self.ptr.add(range.start), range.len()) }
    }

    /// The whole buffer's length.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The start of the buffer, for writers that cut their own disjoint rows.
    pub(crate) fn as_mut_ptr(&self) -> *mut T {
        self.ptr
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_whole_panels_as_even_as_they_come() {
        // 512 units = 32 panels: 16 each; 200 units = 13 panels: 6 (96 units) and 7
        // (the rest, 104 units, the last panel partial); 40 units = 3 panels in 3.
        let ranges = |units, count| Parts::new(units, count).ranges().collect::<Vec<_>>();
        assert_eq!(ranges(512, 2), [0..256, 256..512]);
        assert_eq!(ranges(200, 2), [0..96, 96..200]);
        assert_eq!(ranges(40, 3), [0..16, 16..32, 32..40]);
    }

    #[test]
    fn the_barrier_orders_the_parts_steps() {
        // Each of 3 parts writes its own slot of step t, waits, then checks that every
        // slot of step t is written: 200 steps, no slot ever seen unwritten.
        let parts = Parts::new(3 * PANEL, 3);
        let mut slots = vec![0usize; 3 * 200];
        let shared = Shared::new(&mut slots);
        let seen = parts.run(|_, range, barrier| {
            let part = range.start / PANEL;
            let mut seen = 0;
            for t in 0..200 {
                // SAFETY: slot (t, part) is this part's alone until the barrier.
                #[allow(unsafe_code)]
                unsafe {
                    shared.slice_mut(3 * t + part..3 * t + part + 1)[0] = t + 1;
                }
                barrier.wait();
                // SAFETY: step t's slots are not written again.
                #[allow(unsafe_code)]
                let step = unsafe { shared.slice(3 * t..3 * t + 3) };
                seen += step.iter().filter(|&&v| v == t + 1).count();
            }
            seen
        });
        assert_eq!(seen, [600, 600, 600]);
    }

    #[test]
    fn a_panicking_part_does_not_hang_the_others() {
        let parts = Parts::new(2 * PANEL, 2);
        let result = std::panic::catch_unwind(|| {
            parts.run(|_, range, barrier| {
                assert!(range.start == 0, "the second part fails");
                barrier.wait();
            })
        });
        assert!(result.is_err());
    }
}
