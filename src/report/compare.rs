//! `lmtrain plot RUN… [-o FILE]`: several runs' loss curves overlaid, against step and against
//! tokens seen, one colour per run.

use super::draw::{
    baseline_label, draw_hline, draw_legend, draw_noisy, loss_range, loss_x_range, run_name,
    write_atomic, Area, FONT, LOSS_DESC,
};
use super::series::{Series, BITS_PER_NAT};
use super::text::human;
use crate::baseline::{self, BaselineReport};
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// Distinct colours (Tableau 10); runs beyond ten reuse them in order.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One run to draw.
struct Run {
    name: String,
    series: Series,
    baseline: Option<BaselineReport>,
}

/// (x, loss in bits per token) points of one curve.
type Points = Vec<(f64, f64)>;

/// Which x axis a panel uses.
#[derive(Clone, Copy, PartialEq)]
enum Axis {
    Step,
    Tokens,
}

impl Axis {
    /// A record's x on this axis; None for a record that does not say how many tokens it saw.
    fn x(self, step: u64, tokens_seen: Option<u64>) -> Option<f64> {
        match self {
            Axis::Step => Some(step as f64),
            Axis::Tokens => tokens_seen.map(|t| t as f64),
        }
    }
}

/// Draws the val loss (thick, with markers) and train loss (thin) of every run in `runs` into
/// the SVG file `out`, in two panels: against step and against tokens seen. Each run folder
/// must hold `metrics.jsonl`; its `baseline.json`, when present, adds a dashed line.
pub fn render_comparison(runs: &[PathBuf], out: &Path) -> Result<()> {
    if runs.is_empty() {
        anyhow::bail!("no runs to plot: pass one or more run folders (checkpoints/<run>)");
    }
    let svg_name = out
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"));
    if !svg_name {
        anyhow::bail!(
            "--out {}: lmtrain plot writes SVG only; name the file …/NAME.svg (to get a PNG, convert it, e.g. `rsvg-convert NAME.svg -o NAME.png`)",
            out.display()
        );
    }
    let runs = runs
        .iter()
        .map(|dir| {
            Ok(Run {
                name: run_name(dir),
                series: Series::load(dir)?,
                // An unreadable baseline only loses its line, as in `render_run`.
                baseline: baseline::load_report(dir).ok().flatten(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut svg = String::new();
    draw(&mut svg, &runs).context("drawing the comparison")?;
    write_atomic(out, &svg)
}

fn draw(svg: &mut String, runs: &[Run]) -> Result<()> {
    let root = SVGBackend::with_string(svg, (1000, 1000)).into_drawing_area();
    root.fill(&WHITE)?;
    let names: Vec<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    // Past a few names the title would run off the page; the legend names them all anyway.
    let title = if names.len() <= 4 {
        format!("loss: {}", names.join(" vs "))
    } else {
        format!("loss of {} runs", names.len())
    };
    let root = root.titled(&title, (FONT, 22))?;
    let (top, bottom) = root.split_vertically(480);
    panel(&top, runs, Axis::Step)?;
    panel(&bottom, runs, Axis::Tokens)?;
    root.present()?;
    Ok(())
}

/// Every run's curves against one x axis.
fn panel(area: &Area, runs: &[Run], axis: Axis) -> Result<()> {
    let all: Vec<&Series> = runs.iter().map(|r| &r.series).collect();
    let bases: Vec<f64> = runs
        .iter()
        .filter_map(|r| Some(r.baseline.as_ref()?.val_bits_per_token))
        .collect();
    let y = loss_range(&all, &bases);
    let curves: Vec<(Points, Points)> = runs
        .iter()
        .map(|r| {
            let s = &r.series;
            let train = s
                .train
                .iter()
                .filter_map(|p| Some((axis.x(p.step, p.tokens_seen)?, p.loss * BITS_PER_NAT)));
            let val = s.eval.iter().filter_map(|p| {
                let bits = (p.val_loss * BITS_PER_NAT).min(y.end);
                Some((axis.x(p.step, p.tokens_seen)?, bits))
            });
            (train.collect(), val.collect())
        })
        .collect();
    let x_end = curves
        .iter()
        .flat_map(|(t, v)| t.iter().chain(v))
        .map(|p| p.0)
        .fold(1.0, f64::max);
    let (caption, x_desc) = match axis {
        Axis::Step => ("against optimizer steps", "step"),
        Axis::Tokens => ("against tokens seen", "tokens seen"),
    };
    let caption = format!("{caption} (thick + markers: val loss; thin: train loss)");
    let mut chart = ChartBuilder::on(area)
        .caption(caption, (FONT, 16))
        .margin(12)
        .margin_right(30)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(loss_x_range(x_end), y.clone())?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(LOSS_DESC)
        .x_label_formatter(&|s| human(*s))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    for (i, (run, (train, val))) in runs.iter().zip(&curves).enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // Thin and faint, so the val curves (what runs are compared by) stay in front.
        draw_noisy(&mut chart, train, color.mix(0.6), y.end, None)?;
        let marker = if val.len() <= 60 { 3 } else { 0 };
        chart
            .draw_series(
                LineSeries::new(val.iter().copied(), color.stroke_width(3)).point_size(marker),
            )?
            .label(run.name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3)));
        if let Some(b) = &run.baseline {
            let bits = b.val_bits_per_token;
            let style = color.stroke_width(1);
            let label = format!("{} {}", run.name, baseline_label(b));
            draw_hline(&mut chart, 0.0..x_end, bits, style, label)?;
        }
    }
    draw_legend(&mut chart)
}
