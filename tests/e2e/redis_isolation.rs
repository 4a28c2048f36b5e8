//! Redis isolation: each pump signs in as its own Redis user, and Redis refuses it everything
//! outside its flow. The credentials are read from the pump itself (the container's env, or the
//! process's /proc environ), exactly as the pump got them.

use std::time::{Duration, Instant};

use pumphouse_e2e::{manifest, unique, Backend, TestApp, TestFlow, DEADLINE};
use serde_json::{json, Value};

const STEPS: &str = "    - set: {key: seen, value: '{{payload}}'}\n    - respond: {ok: true}\n";

/// The `REDIS_URL` the flow's running pump was given.
async fn pump_redis_url(app: &TestApp, flow: &TestFlow) -> String {
    app.pump_var(flow, "REDIS_URL").await
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

/// The pump's process id, from its `pump_ref` (process backend).
async fn pump_pid(app: &TestApp, flow: &TestFlow) -> u32 {
    let (_, s) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
    s["pump"]["pump_ref"]
        .as_str()
        .and_then(|r| r.strip_prefix("pid:"))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a process pump has a pid: {s:#}"))
}

/// Waits until the flow runs a pump instance other than `old` and returns the new one's id.
async fn wait_new_instance(app: &TestApp, flow: &TestFlow, old: &str) -> String {
    let started = Instant::now();
    loop {
        let (_, s) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
        let instance = s["pump"]["instance_id"].as_str().unwrap_or_default();
        if s["status"] == "running" && !instance.is_empty() && instance != old {
            return instance.to_string();
        }
        assert!(
            started.elapsed() < DEADLINE,
            "the flow never ran a new pump: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// What a pump left running by a killed orchestrator holds: a subscription to its trigger
/// channel, signed in with its password. Waits until Redis closes it, and fails the test if it
/// stays open past the deadline.
async fn assert_closed(pubsub: redis::aio::PubSub, why: &str) {
    use futures_util::StreamExt as _;
    let mut messages = pubsub.into_on_message();
    // Triggers for the new pump reach it too while it is open; it ends when Redis closes it.
    let ended =
        tokio::time::timeout(DEADLINE, async { while messages.next().await.is_some() {} }).await;
    assert!(
        ended.is_ok(),
        "{why}: a connection signed in with an earlier pump's password is still open"
    );
}

async fn subscribe(url: &str, flow: &TestFlow) -> redis::aio::PubSub {
    let mut pubsub = redis::Client::open(url)
        .unwrap()
        .get_async_pubsub()
        .await
        .expect("the pump's password signs in");
    pubsub
        .subscribe(pumphouse_pump::channels::trigger(&flow.id))
        .await
        .expect("the pump may subscribe to its trigger channel");
    pubsub
}

/// Issue 12, point 5: changing a user's password (or switching it off) leaves its connections
/// open, so a pump orphaned by a killed orchestrator stayed subscribed and kept running every
/// trigger beside its replacement. A new pump now closes the connections of the earlier ones,
/// and so does parking a flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_pump_closes_the_redis_connections_signed_in_with_an_earlier_pumps_password() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest(&unique("replaced"), "keepAlive: true\n", STEPS))
        .await;
    app.start(&flow).await;
    let s = app.wait_status(&flow, "running").await;
    let first = s["pump"]["instance_id"].as_str().unwrap().to_string();
    let url = pump_redis_url(&app, &flow).await;
    let orphan = subscribe(&url, &flow).await;
    let mut plain = connect(&url).await.unwrap();

    // The pump crashes; the leader restarts the flow with a new pump and a new password.
    pumphouse_e2e::signal(pump_pid(&app, &flow).await, "KILL");
    wait_new_instance(&app, &flow, &first).await;
    assert_closed(orphan, "after a crash restart").await;
    let ping = redis::cmd("PING").query_async::<String>(&mut plain).await;
    assert!(
        ping.is_err(),
        "the plain connection still answers: {ping:?}"
    );
    assert_refused(&url, "an earlier pump's password").await;
    // The new pump kept its own connections.
    let done = run_webhook(&app, &flow, json!({"n": 1})).await;
    assert_eq!(done["status"], "completed", "{done:#}");

    // A flow scaled to zero: its user is switched off, and what is signed in is closed.
    let napper = app
        .create_flow(&manifest(&unique("napper"), "idleTimeout: 1s\n", STEPS))
        .await;
    app.start(&napper).await;
    app.wait_status(&napper, "running").await;
    let orphan = subscribe(&pump_redis_url(&app, &napper).await, &napper).await;
    app.wait_status(&napper, "idle").await;
    assert_closed(orphan, "after scaling to zero").await;
    let done = run_webhook(&app, &napper, json!({"n": 2})).await;
    assert_eq!(done["status"], "completed", "{done:#}");
}

/// Waits until `flow` (of the tenant holding `token`) has status `want` and returns it.
async fn wait_status_as(app: &TestApp, token: &str, flow: &TestFlow, want: &str) -> Value {
    let started = Instant::now();
    loop {
        let path = format!("/api/flows/{}/status", flow.id);
        let (_, s) = app
            .call_as(Some(token), reqwest::Method::GET, &path, "")
            .await;
        if s["status"] == want {
            return s;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "flow {} never became {want}: {s:#}",
            flow.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Issue 12, point 3: one pump could stop event processing for every flow by putting a string
/// where its events stream was: the leader's one read over all streams failed with WRONGTYPE,
/// every other tenant's webhook timed out, and `/readyz` said nothing. The stream now costs
/// only its own flow, which goes to `error` naming it, and its next start makes it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pump_that_breaks_its_events_stream_costs_only_its_own_flow() {
    let app = TestApp::spawn(Backend::Process).await;
    // The victim belongs to another tenant.
    let (status, body) = app
        .post("/api/tenants", &json!({"id": unique("acme")}).to_string())
        .await;
    assert_eq!(status, 201, "{body}");
    let acme = body["api_token"].as_str().unwrap().to_string();
    let (status, body) = app
        .call_as(
            Some(&acme),
            reqwest::Method::POST,
            "/api/flows",
            &manifest(&unique("victim"), "keepAlive: true\n", STEPS),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let victim = TestFlow {
        id: body["flow"]["id"].as_str().unwrap().to_string(),
        name: body["flow"]["name"].as_str().unwrap().to_string(),
        token: body["webhook_token"].as_str().unwrap().to_string(),
    };
    let hostile = app
        .create_flow(&manifest(&unique("hostile"), "keepAlive: true\n", STEPS))
        .await;
    let start = format!("/api/flows/{}/start", victim.id);
    let (status, body) = app
        .call_as(Some(&acme), reqwest::Method::POST, &start, "")
        .await;
    assert!(status == 200 || status == 202, "{body}");
    app.start(&hostile).await;
    wait_status_as(&app, &acme, &victim, "running").await;
    app.wait_status(&hostile, "running").await;
    let webhook = |n: u32| {
        let path = format!(
            "/api/triggers/{}/webhook/{}?wait=5s",
            victim.id, victim.token
        );
        let app = &app;
        async move { app.post(&path, &json!({ "n": n }).to_string()).await }
    };
    let (status, answer) = webhook(0).await;
    assert_eq!(status, 200, "before: {answer}");

    // With the hostile pump's own credentials: its stream becomes a string, again and again.
    let stream = pumphouse_pump::channels::events_stream("default", &hostile.id);
    let mut pump = connect(&pump_redis_url(&app, &hostile).await)
        .await
        .unwrap();
    assert_eq!(code(&mut pump, &["DEL", &stream]).await, "OK");
    assert_eq!(code(&mut pump, &["SET", &stream, "x"]).await, "OK");
    let vandal = tokio::spawn({
        let stream = stream.clone();
        async move {
            // Until its user is gone and Redis closed the connection.
            while code(&mut pump, &["DEL", &stream]).await == "OK"
                && code(&mut pump, &["SET", &stream, "x"]).await == "OK"
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });

    // The other tenant's flow is not held up.
    for n in 1..=3 {
        let (status, answer) = webhook(n).await;
        assert_eq!(status, 200, "trigger {n} after the stream broke: {answer}");
        assert_eq!(answer["output"], json!({"ok": true}), "{answer}");
    }
    // The hostile flow is in error, naming its stream, and so is /readyz.
    let s = app.wait_status(&hostile, "error").await;
    let reason = s["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&stream),
        "the reason names the stream: {s:#}"
    );
    let (status, ready) = app.get("/readyz").await;
    assert_eq!(status, 200, "the other flows are fine: {ready:#}");
    let bad = ready["events"]["bad_streams"].as_array().cloned();
    assert!(
        bad.iter()
            .flatten()
            .any(|b| b["stream"] == stream.as_str() && b["flow_id"] == hostile.id.as_str()),
        "/readyz names the stream: {ready:#}"
    );
    tokio::time::timeout(DEADLINE, vandal)
        .await
        .expect("the hostile pump's connection was closed")
        .unwrap();

    // Its next start makes the stream again, and it runs triggers.
    app.start(&hostile).await;
    app.wait_status(&hostile, "running").await;
    let done = run_webhook(&app, &hostile, json!({"n": "again"})).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let (_, ready) = app.get("/readyz").await;
    assert_eq!(ready["events"]["bad_streams"], json!([]), "{ready:#}");
    let (status, answer) = webhook(4).await;
    assert_eq!(status, 200, "{answer}");
}
