//! Supervision: crash loops, OOM kills, orchestrator restarts and shutdowns, a Redis restart,
//! a store outage.

use std::time::{Duration, Instant};

use pumphouse_e2e::{manifest, Backend, PostgresServer, TestApp, TestFlow, DEADLINE};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::oneshot;

/// Waits for the execution `accepted` names and asserts it completed with `output`.
async fn completes_with(app: &TestApp, flow: &TestFlow, accepted: &Value, output: Value) {
    let e = app
        .wait_execution(flow, accepted["execution_id"].as_str().unwrap())
        .await;
    assert_eq!(
        (e["status"].as_str(), &e["output"]),
        (Some("completed"), &output),
        "{e:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pump_that_keeps_exiting_is_restarted_with_back_off_then_put_in_error() {
    let app = TestApp::spawn_with(Backend::Process, |c| {
        c.restart_backoff = Duration::from_millis(50);
        c.crash_limit = 3;
    })
    .await;
    let flow = app
        .create_flow(&manifest(
            "crashy",
            "",
            "    - log: 'about to crash on {{payload.n}}'\n    - exit: 3\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let (code, accepted) = app.webhook(&flow, &json!({"n": 1})).await;
    assert_eq!(code, 202);

    // The trigger is handed to each new pump, which crashes on it again: a crash loop.
    let s = app.wait_status(&flow, "error").await;
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("crash loop: the pump ended 3 times"),
        "{reason}"
    );
    assert!(
        reason.contains("exited unexpectedly with code 3"),
        "the exit code: {reason}"
    );
    assert!(
        reason.contains("about to crash on 1"),
        "the log tail: {reason}"
    );
    let reasons: Vec<&str> = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["reason"].as_str())
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("restarting in 50ms (crash 1 of 3")),
        "{reasons:#?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("restarting in 100ms (crash 2 of 3")),
        "back-off doubles: {reasons:#?}"
    );

    let exec = app
        .wait_execution(&flow, accepted["execution_id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "failed");
    assert!(
        exec["error"].as_str().unwrap().contains("crash loop"),
        "{exec:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oom_killed_pump_is_reported_as_killed_for_memory() {
    let app = TestApp::spawn_with(Backend::Docker, |c| c.crash_limit = 1).await;
    let flow = app
        .create_flow(&manifest(
            "greedy",
            "resources: {memory: 16Mi}\n",
            "    - allocate: 64Mi\n    - respond: never\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    app.webhook(&flow, &json!({})).await;
    let s = app.wait_status(&flow, "error").await;
    let reason = s["reason"].as_str().unwrap();
    assert!(
        reason.contains("code 137 (killed for exceeding its memory limit)"),
        "{reason}"
    );
    // A flow in error has no pump on any backend, so the reason is where the kill is told.
    app.wait_no_pump(&flow).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_orchestrator_restarted_adopts_its_pumps_removes_orphans_and_loses_nothing() {
    let mut app = TestApp::spawn_process(Backend::Docker, &[]).await;
    let busy = app
        .create_flow(&manifest(
            "busy",
            "keepAlive: true\n",
            "    - sleep: 2s\n    - respond: '{{payload.n}}'\n",
        ))
        .await;
    let calm = app
        .create_flow(&manifest(
            "calm",
            "keepAlive: true\n",
            "    - respond: calm\n",
        ))
        .await;
    for f in [&busy, &calm] {
        app.start(f).await;
        app.wait_status(f, "running").await;
    }
    let before: Vec<_> = [&busy, &calm]
        .iter()
        .map(|f| async { app.container(f).await.unwrap() })
        .collect();
    let before = futures_util::future::join_all(before).await;
    // In flight when the orchestrator dies: acknowledged, running, not finished.
    let (_, first) = app.webhook(&busy, &json!({"n": 1})).await;
    let (_, second) = app.webhook(&busy, &json!({"n": 2})).await;
    app.wait_execution_status(&busy, first["execution_id"].as_str().unwrap(), "running")
        .await;
    app.kill_server();

    // A container that says it is ours but has no flow behind it.
    let docker = pumphouse_e2e::docker().await;
    let orphan = pumphouse_e2e::run_labelled_container(&docker, &app.cluster).await;

    app.start_server().await;
    for (f, c) in [&busy, &calm].iter().zip(&before) {
        let now = app.container(f).await.unwrap();
        assert_eq!(now.id, c.id, "{} kept its container", f.name);
        assert_eq!(
            now.state.as_ref().unwrap().started_at,
            c.state.as_ref().unwrap().started_at,
            "{} was not restarted",
            f.name
        );
        let s = app.wait_status(f, "running").await;
        assert_eq!(s["pump"]["state"], "running");
    }
    let gone = docker
        .inspect_container(
            &orphan,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await;
    assert!(gone.is_err(), "the orphan was removed");
    for accepted in [first, second] {
        let e = app
            .wait_execution(&busy, accepted["execution_id"].as_str().unwrap())
            .await;
        assert_eq!(e["status"], "completed", "{e:#}");
    }
    let (code, body) = app
        .post(
            &format!("/api/triggers/{}/webhook/{}?wait=10s", calm.id, calm.token),
            "{}",
        )
        .await;
    assert_eq!((code, &body["output"]), (200, &json!("calm")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_leaves_pumps_running() {
    let mut app = TestApp::spawn_process(Backend::Docker, &[]).await;
    let flow = app
        .create_flow(&manifest(
            "steady",
            "keepAlive: true\n",
            "    - sleep: 1s\n    - respond: done\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let container = app.container(&flow).await.unwrap().id;
    let url = app.url(&format!(
        "/api/triggers/{}/webhook/{}?wait=20s",
        flow.id, flow.token
    ));
    let http = app.http.clone();
    let waiting = tokio::spawn(async move { http.post(url).body("{}").send().await });
    // Let the request reach the server before the signal.
    let started = Instant::now();
    while app.executions(&flow).await.is_empty() {
        assert!(started.elapsed() < DEADLINE, "the request never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let status = tokio::task::block_in_place(|| app.terminate_server());
    assert!(
        status.success(),
        "pumphouse exits 0 on SIGTERM: {status:?}\n{}",
        app.server_log()
    );
    let resp = waiting
        .await
        .unwrap()
        .expect("the request in flight was answered");
    assert_eq!(resp.status().as_u16(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["output"], "done");
    let c = app.container(&flow).await.unwrap();
    assert_eq!(
        (c.id, c.state.unwrap().running),
        (container, Some(true)),
        "the pump keeps running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_trigger_and_readyz_says_when_redis_is_down() {
    let mut app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest(
            "sturdy",
            "keepAlive: true\ndeliveryTimeout: 60s\n",
            "    - respond: '{{payload.n}}'\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;

    app.redis.stop();
    let (code, ready) = app.get("/readyz").await;
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["redis"]["ok"], false);
    assert_eq!(ready["store"]["ok"], true);
    let (code, accepted) = app.webhook(&flow, &json!({"n": 9})).await;
    assert_eq!(
        code, 202,
        "triggers are still accepted, durably: {accepted}"
    );

    app.redis.restart().await;
    completes_with(&app, &flow, &accepted, json!(9)).await;
    let (code, _) = app.get("/readyz").await;
    assert_eq!(code, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_step_adopts_what_runs_removes_orphans_and_is_idempotent() {
    use pumphouse::supervisor::reconcile::Step;
    let app = TestApp::spawn(Backend::Docker).await;
    let supervisor = app.supervisor.clone().unwrap();
    let flow = app
        .create_flow(&manifest(
            "kept",
            "keepAlive: true\n",
            "    - respond: kept\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let container = app.container(&flow).await.unwrap().id;
    for _ in 0..2 {
        assert_eq!(supervisor.reconcile(&flow.id).await.unwrap(), Step::Adopted);
        assert_eq!(
            app.container(&flow).await.unwrap().id,
            container,
            "nothing restarted"
        );
    }

    let docker = pumphouse_e2e::docker().await;
    let orphan = pumphouse_e2e::run_labelled_container(&docker, &app.cluster).await;
    let info = docker
        .inspect_container(
            &orphan,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .unwrap();
    let orphan_flow = info.config.unwrap().labels.unwrap()["pumphouse.dev/flow"].clone();
    assert_eq!(
        supervisor.reconcile(&orphan_flow).await.unwrap(),
        Step::RemovedOrphan
    );
    assert_eq!(
        supervisor.reconcile(&orphan_flow).await.unwrap(),
        Step::Nothing,
        "idempotent"
    );
    assert!(docker
        .inspect_container(
            &orphan,
            None::<bollard::query_parameters::InspectContainerOptions>
        )
        .await
        .is_err());
}

/// A replica killed between a flow's `starting` and its pump's start leaves no one to finish
/// the start: the leader's reconcile launches it again once the start timeout has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_abandoned_by_its_launcher_is_launched_again_by_reconcile() {
    use pumphouse::store::{status, Store, Transition};
    use pumphouse::supervisor::reconcile::Step;
    let app = TestApp::spawn_with(Backend::Process, |c| {
        c.start_timeout = Duration::from_secs(1);
    })
    .await;
    let supervisor = app.supervisor.clone().unwrap();
    let flow = app
        .create_flow(&manifest(
            "abandoned",
            "keepAlive: true\n",
            "    - respond: 'again {{payload.n}}'\n",
        ))
        .await;
    // What a launcher leaves when it dies before starting the pump: `starting`, an instance,
    // no pump.
    let store = Store::connect(&app.store_url).await.unwrap();
    let mut t = Transition::new(
        status::STARTING,
        "started by a replica that then died",
        "test",
    );
    t.desired = Some("running");
    t.pump = Some((Some("instance-of-a-dead-replica"), None));
    assert!(store.transition(&flow.id, t).await.unwrap());
    assert_eq!(
        supervisor.reconcile(&flow.id).await.unwrap(),
        Step::Nothing,
        "a fresh start may still be in hand elsewhere"
    );
    let deadline = Instant::now() + DEADLINE;
    loop {
        match supervisor.reconcile(&flow.id).await.unwrap() {
            Step::Relaunched => break,
            Step::Nothing => {}
            other => panic!("unexpected step {other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned start was never taken up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.wait_status(&flow, "running").await;
    let (code, exec) = app.webhook(&flow, &json!({"n": 1})).await;
    assert_eq!(code, 202, "{exec}");
    let done = app
        .wait_execution(&flow, exec["execution_id"].as_str().unwrap())
        .await;
    assert_eq!(done["output"], json!("again 1"), "{done}");
}

/// An HTTP server on loopback that holds its first request until released, so a pump step
/// calling it runs until the test says. Returns its URL, a signal that the request arrived,
/// and the release.
async fn held_request() -> (String, oneshot::Receiver<()>, oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let (arrived_tx, arrived) = oneshot::channel();
    let (release, released) = oneshot::channel::<()>();
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = vec![0u8; 4096];
        let _ = socket.read(&mut request).await;
        let _ = arrived_tx.send(());
        let _ = released.await;
        let _ = socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\n\"ok\"")
            .await;
    });
    (url, arrived, release)
}

/// A store outage while a pump reports loses nothing: the events the leader reads then are not
/// acknowledged, so they are read again and applied once the store is back. They used to be
/// acknowledged anyway, and the execution stayed `running` for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_while_a_pump_reports_loses_no_outcome() {
    let (url, arrived, release) = held_request().await;
    // Docker: the harness removes its pumps, whereas a killed orchestrator's process pumps
    // would outlive the test.
    let app = TestApp::spawn_replicas(
        Backend::Docker,
        1,
        Some(PostgresServer::start()),
        &["--lease-ttl", "2s"],
    )
    .await;
    let flow = app
        .create_flow(&manifest(
            "patient",
            "keepAlive: true\ndeliveryTimeout: 5m\n",
            &format!("    - http: {{url: '{url}', as: reply}}\n    - respond: '{{{{vars.reply.body}}}}'\n"),
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let (code, accepted) = app.webhook(&flow, &json!({})).await;
    assert_eq!(code, 202, "{accepted}");
    let id = accepted["execution_id"].as_str().unwrap().to_string();
    app.wait_execution_status(&flow, &id, "running").await;
    tokio::time::timeout(DEADLINE, arrived)
        .await
        .expect("the pump's step never called")
        .unwrap();

    app.postgres().stop();
    release.send(()).unwrap();
    // The leader reads the pump's `completed` while the store is away and fails to apply it;
    // or, if its lease renewal fails first, it steps down and the next term reads it again.
    let started = Instant::now();
    while !["applying pump events failed", "no longer leading"]
        .iter()
        .any(|line| app.server_log().contains(line))
    {
        assert!(
            started.elapsed() < DEADLINE,
            "the leader never tried to apply the pump's `completed`:\n{}",
            app.server_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Meanwhile a webhook is refused with 503 and when to retry, not a 500.
    let resp = reqwest::Client::new()
        .post(app.url(&format!("/api/triggers/{}/webhook/{}", flow.id, flow.token)))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body = resp.text().await.unwrap();
    assert!(body.contains("the store is unavailable"), "{body}");

    app.postgres().start_again();
    completes_with(&app, &flow, &accepted, json!("ok")).await;
}

/// A pump that is up but hung (here: frozen with SIGSTOP, so it sends nothing) is stopped once
/// it has been silent past the liveness limit and replaced, and the trigger it never took runs
/// on the next pump. The backend alone never notices: the process is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_pump_that_sends_no_heartbeat_is_replaced() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest(
            "frozen",
            "keepAlive: true\n",
            "    - respond: '{{payload.n}}'\n",
        ))
        .await;
    app.start(&flow).await;
    let before = app.wait_status(&flow, "running").await;
    let pid = before["pump"]["pump_ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("pid:"))
        .unwrap_or_else(|| panic!("a process pump has a pid: {before:#}"))
        .to_string();
    pumphouse_e2e::signal(pid.parse().unwrap(), "STOP");
    let (code, accepted) = app.webhook(&flow, &json!({"n": 7})).await;
    assert_eq!(code, 202, "{accepted}");

    let restarting = app.wait_status(&flow, "starting").await;
    let reason = restarting["reason"].as_str().unwrap();
    assert!(
        reason.contains("sent no heartbeat") && reason.contains("stopped as hung"),
        "{reason}"
    );
    completes_with(&app, &flow, &accepted, json!(7)).await;
    let after = app.wait_status(&flow, "running").await;
    assert_ne!(
        after["pump"]["instance_id"], before["pump"]["instance_id"],
        "a new pump"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pump_that_exits_1_before_ready_is_restarted_not_failed() {
    // A pump written from the contract whose database is not up at its first start: it exits
    // 1 once, then runs. Code 1 is a crash, restarted with back-off; only 2 ends the start.
    let dir = pumphouse_e2e::TempDir::new("pumphouse-flaky-pump");
    let script = dir.0.join("pump.sh");
    let marker = dir.0.join("started-once");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ ! -e '{m}' ]; then touch '{m}'; echo 'pump: the database is not up yet' >&2; exit 1; fi\nexec '{pump}'\n",
            m = marker.display(),
            pump = pumphouse_e2e::pump_binary().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = TestApp::spawn_with(Backend::Process, |c| {
        c.pump_binary = Some(script.clone());
        c.restart_backoff = Duration::from_millis(50);
    })
    .await;
    let flow = app
        .create_flow(&manifest("late-db", "", "    - respond: '{{payload.n}}'\n"))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let (_, s) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
    let restarted = s["events"].as_array().unwrap().iter().any(|e| {
        e["reason"].as_str().is_some_and(|r| {
            r.contains("exited before it was ready with code 1; restarting in")
                && r.contains("the database is not up yet")
        })
    });
    assert!(restarted, "{s:#}");
    let (code, accepted) = app.webhook(&flow, &json!({"n": 3})).await;
    assert_eq!(code, 202, "{accepted}");
    completes_with(&app, &flow, &accepted, json!(3)).await;
}
