//! The Kubernetes backend: per flow one Deployment and one Secret in the pumps' namespace.
//!
//! Both objects are named `pumphouse-{cluster}-{flow_id}`, carry the same labels as Docker
//! containers (flow, tenant, managed-by, cluster, instance) and are written with server-side
//! apply under the field manager `pumphouse`, so a `start` is one idempotent request per object
//! whatever existed before. The Secret holds `PumpSpec::secret_env` (the flow config, the Redis
//! URL, the flow's secrets); the pod refers to its keys and never carries the values, so anyone
//! who may read Deployments cannot read them. The Deployment uses the `Recreate` strategy: a new
//! instance's pod is created only after the old one is gone, so a flow never has two pumps.
//!
//! Kubernetes restarts a crashed container in place (a Deployment's pods always restart); the
//! supervisor still sees every crash, through a watch on the pods, and decides itself what to do
//! with its own back-off and crash-loop limit. A container is reported when it terminates in a
//! pod nobody is deleting: pods the orchestrator removes (scale to zero, delete, replacement)
//! always get a deletion timestamp before their container is killed, so those exits are not news.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::stream::{self, BoxStream, StreamExt as _};
use futures_util::AsyncBufReadExt as _;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerStatus, EnvVar, EnvVarSource, LocalObjectReference, Pod,
    PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecurityContext,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::ByteString;
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::Client;

#[cfg(test)]
mod tests;

use super::{labels, Backend, BackendError, BackendEvent, PumpSpec, PumpState, PumpStatus};

/// The field manager every apply is made under; `kubectl get -o yaml --show-managed-fields`
/// shows it as the owner of the fields pumphouse sets.
pub const FIELD_MANAGER: &str = "pumphouse";
/// The pump's container in its pod.
pub const CONTAINER: &str = "pump";
/// On the pod template: the Secret's resourceVersion, so a changed Secret rolls the pod (a pod
/// reads secret env only when it starts) while an unchanged one leaves the pod alone.
pub const SECRET_VERSION: &str = "pumphouse.dev/secret-version";
/// On the Deployment: its `metadata.generation` after pumphouse's last write. Any change to the
/// spec bumps the generation, so a Deployment whose generation has moved on was edited by
/// someone else (`kubectl edit`, `kubectl scale`), and reconcile applies the flow's spec again.
/// For a Deployment a change of annotations bumps it too (they carry rollback history), this
/// one's included: see [`KubernetesBackend::note_generation`].
pub const APPLIED_GENERATION: &str = "pumphouse.dev/applied-generation";
/// `nobody:nogroup`, as on Docker: pump images carry no `/etc/passwd`.
const PUMP_UID: i64 = 65534;
/// How long past the grace period `stop` waits for a pod to go: the kubelet notices a
/// deletion within seconds, and the kill after the grace period takes a moment more.
const STOP_SLACK: Duration = Duration::from_secs(30);
/// Old ReplicaSets kept per Deployment; every start with a new instance makes one.
const REVISION_HISTORY: i32 = 2;

/// Waiting reasons that mean the container will not start until something changes (an image
/// that cannot be pulled, a spec the runtime refuses): the pump counts as exited, and its
/// message takes the place of the log.
const START_FAILURES: &[&str] = &[
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// Where the orchestrator puts its pumps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubernetesConfig {
    /// The pumps' namespace; `None` means the client's default (in a pod: its own namespace).
    pub namespace: Option<String>,
    /// Value of the [`labels::CLUSTER`] label and part of every object's name.
    pub cluster: String,
    /// A Secret of type `kubernetes.io/dockerconfigjson` in the pumps' namespace, for private
    /// pump images.
    pub image_pull_secret: Option<String>,
}

/// What went wrong talking to Kubernetes. The API server's own message is kept for the
/// Deployment, whose body holds no secret values; for the Secret it is left out, since a
/// validation message may quote a value. kube's errors already say their own causes in their
/// message, so they are kept as `cause`, not as an error source: a printed chain would say each
/// cause again (a missing kubeconfig was named four times).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KubernetesError {
    #[error("cannot configure a Kubernetes client: {cause}; run the orchestrator in a pod with a service account, or point KUBECONFIG at a kubeconfig")]
    Config { cause: kube::Error },
    #[error("`{value}` cannot be used as the {what}: it must be 1 to {max} lowercase letters, digits or `-`, starting and ending with a letter or digit; change --{flag}")]
    BadName {
        what: &'static str,
        flag: &'static str,
        value: String,
        max: usize,
    },
    #[error("cannot {action} {subject}: {cause}; check that the Kubernetes API server is reachable from the orchestrator")]
    Unreachable {
        action: &'static str,
        /// `of flow <id>`, or `in namespace <ns>` for what concerns every pump.
        subject: String,
        cause: kube::Error,
    },
    #[error("Kubernetes refused to {action} {subject} ({code} {reason}){message}; {hint}")]
    Refused {
        action: &'static str,
        subject: String,
        code: u16,
        reason: String,
        /// `: <the server's message>`, or empty when it may hold secrets.
        message: String,
        hint: String,
    },
    #[error("flow {flow_id} has no pump image, and the kubernetes backend needs one; give the flow an image or set the orchestrator's default pump image")]
    NoImage { flow_id: String },
}

impl From<KubernetesError> for BackendError {
    fn from(e: KubernetesError) -> Self {
        BackendError::Kubernetes(Box::new(e))
    }
}

/// Runs each flow's pump as a one-replica Deployment.
#[derive(Clone)]
pub struct KubernetesBackend {
    client: Client,
    /// The same sign-in without a read timeout, for followed logs: a quiet pump sends nothing
    /// for as long as it likes, and the stream must not end under its reader.
    streams: Client,
    namespace: String,
    config: KubernetesConfig,
}

impl std::fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend")
            .field("namespace", &self.namespace)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KubernetesBackend {
    /// Builds a client from the environment (in-cluster service account, else KUBECONFIG) and
    /// lists the namespace once, so a cluster that cannot be reached, or RBAC that forbids the
    /// orchestrator its work, is reported at start-up rather than on the first pump.
    /// `request_timeout` bounds each request's wait for an answer.
    pub async fn connect(
        config: KubernetesConfig,
        request_timeout: Duration,
    ) -> Result<KubernetesBackend, BackendError> {
        let mut kube_config = kube::Config::infer()
            .await
            .map_err(|e| KubernetesError::Config {
                cause: kube::Error::InferConfig(e),
            })?;
        kube_config.read_timeout = Some(request_timeout);
        let client = Client::try_from(kube_config.clone())
            .map_err(|cause| KubernetesError::Config { cause })?;
        kube_config.read_timeout = None;
        let streams =
            Client::try_from(kube_config).map_err(|cause| KubernetesError::Config { cause })?;
        let mut backend = KubernetesBackend::with_client(client, config)?;
        backend.streams = streams;
        backend.check().await?;
        Ok(backend)
    }

    /// [`KubernetesBackend::connect`] on a client of the caller's (the tests sign in as the
    /// chart's ServiceAccount with a token of their own).
    pub async fn connect_with_client(
        client: Client,
        config: KubernetesConfig,
    ) -> Result<KubernetesBackend, BackendError> {
        let backend = KubernetesBackend::with_client(client, config)?;
        backend.check().await?;
        Ok(backend)
    }

    /// A backend on an existing client (tests hand it kube's mock service).
    pub fn with_client(
        client: Client,
        config: KubernetesConfig,
    ) -> Result<KubernetesBackend, BackendError> {
        let namespace = config
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        check_label("namespace", "kube-namespace", &namespace, 63)?;
        // The object names are `pumphouse-{cluster}-{uuid}` and the cluster is a label value:
        // 63 characters at most, and the 47 the rest of the name takes leave 16 (a Deployment's
        // pod names add 17 more, and a pod's host name is cut at 63).
        check_label("cluster name", "cluster", &config.cluster, 16)?;
        Ok(KubernetesBackend {
            streams: client.clone(),
            client,
            namespace,
            config,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The name of the flow's Deployment and Secret.
    pub fn object_name(&self, flow_id: &str) -> String {
        format!("pumphouse-{}-{flow_id}", self.config.cluster)
    }

    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// Selects everything this orchestrator owns in the namespace.
    fn owner_selector(&self) -> String {
        format!(
            "{}={},{}={}",
            labels::MANAGED_BY,
            labels::MANAGED_BY_VALUE,
            labels::CLUSTER,
            self.config.cluster
        )
    }

    fn flow_selector(&self, flow_id: &str) -> String {
        format!("{},{}={flow_id}", self.owner_selector(), labels::FLOW)
    }

    /// Lists the pumps' Deployments, then makes a Secret in a dry run: a list in a namespace
    /// that does not exist answers an empty list, and only a write says the namespace is
    /// missing (a 404), which would otherwise first show when a flow starts.
    async fn check(&self) -> Result<(), BackendError> {
        self.deployments()
            .list_metadata(
                &ListParams::default()
                    .labels(&self.owner_selector())
                    .limit(1),
            )
            .await
            .map_err(|e| self.error("list the Deployments", "*", e, false))?;
        let mut probe = Secret::default();
        probe.metadata.name = Some(format!("pumphouse-{}-readiness", self.config.cluster));
        let params = PostParams {
            dry_run: true,
            field_manager: Some(FIELD_MANAGER.to_owned()),
        };
        match self.secrets().create(&params, &probe).await {
            // Someone made a Secret of that name: the namespace exists and creating is allowed.
            Ok(_) => {}
            Err(kube::Error::Api(resp)) if resp.code == 409 => {}
            Err(e) => return Err(self.error("create a Secret (dry run)", "*", e, false)),
        }
        tracing::debug!(namespace = %self.namespace, cluster = %self.config.cluster, "connected to Kubernetes");
        Ok(())
    }

    /// The Secret of one pump: `secret_env`, and nothing else.
    pub fn secret(&self, spec: &PumpSpec) -> Secret {
        Secret {
            metadata: self.metadata(spec),
            type_: Some("Opaque".to_owned()),
            data: Some(
                spec.secret_env
                    .iter()
                    .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    /// The Deployment of one pump: labels, env (plain values and Secret references), limits and
    /// hardening, all from the spec. `secret_version` is the applied Secret's resourceVersion.
    pub fn deployment(
        &self,
        spec: &PumpSpec,
        secret_version: Option<&str>,
    ) -> Result<Deployment, BackendError> {
        let image = spec.image.clone().ok_or_else(|| KubernetesError::NoImage {
            flow_id: spec.flow_id.clone(),
        })?;
        let name = self.object_name(&spec.flow_id);
        let mut env: Vec<EnvVar> = spec
            .env
            .iter()
            .filter(|(k, _)| !spec.secret_env.contains_key(*k))
            .map(|(k, v)| EnvVar {
                name: k.clone(),
                value: Some(v.clone()),
                value_from: None,
            })
            .collect();
        env.extend(spec.secret_env.keys().map(|k| EnvVar {
            name: k.clone(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: name.clone(),
                    key: k.clone(),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
        }));
        let mut limits = BTreeMap::new();
        if let Some(bytes) = spec.resources.memory_bytes {
            limits.insert("memory".to_owned(), Quantity(bytes.to_string()));
        }
        if let Some(millis) = spec.resources.cpu_millis {
            limits.insert("cpu".to_owned(), Quantity(format!("{millis}m")));
        }
        // Requests equal to limits: the scheduler reserves what the pump may use, and the pod
        // is in the Guaranteed class, the last to be evicted under node pressure.
        let resources = (!limits.is_empty()).then(|| ResourceRequirements {
            requests: Some(limits.clone()),
            limits: Some(limits),
            ..Default::default()
        });
        let container = Container {
            name: CONTAINER.to_owned(),
            image: Some(image),
            env: Some(env),
            resources,
            security_context: Some(SecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(PUMP_UID),
                run_as_group: Some(PUMP_UID),
                read_only_root_filesystem: Some(true),
                allow_privilege_escalation: Some(false),
                privileged: Some(false),
                capabilities: Some(Capabilities {
                    drop: Some(vec!["ALL".to_owned()]),
                    add: None,
                }),
                seccomp_profile: Some(runtime_default_seccomp()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut template_meta = self.metadata(spec);
        template_meta.name = None;
        template_meta.namespace = None;
        template_meta.annotations =
            secret_version.map(|v| BTreeMap::from([(SECRET_VERSION.to_owned(), v.to_owned())]));
        Ok(Deployment {
            metadata: self.metadata(spec),
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                // Immutable once created, so it names only what never changes for a flow.
                selector: LabelSelector {
                    match_labels: Some(self.selector_labels(&spec.flow_id)),
                    match_expressions: None,
                },
                strategy: Some(DeploymentStrategy {
                    type_: Some("Recreate".to_owned()),
                    rolling_update: None,
                }),
                revision_history_limit: Some(REVISION_HISTORY),
                template: PodTemplateSpec {
                    metadata: Some(template_meta),
                    spec: Some(PodSpec {
                        containers: vec![container],
                        automount_service_account_token: Some(false),
                        // Service links would add a variable per Service in the namespace to
                        // the pump's env, unasked.
                        enable_service_links: Some(false),
                        termination_grace_period_seconds: Some(grace_secs(spec.stop_grace)),
                        image_pull_secrets: self
                            .config
                            .image_pull_secret
                            .as_ref()
                            .map(|s| vec![LocalObjectReference { name: s.clone() }]),
                        security_context: Some(PodSecurityContext {
                            run_as_non_root: Some(true),
                            run_as_user: Some(PUMP_UID),
                            run_as_group: Some(PUMP_UID),
                            seccomp_profile: Some(runtime_default_seccomp()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    }),
                },
                ..Default::default()
            }),
            status: None,
        })
    }

    fn selector_labels(&self, flow_id: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (
                labels::MANAGED_BY.to_owned(),
                labels::MANAGED_BY_VALUE.to_owned(),
            ),
            (labels::CLUSTER.to_owned(), self.config.cluster.clone()),
            (labels::FLOW.to_owned(), flow_id.to_owned()),
        ])
    }

    fn metadata(&self, spec: &PumpSpec) -> ObjectMeta {
        let mut labels = self.selector_labels(&spec.flow_id);
        labels.insert(labels::FLOW_NAME.to_owned(), spec.flow_name.clone());
        labels.insert(labels::TENANT.to_owned(), spec.tenant_id.clone());
        labels.insert(labels::INSTANCE.to_owned(), spec.instance_id.clone());
        ObjectMeta {
            name: Some(self.object_name(&spec.flow_id)),
            namespace: Some(self.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        }
    }

    fn error(
        &self,
        action: &'static str,
        flow_id: &str,
        e: kube::Error,
        secret: bool,
    ) -> BackendError {
        // "*" stands for every pump: a list, the start-up check.
        let subject = if flow_id == "*" {
            format!("in namespace `{}`", self.namespace)
        } else {
            format!("of flow {flow_id}")
        };
        let kube::Error::Api(resp) = e else {
            return KubernetesError::Unreachable {
                action,
                subject,
                cause: e,
            }
            .into();
        };
        let ns = &self.namespace;
        let hint = match resp.code {
            401 => "the orchestrator's credentials were not accepted; check its service account token or kubeconfig".to_owned(),
            403 => format!("the orchestrator's service account lacks this permission in namespace `{ns}`; install the chart's Role (charts/pumphouse) or grant the verbs listed in docs/kubernetes.md"),
            404 => format!("does namespace `{ns}` exist? create it or set --kube-namespace"),
            409 => "someone else changed the object at the same time; the next reconcile retries".to_owned(),
            422 => "the flow's manifest makes an object Kubernetes does not accept: check its image name, resources and env names".to_owned(),
            _ => "the API server could not do it now; the next reconcile retries".to_owned(),
        };
        KubernetesError::Refused {
            action,
            subject,
            code: resp.code,
            reason: resp.reason,
            message: if secret {
                String::new()
            } else {
                format!(": {}", resp.message)
            },
            hint,
        }
        .into()
    }

    /// One server-side apply; a 409 (someone else's write racing ours) is tried once more, as
    /// a forced apply cannot conflict on ownership and a second race is unlikely.
    async fn apply<K>(&self, api: &Api<K>, name: &str, obj: &K) -> Result<K, kube::Error>
    where
        K: kube::Resource
            + Clone
            + serde::Serialize
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        match api.patch(name, &params, &Patch::Apply(obj)).await {
            Err(kube::Error::Api(resp)) if resp.code == 409 => {
                tracing::debug!(name, "apply conflicted; trying once more");
                api.patch(name, &params, &Patch::Apply(obj)).await
            }
            other => other,
        }
    }

    /// Records the generation a write of ours left the Deployment at ([`APPLIED_GENERATION`]).
    /// Writing the annotation is itself counted as a change, so the value written is the
    /// generation that write will leave; should a server count otherwise, what it answers is
    /// written once more. A failure only costs one needless apply at the next reconcile, so it
    /// is logged.
    async fn note_generation(&self, flow_id: &str, written: &Deployment) {
        let Some(generation) = written.metadata.generation else {
            return;
        };
        if applied_generation(written) == Some(generation) {
            return;
        }
        let name = self.object_name(flow_id);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let mut want = generation + 1;
        for _ in 0..2 {
            let patch = serde_json::json!({"metadata": {"annotations": {APPLIED_GENERATION: want.to_string()}}});
            match self
                .deployments()
                .patch(&name, &params, &Patch::Merge(&patch))
                .await
            {
                Ok(now) => match now.metadata.generation {
                    Some(g) if g != want => want = g,
                    _ => return,
                },
                Err(e) => {
                    tracing::warn!(flow_id, error = %self.error("annotate the Deployment", flow_id, e, false), "the next reconcile applies the pump's spec again");
                    return;
                }
            }
        }
        tracing::warn!(flow_id, "the Deployment's generation moves with each annotation write; the next reconcile applies the pump's spec again");
    }

    /// Deletes one object; gone already is fine.
    async fn delete<K>(&self, api: &Api<K>, name: &str) -> Result<(), kube::Error>
    where
        K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(resp)) if resp.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Waits until the flow has no pods left. Past `grace` and the kubelet's own slack the
    /// pods are left to Kubernetes (which kills them at their grace period anyway) with a
    /// warning: a node that stopped reporting must not hold a stop forever.
    async fn await_no_pods(&self, flow_id: &str, grace: Duration) -> Result<(), BackendError> {
        let deadline = tokio::time::Instant::now() + grace + STOP_SLACK;
        let mut pause = Duration::from_millis(100);
        loop {
            // A finished pod (an evicted one is Failed) runs nothing and holds nothing, and the
            // ReplicaSet controller does not delete it on scale-down: waiting for it would hold
            // every scale-down for the whole slack.
            let pods: Vec<Pod> = self
                .flow_pods(flow_id)
                .await?
                .into_iter()
                .filter(|p| !finished(p))
                .collect();
            if pods.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(flow_id, pods = pods.len(), "the pump's pod is still terminating after its grace period; leaving it to Kubernetes");
                return Ok(());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
    }

    /// The last `tail` lines of the pump's container in `pod`, or of the one before it.
    async fn container_log(
        &self,
        flow_id: &str,
        pod: &str,
        tail: usize,
        previous: bool,
    ) -> Result<Vec<String>, BackendError> {
        let params = LogParams {
            container: Some(CONTAINER.to_owned()),
            tail_lines: Some(i64::try_from(tail).unwrap_or(i64::MAX)),
            previous,
            ..Default::default()
        };
        match self.pods().logs(pod, &params).await {
            Ok(text) => Ok(text.lines().map(str::to_owned).collect()),
            // Gone meanwhile, or no container started yet: nothing to show.
            Err(kube::Error::Api(resp)) if resp.code == 404 || resp.code == 400 => Ok(Vec::new()),
            Err(e) => Err(self.error("read the logs of the pod", flow_id, e, false)),
        }
    }

    /// The flow's pods, newest first.
    async fn flow_pods(&self, flow_id: &str) -> Result<Vec<Pod>, BackendError> {
        let mut pods = self
            .pods()
            .list(&ListParams::default().labels(&self.flow_selector(flow_id)))
            .await
            .map_err(|e| self.error("list the pods", flow_id, e, false))?
            .items;
        pods.sort_by(|a, b| {
            b.metadata
                .creation_timestamp
                .cmp(&a.metadata.creation_timestamp)
        });
        Ok(pods)
    }
}

/// Whether the pod has ended for good: phase `Succeeded` or `Failed` (evicted, say).
fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        localhost_profile: None,
    }
}

/// Names Kubernetes takes as a namespace or in a label value: a DNS label.
fn check_label(
    what: &'static str,
    flag: &'static str,
    value: &str,
    max: usize,
) -> Result<(), BackendError> {
    let ok = !value.is_empty()
        && value.len() <= max
        && value
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(KubernetesError::BadName {
            what,
            flag,
            value: value.to_owned(),
            max,
        }
        .into())
    }
}

/// Kubernetes' grace period is whole seconds: round up, and never 0 (an instant kill).
fn grace_secs(grace: Duration) -> i64 {
    let secs = grace.as_secs() + u64::from(grace.subsec_nanos() > 0);
    i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
}

fn pump_container(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == CONTAINER)
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a String> {
    meta.labels.as_ref()?.get(key)
}

/// The pod that is the flow's pump now: the newest one nobody is deleting, of the instance the
/// Deployment runs.
fn current_pod<'a>(pods: &'a [Pod], instance: Option<&String>) -> Option<&'a Pod> {
    pods.iter().find(|p| {
        p.metadata.deletion_timestamp.is_none()
            && (instance.is_none() || label(&p.metadata, labels::INSTANCE) == instance)
    })
}

/// Where the pump of one pod stands.
pub fn pod_state(pod: &Pod) -> PumpState {
    let exited = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated| PumpState::Exited {
        code: Some(i64::from(t.exit_code)),
        oom: t.reason.as_deref() == Some("OOMKilled"),
    };
    if let Some(c) = pump_container(pod) {
        let state = c.state.as_ref();
        if state.and_then(|s| s.running.as_ref()).is_some() {
            return PumpState::Running;
        }
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            return exited(t);
        }
        if let Some(w) = state.and_then(|s| s.waiting.as_ref()) {
            // Waiting after a crash (CrashLoopBackOff): the crash is what the pump did last.
            if let Some(t) = c.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
                return exited(t);
            }
            if w.reason
                .as_deref()
                .is_some_and(|r| START_FAILURES.contains(&r))
            {
                return PumpState::Exited {
                    code: None,
                    oom: false,
                };
            }
        }
    }
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Failed" | "Succeeded") => PumpState::Exited {
            code: None,
            oom: false,
        },
        _ => PumpState::Starting,
    }
}

/// Why the pump's container cannot start (`ImagePullBackOff: Back-off pulling image …`), when
/// that is the case: there is no log to show, so this is shown instead.
pub fn start_failure(pod: &Pod) -> Option<String> {
    let waiting = pump_container(pod)?.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    START_FAILURES
        .contains(&reason)
        .then(|| match &waiting.message {
            Some(m) if !m.is_empty() => format!("{reason}: {m}"),
            _ => reason.to_owned(),
        })
}

/// Why the Deployment's ReplicaSet cannot make the pump's pod, when admission refuses it (a
/// ResourceQuota, a PodSecurity level, a policy): the server's own words, as the log tail of a
/// pump that never got a pod.
fn replica_failure(deployment: &Deployment) -> Option<String> {
    let condition = deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "ReplicaFailure" && c.status == "True")?;
    Some(format!(
        "{}: {}",
        condition.reason.as_deref().unwrap_or("ReplicaFailure"),
        condition.message.as_deref().unwrap_or("no message")
    ))
}

/// The generation pumphouse last left the Deployment at, from its annotation.
fn applied_generation(deployment: &Deployment) -> Option<i64> {
    deployment
        .metadata
        .annotations
        .as_ref()?
        .get(APPLIED_GENERATION)?
        .parse()
        .ok()
}

fn status_of(name: String, deployment: &Deployment, pods: &[Pod]) -> Option<PumpStatus> {
    let flow_id = label(&deployment.metadata, labels::FLOW)?.clone();
    let instance = label(&deployment.metadata, labels::INSTANCE);
    let replicas = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let (state, pump_ref) = if replicas == 0 {
        // Scaled to zero: parked, as a stopped Docker container is.
        (
            PumpState::Exited {
                code: None,
                oom: false,
            },
            name,
        )
    } else {
        match current_pod(pods, instance) {
            Some(pod) => (pod_state(pod), pod.metadata.name.clone().unwrap_or(name)),
            // Refused a pod: nothing changes until someone changes the quota or policy.
            None if replica_failure(deployment).is_some() => (
                PumpState::Exited {
                    code: None,
                    oom: false,
                },
                name,
            ),
            // Created, not yet given a pod by the ReplicaSet.
            None => (PumpState::Starting, name),
        }
    };
    Some(PumpStatus {
        drifted: deployment.metadata.generation != applied_generation(deployment),
        flow_id,
        instance_id: instance.cloned(),
        state,
        pump_ref,
    })
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    async fn start(&self, spec: &PumpSpec) -> Result<PumpStatus, BackendError> {
        let flow_id = spec.flow_id.as_str();
        let name = self.object_name(flow_id);
        // The image is checked before anything is written, so a flow without one leaves nothing.
        self.deployment(spec, None)?;
        // The Secret first: a pod whose Secret is missing would sit in CreateContainerConfigError.
        let secret = self
            .apply(&self.secrets(), &name, &self.secret(spec))
            .await
            .map_err(|e| self.error("apply the Secret", flow_id, e, true))?;
        let deployment = self.deployment(spec, secret.metadata.resource_version.as_deref())?;
        let applied = self.apply(&self.deployments(), &name, &deployment).await;
        if let Ok(written) = &applied {
            self.note_generation(flow_id, written).await;
        }
        if let Err(e) = applied {
            // A start that failed leaves nothing: the flow goes to `error`, which has no pump,
            // and a Secret alone would keep the flow's config and credentials in the cluster.
            if let Err(cleanup) = self.delete(&self.secrets(), &name).await {
                tracing::warn!(flow_id, error = %self.error("delete the Secret", flow_id, cleanup, true), "a failed start left its Secret behind");
            }
            return Err(self.error("apply the Deployment", flow_id, e, false));
        }
        tracing::debug!(flow_id, instance_id = %spec.instance_id, deployment = %name, namespace = %self.namespace, "pump deployment applied");
        Ok(PumpStatus {
            drifted: false,
            flow_id: flow_id.to_owned(),
            instance_id: Some(spec.instance_id.clone()),
            state: PumpState::Starting,
            pump_ref: name,
        })
    }

    /// Deletes the Deployment and the Secret, then waits until the flow's pods are gone (each
    /// drains for the grace period in its pod spec, then the kubelet kills it), so what the pump
    /// held is handed on only after it has finished or been killed, as with Docker.
    async fn stop(&self, flow_id: &str, grace: Duration) -> Result<(), BackendError> {
        let name = self.object_name(flow_id);
        self.delete(&self.deployments(), &name)
            .await
            .map_err(|e| self.error("delete the Deployment", flow_id, e, false))?;
        self.delete(&self.secrets(), &name)
            .await
            .map_err(|e| self.error("delete the Secret", flow_id, e, true))?;
        self.await_no_pods(flow_id, grace).await
    }

    /// Scales the Deployment to zero, keeping it and its Secret so waking it is one apply, and
    /// waits for the pod to be gone, as `stop` does. A merge patch rather than an apply: an
    /// apply of `replicas` alone would drop every other field the manager set, and a merge
    /// patch of a Deployment that is gone is a 404, not a half-made object.
    async fn park(&self, flow_id: &str, grace: Duration) -> Result<(), BackendError> {
        let name = self.object_name(flow_id);
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_owned()),
            ..Default::default()
        };
        let patch = serde_json::json!({"spec": {"replicas": 0}});
        match self
            .deployments()
            .patch(&name, &params, &Patch::Merge(&patch))
            .await
        {
            Ok(written) => {
                self.note_generation(flow_id, &written).await;
                self.await_no_pods(flow_id, grace).await
            }
            Err(kube::Error::Api(resp)) if resp.code == 404 => Ok(()),
            Err(e) => Err(self.error("scale to zero the Deployment", flow_id, e, false)),
        }
    }

    async fn inspect(&self, flow_id: &str) -> Result<Option<PumpStatus>, BackendError> {
        let name = self.object_name(flow_id);
        let Some(deployment) = self
            .deployments()
            .get_opt(&name)
            .await
            .map_err(|e| self.error("read the Deployment", flow_id, e, false))?
        else {
            return Ok(None);
        };
        let parked = deployment.spec.as_ref().and_then(|s| s.replicas) == Some(0);
        let pods = if parked {
            Vec::new()
        } else {
            self.flow_pods(flow_id).await?
        };
        Ok(status_of(name, &deployment, &pods))
    }

    async fn ready(&self) -> Result<(), BackendError> {
        self.check().await
    }

    async fn list(&self) -> Result<Vec<PumpStatus>, BackendError> {
        let params = ListParams::default().labels(&self.owner_selector());
        let deployments = self
            .deployments()
            .list(&params)
            .await
            .map_err(|e| self.error("list the Deployments", "*", e, false))?;
        let pods = self
            .pods()
            .list(&params)
            .await
            .map_err(|e| self.error("list the pods", "*", e, false))?;
        let mut by_flow: HashMap<String, Vec<Pod>> = HashMap::new();
        for pod in pods.items {
            if let Some(flow) = label(&pod.metadata, labels::FLOW).cloned() {
                by_flow.entry(flow).or_default().push(pod);
            }
        }
        for pods in by_flow.values_mut() {
            pods.sort_by(|a, b| {
                b.metadata
                    .creation_timestamp
                    .cmp(&a.metadata.creation_timestamp)
            });
        }
        Ok(deployments
            .items
            .iter()
            .filter_map(|d| {
                let name = d.metadata.name.clone()?;
                let flow = label(&d.metadata, labels::FLOW)?;
                status_of(name, d, by_flow.get(flow).map_or(&[], Vec::as_slice))
            })
            .collect())
    }

    async fn logs(&self, flow_id: &str, tail: usize) -> Result<Vec<String>, BackendError> {
        let pods = self.flow_pods(flow_id).await?;
        let Some(pod) = pods
            .iter()
            .find(|p| p.metadata.deletion_timestamp.is_none())
            .or(pods.first())
        else {
            // No pod: perhaps none could be made.
            let deployment = self
                .deployments()
                .get_opt(&self.object_name(flow_id))
                .await
                .map_err(|e| self.error("read the Deployment", flow_id, e, false))?;
            return Ok(deployment
                .as_ref()
                .and_then(replica_failure)
                .into_iter()
                .collect());
        };
        if let Some(why) = start_failure(pod) {
            return Ok(vec![why]);
        }
        let Some(pod_name) = pod.metadata.name.as_deref() else {
            return Ok(Vec::new());
        };
        // A container that crashed in this pod left its output in the previous container,
        // and that is what someone reading the log of a crashed pump wants: alone while the
        // kubelet waits to restart it, else before the restarted one's (which Kubernetes may
        // have started before the crash is even reported).
        let (crashed, waiting) = pump_container(pod).map_or((false, false), |c| {
            (
                c.last_state
                    .as_ref()
                    .and_then(|s| s.terminated.as_ref())
                    .is_some(),
                c.state.as_ref().and_then(|s| s.waiting.as_ref()).is_some(),
            )
        });
        let mut lines = Vec::new();
        if crashed {
            lines = self.container_log(flow_id, pod_name, tail, true).await?;
        }
        if !(crashed && waiting) {
            lines.extend(self.container_log(flow_id, pod_name, tail, false).await?);
        }
        let keep = lines.len().saturating_sub(tail);
        Ok(lines.split_off(keep))
    }

    /// `pod NAME: CrashLoopBackOff; container pump last ended Error (exit code 3), restarted
    /// 2 times`, as `kubectl get pods` and `describe` would show it.
    async fn exit_detail(&self, flow_id: &str) -> Option<String> {
        let pods = self.flow_pods(flow_id).await.ok()?;
        let pod = current_pod(&pods, None)?;
        let container = pump_container(pod)?;
        let state = container.state.as_ref();
        let ended = state
            .and_then(|s| s.terminated.as_ref())
            .or_else(|| container.last_state.as_ref()?.terminated.as_ref())?;
        let waiting = state
            .and_then(|s| s.waiting.as_ref())
            .and_then(|w| w.reason.as_deref())
            .map(|r| format!("{r}; "))
            .unwrap_or_default();
        let restarts = container.restart_count;
        Some(format!(
            "pod {}: {waiting}container {CONTAINER} last ended {} (exit code {}), restarted {restarts} time{}",
            pod.metadata.name.as_deref().unwrap_or("?"),
            ended.reason.as_deref().unwrap_or("with no reason given"),
            ended.exit_code,
            if restarts == 1 { "" } else { "s" }
        ))
    }

    fn follow_logs(&self, flow_id: &str, tail: usize) -> BoxStream<'static, String> {
        let this = self.clone();
        let flow_id = flow_id.to_owned();
        stream::once(async move {
            let pods = match this.flow_pods(&flow_id).await {
                Ok(pods) => pods,
                Err(e) => {
                    tracing::debug!(flow_id, error = %e, "no pods to follow");
                    return stream::empty().boxed();
                }
            };
            let Some(pod) = current_pod(&pods, None) else {
                return stream::empty().boxed();
            };
            if let Some(why) = start_failure(pod) {
                return stream::iter([why]).boxed();
            }
            let Some(name) = pod.metadata.name.clone() else {
                return stream::empty().boxed();
            };
            let params = LogParams {
                container: Some(CONTAINER.to_owned()),
                tail_lines: Some(i64::try_from(tail).unwrap_or(i64::MAX)),
                follow: true,
                ..Default::default()
            };
            let pods: Api<Pod> = Api::namespaced(this.streams.clone(), &this.namespace);
            match pods.log_stream(&name, &params).await {
                Ok(reader) => reader
                    .lines()
                    .take_while(|l| futures_util::future::ready(l.is_ok()))
                    .filter_map(|l| futures_util::future::ready(l.ok()))
                    .boxed(),
                Err(e) => {
                    tracing::debug!(flow_id, error = %e, "cannot follow the pod's log");
                    stream::empty().boxed()
                }
            }
        })
        .flatten()
        .boxed()
    }

    fn events(&self) -> BoxStream<'static, BackendEvent> {
        let config = watcher::Config::default().labels(&self.owner_selector());
        let pods = watcher(self.pods(), config).default_backoff().boxed();
        let watch = ExitWatch {
            pods,
            seen: HashMap::new(),
            listing: HashSet::new(),
            primed: false,
        };
        stream::unfold(watch, |mut watch| async move {
            let event = watch.next_exit().await?;
            Some((event, watch))
        })
        .boxed()
    }
}

/// The state behind [`KubernetesBackend::events`]: the pod watch (kube's watcher re-lists and
/// re-watches by itself, with back-off) and the container exits already reported.
struct ExitWatch {
    pods: BoxStream<'static, Result<watcher::Event<Pod>, watcher::Error>>,
    /// Per pod uid, the terminations (and start failures) seen, so each is reported once,
    /// across re-lists too.
    seen: HashMap<String, HashSet<String>>,
    /// Pod uids seen in the list being read, to forget pods that went away meanwhile.
    listing: HashSet<String>,
    /// False until the first list is read: what it shows happened before the watch began,
    /// and the reconcile loop covers that.
    primed: bool,
}

impl ExitWatch {
    async fn next_exit(&mut self) -> Option<BackendEvent> {
        loop {
            let event = match self.pods.next().await? {
                Ok(event) => event,
                Err(e) => {
                    tracing::warn!(error = %e, "Kubernetes pod watch failed; it is retried with back-off");
                    continue;
                }
            };
            let exit = match event {
                watcher::Event::Apply(pod) => self.observe(&pod, true),
                watcher::Event::InitApply(pod) => {
                    if let Some(uid) = pod.metadata.uid.clone() {
                        self.listing.insert(uid);
                    }
                    self.observe(&pod, self.primed)
                }
                watcher::Event::Delete(pod) => {
                    if let Some(uid) = &pod.metadata.uid {
                        self.seen.remove(uid);
                    }
                    None
                }
                watcher::Event::Init => {
                    self.listing.clear();
                    None
                }
                watcher::Event::InitDone => {
                    let listed = std::mem::take(&mut self.listing);
                    self.seen.retain(|uid, _| listed.contains(uid));
                    self.primed = true;
                    None
                }
            };
            if exit.is_some() {
                return exit;
            }
        }
    }

    /// Records what the pod shows; the first sighting of a crash or a start failure in a pod
    /// nobody is deleting becomes an exit, when `report` is set.
    fn observe(&mut self, pod: &Pod, report: bool) -> Option<BackendEvent> {
        let uid = pod.metadata.uid.clone()?;
        let container = pump_container(pod)?;
        let mut found = Vec::new();
        let states = [container.state.as_ref(), container.last_state.as_ref()];
        for t in states
            .into_iter()
            .flatten()
            .filter_map(|s| s.terminated.as_ref())
        {
            let key = t.container_id.clone().unwrap_or_else(|| {
                format!("restart-{}-{:?}", container.restart_count, t.finished_at)
            });
            found.push((
                key,
                Some(i64::from(t.exit_code)),
                t.reason.as_deref() == Some("OOMKilled"),
            ));
        }
        if start_failure(pod).is_some() {
            // ErrImagePull and ImagePullBackOff alternate: one report per pod is enough.
            found.push(("start-failure".to_owned(), None, false));
        }
        let seen = self.seen.entry(uid).or_default();
        let mut exit = None;
        for (key, code, oom) in found {
            if seen.insert(key) && exit.is_none() && report {
                exit = Some((code, oom));
            }
        }
        // A pod being deleted was stopped by someone on purpose (the orchestrator scaling or
        // replacing it, or an operator draining a node): not a crash.
        if pod.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let (code, oom) = exit?;
        Some(BackendEvent::Exited {
            flow_id: label(&pod.metadata, labels::FLOW)?.clone(),
            instance_id: label(&pod.metadata, labels::INSTANCE).cloned(),
            code,
            oom,
        })
    }
}
