//! Command-line arguments, validated by their types before they reach a command: counts
//! that must be positive are `NonZeroUsize`, `--shard` is a [`Shard`], `--cells` are
//! registered cells.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::str::FromStr;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rnnlab_cells::{CellKind, registry};

use crate::config::DeviceName;

/// Writes a command's output to stdout; a closed pipe (`rnnlab status DIR | head`) is
/// not an error.
pub fn print(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(err) if err.kind() != std::io::ErrorKind::BrokenPipe => Err(err.into()),
        _ => Ok(()),
    }
}

/// Reproducible comparison studies of recurrent cells (RNN, LSTM, GRU, peephole LSTM and
/// LSTM ablations) on synthetic long-dependency tasks.
#[derive(Debug, Parser)]
#[command(name = "rnnlab", version = crate::VERSION, about, propagate_version = true)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); `RUST_LOG` overrides it.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Look at and export the synthetic tasks' data.
    Data {
        /// What to do with the data.
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Validate an experiment file and print its grid of runs (nothing is trained).
    Plan(PlanArgs),
    /// Train every run of an experiment that is not complete yet.
    Run(RunArgs),
    /// Count an experiment's runs by status (done, diverged, failed, running, pending).
    Status(StatusArgs),
    /// Draw an experiment's figures (PNG and SVG) into `DIR/plots/`.
    Plot(StatusArgs),
    /// Write `DIR/REPORT.md` (tables, figures, findings), drawing the figures first.
    Report(StatusArgs),
    /// Submit an experiment to Slurm: a job array whose tasks share the runs
    /// (`rnnlab run --shard I/N`), then a job that writes the report when the array ends.
    Slurm(SlurmArgs),
    /// Time one training step (forward, last-step head, MSE, backward, Adam) on the
    /// adding-task shape, for rnnlab's fused cells and candle-nn's built-in ones.
    Bench(BenchArgs),
}

/// `rnnlab plan`
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// The experiment YAML file.
    pub file: PathBuf,
    /// Override a key of `base` before the sweep (`--set train.lr=3e-4`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

/// `rnnlab run`
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// The experiment YAML file.
    pub file: PathBuf,
    /// Where results go (`<out>/<experiment name>/`).
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Retrain runs that are already complete.
    #[arg(long)]
    pub force: bool,
    /// Runs trained at once; the cores are split between them.
    #[arg(long, default_value_t = NonZeroUsize::MIN)]
    pub jobs: NonZeroUsize,
    /// Take only runs k with k mod N = I − 1 (`--shard I/N`), so N machines can share
    /// one sweep and merge by copying folders.
    #[arg(long, value_name = "I/N", default_value_t = Shard::ALL)]
    pub shard: Shard,
    /// Override a key of `base` before the sweep (`--set train.lr=3e-4`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Where the fused kernels run: `cpu`, `cuda` or `cuda:N` (the same as `--set
    /// train.device=…`).
    #[arg(long, value_parser = parse_device)]
    pub device: Option<DeviceName>,
    /// Do not draw the figures and write `REPORT.md` at the end.
    #[arg(long)]
    pub no_report: bool,
}

impl RunArgs {
    /// The `--set` overrides, with `--device` as the last.
    pub fn all_overrides(&self) -> Vec<String> {
        let mut overrides = self.overrides.clone();
        if let Some(device) = self.device {
            overrides.push(format!("train.device={}", String::from(device)));
        }
        overrides
    }
}

/// `--device cpu|cuda|cuda:N`.
fn parse_device(name: &str) -> Result<DeviceName, String> {
    DeviceName::try_from(name.to_owned())
}

/// `rnnlab slurm`: options named as `sbatch`'s own.
#[derive(Debug, Clone, Args)]
pub struct SlurmArgs {
    /// The experiment YAML file.
    pub file: PathBuf,
    /// Where results go (`<out>/<experiment name>/`); the compute nodes must see it at
    /// the same path (a shared filesystem).
    #[arg(long, default_value = "results")]
    pub out: PathBuf,
    /// Array tasks; task I trains the runs of `--shard I/N` (tuning trials go to
    /// whichever task is free).
    #[arg(long, default_value_t = NonZeroUsize::new(4).expect("4 > 0"))]
    pub tasks: NonZeroUsize,
    /// CPUs per array task (`sbatch --cpus-per-task`), also its runs trained at once
    /// (`rnnlab run --jobs`).
    #[arg(long, default_value_t = NonZeroUsize::MIN)]
    pub cpus_per_task: NonZeroUsize,
    /// Time limit per task (`sbatch --time`, e.g. `2:00:00`).
    #[arg(long)]
    pub time: Option<String>,
    /// Partition (`sbatch --partition`).
    #[arg(long)]
    pub partition: Option<String>,
    /// Account (`sbatch --account`).
    #[arg(long)]
    pub account: Option<String>,
    /// Memory per node (`sbatch --mem`, e.g. `4G`).
    #[arg(long)]
    pub mem: Option<String>,
    /// Any other `sbatch` option for both jobs, as written (`--extra=--qos=long`);
    /// repeatable.
    #[arg(long, value_name = "OPTION", allow_hyphen_values = true)]
    pub extra: Vec<String>,
    /// Override a key of `base` before the sweep (`--set train.lr=3e-4`); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
    /// Write the batch scripts into `<out>/<experiment>/slurm/` without submitting them.
    #[arg(long)]
    pub dry_run: bool,
}

/// `--shard I/N`: the runs `k` (0-based, in plan order) with `k mod N = I − 1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// `I − 1`.
    pub index: usize,
    /// `N`.
    pub count: usize,
}

impl Shard {
    /// Every run (`1/1`).
    pub const ALL: Self = Self { index: 0, count: 1 };

    /// Whether run `k` of the plan is this shard's.
    pub fn takes(&self, k: usize) -> bool {
        k % self.count == self.index
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not I/N with 1 <= I <= N, e.g. 2/4");
        let (i, n) = text.split_once('/').ok_or_else(bad)?;
        let (i, n): (usize, usize) = (i.parse().map_err(|_| bad())?, n.parse().map_err(|_| bad())?);
        if i == 0 || i > n {
            return Err(bad());
        }
        Ok(Self {
            index: i - 1,
            count: n,
        })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index + 1, self.count)
    }
}

/// `rnnlab status`, `rnnlab plot`, `rnnlab report`
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// An experiment's results folder (`results/<experiment name>`).
    pub dir: PathBuf,
}

/// `rnnlab bench`
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Cells to time, by their names in configs (every registered cell: rnn, rnn_relu,
    /// lstm, gru, peephole_lstm, indrnn, …; candle-nn has only lstm and gru).
    #[arg(long, value_delimiter = ',', value_parser = parse_cell, default_values = ["lstm", "gru", "rnn"])]
    pub cells: Vec<&'static CellKind>,
    /// Hidden sizes.
    #[arg(long, value_delimiter = ',', default_values = ["64", "128", "256", "512"])]
    pub hidden: Vec<NonZeroUsize>,
    /// Sequence lengths.
    #[arg(long, value_delimiter = ',', default_values = ["100", "1000"])]
    pub seq_len: Vec<NonZeroUsize>,
    /// Batch size.
    #[arg(long, default_value = "32")]
    pub batch: NonZeroUsize,
    /// Threads (a rayon pool of this size runs every step).
    #[arg(long, default_value = "2")]
    pub threads: NonZeroUsize,
    /// Where rnnlab's fused kernels run: `cpu`, `cuda` or `cuda:N` (the head, loss and
    /// optimiser stay on the CPU; the cells with a CUDA kernel only).
    #[arg(long, value_parser = parse_device, default_value = "cpu")]
    pub device: DeviceName,
    /// With `--device cuda`: how the recurrent time loops (LSTM, GRU, RNN, expRNN) run — `auto`
    /// (persistent up to 128 units, as training does), `per-step` (a launch per step) or
    /// `persistent` (one launch per sequence each way). The same numbers either way; for
    /// timing the two.
    #[arg(long, value_enum, default_value_t = CudaLoop::Auto)]
    pub cuda_loop: CudaLoop,
    /// Implementations to time.
    #[arg(long = "impl", value_enum, value_delimiter = ',', default_values_t = [BenchImpl::Rnnlab, BenchImpl::CandleNn])]
    pub implementations: Vec<BenchImpl>,
    /// Untimed steps before timing.
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value = "10")]
    pub repeats: NonZeroUsize,
    /// Stop timing a shape after this many seconds (at least one step is timed).
    #[arg(long, default_value_t = 30.0)]
    pub max_seconds: f64,
    /// CSV file to write (columns impl,cell,hidden,seq_len,batch,threads,ms_per_step,seq_steps_per_s,peak_rss_mb,gflop_per_s).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Instead of training steps, time a square f32 product of this size (e.g. 2048)
    /// with `--threads`, through the `gemm` crate (the kernels' GEMM for the input
    /// projections) and through the packed AVX-512/AVX2 tiles of the recurrent products,
    /// and print both GFLOP/s and the faster as `peak`: what `gflop_per_s` compares with.
    #[arg(long)]
    pub peak: Option<NonZeroUsize>,
    /// Internal: measure the single shape given and print its CSV row (each shape runs
    /// in a process of its own so that its peak memory is its own).
    #[arg(long, hide = true)]
    pub child: bool,
}

/// A registered cell by its config name.
fn parse_cell(name: &str) -> Result<&'static CellKind, String> {
    registry::find(name).ok_or_else(|| {
        let names: Vec<&str> = registry::CELLS.iter().map(|kind| kind.name).collect();
        format!("unknown cell `{name}`, allowed: {}", names.join(", "))
    })
}

/// How the recurrent time loops run on a GPU (`rnnlab_cells::cuda::TimeLoop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CudaLoop {
    /// Persistent up to `rnnlab_cells::cuda::PERSISTENT_MAX_HIDDEN` units, per step above.
    Auto,
    /// A launch per step.
    PerStep,
    /// One launch per sequence each way.
    Persistent,
}

/// An implementation the benchmark times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchImpl {
    /// rnnlab's fused cells.
    Rnnlab,
    /// candle-nn's built-in `lstm`/`gru` (step by step).
    #[value(name = "candle-nn")]
    CandleNn,
}

impl BenchImpl {
    /// The name in the CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rnnlab => "rnnlab",
            Self::CandleNn => "candle-nn",
        }
    }
}

/// `rnnlab data …`
#[derive(Debug, Subcommand)]
pub enum DataCommand {
    /// Write samples to a Parquet file: one row per sample with `index`, `input`
    /// (list of steps, each a list of features) and `target` (list); the task's
    /// parameters go in the file's key-value metadata.
    Export(ExportArgs),
    /// Print one sample in a readable form.
    Show(ShowArgs),
}

/// A task name as written on the command line and in configs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TaskName {
    /// The adding problem: sum the two marked values.
    Adding,
    /// The copy task: recall 10 symbols after a gap.
    Copy,
    /// Temporal order: classify the order of two markers.
    #[value(name = "temporal_order")]
    TemporalOrder,
}

impl TaskName {
    /// The name as written in configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Adding => "adding",
            Self::Copy => "copy",
            Self::TemporalOrder => "temporal_order",
        }
    }
}

/// A data split as written on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitName {
    /// Training stream.
    Train,
    /// Validation stream.
    Validation,
    /// Test stream.
    Test,
}

/// Which samples: the task, its parameters, the seed and the split.
#[derive(Debug, Clone, Args)]
pub struct TaskArgs {
    /// The task.
    #[arg(long, value_enum)]
    pub task: TaskName,
    /// Sequence length T (the copy task's gap; its sequences have T + 20 steps).
    #[arg(long)]
    pub seq_len: usize,
    /// Classes of the temporal-order task: 4 (XX, XY, YX, YY) or 2 (same/different).
    #[arg(long, default_value_t = 4)]
    pub classes: usize,
    /// Data seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Which stream.
    #[arg(long, value_enum, default_value_t = SplitName::Train)]
    pub split: SplitName,
}

/// `rnnlab data export`
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The samples to write.
    #[command(flatten)]
    pub task: TaskArgs,
    /// How many samples.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub count: u64,
    /// Index of the first sample.
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// The Parquet file to write (written whole or not at all).
    #[arg(long)]
    pub out: PathBuf,
}

/// `rnnlab data show`
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// The sample to show.
    #[command(flatten)]
    pub task: TaskArgs,
    /// Index of the sample in its stream.
    #[arg(long, default_value_t = 0)]
    pub index: u64,
}
