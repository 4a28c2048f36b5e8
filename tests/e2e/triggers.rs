//! The trigger path: tokens, durability, re-delivery and deadlines.

use pumphouse_e2e::{manifest, Backend, TestApp};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_webhook_token_is_rejected_and_nothing_is_recorded() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest("guarded", "", "    - respond: ok\n"))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;

    let wrong = pumphouse::token::generate();
    let (code, body) = app
        .post(&format!("/api/triggers/{}/webhook/{wrong}", flow.id), "{}")
        .await;
    assert_eq!(code, 404, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no webhook matches"),
        "{body}"
    );
    let (code, _) = app
        .post(
            &format!("/api/triggers/{}/webhook/{}x", flow.id, flow.token),
            "{}",
        )
        .await;
    assert_eq!(code, 404);
    assert!(
        app.executions(&flow).await.is_empty(),
        "nothing recorded for a wrong token"
    );

    let (code, _) = app.webhook(&flow, &json!({})).await;
    assert_eq!(code, 202, "the right token still works");
    assert_eq!(app.executions(&flow).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_for_a_stopped_flow_gets_409_saying_how_to_start_it() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest("sleepy", "", "    - respond: ok\n"))
        .await;
    let (code, body) = app.webhook(&flow, &json!({})).await;
    assert_eq!(code, 409, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(
        msg.contains("is stopped") && msg.contains("pumphouse flow start sleepy"),
        "{msg}"
    );
    assert!(app.executions(&flow).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_sent_while_the_flow_starts_is_held_and_delivered_once_ready() {
    let app = TestApp::spawn(Backend::Process).await;
    // startDelay keeps the pump from subscribing (and so from being ready) for 2 s.
    let m =
        "name: late\nconfig:\n  startDelay: 2s\n  steps:\n    - respond: {got: '{{payload.n}}'}\n";
    let flow = app.create_flow(m).await;
    app.start(&flow).await;
    let (code, accepted) = app.webhook(&flow, &json!({"n": 7})).await;
    assert_eq!(code, 202, "a starting flow accepts triggers: {accepted}");
    let exec = app
        .wait_execution(&flow, accepted["execution_id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "completed", "{exec:#}");
    assert_eq!(exec["output"], json!({"got": 7}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_published_while_the_pump_is_unsubscribed_is_resent_until_it_lands() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest(
            "blip",
            "",
            "    - respond: {got: '{{payload.n}}'}\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;

    // Cut the pump's subscription and keep its Redis user from subscribing again until we
    // allow it.
    let pump_user = format!("pump-{}", flow.id);
    let mut redis = redis::Client::open(app.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", &pump_user, "-subscribe"][..])
        .query_async(&mut redis)
        .await
        .unwrap();
    let killed: i64 = redis::cmd("CLIENT")
        .arg(&["KILL", "TYPE", "pubsub"][..])
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        killed >= 1,
        "the pump's subscriber connection (and the leader's own)"
    );
    let listeners: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("trigger:{}", flow.id))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(listeners[0].1, 0, "nobody listens now");

    let (code, accepted) = app.webhook(&flow, &json!({"n": 3})).await;
    assert_eq!(code, 202);
    let _: () = redis::cmd("ACL")
        .arg(&["SETUSER", &pump_user, "+subscribe"][..])
        .query_async(&mut redis)
        .await
        .unwrap();

    let exec = app
        .wait_execution(&flow, accepted["execution_id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "completed", "{exec:#}");
    assert_eq!(exec["output"], json!({"got": 3}));
    assert!(
        exec["attempts"].as_i64().unwrap() >= 2,
        "the first send reached nobody: {exec:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_no_pump_acknowledges_fails_at_its_deadline_with_the_reason() {
    let app = TestApp::spawn(Backend::Process).await;
    let m = "name: deaf\ndeliveryTimeout: 1s\nconfig:\n  startDelay: 10s\n  steps:\n    - respond: ok\n";
    let flow = app.create_flow(m).await;
    app.start(&flow).await;
    let (code, accepted) = app.webhook(&flow, &json!({})).await;
    assert_eq!(code, 202);
    let exec = app
        .wait_execution(&flow, accepted["execution_id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "failed");
    let err = exec["error"].as_str().unwrap();
    assert!(
        err.contains("no pump acknowledged this trigger before its deadline"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_step_fails_the_execution_with_the_pumps_message() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest(
            "grumpy",
            "",
            "    - fail: 'cannot serve {{payload.who}}'\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let (_, accepted) = app
        .post(
            &format!("/api/triggers/{}/inject", flow.name),
            r#"{"who": "bob"}"#,
        )
        .await;
    let exec = app
        .wait_execution(&flow, accepted["execution_id"].as_str().unwrap())
        .await;
    assert_eq!(exec["status"], "failed");
    assert_eq!(exec["error"], "cannot serve bob");
    assert_eq!(exec["trigger_type"], "manual");
}

/// Triggers recorded together share one commit; one that cannot be recorded (its flow was
/// deleted a moment ago) must not take the others down with it.
#[tokio::test]
async fn a_trigger_that_cannot_be_recorded_fails_alone_in_its_group_commit() {
    use pumphouse::dispatcher::Dispatcher;
    use pumphouse::store::Store;
    use std::time::Duration;

    let redis = pumphouse_e2e::RedisServer::start().await;
    let dir = pumphouse_e2e::TempDir::new("pumphouse-group-commit");
    let store = Store::connect(&format!("sqlite://{}", dir.0.join("s.db").display()))
        .await
        .unwrap();
    store.ensure_tenant("default", "Default").await.unwrap();
    let flow = pumphouse_e2e::running_flow_record("default", "grouped");
    store.create_flow(&flow, "test").await.unwrap();
    let bus = pumphouse::bus::Bus::connect(&redis.url()).await.unwrap();
    let dispatcher = Dispatcher::new(
        store.clone(),
        bus,
        std::sync::Arc::new(pumphouse::metrics::Metrics::new()),
    );
    // One runtime thread: all three are handed to the writer before it runs, so they are one
    // group.
    let deadline = Duration::from_secs(30);
    let gone = uuid::Uuid::new_v4().to_string();
    let (a, b, c) = tokio::join!(
        dispatcher.accept(&flow.id, "webhook", json!({"n": 1}), deadline),
        dispatcher.accept(&gone, "webhook", json!({"n": 2}), deadline),
        dispatcher.accept(&flow.id, "webhook", json!({"n": 3}), deadline),
    );
    let (a, c) = (a.expect("recorded"), c.expect("recorded"));
    assert!(
        b.is_err(),
        "a trigger for a flow that does not exist is refused"
    );
    assert!(a.seq < c.seq, "arrival order is kept");
    for id in [&a.execution_id, &c.execution_id] {
        let e = store
            .get_execution(id)
            .await
            .unwrap()
            .expect("in the store");
        assert_eq!(e.status, "queued");
    }
}
