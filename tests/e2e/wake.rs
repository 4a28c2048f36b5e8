//! Scale to zero and waking up: idle flows stop, triggers wake them, nothing is lost.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use pumphouse_e2e::{manifest, Backend, TestApp, TestFlow, DEADLINE};
use serde_json::{json, Value};

/// Reason the supervisor records for a wake.
const WOKEN: &str = "woken by a trigger";

async fn events(app: &TestApp, flow: &TestFlow) -> Vec<Value> {
    let (_, s) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
    s["events"].as_array().cloned().unwrap_or_default()
}

/// Waits until every execution of the flow has finished; returns them oldest first.
async fn all_finished(app: &TestApp, flow: &TestFlow, count: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let (_, v) = app
            .get(&format!("/api/flows/{}/executions?limit=1000", flow.id))
            .await;
        let mut list = v.as_array().cloned().unwrap_or_default();
        let done = list
            .iter()
            .filter(|e| e["status"] == "completed" || e["status"] == "failed")
            .count();
        if list.len() == count && done == count {
            list.sort_by_key(|e| e["seq"].as_i64());
            return list;
        }
        assert!(
            started.elapsed() < DEADLINE * 2,
            "{done} of {count} executions finished ({} recorded)",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn redis_list(app: &TestApp, key: &str) -> Vec<String> {
    let mut c = redis::Client::open(app.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query_async(&mut c)
        .await
        .unwrap()
}

/// Waits until the flow's container is stopped (parked: `idle` is recorded before the pump is
/// stopped, and it stops once it has drained); returns its id.
async fn parked_container(app: &TestApp, flow: &TestFlow) -> String {
    let started = Instant::now();
    loop {
        let c = app
            .container(flow)
            .await
            .expect("a parked container is kept");
        if c.state.as_ref().and_then(|s| s.running) == Some(false) {
            return c.id.unwrap();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the idle pump's container never stopped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creates a flow with a short idle timeout, starts it and waits until the reaper has taken it
/// to zero.
async fn flow_at_zero(app: &TestApp, name: &str, steps: &str) -> TestFlow {
    let flow = app
        .create_flow(&manifest(name, "idleTimeout: 1s\n", steps))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    app.wait_status(&flow, "idle").await;
    flow
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_webhooks_at_zero_on_docker_start_one_pump_and_complete_in_arrival_order() {
    two_hundred_webhooks_at_zero(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_webhooks_at_zero_as_processes_start_one_pump_and_complete_in_arrival_order() {
    two_hundred_webhooks_at_zero(Backend::Process).await;
}

async fn two_hundred_webhooks_at_zero(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let steps =
        "    - append: {key: order, value: '{{trigger.id}}'}\n    - respond: '{{payload.i}}'\n";
    let flow = flow_at_zero(&app, "crowd", steps).await;
    // At zero now. A loaded machine can leave more than a second between two of the 200 calls,
    // and the 1 s idle timeout would then rightly scale the flow down between them: lengthen it.
    // Only the idle policy changes, not the pump's config, so the parked container still fits.
    let (code, body) = app
        .call_as(
            None,
            reqwest::Method::PUT,
            &format!("/api/flows/{}", flow.id),
            &manifest("crowd", "idleTimeout: 10m\n", steps),
        )
        .await;
    assert_eq!(code, 200, "{body}");
    let parked = match backend {
        Backend::Docker => Some(parked_container(&app, &flow).await),
        Backend::Process | Backend::Kubernetes => None,
    };

    let calls = (0..200).map(|i| {
        let url = app.url(&format!("/api/triggers/{}/webhook/{}", flow.id, flow.token));
        let http = app.http.clone();
        async move {
            let resp = http
                .post(url)
                .body(json!({"i": i}).to_string())
                .send()
                .await
                .unwrap();
            resp.status().as_u16()
        }
    });
    let codes = join_all(calls).await;
    assert!(
        codes.iter().all(|c| *c == 202),
        "every webhook accepted: {codes:?}"
    );

    let execs = all_finished(&app, &flow, 200).await;
    assert!(
        execs.iter().all(|e| e["status"] == "completed"),
        "all completed; these did not: {:#?}",
        execs
            .iter()
            .filter(|e| e["status"] != "completed")
            .map(|e| (&e["seq"], &e["status"], &e["error"]))
            .collect::<Vec<_>>()
    );
    let wakes = events(&app, &flow)
        .await
        .iter()
        .filter(|e| e["reason"] == WOKEN)
        .count();
    assert_eq!(wakes, 1, "exactly one pump start for 200 triggers");
    let by_seq: Vec<String> = execs
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    if let Some(parked) = parked {
        let woken = app.container(&flow).await.unwrap();
        assert_eq!(
            woken.id.unwrap(),
            parked,
            "the wake restarted the parked container"
        );
    }
    let ran: Vec<String> = redis_list(&app, &format!("tenant:default:flow:{}:order", flow.id))
        .await
        .into_iter()
        .map(|v| serde_json::from_str::<String>(&v).unwrap())
        .collect();
    assert_eq!(ran, by_seq, "the pump ran them once each, in arrival order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_flow_scales_to_zero_a_keep_alive_one_never_does_and_a_trigger_wakes_it() {
    let app = TestApp::spawn(Backend::Process).await;
    let steady = app
        .create_flow(&manifest(
            "steady",
            "idleTimeout: 1s\nkeepAlive: true\n",
            "    - respond: steady\n",
        ))
        .await;
    app.start(&steady).await;
    app.wait_status(&steady, "running").await;
    // Armed after `steady`, so by the time it is reaped, steady's deadline has passed too.
    let sleepy = flow_at_zero(&app, "sleepy", "    - respond: '{{payload.n}}'\n").await;
    let (_, s) = app.get(&format!("/api/flows/{}/status", steady.id)).await;
    assert_eq!(
        s["status"], "running",
        "keepAlive flows are never scaled down: {s:#}"
    );

    let (_, s) = app.get(&format!("/api/flows/{}/status", sleepy.id)).await;
    assert!(s["pump"].is_null(), "the idle pump is gone: {s:#}");
    let reaped = &s["events"][0];
    assert_eq!(reaped["to_status"], "idle");
    assert_eq!(reaped["reason"], "no work for 1s; scaled to zero");
    assert_eq!(reaped["actor"], "reaper");

    let (code, body) = app
        .post(
            &format!(
                "/api/triggers/{}/webhook/{}?wait=20s",
                sleepy.id, sleepy.token
            ),
            r#"{"n": 5}"#,
        )
        .await;
    assert_eq!(
        code, 200,
        "a webhook wakes the flow and waits for its result: {body}"
    );
    assert_eq!(body["output"], 5);
    assert_eq!(body["status"], "completed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_racing_the_scale_down_are_all_delivered() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest(
            "racy",
            "idleTimeout: 1s\n",
            "    - respond: '{{payload.n}}'\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    // Fire the moment the flow leaves `running` (the reaper is stopping the pump), three times.
    let mut sent = Vec::new();
    for round in 0..3 {
        let started = Instant::now();
        loop {
            let (_, s) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
            if s["status"] == "idle" {
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "never went idle in round {round}: {s:#}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (code, body) = app.webhook(&flow, &json!({"n": round})).await;
        assert_eq!(code, 202, "{body}");
        sent.push(body["execution_id"].as_str().unwrap().to_string());
        let exec = app.wait_execution(&flow, sent.last().unwrap()).await;
        assert_eq!(exec["status"], "completed", "round {round}: {exec:#}");
        assert_eq!(exec["output"], round);
    }
    let wakes = events(&app, &flow)
        .await
        .iter()
        .filter(|e| e["reason"] == WOKEN)
        .count();
    assert_eq!(wakes, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pump_killed_while_holding_a_trigger_hands_it_to_the_next_pump() {
    let app = TestApp::spawn_with(Backend::Docker, |c| {
        c.restart_backoff = Duration::from_millis(100)
    })
    .await;
    let flow = app
        .create_flow(&manifest(
            "fragile",
            "",
            "    - sleep: 3s\n    - respond: survived\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let (_, accepted) = app.webhook(&flow, &json!({})).await;
    let id = accepted["execution_id"].as_str().unwrap().to_string();
    app.wait_execution_status(&flow, &id, "running").await;
    let first_instance = app.container(&flow).await.unwrap().id.unwrap();
    let docker = pumphouse_e2e::docker().await;
    docker
        .kill_container(
            &first_instance,
            None::<bollard::query_parameters::KillContainerOptions>,
        )
        .await
        .unwrap();

    let exec = app.wait_execution(&flow, &id).await;
    assert_eq!(exec["status"], "completed", "{exec:#}");
    assert_eq!(exec["output"], "survived");
    let now = app.container(&flow).await.unwrap().id.unwrap();
    assert_ne!(now, first_instance, "a new pump ran it");
    let s = app.wait_status(&flow, "running").await;
    let crash = s["events"].as_array().unwrap().iter().find(|e| {
        e["reason"]
            .as_str()
            .unwrap_or("")
            .contains("exited unexpectedly with code 137")
    });
    assert!(crash.is_some(), "the crash is recorded: {s:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pump_that_never_gets_ready_fails_its_held_triggers_and_the_flow_shows_error() {
    let app = TestApp::spawn_with(Backend::Process, |c| {
        c.start_timeout = Duration::from_secs(2)
    })
    .await;
    let flow = flow_at_zero(&app, "stuck", "    - respond: ok\n").await;
    // The next start of this flow will never subscribe.
    let resp = app
        .http
        .put(app.url(&format!("/api/flows/{}", flow.id)))
        .body("name: stuck\nidleTimeout: 1s\nconfig:\n  startDelay: 1h\n  steps:\n    - respond: ok\n")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let payloads: Vec<Value> = (0..3).map(|i| json!({"i": i})).collect();
    let ids: Vec<String> = join_all(payloads.iter().map(|p| app.webhook(&flow, p)))
        .await
        .into_iter()
        .map(|(code, b)| {
            assert_eq!(code, 202, "{b}");
            b["execution_id"].as_str().unwrap().to_string()
        })
        .collect();
    let s = app.wait_status(&flow, "error").await;
    assert!(
        s["reason"]
            .as_str()
            .unwrap()
            .contains("did not report ready within 2s"),
        "{s:#}"
    );
    for id in ids {
        let e = app.wait_execution(&flow, &id).await;
        assert_eq!(e["status"], "failed");
        assert!(
            e["error"]
                .as_str()
                .unwrap()
                .contains("did not report ready within 2s"),
            "{e:#}"
        );
    }
    let (code, body) = app.webhook(&flow, &json!({})).await;
    assert_eq!(code, 409, "a flow in error does not take triggers: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_returns_the_pumps_result_or_504_with_the_execution_id() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest(
            "slowpoke",
            "",
            "    - sleep: 500ms\n    - respond: {slept: '{{payload.who}}'}\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let (code, body) = app
        .post(
            &format!("/api/triggers/{}/inject?wait=10s", flow.name),
            r#"{"who": "ada"}"#,
        )
        .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["output"], json!({"slept": "ada"}));

    let (code, body) = app
        .post(
            &format!(
                "/api/triggers/{}/webhook/{}?wait=100ms",
                flow.id, flow.token
            ),
            r#"{"who": "bob"}"#,
        )
        .await;
    assert_eq!(code, 504, "{body}");
    let id = body["execution_id"].as_str().unwrap();
    let e = app.wait_execution(&flow, id).await;
    assert_eq!(e["status"], "completed", "the execution went on: {e:#}");

    let (code, body) = app
        .post(
            &format!("/api/triggers/{}/inject?wait=soon", flow.name),
            "{}",
        )
        .await;
    assert_eq!(code, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_docker_flow_restarts_its_parked_container_unless_the_manifest_changed() {
    let app = TestApp::spawn(Backend::Docker).await;
    let flow = flow_at_zero(&app, "thrifty", "    - respond: '{{payload.v}}'\n").await;
    let parked = parked_container(&app, &flow).await;

    let (code, body) = app
        .post(
            &format!("/api/triggers/{}/webhook/{}?wait=20s", flow.id, flow.token),
            r#"{"v": 1}"#,
        )
        .await;
    assert_eq!((code, &body["output"]), (200, &json!(1)), "{body}");
    assert_eq!(
        app.container(&flow).await.unwrap().id.unwrap(),
        parked,
        "same container, restarted"
    );
    app.wait_status(&flow, "idle").await;
    parked_container(&app, &flow).await;

    // A manifest change reaches the pump: the next wake creates a container with it.
    let resp = app
        .http
        .put(app.url(&format!("/api/flows/{}", flow.id)))
        .body(manifest(
            "thrifty",
            "idleTimeout: 1s\nenv: {COLOUR: blue}\n",
            "    - respond: 'v{{payload.v}}'\n",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (code, body) = app
        .post(
            &format!("/api/triggers/{}/webhook/{}?wait=20s", flow.id, flow.token),
            r#"{"v": 2}"#,
        )
        .await;
    assert_eq!((code, &body["output"]), (200, &json!("v2")), "{body}");
    let fresh = app.container(&flow).await.unwrap();
    assert_ne!(
        fresh.id.as_deref(),
        Some(parked.as_str()),
        "a new container for the new manifest"
    );
    assert!(fresh
        .config
        .unwrap()
        .env
        .unwrap()
        .contains(&"COLOUR=blue".to_string()));
    let s = app.wait_status(&flow, "running").await;
    assert!(
        !s["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["to_status"] == "error"),
        "parking and waking never looked like a crash: {s:#}"
    );
}

/// Once a trigger is recorded its caller gets 202 with its id, whatever the wake that follows
/// does: a 5xx would make the caller retry and record it twice. The wake's first step is made
/// to fail in the store itself (a SQLite trigger refuses the flow's `starting`); the webhook is
/// still accepted, and once the store takes the change again the leader wakes the flow for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_trigger_is_accepted_even_when_the_wake_fails() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = flow_at_zero(&app, "wake-fails", "    - respond: '{{payload.n}}'\n").await;
    let db = sqlx::SqlitePool::connect(&app.store_url).await.unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_wake BEFORE UPDATE OF status ON flows \
         WHEN NEW.status = 'starting' BEGIN SELECT RAISE(ABORT, 'injected: the store refuses'); END",
    )
    .execute(&db)
    .await
    .unwrap();

    let (code, body) = app.webhook(&flow, &json!({"n": 7})).await;
    assert_eq!(code, 202, "recorded, so accepted: {body}");
    let id = body["execution_id"]
        .as_str()
        .expect("an execution id")
        .to_string();
    let (code, e) = app
        .get(&format!("/api/flows/{}/executions/{id}", flow.id))
        .await;
    assert_eq!((code, e["status"].as_str()), (200, Some("queued")), "{e}");

    sqlx::query("DROP TRIGGER refuse_wake")
        .execute(&db)
        .await
        .unwrap();
    let done = app.wait_execution(&flow, &id).await;
    assert_eq!(done["output"], json!(7), "{done:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_during_a_slow_scale_down_is_answered_before_the_scale_down_ends() {
    // The pump takes 5 s to stop (stopDelay): a webhook in that window is recorded and
    // answered at once, and runs on the next pump once the old one is gone.
    let app = TestApp::spawn(Backend::Process).await;
    let slow = "name: slow-to-stop\nidleTimeout: 1s\nstopGrace: 20s\nconfig:\n  stopDelay: 5s\n  steps:\n    - respond: '{{payload.n}}'\n";
    let flow = app.create_flow(slow).await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    app.wait_status(&flow, "idle").await;
    let asked = Instant::now();
    let (code, body) = app.webhook(&flow, &json!({"n": 7})).await;
    let answered = asked.elapsed();
    assert_eq!(code, 202, "{body}");
    assert!(
        answered < Duration::from_millis(2500),
        "the webhook waited {answered:?} for a scale-down that takes 5 s"
    );
    let id = body["execution_id"].as_str().unwrap();
    let exec = app.wait_execution(&flow, id).await;
    assert_eq!(exec["status"], "completed", "{exec:#}");
    assert_eq!(exec["output"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_waiting_on_a_slow_scale_down_is_not_failed_by_the_previous_start_timer() {
    // The start timeout (3 s) ends while the wake waits for the 5 s scale-down: the timer
    // belongs to the launch before, whose pump reported ready, so the woken flow is not failed.
    let app = TestApp::spawn_with(Backend::Process, |c| {
        c.start_timeout = Duration::from_secs(3);
    })
    .await;
    let slow = "name: slow-to-stop\nidleTimeout: 500ms\nstopGrace: 20s\nconfig:\n  stopDelay: 5s\n  steps:\n    - respond: '{{payload.n}}'\n";
    let flow = app.create_flow(slow).await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    app.wait_status(&flow, "idle").await;
    let (code, body) = app.webhook(&flow, &json!({"n": 8})).await;
    assert_eq!(code, 202, "{body}");
    let id = body["execution_id"].as_str().unwrap();
    let exec = app.wait_execution(&flow, id).await;
    assert_eq!(exec["status"], "completed", "{exec:#}");
    assert_eq!(exec["output"], 8);
    let (_, f) = app.get(&format!("/api/flows/{}", flow.id)).await;
    assert_ne!(f["status"], "error", "{f:#}");
}
