//! A sweep folder's reports: `lmtrain runs SWEEP` (its trials by best val bits/token, the swept
//! keys as columns, each trial's status as `trials.jsonl` and the claim locks tell it) and
//! `lmtrain plot SWEEP` (every trial's val curve, the winner highlighted, and val bits/token
//! against each swept key).

use super::draw::{write_atomic, Area, FONT, LOSS_DESC};
use super::series::{Series, BITS_PER_NAT};
use super::text::{align, duration, human};
use crate::sweep::scheduler::{self, Status, TrialState};
use crate::sweep::store::Store;
use crate::sweep::{best, Sweep};
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::{Path, PathBuf};

/// The sweep's trials with their states, best first.
struct Rows {
    sweep: Sweep,
    states: Vec<TrialState>,
    /// Trial indices, best val bits/token first (unevaluated ones last, in order).
    order: Vec<usize>,
    labels: Vec<String>,
    /// Each trial's metrics (empty for a trial not started yet), read once.
    series: Vec<Series>,
}

fn load(dir: &Path) -> Result<Rows> {
    let sweep = Store::load(dir)?;
    let store = Store {
        dir: dir.to_path_buf(),
    };
    let states = scheduler::fold(sweep.trials.len(), &store.events()?);
    let mut order: Vec<usize> = (0..states.len()).collect();
    let key = |i: &usize| {
        states[*i]
            .best_val_bits_per_token
            .filter(|b| b.is_finite())
            .unwrap_or(f64::INFINITY)
    };
    order.sort_by(|a, b| key(a).total_cmp(&key(b)).then(a.cmp(b)));
    let labels = sweep
        .trials
        .iter()
        .zip(&states)
        .map(|(t, s)| label(s.status, store.claimed(t).unwrap_or(false)))
        .collect();
    let series = sweep
        .trials
        .iter()
        .map(|t| Series::load(&sweep.run_dir(t)).unwrap_or_default())
        .collect();
    Ok(Rows {
        sweep,
        states,
        order,
        labels,
        series,
    })
}

fn label(status: Status, claimed: bool) -> String {
    match status {
        Status::Pending => "pending".into(),
        Status::Started { .. } if claimed => "running".into(),
        Status::Started { .. } => "interrupted".into(),
        Status::Paused { step } => format!("at rung {step}"),
        Status::Finished => "finished".into(),
        Status::Failed => "failed".into(),
        Status::Pruned { step } => format!("pruned at {step}"),
    }
}

/// The `lmtrain runs SWEEP` table.
pub fn sweep_table(dir: &Path) -> Result<String> {
    let r = load(dir)?;
    let keys = r.sweep.space.keys();
    let mut header: Vec<String> = ["#", "trial", "status", "steps"].map(String::from).to_vec();
    header.extend(keys.iter().map(|k| k.to_string()));
    header.extend(["best val bits/token", "train time"].map(String::from));
    let mut lines = vec![header];
    for (rank, &i) in r.order.iter().enumerate() {
        let (t, s) = (&r.sweep.trials[i], &r.states[i]);
        let steps = r.series[i].last_step();
        let mut line = vec![
            (rank + 1).to_string(),
            t.name.clone(),
            r.labels[i].clone(),
            steps.map_or("-".into(), |s| s.to_string()),
        ];
        line.extend(t.settings.iter().map(|(_, v)| v.clone()));
        line.push(
            s.best_val_bits_per_token
                .map_or("-".into(), |b| format!("{b:.4}")),
        );
        line.push(duration(s.wall_s));
        lines.push(line);
    }
    let mut out = format!(
        "sweep {} ({} trials, rungs {:?}): {}\n",
        r.sweep.name,
        r.sweep.trials.len(),
        r.sweep.rungs(),
        dir.display()
    );
    out.push_str(&align(&lines, 3));
    if let Some(w) = best::winner(&r.states) {
        out.push_str(&format!(
            "best: {} (settings: {}); config in {}\n",
            r.sweep.trials[w].name,
            r.sweep.trials[w].overrides().join(" "),
            dir.join("best.toml").display()
        ));
    }
    for (t, s) in r.sweep.trials.iter().zip(&r.states) {
        if let Some(e) = &s.error {
            out.push_str(&format!("{} failed: {e}\n", t.name));
        }
    }
    Ok(out)
}

/// The same as [`sweep_table`] as JSON: `{"dir", "name", "rungs", "keys", "best", "trials":
/// [{rank, id, name, path, status, steps, settings: {key: value}, best_val_bits_per_token,
/// wall_s, error}]}`, best first.
pub fn sweep_json(dir: &Path) -> Result<serde_json::Value> {
    let r = load(dir)?;
    let trials: Vec<serde_json::Value> = r
        .order
        .iter()
        .enumerate()
        .map(|(rank, &i)| {
            let (t, s) = (&r.sweep.trials[i], &r.states[i]);
            let run = r.sweep.run_dir(t);
            let steps = r.series[i].last_step();
            let settings: serde_json::Map<String, serde_json::Value> = t
                .settings
                .iter()
                .map(|(k, v)| (k.clone(), v.clone().into()))
                .collect();
            serde_json::json!({
                "rank": rank + 1, "id": t.id, "name": t.name, "path": run.display().to_string(),
                "status": r.labels[i], "steps": steps, "settings": settings,
                "best_val_bits_per_token": s.best_val_bits_per_token.filter(|b| b.is_finite()),
                "wall_s": s.wall_s, "error": s.error,
            })
        })
        .collect();
    Ok(serde_json::json!({
        "dir": dir.display().to_string(),
        "name": r.sweep.name,
        "rungs": r.sweep.rungs(),
        "keys": r.sweep.space.keys(),
        "best": best::winner(&r.states).map(|w| r.sweep.trials[w].name.clone()),
        "trials": trials,
    }))
}

/// `lmtrain plot SWEEP`: writes `<sweep>/sweep.svg` (or `out`) and returns its path.
pub fn render_sweep(dir: &Path, out: Option<&Path>) -> Result<PathBuf> {
    let r = load(dir)?;
    let path = out.map_or_else(|| dir.join("sweep.svg"), Path::to_path_buf);
    let curves: Vec<Vec<(f64, f64)>> = r
        .series
        .iter()
        .map(|s| {
            let val = s.eval.iter();
            val.map(|p| (p.step as f64, p.val_loss * BITS_PER_NAT))
                .collect()
        })
        .collect();
    let mut svg = String::new();
    draw(&mut svg, &r, &curves).context("drawing the sweep")?;
    write_atomic(&path, &svg)?;
    Ok(path)
}

fn draw(svg: &mut String, r: &Rows, curves: &[Vec<(f64, f64)>]) -> Result<()> {
    let keys = r.sweep.space.keys();
    let height = 520 + 320 * keys.len().div_ceil(2) as u32;
    let root = SVGBackend::with_string(svg, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(&format!("sweep {}", r.sweep.name), (FONT, 22))?;
    let (top, bottom) = root.split_vertically(500);
    let winner = best::winner(&r.states);
    curves_panel(&top, r, curves, winner)?;
    let cells = bottom.split_evenly((keys.len().div_ceil(2), 2));
    for (k, area) in keys.iter().zip(cells) {
        key_panel(&area, r, k, winner)?;
    }
    root.present()?;
    Ok(())
}

/// Val bits/token against step, every trial; the winner thick and red, the others grey.
fn curves_panel(
    area: &Area,
    r: &Rows,
    curves: &[Vec<(f64, f64)>],
    winner: Option<usize>,
) -> Result<()> {
    let points = curves.iter().flatten();
    let x_end = points.clone().map(|p| p.0).fold(1.0, f64::max) * 1.02;
    let (lo, hi) = points.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (lo.min(p.1), hi.max(p.1))
    });
    let (lo, hi) = if lo.is_finite() {
        (lo, hi.max(lo + 1e-3))
    } else {
        (0.0, 1.0)
    };
    let pad = (hi - lo) * 0.05;
    let mut chart = ChartBuilder::on(area)
        .caption("val loss of every trial (red: the best)", (FONT, 16))
        .margin(12)
        .x_label_area_size(45)
        .y_label_area_size(65)
        .build_cartesian_2d(0.0..x_end, (lo - pad)..(hi + pad))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(LOSS_DESC)
        .x_label_formatter(&|s| human(*s))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 15))
        .draw()?;
    for (_, c) in curves
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != winner)
    {
        chart.draw_series(LineSeries::new(
            c.iter().copied(),
            RGBColor(140, 140, 140).mix(0.7).stroke_width(1),
        ))?;
    }
    if let Some(w) = winner {
        let red = RGBColor(214, 39, 40);
        chart
            .draw_series(
                LineSeries::new(curves[w].iter().copied(), red.stroke_width(3)).point_size(3),
            )?
            .label(r.sweep.trials[w].name.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], red.stroke_width(3)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font((FONT, 13))
            .draw()?;
    }
    Ok(())
}

/// Where a swept key's values sit on a panel's x axis: numbers on a numeric axis (log10 when
/// they span more than a factor of ten), other values at evenly spaced positions.
struct KeyAxis<'a> {
    values: Vec<&'a str>,
    numbers: Option<Vec<f64>>,
    /// The distinct values, sorted (the positions of non-numeric values).
    names: Vec<&'a str>,
    log: bool,
}

impl<'a> KeyAxis<'a> {
    fn new(r: &'a Rows, key: &str) -> Self {
        let col = r
            .sweep
            .space
            .keys()
            .iter()
            .position(|k| *k == key)
            .unwrap_or(0);
        let values: Vec<&str> = r
            .sweep
            .trials
            .iter()
            .map(|t| t.settings[col].1.as_str())
            .collect();
        let numbers: Option<Vec<f64>> = values.iter().map(|v| v.parse::<f64>().ok()).collect();
        let mut names = values.clone();
        names.sort();
        names.dedup();
        let log = numbers
            .as_ref()
            .is_some_and(|n| n.iter().all(|&x| x > 0.0) && max(n) / min(n) > 10.0);
        Self {
            values,
            numbers,
            names,
            log,
        }
    }

    /// Trial `i`'s x.
    fn x(&self, i: usize) -> f64 {
        match &self.numbers {
            Some(n) if self.log => n[i].log10(),
            Some(n) => n[i],
            None => self
                .names
                .iter()
                .position(|v| *v == self.values[i])
                .unwrap_or(0) as f64,
        }
    }

    /// A tick's label: the number, or the value at a whole position.
    fn label(&self, x: f64) -> String {
        match &self.numbers {
            Some(_) => format!("{x:.3}"),
            None => self
                .names
                .get(x.round().max(0.0) as usize)
                .filter(|_| (x - x.round()).abs() < 1e-6)
                .map_or(String::new(), |s| s.to_string()),
        }
    }
}

/// `lo..hi` of `xs` widened by a tenth (at least `min_pad`) on each side.
fn padded(xs: &[f64], min_pad: f64) -> std::ops::Range<f64> {
    let (lo, hi) = if xs.is_empty() {
        (0.0, 1.0)
    } else {
        (min(xs), max(xs))
    };
    let pad = ((hi - lo) * 0.1).max(min_pad);
    (lo - pad)..(hi + pad)
}

/// Best val bits/token against one swept key, a dot per evaluated trial (the winner red).
fn key_panel(area: &Area, r: &Rows, key: &str, winner: Option<usize>) -> Result<()> {
    let axis = KeyAxis::new(r, key);
    let pts: Vec<(f64, f64, bool)> = r
        .states
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let bits = s.best_val_bits_per_token.filter(|b| b.is_finite())?;
            Some((axis.x(i), bits, Some(i) == winner))
        })
        .collect();
    let xs: Vec<f64> = pts.iter().map(|p| p.0).collect();
    let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
    let desc = if axis.log {
        format!("log10 {key}")
    } else {
        key.to_string()
    };
    let mut chart = ChartBuilder::on(area)
        .caption(format!("best val bits/token against {key}"), (FONT, 14))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(padded(&xs, 0.5), padded(&ys, 1e-3))?;
    chart
        .configure_mesh()
        .x_desc(desc)
        .y_desc("bits/token")
        .x_label_formatter(&|x| axis.label(*x))
        .label_style((FONT, 12))
        .axis_desc_style((FONT, 13))
        .draw()?;
    chart.draw_series(pts.iter().map(|&(x, y, w)| {
        let color = if w {
            RGBColor(214, 39, 40)
        } else {
            RGBColor(31, 119, 180)
        };
        Circle::new((x, y), if w { 6 } else { 4 }, color.filled())
    }))?;
    Ok(())
}

fn min(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(xs: &[f64]) -> f64 {
    xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}
