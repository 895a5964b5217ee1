//! The figure style, in one place: sizes, fonts and greys every figure uses.
//!
//! A figure is [`WIDTH`] pixels wide. Printed across two columns (7 in) that is 257 px
//! per inch, so 7 pt of text needs 25 px: every text size below is at least that, and
//! the same figure printed one column wide (3.5 in) keeps its titles and legend legible.

use plotters::style::RGBColor;

/// Figure width in pixels.
pub const WIDTH: u32 = 1800;
/// Height of one row of panels.
pub const PANEL_HEIGHT: u32 = 560;
/// The font family every text uses (registered from the bundled DejaVu Sans).
pub const FONT: &str = "sans-serif";
/// The figure's title.
pub const TITLE_SIZE: f64 = 36.0;
/// Legend entries.
pub const LEGEND_SIZE: f64 = 30.0;
/// Height of one legend row.
pub const LEGEND_ROW: u32 = 42;
/// A panel's title.
pub const PANEL_TITLE_SIZE: u32 = 30;
/// Tick labels.
pub const TICK_SIZE: u32 = 26;
/// Axis labels.
pub const AXIS_SIZE: u32 = 27;
/// The grey of the baseline.
pub const BASELINE_GREY: RGBColor = RGBColor(120, 120, 120);
