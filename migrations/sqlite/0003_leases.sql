-- Leader leases, so several orchestrator replicas can share one store and only the holder of a
-- lease runs what must run once (the supervision loops). A lease is held while the clock is
-- before expires_at (Unix milliseconds, like every time here; the holder renews it well before
-- then). fence grows by one each time the holder changes, so work stamped with an old fence can
-- be refused after a takeover. A released lease keeps its row with expires_at = 0 rather than
-- being deleted: a new row would start the fence at 1 again and an old leader's fence could
-- look current.
CREATE TABLE leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    fence       BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
