//! `rnnlab run` and `rnnlab status` on a tiny sweep: every run's folder and files, the
//! Parquet schemas, skipping complete runs, and bit-identical reruns with `--force`.

mod common;

use common::{ok, rnnlab};

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use polars::prelude::{DataFrame, DataType, ParquetReader, SerReader};

const TINY: &str = "name: tiny
description: two cells, two seeds, a few steps
seeds: [0, 1]
base:
  task: { kind: adding, seq_len: 6 }
  model: { cell: lstm, hidden: 4 }
  train: { steps: 12, batch_size: 8, eval_every: 5, eval_samples: 64, clip: { norm: 1.0 } }
sweep:
  model.cell: [lstm, gru]
";

fn setup(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("rnnlab-run-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tiny.yaml");
    std::fs::write(&file, TINY).unwrap();
    (file, dir.join("results"))
}

fn read(path: &Path) -> DataFrame {
    ParquetReader::new(File::open(path).unwrap())
        .finish()
        .unwrap()
}

fn run_dirs(results: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(results.join("tiny/runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    dirs
}

#[test]
fn a_sweep_runs_resumes_and_reruns_bit_for_bit() {
    let (file, results) = setup("sweep");
    let (file, out) = (file.to_str().unwrap(), results.to_str().unwrap());
    let first = ok(&rnnlab(&["run", file, "--out", out]));
    assert!(
        first.contains("4 runs trained, 0 already complete"),
        "{first}"
    );
    let status = ok(&rnnlab(&["status", results.join("tiny").to_str().unwrap()]));
    assert_eq!(
        status.trim(),
        "done 4, diverged 0, failed 0, running 0, pending 0"
    );

    let dirs = run_dirs(&results);
    assert_eq!(dirs.len(), 4);
    for dir in &dirs {
        for file in [
            "config.yaml",
            "metrics.parquet",
            "gradflow.parquet",
            "weights.safetensors",
            "summary.yaml",
        ] {
            assert!(dir.join(file).is_file(), "{} lacks {file}", dir.display());
        }
        let metrics = read(&dir.join("metrics.parquet"));
        let types: Vec<DataType> = metrics.dtypes();
        assert_eq!(
            types,
            [
                DataType::UInt64,
                DataType::String,
                DataType::String,
                DataType::Float64
            ]
        );
        // 12 train losses and grad norms, validation loss and metric at steps 0, 5, 10, 12.
        assert_eq!(metrics.height(), 12 * 2 + 4 * 2);
        let flow = read(&dir.join("gradflow.parquet"));
        // Steps 1, 2, 4, 8 (powers of two) and 12 (the last) of a 12-step run, 6 time
        // steps each.
        assert_eq!(flow.height(), 5 * 6);
        let weights = candle_core::safetensors::load(
            dir.join("weights.safetensors"),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        for name in [
            "weight_ih_l0",
            "weight_hh_l0",
            "bias_ih_l0",
            "bias_hh_l0",
            "head.weight",
            "head.bias",
        ] {
            assert!(weights.contains_key(name), "{name}");
        }
    }

    let runs = read(&results.join("tiny/runs.parquet"));
    assert_eq!(runs.height(), 4);
    for column in [
        "run",
        "seed",
        "model.cell",
        "status",
        "final_loss",
        "final_metric",
        "steps_to_solve",
    ] {
        assert!(runs.column(column).is_ok(), "runs.parquet lacks {column}");
    }
    assert_eq!(read(&results.join("tiny/metrics.parquet")).height(), 4 * 32);
    let manifest = results.join("tiny/manifest.yaml");
    assert!(manifest.is_file());
    // The manifest names the commit the binary was built from (this checkout's HEAD,
    // "-dirty" while tracked files are edited), and so does `--version`.
    let head = Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map_or("unknown".into(), |out| {
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        });
    let recorded: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let build = recorded["build_commit"].as_str().unwrap().to_owned();
    assert!(
        build == head || build == format!("{head}-dirty"),
        "build_commit {build} for HEAD {head}"
    );
    let version = ok(&rnnlab(&["--version"]));
    assert!(version.contains(&format!("(commit {build})")), "{version}");

    // Where the runs trained stays recorded when a later invocation trains nothing (as
    // when the report is regenerated on another machine).
    let elsewhere = std::fs::read_to_string(&manifest)
        .unwrap()
        .replace("cpu:", "cpu: elsewhere #");
    std::fs::write(&manifest, &elsewhere).unwrap();
    let again = ok(&rnnlab(&["run", file, "--out", out]));
    assert!(
        again.contains("0 runs trained, 4 already complete"),
        "{again}"
    );
    assert_eq!(std::fs::read_to_string(&manifest).unwrap(), elsewhere);

    let before: Vec<DataFrame> = dirs
        .iter()
        .map(|d| read(&d.join("metrics.parquet")))
        .collect();
    let forced = ok(&rnnlab(&["run", file, "--out", out, "--force"]));
    assert!(forced.contains("4 runs trained"), "{forced}");
    for (dir, before) in dirs.iter().zip(&before) {
        assert!(
            before.equals(&read(&dir.join("metrics.parquet"))),
            "{} changed on rerun",
            dir.display()
        );
    }
}

#[test]
fn status_of_a_folder_that_is_no_experiment_is_a_usage_error() {
    let (_, results) = setup("status");
    std::fs::create_dir_all(&results).unwrap();
    let output = rnnlab(&["status", results.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("not an experiment's results folder"));
}

#[test]
fn the_numbers_do_not_depend_on_the_thread_count() {
    let (file, results) = setup("threads");
    let metrics = |threads: &str| {
        let out = results.join(threads);
        let output = Command::new(env!("CARGO_BIN_EXE_rnnlab"))
            .args([
                "run",
                file.to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ])
            .env("RAYON_NUM_THREADS", threads)
            .output()
            .unwrap();
        ok(&output);
        read(&out.join("tiny/metrics.parquet"))
    };
    assert!(
        metrics("1").equals(&metrics("3")),
        "1 and 3 threads gave different numbers"
    );
}

#[test]
fn shards_and_jobs_split_the_work_without_doing_a_run_twice() {
    let (file, results) = setup("shards");
    let (file, out) = (file.to_str().unwrap(), results.to_str().unwrap());
    let first = ok(&rnnlab(&["run", file, "--out", out, "--shard", "1/2"]));
    assert!(first.contains("2 runs trained"), "{first}");
    let status = ok(&rnnlab(&["status", results.join("tiny").to_str().unwrap()]));
    assert!(
        status.starts_with("done 2, diverged 0, failed 0, running 0, pending 2"),
        "{status}"
    );
    let second = ok(&rnnlab(&["run", file, "--out", out, "--jobs", "2"]));
    assert!(
        second.contains("2 runs trained, 2 already complete"),
        "{second}"
    );
    // Two runners at once on a fresh folder: every run trained exactly once.
    let fresh = results.join("concurrent");
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_rnnlab"))
            .args(["run", file, "--out", fresh.to_str().unwrap()])
            .output()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(spawn);
        let b = s.spawn(spawn);
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    let trained = |out: &Output| -> usize {
        let text = ok(out);
        text.split(" runs trained")
            .next()
            .unwrap()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(
        trained(&a) + trained(&b),
        4,
        "a: {:?} b: {:?}",
        ok(&a),
        ok(&b)
    );
    let bad = rnnlab(&["run", file, "--out", out, "--shard", "3/2"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_sweep_killed_with_sigkill_resumes_to_the_same_numbers() {
    let (file, results) = setup("kill");
    // About half a second per run here, so the kill lands in the middle of the sweep.
    let longer = TINY
        .replace("steps: 12, batch_size: 8", "steps: 600, batch_size: 32")
        .replace("seq_len: 6", "seq_len: 50")
        .replace("hidden: 4", "hidden: 24");
    std::fs::write(&file, longer).unwrap();
    let (file, out) = (file.to_str().unwrap(), results.to_str().unwrap());
    let mut child = Command::new(env!("CARGO_BIN_EXE_rnnlab"))
        .args(["run", file, "--out", out])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let status = ok(&rnnlab(&["status", results.join("tiny").to_str().unwrap()]));
    assert!(
        !status.starts_with("done 4"),
        "the kill came too late to test anything: {status}"
    );

    let resumed = ok(&rnnlab(&["run", file, "--out", out]));
    assert!(resumed.contains("runs trained"), "{resumed}");
    let status = ok(&rnnlab(&["status", results.join("tiny").to_str().unwrap()]));
    assert_eq!(
        status.trim(),
        "done 4, diverged 0, failed 0, running 0, pending 0"
    );
    assert_eq!(read(&results.join("tiny/runs.parquet")).height(), 4);

    let clean = results.join("clean");
    ok(&rnnlab(&["run", file, "--out", clean.to_str().unwrap()]));
    let killed_dirs = run_dirs(&results);
    let clean_dirs = run_dirs(&clean);
    for (a, b) in killed_dirs.iter().zip(&clean_dirs) {
        assert_eq!(a.file_name(), b.file_name());
        assert!(read(&a.join("metrics.parquet")).equals(&read(&b.join("metrics.parquet"))));
    }
}

#[test]
fn a_failed_run_is_recorded_the_sweep_goes_on_and_the_next_run_retries_it() {
    let (file, results) = setup("failed");
    let plan = ok(&rnnlab(&["plan", file.to_str().unwrap()]));
    // The first run id of the grid, as `plan` prints it (first column after the header).
    let victim = plan
        .lines()
        .find_map(|line| {
            let word = line.split_whitespace().next()?;
            (word.len() == 12 && word.chars().all(|c| c.is_ascii_hexdigit())).then_some(word)
        })
        .unwrap()
        .to_owned();
    // A directory where the run's metrics table goes makes writing that run fail (the
    // rename of the finished file onto it fails), and only that run.
    let blocker = results
        .join("tiny/runs")
        .join(&victim)
        .join("metrics.parquet");
    std::fs::create_dir_all(blocker.join("x")).unwrap();
    let out = results.to_str().unwrap();
    let output = rnnlab(&["run", file.to_str().unwrap(), "--out", out]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("run {victim} failed: writing run {victim}")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("1 of 4 runs failed: {victim}")),
        "{stderr}"
    );
    let failed =
        std::fs::read_to_string(results.join("tiny/runs").join(&victim).join("failed.yaml"));
    assert!(failed.unwrap().contains("metrics.parquet"));
    // The other three completed and are in the experiment's table.
    assert_eq!(read(&results.join("tiny/runs.parquet")).height(), 3);
    let status = ok(&rnnlab(&["status", &format!("{out}/tiny")]));
    assert!(
        status.starts_with("done 3, diverged 0, failed 1, running 0, pending 0"),
        "{status}"
    );
    assert!(status.contains(&format!("failed: {victim}")), "{status}");

    std::fs::remove_dir_all(&blocker).unwrap();
    let rerun = ok(&rnnlab(&["run", file.to_str().unwrap(), "--out", out]));
    assert!(
        rerun.contains("1 runs trained, 3 already complete or claimed, 0 failed"),
        "{rerun}"
    );
    assert!(
        !results
            .join("tiny/runs")
            .join(&victim)
            .join("failed.yaml")
            .exists()
    );
    let status = ok(&rnnlab(&["status", &format!("{out}/tiny")]));
    assert!(
        status.starts_with("done 4, diverged 0, failed 0"),
        "{status}"
    );
}

#[test]
fn an_output_folder_that_cannot_be_written_is_a_clear_error() {
    let (file, _) = setup("unwritable");
    // A plain file where the output folder should be: fails for root too, unlike chmod.
    let blocked = file.with_file_name("not-a-folder");
    std::fs::write(&blocked, "").unwrap();
    let mut targets = vec![blocked.join("results")];
    // A read-only file system, where the machine has one (sysfs in most containers).
    if std::fs::write("/sys/rnnlab-probe", "").is_err() {
        targets.push(PathBuf::from("/sys/rnnlab-results"));
    }
    for out in targets {
        let output = rnnlab(&[
            "run",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.starts_with("error: writing the plan of tiny: creating "),
            "{stderr}"
        );
        assert!(stderr.contains(out.to_str().unwrap()), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

/// Every cell of the registry, by its config name, through `run` (training, report and
/// figures) and `bench`: a new cell needs no change here or in the runner to be usable.
/// minGRU and minLSTM also run in their log-space form (`model.scan: log_space`), the
/// expRNN from the Cayley initialisation.
#[test]
fn every_registered_cell_trains_from_yaml_appears_in_the_report_and_benches() {
    let kinds = rnnlab_cells::registry::CELLS;
    let names: Vec<&str> = kinds.iter().map(|kind| kind.name).collect();
    let dir = std::env::temp_dir().join(format!("rnnlab-run-{}-cells", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cells.yaml");
    let log_space = ["mingru", "minlstm"];
    let variants: String = names
        .iter()
        .map(|name| format!("  - {{ model.cell: {name} }}\n"))
        .chain(
            log_space
                .iter()
                .map(|name| format!("  - {{ model.cell: {name}, model.scan: log_space }}\n")),
        )
        .chain([
            "  - { model.cell: exprnn, model.exprnn_init: cayley }\n".to_owned(),
            "  - { model.cell: indrnn, model.indrnn_init: li2018, model.hidden: [3, 3] }\n"
                .to_owned(),
        ])
        .collect();
    std::fs::write(
        &file,
        format!(
            "name: cells\ndescription: every registered cell\nbase:\n  task: {{ kind: adding, seq_len: 5 }}\n  model: {{ cell: lstm, hidden: 3 }}\n  train: {{ steps: 4, batch_size: 4, eval_every: 2, eval_samples: 8 }}\nvariants:\n{variants}"
        ),
    )
    .unwrap();
    let out = dir.join("results");
    let printed = ok(&rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]));
    assert!(
        printed.contains(&format!(
            "{} runs trained",
            names.len() + log_space.len() + 2
        )),
        "{printed}"
    );
    let report = std::fs::read_to_string(out.join("cells/REPORT.md")).unwrap();
    for kind in kinds {
        let label = rnnlab_cells::registry::display_label(
            &(kind.configure)(&Default::default()).unwrap().label(),
        );
        assert!(
            report.contains(&format!("| {label} |")),
            "{label} is not in the report's table"
        );
    }
    for label in [
        "minGRU (log-space)",
        "minLSTM (log-space)",
        "expRNN (cayley init)",
        "IndRNN (li2018 init)",
    ] {
        assert!(
            report.contains(&format!("| {label} |")),
            "{label} is not in the report's table"
        );
    }
    assert!(out.join("cells/plots/learning_curves.png").exists());

    let bench = ok(&rnnlab(&[
        "bench",
        "--impl",
        "rnnlab",
        "--cells",
        &names.join(","),
        "--hidden",
        "4",
        "--seq-len",
        "5",
        "--batch",
        "2",
        "--warmup",
        "0",
        "--repeats",
        "1",
    ]));
    for name in &names {
        assert!(
            bench.contains(&format!("rnnlab,{name},4,5,2,")),
            "{name} missing from the benchmark:\n{bench}"
        );
    }
    // Every row has the achieved GFLOP/s, positive for every cell (each has a matrix of
    // weights), the device, and on the CPU no split of a GPU step.
    for row in bench.lines().filter(|l| l.starts_with("rnnlab,")) {
        let fields: Vec<&str> = row.split(',').collect();
        assert_eq!(fields.len(), 15, "{row}");
        assert!(fields[9].parse::<f64>().unwrap() > 0.0, "{row}");
        assert_eq!(fields[10], "cpu", "{row}");
        assert_eq!(fields[11..], ["", "", "", ""], "{row}");
    }
    let peak = ok(&rnnlab(&[
        "bench",
        "--peak",
        "64",
        "--threads",
        "1",
        "--warmup",
        "0",
        "--repeats",
        "1",
    ]));
    let gflops: f64 = peak
        .trim()
        .strip_suffix(" GFLOP/s")
        .and_then(|s| s.rsplit(',').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no GFLOP/s in {peak}"));
    assert!(gflops > 0.0, "{peak}");
}

#[test]
fn a_gpu_that_does_not_open_is_refused_before_anything_is_written() {
    let (file, results) = setup("no-gpu");
    let (file, out) = (file.to_str().unwrap(), results.to_str().unwrap());
    let output = rnnlab(&["run", file, "--out", out, "--device", "cuda:7"]);
    if output.status.success() {
        eprintln!("skipped a_gpu_that_does_not_open_is_refused: this machine has a cuda:7");
        return;
    }
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{err}");
    assert!(err.contains("opening cuda:7 (train.device)"), "{err}");
    assert!(
        err.contains("no CUDA driver") || err.contains("does not exist"),
        "says what is missing: {err}"
    );
    assert!(!results.exists(), "nothing written");
}

/// `(cell, seed, final loss)` of every run in an experiment's `runs.parquet`, sorted.
#[cfg(feature = "cuda")]
fn final_losses(experiment: &Path) -> Vec<(String, i64, f64)> {
    let runs = read(&experiment.join("runs.parquet"));
    let cells = runs.column("model.cell").unwrap().str().unwrap().clone();
    let seeds = runs.column("seed").unwrap().cast(&DataType::Int64).unwrap();
    let losses = runs.column("final_loss").unwrap().f64().unwrap().clone();
    let mut rows: Vec<_> = (0..runs.height())
        .map(|k| {
            (
                cells.get(k).unwrap().to_owned(),
                seeds.i64().unwrap().get(k).unwrap(),
                losses.get(k).unwrap(),
            )
        })
        .collect();
    rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    rows
}

#[test]
#[cfg(feature = "cuda")]
fn a_sweep_on_the_cuda_emulator_trains_as_on_the_cpu_and_reruns_bit_for_bit() {
    let (file, results) = setup("emulated-gpu");
    // The CUDA kernels compiled for the host: the whole GPU path (backend, kernels,
    // copies, checkpoints, evaluation, report) without a GPU.
    let compiler = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let library =
        match rnnlab_cells::cuda::build_emulator(&results.with_file_name("emulator"), &compiler) {
            Ok(built) => built.unwrap_or_else(|messages| panic!("{messages}")),
            Err(e) => {
                assert!(
                    std::env::var_os("RNNLAB_REQUIRE_KERNEL_TESTS").is_none(),
                    "RNNLAB_REQUIRE_KERNEL_TESTS is set but {compiler}: {e}"
                );
                eprintln!("skipped a_sweep_on_the_cuda_emulator: no C++ compiler ({e})");
                return;
            }
        };
    let (file, out) = (file.to_str().unwrap(), results.to_str().unwrap());
    let emulated = |extra: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_rnnlab"))
            .args(["run", file, "--out", out, "--device", "cuda", "--no-report"])
            .args(extra)
            .env("RNNLAB_CUDA_EMULATOR", &library)
            .output()
            .unwrap();
        ok(&output)
    };
    let first = emulated(&[]);
    assert!(first.contains("4 runs trained"), "{first}");
    bench_splits_the_gpu_step(&library);
    let gpu = final_losses(&results.join("tiny"));
    emulated(&["--force"]);
    assert_eq!(
        final_losses(&results.join("tiny")),
        gpu,
        "a rerun gives the same bits"
    );

    let cpu_out = results.with_file_name("cpu");
    ok(&rnnlab(&[
        "run",
        file,
        "--out",
        cpu_out.to_str().unwrap(),
        "--no-report",
    ]));
    let cpu = final_losses(&cpu_out.join("tiny"));
    assert_eq!(gpu.len(), 4);
    for ((cell, seed, on_gpu), (_, _, on_cpu)) in gpu.iter().zip(&cpu) {
        // 12 Adam steps from the same weights and data: the two differ only by f32
        // rounding in different summation orders.
        assert!(
            (on_gpu - on_cpu).abs() <= 1e-4 * on_cpu.abs(),
            "{cell} seed {seed}: {on_gpu} on the emulated GPU, {on_cpu} on the CPU"
        );
    }
}

/// `rnnlab bench --device cuda` on the emulator: the row says where the step's time went,
/// and the bytes copied are exactly the LSTM layer's inputs and outputs (B = 2, T = 5,
/// I = 2, H = 4): `x` 20, `[h0 | c0]` 16, parameters 16·8 = 128, output 2·6·4 = 48
/// floats up (212) and their gradients down but for `x`'s, which is data (192), plus
/// the summed bias (16) and the `c_T` gradient row (8) up: 428 floats, 1,712 bytes; and
/// the gradient flow's `B·T` f64 norms down, 80 bytes.
#[cfg(feature = "cuda")]
fn bench_splits_the_gpu_step(library: &Path) {
    let output = Command::new(env!("CARGO_BIN_EXE_rnnlab"))
        .args([
            "bench", "--impl", "rnnlab", "--cells", "lstm", "--device", "cuda",
        ])
        .args(["--hidden", "4", "--seq-len", "5", "--batch", "2"])
        .args(["--warmup", "0", "--repeats", "2"])
        .env("RNNLAB_CUDA_EMULATOR", library)
        .output()
        .unwrap();
    let table = ok(&output);
    let header: Vec<&str> = table.lines().next().unwrap().split(',').collect();
    let row: Vec<&str> = table
        .lines()
        .find(|line| line.starts_with("rnnlab,lstm,4,5,2,"))
        .unwrap_or_else(|| panic!("no LSTM row:\n{table}"))
        .split(',')
        .collect();
    let column = |name: &str| -> f64 {
        let at = header.iter().position(|h| *h == name).unwrap();
        row[at]
            .parse()
            .unwrap_or_else(|e| panic!("{name} = {:?}: {e}", row[at]))
    };
    assert_eq!(column("copy_bytes"), 1712.0 + 80.0);
    let (step, busy, copies) = (column("counted_ms"), column("gpu_ms"), column("copy_ms"));
    assert!(0.0 < copies && copies <= busy && busy <= step, "{table}");
}
