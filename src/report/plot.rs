//! `loss.svg`: a run's training curves — loss (in bits per token) against step with the n-gram
//! baseline, learning rate and throughput — drawn with plotters' pure-Rust SVG backend.

use super::draw::{
    baseline_label, draw_hline, draw_legend, draw_noisy, loss_range, loss_x_range, off_scale_label,
    run_name, write_atomic, Area, BUCKETS, FONT, LOSS_DESC, TRAIN_COLOR, VAL_COLOR,
};
use super::series::{envelope, tokens_at, Series, BITS_PER_NAT};
use super::text::human;
use crate::baseline::{self, BaselineReport};
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// The picture `render_run` writes into the run folder.
pub const LOSS_SVG: &str = "loss.svg";

const BASELINE_COLOR: RGBColor = RGBColor(90, 90, 90);
const LR_COLOR: RGBColor = RGBColor(44, 160, 44);
const SPEED_COLOR: RGBColor = RGBColor(148, 103, 189);

/// Draws `run_dir/metrics.jsonl` into `run_dir/loss.svg` (written atomically) and returns its
/// path. Only `metrics.jsonl` is required: without `config.toml` the folder name titles the
/// picture, and a missing or unreadable `baseline.json` just leaves the baseline out, so the
/// trainer can call this after every evaluation without risking the run.
pub fn render_run(run_dir: &Path) -> Result<PathBuf> {
    let series = Series::load(run_dir)?;
    let name = run_name(run_dir);
    // A broken baseline report must not stop a plot (or a training run): draw without it.
    let baseline = baseline::load_report(run_dir).ok().flatten();
    let mut svg = String::new();
    draw_run(&mut svg, &name, &series, baseline.as_ref())
        .with_context(|| format!("drawing the curves of {}", run_dir.display()))?;
    let out = run_dir.join(LOSS_SVG);
    write_atomic(&out, &svg)?;
    Ok(out)
}

fn draw_run(
    svg: &mut String,
    name: &str,
    series: &Series,
    baseline: Option<&BaselineReport>,
) -> Result<()> {
    let root = SVGBackend::with_string(svg, (1000, 820)).into_drawing_area();
    root.fill(&WHITE)?;
    let title = match series.best_eval() {
        Some(best) => format!(
            "{name}: best val {:.3} bits/token at step {}",
            best.val_loss * BITS_PER_NAT,
            best.step
        ),
        None => format!("{name}: no evaluation yet"),
    };
    let root = root.titled(&title, (FONT, 22))?;
    let (top, bottom) = root.split_vertically(500);
    let (left, right) = bottom.split_horizontally(500);
    loss_panel(&top, series, baseline)?;
    let lr: Vec<(f64, f64)> = series
        .train
        .iter()
        .filter_map(|p| Some((p.step as f64, p.lr?)))
        .collect();
    // The schedule is exact, not noisy: drawn as it is, never smoothed.
    let lr = envelope(&lr, BUCKETS);
    small_panel(&left, "learning rate", &lr, LR_COLOR, &lr_label)?;
    let speed: Vec<(f64, f64)> = series
        .train
        .iter()
        .filter_map(|p| Some((p.step as f64, p.tokens_per_s?)))
        .collect();
    small_panel(&right, "tokens per second", &speed, SPEED_COLOR, &|y| {
        human(*y)
    })?;
    root.present()?;
    Ok(())
}

/// Train and val loss against step, the baseline dashed, and tokens seen on the top axis.
fn loss_panel(area: &Area, series: &Series, baseline: Option<&BaselineReport>) -> Result<()> {
    let base_bits = baseline.map(|b| b.val_bits_per_token);
    let y = loss_range(&[series], base_bits.as_slice());
    let x = loss_x_range(series.last_step().unwrap_or(1) as f64);
    let tokens = series.tokens_by_step();
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .margin_right(30)
        .x_label_area_size(45)
        .top_x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(x.clone(), y.clone())?
        .set_secondary_coord(x.clone(), y.clone());
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(LOSS_DESC)
        .x_label_formatter(&|s| human(*s))
        .y_label_formatter(&|v| format!("{v:.2}"))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    if !tokens.is_empty() {
        let fmt = |s: &f64| tokens_at(&tokens, *s).map_or_else(String::new, human);
        chart
            .configure_secondary_axes()
            .x_desc("tokens seen")
            .x_label_formatter(&fmt)
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .draw()?;
    }
    let clip = |v: f64| v.min(y.end);
    let train: Vec<(f64, f64)> = series
        .train
        .iter()
        .map(|p| (p.step as f64, p.loss * BITS_PER_NAT))
        .collect();
    let val: Vec<(f64, f64)> = series
        .eval
        .iter()
        .map(|p| (p.step as f64, p.val_loss * BITS_PER_NAT))
        .collect();
    draw_noisy(
        &mut chart,
        &train,
        TRAIN_COLOR.to_rgba(),
        y.end,
        Some("train loss"),
    )?;
    // Markers show where evaluations happened, until there are too many to tell apart.
    let marker = if val.len() <= 100 { 4 } else { 0 };
    let val_clipped = val.iter().map(|p| (p.0, clip(p.1)));
    chart
        // Filled, so the points look like the legend's marker (a line series draws its points
        // with the line's style, open unless that style is filled).
        .draw_series(
            LineSeries::new(val_clipped, VAL_COLOR.filled().stroke_width(2)).point_size(marker),
        )?
        .label(off_scale_label("val loss", &val, y.end))
        .legend(|(x, y)| {
            EmptyElement::at((x, y))
                + PathElement::new([(-10, 0), (10, 0)], VAL_COLOR.stroke_width(2))
                + Circle::new((0, 0), 4, VAL_COLOR.filled())
        });
    if let Some(b) = baseline {
        let bits = b.val_bits_per_token;
        let style = BASELINE_COLOR.stroke_width(2);
        draw_hline(&mut chart, x.clone(), bits, style, baseline_label(b))?;
    }
    draw_legend(&mut chart)
}

/// Learning rates span decades: scientific notation, but a plain 0 at the origin.
fn lr_label(lr: &f64) -> String {
    if *lr == 0.0 {
        "0".into()
    } else {
        format!("{lr:.1e}")
    }
}

/// One quantity against step, from zero to just above its largest value.
fn small_panel(
    area: &Area,
    desc: &str,
    points: &[(f64, f64)],
    color: RGBColor,
    fmt: &dyn Fn(&f64) -> String,
) -> Result<()> {
    let x_end = points.last().map_or(1.0, |p| p.0.max(1.0));
    let y_max = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let y_end = if y_max > 0.0 { y_max * 1.1 } else { 1.0 };
    let mut chart = ChartBuilder::on(area)
        .caption(desc, (FONT, 16))
        .margin(12)
        .margin_right(30)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..x_end, 0.0..y_end)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(desc)
        .x_labels(6)
        .y_labels(6)
        .x_label_formatter(&|s| human(*s))
        .y_label_formatter(fmt)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .light_line_style(WHITE.mix(0.0))
        .draw()?;
    draw_noisy(&mut chart, points, color.to_rgba(), y_end, None)
}
