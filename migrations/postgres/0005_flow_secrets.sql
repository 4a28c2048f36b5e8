-- Flow secrets, sealed with AES-256-GCM under the server's master key (orchestrator/src/secrets.rs).
-- Nothing here is plaintext: nonce and ciphertext are base64 TEXT (both stores share the type),
-- and key_id names the master key that sealed the row (first 8 bytes of its SHA-256, hex), so a
-- server with another key can say which one it needs. The flow id and the name are the
-- ciphertext's associated data: a row copied to another flow or name does not decrypt.
CREATE TABLE flow_secrets (
    flow_id     TEXT NOT NULL REFERENCES flows(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    ciphertext  TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (flow_id, name)
);
