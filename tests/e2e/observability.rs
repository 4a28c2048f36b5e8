//! What operators see: /metrics with bounded labels.

use pumphouse_e2e::{manifest, Backend, TestApp};
use serde_json::json;

/// The value of one series in a text exposition, if present.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name_and_labels) && l[name_and_labels.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_flows_executions_requests_latency_and_pump_memory() {
    let app = TestApp::spawn(Backend::Docker).await;
    let flow = app
        .create_flow(&manifest(
            "measured",
            "resources: {memory: 64Mi}\n",
            "    - respond: '{{payload.n}}'\n",
        ))
        .await;
    app.create_flow(&manifest("parked", "", "    - respond: x\n"))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    for n in 0..3 {
        let (code, _) = app
            .post(
                &format!("/api/triggers/{}/webhook/{}?wait=10s", flow.id, flow.token),
                &json!({"n": n}).to_string(),
            )
            .await;
        assert_eq!(code, 200);
    }
    let (_, accepted) = app
        .post(
            &format!("/api/triggers/{}/inject?wait=10s", flow.name),
            "{}",
        )
        .await;
    app.supervisor.as_ref().unwrap().sample_memory().await;

    let text = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let id = &flow.id;
    assert_eq!(
        series(&text, r#"pumphouse_flows{status="running"}"#),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        series(&text, r#"pumphouse_flows{status="stopped"}"#),
        Some(1.0)
    );
    assert_eq!(
        series(
            &text,
            &format!(r#"pumphouse_executions_total{{flow="{id}",status="completed"}}"#)
        ),
        Some(4.0)
    );
    assert!(text.contains(&format!(
        r#"pumphouse_flow_info{{flow="{id}",name="measured",tenant="default"}} 1"#
    )));
    assert_eq!(
        series(
            &text,
            r#"pumphouse_api_requests_total{method="POST",route="/api/triggers/{flow_id}/webhook/{token}",status="200"}"#
        ),
        Some(3.0),
        "routes are counted by template"
    );
    assert!(!text.contains(&flow.token), "no token in any label");
    assert!(
        !text.contains(accepted["execution_id"].as_str().unwrap()),
        "no execution id in any label"
    );
    assert_eq!(
        series(&text, "pumphouse_cold_start_seconds_count"),
        Some(1.0)
    );
    assert!(series(&text, "pumphouse_delivery_seconds_count").unwrap() >= 4.0);
    let used = series(
        &text,
        &format!(r#"pumphouse_pump_memory_bytes{{flow="{id}"}}"#),
    )
    .expect("pump memory");
    assert!(used > 0.0 && used < 64.0 * 1024.0 * 1024.0, "{used}");
    assert_eq!(
        series(
            &text,
            &format!(r#"pumphouse_pump_memory_limit_bytes{{flow="{id}"}}"#)
        ),
        Some(64.0 * 1024.0 * 1024.0)
    );
}
