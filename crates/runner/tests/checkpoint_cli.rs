//! Checkpoints end to end: runs killed with SIGKILL at many moments mid-training resume to
//! files bit-identical to an uninterrupted run (steps and shuffled-epochs budgets, one and
//! two jobs), a longer budget continues a shorter run to the numbers of a run trained
//! with it from the start, and a damaged checkpoint is refused with a warning.

mod common;

use common::{ok, rnnlab};

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Two cells, a checkpoint every 7 steps; `BUDGET` is replaced by the budget under test.
const EXPERIMENT: &str = "name: ckpt
description: checkpoints
base:
  task: { kind: adding, seq_len: 60 }
  model: { cell: lstm, hidden: 48 }
  train: { BUDGET, batch_size: 32, eval_every: 25, eval_samples: 64, checkpoint_every: 7 }
sweep:
  model.cell: [lstm, gru]
";

fn setup(name: &str, budget: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("rnnlab-ckpt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("ckpt.yaml");
    std::fs::write(&file, EXPERIMENT.replace("BUDGET", budget)).unwrap();
    (file, dir)
}

fn run_dirs(experiment: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(experiment.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

/// A summary without the fields that measure wall time.
fn summary(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("summary.yaml"))
        .unwrap()
        .lines()
        .filter(|l| {
            !["wall_s", "samples_per_s", "peak_rss_mb"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every run's tables, weights and summary are the same bytes in `a` and `b`.
fn assert_same_runs(a: &Path, b: &Path) {
    let (a, b) = (run_dirs(a), run_dirs(b));
    assert_eq!(a.len(), b.len());
    for (a, b) in a.iter().zip(&b) {
        assert_eq!(a.file_name(), b.file_name());
        for file in ["metrics.parquet", "gradflow.parquet", "weights.safetensors"] {
            let (x, y) = (
                std::fs::read(a.join(file)).unwrap(),
                std::fs::read(b.join(file)).unwrap(),
            );
            assert!(
                x == y,
                "{} differs from {}",
                a.join(file).display(),
                b.join(file).display()
            );
        }
        assert_eq!(summary(a), summary(b), "{}", a.display());
    }
}

/// Whether a checkpoint under `out` was written after `since`.
fn checkpointed_since(out: &Path, since: std::time::SystemTime) -> bool {
    let Ok(runs) = std::fs::read_dir(out.join("ckpt/runs")) else {
        return false;
    };
    runs.filter_map(Result::ok).any(|run| {
        std::fs::metadata(run.path().join("checkpoint.safetensors"))
            .and_then(|m| m.modified())
            .is_ok_and(|modified| modified >= since)
    })
}

/// Runs `rnnlab run` and, for each of `delays`, kills it (SIGKILL) that many ms after
/// it wrote its first checkpoint, then lets it finish; returns how many of the restarts
/// resumed from a checkpoint.
fn run_with_kills(file: &Path, out: &Path, jobs: &str, delays: &[u64]) -> usize {
    let args = [
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--jobs",
        jobs,
        "--no-report",
    ];
    let mut resumed = 0;
    for &delay in delays {
        let spawned = std::time::SystemTime::now();
        let mut child = Command::new(env!("CARGO_BIN_EXE_rnnlab"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut killed_at = None;
        while child.try_wait().unwrap().is_none() {
            match killed_at {
                None if checkpointed_since(out, spawned) => {
                    killed_at = Some(Instant::now() + Duration::from_millis(delay));
                }
                Some(at) if Instant::now() >= at => break,
                _ => {}
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let output = child.wait_with_output().unwrap();
        resumed += String::from_utf8_lossy(&output.stderr)
            .matches("resumes after step")
            .count();
    }
    let last = rnnlab(&args);
    ok(&last);
    resumed
        + String::from_utf8_lossy(&last.stderr)
            .matches("resumes after step")
            .count()
}

/// Kill moments after an attempt's first checkpoint, from a fixed pseudo-random
/// sequence in `0..max_ms`.
fn delays(count: usize, max_ms: u64) -> Vec<u64> {
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    (0..count)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % max_ms
        })
        .collect()
}

fn killed_runs_equal_an_uninterrupted_sweep(name: &str, budget: &str, jobs: &str) {
    let (file, dir) = setup(name, budget);
    let clean = dir.join("clean");
    let started = Instant::now();
    ok(&rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        clean.to_str().unwrap(),
        "--no-report",
    ]));
    // Each attempt is killed within a fifth of the time the whole sweep takes
    // uninterrupted (about 2 s) after its first checkpoint, so most kills land mid-run.
    let span = started.elapsed().as_millis() as u64;
    let killed = dir.join("killed");
    let resumed = run_with_kills(&file, &killed, jobs, &delays(6, (span / 5).max(50)));
    assert!(
        resumed > 0,
        "no kill landed after a checkpoint: nothing was tested"
    );
    assert_same_runs(&clean.join("ckpt"), &killed.join("ckpt"));
}

#[test]
fn sigkilled_steps_runs_resume_bit_for_bit_with_one_and_two_jobs() {
    killed_runs_equal_an_uninterrupted_sweep("steps1", "steps: 400", "1");
    killed_runs_equal_an_uninterrupted_sweep("steps2", "steps: 400", "2");
}

#[test]
fn sigkilled_shuffled_epochs_runs_resume_bit_for_bit() {
    // 20 batches an epoch, each epoch in its own order.
    killed_runs_equal_an_uninterrupted_sweep("epochs", "epochs: 20, samples: 640", "2");
}

#[test]
fn a_longer_budget_continues_the_shorter_run_to_the_same_numbers() {
    // 60 steps end off the evaluation grid (eval_every 25) and off the gradient-flow
    // schedule (powers of two): the continued run must drop what only the short run's
    // end recorded.
    let (file, dir) = setup("extend", "steps: 60");
    let extended = dir.join("extended");
    let out = extended.to_str().unwrap();
    ok(&rnnlab(&["run", file.to_str().unwrap(), "--out", out]));
    let longer = rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out,
        "--set",
        "train.steps=150",
    ]);
    ok(&longer);
    let said = String::from_utf8_lossy(&longer.stderr);
    assert_eq!(said.matches("continues run").count(), 2, "{said}");

    let direct = dir.join("direct");
    ok(&rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        direct.to_str().unwrap(),
        "--set",
        "train.steps=150",
    ]));
    // The extended folder also holds the two 60-step runs; compare the 150-step ones.
    let long_ids: Vec<PathBuf> = run_dirs(&direct.join("ckpt"));
    for run in &long_ids {
        let id = run.file_name().unwrap();
        let other = extended.join("ckpt/runs").join(id);
        for file in ["metrics.parquet", "gradflow.parquet", "weights.safetensors"] {
            assert!(
                std::fs::read(run.join(file)).unwrap() == std::fs::read(other.join(file)).unwrap(),
                "{file} of {id:?} differs"
            );
        }
        assert_eq!(summary(run), summary(&other));
    }
}

#[test]
fn a_damaged_checkpoint_is_refused_and_the_run_starts_over() {
    let (file, dir) = setup("damaged", "steps: 40");
    let out = dir.join("out");
    let args = [
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    ok(&rnnlab(&args));
    let runs = run_dirs(&out.join("ckpt"));
    for run in &runs {
        std::fs::remove_file(run.join("summary.yaml")).unwrap();
    }
    // Unfinished runs show the step of their checkpoint.
    let status = ok(&rnnlab(&["status", out.join("ckpt").to_str().unwrap()]));
    assert!(status.contains("pending 2"), "{status}");
    assert_eq!(status.matches("(step 40)").count(), 2, "{status}");
    // Damage the checkpoints: one truncated, one with a flipped byte.
    for (k, run) in runs.iter().enumerate() {
        let path = run.join("checkpoint.safetensors");
        let mut bytes = std::fs::read(&path).unwrap();
        if k == 0 {
            bytes.truncate(bytes.len() / 2);
        } else {
            let at = bytes.len() - 11;
            bytes[at] ^= 0x10;
        }
        std::fs::write(&path, bytes).unwrap();
    }
    let again = rnnlab(&args);
    ok(&again);
    let said = String::from_utf8_lossy(&again.stderr);
    for run in &runs {
        let path = run.join("checkpoint.safetensors");
        assert!(
            said.contains(&format!("warning: ignoring {}", path.display())),
            "{said}"
        );
    }
    assert!(said.contains("checksum"), "{said}");
    assert_eq!(said.matches("starts from step 0").count(), 2, "{said}");
    let clean = dir.join("clean");
    ok(&rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        clean.to_str().unwrap(),
    ]));
    assert_same_runs(&clean.join("ckpt"), &out.join("ckpt"));
}
