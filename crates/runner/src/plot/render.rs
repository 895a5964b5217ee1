//! Draws a [`Figure`] with plotters, as a PNG (text in the bundled DejaVu Sans) and an
//! SVG: layout of the title, legend and panels, axes, ticks, lines, bands and heatmaps.

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::coord::ranged1d::{KeyPointHint, NoDefaultFormatting, Ranged, ValueFormatter};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::png::write_palette_png;
use super::style::{
    AXIS_SIZE, BASELINE_GREY, FONT, LABEL_AREAS, LEGEND_ROW, LEGEND_SIZE, PANEL_HEIGHT,
    PANEL_TITLE_SIZE, TICK_SIZE, TITLE_SIZE,
};
use super::{Axis, Figure, HeatmapPanel, LinesPanel, PanelSpec, Style};
use crate::store::{write_atomic, write_text};

/// Draws `figure`, `width` pixels wide, as `<stem>.png` and `<stem>.svg` in `folder`,
/// each written whole.
pub(super) fn render(figure: &Figure, folder: &Path, width: u32) -> anyhow::Result<()> {
    register_font();
    let rows = figure.panels.len().div_ceil(figure.cols.max(1)) as u32;
    let header = header_height(figure, width);
    let size = (width, header + rows * PANEL_HEIGHT);

    let mut pixels = vec![0u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
        draw(&root, figure, width)?;
        root.present().map_err(drawing)?;
    }
    write_atomic(&folder.join(format!("{}.png", figure.stem)), |temp| {
        write_palette_png(temp, size, &pixels)
    })?;

    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        draw(&root, figure, width)?;
        root.present().map_err(drawing)?;
    }
    write_text(&folder.join(format!("{}.svg", figure.stem)), &svg)
}

fn drawing(err: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing failed: {err}")
}

fn register_font() {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        // The bundled font is valid TrueType; a failure here is a build defect.
        let registered = plotters::style::register_font(
            FONT,
            FontStyle::Normal,
            include_bytes!("../../assets/DejaVuSans.ttf"),
        );
        assert!(
            registered.is_ok(),
            "the bundled DejaVu Sans is not a valid font"
        );
    });
}

/// Legend items laid out in rows across a figure `width` pixels wide: (row, x) of each.
fn legend_layout(figure: &Figure, width: u32) -> Vec<(u32, i32)> {
    let mut placed = Vec::new();
    let (mut row, mut x) = (0u32, 30i32);
    for (label, _) in &figure.legend {
        let item = 60 + text_width(label, LEGEND_SIZE) + 36;
        if x + item > width as i32 - 20 && x > 30 {
            row += 1;
            x = 30;
        }
        placed.push((row, x));
        x += item;
    }
    placed
}

/// The title broken into lines that fit a figure `width` pixels wide.
fn title_lines(figure: &Figure, width: u32) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in figure.title.split(' ') {
        match lines.last_mut() {
            Some(line) if text_width(&format!("{line} {word}"), TITLE_SIZE) < width as i32 - 60 => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.to_owned()),
        }
    }
    lines
}

/// Height of one title line.
const TITLE_LINE: i32 = TITLE_SIZE as i32 + 12;

/// Where the legend's first row starts: below the title.
fn legend_top(figure: &Figure, width: u32) -> i32 {
    18 + title_lines(figure, width).len() as i32 * TITLE_LINE + 18
}

fn header_height(figure: &Figure, width: u32) -> u32 {
    let rows = legend_layout(figure, width)
        .last()
        .map_or(0, |&(row, _)| row + 1);
    legend_top(figure, width) as u32 + rows * LEGEND_ROW + 10
}

/// Text width in pixels, from the font's advances (what plotters uses to lay out).
fn text_width(text: &str, size: f64) -> i32 {
    register_font();
    let font = (FONT, size).into_font();
    font.box_size(text)
        .map_or(text.len() as i32 * 12, |(w, _)| w as i32)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    figure: &Figure,
    width: u32,
) -> anyhow::Result<()> {
    root.fill(&WHITE).map_err(drawing)?;
    let header = header_height(figure, width);
    let (top, body) = root.split_vertically(header);
    for (k, line) in title_lines(figure, width).into_iter().enumerate() {
        top.draw(&Text::new(
            line,
            (30, 18 + k as i32 * TITLE_LINE),
            (FONT, TITLE_SIZE).into_font().color(&BLACK),
        ))
        .map_err(drawing)?;
    }
    let legend_top = legend_top(figure, width);
    for ((label, style), (row, x)) in figure.legend.iter().zip(legend_layout(figure, width)) {
        let y = legend_top + (row * LEGEND_ROW) as i32 + LEGEND_ROW as i32 / 2 - 4;
        draw_segment(&top, (x, y), (x + 48, y), *style)?;
        top.draw(&Text::new(
            label.clone(),
            (x + 60, y),
            (FONT, LEGEND_SIZE)
                .into_font()
                .color(&BLACK)
                .pos(Pos::new(HPos::Left, VPos::Center)),
        ))
        .map_err(drawing)?;
    }
    let rows = figure.panels.len().div_ceil(figure.cols.max(1));
    let areas = body.split_evenly((rows, figure.cols.max(1)));
    let (x_log, y_log) = shared_scales(figure);
    let panels: Vec<Option<LinesPanel>> = figure
        .panels
        .iter()
        .map(|panel| match panel {
            PanelSpec::Lines(lines) => Some(LinesPanel {
                x: Axis {
                    log: lines.x.log.filter(|_| x_log),
                    ..lines.x.clone()
                },
                y: Axis {
                    log: lines.y.log.filter(|_| y_log),
                    ..lines.y.clone()
                },
                ..lines.clone()
            }),
            PanelSpec::Heatmap(_) => None,
        })
        .collect();
    // Panels that show the same quantity (the same y label) share its y range, so that
    // the reader compares heights across them.
    let shared_y = |label: &str| {
        let same: Vec<&LinesPanel> = panels
            .iter()
            .flatten()
            .filter(|p| p.y.label == label)
            .collect();
        let values: Vec<f64> = same.iter().flat_map(|p| panel_values(p).1).collect();
        axis_range(&same[0].y, values.into_iter())
    };
    for ((area, panel), lines) in areas.iter().zip(&figure.panels).zip(&panels) {
        match (panel, lines) {
            (PanelSpec::Lines(_), Some(lines)) => {
                draw_lines(area, lines, shared_y(&lines.y.label))?
            }
            (PanelSpec::Heatmap(heatmap), _) => draw_heatmap(area, heatmap)?,
            (PanelSpec::Lines(_), None) => {}
        }
    }
    Ok(())
}

/// The x and y values of a panel's lines (means, dots, bands, seeds, crosses).
fn panel_values(panel: &LinesPanel) -> (Vec<f64>, Vec<f64>) {
    let mut xs = Vec::new();
    let mut ys: Vec<f64> = panel.baseline.into_iter().collect();
    for l in &panel.lines {
        for &(x, y) in l.points.iter().chain(&l.dots).chain(&l.crosses) {
            xs.push(x);
            ys.push(y);
        }
        for &(x, lo, hi) in &l.band {
            xs.push(x);
            ys.extend([lo, hi]);
        }
        for &(x, y) in l.seeds.iter().flatten() {
            xs.push(x);
            ys.push(y);
        }
    }
    (xs, ys)
}

/// Whether the figure's x and y axes stay logarithmic. Panels are compared, so they share
/// the scale kind: an axis asked to be logarithmic is, in every panel, when the values
/// of all panels together span at least a factor of its base; over less, a linear axis
/// reads better.
fn shared_scales(figure: &Figure) -> (bool, bool) {
    let lines: Vec<&LinesPanel> = figure
        .panels
        .iter()
        .filter_map(|p| match p {
            PanelSpec::Lines(l) => Some(l),
            PanelSpec::Heatmap(_) => None,
        })
        .collect();
    // Only the panels that ask for a log axis take part (a metric panel beside a loss
    // panel keeps its linear axis).
    let keeps_log = |axis: fn(&LinesPanel) -> &Axis, xy: usize| {
        let asking: Vec<&&LinesPanel> = lines.iter().filter(|l| axis(l).log.is_some()).collect();
        let values: Vec<f64> = asking
            .iter()
            .flat_map(|l| {
                let (xs, ys) = panel_values(l);
                if xy == 0 { xs } else { ys }
            })
            .collect();
        spans_a_factor(asking.first().and_then(|l| axis(l).log), &values)
    };
    (keeps_log(|l| &l.x, 0), keeps_log(|l| &l.y, 1))
}

/// Whether the positive `values` span at least a factor of `base` (false without one).
fn spans_a_factor(base: Option<f64>, values: &[f64]) -> bool {
    let Some(base) = base else {
        return false;
    };
    let (lo, hi) = values
        .iter()
        .filter(|v| **v > 0.0 && v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    lo.is_finite() && hi / lo >= base * (1.0 - 1e-9)
}

/// A straight legend swatch in pixel coordinates, dashed as the style says.
fn draw_segment<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    from: (i32, i32),
    to: (i32, i32),
    style: Style,
) -> anyhow::Result<()> {
    let stroke = style.color.stroke_width(4);
    let (on, off) = dash_pattern(style.dash);
    let mut x = from.0;
    while x < to.0 {
        let end = (x + on).min(to.0);
        area.draw(&PathElement::new(vec![(x, from.1), (end, to.1)], stroke))
            .map_err(drawing)?;
        x = end + off;
    }
    Ok(())
}

/// (dash, gap) in pixels for a dash index; solid is one long dash.
fn dash_pattern(dash: usize) -> (i32, i32) {
    match dash {
        0 => (10_000, 0),
        1 => (14, 8),
        _ => (4, 6),
    }
}

/// Maps data values onto a (possibly logarithmic) axis; non-positive values on a log
/// axis have no place and are dropped.
fn to_axis(axis: &Axis, v: f64) -> Option<f64> {
    match axis.log {
        Some(base) if v > 0.0 && v.is_finite() => Some(v.log(base)),
        Some(_) => None,
        None => v.is_finite().then_some(v),
    }
}

/// The axis range: fixed, or the data's with 5 % padding (a decade at least on a log axis
/// when the data are flat).
fn axis_range(axis: &Axis, values: impl Iterator<Item = f64>) -> (f64, f64) {
    if let Some((lo, hi)) = axis.range {
        let pad = (hi - lo) * 0.03;
        return (lo - pad, hi + pad);
    }
    let (lo, hi) = values
        .filter_map(|v| to_axis(axis, v))
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    let span = hi - lo;
    if span < 1e-9 {
        let half = if axis.log.is_some() {
            0.5
        } else {
            lo.abs().max(1.0) * 0.1
        };
        return (lo - half, hi + half);
    }
    (lo - span * 0.05, hi + span * 0.05)
}

/// Ticks an axis from `lo` to `hi` (axis coordinates) gets, with their labels:
/// - linear: a 1, 2 or 5 × 10^k step giving 4 to 8 ticks;
/// - log base 10: the decades when three or more fit (at most 8 labelled), else
///   1-2-5 × 10^k when three or more fit, else linear steps in the data's own units;
/// - log base 2: the data's own values when there are few (the swept T = 25, 50, 100),
///   else the powers of two.
fn ticks(axis: &Axis, (lo, hi): (f64, f64), data: &[f64]) -> Vec<(f64, String)> {
    let linear = |lo: f64, hi: f64| -> Vec<(f64, String)> {
        let step = nice_step(hi - lo);
        let decimals = (-(step.log10() + 1e-9).floor()).max(0.0) as usize;
        let first = (lo / step).ceil() as i64;
        let last = (hi / step).floor() as i64;
        (first..=last)
            .map(|k| {
                let v = k as f64 * step;
                (v, format!("{v:.decimals$}"))
            })
            .collect()
    };
    let Some(base) = axis.log else {
        return linear(lo, hi);
    };
    let at = |v: f64| (v.log(base), pretty(v));
    let (vlo, vhi) = (base.powf(lo), base.powf(hi));
    if base == 2.0 {
        let mut seen: Vec<f64> = data
            .iter()
            .copied()
            .filter(|v| *v >= vlo && *v <= vhi)
            .collect();
        seen.sort_by(f64::total_cmp);
        seen.dedup();
        if (2..=10).contains(&seen.len()) {
            return seen.into_iter().map(at).collect();
        }
    }
    let powers: Vec<f64> = ((lo.ceil() as i64)..=(hi.floor() as i64))
        .map(|k| base.powi(k as i32))
        .collect();
    if powers.len() >= 3 {
        let every = powers.len().div_ceil(8);
        // Decades read alike: all as numbers (0.01 … 1000), or all as powers once one
        // would need an exponent (1e2 … 1e6 rather than 100 … 10000, 1e5, 1e6).
        let plain = powers.iter().all(|v| (1e-3..1e5).contains(v));
        return powers
            .into_iter()
            .step_by(every)
            .map(|v| {
                if plain || base != 10.0 {
                    at(v)
                } else {
                    (v.log10(), format!("1e{}", v.log10().round()))
                }
            })
            .collect();
    }
    if base == 10.0 {
        let one_two_five: Vec<f64> = ((lo.floor() as i32)..=(hi.ceil() as i32))
            .flat_map(|k| [1.0, 2.0, 5.0].map(|m| m * 10f64.powi(k)))
            .filter(|v| *v >= vlo && *v <= vhi)
            .collect();
        if one_two_five.len() >= 3 {
            return one_two_five.into_iter().map(at).collect();
        }
    }
    linear(vlo, vhi)
        .into_iter()
        .filter(|(v, _)| *v > 0.0)
        .map(|(v, label)| (v.log(base), label))
        .collect()
}

/// A plotting coordinate (linear in axis coordinates) whose ticks are exactly the given
/// ones, each with its own label.
struct Ticked {
    linear: RangedCoordf64,
    ticks: Vec<(f64, String)>,
}

impl Ticked {
    fn new(range: std::ops::Range<f64>, ticks: Vec<(f64, String)>) -> Self {
        Self {
            linear: range.into(),
            ticks,
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = NoDefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.linear.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        self.ticks.iter().map(|t| t.0).collect()
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.linear.range()
    }
}

impl ValueFormatter<f64> for Ticked {
    fn format_ext(&self, value: &f64) -> String {
        self.ticks
            .iter()
            .find(|t| t.0 == *value)
            .map_or_else(String::new, |t| t.1.clone())
    }
}

/// Pixels between a panel and its neighbours: all round, and on the right.
const MARGIN: i32 = 14;
const MARGIN_RIGHT: i32 = 30;

/// Every `k`-th of the ticks of a horizontal axis `pixels` wide, with the smallest `k` at
/// which no two labels come closer than a space: a 3,000-step axis in a third of a page
/// keeps 0, 1000, 2000, 3000 of its 500-step ticks instead of printing "10001500…".
fn readable(ticks: Vec<(f64, String)>, (lo, hi): (f64, f64), pixels: i32) -> Vec<(f64, String)> {
    let space = f64::from(TICK_SIZE) * 0.6;
    let widths: Vec<f64> = ticks
        .iter()
        .map(|t| f64::from(text_width(&t.1, f64::from(TICK_SIZE))))
        .collect();
    let scale = f64::from(pixels.max(1)) / (hi - lo);
    let fits = |every: usize| {
        let kept: Vec<usize> = (0..ticks.len()).step_by(every).collect();
        kept.windows(2).all(|pair| {
            let (a, b) = (pair[0], pair[1]);
            (ticks[b].0 - ticks[a].0) * scale >= (widths[a] + widths[b]) / 2.0 + space
        })
    };
    let every = (1..=ticks.len().max(1)).find(|&k| fits(k)).unwrap_or(1);
    ticks.into_iter().step_by(every).collect()
}

/// A 1, 2 or 5 × 10^k step that cuts `span` into 4 to 8 pieces.
fn nice_step(span: f64) -> f64 {
    let raw = span / 5.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|&step| span / step <= 8.0)
        .unwrap_or(10.0 * magnitude);
    if step > 0.0 && step.is_finite() {
        step
    } else {
        1.0
    }
}

/// A number in at most three significant digits, without trailing zeros.
pub fn pretty(value: f64) -> String {
    if value == 0.0 {
        return "0".into();
    }
    let magnitude = value.abs();
    if !(1e-3..1e5).contains(&magnitude) {
        let text = format!("{value:.1e}");
        return text.replace(".0e", "e");
    }
    let decimals = (2 - magnitude.log10().floor() as i32).max(0) as usize;
    let text = format!("{value:.decimals$}");
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text
    }
}

/// Draws a panel of lines with the y range `(y0, y1)` (axis coordinates).
fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &LinesPanel,
    (y0, y1): (f64, f64),
) -> anyhow::Result<()> {
    let x_data = panel_values(panel).0;
    let (x0, x1) = axis_range(&panel.x, x_data.iter().copied());
    let plot_width = area.dim_in_pixel().0 as i32 - LABEL_AREAS.1 as i32 - MARGIN - MARGIN_RIGHT;
    let x_ticks = readable(ticks(&panel.x, (x0, x1), &x_data), (x0, x1), plot_width);
    let y_ticks = ticks(&panel.y, (y0, y1), &[]);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, PANEL_TITLE_SIZE))
        .margin(MARGIN as u32)
        .margin_right(MARGIN_RIGHT as u32)
        .x_label_area_size(LABEL_AREAS.0)
        .y_label_area_size(LABEL_AREAS.1)
        .build_cartesian_2d(Ticked::new(x0..x1, x_ticks), Ticked::new(y0..y1, y_ticks))
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc(&panel.x.label)
        .y_desc(&panel.y.label)
        .label_style((FONT, TICK_SIZE))
        .axis_desc_style((FONT, AXIS_SIZE))
        .light_line_style(TRANSPARENT)
        .bold_line_style(RGBColor(225, 225, 225))
        .draw()
        .map_err(drawing)?;

    if let Some(base) = panel.baseline.and_then(|b| to_axis(&panel.y, b)) {
        let style = BASELINE_GREY.stroke_width(2);
        chart
            .draw_series(DashedLineSeries::new(
                [(x0, base), (x1, base)],
                14,
                8,
                style,
            ))
            .map_err(drawing)?;
    }
    for line in &panel.lines {
        let band: Vec<(f64, f64, f64)> = line
            .band
            .iter()
            .filter_map(|&(x, lo, hi)| {
                Some((
                    to_axis(&panel.x, x)?,
                    to_axis(&panel.y, lo)?,
                    to_axis(&panel.y, hi)?,
                ))
            })
            .collect();
        if band.len() > 1 {
            let outline: Vec<(f64, f64)> = band
                .iter()
                .map(|b| (b.0, b.1))
                .chain(band.iter().rev().map(|b| (b.0, b.2)))
                .collect();
            chart
                .draw_series(std::iter::once(Polygon::new(
                    outline,
                    line.style.color.mix(0.16).filled(),
                )))
                .map_err(drawing)?;
        }
    }
    // Every seed's thin line first, so the thick lines stay on top.
    for line in &panel.lines {
        for seed in &line.seeds {
            let points: Vec<(f64, f64)> = seed
                .iter()
                .filter_map(|&(x, y)| Some((to_axis(&panel.x, x)?, to_axis(&panel.y, y)?)))
                .collect();
            chart
                .draw_series(LineSeries::new(
                    points,
                    line.style.color.mix(0.45).stroke_width(1),
                ))
                .map_err(drawing)?;
        }
    }
    for line in &panel.lines {
        let points: Vec<(f64, f64)> = line
            .points
            .iter()
            .filter_map(|&(x, y)| Some((to_axis(&panel.x, x)?, to_axis(&panel.y, y)?)))
            .collect();
        let stroke = line.style.color.stroke_width(3);
        let (on, off) = dash_pattern(line.style.dash);
        if line.style.dash == 0 {
            chart
                .draw_series(LineSeries::new(points.clone(), stroke))
                .map_err(drawing)?;
        } else {
            chart
                .draw_series(DashedLineSeries::new(
                    points.clone(),
                    on as u32,
                    off as u32,
                    stroke,
                ))
                .map_err(drawing)?;
        }
        if line.markers {
            chart
                .draw_series(
                    points
                        .iter()
                        .map(|&p| Circle::new(p, 7, line.style.color.filled())),
                )
                .map_err(drawing)?;
        }
        let crosses: Vec<(f64, f64)> = line
            .crosses
            .iter()
            .filter_map(|&(x, y)| Some((to_axis(&panel.x, x)?, to_axis(&panel.y, y)?)))
            .collect();
        chart
            .draw_series(
                crosses
                    .into_iter()
                    .map(|p| Cross::new(p, 9, line.style.color.stroke_width(3))),
            )
            .map_err(drawing)?;
        let dots: Vec<(f64, f64)> = line
            .dots
            .iter()
            .filter_map(|&(x, y)| Some((to_axis(&panel.x, x)?, to_axis(&panel.y, y)?)))
            .collect();
        chart
            .draw_series(
                dots.into_iter()
                    .map(|p| Circle::new(p, 4, line.style.color.mix(0.55).stroke_width(2))),
            )
            .map_err(drawing)?;
    }
    Ok(())
}

fn draw_heatmap<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &HeatmapPanel,
) -> anyhow::Result<()> {
    let (ncols, nrows) = (panel.cols.len(), panel.rows.len());
    let longest = panel
        .rows
        .iter()
        .map(|r| text_width(r, f64::from(TICK_SIZE)))
        .max()
        .unwrap_or(0);
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, (FONT, PANEL_TITLE_SIZE))
        .margin(MARGIN as u32)
        .margin_right(MARGIN_RIGHT as u32)
        .x_label_area_size(LABEL_AREAS.0)
        .y_label_area_size((longest + 30).min(area.dim_in_pixel().0 as i32 / 2) as u32)
        .build_cartesian_2d(0.0..ncols as f64, 0.0..nrows as f64)
        .map_err(drawing)?;
    let col_name = |v: &f64| {
        let i = v.floor() as usize;
        if (v - i as f64 - 0.5).abs() < 1e-6 {
            panel.cols.get(i).cloned().unwrap_or_default()
        } else {
            String::new()
        }
    };
    // Rows are drawn top to bottom: row 0 at the top.
    let row_name = |v: &f64| {
        let i = v.floor() as usize;
        if (v - i as f64 - 0.5).abs() < 1e-6 && i < nrows {
            panel.rows[nrows - 1 - i].clone()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(&panel.col_label)
        .x_labels(ncols * 2 + 1)
        .y_labels(nrows * 2 + 1)
        .x_label_formatter(&col_name)
        .y_label_formatter(&row_name)
        .label_style((FONT, TICK_SIZE))
        .axis_desc_style((FONT, AXIS_SIZE))
        .draw()
        .map_err(drawing)?;
    for (r, row) in panel.cells.iter().enumerate() {
        let y = (nrows - 1 - r) as f64;
        for (c, cell) in row.iter().enumerate() {
            let Some((value, text)) = cell else { continue };
            let x = c as f64;
            // From pale to the palette's green as the fraction grows.
            let shade = |lo: f64, hi: f64| (lo + (hi - lo) * value.clamp(0.0, 1.0)) as u8;
            let fill = RGBColor(shade(245.0, 0.0), shade(245.0, 120.0), shade(245.0, 90.0));
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.02, y + 0.04), (x + 0.98, y + 0.96)],
                    fill.filled(),
                )))
                .map_err(drawing)?;
            let ink = if *value > 0.5 { WHITE } else { BLACK };
            chart
                .draw_series(std::iter::once(Text::new(
                    text.clone(),
                    (x + 0.5, y + 0.5),
                    (FONT, PANEL_TITLE_SIZE)
                        .into_font()
                        .color(&ink)
                        .pos(Pos::new(HPos::Center, VPos::Center)),
                )))
                .map_err(drawing)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_in_three_significant_digits() {
        assert_eq!(pretty(0.0), "0");
        assert_eq!(pretty(1000.0), "1000");
        assert_eq!(pretty(0.125), "0.125");
        assert_eq!(pretty(0.1), "0.1");
        assert_eq!(pretty(3.16227), "3.16");
        assert_eq!(pretty(31622.7), "31623");
        assert_eq!(pretty(1e-5), "1e-5");
        assert_eq!(pretty(2.5e6), "2.5e6");
    }

    fn labels(axis: Option<f64>, (lo, hi): (f64, f64), data: &[f64]) -> Vec<String> {
        let axis = Axis {
            label: String::new(),
            log: axis,
            range: None,
        };
        ticks(&axis, (lo, hi), data)
            .into_iter()
            .map(|t| t.1)
            .collect()
    }

    #[test]
    fn ticks_are_round_numbers_whatever_the_span() {
        // Linear 0..1: steps of 0.2.
        assert_eq!(
            labels(None, (0.0, 1.0), &[]),
            ["0.0", "0.2", "0.4", "0.6", "0.8", "1.0"]
        );
        // Five decades 1e-4..1e1 (axis coordinates are log10): the decades, all as powers
        // since 1e-4 needs one.
        assert_eq!(
            labels(Some(10.0), (-4.2, 1.1), &[]),
            ["1e-4", "1e-3", "1e-2", "1e-1", "1e0", "1e1"]
        );
        assert_eq!(
            labels(Some(10.0), (-2.1, 3.2), &[]),
            ["0.01", "0.1", "1", "10", "100", "1000"]
        );
        // 0.15..1.6 holds one decade: 1-2-5 instead (not 0.158, 0.251, 0.398).
        let (lo, hi) = (0.15f64.log10(), 1.6f64.log10());
        assert_eq!(labels(Some(10.0), (lo, hi), &[]), ["0.2", "0.5", "1"]);
        // 1.37..1.41: round steps in the data's units, enough digits to tell them apart.
        let (lo, hi) = (1.372f64.log10(), 1.409f64.log10());
        assert_eq!(
            labels(Some(10.0), (lo, hi), &[]),
            [
                "1.375", "1.380", "1.385", "1.390", "1.395", "1.400", "1.405"
            ]
        );
        // A log2 T axis is ticked at the swept lengths.
        let (lo, hi) = (20f64.log2(), 120f64.log2());
        assert_eq!(
            labels(Some(2.0), (lo, hi), &[25.0, 50.0, 100.0, 50.0]),
            ["25", "50", "100"]
        );
    }

    #[test]
    fn crowded_labels_keep_every_second_tick() {
        let steps = labels(None, (0.0, 3000.0), &[]);
        assert_eq!(steps, ["0", "500", "1000", "1500", "2000", "2500", "3000"]);
        let axis = Axis {
            label: String::new(),
            log: None,
            range: None,
        };
        let kept = |pixels| -> Vec<String> {
            readable(ticks(&axis, (0.0, 3000.0), &[]), (0.0, 3000.0), pixels)
                .into_iter()
                .map(|t| t.1)
                .collect()
        };
        // A full-width panel (about 1,900 px) has room for all seven labels; a third of
        // the page (about 500 px) for every second one (four labels of up to 4 digits at
        // about 20 px each, 167 px apart).
        assert_eq!(kept(1900), steps);
        assert_eq!(kept(500), ["0", "1000", "2000", "3000"]);
        assert_eq!(kept(1), ["0"]);
    }

    #[test]
    fn log_axes_drop_what_has_no_logarithm() {
        let axis = Axis {
            label: String::new(),
            log: Some(10.0),
            range: None,
        };
        assert_eq!(to_axis(&axis, 100.0), Some(2.0));
        assert_eq!(to_axis(&axis, 0.0), None);
        assert_eq!(to_axis(&axis, f64::NAN), None);
        // 10^-2 .. 10^0 padded by 5 % of the two decades.
        let (lo, hi) = axis_range(&axis, [0.01, 1.0, 0.0].into_iter());
        assert!((lo + 2.1).abs() < 1e-12 && (hi - 0.1).abs() < 1e-12);
    }
}
