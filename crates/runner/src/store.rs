//! The results layout: one folder per run, every file written whole or not at all.
//! [`ExperimentDir`] and [`RunDir`] own every name in it:
//!
//! ```text
//! <out>/<experiment>/plan.yaml                 the grid: run ids and swept values
//! <out>/<experiment>/manifest.yaml             version, git commit, CPU, threads, start
//! <out>/<experiment>/{runs,metrics,gradflow}.parquet  compacted from the runs
//! <out>/<experiment>/REPORT.md, plots/         the report and its figures
//! <out>/<experiment>/runs/<id>/config.yaml     resolved config, seed, swept values
//! <out>/<experiment>/runs/<id>/metrics.parquet step, split, metric, value (long form)
//! <out>/<experiment>/runs/<id>/gradflow.parquet step, t, norm (first layer)
//! <out>/<experiment>/runs/<id>/weights.safetensors  PyTorch names
//! <out>/<experiment>/runs/<id>/summary.yaml    written last: the run is complete
//! <out>/<experiment>/runs/<id>/checkpoint.safetensors  the state after the latest
//!                                               checkpointed step (the last, once done)
//! <out>/<experiment>/runs/<id>/failed.yaml     the error of a run that failed
//! <out>/<experiment>/runs/<id>/.lock           held (OS lock) while a runner trains it
//! ```

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use polars::prelude::{
    ChunkCompareEq, DataFrame, NamedFrom, ParquetReader, ParquetWriter, SerReader, Series,
};
use serde::{Deserialize, Serialize};
use serde_yaml::{Mapping, Value};

use crate::config::RawRun;
use crate::sweep::PlannedRun;
use crate::train::{Outcome, Status};

/// `config.yaml` of a run.
#[derive(Debug, Serialize, Deserialize)]
pub struct SavedConfig {
    /// The run id (the folder's name).
    pub id: String,
    /// Seed of weights and data.
    pub seed: u64,
    /// The swept keys and their values at this grid point.
    pub swept: Mapping,
    /// The resolved configuration, defaults filled in.
    pub run: RawRun,
}

/// How a complete run ended, as `summary.yaml` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// It used its whole budget.
    Done,
    /// Its training loss stopped being finite (`diverged_at` says when).
    Diverged,
}

/// `summary.yaml` of a run; its presence marks the run complete.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// `done` or `diverged`.
    pub status: RunStatus,
    /// The step whose loss was not finite, for a diverged run.
    pub diverged_at: Option<usize>,
    /// Optimiser steps taken.
    pub steps: usize,
    /// Validation loss at the last evaluation.
    pub final_loss: f64,
    /// The task metric's name.
    pub metric: String,
    /// The task metric at the last evaluation.
    pub final_metric: f64,
    /// Best validation loss over the evaluations.
    pub best_loss: f64,
    /// First evaluated step that met the task's "solved" criterion.
    pub steps_to_solve: Option<usize>,
    /// Wall time of the whole run, seconds.
    pub wall_s: f64,
    /// Training sequences per second.
    pub samples_per_s: f64,
    /// Trainable parameters.
    pub parameters: usize,
    /// Peak resident memory of the process while this run trained, MiB (Linux). With
    /// `--jobs 1` it is this run's; with more jobs, the process's peak since it started
    /// (runs training side by side share one process).
    pub peak_rss_mb: Option<f64>,
}

/// One of the tables compacted at the experiment level (and written per run, but for
/// `Runs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `runs.parquet`: one row per run (experiment level only).
    Runs,
    /// `metrics.parquet`: step, split, metric, value.
    Metrics,
    /// `gradflow.parquet`: step, t, norm.
    Gradflow,
    /// `findings.parquet`: the report's tests (experiment level only).
    Findings,
}

impl Table {
    /// The file name.
    pub fn file_name(self) -> &'static str {
        match self {
            Self::Runs => "runs.parquet",
            Self::Metrics => "metrics.parquet",
            Self::Gradflow => "gradflow.parquet",
            Self::Findings => "findings.parquet",
        }
    }
}

/// An experiment's results folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExperimentDir(PathBuf);

impl ExperimentDir {
    /// The folder of experiment `name` under `out`.
    pub fn new(out: &Path, name: &str) -> Self {
        Self(out.join(name))
    }

    /// An existing experiment folder.
    pub fn at(path: &Path) -> Self {
        Self(path.to_owned())
    }

    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `plan.yaml`.
    pub fn plan(&self) -> PathBuf {
        self.0.join("plan.yaml")
    }

    /// `manifest.yaml`.
    pub fn manifest(&self) -> PathBuf {
        self.0.join("manifest.yaml")
    }

    /// `rung.yaml`: in the tuning folder, the successive-halving rung under way (`rung`,
    /// `of`, `steps`) while `plan.yaml` lists its trial runs.
    pub fn rung(&self) -> PathBuf {
        self.0.join("rung.yaml")
    }

    /// An experiment-level table.
    pub fn table(&self, table: Table) -> PathBuf {
        self.0.join(table.file_name())
    }

    /// `REPORT.md`.
    pub fn report(&self) -> PathBuf {
        self.0.join("REPORT.md")
    }

    /// `plots/`, the figures' folder.
    pub fn plots(&self) -> PathBuf {
        self.0.join("plots")
    }

    /// `slurm/`: the batch scripts `rnnlab slurm` wrote, `jobs.yaml` (what it
    /// submitted) and the jobs' logs.
    pub fn slurm(&self) -> PathBuf {
        self.0.join("slurm")
    }

    /// The folder of run `id`.
    pub fn run(&self, id: &str) -> RunDir {
        RunDir(self.0.join("runs").join(id))
    }
}

/// One run's folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir(PathBuf);

impl RunDir {
    /// The folder itself.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// `config.yaml`: the resolved config.
    pub fn config(&self) -> PathBuf {
        self.0.join("config.yaml")
    }

    /// A per-run table (`Metrics` or `Gradflow`).
    pub fn table(&self, table: Table) -> PathBuf {
        self.0.join(table.file_name())
    }

    /// `weights.safetensors`.
    pub fn weights(&self) -> PathBuf {
        self.0.join("weights.safetensors")
    }

    /// `summary.yaml`, written last.
    pub fn summary(&self) -> PathBuf {
        self.0.join("summary.yaml")
    }

    /// `failed.yaml`.
    pub fn failed(&self) -> PathBuf {
        self.0.join("failed.yaml")
    }

    /// `checkpoint.safetensors`: the state after some step (see [`crate::checkpoint`]).
    pub fn checkpoint(&self) -> PathBuf {
        self.0.join("checkpoint.safetensors")
    }

    /// `.lock`.
    pub fn lock(&self) -> PathBuf {
        self.0.join(".lock")
    }
}

/// The summary of a completed run, or `None` if it has not completed.
pub fn read_summary(run: &RunDir) -> anyhow::Result<Option<Summary>> {
    let path = run.summary();
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            serde_yaml::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// The resolved config of a run (`config.yaml`).
pub fn read_config(run: &RunDir) -> anyhow::Result<SavedConfig> {
    let path = run.config();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

/// A Parquet file as a frame.
pub fn read_frame(path: &Path) -> anyhow::Result<DataFrame> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    ParquetReader::new(file)
        .finish()
        .with_context(|| format!("reading {}", path.display()))
}

/// A per-run table (`runs/<id>/<table>`), or the run's rows of the experiment-level one
/// when the run's own copy is absent (a results folder shared without them).
pub struct Tables {
    dir: ExperimentDir,
    compacted: BTreeMap<&'static str, Option<DataFrame>>,
}

impl Tables {
    /// The tables of the experiment in `dir`.
    pub fn new(dir: &ExperimentDir) -> Self {
        Self {
            dir: dir.clone(),
            compacted: BTreeMap::new(),
        }
    }

    /// The rows of run `id` in `table` (`Metrics` or `Gradflow`), without a `run` column.
    pub fn rows(&mut self, id: &str, table: Table) -> anyhow::Result<DataFrame> {
        let own = self.dir.run(id).table(table);
        if own.exists() {
            return read_frame(&own);
        }
        let path = self.dir.table(table);
        let compacted = match self.compacted.entry(table.file_name()) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(path.exists().then(|| read_frame(&path)).transpose()?)
            }
        };
        let Some(all) = compacted else {
            anyhow::bail!(
                "{} is missing (and so is {})",
                own.display(),
                path.display()
            );
        };
        let mine = all.column("run")?.str()?.equal(id);
        let rows = all.filter(&mine)?.drop("run")?;
        anyhow::ensure!(
            rows.height() > 0,
            "{} is missing and {} has no rows of run {id}",
            own.display(),
            path.display()
        );
        Ok(rows)
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder and a rename.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&Path) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let name = path.file_name().context("a file name")?.to_string_lossy();
    let temp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
    let result = write(&temp).and_then(|()| {
        std::fs::rename(&temp, path)
            .with_context(|| format!("renaming {} to {}", temp.display(), path.display()))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// Writes `text` to `path` whole or not at all.
pub fn write_text(path: &Path, text: &str) -> anyhow::Result<()> {
    write_atomic(path, |temp| {
        std::fs::write(temp, text).with_context(|| format!("writing {}", temp.display()))
    })
}

/// Writes `frame` as Parquet to `path` whole or not at all.
pub fn write_parquet(path: &Path, mut frame: DataFrame) -> anyhow::Result<()> {
    write_atomic(path, |temp| {
        let file = File::create(temp).with_context(|| format!("creating {}", temp.display()))?;
        ParquetWriter::new(file)
            .finish(&mut frame)
            .with_context(|| format!("writing {}", temp.display()))?;
        Ok(())
    })
}

/// `plan.yaml`: the run ids of the grid with their swept values and seeds.
pub fn write_plan<'a>(
    experiment_dir: &ExperimentDir,
    runs: impl IntoIterator<Item = &'a PlannedRun>,
) -> anyhow::Result<()> {
    let path = experiment_dir.path();
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let entries: Vec<Value> = runs
        .into_iter()
        .map(|run| {
            let mut entry = Mapping::new();
            entry.insert("id".into(), run.id.clone().into());
            entry.insert("seed".into(), run.config.seed.into());
            entry.insert("swept".into(), Value::Mapping(swept(run)));
            Value::Mapping(entry)
        })
        .collect();
    write_text(&experiment_dir.plan(), &serde_yaml::to_string(&entries)?)
}

/// `manifest.yaml`: the experiment's question and what ran it (rnnlab version, the commit
/// the binary was built from, the git commit of the working directory if any, CPU,
/// threads, runs at once and threads per run, start time), rewritten at every `rnnlab run`
/// that trains.
pub fn write_manifest(
    experiment_dir: &ExperimentDir,
    file: &Path,
    description: &str,
    jobs: usize,
    threads_per_run: usize,
) -> anyhow::Result<()> {
    let git = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|name| name.trim().to_owned())
        });
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut manifest = Mapping::new();
    manifest.insert("rnnlab".into(), env!("CARGO_PKG_VERSION").into());
    manifest.insert("experiment_file".into(), file.display().to_string().into());
    manifest.insert("description".into(), description.into());
    manifest.insert("build_commit".into(), crate::BUILD_COMMIT.into());
    manifest.insert("git_commit".into(), git.map_or(Value::Null, Value::from));
    manifest.insert("cpu".into(), cpu.map_or(Value::Null, Value::from));
    manifest.insert(
        "threads".into(),
        (rayon::current_num_threads() as u64).into(),
    );
    manifest.insert("jobs".into(), (jobs as u64).into());
    manifest.insert("threads_per_run".into(), (threads_per_run as u64).into());
    manifest.insert("started_unix_s".into(), started.into());
    write_text(
        &experiment_dir.manifest(),
        &serde_yaml::to_string(&manifest)?,
    )
}

/// The run ids listed in `plan.yaml`.
pub fn read_plan(experiment_dir: &ExperimentDir) -> anyhow::Result<Vec<String>> {
    let path = experiment_dir.plan();
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let entries: Vec<Mapping> =
        serde_yaml::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
    entries
        .iter()
        .map(|entry| {
            entry
                .get("id")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .context("a plan entry without an id")
        })
        .collect()
}

fn swept(run: &PlannedRun) -> Mapping {
    run.swept
        .iter()
        .map(|(k, v)| (Value::from(k.clone()), v.clone()))
        .collect()
}

/// Writes every file of a finished run, the summary last.
pub fn write_run(
    dir: &RunDir,
    run: &PlannedRun,
    outcome: &Outcome,
    wall_s: f64,
) -> anyhow::Result<()> {
    let path = dir.path();
    std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
    let saved = SavedConfig {
        id: run.id.clone(),
        seed: run.config.seed,
        swept: swept(run),
        run: run.resolved.clone(),
    };
    write_text(&dir.config(), &serde_yaml::to_string(&saved)?)?;

    let metrics = &outcome.metrics;
    let frame = DataFrame::new(
        metrics.len(),
        vec![
            Series::new(
                "step".into(),
                metrics.iter().map(|m| m.step as u64).collect::<Vec<_>>(),
            )
            .into(),
            Series::new(
                "split".into(),
                metrics.iter().map(|m| m.split).collect::<Vec<_>>(),
            )
            .into(),
            Series::new(
                "metric".into(),
                metrics.iter().map(|m| m.metric).collect::<Vec<_>>(),
            )
            .into(),
            Series::new(
                "value".into(),
                metrics.iter().map(|m| m.value).collect::<Vec<_>>(),
            )
            .into(),
        ],
    )?;
    write_parquet(&dir.table(Table::Metrics), frame)?;

    let rows: Vec<(u64, u64, f64)> = outcome
        .gradflow
        .iter()
        .flat_map(|row| {
            row.norms
                .iter()
                .enumerate()
                .map(move |(t, &n)| (row.step as u64, t as u64, n))
        })
        .collect();
    let frame = DataFrame::new(
        rows.len(),
        vec![
            Series::new("step".into(), rows.iter().map(|r| r.0).collect::<Vec<_>>()).into(),
            Series::new("t".into(), rows.iter().map(|r| r.1).collect::<Vec<_>>()).into(),
            Series::new("norm".into(), rows.iter().map(|r| r.2).collect::<Vec<_>>()).into(),
        ],
    )?;
    write_parquet(&dir.table(Table::Gradflow), frame)?;

    let weights = dir.weights();
    write_atomic(&weights, |temp| {
        candle_core::safetensors::save(&outcome.params.to_tensors(), temp)
            .with_context(|| format!("writing {}", temp.display()))
    })?;

    let validation_losses = metrics
        .iter()
        .filter(|m| m.split == "validation" && m.metric == "loss");
    let summary = Summary {
        status: match outcome.status {
            Status::Done => RunStatus::Done,
            Status::Diverged { .. } => RunStatus::Diverged,
        },
        diverged_at: match outcome.status {
            Status::Diverged { step } => Some(step),
            Status::Done => None,
        },
        steps: outcome.steps,
        final_loss: outcome.last.loss,
        metric: run.config.task.metric_name().into(),
        final_metric: outcome.last.metric,
        best_loss: validation_losses
            .map(|m| m.value)
            .fold(f64::INFINITY, f64::min),
        steps_to_solve: outcome.steps_to_solve,
        wall_s,
        samples_per_s: outcome.samples_per_s,
        parameters: run.config.model.parameter_count(),
        peak_rss_mb: crate::resources::peak_rss_mb(),
    };
    write_text(&dir.summary(), &serde_yaml::to_string(&summary)?)
}
