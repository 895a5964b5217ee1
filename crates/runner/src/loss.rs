//! A task batch as tensors, and the task's training loss on the model's outputs.

use candle_core::{D, DType, Device, Result, Tensor};
use candle_nn::ops::log_softmax;
use rnnlab_tasks::{Batch, Loss, Targets, Task};

/// The batch's inputs `(B, T', I)`.
pub fn inputs(batch: &Batch, device: &Device) -> Result<Tensor> {
    Tensor::from_slice(
        &batch.inputs,
        (batch.batch_size, batch.seq_len, batch.input_size),
        device,
    )
}

/// The task's loss on raw model `outputs`, differentiable, averaged as
/// [`Task::evaluate`] averages it: MSE on `(B, 1)` values; softmax cross-entropy on
/// `(B, C)` logits or on `(B, T', C)` logits over every step; sigmoid binary
/// cross-entropy on `(B, 1)` logits, as `softplus(z) − y·z` so it stays finite.
pub fn task_loss(task: &Task, outputs: &Tensor, batch: &Batch) -> Result<Tensor> {
    let device = outputs.device();
    match (&batch.targets, task.loss()) {
        (Targets::Values(values), Loss::Mse) => {
            let targets =
                Tensor::from_slice(values, (values.len(), 1), device)?.to_dtype(outputs.dtype())?;
            (outputs - targets)?.sqr()?.mean_all()
        }
        (Targets::Classes(classes), Loss::BinaryCrossEntropy) => {
            let y: Vec<f32> = classes.iter().map(|&c| c as f32).collect();
            let y = Tensor::from_slice(&y, (y.len(), 1), device)?.to_dtype(outputs.dtype())?;
            let z = outputs;
            let softplus = (z.relu()? + ((z.abs()?.neg()?.exp()? + 1.0)?.log()?))?;
            (softplus - (z * y)?)?.mean_all()
        }
        (Targets::Classes(classes) | Targets::StepClasses(classes), Loss::CrossEntropy) => {
            let classes_per_row = outputs.dim(D::Minus1)?;
            let logits = outputs.reshape(((), classes_per_row))?;
            let targets =
                Tensor::from_slice(classes, classes.len(), device)?.to_dtype(DType::U32)?;
            let log_p = log_softmax(&logits, D::Minus1)?;
            log_p.gather(&targets.unsqueeze(1)?, 1)?.neg()?.mean_all()
        }
        (targets, loss) => candle_core::bail!("{loss:?} does not go with {targets:?}"),
    }
}

#[cfg(test)]
mod tests {
    use rnnlab_tasks::{Split, TaskConfig};

    use super::*;

    /// Deterministic outputs in (−3, 3) of the task's output shape for `batch`.
    fn outputs(task: &Task, batch: &Batch) -> Vec<f32> {
        let per_sample = task.output_size()
            * match task.kind() {
                rnnlab_tasks::TaskKind::PerStepClassification => batch.seq_len,
                _ => 1,
            };
        (0..batch.batch_size * per_sample)
            .map(|k| 3.0 * ((k as f32) * 0.77).sin())
            .collect()
    }

    #[test]
    fn the_training_loss_equals_the_tasks_own_evaluation() {
        let configs = [
            TaskConfig::Adding { seq_len: 20 },
            TaskConfig::Copy { seq_len: 5 },
            TaskConfig::TemporalOrder {
                seq_len: 30,
                classes: 4,
            },
            TaskConfig::TemporalOrder {
                seq_len: 30,
                classes: 2,
            },
        ];
        for config in configs {
            let task = Task::new(config).unwrap();
            let batch = task.batch(3, Split::Train, 0, 8);
            let out = outputs(&task, &batch);
            let shape: Vec<usize> = match task.kind() {
                rnnlab_tasks::TaskKind::PerStepClassification => {
                    vec![8, batch.seq_len, task.output_size()]
                }
                _ => vec![8, task.output_size()],
            };
            let tensor = Tensor::from_slice(&out, shape, &Device::Cpu).unwrap();
            let loss: f32 = task_loss(&task, &tensor, &batch)
                .unwrap()
                .to_scalar()
                .unwrap();
            let want = task.evaluate(&out, &batch).loss;
            assert!(
                (f64::from(loss) - want).abs() < 1e-5 * (1.0 + want),
                "{config:?}: {loss} vs {want}"
            );
        }
    }

    #[test]
    fn binary_cross_entropy_stays_finite_for_large_logits() {
        let task = Task::new(TaskConfig::TemporalOrder {
            seq_len: 30,
            classes: 2,
        })
        .unwrap();
        let batch = task.batch(0, Split::Train, 0, 2);
        let z = Tensor::new(&[[200f32], [-200.0]], &Device::Cpu).unwrap();
        let loss: f32 = task_loss(&task, &z, &batch).unwrap().to_scalar().unwrap();
        assert!(loss.is_finite());
        assert!((f64::from(loss) - task.evaluate(&[200.0, -200.0], &batch).loss).abs() < 1e-3);
    }
}
