//! An experiment's results as plots and reports see them: every complete run with its
//! resolved config, summary, validation curve and gradient flow, and the roles of the
//! keys the experiment varies.
//!
//! A run's **cell** is what its `model.cell`, `model.gru_reset`, `model.scan`,
//! `model.exprnn_init` and `model.ablation.*` make it (`lstm`, `gru (reset before)`, `lstm (no forget gate)`, ...); each cell has one
//! colour in every figure. Every other key that differs between runs is either
//! - a **panel** key, when it is a task key (`task.seq_len`: a setting, even where some
//!   cells skip some values) or crossed with the cells (every cell was run at every
//!   value): figures get one panel per value and the report compares the cells within
//!   each panel;
//! - part of the **cell**, when each cell has a single value of it (the IRNN's SGD next
//!   to the LSTM's Adam): it describes the arm and splits nothing; or
//! - a **series** key, when only some cells vary it (`model.forget_bias` of the LSTM
//!   next to a GRU): it splits that cell into several series (`lstm forget_bias=0`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::Context;
use polars::prelude::DataFrame;
use rnnlab_tasks::{Split, Task};
use serde_yaml::{Mapping, Value};

use crate::config::RawModel;
use crate::store::{ExperimentDir, Summary, Table, Tables, read_config, read_plan, read_summary};
use crate::sweep::scalar;
use rnnlab_cells::registry;

/// Everything plots and reports need from one experiment folder.
#[derive(Debug, Clone)]
pub struct Results {
    /// The experiment folder.
    pub dir: ExperimentDir,
    /// The experiment's name (the folder's name).
    pub name: String,
    /// `manifest.yaml` (version, commit, CPU, threads, start, description), if present.
    pub manifest: Mapping,
    /// Runs in the plan, complete or not.
    pub planned: usize,
    /// The complete runs, in plan order.
    pub runs: Vec<RunResult>,
    /// Runs of the plan that failed and are not complete: id and the error's first line
    /// (from `runs/<id>/failed.yaml`).
    pub failed: Vec<(String, String)>,
    /// The keys that differ between complete runs (the seed aside), in plan order.
    pub keys: Vec<Key>,
}

/// One complete run.
#[derive(Debug, Clone)]
pub struct RunResult {
    /// The run id.
    pub id: String,
    /// Seed of weights and data.
    pub seed: u64,
    /// The validated task (for its baseline and metric).
    pub task: Task,
    /// The cell's label (see the module docs).
    pub cell: String,
    /// The series label: the cell plus the series keys that vary within that cell
    /// (`gru hidden=74`).
    pub series: String,
    /// Display value of every key in [`Results::keys`] for this run.
    pub values: BTreeMap<String, String>,
    /// `summary.yaml`.
    pub summary: Summary,
    /// Validation evaluations: (step, loss, metric).
    pub curve: Vec<(usize, f64, f64)>,
    /// Gradient flow: (step, g_t for t = 0..T), first layer.
    pub gradflow: Vec<(usize, Vec<f64>)>,
    /// The global gradient norm before clipping at every training step: (step, norm).
    pub grad_norm: Vec<(usize, f64)>,
}

/// How a varying key is shown (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Part of what the cell is.
    Cell,
    /// Crossed with the cells: one panel per value.
    Panel,
    /// Varied for some cells only: splits those cells into series.
    Series,
}

/// A key that differs between runs.
#[derive(Debug, Clone)]
pub struct Key {
    /// The dotted key (`task.seq_len`).
    pub name: String,
    /// Its display values, numerically sorted when they are all numbers.
    pub values: Vec<String>,
    /// Its role.
    pub role: Role,
}

impl Key {
    /// Whether every value is a number (so the key can be an x axis).
    pub fn numeric(&self) -> bool {
        self.values.iter().all(|v| v.parse::<f64>().is_ok())
    }
}

/// A short, readable name for a key: its last segment, `T` for the sequence length.
pub fn short_key(key: &str) -> &str {
    match key {
        "task.seq_len" => "T",
        "task.kind" => "task",
        _ => key.rsplit('.').next().unwrap_or(key),
    }
}

/// A key's value in words, as figures and reports show it: `T = 100`, `64 units`,
/// `clipping: norm 1`, `temporal order`; numbers without a trailing `.0`. Keys without
/// words of their own read `name = value`.
pub fn key_value(key: &str, value: &str) -> String {
    let number = value
        .parse::<f64>()
        .map_or_else(|_| value.to_owned(), crate::plot::pretty);
    match key {
        "task.kind" => value.replace('_', " "),
        "task.seq_len" => format!("T = {number}"),
        "task.classes" => format!("{number} classes"),
        "model.hidden" => match value.strip_prefix('[').and_then(|v| v.strip_suffix(']')) {
            // A stack: `[64, 64]` → `2 layers of 64 units`, `[128, 64]` → `128 + 64 units`.
            Some(list) => {
                let widths: Vec<&str> = list.split(", ").collect();
                if widths.iter().all(|w| *w == widths[0]) {
                    format!("{} layers of {} units", widths.len(), widths[0])
                } else {
                    format!("{} units", widths.join(" + "))
                }
            }
            None => format!("{number} units"),
        },
        "model.layers" => format!("{number} layers"),
        "model.forget_bias" => format!("forget bias {number}"),
        "model.recurrent_gain" => format!("recurrent gain {number}"),
        "model.init" => format!("{value} init"),
        "train.optimizer" => match value {
            "sgd" => "SGD".into(),
            "adam" => "Adam".into(),
            "rmsprop" => "RMSprop".into(),
            other => other.to_owned(),
        },
        "train.lr" => format!("lr {number}"),
        "train.batch_size" => format!("batch {number}"),
        "train.steps" => format!("{number} steps"),
        "train.epochs" if number == "1" => "1 epoch".into(),
        "train.epochs" => format!("{number} epochs"),
        "train.samples" => format!("{number} sequences"),
        "train.clip" if value == "none" => "no clipping".into(),
        "train.clip" => {
            // `norm 1.0` → `clipping: norm 1`
            let words: Vec<String> = value
                .split(' ')
                .map(|w| {
                    w.parse::<f64>()
                        .map_or_else(|_| w.to_owned(), crate::plot::pretty)
                })
                .collect();
            format!("clipping: {}", words.join(" "))
        }
        // An ablation is its name when on (`no input gate`, `coupled gates`).
        k if k.starts_with("model.ablation.") => {
            let words = short_key(key).replace('_', " ");
            if value == "true" {
                words
            } else {
                format!("{words}: {value}")
            }
        }
        _ => format!("{} = {number}", short_key(key).replace('_', " ")),
    }
}

impl Results {
    /// [`Results::load`] for a folder the user named: failing to read it is a usage
    /// error (exit code 2) that says the folder is not an experiment's.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Self::load(dir).map_err(|err| {
            crate::error::UsageError(format!(
                "{}: not an experiment's results folder ({err:#})",
                dir.display()
            ))
            .into()
        })
    }

    /// Loads the complete runs of `dir` (an experiment folder written by `rnnlab run`).
    pub fn load(dir: &Path) -> anyhow::Result<Self> {
        let layout = ExperimentDir::at(dir);
        let ids = read_plan(&layout)?;
        let manifest = match std::fs::read_to_string(layout.manifest()) {
            Ok(text) => serde_yaml::from_str(&text)
                .with_context(|| format!("reading {}", layout.manifest().display()))?,
            Err(_) => Mapping::new(),
        };
        let name = dir
            .file_name()
            .map_or_else(|| "experiment".into(), |n| n.to_string_lossy().into_owned());
        let mut loaded = Vec::new();
        let mut failed = Vec::new();
        let mut tables = Tables::new(&layout);
        for id in &ids {
            let folder = layout.run(id);
            let Some(summary) = read_summary(&folder)? else {
                if let Ok(text) = std::fs::read_to_string(folder.failed()) {
                    let record: Value = serde_yaml::from_str(&text).unwrap_or_default();
                    let error = record["error"].as_str().unwrap_or("unknown error");
                    failed.push((id.clone(), error.lines().next().unwrap_or("").to_owned()));
                }
                continue;
            };
            let saved = read_config(&folder)?;
            let config = saved
                .run
                .validate(saved.seed)
                .map_err(|err| anyhow::anyhow!("{}: {err}", folder.config().display()))?;
            let resolved = saved.run.full_value();
            let metrics = tables.rows(id, Table::Metrics)?;
            let run = RunResult {
                id: id.clone(),
                seed: saved.seed,
                task: config.task,
                cell: cell_label(&saved.run.model, saved.run.task.seq_len),
                series: String::new(),
                values: BTreeMap::new(),
                summary,
                curve: read_curve(&metrics)?,
                grad_norm: read_grad_norm(&metrics)?,
                gradflow: read_gradflow(&tables.rows(id, Table::Gradflow)?)?,
            };
            loaded.push((run, saved.swept, resolved));
        }

        // Every swept key, in plan order, with each run's resolved value.
        let mut names: Vec<String> = Vec::new();
        for (_, swept, _) in &loaded {
            for key in swept.keys().filter_map(Value::as_str) {
                if !names.iter().any(|n| n == key) {
                    names.push(key.to_owned());
                }
            }
        }
        let mut keys = Vec::new();
        for name in names {
            let values: Vec<String> = loaded
                .iter()
                .map(|(_, _, resolved)| display(lookup(resolved, &name)))
                .collect();
            let distinct: BTreeSet<&String> = values.iter().collect();
            if distinct.len() < 2 {
                continue;
            }
            let mut ordered: Vec<String> = Vec::new();
            for v in &values {
                if !ordered.contains(v) {
                    ordered.push(v.clone());
                }
            }
            if ordered.iter().all(|v| v.parse::<f64>().is_ok()) {
                ordered.sort_by(|a, b| a.parse::<f64>().unwrap().total_cmp(&b.parse().unwrap()));
            }
            for ((run, _, _), value) in loaded.iter_mut().zip(values) {
                run.values.insert(name.clone(), value);
            }
            let role = if name == "model.cell"
                || name == "model.gru_reset"
                || name == "model.scan"
                || name == "model.exprnn_init"
                || name == "model.indrnn_init"
                || name.starts_with("model.ablation")
            {
                Role::Cell
            } else {
                Role::Panel
            };
            keys.push(Key {
                name,
                values: ordered,
                role,
            });
        }
        let mut runs: Vec<RunResult> = loaded.into_iter().map(|(run, _, _)| run).collect();
        // A task key is a setting: a panel per value, even where some cells skip some
        // values (an expensive cell run only at the longest T). Any other key is part of
        // the arm when each cell has one value of it (the IRNN's SGD beside the LSTM's
        // Adam), is crossed with the cells when every cell took every value, and
        // otherwise splits the cells it varies within into series.
        for key in keys
            .iter_mut()
            .filter(|k| k.role == Role::Panel && !k.name.starts_with("task."))
        {
            let mut per_cell: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
            for run in &runs {
                per_cell
                    .entry(run.cell.as_str())
                    .or_default()
                    .insert(run.values[&key.name].as_str());
            }
            if per_cell.values().all(|seen| seen.len() == 1) {
                key.role = Role::Cell;
            } else if per_cell.values().any(|seen| seen.len() != key.values.len()) {
                key.role = Role::Series;
            }
        }
        let labels: Vec<String> = runs
            .iter()
            .map(|run| series_label(&runs, &keys, run))
            .collect();
        for (run, label) in runs.iter_mut().zip(labels) {
            run.series = label;
        }
        Ok(Self {
            dir: layout,
            name,
            manifest,
            planned: ids.len(),
            runs,
            failed,
            keys,
        })
    }

    /// The keys with `role`.
    pub fn keys_with(&self, role: Role) -> impl Iterator<Item = &Key> {
        self.keys.iter().filter(move |k| k.role == role)
    }

    /// The panel key called `name`, if the experiment crosses it with the cells.
    pub fn panel_key(&self, name: &str) -> Option<&Key> {
        self.keys_with(Role::Panel).find(|k| k.name == name)
    }

    /// The panel key called `name` if it also varies within a panel: some setting of the
    /// other panel keys has two or more of its values (T swept per task, not one T per
    /// task), so that a figure against it has more than one x.
    pub fn axis_key(&self, name: &str) -> Option<&Key> {
        let key = self.panel_key(name)?;
        let others: Vec<&str> = self
            .keys_with(Role::Panel)
            .filter(|k| k.name != name)
            .map(|k| k.name.as_str())
            .collect();
        let mut seen: BTreeMap<Vec<&str>, BTreeSet<&str>> = BTreeMap::new();
        for run in &self.runs {
            let panel = others
                .iter()
                .map(|k| run.values.get(*k).map_or("", String::as_str))
                .collect();
            let x = run.values.get(name).map_or("", String::as_str);
            seen.entry(panel).or_default().insert(x);
        }
        seen.values().any(|xs| xs.len() > 1).then_some(key)
    }

    /// The runs whose `key` is one of `values` (the only values left): one part of a
    /// figure too big for a page.
    pub fn only(&self, key: &str, values: &[String]) -> Self {
        let mut part = self.clone();
        part.runs
            .retain(|r| r.values.get(key).is_some_and(|v| values.contains(v)));
        for k in part.keys.iter_mut().filter(|k| k.name == key) {
            k.values.retain(|v| values.contains(v));
        }
        part
    }

    /// The experiment's question, from the manifest.
    pub fn description(&self) -> Option<&str> {
        self.manifest.get("description").and_then(Value::as_str)
    }

    /// Every series, in a stable order: by cell colour, then by the order runs appear.
    pub fn series(&self) -> Vec<Series> {
        let mut series: Vec<Series> = Vec::new();
        for run in &self.runs {
            if !series.iter().any(|s| s.label == run.series) {
                series.push(Series {
                    label: run.series.clone(),
                    cell: run.cell.clone(),
                    variant: 0,
                });
            }
        }
        series.sort_by_key(|s| cell_rank(&s.cell));
        let mut count: BTreeMap<String, usize> = BTreeMap::new();
        for s in &mut series {
            let n = count.entry(s.cell.clone()).or_default();
            s.variant = *n;
            *n += 1;
        }
        series
    }

    /// Groups the runs by panel (a tuple of `(key, value)` over `panel_keys`), in the
    /// order of the keys' values.
    pub fn panels<'a>(&'a self, panel_keys: &[&Key]) -> Vec<Panel<'a>> {
        // Keyed by each panel key's value index, so the map iterates in value order.
        let mut panels: BTreeMap<Vec<usize>, Panel<'a>> = BTreeMap::new();
        for run in &self.runs {
            let coord: Vec<usize> = panel_keys
                .iter()
                .map(|k| {
                    k.values
                        .iter()
                        .position(|v| *v == run.values[&k.name])
                        .unwrap_or(0)
                })
                .collect();
            panels
                .entry(coord)
                .or_insert_with(|| Panel {
                    values: panel_keys
                        .iter()
                        .map(|k| (k.name.clone(), run.values[&k.name].clone()))
                        .collect(),
                    runs: Vec::new(),
                })
                .runs
                .push(run);
        }
        panels.into_values().collect()
    }
}

/// The series label of `run` among `runs`: its cell's display name, plus the series
/// keys that vary within that cell (`GRU, 74 units`).
fn series_label(runs: &[RunResult], keys: &[Key], run: &RunResult) -> String {
    let mut label = registry::display_label(&run.cell);
    for key in keys.iter().filter(|k| k.role == Role::Series) {
        let varies = runs
            .iter()
            .filter(|r| r.cell == run.cell)
            .any(|r| r.values[&key.name] != run.values[&key.name]);
        if varies {
            label.push_str(", ");
            label.push_str(&key_value(&key.name, &run.values[&key.name]));
        }
    }
    label
}

/// One line of a figure: a cell, or one setting of a cell's series keys.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// What the legend says.
    pub label: String,
    /// The cell (picks the colour).
    pub cell: String,
    /// 0 for the cell's first series, 1 for its second, ... (picks the dash).
    pub variant: usize,
}

/// The runs that share one value of every panel key.
#[derive(Debug)]
pub struct Panel<'a> {
    /// `(key, value)` of each panel key.
    pub values: Vec<(String, String)>,
    /// The runs, in plan order.
    pub runs: Vec<&'a RunResult>,
}

impl Panel<'_> {
    /// `adding, T=100` (or the experiment's name when there are no panel keys).
    pub fn title(&self) -> String {
        self.values
            .iter()
            .map(|(k, v)| key_value(k, v))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The panel's task (the first run's; panels of one task share it).
    pub fn task(&self) -> Task {
        self.runs[0].task
    }
}

/// The cell label of a model config on sequences of `seq_len` steps (see the module
/// docs): the registry's label for the cell and its options, or the name as written if
/// they do not validate.
pub fn cell_label(model: &RawModel, seq_len: usize) -> String {
    model
        .cell_config(seq_len)
        .map_or_else(|_| model.cell.as_str().to_owned(), |cell| cell.label())
}

/// The series order of a cell label: its place in the registry's labels, or a stable
/// slot after the known ones.
pub fn cell_rank(cell: &str) -> usize {
    registry::label_rank(cell)
        .unwrap_or_else(|| registry::label_colors().count() + label_hash(cell) % 8)
}

/// A stable hash of a label (the same on every machine and run).
pub fn label_hash(cell: &str) -> usize {
    cell.bytes()
        .fold(0usize, |h, b| h.wrapping_mul(31) + b as usize)
}

/// The value at a dotted path of a resolved config.
fn lookup<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(value, |v, part| v.get(part))
}

/// How a config value is shown: `{}` clip as `none`, `{norm: 1.0}` as `norm 1`.
fn display(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "none".into(),
        Some(Value::Mapping(map)) => {
            let set: Vec<String> = map
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} {}", scalar(k), scalar(v)))
                .collect();
            if set.is_empty() {
                "none".into()
            } else {
                set.join(" ")
            }
        }
        Some(v) => scalar(v),
    }
}

/// Validation (step, loss, metric) from a run's `metrics` rows.
fn read_curve(frame: &DataFrame) -> anyhow::Result<Vec<(usize, f64, f64)>> {
    let steps = frame.column("step")?.u64()?;
    let splits = frame.column("split")?.str()?;
    let metrics = frame.column("metric")?.str()?;
    let values = frame.column("value")?.f64()?;
    let mut by_step: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    for i in 0..frame.height() {
        if splits.get(i) != Some("validation") {
            continue;
        }
        let (Some(step), Some(metric), Some(value)) = (steps.get(i), metrics.get(i), values.get(i))
        else {
            continue;
        };
        let slot = by_step.entry(step as usize).or_insert((f64::NAN, f64::NAN));
        if metric == "loss" {
            slot.0 = value;
        } else {
            slot.1 = value;
        }
    }
    Ok(by_step
        .into_iter()
        .map(|(step, (loss, metric))| (step, loss, metric))
        .collect())
}

/// Training (step, pre-clip gradient norm) from a run's `metrics` rows.
fn read_grad_norm(frame: &DataFrame) -> anyhow::Result<Vec<(usize, f64)>> {
    let steps = frame.column("step")?.u64()?;
    let splits = frame.column("split")?.str()?;
    let metrics = frame.column("metric")?.str()?;
    let values = frame.column("value")?.f64()?;
    let mut rows: Vec<(usize, f64)> = (0..frame.height())
        .filter(|&i| splits.get(i) == Some("train") && metrics.get(i) == Some("grad_norm"))
        .filter_map(|i| Some((steps.get(i)? as usize, values.get(i)?)))
        .collect();
    rows.sort_by_key(|r| r.0);
    Ok(rows)
}

/// (step, norms over t) from a run's `gradflow` rows.
fn read_gradflow(frame: &DataFrame) -> anyhow::Result<Vec<(usize, Vec<f64>)>> {
    let steps = frame.column("step")?.u64()?;
    let ts = frame.column("t")?.u64()?;
    let norms = frame.column("norm")?.f64()?;
    let mut by_step: BTreeMap<usize, Vec<(usize, f64)>> = BTreeMap::new();
    for i in 0..frame.height() {
        if let (Some(step), Some(t), Some(norm)) = (steps.get(i), ts.get(i), norms.get(i)) {
            by_step
                .entry(step as usize)
                .or_default()
                .push((t as usize, norm));
        }
    }
    Ok(by_step
        .into_iter()
        .map(|(step, mut rows)| {
            rows.sort_by_key(|r| r.0);
            (step, rows.into_iter().map(|r| r.1).collect())
        })
        .collect())
}

/// f32's smallest normal number: the fused kernels flush smaller values to zero
/// (FTZ/DAZ), so a gradient norm below it, underflowed or not, is drawn and counted here.
pub const F32_FLOOR: f64 = 1.175_494_350_822_287_5e-38;

/// A final loss above this fraction of the trivial predictor's counts as "at the
/// baseline" (nothing of the dependency learned), in reports and in tuning.
pub const AT_BASELINE: f64 = 0.9;

/// The loss and metric of the task's trivial predictor (always 1, blanks then uniform,
/// chance) on 2000 validation sequences: the dashed baseline of the figures.
pub fn baseline(task: &Task) -> (f64, f64) {
    let batch = task.batch(0, Split::Validation, 0, 2000);
    let evaluation = task.evaluate(&task.baseline_outputs(&batch), &batch);
    (evaluation.loss, evaluation.metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_values_display_readably() {
        let clip: Value = serde_yaml::from_str("{ norm: 1.0, value: null }").unwrap();
        assert_eq!(display(Some(&clip)), "norm 1.0");
        let none: Value = serde_yaml::from_str("{ norm: null, value: null }").unwrap();
        assert_eq!(display(Some(&none)), "none");
        assert_eq!(key_value("task.seq_len", "100"), "T = 100");
        assert_eq!(key_value("task.kind", "temporal_order"), "temporal order");
        assert_eq!(key_value("model.forget_bias", "1.0"), "forget bias 1");
        assert_eq!(key_value("model.hidden", "64"), "64 units");
        assert_eq!(
            key_value("model.hidden", "[64, 64]"),
            "2 layers of 64 units"
        );
        assert_eq!(key_value("model.hidden", "[128, 64]"), "128 + 64 units");
        assert_eq!(key_value("train.clip", "norm 1.0"), "clipping: norm 1");
        assert_eq!(key_value("train.clip", "none"), "no clipping");
        assert_eq!(key_value("train.optimizer", "sgd"), "SGD");
        assert_eq!(key_value("model.gru_reset", "before"), "gru reset = before");
    }
}
