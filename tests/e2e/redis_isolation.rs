//! Redis isolation: each pump signs in as its own Redis user, and Redis refuses it everything
//! outside its flow. The credentials are read from the pump itself (the container's env, or the
//! process's /proc environ), exactly as the pump got them.

use std::time::{Duration, Instant};

use pumphouse_e2e::{manifest, Backend, TestApp, TestFlow, DEADLINE};
use serde_json::{json, Value};

const STEPS: &str = "    - set: {key: seen, value: '{{payload}}'}\n    - respond: {ok: true}\n";

/// The `REDIS_URL` the flow's running pump was given.
async fn pump_redis_url(app: &TestApp, flow: &TestFlow) -> String {
    let env: Vec<String> = match app.backend {
        Backend::Docker => app
            .container(flow)
            .await
            .and_then(|c| c.config)
            .and_then(|c| c.env)
            .expect("the pump container has an env"),
        Backend::Process => {
            let (_, s) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
            let pid = s["pump"]["pump_ref"]
                .as_str()
                .and_then(|r| r.strip_prefix("pid:"))
                .unwrap_or_else(|| panic!("a process pump has a pid: {s:#}"))
                .to_string();
            let raw = std::fs::read(format!("/proc/{pid}/environ")).expect("the pump's environ");
            raw.split(|b| *b == 0)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .collect()
        }
    };
    env.iter()
        .find_map(|v| v.strip_prefix("REDIS_URL="))
        .expect("the pump has REDIS_URL")
        .to_string()
}

async fn connect(url: &str) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

async fn admin(app: &TestApp) -> redis::aio::MultiplexedConnection {
    connect(&app.redis.url()).await.expect("the admin signs in")
}

/// Runs `args` as the pump would and returns Redis's error code (`NOPERM`), or `OK` when Redis
/// ran it.
async fn code(conn: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> String {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    match cmd.query_async::<redis::Value>(conn).await {
        Ok(redis::Value::ServerError(e)) => e.code().to_string(),
        Ok(_) => "OK".to_string(),
        Err(e) => e.code().unwrap_or("no code").to_string(),
    }
}

async fn pump_users(app: &TestApp) -> Vec<String> {
    redis::cmd("ACL")
        .arg("USERS")
        .query_async::<Vec<String>>(&mut admin(app).await)
        .await
        .unwrap()
        .into_iter()
        .filter(|u| u.starts_with("pump-"))
        .collect()
}

/// Waits until the flow's Redis user is there (`present`) or gone.
async fn wait_user(app: &TestApp, flow: &TestFlow, present: bool) {
    let name = format!("pump-{}", flow.id);
    let started = Instant::now();
    while pump_users(app).await.contains(&name) != present {
        assert!(
            started.elapsed() < DEADLINE,
            "the Redis user {name} is {} still",
            if present { "missing" } else { "there" }
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Signing in with `url` fails because Redis refuses the user or its password.
async fn assert_refused(url: &str, why: &str) {
    match connect(url).await {
        Ok(_) => panic!("{why}: the credentials still sign in"),
        Err(e) => assert_eq!(
            e.kind(),
            redis::ErrorKind::AuthenticationFailed,
            "{why}: {e}"
        ),
    }
}

async fn run_webhook(app: &TestApp, flow: &TestFlow, payload: Value) -> Value {
    let (status, accepted) = app.webhook(flow, &payload).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["execution_id"].as_str().unwrap().to_string();
    app.wait_execution(flow, &id).await
}

async fn refused_everything_outside_its_flow(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.create_flow(&manifest("flow-a", "", STEPS)).await;
    let b = app.create_flow(&manifest("flow-b", "", STEPS)).await;
    app.start(&a).await;
    app.start(&b).await;
    app.wait_status(&a, "running").await;
    app.wait_status(&b, "running").await;
    // B has data, so a refusal below is Redis saying no, not an empty key.
    let done = run_webhook(&app, &b, json!({"card": "4111"})).await;
    assert_eq!(done["status"], "completed", "{done:#}");

    let url = pump_redis_url(&app, &a).await;
    assert!(
        url.contains(&format!("pump-{}:", a.id)) && !url.contains(&app.redis.password),
        "the pump signs in as its own user, never the admin"
    );
    let mut pump = connect(&url).await.expect("the pump's credentials sign in");
    let own = format!("tenant:default:flow:{}:", a.id);
    let other = format!("tenant:default:flow:{}:", b.id);
    let trigger_b = format!("trigger:{}", b.id);
    let trigger_a = format!("trigger:{}", a.id);
    // B's events: A can neither read, trim nor forge them.
    let events_b = pumphouse_pump::channels::events_stream("default", &b.id);

    // Its own prefix works.
    assert_eq!(
        code(&mut pump, &["SET", &format!("{own}x"), "1"]).await,
        "OK"
    );
    assert_eq!(code(&mut pump, &["GET", &format!("{own}x")]).await, "OK");
    assert_eq!(
        code(&mut pump, &["HSET", &format!("{own}h"), "f", "v"]).await,
        "OK"
    );
    assert_eq!(code(&mut pump, &["PUBLISH", &trigger_a, "{}"]).await, "OK");
    // Everything of flow B, and everything that would show it, is refused.
    for refused in [
        vec!["GET", &format!("{other}seen")],
        vec!["SET", &format!("{other}seen"), "forged"],
        vec!["DEL", &format!("{other}seen")],
        vec!["PUBLISH", &trigger_b, "{}"],
        vec!["XREAD", "STREAMS", &events_b, "0"],
        vec!["XRANGE", &events_b, "-", "+"],
        vec!["XADD", &events_b, "MAXLEN", "0", "*", "event", "{}"],
        vec!["DEL", &events_b],
        vec!["SCAN", "0"],
        vec!["KEYS", "*"],
        vec!["PUBSUB", "CHANNELS"],
        vec!["FLUSHALL"],
        vec!["EVAL", "return redis.call('GET', KEYS[1])", "1", &other],
        vec!["ACL", "LIST"],
    ] {
        assert_eq!(code(&mut pump, &refused).await, "NOPERM", "{refused:?}");
    }
    // A connection of its own: a SUBSCRIBE that went through would switch it to pub/sub.
    let mut sub = connect(&url).await.unwrap();
    assert_eq!(code(&mut sub, &["SUBSCRIBE", &trigger_b]).await, "NOPERM");

    // B's data is untouched and B still works.
    let stored: String = redis::cmd("GET")
        .arg(format!("{other}seen"))
        .query_async(&mut admin(&app).await)
        .await
        .unwrap();
    assert_eq!(stored, r#"{"card":"4111"}"#);
    let done = run_webhook(&app, &a, json!({"n": 1})).await;
    assert_eq!(done["status"], "completed", "{done:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_docker_pump_is_refused_another_flows_keys_channels_and_the_events_it_did_not_write() {
    refused_everything_outside_its_flow(Backend::Docker).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_pump_is_refused_another_flows_keys_channels_and_the_events_it_did_not_write() {
    refused_everything_outside_its_flow(Backend::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_start_gets_a_new_password_and_stop_and_delete_remove_the_user() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app.create_flow(&manifest("rotating", "", STEPS)).await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let first = pump_redis_url(&app, &flow).await;
    connect(&first).await.expect("the pump's password signs in");

    let (code, body) = app.post(&format!("/api/flows/{}/stop", flow.id), "").await;
    assert_eq!(code, 200, "{body}");
    wait_user(&app, &flow, false).await;
    assert_refused(&first, "a stopped flow's password").await;

    // The next pump holds a new password; the old one stays refused.
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let second = pump_redis_url(&app, &flow).await;
    assert_ne!(first, second, "a new pump, a new password");
    assert_refused(&first, "the previous pump's password").await;
    connect(&second).await.expect("the new password signs in");
    let done = run_webhook(&app, &flow, json!({"n": 1})).await;
    assert_eq!(done["status"], "completed", "{done:#}");

    let resp = app
        .http
        .delete(app.url(&format!("/api/flows/{}", flow.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    wait_user(&app, &flow, false).await;
    assert_refused(&second, "a deleted flow's password").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_docker_pump_signs_in_only_while_it_runs_and_keeps_its_container_on_wake() {
    let app = TestApp::spawn(Backend::Docker).await;
    let flow = app
        .create_flow(&manifest("napper", "idleTimeout: 1s\n", STEPS))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let url = pump_redis_url(&app, &flow).await;
    let container = app.container(&flow).await.unwrap().id.unwrap();
    app.wait_status(&flow, "idle").await;
    // The user is switched off once the pump has drained and stopped.
    let started = Instant::now();
    while connect(&url).await.is_ok() {
        assert!(
            started.elapsed() < DEADLINE,
            "a parked pump's password still signs in"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_refused(&url, "a parked pump's password").await;
    let parked = app.container(&flow).await.unwrap();
    assert_eq!(parked.state.and_then(|s| s.running), Some(false));

    // The wake restarts the very container, with the password it was created with.
    let done = run_webhook(&app, &flow, json!({"n": 1})).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let woken = app.container(&flow).await.unwrap();
    assert_eq!(
        woken.id.as_deref(),
        Some(container.as_str()),
        "the same container"
    );
    assert_eq!(pump_redis_url(&app, &flow).await, url);
    connect(&url)
        .await
        .expect("the woken pump's password works");
    // And only that one: the password offered to a new container in case was dropped.
    let user: Vec<redis::Value> = redis::cmd("ACL")
        .arg("GETUSER")
        .arg(format!("pump-{}", flow.id))
        .query_async(&mut admin(&app).await)
        .await
        .unwrap();
    let passwords = user
        .chunks(2)
        .find(|kv| matches!(&kv[0], redis::Value::BulkString(k) if k == b"passwords"))
        .map(|kv| match &kv[1] {
            redis::Value::Array(p) => p.len(),
            other => panic!("passwords: {other:?}"),
        });
    assert_eq!(passwords, Some(1), "{user:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_redis_restart_the_running_pump_signs_in_again_and_keeps_working() {
    let mut app = TestApp::spawn(Backend::Process).await;
    let flow = app.create_flow(&manifest("survivor", "", STEPS)).await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let url = pump_redis_url(&app, &flow).await;

    app.redis.stop();
    app.redis.restart().await;
    // Redis forgot every user it was told about; the leader creates them again.
    wait_user(&app, &flow, true).await;
    connect(&url)
        .await
        .expect("the pump's password works again");
    let done = run_webhook(&app, &flow, json!({"after": "restart"})).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let (_, status) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
    assert_eq!(status["status"], "running", "not restarted: {status:#}");
    assert_eq!(pump_redis_url(&app, &flow).await, url, "the same pump");
}

/// A Redis restart while no orchestrator runs leaves the pump's sign-in refused until the next
/// leader creates its user again. The pump must keep trying: it used to give up for good on
/// its first refused sign-in (redis-rs' `ConnectionManager` reconnects after I/O errors only),
/// then took triggers it could never report, and every later trigger of its flow stalled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pump_refused_sign_in_after_a_redis_restart_keeps_trying_until_its_user_is_back() {
    let mut app = TestApp::spawn_process(Backend::Docker, &[]).await;
    let flow = app
        .create_flow(&manifest("refused", "keepAlive: true\n", STEPS))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    // The container and the start of its process: neither may change.
    let pump = |c: Option<bollard::models::ContainerInspectResponse>| {
        c.map(|c| (c.id, c.state.and_then(|s| s.started_at)))
    };
    let before = pump(app.container(&flow).await);

    // Nobody is left to create the pump's user again while Redis restarts.
    app.kill_server();
    app.redis.stop();
    app.redis.restart().await;
    // The pump's next heartbeat finds Redis back and its sign-in refused.
    let started = Instant::now();
    loop {
        let log = app.pump_log(&flow).await;
        if log
            .lines()
            .any(|l| l.contains("cannot send event") && l.contains("AuthenticationFailed"))
        {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the pump never tried to sign in again:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    app.start_server().await;
    wait_user(&app, &flow, true).await;
    let done = run_webhook(&app, &flow, json!({"after": "refusal"})).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    assert_eq!(
        pump(app.container(&flow).await),
        before,
        "the same pump, adopted rather than replaced or restarted"
    );
}
