//! Each pump's Redis user through the flow's life: a new password for every new pump, the user
//! switched off while the flow is parked, deleted when it stops, and every user created again
//! when Redis restarts (see [`crate::pump_users`] for what a user may do).
//!
//! The store is written before Redis, so a user in Redis always has its hashes in the store and
//! the leader's sync can tell a user to keep from one to delete.
//!
//! A parked Docker pump is started again with the environment it was created with, so on a
//! wake its old password must keep working; whether the backend restarts the parked pump or
//! makes a new one is known only after the start. So a launch that may restart a parked pump
//! allows both the old and the new password, and drops the one the pump does not hold as soon
//! as the backend answers.
//!
//! Changing a user's passwords leaves the connections signed in as it open, so a pump left
//! running by a killed orchestrator (or one that hung) would keep its subscription and run
//! every trigger beside its replacement. So each launch closes every connection of the flow's
//! user once the new password is set and before the new pump starts: none of them can be the
//! new pump's. That is right for a wake that may restart a parked pump too: a parked pump is
//! not running, so it holds no connection to lose. (The other way, a Redis user per instance,
//! would close them by deleting the old user, but would change the user's name on every start
//! while a woken Docker pump keeps the name it was created with, and would make the leader's
//! sync of users track instances; `CLIENT KILL USER` keeps one user per flow.)

use std::time::{Duration, Instant};

use super::{Supervisor, SupervisorError};
use crate::pump_users::Credential;
use crate::store::{status, FlowRecord};

impl Supervisor {
    /// Lets the pump about to be launched sign in with `credential`. Returns the hashes that
    /// were allowed before, also still allowed, when the backend may restart a parked pump
    /// that holds one of them.
    pub(super) async fn grant_launch(
        &self,
        flow: &FlowRecord,
        credential: &Credential,
    ) -> Result<Vec<String>, SupervisorError> {
        let previous = if self.backend.restarts_parked_pumps() {
            self.store
                .pump_credentials(&flow.id)
                .await?
                .map(|c| c.password_hashes)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut hashes = vec![credential.hash.clone()];
        hashes.extend(previous.iter().filter(|h| **h != credential.hash).cloned());
        match self.grant(&flow.id, &flow.tenant_id, &hashes, true).await {
            // The hashes are stored: the leader creates the user once Redis answers, and the
            // pump keeps retrying until then, as it would through any Redis outage.
            Err(SupervisorError::PumpUser(e)) if e.is_unreachable() => {
                tracing::warn!(flow_id = %flow.id, error = %e, "Redis is unreachable: the pump's Redis user is created when it is back");
            }
            Err(e) => return Err(e),
            // Earlier pumps lose their connections (see the module's doc); the new pump does
            // not exist yet. A refusal fails the launch rather than leave an old pump running
            // triggers beside the new one.
            Ok(()) => match self.pump_users.close_connections(&flow.id).await {
                Err(e) if e.is_unreachable() => {
                    tracing::warn!(flow_id = %flow.id, error = %e, "closing the Redis connections of the flow's earlier pumps failed: Redis is unreachable");
                }
                other => other?,
            },
        }
        Ok(previous)
    }

    /// Records `hashes` as the flow's passwords, then sets its user up with them.
    pub(super) async fn grant(
        &self,
        flow_id: &str,
        tenant_id: &str,
        hashes: &[String],
        enabled: bool,
    ) -> Result<(), SupervisorError> {
        self.store
            .set_redis_password_hashes(flow_id, hashes)
            .await?;
        self.pump_users
            .apply(tenant_id, flow_id, hashes, enabled)
            .await?;
        Ok(())
    }

    /// The flow was parked: its pump's password no longer signs in until the flow is woken,
    /// and what is still signed in is closed (switching a user off leaves its connections
    /// open; the parked pump holds none). A failure is logged; the leader's next sync of pump
    /// users repairs the user, and the wake closes the connections.
    pub(super) async fn disable_pump_user(&self, flow_id: &str) {
        let result = match self.store.pump_credentials(flow_id).await {
            Ok(Some(c)) => {
                let users = &self.pump_users;
                let off = users.apply(&c.tenant_id, flow_id, &c.password_hashes, false);
                match off.await {
                    Ok(()) => users.close_connections(flow_id).await,
                    Err(e) => Err(e),
                }
                .map_err(SupervisorError::from)
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e.into()),
        };
        if let Err(e) = result {
            tracing::warn!(flow_id, error = %e, "switching off a parked pump's Redis user failed; the next sync retries");
        }
    }

    /// The flow's pump is gone for good (stopped, failed, deleted): its user goes, and Redis
    /// closes the connections signed in as it. A failure is logged; the leader's next sync of
    /// pump users deletes users the store no longer knows.
    pub(super) async fn revoke_pump_user(&self, flow_id: &str) {
        if let Err(e) = self.store.set_redis_password_hashes(flow_id, &[]).await {
            tracing::warn!(flow_id, error = %e, "forgetting a pump's Redis password failed");
        }
        if let Err(e) = self.pump_users.delete(flow_id).await {
            tracing::warn!(flow_id, error = %e, "deleting a pump's Redis user failed; the next sync retries");
        }
    }

    /// Makes Redis's pump users match the store: every flow with a pump (or a parked one) has
    /// its user, on or off, and no other pump user exists. Returns how many users it set up.
    pub async fn sync_pump_users(&self) -> Result<usize, SupervisorError> {
        // Redis first: a user created after this read has its hashes stored already, so it
        // is never taken for a leftover below.
        let in_redis = self.pump_users.flows_with_users().await?;
        let wanted = self.store.all_pump_credentials().await?;
        let mut applied = 0;
        for c in &wanted {
            match c.status.as_str() {
                status::STARTING | status::RUNNING | status::IDLE => {
                    let enabled = c.status != status::IDLE;
                    self.pump_users
                        .apply(&c.tenant_id, &c.flow_id, &c.password_hashes, enabled)
                        .await?;
                    applied += 1;
                }
                _ => self.revoke_pump_user(&c.flow_id).await,
            }
        }
        for flow_id in in_redis {
            if !wanted.iter().any(|c| c.flow_id == flow_id) {
                self.pump_users.delete(&flow_id).await?;
            }
        }
        Ok(applied)
    }

    /// The leader's watch over pump users: syncs them at once, again whenever Redis restarted
    /// (its run id changed, and with it every user is gone), and every `resync_interval`.
    pub(super) async fn watch_pump_users(&self) {
        let mut synced: Option<(String, Instant)> = None;
        let mut failed = false;
        let mut every = tokio::time::interval(Duration::from_millis(250));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let Ok(run) = self.pump_users.server_run().await else {
                continue; // Redis is away; the run id says whether it restarted once it is back
            };
            let due = failed
                || self.pump_users.take_stale()
                || match &synced {
                    None => true,
                    Some((seen, at)) => {
                        *seen != run || at.elapsed() >= self.settings.resync_interval
                    }
                };
            if !due {
                continue;
            }
            let restarted = synced.as_ref().is_some_and(|(seen, _)| *seen != run);
            match self.sync_pump_users().await {
                Ok(n) => {
                    if restarted {
                        tracing::info!(
                            users = n,
                            "Redis restarted: created the pumps' Redis users again"
                        );
                    }
                    synced = Some((run, Instant::now()));
                    failed = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "syncing the pumps' Redis users failed; retrying in a second");
                    failed = true;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}
