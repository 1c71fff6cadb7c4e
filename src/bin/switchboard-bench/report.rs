//! What a run reports: a table on stdout and the same figures as JSON.
//!
//! A [`Figure`] is one number measured on the deployment and on the
//! baseline, its ratio (deployment ÷ baseline, whatever the unit: for a
//! latency, 3× means three times slower) and the benchmark issue's target
//! where it sets one. The raw measurements of both runs go into the JSON
//! too, so nothing the table leaves out is lost.

use serde_json::{Value, json};

/// A target from the benchmark issue.
#[derive(Debug, Clone, Copy)]
pub enum Goal {
    AtLeast(f64),
    AtMost(f64),
}

impl Goal {
    fn met_by(self, value: f64) -> bool {
        match self {
            Goal::AtLeast(goal) => value >= goal,
            Goal::AtMost(goal) => value <= goal,
        }
    }

    fn json(self) -> Value {
        match self {
            Goal::AtLeast(goal) => json!({"at_least": goal}),
            Goal::AtMost(goal) => json!({"at_most": goal}),
        }
    }
}

/// One measured number.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub unit: &'static str,
    pub deployment: Option<f64>,
    pub baseline: Option<f64>,
    pub goal: Option<Goal>,
    /// With several rounds: each round's own ratio (the deployment's
    /// round against the bare round measured right after it).
    pub round_ratios: Vec<f64>,
}

impl Figure {
    pub fn new(
        name: impl Into<String>,
        unit: &'static str,
        deployment: Option<f64>,
        baseline: Option<f64>,
    ) -> Self {
        Self {
            name: name.into(),
            unit,
            deployment,
            baseline,
            goal: None,
            round_ratios: Vec::new(),
        }
    }

    pub fn goal(mut self, goal: Goal) -> Self {
        self.goal = Some(goal);
        self
    }

    pub fn round_ratios(mut self, ratios: Vec<f64>) -> Self {
        self.round_ratios = ratios;
        self
    }

    /// The median of the rounds' own ratios: steadier than the ratio of
    /// the medians when the machine drifts between rounds, since each
    /// pair was measured back to back.
    pub fn median_round_ratio(&self) -> Option<f64> {
        median(&self.round_ratios)
    }

    pub fn ratio(&self) -> Option<f64> {
        match (self.deployment, self.baseline) {
            (Some(value), Some(baseline)) if baseline > 0.0 => Some(value / baseline),
            _ => None,
        }
    }

    pub fn met(&self) -> Option<bool> {
        Some(self.goal?.met_by(self.deployment?))
    }
}

/// A scenario's results.
#[derive(Debug, Clone)]
pub struct Report {
    pub scenario: &'static str,
    /// The load as run (sizes, rates, URLs).
    pub config: Value,
    /// Raw measurements against the deployment.
    pub deployment: Value,
    /// Raw measurements against the baseline (`None` with `--no-baseline`).
    pub baseline: Option<Value>,
    /// Raw measurements against a deployment compared with (`fanout
    /// --before-edge`).
    pub before: Option<Value>,
    pub figures: Vec<Figure>,
}

impl Report {
    pub fn json(&self) -> Value {
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|figure| {
                json!({
                    "name": figure.name,
                    "unit": figure.unit,
                    "switchboard": figure.deployment,
                    "baseline": figure.baseline,
                    "ratio": figure.ratio(),
                    "round_ratios": (!figure.round_ratios.is_empty()).then_some(&figure.round_ratios),
                    "median_round_ratio": figure.median_round_ratio(),
                    "target": figure.goal.map(Goal::json),
                    "met": figure.met(),
                })
            })
            .collect();
        json!({
            "scenario": self.scenario,
            "config": self.config,
            "figures": figures,
            "switchboard": self.deployment,
            "baseline": self.baseline,
            "before": self.before,
        })
    }

    pub fn table(&self) -> String {
        let header = [
            "figure",
            "switchboard",
            "baseline",
            "× baseline",
            "target",
            "",
        ]
        .map(str::to_owned);
        let mut rows = vec![header];
        for figure in &self.figures {
            let with_unit = |value: Option<f64>| match value {
                Some(value) => format!("{} {}", number(value, figure.unit), figure.unit),
                None => "—".to_owned(),
            };
            rows.push([
                figure.name.clone(),
                with_unit(figure.deployment),
                with_unit(figure.baseline),
                figure
                    .ratio()
                    .map_or("—".to_owned(), |ratio| format!("{ratio:.2}×")),
                match figure.goal {
                    Some(Goal::AtLeast(goal)) => format!("≥ {}", number(goal, figure.unit)),
                    Some(Goal::AtMost(goal)) => format!("≤ {}", number(goal, figure.unit)),
                    None => String::new(),
                },
                match figure.met() {
                    Some(true) => "met".to_owned(),
                    Some(false) => "missed".to_owned(),
                    None => String::new(),
                },
            ]);
        }
        let widths: Vec<usize> = (0..6)
            .map(|column| {
                rows.iter()
                    .map(|row| row[column].chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = format!(
            "\n{} (switchboard vs. bare tokio-tungstenite baseline)\n",
            self.scenario
        );
        for (index, row) in rows.iter().enumerate() {
            let mut line = String::new();
            for (column, cell) in row.iter().enumerate() {
                let pad = widths[column] - cell.chars().count();
                if column == 0 {
                    line.push_str(cell);
                    line.push_str(&" ".repeat(pad));
                } else {
                    line.push_str("  ");
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
            if index == 0 {
                out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * 5));
                out.push('\n');
            }
        }
        for figure in &self.figures {
            if let Some(median) = figure.median_round_ratio() {
                let ratios: Vec<String> = figure
                    .round_ratios
                    .iter()
                    .map(|ratio| format!("{ratio:.2}×"))
                    .collect();
                out.push_str(&format!(
                    "{}, each round against the bare round after it: {} (median {median:.2}×)\n",
                    figure.name,
                    ratios.join(", ")
                ));
            }
        }
        out
    }
}

/// The median of `values` (the mean of the middle two for an even count);
/// `None` for none.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    })
}

/// A number as people read it: milliseconds with two decimals below 10,
/// rates and counts with thousands separators.
fn number(value: f64, unit: &str) -> String {
    match unit {
        "ms" if value < 10.0 => format!("{value:.2}"),
        "ms" | "KiB" | "%" => format!("{value:.1}"),
        _ if value.abs() < 100.0 && value.fract() != 0.0 => format!("{value:.2}"),
        _ => thousands(value.round() as i64),
    }
}

fn thousands(value: i64) -> String {
    let digits = value.unsigned_abs().to_string();
    let mut out = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            out.push(',');
        }
        out.push(digit);
    }
    if value < 0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(number(21_034.6, "msg/s"), "21,035");
        assert_eq!(number(1.234, "ms"), "1.23");
        assert_eq!(number(31.26, "ms"), "31.3");
        assert_eq!(number(7.94, "KiB"), "7.9");
        assert_eq!(number(0.0, "messages"), "0");
    }

    #[test]
    fn ratios_and_targets() {
        let figure = Figure::new("rate", "msg/s", Some(21_000.0), Some(42_000.0))
            .goal(Goal::AtLeast(20_000.0));
        assert_eq!(figure.ratio(), Some(0.5));
        assert_eq!(figure.met(), Some(true));
        let missing = Figure::new("p99", "ms", None, Some(1.0)).goal(Goal::AtMost(5.0));
        assert_eq!(missing.ratio(), None);
        assert_eq!(missing.met(), None);
    }

    #[test]
    fn round_ratios_have_their_own_median() {
        let figure =
            Figure::new("cpu", "µs", Some(10.0), Some(6.0)).round_ratios(vec![1.9, 1.6, 1.7]);
        assert_eq!(figure.median_round_ratio(), Some(1.7));
        assert!(figure.ratio().unwrap() > 1.66 && figure.ratio().unwrap() < 1.67);
        let table = Report {
            scenario: "realtime",
            config: Value::Null,
            deployment: Value::Null,
            baseline: None,
            before: None,
            figures: vec![figure],
        }
        .table();
        assert!(
            table.contains("cpu, each round against the bare round after it: 1.90×, 1.60×, 1.70× (median 1.70×)"),
            "{table}"
        );
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        let single = Figure::new("cpu", "µs", Some(1.0), Some(1.0));
        assert_eq!(single.median_round_ratio(), None);
    }
}
