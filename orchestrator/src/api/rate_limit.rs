//! Per-flow trigger rate limits: a token bucket per flow, in this replica's memory.
//!
//! # Caveats
//! Each replica keeps its own buckets, so with N replicas behind a balancer a flow can take up
//! to N times its limit.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::manifest::RateLimitSpec;

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
        let burst = f64::from(
            limit
                .burst
                .unwrap_or(limit.per_second.ceil().max(1.0) as u32),
        );
        let mut buckets = self.buckets.lock().expect("buckets lock");
        let b = buckets.entry(flow_id.to_string()).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * limit.per_second;
        b.tokens = (b.tokens + refill).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / limit.per_second))
        }
    }
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
}
