-- Which pump instance acknowledged the execution, so the triggers a dead pump held can be
-- handed to the next one.
ALTER TABLE executions ADD COLUMN instance_id TEXT;
CREATE INDEX executions_by_instance ON executions (instance_id) WHERE status IN ('queued', 'running');
