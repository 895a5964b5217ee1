//! What a run will need before it runs: an estimate of its peak memory, checked against
//! the machine's, so that `model.hidden: 1000000` stops at `plan` with the estimate
//! instead of aborting in an allocation halfway through a sweep.
//!
//! The estimate counts f32 buffers (in f64 arithmetic, so absurd sizes cannot overflow):
//! - the parameters, their gradients and the optimiser's state (Adam's two moments);
//! - training: the input batch, what each layer's fused forward saves per batch row and
//!   step ([`rnnlab_cells::CellSpec::saved_floats_per_step`]), as much again for the
//!   backward's gradient buffers, and the head's outputs with their gradients;
//! - evaluation: one chunk of validation sequences through the same forward;
//! - an `epochs` budget's permutation of its training set.
//!
//! It is a lower bound on the process's peak (allocator slack and candle's temporaries
//! come on top; `results/bench` measured 1.7× the saved activations for an LSTM), so only
//! runs that cannot fit are refused.

use crate::config::{Budget, Invalid, RunConfig};
use crate::train::EVAL_CHUNK;

const BYTES_PER_FLOAT: f64 = 4.0;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// A run's estimated peak memory, in bytes, by part.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    /// Parameters, gradients and optimiser state.
    pub parameters: f64,
    /// One training step's activations and their gradients.
    pub training: f64,
    /// One evaluation chunk's activations.
    pub evaluation: f64,
    /// The epoch's permutation of the training set (`epochs` budgets: 8 bytes a sample).
    pub data: f64,
}

impl MemoryEstimate {
    /// The estimate for `config`.
    pub fn of(config: &RunConfig) -> Self {
        let model = &config.model;
        let spec = model.cell.spec();
        let mut params = 0.0;
        let mut saved = 0.0;
        let mut input = model.input_size;
        for &hidden in &model.hidden {
            params += spec
                .layer_params(input, hidden)
                .iter()
                .map(|p| p.shape.iter().map(|&d| d as f64).product::<f64>())
                .sum::<f64>();
            saved += spec.saved_floats_per_step(hidden) as f64;
            input = hidden;
        }
        params += model.output_size as f64 * (input as f64 + 1.0);
        let steps = config.task.input_len() as f64;
        let per_sequence = steps * (model.input_size as f64 + saved + model.output_size as f64);
        let batch = config.train.batch_size as f64;
        let eval_batch = config.train.eval_samples.min(EVAL_CHUNK) as f64;
        Self {
            parameters: 4.0 * params * BYTES_PER_FLOAT,
            training: 2.0 * batch * per_sequence * BYTES_PER_FLOAT,
            evaluation: eval_batch * per_sequence * BYTES_PER_FLOAT,
            data: match config.train.budget {
                Budget::Steps(_) => 0.0,
                Budget::Epochs { samples, .. } => samples as f64 * 8.0,
            },
        }
    }

    /// The peak: the parameters and the larger of a training step and an evaluation.
    pub fn total(&self) -> f64 {
        self.parameters + self.data + self.training.max(self.evaluation)
    }

    /// Refuses the run when the estimate exceeds `available` bytes.
    pub fn check(&self, available: f64) -> Result<(), Invalid> {
        if self.total() <= available {
            return Ok(());
        }
        Err(Invalid(format!(
            "the run needs an estimated {} (parameters and optimiser state {}, a training \
             step {}, an evaluation chunk {}, the training set's order {}) but this machine \
             has {}: reduce `model.hidden`, `model.layers`, `train.batch_size`, \
             `task.seq_len` or `train.samples`",
            gib(self.total()),
            gib(self.parameters),
            gib(self.training),
            gib(self.evaluation),
            gib(self.data),
            gib(available)
        )))
    }
}

fn gib(bytes: f64) -> String {
    if bytes >= 0.1 * GIB {
        format!("{:.1} GiB", bytes / GIB)
    } else {
        format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
    }
}

/// This machine's memory in bytes (`MemTotal` of `/proc/meminfo`); `None` where Linux's
/// view is not available, and then nothing is refused.
///
/// Read once per process: every planned run (thousands in a tuning) checks against it.
pub fn machine_memory() -> Option<f64> {
    static MEMORY: std::sync::OnceLock<Option<f64>> = std::sync::OnceLock::new();
    *MEMORY.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024.0)
    })
}

/// Resets this process's peak resident memory (`VmHWM`) to its current resident size,
/// so that [`peak_rss_mb`] measures from here on; does nothing where Linux's
/// `/proc/self/clear_refs` is not available.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Keeps freed memory in the process instead of giving it back to the system at once
/// (glibc only; elsewhere nothing changes). Every training step allocates and frees
/// buffers of hundreds of KiB to hundreds of MiB (activations, gates, gradients: B·T·4H
/// floats is 131 MB for an LSTM at B = 32, T = 1,000, H = 256). glibc maps allocations
/// above its mmap threshold fresh from the kernel and unmaps them when freed, and each
/// thread other than the main one allocates from an arena of its own whose heaps are at
/// most 64 MiB, so larger buffers are always mapped; either way each step page-faults
/// them in again (the kernel zeroes every page) and two threads doing so contend on the
/// kernel's locks. So: one arena for every thread, no mapped allocations, the mmap
/// threshold at its maximum (32 MiB) and the trim threshold at 1 GiB, which serves
/// every buffer from the heap again. Measured with `rnnlab bench --cells lstm` on the
/// project's Xeon, 2 threads, interleaved: at T = 1,000 a step took 9–12 % less at
/// H = 128 and 256 (page faults per step 48,000 → under 100 at H = 256), within noise at
/// H = 64 and at T = 100; peak memory moved by −4 to +22 % (fragmentation of the one
/// heap: +22 % at H = 512, T = 1,000). The numbers cannot change: only where memory
/// comes from does.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        const M_MMAP_MAX: i32 = -4;
        const M_ARENA_MAX: i32 = -8;
        #[allow(unsafe_code)]
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // SAFETY: `mallopt` only sets glibc's allocator parameters; it is called before
        // any thread of ours starts, with parameters glibc documents.
        #[allow(unsafe_code)]
        unsafe {
            mallopt(M_ARENA_MAX, 1);
            mallopt(M_MMAP_MAX, 0);
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}

/// Runs candle's large elementwise ops on the thread that calls them, not on candle's
/// own worker pool, unless `CANDLE_NUM_THREADS` says otherwise. candle 0.11 splits every
/// elementwise op of 64 Ki elements or more (Adam's updates of an LSTM's weights from
/// H ≈ 128 on) over a global pool of `CANDLE_NUM_THREADS` − 1 workers (by default the
/// cores), which ignores `--threads` and spins up to 25,000 times after each op before it
/// parks: on 2 cores its worker held 15 % of an LSTM step's CPU samples (`perf record`,
/// H = 128, T = 100) while the fused kernels wanted both cores. One candle thread means
/// no pool. Measured with `rnnlab bench --cells lstm`, 2 threads, B = 32, on the AMD EPYC
/// (Zen 5) of 2026-12-06, alternating with and without: a step 16–22 % shorter at T = 100
/// and H = 64 and 128 (2.52 → 2.12 ms, 7.2 → 5.6 ms; 3 rounds), within the machine's noise
/// at H = 256–512 and at T = 1,000. An elementwise op's results do not depend on how it is
/// split, so the numbers cannot change. Call it first in `main`, before any thread starts.
pub fn run_candle_elementwise_inline() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: no other thread exists yet to read the environment meanwhile.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
    }
}

/// Gives candle its matmul thread count once. candle 0.11 works it out on every matmul
/// (the model's head, three per training step) and, unless `RAYON_NUM_THREADS` is set,
/// counts the physical cores by reading `/proc/cpuinfo` each time: 2.9 % of an LSTM step
/// at H = 64, T = 100 on 1 thread (`perf record`, the AMD EPYC of 2026-12-07). The
/// variable is set to the count candle would find, so each matmul splits its work as
/// before (and its sums never depend on the split). rnnlab builds every pool it runs in
/// with an explicit size, so rayon's global pool, which the variable would also size, is
/// not used. A value the user set is kept. Call it first in `main`, before any thread
/// starts.
pub fn count_cores_for_candle_once() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let threads = candle_core::utils::get_num_threads().to_string();
        // SAFETY: no other thread exists yet to read the environment meanwhile.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", threads);
        }
    }
}

/// `VmHWM` (peak resident memory) of this process in MiB, where Linux reports it.
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::sweep::Experiment;

    fn estimate(model: &str, train: &str) -> MemoryEstimate {
        let dir = tempfile_dir();
        let file = dir.join("e.yaml");
        std::fs::write(
            &file,
            format!(
                "name: e\ndescription: d\nbase:\n  task: {{ kind: adding, seq_len: 100 }}\n  model: {model}\n  train: {train}\n"
            ),
        )
        .unwrap();
        let experiment = Experiment::load(Path::new(&file), &[]).unwrap();
        MemoryEstimate::of(&experiment.runs[0].config)
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "rnnlab-resources-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn lstm_estimate_by_hand() {
        // LSTM, I = 2, H = 10, head 1: 4H(I + H + 2) + (H + 1) = 560 + 11 = 571 parameters,
        // ×4 (value, gradient, Adam's m and v) ×4 bytes = 9136 bytes.
        // Per sequence: T·(I + (G + 2)·H + out) = 100·(2 + 60 + 1) = 6300 floats; training
        // B = 32 twice over: 2·32·6300·4 = 1 612 800 bytes; evaluation 256 sequences
        // (the chunk, fewer than eval_samples 1000): 256·6300·4 = 6 451 200 bytes.
        let e = estimate(
            "{ cell: lstm, hidden: 10 }",
            "{ steps: 10, batch_size: 32, eval_samples: 1000 }",
        );
        assert_eq!(e.parameters, 9136.0);
        assert_eq!(e.training, 1_612_800.0);
        assert_eq!(e.evaluation, 6_451_200.0);
        assert_eq!(e.data, 0.0);
        assert_eq!(e.total(), 9136.0 + 6_451_200.0);
        assert!(e.check(1e9).is_ok());
        let err = e.check(1e6).unwrap_err().0;
        assert!(err.contains("needs an estimated 6.2 MiB"), "{err}");
    }
}
