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

/// Reads a server-sent event stream into a channel of data lines.
pub(crate) fn follow(app: &TestApp, path: &str) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let req = app.http.get(app.url(path));
    tokio::spawn(async move {
        let mut resp = req.send().await.expect("the follow request is answered");
        assert_eq!(resp.status().as_u16(), 200);
        let mut pending = String::new();
        while let Ok(Some(chunk)) = resp.chunk().await {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line = pending[..end].to_string();
                pending.drain(..=end);
                if let Some(data) = line.strip_prefix("data: ") {
                    if tx.send(data.to_string()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Waits for a line containing `want`, failing at the deadline.
pub(crate) async fn line_with(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, want: &str) {
    let deadline = tokio::time::Instant::now() + pumphouse_e2e::DEADLINE;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(line)) if line.contains(want) => return,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the log stream ended before `{want}`"),
            Err(_) => panic!("no log line with `{want}` in time"),
        }
    }
}

async fn following_logs_shows_the_tail_then_new_lines(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let flow = app
        .create_flow(&manifest(
            "chatty",
            "keepAlive: true\n",
            "    - log: 'line {{payload.n}}'\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let mut lines = follow(
        &app,
        &format!("/api/flows/{}/logs?follow=true&tail=10", flow.id),
    );
    line_with(&mut lines, "subscribed to trigger:").await;
    for n in 1..=2 {
        app.post(
            &format!("/api/triggers/{}/inject?wait=10s", flow.name),
            &json!({"n": n}).to_string(),
        )
        .await;
        line_with(&mut lines, &format!("line {n}")).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_logs_follow_as_server_sent_events() {
    following_logs_shows_the_tail_then_new_lines(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_logs_follow_as_server_sent_events_and_in_the_cli() {
    following_logs_shows_the_tail_then_new_lines(Backend::Process).await;

    // The CLI's `flow logs -f` prints them as they come.
    use tokio::io::AsyncBufReadExt as _;
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest(
            "talker",
            "keepAlive: true\n",
            "    - log: 'said {{payload.n}}'\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let mut cli = tokio::process::Command::new(pumphouse_e2e::pumphouse_binary())
        .args(["flow", "logs", "talker", "-f"])
        .env("PUMPHOUSE_API", &app.base)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut out = tokio::io::BufReader::new(cli.stdout.take().unwrap()).lines();
    let deadline = tokio::time::Instant::now() + pumphouse_e2e::DEADLINE;
    loop {
        let line = tokio::time::timeout_at(deadline, out.next_line())
            .await
            .expect("the CLI printed in time")
            .unwrap();
        if line.is_some_and(|l| l.contains("subscribed to trigger:")) {
            break;
        }
    }
    app.post(
        &format!("/api/triggers/{}/inject?wait=10s", flow.name),
        r#"{"n": 7}"#,
    )
    .await;
    loop {
        let line = tokio::time::timeout_at(deadline, out.next_line())
            .await
            .expect("the CLI printed in time")
            .unwrap();
        if line.is_some_and(|l| l == "said 7") {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_covers_every_route_with_its_bodies() {
    let app = TestApp::spawn(Backend::Process).await;
    let (code, doc) = app.get("/openapi.json").await;
    assert_eq!(code, 200);
    let routes = [
        ("/api/flows", "get"),
        ("/api/flows", "post"),
        ("/api/flows/{id}", "get"),
        ("/api/flows/{id}", "put"),
        ("/api/flows/{id}", "delete"),
        ("/api/flows/{id}/start", "post"),
        ("/api/flows/{id}/stop", "post"),
        ("/api/flows/{id}/webhook-token", "post"),
        ("/api/flows/{id}/status", "get"),
        ("/api/flows/{id}/logs", "get"),
        ("/api/flows/{id}/executions", "get"),
        ("/api/flows/{id}/executions/{execution_id}", "get"),
        ("/api/flows/{id}/secrets", "get"),
        ("/api/flows/{id}/secrets/{name}", "put"),
        ("/api/flows/{id}/secrets/{name}", "delete"),
        ("/api/triggers/{flow_id}/webhook/{token}", "post"),
        ("/api/triggers/{flow_id}/inject", "post"),
        ("/api/tenants", "get"),
        ("/api/tenants", "post"),
        ("/api/tenants/{id}/tokens", "get"),
        ("/api/tenants/{id}/tokens", "post"),
        ("/api/tenants/{id}/tokens/{token_id}", "delete"),
        ("/api/audit", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/status", "get"),
        ("/openapi.json", "get"),
    ];
    for (path, method) in routes {
        let op = &doc["paths"][path][method];
        assert!(
            op.is_object(),
            "{method} {path} is missing from the document"
        );
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} has no responses"
        );
        // The route really exists: anything but the router's own fallback.
        let resp = app
            .http
            .request(
                method.parse().unwrap(),
                app.url(&path.replace(['{', '}'], "x")),
            )
            .send()
            .await
            .unwrap();
        let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
        assert!(
            !body["error"]
                .as_str()
                .unwrap_or("")
                .starts_with("no such route"),
            "{method} {path} is not served"
        );
    }
    let paths = doc["paths"].as_object().unwrap().len();
    assert_eq!(
        paths,
        routes
            .iter()
            .map(|(p, _)| p)
            .collect::<std::collections::HashSet<_>>()
            .len(),
        "no route documented that the server lacks"
    );
    for schema in [
        "FlowSummary",
        "FlowDetail",
        "CreatedFlow",
        "ExecutionView",
        "TriggerAnswer",
        "ErrorBody",
        "FlowStatus",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema}"
        );
    }
    let create = &doc["paths"]["/api/flows"]["post"];
    assert!(
        create["requestBody"]["content"]["application/yaml"].is_object(),
        "{create:#}"
    );
    assert!(create["responses"]["422"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_refused_without_the_metrics_or_admin_token_and_served_with_either() {
    let admin = pumphouse_e2e::unique("admin");
    let scraper = pumphouse_e2e::unique("scraper");
    let app = TestApp::spawn_with(Backend::Process, |c| {
        c.admin_token = Some(admin.clone());
        c.metrics_token = Some(scraper.clone());
    })
    .await;
    let name = pumphouse_e2e::unique("listed");
    let (code, created) = app
        .call_as(
            Some(&admin),
            reqwest::Method::POST,
            "/api/flows",
            &manifest(&name, "", "    - log: x\n"),
        )
        .await;
    assert_eq!(code, 201, "{created}");
    let tenant = pumphouse_e2e::unique("t");
    let (code, body) = app
        .call_as(
            Some(&admin),
            reqwest::Method::POST,
            "/api/tenants",
            &json!({ "id": tenant }).to_string(),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let tenant_token = body["api_token"].as_str().unwrap().to_string();

    let scrape = |token: Option<String>| {
        let mut req = app.http.get(app.url("/metrics"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        async move {
            let resp = req.send().await.expect("/metrics answered");
            let code = resp.status().as_u16();
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap().to_string());
            (code, challenge, resp.text().await.unwrap())
        }
    };
    for (who, token) in [
        ("no token", None),
        ("a wrong token", Some(format!("{scraper}x"))),
        ("a tenant's API token", Some(tenant_token)),
    ] {
        let (code, challenge, text) = scrape(token).await;
        assert_eq!(code, 401, "{who}: {text}");
        assert!(!text.contains(&name), "{who} read the flow names: {text}");
        assert!(text.contains("--metrics-token"), "{who}: {text}");
        assert_eq!(challenge.as_deref(), Some(r#"Bearer realm="pumphouse""#));
    }
    for (who, token) in [("the metrics token", scraper), ("the admin token", admin)] {
        let (code, _, text) = scrape(Some(token)).await;
        assert_eq!(code, 200, "{who}: {text}");
        assert!(
            text.contains(&format!(r#"name="{name}",tenant="default""#)),
            "{who}: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_on_the_command_line_are_warned_about_and_never_logged_and_files_are_read() {
    let dir = pumphouse_e2e::TempDir::new("pumphouse-metrics-token");
    let scraper = pumphouse_e2e::unique("scraper");
    let file = dir.0.join("metrics.token");
    // As `echo TOKEN > FILE` writes it: the newline is not part of the token.
    std::fs::write(&file, format!("{scraper}\n")).unwrap();
    let app = TestApp::spawn_process(
        Backend::Process,
        &["--metrics-token-file", file.to_str().unwrap()],
    )
    .await;

    let resp = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "the token file is in force");
    let resp = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(&scraper)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status().as_u16(),
        200,
        "the file's token, newline dropped"
    );

    // The harness gives `--redis redis://default:PASSWORD@...` on the command line.
    let log = app.server_log();
    let warning = log
        .lines()
        .find(|l| l.contains("SECURITY") && l.contains("--redis"))
        .unwrap_or_else(|| panic!("no warning about --redis on the command line:\n{log}"));
    assert!(warning.contains("PUMPHOUSE_REDIS"), "{warning}");
    assert!(
        !log.contains(&app.redis.password),
        "the Redis password is in the log:\n{log}"
    );
    assert!(
        !log.contains(&scraper),
        "the metrics token is in the log:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_started_flow_exports_its_failure_and_crash_counters_at_zero() {
    // An alert's increase() sees a first failure only against a zero it saw before.
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest("counted", "", "    - respond: ok\n"))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let metrics = app.metrics_text().await;
    let flow_label = format!("flow=\"{}\"", flow.id);
    for (name, extra) in [
        ("pumphouse_executions_total", "status=\"failed\""),
        ("pumphouse_executions_total", "status=\"completed\""),
        ("pumphouse_pump_crashes_total", ""),
        ("pumphouse_pump_restarts_total", ""),
        ("pumphouse_pump_configs_refused_total", ""),
    ] {
        let found = metrics.lines().any(|l| {
            l.starts_with(&format!("{name}{{"))
                && l.contains(&flow_label)
                && l.contains(extra)
                && l.ends_with(" 0")
        });
        assert!(found, "no {name} {extra} at 0 for the flow in:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pump_memory_series_stay_while_they_are_sampled_and_no_limit_is_no_series() {
    let app = TestApp::spawn(Backend::Docker).await;
    let mut flows = Vec::new();
    for (name, resources) in [
        ("sampled-a", "resources: {memory: 64Mi}\n"),
        ("sampled-b", "resources: {memory: 96Mi}\n"),
        ("unlimited", ""),
    ] {
        let flow = app
            .create_flow(&manifest(name, resources, "    - respond: ok\n"))
            .await;
        app.start(&flow).await;
        flows.push(flow);
    }
    for flow in &flows {
        app.wait_status(flow, "running").await;
    }
    let supervisor = app.supervisor.clone().unwrap();
    supervisor.sample_memory().await;
    let memory_series = |text: &str| {
        text.lines()
            .filter(|l| l.starts_with("pumphouse_pump_memory_bytes{"))
            .count()
    };
    // Scraped all through a second sampling, as Prometheus might: never fewer series.
    let sampling = tokio::spawn(async move { supervisor.sample_memory().await });
    let mut scrapes = 0;
    let mut text = String::new();
    while !sampling.is_finished() || scrapes == 0 {
        text = app.metrics_text().await;
        assert_eq!(memory_series(&text), 3, "a scrape mid-sample:\n{text}");
        scrapes += 1;
    }
    sampling.await.unwrap();
    let unlimited = &flows[2].id;
    assert!(
        !text.contains(&format!(
            "pumphouse_pump_memory_limit_bytes{{flow=\"{unlimited}\"}}"
        )),
        "a pump without resources.memory has no limit, whatever Docker reports:\n{text}"
    );
    assert_eq!(
        series(
            &text,
            &format!(
                r#"pumphouse_pump_memory_limit_bytes{{flow="{}"}}"#,
                flows[1].id
            )
        ),
        Some(96.0 * 1024.0 * 1024.0)
    );
}
