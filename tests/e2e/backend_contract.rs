//! One contract suite for every backend: what the `Backend` trait promises, checked against
//! real pumps. Docker and process here; Kubernetes in `kubernetes.rs`, against the suite's real
//! cluster and node.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::StreamExt as _;
use pumphouse::backend::docker::{DockerBackend, DockerConfig};
use pumphouse::backend::process::ProcessBackend;
use pumphouse::backend::{Backend, BackendEvent, PumpSpec, PumpState, Resources};
use pumphouse_e2e::{pump_binary, unique, RedisServer, PUMP_IMAGE};
use pumphouse_pump::{channels, env};

const DEADLINE: Duration = Duration::from_secs(20);

/// A pump spec as the supervisor would make it, with `redis_url` as its secret Redis URL.
pub(crate) fn spec(redis_url: &str, flow_id: &str, instance_id: &str, config: &str) -> PumpSpec {
    let plain = BTreeMap::from([
        (env::FLOW_ID.to_string(), flow_id.to_string()),
        (env::TENANT_ID.to_string(), "default".to_string()),
        (env::INSTANCE_ID.to_string(), instance_id.to_string()),
        (
            env::TENANT_PREFIX.to_string(),
            channels::tenant_prefix("default", flow_id),
        ),
        (env::HEARTBEAT_MS.to_string(), "200".to_string()),
    ]);
    let secret = BTreeMap::from([
        (
            env::ORGANISM_YAML.to_string(),
            base64::engine::general_purpose::STANDARD.encode(config),
        ),
        (env::REDIS_URL.to_string(), redis_url.to_string()),
    ]);
    PumpSpec {
        flow_id: flow_id.to_string(),
        tenant_id: "default".into(),
        instance_id: instance_id.to_string(),
        flow_name: "contract".into(),
        image: Some(PUMP_IMAGE.into()),
        env: plain,
        secret_env: secret,
        per_launch_env: BTreeSet::new(),
        resources: Resources::default(),
        stop_grace: Duration::from_secs(5),
    }
}

/// Polls `inspect` until `ok` holds for what it returns.
async fn wait_inspect(
    backend: &dyn Backend,
    flow_id: &str,
    what: &str,
    ok: impl Fn(&Option<pumphouse::backend::PumpStatus>) -> bool,
) {
    let started = Instant::now();
    loop {
        let seen = backend.inspect(flow_id).await.expect("inspect answers");
        if ok(&seen) {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "{what}; last seen {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_logs(backend: &dyn Backend, flow_id: &str, needle: &str) -> Vec<String> {
    let started = Instant::now();
    loop {
        let lines = backend.logs(flow_id, 50).await.expect("logs answer");
        if lines.iter().any(|l| l.contains(needle)) {
            return lines;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "no log line with `{needle}`: {lines:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The contract, for a backend whose pumps reach Redis at `pump_redis` (the admin URL: these
/// pumps have no Redis user of their own). `restarts_in_place`: the backend's platform restarts
/// a crashed pump by itself (Kubernetes), so one crashing pump may be reported once per crash
/// until it is stopped.
pub(crate) async fn contract_suite(
    backend: Arc<dyn Backend>,
    pump_redis: &str,
    restarts_in_place: bool,
) {
    let mut events = backend.events();
    let good = "steps:\n- log: hello\n";
    let flow = uuid::Uuid::new_v4().to_string();

    // start: one pump with the spec's instance id, listed, its output readable.
    let started = backend
        .start(&spec(pump_redis, &flow, "i-1", good))
        .await
        .unwrap();
    assert_eq!(started.flow_id, flow);
    assert_eq!(started.instance_id.as_deref(), Some("i-1"));
    wait_inspect(&*backend, &flow, "the pump never ran", |s| {
        s.as_ref().is_some_and(|p| p.state == PumpState::Running)
    })
    .await;
    wait_logs(&*backend, &flow, "instance i-1 starting").await;
    let mut tail = backend.follow_logs(&flow, 50);
    let first = tokio::time::timeout(DEADLINE, tail.next())
        .await
        .expect("following logs gives the tail at once")
        .expect("a line");
    assert!(!first.is_empty());

    // start again: the new pump replaces the old; exactly one for the flow.
    backend
        .start(&spec(pump_redis, &flow, "i-2", good))
        .await
        .unwrap();
    wait_inspect(&*backend, &flow, "the replacing pump never ran", |s| {
        s.as_ref().is_some_and(|p| {
            p.state == PumpState::Running && p.instance_id.as_deref() == Some("i-2")
        })
    })
    .await;
    let listed: Vec<_> = backend
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|p| p.flow_id == flow)
        .collect();
    assert_eq!(listed.len(), 1, "exactly one pump per flow: {listed:?}");

    // park, then start: a pump runs again.
    backend.park(&flow, Duration::from_secs(5)).await.unwrap();
    wait_inspect(&*backend, &flow, "a parked pump still runs", |s| {
        s.as_ref().is_none_or(|p| p.state != PumpState::Running)
    })
    .await;
    backend
        .start(&spec(pump_redis, &flow, "i-3", good))
        .await
        .unwrap();
    wait_inspect(&*backend, &flow, "the pump never ran after parking", |s| {
        s.as_ref().is_some_and(|p| p.state == PumpState::Running)
    })
    .await;

    // stop: nothing left, and stopping again is fine.
    backend.stop(&flow, Duration::from_secs(5)).await.unwrap();
    assert!(
        backend.inspect(&flow).await.unwrap().is_none(),
        "stop leaves nothing"
    );
    assert!(!backend
        .list()
        .await
        .unwrap()
        .iter()
        .any(|p| p.flow_id == flow));
    backend.stop(&flow, Duration::from_secs(5)).await.unwrap();

    // A pump that exits by itself is reported once, with its exit code; the exits the
    // backend was asked for above were not reported at all.
    let crashing = uuid::Uuid::new_v4().to_string();
    backend
        .start(&spec(
            pump_redis,
            &crashing,
            "c-1",
            "steps: [not, a, step]\n",
        ))
        .await
        .unwrap();
    let mut seen = Vec::new();
    let exit = tokio::time::timeout(DEADLINE, async {
        while let Some(ev) = events.next().await {
            let BackendEvent::Exited { flow_id, .. } = &ev;
            if *flow_id == crashing {
                return ev;
            }
            seen.push(ev);
        }
        panic!("the events stream ended");
    })
    .await
    .expect("the crash is reported");
    assert_eq!(
        exit,
        BackendEvent::Exited {
            flow_id: crashing.clone(),
            instance_id: Some("c-1".into()),
            code: Some(2),
            oom: false,
        }
    );
    assert!(
        seen.is_empty(),
        "requested stops and replacements were reported: {seen:?}"
    );
    wait_logs(&*backend, &crashing, "cannot start").await;
    backend
        .stop(&crashing, Duration::from_secs(5))
        .await
        .unwrap();
    let again = loop {
        let next = tokio::time::timeout(Duration::from_millis(300), events.next()).await;
        match next {
            // A crash of the same pump that happened before the stop, after a restart in place.
            Ok(Some(ev)) if restarts_in_place && ev == exit => continue,
            other => break other,
        }
    };
    assert!(again.is_err(), "an exit is reported once: {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docker_backend_keeps_the_backend_contract() {
    let redis = RedisServer::start().await;
    let backend = DockerBackend::connect(DockerConfig {
        socket: None,
        network: "host".into(),
        cluster: unique("test"),
    })
    .await
    .expect("the Docker engine answers; start it with `dockerd &`");
    contract_suite(Arc::new(backend), &redis.url(), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_backend_keeps_the_backend_contract() {
    let redis = RedisServer::start().await;
    let backend = ProcessBackend::new(pump_binary()).expect("the pump binary; cargo build --bins");
    contract_suite(Arc::new(backend), &redis.url(), false).await;
}
