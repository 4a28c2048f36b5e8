//! The supervisor: starts, wakes, scales down and stops pumps, and turns what pumps and
//! backends report into flow and execution state.
//!
//! A start records the flow as `starting` with a fresh instance id *before* the backend starts
//! the pump, so every later report can be matched to the pump that sent it: a report from an
//! instance the flow no longer runs is ignored. A pump becomes `running` only on its own ready
//! signal, which opens the flow's gate in the dispatcher. Idle pumps are stopped by the reaper
//! (flow `idle`); a trigger for an idle flow wakes it, once, however many arrive meanwhile.
//!
//! # Guarantees
//! - Only one caller wins a wake: the `idle -> starting` change is a compare-and-set in the store.
//! - A pump that dies holding triggers hands them back: they are re-queued for the next pump.
//! - A pump that exits before it is ready, or stays silent past the start timeout, puts the flow
//!   in `error` with the reason and its last log lines, and fails the triggers held for it.

mod bad_streams;
pub mod liveness;
pub mod reaper;
pub mod reconcile;
mod redis_users;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use pumphouse_pump::{channels, env, PumpEvent};
use serde::Serialize;

use crate::backend::{Backend, BackendError, BackendEvent, PumpSpec, PumpState};
use crate::dispatcher::{Dispatcher, Reports};
use crate::locking::lock;
use crate::manifest::{Manifest, ManifestError, DEFAULT_STOP_GRACE};
use crate::metrics::Metrics;
use crate::pump_users::{Credential, PumpUsers, PumpUsersError};
use crate::secrets::MasterKey;
use crate::store::{self, now_ms, status, FlowRecord, Store, StoreError, Transition};

/// Lines of pump log quoted in an error reason.
const LOG_TAIL_IN_REASON: usize = 10;

/// The exit code by which a pump says its config or environment cannot be used
/// (docs/pump-contract.md, "Exit codes"): restarting it would fail the same way.
const REFUSED_CONFIG: i64 = 2;

/// `exited {when} with code 3 (killed for exceeding its memory limit)`, for
/// [`Supervisor::pump_gone`].
pub(crate) fn exited(code: Option<i64>, oom: bool) -> String {
    format!(
        "exited {{when}} with {}{}",
        code.map_or("an unknown code".to_string(), |c| format!("code {c}")),
        if oom {
            " (killed for exceeding its memory limit)"
        } else {
            ""
        }
    )
}

/// How pumps are set up and looked after, from the orchestrator's configuration.
#[derive(Debug, Clone)]
pub struct PumpSettings {
    /// Image for flows whose manifest names none.
    pub default_image: String,
    /// Where pumps reach Redis (may differ from the orchestrator's own address). Each pump's
    /// `REDIS_URL` is this with the pump's own user and password in place of any credentials.
    pub redis_url: String,
    pub heartbeat: Duration,
    /// A pump silent for this long after its start (or wake) puts the flow in `error`.
    pub start_timeout: Duration,
    /// First wait before restarting a crashed pump; doubles with each crash in the window.
    pub restart_backoff: Duration,
    /// This many crashes within `crash_window` is a crash loop: the flow goes to `error`.
    pub crash_limit: usize,
    pub crash_window: Duration,
    /// How often every flow is reconciled, catching backend events that were missed.
    pub resync_interval: Duration,
    /// Opens the flows' secrets at each pump start; without it a flow with secrets cannot start.
    pub master_key: Option<Arc<MasterKey>>,
}

impl PumpSettings {
    pub fn new(default_image: &str, redis_url: &str) -> PumpSettings {
        PumpSettings {
            default_image: default_image.into(),
            redis_url: redis_url.into(),
            heartbeat: Duration::from_secs(5),
            start_timeout: Duration::from_secs(60),
            restart_backoff: Duration::from_millis(500),
            crash_limit: 5,
            crash_window: Duration::from_secs(120),
            resync_interval: Duration::from_secs(30),
            master_key: None,
        }
    }
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
    #[error(transparent)]
    PumpUser(#[from] PumpUsersError),
    #[error("the pump of flow {flow_id} cannot get its secrets: {reason}")]
    Secrets { flow_id: String, reason: String },
}

/// The last heartbeat of a flow's pump.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Heartbeat {
    pub instance_id: String,
    pub received_at: i64,
    pub in_flight: u32,
    pub last_activity_ms: i64,
    pub processed: u64,
}

/// A pump's environment, split as [`PumpSpec`] carries it.
pub struct PumpEnv {
    pub plain: BTreeMap<String, String>,
    pub secret: BTreeMap<String, String>,
}

pub struct Supervisor {
    store: Store,
    backend: Arc<dyn Backend>,
    dispatcher: Arc<Dispatcher>,
    settings: PumpSettings,
    heartbeats: Mutex<HashMap<String, Heartbeat>>,
    deadlines: Mutex<reaper::Deadlines>,
    /// Crash times per flow, for back-off and crash-loop detection.
    crashes: Mutex<HashMap<String, Vec<i64>>>,
    /// Counts launches and ready reports per flow, so a start timeout only fires for the
    /// launch that set it, and only until its pump reports ready: a woken pump keeps its
    /// instance id, and a wake may wait on a slow scale-down past the previous timer.
    launches: Mutex<HashMap<String, u64>>,
    /// One lock per flow: reconciles and exit handling of a flow never overlap.
    flow_locks: crate::flow_locks::FlowLocks,
    /// The lease fence this replica leads under (0: none).
    fence: AtomicI64,
    /// Whether this replica leads: only the leader launches, stops and parks pumps, so a
    /// process-backend pump is always a child of the leader and no two replicas race to start
    /// one. Other replicas record the change and ask the leader ([`Supervisor::take_request`]).
    leading: std::sync::atomic::AtomicBool,
    metrics: Arc<Metrics>,
    pump_users: PumpUsers,
    /// The flows whose memory and memory-limit series `sample_memory` exports now, so the
    /// series of pumps that went away are the only ones it drops.
    memory_series: Mutex<(HashSet<String>, HashSet<String>)>,
    /// When each flow's current start or wake began, for the cold-start histogram.
    launched_at: Mutex<HashMap<String, std::time::Instant>>,
    /// Flows whose crashed pump this replica will start again after a back-off.
    restarts_pending: Mutex<std::collections::HashSet<String>>,
    /// When each running pump was last heard from, to restart the hung ones.
    liveness: Mutex<liveness::Liveness>,
}

impl Supervisor {
    pub fn new(
        store: Store,
        backend: Arc<dyn Backend>,
        dispatcher: Arc<Dispatcher>,
        settings: PumpSettings,
        metrics: Arc<Metrics>,
        pump_users: PumpUsers,
    ) -> Supervisor {
        Supervisor {
            store,
            backend,
            dispatcher,
            settings,
            metrics,
            pump_users,
            launched_at: Mutex::new(HashMap::new()),
            memory_series: Mutex::default(),
            restarts_pending: Default::default(),
            liveness: Default::default(),
            heartbeats: Mutex::new(HashMap::new()),
            deadlines: Mutex::new(reaper::Deadlines::default()),
            crashes: Mutex::new(HashMap::new()),
            launches: Mutex::new(HashMap::new()),
            flow_locks: Default::default(),
            fence: AtomicI64::new(0),
            leading: Default::default(),
        }
    }

    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.backend
    }

    /// The key flow secrets are sealed with, when the server has one.
    pub fn master_key(&self) -> Option<&Arc<MasterKey>> {
        self.settings.master_key.as_ref()
    }

    pub fn heartbeat(&self, flow_id: &str) -> Option<Heartbeat> {
        lock(&self.heartbeats).get(flow_id).cloned()
    }

    /// The environment a flow's pump gets: the flow's own variables, then the contract's.
    /// `redis_url` carries the pump's own Redis user.
    pub fn pump_env(
        &self,
        flow: &FlowRecord,
        manifest: &Manifest,
        instance_id: &str,
        redis_url: String,
    ) -> PumpEnv {
        let mut vars = manifest.env.clone();
        let config = base64::engine::general_purpose::STANDARD.encode(manifest.config_yaml());
        let secret = BTreeMap::from([
            (env::ORGANISM_YAML.to_string(), config),
            (env::REDIS_URL.to_string(), redis_url),
        ]);
        for (k, v) in [
            (env::FLOW_ID, flow.id.clone()),
            (env::TENANT_ID, flow.tenant_id.clone()),
            (env::INSTANCE_ID, instance_id.to_string()),
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
        PumpEnv {
            plain: vars,
            secret,
        }
    }

    /// Starts the flow's pump on request, replacing any it had. The flow is `starting` until the
    /// pump reports ready. On a replica that does not lead, the start is recorded and the
    /// leader launches it.
    pub async fn start(
        self: &Arc<Self>,
        flow: &FlowRecord,
        actor: &str,
    ) -> Result<(), SupervisorError> {
        if !self.leads() {
            // Refused here as the leader would refuse it, so the caller hears why.
            if let Err(source) = Manifest::parse(&flow.manifest) {
                return Err(SupervisorError::Manifest {
                    flow_id: flow.id.clone(),
                    source,
                });
            }
        }
        let instance_id = uuid::Uuid::new_v4().to_string();
        let reason = format!("start requested by {actor}");
        let mut t = Transition::new(status::STARTING, &reason, actor);
        t.desired = Some("running");
        t.pump = Some((Some(&instance_id), None));
        if !self.store.transition(&flow.id, t).await? {
            return Err(SupervisorError::NotFound(flow.id.clone()));
        }
        if !self.leads() {
            self.dispatcher.bus().notify_supervise(&flow.id).await;
            return Ok(());
        }
        lock(&self.crashes).remove(&flow.id);
        self.launch(flow, &instance_id).await?;
        // A pump this start replaced hands back what it held.
        if let Some(previous) = flow.instance_id.as_deref().filter(|p| *p != instance_id) {
            self.requeue(&flow.id, previous).await?;
        }
        Ok(())
    }

    /// Whether this replica leads (see [`Supervisor::set_leading`]).
    pub fn leads(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    /// Set by [`crate::leadership`] when this replica takes or loses the lead.
    pub fn set_leading(&self, leading: bool) {
        self.leading.store(leading, Ordering::SeqCst);
    }

    /// The leader's side of a start, stop or delete another replica recorded: launches a start
    /// nobody has launched, finishes a stop, removes a deleted flow's pump. Anything else is
    /// the reconcile step's.
    pub async fn take_request(self: &Arc<Self>, flow_id: &str) -> Result<(), SupervisorError> {
        let flow = self.store.get_flow(flow_id).await?;
        match flow {
            Some(flow) if flow.status == status::STARTING && !self.start_in_hand(flow_id) => {
                let Some(instance_id) = flow.instance_id.clone() else {
                    return Ok(());
                };
                let live = self.backend.inspect(flow_id).await?.filter(|p| {
                    matches!(p.state, PumpState::Running | PumpState::Starting)
                        && p.instance_id.as_deref() == Some(instance_id.as_str())
                });
                if live.is_none() {
                    lock(&self.crashes).remove(flow_id);
                    self.launch(&flow, &instance_id).await?;
                }
            }
            Some(flow) if flow.status == status::STOPPED => self.finish_stop(&flow).await?,
            _ => {
                self.reconcile(flow_id).await?;
            }
        }
        Ok(())
    }

    /// Takes back the triggers a pump instance held and never finished.
    async fn requeue(&self, flow_id: &str, instance_id: &str) -> Result<(), StoreError> {
        let requeued = self.store.requeue_instance(flow_id, instance_id).await?;
        if !requeued.is_empty() {
            tracing::info!(
                flow_id,
                count = requeued.len(),
                "re-queued triggers a departed pump held"
            );
            self.dispatcher.requeue(&requeued);
        }
        Ok(())
    }

    /// Wakes an idle flow for the triggers waiting on it. Returns whether this call started the
    /// pump: of many concurrent wakes exactly one does, the others find the flow `starting`.
    ///
    /// The pump keeps the instance id it had before it was parked, so the Docker backend can
    /// restart the very container it stopped when nothing about it changed.
    pub async fn wake(self: &Arc<Self>, flow_id: &str) -> Result<bool, SupervisorError> {
        let mut t = Transition::new(status::STARTING, "woken by a trigger", "supervisor");
        t.only_status = Some(status::IDLE);
        if !self.store.transition(flow_id, t).await? {
            return Ok(false);
        }
        let flow = self
            .store
            .get_flow(flow_id)
            .await?
            .ok_or_else(|| SupervisorError::NotFound(flow_id.to_string()))?;
        let instance_id = match flow.instance_id.clone() {
            Some(id) => id,
            None => {
                let id = uuid::Uuid::new_v4().to_string();
                let mut t = Transition::new(status::STARTING, "a new pump instance", "supervisor");
                t.pump = Some((Some(&id), None));
                self.store.transition(flow_id, t).await?;
                id
            }
        };
        tracing::info!(flow_id, flow = %flow.name, "waking the flow for waiting triggers");
        self.metrics.wakeups.with_label_values(&[flow_id]).inc();
        self.launch(&flow, &instance_id).await?;
        Ok(true)
    }

    /// Wakes the flow in the background: a trigger's caller is answered once the trigger is
    /// recorded, not after a scale-down in progress or a store hiccup in the wake. A wake that
    /// fails here is retried by the leader's housekeeping, which wakes every idle flow with
    /// triggers held. Only the leader wakes.
    pub fn wake_soon(self: &Arc<Self>, flow_id: &str) {
        if !self.leads() {
            return;
        }
        let this = self.clone();
        let flow_id = flow_id.to_string();
        tokio::spawn(async move {
            if let Err(e) = this.wake(&flow_id).await {
                tracing::warn!(flow_id, error = %e, "waking the flow failed; housekeeping retries");
            }
        });
    }

    /// Has the backend start `instance_id` of the flow's pump, already recorded as `starting`.
    ///
    /// Holds the flow's lock: a scale-down still parking the old pump (and switching its Redis
    /// user off) finishes before this launch grants the new pump's password and starts it.
    async fn launch(
        self: &Arc<Self>,
        flow: &FlowRecord,
        instance_id: &str,
    ) -> Result<(), SupervisorError> {
        // Before waiting on the flow's lock: from here on, an earlier launch's start timer is
        // not this one's.
        let launch = self.next_launch(&flow.id);
        let flow_lock = self.flow_locks.get(&flow.id);
        let _serial = flow_lock.lock().await;
        self.metrics.seen_flow(&flow.id);
        lock(&self.launched_at).insert(flow.id.clone(), std::time::Instant::now());
        self.dispatcher.close(&flow.id);
        // Checked for the backend too: a manifest stored before a rule existed is refused here.
        let checked = Manifest::parse(&flow.manifest).and_then(|m| {
            m.check_for_backend(self.backend.name())?;
            Ok(m)
        });
        let manifest = match checked {
            Ok(m) => m,
            Err(source) => {
                let err = SupervisorError::Manifest {
                    flow_id: flow.id.clone(),
                    source,
                };
                self.fail_start(&flow.id, instance_id, &err.to_string())
                    .await?;
                return Err(err);
            }
        };
        let secrets = match self.open_secrets(&flow.id).await? {
            Ok(secrets) => secrets,
            Err(reason) => {
                self.fail_start(&flow.id, instance_id, &reason).await?;
                return Err(SupervisorError::Secrets {
                    flow_id: flow.id.clone(),
                    reason,
                });
            }
        };
        let credential = Credential::issue();
        let previous = match self.grant_launch(flow, &credential).await {
            Ok(previous) => previous,
            Err(e) => {
                let reason = format!("the pump's Redis user could not be set up: {e}");
                self.fail_start(&flow.id, instance_id, &reason).await?;
                return Err(e);
            }
        };
        let redis_url = self.pump_users.pump_url(&flow.id, &credential.password);
        let mut pump_env = self.pump_env(flow, &manifest, instance_id, redis_url);
        pump_env.secret.extend(secrets);
        let spec = PumpSpec {
            flow_id: flow.id.clone(),
            tenant_id: flow.tenant_id.clone(),
            instance_id: instance_id.to_string(),
            flow_name: flow.name.clone(),
            image: Some(
                manifest
                    .image
                    .clone()
                    .unwrap_or_else(|| self.settings.default_image.clone()),
            ),
            env: pump_env.plain,
            secret_env: pump_env.secret,
            per_launch_env: [env::REDIS_URL.to_string()].into(),
            resources: manifest.resources().unwrap_or_default(),
            stop_grace: manifest.stop_grace().unwrap_or(DEFAULT_STOP_GRACE),
        };
        // Before the pump exists, so its first event is read.
        if let Err(e) = self
            .dispatcher
            .bus()
            .watch_events(&flow.tenant_id, &flow.id)
            .await
        {
            tracing::warn!(flow_id = %flow.id, error = %e, "cannot prepare the pump's events stream yet; it is read once Redis answers");
        }
        match self.backend.start(&spec).await {
            Ok(started) => {
                tracing::info!(flow_id = %flow.id, flow = %flow.name, instance_id, pump = %started.pump_ref, backend = self.backend.name(), "pump started");
                // Not a status change: the pump may already have reported ready.
                self.store
                    .set_pump_ref(&flow.id, instance_id, &started.pump_ref)
                    .await?;
                if !previous.is_empty() {
                    let restarted = flow.pump_ref.as_deref() == Some(started.pump_ref.as_str());
                    let keep = if restarted {
                        previous
                    } else {
                        vec![credential.hash.clone()]
                    };
                    if let Err(e) = self.grant(&flow.id, &flow.tenant_id, &keep, true).await {
                        // Both passwords still work; the next sync of pump users narrows it.
                        tracing::warn!(flow_id = %flow.id, error = %e, "dropping the unused Redis password failed");
                    }
                }
            }
            Err(e) => {
                let reason = format!("the backend could not start the pump: {e}");
                self.fail_start(&flow.id, instance_id, &reason).await?;
                return Err(e.into());
            }
        }
        let this = self.clone();
        let flow_id = flow.id.clone();
        let instance_id = instance_id.to_string();
        tokio::spawn(async move { this.watch_start(flow_id, instance_id, launch).await });
        Ok(())
    }

    /// The flow's secrets, decrypted for its pump's environment; or, as `Err`, why the pump
    /// cannot get them (naming the secret, never its value).
    async fn open_secrets(
        &self,
        flow_id: &str,
    ) -> Result<Result<BTreeMap<String, String>, String>, StoreError> {
        let sealed = self.store.sealed_secrets(flow_id).await?;
        if sealed.is_empty() {
            return Ok(Ok(BTreeMap::new()));
        }
        let Some(key) = &self.settings.master_key else {
            return Ok(Err(format!(
                "the flow has {} secret(s) but this server has no master key to decrypt them; {}",
                sealed.len(),
                crate::secrets::HOW_TO_MAKE_A_KEY
            )));
        };
        let mut open = BTreeMap::new();
        for (name, s) in &sealed {
            // Stored before such names were refused: still never handed to a pump.
            if let Some(why) = crate::manifest::loader_variable(name, Some(self.backend.name())) {
                return Ok(Err(format!("secret `{name}` {why}")));
            }
            match key.open(flow_id, name, s) {
                // The map's own String is not wiped on drop; the backend copies it anyway.
                Ok(value) => open.insert(name.clone(), value.to_string()),
                Err(e) => return Ok(Err(e.to_string())),
            };
        }
        Ok(Ok(open))
    }

    /// The start of `instance_id` failed: the flow goes to `error` and its held triggers fail.
    async fn fail_start(
        &self,
        flow_id: &str,
        instance_id: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        let mut t = Transition::new(status::ERROR, reason, "supervisor");
        t.only_instance = Some(instance_id);
        if self.store.transition(flow_id, t).await? {
            self.revoke_pump_user(flow_id).await;
            lock(&self.deadlines).disarm(flow_id);
            self.remove_failed_pump(flow_id, instance_id);
            self.dispatcher
                .fail_flow(flow_id, &format!("the flow's pump did not start: {reason}"))
                .await?;
        }
        Ok(())
    }

    /// A flow in `error` has no pump on any backend: Kubernetes would otherwise go on
    /// restarting a crashed pod with its resources reserved. Off the caller's path (a pod takes
    /// its grace period to go, and backend events are applied one at a time for every flow),
    /// under the flow's lock, and only while the flow is still in error with this instance, so
    /// a start asked for meanwhile keeps its new pump.
    fn remove_failed_pump(&self, flow_id: &str, instance_id: &str) {
        let (store, backend) = (self.store.clone(), self.backend.clone());
        let flow_lock = self.flow_locks.get(flow_id);
        let (flow_id, instance_id) = (flow_id.to_string(), instance_id.to_string());
        tokio::spawn(async move {
            let _serial = flow_lock.lock().await;
            let flow = match store.get_flow(&flow_id).await {
                Ok(Some(f))
                    if f.status == status::ERROR
                        && f.instance_id.as_deref() == Some(instance_id.as_str()) =>
                {
                    f
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(flow_id, error = %e, "reading a failed flow failed; the next resync removes its pump");
                    return;
                }
            };
            if let Err(e) = backend.stop(&flow_id, stop_grace(&flow)).await {
                tracing::warn!(flow_id, error = %e, "removing the pump of a flow in error failed; the next resync removes it");
            }
        });
    }

    /// A new launch or ready report of the flow: every start timer set before it is void.
    fn next_launch(&self, flow_id: &str) -> u64 {
        let mut launches = lock(&self.launches);
        let n = launches.entry(flow_id.to_string()).or_default();
        *n += 1;
        *n
    }

    async fn watch_start(&self, flow_id: String, instance_id: String, launch: u64) {
        tokio::time::sleep(self.settings.start_timeout).await;
        let Ok(Some(flow)) = self.store.get_flow(&flow_id).await else {
            return;
        };
        // Compared after the read: a flow seen `starting` again was woken by a launch that
        // counted itself before that status was stored.
        if lock(&self.launches).get(&flow_id).copied() != Some(launch) {
            return;
        }
        if flow.status != status::STARTING || flow.instance_id.as_deref() != Some(&instance_id) {
            return;
        }
        let tail = self.log_tail(&flow_id).await;
        let reason = format!(
            "the pump did not report ready within {:?}; it was stopped{}",
            self.settings.start_timeout, tail
        );
        // fail_start removes the pump that never got ready.
        if let Err(e) = self.fail_start(&flow_id, &instance_id, &reason).await {
            tracing::warn!(flow_id, error = %e, "recording a start timeout failed");
        }
    }

    /// Stops the flow's pump on request; triggers not yet acknowledged are marked failed. On a
    /// replica that does not lead, the stop is recorded and the leader carries it out.
    pub async fn stop(&self, flow: &FlowRecord, actor: &str) -> Result<(), SupervisorError> {
        let reason = format!("stop requested by {actor}");
        let mut t = Transition::new(status::STOPPED, &reason, actor);
        t.desired = Some("stopped");
        t.pump = Some((None, None));
        if !self.store.transition(&flow.id, t).await? {
            return Err(SupervisorError::NotFound(flow.id.clone()));
        }
        if !self.leads() {
            self.dispatcher.bus().notify_supervise(&flow.id).await;
            return Ok(());
        }
        self.finish_stop(flow).await
    }

    /// The leader's part of a stop: the pump drains and goes, and what it did not finish fails.
    async fn finish_stop(&self, flow: &FlowRecord) -> Result<(), SupervisorError> {
        let grace = stop_grace(flow);
        self.forget(&flow.id);
        self.backend.stop(&flow.id, grace).await?;
        // After the stop: a draining pump still reports through Redis.
        self.revoke_pump_user(&flow.id).await;
        // The pump drained before it exited; what it finished is on the event stream and
        // must be applied before the rest is failed.
        self.dispatcher
            .settle_events(flow, Duration::from_secs(5))
            .await;
        let reason = "the flow was stopped before its pump finished this trigger";
        self.dispatcher.fail_flow(&flow.id, reason).await?;
        // Including what other replicas hold, and what the stopped pump was running.
        self.store.fail_unfinished(&flow.id, reason).await?;
        Ok(())
    }

    /// How long a flow may stay `starting` with no pump of its instance running before its
    /// start counts as abandoned: past the start timeout, by which a live launcher would have
    /// failed it, with time to spare (up to 5 s) for that launcher's own step.
    fn abandoned_after_ms(&self) -> i64 {
        let timeout = self.settings.start_timeout.as_millis() as i64;
        timeout + timeout.min(5_000)
    }

    /// Whether this replica is starting the flow's pump, or will after a back-off.
    fn start_in_hand(&self, flow_id: &str) -> bool {
        let window = Duration::from_millis(self.abandoned_after_ms() as u64);
        lock(&self.restarts_pending).contains(flow_id)
            || lock(&self.launched_at)
                .get(flow_id)
                .is_some_and(|at| at.elapsed() < window)
    }

    fn forget(&self, flow_id: &str) {
        self.dispatcher.close(flow_id);
        lock(&self.liveness).forget(flow_id);
        lock(&self.heartbeats).remove(flow_id);
        lock(&self.deadlines).disarm(flow_id);
    }

    /// A trigger was accepted for the flow: its idle clock starts again.
    pub fn note_trigger(&self, flow_id: &str) {
        lock(&self.deadlines).touch(flow_id, now_ms());
    }

    /// Scales a running flow to zero if it is really idle: no execution in flight by its last
    /// heartbeat and no trigger waiting. A busy flow gets its idle clock back.
    pub async fn scale_down_if_idle(
        &self,
        flow_id: &str,
        timeout_ms: i64,
    ) -> Result<bool, SupervisorError> {
        // A wake that races this (the flow shows `idle` before its pump is parked) launches
        // only once the pump is parked and its Redis user switched off; see `launch`.
        let flow_lock = self.flow_locks.get(flow_id);
        let _serial = flow_lock.lock().await;
        let Some(flow) = self.store.get_flow(flow_id).await? else {
            return Ok(false);
        };
        if flow.status != status::RUNNING || flow.keep_alive {
            return Ok(false);
        }
        let now = now_ms();
        let beat = self.heartbeat(flow_id);
        let quiet_since = beat.as_ref().map(|b| b.last_activity_ms).unwrap_or(now);
        let busy = beat.as_ref().is_none_or(|b| b.in_flight > 0)
            || self.dispatcher.has_pending(flow_id)
            || quiet_since + timeout_ms > now;
        if busy {
            let mut d = lock(&self.deadlines);
            d.arm(
                flow_id,
                timeout_ms,
                now.min(quiet_since.max(now - timeout_ms + 200)),
            );
            return Ok(false);
        }
        let Some(instance_id) = flow.instance_id.clone() else {
            return Ok(false);
        };
        let reason = format!("no work for {}; scaled to zero", human_ms(timeout_ms));
        let mut t = Transition::new(status::IDLE, &reason, "reaper");
        t.only_instance = Some(&instance_id);
        t.only_status = Some(status::RUNNING);
        t.fence = self.fence();
        if !self.store.transition(flow_id, t).await? {
            return Ok(false);
        }
        tracing::info!(flow_id, flow = %flow.name, "scaling an idle flow to zero");
        self.metrics.scale_downs.with_label_values(&[flow_id]).inc();
        self.forget(flow_id);
        self.backend.park(flow_id, stop_grace(&flow)).await?;
        self.disable_pump_user(flow_id).await;
        // Whatever the pump could not finish within its grace period goes to the next pump; the
        // housekeeping pass wakes the flow for it.
        self.requeue(flow_id, &instance_id).await?;
        Ok(true)
    }

    /// For a status reason: what the backend says of the pump's ending, and its last lines.
    async fn log_tail(&self, flow_id: &str) -> String {
        let detail = match self.backend.exit_detail(flow_id).await {
            Some(d) => format!("; {} says {d}", self.backend.name()),
            None => String::new(),
        };
        match self.backend.logs(flow_id, LOG_TAIL_IN_REASON).await {
            Ok(lines) if !lines.is_empty() => {
                format!("{detail}; last log lines:\n{}", lines.join("\n"))
            }
            _ => detail,
        }
    }

    /// Applies pump events read together. What they say about executions (`ack`, `started`,
    /// `completed`, `failed`) is folded per execution and written in one transaction; the rest
    /// is applied one by one, in order. Idempotent: events may be read twice.
    pub async fn apply_pump_events(&self, events: Vec<PumpEvent>) -> Result<(), StoreError> {
        let at = now_ms();
        // The flow id of each event is its stream's: the bus drops events naming another flow.
        let (reports, others) = Reports::fold(events, at);
        // Executions first: a `ready` in the same read opens a gate, and what the pump already
        // acknowledged should not be sent again through it.
        let mut applied = self.dispatcher.apply_reports(reports).await;
        // Each on its own: one that fails must not drop another flow's `ready`. Failing for
        // want of a store fails the whole read, which is then read again: every event here
        // may be applied twice.
        for ev in others {
            if let Err(e) = self.apply_flow_event(ev, at).await {
                tracing::warn!(error = %e, "applying a pump event failed");
                if e.is_unavailable() && applied.is_ok() {
                    applied = Err(e);
                }
            }
        }
        applied
    }

    /// Applies one pump event about the pump itself rather than an execution.
    async fn apply_flow_event(&self, ev: PumpEvent, at: i64) -> Result<(), StoreError> {
        match ev {
            PumpEvent::Ready {
                flow_id,
                instance_id,
                ..
            } => {
                let mut t = Transition::new(status::RUNNING, "pump reported ready", "pump");
                t.only_instance = Some(&instance_id);
                t.only_status = Some(status::STARTING);
                if self.store.transition(&flow_id, t).await? {
                    self.next_launch(&flow_id);
                    let launched = lock(&self.launched_at).remove(&flow_id);
                    if let Some(at) = launched {
                        self.metrics.cold_start.observe(at.elapsed().as_secs_f64());
                    }
                    self.became_running(&flow_id).await?;
                } else if !self.dispatcher.is_open(&flow_id) {
                    // Read again after failing half-way (the transition was stored, then the
                    // store went away): finish what the first reading started.
                    let flow = self.store.get_flow(&flow_id).await?;
                    if flow.is_some_and(|f| {
                        f.status == status::RUNNING
                            && f.instance_id.as_deref() == Some(instance_id.as_str())
                    }) {
                        self.became_running(&flow_id).await?;
                    }
                }
            }
            PumpEvent::Heartbeat {
                flow_id,
                instance_id,
                in_flight,
                last_activity_ms,
                processed,
            } => {
                {
                    let mut d = lock(&self.deadlines);
                    d.touch(&flow_id, if in_flight > 0 { at } else { last_activity_ms });
                }
                self.metrics.pump_processed(&flow_id, processed);
                lock(&self.liveness).heard(&flow_id, &instance_id, at);
                lock(&self.heartbeats).insert(
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
            PumpEvent::Draining {
                flow_id, in_flight, ..
            } => {
                tracing::info!(flow_id, in_flight, "pump is draining");
            }
            // Execution events are folded in `apply_pump_events`.
            PumpEvent::Ack { .. }
            | PumpEvent::Started { .. }
            | PumpEvent::Completed { .. }
            | PumpEvent::Failed { .. } => {}
        }
        Ok(())
    }

    /// The flow's pump is ready (or adopted as running): open its gate, start its idle clock.
    async fn became_running(&self, flow_id: &str) -> Result<(), StoreError> {
        if let Some(flow) = self.store.get_flow(flow_id).await? {
            if let Some(instance_id) = &flow.instance_id {
                lock(&self.liveness).watch(flow_id, instance_id, now_ms());
            }
            if !flow.keep_alive {
                lock(&self.deadlines).arm(flow_id, flow.idle_timeout_ms, now_ms());
            }
        }
        self.dispatcher.open(flow_id).await;
        Ok(())
    }

    /// Applies one backend event: a pump's exit. What it held goes back to the queue; an exit
    /// nobody asked for is a failed start or a crash.
    pub async fn apply_backend_event(self: &Arc<Self>, ev: BackendEvent) -> Result<(), StoreError> {
        let BackendEvent::Exited {
            flow_id,
            instance_id,
            code,
            oom,
        } = ev;
        let Some(instance_id) = instance_id else {
            return Ok(());
        };
        let flow_lock = self.flow_locks.get(&flow_id);
        let _serial = flow_lock.lock().await;
        self.pump_gone(&flow_id, &instance_id, &exited(code, oom), code)
            .await
    }

    /// The pump `instance_id` of the flow is gone (`how` says how, with `{when}` standing for
    /// "before it was ready" or "unexpectedly"; `code` is its exit code when it exited). What
    /// it held goes back to the queue; if the flow still wanted it, that is a failed start or
    /// a crash. Call with the flow's lock held.
    async fn pump_gone(
        self: &Arc<Self>,
        flow_id: &str,
        instance_id: &str,
        how: &str,
        code: Option<i64>,
    ) -> Result<(), StoreError> {
        self.requeue(flow_id, instance_id).await?;
        let Some(flow) = self.store.get_flow(flow_id).await? else {
            return Ok(());
        };
        if flow.instance_id.as_deref() != Some(instance_id) || flow.desired_state != "running" {
            return Ok(());
        }
        match flow.status.as_str() {
            // A crash before `ready` (a database not up yet) is restarted like any other, as
            // the contract says; only exit 2, a config or environment the pump cannot use, and
            // a pump that never ran (no code: an image that cannot be pulled) end the start.
            status::STARTING if code.is_some_and(|c| c != REFUSED_CONFIG && c != 0) => {
                self.metrics.crashes.with_label_values(&[flow_id]).inc();
                self.forget(flow_id);
                self.crashed(
                    &flow,
                    instance_id,
                    &how.replace("{when}", "before it was ready"),
                )
                .await?;
            }
            status::STARTING => {
                let counter = if code == Some(REFUSED_CONFIG) {
                    &self.metrics.configs_refused
                } else {
                    &self.metrics.crashes
                };
                counter.with_label_values(&[flow_id]).inc();
                self.forget(flow_id);
                let tail = self.log_tail(flow_id).await;
                let reason = format!(
                    "the pump {}{tail}",
                    how.replace("{when}", "before it was ready")
                );
                tracing::warn!(flow_id, flow = %flow.name, reason, "pump ended before it was ready");
                self.fail_start(flow_id, instance_id, &reason).await?;
            }
            status::RUNNING => {
                self.metrics.crashes.with_label_values(&[flow_id]).inc();
                self.forget(flow_id);
                self.crashed(&flow, instance_id, &how.replace("{when}", "unexpectedly"))
                    .await?;
            }
            // idle, stopped, error: nothing runs, or should.
            _ => {}
        }
        Ok(())
    }

    /// A running pump died: restart it after a back-off, or, in a crash loop, give up.
    async fn crashed(
        self: &Arc<Self>,
        flow: &FlowRecord,
        instance_id: &str,
        how: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let window = self.settings.crash_window.as_millis() as i64;
        let crashes = {
            let mut all = lock(&self.crashes);
            let times = all.entry(flow.id.clone()).or_default();
            times.retain(|t| now - t < window);
            times.push(now);
            times.len()
        };
        let tail = self.log_tail(&flow.id).await;
        tracing::warn!(flow_id = %flow.id, flow = %flow.name, how, crashes, "pump exited unexpectedly");
        if crashes >= self.settings.crash_limit {
            let reason = format!(
                "crash loop: the pump ended {crashes} times within {}; last, it {how}{tail}",
                human_ms(window)
            );
            self.fail_start(&flow.id, instance_id, &reason).await?;
            return Ok(());
        }
        let backoff = self.settings.restart_backoff * 2u32.saturating_pow(crashes as u32 - 1);
        let next = uuid::Uuid::new_v4().to_string();
        let reason = format!(
            "the pump {how}; restarting in {} (crash {crashes} of {} allowed within {}){tail}",
            human_ms(backoff.as_millis() as i64),
            self.settings.crash_limit,
            human_ms(window)
        );
        let mut t = Transition::new(status::STARTING, &reason, "supervisor");
        t.only_instance = Some(instance_id);
        t.pump = Some((Some(&next), None));
        t.fence = self.fence();
        if !self.store.transition(&flow.id, t).await? {
            return Ok(());
        }
        let this = self.clone();
        let flow_id = flow.id.clone();
        lock(&self.restarts_pending).insert(flow_id.clone());
        tokio::spawn(async move {
            tokio::time::sleep(backoff).await;
            lock(&this.restarts_pending).remove(&flow_id);
            let Ok(Some(flow)) = this.store.get_flow(&flow_id).await else {
                return;
            };
            if flow.instance_id.as_deref() == Some(&next) && flow.status == status::STARTING {
                this.metrics
                    .restarts
                    .with_label_values(&[flow_id.as_str()])
                    .inc();
                if let Err(e) = this.launch(&flow, &next).await {
                    tracing::warn!(flow_id, error = %e, "restarting a crashed pump failed");
                }
            }
        });
        Ok(())
    }

    /// One housekeeping pass: scales down flows whose idle deadline passed, and wakes idle
    /// flows that have triggers waiting (a trigger that raced a scale-down lands here).
    pub async fn housekeep(self: &Arc<Self>) {
        let due = lock(&self.deadlines).pop_due(now_ms());
        for (flow_id, timeout_ms) in due {
            if let Err(e) = self.scale_down_if_idle(&flow_id, timeout_ms).await {
                tracing::warn!(flow_id, error = %e, "scaling down failed");
            }
        }
        for flow_id in self.dispatcher.held_flows() {
            match self.store.get_flow(&flow_id).await {
                Ok(Some(f)) if f.status == status::IDLE => {
                    if let Err(e) = self.wake(&flow_id).await {
                        tracing::warn!(flow_id, error = %e, "waking a flow failed");
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(flow_id, error = %e, "reading a flow failed"),
            }
        }
    }

    /// Reads each running pump's memory into the metrics.
    pub async fn sample_memory(&self) {
        let Ok(pumps) = self.backend.list().await else {
            return;
        };
        // Read every pump first, then update the series in place: a reset followed by one
        // stats call per pump left /metrics without most series for seconds each cycle, and
        // an alert's `for` started over.
        let mut samples = Vec::new();
        for p in pumps.iter().filter(|p| p.state == PumpState::Running) {
            if let Some(sample) = self.backend.memory(&p.flow_id).await {
                samples.push((p.flow_id.clone(), sample));
            }
        }
        let mut exported = lock(&self.memory_series);
        let (mut used_now, mut limited_now) = (HashSet::new(), HashSet::new());
        for (flow_id, (used, limit)) in samples {
            self.metrics
                .pump_memory
                .with_label_values(&[flow_id.as_str()])
                .set(used);
            if let Some(limit) = limit {
                self.metrics
                    .pump_memory_limit
                    .with_label_values(&[flow_id.as_str()])
                    .set(limit);
                limited_now.insert(flow_id.clone());
            }
            used_now.insert(flow_id);
        }
        for gone in exported.0.difference(&used_now) {
            let _ = self
                .metrics
                .pump_memory
                .remove_label_values(&[gone.as_str()]);
        }
        for gone in exported.1.difference(&limited_now) {
            let _ = self
                .metrics
                .pump_memory_limit
                .remove_label_values(&[gone.as_str()]);
        }
        *exported = (used_now, limited_now);
    }

    /// The fence of the lease this replica leads under; `None` without a lease (SQLite).
    pub fn fence(&self) -> Option<i64> {
        match self.fence.load(Ordering::SeqCst) {
            0 => None,
            f => Some(f),
        }
    }

    pub fn set_fence(&self, fence: Option<i64>) {
        self.fence.store(fence.unwrap_or(0), Ordering::SeqCst);
    }

    /// Runs the leader's loops: pump events, backend events, re-delivery, triggers other
    /// replicas recorded, housekeeping and resync. Returns only if the backend's event stream
    /// ends, which a backend never does on its own; the caller aborts it on losing the lease.
    pub async fn run_leader(self: Arc<Self>, bus: crate::bus::Bus, consumer: String) {
        let accepted = {
            let this = self.clone();
            let bus = bus.clone();
            async move {
                bus.accepted_notifications(|flow_id| {
                    let this = this.clone();
                    async move {
                        if let Err(e) = this.dispatcher.load_flow(&flow_id).await {
                            tracing::warn!(flow_id, error = %e, "loading triggers another replica recorded failed");
                        }
                    }
                })
                .await
            }
        };
        let requests = {
            let this = self.clone();
            let bus = bus.clone();
            async move {
                bus.supervise_requests(|flow_id| {
                    let this = this.clone();
                    async move {
                        if let Err(e) = this.take_request(&flow_id).await {
                            tracing::warn!(flow_id, error = %e, "carrying out a start or stop another replica recorded failed; reconcile retries");
                        }
                    }
                })
                .await
            }
        };
        // Pump memory for the metrics, every 15 s: a Docker stats call per pump is not free.
        let memory = every(Duration::from_secs(15), || async {
            self.sample_memory().await;
        });
        // A notification can be lost (Redis blip); the store cannot.
        let sweep = every(Duration::from_secs(1), || async {
            match self.store.requeue_departed().await {
                Ok(back) if !back.is_empty() => {
                    tracing::info!(
                        count = back.len(),
                        "re-queued triggers held by pumps that are gone"
                    );
                    self.dispatcher.requeue(&back);
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "re-queuing triggers of departed pumps failed")
                }
            }
            if let Err(e) = self.dispatcher.load().await {
                tracing::warn!(error = %e, "loading unacknowledged triggers failed");
            }
            for flow_id in self.dispatcher.open_flows() {
                self.dispatcher.open(&flow_id).await;
            }
        });
        let events = {
            let this = self.clone();
            async move {
                bus.consume_events(
                    &consumer,
                    |events| {
                        let this = this.clone();
                        async move { this.apply_pump_events(events).await }
                    },
                    // Not on the reader's path: the other flows' events are read meanwhile.
                    |bad| {
                        tokio::spawn(this.clone().events_stream_isolated(bad));
                    },
                )
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
        let pump_users = {
            let this = self.clone();
            async move { this.watch_pump_users().await }
        };
        let watch_requests = {
            let bus = self.dispatcher.bus().clone();
            async move { bus.follow_watch_requests().await }
        };
        let housekeeping = every(Duration::from_millis(100), || async {
            self.housekeep().await;
        });
        let resync = {
            let this = self.clone();
            async move {
                let mut every = tokio::time::interval(this.settings.resync_interval);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                every.tick().await; // the first pass runs at start-up, before serving
                loop {
                    every.tick().await;
                    if let Err(e) = this.resync().await {
                        tracing::warn!(error = %e, "resync failed; retrying at the next one");
                    }
                }
            }
        };
        let liveness = every(Duration::from_secs(1), || async {
            self.check_liveness().await;
        });
        tokio::join!(
            liveness,
            events,
            backend_events,
            redelivery,
            housekeeping,
            resync,
            accepted,
            requests,
            sweep,
            memory,
            pump_users,
            watch_requests
        );
    }
}

/// Runs `tick` every `period` for ever; a tick that overruns delays the next rather than
/// bunching them up.
async fn every<F, Fut>(period: Duration, mut tick: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        tick().await;
    }
}

fn stop_grace(flow: &FlowRecord) -> Duration {
    Manifest::parse(&flow.manifest)
        .ok()
        .and_then(|m| m.stop_grace().ok())
        .unwrap_or(DEFAULT_STOP_GRACE)
}

/// `1500` -> `1.5s`, `900000` -> `15m`.
fn human_ms(ms: i64) -> String {
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        format!("{:.1}s", ms as f64 / 1_000.0)
    }
}

/// The status of a flow as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowStatus {
    pub id: String,
    pub name: String,
    pub status: String,
    pub desired_state: String,
    pub reason: Option<String>,
    pub backend: &'static str,
    pub pump: Option<PumpView>,
    /// Why `pump` is missing when the backend could not be asked (an API server down): the
    /// flow's own status is still the store's, and shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pump_error: Option<String>,
    pub heartbeat: Option<Heartbeat>,
    pub events: Vec<store::FlowEvent>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PumpView {
    pub pump_ref: String,
    pub instance_id: Option<String>,
    pub state: String,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
}

impl Supervisor {
    pub async fn status(&self, flow: &FlowRecord) -> Result<FlowStatus, SupervisorError> {
        let (pump, pump_error) = match self.backend.inspect(&flow.id).await {
            Ok(pump) => (pump, None),
            Err(e) => (None, Some(e.to_string())),
        };
        let pump = pump.map(|p| {
            let (state, exit_code, oom_killed) = match p.state {
                PumpState::Starting => ("starting", None, false),
                PumpState::Running => ("running", None, false),
                PumpState::Exited { code, oom } => ("exited", code, oom),
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
            pump_error,
            heartbeat: self.heartbeat(&flow.id),
            events: self.store.flow_events(&flow.id, 20).await?,
        })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_in_reasons_read_as_people_write_them() {
        assert_eq!(super::human_ms(50), "50ms");
        assert_eq!(super::human_ms(1_500), "1.5s");
        assert_eq!(super::human_ms(2_000), "2s");
        assert_eq!(super::human_ms(900_000), "15m");
    }
}
