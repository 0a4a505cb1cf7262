//! Result files: `<name>.json` with one entry per metric, and targets with their verdicts.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

/// One measured figure beside its reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Metric {
    pub value: f64,
    pub reference: f64,
    /// `value / reference`; below 1 means smaller (faster, leaner) than the reference.
    pub ratio: f64,
    pub unit: String,
    /// For a figure that is the median of several runs: the runs, and min and max of each side.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runs: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_max: Option<f64>,
}

impl Metric {
    /// Values rounded to one decimal.
    pub fn new(value: f64, reference: f64, unit: &str) -> Metric {
        Self::rounded(value, reference, unit, 1)
    }

    /// Values rounded to three decimals, for small figures (sub-millisecond latencies).
    pub fn precise(value: f64, reference: f64, unit: &str) -> Metric {
        Self::rounded(value, reference, unit, 3)
    }

    fn rounded(value: f64, reference: f64, unit: &str, decimals: i32) -> Metric {
        let ratio = if reference > 0.0 {
            value / reference
        } else {
            f64::NAN
        };
        Metric {
            value: round_to(value, decimals),
            reference: round_to(reference, decimals),
            ratio: round_to(ratio, 3),
            unit: unit.to_string(),
            runs: None,
            min: None,
            max: None,
            reference_min: None,
            reference_max: None,
        }
    }

    /// The median (nearest rank) of several runs on each side, with their min and max.
    pub fn spread(ours: &[f64], theirs: &[f64], unit: &str) -> Metric {
        Self::spread_rounded(ours, theirs, unit, 1)
    }

    /// [`Metric::spread`] with three decimals, for small figures (sub-millisecond latencies).
    pub fn spread_precise(ours: &[f64], theirs: &[f64], unit: &str) -> Metric {
        Self::spread_rounded(ours, theirs, unit, 3)
    }

    fn spread_rounded(ours: &[f64], theirs: &[f64], unit: &str, decimals: i32) -> Metric {
        let median = |v: &[f64]| crate::stats::percentile(v, 0.5).unwrap_or(f64::NAN);
        let min = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::min);
        let max = |v: &[f64]| v.iter().copied().fold(f64::NAN, f64::max);
        Metric {
            runs: Some(ours.len().min(theirs.len())),
            min: Some(round_to(min(ours), decimals)),
            max: Some(round_to(max(ours), decimals)),
            reference_min: Some(round_to(min(theirs), decimals)),
            reference_max: Some(round_to(max(theirs), decimals)),
            ..Self::rounded(median(ours), median(theirs), unit, decimals)
        }
    }
}

fn round_to(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// Metrics by name; serialized in name order.
pub type Results = BTreeMap<String, Metric>;

/// Prints every metric beside its reference as a progress line.
pub fn print(results: &Results) {
    for (k, v) in results {
        crate::progress(format!(
            "{k}: {} {} (reference {}, ratio {})",
            v.value, v.unit, v.reference, v.ratio
        ));
    }
}

/// Writes `results` as pretty JSON to `path`.
pub fn write_json(path: &Path, results: &Results) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(results)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A figure a metric must stay below.
#[derive(Debug, Clone)]
pub struct Target {
    pub metric: String,
    pub below: f64,
    /// How the target is stated, e.g. "p99 propagation under 100 ms at 10 nodes".
    pub what: String,
}

/// Whether a target is met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Fail,
    /// The metric was not measured in this run (e.g. a `--quick` run at other node counts).
    NotMeasured,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fail => "FAIL",
            Verdict::NotMeasured => "not measured",
        }
    }
}

impl Target {
    pub fn new(metric: &str, below: f64, what: &str) -> Target {
        Target {
            metric: metric.into(),
            below,
            what: what.into(),
        }
    }

    pub fn verdict(&self, results: &Results) -> Verdict {
        match results.get(&self.metric) {
            None => Verdict::NotMeasured,
            Some(m) if m.value < self.below => Verdict::Pass,
            Some(_) => Verdict::Fail,
        }
    }
}

/// Appends one line (or paragraph) and a newline to a markdown report.
pub fn line(s: &mut String, text: impl AsRef<str>) {
    s.push_str(text.as_ref());
    s.push('\n');
}

/// Appends the table of `results` whose figures are medians with min and max beside them
/// (`Metric::spread`), `who` naming the value column.
pub fn spread_table(s: &mut String, who: &str, results: &Results) {
    line(
        s,
        format!("| metric | {who} | min | max | reference | ref min | ref max | ratio | unit |"),
    );
    line(s, "|---|---:|---:|---:|---:|---:|---:|---:|---|");
    let opt = |x: Option<f64>| x.map_or(String::new(), fmt_num);
    for (k, m) in results {
        line(
            s,
            format!(
                "| `{k}` | {} | {} | {} | {} | {} | {} | {} | {} |",
                fmt_num(m.value),
                opt(m.min),
                opt(m.max),
                fmt_num(m.reference),
                opt(m.reference_min),
                opt(m.reference_max),
                fmt_num(m.ratio),
                m.unit
            ),
        );
    }
}

/// Formats a number for a table: integers without decimals, figures below 1 with three,
/// others with one.
pub fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else if x.fract() == 0.0 || x.abs() >= 1000.0 {
        format!("{x:.0}")
    } else if x.abs() < 1.0 {
        // Sub-unit figures (latencies in ms) keep their precision.
        format!("{x:.3}")
    } else {
        format!("{x:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_json_has_exactly_the_four_fields() {
        let mut r = Results::new();
        r.insert("x_ms".into(), Metric::new(12.34, 24.68, "ms"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"x_ms": {"value": 12.3, "reference": 24.7, "ratio": 0.5, "unit": "ms"}})
        );
        let t = Target::new("x_ms", 20.0, "x under 20 ms");
        assert_eq!(t.verdict(&r), Verdict::Pass);
        assert_eq!(Target::new("x_ms", 10.0, "").verdict(&r), Verdict::Fail);
        assert_eq!(Target::new("y", 10.0, "").verdict(&r), Verdict::NotMeasured);
    }
}
