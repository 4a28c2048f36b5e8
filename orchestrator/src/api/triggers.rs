//! Trigger routes: the public webhook (authenticated by its token) and manual injection
//! (authenticated by the API token).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use serde::Deserialize;

use super::{find_flow, ApiError, AppState};
use crate::dispatcher::Outcome;
use crate::manifest::{Manifest, DEFAULT_DELIVERY_TIMEOUT};
use crate::store::{status, FlowRecord};
use crate::token;

/// The longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(300);

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
    let flow = state.store.get_flow(&flow_id).await?.ok_or_else(unknown)?;
    if !token::verify(&given, &flow.webhook_token_hash) {
        return Err(unknown());
    }
    accept(&state, &flow, "webhook", &body, wait.duration()?).await
}

pub async fn inject(
    State(state): State<AppState>,
    Path(flow_id): Path<String>,
    Query(wait): Query<WaitQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let flow = find_flow(&state, &flow_id).await?;
    accept(&state, &flow, "manual", &body, wait.duration()?).await
}

/// A body as the pump will see it: JSON as it is, other UTF-8 text as a JSON string, nothing as
/// `null`.
fn payload(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    match std::str::from_utf8(body) {
        Ok(text) => Ok(serde_json::Value::String(text.to_string())),
        Err(_) => Err(ApiError::Unsupported(
            "the body is neither JSON nor UTF-8 text; send JSON".into(),
        )),
    }
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
    let payload = payload(body)?;
    let deadline = Manifest::parse(&flow.manifest)
        .ok()
        .and_then(|m| m.delivery_timeout().ok())
        .unwrap_or(DEFAULT_DELIVERY_TIMEOUT);
    let deadline = deadline.max(Duration::from_secs(1));
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
    state.supervisor.note_trigger(&flow.id);
    if flow.status == status::IDLE {
        // Held by the dispatcher until the pump is ready; one of the concurrent wakes wins.
        state.supervisor.wake(&flow.id).await?;
    }
    let Some(wait) = wait else {
        let body = json!({
            "execution_id": accepted.execution_id,
            "flow_id": flow.id,
            "status": "queued",
        });
        return Ok((StatusCode::ACCEPTED, Json(body)).into_response());
    };
    let outcome = state.dispatcher.wait(&accepted.execution_id, wait).await?;
    let id = accepted.execution_id;
    Ok(match outcome {
        Some(Outcome::Completed(output)) => (
            StatusCode::OK,
            Json(json!({"execution_id": id, "status": "completed", "output": output})),
        )
            .into_response(),
        Some(Outcome::Failed(error)) => (
            StatusCode::BAD_GATEWAY,
            Json(json!({"execution_id": id, "status": "failed", "error": error})),
        )
            .into_response(),
        None => (
            StatusCode::GATEWAY_TIMEOUT,
            Json(json!({
                "execution_id": id,
                "status": "pending",
                "error": format!(
                    "no result within {wait:?}; the execution goes on: GET /api/flows/{}/executions/{id}",
                    flow.id
                ),
            })),
        )
            .into_response(),
    })
}

#[cfg(test)]
mod tests {
    use super::payload;
    use serde_json::json;

    #[test]
    fn bodies_become_json_payloads() {
        assert_eq!(payload(b"").unwrap(), json!(null));
        assert_eq!(payload(br#"{"a":1}"#).unwrap(), json!({"a": 1}));
        assert_eq!(payload(b"plain words").unwrap(), json!("plain words"));
        assert!(payload(&[0xff, 0xfe]).is_err());
    }
}
