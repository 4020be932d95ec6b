-- Catalog, second step: annotations and apiVersion become filterable (annotations also carry the
-- IAM subject of a User entity, which ownership-based access looks up), per-tenant catalog
-- settings, and the change log WatchEntities streams from.
--
-- Rows written before this migration have an empty api_version and no annotation rows; platformd
-- re-indexes them from their stored body at start-up (catalog::index_backfill).

ALTER TABLE catalog_entities ADD COLUMN api_version TEXT NOT NULL DEFAULT '';

CREATE TABLE IF NOT EXISTS catalog_annotations (
    tenant TEXT NOT NULL,
    ref    TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (tenant, ref, key)
);
CREATE INDEX IF NOT EXISTS catalog_annotations_kv ON catalog_annotations (tenant, key, value);

-- One row per tenant that changed its settings; a tenant without a row has the defaults.
CREATE TABLE IF NOT EXISTS catalog_settings (
    tenant               TEXT PRIMARY KEY NOT NULL,
    owner_role           TEXT NOT NULL,
    include_child_groups BIGINT NOT NULL,
    subject_annotation   TEXT NOT NULL,
    match_email          BIGINT NOT NULL,
    reject_unknown_kinds BIGINT NOT NULL,
    update_time_us       BIGINT NOT NULL,
    etag                 TEXT NOT NULL
);

-- The per-tenant change counter. Writers take the next numbers with `UPDATE … RETURNING`, which
-- holds the row lock until commit, so sequence order is commit order (a watcher that has read up
-- to N never later finds a smaller number committed). `pruned_through` is the highest sequence
-- removed by retention: resuming from below it is OUT_OF_RANGE.
CREATE TABLE IF NOT EXISTS catalog_change_heads (
    tenant         TEXT PRIMARY KEY NOT NULL,
    seq            BIGINT NOT NULL,
    pruned_through BIGINT NOT NULL
);

-- change: 1 created, 2 updated, 3 deleted. Watchers read the entity's current row for created and
-- updated (so the log stays small), and the name and uid kept here for deleted.
CREATE TABLE IF NOT EXISTS catalog_changes (
    tenant  TEXT NOT NULL,
    seq     BIGINT NOT NULL,
    change  BIGINT NOT NULL,
    ref     TEXT NOT NULL,
    name    TEXT NOT NULL,
    uid     TEXT NOT NULL,
    time_us BIGINT NOT NULL,
    PRIMARY KEY (tenant, seq)
);
CREATE INDEX IF NOT EXISTS catalog_changes_time ON catalog_changes (time_us);
