//! Tuning: every grid point (arm × setting) is searched on its own with the same budget,
//! by successive halving (Jamieson & Talwalkar 2016), before its evaluation runs.
//!
//! Every point tries the same `trials` configurations, drawn once from the tuning space
//! as a seeded Latin hypercube (so arms are compared on the same candidates, and the
//! candidates cover the range evenly). Rung `r` trains
//! every surviving trial for `rungs[r]` steps on every tuning seed; a trial's score is the
//! median final validation loss over those seeds (a diverged seed counts as infinite);
//! the best 1/`eta` go on to the next rung (all of them where no trial has left the
//! task's baseline yet: the ranking there is noise), where they continue from their checkpoints
//! (a longer budget continues the shorter run, bit for bit). The best trial of the last
//! rung, at the full budget, is the point's configuration. Trials are ordinary runs in
//! `<experiment>/tuning/runs/`, so a killed tuning resumes like a sweep and reaches the
//! same choices; `tuning.yaml` records every trial's losses and the choices.

use anyhow::{Context, bail};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_yaml::{Mapping, Value};

use crate::error::UsageError;
use crate::results::{AT_BASELINE, baseline};
use crate::run::train_all;
use crate::stats::median;
use crate::store::{ExperimentDir, RunStatus, read_summary, write_plan, write_text};
use crate::sweep::{Draw, Experiment, PlannedRun, Tuning, scalar};

/// The chosen settings of each grid point, in point order.
pub type Choices = Vec<Vec<(String, Value)>>;

/// One trial at one rung: its steps, the final loss on each tuning seed, their median.
#[derive(Debug, Clone)]
struct Rung {
    steps: usize,
    losses: Vec<f64>,
    median: f64,
}

/// Per point and trial, every rung it ran.
type Record = Vec<Vec<Vec<Rung>>>;

/// Tunes every grid point of `experiment` (trials in `dir/tuning/`, the record in
/// `dir/tuning.yaml`) and returns the chosen settings.
pub fn tune(
    experiment: &Experiment,
    tuning: &Tuning,
    dir: &ExperimentDir,
    jobs: usize,
    force: bool,
) -> anyhow::Result<Choices> {
    let trials_dir = ExperimentDir::at(&dir.path().join("tuning"));
    let trials = draw_trials(tuning);
    let points = experiment.points.len();
    let mut alive: Vec<Vec<usize>> = vec![(0..trials.len()).collect(); points];
    // Per point and trial: the (steps, losses per seed, median) of every rung it ran.
    let mut record: Record = vec![vec![Vec::new(); trials.len()]; points];
    // Per point, the rungs at which no trial had left the task's baseline.
    let mut plateaus: Vec<Vec<usize>> = vec![Vec::new(); points];
    let base_losses: Vec<f64> = (0..points)
        .map(|point| {
            let run = experiment
                .plan_run(point, &trials[0], tuning.seeds[0])
                .map_err(|err| UsageError(format!("tuning: {err}")))?;
            Ok(baseline(&run.config.task).0)
        })
        .collect::<anyhow::Result<_>>()?;
    for (rung, &steps) in tuning.rungs.iter().enumerate() {
        let mut runs: Vec<(usize, usize, PlannedRun)> = Vec::new();
        for (point, survivors) in alive.iter().enumerate() {
            for &trial in survivors {
                let mut settings = trials[trial].clone();
                settings.push(("train.steps".into(), Value::from(steps as u64)));
                for &seed in &tuning.seeds {
                    let run = experiment
                        .plan_run(point, &settings, seed)
                        .map_err(|err| UsageError(format!("tuning: {err}")))?;
                    runs.push((point, trial, run));
                }
            }
        }
        eprintln!(
            "tuning rung {}/{}: {} trials × {} seeds at {steps} steps",
            rung + 1,
            tuning.rungs.len(),
            runs.len() / tuning.seeds.len(),
            tuning.seeds.len()
        );
        let refs: Vec<&PlannedRun> = runs.iter().map(|(_, _, run)| run).collect();
        // What `rnnlab status` shows while the rung trains.
        write_plan(&trials_dir, refs.iter().copied())?;
        write_text(
            &trials_dir.rung(),
            &format!(
                "rung: {}\nof: {}\nsteps: {steps}\n",
                rung + 1,
                tuning.rungs.len()
            ),
        )?;
        // Shards of one sweep (`--shard`, Slurm array tasks) tune together: each trains
        // the trials nobody holds, then waits for those another process holds, taking
        // over any whose process died (its lock is gone), so all reach the same record.
        let mut retrain = force;
        loop {
            let (_, _, failed) = train_all(&trials_dir, &refs, jobs, retrain)?;
            retrain = false;
            if !failed.is_empty() {
                bail!(
                    "{} tuning runs failed: {} (errors in {}/runs/<id>/failed.yaml; `rnnlab \
                     run` again retries them)",
                    failed.len(),
                    failed.join(" "),
                    trials_dir.path().display()
                );
            }
            let mut elsewhere = 0;
            for run in &refs {
                if read_summary(&trials_dir.run(&run.id))?.is_none() {
                    elsewhere += 1;
                }
            }
            if elsewhere == 0 {
                break;
            }
            tracing::info!("tuning: waiting for {elsewhere} trial runs another process trains");
            std::thread::sleep(std::time::Duration::from_secs(2));
        }
        for (point, survivors) in alive.iter_mut().enumerate() {
            for &trial in survivors.iter() {
                let losses = runs
                    .iter()
                    .filter(|(p, t, _)| *p == point && *t == trial)
                    .map(|(_, _, run)| final_loss(&trials_dir, run))
                    .collect::<anyhow::Result<Vec<f64>>>()?;
                let median = median(&losses);
                record[point][trial].push(Rung {
                    steps,
                    losses,
                    median,
                });
            }
            let score = |t: &usize| record[point][*t].last().map_or(f64::INFINITY, |r| r.median);
            survivors.sort_by(|a, b| score(a).total_cmp(&score(b)).then(a.cmp(b)));
            if rung + 1 < tuning.rungs.len() {
                // Where every trial is still at the baseline (the loss plateau the
                // long-dependency tasks start on) the ranking is noise: all go on.
                if score(&survivors[0]) > AT_BASELINE * base_losses[point] {
                    plateaus[point].push(steps);
                } else {
                    survivors.truncate(survivors.len().div_ceil(tuning.eta));
                }
            }
        }
    }
    let choices: Choices = alive
        .iter()
        .map(|survivors| trials[survivors[0]].clone())
        .collect();
    let path = dir.path().join("tuning.yaml");
    std::fs::create_dir_all(dir.path())
        .with_context(|| format!("creating {}", dir.path().display()))?;
    write_text(
        &path,
        &serde_yaml::to_string(&describe(
            experiment, tuning, &trials, &record, &alive, &plateaus,
        ))?,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(choices)
}

/// The evaluation runs: every grid point with its chosen settings, on every evaluation
/// seed.
pub fn evaluation_runs(
    experiment: &Experiment,
    choices: &Choices,
) -> anyhow::Result<Vec<PlannedRun>> {
    let mut runs = Vec::new();
    for (point, chosen) in choices.iter().enumerate() {
        for &seed in &experiment.seeds {
            runs.push(
                experiment
                    .plan_run(point, chosen, seed)
                    .map_err(|err| UsageError(format!("after tuning: {err}")))?,
            );
        }
    }
    Ok(runs)
}

/// The candidate configurations, the same for every point: a Latin hypercube over the
/// space (McKay et al. 1979), from a stream seeded by the tuning seeds. Each key's range
/// is cut into `trials` equal strata (equal in log space for `log_uniform`, equal shares
/// of the values for `choice`) and every stratum gets exactly one draw, in a shuffled
/// order per key. Plain random draws can cluster: 9 log-uniform draws once left no
/// candidate above 1.45e-2 in 1e-4..3e-2 and four within 1.26e-2..1.45e-2.
pub fn draw_trials(tuning: &Tuning) -> Vec<Vec<(String, Value)>> {
    let seed = tuning
        .seeds
        .iter()
        .fold(0x5eed_u64, |h, s| h.wrapping_mul(0x100_0000_01b3) ^ s);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n = tuning.trials;
    // Per key: trial i's position in [0, 1), one per stratum [k/n, (k+1)/n).
    let positions: Vec<Vec<f64>> = tuning
        .space
        .iter()
        .map(|_| {
            let mut strata: Vec<usize> = (0..n).collect();
            strata.shuffle(&mut rng);
            strata
                .into_iter()
                .map(|k| (k as f64 + rng.random::<f64>()) / n as f64)
                .collect()
        })
        .collect();
    (0..n)
        .map(|trial| {
            tuning
                .space
                .iter()
                .zip(&positions)
                .map(|((key, draw), position)| {
                    let u = position[trial];
                    let value = match draw {
                        Draw::LogUniform(lo, hi) => {
                            let (a, b) = (lo.log10(), hi.log10());
                            Value::from(10f64.powf(a + (b - a) * u))
                        }
                        Draw::Uniform(lo, hi) => Value::from(lo + (hi - lo) * u),
                        Draw::Choice(values) => values
                            [((u * values.len() as f64) as usize).min(values.len() - 1)]
                        .clone(),
                    };
                    (key.clone(), value)
                })
                .collect()
        })
        .collect()
}

/// A tuning run's final validation loss; infinite if it diverged.
fn final_loss(dir: &ExperimentDir, run: &PlannedRun) -> anyhow::Result<f64> {
    let summary = read_summary(&dir.run(&run.id))?
        .with_context(|| format!("tuning run {} has no summary", run.id))?;
    Ok(match summary.status {
        RunStatus::Done if summary.final_loss.is_finite() => summary.final_loss,
        _ => f64::INFINITY,
    })
}

/// `tuning.yaml`: the search, and per point every trial's losses per rung and the choice.
fn describe(
    experiment: &Experiment,
    tuning: &Tuning,
    trials: &[Vec<(String, Value)>],
    record: &Record,
    alive: &[Vec<usize>],
    plateaus: &[Vec<usize>],
) -> Value {
    let settings = |settings: &[(String, Value)]| -> Mapping {
        settings
            .iter()
            .map(|(k, v)| (Value::from(k.clone()), v.clone()))
            .collect()
    };
    let mut top = Mapping::new();
    top.insert("method".into(), "successive halving".into());
    top.insert(
        "rungs".into(),
        Value::Sequence(
            tuning
                .rungs
                .iter()
                .map(|&s| Value::from(s as u64))
                .collect(),
        ),
    );
    top.insert("eta".into(), Value::from(tuning.eta as u64));
    top.insert(
        "seeds".into(),
        Value::Sequence(tuning.seeds.iter().map(|&s| Value::from(s)).collect()),
    );
    let points = experiment
        .points
        .iter()
        .enumerate()
        .map(|(point, swept)| {
            let mut entry = Mapping::new();
            let name: Vec<String> = swept
                .iter()
                .map(|(k, v)| format!("{k}={}", scalar(v)))
                .collect();
            entry.insert("point".into(), name.join(" ").into());
            entry.insert(
                "chosen".into(),
                Value::Mapping(settings(&trials[alive[point][0]])),
            );
            entry.insert("chosen_trial".into(), Value::from(alive[point][0] as u64));
            if !plateaus[point].is_empty() {
                entry.insert(
                    "all_kept_at_baseline".into(),
                    Value::Sequence(
                        plateaus[point]
                            .iter()
                            .map(|&s| Value::from(s as u64))
                            .collect(),
                    ),
                );
            }
            let rows = trials
                .iter()
                .enumerate()
                .map(|(trial, values)| {
                    let mut row = Mapping::new();
                    row.insert("trial".into(), Value::from(trial as u64));
                    row.insert("settings".into(), Value::Mapping(settings(values)));
                    let rungs = record[point][trial]
                        .iter()
                        .map(|r| {
                            let mut rung = Mapping::new();
                            rung.insert("steps".into(), Value::from(r.steps as u64));
                            rung.insert(
                                "losses".into(),
                                Value::Sequence(r.losses.iter().map(|&l| Value::from(l)).collect()),
                            );
                            rung.insert("median".into(), Value::from(r.median));
                            Value::Mapping(rung)
                        })
                        .collect();
                    row.insert("rungs".into(), Value::Sequence(rungs));
                    Value::Mapping(row)
                })
                .collect();
            entry.insert("trials".into(), Value::Sequence(rows));
            Value::Mapping(entry)
        })
        .collect();
    top.insert("points".into(), Value::Sequence(points));
    Value::Mapping(top)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tuning(space: Vec<(String, Draw)>, trials: usize) -> Tuning {
        Tuning {
            space,
            trials,
            seeds: vec![100, 101],
            rungs: vec![1000, 3000],
            eta: 3,
        }
    }

    #[test]
    fn every_stratum_of_the_range_gets_one_candidate() {
        let space = vec![
            ("train.lr".to_owned(), Draw::LogUniform(1e-4, 3e-2)),
            ("train.momentum".to_owned(), Draw::Uniform(0.5, 0.9)),
            (
                "model.forget_bias".to_owned(),
                Draw::Choice(vec![Value::from(0.0), Value::from(1.0)]),
            ),
        ];
        let trials = draw_trials(&tuning(space.clone(), 6));
        assert_eq!(
            trials,
            draw_trials(&tuning(space, 6)),
            "seeded, so repeatable"
        );
        let column = |key: usize| -> Vec<f64> {
            trials.iter().map(|t| t[key].1.as_f64().unwrap()).collect()
        };
        // log10 of 1e-4..3e-2 is -4..-1.52; six strata of width 0.413 each.
        let mut lr_strata: Vec<usize> = column(0)
            .iter()
            .map(|lr| ((lr.log10() + 4.0) / (3e-2f64.log10() + 4.0) * 6.0) as usize)
            .collect();
        lr_strata.sort_unstable();
        assert_eq!(lr_strata, vec![0, 1, 2, 3, 4, 5]);
        // 0.5..0.9 in six strata of 0.0667.
        let mut momentum_strata: Vec<usize> = column(1)
            .iter()
            .map(|m| ((m - 0.5) / 0.4 * 6.0) as usize)
            .collect();
        momentum_strata.sort_unstable();
        assert_eq!(momentum_strata, vec![0, 1, 2, 3, 4, 5]);
        // Two choices over six trials: three each.
        let zeros = column(2).iter().filter(|&&b| b == 0.0).count();
        assert_eq!(zeros, 3);
    }

    #[test]
    fn other_tuning_seeds_draw_other_candidates() {
        let space = vec![("train.lr".to_owned(), Draw::LogUniform(1e-4, 3e-2))];
        let mut other = tuning(space.clone(), 6);
        other.seeds = vec![7];
        assert_ne!(draw_trials(&tuning(space, 6)), draw_trials(&other));
    }
}
