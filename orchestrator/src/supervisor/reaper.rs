//! Idle deadlines: when each running flow may be scaled to zero.
//!
//! Deadlines sit in an ordered set, so a reaper pass costs O(log n) per flow that is due and
//! nothing for the flows that are not: 10,000 quiet flows cost one look at the smallest key.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Clone, Copy)]
struct Armed {
    deadline: i64,
    timeout_ms: i64,
}

/// The idle deadlines of running flows.
#[derive(Debug, Default)]
pub struct Deadlines {
    by_time: BTreeSet<(i64, String)>,
    flows: HashMap<String, Armed>,
}

impl Deadlines {
    /// Starts (or restarts) a flow's idle clock at `now`.
    pub fn arm(&mut self, flow_id: &str, timeout_ms: i64, now: i64) {
        self.disarm(flow_id);
        let deadline = now + timeout_ms;
        self.by_time.insert((deadline, flow_id.to_string()));
        self.flows.insert(
            flow_id.to_string(),
            Armed {
                deadline,
                timeout_ms,
            },
        );
    }

    /// The flow did something at `at`: its deadline moves to `at + timeout` if that is later.
    pub fn touch(&mut self, flow_id: &str, at: i64) {
        let Some(armed) = self.flows.get(flow_id).copied() else {
            return;
        };
        let deadline = at + armed.timeout_ms;
        if deadline > armed.deadline {
            self.by_time.remove(&(armed.deadline, flow_id.to_string()));
            self.by_time.insert((deadline, flow_id.to_string()));
            self.flows
                .insert(flow_id.to_string(), Armed { deadline, ..armed });
        }
    }

    /// Forgets a flow (stopped, failed, scaled down).
    pub fn disarm(&mut self, flow_id: &str) {
        if let Some(armed) = self.flows.remove(flow_id) {
            self.by_time.remove(&(armed.deadline, flow_id.to_string()));
        }
    }

    /// Removes and returns the flows whose deadline is at or before `now`, earliest first.
    /// The caller re-arms those that turn out to be busy.
    pub fn pop_due(&mut self, now: i64) -> Vec<(String, i64)> {
        let mut due = Vec::new();
        while let Some((deadline, _)) = self.by_time.first() {
            if *deadline > now {
                break;
            }
            let (_, flow_id) = self.by_time.pop_first().expect("checked above");
            if let Some(armed) = self.flows.remove(&flow_id) {
                due.push((flow_id, armed.timeout_ms));
            }
        }
        due
    }

    pub fn is_armed(&self, flow_id: &str) -> bool {
        self.flows.contains_key(flow_id)
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_fall_due_in_deadline_order_and_activity_pushes_them_back() {
        let mut d = Deadlines::default();
        d.arm("a", 1_000, 0);
        d.arm("b", 500, 0);
        d.arm("c", 5_000, 0);
        d.touch("a", 900); // a is now due at 1900
        assert!(d.pop_due(400).is_empty());
        assert_eq!(d.pop_due(1_000), vec![("b".to_string(), 500)]);
        assert_eq!(d.pop_due(2_000), vec![("a".to_string(), 1_000)]);
        d.disarm("c");
        assert!(d.pop_due(10_000).is_empty());
        assert!(d.is_empty());
    }

    #[test]
    fn touching_never_moves_a_deadline_earlier_and_rearming_replaces_it() {
        let mut d = Deadlines::default();
        d.arm("a", 1_000, 5_000);
        d.touch("a", 0);
        assert!(d.pop_due(5_999).is_empty());
        d.arm("a", 10, 0);
        assert_eq!(d.len(), 1);
        assert_eq!(d.pop_due(10).len(), 1);
    }
}
