//! `rnnlab data` end to end: the binary writes Parquet that reads back to the library's
//! samples, refuses bad options with exit code 2, and leaves no partial file.

mod common;

use common::rnnlab;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Output;

use polars::prelude::*;
use rnnlab_tasks::{Split, Target, Task, TaskConfig};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rnnlab-data-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn read(path: &Path) -> (DataFrame, Vec<(String, String)>) {
    let mut reader = ParquetReader::new(File::open(path).unwrap());
    let metadata = reader
        .get_metadata()
        .unwrap()
        .key_value_metadata()
        .clone()
        .unwrap_or_default();
    let pairs = metadata
        .into_iter()
        .map(|kv| (kv.key, kv.value.unwrap_or_default()))
        .collect();
    (reader.finish().unwrap(), pairs)
}

fn export(out: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["data", "export", "--out", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    rnnlab(&args)
}

/// The f32 values of row `row` of a `list[list[f32]]` or `list[f32]` column, flattened.
fn floats(frame: &DataFrame, column: &str, row: usize) -> Vec<f32> {
    let cell = frame
        .column(column)
        .unwrap()
        .as_materialized_series()
        .slice(row as i64, 1);
    let mut s = cell
        .explode(ExplodeOptions {
            empty_as_null: false,
            keep_nulls: true,
        })
        .unwrap();
    while let DataType::List(_) = s.dtype() {
        s = s
            .explode(ExplodeOptions {
                empty_as_null: false,
                keep_nulls: true,
            })
            .unwrap();
    }
    s.cast(&DataType::Float32)
        .unwrap()
        .f32()
        .unwrap()
        .into_no_null_iter()
        .collect()
}

#[test]
fn export_writes_the_library_samples_with_metadata() {
    let dir = scratch("adding");
    let out = dir.join("adding.parquet");
    let args = [
        "--task",
        "adding",
        "--seq-len",
        "30",
        "--count",
        "50",
        "--seed",
        "7",
        "--split",
        "validation",
    ];
    let result = export(&out, &args);
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let (frame, metadata) = read(&out);
    assert_eq!(frame.height(), 50);
    let names: Vec<&str> = frame
        .get_column_names()
        .iter()
        .map(|n| n.as_str())
        .collect();
    assert_eq!(names, ["index", "input", "target"]);
    assert_eq!(
        frame.column("input").unwrap().dtype(),
        &DataType::List(Box::new(DataType::List(Box::new(DataType::Float32))))
    );
    let task = Task::new(TaskConfig::Adding { seq_len: 30 }).unwrap();
    for row in [0usize, 17, 49] {
        let sample = task.sample(7, Split::Validation, row as u64);
        assert_eq!(floats(&frame, "input", row), sample.input);
        let Target::Value(target) = sample.target else {
            unreachable!()
        };
        assert_eq!(floats(&frame, "target", row), vec![target]);
    }
    let get = |key: &str| {
        metadata
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get("rnnlab.task"), Some("adding"));
    assert_eq!(get("rnnlab.seq_len"), Some("30"));
    assert_eq!(get("rnnlab.split"), Some("validation"));
    assert_eq!(get("rnnlab.seed"), Some("7"));

    // Twice the same command, the same bytes.
    let again = dir.join("again.parquet");
    assert!(export(&again, &args).status.success());
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn export_of_class_tasks_has_integer_targets() {
    let dir = scratch("classes");
    let copy = dir.join("copy.parquet");
    assert!(
        export(
            &copy,
            &[
                "--task",
                "copy",
                "--seq-len",
                "5",
                "--count",
                "3",
                "--first",
                "10"
            ]
        )
        .status
        .success()
    );
    let (frame, _) = read(&copy);
    let Target::Steps(steps) = Task::new(TaskConfig::Copy { seq_len: 5 })
        .unwrap()
        .sample(0, Split::Train, 11)
        .target
    else {
        unreachable!()
    };
    let want: Vec<f32> = steps.iter().map(|&s| s as f32).collect();
    assert_eq!(floats(&frame, "target", 1), want);
    assert_eq!(
        frame.column("index").unwrap().u64().unwrap().get(1),
        Some(11)
    );

    let order = dir.join("order.parquet");
    let args = [
        "--task",
        "temporal_order",
        "--seq-len",
        "20",
        "--classes",
        "2",
        "--count",
        "4",
    ];
    assert!(export(&order, &args).status.success());
    let (frame, metadata) = read(&order);
    assert_eq!(
        frame.column("target").unwrap().dtype(),
        &DataType::List(Box::new(DataType::Int32))
    );
    assert!(metadata.contains(&("rnnlab.classes".into(), "2".into())));
    std::fs::remove_dir_all(dir).unwrap();
}

fn assert_usage_error(result: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
}

#[test]
fn bad_options_exit_2_and_leave_nothing() {
    let dir = scratch("bad");
    let out = dir.join("x.parquet");
    let base = ["--seq-len", "10", "--count", "5"];
    let with = |extra: &[&'static str]| -> Vec<&'static str> { [&base[..], extra].concat() };
    assert_usage_error(&export(&out, &with(&["--task", "parity"])), "--task");
    assert_usage_error(
        &export(
            &out,
            &["--task", "adding", "--seq-len", "1", "--count", "5"],
        ),
        "invalid --seq-len",
    );
    assert_usage_error(
        &export(
            &out,
            &["--task", "adding", "--seq-len", "10", "--count", "0"],
        ),
        "--count",
    );
    assert_usage_error(
        &export(&out, &with(&["--task", "temporal_order", "--classes", "3"])),
        "invalid --classes",
    );
    let missing = dir.join("no/such/dir/x.parquet");
    assert_usage_error(
        &export(&missing, &with(&["--task", "adding"])),
        "does not exist",
    );
    assert_usage_error(
        &export(&dir, &with(&["--task", "adding"])),
        "is a directory",
    );
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "something was left behind"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn show_prints_a_readable_sample() {
    let result = rnnlab(&[
        "data",
        "show",
        "--task",
        "copy",
        "--seq-len",
        "20",
        "--seed",
        "1",
    ]);
    assert!(result.status.success());
    let text = String::from_utf8(result.stdout).unwrap();
    assert!(text.contains("copy, T = 20"), "{text}");
    let Target::Steps(target) = Task::new(TaskConfig::Copy { seq_len: 20 })
        .unwrap()
        .sample(1, Split::Train, 0)
        .target
    else {
        unreachable!()
    };
    let recalled: Vec<String> = target[30..].iter().map(u32::to_string).collect();
    assert!(text.contains(&recalled.join(" ")), "{text}");

    let result = rnnlab(&[
        "data",
        "show",
        "--task",
        "temporal_order",
        "--seq-len",
        "30",
        "--classes",
        "2",
    ]);
    let text = String::from_utf8(result.stdout).unwrap();
    assert!(
        text.contains("markers") && (text.contains("same") || text.contains("different")),
        "{text}"
    );
}

#[test]
fn version_and_help() {
    let result = rnnlab(&["--version"]);
    // The version and the commit the binary was built from (a 40-digit sha, "-dirty"
    // while tracked files are edited, or "unknown" outside a git checkout).
    let version = String::from_utf8(result.stdout).unwrap();
    let commit = version
        .trim()
        .strip_prefix(&format!("rnnlab {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{version}"));
    let sha = commit.strip_suffix("-dirty").unwrap_or(commit);
    assert!(
        commit == "unknown" || (sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit())),
        "{version}"
    );
    let help = String::from_utf8(rnnlab(&["--help"]).stdout).unwrap();
    assert!(help.contains("data"), "{help}");
}
