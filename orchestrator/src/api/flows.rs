//! Flow routes: create, read, update, delete, start, stop, status, logs, executions.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::auth::{audit, Caller};
use super::{carrying_a_secret, find_flow, ApiError, AppState};
use crate::manifest::{Manifest, ManifestError};
use crate::store::{now_ms, status, ExecutionRecord, FlowRecord};
use crate::token;

/// A flow as listed: everything but the manifest.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowSummary {
    pub id: String,
    pub name: String,
    pub status: String,
    pub desired_state: String,
    pub reason: Option<String>,
    pub idle_timeout_ms: i64,
    pub keep_alive: bool,
    pub created_at: i64,
    pub updated_at: i64,
    /// The later of the last state change and the last trigger (Unix milliseconds).
    pub last_activity_at: i64,
}

impl From<&FlowRecord> for FlowSummary {
    fn from(f: &FlowRecord) -> Self {
        FlowSummary {
            id: f.id.clone(),
            name: f.name.clone(),
            status: f.status.clone(),
            desired_state: f.desired_state.clone(),
            reason: f.status_reason.clone(),
            idle_timeout_ms: f.idle_timeout_ms,
            keep_alive: f.keep_alive,
            created_at: f.created_at,
            updated_at: f.updated_at,
            last_activity_at: f.updated_at,
        }
    }
}

/// An execution as shown: payload and output as JSON, not strings.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ExecutionView {
    pub id: String,
    pub flow_id: String,
    pub seq: i64,
    pub trigger_type: String,
    pub status: String,
    pub payload: serde_json::Value,
    pub output: serde_json::Value,
    pub error: Option<String>,
    pub attempts: i64,
    pub received_at: i64,
    pub acked_at: Option<i64>,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub duration_ms: Option<i64>,
}

impl From<ExecutionRecord> for ExecutionView {
    fn from(e: ExecutionRecord) -> Self {
        let json = |s: &Option<String>| {
            s.as_deref()
                .and_then(|t| serde_json::from_str(t).ok())
                .unwrap_or(serde_json::Value::Null)
        };
        ExecutionView {
            payload: json(&e.payload),
            output: json(&e.output),
            duration_ms: match (e.started_at, e.completed_at) {
                (Some(s), Some(c)) => Some(c - s),
                _ => None,
            },
            id: e.id,
            flow_id: e.flow_id,
            seq: e.seq,
            trigger_type: e.trigger_type,
            status: e.status,
            error: e.error_message,
            attempts: e.attempts,
            received_at: e.received_at,
            acked_at: e.acked_at,
            started_at: e.started_at,
            completed_at: e.completed_at,
        }
    }
}

fn manifest_text(body: &Bytes) -> Result<&str, ApiError> {
    std::str::from_utf8(body).map_err(|_| {
        ApiError::BadRequest("the manifest is not UTF-8 text; send the YAML file as it is".into())
    })
}

#[utoipa::path(get, path = "/api/flows", tag = "flows",
    responses((status = 200, body = [FlowSummary])))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<FlowSummary>>, ApiError> {
    let flows = state.store.list_flows(caller.tenant()).await?;
    let last = state.store.last_triggers(caller.tenant()).await?;
    Ok(Json(
        flows
            .iter()
            .map(|f| {
                let mut s = FlowSummary::from(f);
                s.last_activity_at = s
                    .last_activity_at
                    .max(last.get(&f.id).copied().unwrap_or(0));
                s
            })
            .collect(),
    ))
}

#[utoipa::path(post, path = "/api/flows", tag = "flows",
    request_body(content = String, content_type = "application/yaml", description = "the flow manifest",
        example = "name: hello\nconfig:\n  steps:\n    - respond: {greeting: \"hello, {{payload.name}}\"}\n"),
    responses((status = 201, body = CreatedFlow),
        (status = 409, body = super::ErrorBody, description = "a flow of that name exists"),
        (status = 422, body = super::ErrorBody, description = "the manifest is invalid; `field`, `line` and `column` say where"),
        (status = 400, body = super::ErrorBody, description = "the body is not UTF-8 text"),
        (status = 413, body = super::ErrorBody, description = "the body is over 1 MiB")))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let text = manifest_text(&body)?;
    let manifest = Manifest::parse(text).map_err(ApiError::Manifest)?;
    manifest
        .check_for_backend(state.supervisor.backend().name())
        .map_err(ApiError::Manifest)?;
    let idle = manifest.idle_timeout().map_err(ApiError::Manifest)?;
    let webhook_token = token::generate();
    let now = now_ms();
    let flow = FlowRecord {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: caller.tenant().to_string(),
        name: manifest.name.clone(),
        manifest: text.to_string(),
        desired_state: "stopped".into(),
        status: status::STOPPED.into(),
        status_reason: None,
        webhook_token_hash: token::hash(&webhook_token),
        idle_timeout_ms: idle.as_millis() as i64,
        keep_alive: manifest.keep_alive,
        instance_id: None,
        pump_ref: None,
        created_at: now,
        updated_at: now,
    };
    state.store.create_flow(&flow, &caller.actor()).await?;
    audit(
        &state,
        &caller,
        &flow.tenant_id,
        "flow.create",
        Some((&flow.id, &flow.name)),
        None,
    )
    .await;
    let webhook_url = webhook_url(&state, &flow.id, &webhook_token);
    let body = CreatedFlow {
        flow: FlowSummary::from(&flow),
        webhook_token,
        webhook_url,
        note: "the webhook token is shown only now; store it".into(),
    };
    Ok(carrying_a_secret(StatusCode::CREATED, body))
}

/// A new flow, with its webhook token: the only time the token is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedFlow {
    pub flow: FlowSummary,
    pub webhook_token: String,
    pub webhook_url: String,
    pub note: String,
}

/// A flow's new webhook token: the only time it is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RotatedToken {
    pub webhook_token: String,
    pub webhook_url: String,
    pub note: String,
}

#[utoipa::path(post, path = "/api/flows/{id}/webhook-token", tag = "flows",
    params(("id" = String, Path, description = "the flow's id or name")),
    responses((status = 200, body = RotatedToken, description = "the new token; the old one is refused from now on"),
        (status = 404, body = super::ErrorBody)))]
pub async fn rotate_webhook_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    let webhook_token = token::generate();
    if !state
        .store
        .rotate_webhook_token(&flow.id, &token::hash(&webhook_token), &caller.actor())
        .await?
    {
        return Err(ApiError::NotFound(format!("flow `{id}` is gone")));
    }
    audit(
        &state,
        &caller,
        &flow.tenant_id,
        "flow.rotate-webhook-token",
        Some((&flow.id, &flow.name)),
        None,
    )
    .await;
    let webhook_url = webhook_url(&state, &flow.id, &webhook_token);
    Ok(carrying_a_secret(
        StatusCode::OK,
        RotatedToken {
            webhook_token,
            webhook_url,
            note: "the webhook token is shown only now; the old one no longer works".into(),
        },
    ))
}

fn webhook_url(state: &AppState, flow_id: &str, token: &str) -> String {
    format!(
        "{}/api/triggers/{flow_id}/webhook/{token}",
        state.public_url.trim_end_matches('/')
    )
}

/// One flow with its manifest.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FlowDetail {
    #[serde(flatten)]
    pub flow: FlowSummary,
    /// The manifest YAML as applied.
    pub manifest: String,
}

/// The flow after an update.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct UpdatedFlow {
    pub flow: FlowSummary,
    /// The pump runs the old manifest until the flow is stopped and started again.
    pub restart_required: bool,
    pub note: String,
}

/// The last lines of a pump's log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LogLines {
    pub flow_id: String,
    pub lines: Vec<String>,
}

#[utoipa::path(get, path = "/api/flows/{id}", tag = "flows",
    params(("id" = String, Path, description = "the flow's id or name")),
    responses((status = 200, body = FlowDetail), (status = 404, body = super::ErrorBody)))]
pub async fn show(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<FlowDetail>, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    Ok(Json(FlowDetail {
        flow: FlowSummary::from(&flow),
        manifest: flow.manifest,
    }))
}

#[utoipa::path(put, path = "/api/flows/{id}", tag = "flows",
    params(("id" = String, Path, description = "the flow's id or name")),
    request_body(content = String, content_type = "application/yaml", description = "the new manifest; same name"),
    responses((status = 200, body = UpdatedFlow), (status = 404, body = super::ErrorBody), (status = 422, body = super::ErrorBody),
        (status = 400, body = super::ErrorBody, description = "the body is not UTF-8 text"),
        (status = 413, body = super::ErrorBody, description = "the body is over 1 MiB")))]
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<UpdatedFlow>, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    let text = manifest_text(&body)?;
    let manifest = Manifest::parse(text).map_err(ApiError::Manifest)?;
    manifest
        .check_for_backend(state.supervisor.backend().name())
        .map_err(ApiError::Manifest)?;
    if manifest.name != flow.name {
        return Err(ApiError::Manifest(ManifestError {
            message: format!(
                "name: `{}` differs from the flow's name `{}`; a flow cannot be renamed, create a new one instead",
                manifest.name, flow.name
            ),
            field: Some("name".into()),
            line: None,
            column: None,
        }));
    }
    let idle = manifest.idle_timeout().map_err(ApiError::Manifest)?;
    state
        .store
        .update_manifest(
            &flow.id,
            text,
            idle.as_millis() as i64,
            manifest.keep_alive,
            &caller.actor(),
        )
        .await?;
    audit(
        &state,
        &caller,
        &flow.tenant_id,
        "flow.update",
        Some((&flow.id, &flow.name)),
        None,
    )
    .await;
    let updated = find_flow(&state, &caller, &flow.id).await?;
    let restart_required = matches!(flow.status.as_str(), status::RUNNING | status::STARTING);
    Ok(Json(UpdatedFlow {
        flow: FlowSummary::from(&updated),
        restart_required,
        note: if restart_required {
            "the running pump keeps its old manifest until the flow is stopped and started again"
        } else {
            ""
        }
        .into(),
    }))
}

#[utoipa::path(delete, path = "/api/flows/{id}", tag = "flows",
    params(("id" = String, Path, description = "the flow's id or name")),
    responses((status = 204, description = "stopped and deleted with its history"), (status = 404, body = super::ErrorBody),
        (status = 502, body = super::ErrorBody, description = "the backend could not stop the pump; nothing was deleted")))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    state.supervisor.stop(&flow, &caller.actor()).await?;
    state.store.delete_flow(&flow.id).await?;
    if let Err(e) = state.bus.forget_events(&flow.tenant_id, &flow.id).await {
        tracing::warn!(flow_id = %flow.id, error = %e, "the deleted flow's events stream is left in Redis");
    }
    state.trigger_settings.forget(&flow.id);
    audit(
        &state,
        &caller,
        &flow.tenant_id,
        "flow.delete",
        Some((&flow.id, &flow.name)),
        None,
    )
    .await;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/flows/{id}/start", tag = "flows",
    params(("id" = String, Path, description = "the flow's id or name")),
    responses((status = 202, body = FlowSummary, description = "starting; `running` once the pump reports ready"),
        (status = 200, body = FlowSummary, description = "already starting or running"),
        (status = 404, body = super::ErrorBody), (status = 502, body = super::ErrorBody, description = "the backend could not start the pump"),
        (status = 409, body = super::ErrorBody, description = "the stored manifest no longer parses; apply it again")))]
pub async fn start(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    let already = flow.desired_state == "running"
        && matches!(flow.status.as_str(), status::RUNNING | status::STARTING);
    if already {
        return Ok((StatusCode::OK, Json(FlowSummary::from(&flow))).into_response());
    }
    state.supervisor.start(&flow, &caller.actor()).await?;
    audit(
        &state,
        &caller,
        &flow.tenant_id,
        "flow.start",
        Some((&flow.id, &flow.name)),
        None,
    )
    .await;
    let flow = find_flow(&state, &caller, &flow.id).await?;
    Ok((StatusCode::ACCEPTED, Json(FlowSummary::from(&flow))).into_response())
}

#[utoipa::path(post, path = "/api/flows/{id}/stop", tag = "flows",
    params(("id" = String, Path, description = "the flow's id or name")),
    responses((status = 200, body = FlowSummary), (status = 404, body = super::ErrorBody),
        (status = 502, body = super::ErrorBody, description = "the backend could not stop the pump")))]
pub async fn stop(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<FlowSummary>, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    state.supervisor.stop(&flow, &caller.actor()).await?;
    audit(
        &state,
        &caller,
        &flow.tenant_id,
        "flow.stop",
        Some((&flow.id, &flow.name)),
        None,
    )
    .await;
    let flow = find_flow(&state, &caller, &flow.id).await?;
    Ok(Json(FlowSummary::from(&flow)))
}

#[utoipa::path(get, path = "/api/flows/{id}/status", tag = "flows",
    params(("id" = String, Path, description = "the flow's id or name")),
    responses((status = 200, body = crate::supervisor::FlowStatus), (status = 404, body = super::ErrorBody)))]
pub async fn status(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    let status = state.supervisor.status(&flow).await?;
    Ok(Json(status).into_response())
}

#[derive(Debug, Deserialize)]
pub struct TailQuery {
    tail: Option<usize>,
    /// Keep the answer open and send new lines as server-sent events, after the tail.
    #[serde(default)]
    follow: bool,
}

#[utoipa::path(get, path = "/api/flows/{id}/logs", tag = "flows",
    params(("id" = String, Path, description = "the flow's id or name"),
        ("tail" = Option<usize>, Query, description = "lines from the end (100; at most 10000)"),
        ("follow" = Option<bool>, Query, description = "keep sending new lines as server-sent events")),
    responses((status = 200, body = LogLines, description = "JSON, or `text/event-stream` with `follow=true`"),
        (status = 404, body = super::ErrorBody),
        (status = 400, body = super::ErrorBody, description = "`tail` or `follow` does not parse"),
        (status = 502, body = super::ErrorBody, description = "the backend could not read the pump's log")))]
pub async fn logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<TailQuery>,
) -> Result<Response, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    let tail = q.tail.unwrap_or(100).min(10_000);
    if q.follow {
        use axum::response::sse::{Event, KeepAlive, Sse};
        use futures_util::StreamExt as _;
        let lines = state.supervisor.backend().follow_logs(&flow.id, tail);
        let events =
            lines.map(|line| Ok::<_, std::convert::Infallible>(Event::default().data(line)));
        return Ok(Sse::new(events)
            .keep_alive(KeepAlive::default())
            .into_response());
    }
    let lines = state
        .supervisor
        .backend()
        .logs(&flow.id, tail)
        .await
        .map_err(|e| ApiError::Backend(e.to_string()))?;
    Ok(Json(LogLines {
        flow_id: flow.id,
        lines,
    })
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct LimitQuery {
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/flows/{id}/executions", tag = "executions",
    params(("id" = String, Path, description = "the flow's id or name"),
        ("limit" = Option<i64>, Query, description = "how many, newest first (50; at most 1000)")),
    responses((status = 200, body = [ExecutionView]), (status = 404, body = super::ErrorBody),
        (status = 400, body = super::ErrorBody, description = "`limit` does not parse")))]
pub async fn executions(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<Vec<ExecutionView>>, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let rows = state.store.list_executions(&flow.id, limit).await?;
    Ok(Json(rows.into_iter().map(ExecutionView::from).collect()))
}

#[utoipa::path(get, path = "/api/flows/{id}/executions/{execution_id}", tag = "executions",
    params(("id" = String, Path, description = "the flow's id or name"), ("execution_id" = String, Path)),
    responses((status = 200, body = ExecutionView), (status = 404, body = super::ErrorBody)))]
pub async fn execution(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, execution_id)): Path<(String, String)>,
) -> Result<Json<ExecutionView>, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    let exec = state
        .store
        .get_execution(&execution_id)
        .await?
        .filter(|e| e.flow_id == flow.id)
        .ok_or_else(|| {
            ApiError::NotFound(format!("flow `{id}` has no execution `{execution_id}`"))
        })?;
    Ok(Json(exec.into()))
}
