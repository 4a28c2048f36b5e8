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
//! | `running` | the flow's live pump, edited outside pumphouse | start the flow's spec again |
//! | `running` | the flow's live pump | adopt it: open its gate, arm its idle clock |
//! | `running` | another or no live pump | the pump is gone: re-queue, restart with back-off |
//! | `starting` | the flow's pump, exited | it failed to start: `error` |
//! | `starting`, well past the start timeout | no pump of its instance running | its launch was abandoned (the replica launching it died): launch it again |

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use super::{exited, stop_grace, Supervisor, SupervisorError};
use crate::backend::{PumpState, PumpStatus};
use crate::locking::lock;
use crate::store::{now_ms, status, FlowRecord, Transition};

/// Whether a flow and its pump, as read at the start of a resync, already agree: then the
/// resync skips the flow's reconcile step (a store read and a backend inspect each) rather than
/// confirm it. A flow at zero with no live pump, the common case with many flows, is one.
/// Anything else gets the step, which looks again under the flow's lock before acting.
fn settled(flow: &FlowRecord, pump: Option<&PumpStatus>, gate_open: bool, armed: bool) -> bool {
    let live = pump.filter(|p| matches!(p.state, PumpState::Running | PumpState::Starting));
    match flow.status.as_str() {
        status::IDLE | status::STOPPED | status::ERROR => live.is_none(),
        // Adopted already: its gate is open and, unless kept alive, its idle clock runs.
        status::RUNNING => live.is_some_and(|p| {
            !p.drifted
                && p.instance_id.is_some()
                && p.instance_id == flow.instance_id
                && gate_open
                && (flow.keep_alive || armed)
        }),
        // `starting` among them: few flows are starting at once, and an abandoned start needs
        // the step's clock.
        _ => false,
    }
}

/// What one reconcile step did, for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Nothing,
    RemovedOrphan,
    StoppedUnwanted,
    Parked,
    Adopted,
    PumpGone,
    Relaunched,
    PutBack,
}

impl Supervisor {
    /// One reconcile step for one flow (see the module's table).
    ///
    /// # Errors
    /// A store or backend failure; the step can simply be run again.
    pub async fn reconcile(self: &Arc<Self>, flow_id: &str) -> Result<Step, SupervisorError> {
        let flow_lock = self.flow_locks.get(flow_id);
        let _serial = flow_lock.lock().await;
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
                (Some(p), Some(instance_id)) if p.drifted => {
                    self.put_back(&flow, instance_id).await?;
                    Ok(Step::PutBack)
                }
                (Some(_), instance_id) => {
                    self.metrics.seen_flow(flow_id);
                    if let Some(instance_id) = instance_id {
                        lock(&self.liveness).watch(flow_id, instance_id, now_ms());
                    }
                    if !flow.keep_alive && !lock(&self.deadlines).is_armed(flow_id) {
                        lock(&self.deadlines).arm(flow_id, flow.idle_timeout_ms, now_ms());
                    }
                    self.dispatcher.open(flow_id).await;
                    Ok(Step::Adopted)
                }
                (None, Some(instance_id)) => {
                    let (how, code) = match pump.as_ref().map(|p| &p.state) {
                        Some(PumpState::Exited { code, oom })
                            if pump.as_ref().is_some_and(|p| ours(&p)) =>
                        {
                            (exited(*code, *oom), *code)
                        }
                        _ => ("is gone from the backend ({when})".to_string(), None),
                    };
                    self.pump_gone(flow_id, instance_id, &how, code).await?;
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
                    self.pump_gone(flow_id, instance_id, &exited(code, oom), code)
                        .await?;
                    Ok(Step::PumpGone)
                }
                (_, Some(instance_id))
                    if !pump.as_ref().is_some_and(|p| {
                        p.instance_id.as_deref() == Some(instance_id)
                            && p.state == PumpState::Running
                    }) && now_ms() - flow.updated_at > self.abandoned_after_ms()
                        && !self.start_in_hand(flow_id) =>
                {
                    // A live launcher would have started the pump, or failed the start at its
                    // timeout, by now: the replica launching it is gone (killed between the
                    // `starting` change and the pump's start, or during a restart's back-off).
                    tracing::warn!(flow_id, flow = %flow.name, instance_id, "a start was abandoned; launching the pump again");
                    let this = self.clone();
                    let instance_id = instance_id.to_string();
                    // After this step releases the flow's lock, which the launch takes.
                    tokio::spawn(async move {
                        if let Err(e) = this.launch(&flow, &instance_id).await {
                            tracing::warn!(flow_id = %flow.id, error = %e, "relaunching an abandoned start failed");
                        }
                    });
                    Ok(Step::Relaunched)
                }
                _ => Ok(Step::Nothing),
            },
            _ => Ok(Step::Nothing),
        }
    }

    /// The flow's pump was changed outside pumphouse (a Deployment edited by hand: another
    /// image, more memory): the flow's own spec is launched again, same instance, as a wake
    /// launches it, so what the pump runs is what the flow says, and the status says why.
    async fn put_back(
        self: &Arc<Self>,
        flow: &FlowRecord,
        instance_id: &str,
    ) -> Result<(), SupervisorError> {
        let reason = format!(
            "the pump's {} object was changed outside pumphouse; starting the flow's own spec again",
            self.backend.name()
        );
        tracing::warn!(flow_id = %flow.id, flow = %flow.name, instance_id, "{reason}");
        let mut t = Transition::new(status::STARTING, &reason, "supervisor");
        t.only_instance = Some(instance_id);
        t.only_status = Some(status::RUNNING);
        t.fence = self.fence();
        if !self.store.transition(&flow.id, t).await? {
            return Ok(());
        }
        self.dispatcher.close(&flow.id);
        let this = self.clone();
        let (flow, instance_id) = (flow.clone(), instance_id.to_string());
        // After this step releases the flow's lock, which the launch takes.
        tokio::spawn(async move {
            if let Err(e) = this.launch(&flow, &instance_id).await {
                tracing::warn!(flow_id = %flow.id, error = %e, "starting the flow's spec again failed");
            }
        });
        Ok(())
    }

    /// Reconciles every flow that wants a pump and every pump the backend runs for us.
    /// Returns how many steps did something.
    pub async fn resync(self: &Arc<Self>) -> Result<usize, SupervisorError> {
        let bus = self.dispatcher.bus();
        let since = bus.watched_generation();
        let wanted = self.store.flows_wanted_running().await?;
        // Events are read from the streams of flows whose pump runs or is starting.
        let live: Vec<(String, String)> = wanted
            .iter()
            .filter(|f| matches!(f.status.as_str(), status::RUNNING | status::STARTING))
            .map(|f| (f.tenant_id.clone(), f.id.clone()))
            .collect();
        bus.retain_watched(&live, since);
        let pumps: HashMap<String, PumpStatus> = self
            .backend
            .list()
            .await?
            .into_iter()
            .map(|p| (p.flow_id.clone(), p))
            .collect();
        let mut ids: BTreeSet<String> = BTreeSet::new();
        let mut known: BTreeSet<&str> = BTreeSet::new();
        for f in &wanted {
            known.insert(f.id.as_str());
            let armed = lock(&self.deadlines).is_armed(&f.id);
            if !settled(f, pumps.get(&f.id), self.dispatcher.is_open(&f.id), armed) {
                ids.insert(f.id.clone());
            }
        }
        // Pumps of flows that do not want one (or do not exist) always get a step.
        ids.extend(
            pumps
                .keys()
                .filter(|id| !known.contains(id.as_str()))
                .cloned(),
        );
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

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(status: &str, instance: Option<&str>, keep_alive: bool) -> FlowRecord {
        FlowRecord {
            keep_alive,
            instance_id: instance.map(str::to_string),
            ..FlowRecord::for_test("f", status)
        }
    }

    fn exited(code: i64) -> PumpState {
        PumpState::Exited {
            code: Some(code),
            oom: false,
        }
    }

    fn pump(instance: &str, state: PumpState) -> PumpStatus {
        PumpStatus {
            drifted: false,
            flow_id: "f".into(),
            instance_id: Some(instance.into()),
            state,
            pump_ref: "ref".into(),
        }
    }

    #[test]
    fn a_flow_at_zero_with_no_live_pump_is_skipped_and_one_with_a_live_pump_is_not() {
        let idle = flow(status::IDLE, Some("i1"), false);
        assert!(settled(&idle, None, false, false));
        let parked = pump("i1", exited(0));
        assert!(settled(&idle, Some(&parked), false, false));
        assert!(!settled(
            &idle,
            Some(&pump("i1", PumpState::Running)),
            false,
            false
        ));
    }

    #[test]
    fn a_running_flow_is_skipped_only_once_adopted() {
        let running = flow(status::RUNNING, Some("i1"), false);
        let ours = pump("i1", PumpState::Running);
        assert!(settled(&running, Some(&ours), true, true));
        assert!(
            !settled(&running, Some(&ours), false, true),
            "gate closed: adopt"
        );
        assert!(
            !settled(&running, Some(&ours), true, false),
            "idle clock not armed"
        );
        let kept = flow(status::RUNNING, Some("i1"), true);
        assert!(
            settled(&kept, Some(&ours), true, false),
            "keepAlive has no idle clock"
        );
        assert!(
            !settled(&running, Some(&pump("i2", PumpState::Running)), true, true),
            "another instance"
        );
        assert!(!settled(&running, None, true, true), "the pump is gone");
        assert!(!settled(&running, Some(&pump("i1", exited(1))), true, true));
    }

    #[test]
    fn a_starting_flow_always_gets_a_step() {
        let starting = flow(status::STARTING, Some("i1"), false);
        assert!(!settled(&starting, None, false, false));
        assert!(!settled(
            &starting,
            Some(&pump("i1", PumpState::Running)),
            false,
            false
        ));
    }

    #[test]
    fn a_stopped_flow_with_a_live_pump_gets_a_step() {
        let stopped = flow(status::STOPPED, None, false);
        assert!(!settled(
            &stopped,
            Some(&pump("i1", PumpState::Running)),
            false,
            false
        ));
        assert!(settled(&stopped, None, false, false));
    }
}
