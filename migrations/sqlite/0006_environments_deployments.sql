-- Environments and deployments: the rows, their logs, and the columns the deployment engine
-- claims work by. `body` holds the encoded proto (platform.environments.v1.Environment,
-- platform.deployments.v1.Deployment) and is the source of truth for everything shown; the other
-- columns mirror what queries filter, order and claim on, and are written in the same statement.

CREATE TABLE IF NOT EXISTS environments (
    tenant            TEXT NOT NULL,
    id                TEXT NOT NULL,
    uid               TEXT NOT NULL,
    type              BIGINT NOT NULL,   -- EnvironmentType
    state             BIGINT NOT NULL,   -- EnvironmentState
    locked            BIGINT NOT NULL,   -- 0 or 1
    promotes_to       TEXT NOT NULL,     -- environment id, '' for none
    display_name      TEXT NOT NULL,
    expire_time_us    BIGINT,            -- NULL: never expires
    create_time_us    BIGINT NOT NULL,
    update_time_us    BIGINT NOT NULL,
    purge_time_us     BIGINT,
    etag              TEXT NOT NULL,
    body              BLOB NOT NULL,
    -- The driver step the engine must run for the environment itself: 0 none, 1 provision,
    -- 2 teardown (EnvironmentOperationType); op_state is EnvironmentOperationState.
    op_type           BIGINT NOT NULL,
    op_state          BIGINT NOT NULL,
    op_cancel         BIGINT NOT NULL,   -- 1: stop the running step (forced delete)
    lease_owner       TEXT NOT NULL,
    lease_expires_us  BIGINT NOT NULL,
    log_seq           BIGINT NOT NULL,   -- sequence of the last log line
    PRIMARY KEY (tenant, id)
);
CREATE INDEX IF NOT EXISTS environments_ops ON environments (op_state, lease_expires_us);
CREATE INDEX IF NOT EXISTS environments_expiry ON environments (expire_time_us);

CREATE TABLE IF NOT EXISTS environment_log (
    tenant      TEXT NOT NULL,
    environment TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    time_us     BIGINT NOT NULL,
    operation   BIGINT NOT NULL,
    stream      BIGINT NOT NULL,
    text        TEXT NOT NULL,
    truncated   BIGINT NOT NULL,
    attempt     BIGINT NOT NULL,
    PRIMARY KEY (tenant, environment, seq)
);

CREATE TABLE IF NOT EXISTS deployments (
    tenant            TEXT NOT NULL,
    id                TEXT NOT NULL,
    uid               TEXT NOT NULL,
    component         TEXT NOT NULL,     -- canonical ref, component:{ns}/{name}
    environment       TEXT NOT NULL,     -- environment id
    state             BIGINT NOT NULL,   -- DeploymentState
    version           TEXT NOT NULL,
    commit_sha        TEXT NOT NULL,
    requested_by      TEXT NOT NULL,
    rollback_of       TEXT NOT NULL,
    promoted_from     TEXT NOT NULL,
    create_time_us    BIGINT NOT NULL,
    start_time_us     BIGINT,
    end_time_us       BIGINT,
    update_time_us    BIGINT NOT NULL,
    cancel_requested  BIGINT NOT NULL,
    attempt_count     BIGINT NOT NULL,
    lease_owner       TEXT NOT NULL,
    lease_expires_us  BIGINT NOT NULL,
    log_seq           BIGINT NOT NULL,
    etag              TEXT NOT NULL,
    body              BLOB NOT NULL,
    PRIMARY KEY (tenant, id)
);
-- The queue: claimable work in creation order.
CREATE INDEX IF NOT EXISTS deployments_queue ON deployments (state, create_time_us);
-- One running deployment per (component, environment): the lane a deployment waits in.
CREATE INDEX IF NOT EXISTS deployments_lane ON deployments (tenant, environment, component, state, create_time_us);
CREATE INDEX IF NOT EXISTS deployments_list ON deployments (tenant, create_time_us);

CREATE TABLE IF NOT EXISTS deployment_log (
    tenant     TEXT NOT NULL,
    deployment TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    time_us    BIGINT NOT NULL,
    stream     BIGINT NOT NULL,
    text       TEXT NOT NULL,
    truncated  BIGINT NOT NULL,
    attempt    BIGINT NOT NULL,
    PRIMARY KEY (tenant, deployment, seq)
);
