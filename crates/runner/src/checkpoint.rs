//! Checkpoints: everything the rest of a run depends on, in one safetensors file, so that a
//! run killed mid-training resumes to the same numbers bit for bit as a run that was never
//! interrupted, and a run with a longer budget starts where a shorter one ended.
//!
//! What the rest of a run depends on: the parameters, the optimiser's state (its update
//! counter and per-parameter slots: Adam's moments, RMSprop's average, SGD's momentum),
//! the number of steps done (the data of step `k` and an epoch's permutation are pure
//! functions of the seed and `k`, so the step is the whole data position, and no other
//! random stream is drawn during training), and the run's record so far: every metric and
//! gradient-flow row, the last evaluation and the step that solved the task.
//!
//! The file holds f32 parameters and slots, f64 and i64 records, and metadata: the format,
//! the run it belongs to (its id, a hash of its resolved config and seed, and the rnnlab
//! version) and a checksum of everything else, so that a truncated or altered file, or one
//! from another run or version, is refused rather than used.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, bail, ensure};
use rnnlab_tasks::{Evaluation, Task};
use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::store::write_atomic;
use crate::train::{FlowRow, MetricRow};

/// The format written; a file of another format is refused.
const FORMAT: &str = "rnnlab-checkpoint-1";

/// The state of a run after `step` optimiser steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    /// Steps done (the next step to train is `step + 1`).
    pub step: usize,
    /// Every parameter by name, in name order: (name, shape, values).
    pub params: Vec<(String, Vec<usize>, Vec<f32>)>,
    /// The optimiser's update counter.
    pub optimizer_steps: i32,
    /// The optimiser's two slots of each parameter, in the order of `params`.
    pub slots: Vec<(Vec<f32>, Vec<f32>)>,
    /// Everything the run recorded so far.
    pub record: Record,
}

/// What a run has recorded up to a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Every metric row, in the order measured.
    pub metrics: Vec<MetricRow>,
    /// The first layer's gradient flow rows.
    pub gradflow: Vec<FlowRow>,
    /// The last validation evaluation.
    pub last: Evaluation,
    /// The first evaluated step that met the task's "solved" criterion.
    pub steps_to_solve: Option<usize>,
    /// Seconds spent in training steps (for samples/s; not part of the numbers).
    pub training_time: f64,
}

/// Who a checkpoint belongs to: the run id (a hash of the resolved config and the seed)
/// and the rnnlab version that wrote it.
pub fn owner(run_id: &str) -> String {
    format!("{run_id} rnnlab {}", env!("CARGO_PKG_VERSION"))
}

impl Checkpoint {
    /// Writes the checkpoint of run `owner` to `path`, whole or not at all.
    pub fn save(&self, path: &Path, owner: &str) -> anyhow::Result<()> {
        let keys = metric_keys(&self.record.metrics);
        let tensors = self.tensors(&keys);
        let mut metadata = HashMap::from([
            ("format".to_owned(), FORMAT.to_owned()),
            ("owner".to_owned(), owner.to_owned()),
            ("metric_keys".to_owned(), keys),
        ]);
        metadata.insert("checksum".to_owned(), checksum(&tensors, &metadata));
        let views = tensors
            .iter()
            .map(|(name, (dtype, shape, bytes))| {
                Ok((name.clone(), TensorView::new(*dtype, shape.clone(), bytes)?))
            })
            .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
        let bytes = safetensors::serialize(views, Some(metadata))?;
        write_atomic(path, |temp| {
            std::fs::write(temp, &bytes).with_context(|| format!("writing {}", temp.display()))
        })
    }

    /// Reads the checkpoint at `path`, which must belong to `owner`; `task` names the
    /// metric. An error says why the file cannot be used.
    pub fn load(path: &Path, owner: &str, task: &Task) -> anyhow::Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let file = SafeTensors::deserialize(&bytes).context("not a readable safetensors file")?;
        let (_, header) = SafeTensors::read_metadata(&bytes)?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| {
            metadata
                .get(key)
                .with_context(|| format!("no `{key}` in its metadata"))
        };
        let format = field("format")?;
        ensure!(
            format == FORMAT,
            "its format is {format:?}, this rnnlab reads {FORMAT:?}"
        );
        let written_by = field("owner")?;
        ensure!(
            written_by == owner,
            "it belongs to {written_by:?}, not to this run ({owner:?})"
        );
        let mut tensors = Tensors::new();
        for name in file.names() {
            let view = file.tensor(name)?;
            tensors.insert(
                name.to_owned(),
                (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
            );
        }
        let mut unsigned = metadata.clone();
        let expected = unsigned.remove("checksum").context("no checksum")?;
        ensure!(
            checksum(&tensors, &unsigned) == expected,
            "its checksum does not match its contents (truncated or altered)"
        );
        Self::from_tensors(&tensors, field("metric_keys")?, task)
    }

    /// The tensors; metric rows name their key by its index in `metric_keys`.
    fn tensors(&self, metric_keys: &str) -> Tensors {
        let mut out = Tensors::new();
        for ((name, shape, values), (first, second)) in self.params.iter().zip(&self.slots) {
            out.insert(format!("param.{name}"), f32s(shape, values));
            out.insert(format!("slot1.{name}"), f32s(shape, first));
            out.insert(format!("slot2.{name}"), f32s(shape, second));
        }
        let r = &self.record;
        let scalars = [
            self.step as f64,
            f64::from(self.optimizer_steps),
            r.steps_to_solve.map_or(-1.0, |s| s as f64),
            r.last.loss,
            r.last.metric,
            r.training_time,
        ];
        out.insert("state".into(), f64s(&[scalars.len()], &scalars));
        let keys: Vec<&str> = metric_keys.split(',').collect();
        let steps: Vec<i64> = r.metrics.iter().map(|m| m.step as i64).collect();
        let key_index: Vec<i64> = r
            .metrics
            .iter()
            .map(|m| {
                let key = format!("{}/{}", m.split, m.metric);
                keys.iter().position(|k| *k == key).expect("listed") as i64
            })
            .collect();
        let values: Vec<f64> = r.metrics.iter().map(|m| m.value).collect();
        let n = r.metrics.len();
        out.insert("metrics.step".into(), i64s(&[n], &steps));
        out.insert("metrics.key".into(), i64s(&[n], &key_index));
        out.insert("metrics.value".into(), f64s(&[n], &values));
        let width = r.gradflow.first().map_or(0, |row| row.norms.len());
        let flow_steps: Vec<i64> = r.gradflow.iter().map(|row| row.step as i64).collect();
        let norms: Vec<f64> = r
            .gradflow
            .iter()
            .flat_map(|row| row.norms.clone())
            .collect();
        let rows = r.gradflow.len();
        out.insert("gradflow.step".into(), i64s(&[rows], &flow_steps));
        out.insert("gradflow.norms".into(), f64s(&[rows, width], &norms));
        out
    }

    fn from_tensors(tensors: &Tensors, metric_keys: &str, task: &Task) -> anyhow::Result<Self> {
        let state = read_f64(tensors, "state")?;
        ensure!(
            state.len() == 6,
            "`state` has {} values, not 6",
            state.len()
        );
        let mut params = Vec::new();
        let mut slots = Vec::new();
        for name in tensors.keys().filter_map(|k| k.strip_prefix("param.")) {
            let (_, shape, _) = &tensors[&format!("param.{name}")];
            params.push((
                name.to_owned(),
                shape.clone(),
                read_f32(tensors, &format!("param.{name}"))?,
            ));
            slots.push((
                read_f32(tensors, &format!("slot1.{name}"))?,
                read_f32(tensors, &format!("slot2.{name}"))?,
            ));
        }
        let keys: Vec<(&'static str, &'static str)> = metric_keys
            .split(',')
            .filter(|k| !k.is_empty())
            .map(|key| known_key(key, task))
            .collect::<anyhow::Result<_>>()?;
        let steps = read_i64(tensors, "metrics.step")?;
        let key_index = read_i64(tensors, "metrics.key")?;
        let values = read_f64(tensors, "metrics.value")?;
        ensure!(
            steps.len() == values.len() && key_index.len() == values.len(),
            "metric columns of different lengths"
        );
        let metrics = steps
            .iter()
            .zip(&key_index)
            .zip(&values)
            .map(|((&step, &key), &value)| {
                let (split, metric) = *keys
                    .get(usize::try_from(key)?)
                    .context("a metric key out of range")?;
                Ok(MetricRow {
                    step: usize::try_from(step)?,
                    split,
                    metric,
                    value,
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let flow_steps = read_i64(tensors, "gradflow.step")?;
        let norms = read_f64(tensors, "gradflow.norms")?;
        let width = if flow_steps.is_empty() {
            0
        } else {
            norms.len() / flow_steps.len()
        };
        let gradflow = flow_steps
            .iter()
            .enumerate()
            .map(|(k, &step)| {
                Ok(FlowRow {
                    step: usize::try_from(step)?,
                    norms: norms[k * width..(k + 1) * width].to_vec(),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        let whole = |v: f64, what: &str| -> anyhow::Result<usize> {
            ensure!(v >= 0.0 && v.fract() == 0.0, "{what} is {v}");
            Ok(v as usize)
        };
        Ok(Self {
            step: whole(state[0], "the step")?,
            params,
            optimizer_steps: whole(state[1], "the optimiser's counter")? as i32,
            slots,
            record: Record {
                metrics,
                gradflow,
                last: Evaluation {
                    loss: state[3],
                    metric: state[4],
                },
                steps_to_solve: (state[2] >= 0.0)
                    .then(|| whole(state[2], "the solving step"))
                    .transpose()?,
                training_time: state[5],
            },
        })
    }
}

/// The step a checkpoint file holds, without checking whose it is (for `rnnlab status`).
pub fn step_of(path: &Path) -> Option<usize> {
    let bytes = std::fs::read(path).ok()?;
    let file = SafeTensors::deserialize(&bytes).ok()?;
    let state = file.tensor("state").ok()?;
    let first: [u8; 8] = state.data().get(..8)?.try_into().ok()?;
    Some(f64::from_le_bytes(first) as usize)
}

/// Tensors by name: dtype, shape and little-endian bytes. Sorted, so the checksum and
/// the file are the same for the same state.
type Tensors = std::collections::BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>;

/// `values` as a tensor of `dtype`, each value as the `N` little-endian bytes `to` gives.
fn encode<T: Copy, const N: usize>(
    dtype: Dtype,
    shape: &[usize],
    values: &[T],
    to: fn(T) -> [u8; N],
) -> (Dtype, Vec<usize>, Vec<u8>) {
    let bytes = values.iter().flat_map(|&v| to(v)).collect();
    (dtype, shape.to_vec(), bytes)
}

fn f32s(shape: &[usize], values: &[f32]) -> (Dtype, Vec<usize>, Vec<u8>) {
    encode(Dtype::F32, shape, values, f32::to_le_bytes)
}

fn f64s(shape: &[usize], values: &[f64]) -> (Dtype, Vec<usize>, Vec<u8>) {
    encode(Dtype::F64, shape, values, f64::to_le_bytes)
}

fn i64s(shape: &[usize], values: &[i64]) -> (Dtype, Vec<usize>, Vec<u8>) {
    encode(Dtype::I64, shape, values, i64::to_le_bytes)
}

/// The values of tensor `name`, which must be of `dtype`, decoded by `from`.
fn decode<T, const N: usize>(
    tensors: &Tensors,
    name: &str,
    dtype: Dtype,
    from: fn([u8; N]) -> T,
) -> anyhow::Result<Vec<T>> {
    let (found, _, bytes) = tensors.get(name).with_context(|| format!("no `{name}`"))?;
    ensure!(*found == dtype, "`{name}` is {found:?}, not {dtype:?}");
    Ok(bytes
        .chunks_exact(N)
        .map(|b| from(b.try_into().expect("N bytes")))
        .collect())
}

fn read_f32(tensors: &Tensors, name: &str) -> anyhow::Result<Vec<f32>> {
    decode(tensors, name, Dtype::F32, f32::from_le_bytes)
}

fn read_f64(tensors: &Tensors, name: &str) -> anyhow::Result<Vec<f64>> {
    decode(tensors, name, Dtype::F64, f64::from_le_bytes)
}

fn read_i64(tensors: &Tensors, name: &str) -> anyhow::Result<Vec<i64>> {
    decode(tensors, name, Dtype::I64, i64::from_le_bytes)
}

/// The distinct `split/metric` keys of `metrics`, in order of appearance, joined by ','.
fn metric_keys(metrics: &[MetricRow]) -> String {
    let mut keys: Vec<String> = Vec::new();
    for m in metrics {
        let key = format!("{}/{}", m.split, m.metric);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys.join(",")
}

/// A `split/metric` key as the static names a [`MetricRow`] holds.
fn known_key(key: &str, task: &Task) -> anyhow::Result<(&'static str, &'static str)> {
    let (split, metric) = key
        .split_once('/')
        .with_context(|| format!("metric key {key:?}"))?;
    let split = match split {
        "train" => "train",
        "validation" => "validation",
        other => bail!("unknown split {other:?}"),
    };
    let metric = match metric {
        "loss" => "loss",
        "grad_norm" => "grad_norm",
        name if name == task.metric_name() => task.metric_name(),
        other => bail!("unknown metric {other:?} for this task"),
    };
    Ok((split, metric))
}

/// 64-bit FNV-1a over every tensor (name, dtype, shape, bytes) and metadata entry, in
/// sorted order, as 16 hex digits: enough to notice truncation and flipped bytes.
fn checksum(tensors: &Tensors, metadata: &HashMap<String, String>) -> String {
    let mut hash = 0xcbf2_9ce4_8422_2325_u64;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    };
    for (name, (dtype, shape, bytes)) in tensors {
        feed(name.as_bytes());
        feed(format!("{dtype:?}{shape:?}").as_bytes());
        feed(bytes);
    }
    let mut entries: Vec<_> = metadata.iter().collect();
    entries.sort();
    for (key, value) in entries {
        feed(key.as_bytes());
        feed(value.as_bytes());
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use rnnlab_tasks::TaskConfig;

    use super::*;

    fn example() -> Checkpoint {
        Checkpoint {
            step: 7,
            params: vec![
                ("a".into(), vec![2], vec![1.5, -0.25]),
                ("b".into(), vec![1, 1], vec![f32::MIN_POSITIVE]),
            ],
            optimizer_steps: 7,
            slots: vec![(vec![0.1, 0.2], vec![0.3, 0.4]), (vec![0.5], vec![0.6])],
            record: Record {
                metrics: vec![
                    MetricRow {
                        step: 0,
                        split: "validation",
                        metric: "accuracy_0.04",
                        value: 0.1,
                    },
                    MetricRow {
                        step: 1,
                        split: "train",
                        metric: "loss",
                        value: f64::MIN_POSITIVE,
                    },
                ],
                gradflow: vec![FlowRow {
                    step: 1,
                    norms: vec![1e-300, 2.0, 3.0],
                }],
                last: Evaluation {
                    loss: 0.125,
                    metric: 1.0 / 3.0,
                },
                steps_to_solve: Some(5),
                training_time: 1.25,
            },
        }
    }

    fn task() -> Task {
        Task::new(TaskConfig::Adding { seq_len: 10 }).unwrap()
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("rnnlab-ckpt-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn round_trip_is_exact() {
        let path = dir("round").join("c.safetensors");
        example().save(&path, "run-a").unwrap();
        assert_eq!(
            Checkpoint::load(&path, "run-a", &task()).unwrap(),
            example()
        );
    }

    #[test]
    fn another_owner_truncation_and_flipped_bytes_are_refused() {
        let path = dir("refuse").join("c.safetensors");
        example().save(&path, "run-a").unwrap();
        let err = Checkpoint::load(&path, "run-b", &task()).unwrap_err();
        assert!(format!("{err:#}").contains("belongs to"), "{err:#}");

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        assert!(Checkpoint::load(&path, "run-a", &task()).is_err());

        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x40;
        std::fs::write(&path, &flipped).unwrap();
        let err = Checkpoint::load(&path, "run-a", &task()).unwrap_err();
        assert!(format!("{err:#}").contains("checksum"), "{err:#}");
    }
}
