//! The search space of a sweep: grid axes (every combination) and distributions (random
//! draws, reproducible from the sweep's seed), parsed from `--grid`/`--random` flags or a
//! `[sweep]` table, and expanded into the list of trials. Keys are the dotted keys `--set`
//! takes; values stay text until [`super::spec`] checks each trial's config.

use crate::rng::Rng;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// What a random trial draws a key's value from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dist {
    /// One of the listed values, equally likely.
    Choice(Vec<String>),
    /// Uniform on [a, b).
    Uniform(f64, f64),
    /// Uniform in log space on [a, b): learning rates, weight decays.
    LogUniform(f64, f64),
    /// An integer in [a, b], both ends included.
    Int(i64, i64),
}

/// Grid axes and distributions; `trials` random draws per grid point.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Space {
    pub grid: Vec<(String, Vec<String>)>,
    pub random: Vec<(String, Dist)>,
    pub trials: usize,
    pub seed: u64,
}

/// One configuration of the space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    pub id: usize,
    /// Its run folder's name: `t03-lr3e-3-d_model128`.
    pub name: String,
    /// `(key, value)` in the order of the space's keys.
    pub settings: Vec<(String, String)>,
}

impl Trial {
    /// The `--set key=value` overrides that make this trial's config.
    pub fn overrides(&self) -> Vec<String> {
        self.settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect()
    }
}

/// `key=a,b,c` (a `--grid` flag).
pub fn parse_grid(flag: &str) -> Result<(String, Vec<String>)> {
    let (key, values) = split_key(flag, "--grid", "train.lr=1e-3,3e-3")?;
    let values: Vec<String> = values.split(',').map(|v| v.trim().to_string()).collect();
    if values.iter().any(String::is_empty) {
        bail!("--grid {flag}: the grid of `{key}` is empty or has an empty value; list values separated by commas, e.g. --grid {key}=1,2");
    }
    Ok((key, values))
}

/// `key=dist(args)` (a `--random` flag).
pub fn parse_random(flag: &str) -> Result<(String, Dist)> {
    let (key, dist) = split_key(flag, "--random", "train.lr=loguniform(1e-4,1e-2)")?;
    let dist = parse_dist(&dist)
        .with_context(|| format!("--random {flag}: bad distribution for `{key}`"))?;
    Ok((key, dist))
}

fn split_key(flag: &str, what: &str, example: &str) -> Result<(String, String)> {
    let Some((key, rest)) = flag.split_once('=') else {
        bail!("{what} {flag}: expected key=…, e.g. {what} {example}");
    };
    let key = key.trim();
    if !key.contains('.') {
        bail!(
            "{what} {flag}: `{key}` is not a dotted key like the ones --set takes (e.g. {example})"
        );
    }
    Ok((key.to_string(), rest.trim().to_string()))
}

/// `choice(a,b,…)`, `uniform(a,b)`, `loguniform(a,b)`, `int(a,b)`, with bounds checked.
pub fn parse_dist(text: &str) -> Result<Dist> {
    let usage = "expected choice(a,b,…), uniform(a,b), loguniform(a,b) or int(a,b)";
    let (name, args) = text
        .trim()
        .strip_suffix(')')
        .and_then(|t| t.split_once('('))
        .with_context(|| format!("`{text}`: {usage}"))?;
    let args: Vec<&str> = args.split(',').map(str::trim).collect();
    let two = |kind: &str| -> Result<(f64, f64)> {
        let [a, b] = args[..] else {
            bail!("{kind}() takes two bounds, got `{text}`");
        };
        let num = |s: &str| s.parse::<f64>().ok().filter(|x| x.is_finite());
        let (Some(a), Some(b)) = (num(a), num(b)) else {
            bail!("{kind}() takes finite numbers, got `{text}`");
        };
        if a >= b {
            bail!("{kind}({a}, {b}): the lower bound must be below the upper one");
        }
        Ok((a, b))
    };
    Ok(match name.trim() {
        "choice" if args.iter().all(|a| !a.is_empty()) => {
            Dist::Choice(args.iter().map(|a| a.to_string()).collect())
        }
        "choice" => bail!("choice() needs values, none of them empty: `{text}`"),
        "uniform" => {
            let (a, b) = two("uniform")?;
            Dist::Uniform(a, b)
        }
        "loguniform" => match two("loguniform")? {
            (a, _) if a <= 0.0 => bail!("loguniform({a}, …): both bounds must be > 0"),
            (a, b) => Dist::LogUniform(a, b),
        },
        "int" => {
            let (a, b) = two("int")?;
            if a.fract() != 0.0 || b.fract() != 0.0 {
                bail!("int({a}, {b}) takes integer bounds");
            }
            Dist::Int(a as i64, b as i64)
        }
        other => bail!("unknown distribution `{other}`: {usage}"),
    })
}

impl Dist {
    /// One draw, as the text a `--set` takes.
    fn draw(&self, rng: &mut Rng) -> String {
        match self {
            Dist::Choice(values) => values[rng.below(values.len())].clone(),
            Dist::Uniform(a, b) => short_float(a + (b - a) * rng.next_f64()),
            Dist::LogUniform(a, b) => {
                let (la, lb) = (a.ln(), b.ln());
                short_float((la + (lb - la) * rng.next_f64()).exp())
            }
            Dist::Int(a, b) => {
                let span = (b - a + 1) as usize;
                (a + rng.below(span) as i64).to_string()
            }
        }
    }
}

/// Four significant digits, without trailing zeros: `3.162e-3`, `0.25`.
fn short_float(x: f64) -> String {
    let text = format!("{x:.3e}");
    let (mantissa, exp) = text.split_once('e').unwrap_or((&text, "0"));
    let mantissa = mantissa.trim_end_matches('0').trim_end_matches('.');
    match exp {
        "0" => mantissa.to_string(),
        _ => format!("{mantissa}e{exp}"),
    }
}

impl Space {
    /// Every swept key, grid keys first, in order.
    pub fn keys(&self) -> Vec<&str> {
        let grid = self.grid.iter().map(|(k, _)| k.as_str());
        grid.chain(self.random.iter().map(|(k, _)| k.as_str()))
            .collect()
    }

    /// Checks the space's shape: something to sweep, no key twice, draws only with
    /// distributions.
    pub fn check(&self) -> Result<()> {
        let keys = self.keys();
        if keys.is_empty() {
            bail!("nothing to sweep: give --grid key=a,b and/or --random 'key=dist(…)' (or a [sweep] table with grid/random)");
        }
        if let Some(k) = keys
            .iter()
            .enumerate()
            .find_map(|(i, k)| keys[..i].contains(k).then_some(k))
        {
            bail!("`{k}` is swept twice; give each key one grid or one distribution");
        }
        if self.random.is_empty() && self.trials > 1 {
            bail!("--trials {} needs a --random distribution to draw from (a grid runs each combination once)", self.trials);
        }
        if !self.random.is_empty() && self.trials == 0 {
            bail!("--trials must be at least 1");
        }
        Ok(())
    }

    /// The trials: every grid point (the last axis varying fastest), each with `trials`
    /// random draws, the draws fixed by the seed and the trial's number alone.
    pub fn trials(&self) -> Vec<Trial> {
        let points = grid_points(&self.grid);
        let draws = if self.random.is_empty() {
            1
        } else {
            self.trials
        };
        let total = points.len() * draws;
        let width = (total.saturating_sub(1)).to_string().len().max(2);
        let mut out = Vec::with_capacity(total);
        for point in &points {
            for _ in 0..draws {
                let id = out.len();
                let mut rng = Rng::derive(self.seed, &format!("sweep/trial/{id}"));
                let mut settings = point.clone();
                for (key, dist) in &self.random {
                    settings.push((key.clone(), dist.draw(&mut rng)));
                }
                let name = trial_name(id, width, &settings);
                out.push(Trial { id, name, settings });
            }
        }
        out
    }
}

/// The order `n` trials start in: as numbered without promotions, else shuffled by `seed`.
/// Under ASHA the order matters: a grid is numbered along its axes, so a trial that starts
/// later is often better than all before it and is promoted before its rung fills (a
/// mispromotion). On a 16-trial PKU grid the numbered order trained 44% of the full grid's
/// steps, the shuffled one 28% (docs/perf-log.md, entry 26).
pub fn start_order(n: usize, shuffled: bool, seed: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if shuffled {
        Rng::derive(seed, "sweep/start-order").shuffle(&mut order);
    }
    order
}

/// The cartesian product of the axes, in order.
fn grid_points(grid: &[(String, Vec<String>)]) -> Vec<Vec<(String, String)>> {
    let mut points = vec![Vec::new()];
    for (key, values) in grid {
        points = points
            .into_iter()
            .flat_map(|p| {
                values.iter().map(move |v| {
                    let mut q = p.clone();
                    q.push((key.clone(), v.clone()));
                    q
                })
            })
            .collect();
    }
    points
}

/// `t03-lr3e-3-d_model128`: the number, then each setting as its key's last part and its
/// value, with any character a folder name should not hold replaced by `_`.
fn trial_name(id: usize, width: usize, settings: &[(String, String)]) -> String {
    let mut name = format!("t{id:0width$}");
    for (key, value) in settings {
        let field = key.rsplit('.').next().unwrap_or(key);
        let clean: String = value
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "._-+".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        name.push_str(&format!("-{field}{clean}"));
    }
    // Long enough to tell trials apart at a glance; the number alone keeps it unique.
    name.chars().take(96).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_is_the_cartesian_product_with_names() {
        let space = Space {
            grid: vec![
                parse_grid("train.lr=1e-3,3e-3").unwrap(),
                parse_grid("model.d_model=64,128").unwrap(),
            ],
            ..Default::default()
        };
        let names: Vec<String> = space.trials().into_iter().map(|t| t.name).collect();
        assert_eq!(
            names,
            [
                "t00-lr1e-3-d_model64",
                "t01-lr1e-3-d_model128",
                "t02-lr3e-3-d_model64",
                "t03-lr3e-3-d_model128"
            ]
        );
    }

    #[test]
    fn random_draws_are_fixed_by_the_seed_and_in_bounds() {
        let space = |seed| Space {
            random: vec![
                parse_random("train.lr=loguniform(1e-4,1e-2)").unwrap(),
                parse_random("train.warmup_steps=int(10,200)").unwrap(),
                parse_random("model.norm=choice(layernorm,rmsnorm)").unwrap(),
            ],
            trials: 50,
            seed,
            ..Default::default()
        };
        let a = space(7).trials();
        assert_eq!(a, space(7).trials());
        assert_ne!(a, space(8).trials());
        for t in &a {
            let lr: f64 = t.settings[0].1.parse().unwrap();
            let warm: i64 = t.settings[1].1.parse().unwrap();
            assert!((1e-4..1e-2).contains(&lr), "{lr}");
            assert!((10..=200).contains(&warm), "{warm}");
            assert!(["layernorm", "rmsnorm"].contains(&t.settings[2].1.as_str()));
        }
        // Both ends of int() and both choices occur in 50 draws (each misses with p < 1e-4).
        let norms: std::collections::HashSet<_> = a.iter().map(|t| &t.settings[2].1).collect();
        assert_eq!(norms.len(), 2);
    }

    #[test]
    fn bad_distributions_are_refused_naming_them() {
        for (flag, says) in [
            ("train.lr=loguniform(0,1e-2)", "> 0"),
            ("train.lr=uniform(3,1)", "lower bound"),
            ("train.lr=uniform(1)", "two bounds"),
            ("train.lr=int(1.5,3)", "integer"),
            ("train.lr=normal(0,1)", "unknown distribution"),
            ("train.lr=choice()", "choice() needs"),
            ("lr=uniform(0,1)", "dotted key"),
        ] {
            let e = format!("{:#}", parse_random(flag).unwrap_err());
            assert!(e.contains(says), "{flag}: {e}");
        }
        let e = parse_grid("train.lr=").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        let e = parse_grid("train.lr=1e-3,,2e-3").unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    #[test]
    fn floats_are_written_short() {
        assert_eq!(short_float(0.003162277), "3.162e-3");
        assert_eq!(short_float(0.25), "2.5e-1");
        assert_eq!(short_float(2.0), "2");
    }

    #[test]
    fn asha_shuffles_the_start_order_reproducibly() {
        let shuffled = start_order(16, true, 5);
        let mut sorted = shuffled.clone();
        sorted.sort();
        assert_eq!(sorted, (0..16).collect::<Vec<_>>());
        assert_ne!(
            shuffled, sorted,
            "a shuffle of 16 leaves them in order with p = 1/16!"
        );
        assert_eq!(shuffled, start_order(16, true, 5));
        assert_eq!(start_order(4, false, 5), [0, 1, 2, 3]);
    }
}
