-- A counter bumped in the same transaction as every change to policy (bindings, memberships,
-- custom roles, token revocations), so every replica notices within a second and reloads.
CREATE TABLE IF NOT EXISTS policy_version (
    id      INTEGER PRIMARY KEY NOT NULL,
    version BIGINT NOT NULL
);
INSERT INTO policy_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING;
