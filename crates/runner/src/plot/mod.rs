//! `rnnlab plot DIR`: paper-style figures of an experiment in `DIR/plots/`, each as a PNG
//! (1800 px wide) and an SVG.
//!
//! Text is drawn with the DejaVu Sans font compiled into the binary, so the PNGs render
//! the same on a machine without fonts (the SVGs name `sans-serif`, which every viewer
//! has). Each cell has one colour in every figure (a colour-blind-safe palette); a
//! cell's second and third series (e.g. `lstm forget_bias=0` and `=1`) are dashed and
//! dotted. The legend sits above the panels, so it never covers data. Which figures are
//! drawn follows from what the experiment varies (see [`figures`]); a figure without
//! data is skipped.
//!
//! This module turns results into [`Figure`]s; `render` draws them (plotters, the
//! bundled font, layout) and `png` encodes the palette PNGs.

mod png;
mod render;
mod style;

use style::BASELINE_GREY;

pub use render::pretty;
use render::render;

use std::path::Path;

use anyhow::Context;
use plotters::style::RGBColor;

use crate::results::{
    F32_FLOOR, Panel, Results, Role, RunResult, Series, baseline, key_value, label_hash,
};
use crate::stats::median;
use crate::store::RunStatus;
use rnnlab_cells::registry;

/// One figure, ready to draw on any backend.
#[derive(Debug, Clone)]
pub struct Figure {
    /// File name without extension (`learning_curves`).
    pub stem: String,
    /// The title over the panels.
    pub title: String,
    /// One sentence for the report saying what is drawn.
    pub caption: String,
    /// Legend entries, in order.
    pub legend: Vec<(String, Style)>,
    /// Panels per row.
    pub cols: usize,
    /// The panels, row by row.
    pub panels: Vec<PanelSpec>,
}

/// Colour and dash of a line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Style {
    /// Its colour.
    pub color: RGBColor,
    /// 0 solid, 1 dashed, 2 dotted.
    pub dash: usize,
}

/// One panel of a figure.
#[derive(Debug, Clone)]
pub enum PanelSpec {
    /// Lines over a numeric x axis.
    Lines(LinesPanel),
    /// A table of coloured cells with a value in each (e.g. solved fractions).
    Heatmap(HeatmapPanel),
}

/// An axis: its label and whether (and in which base) it is logarithmic.
#[derive(Debug, Clone)]
pub struct Axis {
    /// Label, with units.
    pub label: String,
    /// `Some(base)` for a log axis.
    pub log: Option<f64>,
    /// A fixed range (in data units), or `None` to fit the data.
    pub range: Option<(f64, f64)>,
}

/// A panel of lines.
#[derive(Debug, Clone)]
pub struct LinesPanel {
    /// Title over the panel.
    pub title: String,
    /// x axis.
    pub x: Axis,
    /// y axis.
    pub y: Axis,
    /// The lines.
    pub lines: Vec<LineSpec>,
    /// A dashed grey horizontal line (the task's trivial baseline).
    pub baseline: Option<f64>,
}

/// One line: its mean, an optional band and optional per-seed points.
#[derive(Debug, Clone)]
pub struct LineSpec {
    /// Colour and dash.
    pub style: Style,
    /// The line (x, y), sorted by x.
    pub points: Vec<(f64, f64)>,
    /// A shaded band (x, low, high).
    pub band: Vec<(f64, f64, f64)>,
    /// Individual points (each seed).
    pub dots: Vec<(f64, f64)>,
    /// Marks each point of the line (for lines over a few x values).
    pub markers: bool,
    /// One thin line per seed, drawn under the main line.
    pub seeds: Vec<Vec<(f64, f64)>>,
    /// A × where a seed diverged: at the step it diverged, at its last value.
    pub crosses: Vec<(f64, f64)>,
}

/// A heatmap panel: rows × columns of values in [0, 1] with a text in each cell.
#[derive(Debug, Clone)]
pub struct HeatmapPanel {
    /// Title over the panel.
    pub title: String,
    /// Row names, top to bottom.
    pub rows: Vec<String>,
    /// Column names, left to right.
    pub cols: Vec<String>,
    /// What the columns are.
    pub col_label: String,
    /// `cells[row][col]`: the value in [0, 1] (colour) and the text.
    pub cells: Vec<Vec<Option<(f64, String)>>>,
}

/// The colour of a cell label: the registry's (a colour-blind-safe palette, Okabe & Ito
/// 2008, then Tableau), so the same cell is always the same colour; labels without one
/// (rare ablation combinations) take a stable colour from the rest of Tableau's.
pub fn cell_color(cell: &str) -> RGBColor {
    const OTHERS: [RGBColor; 8] = [
        RGBColor(127, 127, 127),
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(227, 119, 194),
        RGBColor(188, 189, 34),
        RGBColor(23, 190, 207),
    ];
    match registry::label_colors().find(|(label, _)| *label == cell) {
        Some((_, [r, g, b])) => RGBColor(r, g, b),
        None => OTHERS[label_hash(cell) % OTHERS.len()],
    }
}

fn style_of(series: &Series) -> Style {
    Style {
        color: cell_color(&series.cell),
        dash: series.variant % 3,
    }
}

/// `rnnlab plot DIR`.
pub fn plot(dir: &Path) -> anyhow::Result<()> {
    let results = Results::open(dir)?;
    let drawn = write_plots(&results)?;
    for figure in &drawn {
        println!(
            "{}",
            results
                .dir
                .plots()
                .join(format!("{}.{{png,svg}}", figure.stem))
                .display()
        );
    }
    Ok(())
}

/// Draws every figure the results support into `<dir>/plots/` and returns them.
pub fn write_plots(results: &Results) -> anyhow::Result<Vec<Figure>> {
    let folder = results.dir.plots();
    std::fs::create_dir_all(&folder).with_context(|| format!("creating {}", folder.display()))?;
    let figures = figures(results);
    let mut drawn = Vec::new();
    for figure in &figures {
        render(figure, &folder, style::WIDTH)
            .with_context(|| format!("drawing {}/{}", folder.display(), figure.stem))?;
        drawn.push(figure.stem.clone());
        // A small figure also gets a one-column version, its panels stacked.
        if figure.panels.len() <= style::COLUMN_PANELS {
            let column = Figure {
                stem: format!("{}_column", figure.stem),
                cols: 1,
                ..figure.clone()
            };
            render(&column, &folder, style::COLUMN_WIDTH)
                .with_context(|| format!("drawing {}/{}", folder.display(), column.stem))?;
            drawn.push(column.stem);
        }
    }
    remove_stale(&folder, &drawn)?;
    Ok(figures)
}

/// Removes the figures in `folder` that this drawing did not make (a figure the data no
/// longer supports, or one since split per task), so the folder shows only the current
/// results.
fn remove_stale(folder: &Path, drawn: &[String]) -> anyhow::Result<()> {
    for entry in
        std::fs::read_dir(folder).with_context(|| format!("reading {}", folder.display()))?
    {
        let path = entry?.path();
        let figure = matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("png" | "svg")
        );
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if figure && !drawn.iter().any(|d| d == stem) {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the stale figure {}", path.display()))?;
        }
    }
    Ok(())
}

/// The figures the experiment supports:
/// - `learning_curves` and `loss_curves`: validation metric / loss against the step,
///   mean over seeds with a min–max band, the trivial baseline dashed; a panel per value
///   of the panel keys (e.g. task × T);
/// - `final_vs_seq_len` and `solved_vs_seq_len`, when T is swept for every cell;
/// - `final_vs_hidden` and `final_vs_parameters`, when the hidden size is;
/// - `gradient_flow`: ‖∂L/∂h_t‖ against t at the first and the last recorded step;
/// - `grad_norm`: the global gradient norm before clipping against the step (exploding
///   gradients show as spikes);
/// - `throughput`: training samples/s against the hidden size (or T).
pub fn figures(results: &Results) -> Vec<Figure> {
    let all = figures_of(results);
    let Some(key) = results
        .keys_with(Role::Panel)
        .find(|k| k.values.len() > 1 && all.iter().any(|f| f.panels.len() > f.max_panels()))
    else {
        return all;
    };
    // Each value of the key alone, to count the panels it needs in each figure.
    let singles: Vec<(&String, Vec<Figure>)> = key
        .values
        .iter()
        .map(|v| {
            (
                v,
                figures_of(&results.only(&key.name, std::slice::from_ref(v))),
            )
        })
        .collect();
    let mut out = Vec::new();
    for figure in all {
        if figure.panels.len() <= figure.max_panels() {
            out.push(figure);
            continue;
        }
        // Consecutive values of a numeric key, as many to a part as fit in the figure's
        // rows; a categorical key (the task) gets a part per value.
        let numeric = key.numeric();
        let mut groups: Vec<(Vec<String>, usize)> = Vec::new();
        for (value, figures) in &singles {
            let Some(single) = figures.iter().find(|f| f.stem == figure.stem) else {
                continue;
            };
            let panels = single.panels.len();
            match groups.last_mut() {
                Some((values, total)) if numeric && *total + panels <= figure.max_panels() => {
                    values.push((*value).clone());
                    *total += panels;
                }
                _ => groups.push((vec![(*value).clone()], panels)),
            }
        }
        for (values, _) in groups {
            let part = figures_of(&results.only(&key.name, &values));
            let Some(part) = part.into_iter().find(|f| f.stem == figure.stem) else {
                continue;
            };
            let (first, last) = (&values[0], &values[values.len() - 1]);
            let (suffix, name) = if values.len() == 1 {
                (slug(first), key_value(&key.name, first))
            } else {
                (
                    format!("{}-{}", slug(first), slug(last)),
                    format!(
                        "{} to {}",
                        key_value(&key.name, first),
                        key_value(&key.name, last)
                    ),
                )
            };
            out.push(Figure {
                stem: format!("{}_{suffix}", part.stem),
                title: format!("{name}: {}", part.title),
                ..part
            });
        }
    }
    out
}

/// Most rows of panels one figure holds (3, so at most 3 × 3 panels: readable at a
/// page's width and within its height): a figure with more is split by the first panel
/// key, one figure per value of a categorical key (`loss_curves_adding`,
/// `loss_curves_copy`, …), consecutive values grouped for a numeric one
/// (`gradient_flow_8-64`, `gradient_flow_128-256`).
const MAX_ROWS: usize = 3;

impl Figure {
    /// The panels it may hold: [`MAX_ROWS`] rows of its columns.
    fn max_panels(&self) -> usize {
        MAX_ROWS * self.cols
    }
}

/// `temporal_order` → `temporal_order`, `0.01` → `0_01`: a value as part of a file name.
fn slug(value: &str) -> String {
    value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// Every figure the results support, however many panels each has.
fn figures_of(results: &Results) -> Vec<Figure> {
    if results.runs.is_empty() {
        return Vec::new();
    }
    let mut figures = vec![
        learning_curves(results, Measure::Metric),
        learning_curves(results, Measure::Loss),
    ];
    if let Some(seq_len) = results.axis_key("task.seq_len") {
        figures.push(final_vs(results, "task.seq_len", XKind::SeqLen));
        figures.push(solved_vs(results, &seq_len.name));
    }
    if results
        .axis_key("model.hidden")
        .is_some_and(|k| k.numeric())
    {
        figures.push(final_vs(results, "model.hidden", XKind::Hidden));
        figures.push(final_vs(results, "model.hidden", XKind::Parameters));
    }
    figures.push(gradient_flow(results));
    figures.push(grad_norms(results));
    if let Some(key) = ["model.hidden", "task.seq_len"]
        .into_iter()
        .find(|k| results.axis_key(k).is_some_and(|k| k.numeric()))
    {
        figures.push(throughput(results, key));
    }
    figures
        .into_iter()
        .filter(|f| {
            f.panels.iter().any(|p| match p {
                PanelSpec::Lines(l) => l.lines.iter().any(|l| !l.points.is_empty()),
                PanelSpec::Heatmap(h) => !h.rows.is_empty(),
            })
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Measure {
    Metric,
    Loss,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum XKind {
    SeqLen,
    Hidden,
    Parameters,
}

/// Panel keys other than `except`, and the number of columns that lays them out as a
/// grid (the last key's values across).
fn layout<'a>(results: &'a Results, except: &[&str]) -> (Vec<&'a crate::results::Key>, usize) {
    let keys: Vec<_> = results
        .keys_with(Role::Panel)
        .filter(|k| !except.contains(&k.name.as_str()))
        .collect();
    let cols = match keys.len() {
        0 => 1,
        1 => balanced_columns(keys[0].values.len()),
        _ => balanced_columns(keys.last().map_or(1, |k| k.values.len())),
    };
    (keys, cols)
}

/// Columns for `n` panels: as few rows as [`style::MAX_COLUMNS`] allows, filled evenly
/// (4 panels as 2 × 2, not 3 + 1).
fn balanced_columns(n: usize) -> usize {
    let rows = n.max(1).div_ceil(style::MAX_COLUMNS);
    n.max(1).div_ceil(rows)
}

/// The panel's settings in words; with no panel keys, the task its runs share (`copy,
/// T = 25`, or `adding` where T is the figure's axis) rather than the experiment's file
/// name.
fn panel_title(panel: &Panel) -> String {
    let title = panel.title();
    if !title.is_empty() {
        return title;
    }
    let task = panel.task();
    let kind = key_value("task.kind", task.name());
    let seq_len = task.config_seq_len();
    if panel
        .runs
        .iter()
        .all(|r| r.task.config_seq_len() == seq_len)
    {
        format!(
            "{kind}, {}",
            key_value("task.seq_len", &seq_len.to_string())
        )
    } else {
        kind
    }
}

/// The series of `runs`, each with its runs, in legend order.
fn by_series<'a>(series: &[Series], runs: &[&'a RunResult]) -> Vec<(Series, Vec<&'a RunResult>)> {
    series
        .iter()
        .filter_map(|s| {
            let mine: Vec<&RunResult> = runs
                .iter()
                .copied()
                .filter(|r| r.series == s.label)
                .collect();
            (!mine.is_empty()).then(|| (s.clone(), mine))
        })
        .collect()
}

/// The legend: each series (with how many of its runs diverged, when any did: figures
/// leave them out of every median and mark them ×), then the baseline if drawn.
fn legend(results: &Results, series: &[Series], with_baseline: bool) -> Vec<(String, Style)> {
    let mut legend: Vec<(String, Style)> = series
        .iter()
        .map(|s| {
            let runs = results.runs.iter().filter(|r| r.series == s.label);
            let (diverged, all) = runs.fold((0, 0), |(d, n), r| {
                (
                    d + usize::from(r.summary.status == RunStatus::Diverged),
                    n + 1,
                )
            });
            let label = if diverged > 0 {
                format!("{} ({diverged} of {all} runs diverged)", s.label)
            } else {
                s.label.clone()
            };
            (label, style_of(s))
        })
        .collect();
    if with_baseline {
        legend.push((
            "trivial baseline".into(),
            Style {
                color: BASELINE_GREY,
                dash: 1,
            },
        ));
    }
    legend
}

fn learning_curves(results: &Results, measure: Measure) -> Figure {
    let series = results.series();
    let (keys, cols) = layout(results, &[]);
    let panels = results.panels(&keys);
    let specs = panels
        .iter()
        .map(|panel| {
            let task = panel.task();
            let (base_loss, base_metric) = baseline(&task);
            let value = |&(step, loss, metric): &(usize, f64, f64)| {
                let v = match measure {
                    Measure::Metric => metric,
                    Measure::Loss => loss,
                };
                v.is_finite().then_some((step as f64, v))
            };
            let lines = step_lines(&series, &panel.runs, |run| {
                run.curve.iter().filter_map(value).collect()
            });
            PanelSpec::Lines(LinesPanel {
                title: panel_title(panel),
                x: step_axis(),
                y: match measure {
                    Measure::Metric => Axis {
                        label: format!("validation {}", metric_label(&task)),
                        log: None,
                        range: Some((0.0, 1.0)),
                    },
                    Measure::Loss => Axis {
                        label: format!("loss ({})", loss_name(&task)),
                        log: Some(10.0),
                        range: None,
                    },
                },
                lines,
                baseline: Some(match measure {
                    Measure::Metric => base_metric,
                    Measure::Loss => base_loss,
                }),
            })
        })
        .collect();
    let (stem, what) = match measure {
        Measure::Metric => ("learning_curves", "task metric"),
        Measure::Loss => ("loss_curves", "loss"),
    };
    Figure {
        stem: stem.into(),
        title: format!(
            "Validation {what} during training (thick: median over seeds; thin: each seed)"
        ),
        caption: format!(
            "Validation {what} against the training step: per cell a thin line for each seed \
             and a thick line through their median at each step (with few seeds, or seeds \
             that split into solved and unsolved, a mean would draw a curve no seed had); × \
             where a seed diverged (at that step, at its last evaluated value); dashed grey: \
             the trivial predictor."
        ),
        legend: legend(results, &series, true),
        cols,
        panels: specs,
    }
}

/// The x axis of curves over training.
fn step_axis() -> Axis {
    Axis {
        label: "training step".into(),
        log: None,
        range: None,
    }
}

/// Per series of `runs`: a thin line per seed through `curve(run)`, a thick one through
/// their median at each step, and a × where a seed diverged.
fn step_lines(
    series: &[Series],
    runs: &[&RunResult],
    curve: impl Fn(&RunResult) -> Vec<(f64, f64)>,
) -> Vec<LineSpec> {
    by_series(series, runs)
        .into_iter()
        .map(|(s, runs)| {
            let seeds = runs.iter().map(|run| curve(run)).collect();
            seeds_and_median(style_of(&s), &runs, seeds)
        })
        .collect()
}

/// A thin line per seed, a thick one through their median at each step, and a × where
/// a seed diverged (at that step, at its last drawn value).
fn seeds_and_median(style: Style, runs: &[&RunResult], seeds: Vec<Vec<(f64, f64)>>) -> LineSpec {
    let crosses = runs
        .iter()
        .zip(&seeds)
        .filter_map(|(run, curve)| {
            let step = run.summary.diverged_at?;
            Some((step as f64, curve.last()?.1))
        })
        .collect();
    let mut by_step: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for &(step, v) in seeds.iter().flatten() {
        by_step.entry(step.to_bits()).or_default().push(v);
    }
    LineSpec {
        style,
        points: by_step
            .into_iter()
            .map(|(bits, vs)| (f64::from_bits(bits), median(&vs)))
            .collect(),
        band: Vec::new(),
        dots: Vec::new(),
        markers: false,
        seeds,
        crosses,
    }
}

/// Windows the gradient-norm figure draws per run: its spikes survive as window maxima
/// while the SVG stays small.
const GRAD_NORM_WINDOWS: usize = 150;

/// The largest value of each window of `width` steps, at the window's last step.
fn window_maxima(values: &[(usize, f64)], width: usize) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::new();
    let mut current: Option<(usize, usize, f64)> = None;
    for &(step, v) in values.iter().filter(|(_, v)| v.is_finite() && *v > 0.0) {
        let window = (step.max(1) - 1) / width;
        current = match current {
            Some((w, _, max)) if w == window => Some((w, step, max.max(v))),
            Some((_, last, max)) => {
                out.push((last as f64, max));
                Some((window, step, v))
            }
            None => Some((window, step, v)),
        };
    }
    out.extend(current.map(|(_, last, max)| (last as f64, max)));
    out
}

/// The pre-clip gradient norm against the training step: thin per seed, thick median.
fn grad_norms(results: &Results) -> Figure {
    let series = results.series();
    let (keys, cols) = layout(results, &[]);
    let panels = results.panels(&keys);
    let last_step = results
        .runs
        .iter()
        .filter_map(|r| r.grad_norm.last().map(|g| g.0))
        .max()
        .unwrap_or(1);
    let width = last_step.div_ceil(GRAD_NORM_WINDOWS).max(1);
    let specs = panels
        .iter()
        .map(|panel| {
            let lines = step_lines(&series, &panel.runs, |run| {
                window_maxima(&run.grad_norm, width)
            });
            PanelSpec::Lines(LinesPanel {
                title: panel_title(panel),
                x: step_axis(),
                y: Axis {
                    label: "gradient norm before clipping".into(),
                    log: Some(10.0),
                    range: None,
                },
                lines,
                baseline: None,
            })
        })
        .collect();
    Figure {
        stem: "grad_norm".into(),
        title: "Gradient norm before clipping (thick: median over seeds; thin: each seed)".into(),
        caption: format!(
            "The global L2 norm of the gradient before clipping, as the largest value in each \
             window of {width} training steps (so that single-step spikes, the signature of \
             exploding gradients, stay visible): per cell a thin line for each seed and a \
             thick line through their median; × where a seed diverged."
        ),
        legend: legend(results, &series, false),
        cols,
        panels: specs,
    }
}

/// One dot per run and a line through the median at each x, for figures over a few x
/// values (with few seeds a mean draws a value no seed had).
fn seed_line(style: Style, dots: Vec<(f64, f64)>) -> LineSpec {
    // Keyed by the bits of x: for the positive x of these figures, bit order is numeric.
    let mut by_x: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    for &(x, y) in &dots {
        by_x.entry(x.to_bits()).or_default().push(y);
    }
    LineSpec {
        style,
        points: by_x
            .into_iter()
            .map(|(bits, ys)| (f64::from_bits(bits), median(&ys)))
            .collect(),
        band: Vec::new(),
        dots,
        markers: true,
        seeds: Vec::new(),
        crosses: Vec::new(),
    }
}

/// Mean line and min–max band over the values at each x.
fn mean_band(
    style: Style,
    values: impl Iterator<Item = (f64, Vec<f64>)>,
    geometric: bool,
) -> LineSpec {
    let mut points = Vec::new();
    let mut band = Vec::new();
    for (x, vs) in values {
        let mean = if geometric {
            (vs.iter()
                .map(|v| v.max(f64::MIN_POSITIVE).ln())
                .sum::<f64>()
                / vs.len() as f64)
                .exp()
        } else {
            vs.iter().sum::<f64>() / vs.len() as f64
        };
        let lo = vs.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = vs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        points.push((x, mean));
        band.push((x, lo, hi));
    }
    LineSpec {
        style,
        points,
        band,
        dots: Vec::new(),
        markers: false,
        seeds: Vec::new(),
        crosses: Vec::new(),
    }
}

/// The task metric in words for an axis: `accuracy (|error| < 0.04)` rather than the
/// column name `accuracy_0.04`.
pub(crate) fn metric_label(task: &rnnlab_tasks::Task) -> String {
    let name = task.metric_name();
    match name.strip_prefix("accuracy_") {
        Some(tolerance) => format!("accuracy (|error| < {tolerance})"),
        None => name.replace('_', " "),
    }
}

fn loss_name(task: &rnnlab_tasks::Task) -> &'static str {
    match task.loss() {
        rnnlab_tasks::Loss::Mse => "MSE",
        // Two classes are the binary case of the same loss; one name keeps the axis
        // label short enough for a panel's height.
        rnnlab_tasks::Loss::CrossEntropy | rnnlab_tasks::Loss::BinaryCrossEntropy => {
            "cross-entropy, nats"
        }
    }
}

/// One seed's x, final metric and final loss.
type Final = (f64, f64, f64);

fn final_vs(results: &Results, key: &str, x_kind: XKind) -> Figure {
    let series = results.series();
    let (keys, _) = layout(results, &[key]);
    let panels = results.panels(&keys);
    let x_axis = match x_kind {
        XKind::SeqLen => Axis {
            label: "sequence length T (steps)".into(),
            log: Some(2.0),
            range: None,
        },
        XKind::Hidden => Axis {
            label: "hidden units".into(),
            log: Some(2.0),
            range: None,
        },
        XKind::Parameters => Axis {
            label: "trainable parameters".into(),
            log: Some(10.0),
            range: None,
        },
    };
    let mut specs = Vec::new();
    for panel in &panels {
        let task = panel.task();
        // Per series, each seed's (x, final metric, final loss); a diverged run has no
        // final values to show and is left out.
        let finals: Vec<(Series, Vec<Final>)> = by_series(&series, &panel.runs)
            .into_iter()
            .map(|(s, runs)| {
                let values = runs
                    .iter()
                    .filter(|run| run.summary.status != RunStatus::Diverged)
                    .map(|run| {
                        let x = match x_kind {
                            XKind::Parameters => run.summary.parameters as f64,
                            _ => run.values[key].parse::<f64>().unwrap_or(f64::NAN),
                        };
                        (x, run.summary.final_metric, run.summary.final_loss)
                    })
                    .filter(|(x, _, _)| x.is_finite())
                    .collect();
                (s, values)
            })
            .collect();
        let lines = |pick: fn(&Final) -> f64| -> Vec<LineSpec> {
            finals
                .iter()
                .map(|(s, values)| {
                    let dots = values
                        .iter()
                        .map(|v| (v.0, pick(v)))
                        .filter(|(_, y)| y.is_finite())
                        .collect();
                    seed_line(style_of(s), dots)
                })
                .collect()
        };
        let (base_loss, base_metric) = baseline(&task);
        specs.push(PanelSpec::Lines(LinesPanel {
            title: panel_title(panel),
            x: x_axis.clone(),
            y: Axis {
                label: format!("final {}", metric_label(&task)),
                log: None,
                range: Some((0.0, 1.0)),
            },
            lines: lines(|v| v.1),
            baseline: Some(base_metric),
        }));
        specs.push(PanelSpec::Lines(LinesPanel {
            title: panel_title(panel),
            x: x_axis.clone(),
            y: Axis {
                label: format!("final loss ({})", loss_name(&task)),
                log: Some(10.0),
                range: None,
            },
            lines: lines(|v| v.2),
            baseline: Some(base_loss),
        }));
    }
    let (stem, what) = match x_kind {
        XKind::SeqLen => ("final_vs_seq_len", "sequence length"),
        XKind::Hidden => ("final_vs_hidden", "hidden units"),
        XKind::Parameters => ("final_vs_parameters", "parameter count"),
    };
    Figure {
        stem: stem.into(),
        title: format!(
            "Final validation metric and loss against {what} (line: median; dots: seeds)"
        ),
        caption: format!(
            "Final validation metric (left) and loss (right, log scale) against {what}: the \
             line joins the medians over seeds, each dot is one seed (diverged runs are left \
             out); dashed grey: the trivial predictor."
        ),
        legend: legend(results, &series, true),
        cols: 2,
        panels: specs,
    }
}

fn solved_vs(results: &Results, key: &str) -> Figure {
    let series = results.series();
    let (keys, cols) = layout(results, &[key]);
    let x_values = results
        .panel_key(key)
        .map(|k| k.values.clone())
        .unwrap_or_default();
    let panels = results.panels(&keys);
    let specs = panels
        .iter()
        .map(|panel| {
            let grouped = by_series(&series, &panel.runs);
            // Only the lengths this panel's task was run at: copy's T = 25 … 100 is not
            // drawn with empty columns for adding's T = 400.
            let present: Vec<_> = x_values
                .iter()
                .filter(|x| panel.runs.iter().any(|r| r.values[key] == **x))
                .cloned()
                .collect();
            let cells = grouped
                .iter()
                .map(|(_, runs)| {
                    present
                        .iter()
                        .map(|x| {
                            let at: Vec<_> = runs.iter().filter(|r| r.values[key] == *x).collect();
                            if at.is_empty() {
                                return None;
                            }
                            let solved = at
                                .iter()
                                .filter(|r| r.summary.steps_to_solve.is_some())
                                .count();
                            Some((
                                solved as f64 / at.len() as f64,
                                format!("{solved}/{}", at.len()),
                            ))
                        })
                        .collect()
                })
                .collect();
            PanelSpec::Heatmap(HeatmapPanel {
                title: panel_title(panel),
                rows: grouped.iter().map(|(s, _)| s.label.clone()).collect(),
                cols: present,
                col_label: "sequence length T".into(),
                cells,
            })
        })
        .collect();
    Figure {
        stem: "solved_vs_seq_len".into(),
        title: "Seeds that solved the task (darker: more)".into(),
        caption: "How many seeds met the task's solved criterion (adding: MSE < 0.01; copy \
                  and temporal order: accuracy > 0.99) at some evaluation, per cell and \
                  sequence length."
            .into(),
        legend: Vec::new(),
        cols,
        panels: specs,
    }
}

fn gradient_flow(results: &Results) -> Figure {
    let series = results.series();
    let (keys, _) = layout(results, &[]);
    let panels = results.panels(&keys);
    let mut specs = Vec::new();
    for panel in &panels {
        let grouped = by_series(&series, &panel.runs);
        for (when, pick_last) in [("first step", false), ("end of training", true)] {
            let lines = grouped
                .iter()
                .map(|(s, runs)| {
                    // Geometric mean over seeds at each t: the norms span decades.
                    let mut by_t: std::collections::BTreeMap<usize, Vec<f64>> = Default::default();
                    // A diverged run's last row is from before it diverged: not the end
                    // of training.
                    let finished = runs
                        .iter()
                        .filter(|run| !pick_last || run.summary.status != RunStatus::Diverged);
                    for run in finished {
                        let row = if pick_last {
                            run.gradflow.last()
                        } else {
                            run.gradflow.first()
                        };
                        if let Some((_, norms)) = row {
                            for (t, &n) in norms.iter().enumerate() {
                                // An underflowed norm sits at the floor, not out of the mean.
                                if n.is_finite() && n >= 0.0 {
                                    by_t.entry(t).or_default().push(n.max(F32_FLOOR));
                                }
                            }
                        }
                    }
                    let mut line = mean_band(
                        style_of(s),
                        by_t.into_iter().map(|(t, vs)| (t as f64, vs)),
                        true,
                    );
                    line.band.clear();
                    line
                })
                .collect();
            specs.push(PanelSpec::Lines(LinesPanel {
                title: format!("{} - {when}", panel_title(panel)),
                x: Axis {
                    label: "time step t".into(),
                    log: None,
                    range: None,
                },
                y: Axis {
                    label: "mean ‖∂L/∂h_t‖".into(),
                    log: Some(10.0),
                    range: None,
                },
                lines,
                baseline: None,
            }));
        }
    }
    Figure {
        stem: "gradient_flow".into(),
        title: "Gradient reaching each time step, first layer (geometric mean over seeds)".into(),
        caption: "‖∂L/∂h_t‖ (the total derivative of the loss with respect to the first \
                  layer's hidden state at step t, through the recurrence, averaged over the \
                  batch) against t, at the first training step and at the end of training; \
                  log scale. A line falling towards small t is a vanishing gradient; values \
                  below 1.2e-38 (f32's smallest normal number, under which the kernels \
                  flush to zero) are drawn at that floor. Diverged runs are left out of the \
                  end of training."
            .into(),
        legend: legend(results, &series, false),
        cols: 2,
        panels: specs,
    }
}

fn throughput(results: &Results, key: &str) -> Figure {
    let series = results.series();
    let (keys, cols) = layout(
        results,
        &[key, "train.lr", "model.forget_bias", "train.clip"],
    );
    let panels = results.panels(&keys);
    let hidden = key == "model.hidden";
    let specs = panels
        .iter()
        .map(|panel| {
            let lines = by_series(&series, &panel.runs)
                .into_iter()
                .map(|(s, runs)| {
                    let dots = runs
                        .iter()
                        .map(|run| {
                            let x: f64 = run.values[key].parse().unwrap_or(f64::NAN);
                            (x, run.summary.samples_per_s)
                        })
                        .filter(|(x, y)| x.is_finite() && *y > 0.0)
                        .collect();
                    seed_line(style_of(&s), dots)
                })
                .collect();
            PanelSpec::Lines(LinesPanel {
                title: panel_title(panel),
                x: Axis {
                    label: if hidden {
                        "hidden units".into()
                    } else {
                        "sequence length T (steps)".into()
                    },
                    log: hidden.then_some(2.0),
                    range: None,
                },
                y: Axis {
                    label: "training throughput (sequences/s)".into(),
                    log: Some(10.0),
                    range: None,
                },
                lines,
                baseline: None,
            })
        })
        .collect();
    let threads = results
        .manifest
        .get("threads_per_run")
        .and_then(serde_yaml::Value::as_u64)
        .map_or_else(String::new, |t| {
            format!(", {t} thread{} per run", if t == 1 { "" } else { "s" })
        });
    Figure {
        stem: "throughput".into(),
        title: format!("Training throughput (forward, backward and update{threads})"),
        caption: format!(
            "Training sequences per second (whole steps: forward, backward, optimiser) \
             against {}, one dot per run and a line through their median; log scale.",
            if hidden {
                "the hidden size"
            } else {
                "the sequence length"
            }
        ),
        legend: legend(results, &series, false),
        cols,
        panels: specs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panels_fill_rows_evenly() {
        let columns: Vec<usize> = (1..=10).map(balanced_columns).collect();
        assert_eq!(columns, [1, 2, 3, 2, 3, 3, 3, 3, 3, 3]);
    }

    #[test]
    fn window_maxima_keeps_each_windows_spike_at_its_last_step() {
        // Windows of 3 steps: 1..=3, 4..=6, 7; a non-finite norm is skipped.
        let norms = [
            (1, 1.0),
            (2, 9.0),
            (3, 2.0),
            (4, 0.5),
            (5, f64::NAN),
            (6, 0.7),
            (7, 4.0),
        ];
        assert_eq!(
            window_maxima(&norms, 3),
            vec![(3.0, 9.0), (6.0, 0.7), (7.0, 4.0)]
        );
    }

    #[test]
    fn every_known_cell_has_its_own_colour() {
        let cells: Vec<&str> = registry::label_colors().map(|(label, _)| label).collect();
        let colours: std::collections::BTreeSet<(u8, u8, u8)> = cells
            .iter()
            .map(|c| {
                let RGBColor(r, g, b) = cell_color(c);
                (r, g, b)
            })
            .collect();
        assert_eq!(colours.len(), cells.len());
    }
}
