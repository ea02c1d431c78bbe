//! A token-bucket rate limiter keyed by whatever the caller chooses (replies use thread + role),
//! on governor, and `Rate`, its setting as the `--reply-rate` flag spells it (`5/s`, `30/m`,
//! `off`).

use std::fmt;
use std::hash::Hash;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::Quota;

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

/// A sweep of the limiter's keys runs at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Token buckets, one per key, on governor's keyed GCRA limiter. Keys whose bucket is full again
/// carry no information and are swept (`retain_recent`), so that memory follows the number of
/// recently active keys, not of all keys ever seen.
pub struct RateLimiter<K: Hash + Eq + Clone, C: Clock = DefaultClock> {
    limiter: governor::RateLimiter<K, DefaultKeyedStateStore<K>, C, NoOpMiddleware<C::Instant>>,
    clock: C,
    last_sweep: Mutex<C::Instant>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(rate: Rate) -> Self {
        RateLimiter::with_clock(rate, DefaultClock::default())
    }
}

impl<K: Hash + Eq + Clone, C: Clock + Clone> RateLimiter<K, C> {
    /// A limiter on `clock` (tests drive a fake one).
    pub fn with_clock(rate: Rate, clock: C) -> Self {
        let period = Duration::from_secs_f64(1.0 / rate.per_second);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MAX))
            .allow_burst(NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN));
        RateLimiter {
            limiter: governor::RateLimiter::new(
                quota,
                DefaultKeyedStateStore::default(),
                clock.clone(),
            ),
            last_sweep: Mutex::new(clock.now()),
            clock,
        }
    }

    /// Takes one token from `key`'s bucket now; `Err` holds how long until one is there.
    pub fn check(&self, key: K) -> Result<(), Duration> {
        let now = self.clock.now();
        self.sweep(now);
        self.limiter
            .check_key(&key)
            .map_err(|not_until| not_until.wait_time_from(now))
    }

    fn sweep(&self, now: C::Instant) {
        let mut last = self.last_sweep.lock().unwrap_or_else(|e| e.into_inner());
        if Duration::from(now.duration_since(*last)) >= SWEEP_EVERY {
            *last = now;
            drop(last);
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }

    /// How many keys have a bucket right now.
    pub fn len(&self) -> usize {
        self.limiter.len()
    }

    /// Whether no key has a bucket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

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

    fn limiter(
        per_second: f64,
        burst: u32,
    ) -> (
        RateLimiter<&'static str, FakeRelativeClock>,
        FakeRelativeClock,
    ) {
        let clock = FakeRelativeClock::default();
        (
            RateLimiter::with_clock(Rate::new(per_second, burst), clock.clone()),
            clock,
        )
    }

    #[test]
    fn a_burst_passes_then_the_sustained_rate_applies() {
        let (limiter, clock) = limiter(2.0, 3);
        for i in 0..3 {
            assert_eq!(limiter.check("a"), Ok(()), "request {i} of the burst");
        }
        let wait = limiter.check("a").unwrap_err();
        assert!(
            (wait.as_secs_f64() - 0.5).abs() < 1e-3,
            "one token comes back every 0.5 s, not {wait:?}"
        );
        clock.advance(Duration::from_millis(500));
        assert_eq!(limiter.check("a"), Ok(()));
        clock.advance(Duration::from_millis(100));
        assert!(limiter.check("a").is_err());
    }

    #[test]
    fn keys_have_buckets_of_their_own() {
        let (limiter, _clock) = limiter(1.0, 1);
        assert_eq!(limiter.check("a"), Ok(()));
        assert!(limiter.check("a").is_err());
        assert_eq!(limiter.check("b"), Ok(()), "b is not slowed by a");
    }

    #[test]
    fn refused_requests_do_not_push_the_next_token_further_away() {
        let (limiter, clock) = limiter(1.0, 1);
        assert_eq!(limiter.check("a"), Ok(()));
        for _ in 0..3 {
            clock.advance(Duration::from_millis(100));
            assert!(limiter.check("a").is_err());
        }
        clock.advance(Duration::from_millis(700));
        assert_eq!(limiter.check("a"), Ok(()));
    }

    #[test]
    fn idle_buckets_are_swept() {
        let clock = FakeRelativeClock::default();
        let limiter = RateLimiter::with_clock(Rate::new(1.0, 2), clock.clone());
        for key in 0..100 {
            limiter.check(key).unwrap();
        }
        assert_eq!(limiter.len(), 100);
        // A minute later every bucket is full again; the next check sweeps them away.
        clock.advance(SWEEP_EVERY);
        limiter.check(1000).unwrap();
        assert_eq!(limiter.len(), 1, "only the key just used keeps a bucket");
    }
}
