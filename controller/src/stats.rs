//! Summary statistics for benchmark samples.

/// min / p50 / p99 / max of a sample set, in the samples' unit.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    /// Smallest sample.
    pub min: f64,
    /// Median (nearest-rank).
    pub p50: f64,
    /// 99th percentile (nearest-rank).
    pub p99: f64,
    /// Largest sample.
    pub max: f64,
    /// Number of samples.
    pub count: usize,
}

/// Summarises `samples`; `None` when empty or when any sample is NaN.
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = |p: f64| {
        let r = (p / 100.0 * sorted.len() as f64).ceil() as usize;
        sorted[r.clamp(1, sorted.len()) - 1]
    };
    Some(Summary {
        min: sorted[0],
        p50: rank(50.0),
        p99: rank(99.0),
        max: sorted[sorted.len() - 1],
        count: sorted.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        let sum = summarize(&s).unwrap();
        assert_eq!(
            (sum.min, sum.p50, sum.p99, sum.max),
            (1.0, 50.0, 99.0, 100.0)
        );
        let one = summarize(&[3.5]).unwrap();
        assert_eq!((one.min, one.p50, one.p99), (3.5, 3.5, 3.5));
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[1.0, f64::NAN]).is_none());
    }
}
