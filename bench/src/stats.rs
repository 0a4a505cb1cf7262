//! Small statistics over samples.

/// The `q`-quantile (0 < q ≤ 1) by the nearest-rank method: the smallest sample such that at
/// least `q` of all samples are at or below it. `None` for no samples.
pub fn percentile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Mean, or `None` for no samples.
pub fn mean(samples: &[f64]) -> Option<f64> {
    (!samples.is_empty()).then(|| samples.iter().sum::<f64>() / samples.len() as f64)
}

/// Minimum and maximum, or `None` for no samples.
pub fn min_max(samples: &[f64]) -> Option<(f64, f64)> {
    let min = samples.iter().copied().min_by(f64::total_cmp)?;
    let max = samples.iter().copied().max_by(f64::total_cmp)?;
    Some((min, max))
}

/// One line summing up latency samples in ms: count, min, p50, mean, p99, max.
pub fn summary_ms(samples: &[f64]) -> String {
    match (
        min_max(samples),
        percentile(samples, 0.5),
        mean(samples),
        percentile(samples, 0.99),
    ) {
        (Some((min, max)), Some(p50), Some(mean), Some(p99)) => format!(
            "{} samples: min {min:.1}, p50 {p50:.1}, mean {mean:.1}, p99 {p99:.1}, max {max:.1} ms",
            samples.len()
        ),
        _ => "no samples".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&s, 0.5), Some(50.0));
        assert_eq!(percentile(&s, 0.99), Some(99.0));
        let s: Vec<f64> = (1..=50).rev().map(f64::from).collect();
        assert_eq!(percentile(&s, 0.99), Some(50.0));
        assert_eq!(percentile(&s, 0.5), Some(25.0));
        assert_eq!(percentile(&[], 0.5), None);
        assert_eq!(percentile(&[7.0], 0.01), Some(7.0));
        assert_eq!(min_max(&[3.0, 1.0, 2.0]), Some((1.0, 3.0)));
        assert_eq!(mean(&[1.0, 3.0]), Some(2.0));
    }
}
