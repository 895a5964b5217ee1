//! `rnnlab slurm` without a Slurm: the batch scripts it writes (`--dry-run`), run by hand
//! as Slurm would run them, train every run once and report; the errors it gives where
//! `sbatch` is missing; and a complete sweep submits nothing. `scripts/slurm-test.sh`
//! tests the same command against a real Slurm.

mod common;

use common::{ok, rnnlab};

use std::path::{Path, PathBuf};
use std::process::Command;

const SWEEP: &str = "name: sharded
description: four small runs for the Slurm scripts
seeds: [0, 1]
base:
  task: { kind: adding, seq_len: 8 }
  model: { cell: lstm, hidden: 6 }
  train: { optimizer: adam, lr: 0.01, steps: 20, batch_size: 8, eval_every: 10, eval_samples: 32 }
sweep:
  model.cell: [lstm, gru]
";

fn setup(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("rnnlab-slurm-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("sharded.yaml");
    std::fs::write(&file, SWEEP).unwrap();
    (file, dir.join("results"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_scripts_train_every_run_once_and_report() {
    let (file, out) = setup("scripts");
    let listed = ok(&rnnlab(&[
        "slurm",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--tasks",
        "10",
        "--cpus-per-task",
        "2",
        "--time",
        "1:00:00",
        "--partition",
        "short",
        "--mem",
        "2G",
        "--extra=--qos=low",
        "--set",
        "train.lr=0.02",
        "--dry-run",
    ]));
    let slurm = out.join("sharded/slurm");
    assert!(listed.contains("(4 tasks)"), "{listed}");
    let array = read(&slurm.join("array.sbatch"));
    // Ten tasks asked for, four runs: no task without a run.
    for line in [
        "#SBATCH --array=1-4",
        "#SBATCH --cpus-per-task=2",
        "#SBATCH --requeue",
        "#SBATCH --time=1:00:00",
        "#SBATCH --partition=short",
        "#SBATCH --mem=2G",
        "#SBATCH --qos=low",
        "--shard \"$SLURM_ARRAY_TASK_ID/4\" --jobs 2 --no-report --set 'train.lr=0.02'",
    ] {
        assert!(
            array.contains(line),
            "array.sbatch lacks {line:?}:\n{array}"
        );
    }
    let binary = Path::new(env!("CARGO_BIN_EXE_rnnlab"))
        .canonicalize()
        .unwrap();
    assert!(
        array.contains(&format!("exec '{}' run", binary.display())),
        "{array}"
    );
    assert!(
        !slurm.join("jobs.yaml").exists(),
        "a dry run submits nothing"
    );

    // Slurm runs the array's tasks (here one after another), then the report job.
    for task in 1..=4 {
        let status = Command::new("bash")
            .arg(slurm.join("array.sbatch"))
            .env("SLURM_ARRAY_TASK_ID", task.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "task {task}");
    }
    let report = Command::new("bash")
        .arg(slurm.join("report.sbatch"))
        .output()
        .unwrap();
    ok(&report);
    assert!(out.join("sharded/REPORT.md").is_file());
    let status = ok(&rnnlab(&["status", out.join("sharded").to_str().unwrap()]));
    assert!(status.starts_with("done 4, "), "{status}");
    for run in std::fs::read_dir(out.join("sharded/runs")).unwrap() {
        let config = read(&run.unwrap().path().join("config.yaml"));
        assert!(config.contains("lr: 0.02"), "{config}");
    }

    // Complete: nothing to submit, even where there is no sbatch.
    let again = Command::new(env!("CARGO_BIN_EXE_rnnlab"))
        .args([
            "slurm",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--set",
            "train.lr=0.02",
        ])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(ok(&again).contains("all 4 runs are complete"), "{again:?}");
}

#[test]
fn without_sbatch_it_says_so_and_names_dry_run() {
    let (file, out) = setup("no-sbatch");
    let output = Command::new(env!("CARGO_BIN_EXE_rnnlab"))
        .args([
            "slurm",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot run sbatch") && stderr.contains("--dry-run"),
        "{stderr}"
    );
}

#[test]
fn a_failed_run_is_named_in_the_report() {
    let (file, out) = setup("failed");
    ok(&rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    let dir = out.join("sharded");
    // One run as a failed one is left: no summary, its error recorded.
    let victim = std::fs::read_dir(dir.join("runs"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::remove_file(victim.join("summary.yaml")).unwrap();
    let id = victim.file_name().unwrap().to_string_lossy().into_owned();
    std::fs::write(
        victim.join("failed.yaml"),
        format!("id: {id}\nerror: 'out of memory: allocating 8 GiB'\n"),
    )
    .unwrap();
    ok(&rnnlab(&["report", dir.to_str().unwrap()]));
    let report = read(&dir.join("REPORT.md"));
    assert!(
        report.contains("3 of 4 runs complete")
            && report.contains(&format!(
                "**1 failed** and are left out: `{id}` (out of memory"
            )),
        "{report}"
    );
}
