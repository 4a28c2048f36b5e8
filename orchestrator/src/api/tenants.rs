//! Tenant routes: tenants and their API tokens (admin), a tenant's own tokens, and the audit log.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::auth::{audit, Caller};
use super::{carrying_a_secret, ApiError, AppState};
use crate::store::now_ms;
use crate::tenants::{self, ApiToken, AuditEntry, Tenant};

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// 1 to 40 lower-case letters, digits and dashes; part of every key prefix of its pumps.
    pub id: String,
    /// For humans; the id when absent.
    #[serde(default)]
    pub name: Option<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// What the token is for, like `ci` or `alice-laptop`.
    pub name: String,
}

/// A new API token: the only time it is shown.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    pub token: ApiToken,
    /// Send as `Authorization: Bearer <api_token>`.
    pub api_token: String,
    pub note: String,
}

/// A new tenant with its first API token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedTenant {
    pub tenant: Tenant,
    pub token: ApiToken,
    pub api_token: String,
    pub note: String,
}

const SHOWN_ONCE: &str = "the API token is shown only now; store it";

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes, example: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::BadRequest(format!(
            "the body is not what this route takes: {e}; send JSON like {example}"
        ))
    })
}

fn check_token_name(name: &str) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.len() > 80 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "a token name is 1 to 80 printable characters, like `ci`".into(),
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/tenants", tag = "tenants",
    request_body = NewTenant,
    responses((status = 201, body = CreatedTenant),
        (status = 400, body = super::ErrorBody), (status = 403, body = super::ErrorBody, description = "not the admin token"),
        (status = 409, body = super::ErrorBody, description = "a tenant with that id exists")))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let new: NewTenant = json_body(&body, r#"{"id": "acme", "name": "Acme Corp"}"#)?;
    tenants::check_tenant_id(&new.id).map_err(ApiError::BadRequest)?;
    let tenant = Tenant {
        name: new.name.unwrap_or_else(|| new.id.clone()),
        id: new.id,
        created_at: now_ms(),
    };
    let api_token = tenants::generate_token();
    let token = state
        .store
        .create_tenant(&tenant, "initial", &crate::token::hash(&api_token))
        .await?;
    audit(&state, &caller, &tenant.id, "tenant.create", None, None).await;
    let body = CreatedTenant {
        tenant,
        token,
        api_token,
        note: SHOWN_ONCE.into(),
    };
    Ok(carrying_a_secret(StatusCode::CREATED, body))
}

#[utoipa::path(get, path = "/api/tenants", tag = "tenants",
    responses((status = 200, body = [Tenant]), (status = 403, body = super::ErrorBody)))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Vec<Tenant>>, ApiError> {
    caller.require_admin()?;
    Ok(Json(state.store.list_tenants().await?))
}

async fn existing_tenant(state: &AppState, caller: &Caller, id: &str) -> Result<(), ApiError> {
    caller.require_tenant(id)?;
    if state.store.tenant_exists(id).await? {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!(
            "no tenant `{id}`; list tenants with `pumphouse tenant ls`"
        )))
    }
}

#[utoipa::path(get, path = "/api/tenants/{id}/tokens", tag = "tenants",
    params(("id" = String, Path, description = "the tenant's id")),
    responses((status = 200, body = [ApiToken], description = "never the tokens themselves"), (status = 404, body = super::ErrorBody)))]
pub async fn list_tokens(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Json<Vec<ApiToken>>, ApiError> {
    existing_tenant(&state, &caller, &id).await?;
    Ok(Json(state.store.list_api_tokens(&id).await?))
}

#[utoipa::path(post, path = "/api/tenants/{id}/tokens", tag = "tenants",
    params(("id" = String, Path, description = "the tenant's id")),
    request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = super::ErrorBody), (status = 404, body = super::ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    existing_tenant(&state, &caller, &id).await?;
    let new: NewToken = json_body(&body, r#"{"name": "ci"}"#)?;
    check_token_name(&new.name)?;
    let api_token = tenants::generate_token();
    let token = state
        .store
        .create_api_token(&id, &new.name, &crate::token::hash(&api_token))
        .await?;
    let detail = format!("token `{}` ({})", token.name, token.id);
    audit(&state, &caller, &id, "token.create", None, Some(detail)).await;
    let body = CreatedToken {
        token,
        api_token,
        note: SHOWN_ONCE.into(),
    };
    Ok(carrying_a_secret(StatusCode::CREATED, body))
}

#[utoipa::path(delete, path = "/api/tenants/{id}/tokens/{token_id}", tag = "tenants",
    params(("id" = String, Path, description = "the tenant's id"), ("token_id" = String, Path)),
    responses((status = 200, body = ApiToken, description = "revoked: refused from now on"), (status = 404, body = super::ErrorBody)))]
pub async fn revoke_token(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path((id, token_id)): Path<(String, String)>,
) -> Result<Json<ApiToken>, ApiError> {
    existing_tenant(&state, &caller, &id).await?;
    let token = state
        .store
        .revoke_api_token(&id, &token_id)
        .await?
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "tenant `{id}` has no token `{token_id}`; list them with `pumphouse tenant tokens {id}`"
            ))
        })?;
    let detail = format!("token `{}` ({})", token.name, token.id);
    audit(&state, &caller, &id, "token.revoke", None, Some(detail)).await;
    Ok(Json(token))
}

#[derive(Debug, Deserialize)]
pub struct AuditQuery {
    flow: Option<String>,
    limit: Option<i64>,
}

#[utoipa::path(get, path = "/api/audit", tag = "tenants",
    params(("flow" = Option<String>, Query, description = "only this flow (id or name), deleted or not"),
        ("limit" = Option<i64>, Query, description = "how many, newest first (100; at most 1000)")),
    responses((status = 200, body = [AuditEntry], description = "the caller's tenant's audit log"),
        (status = 400, body = super::ErrorBody, description = "a query parameter that does not parse")))]
pub async fn log(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Vec<AuditEntry>>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(
        state
            .store
            .list_audit(caller.tenant(), q.flow.as_deref(), limit)
            .await?,
    ))
}
