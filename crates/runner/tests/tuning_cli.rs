//! Tuning end to end: each arm is tuned to its own learning rate (an arm that diverges at
//! the shared rate is rescued), tuning and evaluation seeds are disjoint, and a killed
//! tuning resumes to the same choices and numbers.

mod common;

use common::{ok, rnnlab};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_yaml::Value;

/// SGD at lr 2 makes the LSTM diverge; the search spans 1e-3..2.
const TUNED: &str = "name: tuned
description: two arms whose best learning rates differ
seeds: [0, 1]
base:
  task: { kind: adding, seq_len: 10 }
  model: { cell: lstm, hidden: 8, init: identity }
  train: { optimizer: sgd, lr: 2.0, steps: 90, batch_size: 16, eval_every: 30, eval_samples: 64 }
sweep:
  model.cell: [lstm, rnn_relu]
tuning:
  space:
    train.lr: { log_uniform: [1.0e-3, 2.0] }
  trials: 6
  seeds: [100, 101]
  min_steps: 10
  eta: 3
";

fn setup(name: &str, text: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("rnnlab-tune-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tuned.yaml");
    std::fs::write(&file, text).unwrap();
    (file, dir.join("out"))
}

fn yaml(path: &Path) -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Every run folder's (cell, lr, status) of an experiment.
fn runs(experiment: &Path) -> Vec<(String, f64, String)> {
    let mut out: Vec<(String, f64, String)> = std::fs::read_dir(experiment.join("runs"))
        .unwrap()
        .map(|e| {
            let run = e.unwrap().path();
            let config = yaml(&run.join("config.yaml"));
            let summary = yaml(&run.join("summary.yaml"));
            (
                config["run"]["model"]["cell"].as_str().unwrap().to_owned(),
                config["run"]["train"]["lr"].as_f64().unwrap(),
                summary["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.partial_cmp(b).unwrap());
    out
}

#[test]
fn each_arm_is_tuned_to_its_own_rate_and_a_diverging_arm_is_rescued() {
    let (file, out) = setup("rescue", TUNED);
    let args = [
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-report",
    ];
    ok(&rnnlab(&args));
    let tuning = yaml(&out.join("tuned/tuning.yaml"));
    let mut chosen = Vec::new();
    for point in tuning["points"].as_sequence().unwrap() {
        // The choice is the trial with the lowest median loss at the last rung (90 steps).
        let best = point["trials"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|t| {
                let last = t["rungs"].as_sequence()?.last()?.clone();
                (last["steps"].as_u64() == Some(90)).then(|| {
                    (
                        last["median"].as_f64().unwrap(),
                        t["trial"].as_u64().unwrap(),
                    )
                })
            })
            .min_by(|a, b| a.partial_cmp(b).unwrap())
            .unwrap();
        assert_eq!(point["chosen_trial"].as_u64(), Some(best.1), "{point:?}");
        chosen.push(point["chosen"]["train.lr"].as_f64().unwrap());
    }
    // Rungs 10, 30, 90: a rung where no trial had left the baseline passes every trial
    // on; any other passes a third of them (rounded up).
    for point in tuning["points"].as_sequence().unwrap() {
        let kept_all: Vec<u64> = point["all_kept_at_baseline"]
            .as_sequence()
            .map_or(Vec::new(), |s| {
                s.iter().map(|v| v.as_u64().unwrap()).collect()
            });
        let reached = |rungs: usize| {
            point["trials"]
                .as_sequence()
                .unwrap()
                .iter()
                .filter(|t| t["rungs"].as_sequence().unwrap().len() >= rungs)
                .count()
        };
        for (rung, steps) in [10u64, 30].into_iter().enumerate() {
            let (now, next) = (reached(rung + 1), reached(rung + 2));
            if kept_all.contains(&steps) {
                assert_eq!(next, now, "{point:?}");
            } else {
                assert_eq!(next, now.div_ceil(3), "{point:?}");
            }
        }
    }
    // `rnnlab plan` lists the candidates that trained, one per sixth of the log range
    // ln(1e-3)..ln(2): [1e-3, 3.55e-3), …, [0.563, 2).
    let plan = ok(&rnnlab(&["plan", file.to_str().unwrap()]));
    let listed: Vec<f64> = plan
        .lines()
        .filter_map(|l| l.trim().strip_prefix("trial ")?.split_once(": train.lr="))
        .map(|(_, lr)| lr.parse().unwrap())
        .collect();
    let trained: Vec<f64> = tuning["points"][0]["trials"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t["settings"]["train.lr"].as_f64().unwrap())
        .collect();
    assert_eq!(listed, trained, "{plan}");
    let mut strata: Vec<usize> = listed
        .iter()
        .map(|lr| ((lr / 1e-3).ln() / 2000f64.ln() * 6.0) as usize)
        .collect();
    strata.sort_unstable();
    assert_eq!(strata, vec![0, 1, 2, 3, 4, 5], "{listed:?}");
    // The report shows the choices.
    ok(&rnnlab(&["report", out.join("tuned").to_str().unwrap()]));
    let report = std::fs::read_to_string(out.join("tuned/REPORT.md")).unwrap();
    assert!(report.contains("## Tuning"), "{report}");
    assert!(report.contains("| LSTM | train.lr="), "{report}");
    // Evaluation runs use their arm's choice on the evaluation seeds, and none diverges.
    let evaluated = runs(&out.join("tuned"));
    assert_eq!(evaluated.len(), 4);
    for (cell, lr, status) in &evaluated {
        let k = usize::from(cell == "rnn_relu");
        assert_eq!(*lr, chosen[k], "{cell}");
        assert_eq!(status, "done", "{cell} at lr {lr}");
    }
    // Without tuning, the shared rate makes the LSTM diverge.
    let untuned = TUNED[..TUNED.find("tuning:").unwrap()].replace("name: tuned", "name: shared");
    let (file, out) = setup("shared", &untuned);
    ok(&rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--no-report",
    ]));
    let shared = runs(&out.join("shared"));
    assert!(
        shared
            .iter()
            .any(|(cell, _, status)| cell == "lstm" && status == "diverged"),
        "{shared:?}"
    );
}

#[test]
fn tuning_and_evaluation_seeds_must_be_disjoint() {
    let (file, _) = setup(
        "seeds",
        &TUNED.replace("seeds: [100, 101]", "seeds: [1, 101]"),
    );
    let output = rnnlab(&["plan", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let err = String::from_utf8_lossy(&output.stderr);
    assert!(
        err.contains("`tuning.seeds` and `seeds` share seed 1"),
        "{err}"
    );
}

#[test]
fn a_killed_tuning_resumes_to_the_same_choices_and_numbers() {
    let longer = TUNED
        .replace("steps: 90", "steps: 270")
        .replace("hidden: 8", "hidden: 24");
    let (file, clean) = setup("clean", &longer);
    let clean_args = [
        "run",
        file.to_str().unwrap(),
        "--out",
        clean.to_str().unwrap(),
        "--no-report",
    ];
    ok(&rnnlab(&clean_args));

    let killed = clean.with_file_name("killed");
    let args = [
        "run",
        file.to_str().unwrap(),
        "--out",
        killed.to_str().unwrap(),
        "--no-report",
    ];
    let mut interrupted = 0;
    for delay in [150, 300, 450] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rnnlab"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        if child.try_wait().unwrap().is_none() {
            interrupted += 1;
        }
        let _ = child.kill();
        child.wait().unwrap();
    }
    ok(&rnnlab(&args));
    assert!(interrupted > 0, "every attempt finished before its kill");
    assert_eq!(
        std::fs::read(clean.join("tuned/tuning.yaml")).unwrap(),
        std::fs::read(killed.join("tuned/tuning.yaml")).unwrap()
    );
    for run in std::fs::read_dir(clean.join("tuned/runs")).unwrap() {
        let run = run.unwrap().path();
        let other = killed.join("tuned/runs").join(run.file_name().unwrap());
        for file in ["metrics.parquet", "gradflow.parquet", "weights.safetensors"] {
            assert!(
                std::fs::read(run.join(file)).unwrap() == std::fs::read(other.join(file)).unwrap(),
                "{}",
                run.join(file).display()
            );
        }
    }
}

#[test]
fn status_shows_the_rung_under_way_while_tuning() {
    let (file, results) = setup("status", TUNED);
    let out = results.to_str().unwrap();
    ok(&rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out,
        "--no-report",
    ]));
    // Without tuning.yaml the folder reads as still tuning, at its last rung (rungs 10,
    // 30, 90): every trial that reached 90 steps, on 2 seeds.
    let record = yaml(&results.join("tuned/tuning.yaml"));
    let at_last_rung: usize = record["points"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|point| {
            point["trials"]
                .as_sequence()
                .unwrap()
                .iter()
                .filter(|t| t["rungs"].as_sequence().unwrap().len() == 3)
                .count()
        })
        .sum();
    std::fs::remove_file(results.join("tuned/tuning.yaml")).unwrap();
    let printed = ok(&rnnlab(&[
        "status",
        results.join("tuned").to_str().unwrap(),
    ]));
    assert!(
        printed.contains("tuning rung 3 of 3 (90 steps)"),
        "{printed}"
    );
    let counts = printed.lines().nth(1).unwrap();
    let total: usize = counts
        .split(", ")
        .map(|part| part.rsplit(' ').next().unwrap().parse::<usize>().unwrap())
        .sum();
    assert_eq!(total, 2 * at_last_rung, "{printed}");
    assert!(counts.contains("pending 0"), "{printed}");
}

/// A GRU on 2-class temporal order (T = 10) sits at chance for its first 20 steps at
/// every rate; by 60 steps one rate has learned the task. Rungs 20, 60, 180.
const PLATEAU: &str = "name: plateau
description: no candidate leaves the baseline at the first rung
seeds: [0]
base:
  task: { kind: temporal_order, seq_len: 10, classes: 2 }
  model: { cell: gru, hidden: 16 }
  train: { optimizer: adam, lr: 1.0e-2, steps: 180, batch_size: 32, eval_every: 20, eval_samples: 128 }
tuning:
  space:
    train.lr: { log_uniform: [1.0e-4, 1.0e-1] }
  trials: 6
  seeds: [100, 101]
  min_steps: 20
  eta: 3
";

#[test]
fn no_candidate_is_dropped_while_all_are_at_the_baseline() {
    let (file, out) = setup("plateau", PLATEAU);
    ok(&rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let tuning = yaml(&out.join("plateau/tuning.yaml"));
    let point = &tuning["points"][0];
    // At 20 steps every trial is at chance (ln 2 = 0.693; the bar is 0.9 × that), so all
    // six go on; at 60 one has learned, and a third of them go on to 180.
    assert_eq!(
        point["all_kept_at_baseline"],
        serde_yaml::from_str::<Value>("[20]").unwrap()
    );
    let trials = point["trials"].as_sequence().unwrap();
    let medians = |rung: usize| -> Vec<Option<f64>> {
        trials
            .iter()
            .map(|t| t["rungs"][rung]["median"].as_f64())
            .collect()
    };
    let (first, second) = (medians(0), medians(1));
    assert!(
        first.iter().all(|m| m.unwrap() > 0.9 * 2f64.ln()),
        "{first:?}"
    );
    assert!(
        second.iter().all(Option::is_some),
        "all six reached 60 steps"
    );
    assert_eq!(medians(2).iter().flatten().count(), 2);
    // The winner learned, and at 20 steps it ranked below the third that halving
    // without this rule would have kept: the rule is what found it.
    let chosen = point["chosen_trial"].as_u64().unwrap() as usize;
    assert!(medians(2)[chosen].unwrap() < 0.1, "{point:?}");
    let better_at_first = first
        .iter()
        .filter(|m| m.unwrap() < first[chosen].unwrap())
        .count();
    assert!(better_at_first >= 2, "{first:?}");
    let report = std::fs::read_to_string(out.join("plateau/REPORT.md")).unwrap();
    assert!(
        report.contains("**1 of 1 points had no candidate off the baseline"),
        "{report}"
    );
}
