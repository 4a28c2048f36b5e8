//! Wake on Kubernetes, beside its baseline from the same run, on the suite's real cluster and
//! node (`ops/kubernetes/cluster.sh`, `node.sh`):
//! - ours: a webhook for a flow at zero (Deployment at zero replicas) -> the new pod's pump
//!   acknowledges the trigger (read from the flow's events stream);
//! - baseline: a plain Deployment of the same image, scaled 0 -> 1 by a merge patch -> its
//!   pod's first log line, read through the API server (polled every 20 ms).
//!
//! The orchestrator signs in as the chart's ServiceAccount, as in the suite. Run with
//! `ops/bench-wake-kubernetes.sh`. Loopback and the node's local address only.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams, PostParams};
use pumphouse_bench::scale::pump_env;
use pumphouse_bench::{header, ms, row, webhook_to_ack, AckWatcher, Samples};
use pumphouse_e2e::kubernetes::KubeCluster;
use pumphouse_e2e::{manifest, TestApp, TestFlow, PUMP_IMAGE};

/// How long a wake may take before the run fails: a cold pod start is seconds.
const WAKE_DEADLINE: Duration = Duration::from_secs(60);

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Waits until the flow is at zero and its pod is gone.
async fn at_zero(app: &TestApp, pods: &Api<Pod>, flow: &TestFlow) {
    let started = Instant::now();
    let selector = format!("pumphouse.dev/flow={}", flow.id);
    loop {
        let (_, s) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
        let left = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("listing pods")
            .items;
        if s["status"] == "idle" && left.is_empty() {
            return;
        }
        assert!(started.elapsed() < WAKE_DEADLINE, "never at zero: {s}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The baseline's Deployment: the pump image with the contract's env, nothing of ours.
fn bare_deployment(name: &str, redis_url: &str) -> Deployment {
    let env: Vec<serde_json::Value> = pump_env(redis_url, "bare")
        .into_iter()
        .map(|(k, v)| serde_json::json!({"name": k, "value": v}))
        .collect();
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"bench": name}},
            "template": {
                "metadata": {"labels": {"bench": name}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "terminationGracePeriodSeconds": 1,
                    "securityContext": {"runAsNonRoot": true, "runAsUser": 65534,
                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [{
                        "name": "pump",
                        "image": PUMP_IMAGE,
                        "imagePullPolicy": "Never",
                        "env": env,
                        "securityContext": {"allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]}}
                    }]
                }
            }
        }
    }))
    .expect("a Deployment")
}

/// Scales the bare Deployment to `n`.
async fn scale(deployments: &Api<Deployment>, name: &str, n: i32) {
    deployments
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"replicas": n}})),
        )
        .await
        .expect("scaling the baseline");
}

/// 0 -> 1, then the time until its pod has printed a line.
async fn bare_wake(deployments: &Api<Deployment>, pods: &Api<Pod>, name: &str) -> Duration {
    let selector = format!("bench={name}");
    let t0 = Instant::now();
    scale(deployments, name, 1).await;
    loop {
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .expect("listing pods")
            .items;
        for pod in list
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            let pod_name = pod.metadata.name.as_deref().unwrap_or_default();
            if let Ok(log) = pods.logs(pod_name, &LogParams::default()).await {
                if !log.is_empty() {
                    return t0.elapsed();
                }
            }
        }
        assert!(
            t0.elapsed() < WAKE_DEADLINE,
            "the baseline pod never printed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn bare_to_zero(deployments: &Api<Deployment>, pods: &Api<Pod>, name: &str) {
    scale(deployments, name, 0).await;
    let started = Instant::now();
    let selector = format!("bench={name}");
    while !pods
        .list(&ListParams::default().labels(&selector))
        .await
        .expect("listing pods")
        .items
        .is_empty()
    {
        assert!(
            started.elapsed() < WAKE_DEADLINE,
            "the baseline pod never went"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = env_number("BENCH_COLD_RUNS", 20);
    let cluster = KubeCluster::get();
    let node_ip = cluster.node_ip().to_string();
    let admin = cluster.admin().await;
    let release = cluster.namespace("ph-bench", false).await;
    let pumps = cluster.namespace("ph-bench-pumps", true).await;
    let account = cluster
        .chart_account(&release.name, &pumps.name, |_| {})
        .await;
    let app = TestApp::spawn_kubernetes(&account.kubeconfig, &pumps.name, &node_ip, &[]).await;
    println!("pumphouse wake on Kubernetes: {runs} wakes each, one node, image {PUMP_IMAGE}");
    println!("reproduce: ops/bench-wake-kubernetes.sh   (BENCH_COLD_RUNS to change the count)\n");

    let pods: Api<Pod> = Api::namespaced(admin.clone(), &pumps.name);
    let deployments: Api<Deployment> = Api::namespaced(admin.clone(), &pumps.name);
    let flow = app
        .create_flow(&manifest(
            "cold",
            "idleTimeout: 1s\n",
            "    - respond: ok\n",
        ))
        .await;
    let stream = pumphouse_pump::channels::events_stream("default", &flow.id);
    let watcher = AckWatcher::start(&app.redis.url(), &stream).await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;

    let bare = "bare-pump";
    deployments
        .create(
            &PostParams::default(),
            &bare_deployment(bare, &app.redis.url_at(&node_ip)),
        )
        .await
        .expect("creating the baseline Deployment");

    let mut ours = Vec::new();
    let mut base = Vec::new();
    for _ in 0..runs {
        at_zero(&app, &pods, &flow).await;
        ours.push(ms(
            webhook_to_ack(&app, &flow, &watcher, WAKE_DEADLINE).await
        ));
        base.push(ms(bare_wake(&deployments, &pods, bare).await));
        bare_to_zero(&deployments, &pods, bare).await;
    }
    let (ours, base) = (Samples::new(ours), Samples::new(base));
    let p = [50.0, 95.0, 100.0];
    header(&p);
    row("kubernetes: webhook at zero -> pump ack", &ours, &p);
    row("  baseline: Deployment 0 -> 1 -> first log line", &base, &p);
    println!(
        "  ratio at p50: {:.2}x, at p95: {:.2}x",
        ours.pct(50.0) / base.pct(50.0),
        ours.pct(95.0) / base.pct(95.0)
    );
}
