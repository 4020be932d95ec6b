-- Insights (issue 8): DORA metrics are computed in SQL over finished deployments, so the commit
-- time (lead time) gets a column beside end_time_us, and the queries get their indexes: finished
-- deployments of a tenant by end time, restores per (environment, component), and rollbacks by
-- the deployment they undo. Rows written before this migration get commit_time_us from their body
-- at the first start (see deployments::commit_time_backfill).
ALTER TABLE deployments ADD COLUMN commit_time_us INTEGER;
CREATE INDEX IF NOT EXISTS deployments_finished ON deployments (tenant, state, end_time_us);
CREATE INDEX IF NOT EXISTS deployments_restore ON deployments (tenant, environment, component, state, end_time_us);
CREATE INDEX IF NOT EXISTS deployments_rollback_of ON deployments (tenant, rollback_of);
