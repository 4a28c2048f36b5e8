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
