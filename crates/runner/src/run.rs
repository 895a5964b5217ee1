//! `rnnlab run` and `rnnlab status`: train every run of a grid that is not complete.

use std::time::Instant;

use anyhow::Context;

use crate::UsageError;
use crate::cli::{RunArgs, StatusArgs};
use crate::compact::compact;
use crate::config::{Experiment, scalar};
use crate::store::{
    experiment_dir, read_plan, read_summary, run_dir, write_manifest, write_plan, write_run,
};
use crate::train::train;

/// Trains the runs of the experiment that have no summary yet (all of them with
/// `--force`), one after another, writing each run's folder as it finishes.
pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let experiment =
        Experiment::load(&args.file, &args.overrides).map_err(|err| UsageError(err.to_string()))?;
    let dir = experiment_dir(&args.out, &experiment.name);
    write_plan(&dir, &experiment.runs)
        .with_context(|| format!("writing the plan of {}", experiment.name))?;
    write_manifest(&dir, &args.file)
        .with_context(|| format!("writing the manifest of {}", experiment.name))?;
    let total = experiment.runs.len();
    let started = Instant::now();
    let (mut trained, mut skipped) = (0, 0);
    for (k, planned) in experiment.runs.iter().enumerate() {
        let folder = run_dir(&dir, &planned.id);
        if !args.force && read_summary(&folder)?.is_some() {
            skipped += 1;
            continue;
        }
        let swept: Vec<String> = planned
            .swept
            .iter()
            .map(|(key, value)| format!("{key}={}", scalar(value)))
            .collect();
        tracing::info!(run = %planned.id, seed = planned.config.seed, "training {}", swept.join(" "));
        let run_started = Instant::now();
        let outcome =
            train(&planned.config).with_context(|| format!("training run {}", planned.id))?;
        let wall_s = run_started.elapsed().as_secs_f64();
        write_run(&folder, planned, &outcome, wall_s)
            .with_context(|| format!("writing run {} to {}", planned.id, folder.display()))?;
        trained += 1;
        eprintln!(
            "[{}/{total}] {} seed {} {}: {:?} after {} steps, validation loss {:.4}, {} {:.3} ({:.1} s)",
            k + 1,
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
    }
    compact(&dir).with_context(|| format!("compacting the tables of {}", dir.display()))?;
    println!(
        "{}: {trained} runs trained, {skipped} already complete, in {:.1} s; results in {}",
        experiment.name,
        started.elapsed().as_secs_f64(),
        dir.display()
    );
    Ok(())
}

/// Counts the runs of an experiment folder by status.
pub fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let ids = read_plan(&args.dir).map_err(|err| {
        UsageError(format!(
            "{}: not an experiment's results folder ({err:#})",
            args.dir.display()
        ))
    })?;
    let (mut done, mut diverged, mut pending) = (Vec::new(), Vec::new(), Vec::new());
    for id in ids {
        match read_summary(&run_dir(&args.dir, &id))? {
            Some(summary) if summary.status == "diverged" => diverged.push(id),
            Some(_) => done.push(id),
            None => pending.push(id),
        }
    }
    println!(
        "done {}, diverged {}, pending {}",
        done.len(),
        diverged.len(),
        pending.len()
    );
    for (label, ids) in [("diverged", &diverged), ("pending", &pending)] {
        if !ids.is_empty() {
            println!("{label}: {}", ids.join(" "));
        }
    }
    Ok(())
}
