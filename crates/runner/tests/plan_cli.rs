//! `rnnlab plan` end to end: grid sizes, stable run ids, overrides, and bad configs that
//! exit 2 with the file, the key and the allowed values.

mod common;

use common::{repo_file, rnnlab};

use std::path::PathBuf;
use std::process::Output;

/// Writes `text` to a fresh experiment file and returns its path.
fn experiment(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rnnlab-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, text).unwrap();
    path
}

const BASE: &str = "name: tiny
description: a test
seeds: [0, 1]
base:
  task: { kind: adding, seq_len: 20 }
  model: { cell: lstm, hidden: 8 }
  train: { steps: 10 }
";

/// The run lines of `plan`'s output: (id, seed, params, steps, swept).
fn runs(output: &Output) -> Vec<Vec<String>> {
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout.clone()).unwrap();
    text.lines()
        .skip(3)
        .map(|line| line.split_whitespace().map(str::to_owned).collect())
        .collect()
}

#[test]
fn the_grid_is_the_product_of_the_sweep_times_the_seeds() {
    let file = repo_file("experiments/lstm-vs-gru.yaml");
    let output = rnnlab(&["plan", file.to_str().unwrap()]);
    let lines = runs(&output);
    assert_eq!(lines.len(), 4 * 4 * 3);
    let mut ids: Vec<&str> = lines.iter().map(|l| l[0].as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 48, "run ids are unique");
    // The same file gives the same ids.
    assert_eq!(runs(&rnnlab(&["plan", file.to_str().unwrap()])), lines);
    // LSTM, H = 128, I = 2, head 128 + 1: 4·128·(2 + 128 + 2) + 129 = 67 713.
    let lstm = lines.iter().find(|l| l[4] == "model.cell=lstm").unwrap();
    assert_eq!(lstm[2], "67713");
    assert_eq!(lstm[3], "3000");
}

#[test]
fn variants_and_overrides() {
    let text = format!(
        "{BASE}sweep:\n  task.seq_len: [10, 20]\nvariants:\n  - {{ model.cell: lstm, model.hidden: 8 }}\n  - {{ model.cell: gru, model.hidden: 9 }}\n"
    );
    let file = experiment("variants", &text);
    let lines = runs(&rnnlab(&["plan", file.to_str().unwrap()]));
    assert_eq!(lines.len(), 2 * 2 * 2);
    // GRU, H = 9: 3·9·(2 + 9 + 2) + 10 = 361.
    assert!(
        lines
            .iter()
            .any(|l| l[2] == "361" && l[4..].contains(&"model.cell=gru".to_string()))
    );

    let file = experiment("overrides", BASE);
    let plain = runs(&rnnlab(&["plan", file.to_str().unwrap()]));
    let set = [
        "plan",
        file.to_str().unwrap(),
        "--set",
        "model.hidden=[16,8]",
        "--set",
        "train.epochs=2",
    ];
    let output = rnnlab(&set);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        err.contains("give either `steps`, or both `epochs` and `samples`"),
        "{err}"
    );
    let set = [
        "plan",
        file.to_str().unwrap(),
        "--set",
        "model.hidden=[16,8]",
        "--set",
        "train.steps=5",
    ];
    let changed = runs(&rnnlab(&set));
    assert_ne!(
        changed[0][0], plain[0][0],
        "a different config is a different run"
    );
    assert_eq!(changed[0][3], "5");
}

fn assert_config_error(text: &str, needles: &[&str]) {
    let file = experiment("bad", text);
    let output = rnnlab(&["plan", file.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{err}");
    assert!(
        err.contains(file.to_str().unwrap()),
        "names the file: {err}"
    );
    for needle in needles {
        assert!(err.contains(needle), "expected {needle:?} in {err}");
    }
    assert!(output.stdout.is_empty(), "nothing printed on error");
}

#[test]
fn bad_configs_name_the_file_the_key_and_what_is_allowed() {
    assert_config_error(
        &BASE.replace("cell: lstm", "cell: lsmt"),
        &[
            "base.model",
            "`model.cell` is `lsmt`",
            "`peephole_lstm`",
            "line 6",
        ],
    );
    assert_config_error(
        &BASE.replace("hidden: 8 }", "hidden: 8, colour: red }"),
        &["unknown field `colour`", "`forget_bias`", "line 6"],
    );
    assert_config_error(
        &format!("{BASE}sweep:\n  model.celll: [lstm, gru]\n"),
        &[
            "line 9",
            "unknown key `model.celll`",
            "model.cell, model.hidden",
        ],
    );
    assert_config_error(
        &format!("{BASE}sweep:\n  model.cell: [lstm, grue]\n"),
        &[
            "model.cell = grue",
            "`model.cell` is `grue`",
            "`peephole_lstm`",
        ],
    );
    assert_config_error(
        &BASE.replace("steps: 10", "steps: 10, lr: -1"),
        &["`train.lr` is -1", "> 0"],
    );
    assert_config_error(
        &BASE.replace("seq_len: 20", "seq_len: 1"),
        &["seq_len 1", "allowed 2..="],
    );
    assert_config_error(
        &BASE.replace("name: tiny", "name: Tiny Run"),
        &["`name`", "a-z"],
    );
    assert_config_error(
        &BASE.replace("steps: 10", "steps: 10, device: gpu"),
        &["`train.device` is `gpu`", "`cuda:N`"],
    );
    assert_config_error(
        &BASE.replace("steps: 10", "steps: 10, clip: { norm: 1, value: 1 }"),
        &["`train.clip`: give `norm` or `value`, not both"],
    );
    assert_config_error(
        &BASE.replace("cell: lstm", "cell: gru, ablation: { peepholes: true }"),
        &["`model.ablation` is only allowed with `cell: lstm`"],
    );
    assert_config_error(
        &BASE.replace("cell: lstm", "cell: lstm, scan: log_space"),
        &["`model.scan` is only allowed with `cell: mingru` or `minlstm`, not `lstm`"],
    );
    assert_config_error(
        &BASE.replace("steps: 10", "steps: 10, recurrent_lr_scale: 0"),
        &["`train.recurrent_lr_scale` is 0", "> 0"],
    );
    assert_config_error(
        &BASE.replace("cell: lstm", "cell: gru, exprnn_init: cayley"),
        &["`model.exprnn_init` is only allowed with `cell: exprnn`, not `gru`"],
    );
    assert_config_error(
        &BASE.replace("cell: lstm", "cell: lstm, indrnn_init: li2018"),
        &["`model.indrnn_init` is only allowed with `cell: indrnn`, not `lstm`"],
    );
    assert_config_error(
        &BASE.replace(
            "cell: lstm",
            "cell: indrnn, indrnn_init: li2018, recurrent_gain: 2",
        ),
        &["`model.recurrent_gain` does not apply with `model.indrnn_init: li2018`"],
    );
    assert_config_error(
        &BASE.replace("cell: lstm", "cell: indrnn, indrnn_init: li"),
        &["unknown variant `li`", "`scheme`", "`li2018`"],
    );
    assert_config_error(
        &BASE.replace("cell: lstm", "cell: mingru, scan: parallel"),
        &["unknown variant `parallel`", "`sequential`", "`log_space`"],
    );
}

#[test]
fn absurd_sizes_exit_2_with_the_estimate_or_the_bound_and_write_nothing() {
    let huge = "1000000000000";
    let cases = [
        (
            "hidden: 8 }",
            format!("hidden: {huge} }}"),
            "needs an estimated",
        ),
        (
            "hidden: 8 }",
            format!("hidden: 8, layers: {huge} }}"),
            "allowed 1 to 1000",
        ),
        (
            "steps: 10 }",
            format!("steps: 10, batch_size: {huge} }}"),
            "needs an estimated",
        ),
        (
            "seq_len: 20 }",
            format!("seq_len: {huge} }}"),
            "allowed 2..=1000000",
        ),
        (
            "steps: 10 }",
            "steps: 10, batch_size: 100000000 }".to_owned(),
            "needs an estimated",
        ),
        (
            "steps: 10 }",
            format!("steps: 10, eval_samples: {huge} }}"),
            "allowed 1 to 10000000",
        ),
        (
            "steps: 10 }",
            format!("steps: {huge} }}"),
            "allowed 1 to 1000000000",
        ),
        (
            "steps: 10 }",
            format!("epochs: 1, samples: {huge}, batch_size: 1000 }}"),
            "needs an estimated",
        ),
    ];
    for (from, to, needle) in &cases {
        let file = experiment("absurd", &BASE.replace(from, to));
        let output = rnnlab(&["plan", file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{to}: {err}");
        assert!(err.contains(needle), "{to}: expected {needle:?} in {err}");
        assert!(output.stdout.is_empty(), "{to}: nothing printed on error");
        // `run` refuses the same file before it creates anything.
        let out = std::env::temp_dir().join(format!("rnnlab-absurd-{}", std::process::id()));
        let output = rnnlab(&[
            "run",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert_eq!(output.status.code(), Some(2), "{to}");
        assert!(!out.exists(), "{to}: run wrote {}", out.display());
    }
}
