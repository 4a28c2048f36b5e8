//! The operators' status page at /status, loaded in headless Chromium: flows in every state,
//! their executions, recent failures, and what users wrote shown as text, never as markup.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pumphouse_e2e::{manifest, Backend, TempDir, TestApp, DEADLINE};
use serde_json::json;

const CHROMIUM: &str = "/usr/bin/chromium";

/// How long Chromium may take to load and dump the page.
const BROWSER_DEADLINE: Duration = Duration::from_secs(60);

/// Fails the test, with the command that fixes it, when Chromium is not installed.
fn require_chromium() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "`{CHROMIUM}` is not installed; the status page test renders the page in headless \
         Chromium. Install it with `ops/install-chromium.sh` (as root) or \
         `apt-get install -y chromium`"
    );
}

/// Loads `url` in headless Chromium with a fresh profile and returns the DOM it serializes.
fn dump_dom(url: &str) -> String {
    require_chromium();
    let dir = TempDir::new("pumphouse-chromium");
    let profile = dir.0.join("profile");
    let stdout_path = dir.0.join("dom.html");
    let stderr_path = dir.0.join("stderr.log");
    let stdout = std::fs::File::create(&stdout_path).expect("the DOM file");
    let stderr = std::fs::File::create(&stderr_path).expect("the stderr file");
    let mut child = Command::new(CHROMIUM)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-proxy-server",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(url)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {CHROMIUM}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waiting for chromium") {
            break status;
        }
        if started.elapsed() > BROWSER_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium did not dump {url} within {BROWSER_DEADLINE:?}; its stderr:\n{}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = std::fs::read_to_string(&stdout_path).expect("reading the DOM");
    assert!(
        status.success() && dom.contains("</html>"),
        "chromium failed on {url} ({status}); its stderr:\n{}\nits output:\n{dom}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    dom
}

/// The serialized table row of one flow.
fn flow_row<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!(r#"id="flow-{name}""#))
        .unwrap_or_else(|| panic!("no row for flow {name} in the page:\n{dom}"));
    let len = dom[start..].find("</tr>").expect("the row ends");
    &dom[start..start + len]
}

/// The part of the page from the element with `id` to the end of its table.
fn section<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!(r#"id="{id}""#))
        .unwrap_or_else(|| panic!("no #{id} in the page:\n{dom}"));
    let len = dom[start..].find("</table>").unwrap_or(dom.len() - start);
    &dom[start..start + len]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_every_flow_its_executions_and_failures_escaped_in_a_real_browser() {
    require_chromium();
    let app = TestApp::spawn(Backend::Process).await;

    // Running, with a completed execution.
    let steady = app
        .create_flow(&manifest("steady", "", "    - respond: ok\n"))
        .await;
    app.start(&steady).await;
    app.wait_status(&steady, "running").await;
    let (code, done) = app
        .post(
            &format!(
                "/api/triggers/{}/webhook/{}?wait=10s",
                steady.id, steady.token
            ),
            "{}",
        )
        .await;
    assert_eq!(code, 200, "{done}");

    // Stopped: created only.
    let parked = app
        .create_flow(&manifest("parked", "", "    - respond: x\n"))
        .await;

    // In error: the pump refuses its config.
    let broken = app
        .create_flow(&manifest("broken", "", "    - explode: now\n"))
        .await;
    app.start(&broken).await;
    app.wait_status(&broken, "error").await;

    // Running, with a failed execution whose message holds markup.
    let grumpy = app
        .create_flow(&manifest(
            "grumpy",
            "",
            "    - fail: 'nope <b>bold</b> {{payload.x}}'\n",
        ))
        .await;
    app.start(&grumpy).await;
    app.wait_status(&grumpy, "running").await;
    let (code, failed) = app
        .post(
            &format!(
                "/api/triggers/{}/webhook/{}?wait=10s",
                grumpy.id, grumpy.token
            ),
            &json!({"x": "<script>alert(1)</script>"}).to_string(),
        )
        .await;
    assert_eq!(code, 502, "{failed}");
    assert_eq!(
        failed["error"], "nope <b>bold</b> <script>alert(1)</script>",
        "the pump's message keeps the markup as text"
    );
    let failed_id = failed["execution_id"].as_str().expect("an execution id");

    // Heartbeats and memory, as the leader has them after a while.
    let supervisor = app.supervisor.as_ref().expect("an in-process orchestrator");
    let started = Instant::now();
    while supervisor.heartbeat(&steady.id).is_none() {
        assert!(
            started.elapsed() < DEADLINE,
            "the steady pump never sent a heartbeat"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    supervisor.sample_memory().await;

    // The answer itself: HTML, behind the same route as the API.
    let resp = app.http.get(app.url("/status")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(content_type.starts_with("text/html"), "{content_type}");

    let url = app.url("/status");
    assert!(url.starts_with("http://127.0.0.1:"), "loopback only: {url}");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&url))
        .await
        .expect("the browser task");

    assert!(dom.contains("<title>pumphouse status</title>"), "{dom}");
    assert!(
        dom.contains(r#"http-equiv="refresh" content="10""#),
        "{dom}"
    );

    let row = flow_row(&dom, "steady");
    assert!(
        row.contains(r#"<span class="badge ok">running</span>"#),
        "{row}"
    );
    assert!(row.contains(&steady.id), "{row}");
    assert!(
        row.contains(r#"<span class="badge ok">completed</span> webhook"#),
        "the completed execution is listed: {row}"
    );
    assert!(row.contains("pump: <time>"), "the pump's activity: {row}");
    assert!(
        row.contains(" MiB</td>") || row.contains(" KiB</td>"),
        "the pump's memory: {row}"
    );

    let row = flow_row(&dom, "parked");
    assert!(
        row.contains(r#"<span class="badge off">stopped</span>"#),
        "{row}"
    );
    assert!(row.contains("none yet"), "no executions: {row}");
    assert!(row.contains(&parked.id), "{row}");

    let row = flow_row(&dom, "broken");
    assert!(
        row.contains(r#"<span class="badge bad">error</span>"#),
        "{row}"
    );
    assert!(
        row.contains("exited before it was ready"),
        "the reason: {row}"
    );
    assert!(row.contains(&broken.id), "{row}");

    let escaped = "nope &lt;b&gt;bold&lt;/b&gt; &lt;script&gt;alert(1)&lt;/script&gt;";
    let row = flow_row(&dom, "grumpy");
    assert!(
        row.contains(r#"<span class="badge ok">running</span>"#),
        "{row}"
    );
    assert!(
        row.contains(r#"<span class="badge bad">failed</span> webhook"#),
        "{row}"
    );
    assert!(row.contains(escaped), "the failure message, as text: {row}");

    // What users wrote stayed text: the browser built no element from it.
    assert!(!dom.contains("<b>"), "a <b> element in the DOM:\n{dom}");
    assert!(
        !dom.contains("<script"),
        "a <script> element in the DOM:\n{dom}"
    );

    let failures = section(&dom, "recent-failures");
    assert_eq!(
        failures.matches(r#"<tr class="failure">"#).count(),
        1,
        "one failed execution: {failures}"
    );
    assert!(failures.contains(failed_id), "{failures}");
    assert!(failures.contains("grumpy"), "{failures}");
    assert!(failures.contains(escaped), "{failures}");
    assert!(!failures.contains("steady"), "{failures}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_needs_the_admin_token_like_the_management_routes() {
    let app = TestApp::spawn_with(Backend::Process, |c| {
        c.admin_token = Some("operator-secret".into())
    })
    .await;
    let resp = app.http.get(app.url("/status")).send().await.unwrap();
    assert_eq!(resp.status(), 401, "flow names and errors are not public");
    let resp = app
        .http
        .get(app.url("/status"))
        .bearer_auth("operator-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let page = resp.text().await.unwrap();
    assert!(page.contains("No flows yet"), "{page}");
}
