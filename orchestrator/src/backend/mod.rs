//! Backends run pumps: one per flow, started, stopped, inspected and listed by flow id.
//!
//! Every backend returns the same [`PumpStatus`] and [`BackendEvent`] so the supervisor never
//! needs to know which one it drives. Backend-specific details (a container id, a pid) live in
//! [`PumpStatus::pump_ref`].
//!
//! # Guarantees
//! - `start` replaces whatever pump the flow had: after it returns, exactly one pump runs for
//!   the flow, with the spec's instance id.
//! - `stop` is idempotent: stopping a flow with no pump succeeds.
//! - `events` reports each pump exit the orchestrator did not ask for, once, with its exit code
//!   and whether it was OOM-killed. Exits caused by `stop`, `park` or a replacing `start` are not
//!   reported: the caller knows about them already, and a late report could be mistaken for a
//!   crash of the pump that replaced it.

pub mod docker;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod process;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::BoxStream;

/// Label keys put on every pump container, so pumps can be found (and adopted) by label.
pub mod labels {
    /// Always `pumphouse`.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    pub const FLOW: &str = "pumphouse.dev/flow";
    /// The flow's name, for humans reading `docker ps` (container names carry only the id).
    pub const FLOW_NAME: &str = "pumphouse.dev/flow-name";
    pub const TENANT: &str = "pumphouse.dev/tenant";
    pub const INSTANCE: &str = "pumphouse.dev/instance";
    /// The orchestrator deployment that owns the pump (the `--cluster` setting); two
    /// orchestrators sharing one engine never touch each other's pumps.
    pub const CLUSTER: &str = "pumphouse.dev/cluster";
    /// A hash of everything the container was created with, so a parked container is restarted
    /// only when nothing about it would change.
    pub const CONFIG_HASH: &str = "pumphouse.dev/config-hash";
    pub const MANAGED_BY_VALUE: &str = "pumphouse";
}

/// Everything a backend needs to start one pump.
#[derive(Clone, PartialEq)]
pub struct PumpSpec {
    pub flow_id: String,
    pub tenant_id: String,
    /// Unique per start; pumps echo it in their events.
    pub instance_id: String,
    /// The flow's name, for humans reading `docker ps`.
    pub flow_name: String,
    /// Image to run (Docker, Kubernetes); the process backend ignores it.
    pub image: Option<String>,
    /// Contract variables and the flow's own env.
    pub env: BTreeMap<String, String>,
    /// Variables whose values must not be shown wherever the pump's definition can be read:
    /// the flow config, Redis credentials, the flow's secrets. Kubernetes keeps them in a Secret
    /// the pod refers to; Docker and process add them to the environment. Never log values.
    pub secret_env: BTreeMap<String, String>,
    /// Names in `secret_env` whose values are issued anew for every launch (the pump's Redis
    /// password). They do not make a pump different: a parked pump started again keeps the
    /// values it was created with, and the supervisor keeps those working.
    pub per_launch_env: BTreeSet<String>,
    pub resources: Resources,
    /// How long a pump may drain after SIGTERM before it is killed.
    pub stop_grace: Duration,
}

impl PumpSpec {
    /// `env` and `secret_env` together: what the pump process sees.
    pub fn full_env(&self) -> BTreeMap<String, String> {
        let mut all = self.env.clone();
        all.extend(self.secret_env.iter().map(|(k, v)| (k.clone(), v.clone())));
        all
    }

    /// The spec with every per-launch value blanked: what decides whether two pumps are the
    /// same.
    pub fn without_per_launch_values(&self) -> PumpSpec {
        let mut spec = self.clone();
        for name in &self.per_launch_env {
            if let Some(v) = spec.secret_env.get_mut(name) {
                v.clear();
            }
        }
        spec
    }
}

impl fmt::Debug for PumpSpec {
    // Env values may be secrets; only their names are printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PumpSpec")
            .field("flow_id", &self.flow_id)
            .field("tenant_id", &self.tenant_id)
            .field("instance_id", &self.instance_id)
            .field("image", &self.image)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("secret_env", &self.secret_env.keys().collect::<Vec<_>>())
            .field("resources", &self.resources)
            .field("stop_grace", &self.stop_grace)
            .finish()
    }
}

/// Limits from the manifest; `None` means the backend's default (no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Resources {
    pub memory_bytes: Option<i64>,
    /// In thousandths of a CPU (`500` is half a core).
    pub cpu_millis: Option<i64>,
}

/// The one status type every backend reports.
#[derive(Debug, Clone, PartialEq)]
pub struct PumpStatus {
    pub flow_id: String,
    pub instance_id: Option<String>,
    pub state: PumpState,
    /// Container id, pid, pod name: whatever names the pump in its backend.
    pub pump_ref: String,
    /// The backend's object was changed by someone else since the orchestrator last wrote it
    /// (a Deployment edited by hand): starting the same spec again puts it back.
    pub drifted: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum PumpState {
    /// Created, process not yet running.
    Starting,
    Running,
    /// Ended; `oom` when the kernel killed it for memory.
    Exited {
        code: Option<i64>,
        oom: bool,
    },
}

/// Something that happened to a pump, pushed by the backend.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendEvent {
    Exited {
        flow_id: String,
        instance_id: Option<String>,
        code: Option<i64>,
        oom: bool,
    },
}

/// Which backend to use, as given by `--backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Docker if its socket answers, else process.
    Auto,
    Docker,
    Process,
    #[cfg(feature = "kubernetes")]
    Kubernetes,
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "docker" => Ok(Self::Docker),
            "process" => Ok(Self::Process),
            #[cfg(feature = "kubernetes")]
            "kubernetes" => Ok(Self::Kubernetes),
            #[cfg(not(feature = "kubernetes"))]
            "kubernetes" => Err("this pumphouse was built without the kubernetes backend; \
                 build it with `cargo build --release --features pumphouse/kubernetes`, or use docker or process"
                .into()),
            other => Err(format!(
                "unknown backend `{other}`; choose one of auto, docker, process, kubernetes"
            )),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackendError {
    #[error("cannot reach the Docker engine at {socket}: {source}; start dockerd, or run with --backend process")]
    DockerUnreachable {
        socket: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the pump image `{image}` is not present in the Docker engine; build it with ops/build-images.sh")]
    ImageMissing { image: String },
    #[error("flow {flow_id} has no pump image, and the docker backend needs one; give the flow an image or set the orchestrator's default pump image")]
    NoImage { flow_id: String },
    #[error("Docker refused to {action} the pump of flow {flow_id}: {source}")]
    Docker {
        action: &'static str,
        flow_id: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("the pump binary `{path}` cannot be run: {source}; build it with `cargo build -p pumphouse-pump`, or pass --pump-binary")]
    PumpBinary {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot signal the pump process of flow {flow_id}: {message}")]
    Signal { flow_id: String, message: String },
    #[cfg(feature = "kubernetes")]
    #[error(transparent)]
    Kubernetes(Box<kubernetes::KubernetesError>),
}

/// A place pumps run.
#[async_trait]
pub trait Backend: Send + Sync {
    /// A short name for logs and the status API: `docker`, `process`.
    fn name(&self) -> &'static str;

    /// Starts the flow's pump, replacing any pump it had.
    async fn start(&self, spec: &PumpSpec) -> Result<PumpStatus, BackendError>;

    /// Sends SIGTERM, waits up to `grace`, then kills; removes what the pump left behind.
    async fn stop(&self, flow_id: &str, grace: Duration) -> Result<(), BackendError>;

    /// Stops the pump like `stop`, but may keep what it needs to start the same pump again
    /// faster (Docker keeps the stopped container). Used when a flow scales to zero.
    async fn park(&self, flow_id: &str, grace: Duration) -> Result<(), BackendError> {
        self.stop(flow_id, grace).await
    }

    /// Whether `start` may start a parked pump again instead of making a new one. When it
    /// does, the pump keeps the per-launch values it was created with, and `start` answers
    /// with the parked pump's `pump_ref`.
    fn restarts_parked_pumps(&self) -> bool {
        false
    }

    /// The flow's pump, if it has one (running or exited and not yet removed).
    async fn inspect(&self, flow_id: &str) -> Result<Option<PumpStatus>, BackendError>;

    /// Every pump this orchestrator owns.
    async fn list(&self) -> Result<Vec<PumpStatus>, BackendError>;

    /// Whether the backend can do its work now, for `/readyz`: by default, whether it can list
    /// its pumps.
    async fn ready(&self) -> Result<(), BackendError> {
        self.list().await.map(|_| ())
    }

    /// The last `tail` lines of the pump's output (stdout and stderr, interleaved).
    async fn logs(&self, flow_id: &str, tail: usize) -> Result<Vec<String>, BackendError>;

    /// The last `tail` lines, then each new line as the pump writes it, until the pump ends.
    fn follow_logs(&self, flow_id: &str, tail: usize) -> BoxStream<'static, String>;

    /// What the backend itself says of the pump's last ending, in its own terms, for the
    /// flow's status (Kubernetes: `CrashLoopBackOff`, `OOMKilled`, the restart count). `None`
    /// when it says nothing the exit code does not.
    async fn exit_detail(&self, _flow_id: &str) -> Option<String> {
        None
    }

    /// Memory the flow's pump uses now, and its limit if it has one, in bytes. `None` when the
    /// pump is not running or the backend cannot tell.
    async fn memory(&self, _flow_id: &str) -> Option<(i64, Option<i64>)> {
        None
    }

    /// Pump exits as they happen. Each call opens a new subscription.
    fn events(&self) -> BoxStream<'static, BackendEvent>;
}

#[cfg(test)]
mod tests {
    use super::BackendKind;

    #[test]
    fn backends_parse_by_name() {
        assert_eq!("docker".parse(), Ok(BackendKind::Docker));
        assert_eq!("process".parse(), Ok(BackendKind::Process));
        let err = "podman".parse::<BackendKind>().unwrap_err();
        assert!(
            err.contains("choose one of auto, docker, process, kubernetes"),
            "{err}"
        );
    }

    /// A binary built without the feature says how to get one that has it.
    #[cfg(not(feature = "kubernetes"))]
    #[test]
    fn kubernetes_without_the_feature_names_the_cargo_flag() {
        let err = "kubernetes".parse::<BackendKind>().unwrap_err();
        assert!(err.contains("--features pumphouse/kubernetes"), "{err}");
    }
}
