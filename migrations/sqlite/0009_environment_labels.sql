-- Environment labels, one row per (environment, key), so that ListEnvironments can filter on
-- `labels.<key>` in SQL. Written in the same transaction as the environment's body.
CREATE TABLE IF NOT EXISTS environment_labels (
    tenant      TEXT NOT NULL,
    environment TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (tenant, environment, key)
);
CREATE INDEX IF NOT EXISTS environment_labels_value ON environment_labels (tenant, key, value);
