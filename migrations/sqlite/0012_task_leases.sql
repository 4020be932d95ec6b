-- Leases for background tasks that must run on one replica at a time (the preview-environment
-- reaper): a replica runs the task only while it holds the task's row (owner, unexpired).
CREATE TABLE IF NOT EXISTS task_leases (
    name        TEXT    PRIMARY KEY,
    owner       TEXT    NOT NULL,
    expires_us  INTEGER  NOT NULL
);
