//! A hostile pump: any image can run any code with its own Redis credentials. What it writes
//! to its own events stream may cost only its own flow: it cannot end, acknowledge or answer
//! for another flow's executions, nor hold up their delivery.

use pumphouse_e2e::{manifest, Backend, TestApp, TestFlow, DEADLINE};
use serde_json::{json, Value};

/// Appends `event` to the flow's events stream, signed in as the flow's own pump.
async fn forge(app: &TestApp, attacker: &TestFlow, event: Value) {
    let url = app.pump_var(attacker, "REDIS_URL").await;
    let prefix = app.pump_var(attacker, "TENANT_PREFIX").await;
    let mut conn = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .expect("the pump's credentials sign in");
    let _: String = redis::cmd("XADD")
        .arg(format!("{prefix}_events"))
        .arg("*")
        .arg("event")
        .arg(event.to_string())
        .query_async(&mut conn)
        .await
        .expect("a pump may append to its own stream");
}

/// An event of `kind` about `trigger_id`, as the contract's events look; a completion carries
/// a forged output.
fn claim(kind: &str, flow_id: &str, instance_id: &str, trigger_id: &str) -> Value {
    let mut ev = json!({
        "type": kind,
        "flow_id": flow_id,
        "instance_id": instance_id,
        "trigger_id": trigger_id,
    });
    if kind == "completed" {
        ev["output"] = json!({"forged": true});
    }
    ev
}

/// The id of the flow's first execution, once there is one.
async fn first_execution(app: &TestApp, flow: &TestFlow) -> String {
    let started = std::time::Instant::now();
    loop {
        if let Some(e) = app.executions(flow).await.first() {
            return e["id"].as_str().unwrap().to_string();
        }
        assert!(started.elapsed() < DEADLINE, "no execution was recorded");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pump_cannot_finish_or_acknowledge_another_flows_execution() {
    let app = TestApp::spawn(Backend::Process).await;
    let attacker = app
        .create_flow(&manifest(
            "attacker",
            "keepAlive: true\n",
            "    - respond: {}\n",
        ))
        .await;
    let victim = app
        .create_flow(&manifest(
            "victim",
            "keepAlive: true\n",
            "    - sleep: 1500ms\n    - respond: {real: '{{payload.n}}'}\n",
        ))
        .await;
    for f in [&attacker, &victim] {
        app.start(f).await;
        app.wait_status(f, "running").await;
    }
    let attacker_instance = app.pump_var(&attacker, "INSTANCE_ID").await;

    // The victim's trigger runs; a caller waits on its result.
    let hook = format!(
        "/api/triggers/{}/webhook/{}?wait=25s",
        victim.id, victim.token
    );
    let waiting = {
        let http = app.http.clone();
        let url = app.url(&hook);
        tokio::spawn(async move {
            let resp = http.post(url).body(r#"{"n": 1}"#).send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        })
    };
    let id = first_execution(&app, &victim).await;
    app.wait_execution_status(&victim, &id, "running").await;

    // The attacker claims it: acknowledged, started and completed by its own instance, with
    // its own output, in its own stream, as the contract's events look.
    let claim = |kind: &str| claim(kind, &attacker.id, &attacker_instance, &id);
    for kind in ["ack", "started", "completed"] {
        forge(&app, &attacker, claim(kind)).await;
    }
    // And a flood of the same, to be counted rather than logged each time.
    for _ in 0..20 {
        forge(&app, &attacker, claim("completed")).await;
    }

    // The caller gets the victim pump's real answer, and so does the record.
    let (code, answer) = waiting.await.unwrap();
    assert_eq!(code, 200, "{answer}");
    assert_eq!(answer["output"], json!({"real": 1}), "{answer}");
    let done = app.wait_execution(&victim, &id).await;
    assert_eq!(done["output"], json!({"real": 1}), "{done:#}");

    // The victim's delivery goes on as before.
    let (code, body) = app
        .post(
            &format!(
                "/api/triggers/{}/webhook/{}?wait=25s",
                victim.id, victim.token
            ),
            r#"{"n": 2}"#,
        )
        .await;
    assert_eq!(
        (code, &body["output"]),
        (200, &json!({"real": 2})),
        "{body}"
    );

    // What was refused is counted against the flow that sent it.
    let metrics = app.metrics_text().await;
    let refused = metrics
        .lines()
        .find(|l| {
            l.starts_with("pumphouse_pump_reports_refused_total")
                && l.contains(&attacker.id)
                && l.contains("not_this_flows")
        })
        .unwrap_or_else(|| panic!("no refusals counted for the attacker:\n{metrics}"));
    let n: f64 = refused.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= 1.0, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_the_trigger_was_not_sent_to_cannot_claim_it() {
    // An earlier instance of the same flow, left running by a killed orchestrator, writes to
    // the flow's own stream under its own instance id: it acknowledges, starts and finishes
    // the execution the current pump is running.
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest(
            "orphaned",
            "keepAlive: true\n",
            "    - sleep: 1500ms\n    - respond: {real: true}\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let (code, body) = app
        .post(
            &format!("/api/triggers/{}/webhook/{}", flow.id, flow.token),
            "{}",
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let id = first_execution(&app, &flow).await;
    app.wait_execution_status(&flow, &id, "running").await;

    let orphan = format!("orphan-{}", uuid::Uuid::new_v4().simple());
    for kind in ["ack", "started", "completed"] {
        forge(&app, &flow, claim(kind, &flow.id, &orphan, &id)).await;
    }

    // The current pump's answer stands.
    let done = app.wait_execution(&flow, &id).await;
    assert_eq!(done["output"], json!({"real": true}), "{done:#}");
    let metrics = app.metrics_text().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("pumphouse_pump_reports_refused_total")
                && l.contains(&flow.id)
                && l.contains("other_instance")),
        "the orphan's reports are not counted as refused:\n{metrics}"
    );
}
