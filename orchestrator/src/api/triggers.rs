//! Trigger routes: the public webhook (authenticated by its token) and manual injection
//! (authenticated by the API token).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use serde::Deserialize;

use super::{find_flow, ApiError, AppState};
use crate::dispatcher::Outcome;
use crate::store::{status, FlowRecord};
use crate::token;
use crate::trigger_payload::PayloadError;

/// The longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(300);

/// How old a flow row the webhook path may answer from when another replica changed the flow
/// (this replica's own changes are seen at once; see [`crate::flow_cache`]).
const FLOW_MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Debug, Deserialize)]
pub struct WaitQuery {
    /// Wait this long for the pump's result (`5s`, `500ms`).
    wait: Option<String>,
}

impl WaitQuery {
    fn duration(&self) -> Result<Option<Duration>, ApiError> {
        match &self.wait {
            None => Ok(None),
            Some(text) => {
                let d = pumphouse_pump::duration::parse(text)
                    .map_err(|e| ApiError::BadRequest(format!("wait: {e}")))?;
                if d > MAX_WAIT {
                    return Err(ApiError::BadRequest(format!(
                        "wait: {text} is longer than the {}s allowed; wait less and poll the execution",
                        MAX_WAIT.as_secs()
                    )));
                }
                Ok(Some(d))
            }
        }
    }
}

#[utoipa::path(post, path = "/api/triggers/{flow_id}/webhook/{token}", tag = "triggers",
    params(("flow_id" = String, Path, description = "the flow's id"),
        ("token" = String, Path, description = "the webhook token shown when the flow was created"),
        ("wait" = Option<String>, Query, description = "wait this long for the pump's result, like `5s` (at most 300s)")),
    request_body(content = serde_json::Value, description = "any JSON (or UTF-8 text) becomes the trigger's payload"),
    responses((status = 202, body = TriggerAnswer, description = "recorded; it will run"),
        (status = 200, body = TriggerAnswer, description = "with `wait`: the pump's result"),
        (status = 502, body = TriggerAnswer, description = "with `wait`: the execution failed"),
        (status = 504, body = TriggerAnswer, description = "with `wait`: no result in time; it goes on"),
        (status = 404, body = super::ErrorBody, description = "no webhook matches (wrong flow or token)"),
        (status = 409, body = super::ErrorBody, description = "the flow is stopped or in error"),
        (status = 429, body = super::ErrorBody, description = "over the flow's rate limit; see Retry-After"),
        (status = 400, body = super::ErrorBody, description = "`wait` does not parse or is too long, or the JSON nests too deep"),
        (status = 413, body = super::ErrorBody, description = "the body is over 1 MiB"),
        (status = 415, body = super::ErrorBody, description = "the body is neither JSON nor UTF-8 text")))]
pub async fn webhook(
    State(state): State<AppState>,
    Path((flow_id, given)): Path<(String, String)>,
    Query(wait): Query<WaitQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    // One answer for an unknown flow and a wrong token, so the URL reveals nothing.
    let unknown = || {
        ApiError::NotFound("no webhook matches this URL; check the flow id and token (the token is shown once, when the flow is created)".into())
    };
    if uuid::Uuid::parse_str(&flow_id).is_err() {
        return Err(unknown());
    }
    let mut flow = state
        .store
        .get_flow_recent(&flow_id, FLOW_MAX_AGE)
        .await?
        .ok_or_else(unknown)?;
    if !token::verify(&given, &flow.webhook_token_hash) {
        // The token may have been rotated through another replica a moment ago: a new token
        // works at once, whatever the cache holds.
        flow = std::sync::Arc::new(state.store.get_flow(&flow_id).await?.ok_or_else(unknown)?);
        if !token::verify(&given, &flow.webhook_token_hash) {
            return Err(unknown());
        }
    }
    accept(&state, &flow, "webhook", &body, wait.duration()?).await
}

#[utoipa::path(post, path = "/api/triggers/{flow_id}/inject", tag = "triggers",
    params(("flow_id" = String, Path, description = "the flow's id or name"),
        ("wait" = Option<String>, Query, description = "wait this long for the pump's result, like `5s`")),
    request_body(content = serde_json::Value, description = "the trigger's payload"),
    responses((status = 202, body = TriggerAnswer), (status = 200, body = TriggerAnswer),
        (status = 502, body = TriggerAnswer), (status = 504, body = TriggerAnswer),
        (status = 404, body = super::ErrorBody), (status = 409, body = super::ErrorBody),
        (status = 429, body = super::ErrorBody, description = "over the flow's rate limit; see Retry-After"),
        (status = 400, body = super::ErrorBody, description = "`wait` does not parse or is too long, or the JSON nests too deep"),
        (status = 413, body = super::ErrorBody, description = "the body is over 1 MiB"),
        (status = 415, body = super::ErrorBody, description = "the body is neither JSON nor UTF-8 text")))]
pub async fn inject(
    State(state): State<AppState>,
    axum::Extension(caller): axum::Extension<super::auth::Caller>,
    Path(flow_id): Path<String>,
    Query(wait): Query<WaitQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let flow = find_flow(&state, &caller, &flow_id).await?;
    accept(&state, &flow, "manual", &body, wait.duration()?).await
}

async fn accept(
    state: &AppState,
    flow: &FlowRecord,
    kind: &str,
    body: &[u8],
    wait: Option<Duration>,
) -> Result<Response, ApiError> {
    if !matches!(
        flow.status.as_str(),
        status::RUNNING | status::STARTING | status::IDLE
    ) {
        let hint = match flow.status.as_str() {
            status::ERROR => format!(
                "see why with `pumphouse flow status {0}`, then `pumphouse flow start {0}`",
                flow.name
            ),
            _ => format!(
                "start it with `pumphouse flow start {}` or POST /api/flows/{}/start",
                flow.name, flow.id
            ),
        };
        return Err(ApiError::Conflict(format!(
            "flow `{}` is {}, so nothing would receive this trigger; {hint}",
            flow.name, flow.status
        )));
    }
    let payload = crate::trigger_payload::from_body(body).map_err(|e| match e {
        PayloadError::NotText => ApiError::Unsupported(e.to_string()),
        PayloadError::TooDeep => ApiError::BadRequest(e.to_string()),
    })?;
    let settings = state.trigger_settings.get(&flow.id, &flow.manifest);
    let limit = settings.rate_limit;
    // Refused before anything is recorded.
    if let Err(wait) = state.rate_limiter.take(&flow.id, limit) {
        return Err(ApiError::RateLimited {
            flow: flow.name.clone(),
            per_second: limit.per_second,
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        });
    }
    let deadline = settings.delivery_timeout;
    let accepted = if state.leadership.is_leader() {
        state
            .dispatcher
            .accept(&flow.id, kind, payload, deadline)
            .await?
    } else {
        // The leader sends it; this replica only makes it durable and says so.
        let accepted = state
            .dispatcher
            .record(&flow.id, kind, payload, deadline)
            .await?;
        state.bus.notify_accepted(&flow.id).await;
        accepted
    };
    // Recorded: from here on the answer is 2xx whatever else fails, or a retry would record it
    // twice. The wake goes on in the background (held by the dispatcher until the pump is
    // ready; one of the concurrent wakes wins); on other replicas the leader, told above,
    // wakes the flow.
    state.supervisor.note_trigger(&flow.id);
    if flow.status == status::IDLE {
        state.supervisor.wake_soon(&flow.id);
    }
    let Some(wait) = wait else {
        let body = TriggerAnswer {
            execution_id: accepted.execution_id,
            flow_id: flow.id.clone(),
            status: "queued".into(),
            output: None,
            error: None,
        };
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    };
    let outcome = state.dispatcher.wait(&accepted.execution_id, wait).await?;
    let answer = |status: &str, output, error| TriggerAnswer {
        execution_id: accepted.execution_id.clone(),
        flow_id: flow.id.clone(),
        status: status.into(),
        output,
        error,
    };
    let (code, body) = match outcome {
        Some(Outcome::Completed(output)) => (StatusCode::OK, answer("completed", Some(output), None)),
        Some(Outcome::Failed(error)) => (StatusCode::BAD_GATEWAY, answer("failed", None, Some(error))),
        None => (
            StatusCode::GATEWAY_TIMEOUT,
            answer(
                "pending",
                None,
                Some(format!(
                    "no result within {wait:?}; the execution goes on: GET /api/flows/{}/executions/{}",
                    flow.id, accepted.execution_id
                )),
            ),
        ),
    };
    Ok((code, Json(body)).into_response())
}

/// What a trigger route answers.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct TriggerAnswer {
    pub execution_id: String,
    pub flow_id: String,
    /// `queued` (202), `completed` (200), `failed` (502) or `pending` (504: `?wait` ran out).
    pub status: String,
    /// The pump's `respond` result, with `?wait` and `completed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
