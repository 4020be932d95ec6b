-- IAM (tenants, custom roles, role bindings, groups, service accounts, tokens), the audit log
-- with its per-chain heads, and request_id idempotency records. Times are microseconds since the
-- Unix epoch; maps and lists are JSON text. The platform scope is the tenant/chain ''.

CREATE TABLE IF NOT EXISTS tenants (
    id             TEXT PRIMARY KEY NOT NULL,
    uid            TEXT NOT NULL,
    display_name   TEXT NOT NULL,
    description    TEXT NOT NULL,
    labels         TEXT NOT NULL,
    annotations    TEXT NOT NULL,
    state          INTEGER NOT NULL,
    create_time_us BIGINT NOT NULL,
    update_time_us BIGINT NOT NULL,
    delete_time_us BIGINT,
    etag           TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS iam_roles (
    tenant         TEXT NOT NULL,
    id             TEXT NOT NULL,
    uid            TEXT NOT NULL,
    title          TEXT NOT NULL,
    description    TEXT NOT NULL,
    permissions    TEXT NOT NULL,
    create_time_us BIGINT NOT NULL,
    update_time_us BIGINT NOT NULL,
    etag           TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);

CREATE TABLE IF NOT EXISTS iam_role_bindings (
    tenant         TEXT NOT NULL,
    id             TEXT NOT NULL,
    uid            TEXT NOT NULL,
    principal      TEXT NOT NULL,
    role           TEXT NOT NULL,
    resource       TEXT NOT NULL,
    description    TEXT NOT NULL,
    creator        TEXT NOT NULL,
    create_time_us BIGINT NOT NULL,
    etag           TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS iam_role_bindings_principal ON iam_role_bindings (principal);

CREATE TABLE IF NOT EXISTS iam_groups (
    tenant         TEXT NOT NULL,
    id             TEXT NOT NULL,
    uid            TEXT NOT NULL,
    display_name   TEXT NOT NULL,
    description    TEXT NOT NULL,
    labels         TEXT NOT NULL,
    annotations    TEXT NOT NULL,
    catalog_group  TEXT NOT NULL,
    create_time_us BIGINT NOT NULL,
    update_time_us BIGINT NOT NULL,
    etag           TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);

CREATE TABLE IF NOT EXISTS iam_group_members (
    tenant      TEXT NOT NULL,
    group_id    TEXT NOT NULL,
    member      TEXT NOT NULL,
    source      INTEGER NOT NULL,
    add_time_us BIGINT NOT NULL,
    PRIMARY KEY (tenant, group_id, member)
);

CREATE TABLE IF NOT EXISTS iam_service_accounts (
    tenant         TEXT NOT NULL,
    id             TEXT NOT NULL,
    uid            TEXT NOT NULL,
    display_name   TEXT NOT NULL,
    description    TEXT NOT NULL,
    labels         TEXT NOT NULL,
    annotations    TEXT NOT NULL,
    create_time_us BIGINT NOT NULL,
    update_time_us BIGINT NOT NULL,
    etag           TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
);

-- Every token platformd signs (service-account tokens and offline/bootstrap tokens), by jti.
-- The token string itself is never stored.
CREATE TABLE IF NOT EXISTS iam_tokens (
    jti             TEXT PRIMARY KEY NOT NULL,
    tenant          TEXT NOT NULL,
    service_account TEXT NOT NULL,
    subject         TEXT NOT NULL,
    display_name    TEXT NOT NULL,
    issuer          TEXT NOT NULL,
    issue_time_us   BIGINT NOT NULL,
    expire_time_us  BIGINT NOT NULL,
    revoke_time_us  BIGINT,
    revoke_reason   TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS iam_tokens_service_account ON iam_tokens (tenant, service_account);

CREATE TABLE IF NOT EXISTS audit_events (
    chain          TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    event_time_us  BIGINT NOT NULL,
    actor          TEXT NOT NULL,
    actor_token_id TEXT NOT NULL,
    permission     TEXT NOT NULL,
    resource       TEXT NOT NULL,
    method         TEXT NOT NULL,
    outcome        INTEGER NOT NULL,
    grpc_code      INTEGER NOT NULL,
    request_id     TEXT NOT NULL,
    peer           TEXT NOT NULL,
    user_agent     TEXT NOT NULL,
    changed_fields TEXT NOT NULL,
    prev_hash      BLOB NOT NULL,
    hash           BLOB NOT NULL,
    hash_version   INTEGER NOT NULL,
    PRIMARY KEY (chain, seq)
);

-- The newest (sequence, hash) of each chain, kept apart from the events so that a deleted tail
-- is detected, and locked by every append so that concurrent writers never fork a chain.
CREATE TABLE IF NOT EXISTS audit_heads (
    chain TEXT PRIMARY KEY NOT NULL,
    seq   BIGINT NOT NULL,
    hash  BLOB NOT NULL
);

-- Results of mutating calls by request_id, so a retry returns the first result.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope          TEXT NOT NULL,
    request_id     TEXT NOT NULL,
    method         TEXT NOT NULL,
    principal      TEXT NOT NULL,
    response       BLOB NOT NULL,
    create_time_us BIGINT NOT NULL,
    PRIMARY KEY (scope, request_id)
);
