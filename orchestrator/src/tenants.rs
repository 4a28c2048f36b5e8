//! Tenants, their API tokens, and the audit log.
//!
//! A tenant's API token acts only on that tenant's flows. Tokens are random, shown once and
//! stored as a SHA-256 (see [`crate::token`]); a revoked token keeps its row so the audit log
//! can still name it. The audit log records who changed what and has no foreign key to flows,
//! so it outlives the flows it talks about.

use serde::Serialize;
use sqlx::Row as _;

use crate::store::{is_unique_violation, now_ms, Result, Store, StoreError};

/// Every API token starts with this, so a leaked one is easy to recognise (and to scan for).
pub const TOKEN_PREFIX: &str = "pht_";

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Tenant {
    /// Short and stable: it appears in every key prefix of the tenant's pumps.
    pub id: String,
    pub name: String,
    pub created_at: i64,
}

/// An API token as listed: never the token or its hash.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ApiToken {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// One entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub at: i64,
    pub tenant_id: String,
    /// Who: `admin`, or the API token by name and id.
    pub actor: String,
    /// What: `flow.create`, `flow.update`, `flow.start`, `flow.stop`, `flow.delete`,
    /// `flow.rotate-webhook-token`, `flow.secret-set`, `flow.secret-delete`, `tenant.create`,
    /// `token.create`, `token.revoke`.
    pub action: String,
    pub flow_id: Option<String>,
    pub flow_name: Option<String>,
    pub detail: Option<String>,
}

/// Checks a tenant id: it becomes part of Redis key prefixes and container labels, so it is
/// kept to lower-case letters, digits and dashes.
pub fn check_tenant_id(id: &str) -> std::result::Result<(), String> {
    let ok = (1..=40).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !id.starts_with('-')
        // It is also a Kubernetes label value, which must end with a letter or digit.
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tenant id `{id}` is not allowed; use 1 to 40 lower-case letters, digits and dashes, not starting or ending with a dash"
        ))
    }
}

/// A new API token: the prefix and 256 random bits.
pub fn generate_token() -> String {
    format!("{TOKEN_PREFIX}{}", crate::token::generate())
}

const TOKEN_COLUMNS: &str = "id, tenant_id, name, created_at, revoked_at";

fn token_from_row(r: &sqlx::any::AnyRow) -> Result<ApiToken> {
    Ok(ApiToken {
        id: r.try_get("id")?,
        tenant_id: r.try_get("tenant_id")?,
        name: r.try_get("name")?,
        created_at: r.try_get("created_at")?,
        revoked_at: r.try_get("revoked_at")?,
    })
}

impl Store {
    /// Creates a tenant with its first API token, both or neither.
    ///
    /// # Errors
    /// [`StoreError::TenantExists`] when the id is taken.
    pub async fn create_tenant(
        &self,
        tenant: &Tenant,
        token_name: &str,
        token_hash: &str,
    ) -> Result<ApiToken> {
        let mut tx = self.begin_write().await?;
        let res = sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&tenant.id)
            .bind(&tenant.name)
            .bind(tenant.created_at)
            .execute(&mut *tx)
            .await;
        if let Err(e) = res {
            return Err(if is_unique_violation(&e) {
                StoreError::TenantExists(tenant.id.clone())
            } else {
                e.into()
            });
        }
        let token = insert_token(&mut tx, &tenant.id, token_name, token_hash).await?;
        tx.commit().await?;
        Ok(token)
    }

    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Tenant {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    created_at: r.try_get("created_at")?,
                })
            })
            .collect()
    }

    pub async fn tenant_exists(&self, id: &str) -> Result<bool> {
        let row = sqlx::query("SELECT id FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn create_api_token(
        &self,
        tenant_id: &str,
        name: &str,
        token_hash: &str,
    ) -> Result<ApiToken> {
        let mut tx = self.begin_write().await?;
        let token = insert_token(&mut tx, tenant_id, name, token_hash).await?;
        tx.commit().await?;
        Ok(token)
    }

    /// A tenant's tokens, revoked ones included, newest first.
    pub async fn list_api_tokens(&self, tenant_id: &str) -> Result<Vec<ApiToken>> {
        let rows = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE tenant_id = $1 ORDER BY created_at DESC, id"
        ))
        .bind(tenant_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    /// Revokes a token; it is refused from this commit on. `None` when the tenant has no such
    /// token.
    pub async fn revoke_api_token(
        &self,
        tenant_id: &str,
        token_id: &str,
    ) -> Result<Option<ApiToken>> {
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(tenant_id)
        .bind(token_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant_id)
        .bind(token_id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    /// The live (not revoked) token with this hash.
    pub async fn api_token_by_hash(&self, token_hash: &str) -> Result<Option<ApiToken>> {
        let row = sqlx::query(&format!(
            "SELECT {TOKEN_COLUMNS} FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_from_row).transpose()
    }

    pub async fn record_audit(&self, e: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (at, tenant_id, actor, action, flow_id, flow_name, detail) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(e.at)
        .bind(&e.tenant_id)
        .bind(&e.actor)
        .bind(&e.action)
        .bind(&e.flow_id)
        .bind(&e.flow_name)
        .bind(&e.detail)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// A tenant's audit log, newest first; `flow` (an id or a name) narrows it to one flow,
    /// deleted or not.
    pub async fn list_audit(
        &self,
        tenant_id: &str,
        flow: Option<&str>,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT at, tenant_id, actor, action, flow_id, flow_name, detail FROM audit_log WHERE tenant_id = $1 AND ($2 IS NULL OR flow_id = $2 OR flow_name = $2) ORDER BY id DESC LIMIT $3",
        )
        .bind(tenant_id)
        .bind(flow)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditEntry {
                    at: r.try_get("at")?,
                    tenant_id: r.try_get("tenant_id")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    flow_id: r.try_get("flow_id")?,
                    flow_name: r.try_get("flow_name")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }
}

async fn insert_token(
    tx: &mut crate::store::WriteTx,
    tenant_id: &str,
    name: &str,
    token_hash: &str,
) -> Result<ApiToken> {
    let token = ApiToken {
        id: uuid::Uuid::new_v4().to_string(),
        tenant_id: tenant_id.to_string(),
        name: name.to_string(),
        created_at: now_ms(),
        revoked_at: None,
    };
    sqlx::query(
        "INSERT INTO api_tokens (id, tenant_id, name, token_hash, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&token.id)
    .bind(&token.tenant_id)
    .bind(&token.name)
    .bind(token_hash)
    .bind(token.created_at)
    .execute(&mut **tx)
    .await?;
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_kept_to_what_fits_in_a_key_prefix() {
        assert!(check_tenant_id("acme-2").is_ok());
        for bad in ["", "Acme", "a:b", "-x", "x-", "a b", &"x".repeat(41)] {
            assert!(check_tenant_id(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn api_tokens_carry_their_prefix_and_256_bits() {
        let t = generate_token();
        assert!(t.starts_with(TOKEN_PREFIX));
        assert_eq!(t.len(), TOKEN_PREFIX.len() + 43);
    }
}
