//! The OpenAPI document, generated from the handlers' own annotations and served at
//! `/openapi.json`.

use axum::Json;
use utoipa::OpenApi;

use super::flows::{
    CreatedFlow, ExecutionView, FlowDetail, FlowSummary, LogLines, RotatedToken, UpdatedFlow,
};
use super::secrets::{SecretChanged, SecretList};
use super::tenants::{CreatedTenant, CreatedToken, NewTenant, NewToken};
use super::triggers::TriggerAnswer;
use super::ErrorBody;
use crate::store::{FlowEvent, SecretInfo};
use crate::supervisor::{FlowStatus, Heartbeat, PumpView};
use crate::tenants::{ApiToken, AuditEntry, Tenant};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pumphouse",
        description = "Per-flow container orchestrator. Management routes need `Authorization: Bearer <token>` (the server's --admin-token, or a tenant's API token, which sees only that tenant's flows); the webhook route is authenticated by its token.",
    ),
    paths(
        super::flows::list,
        super::flows::create,
        super::flows::show,
        super::flows::update,
        super::flows::delete,
        super::flows::start,
        super::flows::stop,
        super::flows::rotate_webhook_token,
        super::flows::status,
        super::flows::logs,
        super::flows::executions,
        super::flows::execution,
        super::secrets::put,
        super::secrets::list,
        super::secrets::delete,
        super::triggers::webhook,
        super::triggers::inject,
        super::tenants::create,
        super::tenants::list,
        super::tenants::list_tokens,
        super::tenants::create_token,
        super::tenants::revoke_token,
        super::tenants::log,
        super::healthz,
        super::readyz,
        super::metrics,
        super::status_page::page,
        document,
    ),
    components(schemas(
        FlowSummary,
        RotatedToken,
        FlowDetail,
        CreatedFlow,
        UpdatedFlow,
        LogLines,
        ExecutionView,
        TriggerAnswer,
        ErrorBody,
        FlowStatus,
        PumpView,
        Heartbeat,
        FlowEvent,
        NewTenant,
        NewToken,
        CreatedTenant,
        CreatedToken,
        Tenant,
        ApiToken,
        AuditEntry,
        SecretList,
        SecretChanged,
        SecretInfo
    ))
)]
pub struct ApiDoc;

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, body = serde_json::Value, description = "OpenAPI 3.1")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
