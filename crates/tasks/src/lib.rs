//! Seeded synthetic long-dependency tasks for rnnlab: adding, copy and temporal order.
//!
//! Every sample is a pure function of (task config, seed, split, index): it is drawn from
//! its own ChaCha8 stream, keyed by the seed and the split and numbered by the index, so
//! the same sample comes out on every machine, for any batch size, thread count or order
//! of generation, and the train, validation and test splits are independent streams.
//!
//! ```
//! use rnnlab_tasks::{Split, Task, TaskConfig};
//!
//! let task = Task::new(TaskConfig::Adding { seq_len: 50 })?;
//! let batch = task.batch(7, Split::Train, 0, 32);
//! assert_eq!(batch.inputs.len(), 32 * 50 * 2);
//! // The trivial predictor (always 1) scores the task's baseline MSE of about 1/6.
//! let eval = task.evaluate(&task.baseline_outputs(&batch), &batch);
//! assert!((eval.loss - 1.0 / 6.0).abs() < 0.1);
//! # Ok::<(), rnnlab_tasks::TaskError>(())
//! ```

mod adding;
mod copy;
mod render;
mod rng;
mod temporal_order;

use std::fmt;

pub use rng::SampleRng;

/// Longest sequence a task accepts (far beyond what a recurrent network trains on).
pub const MAX_SEQ_LEN: usize = 1_000_000;

/// A task and its parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskConfig {
    /// The adding problem (Arjovsky et al. 2016 form) over `seq_len` steps.
    Adding {
        /// Sequence length `T` (at least 2).
        seq_len: usize,
    },
    /// The copy task (Arjovsky et al. 2016): remember 10 symbols over a gap of `seq_len`.
    Copy {
        /// The gap `T` (at least 1); sequences have `T + 20` steps.
        seq_len: usize,
    },
    /// Temporal order (Hochreiter & Schmidhuber 1997, experiment 6a) scaled to `seq_len`.
    TemporalOrder {
        /// Sequence length `T` (at least 10, so that both marker windows are non-empty).
        seq_len: usize,
        /// 4 (XX, XY, YX, YY) or 2 (same vs different markers, one sigmoid output).
        classes: usize,
    },
}

/// Why a task configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    /// `seq_len` outside what the task can use.
    #[error("seq_len {got} is out of range for the {task} task: allowed {min}..={max}")]
    SeqLen {
        /// Task name.
        task: &'static str,
        /// The value given.
        got: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// `classes` other than 2 or 4.
    #[error("classes {0} is not allowed for the temporal_order task: allowed 2 or 4")]
    Classes(usize),
    /// An unknown task name.
    #[error("unknown task `{0}`: allowed adding, copy, temporal_order")]
    UnknownTask(String),
}

/// One of the three independent streams of samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training data.
    Train,
    /// Held-out data for evaluation during training.
    Validation,
    /// Held-out data for final evaluation.
    Test,
}

impl Split {
    /// Every split, in order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// The split's name as written in configs and files.
    pub fn name(self) -> &'static str {
        match self {
            Self::Train => "train",
            Self::Validation => "validation",
            Self::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the model's output stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// One real value per sequence (adding).
    Regression,
    /// A class per time step (copy).
    PerStepClassification,
    /// One class per sequence (temporal order).
    SequenceClassification,
}

/// The training loss a task defines, on the model's raw outputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// Mean squared error.
    Mse,
    /// Softmax cross-entropy on logits, averaged over sequences (and steps).
    CrossEntropy,
    /// Sigmoid binary cross-entropy on one logit per sequence.
    BinaryCrossEntropy,
}

/// When a run counts as having solved the task.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Solved {
    /// Loss strictly below the value (adding: MSE < 0.01).
    LossBelow(f64),
    /// Task metric strictly above the value (accuracy > 0.99).
    MetricAbove(f64),
}

impl Solved {
    /// Whether an evaluation meets the criterion.
    pub fn is_met(&self, eval: &Evaluation) -> bool {
        match *self {
            Self::LossBelow(threshold) => eval.loss < threshold,
            Self::MetricAbove(threshold) => eval.metric > threshold,
        }
    }
}

/// What a sample asks the model to produce.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// Adding: the sum of the two marked values.
    Value(f32),
    /// Copy: a class for every step (`T + 20` of them).
    Steps(Vec<u32>),
    /// Temporal order: the class of the sequence.
    Class(u32),
}

/// One sequence: `input` row-major `(seq_len, input_size)` and its target.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The input, step by step.
    pub input: Vec<f32>,
    /// What the model should output.
    pub target: Target,
}

/// `batch_size` consecutive samples laid out for a model.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Number of sequences `B`.
    pub batch_size: usize,
    /// Steps per sequence `T'` (the task's input length).
    pub seq_len: usize,
    /// Features per step `I`.
    pub input_size: usize,
    /// Row-major `(B, T', I)`.
    pub inputs: Vec<f32>,
    /// Targets: `(B)` values (adding), `(B, T')` classes (copy) or `(B)` classes.
    pub targets: Targets,
}

/// The targets of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// One value per sequence.
    Values(Vec<f32>),
    /// One class per step, row-major `(B, T')`.
    StepClasses(Vec<u32>),
    /// One class per sequence.
    Classes(Vec<u32>),
}

/// Loss and task metric of a model's outputs on a batch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// The task's loss ([`Task::loss`]), averaged.
    pub loss: f64,
    /// The task's metric ([`Task::metric_name`]).
    pub metric: f64,
}

/// A validated task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    config: TaskConfig,
}

impl Task {
    /// Validates `config`.
    pub fn new(config: TaskConfig) -> Result<Self, TaskError> {
        let (task, seq_len, min) = match config {
            TaskConfig::Adding { seq_len } => ("adding", seq_len, adding::MIN_SEQ_LEN),
            TaskConfig::Copy { seq_len } => ("copy", seq_len, copy::MIN_SEQ_LEN),
            TaskConfig::TemporalOrder { seq_len, classes } => {
                if classes != 2 && classes != 4 {
                    return Err(TaskError::Classes(classes));
                }
                ("temporal_order", seq_len, temporal_order::MIN_SEQ_LEN)
            }
        };
        if !(min..=MAX_SEQ_LEN).contains(&seq_len) {
            return Err(TaskError::SeqLen {
                task,
                got: seq_len,
                min,
                max: MAX_SEQ_LEN,
            });
        }
        Ok(Self { config })
    }

    /// Builds a task from its name as written in configs (`adding`, `copy`,
    /// `temporal_order`); `classes` is used by temporal order only.
    pub fn from_name(name: &str, seq_len: usize, classes: usize) -> Result<Self, TaskError> {
        Self::new(match name {
            "adding" => TaskConfig::Adding { seq_len },
            "copy" => TaskConfig::Copy { seq_len },
            "temporal_order" => TaskConfig::TemporalOrder { seq_len, classes },
            other => return Err(TaskError::UnknownTask(other.to_owned())),
        })
    }

    /// The configuration.
    pub fn config(&self) -> TaskConfig {
        self.config
    }

    /// The task's name as written in configs.
    pub fn name(&self) -> &'static str {
        match self.config {
            TaskConfig::Adding { .. } => "adding",
            TaskConfig::Copy { .. } => "copy",
            TaskConfig::TemporalOrder { .. } => "temporal_order",
        }
    }

    /// The configured `T`.
    pub fn config_seq_len(&self) -> usize {
        match self.config {
            TaskConfig::Adding { seq_len }
            | TaskConfig::Copy { seq_len }
            | TaskConfig::TemporalOrder { seq_len, .. } => seq_len,
        }
    }

    /// Steps in each input sequence (`T`, or `T + 20` for copy).
    pub fn input_len(&self) -> usize {
        match self.config {
            TaskConfig::Copy { seq_len } => copy::input_len(seq_len),
            _ => self.config_seq_len(),
        }
    }

    /// Features per step.
    pub fn input_size(&self) -> usize {
        match self.config {
            TaskConfig::Adding { .. } => adding::INPUT_SIZE,
            TaskConfig::Copy { .. } => copy::ALPHABET,
            TaskConfig::TemporalOrder { .. } => temporal_order::ALPHABET,
        }
    }

    /// Model outputs per prediction (per step for copy).
    pub fn output_size(&self) -> usize {
        match self.config {
            TaskConfig::Adding { .. } => 1,
            TaskConfig::Copy { .. } => copy::ALPHABET,
            TaskConfig::TemporalOrder { classes: 2, .. } => 1,
            TaskConfig::TemporalOrder { classes, .. } => classes,
        }
    }

    /// What the output stands for.
    pub fn kind(&self) -> TaskKind {
        match self.config {
            TaskConfig::Adding { .. } => TaskKind::Regression,
            TaskConfig::Copy { .. } => TaskKind::PerStepClassification,
            TaskConfig::TemporalOrder { .. } => TaskKind::SequenceClassification,
        }
    }

    /// The training loss.
    pub fn loss(&self) -> Loss {
        match self.config {
            TaskConfig::Adding { .. } => Loss::Mse,
            TaskConfig::TemporalOrder { classes: 2, .. } => Loss::BinaryCrossEntropy,
            _ => Loss::CrossEntropy,
        }
    }

    /// The task metric's name: the fraction of sequences with |error| < 0.04 (adding,
    /// Hochreiter & Schmidhuber 1997), the accuracy on the 10 recalled symbols (copy),
    /// or the classification accuracy (temporal order).
    pub fn metric_name(&self) -> &'static str {
        match self.config {
            TaskConfig::Adding { .. } => "accuracy_0.04",
            TaskConfig::Copy { .. } => "recall_accuracy",
            TaskConfig::TemporalOrder { .. } => "accuracy",
        }
    }

    /// The loss of the best predictor that ignores the dependency: always 1 (adding,
    /// MSE 1/6), blanks then uniform guesses (copy, `10·ln 8 / (T + 20)`), chance
    /// (temporal order, `ln classes`).
    pub fn baseline(&self) -> f64 {
        match self.config {
            TaskConfig::Adding { .. } => adding::BASELINE_MSE,
            TaskConfig::Copy { seq_len } => copy::baseline(seq_len),
            TaskConfig::TemporalOrder { classes, .. } => (classes as f64).ln(),
        }
    }

    /// When the task counts as solved: adding MSE < 0.01; copy recall accuracy > 0.99;
    /// temporal order accuracy > 0.99.
    pub fn solved(&self) -> Solved {
        match self.config {
            TaskConfig::Adding { .. } => Solved::LossBelow(0.01),
            _ => Solved::MetricAbove(0.99),
        }
    }

    /// Sample `index` of `split` for `seed`.
    pub fn sample(&self, seed: u64, split: Split, index: u64) -> Sample {
        let mut rng = SampleRng::new(seed, split, index);
        match self.config {
            TaskConfig::Adding { seq_len } => adding::sample(seq_len, &mut rng),
            TaskConfig::Copy { seq_len } => copy::sample(seq_len, &mut rng),
            TaskConfig::TemporalOrder { seq_len, classes } => {
                temporal_order::sample(seq_len, classes, &mut rng)
            }
        }
    }

    /// Samples `first .. first + batch_size` of `split` for `seed`, laid out as a batch.
    pub fn batch(&self, seed: u64, split: Split, first: u64, batch_size: usize) -> Batch {
        self.batch_of(seed, split, first..first + batch_size as u64)
    }

    /// The samples at `indices` (any order, e.g. a shuffled epoch) laid out as a batch.
    pub fn batch_of(
        &self,
        seed: u64,
        split: Split,
        indices: impl IntoIterator<Item = u64>,
    ) -> Batch {
        let (seq_len, input_size) = (self.input_len(), self.input_size());
        let mut inputs = Vec::new();
        let mut values = Vec::new();
        let mut classes = Vec::new();
        let mut batch_size = 0;
        for index in indices {
            let sample = self.sample(seed, split, index);
            inputs.extend_from_slice(&sample.input);
            match sample.target {
                Target::Value(value) => values.push(value),
                Target::Steps(steps) => classes.extend(steps),
                Target::Class(class) => classes.push(class),
            }
            batch_size += 1;
        }
        let targets = match self.kind() {
            TaskKind::Regression => Targets::Values(values),
            TaskKind::PerStepClassification => Targets::StepClasses(classes),
            TaskKind::SequenceClassification => Targets::Classes(classes),
        };
        Batch {
            batch_size,
            seq_len,
            input_size,
            inputs,
            targets,
        }
    }

    /// Loss and metric of raw model `outputs` on `batch`: `(B)` values (adding), `(B, T',
    /// 10)` logits (copy), `(B, classes)` logits or `(B)` logits (2-class temporal order),
    /// row-major.
    ///
    /// # Panics
    /// If `outputs` does not have that length.
    pub fn evaluate(&self, outputs: &[f32], batch: &Batch) -> Evaluation {
        let expected = batch.batch_size
            * self.output_size()
            * match self.kind() {
                TaskKind::PerStepClassification => batch.seq_len,
                _ => 1,
            };
        assert_eq!(
            outputs.len(),
            expected,
            "outputs for a batch of {}",
            batch.batch_size
        );
        match (&batch.targets, self.config) {
            (Targets::Values(targets), _) => adding::evaluate(outputs, targets),
            (Targets::StepClasses(targets), TaskConfig::Copy { seq_len }) => {
                copy::evaluate(outputs, targets, seq_len)
            }
            (Targets::Classes(targets), _) if self.loss() == Loss::BinaryCrossEntropy => {
                temporal_order::evaluate_binary(outputs, targets)
            }
            (Targets::Classes(targets), _) => {
                let (loss, correct) = softmax_cross_entropy(outputs, targets, self.output_size());
                Evaluation {
                    loss,
                    metric: correct.iter().filter(|&&c| c).count() as f64 / targets.len() as f64,
                }
            }
            (targets, config) => unreachable!("{targets:?} cannot be targets of {config:?}"),
        }
    }

    /// `sample` in a readable form: symbols, markers and target.
    pub fn render(&self, sample: &Sample) -> String {
        render::render(self, sample)
    }

    /// The trivial predictor's outputs for `batch` (see [`Task::baseline`]); evaluating
    /// them gives the baseline loss up to sampling noise (exactly, for copy and temporal
    /// order).
    pub fn baseline_outputs(&self, batch: &Batch) -> Vec<f32> {
        match self.config {
            TaskConfig::Adding { .. } => vec![1.0; batch.batch_size],
            TaskConfig::Copy { seq_len } => copy::baseline_outputs(seq_len, batch.batch_size),
            TaskConfig::TemporalOrder { .. } => vec![0.0; batch.batch_size * self.output_size()],
        }
    }
}

/// Mean softmax cross-entropy of `(n, classes)` logits against `n` targets, and whether
/// each argmax was right.
fn softmax_cross_entropy(logits: &[f32], targets: &[u32], classes: usize) -> (f64, Vec<bool>) {
    let mut total = 0.0;
    let mut correct = Vec::with_capacity(targets.len());
    for (row, &target) in logits.chunks_exact(classes).zip(targets) {
        let max = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let log_sum = row
            .iter()
            .map(|&v| (f64::from(v) - max).exp())
            .sum::<f64>()
            .ln()
            + max;
        total += log_sum - f64::from(row[target as usize]);
        let argmax = row
            .iter()
            .enumerate()
            .fold(0, |best, (k, &v)| if v > row[best] { k } else { best });
        correct.push(argmax == target as usize);
    }
    (total / targets.len() as f64, correct)
}
