-- Tenants own flows. Times are Unix milliseconds in every table, in both stores.
CREATE TABLE tenants (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE flows (
    id                  TEXT PRIMARY KEY,
    tenant_id           TEXT NOT NULL REFERENCES tenants(id),
    name                TEXT NOT NULL,
    manifest            TEXT NOT NULL,
    desired_state       TEXT NOT NULL,
    status              TEXT NOT NULL,
    status_reason       TEXT,
    webhook_token_hash  TEXT NOT NULL,
    idle_timeout_ms     BIGINT NOT NULL,
    keep_alive          BIGINT NOT NULL DEFAULT 0,
    instance_id         TEXT,
    pump_ref            TEXT,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL,
    UNIQUE (tenant_id, name)
);

-- seq orders a flow's triggers by arrival; rowid alias, so it only grows.
CREATE TABLE executions (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL UNIQUE,
    flow_id        TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    trigger_type   TEXT NOT NULL,
    status         TEXT NOT NULL,
    payload        TEXT,
    output         TEXT,
    error_message  TEXT,
    attempts       BIGINT NOT NULL DEFAULT 0,
    received_at    BIGINT NOT NULL,
    deadline_at    BIGINT NOT NULL,
    acked_at       BIGINT,
    started_at     BIGINT,
    completed_at   BIGINT
);
CREATE INDEX executions_by_flow ON executions (flow_id, seq);
CREATE INDEX executions_unfinished ON executions (status) WHERE status IN ('queued', 'running');

CREATE TABLE flow_events (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    flow_id      TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    at           BIGINT NOT NULL,
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    reason       TEXT NOT NULL,
    actor        TEXT NOT NULL
);
CREATE INDEX flow_events_by_flow ON flow_events (flow_id, id);
