//! The figure style, in one place: sizes, fonts and greys every figure uses.
//!
//! A figure is [`WIDTH`] = 2100 pixels wide: 7 in (two columns of a paper) at 300 dpi,
//! and 3.5 in (one column) at 600 dpi. plotters writes a font size `s` as an SVG
//! `font-size` of about 0.81·s, and text must be at least 7 pt at 7 in, i.e. 29 px: every
//! size below is at least 37 (tick labels print at 7.3 pt), and a figure has at most 3
//! panels across.

use plotters::style::RGBColor;

/// Figure width in pixels (two columns of a paper).
pub const WIDTH: u32 = 2100;
/// Width of the one-column version of a small figure: 3.5 in at 300 dpi.
pub const COLUMN_WIDTH: u32 = 1050;
/// The most panels a figure may have to get a one-column version (stacked).
pub const COLUMN_PANELS: usize = 3;
/// Height of one row of panels.
pub const PANEL_HEIGHT: u32 = 660;
/// Most panels across a figure.
pub const MAX_COLUMNS: usize = 3;
/// The font family every text uses (registered from the bundled DejaVu Sans).
pub const FONT: &str = "sans-serif";
/// The figure's title.
pub const TITLE_SIZE: f64 = 46.0;
/// Legend entries.
pub const LEGEND_SIZE: f64 = 40.0;
/// Height of one legend row.
pub const LEGEND_ROW: u32 = 54;
/// A panel's title.
pub const PANEL_TITLE_SIZE: u32 = 40;
/// Tick labels.
pub const TICK_SIZE: u32 = 37;
/// Axis labels.
pub const AXIS_SIZE: u32 = 38;
/// Room for the x axis's ticks and label, and for the y axis's.
pub const LABEL_AREAS: (u32, u32) = (100, 150);
/// The grey of the baseline.
pub const BASELINE_GREY: RGBColor = RGBColor(120, 120, 120);
