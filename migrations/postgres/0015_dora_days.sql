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
    day          BIGINT  NOT NULL,
    component    TEXT    NOT NULL,
    version      BIGINT  NOT NULL,
    rollup       BYTEA,
    PRIMARY KEY (tenant, environment, day, component)
);

INSERT INTO dora_days (tenant, environment, day, component, version, rollup)
SELECT DISTINCT tenant, environment, end_time_us / 86400000000, component, 1, NULL::BYTEA
FROM deployments WHERE end_time_us IS NOT NULL;

-- Marks the day of a deployment that ended at end_us stale.
CREATE OR REPLACE FUNCTION dora_days_touch(t TEXT, env TEXT, comp TEXT, end_us BIGINT) RETURNS void AS $$
BEGIN
    IF end_us IS NOT NULL THEN
        INSERT INTO dora_days (tenant, environment, day, component, version, rollup)
        VALUES (t, env, end_us / 86400000000, comp, 1, NULL)
        ON CONFLICT (tenant, environment, day, component)
        DO UPDATE SET version = dora_days.version + 1, rollup = NULL;
    END IF;
END
$$ LANGUAGE plpgsql;

-- Marks the day of the deployment a rollback names stale (it is rolled back now, or no more).
CREATE OR REPLACE FUNCTION dora_days_touch_rollback_target(t TEXT, target_name TEXT) RETURNS void AS $$
DECLARE
    target RECORD;
BEGIN
    IF target_name <> '' THEN
        SELECT d.environment, d.component, d.end_time_us INTO target FROM deployments d
        WHERE d.tenant = t AND d.id = substr(target_name, length('tenants/' || t || '/deployments/') + 1);
        IF FOUND THEN
            PERFORM dora_days_touch(t, target.environment, target.component, target.end_time_us);
        END IF;
    END IF;
END
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION dora_days_on_change() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        PERFORM dora_days_touch(OLD.tenant, OLD.environment, OLD.component, OLD.end_time_us);
        PERFORM dora_days_touch_rollback_target(OLD.tenant, OLD.rollback_of);
    END IF;
    IF TG_OP IN ('UPDATE', 'INSERT') THEN
        PERFORM dora_days_touch(NEW.tenant, NEW.environment, NEW.component, NEW.end_time_us);
        PERFORM dora_days_touch_rollback_target(NEW.tenant, NEW.rollback_of);
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;

DROP TRIGGER IF EXISTS dora_days_insert ON deployments;
CREATE TRIGGER dora_days_insert AFTER INSERT ON deployments FOR EACH ROW
WHEN (NEW.end_time_us IS NOT NULL OR NEW.rollback_of <> '')
EXECUTE FUNCTION dora_days_on_change();

DROP TRIGGER IF EXISTS dora_days_update ON deployments;
CREATE TRIGGER dora_days_update AFTER UPDATE ON deployments FOR EACH ROW
WHEN ((OLD.end_time_us IS NOT NULL OR NEW.end_time_us IS NOT NULL OR OLD.rollback_of <> '' OR NEW.rollback_of <> '')
  AND (OLD.state IS DISTINCT FROM NEW.state OR OLD.end_time_us IS DISTINCT FROM NEW.end_time_us
       OR OLD.commit_time_us IS DISTINCT FROM NEW.commit_time_us OR OLD.rollback_of IS DISTINCT FROM NEW.rollback_of
       OR OLD.create_time_us IS DISTINCT FROM NEW.create_time_us OR OLD.environment IS DISTINCT FROM NEW.environment
       OR OLD.component IS DISTINCT FROM NEW.component OR OLD.tenant IS DISTINCT FROM NEW.tenant OR OLD.id IS DISTINCT FROM NEW.id))
EXECUTE FUNCTION dora_days_on_change();

DROP TRIGGER IF EXISTS dora_days_delete ON deployments;
CREATE TRIGGER dora_days_delete AFTER DELETE ON deployments FOR EACH ROW
WHEN (OLD.end_time_us IS NOT NULL OR OLD.rollback_of <> '')
EXECUTE FUNCTION dora_days_on_change();
