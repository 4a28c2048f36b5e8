//! Per-flow trigger rate limits: a token bucket per flow, in this replica's memory.
//!
//! # Caveats
//! Each replica keeps its own buckets, so with N replicas behind a balancer a flow can take up
//! to N times its limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::locking::lock;
use crate::manifest::{RateLimitSpec, MAX_BURST, MAX_PER_SECOND, MIN_PER_SECOND};

/// The longest wait a refused caller is told: a full token at the slowest rate allowed.
const MAX_WAIT: Duration = Duration::from_secs(1000);

struct Bucket {
    tokens: f64,
    at: Instant,
}

#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// Takes one token for the flow. `Err` holds how long until one is free.
    pub fn take(&self, flow_id: &str, limit: RateLimitSpec) -> Result<(), Duration> {
        self.take_at(flow_id, limit, Instant::now())
    }

    fn take_at(&self, flow_id: &str, limit: RateLimitSpec, now: Instant) -> Result<(), Duration> {
        // The manifest refuses limits outside these ranges, but a manifest stored before it
        // did may hold any number: clamped here, so the arithmetic below cannot fail.
        let per_second = if limit.per_second.is_nan() {
            MIN_PER_SECOND
        } else {
            limit.per_second.clamp(MIN_PER_SECOND, MAX_PER_SECOND)
        };
        let burst = f64::from(
            limit
                .burst
                .unwrap_or(per_second.ceil() as u32)
                .clamp(1, MAX_BURST),
        );
        let missing = {
            // Every flow's triggers share this lock: nothing under it can panic, and a panic
            // elsewhere that poisoned it leaves buckets that are still usable numbers.
            let mut buckets = lock(&self.buckets);
            let b = buckets.entry(flow_id.to_string()).or_insert(Bucket {
                tokens: burst,
                at: now,
            });
            let refill = now.saturating_duration_since(b.at).as_secs_f64() * per_second;
            b.tokens = (b.tokens + refill).min(burst);
            b.at = now;
            if b.tokens >= 1.0 {
                b.tokens -= 1.0;
                return Ok(());
            }
            1.0 - b.tokens
        };
        Err(wait_for(missing, per_second))
    }
}

/// How long `missing` tokens take at `per_second`, at most [`MAX_WAIT`]; never panics.
fn wait_for(missing: f64, per_second: f64) -> Duration {
    Duration::try_from_secs_f64(missing / per_second)
        .unwrap_or(MAX_WAIT)
        .min(MAX_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_refills_it() {
        let limiter = RateLimiter::default();
        let limit = RateLimitSpec {
            per_second: 2.0,
            burst: Some(3),
        };
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.take_at("f", limit, t0).is_ok());
        }
        let wait = limiter.take_at("f", limit, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(500));
        assert!(limiter
            .take_at("f", limit, t0 + Duration::from_millis(500))
            .is_ok());
        assert!(
            limiter.take_at("other", limit, t0).is_ok(),
            "flows have their own buckets"
        );
    }

    /// `perSecond: 1e-20` panicked in `Duration::from_secs_f64` while the lock was held,
    /// poisoning it: every webhook and inject of every flow then answered 500.
    #[test]
    fn any_stored_limit_gives_an_answer_and_other_flows_keep_theirs() {
        let limiter = RateLimiter::default();
        let t0 = Instant::now();
        let normal = RateLimitSpec {
            per_second: 2.0,
            burst: Some(1),
        };
        for per_second in [
            1e-20,
            0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e300,
        ] {
            for burst in [Some(0), Some(1), Some(u32::MAX), None] {
                let limit = RateLimitSpec { per_second, burst };
                let flow = format!("{per_second}-{burst:?}");
                for i in 0..3 {
                    if let Err(wait) = limiter.take_at(&flow, limit, t0) {
                        assert!(wait <= MAX_WAIT, "{flow} #{i}: {wait:?}");
                    }
                }
            }
        }
        let tiny = RateLimitSpec {
            per_second: 1e-20,
            burst: Some(1),
        };
        assert!(limiter.take_at("tiny", tiny, t0).is_ok());
        assert_eq!(
            limiter.take_at("tiny", tiny, t0),
            Err(MAX_WAIT),
            "the slowest rate allowed"
        );
        assert!(
            limiter.take_at("other", normal, t0).is_ok(),
            "another flow is unaffected"
        );
    }

    #[test]
    fn a_poisoned_lock_is_recovered() {
        let limiter = std::sync::Arc::new(RateLimiter::default());
        let l = limiter.clone();
        let _ = std::thread::spawn(move || {
            let _guard = l.buckets.lock().unwrap();
            panic!("a panic while holding the lock");
        })
        .join();
        assert!(limiter.buckets.is_poisoned());
        let limit = RateLimitSpec {
            per_second: 1.0,
            burst: Some(1),
        };
        assert!(limiter.take("f", limit).is_ok());
    }

    #[test]
    fn the_wait_is_total() {
        assert_eq!(wait_for(1.0, 2.0), Duration::from_millis(500));
        assert_eq!(wait_for(1.0, 0.0), MAX_WAIT);
        assert_eq!(wait_for(f64::NAN, 1.0), MAX_WAIT);
        assert_eq!(wait_for(1.0, 1e-300), MAX_WAIT);
    }
}
