//! Hostile input a client can send, and what it gets back: each case here was found by
//! `ops/fuzz.sh` or `ops/schemathesis.sh` and is kept so it cannot come back.

use pumphouse::store::Store;
use pumphouse_e2e::{manifest, Backend, TestApp, TestFlow};
use reqwest::Method;
use serde_json::{json, Value};

/// Sends a request and returns its status, content type and JSON body.
async fn call(app: &TestApp, method: &str, path: &str, body: Vec<u8>) -> (u16, String, Value) {
    let resp = app
        .http
        .request(method.parse().expect("a method"), app.url(path))
        .body(body)
        .send()
        .await
        .expect("answered");
    let code = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (code, content_type, body)
}

/// Whether the served OpenAPI document lists `code` among the answers of `method path`.
fn documents(doc: &Value, path: &str, method: &str, code: u16) -> bool {
    doc["paths"][path][method]["responses"]
        .get(code.to_string())
        .is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_the_framework_refuses_get_a_documented_json_error() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest("refusals", "", "    - log: x\n"))
        .await;
    let (_, doc) = app.get("/openapi.json").await;
    let cases = [
        // A query string that does not parse used to get a plain-text 400 the document omitted.
        (
            "GET",
            format!(
                "/api/flows/{}/executions?limit=9223372036854775808",
                flow.id
            ),
            "/api/flows/{id}/executions",
            Vec::new(),
            400,
        ),
        (
            "GET",
            format!("/api/flows/{}/logs?follow=False", flow.id),
            "/api/flows/{id}/logs",
            Vec::new(),
            400,
        ),
        (
            "POST",
            format!("/api/triggers/{}/inject?wait=", flow.id),
            "/api/triggers/{flow_id}/inject",
            Vec::new(),
            400,
        ),
        (
            "POST",
            format!("/api/triggers/{}/inject", flow.id),
            "/api/triggers/{flow_id}/inject",
            vec![b' '; 1024 * 1024 + 1],
            413,
        ),
        (
            "POST",
            "/api/flows".to_string(),
            "/api/flows",
            vec![0xff, 0xfe],
            400,
        ),
    ];
    for (method, path, template, body, want) in cases {
        let (code, content_type, answer) = call(&app, method, &path, body).await;
        assert_eq!(code, want, "{method} {path}: {answer}");
        assert!(
            content_type.starts_with("application/json"),
            "{method} {path} answered {content_type}: {answer}"
        );
        let error = answer["error"].as_str().unwrap_or_default();
        assert!(
            !error.is_empty(),
            "{method} {path}: no error text in {answer}"
        );
        assert!(
            documents(&doc, template, &method.to_lowercase(), want),
            "{method} {template} answers {want} but the OpenAPI document does not say so"
        );
    }

    // A method a route does not take: JSON too, with the Allow header kept.
    let resp = app
        .http
        .delete(app.url(&format!("/api/flows/{}/start", flow.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
    assert!(resp.headers().get("allow").is_some(), "{resp:?}");
    let body: Value = resp.json().await.expect("a JSON answer to a wrong method");
    assert!(body["error"].as_str().unwrap().contains("Allow"), "{body}");

    // Every route may fail on the store; every management route refuses a missing token.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, _) in item.as_object().unwrap() {
            if path != "/healthz" && path != "/openapi.json" {
                assert!(
                    documents(&doc, path, method, 500),
                    "{method} {path}: no 500"
                );
            }
            let open = ["/healthz", "/readyz", "/metrics", "/openapi.json"]
                .contains(&path.as_str())
                || path.contains("/webhook/");
            if !open {
                assert!(
                    documents(&doc, path, method, 401),
                    "{method} {path}: no 401"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_too_deep_for_the_pump_is_refused_and_one_it_can_read_runs() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest("deep", "", "    - respond: done\n"))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let nested = |levels: usize| format!("{}{}", "[".repeat(levels), "]".repeat(levels));

    // 127 levels parse on their own, but not inside the trigger the pump receives: this was
    // answered 202 and then never ran.
    let (code, body) = app
        .post(
            &format!("/api/triggers/{}/webhook/{}", flow.id, flow.token),
            &nested(127),
        )
        .await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("deep"), "{body}");
    assert!(app.executions(&flow).await.is_empty(), "nothing recorded");

    let (code, body) = app
        .post(
            &format!("/api/triggers/{}/webhook/{}?wait=20s", flow.id, flow.token),
            &nested(pumphouse::trigger_payload::MAX_DEPTH),
        )
        .await;
    assert_eq!(code, 200, "the deepest accepted payload runs: {body}");
    assert_eq!(body["status"], "completed", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_whose_config_cannot_reach_the_pump_is_refused_and_nothing_is_stored() {
    let app = TestApp::spawn(Backend::Process).await;
    // Accepted before, and then starting the flow panicked in the orchestrator.
    let (code, body) = app
        .post(
            "/api/flows",
            "name: tagged\nconfig:\n  steps:\n    - !tag nd: ok\n",
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["field"], "config", "{body}");
    // A duration past a year wrapped to a deadline in the past.
    let (code, body) = app
        .post(
            "/api/flows",
            &manifest(
                "forever",
                "deliveryTimeout: 18446744073709551615ms\n",
                "    - respond: x\n",
            ),
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert_eq!(body["field"], "deliveryTimeout", "{body}");
    let (_, flows) = app.get("/api/flows").await;
    assert_eq!(flows, serde_json::json!([]), "nothing stored");
}

/// `rateLimit: {perSecond: 1e-20, burst: 1}` was accepted; a flow's second trigger then
/// panicked in the rate limiter while it held the lock all flows share, and from then on every
/// webhook and inject of every tenant answered 500 until a restart. Bad limits, resources,
/// images and env are now refused, and a limit stored before the rules existed does no harm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifests_are_refused_and_cannot_break_other_tenants_webhooks() {
    let app = TestApp::spawn(Backend::Process).await;
    let steps = "    - respond: ok\n";
    // Another tenant's flow, taking triggers.
    let (code, body) = app
        .call_as(
            None,
            Method::POST,
            "/api/tenants",
            &json!({"id": "bystander"}).to_string(),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let bystander = body["api_token"].as_str().unwrap().to_string();
    let (code, body) = app
        .call_as(
            Some(&bystander),
            Method::POST,
            "/api/flows",
            &manifest("victim", "keepAlive: true\n", steps),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    let victim = TestFlow {
        id: body["flow"]["id"].as_str().unwrap().to_string(),
        name: "victim".into(),
        token: body["webhook_token"].as_str().unwrap().to_string(),
    };
    let start = format!("/api/flows/{}/start", victim.id);
    let (code, body) = app
        .call_as(Some(&bystander), Method::POST, &start, "")
        .await;
    assert!(code == 200 || code == 202, "{body}");
    let mut bully = app
        .create_flow(&manifest("bully", "keepAlive: true\n", steps))
        .await;
    app.start(&bully).await;

    let bad = [
        (
            "rateLimit: {perSecond: 1e-20, burst: 1}\n",
            "rateLimit.perSecond",
        ),
        ("rateLimit: {perSecond: .inf}\n", "rateLimit.perSecond"),
        ("rateLimit: {perSecond: 1, burst: 0}\n", "rateLimit.burst"),
        ("resources: {cpu: .inf}\n", "resources.cpu"),
        ("resources: {cpu: 1e9}\n", "resources.cpu"),
        (
            "resources: {memory: 99999999999999999999Gi}\n",
            "resources.memory",
        ),
        ("image: ''\n", "image"),
        ("image: 'x;rm -rf /'\n", "image"),
        ("image: --privileged\n", "image"),
        ("image: \"pump\\n:dev\"\n", "image"),
        ("env: {A: \"x\\0y\"}\n", "env.A"),
        ("env:\n  A: x\n  A: y\n", "env.A"),
        ("env: {LD_PRELOAD: /tmp/x.so}\n", "env.LD_PRELOAD"),
        ("env: {PATH: /tmp}\n", "env.PATH"),
    ];
    let replace = format!("/api/flows/{}", bully.id);
    for (extra, field) in bad {
        let (code, created) = app.post("/api/flows", &manifest("bad", extra, steps)).await;
        let (code2, replaced) = app
            .call_as(
                None,
                Method::PUT,
                &replace,
                &manifest("bully", extra, steps),
            )
            .await;
        for (code, body) in [(code, created), (code2, replaced)] {
            assert_eq!(code, 422, "{extra}: {body}");
            assert_eq!(body["field"], field, "{extra}: {body}");
            if field.starts_with("rateLimit.perSecond") {
                let error = body["error"].as_str().unwrap();
                assert!(
                    error.contains("0.001") && error.contains("1000000"),
                    "the range: {body}"
                );
            }
        }
    }
    let (_, flows) = app.get("/api/flows").await;
    assert_eq!(
        flows.as_array().unwrap().len(),
        1,
        "nothing stored: {flows}"
    );

    // A tiny limit stored before the rules (as by an older version): written to the store
    // directly, then a write through the server (a new webhook token) so its flow cache reads
    // the stored manifest at the next webhook.
    let store = Store::connect(&app.store_url).await.unwrap();
    let old = manifest(
        "bully",
        "keepAlive: true\nrateLimit: {perSecond: 1e-20, burst: 1}\n",
        steps,
    );
    assert!(store
        .update_manifest(&bully.id, &old, 15 * 60 * 1000, true, "test")
        .await
        .unwrap());
    let (code, body) = app
        .post(&format!("/api/flows/{}/webhook-token", bully.id), "")
        .await;
    assert_eq!(code, 200, "{body}");
    bully.token = body["webhook_token"].as_str().unwrap().to_string();
    for i in 0..3 {
        let (code, body) = app.webhook(&bully, &json!({"i": i})).await;
        assert!(
            code == 202 || code == 429,
            "bully's webhook {i}: {code} {body}"
        );
    }
    let inject = format!("/api/triggers/{}/inject", bully.id);
    let (code, body) = app.post(&inject, "{}").await;
    assert!(code == 202 || code == 429, "bully's inject: {code} {body}");

    // The other tenant's webhook is still taken.
    let (code, body) = app.webhook(&victim, &json!({"hello": "world"})).await;
    assert_eq!(code, 202, "another tenant's webhook: {body}");
    let (code, body) = app.get("/readyz").await;
    assert_eq!(code, 200, "{body}");
}
