//! Who is calling: the admin, or one tenant through one of its API tokens.
//!
//! The admin token (`--admin-token`) manages tenants and acts on the default tenant's flows. A
//! tenant's token acts only on that tenant's flows: every route answers another tenant's flow as
//! if it did not exist. A server started without an admin token treats callers without a token
//! as the admin (development); a tenant token still narrows a caller to its tenant there.

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq as _;

use super::{ApiError, AppState, DEFAULT_TENANT};
use crate::store::now_ms;
use crate::tenants::{AuditEntry, TOKEN_PREFIX};

/// The caller of a management route, put in the request's extensions by [`authenticate`].
#[derive(Debug, Clone)]
pub enum Caller {
    Admin,
    Tenant {
        tenant_id: String,
        token_id: String,
        token_name: String,
    },
}

impl Caller {
    /// The tenant whose flows the caller sees.
    pub fn tenant(&self) -> &str {
        match self {
            Caller::Admin => DEFAULT_TENANT,
            Caller::Tenant { tenant_id, .. } => tenant_id,
        }
    }

    /// Who, as flow events and the audit log name them. Never the token itself.
    pub fn actor(&self) -> String {
        match self {
            Caller::Admin => "admin".into(),
            Caller::Tenant {
                token_id,
                token_name,
                ..
            } => format!("token `{token_name}` ({token_id})"),
        }
    }

    /// Refuses anyone but the admin.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant { .. } => Err(ApiError::Forbidden(
                "only the admin token may do this; ask the operator who runs this server".into(),
            )),
        }
    }

    /// Refuses anyone but the admin and the tenant itself. Another tenant is told the tenant
    /// does not exist, as with flows.
    pub fn require_tenant(&self, tenant_id: &str) -> Result<(), ApiError> {
        match self {
            Caller::Admin => Ok(()),
            Caller::Tenant { tenant_id: own, .. } if own == tenant_id => Ok(()),
            Caller::Tenant { .. } => Err(ApiError::NotFound(format!("no tenant `{tenant_id}`"))),
        }
    }
}

/// Whether a request may read `/metrics`, which names every flow and its tenant.
///
/// With a metrics token or an admin token configured, the request must bear one of them; a
/// tenant's API token is refused (the metrics cover every tenant). With neither configured (a
/// development server, whose management API is open as well) anyone may.
pub fn may_read_metrics(
    headers: &axum::http::HeaderMap,
    metrics_token: Option<&str>,
    admin_token: Option<&str>,
) -> bool {
    if metrics_token.is_none() && admin_token.is_none() {
        return true;
    }
    let Some(given) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    // Both compared, whichever matches, so the time taken does not say which one did.
    let matches = [metrics_token, admin_token]
        .into_iter()
        .flatten()
        .fold(subtle::Choice::from(0), |any, want| {
            any | given.as_bytes().ct_eq(want.as_bytes())
        });
    matches.into()
}

/// Resolves the bearer token to a [`Caller`], or answers 401.
pub async fn authenticate(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let caller = match (given, &state.admin_token) {
        (Some(t), _) if t.starts_with(TOKEN_PREFIX) => {
            match state.store.api_token_by_hash(&crate::token::hash(&t)).await {
                Ok(Some(token)) => Caller::Tenant {
                    tenant_id: token.tenant_id,
                    token_id: token.id,
                    token_name: token.name,
                },
                Ok(None) => return ApiError::Unauthorized.into_response(),
                Err(e) => return ApiError::from(e).into_response(),
            }
        }
        (Some(t), Some(admin)) if bool::from(t.as_bytes().ct_eq(admin.as_bytes())) => Caller::Admin,
        (None, None) => Caller::Admin,
        _ => return ApiError::Unauthorized.into_response(),
    };
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Records what a caller did. A failure to record is logged, not answered: the change it
/// describes has happened already.
pub async fn audit(
    state: &AppState,
    caller: &Caller,
    tenant_id: &str,
    action: &str,
    flow: Option<(&str, &str)>,
    detail: Option<String>,
) {
    let entry = AuditEntry {
        at: now_ms(),
        tenant_id: tenant_id.to_string(),
        actor: caller.actor(),
        action: action.to_string(),
        flow_id: flow.map(|(id, _)| id.to_string()),
        flow_name: flow.map(|(_, name)| name.to_string()),
        detail,
    };
    if let Err(e) = state.store.record_audit(&entry).await {
        tracing::error!(error = %e, action, "could not record an audit entry");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderValue};

    fn bearing(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn metrics_take_the_metrics_token_or_the_admin_token_and_nothing_else() {
        let (metrics, admin) = (Some("m-token"), Some("a-token"));
        assert!(may_read_metrics(&bearing("m-token"), metrics, admin));
        assert!(may_read_metrics(&bearing("a-token"), metrics, admin));
        assert!(!may_read_metrics(&HeaderMap::new(), metrics, admin));
        assert!(!may_read_metrics(&bearing("m-toke"), metrics, admin));
        assert!(!may_read_metrics(&bearing("pht_tenant"), metrics, admin));
        assert!(!may_read_metrics(&bearing(""), metrics, admin));
    }

    #[test]
    fn without_a_metrics_token_metrics_take_the_admin_token_and_are_open_only_without_one() {
        assert!(may_read_metrics(&bearing("a-token"), None, Some("a-token")));
        assert!(!may_read_metrics(&HeaderMap::new(), None, Some("a-token")));
        assert!(!may_read_metrics(&bearing("other"), None, Some("a-token")));
        assert!(may_read_metrics(&bearing("m-token"), Some("m-token"), None));
        assert!(!may_read_metrics(&HeaderMap::new(), Some("m-token"), None));
        // A development server: the management API is open, and so are the metrics.
        assert!(may_read_metrics(&HeaderMap::new(), None, None));
    }
}
