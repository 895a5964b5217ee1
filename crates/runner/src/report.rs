//! `rnnlab report DIR`: `DIR/REPORT.md`, the experiment's question, grid, summary table,
//! findings and figures.
//!
//! Every finding is computed from the runs: within each panel (a value of every key that
//! is crossed with the cells, e.g. task × T) the series are ranked by their final
//! validation loss. The report's family of tests is every comparison it states: in each
//! setting the best series against each other one, and the reference series (the plain
//! LSTM, else the most frequent winner) against each other one. Each is Welch's t-test on
//! the log10 of the seeds' final losses (losses compare as ratios; the test does not
//! assume equal spreads), and two series differ **clearly** when the p-value, adjusted by
//! Holm's method over the whole family, is below 0.05. Ratios come with their 95 %
//! interval; a difference that does not pass is "not distinguishable" with the seeds
//! there are, and the report says how large a ratio would have been needed. Across
//! settings, a sign test counts in how many settings one series' loss is lower. Every
//! test is also written to `findings.parquet` (one row per test).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use polars::prelude::{Column, DataFrame, IntoColumn, NamedFrom, Series as Column_};
use serde_yaml::Value;

use crate::plot::{Figure, metric_label, pretty, write_plots};
use crate::results::{
    AT_BASELINE, F32_FLOOR, Panel, Results, Role, RunResult, Series, baseline, key_value,
};
use crate::stats::{Spread, Welch, fisher_exact, holm, median, sign_test};
use crate::store::{RunStatus, Table, write_parquet, write_text};
use rnnlab_cells::registry::display_label;

/// p below this is a clear difference.
const ALPHA: f64 = 0.05;

/// `rnnlab report DIR`.
pub fn report(dir: &Path) -> anyhow::Result<()> {
    // Shards that finished side by side may each have compacted before the other's last
    // run was complete; the report reads every complete run.
    let experiment = crate::store::ExperimentDir::at(dir);
    if experiment.plan().exists() {
        crate::compact::compact(&experiment)
            .with_context(|| format!("compacting the tables of {}", dir.display()))?;
    }
    let results = Results::open(dir)?;
    let path = write_report(&results)?;
    println!("{}", path.display());
    Ok(())
}

/// Draws the figures and writes `REPORT.md`; returns its path.
pub fn write_report(results: &Results) -> anyhow::Result<std::path::PathBuf> {
    let figures = write_plots(results)?;
    let path = results.dir.report();
    let (markdown, rows) = render(results, &figures);
    let table = results.dir.table(Table::Findings);
    write_parquet(&table, findings_frame(&rows)?)
        .with_context(|| format!("writing {}", table.display()))?;
    write_text(&path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A series whose median loss over its last third of training fell below this fraction
/// (a fall of more than 20 %) had not flattened when the budget ran out.
const STILL_FALLING: f64 = 0.8;

/// What one series achieved in one panel.
struct Outcome<'a> {
    series: Series,
    runs: Vec<&'a RunResult>,
    /// log10 of the final validation loss of the seeds that did not diverge.
    log_losses: Vec<f64>,
    diverged: usize,
    solved: usize,
}

impl Outcome<'_> {
    /// Geometric mean of the final losses (`None` if every seed diverged).
    fn loss(&self) -> Option<f64> {
        Spread::of(&self.log_losses).map(|s| 10f64.powf(s.mean))
    }

    fn metric(&self) -> Option<Spread> {
        let values: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.summary.status != RunStatus::Diverged)
            .map(|r| r.summary.final_metric)
            .filter(|v| v.is_finite())
            .collect();
        Spread::of(&values)
    }

    /// Median over the seeds that did not diverge of the final validation loss divided
    /// by the loss two thirds of the way through training: well below 1 means the loss
    /// was still falling when the budget ran out.
    fn last_third_ratio(&self) -> Option<f64> {
        let ratios: Vec<f64> = self
            .runs
            .iter()
            .filter(|r| r.summary.status != RunStatus::Diverged)
            .filter_map(|r| {
                let &(last_step, last, _) = r.curve.last()?;
                let mark = last_step * 2 / 3;
                let &(_, earlier, _) = r
                    .curve
                    .iter()
                    .min_by_key(|(step, _, _)| step.abs_diff(mark))?;
                (last.is_finite() && earlier.is_finite() && earlier > 0.0).then(|| last / earlier)
            })
            .collect();
        (!ratios.is_empty()).then(|| median(&ratios))
    }

    /// Still falling at the end (by more than [`STILL_FALLING`] over the last third) on a
    /// task not solved by every seed: a longer budget may change the ranking.
    fn still_falling(&self) -> bool {
        self.solved < self.runs.len() && self.last_third_ratio().is_some_and(|r| r < STILL_FALLING)
    }

    fn median_steps_to_solve(&self) -> Option<usize> {
        let mut steps: Vec<usize> = self
            .runs
            .iter()
            .filter_map(|r| r.summary.steps_to_solve)
            .collect();
        steps.sort_unstable();
        steps.get(steps.len() / 2).copied()
    }
}

/// The outcomes of every series in `panel`, best (lowest loss) first; series whose
/// seeds all diverged come last.
fn outcomes<'a>(series: &[Series], panel: &Panel<'a>) -> Vec<Outcome<'a>> {
    let mut outcomes: Vec<Outcome<'a>> = series
        .iter()
        .filter_map(|s| {
            let runs: Vec<&RunResult> = panel
                .runs
                .iter()
                .copied()
                .filter(|r| r.series == s.label)
                .collect();
            if runs.is_empty() {
                return None;
            }
            let log_losses = runs
                .iter()
                .filter(|r| r.summary.status != RunStatus::Diverged)
                .map(|r| r.summary.final_loss)
                .filter(|l| l.is_finite() && *l > 0.0)
                .map(f64::log10)
                .collect();
            Some(Outcome {
                series: s.clone(),
                diverged: runs
                    .iter()
                    .filter(|r| r.summary.status == RunStatus::Diverged)
                    .count(),
                solved: runs
                    .iter()
                    .filter(|r| r.summary.steps_to_solve.is_some())
                    .count(),
                runs,
                log_losses,
            })
        })
        .collect();
    outcomes.sort_by(|a, b| {
        let key = |o: &Outcome| o.loss().unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b))
    });
    outcomes
}

/// One comparison of two series in one setting: Welch's test of `a`'s log10 losses
/// against `b`'s, its Holm-adjusted p, and Fisher's test on their solved seeds.
struct Comparison {
    welch: Option<Welch>,
    /// Holm-adjusted over the report's family of Welch tests.
    adjusted: Option<f64>,
    /// One series diverged on every seed and the other did not: clear without a test.
    divergence: bool,
    /// Fisher's exact test on solved/unsolved seeds: (odds ratio, p, Holm-adjusted p
    /// over the Fisher tests).
    fisher: (f64, f64, f64),
}

impl Comparison {
    fn clear(&self) -> bool {
        self.divergence || self.adjusted.is_some_and(|p| p < ALPHA)
    }
}

/// Every comparison the findings state, keyed by (setting, series a, series b).
struct Family {
    tests: BTreeMap<(usize, String, String), Comparison>,
}

impl Family {
    /// The tests of `pairs` (setting, a, b), Holm-adjusted together.
    fn new(all: &[Vec<Outcome>], pairs: &[(usize, usize, usize)]) -> Self {
        let mut tests = BTreeMap::new();
        for &(panel, i, j) in pairs {
            let (a, b) = (&all[panel][i], &all[panel][j]);
            let key = (panel, a.series.label.clone(), b.series.label.clone());
            let reverse = (panel, key.2.clone(), key.1.clone());
            if tests.contains_key(&key) || tests.contains_key(&reverse) {
                continue;
            }
            let (fa, fb) = (a.runs.len() - a.solved, b.runs.len() - b.solved);
            let (odds, p) = fisher_exact(a.solved, fa, b.solved, fb);
            tests.insert(
                key,
                Comparison {
                    welch: Welch::of(&a.log_losses, &b.log_losses),
                    adjusted: None,
                    divergence: a.log_losses.is_empty() != b.log_losses.is_empty(),
                    fisher: (odds, p, p),
                },
            );
        }
        let welch: Vec<f64> = tests
            .values()
            .filter_map(|c| c.welch.map(|w| w.p))
            .collect();
        let fisher: Vec<f64> = tests.values().map(|c| c.fisher.1).collect();
        let (welch, fisher) = (holm(&welch), holm(&fisher));
        let mut welch = welch.into_iter();
        for (c, adjusted) in tests.values_mut().zip(fisher) {
            if c.welch.is_some() {
                c.adjusted = welch.next();
            }
            c.fisher.2 = adjusted;
        }
        Self { tests }
    }

    /// The comparison of `a` and `b` in setting `panel` (in either order), and whether it
    /// was made as `b` against `a`.
    fn get(&self, panel: usize, a: &Outcome, b: &Outcome) -> Option<(&Comparison, bool)> {
        let (x, y) = (a.series.label.clone(), b.series.label.clone());
        if let Some(c) = self.tests.get(&(panel, x.clone(), y.clone())) {
            return Some((c, false));
        }
        self.tests.get(&(panel, y, x)).map(|c| (c, true))
    }

    fn clear(&self, panel: usize, a: &Outcome, b: &Outcome) -> bool {
        self.get(panel, a, b).is_some_and(|(c, _)| c.clear())
    }

    fn size(&self) -> usize {
        self.tests.values().filter(|c| c.welch.is_some()).count()
    }
}

/// One row of `findings.parquet`.
struct FindingRow {
    setting: String,
    a: String,
    b: String,
    test: &'static str,
    statistic: f64,
    n_a: usize,
    n_b: usize,
    p: Option<f64>,
    p_adjusted: Option<f64>,
    /// `b`'s loss over `a`'s (geometric means) and its 95 % interval.
    ratio: Option<(f64, f64, f64)>,
}

fn findings_frame(rows: &[FindingRow]) -> anyhow::Result<DataFrame> {
    let text = |f: &dyn Fn(&FindingRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let count =
        |f: &dyn Fn(&FindingRow) -> usize| rows.iter().map(|r| f(r) as u64).collect::<Vec<_>>();
    let maybe = |f: &dyn Fn(&FindingRow) -> Option<f64>| rows.iter().map(f).collect::<Vec<_>>();
    let columns: Vec<Column> = vec![
        Column_::new("setting".into(), text(&|r| r.setting.clone())).into_column(),
        Column_::new("a".into(), text(&|r| r.a.clone())).into_column(),
        Column_::new("b".into(), text(&|r| r.b.clone())).into_column(),
        Column_::new("test".into(), text(&|r| r.test.to_owned())).into_column(),
        Column_::new("statistic".into(), maybe(&|r| Some(r.statistic))).into_column(),
        Column_::new("n_a".into(), count(&|r| r.n_a)).into_column(),
        Column_::new("n_b".into(), count(&|r| r.n_b)).into_column(),
        Column_::new("p".into(), maybe(&|r| r.p)).into_column(),
        Column_::new("p_adjusted".into(), maybe(&|r| r.p_adjusted)).into_column(),
        Column_::new("ratio".into(), maybe(&|r| r.ratio.map(|x| x.0))).into_column(),
        Column_::new("ratio_lo".into(), maybe(&|r| r.ratio.map(|x| x.1))).into_column(),
        Column_::new("ratio_hi".into(), maybe(&|r| r.ratio.map(|x| x.2))).into_column(),
    ];
    Ok(DataFrame::new(rows.len(), columns)?)
}

/// `b`'s loss over `a`'s with its 95 % interval, from Welch's test of `a` against `b`
/// on log10 losses (`flipped`: the test was of `b` against `a`).
fn ratio_interval(welch: &Welch, flipped: bool) -> (f64, f64, f64) {
    let (lo, hi) = welch.interval(0.95);
    let sign = if flipped { 1.0 } else { -1.0 };
    let (x, y) = (10f64.powf(sign * lo), 10f64.powf(sign * hi));
    (10f64.powf(sign * welch.diff), x.min(y), x.max(y))
}

fn render(results: &Results, figures: &[Figure]) -> (String, Vec<FindingRow>) {
    let mut md = String::new();
    let series = results.series();
    let _ = writeln!(md, "# {}\n", results.name);
    if let Some(question) = results.description() {
        let _ = writeln!(md, "> {question}\n");
    }
    md.push_str(&provenance(results));
    md.push_str(&grid(results));
    md.push_str(&tuning(results));
    if results.runs.is_empty() {
        md.push_str("\nNo run is complete yet.\n");
        return (md, Vec::new());
    }
    let panel_keys: Vec<_> = results.keys_with(Role::Panel).collect();
    let panels = results.panels(&panel_keys);
    md.push_str(&summary_table(results, &series, &panels));
    let (text, rows) = findings(results, &series, &panels);
    md.push_str(&text);
    md.push_str(
        "\n## Figures\n\nEach figure is 2100 px wide (7 in, two columns, at 300 dpi) with an SVG \
         beside it; one of at most 3 panels also comes one column wide \
         (`plots/<name>_column.png` and `.svg`: 3.5 in at 300 dpi, the panels stacked).\n\n",
    );
    for figure in figures {
        let _ = writeln!(
            md,
            "![{stem}](plots/{stem}.png)\n\n{caption} Vector version: `plots/{stem}.svg`.\n",
            stem = figure.stem,
            caption = figure.caption
        );
    }
    (md, rows)
}

/// The choices of `tuning.yaml`, if the experiment was tuned: per grid point the chosen
/// settings and the median validation loss they reached over the tuning seeds.
fn tuning(results: &Results) -> String {
    let path = results.dir.path().join("tuning.yaml");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return String::new();
    };
    let Ok(tuning) = serde_yaml::from_str::<Value>(&text) else {
        return String::new();
    };
    let show = |v: &Value| crate::sweep::scalar(v);
    let rungs = tuning["rungs"].as_sequence().map_or(String::new(), |r| {
        r.iter().map(show).collect::<Vec<_>>().join(", ")
    });
    let list = |v: &Value| {
        v.as_sequence().map_or(String::new(), |s| {
            s.iter().map(show).collect::<Vec<_>>().join(", ")
        })
    };
    let trials = tuning["points"][0]["trials"]
        .as_sequence()
        .map_or(0, Vec::len);
    let mut md = format!(
        "\n## Tuning\n\nEvery grid point was tuned on its own with the same budget \
         (`tuning.yaml`): {trials} configurations, the same for every point, by successive \
         halving over rungs of {rungs} steps (eta {}) on the tuning seeds {}, disjoint from \
         the evaluation seeds; the configuration with the lowest median final validation \
         loss at the full budget was chosen.\n\n| point | chosen | median loss |\n|---|---|---|\n",
        show(&tuning["eta"]),
        list(&tuning["seeds"]),
    );
    let (mut at_edge, mut points, mut plateau) = (Vec::new(), 0, Vec::new());
    for point in tuning["points"].as_sequence().into_iter().flatten() {
        points += 1;
        if point["all_kept_at_baseline"].as_sequence().is_some() {
            plateau.push(point_in_words(&show(&point["point"])));
        }
        let mut edge = false;
        let chosen = point["chosen"].as_mapping().map_or(String::new(), |m| {
            m.iter()
                .map(|(k, v)| {
                    let side = candidate_edge(point, k, v);
                    edge |= side.is_some();
                    format!(
                        "{}={}{}",
                        show(k),
                        sig_value(v),
                        side.map_or(String::new(), |side| format!(" ({side} candidate)"))
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        });
        if edge {
            at_edge.push(point_in_words(&show(&point["point"])));
        }
        let trial = point["chosen_trial"].as_u64();
        let median = point["trials"]
            .as_sequence()
            .and_then(|trials| trials.iter().find(|t| t["trial"].as_u64() == trial))
            .and_then(|t| t["rungs"].as_sequence()?.last()?["median"].as_f64())
            .map_or("–".into(), sig);
        let _ = writeln!(
            md,
            "| {} | {chosen} | {median} |",
            point_in_words(&show(&point["point"]))
        );
    }
    if at_edge.is_empty() {
        md.push_str(
            "\nEvery point chose a value inside the range of its candidates, not the smallest \
             or largest drawn.\n",
        );
    } else {
        let _ = writeln!(
            md,
            "\n**{} of {points} points chose the smallest or largest candidate** of a tuned \
             key, so their best setting may lie outside the range searched (widen the space \
             there before reading their comparisons as final): {}.",
            at_edge.len(),
            at_edge.join("; ")
        );
    }
    if !plateau.is_empty() {
        let _ = writeln!(
            md,
            "
**{} of {points} points had no candidate off the baseline at a rung before the \
             last**, so all their candidates went on (a ranking there is noise): {}. Where \
             the chosen loss is still at the baseline, no candidate learned the task within \
             the budget.",
            plateau.len(),
            plateau.join("; ")
        );
    }
    md
}

/// A grid point as `tuning.yaml` names it (`task.kind=adding task.seq_len=100
/// model.cell=lstm`) in the words of the figures (`adding, T = 100, LSTM`).
fn point_in_words(point: &str) -> String {
    // `key=value` pairs; a token without `=` continues the last value, which has spaces
    // (`train.clip=norm 1.0`, `model.hidden=[64, 64]`).
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for token in point.split(' ') {
        match (token.split_once('='), pairs.last_mut()) {
            (Some((key, value)), _) => pairs.push((key, value.to_owned())),
            (None, Some((_, value))) => {
                value.push(' ');
                value.push_str(token);
            }
            (None, None) => pairs.push(("", token.to_owned())),
        }
    }
    pairs
        .iter()
        .map(|(key, value)| match *key {
            "model.cell" => display_label(value),
            "" => value.clone(),
            key => key_value(key, value),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `Some("smallest")` or `Some("largest")` when `point`'s chosen `value` of `key` is the
/// extreme of its trials' numeric values, else `None`.
fn candidate_edge(point: &Value, key: &Value, value: &Value) -> Option<&'static str> {
    let chosen = value.as_f64()?;
    let values: Vec<f64> = point["trials"]
        .as_sequence()?
        .iter()
        .filter_map(|t| t["settings"].get(key)?.as_f64())
        .collect();
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if values.len() < 2 || lo == hi {
        None
    } else if chosen <= lo {
        Some("smallest")
    } else if chosen >= hi {
        Some("largest")
    } else {
        None
    }
}

/// A tuned value in few digits (floats), or as written.
fn sig_value(value: &Value) -> String {
    match value.as_f64() {
        Some(v) if !value.is_i64() && !value.is_u64() => sig(v),
        _ => crate::sweep::scalar(value),
    }
}

fn provenance(results: &Results) -> String {
    let get = |key: &str| {
        results
            .manifest
            .get(key)
            .map(crate::sweep::scalar)
            .filter(|v| v != "null")
    };
    let diverged = results
        .runs
        .iter()
        .filter(|r| r.summary.status == RunStatus::Diverged)
        .count();
    let train_s: f64 = results.runs.iter().map(|r| r.summary.wall_s).sum();
    let mut text = format!(
        "{} of {} runs complete ({diverged} diverged); {:.0} s of training in all \
         (summed over runs).",
        results.runs.len(),
        results.planned,
        train_s
    );
    if !results.failed.is_empty() {
        let failed: Vec<String> = results
            .failed
            .iter()
            .map(|(id, error)| format!("`{id}` ({error})"))
            .collect();
        let _ = write!(
            text,
            " **{} failed** and are left out: {} (each error in `runs/<id>/failed.yaml`; \
             `rnnlab run` again retries them).",
            failed.len(),
            failed.join(", ")
        );
    }
    if let Some(cpu) = get("cpu") {
        let _ = write!(text, " Machine: {cpu}");
        if let Some(threads) = get("threads") {
            let _ = write!(text, ", {threads} threads");
        }
        if let (Some(jobs), Some(per_run)) = (get("jobs"), get("threads_per_run")) {
            let _ = write!(text, "; {jobs} run(s) at a time, {per_run} thread(s) each");
        }
        text.push('.');
    }
    if let Some(version) = get("rnnlab") {
        let _ = write!(text, " rnnlab {version}");
        let short = |commit: &str| commit.get(..12).unwrap_or(commit).to_owned();
        let dirty = |commit: &str| {
            if commit.ends_with("-dirty") {
                " (with uncommitted changes)"
            } else {
                ""
            }
        };
        match (get("build_commit"), get("git_commit")) {
            // Manifests from before the build commit was recorded name the checkout only.
            (None, Some(checkout)) => {
                let _ = write!(text, " at commit {}", short(&checkout));
            }
            (Some(build), checkout) => {
                let _ = write!(
                    text,
                    " built from commit {}{}",
                    short(&build),
                    dirty(&build)
                );
                if let Some(checkout) = checkout.filter(|c| !build.starts_with(c.as_str())) {
                    let _ = write!(text, ", run in a checkout at commit {}", short(&checkout));
                }
            }
            (None, None) => {}
        }
        text.push('.');
    }
    if let Some(file) = get("experiment_file") {
        let _ = write!(text, " Experiment file: `{file}`.");
    }
    text.push_str("\n\n");
    text
}

fn grid(results: &Results) -> String {
    let mut md = String::from("## Grid\n\n");
    let seeds: std::collections::BTreeSet<u64> = results.runs.iter().map(|r| r.seed).collect();
    let seeds: Vec<String> = seeds.iter().map(u64::to_string).collect();
    md.push_str("| key | values | shown as |\n|---|---|---|\n");
    for key in &results.keys {
        let role = match key.role {
            Role::Cell => "part of the cell (colour)",
            Role::Panel => "panels (one per value)",
            Role::Series => "series (varied for some cells only)",
        };
        let _ = writeln!(
            md,
            "| `{}` | {} | {role} |",
            key.name,
            key.values.join(", ")
        );
    }
    let _ = writeln!(md, "| seed | {} | mean and spread |", seeds.join(", "));
    if let Some(run) = results.runs.first() {
        let config = std::fs::read_to_string(results.dir.run(&run.id).config())
            .ok()
            .and_then(|text| serde_yaml::from_str::<Value>(&text).ok())
            .and_then(|v| v.get("run").cloned())
            .and_then(|v| serde_yaml::to_string(&v).ok());
        if let Some(config) = config {
            let _ = writeln!(
                md,
                "\nThe first run's resolved configuration (every run's is in \
                 `runs/<id>/config.yaml`):\n\n```yaml\n{config}```"
            );
        }
    }
    md
}

fn summary_table(results: &Results, series: &[Series], panels: &[Panel]) -> String {
    let panel_keys: Vec<_> = results.keys_with(Role::Panel).collect();
    let mut md = String::from(
        "\n## Summary\n\nMean ± standard deviation over seeds of the final validation \
         evaluation; loss as the geometric mean. Solved: seeds that met the task's criterion \
         (adding: MSE < 0.01; copy, temporal order: accuracy > 0.99); steps: median \
         over the seeds that solved it. Last third: the final loss over the loss two thirds \
         of the way through training (median over seeds); marked *still falling* below \
         0.8 on a task not solved by every seed.\n\n",
    );
    let mut header: Vec<String> = panel_keys.iter().map(|k| k.name.clone()).collect();
    header.extend(
        [
            "series",
            "seeds",
            "metric",
            "final metric",
            "final loss",
            "solved",
            "steps to solve",
            "last third",
            "wall s",
            "samples/s",
            "parameters",
        ]
        .map(String::from),
    );
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
    let mut falling: Vec<String> = Vec::new();
    for panel in panels {
        for outcome in outcomes(series, panel) {
            let mut row: Vec<String> = panel.values.iter().map(|(_, v)| v.clone()).collect();
            let first = outcome.runs[0];
            let wall = Spread::of(
                &outcome
                    .runs
                    .iter()
                    .map(|r| r.summary.wall_s)
                    .collect::<Vec<_>>(),
            );
            let rate = Spread::of(
                &outcome
                    .runs
                    .iter()
                    .map(|r| r.summary.samples_per_s)
                    .collect::<Vec<_>>(),
            );
            row.push(outcome.series.label.clone());
            row.push(format!(
                "{}{}",
                outcome.runs.len(),
                if outcome.diverged > 0 {
                    format!(" ({} diverged)", outcome.diverged)
                } else {
                    String::new()
                }
            ));
            row.push(metric_label(&first.task));
            row.push(
                outcome
                    .metric()
                    .map_or("–".into(), |s| format!("{:.3} ± {:.3}", s.mean, s.std)),
            );
            row.push(loss_text(&outcome));
            row.push(format!("{}/{}", outcome.solved, outcome.runs.len()));
            row.push(
                outcome
                    .median_steps_to_solve()
                    .map_or("–".into(), |s| s.to_string()),
            );
            row.push(outcome.last_third_ratio().map_or("–".into(), |r| {
                if outcome.still_falling() {
                    format!("{} *still falling*", sig(r))
                } else {
                    sig(r)
                }
            }));
            if outcome.still_falling() {
                falling.push(format!("{} ({})", outcome.series.label, panel.title()));
            }
            row.push(wall.map_or("–".into(), |s| format!("{:.1}", s.mean)));
            row.push(rate.map_or("–".into(), |s| format!("{:.0}", s.mean)));
            row.push(first.summary.parameters.to_string());
            let _ = writeln!(md, "| {} |", row.join(" | "));
        }
    }
    md.push('\n');
    if falling.is_empty() {
        md.push_str(
            "Every series had solved its task on every seed or flattened (its loss fell by \
             less than 20 % over the last third of training).\n",
        );
    } else {
        let _ = writeln!(
            md,
            "**Still falling when the budget ran out** (loss down by more than 20 % over \
             the last third of training, task not solved by every seed), so a longer budget \
             may change how they compare: {}.",
            falling.join("; ")
        );
    }
    md
}

/// `0.0123 (×/÷ 1.4)`: geometric mean and geometric standard deviation of the losses.
fn loss_text(outcome: &Outcome) -> String {
    match Spread::of(&outcome.log_losses) {
        None => "diverged".into(),
        Some(s) if s.n > 1 => format!("{} (×/÷ {:.2})", sig(10f64.powf(s.mean)), 10f64.powf(s.std)),
        Some(s) => sig(10f64.powf(s.mean)),
    }
}

/// Three significant digits.
fn sig(value: f64) -> String {
    if value != 0.0 && (value.abs() < 1e-3 || value.abs() >= 1e5) {
        format!("{value:.2e}")
    } else {
        pretty(value)
    }
}

fn findings(results: &Results, series: &[Series], panels: &[Panel]) -> (String, Vec<FindingRow>) {
    let all: Vec<Vec<Outcome>> = panels.iter().map(|p| outcomes(series, p)).collect();
    let titles: Vec<String> = panels
        .iter()
        .map(|panel| {
            if panel.values.is_empty() {
                "All runs".to_owned()
            } else {
                panel.title()
            }
        })
        .collect();
    let mut wins: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for ranked in all.iter().filter(|r| r.len() > 1) {
        wins.entry(ranked[0].series.label.clone()).or_default().0 += 1;
    }
    let reference = reference_series(series, &wins);
    // The family: in each setting the best against every other series, and the
    // reference against every other series.
    let mut pairs = Vec::new();
    for (panel, ranked) in all.iter().enumerate() {
        pairs.extend((1..ranked.len()).map(|j| (panel, 0, j)));
        if let Some(r) =
            reference.and_then(|r| ranked.iter().position(|o| o.series.label == r.label))
        {
            pairs.extend((0..ranked.len()).filter(|&j| j != r).map(|j| (panel, r, j)));
        }
    }
    let family = Family::new(&all, &pairs);
    let mut rows = finding_rows(&family, &all, &titles);

    let tests = if series.len() > 1 {
        format!(
            " Within each setting the series are ranked by final validation loss. Two \
             series differ **clearly** when Welch's t-test on the log10 of their seeds' final \
             losses gives p < {ALPHA} after Holm's adjustment over the report's family of {} \
             tests (each setting's best series against every other, and the reference series \
             against every other); ratios are of geometric-mean losses with their 95 % \
             interval. Every test is in `findings.parquet`.",
            family.size()
        )
    } else {
        String::new()
    };
    let mut md = format!(
        "\n## Findings\n\nGenerated from the runs above.{tests} \"At the baseline\" means a \
         final loss above {AT_BASELINE} × the trivial predictor's.\n\n"
    );
    if series.len() > 1 {
        md.push_str("### Per setting\n\n");
    }
    for (panel_index, (panel, ranked)) in panels.iter().zip(&all).enumerate() {
        let base_loss = baseline(&panel.task()).0;
        let mut line = format!("- **{}**: ", titles[panel_index]);
        let Some(best) = ranked.first() else { continue };
        if ranked.len() == 1 {
            let _ = write!(line, "{}", describe(best, base_loss));
        } else {
            let clear_over_all = ranked[1..]
                .iter()
                .all(|o| family.clear(panel_index, best, o));
            if clear_over_all {
                wins.entry(best.series.label.clone()).or_default().1 += 1;
            }
            let _ = write!(
                line,
                "lowest loss: **{}** — {}.",
                best.series.label,
                describe(best, base_loss)
            );
            let runner_up = &ranked[1];
            let _ = write!(
                line,
                " Next: {} ({}), {}.",
                runner_up.series.label,
                describe(runner_up, base_loss),
                verdict(
                    family.get(panel_index, best, runner_up),
                    family.size(),
                    best,
                    runner_up
                )
            );
            let tied: Vec<&str> = ranked[2..]
                .iter()
                .filter(|o| !family.clear(panel_index, best, o))
                .map(|o| o.series.label.as_str())
                .collect();
            if clear_over_all {
                line.push_str(" It is clearly ahead of every other series.");
            } else if !tied.is_empty() {
                let _ = write!(
                    line,
                    " Also not distinguishable from it: {}.",
                    tied.join("; ")
                );
            }
            let at_baseline: Vec<&str> = ranked
                .iter()
                .filter(|o| o.loss().is_some_and(|l| l > AT_BASELINE * base_loss))
                .map(|o| o.series.label.as_str())
                .collect();
            if !at_baseline.is_empty() {
                let _ = write!(line, " At the baseline: {}.", at_baseline.join("; "));
            }
        }
        let diverged: Vec<String> = ranked
            .iter()
            .filter(|o| o.diverged > 0)
            .map(|o| format!("{} ({}/{})", o.series.label, o.diverged, o.runs.len()))
            .collect();
        if !diverged.is_empty() {
            let _ = write!(line, " Diverged: {}.", diverged.join("; "));
        }
        md.push_str(&line);
        md.push('\n');
    }

    if series.len() > 1 && panels.len() > 1 {
        md.push_str("\n### Across settings\n\n");
        for (label, (won, clear)) in &wins {
            let _ = writeln!(
                md,
                "- {label} has the lowest loss in {won} of {} settings ({clear} of them \
                 clearly ahead of every other series).",
                panels.len()
            );
        }
        if let Some(reference) = reference {
            let (text, sign_rows) = head_to_head(reference, series, &all, &family);
            md.push_str(&text);
            rows.extend(sign_rows);
        }
    }
    if let Some(key) = results.panel_key("task.seq_len") {
        md.push_str(&solved_up_to(results, series, &key.name, "T"));
    }
    if let Some(key) = results.panel_key("model.hidden") {
        md.push_str(&solved_up_to(results, series, &key.name, "units"));
    }
    if let Some(key) = results.axis_key("model.hidden") {
        let (text, size_rows) = by_units(key, series, panels, &all);
        md.push_str(&text);
        rows.extend(size_rows);
    }
    md.push_str(&gradient_table(series, panels));
    (md, rows)
}

/// Does size matter? Along the units axis, each series' final loss at every width
/// against the next smaller one and the largest width against the smallest: Welch on
/// log10 final loss, Holm-adjusted as a family of their own (so that the comparisons of
/// series above keep their numbers), in `findings.parquet` as `welch_log10_loss_by_units`.
fn by_units(
    key: &crate::results::Key,
    series: &[Series],
    panels: &[Panel],
    all: &[Vec<Outcome>],
) -> (String, Vec<FindingRow>) {
    // Panels that differ only in the width (keyed by the other panel keys' values), each
    // as (its width's place in the key's order, the width, the panel's index).
    type Widths = Vec<(usize, String, usize)>;
    let mut groups: BTreeMap<Vec<(String, String)>, Widths> = BTreeMap::new();
    for (index, panel) in panels.iter().enumerate() {
        let rest: Vec<(String, String)> = panel
            .values
            .iter()
            .filter(|(k, _)| *k != key.name)
            .cloned()
            .collect();
        let Some((_, width)) = panel.values.iter().find(|(k, _)| *k == key.name) else {
            continue;
        };
        let order = key.values.iter().position(|v| v == width).unwrap_or(0);
        groups
            .entry(rest)
            .or_default()
            .push((order, width.clone(), index));
    }
    // Per group and series: the title prefix, the (width, loss) path from the smallest
    // width up, and its tests (smaller and larger width with their outcomes, Welch).
    type Tested<'a> = ((String, &'a Outcome<'a>), (String, &'a Outcome<'a>), Welch);
    type Line<'a> = (String, &'a Series, Vec<(String, f64)>, Vec<Tested<'a>>);
    let mut lines: Vec<Line> = Vec::new();
    for (rest, mut widths) in groups {
        widths.sort();
        let prefix: String = rest
            .iter()
            .map(|(k, v)| format!("{}, ", key_value(k, v)))
            .collect();
        for s in series {
            let at: Vec<(String, &Outcome)> = widths
                .iter()
                .filter_map(|(_, width, panel)| {
                    let outcome = all[*panel].iter().find(|o| o.series.label == s.label)?;
                    Some((width.clone(), outcome))
                })
                .collect();
            if at.len() < 2 {
                continue;
            }
            let mut pairs: Vec<(usize, usize)> = (1..at.len()).map(|i| (i - 1, i)).collect();
            if at.len() > 2 {
                pairs.push((0, at.len() - 1));
            }
            let tests = pairs
                .into_iter()
                .filter_map(|(i, j)| {
                    let welch = Welch::of(&at[i].1.log_losses, &at[j].1.log_losses)?;
                    Some((at[i].clone(), at[j].clone(), welch))
                })
                .collect();
            let losses = at
                .iter()
                .filter_map(|(width, o)| Some((width.clone(), o.loss()?)))
                .collect();
            lines.push((prefix.clone(), s, losses, tests));
        }
    }
    let p: Vec<f64> = lines
        .iter()
        .flat_map(|line| line.3.iter().map(|t| t.2.p))
        .collect();
    if p.is_empty() {
        return (String::new(), Vec::new());
    }
    let mut adjusted = holm(&p).into_iter();
    let mut md = format!(
        "\n### By units\n\nEach series' final loss at each width against the next smaller \
         width, and at the largest against the smallest: Welch's t-test on log10 final loss, \
         Holm-adjusted over these {} tests (a family of their own); ratios are the larger \
         width's loss over the smaller's, with their 95 % interval.\n\n",
        p.len()
    );
    let mut rows = Vec::new();
    for (prefix, s, losses, tests) in &lines {
        let path: Vec<String> = losses
            .iter()
            .map(|(width, loss)| format!("{} ({width} units)", sig(*loss)))
            .collect();
        let _ = write!(md, "- {prefix}{}: loss {}", s.label, path.join(" → "));
        let mut steps = Vec::new();
        for ((small, large, welch), p_adj) in tests.iter().zip(adjusted.by_ref()) {
            let (ratio, lo, hi) = ratio_interval(welch, false);
            let clear = if p_adj < ALPHA { ", clear" } else { "" };
            steps.push(format!(
                "{} → {} units: {}× ({}–{}; p = {}, adjusted {}{clear})",
                small.0,
                large.0,
                sig(ratio),
                sig(lo),
                sig(hi),
                sig(welch.p),
                sig(p_adj)
            ));
            let label = |width: &str| format!("{}, {width} units", s.label);
            rows.push(FindingRow {
                setting: format!("{prefix}by units"),
                a: label(&small.0),
                b: label(&large.0),
                test: "welch_log10_loss_by_units",
                statistic: welch.t,
                n_a: small.1.log_losses.len(),
                n_b: large.1.log_losses.len(),
                p: Some(welch.p),
                p_adjusted: Some(p_adj),
                ratio: Some((ratio, lo, hi)),
            });
        }
        let _ = writeln!(md, ". {}.", steps.join("; "));
    }
    (md, rows)
}

/// The rows of `findings.parquet` for the family's Welch and Fisher tests.
fn finding_rows(family: &Family, all: &[Vec<Outcome>], titles: &[String]) -> Vec<FindingRow> {
    let mut rows = Vec::new();
    for ((panel, a, b), c) in &family.tests {
        let find = |label: &str| all[*panel].iter().find(|o| o.series.label == label);
        let (Some(oa), Some(ob)) = (find(a), find(b)) else {
            continue;
        };
        let row = |test, statistic, n: (usize, usize), p, p_adjusted, ratio| FindingRow {
            setting: titles[*panel].clone(),
            a: a.clone(),
            b: b.clone(),
            test,
            statistic,
            n_a: n.0,
            n_b: n.1,
            p,
            p_adjusted,
            ratio,
        };
        if let Some(w) = &c.welch {
            let n = (oa.log_losses.len(), ob.log_losses.len());
            rows.push(row(
                "welch_log10_loss",
                w.t,
                n,
                Some(w.p),
                c.adjusted,
                Some(ratio_interval(w, false)),
            ));
        }
        let (odds, p, adjusted) = c.fisher;
        rows.push(row(
            "fisher_solved",
            odds,
            (oa.runs.len(), ob.runs.len()),
            Some(p),
            Some(adjusted),
            None,
        ));
    }
    rows
}

/// `loss 0.0012 (×/÷ 1.3), accuracy (|error| < 0.04) 0.95, solved 3/3 in ~800 steps`.
fn describe(outcome: &Outcome, base_loss: f64) -> String {
    let metric_name = metric_label(&outcome.runs[0].task);
    let mut text = format!("loss {}", loss_text(outcome));
    if let Some(loss) = outcome.loss() {
        let _ = write!(text, " ({} of the baseline's)", pct(loss / base_loss));
    }
    if let Some(m) = outcome.metric() {
        let _ = write!(text, ", {metric_name} {:.3}", m.mean);
    }
    let _ = write!(text, ", solved {}/{}", outcome.solved, outcome.runs.len());
    if let Some(steps) = outcome.median_steps_to_solve() {
        let _ = write!(text, " (median step {steps})");
    }
    text
}

fn pct(fraction: f64) -> String {
    if fraction < 0.001 {
        "<0.1%".into()
    } else {
        format!("{}%", pretty(fraction * 100.0))
    }
}

/// What the test of `a` (the better) against `b` says, with the ratio of their losses.
///
/// When the difference is not clear, the smallest ratio that would have been is the one
/// reaching p < 0.05/m (m tests in the family) at the observed spreads and seed counts:
/// a raw p below that passes Holm's adjustment whatever the other tests say.
fn verdict(
    comparison: Option<(&Comparison, bool)>,
    family_size: usize,
    a: &Outcome,
    b: &Outcome,
) -> String {
    let Some((c, flipped)) = comparison else {
        return "not tested".into();
    };
    let seeds = format!("{} and {} seeds", a.log_losses.len(), b.log_losses.len());
    match &c.welch {
        _ if c.divergence => "a clear difference (one diverged on every seed)".into(),
        Some(w) => {
            let (ratio, lo, hi) = ratio_interval(w, flipped);
            let adjusted = c.adjusted.map_or("–".into(), sig);
            let ratio = format!(
                "{}× its loss, 95 % interval {}–{}",
                pretty(ratio),
                pretty(lo),
                pretty(hi)
            );
            if c.clear() {
                format!(
                    "{ratio}: a clear difference (p = {}, Holm-adjusted {adjusted})",
                    sig(w.p)
                )
            } else {
                let needed = 10f64.powf(w.detectable(ALPHA / family_size.max(1) as f64));
                format!(
                    "{ratio}: not distinguishable with {seeds} (p = {}, Holm-adjusted \
                     {adjusted}; at these spreads a ratio beyond {}× would have been clear)",
                    sig(w.p),
                    pretty(needed)
                )
            }
        }
        None => format!("not testable with {seeds} (fewer than two, or no seed variation)"),
    }
}

/// The plain LSTM if there is one, else the series with the most wins.
fn reference_series<'a>(
    series: &'a [Series],
    wins: &BTreeMap<String, (usize, usize)>,
) -> Option<&'a Series> {
    let most_wins = series.iter().max_by_key(|s| {
        (
            wins.get(&s.label).map_or(0, |w| w.0),
            std::cmp::Reverse(s.label.clone()),
        )
    });
    series.iter().find(|s| s.cell == "lstm").or(most_wins)
}

/// The reference series against each other series across settings: a sign test on the
/// settings where one's loss is lower, the settings where the (Holm-adjusted) test finds
/// a clear difference, and the median loss ratio with its range, so that no single
/// setting carries the headline.
fn head_to_head(
    reference: &Series,
    series: &[Series],
    all: &[Vec<Outcome>],
    family: &Family,
) -> (String, Vec<FindingRow>) {
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for other in series.iter().filter(|s| s.label != reference.label) {
        let (mut lower, mut higher, mut ahead, mut behind, mut ratios) = (0, 0, 0, 0, Vec::new());
        for (panel, ranked) in all.iter().enumerate() {
            let find = |label: &str| ranked.iter().find(|o| o.series.label == label);
            let (Some(a), Some(b)) = (find(&reference.label), find(&other.label)) else {
                continue;
            };
            let (la, lb) = (
                a.loss().unwrap_or(f64::INFINITY),
                b.loss().unwrap_or(f64::INFINITY),
            );
            match la.total_cmp(&lb) {
                std::cmp::Ordering::Less => lower += 1,
                std::cmp::Ordering::Greater => higher += 1,
                std::cmp::Ordering::Equal => {}
            }
            if family.clear(panel, a, b) {
                if la < lb { ahead += 1 } else { behind += 1 }
            }
            if la.is_finite() && lb.is_finite() {
                ratios.push(lb / la);
            }
        }
        let n = lower + higher;
        if n == 0 {
            continue;
        }
        let p = sign_test(lower, n);
        ratios.sort_by(f64::total_cmp);
        let median = (!ratios.is_empty()).then(|| {
            let mid = ratios.len() / 2;
            if ratios.len() % 2 == 1 {
                ratios[mid]
            } else {
                (ratios[mid - 1] * ratios[mid]).sqrt()
            }
        });
        let spread = median.map_or(String::new(), |m| {
            format!(
                "; {}'s loss over {}'s: median {}× (from {}× to {}×)",
                other.label,
                reference.label,
                pretty(m),
                pretty(ratios[0]),
                pretty(ratios[ratios.len() - 1])
            )
        });
        lines.push((
            p,
            format!(
                "- {} vs {}: {}'s loss is lower in {lower} of {n} settings (sign test p = {{}}, \
                 Holm-adjusted {{}}); clearly lower in {ahead}, clearly higher in {behind}{spread}.",
                reference.label, other.label, reference.label
            ),
        ));
        rows.push(FindingRow {
            setting: "across settings".into(),
            a: reference.label.clone(),
            b: other.label.clone(),
            test: "sign",
            statistic: lower as f64,
            n_a: lower,
            n_b: higher,
            p: Some(p),
            p_adjusted: None,
            ratio: median.map(|m| (m, ratios[0], ratios[ratios.len() - 1])),
        });
    }
    let adjusted = holm(&lines.iter().map(|(p, _)| *p).collect::<Vec<_>>());
    let mut md = String::new();
    for (((p, line), adj), row) in lines.iter().zip(&adjusted).zip(rows.iter_mut()) {
        row.p_adjusted = Some(*adj);
        md.push_str(
            &line
                .replacen("{}", &sig(*p), 1)
                .replacen("{}", &sig(*adj), 1),
        );
        md.push('\n');
    }
    (md, rows)
}

/// For each series (and setting of the other panel keys): the values of `key` at which
/// every seed solved the task.
fn solved_up_to(results: &Results, series: &[Series], key: &str, unit: &str) -> String {
    let others: Vec<_> = results
        .keys_with(Role::Panel)
        .filter(|k| k.name != key)
        .collect();
    let Some(key_values) = results.panel_key(key).map(|k| k.values.clone()) else {
        return String::new();
    };
    let mut md = format!(
        "\n### Where every seed solved the task, by {}\n\n",
        crate::results::short_key(key)
    );
    for panel in results.panels(&others) {
        let prefix = if panel.values.is_empty() {
            String::new()
        } else {
            format!("{}: ", panel.title())
        };
        let mut parts = Vec::new();
        for s in series {
            let mine: Vec<&&RunResult> =
                panel.runs.iter().filter(|r| r.series == s.label).collect();
            if mine.is_empty() {
                continue;
            }
            let all_solved: Vec<&str> = key_values
                .iter()
                .filter(|v| {
                    let at: Vec<_> = mine.iter().filter(|r| r.values[key] == **v).collect();
                    !at.is_empty() && at.iter().all(|r| r.summary.steps_to_solve.is_some())
                })
                .map(String::as_str)
                .collect();
            parts.push(if all_solved.is_empty() {
                format!("{} at no {unit}", s.label)
            } else {
                format!("{} at {unit} = {}", s.label, all_solved.join(", "))
            });
        }
        let _ = writeln!(md, "- {prefix}{}.", parts.join("; "));
    }
    md
}

/// g_0 / g_{T−1}: how much of the gradient at the last step reaches the first, at the
/// first training step and at the end (geometric mean over seeds).
fn gradient_table(series: &[Series], panels: &[Panel]) -> String {
    let mut rows = Vec::new();
    for panel in panels {
        for s in series {
            let runs: Vec<&&RunResult> =
                panel.runs.iter().filter(|r| r.series == s.label).collect();
            let ratio = |last: bool| {
                let logs: Vec<f64> = runs
                    .iter()
                    // A diverged run has no "end of training" to show (its last recorded
                    // row is from before it diverged).
                    .filter(|r| !last || r.summary.status != RunStatus::Diverged)
                    .filter_map(|r| {
                        let (_, norms) = if last {
                            r.gradflow.last()?
                        } else {
                            r.gradflow.first()?
                        };
                        let (first, end) = (*norms.first()?, *norms.last()?);
                        // Below f32's smallest normal number the kernels flush to 0.
                        let first = first.max(F32_FLOOR);
                        (end > 0.0 && first.is_finite() && end.is_finite())
                            .then(|| (first / end).log10())
                    })
                    .collect();
                Spread::of(&logs).map_or("–".into(), |s| sig(10f64.powf(s.mean)))
            };
            if runs.is_empty() {
                continue;
            }
            let title = if panel.values.is_empty() {
                "all".to_owned()
            } else {
                panel.title()
            };
            rows.push(format!(
                "| {title} | {} | {} | {} |",
                s.label,
                ratio(false),
                ratio(true)
            ));
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    format!(
        "\n### Gradient reaching the first step\n\n‖∂L/∂h_0‖ / ‖∂L/∂h_(T−1)‖ of the first \
         layer (geometric mean over seeds): near 1 the error signal reaches the start of the \
         sequence; many decades below 1 it vanishes before it gets there (a norm that underflowed \
         f32 counts as 1.4e-45: the kernels flush values below 1.2e-38 to zero, so such a \
         norm was below 1.2e-38, or below 1.4e-45 in runs trained before 2026-11-27; – where \
         the run diverged).\n\n| setting | \
         series | first step | end of training |\n|---|---|---|---|\n{}\n",
        rows.join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Summary;
    use rnnlab_tasks::{Task, TaskConfig};

    fn run(curve: &[(usize, f64)], solved: bool) -> RunResult {
        let &(steps, final_loss) = curve.last().unwrap();
        RunResult {
            id: "run".into(),
            seed: 0,
            task: Task::new(TaskConfig::Adding { seq_len: 10 }).unwrap(),
            cell: "lstm".into(),
            series: "lstm".into(),
            values: BTreeMap::new(),
            summary: Summary {
                status: RunStatus::Done,
                diverged_at: None,
                steps,
                final_loss,
                metric: "accuracy_0.04".into(),
                final_metric: 0.5,
                best_loss: final_loss,
                steps_to_solve: solved.then_some(steps),
                wall_s: 1.0,
                samples_per_s: 1.0,
                parameters: 1,
                peak_rss_mb: None,
            },
            curve: curve.iter().map(|&(s, l)| (s, l, 0.5)).collect(),
            gradflow: Vec::new(),
            grad_norm: Vec::new(),
        }
    }

    fn outcome(runs: &[RunResult]) -> Outcome<'_> {
        Outcome {
            series: Series {
                label: "lstm".into(),
                cell: "lstm".into(),
                variant: 0,
            },
            runs: runs.iter().collect(),
            log_losses: Vec::new(),
            diverged: 0,
            solved: runs
                .iter()
                .filter(|r| r.summary.steps_to_solve.is_some())
                .count(),
        }
    }

    #[test]
    fn tuned_points_read_in_words() {
        assert_eq!(
            point_in_words(
                "task.kind=temporal_order task.seq_len=50 model.cell=gru model.hidden=74"
            ),
            "temporal order, T = 50, GRU, 74 units"
        );
        assert_eq!(
            point_in_words("model.ablation.coupled_gates=true model.forget_bias=0.0"),
            "coupled gates, forget bias 0"
        );
        // Values with spaces are read whole: a stack of layers, a clipping rule.
        assert_eq!(
            point_in_words("task.kind=copy model.cell=lru model.hidden=[64, 64]"),
            "copy, LRU, 2 layers of 64 units"
        );
        assert_eq!(
            point_in_words("model.hidden=[128, 64] train.clip=norm 1.0"),
            "128 + 64 units, clipping: norm 1"
        );
    }

    #[test]
    fn a_choice_at_the_extreme_of_the_candidates_is_named() {
        let point: Value = serde_yaml::from_str(
            "trials:
               - { settings: { train.lr: 0.001 } }
               - { settings: { train.lr: 0.01 } }
               - { settings: { train.lr: 0.03 } }",
        )
        .unwrap();
        let key = Value::from("train.lr");
        let edge = |lr: f64| candidate_edge(&point, &key, &Value::from(lr));
        assert_eq!(edge(0.001), Some("smallest"));
        assert_eq!(edge(0.03), Some("largest"));
        assert_eq!(edge(0.01), None);
        // A key the trials do not vary has no edge.
        assert_eq!(
            candidate_edge(&point, &Value::from("train.steps"), &Value::from(3)),
            None
        );
    }

    #[test]
    fn a_loss_that_falls_over_the_last_third_is_marked_unless_solved() {
        // Evaluations at 0, 100, ..., 300: two thirds of 300 is step 200. Seeds fall
        // 0.10 → 0.05, 0.10 → 0.09 and 0.10 → 0.02 over the last third: ratios 0.5, 0.9
        // and 0.2, median 0.5 < 0.8.
        let falling = [
            run(&[(0, 1.0), (100, 0.2), (200, 0.10), (300, 0.05)], false),
            run(&[(0, 1.0), (100, 0.2), (200, 0.10), (300, 0.09)], false),
            run(&[(0, 1.0), (100, 0.2), (200, 0.10), (300, 0.02)], false),
        ];
        assert_eq!(outcome(&falling).last_third_ratio(), Some(0.5));
        assert!(outcome(&falling).still_falling());
        // The same curves on a task every seed solved are done, not unfinished.
        let solved: Vec<RunResult> = falling
            .iter()
            .map(|r| {
                let points: Vec<(usize, f64)> = r.curve.iter().map(|c| (c.0, c.1)).collect();
                run(&points, true)
            })
            .collect();
        assert!(!outcome(&solved).still_falling());
        // 0.10 → 0.085 is a fall of 15 %: flat enough.
        let flat = [run(&[(0, 1.0), (150, 0.10), (300, 0.085)], false)];
        assert!(!outcome(&flat).still_falling());
    }
}
