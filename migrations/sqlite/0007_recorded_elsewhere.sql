-- The highest trigger sequence number a replica that does not lead recorded for the flow.
-- The leader reads it, under the flow row's lock, in the same transaction that records its own
-- triggers: when it is above what the leader has loaded, the leader loads the flow's waiting
-- triggers before it publishes its own, so a flow's triggers reach its pump in sequence order
-- whichever replica accepted them.
ALTER TABLE flows ADD COLUMN recorded_elsewhere_seq BIGINT NOT NULL DEFAULT 0;
