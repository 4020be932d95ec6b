-- The software catalog: one row per entity (its stored proto plus the columns List filters and
-- sorts on), its labels and tags for selectors, and its relations in both directions. Keys are
-- lowercased (kind, namespace, name) because Backstage compares them case-insensitively.

CREATE TABLE IF NOT EXISTS catalog_entities (
    tenant         TEXT NOT NULL,
    kind           TEXT NOT NULL,
    namespace      TEXT NOT NULL,
    name_key       TEXT NOT NULL,
    name           TEXT NOT NULL,
    ref            TEXT NOT NULL,
    uid            TEXT NOT NULL,
    title          TEXT NOT NULL,
    description    TEXT NOT NULL,
    spec_type      TEXT NOT NULL,
    lifecycle      TEXT NOT NULL,
    owner_ref      TEXT NOT NULL,
    system_ref     TEXT NOT NULL,
    search_text    TEXT NOT NULL,
    body           BYTEA NOT NULL,
    content_hash   TEXT NOT NULL,
    etag           TEXT NOT NULL,
    location_key   TEXT NOT NULL,
    create_time_us BIGINT NOT NULL,
    update_time_us BIGINT NOT NULL,
    PRIMARY KEY (tenant, kind, namespace, name_key)
);
CREATE UNIQUE INDEX IF NOT EXISTS catalog_entities_ref ON catalog_entities (tenant, ref);
-- Filter columns lead, then the default sort key, so a filtered page is read in order from the
-- index without scanning the tenant.
CREATE INDEX IF NOT EXISTS catalog_entities_owner ON catalog_entities (tenant, owner_ref, kind, namespace, name_key);
CREATE INDEX IF NOT EXISTS catalog_entities_system ON catalog_entities (tenant, system_ref, kind, namespace, name_key);
CREATE INDEX IF NOT EXISTS catalog_entities_type ON catalog_entities (tenant, kind, spec_type, namespace, name_key);

CREATE TABLE IF NOT EXISTS catalog_labels (
    tenant TEXT NOT NULL,
    ref    TEXT NOT NULL,
    key    TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (tenant, ref, key)
);
CREATE INDEX IF NOT EXISTS catalog_labels_kv ON catalog_labels (tenant, key, value);

CREATE TABLE IF NOT EXISTS catalog_tags (
    tenant TEXT NOT NULL,
    ref    TEXT NOT NULL,
    tag    TEXT NOT NULL,
    PRIMARY KEY (tenant, ref, tag)
);
CREATE INDEX IF NOT EXISTS catalog_tags_tag ON catalog_tags (tenant, tag);

-- source_ref has relation type to target_ref. Rows come from the spec of origin_ref (the
-- entity that declared it): each declared relation is stored forwards and inverted, and
-- replaced whenever the origin is written or deleted. Targets may not exist (yet).
CREATE TABLE IF NOT EXISTS catalog_relations (
    tenant     TEXT NOT NULL,
    source_ref TEXT NOT NULL,
    type       INTEGER NOT NULL,
    target_ref TEXT NOT NULL,
    origin_ref TEXT NOT NULL,
    PRIMARY KEY (tenant, source_ref, type, target_ref, origin_ref)
);
CREATE INDEX IF NOT EXISTS catalog_relations_origin ON catalog_relations (tenant, origin_ref);
CREATE INDEX IF NOT EXISTS catalog_relations_target ON catalog_relations (tenant, target_ref);
