//! `rnnlab plan`: the grid of an experiment, without training.

use std::fmt::Write as _;

use crate::cli::PlanArgs;
use crate::error::UsageError;
use crate::sweep::{Experiment, scalar};

/// Validates the experiment and prints one line per run.
pub fn run(args: &PlanArgs) -> anyhow::Result<()> {
    let experiment =
        Experiment::load(&args.file, &args.overrides).map_err(|err| UsageError(err.to_string()))?;
    let mut out = String::new();
    writeln!(out, "{}: {}", experiment.name, experiment.description)?;
    writeln!(out, "{} runs", experiment.runs.len())?;
    writeln!(
        out,
        "{:<12}  {:>5}  {:>9}  {:>7}  swept",
        "run", "seed", "params", "steps"
    )?;
    for run in &experiment.runs {
        let swept: Vec<String> = run
            .swept
            .iter()
            .map(|(key, value)| format!("{key}={}", scalar(value)))
            .collect();
        writeln!(
            out,
            "{:<12}  {:>5}  {:>9}  {:>7}  {}",
            run.id,
            run.config.seed,
            run.config.model.parameter_count(),
            run.config.train.total_steps(),
            swept.join(" ")
        )?;
    }
    if let Some(tuning) = &experiment.tuning {
        let keys: Vec<&str> = tuning.space.iter().map(|(k, _)| k.as_str()).collect();
        writeln!(
            out,
            "tuning: each of the {} grid points searches {} ({} trials, successive halving \
             over rungs of {:?} steps, eta {}, tuning seeds {:?}); the ids above carry `base`'s \
             values and change with the choices",
            experiment.points.len(),
            keys.join(", "),
            tuning.trials,
            tuning.rungs,
            tuning.eta,
            tuning.seeds
        )?;
        for (trial, settings) in crate::tune::draw_trials(tuning).iter().enumerate() {
            let values: Vec<String> = settings
                .iter()
                .map(|(key, value)| format!("{key}={}", scalar(value)))
                .collect();
            writeln!(out, "  trial {trial}: {}", values.join(" "))?;
        }
    }
    crate::cli::print(&out)
}
