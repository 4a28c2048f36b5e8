//! Several replicas on PostgreSQL: all serve, one leads, a dead leader is replaced, and no
//! pump is started twice.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use pumphouse_e2e::{manifest, Backend, PostgresServer, TestApp, DEADLINE};
use serde_json::{json, Value};

async fn post(app: &TestApp, replica: usize, path: &str, body: &str) -> (u16, Value) {
    let resp = app
        .http
        .post(format!("{}{path}", app.replica(replica)))
        .body(body.to_string())
        .send()
        .await
        .expect("answered");
    let code = resp.status().as_u16();
    (code, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_serve_one_leads_and_the_survivor_takes_over_without_double_starts() {
    let mut app = TestApp::spawn_replicas(
        Backend::Docker,
        2,
        Some(PostgresServer::start()),
        &["--lease-ttl", "2s", "--restart-backoff", "100ms"],
    )
    .await;
    let leaders = app.leaders().await;
    assert_eq!(leaders.len(), 1, "exactly one leader: {leaders:?}");
    let leader = leaders[0];
    let follower = 1 - leader;

    // Created through one replica, started through the other, triggered through the follower.
    let mut steady = app
        .create_flow(&manifest(
            "steady",
            "keepAlive: true\n",
            "    - respond: '{{payload.n}}'\n",
        ))
        .await;
    let (code, _) = post(&app, 1, &format!("/api/flows/{}/start", steady.id), "").await;
    assert_eq!(code, 202);
    app.wait_status(&steady, "running").await;
    let hook = format!(
        "/api/triggers/{}/webhook/{}?wait=20s",
        steady.id, steady.token
    );
    let (code, body) = post(&app, follower, &hook, r#"{"n": 1}"#).await;
    assert_eq!(
        (code, &body["output"]),
        (200, &json!(1)),
        "through the follower: {body}"
    );

    // A token rotated through the leader: the follower takes the new one at once, and refuses
    // the old one once its copy of the flow is a second old (it keeps flows it read recently).
    let (code, body) = post(
        &app,
        leader,
        &format!("/api/flows/{}/webhook-token", steady.id),
        "",
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let new_token = body["webhook_token"]
        .as_str()
        .expect("a new token")
        .to_string();
    let webhook = |token: &str| format!("/api/triggers/{}/webhook/{token}", steady.id);
    let (code, body) = post(&app, follower, &webhook(&new_token), "{}").await;
    assert_eq!(
        code, 202,
        "the new token works at once on the follower: {body}"
    );
    let rotated_at = Instant::now();
    loop {
        let (code, _) = post(&app, follower, &webhook(&steady.token), "{}").await;
        if code == 404 {
            break;
        }
        assert_eq!(code, 202);
        assert!(
            rotated_at.elapsed() < Duration::from_secs(5),
            "the follower still takes the old token {:?} after the rotation",
            rotated_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (code, _) = post(&app, follower, &webhook(&steady.token), "{}").await;
    assert_eq!(code, 404, "and keeps refusing it");
    steady.token = new_token;

    // A flow at zero, woken by webhooks arriving at both replicas at once: one pump start.
    let sleepy = app
        .create_flow(&manifest(
            "sleepy",
            "idleTimeout: 1s\n",
            "    - respond: '{{payload.n}}'\n",
        ))
        .await;
    app.start(&sleepy).await;
    app.wait_status(&sleepy, "running").await;
    app.wait_status(&sleepy, "idle").await;
    let calls: Vec<_> = (0..20)
        .map(|n| {
            let path = format!(
                "/api/triggers/{}/webhook/{}?wait=20s",
                sleepy.id, sleepy.token
            );
            let app = &app;
            async move { post(app, n % 2, &path, &json!({"n": n}).to_string()).await }
        })
        .collect();
    for (code, body) in join_all(calls).await {
        assert_eq!(code, 200, "{body}");
    }
    let (_, s) = app.get(&format!("/api/flows/{}/status", sleepy.id)).await;
    let wakes = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["reason"] == "woken by a trigger")
        .count();
    assert_eq!(
        wakes, 1,
        "one pump start for triggers at two replicas: {s:#}"
    );

    // The leader dies; the follower takes over within the lease's TTL and supervises.
    let before = app.container(&steady).await.unwrap().id;
    let killed_at = Instant::now();
    app.kill_replica(leader);
    loop {
        if app.leaders().await == vec![follower] {
            break;
        }
        assert!(killed_at.elapsed() < DEADLINE, "nobody took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("takeover after {:?} (lease TTL 2s)", killed_at.elapsed());
    let docker = pumphouse_e2e::docker().await;
    docker
        .kill_container(
            before.as_deref().unwrap(),
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();
    let hook = format!(
        "/api/triggers/{}/webhook/{}?wait=20s",
        steady.id, steady.token
    );
    let (code, body) = post(&app, follower, &hook, r#"{"n": 2}"#).await;
    assert_eq!(
        (code, &body["output"]),
        (200, &json!(2)),
        "the new leader restarted the pump: {body}"
    );
    assert_ne!(
        app.container(&steady).await.unwrap().id,
        before,
        "a new pump"
    );

    // The old leader comes back as a follower; nothing was started twice.
    app.start_replica(leader).await;
    assert_eq!(app.leaders().await, vec![follower]);
    let running = docker
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .filters(&std::collections::HashMap::from([(
                    "label".to_string(),
                    vec![format!("pumphouse.dev/cluster={}", app.cluster)],
                )]))
                .build(),
        ))
        .await
        .unwrap();
    let mut flows: Vec<String> = running
        .iter()
        .filter_map(|c| c.labels.as_ref()?.get("pumphouse.dev/flow").cloned())
        .collect();
    flows.sort();
    let before_dedup = flows.len();
    flows.dedup();
    assert_eq!(before_dedup, flows.len(), "one running pump per flow");
}

/// Pids of the processes whose environment names the flow: its process-backend pumps,
/// whichever replica started them.
fn pump_processes(flow_id: &str) -> Vec<u32> {
    let needle = format!("FLOW_ID={flow_id}");
    std::fs::read_dir("/proc")
        .expect("reading /proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
        })
        .collect()
}

async fn wait_pump_processes(flow_id: &str, want: usize) {
    let started = Instant::now();
    loop {
        let pids = pump_processes(flow_id);
        if pids.len() == want {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{} pump processes for the flow, not {want}: {pids:?}",
            pids.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Only the leader launches and stops pumps: on the process backend a pump is a child of the
/// replica that launched it, so a start, stop or delete through a follower is carried out by
/// the leader. One pump, each trigger run once, and nothing left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_a_follower_the_process_backend_runs_one_pump_and_each_trigger_once() {
    let app = TestApp::spawn_replicas(
        Backend::Process,
        2,
        Some(PostgresServer::start()),
        // A quick reconcile, so a leader that did not launch the pump would notice it missing
        // (and start its own) while the test runs.
        &[
            "--lease-ttl",
            "2s",
            "--resync-interval",
            "200ms",
            "--restart-backoff",
            "100ms",
        ],
    )
    .await;
    let leaders = app.leaders().await;
    assert_eq!(leaders.len(), 1, "exactly one leader: {leaders:?}");
    let follower = 1 - leaders[0];
    let flow = app
        .create_flow(&manifest(
            "counted",
            "keepAlive: true\n",
            "    - append: {key: runs, value: '{{trigger.id}}'}\n    - respond: '{{payload.n}}'\n",
        ))
        .await;
    let (code, body) = post(&app, follower, &format!("/api/flows/{}/start", flow.id), "").await;
    assert_eq!(code, 202, "{body}");
    app.wait_status(&flow, "running").await;
    wait_pump_processes(&flow.id, 1).await;
    let pump = pump_processes(&flow.id)[0];
    let stat = std::fs::read_to_string(format!("/proc/{pump}/stat")).unwrap();
    // The fields after the command's closing parenthesis: state, ppid, ...
    let parent: u32 = stat
        .rsplit(')')
        .next()
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(
        Some(parent),
        app.replica_pid(leaders[0]),
        "the leader launched the pump, though the start came through the follower"
    );

    let hook = format!("/api/triggers/{}/webhook/{}?wait=20s", flow.id, flow.token);
    let calls: Vec<_> = (0..40)
        .map(|n| {
            let (app, hook) = (&app, &hook);
            async move { post(app, n % 2, hook, &json!({"n": n}).to_string()).await }
        })
        .collect();
    let mut ids = Vec::new();
    for (code, body) in join_all(calls).await {
        assert_eq!(code, 200, "{body}");
        ids.push(body["execution_id"].as_str().unwrap().to_string());
    }
    assert_eq!(pump_processes(&flow.id).len(), 1, "one pump for the flow");
    let prefix = app.pump_var(&flow, "TENANT_PREFIX").await;
    let mut admin = redis::Client::open(app.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let runs: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("{prefix}runs"))
        .arg(0)
        .arg(-1)
        .query_async(&mut admin)
        .await
        .unwrap();
    let runs: Vec<String> = runs
        .iter()
        .map(|r| serde_json::from_str::<String>(r).unwrap_or_else(|_| r.clone()))
        .collect();
    for id in &ids {
        let n = runs.iter().filter(|r| *r == id).count();
        assert_eq!(n, 1, "trigger {id} ran {n} times");
    }

    // A stop through the follower stops the leader's child.
    let (code, body) = post(&app, follower, &format!("/api/flows/{}/stop", flow.id), "").await;
    assert_eq!(code, 200, "{body}");
    wait_pump_processes(&flow.id, 0).await;

    // So does a delete through the follower, of a flow started through it.
    let (code, _) = post(&app, follower, &format!("/api/flows/{}/start", flow.id), "").await;
    assert_eq!(code, 202);
    app.wait_status(&flow, "running").await;
    wait_pump_processes(&flow.id, 1).await;
    let resp = app
        .http
        .delete(format!("{}/api/flows/{}", app.replica(follower), flow.id))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    wait_pump_processes(&flow.id, 0).await;
}

/// A flow's triggers reach its pump in sequence order whichever replica accepted them: one
/// recorded by a follower (whose note to the leader is still on its way) is sent before a later
/// one the leader accepts. The two dispatchers share one PostgreSQL store and one Redis, as
/// two replicas do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_a_follower_recorded_is_sent_before_the_leaders_later_ones() {
    use pumphouse::bus::Bus;
    use pumphouse::dispatcher::Dispatcher;
    use pumphouse::metrics::Metrics;
    use pumphouse::store::Store;
    use std::sync::Arc;

    let redis = pumphouse_e2e::RedisServer::start().await;
    let pg = PostgresServer::start();
    let store = Store::connect(&pg.url()).await.unwrap();
    store.ensure_tenant("t1", "Tenant one").await.unwrap();
    let flow = pumphouse_e2e::running_flow_record("t1", "ordered");
    store.create_flow(&flow, "test").await.unwrap();
    let bus = Bus::connect(&redis.url()).await.unwrap();
    let leader = Dispatcher::new(store.clone(), bus.clone(), Arc::new(Metrics::new()));
    let follower = Dispatcher::new(store.clone(), bus.clone(), Arc::new(Metrics::new()));

    let mut pump = redis::Client::open(redis.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    pump.subscribe(pumphouse_pump::channels::trigger(&flow.id))
        .await
        .unwrap();
    leader.open(&flow.id).await;

    let deadline = Duration::from_secs(30);
    let first = follower
        .record(&flow.id, "webhook", json!({"n": 1}), deadline)
        .await
        .unwrap();
    let second = leader
        .accept(&flow.id, "webhook", json!({"n": 2}), deadline)
        .await
        .unwrap();
    assert!(first.seq < second.seq);
    let third = leader
        .accept(&flow.id, "webhook", json!({"n": 3}), deadline)
        .await
        .unwrap();

    let mut messages = futures_util::StreamExt::take(pump.on_message(), 3);
    let mut received = Vec::new();
    let started = Instant::now();
    while received.len() < 3 {
        let left = DEADLINE.saturating_sub(started.elapsed());
        let msg = tokio::time::timeout(left, futures_util::StreamExt::next(&mut messages))
            .await
            .unwrap_or_else(|_| panic!("only {received:?} reached the pump"))
            .expect("subscribed");
        let trigger: Value = serde_json::from_str(&msg.get_payload::<String>().unwrap()).unwrap();
        received.push(trigger["id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        received,
        [first.execution_id, second.execution_id, third.execution_id],
        "sent in sequence order"
    );
}
