//! The CLI against a live orchestrator: apply, ls, start, trigger, executions, status, stop.

use std::process::Command;

use pumphouse_e2e::{pumphouse_binary, Backend, TempDir, TestApp};

fn cli(app: &TestApp, args: &[&str]) -> (bool, String) {
    run_cli(app, None, args)
}

fn cli_as(app: &TestApp, token: &str, args: &[&str]) -> (bool, String) {
    run_cli(app, Some(token), args)
}

/// Runs `pumphouse` against the app, with `PUMPHOUSE_TOKEN` when given; success and output.
fn run_cli(app: &TestApp, token: Option<&str>, args: &[&str]) -> (bool, String) {
    let mut cmd = Command::new(pumphouse_binary());
    cmd.args(args).env("PUMPHOUSE_API", &app.base);
    if let Some(t) = token {
        cmd.env("PUMPHOUSE_TOKEN", t);
    }
    let out = cmd.output().expect("running pumphouse");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_applies_starts_triggers_and_stops_a_flow() {
    let app = TestApp::spawn(Backend::Process).await;
    let dir = TempDir::new("pumphouse-cli");
    let file = dir.0.join("flow.yaml");
    std::fs::write(
        &file,
        "name: cli-flow\nconfig:\n  steps:\n    - respond: {echo: '{{payload.x}}'}\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let (ok, out) = tokio::task::block_in_place(|| cli(&app, &["flow", "apply", "-f", file]));
    assert!(ok, "{out}");
    assert!(
        out.contains("flow cli-flow created") && out.contains("/webhook/"),
        "{out}"
    );
    let (ok, out) = tokio::task::block_in_place(|| cli(&app, &["flow", "apply", "-f", file]));
    assert!(
        ok && out.contains("flow cli-flow updated"),
        "apply is idempotent: {out}"
    );

    let (ok, out) = tokio::task::block_in_place(|| cli(&app, &["flow", "start", "cli-flow"]));
    assert!(ok && out.contains("is running"), "{out}");
    let (ok, out) = tokio::task::block_in_place(|| cli(&app, &["flow", "ls"]));
    assert!(
        ok && out.contains("cli-flow") && out.contains("running"),
        "{out}"
    );
    assert!(
        out.contains("LAST ACTIVITY") && out.contains("s ago"),
        "a table with last activity: {out}"
    );
    let (ok, out) = tokio::task::block_in_place(|| cli(&app, &["flow", "ls", "-o", "json"]));
    let flows: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|_| panic!("JSON: {out}"));
    assert!(
        ok && flows[0]["name"] == "cli-flow" && flows[0]["last_activity_at"].is_i64(),
        "{out}"
    );

    let (ok, out) = tokio::task::block_in_place(|| {
        cli(&app, &["trigger", "cli-flow", "--data", r#"{"x": 42}"#])
    });
    assert!(ok && out.contains("accepted: execution"), "{out}");
    let exec_id = out.split_whitespace().nth(2).unwrap().to_string();
    let flow = pumphouse_e2e::TestFlow {
        id: "cli-flow".into(),
        name: "cli-flow".into(),
        token: String::new(),
    };
    let exec = app.wait_execution(&flow, &exec_id).await;
    assert_eq!(exec["output"], serde_json::json!({"echo": 42}));

    let (ok, out) =
        tokio::task::block_in_place(|| cli(&app, &["trigger", "cli-flow", "--data", "not json"]));
    assert!(!ok && out.contains("--data is not JSON"), "{out}");
    let (ok, out) = tokio::task::block_in_place(|| cli(&app, &["flow", "status", "cli-flow"]));
    assert!(ok && out.contains("status:   running"), "{out}");
    let (ok, out) = tokio::task::block_in_place(|| cli(&app, &["flow", "stop", "cli-flow"]));
    assert!(ok && out.contains("stopped"), "{out}");
    let (ok, out) = tokio::task::block_in_place(|| cli(&app, &["flow", "start", "no-such-flow"]));
    assert!(!ok && out.contains("no flow `no-such-flow`"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_a_tenant_whose_token_sees_its_own_flows_and_reads_the_audit_log() {
    let app = TestApp::spawn_with(Backend::Process, |c| c.admin_token = Some("root".into())).await;
    let (ok, out) =
        tokio::task::block_in_place(|| cli_as(&app, "root", &["tenant", "create", "acme"]));
    assert!(ok, "{out}");
    let token = out
        .split_whitespace()
        .find(|w| w.starts_with("pht_"))
        .unwrap_or_else(|| panic!("no token printed: {out}"))
        .to_string();
    let dir = TempDir::new("pumphouse-cli");
    let file = dir.0.join("flow.yaml");
    std::fs::write(&file, "name: acme-flow\nconfig:\n  steps:\n    - log: hi\n").unwrap();
    let file = file.to_str().unwrap();
    let (ok, out) =
        tokio::task::block_in_place(|| cli_as(&app, &token, &["flow", "apply", "-f", file]));
    assert!(ok, "{out}");
    let (_, out) = tokio::task::block_in_place(|| cli_as(&app, "root", &["flow", "ls"]));
    assert!(
        !out.contains("acme-flow"),
        "the admin's tenant does not list acme's flow: {out}"
    );
    let (ok, out) = tokio::task::block_in_place(|| cli_as(&app, &token, &["audit"]));
    assert!(ok, "{out}");
    assert!(
        out.contains("flow.create") && out.contains("acme-flow") && out.contains("token `initial`"),
        "{out}"
    );
    let (ok, out) = tokio::task::block_in_place(|| cli_as(&app, &token, &["tenant", "ls"]));
    assert!(!ok && out.contains("admin token"), "{out}");
    let (ok, out) = tokio::task::block_in_place(|| cli_as(&app, "wrong", &["flow", "ls"]));
    assert!(!ok && out.contains("API token"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_into_a_closed_pipe_stops_quietly() {
    // `pumphouse flow apply -f x.yaml | head -1`, with the reader gone before the CLI writes.
    let app = TestApp::spawn(Backend::Process).await;
    let dir = TempDir::new("pumphouse-cli-pipe");
    let file = dir.0.join("flow.yaml");
    std::fs::write(&file, "name: piped\nconfig:\n  steps:\n    - respond: ok\n").unwrap();
    let out = tokio::task::block_in_place(|| {
        let mut child = Command::new(pumphouse_binary())
            .args(["flow", "apply", "-f", file.to_str().unwrap()])
            .env("PUMPHOUSE_API", &app.base)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("running pumphouse");
        drop(child.stdout.take());
        child.wait_with_output().expect("waiting for pumphouse")
    });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.is_empty(), "it said: {stderr}");
    assert_eq!(out.status.code(), Some(141), "as a SIGPIPE death reads");
    // What it was asked to do was done.
    let (_, flows) = app.get("/api/flows").await;
    assert!(flows.to_string().contains("piped"), "{flows}");
}
