//! Flow secrets end to end: a value set through the API reaches the pump's environment and
//! nowhere else (logs, answers, errors, the store's bytes); a key rotation re-seals them all; a
//! wrong key or an altered ciphertext stops the flow with a message that names the secret.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use pumphouse::secrets::MasterKey;
use pumphouse::store::Store;
use pumphouse_e2e::{
    manifest, pumphouse_binary, Backend, PostgresServer, TempDir, TestApp, TestFlow,
};
use serde_json::{json, Value};

/// A value no test or log could hold by chance.
fn distinctive_value() -> String {
    format!("sv-{}-end", uuid::Uuid::new_v4().simple())
}

/// A master key file made by `pumphouse secrets new-key`, as an operator would make it.
fn new_key_file(dir: &Path, name: &str) -> PathBuf {
    let out = Command::new(pumphouse_binary())
        .args(["secrets", "new-key"])
        .output()
        .expect("running pumphouse secrets new-key");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = dir.join(name);
    std::fs::write(&path, &out.stdout).unwrap();
    path
}

fn key_id(path: &Path) -> String {
    MasterKey::from_file(path).unwrap().id().to_string()
}

/// Runs the CLI with `stdin` piped in; returns success and stdout+stderr.
fn cli(app: &TestApp, args: &[&str], stdin: &[u8]) -> (bool, String) {
    use std::io::Write as _;
    let mut child = Command::new(pumphouse_binary())
        .args(args)
        .env("PUMPHOUSE_API", &app.base)
        .env_remove("PUMPHOUSE_MASTER_KEY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running pumphouse");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn put_secret(app: &TestApp, flow: &str, name: &str, value: &[u8]) -> (u16, String) {
    let resp = app
        .http
        .put(app.url(&format!("/api/flows/{flow}/secrets/{name}")))
        .body(value.to_vec())
        .send()
        .await
        .expect("PUT answered");
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Every answer a user can read about a flow, concatenated.
async fn everything_the_api_shows(app: &TestApp, flow: &TestFlow) -> String {
    let mut all = String::new();
    for path in [
        "/api/flows".to_string(),
        format!("/api/flows/{}", flow.id),
        format!("/api/flows/{}/status", flow.id),
        format!("/api/flows/{}/secrets", flow.id),
        format!("/api/flows/{}/executions", flow.id),
        format!("/api/flows/{}/logs?tail=1000", flow.id),
        "/status".to_string(),
        "/metrics".to_string(),
    ] {
        let resp = app.http.get(app.url(&path)).send().await.unwrap();
        all.push_str(&resp.text().await.unwrap());
    }
    all
}

fn pump_pid(status: &Value) -> String {
    status["pump"]["pump_ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("pid:"))
        .unwrap_or_else(|| panic!("a process pump: {status:#}"))
        .to_string()
}

/// The pump's environment as the kernel holds it.
fn environ(pid: &str) -> Vec<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("the pump's environ");
    raw.split(|b| *b == 0)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

/// Every byte of the SQLite store (database, WAL and shared memory files).
fn sqlite_bytes(store_url: &str) -> Vec<u8> {
    let db = store_url.strip_prefix("sqlite://").expect("a SQLite store");
    let mut bytes = Vec::new();
    for suffix in ["", "-wal", "-shm"] {
        if let Ok(b) = std::fs::read(format!("{db}{suffix}")) {
            bytes.extend(b);
        }
    }
    assert!(!bytes.is_empty(), "no store file at {db}");
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_reaches_the_pump_and_no_log_answer_error_or_store_byte() {
    let keys = TempDir::new("pumphouse-keys");
    let key = new_key_file(&keys.0, "master.key");
    let app = TestApp::spawn_process(
        Backend::Process,
        &["--master-key-file", key.to_str().unwrap()],
    )
    .await;
    let flow = app
        .create_flow(&manifest(
            "secretive",
            "",
            "    - log: \"run {{trigger.id}}\"\n    - respond: {ok: true}\n",
        ))
        .await;
    let value = distinctive_value();

    // Set through the CLI (stdin, with the newline `echo` adds dropped), then replaced by a PUT.
    let (ok, out) = tokio::task::block_in_place(|| {
        cli(
            &app,
            &["flow", "secret", "set", "secretive", "API_KEY"],
            format!("first-{value}\n").as_bytes(),
        )
    });
    assert!(ok && out.contains("created"), "{out}");
    assert!(!out.contains(&value), "the CLI echoes no value: {out}");
    let (code, body) = put_secret(&app, &flow.id, "API_KEY", value.as_bytes()).await;
    assert_eq!(code, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(answer["change"], "replaced");
    assert!(
        answer["note"].as_str().unwrap().contains("next"),
        "{answer}"
    );
    assert!(!body.contains(&value), "{body}");

    // Refused puts say what is wrong without quoting the value.
    let mut errors = String::new();
    for (name, bad, why) in [
        ("REDIS_URL", value.clone().into_bytes(), "set by pumphouse"),
        (
            "1BAD",
            value.clone().into_bytes(),
            "not a valid secret name",
        ),
        ("OK_NAME", format!("{value}\0x").into_bytes(), "NUL"),
        (
            "OK_NAME",
            value.repeat(2000).into_bytes(),
            "at most 32768 are accepted",
        ),
        ("OK_NAME", Vec::new(), "empty"),
    ] {
        let (code, body) = put_secret(&app, &flow.id, name, &bad).await;
        assert_eq!(code, 400, "{name}: {body}");
        assert!(body.contains(why), "{name}: {body}");
        errors.push_str(&body);
    }
    let (code, body) = put_secret(&app, "no-such-flow", "API_KEY", value.as_bytes()).await;
    assert_eq!(code, 404, "{body}");
    errors.push_str(&body);
    assert!(
        !errors.contains(&value),
        "an error quoted the value: {errors}"
    );

    let (ok, out) =
        tokio::task::block_in_place(|| cli(&app, &["flow", "secret", "ls", "secretive"], b""));
    assert!(
        ok && out.contains("API_KEY") && !out.contains(&value),
        "{out}"
    );
    let (_, list) = app.get(&format!("/api/flows/{}/secrets", flow.id)).await;
    assert_eq!(list["secrets"].as_array().unwrap().len(), 1, "{list}");
    assert_eq!(list["secrets"][0]["name"], "API_KEY");
    assert_eq!(list["master_key_id"], key_id(&key).as_str());

    // The pump gets it.
    app.start(&flow).await;
    let status = app.wait_status(&flow, "running").await;
    let env = environ(&pump_pid(&status));
    assert!(
        env.contains(&format!("API_KEY={value}")),
        "the pump's environment lacks API_KEY"
    );
    let (code, exec) = app.webhook(&flow, &json!({"n": 1})).await;
    assert_eq!(code, 202, "{exec}");
    let done = app
        .wait_execution(&flow, exec["execution_id"].as_str().unwrap())
        .await;
    assert_eq!(done["status"], "completed", "{done}");

    // A second secret while the pump runs: the answer says the pump must restart to see it.
    let (code, body) = put_secret(&app, &flow.id, "OTHER", b"x-other").await;
    assert_eq!(code, 201, "{body}");
    assert!(body.contains("\"restart_required\":true"), "{body}");
    let (code, body) = app
        .http
        .delete(app.url(&format!("/api/flows/{}/secrets/OTHER", flow.id)))
        .send()
        .await
        .map(|r| (r.status().as_u16(), r))
        .unwrap();
    assert_eq!(code, 200, "{}", body.text().await.unwrap());

    // Nowhere else: answers, the orchestrator's own log, the store's bytes.
    let shown = everything_the_api_shows(&app, &flow).await;
    assert!(shown.contains("secret `API_KEY` set"), "the event is there");
    assert!(!shown.contains(&value), "an API answer shows the value");
    let log = app.server_log();
    assert!(
        log.contains("flow secret set") && log.contains("API_KEY"),
        "the server log is captured and names the secret: {log}"
    );
    assert!(!log.contains(&value), "the server log holds the value");
    let store = sqlite_bytes(&app.store_url);
    assert!(
        contains(&store, "API_KEY"),
        "the secret's row is in these bytes"
    );
    assert!(!contains(&store, &value), "the store holds the value");
    assert!(
        !contains(&store, &format!("first-{value}")),
        "the store holds the first value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_master_key_re_encrypts_every_secret_and_the_old_key_is_refused() {
    let keys = TempDir::new("pumphouse-keys");
    let served = new_key_file(&keys.0, "master.key");
    let old = keys.0.join("old.key");
    std::fs::copy(&served, &old).unwrap();
    let new = new_key_file(&keys.0, "new.key");
    let stranger = new_key_file(&keys.0, "stranger.key");
    let mut app = TestApp::spawn_process(
        Backend::Process,
        &["--master-key-file", served.to_str().unwrap()],
    )
    .await;
    let a = app
        .create_flow(&manifest("rot-a", "", "    - respond: 1\n"))
        .await;
    let b = app
        .create_flow(&manifest("rot-b", "", "    - respond: 1\n"))
        .await;
    let value = distinctive_value();
    for (flow, name) in [(&a, "ONE"), (&a, "TWO"), (&b, "ONE")] {
        let (code, body) = put_secret(&app, &flow.id, name, value.as_bytes()).await;
        assert_eq!(code, 201, "{body}");
    }
    app.kill_server();

    let reencrypt = |from: &Path, to: &Path| {
        let out = Command::new(pumphouse_binary())
            .args(["secrets", "re-encrypt", "--store", &app.store_url])
            .arg("--from-key-file")
            .arg(from)
            .arg("--to-key-file")
            .arg(to)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    // A wrong old key changes nothing, and says which key the secrets need.
    let (ok, out) = reencrypt(&stranger, &new);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&key_id(&old)) && out.contains("nothing was changed"),
        "{out}"
    );
    let (ok, out) = reencrypt(&old, &new);
    assert!(ok, "{out}");
    assert!(out.contains("re-encrypted 3 secret(s)"), "{out}");
    let (ok, out) = reencrypt(&old, &new);
    assert!(
        ok && out.contains("re-encrypted 0 secret(s)") && out.contains("3 already"),
        "a second run is harmless: {out}"
    );
    assert!(!out.contains(&value));

    // The server still on the old key refuses to start the flow, naming both keys.
    app.start_server().await;
    let (code, body) = app.post(&format!("/api/flows/{}/start", a.id), "").await;
    assert_eq!(code, 409, "{body}");
    let error = body["error"].as_str().unwrap().to_string();
    for part in [
        "secret `ONE`",
        &key_id(&new),
        &key_id(&old),
        "pumphouse secrets re-encrypt",
    ] {
        assert!(error.contains(part), "`{part}` missing from: {error}");
    }
    let status = app.wait_status(&a, "error").await;
    assert!(
        status["reason"].as_str().unwrap().contains("secret `ONE`"),
        "{status:#}"
    );
    let (_, list) = app.get(&format!("/api/flows/{}/secrets", a.id)).await;
    assert_eq!(list["secrets"][0]["key_id"], key_id(&new).as_str());

    // With the new key it starts, with the same values.
    app.kill_server();
    std::fs::copy(&new, &served).unwrap();
    app.start_server().await;
    app.start(&a).await;
    let status = app.wait_status(&a, "running").await;
    let env = environ(&pump_pid(&status));
    for name in ["ONE", "TWO"] {
        assert!(env.contains(&format!("{name}={value}")), "{name} missing");
    }
    let shown = everything_the_api_shows(&app, &a).await;
    assert!(!shown.contains(&value) && !error.contains(&value));
    assert!(
        !app.server_log().contains(&value),
        "the server log holds the value"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_altered_or_moved_ciphertext_stops_the_flow_naming_the_secret() {
    let key =
        std::sync::Arc::new(MasterKey::from_base64(&MasterKey::generate_base64(), "").unwrap());
    let app = TestApp::spawn_with(Backend::Process, |c| c.master_key = Some(key.clone())).await;
    let a = app
        .create_flow(&manifest("tamper-a", "", "    - respond: 1\n"))
        .await;
    let b = app
        .create_flow(&manifest("tamper-b", "", "    - respond: 1\n"))
        .await;
    let value = distinctive_value();
    for flow in [&a, &b] {
        let (code, body) = put_secret(&app, &flow.id, "TOKEN", value.as_bytes()).await;
        assert_eq!(code, 201, "{body}");
    }
    // Someone with write access to the store flips one bit of A's ciphertext, and puts a copy
    // of B's sealed value under A's second name.
    let store = Store::connect(&app.store_url).await.unwrap();
    let mut rewrite = store.rewrite_secrets().await.unwrap();
    let all = rewrite.all().await.unwrap();
    let mut altered = all.iter().find(|s| s.flow_id == a.id).unwrap().clone();
    let mut raw = altered.sealed.ciphertext.into_bytes();
    raw[2] = if raw[2] == b'A' { b'B' } else { b'A' };
    altered.sealed.ciphertext = String::from_utf8(raw).unwrap();
    rewrite.replace(&altered).await.unwrap();
    rewrite.commit().await.unwrap();

    let (code, body) = app.post(&format!("/api/flows/{}/start", a.id), "").await;
    assert_eq!(code, 409, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("secret `TOKEN`") && error.contains("altered"),
        "{error}"
    );
    app.wait_status(&a, "error").await;

    // B's sealed value, moved to A: bound to B, it does not open for A.
    let sealed_b = store.sealed_secrets(&b.id).await.unwrap().remove(0).1;
    store
        .put_secret(&a.id, "MOVED", &sealed_b, 100, "test")
        .await
        .unwrap();
    let (code, _) = app
        .http
        .delete(app.url(&format!("/api/flows/{}/secrets/TOKEN", a.id)))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .unwrap();
    assert_eq!(code, 200);
    let (code, body) = app.post(&format!("/api/flows/{}/start", a.id), "").await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("secret `MOVED`"),
        "{body}"
    );
    // B, untouched, starts.
    app.start(&b).await;
    app.wait_status(&b, "running").await;
    let shown = everything_the_api_shows(&app, &a).await;
    assert!(!shown.contains(&value));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_master_key_secrets_are_refused_with_how_to_configure_one() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest("keyless", "", "    - respond: 1\n"))
        .await;
    let value = distinctive_value();
    let (code, body) = put_secret(&app, &flow.id, "API_KEY", value.as_bytes()).await;
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("no master key") && body.contains("--master-key-file"),
        "{body}"
    );
    assert!(!body.contains(&value));
    let (code, list) = app.get(&format!("/api/flows/{}/secrets", flow.id)).await;
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["secrets"], json!([]));
    assert!(list["master_key_id"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_postgres_and_docker_the_container_gets_the_secret_and_the_database_never_holds_it() {
    let keys = TempDir::new("pumphouse-keys");
    let key = new_key_file(&keys.0, "master.key");
    let pg = PostgresServer::start();
    let pg_url = pg.url();
    let app = TestApp::spawn_replicas(
        Backend::Docker,
        1,
        Some(pg),
        &["--master-key-file", key.to_str().unwrap()],
    )
    .await;
    let flow = app
        .create_flow(&manifest("pg-secret", "", "    - respond: 1\n"))
        .await;
    let value = distinctive_value();
    let (code, body) = put_secret(&app, &flow.id, "DB_PASSWORD", value.as_bytes()).await;
    assert_eq!(code, 201, "{body}");
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let container = app.container(&flow).await.expect("the pump's container");
    let env = container.config.unwrap().env.unwrap_or_default();
    assert!(
        env.contains(&format!("DB_PASSWORD={value}")),
        "the container's environment lacks DB_PASSWORD"
    );

    // The whole database, dumped, holds neither the value nor its base64.
    let pg_dump = ["/usr/lib/postgresql/15/bin/pg_dump", "/usr/bin/pg_dump"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("pg_dump is not installed; `apt-get install -y postgresql` (ops/test.sh does)");
    let dump = Command::new(pg_dump)
        .args(["--data-only", &pg_url])
        .output()
        .expect("running pg_dump");
    assert!(
        dump.status.success(),
        "{}",
        String::from_utf8_lossy(&dump.stderr)
    );
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dump.contains("DB_PASSWORD"),
        "the dump has the secret's row"
    );
    assert!(!dump.contains(&value), "the database holds the value");
    let shown = everything_the_api_shows(&app, &flow).await;
    assert!(!shown.contains(&value));
    assert!(!app.server_log().contains(&value));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_changed_while_the_flow_is_at_zero_reaches_the_woken_docker_pump() {
    let key =
        std::sync::Arc::new(MasterKey::from_base64(&MasterKey::generate_base64(), "").unwrap());
    let app = TestApp::spawn_with(Backend::Docker, |c| c.master_key = Some(key.clone())).await;
    let flow = app
        .create_flow(&manifest(
            "wake-secret",
            "idleTimeout: 1s\n",
            "    - respond: 1\n",
        ))
        .await;
    let (first, second) = (distinctive_value(), distinctive_value());
    let (code, body) = put_secret(&app, &flow.id, "API_KEY", first.as_bytes()).await;
    assert_eq!(code, 201, "{body}");
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    app.wait_status(&flow, "idle").await;

    // The parked container holds the old value; waking must not restart it as it is.
    let (code, body) = put_secret(&app, &flow.id, "API_KEY", second.as_bytes()).await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("when the flow next wakes"), "{body}");
    let (code, exec) = app.webhook(&flow, &json!({})).await;
    assert_eq!(code, 202, "{exec}");
    let done = app
        .wait_execution(&flow, exec["execution_id"].as_str().unwrap())
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    let env = app
        .container(&flow)
        .await
        .and_then(|c| c.config)
        .and_then(|c| c.env)
        .unwrap_or_default();
    assert!(
        env.contains(&format!("API_KEY={second}")),
        "the woken pump does not have the new value"
    );
    assert!(
        !env.iter().any(|v| v.contains(&first)),
        "the old value is still there"
    );
}
