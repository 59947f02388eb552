//! Drawing pieces shared by `loss.svg` and `lmtrain plot`: styles, the loss axis range, noisy
//! curves, run names and atomic writes.

use super::series::{envelope, smooth, Series, BITS_PER_NAT};
use crate::baseline::BaselineReport;
use crate::config::Config;
use anyhow::{Context, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;

/// Axis label of every loss axis: the unit is stated once, here.
pub(crate) const LOSS_DESC: &str = "loss (bits per token)";
pub(crate) const FONT: &str = "sans-serif";
pub(crate) const TRAIN_COLOR: RGBColor = RGBColor(31, 119, 180);
pub(crate) const VAL_COLOR: RGBColor = RGBColor(214, 39, 40);

/// The drawing area of one panel of an SVG held in memory.
pub(crate) type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// The x range `0..last` of a loss chart, plus 2%: a val marker at the last step (the final
/// evaluation) is then drawn whole instead of clipped in half by the plot's edge.
pub(crate) fn loss_x_range(last: f64) -> Range<f64> {
    0.0..last.max(1.0) * 1.02
}
/// A chart with plain numeric axes drawn into an [`Area`].
pub(crate) type Chart<'a> =
    ChartContext<'a, SVGBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// A dashed horizontal line at height `y` across `x` (a baseline), with a legend entry.
pub(crate) fn draw_hline(
    chart: &mut Chart,
    x: Range<f64>,
    y: f64,
    style: ShapeStyle,
    label: String,
) -> Result<()> {
    chart
        .draw_series(DashedLineSeries::new(
            [(x.start, y), (x.end, y)],
            8,
            6,
            style,
        ))?
        .label(label)
        .legend(move |(x, y)| DashedPathElement::new([(x, y), (x + 20, y)], 6, 3, style));
    Ok(())
}

/// The legend box every loss chart uses: upper right, over a translucent background.
pub(crate) fn draw_legend(chart: &mut Chart) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .draw()?;
    Ok(())
}

/// The run's name from its `config.toml`, else the folder name.
pub(crate) fn run_name(run_dir: &Path) -> String {
    Config::load(Some(&run_dir.join("config.toml")), &[])
        .map(|c| c.run.name)
        .unwrap_or_else(|_| {
            run_dir.file_name().map_or_else(
                || run_dir.display().to_string(),
                |n| n.to_string_lossy().into_owned(),
            )
        })
}

/// Writes to a temporary file beside `path`, then renames it over `path`: a browser or the
/// trainer's next call never sees half a picture.
pub(crate) fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let file_name = path
        .file_name()
        .map_or_else(|| "plot.svg".into(), |n| n.to_string_lossy().into_owned());
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

/// The legend label of a baseline line, e.g. "KN-5 baseline".
pub(crate) fn baseline_label(b: &BaselineReport) -> String {
    format!("KN-{} baseline", b.order)
}

/// Names a curve and says when some of its points (the first steps) lie above the axis and
/// are drawn at its top edge.
pub(crate) fn off_scale_label(name: &str, points: &[(f64, f64)], y_max: f64) -> String {
    if points.iter().any(|p| p.1 > y_max) {
        format!("{name} (first steps off-scale)")
    } else {
        name.to_string()
    }
}

/// Points beyond which a raw training curve is mostly noise: it is drawn faint, with its
/// moving average on top.
pub(crate) const SMOOTH_ABOVE: usize = 200;
/// Buckets of [`envelope`]: about two points per horizontal pixel of a panel.
pub(crate) const BUCKETS: usize = 1000;

/// A curve that may be noisy (training loss, throughput), clipped at `y_max`: as it is when
/// short, else faint with a moving average over a hundredth of the run drawn over it. With a
/// `name`, it gets a legend entry.
pub(crate) fn draw_noisy<'a>(
    chart: &mut Chart<'a>,
    points: &[(f64, f64)],
    color: RGBAColor,
    y_max: f64,
    name: Option<&str>,
) -> Result<()> {
    let clip = |p: &(f64, f64)| (p.0, p.1.min(y_max));
    let line = if points.len() > SMOOTH_ABOVE {
        let raw = envelope(points, BUCKETS);
        chart.draw_series(LineSeries::new(raw.iter().map(clip), color.mix(0.25)))?;
        let smoothed = envelope(&smooth(points, points.len() / 100), BUCKETS);
        chart.draw_series(LineSeries::new(
            smoothed.iter().map(clip),
            color.stroke_width(2),
        ))?
    } else {
        chart.draw_series(LineSeries::new(
            points.iter().map(clip),
            color.stroke_width(2),
        ))?
    };
    if let Some(name) = name {
        line.label(off_scale_label(name, points, y_max))
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    Ok(())
}

/// The loss axis range in bits per token: from the lowest point to the highest point past the
/// first tenth of each run, so the steep first steps (a loss near ln V) do not squash the part
/// worth reading. `extra` (baselines) always fits.
pub(crate) fn loss_range(runs: &[&Series], extra: &[f64]) -> Range<f64> {
    let mut lo = f64::INFINITY;
    let mut hi = f64::NEG_INFINITY;
    for s in runs {
        let cut = s.last_step().unwrap_or(0) as f64 * 0.1;
        let points = s
            .train
            .iter()
            .map(|p| (p.step, p.loss))
            .chain(s.eval.iter().map(|p| (p.step, p.val_loss)));
        let mut tail_hi = f64::NEG_INFINITY;
        let mut all_hi = f64::NEG_INFINITY;
        for (step, nats) in points {
            let bits = nats * BITS_PER_NAT;
            lo = lo.min(bits);
            all_hi = all_hi.max(bits);
            if step as f64 >= cut {
                tail_hi = tail_hi.max(bits);
            }
        }
        hi = hi.max(if tail_hi.is_finite() { tail_hi } else { all_hi });
    }
    for &e in extra {
        lo = lo.min(e);
        hi = hi.max(e);
    }
    if !lo.is_finite() || !hi.is_finite() {
        return 0.0..1.0;
    }
    let pad = ((hi - lo) * 0.06).max(0.05);
    // Extra headroom above the curves keeps the legend (upper right) off them.
    (lo - pad).max(0.0)..hi + 4.0 * pad
}
