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
use std::sync::{Arc, OnceLock};

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
pub(crate) use scan::{ScanGpuSaved, ScanKernels, scan_backward, scan_forward};

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

/// Every `extern "C"` kernel of [`KERNEL_SOURCE`], by name: what [`Gpu::open`] loads and
/// the emulator dispatches on.
pub const KERNELS: [&str; 28] = [
    "gemm",
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
    "elman_forward_step",
    "elman_backward_step",
    "gru_forward_step",
    "gru_backward_step",
    "indrnn_forward",
    "indrnn_backward",
    "mingru_forward",
    "mingru_backward",
    "minlstm_forward",
    "minlstm_backward",
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

/// One GPU with its own stream and the kernels loaded: what one training run holds.
/// Several runs (`--jobs N`) each open their own and share the device.
pub struct Gpu {
    device: Device,
    name: String,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.name)
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
        let stream = driver(ctx.new_stream(), "creating a stream")?;
        let module = driver(ctx.load_module(ptx), "loading the kernels")?;
        let kernels = KERNELS
            .iter()
            .map(|&name| Ok((name, driver(module.load_function(name), name)?)))
            .collect::<Result<_>>()?;
        Ok(Self {
            device: Device::Cuda { stream, kernels },
            name: format!("cuda:{ordinal} ({name})"),
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
        })
    }

    /// The device's name (`cuda:0 (NVIDIA H100 80GB HBM3)`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Copies `data` to the device.
    fn upload<T: DeviceRepr + Copy>(&self, data: &[T]) -> Result<Buf<T>> {
        match &self.device {
            Device::Cuda { stream, .. } => Ok(Buf::Device(driver(
                stream.clone_htod(data),
                "copying to the device",
            )?)),
            Device::Emulated(_) => Ok(Buf::host(data.to_vec())),
        }
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
    /// (buffer, offset, row stride, column stride); `C`'s column stride is 1.
    fn gemm(
        &self,
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
        let config = LaunchConfig {
            grid_dim: (blocks(n, 16), blocks(m, 16), 1),
            block_dim: (16, 16, 1),
            shared_mem_bytes: 0,
        };
        let [as0, as1, bs0, bs1, ldc] = [a.rows, a.cols, b.rows, b.cols, c.rows].map(long);
        self.launch(
            "gemm",
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
