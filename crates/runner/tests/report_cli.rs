//! `rnnlab plot` and `rnnlab report` on tiny experiments: every figure kind is drawn
//! (the PNG decodes, the SVG parses, the sizes are right), figures without data are
//! skipped, and the report's findings follow the data.

mod common;

use common::{ok, rnnlab};

use std::path::{Path, PathBuf};

/// Two cells × two lengths × two sizes × two seeds, a few steps each.
const GRID: &str = "name: grid
description: Which cell learns the tiny adding task, by length and size?
seeds: [0, 1]
base:
  task: { kind: adding, seq_len: 6 }
  model: { cell: lstm, hidden: 4 }
  train: { steps: 12, batch_size: 8, eval_every: 4, eval_samples: 64, lr: 1.0e-2 }
sweep:
  model.cell: [lstm, gru]
  task.seq_len: [6, 9]
  model.hidden: [4, 8]
";

/// One cell, nothing swept: only the learning curves and the gradient flow apply.
const SINGLE: &str = "name: single
description: One LSTM, two seeds.
seeds: [0, 1]
base:
  task: { kind: copy, seq_len: 5 }
  model: { cell: lstm, hidden: 4 }
  train: { steps: 6, batch_size: 8, eval_every: 3, eval_samples: 32 }
";

fn setup(name: &str, experiment: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("rnnlab-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(format!("{name}.yaml"));
    std::fs::write(&file, experiment).unwrap();
    (file, dir.join("results"))
}

/// The results folder of `experiment`, trained without a report in a folder of its own
/// (`name`).
fn trained(name: &str, experiment: &str) -> PathBuf {
    let (file, results) = setup(name, experiment);
    ok(&rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        results.to_str().unwrap(),
        "--no-report",
    ]));
    let experiment_name = experiment
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("name: "))
        .expect("the experiment's first line names it");
    results.join(experiment_name)
}

/// [`trained`], then plotted by `rnnlab plot`.
fn trained_and_plotted(name: &str, experiment: &str) -> PathBuf {
    let dir = trained(name, experiment);
    ok(&rnnlab(&["plot", dir.to_str().unwrap()]));
    dir
}

fn figure_stems(plots: &Path) -> Vec<String> {
    let mut stems: Vec<String> = std::fs::read_dir(plots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "png"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    stems.sort();
    stems
}

/// The one-column version of `stem`: 1050 px wide (3.5 in at 300 dpi) and no text
/// smaller than 7 pt there, like the two-column figure.
fn check_column(plots: &Path, stem: &str) {
    let png = image::open(plots.join(format!("{stem}_column.png")))
        .unwrap_or_else(|e| panic!("{stem}_column.png does not decode: {e}"))
        .to_rgb8();
    assert_eq!(png.width(), 1050, "{stem}_column.png");
    let svg = std::fs::read_to_string(plots.join(format!("{stem}_column.svg"))).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    assert_eq!(doc.root_element().attribute("width"), Some("1050"));
    assert_text_at_least_7pt(&doc, &format!("{stem}_column.svg"));
}

/// Every text of `doc` is at least 7 pt printed at 300 dpi (29.2 px).
fn assert_text_at_least_7pt(doc: &roxmltree::Document, name: &str) {
    for node in doc.descendants().filter(|n| n.has_attribute("font-size")) {
        let size: f64 = node.attribute("font-size").unwrap().parse().unwrap();
        assert!(size >= 29.0, "{name}: text of {size} px is below 7 pt");
    }
}

/// The PNG decodes to 2100 px wide (7 in at 300 dpi) with real content; the SVG parses,
/// has the same size, carries the texts, and none smaller than 7 pt at 7 in.
fn check_figure(plots: &Path, stem: &str, texts: &[&str]) {
    let png = image::open(plots.join(format!("{stem}.png")))
        .unwrap_or_else(|e| panic!("{stem}.png does not decode: {e}"))
        .to_rgb8();
    assert_eq!(png.width(), 2100, "{stem}.png");
    assert!(png.height() >= 500 && png.height() <= 8000, "{stem}.png");
    let inked = png.pixels().filter(|p| p.0 != [255, 255, 255]).count();
    let share = inked as f64 / (png.width() * png.height()) as f64;
    assert!(
        (0.01..0.6).contains(&share),
        "{stem}.png: {share:.3} of the pixels are not white"
    );
    // Text renders (anti-aliased glyphs give many grey levels) in the bundled font.
    let greys = png
        .pixels()
        .filter(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2] && p.0[0] > 0 && p.0[0] < 255)
        .count();
    assert!(greys > 1000, "{stem}.png: no anti-aliased text ({greys})");

    let svg = std::fs::read_to_string(plots.join(format!("{stem}.svg"))).unwrap();
    let doc = roxmltree::Document::parse(&svg)
        .unwrap_or_else(|e| panic!("{stem}.svg does not parse: {e}"));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(root.attribute("width"), Some("2100"));
    // At most 3 rows of panels: within 8 in (2400 px) of a page's height.
    assert!(png.height() <= 2400, "{stem}: {} px tall", png.height());
    assert_text_at_least_7pt(&doc, &format!("{stem}.svg"));
    assert_eq!(
        root.attribute("height").map(|h| h.parse::<u32>().unwrap()),
        Some(png.height())
    );
    let all_text: Vec<&str> = doc
        .descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .collect();
    for text in texts {
        assert!(
            all_text.iter().any(|t| t.contains(text)),
            "{stem}.svg lacks {text:?}"
        );
    }
    // Titles are words, not the experiment's file slug.
    assert!(
        !all_text
            .iter()
            .any(|t| t.starts_with("grid:") || t.starts_with("single:")),
        "{stem}.svg: a title starts with the experiment slug"
    );
}

#[test]
fn every_figure_kind_is_drawn_and_the_report_links_them() {
    let (file, results) = setup("grid", GRID);
    let out = results.to_str().unwrap();
    // --no-report leaves the figures and the report out ...
    ok(&rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out,
        "--no-report",
        "--jobs",
        "2",
    ]));
    let dir = results.join("grid");
    assert!(!dir.join("REPORT.md").exists());
    assert!(!dir.join("plots").exists());
    // ... and `rnnlab plot` draws them.
    let printed = ok(&rnnlab(&["plot", dir.to_str().unwrap()]));
    let plots = dir.join("plots");
    let stems = figure_stems(&plots);
    assert_eq!(
        stems,
        [
            "final_vs_hidden",
            "final_vs_parameters",
            "final_vs_seq_len",
            "grad_norm",
            // 4 settings × (first step, end of training) in 2 columns would be 4 rows:
            // split per T, at most 3 rows to a figure.
            "gradient_flow_6",
            "gradient_flow_9",
            "learning_curves",
            "loss_curves",
            "solved_vs_seq_len",
            // Figures of at most 3 panels also come one column wide.
            "solved_vs_seq_len_column",
            "throughput",
            "throughput_column",
        ]
    );
    check_column(&plots, "throughput");
    // `rnnlab plot` names each figure once (its column version sits beside it).
    let columns = stems.iter().filter(|s| s.ends_with("_column")).count();
    assert_eq!(printed.lines().count(), stems.len() - columns);
    check_figure(
        &plots,
        "learning_curves",
        &[
            "LSTM",
            "GRU",
            "T = 6, 8 units",
            "trivial baseline",
            "training step",
        ],
    );
    // Curves are every seed (thin) and their median (thick), not a mean no seed had.
    check_figure(
        &plots,
        "loss_curves",
        &["loss (MSE)", "thick: median over seeds; thin: each seed"],
    );
    // Metrics in words, not column names.
    check_figure(
        &plots,
        "learning_curves",
        &["median over seeds", "validation accuracy (|error| < 0.04)"],
    );
    check_figure(
        &plots,
        "final_vs_seq_len",
        &["4 units", "sequence length T (steps)"],
    );
    check_figure(&plots, "solved_vs_seq_len", &["/2", "sequence length T"]);
    check_figure(&plots, "final_vs_hidden", &["T = 9", "hidden units"]);
    check_figure(&plots, "final_vs_parameters", &["trainable parameters"]);
    check_figure(
        &plots,
        "gradient_flow_9",
        &[
            "T = 9: Gradient reaching",
            "first step",
            "end of training",
            "time step t",
        ],
    );
    check_figure(&plots, "throughput", &["sequences/s"]);

    ok(&rnnlab(&["report", dir.to_str().unwrap()]));
    let report = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
    assert!(report.starts_with("# grid\n\n> Which cell learns the tiny adding task"));
    for stem in stems.iter().filter(|s| !s.ends_with("_column")) {
        assert!(
            report.contains(&format!("![{stem}](plots/{stem}.png)")),
            "{stem}"
        );
    }
    // One summary row per (T, hidden, cell): 8 rows.
    let rows = report
        .lines()
        .filter(|l| l.starts_with("| 6 |") || l.starts_with("| 9 |"))
        .count();
    assert_eq!(rows, 8, "{report}");
    assert!(report.contains("16 of 16 runs complete"));
}

#[test]
fn figures_without_data_are_skipped() {
    let (file, results) = setup("single", SINGLE);
    ok(&rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        results.to_str().unwrap(),
    ]));
    let dir = results.join("single");
    assert_eq!(
        figure_stems(&dir.join("plots")),
        [
            "grad_norm",
            "grad_norm_column",
            "gradient_flow",
            "gradient_flow_column",
            "learning_curves",
            "learning_curves_column",
            "loss_curves",
            "loss_curves_column",
        ]
    );
    check_column(&dir.join("plots"), "learning_curves");
    // A figure left from an earlier drawing (since split, or no longer supported) goes;
    // other files stay.
    let plots = dir.join("plots");
    std::fs::write(plots.join("loss_curves_copy.png"), b"stale").unwrap();
    std::fs::write(plots.join("notes.txt"), b"mine").unwrap();
    ok(&rnnlab(&["plot", dir.to_str().unwrap()]));
    assert!(!plots.join("loss_curves_copy.png").exists());
    assert!(plots.join("notes.txt").exists());
    assert!(plots.join("loss_curves.png").exists());
    // With no panel keys the panel is titled by its task, not by the file's name.
    check_figure(
        &dir.join("plots"),
        "learning_curves",
        &["recall accuracy", "copy, T = 5"],
    );
    let svg = std::fs::read_to_string(plots.join("learning_curves.svg")).unwrap();
    assert!(!svg.contains(">single<"), "the slug as a title");
    let report = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
    assert!(report.contains("- **All runs**: loss "), "{report}");
}

#[test]
fn plotting_a_folder_that_is_no_experiment_is_a_usage_error() {
    let (_, results) = setup("nothing", SINGLE);
    std::fs::create_dir_all(&results).unwrap();
    for command in ["plot", "report"] {
        let output = rnnlab(&[command, results.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&output.stderr).contains("not an experiment's results folder")
        );
    }
}

/// Sets the final validation loss of every run of `cell` at `seq_len` to `loss` times a
/// small per-seed factor (so the seeds spread a little).
fn set_losses(dir: &Path, cell: &str, seq_len: u64, loss: f64) {
    set_losses_by(dir, |model_cell, length, _| {
        (model_cell == cell && length == seq_len).then_some(loss)
    });
}

/// Gives every run for which `loss(cell, seq_len, hidden)` says so that loss, times
/// 1 + 0.1 · seed (so that seeds differ).
fn set_losses_by(dir: &Path, loss: impl Fn(&str, u64, u64) -> Option<f64>) {
    for entry in std::fs::read_dir(dir.join("runs")).unwrap() {
        let run = entry.unwrap().path();
        let config: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(run.join("config.yaml")).unwrap())
                .unwrap();
        let model = &config["run"]["model"];
        let Some(loss) = loss(
            model["cell"].as_str().unwrap(),
            config["run"]["task"]["seq_len"].as_u64().unwrap(),
            model["hidden"].as_u64().unwrap(),
        ) else {
            continue;
        };
        let seed = config["seed"].as_u64().unwrap() as f64;
        let path = run.join("summary.yaml");
        let mut summary: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        summary["final_loss"] = (loss * (1.0 + 0.1 * seed)).into();
        std::fs::write(&path, serde_yaml::to_string(&summary).unwrap()).unwrap();
    }
}

fn finding(report: &str, setting: &str) -> String {
    report
        .lines()
        .find(|l| l.starts_with(&format!("- **{setting}**")))
        .unwrap_or_else(|| panic!("no finding for {setting} in\n{report}"))
        .to_owned()
}

#[test]
fn the_findings_follow_the_data() {
    let grid = GRID.replace("  model.hidden: [4, 8]\n", "");
    let dir = trained("findings", &grid);
    let report = |dir: &Path| {
        ok(&rnnlab(&["report", dir.to_str().unwrap()]));
        std::fs::read_to_string(dir.join("REPORT.md")).unwrap()
    };

    // LSTM 100× lower loss at T=6 and T=9.
    for t in [6, 9] {
        set_losses(&dir, "lstm", t, 0.001);
        set_losses(&dir, "gru", t, 0.1);
    }
    let first = report(&dir);
    // The provenance names the binary's commit (the checkout's HEAD, perhaps dirty).
    let build = first
        .split(" built from commit ")
        .nth(1)
        .unwrap_or_else(|| panic!("no build commit in\n{first}"));
    assert!(build.len() > 12 && build.is_char_boundary(12), "{build}");
    assert!(
        build[..12].chars().all(|c| c.is_ascii_hexdigit()),
        "{build}"
    );
    let line = finding(&first, "T = 6");
    assert!(line.contains("lowest loss: **LSTM**"), "{line}");
    assert!(line.contains("100× its loss"), "{line}");
    assert!(line.contains("a clear difference (p = "), "{line}");
    assert!(line.contains("Holm-adjusted"), "{line}");
    assert!(
        first.contains("- LSTM has the lowest loss in 2 of 2 settings (2 of them clearly ahead"),
        "{first}"
    );
    // Two settings out of two is all a sign test can say: p = 2 · (1/2)² = 0.5.
    assert!(
        first.contains(
            "- LSTM vs GRU: LSTM's loss is lower in 2 of 2 settings (sign test p = 0.5, \
             Holm-adjusted 0.5); clearly lower in 2, clearly higher in 0; GRU's loss over \
             LSTM's: median 100×"
        ),
        "{first}"
    );
    assert!(first.contains("family of 2 tests"), "{first}");
    // One Welch and one Fisher row per setting, and the sign test.
    let findings = {
        use polars::prelude::{ParquetReader, SerReader};
        ParquetReader::new(std::fs::File::open(dir.join("findings.parquet")).unwrap())
            .finish()
            .unwrap()
    };
    assert_eq!(findings.height(), 5);
    let column = findings.column("test").unwrap().str().unwrap();
    let tests: Vec<&str> = (0..column.len()).filter_map(|i| column.get(i)).collect();
    assert_eq!(
        tests,
        [
            "welch_log10_loss",
            "fisher_solved",
            "welch_log10_loss",
            "fisher_solved",
            "sign"
        ]
    );

    // Now GRU is ahead at T=9, and at T=6 the two are within each other's seed spread.
    set_losses(&dir, "gru", 9, 0.0001);
    set_losses(&dir, "lstm", 6, 0.1);
    set_losses(&dir, "gru", 6, 0.1);
    let second = report(&dir);
    let line = finding(&second, "T = 9");
    assert!(line.contains("lowest loss: **GRU**"), "{line}");
    assert!(line.contains("10× its loss"), "{line}");
    let line = finding(&second, "T = 6");
    assert!(
        line.contains("not distinguishable with 2 and 2 seeds (p = 1, Holm-adjusted 1;"),
        "{line}"
    );
    // Equal losses at T=6 count for neither side: 1 setting, lower in none.
    assert!(
        second.contains("- LSTM vs GRU: LSTM's loss is lower in 0 of 1 settings (sign test p = 1, Holm-adjusted 1); clearly lower in 0, clearly higher in 1"),
        "{second}"
    );
    assert_ne!(first, second);
}

#[test]
fn a_folder_shared_without_the_per_run_tables_still_reports_and_resumes() {
    let (file, results) = setup("shared", SINGLE);
    let out = results.to_str().unwrap();
    ok(&rnnlab(&["run", file.to_str().unwrap(), "--out", out]));
    let dir = results.join("single");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap();
    let (report, metrics, gradflow) = (
        read("REPORT.md"),
        read("metrics.parquet"),
        read("gradflow.parquet"),
    );
    let png = read("plots/learning_curves.png");
    // What results/faq keeps in git: the experiment-level tables, not the runs' copies.
    for entry in std::fs::read_dir(dir.join("runs")).unwrap() {
        let run = entry.unwrap().path();
        std::fs::remove_file(run.join("metrics.parquet")).unwrap();
        std::fs::remove_file(run.join("gradflow.parquet")).unwrap();
    }
    ok(&rnnlab(&["report", dir.to_str().unwrap()]));
    assert_eq!(read("REPORT.md"), report);
    assert_eq!(read("plots/learning_curves.png"), png);
    // A rerun skips the complete runs and compacts the same tables again.
    let rerun = ok(&rnnlab(&["run", file.to_str().unwrap(), "--out", out]));
    assert!(
        rerun.contains("0 runs trained, 2 already complete"),
        "{rerun}"
    );
    assert_eq!(read("metrics.parquet"), metrics);
    assert_eq!(read("gradflow.parquet"), gradflow);
    assert_eq!(read("REPORT.md"), report);
}

#[test]
fn diverged_runs_have_no_end_of_training_gradient() {
    let (file, results) = setup("diverged", SINGLE);
    let out = results.to_str().unwrap();
    ok(&rnnlab(&[
        "run",
        file.to_str().unwrap(),
        "--out",
        out,
        "--no-report",
    ]));
    let dir = results.join("single");
    let row = |report: &str| {
        report
            .lines()
            .find(|l| l.starts_with("| all | LSTM |"))
            .unwrap_or_else(|| panic!("no gradient row in\n{report}"))
            .to_owned()
    };
    ok(&rnnlab(&["report", dir.to_str().unwrap()]));
    let before = row(&std::fs::read_to_string(dir.join("REPORT.md")).unwrap());
    assert!(!before.ends_with("| – |"), "{before}");
    // Both seeds marked diverged: their last gradient rows are from before they diverged.
    for entry in std::fs::read_dir(dir.join("runs")).unwrap() {
        let path = entry.unwrap().path().join("summary.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, text.replace("status: done", "status: diverged")).unwrap();
    }
    ok(&rnnlab(&["report", dir.to_str().unwrap()]));
    let after = row(&std::fs::read_to_string(dir.join("REPORT.md")).unwrap());
    assert!(after.ends_with("| – |"), "{after}");
    // The first step's gradient is still reported.
    assert_eq!(before.split('|').nth(3), after.split('|').nth(3));
    // The legends count them.
    check_figure(
        &dir.join("plots"),
        "learning_curves",
        &["LSTM (2 of 2 runs diverged)"],
    );
}

/// One length per task: T differs between panels but never within one, so no figure is
/// drawn against T (each would have a single x).
const ONE_T_PER_TASK: &str = "name: pertask
description: Two cells on two tasks, one length each.
seeds: [0, 1]
base:
  task: { kind: adding, seq_len: 6 }
  model: { cell: lstm, hidden: 4 }
  train: { steps: 6, batch_size: 8, eval_every: 3, eval_samples: 32 }
variants:
  - { task.kind: adding, task.seq_len: 6, model.cell: lstm }
  - { task.kind: adding, task.seq_len: 6, model.cell: gru }
  - { task.kind: temporal_order, task.seq_len: 10, model.cell: lstm }
  - { task.kind: temporal_order, task.seq_len: 10, model.cell: gru }
";

#[test]
fn no_figure_against_a_length_that_each_panel_has_once() {
    let dir = trained_and_plotted("pertask", ONE_T_PER_TASK);
    let stems: Vec<String> = figure_stems(&dir.join("plots"))
        .into_iter()
        .filter(|s| !s.ends_with("_column"))
        .collect();
    assert_eq!(
        stems,
        [
            "grad_norm",
            "gradient_flow",
            "learning_curves",
            "loss_curves"
        ]
    );
}

/// Adding at T = 6 and 9, temporal order at T = 10 and 12.
const TWO_T_PER_TASK: &str = "name: lengths
description: One cell on two tasks, each at its own two lengths.
seeds: [0]
base:
  task: { kind: adding, seq_len: 6 }
  model: { cell: gru, hidden: 4 }
  train: { steps: 3, batch_size: 8, eval_every: 3, eval_samples: 16 }
variants:
  - { task.kind: adding, task.seq_len: 6 }
  - { task.kind: adding, task.seq_len: 9 }
  - { task.kind: temporal_order, task.seq_len: 10 }
  - { task.kind: temporal_order, task.seq_len: 12 }
";

#[test]
fn the_solved_table_has_only_the_lengths_each_task_ran_at() {
    let dir = trained_and_plotted("lengths", TWO_T_PER_TASK);
    let svg = std::fs::read_to_string(dir.join("plots/solved_vs_seq_len.svg")).unwrap();
    let doc = roxmltree::Document::parse(&svg).unwrap();
    let texts: Vec<&str> = doc
        .descendants()
        .filter(|n| n.is_text())
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect();
    let count = |label: &str| texts.iter().filter(|t| **t == label).count();
    // One column per length its task has, one cell each (the GRU row): no empty columns
    // for the other task's lengths.
    for label in ["6", "9", "10", "12"] {
        assert_eq!(count(label), 1, "column {label}: {texts:?}");
    }
    assert_eq!(count("0/1") + count("1/1"), 4, "{texts:?}");
}

#[test]
fn the_report_says_whether_size_matters() {
    let dir = trained("units", GRID);
    // The LSTM's loss is 100× lower at 8 units than at 4; the GRU's does not change.
    set_losses_by(&dir, |cell, _, hidden| {
        Some(match (cell, hidden) {
            ("lstm", 4) => 0.1,
            ("lstm", _) => 0.001,
            _ => 0.01,
        })
    });
    ok(&rnnlab(&["report", dir.to_str().unwrap()]));
    let report = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
    // Per T, each cell's 4 → 8 units: 4 tests. The LSTM's: log10 losses (−1, −0.959)
    // against (−3, −2.959), t = 2 / 0.0293 = 68.3 with 2 degrees of freedom, p = 1 −
    // t / √(2 + t²) = 2.1e-4, Holm-adjusted × 4 = 8.6e-4; the GRU's are equal (p = 1).
    assert!(
        report.contains("Holm-adjusted over these 4 tests"),
        "{report}"
    );
    let line = |prefix: &str| {
        report
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line {prefix:?} in\n{report}"))
            .to_owned()
    };
    let lstm = line("- T = 6, LSTM: loss");
    assert!(lstm.contains("4 → 8 units: 0.01× ("), "{lstm}");
    assert!(lstm.contains(", clear)"), "{lstm}");
    let gru = line("- T = 9, GRU: loss");
    assert!(gru.contains("4 → 8 units: 1× ("), "{gru}");
    assert!(!gru.contains("clear"), "{gru}");
    let findings = {
        use polars::prelude::{ParquetReader, SerReader};
        ParquetReader::new(std::fs::File::open(dir.join("findings.parquet")).unwrap())
            .finish()
            .unwrap()
    };
    let tests = findings.column("test").unwrap().str().unwrap();
    let by_units = (0..tests.len())
        .filter(|&i| tests.get(i) == Some("welch_log10_loss_by_units"))
        .count();
    assert_eq!(by_units, 4);
}
