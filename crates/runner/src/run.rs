//! `rnnlab run` and `rnnlab status`: train every run of a grid that is not complete.
//!
//! A run is complete when its `summary.yaml` exists (written last). A run being trained
//! is claimed with an exclusive OS lock on `runs/<id>/.lock`, which the kernel releases
//! when the trainer ends, however it ends. So an interrupted sweep, even one killed with
//! `kill -9`, resumes where it stopped, and several `rnnlab run` processes on one
//! experiment share the work without doing a run twice.
//!
//! A run whose training or writing fails is recorded as failed (`runs/<id>/failed.yaml`
//! holds the error), the sweep goes on, and `rnnlab run` exits non-zero at the end
//! naming the failed runs; the next `rnnlab run` tries them again.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::checkpoint::{self, Checkpoint};
use crate::cli::{RunArgs, StatusArgs};
use crate::compact::compact;
use crate::config::RawRun;
use crate::error::UsageError;
use crate::store::{
    ExperimentDir, RunDir, RunStatus, read_config, read_plan, read_summary, write_manifest,
    write_plan, write_run, write_text,
};
use crate::sweep::{Experiment, PlannedRun, scalar};
use crate::train::{Checkpoints, Status, train};

/// Trains the runs of the experiment (of this shard) that are neither complete nor
/// claimed by a live process, `--jobs` at a time, each in a thread pool of its own.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let mut experiment = Experiment::load(&args.file, &args.all_overrides())
        .map_err(|err| UsageError(err.to_string()))?;
    // A GPU the runs ask for must open before anything is written or trained.
    let mut devices: Vec<_> = experiment
        .runs
        .iter()
        .map(|run| run.config.train.device)
        .collect();
    devices.sort_unstable();
    devices.dedup();
    for device in devices {
        crate::train::open_backend(device, crate::cli::CudaLoop::Auto)?;
    }
    let jobs = args.jobs.get();
    let dir = ExperimentDir::new(&args.out, &experiment.name);
    let started = Instant::now();
    let tuned = match &experiment.tuning {
        Some(tuning) => {
            let choices = crate::tune::tune(&experiment, tuning, &dir, jobs, args.force)?;
            experiment.runs = crate::tune::evaluation_runs(&experiment, &choices)?;
            Some(choices)
        }
        None => None,
    };
    write_plan(&dir, &experiment.runs)
        .with_context(|| format!("writing the plan of {}", experiment.name))?;
    let mine: Vec<&PlannedRun> = experiment
        .runs
        .iter()
        .enumerate()
        .filter(|(k, _)| args.shard.takes(*k))
        .map(|(_, r)| r)
        .collect();
    // The manifest says where and from which commit the runs trained: an invocation that
    // finds every run complete (a report regenerated on another machine) leaves it alone.
    let pending = args.force
        || !dir.manifest().exists()
        || mine
            .iter()
            .map(|run| read_summary(&dir.run(&run.id)))
            .collect::<anyhow::Result<Vec<_>>>()?
            .iter()
            .any(Option::is_none);
    if pending {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        write_manifest(
            &dir,
            &args.file,
            &experiment.description,
            jobs,
            (cores / jobs).max(1),
        )
        .with_context(|| format!("writing the manifest of {}", experiment.name))?;
    }
    let (trained, skipped, failed) = train_all(&dir, &mine, jobs, args.force)?;
    let shown = dir.path().display();
    compact(&dir).with_context(|| format!("compacting the tables of {shown}"))?;
    if !args.no_report {
        let results = crate::results::Results::load(dir.path())
            .with_context(|| format!("reading the results in {shown}"))?;
        let report = crate::report::write_report(&results)
            .with_context(|| format!("writing the report of {shown}"))?;
        tracing::info!("report: {}", report.display());
    }
    let tuning_note = tuned.map_or(String::new(), |_| " after tuning (tuning.yaml)".into());
    println!(
        "{}: {trained} runs trained, {skipped} already complete or claimed, {} failed, in {:.1} s{tuning_note}; results in {}",
        experiment.name,
        failed.len(),
        started.elapsed().as_secs_f64(),
        shown
    );
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {} runs failed: {} (the error of each is in runs/<id>/failed.yaml; \
             `rnnlab run` again retries them)",
            failed.len(),
            mine.len(),
            failed.join(" ")
        );
    }
    Ok(())
}

/// Trains `runs` into `dir`, `jobs` at a time (the cores split between them), skipping
/// complete runs unless `force`; returns how many trained, how many were skipped, and
/// the ids of those that failed (each with its `failed.yaml`).
pub(crate) fn train_all(
    dir: &ExperimentDir,
    runs: &[&PlannedRun],
    jobs: usize,
    force: bool,
) -> anyhow::Result<(usize, usize, Vec<String>)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads_per_job = (cores / jobs).max(1);
    let next = AtomicUsize::new(0);
    let counts = Mutex::new((0usize, 0usize)); // (trained, skipped)
    let failed = Mutex::new(Vec::new());
    let progress = Progress::new(runs.len());
    let worker = || -> anyhow::Result<()> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads_per_job)
            .build()
            .context("starting a run's thread pool")?;
        loop {
            let k = next.fetch_add(1, Ordering::SeqCst);
            let Some(planned) = runs.get(k) else {
                return Ok(());
            };
            let trained =
                match pool.install(|| train_one(dir, planned, force, jobs == 1, &progress)) {
                    Ok(trained) => trained,
                    Err(err) => {
                        record_failure(dir, &planned.id, &err, &progress);
                        failed.lock().expect("failed runs").push(planned.id.clone());
                        false
                    }
                };
            progress.sweep.inc(1);
            let mut counts = counts.lock().expect("counts");
            if trained {
                counts.0 += 1
            } else {
                counts.1 += 1
            }
        }
    };
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..jobs).map(|_| scope.spawn(worker)).collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("a worker panicked"))
    })?;
    progress.sweep.finish_and_clear();
    let (trained, skipped) = *counts.lock().expect("counts");
    Ok((trained, skipped, failed.into_inner().expect("failed runs")))
}

/// Logs why run `id` failed and keeps the error beside it in `failed.yaml`. Writing that
/// file may itself fail (the disk that failed the run may be full); the log line stays.
fn record_failure(dir: &ExperimentDir, id: &str, err: &anyhow::Error, progress: &Progress) {
    let line = format!("run {id} failed: {err:#}");
    if progress.terminal {
        let _ = progress.bars.println(&line);
    } else {
        eprintln!("{line}");
    }
    let mut record = serde_yaml::Mapping::new();
    record.insert("id".into(), id.into());
    record.insert("error".into(), format!("{err:#}").into());
    let text = serde_yaml::to_string(&record).unwrap_or_default();
    if let Err(write_err) = write_text(&dir.run(id).failed(), &text) {
        tracing::warn!("could not record the failure of run {id}: {write_err:#}");
    }
}

/// Progress on a terminal: one bar for the sweep, one per active run (step and loss).
/// Hidden when stderr is not a terminal, where one line per finished run is logged.
struct Progress {
    bars: MultiProgress,
    sweep: ProgressBar,
    terminal: bool,
}

impl Progress {
    fn new(runs: usize) -> Self {
        let terminal = std::io::stderr().is_terminal();
        let target = if terminal {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bars = MultiProgress::with_draw_target(target);
        let sweep = bars.add(ProgressBar::new(runs as u64));
        sweep.set_style(
            ProgressStyle::with_template(
                "runs {pos}/{len} {wide_bar} {elapsed_precise} (eta {eta})",
            )
            .expect("a valid template"),
        );
        Self {
            bars,
            sweep,
            terminal,
        }
    }

    /// A line above the bars on a terminal, on stderr elsewhere.
    fn say(&self, line: &str) {
        if self.terminal {
            let _ = self.bars.println(line);
        } else {
            eprintln!("{line}");
        }
    }

    fn run_bar(&self, steps: usize, label: String) -> ProgressBar {
        let bar = self.bars.add(ProgressBar::new(steps as u64));
        bar.set_style(
            ProgressStyle::with_template("  {prefix} {bar:30} step {pos}/{len} loss {msg}")
                .expect("a valid template"),
        );
        bar.set_prefix(label);
        bar
    }
}

/// Trains `planned` unless it is complete (and not forced) or claimed by a live
/// process; returns whether it trained.
fn train_one(
    dir: &ExperimentDir,
    planned: &PlannedRun,
    force: bool,
    alone: bool,
    progress: &Progress,
) -> anyhow::Result<bool> {
    let folder = dir.run(&planned.id);
    if !force && read_summary(&folder)?.is_some() {
        return Ok(false);
    }
    let Some(_lock) = Claim::take(&folder)? else {
        return Ok(false);
    };
    // Another process may have finished it between the check and the claim.
    if !force && read_summary(&folder)?.is_some() {
        return Ok(false);
    }
    let swept: Vec<String> = planned
        .swept
        .iter()
        .map(|(key, value)| format!("{key}={}", scalar(value)))
        .collect();
    tracing::info!(run = %planned.id, seed = planned.config.seed, "training {}", swept.join(" "));
    if alone {
        crate::resources::reset_peak_rss();
    }
    let run_started = Instant::now();
    let bar = progress.run_bar(
        planned.config.train.total_steps(),
        format!("{} {}", planned.id, swept.join(" ")),
    );
    let on_step = |step: usize, loss: f64| {
        bar.set_position(step as u64);
        bar.set_message(format!("{loss:.4}"));
    };
    let start = if force {
        remove_checkpoint(&folder);
        None
    } else {
        starting_point(dir, &folder, planned, progress)
    };
    let owner = checkpoint::owner(&planned.id);
    let path = folder.checkpoint();
    let mut save = |c: &Checkpoint| {
        let started = Instant::now();
        c.save(&path, &owner)?;
        tracing::debug!(
            run = %planned.id,
            step = c.step,
            ms = started.elapsed().as_secs_f64() * 1e3,
            "checkpoint written"
        );
        Ok(())
    };
    let checkpoints = Checkpoints {
        every: planned.config.train.checkpoint_every,
        save: &mut save,
    };
    let outcome = train(&planned.config, start, Some(checkpoints), &on_step);
    bar.finish_and_clear();
    progress.bars.remove(&bar);
    let outcome = outcome.with_context(|| format!("training run {}", planned.id))?;
    let wall_s = run_started.elapsed().as_secs_f64();
    write_run(&folder, planned, &outcome, wall_s)
        .with_context(|| format!("writing run {} to {}", planned.id, folder.path().display()))?;
    if outcome.status != Status::Done {
        // Only a finished run's checkpoint serves (a longer budget starts from it).
        remove_checkpoint(&folder);
    }
    match std::fs::remove_file(folder.failed()) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("could not remove {}: {err}", folder.failed().display());
        }
        _ => {}
    }
    let line = format!(
        "{} seed {} {}: {:?} after {} steps, validation loss {:.4}, {} {:.3} ({:.1} s)",
        planned.id,
        planned.config.seed,
        swept.join(" "),
        outcome.status,
        outcome.steps,
        outcome.last.loss,
        planned.config.task.metric_name(),
        outcome.last.metric,
        wall_s
    );
    if progress.terminal {
        progress.bars.println(line).context("writing progress")?;
    } else {
        eprintln!("{line}");
    }
    Ok(true)
}

/// Where run `planned` starts: its own checkpoint (a run interrupted mid-training), or
/// else the final checkpoint of the longest complete run in the experiment folder whose
/// config differs only by a shorter budget (a budget raised after the fact), or else step
/// 0. A checkpoint that cannot be used is removed with a warning that says why.
fn starting_point(
    dir: &ExperimentDir,
    folder: &RunDir,
    planned: &PlannedRun,
    progress: &Progress,
) -> Option<Checkpoint> {
    let task = &planned.config.task;
    let own = folder.checkpoint();
    if own.exists() {
        match Checkpoint::load(&own, &checkpoint::owner(&planned.id), task) {
            Ok(start) => {
                progress.say(&format!(
                    "run {} resumes after step {} ({})",
                    planned.id,
                    start.step,
                    own.display()
                ));
                return Some(start);
            }
            Err(err) => {
                progress.say(&format!(
                    "warning: ignoring {}: {err:#}; run {} starts from step 0",
                    own.display(),
                    planned.id
                ));
                remove_checkpoint(folder);
                return None;
            }
        }
    }
    let (donor, start) = shorter_runs(dir, planned)
        .into_iter()
        .filter_map(|(id, run)| {
            let start = Checkpoint::load(&run.checkpoint(), &checkpoint::owner(&id), task).ok()?;
            let summary = read_summary(&run).ok()??;
            (summary.status == RunStatus::Done && summary.steps == start.step)
                .then_some((id, start))
        })
        .max_by_key(|(_, start)| start.step)?;
    progress.say(&format!(
        "run {} continues run {donor} after its step {}",
        planned.id, start.step
    ));
    let step = start.step;
    Some(Checkpoint {
        record: start.record.continued(step, &planned.config),
        ..start
    })
}

/// The other runs of the experiment folder whose resolved config equals `planned`'s but
/// for a shorter budget (fewer `train.steps`, or fewer `train.epochs` of the same
/// samples), with the same seed.
fn shorter_runs(dir: &ExperimentDir, planned: &PlannedRun) -> Vec<(String, RunDir)> {
    let Ok(entries) = std::fs::read_dir(dir.path().join("runs")) else {
        return Vec::new();
    };
    let wanted = &planned.resolved;
    let same_but_budget = |other: &RawRun| {
        let mut other = other.clone();
        let shorter = match (other.train.steps, wanted.train.steps) {
            (Some(a), Some(b)) => a < b,
            _ => matches!((other.train.epochs, wanted.train.epochs), (Some(a), Some(b)) if a < b),
        };
        other.train.steps = wanted.train.steps;
        other.train.epochs = wanted.train.epochs;
        other.train.checkpoint_every = wanted.train.checkpoint_every;
        shorter && serde_yaml::to_value(&other).ok() == serde_yaml::to_value(wanted).ok()
    };
    entries
        .filter_map(|entry| {
            let id = entry.ok()?.file_name().into_string().ok()?;
            let run = dir.run(&id);
            let saved = read_config(&run).ok()?;
            (id != planned.id && saved.seed == planned.config.seed && same_but_budget(&saved.run))
                .then_some((id, run))
        })
        .collect()
}

fn remove_checkpoint(folder: &RunDir) {
    match std::fs::remove_file(folder.checkpoint()) {
        Err(err) if err.kind() != std::io::ErrorKind::NotFound => {
            tracing::warn!("could not remove {}: {err}", folder.checkpoint().display());
        }
        _ => {}
    }
}

/// A run claimed by this process: an exclusive OS file lock on `runs/<id>/.lock`. The
/// kernel releases it when the process ends, however it ends, so a killed runner's runs
/// are free again at once and no stale lock can be stolen from a live one. The file
/// itself stays (deleting it would let two processes lock two different files).
struct Claim {
    /// Open while the run trains: closing the file releases the lock.
    _locked: std::fs::File,
}

impl Claim {
    /// Claims the run in `folder`; `None` if another process holds it.
    fn take(folder: &RunDir) -> anyhow::Result<Option<Self>> {
        std::fs::create_dir_all(folder.path())
            .with_context(|| format!("creating {}", folder.path().display()))?;
        let path = folder.lock();
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _locked: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(err)) => {
                Err(err).with_context(|| format!("locking {}", path.display()))
            }
        }
    }

    /// Whether a process holds the lock of the run in `folder`.
    fn held(folder: &RunDir) -> bool {
        let Ok(file) = std::fs::File::options().write(true).open(folder.lock()) else {
            return false;
        };
        matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
    }
}

/// Counts the runs of an experiment folder by status (and, while it is tuned, the trial
/// runs of the rung under way).
pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let dir = ExperimentDir::at(&args.dir);
    let mut out = String::new();
    let trials = ExperimentDir::at(&dir.path().join("tuning"));
    if trials.path().is_dir() && !dir.path().join("tuning.yaml").exists() {
        // Tuning comes before the plan of the evaluation runs exists.
        let rung: Option<serde_yaml::Value> = std::fs::read_to_string(trials.rung())
            .ok()
            .and_then(|text| serde_yaml::from_str(&text).ok());
        let ids = read_plan(&trials).ok();
        match (rung, ids) {
            (Some(rung), Some(ids)) => {
                let field = |key: &str| scalar(&rung[key]);
                writeln!(
                    out,
                    "tuning rung {} of {} ({} steps), trial runs in {}:",
                    field("rung"),
                    field("of"),
                    field("steps"),
                    trials.path().display()
                )?;
                count_runs(&trials, ids, &mut out)?;
            }
            _ => writeln!(out, "tuning in progress in {}", trials.path().display())?,
        }
    } else {
        let ids = read_plan(&dir).map_err(|err| {
            UsageError(format!(
                "{}: not an experiment's results folder ({err:#})",
                args.dir.display()
            ))
        })?;
        count_runs(&dir, ids, &mut out)?;
    }
    crate::slurm::describe_jobs(&dir, &mut out)?;
    crate::cli::print(&out)
}

/// Writes how many of the runs `ids` of `dir` are done, diverged, failed, running and
/// pending, and which are not done (with the step of their checkpoint).
fn count_runs(dir: &ExperimentDir, ids: Vec<String>, out: &mut String) -> anyhow::Result<()> {
    let (mut done, mut diverged, mut failed, mut running, mut pending) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for id in ids {
        let folder = dir.run(&id);
        match read_summary(&folder)? {
            Some(summary) if summary.status == RunStatus::Diverged => diverged.push(id),
            Some(_) => done.push(id),
            None if Claim::held(&folder) => running.push(id),
            None if folder.failed().exists() => failed.push(id),
            None => pending.push(id),
        }
    }
    writeln!(
        out,
        "done {}, diverged {}, failed {}, running {}, pending {}",
        done.len(),
        diverged.len(),
        failed.len(),
        running.len(),
        pending.len()
    )?;
    // Unfinished runs with a checkpoint show how far they got.
    let progress = |ids: &[String]| -> Vec<String> {
        ids.iter()
            .map(|id| match checkpoint::step_of(&dir.run(id).checkpoint()) {
                Some(step) => format!("{id} (step {step})"),
                None => id.clone(),
            })
            .collect()
    };
    for (label, ids) in [
        ("diverged", diverged),
        ("failed", progress(&failed)),
        ("running", progress(&running)),
        ("pending", progress(&pending)),
    ] {
        if !ids.is_empty() {
            writeln!(out, "{label}: {}", ids.join(" "))?;
        }
    }
    Ok(())
}
