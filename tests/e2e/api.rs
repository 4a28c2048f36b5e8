//! API behaviour a client notices: manifest errors, names, tokens, auth.

use pumphouse_e2e::{manifest, Backend, TestApp};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_manifest_gets_422_naming_line_and_column_and_nothing_is_stored() {
    let app = TestApp::spawn(Backend::Process).await;
    let (code, body) = app
        .post(
            "/api/flows",
            "name: ok\nconfig:\n  steps: [\n    - log: x\n",
        )
        .await;
    assert_eq!(code, 422, "{body}");
    assert!(body["line"].is_u64(), "{body}");
    assert!(body["column"].is_u64(), "{body}");

    let (code, body) = app
        .post(
            "/api/flows",
            "name: ok\nresources: {memory: lots}\nconfig: {steps: [{log: x}]}\n",
        )
        .await;
    assert_eq!(code, 422);
    assert_eq!(body["field"], "resources.memory", "{body}");

    let (code, body) = app
        .post(
            "/api/flows",
            "name: ok\nimage: x\nsurprise: 1\nconfig: {a: 1}\n",
        )
        .await;
    assert_eq!(code, 422);
    assert!(
        body["error"].as_str().unwrap().contains("surprise"),
        "{body}"
    );
    assert_eq!(body["line"], 3);

    let (_, flows) = app.get("/api/flows").await;
    assert_eq!(flows, serde_json::json!([]), "nothing stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_token_is_shown_once_and_never_listed() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest("secretive", "", "    - log: x\n"))
        .await;
    assert!(flow.token.len() >= 22, "at least 128 bits");
    for path in [
        "/api/flows".to_string(),
        format!("/api/flows/{}", flow.id),
        format!("/api/flows/{}/status", flow.id),
    ] {
        let (_, body) = app.get(&path).await;
        assert!(
            !body.to_string().contains(&flow.token),
            "{path} leaks the token"
        );
    }
    let (code, body) = app
        .post("/api/flows", &manifest("secretive", "", "    - log: y\n"))
        .await;
    assert_eq!(code, 409, "names are unique: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_replaces_the_manifest_and_a_rename_is_refused() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest("editable", "", "    - log: one\n"))
        .await;
    let resp = app
        .http
        .put(app.url(&format!("/api/flows/{}", flow.name)))
        .body(manifest(
            "editable",
            "idleTimeout: 2m\n",
            "    - log: two\n",
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (_, shown) = app.get(&format!("/api/flows/{}", flow.id)).await;
    assert!(shown["manifest"].as_str().unwrap().contains("log: two"));
    assert_eq!(shown["idle_timeout_ms"], 120_000);
    let resp = app
        .http
        .put(app.url(&format!("/api/flows/{}", flow.id)))
        .body(manifest("renamed", "", "    - log: two\n"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 422);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_management_routes_refuse_anonymous_calls() {
    let app =
        TestApp::spawn_with(Backend::Process, |c| c.admin_token = Some("letmein".into())).await;
    let (code, body) = app.get("/api/flows").await;
    assert_eq!(code, 401, "{body}");
    let resp = app
        .http
        .get(app.url("/api/flows"))
        .bearer_auth("letmein")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (code, _) = app.get("/healthz").await;
    assert_eq!(code, 200, "health stays open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_webhook_token_works_at_once_and_the_old_one_is_refused() {
    let app = TestApp::spawn(Backend::Process).await;
    let mut flow = app
        .create_flow(&manifest(
            "rotating",
            "keepAlive: true\n",
            "    - respond: ok\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let old = flow.token.clone();
    let (code, body) = app
        .post(&format!("/api/flows/{}/webhook-token", flow.name), "")
        .await;
    assert_eq!(code, 200, "{body}");
    let new = body["webhook_token"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(body["webhook_url"].as_str().unwrap().ends_with(&new));

    let (code, _) = app.webhook(&flow, &serde_json::json!({})).await;
    assert_eq!(code, 404, "the old token is refused at once");
    flow.token = new;
    let (code, _) = app.webhook(&flow, &serde_json::json!({})).await;
    assert_eq!(code, 202, "the new one works");
    assert_eq!(
        app.executions(&flow).await.len(),
        1,
        "nothing recorded for the old token"
    );
    let (_, s) = app.get(&format!("/api/flows/{}/status", flow.id)).await;
    let audit = s["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["reason"] == "webhook token rotated");
    assert_eq!(
        audit.unwrap()["actor"],
        "admin",
        "the rotation is in the flow's events"
    );
    let (_, listed) = app.get("/api/flows").await;
    assert!(!listed.to_string().contains(&flow.token), "never listed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_over_a_flows_rate_limit_get_429_with_retry_after_and_nothing_recorded() {
    let app = TestApp::spawn(Backend::Process).await;
    let flow = app
        .create_flow(&manifest(
            "throttled",
            "keepAlive: true\nrateLimit: {perSecond: 0.5, burst: 3}\n",
            "    - respond: ok\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let url = app.url(&format!("/api/triggers/{}/webhook/{}", flow.id, flow.token));
    let mut codes = Vec::new();
    let mut retry_after = None;
    for _ in 0..5 {
        let resp = app.http.post(&url).body("{}").send().await.unwrap();
        codes.push(resp.status().as_u16());
        if resp.status().as_u16() == 429 {
            retry_after = resp
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_string());
            let body: serde_json::Value = resp.json().await.unwrap();
            assert!(
                body["error"]
                    .as_str()
                    .unwrap()
                    .contains("raise `rateLimit`"),
                "{body}"
            );
        }
    }
    assert_eq!(codes, [202, 202, 202, 429, 429]);
    let secs: u64 = retry_after.expect("a Retry-After header").parse().unwrap();
    assert!((1..=2).contains(&secs), "{secs}");
    assert_eq!(
        app.executions(&flow).await.len(),
        3,
        "refused triggers are not recorded"
    );

    let (code, body) = app
        .post(
            "/api/flows",
            &manifest(
                "bad-limit",
                "rateLimit: {perSecond: 0}\n",
                "    - respond: ok\n",
            ),
        )
        .await;
    assert_eq!(
        (code, &body["field"]),
        (422, &serde_json::json!("rateLimit.perSecond")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_refused_with_a_json_error_and_nothing_is_recorded() {
    let app = TestApp::spawn(Backend::Process).await;
    // Over the manifest limit (256 KiB) but under the body limit: 422, nothing stored.
    let big_manifest = manifest(
        "huge",
        &format!("env: {{PAD: '{}'}}\n", "x".repeat(300 * 1024)),
        "    - log: hi\n",
    );
    let (code, body) = app.post("/api/flows", &big_manifest).await;
    assert_eq!(code, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("limit"), "{body}");
    // Over the body limit (1 MiB): 413 in the API's own error shape.
    let (code, body) = app.post("/api/flows", &"x".repeat(2 << 20)).await;
    assert_eq!(code, 413, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("over the 1024 KiB allowed"),
        "{body}"
    );
    let (_, flows) = app.get("/api/flows").await;
    assert_eq!(flows, serde_json::json!([]), "nothing was stored");

    let flow = app
        .create_flow(&manifest("small", "keepAlive: true\n", "    - log: hi\n"))
        .await;
    let url = format!("/api/triggers/{}/webhook/{}", flow.id, flow.token);
    let (code, body) = app
        .post(&url, &format!("\"{}\"", "y".repeat(2 << 20)))
        .await;
    assert_eq!(code, 413, "{body}");
    assert!(
        app.executions(&flow).await.is_empty(),
        "no execution was recorded"
    );
    // A method a route does not take gets the same shape, with what to read.
    let (code, body) = app
        .call_as(None, reqwest::Method::PATCH, "/api/flows", "")
        .await;
    assert_eq!(code, 405, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("openapi.json"),
        "{body}"
    );
}

/// The headers of an answer, for the tests below that read them.
async fn answer(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = app
        .http
        .request(method, app.url(path))
        .body(body.to_string())
        .send()
        .await
        .expect("the server answered");
    let code = resp.status().as_u16();
    let headers = resp.headers().clone();
    (code, headers, resp.text().await.unwrap_or_default())
}

fn header<'a>(headers: &'a reqwest::header::HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_says_nosniff_errors_and_the_framework_refusals_included() {
    use reqwest::Method;
    let app = TestApp::spawn(Backend::Process).await;
    let missing = pumphouse_e2e::unique("missing");
    for (method, path, want) in [
        (Method::GET, "/healthz".to_string(), 200),
        (Method::GET, "/api/flows".to_string(), 200),
        (Method::GET, format!("/api/flows/{missing}"), 404),
        (Method::POST, "/api/flows".to_string(), 422),
        (Method::GET, "/no/such/route".to_string(), 404),
        (Method::PATCH, "/api/flows".to_string(), 405),
        (
            Method::GET,
            format!("/api/flows/{missing}/executions?limit=many"),
            400,
        ),
        (Method::GET, "/metrics".to_string(), 200),
    ] {
        let (code, headers, text) = answer(&app, method.clone(), &path, "name: [").await;
        assert_eq!(code, want, "{method} {path}: {text}");
        assert_eq!(
            header(&headers, "x-content-type-options"),
            Some("nosniff"),
            "{method} {path} answered {code} without nosniff"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_carrying_a_token_say_no_store_and_others_do_not() {
    use reqwest::Method;
    let app = TestApp::spawn(Backend::Process).await;
    let name = pumphouse_e2e::unique("cached");
    let (code, headers, text) = answer(
        &app,
        Method::POST,
        "/api/flows",
        &manifest(&name, "", "    - log: x\n"),
    )
    .await;
    assert_eq!(code, 201, "{text}");
    assert!(text.contains("webhook_token"), "{text}");
    assert_eq!(
        header(&headers, "cache-control"),
        Some("no-store"),
        "flow creation"
    );

    let (code, headers, text) = answer(
        &app,
        Method::POST,
        &format!("/api/flows/{name}/webhook-token"),
        "",
    )
    .await;
    assert_eq!(code, 200, "{text}");
    assert_eq!(
        header(&headers, "cache-control"),
        Some("no-store"),
        "token rotation"
    );

    let tenant = pumphouse_e2e::unique("t");
    let (code, headers, text) = answer(
        &app,
        Method::POST,
        "/api/tenants",
        &serde_json::json!({ "id": tenant }).to_string(),
    )
    .await;
    assert_eq!(code, 201, "{text}");
    assert!(text.contains("api_token"), "{text}");
    assert_eq!(
        header(&headers, "cache-control"),
        Some("no-store"),
        "a tenant's first token"
    );

    let (code, headers, text) = answer(
        &app,
        Method::POST,
        &format!("/api/tenants/{tenant}/tokens"),
        r#"{"name": "ci"}"#,
    )
    .await;
    assert_eq!(code, 201, "{text}");
    assert_eq!(
        header(&headers, "cache-control"),
        Some("no-store"),
        "a new API token"
    );

    // Answers without a token may be cached as the client likes.
    let (code, headers, _) = answer(&app, Method::GET, "/api/flows", "").await;
    assert_eq!(code, 200);
    assert_eq!(header(&headers, "cache-control"), None);
}
