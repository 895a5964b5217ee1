//! `rnnlab slurm`: an experiment as a Slurm job array plus a report job after it.
//!
//! Task `I` of the array runs `rnnlab run FILE --out OUT --shard I/N --jobs C
//! --no-report`. Runs claim their folders with OS file locks, so no two tasks train one
//! run; tuning trials are trained by whichever task is free, and a task waits for trials
//! another task holds (see `crate::tune`). A requeued (`--requeue`), killed or resubmitted
//! task resumes its runs from their checkpoints. The report job
//! (`--dependency=afterany:<array>`) runs `rnnlab report` whatever the tasks' exit
//! status, and the report names the runs that failed.
//!
//! Assumes a shared filesystem: the binary, the experiment file and the results folder
//! are at the same absolute paths on the compute nodes as where `rnnlab slurm` runs.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_yaml::{Mapping, Value};

use crate::cli::SlurmArgs;
use crate::error::UsageError;
use crate::store::{ExperimentDir, read_plan, read_summary, write_text};
use crate::sweep::Experiment;

/// What one `rnnlab slurm` submitted, as kept in `slurm/jobs.yaml` (newest last).
const JOBS_FILE: &str = "jobs.yaml";

/// Writes the batch scripts and, unless `--dry-run`, submits them.
pub fn submit(args: &SlurmArgs) -> anyhow::Result<()> {
    let experiment =
        Experiment::load(&args.file, &args.overrides).map_err(|err| UsageError(err.to_string()))?;
    let dir = ExperimentDir::new(&args.out, &experiment.name);
    if let Some(total) = all_complete(&experiment, &dir)? {
        println!(
            "{}: all {total} runs are complete in {}; nothing submitted",
            experiment.name,
            dir.path().display()
        );
        return Ok(());
    }
    let slurm_dir = dir.slurm();
    std::fs::create_dir_all(&slurm_dir)
        .with_context(|| format!("creating {}", slurm_dir.display()))?;
    let absolute = |path: &Path| {
        path.canonicalize()
            .with_context(|| format!("resolving {}", path.display()))
    };
    let paths = Paths {
        binary: absolute(&std::env::current_exe().context("finding the rnnlab binary")?)?,
        file: absolute(&args.file)?,
        out: absolute(&args.out)?,
        dir: absolute(dir.path())?,
    };
    // An untuned experiment has no more shards worth starting than runs.
    let tasks = if experiment.tuning.is_some() {
        args.tasks.get()
    } else {
        args.tasks.get().min(experiment.runs.len())
    };
    let array = slurm_dir.join("array.sbatch");
    let report = slurm_dir.join("report.sbatch");
    write_text(&array, &array_script(args, &experiment.name, &paths, tasks))?;
    write_text(&report, &report_script(args, &experiment.name, &paths))?;
    if paths.dir.starts_with("/tmp") || paths.dir.starts_with("/dev/shm") {
        eprintln!(
            "note: {} is usually local to each node; the compute nodes must see it",
            paths.dir.display()
        );
    }
    if args.dry_run {
        println!(
            "wrote {} ({tasks} tasks) and {}; submit with\n  sbatch --parsable {}\n  \
             sbatch --dependency=afterany:<array job id> {}",
            array.display(),
            report.display(),
            array.display(),
            report.display()
        );
        return Ok(());
    }
    let array_job = sbatch(&[], &array)?;
    let report_job = sbatch(&[format!("--dependency=afterany:{array_job}")], &report)?;
    record_submission(&slurm_dir, &array_job, &report_job, tasks)?;
    println!(
        "{}: submitted array job {array_job} ({tasks} tasks) and report job {report_job} \
         (after the array); logs in {}/<job>_<task>.out; `rnnlab status {}` shows them",
        experiment.name,
        slurm_dir.display(),
        dir.path().display()
    );
    Ok(())
}

/// The absolute paths the compute nodes use.
struct Paths {
    binary: PathBuf,
    file: PathBuf,
    out: PathBuf,
    dir: PathBuf,
}

/// `Some(total)` if every run of the experiment is complete (for a tuned experiment:
/// tuning done and every evaluation run of its plan complete).
fn all_complete(experiment: &Experiment, dir: &ExperimentDir) -> anyhow::Result<Option<usize>> {
    let ids: Vec<String> = if experiment.tuning.is_some() {
        if !dir.path().join("tuning.yaml").exists() || !dir.plan().exists() {
            return Ok(None);
        }
        read_plan(dir)?
    } else {
        experiment.runs.iter().map(|run| run.id.clone()).collect()
    };
    for id in &ids {
        if read_summary(&dir.run(id))?.is_none() {
            return Ok(None);
        }
    }
    Ok(Some(ids.len()))
}

/// `'text'` for a POSIX shell.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn quote_path(path: &Path) -> String {
    quote(&path.display().to_string())
}

/// The `#SBATCH` lines both jobs share.
fn common_options(args: &SlurmArgs) -> String {
    let mut lines = String::new();
    for (option, value) in [
        ("time", &args.time),
        ("partition", &args.partition),
        ("account", &args.account),
        ("mem", &args.mem),
    ] {
        if let Some(value) = value {
            let _ = writeln!(lines, "#SBATCH --{option}={value}");
        }
    }
    for extra in &args.extra {
        let _ = writeln!(lines, "#SBATCH {extra}");
    }
    lines
}

fn array_script(args: &SlurmArgs, name: &str, paths: &Paths, tasks: usize) -> String {
    let cpus = args.cpus_per_task.get();
    let overrides: String = args
        .overrides
        .iter()
        .map(|set| format!(" --set {}", quote(set)))
        .collect();
    format!(
        "#!/bin/bash\n\
         # Written by `rnnlab slurm`: task I of {tasks} trains the runs k (in plan order) with\n\
         # k mod {tasks} = I - 1; tuning trials go to whichever task is free. A requeued or\n\
         # resubmitted task skips complete runs and resumes the others from their checkpoints.\n\
         #SBATCH --job-name=rnnlab-{name}\n\
         #SBATCH --array=1-{tasks}\n\
         #SBATCH --cpus-per-task={cpus}\n\
         #SBATCH --output={log}/%A_%a.out\n\
         #SBATCH --open-mode=append\n\
         #SBATCH --requeue\n\
         {common}\
         set -euo pipefail\n\
         exec {binary} run {file} --out {out} --shard \"$SLURM_ARRAY_TASK_ID/{tasks}\" --jobs {cpus} --no-report{overrides}\n",
        log = paths.dir.join("slurm").display(),
        common = common_options(args),
        binary = quote_path(&paths.binary),
        file = quote_path(&paths.file),
        out = quote_path(&paths.out),
    )
}

fn report_script(args: &SlurmArgs, name: &str, paths: &Paths) -> String {
    format!(
        "#!/bin/bash\n\
         # Written by `rnnlab slurm`: after the array (afterany), the figures and REPORT.md\n\
         # of every complete run; the report names the runs that failed.\n\
         #SBATCH --job-name=rnnlab-{name}-report\n\
         #SBATCH --cpus-per-task=1\n\
         #SBATCH --output={log}/%j-report.out\n\
         #SBATCH --open-mode=append\n\
         {common}\
         set -euo pipefail\n\
         exec {binary} report {dir}\n",
        log = paths.dir.join("slurm").display(),
        common = common_options(args),
        binary = quote_path(&paths.binary),
        dir = quote_path(&paths.dir),
    )
}

/// Submits `script`; returns the job id (`sbatch --parsable` prints `id[;cluster]`).
fn sbatch(options: &[String], script: &Path) -> anyhow::Result<String> {
    let output = Command::new("sbatch")
        .arg("--parsable")
        .args(options)
        .arg(script)
        .output()
        .map_err(|err| {
            UsageError(format!(
                "cannot run sbatch ({err}); on a machine without Slurm, --dry-run writes the \
                 scripts without submitting them"
            ))
        })?;
    if !output.status.success() {
        bail!(
            "sbatch {} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let id = stdout.trim().split(';').next().unwrap_or_default();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        bail!("sbatch {} printed no job id: {stdout:?}", script.display());
    }
    Ok(id.to_owned())
}

/// Appends this submission to `slurm/jobs.yaml`.
fn record_submission(
    slurm_dir: &Path,
    array_job: &str,
    report_job: &str,
    tasks: usize,
) -> anyhow::Result<()> {
    let path = slurm_dir.join(JOBS_FILE);
    let mut submissions = read_submissions(slurm_dir)?;
    let mut entry = Mapping::new();
    entry.insert("array_job".into(), array_job.into());
    entry.insert("report_job".into(), report_job.into());
    entry.insert("tasks".into(), (tasks as u64).into());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    entry.insert("submitted_unix_s".into(), now.into());
    submissions.push(Value::Mapping(entry));
    write_text(&path, &serde_yaml::to_string(&submissions)?)
        .with_context(|| format!("writing {}", path.display()))
}

fn read_submissions(slurm_dir: &Path) -> anyhow::Result<Vec<Value>> {
    let path = slurm_dir.join(JOBS_FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("reading {}", path.display()))
}

/// For `rnnlab status`: the latest submission's jobs and, where `squeue` or `sacct`
/// answer, the state of each array task and of the report job.
pub fn describe_jobs(dir: &ExperimentDir, out: &mut String) -> anyhow::Result<()> {
    let submissions = read_submissions(&dir.slurm())?;
    let Some(latest) = submissions.last() else {
        return Ok(());
    };
    let field = |key: &str| {
        latest[key]
            .as_str()
            .map_or_else(|| crate::sweep::scalar(&latest[key]), str::to_owned)
    };
    let (array_job, report_job) = (field("array_job"), field("report_job"));
    let earlier = match submissions.len() {
        1 => String::new(),
        n => format!(" (the latest of {n} submissions)"),
    };
    writeln!(
        out,
        "slurm: array job {array_job} ({} tasks), report job {report_job}{earlier}",
        field("tasks")
    )?;
    let jobs = format!("{array_job},{report_job}");
    // squeue knows jobs until slurmctld forgets them (MinJobAge, 5 min by default); sacct
    // knows finished ones where the cluster keeps accounting.
    let queue = query(
        "squeue",
        &["-h", "-t", "all", "-j", &jobs, "-o", "%i %T %r"],
    );
    let accounting = query(
        "sacct",
        &["-n", "-P", "-X", "-j", &jobs, "-o", "JobID,State"],
    );
    let lines = match (queue, accounting) {
        (Some(lines), _) if !lines.is_empty() => lines,
        (_, Some(lines)) if !lines.is_empty() => {
            lines.iter().map(|line| line.replace('|', " ")).collect()
        }
        (None, None) => vec![
            "(neither squeue nor sacct answered about these jobs: they have \
                               finished and the cluster keeps no accounting, or this is not \
                               a Slurm machine)"
                .to_owned(),
        ],
        _ => vec!["(not in the queue any more)".to_owned()],
    };
    for line in lines {
        writeln!(out, "  {line}")?;
    }
    Ok(())
}

/// The non-empty lines `program args` printed, if it ran and succeeded.
fn query(program: &str, args: &[&str]) -> Option<Vec<String>> {
    let output = Command::new(program).args(args).output().ok()?;
    output.status.success().then(|| {
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_spaces_and_quotes() {
        // 'it'\''s here' is the shell's way to write it's here in single quotes.
        assert_eq!(quote("it's here"), r"'it'\''s here'");
        assert_eq!(quote("/a b/c"), "'/a b/c'");
    }
}
