//! `rnnlab report DIR`: `DIR/REPORT.md`, the experiment's question, grid, summary table,
//! findings and figures.
//!
//! Every finding is computed from the runs: within each panel (a value of every key that
//! is crossed with the cells, e.g. task × T) the series are ranked by their final
//! validation loss, and two series differ clearly when Welch's t-test on the log10 of
//! their seeds' final losses gives p < 0.05 (losses are compared as ratios, and the test
//! does not assume equal seed spreads). With two or three seeds only large, consistent
//! differences pass; the report says so instead of declaring a winner.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde_yaml::Value;

use crate::plot::{Figure, pretty, write_plots};
use crate::results::{MIN_F32, Panel, Results, Role, RunResult, Series, baseline};
use crate::stats::{Spread, welch_p};
use crate::store::{RunStatus, write_text};

/// p below this is a clear difference.
const ALPHA: f64 = 0.05;
/// A final loss above this fraction of the trivial predictor's counts as "at the
/// baseline" (nothing of the dependency learned).
const AT_BASELINE: f64 = 0.9;

/// `rnnlab report DIR`.
pub fn report(dir: &Path) -> anyhow::Result<()> {
    let results = Results::open(dir)?;
    let path = write_report(&results)?;
    println!("{}", path.display());
    Ok(())
}

/// Draws the figures and writes `REPORT.md`; returns its path.
pub fn write_report(results: &Results) -> anyhow::Result<std::path::PathBuf> {
    let figures = write_plots(results)?;
    let path = results.dir.report();
    write_text(&path, &render(results, &figures))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

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

/// Whether `a` and `b` differ clearly, and the p-value when it can be computed.
fn compare(a: &Outcome, b: &Outcome) -> (bool, Option<f64>) {
    match welch_p(&a.log_losses, &b.log_losses) {
        Some(p) => (p < ALPHA, Some(p)),
        // Every seed of one series diverged while the other's did not: clear.
        None if a.log_losses.is_empty() != b.log_losses.is_empty() => (true, None),
        None => (false, None),
    }
}

fn render(results: &Results, figures: &[Figure]) -> String {
    let mut md = String::new();
    let series = results.series();
    let _ = writeln!(md, "# {}\n", results.name);
    if let Some(question) = results.description() {
        let _ = writeln!(md, "> {question}\n");
    }
    md.push_str(&provenance(results));
    md.push_str(&grid(results));
    if results.runs.is_empty() {
        md.push_str("\nNo run is complete yet.\n");
        return md;
    }
    let panel_keys: Vec<_> = results.keys_with(Role::Panel).collect();
    let panels = results.panels(&panel_keys);
    md.push_str(&summary_table(results, &series, &panels));
    md.push_str(&findings(results, &series, &panels));
    md.push_str("\n## Figures\n\n");
    for figure in figures {
        let _ = writeln!(
            md,
            "![{stem}](plots/{stem}.png)\n\n{caption} Vector version: `plots/{stem}.svg`.\n",
            stem = figure.stem,
            caption = figure.caption
        );
    }
    md
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
        if let Some(commit) = get("git_commit") {
            let _ = write!(text, " at commit {}", &commit[..commit.len().min(12)]);
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
            Role::Cell => "the cell (colour)",
            Role::Panel => "panels (crossed with every cell)",
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
         over the seeds that solved it.\n\n",
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
            "wall s",
            "samples/s",
            "parameters",
        ]
        .map(String::from),
    );
    let _ = writeln!(md, "| {} |", header.join(" | "));
    let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
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
            row.push(first.task.metric_name().to_owned());
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
            row.push(wall.map_or("–".into(), |s| format!("{:.1}", s.mean)));
            row.push(rate.map_or("–".into(), |s| format!("{:.0}", s.mean)));
            row.push(first.summary.parameters.to_string());
            let _ = writeln!(md, "| {} |", row.join(" | "));
        }
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

fn findings(results: &Results, series: &[Series], panels: &[Panel]) -> String {
    let mut md = format!(
        "\n## Findings\n\nGenerated from the runs above. Within each setting the series are \
         ranked by final validation loss; two series differ **clearly** when Welch's \
         t-test on the log10 of their seeds' final losses gives p < {ALPHA} (with 2–3 seeds \
         only large, consistent gaps pass). \"At the baseline\" means a final loss above \
         {AT_BASELINE} × the trivial predictor's.\n\n"
    );
    let mut wins: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let all: Vec<Vec<Outcome>> = panels.iter().map(|p| outcomes(series, p)).collect();
    if series.len() > 1 {
        md.push_str("### Per setting\n\n");
    }
    for (panel, ranked) in panels.iter().zip(&all) {
        let base_loss = baseline(&panel.task()).0;
        let title = if panel.values.is_empty() {
            "All runs".to_owned()
        } else {
            panel.title()
        };
        let mut line = format!("- **{title}**: ");
        let Some(best) = ranked.first() else { continue };
        if ranked.len() == 1 {
            let _ = write!(line, "{}", describe(best, base_loss));
        } else {
            let clear_over_all = ranked[1..].iter().all(|o| compare(best, o).0);
            let entry = wins.entry(best.series.label.clone()).or_default();
            entry.0 += 1;
            if clear_over_all {
                entry.1 += 1;
            }
            let _ = write!(
                line,
                "lowest loss: **{}** — {}.",
                best.series.label,
                describe(best, base_loss)
            );
            let runner_up = &ranked[1];
            let (clear, p) = compare(best, runner_up);
            let ratio = match (best.loss(), runner_up.loss()) {
                (Some(a), Some(b)) => format!("{}× its loss", pretty(b / a)),
                _ => "diverged".into(),
            };
            let _ = write!(
                line,
                " Next: {} ({}; {ratio}), {}.",
                runner_up.series.label,
                describe(runner_up, base_loss),
                verdict(clear, p)
            );
            let tied: Vec<&str> = ranked[2..]
                .iter()
                .filter(|o| !compare(best, o).0)
                .map(|o| o.series.label.as_str())
                .collect();
            if clear_over_all {
                line.push_str(" It is clearly ahead of every other series.");
            } else if !tied.is_empty() {
                let _ = write!(line, " Also within its seed spread: {}.", tied.join(", "));
            }
            let at_baseline: Vec<&str> = ranked
                .iter()
                .filter(|o| o.loss().is_some_and(|l| l > AT_BASELINE * base_loss))
                .map(|o| o.series.label.as_str())
                .collect();
            if !at_baseline.is_empty() {
                let _ = write!(line, " At the baseline: {}.", at_baseline.join(", "));
            }
        }
        let diverged: Vec<String> = ranked
            .iter()
            .filter(|o| o.diverged > 0)
            .map(|o| format!("{} ({}/{})", o.series.label, o.diverged, o.runs.len()))
            .collect();
        if !diverged.is_empty() {
            let _ = write!(line, " Diverged: {}.", diverged.join(", "));
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
        md.push_str(&head_to_head(series, &all, &wins));
    }
    if let Some(key) = results.panel_key("task.seq_len") {
        md.push_str(&solved_up_to(results, series, &key.name, "T"));
    }
    if let Some(key) = results.panel_key("model.hidden") {
        md.push_str(&solved_up_to(results, series, &key.name, "units"));
    }
    md.push_str(&gradient_table(series, panels));
    md
}

/// `loss 0.0012 (×/÷ 1.3), accuracy_0.04 0.95, solved 3/3 in ~800 steps`.
fn describe(outcome: &Outcome, base_loss: f64) -> String {
    let metric_name = outcome.runs[0].task.metric_name();
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

fn verdict(clear: bool, p: Option<f64>) -> String {
    match (clear, p) {
        (true, Some(p)) => format!("a clear difference (p = {})", sig(p)),
        (false, Some(p)) => format!("within the seed spread (p = {})", sig(p)),
        (true, None) => "a clear difference (one diverged on every seed)".into(),
        (false, None) => "not testable (fewer than two seeds or no seed variation)".into(),
    }
}

/// The reference series (the plain LSTM if there is one, else the one with the most
/// wins) against each other series: in how many settings each is clearly ahead, and the
/// geometric-mean loss ratio.
fn head_to_head(
    series: &[Series],
    all: &[Vec<Outcome>],
    wins: &BTreeMap<String, (usize, usize)>,
) -> String {
    let most_wins = series.iter().max_by_key(|s| {
        (
            wins.get(&s.label).map_or(0, |w| w.0),
            std::cmp::Reverse(s.label.clone()),
        )
    });
    let Some(reference) = series.iter().find(|s| s.label == "lstm").or(most_wins) else {
        return String::new();
    };
    let mut md = String::new();
    for other in series.iter().filter(|s| s.label != reference.label) {
        let (mut ahead, mut behind, mut even, mut log_ratios) = (0, 0, 0, Vec::new());
        for ranked in all {
            let find = |label: &str| ranked.iter().find(|o| o.series.label == label);
            let (Some(a), Some(b)) = (find(&reference.label), find(&other.label)) else {
                continue;
            };
            match compare(a, b) {
                (true, _)
                    if a.loss().unwrap_or(f64::INFINITY) < b.loss().unwrap_or(f64::INFINITY) =>
                {
                    ahead += 1
                }
                (true, _) => behind += 1,
                (false, _) => even += 1,
            }
            if let (Some(la), Some(lb)) = (a.loss(), b.loss()) {
                log_ratios.push((lb / la).log10());
            }
        }
        if ahead + behind + even == 0 {
            continue;
        }
        let ratio = Spread::of(&log_ratios).map_or(String::new(), |s| {
            format!(
                "; over those settings {}'s loss is {}× {}'s (geometric mean)",
                other.label,
                pretty(10f64.powf(s.mean)),
                reference.label
            )
        });
        let _ = writeln!(
            md,
            "- {} vs {}: {} clearly lower in {ahead}, {} clearly lower in {behind}, no clear \
             difference in {even} of {} settings{ratio}.",
            reference.label,
            other.label,
            reference.label,
            other.label,
            ahead + behind + even
        );
    }
    md
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
                    .filter_map(|r| {
                        let (_, norms) = if last {
                            r.gradflow.last()?
                        } else {
                            r.gradflow.first()?
                        };
                        let (first, end) = (*norms.first()?, *norms.last()?);
                        // Below f32's smallest subnormal the norm is 0: count it there.
                        let first = if first == 0.0 { MIN_F32 } else { first };
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
         f32 counts as 1.4e-45; – where the run diverged).\n\n| setting | \
         series | first step | end of training |\n|---|---|---|---|\n{}\n",
        rows.join("\n")
    )
}
