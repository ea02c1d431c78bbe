//! A token-bucket rate limiter keyed by whatever the caller chooses (replies use thread + role),
//! and `Rate`, its setting as the `--reply-rate` flag spells it (`5/s`, `30/m`, `off`).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A sustained rate with a burst: `burst` requests may come at once, then one per
/// `1 / per_second` seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rate {
    /// Requests per second, sustained.
    pub per_second: f64,
    /// Requests that may come back to back after a quiet spell.
    pub burst: u32,
}

impl Rate {
    /// `per_second` sustained with a burst of `burst` (at least 1).
    pub fn new(per_second: f64, burst: u32) -> Self {
        Rate {
            per_second,
            burst: burst.max(1),
        }
    }
}

/// A rate as `N/s`, `N/m` or `N/h` (N may have a fraction), or `off` for no limit. The burst is
/// set separately.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RateSpec {
    Off,
    PerSecond(f64),
}

impl FromStr for RateSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(RateSpec::Off);
        }
        let (count, unit) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a rate like 5/s, 30/m or off"))?;
        let count: f64 = count
            .trim()
            .parse()
            .ok()
            .filter(|n: &f64| n.is_finite() && *n > 0.0)
            .ok_or_else(|| format!("{count:?} is not a positive number of requests"))?;
        let seconds = match unit.trim() {
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            other => return Err(format!("unknown unit {other:?}; use s, m or h")),
        };
        Ok(RateSpec::PerSecond(count / seconds))
    }
}

impl fmt::Display for RateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RateSpec::Off => f.write_str("off"),
            RateSpec::PerSecond(n) => write!(f, "{n}/s"),
        }
    }
}

/// Buckets idle this long are full again and carry no information; a sweep drops them.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Token buckets, one per key, created on first use and swept once they are full again, so that
/// memory follows the number of recently active keys, not of all keys ever seen.
pub struct RateLimiter<K> {
    rate: Rate,
    state: Mutex<Buckets<K>>,
}

struct Buckets<K> {
    buckets: HashMap<K, Bucket>,
    last_sweep: Instant,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

impl<K: Hash + Eq> RateLimiter<K> {
    pub fn new(rate: Rate) -> Self {
        RateLimiter {
            rate,
            state: Mutex::new(Buckets {
                buckets: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    /// Takes one token from `key`'s bucket now; `Err` holds how long until one is there.
    pub fn check(&self, key: K) -> Result<(), Duration> {
        self.check_at(key, Instant::now())
    }

    /// [`RateLimiter::check`] at a given instant (tests drive the clock).
    pub fn check_at(&self, key: K, now: Instant) -> Result<(), Duration> {
        let burst = f64::from(self.rate.burst);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if now.saturating_duration_since(state.last_sweep) >= SWEEP_EVERY {
            let rate = self.rate;
            state
                .buckets
                .retain(|_, bucket| bucket.refilled(now, rate) < burst);
            state.last_sweep = now;
        }
        let bucket = state.buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            updated: now,
        });
        bucket.tokens = bucket.refilled(now, self.rate);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
            Err(Duration::from_secs_f64(missing / self.rate.per_second))
        }
    }

    /// How many keys have a bucket right now.
    pub fn len(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .buckets
            .len()
    }

    /// Whether no key has a bucket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Bucket {
    fn refilled(&self, now: Instant, rate: Rate) -> f64 {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        (self.tokens + elapsed * rate.per_second).min(f64::from(rate.burst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_with_their_units() {
        assert_eq!("5/s".parse(), Ok(RateSpec::PerSecond(5.0)));
        assert_eq!("30/m".parse(), Ok(RateSpec::PerSecond(0.5)));
        assert_eq!(" 36 / h ".parse(), Ok(RateSpec::PerSecond(0.01)));
        assert_eq!("OFF".parse(), Ok(RateSpec::Off));
        for bad in ["5", "0/s", "-1/s", "x/s", "5/d", "inf/s", ""] {
            assert!(bad.parse::<RateSpec>().is_err(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn a_burst_passes_then_the_sustained_rate_applies() {
        let limiter = RateLimiter::new(Rate::new(2.0, 3));
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(
                limiter.check_at("a", t0),
                Ok(()),
                "request {i} of the burst"
            );
        }
        let wait = limiter.check_at("a", t0).unwrap_err();
        assert!(
            (wait.as_secs_f64() - 0.5).abs() < 1e-6,
            "one token comes back every 0.5 s, not {wait:?}"
        );
        assert_eq!(
            limiter.check_at("a", t0 + Duration::from_millis(500)),
            Ok(())
        );
        assert!(limiter
            .check_at("a", t0 + Duration::from_millis(600))
            .is_err());
    }

    #[test]
    fn keys_have_buckets_of_their_own() {
        let limiter = RateLimiter::new(Rate::new(1.0, 1));
        let t0 = Instant::now();
        assert_eq!(limiter.check_at("a", t0), Ok(()));
        assert!(limiter.check_at("a", t0).is_err());
        assert_eq!(limiter.check_at("b", t0), Ok(()), "b is not slowed by a");
    }

    #[test]
    fn refused_requests_do_not_push_the_next_token_further_away() {
        let limiter = RateLimiter::new(Rate::new(1.0, 1));
        let t0 = Instant::now();
        assert_eq!(limiter.check_at("a", t0), Ok(()));
        for ms in [100, 200, 300] {
            assert!(limiter
                .check_at("a", t0 + Duration::from_millis(ms))
                .is_err());
        }
        assert_eq!(limiter.check_at("a", t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn idle_buckets_are_swept() {
        let limiter = RateLimiter::new(Rate::new(1.0, 2));
        let t0 = Instant::now();
        for key in 0..100 {
            limiter.check_at(key, t0).unwrap();
        }
        assert_eq!(limiter.len(), 100);
        // A minute later every bucket is full again; the next check sweeps them away.
        limiter.check_at(1000, t0 + SWEEP_EVERY).unwrap();
        assert_eq!(limiter.len(), 1, "only the key just used keeps a bucket");
    }
}
