//! The Kubernetes backend against kube's mock service: every request the backend sends is
//! asserted (method, path, query, content type, body) and answered as an API server would,
//! failures included. No cluster runs here; what a real API server would add (admission,
//! defaulting, the controllers) is not exercised.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt as _;
use http::{Request, Response};
use http_body_util::BodyExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::client::Body;
use kube::Client;
use serde_json::{json, Value};
use tower_test::mock::{self, Handle, SendResponse};

use super::*;
use crate::backend::Resources;

/// Long enough for a loaded 2-core machine; a request that does not come by then never will.
const DEADLINE: Duration = Duration::from_secs(10);
const OWNER: &str = "app.kubernetes.io/managed-by=pumphouse,pumphouse.dev/cluster=dev";
const FLOW: &str = "6f1c2d3e-0000-4000-8000-000000000001";
const NAME: &str = "pumphouse-dev-6f1c2d3e-0000-4000-8000-000000000001";
const DEPLOYMENTS: &str = "/apis/apps/v1/namespaces/pumps/deployments";
const SECRETS: &str = "/api/v1/namespaces/pumps/secrets";
const PODS: &str = "/api/v1/namespaces/pumps/pods";
const SECRET_VALUE: &str = "sk_live_do_not_show";

fn spec() -> PumpSpec {
    PumpSpec {
        flow_id: FLOW.into(),
        tenant_id: "acme".into(),
        instance_id: "i-1".into(),
        flow_name: "orders".into(),
        image: Some("registry.example/pump:1.2".into()),
        env: BTreeMap::from([
            ("FLOW_ID".to_owned(), FLOW.to_owned()),
            ("GREETING".to_owned(), "hi".to_owned()),
        ]),
        secret_env: BTreeMap::from([
            ("ORGANISM_YAML".to_owned(), "c3RlcHM6Cg==".to_owned()),
            (
                "REDIS_URL".to_owned(),
                "redis://pump:pw@redis:6379".to_owned(),
            ),
            ("STRIPE_KEY".to_owned(), SECRET_VALUE.to_owned()),
        ]),
        // The pump's Redis password is issued for each launch; on Kubernetes it simply goes
        // into the Secret like every other secret value.
        per_launch_env: BTreeSet::from(["REDIS_URL".to_owned()]),
        resources: Resources {
            memory_bytes: Some(64 << 20),
            cpu_millis: Some(500),
        },
        stop_grace: Duration::from_millis(2500),
    }
}

fn config() -> KubernetesConfig {
    KubernetesConfig {
        namespace: Some("pumps".into()),
        cluster: "dev".into(),
        image_pull_secret: None,
    }
}

fn backend_with(config: KubernetesConfig) -> (KubernetesBackend, ApiServer) {
    let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let backend = KubernetesBackend::with_client(client, config).expect("valid config");
    (backend, ApiServer(handle))
}

fn backend() -> (KubernetesBackend, ApiServer) {
    backend_with(config())
}

/// The API server's side of the mock.
struct ApiServer(Handle<Request<Body>, Response<Body>>);

/// One request the backend sent, decoded, with the means to answer it.
struct Call {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    content_type: Option<String>,
    text: String,
    reply: SendResponse<Response<Body>>,
}

impl ApiServer {
    async fn next(&mut self) -> Call {
        let (request, reply) = tokio::time::timeout(DEADLINE, self.0.next_request())
            .await
            .expect("the backend sent no request within the deadline")
            .expect("the backend dropped its client");
        let (parts, body) = request.into_parts();
        let bytes = body.collect().await.expect("request body").to_bytes();
        Call {
            method: parts.method.to_string(),
            path: parts.uri.path().to_owned(),
            query: parts.uri.query().map(decode_query).unwrap_or_default(),
            content_type: parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| v.to_str().expect("ascii header").to_owned()),
            text: String::from_utf8(bytes.to_vec()).expect("utf-8 body"),
            reply,
        }
    }

    /// The next request, which must be `method path` with exactly `query`.
    async fn expect(&mut self, method: &str, path: &str, query: &[(&str, &str)]) -> Call {
        let call = self.next().await;
        assert_eq!(
            (call.method.as_str(), call.path.as_str()),
            (method, path),
            "unexpected request"
        );
        let want: Vec<(String, String)> = query
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        assert_eq!(call.query, want, "query of {method} {path}");
        call
    }
}

impl Call {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).expect("JSON body")
    }

    fn answer(self, status: u16, body: &Value) {
        self.reply.send_response(
            Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(body).expect("json")))
                .expect("response"),
        );
    }

    fn answer_text(self, text: &str) {
        self.reply.send_response(
            Response::builder()
                .status(200)
                .header("content-type", "text/plain")
                .body(Body::from(text.as_bytes().to_vec()))
                .expect("response"),
        );
    }

    /// Answers with the body the backend sent, as an apply does (with a resourceVersion).
    fn echo(self, resource_version: &str) {
        let mut obj = self.json();
        obj["metadata"]["resourceVersion"] = json!(resource_version);
        self.answer(200, &obj);
    }

    fn fail(self, code: u16, reason: &str, message: &str) {
        self.answer(code, &status(code, reason, message));
    }
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn decode_query(q: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        let bytes = s.replace('+', " ").into_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] == b'%' && i + 2 < bytes.len() {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("hex");
                out.push(u8::from_str_radix(hex, 16).expect("hex"));
                i += 3;
            } else {
                out.push(bytes[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("utf-8 query")
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Runs `op` while `serve` plays the API server, and returns what `op` returned. An extra
/// request `serve` does not expect leaves `op` waiting: the deadline turns that into a failure.
async fn run<T: Send + 'static>(
    op: impl Future<Output = T> + Send + 'static,
    serve: impl Future<Output = ()>,
) -> T {
    let op = tokio::spawn(op);
    serve.await;
    tokio::time::timeout(DEADLINE, op)
        .await
        .expect("the operation did not finish: it sent a request nobody expected")
        .expect("the operation panicked")
}

const APPLY: &[(&str, &str)] = &[("force", "true"), ("fieldManager", "pumphouse")];

fn pod(name: &str, uid: &str, instance: &str, container: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": "pumps", "uid": uid, "resourceVersion": "7",
            "creationTimestamp": "2026-11-26T20:00:00Z",
            "labels": {
                "app.kubernetes.io/managed-by": "pumphouse", "pumphouse.dev/cluster": "dev",
                "pumphouse.dev/flow": FLOW, "pumphouse.dev/instance": instance,
            },
        },
        "spec": {"containers": [{"name": "pump", "image": "registry.example/pump:1.2"}]},
        "status": {"phase": "Running", "containerStatuses": [container]},
    })
}

fn container(state: Value, last_state: Value, restarts: i32) -> Value {
    json!({"name": "pump", "image": "registry.example/pump:1.2", "imageID": "", "ready": false,
           "restartCount": restarts, "state": state, "lastState": last_state})
}

fn running() -> Value {
    container(
        json!({"running": {"startedAt": "2026-11-26T20:00:01Z"}}),
        json!({}),
        0,
    )
}

fn crashed(code: i32, reason: &str, id: &str) -> Value {
    container(
        json!({"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container"}}),
        json!({"terminated": {"exitCode": code, "reason": reason, "containerID": id,
                              "finishedAt": "2026-11-26T20:00:05Z"}}),
        1,
    )
}

fn pull_failure() -> Value {
    container(
        json!({"waiting": {"reason": "ImagePullBackOff",
                           "message": "Back-off pulling image \"registry.example/pump:1.2\""}}),
        json!({}),
        0,
    )
}

fn list(kind: &str, items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": "100"}, "items": items})
}

fn deployment(replicas: i32, instance: &str) -> Value {
    let b = backend().0;
    let mut s = spec();
    s.instance_id = instance.into();
    let mut d = serde_json::to_value(b.deployment(&s, Some("41")).expect("deployment")).unwrap();
    d["spec"]["replicas"] = json!(replicas);
    d
}

// ---------------------------------------------------------------------------------------
// start

#[tokio::test]
async fn start_applies_the_secret_then_the_deployment_referring_to_it() {
    let (b, mut api) = backend();
    let status = run(async move { b.start(&spec()).await }, async {
        let secret = api.expect("PATCH", &format!("{SECRETS}/{NAME}"), APPLY).await;
        assert_eq!(
            secret.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        let s = secret.json();
        assert_eq!(s["apiVersion"], "v1");
        assert_eq!(s["kind"], "Secret");
        assert_eq!(s["type"], "Opaque");
        assert_eq!(s["metadata"]["name"], NAME);
        assert_eq!(s["metadata"]["namespace"], "pumps");
        assert_eq!(
            s["metadata"]["labels"],
            json!({"app.kubernetes.io/managed-by": "pumphouse", "pumphouse.dev/cluster": "dev",
                   "pumphouse.dev/flow": FLOW, "pumphouse.dev/flow-name": "orders",
                   "pumphouse.dev/tenant": "acme", "pumphouse.dev/instance": "i-1"})
        );
        // Exactly the secret env, base64 as Kubernetes stores it; the plain env is not in it.
        assert_eq!(
            s["data"],
            json!({"ORGANISM_YAML": "YzNSbGNITTZDZz09",
                   "REDIS_URL": "cmVkaXM6Ly9wdW1wOnB3QHJlZGlzOjYzNzk=",
                   "STRIPE_KEY": "c2tfbGl2ZV9kb19ub3Rfc2hvdw=="})
        );
        secret.echo("41");

        let dep = api.expect("PATCH", &format!("{DEPLOYMENTS}/{NAME}"), APPLY).await;
        assert_eq!(
            dep.content_type.as_deref(),
            Some("application/apply-patch+yaml")
        );
        for value in [SECRET_VALUE, "redis://pump:pw@redis", "c3RlcHM6Cg=="] {
            assert!(
                !dep.text.contains(value),
                "the Deployment must not carry a secret value"
            );
        }
        let d = dep.json();
        assert_eq!(d["apiVersion"], "apps/v1");
        assert_eq!(d["kind"], "Deployment");
        assert_eq!(d["metadata"]["labels"]["pumphouse.dev/instance"], "i-1");
        assert_eq!(d["metadata"]["labels"]["pumphouse.dev/tenant"], "acme");
        let spec = &d["spec"];
        assert_eq!(spec["replicas"], 1);
        assert_eq!(spec["strategy"], json!({"type": "Recreate"}));
        assert_eq!(
            spec["selector"],
            json!({"matchLabels": {"app.kubernetes.io/managed-by": "pumphouse",
                                   "pumphouse.dev/cluster": "dev", "pumphouse.dev/flow": FLOW}})
        );
        let template = &spec["template"];
        assert_eq!(
            template["metadata"]["labels"],
            d["metadata"]["labels"],
            "pods carry every label"
        );
        assert_eq!(
            template["metadata"]["annotations"],
            json!({"pumphouse.dev/secret-version": "41"})
        );
        let pod = &template["spec"];
        assert_eq!(pod["automountServiceAccountToken"], false);
        assert_eq!(pod["enableServiceLinks"], false);
        assert_eq!(pod["terminationGracePeriodSeconds"], 3);
        assert_eq!(
            pod["securityContext"],
            json!({"runAsNonRoot": true, "runAsUser": 65534, "runAsGroup": 65534,
                   "seccompProfile": {"type": "RuntimeDefault"}})
        );
        assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
        let c = &pod["containers"][0];
        assert_eq!(c["name"], "pump");
        assert_eq!(c["image"], "registry.example/pump:1.2");
        assert_eq!(
            c["env"],
            json!([
                {"name": "FLOW_ID", "value": FLOW},
                {"name": "GREETING", "value": "hi"},
                {"name": "ORGANISM_YAML", "valueFrom": {"secretKeyRef": {"name": NAME, "key": "ORGANISM_YAML", "optional": false}}},
                {"name": "REDIS_URL", "valueFrom": {"secretKeyRef": {"name": NAME, "key": "REDIS_URL", "optional": false}}},
                {"name": "STRIPE_KEY", "valueFrom": {"secretKeyRef": {"name": NAME, "key": "STRIPE_KEY", "optional": false}}},
            ])
        );
        assert_eq!(
            c["resources"],
            json!({"limits": {"cpu": "500m", "memory": "67108864"},
                   "requests": {"cpu": "500m", "memory": "67108864"}})
        );
        assert_eq!(
            c["securityContext"],
            json!({"runAsNonRoot": true, "runAsUser": 65534, "runAsGroup": 65534,
                   "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                   "privileged": false, "capabilities": {"drop": ["ALL"]},
                   "seccompProfile": {"type": "RuntimeDefault"}})
        );
        assert!(pod.get("imagePullSecrets").is_none());
        dep.echo("42");
    })
    .await
    .expect("start");
    assert_eq!(
        status,
        PumpStatus {
            drifted: false,
            flow_id: FLOW.into(),
            instance_id: Some("i-1".into()),
            state: PumpState::Starting,
            pump_ref: NAME.into(),
        }
    );
}

#[tokio::test]
async fn start_without_limits_or_with_a_pull_secret() {
    let (b, _api) = backend_with(KubernetesConfig {
        image_pull_secret: Some("registry-creds".into()),
        ..config()
    });
    let mut s = spec();
    s.resources = Resources::default();
    let d = serde_json::to_value(b.deployment(&s, None).unwrap()).unwrap();
    let pod = &d["spec"]["template"]["spec"];
    assert!(pod["containers"][0].get("resources").is_none());
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "registry-creds"}]));
    assert!(d["spec"]["template"]["metadata"]
        .get("annotations")
        .is_none());
}

#[tokio::test]
async fn start_without_an_image_writes_nothing() {
    let (b, _api) = backend();
    let mut s = spec();
    s.image = None;
    // The mock answers nothing: a request would hang the call past the deadline.
    let err = tokio::time::timeout(DEADLINE, b.start(&s))
        .await
        .expect("no request is sent")
        .unwrap_err();
    assert!(err.to_string().contains("has no pump image"), "{err}");
}

#[tokio::test]
async fn a_refused_secret_stops_the_start_and_its_error_quotes_no_secret() {
    let (b, mut api) = backend();
    let err = run(async move { b.start(&spec()).await }, async {
        let call = api
            .expect("PATCH", &format!("{SECRETS}/{NAME}"), APPLY)
            .await;
        call.fail(
            422,
            "Invalid",
            &format!(
                "Secret \"{NAME}\" is invalid: data[STRIPE_KEY]: Invalid value: \"{SECRET_VALUE}\""
            ),
        );
    })
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(!text.contains(SECRET_VALUE), "{text}");
    assert!(
        text.contains("refused to apply the Secret of flow") && text.contains("422 Invalid"),
        "{text}"
    );
    assert!(
        text.contains("image name, resources and env names"),
        "{text}"
    );
}

#[tokio::test]
async fn a_refused_deployment_says_why_in_the_servers_words() {
    let (b, mut api) = backend();
    let err = run(async move { b.start(&spec()).await }, async {
        api.expect("PATCH", &format!("{SECRETS}/{NAME}"), APPLY)
            .await
            .echo("41");
        let call = api
            .expect("PATCH", &format!("{DEPLOYMENTS}/{NAME}"), APPLY)
            .await;
        call.fail(
            422,
            "Invalid",
            "spec.template.spec.containers[0].image: Required value",
        );
        // A start that failed leaves no Secret behind.
        api.expect("DELETE", &format!("{SECRETS}/{NAME}"), &[])
            .await
            .answer(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
    })
    .await
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("containers[0].image: Required value"),
        "{text}"
    );
}

#[tokio::test]
async fn a_conflicting_apply_is_tried_once_more() {
    let (b, mut api) = backend();
    let status = run(async move { b.start(&spec()).await }, async {
        let s = api
            .expect("PATCH", &format!("{SECRETS}/{NAME}"), APPLY)
            .await;
        s.fail(409, "Conflict", "the object has been modified");
        api.expect("PATCH", &format!("{SECRETS}/{NAME}"), APPLY)
            .await
            .echo("41");
        let d = api
            .expect("PATCH", &format!("{DEPLOYMENTS}/{NAME}"), APPLY)
            .await;
        d.fail(409, "Conflict", "the object has been modified");
        let d = api
            .expect("PATCH", &format!("{DEPLOYMENTS}/{NAME}"), APPLY)
            .await;
        d.fail(409, "Conflict", "the object has been modified");
        api.expect("DELETE", &format!("{SECRETS}/{NAME}"), &[])
            .await
            .fail(404, "NotFound", "gone already");
    })
    .await;
    let text = status.unwrap_err().to_string();
    assert!(
        text.contains("409 Conflict") && text.contains("the next reconcile retries"),
        "{text}"
    );
}

#[tokio::test]
async fn a_missing_namespace_and_a_server_error_say_what_to_do() {
    let (b, mut api) = backend();
    let err = run(async move { b.start(&spec()).await }, async {
        let call = api
            .expect("PATCH", &format!("{SECRETS}/{NAME}"), APPLY)
            .await;
        call.fail(404, "NotFound", "namespaces \"pumps\" not found");
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("does namespace `pumps` exist? create it or set --kube-namespace"),
        "{err}"
    );

    let (b, mut api) = backend();
    let err = run(async move { b.start(&spec()).await }, async {
        let call = api
            .expect("PATCH", &format!("{SECRETS}/{NAME}"), APPLY)
            .await;
        call.fail(500, "InternalError", "etcdserver: request timed out");
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("500 InternalError")
            && err.to_string().contains("the next reconcile retries"),
        "{err}"
    );

    let (b, mut api) = backend();
    let err = run(async move { b.start(&spec()).await }, async {
        let call = api
            .expect("PATCH", &format!("{SECRETS}/{NAME}"), APPLY)
            .await;
        call.fail(403, "Forbidden", "secrets is forbidden");
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("the chart's Role"), "{err}");
}

// ---------------------------------------------------------------------------------------
// stop and park

const DELETE_BODY: &str = r#"{"propagationPolicy":"Background"}"#;

#[tokio::test]
async fn stop_deletes_the_deployment_and_the_secret() {
    let (b, mut api) = backend();
    run(
        async move { b.stop(FLOW, Duration::from_secs(10)).await },
        async {
            let d = api
                .expect("DELETE", &format!("{DEPLOYMENTS}/{NAME}"), &[])
                .await;
            assert_eq!(
                serde_json::from_str::<Value>(&d.text).unwrap(),
                serde_json::from_str::<Value>(DELETE_BODY).unwrap()
            );
            d.answer(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
            let s = api
                .expect("DELETE", &format!("{SECRETS}/{NAME}"), &[])
                .await;
            assert_eq!(
                serde_json::from_str::<Value>(&s.text).unwrap(),
                serde_json::from_str::<Value>(DELETE_BODY).unwrap()
            );
            s.answer(
                200,
                &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            );
            // The pod drains: stop returns only once it is gone.
            let mut draining = pod("p", "u1", "i-1", running());
            draining["metadata"]["deletionTimestamp"] = json!("2026-11-26T20:00:09Z");
            expect_flow_pods(&mut api, vec![draining]).await;
            expect_flow_pods(&mut api, vec![]).await;
        },
    )
    .await
    .expect("stop");
}

/// The backend lists the flow's pods; the mock answers with `pods`.
async fn expect_flow_pods(api: &mut ApiServer, pods: Vec<Value>) {
    let q = flow_pods_query();
    let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
    api.expect("GET", PODS, &q)
        .await
        .answer(200, &list("PodList", pods));
}

#[tokio::test]
async fn stop_tolerates_objects_that_are_gone_already() {
    let (b, mut api) = backend();
    run(
        async move { b.stop(FLOW, Duration::from_secs(10)).await },
        async {
            api.expect("DELETE", &format!("{DEPLOYMENTS}/{NAME}"), &[])
                .await
                .fail(404, "NotFound", "not found");
            api.expect("DELETE", &format!("{SECRETS}/{NAME}"), &[])
                .await
                .fail(404, "NotFound", "not found");
            expect_flow_pods(&mut api, vec![]).await;
        },
    )
    .await
    .expect("a second stop succeeds");
}

#[tokio::test]
async fn a_failed_delete_is_an_error_and_keeps_the_secret() {
    let (b, mut api) = backend();
    let err = run(
        async move { b.stop(FLOW, Duration::from_secs(10)).await },
        async {
            api.expect("DELETE", &format!("{DEPLOYMENTS}/{NAME}"), &[])
                .await
                .fail(500, "InternalError", "boom");
        },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("refused to delete the Deployment of flow"),
        "{err}"
    );
}

#[tokio::test]
async fn park_scales_to_zero_and_keeps_the_secret() {
    let (b, mut api) = backend();
    run(
        async move { b.park(FLOW, Duration::from_secs(10)).await },
        async {
            let call = api
                .expect(
                    "PATCH",
                    &format!("{DEPLOYMENTS}/{NAME}"),
                    &[("fieldManager", "pumphouse")],
                )
                .await;
            assert_eq!(
                call.content_type.as_deref(),
                Some("application/merge-patch+json")
            );
            assert_eq!(call.json(), json!({"spec": {"replicas": 0}}));
            call.answer(200, &deployment(0, "i-1"));
            // Only pods are waited for: the Secret is neither read nor deleted.
            expect_flow_pods(&mut api, vec![pod("p", "u1", "i-1", running())]).await;
            expect_flow_pods(&mut api, vec![]).await;
        },
    )
    .await
    .expect("park");

    // Parking a flow whose Deployment is gone is done already.
    let (b, mut api) = backend();
    run(
        async move { b.park(FLOW, Duration::from_secs(10)).await },
        async {
            api.expect(
                "PATCH",
                &format!("{DEPLOYMENTS}/{NAME}"),
                &[("fieldManager", "pumphouse")],
            )
            .await
            .fail(404, "NotFound", "not found");
        },
    )
    .await
    .expect("park of nothing");
}

// ---------------------------------------------------------------------------------------
// inspect, list and logs

fn flow_pods_query() -> Vec<(&'static str, String)> {
    vec![(
        "labelSelector",
        format!("{OWNER},pumphouse.dev/flow={FLOW}"),
    )]
}

async fn inspect_with(pods: Vec<Value>) -> Option<PumpStatus> {
    let (b, mut api) = backend();
    run(
        async move { b.inspect(FLOW).await.expect("inspect") },
        async {
            api.expect("GET", &format!("{DEPLOYMENTS}/{NAME}"), &[])
                .await
                .answer(200, &deployment(1, "i-2"));
            let q = flow_pods_query();
            let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
            api.expect("GET", PODS, &q)
                .await
                .answer(200, &list("PodList", pods));
        },
    )
    .await
}

#[tokio::test]
async fn inspect_reads_the_state_from_the_current_pod() {
    let status = inspect_with(vec![pod("p-run", "u1", "i-2", running())]).await;
    assert_eq!(
        status,
        Some(PumpStatus {
            drifted: false,
            flow_id: FLOW.into(),
            instance_id: Some("i-2".into()),
            state: PumpState::Running,
            pump_ref: "p-run".into(),
        })
    );

    // The old instance's pod, still draining, is not the pump.
    let mut old = pod("p-old", "u0", "i-1", running());
    old["metadata"]["deletionTimestamp"] = json!("2026-11-26T20:00:02Z");
    let status = inspect_with(vec![old]).await.unwrap();
    assert_eq!(
        (status.state, status.pump_ref),
        (PumpState::Starting, NAME.to_owned())
    );

    let status = inspect_with(vec![pod(
        "p",
        "u1",
        "i-2",
        crashed(137, "OOMKilled", "containerd://a"),
    )])
    .await
    .unwrap();
    assert_eq!(
        status.state,
        PumpState::Exited {
            code: Some(137),
            oom: true
        }
    );

    let status = inspect_with(vec![pod(
        "p",
        "u1",
        "i-2",
        crashed(2, "Error", "containerd://b"),
    )])
    .await
    .unwrap();
    assert_eq!(
        status.state,
        PumpState::Exited {
            code: Some(2),
            oom: false
        }
    );

    let status = inspect_with(vec![pod("p", "u1", "i-2", pull_failure())])
        .await
        .unwrap();
    assert_eq!(
        status.state,
        PumpState::Exited {
            code: None,
            oom: false
        }
    );

    let creating = container(
        json!({"waiting": {"reason": "ContainerCreating"}}),
        json!({}),
        0,
    );
    let status = inspect_with(vec![pod("p", "u1", "i-2", creating)])
        .await
        .unwrap();
    assert_eq!(status.state, PumpState::Starting);
}

#[tokio::test]
async fn inspect_of_a_parked_or_missing_flow() {
    let (b, mut api) = backend();
    let status = run(
        async move { b.inspect(FLOW).await.expect("inspect") },
        async {
            api.expect("GET", &format!("{DEPLOYMENTS}/{NAME}"), &[])
                .await
                .answer(200, &deployment(0, "i-1"));
        },
    )
    .await
    .unwrap();
    assert_eq!(
        status.state,
        PumpState::Exited {
            code: None,
            oom: false
        }
    );
    assert_eq!(status.instance_id.as_deref(), Some("i-1"));

    let (b, mut api) = backend();
    let status = run(
        async move { b.inspect(FLOW).await.expect("inspect") },
        async {
            api.expect("GET", &format!("{DEPLOYMENTS}/{NAME}"), &[])
                .await
                .fail(404, "NotFound", "not found");
        },
    )
    .await;
    assert_eq!(status, None);

    let (b, mut api) = backend();
    let err = run(async move { b.inspect(FLOW).await }, async {
        api.expect("GET", &format!("{DEPLOYMENTS}/{NAME}"), &[])
            .await
            .fail(500, "InternalError", "boom");
    })
    .await
    .unwrap_err();
    assert!(err.to_string().contains("read the Deployment"), "{err}");
}

/// `inspect` of a flow whose Deployment is `deployment`, with no pods.
async fn inspect_deployment(deployment: Value) -> PumpStatus {
    let (b, mut api) = backend();
    run(
        async move { b.inspect(FLOW).await.expect("inspect").expect("a pump") },
        async {
            api.expect("GET", &format!("{DEPLOYMENTS}/{NAME}"), &[])
                .await
                .answer(200, &deployment);
            let q = flow_pods_query();
            let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
            api.expect("GET", PODS, &q)
                .await
                .answer(200, &list("PodList", vec![]));
        },
    )
    .await
}

#[tokio::test]
async fn a_deployment_changed_since_pumphouse_wrote_it_has_drifted() {
    let mut d = deployment(1, "i-2");
    d["metadata"]["generation"] = json!(4);
    d["metadata"]["annotations"] = json!({APPLIED_GENERATION: "4"});
    assert!(!inspect_deployment(d.clone()).await.drifted);
    // `kubectl edit` of the spec bumps the generation; the annotation stays.
    d["metadata"]["generation"] = json!(5);
    assert!(inspect_deployment(d.clone()).await.drifted);
    // Made before the annotation existed: applied once more, then known.
    d["metadata"]["annotations"] = json!({});
    assert!(inspect_deployment(d).await.drifted);
}

#[tokio::test]
async fn a_deployment_refused_its_pod_by_admission_counts_as_exited() {
    let mut d = deployment(1, "i-2");
    let status = inspect_deployment(d.clone()).await;
    assert_eq!(status.state, PumpState::Starting);
    d["status"] = json!({"conditions": [{"type": "ReplicaFailure", "status": "True",
        "reason": "FailedCreate", "message": "pods \"p\" is forbidden: exceeded quota: q"}]});
    let status = inspect_deployment(d).await;
    assert_eq!(
        status.state,
        PumpState::Exited {
            code: None,
            oom: false
        }
    );
}

#[tokio::test]
async fn list_reports_every_pump_this_cluster_owns() {
    let (b, mut api) = backend();
    let pumps = run(async move { b.list().await.expect("list") }, async {
        api.expect("GET", DEPLOYMENTS, &[("labelSelector", OWNER)])
            .await
            .answer(
                200,
                &list(
                    "DeploymentList",
                    vec![deployment(1, "i-2"), {
                        let mut parked = deployment(0, "i-9");
                        parked["metadata"]["name"] = json!("pumphouse-dev-other");
                        parked["metadata"]["labels"]["pumphouse.dev/flow"] = json!("other");
                        parked
                    }],
                ),
            );
        api.expect("GET", PODS, &[("labelSelector", OWNER)])
            .await
            .answer(
                200,
                &list("PodList", vec![pod("p-run", "u1", "i-2", running())]),
            );
    })
    .await;
    assert_eq!(
        pumps,
        vec![
            PumpStatus {
                drifted: false,
                flow_id: FLOW.into(),
                instance_id: Some("i-2".into()),
                state: PumpState::Running,
                pump_ref: "p-run".into(),
            },
            PumpStatus {
                drifted: false,
                flow_id: "other".into(),
                instance_id: Some("i-9".into()),
                state: PumpState::Exited {
                    code: None,
                    oom: false
                },
                pump_ref: "pumphouse-dev-other".into(),
            },
        ]
    );

    let (b, mut api) = backend();
    let err = run(async move { b.list().await }, async {
        api.expect("GET", DEPLOYMENTS, &[("labelSelector", OWNER)])
            .await
            .fail(403, "Forbidden", "deployments.apps is forbidden");
    })
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains(
            "Kubernetes refused to list the Deployments in namespace `pumps` (403 Forbidden)"
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("lacks this permission in namespace `pumps`"),
        "{err}"
    );
}

#[tokio::test]
async fn logs_read_the_pod_or_say_why_it_has_none() {
    let q = flow_pods_query();
    let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let (b, mut api) = backend();
    let lines = run(
        async move { b.logs(FLOW, 50).await.expect("logs") },
        async {
            api.expect("GET", PODS, &q).await.answer(
                200,
                &list("PodList", vec![pod("p-run", "u1", "i-2", running())]),
            );
            api.expect(
                "GET",
                &format!("{PODS}/p-run/log"),
                &[("container", "pump"), ("tailLines", "50")],
            )
            .await
            .answer_text("pump: subscribed\nhello, ada\n");
        },
    )
    .await;
    assert_eq!(lines, vec!["pump: subscribed", "hello, ada"]);

    // A crashed container waiting to restart: the crash's output is in the previous one.
    let (b, mut api) = backend();
    let lines = run(async move { b.logs(FLOW, 5).await.expect("logs") }, async {
        api.expect("GET", PODS, &q).await.answer(
            200,
            &list(
                "PodList",
                vec![pod("p", "u1", "i-2", crashed(2, "Error", "c://x"))],
            ),
        );
        api.expect(
            "GET",
            &format!("{PODS}/p/log"),
            &[
                ("container", "pump"),
                ("previous", "true"),
                ("tailLines", "5"),
            ],
        )
        .await
        .answer_text("pump: cannot start: config: steps is empty\n");
    })
    .await;
    assert_eq!(lines, vec!["pump: cannot start: config: steps is empty"]);

    // An image that cannot be pulled: its message stands in for the log.
    let (b, mut api) = backend();
    let lines = run(async move { b.logs(FLOW, 5).await.expect("logs") }, async {
        api.expect("GET", PODS, &q).await.answer(
            200,
            &list("PodList", vec![pod("p", "u1", "i-2", pull_failure())]),
        );
    })
    .await;
    assert_eq!(
        lines,
        vec!["ImagePullBackOff: Back-off pulling image \"registry.example/pump:1.2\""]
    );

    // No pod, and none refused: no lines. A pod gone between the list and the read: none.
    let (b, mut api) = backend();
    let lines = run(async move { b.logs(FLOW, 5).await.expect("logs") }, async {
        api.expect("GET", PODS, &q)
            .await
            .answer(200, &list("PodList", vec![]));
        api.expect("GET", &format!("{DEPLOYMENTS}/{NAME}"), &[])
            .await
            .answer(200, &deployment(1, "i-2"));
    })
    .await;
    assert!(lines.is_empty());
    // No pod because admission refused it: the server's words stand in for the log.
    let (b, mut api) = backend();
    let lines = run(async move { b.logs(FLOW, 5).await.expect("logs") }, async {
        api.expect("GET", PODS, &q)
            .await
            .answer(200, &list("PodList", vec![]));
        let mut refused = deployment(1, "i-2");
        refused["status"] = json!({"conditions": [{"type": "ReplicaFailure", "status": "True",
            "reason": "FailedCreate", "message": "pods \"p\" is forbidden: exceeded quota: q"}]});
        api.expect("GET", &format!("{DEPLOYMENTS}/{NAME}"), &[])
            .await
            .answer(200, &refused);
    })
    .await;
    assert_eq!(
        lines,
        vec!["FailedCreate: pods \"p\" is forbidden: exceeded quota: q"]
    );
    let (b, mut api) = backend();
    let lines = run(async move { b.logs(FLOW, 5).await.expect("logs") }, async {
        api.expect("GET", PODS, &q).await.answer(
            200,
            &list("PodList", vec![pod("p", "u1", "i-2", running())]),
        );
        api.expect(
            "GET",
            &format!("{PODS}/p/log"),
            &[("container", "pump"), ("tailLines", "5")],
        )
        .await
        .fail(404, "NotFound", "pods \"p\" not found");
    })
    .await;
    assert!(lines.is_empty());
}

#[tokio::test]
async fn follow_logs_streams_lines_until_the_pod_ends() {
    let q = flow_pods_query();
    let q: Vec<(&str, &str)> = q.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (b, mut api) = backend();
    let lines = run(
        async move { b.follow_logs(FLOW, 2).collect::<Vec<_>>().await },
        async {
            api.expect("GET", PODS, &q).await.answer(
                200,
                &list("PodList", vec![pod("p-run", "u1", "i-2", running())]),
            );
            let call = api
                .expect(
                    "GET",
                    &format!("{PODS}/p-run/log"),
                    &[
                        ("container", "pump"),
                        ("follow", "true"),
                        ("tailLines", "2"),
                    ],
                )
                .await;
            // The stream ends when the pod's log does (kube's Body cannot be fed piece by
            // piece from outside, so the body comes whole; the last line has no newline).
            call.answer_text("one\ntwo\nthree");
        },
    )
    .await;
    assert_eq!(lines, vec!["one", "two", "three"]);
}

// ---------------------------------------------------------------------------------------
// events

/// kube's watcher lists in pages of 500, then watches from the list's resourceVersion.
const LIST_PODS: &[(&str, &str)] = &[("labelSelector", OWNER), ("limit", "500")];

fn watch_pods(version: &str) -> [(&str, &str); 5] {
    [
        ("watch", "true"),
        ("timeoutSeconds", "290"),
        ("labelSelector", OWNER),
        ("allowWatchBookmarks", "true"),
        ("resourceVersion", version),
    ]
}

#[tokio::test]
async fn events_report_crashes_once_and_not_pods_being_deleted_and_survive_a_watch_ending() {
    let (b, mut api) = backend();
    let mut events = b.events();
    let first = tokio::spawn(async move {
        let e = events.next().await;
        (e, events)
    });

    // The first list: a crash that happened before the watch is history, not news.
    let call = api.expect("GET", PODS, LIST_PODS).await;
    call.answer(
        200,
        &list(
            "PodList",
            vec![pod(
                "p-old",
                "u0",
                "i-1",
                crashed(1, "Error", "containerd://old"),
            )],
        ),
    );

    // The watch from the list's version: the old crash again (not news), a pod being deleted
    // by a scale-down whose container ended (asked for), then a real OOM kill.
    let call = api.expect("GET", PODS, &watch_pods("100")).await;
    let mut deleting = pod(
        "p-park",
        "u1",
        "i-2",
        container(
            json!({"terminated": {"exitCode": 0, "reason": "Completed", "containerID": "containerd://park"}}),
            json!({}),
            0,
        ),
    );
    deleting["metadata"]["deletionTimestamp"] = json!("2026-11-26T20:00:09Z");
    let mut oom = pod(
        "p-new",
        "u2",
        "i-3",
        crashed(137, "OOMKilled", "containerd://oom"),
    );
    oom["metadata"]["resourceVersion"] = json!("103");
    let lines = [
        json!({"type": "MODIFIED", "object": pod("p-old", "u0", "i-1", crashed(1, "Error", "containerd://old"))}),
        json!({"type": "MODIFIED", "object": deleting}),
        json!({"type": "MODIFIED", "object": oom.clone()}),
        // The same crash seen again (another status update of that pod): reported once.
        json!({"type": "MODIFIED", "object": oom}),
    ];
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    call.answer_text(&body);

    let (event, mut events) = tokio::time::timeout(DEADLINE, first)
        .await
        .expect("an exit is reported")
        .unwrap();
    assert_eq!(
        event,
        Some(BackendEvent::Exited {
            flow_id: FLOW.into(),
            instance_id: Some("i-3".into()),
            code: Some(137),
            oom: true,
        })
    );

    // The watch ended (its body is done): the watcher watches again from where it was, and a
    // start failure there is reported.
    let next = tokio::spawn(async move { events.next().await });
    // It resumes after the last event seen.
    let call = api.expect("GET", PODS, &watch_pods("103")).await;
    let body = format!(
        "{}\n",
        json!({"type": "ADDED", "object": pod("p-pull", "u3", "i-4", pull_failure())})
    );
    call.answer_text(&body);
    let event = tokio::time::timeout(DEADLINE, next)
        .await
        .expect("a start failure is reported")
        .unwrap();
    assert_eq!(
        event,
        Some(BackendEvent::Exited {
            flow_id: FLOW.into(),
            instance_id: Some("i-4".into()),
            code: None,
            oom: false,
        })
    );
}

#[tokio::test]
async fn events_retry_a_failed_list() {
    let (b, mut api) = backend();
    let mut events = b.events();
    let first = tokio::spawn(async move { events.next().await });
    api.expect("GET", PODS, LIST_PODS)
        .await
        .fail(500, "InternalError", "etcd down");
    // After the back-off the list is made again, and the watch follows.
    api.expect("GET", PODS, LIST_PODS)
        .await
        .answer(200, &list("PodList", vec![]));
    let call = api.expect("GET", PODS, &watch_pods("100")).await;
    let body = format!(
        "{}\n",
        json!({"type": "ADDED", "object": pod("p", "u9", "i-9", crashed(3, "Error", "c://9"))})
    );
    call.answer_text(&body);
    let event = tokio::time::timeout(DEADLINE, first)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        event,
        Some(BackendEvent::Exited {
            flow_id: FLOW.into(),
            instance_id: Some("i-9".into()),
            code: Some(3),
            oom: false,
        })
    );
}

// ---------------------------------------------------------------------------------------
// configuration and schemas

#[tokio::test]
async fn names_must_be_dns_labels() {
    let (service, _handle) = mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let bad = |cfg| {
        KubernetesBackend::with_client(client.clone(), cfg)
            .unwrap_err()
            .to_string()
    };
    let err = bad(KubernetesConfig {
        cluster: "Prod".into(),
        ..config()
    });
    assert!(
        err.contains("`Prod` cannot be used as the cluster name") && err.contains("--cluster"),
        "{err}"
    );
    let err = bad(KubernetesConfig {
        namespace: Some("pumps_".into()),
        ..config()
    });
    assert!(err.contains("--kube-namespace"), "{err}");
    let ok = KubernetesBackend::with_client(
        client,
        KubernetesConfig {
            namespace: None,
            ..config()
        },
    )
    .unwrap();
    assert_eq!(
        ok.namespace(),
        "default",
        "the client's namespace by default"
    );
}

#[test]
fn backend_kind_parses_kubernetes() {
    assert_eq!(
        "kubernetes".parse::<crate::backend::BackendKind>(),
        Ok(crate::backend::BackendKind::Kubernetes)
    );
}

/// The objects the backend builds read back as Kubernetes' own types with nothing lost, and,
/// when `PUMPHOUSE_MANIFEST_DIR` is set (ops/check-kubernetes-schemas.sh sets it), are written
/// there as YAML for `kubernetes-validate` to check against the API's OpenAPI schemas.
#[tokio::test]
async fn built_objects_are_valid_kubernetes_objects() {
    let (b, _api) = backend_with(KubernetesConfig {
        image_pull_secret: Some("registry-creds".into()),
        ..config()
    });
    let secret = b.secret(&spec());
    let deployment = b.deployment(&spec(), Some("41")).unwrap();
    let mut no_limits = spec();
    no_limits.resources = Resources::default();
    let bare = b.deployment(&no_limits, None).unwrap();

    let secret_json = serde_json::to_value(&secret).unwrap();
    let back: Secret = serde_json::from_value(secret_json.clone()).unwrap();
    assert_eq!(back, secret);
    assert_eq!(secret_json["apiVersion"], "v1");
    for d in [&deployment, &bare] {
        let v = serde_json::to_value(d).unwrap();
        let back: Deployment = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(&back, d);
        assert_eq!(v["apiVersion"], "apps/v1");
    }
    if let Some(dir) = std::env::var_os("PUMPHOUSE_MANIFEST_DIR") {
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("manifest dir");
        for (file, value) in [
            ("pump-secret.yaml", serde_json::to_value(&secret).unwrap()),
            (
                "pump-deployment.yaml",
                serde_json::to_value(&deployment).unwrap(),
            ),
            (
                "pump-deployment-no-limits.yaml",
                serde_json::to_value(&bare).unwrap(),
            ),
        ] {
            std::fs::write(dir.join(file), serde_yaml::to_string(&value).unwrap())
                .expect("write manifest");
        }
    }
}

#[test]
fn pod_states_map_onto_pump_states() {
    let p = |c: Value| -> Pod { serde_json::from_value(pod("p", "u", "i", c)).unwrap() };
    assert_eq!(pod_state(&p(running())), PumpState::Running);
    assert_eq!(
        pod_state(&p(crashed(137, "OOMKilled", "x"))),
        PumpState::Exited {
            code: Some(137),
            oom: true
        }
    );
    let terminated = container(
        json!({"terminated": {"exitCode": 1, "reason": "Error"}}),
        json!({}),
        0,
    );
    assert_eq!(
        pod_state(&p(terminated)),
        PumpState::Exited {
            code: Some(1),
            oom: false
        }
    );
    let mut pending: Pod = serde_json::from_value(pod("p", "u", "i", running())).unwrap();
    pending.status = None;
    assert_eq!(pod_state(&pending), PumpState::Starting);
    assert_eq!(
        start_failure(&p(pull_failure())).as_deref(),
        Some("ImagePullBackOff: Back-off pulling image \"registry.example/pump:1.2\"")
    );
    assert_eq!(start_failure(&p(running())), None);
}
