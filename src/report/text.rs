//! Numbers and tables as text, for tick labels and `lmtrain runs`.

/// Compact human numbers for tick labels and tables: 950, 12.3k, 4.56M, 1.2G.
pub fn human(x: f64) -> String {
    let a = x.abs();
    let (v, suffix) = match a {
        a if a >= 1e9 => (x / 1e9, "G"),
        a if a >= 1e6 => (x / 1e6, "M"),
        a if a >= 1e3 => (x / 1e3, "k"),
        _ => (x, ""),
    };
    // Three significant digits is plenty for reading a chart or comparing runs.
    let digits = match v.abs() {
        a if a >= 100.0 || suffix.is_empty() && a == a.trunc() => 0,
        a if a >= 10.0 => 1,
        _ => 2,
    };
    let text = format!("{v:.digits$}");
    // "2.00k" reads as noise on an axis: drop zeros that carry no information.
    let text = if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.')
    } else {
        &text
    };
    format!("{text}{suffix}")
}

/// An exact count with thousands separators: 1,234,567.
pub fn grouped(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Wall time for people: 45s, 1m23s, 2h05m.
pub fn duration(s: f64) -> String {
    let s = s.max(0.0).round() as u64;
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// Lines of cells as columns two spaces apart; the first `left` columns flush left (names),
/// the rest flush right (numbers).
pub fn align(lines: &[Vec<String>], left: usize) -> String {
    let cols = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            lines
                .iter()
                .filter_map(|l| l.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for line in lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (s, &w))| {
                if c < left {
                    format!("{s:<w$}")
                } else {
                    format!("{s:>w$}")
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_numbers() {
        assert_eq!(human(950.0), "950");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(4_560_000.0), "4.56M");
        assert_eq!(human(0.5), "0.5");
        assert_eq!(human(2000.0), "2k");
    }

    #[test]
    fn durations_read_like_people_write_them() {
        assert_eq!(duration(45.2), "45s");
        assert_eq!(duration(83.0), "1m23s");
        assert_eq!(duration(7500.0), "2h05m");
    }

    #[test]
    fn align_pads_columns() {
        let lines = vec![
            vec!["a".to_string(), "1".to_string()],
            vec!["bbb".to_string(), "22".to_string()],
        ];
        assert_eq!(align(&lines, 1), "a     1\nbbb  22\n");
    }

    #[test]
    fn grouped_counts() {
        assert_eq!(grouped(126_400), "126,400");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }
}
