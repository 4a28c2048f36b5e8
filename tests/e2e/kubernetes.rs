//! The Kubernetes backend and the chart against a real API server (etcd, kube-apiserver with
//! Node,RBAC and PodSecurity, controller-manager and scheduler, started by `ops/test.sh`).
//!
//! The backend signs in as the chart's ServiceAccount, with the Role `helm template` renders,
//! never as admin; admin only sets up and reads back. Every test has namespaces of its own, the
//! pumps' one enforcing PodSecurity `restricted`.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, ListParams, Patch, PatchParams};
use pumphouse::backend::kubernetes::{KubernetesBackend, KubernetesConfig};
use pumphouse::backend::{Backend, BackendEvent, PumpState};
use pumphouse_e2e::kubernetes::{ApiProxy, ChartAccount, KubeCluster, TestNamespace};
use pumphouse_e2e::{TempDir, DEADLINE};

use crate::backend_contract::{contract_suite, spec};

/// A test's namespaces, the chart's account in them, and a backend signed in as it.
struct Setup {
    admin: kube::Client,
    /// Held for its drop, which deletes the namespace.
    _release: TestNamespace,
    pumps: TestNamespace,
    account: ChartAccount,
    backend: KubernetesBackend,
}

async fn setup(edit_role: impl FnOnce(&mut Role)) -> Setup {
    let cluster = KubeCluster::get();
    let admin = cluster.admin().await;
    let release = cluster.namespace("ph-release", false).await;
    let pumps = cluster.namespace("ph-pumps", true).await;
    let account = cluster
        .chart_account(&release.name, &pumps.name, edit_role)
        .await;
    let backend = KubernetesBackend::connect_with_client(
        account.client.clone(),
        KubernetesConfig {
            namespace: Some(pumps.name.clone()),
            cluster: "test".into(),
            image_pull_secret: None,
        },
    )
    .await
    .expect("the chart's Role lets the backend's start-up check pass");
    Setup {
        admin,
        _release: release,
        pumps,
        account,
        backend,
    }
}

impl Setup {
    fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.admin.clone(), &self.pumps.name)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.admin.clone(), &self.pumps.name)
    }

    async fn pods(&self, flow: &str) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.admin.clone(), &self.pumps.name)
            .list(&ListParams::default().labels(&format!("pumphouse.dev/flow={flow}")))
            .await
            .expect("listing pods as admin")
            .items
    }

    /// Waits until `ok` holds for the flow's pods, as admin sees them.
    async fn wait_pods(&self, flow: &str, what: &str, ok: impl Fn(&[Pod]) -> bool) {
        let started = Instant::now();
        loop {
            let pods = self.pods(flow).await;
            if ok(&pods) {
                return;
            }
            assert!(started.elapsed() < DEADLINE, "{what}; pods: {pods:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn secret_url() -> String {
    format!("redis://pump:{}@127.0.0.1:1", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_role_is_all_the_backend_needs_and_secrets_stay_out_of_the_pod_spec() {
    let s = setup(|_| {}).await;
    let flow = uuid::Uuid::new_v4().to_string();
    let url = secret_url();
    let pump = spec(&url, &flow, "i-1", "steps:\n- log: hello\n");
    let name = s.backend.object_name(&flow);

    let started = s
        .backend
        .start(&pump)
        .await
        .expect("start as the chart's ServiceAccount");
    assert_eq!(started.state, PumpState::Starting);

    // Read back from the API server: the pod template refers to the Secret's keys and holds no
    // secret value; the Secret holds them.
    let deployment = s
        .deployments()
        .get(&name)
        .await
        .expect("the Deployment exists");
    let text = serde_json::to_string(&deployment).unwrap();
    assert!(
        !text.contains(&url),
        "the Redis URL is inlined in the Deployment: {text}"
    );
    let container = &deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    let redis_env = container
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "REDIS_URL")
        .expect("REDIS_URL is in the pod's env");
    assert!(
        redis_env.value.is_none(),
        "REDIS_URL has a value: {redis_env:?}"
    );
    let key_ref = redis_env
        .value_from
        .as_ref()
        .and_then(|v| v.secret_key_ref.as_ref())
        .expect("REDIS_URL comes from the Secret");
    assert_eq!(key_ref.name, name);
    let secret = s.secrets().get(&name).await.expect("the Secret exists");
    assert_eq!(
        secret.data.unwrap()["REDIS_URL"].0,
        url.as_bytes(),
        "the Secret holds the Redis URL"
    );

    // PodSecurity `restricted` admits the pod the backend asks for: the ReplicaSet makes it.
    s.wait_pods(&flow, "no pod was admitted for the pump", |p| !p.is_empty())
        .await;
    let inspected = s
        .backend
        .inspect(&flow)
        .await
        .unwrap()
        .expect("inspect sees the pump");
    assert_eq!(inspected.instance_id.as_deref(), Some("i-1"));
    assert!(
        s.backend
            .list()
            .await
            .unwrap()
            .iter()
            .any(|p| p.flow_id == flow),
        "list shows the pump"
    );
    s.backend
        .ready()
        .await
        .expect("ready as the chart's ServiceAccount");

    // Park: zero replicas, no pod, the Deployment and Secret kept for a one-apply wake.
    s.backend.park(&flow, Duration::from_secs(5)).await.unwrap();
    let parked = s.deployments().get(&name).await.unwrap();
    assert_eq!(parked.spec.unwrap().replicas, Some(0));
    // The park returns once the pump has ended; its pod goes a moment later.
    s.wait_pods(&flow, "a parked flow keeps its pod", |p| p.is_empty())
        .await;
    assert!(matches!(
        s.backend.inspect(&flow).await.unwrap().unwrap().state,
        PumpState::Exited { .. }
    ));
    s.backend
        .start(&spec(&url, &flow, "i-2", "steps:\n- log: hello\n"))
        .await
        .unwrap();
    assert_eq!(
        s.deployments()
            .get(&name)
            .await
            .unwrap()
            .spec
            .unwrap()
            .replicas,
        Some(1)
    );

    // Stop: nothing left, and stopping again is fine.
    s.backend.stop(&flow, Duration::from_secs(5)).await.unwrap();
    assert!(s.deployments().get_opt(&name).await.unwrap().is_none());
    assert!(s.secrets().get_opt(&name).await.unwrap().is_none());
    s.wait_pods(&flow, "a stopped flow keeps its pod", |p| p.is_empty())
        .await;
    s.backend.stop(&flow, Duration::from_secs(5)).await.unwrap();
}

/// Removes `verb` from the Role's rule for `resource`.
fn without(resource: &'static str, verb: &'static str) -> impl FnOnce(&mut Role) {
    move |role: &mut Role| {
        for rule in role.rules.iter_mut().flatten() {
            if rule.resources.iter().flatten().any(|r| r == resource) {
                rule.verbs.retain(|v| v != verb);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verb_missing_from_the_role_fails_with_the_api_servers_403() {
    let s = setup(without("deployments", "delete")).await;
    let flow = uuid::Uuid::new_v4().to_string();
    s.backend
        .start(&spec(&secret_url(), &flow, "i-1", "steps: []\n"))
        .await
        .expect("start needs no delete");
    let err = s
        .backend
        .stop(&flow, Duration::from_secs(5))
        .await
        .expect_err("stop cannot delete the Deployment without the verb");
    let msg = err.to_string();
    assert!(msg.contains("403"), "no 403 in: {msg}");
    assert!(
        msg.contains(&format!(
            "User \"{}\" cannot delete resource \"deployments\"",
            s.account.user
        )),
        "the API server's own message is not in: {msg}"
    );
    assert!(
        msg.contains("install the chart's Role"),
        "no advice in: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_deployment_leaves_no_secret_behind() {
    let s = setup(without("deployments", "patch")).await;
    let flow = uuid::Uuid::new_v4().to_string();
    let err = s
        .backend
        .start(&spec(&secret_url(), &flow, "i-1", "steps: []\n"))
        .await
        .expect_err("an apply is a patch");
    assert!(err.to_string().contains("403"), "{err}");
    let name = s.backend.object_name(&flow);
    assert!(
        s.secrets().get_opt(&name).await.unwrap().is_none(),
        "the failed start left its Secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_when_the_pumps_namespace_does_not_exist() {
    let cluster = KubeCluster::get();
    let missing = pumphouse_e2e::unique("ph-missing");
    // As admin: a list in a missing namespace answers an empty list, so only a write tells.
    let err = KubernetesBackend::connect_with_client(
        cluster.admin().await,
        KubernetesConfig {
            namespace: Some(missing.clone()),
            cluster: "test".into(),
            image_pull_secret: None,
        },
    )
    .await
    .expect_err("a missing namespace is not ready");
    let msg = err.to_string();
    assert!(msg.contains("404"), "{msg}");
    assert!(
        msg.contains(&format!("does namespace `{missing}` exist?")),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_side_apply_takes_back_the_fields_another_manager_changed() {
    let s = setup(|_| {}).await;
    let flow = uuid::Uuid::new_v4().to_string();
    let url = secret_url();
    let pump = spec(&url, &flow, "i-1", "steps: []\n");
    s.backend.start(&pump).await.unwrap();
    let name = s.backend.object_name(&flow);
    let intruder = serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [
            {"name": "pump", "image": "intruder/pump:evil"}
        ]}}}
    });
    // Without force, another manager cannot take pumphouse's fields: the server says who owns them.
    let conflict = s
        .deployments()
        .patch(
            &name,
            &PatchParams::apply("intruder"),
            &Patch::Apply(&intruder),
        )
        .await
        .expect_err("pumphouse owns the image");
    let kube::Error::Api(resp) = conflict else {
        panic!("not an API error: {conflict}")
    };
    assert_eq!(resp.code, 409, "{resp:?}");
    assert!(
        resp.message.contains("conflict with \"pumphouse\""),
        "{}",
        resp.message
    );
    // Forced, it does; the next apply (a reconcile's, a wake's) takes the field back.
    s.deployments()
        .patch(
            &name,
            &PatchParams::apply("intruder").force(),
            &Patch::Apply(&intruder),
        )
        .await
        .unwrap();
    let image = |d: Deployment| {
        d.spec.unwrap().template.spec.unwrap().containers[0]
            .image
            .clone()
    };
    assert_eq!(
        image(s.deployments().get(&name).await.unwrap()).as_deref(),
        Some("intruder/pump:evil")
    );
    s.backend
        .start(&pump)
        .await
        .expect("pumphouse's apply forces its fields back");
    let after = s.deployments().get(&name).await.unwrap();
    assert_eq!(
        image(after.clone()).as_deref(),
        Some(pumphouse_e2e::PUMP_IMAGE)
    );
    let managers: Vec<_> = after
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.manager)
        .collect();
    assert!(managers.iter().any(|m| m == "pumphouse"), "{managers:?}");
    s.backend.stop(&flow, Duration::from_secs(5)).await.unwrap();
}

/// `helm` from the build, failing the test with its output when it fails.
fn helm(cluster: &KubeCluster, home: &TempDir, args: &[&str]) -> String {
    let out = cluster
        .helm(&home.0)
        .args(args)
        .output()
        .expect("running helm");
    assert!(
        out.status.success(),
        "helm {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_installs_upgrades_rolls_back_and_uninstalls_with_real_helm() {
    let cluster = KubeCluster::get();
    let admin = cluster.admin().await;
    let release = cluster.namespace("ph-helm", false).await;
    let pumps = cluster.namespace("ph-helm-pumps", true).await;
    let home = TempDir::new("pumphouse-helm");
    let ns = release.name.as_str();
    let pumps_ns = format!("pumps.namespace={}", pumps.name);
    let common = [
        "--namespace",
        ns,
        "--set",
        &pumps_ns,
        "--set",
        "secrets.redisUrl=redis://admin:x@redis:6379",
        "--set",
        "secrets.apiToken=test-token",
    ];
    let configmaps: Api<ConfigMap> = Api::namespaced(admin.clone(), ns);
    let setting = |cm: ConfigMap, key: &str| cm.data.unwrap_or_default().get(key).cloned();
    let configmap = async |cm: &Api<ConfigMap>| {
        cm.list(&ListParams::default().labels("app.kubernetes.io/instance=ph"))
            .await
            .unwrap()
            .items
            .into_iter()
            .next()
            .expect("the chart's ConfigMap")
    };

    let mut args = vec!["install", "ph", "charts/pumphouse"];
    args.extend(common);
    helm(&cluster, &home, &args);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), ns);
    let installed = deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items;
    assert_eq!(
        installed.len(),
        1,
        "the orchestrator's Deployment: {installed:?}"
    );
    assert_eq!(
        setting(configmap(&configmaps).await, "PUMPHOUSE_START_TIMEOUT"),
        None
    );

    let mut args = vec![
        "upgrade",
        "ph",
        "charts/pumphouse",
        "--set",
        "config.extra.PUMPHOUSE_START_TIMEOUT=90s",
    ];
    args.extend(common);
    helm(&cluster, &home, &args);
    assert_eq!(
        setting(configmap(&configmaps).await, "PUMPHOUSE_START_TIMEOUT").as_deref(),
        Some("90s"),
        "the upgraded value reached the orchestrator's settings"
    );
    let history = helm(&cluster, &home, &["history", "ph", "--namespace", ns]);
    assert!(history.lines().count() >= 3, "two revisions: {history}");

    helm(&cluster, &home, &["rollback", "ph", "1", "--namespace", ns]);
    assert_eq!(
        setting(configmap(&configmaps).await, "PUMPHOUSE_START_TIMEOUT"),
        None,
        "the rollback took the value away"
    );

    helm(&cluster, &home, &["uninstall", "ph", "--namespace", ns]);
    assert!(deployments
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let roles: Api<Role> = Api::namespaced(admin, &pumps.name);
    assert!(
        roles
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "the Role in the pumps' namespace went with the release"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_that_cannot_be_read_is_named_once_with_what_to_do() {
    let redis = pumphouse_e2e::RedisServer::start().await;
    let dir = TempDir::new("pumphouse-kubeconfig");
    let missing = dir.0.join("no-such-kubeconfig");
    let out = std::process::Command::new(pumphouse_e2e::pumphouse_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "kubernetes",
        ])
        .env(
            "PUMPHOUSE_STORE",
            format!("sqlite://{}", dir.0.join("db").display()),
        )
        .env("PUMPHOUSE_REDIS", redis.url())
        .env("KUBECONFIG", &missing)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .expect("running pumphouse serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = missing.display().to_string();
    assert_eq!(
        stderr.matches(&shown).count(),
        1,
        "the kubeconfig's path is not said exactly once:\n{stderr}"
    );
    assert!(
        stderr.contains("point KUBECONFIG at a kubeconfig"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kubernetes_backend_keeps_the_backend_contract() {
    // Real pods on the suite's node, reaching Redis at the node's address.
    let s = setup(|_| {}).await;
    let node_ip = KubeCluster::get().node_ip().to_string();
    let redis = pumphouse_e2e::RedisServer::start_reachable_from(&node_ip).await;
    contract_suite(
        std::sync::Arc::new(s.backend.clone()),
        &redis.url_at(&node_ip),
        true,
    )
    .await;
}

/// An orchestrator on Kubernetes as the chart runs it: signed in as the chart's ServiceAccount,
/// its pumps pods on the suite's node in a `restricted` namespace.
struct KubeApp {
    app: pumphouse_e2e::TestApp,
    admin: kube::Client,
    pumps: TestNamespace,
    _release: TestNamespace,
    account: ChartAccount,
    /// The relay the orchestrator reaches the API server through, when it has one.
    relay: Option<ApiProxy>,
}

async fn kube_app(extra: &[&str]) -> KubeApp {
    kube_app_with(extra, false).await
}

/// An orchestrator process on Kubernetes, signed in as the chart's account; with `relayed`,
/// through an [`ApiProxy`] the test can cut.
async fn kube_app_with(extra: &[&str], relayed: bool) -> KubeApp {
    let cluster = KubeCluster::get();
    let node_ip = cluster.node_ip().to_string();
    let admin = cluster.admin().await;
    let release = cluster.namespace("ph-release", false).await;
    let pumps = cluster.namespace("ph-pumps", true).await;
    let account = cluster
        .chart_account(&release.name, &pumps.name, |_| {})
        .await;
    let relay = match relayed {
        true => Some(ApiProxy::start(&cluster, &account.kubeconfig).await),
        false => None,
    };
    let kubeconfig = relay
        .as_ref()
        .map_or(account.kubeconfig.clone(), |r| r.kubeconfig.clone());
    let app =
        pumphouse_e2e::TestApp::spawn_kubernetes(&kubeconfig, &pumps.name, &node_ip, extra).await;
    KubeApp {
        app,
        admin,
        pumps,
        _release: release,
        account,
        relay,
    }
}

impl KubeApp {
    async fn deployment(&self, flow: &pumphouse_e2e::TestFlow) -> Option<Deployment> {
        Api::<Deployment>::namespaced(self.admin.clone(), &self.pumps.name)
            .list(&ListParams::default().labels(&format!("pumphouse.dev/flow={}", flow.id)))
            .await
            .expect("listing Deployments as admin")
            .items
            .into_iter()
            .next()
    }

    /// The flow's pods, as admin sees them.
    async fn pods(&self, flow: &pumphouse_e2e::TestFlow) -> Vec<Pod> {
        Api::<Pod>::namespaced(self.admin.clone(), &self.pumps.name)
            .list(&ListParams::default().labels(&format!("pumphouse.dev/flow={}", flow.id)))
            .await
            .expect("listing pods as admin")
            .items
    }

    /// Waits until the flow's status history has an entry whose reason contains `needle`.
    async fn wait_reason(&self, flow: &pumphouse_e2e::TestFlow, needle: &str) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let (_, s) = self
                .app
                .get(&format!("/api/flows/{}/status", flow.id))
                .await;
            let found = s["events"].as_array().and_then(|events| {
                events
                    .iter()
                    .find(|e| e["reason"].as_str().is_some_and(|r| r.contains(needle)))
                    .cloned()
            });
            if let Some(event) = found {
                return event;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "no status of flow {} says `{needle}`: {s:#}",
                flow.name
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until a flow in error has no pump: no Deployment for the kubelet to go on
    /// restarting, no pod, and none in the flow's status.
    async fn wait_no_pump(&self, flow: &pumphouse_e2e::TestFlow) {
        let started = Instant::now();
        while self.deployment(flow).await.is_some() {
            assert!(
                started.elapsed() < DEADLINE,
                "a flow in error keeps its Deployment"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.wait_no_pods(flow).await;
        self.app.wait_no_pump(flow).await;
    }

    /// Waits until the flow has no pod at all.
    async fn wait_no_pods(&self, flow: &pumphouse_e2e::TestFlow) {
        let pods: Api<Pod> = Api::namespaced(self.admin.clone(), &self.pumps.name);
        let started = Instant::now();
        loop {
            let left = pods
                .list(&ListParams::default().labels(&format!("pumphouse.dev/flow={}", flow.id)))
                .await
                .expect("listing pods as admin")
                .items;
            if left.is_empty() {
                return;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "the flow's pods stay: {left:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flow_on_kubernetes_answers_its_webhook_scales_to_zero_and_a_webhook_wakes_it() {
    let k = kube_app(&[]).await;
    let app = &k.app;
    let flow = app
        .create_flow(&pumphouse_e2e::manifest(
            "hello-k8s",
            "idleTimeout: 2s\n",
            "    - respond: {hello: '{{payload.name}}'}\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let hook = format!("/api/triggers/{}/webhook/{}?wait=5s", flow.id, flow.token);
    let (code, body) = app.post(&hook, r#"{"name": "ada"}"#).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["output"],
        serde_json::json!({"hello": "ada"}),
        "{body}"
    );

    // Idle for 2 s: scaled to zero, the Deployment kept at zero replicas, its pod gone.
    app.wait_status(&flow, "idle").await;
    let parked = k.deployment(&flow).await.expect("the Deployment is kept");
    assert_eq!(parked.spec.unwrap().replicas, Some(0));
    k.wait_no_pods(&flow).await;

    // A webhook wakes it: one apply, a new pod, the caller answered by the pump.
    let hook = format!("/api/triggers/{}/webhook/{}?wait=20s", flow.id, flow.token);
    let (code, body) = app.post(&hook, r#"{"name": "bob"}"#).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body["output"],
        serde_json::json!({"hello": "bob"}),
        "{body}"
    );
    let woken = k.deployment(&flow).await.expect("the Deployment");
    assert_eq!(woken.spec.unwrap().replicas, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_on_kubernetes_ends_in_error_with_the_exit_code_and_log_tail_and_no_pump() {
    let k = kube_app(&["--restart-backoff", "50ms", "--crash-limit", "3"]).await;
    let app = &k.app;
    let flow = app
        .create_flow(&pumphouse_e2e::manifest(
            "crashy-k8s",
            "",
            "    - log: 'about to crash on {{payload.n}}'\n    - exit: 3\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let (code, accepted) = app.webhook(&flow, &serde_json::json!({"n": 1})).await;
    assert_eq!(code, 202, "{accepted}");
    let s = app.wait_status(&flow, "error").await;
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("crash loop: the pump ended 3 times"),
        "{reason}"
    );
    assert!(
        reason.contains("exited unexpectedly with code 3"),
        "{reason}"
    );
    assert!(
        reason.contains("about to crash on 1"),
        "the log tail: {reason}"
    );
    // In Kubernetes' words too, as `kubectl get pods` shows the pod.
    assert!(
        reason.contains("kubernetes says pod pumphouse-"),
        "{reason}"
    );
    assert!(
        reason.contains("container pump last ended Error (exit code 3)"),
        "{reason}"
    );
    k.wait_no_pump(&flow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_pump_on_kubernetes_is_reported_as_killed_for_memory() {
    let k = kube_app(&["--crash-limit", "1"]).await;
    let app = &k.app;
    let flow = app
        .create_flow(&pumphouse_e2e::manifest(
            "greedy-k8s",
            "resources: {memory: 32Mi}\n",
            "    - allocate: 128Mi\n    - respond: never\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    app.webhook(&flow, &serde_json::json!({})).await;
    let s = app.wait_status(&flow, "error").await;
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("code 137 (killed for exceeding its memory limit)"),
        "{reason}"
    );
    assert!(
        reason.contains("container pump last ended OOMKilled (exit code 137)"),
        "{reason}"
    );
    // A flow in error has no pump, so the reason is where the kill is told.
    k.wait_no_pump(&flow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_pod_does_not_hold_up_a_scale_to_zero() {
    // An evicted pod stays, phase Failed, with the flow's labels, and nothing deletes it on a
    // scale-down: a park that waited for it would wait out its grace and slack (35 s here).
    // Such a pod, made here as the kubelet leaves one: the pump image with no config, which
    // exits 2, never restarted.
    let s = setup(|_| {}).await;
    let node_ip = KubeCluster::get().node_ip().to_string();
    let redis = pumphouse_e2e::RedisServer::start_reachable_from(&node_ip).await;
    let flow = uuid::Uuid::new_v4().to_string();
    s.backend
        .start(&spec(
            &redis.url_at(&node_ip),
            &flow,
            "i-1",
            "steps: [{respond: ok}]\n",
        ))
        .await
        .unwrap();
    let labels = s
        .deployments()
        .get(&s.backend.object_name(&flow))
        .await
        .unwrap()
        .metadata
        .labels
        .unwrap();
    let failed: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": format!("evicted-{}", &flow[..8]), "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65534,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "pump", "image": pumphouse_e2e::PUMP_IMAGE, "imagePullPolicy": "Never",
                "securityContext": {"allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}}
            }]
        }
    }))
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(s.admin.clone(), &s.pumps.name);
    pods.create(&kube::api::PostParams::default(), &failed)
        .await
        .expect("creating the failed pod");
    let phase = |p: &Pod| p.status.as_ref().and_then(|s| s.phase.clone());
    s.wait_pods(&flow, "the stand-in pod never failed", |p| {
        p.iter().any(|p| phase(p).as_deref() == Some("Failed"))
    })
    .await;

    tokio::time::timeout(DEADLINE, s.backend.park(&flow, Duration::from_secs(5)))
        .await
        .expect("the scale-down waited for the failed pod")
        .unwrap();
    // What is left has ended: the failed pod, and the pump's own pod if the kubelet has not
    // yet removed it after its pump exited.
    let left = s.pods(&flow).await;
    assert!(
        left.iter()
            .all(|p| matches!(phase(p).as_deref(), Some("Failed" | "Succeeded"))),
        "only finished pods may be left: {:?}",
        left.iter()
            .map(|p| (
                p.metadata.name.clone(),
                phase(p),
                p.metadata.deletion_timestamp.is_some()
            ))
            .collect::<Vec<_>>()
    );
    s.backend.stop(&flow, Duration::from_secs(5)).await.unwrap();
}

/// The memory limit of the pump container in a Deployment.
fn memory_limit(d: &Deployment) -> Option<String> {
    d.spec.as_ref()?.template.spec.as_ref()?.containers[0]
        .resources
        .as_ref()?
        .limits
        .as_ref()?
        .get("memory")
        .map(|q| q.0.clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_edited_by_hand_is_put_back_by_reconcile() {
    let k = kube_app(&["--resync-interval", "500ms"]).await;
    let app = &k.app;
    let flow = app
        .create_flow(&pumphouse_e2e::manifest(
            "edited-k8s",
            "resources: {memory: 64Mi}\n",
            "    - respond: '{{payload.n}}'\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let before = k.deployment(&flow).await.expect("the Deployment");
    let limit = memory_limit(&before);
    assert_eq!(limit.as_deref(), Some("67108864"), "{before:?}");

    // As `kubectl edit` would: sixteen times the memory the flow was given.
    let name = before.metadata.name.clone().unwrap();
    let edit = serde_json::json!({"spec": {"template": {"spec": {"containers": [{
        "name": "pump",
        "resources": {"limits": {"memory": "1Gi"}, "requests": {"memory": "1Gi"}}
    }]}}}});
    Api::<Deployment>::namespaced(k.admin.clone(), &k.pumps.name)
        .patch(
            &name,
            &PatchParams {
                field_manager: Some("kubectl-edit".into()),
                ..Default::default()
            },
            &Patch::Strategic(&edit),
        )
        .await
        .expect("editing the Deployment as admin");

    let event = k.wait_reason(&flow, "changed outside pumphouse").await;
    assert_eq!(event["to_status"], "starting", "{event:#}");
    app.wait_status(&flow, "running").await;
    let after = k.deployment(&flow).await.expect("the Deployment");
    assert_eq!(
        memory_limit(&after),
        limit,
        "the hand edit stayed: {after:?}"
    );
    // Put back once: the flow's own write is not taken for another edit.
    let (_, s) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
    let put_back = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("changed outside"))
        })
        .count();
    assert_eq!(put_back, 1, "{s:#}");
    let hook = format!("/api/triggers/{}/webhook/{}?wait=20s", flow.id, flow.token);
    let (code, body) = app.post(&hook, r#"{"n": 5}"#).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["output"], 5, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_restart_adopts_the_running_pump_and_recreates_nothing() {
    let mut k = kube_app(&["--resync-interval", "500ms"]).await;
    let flow = k
        .app
        .create_flow(&pumphouse_e2e::manifest(
            "adopted-k8s",
            "",
            "    - respond: '{{payload.n}}'\n",
        ))
        .await;
    k.app.start(&flow).await;
    k.app.wait_status(&flow, "running").await;
    let pod_uid = |pods: &[Pod]| {
        pods.iter()
            .map(|p| p.metadata.uid.clone().unwrap())
            .collect::<Vec<_>>()
    };
    let pods = pod_uid(&k.pods(&flow).await);
    let deployment = k.deployment(&flow).await.unwrap().metadata;
    let secret = Api::<Secret>::namespaced(k.admin.clone(), &k.pumps.name)
        .get(deployment.name.as_deref().unwrap())
        .await
        .unwrap()
        .metadata;
    let events_before = k.app.get(&format!("/api/flows/{}/status", flow.id)).await.1["events"]
        .as_array()
        .unwrap()
        .len();

    // No chance to clean up, then a new orchestrator on the same store.
    k.app.kill_server();
    k.app.start_server().await;
    let hook = format!("/api/triggers/{}/webhook/{}?wait=20s", flow.id, flow.token);
    let (code, body) = k.app.post(&hook, r#"{"n": 9}"#).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["output"], 9, "{body}");

    let (_, s) = k.app.get(&format!("/api/flows/{}/status", flow.id)).await;
    assert_eq!(s["status"], "running", "{s:#}");
    assert_eq!(
        s["events"].as_array().unwrap().len(),
        events_before,
        "the restart changed the flow's status: {s:#}"
    );
    assert_eq!(pod_uid(&k.pods(&flow).await), pods, "the pod was replaced");
    let now = k.deployment(&flow).await.unwrap().metadata;
    assert_eq!(now.uid, deployment.uid);
    assert_eq!(
        now.generation, deployment.generation,
        "the Deployment's spec was written again"
    );
    let secret_now = Api::<Secret>::namespaced(k.admin.clone(), &k.pumps.name)
        .get(now.name.as_deref().unwrap())
        .await
        .unwrap()
        .metadata;
    assert_eq!(
        secret_now.resource_version, secret.resource_version,
        "the Secret was written again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exit_during_a_watch_that_expires_with_410_gone_is_still_reported() {
    // The backend's pod watch goes through a relay the test cuts. While it is cut a pump
    // crashes and etcd's history is compacted past the watch's resourceVersion, so the watch's
    // resume gets 410 Gone (pods are watched from etcd, not the watch cache, in the test
    // cluster): the backend must list again and report the crash it did not see.
    let s = setup(|_| {}).await;
    let cluster = KubeCluster::get();
    let relay = ApiProxy::start(&cluster, &s.account.kubeconfig).await;
    let watching = KubernetesBackend::connect_with_client(
        relay.client().await,
        KubernetesConfig {
            namespace: Some(s.pumps.name.clone()),
            cluster: "test".into(),
            image_pull_secret: None,
        },
    )
    .await
    .unwrap();
    let (tx, mut exits) = tokio::sync::mpsc::unbounded_channel();
    let mut events = watching.events();
    let collector = tokio::spawn(async move {
        while let Some(ev) = events.next().await {
            if tx.send(ev).is_err() {
                return;
            }
        }
    });
    let node_ip = cluster.node_ip().to_string();
    let redis = pumphouse_e2e::RedisServer::start_reachable_from(&node_ip).await;
    let crashing = "steps: [not, a, step]\n";
    // First, a crash seen live: the watch is up.
    let first = uuid::Uuid::new_v4().to_string();
    s.backend
        .start(&spec(&redis.url_at(&node_ip), &first, "i-1", crashing))
        .await
        .unwrap();
    let code = next_exit(&mut exits, &first)
        .await
        .expect("the first crash is reported");
    assert_eq!(code, Some(2));
    let pods: Api<Pod> = Api::namespaced(s.admin.clone(), &s.pumps.name);
    let seen_at = pods
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();

    relay.cut();
    let second = uuid::Uuid::new_v4().to_string();
    s.backend
        .start(&spec(&redis.url_at(&node_ip), &second, "i-2", crashing))
        .await
        .unwrap();
    s.wait_pods(&second, "the second pump never crashed", |pods| {
        pods.iter().any(|p| {
            p.status
                .as_ref()
                .and_then(|st| st.container_statuses.as_ref())
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c.last_state
                            .as_ref()
                            .and_then(|l| l.terminated.as_ref())
                            .is_some()
                            || c.state
                                .as_ref()
                                .and_then(|l| l.terminated.as_ref())
                                .is_some()
                    })
                })
        })
    })
    .await;
    compact_etcd(&cluster.etcd).await;
    // What the backend's watch resumes from is gone now: a watch from there is refused.
    let mut stale = pods
        .watch(&kube::api::WatchParams::default(), &seen_at)
        .await
        .expect("a watch request")
        .boxed();
    match tokio::time::timeout(DEADLINE, stale.next()).await {
        Ok(Some(Ok(kube::api::WatchEvent::Error(e)))) => assert_eq!(e.code, 410, "{e:?}"),
        Ok(Some(Err(kube::Error::Api(e)))) => assert_eq!(e.code, 410, "{e:?}"),
        other => panic!("a watch from a compacted revision was not refused with 410: {other:?}"),
    }

    relay.restore().await;
    let code = next_exit(&mut exits, &second)
        .await
        .expect("the crash during the expired watch was lost");
    assert_eq!(code, Some(2));
    collector.abort();
    for flow in [&first, &second] {
        s.backend.stop(flow, Duration::from_secs(5)).await.unwrap();
    }
}

/// The exit code of the next exit reported for `flow`, or `Err` past the deadline.
async fn next_exit(
    exits: &mut tokio::sync::mpsc::UnboundedReceiver<BackendEvent>,
    flow: &str,
) -> Result<Option<i64>, tokio::time::error::Elapsed> {
    let wait = async {
        loop {
            let BackendEvent::Exited { flow_id, code, .. } =
                exits.recv().await.expect("the events stream ended");
            if flow_id == flow {
                return code;
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait).await
}

/// Compacts etcd's history up to its current revision, through its JSON gateway.
async fn compact_etcd(etcd: &str) {
    let http = reqwest::Client::new();
    // "AA==" is the key "\0": a range read only to learn the revision.
    let range: serde_json::Value = http
        .post(format!("{etcd}/v3/kv/range"))
        .body(r#"{"key": "AA==", "limit": 1}"#)
        .send()
        .await
        .expect("etcd answers")
        .json()
        .await
        .expect("etcd's range answer");
    let revision = range["header"]["revision"]
        .as_str()
        .unwrap_or_else(|| panic!("no revision in {range}"))
        .to_string();
    let compacted = http
        .post(format!("{etcd}/v3/kv/compaction"))
        .body(format!(r#"{{"revision": "{revision}", "physical": true}}"#))
        .send()
        .await
        .expect("etcd answers");
    assert!(
        compacted.status().is_success(),
        "{:?}",
        compacted.text().await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_fails_the_start_made_then_and_no_other_flow() {
    let k = kube_app_with(&["--resync-interval", "500ms"], true).await;
    let app = &k.app;
    let relay = k.relay.as_ref().unwrap();
    let steady = app
        .create_flow(&pumphouse_e2e::manifest(
            "steady-k8s",
            "",
            "    - respond: '{{payload.n}}'\n",
        ))
        .await;
    app.start(&steady).await;
    app.wait_status(&steady, "running").await;
    let late = app
        .create_flow(&pumphouse_e2e::manifest(
            "late-k8s",
            "",
            "    - respond: ok\n",
        ))
        .await;

    relay.cut();
    // The leader launches in the request: the caller hears why at once, and the status keeps it.
    let (code, body) = app.post(&format!("/api/flows/{}/start", late.id), "").await;
    assert_eq!(code, 502, "{body}");
    let why = "check that the Kubernetes API server is reachable from the orchestrator";
    assert!(body["error"].as_str().unwrap().contains(why), "{body}");
    let s = app.wait_status(&late, "error").await;
    let reason = s["reason"].as_str().unwrap();
    assert!(reason.contains(why), "{reason}");
    // The status is the store's; only the pump's part could not be read.
    assert!(s["pump_error"].as_str().unwrap().contains(why), "{s:#}");
    // A few resyncs fail meanwhile, and change nothing about the running flow.
    let (_, st) = app.get(&format!("/api/flows/{}/status", steady.id)).await;
    assert_eq!(st["status"], "running", "{st:#}");

    relay.restore().await;
    app.start(&late).await;
    app.wait_status(&late, "running").await;
    for (flow, n) in [(&steady, 1), (&late, 2)] {
        let hook = format!("/api/triggers/{}/webhook/{}?wait=20s", flow.id, flow.token);
        let (code, body) = app.post(&hook, &format!(r#"{{"n": {n}}}"#)).await;
        assert_eq!(code, 200, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_the_api_server_no_longer_accepts_fail_the_start_with_its_401() {
    // A deleted ServiceAccount's tokens stop working at once, as an expired one does (a token
    // cannot be made to expire sooner than ten minutes).
    let k = kube_app(&[]).await;
    let app = &k.app;
    let flow = app
        .create_flow(&pumphouse_e2e::manifest(
            "orphaned-k8s",
            "",
            "    - respond: ok\n",
        ))
        .await;
    let (ns, name) = k
        .account
        .user
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
        .unwrap();
    Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(k.admin.clone(), ns)
        .delete(name, &Default::default())
        .await
        .expect("deleting the chart's ServiceAccount");
    // The API server keeps a token's good answer for a few seconds.
    let started = Instant::now();
    loop {
        let list = Api::<Deployment>::namespaced(k.account.client.clone(), &k.pumps.name)
            .list(&ListParams::default().limit(1))
            .await;
        match list {
            Err(kube::Error::Api(e)) if e.code == 401 => break,
            other => assert!(
                started.elapsed() < DEADLINE,
                "the deleted account's token still works: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, body) = app.post(&format!("/api/flows/{}/start", flow.id), "").await;
    assert_eq!(code, 502, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("(401 Unauthorized)"),
        "{body}"
    );
    let s = app.wait_status(&flow, "error").await;
    let reason = s["reason"].as_str().unwrap();
    assert!(reason.contains("(401 Unauthorized)"), "{reason}");
    assert!(
        reason.contains("check its service account token or kubeconfig"),
        "{reason}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_that_cannot_be_pulled_puts_the_flow_in_error_with_the_kubelets_reason() {
    // No registry is reachable from the test node, so the image cannot be pulled, as one that
    // does not exist cannot.
    let k = kube_app(&[]).await;
    let app = &k.app;
    let flow = app
        .create_flow(&pumphouse_e2e::manifest(
            "unpullable-k8s",
            "image: pumphouse/no-such-pump:1\n",
            "    - respond: ok\n",
        ))
        .await;
    app.start(&flow).await;
    let s = app.wait_status(&flow, "error").await;
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("ErrImagePull") || reason.contains("ImagePullBackOff"),
        "{reason}"
    );
    assert!(reason.contains("pumphouse/no-such-pump:1"), "{reason}");
    k.wait_no_pump(&flow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_refused_by_admission_puts_the_flow_in_error_with_the_servers_message() {
    // The Deployment is accepted; its pod is not (a quota the flow's 64Mi exceeds), which only
    // the ReplicaSet sees: the flow must not sit in `starting` until its start timeout.
    let k = kube_app(&["--resync-interval", "500ms"]).await;
    let quotas: Api<k8s_openapi::api::core::v1::ResourceQuota> =
        Api::namespaced(k.admin.clone(), &k.pumps.name);
    let quota = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "small"},
        "spec": {"hard": {"requests.memory": "32Mi", "limits.memory": "32Mi"}}
    }))
    .unwrap();
    quotas
        .create(&kube::api::PostParams::default(), &quota)
        .await
        .expect("creating the quota");
    // Admission counts against a quota once the quota controller has filled in its status.
    let started = Instant::now();
    while quotas
        .get("small")
        .await
        .unwrap()
        .status
        .and_then(|s| s.hard)
        .is_none()
    {
        assert!(started.elapsed() < DEADLINE, "the quota never got a status");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let app = &k.app;
    let flow = app
        .create_flow(&pumphouse_e2e::manifest(
            "refused-k8s",
            "resources: {memory: 64Mi}\n",
            "    - respond: ok\n",
        ))
        .await;
    app.start(&flow).await;
    let s = app.wait_status(&flow, "error").await;
    let reason = s["reason"].as_str().unwrap();
    assert!(reason.contains("FailedCreate"), "{reason}");
    assert!(
        reason.contains("is forbidden: exceeded quota: small"),
        "{reason}"
    );
    assert!(
        !reason.contains("did not report ready"),
        "found only by the start timeout: {reason}"
    );
    k.wait_no_pump(&flow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_through_the_api_past_the_clients_read_timeout() {
    // The orchestrator's requests to the API server give up after 2 s here (295 s by
    // default); a followed log of a quiet pump must outlast that.
    let k = kube_app(&["--kube-request-timeout", "2s"]).await;
    let app = &k.app;
    let flow = app
        .create_flow(&pumphouse_e2e::manifest(
            "quiet-k8s",
            "keepAlive: true\n",
            "    - log: 'line {{payload.n}}'\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let mut lines = crate::observability::follow(
        app,
        &format!("/api/flows/{}/logs?follow=true&tail=10", flow.id),
    );
    crate::observability::line_with(&mut lines, "subscribed to trigger:").await;
    // Twice the read timeout without a line: the stream neither ends nor errs.
    let quiet = tokio::time::timeout(Duration::from_secs(4), lines.recv()).await;
    assert!(
        quiet.is_err(),
        "the followed log ended or spoke while the pump was quiet: {quiet:?}"
    );
    let (code, body) = app
        .post(
            &format!("/api/triggers/{}/inject?wait=10s", flow.name),
            r#"{"n": 1}"#,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    crate::observability::line_with(&mut lines, "line 1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_own_orchestrator_pod_serves_readyz_and_runs_a_flow() {
    // The whole product as the chart installs it: the orchestrator image (built from this
    // workspace, imported into the node by ops/test.sh) in its pod, signed in with its own
    // ServiceAccount's token, starting a pump pod for a webhook.
    let cluster = KubeCluster::get();
    let node_ip = cluster.node_ip().to_string();
    let admin = cluster.admin().await;
    let release = cluster.namespace("ph-chart", false).await;
    let pumps = cluster.namespace("ph-chart-pumps", true).await;
    let redis = pumphouse_e2e::RedisServer::start_reachable_from(&node_ip).await;
    // No kube-proxy runs on the test node, so the `kubernetes` Service leads nowhere: the pod
    // reaches the API server through a relay on the node's address instead.
    let relay = ApiProxy::start_on(&cluster, &cluster.admin_kubeconfig(), &node_ip).await;
    let home = TempDir::new("pumphouse-helm");
    let ns = release.name.as_str();
    let token = uuid::Uuid::new_v4().simple().to_string();
    let settings = [
        format!("pumps.namespace={}", pumps.name),
        "image.repository=pumphouse/orchestrator".into(),
        "image.tag=test".into(),
        "image.pullPolicy=Never".into(),
        format!("secrets.redisUrl={}", redis.url_at(&node_ip)),
        format!("secrets.apiToken={token}"),
        format!("config.extra.KUBERNETES_SERVICE_HOST={node_ip}"),
        format!("config.extra.KUBERNETES_SERVICE_PORT={}", relay.port()),
    ];
    let mut args = vec!["install", "ph", "charts/pumphouse", "--namespace", ns];
    for s in &settings {
        args.extend(["--set", s.as_str()]);
    }
    helm(&cluster, &home, &args);

    // Ready means the kubelet's probe of /readyz passed: store, Redis and the backend.
    let pods: Api<Pod> = Api::namespaced(admin.clone(), ns);
    let started = Instant::now();
    let pod_ip = loop {
        let list = pods.list(&ListParams::default()).await.unwrap().items;
        let ready = list.iter().find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        });
        if let Some(ip) = ready.and_then(|p| p.status.as_ref()?.pod_ip.clone()) {
            break ip;
        }
        assert!(
            started.elapsed() < DEADLINE * 2,
            "the chart's orchestrator pod never got ready: {:?}",
            list.iter().map(|p| &p.status).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let http = reqwest::Client::new();
    let base = format!("http://{pod_ip}:8080");
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["role"], "leader", "{body}");

    let created: serde_json::Value = http
        .post(format!("{base}/api/flows"))
        .bearer_auth(&token)
        .body(pumphouse_e2e::manifest(
            "chart-k8s",
            "",
            "    - respond: {hello: '{{payload.name}}'}\n",
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = created["flow"]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"));
    let hook_token = created["webhook_token"].as_str().unwrap();
    let start = http
        .post(format!("{base}/api/flows/{id}/start"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(start.status().is_success(), "{:?}", start.text().await);
    let answer = http
        .post(format!(
            "{base}/api/triggers/{id}/webhook/{hook_token}?wait=30s"
        ))
        .body(r#"{"name": "chart"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(
        body["output"],
        serde_json::json!({"hello": "chart"}),
        "{body}"
    );
    let pump_pods = Api::<Pod>::namespaced(admin.clone(), &pumps.name)
        .list(&ListParams::default().labels(&format!("pumphouse.dev/flow={id}")))
        .await
        .unwrap()
        .items;
    assert_eq!(pump_pods.len(), 1, "the flow's pump pod: {pump_pods:?}");

    // Stopped before the uninstall, so the pump's Deployment goes with the flow.
    let stop = http
        .post(format!("{base}/api/flows/{id}/stop"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert!(stop.status().is_success(), "{:?}", stop.text().await);
    helm(
        &cluster,
        &home,
        &["uninstall", "ph", "--namespace", ns, "--wait"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_waiting_on_a_slow_scale_down_on_kubernetes_is_not_failed_by_the_start_timer() {
    // The pod takes 12 s to stop (stopDelay); the start timeout is 8 s. A webhook arriving as
    // the scale-down begins waits for it, past the timer the launch before set.
    let k = kube_app(&["--start-timeout", "8s"]).await;
    let app = &k.app;
    let flow = app
        .create_flow(
            "name: slow-k8s\nidleTimeout: 500ms\nstopGrace: 30s\nconfig:\n  stopDelay: 12s\n  steps:\n    - respond: '{{payload.n}}'\n",
        )
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    app.wait_status(&flow, "idle").await;
    let (code, body) = app.webhook(&flow, &serde_json::json!({"n": 4})).await;
    assert_eq!(code, 202, "{body}");
    let exec = app
        .wait_execution(&flow, body["execution_id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "completed", "{exec:#}");
    assert_eq!(exec["output"], 4, "{exec:#}");
    let (_, s) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
    assert_ne!(s["status"], "error", "{s:#}");
}
