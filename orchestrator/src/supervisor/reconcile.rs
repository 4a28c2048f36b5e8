//! The reconcile loop: what the store wants against what the backend runs.
//!
//! Backend events drive the supervisor; this loop is what catches the events it missed (an
//! events stream that was down, an orchestrator that was not running) and what adopts pumps
//! after a restart. Each step is idempotent and holds the flow's lock, so a flow is never
//! reconciled twice at once, nor while its exit is being handled.
//!
//! | store says | backend has | step |
//! | --- | --- | --- |
//! | no such flow | a pump | remove it (an orphan) |
//! | `stopped`, `error` | a live pump | stop it |
//! | `idle` | a live pump | park it |
//! | `running` | the flow's live pump | adopt it: open its gate, arm its idle clock |
//! | `running` | another or no live pump | the pump is gone: re-queue, restart with back-off |
//! | `starting` | the flow's pump, exited | it failed to start: `error` |

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::{stop_grace, Supervisor, SupervisorError};
use crate::backend::PumpState;
use crate::store::{now_ms, status};

/// What one reconcile step did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Nothing,
    RemovedOrphan,
    StoppedUnwanted,
    Parked,
    Adopted,
    PumpGone,
}

impl Supervisor {
    /// One reconcile step for one flow (see the module's table).
    ///
    /// # Errors
    /// A store or backend failure; the step can simply be run again.
    pub async fn reconcile(self: &Arc<Self>, flow_id: &str) -> Result<Step, SupervisorError> {
        let lock = self.flow_locks.get(flow_id);
        let _serial = lock.lock().await;
        let flow = self.store.get_flow(flow_id).await?;
        let pump = self.backend.inspect(flow_id).await?;
        let Some(flow) = flow else {
            if pump.is_some() {
                tracing::warn!(flow_id, "removing a pump whose flow does not exist");
                self.backend.stop(flow_id, Duration::from_secs(5)).await?;
                self.revoke_pump_user(flow_id).await;
                return Ok(Step::RemovedOrphan);
            }
            return Ok(Step::Nothing);
        };
        let live = pump
            .as_ref()
            .filter(|p| matches!(p.state, PumpState::Running | PumpState::Starting));
        let ours = |p: &&crate::backend::PumpStatus| p.instance_id == flow.instance_id;
        match flow.status.as_str() {
            status::STOPPED | status::ERROR if live.is_some() => {
                tracing::info!(flow_id, flow = %flow.name, status = %flow.status, "stopping a pump its flow does not want");
                self.backend.stop(flow_id, stop_grace(&flow)).await?;
                self.revoke_pump_user(flow_id).await;
                Ok(Step::StoppedUnwanted)
            }
            status::IDLE if live.is_some() => {
                self.backend.park(flow_id, stop_grace(&flow)).await?;
                self.disable_pump_user(flow_id).await;
                Ok(Step::Parked)
            }
            status::RUNNING => match (live.filter(ours), flow.instance_id.as_deref()) {
                (Some(_), _) => {
                    if !flow.keep_alive
                        && !self.deadlines.lock().expect("deadlines").is_armed(flow_id)
                    {
                        self.deadlines.lock().expect("deadlines").arm(
                            flow_id,
                            flow.idle_timeout_ms,
                            now_ms(),
                        );
                    }
                    self.dispatcher.open(flow_id).await;
                    Ok(Step::Adopted)
                }
                (None, Some(instance_id)) => {
                    let how = match pump.as_ref().map(|p| &p.state) {
                        Some(PumpState::Exited { code, oom })
                            if pump.as_ref().is_some_and(|p| ours(&p)) =>
                        {
                            format!(
                                "exited {{when}} with {}{}",
                                code.map_or("an unknown code".to_string(), |c| format!("code {c}")),
                                if *oom {
                                    " (killed for exceeding its memory limit)"
                                } else {
                                    ""
                                }
                            )
                        }
                        _ => "is gone from the backend ({when})".to_string(),
                    };
                    self.pump_gone(flow_id, instance_id, &how).await?;
                    Ok(Step::PumpGone)
                }
                (None, None) => Ok(Step::Nothing),
            },
            status::STARTING => match (&pump, flow.instance_id.as_deref()) {
                (Some(p), Some(instance_id))
                    if p.instance_id.as_deref() == Some(instance_id)
                        && matches!(p.state, PumpState::Exited { .. }) =>
                {
                    let PumpState::Exited { code, oom } = p.state else {
                        return Ok(Step::Nothing);
                    };
                    let how = format!(
                        "exited {{when}} with {}{}",
                        code.map_or("an unknown code".to_string(), |c| format!("code {c}")),
                        if oom {
                            " (killed for exceeding its memory limit)"
                        } else {
                            ""
                        }
                    );
                    self.pump_gone(flow_id, instance_id, &how).await?;
                    Ok(Step::PumpGone)
                }
                _ => Ok(Step::Nothing),
            },
            _ => Ok(Step::Nothing),
        }
    }

    /// Reconciles every flow that wants a pump and every pump the backend runs for us.
    /// Returns how many steps did something.
    pub async fn resync(self: &Arc<Self>) -> Result<usize, SupervisorError> {
        let mut ids: BTreeSet<String> = self
            .store
            .flows_wanted_running()
            .await?
            .into_iter()
            .map(|f| f.id)
            .collect();
        ids.extend(self.backend.list().await?.into_iter().map(|p| p.flow_id));
        let mut acted = 0;
        for id in ids {
            match self.reconcile(&id).await {
                Ok(Step::Nothing) => {}
                Ok(step) => {
                    tracing::info!(flow_id = %id, ?step, "reconciled");
                    acted += 1;
                }
                Err(e) => {
                    tracing::warn!(flow_id = %id, error = %e, "reconciling failed; the next resync retries")
                }
            }
        }
        Ok(acted)
    }
}
