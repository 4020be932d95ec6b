-- Secrets (issue 6). A secret row holds its encoded proto (`body`: description, labels,
-- annotations, counts) beside the columns queries filter and sort on; its labels are mirrored in
-- `secret_labels` for `labels.<key>` filters. A version row holds metadata and, until it is
-- destroyed, the value sealed with its own data key (`ciphertext` = nonce || AES-256-GCM output)
-- and that data key wrapped by a key-encryption key (`wrapped_key` = nonce || AES-256-GCM output,
-- `kek_id` naming the key). Plaintext is never stored.
CREATE TABLE IF NOT EXISTS secrets (
    tenant          TEXT    NOT NULL,
    id              TEXT    NOT NULL,
    uid             TEXT    NOT NULL,
    environment     TEXT    NOT NULL DEFAULT '',
    create_time_us  BIGINT NOT NULL,
    update_time_us  BIGINT NOT NULL,
    latest_version  BIGINT NOT NULL DEFAULT 0,
    etag            TEXT    NOT NULL,
    body            BYTEA    NOT NULL,
    PRIMARY KEY (tenant, id)
);
CREATE TABLE IF NOT EXISTS secret_labels (
    tenant  TEXT NOT NULL,
    secret  TEXT NOT NULL,
    key     TEXT NOT NULL,
    value   TEXT NOT NULL,
    PRIMARY KEY (tenant, secret, key)
);
CREATE TABLE IF NOT EXISTS secret_versions (
    tenant          TEXT    NOT NULL,
    secret          TEXT    NOT NULL,
    number          BIGINT NOT NULL,
    uid             TEXT    NOT NULL,
    state           BIGINT NOT NULL,
    create_time_us  BIGINT NOT NULL,
    update_time_us  BIGINT NOT NULL,
    destroy_time_us BIGINT,
    crc32c          BIGINT NOT NULL,
    size_bytes      BIGINT NOT NULL,
    kek_id          TEXT    NOT NULL DEFAULT '',
    wrap_time_us    BIGINT,
    wrapped_key     BYTEA,
    ciphertext      BYTEA,
    etag            TEXT    NOT NULL,
    PRIMARY KEY (tenant, secret, number)
);
CREATE INDEX IF NOT EXISTS secret_versions_kek ON secret_versions (kek_id);
