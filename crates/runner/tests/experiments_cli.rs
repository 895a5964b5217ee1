//! The experiment files shipped in `experiments/`: each validates, has the grid its
//! header documents, and runs end to end (training, tables, figures, report) with its
//! step budget cut to a couple of steps.

mod common;

use common::{ok, repo_file, rnnlab};

use std::path::PathBuf;

fn experiments() -> PathBuf {
    repo_file("experiments")
}

/// Every shipped file and the size of its grid.
const GRIDS: [(&str, usize); 13] = [
    ("quick", 16),
    ("lstm-vs-gru", 48),
    ("faq-lstm-vs-gru", 150),
    ("faq-peephole", 100),
    ("faq-units", 60),
    ("faq-units-copy", 50),
    ("faq-long-sequences", 50),
    ("faq-long-memory", 200),
    ("faq-indrnn-paper", 2),
    ("faq-exploding", 30),
    ("article-keras-lstm", 6),
    ("article-keras-gru", 6),
    ("article-keras-budget", 36),
];

#[test]
fn every_shipped_experiment_validates_with_its_documented_grid() {
    let mut shipped: Vec<String> = std::fs::read_dir(experiments())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    shipped.sort();
    let mut listed: Vec<String> = GRIDS.iter().map(|(n, _)| n.to_string()).collect();
    listed.sort();
    assert_eq!(shipped, listed, "a shipped experiment without a test");
    for (name, runs) in GRIDS {
        let file = experiments().join(format!("{name}.yaml"));
        let plan = ok(&rnnlab(&["plan", file.to_str().unwrap()]));
        assert!(plan.contains(&format!("\n{runs} runs\n")), "{name}: {plan}");
    }
}

#[test]
fn the_article_models_are_the_keras_ones() {
    // LSTM(128, return_sequences) -> LSTM(64) -> Dense(1) on 6 input channels (the
    // temporal-order symbols): PyTorch-style parameters
    // (two bias vectors per layer) for 4·128·(6 + 128 + 2) + 4·64·(128 + 64 + 2) + 65.
    let file = experiments().join("article-keras-lstm.yaml");
    let plan = ok(&rnnlab(&["plan", file.to_str().unwrap()]));
    let expected = 4 * 128 * (6 + 128 + 2) + 4 * 64 * (128 + 64 + 2) + 65;
    assert!(plan.contains(&format!(" {expected} ")), "{plan}");
    assert!(plan.contains("  1000  "), "10 epochs of 3200 / 32: {plan}");
    let file = experiments().join("article-keras-gru.yaml");
    let plan = ok(&rnnlab(&["plan", file.to_str().unwrap()]));
    let expected = 3 * 128 * (6 + 128 + 2) + 3 * 64 * (128 + 64 + 2) + 65;
    assert!(plan.contains(&format!(" {expected} ")), "{plan}");
}

#[test]
fn the_faq_experiments_run_end_to_end_with_a_tiny_budget() {
    let out = std::env::temp_dir().join(format!("rnnlab-experiments-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    for (name, runs) in GRIDS
        .iter()
        .filter(|(n, _)| n.starts_with("faq") || n.starts_with("article"))
    {
        let file = experiments().join(format!("{name}.yaml"));
        let budget: &[&str] = if name.starts_with("article") {
            &[
                "--set",
                "train.epochs=1",
                "--set",
                "train.samples=64",
                "--set",
                "train.eval_samples=16",
            ]
        } else {
            &[
                "--set",
                "train.steps=2",
                "--set",
                "train.eval_every=2",
                "--set",
                "train.eval_samples=16",
            ]
        };
        let mut args = vec![
            "run",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--jobs",
            "2",
        ];
        args.extend_from_slice(budget);
        let printed = ok(&rnnlab(&args));
        assert!(
            printed.contains(&format!("{runs} runs trained")),
            "{printed}"
        );
        let dir = out.join(name);
        let report = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
        assert!(report.contains("## Findings"), "{name}");
        // T varies within a panel (not one T per task, as in faq-peephole).
        let seq_len_swept = !matches!(
            *name,
            "faq-units"
                | "faq-units-copy"
                | "faq-exploding"
                | "article-keras-budget"
                | "faq-peephole"
                | "faq-indrnn-paper"
        );
        for figure in [
            "learning_curves",
            "loss_curves",
            "gradient_flow",
            "grad_norm",
            "final_vs_seq_len",
        ]
        .into_iter()
        .filter(|f| seq_len_swept || *f != "final_vs_seq_len")
        {
            // A figure with more than 3 rows of panels is split (`loss_curves_adding`).
            let drawn = std::fs::read_dir(dir.join("plots")).unwrap().any(|e| {
                let file = e.unwrap().file_name().to_string_lossy().into_owned();
                file == format!("{figure}.png")
                    || (file.starts_with(&format!("{figure}_")) && file.ends_with(".png"))
            });
            assert!(drawn, "{name}: {figure}");
        }
    }
    // faq-lstm-vs-gru's 10 settings make one figure per task, none with all of them.
    let plots = out.join("faq-lstm-vs-gru/plots");
    for task in ["adding", "copy", "temporal_order"] {
        assert!(
            plots.join(format!("loss_curves_{task}.png")).exists(),
            "{task}"
        );
    }
    assert!(!plots.join("loss_curves.png").exists());
    for figure in ["final_vs_hidden", "final_vs_parameters", "throughput"] {
        assert!(
            out.join("faq-units/plots")
                .join(format!("{figure}.png"))
                .exists(),
            "{figure}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}
