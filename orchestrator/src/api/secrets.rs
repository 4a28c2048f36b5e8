//! Flow secret routes: set (write-only), list by name, delete.
//!
//! A value travels only inward: it is sealed under the master key as soon as it arrives and is
//! never answered, logged or quoted in an error. The request body is the value itself, byte
//! for byte, rather than JSON: nothing to escape, `curl --data-binary @file` works, and no
//! parser error can echo a fragment of it back.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;

use super::auth::{audit, Caller};
use super::{find_flow, ApiError, AppState};
use crate::secrets::{self, MAX_SECRETS_PER_FLOW};
use crate::store::{status, FlowRecord, SecretInfo, SecretPut};

/// A flow's secrets, by name; values are never shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecretList {
    pub flow_id: String,
    pub secrets: Vec<SecretInfo>,
    /// The id of this server's master key; a secret with another `key_id` needs
    /// `pumphouse secrets re-encrypt` before the flow can start. Absent without a key.
    pub master_key_id: Option<String>,
}

/// What a set or a delete changed.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SecretChanged {
    pub flow_id: String,
    pub name: String,
    /// `created`, `replaced` or `deleted`.
    pub change: String,
    /// Whether the flow's pump runs now with the old environment.
    pub restart_required: bool,
    /// When the change reaches the pump.
    pub note: String,
}

fn changed(flow: &FlowRecord, name: &str, change: &str) -> SecretChanged {
    let (restart_required, note) = match flow.status.as_str() {
        status::RUNNING | status::STARTING => (
            true,
            format!(
                "the running pump keeps its old environment; the change applies at the next pump start: pumphouse flow stop {0} && pumphouse flow start {0}",
                flow.name
            ),
        ),
        status::IDLE => (
            false,
            "the change applies when the flow next wakes".to_string(),
        ),
        _ => (
            false,
            "the change applies when the flow next starts".to_string(),
        ),
    };
    SecretChanged {
        flow_id: flow.id.clone(),
        name: name.to_string(),
        change: change.to_string(),
        restart_required,
        note,
    }
}

#[utoipa::path(put, path = "/api/flows/{id}/secrets/{name}", tag = "secrets",
    params(("id" = String, Path, description = "the flow's id or name"),
        ("name" = String, Path, description = "the variable the pump sees: letters, digits and _, not a contract variable")),
    request_body(content = String, content_type = "application/octet-stream", description = "the value itself, byte for byte (UTF-8 text, no NUL, at most 32 KiB); nothing is trimmed"),
    responses((status = 201, body = SecretChanged, description = "created"),
        (status = 200, body = SecretChanged, description = "replaced"),
        (status = 400, body = super::ErrorBody, description = "a bad name or value; the value is never quoted"),
        (status = 404, body = super::ErrorBody),
        (status = 409, body = super::ErrorBody, description = "the server has no master key, or the flow has too many secrets")))]
pub async fn put(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, name)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    secrets::check_name(&name, Some(state.supervisor.backend().name()))
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let Some(key) = state.supervisor.master_key() else {
        return Err(ApiError::Conflict(format!(
            "this server has no master key, so it cannot store secrets; {}",
            secrets::HOW_TO_MAKE_A_KEY
        )));
    };
    secrets::check_value(&body).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let sealed = key.seal(&flow.id, &name, &body);
    let put = state
        .store
        .put_secret(
            &flow.id,
            &name,
            &sealed,
            MAX_SECRETS_PER_FLOW,
            &caller.actor(),
        )
        .await?;
    let (code, change) = match put {
        SecretPut::Created => (StatusCode::CREATED, "created"),
        SecretPut::Replaced => (StatusCode::OK, "replaced"),
        SecretPut::TooMany { limit } => {
            return Err(ApiError::Conflict(format!(
                "flow `{}` has {limit} secrets, the most it may have; delete one with `pumphouse flow secret rm {} NAME` first",
                flow.name, flow.name
            )))
        }
    };
    tracing::info!(flow_id = %flow.id, secret = %name, key_id = key.id(), change, "flow secret set");
    let detail = Some(format!("secret `{name}` {change}"));
    audit(
        &state,
        &caller,
        &flow.tenant_id,
        "flow.secret-set",
        Some((&flow.id, &flow.name)),
        detail,
    )
    .await;
    Ok((code, Json(changed(&flow, &name, change))).into_response())
}

#[utoipa::path(get, path = "/api/flows/{id}/secrets", tag = "secrets",
    params(("id" = String, Path, description = "the flow's id or name")),
    responses((status = 200, body = SecretList), (status = 404, body = super::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<SecretList>, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    Ok(Json(SecretList {
        secrets: state.store.secret_names(&flow.id).await?,
        flow_id: flow.id,
        master_key_id: state.supervisor.master_key().map(|k| k.id().to_string()),
    }))
}

#[utoipa::path(delete, path = "/api/flows/{id}/secrets/{name}", tag = "secrets",
    params(("id" = String, Path, description = "the flow's id or name"), ("name" = String, Path)),
    responses((status = 200, body = SecretChanged), (status = 404, body = super::ErrorBody)))]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Json<SecretChanged>, ApiError> {
    let flow = find_flow(&state, &caller, &id).await?;
    if !state
        .store
        .delete_secret(&flow.id, &name, &caller.actor())
        .await?
    {
        return Err(ApiError::NotFound(format!(
            "flow `{id}` has no secret `{name}`; list them with `pumphouse flow secret ls {id}`"
        )));
    }
    tracing::info!(flow_id = %flow.id, secret = %name, "flow secret deleted");
    let detail = Some(format!("secret `{name}` deleted"));
    audit(
        &state,
        &caller,
        &flow.tenant_id,
        "flow.secret-delete",
        Some((&flow.id, &flow.name)),
        detail,
    )
    .await;
    Ok(Json(changed(&flow, &name, "deleted")))
}
