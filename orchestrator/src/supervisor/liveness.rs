//! Liveness: when each running pump was last heard from, to find pumps that are up but hung.
//!
//! A pump can keep running and stop working: its Redis connection wedged, a step deadlocked.
//! The backend sees nothing wrong, so the only sign is silence on the events stream. Silence
//! is measured against how far the leader has read the streams, not against the clock, and
//! only from when reading last resumed after a gap ([`crate::bus::Bus::read_window`]): while
//! Redis or the store is away, the reader lags, or another replica leads, nobody is silent,
//! and after it every pump has the whole limit to be heard again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use super::{human_ms, Supervisor, SupervisorError};
use crate::locking::lock;
use crate::store::{now_ms, status};

/// How long a hung pump gets to end on SIGTERM before it is killed: it is hung, after all.
const HUNG_STOP_GRACE: Duration = Duration::from_secs(2);

/// The last sign of life of each running pump.
#[derive(Debug, Default)]
pub struct Liveness {
    last: HashMap<String, Sign>,
}

#[derive(Debug, Clone)]
struct Sign {
    instance_id: String,
    at: i64,
}

/// A pump that has been silent too long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silent {
    pub flow_id: String,
    pub instance_id: String,
    /// For how long, by the reader's horizon.
    pub for_ms: i64,
}

impl Liveness {
    /// The pump `instance_id` of the flow said something at `at`. Only the watched instance
    /// counts: a previous pump still draining says nothing about the current one.
    pub fn heard(&mut self, flow_id: &str, instance_id: &str, at: i64) {
        if let Some(s) = self.last.get_mut(flow_id) {
            if s.instance_id == instance_id {
                s.at = s.at.max(at);
            }
        }
    }

    /// The flow's pump `instance_id` runs (it reported ready, or was adopted), and from `now`
    /// on it is expected to speak; watching the same instance again changes nothing.
    pub fn watch(&mut self, flow_id: &str, instance_id: &str, now: i64) {
        if self
            .last
            .get(flow_id)
            .is_none_or(|s| s.instance_id != instance_id)
        {
            self.last.insert(
                flow_id.to_string(),
                Sign {
                    instance_id: instance_id.to_string(),
                    at: now,
                },
            );
        }
    }

    /// The flow's pump is no longer expected to speak (stopped, parked, gone).
    pub fn forget(&mut self, flow_id: &str) {
        self.last.remove(flow_id);
    }

    /// Whether the flow's pump `instance_id` is still silent past `limit_ms` (see `silent`).
    pub fn is_silent(
        &self,
        flow_id: &str,
        instance_id: &str,
        window: (i64, i64),
        limit_ms: i64,
    ) -> bool {
        self.last
            .get(flow_id)
            .is_some_and(|s| s.instance_id == instance_id && s.is_silent(window, limit_ms))
    }

    /// Pumps not heard from for more than `limit_ms` of the reading `window`: `(since,
    /// horizon)`, everything pumps wrote before `horizon` read, without a gap since `since`.
    pub fn silent(&self, window: (i64, i64), limit_ms: i64) -> Vec<Silent> {
        self.last
            .iter()
            .filter(|(_, s)| s.is_silent(window, limit_ms))
            .map(|(flow_id, s)| Silent {
                flow_id: flow_id.clone(),
                instance_id: s.instance_id.clone(),
                for_ms: window.1 - s.at,
            })
            .collect()
    }

    /// Forgets every pump: a new term watches them from its own start.
    pub fn clear(&mut self) {
        self.last.clear();
    }
}

impl Sign {
    fn is_silent(&self, (since, horizon): (i64, i64), limit_ms: i64) -> bool {
        horizon - self.at.max(since) > limit_ms
    }
}

impl Supervisor {
    /// How long a running pump may stay silent before it counts as hung: six heartbeats, and
    /// never under 10 s, so one late heartbeat on a busy machine restarts nothing.
    pub fn liveness_limit(&self) -> Duration {
        (self.settings.heartbeat * 6).max(Duration::from_secs(10))
    }

    /// Forgets what an earlier term heard: this term watches each pump from its adoption.
    pub fn reset_liveness(&self) {
        lock(&self.liveness).clear();
    }

    /// Stops every running pump silent past the limit and handles it as a crash: what it held
    /// goes to the next pump, and the back-off and crash-loop limit apply.
    pub async fn check_liveness(self: &Arc<Self>) {
        let window = self.dispatcher.bus().read_window();
        let limit = self.liveness_limit().as_millis() as i64;
        let silent = lock(&self.liveness).silent(window, limit);
        for s in silent {
            if let Err(e) = self.stop_hung(&s, window, limit).await {
                tracing::warn!(flow_id = %s.flow_id, error = %e, "stopping a hung pump failed; trying again at the next check");
            }
        }
    }

    async fn stop_hung(
        self: &Arc<Self>,
        s: &Silent,
        window: (i64, i64),
        limit: i64,
    ) -> Result<(), SupervisorError> {
        let flow_lock = self.flow_locks.get(&s.flow_id);
        let _serial = flow_lock.lock().await;
        // It may have spoken, or been stopped, while the lock was waited for.
        if !lock(&self.liveness).is_silent(&s.flow_id, &s.instance_id, window, limit) {
            return Ok(());
        }
        let flow = self.store.get_flow(&s.flow_id).await?;
        let current = flow.as_ref().filter(|f| f.status == status::RUNNING);
        match current.and_then(|f| f.instance_id.as_deref()) {
            Some(instance_id) if instance_id == s.instance_id => {}
            // Another pump's turn now: it is watched from now on, on its own clock.
            Some(instance_id) => {
                lock(&self.liveness).watch(&s.flow_id, instance_id, now_ms());
                return Ok(());
            }
            None => {
                lock(&self.liveness).forget(&s.flow_id);
                return Ok(());
            }
        }
        let flow = current.expect("matched above");
        tracing::warn!(flow_id = %flow.id, flow = %flow.name, instance_id = %s.instance_id, silent_for = %human_ms(s.for_ms), "a running pump sent no heartbeat; stopping it to start another");
        self.backend.stop(&s.flow_id, HUNG_STOP_GRACE).await?;
        let how = format!(
            "sent no heartbeat for {}, so it was stopped as hung",
            human_ms(s.for_ms)
        );
        self.pump_gone(&s.flow_id, &s.instance_id, &how, None)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_counts_up_to_the_readers_horizon_not_the_clock() {
        let mut l = Liveness::default();
        l.watch("a", "i1", 1_000);
        l.watch("b", "j1", 1_000);
        // The reader stalled at 5 s: whatever the clock says, nobody is silent for 10 s.
        assert!(l.silent((0, 5_000), 10_000).is_empty());
        l.heard("b", "j1", 9_000);
        assert_eq!(
            l.silent((0, 12_000), 10_000),
            vec![Silent {
                flow_id: "a".into(),
                instance_id: "i1".into(),
                for_ms: 11_000
            }]
        );
        assert!(l.is_silent("a", "i1", (0, 12_000), 10_000));
        assert!(!l.is_silent("a", "other", (0, 12_000), 10_000));
    }

    #[test]
    fn after_a_gap_in_reading_every_pump_has_the_whole_limit_again() {
        let mut l = Liveness::default();
        l.watch("a", "i1", 1_000);
        // Redis was away from 2 s to 30 s; reading resumed at 30 s and has caught up to 35 s.
        assert!(l.silent((30_000, 35_000), 10_000).is_empty());
        // Still nothing from it 10 s after reading resumed: now it is silent.
        assert_eq!(l.silent((30_000, 40_500), 10_000)[0].for_ms, 39_500);
        l.clear();
        assert!(l.silent((30_000, 90_000), 10_000).is_empty());
    }

    #[test]
    fn watching_again_keeps_the_clock_and_a_new_instance_restarts_it() {
        let mut l = Liveness::default();
        l.watch("a", "i1", 1_000);
        l.watch("a", "i1", 50_000);
        assert_eq!(
            l.silent((0, 20_000), 10_000).len(),
            1,
            "a resync does not reset it"
        );
        l.watch("a", "i2", 50_000);
        assert!(
            l.silent((0, 55_000), 10_000).is_empty(),
            "a new pump gets its own time"
        );
        l.heard("a", "i1", 58_000);
        assert_eq!(
            l.silent((0, 61_000), 10_000).len(),
            1,
            "the previous pump speaks for nobody"
        );
        l.heard("a", "i2", 58_000);
        assert!(l.silent((0, 61_000), 10_000).is_empty());
        l.forget("a");
        assert!(l.silent((0, 100_000), 10_000).is_empty());
    }
}
