-- The process group of the step a worker is running (0: none), so that after platformd dies
-- the worker taking the work over on the same host stops what the dead one left running, and a
-- step never runs twice at once.
ALTER TABLE deployments ADD COLUMN run_pid BIGINT NOT NULL DEFAULT 0;
ALTER TABLE environments ADD COLUMN run_pid BIGINT NOT NULL DEFAULT 0;
