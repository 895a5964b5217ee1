//! Training one run: the loop, evaluation, and everything it measures.
//!
//! Data: step `k` of a `steps` budget trains on samples `k·B .. (k+1)·B` of the training
//! stream; an `epochs` budget reshuffles the fixed set `0..samples` every epoch with a
//! permutation seeded by (seed, epoch). Evaluation uses samples `0..eval_samples` of the
//! validation stream. Weights, data and shuffles all derive from the run's seed, and
//! every reduction is in a fixed order, so the same config gives the same numbers bit for
//! bit on the CPU.

use std::time::Instant;

use anyhow::Context as _;

use candle_core::{DType, Device, Result, Var};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use rnnlab_cells::{Backend, Model, Params};
use rnnlab_tasks::{Evaluation, Split, Task};

use crate::checkpoint::{Checkpoint, Record};
use crate::cli::CudaLoop;
use crate::config::{Budget, CheckpointEvery, DeviceName, RunConfig};
use crate::loss::{inputs, task_loss};
use crate::optim::{Trainer, clip_gradients};

/// Sequences per forward pass during evaluation.
pub const EVAL_CHUNK: usize = 256;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Status {
    /// It used its whole budget.
    Done,
    /// The training loss became NaN or infinite at this step; training stopped there.
    Diverged {
        /// The step (1-based) whose loss was not finite.
        step: usize,
    },
}

/// One measured value: `(step, split, metric, value)` in long form.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricRow {
    /// Optimiser steps taken when it was measured (0: before training).
    pub step: usize,
    /// `train` or `validation`.
    pub split: &'static str,
    /// `loss`, `grad_norm` or the task's metric name.
    pub metric: &'static str,
    /// The value.
    pub value: f64,
}

/// The gradient flow of the first layer at one step: `norms[t]` = `g_t`.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowRow {
    /// The step whose backward measured it (1-based).
    pub step: usize,
    /// `g_t = mean_b ‖∂L/∂h_t‖` for every time step `t` ([`rnnlab_cells::GradFlow`]).
    pub norms: Vec<f64>,
}

/// Everything a run produced.
pub struct Outcome {
    /// How it ended.
    pub status: Status,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Validation loss and metric at the last evaluation.
    pub last: Evaluation,
    /// First step at which the validation evaluation met the task's "solved" criterion.
    pub steps_to_solve: Option<usize>,
    /// Every metric, in the order measured.
    pub metrics: Vec<MetricRow>,
    /// The first layer's gradient flow at steps 1, 2, 4, 8, … and the last ([`records_flow`]).
    pub gradflow: Vec<FlowRow>,
    /// Training sequences per second of wall time (evaluation excluded).
    pub samples_per_s: f64,
    /// The trained parameters.
    pub params: Params,
}

/// Where a run's checkpoints go and how often.
pub struct Checkpoints<'a> {
    /// How often one is written during training; one is always written after the last
    /// step of a run that did not diverge (a longer budget starts from it).
    pub every: CheckpointEvery,
    /// Writes one.
    pub save: &'a mut dyn FnMut(&Checkpoint) -> anyhow::Result<()>,
}

/// The environment variable that, set to the CUDA emulator's library, makes
/// `train.device: cuda` run the kernels on the host (slowly): the tests' way to drive the
/// whole GPU path without a GPU.
pub const CUDA_EMULATOR: &str = "RNNLAB_CUDA_EMULATOR";

/// Opens `device` for one run's fused kernels: each run gets a stream of its own, so
/// `--jobs N` runs share a GPU, whose recurrent time loops run as `time_loop` says.
pub fn open_backend(device: DeviceName, time_loop: CudaLoop) -> anyhow::Result<Backend> {
    match device {
        DeviceName::Cpu => Ok(Backend::Cpu),
        #[cfg(feature = "cuda")]
        DeviceName::Cuda(index) => {
            // For testing the whole GPU path on machines without one: the kernels
            // compiled for the host (`rnnlab_cells::cuda::Gpu::emulated`).
            let gpu = match std::env::var_os(CUDA_EMULATOR) {
                Some(library) => rnnlab_cells::cuda::Gpu::emulated(library.as_ref())
                    .with_context(|| format!("loading {CUDA_EMULATOR}"))?,
                None => rnnlab_cells::cuda::Gpu::open(index)
                    .with_context(|| format!("opening cuda:{index} (train.device)"))?,
            };
            use rnnlab_cells::cuda::TimeLoop;
            let time_loop = match time_loop {
                CudaLoop::Auto => TimeLoop::Auto,
                CudaLoop::PerStep => TimeLoop::PerStep,
                CudaLoop::Persistent => TimeLoop::Persistent,
            };
            Ok(Backend::Cuda(std::sync::Arc::new(
                gpu.with_time_loop(time_loop),
            )))
        }
        #[cfg(not(feature = "cuda"))]
        DeviceName::Cuda(_) => {
            let _ = time_loop; // only a GPU has time loops to choose from
            anyhow::bail!("train.device: cuda needs rnnlab built with the `cuda` feature")
        }
    }
}

/// Whether step `step` of a `total`-step run records the gradient flow: the powers of two
/// (1, 2, 4, …, dense where it changes fastest) and the last step. The schedule does not
/// depend on the budget before the last step, so a longer run records the same rows.
pub fn records_flow(step: usize, total: usize) -> bool {
    step.is_power_of_two() || step == total
}

/// Trains `config` to the end of its budget (or until it diverges), from `start` if given
/// (a checkpoint of this run, or of the same run with a shorter budget, whose record
/// [`Record::continued`] has fitted to this budget); `on_step(step, loss)` is called after
/// every step (for progress display).
pub fn train(
    config: &RunConfig,
    start: Option<Checkpoint>,
    mut checkpoints: Option<Checkpoints<'_>>,
    on_step: &dyn Fn(usize, f64),
) -> anyhow::Result<Outcome> {
    let device = Device::Cpu;
    let task = &config.task;
    let mut params = config
        .init
        .params(&config.model, config.seed, DType::F32, &device)?;
    params.set_backend(open_backend(config.train.device, CudaLoop::Auto)?);
    let model = Model::new(&config.model, &params)?;
    let vars: Vec<_> = params.iter().map(|(_, var)| var.clone()).collect();
    let mut trainer = Trainer::new(config.train.optimizer, vars.clone())?;
    if config.train.recurrent_lr_scale != 1.0 {
        let recurrent = config.model.recurrent_params();
        for (index, (name, _)) in params.iter().enumerate() {
            if recurrent.iter().any(|r| r == name) {
                trainer.scale_lr(index, config.train.recurrent_lr_scale);
            }
        }
    }
    // Parameters kept within a bound after every update (the IndRNN's u under
    // `indrnn_init: li2018`), as Li et al. clip theirs.
    let bounded: Vec<(Var, f64)> = config
        .model
        .bounded_params()
        .into_iter()
        .map(|(name, bound)| {
            let var = params.get(&name).context("a bounded parameter")?;
            Ok((var.clone(), bound))
        })
        .collect::<anyhow::Result<_>>()?;
    let total = config.train.total_steps();
    let batch_size = config.train.batch_size;

    let (first, mut record) = match start {
        Some(checkpoint) => {
            restore(&checkpoint, &params, &mut trainer)?;
            (checkpoint.step + 1, checkpoint.record)
        }
        None => {
            let last = evaluate(&model, config)?;
            let mut record = Record {
                metrics: Vec::new(),
                gradflow: Vec::new(),
                last,
                steps_to_solve: None,
                training_time: 0.0,
            };
            record.evaluation(0, last, task);
            (1, record)
        }
    };

    let mut status = Status::Done;
    let mut steps = first - 1;
    let mut since_checkpoint = Instant::now();
    for step in first..=total {
        let started = Instant::now();
        let batch = task.batch_of(config.seed, Split::Train, training_indices(config, step));
        let (outputs, _, flows) = model.forward_traced(&inputs(&batch, &device)?)?;
        // The first layer's flow on the steps that record it; dropping the others before
        // the backward lets the kernels skip computing them.
        let flow = flows
            .into_iter()
            .next()
            .filter(|_| records_flow(step, total));
        let loss = task_loss(task, &outputs, &batch)?;
        let loss_value = f64::from(loss.to_scalar::<f32>()?);
        if !loss_value.is_finite() {
            status = Status::Diverged { step };
            record.metrics.push(MetricRow {
                step,
                split: "train",
                metric: "loss",
                value: loss_value,
            });
            break;
        }
        let mut grads = loss.backward()?;
        let grad_norm = clip_gradients(&mut grads, &vars, config.train.clip)?;
        trainer.step(&grads)?;
        for (var, bound) in &bounded {
            var.set(&var.as_tensor().clamp(-bound, *bound)?)?;
        }
        record.training_time += started.elapsed().as_secs_f64();
        steps = step;
        record.metrics.push(MetricRow {
            step,
            split: "train",
            metric: "loss",
            value: loss_value,
        });
        record.metrics.push(MetricRow {
            step,
            split: "train",
            metric: "grad_norm",
            value: grad_norm,
        });
        on_step(step, loss_value);
        if let Some(norms) = flow.and_then(|flow| flow.norms()) {
            record.gradflow.push(FlowRow { step, norms });
        }
        if step % config.train.eval_every == 0 || step == total {
            let last = evaluate(&model, config)?;
            record.evaluation(step, last, task);
        }
        if let Some(checkpoints) = checkpoints.as_mut() {
            let due = match checkpoints.every {
                CheckpointEvery::Steps(n) => step.is_multiple_of(n),
                CheckpointEvery::Seconds(s) => since_checkpoint.elapsed().as_secs_f64() >= s,
            };
            if due || step == total {
                (checkpoints.save)(&snapshot(step, &params, &trainer, &record)?)?;
                since_checkpoint = Instant::now();
            }
        }
    }
    let samples_per_s = if record.training_time > 0.0 {
        (steps * batch_size) as f64 / record.training_time
    } else {
        0.0
    };
    Ok(Outcome {
        status,
        steps,
        last: record.last,
        steps_to_solve: record.steps_to_solve,
        metrics: record.metrics,
        gradflow: record.gradflow,
        samples_per_s,
        params,
    })
}

impl Record {
    /// Records a validation evaluation at `step`.
    fn evaluation(&mut self, step: usize, eval: Evaluation, task: &Task) {
        self.metrics.push(MetricRow {
            step,
            split: "validation",
            metric: "loss",
            value: eval.loss,
        });
        self.metrics.push(MetricRow {
            step,
            split: "validation",
            metric: task.metric_name(),
            value: eval.metric,
        });
        self.last = eval;
        if self.steps_to_solve.is_none() && task.solved().is_met(&eval) {
            self.steps_to_solve = Some(step);
        }
    }

    /// The record of the first `step` steps of a run of `config` (budget included), from
    /// the record of a shorter run of the same config that ended there: what only its
    /// end added (an evaluation off the `eval_every` grid, a gradient-flow row off the
    /// schedule) goes, and the last evaluation and solving step follow from what stays.
    pub fn continued(self, step: usize, config: &RunConfig) -> Self {
        let task = &config.task;
        let total = config.train.total_steps();
        let kept_eval = |s: usize| s.is_multiple_of(config.train.eval_every);
        let mut record = Self {
            metrics: Vec::new(),
            gradflow: self
                .gradflow
                .into_iter()
                .filter(|row| records_flow(row.step, total))
                .collect(),
            last: self.last,
            steps_to_solve: None,
            training_time: self.training_time,
        };
        let mut pending: Option<(usize, f64)> = None;
        for row in self.metrics {
            if row.split == "validation" {
                if row.step == step && !kept_eval(step) {
                    continue;
                }
                // The loss comes first, then the metric: an evaluation is complete then.
                match (row.metric, pending.take()) {
                    ("loss", _) => pending = Some((row.step, row.value)),
                    (_, Some((s, loss))) => {
                        let eval = Evaluation {
                            loss,
                            metric: row.value,
                        };
                        record.evaluation(s, eval, task);
                        continue;
                    }
                    _ => {}
                }
                continue;
            }
            record.metrics.push(row);
        }
        record
    }
}

/// The run's state after `step` steps.
fn snapshot(
    step: usize,
    params: &Params,
    trainer: &Trainer,
    record: &Record,
) -> anyhow::Result<Checkpoint> {
    let values = |t: &candle_core::Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_vec1() };
    let (optimizer_steps, slots) = trainer.state();
    Ok(Checkpoint {
        step,
        params: params
            .iter()
            .map(|(name, var)| {
                Ok((
                    name.to_owned(),
                    var.dims().to_vec(),
                    values(var.as_tensor())?,
                ))
            })
            .collect::<Result<_>>()?,
        optimizer_steps,
        slots: slots
            .iter()
            .map(|(a, b)| Ok((values(a)?, values(b)?)))
            .collect::<Result<_>>()?,
        record: record.clone(),
    })
}

/// Puts a checkpoint's parameters and optimiser state in place.
fn restore(checkpoint: &Checkpoint, params: &Params, trainer: &mut Trainer) -> anyhow::Result<()> {
    anyhow::ensure!(
        checkpoint.params.len() == params.len(),
        "the checkpoint has {} parameters, the model {}",
        checkpoint.params.len(),
        params.len()
    );
    let mut slots = Vec::with_capacity(checkpoint.slots.len());
    for ((name, var), ((saved, shape, values), (first, second))) in params
        .iter()
        .zip(checkpoint.params.iter().zip(&checkpoint.slots))
    {
        anyhow::ensure!(
            name == saved && var.dims() == shape.as_slice(),
            "the checkpoint's `{saved}` {shape:?} does not fit the model's `{name}` {:?}",
            var.dims()
        );
        let tensor = |v: &[f32]| candle_core::Tensor::from_slice(v, shape.as_slice(), &Device::Cpu);
        var.set(&tensor(values)?)?;
        slots.push((tensor(first)?, tensor(second)?));
    }
    trainer.restore(checkpoint.optimizer_steps, slots)?;
    Ok(())
}

/// The training-sample indices of step `step` (1-based).
fn training_indices(config: &RunConfig, step: usize) -> Vec<u64> {
    let batch_size = config.train.batch_size;
    match config.train.budget {
        Budget::Steps(_) => {
            let first = ((step - 1) * batch_size) as u64;
            (first..first + batch_size as u64).collect()
        }
        Budget::Epochs { samples, .. } => {
            let per_epoch = samples.div_ceil(batch_size);
            let (epoch, within) = ((step - 1) / per_epoch, (step - 1) % per_epoch);
            let mut order: Vec<u64> = (0..samples as u64).collect();
            let mut rng = ChaCha8Rng::seed_from_u64(
                config.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15),
            );
            order.shuffle(&mut rng);
            let end = ((within + 1) * batch_size).min(samples);
            order[within * batch_size..end].to_vec()
        }
    }
}

/// Loss and metric on the first `eval_samples` of the validation stream.
fn evaluate(model: &Model, config: &RunConfig) -> Result<Evaluation> {
    let task = &config.task;
    let (mut loss, mut metric) = (0.0, 0.0);
    let total = config.train.eval_samples;
    let mut first = 0;
    while first < total {
        let size = EVAL_CHUNK.min(total - first);
        let batch = task.batch(config.seed, Split::Validation, first as u64, size);
        let (outputs, _) = model.forward(&inputs(&batch, &Device::Cpu)?)?;
        let outputs: Vec<f32> = outputs.detach().flatten_all()?.to_vec1()?;
        let eval = task.evaluate(&outputs, &batch);
        // Every sequence has the same number of steps and recalled symbols, so weighting
        // each chunk by its sequences gives the average over the whole set.
        loss += eval.loss * size as f64;
        metric += eval.metric * size as f64;
        first += size;
    }
    Ok(Evaluation {
        loss: loss / total as f64,
        metric: metric / total as f64,
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::sweep::Experiment;

    /// The single run of a small experiment `name` whose `base` is `run`.
    fn config(name: &str, run: &str) -> RunConfig {
        let dir = std::env::temp_dir().join(format!("rnnlab-train-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}.yaml"));
        std::fs::write(&file, format!("name: t\ndescription: t\nbase:\n{run}")).unwrap();
        let experiment = Experiment::load(Path::new(&file), &[]).unwrap();
        experiment.runs[0].config.clone()
    }

    const ADDING: &str = "  task: { kind: adding, seq_len: 10 }
  model: { cell: lstm, hidden: 16 }
  train: { lr: 0.01, steps: 300, eval_every: 100, eval_samples: 512 }
";

    /// The parameters of an outcome, bit for bit.
    fn weights(outcome: &Outcome) -> Vec<(String, Vec<u32>)> {
        outcome
            .params
            .iter()
            .map(|(name, var)| {
                let values: Vec<f32> = var.as_tensor().flatten_all().unwrap().to_vec1().unwrap();
                (
                    name.to_owned(),
                    values.iter().map(|v| v.to_bits()).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn resuming_from_a_saved_checkpoint_is_bit_identical_for_every_cell_and_optimiser() {
        let task = Task::new(rnnlab_tasks::TaskConfig::Adding { seq_len: 6 }).unwrap();
        let path = std::env::temp_dir().join(format!(
            "rnnlab-train-resume-{}.safetensors",
            std::process::id()
        ));
        for kind in rnnlab_cells::registry::CELLS {
            for optimizer in ["adam", "rmsprop", "sgd"] {
                let run = config(
                    "resume",
                    &format!(
                        "  task: {{ kind: adding, seq_len: 6 }}\n  model: {{ cell: {}, hidden: 5 }}\n  train: {{ optimizer: {optimizer}, lr: 0.01, steps: 13, batch_size: 4, eval_every: 4, eval_samples: 16, clip: {{ norm: 1.0 }} }}\n",
                        kind.name
                    ),
                );
                let whole = train(&run, None, None, &|_, _| ()).unwrap();
                // Stop after step 6 (a checkpoint every 3 steps), through the file format.
                let mut saved = None;
                let mut save = |c: &Checkpoint| {
                    if c.step == 6 {
                        c.save(&path, "owner")?;
                        saved = Some(());
                    }
                    Ok(())
                };
                let checkpoints = Checkpoints {
                    every: CheckpointEvery::Steps(3),
                    save: &mut save,
                };
                train(&run, None, Some(checkpoints), &|_, _| ()).unwrap();
                assert!(saved.is_some());
                let start = Checkpoint::load(&path, "owner", &task).unwrap();
                assert_eq!(start.step, 6);
                let resumed = train(&run, Some(start), None, &|_, _| ()).unwrap();
                let what = format!("{} {optimizer}", kind.name);
                assert_eq!(whole.metrics, resumed.metrics, "{what}");
                assert_eq!(whole.gradflow, resumed.gradflow, "{what}");
                assert_eq!(weights(&whole), weights(&resumed), "{what}");
                assert_eq!(whole.steps_to_solve, resumed.steps_to_solve, "{what}");
            }
        }
    }

    #[test]
    fn li2018_keeps_the_indrnn_u_within_its_bound() {
        // T = 6: the bound is 2^{1/6} = 1.122462. Adam at lr 0.5 moves the u of every
        // live unit by about 0.5 a step from U(0, 1.12), so in 5 steps those would leave
        // ±1.12; they end at ±1.122462 exactly (the f32 nearest), none beyond.
        let run = config(
            "bounded",
            "  task: { kind: adding, seq_len: 6 }\n  model: { cell: indrnn, hidden: 64, indrnn_init: li2018 }\n  train: { lr: 0.5, steps: 5, batch_size: 4, eval_every: 5, eval_samples: 8 }\n",
        );
        let outcome = train(&run, None, None, &|_, _| ()).unwrap();
        let u: Vec<f32> = outcome
            .params
            .get("weight_hh_l0")
            .unwrap()
            .as_tensor()
            .to_vec1()
            .unwrap();
        let bound = 2f64.powf(1.0 / 6.0) as f32;
        assert!((f64::from(bound) - 1.122_462).abs() < 1e-6);
        assert!(u.iter().all(|v| v.abs() <= bound), "{u:?}");
        let at_bound = u.iter().filter(|v| v.abs() == bound).count();
        assert!(at_bound >= 4, "only {at_bound} of 64 at the bound: {u:?}");
    }

    #[test]
    fn the_recurrent_lr_scale_reaches_only_the_recurrent_parameters() {
        // One Adam step moves every parameter by about lr·sign(g); with
        // recurrent_lr_scale 0.1 the expRNN's A moves a tenth as far and W_ih, b and the
        // head as far as without it (the gradients of the first step are the same), to
        // within the f32 spacing of weights of size π.
        let run = |scale: &str| {
            let config = config(
                "scaled",
                &format!(
                    "  task: {{ kind: adding, seq_len: 6 }}\n  model: {{ cell: exprnn, hidden: 4 }}\n  train: {{ lr: 0.01, steps: 1, batch_size: 4, eval_every: 1, eval_samples: 8{scale} }}\n"
                ),
            );
            let start = config
                .init
                .params(&config.model, config.seed, DType::F32, &Device::Cpu)
                .unwrap();
            let outcome = train(&config, None, None, &|_, _| ()).unwrap();
            let moved: Vec<(String, f32)> = outcome
                .params
                .iter()
                .map(|(name, var)| {
                    let before = start.get(name).unwrap().as_tensor();
                    let delta = (var.as_tensor() - before).unwrap().abs().unwrap();
                    let largest: f32 = delta
                        .flatten_all()
                        .unwrap()
                        .max(0)
                        .unwrap()
                        .to_scalar()
                        .unwrap();
                    (name.to_owned(), largest)
                })
                .collect();
            moved
        };
        let plain = run("");
        let scaled = run(", recurrent_lr_scale: 0.1");
        for ((name, full), (_, part)) in plain.iter().zip(&scaled) {
            let want = if name == "log_weight_hh_l0" {
                0.1 * full
            } else {
                *full
            };
            assert!(
                (part - want).abs() <= 1e-6,
                "{name}: moved {part}, expected {want}"
            );
            assert!(
                *full > 1e-3,
                "{name} did not move: the test would be vacuous"
            );
        }
    }

    #[test]
    fn lstm_learns_short_adding_and_reruns_bit_for_bit() {
        let run = config("learns", ADDING);
        let first = train(&run, None, None, &|_, _| ()).unwrap();
        assert_eq!(first.status, Status::Done);
        assert_eq!(first.steps, 300);
        // Untrained, the validation MSE is around the 1/6 baseline or worse; 300 Adam
        // steps on T = 10 bring it well below.
        let start = first
            .metrics
            .iter()
            .find(|m| m.split == "validation" && m.metric == "loss")
            .unwrap();
        assert!(
            first.last.loss < 0.05,
            "validation MSE {} (start {})",
            first.last.loss,
            start.value
        );
        assert!(first.last.loss < start.value / 3.0);
        let again = train(&run, None, None, &|_, _| ()).unwrap();
        assert_eq!(first.metrics, again.metrics, "same config, same numbers");
        // Gradient flow at the powers of two and the last step, over all 10 time steps.
        let flow_steps: Vec<usize> = first.gradflow.iter().map(|f| f.step).collect();
        assert_eq!(flow_steps, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300]);
        assert!(
            first
                .gradflow
                .iter()
                .all(|f| f.norms.len() == 10 && f.norms.iter().all(|n| n.is_finite()))
        );
    }

    #[test]
    fn a_diverging_run_stops_and_says_where() {
        let run = config(
            "diverges",
            &ADDING.replace("lr: 0.01", "optimizer: sgd, lr: 1.0e12, momentum: 0.0"),
        );
        let outcome = train(&run, None, None, &|_, _| ()).unwrap();
        let Status::Diverged { step } = outcome.status else {
            panic!("{:?}", outcome.status)
        };
        assert!(step < 300);
        assert_eq!(outcome.steps, step - 1);
        assert!(!outcome.metrics.last().unwrap().value.is_finite());
    }

    #[test]
    fn epochs_visit_every_sample_once_in_a_seeded_order() {
        let run = config(
            "epochs",
            &ADDING.replace("steps: 300", "epochs: 2, samples: 100, batch_size: 32"),
        );
        assert_eq!(run.train.total_steps(), 8);
        for epoch in 0..2 {
            let mut seen: Vec<u64> = (1..=4)
                .flat_map(|k| training_indices(&run, epoch * 4 + k))
                .collect();
            assert_eq!(seen.len(), 100);
            seen.sort_unstable();
            assert_eq!(seen, (0..100).collect::<Vec<_>>());
        }
        assert_ne!(
            training_indices(&run, 1),
            training_indices(&run, 5),
            "each epoch reshuffles"
        );
        assert_eq!(training_indices(&run, 1), training_indices(&run, 1));
    }
}
