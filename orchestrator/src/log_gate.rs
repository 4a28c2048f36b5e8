//! Rate-limited warnings: what an untrusted pump can make happen at will (a refused report, a
//! broken events stream) is logged at most once a period per flow, and counted in metrics, so
//! a pump cannot flood the orchestrator's log.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::locking::lock;

pub struct LogGate {
    period: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl LogGate {
    pub fn new(period: Duration) -> LogGate {
        LogGate {
            period,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line about `key` may be logged now; if so, the period starts again.
    pub fn allow(&self, key: &str) -> bool {
        self.allow_at(key, Instant::now())
    }

    fn allow_at(&self, key: &str, now: Instant) -> bool {
        let mut last = lock(&self.last);
        // Keys of flows long quiet are dropped, so the map stays as small as the noisy set.
        if last.len() > 1024 {
            let period = self.period;
            last.retain(|_, at| now.saturating_duration_since(*at) < period);
        }
        match last.get(key) {
            Some(at) if now.saturating_duration_since(*at) < self.period => false,
            _ => {
                last.insert(key.to_string(), now);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_period() {
        let gate = LogGate::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(gate.allow_at("a", t0));
        assert!(!gate.allow_at("a", t0 + Duration::from_secs(59)));
        assert!(gate.allow_at("b", t0), "keys are limited on their own");
        assert!(gate.allow_at("a", t0 + Duration::from_secs(60)));
    }
}
