//! The Kubernetes backend and the chart against a real API server (etcd, kube-apiserver with
//! Node,RBAC and PodSecurity, controller-manager and scheduler, started by `ops/test.sh`).
//!
//! The backend signs in as the chart's ServiceAccount, with the Role `helm template` renders,
//! never as admin; admin only sets up and reads back. Every test has namespaces of its own, the
//! pumps' one enforcing PodSecurity `restricted`.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, ListParams, Patch, PatchParams};
use pumphouse::backend::kubernetes::{KubernetesBackend, KubernetesConfig};
use pumphouse::backend::{Backend, PumpState};
use pumphouse_e2e::kubernetes::{ChartAccount, KubeCluster, TestNamespace};
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
    _account: ChartAccount,
}

async fn kube_app(extra: &[&str]) -> KubeApp {
    let cluster = KubeCluster::get();
    let node_ip = cluster.node_ip().to_string();
    let admin = cluster.admin().await;
    let release = cluster.namespace("ph-release", false).await;
    let pumps = cluster.namespace("ph-pumps", true).await;
    let account = cluster
        .chart_account(&release.name, &pumps.name, |_| {})
        .await;
    let app =
        pumphouse_e2e::TestApp::spawn_kubernetes(&account.kubeconfig, &pumps.name, &node_ip, extra)
            .await;
    KubeApp {
        app,
        admin,
        pumps,
        _release: release,
        _account: account,
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
