//! The HTTP API: routes, the shared state they use, and how errors become answers.
//!
//! Every error answer is JSON `{"error": "...what happened and what to do"}`, plus `field`,
//! `line` and `column` for a manifest problem.

pub mod auth;
mod flows;
mod framework_errors;
mod openapi;
pub mod rate_limit;
mod secrets;
pub mod status_page;
mod tenants;
pub mod trigger_settings;
mod triggers;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde_json::json;

use crate::dispatcher::Dispatcher;
use crate::manifest::ManifestError;
use crate::store::{FlowRecord, Store, StoreError};
use crate::supervisor::{Supervisor, SupervisorError};

/// The tenant the admin acts on, and every flow's tenant in a server without tenants.
pub const DEFAULT_TENANT: &str = "default";

/// Largest request body accepted (webhook payloads, manifests).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler can reach. One shared allocation: axum clones the state for every
/// extractor and middleware of every request, and a clone is then one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub store: Store,
    pub supervisor: Arc<Supervisor>,
    pub dispatcher: Arc<Dispatcher>,
    pub bus: crate::bus::Bus,
    pub leadership: Arc<crate::leadership::Leadership>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub rate_limiter: Arc<rate_limit::RateLimiter>,
    pub trigger_settings: Arc<trigger_settings::TriggerSettingsCache>,
    /// The admin's bearer token; without one, callers without a token act as the admin.
    pub admin_token: Option<String>,
    /// The bearer token `/metrics` takes besides the admin token; see
    /// [`auth::may_read_metrics`].
    pub metrics_token: Option<String>,
    /// How users reach this server, for the webhook URLs it hands out.
    pub public_url: String,
    /// See [`crate::app::ServeConfig::request_timeout`].
    pub request_timeout: std::time::Duration,
}

pub fn router(state: AppState) -> Router {
    let managed = Router::new()
        .route("/api/flows", get(flows::list).post(flows::create))
        .route(
            "/api/flows/{id}",
            get(flows::show).put(flows::update).delete(flows::delete),
        )
        .route("/api/flows/{id}/start", post(flows::start))
        .route("/api/flows/{id}/stop", post(flows::stop))
        .route(
            "/api/flows/{id}/webhook-token",
            post(flows::rotate_webhook_token),
        )
        .route("/api/flows/{id}/secrets", get(secrets::list))
        .route(
            "/api/flows/{id}/secrets/{name}",
            put(secrets::put).delete(secrets::delete),
        )
        .route("/api/flows/{id}/status", get(flows::status))
        .route("/api/flows/{id}/logs", get(flows::logs))
        .route("/api/flows/{id}/executions", get(flows::executions))
        .route(
            "/api/flows/{id}/executions/{execution_id}",
            get(flows::execution),
        )
        .route("/api/triggers/{flow_id}/inject", post(triggers::inject))
        .route("/api/tenants", get(tenants::list).post(tenants::create))
        .route(
            "/api/tenants/{id}/tokens",
            get(tenants::list_tokens).post(tenants::create_token),
        )
        .route(
            "/api/tenants/{id}/tokens/{token_id}",
            axum::routing::delete(tenants::revoke_token),
        )
        .route("/api/audit", get(tenants::log))
        // Behind the token: it shows flow names and pump errors, which may carry payload data.
        .route("/status", get(status_page::page))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ));
    Router::new()
        .merge(managed)
        .route(
            "/api/triggers/{flow_id}/webhook/{token}",
            post(triggers::webhook),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            count_requests,
        ))
        .fallback(|| async {
            ApiError::NotFound("no such route; see the API sketch in README.md".into())
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(framework_errors::as_json))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            run_to_completion,
        ))
        // Outermost, so every answer has it: the framework's refusals and timeouts too.
        .layer(axum::middleware::map_response(no_sniffing))
        .with_state(state)
}

/// Tells browsers to take every answer as the type it declares. Error answers echo what the
/// caller sent (a flow name, a manifest line), and a browser guessing HTML from such text
/// would run whatever script it held, with the API's origin.
async fn no_sniffing(mut resp: Response) -> Response {
    resp.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// An answer that carries a token shown only this once (a new flow's webhook token, a rotated
/// one, a tenant's API token): no cache, in a browser or a proxy between, may keep a copy.
pub(crate) fn carrying_a_secret(code: StatusCode, body: impl serde::Serialize) -> Response {
    (
        code,
        [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))],
        Json(body),
    )
        .into_response()
}

/// Runs each request's handler as a task of its own, so neither the request timeout nor a
/// caller that hangs up can stop a handler half-way through a change: it is applied in full or
/// not at all. Past the timeout (plus the `?wait=` a trigger asked for) the caller gets 503 and
/// the handler carries on. A streamed body (`logs?follow=true`) is not bounded: only the wait
/// for the answer to begin is.
async fn run_to_completion(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let asked_wait = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("wait=")))
        .and_then(|w| pumphouse_pump::duration::parse(w).ok())
        .unwrap_or_default();
    let limit = state.request_timeout + asked_wait;
    let handler = tokio::spawn(next.run(req));
    match tokio::time::timeout(limit, handler).await {
        Ok(Ok(resp)) => resp,
        Ok(Err(e)) => {
            tracing::error!(error = %e, "a request handler panicked");
            ApiError::Internal("the server failed while answering; see its log".into())
                .into_response()
        }
        Err(_) => {
            tracing::warn!(?limit, "a request outlived the request timeout; it goes on");
            ApiError::TimedOut {
                after_secs: limit.as_secs_f64(),
            }
            .into_response()
        }
    }
}

/// The process is alive.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Counts each request by its route template (never the raw path, which holds ids and tokens).
async fn count_requests(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let resp = next.run(req).await;
    state
        .metrics
        .api_requests
        .with_label_values(&[route.as_str(), method.as_str(), resp.status().as_str()])
        .inc();
    resp
}

/// The Prometheus text exposition; gauges that live in the store are read now. It names every
/// flow and tenant, so it takes the metrics token or the admin token (see
/// [`auth::may_read_metrics`]).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, content_type = "text/plain", body = String, description = "Prometheus text format"),
        (status = 401, body = ErrorBody, description = "no valid token: the server's --metrics-token or --admin-token")))]
async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !auth::may_read_metrics(
        &headers,
        state.metrics_token.as_deref(),
        state.admin_token.as_deref(),
    ) {
        return Err(ApiError::MetricsUnauthorized);
    }
    let m = &state.metrics;
    m.flows.reset();
    for (status, n) in state.store.count_flows_by_status().await? {
        m.flows.with_label_values(&[status.as_str()]).set(n);
    }
    m.flow_info.reset();
    for (id, name, tenant) in state.store.flow_names().await? {
        m.flow_info
            .with_label_values(&[id.as_str(), name.as_str(), tenant.as_str()])
            .set(1);
    }
    // Only the leader queues triggers; elsewhere this is empty, and the leader's is the truth.
    m.triggers_pending.reset();
    for (flow, n) in state.dispatcher.pending_by_flow() {
        m.triggers_pending
            .with_label_values(&[flow.as_str()])
            .set(n as i64);
    }
    Ok((
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
        .into_response())
}

/// Whether the store, Redis and the backend answer, each named; and this replica's role. On
/// the leader, `events.bad_streams` lists the flows' events streams it stopped reading (still
/// ready: they cost only their own flows).
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses((status = 200, body = serde_json::Value, description = "ready"),
        (status = 503, body = serde_json::Value, description = "not ready: the failing part says why")))]
async fn readyz(State(state): State<AppState>) -> Response {
    let store = state.store.ping().await.map_err(|e| e.to_string());
    let redis = state.bus.ping().await.map_err(|e| e.to_string());
    let backend = state
        .supervisor
        .backend()
        .ready()
        .await
        .map_err(|e| e.to_string());
    let ready = store.is_ok() && redis.is_ok() && backend.is_ok();
    let show = |r: &Result<(), String>| match r {
        Ok(()) => json!({"ok": true}),
        Err(e) => json!({"ok": false, "error": e}),
    };
    let body = json!({
        "ready": ready,
        "role": if state.leadership.is_leader() { "leader" } else { "follower" },
        "replica": state.leadership.holder(),
        "store": show(&store),
        "redis": show(&redis),
        "backend": show(&backend),
        // Streams the leader stopped reading (each costs only its own flow, now in `error`).
        "events": {"bad_streams": state.bus.bad_streams()},
    });
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Finds a flow by id or by name among the caller's tenant's flows; another tenant's flow is
/// answered as if it did not exist.
async fn find_flow(
    state: &AppState,
    caller: &auth::Caller,
    key: &str,
) -> Result<FlowRecord, ApiError> {
    let tenant = caller.tenant();
    let flow = if uuid::Uuid::parse_str(key).is_ok() {
        state.store.get_flow(key).await?
    } else {
        state.store.get_flow_by_name(tenant, key).await?
    };
    flow.filter(|f| f.tenant_id == tenant).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no flow `{key}`; list flows with `pumphouse flow ls`"
        ))
    })
}

/// Every error answer.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What happened and what to do about it.
    pub error: String,
    /// For a manifest problem: the field at fault (`resources.memory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("missing, wrong or revoked API token; send `Authorization: Bearer <token>` with the server's --admin-token or a tenant's API token")]
    Unauthorized,
    #[error("missing or wrong token; /metrics takes `Authorization: Bearer <token>` with the server's --metrics-token or --admin-token")]
    MetricsUnauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("no answer within {after_secs:.1}s; the request goes on in the background, so check the outcome (for a flow: `pumphouse flow status NAME`) before sending it again")]
    TimedOut { after_secs: f64 },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Manifest(ManifestError),
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Backend(String),
    #[error("{0}")]
    Internal(String),
    #[error("the store is unavailable ({0}); retry shortly")]
    Unavailable(String),
    #[error("flow `{flow}` takes at most {per_second} triggers a second; retry in {retry_after_secs} s or raise `rateLimit` in its manifest")]
    RateLimited {
        flow: String,
        per_second: f64,
        retry_after_secs: u64,
    },
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NameTaken(_) | StoreError::TenantExists(_) => {
                ApiError::Conflict(e.to_string())
            }
            other if other.is_unavailable() => ApiError::Unavailable(other.to_string()),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<SupervisorError> for ApiError {
    fn from(e: SupervisorError) -> Self {
        match e {
            SupervisorError::Store(s) => s.into(),
            SupervisorError::NotFound(_) => ApiError::NotFound(e.to_string()),
            SupervisorError::Backend(b) => ApiError::Backend(b.to_string()),
            SupervisorError::Manifest { .. } | SupervisorError::Secrets { .. } => {
                ApiError::Conflict(e.to_string())
            }
            SupervisorError::PumpUser(u) => ApiError::Backend(u.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = match &self {
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Unauthorized | ApiError::MetricsUnauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TimedOut { .. } | ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Manifest(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unsupported(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Backend(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
        };
        match &self {
            // Said by /readyz and the leader's own warnings; a line for every refused request
            // would flood the log for as long as the outage lasts.
            ApiError::Unavailable(_) => tracing::debug!(error = %self, "request failed"),
            _ if code.is_server_error() => tracing::error!(error = %self, "request failed"),
            _ => {}
        }
        let body = match &self {
            ApiError::Manifest(m) => ErrorBody {
                error: m.message.clone(),
                field: m.field.clone(),
                line: m.line,
                column: m.column,
            },
            other => ErrorBody {
                error: other.to_string(),
                field: None,
                line: None,
                column: None,
            },
        };
        let mut resp = (code, Json(body)).into_response();
        let retry_after = match &self {
            ApiError::RateLimited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            ApiError::Unavailable(_) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        if code == StatusCode::UNAUTHORIZED {
            // What RFC 9110 asks of a 401: the scheme the caller should use.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"pumphouse\""),
            );
        }
        resp
    }
}
