-- The server's own key/value metadata (installation id, bootstrap state).
CREATE TABLE IF NOT EXISTS platform_meta (
    key            TEXT PRIMARY KEY NOT NULL,
    value          TEXT NOT NULL,
    update_time_us BIGINT NOT NULL
);
