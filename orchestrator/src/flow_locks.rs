//! One async lock per flow, made on first use: for work on a flow that must not overlap with
//! other work on the same flow, while different flows go on in parallel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::locking::lock;

#[derive(Default)]
pub struct FlowLocks(Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>);

impl FlowLocks {
    /// The flow's lock; hold its guard for as long as the work must not overlap.
    pub fn get(&self, flow_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.0)
            .entry(flow_id.to_string())
            .or_default()
            .clone()
    }
}
