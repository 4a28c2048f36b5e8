//! The Docker backend: one container per flow, driven through the Engine API with bollard.
//!
//! A pump container is named `pumphouse-{cluster}-{flow_id}` and labelled with its flow, tenant,
//! instance and cluster, so the supervisor can find (and adopt) it by name or by label after a
//! restart. Containers are hardened the same way for every flow (non-root, read-only root
//! filesystem, no capabilities, no new privileges, pids/memory/CPU limits) and have no restart
//! policy: the supervisor decides when a pump comes back, with its own back-off.
//!
//! Exited containers are kept until the next `start` or `stop`, so their exit code, OOM flag and
//! log tail can still be read when the supervisor reacts to the exit.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest as _, Sha256};

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerState, ContainerStateStatusEnum,
    ContainerSummaryStateEnum, EventMessage, HostConfig,
};
use bollard::query_parameters::{
    CreateContainerOptions, EventsOptions, InspectContainerOptions, ListContainersOptions,
    LogsOptions, RemoveContainerOptions, StartContainerOptions, StopContainerOptions,
};
use bollard::{ClientVersion, Docker};
use futures_util::stream::{self, BoxStream, StreamExt};

use super::{labels, Backend, BackendError, BackendEvent, PumpSpec, PumpState, PumpStatus};
use crate::locking::lock;

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

/// The newest API dockerd 20.10 speaks. bollard's own default (1.49) is refused outright by
/// older engines ("client version is too new"), and negotiation only ever lowers the version,
/// so we start here; newer engines still serve 1.41.
const API_VERSION: &ClientVersion = &ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Per-request timeout, in seconds. It bounds the wait for response headers only, so the
/// events stream is not cut by it; `stop` raises it to cover the grace period.
const REQUEST_TIMEOUT_SECS: u64 = 120;

/// `nobody:nogroup`; pump images carry no `/etc/passwd`, so the ids are numeric.
const PUMP_USER: &str = "65534:65534";
const PIDS_LIMIT: i64 = 256;

const EVENTS_BACKOFF_START: Duration = Duration::from_millis(100);
const EVENTS_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How the orchestrator reaches Docker and where its pumps go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerConfig {
    /// Engine socket (`/var/run/docker.sock` or `unix:///var/run/docker.sock`). `None` means
    /// `DOCKER_HOST` when it names a unix socket, else `/var/run/docker.sock`.
    pub socket: Option<String>,
    /// `host`, `bridge`, or the name of a Docker network the pumps join.
    pub network: String,
    /// Value of the [`labels::CLUSTER`] label; every name, list and event is scoped to it.
    pub cluster: String,
}

/// Runs each flow's pump as a Docker container.
#[derive(Debug, Clone)]
pub struct DockerBackend {
    docker: Docker,
    config: DockerConfig,
    /// Containers the orchestrator is stopping itself; their `die` is not reported.
    stopping: Arc<Mutex<HashSet<String>>>,
    /// The engine host's memory: what Docker reports as the limit of a container without one.
    host_memory: Option<i64>,
}

impl DockerBackend {
    /// Connects to the engine, settles the API version and pings it, so a dead or missing
    /// engine is reported at start-up rather than on the first pump.
    pub async fn connect(config: DockerConfig) -> Result<DockerBackend, BackendError> {
        let socket = resolve_socket(
            config.socket.as_deref(),
            std::env::var("DOCKER_HOST").ok().as_deref(),
        )?;
        let unreachable = |source| BackendError::DockerUnreachable {
            socket: socket.clone(),
            source,
        };
        let docker = Docker::connect_with_unix(&socket, REQUEST_TIMEOUT_SECS, API_VERSION)
            .map_err(unreachable)?
            .negotiate_version()
            .await
            .map_err(unreachable)?;
        docker.ping().await.map_err(unreachable)?;
        let host_memory = match docker.info().await {
            Ok(info) => info.mem_total,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the engine's memory; a pump without a memory limit may show one");
                None
            }
        };
        tracing::debug!(%socket, cluster = %config.cluster, "connected to Docker");
        Ok(DockerBackend {
            docker,
            config,
            stopping: Arc::default(),
            host_memory,
        })
    }

    /// Notes that the running container `name` is about to be stopped by us, so its `die` is
    /// not reported as a crash. A container that is not running will not die: nothing to note.
    async fn expect_death(&self, name: &str) {
        if let Ok(resp) = self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
        {
            let running = resp.state.as_ref().and_then(|s| s.running).unwrap_or(false);
            if let (true, Some(id)) = (running, resp.id) {
                lock(&self.stopping).insert(id);
            }
        }
    }

    /// Stops the container gracefully; with `remove`, removes it afterwards.
    async fn halt(&self, flow_id: &str, grace: Duration, remove: bool) -> Result<(), BackendError> {
        let name = self.container_name(flow_id);
        self.expect_death(&name).await;
        let t = grace_secs(grace);
        // The stop request only answers once the pump has exited, which may take the whole
        // grace period: the request timeout must outlast it.
        let docker = self.docker.clone().with_timeout(Duration::from_secs(
            REQUEST_TIMEOUT_SECS.max(u64::from(t.unsigned_abs()) + 30),
        ));
        let opts = StopContainerOptions {
            t: Some(t),
            signal: None,
        };
        match docker.stop_container(&name, Some(opts)).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => return Ok(()),
            // The forced removal below still kills it; a pump must not outlive a stop.
            Err(e) => {
                tracing::warn!(flow_id, error = %e, "graceful stop failed; removing the pump by force");
                return self.remove(&name, flow_id).await;
            }
        }
        if remove {
            self.remove(&name, flow_id).await?;
        }
        Ok(())
    }

    /// The hash a container created from `body` carries, over everything it was created with
    /// and the image's id (a tag can move).
    async fn config_hash(&self, body: &ContainerCreateBody) -> String {
        let image_id = match &body.image {
            Some(image) => self
                .docker
                .inspect_image(image)
                .await
                .ok()
                .and_then(|i| i.id)
                .unwrap_or_default(),
            None => String::new(),
        };
        // serde_json's maps are ordered, so the text is the same for the same body.
        let canonical = serde_json::to_value(body)
            .map(|v| v.to_string())
            .unwrap_or_default();
        let digest = Sha256::digest(format!("{image_id}\n{canonical}").as_bytes());
        digest.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    /// Starts the parked container `name` if it was created from exactly this config.
    async fn restart_parked(&self, name: &str, hash: &str, flow_id: &str) -> Option<String> {
        let resp = self
            .docker
            .inspect_container(name, None::<InspectContainerOptions>)
            .await
            .ok()?;
        let same = resp
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(labels::CONFIG_HASH))
            .is_some_and(|h| h == hash);
        let stopped = matches!(pump_state(resp.state.as_ref()), PumpState::Exited { .. });
        if !(same && stopped) {
            return None;
        }
        let id = resp.id?;
        match self
            .docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
        {
            Ok(()) => Some(id),
            Err(e) => {
                tracing::debug!(flow_id, error = %e, "restarting the parked container failed; creating a new one");
                None
            }
        }
    }

    /// The container name of a flow's pump: `pumphouse-{cluster}-{flow_id}`.
    pub fn container_name(&self, flow_id: &str) -> String {
        container_name(&self.config.cluster, flow_id)
    }

    /// Force-removes a container; one that is already gone (or going) is fine.
    async fn remove(&self, name: &str, flow_id: &str) -> Result<(), BackendError> {
        let opts = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(name, Some(opts)).await {
            Ok(()) => Ok(()),
            Err(e) if is_not_found(&e) || is_removal_in_progress(&e) => Ok(()),
            Err(e) => Err(docker_error("remove", flow_id, e)),
        }
    }

    async fn create(&self, name: &str, body: ContainerCreateBody) -> Result<String, DockerError> {
        let opts = CreateContainerOptions {
            name: Some(name.to_owned()),
            ..Default::default()
        };
        Ok(self.docker.create_container(Some(opts), body).await?.id)
    }
}

#[async_trait]
impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn start(&self, spec: &PumpSpec) -> Result<PumpStatus, BackendError> {
        let flow_id = spec.flow_id.as_str();
        let name = self.container_name(flow_id);
        let mut body = container_body(spec, &self.config)?;
        // A new Redis password alone must not make a new container: the supervisor keeps the
        // parked one's password working when it is started again.
        let hash = self
            .config_hash(&container_body(
                &spec.without_per_launch_values(),
                &self.config,
            )?)
            .await;
        if let Some(labels) = body.labels.as_mut() {
            labels.insert(labels::CONFIG_HASH.to_owned(), hash.clone());
        }
        // Restarting a parked container skips the create (about 15 ms of 90 measured here,
        // ops/bench-docker-start.sh); any change to the config makes a new one instead.
        if let Some(id) = self.restart_parked(&name, &hash, flow_id).await {
            tracing::debug!(flow_id, instance_id = %spec.instance_id, container = %id, "parked pump container restarted");
            return Ok(PumpStatus {
                drifted: false,
                flow_id: flow_id.to_owned(),
                instance_id: Some(spec.instance_id.clone()),
                state: PumpState::Running,
                pump_ref: id,
            });
        }

        // Start replaces: whatever the flow had (running, exited, half-created) goes first.
        self.expect_death(&name).await;
        self.remove(&name, flow_id).await?;
        let created = match self.create(&name, body.clone()).await {
            // Someone recreated the name between our remove and create; the latest start wins.
            Err(e) if status_code(&e) == Some(409) => {
                self.remove(&name, flow_id).await?;
                self.create(&name, body).await
            }
            other => other,
        };
        let id = created.map_err(|e| match &e {
            DockerError::DockerResponseServerError {
                status_code: 404,
                message,
            } if message.contains("No such image") => BackendError::ImageMissing {
                image: spec.image.clone().unwrap_or_default(),
            },
            _ => docker_error("create", flow_id, e),
        })?;

        if let Err(e) = self
            .docker
            .start_container(&id, None::<StartContainerOptions>)
            .await
        {
            // A container that never started would sit in `created` and read as Starting
            // forever; the error already says why it failed, so nothing is lost by removing it.
            let _ = self.remove(&id, flow_id).await;
            return Err(docker_error("start", flow_id, e));
        }
        tracing::debug!(flow_id, instance_id = %spec.instance_id, container = %id, "pump container started");
        Ok(PumpStatus {
            drifted: false,
            flow_id: flow_id.to_owned(),
            instance_id: Some(spec.instance_id.clone()),
            state: PumpState::Running,
            pump_ref: id,
        })
    }

    async fn stop(&self, flow_id: &str, grace: Duration) -> Result<(), BackendError> {
        self.halt(flow_id, grace, true).await
    }

    async fn park(&self, flow_id: &str, grace: Duration) -> Result<(), BackendError> {
        self.halt(flow_id, grace, false).await
    }

    fn restarts_parked_pumps(&self) -> bool {
        true
    }

    async fn inspect(&self, flow_id: &str) -> Result<Option<PumpStatus>, BackendError> {
        let name = self.container_name(flow_id);
        match self
            .docker
            .inspect_container(&name, None::<InspectContainerOptions>)
            .await
        {
            Ok(resp) => Ok(Some(status_from_inspect(flow_id, &resp))),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(docker_error("inspect", flow_id, e)),
        }
    }

    async fn list(&self) -> Result<Vec<PumpStatus>, BackendError> {
        let opts = ListContainersOptions {
            all: true,
            filters: Some(owner_filters(&self.config.cluster)),
            ..Default::default()
        };
        let summaries = self
            .docker
            .list_containers(Some(opts))
            .await
            .map_err(|e| docker_error("list", "*", e))?;

        let mut pumps = Vec::with_capacity(summaries.len());
        for summary in summaries {
            let Some(flow_id) = summary.labels.as_ref().and_then(|l| l.get(labels::FLOW)) else {
                continue;
            };
            let state = match summary.state {
                Some(ContainerSummaryStateEnum::RUNNING | ContainerSummaryStateEnum::PAUSED) => {
                    PumpState::Running
                }
                Some(
                    ContainerSummaryStateEnum::EXITED
                    | ContainerSummaryStateEnum::DEAD
                    | ContainerSummaryStateEnum::REMOVING,
                ) => {
                    // The listing carries no exit code or OOM flag; exited pumps are few, so
                    // inspecting them is cheap. Gone meanwhile means nothing to report.
                    pumps.extend(self.inspect(flow_id).await?);
                    continue;
                }
                _ => PumpState::Starting,
            };
            pumps.push(PumpStatus {
                drifted: false,
                flow_id: flow_id.clone(),
                instance_id: summary
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(labels::INSTANCE))
                    .cloned(),
                state,
                pump_ref: summary.id.unwrap_or_default(),
            });
        }
        Ok(pumps)
    }

    fn follow_logs(&self, flow_id: &str, tail: usize) -> BoxStream<'static, String> {
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            follow: true,
            tail: tail.to_string(),
            ..Default::default()
        };
        let frames = self.docker.logs(&self.container_name(flow_id), Some(opts));
        // Frames are not lines: carry a partial line over to the next frame.
        frames
            .scan(String::new(), |partial, frame| {
                let lines: Vec<String> = match frame {
                    Ok(frame) => {
                        partial.push_str(&String::from_utf8_lossy(&frame.into_bytes()));
                        let mut done = Vec::new();
                        while let Some(end) = partial.find('\n') {
                            done.push(partial[..end].to_owned());
                            partial.drain(..=end);
                        }
                        done
                    }
                    Err(_) => return futures_util::future::ready(None),
                };
                futures_util::future::ready(Some(stream::iter(lines)))
            })
            .flatten()
            .boxed()
    }

    async fn memory(&self, flow_id: &str) -> Option<(i64, Option<i64>)> {
        let opts = bollard::query_parameters::StatsOptions {
            stream: false,
            one_shot: true,
        };
        let name = self.container_name(flow_id);
        let stats = self.docker.stats(&name, Some(opts)).next().await?.ok()?;
        let mem = stats.memory_stats?;
        let usage = mem.usage? as i64;
        // Without a limit Docker reports the host's memory (or, on some kernels, a huge
        // number); only a real limit is a limit, as the alert rules expect.
        let host = self.host_memory.unwrap_or(1 << 60);
        let limit = mem
            .limit
            .map(|l| l as i64)
            .filter(|l| *l < host && *l < (1 << 60));
        Some((usage, limit))
    }

    async fn logs(&self, flow_id: &str, tail: usize) -> Result<Vec<String>, BackendError> {
        let name = self.container_name(flow_id);
        let opts = LogsOptions {
            stdout: true,
            stderr: true,
            follow: false,
            tail: tail.to_string(),
            ..Default::default()
        };
        // Docker frames are not lines (a long line may be split): join them, then split.
        let mut output = Vec::new();
        let mut frames = self.docker.logs(&name, Some(opts));
        while let Some(frame) = frames.next().await {
            match frame {
                Ok(frame) => output.extend_from_slice(&frame.into_bytes()),
                Err(e) if is_not_found(&e) => return Ok(Vec::new()),
                Err(e) => return Err(docker_error("read the logs of", flow_id, e)),
            }
        }
        Ok(String::from_utf8_lossy(&output)
            .lines()
            .map(str::to_owned)
            .collect())
    }

    fn events(&self) -> BoxStream<'static, BackendEvent> {
        let watch = ExitWatch {
            docker: self.docker.clone(),
            cluster: self.config.cluster.clone(),
            stopping: self.stopping.clone(),
            events: None,
            // Exits from now on; a reconnect resumes after the last exit seen (Docker replays
            // its recent events on `since`), so an exit during the gap is not lost.
            seen_until_nanos: now_nanos(),
            backoff: EVENTS_BACKOFF_START,
        };
        stream::unfold(watch, |mut watch| async move {
            let event = watch.next_exit().await;
            Some((event, watch))
        })
        .boxed()
    }
}

/// The state behind [`DockerBackend::events`]: one events connection, reopened forever.
struct ExitWatch {
    docker: Docker,
    cluster: String,
    stopping: Arc<Mutex<HashSet<String>>>,
    events: Option<BoxStream<'static, Result<EventMessage, DockerError>>>,
    seen_until_nanos: i64,
    backoff: Duration,
}

impl ExitWatch {
    async fn next_exit(&mut self) -> BackendEvent {
        loop {
            let events = self.events.get_or_insert_with(|| {
                let opts = EventsOptions {
                    since: Some(since_param(self.seen_until_nanos + 1)),
                    until: None,
                    filters: Some(exit_filters(&self.cluster)),
                };
                self.docker.events(Some(opts)).boxed()
            });
            match events.next().await {
                Some(Ok(message)) => {
                    self.backoff = EVENTS_BACKOFF_START;
                    let Some(exit) = exit_from_event(&message, &self.cluster) else {
                        continue;
                    };
                    if lock(&self.stopping).remove(&exit.container_id) {
                        continue;
                    }
                    if let Some(nanos) = exit.time_nanos {
                        // `since` is inclusive and replays may overlap: report each exit once.
                        if nanos <= self.seen_until_nanos {
                            continue;
                        }
                        self.seen_until_nanos = nanos;
                    }
                    let oom = oom_killed(&self.docker, &exit.container_id).await;
                    return exit.into_event(oom);
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, retry_in = ?self.backoff, "Docker events stream failed; reconnecting");
                    self.reconnect_later().await;
                }
                None => {
                    tracing::debug!(retry_in = ?self.backoff, "Docker events stream ended; reconnecting");
                    self.reconnect_later().await;
                }
            }
        }
    }

    async fn reconnect_later(&mut self) {
        self.events = None;
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(EVENTS_BACKOFF_MAX);
    }
}

/// Docker sends `oom` as a separate event before `die`; reading the flag from the exited
/// container (kept until the next start or stop) is simpler and does not depend on order.
async fn oom_killed(docker: &Docker, container_id: &str) -> bool {
    match docker
        .inspect_container(container_id, None::<InspectContainerOptions>)
        .await
    {
        Ok(resp) => resp.state.and_then(|s| s.oom_killed).unwrap_or(false),
        Err(_) => false,
    }
}

/// A `die` event of one of our pumps, before its OOM flag is known.
#[derive(Debug, PartialEq)]
struct Exit {
    container_id: String,
    flow_id: String,
    instance_id: Option<String>,
    code: Option<i64>,
    time_nanos: Option<i64>,
}

impl Exit {
    fn into_event(self, oom: bool) -> BackendEvent {
        BackendEvent::Exited {
            flow_id: self.flow_id,
            instance_id: self.instance_id,
            code: self.code,
            oom,
        }
    }
}

/// Reads a `die` event; anything else, or a container not ours, is `None`. The engine filters
/// already, but the labels are checked again so a filter mistake cannot leak other pumps in.
fn exit_from_event(message: &EventMessage, cluster: &str) -> Option<Exit> {
    if message.action.as_deref() != Some("die") {
        return None;
    }
    let actor = message.actor.as_ref()?;
    let attributes = actor.attributes.as_ref()?;
    if attributes.get(labels::MANAGED_BY).map(String::as_str) != Some(labels::MANAGED_BY_VALUE)
        || attributes.get(labels::CLUSTER).map(String::as_str) != Some(cluster)
    {
        return None;
    }
    Some(Exit {
        container_id: actor.id.clone()?,
        flow_id: attributes.get(labels::FLOW)?.clone(),
        instance_id: attributes.get(labels::INSTANCE).cloned(),
        code: attributes.get("exitCode").and_then(|c| c.parse().ok()),
        time_nanos: message.time_nano,
    })
}

fn container_name(cluster: &str, flow_id: &str) -> String {
    format!("pumphouse-{cluster}-{flow_id}")
}

/// The container for one pump: labels, env, limits and hardening, all from the spec.
fn container_body(
    spec: &PumpSpec,
    config: &DockerConfig,
) -> Result<ContainerCreateBody, BackendError> {
    let image = spec.image.clone().ok_or_else(|| BackendError::NoImage {
        flow_id: spec.flow_id.clone(),
    })?;
    let labels = HashMap::from([
        (
            labels::MANAGED_BY.to_owned(),
            labels::MANAGED_BY_VALUE.to_owned(),
        ),
        (labels::FLOW.to_owned(), spec.flow_id.clone()),
        (labels::FLOW_NAME.to_owned(), spec.flow_name.clone()),
        (labels::TENANT.to_owned(), spec.tenant_id.clone()),
        (labels::INSTANCE.to_owned(), spec.instance_id.clone()),
        (labels::CLUSTER.to_owned(), config.cluster.clone()),
    ]);
    let env = spec
        .full_env()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let memory = spec.resources.memory_bytes;
    let host_config = HostConfig {
        memory,
        // Swap equal to memory means no swap at all, so the limit is the real ceiling.
        memory_swap: memory,
        nano_cpus: spec
            .resources
            .cpu_millis
            .map(|m| m.saturating_mul(1_000_000)),
        pids_limit: Some(PIDS_LIMIT),
        network_mode: Some(config.network.clone()),
        cap_drop: Some(vec!["ALL".to_owned()]),
        security_opt: Some(vec!["no-new-privileges".to_owned()]),
        readonly_rootfs: Some(true),
        init: Some(false),
        // No restart policy: the supervisor restarts pumps, with back-off and crash-loop
        // detection that Docker's policy cannot report.
        ..Default::default()
    };
    Ok(ContainerCreateBody {
        image: Some(image),
        user: Some(PUMP_USER.to_owned()),
        env: Some(env),
        labels: Some(labels),
        // So a `docker stop` by hand gives the pump the same drain time as the supervisor.
        stop_timeout: Some(i64::from(grace_secs(spec.stop_grace))),
        host_config: Some(host_config),
        ..Default::default()
    })
}

fn status_from_inspect(flow_id: &str, resp: &ContainerInspectResponse) -> PumpStatus {
    PumpStatus {
        drifted: false,
        flow_id: flow_id.to_owned(),
        instance_id: resp
            .config
            .as_ref()
            .and_then(|c| c.labels.as_ref())
            .and_then(|l| l.get(labels::INSTANCE))
            .cloned(),
        state: pump_state(resp.state.as_ref()),
        pump_ref: resp.id.clone().unwrap_or_default(),
    }
}

fn pump_state(state: Option<&ContainerState>) -> PumpState {
    let Some(state) = state else {
        return PumpState::Starting;
    };
    match state.status {
        // Paused still holds a live process; pumphouse never pauses, but a human might.
        Some(ContainerStateStatusEnum::RUNNING | ContainerStateStatusEnum::PAUSED) => {
            PumpState::Running
        }
        Some(
            ContainerStateStatusEnum::EXITED
            | ContainerStateStatusEnum::DEAD
            | ContainerStateStatusEnum::REMOVING,
        ) => PumpState::Exited {
            code: state.exit_code,
            oom: state.oom_killed.unwrap_or(false),
        },
        _ => PumpState::Starting,
    }
}

/// Label filters selecting the containers this orchestrator owns (Docker ANDs them).
fn owner_filters(cluster: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE),
            format!("{}={cluster}", labels::CLUSTER),
        ],
    )])
}

fn exit_filters(cluster: &str) -> HashMap<String, Vec<String>> {
    let mut filters = owner_filters(cluster);
    filters.insert("type".to_owned(), vec!["container".to_owned()]);
    filters.insert("event".to_owned(), vec!["die".to_owned()]);
    filters
}

/// The socket to dial: the configured one, else a unix `DOCKER_HOST`, else the default.
fn resolve_socket(
    configured: Option<&str>,
    docker_host: Option<&str>,
) -> Result<String, BackendError> {
    if let Some(socket) = configured {
        return Ok(socket.to_owned());
    }
    match docker_host.filter(|h| !h.is_empty()) {
        None => Ok(DEFAULT_SOCKET.to_owned()),
        Some(host) if host.starts_with("unix://") => Ok(host.to_owned()),
        // This build speaks to Docker over a unix socket only (no TCP/TLS client compiled in).
        Some(host) => Err(BackendError::DockerUnreachable {
            socket: host.to_owned(),
            source: DockerError::UnsupportedURISchemeError {
                uri: host.to_owned(),
            },
        }),
    }
}

/// Docker's stop timeout is whole seconds: round up, and never 0 (0 would mean an instant kill).
fn grace_secs(grace: Duration) -> i32 {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    i32::try_from(secs.max(1)).unwrap_or(i32::MAX)
}

/// `since` for the events API, as `seconds.nanoseconds`.
fn since_param(nanos: i64) -> String {
    format!(
        "{}.{:09}",
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000)
    )
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn status_code(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn is_not_found(e: &DockerError) -> bool {
    status_code(e) == Some(404)
}

fn is_removal_in_progress(e: &DockerError) -> bool {
    matches!(e, DockerError::DockerResponseServerError { status_code: 409, message } if message.contains("already in progress"))
}

fn docker_error(action: &'static str, flow_id: &str, source: DockerError) -> BackendError {
    BackendError::Docker {
        action,
        flow_id: flow_id.to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bollard::models::EventActor;

    use super::super::Resources;
    use super::*;

    fn spec() -> PumpSpec {
        PumpSpec {
            flow_id: "6f1c".into(),
            tenant_id: "acme".into(),
            instance_id: "i-1".into(),
            flow_name: "orders".into(),
            image: Some("pumphouse/pump:dev".into()),
            env: BTreeMap::from([("FLOW_ID".to_owned(), "6f1c".to_owned())]),
            secret_env: BTreeMap::from([("API_KEY".to_owned(), "s3cr=t".to_owned())]),
            per_launch_env: Default::default(),
            resources: Resources {
                memory_bytes: Some(64 << 20),
                cpu_millis: Some(500),
            },
            stop_grace: Duration::from_millis(2500),
        }
    }

    fn config(network: &str) -> DockerConfig {
        DockerConfig {
            socket: None,
            network: network.into(),
            cluster: "dev".into(),
        }
    }

    #[test]
    fn body_carries_labels_env_and_image() {
        let body = container_body(&spec(), &config("host")).unwrap();
        assert_eq!(body.image.as_deref(), Some("pumphouse/pump:dev"));
        let labels = body.labels.unwrap();
        assert_eq!(labels[labels::MANAGED_BY], "pumphouse");
        assert_eq!(labels[labels::FLOW], "6f1c");
        assert_eq!(labels[labels::FLOW_NAME], "orders");
        assert_eq!(labels[labels::TENANT], "acme");
        assert_eq!(labels[labels::INSTANCE], "i-1");
        assert_eq!(labels[labels::CLUSTER], "dev");
        assert_eq!(
            body.env.unwrap(),
            vec!["API_KEY=s3cr=t".to_owned(), "FLOW_ID=6f1c".to_owned()]
        );
        assert_eq!(body.stop_timeout, Some(3));
    }

    #[test]
    fn body_sets_limits_and_hardening() {
        let body = container_body(&spec(), &config("pumps")).unwrap();
        assert_eq!(body.user.as_deref(), Some("65534:65534"));
        let host = body.host_config.unwrap();
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.memory_swap, Some(64 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.pids_limit, Some(256));
        assert_eq!(host.network_mode.as_deref(), Some("pumps"));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges".to_owned()])
        );
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.init, Some(false));
        assert_eq!(host.restart_policy, None);
        assert_eq!(host.auto_remove, None);
    }

    #[test]
    fn body_without_limits_leaves_them_unset() {
        let mut spec = spec();
        spec.resources = Resources::default();
        let host = container_body(&spec, &config("host"))
            .unwrap()
            .host_config
            .unwrap();
        assert_eq!(
            (host.memory, host.memory_swap, host.nano_cpus),
            (None, None, None)
        );
    }

    #[test]
    fn body_needs_an_image() {
        let mut spec = spec();
        spec.image = None;
        let err = container_body(&spec, &config("host")).unwrap_err();
        assert!(matches!(err, BackendError::NoImage { flow_id } if flow_id == "6f1c"));
    }

    #[test]
    fn names_are_scoped_by_cluster() {
        assert_eq!(container_name("dev", "6f1c"), "pumphouse-dev-6f1c");
    }

    #[test]
    fn grace_rounds_up_to_whole_seconds() {
        assert_eq!(grace_secs(Duration::ZERO), 1);
        assert_eq!(grace_secs(Duration::from_millis(1)), 1);
        assert_eq!(grace_secs(Duration::from_secs(10)), 10);
        assert_eq!(grace_secs(Duration::from_millis(10_001)), 11);
    }

    #[test]
    fn states_map_onto_pump_states() {
        let state = |status, exit_code, oom| ContainerState {
            status: Some(status),
            exit_code: Some(exit_code),
            oom_killed: Some(oom),
            ..Default::default()
        };
        assert_eq!(
            pump_state(Some(&state(ContainerStateStatusEnum::RUNNING, 0, false))),
            PumpState::Running
        );
        assert_eq!(
            pump_state(Some(&state(ContainerStateStatusEnum::CREATED, 0, false))),
            PumpState::Starting
        );
        assert_eq!(
            pump_state(Some(&state(ContainerStateStatusEnum::RESTARTING, 0, false))),
            PumpState::Starting
        );
        assert_eq!(
            pump_state(Some(&state(ContainerStateStatusEnum::EXITED, 137, true))),
            PumpState::Exited {
                code: Some(137),
                oom: true
            }
        );
        assert_eq!(
            pump_state(Some(&state(ContainerStateStatusEnum::DEAD, 1, false))),
            PumpState::Exited {
                code: Some(1),
                oom: false
            }
        );
        assert_eq!(pump_state(None), PumpState::Starting);
    }

    fn die_event(cluster: &str) -> EventMessage {
        EventMessage {
            action: Some("die".into()),
            actor: Some(EventActor {
                id: Some("c0ffee".into()),
                attributes: Some(HashMap::from([
                    (labels::MANAGED_BY.to_owned(), "pumphouse".to_owned()),
                    (labels::CLUSTER.to_owned(), cluster.to_owned()),
                    (labels::FLOW.to_owned(), "6f1c".to_owned()),
                    (labels::INSTANCE.to_owned(), "i-1".to_owned()),
                    ("exitCode".to_owned(), "137".to_owned()),
                ])),
            }),
            time_nano: Some(42),
            ..Default::default()
        }
    }

    #[test]
    fn die_events_become_exits() {
        let exit = exit_from_event(&die_event("dev"), "dev").unwrap();
        assert_eq!(
            exit,
            Exit {
                container_id: "c0ffee".into(),
                flow_id: "6f1c".into(),
                instance_id: Some("i-1".into()),
                code: Some(137),
                time_nanos: Some(42),
            }
        );
        assert_eq!(
            exit.into_event(true),
            BackendEvent::Exited {
                flow_id: "6f1c".into(),
                instance_id: Some("i-1".into()),
                code: Some(137),
                oom: true,
            }
        );
    }

    #[test]
    fn other_events_and_other_clusters_are_ignored() {
        assert_eq!(exit_from_event(&die_event("prod"), "dev"), None);
        let mut start = die_event("dev");
        start.action = Some("start".into());
        assert_eq!(exit_from_event(&start, "dev"), None);
    }

    #[test]
    fn filters_select_our_dying_containers() {
        let filters = exit_filters("dev");
        assert_eq!(
            filters["label"],
            vec![
                "app.kubernetes.io/managed-by=pumphouse".to_owned(),
                "pumphouse.dev/cluster=dev".to_owned()
            ]
        );
        assert_eq!(filters["type"], vec!["container".to_owned()]);
        assert_eq!(filters["event"], vec!["die".to_owned()]);
    }

    #[test]
    fn socket_comes_from_config_then_docker_host_then_default() {
        assert_eq!(
            resolve_socket(Some("/run/d.sock"), Some("unix:///x")).unwrap(),
            "/run/d.sock"
        );
        assert_eq!(
            resolve_socket(None, Some("unix:///x.sock")).unwrap(),
            "unix:///x.sock"
        );
        assert_eq!(resolve_socket(None, None).unwrap(), "/var/run/docker.sock");
        assert_eq!(
            resolve_socket(None, Some("")).unwrap(),
            "/var/run/docker.sock"
        );
        let err = resolve_socket(None, Some("tcp://h:2375")).unwrap_err();
        assert!(
            matches!(err, BackendError::DockerUnreachable { socket, .. } if socket == "tcp://h:2375")
        );
    }

    #[test]
    fn since_is_seconds_dot_nanoseconds() {
        assert_eq!(
            since_param(1_700_000_000_000_000_001),
            "1700000000.000000001"
        );
    }
}
