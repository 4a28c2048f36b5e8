//! What the trigger routes need from a flow's manifest (its rate limit and delivery timeout),
//! parsed once per manifest text instead of on every trigger: parsing and validating the YAML
//! was a large share of a webhook's CPU time.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher as _};
use std::sync::Mutex;
use std::time::Duration;

use crate::locking::lock;
use crate::manifest::{Manifest, RateLimitSpec, DEFAULT_DELIVERY_TIMEOUT, DEFAULT_RATE_LIMIT};

/// A flow's trigger settings, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TriggerSettings {
    pub rate_limit: RateLimitSpec,
    pub delivery_timeout: Duration,
}

impl TriggerSettings {
    /// A stored manifest that no longer parses (written by an older version, say) gets the
    /// defaults, as it did before this cache existed.
    fn parse(manifest: &str) -> TriggerSettings {
        let m = Manifest::parse(manifest).ok();
        TriggerSettings {
            rate_limit: m
                .as_ref()
                .and_then(|m| m.rate_limit)
                .unwrap_or(DEFAULT_RATE_LIMIT),
            delivery_timeout: m
                .as_ref()
                .and_then(|m| m.delivery_timeout().ok())
                .unwrap_or(DEFAULT_DELIVERY_TIMEOUT)
                .max(Duration::from_secs(1)),
        }
    }
}

/// Settings by flow id, each with a hash of the manifest text it was parsed from: a flow whose
/// manifest was replaced (on this replica or another) is parsed again at its next trigger, so
/// nothing has to tell the cache.
#[derive(Default)]
pub struct TriggerSettingsCache {
    by_flow: Mutex<HashMap<String, (u64, TriggerSettings)>>,
}

fn text_hash(text: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut h);
    h.finish()
}

impl TriggerSettingsCache {
    pub fn get(&self, flow_id: &str, manifest: &str) -> TriggerSettings {
        let key = text_hash(manifest);
        if let Some((k, s)) = lock(&self.by_flow).get(flow_id) {
            if *k == key {
                return *s;
            }
        }
        // Parsed outside the lock, so one slow parse does not hold up other flows' triggers.
        let settings = TriggerSettings::parse(manifest);
        lock(&self.by_flow).insert(flow_id.to_string(), (key, settings));
        settings
    }

    /// Drops a deleted flow's entry.
    pub fn forget(&self, flow_id: &str) {
        lock(&self.by_flow).remove(flow_id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_manifest_is_read_again_and_defaults_fill_the_gaps() {
        let cache = TriggerSettingsCache::default();
        let plain = "name: a\nconfig: {}\n";
        assert_eq!(cache.get("f", plain).rate_limit, DEFAULT_RATE_LIMIT);
        assert_eq!(
            cache.get("f", plain).delivery_timeout,
            DEFAULT_DELIVERY_TIMEOUT
        );
        let limited =
            "name: a\ndeliveryTimeout: 5s\nrateLimit: {perSecond: 3, burst: 4}\nconfig: {}\n";
        let s = cache.get("f", limited);
        assert_eq!(s.rate_limit.per_second, 3.0);
        assert_eq!(s.rate_limit.burst, Some(4));
        assert_eq!(s.delivery_timeout, Duration::from_secs(5));
        cache.forget("f");
        assert_eq!(cache.get("f", plain).rate_limit, DEFAULT_RATE_LIMIT);
    }
}
