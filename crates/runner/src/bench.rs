//! `rnnlab bench`: time one training step of rnnlab's cells (and candle-nn's built-in
//! LSTM/GRU) on the adding-task shape.
//!
//! One step = forward over a `(batch, seq_len, 2)` adding batch, a linear head on the
//! last step, MSE, backward, and an Adam update (rnnlab's cells: the runner's own
//! `Trainer`; candle-nn's cells: candle-nn's `AdamW` with weight decay 0). The batch is generated once, outside the timing. Each shape is warmed up, then
//! timed over repeated steps; the median is reported. Peak RSS is the process's
//! high-water mark of a process that runs only that shape. On a GPU, a few more steps
//! after the timed ones count where the time goes (`counted_ms`: their mean step;
//! `gpu_ms`: inside the fused kernels' calls, copies included; `copy_ms`, `copy_bytes`: the
//! host↔device copies alone; the rest is the CPU's), so the
//! cost of the head, loss and optimiser on the CPU and of the copies is measured; those
//! steps are not in `ms_per_step`, since timing each copy alone adds synchronisations.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer as _, ParamsAdamW, RNN, VarBuilder, VarMap};

use crate::config::{DeviceName, Optimizer};
use crate::optim::Trainer;
use rnnlab_cells::{Backend, CellKind, CellOptions, HeadKind, Init, Model, ModelConfig};
use rnnlab_tasks::{Split, Targets, Task, TaskConfig};

use crate::cli::{BenchArgs, BenchImpl, CudaLoop};
use crate::error::UsageError;
use clap::ValueEnum as _;

/// One measured shape: a CSV row.
#[derive(Debug, Clone)]
struct Measurement {
    /// `rnnlab` or `candle-nn`.
    implementation: BenchImpl,
    /// The cell.
    cell: &'static CellKind,
    /// Hidden units.
    hidden: usize,
    /// Sequence length.
    seq_len: usize,
    /// Batch size.
    batch: usize,
    /// Threads of the pool the step ran in.
    threads: usize,
    /// Median wall time of one training step.
    ms_per_step: f64,
    /// Peak resident memory while the shape ran, MiB (`None` where unreadable).
    peak_rss_mb: Option<f64>,
    /// Weights in matrices (see [`step_flop`]).
    matrix_weights: usize,
    /// Where rnnlab's kernels ran (`cpu` for candle-nn).
    device: DeviceName,
    /// Where a GPU step's time went (`None` on the CPU).
    gpu_split: Option<GpuSplit>,
}

/// Where one GPU training step's time went, averaged over the counted steps.
#[derive(Debug, Clone, Copy)]
struct GpuSplit {
    /// The counted steps' mean wall time.
    step_ms: f64,
    /// Inside the fused kernels' forwards and backwards (copies, kernels, waiting).
    busy_ms: f64,
    /// Of which host↔device copies, each timed alone.
    copy_ms: f64,
    /// Bytes those copies moved, both ways (the same every step).
    copy_bytes: u64,
}

/// Steps counted for a [`GpuSplit`] after the timed ones (fewer if `--repeats` is less).
const SPLIT_STEPS: usize = 3;

/// The arithmetic of one training step as the "6 per weight per token" rule counts it:
/// every weight in a matrix takes part in one multiply-add in the forward and two in
/// the backward (input and weight gradients) at every step of every sequence, so
/// `6 · B · T · weights`. Vectors (biases, peepholes, diagonals), the pointwise math,
/// the head on the last step and the expRNN's matrix exponential are left out: it is the
/// GEMM work, comparable across implementations of the same cell.
fn step_flop(batch: usize, seq_len: usize, matrix_weights: usize) -> f64 {
    6.0 * (batch * seq_len * matrix_weights) as f64
}

/// The CSV header shared with `scripts/bench_torch.py`.
const CSV_HEADER: &str = "impl,cell,hidden,seq_len,batch,threads,ms_per_step,seq_steps_per_s,peak_rss_mb,gflop_per_s,device,counted_ms,gpu_ms,copy_ms,copy_bytes";

impl Measurement {
    fn csv(&self) -> String {
        let rate = (self.batch * self.seq_len) as f64 / (self.ms_per_step / 1e3);
        let rss = self
            .peak_rss_mb
            .map_or(String::new(), |mb| format!("{mb:.1}"));
        let gflops = step_flop(self.batch, self.seq_len, self.matrix_weights)
            / (self.ms_per_step / 1e3)
            / 1e9;
        let split = self.gpu_split.map_or(",,,".into(), |s| {
            format!(
                "{:.3},{:.3},{:.3},{}",
                s.step_ms, s.busy_ms, s.copy_ms, s.copy_bytes
            )
        });
        format!(
            "{},{},{},{},{},{},{:.3},{rate:.0},{rss},{gflops:.4},{},{split}",
            self.implementation.as_str(),
            self.cell.name,
            self.hidden,
            self.seq_len,
            self.batch,
            self.threads,
            self.ms_per_step,
            String::from(self.device),
        )
    }
}

/// Runs the benchmark grid, prints a table and writes the CSV.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    if let Some(size) = args.peak {
        return peak(size.get(), args);
    }
    if args.child {
        let [implementation, cell, hidden, seq_len] = [
            args.implementations.len(),
            args.cells.len(),
            args.hidden.len(),
            args.seq_len.len(),
        ];
        if [implementation, cell, hidden, seq_len] != [1; 4] {
            bail!("--child measures exactly one shape");
        }
        let shape = Shape {
            implementation: args.implementations[0],
            cell: args.cells[0],
            hidden: args.hidden[0].get(),
            seq_len: args.seq_len[0].get(),
            batch: args.batch.get(),
            device: args.device,
            cuda_loop: args.cuda_loop,
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(args.threads.get())
            .build()
            .context("starting the benchmark's thread pool")?;
        let budget = Duration::from_secs_f64(args.max_seconds);
        let (ms_per_step, peak_rss_mb, gpu_split) =
            pool.install(|| measure(shape, args.warmup, args.repeats.get(), budget))?;
        let row = Measurement {
            implementation: shape.implementation,
            cell: shape.cell,
            hidden: shape.hidden,
            seq_len: shape.seq_len,
            batch: shape.batch,
            threads: args.threads.get(),
            ms_per_step,
            peak_rss_mb,
            matrix_weights: matrix_weights(shape.cell, shape.hidden)?,
            device: match shape.implementation {
                BenchImpl::Rnnlab => shape.device,
                BenchImpl::CandleNn => DeviceName::Cpu,
            },
            gpu_split,
        };
        println!("{}", row.csv());
        return Ok(());
    }
    let exe = std::env::current_exe().context("finding the rnnlab executable")?;
    let mut rows = Vec::new();
    println!("{CSV_HEADER}");
    for &implementation in &args.implementations {
        for &cell in &args.cells {
            if implementation == BenchImpl::CandleNn && !CANDLE_NN_CELLS.contains(&cell.name) {
                continue;
            }
            for &seq_len in &args.seq_len {
                for &hidden in &args.hidden {
                    let output = std::process::Command::new(&exe)
                        .args([
                            "bench",
                            "--child",
                            "--impl",
                            implementation.as_str(),
                            "--cells",
                            cell.name,
                        ])
                        .args([
                            "--hidden",
                            &hidden.to_string(),
                            "--seq-len",
                            &seq_len.to_string(),
                        ])
                        .args([
                            "--batch",
                            &args.batch.to_string(),
                            "--threads",
                            &args.threads.to_string(),
                        ])
                        .args([
                            "--warmup",
                            &args.warmup.to_string(),
                            "--repeats",
                            &args.repeats.to_string(),
                        ])
                        .args(["--max-seconds", &args.max_seconds.to_string()])
                        .args(["--device", &String::from(args.device)])
                        .args([
                            "--cuda-loop",
                            args.cuda_loop
                                .to_possible_value()
                                .expect("no variant is skipped")
                                .get_name(),
                        ])
                        .output()
                        .context("running a benchmark shape")?;
                    if !output.status.success() {
                        bail!(
                            "benchmark of {} {} H={hidden} T={seq_len} failed: {}",
                            implementation.as_str(),
                            cell.name,
                            String::from_utf8_lossy(&output.stderr).trim()
                        );
                    }
                    let row =
                        String::from_utf8(output.stdout).context("reading a benchmark row")?;
                    let row = row.trim().to_owned();
                    println!("{row}");
                    rows.push(row);
                }
            }
        }
    }
    if let Some(out) = &args.out {
        write_csv(out, &rows)?;
        println!("wrote {}", out.display());
    }
    Ok(())
}

/// Weights in matrices of one layer of `cell` with `hidden` units on the benchmark's 2
/// inputs (the same for candle-nn's LSTM and GRU, which have PyTorch's layout).
fn matrix_weights(cell: &CellKind, hidden: usize) -> anyhow::Result<usize> {
    let cell = (cell.configure)(&CellOptions::default()).map_err(anyhow::Error::msg)?;
    Ok(cell
        .layer_params(2, hidden)
        .iter()
        .filter(|p| p.shape.len() == 2)
        .map(|p| p.len())
        .sum())
}

/// `--peak`: the median GFLOP/s of `repeats` square `size × size` f32 products, after
/// `warmup` untimed ones, in a pool of `--threads`, through the `gemm` crate and through
/// the packed kernels; the faster is the peak (last line).
fn peak(size: usize, args: &BenchArgs) -> anyhow::Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads.get())
        .build()
        .context("starting the benchmark's thread pool")?;
    // Values in [−1, 1) that are not all alike; what they are does not change the time.
    let a: Vec<f32> = (0..size * size)
        .map(|k| ((k * 7919) % 2003) as f32 / 1001.5 - 1.0)
        .collect();
    let b: Vec<f32> = a.iter().rev().copied().collect();
    let mut peak: f64 = 0.0;
    type SquareProduct = fn(&[f32], &[f32], usize) -> Vec<f32>;
    let products: [(&str, SquareProduct); 2] = [
        ("gemm", rnnlab_cells::square_matmul),
        ("packed", rnnlab_cells::square_matmul_packed),
    ];
    for (name, multiply) in products {
        let mut times = pool.install(|| {
            let product = || drop(multiply(&a, &b, size));
            (0..args.warmup).for_each(|_| product());
            (0..args.repeats.get())
                .map(|_| {
                    let t = Instant::now();
                    product();
                    t.elapsed().as_secs_f64()
                })
                .collect::<Vec<_>>()
        });
        times.sort_by(f64::total_cmp);
        let seconds = times[times.len() / 2];
        let gflops = 2.0 * (size as f64).powi(3) / seconds / 1e9;
        println!(
            "{name},f32,{size},threads,{},{:.3} ms,{gflops:.1} GFLOP/s",
            args.threads,
            seconds * 1e3
        );
        peak = peak.max(gflops);
    }
    println!("peak,f32,{size},threads,{},{peak:.1} GFLOP/s", args.threads);
    Ok(())
}

fn write_csv(path: &Path, rows: &[String]) -> anyhow::Result<()> {
    let mut text = String::new();
    writeln!(text, "{CSV_HEADER}")?;
    rows.iter().try_for_each(|row| writeln!(text, "{row}"))?;
    crate::store::write_text(path, &text)
}

/// The cells candle-nn has (its `lstm` and `gru`).
const CANDLE_NN_CELLS: [&str; 2] = ["lstm", "gru"];

#[derive(Debug, Clone, Copy)]
struct Shape {
    implementation: BenchImpl,
    cell: &'static CellKind,
    hidden: usize,
    seq_len: usize,
    batch: usize,
    device: DeviceName,
    cuda_loop: CudaLoop,
}

/// A training step, ready to be called repeatedly, and where its fused kernels run.
type Step = (Box<dyn FnMut() -> candle_core::Result<()>>, Backend);

/// A candle-nn recurrent layer's forward to its last hidden state.
type Layer = dyn Fn(&Tensor) -> candle_core::Result<Tensor>;

/// Median ms per step, the peak RSS and (on a GPU) where a step's time went, for one
/// shape.
fn measure(
    shape: Shape,
    warmup: usize,
    repeats: usize,
    budget: Duration,
) -> anyhow::Result<(f64, Option<f64>, Option<GpuSplit>)> {
    let (mut step, backend) = build(shape).with_context(|| format!("building {shape:?}"))?;
    let started = Instant::now();
    for _ in 0..warmup {
        step()?;
        if started.elapsed() > budget {
            break;
        }
    }
    let mut times = Vec::with_capacity(repeats);
    let timing = Instant::now();
    while times.len() < repeats {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        // Slow shapes (candle-nn on long sequences) stop at the budget, with at least one
        // timed step.
        if timing.elapsed() > budget {
            break;
        }
    }
    times.sort_by(f64::total_cmp);
    let split = gpu_split(&backend, &mut step, repeats.min(SPLIT_STEPS))?;
    Ok((
        times[times.len() / 2],
        crate::resources::peak_rss_mb(),
        split,
    ))
}

/// Runs `steps` more steps counting where their time goes on the GPU; `None` on the CPU.
fn gpu_split(
    backend: &Backend,
    step: &mut dyn FnMut() -> candle_core::Result<()>,
    steps: usize,
) -> anyhow::Result<Option<GpuSplit>> {
    #[cfg(feature = "cuda")]
    if let Backend::Cuda(gpu) = backend {
        gpu.count_time();
        let started = Instant::now();
        (0..steps).try_for_each(|_| step())?;
        let wall = started.elapsed();
        let time = gpu.take_time().context("the GPU stopped counting")?;
        let per_step = |total: f64| total / steps as f64;
        return Ok(Some(GpuSplit {
            step_ms: per_step(wall.as_secs_f64() * 1e3),
            busy_ms: per_step(time.busy.as_secs_f64() * 1e3),
            copy_ms: per_step(time.copies.as_secs_f64() * 1e3),
            copy_bytes: time.copied_bytes / steps as u64,
        }));
    }
    let _ = (backend, step, steps); // only a GPU's time is split
    Ok(None)
}

fn build(shape: Shape) -> anyhow::Result<Step> {
    let Shape {
        implementation,
        cell,
        hidden,
        seq_len,
        batch,
        device,
        cuda_loop,
    } = shape;
    let task = Task::new(TaskConfig::Adding { seq_len })
        .map_err(|e| UsageError(format!("invalid --seq-len: {e}")))?;
    let data = task.batch(0, Split::Train, 0, batch);
    let Targets::Values(targets) = &data.targets else {
        bail!("adding targets are values")
    };
    let xs = Tensor::from_vec(data.inputs.clone(), (batch, seq_len, 2), &Device::Cpu)?;
    let ys = Tensor::from_vec(targets.clone(), (batch, 1), &Device::Cpu)?;
    let adam = ParamsAdamW {
        lr: 1e-3,
        weight_decay: 0.0,
        ..ParamsAdamW::default()
    };
    match implementation {
        BenchImpl::Rnnlab => {
            // The cell with every option at its default (the LSTM, the reset-after GRU).
            let cell = (cell.configure)(&CellOptions::default()).map_err(anyhow::Error::msg)?;
            let config = ModelConfig {
                cell,
                input_size: 2,
                hidden: vec![hidden],
                output_size: 1,
                head: HeadKind::LastStep,
            };
            let mut params = Init::default().params(&config, 0, DType::F32, &Device::Cpu)?;
            params.set_backend(crate::train::open_backend(device, cuda_loop)?);
            let backend = params.backend().clone();
            let model = Model::new(&config, &params)?;
            // The runner's own Adam, so the benchmark times what `rnnlab run` trains with.
            let vars = params.iter().map(|(_, v)| v.clone()).collect();
            let mut trainer = Trainer::new(Optimizer::Adam { lr: 1e-3 }, vars)?;
            let step = move || {
                let (y, _) = model.forward(&xs)?;
                trainer.step(&candle_nn::loss::mse(&y, &ys)?.backward()?)
            };
            Ok((Box::new(step), backend))
        }
        BenchImpl::CandleNn => {
            let varmap = VarMap::new();
            let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
            let head = candle_nn::linear(hidden, 1, vb.pp("head"))?;
            let layer: Box<Layer> = match cell.name {
                "lstm" => {
                    let lstm = candle_nn::lstm(2, hidden, Default::default(), vb.pp("rnn"))?;
                    Box::new(move |xs| Ok(lstm.seq(xs)?.pop().expect("T ≥ 1").h))
                }
                "gru" => {
                    let gru = candle_nn::gru(2, hidden, Default::default(), vb.pp("rnn"))?;
                    Box::new(move |xs| Ok(gru.seq(xs)?.pop().expect("T ≥ 1").h))
                }
                other => bail!("candle-nn has no `{other}` cell"),
            };
            let mut optimizer = AdamW::new(varmap.all_vars(), adam)?;
            let step = move || {
                let y = candle_core::Module::forward(&head, &layer(&xs)?)?;
                optimizer.backward_step(&candle_nn::loss::mse(&y, &ys)?)
            };
            Ok((Box::new(step), Backend::Cpu))
        }
    }
}
