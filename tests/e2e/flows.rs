//! A flow's whole life on each backend: create, start, ready, webhook, result, stop, gone.

use pumphouse_e2e::{manifest, Backend, TestApp};
use serde_json::json;

const HELLO_STEPS: &str = "    - log: 'got {{payload.name}}'\n    - set: {key: last, value: '{{payload}}'}\n    - get: {key: last, as: back}\n    - respond: {hello: '{{vars.back.name}}', trigger: '{{trigger.id}}'}\n";

async fn a_flow_runs_end_to_end(
    backend: Backend,
) -> (TestApp, pumphouse_e2e::TestFlow, serde_json::Value) {
    let app = TestApp::spawn(backend).await;
    let flow = app
        .create_flow(&manifest(
            "hello",
            "resources: {memory: 64Mi, cpu: 500m}\n",
            HELLO_STEPS,
        ))
        .await;
    app.start(&flow).await;
    let status = app.wait_status(&flow, "running").await;
    assert_eq!(status["pump"]["state"], "running", "{status:#}");

    let (code, accepted) = app.webhook(&flow, &json!({"name": "ada"})).await;
    assert_eq!(code, 202, "{accepted}");
    let exec_id = accepted["execution_id"].as_str().unwrap().to_string();
    let exec = app.wait_execution(&flow, &exec_id).await;
    assert_eq!(exec["status"], "completed", "{exec:#}");
    assert_eq!(exec["output"], json!({"hello": "ada", "trigger": exec_id}));
    assert_eq!(exec["payload"], json!({"name": "ada"}));
    assert_eq!(exec["trigger_type"], "webhook");
    assert!(
        exec["acked_at"].is_i64() && exec["started_at"].is_i64() && exec["completed_at"].is_i64(),
        "{exec:#}"
    );

    // The pump kept its memory under the flow's prefix.
    let mut redis = redis::Client::open(app.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let stored: String = redis::cmd("GET")
        .arg(format!("tenant:default:flow:{}:last", flow.id))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&stored).unwrap(),
        json!({"name": "ada"})
    );

    let (code, logs) = app
        .get(&format!("/api/flows/{}/logs?tail=50", flow.id))
        .await;
    assert_eq!(code, 200);
    let lines = logs["lines"].as_array().unwrap();
    assert!(
        lines.iter().any(|l| l == "got ada"),
        "the pump's log line is readable: {logs:#}"
    );
    (app, flow, status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_flow_starts_serves_a_webhook_and_stops_leaving_no_container() {
    let (app, flow, status) = a_flow_runs_end_to_end(Backend::Docker).await;
    assert_eq!(status["backend"], "docker");
    let c = app
        .container(&flow)
        .await
        .expect("the pump container exists while running");
    let labels = c.config.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(labels["pumphouse.dev/flow"], flow.id);
    assert_eq!(labels["pumphouse.dev/tenant"], "default");
    assert_eq!(labels["app.kubernetes.io/managed-by"], "pumphouse");
    let host = c.host_config.unwrap();
    assert_eq!(
        host.memory,
        Some(64 * 1024 * 1024),
        "memory limit from the manifest"
    );
    assert_eq!(
        host.nano_cpus,
        Some(500_000_000),
        "CPU limit from the manifest"
    );
    assert_eq!(host.network_mode.as_deref(), Some("host"));
    let env = c.config.unwrap().env.unwrap();
    assert!(env.contains(&format!("FLOW_ID={}", flow.id)));
    assert!(env.contains(&format!("TENANT_PREFIX=tenant:default:flow:{}:", flow.id)));

    let (code, body) = app.post(&format!("/api/flows/{}/stop", flow.id), "").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "stopped");
    assert!(
        app.container(&flow).await.is_none(),
        "the container is removed after stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_flow_starts_serves_a_webhook_and_stops_leaving_no_process() {
    let (app, flow, status) = a_flow_runs_end_to_end(Backend::Process).await;
    assert_eq!(status["backend"], "process");
    let pid = status["pump"]["pump_ref"]
        .as_str()
        .unwrap()
        .strip_prefix("pid:")
        .unwrap()
        .to_string();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    let (code, body) = app.post(&format!("/api/flows/{}/stop", flow.id), "").await;
    assert_eq!(code, 200, "{body}");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the pump process is gone after stop"
    );
    let (_, status) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
    assert_eq!(status["status"], "stopped");
    assert!(status["pump"].is_null(), "{status:#}");
}

async fn a_pump_with_bad_config_puts_the_flow_in_error(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let flow = app
        .create_flow(&manifest("broken", "", "    - explode: now\n"))
        .await;
    app.start(&flow).await;
    let status = app.wait_status(&flow, "error").await;
    let reason = status["reason"].as_str().unwrap();
    assert!(
        reason.contains("exited before it was ready with code 2"),
        "{reason}"
    );
    assert!(
        reason.contains("unknown variant `explode`"),
        "the pump's own message is shown: {reason}"
    );
    // A config the pump refuses is not a crash: it must not page through PumpCrash.
    let metrics = app.metrics_text().await;
    let series = |name: &str| format!("{name}{{flow=\"{}\"}}", flow.id);
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&series(name)))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {} in:\n{metrics}", series(name)))
            .to_string()
    };
    assert_eq!(value("pumphouse_pump_crashes_total"), "0");
    assert_eq!(value("pumphouse_pump_configs_refused_total"), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pump_with_bad_config_puts_the_flow_in_error_with_its_own_message() {
    a_pump_with_bad_config_puts_the_flow_in_error(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_pump_with_bad_config_puts_the_flow_in_error_with_its_own_message() {
    a_pump_with_bad_config_puts_the_flow_in_error(Backend::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_running_flow_stops_its_pump_and_forgets_it() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest("doomed", "", "    - log: hi\n"))
        .await;
    app.start(&flow).await;
    let status = app.wait_status(&flow, "running").await;
    let pid = status["pump"]["pump_ref"]
        .as_str()
        .unwrap()
        .strip_prefix("pid:")
        .unwrap()
        .to_string();
    let resp = app
        .http
        .delete(app.url(&format!("/api/flows/{}", flow.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    let (code, _) = app.get(&format!("/api/flows/{}", flow.id)).await;
    assert_eq!(code, 404);
}

async fn stopping_a_flow_lets_its_pump_finish_the_trigger_in_hand(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let flow = app
        .create_flow(&manifest(
            "patient",
            "stopGrace: 20s\n",
            "    - sleep: 1500ms\n    - respond: finished\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let (_, accepted) = app.webhook(&flow, &json!({})).await;
    let exec_id = accepted["execution_id"].as_str().unwrap().to_string();
    // Stop only once the pump is working on it, so the stop lands mid-execution.
    app.wait_execution_status(&flow, &exec_id, "running").await;
    let (code, _) = app.post(&format!("/api/flows/{}/stop", flow.id), "").await;
    assert_eq!(code, 200);
    let exec = app.wait_execution(&flow, &exec_id).await;
    assert_eq!(
        exec["status"], "completed",
        "the pump drained before exiting: {exec:#}"
    );
    assert_eq!(exec["output"], "finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_stop_lets_the_pump_finish_the_trigger_in_hand() {
    stopping_a_flow_lets_its_pump_finish_the_trigger_in_hand(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_stop_lets_the_pump_finish_the_trigger_in_hand() {
    stopping_a_flow_lets_its_pump_finish_the_trigger_in_hand(Backend::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_pumps_run_hardened_without_the_docker_socket() {
    let app = TestApp::spawn(Backend::Docker).await;
    let flow = app
        .create_flow(&manifest(
            "locked",
            "resources: {memory: 32Mi, cpu: 250m}\n",
            "    - respond: ok\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let c = app.container(&flow).await.unwrap();
    let config = c.config.unwrap();
    assert_eq!(config.user.as_deref(), Some("65534:65534"), "not root");
    let host = c.host_config.unwrap();
    assert_eq!(
        host.readonly_rootfs,
        Some(true),
        "read-only root filesystem"
    );
    assert_eq!(
        host.cap_drop,
        Some(vec!["ALL".to_string()]),
        "every capability dropped"
    );
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges".to_string()])
    );
    assert_eq!(host.pids_limit, Some(256));
    assert_eq!(host.memory, Some(32 * 1024 * 1024));
    assert_eq!(
        host.memory_swap,
        Some(32 * 1024 * 1024),
        "no swap beyond the limit"
    );
    assert_eq!(host.nano_cpus, Some(250_000_000));
    assert_ne!(host.privileged, Some(true));
    let mounts = c.mounts.unwrap_or_default();
    assert!(
        !mounts
            .iter()
            .any(|m| m.source.as_deref().unwrap_or("").contains("docker.sock")),
        "never the Docker socket: {mounts:?}"
    );
    assert!(
        host.binds.unwrap_or_default().is_empty(),
        "no host paths at all"
    );
}
