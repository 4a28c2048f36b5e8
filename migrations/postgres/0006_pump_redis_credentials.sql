-- The hex SHA-256 of each password that may sign in as the flow's Redis ACL user
-- (`pump-{flow id}`), separated by spaces; NULL when the flow has no user. Only hashes are
-- kept: the passwords live in the pumps' environments. They let the leader re-create every
-- pump's user after Redis restarts (ACL SETUSER is not persisted). Two hashes only while a
-- parked pump is woken and the backend has not yet said whether it kept the old container.
ALTER TABLE flows ADD COLUMN redis_password_hashes TEXT;
