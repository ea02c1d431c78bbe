//! Percentiles of latency samples.

use std::time::Duration;

use serde::Serialize;

/// p50, p99 and max of a set of samples, in microseconds.
#[derive(Serialize, Debug, Clone, Copy, Default)]
pub struct Summary {
    pub samples: usize,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Summary {
    pub fn of(mut samples: Vec<Duration>) -> Summary {
        if samples.is_empty() {
            return Summary::default();
        }
        samples.sort_unstable();
        // Nearest rank: the smallest sample with at least p% of the samples at or below it.
        let rank = |p: usize| samples[(samples.len() * p).div_ceil(100).max(1) - 1];
        Summary {
            samples: samples.len(),
            p50_us: rank(50).as_micros() as u64,
            p99_us: rank(99).as_micros() as u64,
            max_us: samples[samples.len() - 1].as_micros() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let samples = (1..=100).map(Duration::from_micros).collect();
        let s = Summary::of(samples);
        assert_eq!((s.p50_us, s.p99_us, s.max_us), (50, 99, 100));
        let one = Summary::of(vec![Duration::from_micros(7)]);
        assert_eq!((one.p50_us, one.p99_us, one.max_us), (7, 7, 7));
    }
}
