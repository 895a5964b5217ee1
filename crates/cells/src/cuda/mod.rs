//! The CUDA backend (feature `cuda`): the fused whole-sequence kernels of the cells that
//! have one run on an NVIDIA GPU, while the tensors, the head, the loss and the optimiser
//! stay on the CPU (each layer uploads its input, state and parameters, and downloads its
//! output and gradients: `O(B·T·(I + H))` floats a step against `O(B·T·G·H²)` work).
//!
//! Nothing loads a CUDA library until [`Gpu::open`]: the driver (`libcuda`) and NVRTC
//! (`libnvrtc.so.13`) are found at run time through the usual library path, so the
//! feature builds and runs on machines without a toolkit or a GPU. The kernels are CUDA C
//! ([`KERNEL_SOURCE`]), compiled once per process by NVRTC.
//!
//! Determinism: one stream per [`Gpu`], and every kernel computes each output element in
//! one thread with its sums in a fixed order (no atomics), so a run repeated on the same
//! GPU gives the same bits.

// cudarc marks kernel launches and raw device addresses unsafe; every launch below
// checks the extents its kernel touches against the buffers first.
#![allow(unsafe_code)]

mod exprnn;
mod gated;
mod gru;
mod indrnn;
mod lru;
mod lstm;
mod rnn;
mod scan;

use std::collections::HashMap;
use std::ffi::{c_char, c_void};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use candle_core::{Error, Result, bail};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DeviceRepr, LaunchConfig,
    PushKernelArg, ValidAsZeroBits,
};
use cudarc::nvrtc::{CompileOptions, Ptx};

pub(crate) use exprnn::{exprnn_backward, exprnn_forward};
pub(crate) use gru::{GruGpuSaved, gru_backward, gru_forward};
pub(crate) use indrnn::{indrnn_backward, indrnn_forward};
pub(crate) use lru::{LruGpuSaved, lru_backward, lru_forward};
pub(crate) use lstm::{LstmGpuSaved, lstm_backward, lstm_forward};
pub(crate) use rnn::{rnn_backward, rnn_forward};
pub(crate) use scan::{ScanGpuSaved, ScanKernelForm, ScanKernels, scan_backward, scan_forward};

/// The kernels' CUDA C source.
pub const KERNEL_SOURCE: &str = include_str!("kernels.cu");

/// Whether NVRTC can be loaded (without loading the driver).
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles [`KERNEL_SOURCE`] to PTX with NVRTC, for `arch` (`"compute_90"`) or NVRTC's
/// default. Needs no GPU: the tests compile every kernel this way on CPU machines.
pub fn compile(arch: Option<&'static str>) -> Result<Ptx> {
    if !nvrtc_available() {
        bail!(
            "NVRTC (libnvrtc.so.13) was not found: add the CUDA toolkit's lib64 \
             (/usr/local/cuda/lib64) or the nvidia-cuda-nvrtc wheel's lib folder to LD_LIBRARY_PATH"
        );
    }
    let options = CompileOptions {
        arch,
        ..Default::default()
    };
    cudarc::nvrtc::compile_ptx_with_opts(KERNEL_SOURCE, options).map_err(|e| {
        Error::Msg(format!(
            "NVRTC could not compile rnnlab's CUDA kernels: {e:?}"
        ))
    })
}

/// The PTX of the process, compiled on first use.
fn ptx() -> Result<Ptx> {
    static PTX: OnceLock<std::result::Result<Ptx, String>> = OnceLock::new();
    PTX.get_or_init(|| compile(None).map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::Msg)
}

/// `doing` failed in the CUDA driver.
fn driver<T>(
    result: std::result::Result<T, cudarc::driver::DriverError>,
    doing: &str,
) -> Result<T> {
    result.map_err(|e| Error::Msg(format!("CUDA: {doing}: {e}")))
}

/// `activation` codes of the Elman step kernels (`ELMAN_*` in `kernels.cu`).
pub(crate) const ELMAN_TANH: i32 = 0;
pub(crate) const ELMAN_RELU: i32 = 1;
pub(crate) const ELMAN_MODRELU: i32 = 2;

/// `cell` codes of the log-space scan kernels (`SCAN_*` in `kernels.cu`).
pub(crate) const SCAN_MINGRU: i32 = 0;
pub(crate) const SCAN_MINLSTM: i32 = 1;

/// Every `extern "C"` kernel of [`KERNEL_SOURCE`], by name: what [`Gpu::open`] loads and
/// the emulator dispatches on.
pub const KERNELS: [&str; 49] = [
    "gemm",
    "gemm_tiled",
    "add_bias",
    "column_sums",
    "previous_states",
    "row_norms",
    "transpose",
    "lstm_forward_step_1",
    "lstm_forward_step_2",
    "lstm_forward_step_3",
    "lstm_forward_step_4",
    "lstm_backward_step",
    "lstm_peephole_grad",
    "lstm_state_grads",
    "lstm_gate_recurrence_step",
    "lstm_gate_recurrence_grad_step",
    "lstm_previous_gates",
    "lstm_forward_persistent_1",
    "lstm_forward_persistent_2",
    "lstm_forward_persistent_3",
    "lstm_forward_persistent_4",
    "lstm_backward_persistent",
    "elman_forward_step",
    "elman_backward_step",
    "elman_forward_persistent",
    "elman_backward_persistent",
    "gru_forward_step",
    "gru_backward_step",
    "gru_forward_persistent",
    "gru_backward_persistent",
    "gru_before_rz_step",
    "gru_before_n_step",
    "gru_before_forward_persistent",
    "gru_before_backward_step",
    "gru_before_reset_step",
    "gru_before_backward_persistent",
    "indrnn_forward",
    "indrnn_backward",
    "mingru_forward",
    "mingru_backward",
    "minlstm_forward",
    "minlstm_backward",
    "scan_log_forward",
    "scan_log_backward",
    "lru_forward_scan",
    "lru_readout_init",
    "lru_output",
    "lru_d_y",
    "lru_backward_scan",
];

/// The header that runs [`KERNEL_SOURCE`] on the host for [`Gpu::emulated`]: one OS
/// thread per CUDA thread, one block at a time, `__syncthreads` as a barrier.
pub const EMULATOR_HEADER: &str = include_str!("emulator.h");

/// The emulator's entry point, compiled with [`EMULATOR_HEADER`] and [`KERNEL_SOURCE`]:
/// `rnnlab_emulate(name, [grid x, y, z, block x, y, z], args)` runs the kernel and
/// returns 0 (1 for an unknown name).
pub const EMULATOR_SOURCE: &str = include_str!("emulator.cpp");

/// The files to write into one folder to build the emulator (name, contents), the
/// kernel list generated from [`KERNELS`]; then run a C++20 compiler there with
/// [`EMULATOR_COMPILE`] to get `libemulator.so` for [`Gpu::emulated`].
pub fn emulator_sources() -> [(&'static str, String); 4] {
    let list = KERNELS.iter().map(|k| format!("KERNEL({k})\n")).collect();
    [
        ("kernels.cu", KERNEL_SOURCE.to_owned()),
        ("emulator.h", EMULATOR_HEADER.to_owned()),
        ("emulator.cpp", EMULATOR_SOURCE.to_owned()),
        ("kernel_list.h", list),
    ]
}

/// Builds the emulator in `dir`: writes [`emulator_sources`] there and runs `compiler`
/// (a C++20 compiler) with [`EMULATOR_COMPILE`]. The library's path; `Ok(Err(..))` with
/// the compiler's messages when it ran and failed; `Err` when it could not be run (none
/// installed) or `dir` not written.
pub fn build_emulator(
    dir: &std::path::Path,
    compiler: &str,
) -> std::io::Result<std::result::Result<std::path::PathBuf, String>> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in emulator_sources() {
        std::fs::write(dir.join(name), text)?;
    }
    let out = std::process::Command::new(compiler)
        .args(EMULATOR_COMPILE)
        .current_dir(dir)
        .output()?;
    Ok(if out.status.success() {
        Ok(dir.join("libemulator.so"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    })
}

/// The compiler arguments that build the emulator from [`emulator_sources`].
pub const EMULATOR_COMPILE: [&str; 13] = [
    "-std=c++20",
    "-O1",
    "-shared",
    "-fPIC",
    "-Wall",
    "-Werror",
    "-Wno-unknown-pragmas",
    "-include",
    "emulator.h",
    "emulator.cpp",
    "-o",
    "libemulator.so",
    "-lpthread",
];

/// Where a [`Gpu`]'s kernels run.
enum Device {
    /// A CUDA device through its driver: one stream and the loaded kernels.
    Cuda {
        stream: Arc<CudaStream>,
        kernels: HashMap<&'static str, CudaFunction>,
    },
    /// The same kernels compiled for the host ([`Gpu::emulated`]), for testing.
    Emulated(libloading::Library),
}

/// The emulator's entry point.
type EmulateFn = unsafe extern "C" fn(*const c_char, *const u32, *const *const c_void) -> i32;

/// How the time loops of the cells with a recurrent matrix (LSTM, GRU, RNN, expRNN) run
/// on the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeLoop {
    /// Persistent up to [`PERSISTENT_MAX_HIDDEN`] units, per step above.
    #[default]
    Auto,
    /// One launch per step forwards; a pointwise launch and a GEMM per step backwards.
    PerStep,
    /// One launch per sequence each way: a block owns a few batch rows and every unit
    /// and runs all the steps itself (`kernels.cu`, "Persistent kernels"); up to
    /// [`PERSISTENT_MAX_UNITS`] units. The same sums as per step, in the same order.
    Persistent,
}

/// The widest layer the persistent kernels take (one thread per unit in a block).
pub const PERSISTENT_MAX_UNITS: usize = 1024;

/// The widest layer [`TimeLoop::Auto`] runs persistently. A persistent block reads all of
/// `W_hh` from L2 every step on one SM, while the per-step kernels spread it over
/// `⌈H/32⌉·⌈B/8⌉` blocks but pay a launch (a few µs) per step: an estimate of where the
/// two cross, not yet measured (`scripts/gpu-check.sh` times both).
pub const PERSISTENT_MAX_HIDDEN: usize = 128;

/// Where a [`Gpu`]'s time went, counted once [`Gpu::count_time`] asked for it: what
/// `rnnlab bench --device cuda` reports beside the step time, so that the cost of
/// keeping the head, loss and optimiser on the CPU is measured, not guessed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuTime {
    /// Wall time inside the fused kernels' forwards and backwards: uploads, kernels and
    /// downloads (each call ends with a download, which waits for its kernels).
    pub busy: Duration,
    /// Of which copies between host and device, each timed alone: the stream is
    /// synchronised before and after it (harmless here, since every download waits for
    /// the stream anyway).
    pub copies: Duration,
    /// Bytes those copies moved, both ways.
    pub copied_bytes: u64,
    /// Forward and backward calls counted.
    pub calls: u64,
}

/// One GPU with its own stream and the kernels loaded: what one training run holds.
/// Several runs (`--jobs N`) each open their own and share the device.
pub struct Gpu {
    device: Device,
    name: String,
    time_loop: TimeLoop,
    /// The time counted so far, once counting ([`Gpu::count_time`]).
    timing: Mutex<Option<GpuTime>>,
    /// The device's streaming multiprocessors: a GEMM whose 64 × 64 blocks fill them
    /// takes the tiled kernel. The emulator counts as 2, so that its tests run both.
    multiprocessors: usize,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?} time loop)", self.name, self.time_loop)
    }
}

/// A buffer in the memory the kernels read: the device's, or the host's for the
/// emulator (allocated and freed here, written only through the kernels' addresses).
pub(crate) enum Buf<T> {
    Device(CudaSlice<T>),
    Host { ptr: *mut T, len: usize },
}

// SAFETY: a host buffer is owned memory, only touched by the thread running its `Gpu`.
unsafe impl<T: Send> Send for Buf<T> {}

impl<T> Buf<T> {
    fn len(&self) -> usize {
        match self {
            Self::Device(slice) => slice.len(),
            Self::Host { len, .. } => *len,
        }
    }

    fn host(data: Vec<T>) -> Self {
        let len = data.len();
        let ptr = Box::into_raw(data.into_boxed_slice()).cast::<T>();
        Self::Host { ptr, len }
    }
}

impl<T> Drop for Buf<T> {
    fn drop(&mut self) {
        if let Self::Host { ptr, len } = *self {
            // SAFETY: `ptr` and `len` came from `Box::into_raw` of a boxed slice in `host`.
            drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(ptr, len)) });
        }
    }
}

impl Gpu {
    /// Opens device `ordinal` (`cuda:N`): loads the driver and NVRTC, compiles the
    /// kernels (once per process), creates a stream. The errors say what is missing.
    pub fn open(ordinal: usize) -> Result<Self> {
        // SAFETY: only tries to dlopen the library by its usual names.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!(
                "no CUDA driver: libcuda.so was not found (train.device: cuda needs an NVIDIA GPU and its driver)"
            );
        }
        let count = driver(CudaContext::device_count(), "counting devices")?;
        let count = usize::try_from(count).unwrap_or(0);
        if ordinal >= count {
            bail!("cuda:{ordinal} does not exist: this machine has {count} CUDA device(s)");
        }
        let ptx = ptx()?;
        let ctx = driver(CudaContext::new(ordinal), "opening the device")?;
        // SAFETY: every buffer of a `Gpu` is used on its one stream only, so the
        // cross-stream events cudarc would record are not needed.
        unsafe { ctx.disable_event_tracking() };
        let name = driver(ctx.name(), "reading the device name")?;
        let multiprocessors = driver(
            ctx.attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
            ),
            "reading the multiprocessor count",
        )?;
        let stream = driver(ctx.new_stream(), "creating a stream")?;
        let module = driver(ctx.load_module(ptx), "loading the kernels")?;
        let kernels = KERNELS
            .iter()
            .map(|&name| Ok((name, driver(module.load_function(name), name)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            device: Device::Cuda { stream, kernels },
            name: format!("cuda:{ordinal} ({name})"),
            time_loop: TimeLoop::Auto,
            timing: Mutex::new(None),
            multiprocessors: usize::try_from(multiprocessors).unwrap_or(1).max(1),
        })
    }

    /// The kernels compiled for the host: `library` is [`EMULATOR_SOURCE`] built as a
    /// shared library with a C++20 compiler (`c++ -std=c++20 -shared -fPIC -include
    /// emulator.h emulator.cpp`, with `kernels.cu` beside it). Every kernel runs with one
    /// OS thread per CUDA thread: slow, but the indexing, the bounds, the shared memory
    /// and the barriers are those of the CUDA source, so the host code and the kernels
    /// are tested on machines without a GPU.
    pub fn emulated(library: &std::path::Path) -> Result<Self> {
        // SAFETY: loading runs no code but the emulator's static initialisers.
        let library = unsafe { libloading::Library::new(library) }
            .map_err(|e| Error::Msg(format!("loading the CUDA emulator {library:?}: {e}")))?;
        // SAFETY: the symbol has `EmulateFn`'s signature in `emulator.cpp`.
        unsafe { library.get::<EmulateFn>(b"rnnlab_emulate") }
            .map_err(|e| Error::Msg(format!("the CUDA emulator has no entry point: {e}")))?;
        Ok(Self {
            device: Device::Emulated(library),
            name: "the CUDA emulator".into(),
            time_loop: TimeLoop::Auto,
            timing: Mutex::new(None),
            multiprocessors: 2,
        })
    }

    /// This handle with the recurrent time loops run as `time_loop` says.
    pub fn with_time_loop(self, time_loop: TimeLoop) -> Self {
        Self { time_loop, ..self }
    }

    /// Starts counting where this handle's time goes, from zero ([`Gpu::take_time`]).
    pub fn count_time(&self) {
        *self.time() = Some(GpuTime::default());
    }

    /// The time counted since [`Gpu::count_time`] or the last call (`None` when not
    /// counting), and the count restarted.
    pub fn take_time(&self) -> Option<GpuTime> {
        self.time().as_mut().map(std::mem::take)
    }

    fn time(&self) -> std::sync::MutexGuard<'_, Option<GpuTime>> {
        self.timing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn counting(&self) -> bool {
        self.time().is_some()
    }

    /// Adds `change` to the count, when counting.
    fn count(&self, change: impl FnOnce(&mut GpuTime)) {
        if let Some(time) = self.time().as_mut() {
            change(time);
        }
    }

    /// Runs one fused forward or backward, `call`, counting its wall time as busy.
    pub(crate) fn busy<R>(&self, call: impl FnOnce() -> R) -> R {
        if !self.counting() {
            return call();
        }
        let started = Instant::now();
        let result = call();
        let elapsed = started.elapsed();
        self.count(|time| {
            time.busy += elapsed;
            time.calls += 1;
        });
        result
    }

    /// Runs the copy `copy` of `bytes` bytes, timed alone when counting: after the
    /// stream's earlier work and until the copy has landed.
    fn copy<R>(&self, bytes: usize, copy: impl FnOnce() -> Result<R>) -> Result<R> {
        if !self.counting() {
            return copy();
        }
        self.synchronize()?;
        let started = Instant::now();
        let result = copy()?;
        self.synchronize()?;
        let elapsed = started.elapsed();
        self.count(|time| {
            time.copies += elapsed;
            time.copied_bytes += bytes as u64;
        });
        Ok(result)
    }

    /// Waits for the stream's work (nothing to wait for on the emulator).
    fn synchronize(&self) -> Result<()> {
        match &self.device {
            Device::Cuda { stream, .. } => driver(stream.synchronize(), "waiting for the device"),
            Device::Emulated(_) => Ok(()),
        }
    }

    /// Whether a layer of `hidden` units runs its time loop in a persistent kernel.
    fn persistent(&self, hidden: usize) -> bool {
        match self.time_loop {
            TimeLoop::Auto => hidden <= PERSISTENT_MAX_HIDDEN,
            TimeLoop::PerStep => false,
            TimeLoop::Persistent => hidden <= PERSISTENT_MAX_UNITS,
        }
    }

    /// The device's name (`cuda:0 (NVIDIA H100 80GB HBM3)`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Copies `data` to the device.
    fn upload<T: DeviceRepr + Copy>(&self, data: &[T]) -> Result<Buf<T>> {
        self.copy(size_of_val(data), || match &self.device {
            Device::Cuda { stream, .. } => Ok(Buf::Device(driver(
                stream.clone_htod(data),
                "copying to the device",
            )?)),
            Device::Emulated(_) => Ok(Buf::host(data.to_vec())),
        })
    }

    /// Copies each of `data` to the device.
    fn upload_all<const N: usize>(&self, data: [&[f32]; N]) -> Result<[Buf<f32>; N]> {
        let mut bufs = Vec::with_capacity(N);
        for values in data {
            bufs.push(self.upload(values)?);
        }
        Ok(bufs
            .try_into()
            .unwrap_or_else(|_| unreachable!("one buffer per slice")))
    }

    /// A zeroed buffer of `len` elements.
    fn zeros<T: DeviceRepr + ValidAsZeroBits + Default + Copy>(
        &self,
        len: usize,
    ) -> Result<Buf<T>> {
        match &self.device {
            Device::Cuda { stream, .. } => Ok(Buf::Device(driver(
                stream.alloc_zeros(len),
                "allocating device memory",
            )?)),
            Device::Emulated(_) => Ok(Buf::host(vec![T::default(); len])),
        }
    }

    /// Copies `buf` to the host (waits for the stream).
    fn download<T: DeviceRepr + Copy>(&self, buf: &Buf<T>) -> Result<Vec<T>> {
        self.copy(buf.len() * size_of::<T>(), || self.download_now(buf))
    }

    /// [`Gpu::download`] without the count.
    fn download_now<T: DeviceRepr + Copy>(&self, buf: &Buf<T>) -> Result<Vec<T>> {
        match (&self.device, buf) {
            (Device::Cuda { stream, .. }, Buf::Device(slice)) => {
                let host = driver(stream.clone_dtoh(slice), "copying from the device")?;
                driver(stream.synchronize(), "waiting for the device")?;
                Ok(host)
            }
            // SAFETY: `ptr` holds `len` initialised elements (`Buf::host`), and the
            // emulator has finished every kernel before its call returned.
            (Device::Emulated(_), Buf::Host { ptr, len }) => {
                Ok(unsafe { std::slice::from_raw_parts(*ptr, *len) }.to_vec())
            }
            _ => bail!("a buffer of another device"),
        }
    }

    /// The device address `offset` elements into `buf`, after checking that `extent`
    /// elements from there lie inside it.
    fn at<T>(&self, buf: &Buf<T>, offset: usize, extent: usize) -> Result<u64> {
        if offset + extent > buf.len() {
            bail!(
                "CUDA kernel would read {extent} elements at {offset} of a buffer of {}",
                buf.len()
            );
        }
        let base = match (&self.device, buf) {
            (Device::Cuda { stream, .. }, Buf::Device(slice)) => slice.device_ptr(stream).0,
            (Device::Emulated(_), Buf::Host { ptr, .. }) => *ptr as u64,
            _ => bail!("a buffer of another device"),
        };
        Ok(base + (offset * size_of::<T>()) as u64)
    }

    /// Launches kernel `name` with `args` (each pushed by reference).
    fn launch(&self, name: &'static str, config: LaunchConfig, args: &[&dyn Arg]) -> Result<()> {
        match &self.device {
            Device::Cuda { stream, kernels } => {
                let Some(function) = kernels.get(name) else {
                    bail!("no CUDA kernel `{name}`");
                };
                let mut builder = stream.launch_builder(function);
                for arg in args {
                    arg.push(&mut builder);
                }
                // SAFETY: the callers check every extent their kernel touches
                // (`Gpu::at`) and pass the arguments in the kernel's order and types.
                driver(unsafe { builder.launch(config) }.map(|_| ()), name)
            }
            Device::Emulated(library) => {
                let (g, b) = (config.grid_dim, config.block_dim);
                let dims = [g.0, g.1, g.2, b.0, b.1, b.2];
                let pointers: Vec<*const c_void> = args.iter().map(|arg| arg.address()).collect();
                let kernel = std::ffi::CString::new(name).expect("kernel names have no NUL");
                // SAFETY: the symbol was checked in `emulated`; the arguments are as for
                // a launch (above), each pointer to a live value of the kernel's type.
                let status = unsafe {
                    let emulate = library
                        .get::<EmulateFn>(b"rnnlab_emulate")
                        .map_err(|e| Error::Msg(e.to_string()))?;
                    emulate(kernel.as_ptr(), dims.as_ptr(), pointers.as_ptr())
                };
                if status != 0 {
                    bail!("the CUDA emulator has no kernel `{name}`");
                }
                Ok(())
            }
        }
    }

    /// `C(i, j) = beta·C(i, j) + Σ_k A(i, k)·B(k, j)` for `(m, n, k)`, each matrix given as
    /// (buffer, offset, row stride, column stride); `C`'s column stride is 1. By the tiled
    /// kernel when its blocks fill the multiprocessors, else by the plain one: the same
    /// bits either way.
    fn gemm(
        &self,
        dims: (usize, usize, usize),
        a: Strided<'_>,
        b: Strided<'_>,
        c: Strided<'_>,
        beta: f32,
    ) -> Result<()> {
        let (m, n, _) = dims;
        let kernel = if blocks(m, 64) as usize * blocks(n, 64) as usize >= self.multiprocessors {
            Gemm::Tiled
        } else {
            Gemm::Plain
        };
        self.gemm_by(kernel, dims, a, b, c, beta)
    }

    /// [`Gpu::gemm`] by the kernel given.
    fn gemm_by(
        &self,
        kernel: Gemm,
        (m, n, k): (usize, usize, usize),
        a: Strided<'_>,
        b: Strided<'_>,
        c: Strided<'_>,
        beta: f32,
    ) -> Result<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let a_ptr = a.address(self, m, k)?;
        let b_ptr = b.address(self, k, n)?;
        let c_ptr = c.address(self, m, n)?;
        let dims = [m, n, k].map(|d| i32::try_from(d).expect("matrix sizes fit in i32"));
        let (name, config) = match kernel {
            Gemm::Plain => (
                "gemm",
                LaunchConfig {
                    grid_dim: (blocks(n, 16), blocks(m, 16), 1),
                    block_dim: (16, 16, 1),
                    shared_mem_bytes: 0,
                },
            ),
            Gemm::Tiled => (
                "gemm_tiled",
                LaunchConfig {
                    grid_dim: (blocks(n, 64), blocks(m, 64), 1),
                    block_dim: (256, 1, 1),
                    shared_mem_bytes: 0,
                },
            ),
        };
        let [as0, as1, bs0, bs1, ldc] = [a.rows, a.cols, b.rows, b.cols, c.rows].map(long);
        self.launch(
            name,
            config,
            &[
                &dims[0], &dims[1], &dims[2], &a_ptr, &as0, &as1, &b_ptr, &bs0, &bs1, &c_ptr, &ldc,
                &beta,
            ],
        )
    }

    /// One thread per element of `n` on blocks of 256.
    fn elementwise(n: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (blocks(n, 256), 1, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// The GEMM kernels (`gemm`, `gemm_tiled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gemm {
    /// One element of C per thread, 16 × 16 per block: many blocks for small products.
    Plain,
    /// 4 × 4 elements per thread, 64 × 64 per block.
    Tiled,
}

/// A kernel argument, pushed by reference.
trait Arg {
    fn push<'a>(&'a self, builder: &mut cudarc::driver::LaunchArgs<'a>);

    /// Where the value lies, for the emulator (CUDA's own launch takes the same).
    fn address(&self) -> *const c_void;
}

impl<T: DeviceRepr> Arg for T {
    fn push<'a>(&'a self, builder: &mut cudarc::driver::LaunchArgs<'a>) {
        builder.arg(self);
    }

    fn address(&self) -> *const c_void {
        (self as *const T).cast()
    }
}

/// A matrix inside a device buffer: element `(i, j)` at `offset + i·rows + j·cols`.
#[derive(Clone, Copy)]
struct Strided<'a> {
    buf: &'a Buf<f32>,
    offset: usize,
    rows: usize,
    cols: usize,
}

impl<'a> Strided<'a> {
    fn new(buf: &'a Buf<f32>, offset: usize, rows: usize, cols: usize) -> Self {
        Self {
            buf,
            offset,
            rows,
            cols,
        }
    }

    /// The matrix's address, checking that its `(m, n)` elements lie in the buffer.
    fn address(&self, gpu: &Gpu, m: usize, n: usize) -> Result<u64> {
        let last = if m == 0 || n == 0 {
            0
        } else {
            (m - 1) * self.rows + (n - 1) * self.cols + 1
        };
        gpu.at(self.buf, self.offset, last)
    }
}

/// Blocks of `size` threads that cover `n`.
fn blocks(n: usize, size: usize) -> u32 {
    u32::try_from(n.div_ceil(size)).expect("grid fits in u32")
}

/// A stride or size as the kernels' `long`.
fn long(v: usize) -> i64 {
    i64::try_from(v).expect("sizes fit in i64")
}

/// A size as the kernels' `int`.
fn int(v: usize) -> i32 {
    i32::try_from(v).expect("sizes fit in i32")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The emulator, or `None` (and a line saying why) where no C++ compiler runs.
    fn emulator() -> Option<Gpu> {
        let dir = std::env::temp_dir().join(format!("rnnlab-gemm-emulator-{}", std::process::id()));
        let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
        match build_emulator(&dir, &compiler) {
            Ok(Ok(library)) => Some(Gpu::emulated(&library).unwrap()),
            Ok(Err(messages)) => {
                panic!("{compiler} could not build the CUDA emulator:\n{messages}")
            }
            Err(e) => {
                assert!(
                    std::env::var_os("RNNLAB_REQUIRE_KERNEL_TESTS").is_none(),
                    "RNNLAB_REQUIRE_KERNEL_TESTS is set but {compiler}: {e}"
                );
                eprintln!("skipped both_gemm_kernels_give_the_same_bits: no C++ compiler ({e})");
                None
            }
        }
    }

    /// The tiled GEMM sums each element as the plain one does, so their results are the
    /// same bits, whatever the operands' layouts, partial blocks and `beta`; both are
    /// the product to f32 rounding (against f64).
    #[test]
    fn both_gemm_kernels_give_the_same_bits() {
        let Some(gpu) = emulator() else {
            return;
        };
        let values = |len: usize, salt: f32| -> Vec<f32> {
            (0..len).map(|i| (i as f32 * 0.37 + salt).sin()).collect()
        };
        // (m, n, k): partial 64 × 64 blocks, k not a multiple of 16, a block wider than C.
        for (m, n, k) in [(70, 130, 37), (64, 64, 16), (3, 200, 5), (150, 3, 100)] {
            let (a, b, c0) = (values(m * k, 1.0), values(k * n, 2.0), values(m * n, 3.0));
            let (a_dev, b_dev) = (gpu.upload(&a).unwrap(), gpu.upload(&b).unwrap());
            // Each operand as stored or transposed (column-major), overwrite or accumulate.
            for (a_t, b_t, beta) in [
                (false, false, 0.0),
                (true, false, 1.0),
                (false, true, 1.0),
                (true, true, 0.0),
            ] {
                let (a_rs, a_cs) = if a_t { (1, m) } else { (k, 1) };
                let (b_rs, b_cs) = if b_t { (1, k) } else { (n, 1) };
                let [plain, tiled] = [Gemm::Plain, Gemm::Tiled].map(|kernel| {
                    let c_dev = gpu.upload(&c0).unwrap();
                    gpu.gemm_by(
                        kernel,
                        (m, n, k),
                        Strided::new(&a_dev, 0, a_rs, a_cs),
                        Strided::new(&b_dev, 0, b_rs, b_cs),
                        Strided::new(&c_dev, 0, n, 1),
                        beta,
                    )
                    .unwrap();
                    gpu.download(&c_dev).unwrap()
                });
                let differ = plain
                    .iter()
                    .zip(&tiled)
                    .filter(|(p, t)| p.to_bits() != t.to_bits())
                    .count();
                assert_eq!(
                    differ, 0,
                    "({m}, {n}, {k}) {a_t} {b_t} {beta}: {differ} differ"
                );
                for i in 0..m {
                    for j in 0..n {
                        let terms = (0..k).map(|kk| {
                            f64::from(a[i * a_rs + kk * a_cs]) * f64::from(b[kk * b_rs + j * b_cs])
                        });
                        let exact = f64::from(beta) * f64::from(c0[i * n + j]) + terms.sum::<f64>();
                        let err = (f64::from(plain[i * n + j]) - exact).abs();
                        assert!(
                            err <= 1e-5 * (k as f64 + 1.0),
                            "({i}, {j}) of ({m}, {n}, {k}): {err}"
                        );
                    }
                }
            }
        }
    }
}
