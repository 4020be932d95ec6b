-- DORA day rollups (issue 8): GetDoraMetrics over 100,000 deployments must not read them all.
-- One row per (tenant, environment, UTC day of end_time, component) that has a finished
-- deployment: `rollup` holds that day's figures (counts, lead-time samples, restores within the
-- day, failures still open at its end, its first success, when its successes were rolled back)
-- encoded by insights::dora_days, or NULL when it must be computed again. The triggers below mark
-- a row stale (rollup NULL, version + 1) in the same transaction as any change that affects it,
-- whatever path wrote the deployment; a reader stores a computed rollup only if the version is
-- still the one it read, so a concurrent change is never hidden.
CREATE TABLE IF NOT EXISTS dora_days (
    tenant       TEXT    NOT NULL,
    environment  TEXT    NOT NULL,
    day          INTEGER NOT NULL,
    component    TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    rollup       BLOB,
    PRIMARY KEY (tenant, environment, day, component)
);

INSERT INTO dora_days (tenant, environment, day, component, version, rollup)
SELECT DISTINCT tenant, environment, end_time_us / 86400000000, component, 1, NULL
FROM deployments WHERE end_time_us IS NOT NULL;

-- A deployment that ends (or is written already ended).
CREATE TRIGGER IF NOT EXISTS dora_days_insert AFTER INSERT ON deployments
WHEN NEW.end_time_us IS NOT NULL
BEGIN
    INSERT INTO dora_days (tenant, environment, day, component, version, rollup)
    VALUES (NEW.tenant, NEW.environment, NEW.end_time_us / 86400000000, NEW.component, 1, NULL)
    ON CONFLICT (tenant, environment, day, component) DO UPDATE SET version = version + 1, rollup = NULL;
END;

-- A rollback marks the deployment it undoes as rolled back: that deployment's day changes.
CREATE TRIGGER IF NOT EXISTS dora_days_rollback_insert AFTER INSERT ON deployments
WHEN NEW.rollback_of <> ''
BEGIN
    INSERT INTO dora_days (tenant, environment, day, component, version, rollup)
    SELECT t.tenant, t.environment, t.end_time_us / 86400000000, t.component, 1, NULL FROM deployments t
    WHERE t.tenant = NEW.tenant AND t.id = substr(NEW.rollback_of, length('tenants/' || NEW.tenant || '/deployments/') + 1)
      AND t.end_time_us IS NOT NULL
    ON CONFLICT (tenant, environment, day, component) DO UPDATE SET version = version + 1, rollup = NULL;
END;

CREATE TRIGGER IF NOT EXISTS dora_days_update AFTER UPDATE ON deployments
WHEN (OLD.end_time_us IS NOT NULL OR NEW.end_time_us IS NOT NULL OR OLD.rollback_of <> '' OR NEW.rollback_of <> '')
 AND (OLD.state IS NOT NEW.state OR OLD.end_time_us IS NOT NEW.end_time_us
      OR OLD.commit_time_us IS NOT NEW.commit_time_us OR OLD.rollback_of IS NOT NEW.rollback_of
      OR OLD.create_time_us IS NOT NEW.create_time_us OR OLD.environment IS NOT NEW.environment
      OR OLD.component IS NOT NEW.component OR OLD.tenant IS NOT NEW.tenant OR OLD.id IS NOT NEW.id)
BEGIN
    INSERT INTO dora_days (tenant, environment, day, component, version, rollup)
    SELECT OLD.tenant, OLD.environment, OLD.end_time_us / 86400000000, OLD.component, 1, NULL
    WHERE OLD.end_time_us IS NOT NULL
    ON CONFLICT (tenant, environment, day, component) DO UPDATE SET version = version + 1, rollup = NULL;
    INSERT INTO dora_days (tenant, environment, day, component, version, rollup)
    SELECT NEW.tenant, NEW.environment, NEW.end_time_us / 86400000000, NEW.component, 1, NULL
    WHERE NEW.end_time_us IS NOT NULL
    ON CONFLICT (tenant, environment, day, component) DO UPDATE SET version = version + 1, rollup = NULL;
    INSERT INTO dora_days (tenant, environment, day, component, version, rollup)
    SELECT t.tenant, t.environment, t.end_time_us / 86400000000, t.component, 1, NULL FROM deployments t
    WHERE OLD.rollback_of <> '' AND t.tenant = OLD.tenant
      AND t.id = substr(OLD.rollback_of, length('tenants/' || OLD.tenant || '/deployments/') + 1)
      AND t.end_time_us IS NOT NULL
    ON CONFLICT (tenant, environment, day, component) DO UPDATE SET version = version + 1, rollup = NULL;
    INSERT INTO dora_days (tenant, environment, day, component, version, rollup)
    SELECT t.tenant, t.environment, t.end_time_us / 86400000000, t.component, 1, NULL FROM deployments t
    WHERE NEW.rollback_of <> '' AND t.tenant = NEW.tenant
      AND t.id = substr(NEW.rollback_of, length('tenants/' || NEW.tenant || '/deployments/') + 1)
      AND t.end_time_us IS NOT NULL
    ON CONFLICT (tenant, environment, day, component) DO UPDATE SET version = version + 1, rollup = NULL;
END;

CREATE TRIGGER IF NOT EXISTS dora_days_delete AFTER DELETE ON deployments
WHEN OLD.end_time_us IS NOT NULL OR OLD.rollback_of <> ''
BEGIN
    INSERT INTO dora_days (tenant, environment, day, component, version, rollup)
    SELECT OLD.tenant, OLD.environment, OLD.end_time_us / 86400000000, OLD.component, 1, NULL
    WHERE OLD.end_time_us IS NOT NULL
    ON CONFLICT (tenant, environment, day, component) DO UPDATE SET version = version + 1, rollup = NULL;
    INSERT INTO dora_days (tenant, environment, day, component, version, rollup)
    SELECT t.tenant, t.environment, t.end_time_us / 86400000000, t.component, 1, NULL FROM deployments t
    WHERE OLD.rollback_of <> '' AND t.tenant = OLD.tenant
      AND t.id = substr(OLD.rollback_of, length('tenants/' || OLD.tenant || '/deployments/') + 1)
      AND t.end_time_us IS NOT NULL
    ON CONFLICT (tenant, environment, day, component) DO UPDATE SET version = version + 1, rollup = NULL;
END;
