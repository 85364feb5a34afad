//! Medians of repeated samples, the markdown tables the benchmark prints, and the pass/miss
//! checks against the project's performance targets.

use std::fmt::Write as _;
use std::time::Duration;

/// Median of `values` (the mean of the middle two for an even count); 0 for none.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => 0.0,
        // n is odd: the middle element exists.
        _ if n % 2 == 1 => sorted[n / 2],
        // n is even and at least 2: both middle elements exist.
        _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Median of durations, in milliseconds.
pub fn median_ms(values: &[Duration]) -> f64 {
    let ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    median(&ms)
}

/// `a / b`, or NaN when `b` is not positive.
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// A markdown table.
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as markdown, one line per row.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let line = |cells: &[String]| format!("| {} |", cells.join(" | "));
        let _ = writeln!(out, "{}", line(&self.header));
        let rule: Vec<String> = self.header.iter().map(|_| "---".to_owned()).collect();
        let _ = writeln!(out, "{}", line(&rule));
        for row in &self.rows {
            let _ = writeln!(out, "{}", line(row));
        }
        out
    }
}

/// One target of the issue and whether this run met it.
#[derive(Debug, Clone)]
pub struct Check {
    pub target: String,
    pub measured: String,
    pub pass: bool,
}

impl Check {
    /// A check that `value` is at most `limit`.
    pub fn at_most(target: &str, value: f64, limit: f64, measured: String) -> Self {
        Self {
            target: target.to_owned(),
            measured,
            pass: value.is_finite() && value <= limit,
        }
    }

    /// A check that `value` is at least `limit`.
    pub fn at_least(target: &str, value: f64, limit: f64, measured: String) -> Self {
        Self {
            target: target.to_owned(),
            measured,
            pass: value.is_finite() && value >= limit,
        }
    }
}

/// The summary table of all checks.
pub fn summary(checks: &[Check]) -> Table {
    let mut table = Table::new(&["target", "measured", "result"]);
    for check in checks {
        let result = if check.pass { "PASS" } else { "MISS" };
        table.row(vec![
            check.target.clone(),
            check.measured.clone(),
            result.to_owned(),
        ]);
    }
    table
}
