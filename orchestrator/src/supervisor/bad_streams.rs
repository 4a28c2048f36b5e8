//! A flow whose events stream cannot be read any more: its pump (or something holding its
//! credentials) deleted the stream too often or put another type of key in its place. The
//! leader's reader leaves the stream out of its reads ([`crate::bus::Bus::consume_events`]), so
//! the other flows' events are read as before; this puts the flow itself in `error`, naming the
//! stream, since nothing its pump reports can be read. Its next start makes the stream again.

use std::sync::Arc;
use std::time::Duration;

use super::{Supervisor, SupervisorError};
use crate::bus::BadStream;
use crate::store::{status, Transition};

/// How long the pump gets to end on SIGTERM: nothing it reports can be read anyway.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl Supervisor {
    /// The reader isolated the flow's events stream: the flow goes to `error` with the reason,
    /// its pump is stopped and its Redis user removed, and its triggers fail.
    pub(super) async fn events_stream_isolated(self: Arc<Self>, bad: BadStream) {
        if let Err(e) = self.fail_unreadable(&bad).await {
            // The flow stays up with nobody reading its events; the liveness check stops its
            // pump as hung, and the restart makes the stream again.
            tracing::warn!(flow_id = %bad.flow_id, stream = %bad.stream, error = %e, "putting a flow whose events stream cannot be read in error failed");
        }
    }

    async fn fail_unreadable(&self, bad: &BadStream) -> Result<(), SupervisorError> {
        let lock = self.flow_locks.get(&bad.flow_id);
        let _serial = lock.lock().await;
        // A start may have made the stream again while the lock was waited for.
        if !self.dispatcher.bus().is_isolated(&bad.stream) {
            return Ok(());
        }
        let Some(flow) = self.store.get_flow(&bad.flow_id).await? else {
            return Ok(());
        };
        // An idle flow's stream is made again by its wake; a stopped one's by its start.
        if !matches!(flow.status.as_str(), status::RUNNING | status::STARTING) {
            return Ok(());
        }
        let reason = format!(
            "the flow's pump events cannot be read: {}; the pump was stopped, and `pumphouse flow start {}` makes the stream again",
            bad.reason, flow.name
        );
        let mut t = Transition::new(status::ERROR, &reason, "supervisor");
        t.only_instance = flow.instance_id.as_deref();
        t.fence = self.fence();
        if !self.store.transition(&flow.id, t).await? {
            return Ok(());
        }
        tracing::warn!(flow_id = %flow.id, flow = %flow.name, stream = %bad.stream, "flow put in error: its events stream cannot be read");
        self.forget(&flow.id);
        // First, so the pump loses Redis at once (deleting the user closes its connections).
        self.revoke_pump_user(&flow.id).await;
        if let Err(e) = self.backend.stop(&flow.id, STOP_GRACE).await {
            tracing::warn!(flow_id = %flow.id, error = %e, "stopping the pump failed; the next resync stops it");
        }
        let failed = format!("the flow's pump events cannot be read: {}", bad.reason);
        self.dispatcher.fail_flow(&flow.id, &failed).await?;
        self.store.fail_unfinished(&flow.id, &failed).await?;
        Ok(())
    }
}
