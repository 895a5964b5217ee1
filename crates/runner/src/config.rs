//! Experiment files: YAML → raw structs (`deny_unknown_fields`) → validated run configs.
//!
//! ```yaml
//! name: lstm-vs-gru                # [a-z0-9_-]+, the results folder's name
//! description: Does GRU match LSTM on the adding task as sequences grow?
//! seeds: [0, 1, 2]                 # default [0]; every grid point runs once per seed
//! base:
//!   task:  { kind: adding, seq_len: 100 }
//!   model: { cell: lstm, hidden: 128 }
//!   train: { steps: 3000, clip: { norm: 1.0 } }   # device: cuda puts the LSTM's kernels on a GPU
//! sweep:                           # product over any dotted key of `base`
//!   model.cell: [rnn, lstm, gru, peephole_lstm]
//!   task.seq_len: [50, 100, 200, 400]
//! variants:                        # optional: explicit points instead of (or times) the product
//!   - { model.cell: lstm, model.hidden: 64 }
//!   - { model.cell: gru, model.hidden: 74 }
//! tuning:                          # optional: tune every grid point before evaluating it
//!   space:                         # dotted keys of `base` and how to draw them
//!     train.lr: { log_uniform: [1.0e-4, 3.0e-2] }
//!     model.forget_bias: { choice: [0.0, 1.0] }
//!   trials: 9                      # configurations per point (the same for every point)
//!   seeds: [100, 101]              # tuning seeds, disjoint from `seeds`
//!   min_steps: 100                 # shortest rung (default train.steps / 9)
//!   eta: 3                         # keep 1/eta per rung, train eta× longer
//! ```
//!
//! With `tuning`, every point (arm × setting) gets the same search and budget: successive
//! halving picks the configuration with the best median validation loss over the tuning
//! seeds, then the evaluation seeds train with it (see [`RawTuning`] and `crate::tune`).
//!
//! Every field and its default is on the raw structs below ([`RawRun`] and the structs it
//! holds). A run's identity is a hash of its resolved config (defaults filled in) and
//! seed, so the same run always maps to the same folder.

use std::fmt;
use std::path::PathBuf;

use rnnlab_cells::{
    CellConfig, CellOptions, HeadKind, InitScheme, ModelConfig, ScanForm, SkewInit, registry,
};
use rnnlab_tasks::{Task, TaskConfig, TaskKind};
use serde::{Deserialize, Serialize};
use serde_yaml::Mapping;

/// A configuration mistake: which file, where, which key, what is allowed.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The experiment file.
    pub file: PathBuf,
    /// What is wrong, naming the key and the allowed values.
    pub message: String,
}

/// The whole experiment file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExperiment {
    /// `[a-z0-9_-]+`, the results folder's name.
    pub name: String,
    /// The question the experiment answers.
    pub description: String,
    /// Every grid point runs once per seed (default `[0]`).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// The run every grid point starts from.
    pub base: RawRun,
    /// Dotted keys of `base` and the values each takes (their product is the grid).
    #[serde(default)]
    pub sweep: Mapping,
    /// Explicit points, instead of (or times) the product.
    #[serde(default)]
    pub variants: Vec<Mapping>,
    /// Tune every grid point before the evaluation runs (see [`RawTuning`]).
    #[serde(default)]
    pub tuning: Option<RawTuning>,
}

/// `tuning:` — every grid point (arm × setting) is tuned on its own, with the same
/// search and budget, by successive halving (Jamieson & Talwalkar 2016): `trials`
/// configurations drawn from `space` (a Latin hypercube: every key's range cut into
/// `trials` equal strata, one candidate in each) train on every tuning seed for the first
/// rung; the
/// best 1/`eta` by median final validation loss continue `eta` times longer (from their
/// checkpoints), and so on up to `train.steps`. The rungs are `train.steps`,
/// `train.steps`/`eta`, `train.steps`/`eta`², … down to the shortest that is at least
/// `min_steps` (3000 steps, eta 3, min_steps 333: rungs 333, 1000, 3000). Set `min_steps`
/// past the plateau a task's loss sits on early in training, or the first rung ranks
/// noise. The best at the end is the point's configuration for the evaluation `seeds`. Every trial and the choices are written to
/// `tuning.yaml`.
///
/// ```yaml
/// tuning:
///   space:
///     train.lr: { log_uniform: [1.0e-4, 3.0e-2] }
///     model.forget_bias: { choice: [0.0, 1.0] }
///   trials: 9
///   seeds: [1000, 1001]      # disjoint from `seeds`
///   min_steps: 100
///   eta: 3
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTuning {
    /// Dotted keys of `base` and how to draw them: `{ log_uniform: [lo, hi] }`,
    /// `{ uniform: [lo, hi] }` or `{ choice: [a, b, ...] }`.
    pub space: Mapping,
    /// Configurations drawn per grid point, one per stratum of each key's range (default 9).
    #[serde(default = "default_trials")]
    pub trials: usize,
    /// Seeds the trials train on; none of them may be an evaluation seed.
    pub seeds: Vec<u64>,
    /// The shortest rung may not be shorter than this (default: `train.steps` / 9, at
    /// least 1).
    #[serde(default)]
    pub min_steps: Option<usize>,
    /// Each rung keeps 1/`eta` of the trials and trains them `eta` times longer (default 3).
    #[serde(default = "default_eta")]
    pub eta: usize,
}

fn default_trials() -> usize {
    9
}
fn default_eta() -> usize {
    3
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// One run's configuration as written (and, with defaults filled in, as saved).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRun {
    /// The task.
    pub task: RawTask,
    /// The network.
    pub model: RawModel,
    /// The optimisation.
    pub train: RawTrain,
}

/// `task:`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTask {
    /// `adding`, `copy` or `temporal_order`.
    pub kind: TaskName,
    /// Sequence length T (the copy task's gap).
    pub seq_len: usize,
    /// Temporal order only: 4 (default) or 2 classes.
    #[serde(default)]
    pub classes: Option<usize>,
}

/// Task names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskName {
    /// The adding problem.
    Adding,
    /// The copy task.
    Copy,
    /// Temporal order.
    TemporalOrder,
}

/// `model:`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    /// The cell of every layer.
    pub cell: CellName,
    /// Hidden units: one number (every layer) or one per layer (`[128, 64]`).
    pub hidden: Hidden,
    /// Number of layers (default 1, or the length of a `hidden` list).
    #[serde(default)]
    pub layers: Option<usize>,
    /// Initialisation scheme (default `pytorch`).
    #[serde(default)]
    pub init: InitName,
    /// Added once to the forget gate's bias (LSTM family; default 0).
    #[serde(default)]
    pub forget_bias: f64,
    /// Multiplies every recurrent weight as initialised (default 1): with `init:
    /// orthogonal` or `identity` it is the recurrent matrix's spectral radius (Pascanu et
    /// al. 2013's exploding gradients need it above 1). Left out of the saved config when
    /// 1, so earlier run ids stay as they were.
    #[serde(default = "unit_gain", skip_serializing_if = "is_unit_gain")]
    pub recurrent_gain: f64,
    /// GRU only: where the reset gate acts (default `after`, as PyTorch).
    #[serde(default)]
    pub gru_reset: ResetName,
    /// minGRU and minLSTM only: `sequential` (default, Feng et al.'s sequential mode) or
    /// `log_space` (their parallel mode: the candidate through `g`, the recurrence
    /// solved with a cumulative sum and a log-cumsum-exp). Left out of the saved config
    /// when sequential, so earlier run ids stay as they were.
    #[serde(default, skip_serializing_if = "is_sequential")]
    pub scan: ScanName,
    /// expRNN only: how `A` starts, `henaff` (default, Henaff et al. 2016: rotation
    /// blocks by angles in U(−π, π)) or `cayley` (Helfrich et al. 2018: −tan(u/2),
    /// u ~ U(0, π/2)). Left out of the saved config when `henaff`.
    #[serde(default, skip_serializing_if = "is_henaff")]
    pub exprnn_init: SkewInitName,
    /// IndRNN only: `scheme` (default: drawn by `model.init` like any cell's weights)
    /// or `li2018` (Li et al. 2018's adding-task code: `u` from U(0, 2^{1/T}) in the
    /// first layer and from U(2^{−1/T}, 2^{1/T}) above, kept within ±2^{1/T} after every
    /// update, input weights from N(0, 0.001²), biases 0; `T` is the input's length,
    /// `task.seq_len` or for copy `task.seq_len + 20`). Left out of the saved config when
    /// `scheme`.
    #[serde(default, skip_serializing_if = "is_scheme")]
    pub indrnn_init: IndRnnInitName,
    /// LSTM only: the Greff et al. 2017 variants (all off by default).
    #[serde(default)]
    pub ablation: RawAblation,
}

/// A cell's name in configs: one of [`rnnlab_cells::registry::CELLS`] (`rnn`, `lstm`,
/// `gru`, …), checked when the file is read so that the error carries its line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CellName(String);

impl CellName {
    /// The name as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CellName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        match registry::find(&name) {
            Some(_) => Ok(Self(name)),
            None => Err(format!(
                "`model.cell` is `{name}`, not a known cell: allowed {}",
                registry::CELLS
                    .iter()
                    .map(|kind| format!("`{}`", kind.name))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }
}

impl From<CellName> for String {
    fn from(name: CellName) -> Self {
        name.0
    }
}

/// `hidden: 128` or `hidden: [128, 64]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Hidden {
    /// The same width for every layer.
    Each(usize),
    /// One width per layer, bottom first.
    PerLayer(Vec<usize>),
}

/// Initialisation names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InitName {
    /// PyTorch's defaults.
    #[default]
    Pytorch,
    /// Keras's defaults.
    Keras,
    /// Orthogonal recurrent blocks.
    Orthogonal,
    /// Identity recurrent blocks (IRNN).
    Identity,
}

/// GRU reset conventions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetName {
    /// PyTorch, cuDNN, Keras 3.
    #[default]
    After,
    /// Cho et al. 2014.
    Before,
}

/// How minGRU and minLSTM compute their recurrence (`model.scan`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanName {
    /// Step by step.
    #[default]
    Sequential,
    /// Feng et al.'s log-space mode.
    LogSpace,
}

fn is_sequential(scan: &ScanName) -> bool {
    *scan == ScanName::Sequential
}

/// How the expRNN's `A` starts (`model.exprnn_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SkewInitName {
    /// Henaff et al. 2016.
    #[default]
    Henaff,
    /// Helfrich et al. 2018.
    Cayley,
}

fn is_henaff(init: &SkewInitName) -> bool {
    *init == SkewInitName::Henaff
}

/// How the IndRNN's weights start (`model.indrnn_init`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndRnnInitName {
    /// As `model.init` draws every cell's weights.
    #[default]
    Scheme,
    /// Li et al. 2018's recipe for the run's sequence length.
    Li2018,
}

fn is_scheme(init: &IndRnnInitName) -> bool {
    *init == IndRnnInitName::Scheme
}

/// `model.ablation:`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAblation {
    /// Input gate fixed at 1.
    pub no_input_gate: bool,
    /// Forget gate fixed at 1 (the 1997 LSTM).
    pub no_forget_gate: bool,
    /// Output gate fixed at 1.
    pub no_output_gate: bool,
    /// Input gate = 1 − forget gate.
    pub coupled_gates: bool,
    /// Peephole connections.
    pub peepholes: bool,
    /// No tanh on the cell input: `g` is its pre-activation (Greff et al.'s NIAF).
    /// Left out of the saved config when false, so earlier run ids stay as they were.
    #[serde(skip_serializing_if = "is_false")]
    pub no_input_activation: bool,
    /// No tanh on the cell output: `h = o ⊙ c` (Greff et al.'s NOAF).
    #[serde(skip_serializing_if = "is_false")]
    pub no_output_activation: bool,
    /// Recurrent connections from the previous step's input, forget and output gates
    /// into this step's (Greff et al.'s FGR; `weight_gg` `(3H, 3H)`).
    #[serde(skip_serializing_if = "is_false")]
    pub full_gate_recurrence: bool,
}

fn unit_gain() -> f64 {
    1.0
}

fn is_unit_gain(gain: &f64) -> bool {
    *gain == 1.0
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// `train:`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTrain {
    /// `adam` (default), `rmsprop` or `sgd`.
    #[serde(default)]
    pub optimizer: OptimizerName,
    /// Learning rate (default 1e-3).
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// SGD momentum (default 0.9; ignored by the others).
    #[serde(default = "default_momentum")]
    pub momentum: f64,
    /// Multiplies the learning rate of the parameters through which the state feeds
    /// back (recurrent matrices and diagonals, the expRNN's `A`, the LRU's `ν` and `θ`,
    /// peepholes; default 1): the expRNN's paper trains `A` at a tenth of the rate (its
    /// copying script: lr 2e-4, 2e-5 for `A`). Left out of the saved config when 1.
    #[serde(default = "unit_gain", skip_serializing_if = "is_unit_gain")]
    pub recurrent_lr_scale: f64,
    /// Sequences per step (default 32).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Optimiser steps over an endless training stream; or give `epochs` and `samples`.
    #[serde(default)]
    pub steps: Option<usize>,
    /// Passes over a fixed training set of `samples` sequences.
    #[serde(default)]
    pub epochs: Option<usize>,
    /// Size of the fixed training set (with `epochs`).
    #[serde(default)]
    pub samples: Option<usize>,
    /// Gradient clipping: `{ norm: x }` (global norm), `{ value: x }`, or absent.
    #[serde(default)]
    pub clip: RawClip,
    /// Evaluate on the validation stream every this many steps (default 100).
    #[serde(default = "default_eval_every")]
    pub eval_every: usize,
    /// Validation sequences per evaluation (default 1000).
    #[serde(default = "default_eval_samples")]
    pub eval_samples: usize,
    /// Write a checkpoint every this many steps (default: after every 60 s of training).
    /// Neither the run's id nor its numbers depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_every: Option<usize>,
    /// Where the recurrent layers' fused kernels run: `cpu` (default), `cuda` (GPU 0)
    /// or `cuda:N`. A GPU needs the `cuda` feature (on by default), an NVIDIA driver and
    /// NVRTC (`libnvrtc.so.13` on `LD_LIBRARY_PATH`), and a cell with a CUDA kernel (the
    /// LSTM and its variants but full gate recurrence, the reset-after GRU, the tanh and
    /// ReLU RNN, the IndRNN, the sequential minGRU and minLSTM, the expRNN, the LRU).
    /// Its numbers differ from the CPU's in the last bits, so the kind of
    /// device is part of the run's id; which GPU is not. Left out of the saved config
    /// on the CPU.
    #[serde(default, skip_serializing_if = "DeviceName::is_cpu")]
    pub device: DeviceName,
}

/// `train.device`: `cpu`, `cuda` or `cuda:N`, checked when the file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceName {
    /// The CPU kernels.
    #[default]
    Cpu,
    /// GPU `N` (`cuda` is `cuda:0`).
    Cuda(usize),
}

impl DeviceName {
    fn is_cpu(&self) -> bool {
        *self == Self::Cpu
    }

    /// The same kind of device with its index dropped: what a run's id hashes.
    pub fn kind(self) -> Self {
        match self {
            Self::Cpu => Self::Cpu,
            Self::Cuda(_) => Self::Cuda(0),
        }
    }
}

impl TryFrom<String> for DeviceName {
    type Error = String;

    fn try_from(name: String) -> Result<Self, String> {
        let index = name.strip_prefix("cuda:").map(str::parse::<usize>);
        match (name.as_str(), index) {
            ("cpu", _) => Ok(Self::Cpu),
            ("cuda", _) => Ok(Self::Cuda(0)),
            (_, Some(Ok(index))) => Ok(Self::Cuda(index)),
            _ => Err(format!(
                "`train.device` is `{name}`: allowed `cpu`, `cuda` or `cuda:N` (N a GPU index)"
            )),
        }
    }
}

impl From<DeviceName> for String {
    fn from(device: DeviceName) -> Self {
        match device {
            DeviceName::Cpu => "cpu".into(),
            DeviceName::Cuda(0) => "cuda".into(),
            DeviceName::Cuda(index) => format!("cuda:{index}"),
        }
    }
}

/// Seconds of training between checkpoints unless `train.checkpoint_every` says steps:
/// about a minute of work is the most an interruption costs, and a run shorter than that
/// writes only its final checkpoint.
pub const CHECKPOINT_SECONDS: f64 = 60.0;
/// The largest `model.layers`: deeper stacks are a typo, not an experiment.
pub const MAX_LAYERS: usize = 1_000;
/// The largest number of optimiser steps a run may take (`train.steps`, or `epochs` ×
/// batches per epoch): a billion steps is years on any machine.
pub const MAX_STEPS: usize = 1_000_000_000;
/// The largest `train.eval_samples`: every evaluation runs them all.
pub const MAX_EVAL_SAMPLES: usize = 10_000_000;

fn default_lr() -> f64 {
    1e-3
}
fn default_momentum() -> f64 {
    0.9
}
fn default_batch_size() -> usize {
    32
}
fn default_eval_every() -> usize {
    100
}
fn default_eval_samples() -> usize {
    1000
}

/// Optimiser names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerName {
    /// Adam (the article's).
    #[default]
    Adam,
    /// RMSprop (the long-sequence papers').
    Rmsprop,
    /// SGD with momentum.
    Sgd,
}

/// `train.clip:`
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawClip {
    /// Rescale the gradient to this global L2 norm when above it (Pascanu et al. 2013).
    pub norm: Option<f64>,
    /// Clamp every gradient element to ±value.
    pub value: Option<f64>,
}

/// A validated run: what the trainer needs.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The task.
    pub task: Task,
    /// The network's shape.
    pub model: ModelConfig,
    /// Initialisation.
    pub init: rnnlab_cells::Init,
    /// Optimisation.
    pub train: TrainConfig,
    /// Seed of the weights and the data.
    pub seed: u64,
}

/// Validated `train:`.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// The optimiser and its learning rate.
    pub optimizer: Optimizer,
    /// The learning rate's factor for the recurrent parameters.
    pub recurrent_lr_scale: f64,
    /// Sequences per step.
    pub batch_size: usize,
    /// Steps over an endless stream, or epochs over a fixed set.
    pub budget: Budget,
    /// Gradient clipping.
    pub clip: Clip,
    /// Steps between evaluations.
    pub eval_every: usize,
    /// Validation sequences per evaluation.
    pub eval_samples: usize,
    /// When checkpoints are written.
    pub checkpoint_every: CheckpointEvery,
    /// Where the fused kernels run.
    pub device: DeviceName,
}

/// When a run writes a checkpoint (besides after its last step).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CheckpointEvery {
    /// After every this many steps.
    Steps(usize),
    /// After the first step that ends this many seconds after the last checkpoint.
    Seconds(f64),
}

/// An optimiser with its settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    /// Adam (β = 0.9, 0.999; ε = 1e-8; no weight decay).
    Adam {
        /// Learning rate.
        lr: f64,
    },
    /// RMSprop.
    Rmsprop {
        /// Learning rate.
        lr: f64,
    },
    /// SGD with momentum.
    Sgd {
        /// Learning rate.
        lr: f64,
        /// Momentum.
        momentum: f64,
    },
}

/// How long a run trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// Optimiser steps over an endless training stream.
    Steps(usize),
    /// Passes over a fixed set of `samples` training sequences.
    Epochs {
        /// Passes.
        epochs: usize,
        /// Training sequences.
        samples: usize,
    },
}

/// Gradient clipping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Clip {
    /// None.
    None,
    /// By global L2 norm.
    Norm(f64),
    /// By value.
    Value(f64),
}

impl TrainConfig {
    /// Optimiser steps the run takes.
    pub fn total_steps(&self) -> usize {
        match self.budget {
            Budget::Steps(steps) => steps,
            Budget::Epochs { epochs, samples } => epochs * samples.div_ceil(self.batch_size),
        }
    }
}

/// Why a raw run does not validate (the key and what is allowed).
#[derive(Debug, PartialEq)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn positive(key: &str, value: f64) -> Result<f64, Invalid> {
    if value.is_finite() && value > 0.0 {
        Ok(value)
    } else {
        Err(Invalid(format!(
            "`{key}` is {value}: allowed a finite number > 0"
        )))
    }
}

fn at_least_one(key: &str, value: usize) -> Result<usize, Invalid> {
    if value >= 1 {
        Ok(value)
    } else {
        Err(Invalid(format!("`{key}` is 0: allowed 1 or more")))
    }
}

fn at_most(key: &str, value: usize, max: usize) -> Result<usize, Invalid> {
    if (1..=max).contains(&value) {
        Ok(value)
    } else {
        Err(Invalid(format!("`{key}` is {value}: allowed 1 to {max}")))
    }
}

impl RawRun {
    /// Every field as YAML, defaults included: what readers show. The saved form leaves
    /// out fields added later while they hold their defaults (so that earlier run ids
    /// stay as they were); a report still names their values.
    pub fn full_value(&self) -> serde_yaml::Value {
        let mut value = serde_yaml::to_value(self).expect("a run serialises to YAML");
        let ablation = &self.model.ablation;
        let later: [(&[&str], serde_yaml::Value); 4] = [
            (
                &["model", "recurrent_gain"],
                self.model.recurrent_gain.into(),
            ),
            (
                &["model", "ablation", "no_input_activation"],
                ablation.no_input_activation.into(),
            ),
            (
                &["model", "ablation", "no_output_activation"],
                ablation.no_output_activation.into(),
            ),
            (
                &["model", "ablation", "full_gate_recurrence"],
                ablation.full_gate_recurrence.into(),
            ),
        ];
        for (path, field) in later {
            let (last, parents) = path.split_last().expect("a non-empty path");
            let slot = parents.iter().fold(&mut value, |v, part| &mut v[*part]);
            if let serde_yaml::Value::Mapping(map) = slot {
                map.entry((*last).into()).or_insert(field);
            }
        }
        value
    }

    /// Validates into what the trainer needs.
    pub fn validate(&self, seed: u64) -> Result<RunConfig, Invalid> {
        let task = self.task.validate()?;
        let (model, init) = self.model.validate(&task)?;
        let train = self.train.validate()?;
        if let DeviceName::Cuda(_) = train.device {
            if !cfg!(feature = "cuda") {
                return Err(Invalid(
                    "`train.device: cuda`: this rnnlab was built without the `cuda` feature".into(),
                ));
            }
            if !model.cell.spec().has_cuda_kernel() {
                let with_kernel: Vec<String> = registry::CELLS
                    .iter()
                    .filter(|kind| {
                        (kind.configure)(&CellOptions::default())
                            .is_ok_and(|cell| cell.spec().has_cuda_kernel())
                    })
                    .map(|kind| format!("`{}`", kind.name))
                    .collect();
                return Err(Invalid(format!(
                    "`train.device: cuda`: `{}` has no CUDA kernel yet (these have, with their default options: {}): use `train.device: cpu`",
                    model.cell.label(),
                    with_kernel.join(", ")
                )));
            }
        }
        Ok(RunConfig {
            task,
            model,
            init,
            train,
            seed,
        })
    }
}

impl RawTask {
    fn validate(&self) -> Result<Task, Invalid> {
        let config = match (self.kind, self.classes) {
            (TaskName::Adding, None) => TaskConfig::Adding {
                seq_len: self.seq_len,
            },
            (TaskName::Copy, None) => TaskConfig::Copy {
                seq_len: self.seq_len,
            },
            (TaskName::TemporalOrder, classes) => TaskConfig::TemporalOrder {
                seq_len: self.seq_len,
                classes: classes.unwrap_or(4),
            },
            (_, Some(_)) => {
                return Err(Invalid(
                    "`task.classes` is only allowed with `kind: temporal_order`".into(),
                ));
            }
        };
        Task::new(config).map_err(|err| Invalid(format!("`task`: {err}")))
    }
}

impl RawModel {
    /// The options of `model.gru_reset`, `model.scan`, `model.exprnn_init`,
    /// `model.indrnn_init` and `model.ablation` for the cell, on sequences of `seq_len`
    /// steps.
    fn cell_options(&self, seq_len: usize) -> CellOptions {
        let a = self.ablation;
        CellOptions {
            reset_before: self.gru_reset == ResetName::Before,
            scan: match self.scan {
                ScanName::Sequential => ScanForm::Sequential,
                ScanName::LogSpace => ScanForm::LogSpace,
            },
            skew_init: match self.exprnn_init {
                SkewInitName::Henaff => SkewInit::Henaff,
                SkewInitName::Cayley => SkewInit::Cayley,
            },
            no_input_gate: a.no_input_gate,
            no_forget_gate: a.no_forget_gate,
            no_output_gate: a.no_output_gate,
            coupled_gates: a.coupled_gates,
            peepholes: a.peepholes,
            no_input_activation: a.no_input_activation,
            no_output_activation: a.no_output_activation,
            full_gate_recurrence: a.full_gate_recurrence,
            indrnn_li2018: (self.indrnn_init == IndRnnInitName::Li2018).then_some(seq_len),
        }
    }

    /// The configured cell on sequences of `seq_len` steps, or which option does not
    /// apply to it.
    pub fn cell_config(&self, seq_len: usize) -> Result<CellConfig, String> {
        registry::parse(self.cell.as_str(), &self.cell_options(seq_len))
    }

    fn validate(&self, task: &Task) -> Result<(ModelConfig, rnnlab_cells::Init), Invalid> {
        let hidden = match (&self.hidden, self.layers) {
            (Hidden::Each(width), layers) => {
                vec![*width; at_most("model.layers", layers.unwrap_or(1), MAX_LAYERS)?]
            }
            (Hidden::PerLayer(widths), Some(layers)) if layers != widths.len() => {
                return Err(Invalid(format!(
                    "`model.layers` is {layers} but `model.hidden` lists {} widths: give one or make them agree",
                    widths.len()
                )));
            }
            (Hidden::PerLayer(widths), _) => widths.clone(),
        };
        at_most("model.layers", hidden.len(), MAX_LAYERS)?;
        if hidden.is_empty() || hidden.contains(&0) {
            return Err(Invalid(
                "`model.hidden`: every layer needs at least 1 unit".into(),
            ));
        }
        let cell = self.cell_config(task.input_len()).map_err(Invalid)?;
        if self.indrnn_init == IndRnnInitName::Li2018 && self.recurrent_gain != 1.0 {
            return Err(Invalid(
                "`model.recurrent_gain` does not apply with `model.indrnn_init: li2018`, whose recipe sets u's range: leave one out".into(),
            ));
        }
        if !self.forget_bias.is_finite() {
            return Err(Invalid(
                "`model.forget_bias` must be a finite number".into(),
            ));
        }
        if !(self.recurrent_gain.is_finite() && self.recurrent_gain > 0.0) {
            return Err(Invalid(format!(
                "`model.recurrent_gain` is {}: it must be a positive number",
                self.recurrent_gain
            )));
        }
        let head = match task.kind() {
            TaskKind::PerStepClassification => HeadKind::EveryStep,
            _ => HeadKind::LastStep,
        };
        let model = ModelConfig {
            cell,
            input_size: task.input_size(),
            hidden,
            output_size: task.output_size(),
            head,
        };
        let scheme = match self.init {
            InitName::Pytorch => InitScheme::Pytorch,
            InitName::Keras => InitScheme::Keras,
            InitName::Orthogonal => InitScheme::Orthogonal,
            InitName::Identity => InitScheme::Identity,
        };
        Ok((
            model,
            rnnlab_cells::Init {
                scheme,
                forget_bias: self.forget_bias,
                recurrent_gain: self.recurrent_gain,
            },
        ))
    }
}

impl RawTrain {
    fn validate(&self) -> Result<TrainConfig, Invalid> {
        let lr = positive("train.lr", self.lr)?;
        let optimizer = match self.optimizer {
            OptimizerName::Adam => Optimizer::Adam { lr },
            OptimizerName::Rmsprop => Optimizer::Rmsprop { lr },
            OptimizerName::Sgd => {
                if !(0.0..1.0).contains(&self.momentum) {
                    return Err(Invalid(format!(
                        "`train.momentum` is {}: allowed 0 <= momentum < 1",
                        self.momentum
                    )));
                }
                Optimizer::Sgd {
                    lr,
                    momentum: self.momentum,
                }
            }
        };
        let budget = match (self.steps, self.epochs, self.samples) {
            (Some(steps), None, None) => Budget::Steps(at_most("train.steps", steps, MAX_STEPS)?),
            (None, Some(epochs), Some(samples)) => Budget::Epochs {
                epochs: at_least_one("train.epochs", epochs)?,
                samples: at_least_one("train.samples", samples)?,
            },
            _ => {
                return Err(Invalid(
                    "`train`: give either `steps`, or both `epochs` and `samples`".into(),
                ));
            }
        };
        let clip = match (self.clip.norm, self.clip.value) {
            (None, None) => Clip::None,
            (Some(norm), None) => Clip::Norm(positive("train.clip.norm", norm)?),
            (None, Some(value)) => Clip::Value(positive("train.clip.value", value)?),
            (Some(_), Some(_)) => {
                return Err(Invalid(
                    "`train.clip`: give `norm` or `value`, not both".into(),
                ));
            }
        };
        let train = TrainConfig {
            optimizer,
            recurrent_lr_scale: positive("train.recurrent_lr_scale", self.recurrent_lr_scale)?,
            batch_size: at_least_one("train.batch_size", self.batch_size)?,
            budget,
            clip,
            eval_every: at_least_one("train.eval_every", self.eval_every)?,
            eval_samples: at_most("train.eval_samples", self.eval_samples, MAX_EVAL_SAMPLES)?,
            checkpoint_every: match self.checkpoint_every {
                Some(steps) => {
                    CheckpointEvery::Steps(at_least_one("train.checkpoint_every", steps)?)
                }
                None => CheckpointEvery::Seconds(CHECKPOINT_SECONDS),
            },
            device: self.device,
        };
        if let Budget::Epochs { epochs, samples } = budget {
            let steps = samples
                .div_ceil(train.batch_size)
                .checked_mul(epochs)
                .filter(|&steps| steps <= MAX_STEPS);
            if steps.is_none() {
                return Err(Invalid(format!(
                    "`train.epochs` × batches per epoch is more than {MAX_STEPS} steps: allowed at most {MAX_STEPS}"
                )));
            }
        }
        Ok(train)
    }
}
