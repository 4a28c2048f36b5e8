//! Flows read recently, for the webhook path: at thousands of webhooks a second, reading the
//! whole flow row for each one was the store's busiest statement.
//!
//! Every write to a flow through this replica's [`crate::store::Store`] empties the cache
//! (writes to flows are rare next to webhooks), so this replica never answers from a row older
//! than its own last write. Writes by other replicas are seen once an entry is older than the
//! caller's `max_age`. A read that raced a write is not kept: each write bumps a generation, and
//! a row read under an older generation is returned but not cached.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::locking::lock;
use crate::store::FlowRecord;

/// Past this many entries, expired ones are dropped when another is added.
const PRUNE_ABOVE: usize = 1024;

#[derive(Default)]
pub struct FlowCache {
    generation: AtomicU64,
    entries: Mutex<HashMap<String, (Instant, Arc<FlowRecord>)>>,
}

impl FlowCache {
    /// The flow as read within `max_age`, if any.
    pub fn get(&self, id: &str, max_age: Duration) -> Option<Arc<FlowRecord>> {
        let entries = lock(&self.entries);
        entries
            .get(id)
            .filter(|(at, _)| at.elapsed() <= max_age)
            .map(|(_, flow)| flow.clone())
    }

    /// Where a read starts: pass it to [`FlowCache::put`] with what the read found.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Keeps `flow`, read under `generation`, unless a flow was written since.
    pub fn put(&self, generation: u64, flow: Arc<FlowRecord>, max_age: Duration) {
        let mut entries = lock(&self.entries);
        // Checked under the lock that `changed` clears under, so a write cannot slip between.
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if entries.len() > PRUNE_ABOVE {
            entries.retain(|_, (at, _)| at.elapsed() <= max_age);
        }
        entries.insert(flow.id.clone(), (Instant::now(), flow));
    }

    /// A flow was written: forget everything read before.
    pub fn changed(&self) {
        let mut entries = lock(&self.entries);
        self.generation.fetch_add(1, Ordering::SeqCst);
        entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(id: &str, status: &str) -> Arc<FlowRecord> {
        Arc::new(FlowRecord::for_test(id, status))
    }

    #[test]
    fn a_read_is_kept_until_a_write_or_its_age_runs_out() {
        let cache = FlowCache::default();
        let long = Duration::from_secs(60);
        cache.put(cache.generation(), flow("a", "running"), long);
        assert_eq!(cache.get("a", long).unwrap().status, "running");
        assert!(
            cache.get("a", Duration::ZERO).is_none(),
            "older than max_age"
        );
        cache.changed();
        assert!(cache.get("a", long).is_none(), "a write empties the cache");
    }

    #[test]
    fn a_read_that_raced_a_write_is_not_kept() {
        let cache = FlowCache::default();
        let long = Duration::from_secs(60);
        let before = cache.generation();
        // The write commits while the read is in flight...
        cache.changed();
        // ...so what the read found may be older than the write: not kept.
        cache.put(before, flow("a", "running"), long);
        assert!(cache.get("a", long).is_none());
        cache.put(cache.generation(), flow("a", "stopped"), long);
        assert_eq!(cache.get("a", long).unwrap().status, "stopped");
    }
}
