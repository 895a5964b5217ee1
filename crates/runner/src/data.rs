//! `rnnlab data`: look at and export the tasks' samples.

use std::fs::File;
use std::path::Path;

use anyhow::Context;
use polars::prelude::{
    DataFrame, KeyValueMetadata, NamedFrom, ParquetWriter, PolarsResult, ReshapeDimension, Series,
};
use rnnlab_tasks::{Sample, Split, Target, Task, TaskConfig, TaskError};

use crate::cli::{ExportArgs, ShowArgs, SplitName, TaskArgs};
use crate::error::UsageError;
use crate::store::write_atomic;

/// Refuse exports larger than this many input values (1 GiB of f32): split them with
/// `--first`/`--count` instead.
const MAX_EXPORT_VALUES: u64 = 1 << 28;

fn split(name: SplitName) -> Split {
    match name {
        SplitName::Train => Split::Train,
        SplitName::Validation => Split::Validation,
        SplitName::Test => Split::Test,
    }
}

/// The task the options describe, or a usage error that names the bad option.
pub fn task(args: &TaskArgs) -> Result<Task, UsageError> {
    Task::from_name(args.task.as_str(), args.seq_len, args.classes).map_err(|err| {
        let option = match err {
            TaskError::SeqLen { .. } => "--seq-len",
            TaskError::Classes(_) => "--classes",
            TaskError::UnknownTask(_) => "--task",
        };
        UsageError(format!("invalid {option}: {err}"))
    })
}

/// `rnnlab data show`: one sample, readable.
pub fn show(args: &ShowArgs) -> anyhow::Result<()> {
    let task = task(&args.task)?;
    let sample = task.sample(args.task.seed, split(args.task.split), args.index);
    println!(
        "seed {}, split {}, index {}",
        args.task.seed,
        split(args.task.split),
        args.index
    );
    print!("{}", task.render(&sample));
    Ok(())
}

/// `rnnlab data export`: samples to a Parquet file, written under a temporary name and
/// renamed into place, so the file is complete or absent.
pub fn export(args: &ExportArgs) -> anyhow::Result<()> {
    let task = task(&args.task)?;
    let values = args.count * (task.input_len() * task.input_size()) as u64;
    if values > MAX_EXPORT_VALUES {
        return Err(UsageError(format!(
            "invalid --count: {} samples are {values} input values, more than the {MAX_EXPORT_VALUES} \
             one file may hold; export in parts with --first and --count",
            args.count
        ))
        .into());
    }
    let Some(last) = args.first.checked_add(args.count) else {
        return Err(UsageError("invalid --first: --first + --count overflows".into()).into());
    };
    check_destination(&args.out)?;

    let split = split(args.task.split);
    let samples: Vec<Sample> = (args.first..last)
        .map(|index| task.sample(args.task.seed, split, index))
        .collect();
    let mut frame = samples_frame(&task, args.first, &samples).context("building the table")?;
    let metadata = export_metadata(&task, args, split);
    write_atomic(&args.out, |temp| {
        let file = File::create(temp).with_context(|| format!("creating {}", temp.display()))?;
        ParquetWriter::new(file)
            .with_key_value_metadata(Some(KeyValueMetadata::from_static(metadata)))
            .finish(&mut frame)
            .with_context(|| format!("writing {}", temp.display()))?;
        Ok(())
    })?;
    println!(
        "wrote {} {} samples (T = {}, seed {}, {split}, indices {}..{last}) to {}",
        args.count,
        task.name(),
        task.config_seq_len(),
        args.task.seed,
        args.first,
        args.out.display()
    );
    Ok(())
}

/// Columns `index` (u64), `input` (list of steps, each a list of f32 features) and
/// `target` (list: f32 for adding, i32 class ids otherwise).
fn samples_frame(task: &Task, first: u64, samples: &[Sample]) -> PolarsResult<DataFrame> {
    let count = samples.len();
    let index: Vec<u64> = (first..first + count as u64).collect();
    // reshape_list makes one level of lists: steps per sample, then one list per sample.
    let steps = [task.input_len(), task.input_size()].map(|d| ReshapeDimension::new(d as i64));
    let inputs = samples
        .iter()
        .map(|s| Series::new("".into(), s.input.as_slice()).reshape_list(&steps))
        .collect::<PolarsResult<Vec<Series>>>()?;
    let input = Series::new("input".into(), inputs);
    let target = match samples.first().map(|s| &s.target) {
        Some(Target::Value(_)) => {
            let values: Vec<f32> = samples
                .iter()
                .map(|s| match s.target {
                    Target::Value(value) => value,
                    _ => unreachable!("one task, one kind of target"),
                })
                .collect();
            Series::new("target".into(), values)
        }
        _ => {
            let classes: Vec<i32> = samples
                .iter()
                .flat_map(|s| match &s.target {
                    Target::Steps(steps) => steps.iter().map(|&c| c as i32).collect(),
                    Target::Class(class) => vec![*class as i32],
                    Target::Value(_) => unreachable!("one task, one kind of target"),
                })
                .collect();
            Series::new("target".into(), classes)
        }
    };
    let target =
        target.reshape_list(&[ReshapeDimension::new(count as i64), ReshapeDimension::Infer])?;
    DataFrame::new(
        count,
        vec![
            Series::new("index".into(), index).into(),
            input.into(),
            target.into(),
        ],
    )
}

/// The task's parameters and the export's provenance, as Parquet key-value metadata.
fn export_metadata(task: &Task, args: &ExportArgs, split: Split) -> Vec<(String, String)> {
    let mut pairs = vec![
        ("rnnlab.task", task.name().to_owned()),
        ("rnnlab.seq_len", task.config_seq_len().to_string()),
        ("rnnlab.input_len", task.input_len().to_string()),
        ("rnnlab.input_size", task.input_size().to_string()),
        ("rnnlab.output_size", task.output_size().to_string()),
        ("rnnlab.baseline_loss", task.baseline().to_string()),
        ("rnnlab.seed", args.task.seed.to_string()),
        ("rnnlab.split", split.to_string()),
        ("rnnlab.first", args.first.to_string()),
        ("rnnlab.count", args.count.to_string()),
        ("rnnlab.version", env!("CARGO_PKG_VERSION").to_owned()),
    ];
    if let TaskConfig::TemporalOrder { classes, .. } = task.config() {
        pairs.push(("rnnlab.classes", classes.to_string()));
    }
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// Checks that `dest` can be written (a usage error naming `--out` otherwise) before
/// any sample is generated.
fn check_destination(dest: &Path) -> Result<(), UsageError> {
    let bad = |why: String| UsageError(format!("invalid --out {}: {why}", dest.display()));
    let name = dest
        .file_name()
        .ok_or_else(|| bad("not a file name".into()))?;
    if dest.is_dir() {
        return Err(bad("is a directory".into()));
    }
    let dir = match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        return Err(bad(format!("directory {} does not exist", dir.display())));
    }
    // The folder may exist and still refuse new files (read-only): try one.
    let probe = dir.join(format!(
        ".{}.probe-{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    File::create(&probe).map_err(|err| bad(format!("cannot write there: {err}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
