//! Tenants and their API tokens, the audit log, and the request timeout.

use pumphouse_e2e::{manifest, Backend, TestApp};
use reqwest::Method;
use serde_json::{json, Value};

const ADMIN: &str = "admin-secret-for-tests";

async fn with_admin() -> TestApp {
    TestApp::spawn_with(Backend::Process, |c| c.admin_token = Some(ADMIN.into())).await
}

/// Creates a tenant as the admin and returns its first API token.
async fn tenant(app: &TestApp, id: &str) -> String {
    let (code, body) = app
        .call_as(
            Some(ADMIN),
            Method::POST,
            "/api/tenants",
            &json!({ "id": id }).to_string(),
        )
        .await;
    assert_eq!(code, 201, "{body}");
    body["api_token"].as_str().unwrap().to_string()
}

async fn create_flow(app: &TestApp, token: &str, name: &str) -> Value {
    let m = manifest(name, "keepAlive: true\n", "    - respond: ok\n");
    let (code, body) = app
        .call_as(Some(token), Method::POST, "/api/flows", &m)
        .await;
    assert_eq!(code, 201, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_sees_and_touches_only_its_own_flows() {
    let app = with_admin().await;
    let acme = tenant(&app, "acme").await;
    let globex = tenant(&app, "globex").await;
    let mine = create_flow(&app, &acme, "orders").await;
    // Names are per tenant: another tenant may use the same one.
    create_flow(&app, &globex, "orders").await;
    let id = mine["flow"]["id"].as_str().unwrap().to_string();
    let (code, _) = app
        .call_as(
            Some(&acme),
            Method::POST,
            &format!("/api/flows/{id}/start"),
            "",
        )
        .await;
    assert!(code == 202 || code == 200);
    let (_, exec) = app
        .call_as(
            Some(&acme),
            Method::POST,
            &format!("/api/triggers/{id}/inject?wait=10s"),
            "{}",
        )
        .await;
    let exec_id = exec["execution_id"].as_str().unwrap().to_string();
    let (_, before) = app
        .call_as(Some(&acme), Method::GET, &format!("/api/flows/{id}"), "")
        .await;

    // What a flow that does not exist gets, to compare with.
    let ghost = uuid::Uuid::new_v4().to_string();
    let (ghost_code, ghost_body) = app
        .call_as(
            Some(&globex),
            Method::GET,
            &format!("/api/flows/{ghost}"),
            "",
        )
        .await;
    assert_eq!(ghost_code, 404);
    let update = manifest("orders", "", "    - log: hijacked\n");
    let routes = [
        (Method::GET, format!("/api/flows/{id}"), String::new()),
        (Method::PUT, format!("/api/flows/{id}"), update),
        (Method::POST, format!("/api/flows/{id}/stop"), String::new()),
        (
            Method::POST,
            format!("/api/flows/{id}/start"),
            String::new(),
        ),
        (
            Method::POST,
            format!("/api/flows/{id}/webhook-token"),
            String::new(),
        ),
        (
            Method::GET,
            format!("/api/flows/{id}/status"),
            String::new(),
        ),
        (Method::GET, format!("/api/flows/{id}/logs"), String::new()),
        (
            Method::GET,
            format!("/api/flows/{id}/executions"),
            String::new(),
        ),
        (
            Method::GET,
            format!("/api/flows/{id}/executions/{exec_id}"),
            String::new(),
        ),
        (
            Method::POST,
            format!("/api/triggers/{id}/inject"),
            "{}".into(),
        ),
        (Method::DELETE, format!("/api/flows/{id}"), String::new()),
    ];
    for (method, path, body) in routes {
        let (code, answer) = app
            .call_as(Some(&globex), method.clone(), &path, &body)
            .await;
        assert_eq!(code, 404, "{method} {path} by another tenant: {answer}");
        assert_eq!(
            answer["error"].as_str().unwrap().replace(&id, "X"),
            ghost_body["error"].as_str().unwrap().replace(&ghost, "X"),
            "{method} {path} must look like a flow that does not exist"
        );
    }
    let (_, listed) = app
        .call_as(Some(&globex), Method::GET, "/api/flows", "")
        .await;
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    assert!(
        !ids.contains(&id.as_str()),
        "another tenant's flow is listed: {listed}"
    );
    assert_eq!(ids.len(), 1);
    // Nothing the other tenant tried changed anything.
    let (code, after) = app
        .call_as(Some(&acme), Method::GET, &format!("/api/flows/{id}"), "")
        .await;
    assert_eq!(code, 200);
    assert_eq!(after["manifest"], before["manifest"]);
    let (_, status) = app
        .call_as(
            Some(&acme),
            Method::GET,
            &format!("/api/flows/{id}/status"),
            "",
        )
        .await;
    assert_eq!(status["status"], "running", "{status}");
    // The status page shows a tenant its own flows only.
    let (code, page) = app.call_as(Some(&globex), Method::GET, "/status", "").await;
    assert_eq!(code, 200);
    assert!(!page.as_str().unwrap().contains(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_management_is_for_the_admin_and_a_revoked_token_is_refused_at_once() {
    let app = with_admin().await;
    let acme = tenant(&app, "acme").await;
    tenant(&app, "globex").await;
    let (code, body) = app
        .call_as(
            Some(&acme),
            Method::POST,
            "/api/tenants",
            r#"{"id": "evil"}"#,
        )
        .await;
    assert_eq!(code, 403, "{body}");
    assert!(body["error"].as_str().unwrap().contains("admin token"));
    let (code, _) = app
        .call_as(Some(&acme), Method::GET, "/api/tenants", "")
        .await;
    assert_eq!(code, 403);
    let (code, _) = app
        .call_as(Some(&acme), Method::GET, "/api/tenants/globex/tokens", "")
        .await;
    assert_eq!(code, 404, "another tenant's tokens look like nothing");
    let (code, body) = app
        .call_as(
            Some(ADMIN),
            Method::POST,
            "/api/tenants",
            r#"{"id": "Not Valid"}"#,
        )
        .await;
    assert_eq!(code, 400);
    assert!(
        body["error"].as_str().unwrap().contains("lower-case"),
        "{body}"
    );
    let (code, _) = app
        .call_as(
            Some(ADMIN),
            Method::POST,
            "/api/tenants",
            r#"{"id": "acme"}"#,
        )
        .await;
    assert_eq!(code, 409);

    // A tenant makes a second token for itself, uses it, then revokes it.
    let (code, made) = app
        .call_as(
            Some(&acme),
            Method::POST,
            "/api/tenants/acme/tokens",
            r#"{"name": "ci"}"#,
        )
        .await;
    assert_eq!(code, 201, "{made}");
    let ci = made["api_token"].as_str().unwrap().to_string();
    let ci_id = made["token"]["id"].as_str().unwrap().to_string();
    let (code, _) = app.call_as(Some(&ci), Method::GET, "/api/flows", "").await;
    assert_eq!(code, 200);
    let (code, listed) = app
        .call_as(Some(&acme), Method::GET, "/api/tenants/acme/tokens", "")
        .await;
    assert_eq!(code, 200);
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(
        !listed.to_string().contains(&ci),
        "a listing shows a token: {listed}"
    );
    let (code, _) = app
        .call_as(
            Some(ADMIN),
            Method::DELETE,
            &format!("/api/tenants/acme/tokens/{ci_id}"),
            "",
        )
        .await;
    assert_eq!(code, 200);
    let (code, body) = app.call_as(Some(&ci), Method::GET, "/api/flows", "").await;
    assert_eq!(code, 401, "revoked is refused at once: {body}");
    let (code, _) = app
        .call_as(Some(&acme), Method::GET, "/api/flows", "")
        .await;
    assert_eq!(code, 200, "the tenant's other token still works");
    let (code, _) = app
        .call_as(Some("pht_made-up"), Method::GET, "/api/flows", "")
        .await;
    assert_eq!(code, 401);

    // The store keeps hashes only.
    let path = app
        .store_url
        .strip_prefix("sqlite://")
        .expect("a SQLite store");
    let bytes = std::fs::read(path.split('?').next().unwrap()).unwrap();
    for token in [&acme, &ci] {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "a token is in the store in plaintext"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_names_who_did_what_and_outlives_the_flow() {
    let app = with_admin().await;
    let acme = tenant(&app, "acme").await;
    let globex = tenant(&app, "globex").await;
    let created = create_flow(&app, &acme, "ledger").await;
    let id = created["flow"]["id"].as_str().unwrap().to_string();
    let m = manifest("ledger", "keepAlive: true\n", "    - respond: changed\n");
    let steps = [
        (Method::PUT, format!("/api/flows/{id}"), m),
        (
            Method::POST,
            format!("/api/flows/{id}/start"),
            String::new(),
        ),
        (
            Method::POST,
            format!("/api/flows/{id}/webhook-token"),
            String::new(),
        ),
        (Method::POST, format!("/api/flows/{id}/stop"), String::new()),
    ];
    for (method, path, body) in steps {
        let (code, answer) = app.call_as(Some(&acme), method, &path, &body).await;
        assert!(code < 300, "{path}: {answer}");
    }
    // Flow events carry who did it while the flow lives.
    let (_, status) = app
        .call_as(
            Some(&acme),
            Method::GET,
            &format!("/api/flows/{id}/status"),
            "",
        )
        .await;
    assert!(
        status["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["actor"].as_str().unwrap().contains("initial")),
        "{status}"
    );
    let (code, _) = app
        .call_as(Some(ADMIN), Method::DELETE, &format!("/api/flows/{id}"), "")
        .await;
    assert_eq!(
        code, 404,
        "the admin acts on the default tenant, not acme's"
    );
    let (code, _) = app
        .call_as(Some(&acme), Method::DELETE, &format!("/api/flows/{id}"), "")
        .await;
    assert_eq!(code, 204);

    let (code, log) = app
        .call_as(Some(&acme), Method::GET, "/api/audit?flow=ledger", "")
        .await;
    assert_eq!(code, 200, "{log}");
    let actions: Vec<&str> = log
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "flow.create",
            "flow.update",
            "flow.start",
            "flow.rotate-webhook-token",
            "flow.stop",
            "flow.delete"
        ]
    );
    for e in log.as_array().unwrap() {
        assert_eq!(e["flow_id"], id.as_str());
        assert!(
            e["actor"].as_str().unwrap().starts_with("token `initial`"),
            "{e}"
        );
        assert!(e["at"].as_i64().unwrap() > 0);
    }
    let (_, theirs) = app
        .call_as(Some(&globex), Method::GET, "/api/audit", "")
        .await;
    assert!(
        theirs
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["tenant_id"] == "globex"),
        "{theirs}"
    );
    assert!(!theirs.to_string().contains(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_timeout_gets_503_and_its_change_still_completes() {
    let app = TestApp::spawn_with(Backend::Process, |c| {
        c.request_timeout = std::time::Duration::from_millis(300)
    })
    .await;
    let flow = app
        .create_flow(&manifest(
            "slow-stop",
            "stopGrace: 20s\n",
            "    - sleep: 2s\n    - respond: done\n",
        ))
        .await;
    app.start(&flow).await;
    app.wait_status(&flow, "running").await;
    let (_, accepted) = app.webhook(&flow, &json!({})).await;
    let exec_id = accepted["execution_id"].as_str().unwrap().to_string();
    app.wait_execution_status(&flow, &exec_id, "running").await;
    // The stop waits for the pump to drain (about 2 s): far past the 300 ms timeout.
    let (code, body) = app.post(&format!("/api/flows/{}/stop", flow.id), "").await;
    assert_eq!(code, 503, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("goes on in the background"),
        "{body}"
    );
    // The stop still happens in full: the pump drains, the flow ends stopped.
    let exec = app.wait_execution(&flow, &exec_id).await;
    assert_eq!(exec["status"], "completed", "{exec}");
    app.wait_status(&flow, "stopped").await;
}
