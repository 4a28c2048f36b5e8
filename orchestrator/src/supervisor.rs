//! The supervisor: starts and stops pumps and turns what pumps and backends report into flow
//! and execution state.
//!
//! A start records the flow as `starting` with a fresh instance id *before* the backend starts
//! the pump, so every later report can be matched to the pump that sent it: a report from an
//! instance the flow no longer runs is ignored. A pump becomes `running` only on its own ready
//! signal; one that exits first, or stays silent past the start timeout, puts the flow in
//! `error` with the reason and the tail of its log.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use pumphouse_pump::{channels, env, PumpEvent};
use serde::Serialize;

use crate::backend::{Backend, BackendError, BackendEvent, PumpSpec};
use crate::dispatcher::Dispatcher;
use crate::manifest::{Manifest, ManifestError};
use crate::store::{self, now_ms, status, FlowRecord, Store, StoreError, Transition};

/// Lines of pump log quoted in an error reason.
const LOG_TAIL_IN_REASON: usize = 10;

/// How pumps are set up, from the orchestrator's configuration.
#[derive(Debug, Clone)]
pub struct PumpSettings {
    /// Image for flows whose manifest names none.
    pub default_image: String,
    /// `REDIS_URL` as pumps must see it (may differ from the orchestrator's own).
    pub redis_url: String,
    pub heartbeat: Duration,
    /// A pump silent for this long after its start puts the flow in `error`.
    pub start_timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SupervisorError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("the stored manifest of flow {flow_id} no longer parses: {source}; apply it again")]
    Manifest {
        flow_id: String,
        #[source]
        source: ManifestError,
    },
    #[error("flow {0} does not exist")]
    NotFound(String),
}

/// The last heartbeat of a flow's pump.
#[derive(Debug, Clone, Serialize)]
pub struct Heartbeat {
    pub instance_id: String,
    pub received_at: i64,
    pub in_flight: u32,
    pub last_activity_ms: i64,
    pub processed: u64,
}

pub struct Supervisor {
    store: Store,
    backend: Arc<dyn Backend>,
    dispatcher: Arc<Dispatcher>,
    settings: PumpSettings,
    heartbeats: Mutex<HashMap<String, Heartbeat>>,
}

impl Supervisor {
    pub fn new(
        store: Store,
        backend: Arc<dyn Backend>,
        dispatcher: Arc<Dispatcher>,
        settings: PumpSettings,
    ) -> Supervisor {
        Supervisor {
            store,
            backend,
            dispatcher,
            settings,
            heartbeats: Mutex::new(HashMap::new()),
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    pub fn heartbeat(&self, flow_id: &str) -> Option<Heartbeat> {
        self.heartbeats
            .lock()
            .expect("heartbeats lock")
            .get(flow_id)
            .cloned()
    }

    /// The environment a flow's pump gets: the contract's variables, then the flow's own.
    pub fn pump_env(
        &self,
        flow: &FlowRecord,
        manifest: &Manifest,
        instance_id: &str,
    ) -> BTreeMap<String, String> {
        let mut vars = manifest.env.clone();
        let config = base64::engine::general_purpose::STANDARD.encode(manifest.config_yaml());
        for (k, v) in [
            (env::FLOW_ID, flow.id.clone()),
            (env::TENANT_ID, flow.tenant_id.clone()),
            (env::INSTANCE_ID, instance_id.to_string()),
            (env::ORGANISM_YAML, config),
            (env::REDIS_URL, self.settings.redis_url.clone()),
            (
                env::TENANT_PREFIX,
                channels::tenant_prefix(&flow.tenant_id, &flow.id),
            ),
            (
                env::CONTRACT_VERSION,
                pumphouse_pump::CONTRACT_VERSION.to_string(),
            ),
            (
                env::HEARTBEAT_MS,
                self.settings.heartbeat.as_millis().to_string(),
            ),
        ] {
            vars.insert(k.to_string(), v);
        }
        vars
    }

    /// Starts the flow's pump (replacing any it had) and waits for nothing: the flow is
    /// `starting` until the pump reports ready.
    pub async fn start(
        self: &Arc<Self>,
        flow: &FlowRecord,
        actor: &str,
    ) -> Result<(), SupervisorError> {
        let manifest =
            Manifest::parse(&flow.manifest).map_err(|source| SupervisorError::Manifest {
                flow_id: flow.id.clone(),
                source,
            })?;
        let instance_id = uuid::Uuid::new_v4().to_string();
        let reason = format!("start requested by {actor}");
        let mut t = Transition::new(status::STARTING, &reason, actor);
        t.desired = Some("running");
        t.pump = Some((Some(&instance_id), None));
        if !self.store.transition(&flow.id, t).await? {
            return Err(SupervisorError::NotFound(flow.id.clone()));
        }
        let spec = PumpSpec {
            flow_id: flow.id.clone(),
            tenant_id: flow.tenant_id.clone(),
            instance_id: instance_id.clone(),
            flow_name: flow.name.clone(),
            image: Some(
                manifest
                    .image
                    .clone()
                    .unwrap_or_else(|| self.settings.default_image.clone()),
            ),
            env: self.pump_env(flow, &manifest, &instance_id),
            resources: manifest.resources().unwrap_or_default(),
            stop_grace: manifest
                .stop_grace()
                .unwrap_or(crate::manifest::DEFAULT_STOP_GRACE),
        };
        match self.backend.start(&spec).await {
            Ok(started) => {
                tracing::info!(flow_id = %flow.id, flow = %flow.name, instance_id, pump = %started.pump_ref, backend = self.backend.name(), "pump started");
                // Not a status change: the pump may already have reported ready.
                self.store
                    .set_pump_ref(&flow.id, &instance_id, &started.pump_ref)
                    .await?;
            }
            Err(e) => {
                let reason = format!("the backend could not start the pump: {e}");
                let mut t = Transition::new(status::ERROR, &reason, "supervisor");
                t.only_instance = Some(&instance_id);
                self.store.transition(&flow.id, t).await?;
                return Err(e.into());
            }
        }
        let this = self.clone();
        let flow_id = flow.id.clone();
        tokio::spawn(async move { this.watch_start(flow_id, instance_id).await });
        Ok(())
    }

    async fn watch_start(&self, flow_id: String, instance_id: String) {
        tokio::time::sleep(self.settings.start_timeout).await;
        let Ok(Some(flow)) = self.store.get_flow(&flow_id).await else {
            return;
        };
        if flow.status != status::STARTING || flow.instance_id.as_deref() != Some(&instance_id) {
            return;
        }
        let tail = self.log_tail(&flow_id).await;
        let reason = format!(
            "the pump did not report ready within {:?}; it is stopped{}",
            self.settings.start_timeout, tail
        );
        let mut t = Transition::new(status::ERROR, &reason, "supervisor");
        t.only_instance = Some(&instance_id);
        if let Err(e) = self.store.transition(&flow_id, t).await {
            tracing::warn!(flow_id, error = %e, "recording a start timeout failed");
        }
        if let Err(e) = self.backend.stop(&flow_id, Duration::from_secs(5)).await {
            tracing::warn!(flow_id, error = %e, "stopping a pump that never got ready failed");
        }
    }

    /// Stops the flow's pump; its unacknowledged triggers are marked failed.
    pub async fn stop(&self, flow: &FlowRecord, actor: &str) -> Result<(), SupervisorError> {
        let grace = Manifest::parse(&flow.manifest)
            .ok()
            .and_then(|m| m.stop_grace().ok())
            .unwrap_or(crate::manifest::DEFAULT_STOP_GRACE);
        let reason = format!("stop requested by {actor}");
        let mut t = Transition::new(status::STOPPED, &reason, actor);
        t.desired = Some("stopped");
        t.pump = Some((None, None));
        if !self.store.transition(&flow.id, t).await? {
            return Err(SupervisorError::NotFound(flow.id.clone()));
        }
        self.heartbeats
            .lock()
            .expect("heartbeats lock")
            .remove(&flow.id);
        self.backend.stop(&flow.id, grace).await?;
        self.dispatcher
            .fail_flow(
                &flow.id,
                "the flow was stopped before a pump acknowledged this trigger",
            )
            .await?;
        Ok(())
    }

    async fn log_tail(&self, flow_id: &str) -> String {
        match self.backend.logs(flow_id, LOG_TAIL_IN_REASON).await {
            Ok(lines) if !lines.is_empty() => format!("; last log lines:\n{}", lines.join("\n")),
            _ => String::new(),
        }
    }

    /// Applies one pump event to the store. Idempotent: events may be read twice.
    pub async fn apply_pump_event(&self, ev: PumpEvent) -> Result<(), StoreError> {
        let at = now_ms();
        match ev {
            PumpEvent::Ready {
                flow_id,
                instance_id,
                ..
            } => {
                let mut t = Transition::new(status::RUNNING, "pump reported ready", "pump");
                t.only_instance = Some(&instance_id);
                let flow = self.store.get_flow(&flow_id).await?;
                if flow.is_some_and(|f| f.status == status::STARTING) {
                    self.store.transition(&flow_id, t).await?;
                }
            }
            PumpEvent::Heartbeat {
                flow_id,
                instance_id,
                in_flight,
                last_activity_ms,
                processed,
            } => {
                self.heartbeats.lock().expect("heartbeats lock").insert(
                    flow_id,
                    Heartbeat {
                        instance_id,
                        received_at: at,
                        in_flight,
                        last_activity_ms,
                        processed,
                    },
                );
            }
            PumpEvent::Ack { trigger_id, .. } => {
                self.dispatcher.acknowledged(&trigger_id);
                self.store.mark_acked(&trigger_id, at).await?;
            }
            PumpEvent::Started { trigger_id, .. } => {
                self.dispatcher.acknowledged(&trigger_id);
                self.store.mark_running(&trigger_id, at).await?;
            }
            PumpEvent::Completed {
                trigger_id, output, ..
            } => {
                self.dispatcher.acknowledged(&trigger_id);
                self.store
                    .finish_execution(&trigger_id, Ok(&output.to_string()), at)
                    .await?;
            }
            PumpEvent::Failed {
                trigger_id, error, ..
            } => {
                self.dispatcher.acknowledged(&trigger_id);
                self.store
                    .finish_execution(&trigger_id, Err(&error), at)
                    .await?;
            }
            PumpEvent::Draining {
                flow_id, in_flight, ..
            } => {
                tracing::info!(flow_id, in_flight, "pump is draining");
            }
        }
        Ok(())
    }

    /// Applies one backend event: an exit the flow did not ask for puts it in `error`.
    pub async fn apply_backend_event(&self, ev: BackendEvent) -> Result<(), StoreError> {
        let BackendEvent::Exited {
            flow_id,
            instance_id,
            code,
            oom,
        } = ev;
        let Some(instance_id) = instance_id else {
            return Ok(());
        };
        let Some(flow) = self.store.get_flow(&flow_id).await? else {
            return Ok(());
        };
        if flow.instance_id.as_deref() != Some(&instance_id) || flow.desired_state != "running" {
            return Ok(());
        }
        let code_text = code.map_or("an unknown code".to_string(), |c| format!("code {c}"));
        let when = if flow.status == status::STARTING {
            "before it was ready"
        } else {
            "unexpectedly"
        };
        let oom_text = if oom {
            " (killed for exceeding its memory limit)"
        } else {
            ""
        };
        let tail = self.log_tail(&flow_id).await;
        let reason = format!("the pump exited {when} with {code_text}{oom_text}{tail}");
        tracing::warn!(flow_id, flow = %flow.name, ?code, oom, "pump exited");
        let mut t = Transition::new(status::ERROR, &reason, "supervisor");
        t.only_instance = Some(&instance_id);
        self.store.transition(&flow_id, t).await?;
        self.heartbeats
            .lock()
            .expect("heartbeats lock")
            .remove(&flow_id);
        Ok(())
    }

    /// Runs the loops: pump events, backend events and re-delivery. Returns only if the
    /// backend's event stream ends, which a backend never does on its own.
    pub async fn run(self: Arc<Self>, bus: crate::bus::Bus, consumer: String) {
        let events = {
            let this = self.clone();
            async move {
                bus.consume_events(&consumer, |ev| {
                    let this = this.clone();
                    async move {
                        if let Err(e) = this.apply_pump_event(ev).await {
                            tracing::warn!(error = %e, "applying a pump event failed");
                        }
                    }
                })
                .await
            }
        };
        let backend_events = {
            let this = self.clone();
            async move {
                let mut stream = this.backend.events();
                while let Some(ev) = stream.next().await {
                    if let Err(e) = this.apply_backend_event(ev).await {
                        tracing::warn!(error = %e, "applying a backend event failed");
                    }
                }
            }
        };
        let redelivery = {
            let this = self.clone();
            async move { this.dispatcher.run().await }
        };
        tokio::join!(events, backend_events, redelivery);
    }
}

/// The status of a flow as the API shows it.
#[derive(Debug, Serialize)]
pub struct FlowStatus {
    pub id: String,
    pub name: String,
    pub status: String,
    pub desired_state: String,
    pub reason: Option<String>,
    pub backend: &'static str,
    pub pump: Option<PumpView>,
    pub heartbeat: Option<Heartbeat>,
    pub events: Vec<store::FlowEvent>,
}

#[derive(Debug, Serialize)]
pub struct PumpView {
    pub pump_ref: String,
    pub instance_id: Option<String>,
    pub state: String,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

impl Supervisor {
    pub async fn status(&self, flow: &FlowRecord) -> Result<FlowStatus, SupervisorError> {
        let pump = self.backend.inspect(&flow.id).await?.map(|p| {
            let (state, exit_code, oom_killed) = match p.state {
                crate::backend::PumpState::Starting => ("starting", None, false),
                crate::backend::PumpState::Running => ("running", None, false),
                crate::backend::PumpState::Exited { code, oom } => ("exited", code, oom),
            };
            PumpView {
                pump_ref: p.pump_ref,
                instance_id: p.instance_id,
                state: state.to_string(),
                exit_code,
                oom_killed,
            }
        });
        Ok(FlowStatus {
            id: flow.id.clone(),
            name: flow.name.clone(),
            status: flow.status.clone(),
            desired_state: flow.desired_state.clone(),
            reason: flow.status_reason.clone(),
            backend: self.backend.name(),
            pump,
            heartbeat: self.heartbeat(&flow.id),
            events: self.store.flow_events(&flow.id, 20).await?,
        })
    }
}

impl Supervisor {
    /// At start-up: every flow that should run and whose pump is not running (as the same
    /// instance) is started again. A pump still running is left alone.
    pub async fn resume(self: &Arc<Self>) -> Result<usize, SupervisorError> {
        let mut started = 0;
        for flow in self.store.flows_wanted_running().await? {
            let pump = self.backend.inspect(&flow.id).await?;
            let alive = pump.is_some_and(|p| {
                p.instance_id == flow.instance_id
                    && matches!(
                        p.state,
                        crate::backend::PumpState::Running | crate::backend::PumpState::Starting
                    )
            });
            if alive || flow.status == status::ERROR {
                continue;
            }
            if let Err(e) = self.start(&flow, "supervisor").await {
                tracing::warn!(flow_id = %flow.id, error = %e, "restarting a flow at start-up failed");
            } else {
                started += 1;
            }
        }
        Ok(started)
    }
}
