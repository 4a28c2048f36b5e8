//! The OpenAPI document, generated from the handlers' own annotations and served at
//! `/openapi.json`.

use axum::Json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi};

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
        description = "Per-flow container orchestrator. Management routes need `Authorization: Bearer <token>` (the server's --admin-token, or a tenant's API token, which sees only that tenant's flows); the webhook route is authenticated by its token; /metrics takes the server's --metrics-token or --admin-token.",
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
    )),
    modifiers(&CommonErrors)
)]
pub struct ApiDoc;

/// The error answers every route can give, added here rather than on each handler so no route
/// can forget them: 500 when the store or Redis fails, and 401 on the management routes when
/// the server has an API token.
struct CommonErrors;

/// Routes that answer without the API token (`/metrics` documents the token it takes itself).
const OPEN_ROUTES: &[&str] = &[
    "/api/triggers/{flow_id}/webhook/{token}",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
];

/// Routes that touch neither the store nor Redis, so cannot fail that way.
const INFALLIBLE_ROUTES: &[&str] = &["/healthz", "/openapi.json"];

impl Modify for CommonErrors {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        for (path, item) in doc.paths.paths.iter_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                if !OPEN_ROUTES.contains(&path.as_str()) {
                    add_error(
                        op,
                        "401",
                        "no valid token: the server's --admin-token or a tenant's API token",
                    );
                }
                // Every route runs under the request timeout.
                add_error(
                    op,
                    "503",
                    "no answer within the request timeout (the request goes on in the background), or the store is unavailable (retry after `Retry-After`)",
                );
                if !INFALLIBLE_ROUTES.contains(&path.as_str()) {
                    add_error(op, "500", "the store failed; the message says how");
                }
            }
        }
    }
}

fn add_error(op: &mut Operation, code: &str, description: &str) {
    op.responses
        .responses
        .entry(code.to_string())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        });
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, body = serde_json::Value, description = "OpenAPI 3.1")))]
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
