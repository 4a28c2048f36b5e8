-- API tokens belong to one tenant and act only on its flows. Only a SHA-256 of each token is
-- kept: the token is 256 random bits, so a fast hash is enough and a lookup is one index probe.
-- A revoked token keeps its row (revoked_at set) so the audit log can still name it.
CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL REFERENCES tenants(id),
    name        TEXT NOT NULL,
    token_hash  TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);
CREATE INDEX api_tokens_by_tenant ON api_tokens (tenant_id);

-- Who did what to which flow, and when. No foreign key: the record outlives the flow.
CREATE TABLE audit_log (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at         BIGINT NOT NULL,
    tenant_id  TEXT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    flow_id    TEXT,
    flow_name  TEXT,
    detail     TEXT
);
CREATE INDEX audit_log_by_tenant ON audit_log (tenant_id, id);
